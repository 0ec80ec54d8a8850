//! Bearer credentials, shared by the HTTP services.

/// The credential of an `Authorization: Bearer <credential>` header value
/// (scheme case-insensitive, surrounding blanks trimmed).
pub fn bearer(header_value: Option<&str>) -> Option<&str> {
    let (scheme, credential) = header_value?.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| credential.trim()).filter(|c| !c.is_empty())
}

/// Whether `given` equals one of `keys`, comparing every key in constant time
/// so that response timing reveals neither which key nor how much of it matched.
pub fn matches_any(given: &str, keys: &[String]) -> bool {
    let mut found = 0u8;
    for k in keys {
        let (a, b) = (given.as_bytes(), k.as_bytes());
        let mut diff = u8::from(a.len() != b.len());
        for i in 0..b.len() {
            diff |= a.get(i).copied().unwrap_or(0) ^ b[i];
        }
        found |= u8::from(diff == 0);
    }
    found == 1
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
        assert!(matches_any("k2-0123456789abcdef", &keys));
        assert!(!matches_any("k2-0123456789abcde", &keys));
        assert!(!matches_any("k2-0123456789abcdefg", &keys));
        assert!(!matches_any("", &keys));
        assert!(!matches_any("x", &[]));
    }
}
