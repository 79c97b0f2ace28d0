//! Pact's Rust client library.
//!
//! [`Client`] knows the cluster config, maps each key to its shard, and
//! sends the request to that shard's leader. It learns leaders from
//! `NotLeader` hints and caches them; when a replica is down or has no
//! leader it tries the next replica with backoff, until the retry budget
//! ([`ClientOptions::retry_for`]) runs out. The config comes from a file
//! ([`Client::new`]) or from any node ([`Client::connect`] asks the given
//! endpoints for the routing table, see [`discover`]); a table that does
//! not validate as a cluster config is refused, as a bad file would be.
//! The map it routes by starts as the config's; when a shard answers
//! `WRONG_SHARD` (the map is stale: the shard does not own the key as
//! routed), the client replaces it with the one the shards' own
//! descriptors make ([`Client::refresh_map`]) and routes the request
//! again, which is safe because that refusal did nothing. When none of
//! the replicas it knows for a group (a shard, a coordinator group, the
//! metadata group) leads it or answers, it asks a node for the routing
//! table, where the metadata group records every group's voters, and
//! tries those once: replicas move at run time.
//!
//! # What is retried
//! Reads are retried freely. A write is retried only when it certainly did
//! not take effect (refused by a follower, no connection, the server said
//! unavailable or overloaded; an overloaded server is retried itself, after
//! the pause it asks for, with a longer backoff). When a write's fate is unknown (timeout, connection lost
//! after sending) the client returns [`ClientError::Unknown`] instead of
//! retrying blindly: the caller decides, typically by reading.
//!
//! # Errors
//! One enum, [`ClientError`], phrased as what to do: retry later
//! (`Unavailable`; `Overloaded` when a server's admission limit refused the
//! request, after this client's own retries with backoff ran out), find
//! out first (`Unknown`), fix the request
//! (`InvalidInput`, `UnknownShard`), restart a server (`Internal`), or
//! check that the cluster runs where the config says (`Unreachable`: only
//! with [`ClientOptions::give_up_unreachable`], when no replica of a group
//! accepts connections). Errors about a group name the addresses tried.
//! [`ClientError::code`] names the error in a stable word for programs
//! (`txn --json` prints it with each error).

mod backup;
mod conn;
pub mod convert;
mod discover;
mod members;
mod replicas;
mod tls;
mod txn;

pub use conn::{BoxError, Conn, Local};
pub use pact_common::{Abort, AbortKind, ErrorCode};
pub use tls::{Tls, TlsPaths};
pub use txn::{Executed, Guard, Op, Transaction, TxnOutcome, MAX_ATTEMPTS};

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pact_common::{ClusterConfig, NodeId, ShardId, ShardMap, ShardRecord};
use pact_proto as pb;
use pact_proto::kv_client::KvClient;
use tonic::transport::{Channel, Endpoint};

pub use backup::{BackupSummary, RestoreSummary, FORMAT_VERSION as BACKUP_FORMAT_VERSION};
pub use convert::ReplicaStatus;
use convert::{classify, Class};
pub use discover::{discover, discover_table, prefer_endpoints, Found, Given, ASK_WITHIN};
pub use members::ClusterMember;
pub use replicas::{Moved, Removed};

/// How long a client waits for the metadata group's table when a merged
/// shard's nodes do not answer (is it retired?).
const RETIRED_LOOKUP: Duration = Duration::from_secs(2);

/// How long a map refresh reads the shards' descriptors again while they
/// do not fit together (a merge or split landing at one shard before
/// another) before answering UNAVAILABLE.
const REFRESH_SETTLES_WITHIN: Duration = Duration::from_secs(2);

/// Message size limit the client accepts and sends.
pub const MAX_MESSAGE_BYTES: usize = 8 << 20;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ClientError {
    /// Nothing was done; retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The operation or transaction was aborted (conflict, wounded by an
    /// older transaction, lock wait timeout); nothing was applied. Retry.
    #[error("aborted: {0}")]
    Aborted(Abort),
    /// The request contradicts recorded state (for example a decision
    /// refused because the other outcome is already recorded).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A write may or may not have been applied.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// The request is malformed; retrying will not help.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The cluster has no such shard.
    #[error("unknown shard {0}")]
    UnknownShard(u64),
    /// A server reported an internal failure (a stopped replica).
    #[error("server error: {0}")]
    Internal(String),
    /// The server refused the request at its admission limit (a full
    /// queue, too many open transactions or requests in flight); nothing
    /// was done. Retry later, with backoff: the client already did, for
    /// [`ClientOptions::retry_for`], before returning this.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// Nothing listens at any replica's address (every connection refused):
    /// the cluster is not running there, or the config names the wrong
    /// addresses. Nothing was sent. Only with
    /// [`ClientOptions::give_up_unreachable`].
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The shard asked does not own the key (or is at another descriptor
    /// version): the map the request was routed by is stale. Nothing was
    /// done. The client's own operations refresh the map and route again
    /// before returning this.
    #[error("wrong shard: {0}")]
    WrongShard(String),
}

impl ClientError {
    /// The stable machine-readable code of this error (the servers' code
    /// names, `pact_common::codes`), for programs (`txn --json`); the
    /// message is for people and may change.
    pub fn code(&self) -> ErrorCode {
        match self {
            // Nothing was done either way; the message says which.
            ClientError::Unavailable(_) | ClientError::Unreachable(_) => ErrorCode::Unavailable,
            ClientError::Aborted(_) => ErrorCode::Aborted,
            ClientError::Conflict(_) => ErrorCode::Conflict,
            ClientError::Unknown(_) => ErrorCode::OutcomeUnknown,
            ClientError::InvalidInput(_) => ErrorCode::InvalidInput,
            ClientError::UnknownShard(_) => ErrorCode::UnknownShard,
            ClientError::Internal(_) => ErrorCode::Stopped,
            ClientError::Overloaded(_) => ErrorCode::Overloaded,
            ClientError::WrongShard(_) => ErrorCode::WrongShard,
        }
    }

    /// Why the transaction aborted, if this is an abort.
    pub fn abort_kind(&self) -> Option<AbortKind> {
        match self {
            ClientError::Aborted(a) => Some(a.kind),
            _ => None,
        }
    }
}

/// Delays between attempts: exponential from `min` to `max`, with jitter
/// so clients that collided do not collide again, never running out (the
/// caller bounds the attempts or the time).
pub(crate) fn backoff(min: Duration, max: Duration) -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Which of a node's two addresses a client with `opts` dials: its peer
/// port for a client of peer ports, else its client port.
fn dialled<'a>(opts: &ClientOptions, client: &'a str, peer: &'a str) -> &'a str {
    if opts.peer_ports {
        peer
    } else {
        client
    }
}

/// How long a node that no look-up could name is not looked up again.
const LEARN_AGAIN_AFTER: Duration = Duration::from_secs(2);

/// Which leader a request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Route {
    Shard(ShardId),
    Group(u64),
    /// The metadata group (the member table).
    Meta,
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Route::Shard(s) => write!(f, "shard {s}"),
            Route::Group(g) => write!(f, "coordinator group {g}"),
            Route::Meta => write!(f, "the metadata group"),
        }
    }
}

/// How transactions are spread over coordinator groups.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Balance {
    #[default]
    RoundRobin,
    Random,
    /// The group with the fewest transactions in flight from this client.
    LeastOutstanding,
}

impl std::str::FromStr for Balance {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "round-robin" => Ok(Balance::RoundRobin),
            "random" => Ok(Balance::Random),
            "least-outstanding" => Ok(Balance::LeastOutstanding),
            _ => Err(format!(
                "unknown balance {s:?}; use round-robin, random or least-outstanding"
            )),
        }
    }
}

/// A Raft group of the cluster, as `txn status` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RaftGroup {
    Shard(ShardId),
    /// A coordinator group's recovery log.
    Coordinator(u64),
    /// The metadata group (member and shard tables).
    Meta,
}

