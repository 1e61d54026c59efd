//! The Raft log and vote in SQLite, with group commit.
//!
//! openraft hands us appends one call at a time and wants them acknowledged only once on
//! disk. A dedicated writer thread owns the database connection: it takes every pending
//! operation off its queue, writes them all in one transaction (one fsync), then
//! acknowledges each. Under load many client writes therefore share one fsync.
//!
//! Appended entries are readable at once: they go into an in-memory tail cache before
//! they are queued, and the cache keeps the most recent entries after they are durable so
//! replication reads rarely touch SQLite. Truncate, purge and vote saves wait for the
//! writer, which keeps every write in the order openraft issued it. The committed log id
//! is kept in memory and written with the next transaction, never in one of its own.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{RaftLogReader, StorageIOError, Vote};
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

use super::format::{self, LOG_ENTRY, LOG_META};
use crate::raft_types::{Entry, LogId, NodeId, StorageError, TypeConfig};
use crate::stages::{Stage, Stages};

/// Most recent entries kept in memory after they are durable, for replication reads.
const CACHE_MAX_ENTRIES: usize = 4096;
/// Most bytes of encoded entries kept in memory after they are durable.
const CACHE_MAX_BYTES: usize = 64 * 1024 * 1024;
/// Most operations written in one transaction; bounds the latency of a batch.
const MAX_OPS_PER_TRANSACTION: usize = 1024;
/// Most bytes of entries in one replication batch (AppendEntries message). openraft
/// bounds a batch by entry count only; with values up to 1 MiB a count bound alone could
/// build a message too large to send within the RPC timeout.
pub const MAX_REPLICATION_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Operations queued for the writer before `append` waits: back-pressure on the leader.
const WRITE_QUEUE_CAPACITY: usize = 4096;

/// The log store handed to openraft. Cloning shares the same store.
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<LogMemory>,
    queue: mpsc::Sender<WriteOp>,
    /// Connection for reads of entries no longer in the cache.
    reader: Mutex<Connection>,
    /// The node's write stage histograms (`log_queue`, `log_write`).
    stages: Stages,
}

/// What the store knows in memory; SQLite holds the same, durably.
#[derive(Default)]
struct LogMemory {
    /// Tail of the log: every entry not yet durable, plus recent durable ones.
    cache: BTreeMap<u64, (Entry, usize)>,
    cache_bytes: usize,
    /// Highest index known to be on disk.
    durable_upto: u64,
    last_log_id: Option<LogId>,
    last_purged: Option<LogId>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId>,
}

enum WriteOp {
    Append {
        rows: Vec<(u64, Vec<u8>)>,
        callback: LogFlushed<TypeConfig>,
        /// When it was queued (the `log_queue` stage).
        queued: Instant,
    },
    Truncate {
        from: u64,
        done: oneshot::Sender<Result<(), String>>,
    },
    Purge {
        upto: LogId,
        done: oneshot::Sender<Result<(), String>>,
    },
    Meta {
        name: &'static str,
        value: Vec<u8>,
        done: oneshot::Sender<Result<(), String>>,
    },
}

fn io_err(e: impl ToString) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

fn encode_meta<T: serde::Serialize>(value: &T) -> Vec<u8> {
    LOG_META.encode(value)
}

fn decode_meta<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, std::io::Error> {
    format::decode(LOG_META, bytes)
}

fn encode_entry(entry: &Entry) -> Vec<u8> {
    LOG_ENTRY.encode(entry)
}

fn decode_entry(bytes: &[u8]) -> Result<Entry, std::io::Error> {
    format::decode(LOG_ENTRY, bytes)
}

impl LogStore {
    /// Opens the log at `path` (created if missing) and starts its writer thread.
    pub fn open(path: &Path) -> Result<LogStore, StorageError> {
        LogStore::open_with(path, Stages::default())
    }

    /// [`LogStore::open`], timing its stages into `stages`.
    pub fn open_with(path: &Path, stages: Stages) -> Result<LogStore, StorageError> {
        let read_err = |e: rusqlite::Error| StorageIOError::read_logs(&e);
        let conn = super::open_db(path).map_err(read_err)?;
        format::check_schema(&conn, path).map_err(|e| StorageIOError::read_logs(&e))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS log (idx INTEGER PRIMARY KEY, entry BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);",
        )
        .map_err(read_err)?;
        let memory = load_memory(&conn).map_err(|e| StorageIOError::read_logs(&e))?;
        let committed_on_disk = memory.committed;
        let reader = super::open_db(path).map_err(read_err)?;
        let (queue, rx) = mpsc::channel(WRITE_QUEUE_CAPACITY);
        let shared = Arc::new(Shared {
            state: Mutex::new(memory),
            queue,
            reader: Mutex::new(reader),
            stages,
        });
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("aspen-log-writer".into())
            .spawn(move || writer_loop(conn, rx, weak, committed_on_disk))
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(LogStore { shared })
    }

    async fn submit(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), String>>) -> WriteOp,
    ) -> Result<(), std::io::Error> {
        let (tx, rx) = oneshot::channel();
        self.shared
            .queue
            .send(make(tx))
            .await
            .map_err(|_| io_err("log writer stopped"))?;
        rx.await
            .map_err(|_| io_err("log writer stopped"))?
            .map_err(io_err)
    }
}

