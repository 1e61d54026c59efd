//! The on-disk formats of a node, each versioned (see `aspen_api::codec`): every record
//! starts with its format's version byte, each database carries its schema version in
//! SQLite's `user_version`, and the snapshot file starts with a magic and a version. A data
//! dir written by another Aspen version is refused with an error that says so, never
//! misread. Golden-byte tests (`format_tests.rs`) pin the encodings.

use std::path::Path;

use aspen_api::codec::Format;
use rusqlite::Connection;

/// A Raft log entry (`log.db`, table `log`).
/// Version 2: a proposal carries the leader's time.
pub const LOG_ENTRY: Format = Format::new("log entry", 2);
/// The vote, the committed log id and the last purged log id (`log.db`, table `meta`).
pub const LOG_META: Format = Format::new("log metadata", 1);
/// The applied log id, membership and revision (`state.db`, table `sm_meta`).
pub const STATE_META: Format = Format::new("state machine metadata", 1);
/// A snapshot: what `snapshot.bin` holds and a leader streams to a follower, after
/// [`SNAPSHOT_MAGIC`] (see `snapshot::stream`).
/// Version 2: the time, the feed's compaction point and the change feed.
/// Version 3: the leases and which keys hold them.
/// Version 4: a stream of records (metadata, header, keys, change sets, leases, end),
/// written and read one at a time; the file is the stream itself.
/// Version 5: a key may hold a blob reference; a change may be a blob's put.
pub const SNAPSHOT_DATA: Format = Format::new("snapshot data", 5);

/// The schema version of `log.db` and `state.db`, in SQLite's `user_version`. Bump it
/// when a table changes shape or a record format's version changes.
/// Version 2: the change feed's tables in `state.db`.
/// Version 3: leases (`leases`, `kv.lease`).
/// Version 4: blob references (`kv.blob_hash`, `kv.blob_size`, and the same in `changes`).
pub const DB_SCHEMA_VERSION: i64 = 4;

/// First bytes of a snapshot, before [`SNAPSHOT_DATA`]'s version.
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"ASPNSNAP";

fn io_err(e: impl ToString) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Checks the schema version of a database before its tables are created: a new database
/// is stamped with [`DB_SCHEMA_VERSION`]; one with tables but another version (0: written
/// before versions existed) is refused, naming the file.
pub fn check_schema(conn: &Connection, path: &Path) -> std::io::Result<()> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(io_err)?;
    if version == DB_SCHEMA_VERSION {
        return Ok(());
    }
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
            [],
            |r| r.get(0),
        )
        .map_err(io_err)?;
    if version == 0 && tables == 0 {
        return conn
            .pragma_update(None, "user_version", DB_SCHEMA_VERSION)
            .map_err(io_err);
    }
    Err(io_err(format!(
        "{} has schema version {version}, this Aspen reads version {DB_SCHEMA_VERSION}: \
         it was written by a different Aspen version; start from an empty data dir \
         (and let the node catch up from its cluster) or run the matching Aspen",
        path.display()
    )))
}

/// Decodes a record of `format`, as an I/O error for the storage traits.
pub fn decode<T: serde::de::DeserializeOwned>(format: Format, bytes: &[u8]) -> std::io::Result<T> {
    format.decode(bytes).map_err(io_err)
}
