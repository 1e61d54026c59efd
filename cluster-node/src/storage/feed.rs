//! The change feed in `state.db`: every committed change, in revision order, written in
//! the same transaction as the change itself.
//!
//! Table `changes` holds one row per key a revision touched, `(revision, position)` its
//! key; table `revisions` one row per revision with its time. Both are written by the
//! apply transaction that changes `kv`, so a crash leaves the feed and the keys in step:
//! after it, openraft applies the lost entries again, writing their rows again, exactly
//! once. A snapshot carries the kept part of the feed with the keys, so a node that
//! installs one serves the same feed as the node that built it, and a leader change only
//! moves who reads it. Nothing is ever recorded outside an apply.
//!
//! Compaction is part of the apply too, decided only from replicated data (the revision
//! and the leader-stamped time of the entry being applied), so every node that uses the
//! same [`FeedRetention`] compacts at the same revisions. The revision the feed is
//! compacted through is kept in `sm_meta` and moves with the rows.

use aspen_api::feed::{ChangeKind, ChangeSet, Compacted, KeyChange};
use aspen_api::BlobRef;
use bytes::Bytes;

use super::apply::blob_from_columns;
use rusqlite::{params, Connection, OptionalExtension, Transaction};

/// The tables of the feed.
pub(crate) const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS changes (revision INTEGER NOT NULL, position INTEGER NOT NULL,
        key BLOB NOT NULL, value BLOB, create_revision INTEGER NOT NULL,
        version INTEGER NOT NULL, blob_hash BLOB, blob_size INTEGER,
        PRIMARY KEY (revision, position)) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS revisions (revision INTEGER PRIMARY KEY,
        time_ms INTEGER NOT NULL);
    CREATE INDEX IF NOT EXISTS revisions_by_time ON revisions (time_ms);
    CREATE INDEX IF NOT EXISTS changes_blobs ON changes (blob_hash)
        WHERE blob_hash IS NOT NULL;";

/// How much of the feed a node keeps (the node config's `[feed]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedRetention {
    /// Keep the latest this many revisions.
    pub revisions: u64,
    /// Keep changes proposed at most this long ago, in milliseconds.
    pub max_age_ms: u64,
}

impl Default for FeedRetention {
    fn default() -> Self {
        let config = aspen_config::FeedConfig::default();
        FeedRetention::from(&config)
    }
}

impl From<&aspen_config::FeedConfig> for FeedRetention {
    fn from(c: &aspen_config::FeedConfig) -> Self {
        FeedRetention {
            revisions: c.retain_revisions,
            max_age_ms: c.retain_seconds.saturating_mul(1000),
        }
    }
}

/// Compaction moves in steps of at least this many revisions (or by time), so the feed is
/// not trimmed by one row in every apply; the feed holds up to this many revisions more
/// than its retention.
pub(crate) const COMPACTION_STEP_REVISIONS: u64 = 256;

/// Records the changes of one command under its revision, inside the apply transaction.
pub(crate) struct FeedWriter<'t> {
    tx: &'t Connection,
    revision: u64,
    time_ms: u64,
    position: u32,
    /// A copy of what was recorded, when the writer captures (see `super::recent`).
    captured: Option<Vec<KeyChange>>,
    /// Whether a value kept as a blob was put.
    put_blob: bool,
}

impl<'t> FeedWriter<'t> {
    /// A writer for the command that would take `revision` at `time_ms`.
    pub(crate) fn new(tx: &'t Transaction<'_>, revision: u64, time_ms: u64) -> Self {
        FeedWriter {
            tx,
            revision,
            time_ms,
            position: 0,
            captured: None,
            put_blob: false,
        }
    }

    /// The writer, also keeping a copy of what it records (see [`Self::into_captured`]).
    pub(crate) fn capturing(mut self, on: bool) -> Self {
        self.captured = on.then(Vec::new);
        self
    }

    /// What was recorded, as a change set: `None` when nothing was or the writer did not
    /// capture.
    pub(crate) fn into_captured(self) -> Option<ChangeSet> {
        let changes = self.captured.filter(|c| !c.is_empty())?;
        Some(ChangeSet {
            revision: self.revision,
            time_ms: self.time_ms,
            changes,
        })
    }

