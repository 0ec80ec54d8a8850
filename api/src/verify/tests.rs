//! Every admission rule, with its negative case.

use super::*;
use crate::sign::{sign, sign_with, SignRequest};
use crate::store::{NewSubscribeToken, Store, StreamRule, SubscribeTokenUpdate};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{Duration, TimeZone};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

struct Fx {
    store: Store,
    now: DateTime<Utc>,
    /// Tracked ("acme"), origin auto, expires in one hour; streams `live` and regex `event-[0-9]+`.
    acme: SubscribeToken,
    /// Untracked, origin fra-1, no expiry; stream `live`.
    open: SubscribeToken,
}

fn fx() -> Fx {
    let store = Store::open_in_memory().unwrap();
    let now = Utc.with_ymd_and_hms(2026, 11, 27, 12, 0, 0).unwrap();
    let acme = store
        .create_subscribe(
            NewSubscribeToken {
                label: "acme".into(),
                streams: vec![
                    StreamRule { stream_name: "live".into(), is_regex: false },
                    StreamRule { stream_name: "event-[0-9]+".into(), is_regex: true },
                ],
                tracking_id: Some("acme".into()),
                origin_cluster: "auto".into(),
                expires_on: Some(now + Duration::hours(1)),
                allowed_origins: vec![],
                allowed_ip_addresses: vec![],
            },
            now,
        )
        .unwrap();
    let open = store
        .create_subscribe(
            NewSubscribeToken {
                label: "open".into(),
                streams: vec![StreamRule { stream_name: "live".into(), is_regex: false }],
                tracking_id: None,
                origin_cluster: "fra-1".into(),
                expires_on: None,
                allowed_origins: vec![],
                allowed_ip_addresses: vec![],
            },
            now,
        )
        .unwrap();
    Fx { store, now, acme, open }
}

fn req(parent: &SubscribeToken, stream: &str) -> SignRequest {
    SignRequest { token_id: parent.id, stream_name: stream.into(), expires_in_secs: 600, ..Default::default() }
}

impl Fx {
    fn jwt(&self, parent: &SubscribeToken, r: SignRequest) -> String {
        sign(&parent.token, &r, self.now).unwrap()
    }
    fn check(&self, token: &str, stream: &str, cluster: &str) -> Result<Attribution, VerifyError> {
        verify(&self.store, token, stream, cluster, self.now)
    }
    fn code(&self, token: &str, stream: &str, cluster: &str) -> &'static str {
        match self.check(token, stream, cluster) {
            Ok(a) => panic!("accepted: {a:?}"),
            Err(e) => e.code(),
        }
    }
}

/// A JWT with arbitrary claims, correctly signed.
fn forge(key: &str, claims: serde_json::Value, alg: Algorithm) -> String {
    jsonwebtoken::encode(&Header::new(alg), &claims, &EncodingKey::from_secret(key.as_bytes())).unwrap()
}

