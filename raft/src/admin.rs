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
use crate::membership::{self, MembershipError};
use crate::network::Router;
use crate::replica::Directory;
use crate::wire::{error_status, topology_response};

/// How long a transfer may take before the call reports it incomplete.
pub const TRANSFER_WITHIN: Duration = Duration::from_secs(10);

/// How long adding or removing a replica may take before the call reports
/// it incomplete (a learner catching up by snapshot included).
pub const MEMBERSHIP_WITHIN: Duration = Duration::from_secs(60);

/// How long a membership change waits for this node's directory to learn
/// a node just added to the member table (it is refreshed every second).
const DIRECTORY_GRACE: Duration = Duration::from_secs(3);

/// Why a node did not start or stop a replica.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// Not possible as asked (an unknown group, a group still counting
    /// this node); the message says why.
    #[error("{0}")]
    Refused(String),
    /// The replica did not start or stop (storage failed, or the server
    /// cannot host groups at run time).
    #[error("{0}")]
    Failed(String),
}

/// Which kind of group an admin call names: a shard and a coordinator
/// group may share an id in a config (never on one node), so the caller
/// says which it means; the metadata group has an id of its own
/// ([`pact_common::META_GROUP`]), which no other group can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupKind {
    Shard,
    Coordinator,
    Meta,
}

impl GroupKind {
    pub fn of(group: u64, coordinator: bool) -> GroupKind {
        if group == pact_common::META_GROUP {
            GroupKind::Meta
        } else if coordinator {
            GroupKind::Coordinator
        } else {
            GroupKind::Shard
        }
    }
}

/// Whatever a node holds while one of its groups' replicas change
/// ([`GroupHost::may_change`]); dropped when the change is over.
pub type ChangeHold = Option<Box<dyn std::any::Any + Send + Sync>>;

/// What starts and stops a node's replicas at run time: the server that
/// knows how to build a group's application (a shard's participant, a
/// coordinator's recovery log).
#[tonic::async_trait]
pub trait GroupHost: Send + Sync + 'static {
    /// Start this node's replica of `group` (of `kind`), whose voters are
    /// `voters` (idempotent: a hosted group is left as it is); `create`:
    /// the group is a split's new shard being created, `voters` its first
    /// voters.
    async fn host(
        &self,
        group: u64,
        kind: GroupKind,
        voters: Vec<u64>,
        create: bool,
    ) -> Result<(), HostError>;
    /// Stop this node's replica of `group` (of `kind`) for good and delete
    /// its data (idempotent: a group not hosted is fine).
    async fn drop_group(&self, group: u64, kind: GroupKind) -> Result<(), HostError>;
    /// Whether `group`'s replicas may change now, this node running its
    /// replica of `kind` (refused otherwise): a shard that is splitting
    /// (or being created by a split) may not, since each step of the
    /// split reads the other group's replica on the same node. What it
    /// returns is held until the change is over (a shard's split lock,
    /// so that no split begins meanwhile: a split records its voters).
    async fn may_change(&self, _group: u64, _kind: GroupKind) -> Result<ChangeHold, HostError> {
        Ok(None)
    }
}

#[derive(Clone)]
pub struct AdminService {
    router: Router,
    /// Built once from the config; the replicas of the groups this node
    /// hosts are filled in from their live membership at each call.
    topology: Arc<pb::TopologyResponse>,
    host: Option<Arc<dyn GroupHost>>,
    /// Peer addresses by node id, for new learners: the config's.
    peers: Arc<std::collections::BTreeMap<u64, String>>,
    /// On `pact`: every member of the cluster as the metadata group lists
    /// it, nodes added at run time included; they win over the config.
    directory: Option<Directory>,
    /// This node's id.
    me: u64,
    /// The coordinator group this node hosts, if any (per the config).
    coordinator_group: Option<u64>,
    /// Each group's replicas in the config (see `membership::remove`).
    anchors: Arc<std::collections::BTreeMap<u64, std::collections::BTreeSet<u64>>>,
    /// Each coordinator group's replicas in the config, for a change that
    /// names its group a coordinator group.
    coordinator_anchors: Arc<std::collections::BTreeMap<u64, std::collections::BTreeSet<u64>>>,
}

impl AdminService {
    /// Operator actions on the groups `router` reaches on node `me`, and
    /// the routing table of `config`. Replicas cannot be hosted or
    /// dropped here.
    pub fn new(router: Router, config: &ClusterConfig, me: u64) -> AdminServer<Self> {
        Self::with_host(router, config, me, None, None)
    }

