//! Flushing a blob to disk. iroh-blobs writes a blob's data and outboard (its BLAKE3 tree)
//! as files under `data/`, or inlines small ones in its metadata database, and flushes
//! neither the files nor the directory that names them. A blob counts as durable here once
//! its files and that directory are flushed and the database is committed
//! ([`crate::BlobStore`] calls `sync_db` after [`flush_files`]).

use std::fs::File;
use std::io;

use iroh_blobs::store::fs::options::Options;
use iroh_blobs::Hash;

/// Flushes the files of the complete blob `hash` of `size` bytes and the data directory.
/// Data the store inlines is in its database, not in a file; data it does not inline must
/// be in its file, or the blob is not where this store expects it (an error).
pub fn flush_files(options: &Options, hash: &Hash, size: u64) -> io::Result<()> {
    let paths = &options.path;
    let data = paths.data_path(hash);
    match File::open(&data) {
        Ok(file) => file.sync_all()?,
        Err(e) if e.kind() == io::ErrorKind::NotFound && options.is_inlined_data(size) => {}
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", data.display()))),
    }
    // An outboard is a file only when it is too large to inline.
    match File::open(paths.outboard_path(hash)) {
        Ok(file) => file.sync_all()?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    File::open(&paths.data_path)?.sync_all()
}
