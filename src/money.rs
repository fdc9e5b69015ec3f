//! Money: integer micro-USD, parsed and printed as exact decimals.
//!
//! Nothing in spotd computes money in floating point. `Usd` wraps an `i64` count of
//! micro-dollars (1 USD = 1_000_000). JSON numbers reach [`Usd::parse`] as their decimal
//! text (serde_json's `arbitrary_precision`), and [`Usd::to_json`] writes a JSON number
//! with at most 6 decimals. The only rounding in the code base is [`prorate`].

use std::fmt;
use std::ops::{Add, AddAssign, Neg, Sub, SubAssign};

use serde::{Deserialize, Serialize};

/// Micro-USD per USD.
pub(crate) const MICROS: i64 = 1_000_000;

/// An exact amount of US dollars, in micro-dollars. Stored records serialize it as the
/// plain integer; the JSON edge uses [`Usd::to_json`] / [`Usd::from_json`].
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Usd(pub i64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("'{0}' is not a valid USD amount (a decimal number with at most 6 decimals)")]
    Invalid(String),
    #[error("'{0}' is out of range")]
    OutOfRange(String),
    #[error("'{0}' has more than 6 decimals: spotd counts money in whole micro-dollars (0.000001 USD) and does not round an amount it is given")]
    TooPrecise(String),
}

impl Usd {
    pub const ZERO: Usd = Usd(0);

    pub fn from_micros(m: i64) -> Usd {
        Usd(m)
    }

    pub fn micros(self) -> i64 {
        self.0
    }

    pub fn from_dollars(d: i64) -> Usd {
        Usd(d * MICROS)
    }

    pub(crate) fn is_negative(self) -> bool {
        self.0 < 0
    }

    pub(crate) fn checked_add(self, o: Usd) -> Option<Usd> {
        self.0.checked_add(o.0).map(Usd)
    }

    pub fn min(self, o: Usd) -> Usd {
        Usd(self.0.min(o.0))
    }

    pub fn max(self, o: Usd) -> Usd {
        Usd(self.0.max(o.0))
    }

    /// Parses a decimal like `"2.5"`, `"-0.000001"`, `"100"`, or one in exponent form as
    /// JSON encoders write small and large floats (`"5e-05"`, Python's text for
    /// 0.00005; `"1.5E+2"`). More than 6 decimals is an error rather than a silent
    /// rounding. Amounts are limited to +-1e12 USD so every product in `prorate` fits.
    pub fn parse(s: &str) -> Result<Usd, MoneyError> {
        let t = s.trim();
        let bad = || MoneyError::Invalid(s.to_string());
        let (neg, body) = match t.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, t.strip_prefix('+').unwrap_or(t)),
        };
        let (mantissa, exp) = match body.split_once(['e', 'E']) {
            Some((m, e)) => {
                let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
                // A longer exponent is never an amount of money (and would make the
                // shifted text below as long as it says).
                if digits.is_empty()
                    || digits.len() > 3
                    || !digits.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(bad());
                }
                let n: i32 = digits.parse().map_err(|_| bad())?;
                (m, if e.starts_with('-') { -n } else { n })
            }
            None => (body, 0),
        };
        let (int, frac) = match mantissa.split_once('.') {
            Some((i, f)) => (i, f),
            None => (mantissa, ""),
        };
        if int.is_empty() && frac.is_empty() {
            return Err(bad());
        }
        if !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        // Move the decimal point `exp` places: `5e-05` is `0.00005`.
        let shifted;
        let (int, frac) = if exp == 0 {
            (int, frac)
        } else {
            let digits = format!("{int}{frac}");
            let point = int.len() as i64 + i64::from(exp);
            shifted = if point <= 0 {
                (
                    String::new(),
                    format!("{}{digits}", "0".repeat((-point) as usize)),
                )
            } else if point as usize >= digits.len() {
                (
                    format!("{digits}{}", "0".repeat(point as usize - digits.len())),
                    String::new(),
                )
            } else {
                let (i, f) = digits.split_at(point as usize);
                (i.to_string(), f.to_string())
            };
            (shifted.0.as_str(), shifted.1.as_str())
        };
        let frac_trimmed = frac.trim_end_matches('0');
        if frac_trimmed.len() > 6 {
            return Err(MoneyError::TooPrecise(s.to_string()));
        }
        let int_digits = int.trim_start_matches('0');
        if int_digits.len() > 12 {
            return Err(MoneyError::OutOfRange(s.to_string()));
        }
        let whole: i64 = if int_digits.is_empty() {
            0
        } else {
            int_digits.parse().map_err(|_| bad())?
        };
        let mut f: i64 = 0;
        for (i, b) in frac_trimmed.bytes().enumerate() {
            f += i64::from(b - b'0') * 10i64.pow(5 - i as u32);
        }
        let m = whole * MICROS + f;
        Ok(Usd(if neg { -m } else { m }))
    }

    /// Accepts a JSON number (exact, via its decimal text) or a JSON string.
    pub fn from_json(v: &serde_json::Value) -> Result<Usd, MoneyError> {
        match v {
            serde_json::Value::Number(n) => Usd::parse(&n.to_string()),
            serde_json::Value::String(s) => Usd::parse(s),
            other => Err(MoneyError::Invalid(other.to_string())),
        }
    }

    /// A JSON number with at most 6 decimals and no trailing zeros.
    pub fn to_json(self) -> serde_json::Value {
        let s = self.to_string();
        match s.parse::<serde_json::Number>() {
            Ok(n) => serde_json::Value::Number(n),
            Err(_) => serde_json::Value::String(s),
        }
    }
}

