//! Building and installing snapshots of the state machine, one record at a time: every
//! key, the kept part of the change feed, the leases and the applied position, read from
//! one consistent view.
//!
//! A snapshot is built only from state that is on disk (applies are not fsynced; see the
//! state machine's docs): the builder pins its read transaction, then fsyncs `state.db`
//! and its WAL before reading. It runs on a thread of its own at a lower CPU priority
//! ([`BUILDER_NICE`]), so a node keeps serving while it reads every row. An installed
//! snapshot replaces the keys, the leases and the feed in one transaction, which is
//! fsynced before the snapshot file becomes the current one; a stream that turns out to be
//! damaged partway rolls the transaction back and changes nothing.

use std::io::{BufReader, BufWriter};
use std::path::Path;
use std::sync::atomic::Ordering;

use rusqlite::{params, Transaction};

use super::snapshot::stream::{Header, Item, KeyRecord, LeaseRecord, StreamReader, StreamWriter};
use super::snapshot::{self, Meta};
use super::state_machine::{io_err, Applied, Shared};
use super::{feed, leases};

/// Bytes buffered between SQLite and the snapshot file, each way.
const FILE_BUFFER_BYTES: usize = 1024 * 1024;

/// The nice value the builder thread runs at: it reads every row of the state, so on a
/// busy node it would otherwise take CPU from the requests being served. A lower priority
/// makes it yield to them and use what they leave; it still finishes on an idle node at
/// full speed. (Linux: a thread's nice value is its own.)
pub const BUILDER_NICE: i32 = 10;

/// Installs the snapshot stream at `path` as the whole state at `meta`; on success
/// `path` has become the current snapshot.
pub(super) fn install(shared: &Shared, meta: &Meta, path: &Path) -> std::io::Result<()> {
    let input = BufReader::with_capacity(FILE_BUFFER_BYTES, std::fs::File::open(path)?);
    let mut reader = StreamReader::open(input)?;
    if reader.meta() != meta {
        return Err(io_err(format!(
            "the received snapshot's bytes are of snapshot {}, not {} as announced",
            reader.meta().snapshot_id,
            meta.snapshot_id
        )));
    }
    let header = reader.header();
    let applied = Applied {
        last: meta.last_log_id,
        membership: meta.last_membership.clone(),
        revision: header.revision,
        time_ms: header.time_ms,
        feed_compacted: header.feed_compacted,
    };
    let mut lease_list = Vec::new();
    {
        let mut conn = shared.writer.lock().expect("writer lock");
        let tx = conn.transaction().map_err(io_err)?;
        replace_state(&tx, &mut reader, &mut lease_list)?;
        applied.write(&tx).map_err(io_err)?;
        tx.commit().map_err(io_err)?;
    }
    sync_db_files(&shared.db_path)?;
    {
        let mut current = shared.current_snapshot.lock().expect("snapshot lock");
        snapshot::make_current(&shared.dir, path, meta, &mut current)?;
    }
    shared.lease_clock.reload(&lease_list);
    let revision = applied.revision;
    shared.publish(applied, None, Some(revision));
    Ok(())
}

/// What [`restore`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// The cluster revision the data had reached; the new cluster goes on from it.
    pub revision: u64,
    /// Records restored.
    pub counts: super::snapshot::stream::Counts,
}

/// Writes the data of the snapshot stream `input` into the empty state machine of a
/// node of a new cluster: its keys, leases and change feed, at the snapshot's revision,
/// with no log position and no membership (the new cluster's `init` makes those). Refused
/// when the state machine holds anything.
pub(super) fn restore(shared: &Shared, input: impl std::io::Read) -> std::io::Result<Restored> {
    let mut reader = StreamReader::open(BufReader::with_capacity(FILE_BUFFER_BYTES, input))?;
    let header = reader.header();
    let applied = Applied {
        revision: header.revision,
        time_ms: header.time_ms,
        feed_compacted: header.feed_compacted,
        ..Applied::default()
    };
    let mut lease_list = Vec::new();
    {
        let mut conn = shared.writer.lock().expect("writer lock");
        let tx = conn.transaction().map_err(io_err)?;
        let now = Applied::read(&tx)?;
        let keys: i64 = tx
            .query_row("SELECT count(*) FROM kv", [], |r| r.get(0))
            .map_err(io_err)?;
        if now != Applied::default() || keys > 0 {
            return Err(io_err(format!(
                "{} already holds data (revision {}, {keys} keys): restore into an empty data dir",
                shared.dir.display(),
                now.revision
            )));
        }
        replace_state(&tx, &mut reader, &mut lease_list)?;
        applied.write(&tx).map_err(io_err)?;
        tx.commit().map_err(io_err)?;
    }
    sync_db_files(&shared.db_path)?;
    shared.lease_clock.reload(&lease_list);
    let revision = applied.revision;
    shared.publish(applied, None, Some(revision));
    Ok(Restored {
        revision: header.revision,
        counts: reader.counts(),
    })
}

