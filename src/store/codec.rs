//! The one place records become bytes: bincode 2 (serde) behind a version byte.
//!
//! Every stored value is `[version, bincode...]`, and the version byte is what picks the
//! decoder. spotd's own records are all at [`RECORD_VERSION`] and go through
//! [`encode`] / [`decode`]. A record whose layout changes implements [`Versioned`]: it
//! is written with its own, higher version, and [`Versioned::migrate`] reads each older
//! version it ever had into the current type (see `sandbox::sim::InstanceRecord`).
//!
//! A body must decode to exactly its length: bytes left over mean the bytes are some
//! other layout than the one asked for (bincode is not self-describing, so a record
//! with an extra field decodes "fine" as its older self), and are an error. For the
//! same reason records must not use `skip_serializing_if`, untagged enums or
//! `serde_json::Value`.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::StoreError;

/// The record format written by this release for every record that is not
/// [`Versioned`].
pub const RECORD_VERSION: u8 = 1;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

fn encode_as<T: Serialize + ?Sized>(version: u8, v: &T) -> Result<Vec<u8>, StoreError> {
    let mut out = vec![version];
    bincode::serde::encode_into_std_write(v, &mut out, config())
        .map_err(|e| StoreError::Encode(Arc::new(e)))?;
    Ok(out)
}

/// A record's bytes after its version byte.
#[derive(Clone, Copy, Debug)]
pub struct Body<'a>(&'a [u8]);

impl Body<'_> {
    /// Decodes the whole body as `T`; bytes left over are an error, not ignored.
    pub fn decode<T: DeserializeOwned>(self) -> Result<T, StoreError> {
        let (v, read) = bincode::serde::decode_from_slice(self.0, config())
            .map_err(|e| StoreError::Decode(Arc::new(e)))?;
        match self.0.len().saturating_sub(read) {
            0 => Ok(v),
            left => Err(StoreError::Codec(format!(
                "decode: {left} byte(s) left over after the record: it is not the layout it was read as"
            ))),
        }
    }
}

/// Splits off the version byte and lets `read` choose the decoder by it.
fn decode_with<T>(
    bytes: &[u8],
    read: impl FnOnce(u8, Body<'_>) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&version, body)) => read(version, Body(body)),
        None => Err(StoreError::Codec("empty record".into())),
    }
}

/// The error for a version byte the reader has no decoder for.
pub fn unknown_version(found: u8, writes: u8) -> StoreError {
    if found > writes {
        StoreError::Codec(format!(
            "record version {found} is newer than this spotd understands ({writes})"
        ))
    } else {
        StoreError::Codec(format!(
            "record version {found} is not one this spotd knows for this record (it writes {writes})"
        ))
    }
}

pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    encode_as(RECORD_VERSION, v)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    decode_with(bytes, |version, body| match version {
        RECORD_VERSION => body.decode(),
        v => Err(unknown_version(v, RECORD_VERSION)),
    })
}

/// A record with a version history of its own.
pub trait Versioned: Serialize + DeserializeOwned {
    /// The version this release writes, and reads as `Self`.
    const VERSION: u8;
    /// Reads a body stored under an older `version` (never [`Self::VERSION`]), or
    /// answers [`unknown_version`] for a version this record never had.
    fn migrate(version: u8, body: Body<'_>) -> Result<Self, StoreError>;
}

pub fn encode_versioned<T: Versioned>(v: &T) -> Result<Vec<u8>, StoreError> {
    encode_as(T::VERSION, v)
}

pub fn decode_versioned<T: Versioned>(bytes: &[u8]) -> Result<T, StoreError> {
    decode_with(bytes, |version, body| {
        if version == T::VERSION {
            body.decode()
        } else {
            T::migrate(version, body)
        }
    })
}

/// A record type with a table of its own: how it becomes bytes and back. Most are plain
/// ([`encode`] / [`decode`] at [`RECORD_VERSION`]); a [`Versioned`] one goes through its
/// own version history. The store's typed reads and writes take only these, so a record
/// that gained a version cannot be read or written around it by accident.
pub trait Record: Sized {
    fn to_bytes(&self) -> Result<Vec<u8>, StoreError>;
    fn from_bytes(bytes: &[u8]) -> Result<Self, StoreError>;
}

macro_rules! plain_records {
    ($($t:ty),*) => {$(
        impl Record for $t {
            fn to_bytes(&self) -> Result<Vec<u8>, StoreError> {
                encode(self)
            }
            fn from_bytes(bytes: &[u8]) -> Result<Self, StoreError> {
                decode(bytes)
            }
        }
    )*};
}

macro_rules! versioned_records {
    ($($t:ty),*) => {$(
        impl Record for $t {
            fn to_bytes(&self) -> Result<Vec<u8>, StoreError> {
                encode_versioned(self)
            }
            fn from_bytes(bytes: &[u8]) -> Result<Self, StoreError> {
                decode_versioned(bytes)
            }
        }
    )*};
}

plain_records!(
    crate::model::ApiKey,
    crate::model::Offer,
    crate::model::LedgerEntry,
    crate::model::IdempotencyRecord
);
// Their older layouts are in `store::legacy`.
versioned_records!(crate::model::Account, crate::model::Rental);

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::model::{LedgerEntry, LedgerKind};
    use crate::money::Usd;

