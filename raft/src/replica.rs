//! A running replica of one Raft group: the only type the rest of Pact uses.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, ForwardToLeader, LinearizableReadError, RaftError};
use openraft::{BasicNode, Config, ReadPolicy, ServerState, SnapshotPolicy};

use crate::log_store::LogStore;
use crate::network::{NetworkFactory, Peers, Router};
use crate::state_machine::{scan_sm, Apply, StateMachine};
use crate::store::{blocking, group_key, NodeStore, Space};
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
}

impl From<&pact_common::RaftTuning> for Tuning {
    fn from(r: &pact_common::RaftTuning) -> Self {
        Tuning {
            heartbeat_ms: r.heartbeat_ms,
            election_timeout_min_ms: r.election_timeout_min_ms,
            election_timeout_max_ms: r.election_timeout_max_ms,
            snapshot_logs: r.snapshot_logs,
            keep_logs: r.keep_logs,
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
}

impl Host {
    pub fn new(store: Arc<NodeStore>) -> Self {
        Host {
            store,
            router: Router::default(),
            peers: Peers::default(),
        }
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
    pub voters: Vec<u64>,
    pub fatal: Option<String>,
}

#[derive(Clone)]
pub struct Replica {
    group: u64,
    node_id: u64,
    raft: Raft,
    store: Arc<NodeStore>,
    members: BTreeMap<u64, String>,
    timeout: Duration,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("group", &self.group)
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

fn leader_hint(f: &ForwardToLeader<TypeConfig>) -> Option<(u64, String)> {
    let id = f.leader_id?;
    let addr = f
        .leader_node
        .as_ref()
        .map(|n| n.addr.clone())
        .unwrap_or_default();
    Some((id, addr))
}

impl Replica {
    /// Start (or restart from disk) this node's replica of `group`.
    /// `members` lists every replica's node id and address; the first one
    /// bootstraps a brand-new group (the others wait to hear from it), so
    /// listing replicas in different orders spreads the initial leaders.
    pub async fn start(
        group: u64,
        node_id: u64,
        members: Vec<(u64, String)>,
        tuning: &Tuning,
        app: Arc<dyn Apply>,
        host: &Host,
    ) -> Result<Self, ReplicaError> {
        let store = host.store.clone();
        if group > crate::store::MAX_GROUP_ID {
            return Err(ReplicaError::Fatal(format!("group id {group} is reserved")));
        }
        let config = Config {
            cluster_name: format!("pact-group-{group}"),
            heartbeat_interval: tuning.heartbeat_ms,
            election_timeout_min: tuning.election_timeout_min_ms,
            election_timeout_max: tuning.election_timeout_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(tuning.snapshot_logs),
            max_in_snapshot_log_to_keep: tuning.keep_logs,
            enable_pre_vote: Some(true),
            ..Default::default()
        }
        .validate()
        .map_err(|e| ReplicaError::Fatal(format!("raft config: {e}")))?;
        let net = NetworkFactory {
            group,
            me: node_id,
            peers: host.peers.clone(),
            addrs: Arc::new(members.iter().cloned().collect()),
        };
        let log = LogStore::new(group, store.clone());
        let sm = StateMachine::new(group, store.clone(), app);
        let raft = Raft::new(node_id, Arc::new(config), net, log, sm)
            .await
            .map_err(|e| ReplicaError::Fatal(format!("raft start: {e}")))?;
        host.router.register(group, raft.clone());
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| ReplicaError::Fatal(e.to_string()))?;
        let first = members.first().map(|(id, _)| *id);
        let members: BTreeMap<u64, String> = members.into_iter().collect();
        if !initialized && first == Some(node_id) {
            let nodes: BTreeMap<u64, BasicNode> = members
                .iter()
                .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
                .collect();
            if let Err(e) = raft.initialize(nodes).await {
                // Another replica may have initialized it already; that is fine.
                tracing::info!(group, error = %e, "group initialization skipped");
            }
        }
        Ok(Replica {
            group,
            node_id,
            raft,
            store,
            members,
            timeout: tuning.request_timeout(),
        })
    }

    pub fn group(&self) -> u64 {
        self.group
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// `Some(term)` while this replica is leader of `term`, else `None`;
    /// changes are pushed as they happen.
    pub fn leadership(&self) -> tokio::sync::watch::Receiver<Option<u64>> {
        let (tx, rx) = tokio::sync::watch::channel(None);
        let mut metrics = self.raft.metrics();
        tokio::spawn(async move {
            loop {
                let now = {
                    let m = metrics.borrow_watched();
                    (m.state == ServerState::Leader).then_some(m.current_term)
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
            leader: leader.filter(|l| *l != self.node_id).map(|l| {
                let addr = self.members.get(&l).cloned().unwrap_or_default();
                (l, addr)
            }),
        }
    }

    /// Replicate `command` and apply it; returns the log index and the
    /// application's reply. Only the leader accepts proposals.
    pub async fn propose(&self, command: Vec<u8>) -> Result<(u64, Vec<u8>), ReplicaError> {
        if let Some(f) = self.fatal() {
            return Err(ReplicaError::Fatal(f));
        }
        if !self.raft.is_leader() {
            return Err(self.not_leader());
        }
        match tokio::time::timeout(self.timeout, self.raft.client_write(Command(command))).await {
            Err(_) => Err(ReplicaError::Unknown(format!(
                "no commit within {:?} (leader may have lost its quorum)",
                self.timeout
            ))),
            Ok(Ok(resp)) => Ok((resp.log_id.index, resp.data.0)),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(ReplicaError::NotLeader {
                    leader: leader_hint(&f),
                })
            }
            Ok(Err(RaftError::APIError(e))) => Err(ReplicaError::Unknown(e.to_string())),
            Ok(Err(RaftError::Fatal(e))) => Err(ReplicaError::Fatal(e.to_string())),
        }
    }

    /// Wait until this replica may serve a linearizable read: it is the
    /// leader, a quorum confirmed that after the read began, and it has
    /// applied everything committed before then (Raft's ReadIndex).
    pub async fn read_barrier(&self) -> Result<(), ReplicaError> {
        if let Some(f) = self.fatal() {
            return Err(ReplicaError::Fatal(f));
        }
        if !self.raft.is_leader() {
            return Err(self.not_leader());
        }
        match tokio::time::timeout(
            self.timeout,
            self.raft.ensure_linearizable(ReadPolicy::ReadIndex),
        )
        .await
        {
            Err(_) => Err(ReplicaError::Unavailable(format!(
                "leadership not confirmed by a quorum within {:?}",
                self.timeout
            ))),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f)))) => {
                Err(ReplicaError::NotLeader {
                    leader: leader_hint(&f),
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
            if self.status().term != term || !self.raft.is_leader() {
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

    /// The error the replica stopped with, if it stopped.
    pub fn fatal(&self) -> Option<String> {
        if self.store.is_poisoned() {
            return Some("storage failed".into());
        }
        match &self.raft.metrics().borrow_watched().running_state {
            Ok(()) => None,
            Err(e) => Some(e.to_string()),
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
        let leader = m
            .current_leader
            .map(|l| (l, self.members.get(&l).cloned().unwrap_or_default()));
        let voters = m.membership_config.membership().voter_ids().collect();
        ReplicaStatus {
            group: self.group,
            node_id: self.node_id,
            role,
            term: m.current_term,
            leader,
            applied_index: m.last_applied.as_ref().map(|l| l.index).unwrap_or(0),
            last_log_index: m.last_log_index.unwrap_or(0),
            snapshot_index: m.snapshot.as_ref().map(|l| l.index).unwrap_or(0),
            voters,
            fatal: m.running_state.as_ref().err().map(|e| e.to_string()),
        }
    }

    /// Build a snapshot now (and let openraft compact the log behind it).
    pub async fn trigger_snapshot(&self) -> Result<(), ReplicaError> {
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| ReplicaError::Fatal(e.to_string()))
    }

    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}

fn storage_err(e: io::Error) -> ReplicaError {
    ReplicaError::Fatal(format!("storage: {e}"))
}
