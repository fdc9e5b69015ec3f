//! The one place records become bytes: bincode 2 (serde) behind a version byte.
//!
//! Every stored value is `[version, bincode...]`. `decode` reads the version first, so a
//! later release can add `2 => decode v2`, `1 => decode v1 and migrate` here and
//! nowhere else. bincode is not self-describing: records must not use
//! `skip_serializing_if`, untagged enums or `serde_json::Value`.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::StoreError;

/// The record format written by this release.
pub const RECORD_VERSION: u8 = 1;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    let mut out = vec![RECORD_VERSION];
    let body = bincode::serde::encode_to_vec(v, config())
        .map_err(|e| StoreError::Codec(format!("encode: {e}")))?;
    out.extend_from_slice(&body);
    Ok(out)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&RECORD_VERSION, body)) => {
            let (v, _) = bincode::serde::decode_from_slice(body, config())
                .map_err(|e| StoreError::Codec(format!("decode: {e}")))?;
            Ok(v)
        }
        Some((v, _)) => Err(StoreError::Codec(format!(
            "record version {v} is newer than this spotd understands ({RECORD_VERSION})"
        ))),
        None => Err(StoreError::Codec("empty record".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LedgerEntry, LedgerKind};
    use crate::money::Usd;

    #[test]
    fn round_trip_with_version_byte() {
        let e = LedgerEntry {
            id: "led_1".into(),
            account_id: "acct_1".into(),
            seq: 7,
            at: 1_700_000_000_000,
            kind: LedgerKind::Charge,
            amount: Usd(-1234),
            rental_id: Some("rnt_1".into()),
            request_id: None,
            note: None,
            balance_after: Usd(99_000_000),
        };
        let b = encode(&e).unwrap();
        assert_eq!(b[0], RECORD_VERSION);
        let back: LedgerEntry = decode(&b).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn unknown_version_is_an_error_not_garbage() {
        let mut b = encode(&42u64).unwrap();
        b[0] = 9;
        assert!(decode::<u64>(&b).is_err());
        assert!(decode::<u64>(&[]).is_err());
    }
}
