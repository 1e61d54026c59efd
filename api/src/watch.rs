//! Watches as a client sees them: `GET /v1/watch/{key}?prefix=true&start_revision=R`
//! streams the change feed of the cluster(s) owning the keys, one [`WatchMessage`] per
//! revision (a batch's or a transaction's keys arrive together), in order, with no gap
//! and no duplicate, plus a `progress` message every [`PROGRESS_INTERVAL_MS`] carrying
//! each cluster's current revision.
//!
//! Every message carries a [`ResumeToken`]: the next revision wanted from each cluster.
//! A client that lost its stream passes the last token it received as `resume` (or, with
//! Server-Sent Events, as `Last-Event-ID`) and gets exactly the revisions after it.
//! Revisions are per cluster; through a router a watch of a prefix that spans clusters
//! merges their streams and each message names its cluster.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::blob::JsonBlob;
use crate::error::ErrorCode;
use crate::feed::{ChangeKind, ChangeSet};
use crate::json::encode_value;
use crate::wire::KeyFilter;

/// How often a watch stream says where each of its clusters is, when nothing it watches
/// changed: it keeps idle connections alive and lets a client resume from a recent
/// revision rather than from its last event.
pub const PROGRESS_INTERVAL_MS: u64 = 5_000;

/// What a watch wants: its keys, and where each cluster starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchRequest {
    /// The keys watched.
    pub filter: KeyFilter,
    /// The first revision to deliver from every cluster the token does not name; `None`
    /// (or `start_revision=0`) starts after each cluster's current revision.
    pub start_revision: Option<u64>,
    /// Where to resume, per cluster.
    pub resume: ResumeToken,
}

impl WatchRequest {
    /// The revision to deliver after, for `cluster`: `None` means "from now".
    pub fn after(&self, cluster: &str) -> Option<u64> {
        match self.resume.0.get(cluster) {
            Some(next) => Some(next.saturating_sub(1)),
            None => self.start_revision.map(|r| r.saturating_sub(1)),
        }
    }
}

/// The next revision wanted from each cluster of a watch, written `us-1=17,us-2=4`.
/// Clients treat it as opaque: they keep the last one received and send it back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResumeToken(pub BTreeMap<String, u64>);

impl std::fmt::Display for ResumeToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (cluster, next)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{cluster}={next}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for ResumeToken {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut map = BTreeMap::new();
        for part in text.split(',').filter(|p| !p.is_empty()) {
            let (cluster, next) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not CLUSTER=REVISION"))?;
            let next: u64 = next
                .parse()
                .map_err(|_| format!("{next:?} in {part:?} is not a revision"))?;
            if cluster.is_empty() || map.insert(cluster.to_string(), next).is_some() {
                return Err(format!("{part:?}: cluster name empty or repeated"));
            }
        }
        Ok(ResumeToken(map))
    }
}

/// One message of a watch stream, as JSON (`kind` tells which).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", try_from = "WireMessage")]
pub enum WatchMessage {
    /// What one revision of one cluster changed among the watched keys.
    Changes {
        /// The cluster.
        cluster: String,
        /// Its revision: every event's `mod_revision`.
        revision: u64,
        /// The watched keys it wrote or deleted, in the order the command did.
        events: Vec<WatchEvent>,
        /// Where to resume after this message.
        resume: String,
    },
    /// `cluster` has been read through `revision`: nothing watched changed up to it.
    Progress {
        /// The cluster.
        cluster: String,
        /// Its revision.
        revision: u64,
        /// Where to resume after this message.
        resume: String,
    },
    /// The last message of a stream that the server ended: `compacted` (with `oldest`),
    /// `slow_watcher`, or an error of the cluster.
    Error {
        /// What ended it.
        error: WatchError,
        /// Where to resume (what was delivered before the error).
        resume: String,
    },
}

/// What a [`WatchMessage`] is read from: every field of every kind, each optional but
/// `kind`. Reading into this plain struct parses a message once, in whatever order its
/// fields come; serde's internally tagged enums first copy the whole message into an
/// untyped tree to find the tag, and a watcher of busy keys decodes one message per
/// revision.
#[derive(Deserialize)]
struct WireMessage {
    kind: MessageKind,
    cluster: Option<String>,
    revision: Option<u64>,
    events: Option<Vec<WatchEvent>>,
    resume: Option<String>,
    error: Option<WatchError>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum MessageKind {
    Changes,
    Progress,
    Error,
}

impl TryFrom<WireMessage> for WatchMessage {
    type Error = String;