    /// Records that `key` now holds `value`.
    pub(crate) fn put(
        &mut self,
        key: &str,
        value: &Bytes,
        create_revision: u64,
        version: u64,
    ) -> rusqlite::Result<()> {
        self.row(key, Row::Put(value), create_revision, version)
    }

    /// Records that `key` now holds the value kept as `blob`.
    pub(crate) fn put_blob(
        &mut self,
        key: &str,
        blob: &BlobRef,
        create_revision: u64,
        version: u64,
    ) -> rusqlite::Result<()> {
        self.put_blob = true;
        self.row(key, Row::PutBlob(blob), create_revision, version)
    }

    /// Whether the command put a value kept as a blob.
    pub(crate) fn put_a_blob(&self) -> bool {
        self.put_blob
    }

    /// Records that `key` was deleted.
    pub(crate) fn delete(&mut self, key: &str) -> rusqlite::Result<()> {
        self.row(key, Row::Delete, 0, 0)
    }

    fn row(
        &mut self,
        key: &str,
        change: Row<'_>,
        create_revision: u64,
        version: u64,
    ) -> rusqlite::Result<()> {
        if self.position == 0 {
            self.tx
                .prepare_cached("INSERT INTO revisions (revision, time_ms) VALUES (?1, ?2)")?
                .execute(params![self.revision as i64, self.time_ms as i64])?;
        }
        self.tx
            .prepare_cached(
                "INSERT INTO changes (revision, position, key, value, create_revision, version,
                     blob_hash, blob_size)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                self.revision as i64,
                self.position,
                key.as_bytes(),
                match change {
                    Row::Put(value) => Some(&value[..]),
                    Row::PutBlob(_) => Some(&[][..]),
                    Row::Delete => None,
                },
                create_revision as i64,
                version as i64,
                match change {
                    Row::PutBlob(blob) => Some(&blob.hash[..]),
                    _ => None,
                },
                match change {
                    Row::PutBlob(blob) => Some(blob.size as i64),
                    _ => None,
                },
            ])?;
        self.position += 1;
        if let Some(captured) = &mut self.captured {
            let kind = match change {
                // Shared with the command, not copied.
                Row::Put(value) => ChangeKind::Put {
                    value: value.clone(),
                    create_revision,
                    version,
                },
                Row::PutBlob(blob) => ChangeKind::PutBlob {
                    blob: *blob,
                    create_revision,
                    version,
                },
                Row::Delete => ChangeKind::Delete,
            };
            let key = key.to_string();
            captured.push(KeyChange { key, kind });
        }
        Ok(())
    }

    /// Whether anything was recorded: the command changed the key space.
    pub(crate) fn changed(&self) -> bool {
        self.position > 0
    }
}