impl RaftGroup {
    pub fn is_coordinator(self) -> bool {
        matches!(self, RaftGroup::Coordinator(_))
    }

    /// The group's Raft id (a shard's id, or the coordinator group's).
    pub fn id(self) -> u64 {
        match self {
            RaftGroup::Shard(s) => s.0,
            RaftGroup::Coordinator(g) => g,
            RaftGroup::Meta => pact_common::META_GROUP,
        }
    }
}

impl std::fmt::Display for RaftGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RaftGroup::Shard(s) => write!(f, "shard {s}"),
            RaftGroup::Coordinator(g) => write!(f, "coord {g}"),
            RaftGroup::Meta => write!(f, "meta"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Deadline of one RPC attempt. The default is longer than a shard's
    /// lock wait ([`pact_common::LOCK_WAIT`]), so a request that waited for
    /// a lock in vain comes back as the abort it is, never as a timeout
    /// with an unknown outcome.
    pub request_timeout: Duration,
    /// Total time spent retrying one operation before giving up.
    pub retry_for: Duration,
    /// How to choose a coordinator group for a new transaction.
    pub balance: Balance,
    /// Mutual TLS: required when the cluster's nodes serve TLS.
    pub tls: Option<Tls>,
    /// Dial nodes at their peer addresses instead of their client
    /// addresses. Only for nodes calling each other's internal services (a
    /// coordinator reaching participants' `pact.v1.Participant`); clients
    /// cannot use it (`Kv` and `Txn` are not served there).
    pub peer_ports: bool,
    /// Give up on a group with [`ClientError::Unreachable`] once every one
    /// of its replicas has refused the connection (nothing listens), with
    /// no other answer in between, for this long; a command-line tool wants
    /// that at once rather than after `retry_for`. None, the default: keep
    /// retrying until `retry_for`, as a node must while its peers restart.
    /// A leader change never looks like this (the other replicas answer).
    pub give_up_unreachable: Option<Duration>,
    /// Give up with [`ClientError::Overloaded`] once a server has refused
    /// an operation at its admission limit, with nothing else in between,
    /// for this long. None, the default: keep retrying (with backoff)
    /// until `retry_for`. A coordinator sets it short: it holds its
    /// transaction's locks while it waits, so aborting early frees them.
    pub overload_retry_for: Option<Duration>,
    /// Where to find nodes the client's table does not name (added to
    /// the cluster at run time): a server passes its live node directory.
    /// Without one the client asks a node it knows for the routing table
    /// (`Admin.Topology`), which lists every member.
    pub resolver: Option<Resolver>,
    /// This process's own node and the service of it that answers in
    /// process ([`Local`]): a server's coordinator passes its node's
    /// participant service, so calls to a shard leader on the same node
    /// skip the network.
    pub local: Option<Local>,
    /// Ask only the replicas of shards that the client's config names:
    /// never look a shard's replicas up in the routing table when none of
    /// them leads it or answers. For a client that probes particular nodes
    /// (their refusals are what it wants to see).
    pub pinned: bool,
}

/// A node's (client address, peer address) by id, for nodes a client met
/// (in a leader hint, in a group's voters) that its table does not name.
#[derive(Clone)]
pub struct Resolver(pub Arc<dyn Fn(NodeId) -> Option<(String, String)> + Send + Sync>);

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            request_timeout: pact_common::LOCK_WAIT + Duration::from_secs(3),
            retry_for: Duration::from_secs(15),
            balance: Balance::RoundRobin,
            tls: None,
            peer_ports: false,
            give_up_unreachable: None,
            overload_retry_for: None,
            resolver: None,
            local: None,
            pinned: false,
        }
    }
}

/// One change of a write batch: `Some(value)` puts, `None` deletes.
pub type Mutation = (Vec<u8>, Option<Vec<u8>>);

/// Whether two replica lists name the same nodes (in any order).
fn same_nodes(a: &[NodeId], b: &[NodeId]) -> bool {
    let set = |v: &[NodeId]| v.iter().copied().collect::<std::collections::BTreeSet<_>>();
    set(a) == set(b)
}

fn kv(ch: Conn) -> KvClient<Conn> {
    KvClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// A lazily connecting channel to `addr` (`host:port`), over TLS if given.
pub(crate) fn channel_to(addr: &str, tls: Option<&Tls>) -> Result<Channel, ClientError> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| ClientError::InvalidInput(format!("bad address {addr}: {e}")))?;
    if let Some(t) = tls {
        ep = ep
            .tls_config(t.client_config())
            .map_err(|e| ClientError::InvalidInput(format!("TLS setup for {addr}: {e}")))?;
    }
    Ok(ep
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .connect_lazy())
}

/// How many times one operation refreshes the map and routes again.
const REROUTES: u32 = 3;

/// What map refreshes keep between them.
#[derive(Default)]
struct Refreshing {
    /// The shards met merged into others, which own nothing for good, so
    /// refreshes stop asking them (a merged shard's group without a
    /// leader does not stall routing).
    merged: std::collections::BTreeSet<ShardId>,
    /// When the last refresh gave up, and why: callers that queued behind
    /// it are told the same at once rather than each waiting out the
    /// descriptors again.
    failed: Option<(tokio::time::Instant, String)>,
}

#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    /// The routing map: the config's (or the discovered table's) until a
    /// shard answers WRONG_SHARD, then the shards' own descriptors.
    map: std::sync::RwLock<Arc<ShardMap>>,
    /// One map refresh at a time (see [`Refreshing`]).
    refreshing: tokio::sync::Mutex<Refreshing>,
    /// Each shard's replicas as this client knows them: the config's, and
    /// for a shard a split created, its parent's voters when first met.
    shards: std::sync::RwLock<BTreeMap<ShardId, Vec<NodeId>>>,
    /// Shards the metadata group retired (merged, their groups gone), as
    /// this client last read its table: any node answers for them, and
    /// listings of replicas leave them out.
    retired: std::sync::RwLock<std::collections::BTreeSet<ShardId>>,
    /// The address this client dials for each node (client or peer port);
    /// nodes added to the cluster at run time join it when first met.
    nodes: std::sync::RwLock<BTreeMap<NodeId, String>>,
    channels: Mutex<HashMap<String, Conn>>,
    /// Each coordinator group's replicas: the config's, or the live
    /// voters a routing table named (they move).
    groups: std::sync::RwLock<BTreeMap<u64, Vec<NodeId>>>,
    /// The metadata group's replicas ([`ClusterConfig::meta_replicas`]).
    meta: std::sync::RwLock<Vec<NodeId>>,
    /// One look-up of unknown nodes at a time ([`Client::learn`]).
    learning: tokio::sync::Mutex<()>,
    /// Nodes a look-up did not find, and when.
    missed: Mutex<HashMap<NodeId, Instant>>,
    leaders: Mutex<HashMap<Route, NodeId>>,
    balance: Balance,
    next_group: std::sync::atomic::AtomicUsize,
    /// Attempts of `Client::transaction` started over (see
    /// `Client::restarts`).
    restarts: std::sync::atomic::AtomicU64,
    outstanding: Mutex<HashMap<u64, usize>>,
    opts: ClientOptions,
    /// The cluster's transaction lease: open transactions heartbeat every
    /// third of it.
    lease: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("shards", &self.shards().len())
            .finish_non_exhaustive()
    }
}

