//! Signed notifications, as Stripe signs its webhooks: the header
//! `Metering-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>` over
//! `"<t>.<body>"` with the partner's secret. A receiver recomputes the HMAC
//! over the raw body, compares in constant time, and refuses a timestamp
//! outside its tolerance (a replayed request); [`verify`] does exactly that
//! and is what the tests' receiver uses.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "Metering-Signature";

/// The tolerance receivers should use for the timestamp, in seconds.
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    m.update(timestamp.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m
}

/// The header value signing `body` at `timestamp` (unix seconds) with `secret`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!("t={timestamp},v1={}", hex::encode(mac(secret, timestamp, body).finalize().into_bytes()))
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// Not `t=<digits>,v1=<hex>`.
    #[error("malformed signature header")]
    Malformed,
    /// The timestamp is further than the tolerance from now.
    #[error("timestamp outside the tolerance")]
    Stale,
    /// No `v1` signature matches.
    #[error("signature does not match")]
    Mismatch,
}

/// Check `header` for `body` with `secret` at `now` (unix seconds): a `v1`
/// signature (several may be given, during a secret's rotation) matches in
/// constant time, and `t` is within `tolerance_secs` of `now`.
pub fn verify(header: &str, secret: &[u8], body: &[u8], now: i64, tolerance_secs: i64) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = Some(t.parse::<i64>().map_err(|_| SignatureError::Malformed)?),
            Some(("v1", s)) => signatures.push(hex::decode(s).map_err(|_| SignatureError::Malformed)?),
            Some(_) => {} // other schemes are ignored
            None => return Err(SignatureError::Malformed),
        }
    }
    let (Some(t), false) = (timestamp, signatures.is_empty()) else { return Err(SignatureError::Malformed) };
    if now.abs_diff(t) > tolerance_secs.unsigned_abs() {
        return Err(SignatureError::Stale);
    }
    let expected = mac(secret, t, body).finalize().into_bytes();
    // every candidate is compared, so the time does not say which matched
    let matched = signatures.iter().fold(0u8, |any, s| any | s.as_slice().ct_eq(expected.as_slice()).unwrap_u8());
    if matched == 1 {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_vector_and_its_verification() {
        // computed independently, with Python's standard library:
        // hmac.new(b'whsec_test', b'1700000000.{"a":1}', hashlib.sha256).hexdigest()
        let h = signature(b"whsec_test", 1_700_000_000, br#"{"a":1}"#);
        assert_eq!(h, "t=1700000000,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789");
        assert_eq!(verify(&h, b"whsec_test", br#"{"a":1}"#, 1_700_000_100, 300), Ok(()));
    }

    #[test]
    fn tampering_staleness_and_garbage_are_refused() {
        let body = br#"{"id":"acme/-/2026-12/80"}"#;
        let h = signature(b"s3cret", 1_000, body);
        assert_eq!(verify(&h, b"s3cret", br#"{"id":"acme/-/2026-12/81"}"#, 1_000, 300), Err(SignatureError::Mismatch));
        assert_eq!(verify(&h, b"other", body, 1_000, 300), Err(SignatureError::Mismatch));
        assert_eq!(verify(&h, b"s3cret", body, 1_301, 300), Err(SignatureError::Stale));
        assert_eq!(verify(&h, b"s3cret", body, 699, 300), Err(SignatureError::Stale));
        assert_eq!(verify("v1=00", b"s3cret", body, 1_000, 300), Err(SignatureError::Malformed));
        assert_eq!(verify("t=1000", b"s3cret", body, 1_000, 300), Err(SignatureError::Malformed));
        assert_eq!(verify("t=x,v1=00", b"s3cret", body, 1_000, 300), Err(SignatureError::Malformed));
        assert_eq!(verify("garbage", b"s3cret", body, 1_000, 300), Err(SignatureError::Malformed));
        // a second v1 (a rotated secret) is accepted when one matches
        let old = signature(b"old", 1_000, body);
        let both = format!("{h},{}", old.split(',').nth(1).unwrap());
        assert_eq!(verify(&both, b"old", body, 1_000, 300), Ok(()));
    }
}
