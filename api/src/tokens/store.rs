//! Subscribe and Publish tokens in the SQLite store ([`crate::store::Store`]):
//! every operation written once for both kinds ([`TokenKind`] says what
//! differs: the table and the kind's own columns).
//!
//! Lists (streams, allowed origins and IPs) are stored as JSON text; times
//! as epoch milliseconds. Every statement is parameterised.

use super::model::{AccessRules, NewPublishToken, NewSubscribeToken, NewTokenCommon, PublishToken, SubscribeToken, TokenCommon};
use crate::store::{from_json, ms_to_time, to_json, to_millis, Store, StoreError};
use chrono::{DateTime, Utc};
use rusqlite::types::Value as SqlValue;
use rusqlite::{params, params_from_iter, OptionalExtension, Row};

/// Order of a token list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortBy {
    /// Creation order (ties by id).
    #[default]
    AddedOn,
    /// By label.
    Name,
}

/// One page of a token list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// 1-based page number.
    pub page: u32,
    /// Tokens per page.
    pub items_on_page: u32,
    /// The order (creation order by default); ties are broken by id.
    pub sort_by: SortBy,
    /// Reverse the order (ties too); `false` by default.
    pub descending: bool,
}

impl Default for Page {
    fn default() -> Self {
        Page { page: 1, items_on_page: u32::MAX, sort_by: SortBy::AddedOn, descending: false }
    }
}

impl Page {
    fn sql(&self) -> String {
        let col = match self.sort_by {
            SortBy::AddedOn => "added_on_ms",
            SortBy::Name => "label",
        };
        let dir = if self.descending { "DESC" } else { "ASC" };
        let offset = u64::from(self.page.max(1) - 1) * u64::from(self.items_on_page);
        format!(" ORDER BY {col} {dir}, id {dir} LIMIT {} OFFSET {offset}", self.items_on_page)
    }
}

/// Read access to tokens and the IP bindings, what verification needs.
pub trait TokenLookup {
    /// The Subscribe token with this id.
    fn subscribe_by_id(&self, id: i64) -> Result<Option<SubscribeToken>, StoreError>;
    /// The Subscribe token with this token string.
    fn subscribe_by_token(&self, token: &str) -> Result<Option<SubscribeToken>, StoreError>;
    /// Every Publish token (the `subscribeRequiresAuth` of a stream).
    fn publish_tokens(&self) -> Result<Vec<PublishToken>, StoreError>;
    /// Bind `ip` to the token usage `key` if fewer than `max` IPs are bound
    /// to it yet; whether `ip` is (now) bound.
    fn bind_ip(&self, key: &str, ip: &str, max: u32) -> Result<bool, StoreError>;
}

/// The columns both token tables have, in the order [`read_common`] reads
/// them; a kind's own columns follow.
const COMMON_COLUMNS: &[&str] = &[
    "id",
    "token",
    "label",
    "streams",
    "origin_cluster",
    "expires_on_ms",
    "is_active",
    "allowed_origins",
    "allowed_ip_addresses",
    "bind_ips_on_usage",
    "allowed_countries",
    "denied_countries",
    "added_on_ms",
];

/// What the store needs to know of a token kind.
pub trait TokenKind: Sized + Clone {
    /// What creating one needs.
    type New;
    /// Its table.
    const TABLE: &'static str;
    /// Its columns beyond those both token tables have (`COMMON_COLUMNS`).
    const OWN_COLUMNS: &'static [&'static str];
    /// The fields every kind has.
    fn common(&self) -> &TokenCommon;
    /// The fields every kind has, to change.
    fn common_mut(&mut self) -> &mut TokenCommon;
    /// The fields every kind needs at creation.
    fn new_common(new: &Self::New) -> &NewTokenCommon;
    /// The values of [`TokenKind::OWN_COLUMNS`] of a new token.
    fn new_values(new: &Self::New) -> Vec<SqlValue>;
    /// The values of [`TokenKind::OWN_COLUMNS`] to write back.
    fn values(&self) -> Vec<SqlValue>;
    /// The token from its shared fields and its own columns, as read.
    fn decode(common: TokenCommon, own: Vec<SqlValue>) -> Result<Self, StoreError>;
    /// Undo what an update may not change beyond the id and creation time
    /// (which the store keeps for every kind).
    fn keep_immutable(&mut self, _before: &Self) {}
}

