//! The node's iroh transport: see the `aspen-net` crate, re-exported here so the rest of
//! this crate (and its tests) name it as part of the node.

pub use aspen_net::frame::*;
pub use aspen_net::transport::*;
pub use aspen_net::{Access, Drain, CLOSE_REFUSED, CLOSE_STOPPING};
