//! The state machine: every key with its revisions, in `state.db`.
//!
//! openraft applies committed entries in batches; each batch is one SQLite transaction
//! that also records the last applied log id, the membership and the cluster revision,
//! so after a crash the table and the applied position always agree.
//!
//! The cluster revision counts changes, as etcd's does: each command that changes the key
//! space takes the next revision, and one log entry may carry many commands (a leader
//! batches concurrent writes into one proposal), so revisions are not log indexes. Blank
//! and membership entries, failed preconditions and deletes of absent keys take none. Reads use a small pool of separate connections
//! and see only committed batches (WAL snapshot isolation).
//!
//! Applies are not fsynced (`synchronous=NORMAL`): the log is the durable record, and after
//! a power loss openraft re-applies committed entries past the recovered applied position.
//! That is safe only while the log still holds those entries, and the log is purged up to
//! the latest snapshot. So a snapshot is built only from state that is on disk: the
//! builder pins its read transaction, then fsyncs `state.db` and its WAL before reading.
//! An installed snapshot is fsynced the same way before it is recorded. Skipping the
//! per-apply fsync measured about 30% more puts/s with 64 clients (docs/BENCHMARKS.md).

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aspen_api::limits::MAX_SCAN_PAGE_BYTES;
use aspen_api::{KvEntry, ScanPage, WriteResult};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder, SnapshotMeta, StorageIOError, StoredMembership};
use rusqlite::{params, Connection, OptionalExtension};

use super::apply::{apply_command, changed_state, get};
use super::format::{self, STATE_META};
use super::snapshot::{self, SnapshotContent};
use crate::raft_types::{
    Entry, LogId, MemberNode, NodeId, ProposalResults, StorageError, TypeConfig,
};

/// Read connections kept open for reuse. Readers run at most this many at once (see
/// `KvService`), so under load no read opens a connection: opening one parses the schema
/// and re-prepares statements, which showed in profiles of bursts of batched reads.
pub const MAX_IDLE_READERS: usize = 16;

type Membership = StoredMembership<NodeId, MemberNode>;

/// The state machine handed to openraft; clones share it (the snapshot builder is one).
#[derive(Clone)]
pub struct StateMachine {
    shared: Arc<Shared>,
}

struct Shared {
    dir: PathBuf,
    db_path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    applied: Mutex<(Option<LogId>, Membership)>,
    applied_index: AtomicU64,
    /// The cluster revision the applied state has reached.
    revision: AtomicU64,
    snapshot_seq: AtomicU64,
    /// Read connections opened so far (a pool miss each).
    readers_opened: AtomicU64,
}

/// A read of the state machine failed (a storage fault).
#[derive(Debug, thiserror::Error)]
#[error("reading the state machine failed: {0}")]
pub struct ReadError(#[from] rusqlite::Error);

fn io_err(e: impl ToString) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    STATE_META.encode(value)
}

fn read_meta<T: serde::de::DeserializeOwned + Default>(
    conn: &Connection,
    name: &str,
) -> std::io::Result<T> {
    let bytes: Option<Vec<u8>> = conn
        .query_row("SELECT value FROM sm_meta WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .optional()
        .map_err(io_err)?;
    match bytes {
        Some(b) => format::decode(STATE_META, &b),
        None => Ok(T::default()),
    }
}

fn write_applied(
    conn: &Connection,
    last: &Option<LogId>,
    membership: &Membership,
    revision: u64,
) -> rusqlite::Result<()> {
    let mut stmt =
        conn.prepare_cached("INSERT OR REPLACE INTO sm_meta (name, value) VALUES (?1, ?2)")?;
    stmt.execute(params!["last_applied", encode(last)])?;
    stmt.execute(params!["membership", encode(membership)])?;
    stmt.execute(params!["revision", encode(&revision)])?;
    Ok(())
}

impl StateMachine {
    /// Opens the state machine in `dir` (`state.db` and `snapshot.bin`).
    pub fn open(dir: &Path) -> Result<StateMachine, StorageError> {
        let db_path = dir.join("state.db");
        let err = |e: rusqlite::Error| StorageIOError::read_state_machine(&e);
        let conn = super::open_db(&db_path).map_err(err)?;
        format::check_schema(&conn, &db_path)
            .map_err(|e| StorageIOError::read_state_machine(&e))?;
        // Not fsynced per apply: see the module docs for why that is safe.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS kv (key BLOB PRIMARY KEY, value BLOB NOT NULL,
                 create_revision INTEGER NOT NULL, mod_revision INTEGER NOT NULL,
                 version INTEGER NOT NULL) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS sm_meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);",
        )
        .map_err(err)?;
        let ioerr = |e: std::io::Error| StorageIOError::read_state_machine(&e);
        let last: Option<LogId> = read_meta(&conn, "last_applied").map_err(ioerr)?;
        let membership: Membership = read_meta(&conn, "membership").map_err(ioerr)?;
        let revision: u64 = read_meta(&conn, "revision").map_err(ioerr)?;
        Ok(StateMachine {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                db_path,
                writer: Mutex::new(conn),
                readers: Mutex::new(Vec::new()),
                applied_index: AtomicU64::new(last.map_or(0, |l| l.index)),
                applied: Mutex::new((last, membership)),
                revision: AtomicU64::new(revision),
                snapshot_seq: AtomicU64::new(0),
                readers_opened: AtomicU64::new(0),
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
}

/// A read connection lent by [`StateMachine::read`].
pub struct Reader<'a> {
    conn: &'a Connection,
}

