//! The state machine: every key with its revisions and lease, the leases, and the change
//! feed, in `state.db`.
//!
//! openraft applies committed entries in batches; each batch is one SQLite transaction
//! that also records the applied position ([`Applied`]: last applied log id, membership,
//! cluster revision and time, feed compaction point), so after a crash the keys, the feed
//! and the applied position always agree.
//!
//! The cluster revision counts changes, as etcd's does: each command that changes the key
//! space takes the next revision, and one log entry may carry many commands (a leader
//! batches concurrent writes into one proposal), so revisions are not log indexes. Blank
//! and membership entries, failed preconditions and deletes of absent keys take none.
//! Every revision is recorded in the change feed ([`super::feed`]) by the same apply.
//! Reads use a small pool of separate connections ([`super::read::Reader`]) and see only
//! committed batches (WAL snapshot isolation).
//!
//! Applies are not fsynced (`synchronous=NORMAL`): the log is the durable record, and after
//! a power loss openraft re-applies committed entries past the recovered applied position.
//! That is safe only while the log still holds those entries, and the log is purged up to
//! the latest snapshot. So a snapshot is built only from state that is on disk (see
//! [`super::snapshot_io`]). Skipping the per-apply fsync measured about 30% more puts/s
//! with 64 clients (docs/BENCHMARKS.md).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aspen_api::feed::ChangeSet;
use aspen_api::{KvEntry, WriteResult};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageIOError, StoredMembership};
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::watch;

use super::apply::{applies_inline, apply_command};
use super::feed::{self, FeedRetention, FeedWriter};
use super::format::{self, STATE_META};
use super::leases::{self, LeaseEvent};
use super::read::Reader;
use super::recent::RecentFeed;
use super::snapshot::{self, Meta, SnapshotFile};
use super::snapshot_io;
use crate::lease::LeaseClock;
use crate::raft_types::{
    Entry, LogId, MemberNode, NodeId, ProposalResults, StorageError, TypeConfig,
};
use crate::stages::{Stage, Stages};

/// Read connections kept open for reuse. Readers run at most this many at once (see
/// `KvService`), so under load no read opens a connection: opening one parses the schema
/// and re-prepares statements, which showed in profiles of bursts of batched reads.
pub const MAX_IDLE_READERS: usize = 16;

pub(super) type Membership = StoredMembership<NodeId, MemberNode>;

/// The state machine handed to openraft; clones share it (the snapshot builder is one).
#[derive(Clone)]
pub struct StateMachine {
    pub(super) shared: Arc<Shared>,
}

/// Where the applied state stands. Written with every apply, carried by snapshots.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Applied {
    /// The last applied log id.
    pub last: Option<LogId>,
    /// The membership as of the last applied membership entry.
    pub membership: Membership,
    /// The cluster revision.
    pub revision: u64,
    /// The time of the latest applied proposal (leader's clock, never decreasing), ms.
    pub time_ms: u64,
    /// The revision the change feed is compacted through (0: nothing compacted).
    pub feed_compacted: u64,
}

pub(super) struct Shared {
    pub dir: PathBuf,
    pub db_path: PathBuf,
    pub writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    pub applied: Mutex<Applied>,
    applied_index: AtomicU64,
    /// The cluster revision the applied state has reached; also sent on `revision_tx`.
    revision: AtomicU64,
    /// The latest revision at which the values' blob references may have changed by more
    /// than deletes: a blob put applied, or a snapshot installed (0: none since start).
    blobs_changed_at: AtomicU64,
    /// Tells feed readers (federation, watches) that the revision moved.
    revision_tx: watch::Sender<u64>,
    pub retention: FeedRetention,
    /// Follows the leases every apply grants and ends (see [`crate::lease`]).
    pub lease_clock: Arc<LeaseClock>,
    pub snapshot_seq: AtomicU64,
    /// The metadata of the current snapshot file (`None`: there is none yet). Held while
    /// a new snapshot replaces it, so builds and installs replace it one at a time.
    pub current_snapshot: Mutex<Option<Meta>>,
    /// Snapshot builds started so far; each build's number is this count when it starts.
    builds_started: AtomicU64,
    /// The number of the latest build to finish (builds finish in start order: openraft
    /// runs one at a time).
    builds_done: watch::Sender<u64>,
    /// Read connections opened so far (a pool miss each).
    readers_opened: AtomicU64,
    /// The node's write stage histograms (`apply` here).
    pub stages: Stages,
    /// The newest change sets, for the watch hub (see [`super::recent`]).
    recent: RecentFeed,
}

