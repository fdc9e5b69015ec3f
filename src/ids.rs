//! Identifiers and secrets: random ids with a type prefix, API keys and their hashes.

use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};

const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// `n` random characters from `[0-9a-z]`.
pub fn random_token(n: usize) -> String {
    let rng = SystemRandom::new();
    let mut buf = vec![0u8; n];
    // SystemRandom only fails when the OS has no entropy source at all.
    rng.fill(&mut buf).expect("the OS random source failed");
    buf.iter()
        .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char)
        .collect()
}

/// A new id like `rnt_k3j2...` (16 random characters after the prefix).
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", random_token(16))
}

/// A new API key secret: `sk-spotd-` and 40 random characters.
pub fn new_api_key() -> String {
    format!("sk-spotd-{}", random_token(40))
}

/// SHA-256 of a secret, hex encoded. Only this is ever stored.
pub fn hash_secret(secret: &str) -> String {
    let d = digest::digest(&digest::SHA256, secret.as_bytes());
    hex(d.as_ref())
}

/// SHA-256 of arbitrary bytes (request bodies for idempotency), hex encoded.
pub fn hash_bytes(b: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, b).as_ref())
}

pub fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

/// Compares two hashes without an early exit (the inputs are hashes, never secrets).
pub fn same_hash(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Standard base64 with padding.
pub(crate) fn base64_encode(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ABC[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_prefixed_and_unique() {
        let a = new_id("rnt");
        let b = new_id("rnt");
        assert!(a.starts_with("rnt_") && a.len() == 20);
        assert_ne!(a, b);
    }

    #[test]
    fn hashes_are_stable_hex() {
        assert_eq!(
            hash_secret("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(same_hash(&hash_secret("x"), &hash_secret("x")));
        assert!(!same_hash(&hash_secret("x"), &hash_secret("y")));
    }
}
