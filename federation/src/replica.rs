//! Durable, read-only copies of other clusters' data, in one SQLite file per node
//! (`federation/replica.db`).
//!
//! Each source cluster's copy is its keys and the revision they are exact at. Changes are
//! applied only in revision order, a whole change set (one owner revision: all keys of a
//! batch or transaction) per transaction step, and the revision moves in the same
//! transaction as the keys, so a reader (on a separate connection, which sees only
//! committed transactions) always sees a state the owner had, at the revision reported
//! with it. A checkpoint replaces a copy in one transaction, so readers see the old state
//! until the new one is complete.

use std::path::Path;
use std::sync::Mutex;

use aspen_api::feed::{ChangeKind, ChangeSet};
use aspen_api::types::scan_bounds;
use aspen_api::{BlobRef, KvEntry, ReadRequest, ReadResult, ScanPage};
use rusqlite::{params, Connection, OptionalExtension};

use crate::FederationError;

/// Schema version of `replica.db` (SQLite `user_version`).
pub const REPLICA_SCHEMA_VERSION: i64 = 2;

/// Read connections kept for reuse.
const MAX_IDLE_READERS: usize = 8;

/// How long a connection waits for another's lock.
const BUSY_TIMEOUT_MS: u64 = 5_000;

/// Where one source's copy stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceState {
    /// The source's document (namespace id, hex): a copy belongs to one document.
    pub namespace: String,
    /// The owner revision the copy is exact at (0: nothing imported yet).
    pub revision: u64,
    /// The owner's time of that revision (ms since the Unix epoch).
    pub time_ms: u64,
}

/// What one [`ReplicaStore::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// The copy's revision after it.
    pub revision: u64,
    /// Change sets applied (each one owner revision); sets already applied are not counted.
    pub sets: u64,
}

