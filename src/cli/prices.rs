//! `spotd prices`: price history (`GET /v1/gpus/prices`) as a table, then one line per
//! series (GPU model, provider, spot or on demand) with a sparkline of its medians.
//!
//! It follows `next_cursor` for at most [`MAX_PAGES`] pages of 1,000 rows, so a wide
//! query prints a bounded amount and says when it stopped short.

use clap::Args;
use hyper::Method;
use serde_json::Value;

use super::client::{query, Auth, Client, ClientOpts};
use super::table::{self, Align, Table};
use crate::money::Usd;

const MAX_PAGES: usize = 10;
const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

#[derive(Args, Debug, Clone)]
pub struct PricesArgs {
    /// GPU model, case-insensitive ("h100" is every H100 model).
    #[arg(long)]
    pub gpu: String,
    /// Spot (interruptible) prices only.
    #[arg(long, conflicts_with = "on_demand")]
    pub interruptible: bool,
    /// On-demand prices only.
    #[arg(long)]
    pub on_demand: bool,
    /// From when: RFC 3339, or a time ago (90m, 24h, 7d).
    #[arg(long, default_value = "24h")]
    pub since: String,
    /// Until when (default: now).
    #[arg(long)]
    pub until: Option<String>,
    /// One provider's prices; without it, every provider's together.
    #[arg(long)]
    pub provider: Option<String>,
    /// The length of one row and one sparkline bar: an hour or a day.
    #[arg(long, default_value = "1h", value_parser = ["1h", "1d"])]
    pub interval: String,
    #[command(flatten)]
    pub common: ClientOpts,
}

/// A sparkline of `values`: the lowest is `▁`, the highest `█`, linear in between
/// (integer arithmetic on micro-dollars); all equal is a flat `▄` line.
pub fn sparkline(values: &[Usd]) -> String {
    let (Some(lo), Some(hi)) = (values.iter().min(), values.iter().max()) else {
        return String::new();
    };
    let span = i128::from(hi.0) - i128::from(lo.0);
    values
        .iter()
        .map(|v| {
            if span == 0 {
                return BARS[3];
            }
            let i = (i128::from(v.0) - i128::from(lo.0)) * 7 / span;
            BARS[i.clamp(0, 7) as usize]
        })
        .collect()
}

/// The series key of a row: (gpu, provider or "all", spot/on-demand).
fn series_of(r: &Value) -> (String, String, String) {
    (
        table::text(&r["gpu"]),
        match &r["provider"] {
            Value::Null => "all".into(),
            v => table::text(v),
        },
        if r["interruptible"] == Value::Bool(true) {
            "spot".into()
        } else {
            "on-demand".into()
        },
    )
}

/// The table of every row, then one sparkline line per series.
pub fn render(rows: &[Value]) -> String {
    use Align::{Left as L, Money as M, Right as R};
    let mut t = Table::new(&[
        ("START (UTC)", L),
        ("GPU", L),
        ("PROVIDER", L),
        ("TYPE", L),
        ("MIN", M),
        ("MEDIAN", M),
        ("MAX", M),
        ("OFFERS", R),
        ("AVAIL", R),
    ]);
    let mut series: Vec<((String, String, String), Vec<Usd>)> = Vec::new();
    for r in rows {
        let key = series_of(r);
        t.row(vec![
            table::when(&r["start"]),
            key.0.clone(),
            key.1.clone(),
            key.2.clone(),
            table::usd(&r["min_price_per_gpu_hour"]),
            table::usd(&r["median_price_per_gpu_hour"]),
            table::usd(&r["max_price_per_gpu_hour"]),
            table::text(&r["offers"]),
            table::text(&r["available"]),
        ]);
        let median = Usd::from_json(&r["median_price_per_gpu_hour"]).unwrap_or_default();
        match series.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(median),
            None => series.push((key, vec![median])),
        }
    }
    let mut out = t.render();
    out.push('\n');
    let mut s = Table::new(&[
        ("SERIES", L),
        ("MEDIAN $/GPU-H", L),
        ("LOW", R),
        ("HIGH", R),
    ]);
    for ((gpu, provider, kind), medians) in &series {
        let lo = medians.iter().min().copied().unwrap_or_default();
        let hi = medians.iter().max().copied().unwrap_or_default();
        s.row(vec![
            format!("{gpu} / {provider} / {kind}"),
            sparkline(medians),
            table::usd_text(lo),
            table::usd_text(hi),
        ]);
    }
    out.push_str(&s.render());
    out
}

pub async fn run(a: PricesArgs, env: &[(String, String)]) -> Result<(), String> {
    let c = Client::new(&a.common, env, Auth::User)?;
    let flag = match (a.interruptible, a.on_demand) {
        (true, _) => Some("true".to_string()),
        (_, true) => Some("false".to_string()),
        _ => None,
    };
    let mut rows: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut more = false;
    for _ in 0..MAX_PAGES {
        let q = query(&[
            ("gpu", Some(a.gpu.clone())),
            ("provider", a.provider.clone()),
            ("interruptible", flag.clone()),
            ("interval", Some(a.interval.clone())),
            ("since", Some(a.since.clone())),
            ("until", a.until.clone()),
            ("limit", Some("1000".into())),
            ("cursor", cursor.clone()),
        ]);
        let v = c
            .call(Method::GET, &format!("/v1/gpus/prices{q}"), None)
            .await?;
        rows.extend(table::list_items(&v).iter().cloned());
        match v.get("next_cursor").and_then(Value::as_str) {
            Some(next) => {
                cursor = Some(next.to_string());
                more = true;
            }
            None => {
                more = false;
                break;
            }
        }
    }
    // --json: every row fetched as one list (the cursor of the rest if it stopped short).
    let all = serde_json::json!({
        "object": "list",
        "data": rows,
        "next_cursor": cursor.filter(|_| more),
    });
    if !c.printed_json(&all) {
        if rows.is_empty() {
            println!("no price history matches (history is recorded at each offer refresh)");
        } else {
            print!("{}", render(&rows));
        }
        if more {
            println!("(stopped after {MAX_PAGES} pages; narrow --since or use --interval 1d)");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sparkline_spans_the_bars() {
        let v = |m: &[i64]| m.iter().map(|x| Usd(*x)).collect::<Vec<_>>();
        assert_eq!(sparkline(&v(&[1, 2, 3, 4, 5, 6, 7, 8])), "▁▂▃▄▅▆▇█");
        assert_eq!(sparkline(&v(&[10, 80, 10])), "▁█▁");
        assert_eq!(sparkline(&v(&[5, 5])), "▄▄");
        assert_eq!(sparkline(&[]), "");
    }

    #[test]
    fn render_groups_rows_into_series() {
        let row = |start: &str, p: Value, m: f64| {
            json!({"gpu": "H100 SXM", "provider": p, "interruptible": true, "start": start,
                "min_price_per_gpu_hour": 1, "median_price_per_gpu_hour": m,
                "max_price_per_gpu_hour": 3, "offers": 4, "available": 5})
        };
        let rows = vec![
            row("2026-12-01T00:00:00.000Z", Value::Null, 1.5),
            row("2026-12-01T01:00:00.000Z", Value::Null, 2.5),
        ];
        let out = render(&rows);
        assert!(out.starts_with("START"), "{out}");
        assert!(out.contains("H100 SXM / all / spot  ▁█"), "{out}");
        assert!(out.contains("1.50  2.50"), "{out}");
    }
}