impl TokenKind for SubscribeToken {
    type New = NewSubscribeToken;
    const TABLE: &'static str = "subscribe_tokens";
    const OWN_COLUMNS: &'static [&'static str] = &["tracking_id"];
    fn common(&self) -> &TokenCommon {
        &self.common
    }
    fn common_mut(&mut self) -> &mut TokenCommon {
        &mut self.common
    }
    fn new_common(new: &NewSubscribeToken) -> &NewTokenCommon {
        &new.common
    }
    fn new_values(new: &NewSubscribeToken) -> Vec<SqlValue> {
        vec![new.tracking_id.clone().map_or(SqlValue::Null, SqlValue::Text)]
    }
    fn values(&self) -> Vec<SqlValue> {
        vec![self.tracking_id.clone().map_or(SqlValue::Null, SqlValue::Text)]
    }
    fn decode(common: TokenCommon, own: Vec<SqlValue>) -> Result<Self, StoreError> {
        let tracking_id = match own.into_iter().next() {
            Some(SqlValue::Text(t)) => Some(t),
            Some(SqlValue::Null) => None,
            other => return Err(corrupt(Self::TABLE, common.id, format!("tracking_id: {other:?}"))),
        };
        Ok(SubscribeToken { common, tracking_id })
    }
    /// The tracking id is the distribution channel billed: never changed.
    fn keep_immutable(&mut self, before: &Self) {
        self.tracking_id.clone_from(&before.tracking_id);
    }
}

impl TokenKind for PublishToken {
    type New = NewPublishToken;
    const TABLE: &'static str = "publish_tokens";
    const OWN_COLUMNS: &'static [&'static str] = &["subscribe_requires_auth", "options"];
    fn common(&self) -> &TokenCommon {
        &self.common
    }
    fn common_mut(&mut self) -> &mut TokenCommon {
        &mut self.common
    }
    fn new_common(new: &NewPublishToken) -> &NewTokenCommon {
        &new.common
    }
    fn new_values(new: &NewPublishToken) -> Vec<SqlValue> {
        vec![SqlValue::Integer(i64::from(new.subscribe_requires_auth)), SqlValue::Text(to_json(&new.options))]
    }
    fn values(&self) -> Vec<SqlValue> {
        vec![SqlValue::Integer(i64::from(self.subscribe_requires_auth)), SqlValue::Text(to_json(&self.options))]
    }
    fn decode(common: TokenCommon, own: Vec<SqlValue>) -> Result<Self, StoreError> {
        let id = common.id;
        match <[SqlValue; 2]>::try_from(own) {
            Ok([SqlValue::Integer(auth), SqlValue::Text(options)]) => {
                Ok(PublishToken { common, subscribe_requires_auth: auth != 0, options: from_json(Self::TABLE, id, &options)? })
            }
            other => Err(corrupt(Self::TABLE, id, format!("subscribe_requires_auth, options: {other:?}"))),
        }
    }
}

fn corrupt(table: &'static str, id: i64, message: String) -> StoreError {
    StoreError::Corrupt { table, id, message }
}

/// The shared columns as read (decoded by [`decode_common`], outside
/// rusqlite's row callback, so that a bad value is a [`StoreError`]).
struct CommonRow {
    id: i64,
    token: String,
    label: String,
    streams: String,
    origin_cluster: String,
    expires_on_ms: Option<i64>,
    is_active: bool,
    allowed_origins: String,
    allowed_ip_addresses: String,
    bind_ips_on_usage: i64,
    allowed_countries: String,
    denied_countries: String,
    added_on_ms: i64,
}

