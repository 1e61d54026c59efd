//! The write commands of a cluster. Each command becomes exactly one Raft log entry and is
//! applied all or nothing, so a multi-key command is atomic and a failed precondition
//! changes nothing. [`Command::validate`] enforces the [limits](crate::limits) before a
//! command is proposed.

use std::collections::BTreeSet;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::blob::BlobRef;
use crate::error::ValidationError;
use crate::limits::{
    MAX_COMMAND_VALUE_BYTES, MAX_INLINE_VALUE_BYTES, MAX_KEYS_PER_COMMAND, MAX_KEY_BYTES,
    MAX_LEASE_TTL_SECS,
};

/// A condition on one key, checked inside the state machine when the command applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Precondition {
    /// The key must exist.
    Exists { key: String },
    /// The key must not exist.
    NotExists { key: String },
    /// The key must exist and hold exactly this value.
    Equals { key: String, value: Bytes },
    /// The key's `mod_revision` must be exactly this (0 means: the key must not exist).
    ModRevision { key: String, revision: u64 },
    /// The key must exist and hold exactly the value `blob` names (compared by hash and
    /// size, whether the value is kept inline or as a blob).
    BlobEquals { key: String, blob: BlobRef },
}

impl Precondition {
    /// The key this precondition checks.
    pub fn key(&self) -> &str {
        match self {
            Precondition::Exists { key }
            | Precondition::NotExists { key }
            | Precondition::Equals { key, .. }
            | Precondition::ModRevision { key, .. }
            | Precondition::BlobEquals { key, .. } => key,
        }
    }

    /// A short human description, used in error messages (`exists`, `equals`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Precondition::Exists { .. } => "exists",
            Precondition::NotExists { .. } => "not_exists",
            Precondition::Equals { .. } => "equals",
            Precondition::ModRevision { .. } => "mod_revision",
            Precondition::BlobEquals { .. } => "equals_blob",
        }
    }
}

/// One write command. See DESIGN.md, "Commands".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Set one key.
    Set { key: String, value: Bytes },
    /// Set up to [`MAX_KEYS_PER_COMMAND`] keys atomically.
    SetMulti { writes: Vec<(String, Bytes)> },
    /// Delete one key (not an error if it is absent).
    Delete { key: String },
    /// Delete up to [`MAX_KEYS_PER_COMMAND`] keys atomically.
    DeleteMulti { keys: Vec<String> },
    /// Set `key` to `new_value` only if its value is `expected` (`None`: must not exist).
    CompareAndSwap {
        key: String,
        expected: Option<Bytes>,
        new_value: Bytes,
    },
    /// Delete `key` only if its value is `expected`.
    CompareAndDelete { key: String, expected: Bytes },
    /// Apply `writes` and `deletes` only if every precondition holds.
    ConditionalSetMulti {
        preconditions: Vec<Precondition>,
        writes: Vec<(String, Bytes)>,
        deletes: Vec<String>,
    },
    /// Grant lease `lease` (a number the proposing node picked) for `ttl_ms`. Uses no
    /// revision: it changes no key.
    LeaseGrant { lease: u64, ttl_ms: u64 },
    /// End lease `lease`: delete every key attached to it, all in one revision. The
    /// leader proposes it when the lease expires; a client's revoke is the same command.
    LeaseRevoke { lease: u64 },
    /// Apply `command`, attaching each key of `attach` to its lease, which must be one of
    /// `cluster`'s (the applying cluster checks the name before proposing). A key the
    /// command writes without a lease loses any lease it had, as in etcd.
    Leased {
        cluster: String,
        attach: Vec<(String, u64)>,
        #[serde(deserialize_with = "crate::codec::nested")]
        command: Box<Command>,
    },
    /// Set `key` to the value kept in the blob store as `blob`, only if every
    /// precondition holds (none: always). The node that proposes it has made sure a
    /// majority of the cluster holds the whole blob durably.
    SetBlob {
        key: String,
        blob: BlobRef,
        preconditions: Vec<Precondition>,
    },
}

impl Command {
    /// Every key the command names, preconditions included, in order of appearance.
    pub fn keys(&self) -> Vec<&str> {
        match self {
            Command::LeaseGrant { .. } | Command::LeaseRevoke { .. } => vec![],
            Command::Leased { command, .. } => command.keys(),
            Command::SetBlob {
                key, preconditions, ..
            } => preconditions
                .iter()
                .map(Precondition::key)
                .chain([key.as_str()])
                .collect(),
            Command::Set { key, .. }
            | Command::Delete { key }
            | Command::CompareAndSwap { key, .. }
            | Command::CompareAndDelete { key, .. } => vec![key],
            Command::SetMulti { writes } => writes.iter().map(|(k, _)| k.as_str()).collect(),
            Command::DeleteMulti { keys } => keys.iter().map(String::as_str).collect(),
            Command::ConditionalSetMulti {
                preconditions,
                writes,
                deletes,
            } => preconditions
                .iter()
                .map(Precondition::key)
                .chain(writes.iter().map(|(k, _)| k.as_str()))
                .chain(deletes.iter().map(String::as_str))
                .collect(),
        }
    }