/// The replica store of one node.
pub struct ReplicaStore {
    path: std::path::PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for ReplicaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn sql(e: rusqlite::Error) -> FederationError {
    FederationError::Replica(e.to_string())
}

fn open_db(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // Not fsynced per transaction: a copy lost in a crash is re-imported from the owner's
    // document, so durability here only saves work.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

fn entry_from_row(source_key: Vec<u8>, row: &rusqlite::Row<'_>) -> rusqlite::Result<KvEntry> {
    Ok(KvEntry {
        key: String::from_utf8(source_key)
            .map_err(|e| rusqlite::Error::Utf8Error(0, e.utf8_error()))?,
        value: row.get(1)?,
        create_revision: row.get::<_, i64>(2)? as u64,
        mod_revision: row.get::<_, i64>(3)? as u64,
        version: row.get::<_, i64>(4)? as u64,
        blob: blob_from_columns(row, 5)?,
    })
}

/// A blob reference from its two columns (hash, size), both NULL for an inline value
/// (rusqlite refuses a hash that is not 32 bytes).
fn blob_from_columns(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Option<BlobRef>> {
    let Some(hash) = row.get::<_, Option<[u8; 32]>>(first)? else {
        return Ok(None);
    };
    let size = row.get::<_, i64>(first + 1)? as u64;
    Ok(Some(BlobRef { hash, size }))
}

impl ReplicaStore {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<ReplicaStore, FederationError> {
        let conn = open_db(path).map_err(sql)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(sql)?;
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
                [],
                |r| r.get(0),
            )
            .map_err(sql)?;
        if version != REPLICA_SCHEMA_VERSION && !(version == 0 && tables == 0) {
            return Err(FederationError::Replica(format!(
                "{} has schema version {version}, this Aspen reads {REPLICA_SCHEMA_VERSION}; \
                 delete it and the node imports its replicas again",
                path.display()
            )));
        }
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS replica_kv (source TEXT NOT NULL, key BLOB NOT NULL,
                 value BLOB NOT NULL, create_revision INTEGER NOT NULL,
                 mod_revision INTEGER NOT NULL, version INTEGER NOT NULL, blob_hash BLOB,
                 blob_size INTEGER, PRIMARY KEY (source, key)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS replica_sources (source TEXT PRIMARY KEY,
                 namespace TEXT NOT NULL, revision INTEGER NOT NULL, time_ms INTEGER NOT NULL);
             CREATE INDEX IF NOT EXISTS replica_kv_blobs ON replica_kv (blob_hash)
                 WHERE blob_hash IS NOT NULL;",
        )
        .map_err(sql)?;
        conn.pragma_update(None, "user_version", REPLICA_SCHEMA_VERSION)
            .map_err(sql)?;
        Ok(ReplicaStore {
            path: path.to_path_buf(),
            writer: Mutex::new(conn),
            readers: Mutex::new(Vec::new()),
        })
    }

    /// Where `source`'s copy stands, if it has one.
    pub fn state(&self, source: &str) -> Result<Option<SourceState>, FederationError> {
        let conn = self.writer.lock().expect("replica writer lock");
        read_state(&conn, source).map_err(sql)
    }

    /// Makes sure `source` has a copy of document `namespace`: a copy of another document
    /// (the source's secret was replaced) is dropped, to be imported anew.
    pub fn register(&self, source: &str, namespace: &str) -> Result<SourceState, FederationError> {
        let mut conn = self.writer.lock().expect("replica writer lock");
        if let Some(state) = read_state(&conn, source).map_err(sql)? {
            if state.namespace == namespace {
                return Ok(state);
            }
            tracing::warn!(source, old = %state.namespace, new = namespace, "the source's document changed; its replica is imported again");
        }
        let tx = conn.transaction().map_err(sql)?;
        tx.execute("DELETE FROM replica_kv WHERE source = ?1", [source])
            .map_err(sql)?;
        tx.execute(
            "INSERT OR REPLACE INTO replica_sources (source, namespace, revision, time_ms)
             VALUES (?1, ?2, 0, 0)",
            params![source, namespace],
        )
        .map_err(sql)?;
        tx.commit().map_err(sql)?;
        Ok(SourceState {
            namespace: namespace.to_string(),
            revision: 0,
            time_ms: 0,
        })
    }

    /// Applies the change sets after the copy's revision, in order, in one transaction.
    /// Sets at or below the revision reached so far are skipped (already applied, or the
    /// same revision from another segment); a set that does not follow on is an error and
    /// nothing is applied. Returns the new revision and how many sets were applied.
    pub fn apply(&self, source: &str, sets: &[ChangeSet]) -> Result<Applied, FederationError> {
        let mut conn = self.writer.lock().expect("replica writer lock");
        let state = read_state(&conn, source)
            .map_err(sql)?
            .ok_or_else(|| FederationError::Replica(format!("{source} is not registered")))?;
        let mut revision = state.revision;
        let mut time_ms = state.time_ms;
        let mut applied = 0;
        let tx = conn.transaction().map_err(sql)?;
        for set in sets {
            if set.revision <= revision {
                continue;
            }
            if set.revision != revision + 1 {
                return Err(FederationError::Gap {
                    source_cluster: source.to_string(),
                    have: revision,
                    got: set.revision,
                });
            }
            apply_set(&tx, source, set).map_err(sql)?;
            revision = set.revision;
            time_ms = set.time_ms;
            applied += 1;
        }
        tx.execute(
            "UPDATE replica_sources SET revision = ?2, time_ms = ?3 WHERE source = ?1",
            params![source, revision as i64, time_ms as i64],
        )
        .map_err(sql)?;
        tx.commit().map_err(sql)?;
        Ok(Applied {
            revision,
            sets: applied,
        })
    }

    /// Replaces `source`'s copy with a checkpoint at `revision`: the entries arrive in
    /// pages (the iterator ends when the checkpoint is complete; an `Err` aborts). Readers
    /// see the old copy until the new one is whole. Returns how many keys were loaded.
    /// Blocking: call it on a blocking thread.
    pub fn load_checkpoint(
        &self,
        source: &str,
        revision: u64,
        time_ms: u64,
        pages: impl IntoIterator<Item = Result<Vec<KvEntry>, String>>,
    ) -> Result<u64, FederationError> {
        let mut conn = self.writer.lock().expect("replica writer lock");
        let tx = conn.transaction().map_err(sql)?;
        tx.execute("DELETE FROM replica_kv WHERE source = ?1", [source])
            .map_err(sql)?;
        let mut keys = 0u64;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO replica_kv (source, key, value, create_revision, mod_revision,
                     version, blob_hash, blob_size) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(sql)?;
            for page in pages {
                let page = page.map_err(FederationError::Checkpoint)?;
                for e in page {
                    insert
                        .execute(params![
                            source,
                            e.key.as_bytes(),
                            e.value,
                            e.create_revision as i64,
                            e.mod_revision as i64,
                            e.version as i64,
                            e.blob.as_ref().map(|b| &b.hash[..]),
                            e.blob.as_ref().map(|b| b.size as i64),
                        ])
                        .map_err(sql)?;
                    keys += 1;
                }
            }
        }
        tx.execute(
            "UPDATE replica_sources SET revision = ?2, time_ms = ?3 WHERE source = ?1",
            params![source, revision as i64, time_ms as i64],
        )
        .map_err(sql)?;
        tx.commit().map_err(sql)?;
        Ok(keys)
    }

    /// Reads `source`'s copy: the result and the revision it is exact at, from one read
    /// transaction.
    pub fn read(
        &self,
        source: &str,
        request: &ReadRequest,
    ) -> Result<(ReadResult, u64), FederationError> {
        self.with_reader(|conn| read_in(conn, source, request))
    }

    /// Runs `read` on a pooled read connection (opening one when none is idle).
    fn with_reader<T>(
        &self,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, FederationError> {
        let pooled = self.readers.lock().expect("replica readers lock").pop();
        let conn = match pooled {
            Some(c) => c,
            None => open_db(&self.path).map_err(sql)?,
        };
        let out = read(&conn).map_err(sql);
        let mut pool = self.readers.lock().expect("replica readers lock");
        if pool.len() < MAX_IDLE_READERS {
            pool.push(conn);
        }
        out
    }

    /// Every blob the copies reference, once per source that references it: the node
    /// keeps their bytes (fetched from each source's nodes) so that its region reads them
    /// locally. Read from its own connection, never waiting for an apply.
    pub fn referenced_blobs(&self) -> Result<Vec<(String, BlobRef)>, FederationError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT DISTINCT source, blob_hash, blob_size FROM replica_kv
                 WHERE blob_hash IS NOT NULL",
            )?;
            let rows = stmt.query_map([], |r| {
                let blob = blob_from_columns(r, 1)?.expect("selected where not NULL");
                Ok((r.get::<_, String>(0)?, blob))
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })
    }