    /// [`AdminService::new`] on node `me`, whose `host` starts and stops
    /// replicas at run time, and which learns the cluster's nodes from
    /// `directory`.
    pub fn with_host(
        router: Router,
        config: &ClusterConfig,
        me: u64,
        host: Option<Arc<dyn GroupHost>>,
        directory: Option<Directory>,
    ) -> AdminServer<Self> {
        AdminServer::new(AdminService {
            router,
            topology: Arc::new(topology_response(config)),
            host,
            directory,
            peers: Arc::new(
                config
                    .nodes
                    .iter()
                    .map(|n| (n.id.0, n.peer_addr.clone()))
                    .collect(),
            ),
            me,
            coordinator_group: config
                .coordinator_of(pact_common::NodeId(me))
                .map(|g| g.group),
            // A shard and a coordinator group may share an id across
            // processes (never on one node): this node's own coordinator
            // group stands for its id here, and any other whose id no
            // shard has (on `pact` its leader may be a node the config
            // does not give it, once replicas moved).
            anchors: Arc::new(
                config
                    .shards
                    .iter()
                    .map(|s| (s.id.0, s.replicas.iter().map(|n| n.0).collect()))
                    .chain(
                        config
                            .coordinators
                            .iter()
                            .filter(|g| {
                                g.replicas.contains(&pact_common::NodeId(me))
                                    || config.coordinator_can_move(g.group)
                            })
                            .map(|g| (g.group, g.replicas.iter().map(|n| n.0).collect())),
                    )
                    // The metadata group keeps one of the config's nodes
                    // for it too: nodes and clients that start from the
                    // config look for it there.
                    .chain(std::iter::once((
                        pact_common::META_GROUP,
                        config.meta_replicas().iter().map(|n| n.0).collect(),
                    )))
                    .collect(),
            ),
            coordinator_anchors: Arc::new(
                config
                    .coordinators
                    .iter()
                    .map(|g| (g.group, g.replicas.iter().map(|n| n.0).collect()))
                    .collect(),
            ),
        })
    }

    /// Where node `id`'s peer port is: the directory's, else the config's.
    fn peer_addr(&self, id: u64) -> Option<String> {
        self.directory
            .as_ref()
            .and_then(|d| d.get(id))
            .map(|m| m.peer_addr)
            .or_else(|| self.peers.get(&id).cloned())
    }

    /// Whether this node's replica of `group` knows a leader: one left
    /// over after its removal does not, and its view is not kept current.
    fn hears_a_leader(&self, group: u64) -> bool {
        use openraft::async_runtime::WatchReceiver;
        self.router
            .raft(group)
            .is_some_and(|r| r.metrics().borrow_watched().current_leader.is_some())
    }

    /// The voters of `group` if this node hosts it and has learned them.
    fn live_voters(&self, group: u64) -> Option<Vec<u64>> {
        use openraft::async_runtime::WatchReceiver;
        let raft = self.router.raft(group)?;
        let m = raft.metrics().borrow_watched().clone();
        let v: Vec<u64> = m.membership_config.membership().voter_ids().collect();
        (!v.is_empty()).then_some(v)
    }
}

fn membership_status(e: MembershipError) -> Status {
    let msg = e.to_string();
    match e {
        // Not hosted here (moved away, or never): another replica may
        // lead it, as with a shard request to the wrong node.
        MembershipError::UnknownGroup(_) => error_status(ErrorCode::NotLeader, msg, None, None),
        MembershipError::NotLeader { leader } => error_status(
            ErrorCode::NotLeader,
            msg,
            None,
            leader.map(|l| (l, String::new())),
        ),
        MembershipError::Refused(_) => error_status(ErrorCode::InvalidInput, msg, None, None),
        MembershipError::Incomplete(_) => error_status(ErrorCode::Unavailable, msg, None, None),
    }
}

fn host_status(e: HostError) -> Status {
    let msg = e.to_string();
    match e {
        HostError::Refused(_) => error_status(ErrorCode::InvalidInput, msg, None, None),
        HostError::Failed(_) => error_status(ErrorCode::Unavailable, msg, None, None),
    }
}

