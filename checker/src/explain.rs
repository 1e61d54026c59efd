//! Human-readable rendering: `Display` for inputs, outputs and operations, and the
//! explanation of a violation built from the search's deepest dead end.

use std::fmt::{self, Display, Formatter, Write as _};

use crate::history::Operation;
use crate::model::{Input, Output};
use crate::search::DeadEnd;

/// Most bytes of a value shown in an explanation; values are often large blobs and the
/// first bytes are enough to tell them apart in a test workload.
pub const MAX_SHOWN_VALUE_BYTES: usize = 32;

/// A value as text: quoted if it is UTF-8, hex otherwise, cut at
/// [`MAX_SHOWN_VALUE_BYTES`] with the full length noted.
struct Value<'a>(&'a [u8]);

impl Display for Value<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let limit = self.0.len().min(MAX_SHOWN_VALUE_BYTES);
        let shown = match std::str::from_utf8(self.0) {
            Ok(text) => {
                let cut = (0..=limit)
                    .rev()
                    .find(|&i| text.is_char_boundary(i))
                    .unwrap_or(0);
                write!(f, "{:?}", &text[..cut])?;
                cut
            }
            Err(_) => {
                f.write_str("0x")?;
                self.0[..limit]
                    .iter()
                    .try_for_each(|byte| write!(f, "{byte:02x}"))?;
                limit
            }
        };
        if shown < self.0.len() {
            write!(f, "...({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}

/// A value that may be absent.
struct MaybeValue<'a>(Option<&'a [u8]>);

impl Display for MaybeValue<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(value) => Value(value).fmt(f),
            None => f.write_str("absent"),
        }
    }
}

impl Display for Input {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Input::Get | Input::Delete => f.write_str(self.kind()),
            Input::Put { value } => write!(f, "put {}", Value(value)),
            Input::Cas {
                expected,
                new_value,
            } => {
                let expected = MaybeValue(expected.as_deref());
                write!(f, "cas {expected} -> {}", Value(new_value))
            }
            Input::Cad { expected } => write!(f, "cad {}", Value(expected)),
        }
    }
}

impl Display for Output {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Output::Get { value } => MaybeValue(value.as_deref()).fmt(f),
            Output::Put => f.write_str("ok"),
            Output::Delete { deleted } | Output::Cad { deleted } => write!(f, "deleted={deleted}"),
            Output::Cas { swapped } => write!(f, "swapped={swapped}"),
            Output::Unknown => f.write_str("unknown"),
        }
    }
}

impl Display for Operation {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "client {}: {} => {} ",
            self.client, self.input, self.output
        )?;
        if self.output.is_unknown() {
            write!(f, "[{} ns ..]", self.call_ns)
        } else {
            write!(f, "[{} ns .. {} ns]", self.call_ns, self.return_ns)
        }
    }
}

/// Explains why `ops` (one key's operations) have no linearization, from the point where
/// the search got furthest; `state` is the key's value there.
pub(crate) fn dead_end(ops: &[&Operation], end: &DeadEnd, state: Option<&[u8]>) -> String {
    let mut text = format!(
        "no order of the {} operations fits one register. The longest linearizable prefix \
         holds {} of the {} operations with known outcomes and leaves the value {}; from \
         there, nothing could go before this operation returned: {}",
        ops.len(),
        end.linearized_known,
        end.total_known,
        MaybeValue(state),
        ops[end.blocked],
    );
    list(
        &mut text,
        "last operations of that prefix, oldest first",
        ops,
        &end.recent,
    );
    list(
        &mut text,
        "operations called but not yet linearized there",
        ops,
        &end.pending,
    );
    text
}

/// How far a search that ran out of budget got, to append to its reason.
pub(crate) fn progress(ops: &[&Operation], end: &DeadEnd) -> String {
    format!(
        ". The furthest it got was {} of the {} operations with known outcomes, stuck \
         before this operation returned: {}",
        end.linearized_known, end.total_known, ops[end.blocked],
    )
}

fn list(text: &mut String, title: &str, ops: &[&Operation], which: &[usize]) {
    if which.is_empty() {
        return;
    }
    let _ = write!(text, "\n{title}:");
    for &index in which {
        let _ = write!(text, "\n  - {}", ops[index]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_show_as_quoted_text_or_hex_and_long_ones_are_cut() {
        assert_eq!(Value(b"ab").to_string(), "\"ab\"");
        assert_eq!(Value(&[0xff, 0x01]).to_string(), "0xff01");
        let long = vec![b'x'; MAX_SHOWN_VALUE_BYTES + 1];
        assert!(Value(&long).to_string().ends_with("...(33 bytes)"));
    }

    #[test]
    fn operations_show_client_input_output_and_interval() {
        let op = Operation {
            client: 3,
            key: "k".into(),
            input: Input::Cas {
                expected: None,
                new_value: b"1".to_vec(),
            },
            output: Output::Cas { swapped: true },
            call_ns: 5,
            return_ns: 9,
        };
        assert_eq!(
            op.to_string(),
            "client 3: cas absent -> \"1\" => swapped=true [5 ns .. 9 ns]"
        );
    }
}
