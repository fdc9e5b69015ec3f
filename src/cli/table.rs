//! Plain-text tables and value formatting for the client subcommands' human output.
//!
//! Columns are sized to their widest cell; numbers are right-aligned, and money
//! columns ([`Align::Money`]) give every amount the same number of decimals (the most
//! any of them needs, at least two: exact, never rounded), so their decimal points line
//! up. Times are shown short: `2026-12-01 14:03:07`, UTC. Values come from API JSON, so
//! every accessor tolerates a missing or oddly typed field by printing `-` instead of
//! failing.

use serde_json::Value;

use crate::money::Usd;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
    /// Right-aligned, amounts padded with zeros to the column's most decimals.
    Money,
}

/// `2.5` -> (`2`, `5`) for an exact decimal cell; `None` for `-` and other text.
fn decimal_parts(cell: &str) -> Option<(&str, &str)> {
    let digits = cell.strip_prefix('-').unwrap_or(cell);
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    (!int.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit()))
    .then_some((int, frac))
}

pub struct Table {
    headers: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[(&'static str, Align)]) -> Table {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells print empty, extra cells are dropped.
    pub fn row(&mut self, mut cells: Vec<String>) {
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    /// Two spaces between columns, no trailing spaces, one line per row.
    pub fn render(&self) -> String {
        let mut rows = self.rows.clone();
        for (i, (_, align)) in self.headers.iter().enumerate() {
            if *align != Align::Money {
                continue;
            }
            let decimals = rows
                .iter()
                .filter_map(|r| decimal_parts(&r[i]).map(|(_, f)| f.len()))
                .max()
                .unwrap_or(0)
                .max(2);
            for r in &mut rows {
                if let Some((_, frac)) = decimal_parts(&r[i]) {
                    let pad = decimals - frac.len();
                    if frac.is_empty() {
                        r[i].push('.');
                    }
                    r[i].extend(std::iter::repeat_n('0', pad));
                }
            }
        }
        let width = |s: &str| s.chars().count();
        let mut widths: Vec<usize> = self.headers.iter().map(|(h, _)| width(h)).collect();
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.headers.iter().map(|(h, _)| h.to_string()).collect();
        for row in std::iter::once(&header).chain(&rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                let pad = widths[i] - width(cell);
                if i > 0 {
                    line.push_str("  ");
                }
                match self.headers[i].1 {
                    Align::Left => {
                        line.push_str(cell);
                        line.extend(std::iter::repeat_n(' ', pad));
                    }
                    Align::Right | Align::Money => {
                        line.extend(std::iter::repeat_n(' ', pad));
                        line.push_str(cell);
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A USD amount from JSON, exact, with at least two decimals: `2.50`, `0.000278`.
pub fn usd(v: &Value) -> String {
    match Usd::from_json(v) {
        Ok(u) => usd_text(u),
        Err(_) => text(v),
    }
}

pub fn usd_text(u: Usd) -> String {
    let s = u.to_string();
    match s.split_once('.') {
        None => format!("{s}.00"),
        Some((_, frac)) if frac.len() == 1 => format!("{s}0"),
        Some(_) => s,
    }
}

/// An RFC 3339 time as `2026-12-01 14:03:07` (UTC, to the second); other text as is.
pub fn when(v: &Value) -> String {
    match v.as_str() {
        Some(t) if t.len() >= 19 && t.as_bytes()[10] == b'T' => {
            format!("{} {}", &t[..10], &t[11..19])
        }
        _ => text(v),
    }
}

/// Any scalar as text; null and missing as `-`.
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        other => other.to_string(),
    }
}

/// `2x H100 SXM` from an offer object.
pub fn gpus(offer: &Value) -> String {
    match (offer.get("gpu_count"), offer.get("gpu")) {
        (Some(n), Some(g)) => format!("{}x {}", text(n), text(g)),
        (None, Some(g)) => text(g),
        _ => "-".into(),
    }
}

/// The `data` array of a list answer (or the answer itself when it is an array).
pub fn list_items(v: &Value) -> &[Value] {
    match v {
        Value::Array(a) => a,
        _ => v
            .get("data")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[]),
    }
}

pub fn offers_table(items: &[Value]) -> String {
    use Align::{Left as L, Money as M, Right as R};
    let mut t = Table::new(&[
        ("ID", L),
        ("GPU", L),
        ("N", R),
        ("VRAM", R),
        ("REGION", L),
        ("$/H", M),
        ("$/GPU-H", M),
        ("SPOT", L),
        ("REL", R),
        ("AVAIL", R),
    ]);
    let null = Value::Null;
    for o in items {
        let f = |k: &str| o.get(k).unwrap_or(&null);
        t.row(vec![
            text(f("id")),
            text(f("gpu")),
            text(f("gpu_count")),
            text(f("vram_gb")),
            text(f("region")),
            usd(f("price_per_hour")),
            usd(f("price_per_gpu_hour")),
            text(f("interruptible")),
            text(f("reliability")),
            text(f("available")),
        ]);
    }
    t.render()
}

pub fn rentals_table(items: &[Value]) -> String {
    use Align::{Left as L, Money as M};
    let mut t = Table::new(&[
        ("ID", L),
        ("STATE", L),
        ("GPU", L),
        ("PROVIDER", L),
        ("$/H", M),
        ("COST", M),
        ("MODEL", L),
        ("CREATED (UTC)", L),
    ]);
    let null = Value::Null;
    for r in items {
        let f = |k: &str| r.get(k).unwrap_or(&null);
        t.row(vec![
            text(f("id")),
            text(f("state")),
            gpus(f("offer")),
            text(f("provider")),
            usd(f("price_per_hour")),
            usd(f("cost")),
            // A cold model's deployment, or "-" for a plain rental.
            match f("model") {
                Value::Null => "-".into(),
                v => text(v),
            },
            when(f("created_at")),
        ]);
    }
    t.render()
}

pub fn ledger_table(items: &[Value]) -> String {
    use Align::{Left as L, Money as M};
    let mut t = Table::new(&[
        ("ID", L),
        ("AT (UTC)", L),
        ("KIND", L),
        ("AMOUNT", M),
        ("HOLD", M),
        ("BALANCE", M),
        ("FOR", L),
        ("NOTE", L),
    ]);
    let null = Value::Null;
    for e in items {
        let f = |k: &str| e.get(k).unwrap_or(&null);
        let for_ = match (e.get("rental_id"), e.get("request_id")) {
            (Some(v @ Value::String(_)), _) | (_, Some(v @ Value::String(_))) => text(v),
            _ => "-".into(),
        };
        let note = match f("note") {
            Value::Null => String::new(),
            v => text(v),
        };
        t.row(vec![
            text(f("id")),
            when(f("at")),
            text(f("kind")),
            usd(f("amount")),
            match f("hold_amount") {
                Value::Null => "-".into(),
                v => usd(v),
            },
            usd(f("balance_after")),
            for_,
            note,
        ]);
    }
    t.render()
}

pub fn accounts_table(items: &[Value]) -> String {
    use Align::{Left as L, Money as M};
    let mut t = Table::new(&[
        ("ID", L),
        ("NAME", L),
        ("BALANCE", M),
        ("HELD", M),
        ("AVAILABLE", M),
        ("CREATED (UTC)", L),
    ]);
    let null = Value::Null;
    for a in items {
        let f = |k: &str| a.get(k).unwrap_or(&null);
        t.row(vec![
            text(f("id")),
            text(f("name")),
            usd(f("balance")),
            usd(f("held")),
            usd(f("available")),
            when(f("created_at")),
        ]);
    }
    t.render()
}

pub fn keys_table(items: &[Value]) -> String {
    use Align::Left as L;
    let mut t = Table::new(&[
        ("ID", L),
        ("PREFIX", L),
        ("STATE", L),
        ("CREATED (UTC)", L),
        ("REVOKED (UTC)", L),
    ]);
    let null = Value::Null;
    for k in items {
        let f = |n: &str| k.get(n).unwrap_or(&null);
        t.row(vec![
            text(f("id")),
            text(f("prefix")),
            if f("revoked_at").is_null() {
                "active"
            } else {
                "revoked"
            }
            .into(),
            when(f("created_at")),
            when(f("revoked_at")),
        ]);
    }
    t.render()
}

pub fn providers_table(items: &[Value]) -> String {
    use Align::{Left as L, Right as R};
    let mut t = Table::new(&[
        ("NAME", L),
        ("KIND", L),
        ("STATUS", L),
        ("OFFERS", R),
        ("LAST REFRESH (UTC)", L),
        ("LAST ERROR", L),
    ]);
    let null = Value::Null;
    for p in items {
        let f = |k: &str| p.get(k).unwrap_or(&null);
        t.row(vec![
            text(f("name")),
            text(f("kind")),
            text(f("status")),
            text(f("offers")),
            when(f("last_refresh_at")),
            match f("last_error") {
                Value::Null => String::new(),
                v => text(v).chars().take(80).collect(),
            },
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn columns_are_sized_to_content_and_aligned() {
        let mut t = Table::new(&[("ID", Align::Left), ("$/H", Align::Right)]);
        t.row(vec!["a".into(), "2.50".into()]);
        t.row(vec!["longer-id".into(), "10.25".into()]);
        assert_eq!(
            t.render(),
            "ID           $/H\n\
             a           2.50\n\
             longer-id  10.25\n"
        );
    }

    #[test]
    fn short_rows_are_padded_and_lines_have_no_trailing_space() {
        let mut t = Table::new(&[("A", Align::Left), ("NOTE", Align::Left)]);
        t.row(vec!["x".into()]);
        t.row(vec!["y".into(), "long note".into()]);
        let out = t.render();
        assert_eq!(out, "A  NOTE\nx\ny  long note\n");
    }

    #[test]
    fn money_keeps_every_digit_and_two_decimals() {
        let v: Value = serde_json::from_str("[2.5, 0.000278, 100, null]").unwrap();
        assert_eq!(usd(&v[0]), "2.50");
        assert_eq!(usd(&v[1]), "0.000278");
        assert_eq!(usd(&v[2]), "100.00");
        assert_eq!(usd(&v[3]), "-");
    }

    #[test]
    fn offers_table_has_the_documented_columns() {
        let list: Value = serde_json::from_str(
            r#"{"object":"list","data":[{"id":"vast:1","gpu":"H100 SXM","gpu_count":8,
            "vram_gb":80,"region":"us-east","price_per_hour":18.4,"price_per_gpu_hour":2.3,
            "interruptible":true,"reliability":0.98,"available":3}],"next_cursor":null}"#,
        )
        .unwrap();
        let out = offers_table(list_items(&list));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "ID      GPU       N  VRAM  REGION     $/H  $/GPU-H  SPOT   REL  AVAIL"
        );
        assert_eq!(
            lines[1],
            "vast:1  H100 SXM  8    80  us-east  18.40     2.30  yes   0.98      3"
        );
    }

    #[test]
    fn money_columns_line_up_on_the_decimal_point() {
        let mut t = Table::new(&[("K", Align::Left), ("USD", Align::Money)]);
        for v in ["2.5", "0.000278", "-1240", "-", "12.25"] {
            t.row(vec!["k".into(), v.into()]);
        }
        assert_eq!(
            t.render(),
            [
                "K           USD",
                "k      2.500000",
                "k      0.000278",
                "k  -1240.000000",
                "k             -",
                "k     12.250000",
                "",
            ]
            .join("\n")
        );
        let out = t.render();
        let points: Vec<usize> = out.lines().skip(1).filter_map(|l| l.find('.')).collect();
        assert!(points.windows(2).all(|w| w[0] == w[1]), "{out}");
        // Two decimals when no amount needs more.
        let mut t = Table::new(&[("USD", Align::Money)]);
        t.row(vec!["3".into()]);
        t.row(vec!["0.5".into()]);
        assert_eq!(t.render(), " USD\n3.00\n0.50\n");
    }

    #[test]
    fn times_are_short() {
        assert_eq!(
            when(&json!("2026-12-01T14:03:07.123Z")),
            "2026-12-01 14:03:07"
        );
        assert_eq!(when(&json!("2026-12-01T14:03:07Z")), "2026-12-01 14:03:07");
        assert_eq!(when(&Value::Null), "-");
        assert_eq!(when(&json!("soon")), "soon");
    }

    #[test]
    fn rentals_table_shows_the_gpu_snapshot() {
        let r = json!([{"id":"rnt_1","state":"running","offer":{"gpu":"A100","gpu_count":2},
            "provider":"vast","price_per_hour":3,"cost":0.5,"created_at":"2026-01-01T00:00:00Z"}]);
        let out = rentals_table(list_items(&r));
        assert!(out.lines().nth(1).unwrap().contains("2x A100"), "{out}");
        assert!(out.lines().nth(1).unwrap().contains("3.00"), "{out}");
    }
}
