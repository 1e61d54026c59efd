//! Durable storage of a node, in SQLite: the Raft log and vote ([`log_store`]), the state
//! machine with every key ([`state_machine`], applying commands in [`apply`]), the change
//! feed ([`feed`]) with its newest sets kept in memory for watches ([`recent`]), leases
//! ([`leases`]), reads of the local copy ([`read`]), and snapshots ([`snapshot`], built and
//! installed in `snapshot_io`); every on-disk encoding is versioned in [`format`].
//!
//! The log and the state machine live in two database files (`log.db`, `state.db`) so
//! that appends and applies never wait for each other's write lock. Both run in WAL mode
//! with `synchronous=FULL`: a transaction is on disk when its commit returns.

pub mod apply;
pub mod feed;
pub mod format;
pub mod leases;
pub mod log_store;
pub mod read;
pub mod recent;
pub mod snapshot;
mod snapshot_io;
pub mod state_machine;

#[cfg(test)]
mod feed_tests;
#[cfg(test)]
mod format_tests;
#[cfg(test)]
mod lease_tests;
#[cfg(test)]
mod revision_tests;

use std::path::Path;

use rusqlite::Connection;

pub use feed::FeedRetention;
pub use log_store::LogStore;
pub use read::Reader;
pub use snapshot_io::Restored;
pub use state_machine::StateMachine;

/// How long a connection waits for another's lock before failing. Writers are single
/// threads, so only readers and the snapshot builder ever wait, and briefly.
const BUSY_TIMEOUT_MS: u64 = 5_000;

/// Opens (creating if needed) a database in WAL mode with full fsync on commit.
pub(crate) fn open_db(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

/// Opens a node's log store and state machine in `dir`, keeping the change feed as
/// `retention` says.
pub fn open(
    dir: &Path,
    retention: FeedRetention,
) -> Result<(LogStore, StateMachine), crate::raft_types::StorageError> {
    std::fs::create_dir_all(dir).map_err(|e| openraft::StorageIOError::write_logs(&e))?;
    let sm = StateMachine::open(dir, retention)?;
    let log = LogStore::open_with(&dir.join("log.db"), sm.stages().clone())?;
    Ok((log, sm))
}

#[cfg(test)]
mod tests {
    use openraft::testing::{StoreBuilder, Suite};

    use super::*;
    use crate::raft_types::{StorageError, TypeConfig};

    struct SqliteBuilder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for SqliteBuilder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
            let dir = tempfile::tempdir().expect("temp dir");
            let (log, sm) = open(dir.path(), FeedRetention::default())?;
            Ok((dir, log, sm))
        }
    }

    #[test]
    fn sqlite_store_passes_the_openraft_storage_conformance_suite() -> Result<(), StorageError> {
        Suite::test_all(SqliteBuilder)
    }
}
