//! A participant node: this node's replica of every shard assigned to it,
//! and the owner tasks that drive each shard's transaction manager.
//!
//! Every operation, transactional or not, takes locks in the shard
//! leader's lock table: a plain `get` is a one-key read-only transaction
//! and a plain write batch a one-shard transaction, each under an implicit
//! transaction id (group 0) with a fresh timestamp. So plain operations
//! and transactions serialize with each other, and a plain read never sees
//! a prepared-but-undecided value as committed or misses a committed one.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pact_common::{
    system_clock, validate_batch, validate_key, Abort, AbortKind, Clock, ClusterConfig, Descriptor,
    Hlc, NodeId, ShardId, ShardMap, Timestamp, TxnId, MAX_SCAN_LIMIT,
};
use pact_raft::{Host, Replica, ReplicaStatus, Router, Tuning};

use crate::kv::{
    data_end, data_key, prepared_writes, KvApp, Mutation, ShardCommand, ShardReply, Shared, Split,
    DESCRIPTOR_KEY, PREPARED_PREFIX,
};
use crate::locks::{Mode, Range};
use crate::txn::{Step, Target, TxnLimits, TxnManager};
use crate::Error;

/// What `Describe` answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Described {
    pub descriptor: Descriptor,
    /// Shards split off this one, ever.
    pub successors: Vec<ShardId>,
    /// The group's last committed membership's voters, and its log index.
    pub voters: Vec<NodeId>,
    pub voters_at: u64,
}

/// Tell the coordinator of `txn`, wounded here for `reason`, within
/// `within`; once it knows (the transaction serves no more reads), its
/// locks here go, and their waiters are woken. `None` if it was not told
/// (the locks stay), else whether anything was released.
pub(crate) async fn wound_confirmed_by(
    shared: &Shared,
    coordinators: &pact_client::Client,
    txn: TxnId,
    reason: &Abort,
    within: Duration,
) -> Option<bool> {
    let told = tokio::time::timeout(within, coordinators.wounded(txn, &reason.reason)).await;
    if !matches!(told, Ok(Ok(()))) {
        return None;
    }
    Some(
        shared
            .release_with(|m| m.wound_confirmed(txn))
            .unwrap_or(false),
    )
}

/// The version of the shard's descriptor as loaded here (0: none yet).
fn descriptor_version(s: &Shard) -> u64 {
    s.shared
        .descriptor
        .read()
        .ok()
        .and_then(|d| d.as_ref().map(|d| d.version))
        .unwrap_or(0)
}

/// Whether `shard` is an id only a split gives (not a config's).
fn is_split_child(shard: ShardId) -> bool {
    shard.0 >= pact_common::FIRST_SPLIT_ID && shard.0 < pact_common::META_GROUP
}

/// How long hosting a split's new shard waits for this node's replica
/// of the shard that splits to apply the split's record.
const SPLIT_RECORD_WAIT: Duration = Duration::from_secs(3);

/// Default number of pairs a scan returns when the request sets no limit.
pub const DEFAULT_SCAN_LIMIT: u32 = 1000;

/// Stored pairs a scan reads at a time (it stops past an answer's bytes).
const SCAN_SLICE: usize = 128;

/// Transaction group id reserved for implicit single-operation transactions.
pub const IMPLICIT_GROUP: u64 = 0;

/// How far ahead of a node's clock a record horizon or fence floor may
/// be (coordinators' clocks are assumed within a lock wait of each other,
/// and a new coordinator leader starts up to its reservation ahead).
const STAMP_AHEAD_MS: u64 = 60_000;

/// Why a transaction older than the shard's record horizon was refused.
const EXPIRED: &str =
    "transaction is older than the shard's record horizon (its coordinator's retention)";

/// How long one request may wait for locks before its transaction aborts.
pub const LOCK_WAIT: Duration = pact_common::LOCK_WAIT;
/// How the reason for a lock-wait timeout begins.
pub const LOCK_TIMEOUT: &str = "lock wait";
/// How many times a plain write batch is started again after an older
/// transaction wounds it.
const WRITE_ATTEMPTS: u32 = 3;

/// Who makes a transactional request: the transaction, whether this is its
/// first request to the shard (only then may the shard meet it for the
/// first time), and its age for wound-wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnRef {
    pub txn: TxnId,
    pub first: bool,
    pub prio: Timestamp,
}

/// A participant's vote in two-phase commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Vote {
    Yes,
    ReadOnly,
    No(Abort),
}

pub(crate) struct Shard {
    pub(crate) replica: Replica,
    pub(crate) shared: Arc<Shared>,
    /// What the config says the shard owns: the descriptor its first
    /// leader records (a later one reads the recorded one instead).
    initial: Option<Descriptor>,
    /// Held by whoever drives a split of this shard (one at a time).
    splitting: Arc<tokio::sync::Mutex<()>>,
    /// Requests waiting for each key's lock now (`limits.max_waiters_per_key`).
    waiting: std::sync::Mutex<std::collections::HashMap<Vec<u8>, u32>>,
    /// The key-addressed requests this leader took lately, for splits by
    /// load (`[raft] auto_split_ops_per_sec`; untouched when that is off).
    load: std::sync::Mutex<Load>,
    /// Splits by size (`[raft] auto_split_bytes`): whether a measurement
    /// runs, and when the last one ended.
    sizing: std::sync::Mutex<Sizing>,
    /// Coordinators' decisions waiting to ride in the shard's next
    /// transaction entry, or to go alone after [`DECISION_HOLD`].
    held: std::sync::Mutex<Vec<HeldDecision>>,
}

/// A decision held for the shard's next entry, and the `Decide` request
/// waiting for its reply.
struct HeldDecision {
    txn: TxnId,
    commit: bool,
    answer: tokio::sync::oneshot::Sender<Result<ShardReply, Error>>,
}

#[derive(Default)]
struct Sizing {
    running: bool,
    last: Option<std::time::Instant>,
}

/// Requests counted since `since`, with a uniform sample of their keys
/// (reservoir sampling), whose median is where a hot range shard splits.
struct Load {
    since: std::time::Instant,
    ops: u64,
    sample: Vec<Vec<u8>>,
    /// xorshift64 state: which sampled key a new one replaces.
    rng: u64,
}

/// Keys kept in [`Load::sample`].
const LOAD_SAMPLE: usize = 64;

impl Load {
    fn new() -> Load {
        Load {
            since: std::time::Instant::now(),
            ops: 0,
            sample: Vec::new(),
            rng: 0x9E37_79B9_7F4A_7C15,
        }
    }

    fn note(&mut self, key: &[u8]) {
        self.ops += 1;
        if self.sample.len() < LOAD_SAMPLE {
            self.sample.push(key.to_vec());
        } else {
            // Each of the `ops` keys seen stays with the same chance.
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            let i = self.rng % self.ops;
            if let Some(slot) = usize::try_from(i).ok().and_then(|i| self.sample.get_mut(i)) {
                *slot = key.to_vec();
            }
        }
    }
}

/// One request's place in a key's queue of lock waiters; given back on
/// drop, including when the request is cancelled mid-wait.
struct Waiting<'a> {
    map: &'a std::sync::Mutex<std::collections::HashMap<Vec<u8>, u32>>,
    key: Vec<u8>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Ok(mut m) = self.map.lock() {
            if let Some(n) = m.get_mut(&self.key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&self.key);
                }
            }
        }
    }
}

/// Releases a transaction's locks on this shard when dropped, including
/// when the request future is cancelled (a caller's deadline), unless
/// disarmed because the outcome is not known yet: then the apply path
/// (`KvApp::visible`) or a leadership change releases them.
struct Release {
    shared: Arc<Shared>,
    txn: TxnId,
    armed: bool,
}

impl Release {
    fn new(s: &Shard, txn: TxnId) -> Self {
        Release {
            shared: s.shared.clone(),
            txn,
            armed: true,
        }
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        if self.armed {
            self.shared.release_with(|m| m.finish(self.txn));
        }
    }
}

/// A plain operation refused because its key is moving to another shard
/// (a split under way) did nothing: the caller retries it, like any
/// refusal by an unavailable shard, and finds the new owner once the
/// split is done (WRONG_SHARD).
fn plain<T>(r: Result<T, Error>) -> Result<T, Error> {
    match r {
        Err(Error::Aborted(a)) if a.kind == AbortKind::Moved => Err(Error::Unavailable(format!(
            "{}; nothing was done",
            a.reason
        ))),
        r => r,
    }
}

/// Whether an error leaves a proposed command's fate open.
fn undecided(e: &Error) -> bool {
    matches!(e, Error::Unknown(_) | Error::Fatal(_))
}

/// The `limit` label of the in-flight request limit.
pub const IN_FLIGHT_LIMIT: &str = "in_flight_requests";

fn config_limit(v: u32) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

pub struct Node {
    id: NodeId,
    config: Arc<ClusterConfig>,
    map: ShardMap,
    /// The shards hosted here: those of the config, plus those an operator
    /// added, minus those an operator removed (`pact_raft::Hosting`).
    shards: std::sync::RwLock<BTreeMap<ShardId, Arc<Shard>>>,
    /// Serializes hosting and dropping shards, so two calls for one shard
    /// cannot both start (or stop) its replica.
    hosting: tokio::sync::Mutex<()>,
    host: Host,
    tuning: Tuning,
    router: Router,
    hlc: Hlc,
    /// Monotonic milliseconds, for the transaction manager's timers.
    mono: Clock,
    /// Client of the coordinator groups: told of wounds, asked about
    /// silent transactions.
    coordinators: pact_client::Client,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Requests in flight on this node's shards (`limits.max_in_flight_requests`).
    admission: pact_raft::admission::Gate,
    /// `limits.max_waiters_per_key`.
    max_waiters_per_key: u32,
    /// How long a decision waits for a transaction entry to carry it, in
    /// microseconds ([`DECISION_HOLD`]; tests set another).
    decision_hold_us: std::sync::atomic::AtomicU64,
    /// What the drivers of splits need.
    split_ctx: crate::split::Ctx,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Nodes added to the cluster at run time, as the host's directory knows
/// them.
fn resolver(host: &Host) -> pact_client::Resolver {
    let dir = host.directory();
    pact_client::Resolver(Arc::new(move |n: NodeId| dir.addrs(n.0)))
}

impl Node {
    /// Open the node's storage under `data_dir` and start (or recover) its
    /// replica of every shard the config assigns to `id`. With `tls`, every
    /// call to another node (Raft, coordinators) uses it.
    pub async fn start(
        config: ClusterConfig,
        id: NodeId,
        data_dir: &Path,
        tls: Option<pact_client::Tls>,
    ) -> Result<Node, Error> {
        if config.node(id).is_none() {
            return Err(Error::InvalidInput(format!(
                "node {id} is not in the cluster config"
            )));
        }
        let host = Host::open(
            data_dir,
            &config.storage,
            tls.as_ref().map(|t| t.client_config()),
        )
        .map_err(|e| Error::Fatal(e.to_string()))?;
        Self::start_on(config, id, &host, tls).await
    }

    /// [`Node::start`] on a storage, Raft router and peer connections that
    /// the process already has, shared with the other groups it hosts (a
    /// `pact` server that also runs a coordinator replica).
    pub async fn start_on(
        config: ClusterConfig,
        id: NodeId,
        host: &Host,
        tls: Option<pact_client::Tls>,
    ) -> Result<Node, Error> {
        if config.node(id).is_none() {
            return Err(Error::InvalidInput(format!(
                "node {id} is not in the cluster config"
            )));
        }
        let tuning = Tuning::from(&config.raft);
        let config_in_flight = config.limits.max_in_flight_requests;
        let max_waiters_per_key = config.limits.max_waiters_per_key.max(1);
        let clock = system_clock();
        // Timers (idle, silence, in doubt) run on a monotonic clock: a wall
        // clock stepped back or forward must not expire or keep anything.
        let mono: Clock = {
            let t0 = Instant::now();
            Arc::new(move || t0.elapsed().as_millis() as u64)
        };
        // Coordinators take a participant's questions (TxnStatus, Wounded)
        // on their client port.
        let coordinators = pact_client::Client::new(
            &config,
            pact_client::ClientOptions {
                tls,
                resolver: Some(resolver(host)),
                ..pact_client::ClientOptions::default()
            },
        );
        let metrics = Arc::new(
            crate::metrics::Metrics::new().map_err(|e| Error::Fatal(format!("metrics: {e}")))?,
        );
        // What an operator added or removed at run time overrides the
        // config (a node's records live on its own disk).
        let plan = host
            .hosting_plan(config.shards_of_node(id).into_iter().map(|s| s.0), |g| {
                config.shard(ShardId(g)).is_some() || is_split_child(ShardId(g))
            })
            .await
            .map_err(|e| Error::Fatal(format!("storage: {e}")))?;
        let config = Arc::new(config);
        let split_ctx = crate::split::Ctx {
            host: host.clone(),
            me: id,
            config: config.clone(),
            client: coordinators.clone(),
        };
        let mut shards = BTreeMap::new();
        for (shard, joined) in plan {
            let shard = ShardId(shard);
            let joined = joined.map(|v| v.into_iter().map(NodeId).collect());
            let s = start_shard(&config, id, shard, joined, &tuning, host).await?;
            spawn_owner(s.clone(), mono.clone(), split_ctx.clone());
            shards.insert(shard, s);
        }
        Ok(Node {
            id,
            map: config.shard_map(),
            config,
            shards: std::sync::RwLock::new(shards),
            hosting: tokio::sync::Mutex::new(()),
            host: host.clone(),
            tuning,
            router: host.router.clone(),
            hlc: Hlc::new(clock),
            mono,
            coordinators,
            metrics,
            admission: pact_raft::admission::Gate::new(
                IN_FLIGHT_LIMIT,
                config_limit(config_in_flight),
            ),
            max_waiters_per_key,
            decision_hold_us: std::sync::atomic::AtomicU64::new(
                if pact_common::faults::enabled("decision-hold-long") {
                    60_000_000
                } else {
                    u64::try_from(DECISION_HOLD.as_micros()).unwrap_or(u64::MAX)
                },
            ),
            split_ctx,
        })
    }

    /// Hold decisions for `hold` instead of [`DECISION_HOLD`].
    #[cfg(test)]
    pub(crate) fn set_decision_hold(&self, hold: Duration) {
        let us = u64::try_from(hold.as_micros()).unwrap_or(u64::MAX);
        self.decision_hold_us
            .store(us, std::sync::atomic::Ordering::Relaxed);
    }

    /// A place for one request under the node's in-flight limit, held
    /// until the request ends; OVERLOADED when every place is taken.
    /// Taken before anything else, so a refused request leaves nothing
    /// behind (no lock, no transaction registered, no proposal).
    pub fn admit(&self) -> Result<pact_raft::admission::Ticket, Error> {
        self.admission.try_enter().ok_or_else(|| {
            Error::Overloaded(format!(
                "node {} has {} requests in flight (limits.max_in_flight_requests); retry later",
                self.id,
                self.admission.max()
            ))
        })
    }

