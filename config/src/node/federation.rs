//! The `[federation]` table of a node's config: the node's region, the cluster's
//! federation secret (for exporting what the cluster owns), which endpoints of other
//! regions may read it (`[[federation.export]]`), and which clusters of other regions this
//! node keeps replicas of (`[[federation.import]]`). `aspen federation info` prints the
//! values another region needs, so nobody copies ids by hand.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::peer::{check_addrs, check_endpoint_id};
use crate::error::FieldError;
use crate::limits::{
    DEFAULT_CHECKPOINT_REPLAY_BYTES, DEFAULT_SEGMENT_SLOTS, MAX_CHECKPOINT_REPLAY_BYTES,
    MAX_CLUSTER_NODES, MAX_FEDERATION_IMPORTS, MAX_FEDERATION_READERS, MAX_SEGMENT_SLOTS,
    MIN_CHECKPOINT_REPLAY_BYTES, MIN_SEGMENT_SLOTS, SEGMENT_GROUP_SLOTS,
};
use crate::name::check_name;

/// A node's federation settings. Every node of a cluster uses the same secret, exports and
/// imports (each lists its own identity among the readers of the clusters it imports).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationConfig {
    /// The region this node's cluster runs in (same naming rule as clusters).
    pub region: String,
    /// File holding the cluster's federation secret (64 hex characters, identical on every
    /// node of the cluster; `aspen federation keygen` writes one). Required to export.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Regions this cluster replicates what it owns to, with the endpoints allowed to read.
    #[serde(default)]
    pub export: Vec<ExportConfig>,
    /// Clusters of other regions this node keeps a read-only replica of.
    #[serde(default)]
    pub import: Vec<ImportConfig>,
    /// When exporting: a new checkpoint is built once the segments written since the last
    /// one hold more bytes than this and more than the checkpoint itself, so a new region
    /// replays at most about that much after loading the checkpoint.
    #[serde(default = "default_checkpoint_replay_bytes")]
    pub checkpoint_replay_bytes: u64,
    /// When exporting: how many segments the cluster's document holds at most (its ring of
    /// slots, reused group by group). A replica further behind than the ring loads the
    /// checkpoint instead. Every node of the cluster should use the same value, chosen
    /// before the cluster first exports: the exporter only deletes the groups of its
    /// current ring, so lowering it later does not shrink the document.
    #[serde(default = "default_segment_slots")]
    pub segment_slots: u64,
}

fn default_checkpoint_replay_bytes() -> u64 {
    DEFAULT_CHECKPOINT_REPLAY_BYTES
}

fn default_segment_slots() -> u64 {
    DEFAULT_SEGMENT_SLOTS
}

/// One region this cluster exports to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportConfig {
    /// The region.
    pub region: String,
    /// iroh endpoint ids (64 hex characters) of that region's nodes that import this
    /// cluster; every other endpoint is refused on the docs sync, docs push and blob
    /// protocols.
    pub readers: Vec<String>,
}

/// One cluster this node imports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportConfig {
    /// The source cluster's name.
    pub cluster: String,
    /// The region it runs in.
    pub region: String,
    /// Its document's namespace id (64 hex characters), from `aspen federation info`.
    pub namespace: String,
    /// Its author id (64 hex characters), from `aspen federation info`.
    pub author: String,
    /// Its nodes: where to sync the document from.
    pub nodes: Vec<RemoteNodeConfig>,
}

/// A node of another cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteNodeConfig {
    /// Its iroh endpoint id (64 lowercase hex characters).
    pub endpoint_id: String,
    /// Direct UDP addresses of its iroh endpoint.
    pub addrs: Vec<SocketAddr>,
}

/// A 32-byte id written as 64 lowercase hex characters.
fn check_id(field: &str, id: &str) -> Result<(), FieldError> {
    let hex = id.len() == 64 && id.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'));
    if hex {
        return Ok(());
    }
    Err(FieldError::new(
        field,
        format!(
            "\"{id}\" is not 64 lowercase hex characters; copy it from `aspen federation info` \
             run on a node of that cluster"
        ),
    ))
}