fn b64(v: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

fn claims(fx: &Fx, parent: &SubscribeToken, streaming: serde_json::Value) -> serde_json::Value {
    let mut s = json!({"tokenId": parent.id, "tokenType": "Subscribe", "streamName": "live"});
    for (k, v) in streaming.as_object().unwrap() {
        s[k] = v.clone();
    }
    json!({"streaming": s, "iat": fx.now.timestamp(), "exp": fx.now.timestamp() + 600})
}

// ---- positive cases ----

#[test]
fn master_token_directly() {
    let f = fx();
    let a = f.check(&f.acme.token, "live", "fra-1").unwrap();
    assert_eq!(a, Attribution { token_id: f.acme.id, tracking_id: Some("acme".into()), custom_viewer_data: None });
    let a = f.check(&f.open.token, "live", "fra-1").unwrap();
    assert_eq!(a.tracking_id, None);
}

#[test]
fn jwt_inherits_the_parents_tracking_and_carries_custom_data() {
    let f = fx();
    let t = f.jwt(&f.acme, SignRequest { custom_viewer_data: Some("{\"user\":\"u1\"}".into()), ..req(&f.acme, "live") });
    let a = f.check(&t, "live", "ams-1").unwrap();
    assert_eq!(
        a,
        Attribution { token_id: f.acme.id, tracking_id: Some("acme".into()), custom_viewer_data: Some("{\"user\":\"u1\"}".into()) }
    );
    // Repeating the parent's trackingId is allowed.
    let t = f.jwt(&f.acme, SignRequest { tracking_id: Some("acme".into()), ..req(&f.acme, "live") });
    assert_eq!(f.check(&t, "live", "x").unwrap().tracking_id.as_deref(), Some("acme"));
}

#[test]
fn jwt_on_an_untracked_parent_sets_its_own_tracking_only_when_the_operator_opts_in() {
    let f = fx();
    // an untracked master token's holder naming another partner's channel
    let t = f.jwt(&f.open, SignRequest { tracking_id: Some("acme".into()), ..req(&f.open, "live") });
    assert_eq!(f.code(&t, "live", "fra-1"), "tracking_not_allowed");
    let loose = Policy { untracked_parent_sets_tracking: true, ..Policy::default() };
    let a = verify_with(&f.store, &t, "live", "fra-1", f.now, &loose).unwrap();
    assert_eq!(a.tracking_id.as_deref(), Some("acme"));
    // without a trackingId the viewer stays untracked either way
    let t = f.jwt(&f.open, req(&f.open, "live"));
    assert_eq!(f.check(&t, "live", "fra-1").unwrap().tracking_id, None);
}

#[test]
fn lifetime_nbf_and_iat_are_enforced() {
    let f = fx();
    let now = f.now.timestamp();
    // ten years on a parent without expiry: refused; seven days: fine
    let t = f.jwt(&f.open, SignRequest { expires_in_secs: 10 * 365 * 86_400, ..req(&f.open, "live") });
    assert_eq!(f.code(&t, "live", "fra-1"), "lifetime_too_long");
    let t = f.jwt(&f.open, SignRequest { expires_in_secs: 7 * 86_400, ..req(&f.open, "live") });
    assert!(f.check(&t, "live", "fra-1").is_ok());
    let week = Policy { max_viewer_token_secs: 3600, ..Policy::default() };
    assert_eq!(verify_with(&f.store, &t, "live", "fra-1", f.now, &week).unwrap_err().code(), "lifetime_too_long");
    // an old iat does not stretch the window: exp counts from iat
    let mut c = claims(&f, &f.open, json!({}));
    c["iat"] = json!(now - 30 * 86_400);
    c["exp"] = json!(now + 600);
    assert_eq!(f.code(&forge(&f.open.token, c, Algorithm::HS256), "live", "fra-1"), "lifetime_too_long");
    // nbf in the future (beyond the skew) and at the skew's edge
    let mut c = claims(&f, &f.open, json!({}));
    c["nbf"] = json!(now + 120);
    assert_eq!(f.code(&forge(&f.open.token, c.clone(), Algorithm::HS256), "live", "fra-1"), "not_yet_valid");
    c["nbf"] = json!(now + 60);
    assert!(f.check(&forge(&f.open.token, c, Algorithm::HS256), "live", "fra-1").is_ok());
    // iat in the future
    let mut c = claims(&f, &f.open, json!({}));
    c["iat"] = json!(now + 3600);
    c["exp"] = json!(now + 4000);
    assert_eq!(f.code(&forge(&f.open.token, c, Algorithm::HS256), "live", "fra-1"), "issued_in_future");
}

#[test]
fn hs384_and_hs512_are_accepted() {
    let f = fx();
    for alg in [Algorithm::HS384, Algorithm::HS512] {
        let t = sign_with(&f.acme.token, &req(&f.acme, "live"), f.now, alg).unwrap();
        assert!(f.check(&t, "live", "c").is_ok(), "{alg:?}");
    }
}

#[test]
fn regex_streams_match_the_whole_name_and_empty_jwt_stream_means_any_granted() {
    let f = fx();
    let t = f.jwt(&f.acme, req(&f.acme, ""));
    assert!(f.check(&t, "event-12", "c").is_ok());
    assert!(f.check(&t, "live", "c").is_ok());
    assert_eq!(f.code(&t, "xevent-12", "c"), "stream_mismatch");
    assert_eq!(f.code(&t, "event-12x", "c"), "stream_mismatch");
    assert_eq!(f.code(&f.acme.token, "event-", "c"), "stream_mismatch");
    assert!(f.check(&f.acme.token, "event-7", "c").is_ok());
}

// ---- signature and algorithm ----

#[test]
fn tampered_signature_is_rejected() {
    let f = fx();
    let t = f.jwt(&f.acme, req(&f.acme, "live"));
    let (msg, sig) = t.rsplit_once('.').unwrap();
    let mut sig = sig.as_bytes().to_vec();
    sig[5] = if sig[5] == b'A' { b'B' } else { b'A' };
    let bad = format!("{msg}.{}", String::from_utf8(sig).unwrap());
    assert_eq!(f.code(&bad, "live", "c"), "bad_signature");
}

#[test]
fn tampered_payload_is_rejected() {
    let f = fx();
    let t = f.jwt(&f.open, req(&f.open, "live"));
    let parts: Vec<&str> = t.split('.').collect();
    let mut c = claims(&f, &f.open, json!({"tracking": {"trackingId": "stolen"}}));
    c["exp"] = json!(f.now.timestamp() + 600);
    let bad = format!("{}.{}.{}", parts[0], b64(&c), parts[2]);
    assert_eq!(f.code(&bad, "live", "fra-1"), "bad_signature");
}

#[test]
fn wrong_key_is_rejected() {
    let f = fx();
    // Signed with the other partner's master token.
    let t = sign(&f.open.token, &req(&f.acme, "live"), f.now).unwrap();
    assert_eq!(f.code(&t, "live", "c"), "bad_signature");
    let t = sign(&crate::store::generate_token(), &req(&f.acme, "live"), f.now).unwrap();
    assert_eq!(f.code(&t, "live", "c"), "bad_signature");
}

#[test]
fn alg_none_and_other_algs_are_rejected_before_verification() {
    let f = fx();
    let payload = b64(&claims(&f, &f.acme, json!({})));
    for alg in ["none", "None", "RS256", "ES256", "EdDSA", ""] {
        let header = b64(&json!({"alg": alg, "typ": "JWT"}));
        assert_eq!(f.code(&format!("{header}.{payload}."), "live", "c"), "alg_not_allowed", "{alg}");
        assert_eq!(f.code(&format!("{header}.{payload}.c2ln"), "live", "c"), "alg_not_allowed", "{alg}");
    }
    // Even when the tokenId names no parent: the header is checked first.
    let payload = b64(&json!({"streaming": {"tokenId": 999_999, "tokenType": "Subscribe"}, "exp": 1}));
    let header = b64(&json!({"alg": "none"}));
    assert_eq!(f.code(&format!("{header}.{payload}."), "live", "c"), "alg_not_allowed");
}

#[test]
fn hs256_signature_under_another_alg_header_is_rejected() {
    let f = fx();
    let payload = b64(&claims(&f, &f.acme, json!({})));
    let header = b64(&json!({"alg": "HS512", "typ": "JWT"}));
    let msg = format!("{header}.{payload}");
    let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), &EncodingKey::from_secret(f.acme.token.as_bytes()), Algorithm::HS256).unwrap();
    assert_eq!(f.code(&format!("{msg}.{sig}"), "live", "c"), "bad_signature");
    // The same signature under its true header verifies.
    let header = b64(&json!({"alg": "HS256", "typ": "JWT"}));
    let msg = format!("{header}.{payload}");
    let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), &EncodingKey::from_secret(f.acme.token.as_bytes()), Algorithm::HS256).unwrap();
    assert!(f.check(&format!("{msg}.{sig}"), "live", "c").is_ok());
}