fn status(e: TransferError) -> Status {
    let msg = e.to_string();
    match e {
        TransferError::UnknownGroup(_) => error_status(ErrorCode::NotLeader, msg, None, None),
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
        let mut t = self.topology.as_ref().clone();
        // Nodes added at run time, as the directory has them (the member
        // table's live members; the config's addresses for the nodes it
        // lists). Config nodes stay listed even when removed: the
        // config's replica lists below may still name them.
        if let Some(d) = &self.directory {
            let mut nodes: std::collections::BTreeMap<u64, pb::TopologyNode> =
                t.nodes.drain(..).map(|n| (n.id, n)).collect();
            for m in d.all() {
                nodes.insert(
                    m.id,
                    pb::TopologyNode {
                        id: m.id,
                        addr: m.client_addr,
                        peer_addr: m.peer_addr,
                    },
                );
            }
            t.nodes = nodes.into_values().collect();
        }
        // The metadata group's shard table, as this node last read it: every
        // shard a split made, each shard's version and span, and its
        // voters where no live view of this node's own replica is newer.
        if let Some(d) = &self.directory {
            let table = d.shards();
            t.epoch = table.epoch;
            for s in &mut t.shards {
                if let Some(r) = table.shards.iter().find(|r| r.descriptor.shard.0 == s.id) {
                    if !r.voters.is_empty() {
                        s.replicas = r.voters.clone();
                    }
                }
            }
            t.descriptors = table.shards.iter().map(crate::wire::shard_record).collect();
            t.retired = table.retired.iter().map(|r| r.shard.0).collect();
            for g in &mut t.coordinators {
                if let Some(r) = table.groups.iter().find(|r| r.group == g.group) {
                    if !r.voters.is_empty() {
                        g.replicas = r.voters.clone();
                    }
                }
            }
        }
        // Only where replicas move (a `pact` server, whose group ids are
        // unique within the process): a participant's shard 1 and a
        // coordinator's group 1 may share an id across processes.
        if self.host.is_some() {
            let mine = self.coordinator_group;
            for s in &mut t.shards {
                if Some(s.id) == mine {
                    continue;
                }
                if let Some(v) = self.live_voters(s.id) {
                    s.replicas = v;
                }
            }
            for g in &mut t.coordinators {
                // This node's own group, or one it was given at run time
                // (whose id no shard has).
                let shard = self.topology.shards.iter().any(|s| s.id == g.group);
                if Some(g.group) != mine && shard {
                    continue;
                }
                if let Some(v) = self.live_voters(g.group) {
                    g.replicas = v;
                }
            }
        }
        // A live voter list may name a node this node's directory does not
        // list yet (it follows the member table every second): leave it
        // out rather than send a table that does not hold together.
        // (With none known, the config's list, whose nodes are listed.)
        let known: std::collections::BTreeSet<u64> = t.nodes.iter().map(|n| n.id).collect();
        let configured = self
            .topology
            .shards
            .iter()
            .map(|s| &s.replicas)
            .chain(self.topology.coordinators.iter().map(|g| &g.replicas));
        for (r, config) in t
            .shards
            .iter_mut()
            .map(|s| &mut s.replicas)
            .chain(t.coordinators.iter_mut().map(|g| &mut g.replicas))
            .zip(configured)
        {
            let kept: Vec<u64> = r.iter().copied().filter(|n| known.contains(n)).collect();
            *r = if kept.is_empty() {
                config.clone()
            } else {
                kept
            };
        }
        // Coordinator groups never share a node (a table that says so does
        // not validate), but lists from different sources and ages may
        // overlap for a moment, a node in one group's old list and another
        // group's new one: keep it in the first only (the lists are where
        // to look for a leader, not who votes).
        let mut seen = std::collections::BTreeSet::new();
        for g in &mut t.coordinators {
            let all = std::mem::take(&mut g.replicas);
            g.replicas = all.iter().copied().filter(|n| seen.insert(*n)).collect();
            if g.replicas.is_empty() {
                // Every node taken: the config's list, as far as free.
                let config = self
                    .topology
                    .coordinators
                    .iter()
                    .find(|c| c.group == g.group)
                    .map(|c| c.replicas.clone())
                    .unwrap_or_default();
                g.replicas = config.into_iter().filter(|n| seen.insert(*n)).collect();
            }
        }
        t.coordinators.retain(|g| !g.replicas.is_empty());
        // The metadata group's replicas: this node's own view if it hosts
        // one, else what the group last recorded of itself, else the
        // config's (each left as the config's if it names no known node).
        let live_meta = self
            .host
            .as_ref()
            .filter(|_| self.hears_a_leader(pact_common::META_GROUP))
            .and_then(|_| self.live_voters(pact_common::META_GROUP))
            .or_else(|| {
                let d = self.directory.as_ref()?;
                d.shards().meta().map(|r| r.voters.clone())
            });
        if let Some(v) = live_meta {
            let kept: Vec<u64> = v.into_iter().filter(|n| known.contains(n)).collect();
            if !kept.is_empty() {
                t.meta_replicas = kept;
            }
        }
        // A recorded shard on nodes none of which is listed has no voters
        // in the table: a client finds it from its neighbours' hints.
        for d in &mut t.descriptors {
            d.voters.retain(|n| known.contains(n));
        }
        Ok(Response::new(t))
    }

    async fn host_replica(
        &self,
        request: Request<pb::HostReplicaRequest>,
    ) -> Result<Response<pb::HostReplicaResponse>, Status> {
        let r = request.into_inner();
        let host = self.host.clone().ok_or_else(|| {
            error_status(
                ErrorCode::InvalidInput,
                "this server cannot host replicas at run time (run `pact`, one process per node)"
                    .into(),
                None,
                None,
            )
        })?;
        if r.voters.is_empty() {
            return Err(error_status(
                ErrorCode::InvalidInput,
                format!("hosting group {}: the group's voters are missing", r.group),
                None,
                None,
            ));
        }
        // A group being created lists its first voters, this node among
        // them; only a split's new shard is created so.
        let created =
            r.create && (pact_common::FIRST_SPLIT_ID..pact_common::META_GROUP).contains(&r.group);
        if r.create && !created {
            return Err(error_status(
                ErrorCode::InvalidInput,
                format!("group {} is not one a split creates", r.group),
                None,
                None,
            ));
        }
        if r.voters.contains(&self.me) && !created {
            return Err(error_status(
                ErrorCode::InvalidInput,
                format!(
                    "node {} is already a voter of group {} (voters {:?}): a voter that lost its \
                     data rejoins by a restart with its config; to start it afresh, remove it \
                     from the group first",
                    self.me, r.group, r.voters
                ),
                None,
                None,
            ));
        }
        // Owned: a caller that gives up does not leave a replica half
        // started.
        let kind = GroupKind::of(r.group, r.coordinator);
        tokio::spawn(async move { host.host(r.group, kind, r.voters, created).await })
            .await
            .map_err(|e| Status::internal(format!("host task failed: {e}")))?
            .map_err(host_status)?;
        Ok(Response::new(pb::HostReplicaResponse {}))
    }

    async fn drop_replica(
        &self,
        request: Request<pb::DropReplicaRequest>,
    ) -> Result<Response<pb::DropReplicaResponse>, Status> {
        let r = request.into_inner();
        let host = self.host.clone().ok_or_else(|| {
            error_status(
                ErrorCode::InvalidInput,
                "this server cannot drop replicas at run time (run `pact`, one process per node)"
                    .into(),
                None,
                None,
            )
        })?;
        let me = self.me;
        if r.voters.is_empty() || r.voters.contains(&me) {
            return Err(error_status(
                ErrorCode::InvalidInput,
                format!(
                    "node {me} may drop its replica of group {} only once the group's voters \
                     (as its leader reports them) no longer include it; given {:?}: remove it \
                     from the group first (ChangeReplicas with remove)",
                    r.group, r.voters
                ),
                None,
                None,
            ));
        }
        let kind = GroupKind::of(r.group, r.coordinator);
        tokio::spawn(async move { host.drop_group(r.group, kind).await })
            .await
            .map_err(|e| Status::internal(format!("drop task failed: {e}")))?
            .map_err(host_status)?;
        Ok(Response::new(pb::DropReplicaResponse {}))
    }

    async fn change_replicas(
        &self,
        request: Request<pb::ChangeReplicasRequest>,
    ) -> Result<Response<pb::ChangeReplicasResponse>, Status> {
        let r = request.into_inner();
        // Held until the change below is over (moved into its task, which
        // goes on if the caller gives up).
        let hold = match &self.host {
            Some(host) => host
                .may_change(r.group, GroupKind::of(r.group, r.coordinator))
                .await
                .map_err(host_status)?,
            None => None,
        };
        let router = self.router.clone();
        let voters = if r.remove {
            let anchors = if r.coordinator && r.group != pact_common::META_GROUP {
                &self.coordinator_anchors
            } else {
                &self.anchors
            };
            let anchors = anchors.get(&r.group).cloned().unwrap_or_default();
            tokio::spawn(async move {
                let _hold = hold;
                membership::remove(&router, r.group, r.node, &anchors, MEMBERSHIP_WITHIN).await
            })
            .await
        } else {
            // A node added a moment ago may not be in this node's
            // directory yet (it follows the member table every second).
            let mut addr = self.peer_addr(r.node);
            let until = tokio::time::Instant::now() + DIRECTORY_GRACE;
            while addr.is_none() && self.directory.is_some() && tokio::time::Instant::now() < until
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
                addr = self.peer_addr(r.node);
            }
            let Some(addr) = addr else {
                return Err(error_status(
                    ErrorCode::InvalidInput,
                    format!(
                        "node {} is not a member of the cluster (`txn admin member list`)",
                        r.node
                    ),
                    None,
                    None,
                ));
            };
            tokio::spawn(async move {
                let _hold = hold;
                membership::add(&router, r.group, r.node, addr, MEMBERSHIP_WITHIN).await
            })
            .await
        }
        .map_err(|e| Status::internal(format!("membership task failed: {e}")))?
        .map_err(membership_status)?;
        Ok(Response::new(pb::ChangeReplicasResponse {
            voters: voters.into_iter().collect(),
        }))
    }
}
