//! The cluster's members, as the metadata group keeps them
//! (`pact.v1.Meta`): list, add, remove.

use pact_proto as pb;

use crate::{Client, ClientError};

/// One node of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterMember {
    pub id: u64,
    /// Client port.
    pub addr: String,
    /// Peer port.
    pub peer_addr: String,
    /// Removed from the cluster: no longer routed to, its id never reused.
    pub removed: bool,
}

fn meta(ch: crate::Conn) -> pb::meta_client::MetaClient<crate::Conn> {
    pb::meta_client::MetaClient::new(ch)
}

impl Client {
    /// Every member (removed ones included), sorted by id; read at the
    /// metadata group's leader.
    pub async fn members(&self) -> Result<Vec<ClusterMember>, ClientError> {
        let r = self
            .call_meta(true, |ch| async move {
                meta(ch).members(pb::MembersRequest {}).await
            })
            .await?;
        let table = crate::convert::members(r);
        self.met(&table);
        Ok(table)
    }

    /// The metadata group's shard table (every shard it recorded, merged
    /// ones included, sorted by id) and its epoch; read at its leader.
    pub async fn meta_shards(&self) -> Result<pact_common::ShardTable, ClientError> {
        let r = self
            .call_meta(true, |ch| async move {
                meta(ch).shards(pb::ShardsRequest {}).await
            })
            .await?;
        let mut shards = r
            .shards
            .into_iter()
            .map(crate::convert::shard_record)
            .collect::<Result<Vec<_>, _>>()
            .map_err(ClientError::Internal)?;
        shards.sort_by_key(|r| r.descriptor.shard);
        let mut groups: Vec<pact_common::GroupRecord> = r
            .groups
            .into_iter()
            .map(|g| pact_common::GroupRecord {
                group: g.group,
                voters: g.voters,
                voters_at: g.voters_at,
            })
            .collect();
        groups.sort_by_key(|g| g.group);
        let mut retired = r
            .retired
            .into_iter()
            .map(crate::convert::retired_shard)
            .collect::<Result<Vec<_>, _>>()
            .map_err(ClientError::Internal)?;
        retired.sort_by_key(|r| r.shard);
        self.note_retired(retired.iter().map(|r| r.shard));
        Ok(pact_common::ShardTable {
            epoch: r.epoch,
            shards,
            groups,
            retired,
        })
    }

    /// Retire merged shard `shard` (`pact.v1.Meta.RetireShard`): the
    /// record every node answers for it from, once its group is gone.
    /// Idempotent.
    pub async fn retire_shard(
        &self,
        shard: pact_common::ShardId,
    ) -> Result<pact_common::RetiredShard, ClientError> {
        let r = self
            .call_meta(true, |ch| async move {
                meta(ch)
                    .retire_shard(pb::RetireShardRequest { shard_id: shard.0 })
                    .await
            })
            .await?;
        let r = crate::convert::retired_shard(r).map_err(ClientError::Internal)?;
        self.note_retired([r.shard]);
        Ok(r)
    }

    /// Whether merged shard `shard` may be retired, at its leader
    /// (`pact.v1.Kv.Retirable`): the record its retirement would make.
    pub async fn retirable(
        &self,
        shard: pact_common::ShardId,
    ) -> Result<pact_common::RetiredShard, ClientError> {
        self.know(crate::RaftGroup::Shard(shard)).await;
        let r = self
            .call_shard(shard, true, |ch| async move {
                pb::kv_client::KvClient::new(ch)
                    .retirable(pb::DescribeRequest { shard_id: shard.0 })
                    .await
            })
            .await?;
        crate::convert::retired_shard(r).map_err(ClientError::Internal)
    }

    /// What coordinator group `group`'s leader says of its committed
    /// voters (asked of the replicas the client knows and of `also`, the
    /// voters recorded last, following the leader they name), for the
    /// metadata group's table.
    pub async fn group_record(
        &self,
        group: u64,
        also: &[u64],
    ) -> Result<pact_common::GroupRecord, ClientError> {
        let also: Vec<crate::NodeId> = also.iter().copied().map(crate::NodeId).collect();
        let st = self
            .best_status(crate::RaftGroup::Coordinator(group), &also)
            .await?;
        if st.role != "leader" {
            return Err(ClientError::Unavailable(format!(
                "coord {group}: no replica that answered leads it"
            )));
        }
        Ok(pact_common::GroupRecord {
            group,
            voters: st.committed_voters,
            voters_at: st.voters_at,
        })
    }

    /// Add node `id` with its client and peer addresses; the members
    /// after. Idempotent.
    pub async fn add_member(
        &self,
        id: u64,
        addr: &str,
        peer_addr: &str,
    ) -> Result<Vec<ClusterMember>, ClientError> {
        let req = pb::AddMemberRequest {
            id,
            addr: addr.to_string(),
            peer_addr: peer_addr.to_string(),
        };
        // Idempotent: adding the same member again changes nothing.
        let r = self
            .call_meta(true, |ch| {
                let req = req.clone();
                async move { meta(ch).add_member(req).await }
            })
            .await?;
        let table = crate::convert::members(r);
        self.met(&table);
        Ok(table)
    }

    /// The cluster config a node of the metadata group runs with (read at
    /// its leader), for a node joining with only endpoints.
    pub async fn cluster_config(&self) -> Result<pact_common::ClusterConfig, ClientError> {
        let r = self
            .call_meta(true, |ch| async move {
                meta(ch).config(pb::ConfigRequest {}).await
            })
            .await?;
        pact_common::ClusterConfig::from_toml_str(&r.toml).map_err(|e| {
            ClientError::Internal(format!("the cluster sent a config that does not load: {e}"))
        })
    }

    /// The nodes of the metadata group as this client knows them: the
    /// config's (the first coordinator group's), or those a routing table
    /// named (the group's replicas move).
    pub fn meta_replicas(&self) -> Vec<pact_common::NodeId> {
        match self.inner.meta.read() {
            Ok(m) => m.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Status of `node`'s replica of the metadata group. A server that
    /// cannot run one (a `coordinator` process) answers `InvalidInput`; a
    /// `pact` node that runs none now, "not leader".
    pub async fn meta_status(
        &self,
        node: pact_common::NodeId,
    ) -> Result<crate::ReplicaStatus, ClientError> {
        self.learn(node).await;
        let mut c = meta(self.channel(node)?);
        let req = pb::StatusRequest { shard_id: 0 };
        self.status_reply(node, c.status(req)).await
    }

    /// Mark node `id` removed; the members after. Idempotent.
    pub async fn remove_member(&self, id: u64) -> Result<Vec<ClusterMember>, ClientError> {
        let r = self
            .call_meta(true, |ch| async move {
                meta(ch).remove_member(pb::RemoveMemberRequest { id }).await
            })
            .await?;
        Ok(crate::convert::members(r))
    }
}