/// A read of the state machine failed (a storage fault).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// SQLite failed.
    #[error("reading the state machine failed: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored record could not be decoded.
    #[error("the state machine holds a record that cannot be read: {0}")]
    Corrupt(String),
}

pub(super) fn io_err(e: impl ToString) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Reads one `sm_meta` value, its default when absent.
pub(super) fn read_meta<T: serde::de::DeserializeOwned + Default>(
    conn: &Connection,
    name: &str,
) -> std::io::Result<T> {
    let bytes: Option<Vec<u8>> = conn
        .prepare_cached("SELECT value FROM sm_meta WHERE name = ?1")
        .and_then(|mut stmt| stmt.query_row([name], |r| r.get(0)).optional())
        .map_err(io_err)?;
    match bytes {
        Some(b) => format::decode(STATE_META, &b),
        None => Ok(T::default()),
    }
}

impl Applied {
    /// Reads the applied position (inside a transaction, for a consistent view).
    pub(super) fn read(conn: &Connection) -> std::io::Result<Applied> {
        Ok(Applied {
            last: read_meta(conn, "last_applied")?,
            membership: read_meta(conn, "membership")?,
            revision: read_meta(conn, "revision")?,
            time_ms: read_meta(conn, "time_ms")?,
            feed_compacted: read_meta(conn, "feed_compacted")?,
        })
    }

    /// Writes the applied position.
    pub(super) fn write(&self, conn: &Connection) -> rusqlite::Result<()> {
        self.write_changed(None, false, conn)
    }

    /// Writes the parts of the applied position that differ from `before`, what the
    /// database holds now (everything when `None`); `membership_changed` says whether
    /// the membership did (it is not compared: a membership entry sets it).
    pub(super) fn write_changed(
        &self,
        before: Option<&Applied>,
        membership_changed: bool,
        conn: &Connection,
    ) -> rusqlite::Result<()> {
        let mut stmt =
            conn.prepare_cached("INSERT OR REPLACE INTO sm_meta (name, value) VALUES (?1, ?2)")?;
        let differs = |f: fn(&Applied) -> u64| before.is_none_or(|b| f(b) != f(self));
        if before.is_none_or(|b| b.last != self.last) {
            stmt.execute(params!["last_applied", STATE_META.encode(&self.last)])?;
        }
        if before.is_none() || membership_changed {
            stmt.execute(params!["membership", STATE_META.encode(&self.membership)])?;
        }
        if differs(|a| a.revision) {
            stmt.execute(params!["revision", STATE_META.encode(&self.revision)])?;
        }
        if differs(|a| a.time_ms) {
            stmt.execute(params!["time_ms", STATE_META.encode(&self.time_ms)])?;
        }
        if differs(|a| a.feed_compacted) {
            stmt.execute(params![
                "feed_compacted",
                STATE_META.encode(&self.feed_compacted)
            ])?;
        }
        Ok(())
    }
}

