//! `pact.v1.Admin`: operator actions on the groups a server hosts, served
//! on its client port. Errors carry the codes of `pact_common::codes`
//! (section 7 of docs/architecture.md).

use std::sync::Arc;
use std::time::Duration;

use pact_common::{ClusterConfig, ErrorCode};
use pact_proto as pb;
use pact_proto::admin_server::{Admin, AdminServer};
use tonic::{Request, Response, Status};

use crate::balance::{transfer, TransferError};
use crate::network::Router;
use crate::wire::{error_status, topology_response};

/// How long a transfer may take before the call reports it incomplete.
pub const TRANSFER_WITHIN: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct AdminService {
    router: Router,
    /// Built once: the config does not change while the server runs.
    topology: Arc<pb::TopologyResponse>,
}

impl AdminService {
    /// Operator actions on the groups `router` reaches, and the routing
    /// table of `config`.
    pub fn new(router: Router, config: &ClusterConfig) -> AdminServer<Self> {
        AdminServer::new(AdminService {
            router,
            topology: Arc::new(topology_response(config)),
        })
    }
}

fn status(e: TransferError) -> Status {
    let msg = e.to_string();
    match e {
        TransferError::UnknownGroup(_) => error_status(ErrorCode::UnknownShard, msg, None, None),
        TransferError::NotLeader { leader } => error_status(
            ErrorCode::NotLeader,
            msg,
            None,
            leader.map(|l| (l, String::new())),
        ),
        TransferError::NotVoter { .. } => error_status(ErrorCode::InvalidInput, msg, None, None),
        TransferError::Incomplete(_) => error_status(ErrorCode::Unavailable, msg, None, None),
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn transfer_leader(
        &self,
        request: Request<pb::LeaderTransferRequest>,
    ) -> Result<Response<pb::LeaderTransferResponse>, Status> {
        let r = request.into_inner();
        let router = self.router.clone();
        // Owned: a caller that gives up does not leave the transfer half
        // done in a dropped future (openraft finishes it either way).
        let (leader, term) =
            tokio::spawn(async move { transfer(&router, r.group, r.to, TRANSFER_WITHIN).await })
                .await
                .map_err(|e| Status::internal(format!("transfer task failed: {e}")))?
                .map_err(status)?;
        Ok(Response::new(pb::LeaderTransferResponse { leader, term }))
    }

    async fn topology(
        &self,
        _request: Request<pb::TopologyRequest>,
    ) -> Result<Response<pb::TopologyResponse>, Status> {
        Ok(Response::new(self.topology.as_ref().clone()))
    }
}
