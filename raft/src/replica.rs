//! A running replica of one Raft group: the only type the rest of Pact uses.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, ForwardToLeader, LinearizableReadError, RaftError};
use openraft::{BasicNode, Config, Instant as _, ReadPolicy, ServerState, SnapshotPolicy};

use crate::codec::{decode, encode};
use crate::log_store::LogStore;
use crate::network::{ask_state, KnownVoters, NetworkFactory, Peers, Router};
use crate::rejoin::{decide, Decision, Gate, LeaderId};
use crate::snapshot::Outbound;
use crate::state_machine::{scan_sm, Apply, StateMachine};
use crate::store::{
    blocking, group_end, group_key, group_prefix, NodeStore, Op, Space, META_HOSTING, META_PURGED,
    META_REJOIN, META_VOTE, SM_APPLIED,
};
use crate::types::{Command, Raft, TypeConfig};
use crate::ReplicaError;

/// Raft timing and log-compaction settings of a group.
#[derive(Clone, Debug)]
pub struct Tuning {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many entries since the last one.
    pub snapshot_logs: u64,
    /// Entries kept behind a snapshot, so slightly slow followers catch up
    /// from the log instead of a full snapshot.
    pub keep_logs: u64,
    /// Reads confirm leadership with the leader lease when it is fresh
    /// (see [`Replica::read_barrier`]).
    pub lease_reads: bool,
    /// Most bytes per second a snapshot transfer streams; 0: no limit.
    pub snapshot_bytes_per_sec: u64,
}

impl From<&pact_common::RaftTuning> for Tuning {
    fn from(r: &pact_common::RaftTuning) -> Self {
        Tuning {
            heartbeat_ms: r.heartbeat_ms,
            election_timeout_min_ms: r.election_timeout_min_ms,
            election_timeout_max_ms: r.election_timeout_max_ms,
            snapshot_logs: r.snapshot_logs,
            keep_logs: r.keep_logs,
            lease_reads: r.lease_reads,
            snapshot_bytes_per_sec: r.snapshot_kib_per_sec.saturating_mul(1024),
        }
    }
}

impl Tuning {
    /// How long a request may wait for consensus before it gives up: long
    /// enough to ride out one leader election.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.election_timeout_max_ms * 4 + 1000)
    }
}

/// What all replicas on one node share: the storage, the router for
/// incoming Raft messages, and the pool of connections to peers.
#[derive(Clone)]
pub struct Host {
    pub store: Arc<NodeStore>,
    pub router: Router,
    pub peers: Peers,
    /// Every replica running on the node, including those added at run
    /// time: what metrics, readiness and fencing cover.
    pub replicas: Replicas,
    /// Every node of the cluster (not only a group's replicas): where a
    /// replica added at run time sends Raft messages, and what leader hints
    /// name.
    directory: Directory,
    /// What to do when a group's leader says it removed this node's
    /// replica (the server sets it).
    pub removals: crate::network::Removals,
}

/// How long an operator's drop of a replica waits for a leader of the
/// group to confirm that the group left the replica's node out
/// ([`Replica::confirm_dropped`]): a removed leader's group elects a new
/// leader first.
pub const DROP_CONFIRM_WITHIN: Duration = Duration::from_secs(5);

/// Every node of the cluster a server knows, with its addresses: the
/// config's at start, then the metadata group's member table (kept up to
/// date by the server), so nodes added at run time are reached too.
/// Shared by every replica of the node and read at each use. Beside the
/// nodes it keeps the metadata group's shard table, which the node's
/// routing table (`Admin.Topology`) sends.
#[derive(Clone, Debug, Default)]
pub struct Directory {
    nodes: Arc<std::sync::RwLock<BTreeMap<u64, Member>>>,
    /// Nodes the member table lists as removed.
    removed: Arc<std::sync::RwLock<std::collections::BTreeSet<u64>>>,
    shards: Arc<std::sync::RwLock<ShardTable>>,
    /// The cluster has a metadata group, so a shard table will be read
    /// ([`Directory::expect_table`]).
    table_expected: Arc<std::sync::atomic::AtomicBool>,
    /// A shard table was read at least once.
    table_read: Arc<std::sync::atomic::AtomicBool>,
}

pub use pact_common::ShardTable;

impl Directory {
    /// Replace the whole table (members removed from the cluster drop out).
    pub fn set(&self, nodes: Vec<Member>) {
        if let Ok(mut d) = self.nodes.write() {
            *d = nodes.into_iter().map(|m| (m.id, m)).collect();
        }
    }

    /// Record the nodes the member table lists as removed (they never
    /// come back).
    pub fn set_removed(&self, removed: impl IntoIterator<Item = u64>) {
        if let Ok(mut r) = self.removed.write() {
            r.extend(removed);
        }
    }

    /// Whether the member table lists node `id` as removed.
    pub fn is_removed(&self, id: u64) -> bool {
        self.removed
            .read()
            .map(|r| r.contains(&id))
            .unwrap_or(false)
    }