impl Reader<'_> {
    /// Reads one key from the local copy.
    pub fn get(&self, key: &str) -> Result<Option<KvEntry>, ReadError> {
        Ok(get(self.conn, key)?)
    }

    /// Reads one page of keys under `prefix`, strictly after `after`, from the local copy.
    pub fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ScanPage, ReadError> {
        Ok(scan(self.conn, prefix, after, limit)?)
    }
}

/// The smallest byte string greater than every string starting with `prefix`, if any.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn scan(
    conn: &Connection,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> rusqlite::Result<ScanPage> {
    let lower: Vec<u8> = match after {
        Some(a) if a.as_bytes() >= prefix.as_bytes() => {
            let mut l = a.as_bytes().to_vec();
            l.push(0);
            l
        }
        _ => prefix.as_bytes().to_vec(),
    };
    let upper = prefix_end(prefix.as_bytes());
    let sql = if upper.is_some() {
        "SELECT key, value, create_revision, mod_revision, version FROM kv
         WHERE key >= ?1 AND key < ?2 ORDER BY key LIMIT ?3"
    } else {
        "SELECT key, value, create_revision, mod_revision, version FROM kv
         WHERE key >= ?1 AND ?2 IS NULL ORDER BY key LIMIT ?3"
    };
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params![lower, upper, (limit + 1) as i64])?;
    let mut page = ScanPage {
        kvs: Vec::new(),
        more: false,
    };
    let mut bytes = 0usize;
    while let Some(row) = rows.next()? {
        if page.kvs.len() == limit || (bytes >= MAX_SCAN_PAGE_BYTES && !page.kvs.is_empty()) {
            page.more = true;
            break;
        }
        let key: Vec<u8> = row.get(0)?;
        let entry = KvEntry {
            key: String::from_utf8(key)
                .map_err(|e| rusqlite::Error::Utf8Error(0, e.utf8_error()))?,
            value: row.get(1)?,
            create_revision: row.get::<_, i64>(2)? as u64,
            mod_revision: row.get::<_, i64>(3)? as u64,
            version: row.get::<_, i64>(4)? as u64,
        };
        bytes += entry.value.len() + entry.key.len();
        page.kvs.push(entry);
    }
    Ok(page)
}

