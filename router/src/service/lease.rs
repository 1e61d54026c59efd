//! Leases through the router: a lease lives in one cluster, named in its id, so keep-
//! alives, gets and revokes go to that cluster; a grant goes to the cluster owning the
//! key it names (or the only cluster there is). A leased write whose lease is of another
//! cluster than its keys is refused with 422 `cross_cluster` before anything is sent.

use aspen_api::lease::{LeaseAnswer, LeaseOp, LeaseRequest};
use aspen_api::wire::{KvRequest, KvResponse};
use aspen_api::{ApiError, ValidationError};

use super::{client_of, route_error, unexpected, RouterService};

impl RouterService {
    /// Serves a lease operation on the lease's cluster; returns the answer and the cluster.
    pub async fn lease(&self, op: LeaseOp) -> Result<(LeaseAnswer, String), ApiError> {
        let routing = self.routing();
        let (cluster, request) = match op {
            LeaseOp::Grant { ttl_secs, key } => {
                let cluster = match key {
                    Some(key) => {
                        aspen_api::command::validate_key(&key)?;
                        routing.table.owner(&key).map_err(route_error)?.to_string()
                    }
                    None => match routing.table.clusters() {
                        [only] => only.name.clone(),
                        all => {
                            return Err(ValidationError::field(
                                "key",
                                format!(
                                    "this router routes to {} clusters: name a key of the \
                                     cluster that should hold the lease (a lease can hold only \
                                     its own cluster's keys)",
                                    all.len()
                                ),
                            )
                            .into())
                        }
                    },
                };
                (cluster, LeaseRequest::Grant { ttl_secs })
            }
            LeaseOp::KeepAlive(id) => (id.cluster, LeaseRequest::KeepAlive { lease: id.id }),
            LeaseOp::Get(id) => (id.cluster, LeaseRequest::Get { lease: id.id }),
            LeaseOp::Revoke(id) => (id.cluster, LeaseRequest::Revoke { lease: id.id }),
        };
        if routing.table.cluster(&cluster).is_none() {
            return Err(aspen_api::ApiError::new(
                aspen_api::ErrorCode::LeaseNotFound,
                format!("the lease's cluster {cluster} is not one this router routes to"),
            ));
        }
        let client = client_of(&routing, &cluster)?;
        match client.call(KvRequest::Lease(request)).await? {
            KvResponse::Lease(answer) => Ok((answer, cluster)),
            other => Err(unexpected(&cluster, other)),
        }
    }
}
