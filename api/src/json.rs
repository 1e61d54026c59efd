//! The JSON bodies of the public HTTP API (DESIGN.md, "HTTP API") and their conversion to
//! and from [`Command`]s and [`KvEntry`]s.
//!
//! Values travel as `"value"` (UTF-8 text) or, for bytes that are not UTF-8,
//! `"value_base64"`; requests accept either, never both. Every request struct refuses
//! unknown fields, so a typo is an error rather than a silently ignored option.

use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize};

use crate::blob::JsonBlob;
use crate::command::{Command, Precondition};
use crate::error::{ErrorCode, ValidationError};
use crate::lease::LeaseId;
use crate::types::{KeyState, KvEntry, PreconditionFailure, ScanPage};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Splits bytes into the JSON pair: text when they are UTF-8, base64 otherwise.
pub fn encode_value(bytes: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (Some(text.to_string()), None),
        Err(_) => (None, Some(B64.encode(bytes))),
    }
}

/// Joins the JSON pair back into bytes; exactly one of the two must be present.
pub fn decode_value(
    field: &str,
    text: Option<String>,
    base64: Option<String>,
) -> Result<Bytes, ValidationError> {
    match (text, base64) {
        (Some(text), None) => Ok(Bytes::from(text.into_bytes())),
        (None, Some(b64)) => B64.decode(b64.as_bytes()).map(Bytes::from).map_err(|e| {
            ValidationError::field(format!("{field}_base64"), format!("not valid base64: {e}"))
        }),
        (Some(_), Some(_)) => Err(ValidationError::field(
            field,
            format!("give either `{field}` or `{field}_base64`, not both"),
        )),
        (None, None) => Err(ValidationError::field(
            field,
            format!("missing: give `{field}` (UTF-8 text) or `{field}_base64`"),
        )),
    }
}

/// Distinguishes an explicit `null` from a missing field.
fn explicit<'de, D, T>(de: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(de).map(Some)
}

/// One key and value to write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonWrite {
    /// The key.
    pub key: String,
    /// The value as UTF-8 text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The value as base64, for bytes that are not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
    /// The lease the key is attached to (`cluster:hex`); the key is deleted when the lease
    /// ends. Without it, the key keeps no lease it had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
}

impl JsonWrite {
    /// A write of `value` to `key`, encoded as text or base64 as needed.
    pub fn new(key: impl Into<String>, value: &[u8]) -> Self {
        let (value, value_base64) = encode_value(value);
        JsonWrite {
            key: key.into(),
            value,
            value_base64,
            lease: None,
        }
    }

    /// This write, attached to `lease`.
    pub fn with_lease(mut self, lease: &LeaseId) -> Self {
        self.lease = Some(lease.to_string());
        self
    }
}

/// Decoded writes and the leases some of them take.
type Writes = (Vec<(String, Bytes)>, Vec<(String, LeaseId)>);

fn decode_writes(writes: Vec<JsonWrite>) -> Result<Writes, ValidationError> {
    let mut pairs = Vec::with_capacity(writes.len());
    let mut leases = Vec::new();
    for (i, w) in writes.into_iter().enumerate() {
        let at = format!("writes[{i}]");
        let value = decode_value(&format!("{at}.value"), w.value, w.value_base64)?;
        if let Some(lease) = w.lease {
            leases.push((
                w.key.clone(),
                LeaseId::parse_field(&format!("{at}.lease"), &lease)?,
            ));
        }
        pairs.push((w.key, value));
    }
    Ok((pairs, leases))
}

/// `command` with `leases` attached (as [`Command::Leased`]), or as it is when none is.
/// All of one command's leases are of one cluster, as all its keys are.
pub fn with_leases(
    command: Command,
    leases: Vec<(String, LeaseId)>,
) -> Result<Command, ValidationError> {
    let Some((_, first)) = leases.first() else {
        return Ok(command);
    };
    let cluster = first.cluster.clone();
    if let Some((key, other)) = leases.iter().find(|(_, l)| l.cluster != cluster) {
        return Err(ValidationError::field(
            "lease",
            format!(
                "key {key:?} takes a lease of cluster {}, another key one of {cluster}: \
                 one command's leases and keys all belong to one cluster",
                other.cluster
            ),
        ));
    }
    Ok(Command::Leased {
        cluster,
        attach: leases.into_iter().map(|(k, l)| (k, l.id)).collect(),
        command: Box::new(command),
    })
}

/// `POST /v1/batch`: set and delete several keys atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// Keys to set.
    #[serde(default)]
    pub writes: Vec<JsonWrite>,
    /// Keys to delete.
    #[serde(default)]
    pub deletes: Vec<String>,
}