impl StateMachine {
    /// Opens the state machine in `dir` (`state.db` and `snapshot.bin`), keeping the
    /// change feed as `retention` says.
    pub fn open(dir: &Path, retention: FeedRetention) -> Result<StateMachine, StorageError> {
        let db_path = dir.join("state.db");
        let err = |e: rusqlite::Error| StorageIOError::read_state_machine(&e);
        let ioerr = |e: std::io::Error| StorageIOError::read_state_machine(&e);
        snapshot::remove_leftovers(dir).map_err(ioerr)?;
        let current_snapshot =
            snapshot::open_current(dir).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        let conn = super::open_db(&db_path).map_err(err)?;
        format::check_schema(&conn, &db_path).map_err(ioerr)?;
        // Not fsynced per apply: see the module docs for why that is safe.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS kv (key BLOB PRIMARY KEY, value BLOB NOT NULL,
                 create_revision INTEGER NOT NULL, mod_revision INTEGER NOT NULL,
                 version INTEGER NOT NULL, lease INTEGER, blob_hash BLOB,
                 blob_size INTEGER) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS kv_blobs ON kv (blob_hash) WHERE blob_hash IS NOT NULL;
             CREATE TABLE IF NOT EXISTS sm_meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);",
        )
        .map_err(err)?;
        conn.execute_batch(feed::SCHEMA).map_err(err)?;
        conn.execute_batch(leases::SCHEMA).map_err(err)?;
        let applied = Applied::read(&conn).map_err(ioerr)?;
        let lease_clock = LeaseClock::new();
        lease_clock.reload(&leases::all(&conn).map_err(err)?);
        Ok(StateMachine {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                db_path,
                writer: Mutex::new(conn),
                readers: Mutex::new(Vec::new()),
                applied_index: AtomicU64::new(applied.last.map_or(0, |l| l.index)),
                revision: AtomicU64::new(applied.revision),
                blobs_changed_at: AtomicU64::new(0),
                revision_tx: watch::Sender::new(applied.revision),
                applied: Mutex::new(applied),
                retention,
                lease_clock,
                snapshot_seq: AtomicU64::new(0),
                current_snapshot: Mutex::new(current_snapshot),
                builds_started: AtomicU64::new(0),
                builds_done: watch::Sender::new(0),
                readers_opened: AtomicU64::new(0),
                recent: RecentFeed::default(),
                stages: Stages::default(),
            }),
        })
    }

    /// Highest applied log index.
    pub fn applied_index(&self) -> u64 {
        self.shared.applied_index.load(Ordering::Acquire)
    }

    /// How many read connections have been opened since start: at most
    /// [`MAX_IDLE_READERS`] while readers are bounded as `KvService` bounds them.
    pub fn readers_opened(&self) -> u64 {
        self.shared.readers_opened.load(Ordering::Relaxed)
    }

    /// The cluster revision this node's copy has reached.
    pub fn revision(&self) -> u64 {
        self.shared.revision.load(Ordering::Acquire)
    }

    /// The latest revision at which the values' blob references may have changed other
    /// than by deletes since this process opened the state machine: a blob put applied, or
    /// a snapshot installed. Read after [`StateMachine::watch_revision`]'s value, it covers
    /// every revision up to that value (0: nothing since start).
    pub fn blobs_changed_at(&self) -> u64 {
        self.shared.blobs_changed_at.load(Ordering::Acquire)
    }

    /// The cluster revision, watched: changes each time an apply moves it (or a snapshot
    /// is installed), so a feed reader can wait for new changes instead of polling.
    pub fn watch_revision(&self) -> watch::Receiver<u64> {
        self.shared.revision_tx.subscribe()
    }

    /// Runs `f` with one read connection from the pool (opening one when none is idle),
    /// so that several reads share one checkout.
    pub fn read<T>(&self, f: impl FnOnce(&Reader<'_>) -> T) -> Result<T, ReadError> {
        let pooled = self.shared.readers.lock().expect("reader pool lock").pop();
        let conn = match pooled {
            Some(c) => c,
            None => {
                self.shared.readers_opened.fetch_add(1, Ordering::Relaxed);
                super::open_db(&self.shared.db_path)?
            }
        };
        let out = f(&Reader { conn: &conn });
        let mut pool = self.shared.readers.lock().expect("reader pool lock");
        if pool.len() < MAX_IDLE_READERS {
            pool.push(conn);
        }
        Ok(out)
    }

    /// Reads one key from the local copy.
    pub fn get(&self, key: &str) -> Result<Option<KvEntry>, ReadError> {
        self.read(|r| r.get(key))?
    }

    /// Every blob the local copy references (see [`Reader::referenced_blobs`]).
    pub fn referenced_blobs(&self) -> Result<Vec<[u8; 32]>, ReadError> {
        self.read(|r| r.referenced_blobs())?
    }

    /// Starts or stops keeping the newest change sets in memory for
    /// [`Self::take_recent`] (the watch hub follows the feed with it).
    pub fn keep_recent(&self, on: bool) {
        self.shared.recent.set_capture(on);
    }

    /// The change sets applied after `after` that were kept in memory, taking them; `None`
    /// when some after `after` were not kept (read those from the feed).
    pub fn take_recent(&self, after: u64) -> Option<Vec<ChangeSet>> {
        self.shared.recent.take_after(after)
    }

    /// Snapshot builds started so far, and the number of the latest finished one, watched:
    /// a build numbered above a count read before asking for one started after the ask.
    pub fn snapshot_builds(&self) -> (u64, watch::Receiver<u64>) {
        (
            self.shared.builds_started.load(Ordering::Acquire),
            self.shared.builds_done.subscribe(),
        )
    }

    /// The metadata and size in bytes of the current snapshot, if there is one.
    pub fn current_snapshot(&self) -> std::io::Result<Option<(Meta, u64)>> {
        let meta = self
            .shared
            .current_snapshot
            .lock()
            .expect("snapshot lock")
            .clone();
        let Some(meta) = meta else {
            return Ok(None);
        };
        let len = std::fs::metadata(snapshot::current_path(&self.shared.dir))?.len();
        Ok(Some((meta, len)))
    }

    /// The node's write stage histograms, shared with its log store, proposer and Raft
    /// network (see [`crate::stages`]).
    pub fn stages(&self) -> &Stages {
        &self.shared.stages
    }

    /// The current snapshot's file, opened for reading (its metadata with it), if there is
    /// one: what a leader sends and a backup copies. Opened under the lock that replaces
    /// it, so the bytes are the metadata's even if a newer snapshot replaces the file.
    pub fn open_current_snapshot(&self) -> std::io::Result<Option<(Meta, SnapshotFile)>> {
        let current = self.shared.current_snapshot.lock().expect("snapshot lock");
        let Some(meta) = current.clone() else {
            return Ok(None);
        };
        let path = snapshot::current_path(&self.shared.dir);
        let file = std::fs::File::open(&path)?;
        Ok(Some((meta, SnapshotFile::from_std(file, path))))
    }

    /// Restores the data of a snapshot stream (a backup: `GET /v1/cluster/snapshot`) into
    /// this empty state machine, as a node of a new cluster.
    pub fn restore(&self, input: impl std::io::Read) -> std::io::Result<snapshot_io::Restored> {
        snapshot_io::restore(&self.shared, input)
    }

    /// The deadlines of this cluster's leases as this node keeps them.
    pub fn lease_clock(&self) -> &Arc<LeaseClock> {
        &self.shared.lease_clock
    }
}

