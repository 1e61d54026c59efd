//! The snapshot stream: how a snapshot is laid out as bytes, in `snapshot.bin` and on the
//! wire to a follower, so that it is written and read one record at a time.
//!
//! ```text
//! "ASPNSNAP"  version (SNAPSHOT_DATA)  record*
//! record = length (u32, little endian)  postcard(Record)
//! ```
//!
//! The records come in a fixed order, checked by the reader: the snapshot's metadata,
//! the header (revision, time, feed compaction point), every key in key order, the kept
//! change feed in revision order, every lease in id order, and an end record that counts
//! what came before it. A stream that stops early, has a record out of place, a length
//! over [`MAX_RECORD_BYTES`], bytes after the end or counts that do not match is refused
//! with a [`StreamError`] saying which, so a partial or damaged snapshot is never installed.
//!
//! Neither side ever holds more than one record: a snapshot of any size is built, sent and
//! installed in memory bounded by [`MAX_RECORD_BYTES`] plus I/O buffers.

use std::io::{Read, Write};

use aspen_api::feed::ChangeSet;
use aspen_api::limits::{MAX_COMMAND_VALUE_BYTES, MAX_KEYS_PER_COMMAND, MAX_KEY_BYTES};
use serde::{Deserialize, Serialize};

use super::Meta;
use crate::storage::format::{SNAPSHOT_DATA, SNAPSHOT_MAGIC};

/// Largest record. The largest there can be is one revision's change set: at most
/// [`MAX_COMMAND_VALUE_BYTES`] of values over at most [`MAX_KEYS_PER_COMMAND`] keys (a
/// lease's expiry deletes at most as many); a key record holds one inline value, which is
/// smaller. Twice that leaves room for the encoding; a length over it is refused before a
/// byte of the record is read.
pub const MAX_RECORD_BYTES: usize =
    2 * (MAX_COMMAND_VALUE_BYTES + MAX_KEYS_PER_COMMAND * MAX_KEY_BYTES);

/// Bytes before the first record: the magic and the version.
pub const PREAMBLE_BYTES: usize = SNAPSHOT_MAGIC.len() + 1;

/// The applied position a snapshot holds the state at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The cluster revision.
    pub revision: u64,
    /// The time of the latest applied proposal, ms since the Unix epoch.
    pub time_ms: u64,
    /// The revision the change feed is compacted through.
    pub feed_compacted: u64,
}

/// One key with its metadata and lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// The key.
    pub key: String,
    /// Its value.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Revision that created it.
    pub create_revision: u64,
    /// Revision of its last write.
    pub mod_revision: u64,
    /// Writes since creation.
    pub version: u64,
    /// The lease it is attached to, if any.
    pub lease: Option<u64>,
    /// When its value is kept in the blob store: the reference (and `value` is empty).
    pub blob: Option<aspen_api::BlobRef>,
}

/// One lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The lease's number.
    pub id: u64,
    /// Its time to live, ms.
    pub ttl_ms: u64,
}

/// How many records of each kind a stream carries; its last record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Key records.
    pub keys: u64,
    /// Change sets.
    pub changes: u64,
    /// Leases.
    pub leases: u64,
}

/// A record of the stream. Appending a variant, or changing any of these types, bumps
/// [`SNAPSHOT_DATA`]'s version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Record {
    Meta(Meta),
    Header(Header),
    Key(KeyRecord),
    Change(ChangeSet),
    Lease(LeaseRecord),
    End(Counts),
}

impl Record {
    fn name(&self) -> &'static str {
        match self {
            Record::Meta(_) => "metadata",
            Record::Header(_) => "header",
            Record::Key(_) => "key",
            Record::Change(_) => "change set",
            Record::Lease(_) => "lease",
            Record::End(_) => "end",
        }
    }
}

/// A snapshot stream that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Reading or writing the bytes failed.
    #[error("snapshot I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes do not start with the magic: not a snapshot, or a much older one.
    #[error("not an Aspen snapshot: it does not start with the snapshot magic (written by a different Aspen version, or not a snapshot)")]
    Magic,
    /// Written by another version of the format.
    #[error("the snapshot has format version {found}, this Aspen reads version {expected}: it was written by a different Aspen version")]
    Version { found: u8, expected: u8 },
    /// A record's declared length is over [`MAX_RECORD_BYTES`].
    #[error("snapshot record {index} declares {len} bytes, over the limit of {max}")]
    TooLarge { index: u64, len: usize, max: usize },
    /// A record's bytes do not decode.
    #[error("snapshot record {index} is malformed: {reason}")]
    Malformed { index: u64, reason: String },
    /// The stream ended before its end record.
    #[error("the snapshot ends after {records} records, before its end record: it is truncated")]
    Truncated { records: u64 },
    /// A record came where it may not.
    #[error("snapshot record {index} is a {found} record where {expected} was expected")]
    OutOfOrder {
        index: u64,
        found: &'static str,
        expected: &'static str,
    },
    /// The end record's counts differ from the records read.
    #[error("the snapshot's end record counts {declared:?}, but {read:?} were read")]
    Counts { declared: Counts, read: Counts },
    /// Bytes follow the end record.
    #[error("the snapshot has bytes after its end record")]
    TrailingBytes,
}