    /// Requests holding a place under the in-flight limit now.
    pub fn in_flight(&self) -> usize {
        self.admission.in_use()
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The replicas of the shards hosted now, in shard order.
    pub fn replicas(&self) -> Vec<Replica> {
        self.all_shards()
            .into_iter()
            .map(|(_, s)| s.replica.clone())
            .collect()
    }

    /// The shards hosted now, in shard order.
    fn all_shards(&self) -> Vec<(ShardId, Arc<Shard>)> {
        self.shards
            .read()
            .map(|m| m.iter().map(|(k, v)| (*k, v.clone())).collect())
            .unwrap_or_default()
    }

    /// Start this node's replica of `shard`, an existing shard of the
    /// config whose voters are `voters`, so its leader can add it (see
    /// `pact_raft::membership`). Idempotent.
    pub async fn host_shard(
        &self,
        shard: ShardId,
        voters: Vec<NodeId>,
        create: bool,
    ) -> Result<(), Error> {
        if self.config.shard(shard).is_none() && !is_split_child(shard) {
            return Err(Error::UnknownShard(shard.0));
        }
        if let Some(n) = voters
            .iter()
            .find(|n| !self.host.knows_node(&self.config, n.0))
        {
            return Err(Error::InvalidInput(format!(
                "hosting shard {shard}: voter {n} is not a member of the cluster"
            )));
        }
        if self.config.shard(shard).is_none() && self.hosted(shard).is_err() {
            self.known_split_child(shard, create).await?;
        }
        let _one = self.hosting.lock().await;
        // Under the lock: the directory may learn of the retirement while
        // this waits (the drop loop holds the lock), and a retired replica
        // not dropped yet is not "hosted already".
        if self.retired(shard).is_some() {
            return Err(Error::InvalidInput(format!(
                "shard {shard} was retired (merged, its group gone): it is hosted nowhere again"
            )));
        }
        if self.hosted(shard).is_ok() {
            return Ok(());
        }
        let s = start_shard(
            &self.config,
            self.id,
            shard,
            Some(voters),
            &self.tuning,
            &self.host,
        )
        .await?;
        spawn_owner(s.clone(), self.mono.clone(), self.split_ctx.clone());
        if let Ok(mut m) = self.shards.write() {
            m.insert(shard, s);
        }
        tracing::info!(%shard, "hosting a new replica of the shard");
        Ok(())
    }

    /// A split's new shard may be hosted here only if some split makes
    /// it: an id in the split range is otherwise anyone's guess, and an
    /// empty replica group started under it (its first voters all empty)
    /// would stand in the way of the split that one day names that id.
    /// Being created (`create`), it must be the next split's new shard of
    /// a shard this node hosts (its id is a function of that shard's id
    /// and descriptor version, and every voter hosts it before the split
    /// is recorded), or the one the split recorded here names; this
    /// replica may lag its leader by a split, so that is waited for, a
    /// few seconds. Otherwise (a replica added to a shard that exists)
    /// the metadata table or a split recorded here must know it.
    async fn known_split_child(&self, shard: ShardId, create: bool) -> Result<(), Error> {
        let until = tokio::time::Instant::now() + SPLIT_RECORD_WAIT;
        loop {
            if !create
                && self
                    .host
                    .directory()
                    .shards()
                    .shards
                    .iter()
                    .any(|r| r.descriptor.shard == shard)
            {
                return Ok(());
            }
            let local: Vec<Arc<Shard>> = self
                .shards
                .read()
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default();
            for s in local {
                if create {
                    if let Some(d) = crate::split::local_descriptor(&s.replica).await? {
                        if pact_common::split_child_id(d.shard, d.version) == shard {
                            return Ok(());
                        }
                    }
                }
                if let Some(split) = crate::split::local_split(&s.replica).await? {
                    if split.child.shard == shard {
                        return Ok(());
                    }
                }
                if !create
                    && crate::split::local_successors(&s.replica)
                        .await?
                        .contains(&shard)
                {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= until {
                return Err(if create {
                    Error::InvalidInput(format!(
                        "shard {shard} is not the new shard of a split of a shard this node \
                         hosts: only a split creates a shard with an id in the split range"
                    ))
                } else {
                    // The table learns a new shard a few seconds after it
                    // serves (and not while the metadata group is down).
                    Error::Unavailable(format!(
                        "shard {shard} is neither in the metadata table nor split off a shard \
                         this node hosts (if a split made it just now, the table may not list \
                         it yet: ask again shortly)"
                    ))
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stop this node's replica of `shard` for good and delete its data;
    /// the shard must no longer count this node as a member (the admin
    /// service checks). Idempotent.
    pub async fn drop_shard(&self, shard: ShardId) -> Result<(), Error> {
        let _one = self.hosting.lock().await;
        if let Ok(s) = self.shard(shard) {
            s.replica
                .confirm_dropped(&self.host, pact_raft::DROP_CONFIRM_WITHIN)
                .await
                .map_err(|why| {
                    Error::Unavailable(format!(
                        "this node's replica of shard {shard} is not dropped: {why}; remove it \
                         from the group first, then ask again"
                    ))
                })?;
        }
        self.drop_hosted(shard).await
    }

    /// [`Node::drop_shard`] on a leader's word that the group removed
    /// this node's replica while the node was away (`r`), once the
    /// replica confirms it ([`Replica::confirm_removed`]), under the same
    /// lock as hosting: nothing is hosted afresh between the check and
    /// the drop. `Ok(Err(why))` if it was not dropped.
    pub async fn drop_removed_shard(
        &self,
        shard: ShardId,
        r: &pact_raft::Removal,
    ) -> Result<Result<(), String>, Error> {
        let _one = self.hosting.lock().await;
        let Ok(s) = self.shard(shard) else {
            return Ok(Err("not hosted here".into()));
        };
        if let Err(why) = s.replica.confirm_removed(r, &self.host).await {
            return Ok(Err(why));
        }
        self.drop_hosted(shard).await.map(Ok)
    }

    /// Drop `shard`'s replica here; the caller holds `hosting`.
    async fn drop_hosted(&self, shard: ShardId) -> Result<(), Error> {
        let s = match self.shards.write() {
            Ok(mut m) => m.remove(&shard),
            Err(_) => None,
        };
        let Some(s) = s else {
            return Ok(());
        };
        if let Err(e) = s.replica.remove_here(&self.host).await {
            // Not recorded as dropped: it still runs, so it stays hosted.
            if let Ok(mut m) = self.shards.write() {
                m.insert(shard, s);
            }
            return Err(e.into());
        }
        // Whatever waited on its locks learns that they are gone.
        s.shared.release_with(TxnManager::step_down);
        tracing::info!(%shard, "dropped this node's replica of the shard");
        Ok(())
    }

    /// Bring the gauges read at a scrape up to date (lock tables, open
    /// transactions).
    pub fn refresh_metrics(&self) {
        self.metrics.lock_table.reset();
        self.metrics.open_txns.reset();
        for (id, s) in self.all_shards() {
            let Some((keys, ranges, txns)) = s.shared.mgr.lock().ok().map(|m| m.sizes()) else {
                continue;
            };
            let shard = id.0.to_string();
            let m = &self.metrics;
            m.lock_table
                .with_label_values(&[shard.as_str(), "key"])
                .set(keys as i64);
            m.lock_table
                .with_label_values(&[shard.as_str(), "range"])
                .set(ranges as i64);
            m.open_txns
                .with_label_values(&[shard.as_str()])
                .set(txns as i64);
        }
    }

    fn shard(&self, shard: ShardId) -> Result<Arc<Shard>, Error> {
        if let Some(r) = self.retired(shard) {
            return Err(Error::WrongShard {
                message: format!(
                    "shard {shard} merged into shard(s) {} and was retired: it owns nothing",
                    r.successors
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                version: r.version,
            });
        }
        self.hosted(shard)
    }

    /// This node's replica of `shard`, retired or not.
    fn hosted(&self, shard: ShardId) -> Result<Arc<Shard>, Error> {
        if self.config.shard(shard).is_none() && !is_split_child(shard) {
            return Err(Error::UnknownShard(shard.0));
        }
        // A shard that exists but is not hosted here: the caller asked the
        // wrong node; it should try the shard's replicas.
        self.shards
            .read()
            .ok()
            .and_then(|m| m.get(&shard).cloned())
            .ok_or(Error::NotLeader { hint: None })
    }

    /// Whether the cluster has coordinator group `group`.
    fn has_group(&self, group: u64) -> bool {
        self.config.coordinators.iter().any(|g| g.group == group)
    }

    /// A transaction must belong to a configured coordinator group: only
    /// that group can decide it, confirm its wounds, or answer for it, so
    /// one from elsewhere could hold its locks until it expired.
    fn check_group(&self, txn: TxnId) -> Result<(), Error> {
        if self.has_group(txn.group) {
            return Ok(());
        }
        Err(Error::InvalidInput(format!(
            "transaction {txn} names coordinator group {}, which the cluster does not have",
            txn.group
        )))
    }

    /// A record horizon or fence floor (`what`) for `group`: it must name
    /// a coordinator group of the cluster (else INVALID_INPUT), and lie no
    /// further ahead of this node's clock than clocks may differ (else
    /// UNAVAILABLE, until they agree). Both only grow: a forged or corrupt
    /// stamp far ahead would refuse every later transaction of the group
    /// here, for good.
    fn check_stamp(&self, group: u64, below: Timestamp, what: &str) -> Result<(), Error> {
        if !self.has_group(group) {
            return Err(Error::InvalidInput(format!(
                "coordinator group {group} is not one the cluster has; no {what} set"
            )));
        }
        let now = self.hlc.now().millis();
        // Retryable: a coordinator whose clock ran ahead (or this node's
        // behind) is told to wait until the clocks agree again.
        if below.millis() > now.saturating_add(STAMP_AHEAD_MS) {
            return Err(Error::Unavailable(format!(
                "{what} {below} for group {group} is more than {} s ahead of this node's clock \
                 ({now} ms); refused",
                STAMP_AHEAD_MS / 1000
            )));
        }
        Ok(())
    }

    /// The shard's descriptor, checked against the version the request
    /// was routed by (0: not given, not checked). Call after `ready`: a
    /// ready leader has loaded it.
    fn routed(&self, s: &Shard, shard: ShardId, version: u64) -> Result<Arc<Descriptor>, Error> {
        let d = s
            .shared
            .descriptor
            .read()
            .ok()
            .and_then(|d| d.clone())
            .ok_or_else(|| Error::Unavailable("the shard's descriptor is not loaded yet".into()))?;
        if version != 0 && version != d.version {
            return Err(Error::WrongShard {
                message: format!(
                    "shard {shard} is at version {}, the request was routed by version {version}",
                    d.version
                ),
                version: d.version,
            });
        }
        Ok(d)
    }

    /// Refuse with WRONG_SHARD unless the shard, at the version the
    /// request was routed by, owns every one of `keys`.
    fn check_keys<'k>(
        &self,
        s: &Shard,
        shard: ShardId,
        version: u64,
        keys: impl IntoIterator<Item = &'k [u8]>,
    ) -> Result<u64, Error> {
        let d = self.routed(s, shard, version)?;
        let counting = self.config.raft.auto_split_ops_per_sec > 0;
        for key in keys {
            if counting {
                if let Ok(mut l) = s.load.lock() {
                    l.note(key);
                }
            }
            if !d.span.contains(key) {
                let owner = self.map.shard_for_key(key);
                return Err(Error::WrongShard {
                    message: format!(
                        "shard {shard} (version {}) does not own key {:?} (the config would \
                         give it to shard {owner})",
                        d.version,
                        String::from_utf8_lossy(key)
                    ),
                    version: d.version,
                });
            }
        }
        Ok(d.version)
    }

    /// Refuse with WRONG_SHARD unless the shard owns all of `[start,
    /// end)` that could be its (a range shard: the whole interval).
    fn check_range(
        &self,
        s: &Shard,
        shard: ShardId,
        version: u64,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> Result<u64, Error> {
        let d = self.routed(s, shard, version)?;
        if !d.span.covers(start, end) {
            return Err(Error::WrongShard {
                message: format!(
                    "shard {shard} (version {}) does not own all of the scanned range",
                    d.version
                ),
                version: d.version,
            });
        }
        Ok(d.version)
    }

    /// After a read: the shard still owns what it owned when the request
    /// was checked (`checked`, that descriptor's version). A read that
    /// straddled a split (its lock granted before the freeze, its read
    /// after the new shard took writes) is refused, retryably, rather
    /// than answered from the old copy.
    fn still_owned(&self, s: &Shard, shard: ShardId, checked: u64) -> Result<(), Error> {
        let now = descriptor_version(s);
        if now != checked {
            return Err(Error::WrongShard {
                message: format!(
                    "shard {shard} split while the read ran (version {checked}, now {now}); \
                     route again"
                ),
                version: now,
            });
        }
        Ok(())
    }

    /// The shard's descriptor, the shards split off it, and its voters,
    /// from its leader.
    pub async fn describe(&self, shard: ShardId) -> Result<Described, Error> {
        if let Some(r) = self.retired(shard) {
            return Ok(self.described_retired(&r));
        }
        let s = &self.hosted(shard)?;
        self.ready(s)?;
        // Still the leader: a deposed one may have missed a change.
        s.replica.read_barrier().await?;
        let d = self.routed(s, shard, 0)?;
        let successors = crate::split::local_successors(&s.replica).await?;
        let (voters, voters_at) = s.replica.committed_voters();
        Ok(Described {
            descriptor: d.as_ref().clone(),
            successors,
            voters: voters.into_iter().map(NodeId).collect(),
            voters_at,
        })
    }

    /// The metadata group's record of `shard` if it retired the shard
    /// (as this node's directory last read it).
    fn retired(&self, shard: ShardId) -> Option<pact_common::RetiredShard> {
        self.host.directory().retired(shard)
    }

    /// What `Describe` answers for a retired shard, in its group's place:
    /// an empty span at its last version, its successors, and as voters
    /// its last voters still in the cluster, or if none is, every node
    /// (any node answers for it).
    fn described_retired(&self, r: &pact_common::RetiredShard) -> Described {
        let span = match self.config.partitioning {
            pact_common::PartitionScheme::Range => pact_common::Span::Range {
                start: Vec::new(),
                end: Some(Vec::new()),
            },
            pact_common::PartitionScheme::Hash => pact_common::Span::Ring { arcs: Vec::new() },
        };
        let directory = self.host.directory();
        let live: Vec<NodeId> = directory.all().iter().map(|m| NodeId(m.id)).collect();
        let mut voters: Vec<NodeId> = r
            .voters
            .iter()
            .map(|n| NodeId(*n))
            .filter(|n| live.contains(n))
            .collect();
        if voters.is_empty() {
            voters = live;
        }
        Described {
            descriptor: Descriptor {
                shard: r.shard,
                version: r.version,
                span,
            },
            successors: r.successors.clone(),
            voters,
            voters_at: 0,
        }
    }

    /// Whether `shard`'s group may go (`txn admin shard retire`), checked
    /// at its leader after a read barrier: it owns nothing, no merge or
    /// split of it is under way, and it holds no open transaction, no
    /// prepare record and no commit outcome. From then on nothing can
    /// prepare or commit there (its span is empty for good), so every
    /// answer it could give follows from its record horizons, which the
    /// record returned carries. Refused with the reason otherwise:
    /// INVALID_INPUT for a shard that owns keys, CONFLICT for one that is
    /// not settled yet (ask again later).
    pub async fn retirable(&self, shard: ShardId) -> Result<pact_common::RetiredShard, Error> {
        if let Some(r) = self.retired(shard) {
            return Ok(r);
        }
        let s = &self.hosted(shard)?;
        self.ready(s)?;
        s.replica.read_barrier().await?;
        let d = self.routed(s, shard, 0)?;
        if !d.span.is_empty() {
            return Err(Error::InvalidInput(format!(
                "shard {shard} owns keys: only a shard merged into another can be retired \
                 (txn admin shard merge first)"
            )));
        }
        if let Some(why) = under_way(s, &self.split_ctx).await {
            return Err(Error::Conflict(format!(
                "{why}; retire it once that is done"
            )));
        }
        // Aborted ones are left out: they only wait for the idle timeout
        // to be forgotten, and can never prepare.
        let open = s.shared.mgr.lock().map(|m| m.live()).unwrap_or(usize::MAX);
        if open > 0 {
            return Err(Error::Conflict(format!(
                "shard {shard} still has {open} open transaction(s); retire it once they end"
            )));
        }
        let prepared = s.replica.scan_prefix_local(&[PREPARED_PREFIX]).await?;
        if !prepared.is_empty() {
            return Err(Error::Conflict(format!(
                "shard {shard} holds {} prepare record(s) awaiting their decisions; retire it \
                 once they are decided",
                prepared.len()
            )));
        }
        let outcomes = s
            .replica
            .scan_prefix_local(&[crate::kv::OUTCOME_PREFIX])
            .await?;
        let commits = outcomes
            .iter()
            .filter(|(_, v)| v.first() == Some(&1))
            .count();
        if commits > 0 {
            return Err(Error::Conflict(format!(
                "shard {shard} still holds {commits} commit outcome record(s); they go once \
                 their coordinators' record horizon passes them (transactions.\
                 record_retention_s after they ended): retire it then"
            )));
        }
        let mut horizons = Vec::new();
        let mut groups: Vec<u64> = self.config.coordinators.iter().map(|g| g.group).collect();
        groups.sort_unstable();
        groups.dedup();
        for g in groups {
            let h = self
                .stored(s, &crate::kv::horizon_key(g), "record horizon")
                .await?;
            if h.0 > 0 {
                horizons.push((g, h.0));
            }
        }
        let successors = crate::split::local_successors(&s.replica).await?;
        let (voters, _) = s.replica.committed_voters();
        Ok(pact_common::RetiredShard {
            shard,
            version: d.version,
            successors,
            voters,
            horizons,
        })
    }

    /// Drop this node's replicas of shards the metadata group retired
    /// (each a whole-group drop: every replica drops its own). Returns
    /// the shards dropped.
    pub async fn drop_retired(&self) -> Vec<ShardId> {
        let mut dropped = Vec::new();
        for (shard, _) in self.all_shards() {
            if self.retired(shard).is_none() {
                continue;
            }
            let _one = self.hosting.lock().await;
            match self.drop_hosted(shard).await {
                Ok(()) => {
                    tracing::info!(%shard, "dropped this node's replica of a retired shard");
                    dropped.push(shard);
                }
                Err(e) => {
                    tracing::warn!(%shard, error = %e, "could not drop a retired shard's replica")
                }
            }
        }
        dropped
    }

    /// `shard`'s split lock, for a change of its replicas to hold while it
    /// runs (no split or merge of it starts meanwhile); `None` if the
    /// shard is not hosted here. Refused while a split or merge holds it.
    pub async fn hold_splits(
        &self,
        shard: ShardId,
    ) -> Result<Option<tokio::sync::OwnedMutexGuard<()>>, String> {
        let Ok(s) = self.hosted(shard) else {
            return Ok(None);
        };
        // The owner's tick takes it for a moment to look for a split to
        // drive: wait that out, not a split's run.
        let lock = s.splitting.clone().lock_owned();
        match tokio::time::timeout(Duration::from_secs(1), lock).await {
            Ok(guard) => Ok(Some(guard)),
            Err(_) => Err(format!("shard {shard} is splitting or merging")),
        }
    }

    /// Why `shard` is in the middle of a split or merge here, if it is
    /// ([`under_way`]).
    pub async fn splitting(&self, shard: ShardId) -> Option<String> {
        let s = self.hosted(shard).ok()?;
        under_way(&s, &self.split_ctx).await
    }

    /// Merge `shard` (this node leads it) into `into`: `into` takes what
    /// `shard` owns, and `shard` owns nothing from then on (its group
    /// stays, answering for its transactions' records). Both must be on
    /// the same replicas, settled, and neither splitting nor absorbing; a
    /// range shard merges only with a neighbour. Runs in a task of its
    /// own, like a split. Returns the target's descriptor, also when asked
    /// again after the merge went through.
    pub async fn merge(&self, shard: ShardId, into: ShardId) -> Result<Descriptor, Error> {
        if let Some(r) = self.retired(shard) {
            // Asked again after the merge went through and the group
            // retired: the same answer as the first time, from the
            // record (the shard it merged into is its last successor).
            return self
                .merged_answer(shard, into, r.successors.last().copied(), " and retired")
                .await;
        }
        let s = self.shard(shard)?;
        self.ready(&s)?;
        s.replica.read_barrier().await?;
        let d = self.routed(&s, shard, 0)?;
        if d.span.is_empty() {
            // Asked again after it went through (a leader change made the
            // first answer an error; the next leader finished it): the
            // same answer as the first time, so a retry is harmless. The
            // merge's record names its target until the merge is done;
            // then the last successor does (`SplitCommit` puts it last).
            let merged_into = match crate::split::local_split(&s.replica).await? {
                Some(x) if x.merge.is_some() && x.child.shard == into => {
                    return Err(Error::Unavailable(format!(
                        "shard {shard} is finishing its merge into shard {into}; try again shortly"
                    )));
                }
                Some(x) if x.merge.is_some() => Some(x.child.shard),
                _ => crate::split::local_successors(&s.replica)
                    .await?
                    .last()
                    .copied(),
            };
            return self.merged_answer(shard, into, merged_into, "").await;
        }
        // As if this node's replica of the target lagged behind a merge
        // the target recorded (the fault): then neither look below sees
        // it, and only `SplitBegin`'s checks at apply remain.
        let lagging = pact_common::faults::enabled("merge-lagging-target-view");
        for g in [shard, into].into_iter().filter(|_| !lagging) {
            if let Some(why) = self.splitting(g).await {
                return Err(Error::Unavailable(format!(
                    "{why}; try again when it is done"
                )));
            }
        }
        if let Some(why) = s.replica.membership_unsettled() {
            return Err(Error::Unavailable(format!(
                "shard {shard} cannot merge now: {why}; try again shortly"
            )));
        }
        // The target's leader copies from its node's replica of this
        // shard, and this leader follows the target through its node's
        // replica of it: both groups on the same nodes.
        let target = self.shard(into).map_err(|_| {
            Error::InvalidInput(format!(
                "shard {into} has no replica on this node (shard {shard}'s leader): merge only \
                 shards on the same nodes (txn admin replica move)"
            ))
        })?;
        let voters: Vec<NodeId> = s.replica.status().voters.into_iter().map(NodeId).collect();
        let theirs: Vec<NodeId> = target
            .replica
            .status()
            .voters
            .into_iter()
            .map(NodeId)
            .collect();
        if voters != theirs || target.replica.membership_unsettled().is_some() {
            return Err(Error::InvalidInput(format!(
                "shards {shard} and {into} are not on the same nodes ({voters:?} and \
                 {theirs:?}): move replicas first (txn admin replica move)"
            )));
        }
        let Some(td) = crate::split::local_descriptor(&target.replica).await? else {
            return Err(Error::Unavailable(format!(
                "shard {into} does not serve yet; try again shortly"
            )));
        };
        let merge = crate::split::plan_merge(&d, &td, voters)?;
        Ok(self.start_split(s, merge).await?.child)
    }

    /// Run a planned split or merge of `s` (this node leads it) in a task
    /// of its own, so a caller that goes away does not stop it half way
    /// (the next leader would finish it anyway); answered once the shard
    /// that takes the part serves.
    async fn start_split(&self, s: Arc<Shard>, split: Split) -> Result<Split, Error> {
        spawn_split(s, self.split_ctx.clone(), split)?
            .await
            .map_err(|_| Error::Fatal("the split's task failed".into()))?
    }

    /// Split `shard` (this node leads it): at `at` for a range shard, at
    /// the middle of its ring share for a hash one. Runs in a task of its
    /// own, so a caller that goes away does not stop it half way (the
    /// next leader would finish it anyway). Returns what the shard keeps
    /// and the new shard.
    ///
    /// `version` (0: any) is the descriptor version the caller split. It
    /// makes a repeated request harmless: the new shard's id is a function
    /// of the parent and that version, so once the split of `version` went
    /// through, the shard names the new shard among its successors and the
    /// request is answered as the first time, without splitting again.
    pub async fn split(
        &self,
        shard: ShardId,
        at: Option<Vec<u8>>,
        version: u64,
    ) -> Result<(Descriptor, Descriptor), Error> {
        let s = self.shard(shard)?;
        self.ready(&s)?;
        s.replica.read_barrier().await?;
        let d = self.routed(&s, shard, 0)?;
        if version != 0 && version != d.version {
            return self.split_again(&s, &d, at.as_deref(), version).await;
        }
        if let Some(why) = under_way(&s, &self.split_ctx).await {
            return Err(Error::Unavailable(format!(
                "{why}; try again when it is done"
            )));
        }
        // The new shard's first voters are the shard's now: not while
        // they are changing.
        if let Some(why) = s.replica.membership_unsettled() {
            return Err(Error::Unavailable(format!(
                "shard {shard} cannot split now: {why}; try again shortly"
            )));
        }
        let voters = s.replica.status().voters.into_iter().map(NodeId).collect();
        let split = crate::split::plan(&d, at.as_deref(), voters)?;
        let done = self.start_split(s, split).await?;
        Ok((done.left, done.child))
    }

    /// [`Node::split`] asked for `version` of a shard now at `d`: the same
    /// answer as the first time if the split of `version` went through
    /// (at `at`, for a range shard), "finishing" while it goes on, and
    /// WRONG_SHARD if the shard changed otherwise.
    async fn split_again(
        &self,
        s: &Shard,
        d: &Descriptor,
        at: Option<&[u8]>,
        version: u64,
    ) -> Result<(Descriptor, Descriptor), Error> {
        let shard = d.shard;
        let child = pact_common::split_child_id(shard, version);
        let changed = || Error::WrongShard {
            message: format!(
                "shard {shard} is at version {}, not {version}, and was not split from version \
                 {version} as asked: describe it and decide again",
                d.version
            ),
            version: d.version,
        };
        // The request must fit the shard's kind, as a first request must.
        match (&d.span, at) {
            (pact_common::Span::Range { .. }, None) => {
                return Err(Error::InvalidInput(
                    "a range shard splits at a key: give one".into(),
                ))
            }
            (pact_common::Span::Ring { .. }, Some(_)) => {
                return Err(Error::InvalidInput(
                    "a hash-partitioned shard splits its ring share in half; give no key".into(),
                ))
            }
            _ => {}
        }
        if let Some(x) = crate::split::local_split(&s.replica).await? {
            // Until it committed; after that the new shard serves, and
            // only the parent's trim is left.
            if x.child.shard == child && !x.committed {
                return Err(Error::Unavailable(format!(
                    "shard {shard} is finishing its split into shard {child}; try again shortly"
                )));
            }
        }
        if !crate::split::local_successors(&s.replica)
            .await?
            .contains(&child)
        {
            return Err(changed());
        }
        let cd = self
            .successor_descriptor(shard, "split into", child)
            .await?;
        // A range split asked at another key was somebody else's.
        let starts_at = match &cd.span {
            pact_common::Span::Range { start, .. } => Some(start.as_slice()),
            pact_common::Span::Ring { .. } => None,
        };
        if at.is_some() && at != starts_at {
            return Err(changed());
        }
        Ok(((*d).clone(), cd))
    }

    /// The descriptor of `shard`'s successor, from the successor's leader
    /// (this node's replica of it may lag, or have moved away since), for
    /// answering a repeated split or merge as the first time.
    /// The answer to a merge of `shard` into `into` asked again once
    /// `shard` owns nothing, having merged into `merged_into`: the
    /// target's descriptor, as the first time, if that is `into`; else
    /// the merge is refused (`what` adds to how the shard ended).
    async fn merged_answer(
        &self,
        shard: ShardId,
        into: ShardId,
        merged_into: Option<ShardId>,
        what: &str,
    ) -> Result<Descriptor, Error> {
        if merged_into == Some(into) {
            return self
                .successor_descriptor(shard, "was merged into", into)
                .await;
        }
        Err(Error::InvalidInput(format!(
            "shard {shard} owns nothing: it was merged already{}{what}",
            merged_into
                .map(|l| format!(" (into shard {l})"))
                .unwrap_or_default()
        )))
    }

    async fn successor_descriptor(
        &self,
        shard: ShardId,
        how: &str,
        successor: ShardId,
    ) -> Result<pact_common::Descriptor, Error> {
        self.split_ctx
            .client
            .describe_shard(successor)
            .await
            .map_err(|e| {
                Error::Unavailable(format!(
                    "shard {shard} {how} shard {successor}, which did not answer ({e}); try \
                     again shortly"
                ))
            })
    }

    fn implicit_txn(&self) -> TxnId {
        TxnId {
            ts: self.hlc.now(),
            node: self.id.0,
            group: IMPLICIT_GROUP,
        }
    }

    fn now(&self) -> u64 {
        (self.mono)()
    }

    /// Refuse requests unless this replica leads the shard and its
    /// transaction manager has been rebuilt for this term.
    fn ready(&self, s: &Shard) -> Result<(), Error> {
        if let Some(f) = s.replica.fatal() {
            // Refused before anything was tried: another replica may serve it.
            return Err(Error::Unavailable(format!("replica stopped: {f}")));
        }
        let r = s.replica.role();
        let ready = s.shared.mgr.lock().map(|m| m.term()).unwrap_or(None);
        match (r.leader, ready) {
            (true, Some(t)) if t == r.term => Ok(()),
            (true, _) => Err(Error::Unavailable(
                "leader is still recovering its transactions".into(),
            )),
            _ => Err(Error::NotLeader {
                hint: r.known_leader.filter(|(l, _)| *l != self.id.0),
            }),
        }
    }

    /// Take a lock for `txn` (of age `prio`), waiting (bounded by
    /// [`LOCK_WAIT`]) while older or preparing transactions hold it.
    async fn acquire(
        &self,
        s: &Shard,
        txn: TxnId,
        first: bool,
        prio: Timestamp,
        target: Target,
    ) -> Result<(), Error> {
        self.acquire_by(s, txn, first, prio, target, Instant::now() + LOCK_WAIT)
            .await
    }

    /// [`Node::acquire`], waiting until `deadline` at most (a batch of
    /// writes shares one lock wait).
    async fn acquire_by(
        &self,
        s: &Shard,
        txn: TxnId,
        first: bool,
        prio: Timestamp,
        target: Target,
        deadline: Instant,
    ) -> Result<(), Error> {
        let started = Instant::now();
        let mut waited = false;
        // Held while this request waits for a key's lock.
        let mut place: Option<Waiting<'_>> = None;
        let r = loop {
            let notified = s.shared.released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (step, freed, seen) = match s.shared.mgr.lock() {
                Ok(mut m) => {
                    let before = m.lock_releases();
                    let step = m.lock_prio(txn, first, prio, &target, self.now());
                    let after = m.lock_releases();
                    (step, after != before, after)
                }
                Err(_) => return Err(Error::Fatal("transaction manager lock poisoned".into())),
            };
            // The step may have wounded plain operations and freed their
            // locks, whatever it answers; a step that freed nothing wakes
            // no one.
            if freed {
                s.shared.wake();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match step {
                Step::Granted => break Ok(()),
                Step::NotLeader => break Err(Error::NotLeader { hint: None }),
                Step::Abort(r) => break Err(Error::Aborted(r)),
                Step::Wound(victims) => {
                    if left.is_zero() {
                        let holders: Vec<TxnId> = victims.iter().map(|(v, _)| *v).collect();
                        break Err(self.lock_timeout(s, txn, &target, &holders, started));
                    }
                    // Their locks go once their coordinators know: only
                    // then can a write that takes them become visible to
                    // any later read of theirs.
                    let within = left.min(Duration::from_secs(1));
                    let calls = victims.into_iter().map(|(v, reason)| async move {
                        let freed =
                            wound_confirmed_by(&s.shared, &self.coordinators, v, &reason, within)
                                .await;
                        (v, freed)
                    });
                    let mut confirmed_freed = false;
                    for (v, freed) in futures::future::join_all(calls).await {
                        match freed {
                            Some(freed) => confirmed_freed |= freed,
                            None => {
                                tracing::warn!(shard = s.replica.group(), wounded = %v, "coordinator not told of a wound yet; its locks stay");
                            }
                        }
                    }
                    if confirmed_freed {
                        s.shared.wake();
                    } else {
                        // Unreachable coordinator: ask again shortly.
                        let pause = left.min(Duration::from_millis(50));
                        let _ = tokio::time::timeout(pause, notified).await;
                    }
                }
                Step::Wait(holders) => {
                    if !waited {
                        waited = true;
                        self.metrics.lock_waits.inc();
                        if let Target::Key(key, _) = &target {
                            match self.queue_for(s, key) {
                                Some(w) => place = Some(w),
                                None => break Err(self.too_many_waiters(s, txn, key)),
                            }
                        }
                    }
                    let woken = if left.is_zero() {
                        false
                    } else if holders.is_empty() {
                        tokio::time::timeout(left, notified).await.is_ok()
                    } else {
                        s.shared.await_release(txn, &holders, seen, left).await
                    };
                    if !woken {
                        break Err(self.lock_timeout(s, txn, &target, &holders, started));
                    }
                    self.metrics.lock_wakeups.inc();
                }
            }
        };
        drop(place);
        if waited {
            self.metrics
                .lock_wait_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        if let Err(Error::Aborted(a)) = &r {
            self.metrics.abort(a.kind);
        }
        r
    }

    /// A place in `key`'s queue of lock waiters, or None when
    /// `limits.max_waiters_per_key` requests already wait for it.
    fn queue_for<'a>(&self, s: &'a Shard, key: &[u8]) -> Option<Waiting<'a>> {
        let mut m = s.waiting.lock().ok()?;
        let n = m.entry(key.to_vec()).or_insert(0);
        if *n >= self.max_waiters_per_key {
            return None;
        }
        *n += 1;
        Some(Waiting {
            map: &s.waiting,
            key: key.to_vec(),
        })
    }

    /// Too many requests wait for `key` already: this one does not join
    /// them. What `txn` locked here goes (nothing of it was proposed); a
    /// plain write is refused as OVERLOADED (retry later), a transaction
    /// aborts as if its lock wait had run out.
    fn too_many_waiters(&self, s: &Shard, txn: TxnId, key: &[u8]) -> Error {
        self.release(s, txn);
        let why = format!(
            "{} requests already wait for the lock on key {:?} (limits.max_waiters_per_key)",
            self.max_waiters_per_key,
            String::from_utf8_lossy(key)
        );
        if txn.group == IMPLICIT_GROUP {
            Error::Overloaded(format!("{why}; retry later"))
        } else {
            Error::Aborted(Abort::new(AbortKind::LockTimeout, why))
        }
    }

    /// A lock wait ran out: the transaction aborts here, and the reason
    /// names the key and who held it.
    fn lock_timeout(
        &self,
        s: &Shard,
        txn: TxnId,
        target: &Target,
        holders: &[TxnId],
        started: Instant,
    ) -> Error {
        self.release(s, txn);
        let held = match holders {
            [] => String::new(),
            [one] => format!(" (held by txn {one})"),
            many => format!(
                " (held by txns {})",
                many.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        Error::Aborted(Abort::new(
            AbortKind::LockTimeout,
            format!(
                "{LOCK_TIMEOUT} on {} timed out after {:.1}s{held}",
                target.describe(),
                started.elapsed().as_secs_f64()
            ),
        ))
    }

    /// `txn` is aborted on `s`: its locks go, and a request of it that
    /// arrives late cannot register it again. Unless it is preparing or
    /// prepared here: then its locks are its prepare's, kept until the
    /// decision, whatever a request of its own that failed beside the
    /// prepare (a read whose lock wait ran out, a duplicate prepare) says.
    /// Looked at and released in one step, so no prepare slips between.
    fn release(&self, s: &Shard, txn: TxnId) {
        s.shared.release_with(|m| m.end_open(txn));
    }

    /// This call's own prepare of `txn` (it made it preparing) failed
    /// before anything was proposed: it aborts here, locks and all.
    fn abandon_prepare(&self, s: &Shard, txn: TxnId) {
        s.shared.release_with(|m| m.end_aborted(txn));
    }

    async fn read_key(&self, s: &Shard, txn: TxnId, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        // Its own pending write first, then a decided commit not yet
        // applied (its locks went at the decision), then the store.
        let pending = s
            .shared
            .mgr
            .lock()
            .ok()
            .and_then(|m| m.own_write(txn, key).or_else(|| m.committed_write(key)));
        if let Some(v) = pending {
            return Ok(v);
        }
        Ok(s.replica.get_local(&data_key(key)).await?)
    }

    async fn read_range(
        &self,
        s: &Shard,
        txn: TxnId,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<(Vec<u8>, Vec<u8>)>, bool), Error> {
        let to = match end {
            Some(e) => data_key(e),
            None => data_end(),
        };
        // Decided commits not yet applied, then own pending writes,
        // overlay the stored pairs; fetch enough stored pairs that deletes
        // among them cannot leave the page short.
        let own = s
            .shared
            .mgr
            .lock()
            .map(|m| {
                let mut w = m.committed_in(start, end);
                w.extend(m.own_writes_in(txn, start, end));
                w
            })
            .unwrap_or_default();
        // Keys a split moved away stay in the store until trimmed: they
        // are not the shard's any more (a ring shard's scan spans them).
        let owned = s.shared.descriptor.read().ok().and_then(|d| d.clone());
        let want = limit + 1 + own.len();
        let mut stored = Vec::new();
        let mut from = data_key(start);
        // Read in slices, and stop once past what one answer carries: a
        // thousand large values are never all held at once. `cut`: the
        // last stored key read then (nothing past it is known).
        let mut bytes = 0usize;
        let mut cut: Option<Vec<u8>> = None;
        loop {
            let n = (want - stored.len()).min(SCAN_SLICE);
            let (page, full) = crate::split::next_page(&s.replica, &mut from, &to, n).await?;
            for (k, v) in page {
                if owned
                    .as_ref()
                    .is_none_or(|d| k.get(1..).is_some_and(|u| d.span.contains(u)))
                {
                    bytes = bytes.saturating_add(k.len() + v.len());
                    stored.push((k, v));
                }
            }
            if !full || stored.len() >= want {
                break;
            }
            // Only once a pair is sure to survive the overlay (it deletes
            // at most `own.len()` of them): a page says "more" only with
            // something in it, so the next one starts further on.
            if bytes > pact_common::MAX_BATCH_BYTES && stored.len() > own.len() {
                cut = stored.last().map(|(k, _)| k[1..].to_vec());
                break;
            }
        }
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> = stored
            .into_iter()
            .map(|(k, v)| (k[1..].to_vec(), Some(v)))
            .collect();
        for (k, v) in own {
            merged.insert(k, v);
        }
        if let Some(c) = &cut {
            merged.retain(|k, _| k <= c);
        }
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = merged
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect();
        // At most `limit` pairs, and no more than one answer carries (a
        // thousand large values would not fit): the same cut as a page
        // merged from several shards, this shard's page being the one.
        Ok(pact_common::merge_scan_pages(
            vec![(pairs, cut.is_some())],
            limit,
            pact_common::MAX_BATCH_BYTES,
        ))
    }

    fn scan_limit(limit: u32) -> Result<usize, Error> {
        if limit > MAX_SCAN_LIMIT {
            return Err(Error::InvalidInput(format!(
                "scan limit {limit} is over the maximum {MAX_SCAN_LIMIT}"
            )));
        }
        Ok(if limit == 0 {
            DEFAULT_SCAN_LIMIT
        } else {
            limit
        } as usize)
    }

    // ---- plain (implicit-transaction) operations ----

    /// Linearizable read of one key.
    pub async fn get(
        &self,
        shard: ShardId,
        version: u64,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, Error> {
        validate_key(key)?;
        let s = &self.shard(shard)?;
        if pact_common::faults::enabled("stale-reads") {
            // Deliberate bug (fault injection): any replica answers from
            // whatever it has applied, leader or not.
            return Ok(s.replica.get_local(&data_key(key)).await?);
        }
        self.ready(s)?;
        let checked = self.check_keys(s, shard, version, [key])?;
        let txn = self.implicit_txn();
        let _release = Release::new(s, txn);
        let term = self.lock_term(s)?;
        plain(
            self.acquire(s, txn, true, txn.ts, Target::key(key, Mode::Shared))
                .await,
        )?;
        let v = self.read_key(s, txn, key).await?;
        self.confirm(s, term).await?;
        // A plain read has no coordinator to stop it if a split wounded
        // it mid-read: it checks for itself.
        self.still_owned(s, shard, checked)?;
        Ok(v)
    }

    fn lock_term(&self, s: &Shard) -> Result<u64, Error> {
        s.shared
            .mgr
            .lock()
            .ok()
            .and_then(|m| m.term())
            .ok_or(Error::NotLeader { hint: None })
    }

    /// Confirm, after a read, that this replica still leads the term the
    /// read's locks were taken in: a deposed leader cannot pass the quorum
    /// check, and one re-elected meanwhile may have missed writes of the
    /// term in between.
    async fn confirm(&self, s: &Shard, term: u64) -> Result<(), Error> {
        s.replica.read_barrier().await?;
        if s.replica.role().term != term {
            return Err(Error::Unavailable(
                "leadership changed during the read; retry".into(),
            ));
        }
        Ok(())
    }

    /// A scan's bounds, each at most a key and a byte long.
    fn scan_bounds(start: &[u8], end: Option<&[u8]>) -> Result<(), Error> {
        for b in std::iter::once(start).chain(end) {
            pact_common::validate_bound(b).map_err(|e| Error::InvalidInput(e.to_string()))?;
        }
        Ok(())
    }

    /// Linearizable read of the shard's keys in `[start, end)`.
    pub async fn scan(
        &self,
        shard: ShardId,
        version: u64,
        start: &[u8],
        end: Option<&[u8]>,
        limit: u32,
    ) -> Result<(Vec<(Vec<u8>, Vec<u8>)>, bool), Error> {
        let limit = Self::scan_limit(limit)?;
        Self::scan_bounds(start, end)?;
        let s = &self.shard(shard)?;
        let mut attempt = 1;
        loop {
            match self.scan_once(s, shard, version, start, end, limit).await {
                // As a plain write: the scan's transaction is ours, and
                // one wounded mid-read is read again, not reported.
                Err(Error::Aborted(r))
                    if r.kind == AbortKind::Wounded && attempt < WRITE_ATTEMPTS =>
                {
                    attempt += 1;
                }
                r => return plain(r),
            }
        }
    }

    async fn scan_once(
        &self,
        s: &Arc<Shard>,
        shard: ShardId,
        version: u64,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<(Vec<u8>, Vec<u8>)>, bool), Error> {
        self.ready(s)?;
        let checked = self.check_range(s, shard, version, start, end)?;
        if end.is_some_and(|e| e <= start) {
            return Ok((Vec::new(), false));
        }
        let txn = self.implicit_txn();
        let _release = Release::new(s, txn);
        let term = self.lock_term(s)?;
        let range = Range {
            start: start.to_vec(),
            end: end.map(<[u8]>::to_vec),
        };
        plain(
            self.acquire(s, txn, true, txn.ts, Target::Range(range))
                .await,
        )?;
        if pact_common::faults::enabled("plain-scan-pause") {
            tracing::info!(%shard, "plain-scan-pause: holding the scan's range lock for 2 s");
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let out = self.read_range(s, txn, start, end, limit).await?;
        // Wounded while it read (an older transaction took its range
        // lock at once, as a plain operation's are): what it read may mix
        // values from before and after that transaction's writes (the
        // decided-but-unapplied overlay is read before the store), so it
        // is not handed out.
        // (A split's wound, `Moved`, changes no value: what was read
        // stands.)
        let wounded = s.shared.mgr.lock().ok().and_then(|m| match m.status(txn) {
            Some(crate::txn::Status::Aborted(r)) if r.kind == AbortKind::Wounded => Some(r.clone()),
            _ => None,
        });
        if let Some(r) = wounded {
            return Err(Error::Aborted(r));
        }
        self.confirm(s, term).await?;
        self.still_owned(s, shard, checked)?;
        Ok(out)
    }

    /// Atomically apply a batch of puts and deletes on one shard.
    pub async fn write(
        &self,
        shard: ShardId,
        version: u64,
        ops: Vec<Mutation>,
    ) -> Result<u64, Error> {
        let s = &self.shard(shard)?;
        validate_writes(&ops)?;
        let mut attempt = 1;
        loop {
            match self.write_once(s, shard, version, &ops).await {
                // The batch's own transaction is ours, not the caller's:
                // when an older transaction takes a key from it, nothing
                // was applied, so start it again rather than hand the
                // caller an abort of a transaction it never opened.
                Err(Error::Aborted(r))
                    if r.kind == AbortKind::Wounded && attempt < WRITE_ATTEMPTS =>
                {
                    attempt += 1;
                }
                r => return plain(r),
            }
        }
    }

    async fn write_once(
        &self,
        s: &Arc<Shard>,
        shard: ShardId,
        version: u64,
        ops: &[Mutation],
    ) -> Result<u64, Error> {
        self.ready(s)?;
        self.check_keys(s, shard, version, ops.iter().map(|(k, _)| k.as_slice()))?;
        let txn = self.implicit_txn();
        let release = Release::new(s, txn);
        self.lock_writes(s, txn, true, txn.ts, ops).await?;
        self.commit_owned(s, txn, release).await
    }

    /// Lock every key of `ops`, then buffer them all at once: a batch is
    /// all or nothing. A batch that would take the transaction past its
    /// size limit is refused before it locks anything.
    async fn lock_writes(
        &self,
        s: &Shard,
        txn: TxnId,
        first: bool,
        prio: Timestamp,
        ops: &[Mutation],
    ) -> Result<(), Error> {
        let too_large = |n: usize| {
            Error::InvalidInput(format!(
                "transaction over the size limit: {n} bytes of writes on one shard (max {})",
                crate::txn::MAX_TXN_BYTES
            ))
        };
        let would_be = s
            .shared
            .mgr
            .lock()
            .map(|m| m.bytes_after(txn, ops))
            .map_err(|_| Error::Fatal("transaction manager lock poisoned".into()))?;
        if would_be > crate::txn::MAX_TXN_BYTES {
            return Err(too_large(would_be));
        }
        let deadline = Instant::now() + LOCK_WAIT;
        for (i, (k, _)) in ops.iter().enumerate() {
            let target = Target::key(k, Mode::Exclusive);
            self.acquire_by(s, txn, first && i == 0, prio, target, deadline)
                .await?;
        }
        let buffered = s
            .shared
            .mgr
            .lock()
            .map(|mut m| m.buffer_writes(txn, ops))
            .map_err(|_| Error::Fatal("transaction manager lock poisoned".into()))?;
        match buffered {
            crate::txn::Buffered::Ok => Ok(()),
            // It started preparing (or was aborted) meanwhile: these writes
            // would not be part of it, so they must not be acked.
            crate::txn::Buffered::NotOpen(reason) => Err(Error::Aborted(reason)),
            crate::txn::Buffered::TooLarge(n) => Err(too_large(n)),
        }
    }

    // ---- transactional operations (called by coordinators) ----

    pub async fn txn_get(
        &self,
        shard: ShardId,
        version: u64,
        who: TxnRef,
        key: &[u8],
        for_update: bool,
    ) -> Result<Option<Vec<u8>>, Error> {
        let mut v = self
            .txn_get_batch(shard, version, who, &[key.to_vec()], for_update)
            .await?;
        Ok(v.pop().flatten())
    }

    /// Read `keys` of `shard` for `txn`, locking them one after another
    /// in the order given, then reading them all; the values in the same
    /// order. The batch's locks share one lock wait, as a write batch's
    /// do, so the answer comes within the caller's patience.
    pub async fn txn_get_batch(
        &self,
        shard: ShardId,
        version: u64,
        who: TxnRef,
        keys: &[Vec<u8>],
        for_update: bool,
    ) -> Result<Vec<Option<Vec<u8>>>, Error> {
        let TxnRef { txn, first, prio } = who;
        self.check_group(txn)?;
        pact_common::validate_reads(keys)?;
        let s = &self.shard(shard)?;
        self.ready(s)?;
        self.check_keys(s, shard, version, keys.iter().map(Vec::as_slice))?;
        let mode = if for_update {
            Mode::Exclusive
        } else {
            Mode::Shared
        };
        let term = self.lock_term(s)?;
        let deadline = Instant::now() + LOCK_WAIT;
        for (i, key) in keys.iter().enumerate() {
            // Only the batch's first lock may register the transaction: a
            // new leader elected between two of them does not know it, and
            // refuses the rest rather than lose the locks taken before.
            let target = Target::key(key, mode);
            self.acquire_by(s, txn, first && i == 0, prio, target, deadline)
                .await?;
        }
        let mut values = Vec::with_capacity(keys.len());
        let mut bytes = 0usize;
        for key in keys {
            let v = self.read_key(s, txn, key).await?;
            // Refused past the limit; the locks taken stay with the
            // transaction.
            pact_common::count_read(&mut bytes, v.as_ref())?;
            values.push(v);
        }
        // As a plain read: a deposed leader must not hand an open
        // transaction a stale value, which its client could act on even
        // though the commit would fail.
        self.confirm(s, term).await?;
        Ok(values)
    }

    pub async fn txn_scan(
        &self,
        shard: ShardId,
        version: u64,
        who: TxnRef,
        start: &[u8],
        end: Option<&[u8]>,
        limit: u32,
    ) -> Result<(Vec<(Vec<u8>, Vec<u8>)>, bool), Error> {
        let TxnRef { txn, first, prio } = who;
        self.check_group(txn)?;
        let limit = Self::scan_limit(limit)?;
        Self::scan_bounds(start, end)?;
        let s = &self.shard(shard)?;
        self.ready(s)?;
        self.check_range(s, shard, version, start, end)?;
        if end.is_some_and(|e| e <= start) {
            return Ok((Vec::new(), false));
        }
        let range = Range {
            start: start.to_vec(),
            end: end.map(<[u8]>::to_vec),
        };
        let term = self.lock_term(s)?;
        self.acquire(s, txn, first, prio, Target::Range(range))
            .await?;
        let out = self.read_range(s, txn, start, end, limit).await?;
        self.confirm(s, term).await?;
        Ok(out)
    }

    pub async fn txn_write(
        &self,
        shard: ShardId,
        version: u64,
        who: TxnRef,
        ops: Vec<Mutation>,
    ) -> Result<(), Error> {
        let TxnRef { txn, first, prio } = who;
        self.check_group(txn)?;
        let s = &self.shard(shard)?;
        validate_writes(&ops)?;
        self.ready(s)?;
        self.check_keys(s, shard, version, ops.iter().map(|(k, _)| k.as_slice()))?;
        self.lock_writes(s, txn, first, prio, &ops).await
    }

    /// Phase one: replicate the prepare record, then vote. Every lock the
    /// transaction needs is already held, on every shard: wound-wait's
    /// freedom from deadlock rests on a preparing transaction waiting for
    /// nothing. `ops`, writes the coordinator carries in the prepare, are
    /// of keys the transaction holds; they are taken without waiting (a
    /// key held by another transaction makes the vote "no"). `durable`:
    /// replicate a record even with no writes here (a parallel commit).
    pub async fn prepare(
        &self,
        shard: ShardId,
        version: u64,
        txn: TxnId,
        ops: Vec<Mutation>,
        durable: bool,
    ) -> Result<Vote, Error> {
        let s = &self.shard(shard)?;
        if !ops.is_empty() {
            validate_writes(&ops)?;
        }
        self.ready(s)?;
        let status = s
            .shared
            .mgr
            .lock()
            .map_err(|_| Error::Fatal("transaction manager lock poisoned".into()))?
            .status(txn)
            .cloned();
        // Routed by a stale map: the transaction's locks were taken by a
        // shard that no longer owns the keys as it did, or its carried
        // writes are not this shard's. It cannot prepare here; a prepare
        // is never sent elsewhere (its shard set is fixed), so it aborts.
        // A retried prepare of one already under way is answered below,
        // whatever it says: its locks must stay until the decision.
        if !matches!(
            status,
            Some(crate::txn::Status::Prepared) | Some(crate::txn::Status::Preparing)
        ) {
            match self.check_keys(s, shard, version, ops.iter().map(|(k, _)| k.as_slice())) {
                Ok(_) => {}
                Err(Error::WrongShard { message, .. }) => {
                    self.release(s, txn);
                    return Ok(Vote::No(Abort::new(AbortKind::Moved, message)));
                }
                Err(e) => return Err(e),
            }
        }
        let input = match s.shared.mgr.lock() {
            // A retried prepare (its first reply was lost): answer from the
            // state the first one left, and never drop its locks.
            Ok(m) if m.status(txn) == Some(&crate::txn::Status::Prepared) => return Ok(Vote::Yes),
            Ok(m) if m.status(txn) == Some(&crate::txn::Status::Preparing) => {
                return Err(Error::Unavailable(
                    "prepare already in progress; ask again".into(),
                ))
            }
            Ok(mut m) => m.begin_prepare_with(txn, &ops, self.now()),
            Err(_) => return Err(Error::Fatal("transaction manager lock poisoned".into())),
        };
        let input = match input {
            Ok(i) => i,
            Err(r) => {
                self.release(s, txn);
                return Ok(Vote::No(r));
            }
        };
        if input.writes.is_empty() && !durable {
            // Read-only here: confirm we still lead the term the read locks
            // were taken in, then let go (the reads are already serialized).
            let _release = Release::new(s, txn);
            let still =
                s.replica.read_barrier().await.is_ok() && s.replica.role().term == input.term;
            return Ok(if still {
                Vote::ReadOnly
            } else {
                Vote::No(Abort::new(
                    AbortKind::Leadership,
                    "leadership changed: read locks were lost",
                ))
            });
        }
        let carried = match take_for(s, &input.writes).await {
            Ok(carried) => carried,
            Err(e) => {
                // Nothing was proposed: like any failed prepare, a "no".
                self.abandon_prepare(s, txn);
                return Ok(Vote::No(Abort::new(AbortKind::Unavailable, e.to_string())));
            }
        };
        let cmd = ShardCommand::Prepare {
            txn,
            writes: input.writes,
            term: input.term,
        };
        let reply = propose_carrying(s, &self.metrics, carried, cmd).await;
        match reply.map(|(_, r)| r) {
            Ok(ShardReply::Prepared) => Ok(Vote::Yes),
            Ok(ShardReply::Rejected(r)) => Ok(Vote::No(Abort::new(AbortKind::Conflict, r))),
            Ok(ShardReply::Moved(r)) => Ok(Vote::No(Abort::new(AbortKind::Moved, r))),
            Ok(ShardReply::Expired) => Ok(Vote::No(Abort::new(AbortKind::Expired, EXPIRED))),
            Ok(ShardReply::Done | ShardReply::Decided { .. }) => Ok(Vote::No(Abort::new(
                AbortKind::Conflict,
                "unexpected reply to prepare",
            ))),
            // Unknown whether the prepare record committed: the coordinator
            // must abort, and the abort it sends will clean up either way.
            // Refused before it was appended (a full queue, a lapsed
            // lease, not leader): no prepare of it can land, so it aborts
            // here now; kept preparing, nothing would ever free it if its
            // coordinator died before sending the abort (only prepared
            // transactions are asked about).
            Err(e) => {
                if !undecided(&e) {
                    self.abandon_prepare(s, txn);
                }
                let kind = match e {
                    Error::NotLeader { .. } => AbortKind::Leadership,
                    _ => AbortKind::Unavailable,
                };
                Ok(Vote::No(Abort::new(
                    kind,
                    format!("prepare not confirmed: {e}"),
                )))
            }
        }
    }

    /// A transaction that touched only this shard: lock and buffer `ops`
    /// (writes its client sent with the commit; `first` as for
    /// [`Node::txn_write`]), then replicate and apply its writes in one
    /// Raft round. While it waits for those locks it is still active, so
    /// an older transaction can wound it.
    pub async fn commit_one_phase(
        &self,
        shard: ShardId,
        version: u64,
        who: TxnRef,
        ops: Vec<Mutation>,
    ) -> Result<(), Error> {
        let TxnRef { txn, first, prio } = who;
        self.check_group(txn)?;
        let s = &self.shard(shard)?;
        self.ready(s)?;
        // From here on, any failure before the commit's entry is proposed
        // aborts the transaction: let go of what it holds. Until then the
        // caller may go away at any point.
        let release = Release::new(s, txn);
        match self.check_keys(s, shard, version, ops.iter().map(|(k, _)| k.as_slice())) {
            Ok(_) => {}
            Err(Error::WrongShard { message, .. }) => {
                return Err(Error::Aborted(Abort::new(AbortKind::Moved, message)))
            }
            Err(e) => return Err(e),
        }
        if !ops.is_empty() {
            validate_writes(&ops)?;
            self.lock_writes(s, txn, first, prio, &ops).await?;
        }
        self.commit_owned(s, txn, release).await.map(|_| ())
    }

    /// Commit `txn`, whose locks and writes are in place, in one Raft
    /// round, in a task of its own: once the entry may be in the log, its
    /// locks must stay until the log decides, whatever happens to the
    /// caller (a deadline or a reset stream drops the handler's future).
    /// Takes over `release`: the task lets go of the locks itself when
    /// the commit definitely failed; when it applied, `KvApp::visible`
    /// already did; when its fate is open, the apply path or a leadership
    /// change will.
    async fn commit_owned(
        &self,
        s: &Arc<Shard>,
        txn: TxnId,
        mut release: Release,
    ) -> Result<u64, Error> {
        release.armed = false;
        let (s, metrics, now) = (s.clone(), self.metrics.clone(), self.now());
        tokio::spawn(async move {
            let r = commit_locked(&s, &metrics, now, txn).await;
            if !matches!(&r, Err(e) if undecided(e)) {
                s.shared.release_with(|m| m.finish(txn));
            }
            r
        })
        .await
        .unwrap_or_else(|e| Err(Error::Fatal(format!("commit task failed: {e}"))))
    }

    /// The coordinator ended `txn` before its commit began: no prepare or
    /// one-phase commit of it was sent here, nor ever will be (its
    /// session is gone, and only a session that is committing sends
    /// them). So nothing of it is or will be in the log, and freeing it
    /// in memory is the whole abort: no Raft round, no outcome record
    /// (the presumed abort covers any later question). A request of it
    /// arriving late is refused ([`TxnManager::end_aborted`]). One this
    /// leader has preparing or prepared, which the coordinator's word
    /// rules out, still gets the logged abort. Idempotent.
    pub async fn abort_open(&self, shard: ShardId, txn: TxnId) -> Result<(), Error> {
        self.check_group(txn)?;
        if self.retired(shard).is_some() {
            return Ok(());
        }
        let s = &self.hosted(shard)?;
        self.ready(s)?;
        match s.shared.release_with(|m| m.end_open(txn)) {
            Some(true) => Ok(()),
            Some(false) => {
                tracing::warn!(shard = shard.0, %txn, "an abort said to be of an open transaction found it preparing; logging it");
                self.decide(shard, txn, false).await
            }
            None => Err(Error::Fatal("transaction manager lock poisoned".into())),
        }
    }

    /// Phase two: apply the coordinator's decision. Idempotent. The
    /// decision is held for the shard's next transaction entry, which
    /// carries it ahead of its own writes (`ShardCommand::Decided`), or
    /// goes alone after [`DECISION_HOLD`]; it is answered once applied.
    pub async fn decide(&self, shard: ShardId, txn: TxnId, commit: bool) -> Result<(), Error> {
        // A decision of a group the cluster does not have would leave an
        // outcome record no horizon ever collects.
        self.check_group(txn)?;
        if self.retired(shard).is_some() {
            // Nothing of any transaction is left there to apply or release
            // (no prepare record when it retired, and none can land).
            return Ok(());
        }
        let s = self.hosted(shard)?;
        self.ready(&s)?;
        if !commit {
            // Whatever it holds here goes now, unless it is preparing or
            // prepared (then at the decision below); the record below
            // makes a late prepare of this transaction fail.
            self.release(&s, txn);
        }
        let reply = self.hold(&s, txn, commit)?;
        // A prepared transaction's locks go now, not after the apply, so
        // its keys' next users do not wait out a Raft round; an entry
        // writing its keys either carries the held decision ahead of its
        // writes or waits until the decision is seen in the log, and the
        // owner proposes it again if it is not (`TxnManager::decided`).
        let now = self.now();
        let freed = s
            .shared
            .mgr
            .lock()
            .map(|mut m| m.decided(txn, commit, now))
            .unwrap_or(false);
        if freed {
            s.shared.wake();
        }
        let reply = reply.await.map_err(|_| {
            Error::Unavailable(
                "the entry that was to carry the decision was dropped; ask again".into(),
            )
        })??;
        match reply {
            ShardReply::Done => {
                if commit {
                    self.metrics.commits.with_label_values(&["two_phase"]).inc();
                }
                Ok(())
            }
            ShardReply::Rejected(r) => Err(Error::Conflict(format!("decision refused: {r}"))),
            ShardReply::Prepared
            | ShardReply::Expired
            | ShardReply::Moved(_)
            | ShardReply::Decided { .. } => {
                Err(Error::Fatal("unexpected reply to decision".into()))
            }
        }
    }

    /// Hold a decision for the shard's next transaction entry; the first
    /// one held starts the timer that sends whatever is still held in an
    /// entry of its own. The receiver gets the decision's reply.
    fn hold(
        &self,
        s: &Arc<Shard>,
        txn: TxnId,
        commit: bool,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<ShardReply, Error>>, Error> {
        let (answer, reply) = tokio::sync::oneshot::channel();
        let first = {
            let mut held = s
                .held
                .lock()
                .map_err(|_| Error::Fatal("held decisions lock poisoned".into()))?;
            held.push(HeldDecision {
                txn,
                commit,
                answer,
            });
            held.len() == 1
        };
        if first {
            let (s, metrics) = (s.clone(), self.metrics.clone());
            let hold = Duration::from_micros(
                self.decision_hold_us
                    .load(std::sync::atomic::Ordering::Relaxed),
            );
            tokio::spawn(async move {
                tokio::time::sleep(hold).await;
                let held = take_held(&s);
                if !held.is_empty() {
                    // Its outcome reaches the held decisions' requests.
                    let _ = propose_decided(&s, &metrics, held, None).await;
                }
            });
        }
        Ok(reply)
    }

    /// A timestamp the shard keeps per coordinator group (horizon, floor),
    /// as applied here; 0 if never set.
    async fn stored(&self, s: &Shard, key: &[u8], what: &str) -> Result<Timestamp, Error> {
        match s.replica.get_local(key).await? {
            Some(v) => pact_raft::codec::decode(&v, what).map_err(|e| Error::Fatal(e.to_string())),
            None => Ok(Timestamp(0)),
        }
    }

    /// Raise coordinator group `group`'s fence floor on `shard` to `below`
    /// (through the shard's Raft log, so it is durable and every later
    /// prepare or one-phase commit is checked against it); returns the
    /// floor. No entry when it is there already.
    pub async fn raise_floor(
        &self,
        shard: ShardId,
        group: u64,
        below: Timestamp,
    ) -> Result<Timestamp, Error> {
        if group == IMPLICIT_GROUP {
            return Err(Error::InvalidInput(format!(
                "group {IMPLICIT_GROUP} is the implicit group of plain writes; it has no floor"
            )));
        }
        self.check_stamp(group, below, "fence floor")?;
        if self.retired(shard).is_some() {
            // Nothing can prepare or commit there any more: every floor
            // holds already.
            return Ok(below);
        }
        let s = &self.hosted(shard)?;
        self.ready(s)?;
        // A linearizable read: the floor some earlier call raised is seen.
        s.replica.read_barrier().await?;
        let now = self
            .stored(s, &crate::kv::floor_key(group), "fence floor")
            .await?;
        if now >= below {
            return Ok(now);
        }
        self.propose(s, ShardCommand::Floor { group, below })
            .await?;
        Ok(below)
    }

    async fn propose(&self, s: &Shard, cmd: ShardCommand) -> Result<ShardReply, Error> {
        propose_one(s, &cmd).await.map(|(_, reply)| reply)
    }

    pub fn status(&self, shard: ShardId) -> Result<ReplicaStatus, Error> {
        Ok(self.hosted(shard)?.replica.status())
    }

    /// The first fatal error of any replica, if one stopped.
    pub fn fatal(&self) -> Option<String> {
        // A panic while holding a transaction manager's lock leaves its
        // state unknowable: stop rather than serve from it.
        let shards = self.all_shards();
        if let Some((_, s)) = shards.iter().find(|(_, s)| s.shared.mgr.is_poisoned()) {
            return Some(format!(
                "shard {}: transaction manager poisoned",
                s.replica.group()
            ));
        }
        shards.iter().find_map(|(_, s)| {
            s.replica
                .fatal()
                .map(|f| format!("shard {}: {f}", s.replica.group()))
        })
    }

    pub async fn shutdown(&self) {
        for (_, s) in self.all_shards() {
            s.replica.shutdown().await;
        }
    }

    /// What this shard recorded of `txn`, for its coordinator, whose log
    /// has no decision (a one-phase commit is decided here alone). Without
    /// `fence`, a linearizable read that changes nothing. With it, through
    /// the Raft log: an abort is recorded unless the shard prepared or
    /// decided `txn`, so nothing of it can commit here afterwards and the
    /// coordinator may presume the abort.
    pub async fn inquire(
        &self,
        shard: ShardId,
        txn: TxnId,
        fence: bool,
    ) -> Result<crate::kv::TxnState, Error> {
        if fence {
            self.check_group(txn)?;
        }
        if let Some(r) = self.retired(shard) {
            return Ok(retired_state(&r, txn));
        }
        let s = &self.hosted(shard)?;
        self.ready(s)?;
        if fence {
            let reply = self.propose(s, ShardCommand::Fence { txn }).await?;
            return Ok(crate::kv::fenced_state(&reply));
        }
        s.replica.read_barrier().await?;
        // The prepare record first: a decision removes it and writes the
        // outcome in one batch, so reading the outcome second cannot miss
        // a decision that removed the prepare record between the reads.
        let mut found = BTreeMap::new();
        for k in [
            txn.key(PREPARED_PREFIX),
            txn.key(crate::kv::OUTCOME_PREFIX),
            crate::kv::horizon_key(txn.group),
            crate::kv::floor_key(txn.group),
        ] {
            if let Some(v) = s.replica.get_local(&k).await? {
                found.insert(k, v);
            }
        }
        crate::kv::txn_state(&|k| Ok(found.get(k).cloned()), txn)
            .map_err(|e| Error::Fatal(e.to_string()))
    }

    /// Raise coordinator group `group`'s record horizon on `shard` to
    /// `below` and delete the outcome records it covers, a bounded batch
    /// per Raft entry. Returns (records deleted, records of the group
    /// kept). The leader lists the records, so every replica deletes the
    /// same ones; a record the horizon does not cover is never deleted.
    pub async fn forget(
        &self,
        shard: ShardId,
        group: u64,
        below: Timestamp,
    ) -> Result<(u64, u64), Error> {
        self.check_stamp(group, below, "record horizon")?;
        if self.retired(shard).is_some() {
            // Its answers are fixed at its horizons when it retired; a
            // later horizon changes none of them.
            return Ok((0, 0));
        }
        let s = &self.hosted(shard)?;
        self.ready(s)?;
        let mut removed = 0u64;
        loop {
            let records = s
                .replica
                .scan_prefix_local(&crate::kv::outcome_prefix(group))
                .await?;
            let total = records.len() as u64;
            let old: Vec<TxnId> = records
                .iter()
                .filter_map(|(k, _)| TxnId::from_key(k))
                .filter(|t| t.group == group && t.ts < below)
                .take(crate::kv::FORGET_BATCH)
                .collect();
            let n = old.len() as u64;
            let last = old.len() < crate::kv::FORGET_BATCH;
            // Nothing to delete and the horizon already there: no entry
            // (a collection round must not cost every shard a Raft round).
            if old.is_empty()
                && self
                    .stored(s, &crate::kv::horizon_key(group), "record horizon")
                    .await?
                    >= below
            {
                self.metrics.set_records(shard, "outcome", total);
                return Ok((removed, total));
            }
            self.propose(
                s,
                ShardCommand::Forget {
                    group,
                    below,
                    txns: old,
                },
            )
            .await?;
            removed += n;
            if last {
                let kept = total - n;
                self.metrics.set_records(shard, "outcome", kept);
                return Ok((removed, kept));
            }
        }
    }
}

/// How often a node looks for replicas of retired shards to drop.
pub const DROP_RETIRED_EVERY: Duration = Duration::from_secs(1);

/// Drop `node`'s replicas of retired shards as the directory learns of
/// them ([`Node::drop_retired`]), every [`DROP_RETIRED_EVERY`], until the
/// node is gone. A node that was down when a shard retired drops its
/// replica once its directory has read the table.
pub fn keep_dropping_retired(node: &Arc<Node>) {
    let node = Arc::downgrade(node);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(DROP_RETIRED_EVERY).await;
            let Some(n) = node.upgrade() else {
                return;
            };
            n.drop_retired().await;
        }
    });
}

/// What a retired shard answers, in its group's place, to an inquiry
/// about `txn` (fenced or not: nothing can land there any more, so a
/// fence would change nothing). Implicit transactions keep no records.
fn retired_state(r: &pact_common::RetiredShard, txn: TxnId) -> crate::kv::TxnState {
    if txn.group == IMPLICIT_GROUP {
        return crate::kv::TxnState::Aborted;
    }
    match r.inquiry(txn.group, txn.ts.0) {
        pact_common::RetiredAnswer::Expired => crate::kv::TxnState::Expired,
        pact_common::RetiredAnswer::Aborted => crate::kv::TxnState::Aborted,
    }
}

/// How long a write waits for earlier decisions on its keys to be seen
/// in the log (one Raft round when all is well; see [`take_for`]).
/// Short, because it comes on top of the lock wait within the client's
/// deadline; a write that gives up proposed nothing and is refused as
/// retryable.
const DECISION_WAIT: Duration = Duration::from_millis(500);

/// How long a decision released early may stay unseen in the log before
/// the shard's owner proposes it again (its first proposal was refused
/// or lost and nobody resent it).
const RELOG_AFTER_MS: u64 = 500;

/// Wait until no decision released early on a key of `writes` is on its
/// way to the log without being held here (`TxnManager::decided`), then
/// take every held decision for the entry with these writes to carry
/// ahead of them: the check and the take are one step under the held
/// queue's lock, so no held decision leaves the queue for an entry of
/// its own in between, and the entry lands behind every decision on its
/// keys. At most [`DECISION_WAIT`]; nothing is taken on failure.
async fn take_for(s: &Shard, writes: &[Mutation]) -> Result<Vec<HeldDecision>, Error> {
    let deadline = Instant::now() + DECISION_WAIT;
    loop {
        let notified = s.shared.released.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let taken = {
            let mut held = s
                .held
                .lock()
                .map_err(|_| Error::Fatal("held decisions lock poisoned".into()))?;
            let waits = s
                .shared
                .mgr
                .lock()
                .map(|m| m.awaits_decision(writes, |t| held.iter().any(|h| h.txn == t)))
                .map_err(|_| Error::Fatal("transaction manager lock poisoned".into()))?;
            (!waits).then(|| std::mem::take(&mut *held))
        };
        if let Some(carried) = taken {
            return Ok(carried);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || tokio::time::timeout(left, notified).await.is_err() {
            return Err(Error::Unavailable(
                "an earlier transaction's decision on these keys is not in the log yet; retry"
                    .into(),
            ));
        }
    }
}

/// The leader saw `txn`'s decision committed in the log: writes of its
/// keys may be proposed again.
fn decision_logged(s: &Shard, txn: TxnId) {
    s.shared.release_with(|m| m.decision_logged(txn));
}

/// How long a decision waits for a transaction entry of its shard to
/// carry it before it goes in an entry of its own. Under load some entry
/// comes sooner; at one client the next transaction's prepare usually
/// does. Nothing waits on it but the `Decide` request (its locks went at
/// once) and the coordinator's record of the end.
const DECISION_HOLD: Duration = Duration::from_millis(10);

/// All the decisions held for the shard's next entry, taken to go in
/// one (the hold's timer).
fn take_held(s: &Shard) -> Vec<HeldDecision> {
    s.held
        .lock()
        .map(|mut h| std::mem::take(&mut *h))
        .unwrap_or_default()
}

/// Propose `cmd` and return its entry's index and its reply.
async fn propose_one(s: &Shard, cmd: &ShardCommand) -> Result<(u64, ShardReply), Error> {
    let (index, reply) = s.replica.propose(encode_command(cmd)?).await?;
    Ok((index, ShardReply::decode(&reply).map_err(Error::Fatal)?))
}

/// Propose `then` with the `held` decisions ahead of it in one entry
/// (`ShardCommand::Decided`; `then` alone, as always, if none is held),
/// answer each held decision's request from its part of the reply, and
/// return the entry's index and `then`'s reply. Every held decision is
/// answered, whatever happens, and never with a refusal that `then`
/// alone earned: an entry too large with them goes as two, the decisions
/// first (`then` only once they are in the log, since it may write their
/// keys).
async fn propose_carrying(
    s: &Shard,
    metrics: &crate::metrics::Metrics,
    held: Vec<HeldDecision>,
    then: ShardCommand,
) -> Result<(u64, ShardReply), Error> {
    if held.is_empty() {
        return propose_one(s, &then).await;
    }
    // A bound on the entry's encoded size: a decision is a transaction id
    // and a flag, a write its key and value with their lengths.
    let bound = match &then {
        ShardCommand::Prepare { writes, .. } | ShardCommand::OnePhase { writes, .. } => writes
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len) + 24)
            .sum::<usize>(),
        _ => usize::MAX,
    };
    if bound.saturating_add((held.len() + 2) * 64) > pact_raft::MAX_COMMAND_BYTES {
        propose_decided(s, metrics, held, None).await?;
        return propose_one(s, &then).await;
    }
    propose_decided(s, metrics, held, Some(then)).await
}

/// `held` (not empty) and `then` as one `ShardCommand::Decided` entry,
/// each held decision answered from it (see [`propose_carrying`]);
/// returns the index and `then`'s reply (`Done` without `then`).
async fn propose_decided(
    s: &Shard,
    metrics: &crate::metrics::Metrics,
    held: Vec<HeldDecision>,
    then: Option<ShardCommand>,
) -> Result<(u64, ShardReply), Error> {
    let how = if then.is_some() { "carried" } else { "alone" };
    metrics
        .decisions
        .with_label_values(&[how])
        .inc_by(held.len() as u64);
    let cmd = ShardCommand::Decided {
        decisions: held.iter().map(|h| (h.txn, h.commit)).collect(),
        then: then.map(Box::new),
    };
    let result = async {
        let mut proposal = s.replica.submit(encode_command(&cmd)?).await?;
        let logged = proposal.committed().await;
        let result = proposal.wait().await;
        if logged || result.is_ok() {
            for h in &held {
                decision_logged(s, h.txn);
            }
        }
        let (index, reply) = result?;
        Ok::<_, Error>((index, ShardReply::decode(&reply).map_err(Error::Fatal)?))
    }
    .await;
    let e = match result {
        Ok((
            index,
            ShardReply::Decided {
                decisions,
                then: then_reply,
            },
        )) if decisions.len() == held.len() => {
            for (h, r) in held.into_iter().zip(decisions) {
                let _ = h.answer.send(Ok(r));
            }
            return Ok((index, then_reply.map_or(ShardReply::Done, |r| *r)));
        }
        Ok(_) => Error::Fatal("unexpected reply to decisions".into()),
        Err(e) => e,
    };
    // The coordinator takes a refusal of a decision as final; a failure
    // of the entry that carried it is not one.
    let for_decisions = match &e {
        Error::NotLeader { .. } | Error::Unavailable(_) | Error::Unknown(_) | Error::Fatal(_) => {
            e.clone()
        }
        other => Error::Unavailable(format!("the entry carrying the decision failed: {other}")),
    };
    for h in held {
        let _ = h.answer.send(Err(for_decisions.clone()));
    }
    Err(e)
}

/// Propose again a decision released early that was not seen in the log
/// (`TxnManager::unlogged_after`). The coordinator's decision is final,
/// so the shard may repeat it; applying it twice is harmless.
async fn relog_decision(s: Arc<Shard>, txn: TxnId, commit: bool) {
    let Ok(cmd) = encode_command(&ShardCommand::decision(txn, commit)) else {
        return;
    };
    tracing::info!(shard = s.replica.group(), %txn, commit, "decision not seen in the log yet; proposing it again");
    if let Ok(mut p) = s.replica.submit(cmd).await {
        if p.committed().await {
            decision_logged(&s, txn);
        }
    }
}

/// The one-phase commit itself (see [`Node::commit_owned`]).
async fn commit_locked(
    s: &Arc<Shard>,
    metrics: &Arc<crate::metrics::Metrics>,
    now_ms: u64,
    txn: TxnId,
) -> Result<u64, Error> {
    let input = match s.shared.mgr.lock() {
        Ok(mut m) => m.begin_prepare(txn, now_ms),
        Err(_) => return Err(Error::Fatal("transaction manager lock poisoned".into())),
    };
    let input = input.map_err(Error::Aborted)?;
    if input.writes.is_empty() {
        s.replica.read_barrier().await?;
        if s.replica.role().term != input.term {
            return Err(Error::Aborted(Abort::new(
                AbortKind::Leadership,
                "leadership changed: read locks were lost",
            )));
        }
        return Ok(0);
    }
    // Behind every decision on these keys whose locks went before it
    // was in the log (`TxnManager::decided`).
    let carried = take_for(s, &input.writes).await?;
    let cmd = ShardCommand::OnePhase {
        txn,
        writes: input.writes,
        term: input.term,
    };
    let (index, reply) = propose_carrying(s, metrics, carried, cmd).await?;
    match reply {
        ShardReply::Done => {
            metrics.commits.with_label_values(&["one_phase"]).inc();
            Ok(index)
        }
        ShardReply::Rejected(r) => {
            metrics.abort(AbortKind::Conflict);
            Err(Error::Aborted(Abort::new(AbortKind::Conflict, r)))
        }
        ShardReply::Moved(r) => {
            metrics.abort(AbortKind::Moved);
            Err(Error::Aborted(Abort::new(AbortKind::Moved, r)))
        }
        ShardReply::Expired => {
            metrics.abort(AbortKind::Expired);
            Err(Error::Aborted(Abort::new(AbortKind::Expired, EXPIRED)))
        }
        ShardReply::Prepared | ShardReply::Decided { .. } => {
            Err(Error::Fatal("unexpected reply to one-phase commit".into()))
        }
    }
}

/// The owner task of a shard's transaction manager: follows leadership
/// (rebuilding prepared transactions' locks when this replica becomes
/// leader) and expires idle transactions.
/// A prepared transaction silent this long makes the leader ask its
/// coordinator for the decision (and again after as long, while unknown).
/// Asking early is safe: a coordinator leader that still runs the commit
/// answers "unknown" and decides nothing (`Coordinator::status`), and one
/// that lost it (a crash, a new leader) records the presumed abort. Short,
/// so a coordinator crash between prepare and decision holds the prepared
/// transaction's locks for about this long, not for many seconds.
pub const IN_DOUBT_AFTER_MS: u64 = 2_000;

/// An open (unprepared) transaction silent this long makes the leader ask
/// its coordinator whether it still has it; if not (a coordinator crash or
/// leader change lost it), it is aborted here at once rather than holding
/// its locks until the idle timeout.
pub const ABANDONED_AFTER_MS: u64 = 1_000;

/// Start this node's replica of `shard`: as the config says (`joined` is
/// None), or as a replica added at run time whose group had voters
/// `joined`.
async fn start_shard(
    config: &ClusterConfig,
    id: NodeId,
    shard: ShardId,
    joined: Option<Vec<NodeId>>,
    tuning: &Tuning,
    host: &Host,
) -> Result<Arc<Shard>, Error> {
    let shared = Arc::new(Shared::new(TxnManager::new(TxnLimits {
        skip_shared_locks: pact_common::faults::enabled("skip-read-locks"),
        idle_timeout_ms: config.transactions.idle_timeout_ms,
    })));
    let app = Arc::new(KvApp {
        shared: shared.clone(),
    });
    let replica = match joined {
        None => {
            let replicas = config
                .shard(shard)
                .map(|sc| sc.replicas.clone())
                .unwrap_or_default();
            let members = pact_raft::members(config, &replicas);
            Replica::start(shard.0, id.0, members, tuning, app, host).await?
        }
        Some(voters) => {
            let members = host.members_of(config, &voters);
            Replica::start_joined(shard.0, id.0, members, tuning, app, host).await?
        }
    };
    Ok(Arc::new(Shard {
        replica,
        shared,
        initial: config.shard_map().descriptor(shard),
        splitting: Default::default(),
        waiting: Default::default(),
        load: std::sync::Mutex::new(Load::new()),
        sizing: Default::default(),
        held: Default::default(),
    }))
}

fn spawn_owner(s: Arc<Shard>, clock: Clock, ctx: crate::split::Ctx) {
    let coordinators = ctx.client.clone();
    let mut leadership = s.replica.leadership();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut ticks = 0u64;
        loop {
            tokio::select! {
                r = leadership.changed() => {
                    if r.is_err() {
                        break;
                    }
                    let term = *leadership.borrow_and_update();
                    match term {
                        None => {
                            s.shared.release_with(TxnManager::step_down);
                        }
                        Some(term) => become_leader(&s, term, &clock, &ctx).await,
                    }
                }
                _ = tick.tick() => {
                    resume_split(&s, &ctx).await;
                    auto_split(&s, &ctx).await;
                    auto_split_by_size(&s, &ctx);
                    // A look at every replica here for a merge into this
                    // shard: every 2 s is soon enough to accept one.
                    ticks += 1;
                    if ticks.is_multiple_of(4) {
                        resume_absorb(&s, &ctx).await;
                    }
                    let now = clock();
                    let (expired, in_doubt, silent, relog, unconfirmed) = match s.shared.mgr.lock() {
                        Ok(mut m) => {
                            let relog = m.unlogged_after(now, RELOG_AFTER_MS);
                            let expired = m.expire(now);
                            let silent = m.silent_active(now, ABANDONED_AFTER_MS);
                            let unconfirmed = m.silent_unconfirmed(now, ABANDONED_AFTER_MS);
                            let in_doubt: Vec<TxnId> = m
                                .prepared()
                                .into_iter()
                                .filter(|(_, last)| now.saturating_sub(*last) > IN_DOUBT_AFTER_MS)
                                .map(|(t, _)| t)
                                .collect();
                            for t in &in_doubt {
                                m.touch(*t, now);
                            }
                            (expired, in_doubt, silent, relog, unconfirmed)
                        }
                        Err(_) => (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new()),
                    };
                    for (txn, reason) in unconfirmed {
                        let (s, coordinators) = (s.clone(), coordinators.clone());
                        tokio::spawn(async move {
                            let within = Duration::from_millis(ABANDONED_AFTER_MS);
                            if let Some(true) = wound_confirmed_by(&s.shared, &coordinators, txn, &reason, within).await {
                                tracing::info!(shard = s.replica.group(), %txn, "a wound confirmed late; its locks went");
                            }
                        });
                    }
                    for (txn, commit) in relog {
                        tokio::spawn(relog_decision(s.clone(), txn, commit));
                    }
                    if !expired.is_empty() {
                        tracing::info!(shard = s.replica.group(), count = expired.len(), "expired idle transactions");
                        s.shared.wake();
                    }
                    for txn in in_doubt {
                        tokio::spawn(resolve_in_doubt(s.clone(), coordinators.clone(), txn));
                    }
                    for txn in silent {
                        tokio::spawn(drop_if_abandoned(s.clone(), coordinators.clone(), txn, clock.clone()));
                    }
                }
            }
        }
    });
}

/// Ask the coordinator whether it still has a silent open transaction;
/// abort it here if it does not. Without an answer, nothing changes (the
/// idle timeout still applies).
async fn drop_if_abandoned(
    s: Arc<Shard>,
    coordinators: pact_client::Client,
    txn: TxnId,
    clock: Clock,
) {
    match coordinators.txn_status(txn).await {
        // Alive, only quiet here: it must not hit the idle expiry, which
        // is for transactions whose coordinator cannot be reached.
        Ok(pact_client::TxnOutcome::Open(_)) => {
            if let Ok(mut m) = s.shared.mgr.lock() {
                m.touch(txn, clock());
            }
        }
        Err(_) => {}
        // Committed cannot be: a commit needs this shard's prepare (or
        // one-phase entry), which an active transaction has not had.
        Ok(outcome) => {
            let abandoned = s
                .shared
                .mgr
                .lock()
                .map(|mut m| m.abandon(txn))
                .unwrap_or(false);
            if abandoned {
                tracing::info!(shard = s.replica.group(), %txn, ?outcome, "aborted a transaction its coordinator no longer has");
                s.shared.wake();
            }
        }
    }
}

/// Ask a silent coordinator for the decision on a transaction prepared
/// here, and apply it. A participant never decides on its own: while the
/// coordinator cannot say, the transaction stays prepared.
async fn resolve_in_doubt(s: Arc<Shard>, coordinators: pact_client::Client, txn: TxnId) {
    let outcome = match coordinators.resolve_txn(txn).await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(shard = s.replica.group(), %txn, error = %e, "in-doubt transaction: coordinator unreachable");
            return;
        }
    };
    let cmd = match outcome {
        pact_client::TxnOutcome::Committed => ShardCommand::Commit { txn },
        pact_client::TxnOutcome::Aborted(_) => ShardCommand::Abort { txn },
        pact_client::TxnOutcome::Unknown(m) | pact_client::TxnOutcome::Open(m) => {
            tracing::info!(shard = s.replica.group(), %txn, reason = %m, "in-doubt transaction: not decided yet");
            return;
        }
        // The coordinator answers a prepared transaction past its horizon
        // with the abort (a shard holds its prepare record); "expired"
        // would mean it did not see this one, so ask again.
        pact_client::TxnOutcome::Expired(m) => {
            tracing::warn!(shard = s.replica.group(), %txn, reason = %m, "in-doubt transaction reported expired; will ask again");
            return;
        }
    };
    tracing::info!(shard = s.replica.group(), %txn, ?cmd, "resolving in-doubt transaction from its coordinator");
    let cmd = match encode_command(&cmd) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(shard = s.replica.group(), %txn, error = %e, "cannot resolve in-doubt transaction");
            return;
        }
    };
    if let Err(e) = s.replica.propose(cmd).await {
        tracing::warn!(shard = s.replica.group(), %txn, error = %e, "could not apply the coordinator's decision; will ask again");
    }
}

/// A command ready to propose; one that cannot be encoded is refused
/// before anything is proposed.
fn encode_command(cmd: &ShardCommand) -> Result<Vec<u8>, Error> {
    cmd.encode()
        .map_err(|e| Error::InvalidInput(format!("cannot propose the shard command: {e}")))
}

fn validate_writes(ops: &[Mutation]) -> Result<(), Error> {
    if ops.is_empty() {
        return Err(Error::InvalidInput("empty write batch".into()));
    }
    validate_batch(ops.iter().map(|(k, v)| (k.as_slice(), v.as_deref())))?;
    Ok(())
}

/// The shard's descriptor as applied here, written first if the shard
/// has none (its first leader records the config's). `None` if it cannot
/// be had in this term (leadership lost, storage failed): the leader then
/// does not become ready.
async fn load_descriptor(s: &Shard, term: u64) -> Option<Descriptor> {
    let read = || async {
        let v = s
            .replica
            .get_local(DESCRIPTOR_KEY)
            .await
            .map_err(|e| e.to_string())?;
        v.map(|v| pact_raft::codec::decode::<Descriptor>(&v, "shard descriptor"))
            .transpose()
            .map_err(|e| e.to_string())
    };
    let group = s.replica.group();
    let found = match read().await {
        Ok(found) => found,
        Err(e) => {
            tracing::error!(shard = group, error = %e, "cannot read the shard's descriptor");
            return None;
        }
    };
    let d = match found {
        Some(d) => d,
        None => {
            let Some(initial) = s.initial.clone() else {
                tracing::error!(shard = group, "the shard has no descriptor and the config none to give it: this leader serves nothing");
                return None;
            };
            let cmd = encode_command(&ShardCommand::Describe {
                descriptor: initial,
            })
            .ok()?;
            // Until it is recorded the leader serves nothing: a refusal
            // that passes (a lapsed lease) is waited out while this
            // replica leads the term.
            let mut pause = Duration::from_millis(20);
            while let Err(e) = s.replica.propose(cmd.clone()).await {
                let r = s.replica.role();
                if !r.leader || r.term != term || s.replica.fatal().is_some() {
                    tracing::info!(shard = group, error = %e, "could not record the shard's descriptor in this term");
                    return None;
                }
                tracing::debug!(shard = group, error = %e, "recording the shard's descriptor; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            match read().await {
                Ok(Some(d)) => d,
                other => {
                    tracing::error!(shard = group, result = ?other, "the shard's descriptor is missing after it was recorded");
                    return None;
                }
            }
        }
    };
    if s.initial.as_ref().is_some_and(|i| i.span != d.span) {
        tracing::warn!(
            shard = group,
            version = d.version,
            "the cluster config gives this shard other keys than its descriptor: the config \
             changed after the shard was created, or the shard was split or merged; the \
             descriptor rules, clients routing by the config are redirected (WRONG_SHARD)"
        );
    }
    Some(d)
}

/// Why `s` is in the middle of a split or merge here, if it is: it is
/// splitting or merging away, a split is creating it and it does not
/// serve yet, it is absorbing a merge, or this node's replica of another
/// shard records a merge into it not yet committed (its replicas must
/// stay beside that shard's). An unreadable record counts as one.
async fn under_way(s: &Shard, ctx: &crate::split::Ctx) -> Option<String> {
    let shard = ShardId(s.replica.group());
    match crate::split::local_split(&s.replica).await {
        Ok(Some(x)) => {
            let child = x.child.shard;
            return Some(format!("shard {shard} is splitting (into shard {child})"));
        }
        // Unreadable: refuse the change rather than guess.
        Err(_) => return Some(format!("shard {shard} is splitting (into shard ?)")),
        Ok(None) => {}
    }
    if is_split_child(shard) && matches!(s.replica.get_local(DESCRIPTOR_KEY).await, Ok(None)) {
        return Some(format!("shard {shard} is being created by a split"));
    }
    match crate::split::local_absorb(&s.replica).await {
        Ok(Some(a)) => return Some(format!("shard {shard} is absorbing shard {}", a.from)),
        Ok(None) => {}
        Err(_) => return Some(format!("shard {shard} is absorbing shard ?")),
    }
    match crate::split::merge_into(ctx, shard, None).await {
        Some((_, m, _)) if !m.committed => Some(format!(
            "shard {} is merging into shard {shard}",
            m.left.shard
        )),
        _ => None,
    }
}

/// Start a planned split or merge of `s` (its leader is here) in a task of
/// its own, holding `s.splitting`: the receiver has the answer once the
/// shard that takes the part serves; the trim follows in the task.
fn spawn_split(
    s: Arc<Shard>,
    ctx: crate::split::Ctx,
    split: Split,
) -> Result<tokio::sync::oneshot::Receiver<Result<Split, Error>>, Error> {
    let shard = ShardId(s.replica.group());
    let guard = s.splitting.clone().try_lock_owned().map_err(|_| {
        Error::Unavailable(format!(
            "shard {shard} is already splitting or merging; try again later"
        ))
    })?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _one = guard;
        let result = crate::split::run(&s, &ctx, split).await;
        let done = result.clone();
        let _ = tx.send(result);
        // The caller has its answer once the new shard serves; the trim
        // follows. A split that stopped half way is driven again by the
        // owner's tick, after a rest (a freeze lifted is not put back at
        // once).
        let stopped = match done {
            Ok(split) => crate::split::finish(&s, &split).await.err(),
            Err(e) => Some(e),
        };
        if let Some(e) = stopped {
            tracing::info!(shard = %shard, error = %e, "split or merge not finished yet; will try again");
            tokio::time::sleep(crate::split::RETRY_PAUSE).await;
        }
    });
    Ok(rx)
}

/// A split by load (`[raft] auto_split_ops_per_sec`): once a window of
/// `auto_split_secs` has passed, if this leader took more key-addressed
/// requests per second than the setting in it, split the shard (a range
/// shard at the median of the keys sampled from those requests, a hash
/// shard in the middle of its ring share), unless the cluster has
/// `auto_split_max_shards` shards or something else is under way here.
/// Checked on each tick of the owner.
async fn auto_split(s: &Arc<Shard>, ctx: &crate::split::Ctx) {
    let r = &ctx.config.raft;
    if r.auto_split_ops_per_sec == 0 {
        return;
    }
    let (rate, mut sample) = {
        let Ok(mut l) = s.load.lock() else { return };
        let secs = l.since.elapsed().as_secs_f64();
        if secs < r.auto_split_secs as f64 {
            return;
        }
        let rate = l.ops as f64 / secs;
        let sample = std::mem::take(&mut l.sample);
        *l = Load::new();
        (rate, sample)
    };
    if leading_term(s).is_none() || rate <= r.auto_split_ops_per_sec as f64 {
        return;
    }
    sample.sort();
    sample.dedup();
    let middle = sample.get(sample.len() / 2).cloned();
    let why = format!("{} requests per second", rate as u64);
    split_by_itself(s, ctx, middle, "load", &why).await;
}

/// A split by size (`[raft] auto_split_bytes`): at most once per
/// `auto_split_secs`, this leader measures the shard's data in a task of
/// its own (a scan paced like a split's copy), and splits the shard if it
/// holds more than the setting (a range shard at the key that halves its
/// bytes, a hash shard in the middle of its ring share), on the same
/// conditions as a split by load. Checked on each tick of the owner.
fn auto_split_by_size(s: &Arc<Shard>, ctx: &crate::split::Ctx) {
    let r = &ctx.config.raft;
    if r.auto_split_bytes == 0 || leading_term(s).is_none() {
        return;
    }
    {
        let Ok(mut z) = s.sizing.lock() else { return };
        let recent = z
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_secs(r.auto_split_secs));
        if z.running || recent {
            return;
        }
        z.running = true;
    }
    let (s, ctx) = (s.clone(), ctx.clone());
    tokio::spawn(async move {
        let r = &ctx.config.raft;
        let measured = crate::split::measure(&s.replica, r.split_copy_kib_per_sec).await;
        match measured {
            Ok(m) if m.bytes > r.auto_split_bytes => {
                let why = format!("{} bytes in {} keys", m.bytes, m.keys);
                split_by_itself(&s, &ctx, m.middle, "size", &why).await;
            }
            Ok(m) => tracing::debug!(shard = s.replica.group(), bytes = m.bytes, "shard measured"),
            Err(e) => tracing::debug!(shard = s.replica.group(), error = %e, "shard not measured"),
        }
        if let Ok(mut z) = s.sizing.lock() {
            z.running = false;
            z.last = Some(std::time::Instant::now());
        }
    });
}

/// Split `s` by itself (for `cause`, `why` saying how much): a range
/// shard at `middle`, a hash shard in the middle of its ring share;
/// unless this replica no longer leads, the cluster has
/// `auto_split_max_shards` shards, or something is under way here.
async fn split_by_itself(
    s: &Arc<Shard>,
    ctx: &crate::split::Ctx,
    middle: Option<Vec<u8>>,
    cause: &str,
    why: &str,
) {
    let r = &ctx.config.raft;
    if leading_term(s).is_none() {
        return;
    }
    let shard = ShardId(s.replica.group());
    let Some(d) = s.shared.descriptor.read().ok().and_then(|d| d.clone()) else {
        return;
    };
    if under_way(s, ctx).await.is_some() || s.replica.membership_unsettled().is_some() {
        return;
    }
    // Bounded: the owner's tick waits for this.
    let refreshed = tokio::time::timeout(Duration::from_secs(2), ctx.client.refresh_all()).await;
    if !matches!(refreshed, Ok(Ok(())))
        || ctx.client.shard_map().shards().len() as u64 >= r.auto_split_max_shards
    {
        return;
    }
    let at = match &d.span {
        pact_common::Span::Range { .. } => match middle {
            Some(k) => Some(k),
            None => return,
        },
        pact_common::Span::Ring { .. } => None,
    };
    let voters = s.replica.status().voters.into_iter().map(NodeId).collect();
    // A key at the range's start (one hot key) cannot split it: refused.
    let Ok(split) = crate::split::plan(&d, at.as_deref(), voters) else {
        return;
    };
    tracing::info!(shard = %shard, %why, child = %split.child.shard, "splitting a shard by {cause}");
    if let Err(e) = spawn_split(s.clone(), ctx.clone(), split) {
        tracing::info!(shard = %shard, error = %e, "no split by {cause} now");
    }
}

/// A split of `s` recorded in its state but driven by no one here (this
/// replica leads now, or the last attempt gave up for a while): drive it
/// on. Checked on each tick of the owner.
async fn resume_split(s: &Arc<Shard>, ctx: &crate::split::Ctx) {
    if leading_term(s).is_none() {
        return;
    }
    let Ok(guard) = s.splitting.clone().try_lock_owned() else {
        return;
    };
    // Read before the record: no later than the record's attempt.
    let Ok(attempt) = crate::split::local_attempt(&s.replica).await else {
        return;
    };
    let Ok(Some(split)) = crate::split::local_split(&s.replica).await else {
        return;
    };
    let (s, ctx) = (s.clone(), ctx.clone());
    tokio::spawn(async move {
        let _one = guard;
        let parent = s.replica.group();
        tracing::info!(shard = parent, child = %split.child.shard, "driving a split recorded earlier");
        let result = match crate::split::drive(&s, &ctx, split.clone(), attempt).await {
            Ok(split) => crate::split::finish(&s, &split).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!(shard = parent, error = %e, "split not finished yet; will try again");
            crate::split::hand_over_if_orphan(&s, &ctx, &split).await;
            tokio::time::sleep(crate::split::RETRY_PAUSE).await;
        }
    });
}

/// The term this replica leads in, once its transaction manager is ready
/// for it (transactions recovered): else None.
fn leading_term(s: &Shard) -> Option<u64> {
    let role = s.replica.role();
    let ready = s.shared.mgr.lock().map(|m| m.term()).unwrap_or(None);
    (role.leader && ready == Some(role.term)).then_some(role.term)
}

/// A merge into `s` (recorded by this node's replica of the shard that
/// merges, or accepted by `s`) that no one here drives: drive it on.
/// Checked on each tick of the owner.
async fn resume_absorb(s: &Arc<Shard>, ctx: &crate::split::Ctx) {
    let Some(term) = leading_term(s) else {
        return;
    };
    crate::split::refuse_merges_into(s, ctx).await;
    if !crate::split::merge_pending(s, ctx).await {
        return;
    }
    let Ok(guard) = s.splitting.clone().try_lock_owned() else {
        return;
    };
    let (s, ctx) = (s.clone(), ctx.clone());
    tokio::spawn(async move {
        let _one = guard;
        crate::split::absorb(&s, &ctx, term).await;
    });
}

/// The part of the shard a split under way has frozen, as applied here
/// (`Some(None)`: none); `None` if the split record cannot be read.
async fn frozen_part(s: &Shard) -> Option<Option<pact_common::Span>> {
    match crate::split::local_split(&s.replica).await {
        Ok(split) => Some(
            split
                .filter(|x| x.frozen && !x.committed)
                .map(|x| x.child.span),
        ),
        Err(e) => {
            let group = s.replica.group();
            tracing::error!(shard = group, error = %e, "cannot read the split record: this leader takes no transactions");
            None
        }
    }
}

/// Install `read` as the descriptor requests are checked against, unless
/// an apply since installed a later one; the one installed.
fn newest_descriptor(s: &Shard, read: Descriptor) -> Arc<Descriptor> {
    let Ok(mut cur) = s.shared.descriptor.write() else {
        return Arc::new(read);
    };
    match cur.as_ref() {
        Some(c) if c.version > read.version => c.clone(),
        _ => {
            let d = Arc::new(read);
            *cur = Some(d.clone());
            d
        }
    }
}

async fn become_leader(s: &Arc<Shard>, term: u64, clock: &Clock, ctx: &crate::split::Ctx) {
    // Apply everything committed before this term first, so the prepare
    // records read below are complete.
    if !s.replica.settle(term).await {
        return;
    }
    let group = ShardId(s.replica.group());
    if s.initial.is_none()
        && is_split_child(group)
        && matches!(s.replica.get_local(DESCRIPTOR_KEY).await, Ok(None))
        && !crate::split::fill_child(s, ctx, term).await
    {
        return;
    }
    // Counted before the split record and descriptor are read: a change
    // of either that becomes visible before they are installed below is
    // seen, and they are read again (a driver task of an earlier term of
    // this replica may still be proposing split steps).
    let mut changes = s.shared.ownership_changes.load(SeqCst);
    let Some(mut frozen) = frozen_part(s).await else {
        return;
    };
    let Some(descriptor) = load_descriptor(s, term).await else {
        return;
    };
    let mut owned = newest_descriptor(s, descriptor).span.clone();
    let records = match s.replica.scan_prefix_local(&[PREPARED_PREFIX]).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(shard = s.replica.group(), error = %e, "cannot read prepare records");
            return;
        }
    };
    let mut prepared = Vec::new();
    for (k, v) in records {
        match (TxnId::from_key(&k), prepared_writes(&v)) {
            (Some(txn), Ok(w)) => prepared.push((txn, w)),
            (txn, w) => {
                // Skipping it would free the locks of a prepared
                // transaction; taking no transactional work as leader is
                // the safe choice (clients see the shard unavailable).
                tracing::error!(
                    shard = s.replica.group(),
                    key = ?k,
                    txn = ?txn,
                    error = ?w.err(),
                    "corrupt prepare record: this leader takes no transactions"
                );
                return;
            }
        }
    }
    let n = prepared.len();
    let ids: Vec<TxnId> = prepared.iter().map(|(t, _)| *t).collect();
    let mut prepared = Some(prepared);
    loop {
        if let Ok(mut m) = s.shared.mgr.lock() {
            if s.shared.ownership_changes.load(SeqCst) == changes {
                m.leader_ready(term, prepared.take().unwrap_or_default(), clock());
                m.freeze(frozen);
                m.set_owned(Some(owned));
                break;
            }
        } else {
            return;
        }
        changes = s.shared.ownership_changes.load(SeqCst);
        let Some(f) = frozen_part(s).await else {
            return;
        };
        let Ok(Some(d)) = crate::split::local_descriptor(&s.replica).await else {
            tracing::error!(shard = %group, "cannot read the shard's descriptor again: this leader takes no transactions");
            return;
        };
        frozen = f;
        owned = newest_descriptor(s, d).span.clone();
    }
    // A decision applied between the scan and `leader_ready` released
    // nothing (the manager did not know the transaction yet): drop any
    // transaction whose prepare record is gone by now.
    for txn in ids {
        if let Ok(None) = s.replica.get_local(&txn.key(PREPARED_PREFIX)).await {
            if let Ok(mut m) = s.shared.mgr.lock() {
                m.finish(txn);
            }
        }
    }
    s.shared.wake();
    tracing::info!(
        shard = s.replica.group(),
        term,
        prepared = n,
        "leader ready"
    );
}