impl BatchRequest {
    /// The command: SetMulti, DeleteMulti, or both in one conditional-free entry.
    pub fn into_command(self) -> Result<Command, ValidationError> {
        let (writes, leases) = decode_writes(self.writes)?;
        let command = match (writes.is_empty(), self.deletes.is_empty()) {
            (false, true) => Command::SetMulti { writes },
            (true, false) => Command::DeleteMulti { keys: self.deletes },
            _ => Command::ConditionalSetMulti {
                preconditions: vec![],
                writes,
                deletes: self.deletes,
            },
        };
        let command = with_leases(command, leases)?;
        command.validate()?;
        Ok(command)
    }
}

/// `POST /v1/cas`: set `key` to `new_value` if it holds `expected` (`null`: must not exist).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CasRequest {
    /// The key.
    pub key: String,
    /// The expected value as text; `null` means the key must not exist.
    #[serde(
        default,
        deserialize_with = "explicit",
        skip_serializing_if = "Option::is_none"
    )]
    pub expected: Option<Option<String>>,
    /// The expected value as base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_base64: Option<String>,
    /// The expected value by hash and size (a blob's reference, as `GET` shows it),
    /// instead of `expected`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_blob: Option<JsonBlob>,
    /// The new value as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_value: Option<String>,
    /// The new value as base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_value_base64: Option<String>,
    /// The lease the key takes when the swap succeeds (`cluster:hex`): with
    /// `expected: null`, the usual way to take a lock or win an election.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
}

impl CasRequest {
    /// A request for `key` from `expected` (`None`: must not exist) to `new_value`.
    pub fn new(key: impl Into<String>, expected: Option<&[u8]>, new_value: &[u8]) -> Self {
        let (expected, expected_base64) = match expected {
            None => (Some(None), None),
            Some(bytes) => {
                let (t, b) = encode_value(bytes);
                (t.map(Some), b)
            }
        };
        let (new_value, new_value_base64) = encode_value(new_value);
        CasRequest {
            key: key.into(),
            expected,
            expected_base64,
            expected_blob: None,
            new_value,
            new_value_base64,
            lease: None,
        }
    }

    /// The CompareAndSwap command.
    pub fn into_command(self) -> Result<Command, ValidationError> {
        let expected_blob = match self.expected_blob {
            Some(_) if self.expected.is_some() || self.expected_base64.is_some() => {
                return Err(ValidationError::field(
                    "expected_blob",
                    "give one of `expected`, `expected_base64` and `expected_blob`",
                ))
            }
            Some(blob) => Some(blob.parse("expected_blob")?),
            None => None,
        };
        let expected = match (self.expected, self.expected_base64) {
            _ if expected_blob.is_some() => None,
            (Some(None), None) => None,
            (None, None) => {
                return Err(ValidationError::field(
                    "expected",
                    "missing: give the expected value, or null if the key must not exist",
                ))
            }
            (text, b64) => Some(decode_value("expected", text.flatten(), b64)?),
        };
        let new_value = decode_value("new_value", self.new_value, self.new_value_base64)?;
        let leases = match &self.lease {
            Some(lease) => vec![(self.key.clone(), LeaseId::parse_field("lease", lease)?)],
            None => vec![],
        };
        let command = match expected_blob {
            // A blob is compared by reference: the same command as a one-precondition txn.
            Some(blob) => Command::ConditionalSetMulti {
                preconditions: vec![Precondition::BlobEquals {
                    key: self.key.clone(),
                    blob,
                }],
                writes: vec![(self.key, new_value)],
                deletes: vec![],
            },
            None => Command::CompareAndSwap {
                key: self.key,
                expected,
                new_value,
            },
        };
        let command = with_leases(command, leases)?;
        command.validate()?;
        Ok(command)
    }
}

/// `POST /v1/cad`: delete `key` if it holds `expected`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CadRequest {
    /// The key.
    pub key: String,
    /// The expected value as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    /// The expected value as base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_base64: Option<String>,
    /// The expected value by hash and size (a blob's reference, as `GET` shows it),
    /// instead of `expected`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_blob: Option<JsonBlob>,
}

impl CadRequest {
    /// A request to delete `key` if it holds `expected`.
    pub fn new(key: impl Into<String>, expected: &[u8]) -> Self {
        let (expected, expected_base64) = encode_value(expected);
        CadRequest {
            key: key.into(),
            expected,
            expected_base64,
            expected_blob: None,
        }
    }

    /// The CompareAndDelete command.
    pub fn into_command(self) -> Result<Command, ValidationError> {
        if let Some(blob) = &self.expected_blob {
            if self.expected.is_some() || self.expected_base64.is_some() {
                return Err(ValidationError::field(
                    "expected_blob",
                    "give one of `expected`, `expected_base64` and `expected_blob`",
                ));
            }
            let command = Command::ConditionalSetMulti {
                preconditions: vec![Precondition::BlobEquals {
                    key: self.key.clone(),
                    blob: blob.parse("expected_blob")?,
                }],
                writes: vec![],
                deletes: vec![self.key],
            };
            command.validate()?;
            return Ok(command);
        }
        let expected = decode_value("expected", self.expected, self.expected_base64)?;
        let command = Command::CompareAndDelete {
            key: self.key,
            expected,
        };
        command.validate()?;
        Ok(command)
    }
}

