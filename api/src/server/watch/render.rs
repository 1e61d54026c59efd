//! How a watch is written on its connection: each message as one JSON object, framed as
//! a Server-Sent Event or an NDJSON line.
//!
//! A change set that many watchers take whole (a hundred watchers of one prefix, say) is
//! one [`SharedSet`]: its events are turned into JSON once, by the first watcher that
//! writes it, and every other watcher copies those bytes. So the cost per watcher of a
//! revision is a copy and its own resume token, not an encoding of every value.

use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use crate::feed::ChangeSet;
use crate::watch::{events_of, ResumeToken, WatchMessage};

use super::{WatchFrame, WatchItem};

/// A change set on its way to watchers, with its events' JSON made at most once.
#[derive(Debug)]
pub struct SharedSet {
    set: ChangeSet,
    events_json: OnceLock<String>,
}

impl SharedSet {
    /// `set`, ready to be shared among watchers.
    pub fn new(set: ChangeSet) -> Arc<SharedSet> {
        Arc::new(SharedSet {
            set,
            events_json: OnceLock::new(),
        })
    }

    /// The events of the set as a JSON array, made on first use.
    fn events_json(&self) -> &str {
        self.events_json.get_or_init(|| {
            serde_json::to_string(&events_of(&self.set)).expect("watch events always serialize")
        })
    }
}

impl Deref for SharedSet {
    type Target = ChangeSet;

    fn deref(&self) -> &ChangeSet {
        &self.set
    }
}

impl PartialEq for SharedSet {
    fn eq(&self, other: &Self) -> bool {
        self.set == other.set
    }
}

impl Eq for SharedSet {}

/// How a watch is written on the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    Sse,
    NdJson,
}

/// Writes one message's JSON in `framing` to `out`; `event` and `id` are its SSE event
/// name and id.
fn frame(out: &mut Vec<u8>, framing: Framing, event: &str, id: &str, json: &str) {
    match framing {
        Framing::NdJson => {
            out.extend_from_slice(json.as_bytes());
            out.push(b'\n');
        }
        Framing::Sse => {
            for part in ["event: ", event, "\nid: ", id, "\ndata: ", json, "\n\n"] {
                out.extend_from_slice(part.as_bytes());
            }
        }
    }
}

/// Writes `message` in `framing` to `out`.
pub(super) fn render(out: &mut Vec<u8>, framing: Framing, message: &WatchMessage) {
    let json = serde_json::to_string(message).expect("watch messages always serialize");
    let (event, id) = match message {
        WatchMessage::Changes { resume, .. } => ("changes", resume),
        WatchMessage::Progress { resume, .. } => ("progress", resume),
        WatchMessage::Error { resume, .. } => ("error", resume),
    };
    frame(out, framing, event, id, &json);
}

/// A JSON string literal.
fn json_string(text: &str) -> String {
    serde_json::to_string(text).expect("strings always serialize")
}

/// The JSON of a `changes` message, byte for byte what serializing the
/// [`WatchMessage::Changes`] would give, with the set's shared events.
fn changes_json(cluster: &str, set: &SharedSet, resume: &str) -> String {
    let (cluster, resume) = (json_string(cluster), json_string(resume));
    let events = set.events_json();
    let revision = set.revision;
    format!(
        r#"{{"kind":"changes","cluster":{cluster},"revision":{revision},"events":{events},"resume":{resume}}}"#
    )
}

/// Turns the backend's items into framed messages, keeping the resume token up to date.
pub(super) struct Renderer {
    pub(super) token: ResumeToken,
    pub(super) framing: Framing,
}