// ---- expiry ----

#[test]
fn expired_jwt_is_rejected() {
    let f = fx();
    let t = sign(&f.acme.token, &SignRequest { expires_in_secs: 60, ..req(&f.acme, "live") }, f.now - Duration::minutes(5)).unwrap();
    assert_eq!(f.code(&t, "live", "c"), "expired");
    // exp == now is expired too.
    let t = sign(&f.acme.token, &SignRequest { expires_in_secs: 60, ..req(&f.acme, "live") }, f.now - Duration::seconds(60)).unwrap();
    assert_eq!(f.code(&t, "live", "c"), "expired");
}

#[test]
fn exp_missing_is_rejected() {
    let f = fx();
    let mut c = claims(&f, &f.acme, json!({}));
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(f.code(&forge(&f.acme.token, c, Algorithm::HS256), "live", "c"), "exp_missing");
}

#[test]
fn exp_after_the_parents_expiry_is_rejected() {
    let f = fx();
    let t = f.jwt(&f.acme, SignRequest { expires_in_secs: 3601, ..req(&f.acme, "live") });
    assert_eq!(f.code(&t, "live", "c"), "exp_after_parent");
    let t = f.jwt(&f.acme, SignRequest { expires_in_secs: 3600, ..req(&f.acme, "live") });
    assert!(f.check(&t, "live", "c").is_ok());
    // An unexpiring parent does not cap; the lifetime limit does (lifetime_nbf_and_iat_are_enforced).
    let t = f.jwt(&f.open, SignRequest { expires_in_secs: 7 * 86_400, ..req(&f.open, "live") });
    assert!(f.check(&t, "live", "fra-1").is_ok());
}