impl FederationConfig {
    /// All rules; field names are relative to `[federation]`. `cluster` is this node's.
    pub(crate) fn check(&self, cluster: &str) -> Result<(), FieldError> {
        check_name("region", "region", "us", &self.region)?;
        if self
            .secret_file
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(FieldError::new(
                "secret_file",
                "is empty; name the file holding the cluster's federation secret (write one \
                 with `aspen federation keygen --out FILE`)",
            ));
        }
        if !self.export.is_empty() && self.secret_file.is_none() {
            return Err(FieldError::new(
                "secret_file",
                "is missing, but [[federation.export]] lists regions: exporting needs the \
                 cluster's federation secret (write one with `aspen federation keygen --out FILE`)",
            ));
        }
        let mut regions = HashSet::new();
        for (i, export) in self.export.iter().enumerate() {
            let at = format!("export[{i}]");
            export.check(&self.region).map_err(|e| e.under(&at))?;
            if !regions.insert(export.region.as_str()) {
                return Err(FieldError::new(
                    format!("{at}.region"),
                    format!(
                        "\"{}\" is listed twice; merge the readers into one entry",
                        export.region
                    ),
                ));
            }
        }
        let replay = MIN_CHECKPOINT_REPLAY_BYTES..=MAX_CHECKPOINT_REPLAY_BYTES;
        if !replay.contains(&self.checkpoint_replay_bytes) {
            return Err(FieldError::new(
                "checkpoint_replay_bytes",
                format!(
                    "is {}; use {MIN_CHECKPOINT_REPLAY_BYTES} to {MAX_CHECKPOINT_REPLAY_BYTES} \
                     bytes (default {DEFAULT_CHECKPOINT_REPLAY_BYTES})",
                    self.checkpoint_replay_bytes
                ),
            ));
        }
        let slots = MIN_SEGMENT_SLOTS..=MAX_SEGMENT_SLOTS;
        if !slots.contains(&self.segment_slots)
            || !self.segment_slots.is_multiple_of(SEGMENT_GROUP_SLOTS)
        {
            return Err(FieldError::new(
                "segment_slots",
                format!(
                    "is {}; use a multiple of {SEGMENT_GROUP_SLOTS} from {MIN_SEGMENT_SLOTS} to \
                     {MAX_SEGMENT_SLOTS} (default {DEFAULT_SEGMENT_SLOTS})",
                    self.segment_slots
                ),
            ));
        }
        if self.import.len() > MAX_FEDERATION_IMPORTS {
            return Err(FieldError::new(
                "import",
                format!(
                    "lists {} clusters, at most {MAX_FEDERATION_IMPORTS}",
                    self.import.len()
                ),
            ));
        }
        let mut sources = HashSet::new();
        for (i, import) in self.import.iter().enumerate() {
            let at = format!("import[{i}]");
            import.check(cluster).map_err(|e| e.under(&at))?;
            if !sources.insert(import.cluster.as_str()) {
                return Err(FieldError::new(
                    format!("{at}.cluster"),
                    format!("\"{}\" is imported twice; keep one entry", import.cluster),
                ));
            }
        }
        Ok(())
    }
}

impl ExportConfig {
    fn check(&self, own_region: &str) -> Result<(), FieldError> {
        check_name("region", "region", "eu", &self.region)?;
        if self.region == own_region {
            return Err(FieldError::new(
                "region",
                format!(
                    "\"{}\" is this node's own region; a cluster exports to other regions (its \
                     own region reads it directly)",
                    self.region
                ),
            ));
        }
        if self.readers.is_empty() || self.readers.len() > MAX_FEDERATION_READERS {
            return Err(FieldError::new(
                "readers",
                format!(
                    "lists {} endpoints; list 1 to {MAX_FEDERATION_READERS} endpoint ids of the \
                     region's importing nodes (`aspen federation info` on them prints theirs)",
                    self.readers.len()
                ),
            ));
        }
        for (i, id) in self.readers.iter().enumerate() {
            check_id(&format!("readers[{i}]"), id)?;
        }
        Ok(())
    }
}