/// A row of [`select`]: the shared columns, then `own` more.
fn read_row(r: &Row<'_>, own: usize) -> rusqlite::Result<(CommonRow, Vec<SqlValue>)> {
    let common = CommonRow {
        id: r.get(0)?,
        token: r.get(1)?,
        label: r.get(2)?,
        streams: r.get(3)?,
        origin_cluster: r.get(4)?,
        expires_on_ms: r.get(5)?,
        is_active: r.get(6)?,
        allowed_origins: r.get(7)?,
        allowed_ip_addresses: r.get(8)?,
        bind_ips_on_usage: r.get(9)?,
        allowed_countries: r.get(10)?,
        denied_countries: r.get(11)?,
        added_on_ms: r.get(12)?,
    };
    let own = (0..own).map(|i| r.get(COMMON_COLUMNS.len() + i)).collect::<rusqlite::Result<Vec<SqlValue>>>()?;
    Ok((common, own))
}

fn decode<K: TokenKind>((c, own): (CommonRow, Vec<SqlValue>)) -> Result<K, StoreError> {
    let (t, id) = (K::TABLE, c.id);
    let rules = AccessRules {
        allowed_origins: from_json(t, id, &c.allowed_origins)?,
        allowed_ip_addresses: from_json(t, id, &c.allowed_ip_addresses)?,
        bind_ips_on_usage: u32::try_from(c.bind_ips_on_usage).map_err(|_| corrupt(t, id, "bind_ips_on_usage".into()))?,
        allowed_countries: from_json(t, id, &c.allowed_countries)?,
        denied_countries: from_json(t, id, &c.denied_countries)?,
    };
    let common = TokenCommon {
        id,
        streams: from_json(t, id, &c.streams)?,
        expires_on: c.expires_on_ms.map(|ms| ms_to_time(t, id, ms)).transpose()?,
        added_on: ms_to_time(t, id, c.added_on_ms)?,
        token: c.token,
        label: c.label,
        origin_cluster: c.origin_cluster,
        is_active: c.is_active,
        rules,
    };
    K::decode(common, own)
}

/// `SELECT <every column> FROM <table>` and `tail`.
fn select<K: TokenKind>(tail: &str) -> String {
    format!("SELECT {}, {} FROM {}{tail}", COMMON_COLUMNS.join(", "), K::OWN_COLUMNS.join(", "), K::TABLE)
}

/// The values of the shared columns from `token` on (`COMMON_COLUMNS[1..12]`:
/// every one but the id and the creation time).
fn common_values(
    token: String,
    label: &str,
    streams: &[super::model::StreamRule],
    cluster: &str,
    expires_on: Option<DateTime<Utc>>,
    is_active: bool,
    rules: &AccessRules,
) -> Vec<SqlValue> {
    vec![
        SqlValue::Text(token),
        SqlValue::Text(label.to_string()),
        SqlValue::Text(to_json(&streams)),
        SqlValue::Text(cluster.to_string()),
        expires_on.map_or(SqlValue::Null, |t| SqlValue::Integer(t.timestamp_millis())),
        SqlValue::Integer(i64::from(is_active)),
        SqlValue::Text(to_json(&rules.allowed_origins)),
        SqlValue::Text(to_json(&rules.allowed_ip_addresses)),
        SqlValue::Integer(i64::from(rules.bind_ips_on_usage)),
        SqlValue::Text(to_json(&rules.allowed_countries)),
        SqlValue::Text(to_json(&rules.denied_countries)),
    ]
}

