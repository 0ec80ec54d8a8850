//! The check each service makes at start of its ClickHouse user's rights
//! (least privilege, `docs/security.md` "ClickHouse users").
//!
//! A service names what it needs ([`Access`]); the check probes what the
//! user can do beyond that, with statements that change nothing whether
//! they are allowed or not, and mean the same on 18.16 (users.xml profiles:
//! `readonly`, `allow_databases`) and on current versions (SQL grants):
//! - **writes**, for a reader: a zero-row `INSERT ... SELECT ... WHERE 0`
//!   into the migrations table (refused with code 164 under `readonly`,
//!   497 without the `INSERT` grant);
//! - **other databases**, for everyone: `system.databases` lists only the
//!   databases a user may reach (`allow_databases` on 18.16, `SHOW`
//!   grants on current versions); any other than the service's own,
//!   `system` and `information_schema` is an excess.
//!
//! What is done about an excess is [`RightsCheck`]: a loud warning by
//! default, or a refusal to start.

use crate::ch::{ChError, ClickHouseConfig, RightsCheck};
use crate::events::{self, InternalEvent};

/// What a service does with its database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads only (the statistics API and the console).
    Read,
    /// Reads, inserts, and the DDL of its locks and mutations of drafts
    /// (the aggregator and billing).
    Write,
}

/// The rights of `cfg`'s user beyond `access`, one sentence each (empty:
/// none found).
pub async fn excess_rights(cfg: &ClickHouseConfig, access: Access) -> Result<Vec<String>, ChError> {
    let db = cfg.db()?;
    let client = cfg.server_client();
    let mut excess = Vec::new();
    let others: Vec<String> = client
        .query(
            "SELECT name FROM system.databases WHERE name NOT IN (?, 'system', 'information_schema', 'INFORMATION_SCHEMA') ORDER BY name",
        )
        .bind(db)
        .fetch_all()
        .await?;
    if !others.is_empty() {
        let shown: Vec<&str> = others.iter().take(3).map(String::as_str).collect();
        let more = if others.len() > 3 { format!(" and {} more", others.len() - 3) } else { String::new() };
        excess.push(format!("reaches databases other than {db}: {}{more}", shown.join(", ")));
    }
    if access == Access::Read {
        let probe = format!("INSERT INTO {db}.schema_migrations SELECT * FROM {db}.schema_migrations WHERE 0");
        match client.query(&probe).execute().await {
            Ok(()) => excess.push(format!("can write to {db} (INSERT is allowed)")),
            Err(e) if refused(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(excess)
}

/// Whether ClickHouse refused a statement for want of rights: code 164
/// (`readonly`), 497 (a missing grant), 291 (a database not allowed).
fn refused(e: &clickhouse::error::Error) -> bool {
    let text = e.to_string();
    ["Code: 164", "Code: 497", "Code: 291", "READONLY", "ACCESS_DENIED"].iter().any(|c| text.contains(c))
}

/// Check `cfg`'s user for `service` as [`ClickHouseConfig::rights_check`]
/// says: log `ClickHouseUserExcessRights` (warn), or fail (refuse). A
/// check that cannot run (ClickHouse down, database not migrated yet) is
/// logged and, under `refuse`, fails too.
pub async fn check_rights(cfg: &ClickHouseConfig, access: Access, service: &str) -> Result<(), ChError> {
    if cfg.rights_check == RightsCheck::Off {
        return Ok(());
    }
    let user = &cfg.user;
    // a server that hangs must not hold the service's start
    let checked = match tokio::time::timeout(std::time::Duration::from_secs(10), excess_rights(cfg, access)).await {
        Ok(r) => r,
        Err(_) => Err(ChError::Timeout("the check of the user's rights (10 s)")),
    };
    match checked {
        Ok(excess) if excess.is_empty() => {
            events::ClickHouseUserChecked { service, user: &user, access: &access }.emit();
            Ok(())
        }
        Ok(excess) => {
            let detail = excess.join("; ");
            if cfg.rights_check == RightsCheck::Refuse {
                return Err(ChError::ExcessRights { user: user.clone(), detail });
            }
            events::ClickHouseUserExcessRights { service, user: &user, access: &access, excess: &detail }.emit();
            Ok(())
        }
        Err(e) if cfg.rights_check == RightsCheck::Refuse => Err(e),
        Err(e) => {
            events::ClickHouseUserUnchecked { service, user: &user, error: &e }.emit();
            Ok(())
        }
    }
}