#[test]
fn expired_parent_is_rejected() {
    let f = fx();
    let t = f.jwt(&f.acme, SignRequest { expires_in_secs: 3600, ..req(&f.acme, "live") });
    let later = f.now + Duration::seconds(3600) - Duration::seconds(1);
    assert!(verify(&f.store, &t, "live", "c", later).is_ok());
    // Parent expiry moved earlier after the JWT was signed.
    f.store
        .update_subscribe(f.acme.id, SubscribeTokenUpdate { expires_on: Some(Some(f.now + Duration::seconds(10))), ..Default::default() })
        .unwrap();
    let at = f.now + Duration::seconds(20);
    assert_eq!(verify(&f.store, &t, "live", "c", at).unwrap_err().code(), "parent_expired");
    assert_eq!(verify(&f.store, &f.acme.token, "live", "c", at).unwrap_err().code(), "token_expired");
}

// ---- parent state ----

#[test]
fn deleted_parent_is_rejected() {
    let f = fx();
    let t = f.jwt(&f.acme, req(&f.acme, "live"));
    assert!(f.store.delete_subscribe(f.acme.id).unwrap());
    assert_eq!(f.code(&t, "live", "c"), "parent_not_found");
    assert_eq!(f.code(&f.acme.token, "live", "c"), "unknown_token");
}

#[test]
fn inactive_parent_is_rejected() {
    let f = fx();
    let t = f.jwt(&f.acme, req(&f.acme, "live"));
    f.store.update_subscribe(f.acme.id, SubscribeTokenUpdate { is_active: Some(false), ..Default::default() }).unwrap();
    assert_eq!(f.code(&t, "live", "c"), "parent_inactive");
    assert_eq!(f.code(&f.acme.token, "live", "c"), "token_inactive");
    f.store.update_subscribe(f.acme.id, SubscribeTokenUpdate { is_active: Some(true), ..Default::default() }).unwrap();
    assert!(f.check(&t, "live", "c").is_ok());
}

// ---- grant ----

#[test]
fn tracking_override_is_rejected() {
    let f = fx();
    let t = f.jwt(&f.acme, SignRequest { tracking_id: Some("other-partner".into()), ..req(&f.acme, "live") });
    assert_eq!(f.code(&t, "live", "c"), "tracking_override");
}

#[test]
fn stream_mismatch_is_rejected() {
    let f = fx();
    let t = f.jwt(&f.acme, req(&f.acme, "live"));
    assert_eq!(f.code(&t, "other", "c"), "stream_mismatch");
    assert_eq!(f.code(&t, "event-1", "c"), "stream_mismatch"); // granted by the parent, not by the JWT
    let t = f.jwt(&f.acme, req(&f.acme, "other"));
    assert_eq!(f.code(&t, "other", "c"), "stream_mismatch"); // not granted by the parent
    assert_eq!(f.code(&f.acme.token, "Live", "c"), "stream_mismatch");
}