impl From<StreamError> for std::io::Error {
    fn from(e: StreamError) -> Self {
        match e {
            StreamError::Io(e) => e,
            e => std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        }
    }
}

/// Writes a snapshot stream record by record. The caller gives keys in key order, then
/// change sets in revision order, then leases in id order, and ends with [`Self::finish`].
pub struct StreamWriter<W: Write> {
    out: W,
    counts: Counts,
    buf: Vec<u8>,
}

impl<W: Write> StreamWriter<W> {
    /// Starts a stream on `out` with its metadata and header.
    pub fn start(mut out: W, meta: &Meta, header: Header) -> std::io::Result<Self> {
        out.write_all(SNAPSHOT_MAGIC)?;
        out.write_all(&[SNAPSHOT_DATA.version])?;
        let mut writer = StreamWriter {
            out,
            counts: Counts::default(),
            buf: Vec::new(),
        };
        writer.write(&Record::Meta(meta.clone()))?;
        writer.write(&Record::Header(header))?;
        Ok(writer)
    }

    fn write(&mut self, record: &Record) -> std::io::Result<()> {
        self.buf.clear();
        self.buf.extend_from_slice(&[0; 4]);
        postcard::to_io(record, &mut self.buf).map_err(std::io::Error::other)?;
        let len = self.buf.len() - 4;
        if len > MAX_RECORD_BYTES {
            // Limits on commands keep every record under this; reaching it is a bug that
            // must not produce a snapshot no node can read.
            return Err(std::io::Error::other(format!(
                "a snapshot {} record of {len} bytes is over the limit of {MAX_RECORD_BYTES}",
                record.name()
            )));
        }
        self.buf[..4].copy_from_slice(&(len as u32).to_le_bytes());
        self.out.write_all(&self.buf)
    }

    /// Writes one key.
    pub fn key(&mut self, key: KeyRecord) -> std::io::Result<()> {
        self.counts.keys += 1;
        self.write(&Record::Key(key))
    }

    /// Writes one change set of the kept feed.
    pub fn change(&mut self, set: ChangeSet) -> std::io::Result<()> {
        self.counts.changes += 1;
        self.write(&Record::Change(set))
    }

    /// Writes one lease.
    pub fn lease(&mut self, lease: LeaseRecord) -> std::io::Result<()> {
        self.counts.leases += 1;
        self.write(&Record::Lease(lease))
    }

    /// Writes the end record and gives back the output (not flushed).
    pub fn finish(mut self) -> std::io::Result<W> {
        let counts = self.counts;
        self.write(&Record::End(counts))?;
        Ok(self.out)
    }
}

/// What follows the header in a stream, one record at a time.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A key, in key order.
    Key(KeyRecord),
    /// A change set, in revision order.
    Change(ChangeSet),
    /// A lease, in id order.
    Lease(LeaseRecord),
}

/// Where a reader is in the stream's fixed order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Section {
    Keys,
    Changes,
    Leases,
    Ended,
}

/// Reads a snapshot stream record by record, checking its order and its end.
pub struct StreamReader<R: Read> {
    input: R,
    meta: Meta,
    header: Header,
    index: u64,
    section: Section,
    counts: Counts,
    last_key: Option<String>,
    last_revision: u64,
    last_lease: Option<u64>,
    buf: Vec<u8>,
}

