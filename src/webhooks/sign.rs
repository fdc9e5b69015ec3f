//! Standard Webhooks signing: the secret (`whsec_` + base64 of 32 random bytes from
//! ring's `SystemRandom`) and `webhook-signature: v1,<base64 HMAC-SHA256 over
//! "{webhook-id}.{webhook-timestamp}.{body}">`, keyed with the 32 bytes themselves.

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// What a secret starts with (Standard Webhooks' convention).
pub const SECRET_PREFIX: &str = "whsec_";
/// Bytes of a signing key (the spec allows 24 to 64).
pub const KEY_BYTES: usize = 32;

/// A new signing key and the secret that carries it (shown to the operator once).
pub(crate) fn new_key() -> (Vec<u8>, String) {
    let mut key = vec![0u8; KEY_BYTES];
    // SystemRandom only fails when the OS has no entropy source at all.
    SystemRandom::new()
        .fill(&mut key)
        .expect("the OS random source failed");
    let secret = format!("{SECRET_PREFIX}{}", crate::ids::base64_encode(&key));
    (key, secret)
}

/// The base64 HMAC-SHA256 of `"{id}.{timestamp}.{body}"` under `key`: what follows
/// `v1,` in `webhook-signature`.
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&k);
    ctx.update(id.as_bytes());
    ctx.update(b".");
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    crate::ids::base64_encode(ctx.sign().as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::base64_encode;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(raw.as_bytes()), enc);
        }
    }

    /// The example of the Standard Webhooks spec and its reference libraries: secret
    /// `whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw`, id `msg_p5jXN8AQM9LWM0D4loKWxJek`,
    /// timestamp 1614265330, body `{"test": 2432232314}`.
    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        let key = [
            0x31, 0xf2, 0x90, 0xf6, 0xbf, 0x06, 0x29, 0x8a, 0xab, 0x4f, 0x08, 0xd4, 0x3c, 0x3f,
            0x08, 0x2c, 0xf6, 0x48, 0xa3, 0x62, 0xda, 0x2d, 0xa4, 0xb0,
        ];
        assert_eq!(base64_encode(&key), "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let sig = signature(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn a_new_secret_carries_its_key() {
        let (key, secret) = new_key();
        assert_eq!(key.len(), KEY_BYTES);
        assert_eq!(secret, format!("whsec_{}", base64_encode(&key)));
        assert_ne!(new_key().0, key);
    }
}
