//! Building and installing snapshots of the state machine: every key, the kept part of the
//! change feed and the applied position, read from one consistent view.
//!
//! A snapshot is built only from state that is on disk (applies are not fsynced; see the
//! state machine's docs): the builder pins its read transaction, then fsyncs `state.db`
//! and its WAL before reading. An installed snapshot is fsynced the same way before it is
//! recorded, and replaces the keys, the leases and the feed in one transaction.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use openraft::SnapshotMeta;
use rusqlite::params;

use super::read::scan;
use super::snapshot::{self, SnapshotContent};
use super::state_machine::{io_err, Applied, Shared};
use super::{feed, leases};
use crate::raft_types::{MemberNode, NodeId};

/// Installs `data` as the whole state at `meta`.
pub(super) fn install(
    shared: &Shared,
    meta: &SnapshotMeta<NodeId, MemberNode>,
    data: &[u8],
) -> std::io::Result<()> {
    let content = snapshot::decode_content(data)?;
    let applied = Applied {
        last: meta.last_log_id,
        membership: meta.last_membership.clone(),
        revision: content.revision,
        time_ms: content.time_ms,
        feed_compacted: content.feed_compacted,
    };
    {
        let mut conn = shared.writer.lock().expect("writer lock");
        let tx = conn.transaction().map_err(io_err)?;
        tx.execute("DELETE FROM kv", []).map_err(io_err)?;
        tx.execute("DELETE FROM leases", []).map_err(io_err)?;
        {
            let attached: HashMap<&str, u64> = content
                .attached
                .iter()
                .map(|(k, l)| (k.as_str(), *l))
                .collect();
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO kv (key, value, create_revision, mod_revision, version, lease)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(io_err)?;
            for e in &content.entries {
                insert
                    .execute(params![
                        e.key.as_bytes(),
                        e.value,
                        e.create_revision as i64,
                        e.mod_revision as i64,
                        e.version as i64,
                        attached.get(e.key.as_str()).map(|l| *l as i64),
                    ])
                    .map_err(io_err)?;
            }
            let mut insert = tx
                .prepare_cached("INSERT INTO leases (id, ttl_ms) VALUES (?1, ?2)")
                .map_err(io_err)?;
            for (id, ttl_ms) in &content.leases {
                insert
                    .execute(params![*id as i64, *ttl_ms as i64])
                    .map_err(io_err)?;
            }
        }
        feed::replace_all(&tx, &content.changes).map_err(io_err)?;
        applied.write(&tx).map_err(io_err)?;
        tx.commit().map_err(io_err)?;
    }
    sync_db_files(&shared.db_path)?;
    snapshot::save(&shared.dir, meta, data)?;
    shared.lease_clock.reload(&content.leases);
    shared.publish(applied, None);
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

/// Builds a snapshot of the durable applied state and saves it as `snapshot.bin`.
pub(super) fn build(
    shared: &Shared,
) -> std::io::Result<(SnapshotMeta<NodeId, MemberNode>, Vec<u8>)> {
    let mut conn = super::open_db(&shared.db_path).map_err(io_err)?;
    let tx = conn.transaction().map_err(io_err)?;
    // The first read pins the transaction's view; make that view durable before using it.
    let applied = Applied::read(&tx)?;
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
    let changes = feed::read_all(&tx).map_err(io_err)?;
    let lease_list = leases::all(&tx).map_err(io_err)?;
    let attached = leases::attached(&tx).map_err(io_err)?;
    drop(tx);
    let seq = shared.snapshot_seq.fetch_add(1, Ordering::Relaxed);
    let snapshot_id = match applied.last {
        Some(l) => format!("{}-{}-{seq}", l.leader_id.term, l.index),
        None => format!("0-0-{seq}"),
    };
    let meta = SnapshotMeta {
        last_log_id: applied.last,
        last_membership: applied.membership,
        snapshot_id,
    };
    let data = snapshot::encode_content(&SnapshotContent {
        revision: applied.revision,
        time_ms: applied.time_ms,
        feed_compacted: applied.feed_compacted,
        entries,
        changes,
        leases: lease_list,
        attached,
    });
    snapshot::save(&shared.dir, &meta, &data)?;
    Ok((meta, data))
}