/// One precondition of `POST /v1/txn`: exactly one of the condition fields is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonPrecondition {
    /// The key checked.
    pub key: String,
    /// `true`: the key must exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exists: Option<bool>,
    /// `true`: the key must not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_exists: Option<bool>,
    /// The key must hold this text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<String>,
    /// The key must hold these bytes (base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals_base64: Option<String>,
    /// The key's mod_revision must be this (0: the key must not exist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mod_revision: Option<u64>,
    /// The key must hold the value with this hash and size (a blob's reference, as `GET`
    /// shows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals_blob: Option<JsonBlob>,
}

impl JsonPrecondition {
    fn into_precondition(self, at: &str) -> Result<Precondition, ValidationError> {
        let key = self.key;
        let given = [
            self.exists.is_some(),
            self.not_exists.is_some(),
            self.equals.is_some() || self.equals_base64.is_some(),
            self.mod_revision.is_some(),
            self.equals_blob.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(ValidationError::field(
                at,
                "give exactly one of `exists: true`, `not_exists: true`, `equals`/`equals_base64`, \
                 `mod_revision`, `equals_blob`",
            ));
        }
        if self.exists == Some(false) || self.not_exists == Some(false) {
            return Err(ValidationError::field(
                at,
                "`exists` and `not_exists` take only `true`; use the other one instead of `false`",
            ));
        }
        Ok(if self.exists.is_some() {
            Precondition::Exists { key }
        } else if self.not_exists.is_some() {
            Precondition::NotExists { key }
        } else if let Some(revision) = self.mod_revision {
            Precondition::ModRevision { key, revision }
        } else if let Some(blob) = &self.equals_blob {
            let blob = blob.parse(&format!("{at}.equals_blob"))?;
            Precondition::BlobEquals { key, blob }
        } else {
            let value = decode_value(&format!("{at}.equals"), self.equals, self.equals_base64)?;
            Precondition::Equals { key, value }
        })
    }

    /// The JSON form of a precondition.
    pub fn from_precondition(p: &Precondition) -> Self {
        let mut out = JsonPrecondition {
            key: p.key().to_string(),
            ..Default::default()
        };
        match p {
            Precondition::Exists { .. } => out.exists = Some(true),
            Precondition::NotExists { .. } => out.not_exists = Some(true),
            Precondition::Equals { value, .. } => {
                (out.equals, out.equals_base64) = encode_value(value);
            }
            Precondition::ModRevision { revision, .. } => out.mod_revision = Some(*revision),
            Precondition::BlobEquals { blob, .. } => out.equals_blob = Some(JsonBlob::from(blob)),
        }
        out
    }
}

/// `POST /v1/txn`: a ConditionalSetMulti.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxnRequest {
    /// Conditions that must all hold.
    #[serde(default)]
    pub preconditions: Vec<JsonPrecondition>,
    /// Keys to set if they hold.
    #[serde(default)]
    pub writes: Vec<JsonWrite>,
    /// Keys to delete if they hold.
    #[serde(default)]
    pub deletes: Vec<String>,
}

