//! Threshold notifications: recorded once, delivered as signed webhooks.
//!
//! * **Once.** A reached threshold is recorded in the token store
//!   (`allowance_notifications`, primary key: the notification's id
//!   `partner/tracking id or -/period/threshold`). Every API process sharing
//!   the store computes the same notifications; exactly one insert succeeds,
//!   and only that process reports `AllowanceThresholdReached`. A restart
//!   finds the records and records nothing again.
//! * **Delivery.** A pending record is leased by one process at a time
//!   ([`LEASE_SECS`]), POSTed to the partner's `webhook_url` with the
//!   `Metering-Signature` header (`entitlements::webhook`), and marked
//!   `delivered` on a 2xx answer. Otherwise it is tried again after 1, 2, 4,
//!   ... seconds (at most 2,048 s apart, [`backoff_secs`]), and marked `failed` after
//!   [`MAX_ATTEMPTS`]. A process that crashes between the receiver's 2xx
//!   and its record leaves the lease to expire, and the notification is
//!   sent again with the same id: receivers de-duplicate on `id` (as with
//!   Stripe's event ids). That is the only way one is sent twice.
//! * **Queryable.** `GET /api/entitlements/notifications` lists them with
//!   their status, attempts and last error.

use crate::app::iso_time;
use crate::store::{Store, StoreError};
use chrono::{DateTime, Utc};
use entitlements::Notification;
use rusqlite::{params, OptionalExtension};
use serde::Serialize;

/// How long a process holds a notification it is delivering, seconds.
pub const LEASE_SECS: i64 = 30;

/// At most this many notifications are listed.
pub const LIST_LIMIT: usize = 1000;

/// Attempts before a notification is marked `failed`.
pub const MAX_ATTEMPTS: i64 = 12;

/// The delay before attempt `attempt + 1`, seconds: 1, 2, 4, ..., at most 2,048 (34 minutes).
pub fn backoff_secs(attempt: i64) -> i64 {
    1i64 << (attempt - 1).clamp(0, 11)
}

/// A notification as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// `partner/tracking id or -/period/threshold`.
    pub id: String,
    /// The partner.
    pub partner: String,
    /// `pending`, `delivered`, `failed` (gave up) or `logged` (the partner has no webhook).
    pub status: String,
    /// Delivery attempts so far.
    pub attempts: i64,
    /// The last failed attempt's error.
    pub last_error: Option<String>,
    /// When it was recorded (RFC 3339).
    pub created_at: String,
    /// When a receiver acknowledged it (RFC 3339).
    pub delivered_at: Option<String>,
    /// The notification's body as sent.
    pub body: serde_json::Value,
}

fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms).map(iso_time).unwrap_or_default()
}

/// Record `n` unless it is already recorded; `true`: this call recorded it.
pub fn record(store: &Store, n: &Notification, has_webhook: bool, now: DateTime<Utc>) -> Result<bool, StoreError> {
    let mut body = serde_json::to_value(n).unwrap_or_default();
    body["createdAt"] = serde_json::json!(iso_time(now));
    let status = if has_webhook { "pending" } else { "logged" };
    let inserted = store.conn()?.execute(
        "INSERT OR IGNORE INTO allowance_notifications (id, partner, body, status, attempts, next_attempt_ms, created_ms) \
         VALUES (?1, ?2, ?3, ?4, 0, ?5, ?5)",
        params![n.id, n.partner, body.to_string(), status, now.timestamp_millis()],
    )?;
    Ok(inserted == 1)
}

/// A notification this process leased for one attempt.
#[derive(Debug, Clone)]
pub struct Leased {
    /// Its id.
    pub id: String,
    /// Its partner.
    pub partner: String,
    /// The body to send.
    pub body: String,
    /// This attempt's number (1 for the first).
    pub attempt: i64,
}