impl fmt::Display for Usd {
    /// `2.5`, `0.000001`, `-3`, `100`: the shortest exact decimal.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let neg = self.0 < 0;
        let abs = self.0.unsigned_abs();
        let whole = abs / MICROS as u64;
        let frac = abs % MICROS as u64;
        if neg {
            f.write_str("-")?;
        }
        if frac == 0 {
            write!(f, "{whole}")
        } else {
            let digits = format!("{frac:06}");
            write!(f, "{whole}.{}", digits.trim_end_matches('0'))
        }
    }
}

impl Add for Usd {
    type Output = Usd;
    fn add(self, o: Usd) -> Usd {
        Usd(self.0 + o.0)
    }
}
impl Sub for Usd {
    type Output = Usd;
    fn sub(self, o: Usd) -> Usd {
        Usd(self.0 - o.0)
    }
}
impl AddAssign for Usd {
    fn add_assign(&mut self, o: Usd) {
        self.0 += o.0;
    }
}
impl SubAssign for Usd {
    fn sub_assign(&mut self, o: Usd) {
        self.0 -= o.0;
    }
}
impl Neg for Usd {
    type Output = Usd;
    fn neg(self) -> Usd {
        Usd(-self.0)
    }
}
impl std::iter::Sum for Usd {
    fn sum<I: Iterator<Item = Usd>>(iter: I) -> Usd {
        Usd(iter.map(|u| u.0).sum())
    }
}

/// What `seconds` of use cost at `per_hour`: `per_hour * seconds / 3600`, rounded half
/// up to the micro-dollar. This is the one rounding rule of spotd. Billing always
/// computes the cumulative amount due since `started_at` and charges the difference
/// with what was already charged, so rounding never accumulates across steps.
pub fn prorate(per_hour: Usd, seconds: u64) -> Usd {
    let p = i128::from(per_hour.0);
    let s = i128::from(seconds);
    let num = p * s;
    let q = if num >= 0 {
        (num + 1800) / 3600
    } else {
        (num - 1800) / 3600
    };
    Usd(q.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64)
}

/// `per_gpu = total / count`, rounded half up (display only; never charged).
pub(crate) fn per_unit(total: Usd, count: u32) -> Usd {
    if count == 0 {
        return total;
    }
    let c = i64::from(count);
    Usd((total.0 + c / 2) / c)
}

/// Serde helper for JSON views: `#[serde(serialize_with = "money::ser")]`.
pub(crate) fn ser<S: serde::Serializer>(v: &Usd, s: S) -> Result<S::Ok, S::Error> {
    v.to_json().serialize(s)
}

/// Serde helper for optional amounts in JSON views.
pub(crate) fn ser_opt<S: serde::Serializer>(v: &Option<Usd>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(u) => u.to_json().serialize(s),
        None => s.serialize_none(),
    }
}

/// Serde helper for JSON input: `#[serde(deserialize_with = "money::de")]`.
pub(crate) fn de<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Usd, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Usd::from_json(&v).map_err(serde::de::Error::custom)
}

