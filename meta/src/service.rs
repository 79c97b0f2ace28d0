//! `pact.v1.Meta` on the client port of every `pact` node: served by the
//! node's replica of the metadata group if it has one, else answered
//! NOT_LEADER with a hint (a replica the group last recorded).

use std::sync::Arc;

use pact_common::ClusterConfig;
use pact_proto as pb;
use pact_proto::meta_server::{Meta, MetaServer};
use tonic::{Request, Response, Status};

use crate::group::{MetaGroup, MetaSlot};
use crate::machine::Member;
use crate::Error;

pub struct MetaService {
    slot: MetaSlot,
    /// The node's directory: where the group went, for a node that no
    /// longer (or never) hosts it.
    directory: pact_raft::Directory,
    me: u64,
    /// This node's cluster config, as TOML, for nodes joining with only
    /// `--endpoints`; None with TLS (nodes outside the config cannot join
    /// such a cluster yet, and its `[tls]` paths are this node's own).
    config: Option<Arc<String>>,
}

impl MetaService {
    pub fn new(
        slot: MetaSlot,
        directory: pact_raft::Directory,
        me: u64,
        config: &ClusterConfig,
    ) -> MetaServer<MetaService> {
        MetaServer::new(MetaService {
            slot,
            directory,
            me,
            config: config
                .tls
                .is_none()
                .then(|| Arc::new(config.to_toml_string())),
        })
    }
}

impl MetaService {
    /// This node's replica, or NOT_LEADER naming a node the group last
    /// recorded among its voters (the config's rule otherwise: a client
    /// tries the others it knows).
    fn group(&self) -> Result<Arc<MetaGroup>, Error> {
        if let Some(g) = self.slot.get() {
            return Ok(g);
        }
        let table = self.directory.shards();
        let hint = table
            .meta()
            .into_iter()
            .flat_map(|r| r.voters.iter().copied())
            .filter(|n| *n != self.me)
            .find_map(|n| self.directory.get(n).map(|m| (n, m.client_addr)));
        Err(Error::NotLeader { hint })
    }

    /// An error of a request that `g` served: STOPPED because the node
    /// dropped `g` while the request ran (its replica moved away) becomes
    /// what a request arriving now gets (NOT_LEADER with a hint), so the
    /// client asks the group's other replicas instead of giving up.
    fn settled(&self, g: &Arc<MetaGroup>, e: Error) -> Error {
        let dropped = self.slot.get().is_none_or(|now| !Arc::ptr_eq(&now, g));
        after_drop(e, dropped, || match self.group() {
            Err(not_here) => not_here,
            Ok(_) => Error::Unavailable(
                "this node's replica of the metadata group was replaced while the request ran; \
                 try again"
                    .into(),
            ),
        })
    }
}

/// `e`, or `instead()` if `e` is STOPPED only because the replica that
/// served the request was `dropped` meanwhile (a replica that failed by
/// itself stays STOPPED: its node must be restarted).
fn after_drop(e: Error, dropped: bool, instead: impl FnOnce() -> Error) -> Error {
    match e {
        Error::Fatal(_) if dropped => instead(),
        e => e,
    }
}

/// The only place a member meets its wire form.
fn response(members: Vec<Member>) -> pb::MembersResponse {
    pb::MembersResponse {
        members: members
            .into_iter()
            .map(|m| pb::ClusterMember {
                id: m.id,
                addr: m.addr,
                peer_addr: m.peer_addr,
                removed: m.removed,
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl Meta for MetaService {
    async fn members(
        &self,
        _request: Request<pb::MembersRequest>,
    ) -> Result<Response<pb::MembersResponse>, Status> {
        let g = self.group()?;
        let members = g.members().await.map_err(|e| self.settled(&g, e))?;
        Ok(Response::new(response(members)))
    }

    async fn add_member(
        &self,
        request: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::MembersResponse>, Status> {
        let r = request.into_inner();
        let g = self.group()?;
        let members = g
            .add(r.id, r.addr, r.peer_addr)
            .await
            .map_err(|e| self.settled(&g, e))?;
        Ok(Response::new(response(members)))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        Ok(Response::new(pact_raft::wire::status_response(
            self.group()?.replica().status(),
        )))
    }

    async fn config(
        &self,
        _request: Request<pb::ConfigRequest>,
    ) -> Result<Response<pb::ConfigResponse>, Status> {
        let Some(toml) = &self.config else {
            return Err(crate::Error::InvalidInput(
                "this cluster uses TLS; a node outside its config cannot join it yet (add the \
                 node to the config file)"
                    .into(),
            )
            .into());
        };
        Ok(Response::new(pb::ConfigResponse {
            toml: toml.as_ref().clone(),
        }))
    }

    async fn shards(
        &self,
        _request: Request<pb::ShardsRequest>,
    ) -> Result<Response<pb::ShardsResponse>, Status> {
        let g = self.group()?;
        let t = g.shards().await.map_err(|e| self.settled(&g, e))?;
        Ok(Response::new(pb::ShardsResponse {
            epoch: t.epoch,
            shards: t.shards.iter().map(pact_raft::wire::shard_record).collect(),
            groups: t
                .groups
                .into_iter()
                .map(|g| pb::GroupVoters {
                    group: g.group,
                    voters: g.voters,
                    voters_at: g.voters_at,
                })
                .collect(),
            retired: t
                .retired
                .iter()
                .map(pact_raft::wire::retired_shard)
                .collect(),
        }))
    }

    async fn retire_shard(
        &self,
        request: Request<pb::RetireShardRequest>,
    ) -> Result<Response<pb::RetiredShard>, Status> {
        let shard = pact_common::ShardId(request.into_inner().shard_id);
        let g = self.group()?;
        let r = g
            .retire_shard(shard)
            .await
            .map_err(|e| self.settled(&g, e))?;
        Ok(Response::new(pact_raft::wire::retired_shard(&r)))
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::MembersResponse>, Status> {
        let r = request.into_inner();
        let g = self.group()?;
        let members = g.remove(r.id).await.map_err(|e| self.settled(&g, e))?;
        Ok(Response::new(response(members)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_cut_off_by_its_replicas_drop_is_sent_elsewhere() {
        let hint = || Error::NotLeader {
            hint: Some((2, "127.0.0.1:2".into())),
        };
        let stopped = || Error::Fatal("raft stopped".into());
        assert_eq!(after_drop(stopped(), true, hint), hint());
        // Not dropped: the replica failed, and says so.
        assert_eq!(after_drop(stopped(), false, hint), stopped());
        // Other errors pass as they are.
        let busy = Error::Unavailable("no quorum".into());
        assert_eq!(after_drop(busy.clone(), true, hint), busy);
    }
}
