//! Decoding refuses a message nested deeper than [`MAX_DECODE_NESTING`] with an error,
//! on a thread with a tokio worker's stack, instead of overflowing that stack (which
//! aborts the whole process: any peer allowed to send one message could stop a node).

use super::{decode, encode, KvRequest, KvResponse, WireError, KV_FORMAT};
use crate::codec::MAX_DECODE_NESTING;
use crate::command::Command;

/// A tokio worker thread's stack (its default), where nodes and routers decode messages.
const WORKER_STACK_BYTES: usize = 2 * 1024 * 1024;

/// Levels of the hostile messages: a few hundred kilobytes, within the message limit,
/// and far deeper than a worker's stack holds without the bound.
const HOSTILE_LEVELS: usize = 200_000;

/// Runs `f` on a thread with a worker's stack.
fn on_worker_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(WORKER_STACK_BYTES)
        .spawn(f)
        .expect("a thread")
        .join()
        .expect("decoding returned")
}

/// The version byte, `outer`, `levels` times `header`, then `innermost`.
fn hostile(outer: &[u8], header: &[u8], levels: usize, innermost: &[u8]) -> Vec<u8> {
    let mut bytes = vec![KV_FORMAT.version];
    bytes.extend_from_slice(outer);
    (0..levels).for_each(|_| bytes.extend_from_slice(header));
    bytes.extend_from_slice(innermost);
    bytes
}

fn set() -> Command {
    Command::Set {
        key: "k".into(),
        value: b"v".to_vec().into(),
    }
}

fn leased(command: Command) -> Command {
    Command::Leased {
        cluster: "c".into(),
        attach: vec![("k".into(), 1)],
        command: Box::new(command),
    }
}

/// Postcard's bytes of a batch of one request or answer (variant 4, one element), of a
/// write (variant 0), of a leased command with no lease (variant 9, "", []), of
/// `Status` (variant 3), of `NotLeader { leader: None }` (variant 5, None) and of
/// `Delete { key: "" }` (variant 2, "").
const BATCH_OF_ONE: [u8; 2] = [4, 1];
const WRITE: [u8; 1] = [0];
const LEASED: [u8; 3] = [9, 0, 0];
const STATUS: [u8; 1] = [3];
const NOT_LEADER: [u8; 2] = [5, 0];
const DELETE: [u8; 2] = [2, 0];

#[test]
fn the_hostile_byte_shapes_are_the_encodings_of_those_messages() {
    let batch = KvRequest::Batch(vec![KvRequest::Status]);
    assert_eq!(
        encode(&batch).unwrap(),
        hostile(&[], &BATCH_OF_ONE, 1, &STATUS)
    );
    let answer = KvResponse::Batch(vec![KvResponse::NotLeader { leader: None }]);
    let bytes = hostile(&[], &BATCH_OF_ONE, 1, &NOT_LEADER);
    assert_eq!(encode(&answer).unwrap(), bytes);
    let delete = Command::Delete { key: String::new() };
    let write = KvRequest::Write(Command::Leased {
        cluster: String::new(),
        attach: vec![],
        command: Box::new(delete),
    });
    assert_eq!(
        encode(&write).unwrap(),
        hostile(&WRITE, &LEASED, 1, &DELETE)
    );
}

#[test]
fn deeply_nested_messages_are_refused_without_overflowing_a_workers_stack() {
    let requests = hostile(&[], &BATCH_OF_ONE, HOSTILE_LEVELS, &STATUS);
    let answers = hostile(&[], &BATCH_OF_ONE, HOSTILE_LEVELS, &NOT_LEADER);
    let leased = hostile(&WRITE, &LEASED, HOSTILE_LEVELS, &DELETE);
    assert!(leased.len() < crate::limits::MAX_WIRE_MESSAGE_BYTES);
    let refused = on_worker_stack(move || {
        [
            decode::<KvRequest>(&requests).map(drop),
            decode::<KvResponse>(&answers).map(drop),
            decode::<KvRequest>(&leased).map(drop),
        ]
    });
    for result in refused {
        match result {
            Err(e @ WireError::TooDeep { max: 2, .. }) => {
                let message = e.to_string();
                assert!(
                    message.contains("nested more than 2 levels deep"),
                    "{message}"
                );
            }
            other => panic!("not refused as too deep: {other:?}"),
        }
    }
}

#[test]
fn nesting_up_to_the_limit_decodes_and_one_level_more_is_refused() {
    assert_eq!(MAX_DECODE_NESTING, 2);
    // The deepest valid message: a batch holding a leased write.
    let deepest = KvRequest::Batch(vec![KvRequest::Write(leased(set()))]);
    assert_eq!(
        decode::<KvRequest>(&encode(&deepest).unwrap()).unwrap(),
        deepest
    );
    let twice_leased = KvRequest::Write(leased(leased(set())));
    assert!(decode::<KvRequest>(&encode(&twice_leased).unwrap()).is_ok());
    let batches = KvResponse::Batch(vec![KvResponse::Batch(vec![])]);
    assert!(decode::<KvResponse>(&encode(&batches).unwrap()).is_ok());

    let beyond = [
        KvRequest::Batch(vec![KvRequest::Write(leased(leased(set())))]),
        KvRequest::Batch(vec![KvRequest::Batch(vec![KvRequest::Write(
            leased(set()),
        )])]),
    ];
    for request in beyond {
        let err = decode::<KvRequest>(&encode(&request).unwrap()).unwrap_err();
        assert!(
            err.to_string().contains("nested more than 2 levels"),
            "{err}"
        );
    }
    let answers = KvResponse::Batch(vec![KvResponse::Batch(vec![KvResponse::Batch(vec![])])]);
    assert!(decode::<KvResponse>(&encode(&answers).unwrap()).is_err());
}