fn load_memory(conn: &Connection) -> Result<LogMemory, std::io::Error> {
    let meta = |name: &str| -> Result<Option<Vec<u8>>, std::io::Error> {
        conn.query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .optional()
        .map_err(io_err)
    };
    let mut memory = LogMemory {
        vote: meta("vote")?.map(|b| decode_meta(&b)).transpose()?,
        last_purged: meta("last_purged")?.map(|b| decode_meta(&b)).transpose()?,
        // Saved as the `Option` openraft hands over (see `save_committed`).
        committed: meta("committed")?
            .map(|b| decode_meta::<Option<LogId>>(&b))
            .transpose()?
            .flatten(),
        ..Default::default()
    };
    let last: Option<Vec<u8>> = conn
        .query_row("SELECT entry FROM log ORDER BY idx DESC LIMIT 1", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(io_err)?;
    memory.last_log_id = match last {
        Some(bytes) => Some(decode_entry(&bytes)?.log_id),
        None => memory.last_purged,
    };
    memory.durable_upto = memory.last_log_id.map_or(0, |l| l.index);
    Ok(memory)
}

fn writer_loop(
    mut conn: Connection,
    mut rx: mpsc::Receiver<WriteOp>,
    shared: std::sync::Weak<Shared>,
    // The committed log id last written: a newer one rides along with the next batch.
    mut committed_written: Option<LogId>,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut ops = vec![first];
        while ops.len() < MAX_OPS_PER_TRANSACTION {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let committed = shared.state.lock().expect("log state lock").committed;
        let also = (committed != committed_written).then_some(committed);
        let started = Instant::now();
        for op in &ops {
            if let WriteOp::Append { queued, .. } = op {
                shared
                    .stages
                    .observe(Stage::LogQueue, started.duration_since(*queued));
            }
        }
        let result = write_batch(&mut conn, &ops, also).map_err(|e| e.to_string());
        shared.stages.observe(Stage::LogWrite, started.elapsed());
        if result.is_ok() {
            committed_written = committed;
            shared
                .state
                .lock()
                .expect("log state lock")
                .after_commit(&ops);
        }
        for op in ops {
            complete(op, result.clone());
        }
    }
}

/// Writes `ops` in one transaction (one fsync), with the committed log id `committed` when
/// it changed since the last batch.
fn write_batch(
    conn: &mut Connection,
    ops: &[WriteOp],
    committed: Option<Option<LogId>>,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut insert =
            tx.prepare_cached("INSERT OR REPLACE INTO log (idx, entry) VALUES (?1, ?2)")?;
        let mut put_meta =
            tx.prepare_cached("INSERT OR REPLACE INTO meta (name, value) VALUES (?1, ?2)")?;
        for op in ops {
            match op {
                WriteOp::Append { rows, .. } => {
                    for (idx, bytes) in rows {
                        insert.execute(params![*idx as i64, bytes])?;
                    }
                }
                WriteOp::Truncate { from, .. } => {
                    tx.execute("DELETE FROM log WHERE idx >= ?1", [*from as i64])?;
                }
                WriteOp::Purge { upto, .. } => {
                    tx.execute("DELETE FROM log WHERE idx <= ?1", [upto.index as i64])?;
                    put_meta.execute(params!["last_purged", encode_meta(upto)])?;
                }
                WriteOp::Meta { name, value, .. } => {
                    put_meta.execute(params![name, value])?;
                }
            }
        }
        if let Some(committed) = committed {
            put_meta.execute(params!["committed", encode_meta(&committed)])?;
        }
    }
    tx.commit()
}

fn complete(op: WriteOp, result: Result<(), String>) {
    match op {
        WriteOp::Append { callback, .. } => callback.log_io_completed(result.map_err(io_err)),
        WriteOp::Truncate { done, .. }
        | WriteOp::Purge { done, .. }
        | WriteOp::Meta { done, .. } => {
            let _ = done.send(result);
        }
    }
}