    /// Replace the shard table, unless `table` is older than the one held
    /// (a read from a lagging replica).
    pub fn set_shards(&self, table: ShardTable) {
        if let Ok(mut t) = self.shards.write() {
            if table.epoch >= t.epoch {
                *t = table;
            }
        }
        self.table_read
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// The cluster has a metadata group: until its shard table has been
    /// read once, an empty replica's probe does not decide (the table may
    /// say the group moved, and to whom).
    pub fn expect_table(&self) {
        self.table_expected
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether the shard table the probe needs is known: read once, or
    /// not expected (no metadata group).
    fn table_known(&self) -> bool {
        !self
            .table_expected
            .load(std::sync::atomic::Ordering::SeqCst)
            || self.table_read.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The shard table (empty until the metadata group recorded a shard).
    pub fn shards(&self) -> ShardTable {
        match self.shards.read() {
            Ok(t) => t.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The shard table's record of `shard` if the shard is retired.
    pub fn retired(&self, shard: pact_common::ShardId) -> Option<pact_common::RetiredShard> {
        let t = match self.shards.read() {
            Ok(t) => t,
            Err(p) => p.into_inner(),
        };
        t.retired(shard).cloned()
    }

    pub fn get(&self, id: u64) -> Option<Member> {
        self.nodes.read().ok().and_then(|d| d.get(&id).cloned())
    }

    /// Node `id`'s peer address: the member table's, which follows a node
    /// that moved, or else `known` (the one a membership recorded).
    pub fn peer_addr_or(&self, id: u64, known: &str) -> String {
        self.get(id)
            .map(|m| m.peer_addr)
            .unwrap_or_else(|| known.to_string())
    }

    /// A node's (client address, peer address), the shape a client's
    /// resolver returns.
    pub fn addrs(&self, id: u64) -> Option<(String, String)> {
        self.get(id).map(|m| (m.client_addr, m.peer_addr))
    }

    /// Every node, sorted by id.
    pub fn all(&self) -> Vec<Member> {
        self.nodes
            .read()
            .map(|d| d.values().cloned().collect())
            .unwrap_or_default()
    }
}

impl Host {
    /// `peers` dials the other nodes (with TLS if the cluster has it).
    pub fn new(store: Arc<NodeStore>, peers: Peers) -> Self {
        Host {
            store,
            router: Router::default(),
            peers,
            replicas: Replicas::default(),
            directory: Directory::default(),
            removals: Default::default(),
        }
    }

    /// Every `every`, let each replica on this node that cannot learn of
    /// its removal by campaigning, and has heard no leader for `every`,
    /// ask whether its group removed it ([`Replica::ask_if_removed`]);
    /// a yes goes to the removal hook. Runs until the runtime ends.
    pub fn keep_asking_if_removed(&self, every: Duration) {
        let host = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                for r in host.replicas.list() {
                    if r.ask_if_removed(&host, every).await {
                        tracing::info!(
                            group = r.group(),
                            "a replica that hears no leader was told its group removed it"
                        );
                    }
                }
            }
        });
    }

    /// Tell every replica how to reach `nodes` (all the cluster's nodes),
    /// besides its own group's replicas.
    pub fn set_directory(&self, nodes: Vec<Member>) {
        self.directory.set(nodes);
    }

    /// The [`Member`]s of a group whose replicas are `replicas`: with the
    /// addresses `config` gives, else the directory's (nodes added at run
    /// time); nodes neither knows are left out.
    pub fn members_of(
        &self,
        config: &pact_common::ClusterConfig,
        replicas: &[pact_common::NodeId],
    ) -> Vec<Member> {
        replicas
            .iter()
            .filter_map(|n| {
                members(config, &[*n])
                    .pop()
                    .or_else(|| self.directory.get(n.0))
            })
            .collect()
    }

    /// The node directory every replica of this host reads.
    pub fn directory(&self) -> Directory {
        self.directory.clone()
    }

    /// Whether node `id` is one this host can reach: the config lists it,
    /// or the directory (the member table) does.
    pub fn knows_node(&self, config: &pact_common::ClusterConfig, id: u64) -> bool {
        config.node(pact_common::NodeId(id)).is_some() || self.directory.get(id).is_some()
    }

    /// The groups of one kind (`ours` says which ids) this node runs: the
    /// `configured` ones, unless an operator dropped them here (whatever a
    /// crash left of their data is wiped now), and those an operator added
    /// here, with the group's voters when it was added (`Some`).
    pub async fn hosting_plan(
        &self,
        configured: impl IntoIterator<Item = u64>,
        ours: impl Fn(u64) -> bool,
    ) -> io::Result<BTreeMap<u64, Option<Vec<u64>>>> {
        let mut plan: BTreeMap<u64, Option<Vec<u64>>> =
            configured.into_iter().map(|g| (g, None)).collect();
        for (group, record) in self.hosting().await? {
            if !ours(group) {
                continue;
            }
            match record {
                Hosting::Joined { voters } => {
                    plan.insert(group, Some(voters));
                }
                Hosting::Dropped => {
                    plan.remove(&group);
                    self.wipe_dropped(group).await?;
                }
            }
        }
        Ok(plan)
    }

    /// The groups this node hosts, or stopped hosting, by an operator's
    /// decision rather than its config (see [`Hosting`]).
    pub async fn hosting(&self) -> io::Result<BTreeMap<u64, Hosting>> {
        let store = self.store.clone();
        blocking(move || {
            let all = store.range_sync(Space::Meta, &[], &[0xff; 8], usize::MAX, false)?;
            let mut out = BTreeMap::new();
            for (k, v) in all {
                if k.len() == 8 + META_HOSTING.len() && k.ends_with(META_HOSTING) {
                    let mut id = [0u8; 8];
                    id.copy_from_slice(&k[..8]);
                    let group = u64::from_be_bytes(id);
                    let h: Hosting = decode(&v, format_args!("hosting record of group {group}"))?;
                    out.insert(group, h);
                }
            }
            Ok(out)
        })
        .await
    }

    /// Record durably how this node hosts `group` (see [`Hosting`]).
    async fn record_hosting(&self, group: u64, record: &Hosting) -> io::Result<()> {
        let v = encode(record)?;
        self.store
            .write_durable(vec![Op::Put(
                Space::Meta,
                group_key(group, META_HOSTING),
                v,
            )])
            .await
    }

    /// Finish removing what is left of `group` here (a crash can cut a
    /// [`Replica::remove_here`] short): its state, log and metadata, all
    /// but its vote and its [`Hosting::Dropped`] record. Idempotent.
    pub async fn wipe_dropped(&self, group: u64) -> io::Result<()> {
        crate::snapshot::wipe_sm(&self.store, group).await?;
        let store = self.store.clone();
        let meta = blocking(move || {
            store.range_sync(
                Space::Meta,
                &group_prefix(group),
                &group_end(group),
                usize::MAX,
                false,
            )
        })
        .await?;
        let vote_key = group_key(group, META_VOTE);
        let keep = [vote_key.clone(), group_key(group, META_HOSTING)];
        let mut ops: Vec<Op> = Vec::new();
        for (k, v) in &meta {
            if k == &vote_key {
                // Kept as a promise not to go back on (its term), but no
                // longer as a leader's granted vote: a replica added back
                // with a committed vote of its own would restart as
                // leader of an empty log until the real one reached it.
                let vote: crate::types::Vote = decode(v, format_args!("vote of group {group}"))?;
                let lid = vote.leader_id();
                let plain = crate::types::Vote::new(lid.term, lid.node_id);
                ops.push(Op::Put(Space::Meta, vote_key.clone(), encode(&plain)?));
            } else if !keep.contains(k) {
                ops.push(Op::Delete(Space::Meta, k.clone()));
            }
        }
        let range = |s| Op::DeleteRange(s, group_prefix(group).to_vec(), group_end(group));
        ops.push(range(Space::Log));
        ops.push(range(Space::SmMeta));
        self.store.write_durable(ops).await
    }

    /// Open (or create) the node's storage under `dir` with `limits` and
    /// dial peers with `tls`; the error names the directory. Blocks while
    /// fjall replays its journal.
    pub fn open(
        dir: &std::path::Path,
        limits: &pact_common::StorageTuning,
        tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> io::Result<Self> {
        let store = NodeStore::open_with(dir, limits).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open storage at {}: {e}", dir.display()),
            )
        })?;
        Ok(Host::new(store, Peers::new(tls)))
    }
}

/// How a node came to host a group, or stopped hosting it, other than by
/// its config: stored in the node's own metadata, so a restart hosts what
/// the operator added and not what the operator removed. A record lives
/// on the same disk as the group's data, so a lost disk loses both: the
/// node then hosts what its config says, and rejoins those groups.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Hosting {
    /// Added at run time; `voters` were the group's voters then, the peers
    /// it accepts messages from before it has learned its membership.
    Joined { voters: Vec<u64> },
    /// Removed: not hosted again unless added again. Its last vote is
    /// kept, so a replica added back later keeps the promises it made.
    Dropped,
}

/// The replicas running on a node, by group id: shared by whatever starts
/// and stops them and whatever reports on them.
#[derive(Clone, Default)]
pub struct Replicas(Arc<std::sync::RwLock<BTreeMap<u64, Replica>>>);

impl Replicas {
    /// Every replica, in group order.
    pub fn list(&self) -> Vec<Replica> {
        self.0
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    fn insert(&self, r: Replica) {
        if let Ok(mut m) = self.0.write() {
            m.insert(r.group, r);
        }
    }

    fn remove(&self, group: u64) {
        if let Ok(mut m) = self.0.write() {
            m.remove(&group);
        }
    }
}

impl From<Vec<Replica>> for Replicas {
    fn from(v: Vec<Replica>) -> Self {
        let r = Replicas::default();
        for x in v {
            r.insert(x);
        }
        r
    }
}

/// A snapshot of a replica's Raft state, for `status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub group: u64,
    pub node_id: u64,
    pub role: &'static str,
    pub term: u64,
    pub leader: Option<(u64, String)>,
    pub applied_index: u64,
    pub last_log_index: u64,
    pub snapshot_index: u64,
    /// The last log index compacted away; a follower behind it needs a
    /// snapshot.
    pub purged_index: u64,
    pub voters: Vec<u64>,
    pub fatal: Option<String>,
    /// Whether it may vote ([`crate::rejoin::Gate::name`]): a group whose
    /// other replicas are not "open" cannot elect if its leader dies.
    pub gate: &'static str,
    /// [`Replica::committed_voters`].
    pub committed_voters: Vec<u64>,
    pub voters_at: u64,
}

/// One replica of a group as this node's config describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    /// Where Raft messages go (the node's peer port).
    pub peer_addr: String,
    /// Where clients reach the node: what "not leader" hints and status
    /// replies name, since clients cannot (and must not) use peer ports.
    pub client_addr: String,
}

/// The [`Member`]s of a group whose replicas are `replicas`, with their
/// addresses from `config` (nodes missing from it are left out).
pub fn members(
    config: &pact_common::ClusterConfig,
    replicas: &[pact_common::NodeId],
) -> Vec<Member> {
    replicas
        .iter()
        .filter_map(|n| {
            config.node(*n).map(|nc| Member {
                id: n.0,
                peer_addr: nc.peer_addr.clone(),
                client_addr: nc.addr.clone(),
            })
        })
        .collect()
}

/// See [`Replica::role`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Role {
    pub leader: bool,
    /// The term of the vote stored on disk: a leader's own term; on other
    /// replicas it may trail the term in memory until the vote is flushed
    /// (it only moves forward, so "still term T" checks hold).
    pub term: u64,
    /// The leader's id and client address, if known.
    pub known_leader: Option<(u64, String)>,
}

/// A command queued by [`Replica::submit`], not yet known to be committed.
pub struct Proposal<'a> {
    replica: &'a Replica,
    /// When it was handed to Raft, until it is seen committed; then when
    /// it was seen committed (for the stage metrics).
    since: std::time::Instant,
    seen_committed: bool,
    /// Both waits together end here: the replica's timeout after submit.
    deadline: tokio::time::Instant,
    committed: openraft::alias::OneshotReceiverOf<TypeConfig, crate::types::LogId>,
    reply: openraft::alias::OneshotReceiverOf<
        TypeConfig,
        openraft::raft::ClientWriteResult<TypeConfig>,
    >,
}