impl Renderer {
    /// Writes `item` to `out`.
    pub(super) fn write(&mut self, out: &mut Vec<u8>, item: WatchItem) {
        match item {
            WatchItem::Frame(WatchFrame::Changes { cluster, set }) => {
                self.token.0.insert(cluster.clone(), set.revision + 1);
                let resume = self.token.to_string();
                let json = changes_json(&cluster, &set, &resume);
                frame(out, self.framing, "changes", &resume, &json);
            }
            WatchItem::Frame(WatchFrame::Progress { cluster, revision }) => {
                let next = self.token.0.entry(cluster.clone()).or_insert(0);
                *next = (*next).max(revision + 1);
                let message = WatchMessage::Progress {
                    cluster,
                    revision,
                    resume: self.token.to_string(),
                };
                render(out, self.framing, &message);
            }
            WatchItem::End(error) => {
                let message = WatchMessage::Error {
                    error,
                    resume: self.token.to_string(),
                };
                render(out, self.framing, &message);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::{ChangeKind, KeyChange};

    fn set() -> Arc<SharedSet> {
        let put = |key: &str, value: &[u8]| KeyChange {
            key: key.into(),
            kind: ChangeKind::Put {
                value: value.to_vec().into(),
                create_revision: 3,
                version: 2,
            },
        };
        SharedSet::new(ChangeSet {
            revision: 7,
            time_ms: 1,
            changes: vec![
                put("a\"quoted\"\n", b"text \\ with escapes"),
                put("b", &[0xff, 0x00, 0x80]),
                KeyChange {
                    key: "gone".into(),
                    kind: ChangeKind::Delete,
                },
            ],
        })
    }

    #[test]
    fn a_shared_changes_message_is_byte_for_byte_the_serialized_message() {
        let set = set();
        for framing in [Framing::Sse, Framing::NdJson] {
            let mut renderer = Renderer {
                token: "us-2=4".parse().unwrap(),
                framing,
            };
            let mut fast = Vec::new();
            let frame = WatchFrame::Changes {
                cluster: "us-\"1\"".into(),
                set: set.clone(),
            };
            renderer.write(&mut fast, WatchItem::Frame(frame));
            let mut slow = Vec::new();
            let message = WatchMessage::Changes {
                cluster: "us-\"1\"".into(),
                revision: 7,
                events: events_of(&set),
                resume: renderer.token.to_string(),
            };
            render(&mut slow, framing, &message);
            assert_eq!(
                String::from_utf8(fast).unwrap(),
                String::from_utf8(slow).unwrap()
            );
        }
    }

    #[test]
    fn a_changes_message_moves_its_cluster_in_the_token_and_keeps_the_others() {
        let mut renderer = Renderer {
            token: "us-2=4".parse().unwrap(),
            framing: Framing::NdJson,
        };
        let frame = WatchFrame::Changes {
            cluster: "us-1".into(),
            set: set(),
        };
        let mut out = Vec::new();
        renderer.write(&mut out, WatchItem::Frame(frame));
        let message: WatchMessage =
            serde_json::from_slice(out.strip_suffix(b"\n").unwrap()).unwrap();
        match message {
            WatchMessage::Changes { resume, .. } => assert_eq!(resume, "us-1=8,us-2=4"),
            other => panic!("expected changes, got {other:?}"),
        }
    }

    #[test]
    fn the_events_of_a_shared_set_are_encoded_once() {
        let set = set();
        let first = set.events_json() as *const str;
        let again = set.events_json() as *const str;
        assert_eq!(
            first, again,
            "the second watcher reuses the first one's bytes"
        );
        let back: Vec<crate::watch::WatchEvent> = serde_json::from_str(set.events_json()).unwrap();
        assert_eq!(back, events_of(&set));
    }

    #[test]
    fn sse_frames_carry_the_resume_token_as_their_id() {
        let message = WatchMessage::Progress {
            cluster: "us-1".into(),
            revision: 4,
            resume: "us-1=5".into(),
        };
        let mut sse = Vec::new();
        render(&mut sse, Framing::Sse, &message);
        let text = String::from_utf8(sse).unwrap();
        assert!(
            text.starts_with("event: progress\nid: us-1=5\ndata: {"),
            "{text}"
        );
        assert!(text.ends_with("}\n\n"));
        let mut line = Vec::new();
        render(&mut line, Framing::NdJson, &message);
        let line = String::from_utf8(line).unwrap();
        let back: WatchMessage = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(back, message);
    }
}
