//! Reads of the local copy through a pooled connection ([`Reader`]): one key, a page of a
//! prefix scan, a page of the change feed. Each sees only committed applies (WAL snapshot
//! isolation); a feed read runs in one read transaction, so the compaction bound and the
//! rows it returns agree.

use aspen_api::feed::{ChangeSet, Compacted};
use aspen_api::types::scan_bounds;
use aspen_api::{BlobRef, KvEntry, ScanPage};
use rusqlite::{params, Connection};

use super::apply::{blob_from_columns, entry_from_row, get, ENTRY_COLUMNS};
use super::feed;
use super::state_machine::{read_meta, Applied, ReadError};

/// A read connection lent by [`StateMachine::read`].
pub struct Reader<'a> {
    pub(super) conn: &'a Connection,
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

    /// Every blob the local copy references, each once: the values of keys and the puts
    /// the kept change feed holds (a watcher or a federation replica may still read an
    /// overwritten value until the feed is compacted past it).
    pub fn referenced_blobs(&self) -> Result<Vec<[u8; 32]>, ReadError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT blob_hash FROM kv WHERE blob_hash IS NOT NULL
             UNION SELECT blob_hash FROM changes WHERE blob_hash IS NOT NULL",
        )?;
        let rows = stmt.query_map([], |r| r.get::<_, [u8; 32]>(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The blobs of the values of keys strictly after `after`, in key order: at most
    /// `limit`, with the last key read (`None` when the scan is done).
    pub fn value_blobs(
        &self,
        after: &[u8],
        limit: usize,
    ) -> Result<(Vec<BlobRef>, Option<Vec<u8>>), ReadError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT key, blob_hash, blob_size FROM kv
             WHERE key > ?1 AND blob_hash IS NOT NULL ORDER BY key LIMIT ?2",
        )?;
        let mut last = None;
        let mut blobs = Vec::new();
        let mut rows = stmt.query(params![after, limit as i64])?;
        while let Some(row) = rows.next()? {
            last = Some(row.get::<_, Vec<u8>>(0)?);
            blobs.extend(blob_from_columns(row, 1)?);
        }
        let next = (blobs.len() == limit).then_some(last).flatten();
        Ok((blobs, next))
    }

    /// The keys attached to lease `lease`, in key order.
    pub fn lease_keys(&self, lease: u64) -> Result<Vec<String>, ReadError> {
        Ok(super::leases::keys(self.conn, lease)?)
    }

    /// Reads the change sets after revision `after`, in revision order: at most
    /// `max_sets`, stopping after the set that reaches `max_bytes`. A revision that has
    /// been compacted away is an `Err(Compacted)` naming the oldest one kept.
    pub fn changes_after(
        &self,
        after: u64,
        max_sets: usize,
        max_bytes: usize,
    ) -> Result<Result<Vec<ChangeSet>, Compacted>, ReadError> {
        let tx = self.conn.unchecked_transaction()?;
        let compacted: u64 =
            read_meta(&tx, "feed_compacted").map_err(|e| ReadError::Corrupt(e.to_string()))?;
        Ok(feed::read_after(
            &tx, after, compacted, max_sets, max_bytes,
        )?)
    }

    /// Reads every key at one consistent revision, in key order, handing pages of at most
    /// `page_entries` entries (and a scan page's bytes) to `page`; returns the revision and
    /// its time. The read transaction is held throughout: applies go on (WAL), and the
    /// pages are exactly the state at that revision. `page` may stop the scan with `Err`.
    pub fn scan_all(
        &self,
        page_entries: usize,
        page: &mut dyn FnMut(Vec<KvEntry>) -> Result<(), String>,
    ) -> Result<Result<(u64, u64), String>, ReadError> {
        let tx = self.conn.unchecked_transaction()?;
        let applied = Applied::read(&tx).map_err(|e| ReadError::Corrupt(e.to_string()))?;
        let mut after: Option<String> = None;
        loop {
            let chunk = scan(&tx, "", after.as_deref(), page_entries)?;
            after = chunk.kvs.last().map(|e| e.key.clone());
            let more = chunk.more;
            if !chunk.kvs.is_empty() {
                if let Err(stop) = page(chunk.kvs) {
                    return Ok(Err(stop));
                }
            }
            if !more {
                return Ok(Ok((applied.revision, applied.time_ms)));
            }
        }
    }
}

pub(super) fn scan(
    conn: &Connection,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> rusqlite::Result<ScanPage> {
    let (lower, upper) = scan_bounds(prefix, after);
    let bound = if upper.is_some() {
        "key < ?2"
    } else {
        "?2 IS NULL"
    };
    let sql = format!(
        "SELECT key, {ENTRY_COLUMNS} FROM kv WHERE key >= ?1 AND {bound} ORDER BY key LIMIT ?3"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![lower, upper, (limit + 1) as i64], |row| {
        let key: Vec<u8> = row.get(0)?;
        let key =
            String::from_utf8(key).map_err(|e| rusqlite::Error::Utf8Error(0, e.utf8_error()))?;
        entry_from_row(key, row, 1)
    })?;
    ScanPage::collect(rows, limit)
}