/// Applies `entries` in one transaction, moving `membership` and `revision` along.
fn apply_batch(
    conn: &mut Connection,
    entries: &[Entry],
    membership: &mut Membership,
    revision: &mut u64,
) -> rusqlite::Result<Vec<ProposalResults>> {
    let tx = conn.transaction()?;
    let mut results = Vec::with_capacity(entries.len());
    for entry in entries {
        let mut entry_results = ProposalResults::default();
        match &entry.payload {
            EntryPayload::Blank => {}
            EntryPayload::Normal(proposal) => {
                for command in &proposal.commands {
                    let next = *revision + 1;
                    let outcome = apply_command(&tx, next, command)?;
                    if changed_state(command, &outcome) {
                        *revision = next;
                    }
                    entry_results.results.push(WriteResult {
                        revision: *revision,
                        outcome,
                    });
                }
            }
            EntryPayload::Membership(m) => {
                *membership = StoredMembership::new(Some(entry.log_id), m.clone());
            }
        }
        results.push(entry_results);
    }
    let last = entries.last().map(|e| e.log_id);
    write_applied(&tx, &last, membership, *revision)?;
    tx.commit()?;
    Ok(results)
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), StorageError> {
        Ok(self.shared.applied.lock().expect("applied lock").clone())
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
        tokio::task::spawn_blocking(move || {
            let mut membership = shared.applied.lock().expect("applied lock").1.clone();
            let mut revision = shared.revision.load(Ordering::Acquire);
            let mut conn = shared.writer.lock().expect("writer lock");
            let results = apply_batch(&mut conn, &entries, &mut membership, &mut revision)
                .map_err(|e| StorageIOError::write_state_machine(&e))?;
            shared.revision.store(revision, Ordering::Release);
            let last = entries.last().map(|e| e.log_id);
            *shared.applied.lock().expect("applied lock") = (last, membership);
            shared
                .applied_index
                .store(last.map_or(0, |l| l.index), Ordering::Release);
            Ok(results)
        })
        .await
        .map_err(|e| StorageIOError::write_state_machine(&io_err(e)))?
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, MemberNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let shared = self.shared.clone();
        let meta = meta.clone();
        let sig = meta.signature();
        tokio::task::spawn_blocking(move || install(&shared, &meta, &data))
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(sig.clone()), &io_err(e)))?
            .map_err(|e| StorageIOError::write_snapshot(Some(sig), &e).into())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let loaded = snapshot::load(&self.shared.dir)
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(loaded.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

fn install(
    shared: &Shared,
    meta: &SnapshotMeta<NodeId, MemberNode>,
    data: &[u8],
) -> std::io::Result<()> {
    let content = snapshot::decode_content(data)?;
    {
        let mut conn = shared.writer.lock().expect("writer lock");
        let tx = conn.transaction().map_err(io_err)?;
        tx.execute("DELETE FROM kv", []).map_err(io_err)?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO kv (key, value, create_revision, mod_revision, version)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(io_err)?;
            for e in &content.entries {
                insert
                    .execute(params![
                        e.key.as_bytes(),
                        e.value,
                        e.create_revision as i64,
                        e.mod_revision as i64,
                        e.version as i64
                    ])
                    .map_err(io_err)?;
            }
        }
        write_applied(
            &tx,
            &meta.last_log_id,
            &meta.last_membership,
            content.revision,
        )
        .map_err(io_err)?;
        tx.commit().map_err(io_err)?;
    }
    sync_db_files(&shared.db_path)?;
    snapshot::save(&shared.dir, meta, data)?;
    *shared.applied.lock().expect("applied lock") =
        (meta.last_log_id, meta.last_membership.clone());
    shared.revision.store(content.revision, Ordering::Release);
    shared
        .applied_index
        .store(meta.last_log_id.map_or(0, |l| l.index), Ordering::Release);
    Ok(())
}

/// Fsyncs the database file and its WAL, making every committed transaction durable.
fn sync_db_files(db_path: &Path) -> std::io::Result<()> {
    let mut wal = db_path.as_os_str().to_owned();
    wal.push("-wal");
    for path in [db_path.to_path_buf(), PathBuf::from(wal)] {
        match std::fs::File::open(&path) {
            Ok(file) => file.sync_all()?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn build(shared: &Shared) -> std::io::Result<(SnapshotMeta<NodeId, MemberNode>, Vec<u8>)> {
    let mut conn = super::open_db(&shared.db_path).map_err(io_err)?;
    let tx = conn.transaction().map_err(io_err)?;
    // The first read pins the transaction's view; make that view durable before using it.
    let last: Option<LogId> = read_meta(&tx, "last_applied")?;
    let membership: Membership = read_meta(&tx, "membership")?;
    let revision: u64 = read_meta(&tx, "revision")?;
    sync_db_files(&shared.db_path)?;
    let mut entries = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = scan(&tx, "", after.as_deref(), 10_000).map_err(io_err)?;
        after = page.kvs.last().map(|e| e.key.clone());
        entries.extend(page.kvs);
        if !page.more {
            break;
        }
    }
    drop(tx);
    let seq = shared.snapshot_seq.fetch_add(1, Ordering::Relaxed);
    let snapshot_id = match last {
        Some(l) => format!("{}-{}-{seq}", l.leader_id.term, l.index),
        None => format!("0-0-{seq}"),
    };
    let meta = SnapshotMeta {
        last_log_id: last,
        last_membership: membership,
        snapshot_id,
    };
    let data = snapshot::encode_content(&SnapshotContent { revision, entries });
    snapshot::save(&shared.dir, &meta, &data)?;
    Ok((meta, data))
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let shared = self.shared.clone();
        let (meta, data) = tokio::task::spawn_blocking(move || build(&shared))
            .await
            .map_err(|e| StorageIOError::read_state_machine(&io_err(e)))?
            .map_err(|e| StorageIOError::read_state_machine(&e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}
