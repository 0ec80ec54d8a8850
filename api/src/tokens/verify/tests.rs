//! Every admission rule, with its negative case.

use super::*;
use crate::store::Store;
use crate::tokens::model::{AccessRules, NewPublishToken, NewSubscribeToken, NewTokenCommon, PublishToken, StreamRule, SubscribeToken};
use crate::tokens::sign::{sign, sign_with, SignRequest};
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
        .create::<SubscribeToken>(
            NewSubscribeToken {
                common: NewTokenCommon {
                    label: "acme".into(),
                    streams: vec![
                        StreamRule { stream_name: "live".into(), is_regex: false },
                        StreamRule { stream_name: "event-[0-9]+".into(), is_regex: true },
                    ],
                    origin_cluster: "auto".into(),
                    expires_on: Some(now + Duration::hours(1)),
                    rules: AccessRules::default(),
                },
                tracking_id: Some("acme".into()),
            },
            now,
        )
        .unwrap();
    let open = store
        .create::<SubscribeToken>(
            NewSubscribeToken {
                common: NewTokenCommon {
                    label: "open".into(),
                    streams: vec![StreamRule { stream_name: "live".into(), is_regex: false }],
                    origin_cluster: "fra-1".into(),
                    expires_on: None,
                    rules: AccessRules::default(),
                },
                tracking_id: None,
            },
            now,
        )
        .unwrap();
    Fx { store, now, acme, open }
}

fn req(parent: &SubscribeToken, stream: &str) -> SignRequest {
    SignRequest { token_id: parent.common.id, stream_name: stream.into(), expires_in_secs: 600, ..Default::default() }
}