impl Store {
    /// Create an active token of kind `K` with a fresh token string.
    pub fn create<K: TokenKind>(&self, new: K::New, now: DateTime<Utc>) -> Result<K, StoreError> {
        let c = K::new_common(&new);
        let mut values =
            common_values(super::model::generate_token(), &c.label, &c.streams, &c.origin_cluster, c.expires_on, true, &c.rules);
        values.push(SqlValue::Integer(now.timestamp_millis()));
        values.extend(K::new_values(&new));
        let columns: Vec<&str> = COMMON_COLUMNS[1..].iter().chain(K::OWN_COLUMNS).copied().collect();
        let marks: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
        let conn = self.conn()?;
        conn.execute(
            &format!("INSERT INTO {} ({}) VALUES ({})", K::TABLE, columns.join(", "), marks.join(", ")),
            params_from_iter(values),
        )?;
        let id = conn.last_insert_rowid();
        drop(conn);
        self.get::<K>(id)?.ok_or(StoreError::Sqlite(rusqlite::Error::QueryReturnedNoRows))
    }

    /// The token of kind `K` with this id.
    pub fn get<K: TokenKind>(&self, id: i64) -> Result<Option<K>, StoreError> {
        let conn = self.conn()?;
        let row = conn.query_row(&select::<K>(" WHERE id = ?1"), params![id], |r| read_row(r, K::OWN_COLUMNS.len())).optional()?;
        row.map(decode::<K>).transpose()
    }

    /// The token of kind `K` with this token string.
    pub fn get_by_token<K: TokenKind>(&self, token: &str) -> Result<Option<K>, StoreError> {
        let conn = self.conn()?;
        let row = conn.query_row(&select::<K>(" WHERE token = ?1"), params![token], |r| read_row(r, K::OWN_COLUMNS.len())).optional()?;
        row.map(decode::<K>).transpose()
    }

    /// One page of the tokens of kind `K`.
    pub fn list<K: TokenKind>(&self, page: Page) -> Result<Vec<K>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(&select::<K>(&page.sql()))?;
        let rows = stmt.query_map([], |r| read_row(r, K::OWN_COLUMNS.len()))?.collect::<Result<Vec<_>, _>>()?;
        rows.into_iter().map(decode::<K>).collect()
    }

    /// Change a token with `change` (which may refuse); `None` when there is
    /// no such token. The id and creation time (and what
    /// [`TokenKind::keep_immutable`] keeps) stay whatever `change` does. The
    /// row is read, changed and written back in one immediate transaction
    /// under the connection's lock: a concurrent update (a revocation, say)
    /// is never overwritten by a stale copy. Answers the token as written
    /// (expiry rounded to the stored milliseconds).
    pub fn update<K: TokenKind, E: From<StoreError>>(&self, id: i64, change: impl FnOnce(&mut K) -> Result<(), E>) -> Result<Option<K>, E> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(StoreError::from)?;
        let row = tx
            .query_row(&select::<K>(" WHERE id = ?1"), params![id], |r| read_row(r, K::OWN_COLUMNS.len()))
            .optional()
            .map_err(StoreError::from)?;
        let Some(before) = row.map(decode::<K>).transpose()? else { return Ok(None) };
        let mut t = before.clone();
        change(&mut t)?;
        t.keep_immutable(&before);
        let c = t.common_mut();
        (c.id, c.added_on) = (before.common().id, before.common().added_on);
        c.expires_on = c.expires_on.map(to_millis);
        let c = t.common();
        let mut values = vec![SqlValue::Integer(id)];
        values.extend(common_values(c.token.clone(), &c.label, &c.streams, &c.origin_cluster, c.expires_on, c.is_active, &c.rules));
        values.extend(t.values());
        let sets: Vec<String> =
            COMMON_COLUMNS[1..12].iter().chain(K::OWN_COLUMNS).enumerate().map(|(i, col)| format!("{col} = ?{}", i + 2)).collect();
        tx.execute(&format!("UPDATE {} SET {} WHERE id = ?1", K::TABLE, sets.join(", ")), params_from_iter(values))
            .map_err(StoreError::from)?;
        tx.commit().map_err(StoreError::from)?;
        Ok(Some(t))
    }

    /// Delete a token of kind `K`; whether it existed. (A Subscribe token's
    /// viewer JWTs stop verifying at once.)
    pub fn delete<K: TokenKind>(&self, id: i64) -> Result<bool, StoreError> {
        Ok(self.conn()?.execute(&format!("DELETE FROM {} WHERE id = ?1", K::TABLE), params![id])? == 1)
    }
}

