//! Bearer credentials, shared by the HTTP services.
//!
//! Keys are held as SHA-256 digests ([`KeySet`]), never as text after
//! start-up, and compared in constant time (`subtle`): response timing
//! reveals neither which key nor how much of it matched, and no key can end
//! up in a log or an error through a `Debug` print.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Shortest accepted secret (API secrets, ingest keys), characters.
pub const MIN_SECRET_CHARS: usize = 32;

/// Words of the documented placeholders (`deploy/*.env`, examples): a secret
/// containing one is refused, so that a copied example never goes live.
const PLACEHOLDER_WORDS: [&str; 5] = ["change-me", "changeme", "replace-me", "placeholder", "example"];

/// The credential of an `Authorization: Bearer <credential>` header value
/// (scheme case-insensitive, surrounding blanks trimmed).
pub fn bearer(header_value: Option<&str>) -> Option<&str> {
    let (scheme, credential) = header_value?.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| credential.trim()).filter(|c| !c.is_empty())
}

/// Why `secret` may not be used (the secret itself is never in the text).
pub fn check_secret(what: &str, secret: &str) -> Result<(), String> {
    if secret.chars().count() < MIN_SECRET_CHARS {
        return Err(format!("{what}: at least {MIN_SECRET_CHARS} characters required"));
    }
    let lower = secret.to_ascii_lowercase();
    if PLACEHOLDER_WORDS.iter().any(|w| lower.contains(w)) {
        return Err(format!("{what}: a documented placeholder; generate a secret (e.g. `openssl rand -hex 32`)"));
    }
    let first = secret.chars().next();
    if secret.chars().all(|c| Some(c) == first) {
        return Err(format!("{what}: one repeated character is not a secret"));
    }
    Ok(())
}

/// A set of secrets, held as digests.
#[derive(Clone, Default)]
pub struct KeySet(Vec<[u8; 32]>);

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeySet({} keys, redacted)", self.0.len())
    }
}

/// The SHA-256 of a secret: what a [`KeySet`] holds, and what a console
/// session records of the secret that opened it.
pub fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

impl KeySet {
    /// The set of `keys`, each kept as its SHA-256 digest only.
    pub fn new<S: AsRef<str>>(keys: &[S]) -> Self {
        KeySet(keys.iter().map(|k| digest(k.as_ref())).collect())
    }

    /// Whether `given` is one of the keys; every key is compared, each in
    /// constant time.
    pub fn contains(&self, given: &str) -> bool {
        self.contains_digest(&digest(given))
    }

    /// Whether the key of digest `d` is one of the keys (constant time over all keys).
    pub fn contains_digest(&self, d: &[u8; 32]) -> bool {
        self.position_digest(d).is_some()
    }

    /// The index of the key `given` is (constant time over all keys).
    pub fn position(&self, given: &str) -> Option<usize> {
        self.position_digest(&digest(given))
    }

    /// The index of the key of digest `d` (constant time over all keys).
    pub fn position_digest(&self, d: &[u8; 32]) -> Option<usize> {
        let mut at = None;
        for (i, k) in self.0.iter().enumerate() {
            if bool::from(k.ct_eq(d)) && at.is_none() {
                at = Some(i);
            }
        }
        at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_and_compares_keys() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(None), None);
        let keys = vec!["k1-0123456789abcdef".to_string(), "k2-0123456789abcdef".to_string()];
        let set = KeySet::new(&keys);
        assert!(set.contains("k2-0123456789abcdef"));
        assert!(!set.contains("k2-0123456789abcde"));
        assert!(!set.contains("k2-0123456789abcdefg"));
        assert!(!set.contains(""));
        assert!(!KeySet::new::<String>(&[]).contains("x"));
        assert_eq!(set.position("k2-0123456789abcdef"), Some(1));
        assert_eq!(set.position("k3"), None);
        assert!(!format!("{set:?}").contains("k1"), "Debug never shows a key");
    }

    #[test]
    fn short_placeholder_and_trivial_secrets_are_refused() {
        assert!(check_secret("k", &"a1".repeat(16)).is_ok());
        assert!(check_secret("k", "short-secret").unwrap_err().contains("at least 32"));
        assert!(check_secret("k", "change-me-api-secret-0001-0123456789").unwrap_err().contains("placeholder"));
        assert!(check_secret("k", &"x".repeat(40)).is_err());
        let e = check_secret("api_secrets[0]", "a-real-looking-secret-but-short").unwrap_err();
        assert!(!e.contains("a-real-looking"), "the secret is not in the error: {e}");
    }
}
