//! Leases in the state machine: the `leases` table (number and TTL) and each key's
//! `lease` column in `kv`, changed only by applied commands, so every member holds the
//! same leases at the same log index. Time never enters here: when a lease ends is the
//! leader's decision ([`crate::lease`]), committed as a `LeaseRevoke`. What an apply
//! changed is reported as [`LeaseEvent`]s, which the leader's lease clock follows.

use std::collections::BTreeMap;

use aspen_api::lease::LeaseFailure;
use aspen_api::limits::{MAX_KEYS_PER_LEASE, MAX_LEASES};
use rusqlite::{params, Connection, OptionalExtension, Transaction};

/// The lease tables of `state.db`. Keys find their lease through `kv.lease` (NULL: none);
/// the partial index finds a lease's keys without costing keys that have none.
pub(crate) const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS leases (id INTEGER PRIMARY KEY, ttl_ms INTEGER NOT NULL);
    CREATE INDEX IF NOT EXISTS kv_by_lease ON kv (lease) WHERE lease IS NOT NULL;";

/// What an apply did to the leases, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEvent {
    /// Lease `0` was granted with TTL `1` ms.
    Granted(u64, u64),
    /// Lease `0` ended (revoked or expired).
    Ended(u64),
}

/// SQLite stores integers signed; lease numbers are any u64 bit pattern.
fn sql(lease: u64) -> i64 {
    lease as i64
}

/// The TTL of lease `lease`, if it exists.
pub(crate) fn ttl_ms(conn: &Connection, lease: u64) -> rusqlite::Result<Option<u64>> {
    conn.prepare_cached("SELECT ttl_ms FROM leases WHERE id = ?1")?
        .query_row([sql(lease)], |r| r.get::<_, i64>(0))
        .optional()
        .map(|t| t.map(|t| t as u64))
}

/// Every lease and its TTL.
pub(crate) fn all(conn: &Connection) -> rusqlite::Result<Vec<(u64, u64)>> {
    let mut stmt = conn.prepare_cached("SELECT id, ttl_ms FROM leases ORDER BY id")?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
    })?;
    rows.collect()
}

/// The keys attached to `lease`, in key order (at most [`MAX_KEYS_PER_LEASE`]).
pub(crate) fn keys(conn: &Connection, lease: u64) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare_cached("SELECT key FROM kv WHERE lease = ?1 ORDER BY key")?;
    let rows = stmt.query_map([sql(lease)], |r| {
        let key: Vec<u8> = r.get(0)?;
        String::from_utf8(key).map_err(|e| rusqlite::Error::Utf8Error(0, e.utf8_error()))
    })?;
    rows.collect()
}

/// Grants `lease`: refused if the number is taken or the cluster holds [`MAX_LEASES`].
pub(crate) fn grant(
    tx: &Transaction,
    lease: u64,
    ttl_ms: u64,
) -> rusqlite::Result<Result<LeaseEvent, LeaseFailure>> {
    if ttl_ms_exists(tx, lease)? {
        return Ok(Err(LeaseFailure::Exists { lease }));
    }
    let count: i64 = tx
        .prepare_cached("SELECT count(*) FROM leases")?
        .query_row([], |r| r.get(0))?;
    if count as usize >= MAX_LEASES {
        return Ok(Err(LeaseFailure::TooManyLeases { max: MAX_LEASES }));
    }
    tx.prepare_cached("INSERT INTO leases (id, ttl_ms) VALUES (?1, ?2)")?
        .execute(params![sql(lease), ttl_ms as i64])?;
    Ok(Ok(LeaseEvent::Granted(lease, ttl_ms)))
}

fn ttl_ms_exists(conn: &Connection, lease: u64) -> rusqlite::Result<bool> {
    Ok(ttl_ms(conn, lease)?.is_some())
}

/// Removes `lease` (its keys are deleted by the caller, through the feed).
pub(crate) fn remove(tx: &Transaction, lease: u64) -> rusqlite::Result<bool> {
    let n = tx
        .prepare_cached("DELETE FROM leases WHERE id = ?1")?
        .execute([sql(lease)])?;
    Ok(n > 0)
}

/// Checks that every lease of `attach` exists and that attaching its keys keeps it within
/// [`MAX_KEYS_PER_LEASE`] (counting its keys already attached elsewhere; the command may
/// detach some of those, which this bound ignores, so it errs on the side of refusing).
pub(crate) fn check_attach(
    tx: &Transaction,
    attach: &[(String, u64)],
) -> rusqlite::Result<Option<LeaseFailure>> {
    let mut per_lease: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
    for (key, lease) in attach {
        per_lease.entry(*lease).or_default().push(key);
    }
    for (lease, new_keys) in per_lease {
        if !ttl_ms_exists(tx, lease)? {
            return Ok(Some(LeaseFailure::NotFound { lease }));
        }
        let held: i64 = tx
            .prepare_cached("SELECT count(*) FROM kv WHERE lease = ?1")?
            .query_row([sql(lease)], |r| r.get(0))?;
        let mut already = 0;
        for key in &new_keys {
            let current: Option<Option<i64>> = tx
                .prepare_cached("SELECT lease FROM kv WHERE key = ?1")?
                .query_row([key.as_bytes()], |r| r.get(0))
                .optional()?;
            if current.flatten() == Some(sql(lease)) {
                already += 1;
            }
        }
        let total = held as usize - already + new_keys.len();
        if total > MAX_KEYS_PER_LEASE {
            return Ok(Some(LeaseFailure::TooManyKeys {
                lease,
                max: MAX_KEYS_PER_LEASE,
            }));
        }
    }
    Ok(None)
}