    /// The command's name as the API documents it.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Set { .. } => "set",
            Command::SetMulti { .. } => "set_multi",
            Command::Delete { .. } => "delete",
            Command::DeleteMulti { .. } => "delete_multi",
            Command::CompareAndSwap { .. } => "compare_and_swap",
            Command::CompareAndDelete { .. } => "compare_and_delete",
            Command::ConditionalSetMulti { .. } => "conditional_set_multi",
            Command::LeaseGrant { .. } => "lease_grant",
            Command::LeaseRevoke { .. } => "lease_revoke",
            Command::Leased { command, .. } => command.name(),
            Command::SetBlob { .. } => "set_blob",
        }
    }

    /// Whether the command is about a lease itself (grant, revoke) rather than keys: such
    /// a command is routed by its lease, not by keys.
    pub fn is_lease_command(&self) -> bool {
        matches!(
            self,
            Command::LeaseGrant { .. } | Command::LeaseRevoke { .. }
        )
    }

    /// The keys the command sets (puts), not those it only deletes or checks.
    pub fn put_keys(&self) -> Vec<&str> {
        match self {
            Command::Set { key, .. }
            | Command::CompareAndSwap { key, .. }
            | Command::SetBlob { key, .. } => vec![key],
            Command::SetMulti { writes } | Command::ConditionalSetMulti { writes, .. } => {
                writes.iter().map(|(k, _)| k.as_str()).collect()
            }
            Command::Leased { command, .. } => command.put_keys(),
            _ => vec![],
        }
    }

    /// Checks every limit: key sizes, value sizes, key counts, duplicate written keys.
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self {
            Command::LeaseGrant { lease, ttl_ms } => {
                check_lease_number(*lease)?;
                if *ttl_ms == 0 || *ttl_ms > MAX_LEASE_TTL_SECS * 1_000 {
                    return Err(ValidationError::field(
                        "ttl",
                        format!("{ttl_ms} ms is out of range: at most {MAX_LEASE_TTL_SECS} s"),
                    ));
                }
                return Ok(());
            }
            Command::LeaseRevoke { lease } => return check_lease_number(*lease),
            Command::Leased {
                cluster,
                attach,
                command,
            } => return validate_leased(cluster, attach, command),
            _ => {}
        }
        let keys = self.keys();
        if keys.len() > MAX_KEYS_PER_COMMAND {
            return Err(ValidationError::TooManyKeys {
                count: keys.len(),
                max: MAX_KEYS_PER_COMMAND,
            });
        }
        if keys.is_empty() {
            return Err(ValidationError::NoKeys);
        }
        for key in &keys {
            validate_key(key)?;
        }
        for (field, blob) in self.blobs() {
            blob.validate(field)?;
        }
        let mut total = 0usize;
        for value in self.values() {
            validate_value_len(value.len())?;
            total += value.len();
        }
        if total > MAX_COMMAND_VALUE_BYTES {
            return Err(ValidationError::CommandTooLarge {
                len: total,
                max: MAX_COMMAND_VALUE_BYTES,
            });
        }
        self.check_no_duplicate_writes()
    }

    /// Bytes of keys and values the command carries: about its size in a log entry.
    pub fn payload_bytes(&self) -> usize {
        let keys: usize = self.keys().iter().map(|k| k.len()).sum();
        let values: usize = self.values().iter().map(|v| v.len()).sum();
        keys + values
    }

    /// The values the command writes (inline ones; a blob's bytes are not in it).
    pub fn values(&self) -> Vec<&[u8]> {
        match self {
            Command::LeaseGrant { .. } | Command::LeaseRevoke { .. } => vec![],
            Command::Leased { command, .. } => command.values(),
            Command::Set { value, .. } => vec![value],
            Command::SetMulti { writes } => writes.iter().map(|(_, v)| &v[..]).collect(),
            Command::Delete { .. } | Command::DeleteMulti { .. } => vec![],
            Command::CompareAndSwap {
                expected,
                new_value,
                ..
            } => expected
                .iter()
                .map(|v| &v[..])
                .chain([&new_value[..]])
                .collect(),
            Command::CompareAndDelete { expected, .. } => vec![expected],
            Command::ConditionalSetMulti {
                preconditions,
                writes,
                ..
            } => equals_values(preconditions)
                .chain(writes.iter().map(|(_, v)| &v[..]))
                .collect(),
            Command::SetBlob { preconditions, .. } => equals_values(preconditions).collect(),
        }
    }

    /// The blob references the command carries, each with the field that gives it.
    fn blobs(&self) -> Vec<(&'static str, &BlobRef)> {
        let preconditions = match self {
            Command::SetBlob {
                blob,
                preconditions,
                ..
            } => {
                return std::iter::once(("blob", blob))
                    .chain(blob_preconditions(preconditions))
                    .collect()
            }
            Command::ConditionalSetMulti { preconditions, .. } => preconditions,
            Command::Leased { command, .. } => return command.blobs(),
            _ => return vec![],
        };
        blob_preconditions(preconditions).collect()
    }

    /// A key written or deleted twice in one command has no clear meaning: refuse it.
    fn check_no_duplicate_writes(&self) -> Result<(), ValidationError> {
        let written: Vec<&str> = match self {
            Command::SetMulti { writes } => writes.iter().map(|(k, _)| k.as_str()).collect(),
            Command::DeleteMulti { keys } => keys.iter().map(String::as_str).collect(),
            Command::ConditionalSetMulti {
                writes, deletes, ..
            } => writes
                .iter()
                .map(|(k, _)| k.as_str())
                .chain(deletes.iter().map(String::as_str))
                .collect(),
            _ => return Ok(()),
        };
        let mut seen = BTreeSet::new();
        for key in written {
            if !seen.insert(key) {
                return Err(ValidationError::DuplicateKey {
                    key: key.to_string(),
                });
            }
        }
        Ok(())
    }
}