    /// Every entry of `source`'s copy, in key order (tests and comparisons).
    pub fn entries(&self, source: &str) -> Result<Vec<KvEntry>, FederationError> {
        let conn = self.writer.lock().expect("replica writer lock");
        let mut stmt = conn
            .prepare(
                "SELECT key, value, create_revision, mod_revision, version, blob_hash, blob_size
                 FROM replica_kv
                 WHERE source = ?1 ORDER BY key",
            )
            .map_err(sql)?;
        let rows = stmt
            .query_map([source], |r| entry_from_row(r.get(0)?, r))
            .map_err(sql)?;
        rows.collect::<rusqlite::Result<_>>().map_err(sql)
    }
}

fn read_state(conn: &Connection, source: &str) -> rusqlite::Result<Option<SourceState>> {
    conn.prepare_cached(
        "SELECT namespace, revision, time_ms FROM replica_sources WHERE source = ?1",
    )?
    .query_row([source], |r| {
        Ok(SourceState {
            namespace: r.get(0)?,
            revision: r.get::<_, i64>(1)? as u64,
            time_ms: r.get::<_, i64>(2)? as u64,
        })
    })
    .optional()
}

/// Writes one key of `source`'s copy: `stored` is its value inline and no blob, or empty
/// bytes and a blob's reference.
fn put(
    tx: &rusqlite::Transaction,
    source: &str,
    revision: u64,
    key: &str,
    (value, blob): (&[u8], Option<&BlobRef>),
    create_revision: u64,
    version: u64,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO replica_kv (source, key, value, create_revision,
         mod_revision, version, blob_hash, blob_size) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        source,
        key.as_bytes(),
        value,
        create_revision as i64,
        revision as i64,
        version as i64,
        blob.map(|b| &b.hash[..]),
        blob.map(|b| b.size as i64),
    ])?;
    Ok(())
}

