//! Seed inputs: valid messages of every variant, requests of every route, the example
//! configs. A fuzz run starts from the committed corpus; these seeded it, and seed it
//! again after a format change makes the old corpus decode to nothing:
//! `ASPEN_FUZZ_WRITE_SEEDS=1 cargo test -p aspen-fuzz write_seed_corpus -- --ignored`
//! writes them into `fuzz/corpus/NAME/` (then run `scripts/fuzz.sh NAME` to minimize).

use std::collections::{BTreeMap, BTreeSet};

use aspen_api::feed::{ChangeKind, ChangeSet, KeyChange};
use aspen_api::wire;
use aspen_cluster_node::raft_network::message::{self, RaftAnswer, RaftRequest};
use aspen_cluster_node::raft_network::snapshot::{Offer, Reply, SNAPSHOT_FORMAT};
use aspen_cluster_node::raft_types::{MemberNode, Proposal};
use aspen_cluster_node::storage::snapshot::stream::{Header, KeyRecord, LeaseRecord, StreamWriter};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, Membership, SnapshotMeta, StoredMembership, Vote,
};
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;

use crate::corpus::corpus_dir;
use crate::TARGETS;

/// `count` values of `strategy`, the same on every run.
fn sample<S: Strategy>(strategy: S, count: usize) -> Vec<S::Value> {
    let mut runner = TestRunner::deterministic();
    (0..count)
        .map(|_| strategy.new_tree(&mut runner).expect("a value").current())
        .collect()
}

fn kv_message() -> Vec<Vec<u8>> {
    let requests = sample(aspen_api::testing::kv_request(), 24);
    let answers = sample(aspen_api::testing::kv_response(), 24);
    let requests = requests.iter().map(|r| wire::encode(r).expect("small"));
    let answers = answers.iter().map(|a| wire::encode(a).expect("small"));
    requests.chain(answers).collect()
}

fn log_id(index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(2, 1), index)
}

fn raft_message() -> Vec<Vec<u8>> {
    let nodes: BTreeMap<u64, MemberNode> = (1..=3)
        .map(|id| {
            let node = MemberNode {
                endpoint_id: format!("{id:064x}"),
                addrs: vec![format!("127.0.0.1:740{id}")],
            };
            (id, node)
        })
        .collect();
    let membership = Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes);
    let commands = sample(aspen_api::testing::command(), 3);
    let entries = vec![
        Entry {
            log_id: log_id(4),
            payload: EntryPayload::Blank,
        },
        Entry {
            log_id: log_id(5),
            payload: EntryPayload::Normal(Proposal {
                commands,
                time_ms: 1_700_000_000_000,
            }),
        },
        Entry {
            log_id: log_id(6),
            payload: EntryPayload::Membership(membership.clone()),
        },
    ];
    let vote = Vote::new_committed(2, 1);
    let requests = [
        RaftRequest::Vote(VoteRequest {
            vote: Vote::new(3, 2),
            last_log_id: Some(log_id(6)),
        }),
        RaftRequest::AppendEntries(AppendEntriesRequest {
            vote,
            prev_log_id: Some(log_id(3)),
            entries,
            leader_commit: Some(log_id(5)),
        }),
    ];
    let answers = [
        RaftAnswer::AppendEntries(Ok(AppendEntriesResponse::Success)),
        RaftAnswer::AppendEntries(Ok(AppendEntriesResponse::PartialSuccess(Some(log_id(5))))),
        RaftAnswer::AppendEntries(Ok(AppendEntriesResponse::Conflict)),
        RaftAnswer::AppendEntries(Ok(AppendEntriesResponse::HigherVote(vote))),
        RaftAnswer::Vote(Ok(VoteResponse {
            vote,
            vote_granted: true,
            last_log_id: Some(log_id(6)),
        })),
        RaftAnswer::Refused("not a member".into()),
    ];
    let requests = requests.iter().map(message::encode);
    requests
        .chain(answers.iter().map(message::encode))
        .collect()
}

/// A selector byte, then the text.
fn selected(selector: u8, text: &str) -> Vec<u8> {
    [&[selector][..], text.as_bytes()].concat()
}