impl Proposal<'_> {
    /// Wait until this leader has seen the command committed in the log
    /// (before it is applied): true then. False if it will not see that
    /// within the replica's timeout (counted from the submit, for this
    /// and [`Proposal::wait`] together): the command was refused (a lapsed
    /// leader lease refuses writes without losing leadership), leadership
    /// was lost, or Raft stopped; [`Proposal::wait`] then tells which.
    pub async fn committed(&mut self) -> bool {
        if self.seen_committed {
            return true;
        }
        let ok = matches!(
            tokio::time::timeout_at(self.deadline, &mut self.committed).await,
            Ok(Ok(_))
        );
        if ok {
            self.seen_committed = true;
            if let Some(m) = crate::metrics::process() {
                m.proposal_seconds
                    .with_label_values(&["commit"])
                    .observe(self.since.elapsed().as_secs_f64());
            }
            self.since = std::time::Instant::now();
        }
        ok
    }

    /// Wait until the command is committed and applied: its log index and
    /// the application's reply. Past the replica's timeout (from the
    /// submit) the outcome is unknown (the entry may still commit).
    pub async fn wait(self) -> Result<(u64, Vec<u8>), ReplicaError> {
        let r = self.replica;
        let result = tokio::time::timeout_at(self.deadline, self.reply).await;
        if self.seen_committed && matches!(result, Ok(Ok(Ok(_)))) {
            if let Some(m) = crate::metrics::process() {
                m.proposal_seconds
                    .with_label_values(&["apply"])
                    .observe(self.since.elapsed().as_secs_f64());
            }
        }
        match result {
            Err(_) => Err(ReplicaError::Unknown(format!(
                "no commit within {:?} (leader may have lost its quorum)",
                r.timeout
            ))),
            Ok(Ok(Ok(resp))) => Ok((resp.log_id.index, resp.data.0)),
            Ok(Ok(Err(ClientWriteError::ForwardToLeader(f)))) => Err(ReplicaError::NotLeader {
                leader: r.forward_hint(&f),
            }),
            Ok(Ok(Err(e))) => Err(ReplicaError::Unknown(e.to_string())),
            // Raft dropped the command's responder: it is stopping.
            Ok(Err(_)) => Err(r
                .fatal()
                .map(ReplicaError::Fatal)
                .unwrap_or_else(|| ReplicaError::Unknown("raft stopped before answering".into()))),
        }
    }
}

#[derive(Clone)]
pub struct Replica {
    group: u64,
    node_id: u64,
    raft: Raft,
    store: Arc<NodeStore>,
    gate: Arc<Gate>,
    /// Client addresses by node id, as the replica started.
    clients: BTreeMap<u64, String>,
    /// Nodes added since ([`Directory`]).
    directory: Directory,
    timeout: Duration,
    lease_reads: bool,
    /// A leader whose quorum has been silent longer than this is not ready
    /// (see [`Replica::readiness`]).
    quorum_silence: Duration,
    /// Which start of a replica this is ([`Replica::instance`]).
    instance: u64,
}

