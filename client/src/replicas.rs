//! Adding, removing and moving a shard's replicas (`txn admin replica`),
//! driven from the client in steps that are each idempotent, so a step
//! cut short (a timeout, a crash of the caller) is finished by running the
//! same command again:
//!
//! 1. add: the new node starts an empty replica (`Admin.HostReplica`),
//!    then the group's leader adds it as a learner and, once it has caught
//!    up, as a voter (`Admin.ChangeReplicas`);
//! 2. remove: the leader takes the node out of the membership (handing
//!    its own leadership on first if it is the one removed), then the node
//!    drops its replica and deletes its data (`Admin.DropReplica`);
//! 3. move: add, then remove;
//! 4. colocate (before a merge): move one shard's replicas, one at a time,
//!    onto the nodes of another shard's voters.
//!
//! The safety checks (a live majority of the new voters, a caught-up new
//! voter, one change at a time) are the leader's, in
//! `pact_raft::membership`.

use std::time::Duration;

use pact_common::NodeId;
use pact_proto as pb;
use pact_proto::admin_client::AdminClient;

use crate::convert::{classify, Class};
use crate::{Client, ClientError, RaftGroup};

/// How long a membership change may take at the leader (its own limit is
/// 60 s), plus a margin.
const CHANGE_WITHIN: Duration = Duration::from_secs(65);

/// What removing a replica did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removed {
    /// The group's voters after the change.
    pub voters: Vec<NodeId>,
    /// None once the removed node dropped its replica and data; else why
    /// it did not (unreachable, say): running the same command again once
    /// it is back drops them.
    pub dropped: Option<String>,
}

/// One step of [`Client::colocate`]: a replica added on `to`, removed
/// from `from`, or both (a move).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Moved {
    pub from: Option<NodeId>,
    pub to: Option<NodeId>,
}

/// How long a call to one node is asked again while the node refuses
/// connections (it may be starting).
const NODE_STARTING: Duration = Duration::from_secs(5);

impl Client {
    /// Learn `node`'s address as [`Client::learn`] does, else from the
    /// member table (a node added a moment ago). Errors are the caller's
    /// answer: the node then stays unknown.
    async fn learn_member(&self, node: NodeId) {
        if !self.learn(node).await {
            let _ = self.members().await;
        }
    }

    /// The voters of `group` as its leader (or the most recent replica to
    /// answer) reports them: asked of every replica the client knows of.
    pub async fn group_voters(&self, group: RaftGroup) -> Result<Vec<NodeId>, ClientError> {
        self.voters_seen(group).await.map(|(_, v)| v)
    }

    /// The voters of `group` as its leader reports them; `Unavailable` if
    /// no replica that answered leads (a follower's view may be behind).
    pub async fn leader_voters(&self, group: RaftGroup) -> Result<Vec<NodeId>, ClientError> {
        match self.voters_seen(group).await? {
            (true, v) => Ok(v),
            (false, _) => Err(ClientError::Unavailable(format!(
                "{group}: no replica that answered leads it"
            ))),
        }
    }

    /// The best view of `group`'s voters (a leader's, else the highest
    /// term's) and whether it is a leader's.
    async fn voters_seen(&self, group: RaftGroup) -> Result<(bool, Vec<NodeId>), ClientError> {
        let st = self.best_status(group, &[]).await?;
        Ok((
            st.role == "leader",
            st.voters.into_iter().map(NodeId).collect(),
        ))
    }

    /// The best status of `group` that its replicas give (those the client
    /// knows, and `also`), following the leaders they name: a leader's,
    /// else the highest term's.
    pub(crate) async fn best_status(
        &self,
        group: RaftGroup,
        also: &[NodeId],
    ) -> Result<crate::ReplicaStatus, ClientError> {
        self.know(group).await;
        let mut ask = self.group_replicas(group);
        ask.extend_from_slice(also);
        if ask.is_empty() {
            return Err(ClientError::InvalidInput(format!(
                "no {group} in the config"
            )));
        }
        let mut best: Option<crate::ReplicaStatus> = None;
        let mut last = ClientError::Unavailable(format!("{group}: no replica answered"));
        let mut asked = Vec::new();
        while let Some(node) = ask.pop() {
            if asked.contains(&node) {
                continue;
            }
            asked.push(node);
            let r = match group {
                RaftGroup::Shard(s) => self.replica_status(s, node).await,
                RaftGroup::Coordinator(g) => self.coordinator_group_status(g, node).await,
                RaftGroup::Meta => self.meta_status(node).await,
            };
            match r {
                // Only the group asked about (a node may run another
                // coordinator group's replica since a move).
                Ok(st) if !st.voters.is_empty() && st.shard == group.id() => {
                    if let Some(l) = st.leader.filter(|l| !asked.contains(&NodeId(*l))) {
                        ask.push(NodeId(l));
                    }
                    let rank = |s: &crate::ReplicaStatus| (s.role == "leader", s.term);
                    if best.as_ref().is_none_or(|b| rank(&st) > rank(b)) {
                        best = Some(st);
                    }
                }
                Ok(_) => {}
                Err(e) => last = e,
            }
        }
        best.ok_or(last)
    }

