//! Making every answer fit in one message: an oversized batch answer leaves out reads,
//! never a write's outcome.

use super::{encode, KvResponse, KV_FORMAT, MAX_WIRE_MESSAGE_BYTES};
use crate::error::{ApiError, ErrorCode};

/// The answer a batch gives a read whose result did not fit in the batch's answer (see
/// [`encode_response`]). The read was not lost: send it again on its own, where it fits.
pub fn read_left_out_of_batch() -> KvResponse {
    KvResponse::Error(read_left_out_error())
}

/// The error of [`read_left_out_of_batch`].
pub fn read_left_out_error() -> ApiError {
    ApiError::new(
        ErrorCode::TooLarge,
        "this read's result did not fit in its batch's answer; send it on its own",
    )
}

/// Whether `answer`, given to a read inside a batch, is [`read_left_out_of_batch`].
/// (A read on its own never gets `too_large`: its result always fits in a message.)
pub fn is_read_left_out_of_batch(answer: &KvResponse) -> bool {
    matches!(answer, KvResponse::Error(e) if e.code == ErrorCode::TooLarge)
}

/// Encodes a node's answer within [`MAX_WIRE_MESSAGE_BYTES`], whatever it holds.
///
/// A batch answer that would be too large keeps every write's answer (small, and the
/// only record of whether the write was applied) and gives its largest read results
/// [`read_left_out_of_batch`] instead, largest first, until it fits. Any other answer
/// that is too large becomes a `too_large` error.
pub fn encode_response(response: KvResponse) -> Vec<u8> {
    let len = match encode(&response) {
        Ok(bytes) => return bytes,
        Err(super::WireError::TooLarge { len, .. }) => len,
        Err(_) => 0,
    };
    if let KvResponse::Batch(mut answers) = response {
        let size = |a: &KvResponse| KV_FORMAT.encode(a).len() - 1;
        let mut reads: Vec<(usize, usize)> = answers
            .iter()
            .enumerate()
            .filter(|(_, a)| matches!(a, KvResponse::Read(_)))
            .map(|(i, a)| (size(a), i))
            .collect();
        reads.sort_unstable_by(|a, b| b.cmp(a));
        let left_out = size(&read_left_out_of_batch());
        let mut total = len;
        for (read_size, i) in reads {
            if total <= MAX_WIRE_MESSAGE_BYTES {
                break;
            }
            answers[i] = read_left_out_of_batch();
            total = total.saturating_sub(read_size) + left_out;
        }
        if let Ok(bytes) = encode(&KvResponse::Batch(answers)) {
            return bytes;
        }
    }
    let too_large = KvResponse::Error(ApiError::new(
        ErrorCode::TooLarge,
        format!(
            "the answer ({}) exceeds the message limit of {MAX_WIRE_MESSAGE_BYTES} bytes",
            if len > 0 {
                format!("{len} bytes")
            } else {
                "size unknown".to_string()
            }
        ),
    ));
    encode(&too_large).expect("a short error always fits")
}

#[cfg(test)]
mod tests {
    use super::super::decode;
    use super::*;
    use crate::types::{ReadResponse, ReadResult};
    use crate::{KvEntry, WriteOutcome, WriteResult};

    fn big_read(bytes: usize) -> KvResponse {
        KvResponse::Read(ReadResponse {
            result: ReadResult::Get(Some(KvEntry {
                key: "k".into(),
                value: vec![7; bytes],
                create_revision: 1,
                mod_revision: 1,
                version: 1,
                blob: None,
            })),
            revision: 1,
            applied_index: 1,
            known_commit_index: 1,
            since_leader_contact_ms: None,
        })
    }

    fn written() -> KvResponse {
        KvResponse::Write(WriteResult {
            outcome: WriteOutcome::Applied { deleted: 0 },
            revision: 9,
        })
    }

    #[test]
    fn a_batch_answer_that_fits_is_encoded_whole() {
        let mib = 1024 * 1024;
        let answer = KvResponse::Batch(vec![written(), big_read(mib), big_read(mib)]);
        let bytes = encode_response(answer.clone());
        assert_eq!(decode::<KvResponse>(&bytes).unwrap(), answer);
    }

    #[test]
    fn an_oversized_batch_answer_keeps_every_write_and_leaves_out_only_the_largest_reads() {
        let mib = 1024 * 1024;
        // 16 reads just under 1 MiB and one just over: together over the 16 MiB message
        // limit by less than the largest, so exactly that one is left out; the writes
        // around them are all kept.
        let mut answers = vec![written()];
        answers.extend((0..16).map(|_| big_read(mib - 4096)));
        answers.push(big_read(mib + 10));
        answers.push(written());
        let bytes = encode_response(KvResponse::Batch(answers.clone()));
        assert!(bytes.len() <= MAX_WIRE_MESSAGE_BYTES);
        let KvResponse::Batch(back) = decode::<KvResponse>(&bytes).unwrap() else {
            panic!("still a batch answer");
        };
        assert_eq!(back.len(), answers.len());
        assert_eq!(back[0], written());
        assert_eq!(back[18], written());
        assert!(is_read_left_out_of_batch(&back[17]), "the largest read");
        // Compared without printing: a failure would print megabytes.
        assert!(back[1..17] == answers[1..17], "every other read kept");
    }

    #[test]
    fn an_oversized_single_answer_becomes_a_too_large_error() {
        let bytes = encode_response(big_read(MAX_WIRE_MESSAGE_BYTES));
        let answer = decode::<KvResponse>(&bytes).unwrap();
        assert!(
            matches!(&answer, KvResponse::Error(e) if e.code == ErrorCode::TooLarge),
            "{answer:?}"
        );
    }
}