/// Optional variant of [`de`].
pub(crate) fn de_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Usd>, D::Error> {
    let v = Option::<serde_json::Value>::deserialize(d)?;
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => Usd::from_json(&v)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

/// For a field of a partial update (`PATCH`), with `#[serde(default)]`: absent is
/// `None` (leave it), `null` is `Some(None)` (clear it), an amount is `Some(Some(_))`.
pub(crate) fn de_patch<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<Usd>>, D::Error> {
    de_opt(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print_round_trip() {
        for (s, m) in [
            ("2.5", 2_500_000),
            ("0.000001", 1),
            ("100", 100_000_000),
            ("-3.25", -3_250_000),
            (".5", 500_000),
            ("1.100000", 1_100_000),
        ] {
            let u = Usd::parse(s).unwrap();
            assert_eq!(u.0, m, "{s}");
        }
        assert_eq!(Usd(2_500_000).to_string(), "2.5");
        assert_eq!(Usd(1).to_string(), "0.000001");
        assert_eq!(Usd(-3_250_000).to_string(), "-3.25");
        assert_eq!(Usd(100_000_000).to_string(), "100");
    }

    #[test]
    fn parse_rejects_garbage_and_excess_precision() {
        for s in [
            "",
            "abc",
            "1.2.3",
            "0.0000001",
            "1e-07",
            "1.5e-6",
            "1e",
            "1e+",
            "e5",
            "1e1000",
            "1e12",
            "1e5.5",
            "1,5",
            "-",
            ".",
            "NaN",
            "1234567890123",
        ] {
            assert!(Usd::parse(s).is_err(), "{s} should fail");
        }
    }

    #[test]
    fn exponent_form_is_exact_or_refused() {
        for (s, m) in [
            ("5e-05", 50),
            ("5E-05", 50),
            ("1e-6", 1),
            ("1.5e2", 150_000_000),
            ("1.5E+2", 150_000_000),
            ("2.5e0", 2_500_000),
            ("-1.25e-3", -1_250),
            ("0.00012e1", 1_200),
            ("123.456e-3", 123_456),
            ("1e3", 1_000_000_000),
        ] {
            assert_eq!(Usd::parse(s), Ok(Usd(m)), "{s}");
        }
        // Past the micro-dollar: refused, and the message says why.
        let e = Usd::parse("1e-07").unwrap_err();
        assert_eq!(e, MoneyError::TooPrecise("1e-07".into()));
        assert!(e.to_string().contains("more than 6 decimals"), "{e}");
        // What Python's json.dumps writes for 0.00005 reaches spotd as this text.
        let v: serde_json::Value = serde_json::from_str(r#"{"a": 5e-05}"#).unwrap();
        assert_eq!(Usd::from_json(&v["a"]), Ok(Usd(50)));
    }

    #[test]
    fn json_numbers_are_exact() {
        let v: serde_json::Value = serde_json::from_str("{\"a\": 0.1, \"b\": 97.200001}").unwrap();
        assert_eq!(Usd::from_json(&v["a"]).unwrap(), Usd(100_000));
        assert_eq!(Usd::from_json(&v["b"]).unwrap(), Usd(97_200_001));
        assert_eq!(
            serde_json::to_string(&Usd(97_200_001).to_json()).unwrap(),
            "97.200001"
        );
        assert_eq!(serde_json::to_string(&Usd(0).to_json()).unwrap(), "0");
    }

    #[test]
    fn prorate_rounds_half_up_once() {
        // $2.50/h for one hour is exactly $2.50.
        assert_eq!(prorate(Usd(2_500_000), 3600), Usd(2_500_000));
        // $1/h for one second is 277.777... micro-USD -> 278.
        assert_eq!(prorate(Usd(1_000_000), 1), Usd(278));
        // Cumulative billing: the sum of step differences equals the whole.
        let p = Usd(1_234_567);
        let mut charged = Usd::ZERO;
        for t in (0..=7200u64).step_by(7) {
            let due = prorate(p, t);
            charged += due - charged;
        }
        assert_eq!(charged, prorate(p, 7196));
    }

    #[test]
    fn per_unit_divides() {
        assert_eq!(per_unit(Usd(10_000_000), 4), Usd(2_500_000));
        assert_eq!(per_unit(Usd(1), 2), Usd(1));
    }
}
