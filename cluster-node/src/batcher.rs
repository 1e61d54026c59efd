//! The queue-and-batch task behind the proposer and the ReadIndex rounds: see
//! `aspen_net::batcher`, re-exported here (the router batches with it too).

pub use aspen_net::batcher::*;