impl Client {
    pub fn new(config: &ClusterConfig, opts: ClientOptions) -> Client {
        Client {
            inner: Arc::new(Inner {
                map: std::sync::RwLock::new(Arc::new(config.shard_map())),
                refreshing: tokio::sync::Mutex::new(Default::default()),
                retired: Default::default(),
                shards: std::sync::RwLock::new(
                    config
                        .shards
                        .iter()
                        .map(|s| (s.id, s.replicas.clone()))
                        .collect(),
                ),
                nodes: std::sync::RwLock::new(
                    config
                        .nodes
                        .iter()
                        .map(|n| (n.id, dialled(&opts, &n.addr, &n.peer_addr).to_string()))
                        .collect(),
                ),
                channels: Mutex::new(HashMap::new()),
                groups: std::sync::RwLock::new(
                    config
                        .coordinators
                        .iter()
                        .map(|g| (g.group, g.replicas.clone()))
                        .collect(),
                ),
                meta: std::sync::RwLock::new(config.meta_replicas()),
                learning: tokio::sync::Mutex::new(()),
                missed: Mutex::new(HashMap::new()),
                leaders: Mutex::new(HashMap::new()),
                balance: opts.balance,
                next_group: std::sync::atomic::AtomicUsize::new(0),
                restarts: std::sync::atomic::AtomicU64::new(0),
                outstanding: Mutex::new(HashMap::new()),
                opts,
                lease: Duration::from_millis(config.transactions.lease_ms),
            }),
        }
    }

    /// A client of the cluster that `endpoints` (some nodes' client
    /// ports) belong to, routing by the table the first of them to answer
    /// sends (see [`discover`]).
    pub async fn connect(endpoints: &[String], opts: ClientOptions) -> Result<Client, ClientError> {
        let found = discover_table(endpoints, opts.tls.as_ref()).await?;
        let client = Client::new(&found.config, opts);
        client.adopt(&found);
        Ok(client)
    }

    pub fn shard_for_key(&self, key: &[u8]) -> ShardId {
        self.shard_map().shard_for_key(key)
    }