impl Shared {
    /// Publishes a new applied position after its transaction committed, with the change
    /// sets it captured for the watch hub (`None`: it did not capture) and the latest
    /// revision at which it put a blob or installed a snapshot, if it did.
    pub(super) fn publish(
        &self,
        applied: Applied,
        captured: Option<Vec<ChangeSet>>,
        blobs_changed: Option<u64>,
    ) {
        self.recent.extend(captured);
        if let Some(revision) = blobs_changed {
            // Before the revision moves: whoever sees the revision sees this too.
            self.blobs_changed_at.fetch_max(revision, Ordering::Release);
        }
        self.revision.store(applied.revision, Ordering::Release);
        self.applied_index
            .store(applied.last.map_or(0, |l| l.index), Ordering::Release);
        self.revision_tx.send_replace(applied.revision);
        *self.applied.lock().expect("applied lock") = applied;
    }
}

/// Applies `entries` in one transaction, moving `applied` along, pushing what they did
/// to leases to `events`, when `captured` is `Some`, their change sets to it, and setting
/// `blob_put` to the latest revision that put a value kept as a blob.
fn apply_batch(
    conn: &mut Connection,
    entries: &[Entry],
    applied: &mut Applied,
    retention: &FeedRetention,
    events: &mut Vec<LeaseEvent>,
    captured: &mut Option<Vec<ChangeSet>>,
    blob_put: &mut Option<u64>,
) -> rusqlite::Result<Vec<ProposalResults>> {
    let tx = conn.transaction()?;
    // What the database holds: only what the entries move is written back.
    let before = Applied {
        membership: Membership::default(),
        ..applied.clone()
    };
    let mut membership_changed = false;
    let mut results = Vec::with_capacity(entries.len());
    for entry in entries {
        let mut entry_results = ProposalResults::default();
        match &entry.payload {
            EntryPayload::Blank => {}
            EntryPayload::Normal(proposal) => {
                applied.time_ms = applied.time_ms.max(proposal.time_ms);
                for command in &proposal.commands {
                    let next = applied.revision + 1;
                    let mut feed =
                        FeedWriter::new(&tx, next, applied.time_ms).capturing(captured.is_some());
                    let outcome = apply_command(&tx, &mut feed, next, command, events)?;
                    if feed.changed() {
                        applied.revision = next;
                    }
                    if feed.put_a_blob() {
                        *blob_put = Some(next);
                    }
                    if let (Some(sets), Some(set)) = (captured.as_mut(), feed.into_captured()) {
                        sets.push(set);
                    }
                    entry_results.results.push(WriteResult {
                        revision: applied.revision,
                        outcome,
                    });
                }
                applied.feed_compacted = feed::compact(
                    &tx,
                    retention,
                    applied.revision,
                    applied.time_ms,
                    applied.feed_compacted,
                )?;
            }
            EntryPayload::Membership(m) => {
                applied.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                membership_changed = true;
            }
        }
        results.push(entry_results);
    }
    applied.last = entries.last().map(|e| e.log_id);
    applied.write_changed(Some(&before), membership_changed, &tx)?;
    tx.commit()?;
    Ok(results)
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), StorageError> {
        let applied = self.shared.applied.lock().expect("applied lock");
        Ok((applied.last, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ProposalResults>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let shared = self.shared.clone();
        let started = std::time::Instant::now();
        let inline = applies_inline(&entries);
        let run = move || {
            let mut applied = shared.applied.lock().expect("applied lock").clone();
            let mut conn = shared.writer.lock().expect("writer lock");
            let mut events = Vec::new();
            let mut captured = shared.recent.capturing().then(Vec::new);
            let mut blob_put = None;
            let results = apply_batch(
                &mut conn,
                &entries,
                &mut applied,
                &shared.retention,
                &mut events,
                &mut captured,
                &mut blob_put,
            )
            .map_err(|e| StorageIOError::write_state_machine(&e))?;
            shared.lease_clock.apply(&events);
            shared.publish(applied, captured, blob_put);
            Ok(results)
        };
        let results = if inline {
            run()
        } else {
            tokio::task::spawn_blocking(run)
                .await
                .map_err(|e| StorageIOError::write_state_machine(&io_err(e)))?
        };
        self.shared.stages.observe(Stage::Apply, started.elapsed());
        results
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFile>, StorageError> {
        let seq = self.shared.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let file = SnapshotFile::create_incoming(&self.shared.dir, seq)
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<SnapshotFile>,
    ) -> Result<(), StorageError> {
        let sig = meta.signature();
        let failed = |e: std::io::Error| StorageIOError::write_snapshot(Some(sig.clone()), &e);
        let path = snapshot.finish_receiving().await.map_err(failed)?;
        let shared = self.shared.clone();
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || {
            let installed = snapshot_io::install(&shared, &meta, &path);
            if installed.is_err() {
                // Nothing of it was applied; the bytes are of no further use.
                let _ = std::fs::remove_file(&path);
            }
            installed
        })
        .await
        .map_err(|e| failed(io_err(e)))?
        .map_err(|e| failed(e).into())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let current = self
            .open_current_snapshot()
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(current.map(|(meta, file)| Snapshot {
            meta,
            snapshot: Box::new(file),
        }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let shared = self.shared.clone();
        let number = self.shared.builds_started.fetch_add(1, Ordering::AcqRel) + 1;
        let built = snapshot_io::on_low_priority_thread("aspen-snapshot", move || {
            snapshot_io::build(&shared)
        })
        .await;
        self.shared
            .builds_done
            .send_modify(|done| *done = (*done).max(number));
        let (meta, file) = built.map_err(|e| StorageIOError::read_state_machine(&e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}