fn equals_values(preconditions: &[Precondition]) -> impl Iterator<Item = &[u8]> {
    preconditions.iter().filter_map(|p| match p {
        Precondition::Equals { value, .. } => Some(&value[..]),
        _ => None,
    })
}

fn blob_preconditions(
    preconditions: &[Precondition],
) -> impl Iterator<Item = (&'static str, &BlobRef)> {
    preconditions.iter().filter_map(|p| match p {
        Precondition::BlobEquals { blob, .. } => Some(("equals_blob", blob)),
        _ => None,
    })
}

fn check_lease_number(lease: u64) -> Result<(), ValidationError> {
    if lease == 0 {
        return Err(ValidationError::field("lease", "lease numbers are never 0"));
    }
    Ok(())
}

/// A leased command: a key command inside, each attached key one it sets, at most once.
fn validate_leased(
    cluster: &str,
    attach: &[(String, u64)],
    command: &Command,
) -> Result<(), ValidationError> {
    if matches!(command, Command::Leased { .. }) || command.is_lease_command() {
        return Err(ValidationError::field(
            "lease",
            "only key writes take a lease",
        ));
    }
    command.validate()?;
    if cluster.is_empty() || attach.is_empty() {
        return Err(ValidationError::field(
            "lease",
            "a leased write names its lease's cluster and at least one key",
        ));
    }
    let puts: BTreeSet<&str> = command.put_keys().into_iter().collect();
    let mut seen = BTreeSet::new();
    for (key, lease) in attach {
        check_lease_number(*lease)?;
        if !puts.contains(key.as_str()) {
            return Err(ValidationError::field(
                "lease",
                format!("key {key:?} takes a lease but is not written by the command"),
            ));
        }
        if !seen.insert(key.as_str()) {
            return Err(ValidationError::DuplicateKey { key: key.clone() });
        }
    }
    Ok(())
}

/// Checks one key against the key rules: 1 to [`MAX_KEY_BYTES`] bytes.
pub fn validate_key(key: &str) -> Result<(), ValidationError> {
    if key.is_empty() {
        return Err(ValidationError::EmptyKey);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(ValidationError::KeyTooLarge {
            len: key.len(),
            max: MAX_KEY_BYTES,
        });
    }
    Ok(())
}

