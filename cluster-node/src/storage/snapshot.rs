//! Snapshots: the whole key space (with the leases and the kept change feed) at one log
//! index, as one file of records ([`stream`]) that is written, sent and installed one
//! record at a time, so a node's memory during a snapshot does not grow with the data.
//!
//! The current snapshot is `snapshot.bin` in the data dir. A new one is written under a
//! temporary name (`snapshot.building-N` when built here, `snapshot.incoming-N` when
//! received from the leader), fsynced, and renamed into place, so a crash leaves either
//! the old or the new snapshot, never a mix; leftovers of a crash are removed when the
//! state machine opens. A newer snapshot is never replaced by an older one (a build and an
//! install can finish in either order). The file's bytes are exactly what a leader sends a
//! follower (`aspen/snapshot/1`).

pub mod stream;

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use openraft::SnapshotMeta;
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

use crate::raft_types::{MemberNode, NodeId};

/// A snapshot's metadata.
pub type Meta = SnapshotMeta<NodeId, MemberNode>;

/// File name of the current snapshot inside the data dir.
pub const SNAPSHOT_FILE_NAME: &str = "snapshot.bin";
/// Prefix of a snapshot being built here.
const BUILDING_PREFIX: &str = "snapshot.building-";
/// Prefix of a snapshot being received from a leader.
const INCOMING_PREFIX: &str = "snapshot.incoming-";

/// The current snapshot's path in `dir`.
pub fn current_path(dir: &Path) -> PathBuf {
    dir.join(SNAPSHOT_FILE_NAME)
}

/// A temporary path for a snapshot being built, unique by `seq`.
pub(crate) fn building_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{BUILDING_PREFIX}{seq}"))
}

/// Removes what a crash left of snapshots being built or received.
pub(crate) fn remove_leftovers(dir: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // `snapshot.bin.tmp` is what earlier versions wrote before renaming.
        if name.starts_with(BUILDING_PREFIX)
            || name.starts_with(INCOMING_PREFIX)
            || name == "snapshot.bin.tmp"
        {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Reads the metadata at the start of the snapshot file at `path`.
pub fn read_meta(path: &Path) -> Result<Meta, stream::StreamError> {
    let file = std::io::BufReader::new(std::fs::File::open(path)?);
    Ok(stream::StreamReader::open(file)?.meta().clone())
}

/// The metadata of the current snapshot in `dir`, if there is one. A snapshot written in
/// an older format is removed (logged): `state.db` holds all it held and more, and openraft
/// builds a new one from it when the log needs one. Any other unreadable snapshot is an
/// error naming the file.
pub(crate) fn open_current(dir: &Path) -> std::io::Result<Option<Meta>> {
    let path = current_path(dir);
    match read_meta(&path) {
        Ok(meta) => Ok(Some(meta)),
        Err(stream::StreamError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(stream::StreamError::Version { found, expected }) if found < expected => {
            tracing::warn!(
                path = %path.display(),
                found,
                expected,
                "removing a snapshot of an older format; a new one is built from state.db when needed"
            );
            std::fs::remove_file(&path)?;
            sync_dir(dir)?;
            Ok(None)
        }
        Err(e) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {e}; move it away to start without it", path.display()),
        )),
    }
}

/// Reads the whole snapshot stream at `path` and checks that it is complete and
/// well-formed and that its metadata is `meta`, before anything of it is installed: a
/// damaged stream is then refused as such, instead of failing the install (a storage
/// error, which stops the node's Raft).
pub fn verify(path: &Path, meta: &Meta) -> std::io::Result<()> {
    let file = std::io::BufReader::with_capacity(1024 * 1024, std::fs::File::open(path)?);
    let mut reader = stream::StreamReader::open(file)?;
    if reader.meta() != meta {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "the snapshot's bytes are of snapshot {}, not {} as announced",
                reader.meta().snapshot_id,
                meta.snapshot_id
            ),
        ));
    }
    while reader.next_item()?.is_some() {}
    Ok(())
}

/// Fsyncs `dir`, making renames and creations in it durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Makes the finished, fsynced snapshot at `from` (with metadata `meta`) the current one,
/// unless the current one is newer; `from` is gone either way. `current` is the metadata
/// of the current snapshot, kept by the caller under a lock that serializes this call.
pub(crate) fn make_current(
    dir: &Path,
    from: &Path,
    meta: &Meta,
    current: &mut Option<Meta>,
) -> std::io::Result<()> {
    if current
        .as_ref()
        .is_some_and(|c| c.last_log_id > meta.last_log_id)
    {
        std::fs::remove_file(from)?;
        return Ok(());
    }
    std::fs::rename(from, current_path(dir))?;
    sync_dir(dir)?;
    *current = Some(meta.clone());
    Ok(())
}

/// A snapshot's bytes in a file: what openraft reads a snapshot from to send it, and
/// what a received snapshot is written to. A temporary file (one being received) is
/// removed when dropped unless it was installed.
#[derive(Debug)]
pub struct SnapshotFile {
    file: tokio::fs::File,
    path: PathBuf,
    temporary: bool,
}

impl SnapshotFile {
    /// Opens the snapshot file at `path` for reading.
    pub async fn open(path: PathBuf) -> std::io::Result<SnapshotFile> {
        let file = tokio::fs::File::open(&path).await?;
        Ok(SnapshotFile {
            file,
            path,
            temporary: false,
        })
    }

    /// Opens an already opened file (the handle stays valid when the path is renamed).
    pub(crate) fn from_std(file: std::fs::File, path: PathBuf) -> SnapshotFile {
        SnapshotFile {
            file: tokio::fs::File::from_std(file),
            path,
            temporary: false,
        }
    }

    /// Creates an empty temporary file in `dir` to receive a snapshot into, unique by
    /// `seq`.
    pub async fn create_incoming(dir: &Path, seq: u64) -> std::io::Result<SnapshotFile> {
        let path = dir.join(format!("{INCOMING_PREFIX}{seq}"));
        let file = tokio::fs::File::create(&path).await?;
        Ok(SnapshotFile {
            file,
            path,
            temporary: true,
        })
    }

    /// Where the bytes are.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The size of the snapshot in bytes.
    pub async fn len(&self) -> std::io::Result<u64> {
        Ok(self.file.metadata().await?.len())
    }

    /// Flushes what was written and fsyncs it; gives back the path, which the caller now
    /// owns (it is no longer removed on drop).
    pub(crate) async fn finish_receiving(mut self) -> std::io::Result<PathBuf> {
        use tokio::io::AsyncWriteExt;
        self.file.flush().await?;
        self.file.sync_all().await?;
        self.temporary = false;
        Ok(std::mem::take(&mut self.path))
    }

    /// Seeks to the start (for a reader that may have been used before).
    pub async fn rewind(&mut self) -> std::io::Result<()> {
        use tokio::io::AsyncSeekExt;
        self.file.seek(SeekFrom::Start(0)).await.map(|_| ())
    }
}

impl Drop for SnapshotFile {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl AsyncRead for SnapshotFile {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_read(cx, buf)
    }
}

impl AsyncWrite for SnapshotFile {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.file).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_shutdown(cx)
    }
}

impl AsyncSeek for SnapshotFile {
    fn start_seek(mut self: Pin<&mut Self>, position: SeekFrom) -> std::io::Result<()> {
        Pin::new(&mut self.file).start_seek(position)
    }

    fn poll_complete(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<u64>> {
        Pin::new(&mut self.file).poll_complete(cx)
    }
}