impl ImportConfig {
    fn check(&self, own_cluster: &str) -> Result<(), FieldError> {
        check_name("cluster", "cluster", "us-1", &self.cluster)?;
        if self.cluster == own_cluster {
            return Err(FieldError::new(
                "cluster",
                format!(
                    "\"{}\" is this node's own cluster; it is read directly",
                    self.cluster
                ),
            ));
        }
        check_name("region", "region", "us", &self.region)?;
        check_id("namespace", &self.namespace)?;
        check_id("author", &self.author)?;
        if self.nodes.is_empty() || self.nodes.len() > MAX_CLUSTER_NODES {
            return Err(FieldError::new(
                "nodes",
                format!(
                    "lists {} nodes; list 1 to {MAX_CLUSTER_NODES} of the source cluster's nodes",
                    self.nodes.len()
                ),
            ));
        }
        for (i, node) in self.nodes.iter().enumerate() {
            let at = format!("nodes[{i}]");
            check_endpoint_id(&node.endpoint_id).map_err(|e| e.under(&at))?;
            check_addrs(&node.addrs).map_err(|e| e.under(&at))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> String {
        format!("{n:02x}").repeat(32)
    }

    fn config() -> FederationConfig {
        FederationConfig {
            region: "us".into(),
            secret_file: Some("/etc/aspen/us-1.key".into()),
            export: vec![ExportConfig {
                region: "eu".into(),
                readers: vec![id(1)],
            }],
            import: vec![ImportConfig {
                cluster: "eu-1".into(),
                region: "eu".into(),
                namespace: id(2),
                author: id(3),
                nodes: vec![RemoteNodeConfig {
                    endpoint_id: id(4),
                    addrs: vec!["10.0.0.1:7501".parse().unwrap()],
                }],
            }],
            checkpoint_replay_bytes: DEFAULT_CHECKPOINT_REPLAY_BYTES,
            segment_slots: DEFAULT_SEGMENT_SLOTS,
        }
    }

    #[test]
    fn segment_slots_are_whole_groups_within_bounds() {
        let with = |slots| FederationConfig {
            segment_slots: slots,
            ..config()
        };
        with(MIN_SEGMENT_SLOTS).check("us-1").unwrap();
        with(MAX_SEGMENT_SLOTS).check("us-1").unwrap();
        with(MIN_SEGMENT_SLOTS + SEGMENT_GROUP_SLOTS)
            .check("us-1")
            .unwrap();
        for bad in [
            0,
            MIN_SEGMENT_SLOTS - SEGMENT_GROUP_SLOTS,
            MAX_SEGMENT_SLOTS + SEGMENT_GROUP_SLOTS,
            MIN_SEGMENT_SLOTS + 1,
            1000,
        ] {
            let err = with(bad).check("us-1").unwrap_err();
            assert_eq!(err.field, "segment_slots", "{bad}");
            assert!(
                err.reason
                    .contains(&format!("is {bad}; use a multiple of 64 from 128 to 65536")),
                "{}",
                err.reason
            );
        }
    }

    #[test]
    fn checkpoint_replay_bytes_is_bounded_both_ways() {
        let with = |bytes| FederationConfig {
            checkpoint_replay_bytes: bytes,
            ..config()
        };
        with(MIN_CHECKPOINT_REPLAY_BYTES).check("us-1").unwrap();
        with(MAX_CHECKPOINT_REPLAY_BYTES).check("us-1").unwrap();
        assert_eq!(
            field(&with(MIN_CHECKPOINT_REPLAY_BYTES - 1)),
            "checkpoint_replay_bytes"
        );
        assert_eq!(
            field(&with(MAX_CHECKPOINT_REPLAY_BYTES + 1)),
            "checkpoint_replay_bytes"
        );
    }

    fn field(c: &FederationConfig) -> String {
        c.check("us-1").expect_err("invalid").field
    }

    #[test]
    fn a_full_config_is_valid() {
        config().check("us-1").unwrap();
    }

    #[test]
    fn exporting_needs_a_secret_and_another_region() {
        let mut c = config();
        c.secret_file = None;
        assert_eq!(field(&c), "secret_file");
        let mut c = config();
        c.export[0].region = "us".into();
        assert_eq!(field(&c), "export[0].region");
        let mut c = config();
        c.export[0].readers[0] = "short".into();
        assert_eq!(field(&c), "export[0].readers[0]");
    }

    #[test]
    fn reader_count_is_bounded_at_both_ends() {
        let mut c = config();
        c.export[0].readers = (0..MAX_FEDERATION_READERS).map(|i| id(i as u8)).collect();
        c.check("us-1").unwrap();
        c.export[0].readers.push(id(9));
        assert_eq!(field(&c), "export[0].readers");
        c.export[0].readers.clear();
        assert_eq!(field(&c), "export[0].readers");
    }

    #[test]
    fn an_import_names_another_cluster_with_valid_ids_and_nodes() {
        let mut c = config();
        c.import[0].cluster = "us-1".into();
        assert_eq!(field(&c), "import[0].cluster");
        let mut c = config();
        c.import[0].namespace = "zz".into();
        assert_eq!(field(&c), "import[0].namespace");
        let mut c = config();
        c.import[0].nodes.clear();
        assert_eq!(field(&c), "import[0].nodes");
        let mut c = config();
        c.import[0].nodes[0].addrs = vec!["0.0.0.0:1".parse().unwrap()];
        assert_eq!(field(&c), "import[0].nodes[0].addrs[0]");
        let mut c = config();
        c.import.push(c.import[0].clone());
        assert_eq!(field(&c), "import[1].cluster");
    }

    #[test]
    fn import_count_is_bounded() {
        let mut c = config();
        let one = c.import[0].clone();
        c.import = (0..MAX_FEDERATION_IMPORTS)
            .map(|i| ImportConfig {
                cluster: format!("c-{i}"),
                ..one.clone()
            })
            .collect();
        c.check("us-1").unwrap();
        c.import.push(ImportConfig {
            cluster: "one-more".into(),
            ..one
        });
        assert_eq!(field(&c), "import");
    }
}