fn apply_set(tx: &rusqlite::Transaction, source: &str, set: &ChangeSet) -> rusqlite::Result<()> {
    for change in &set.changes {
        match &change.kind {
            ChangeKind::Put {
                value,
                create_revision,
                version,
            } => put(
                tx,
                source,
                set.revision,
                &change.key,
                (value, None),
                *create_revision,
                *version,
            )?,
            ChangeKind::PutBlob {
                blob,
                create_revision,
                version,
            } => put(
                tx,
                source,
                set.revision,
                &change.key,
                (&[], Some(blob)),
                *create_revision,
                *version,
            )?,
            ChangeKind::Delete => {
                tx.prepare_cached("DELETE FROM replica_kv WHERE source = ?1 AND key = ?2")?
                    .execute(params![source, change.key.as_bytes()])?;
            }
        }
    }
    Ok(())
}

fn read_in(
    conn: &Connection,
    source: &str,
    request: &ReadRequest,
) -> rusqlite::Result<(ReadResult, u64)> {
    let tx = conn.unchecked_transaction()?;
    let revision = read_state(&tx, source)?.map_or(0, |s| s.revision);
    let result = match request {
        ReadRequest::Get { key } => {
            let entry = tx
                .prepare_cached(
                    "SELECT key, value, create_revision, mod_revision, version, blob_hash, blob_size
                 FROM replica_kv
                     WHERE source = ?1 AND key = ?2",
                )?
                .query_row(params![source, key.as_bytes()], |r| {
                    entry_from_row(r.get(0)?, r)
                })
                .optional()?;
            ReadResult::Get(entry)
        }
        ReadRequest::Scan {
            prefix,
            after,
            limit,
        } => {
            let (lower, upper) = scan_bounds(prefix, after.as_deref());
            let sql = if upper.is_some() {
                "SELECT key, value, create_revision, mod_revision, version, blob_hash, blob_size
                 FROM replica_kv
                 WHERE source = ?1 AND key >= ?2 AND key < ?3 ORDER BY key LIMIT ?4"
            } else {
                "SELECT key, value, create_revision, mod_revision, version, blob_hash, blob_size
                 FROM replica_kv
                 WHERE source = ?1 AND key >= ?2 AND ?3 IS NULL ORDER BY key LIMIT ?4"
            };
            let mut stmt = tx.prepare_cached(sql)?;
            let rows = stmt.query_map(
                params![source, lower, upper, (*limit as i64).saturating_add(1)],
                |r| entry_from_row(r.get(0)?, r),
            )?;
            ReadResult::Scan(ScanPage::collect(rows, *limit)?)
        }
    };
    Ok((result, revision))
}

#[cfg(test)]
mod tests {
    use aspen_api::feed::KeyChange;

    use super::*;

    fn put(revision: u64, key: &str, value: &str) -> ChangeSet {
        ChangeSet {
            revision,
            time_ms: revision * 10,
            changes: vec![KeyChange {
                key: key.into(),
                kind: ChangeKind::Put {
                    value: value.as_bytes().to_vec().into(),
                    create_revision: revision,
                    version: 1,
                },
            }],
        }
    }

    fn store() -> (tempfile::TempDir, ReplicaStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = ReplicaStore::open(&dir.path().join("replica.db")).unwrap();
        store.register("us-1", "ns").unwrap();
        (dir, store)
    }

    #[test]
    fn changes_apply_in_order_skipping_known_ones_and_a_gap_applies_nothing() {
        let (_dir, store) = store();
        assert_eq!(
            store
                .apply("us-1", &[put(1, "a", "1"), put(2, "b", "2")])
                .unwrap(),
            Applied {
                revision: 2,
                sets: 2
            }
        );
        // Revision 2 again, then 3, then 3 again (a second segment over the same
        // revisions): only 3 applies, once.
        assert_eq!(
            store
                .apply(
                    "us-1",
                    &[put(2, "b", "x"), put(3, "c", "3"), put(3, "c", "y")]
                )
                .unwrap(),
            Applied {
                revision: 3,
                sets: 1
            }
        );
        let err = store.apply("us-1", &[put(5, "e", "5")]).unwrap_err();
        assert!(
            matches!(
                err,
                FederationError::Gap {
                    have: 3,
                    got: 5,
                    ..
                }
            ),
            "{err}"
        );
        let (result, revision) = store
            .read("us-1", &ReadRequest::Get { key: "b".into() })
            .unwrap();
        assert_eq!(revision, 3);
        let ReadResult::Get(Some(b)) = result else {
            panic!("b is there")
        };
        assert_eq!((b.value, b.mod_revision), (b"2".to_vec(), 2));
        assert_eq!(
            store.entries("us-1").unwrap().len(),
            3,
            "nothing of the gap"
        );
    }

