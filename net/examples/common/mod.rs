//! What the transport examples share: an endpoint on a free loopback port, relays off,
//! open to every peer.

use aspen_net::{bind_endpoint, Access};
use iroh::{Endpoint, EndpointAddr, SecretKey, TransportAddr};

pub async fn endpoint() -> Endpoint {
    let any_port = "127.0.0.1:0".parse().expect("an address");
    bind_endpoint(SecretKey::generate(), any_port, false, &Access::open())
        .await
        .expect("binding an endpoint on loopback")
}

/// Where `endpoint` can be reached: its id and every socket it is bound to.
pub fn address(endpoint: &Endpoint) -> EndpointAddr {
    let addrs = endpoint.bound_sockets().into_iter().map(TransportAddr::Ip);
    EndpointAddr::new(endpoint.id()).with_addrs(addrs)
}