impl<R: Read> StreamReader<R> {
    /// Opens a stream: checks the magic and version and reads the metadata and header.
    pub fn open(mut input: R) -> Result<Self, StreamError> {
        let mut preamble = [0u8; PREAMBLE_BYTES];
        let filled = fill(&mut input, &mut preamble)?;
        if filled < PREAMBLE_BYTES || preamble[..SNAPSHOT_MAGIC.len()] != SNAPSHOT_MAGIC[..] {
            return Err(StreamError::Magic);
        }
        let version = preamble[SNAPSHOT_MAGIC.len()];
        if version != SNAPSHOT_DATA.version {
            return Err(StreamError::Version {
                found: version,
                expected: SNAPSHOT_DATA.version,
            });
        }
        let mut reader = StreamReader {
            input,
            meta: Meta::default(),
            header: Header {
                revision: 0,
                time_ms: 0,
                feed_compacted: 0,
            },
            index: 0,
            section: Section::Keys,
            counts: Counts::default(),
            last_key: None,
            last_revision: 0,
            last_lease: None,
            buf: Vec::new(),
        };
        reader.meta = match reader.record()? {
            Record::Meta(meta) => meta,
            other => return Err(reader.out_of_order(&other, "the metadata")),
        };
        reader.header = match reader.record()? {
            Record::Header(header) => header,
            other => return Err(reader.out_of_order(&other, "the header")),
        };
        Ok(reader)
    }

    /// The snapshot's metadata.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// The snapshot's applied position.
    pub fn header(&self) -> Header {
        self.header
    }

    /// The records read so far after the header.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    fn out_of_order(&self, found: &Record, expected: &'static str) -> StreamError {
        StreamError::OutOfOrder {
            index: self.index - 1,
            found: found.name(),
            expected,
        }
    }

    /// Reads the next record; the input ending before it is whole is [`StreamError::Truncated`].
    fn record(&mut self) -> Result<Record, StreamError> {
        let index = self.index;
        let mut len = [0u8; 4];
        if fill(&mut self.input, &mut len)? < len.len() {
            return Err(StreamError::Truncated { records: index });
        }
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_RECORD_BYTES {
            return Err(StreamError::TooLarge {
                index,
                len,
                max: MAX_RECORD_BYTES,
            });
        }
        self.buf.resize(len, 0);
        if fill(&mut self.input, &mut self.buf)? < len {
            return Err(StreamError::Truncated { records: index });
        }
        self.index += 1;
        let (record, rest) =
            postcard::take_from_bytes(&self.buf).map_err(|e| StreamError::Malformed {
                index,
                reason: e.to_string(),
            })?;
        if !rest.is_empty() {
            return Err(StreamError::Malformed {
                index,
                reason: format!("{} bytes after the record", rest.len()),
            });
        }
        Ok(record)
    }

    /// The next key, change set or lease; `None` once the end record was read and checked.
    pub fn next_item(&mut self) -> Result<Option<Item>, StreamError> {
        if self.section == Section::Ended {
            return Ok(None);
        }
        let record = self.record()?;
        let expected = match self.section {
            Section::Keys => "a key, change set, lease or end",
            Section::Changes => "a change set, lease or end",
            Section::Leases => "a lease or end",
            Section::Ended => unreachable!("returned above"),
        };
        let (section, item) = match record {
            Record::Key(key) => {
                if self.last_key.as_ref().is_some_and(|last| *last >= key.key) {
                    return Err(self.unordered("keys are not in strictly increasing order"));
                }
                self.last_key = Some(key.key.clone());
                self.counts.keys += 1;
                (Section::Keys, Item::Key(key))
            }
            Record::Change(set) => {
                if set.revision <= self.last_revision {
                    return Err(self.unordered("change sets are not in increasing revision order"));
                }
                self.last_revision = set.revision;
                self.counts.changes += 1;
                (Section::Changes, Item::Change(set))
            }
            Record::Lease(lease) => {
                if self.last_lease.is_some_and(|last| last >= lease.id) {
                    return Err(self.unordered("leases are not in increasing id order"));
                }
                self.last_lease = Some(lease.id);
                self.counts.leases += 1;
                (Section::Leases, Item::Lease(lease))
            }
            Record::End(declared) => {
                if declared != self.counts {
                    return Err(StreamError::Counts {
                        declared,
                        read: self.counts,
                    });
                }
                let mut extra = [0u8; 1];
                if self.input.read(&mut extra)? != 0 {
                    return Err(StreamError::TrailingBytes);
                }
                self.section = Section::Ended;
                return Ok(None);
            }
            other => return Err(self.out_of_order(&other, expected)),
        };
        if section < self.section {
            return Err(StreamError::OutOfOrder {
                index: self.index - 1,
                found: match item {
                    Item::Key(_) => "key",
                    Item::Change(_) => "change set",
                    Item::Lease(_) => "lease",
                },
                expected,
            });
        }
        self.section = section;
        Ok(Some(item))
    }

    fn unordered(&self, reason: &str) -> StreamError {
        StreamError::Malformed {
            index: self.index - 1,
            reason: reason.into(),
        }
    }
}

/// Reads into `buf` until it is full or the input ends; the number of bytes read.
fn fill(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