/// Checks one value's length against [`MAX_INLINE_VALUE_BYTES`].
pub fn validate_value_len(len: usize) -> Result<(), ValidationError> {
    if len > MAX_INLINE_VALUE_BYTES {
        return Err(ValidationError::ValueTooLarge {
            len,
            max: MAX_INLINE_VALUE_BYTES,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str, len: usize) -> Command {
        Command::Set {
            key: key.into(),
            value: vec![7; len].into(),
        }
    }

    #[test]
    fn key_of_max_bytes_is_accepted_and_one_more_is_refused() {
        assert!(set(&"k".repeat(MAX_KEY_BYTES), 1).validate().is_ok());
        assert_eq!(
            set(&"k".repeat(MAX_KEY_BYTES + 1), 1).validate(),
            Err(ValidationError::KeyTooLarge {
                len: MAX_KEY_BYTES + 1,
                max: MAX_KEY_BYTES
            })
        );
    }

    #[test]
    fn a_blob_write_checks_its_blob_its_key_and_its_preconditions() {
        let blob = |size| BlobRef {
            hash: [3; 32],
            size,
        };
        let set_blob = |key: &str, size, preconditions| Command::SetBlob {
            key: key.into(),
            blob: blob(size),
            preconditions,
        };
        let max = crate::limits::MAX_BLOB_VALUE_BYTES;
        assert!(set_blob("k", max, vec![]).validate().is_ok());
        assert!(matches!(
            set_blob("k", max + 1, vec![]).validate(),
            Err(ValidationError::BlobTooLarge { .. })
        ));
        assert_eq!(
            set_blob("", 5, vec![]).validate(),
            Err(ValidationError::EmptyKey)
        );
        let guarded = |p| set_blob("k", 5, vec![p]);
        assert!(guarded(Precondition::BlobEquals {
            key: "k".into(),
            blob: blob(1)
        })
        .validate()
        .is_ok());
        let err = guarded(Precondition::BlobEquals {
            key: "k".into(),
            blob: blob(0),
        })
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("equals_blob"), "{err}");
        assert!(matches!(
            guarded(Precondition::Equals {
                key: "k".into(),
                value: vec![0; MAX_INLINE_VALUE_BYTES + 1].into(),
            })
            .validate(),
            Err(ValidationError::ValueTooLarge { .. })
        ));
        assert_eq!(set_blob("k", 5, vec![]).keys(), vec!["k"]);
        assert_eq!(set_blob("k", 5, vec![]).put_keys(), vec!["k"]);
    }

    #[test]
    fn empty_key_is_refused() {
        assert_eq!(set("", 1).validate(), Err(ValidationError::EmptyKey));
    }

    #[test]
    fn value_of_inline_limit_is_accepted_and_one_more_byte_is_refused() {
        assert!(set("k", MAX_INLINE_VALUE_BYTES).validate().is_ok());
        assert!(matches!(
            set("k", MAX_INLINE_VALUE_BYTES + 1).validate(),
            Err(ValidationError::ValueTooLarge { .. })
        ));
    }

    #[test]
    fn multi_key_command_takes_at_most_the_key_limit_counting_preconditions() {
        let writes = |n: usize| {
            (0..n)
                .map(|i| (format!("k{i}"), bytes::Bytes::from_static(&[1])))
                .collect::<Vec<_>>()
        };
        let ok = Command::SetMulti {
            writes: writes(MAX_KEYS_PER_COMMAND),
        };
        assert!(ok.validate().is_ok());
        let too_many = Command::SetMulti {
            writes: writes(MAX_KEYS_PER_COMMAND + 1),
        };
        assert!(matches!(
            too_many.validate(),
            Err(ValidationError::TooManyKeys { count: 101, .. })
        ));
        let with_precondition = Command::ConditionalSetMulti {
            preconditions: vec![Precondition::Exists { key: "p".into() }],
            writes: writes(MAX_KEYS_PER_COMMAND),
            deletes: vec![],
        };
        assert!(matches!(
            with_precondition.validate(),
            Err(ValidationError::TooManyKeys { .. })
        ));
    }

    #[test]
    fn total_value_bytes_of_a_command_are_bounded() {
        let per = MAX_INLINE_VALUE_BYTES;
        let n = MAX_COMMAND_VALUE_BYTES / per;
        let fits = Command::SetMulti {
            writes: (0..n)
                .map(|i| (format!("k{i}"), vec![0; per].into()))
                .collect(),
        };
        assert!(fits.validate().is_ok());
        let over = Command::SetMulti {
            writes: (0..=n)
                .map(|i| (format!("k{i}"), vec![0; per].into()))
                .collect(),
        };
        assert!(matches!(
            over.validate(),
            Err(ValidationError::CommandTooLarge { .. })
        ));
    }

    #[test]
    fn a_key_written_twice_in_one_command_is_refused() {
        let cmd = Command::ConditionalSetMulti {
            preconditions: vec![],
            writes: vec![("a".into(), vec![1].into())],
            deletes: vec!["a".into()],
        };
        assert_eq!(
            cmd.validate(),
            Err(ValidationError::DuplicateKey { key: "a".into() })
        );
    }

    #[test]
    fn a_multi_command_without_keys_is_refused() {
        assert_eq!(
            Command::DeleteMulti { keys: vec![] }.validate(),
            Err(ValidationError::NoKeys)
        );
    }
}