    fn try_from(wire: WireMessage) -> Result<Self, String> {
        fn needs<T>(field: Option<T>, name: &str, kind: &str) -> Result<T, String> {
            field.ok_or_else(|| format!("a `{kind}` message without its `{name}` field"))
        }
        Ok(match wire.kind {
            MessageKind::Changes => WatchMessage::Changes {
                cluster: needs(wire.cluster, "cluster", "changes")?,
                revision: needs(wire.revision, "revision", "changes")?,
                events: needs(wire.events, "events", "changes")?,
                resume: needs(wire.resume, "resume", "changes")?,
            },
            MessageKind::Progress => WatchMessage::Progress {
                cluster: needs(wire.cluster, "cluster", "progress")?,
                revision: needs(wire.revision, "revision", "progress")?,
                resume: needs(wire.resume, "resume", "progress")?,
            },
            MessageKind::Error => WatchMessage::Error {
                error: needs(wire.error, "error", "error")?,
                resume: needs(wire.resume, "resume", "error")?,
            },
        })
    }
}

/// A put or a delete of one key, in a [`WatchMessage::Changes`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    /// `put` or `delete`.
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// The key.
    pub key: String,
    /// A put's value, when it is UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// A put's value as base64, when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
    /// A put's value kept in the blob store: its hash and size, instead of `value`
    /// (read the bytes with `GET /v1/kv/{key}?raw`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<JsonBlob>,
    /// A put's create revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_revision: Option<u64>,
    /// The revision of the change.
    pub mod_revision: u64,
    /// A put's version (writes since creation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

/// The type of a [`WatchEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The key now holds the event's value.
    Put,
    /// The key was deleted.
    Delete,
}

/// Why a watch stream ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchError {
    /// `compacted`, `slow_watcher`, or another error code.
    pub code: String,
    /// What happened and what to do.
    pub message: String,
    /// The cluster it concerns, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// For `compacted`: the oldest revision the cluster still keeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest: Option<u64>,
}

impl WatchError {
    /// An error with `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        WatchError {
            code: code.as_str().to_string(),
            message: message.into(),
            cluster: None,
            oldest: None,
        }
    }
}

impl WatchError {
    /// `compacted` for `cluster`: `requested` is gone, `oldest` is the oldest kept.
    pub fn compacted(cluster: &str, requested: u64, oldest: u64) -> Self {
        WatchError {
            code: ErrorCode::Compacted.as_str().to_string(),
            message: compacted_message(cluster, requested, oldest),
            cluster: Some(cluster.to_string()),
            oldest: Some(oldest),
        }
    }
}

/// What a `compacted` error says, in a stream and as a 410 answer alike.
pub fn compacted_message(cluster: &str, requested: u64, oldest: u64) -> String {
    format!(
        "cluster {cluster}: revision {requested} has been compacted: the oldest revision \
         still in the change feed is {oldest}; read the current state and watch from its \
         revision"
    )
}