/// Lease the next pending notification due at `now`, if any.
pub fn lease_next(store: &Store, now: DateTime<Utc>) -> Result<Option<Leased>, StoreError> {
    let mut conn = store.conn()?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let now_ms = now.timestamp_millis();
    let next: Option<(String, String, String, i64)> = tx
        .query_row(
            "SELECT id, partner, body, attempts FROM allowance_notifications \
             WHERE status = 'pending' AND next_attempt_ms <= ?1 AND lease_until_ms <= ?1 ORDER BY created_ms, id LIMIT 1",
            params![now_ms],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    let Some((id, partner, body, attempts)) = next else { return Ok(None) };
    tx.execute(
        "UPDATE allowance_notifications SET lease_until_ms = ?2, attempts = attempts + 1 WHERE id = ?1",
        params![id, now_ms + LEASE_SECS * 1000],
    )?;
    tx.commit()?;
    Ok(Some(Leased { id, partner, body, attempt: attempts + 1 }))
}

/// The receiver acknowledged `id`.
pub fn delivered(store: &Store, id: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
    store.conn()?.execute(
        "UPDATE allowance_notifications SET status = 'delivered', delivered_ms = ?2, lease_until_ms = 0, last_error = NULL WHERE id = ?1",
        params![id, now.timestamp_millis()],
    )?;
    Ok(())
}

/// Attempt `attempt` of `id` failed with `error`: try again later, or give up.
pub fn attempt_failed(store: &Store, id: &str, attempt: i64, error: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
    let status = if attempt >= MAX_ATTEMPTS { "failed" } else { "pending" };
    store.conn()?.execute(
        "UPDATE allowance_notifications SET status = ?2, last_error = ?3, next_attempt_ms = ?4, lease_until_ms = 0 WHERE id = ?1",
        params![id, status, error, now.timestamp_millis() + backoff_secs(attempt) * 1000],
    )?;
    Ok(())
}

/// The newest [`LIST_LIMIT`] notifications (of `partners` only, when given), newest first.
pub fn list(store: &Store, partners: Option<&[String]>) -> Result<Vec<Record>, StoreError> {
    let conn = store.conn()?;
    let mut stmt = conn.prepare(
        "SELECT id, partner, status, attempts, last_error, created_ms, delivered_ms, body FROM allowance_notifications \
         ORDER BY created_ms DESC, id DESC",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(Record {
            id: r.get(0)?,
            partner: r.get(1)?,
            status: r.get(2)?,
            attempts: r.get(3)?,
            last_error: r.get(4)?,
            created_at: rfc3339(r.get(5)?),
            delivered_at: r.get::<_, Option<i64>>(6)?.map(rfc3339),
            body: serde_json::from_str(&r.get::<_, String>(7)?).unwrap_or_default(),
        })
    })?;
    // the partner filter before the limit: a partner's own are not crowded out by others'
    let visible = rows.filter(|r| r.as_ref().map_or(true, |r| partners.is_none_or(|p| p.contains(&r.partner))));
    Ok(visible.take(LIST_LIMIT).collect::<Result<Vec<_>, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn notification(threshold: u32) -> Notification {
        let ent = entitlements::Entitlement {
            partner: "acme".into(),
            tracking_id: None,
            allowance: entitlements::Allowance::Bytes(100),
            policy: entitlements::Policy::Notify,
            grace_percent: 0,
            exempt_token_ids: vec![],
        };
        let s = entitlements::Standing {
            entitlement: ent,
            used_bytes: 90,
            used_spend: None,
            currency: "EUR".into(),
            percent: 90.into(),
            reached: vec![50, 80],
            exhausted: false,
        };
        Notification::new(&s, "2026-12", threshold)
    }

    #[test]
    fn recorded_once_leased_by_one_retried_then_delivered() {
        let store = Store::open_in_memory().unwrap();
        let t0 = Utc.with_ymd_and_hms(2026, 12, 3, 10, 0, 0).unwrap();
        assert!(record(&store, &notification(50), true, t0).unwrap());
        assert!(!record(&store, &notification(50), true, t0).unwrap(), "a second record of the same id is ignored");
        assert!(record(&store, &notification(80), false, t0).unwrap());
        let first = lease_next(&store, t0).unwrap().expect("the pending one");
        assert_eq!((first.id.as_str(), first.attempt), ("acme/-/2026-12/50", 1));
        assert!(lease_next(&store, t0).unwrap().is_none(), "leased: no other process gets it; the logged one is never sent");
        attempt_failed(&store, &first.id, 1, "503", t0).unwrap();
        assert!(lease_next(&store, t0).unwrap().is_none(), "not before its backoff");
        let second = lease_next(&store, t0 + chrono::Duration::seconds(1)).unwrap().expect("due again");
        assert_eq!(second.attempt, 2);
        delivered(&store, &second.id, t0 + chrono::Duration::seconds(2)).unwrap();
        assert!(lease_next(&store, t0 + chrono::Duration::hours(2)).unwrap().is_none(), "delivered: never again");
        let all = list(&store, None).unwrap();
        let by_id: std::collections::BTreeMap<_, _> = all.iter().map(|r| (r.id.as_str(), (r.status.as_str(), r.attempts))).collect();
        assert_eq!(by_id["acme/-/2026-12/50"], ("delivered", 2));
        assert_eq!(by_id["acme/-/2026-12/80"], ("logged", 0));
        assert!(list(&store, Some(&["globex".to_string()])).unwrap().is_empty());
        // a lease that expired (its process died mid-attempt) is taken again
        assert!(record(&store, &notification(100), true, t0).unwrap());
        let leased = lease_next(&store, t0).unwrap().unwrap();
        assert!(lease_next(&store, t0 + chrono::Duration::seconds(LEASE_SECS - 1)).unwrap().is_none());
        let again = lease_next(&store, t0 + chrono::Duration::seconds(LEASE_SECS)).unwrap().unwrap();
        assert_eq!((again.id, again.attempt), (leased.id, 2));
    }

    #[test]
    fn backoff_doubles_up_to_an_hour_and_gives_up() {
        assert_eq!((1..=13).map(backoff_secs).collect::<Vec<_>>(), [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 2048]);
        let store = Store::open_in_memory().unwrap();
        let t0 = Utc.with_ymd_and_hms(2026, 12, 3, 10, 0, 0).unwrap();
        record(&store, &notification(50), true, t0).unwrap();
        attempt_failed(&store, "acme/-/2026-12/50", MAX_ATTEMPTS, "timeout", t0).unwrap();
        assert_eq!(list(&store, None).unwrap()[0].status, "failed");
        assert!(lease_next(&store, t0 + chrono::Duration::days(1)).unwrap().is_none());
    }
}
