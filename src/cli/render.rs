//! Human-readable rendering shared by the commands: values (text quoted, binary shown as
//! a size and base64 prefix, long ones cut), key states of failed preconditions,
//! preconditions themselves, and `--json` output.

use aspen_api::json::{JsonKeyState, JsonPrecondition};
use serde::Serialize;

/// Longest value shown in one-line human output; the rest is elided. Full values are
/// always available with `kv get --raw` or `--json`.
const MAX_SHOWN_VALUE_CHARS: usize = 120;

/// One value for one-line output: `"text"` (escaped), or `<N bytes, base64 ...>`.
pub fn value(text: Option<&str>, base64: Option<&str>) -> String {
    match (text, base64) {
        (Some(text), _) => quote(text),
        (None, Some(b64)) => {
            let padding = b64.bytes().rev().take_while(|b| *b == b'=').count();
            let bytes = (b64.len() / 4 * 3).saturating_sub(padding);
            format!("<{bytes} bytes, base64 {}>", cut(b64))
        }
        (None, None) => "<no value>".to_string(),
    }
}

/// A string quoted and escaped, cut to [`MAX_SHOWN_VALUE_CHARS`].
pub fn quote(text: &str) -> String {
    format!("{:?}", cut(text))
}

fn cut(text: &str) -> String {
    let mut chars = text.chars();
    let head: String = chars.by_ref().take(MAX_SHOWN_VALUE_CHARS).collect();
    if chars.next().is_some() {
        format!("{head}...")
    } else {
        head
    }
}

/// What a key held when a precondition was checked.
pub fn key_state(state: &JsonKeyState) -> String {
    if !state.exists {
        return format!("key {} does not exist", quote(&state.key));
    }
    let mut out = format!(
        "key {} holds {}",
        quote(&state.key),
        value(state.value.as_deref(), state.value_base64.as_deref())
    );
    if let (Some(m), Some(v)) = (state.mod_revision, state.version) {
        out.push_str(&format!(" (mod_revision {m}, version {v})"));
    }
    out
}

/// A precondition as a sentence fragment: `key "a" exists`.
pub fn precondition(p: &JsonPrecondition) -> String {
    let key = quote(&p.key);
    if p.exists == Some(true) {
        format!("key {key} exists")
    } else if p.not_exists == Some(true) {
        format!("key {key} does not exist")
    } else if let Some(revision) = p.mod_revision {
        format!("key {key} has mod_revision {revision}")
    } else {
        let shown = value(p.equals.as_deref(), p.equals_base64.as_deref());
        format!("key {key} equals {shown}")
    }
}

/// Prints `value` as pretty JSON on stdout.
pub fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// The first `len` characters of an id, for tables (`3f2a9b1c4d`).
pub fn short(id: &str, len: usize) -> &str {
    id.char_indices().nth(len).map_or(id, |(at, _)| &id[..at])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_values_are_quoted_and_binary_values_show_their_size() {
        assert_eq!(value(Some("a\nb"), None), "\"a\\nb\"");
        assert_eq!(value(None, Some("AAEC")), "<3 bytes, base64 AAEC>");
        assert_eq!(value(None, Some("AAE=")), "<2 bytes, base64 AAE=>");
    }

    #[test]
    fn long_values_are_cut() {
        let long = "x".repeat(MAX_SHOWN_VALUE_CHARS + 10);
        assert!(value(Some(&long), None).ends_with("...\""));
    }

    #[test]
    fn short_keeps_at_most_len_chars() {
        assert_eq!(short("abcdef", 3), "abc");
        assert_eq!(short("ab", 3), "ab");
    }
}