    /// Call `f` on the Admin service of `group`'s leader, found by asking
    /// its replicas and following "not leader" hints to any node.
    async fn at_leader<T, F, Fut>(&self, group: RaftGroup, f: F) -> Result<T, ClientError>
    where
        F: Fn(AdminClient<crate::Conn>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.know(group).await;
        let replicas = self.group_replicas(group);
        let mut ask: Vec<NodeId> = replicas.iter().rev().copied().collect();
        let mut last = ClientError::Unavailable(format!("{group}: no replica answered"));
        let mut tried = Vec::new();
        // A hint may lead to a node that just lost the leadership: follow
        // a few, not forever.
        let mut hops = 0;
        // An election under way (replicas that name a dead leader until
        // their timeout): ask every replica again, for a while.
        let deadline = tokio::time::Instant::now() + self.inner.opts.retry_for;
        let mut pause = Duration::from_millis(100);
        loop {
            let Some(node) = ask.pop() else {
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
                ask = replicas.iter().rev().copied().collect();
                tried.clear();
                hops = 0;
                continue;
            };
            if tried.contains(&node) && hops > 8 {
                continue;
            }
            tried.push(node);
            self.learn(node).await;
            let ch = match self.channel(node) {
                Ok(ch) => ch,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            match tokio::time::timeout(CHANGE_WITHIN, f(AdminClient::new(ch))).await {
                Ok(Ok(r)) => return Ok(r.into_inner()),
                Ok(Err(s)) => match classify(&s) {
                    Class::NotLeader(Some(hint)) if hint != node && hops < 16 => {
                        hops += 1;
                        ask.push(hint);
                        last = ClientError::Unavailable(format!("{}: not leader", self.who(node)));
                    }
                    Class::NotLeader(_) | Class::Retry(_) => {
                        last = ClientError::Unavailable(format!(
                            "{}: {}",
                            self.who(node),
                            s.message()
                        ));
                    }
                    Class::Unknown(m) => {
                        return Err(ClientError::Unknown(format!("{}: {m}", self.who(node))))
                    }
                    Class::Overloaded(m, _) => return Err(ClientError::Overloaded(m)),
                    Class::Fail(e) => return Err(e),
                },
                Err(_) => {
                    return Err(ClientError::Unknown(format!(
                        "{} did not answer within {CHANGE_WITHIN:?}; the change may still \
                         finish: check with `txn admin shard list`, or run the command again",
                        self.who(node)
                    )))
                }
            }
        }
        Err(last)
    }

    /// Make `node` a voter of shard group `group`: it hosts an empty
    /// replica, the leader adds it as a learner and promotes it once it
    /// has caught up. Returns the voters after the change.
    pub async fn add_replica(
        &self,
        group: RaftGroup,
        node: NodeId,
    ) -> Result<Vec<NodeId>, ClientError> {
        // A node added at run time is in the member table, not the config.
        self.learn_member(node).await;
        if self.node_addr(node).is_none() {
            return Err(ClientError::InvalidInput(format!(
                "node {node} is not a member of the cluster (txn admin member list)"
            )));
        }
        let voters = self.group_voters(group).await?;
        // Already a voter (maybe of a change left half done): the leader
        // is asked all the same, and finishes what is unfinished.
        if !voters.contains(&node) {
            self.host_replica(group, node, &voters).await?;
        }
        let r = self.change_replicas(group, node, false).await?;
        Ok(r.voters.into_iter().map(NodeId).collect())
    }

    /// `Admin.ChangeReplicas` at `group`'s leader: add `node` as a voter,
    /// or with `remove` take it out.
    async fn change_replicas(
        &self,
        group: RaftGroup,
        node: NodeId,
        remove: bool,
    ) -> Result<pb::ChangeReplicasResponse, ClientError> {
        let id = group.id();
        self.at_leader(group, |mut c| async move {
            c.change_replicas(pb::ChangeReplicasRequest {
                group: id,
                node: node.0,
                remove,
                coordinator: group.is_coordinator(),
            })
            .await
        })
        .await
    }

    /// Have `node` start an empty replica of `group`, whose voters are
    /// `voters`.
    async fn host_replica(
        &self,
        group: RaftGroup,
        node: NodeId,
        voters: &[NodeId],
    ) -> Result<(), ClientError> {
        self.host_new(group, node, voters, false).await
    }

    /// Have `node` start an empty replica of `group`: with `create`, of a
    /// group being created (a split's new shard), `node` among `voters`,
    /// its first voters; else of an existing group whose voters are
    /// `voters`, to be added as a learner. Idempotent.
    pub async fn host_new(
        &self,
        group: RaftGroup,
        node: NodeId,
        voters: &[NodeId],
        create: bool,
    ) -> Result<(), ClientError> {
        let req = pb::HostReplicaRequest {
            group: group.id(),
            voters: voters.iter().map(|v| v.0).collect(),
            create,
            coordinator: group.is_coordinator(),
        };
        self.at_node(node, |mut c| {
            let req = req.clone();
            async move { c.host_replica(req).await }
        })
        .await
    }

    /// One Admin call to `node` itself (not to a group's leader): a final
    /// error stays one, anything else is "unavailable" with the node named.
    async fn at_node<T, F, Fut>(&self, node: NodeId, f: F) -> Result<(), ClientError>
    where
        F: Fn(AdminClient<crate::Conn>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.learn_member(node).await;
        // A node that is starting (just added, say) refuses connections
        // for a moment: nothing was sent, so ask again, for a while.
        let until = tokio::time::Instant::now() + NODE_STARTING;
        loop {
            let c = AdminClient::new(self.channel(node)?);
            match tokio::time::timeout(self.inner.opts.request_timeout * 2, f(c)).await {
                Err(_) => {
                    return Err(ClientError::Unavailable(format!(
                        "{} did not answer in time",
                        self.who(node)
                    )))
                }
                Ok(Err(s)) => match classify(&s) {
                    Class::Fail(e) => return Err(e),
                    Class::Retry(_)
                        if crate::convert::connection_refused(&s)
                            && tokio::time::Instant::now() < until =>
                    {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    _ => {
                        return Err(ClientError::Unavailable(format!(
                            "{}: {}",
                            self.who(node),
                            s.message()
                        )))
                    }
                },
                Ok(Ok(_)) => return Ok(()),
            }
        }
    }

    /// Put `shard`'s replicas on the nodes of `with`'s voters (both as
    /// their leaders report them), so that the two can merge: a replica
    /// added on each node `with` has and `shard` lacks, each followed by a
    /// replica removed from a node `shard` has and `with` lacks (a move),
    /// and any replicas left over removed. One change at a time, each with
    /// the leader's checks (a live majority, a caught-up new voter), so a
    /// step refused or cut short leaves the shard serving, and running it
    /// again goes on from where it is. Returns the steps taken (none when
    /// the two already share their voters).
    pub async fn colocate(
        &self,
        shard: pact_common::ShardId,
        with: pact_common::ShardId,
    ) -> Result<Vec<Moved>, ClientError> {
        use std::collections::BTreeSet;
        let group = RaftGroup::Shard(shard);
        let target: BTreeSet<NodeId> = self
            .leader_voters(RaftGroup::Shard(with))
            .await?
            .into_iter()
            .collect();
        let mut voters: BTreeSet<NodeId> = match self.leader_voters(group).await {
            Ok(v) => v.into_iter().collect(),
            Err(e) => {
                // A shard merged and retired has no group left, and
                // nothing to move (its merge is asked again to learn the
                // first answer).
                self.learn_retired(crate::RETIRED_LOOKUP).await;
                if self.is_retired(shard) {
                    return Ok(Vec::new());
                }
                return Err(e);
            }
        };
        let mut steps = Vec::new();
        // Each step brings the two sets one node closer; the bound only
        // guards against a group changed under our feet all along.
        for _ in 0..2 * (target.len() + voters.len()) {
            let to = target.difference(&voters).next().copied();
            let from = voters.difference(&target).next().copied();
            if to.is_none() && from.is_none() {
                return Ok(steps);
            }
            if let Some(to) = to {
                voters = self.add_replica(group, to).await?.into_iter().collect();
            }
            if let Some(from) = from {
                let removed = self.remove_replica(group, from).await?;
                if let Some(why) = removed.dropped {
                    tracing::warn!(%shard, node = %from, %why, "removed replica's data not dropped yet");
                }
                voters = removed.voters.into_iter().collect();
            }
            steps.push(Moved { from, to });
        }
        Err(ClientError::Unavailable(format!(
            "shard {shard}'s replicas kept changing while they were moved onto shard {with}'s \
             nodes; try again"
        )))
    }

    /// Take `node` out of `group` and have it drop its replica's data.
    pub async fn remove_replica(
        &self,
        group: RaftGroup,
        node: NodeId,
    ) -> Result<Removed, ClientError> {
        let id = group.id();
        let r = self.change_replicas(group, node, true).await?;
        let voters: Vec<NodeId> = r.voters.into_iter().map(NodeId).collect();
        let req = pb::DropReplicaRequest {
            group: id,
            voters: voters.iter().map(|v| v.0).collect(),
            coordinator: group.is_coordinator(),
        };
        let dropped = self
            .at_node(node, |mut c| {
                let req = req.clone();
                async move { c.drop_replica(req).await }
            })
            .await;
        Ok(Removed {
            voters,
            dropped: dropped.err().map(|e: ClientError| e.to_string()),
        })
    }
}