fn http_body() -> Vec<Vec<u8>> {
    let bodies: [(u8, &str); 10] = [
        (
            0,
            r#"{"writes":[{"key":"w/a","value":"1"},{"key":"w/b","value_base64":"AAE="}],"deletes":["w/c"]}"#,
        ),
        (
            0,
            r#"{"writes":[{"key":"w/a","value":"1","lease":"fuzz-1:0000000000000001"}]}"#,
        ),
        (0, r#"{"deletes":["w/a","w/b"]}"#),
        (1, r#"{"key":"w/k","expected":null,"new_value":"v"}"#),
        (
            1,
            r#"{"key":"w/k","expected_base64":"dg==","new_value":"x","lease":"fuzz-1:1"}"#,
        ),
        (2, r#"{"key":"w/k","expected":"v"}"#),
        (
            3,
            r#"{"preconditions":[{"key":"w/a","exists":true},{"key":"w/b","not_exists":true},{"key":"w/c","equals":"x"},{"key":"w/d","mod_revision":3},{"key":"w/e","equals_base64":"eA=="}],"writes":[{"key":"w/f","value":"1"}],"deletes":["w/g"]}"#,
        ),
        (4, r#"{"ttl":10,"key":"w/k"}"#),
        (4, r#"{"ttl":10}"#),
        (4, r#"{"ttl":0}"#),
    ];
    // Each body without [auth], and with the write token and the read token.
    let callers = [0u8, 3, 2];
    callers
        .iter()
        .flat_map(|c| bodies.iter().map(move |(r, b)| selected(r + 5 * c, b)))
        .collect()
}

fn http_request() -> Vec<Vec<u8>> {
    let requests: [(u8, &str); 14] = [
        (0, "a%2Fb%20c"),
        (0, "w/k\nprefix=true&limit=10&after=w%2Fa"),
        (0, "k\nconsistency=stale&max_lag=2s"),
        (0, "k\nindex=5&wait=1s"),
        (0, "k\nraw"),
        (0, "\nprefix=true"),
        (1, "w/k\nlease=fuzz-1:0000000000000001\n\n\nvalue"),
        (2, "w/k"),
        (
            3,
            "w/\nprefix=true&start_revision=3&resume=fuzz-1%3D4\nfuzz-1=5",
        ),
        (4, "fuzz-1:00000000000000ab"),
        (5, "fuzz-1:1"),
        (6, "fuzz-1:2"),
        (7, "/v1/kv/x"),
        (7 | 3 << 3, "/v1/batch"),
    ];
    let mut seeds: Vec<Vec<u8>> = requests.iter().map(|(s, t)| selected(*s, t)).collect();
    for token in [crate::http::WRITE_TOKEN, crate::http::READ_TOKEN] {
        for (selector, text) in &requests {
            let mut fields: Vec<&str> = text.splitn(5, '\n').collect();
            fields.resize(5, "");
            let authorization = format!("Bearer {token}");
            fields[3] = &authorization;
            seeds.push(selected(selector | 0x80, &fields.join("\n")));
        }
    }
    seeds
}

fn config() -> Vec<Vec<u8>> {
    let examples = crate::corpus::fuzz_dir().join("../config/examples");
    let mut seeds: Vec<Vec<u8>> = ["node.toml", "router.toml"]
        .iter()
        .map(|name| std::fs::read(examples.join(name)).expect("the example configs"))
        .collect();
    let auth = "\n[auth]\nopen_paths = [\"/healthz\"]\n[[auth.tokens]]\nname = \"app\"\n\
                sha256 = \"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824\"\n\
                read = [\"r/\"]\nwrite = [\"w/\", \"\"]\nadmin = true\n\
                [tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n";
    let node = "node_id = 1\ncluster = \"us-1\"\ndata_dir = \"d\"";
    let router = "region = \"us\"\nsecret_key_file = \"r.key\"\nallow_unrouted_keys = true";
    seeds.push(format!("{node}{auth}").into_bytes());
    seeds.push(format!("{router}{auth}").into_bytes());
    seeds
}

fn snapshot() -> Vec<Vec<u8>> {
    let nodes: BTreeMap<u64, MemberNode> = (1..=3)
        .map(|id| {
            let node = MemberNode {
                endpoint_id: format!("{id:064x}"),
                addrs: vec![format!("127.0.0.1:740{id}")],
            };
            (id, node)
        })
        .collect();
    let membership = Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes);
    let meta = SnapshotMeta {
        last_log_id: Some(log_id(9)),
        last_membership: StoredMembership::new(Some(log_id(1)), membership),
        snapshot_id: "2-9-0".into(),
    };
    let header = Header {
        revision: 6,
        time_ms: 1_700_000_000_000,
        feed_compacted: 3,
    };
    let mut writer = StreamWriter::start(Vec::new(), &meta, header).expect("in memory");
    let key = |key: &str, lease| KeyRecord {
        key: key.into(),
        value: key.as_bytes().to_vec(),
        create_revision: 2,
        mod_revision: 5,
        version: 2,
        lease,
        blob: None,
    };
    writer.key(key("a/b", Some(9))).expect("in memory");
    writer.key(key("c", None)).expect("in memory");
    let blob = aspen_api::BlobRef {
        hash: [0xb3; 32],
        size: 1 << 21,
    };
    writer
        .key(KeyRecord {
            value: vec![],
            blob: Some(blob),
            ..key("d", None)
        })
        .expect("in memory");
    for (revision, kind) in [
        (4, ChangeKind::Delete),
        (
            5,
            ChangeKind::Put {
                value: b"c".to_vec().into(),
                create_revision: 2,
                version: 2,
            },
        ),
        (
            6,
            ChangeKind::PutBlob {
                blob,
                create_revision: 6,
                version: 1,
            },
        ),
    ] {
        writer
            .change(ChangeSet {
                revision,
                time_ms: 1_700_000_000_000,
                changes: vec![KeyChange {
                    key: "c".into(),
                    kind,
                }],
            })
            .expect("in memory");
    }
    writer
        .lease(LeaseRecord {
            id: 9,
            ttl_ms: 10_000,
        })
        .expect("in memory");
    let stream = writer.finish().expect("in memory");
    let empty = StreamWriter::start(Vec::new(), &meta, header)
        .and_then(|w| w.finish())
        .expect("in memory");
    let offer = Offer {
        vote: Vote::new_committed(2, 1),
        meta,
        len: stream.len() as u64,
    };
    vec![
        stream,
        empty,
        SNAPSHOT_FORMAT.encode(&offer),
        SNAPSHOT_FORMAT.encode(&Reply::Done(Vote::new_committed(2, 1))),
        SNAPSHOT_FORMAT.encode(&Reply::Refused("too large".into())),
    ]
}

fn blob_hold_message() -> Vec<Vec<u8>> {
    use aspen_cluster_node::blob_hold::{encode_answer, encode_request, HoldAnswer, HoldRequest};
    vec![
        encode_request(&HoldRequest {
            hash: [3; 32],
            size: 1_048_577,
        }),
        encode_request(&HoldRequest {
            hash: [0xab; 32],
            size: 4 * 1024 * 1024 * 1024,
        }),
        encode_answer(&HoldAnswer::Held),
        encode_answer(&HoldAnswer::Failed {
            reason: "fetching blob ab..: no whole blob within 10s".into(),
        }),
    ]
}

fn value_message() -> Vec<Vec<u8>> {
    use aspen_api::value_wire::{encode, ValueAnswer, ValueRequest};
    use aspen_api::{ApiError, BlobRef, ErrorCode, WriteOutcome, WriteResult};
    let blob = BlobRef {
        hash: [5; 32],
        size: 50 * 1024 * 1024,
    };
    vec![
        encode(&ValueRequest::Put {
            key: "models/weights".into(),
            lease: Some(("us-1".into(), 42)),
            declared: Some(52_428_800),
        }),
        encode(&ValueRequest::Put {
            key: "k".into(),
            lease: None,
            declared: None,
        }),
        encode(&ValueRequest::Read {
            blob,
            start: 1_000,
            len: 1_000,
        }),
        encode(&ValueAnswer::Written(WriteResult {
            revision: 7,
            outcome: WriteOutcome::Applied { deleted: 0 },
        })),
        encode(&ValueAnswer::Bytes { len: blob.size }),
        encode(&ValueAnswer::Error(ApiError::new(
            ErrorCode::TooLarge,
            "the value is over the limit",
        ))),
    ]
    .into_iter()
    .map(|bytes| bytes.expect("encodes"))
    .collect()
}

fn docs_push() -> Vec<Vec<u8>> {
    use iroh_docs::{Author, NamespaceSecret, Record, SignedEntry};
    let namespace = NamespaceSecret::from_bytes(&[7; 32]);
    let author = Author::from_bytes(&[9; 32]);
    let entry = |key: &[u8], content: &[u8], timestamp| {
        let record = Record::new(
            iroh_blobs::Hash::new(content),
            content.len() as u64,
            timestamp,
        );
        let entry = SignedEntry::from_parts(&namespace, &author, key, record);
        aspen_federation::push::encode_entry(&entry).expect("encodes")
    };
    vec![
        namespace.id().as_bytes().to_vec(),
        entry(
            b"s/0001/0000000000000001",
            b"segment",
            1_700_000_000_000_000,
        ),
        entry(b"h", b"heartbeat", 1_700_000_000_500_000),
        // A tombstone: a group's prefix delete.
        {
            let record = Record::new(iroh_blobs::Hash::EMPTY, 0, 1_700_000_001_000_000);
            let entry = SignedEntry::from_parts(&namespace, &author, b"s/0001/", record);
            aspen_federation::push::encode_entry(&entry).expect("encodes")
        },
    ]
}

/// The seeds of target `name`.
fn seeds(name: &str) -> Vec<Vec<u8>> {
    match name {
        "kv_message" => kv_message(),
        "raft_message" => raft_message(),
        "http_body" => http_body(),
        "http_request" => http_request(),
        "config" => config(),
        "snapshot" => snapshot(),
        "docs_push" => docs_push(),
        "blob_hold_message" => blob_hold_message(),
        "value_message" => value_message(),
        other => panic!("no seeds for target {other}: add them in fuzz/src/seeds.rs"),
    }
}

#[test]
fn every_seed_passes_its_target() {
    for target in TARGETS {
        let seeds = seeds(target.name);
        assert!(!seeds.is_empty(), "{}", target.name);
        seeds.iter().for_each(|s| (target.body)(s));
    }
}

#[test]
#[ignore = "writes the seed corpus; see the module docs"]
fn write_seed_corpus() {
    assert!(
        std::env::var_os("ASPEN_FUZZ_WRITE_SEEDS").is_some(),
        "set ASPEN_FUZZ_WRITE_SEEDS=1 to write fuzz/corpus"
    );
    for target in TARGETS {
        let dir = corpus_dir(target.name);
        std::fs::create_dir_all(&dir).expect("corpus directory");
        for (i, seed) in seeds(target.name).iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:03}")), seed).expect("seed written");
        }
    }
}
