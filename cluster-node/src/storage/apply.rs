//! How each [`Command`] changes the `kv` table. Runs inside the state machine's write
//! transaction, so a command either applies whole or (on a failed precondition) changes
//! nothing: preconditions are all checked before the first write. Every key written or
//! deleted is recorded in the change feed by the same transaction ([`FeedWriter`]).

use std::collections::BTreeMap;

use aspen_api::lease::LeaseFailure;
use aspen_api::types::PreconditionFailure;
use aspen_api::{BlobRef, Command, KeyState, KvEntry, Precondition, WriteOutcome};
use bytes::Bytes;
use rusqlite::{params, OptionalExtension, Transaction};

use super::feed::FeedWriter;
use super::leases::{self, LeaseEvent};
use crate::raft_types::Entry;
use openraft::EntryPayload;

/// The columns of a `kv` row that make a [`KvEntry`], in the order
/// [`entry_from_row`] reads them.
pub(crate) const ENTRY_COLUMNS: &str =
    "value, create_revision, mod_revision, version, blob_hash, blob_size";

/// The entry of `key` from a row whose columns from `first` on are [`ENTRY_COLUMNS`].
pub(crate) fn entry_from_row(
    key: String,
    r: &rusqlite::Row<'_>,
    first: usize,
) -> rusqlite::Result<KvEntry> {
    Ok(KvEntry {
        key,
        value: r.get(first)?,
        create_revision: r.get::<_, i64>(first + 1)? as u64,
        mod_revision: r.get::<_, i64>(first + 2)? as u64,
        version: r.get::<_, i64>(first + 3)? as u64,
        blob: blob_from_columns(r, first + 4)?,
    })
}

/// A blob reference from its two columns (hash, size), both NULL for an inline value.
pub(crate) fn blob_from_columns(
    r: &rusqlite::Row<'_>,
    first: usize,
) -> rusqlite::Result<Option<BlobRef>> {
    // rusqlite refuses a hash that is not 32 bytes (`InvalidBlobSize`).
    let Some(hash) = r.get::<_, Option<[u8; 32]>>(first)? else {
        return Ok(None);
    };
    let size = r.get::<_, i64>(first + 1)? as u64;
    Ok(Some(BlobRef { hash, size }))
}

/// Reads one key inside `tx`.
pub(crate) fn get(tx: &rusqlite::Connection, key: &str) -> rusqlite::Result<Option<KvEntry>> {
    tx.prepare_cached(&format!("SELECT {ENTRY_COLUMNS} FROM kv WHERE key = ?1"))?
        .query_row([key.as_bytes()], |r| entry_from_row(key.to_string(), r, 0))
        .optional()
}

/// Most keys the entries of one apply may touch for it to run on the state machine's own
/// task instead of a blocking thread. A lone write's apply is a few tens of microseconds
/// of SQLite; handing it to a blocking thread and waking the task again cost more than
/// that on a busy machine (`docs/BENCHMARKS.md`, "Where a single write's time goes").
/// Larger applies still go to a blocking thread, so a runtime worker is never held long.
pub const INLINE_APPLY_MAX_KEYS: usize = 8;

/// Most value bytes the entries of one apply may carry for it to run inline (see
/// [`INLINE_APPLY_MAX_KEYS`]).
pub const INLINE_APPLY_MAX_BYTES: usize = 64 * 1024;

/// Whether `entries` are small enough to apply on the calling task: at most
/// [`INLINE_APPLY_MAX_KEYS`] keys and [`INLINE_APPLY_MAX_BYTES`] of values, and no lease
/// revocation (it deletes keys its command does not name).
pub(crate) fn applies_inline(entries: &[Entry]) -> bool {
    let (mut keys, mut bytes) = (0usize, 0usize);
    for entry in entries {
        let EntryPayload::Normal(proposal) = &entry.payload else {
            continue;
        };
        for command in &proposal.commands {
            if matches!(command, Command::LeaseRevoke { .. }) {
                return false;
            }
            keys += command.keys().len();
            bytes += command.values().iter().map(|v| v.len()).sum::<usize>();
        }
    }
    keys <= INLINE_APPLY_MAX_KEYS && bytes <= INLINE_APPLY_MAX_BYTES
}

/// The lease each key a command sets takes (none for most commands).
type Attach<'a> = BTreeMap<&'a str, u64>;