/// The events of one change set, as JSON.
pub fn events_of(set: &ChangeSet) -> Vec<WatchEvent> {
    set.changes
        .iter()
        .map(|c| match &c.kind {
            ChangeKind::Put {
                value,
                create_revision,
                version,
            } => {
                let (value, value_base64) = encode_value(value);
                WatchEvent {
                    kind: EventKind::Put,
                    key: c.key.clone(),
                    value,
                    value_base64,
                    blob: None,
                    create_revision: Some(*create_revision),
                    mod_revision: set.revision,
                    version: Some(*version),
                }
            }
            ChangeKind::PutBlob {
                blob,
                create_revision,
                version,
            } => WatchEvent {
                kind: EventKind::Put,
                key: c.key.clone(),
                value: None,
                value_base64: None,
                blob: Some(JsonBlob::from(blob)),
                create_revision: Some(*create_revision),
                mod_revision: set.revision,
                version: Some(*version),
            },
            ChangeKind::Delete => WatchEvent {
                kind: EventKind::Delete,
                key: c.key.clone(),
                value: None,
                value_base64: None,
                blob: None,
                create_revision: None,
                mod_revision: set.revision,
                version: None,
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::KeyChange;

    #[test]
    fn a_resume_token_round_trips_and_bad_ones_are_refused_by_part() {
        let token: ResumeToken = "us-1=17,us-2=4".parse().unwrap();
        assert_eq!(token.0["us-1"], 17);
        assert_eq!(token.to_string(), "us-1=17,us-2=4");
        assert_eq!("".parse::<ResumeToken>().unwrap(), ResumeToken::default());
        for bad in ["us-1", "us-1=x", "=3", "a=1,a=2"] {
            let err = bad.parse::<ResumeToken>().unwrap_err();
            assert!(!err.is_empty(), "{bad}");
        }
    }

    #[test]
    fn the_token_wins_over_start_revision_and_zero_means_now() {
        let request = WatchRequest {
            filter: KeyFilter {
                key: "a".into(),
                prefix: true,
            },
            start_revision: Some(10),
            resume: "us-1=4".parse().unwrap(),
        };
        assert_eq!(request.after("us-1"), Some(3));
        assert_eq!(request.after("us-2"), Some(9));
    }

    #[test]
    fn events_carry_text_or_base64_and_deletes_carry_no_value() {
        let set = ChangeSet {
            revision: 9,
            time_ms: 1,
            changes: vec![
                KeyChange {
                    key: "a".into(),
                    kind: ChangeKind::Put {
                        value: vec![0xff].into(),
                        create_revision: 3,
                        version: 2,
                    },
                },
                KeyChange {
                    key: "b".into(),
                    kind: ChangeKind::Delete,
                },
            ],
        };
        let json = serde_json::to_value(events_of(&set)).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"type": "put", "key": "a", "value_base64": "/w==", "create_revision": 3,
                 "mod_revision": 9, "version": 2},
                {"type": "delete", "key": "b", "mod_revision": 9},
            ])
        );
    }

    #[test]
    fn messages_read_back_as_written_in_any_field_order() {
        let messages = [
            WatchMessage::Changes {
                cluster: "us-1".into(),
                revision: 9,
                events: vec![WatchEvent {
                    kind: EventKind::Delete,
                    key: "a".into(),
                    value: None,
                    value_base64: None,
                    blob: None,
                    create_revision: None,
                    mod_revision: 9,
                    version: None,
                }],
                resume: "us-1=10".into(),
            },
            WatchMessage::Progress {
                cluster: "us-2".into(),
                revision: 4,
                resume: "us-1=10,us-2=5".into(),
            },
            WatchMessage::Error {
                error: WatchError::compacted("us-1", 3, 7),
                resume: "us-1=3".into(),
            },
        ];
        for message in messages {
            let json = serde_json::to_string(&message).unwrap();
            assert_eq!(
                serde_json::from_str::<WatchMessage>(&json).unwrap(),
                message
            );
            // The same fields with `kind` last, and a field this version does not know.
            let mut value: serde_json::Value = serde_json::from_str(&json).unwrap();
            let object = value.as_object_mut().unwrap();
            let kind = object.remove("kind").unwrap();
            object.insert("added_later".into(), serde_json::json!(1));
            object.insert("kind".into(), kind);
            assert_eq!(
                serde_json::from_value::<WatchMessage>(value).unwrap(),
                message
            );
        }
    }

    #[test]
    fn a_message_missing_a_field_of_its_kind_is_refused_by_name() {
        for (json, field) in [
            (
                r#"{"kind":"changes","cluster":"c","revision":1,"resume":"c=2"}"#,
                "events",
            ),
            (
                r#"{"kind":"progress","cluster":"c","resume":"c=2"}"#,
                "revision",
            ),
            (r#"{"kind":"error","resume":"c=2"}"#, "error"),
        ] {
            let err = serde_json::from_str::<WatchMessage>(json)
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("`{field}`")), "{json}: {err}");
        }
        let err = serde_json::from_str::<WatchMessage>(r#"{"kind":"gone","resume":""}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("gone"), "{err}");
    }
}