/// Replaces every key, change set and lease inside `tx` with what `reader` holds.
fn replace_state<R: std::io::Read>(
    tx: &Transaction,
    reader: &mut StreamReader<R>,
    lease_list: &mut Vec<(u64, u64)>,
) -> std::io::Result<()> {
    tx.execute("DELETE FROM kv", []).map_err(io_err)?;
    tx.execute("DELETE FROM leases", []).map_err(io_err)?;
    feed::clear(tx).map_err(io_err)?;
    let mut insert_key = tx
        .prepare_cached(
            "INSERT INTO kv (key, value, create_revision, mod_revision, version, lease,
                 blob_hash, blob_size)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .map_err(io_err)?;
    let mut insert_lease = tx
        .prepare_cached("INSERT INTO leases (id, ttl_ms) VALUES (?1, ?2)")
        .map_err(io_err)?;
    while let Some(item) = reader.next_item()? {
        match item {
            Item::Key(k) => insert_key
                .execute(params![
                    k.key.as_bytes(),
                    k.value,
                    k.create_revision as i64,
                    k.mod_revision as i64,
                    k.version as i64,
                    k.lease.map(|l| l as i64),
                    k.blob.as_ref().map(|b| &b.hash[..]),
                    k.blob.as_ref().map(|b| b.size as i64),
                ])
                .map(|_| ()),
            Item::Change(set) => feed::insert_set(tx, &set),
            Item::Lease(l) => {
                lease_list.push((l.id, l.ttl_ms));
                insert_lease
                    .execute(params![l.id as i64, l.ttl_ms as i64])
                    .map(|_| ())
            }
        }
        .map_err(io_err)?;
    }
    Ok(())
}

/// Fsyncs the database file and its WAL, making every committed transaction durable.
fn sync_db_files(db_path: &Path) -> std::io::Result<()> {
    let mut wal = db_path.as_os_str().to_owned();
    wal.push("-wal");
    for path in [db_path.to_path_buf(), std::path::PathBuf::from(wal)] {
        match std::fs::File::open(&path) {
            Ok(file) => file.sync_all()?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Builds a snapshot of the durable applied state and makes it the current one (unless a
/// newer one got there first). Gives back its metadata and the file opened for reading.
pub(super) fn build(shared: &Shared) -> std::io::Result<(Meta, snapshot::SnapshotFile)> {
    let mut conn = super::open_db(&shared.db_path).map_err(io_err)?;
    let tx = conn.transaction().map_err(io_err)?;
    // The first read pins the transaction's view; make that view durable before using it.
    let applied = Applied::read(&tx)?;
    sync_db_files(&shared.db_path)?;
    let seq = shared.snapshot_seq.fetch_add(1, Ordering::Relaxed);
    let snapshot_id = match applied.last {
        Some(l) => format!("{}-{}-{seq}", l.leader_id.term, l.index),
        None => format!("0-0-{seq}"),
    };
    let meta = Meta {
        last_log_id: applied.last,
        last_membership: applied.membership.clone(),
        snapshot_id,
    };
    let header = Header {
        revision: applied.revision,
        time_ms: applied.time_ms,
        feed_compacted: applied.feed_compacted,
    };
    let path = snapshot::building_path(&shared.dir, seq);
    let written = write_stream(&tx, &meta, header, &path);
    drop(tx);
    if let Err(e) = written {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    // Opened before the rename: the handle reads these bytes even if a newer snapshot
    // replaces the file at once.
    let file = std::fs::File::open(&path)?;
    {
        let mut current = shared.current_snapshot.lock().expect("snapshot lock");
        snapshot::make_current(&shared.dir, &path, &meta, &mut current)?;
    }
    Ok((
        meta,
        snapshot::SnapshotFile::from_std(file, snapshot::current_path(&shared.dir)),
    ))
}

/// Writes the snapshot stream of the state `tx` sees to a new file at `path`, fsynced.
fn write_stream(tx: &Transaction, meta: &Meta, header: Header, path: &Path) -> std::io::Result<()> {
    let out = BufWriter::with_capacity(FILE_BUFFER_BYTES, std::fs::File::create(path)?);
    let mut writer = StreamWriter::start(out, meta, header)?;
    {
        let mut stmt = tx
            .prepare(
                "SELECT key, lease, value, create_revision, mod_revision, version, blob_hash,
                     blob_size FROM kv ORDER BY key",
            )
            .map_err(io_err)?;
        let mut rows = stmt.query([]).map_err(io_err)?;
        while let Some(row) = rows.next().map_err(io_err)? {
            let key: Vec<u8> = row.get(0).map_err(io_err)?;
            let key = String::from_utf8(key).map_err(io_err)?;
            let lease = row
                .get::<_, Option<i64>>(1)
                .map_err(io_err)?
                .map(|l| l as u64);
            // The columns from the third on are `apply::ENTRY_COLUMNS`.
            let entry = super::apply::entry_from_row(key, row, 2).map_err(io_err)?;
            writer.key(KeyRecord {
                key: entry.key,
                value: entry.value,
                create_revision: entry.create_revision,
                mod_revision: entry.mod_revision,
                version: entry.version,
                lease,
                blob: entry.blob,
            })?;
        }
    }
    feed::for_each(tx, |set| writer.change(set))?;
    for (id, ttl_ms) in leases::all(tx).map_err(io_err)? {
        writer.lease(LeaseRecord { id, ttl_ms })?;
    }
    let file = writer.finish()?.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()
}

/// Runs `f` on a new thread named `name` at nice [`BUILDER_NICE`], and waits for it
/// without blocking the async runtime.
pub(super) async fn on_low_priority_thread<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            lower_priority();
            let _ = tx.send(f());
        })?;
    rx.await
        .map_err(|_| io_err("the snapshot thread ended without an answer (it panicked)"))?
}

/// Lowers the calling thread's CPU priority to [`BUILDER_NICE`]; a failure only costs
/// speed, so it is logged, not returned.
#[cfg(target_os = "linux")]
fn lower_priority() {
    // SAFETY: gettid and setpriority take no pointers; on Linux `PRIO_PROCESS` with a
    // thread id sets that one thread's nice value.
    let result = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, BUILDER_NICE)
    };
    if result != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "could not lower the snapshot builder's priority"
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}
