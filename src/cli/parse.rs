//! Parsers for the compound arguments of `kv batch` and `kv txn` (`KEY=VALUE`,
//! `KEY=REVISION`), written as clap value parsers so that a malformed argument is reported
//! by clap with the flag's name and the bad text, before anything is sent.

/// A `KEY=VALUE` argument. The split is at the first `=`, so values may contain `=`; keys
/// may not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key (never empty).
    pub key: String,
    /// The value (may be empty).
    pub value: String,
}

/// A `KEY=REVISION` argument of `--require-mod-revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRevision {
    /// The key (never empty).
    pub key: String,
    /// The mod_revision the key must have (0: the key must not exist).
    pub revision: u64,
}

/// Parses `KEY=VALUE`.
pub fn key_value(text: &str) -> Result<KeyValue, String> {
    let (key, value) = split(text, "KEY=VALUE")?;
    Ok(KeyValue {
        key: key.to_string(),
        value: value.to_string(),
    })
}

/// Parses `KEY=REVISION` where REVISION is a non-negative integer.
pub fn key_revision(text: &str) -> Result<KeyRevision, String> {
    let (key, revision) = split(text, "KEY=REVISION")?;
    let revision = revision.trim().parse::<u64>().map_err(|_| {
        format!("{revision:?} is not a revision number (a non-negative integer) in {text:?}")
    })?;
    Ok(KeyRevision {
        key: key.to_string(),
        revision,
    })
}

/// Parses a key given on its own: it must not be empty.
pub fn key(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("the key is empty; keys are 1 to 1024 bytes".to_string());
    }
    Ok(text.to_string())
}

/// Parses a lease TTL in whole seconds: `30`, `30s`, `5m` or `1h`. Its bounds are the
/// cluster's to check (the minimum follows its election timeout).
pub fn ttl_secs(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        _ => {
            return Err(format!(
                "{text:?} is not a duration: give seconds, e.g. 10s, 5m, 1h"
            ))
        }
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration: give seconds, e.g. 10s, 5m, 1h"))?;
    n.checked_mul(scale)
        .filter(|s| *s > 0)
        .ok_or_else(|| format!("{text:?} is not a usable TTL: give 1 s or more"))
}

/// Parses a lease id as `aspen lease grant` prints it (`cluster:hex`).
pub fn lease_id(text: &str) -> Result<aspen_api::lease::LeaseId, String> {
    text.trim().parse()
}

/// Length of an iroh EndpointId in hex: a 32-byte ed25519 public key.
const ENDPOINT_ID_HEX_LEN: usize = 64;

/// Parses an iroh EndpointId as printed by `aspen node`: 64 hex characters.
pub fn endpoint_id(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.len() != ENDPOINT_ID_HEX_LEN || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "{text:?} is not an iroh endpoint id: expected {ENDPOINT_ID_HEX_LEN} hex characters, \
             as `aspen node` prints at start"
        ));
    }
    Ok(text.to_ascii_lowercase())
}

fn split<'a>(text: &'a str, form: &str) -> Result<(&'a str, &'a str), String> {
    let Some((key, rest)) = text.split_once('=') else {
        return Err(format!("expected {form}, got {text:?} (no `=`)"));
    };
    if key.is_empty() {
        return Err(format!("expected {form}, got {text:?} (the key is empty)"));
    }
    Ok((key, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_take_seconds_minutes_and_hours() {
        assert_eq!(ttl_secs("10"), Ok(10));
        assert_eq!(ttl_secs("10s"), Ok(10));
        assert_eq!(ttl_secs("5m"), Ok(300));
        assert_eq!(ttl_secs("1h"), Ok(3_600));
        for bad in ["", "0", "0s", "10ms", "x", "1.5s", "-1"] {
            assert!(ttl_secs(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn key_value_splits_at_the_first_equals_sign() {
        let kv = key_value("a=b=c").unwrap();
        assert_eq!(kv.key, "a");
        assert_eq!(kv.value, "b=c");
    }

    #[test]
    fn key_value_allows_an_empty_value() {
        assert_eq!(key_value("a=").unwrap().value, "");
    }

    #[test]
    fn key_value_without_equals_or_key_is_refused() {
        assert!(key_value("abc").unwrap_err().contains("no `=`"));
        assert!(key_value("=v").unwrap_err().contains("key is empty"));
    }

    #[test]
    fn key_revision_needs_a_number() {
        assert_eq!(key_revision("k=42").unwrap().revision, 42);
        assert!(key_revision("k=x").is_err());
        assert!(key_revision("k=-1").is_err());
        assert!(key_revision("k").is_err());
    }

    #[test]
    fn endpoint_id_must_be_64_hex_chars() {
        let id = "aB".repeat(32);
        assert_eq!(endpoint_id(&id).unwrap(), "ab".repeat(32));
        assert!(endpoint_id("abc").is_err());
        assert!(endpoint_id(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn empty_key_is_refused() {
        assert!(key("").is_err());
        assert_eq!(key("a/b").unwrap(), "a/b");
    }
}