#[test]
fn cluster_mismatch_is_rejected() {
    let f = fx();
    // Parent pinned to fra-1.
    let t = f.jwt(&f.open, req(&f.open, "live"));
    assert!(f.check(&t, "live", "fra-1").is_ok());
    assert_eq!(f.code(&t, "live", "ams-1"), "cluster_mismatch");
    assert_eq!(f.code(&f.open.token, "live", "ams-1"), "cluster_mismatch");
    let t = f.jwt(&f.open, SignRequest { origin_cluster: Some("ams-1".into()), ..req(&f.open, "live") });
    assert_eq!(f.code(&t, "live", "ams-1"), "cluster_mismatch");
    // Parent auto: the JWT may pin a cluster, which then must match.
    let t = f.jwt(&f.acme, SignRequest { origin_cluster: Some("fra-1".into()), ..req(&f.acme, "live") });
    assert!(f.check(&t, "live", "fra-1").is_ok());
    assert_eq!(f.code(&t, "live", "ams-1"), "cluster_mismatch");
}

#[test]
fn oversized_fields_are_rejected() {
    let f = fx();
    let c = claims(&f, &f.acme, json!({"customViewerData": "x".repeat(1025)}));
    assert_eq!(f.code(&forge(&f.acme.token, c, Algorithm::HS256), "live", "c"), "field_too_long");
    let c = claims(&f, &f.acme, json!({"customViewerData": "é".repeat(1024)}));
    assert!(f.check(&forge(&f.acme.token, c, Algorithm::HS256), "live", "c").is_ok());
    let c = claims(&f, &f.open, json!({"tracking": {"trackingId": "t".repeat(129)}}));
    assert_eq!(f.code(&forge(&f.open.token, c, Algorithm::HS256), "live", "fra-1"), "field_too_long");
    let c = claims(&f, &f.open, json!({"tracking": {"trackingId": "t".repeat(128)}}));
    let loose = Policy { untracked_parent_sets_tracking: true, ..Policy::default() };
    assert!(verify_with(&f.store, &forge(&f.open.token, c, Algorithm::HS256), "live", "fra-1", f.now, &loose).is_ok());
    // The signer refuses them too.
    assert!(sign(&f.open.token, &SignRequest { custom_viewer_data: Some("x".repeat(1025)), ..req(&f.open, "live") }, f.now).is_err());
    assert!(sign(&f.open.token, &SignRequest { tracking_id: Some("t".repeat(129)), ..req(&f.open, "live") }, f.now).is_err());
}

#[test]
fn malformed_tokens_are_rejected() {
    let f = fx();
    for t in ["", "abc", "a.b", "a.b.c", "!!.!!.!!", &"g".repeat(64)] {
        assert_eq!(f.code(t, "live", "c"), "malformed", "{t:?}");
    }
    let c = claims(&f, &f.acme, json!({"tokenType": "Publish"}));
    assert_eq!(f.code(&forge(&f.acme.token, c, Algorithm::HS256), "live", "c"), "malformed");
    let c = json!({"streaming": {"tokenType": "Subscribe"}, "exp": f.now.timestamp() + 60});
    assert_eq!(f.code(&forge(&f.acme.token, c, Algorithm::HS256), "live", "c"), "malformed");
    // An unknown 64-hex string is a master token nobody issued.
    assert_eq!(f.code(&"a".repeat(64), "live", "c"), "unknown_token");
}

#[test]
fn codes_are_distinct() {
    let all = [
        VerifyError::Malformed(String::new()),
        VerifyError::AlgNotAllowed(String::new()),
        VerifyError::BadSignature,
        VerifyError::ExpMissing,
        VerifyError::Expired { exp: 0 },
        VerifyError::ExpAfterParent { exp: 0, parent_expires: 0 },
        VerifyError::ParentNotFound(0),
        VerifyError::ParentInactive(0),
        VerifyError::ParentExpired(0),
        VerifyError::UnknownToken,
        VerifyError::TokenInactive(0),
        VerifyError::TokenExpired(0),
        VerifyError::StreamMismatch(String::new()),
        VerifyError::ClusterMismatch { cluster: String::new(), expected: String::new() },
        VerifyError::TrackingOverride { given: String::new(), parent: String::new() },
        VerifyError::FieldTooLong { field: "f", max: 1 },
        VerifyError::Store(String::new()),
    ];
    let codes: std::collections::HashSet<_> = all.iter().map(|e| e.code()).collect();
    assert_eq!(codes.len(), all.len());
}