/// One row of the feed: `value` holds the bytes of a put, empty bytes for a blob's (whose
/// reference is in `blob_hash` and `blob_size`), NULL for a delete.
#[derive(Clone, Copy)]
enum Row<'a> {
    Put(&'a Bytes),
    PutBlob(&'a BlobRef),
    Delete,
}

/// Compacts the feed as `retention` says, given the cluster's `head` revision and the
/// time of the entry being applied. Returns the revision the feed is now compacted
/// through (`compacted` if nothing moved).
pub(crate) fn compact(
    tx: &Transaction,
    retention: &FeedRetention,
    head: u64,
    now_ms: u64,
    compacted: u64,
) -> rusqlite::Result<u64> {
    let by_count = head.saturating_sub(retention.revisions);
    let cutoff_ms = now_ms.saturating_sub(retention.max_age_ms);
    let by_time: u64 = tx
        .prepare_cached(
            "SELECT revision FROM revisions WHERE time_ms < ?1
             ORDER BY time_ms DESC, revision DESC LIMIT 1",
        )?
        .query_row([cutoff_ms as i64], |r| r.get::<_, i64>(0))
        .optional()?
        .map_or(0, |r| r as u64);
    let target = if by_count >= compacted + COMPACTION_STEP_REVISIONS {
        by_count.max(by_time)
    } else if by_time > compacted {
        by_time.max(by_count)
    } else {
        return Ok(compacted);
    };
    if target <= compacted {
        return Ok(compacted);
    }
    tx.prepare_cached("DELETE FROM changes WHERE revision <= ?1")?
        .execute([target as i64])?;
    tx.prepare_cached("DELETE FROM revisions WHERE revision <= ?1")?
        .execute([target as i64])?;
    Ok(target)
}

/// Reads the change sets after revision `after`, in order: at most `max_sets`, and stops
/// after the set that reaches `max_bytes` of keys and values (at least one set is
/// returned when one exists). `compacted` is the revision the feed is compacted through,
/// read in the same transaction.
pub(crate) fn read_after(
    conn: &Connection,
    after: u64,
    compacted: u64,
    max_sets: usize,
    max_bytes: usize,
) -> rusqlite::Result<Result<Vec<ChangeSet>, Compacted>> {
    if after < compacted {
        return Ok(Err(Compacted {
            requested: after + 1,
            oldest: compacted + 1,
        }));
    }
    let mut revs = conn.prepare_cached(
        "SELECT revision, time_ms FROM revisions WHERE revision > ?1 ORDER BY revision LIMIT ?2",
    )?;
    let heads: Vec<(u64, u64)> = revs
        .query_map(params![after as i64, max_sets as i64], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut rows = conn.prepare_cached(
        "SELECT key, value, create_revision, version, blob_hash, blob_size FROM changes
         WHERE revision = ?1 ORDER BY position",
    )?;
    let mut sets = Vec::with_capacity(heads.len());
    let mut bytes = 0usize;
    for (revision, time_ms) in heads {
        let changes: Vec<KeyChange> = rows
            .query_map([revision as i64], |r| {
                let key: Vec<u8> = r.get(0)?;
                let key = String::from_utf8(key)
                    .map_err(|e| rusqlite::Error::Utf8Error(0, e.utf8_error()))?;
                let value: Option<Vec<u8>> = r.get(1)?;
                let create_revision = r.get::<_, i64>(2)? as u64;
                let version = r.get::<_, i64>(3)? as u64;
                let kind = match (value, blob_from_columns(r, 4)?) {
                    (Some(_), Some(blob)) => ChangeKind::PutBlob {
                        blob,
                        create_revision,
                        version,
                    },
                    (Some(value), None) => ChangeKind::Put {
                        value: value.into(),
                        create_revision,
                        version,
                    },
                    (None, _) => ChangeKind::Delete,
                };
                Ok(KeyChange { key, kind })
            })?
            .collect::<rusqlite::Result<_>>()?;
        let set = ChangeSet {
            revision,
            time_ms,
            changes,
        };
        bytes += set.payload_bytes();
        sets.push(set);
        if bytes >= max_bytes {
            break;
        }
    }
    Ok(Ok(sets))
}

/// Calls `each` with every kept change set, in revision order, a page at a time (for a
/// snapshot: memory holds one page, not the feed).
pub(crate) fn for_each(
    conn: &Connection,
    mut each: impl FnMut(ChangeSet) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut after = 0;
    loop {
        let page = read_after(conn, after, 0, SNAPSHOT_PAGE_SETS, SNAPSHOT_PAGE_BYTES)
            .map_err(std::io::Error::other)?
            .expect("no compaction bound");
        let Some(last) = page.last() else {
            return Ok(());
        };
        after = last.revision;
        for set in page {
            each(set)?;
        }
    }
}

/// Change sets read at once while writing a snapshot.
const SNAPSHOT_PAGE_SETS: usize = 1024;
/// Bytes of keys and values read at once while writing a snapshot (a page may pass it by
/// one change set).
const SNAPSHOT_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// Empties the feed (installing a snapshot, before [`insert_set`]s).
pub(crate) fn clear(tx: &Transaction) -> rusqlite::Result<()> {
    tx.execute("DELETE FROM changes", [])?;
    tx.execute("DELETE FROM revisions", [])?;
    Ok(())
}

/// Records `set` as it was (installing a snapshot).
pub(crate) fn insert_set(tx: &Transaction, set: &ChangeSet) -> rusqlite::Result<()> {
    let mut writer = FeedWriter::new(tx, set.revision, set.time_ms);
    for change in &set.changes {
        match &change.kind {
            ChangeKind::Put {
                value,
                create_revision,
                version,
            } => writer.put(&change.key, value, *create_revision, *version)?,
            ChangeKind::PutBlob {
                blob,
                create_revision,
                version,
            } => writer.put_blob(&change.key, blob, *create_revision, *version)?,
            ChangeKind::Delete => writer.delete(&change.key)?,
        }
    }
    Ok(())
}