impl TokenLookup for Store {
    fn subscribe_by_id(&self, id: i64) -> Result<Option<SubscribeToken>, StoreError> {
        self.get(id)
    }
    fn subscribe_by_token(&self, token: &str) -> Result<Option<SubscribeToken>, StoreError> {
        self.get_by_token(token)
    }
    fn publish_tokens(&self) -> Result<Vec<PublishToken>, StoreError> {
        self.list(Page::default())
    }
    fn bind_ip(&self, key: &str, ip: &str, max: u32) -> Result<bool, StoreError> {
        Store::bind_ip(self, key, ip, max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::model::StreamRule;
    use chrono::TimeZone;
    use rusqlite::Connection;

    fn new_common(label: &str) -> NewTokenCommon {
        NewTokenCommon {
            label: label.into(),
            streams: vec![StreamRule { stream_name: "live".into(), is_regex: false }],
            origin_cluster: "auto".into(),
            expires_on: None,
            rules: AccessRules { allowed_ip_addresses: vec!["10.0.0.0/8".into()], ..Default::default() },
        }
    }

    fn new_sub(tracking: Option<&str>) -> NewSubscribeToken {
        NewSubscribeToken { common: new_common("p"), tracking_id: tracking.map(String::from) }
    }

    #[test]
    fn crud_round_trip() {
        let s = Store::open_in_memory().unwrap();
        let now = Utc.timestamp_millis_opt(1_760_000_000_123).unwrap();
        let t: SubscribeToken = s.create(new_sub(Some("acme")), now).unwrap();
        let id = t.common.id;
        assert_eq!(t.common.token.len(), 64);
        assert!(t.common.token.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(t.common.added_on, now);
        assert_eq!(s.get_by_token::<SubscribeToken>(&t.common.token).unwrap().unwrap(), t);
        let t2: SubscribeToken = s.create(new_sub(None), now).unwrap();
        assert_ne!(t.common.token, t2.common.token);
        assert_eq!(s.list::<SubscribeToken>(Page::default()).unwrap().len(), 2);
        let u = s
            .update(id, |t: &mut SubscribeToken| {
                t.common.is_active = false;
                t.common.label = "x".into();
                t.common.id = 99; // ignored: the id is the row's
                t.tracking_id = Some("changed".into()); // ignored: immutable
                Ok::<_, StoreError>(())
            })
            .unwrap()
            .unwrap();
        assert!(!u.common.is_active);
        assert_eq!((u.common.id, u.tracking_id.as_deref(), u.common.label.as_str()), (id, Some("acme"), "x"));
        assert_eq!(s.get::<SubscribeToken>(id).unwrap().unwrap(), u);
        assert!(s.delete::<SubscribeToken>(id).unwrap());
        assert!(!s.delete::<SubscribeToken>(id).unwrap());
        assert!(s.get::<SubscribeToken>(id).unwrap().is_none());
        assert!(s.update(id, |_: &mut SubscribeToken| Ok::<_, StoreError>(())).unwrap().is_none());
        // the other kind, through the same operations: its own columns round-trip
        let mut options = serde_json::Map::new();
        options.insert("record".into(), serde_json::json!(true));
        let p: PublishToken =
            s.create(NewPublishToken { common: new_common("pub"), subscribe_requires_auth: true, options: options.clone() }, now).unwrap();
        assert!(p.subscribe_requires_auth && p.options == options && p.common.rules.allowed_ip_addresses == ["10.0.0.0/8"]);
        let q = s
            .update(p.common.id, |t: &mut PublishToken| {
                t.subscribe_requires_auth = false;
                t.common.streams.push(StreamRule { stream_name: "b".into(), is_regex: false });
                Ok::<_, StoreError>(())
            })
            .unwrap()
            .unwrap();
        assert_eq!(s.get::<PublishToken>(p.common.id).unwrap().unwrap(), q);
        assert!(!q.subscribe_requires_auth && q.common.streams.len() == 2 && q.options == options);
        // each kind has its own table and ids: Publish token 1 is not the deleted Subscribe token 1
        assert_eq!(p.common.id, id);
        assert!(s.get::<SubscribeToken>(id).unwrap().is_none());
    }

    #[test]
    fn pages_sort_and_split_the_list() {
        let s = Store::open_in_memory().unwrap();
        let t0 = Utc.timestamp_millis_opt(1_760_000_000_000).unwrap();
        for (i, label) in ["c", "a", "b"].iter().enumerate() {
            s.create::<SubscribeToken>(
                NewSubscribeToken { common: new_common(label), tracking_id: None },
                t0 + chrono::Duration::seconds(i as i64),
            )
            .unwrap();
        }
        let labels = |p: Page| s.list::<SubscribeToken>(p).unwrap().into_iter().map(|t| t.common.label).collect::<Vec<_>>();
        let page = |page, n, sort_by, descending| Page { page, items_on_page: n, sort_by, descending };
        assert_eq!(labels(page(1, 10, SortBy::Name, false)), ["a", "b", "c"]);
        assert_eq!(labels(page(1, 2, SortBy::Name, true)), ["c", "b"]);
        assert_eq!(labels(page(2, 2, SortBy::Name, true)), ["a"]);
        assert_eq!(labels(page(3, 2, SortBy::Name, true)), Vec::<String>::new());
        assert_eq!(labels(page(1, 10, SortBy::AddedOn, false)), ["c", "a", "b"]);
    }

    #[test]
    fn a_store_of_the_first_release_opens_with_its_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE subscribe_tokens (id INTEGER PRIMARY KEY AUTOINCREMENT, token TEXT NOT NULL UNIQUE, label TEXT NOT NULL,
               streams TEXT NOT NULL, tracking_id TEXT, origin_cluster TEXT NOT NULL, expires_on_ms INTEGER, is_active INTEGER NOT NULL,
               allowed_origins TEXT NOT NULL, allowed_ip_addresses TEXT NOT NULL, added_on_ms INTEGER NOT NULL);
             CREATE TABLE publish_tokens (id INTEGER PRIMARY KEY AUTOINCREMENT, token TEXT NOT NULL UNIQUE, label TEXT NOT NULL,
               streams TEXT NOT NULL, subscribe_requires_auth INTEGER NOT NULL, is_active INTEGER NOT NULL, added_on_ms INTEGER NOT NULL);
             INSERT INTO subscribe_tokens VALUES (7, 'aa', 'old', '[{\"streamName\":\"live\",\"isRegex\":false}]', 'acme', 'auto',
               NULL, 1, '[\"https://a.tv\"]', '[]', 1760000000000);
             INSERT INTO publish_tokens VALUES (3, 'bb', 'pub', '[{\"streamName\":\"live\",\"isRegex\":false}]', 1, 1, 1760000000000);",
        )
        .unwrap();
        drop(conn);
        let s = Store::open(&path).unwrap();
        let t = s.get::<SubscribeToken>(7).unwrap().unwrap();
        assert_eq!(
            (t.tracking_id.as_deref(), t.common.rules.allowed_origins.as_slice()),
            (Some("acme"), &["https://a.tv".to_string()][..])
        );
        assert_eq!(t.common.rules.bind_ips_on_usage, 0);
        let p = s.get::<PublishToken>(3).unwrap().unwrap();
        assert!(p.subscribe_requires_auth && p.options.is_empty() && p.common.origin_cluster == "Auto");
        drop(s);
        assert!(Store::open(&path).is_ok(), "opening twice adds nothing twice");
    }
}