impl TxnRequest {
    /// The ConditionalSetMulti command.
    pub fn into_command(self) -> Result<Command, ValidationError> {
        let preconditions = self
            .preconditions
            .into_iter()
            .enumerate()
            .map(|(i, p)| p.into_precondition(&format!("preconditions[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let (writes, leases) = decode_writes(self.writes)?;
        let command = Command::ConditionalSetMulti {
            preconditions,
            writes,
            deletes: self.deletes,
        };
        let command = with_leases(command, leases)?;
        command.validate()?;
        Ok(command)
    }
}

/// A stored entry as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonEntry {
    /// The key.
    pub key: String,
    /// The value, when it is UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The value as base64, when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
    /// When the value is kept in the blob store: its hash and size, instead of `value`
    /// (`?raw` returns its bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<JsonBlob>,
    /// Revision that created the key.
    pub create_revision: u64,
    /// Revision of the last write.
    pub mod_revision: u64,
    /// Writes since creation.
    pub version: u64,
    /// The cluster that owns the key.
    pub cluster: String,
}

impl JsonEntry {
    /// The JSON form of an entry of `cluster`.
    pub fn new(entry: &KvEntry, cluster: &str) -> Self {
        let (value, value_base64) = match entry.blob {
            Some(_) => (None, None),
            None => encode_value(&entry.value),
        };
        JsonEntry {
            key: entry.key.clone(),
            value,
            value_base64,
            blob: entry.blob.as_ref().map(JsonBlob::from),
            create_revision: entry.create_revision,
            mod_revision: entry.mod_revision,
            version: entry.version,
            cluster: cluster.to_string(),
        }
    }

    /// Back to an entry (for clients).
    pub fn into_entry(self) -> Result<KvEntry, ValidationError> {
        let (value, blob) = match (&self.blob, &self.value, &self.value_base64) {
            (Some(blob), None, None) => (Vec::new(), Some(blob.parse("blob")?)),
            (Some(_), _, _) => {
                return Err(ValidationError::field(
                    "blob",
                    "an entry holds either `value`/`value_base64` or `blob`, not both",
                ))
            }
            (None, _, _) => (
                decode_value("value", self.value, self.value_base64)?.into(),
                None,
            ),
        };
        Ok(KvEntry {
            value,
            key: self.key,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            blob,
        })
    }
}

/// `GET /v1/kv/{prefix}?prefix=true`: one page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanResponse {
    /// Entries in key order.
    pub kvs: Vec<JsonEntry>,
    /// True when more keys follow.
    pub more: bool,
    /// Pass as `after` for the next page (present when `more`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

impl ScanResponse {
    /// The JSON form of a page of `cluster`.
    pub fn new(page: &ScanPage, cluster: &str) -> Self {
        ScanResponse {
            kvs: page
                .kvs
                .iter()
                .map(|e| JsonEntry::new(e, cluster))
                .collect(),
            more: page.more,
            next: page.next().map(str::to_string),
        }
    }
}

/// The answer to a successful write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteResponse {
    /// The revision of the write.
    pub revision: u64,
    /// The cluster that applied it.
    pub cluster: String,
    /// For deletes: whether a key was deleted (single delete, CAD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<bool>,
    /// For batches: how many keys were deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_count: Option<u32>,
}

/// A key's state in a 409 answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonKeyState {
    /// The key.
    pub key: String,
    /// Whether it existed.
    pub exists: bool,
    /// Its value, when it existed and is UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Its value as base64, when it existed and is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
    /// Its mod_revision, when it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mod_revision: Option<u64>,
    /// Its create_revision, when it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_revision: Option<u64>,
    /// Its version, when it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

impl JsonKeyState {
    /// The JSON form of a key state.
    pub fn new(state: &KeyState) -> Self {
        let mut out = JsonKeyState {
            key: state.key.clone(),
            exists: state.entry.is_some(),
            value: None,
            value_base64: None,
            mod_revision: None,
            create_revision: None,
            version: None,
        };
        if let Some(e) = &state.entry {
            (out.value, out.value_base64) = encode_value(&e.value);
            out.mod_revision = Some(e.mod_revision);
            out.create_revision = Some(e.create_revision);
            out.version = Some(e.version);
        }
        out
    }
}

/// Which precondition failed, in a 409 answer to `POST /v1/txn`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonFailure {
    /// Index of the first failed precondition.
    pub index: usize,
    /// That precondition.
    pub precondition: JsonPrecondition,
    /// The key's actual state.
    pub actual: JsonKeyState,
}

/// The `error` object of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable code, by its JSON name (`bad_request`, ...).
    #[serde(with = "code_name")]
    pub code: ErrorCode,
    /// Human message.
    pub message: String,
}

/// An [`ErrorCode`] in JSON: its name.
mod code_name {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::error::ErrorCode;

    pub fn serialize<S: Serializer>(code: &ErrorCode, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(code.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ErrorCode, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// Every error answer: `{"error": {...}}`, plus `actual` (CAS, CAD) or `failed` (txn)
/// when a precondition failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Code and message.
    pub error: ErrorDetail,
    /// CAS / CAD mismatch: the key's actual state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual: Option<JsonKeyState>,
    /// Txn mismatch: the first failed precondition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<JsonFailure>,
}

impl ErrorBody {
    /// A plain error body.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code,
                message: message.into(),
            },
            actual: None,
            failed: None,
        }
    }

    /// The 409 body for a failed precondition of `command_name`.
    pub fn precondition_failed(failure: &PreconditionFailure, is_txn: bool) -> Self {
        let actual = JsonKeyState::new(&failure.actual);
        let mut body = ErrorBody::new(
            ErrorCode::PreconditionFailed,
            format!(
                "precondition {} ({} on key {:?}) did not hold; nothing was changed",
                failure.index,
                failure.precondition.kind(),
                failure.actual.key
            ),
        );
        if is_txn {
            body.failed = Some(JsonFailure {
                index: failure.index,
                precondition: JsonPrecondition::from_precondition(&failure.precondition),
                actual,
            });
        } else {
            body.actual = Some(actual);
        }
        body
    }
}