impl Fx {
    fn jwt(&self, parent: &SubscribeToken, r: SignRequest) -> String {
        sign(&parent.common.token, &r, self.now).unwrap()
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
    let mut s = json!({"tokenId": parent.common.id, "tokenType": "Subscribe", "streamName": "live"});
    for (k, v) in streaming.as_object().unwrap() {
        s[k] = v.clone();
    }
    json!({"streaming": s, "iat": fx.now.timestamp(), "exp": fx.now.timestamp() + 600})
}

// ---- positive cases ----

#[test]
fn master_token_directly() {
    let f = fx();
    let a = f.check(&f.acme.common.token, "live", "fra-1").unwrap();
    assert_eq!(
        a,
        Attribution {
            token_id: Some(f.acme.common.id),
            tracking_id: Some("acme".into()),
            custom_viewer_data: None,
            expires_at: f.acme.common.expires_on
        }
    );
    let a = f.check(&f.open.common.token, "live", "fra-1").unwrap();
    assert_eq!(a.tracking_id, None);
}

#[test]
fn jwt_inherits_the_parents_tracking_and_carries_custom_data() {
    let f = fx();
    let t = f.jwt(&f.acme, SignRequest { custom_viewer_data: Some("{\"user\":\"u1\"}".into()), ..req(&f.acme, "live") });
    let a = f.check(&t, "live", "ams-1").unwrap();
    assert_eq!(
        a,
        Attribution {
            token_id: Some(f.acme.common.id),
            tracking_id: Some("acme".into()),
            custom_viewer_data: Some("{\"user\":\"u1\"}".into()),
            expires_at: Some(f.now + Duration::seconds(600)),
        }
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
    assert_eq!(f.code(&forge(&f.open.common.token, c, Algorithm::HS256), "live", "fra-1"), "lifetime_too_long");
    // nbf in the future (beyond the skew) and at the skew's edge
    let mut c = claims(&f, &f.open, json!({}));
    c["nbf"] = json!(now + 120);
    assert_eq!(f.code(&forge(&f.open.common.token, c.clone(), Algorithm::HS256), "live", "fra-1"), "not_yet_valid");
    c["nbf"] = json!(now + 60);
    assert!(f.check(&forge(&f.open.common.token, c, Algorithm::HS256), "live", "fra-1").is_ok());
    // iat in the future
    let mut c = claims(&f, &f.open, json!({}));
    c["iat"] = json!(now + 3600);
    c["exp"] = json!(now + 4000);
    assert_eq!(f.code(&forge(&f.open.common.token, c, Algorithm::HS256), "live", "fra-1"), "issued_in_future");
}

#[test]
fn hs384_and_hs512_are_accepted() {
    let f = fx();
    for alg in [Algorithm::HS384, Algorithm::HS512] {
        let t = sign_with(&f.acme.common.token, &req(&f.acme, "live"), f.now, alg).unwrap();
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
    assert_eq!(f.code(&f.acme.common.token, "event-", "c"), "stream_mismatch");
    assert!(f.check(&f.acme.common.token, "event-7", "c").is_ok());
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
    let t = sign(&f.open.common.token, &req(&f.acme, "live"), f.now).unwrap();
    assert_eq!(f.code(&t, "live", "c"), "bad_signature");
    let t = sign(&crate::tokens::model::generate_token(), &req(&f.acme, "live"), f.now).unwrap();
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
    let sig =
        jsonwebtoken::crypto::sign(msg.as_bytes(), &EncodingKey::from_secret(f.acme.common.token.as_bytes()), Algorithm::HS256).unwrap();
    assert_eq!(f.code(&format!("{msg}.{sig}"), "live", "c"), "bad_signature");
    // The same signature under its true header verifies.
    let header = b64(&json!({"alg": "HS256", "typ": "JWT"}));
    let msg = format!("{header}.{payload}");
    let sig =
        jsonwebtoken::crypto::sign(msg.as_bytes(), &EncodingKey::from_secret(f.acme.common.token.as_bytes()), Algorithm::HS256).unwrap();
    assert!(f.check(&format!("{msg}.{sig}"), "live", "c").is_ok());
}

// ---- expiry ----

#[test]
fn expired_jwt_is_rejected() {
    let f = fx();
    let t = sign(&f.acme.common.token, &SignRequest { expires_in_secs: 60, ..req(&f.acme, "live") }, f.now - Duration::minutes(5)).unwrap();
    assert_eq!(f.code(&t, "live", "c"), "expired");
    // exp == now is expired too.
    let t =
        sign(&f.acme.common.token, &SignRequest { expires_in_secs: 60, ..req(&f.acme, "live") }, f.now - Duration::seconds(60)).unwrap();
    assert_eq!(f.code(&t, "live", "c"), "expired");
}

#[test]
fn exp_missing_is_rejected() {
    let f = fx();
    let mut c = claims(&f, &f.acme, json!({}));
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(f.code(&forge(&f.acme.common.token, c, Algorithm::HS256), "live", "c"), "exp_missing");
}

#[test]
fn exp_after_the_parents_expiry_is_capped_at_it() {
    let f = fx();
    // the parent expires in one hour: a two-hour viewer token is admitted until then
    let t = f.jwt(&f.acme, SignRequest { expires_in_secs: 7200, ..req(&f.acme, "live") });
    assert_eq!(f.check(&t, "live", "c").unwrap().expires_at, Some(f.now + Duration::seconds(3600)));
    let t = f.jwt(&f.acme, SignRequest { expires_in_secs: 1800, ..req(&f.acme, "live") });
    assert_eq!(f.check(&t, "live", "c").unwrap().expires_at, Some(f.now + Duration::seconds(1800)));
    // and refused once the parent has expired
    let t = f.jwt(&f.acme, SignRequest { expires_in_secs: 7200, ..req(&f.acme, "live") });
    assert_eq!(verify(&f.store, &t, "live", "c", f.now + Duration::seconds(3600)).unwrap_err().code(), "parent_expired");
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
        .update::<SubscribeToken, _>(f.acme.common.id, |t| {
            t.common.expires_on = Some(f.now + Duration::seconds(10));
            Ok::<_, crate::store::StoreError>(())
        })
        .unwrap();
    let at = f.now + Duration::seconds(20);
    assert_eq!(verify(&f.store, &t, "live", "c", at).unwrap_err().code(), "parent_expired");
    assert_eq!(verify(&f.store, &f.acme.common.token, "live", "c", at).unwrap_err().code(), "token_expired");
}

// ---- parent state ----

#[test]
fn deleted_parent_is_rejected() {
    let f = fx();
    let t = f.jwt(&f.acme, req(&f.acme, "live"));
    assert!(f.store.delete::<SubscribeToken>(f.acme.common.id).unwrap());
    assert_eq!(f.code(&t, "live", "c"), "parent_not_found");
    assert_eq!(f.code(&f.acme.common.token, "live", "c"), "unknown_token");
}

fn set_active(f: &Fx, active: bool) {
    f.store
        .update::<SubscribeToken, _>(f.acme.common.id, |t| {
            t.common.is_active = active;
            Ok::<_, crate::store::StoreError>(())
        })
        .unwrap();
}

#[test]
fn inactive_parent_is_rejected() {
    let f = fx();
    let t = f.jwt(&f.acme, req(&f.acme, "live"));
    set_active(&f, false);
    assert_eq!(f.code(&t, "live", "c"), "parent_inactive");
    assert_eq!(f.code(&f.acme.common.token, "live", "c"), "token_inactive");
    set_active(&f, true);
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
    assert_eq!(f.code(&f.acme.common.token, "Live", "c"), "stream_mismatch");
}

#[test]
fn cluster_mismatch_is_rejected() {
    let f = fx();
    // Parent pinned to fra-1.
    let t = f.jwt(&f.open, req(&f.open, "live"));
    assert!(f.check(&t, "live", "fra-1").is_ok());
    assert_eq!(f.code(&t, "live", "ams-1"), "cluster_mismatch");
    assert_eq!(f.code(&f.open.common.token, "live", "ams-1"), "cluster_mismatch");
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
    assert_eq!(f.code(&forge(&f.acme.common.token, c, Algorithm::HS256), "live", "c"), "field_too_long");
    let c = claims(&f, &f.acme, json!({"customViewerData": "é".repeat(1024)}));
    assert!(f.check(&forge(&f.acme.common.token, c, Algorithm::HS256), "live", "c").is_ok());
    let c = claims(&f, &f.open, json!({"tracking": {"trackingId": "t".repeat(129)}}));
    assert_eq!(f.code(&forge(&f.open.common.token, c, Algorithm::HS256), "live", "fra-1"), "field_too_long");
    let c = claims(&f, &f.open, json!({"tracking": {"trackingId": "t".repeat(128)}}));
    let loose = Policy { untracked_parent_sets_tracking: true, ..Policy::default() };
    assert!(verify_with(&f.store, &forge(&f.open.common.token, c, Algorithm::HS256), "live", "fra-1", f.now, &loose).is_ok());
    // The signer refuses them too.
    assert!(sign(&f.open.common.token, &SignRequest { custom_viewer_data: Some("x".repeat(1025)), ..req(&f.open, "live") }, f.now).is_err());
    assert!(sign(&f.open.common.token, &SignRequest { tracking_id: Some("t".repeat(129)), ..req(&f.open, "live") }, f.now).is_err());
}

#[test]
fn malformed_tokens_are_rejected() {
    let f = fx();
    for t in ["", "abc", "a.b", "a.b.c", "!!.!!.!!", &"g".repeat(64)] {
        assert_eq!(f.code(t, "live", "c"), "malformed", "{t:?}");
    }
    let c = claims(&f, &f.acme, json!({"tokenType": "Publish"}));
    assert_eq!(f.code(&forge(&f.acme.common.token, c, Algorithm::HS256), "live", "c"), "malformed");
    let c = json!({"streaming": {"tokenType": "Subscribe"}, "exp": f.now.timestamp() + 60});
    assert_eq!(f.code(&forge(&f.acme.common.token, c, Algorithm::HS256), "live", "c"), "malformed");
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
        VerifyError::ParentNotFound(0),
        VerifyError::ParentInactive(0),
        VerifyError::ParentExpired(0),
        VerifyError::UnknownToken,
        VerifyError::TokenInactive(0),
        VerifyError::TokenExpired(0),
        VerifyError::StreamMismatch(String::new()),
        VerifyError::ClusterMismatch { cluster: String::new(), expected: String::new() },
        VerifyError::TrackingOverride { given: String::new(), parent: String::new() },
        VerifyError::TrackingNotAllowed { given: String::new() },
        VerifyError::LifetimeTooLong { max_secs: 0 },
        VerifyError::NotYetValid { nbf: 0 },
        VerifyError::IssuedInFuture { iat: 0 },
        VerifyError::OriginNotAllowed(String::new()),
        VerifyError::IpNotAllowed(String::new()),
        VerifyError::CountryNotAllowed(String::new()),
        VerifyError::CountryDenied(String::new()),
        VerifyError::IpNotBound(String::new()),
        VerifyError::TokenRequired(String::new()),
        VerifyError::FieldTooLong { field: "f", max: 1 },
        VerifyError::Store(String::new()),
    ];
    let codes: std::collections::HashSet<_> = all.iter().map(|e| e.code()).collect();
    assert_eq!(codes.len(), all.len());
}

// ---- the viewer: origin, IP address, country, IP binding ----

/// A Subscribe token with these access rules, tracked `"r"`, stream `live`, cluster `Auto`.
fn with_rules(f: &Fx, rules: AccessRules) -> SubscribeToken {
    f.store
        .create::<SubscribeToken>(
            NewSubscribeToken {
                common: NewTokenCommon {
                    label: "rules".into(),
                    streams: vec![StreamRule { stream_name: "live".into(), is_regex: false }],
                    origin_cluster: "Auto".into(),
                    expires_on: None,
                    rules,
                },
                tracking_id: Some("r".into()),
            },
            f.now,
        )
        .unwrap()
}

fn viewer<'a>(origin: Option<&'a str>, ip: Option<&str>, country: Option<&'a str>) -> Viewer<'a> {
    Viewer { origin, ip: ip.map(|i| i.parse().unwrap()), country }
}

impl Fx {
    fn as_viewer(&self, token: &str, v: &Viewer<'_>) -> Result<Attribution, VerifyError> {
        verify_viewer(&self.store, token, "live", "fra-1", v, self.now, &Policy::default())
    }
}

#[test]
fn allowed_origins_are_enforced_for_master_and_viewer_tokens() {
    let f = fx();
    let t =
        with_rules(&f, AccessRules { allowed_origins: vec!["https://www.acme.tv".into(), "*.partner.com".into()], ..Default::default() });
    let jwt = f.jwt(&t, req(&t, "live"));
    for token in [t.common.token.as_str(), jwt.as_str()] {
        assert!(f.as_viewer(token, &viewer(Some("https://www.acme.tv"), None, None)).is_ok());
        assert!(f.as_viewer(token, &viewer(Some("https://play.partner.com:8443"), None, None)).is_ok());
        for bad in [Some("https://evil.tv"), Some("http://www.acme.tv"), Some("https://partner.com"), Some("https://evilpartner.com"), None]
        {
            assert_eq!(f.as_viewer(token, &viewer(bad, None, None)).unwrap_err().code(), "origin_not_allowed", "{bad:?}");
        }
    }
    // a JWT's own list narrows the parent's, never widens it
    let narrowed = f.jwt(&t, SignRequest { allowed_origins: vec!["https://www.acme.tv".into()], ..req(&t, "live") });
    assert_eq!(f.as_viewer(&narrowed, &viewer(Some("https://play.partner.com"), None, None)).unwrap_err().code(), "origin_not_allowed");
    let open = f.jwt(&f.open, SignRequest { allowed_origins: vec!["https://a.tv".into()], ..req(&f.open, "live") });
    assert_eq!(f.as_viewer(&open, &viewer(Some("https://b.tv"), None, None)).unwrap_err().code(), "origin_not_allowed");
    assert!(f.as_viewer(&open, &viewer(Some("https://a.tv"), None, None)).is_ok());
}

#[test]
fn allowed_ip_addresses_are_enforced_for_master_and_viewer_tokens() {
    let f = fx();
    let t = with_rules(&f, AccessRules { allowed_ip_addresses: vec!["10.1.0.0/16".into(), "2001:db8::7".into()], ..Default::default() });
    let jwt = f.jwt(&t, req(&t, "live"));
    for token in [t.common.token.as_str(), jwt.as_str()] {
        for ok in ["10.1.200.3", "2001:db8::7", "::ffff:10.1.0.9"] {
            assert!(f.as_viewer(token, &viewer(None, Some(ok), None)).is_ok(), "{ok}");
        }
        for bad in [Some("10.2.0.1"), Some("2001:db8::8"), None] {
            assert_eq!(f.as_viewer(token, &viewer(None, bad, None)).unwrap_err().code(), "ip_not_allowed", "{bad:?}");
        }
    }
    let narrowed = f.jwt(&t, SignRequest { allowed_ip_addresses: vec!["10.1.5.0/24".into()], ..req(&t, "live") });
    assert!(f.as_viewer(&narrowed, &viewer(None, Some("10.1.5.1"), None)).is_ok());
    assert_eq!(f.as_viewer(&narrowed, &viewer(None, Some("10.1.6.1"), None)).unwrap_err().code(), "ip_not_allowed");
}

#[test]
fn countries_are_enforced_for_master_and_viewer_tokens() {
    let f = fx();
    let allow = with_rules(&f, AccessRules { allowed_countries: vec!["FR".into(), "DE".into()], ..Default::default() });
    let deny = with_rules(&f, AccessRules { denied_countries: vec!["US".into()], ..Default::default() });
    let (ja, jd) = (f.jwt(&allow, req(&allow, "live")), f.jwt(&deny, req(&deny, "live")));
    for token in [allow.common.token.as_str(), ja.as_str()] {
        assert!(f.as_viewer(token, &viewer(None, None, Some("fr"))).is_ok());
        for bad in [Some("US"), None] {
            assert_eq!(f.as_viewer(token, &viewer(None, None, bad)).unwrap_err().code(), "country_not_allowed", "{bad:?}");
        }
    }
    for token in [deny.common.token.as_str(), jd.as_str()] {
        assert!(f.as_viewer(token, &viewer(None, None, Some("FR"))).is_ok());
        assert!(f.as_viewer(token, &viewer(None, None, None)).is_ok(), "unknown country is not a denied one");
        assert_eq!(f.as_viewer(token, &viewer(None, None, Some("us"))).unwrap_err().code(), "country_denied");
    }
}

#[test]
fn bind_ips_on_usage_binds_the_first_addresses() {
    let f = fx();
    let t = with_rules(&f, AccessRules { bind_ips_on_usage: 2, ..Default::default() });
    let ip = |i: &str| viewer(None, Some(i), None);
    // master token: the first two addresses are bound, a third is refused, the bound ones stay in
    assert!(f.as_viewer(&t.common.token, &ip("192.0.2.1")).is_ok());
    assert!(f.as_viewer(&t.common.token, &ip("192.0.2.2")).is_ok());
    assert_eq!(f.as_viewer(&t.common.token, &ip("192.0.2.3")).unwrap_err().code(), "ip_not_bound");
    assert!(f.as_viewer(&t.common.token, &ip("192.0.2.1")).is_ok());
    assert_eq!(f.as_viewer(&t.common.token, &viewer(None, None, None)).unwrap_err().code(), "ip_not_bound");
    // each viewer token is bound on its own
    let (j1, j2) = (f.jwt(&t, req(&t, "live")), f.jwt(&t, SignRequest { custom_viewer_data: Some("v2".into()), ..req(&t, "live") }));
    assert!(f.as_viewer(&j1, &ip("198.51.100.1")).is_ok());
    assert!(f.as_viewer(&j1, &ip("198.51.100.2")).is_ok());
    assert_eq!(f.as_viewer(&j1, &ip("198.51.100.3")).unwrap_err().code(), "ip_not_bound");
    assert!(f.as_viewer(&j2, &ip("198.51.100.3")).is_ok());
}

#[test]
fn subscribe_requires_auth_refuses_viewers_without_a_token() {
    let f = fx();
    let v = Viewer::default();
    let p = Policy::default();
    // no publish token for the stream, or one without the flag: admitted untracked
    assert_eq!(admit(&f.store, None, "live", "fra-1", &v, f.now, &p).unwrap(), None);
    let publish = |requires: bool, stream: &str| {
        f.store
            .create::<PublishToken>(
                NewPublishToken {
                    common: NewTokenCommon {
                        label: "owner".into(),
                        streams: vec![StreamRule { stream_name: stream.into(), is_regex: false }],
                        origin_cluster: "Auto".into(),
                        expires_on: None,
                        rules: AccessRules::default(),
                    },
                    subscribe_requires_auth: requires,
                    options: Default::default(),
                },
                f.now,
            )
            .unwrap()
    };
    publish(false, "live");
    assert_eq!(admit(&f.store, None, "live", "fra-1", &v, f.now, &p).unwrap(), None);
    let secure = publish(true, "live");
    assert_eq!(admit(&f.store, None, "live", "fra-1", &v, f.now, &p).unwrap_err().code(), "token_required");
    // other streams stay open; a viewer with a token is admitted and tracked
    assert_eq!(admit(&f.store, None, "other", "fra-1", &v, f.now, &p).unwrap(), None);
    let a = admit(&f.store, Some(&f.acme.common.token), "live", "fra-1", &v, f.now, &p).unwrap().unwrap();
    assert_eq!(a.tracking_id.as_deref(), Some("acme"));
    // a disabled publish token no longer requires it
    f.store
        .update::<PublishToken, _>(secure.common.id, |t| {
            t.common.is_active = false;
            Ok::<_, crate::store::StoreError>(())
        })
        .unwrap();
    assert_eq!(admit(&f.store, None, "live", "fra-1", &v, f.now, &p).unwrap(), None);
}

#[test]
fn auto_cluster_in_any_case() {
    let f = fx();
    for auto in ["Auto", "AUTO", "auto"] {
        let t = f
            .store
            .create::<SubscribeToken>(
                NewSubscribeToken {
                    common: NewTokenCommon {
                        label: "a".into(),
                        streams: vec![StreamRule { stream_name: "live".into(), is_regex: false }],
                        origin_cluster: auto.into(),
                        expires_on: None,
                        rules: AccessRules::default(),
                    },
                    tracking_id: Some("t".into()),
                },
                f.now,
            )
            .unwrap();
        assert!(f.check(&t.common.token, "live", "fra-1").is_ok(), "{auto}");
        let j = f.jwt(&t, req(&t, "live"));
        assert!(f.check(&j, "live", "iad-1").is_ok(), "{auto}");
    }
}