/// What a put stores: bytes inline or a blob's reference.
#[derive(Clone, Copy)]
enum Stored<'a> {
    Inline(&'a Bytes),
    Blob(&'a BlobRef),
}

fn put(
    tx: &Transaction,
    feed: &mut FeedWriter,
    key: &str,
    stored: Stored<'_>,
    revision: u64,
    attach: &Attach,
) -> rusqlite::Result<()> {
    let rev = revision as i64;
    let lease = attach.get(key).map(|l| *l as i64);
    let (value, blob_hash, blob_size): (&[u8], Option<&[u8]>, Option<i64>) = match stored {
        Stored::Inline(value) => (value, None, None),
        Stored::Blob(blob) => (&[], Some(&blob.hash), Some(blob.size as i64)),
    };
    let (create_revision, version) = tx
        .prepare_cached(
            "INSERT INTO kv (key, value, create_revision, mod_revision, version, lease,
                 blob_hash, blob_size)
             VALUES (?1, ?2, ?3, ?3, 1, ?4, ?5, ?6)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value,
                 mod_revision = excluded.mod_revision, version = version + 1,
                 lease = excluded.lease, blob_hash = excluded.blob_hash,
                 blob_size = excluded.blob_size
             RETURNING create_revision, version",
        )?
        .query_row(
            params![key.as_bytes(), value, rev, lease, blob_hash, blob_size],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        )?;
    match stored {
        Stored::Inline(value) => feed.put(key, value, create_revision, version),
        Stored::Blob(blob) => feed.put_blob(key, blob, create_revision, version),
    }
}

fn delete(tx: &Transaction, feed: &mut FeedWriter, key: &str) -> rusqlite::Result<bool> {
    let n = tx
        .prepare_cached("DELETE FROM kv WHERE key = ?1")?
        .execute([key.as_bytes()])?;
    if n > 0 {
        feed.delete(key)?;
    }
    Ok(n > 0)
}

fn holds(precondition: &Precondition, entry: Option<&KvEntry>) -> bool {
    match precondition {
        Precondition::Exists { .. } => entry.is_some(),
        Precondition::NotExists { .. } => entry.is_none(),
        Precondition::Equals { value, .. } => entry.is_some_and(|e| e.holds(value)),
        Precondition::BlobEquals { blob, .. } => entry.is_some_and(|e| e.holds_blob(blob)),
        Precondition::ModRevision { revision, .. } => {
            entry.map_or(0, |e| e.mod_revision) == *revision
        }
    }
}

/// Checks preconditions in order; returns the first that fails with the key's state.
fn check(
    tx: &Transaction,
    preconditions: &[Precondition],
) -> rusqlite::Result<Option<PreconditionFailure>> {
    for (index, precondition) in preconditions.iter().enumerate() {
        let entry = get(tx, precondition.key())?;
        if !holds(precondition, entry.as_ref()) {
            return Ok(Some(PreconditionFailure {
                index,
                precondition: precondition.clone(),
                actual: KeyState {
                    key: precondition.key().to_string(),
                    entry,
                },
            }));
        }
    }
    Ok(None)
}

/// Applies one command; keys it writes get `revision` as their mod_revision and are
/// recorded in `feed`, and what it did to leases is pushed to `events`. The caller moves
/// the cluster to `revision` only if the feed says the command changed a key.
pub(crate) fn apply_command(
    tx: &Transaction,
    feed: &mut FeedWriter,
    revision: u64,
    command: &Command,
    events: &mut Vec<LeaseEvent>,
) -> rusqlite::Result<WriteOutcome> {
    match command {
        Command::LeaseGrant { lease, ttl_ms } => Ok(match leases::grant(tx, *lease, *ttl_ms)? {
            Ok(event) => {
                events.push(event);
                WriteOutcome::Applied { deleted: 0 }
            }
            Err(failure) => WriteOutcome::LeaseFailed(failure),
        }),
        Command::LeaseRevoke { lease } => {
            if leases::ttl_ms(tx, *lease)?.is_none() {
                return Ok(WriteOutcome::LeaseFailed(LeaseFailure::NotFound {
                    lease: *lease,
                }));
            }
            let mut deleted = 0;
            for key in leases::keys(tx, *lease)? {
                deleted += delete(tx, feed, &key)? as u32;
            }
            leases::remove(tx, *lease)?;
            events.push(LeaseEvent::Ended(*lease));
            Ok(WriteOutcome::Applied { deleted })
        }
        Command::Leased {
            attach, command, ..
        } => {
            if let Some(failure) = leases::check_attach(tx, attach)? {
                return Ok(WriteOutcome::LeaseFailed(failure));
            }
            let attach: Attach = attach.iter().map(|(k, l)| (k.as_str(), *l)).collect();
            apply_key_command(tx, feed, revision, command, &attach)
        }
        other => apply_key_command(tx, feed, revision, other, &Attach::new()),
    }
}