/// Most log entries a follower may be behind its leader's commit index
/// and still count as ready: a replica catching up (after a restart, or
/// from a snapshot) is not.
pub const READY_MAX_LAG: u64 = 1000;

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("group", &self.group)
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl Replica {
    /// The node's storage, which this replica shares with every other
    /// replica of its process.
    pub fn store(&self) -> &Arc<NodeStore> {
        &self.store
    }

    /// Start (or restart from disk) this node's replica of `group`.
    /// `members` lists every replica's node id and addresses; the first one
    /// bootstraps a brand-new group (the others wait to hear from it), so
    /// listing replicas in different orders spreads the initial leaders.
    ///
    /// A replica whose store holds nothing of the group first asks every
    /// peer whether the group exists, in the background, and rejoins
    /// behind a gate if it does (see `rejoin`): until then it neither
    /// votes nor accepts entries.
    pub async fn start(
        group: u64,
        node_id: u64,
        members: Vec<Member>,
        tuning: &Tuning,
        app: Arc<dyn Apply>,
        host: &Host,
    ) -> Result<Self, ReplicaError> {
        Self::start_as(group, node_id, members, tuning, app, host, false).await
    }

    /// Start this node's replica of an existing group that an operator
    /// added it to (or restart one, after [`Hosting::Joined`] was
    /// recorded): `voters` are the group's voters, who will add it as a
    /// learner. It never bootstraps the group and skips the rejoin probe:
    /// it never was a member, so it made no promise it could have lost
    /// (the probe would also wait forever for the dead node it may be
    /// replacing). The record is made durable first.
    pub async fn start_joined(
        group: u64,
        node_id: u64,
        voters: Vec<Member>,
        tuning: &Tuning,
        app: Arc<dyn Apply>,
        host: &Host,
    ) -> Result<Self, ReplicaError> {
        // Leftovers of an earlier replica of the group here (an apply that
        // landed after its wipe) go first.
        let earlier = host
            .store
            .get(Space::Meta, group_key(group, META_HOSTING))
            .await
            .map_err(storage_err)?;
        if earlier.is_some_and(|b| {
            decode::<Hosting>(&b, format_args!("hosting record of group {group}"))
                .is_ok_and(|h| h == Hosting::Dropped)
        }) {
            host.wipe_dropped(group).await.map_err(storage_err)?;
        }
        let record = Hosting::Joined {
            voters: voters.iter().map(|m| m.id).collect(),
        };
        host.record_hosting(group, &record)
            .await
            .map_err(|e| ReplicaError::Fatal(format!("storage: {e}")))?;
        Self::start_as(group, node_id, voters, tuning, app, host, true).await
    }

    async fn start_as(
        group: u64,
        node_id: u64,
        members: Vec<Member>,
        tuning: &Tuning,
        app: Arc<dyn Apply>,
        host: &Host,
        joined: bool,
    ) -> Result<Self, ReplicaError> {
        let store = host.store.clone();
        let directory: Vec<Member> = host.directory.all();
        // Client addresses (for hints) and peer addresses of every node,
        // the group's own members last so theirs win.
        let (clients, addrs): (BTreeMap<u64, String>, BTreeMap<u64, String>) = directory
            .iter()
            .chain(members.iter())
            .map(|m| ((m.id, m.client_addr.clone()), (m.id, m.peer_addr.clone())))
            .unzip();
        let members: Vec<(u64, String)> =
            members.into_iter().map(|m| (m.id, m.peer_addr)).collect();
        if group > crate::store::MAX_GROUP_ID {
            return Err(ReplicaError::Fatal(format!("group id {group} is reserved")));
        }
        // An install a crash interrupted is finished (or, if its file is
        // unreadable, the group wiped) before anything reads the group.
        let recovered = crate::snapshot::recover(&store, group)
            .await
            .map_err(|e| ReplicaError::Fatal(format!("storage: {e}")))?;
        let gate = {
            let s = store.clone();
            blocking(move || gate_at_start(&s, group))
                .await
                .map_err(|e| ReplicaError::Fatal(format!("storage: {e}")))?
        };
        // A replica added at run time on a store that holds nothing of the
        // group never was a member: no probe (see `start_joined`), and no
        // quiet period either, since it never acknowledged any leader.
        // One wiped just now (an unreadable install file) was a member
        // and may have voted: it rejoins behind the gate.
        let fresh = joined && gate.is_probing() && recovered != crate::snapshot::Recovered::Wiped;
        let gate = if fresh { Gate::open() } else { gate };
        let gate = Arc::new(gate);
        // A replica that restarts has forgotten when it last heard from its
        // leader, the follower half of that leader's lease: with lease
        // reads it must neither vote nor campaign for a lease's length,
        // or it could help elect a new leader while the old one still
        // serves reads on its lease. (An empty store rejoins through the
        // gate instead, hearing from the current leader before it votes.)
        let quiet = tuning.lease_reads && gate.is_open() && !fresh;
        let config = Config {
            cluster_name: format!("pact-group-{group}"),
            heartbeat_interval: tuning.heartbeat_ms,
            election_timeout_min: tuning.election_timeout_min_ms,
            election_timeout_max: tuning.election_timeout_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(tuning.snapshot_logs),
            max_in_snapshot_log_to_keep: tuning.keep_logs,
            enable_pre_vote: Some(true),
            // Behind a gate it must not campaign: its vote is what it lost.
            enable_elect: gate.is_open() && !quiet,
            // A follower that lost its disk comes back with a shorter log
            // than the leader knew it had; the leader starts over with it
            // instead of waiting forever for entries that are gone.
            allow_log_reversion: Some(true),
            ..Default::default()
        }
        .validate()
        .map_err(|e| ReplicaError::Fatal(format!("raft config: {e}")))?;
        let outbound = Arc::new(Outbound::default());
        let instance = {
            use std::sync::atomic::{AtomicU64, Ordering};
            static STARTS: AtomicU64 = AtomicU64::new(1);
            STARTS.fetch_add(1, Ordering::Relaxed)
        };
        let net = NetworkFactory {
            group,
            me: node_id,
            peers: host.peers.clone(),
            addrs: Arc::new(addrs),
            directory: host.directory.clone(),
            min_append_ttl: Duration::from_millis(tuning.election_timeout_min_ms / 2),
            outbound: outbound.clone(),
            snapshot_bytes_per_sec: tuning.snapshot_bytes_per_sec,
            removals: host.removals.clone(),
            instance,
            tail: store.tails.of(group),
        };
        let log = LogStore::new(group, store.clone());
        let log_reader = log.clone();
        let sm = StateMachine::new(group, store.clone(), app, outbound);
        let raft = Raft::new(node_id, Arc::new(config), net, log, sm)
            .await
            .map_err(|e| ReplicaError::Fatal(format!("raft start: {e}")))?;
        if let Some(m) = crate::metrics::process() {
            m.add_group(group);
        }
        tokio::spawn(count_leader_changes(group, raft.clone()));
        host.router.register(
            group,
            raft.clone(),
            gate.clone(),
            log_reader,
            members.iter().map(|(id, _)| *id).collect(),
            store.inbox(),
        );
        if quiet {
            // openraft's lease is `election_timeout_max` from the send time
            // of the last acknowledged append, which is before this
            // replica received it, which is before it restarted; a tenth
            // more allows for clocks that tick at slightly different rates.
            let lease = Duration::from_millis(tuning.election_timeout_max_ms * 11 / 10 + 10);
            gate.quiet_for(lease);
            let (raft, gate) = (raft.clone(), gate.clone());
            tokio::spawn(async move {
                tokio::time::sleep(lease).await;
                if gate.is_open() {
                    raft.runtime_config().elect(true);
                }
            });
        }
        let first = !joined && members.first().map(|(id, _)| *id) == Some(node_id);
        let members: BTreeMap<u64, String> = members.into_iter().collect();
        if gate.is_open() {
            let initialized = match raft.is_initialized().await {
                Ok(i) => i,
                Err(e) => {
                    host.router.remove(group);
                    let _ = raft.shutdown().await;
                    return Err(ReplicaError::Fatal(e.to_string()));
                }
            };
            if !initialized && first {
                initialize(&raft, group, &members).await;
            }
        } else {
            tokio::spawn(guard(Guarded {
                group,
                me: node_id,
                first,
                members: members.clone(),
                raft: raft.clone(),
                gate: gate.clone(),
                store: store.clone(),
                peers: host.peers.clone(),
                directory: host.directory.clone(),
            }));
        }
        let replica = Replica {
            group,
            node_id,
            raft,
            store,
            gate,
            clients,
            directory: host.directory.clone(),
            timeout: tuning.request_timeout(),
            lease_reads: tuning.lease_reads,
            quorum_silence: Duration::from_millis(tuning.election_timeout_max_ms * 2),
            instance,
        };
        host.replicas.insert(replica.clone());
        Ok(replica)
    }

    /// Stop hosting this replica, for good: record [`Hosting::Dropped`]
    /// (durably, first: a restart midway does not host it again and
    /// finishes the wipe), stop its Raft core, stop routing to it, and
    /// delete its data, log and metadata except its vote. The group must
    /// already have removed this node from its membership, or it is left
    /// one replica short.
    pub async fn remove_here(&self, host: &Host) -> Result<(), ReplicaError> {
        if let Err(e) = host.record_hosting(self.group, &Hosting::Dropped).await {
            // It stays hosted and running: if a removal's confirmation
            // shut its gate, it opens again (the next word of the removal
            // shuts it again), or an add of this node back could never
            // reach it.
            self.gate.unshut();
            return Err(storage_err(e));
        }
        host.router.remove(self.group);
        host.replicas.remove(self.group);
        let _ = self.raft.shutdown().await;
        host.wipe_dropped(self.group).await.map_err(storage_err)
    }

    pub fn group(&self) -> u64 {
        self.group
    }

    /// Which start of a replica in this process this is: a group hosted
    /// again gets a new one.
    pub fn instance(&self) -> u64 {
        self.instance
    }

    /// Whether this replica may be dropped on `r`, a leader's word that
    /// the group removed it: it is the replica that was told, it does not
    /// lead, the leader is a member as this replica knows the group, its
    /// log ends before the membership that left it out, and the leader,
    /// asked again now, still says so. Call it under the lock that
    /// serialises hosting and dropping, so that nothing is hosted afresh
    /// between the check and the drop. On Ok the replica's gate stays
    /// shut (it takes no append, snapshot or vote), so a leader adding
    /// the node back after that answer cannot count it caught up: the
    /// caller is to drop it. Why not, if not.
    pub async fn confirm_removed(
        &self,
        r: &crate::network::Removal,
        host: &Host,
    ) -> Result<(), String> {
        if r.instance != self.instance {
            return Err("hosted afresh since".into());
        }
        let m = self.raft.metrics().borrow_watched().clone();
        if m.state == ServerState::Leader {
            return Err("it leads its group".into());
        }
        if !self.member_ids().contains(&r.told_by) {
            return Err(format!(
                "node {} is not a member of the group as this replica knows it",
                r.told_by
            ));
        }
        let last = m.last_log_index.unwrap_or(0);
        if last >= r.at {
            return Err(format!("its log reaches index {} already", r.at));
        }
        // Shut before the leader is asked the last time: once it says
        // so, this replica acknowledges nothing more, so an add of this
        // node that lands after the answer finds it refusing (and never
        // counts it caught up) instead of promoting a replica whose data
        // is about to go. Open again if the drop is off.
        self.gate.shut();
        let confirmed = self.confirm_with_leader(r, host).await;
        if confirmed.is_err() {
            self.gate.unshut();
        }
        confirmed
    }

    /// Whether an operator's drop of this replica (`Admin.DropReplica`)
    /// may go on: it does not lead its group, and a leader of the group
    /// with a fresh quorum says that both its newest and its committed
    /// membership leave this node out (asked of every member this replica
    /// knows, as a removed replica asks). The caller's word is not
    /// enough: a drop sent late, after the node was added back, or with a
    /// wrong list, would wipe a voter. Asked again for up to `within`
    /// (a removed leader's group elects a new one first). Asked with the
    /// gate open (a replica still counted keeps taking part meanwhile);
    /// once a leader says so, asked once more with the gate shut, and it
    /// stays shut, as in [`Replica::confirm_removed`]. A replica that
    /// never joined (no membership, no log: an add that failed before
    /// the leader took it in) may go at once: it holds nothing.
    pub async fn confirm_dropped(&self, host: &Host, within: Duration) -> Result<(), String> {
        let until = tokio::time::Instant::now() + within;
        loop {
            let m = self.raft.metrics().borrow_watched().clone();
            let never_joined = m.membership_config.membership().nodes().next().is_none()
                && m.last_log_index.is_none();
            if never_joined {
                self.gate.shut();
                return Ok(());
            }
            let why = if m.state == ServerState::Leader {
                "it leads its group".to_string()
            } else {
                // No log id: whatever this replica holds, only whether
                // the group counts it matters here.
                let membership = m.membership_config.membership();
                match self.member_says_removed(host, membership, None).await {
                    Ok(_) => {
                        self.gate.shut();
                        match self.member_says_removed(host, membership, None).await {
                            Ok(_) => return Ok(()),
                            Err(e) => {
                                self.gate.unshut();
                                e
                            }
                        }
                    }
                    Err(e) => e,
                }
            };
            if tokio::time::Instant::now() >= until {
                return Err(why);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Ask each member of `membership` but this node, as a removed
    /// replica whose log ends at `last` would, whether it leads the group
    /// without this node: the first that says so (its id, peer address,
    /// and the index of the membership that left this node out).
    async fn member_says_removed(
        &self,
        host: &Host,
        membership: &openraft::Membership<u64, BasicNode>,
        last: Option<crate::types::LogId>,
    ) -> Result<(u64, String, u64), String> {
        let mut why = format!(
            "no member of group {} but this node is known here",
            self.group
        );
        for (id, node) in membership.nodes().filter(|(id, _)| **id != self.node_id) {
            let addr = host.directory.peer_addr_or(*id, &node.addr);
            let asked = crate::network::ask_removed(
                &host.peers,
                self.group,
                self.node_id,
                *id,
                &addr,
                last,
            )
            .await;
            match asked {
                Ok(at) => return Ok((*id, addr, at)),
                Err(e) => why = format!("node {id}: {e}"),
            }
        }
        Err(format!(
            "no leader of group {} confirms that node {} is out of it (last: {why})",
            self.group, self.node_id
        ))
    }

    /// The last log id in this replica's stored log (what a removal
    /// question carries: the leader answers "removed" only for a
    /// membership past it).
    async fn stored_last_log_id(&self) -> Result<Option<crate::types::LogId>, std::io::Error> {
        use openraft::storage::RaftLogStorage;
        Ok(LogStore::new(self.group, self.store.clone())
            .get_log_state()
            .await?
            .last_log_id)
    }

    /// The last steps of [`Replica::confirm_removed`], with the gate shut.
    async fn confirm_with_leader(
        &self,
        r: &crate::network::Removal,
        host: &Host,
    ) -> Result<(), String> {
        let last_id = self
            .stored_last_log_id()
            .await
            .map_err(|e| format!("storage: {e}"))?;
        let at = crate::network::ask_removed(
            &host.peers,
            self.group,
            self.node_id,
            r.told_by,
            &r.addr,
            last_id,
        )
        .await?;
        let last = self
            .raft
            .metrics()
            .borrow_watched()
            .last_log_index
            .unwrap_or(0);
        if last >= at {
            return Err(format!("its log reaches index {at} now"));
        }
        Ok(())
    }

    /// For a replica that cannot learn of its removal by campaigning (a
    /// learner, one left out of the membership it knows, or one behind
    /// its rejoin gate, which asks for no votes) and that has heard no
    /// leader for `quiet`: ask each member it knows whether the group
    /// removed it, as a vote request would be answered (only a leader
    /// with a fresh quorum, whose memberships both leave this node out,
    /// says so). The first that does is passed to the node's removal
    /// hook, which confirms it under the hosting lock before dropping
    /// anything ([`Replica::confirm_removed`]). A replica with no log
    /// (hosted for an add that has not reached it yet) does not ask.
    /// Whether one said so.
    pub async fn ask_if_removed(&self, host: &Host, quiet: Duration) -> bool {
        let m = self.raft.metrics().borrow_watched().clone();
        if self.fatal().is_some()
            || m.state == ServerState::Leader
            || m.last_log_index.is_none()
            || self.gate.silent_for() < quiet
        {
            return false;
        }
        let membership = m.membership_config.membership().clone();
        let voter = membership.voter_ids().any(|v| v == self.node_id);
        if voter && self.gate.is_open() {
            // It campaigns, and a leader answers its vote requests.
            return false;
        }
        let Ok(last_id) = self.stored_last_log_id().await else {
            return false;
        };
        match self.member_says_removed(host, &membership, last_id).await {
            Ok((told_by, addr, at)) => {
                host.removals.tell(crate::network::Removal {
                    group: self.group,
                    at,
                    told_by,
                    addr,
                    instance: self.instance,
                });
                true
            }
            Err(_) => false,
        }
    }

    /// The voters of the group's last committed membership, and that
    /// membership's log index (which only grows): what the metadata group
    /// records of a shard. Read at a leader after a read barrier, it is
    /// the group's current committed membership.
    pub fn committed_voters(&self) -> (Vec<u64>, u64) {
        let s = self.status();
        (s.committed_voters, s.voters_at)
    }

    /// Every node of the group's current membership (voters of either
    /// half of a joint one, and learners), sorted, as this replica knows
    /// it.
    pub fn member_ids(&self) -> Vec<u64> {
        let m = self.raft.metrics().borrow_watched().clone();
        let mut ids: Vec<u64> = m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Why the group's membership is not a plain set of voters now, if
    /// it is not: a change under way (joint, uncommitted) or learners
    /// being added. `None` when settled.
    pub fn membership_unsettled(&self) -> Option<String> {
        let m = self.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        if membership.get_joint_config().len() > 1
            || m.membership_config.log_id() != m.committed_membership_config.log_id()
        {
            return Some("a change of its replicas is under way".into());
        }
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        let learners: Vec<u64> = membership
            .nodes()
            .map(|(id, _)| *id)
            .filter(|id| !voters.contains(id))
            .collect();
        if !learners.is_empty() {
            return Some(format!("nodes {learners:?} are joining it as learners"));
        }
        None
    }

    /// Whether the group exists here (has a membership: it was created
    /// here, or heard from a replica that was).
    pub async fn initialized(&self) -> Result<bool, ReplicaError> {
        self.raft
            .is_initialized()
            .await
            .map_err(|e| ReplicaError::Fatal(e.to_string()))
    }

    /// Create the group here with `voters` as its first membership: for a
    /// group born at run time (a split's new shard), whose replicas all
    /// started with [`Replica::start_joined`]. Idempotent, and harmless on
    /// several replicas: every one would write the same first entry.
    pub async fn initialize_with(&self, voters: &[Member]) -> Result<(), ReplicaError> {
        if self
            .raft
            .is_initialized()
            .await
            .map_err(|e| ReplicaError::Fatal(e.to_string()))?
        {
            return Ok(());
        }
        let members: BTreeMap<u64, String> =
            voters.iter().map(|m| (m.id, m.peer_addr.clone())).collect();
        initialize(&self.raft, self.group, &members).await;
        Ok(())
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// `Some(term)` while this replica is leader of `term`, else `None`;
    /// changes are pushed as they happen.
    pub fn leadership(&self) -> tokio::sync::watch::Receiver<Option<u64>> {
        let (tx, rx) = tokio::sync::watch::channel(None);
        // The server metrics change only with role, vote, leader or
        // membership; the full metrics change with nearly every write.
        let mut metrics = self.raft.server_metrics();
        tokio::spawn(async move {
            loop {
                let now = {
                    let m = metrics.borrow_watched();
                    (m.state == ServerState::Leader).then_some(m.vote.leader_id().term)
                };
                tx.send_if_modified(|v| {
                    let changed = *v != now;
                    *v = now;
                    changed
                });
                tokio::select! {
                    r = metrics.changed() => if r.is_err() { break },
                    _ = tx.closed() => break,
                }
            }
            let _ = tx.send(None);
        });
        rx
    }

    fn not_leader(&self) -> ReplicaError {
        let leader = self.raft.metrics().borrow_watched().current_leader;
        ReplicaError::NotLeader {
            leader: leader.filter(|l| *l != self.node_id).map(|l| self.hint(l)),
        }
    }

    /// A leader hint for clients: the id and its client address from this
    /// node's config (never the address in the Raft membership, which is
    /// a peer port).
    fn hint(&self, leader: u64) -> (u64, String) {
        let addr = self
            .clients
            .get(&leader)
            .cloned()
            .or_else(|| self.directory.get(leader).map(|m| m.client_addr));
        (leader, addr.unwrap_or_default())
    }

    fn forward_hint(&self, f: &ForwardToLeader<TypeConfig>) -> Option<(u64, String)> {
        f.leader_id.map(|l| self.hint(l))
    }

    /// Replicate `command` and apply it; returns the log index and the
    /// application's reply. Only the leader accepts proposals.
    pub async fn propose(&self, command: Vec<u8>) -> Result<(u64, Vec<u8>), ReplicaError> {
        let mut p = self.submit(command).await?;
        // Only for the stage metrics: the outcome comes from `wait`.
        p.committed().await;
        p.wait().await
    }

    /// Hand `command` to Raft and return as soon as it is queued, before
    /// it is replicated; [`Proposal::committed`] and [`Proposal::wait`]
    /// then follow it. Being queued orders nothing: Raft may still refuse
    /// the command (a leader whose lease lapsed refuses writes, and takes
    /// later ones again in the same term once it is renewed), so only a
    /// command seen committed is known to precede what is queued after.
    pub async fn submit(&self, command: Vec<u8>) -> Result<Proposal<'_>, ReplicaError> {
        self.running()?;
        // Every entry must fit in an append its followers accept.
        if command.len() > crate::network::MAX_COMMAND_BYTES {
            return Err(ReplicaError::TooLarge {
                bytes: command.len(),
                max: crate::network::MAX_COMMAND_BYTES,
            });
        }
        if !self.raft.is_leader() {
            return Err(self.not_leader());
        }
        let (responder, committed, reply) = openraft::impls::ProgressResponder::new();
        // Queueing waits only while Raft's request queue is full; give up
        // then as a whole proposal would (a send cut short queued nothing).
        match tokio::time::timeout(
            self.timeout,
            self.raft.client_write_ff(Command(command), Some(responder)),
        )
        .await
        {
            Err(_) => {
                return Err(ReplicaError::Unavailable(format!(
                    "raft's request queue stayed full for {:?}",
                    self.timeout
                )))
            }
            Ok(r) => r.map_err(|e| ReplicaError::Fatal(e.to_string()))?,
        }
        Ok(Proposal {
            replica: self,
            since: std::time::Instant::now(),
            seen_committed: false,
            deadline: tokio::time::Instant::now() + self.timeout,
            committed,
            reply,
        })
    }

    /// Wait until this replica may serve a linearizable read: it is the
    /// leader, a quorum confirmed that after the read began, and it has
    /// applied everything committed before then (Raft's ReadIndex).
    pub async fn read_barrier(&self) -> Result<(), ReplicaError> {
        self.running()?;
        if !self.raft.is_leader() {
            return Err(self.not_leader());
        }
        // With lease reads: no quorum round while a quorum acknowledged
        // this leader within the lease (every heartbeat renews it); when
        // the last acknowledgement is older, a heartbeat round as ReadIndex.
        let policy = if self.lease_reads {
            openraft::LinearizerOption::new(None, true)
        } else {
            ReadPolicy::ReadIndex.into()
        };
        match tokio::time::timeout(self.timeout, self.raft.ensure_linearizable(policy)).await {
            Err(_) => Err(ReplicaError::Unavailable(format!(
                "leadership not confirmed by a quorum within {:?}",
                self.timeout
            ))),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f)))) => {
                Err(ReplicaError::NotLeader {
                    leader: self.forward_hint(&f),
                })
            }
            Ok(Err(RaftError::APIError(e))) => Err(ReplicaError::Unavailable(e.to_string())),
            Ok(Err(RaftError::Fatal(e))) => Err(ReplicaError::Fatal(e.to_string())),
        }
    }

    /// For a new leader of `term`: wait until it has applied everything
    /// committed before it (so state read now is complete), retrying the
    /// ReadIndex check with backoff. False if it stopped leading `term`.
    pub async fn settle(&self, term: u64) -> bool {
        let mut delay = Duration::from_millis(20);
        loop {
            // Both from the server metrics, the source of `leadership()`:
            // openraft publishes them before its full metrics (which
            // `Raft::is_leader` reads), so a new leader woken by that
            // watch could read "not leader" here, give up, and leave its
            // shard refusing transactions until the next election.
            let role = self.role();
            if role.term != term || !role.leader {
                return false;
            }
            if self.read_barrier().await.is_ok() {
                return true;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }

    /// Read one key of the applied state. Linearizable only after
    /// [`Replica::read_barrier`].
    pub async fn get_local(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ReplicaError> {
        let k = group_key(self.group, key);
        self.store.get(Space::Sm, k).await.map_err(storage_err)
    }

    /// Range read of the applied state; see [`Replica::get_local`].
    pub async fn scan_local(
        &self,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, ReplicaError> {
        let store = self.store.clone();
        let group = self.group;
        blocking(move || scan_sm(&store, group, &start, end.as_deref(), limit))
            .await
            .map_err(storage_err)
    }

    /// Every pair of the applied state whose key starts with `prefix`.
    pub async fn scan_prefix_local(
        &self,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, ReplicaError> {
        self.scan_local(
            prefix.to_vec(),
            crate::store::prefix_end(prefix),
            usize::MAX,
        )
        .await
    }

    /// The error the replica stopped with, if it stopped: the store's
    /// failure first (it is the cause when openraft stopped on it too).
    pub fn fatal(&self) -> Option<String> {
        if let Some(why) = self.store.poison_reason() {
            return Some(why);
        }
        match &self.raft.metrics().borrow_watched().running_state {
            Ok(()) => None,
            Err(e) => Some(e.to_string()),
        }
    }

    /// Refuse a request before it does anything when the replica stopped.
    /// Nothing was tried, so the caller may go to another replica: it is
    /// "unavailable" here, not an outcome-unknown stop.
    fn running(&self) -> Result<(), ReplicaError> {
        match self.fatal() {
            Some(f) => Err(ReplicaError::Unavailable(format!("replica stopped: {f}"))),
            None => Ok(()),
        }
    }

    /// Take a replica whose node's storage failed out of its group: hand
    /// leadership to a voter if it leads (so the group elects without
    /// waiting out a timeout), then stop its Raft core, so it sends no
    /// heartbeats, grants no votes and acknowledges no appends. Its last
    /// metrics stay readable for `status`.
    pub async fn fence(&self) {
        let (leader, to) = {
            let m = self.raft.metrics().borrow_watched().clone();
            let to = m
                .membership_config
                .membership()
                .voter_ids()
                .filter(|v| *v != self.node_id)
                .max_by_key(|v| {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(v).cloned().flatten())
                        .map(|l| l.index)
                });
            (m.state == ServerState::Leader, to)
        };
        if let (true, Some(to)) = (leader, to) {
            match tokio::time::timeout(
                Duration::from_millis(500),
                self.raft.trigger().transfer_leader(to),
            )
            .await
            {
                Ok(Ok(())) => {
                    tracing::info!(
                        group = self.group,
                        to,
                        "stopped replica handed leadership on"
                    );
                    // Give the TimeoutNow a moment to leave before the
                    // core stops.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(Err(e)) => {
                    tracing::warn!(group = self.group, error = %e, "leadership hand-off failed; the group elects after a timeout")
                }
                Err(_) => tracing::warn!(
                    group = self.group,
                    "leadership hand-off timed out; the group elects after a timeout"
                ),
            }
        }
        let _ = self.raft.shutdown().await;
    }

    /// Whether this replica leads, its term and the leader it knows (with
    /// its client address), from openraft's server metrics: cheap enough
    /// for every request, unlike [`Replica::status`], which copies the full
    /// metrics (replication progress and all).
    pub fn role(&self) -> Role {
        let m = self.raft.server_metrics();
        let m = m.borrow_watched();
        Role {
            leader: m.state == ServerState::Leader,
            term: m.vote.leader_id().term,
            known_leader: m.current_leader.map(|l| self.hint(l)),
        }
    }

    pub fn status(&self) -> ReplicaStatus {
        let m = self.raft.metrics().borrow_watched().clone();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let leader = m.current_leader.map(|l| self.hint(l));
        let voters = m.membership_config.membership().voter_ids().collect();
        let committed = &m.committed_membership_config;
        ReplicaStatus {
            committed_voters: committed.membership().voter_ids().collect(),
            voters_at: committed.log_id().as_ref().map(|l| l.index).unwrap_or(0),
            group: self.group,
            node_id: self.node_id,
            role,
            term: m.current_term,
            leader,
            applied_index: m.last_applied.as_ref().map(|l| l.index).unwrap_or(0),
            last_log_index: m.last_log_index.unwrap_or(0),
            snapshot_index: m.snapshot.as_ref().map(|l| l.index).unwrap_or(0),
            purged_index: m.purged.as_ref().map(|l| l.index).unwrap_or(0),
            voters,
            fatal: self.fatal(),
            gate: self.gate.name(),
        }
    }

    /// Whether this replica can do its part: its group has a leader it
    /// knows, it has not stopped, a leader still hears from a quorum, and
    /// a follower is at most [`READY_MAX_LAG`] entries behind the commit
    /// index its leader last told it. The error says what is missing.
    ///
    /// A follower cut off from its leader keeps the leader it knew until
    /// an election tells it otherwise, so it stays ready for up to an
    /// election timeout.
    pub fn readiness(&self) -> Result<(), String> {
        let g = self.group;
        if let Some(f) = self.fatal() {
            return Err(format!("group {g}: replica stopped: {f}"));
        }
        let m = self.raft.metrics().borrow_watched().clone();
        match m.current_leader {
            None => Err(format!("group {g}: no known leader")),
            Some(l) if l == self.node_id => match &m.last_quorum_acked {
                None => Err(format!(
                    "group {g}: leader not yet acknowledged by a quorum"
                )),
                Some(t) if t.elapsed() > self.quorum_silence => Err(format!(
                    "group {g}: leader without word from a quorum for {} ms",
                    t.elapsed().as_millis()
                )),
                Some(_) => Ok(()),
            },
            Some(l) => {
                let committed = m.cluster_committed.as_ref().map_or(0, |c| c.index);
                let applied = m.last_applied.as_ref().map_or(0, |a| a.index);
                let behind = committed.saturating_sub(applied);
                if behind > READY_MAX_LAG {
                    Err(format!(
                        "group {g}: {behind} entries behind leader {l} (ready at {READY_MAX_LAG} or fewer)"
                    ))
                } else {
                    Ok(())
                }
            }
        }
    }

    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}

/// Count each leader (or new term of one) that `raft` learns of into
/// `pact_raft_leader_changes_total`, until the replica stops.
async fn count_leader_changes(group: u64, raft: Raft) {
    let Some(counter) = crate::metrics::process().map(|m| {
        m.leader_changes
            .with_label_values(&[&crate::metrics::group_label(group)])
    }) else {
        return;
    };
    // Server metrics: they change with the vote and leader, not with
    // every write as the full metrics do. Their vote is the one flushed to
    // disk, which may lag the leader the replica already knows, so a
    // leader counts once its committed vote (term and node together) is
    // stored, not when its id first appears.
    let mut metrics = raft.server_metrics();
    drop(raft);
    let mut seen = None;
    loop {
        let now = {
            let m = metrics.borrow_watched();
            let v = &m.vote;
            v.committed
                .then(|| (v.leader_id().term, v.leader_id().node_id))
        };
        if now.is_some() && now != seen {
            seen = now;
            counter.inc();
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

async fn initialize(raft: &Raft, group: u64, members: &BTreeMap<u64, String>) {
    let nodes: BTreeMap<u64, BasicNode> = members
        .iter()
        .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
        .collect();
    if let Err(e) = raft.initialize(nodes).await {
        // Another replica may have initialized it already; that is fine.
        tracing::info!(group, error = %e, "group initialization skipped");
    }
}

/// The gate a replica starts behind: rejoining if a rejoin was under way,
/// probing if the store holds nothing of the group (no vote, no log, no
/// purge point, no applied state: it never took part), else open.
fn gate_at_start(store: &NodeStore, group: u64) -> io::Result<Gate> {
    if let Some(b) = store.get_sync(Space::Meta, &group_key(group, META_REJOIN))? {
        let floor: LeaderId = decode(&b, format_args!("rejoin floor of group {group}"))?;
        return Ok(Gate::rejoining(floor));
    }
    let nothing = store
        .get_sync(Space::Meta, &group_key(group, META_VOTE))?
        .is_none()
        && store
            .get_sync(Space::Meta, &group_key(group, META_PURGED))?
            .is_none()
        && store
            .get_sync(Space::SmMeta, &group_key(group, SM_APPLIED))?
            .is_none()
        && store
            .range_sync(
                Space::Log,
                &group_prefix(group),
                &group_end(group),
                1,
                false,
            )?
            .is_empty();
    Ok(if nothing {
        Gate::probing()
    } else {
        Gate::open()
    })
}

/// What the background task of a replica behind a gate needs.
struct Guarded {
    group: u64,
    me: u64,
    first: bool,
    members: BTreeMap<u64, String>,
    raft: Raft,
    gate: Arc<Gate>,
    store: Arc<NodeStore>,
    peers: Peers,
    /// The member table's view: a peer it lists as removed is not waited
    /// for (removed for good, it left the group by a change the others
    /// hold).
    directory: Directory,
}

fn stopped(raft: &Raft) -> bool {
    let m = raft.metrics();
    let m = m.borrow_watched();
    m.state == ServerState::Shutdown || m.running_state.is_err()
}

/// How often a replica behind a gate says what it waits for.
const GATE_LOG_EVERY: Duration = Duration::from_secs(5);

/// Drive a replica behind a gate until it is open: ask the peers (if the
/// store was empty), then wait until it has caught up (if rejoining).
async fn guard(g: Guarded) {
    if g.gate.is_probing() {
        let Some(answers) = ask_every_peer(&g).await else {
            return;
        };
        let asked: Vec<u64> = answers.keys().copied().collect();
        let answers: Vec<_> = answers.into_values().collect();
        match decide(g.first, &answers) {
            Decision::Create => {
                open(&g);
                initialize(&g.raft, g.group, &g.members).await;
                return;
            }
            Decision::Join => {
                open(&g);
                return;
            }
            Decision::Rejoin { floor } => {
                let op = match encode(&floor) {
                    Ok(v) => Op::Put(Space::Meta, group_key(g.group, META_REJOIN), v),
                    Err(e) => {
                        tracing::error!(group = g.group, error = %e, "cannot encode the rejoin floor");
                        return;
                    }
                };
                // Durable before anything is admitted: a restart midway
                // must find the restrictions still in place.
                if let Err(e) = g.store.write_durable(vec![op]).await {
                    tracing::error!(group = g.group, error = %e, "cannot record the rejoin; the replica stays closed");
                    return;
                }
                tracing::warn!(
                    group = g.group,
                    %floor,
                    ?asked,
                    "this replica's store is empty but its peers hold the group's data (a lost or \
                     replaced disk, or a replica started late in a new group): rejoining without \
                     a vote until it has caught up"
                );
                g.gate.set_rejoining(floor);
            }
        }
    }
    wait_caught_up(&g).await;
}

fn open(g: &Guarded) {
    g.gate.set_open();
    g.raft.runtime_config().elect(true);
}

/// Whether an empty replica's probe may decide: every peer it asks
/// answered, and, if it skipped peers removed from the cluster, an answer
/// shows the group's data (it can then only rejoin; with none, the group's
/// data is on nodes it does not know to ask).
fn probe_complete(missing: usize, skipped: usize, has_data: bool) -> bool {
    missing == 0 && (skipped == 0 || has_data)
}

/// Whom an empty replica asks whether its group exists, and whom it may
/// do without.
#[derive(Debug, PartialEq, Eq)]
struct ProbePlan {
    /// Peers that must answer, with their peer address if known (one
    /// without is missing until the member table gives it).
    ask: Vec<(u64, Option<String>)>,
    /// Peers not waited for: removed from the cluster, or not among the
    /// group's voters as the metadata table lists them (they left it).
    skipped: Vec<u64>,
    /// The metadata table lists the group with this node among its
    /// voters: it ran before, so it is never created or joined empty.
    ran_before: bool,
}

/// The plan for `me`, whose known peers of the group are `members` (its
/// config's, or those recorded when it was added), given the group's
/// voters in the metadata table (`table`, when it lists the group with
/// `me` among them). The table's voters are asked too: after the group
/// moved off the config's other nodes, they are the ones holding its
/// data, and without them the replica waited for good.
fn probe_plan(
    me: u64,
    members: &BTreeMap<u64, String>,
    table: Option<&[u64]>,
    removed: impl Fn(u64) -> bool,
    addr_of: impl Fn(u64) -> Option<String>,
) -> ProbePlan {
    let mut all: BTreeMap<u64, Option<String>> = members
        .iter()
        .map(|(id, addr)| (*id, Some(addr.clone())))
        .collect();
    for id in table.unwrap_or_default() {
        all.entry(*id).or_insert(None);
    }
    let mut plan = ProbePlan {
        ask: Vec::new(),
        skipped: Vec::new(),
        ran_before: table.is_some(),
    };
    for (id, addr) in all {
        if id == me {
            continue;
        }
        if removed(id) || table.is_some_and(|v| !v.contains(&id)) {
            plan.skipped.push(id);
        } else {
            // The member table follows a node that moved.
            plan.ask.push((id, addr_of(id).or(addr)));
        }
    }
    plan
}

/// The voters of `group` in the metadata table, if it has one record of
/// that id (a shard's, or a coordinator or metadata group's) and it lists
/// `me` among them; None otherwise, also when records of both kinds have
/// the id (a shard and a coordinator group may share one, never on one
/// node: which is this replica's is not known here).
fn table_voters(directory: &Directory, group: u64, me: u64) -> Option<Vec<u64>> {
    let t = directory.shards();
    let mut found = t
        .shards
        .iter()
        .filter(|r| r.descriptor.shard.0 == group)
        .map(|r| &r.voters)
        .chain(
            t.groups
                .iter()
                .filter(|r| r.group == group)
                .map(|r| &r.voters),
        );
    match (found.next(), found.next()) {
        (Some(v), None) if v.contains(&me) => Some(v.clone()),
        _ => None,
    }
}

/// Widen `plan` by `newest`, the newest membership the answers so far
/// name: its voters not asked yet are asked too (not waited for only if
/// removed from the cluster). The config's peers and the metadata table
/// may both lag a membership change, and the rejoin floor needs the vote
/// of every current voter: one left out may have been elected by this
/// replica's lost vote, in a term no asked peer has seen.
fn widen_plan(
    plan: &mut ProbePlan,
    me: u64,
    newest: Option<&KnownVoters>,
    removed: impl Fn(u64) -> bool,
    addr_of: impl Fn(u64) -> Option<String>,
) {
    let Some(newest) = newest else {
        return;
    };
    let new: Vec<u64> = unasked_voters(newest, me, &removed, |id| {
        plan.ask.iter().any(|(a, _)| *a == id)
    })
    .collect();
    for id in new {
        plan.skipped.retain(|s| *s != id);
        plan.ask.push((id, addr_of(id)));
    }
}

/// The voters of `known` a probe has yet to ask: not this node, not
/// removed from the cluster, and not `asked` already.
fn unasked_voters<'a>(
    known: &'a KnownVoters,
    me: u64,
    removed: &'a impl Fn(u64) -> bool,
    asked: impl Fn(u64) -> bool + 'a,
) -> impl Iterator<Item = u64> + 'a {
    known
        .voters
        .iter()
        .copied()
        .filter(move |&id| id != me && !removed(id) && !asked(id))
}

/// The newest membership among the answers (by its log id).
fn newest_known<'a>(
    answers: impl IntoIterator<Item = &'a Option<KnownVoters>>,
) -> Option<&'a KnownVoters> {
    answers.into_iter().flatten().max_by_key(|k| k.at)
}

/// How long a probe waits for other peers before it asks those that
/// answered again (a membership they named may have changed since).
const PROBE_REFRESH: Duration = Duration::from_secs(5);

/// Every peer's answer, retried until all answered; None if the replica
/// stopped meanwhile.
async fn ask_every_peer(
    g: &Guarded,
) -> Option<BTreeMap<u64, openraft::raft::VoteResponse<TypeConfig>>> {
    let mut answers: BTreeMap<
        u64,
        (
            openraft::raft::VoteResponse<TypeConfig>,
            Option<KnownVoters>,
        ),
    > = BTreeMap::new();
    let mut last_log = tokio::time::Instant::now();
    let mut asked_afresh = tokio::time::Instant::now();
    // Ask the peers that answered already again this round.
    let mut afresh = false;
    loop {
        if stopped(&g.raft) {
            return None;
        }
        // Before the table was read, the known peers' answers could make
        // a group that moved away look new (or make it wait for nobody);
        // the metadata group's own replicas do not wait (the table comes
        // from them).
        if g.group != pact_common::META_GROUP && !g.directory.table_known() {
            if last_log.elapsed() >= GATE_LOG_EVERY {
                last_log = tokio::time::Instant::now();
                tracing::warn!(
                    group = g.group,
                    "replica started with an empty store; waiting for the metadata group's \
                     shard table before asking its peers"
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let table = if pact_common::faults::enabled("probe-ignores-table") {
            None
        } else {
            table_voters(&g.directory, g.group, g.me)
        };
        let removed = |id| g.directory.is_removed(id);
        let addr_of = |id| g.directory.get(id).map(|m| m.peer_addr);
        let mut plan = probe_plan(g.me, &g.members, table.as_deref(), removed, addr_of);
        let newest = newest_known(answers.values().map(|(_, k)| k)).cloned();
        widen_plan(&mut plan, g.me, newest.as_ref(), removed, addr_of);
        let mut missing = Vec::new();
        let skipped = plan.skipped;
        // The table's voters (or those the peers' newest membership
        // names) hold the group now, and one of them will lead it to this
        // replica (as they say now: a voter dropped since is no longer
        // let in).
        g.gate.vouch(if plan.ran_before || newest.is_some() {
            plan.ask.iter().map(|(id, _)| *id).collect()
        } else {
            Default::default()
        });
        for (id, addr) in &plan.ask {
            let answered = answers.contains_key(id);
            if answered && !afresh {
                continue;
            }
            let Some(addr) = addr else {
                missing.push((*id, "no address known yet".to_string()));
                continue;
            };
            match ask_state(&g.peers, g.group, g.me, *id, addr).await {
                Ok(a) => {
                    answers.insert(*id, a);
                }
                // Asked again and silent now: its earlier answer stands
                // (a vote only grows; the floor is a maximum).
                Err(_) if answered => {}
                Err(e) => missing.push((*id, e)),
            }
        }
        afresh = false;
        // A peer removed from the cluster means the group ran before (a
        // node is removed only once the groups moved off it): it is never
        // new, so unless an answer shows its data (a rejoin), the peers
        // that hold it now are elsewhere, and creating or joining it with
        // an empty log could vote away what they committed. Keep asking.
        // So does the metadata table's record of the group.
        // The answers just in may name a newer membership, with voters
        // not asked yet: ask them before deciding.
        let now_newest = newest_known(answers.values().map(|(_, k)| k));
        if now_newest.is_some_and(|n| {
            unasked_voters(n, g.me, &removed, |id| {
                answers.contains_key(&id) || missing.iter().any(|(m, _)| *m == id)
            })
            .next()
            .is_some()
        }) {
            continue;
        }
        let has_data = crate::rejoin::holds_data(answers.values().map(|(a, _)| a));
        let skips = skipped.len() + usize::from(plan.ran_before);
        if probe_complete(missing.len(), skips, has_data) {
            return Some(answers.into_iter().map(|(id, (a, _))| (id, a)).collect());
        }
        if missing.is_empty() {
            if last_log.elapsed() >= GATE_LOG_EVERY {
                last_log = tokio::time::Instant::now();
                tracing::warn!(
                    group = g.group,
                    ?skipped,
                    "replica started with an empty store, and the peers it knows for its group \
                     were removed from the cluster, left the group, or hold nothing: it cannot \
                     tell a new group from a lost disk, and waits (drop this replica and add it \
                     again, from a node of the group, to host it afresh)"
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            answers.clear();
            continue;
        }
        if last_log.elapsed() >= GATE_LOG_EVERY {
            last_log = tokio::time::Instant::now();
            tracing::warn!(
                group = g.group,
                ?missing,
                "replica started with an empty store; waiting for every peer to answer before \
                 it can tell a new group from a lost disk"
            );
        }
        if asked_afresh.elapsed() >= PROBE_REFRESH {
            // The memberships the kept answers named may be gone by now
            // (a change finished, and a voter they listed left for good):
            // ask everyone again, keeping what they said until they answer.
            asked_afresh = tokio::time::Instant::now();
            afresh = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Wait until the rejoining replica has applied what proves its log
/// complete, then let it vote again.
async fn wait_caught_up(g: &Guarded) {
    let mut metrics = g.raft.metrics();
    let mut last_log = tokio::time::Instant::now();
    loop {
        if stopped(&g.raft) {
            return;
        }
        let applied = metrics.borrow_watched().last_applied;
        if g.gate.caught_up(applied.as_ref()) {
            // Durable before it votes: a restart must not fall back behind
            // the gate (harmless) nor, worse, lose it while still behind.
            let op = Op::Delete(Space::Meta, group_key(g.group, META_REJOIN));
            if let Err(e) = g.store.write_durable(vec![op]).await {
                tracing::error!(group = g.group, error = %e, "cannot record the end of the rejoin; the replica stays without a vote");
                return;
            }
            open(g);
            tracing::info!(
                group = g.group,
                applied = applied.map(|a| a.index),
                "rejoined after data loss: caught up, voting again"
            );
            return;
        }
        if last_log.elapsed() >= GATE_LOG_EVERY {
            last_log = tokio::time::Instant::now();
            tracing::warn!(
                group = g.group,
                applied = applied.map(|a| a.index),
                target = ?g.gate.target(),
                "rejoining after data loss: catching up from the leader, not voting"
            );
        }
        tokio::select! {
            r = metrics.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

fn storage_err(e: io::Error) -> ReplicaError {
    ReplicaError::Fatal(format!("storage: {e}"))
}

#[cfg(test)]
mod probe_tests {
    use std::collections::BTreeMap;

    use super::{newest_known, probe_complete, probe_plan, widen_plan, KnownVoters, ProbePlan};

    fn members(ids: &[u64]) -> BTreeMap<u64, String> {
        ids.iter().map(|i| (*i, format!("config:{i}"))).collect()
    }

    /// Whom an empty replica asks: its known peers, less those removed
    /// from the cluster; with the metadata table's record of the group,
    /// also the voters it lists (at the member table's address), and not
    /// the known peers that left the group, and the group counts as one
    /// that ran (decided only on data).
    #[test]
    fn an_empty_replica_asks_the_voters_the_table_lists_and_not_those_that_left() {
        let addr = |i: u64| (i != 9).then(|| format!("table:{i}"));
        let nobody = |_: u64| false;
        // No record: the known peers, as before.
        assert_eq!(
            probe_plan(1, &members(&[1, 2, 3]), None, nobody, |_| None),
            ProbePlan {
                ask: vec![(2, Some("config:2".into())), (3, Some("config:3".into()))],
                skipped: vec![],
                ran_before: false,
            }
        );
        // Node 3 removed from the cluster: skipped.
        let plan = probe_plan(1, &members(&[1, 2, 3]), None, |i| i == 3, |_| None);
        assert_eq!(plan.skipped, vec![3]);
        // The group moved from config nodes 2 and 3 to 4 and 5: those are
        // asked, 2 and 3 not waited for; a voter the member table has no
        // address for yet is asked once it has (missing until then).
        assert_eq!(
            probe_plan(1, &members(&[1, 2, 3]), Some(&[1, 4, 5, 9]), nobody, addr),
            ProbePlan {
                ask: vec![
                    (4, Some("table:4".into())),
                    (5, Some("table:5".into())),
                    (9, None)
                ],
                skipped: vec![2, 3],
                ran_before: true,
            }
        );
        // The table agrees with the config: the same peers, but the group
        // ran, so it is never created or joined empty.
        let plan = probe_plan(1, &members(&[1, 2, 3]), Some(&[1, 2, 3]), nobody, |_| None);
        assert_eq!(plan.skipped, Vec::<u64>::new());
        assert!(plan.ran_before);
        assert!(!probe_complete(0, usize::from(plan.ran_before), false));
    }

    /// The newest membership the peers' answers name widens the plan:
    /// its voters the config and a lagging table left out are asked (a
    /// skipped one too), except this node and those removed from the
    /// cluster; an older membership's voters are not.
    #[test]
    fn an_empty_replica_also_asks_the_voters_its_peers_name() {
        let known = |at: (u64, u64, u64), ids: &[u64]| {
            Some(KnownVoters {
                at,
                voters: ids.iter().copied().collect(),
            })
        };
        // Ordered as log ids: term, then the leader of that term (two may
        // share it), then index: (5, 3, 85) is newer than (5, 2, 90).
        let answers = [
            known((3, 1, 40), &[1, 2, 3]),
            None,
            known((5, 2, 90), &[1, 2, 9]),
            known((5, 3, 85), &[1, 2, 6, 7, 8]),
            known((5, 3, 12), &[1, 2, 9]),
        ];
        let newest = newest_known(answers.iter());
        assert_eq!(newest.map(|k| k.at), Some((5, 3, 85)));
        // The table (lagging) lists 1, 2, 6 and 3: 3 is skipped as having
        // left, 6 asked; the answers say 7 and 8 vote now (8 removed from
        // the cluster, so not waited for).
        let mut plan = probe_plan(
            1,
            &members(&[1, 2, 3, 7]),
            Some(&[1, 2, 6]),
            |i| i == 8,
            |_| None,
        );
        assert_eq!(plan.skipped, vec![3, 7]);
        widen_plan(&mut plan, 1, newest, |i| i == 8, |i| Some(format!("m:{i}")));
        assert_eq!(
            plan,
            ProbePlan {
                ask: vec![
                    (2, Some("config:2".into())),
                    (6, None),
                    (7, Some("m:7".into()))
                ],
                skipped: vec![3],
                ran_before: true,
            }
        );
        // No answer names a membership: the plan stands.
        let before = probe_plan(1, &members(&[1, 2]), None, |_| false, |_| None);
        let mut after = probe_plan(1, &members(&[1, 2]), None, |_| false, |_| None);
        widen_plan(
            &mut after,
            1,
            newest_known([None, None].iter()),
            |_| false,
            |_| None,
        );
        assert_eq!(after, before);
    }

    /// An empty replica decides once every peer it asks answered; with a
    /// peer skipped as removed from the cluster, only once an answer shows
    /// the group's data (never a create or join of a group that ran).
    #[test]
    fn an_empty_replica_that_skipped_a_removed_peer_decides_only_on_data() {
        assert!(probe_complete(0, 0, false));
        assert!(probe_complete(0, 0, true));
        assert!(!probe_complete(1, 0, true));
        assert!(!probe_complete(0, 2, false));
        assert!(probe_complete(0, 2, true));
        assert!(!probe_complete(1, 1, true));
    }
}
