//! Merging one scan page from each of several clusters into one page in key order, with
//! a continuation token that pages correctly across them.

use aspen_api::server::Freshness;
use aspen_api::types::ReadResponse;
use aspen_api::{KvEntry, ReadResult};

use crate::table::RouteTable;

/// A scan's merged page.
#[derive(Debug, Default)]
pub struct ScanOutcome {
    /// Entries in key order, each with the cluster that owns it.
    pub entries: Vec<(KvEntry, String)>,
    /// Whether more keys may follow.
    pub more: bool,
    /// The continuation token (the `after` of the next page) when `more`.
    pub next: Option<String>,
    /// The serving node's freshness when exactly one cluster was asked.
    pub freshness: Option<Freshness>,
}

/// Merges one scan page from each cluster into one page in key order.
///
/// Each cluster returns keys under the prefix in order, up to `limit`; keys it holds but
/// does not own (a longer route gives them to another cluster) are dropped. A cluster
/// that has more keys has been read only up to its page's last key, so the merged page
/// may only go that far: it stops at the smallest such key, and the next page continues
/// after it (even if that key itself was dropped, so paging always moves forward).
pub fn merge_pages(
    table: &RouteTable,
    answers: Vec<(String, ReadResponse)>,
    limit: usize,
) -> ScanOutcome {
    // One cluster's freshness applies to the page; several clusters' revisions do not mix.
    let freshness = (answers.len() == 1).then(|| Freshness::of(&answers[0].1));
    let mut bound: Option<String> = None;
    let mut entries = Vec::new();
    for (cluster, response) in answers {
        let ReadResult::Scan(page) = response.result else {
            continue;
        };
        if page.more {
            if let Some(last) = page.kvs.last() {
                if bound.as_ref().is_none_or(|b| last.key < *b) {
                    bound = Some(last.key.clone());
                }
            }
        }
        entries.extend(
            page.kvs
                .into_iter()
                .filter(|e| table.owns(&cluster, &e.key))
                .map(|e| (e, cluster.clone())),
        );
    }
    if let Some(bound) = &bound {
        entries.retain(|(e, _)| e.key <= *bound);
    }
    entries.sort_by(|a, b| a.0.key.cmp(&b.0.key));
    let (more, next) = if entries.len() > limit {
        entries.truncate(limit);
        (true, entries.last().map(|(e, _)| e.key.clone()))
    } else {
        (bound.is_some(), bound)
    };
    ScanOutcome {
        entries,
        more,
        next,
        freshness,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;
    use crate::table::tests::table;
    use aspen_api::ScanPage;

    fn entry(key: &str) -> KvEntry {
        KvEntry {
            key: key.to_string(),
            value: key.as_bytes().to_vec(),
            create_revision: 1,
            mod_revision: 1,
            version: 1,
            blob: None,
        }
    }

    /// What one cluster's node answers for a scan: up to `limit` of its keys under
    /// `prefix` after `after`, owned or not.
    fn cluster_page(
        keys: &BTreeSet<String>,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> ReadResponse {
        let mut matching = keys
            .iter()
            .filter(|k| k.starts_with(prefix) && after.is_none_or(|a| k.as_str() > a));
        let kvs: Vec<KvEntry> = matching.by_ref().take(limit).map(|k| entry(k)).collect();
        let more = matching.next().is_some();
        ReadResponse {
            result: ReadResult::Scan(ScanPage { kvs, more }),
            revision: 1,
            applied_index: 1,
            known_commit_index: 1,
            since_leader_contact_ms: Some(0),
        }
    }

    /// Pages through a merged scan the way a client does; returns every key seen.
    fn page_through(
        t: &RouteTable,
        data: &BTreeMap<String, BTreeSet<String>>,
        prefix: &str,
        limit: usize,
    ) -> Vec<(String, String)> {
        let mut after: Option<String> = None;
        let mut seen = Vec::new();
        for _ in 0..10_000 {
            let answers = t
                .scan_plan(prefix)
                .into_iter()
                .map(|c| {
                    let page = cluster_page(&data[&c], prefix, after.as_deref(), limit);
                    (c, page)
                })
                .collect();
            let out = merge_pages(t, answers, limit);
            assert!(
                out.entries.len() <= limit,
                "a page holds at most `limit` keys"
            );
            seen.extend(out.entries.into_iter().map(|(e, c)| (e.key, c)));
            if !out.more {
                return seen;
            }
            let next = out.next.expect("`more` comes with a continuation");
            assert!(
                after.as_ref().is_none_or(|a| next > *a),
                "paging moves forward"
            );
            after = Some(next);
        }
        panic!("paging did not finish");
    }

    #[test]
    fn pages_merge_in_key_order_and_drop_keys_a_longer_route_gives_away() {
        let t = table(&[("", "a"), ("svc-b/", "b"), ("svc-b/x", "a")]);
        let mut data: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        // Cluster a holds a stray copy of svc-b/1, which b owns: it must not show.
        data.insert(
            "a".into(),
            ["svc-a", "svc-b/1", "svc-b/x1", "svc-z"]
                .map(String::from)
                .into(),
        );
        data.insert("b".into(), ["svc-b/1", "svc-b/2"].map(String::from).into());
        data.insert("c".into(), BTreeSet::new());
        let expect: Vec<(String, String)> = [
            ("svc-a", "a"),
            ("svc-b/1", "b"),
            ("svc-b/2", "b"),
            ("svc-b/x1", "a"),
            ("svc-z", "a"),
        ]
        .map(|(k, c)| (k.to_string(), c.to_string()))
        .into();
        for limit in 1..=6 {
            assert_eq!(
                page_through(&t, &data, "svc", limit),
                expect,
                "limit {limit}"
            );
        }
    }

    #[test]
    fn a_page_stops_where_a_cluster_with_more_keys_was_read_up_to() {
        let t = table(&[("", "a"), ("m", "b")]);
        // Route "m" gives every key from "m" on to b; a's "m0" is a stray copy.
        let page = |keys: &[&str], more| ReadResponse {
            result: ReadResult::Scan(ScanPage {
                kvs: keys.iter().map(|k| entry(k)).collect(),
                more,
            }),
            revision: 1,
            applied_index: 1,
            known_commit_index: 1,
            since_leader_contact_ms: None,
        };
        // a has read up to "m0" and has more; its stray copy of "m0" (owned by b) is
        // dropped, which leaves room in the page, but b's "m1" must still wait: a's keys
        // after "m0" have not been read yet.
        let out = merge_pages(
            &t,
            vec![
                ("a".into(), page(&["c", "m0"], true)),
                ("b".into(), page(&["m1"], false)),
            ],
            2,
        );
        let keys: Vec<&str> = out.entries.iter().map(|(e, _)| e.key.as_str()).collect();
        assert_eq!(keys, ["c"]);
        assert!(out.more);
        assert_eq!(
            out.next.as_deref(),
            Some("m0"),
            "the next page continues after a's last key"
        );
    }

    proptest! {
        #[test]
        fn paging_a_merged_scan_yields_exactly_the_owned_keys_once_in_order(
            keys in proptest::collection::vec(("[ab]", "[a-c/]{0,4}"), 0..40),
            prefix in "[a-c/]{0,2}",
            limit in 1usize..6,
        ) {
            let t = table(&[("", "a"), ("b/", "b"), ("b/c", "c"), ("cc", "b")]);
            let mut data: BTreeMap<String, BTreeSet<String>> =
                ["a", "b", "c"].iter().map(|c| (c.to_string(), BTreeSet::new())).collect();
            // Every key lives on its owner; some also have stray copies on cluster `a` or `b`.
            for (stray, key) in &keys {
                let key = key.clone();
                let owner = t.owner(&key).unwrap().to_string();
                data.get_mut(&owner).unwrap().insert(key.clone());
                data.get_mut(stray.as_str()).unwrap().insert(key);
            }
            let expect: Vec<(String, String)> = data
                .iter()
                .flat_map(|(c, ks)| ks.iter().map(move |k| (k.clone(), c.clone())))
                .filter(|(k, c)| k.starts_with(&prefix) && t.owns(c, k))
                .collect::<BTreeMap<_, _>>()
                .into_iter()
                .collect();
            prop_assert_eq!(page_through(&t, &data, &prefix, limit), expect);
        }
    }
}