impl LogMemory {
    /// Records what a committed batch made durable, and trims the cache.
    fn after_commit(&mut self, ops: &[WriteOp]) {
        for op in ops {
            match op {
                WriteOp::Append { rows, .. } => {
                    if let Some((last, _)) = rows.last() {
                        self.durable_upto = self.durable_upto.max(*last);
                    }
                }
                WriteOp::Truncate { from, .. } => {
                    self.durable_upto = self.durable_upto.min(from.saturating_sub(1));
                }
                WriteOp::Purge { .. } | WriteOp::Meta { .. } => {}
            }
        }
        while self.cache.len() > CACHE_MAX_ENTRIES || self.cache_bytes > CACHE_MAX_BYTES {
            match self.cache.first_key_value() {
                Some((&idx, _)) if idx <= self.durable_upto => {
                    let (_, (_, size)) = self.cache.pop_first().expect("non-empty");
                    self.cache_bytes -= size;
                }
                _ => break,
            }
        }
    }

    fn remove_cached(&mut self, range: impl RangeBounds<u64>) {
        let keys: Vec<u64> = self.cache.range(range).map(|(k, _)| *k).collect();
        for k in keys {
            if let Some((_, size)) = self.cache.remove(&k) {
                self.cache_bytes -= size;
            }
        }
    }
}

fn range_start(range: &impl RangeBounds<u64>) -> u64 {
    match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s + 1,
        Bound::Unbounded => 0,
    }
}

fn range_end(range: &impl RangeBounds<u64>) -> u64 {
    match range.end_bound() {
        Bound::Included(e) => e.saturating_add(1),
        Bound::Excluded(e) => *e,
        Bound::Unbounded => u64::MAX,
    }
}

impl LogStore {
    /// Entries in `[start, end)` up to [`MAX_REPLICATION_BATCH_BYTES`] (at least one).
    fn read_limited(&self, start: u64, end: u64) -> Result<Vec<Entry>, std::io::Error> {
        let cache_first = {
            let state = self.shared.state.lock().expect("log state lock");
            state.cache.first_key_value().map_or(u64::MAX, |(k, _)| *k)
        };
        let mut out = Vec::new();
        let mut bytes = 0usize;
        if start < end.min(cache_first) {
            out = read_range_limited(
                &self.shared.reader,
                start,
                end.min(cache_first),
                MAX_REPLICATION_BATCH_BYTES,
            )?;
            bytes = out.iter().map(|e| encode_entry(e).len()).sum();
            if out
                .last()
                .is_none_or(|e| e.log_id.index + 1 < end.min(cache_first))
            {
                return Ok(out);
            }
        }
        let from = out.last().map_or(start, |e| e.log_id.index + 1);
        let state = self.shared.state.lock().expect("log state lock");
        for (_, (entry, size)) in state.cache.range(from..end) {
            if !out.is_empty() && bytes + size > MAX_REPLICATION_BATCH_BYTES {
                break;
            }
            bytes += size;
            out.push(entry.clone());
        }
        Ok(out)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        self.read_limited(start, end)
            .map_err(|e| StorageIOError::read_logs(&e).into())
    }

    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = (range_start(&range), range_end(&range));
        if start >= end {
            return Ok(Vec::new());
        }
        let (cached, cache_first) = {
            let state = self.shared.state.lock().expect("log state lock");
            let cached: Vec<Entry> = state
                .cache
                .range(start..end)
                .map(|(_, (e, _))| e.clone())
                .collect();
            (
                cached,
                state.cache.first_key_value().map_or(u64::MAX, |(k, _)| *k),
            )
        };
        let disk_end = end.min(cache_first);
        let mut out = Vec::new();
        if start < disk_end {
            out = read_range(&self.shared.reader, start, disk_end)
                .map_err(|e| StorageIOError::read_logs(&e))?;
        }
        out.extend(cached);
        Ok(out)
    }
}

fn read_range(
    reader: &Mutex<Connection>,
    start: u64,
    end: u64,
) -> Result<Vec<Entry>, std::io::Error> {
    read_range_limited(reader, start, end, usize::MAX)
}