/// Applies a command on keys, attaching the keys it sets as `attach` says.
fn apply_key_command(
    tx: &Transaction,
    feed: &mut FeedWriter,
    revision: u64,
    command: &Command,
    attach: &Attach,
) -> rusqlite::Result<WriteOutcome> {
    let applied = |deleted: u32| Ok(WriteOutcome::Applied { deleted });
    match command {
        Command::Set { key, value } => {
            put(tx, feed, key, Stored::Inline(value), revision, attach)?;
            applied(0)
        }
        Command::SetMulti { writes } => {
            for (key, value) in writes {
                put(tx, feed, key, Stored::Inline(value), revision, attach)?;
            }
            applied(0)
        }
        Command::Delete { key } => applied(delete(tx, feed, key)? as u32),
        Command::DeleteMulti { keys } => {
            let mut n = 0;
            for key in keys {
                n += delete(tx, feed, key)? as u32;
            }
            applied(n)
        }
        Command::CompareAndSwap {
            key,
            expected,
            new_value,
        } => {
            let precondition = match expected {
                None => Precondition::NotExists { key: key.clone() },
                Some(value) => Precondition::Equals {
                    key: key.clone(),
                    value: value.clone(),
                },
            };
            if let Some(failure) = check(tx, std::slice::from_ref(&precondition))? {
                return Ok(WriteOutcome::PreconditionFailed(failure));
            }
            put(tx, feed, key, Stored::Inline(new_value), revision, attach)?;
            applied(0)
        }
        Command::CompareAndDelete { key, expected } => {
            let precondition = Precondition::Equals {
                key: key.clone(),
                value: expected.clone(),
            };
            if let Some(failure) = check(tx, std::slice::from_ref(&precondition))? {
                return Ok(WriteOutcome::PreconditionFailed(failure));
            }
            applied(delete(tx, feed, key)? as u32)
        }
        Command::ConditionalSetMulti {
            preconditions,
            writes,
            deletes,
        } => {
            if let Some(failure) = check(tx, preconditions)? {
                return Ok(WriteOutcome::PreconditionFailed(failure));
            }
            for (key, value) in writes {
                put(tx, feed, key, Stored::Inline(value), revision, attach)?;
            }
            let mut n = 0;
            for key in deletes {
                n += delete(tx, feed, key)? as u32;
            }
            applied(n)
        }
        Command::SetBlob {
            key,
            blob,
            preconditions,
        } => {
            if let Some(failure) = check(tx, preconditions)? {
                return Ok(WriteOutcome::PreconditionFailed(failure));
            }
            put(tx, feed, key, Stored::Blob(blob), revision, attach)?;
            applied(0)
        }
        // Validation refuses nested lease commands; were one applied, it changes nothing.
        Command::LeaseGrant { .. } | Command::LeaseRevoke { .. } | Command::Leased { .. } => {
            applied(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use aspen_api::Command;
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    use super::{applies_inline, INLINE_APPLY_MAX_BYTES, INLINE_APPLY_MAX_KEYS};
    use crate::raft_types::{Entry, Proposal};

    fn entry(commands: Vec<Command>) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
            payload: EntryPayload::Normal(Proposal {
                commands,
                time_ms: 1,
            }),
        }
    }

    fn sets(n: usize, value_len: usize) -> Command {
        Command::SetMulti {
            writes: (0..n)
                .map(|i| (format!("k{i}"), bytes::Bytes::from(vec![0u8; value_len])))
                .collect(),
        }
    }

    #[test]
    fn small_applies_run_inline_up_to_their_key_and_byte_limits() {
        let at_keys = entry(vec![sets(INLINE_APPLY_MAX_KEYS, 1)]);
        assert!(applies_inline(&[at_keys]));
        // The limit counts over every entry of the apply.
        let spread = [
            entry(vec![sets(INLINE_APPLY_MAX_KEYS / 2, 1)]),
            entry(vec![sets(INLINE_APPLY_MAX_KEYS / 2 + 1, 1)]),
        ];
        assert!(!applies_inline(&spread));
        assert!(!applies_inline(&[entry(vec![sets(
            INLINE_APPLY_MAX_KEYS + 1,
            1
        )])]));

        let at_bytes = entry(vec![sets(1, INLINE_APPLY_MAX_BYTES)]);
        assert!(applies_inline(&[at_bytes]));
        let over_bytes = entry(vec![sets(1, INLINE_APPLY_MAX_BYTES + 1)]);
        assert!(!applies_inline(&[over_bytes]));
    }

    #[test]
    fn a_lease_revocation_never_runs_inline() {
        // It names no key, yet deletes every key of its lease.
        let revoke = entry(vec![Command::LeaseRevoke { lease: 7 }]);
        assert!(!applies_inline(&[revoke]));
        let grant = entry(vec![Command::LeaseGrant {
            lease: 7,
            ttl_ms: 10_000,
        }]);
        assert!(applies_inline(&[grant]));
    }
}
