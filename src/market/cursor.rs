//! Page cursors: opaque, URL-safe (lowercase hex) tokens saying where the next page of
//! one query starts.
//!
//! A cursor names the index snapshot its walk started on (process epoch + version),
//! the rank of the last offer returned in that snapshot's sort order, and that offer's
//! sort key and id (for the keyset fallback once the snapshot is gone). It ends with a
//! checksum over its bytes and the query's filter and sort, so a cursor from another
//! query, or a damaged one, is refused instead of walking somewhere arbitrary.

use ring::digest;

use crate::error::Error;

use super::query::{OfferFilter, Sort};

const FORMAT: u8 = 1;
const TAG_LEN: usize = 8;
/// Offer ids are short; this bounds what a client can make us allocate.
const MAX_ID_LEN: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub epoch: u64,
    pub version: u64,
    /// Rank (position in the sort order) of the last offer returned.
    pub rank: u32,
    /// That offer's `Sort::key` and id.
    pub key: i64,
    pub id: String,
}

fn tag(filter: &OfferFilter, sort: Sort, body: &[u8]) -> [u8; TAG_LEN] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(filter.canonical().as_bytes());
    ctx.update(sort.as_str().as_bytes());
    ctx.update(body);
    let d = ctx.finish();
    let mut out = [0u8; TAG_LEN];
    out.copy_from_slice(&d.as_ref()[..TAG_LEN]);
    out
}

impl Cursor {
    pub(crate) fn encode(&self, filter: &OfferFilter, sort: Sort) -> String {
        let id = &self.id.as_bytes()[..self.id.len().min(MAX_ID_LEN)];
        let mut b = Vec::with_capacity(31 + id.len() + TAG_LEN);
        b.push(FORMAT);
        b.extend_from_slice(&self.epoch.to_be_bytes());
        b.extend_from_slice(&self.version.to_be_bytes());
        b.extend_from_slice(&self.rank.to_be_bytes());
        b.extend_from_slice(&self.key.to_be_bytes());
        b.extend_from_slice(&(id.len() as u16).to_be_bytes());
        b.extend_from_slice(id);
        let t = tag(filter, sort, &b);
        b.extend_from_slice(&t);
        crate::ids::hex(&b)
    }

    pub(crate) fn decode(token: &str, filter: &OfferFilter, sort: Sort) -> Result<Cursor, Error> {
        let bad = || {
            Error::invalid_param(
                "cursor",
                "cursor is not valid for this query: pass the next_cursor of the previous page unchanged, with the same filters and sort",
            )
        };
        let b = unhex(token).ok_or_else(bad)?;
        if b.len() < 31 + TAG_LEN || b[0] != FORMAT {
            return Err(bad());
        }
        let (body, t) = b.split_at(b.len() - TAG_LEN);
        if tag(filter, sort, body) != t {
            return Err(bad());
        }
        let u64_at = |i: usize| -> Option<[u8; 8]> { body.get(i..i + 8)?.try_into().ok() };
        let epoch = u64::from_be_bytes(u64_at(1).ok_or_else(bad)?);
        let version = u64::from_be_bytes(u64_at(9).ok_or_else(bad)?);
        let rank: [u8; 4] = body
            .get(17..21)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(bad)?;
        let key = i64::from_be_bytes(u64_at(21).ok_or_else(bad)?);
        let len: [u8; 2] = body
            .get(29..31)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(bad)?;
        let len = usize::from(u16::from_be_bytes(len));
        let id = body.get(31..).filter(|s| s.len() == len).ok_or_else(bad)?;
        let id = String::from_utf8(id.to_vec()).map_err(|_| bad())?;
        Ok(Cursor {
            epoch,
            version,
            rank: u32::from_be_bytes(rank),
            key,
            id,
        })
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 2 * (64 + MAX_ID_LEN) {
        return None;
    }
    let b = s.as_bytes();
    let val = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    b.chunks(2)
        .map(|p| Some(val(p[0])? << 4 | val(p[1])?))
        .collect()
}