    #[test]
    fn a_checkpoint_replaces_the_copy_whole_and_sets_the_revision() {
        let (_dir, store) = store();
        store.apply("us-1", &[put(1, "old", "1")]).unwrap();
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        let entry = |k: &str| KvEntry {
            key: k.into(),
            value: b"v".to_vec(),
            create_revision: 4,
            mod_revision: 9,
            version: 2,
            blob: None,
        };
        tx.send(Ok(vec![entry("a"), entry("b")])).unwrap();
        tx.send(Ok(vec![entry("c")])).unwrap();
        drop(tx);
        assert_eq!(store.load_checkpoint("us-1", 9, 90, rx).unwrap(), 3);
        assert_eq!(store.state("us-1").unwrap().unwrap().revision, 9);
        let keys: Vec<String> = store
            .entries("us-1")
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(keys, vec!["a", "b", "c"]);
    }

    /// A blob's reference reaches the replica as the owner holds it, by change and by
    /// checkpoint, and reads answer with it (the bytes stay in the blob store).
    #[test]
    fn a_blob_reference_is_kept_by_change_and_by_checkpoint() {
        let (_dir, store) = store();
        let blob = BlobRef {
            hash: [7; 32],
            size: 5 << 20,
        };
        let set = ChangeSet {
            revision: 1,
            time_ms: 10,
            changes: vec![KeyChange {
                key: "big".into(),
                kind: ChangeKind::PutBlob {
                    blob,
                    create_revision: 1,
                    version: 1,
                },
            }],
        };
        store.apply("us-1", &[set]).unwrap();
        let (result, _) = store
            .read("us-1", &ReadRequest::Get { key: "big".into() })
            .unwrap();
        let ReadResult::Get(Some(entry)) = result else {
            panic!("big is there")
        };
        assert_eq!((entry.blob, entry.value.len()), (Some(blob), 0));
        store.register("eu-1", "ns2").unwrap();
        store.apply("eu-1", &[put(1, "small", "v")]).unwrap();
        assert_eq!(
            store.referenced_blobs().unwrap(),
            vec![("us-1".to_string(), blob)],
            "the blob is referenced, the inline value is not"
        );

        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let checkpointed = KvEntry {
            key: "other".into(),
            value: vec![],
            create_revision: 2,
            mod_revision: 3,
            version: 2,
            blob: Some(blob),
        };
        tx.send(Ok(vec![checkpointed.clone()])).unwrap();
        drop(tx);
        store.load_checkpoint("us-1", 3, 30, rx).unwrap();
        assert_eq!(store.entries("us-1").unwrap(), vec![checkpointed]);
        // Two keys, one blob: listed once.
        assert_eq!(store.referenced_blobs().unwrap().len(), 1);
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        tx.send(Ok(vec![])).unwrap();
        drop(tx);
        store.load_checkpoint("us-1", 4, 40, rx).unwrap();
        assert!(
            store.referenced_blobs().unwrap().is_empty(),
            "a checkpoint without it no longer references it"
        );
    }

    #[test]
    fn a_failed_checkpoint_keeps_the_old_copy() {
        let (_dir, store) = store();
        store.apply("us-1", &[put(1, "old", "1")]).unwrap();
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        tx.send(Err("download failed".into())).unwrap();
        drop(tx);
        assert!(store.load_checkpoint("us-1", 9, 90, rx).is_err());
        assert_eq!(store.state("us-1").unwrap().unwrap().revision, 1);
        assert_eq!(store.entries("us-1").unwrap().len(), 1);
    }

    #[test]
    fn another_document_for_the_same_source_starts_the_copy_over() {
        let (_dir, store) = store();
        store.apply("us-1", &[put(1, "a", "1")]).unwrap();
        assert_eq!(store.register("us-1", "ns").unwrap().revision, 1);
        assert_eq!(store.register("us-1", "other").unwrap().revision, 0);
        assert!(store.entries("us-1").unwrap().is_empty());
    }
}
