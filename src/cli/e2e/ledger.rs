//! The ledger of `aspen e2e run`: writers that put new keys one at a time through the
//! routers and remember each write's outcome, and the check that every acknowledged
//! write is still there, with its value, once the faults are over. A write is
//! acknowledged when the router answered success; one refused with "nothing applied"
//! ([`nothing_applied`]) is forgotten; any other failure has an unknown outcome and may
//! be present or not (both are counted, neither fails the check).

use std::collections::BTreeMap;
use std::time::Duration;

use aspen_api::{AspenClient, ClientError, Consistency};
use aspen_checker::workload::{nothing_applied, FAILURE_PAUSE};
use tokio::time::Instant;

/// Most ledger writers: each is one task with one request in flight; 64 already loads a
/// small deployment more than the single-key workload does, which is the part that finds
/// consistency bugs.
pub const MAX_LEDGER_WRITERS: usize = 64;

/// Keys per scan page when reading the ledger back: the API's largest page.
const SCAN_PAGE: usize = 10_000;

/// What the ledger writers do.
#[derive(Debug, Clone)]
pub struct LedgerSpec {
    /// Routers to write through; writer `i` starts on `endpoints[i % n]` and moves on
    /// when one refuses.
    pub endpoints: Vec<String>,
    /// Key prefixes, used in turn: writer `w`'s `n`-th key is
    /// `prefixes[n % len]ack/w{w}/{n}`.
    pub prefixes: Vec<String>,
    /// Concurrent writers.
    pub writers: usize,
    /// How long they write.
    pub duration: Duration,
    /// Per-request timeout; a write that takes longer has an unknown outcome.
    pub request_timeout: Duration,
}

/// The writes made: key to value.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Writes the router acknowledged.
    pub acknowledged: BTreeMap<String, String>,
    /// Writes whose outcome is unknown.
    pub unknown: BTreeMap<String, String>,
    /// Why outcomes were unknown: cause to count.
    pub unknown_causes: BTreeMap<String, usize>,
    /// Writes refused with nothing applied.
    pub refused: usize,
}

/// A short name for why a write's outcome is unknown, to count causes by.
fn cause(err: &ClientError) -> String {
    match err {
        ClientError::Api { status, body } => format!("{status} {}", body.error.code),
        ClientError::Transport { source, .. } if source.is_timeout() => "client timeout".into(),
        ClientError::Transport { .. } => "connection broken".into(),
        ClientError::Silent { .. } => "silent".into(),
        ClientError::Decode { .. } => "undecodable answer".into(),
    }
}

/// The key of writer `writer`'s `n`-th write.
fn ledger_key(prefixes: &[String], writer: usize, n: usize) -> String {
    format!("{}ack/w{writer}/{n:08}", prefixes[n % prefixes.len()])
}

/// Runs the writers until `spec.duration` has passed; returns every outcome.
pub async fn write(spec: &LedgerSpec) -> Ledger {
    let clients: Vec<AspenClient> = spec
        .endpoints
        .iter()
        .map(|e| AspenClient::with_timeout(e, spec.request_timeout))
        .collect();
    let deadline = Instant::now() + spec.duration;
    let tasks: Vec<_> = (0..spec.writers)
        .map(|w| {
            let clients = clients.clone();
            let prefixes = spec.prefixes.clone();
            tokio::spawn(async move { writer(w, &clients, &prefixes, deadline).await })
        })
        .collect();
    let mut ledger = Ledger::default();
    for task in tasks {
        // A writer task only ends by returning its ledger (it never panics on an error).
        if let Ok(part) = task.await {
            ledger.acknowledged.extend(part.acknowledged);
            ledger.unknown.extend(part.unknown);
            for (c, n) in part.unknown_causes {
                *ledger.unknown_causes.entry(c).or_default() += n;
            }
            ledger.refused += part.refused;
        }
    }
    ledger
}

async fn writer(
    w: usize,
    clients: &[AspenClient],
    prefixes: &[String],
    deadline: Instant,
) -> Ledger {
    let mut ledger = Ledger::default();
    let mut current = w % clients.len();
    let mut n = 0;
    while Instant::now() < deadline {
        let key = ledger_key(prefixes, w, n);
        let value = format!("w{w}-{n}");
        n += 1;
        match clients[current].put(&key, value.as_bytes()).await {
            Ok(_) => {
                ledger.acknowledged.insert(key, value);
            }
            // As the workload's clients do: pause, and try the next router.
            Err(e) if nothing_applied(&e) => {
                ledger.refused += 1;
                current = (current + 1) % clients.len();
                tokio::time::sleep(FAILURE_PAUSE).await;
            }
            Err(e) => {
                *ledger.unknown_causes.entry(cause(&e)).or_default() += 1;
                ledger.unknown.insert(key, value);
                current = (current + 1) % clients.len();
                tokio::time::sleep(FAILURE_PAUSE).await;
            }
        }
    }
    ledger
}