    /// The map requests are routed by now (it changes when a shard says
    /// it is stale: [`Client::refresh_map`]).
    pub fn shard_map(&self) -> Arc<ShardMap> {
        match self.inner.map.read() {
            Ok(m) => m.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Replace the map `stale` with the one the shards' own descriptors
    /// make (each shard's leader asked, in parallel), after a shard
    /// answered WRONG_SHARD to a request routed by `stale`. A no-op if the
    /// map was replaced since: concurrent refusals refresh once. A table
    /// that does not hold together (a change under way) is not used: it
    /// is read again for up to [`REFRESH_SETTLES_WITHIN`], then
    /// UNAVAILABLE, try again shortly.
    pub async fn refresh_map(&self, stale: &Arc<ShardMap>) -> Result<(), ClientError> {
        let asked = tokio::time::Instant::now();
        let mut r = self.inner.refreshing.lock().await;
        if !Arc::ptr_eq(&self.shard_map(), stale) {
            return Ok(());
        }
        if let Some((at, why)) = &r.failed {
            if *at >= asked {
                return Err(ClientError::Unavailable(why.clone()));
            }
        }
        self.refresh_locked(&mut r).await
    }

    /// [`Client::refresh_map`] from descriptors read after this call
    /// began, whatever map is in use: for a caller that must see every
    /// shard that exists once something it just did has landed (a
    /// coordinator raising fence floors).
    pub async fn refresh_all(&self) -> Result<(), ClientError> {
        let mut r = self.inner.refreshing.lock().await;
        self.refresh_locked(&mut r).await
    }

    async fn refresh_locked(&self, r: &mut Refreshing) -> Result<(), ClientError> {
        let refreshed = self.refresh_from_descriptors(&mut r.merged).await;
        r.failed = match &refreshed {
            Err(ClientError::Unavailable(why)) => Some((tokio::time::Instant::now(), why.clone())),
            _ => None,
        };
        refreshed
    }

    async fn refresh_from_descriptors(
        &self,
        merged: &mut std::collections::BTreeSet<ShardId>,
    ) -> Result<(), ClientError> {
        // Descriptors are read from every shard at once, each at its own
        // moment: across a merge, one read may see the merged shard
        // emptied and another its target before it took the keys (a gap),
        // or the reverse. That lasts until the slower side applies, so
        // read again shortly before giving up.
        let mut pause = Duration::from_millis(20);
        let give_up = tokio::time::Instant::now() + REFRESH_SETTLES_WITHIN;
        let (map, shards) = loop {
            let mut descriptors = Vec::new();
            for (_, answer) in self.walk(merged).await {
                let d = convert::descriptor(answer?).map_err(ClientError::Internal)?;
                if d.span.is_empty() {
                    merged.insert(d.shard);
                }
                descriptors.push(d);
            }
            match ShardMap::from_descriptors(&descriptors) {
                Ok(map) => break (map, descriptors.len()),
                Err(e) if tokio::time::Instant::now() + pause > give_up => {
                    return Err(ClientError::Unavailable(format!(
                        "the shards' descriptors do not make a map: {e}"
                    )))
                }
                Err(e) => {
                    tracing::debug!(error = %e, "the shards' descriptors do not make a map yet; reading them again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(320));
                }
            }
        };
        tracing::info!(shards, "routing map refreshed from the shards' descriptors");
        if let Ok(mut m) = self.inner.map.write() {
            *m = Arc::new(map);
        }
        Ok(())
    }

    /// `Describe` at every shard the client knows but `skip`, then at the
    /// shards split off them that it did not know, round by round: each
    /// shard's answer as sent, or why it gave none.
    async fn walk(
        &self,
        skip: &std::collections::BTreeSet<ShardId>,
    ) -> Vec<(ShardId, Result<pb::ShardDescriptor, ClientError>)> {
        let mut asked = skip.clone();
        let mut round: Vec<ShardId> = self
            .shards()
            .into_iter()
            .filter(|s| !skip.contains(s))
            .collect();
        let mut out = Vec::new();
        while !round.is_empty() {
            asked.extend(round.iter().copied());
            let answers =
                futures::future::join_all(round.iter().map(|s| self.describe_raw(*s))).await;
            let mut next = Vec::new();
            for (shard, answer) in round.into_iter().zip(answers) {
                if let Ok(d) = &answer {
                    let voters: Vec<NodeId> = d.voters.iter().copied().map(NodeId).collect();
                    // A shard a split created has no list in the config:
                    // its own leader's voters are where it is now (it
                    // moves).
                    if d.shard_id >= pact_common::FIRST_SPLIT_ID && !voters.is_empty() {
                        if let Ok(mut t) = self.inner.shards.write() {
                            t.insert(ShardId(d.shard_id), voters.clone());
                        }
                    }
                    for succ in d.successors.iter().copied().map(ShardId) {
                        if asked.contains(&succ) || next.contains(&succ) {
                            continue;
                        }
                        if let Ok(mut t) = self.inner.shards.write() {
                            t.entry(succ).or_insert_with(|| voters.clone());
                        }
                        next.push(succ);
                    }
                }
                out.push((shard, answer));
            }
            round = next;
        }
        out
    }

    /// What every shard's leader says of its shard now (descriptor,
    /// committed voters and their log index), for the metadata group's
    /// table: the shards in `known` (whose voters the client learns if
    /// it did not know the shard) and those the client knows, then the
    /// shards split off them, skipping `skip` (merged shards, which never
    /// change again). A shard that does not answer is left out, with why.
    pub async fn shard_records(
        &self,
        known: &[ShardRecord],
        skip: &std::collections::BTreeSet<ShardId>,
    ) -> (Vec<ShardRecord>, Vec<(ShardId, ClientError)>) {
        if let Ok(mut t) = self.inner.shards.write() {
            for r in known.iter().filter(|r| !r.voters.is_empty()) {
                t.entry(r.descriptor.shard)
                    .or_insert_with(|| r.voters.iter().copied().map(NodeId).collect());
            }
        }
        let (mut records, mut failed) = (Vec::new(), Vec::new());
        for (shard, answer) in self.walk(skip).await {
            match answer.and_then(|d| convert::shard_record(d).map_err(ClientError::Internal)) {
                Ok(r) => records.push(r),
                Err(e) => failed.push((shard, e)),
            }
        }
        (records, failed)
    }

    /// Route by what a routing table a node sent says beyond its config:
    /// where the metadata group is, and its shard table (every recorded
    /// shard's voters are where the client looks for it, and when the live
    /// shards' descriptors make a whole map, requests are routed by it;
    /// otherwise, a change half recorded, the map stays and a shard's
    /// WRONG_SHARD corrects it as before).
    pub fn adopt(&self, found: &Found) {
        // Where the metadata group is (it moves too, and records where).
        if !found.meta.is_empty() {
            if let Ok(mut m) = self.inner.meta.write() {
                *m = found.meta.clone();
            }
        }
        let table = &found.shards;
        if let Ok(mut t) = self.inner.shards.write() {
            for r in table.iter().filter(|r| !r.voters.is_empty()) {
                t.insert(
                    r.descriptor.shard,
                    r.voters.iter().copied().map(NodeId).collect(),
                );
            }
        }
        // Merged is final: refreshes need not ask those again. (Called on
        // a new client, so the lock is free; if not, a refresh learns it.)
        if let Ok(mut r) = self.inner.refreshing.try_lock() {
            r.merged.extend(
                table
                    .iter()
                    .filter(|r| r.descriptor.span.is_empty())
                    .map(|r| r.descriptor.shard),
            );
        }
        let descriptors: Vec<_> = table.iter().map(|r| r.descriptor.clone()).collect();
        match ShardMap::from_descriptors(&descriptors) {
            Ok(map) => {
                if let Ok(mut m) = self.inner.map.write() {
                    *m = Arc::new(map);
                }
            }
            Err(e) => tracing::debug!(
                error = %e,
                "the metadata group's shard table does not make a map yet; routing by the config"
            ),
        }
    }

    /// Run `op` with the map requests are routed by now; when a shard
    /// says that map is stale, refresh it and run `op` again (a few times
    /// at most: a map that keeps going stale is reported). Only for
    /// operations that did nothing when refused, which WRONG_SHARD
    /// guarantees.
    pub async fn rerouted<T, F, Fut>(&self, op: F) -> Result<T, ClientError>
    where
        F: Fn(Arc<ShardMap>) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let mut tries = 0;
        loop {
            let map = self.shard_map();
            match op(map.clone()).await {
                Err(ClientError::WrongShard(m)) if tries < REROUTES => {
                    tracing::debug!(reason = %m, "stale routing map; refreshing");
                    tries += 1;
                    self.refresh_map(&map).await?;
                }
                r => return r,
            }
        }
    }

    /// The shards this client knows to be retired ([`Client::learn_retired`]).
    pub fn retired_shards(&self) -> std::collections::BTreeSet<ShardId> {
        match self.inner.retired.read() {
            Ok(r) => r.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Whether this client knows `shard` to be retired (no copy of the
    /// set: it is asked on every shard call).
    fn is_retired(&self, shard: ShardId) -> bool {
        match self.inner.retired.read() {
            Ok(r) => r.contains(&shard),
            Err(p) => p.into_inner().contains(&shard),
        }
    }

    /// Record that `shards` are retired (retirement is final).
    pub(crate) fn note_retired(&self, shards: impl IntoIterator<Item = ShardId>) {
        if let Ok(mut r) = self.inner.retired.write() {
            r.extend(shards);
        }
    }

    /// Read which shards are retired from the metadata group's table,
    /// within `within` (best effort: a cluster without the group, or one
    /// that does not answer in time, leaves what the client knew).
    pub async fn learn_retired(&self, within: Duration) {
        let _ = tokio::time::timeout(within, self.meta_shards()).await;
    }

    pub fn shards(&self) -> Vec<ShardId> {
        self.shard_table().keys().copied().collect()
    }

    fn shard_table(&self) -> BTreeMap<ShardId, Vec<NodeId>> {
        match self.inner.shards.read() {
            Ok(t) => t.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The replicas of `shard` in the config, or for a shard a split
    /// created, its parent's voters when this client first met it (empty
    /// for an unknown shard).
    pub fn shard_replicas(&self, shard: ShardId) -> Vec<NodeId> {
        self.shard_table().get(&shard).cloned().unwrap_or_default()
    }

    /// Make sure the client knows `group` if it exists: a shard a split
    /// created is found from the descriptors (a refresh of the map) the
    /// first time it is named.
    pub async fn know(&self, group: RaftGroup) {
        if let RaftGroup::Shard(s) = group {
            if !self.shard_table().contains_key(&s) {
                let _ = self.refresh_map(&self.shard_map()).await;
            }
        }
    }

    /// What `shard` owns now, from its leader (`Describe`, after the
    /// leader's read barrier).
    pub async fn describe_shard(
        &self,
        shard: ShardId,
    ) -> Result<pact_common::Descriptor, ClientError> {
        self.know(RaftGroup::Shard(shard)).await;
        convert::descriptor(self.describe_raw(shard).await?).map_err(ClientError::Internal)
    }

    /// `Describe` at `shard`'s leader, as sent.
    async fn describe_raw(&self, shard: ShardId) -> Result<pb::ShardDescriptor, ClientError> {
        let peer = self.inner.opts.peer_ports;
        self.call_shard(shard, true, |ch| {
            let req = pb::DescribeRequest { shard_id: shard.0 };
            async move {
                if peer {
                    pact_proto::participant_client::ParticipantClient::new(ch)
                        .describe(req)
                        .await
                } else {
                    kv(ch).describe(req).await
                }
            }
        })
        .await
    }

    /// Merge `shard` into `into` (see `pact.v1.Kv.Merge`): returns what
    /// `into` owns now, and routes by the new map. Waits up to `within`;
    /// a merge that did not answer in time may still finish (UNKNOWN). A
    /// merge asked again after it went through answers as the first time,
    /// so an answer cut off on the way (UNKNOWN) is asked for again here
    /// while `within` lasts.
    pub async fn merge_shards(
        &self,
        shard: ShardId,
        into: ShardId,
        within: Duration,
    ) -> Result<pact_common::Descriptor, ClientError> {
        self.know(RaftGroup::Shard(shard)).await;
        self.know(RaftGroup::Shard(into)).await;
        let replicas = self.shard_replicas(shard);
        if replicas.is_empty() {
            return Err(ClientError::UnknownShard(shard.0));
        }
        if self.shard_replicas(into).is_empty() {
            return Err(ClientError::UnknownShard(into.0));
        }
        let req = pb::MergeRequest {
            shard_id: shard.0,
            into: into.0,
        };
        let r = self
            .ask_until_known(shard, &replicas, within, |ch| async move {
                kv(ch).merge(req).await
            })
            .await?;
        let into = r
            .into
            .ok_or_else(|| ClientError::Internal("merge reply without a descriptor".into()))
            .and_then(|d| convert::descriptor(d).map_err(ClientError::Internal))?;
        let stale = self.shard_map();
        let _ = self.refresh_map(&stale).await;
        Ok(into)
    }

    /// Send a shard change that is answered the same when asked again
    /// (a merge, a split of a given version) to `shard`'s leader, asking
    /// again while `within` lasts when the answer is cut off (the leader
    /// that drove it lost its leadership, or the deadline passed): the
    /// repeat learns the outcome, and one still under way says so
    /// (UNAVAILABLE, asked again). At the end an outcome never learnt is
    /// still UNKNOWN, never "nothing moved".
    async fn ask_until_known<T, F, Fut>(
        &self,
        shard: ShardId,
        replicas: &[NodeId],
        within: Duration,
        call: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = Instant::now() + within;
        let mut unknown: Option<String> = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let r = self
                .call_route(
                    Route::Shard(shard),
                    replicas,
                    false,
                    left.max(Duration::from_secs(1)),
                    &call,
                )
                .await;
            match r {
                Err(ClientError::Unknown(m)) if Instant::now() < deadline => {
                    unknown = Some(m);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                // Once the outcome is unknown, keep asking while time lasts.
                Err(ClientError::Unavailable(_) | ClientError::Overloaded(_))
                    if unknown.is_some() && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e @ (ClientError::Unavailable(_) | ClientError::Overloaded(_))) => {
                    return Err(match unknown {
                        Some(m) => ClientError::Unknown(format!("{m}; asked again, then: {e}")),
                        None => e,
                    })
                }
                r => return r,
            }
        }
    }

    /// Split `shard` in two (see `pact.v1.Kv.Split`): at `at` for a range
    /// shard, at the middle of its ring share otherwise. Returns what the
    /// shard keeps and the new shard, and routes by the new map. Waits up
    /// to `within` (a split waits for transactions to leave the part that
    /// moves, and copies it); a split that did not answer in time may
    /// still finish (UNKNOWN).
    ///
    /// `version` is the shard's descriptor version to split; without one,
    /// the shard's current version is asked first. The split then happens
    /// once however often it is asked: an answer cut off is asked for
    /// again while `within` lasts, and a split of a version the shard has
    /// left for another reason is refused with WRONG_SHARD.
    pub async fn split_shard(
        &self,
        shard: ShardId,
        version: Option<u64>,
        at: Option<Vec<u8>>,
        within: Duration,
    ) -> Result<(pact_common::Descriptor, pact_common::Descriptor), ClientError> {
        self.know(RaftGroup::Shard(shard)).await;
        let replicas = self.shard_replicas(shard);
        if replicas.is_empty() {
            return Err(ClientError::UnknownShard(shard.0));
        }
        let version = match version {
            Some(v) => v,
            None => self.describe_shard(shard).await?.version,
        };
        let req = pb::SplitRequest {
            shard_id: shard.0,
            at: at.map(Into::into),
            version,
        };
        let r = self
            .ask_until_known(shard, &replicas, within, |ch| {
                let req = req.clone();
                async move { kv(ch).split(req).await }
            })
            .await?;
        let desc = |d: Option<pb::ShardDescriptor>| {
            d.ok_or_else(|| ClientError::Internal("split reply without a descriptor".into()))
                .and_then(|d| convert::descriptor(d).map_err(ClientError::Internal))
        };
        let (left, child) = (desc(r.left)?, desc(r.child)?);
        let stale = self.shard_map();
        // The next request routes by the split map (best effort: a
        // WRONG_SHARD would refresh it anyway).
        let _ = self.refresh_map(&stale).await;
        Ok((left, child))
    }

    /// The address this client dials for `node`, if it knows the node.
    fn addr(&self, node: NodeId) -> Option<String> {
        if let Some(a) = self
            .inner
            .nodes
            .read()
            .ok()
            .and_then(|n| n.get(&node).cloned())
        {
            return Some(a);
        }
        let (client, peer) = (self.inner.opts.resolver.as_ref()?.0)(node)?;
        let a = dialled(&self.inner.opts, &client, &peer).to_string();
        if let Ok(mut n) = self.inner.nodes.write() {
            n.insert(node, a.clone());
        }
        Some(a)
    }

    /// Learn the addresses of the live members of `table` this client
    /// does not know yet.
    pub(crate) fn met(&self, table: &[ClusterMember]) {
        if let Ok(mut n) = self.inner.nodes.write() {
            for m in table.iter().filter(|m| !m.removed) {
                let a = dialled(&self.inner.opts, &m.addr, &m.peer_addr);
                n.entry(NodeId(m.id)).or_insert_with(|| a.to_string());
            }
        }
    }

    fn knows(&self, node: NodeId) -> bool {
        self.addr(node).is_some()
    }

    /// Learn `node`'s address if this client does not know it: from the
    /// resolver, else from the routing table of a node it knows (every
    /// member is listed there). Whether it is known now.
    pub(crate) async fn learn(&self, node: NodeId) -> bool {
        if self.knows(node) || self.inner.opts.peer_ports {
            return self.knows(node);
        }
        // One look-up at a time; a node none could name is not looked up
        // again for a while (a stream of hints naming it would otherwise
        // ask the cluster for its table each time).
        let _one = self.inner.learning.lock().await;
        if self.knows(node) {
            return true;
        }
        if let Ok(missed) = self.inner.missed.lock() {
            if missed
                .get(&node)
                .is_some_and(|at| at.elapsed() < LEARN_AGAIN_AFTER)
            {
                return false;
            }
        }
        let _ = self.routing_table().await;
        let known = self.knows(node);
        if !known {
            if let Ok(mut missed) = self.inner.missed.lock() {
                missed.insert(node, Instant::now());
            }
        }
        known
    }

    pub(crate) fn channel(&self, node: NodeId) -> Result<Conn, ClientError> {
        let addr = &self.addr(node).ok_or_else(|| {
            ClientError::InvalidInput(format!("node {node} is not a known member of the cluster"))
        })?;
        let mut chans = self
            .inner
            .channels
            .lock()
            .map_err(|_| ClientError::Internal("poisoned lock".into()))?;
        if let Some(c) = chans.get(addr) {
            return Ok(c.clone());
        }
        let local = self
            .inner
            .opts
            .local
            .as_ref()
            .filter(|l| l.node() == node)
            .cloned();
        let ch = Conn::new(channel_to(addr, self.inner.opts.tls.as_ref())?, local);
        chans.insert(addr.clone(), ch.clone());
        Ok(ch)
    }

    /// `node 1 (127.0.0.1:7001)`: errors name the address that was tried.
    pub(crate) fn who(&self, node: NodeId) -> String {
        match self.addr(node) {
            Some(addr) => format!("node {node} ({addr})"),
            None => format!("node {node}"),
        }
    }

    fn who_all(&self, nodes: &[NodeId]) -> String {
        nodes
            .iter()
            .map(|n| self.who(*n))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub(crate) fn cached_leader(&self, route: Route) -> Option<NodeId> {
        self.inner
            .leaders
            .lock()
            .ok()
            .and_then(|l| l.get(&route).copied())
    }

    fn set_leader(&self, route: Route, node: NodeId) {
        if let Ok(mut l) = self.inner.leaders.lock() {
            l.insert(route, node);
        }
    }

    /// Run `call` against `shard`'s leader, following hints and retrying
    /// as the operation's idempotence allows. `call` gets a channel to the
    /// replica being tried and builds whichever gRPC client it needs; this
    /// is how coordinators reach participants' `Participant` service.
    pub async fn call_shard<T, F, Fut>(
        &self,
        shard: ShardId,
        idempotent: bool,
        call: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let replicas = self
            .shard_table()
            .get(&shard)
            .cloned()
            .ok_or(ClientError::UnknownShard(shard.0))?;
        let within = self.inner.opts.request_timeout;
        if self.is_retired(shard) {
            return self.call_retired(shard, idempotent, within, call).await;
        }
        let first = self
            .call_route(Route::Shard(shard), &replicas, idempotent, within, &call)
            .await;
        // A shard merged away whose nodes no longer answer for it may have
        // been retired, and its last nodes removed since: any node
        // answers for a retired shard. Looked up only then (a merged
        // shard is the only kind that can retire).
        match first {
            Err(ClientError::Unavailable(_) | ClientError::Unreachable(_))
                if !self.shard_map().shards().contains(&shard) =>
            {
                self.learn_retired(RETIRED_LOOKUP).await;
                if self.is_retired(shard) {
                    return self.call_retired(shard, idempotent, within, call).await;
                }
                first
            }
            // None of the nodes it knew leads the shard or answers: its
            // replicas may have moved (a client of the config knows only
            // the config's). The metadata group's table says where they
            // are; they are tried once. Safe for any call: these errors
            // mean nothing was done.
            Err(e @ (ClientError::Unavailable(_) | ClientError::Unreachable(_)))
                if !self.inner.opts.pinned =>
            {
                match self.relearn(Route::Shard(shard)).await {
                    Some(moved) if !same_nodes(&moved, &replicas) => {
                        self.call_route(Route::Shard(shard), &moved, idempotent, within, call)
                            .await
                    }
                    _ => Err(e),
                }
            }
            r => r,
        }
    }

    /// [`Client::call_shard`] for a retired shard: every node answers for
    /// it, so each node this client knows is tried in turn, the replicas
    /// of live groups first (kept current by their descriptors and
    /// statuses, so a retired shard's own nodes, possibly removed since,
    /// come last).
    async fn call_retired<T, F, Fut>(
        &self,
        shard: ShardId,
        idempotent: bool,
        within: Duration,
        call: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let retired = self.retired_shards();
        let mut nodes: Vec<NodeId> = Vec::new();
        let live = self
            .shard_table()
            .into_iter()
            .filter(|(s, _)| !retired.contains(s))
            .flat_map(|(_, r)| r)
            .chain(self.group_table().into_values().flatten())
            .chain(self.meta_replicas());
        for n in live.chain(self.node_ids()) {
            // Only nodes it can dial: one it cannot would end the call.
            if !nodes.contains(&n) && self.addr(n).is_some() {
                nodes.push(n);
            }
        }
        self.call_route(Route::Shard(shard), &nodes, idempotent, within, call)
            .await
    }

    /// Like [`Client::call_shard`], for the leader of a coordinator group.
    pub async fn call_group<T, F, Fut>(
        &self,
        group: u64,
        idempotent: bool,
        call: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let within = self.inner.opts.request_timeout;
        self.call_group_within(group, idempotent, within, call)
            .await
    }

    /// [`Client::call_group`] with its own time limit per attempt (a
    /// request that may wait for several locks in turn).
    pub(crate) async fn call_group_within<T, F, Fut>(
        &self,
        group: u64,
        idempotent: bool,
        within: Duration,
        call: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let replicas = self.group_table().get(&group).cloned().ok_or_else(|| {
            ClientError::InvalidInput(format!("no coordinator group {group} in the config"))
        })?;
        self.call_moving(Route::Group(group), &replicas, idempotent, within, call)
            .await
    }

    /// [`Client::call_route`] for a group whose replicas move at run time
    /// (a coordinator group, the metadata group): when none of the nodes
    /// it knew leads the group, or answers, ask any node for the routing
    /// table (where the metadata group recorded the group's voters) and
    /// try those once.
    async fn call_moving<T, F, Fut>(
        &self,
        route: Route,
        replicas: &[NodeId],
        idempotent: bool,
        within: Duration,
        call: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        match self
            .call_route(route, replicas, idempotent, within, &call)
            .await
        {
            Err(e @ (ClientError::Unavailable(_) | ClientError::Unreachable(_))) => {
                match self.relearn(route).await {
                    Some(moved) if !same_nodes(&moved, replicas) => {
                        self.call_route(route, &moved, idempotent, within, call)
                            .await
                    }
                    _ => Err(e),
                }
            }
            r => r,
        }
    }

    pub(crate) fn group_table(&self) -> BTreeMap<u64, Vec<NodeId>> {
        match self.inner.groups.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The routing table the first node this client knows sends, with the
    /// nodes it lists added to those the client dials. None if none sends
    /// one, and for a client of peer ports (they serve no routing table).
    async fn routing_table(&self) -> Option<Found> {
        if self.inner.opts.peer_ports {
            return None;
        }
        let known: Vec<String> = self
            .inner
            .nodes
            .read()
            .map(|n| n.values().cloned().collect())
            .unwrap_or_default();
        let found = discover_table(&known, self.inner.opts.tls.as_ref())
            .await
            .ok()?;
        if let Ok(mut n) = self.inner.nodes.write() {
            for nc in &found.config.nodes {
                n.entry(nc.id).or_insert_with(|| nc.addr.clone());
            }
        }
        Some(found)
    }

    /// Where `route`'s group is (a coordinator group's replicas, the
    /// metadata group's, or a shard's) as the first node that sends its
    /// routing table says, recorded by the client; None if it does not
    /// say.
    async fn relearn(&self, route: Route) -> Option<Vec<NodeId>> {
        let found = tokio::time::timeout(self.inner.opts.request_timeout * 2, self.routing_table())
            .await
            .ok()??;
        match route {
            Route::Group(group) => {
                let replicas = found
                    .config
                    .coordinators
                    .iter()
                    .find(|g| g.group == group)
                    .map(|g| g.replicas.clone())
                    .filter(|r| !r.is_empty())?;
                tracing::info!(group, replicas = ?replicas, "coordinator group's replicas relearned");
                if let Ok(mut g) = self.inner.groups.write() {
                    g.insert(group, replicas.clone());
                }
                Some(replicas)
            }
            Route::Meta => {
                if found.meta.is_empty() {
                    return None;
                }
                tracing::info!(replicas = ?found.meta, "metadata group's replicas relearned");
                if let Ok(mut m) = self.inner.meta.write() {
                    *m = found.meta.clone();
                }
                Some(found.meta)
            }
            Route::Shard(shard) => {
                let voters: Vec<NodeId> = found
                    .shards
                    .iter()
                    .find(|r| r.descriptor.shard == shard)
                    .map(|r| r.voters.iter().copied().map(NodeId).collect())
                    .filter(|v: &Vec<NodeId>| !v.is_empty())?;
                tracing::info!(%shard, replicas = ?voters, "shard's replicas relearned");
                if let Ok(mut t) = self.inner.shards.write() {
                    t.insert(shard, voters.clone());
                }
                Some(voters)
            }
        }
    }

    /// Like [`Client::call_shard`], for the leader of the metadata group
    /// (on the nodes of the first coordinator group).
    pub(crate) async fn call_meta<T, F, Fut>(
        &self,
        idempotent: bool,
        call: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let replicas = self.meta_replicas();
        if replicas.is_empty() {
            return Err(ClientError::InvalidInput(
                "this cluster has no coordinator group, so no metadata group (member table)".into(),
            ));
        }
        let within = self.inner.opts.request_timeout;
        self.call_moving(Route::Meta, &replicas, idempotent, within, call)
            .await
    }

    async fn call_route<T, F, Fut>(
        &self,
        route: Route,
        replicas: &[NodeId],
        idempotent: bool,
        within: Duration,
        call: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        if replicas.is_empty() {
            return Err(ClientError::InvalidInput(format!(
                "{route} has no replicas"
            )));
        }
        let deadline = Instant::now() + self.inner.opts.retry_for;
        let mut target = self.cached_leader(route).unwrap_or(replicas[0]);
        let mut backoff = backoff(Duration::from_millis(20), Duration::from_millis(500));
        // Refusals by admission control back off further: the server is
        // busy, not gone, and a quick retry only adds to its load.
        let mut shed = crate::backoff(Duration::from_millis(100), Duration::from_secs(2));
        // Since when every answer has been a refusal at admission.
        let mut overloaded_since: Option<Instant> = None;
        let mut last_err;
        // Replicas that refused the connection since the last other answer,
        // and since when: all of them for long enough means nothing listens.
        let mut refused = std::collections::BTreeSet::new();
        let mut refused_since = None;
        loop {
            let next = |t: NodeId| {
                let i = replicas.iter().position(|r| *r == t).unwrap_or(0);
                replicas[(i + 1) % replicas.len()]
            };
            let res = tokio::time::timeout(within, call(self.channel(target)?)).await;
            let mut sleep = true;
            let mut pause_at_least = None;
            let mut overloaded = false;
            match &res {
                Ok(Err(status)) if convert::connection_refused(status) => {
                    refused.insert(target);
                    let since = *refused_since.get_or_insert_with(Instant::now);
                    if let Some(grace) = self.inner.opts.give_up_unreachable {
                        if replicas.iter().all(|r| refused.contains(r)) && since.elapsed() >= grace
                        {
                            return Err(ClientError::Unreachable(format!(
                                "{route}: nothing listens at {}: connection refused",
                                self.who_all(replicas)
                            )));
                        }
                    }
                }
                _ => {
                    refused.clear();
                    refused_since = None;
                }
            }
            match res {
                Ok(Ok(resp)) => {
                    self.set_leader(route, target);
                    return Ok(resp.into_inner());
                }
                Err(_) => {
                    last_err = format!("{} did not answer within {within:?}", self.who(target));
                    if !idempotent {
                        return Err(ClientError::Unknown(last_err));
                    }
                    target = next(target);
                }
                Ok(Err(status)) => match classify(&status) {
                    // Any node the client knows: a replica added at run
                    // time is not in the list it started from.
                    Class::NotLeader(Some(hint)) if hint != target && self.learn(hint).await => {
                        last_err = format!("{} is not leader; hint {hint}", self.who(target));
                        target = hint;
                        sleep = false;
                    }
                    Class::NotLeader(_) => {
                        last_err = format!("{} is not leader and knows none", self.who(target));
                        target = next(target);
                    }
                    Class::Retry(m) => {
                        last_err = format!("{}: {m}", self.who(target));
                        target = next(target);
                    }
                    // Nothing was done, whatever the operation: retry the
                    // same replica (it leads; the others would send us
                    // back), after a longer pause.
                    Class::Overloaded(m, after) => {
                        last_err = format!("{}: {m}", self.who(target));
                        overloaded = true;
                        let since = *overloaded_since.get_or_insert_with(Instant::now);
                        if let Some(budget) = self.inner.opts.overload_retry_for {
                            if since.elapsed() >= budget {
                                return Err(ClientError::Overloaded(format!(
                                    "{route}: still refused after {budget:?}; last: {last_err}"
                                )));
                            }
                        }
                        let pause = shed.next().unwrap_or(Duration::from_secs(2));
                        pause_at_least = Some(pause.max(after.unwrap_or_default()));
                    }
                    Class::Unknown(m) => {
                        last_err = format!("{}: {m}", self.who(target));
                        if !idempotent {
                            return Err(ClientError::Unknown(last_err));
                        }
                        target = next(target);
                    }
                    Class::Fail(e) => return Err(e),
                },
            }
            if !overloaded {
                overloaded_since = None;
            }
            if Instant::now() >= deadline && overloaded {
                return Err(ClientError::Overloaded(format!(
                    "{route}: still refused after {:?}; last: {last_err}",
                    self.inner.opts.retry_for
                )));
            }
            if Instant::now() >= deadline {
                return Err(ClientError::Unavailable(format!(
                    "{route}: gave up after {:?} (replicas: {}); last: {last_err}",
                    self.inner.opts.retry_for,
                    self.who_all(replicas)
                )));
            }
            if let Some(pause) = pause_at_least {
                // Never past the deadline: the caller gets its answer when
                // it asked for it.
                let left = deadline.saturating_duration_since(Instant::now());
                tokio::time::sleep(pause.min(left)).await;
            } else if sleep {
                let pause = backoff.next().unwrap_or(Duration::from_millis(500));
                tokio::time::sleep(pause).await;
            }
        }
    }

    /// Linearizable read of one key.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        let r = self
            .rerouted(|map| async move {
                let shard = map.shard_for_key(key);
                self.call_shard(shard, true, |ch| {
                    let mut c = kv(ch);
                    let req = pb::GetRequest {
                        shard_id: shard.0,
                        key: key.to_vec().into(),
                        shard_version: map.version(shard),
                    };
                    async move { c.get(req).await }
                })
                .await
            })
            .await?;
        Ok(r.found.then(|| r.value.to_vec()))
    }

    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), ClientError> {
        self.write(vec![(key.to_vec(), Some(value.to_vec()))])
            .await
            .map(|_| ())
    }

    pub async fn delete(&self, key: &[u8]) -> Result<(), ClientError> {
        self.write(vec![(key.to_vec(), None)]).await.map(|_| ())
    }

    /// Atomic batch on one shard; every key must map to the same shard.
    /// Returns the Raft index it committed at.
    pub async fn write(&self, batch: Vec<Mutation>) -> Result<u64, ClientError> {
        let Some((first, _)) = batch.first() else {
            return Err(ClientError::InvalidInput("empty write batch".into()));
        };
        let ops = convert::write_ops(batch.clone());
        let (batch, ops) = (&batch, &ops);
        let r = self
            .rerouted(|map| {
                async move {
                    let shard = map.shard_for_key(first);
                    if let Some((k, _)) = batch.iter().find(|(k, _)| map.shard_for_key(k) != shard)
                    {
                        return Err(ClientError::InvalidInput(format!(
                            "batch spans shards ({} and {}, key {:?}); use a transaction",
                            shard,
                            map.shard_for_key(k),
                            String::from_utf8_lossy(k)
                        )));
                    }
                    // Not idempotent, but a WRONG_SHARD refusal did
                    // nothing: routing it again is safe.
                    self.call_shard(shard, false, |ch| {
                        let mut c = kv(ch);
                        let req = pb::WriteRequest {
                            shard_id: shard.0,
                            ops: ops.clone(),
                            shard_version: map.version(shard),
                        };
                        async move { c.write(req).await }
                    })
                    .await
                }
            })
            .await?;
        Ok(r.index)
    }

    /// Keys in `[start, end)` across all shards, in key order, at most
    /// `limit` (0: 1,000); fewer only if the range holds fewer. Each
    /// shard's part is linearizable; the parts are read one after another,
    /// not as one atomic snapshot (that needs a transaction). Read in
    /// pages: a shard's answer ends at a byte budget, and no page hands
    /// out a key past a shard's unread ones.
    pub async fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: u32,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, ClientError> {
        let limit = if limit == 0 { 1000 } else { limit };
        let mut all: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut from = start.to_vec();
        loop {
            let want = limit - all.len() as u32;
            let (page, more) = self.scan_page(&from, end, want).await?;
            all.extend(page);
            if !more || all.len() >= limit as usize {
                break;
            }
            match pact_common::next_scan_start(&all, &from) {
                Some(next) => from = next,
                None => break,
            }
        }
        Ok(all)
    }

    /// One page of [`Client::scan`]: each shard's part from `start`, then
    /// merged (`pact_common::merge_scan_pages`); and whether there is more.
    async fn scan_page(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: u32,
    ) -> Result<(Vec<(Vec<u8>, Vec<u8>)>, bool), ClientError> {
        let page = self
            .rerouted(|map| async move {
                let (shards, ordered) = map.scan_shards(start, end);
                let mut page = pact_common::ScanPage::new(ordered, limit as usize);
                let mut left = shards.len();
                for shard in shards {
                    left -= 1;
                    // Each shard is asked for its part only, which it
                    // checks it owns whole: a map with other boundaries
                    // would otherwise miss keys.
                    let Some((lo, hi)) = map.clip(shard, start, end) else {
                        continue;
                    };
                    let want = u32::try_from(page.want()).unwrap_or(u32::MAX);
                    let r = self
                        .call_shard(shard, true, |ch| {
                            let mut c = kv(ch);
                            let req = pb::ScanRequest {
                                shard_id: shard.0,
                                start: lo.clone().into(),
                                end: hi.clone().unwrap_or_default().into(),
                                limit: want,
                                shard_version: map.version(shard),
                            };
                            async move { c.scan(req).await }
                        })
                        .await?;
                    let pairs = r
                        .pairs
                        .into_iter()
                        .map(|p| (p.key.to_vec(), p.value.to_vec()))
                        .collect();
                    // Whole: the later range shards wait for the next page.
                    if page.add(pairs, r.more, left > 0) {
                        break;
                    }
                }
                Ok(page)
            })
            .await?;
        Ok(page.finish(usize::MAX))
    }

    /// Status of one replica, asked directly (no leader needed).
    pub async fn replica_status(
        &self,
        shard: ShardId,
        node: NodeId,
    ) -> Result<ReplicaStatus, ClientError> {
        self.learn(node).await;
        let mut c = KvClient::new(self.channel(node)?);
        let req = pb::StatusRequest { shard_id: shard.0 };
        self.status_reply(node, c.status(req)).await
    }

    /// Status of one replica of a coordinator group's recovery log.
    pub async fn coordinator_status(&self, node: NodeId) -> Result<ReplicaStatus, ClientError> {
        self.coordinator_group_status(0, node).await
    }

    /// Node `node`'s replica of coordinator group `group` (0: whichever it
    /// runs); a node that runs no replica of `group` answers NOT_LEADER.
    pub async fn coordinator_group_status(
        &self,
        group: u64,
        node: NodeId,
    ) -> Result<ReplicaStatus, ClientError> {
        let mut c = pact_proto::txn_client::TxnClient::new(self.channel(node)?);
        let req = pb::StatusRequest { shard_id: group };
        self.status_reply(node, c.group_status(req)).await
    }

    /// One status answer, or why there is none: nothing listens
    /// (`Unreachable`), no answer in time, or the replica's own error.
    pub(crate) async fn status_reply(
        &self,
        node: NodeId,
        call: impl Future<Output = Result<tonic::Response<pb::StatusResponse>, tonic::Status>>,
    ) -> Result<ReplicaStatus, ClientError> {
        let within = self.inner.opts.request_timeout;
        match tokio::time::timeout(within, call).await {
            Err(_) => Err(ClientError::Unavailable(format!(
                "{} did not answer within {within:?}",
                self.who(node)
            ))),
            Ok(Err(s)) if convert::connection_refused(&s) => Err(ClientError::Unreachable(
                format!("{}: connection refused", self.who(node)),
            )),
            Ok(Err(s)) => Err(match classify(&s) {
                Class::Fail(e) => e,
                Class::Overloaded(m, _) => {
                    ClientError::Overloaded(format!("{}: {m}", self.who(node)))
                }
                _ => ClientError::Unavailable(format!("{}: {}", self.who(node), s.message())),
            }),
            Ok(Ok(r)) => Ok(ReplicaStatus::from(r.into_inner())),
        }
    }

    /// The replicas of a Raft group; empty if the config has no such group.
    pub fn group_replicas(&self, group: RaftGroup) -> Vec<NodeId> {
        match group {
            RaftGroup::Shard(s) => self.shard_replicas(s),
            RaftGroup::Coordinator(g) => self.group_table().get(&g).cloned().unwrap_or_default(),
            RaftGroup::Meta => self.meta_replicas(),
        }
    }

    /// Hand the leadership of `group` to node `to`, one of its voters: the
    /// group's leader, found by asking its replicas and following their
    /// hints, does it. Returns the leader and term once `to` leads. The
    /// voters are the group's own (replicas move at run time), not the
    /// config's.
    pub async fn transfer_leader(
        &self,
        target: RaftGroup,
        to: NodeId,
    ) -> Result<(NodeId, u64), ClientError> {
        let replicas = self.group_voters(target).await?;
        let group = target.id();
        if !replicas.contains(&to) {
            return Err(ClientError::InvalidInput(format!(
                "node {to} is not a voter of {target} (voters: {})",
                replicas
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let mut ask: Vec<NodeId> = replicas.clone();
        let mut tried = Vec::new();
        let mut last = ClientError::Unavailable(format!("{target}: no replica answered"));
        while let Some(node) = ask.pop() {
            if tried.contains(&node) {
                continue;
            }
            tried.push(node);
            self.learn(node).await;
            let mut c = pact_proto::admin_client::AdminClient::new(match self.channel(node) {
                Ok(ch) => ch,
                Err(e) => {
                    last = e;
                    continue;
                }
            });
            let req = pb::LeaderTransferRequest { group, to: to.0 };
            // The server gives the transfer 10 s; a little more here.
            let within = Duration::from_secs(12);
            match tokio::time::timeout(within, c.transfer_leader(req)).await {
                Ok(Ok(r)) => {
                    let r = r.into_inner();
                    return Ok((NodeId(r.leader), r.term));
                }
                Ok(Err(s)) => match classify(&s) {
                    Class::NotLeader(Some(hint)) if replicas.contains(&hint) => {
                        ask.push(hint);
                        last = ClientError::Unavailable(format!("{}: not leader", self.who(node)));
                    }
                    Class::NotLeader(_) | Class::Retry(_) | Class::Unknown(_) => {
                        last = ClientError::Unavailable(format!(
                            "{}: {}",
                            self.who(node),
                            s.message()
                        ));
                    }
                    Class::Overloaded(m, _) => return Err(ClientError::Overloaded(m)),
                    Class::Fail(e) => return Err(e),
                },
                Err(_) => {
                    last = ClientError::Unavailable(format!(
                        "{} did not answer within {within:?}",
                        self.who(node)
                    ))
                }
            }
        }
        Err(last)
    }

    /// Coordinator groups and their replicas, sorted.
    pub fn coordinator_groups(&self) -> Vec<(u64, Vec<NodeId>)> {
        self.group_table().into_iter().collect()
    }

    /// Status of every replica of every shard, sorted by shard then node,
    /// all asked at once (a silent replica costs one request timeout, not
    /// one per group it holds).
    ///
    /// Replicas added at run time are found through the voters the first
    /// answers report, and asked too.
    pub async fn status(&self) -> Vec<(ShardId, NodeId, Result<ReplicaStatus, ClientError>)> {
        let retired = self.retired_shards();
        let mut table = self.shard_table();
        table.retain(|s, _| !retired.contains(s));
        let asks = table.into_iter().flat_map(|(shard, replicas)| {
            replicas.into_iter().map(move |node| async move {
                (shard, node, self.replica_status(shard, node).await)
            })
        });
        let mut all = futures::future::join_all(asks).await;
        let asked: std::collections::BTreeSet<(ShardId, NodeId)> =
            all.iter().map(|(s, n, _)| (*s, *n)).collect();
        let more: std::collections::BTreeSet<(ShardId, NodeId)> = all
            .iter()
            .filter_map(|(s, _, r)| r.as_ref().ok().map(|st| (*s, st.voters.clone())))
            .flat_map(|(s, voters)| voters.into_iter().map(move |v| (s, NodeId(v))))
            .filter(|k| !asked.contains(k))
            .collect();
        let extra = futures::future::join_all(more.into_iter().map(|(shard, node)| async move {
            (shard, node, self.replica_status(shard, node).await)
        }))
        .await;
        all.extend(extra);
        all.sort_by_key(|(s, n, _)| (*s, *n));
        all
    }

    /// Status of every replica of every coordinator group, sorted by group
    /// then node, all asked at once.
    pub async fn coordinator_status_all(
        &self,
    ) -> Vec<(u64, NodeId, Result<ReplicaStatus, ClientError>)> {
        let table = self.group_table();
        let asks = table.iter().flat_map(|(group, replicas)| {
            replicas.iter().map(move |node| async move {
                (
                    *group,
                    *node,
                    self.coordinator_group_status(*group, *node).await,
                )
            })
        });
        futures::future::join_all(asks).await
    }

    /// Every node this client knows (the config's or the discovered
    /// table's, and those met since), sorted.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.inner
            .nodes
            .read()
            .map(|n| n.keys().copied().collect())
            .unwrap_or_default()
    }

    /// The address this client dials for `node` (its client port, or its
    /// peer port for a client of peer ports).
    pub fn node_addr(&self, node: NodeId) -> Option<String> {
        self.addr(node)
    }
}

#[cfg(test)]
mod tests {
    use super::{Abort, AbortKind, ClientError};

    #[test]
    fn error_codes_are_distinct_screaming_snake() {
        let all = [
            ClientError::Unavailable(String::new()),
            ClientError::Aborted(Abort::new(AbortKind::Wounded, "")),
            ClientError::Conflict(String::new()),
            ClientError::Unknown(String::new()),
            ClientError::InvalidInput(String::new()),
            ClientError::UnknownShard(1),
            ClientError::Internal(String::new()),
            ClientError::Overloaded(String::new()),
        ];
        let codes: std::collections::BTreeSet<&str> =
            all.iter().map(|e| e.code().as_str()).collect();
        assert_eq!(codes.len(), all.len(), "{codes:?}");
        for c in codes {
            assert!(
                c.chars().all(|ch| ch.is_ascii_uppercase() || ch == '_'),
                "{c}"
            );
        }
        assert_eq!(
            ClientError::Unknown("x".into()).code().as_str(),
            "OUTCOME_UNKNOWN"
        );
    }
}
