//! `spotd admin limits ACCOUNT [--per-hour USD|none] [--per-month USD|none]`: sets or
//! clears an account's spend guards (`PATCH /admin/v1/accounts/{id}`, SPEC section 6),
//! or with neither flag shows them (`GET`), with what was spent this month.

use hyper::Method;
use serde_json::{json, Map, Value};

use super::client::{encode, Auth, Client, ClientOpts};
use super::table;
use crate::money::Usd;

/// A cap on the command line: an amount sets it, `none` clears it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapArg {
    Set(Usd),
    Clear,
}

fn parse_cap(s: &str) -> Result<CapArg, String> {
    if s.trim().eq_ignore_ascii_case("none") {
        return Ok(CapArg::Clear);
    }
    let u = Usd::parse(s).map_err(|e| format!("{e}, or 'none' to clear the cap"))?;
    if u.is_negative() {
        return Err("a cap must not be negative ('none' clears it)".into());
    }
    Ok(CapArg::Set(u))
}

#[derive(clap::Args, Debug, Clone)]
pub struct LimitsArgs {
    /// The account (acct_...).
    pub account_id: String,
    /// Most the account's live rentals may cost together, in USD per hour; `none` clears.
    #[arg(long, value_parser = parse_cap, value_name = "USD|none", allow_negative_numbers = true)]
    pub per_hour: Option<CapArg>,
    /// Most the account may be charged in a calendar month (UTC), in USD; `none` clears.
    #[arg(long, value_parser = parse_cap, value_name = "USD|none", allow_negative_numbers = true)]
    pub per_month: Option<CapArg>,
    #[command(flatten)]
    pub common: ClientOpts,
}

/// The PATCH body for the flags given (`None`: only show the caps).
pub fn limits_body(a: &LimitsArgs) -> Option<Value> {
    let mut body = Map::new();
    for (field, cap) in [
        ("max_usd_per_hour", a.per_hour),
        ("max_usd_per_month", a.per_month),
    ] {
        match cap {
            Some(CapArg::Set(u)) => {
                body.insert(field.into(), u.to_json());
            }
            Some(CapArg::Clear) => {
                body.insert(field.into(), Value::Null);
            }
            None => {}
        }
    }
    (!body.is_empty()).then_some(Value::Object(body))
}

pub async fn limits(a: LimitsArgs, env: &[(String, String)]) -> Result<(), String> {
    let c = Client::new(&a.common, env, Auth::Admin)?;
    let path = format!("/admin/v1/accounts/{}", encode(&a.account_id));
    let v = match limits_body(&a) {
        Some(body) => c.call(Method::PATCH, &path, Some(&body)).await?,
        None => c.call(Method::GET, &path, None).await?,
    };
    if !c.printed_json(&v) {
        print!("{}", describe(&a.account_id, &v));
    }
    Ok(())
}

/// The caps as a person reads them.
fn describe(id: &str, v: &Value) -> String {
    let cap = |k: &str, unit: &str| match v.get(k) {
        Some(Value::Null) | None => "none".to_string(),
        Some(u) => format!("${}{unit}", table::usd(u)),
    };
    format!(
        "limits of {id}: per hour {}, per month {}; spent this month ${}\n",
        cap("max_usd_per_hour", "/h"),
        cap("max_usd_per_month", ""),
        table::usd(v.get("spent_this_month").unwrap_or(&json!(0)))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(per_hour: Option<&str>, per_month: Option<&str>) -> LimitsArgs {
        LimitsArgs {
            account_id: "acct_1".into(),
            per_hour: per_hour.map(|s| parse_cap(s).unwrap()),
            per_month: per_month.map(|s| parse_cap(s).unwrap()),
            common: ClientOpts::default(),
        }
    }

    #[test]
    fn flags_become_the_patch_body() {
        assert_eq!(
            limits_body(&args(Some("2.5"), Some("none"))),
            Some(json!({"max_usd_per_hour": 2.5, "max_usd_per_month": null}))
        );
        assert_eq!(
            limits_body(&args(None, Some("100"))),
            Some(json!({"max_usd_per_month": 100}))
        );
        assert_eq!(limits_body(&args(None, None)), None, "show only");
        assert!(parse_cap("-1").is_err());
        assert!(parse_cap("1.0000001").is_err());
        assert!(parse_cap("abc").unwrap_err().contains("'none'"));
        assert_eq!(parse_cap("NONE"), Ok(CapArg::Clear));
    }

    #[test]
    fn the_caps_read_as_a_sentence() {
        let v =
            json!({"max_usd_per_hour": 2.5, "max_usd_per_month": null, "spent_this_month": 1.25});
        assert_eq!(
            describe("acct_1", &v),
            "limits of acct_1: per hour $2.50/h, per month none; spent this month $1.25\n"
        );
    }
}