/// What reading the ledger back found.
#[derive(Debug, PartialEq, Eq)]
pub struct LedgerCheck {
    /// Acknowledged writes.
    pub acknowledged: usize,
    /// Acknowledged writes missing or holding another value: the first few keys.
    pub lost: Vec<String>,
    /// How many acknowledged writes are missing or changed.
    pub lost_count: usize,
    /// Writes with an unknown outcome.
    pub unknown: usize,
    /// Of those, how many are present.
    pub unknown_present: usize,
    /// Why outcomes were unknown, as `cause count, ...`.
    pub unknown_causes: String,
    /// Writes refused with nothing applied.
    pub refused: usize,
}

/// Keys of lost writes named in the summary; the count says how many there are in all.
const LOST_KEYS_SHOWN: usize = 10;

impl LedgerCheck {
    /// Whether no acknowledged write was lost (and at least one was made).
    pub fn passed(&self) -> bool {
        self.lost_count == 0 && self.acknowledged > 0
    }

    /// One line for the verdict.
    pub fn summary(&self) -> String {
        let head = if self.passed() {
            "PASS"
        } else if self.acknowledged == 0 {
            "FAIL (no write was acknowledged)"
        } else {
            "FAIL"
        };
        let mut line = format!(
            "{head}: {} writes acknowledged, {} lost; {} with unknown outcome ({} present{}); \
             {} refused with nothing applied",
            self.acknowledged,
            self.lost_count,
            self.unknown,
            self.unknown_present,
            if self.unknown_causes.is_empty() {
                String::new()
            } else {
                format!("; {}", self.unknown_causes)
            },
            self.refused
        );
        if !self.lost.is_empty() {
            line.push_str(&format!("; lost: {}", self.lost.join(", ")));
        }
        line
    }
}

/// Compares the ledger with what the store holds under each prefix's `ack/` now.
pub fn compare(ledger: &Ledger, stored: &BTreeMap<String, String>) -> LedgerCheck {
    let lost: Vec<&String> = ledger
        .acknowledged
        .iter()
        .filter(|(key, value)| stored.get(*key) != Some(value))
        .map(|(key, _)| key)
        .collect();
    LedgerCheck {
        acknowledged: ledger.acknowledged.len(),
        lost_count: lost.len(),
        lost: lost.into_iter().take(LOST_KEYS_SHOWN).cloned().collect(),
        unknown: ledger.unknown.len(),
        unknown_present: ledger
            .unknown
            .keys()
            .filter(|k| stored.contains_key(*k))
            .count(),
        unknown_causes: ledger
            .unknown_causes
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        refused: ledger.refused,
    }
}

/// Reads every ledger key back (linearizable scans through `reader`) and compares.
pub async fn verify(
    ledger: &Ledger,
    reader: &AspenClient,
    prefixes: &[String],
) -> anyhow::Result<LedgerCheck> {
    let mut stored = BTreeMap::new();
    for prefix in prefixes {
        let prefix = format!("{prefix}ack/");
        let mut after: Option<String> = None;
        loop {
            let page = reader
                .scan(
                    &prefix,
                    after.as_deref(),
                    Some(SCAN_PAGE),
                    Consistency::Linearizable,
                )
                .await
                .map_err(|e| anyhow::anyhow!("cannot read the ledger under {prefix}: {e}"))?;
            for entry in page.kvs {
                stored.insert(entry.key, entry.value.unwrap_or_default());
            }
            match page.next {
                Some(next) if page.more => after = Some(next),
                _ => break,
            }
        }
    }
    Ok(compare(ledger, &stored))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn ledger_keys_take_the_prefixes_in_turn() {
        let prefixes = vec!["e2e/".to_string(), "eu/e2e/".to_string()];
        assert_eq!(ledger_key(&prefixes, 3, 0), "e2e/ack/w3/00000000");
        assert_eq!(ledger_key(&prefixes, 3, 1), "eu/e2e/ack/w3/00000001");
    }

    #[test]
    fn every_acknowledged_write_present_passes() {
        let ledger = Ledger {
            acknowledged: map(&[("a", "1"), ("b", "2")]),
            unknown: map(&[("c", "3"), ("d", "4")]),
            unknown_causes: [("504 timeout".to_string(), 2)].into(),
            refused: 5,
        };
        let check = compare(&ledger, &map(&[("a", "1"), ("b", "2"), ("c", "3")]));
        assert!(check.passed(), "{}", check.summary());
        assert_eq!((check.unknown, check.unknown_present), (2, 1));
        assert!(
            check.summary().contains("(1 present; 504 timeout 2)"),
            "{}",
            check.summary()
        );
    }

    #[test]
    fn a_missing_or_changed_acknowledged_write_fails() {
        let ledger = Ledger {
            acknowledged: map(&[("a", "1"), ("b", "2")]),
            ..Ledger::default()
        };
        let missing = compare(&ledger, &map(&[("a", "1")]));
        assert!(!missing.passed());
        assert_eq!(missing.lost, ["b"]);
        let changed = compare(&ledger, &map(&[("a", "1"), ("b", "x")]));
        assert!(!changed.passed());
        assert!(
            changed.summary().contains("lost: b"),
            "{}",
            changed.summary()
        );
    }

    #[test]
    fn a_ledger_with_no_acknowledged_write_fails() {
        let check = compare(&Ledger::default(), &BTreeMap::new());
        assert!(!check.passed());
        assert!(check.summary().contains("no write was acknowledged"));
    }
}