/// Reads entries in `[start, end)` until `max_bytes` of encoded entries (at least one).
fn read_range_limited(
    reader: &Mutex<Connection>,
    start: u64,
    end: u64,
    max_bytes: usize,
) -> Result<Vec<Entry>, std::io::Error> {
    let conn = reader.lock().expect("log reader lock");
    let end = end.min(i64::MAX as u64) as i64;
    let mut stmt = conn
        .prepare_cached("SELECT entry FROM log WHERE idx >= ?1 AND idx < ?2 ORDER BY idx")
        .map_err(io_err)?;
    let rows = stmt
        .query_map(params![start as i64, end], |r| r.get::<_, Vec<u8>>(0))
        .map_err(io_err)?;
    let mut out = Vec::new();
    let mut bytes = 0usize;
    for row in rows {
        let row = row.map_err(io_err)?;
        if !out.is_empty() && bytes + row.len() > max_bytes {
            break;
        }
        bytes += row.len();
        out.push(decode_entry(&row)?);
    }
    Ok(out)
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let state = self.shared.state.lock().expect("log state lock");
        Ok(LogState {
            last_purged_log_id: state.last_purged,
            last_log_id: state.last_log_id.or(state.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let value = encode_meta(vote);
        self.submit(|done| WriteOp::Meta {
            name: "vote",
            value,
            done,
        })
        .await
        .map_err(|e| StorageIOError::write_vote(&e))?;
        self.shared.state.lock().expect("log state lock").vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        Ok(self.shared.state.lock().expect("log state lock").vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Saving the commit index only speeds up a restart (the state machine is durable
        // on its own and knows what it applied), so it costs no transaction of its own:
        // the writer writes it with the next batch of appends, votes or purges. A commit
        // used to be a transaction, and an fsync, of its own on every node, which the
        // next write's append then queued behind.
        self.shared.state.lock().expect("log state lock").committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.shared.state.lock().expect("log state lock").committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut rows = Vec::new();
        {
            let mut state = self.shared.state.lock().expect("log state lock");
            for entry in entries {
                let bytes = encode_entry(&entry);
                let idx = entry.log_id.index;
                state.last_log_id = Some(entry.log_id);
                state.cache_bytes += bytes.len();
                if let Some((_, old)) = state.cache.insert(idx, (entry, bytes.len())) {
                    state.cache_bytes -= old;
                }
                rows.push((idx, bytes));
            }
        }
        self.shared
            .queue
            .send(WriteOp::Append {
                rows,
                callback,
                queued: Instant::now(),
            })
            .await
            .map_err(|e| StorageIOError::write_logs(&io_err(e)))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let from = log_id.index;
        self.submit(|done| WriteOp::Truncate { from, done })
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        let mut state = self.shared.state.lock().expect("log state lock");
        state.remove_cached(from..);
        let below = from.checked_sub(1);
        state.last_log_id = below.and_then(|b| state.cache.get(&b).map(|(e, _)| e.log_id));
        if state.last_log_id.is_none() {
            drop(state);
            let last = match below {
                Some(b) => read_range(&self.shared.reader, b, b + 1)
                    .map_err(|e| StorageIOError::read_logs(&e))?
                    .pop()
                    .map(|e| e.log_id),
                None => None,
            };
            let mut state = self.shared.state.lock().expect("log state lock");
            state.last_log_id = last.or(state.last_purged);
        }
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.submit(|done| WriteOp::Purge { upto: log_id, done })
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        let mut state = self.shared.state.lock().expect("log state lock");
        state.remove_cached(..=log_id.index);
        state.last_purged = Some(log_id);
        if state.last_log_id.is_none_or(|l| l.index < log_id.index) {
            state.last_log_id = Some(log_id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    #[tokio::test]
    async fn the_vote_and_the_committed_log_id_survive_a_reopen_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.db");
        let committed = LogId::new(CommittedLeaderId::new(7, 3), 41);
        let vote = Vote::new(7, 3);
        {
            let mut store = LogStore::open(&path).unwrap();
            store.save_committed(Some(committed)).await.unwrap();
            // The committed id rides with the next transaction: once this returns, both
            // are on disk.
            store.save_vote(&vote).await.unwrap();
        }
        let mut store = LogStore::open(&path).unwrap();
        assert_eq!(store.read_committed().await.unwrap(), Some(committed));
        assert_eq!(store.read_vote().await.unwrap(), Some(vote));
    }

    /// A commit costs no transaction (no fsync) of its own: the committed id is written
    /// with the next one, and read back from memory meanwhile.
    #[tokio::test]
    async fn the_committed_log_id_rides_with_the_next_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.db");
        let on_disk = || {
            let conn = Connection::open(&path).unwrap();
            conn.query_row("SELECT value FROM meta WHERE name = 'committed'", [], |r| {
                r.get::<_, Vec<u8>>(0)
            })
            .optional()
            .unwrap()
            .map(|b| decode_meta::<Option<LogId>>(&b).unwrap())
        };
        let mut store = LogStore::open(&path).unwrap();
        let committed = LogId::new(CommittedLeaderId::new(2, 1), 9);
        store.save_committed(Some(committed)).await.unwrap();
        assert_eq!(store.read_committed().await.unwrap(), Some(committed));
        assert_eq!(on_disk(), None, "a commit wrote a transaction of its own");
        store.save_vote(&Vote::new(2, 1)).await.unwrap();
        assert_eq!(on_disk(), Some(Some(committed)));
    }
}