    fn entry() -> LedgerEntry {
        LedgerEntry {
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
        }
    }

    fn codec_message(r: Result<impl std::fmt::Debug, StoreError>) -> String {
        match r {
            Err(StoreError::Codec(m)) => m,
            other => panic!("expected a codec error, got {other:?}"),
        }
    }

    #[test]
    fn round_trip_with_version_byte() {
        let e = entry();
        let b = encode(&e).unwrap();
        assert_eq!(b[0], RECORD_VERSION);
        let back: LedgerEntry = decode(&b).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn unknown_version_is_an_error_not_garbage() {
        let mut b = encode(&42u64).unwrap();
        b[0] = 9;
        assert!(codec_message(decode::<u64>(&b)).contains("version 9 is newer"));
        b[0] = 0;
        assert!(codec_message(decode::<u64>(&b)).contains("version 0 is not one"));
        assert_eq!(codec_message(decode::<u64>(&[])), "empty record");
    }

    #[test]
    fn bytes_left_over_are_an_error_naming_how_many() {
        let mut b = encode(&42u64).unwrap();
        b.extend_from_slice(&[0, 0, 0]);
        let m = codec_message(decode::<u64>(&b));
        assert!(m.contains("3 byte(s) left over"), "{m}");
        // The case that matters: a record read as a shorter layout whose fields are a
        // prefix of its own used to decode silently.
        let b = encode(&entry()).unwrap();
        let m = codec_message(decode::<(String, String, u64)>(&b));
        assert!(m.contains("left over"), "{m}");
    }

    /// A record that gained a field: version 1 was `Old`, version 2 is `New`.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Old {
        a: u32,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct New {
        a: u32,
        b: Option<String>,
    }

    impl Versioned for New {
        const VERSION: u8 = 2;
        fn migrate(version: u8, body: Body<'_>) -> Result<New, StoreError> {
            match version {
                1 => body.decode::<Old>().map(|o| New { a: o.a, b: None }),
                v => Err(unknown_version(v, Self::VERSION)),
            }
        }
    }

    #[test]
    fn the_version_byte_picks_the_decoder() {
        let new = New {
            a: 5,
            b: Some("x".into()),
        };
        let b = encode_versioned(&new).unwrap();
        assert_eq!(b[0], 2);
        assert_eq!(decode_versioned::<New>(&b).unwrap(), new);

        // An old record (the shared encoding writes version 1) migrates.
        let old = encode(&Old { a: 7 }).unwrap();
        assert_eq!(old[0], 1);
        assert_eq!(
            decode_versioned::<New>(&old).unwrap(),
            New { a: 7, b: None }
        );

        // The same bytes under the other version are refused, not misread.
        let mut relabelled = old.clone();
        relabelled[0] = 2;
        assert!(decode_versioned::<New>(&relabelled).is_err());
        let mut relabelled = b.clone();
        relabelled[0] = 1;
        assert!(codec_message(decode_versioned::<New>(&relabelled)).contains("left over"));

        let mut future = b;
        future[0] = 3;
        assert!(codec_message(decode_versioned::<New>(&future)).contains("version 3 is newer"));
    }
}
