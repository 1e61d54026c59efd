//! One `[[peers]]` entry of a node's config: another member of the cluster, named by its
//! Raft node id and its iroh endpoint id, with the direct addresses to dial it at. Rules
//! about the list as a whole (uniqueness, size) live in the parent module. A router's
//! `[[clusters.nodes]]` entries use the same schema and rules.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::error::FieldError;
use crate::limits::MAX_PEER_ADDRS;

/// Length of an iroh endpoint id written as hex: 32 bytes of ed25519 public key.
const ENDPOINT_ID_HEX_LEN: usize = 64;

/// Another member, or would-be member, of this node's cluster; in a router's config, a
/// member of a cluster the router forwards to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The peer's Raft node id; >= 1, unique in the cluster, not this node's id.
    pub node_id: u64,
    /// The peer's iroh EndpointId (its identity): 64 lowercase hex characters. Raft RPCs
    /// are accepted only from listed identities. The node prints its endpoint id at start.
    pub endpoint_id: String,
    /// Direct UDP addresses of the peer's iroh endpoint (its `iroh_bind_addr` as reachable
    /// from here); at least one, at most [`MAX_PEER_ADDRS`].
    pub addrs: Vec<SocketAddr>,
}

impl PeerConfig {
    /// Rules for this entry alone; field names are relative to the entry.
    pub(crate) fn check(&self) -> Result<(), FieldError> {
        if self.node_id == 0 {
            return Err(FieldError::new(
                "node_id",
                "is 0; Raft node ids start at 1: use the node_id from that peer's own config",
            ));
        }
        check_endpoint_id(&self.endpoint_id)?;
        check_addrs(&self.addrs)
    }
}

/// The rules of a list of a peer's direct addresses (field `addrs`).
pub(crate) fn check_addrs(addrs: &[SocketAddr]) -> Result<(), FieldError> {
    if addrs.is_empty() {
        return Err(FieldError::new(
            "addrs",
            "is empty; list at least one address where the peer's iroh endpoint listens, \
             such as [\"10.0.0.2:7401\"]",
        ));
    }
    if addrs.len() > MAX_PEER_ADDRS {
        return Err(FieldError::new(
            "addrs",
            format!(
                "lists {} addresses, at most {MAX_PEER_ADDRS} are allowed; keep the ones \
                 this node can actually reach",
                addrs.len()
            ),
        ));
    }
    for (i, addr) in addrs.iter().enumerate() {
        if addr.port() == 0 || addr.ip().is_unspecified() {
            return Err(FieldError::new(
                format!("addrs[{i}]"),
                format!(
                    "is {addr}, which cannot be dialed; use the peer's reachable IP and the \
                     fixed port of its iroh_bind_addr"
                ),
            ));
        }
    }
    Ok(())
}

/// An endpoint id is exactly 64 characters of `[0-9a-f]`.
pub(crate) fn check_endpoint_id(id: &str) -> Result<(), FieldError> {
    const RULE: &str = "an endpoint id is the peer's iroh EndpointId as 64 lowercase hex \
                        characters [0-9a-f]; the node prints its endpoint id at start";
    let len = id.chars().count();
    if len != ENDPOINT_ID_HEX_LEN {
        return Err(FieldError::new(
            "endpoint_id",
            format!("\"{id}\" has {len} characters; {RULE}"),
        ));
    }
    if let Some(bad) = id.chars().find(|c| !matches!(c, '0'..='9' | 'a'..='f')) {
        return Err(FieldError::new(
            "endpoint_id",
            format!("\"{id}\" contains {bad:?}; {RULE}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::tests::peer;

    fn field_of(peer: &PeerConfig) -> String {
        peer.check().expect_err("expected a validation error").field
    }

    #[test]
    fn valid_peer_is_accepted() {
        peer(2).check().unwrap();
    }

    #[test]
    fn peer_node_id_zero_is_refused() {
        let mut p = peer(2);
        p.node_id = 0;
        assert_eq!(field_of(&p), "node_id");
    }

    #[test]
    fn endpoint_id_of_64_hex_accepted() {
        let mut p = peer(2);
        p.endpoint_id = "0123456789abcdef".repeat(4);
        p.check().unwrap();
    }

    #[test]
    fn endpoint_id_of_63_or_65_chars_is_refused() {
        for len in [63, 65, 0] {
            let mut p = peer(2);
            p.endpoint_id = "a".repeat(len);
            assert_eq!(field_of(&p), "endpoint_id", "{len}");
        }
    }

    #[test]
    fn endpoint_id_with_a_non_hex_char_is_refused() {
        for bad in ['g', 'A', ' ', 'é'] {
            let mut p = peer(2);
            p.endpoint_id = format!("{}{bad}", "a".repeat(63));
            let err = p.check().expect_err("non-hex refused");
            assert_eq!(err.field, "endpoint_id");
            assert!(err.reason.contains("64 lowercase hex"), "{}", err.reason);
        }
    }

    #[test]
    fn empty_addrs_are_refused() {
        let mut p = peer(2);
        p.addrs.clear();
        assert_eq!(field_of(&p), "addrs");
    }

    #[test]
    fn max_peer_addrs_accepted_and_one_more_refused() {
        let mut p = peer(2);
        p.addrs = (1..=MAX_PEER_ADDRS as u16)
            .map(|port| SocketAddr::from(([10, 0, 0, 2], port)))
            .collect();
        p.check().unwrap();
        p.addrs.push(SocketAddr::from(([10, 0, 0, 3], 1)));
        assert_eq!(field_of(&p), "addrs");
    }

    #[test]
    fn undialable_addr_is_refused_with_its_index() {
        for bad in ["10.0.0.2:0", "0.0.0.0:7401", "[::]:7401"] {
            let mut p = peer(2);
            p.addrs.push(bad.parse().unwrap());
            assert_eq!(field_of(&p), "addrs[1]", "{bad}");
        }
    }
}
