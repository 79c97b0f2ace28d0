//! The cluster config file (TOML).
//!
//! Pact's membership is static: every node and client reads the same file, so
//! the file alone decides which node serves which shard and how keys are
//! routed. That is why everything is validated once at load time: a typo
//! caught here would otherwise surface as silently misrouted keys or a Raft
//! group that can never elect a leader.

use crate::ids::{NodeId, ShardId};
use crate::partition::ShardMap;
use std::collections::BTreeSet;
use std::path::Path;

/// Largest `virtual_nodes` accepted: beyond this the ring only costs memory.
const MAX_VIRTUAL_NODES: u32 = 4096;
/// Most ring points (shards times `virtual_nodes`) a hash-partitioned
/// cluster may have: a routing table past it (a broken file, or a peer
/// sending garbage) would cost gigabytes to build.
const MAX_RING_POINTS: u64 = 1 << 22;
/// TOML integers are signed 64-bit; larger ids would not survive a round trip.
const MAX_TOML_INT: u64 = i64::MAX as u64;
/// The longest wait or period a timing setting may have: an hour.
const MAX_WAIT_MS: u64 = 3_600_000;
/// The longest record retention: a year.
const MAX_RETENTION_S: u64 = 366 * 24 * 3600;
/// The Raft group id of the metadata group (the cluster's member table):
/// above every id a config can give (at most `MAX_TOML_INT`), so it is
/// never a shard's or a coordinator group's.
pub const META_GROUP: u64 = u64::MAX - 1;
/// Upper bound for [`ClusterConfig::local`] so a typo cannot exhaust memory.
const MAX_LOCAL_SHARDS: u64 = 1 << 16;
/// How far above its client port a [`ClusterConfig::local`] node's peer
/// port is (at least): clear of the playground's metrics ports, 10 above.
pub const LOCAL_PEER_PORT_OFFSET: u16 = 20;

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The TOML error text, which includes the line and column.
    #[error("cannot parse cluster config: {0}")]
    Parse(String),
    #[error("invalid cluster config: {0}")]
    Invalid(String),
}

fn invalid<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError::Invalid(msg.into()))
}

/// How keys are assigned to shards.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionScheme {
    /// Consistent hashing: even spread, but range scans visit every shard.
    Hash,
    /// Contiguous key ranges: scans touch only overlapping shards.
    Range,
}

fn default_vnodes() -> u32 {
    128
}

/// The whole cluster: nodes, shards, partitioning and Raft timings.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub partitioning: PartitionScheme,
    /// Ring points per shard for the hash scheme; must be `1..=4096`.
    #[serde(default = "default_vnodes")]
    pub virtual_nodes: u32,
    pub nodes: Vec<NodeConfig>,
    pub shards: Vec<ShardConfig>,
    #[serde(default)]
    pub raft: RaftTuning,
    /// Timeouts of open transactions.
    #[serde(default)]
    pub transactions: TxnTuning,
    /// Memory bounds of each node's storage engine.
    #[serde(default)]
    pub storage: StorageTuning,
    /// Admission limits: how much work a server takes on before it
    /// refuses more with OVERLOADED.
    #[serde(default)]
    pub limits: Limits,
    /// Coordinator groups: each is a Raft group holding a recovery log of
    /// commit decisions, run on its replicas by `coordinator` processes or
    /// by `pact` processes that may host shard replicas too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub coordinators: Vec<CoordinatorConfig>,
    /// Mutual TLS on every port (off if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

/// Certificates for mutual TLS. When present, every node serves both of
/// its ports over TLS and accepts only connections that present a
/// certificate signed by `ca`; every internal client (Raft, coordinator to
/// participant, participant to coordinator) presents the node's own
/// certificate. Relative paths are relative to the config file's folder.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA that signs every node and client certificate.
    pub ca: String,
    /// PEM certificate of a node; `{id}` is replaced by the node's id, so
    /// one file serves every node.
    pub cert: String,
    /// PEM private key of that certificate; `{id}` as in `cert`.
    pub key: String,
    /// Certificate and key that clients (`txn`, `bench`, the client
    /// library) present when not told otherwise; both or neither.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
}

impl TlsConfig {
    /// `(cert, key)` paths of node `id`.
    pub fn node_files(&self, id: NodeId) -> (String, String) {
        let id = id.0.to_string();
        (
            self.cert.replace("{id}", &id),
            self.key.replace("{id}", &id),
        )
    }

    /// Makes relative paths relative to `dir` (the config file's folder),
    /// so a node started from any working directory finds the files.
    fn resolve(&mut self, dir: &Path) {
        let fix = |p: &mut String| {
            if !p.is_empty() && Path::new(p.as_str()).is_relative() {
                *p = dir.join(p.as_str()).display().to_string();
            }
        };
        fix(&mut self.ca);
        fix(&mut self.cert);
        fix(&mut self.key);
        self.client_cert.as_mut().map(fix);
        self.client_key.as_mut().map(fix);
    }
}

/// One coordinator group. Its replicas are nodes (from `[[nodes]]`); a node
/// that is also a shard replica runs both in one `pact` process, where all
/// its groups share one store and one Raft router, so the group's id must
/// differ from the ids of the shards on its replicas.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// Group id, >= 1 (0 names implicit single-operation transactions).
    pub group: u64,
    pub replicas: Vec<NodeId>,
}

/// One node: a process hosting shard replicas, a coordinator replica, or
/// both (`pact`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub id: NodeId,
    /// `host:port` of the client-facing gRPC services: `pact.v1.Kv` where
    /// the node hosts shards, `pact.v1.Txn` where it hosts a coordinator
    /// replica. Clients use only this.
    pub addr: String,
    /// `host:port` of the internal services, which only other nodes call:
    /// `pact.v1.RaftTransport` on every node, `pact.v1.Participant`
    /// (transaction reads, writes, prepare, decide) where it hosts shards.
    /// Required, so that no config exposes them on the client port by
    /// omission; firewall it from clients (or turn on `[tls]`).
    pub peer_addr: String,
}

/// One shard (Raft group) and the nodes that replicate it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardConfig {
    pub id: ShardId,
    pub replicas: Vec<NodeId>,
    /// Range scheme only: inclusive start key; the shard ends where the next
    /// start (in key order) begins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
}

/// Slowest snapshot rate `raft.snapshot_kib_per_sec` accepts (KiB/s).
pub const MIN_SNAPSHOT_KIB_PER_SEC: u64 = 256;

/// The shortest `raft.heartbeat_ms`: the transport takes five empty
/// appends within 100 ms, below the group's purge point, for a
/// replication stream that lost its place (`pact_raft` network), so
/// heartbeats must come further apart than 25 ms.
pub const MIN_HEARTBEAT_MS: u64 = 30;

/// Raft timing and log-compaction knobs shared by all shards.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftTuning {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many logs since the last one.
    pub snapshot_logs: u64,
    /// Logs kept behind a snapshot so slow followers can catch up without a
    /// full snapshot transfer.
    pub keep_logs: u64,
    /// Linearizable reads on a leader lease (no quorum round per read while
    /// a quorum acknowledged the leader within `election_timeout_max_ms`)
    /// instead of a ReadIndex round each. Safe with clocks that tick at the
    /// same rate (not necessarily in sync): a restarted replica grants no
    /// vote for a lease's length. Off: every read confirms with a quorum.
    pub lease_reads: bool,
    /// How often each node looks whether it leads at least two groups
    /// more than another voter of one of them, and hands one on
    /// (`pact_raft::balance`). 0 turns leader balancing off.
    pub balance_leaders_ms: u64,
    /// Nodes that should lead, best first: each balancing round hands a
    /// group to the first of these among its voters that ranks above its
    /// leader and is caught up (groups with none of them among their
    /// voters are spread as usual). Meant for nodes that share one
    /// machine, as the playground's do: there a leader on another node
    /// buys no cores and turns in-process calls into network round trips.
    /// Empty (the default): spread leaders over the nodes. Every node
    /// must have the same list (it is cluster config): two nodes ranking
    /// each other first would hand a group back and forth.
    pub prefer_leaders: Vec<NodeId>,
    /// Most snapshot bytes per second one transfer streams to a follower
    /// (a replica added, moved or rejoining after a lost disk), so that
    /// it does not take the CPU and disk the foreground load needs. 0: no
    /// limit. Each transfer is paced on its own.
    pub snapshot_kib_per_sec: u64,
    /// Most bytes per second a new shard's first copy of its part takes
    /// from the shard that splits (the copy made while that shard still
    /// serves the part, through the new shard's log), so that it does not
    /// take the disk and CPU the foreground load needs. 0: no limit.
    pub split_copy_kib_per_sec: u64,
    /// Split a shard by itself when its leader takes more key-addressed
    /// requests per second than this, on average over `auto_split_secs`
    /// (a range shard at the median of the keys requested meanwhile, a
    /// hash shard in the middle of its ring share). 0: off.
    pub auto_split_ops_per_sec: u64,
    /// Split a shard by itself when its data (keys and values, as its
    /// leader's replica holds them) passes this many bytes (a range shard
    /// at the key that halves its bytes, a hash shard in the middle of its
    /// ring share). Measured by a scan paced like a split's copy
    /// (`split_copy_kib_per_sec`), at most once per `auto_split_secs`.
    /// 0: off.
    pub auto_split_bytes: u64,
    /// The window of `auto_split_ops_per_sec`, and the least time between
    /// two measurements for `auto_split_bytes`, in seconds.
    pub auto_split_secs: u64,
    /// No shard splits by itself once the cluster has this many shards
    /// (those merged away not counted).
    pub auto_split_max_shards: u64,
    /// How often the metadata group's leader asks each shard merged into
    /// another whether it may retire, and retires those that may (as
    /// `txn admin shard retire` does), in seconds. A merged shard may
    /// retire once its commit outcomes passed the record horizon
    /// (`transactions.record_retention_s` after its last commit). 0: off
    /// (merged shards retire only when an operator asks).
    pub retire_merged_secs: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            heartbeat_ms: 100,
            election_timeout_min_ms: 400,
            election_timeout_max_ms: 800,
            snapshot_logs: 5000,
            keep_logs: 1000,
            lease_reads: true,
            balance_leaders_ms: 30_000,
            prefer_leaders: Vec::new(),
            snapshot_kib_per_sec: 0,
            split_copy_kib_per_sec: DEFAULT_SPLIT_COPY_KIB_PER_SEC,
            auto_split_ops_per_sec: 0,
            auto_split_bytes: 0,
            auto_split_secs: 60,
            auto_split_max_shards: 16,
            retire_merged_secs: 60,
        }
    }
}

/// The default pace of a split's first copy (KiB/s): on the 2-core test
/// machine an unpaced copy (about 7 MiB/s under load) cut YCSB-A to a
/// tenth of its throughput for the copy's length (docs/performance.md).
pub const DEFAULT_SPLIT_COPY_KIB_PER_SEC: u64 = 4096;

/// How long open transactions may live without their client.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TxnTuning {
    /// An open transaction whose client sends no request (heartbeats do
    /// not count) for this long is aborted: a live client that went idle
    /// holding locks. Interactive sessions may want it long.
    pub idle_timeout_ms: u64,
    /// An open transaction whose client stops heartbeating for this long is
    /// presumed dead and aborted, and its locks freed. Clients heartbeat
    /// every third of it while a transaction is open.
    pub lease_ms: u64,
    /// How long a finished transaction's outcome stays answerable by
    /// TxnStatus. Records of older transactions are garbage-collected and
    /// TxnStatus calls such a transaction "expired" (a client that saw
    /// "unknown" must ask within this time).
    pub record_retention_s: u64,
    /// How often a coordinator leader collects records past the
    /// retention (and tells the shards to).
    pub gc_interval_ms: u64,
}

impl Default for TxnTuning {
    fn default() -> Self {
        TxnTuning {
            idle_timeout_ms: 60_000,
            lease_ms: 1_500,
            record_retention_s: 600,
            gc_interval_ms: 10_000,
        }
    }
}

/// The memory a node's storage engine (fjall) may hold, per node.
///
/// Left at fjall's own defaults, a node's memtables grew to 64 MiB per
/// keyspace and its journal to 512 MiB before anything was flushed, which
/// looked like a leak of about 3 KB per transaction for the first hundred
/// thousand transactions. These bounds make a node's memory flat after
/// warm-up: about `cache_mb` plus four times `memtable_mb` (plus the
/// in-memory overhead of memtable entries), whatever the history.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageTuning {
    /// Block cache shared by every keyspace of the node.
    pub cache_mb: u64,
    /// A keyspace's in-memory write buffer is flushed to disk at this
    /// size. Applies to keyspaces created with it (a new data directory);
    /// an older directory keeps the size it was created with, and the
    /// journal bound below still caps it.
    pub memtable_mb: u64,
    /// Journal kept on disk before the oldest memtables are flushed so its
    /// files can be deleted (fjall's minimum is 64). fjall's journal files
    /// are 64 MiB each: at 64, every new file put the node over the bound,
    /// and fjall flushed every keyspace's memtable at once (on every node
    /// together, as they write alike), a stall of 100-300 ms every half
    /// minute under load. Above one file's size, only keyspaces that
    /// still pin an older file are flushed: the small, rarely written ones.
    pub journal_mb: u64,
    /// Write batches queued for the node's single writer thread at most.
    /// Raft appends and applies wait for room rather than fail (they must
    /// not be lost): this is backpressure, bounding the memory of batches
    /// written faster than the disk syncs them.
    pub writer_queue: u64,
    /// Disk space, in MiB, a snapshot being received must leave free on
    /// the data directory's file system: a chunk that would eat into it
    /// is refused and the transfer dropped (its file removed), so a
    /// snapshot too large for the disk, or a peer sending garbage, fails
    /// that transfer rather than filling the disk the node's own writes
    /// need (a write that finds the disk full stops the node). 0: no
    /// check.
    pub disk_reserve_mb: u64,
}

impl Default for StorageTuning {
    fn default() -> Self {
        StorageTuning {
            cache_mb: 32,
            memtable_mb: 4,
            journal_mb: 128,
            writer_queue: 4096,
            disk_reserve_mb: 256,
        }
    }
}

/// Admission limits and queue bounds: what a server holds at most, so that
/// its memory under overload is bounded by configuration rather than by
/// the offered load. Past a limit a request is refused at once with
/// OVERLOADED (gRPC `RESOURCE_EXHAUSTED`, retryable), leaving nothing
/// behind. Internal queues that must not lose work (Raft appends and
/// applies, decisions) make their producers wait instead.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Open transactions (begun, not yet answered at commit) a coordinator
    /// leader holds; a `Begin` (or one-shot `Execute`) past it is refused.
    pub max_open_txns: u32,
    /// Requests a node serves at once on its shards (`Kv` and the
    /// transactional `Participant` calls that take locks or propose);
    /// decisions, inquiries and status are exempt, as they finish work
    /// already admitted.
    pub max_in_flight_requests: u32,
    /// Messages queued for a coordinator's 2PC owner task; a commit or a
    /// status query that finds it full is refused.
    pub coordinator_queue: u32,
    /// Requests that may wait for one key's lock at once on a shard
    /// leader; one more does not queue (a plain write is refused with
    /// OVERLOADED, a transaction's request aborts it as a lock wait that
    /// ran out would), so a hot key cannot hold every admitted request
    /// waiting for seconds.
    pub max_waiters_per_key: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_open_txns: 1024,
            max_in_flight_requests: 256,
            coordinator_queue: 8192,
            max_waiters_per_key: 16,
        }
    }
}

/// Accepts `host:port` with a non-empty host and a `u16` port. `rsplit_once`
/// so that bracketed IPv6 hosts (`[::1]:7001`) work.
fn check_addr(addr: &str) -> Result<(), String> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("address {addr:?} is not host:port (missing ':')"));
    };
    if host.is_empty() || host.chars().any(char::is_whitespace) {
        return Err(format!("address {addr:?} has an empty or malformed host"));
    }
    if port.parse::<u16>().is_err() {
        return Err(format!(
            "address {addr:?} has port {port:?}, which is not a number in 0..=65535"
        ));
    }
    Ok(())
}

impl ClusterConfig {
    /// Parses TOML and validates the result.
    pub fn from_toml_str(s: &str) -> Result<Self, ConfigError> {
        let cfg: ClusterConfig =
            toml::from_str(s).map_err(|e| ConfigError::Parse(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads, parses and validates a config file. Relative `[tls]` paths
    /// come back relative to the file's folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let mut cfg = Self::from_toml_str(&text)?;
        if let Some(t) = cfg.tls.as_mut() {
            t.resolve(path.parent().unwrap_or(Path::new(".")));
        }
        Ok(cfg)
    }

    /// Serializes to TOML that [`ClusterConfig::from_toml_str`] reads back.
    ///
    /// Cannot fail for a config that passes [`ClusterConfig::validate`]. For
    /// one that does not (e.g. an id above `i64::MAX`, which TOML cannot
    /// express) the result is a TOML comment naming the problem, which then
    /// fails to load instead of loading as something else.
    pub fn to_toml_string(&self) -> String {
        match toml::to_string(self) {
            Ok(s) => s,
            Err(e) => format!("# cluster config could not be serialized: {e}\n"),
        }
    }

    /// Checks every cross-field rule; see the crate docs for why this matters.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_nodes()?;
        self.validate_shards()?;
        self.validate_partitioning()?;
        self.validate_coordinators()?;
        self.validate_transactions()?;
        self.validate_storage()?;
        self.validate_limits()?;
        self.validate_tls()?;
        self.validate_raft()
    }

    fn validate_storage(&self) -> Result<(), ConfigError> {
        let t = &self.storage;
        // Bounds keep the byte counts far from overflow and refuse values
        // that fjall itself would reject with a panic.
        for (name, v, min, max) in [
            ("cache_mb", t.cache_mb, 1, 1 << 20),
            ("memtable_mb", t.memtable_mb, 1, 1 << 10),
            ("journal_mb", t.journal_mb, 64, 1 << 20),
            ("writer_queue", t.writer_queue, 1, 1 << 20),
            ("disk_reserve_mb", t.disk_reserve_mb, 0, 1 << 30),
        ] {
            if !(min..=max).contains(&v) {
                return invalid(format!(
                    "storage.{name} is {v}; it must be in {min}..={max}"
                ));
            }
        }
        Ok(())
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        // Zero would refuse everything; the top keeps a misplaced digit
        // from turning a bound into none.
        for (name, v) in [
            ("max_open_txns", l.max_open_txns),
            ("max_in_flight_requests", l.max_in_flight_requests),
            ("coordinator_queue", l.coordinator_queue),
            ("max_waiters_per_key", l.max_waiters_per_key),
        ] {
            if !(1..=1 << 20).contains(&v) {
                return invalid(format!(
                    "limits.{name} is {v}; it must be in 1..={}",
                    1 << 20
                ));
            }
        }
        Ok(())
    }

    fn validate_coordinators(&self) -> Result<(), ConfigError> {
        let mut groups = BTreeSet::new();
        let mut coord_nodes = BTreeSet::new();
        for c in &self.coordinators {
            if c.group == 0 || c.group > MAX_TOML_INT {
                return invalid(format!(
                    "coordinator group id {} must be in 1..={MAX_TOML_INT}",
                    c.group
                ));
            }
            if !groups.insert(c.group) {
                return invalid(format!("duplicate coordinator group {}", c.group));
            }
            if c.replicas.is_empty() {
                return invalid(format!("coordinator group {} has no replicas", c.group));
            }
            for r in &c.replicas {
                if self.node(*r).is_none() {
                    return invalid(format!(
                        "coordinator group {} names unknown node {r}",
                        c.group
                    ));
                }
                // One process hosts both, and Raft routes messages and
                // keeps logs by group id alone: equal ids would be one group.
                if self.shards_of_node(*r).contains(&ShardId(c.group)) {
                    return invalid(format!(
                        "coordinator group {g} and shard {g} are both on node {r}, which hosts every group in one store and routes Raft messages by group id; give the coordinator group an id no shard of its replicas has",
                        g = c.group
                    ));
                }
                if !coord_nodes.insert(*r) {
                    return invalid(format!(
                        "node {r} is in two coordinator groups (or twice in one)"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The coordinator group a node serves, if any.
    pub fn coordinator_of(&self, node: NodeId) -> Option<&CoordinatorConfig> {
        self.coordinators
            .iter()
            .find(|c| c.replicas.contains(&node))
    }

    /// The nodes of the metadata group: the replicas of the coordinator
    /// group with the lowest id (none if the config has no coordinator
    /// group, and then there is no metadata group).
    pub fn meta_replicas(&self) -> Vec<NodeId> {
        self.coordinators
            .iter()
            .min_by_key(|c| c.group)
            .map(|c| c.replicas.clone())
            .unwrap_or_default()
    }

    /// The embedded default used when no config file is given, what `txn
    /// playground` starts: 3 nodes on 127.0.0.1:7001-7003 (peer ports
    /// 7021-7023), each a replica of 3 shards (3 replicas each) and of
    /// coordinator group 4, one `pact` process per node.
    pub fn embedded_default() -> Self {
        // Fixed, valid arguments: this cannot fail.
        Self::local_combined(3, 3, 3, 7001)
            .unwrap_or_else(|e| unreachable!("embedded default: {e}"))
    }

    /// [`ClusterConfig::local`] plus one coordinator group on the first
    /// `replication` of the same nodes, so that every node may run as one
    /// `pact` process. The group's id is `shards + 1`: shard and
    /// coordinator replicas share a node's Raft router and store, where
    /// group ids must differ.
    pub fn local_combined(
        nodes: u64,
        shards: u64,
        replication: u64,
        base_port: u16,
    ) -> Result<Self, ConfigError> {
        let mut c = Self::local_layout(nodes, shards, replication, 0, base_port)?;
        c.coordinators.push(CoordinatorConfig {
            group: shards + 1,
            replicas: (1..=replication).map(NodeId).collect(),
        });
        c.validate()?;
        Ok(c)
    }

    /// Whether node `id` hosts both shard replicas and a coordinator
    /// replica, which only the `pact` server runs in one process.
    pub fn is_combined(&self, id: NodeId) -> bool {
        self.coordinator_of(id).is_some() && !self.shards_of_node(id).is_empty()
    }

    /// [`ClusterConfig::local`] plus one coordinator group of
    /// `coordinator_replicas` nodes on the ports after the participants'.
    pub fn local_with_coordinators(
        nodes: u64,
        shards: u64,
        replication: u64,
        coordinator_replicas: u64,
        base_port: u16,
    ) -> Result<Self, ConfigError> {
        if coordinator_replicas == 0 {
            return invalid("a coordinator group needs at least one replica");
        }
        let mut c =
            Self::local_layout(nodes, shards, replication, coordinator_replicas, base_port)?;
        let replicas = (nodes + 1..=nodes + coordinator_replicas)
            .map(NodeId)
            .collect();
        c.coordinators
            .push(CoordinatorConfig { group: 1, replicas });
        c.validate()?;
        Ok(c)
    }

    fn validate_nodes(&self) -> Result<(), ConfigError> {
        if self.nodes.is_empty() {
            return invalid("no nodes: at least one [[nodes]] entry is required");
        }
        let mut ids = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        for n in &self.nodes {
            if n.id.0 == 0 {
                // 0 means "no leader known" in status replies and hints.
                return invalid("node id 0 is reserved; node ids start at 1");
            }
            if n.id.0 > MAX_TOML_INT {
                return invalid(format!("node id {} is larger than {MAX_TOML_INT}", n.id));
            }
            if !ids.insert(n.id) {
                return invalid(format!("duplicate node id {}", n.id));
            }
            for (field, a) in [("addr", &n.addr), ("peer_addr", &n.peer_addr)] {
                if let Err(e) = check_addr(a) {
                    return invalid(format!("node {} {field}: {e}", n.id));
                }
                // Client and peer ports must differ: they serve different
                // services, and one socket cannot be both.
                if !addrs.insert(a.as_str()) {
                    return invalid(format!(
                        "duplicate node address {a:?} (node {} {field}); every addr and peer_addr must be distinct",
                        n.id
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_tls(&self) -> Result<(), ConfigError> {
        let Some(t) = &self.tls else { return Ok(()) };
        for (name, v) in [("ca", &t.ca), ("cert", &t.cert), ("key", &t.key)] {
            if v.trim().is_empty() {
                return invalid(format!("tls.{name} is empty; give a PEM file path"));
            }
        }
        if t.client_cert.is_some() != t.client_key.is_some() {
            return invalid("tls.client_cert and tls.client_key go together: give both or neither");
        }
        Ok(())
    }

    fn validate_shards(&self) -> Result<(), ConfigError> {
        if self.shards.is_empty() {
            return invalid("no shards: at least one [[shards]] entry is required");
        }
        let mut ids = BTreeSet::new();
        for s in &self.shards {
            if s.id.0 > MAX_TOML_INT {
                return invalid(format!("shard id {} is larger than {MAX_TOML_INT}", s.id));
            }
            if s.id.0 == 0 {
                return invalid(
                    "shard id 0 is reserved (it means \"no shard\" in requests); number shards from 1",
                );
            }
            if !ids.insert(s.id) {
                return invalid(format!("duplicate shard id {}", s.id));
            }
            if s.replicas.is_empty() {
                return invalid(format!("shard {} has no replicas", s.id));
            }
            let mut seen = BTreeSet::new();
            for r in &s.replicas {
                if !seen.insert(*r) {
                    return invalid(format!("shard {} lists replica node {r} twice", s.id));
                }
                if self.node(*r).is_none() {
                    return invalid(format!(
                        "shard {} has replica node {r}, which is an unknown node",
                        s.id
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_partitioning(&self) -> Result<(), ConfigError> {
        match self.partitioning {
            PartitionScheme::Hash => {
                if !(1..=MAX_VIRTUAL_NODES).contains(&self.virtual_nodes) {
                    return invalid(format!(
                        "virtual_nodes is {}, must be in 1..={MAX_VIRTUAL_NODES}",
                        self.virtual_nodes
                    ));
                }
                if let Some(s) = self.shards.iter().find(|s| s.start.is_some()) {
                    return invalid(format!(
                        "shard {} has a start key, but start is only allowed with range partitioning",
                        s.id
                    ));
                }
                let points = self.shards.len() as u64 * u64::from(self.virtual_nodes);
                if points > MAX_RING_POINTS {
                    return invalid(format!(
                        "{} shards of {} ring points each make {points} points, more than \
                         {MAX_RING_POINTS}; use fewer virtual_nodes",
                        self.shards.len(),
                        self.virtual_nodes
                    ));
                }
            }
            PartitionScheme::Range => {
                // virtual_nodes is unused here, but a nonsense value still
                // signals a broken file, and switching schemes later should
                // not uncover an error.
                if !(1..=MAX_VIRTUAL_NODES).contains(&self.virtual_nodes) {
                    return invalid(format!(
                        "virtual_nodes is {}, must be in 1..={MAX_VIRTUAL_NODES}",
                        self.virtual_nodes
                    ));
                }
                let mut starts = BTreeSet::new();
                for s in &self.shards {
                    let Some(start) = &s.start else {
                        return invalid(format!(
                            "shard {} has no start key; range partitioning needs one on every shard",
                            s.id
                        ));
                    };
                    if !starts.insert(start.as_str()) {
                        return invalid(format!("duplicate start key {start:?} (shard {})", s.id));
                    }
                }
                // Starts are unique, so at most one can be empty; require it so
                // the lowest keys have an owner.
                if !starts.contains("") {
                    return invalid(
                        "no shard has start \"\": exactly one shard must start the first range at the empty key",
                    );
                }
            }
        }
        Ok(())
    }

    fn validate_transactions(&self) -> Result<(), ConfigError> {
        let t = &self.transactions;
        for (name, v) in [
            ("idle_timeout_ms", t.idle_timeout_ms),
            ("lease_ms", t.lease_ms),
            ("record_retention_s", t.record_retention_s),
            ("gc_interval_ms", t.gc_interval_ms),
        ] {
            if v > MAX_TOML_INT {
                return invalid(format!(
                    "transactions.{name} is {v}, larger than {MAX_TOML_INT}"
                ));
            }
        }
        // Heartbeats go every third of the lease; under 300 ms they would
        // be a steady load, and a busy machine would expire live clients.
        if t.lease_ms < 300 {
            return invalid(format!(
                "transactions.lease_ms ({}) must be at least 300",
                t.lease_ms
            ));
        }
        if t.record_retention_s == 0 {
            return invalid(
                "transactions.record_retention_s must be at least 1: a client told \"unknown\" needs time to ask",
            );
        }
        // Durations far past any use would overflow the clocks' arithmetic
        // at run time, long after the config was accepted.
        for (name, v, max) in [
            ("idle_timeout_ms", t.idle_timeout_ms, MAX_WAIT_MS),
            ("lease_ms", t.lease_ms, MAX_WAIT_MS),
            ("gc_interval_ms", t.gc_interval_ms, MAX_WAIT_MS),
            ("record_retention_s", t.record_retention_s, MAX_RETENTION_S),
        ] {
            if v > max {
                return invalid(format!("transactions.{name} ({v}) must be at most {max}"));
            }
        }
        if t.gc_interval_ms < 100 {
            return invalid(format!(
                "transactions.gc_interval_ms ({}) must be at least 100",
                t.gc_interval_ms
            ));
        }
        if t.idle_timeout_ms < t.lease_ms {
            return invalid(format!(
                "transactions.idle_timeout_ms ({}) must not be less than transactions.lease_ms ({})",
                t.idle_timeout_ms, t.lease_ms
            ));
        }
        Ok(())
    }

    fn validate_raft(&self) -> Result<(), ConfigError> {
        let r = &self.raft;
        let fields = [
            ("heartbeat_ms", r.heartbeat_ms),
            ("election_timeout_min_ms", r.election_timeout_min_ms),
            ("election_timeout_max_ms", r.election_timeout_max_ms),
            ("snapshot_logs", r.snapshot_logs),
            ("keep_logs", r.keep_logs),
            ("balance_leaders_ms", r.balance_leaders_ms),
            ("snapshot_kib_per_sec", r.snapshot_kib_per_sec),
            ("split_copy_kib_per_sec", r.split_copy_kib_per_sec),
            ("auto_split_ops_per_sec", r.auto_split_ops_per_sec),
            ("auto_split_bytes", r.auto_split_bytes),
            ("auto_split_secs", r.auto_split_secs),
            ("auto_split_max_shards", r.auto_split_max_shards),
            ("retire_merged_secs", r.retire_merged_secs),
        ];
        if let Some((name, v)) = fields.iter().find(|(_, v)| *v > MAX_TOML_INT) {
            return invalid(format!("raft.{name} is {v}, larger than {MAX_TOML_INT}"));
        }
        if r.heartbeat_ms < MIN_HEARTBEAT_MS {
            return invalid(format!(
                "raft.heartbeat_ms ({}) must be at least {MIN_HEARTBEAT_MS}: a faster stream of \
                 empty appends is how a replica's transport tells a replication stream that \
                 cannot go on",
                r.heartbeat_ms
            ));
        }
        if r.snapshot_kib_per_sec != 0 && r.snapshot_kib_per_sec < MIN_SNAPSHOT_KIB_PER_SEC {
            return invalid(format!(
                "raft.snapshot_kib_per_sec ({}) must be 0 (no limit) or at least {MIN_SNAPSHOT_KIB_PER_SEC}: \
                 a slower transfer may never catch up with the log",
                r.snapshot_kib_per_sec
            ));
        }
        if r.split_copy_kib_per_sec != 0 && r.split_copy_kib_per_sec < MIN_SNAPSHOT_KIB_PER_SEC {
            return invalid(format!(
                "raft.split_copy_kib_per_sec ({}) must be 0 (no limit) or at least \
                 {MIN_SNAPSHOT_KIB_PER_SEC}: a slower copy may never finish under writes",
                r.split_copy_kib_per_sec
            ));
        }
        if r.auto_split_secs == 0 {
            return invalid("raft.auto_split_secs must be at least 1");
        }
        if !r.prefer_leaders.is_empty() && r.balance_leaders_ms == 0 {
            return invalid(
                "raft.prefer_leaders needs raft.balance_leaders_ms above 0: the balancing \
                 rounds are what move leaders to the listed nodes",
            );
        }
        for (i, n) in r.prefer_leaders.iter().enumerate() {
            if r.prefer_leaders[..i].contains(n) {
                return invalid(format!("raft.prefer_leaders names node {n} twice"));
            }
            if self.node(*n).is_none() {
                return invalid(format!(
                    "raft.prefer_leaders names node {n}, which is not among [[nodes]]"
                ));
            }
        }
        if r.balance_leaders_ms != 0 && r.balance_leaders_ms < 500 {
            return invalid(format!(
                "raft.balance_leaders_ms ({}) must be 0 (off) or at least 500: each round may move a leader",
                r.balance_leaders_ms
            ));
        }
        // Followers must hear several heartbeats per election timeout, or
        // they start elections against a healthy leader.
        if r.election_timeout_min_ms <= r.heartbeat_ms {
            return invalid(format!(
                "raft.election_timeout_min_ms ({}) must be greater than raft.heartbeat_ms ({})",
                r.election_timeout_min_ms, r.heartbeat_ms
            ));
        }
        if r.election_timeout_max_ms < r.election_timeout_min_ms {
            return invalid(format!(
                "raft.election_timeout_max_ms ({}) must not be less than raft.election_timeout_min_ms ({})",
                r.election_timeout_max_ms, r.election_timeout_min_ms
            ));
        }
        if r.snapshot_logs == 0 {
            return invalid("raft.snapshot_logs must be greater than 0");
        }
        // openraft refuses equal bounds (it picks a timeout between them);
        // and the timings are multiplied at run time: past an hour they
        // mean nothing and could overflow.
        if r.election_timeout_max_ms == r.election_timeout_min_ms {
            return invalid(format!(
                "raft.election_timeout_max_ms ({}) must be greater than \
                 raft.election_timeout_min_ms ({})",
                r.election_timeout_max_ms, r.election_timeout_min_ms
            ));
        }
        for (name, v) in [
            ("heartbeat_ms", r.heartbeat_ms),
            ("election_timeout_min_ms", r.election_timeout_min_ms),
            ("election_timeout_max_ms", r.election_timeout_max_ms),
            ("balance_leaders_ms", r.balance_leaders_ms),
        ] {
            if v > MAX_WAIT_MS {
                return invalid(format!("raft.{name} ({v}) must be at most {MAX_WAIT_MS}"));
            }
        }
        Ok(())
    }

    /// The node with this id, if configured.
    pub fn node(&self, id: NodeId) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The shard with this id, if configured.
    pub fn shard(&self, id: ShardId) -> Option<&ShardConfig> {
        self.shards.iter().find(|s| s.id == id)
    }

    /// Whether coordinator group `group` is one this config lists whose
    /// id no shard has: only such a group's replicas can move (a node's
    /// groups share one router, and its records of what it hosts, keyed
    /// by id).
    pub fn coordinator_can_move(&self, group: u64) -> bool {
        self.coordinators.iter().any(|g| g.group == group) && self.shard(ShardId(group)).is_none()
    }

    /// Shards replicated on this node, sorted.
    pub fn shards_of_node(&self, id: NodeId) -> Vec<ShardId> {
        let mut v: Vec<ShardId> = self
            .shards
            .iter()
            .filter(|s| s.replicas.contains(&id))
            .map(|s| s.id)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The key router for this config. Infallible after [`validate`]; on an
    /// unvalidated range config, shards without a start are left out.
    ///
    /// [`validate`]: ClusterConfig::validate
    pub fn shard_map(&self) -> ShardMap {
        match self.partitioning {
            PartitionScheme::Hash => {
                let ids: Vec<ShardId> = self.shards.iter().map(|s| s.id).collect();
                ShardMap::new_hash(&ids, self.virtual_nodes)
            }
            PartitionScheme::Range => {
                let starts: Vec<(Vec<u8>, ShardId)> = self
                    .shards
                    .iter()
                    .filter_map(|s| s.start.as_ref().map(|st| (st.as_bytes().to_vec(), s.id)))
                    .collect();
                ShardMap::new_range(&starts)
            }
        }
    }

    /// A local development cluster on 127.0.0.1: `nodes` nodes with client
    /// ports `base_port, base_port+1, ...` and peer ports from
    /// [`LOCAL_PEER_PORT_OFFSET`] above those (or the node count, if
    /// larger); `shards` shards, each replicated on `replication` nodes
    /// chosen round-robin (shard i on nodes i, i+1, ... mod nodes); Hash
    /// scheme. Node ids start at 1, shard ids start at 1.
    pub fn local(
        nodes: u64,
        shards: u64,
        replication: u64,
        base_port: u16,
    ) -> Result<Self, ConfigError> {
        let cfg = Self::local_layout(nodes, shards, replication, 0, base_port)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// [`ClusterConfig::local`]'s layout, with `extra` more nodes after the
    /// participants (not yet in any group) sharing the port plan.
    fn local_layout(
        nodes: u64,
        shards: u64,
        replication: u64,
        extra: u64,
        base_port: u16,
    ) -> Result<Self, ConfigError> {
        if nodes == 0 {
            return invalid("local cluster needs at least one node");
        }
        if shards == 0 {
            return invalid("local cluster needs at least one shard");
        }
        if shards > MAX_LOCAL_SHARDS {
            return invalid(format!(
                "local cluster with {shards} shards is too large (max {MAX_LOCAL_SHARDS})"
            ));
        }
        if replication == 0 || replication > nodes {
            return invalid(format!(
                "replication {replication} must be in 1..={nodes} (the number of nodes)"
            ));
        }
        let total = nodes.saturating_add(extra);
        let offset = total.max(u64::from(LOCAL_PEER_PORT_OFFSET));
        let last_port = u64::from(base_port)
            .saturating_add(offset)
            .saturating_add(total - 1);
        if last_port > u64::from(u16::MAX) {
            return invalid(format!(
                "{total} nodes from port {base_port} would need peer port {last_port}, above 65535"
            ));
        }
        let node_list = (0..total)
            .map(|i| NodeConfig {
                id: NodeId(i + 1),
                addr: format!("127.0.0.1:{}", u64::from(base_port) + i),
                peer_addr: format!("127.0.0.1:{}", u64::from(base_port) + offset + i),
            })
            .collect();
        let shard_list = (0..shards)
            .map(|i| ShardConfig {
                id: ShardId(i + 1),
                replicas: (0..replication)
                    .map(|k| NodeId((i + k) % nodes + 1))
                    .collect(),
                start: None,
            })
            .collect();
        Ok(ClusterConfig {
            partitioning: PartitionScheme::Hash,
            virtual_nodes: default_vnodes(),
            nodes: node_list,
            shards: shard_list,
            raft: RaftTuning::default(),
            transactions: TxnTuning::default(),
            storage: StorageTuning::default(),
            limits: Limits::default(),
            coordinators: Vec::new(),
            tls: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_layout_has_a_coordinator_group_apart_from_shards() {
        let c = ClusterConfig::local_with_coordinators(3, 3, 3, 3, 7001).unwrap();
        assert_eq!(c.nodes.len(), 6);
        assert_eq!(c.coordinators.len(), 1);
        assert_eq!(c.coordinator_of(NodeId(5)).map(|g| g.group), Some(1));
        assert_eq!(c.coordinator_of(NodeId(1)), None);
        assert!((1..=6).all(|n| !c.is_combined(NodeId(n))));
        assert_eq!(c.nodes[5].addr, "127.0.0.1:7006");
        let back = ClusterConfig::from_toml_str(&c.to_toml_string()).unwrap();
        assert_eq!(back, c);
        // Shard 1 lives on node 1: group 1 may not join it there.
        let mut bad = c.clone();
        bad.coordinators[0].replicas.push(NodeId(1));
        let err = bad.validate().unwrap_err().to_string();
        assert!(
            err.contains("coordinator group 1 and shard 1 are both on node 1"),
            "{err}"
        );
        let mut bad = c.clone();
        bad.coordinators[0].group = 0;
        assert!(bad.validate().is_err());
        let mut bad = c;
        bad.coordinators[0].replicas = vec![NodeId(99)];
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("unknown node 99"));
    }

    #[test]
    fn combined_layout_puts_both_roles_on_every_node() {
        let c = ClusterConfig::local_combined(3, 3, 3, 7001).unwrap();
        assert_eq!(c, ClusterConfig::embedded_default());
        assert_eq!(c.nodes.len(), 3);
        assert_eq!(c.coordinators.len(), 1);
        // Clear of the shards' group ids 1-3.
        assert_eq!(c.coordinators[0].group, 4);
        for n in 1..=3 {
            let id = NodeId(n);
            assert_eq!(
                c.shards_of_node(id),
                vec![ShardId(1), ShardId(2), ShardId(3)]
            );
            assert_eq!(c.coordinator_of(id).map(|g| g.group), Some(4));
            assert!(c.is_combined(id));
        }
        let port = |a: &str| a.rsplit_once(':').unwrap().1.parse::<u16>().unwrap();
        let clients: Vec<u16> = c.nodes.iter().map(|n| port(&n.addr)).collect();
        let peers: Vec<u16> = c.nodes.iter().map(|n| port(&n.peer_addr)).collect();
        assert_eq!(clients, vec![7001, 7002, 7003]);
        assert_eq!(peers, vec![7021, 7022, 7023]);
        let back = ClusterConfig::from_toml_str(&c.to_toml_string()).unwrap();
        assert_eq!(back, c);
        // The group on fewer nodes than the shards; a single-shard cluster
        // still keeps the ids apart.
        let c = ClusterConfig::local_combined(5, 2, 3, 9000).unwrap();
        assert_eq!(c.coordinators[0].group, 3);
        assert_eq!(
            c.coordinators[0].replicas,
            vec![NodeId(1), NodeId(2), NodeId(3)]
        );
        assert!(!c.is_combined(NodeId(4)) && c.coordinator_of(NodeId(4)).is_none());
        assert_eq!(
            ClusterConfig::local_combined(1, 1, 1, 9000)
                .unwrap()
                .coordinators[0]
                .group,
            2
        );
        assert!(ClusterConfig::local_combined(2, 1, 3, 9000).is_err());
    }

    #[test]
    fn group_ids_cannot_collide_on_a_node() {
        let nodes = nodes_toml(3);
        let shards =
            "[[shards]]\nid = 1\nreplicas = [1, 2]\n\n[[shards]]\nid = 2\nreplicas = [2, 3]\n";
        let with = |group: u64, replicas: &str| {
            format!(
                "partitioning = \"hash\"\n{nodes}{shards}\n[[coordinators]]\ngroup = {group}\nreplicas = {replicas}\n"
            )
        };
        // A node may host shards and a coordinator replica, with other ids.
        let ok = ClusterConfig::from_toml_str(&with(3, "[1, 2, 3]")).unwrap();
        assert!(ok.is_combined(NodeId(2)));
        // Shard 2 is on nodes 2 and 3: group 2 may not be there.
        expect_invalid(
            &with(2, "[1, 2, 3]"),
            &[
                "coordinator group 2 and shard 2 are both on node 2",
                "group id",
            ],
        );
        expect_invalid(
            &with(2, "[3]"),
            &["coordinator group 2 and shard 2 are both on node 3"],
        );
        // Equal ids on disjoint nodes are separate stores and routers.
        let apart = ClusterConfig::from_toml_str(&with(2, "[1]")).unwrap();
        assert_eq!(apart.coordinator_of(NodeId(1)).map(|g| g.group), Some(2));
        assert!(apart.is_combined(NodeId(1)));
    }

    const HASH_EXAMPLE: &str = r#"
partitioning = "hash"
virtual_nodes = 64

[[nodes]]
id = 1
addr = "127.0.0.1:7001"
peer_addr = "127.0.0.1:7101"

[[nodes]]
id = 2
addr = "127.0.0.1:7002"
peer_addr = "127.0.0.1:7102"

[[nodes]]
id = 3
addr = "[::1]:7003"
peer_addr = "[::1]:7103"

[[shards]]
id = 1
replicas = [1, 2, 3]

[[shards]]
id = 2
replicas = [2, 3]

[raft]
heartbeat_ms = 50
"#;

    const RANGE_EXAMPLE: &str = r#"
partitioning = "range"

[[nodes]]
id = 1
addr = "db1.example:7001"
peer_addr = "db1.example:7101"

[[nodes]]
id = 2
addr = "db2.example:7001"
peer_addr = "db2.example:7101"

[[shards]]
id = 20
replicas = [1, 2]
start = "m"

[[shards]]
id = 10
replicas = [2, 1]
start = ""
"#;

    fn expect_invalid(toml: &str, needles: &[&str]) {
        match ClusterConfig::from_toml_str(toml) {
            Err(ConfigError::Invalid(msg)) => {
                for n in needles {
                    assert!(msg.contains(n), "message {msg:?} should mention {n:?}");
                }
            }
            other => panic!("expected Invalid mentioning {needles:?}, got {other:?}"),
        }
    }

    fn nodes_toml(n: u64) -> String {
        (1..=n)
            .map(|i| {
                format!(
                    "[[nodes]]\nid = {i}\naddr = \"127.0.0.1:{}\"\npeer_addr = \"127.0.0.1:{}\"\n",
                    7000 + i,
                    7100 + i
                )
            })
            .collect()
    }

    /// A valid hash config: `top` goes among the top-level keys, `tail` after the
    /// first shard (more shards or a `[raft]` table).
    fn hash_with(top: &str, tail: &str) -> String {
        format!(
            "partitioning = \"hash\"\n{top}\n{}[[shards]]\nid = 1\nreplicas = [1, 2]\n{tail}",
            nodes_toml(2)
        )
    }

    #[test]
    fn parses_hash_example() {
        let cfg = ClusterConfig::from_toml_str(HASH_EXAMPLE).unwrap();
        assert_eq!(cfg.partitioning, PartitionScheme::Hash);
        assert_eq!(cfg.virtual_nodes, 64);
        assert_eq!(cfg.nodes.len(), 3);
        assert_eq!(cfg.node(NodeId(3)).unwrap().addr, "[::1]:7003");
        assert!(cfg.node(NodeId(4)).is_none());
        assert_eq!(
            cfg.shard(ShardId(2)).unwrap().replicas,
            vec![NodeId(2), NodeId(3)]
        );
        assert_eq!(cfg.shards_of_node(NodeId(1)), vec![ShardId(1)]);
        assert_eq!(cfg.shards_of_node(NodeId(3)), vec![ShardId(1), ShardId(2)]);
        // Unset raft fields keep their defaults.
        assert_eq!(cfg.raft.heartbeat_ms, 50);
        assert_eq!(cfg.raft.election_timeout_min_ms, 400);
        assert_eq!(cfg.raft.snapshot_logs, 5000);
        let map = cfg.shard_map();
        assert_eq!(map.shards(), vec![ShardId(1), ShardId(2)]);
        assert!(!map.is_range());
    }

    #[test]
    fn parses_range_example() {
        let cfg = ClusterConfig::from_toml_str(RANGE_EXAMPLE).unwrap();
        assert_eq!(cfg.partitioning, PartitionScheme::Range);
        assert_eq!(cfg.virtual_nodes, 128);
        assert_eq!(cfg.raft, RaftTuning::default());
        let map = cfg.shard_map();
        assert_eq!(map.shard_for_key(b"apple"), ShardId(10));
        assert_eq!(map.shard_for_key(b"m"), ShardId(20));
        assert_eq!(map.shard_for_key(b"zebra"), ShardId(20));
        assert_eq!(
            map.range_of(ShardId(10)),
            Some((Vec::new(), Some(b"m".to_vec())))
        );
        assert_eq!(map.shards_for_range(b"n", None), vec![ShardId(20)]);
        let again = ClusterConfig::from_toml_str(&cfg.to_toml_string()).unwrap();
        assert_eq!(again, cfg);
    }

    #[test]
    fn defaults() {
        let r = RaftTuning::default();
        assert_eq!(
            (
                r.heartbeat_ms,
                r.election_timeout_min_ms,
                r.election_timeout_max_ms
            ),
            (100, 400, 800)
        );
        assert_eq!((r.snapshot_logs, r.keep_logs), (5000, 1000));
        let cfg = ClusterConfig::from_toml_str(&hash_with("", "")).unwrap();
        assert_eq!(cfg.virtual_nodes, 128);
    }

    #[test]
    fn parse_errors_carry_position() {
        let err = ClusterConfig::from_toml_str("partitioning = \"hash\"\nnodes = [\n").unwrap_err();
        match err {
            ConfigError::Parse(msg) => assert!(msg.contains("line"), "{msg}"),
            other => panic!("expected Parse, got {other:?}"),
        }
        let err = ClusterConfig::from_toml_str(
            &hash_with("", "").replace("partitioning = \"hash\"", "partitioning = \"modulo\""),
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::Parse(_)), "{err:?}");
        let err = ClusterConfig::from_toml_str(&hash_with("colour = 1", "")).unwrap_err();
        assert!(
            matches!(err, ConfigError::Parse(ref m) if m.contains("colour")),
            "{err:?}"
        );
        let err =
            ClusterConfig::from_toml_str(&hash_with("", "[raft]\nheartbeat = 5\n")).unwrap_err();
        assert!(
            matches!(err, ConfigError::Parse(ref m) if m.contains("heartbeat")),
            "{err:?}"
        );
        let err = ClusterConfig::from_toml_str(
            &hash_with("", "").replace("id = 1\nreplicas", "id = -1\nreplicas"),
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::Parse(_)), "{err:?}");
    }

    #[test]
    fn rejects_no_nodes() {
        expect_invalid(
            "partitioning = \"hash\"\nnodes = []\n[[shards]]\nid = 1\nreplicas = [1]\n",
            &["no nodes"],
        );
    }

    #[test]
    fn rejects_node_id_zero() {
        expect_invalid(
            "partitioning = \"hash\"\n[[nodes]]\nid = 0\naddr = \"127.0.0.1:1\"\npeer_addr = \"127.0.0.1:2\"\n[[shards]]\nid = 1\nreplicas = [0]\n",
            &["node id 0 is reserved"],
        );
    }

    #[test]
    fn rejects_no_shards() {
        expect_invalid(
            &format!("partitioning = \"hash\"\nshards = []\n{}", nodes_toml(1)),
            &["no shards"],
        );
    }

    #[test]
    fn rejects_duplicate_node_id() {
        let t = format!(
            "partitioning = \"hash\"\n{}[[nodes]]\nid = 2\naddr = \"127.0.0.1:9999\"\npeer_addr = \"127.0.0.1:9998\"\n[[shards]]\nid = 1\nreplicas = [1]\n",
            nodes_toml(2)
        );
        expect_invalid(&t, &["duplicate node id 2"]);
    }

    #[test]
    fn rejects_duplicate_addr() {
        let t = format!(
            "partitioning = \"hash\"\n{}[[nodes]]\nid = 3\naddr = \"127.0.0.1:7001\"\npeer_addr = \"127.0.0.1:7203\"\n[[shards]]\nid = 1\nreplicas = [1]\n",
            nodes_toml(2)
        );
        expect_invalid(&t, &["duplicate node address", "127.0.0.1:7001"]);
    }

    #[test]
    fn peer_addr_is_required_and_distinct_from_every_addr() {
        // Without peer_addr the internal services would have nowhere but
        // the client port: refused, naming the field.
        let t = "partitioning = \"hash\"\n[[nodes]]\nid = 1\naddr = \"127.0.0.1:7001\"\n[[shards]]\nid = 1\nreplicas = [1]\n";
        match ClusterConfig::from_toml_str(t) {
            Err(ConfigError::Parse(m)) => assert!(m.contains("peer_addr"), "{m}"),
            other => panic!("expected a parse error naming peer_addr, got {other:?}"),
        }
        // A node's own two ports must differ.
        let own = "partitioning = \"hash\"\n[[nodes]]\nid = 1\naddr = \"127.0.0.1:7001\"\npeer_addr = \"127.0.0.1:7001\"\n[[shards]]\nid = 1\nreplicas = [1]\n";
        expect_invalid(
            own,
            &[
                "duplicate node address",
                "127.0.0.1:7001",
                "node 1 peer_addr",
            ],
        );
        // One node's peer port may not be another's client port, either way.
        let base = hash_with("", "");
        let crossed = base.replace(
            "peer_addr = \"127.0.0.1:7102\"",
            "peer_addr = \"127.0.0.1:7001\"",
        );
        assert_ne!(crossed, base);
        expect_invalid(
            &crossed,
            &[
                "duplicate node address",
                "127.0.0.1:7001",
                "node 2 peer_addr",
            ],
        );
        let crossed = base.replace("addr = \"127.0.0.1:7002\"", "addr = \"127.0.0.1:7101\"");
        assert_ne!(crossed, base);
        expect_invalid(
            &crossed,
            &["duplicate node address", "127.0.0.1:7101", "node 2 addr"],
        );
        let twice = base.replace(
            "peer_addr = \"127.0.0.1:7102\"",
            "peer_addr = \"127.0.0.1:7101\"",
        );
        expect_invalid(&twice, &["duplicate node address", "127.0.0.1:7101"]);
        // The same port on different hosts is fine.
        let other_host = base.replace(
            "peer_addr = \"127.0.0.1:7102\"",
            "peer_addr = \"127.0.0.2:7101\"",
        );
        assert!(ClusterConfig::from_toml_str(&other_host).is_ok());
    }

    #[test]
    fn tls_section() {
        let tls = "[tls]\nca = \"certs/ca.pem\"\ncert = \"certs/node-{id}.pem\"\nkey = \"/abs/node-{id}.key\"\n";
        let cfg = ClusterConfig::from_toml_str(&hash_with("", tls)).unwrap();
        let t = cfg.tls.clone().unwrap();
        assert_eq!(
            t.node_files(NodeId(2)),
            (
                "certs/node-2.pem".to_string(),
                "/abs/node-2.key".to_string()
            )
        );
        assert_eq!(
            ClusterConfig::from_toml_str(&cfg.to_toml_string()).unwrap(),
            cfg
        );
        // Relative paths are relative to the file's folder once loaded.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.toml");
        std::fs::write(&path, hash_with("", tls)).unwrap();
        let t = ClusterConfig::load(&path).unwrap().tls.unwrap();
        assert_eq!(t.ca, dir.path().join("certs/ca.pem").display().to_string());
        assert_eq!(t.key, "/abs/node-{id}.key");
        expect_invalid(
            &hash_with("", &tls.replace("certs/ca.pem", " ")),
            &["tls.ca"],
        );
        expect_invalid(
            &hash_with("", &format!("{tls}client_cert = \"c.pem\"\n")),
            &["client_cert", "client_key"],
        );
        assert!(ClusterConfig::from_toml_str(&hash_with(
            "",
            &format!("{tls}client_cert = \"c.pem\"\nclient_key = \"c.key\"\n")
        ))
        .is_ok());
        let err = ClusterConfig::from_toml_str(&hash_with("", "[tls]\nca = \"x\"\n")).unwrap_err();
        assert!(
            matches!(err, ConfigError::Parse(ref m) if m.contains("cert")),
            "{err:?}"
        );
    }

    #[test]
    fn local_peer_ports_clear_client_and_metrics_ports() {
        let c = ClusterConfig::local_with_coordinators(3, 3, 3, 3, 7001).unwrap();
        let port = |a: &str| a.rsplit_once(':').unwrap().1.parse::<u16>().unwrap();
        let clients: Vec<u16> = c.nodes.iter().map(|n| port(&n.addr)).collect();
        let peers: Vec<u16> = c.nodes.iter().map(|n| port(&n.peer_addr)).collect();
        assert_eq!(clients, (7001..=7006).collect::<Vec<_>>());
        assert_eq!(peers, (7021..=7026).collect::<Vec<_>>());
        // The playground's metrics ports are 7011-7016.
        assert!(peers.iter().all(|p| !(7011..=7016).contains(p)));
        // Many nodes: the peer block moves past the client block.
        let big = ClusterConfig::local(30, 1, 1, 9000).unwrap();
        let clients: BTreeSet<u16> = big.nodes.iter().map(|n| port(&n.addr)).collect();
        assert!(big
            .nodes
            .iter()
            .all(|n| !clients.contains(&port(&n.peer_addr))));
        assert_eq!(port(&big.nodes[0].peer_addr), 9030);
    }

    #[test]
    fn rejects_bad_addr() {
        for bad in [
            "localhost",
            "127.0.0.1:http",
            "127.0.0.1:70000",
            ":7001",
            "host:",
        ] {
            let t = format!(
                "partitioning = \"hash\"\n[[nodes]]\nid = 1\naddr = \"{bad}\"\npeer_addr = \"127.0.0.1:7101\"\n[[shards]]\nid = 1\nreplicas = [1]\n"
            );
            expect_invalid(&t, &["node 1 addr", "address", bad]);
            let t = format!(
                "partitioning = \"hash\"\n[[nodes]]\nid = 1\naddr = \"127.0.0.1:7001\"\npeer_addr = \"{bad}\"\n[[shards]]\nid = 1\nreplicas = [1]\n"
            );
            expect_invalid(&t, &["node 1 peer_addr", "address", bad]);
        }
    }

    #[test]
    fn limits_parse_and_are_checked() {
        let base = format!(
            "partitioning = \"hash\"\n{}[[shards]]\nid = 1\nreplicas = [1]\n",
            nodes_toml(1)
        );
        let c = ClusterConfig::from_toml_str(&base).unwrap();
        assert_eq!(c.limits, Limits::default());
        let set = format!("{base}[limits]\nmax_open_txns = 3\nmax_in_flight_requests = 5\n");
        let c = ClusterConfig::from_toml_str(&set).unwrap();
        assert_eq!(c.limits.max_open_txns, 3);
        assert_eq!(c.limits.max_in_flight_requests, 5);
        assert_eq!(
            c.limits.coordinator_queue,
            Limits::default().coordinator_queue
        );
        assert_eq!(
            ClusterConfig::from_toml_str(&c.to_toml_string()).unwrap(),
            c
        );
        for bad in [
            "[limits]\nmax_open_txns = 0\n",
            "[limits]\ncoordinator_queue = 0\n",
            "[limits]\nmax_in_flight_requests = 2000000\n",
            "[storage]\nwriter_queue = 0\n",
            "[limits]\nmax_queue = 1\n",
        ] {
            assert!(
                ClusterConfig::from_toml_str(&format!("{base}{bad}")).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn storage_bounds_parse_and_are_checked() {
        let base = format!(
            "partitioning = \"hash\"\n{}[[shards]]\nid = 1\nreplicas = [1]\n",
            nodes_toml(1)
        );
        let c = ClusterConfig::from_toml_str(&base).unwrap();
        assert_eq!(c.storage, StorageTuning::default());
        let set = format!(
            "{base}[storage]\ncache_mb = 8\nmemtable_mb = 2\njournal_mb = 256\ndisk_reserve_mb = 0\n"
        );
        let c = ClusterConfig::from_toml_str(&set).unwrap();
        assert_eq!(
            c.storage,
            StorageTuning {
                cache_mb: 8,
                memtable_mb: 2,
                journal_mb: 256,
                disk_reserve_mb: 0,
                ..StorageTuning::default()
            }
        );
        assert_eq!(
            ClusterConfig::from_toml_str(&c.to_toml_string()).unwrap(),
            c
        );
        for (field, v) in [
            ("journal_mb", 63),
            ("memtable_mb", 0),
            ("memtable_mb", 4096),
            ("cache_mb", 0),
            ("disk_reserve_mb", (1u64 << 30) + 1),
        ] {
            expect_invalid(
                &format!("{base}[storage]\n{field} = {v}\n"),
                &[&format!("storage.{field} is {v}")],
            );
        }
        assert!(matches!(
            ClusterConfig::from_toml_str(&format!("{base}[storage]\nmemtable = 4\n")),
            Err(ConfigError::Parse(_))
        ));
    }

    #[test]
    fn rejects_duplicate_shard_id() {
        expect_invalid(
            &hash_with("", "[[shards]]\nid = 1\nreplicas = [2]\n"),
            &["duplicate shard id 1"],
        );
    }

    #[test]
    fn rejects_shard_without_replicas() {
        expect_invalid(
            &hash_with("", "[[shards]]\nid = 2\nreplicas = []\n"),
            &["shard 2", "no replicas"],
        );
    }

    #[test]
    fn rejects_duplicate_replica() {
        expect_invalid(
            &hash_with("", "[[shards]]\nid = 2\nreplicas = [1, 2, 1]\n"),
            &["shard 2", "replica node 1 twice"],
        );
    }

    #[test]
    fn rejects_unknown_replica() {
        expect_invalid(
            &hash_with("", "[[shards]]\nid = 2\nreplicas = [1, 9]\n"),
            &["shard 2", "unknown node", "9"],
        );
    }

    #[test]
    fn rejects_virtual_nodes_out_of_range() {
        expect_invalid(&hash_with("virtual_nodes = 0", ""), &["virtual_nodes", "0"]);
        expect_invalid(
            &hash_with("virtual_nodes = 4097", ""),
            &["virtual_nodes", "4097"],
        );
        assert!(ClusterConfig::from_toml_str(&hash_with("virtual_nodes = 4096", "")).is_ok());
        assert!(ClusterConfig::from_toml_str(&hash_with("virtual_nodes = 1", "")).is_ok());
    }

    #[test]
    fn rejects_bad_raft_timings() {
        expect_invalid(
            &hash_with("", "[raft]\nheartbeat_ms = 0\n"),
            &["heartbeat_ms"],
        );
        expect_invalid(
            &hash_with("", "[raft]\nheartbeat_ms = 20\n"),
            &["heartbeat_ms (20)", "at least 30"],
        );
        expect_invalid(
            &hash_with("", "[raft]\nheartbeat_ms = 400\n"),
            &["election_timeout_min_ms (400)", "heartbeat_ms (400)"],
        );
        expect_invalid(
            &hash_with("", "[raft]\nelection_timeout_min_ms = 900\n"),
            &["election_timeout_max_ms (800)"],
        );
        expect_invalid(
            &hash_with("", "[raft]\nsnapshot_logs = 0\n"),
            &["snapshot_logs"],
        );
        expect_invalid(
            &hash_with("", "[raft]\nauto_split_secs = 0\n"),
            &["auto_split_secs"],
        );
        expect_invalid(
            &hash_with("", "[raft]\nsnapshot_kib_per_sec = 100\n"),
            &["snapshot_kib_per_sec (100)", "at least 256"],
        );
        for ok in [0, 256, 65_536] {
            let t = format!("[raft]\nsnapshot_kib_per_sec = {ok}\n");
            assert!(ClusterConfig::from_toml_str(&hash_with("", &t)).is_ok());
            let t = format!("[raft]\nsplit_copy_kib_per_sec = {ok}\n");
            assert!(ClusterConfig::from_toml_str(&hash_with("", &t)).is_ok());
        }
        expect_invalid(
            &hash_with("", "[raft]\nsplit_copy_kib_per_sec = 1\n"),
            &["split_copy_kib_per_sec (1)", "at least 256"],
        );
        // Preferred leaders: configured nodes, each once, with balancing on.
        let ok = ClusterConfig::from_toml_str(&hash_with("", "[raft]\nprefer_leaders = [2, 1]\n"));
        assert_eq!(ok.unwrap().raft.prefer_leaders, vec![NodeId(2), NodeId(1)]);
        expect_invalid(
            &hash_with("", "[raft]\nprefer_leaders = [1, 1]\n"),
            &["prefer_leaders", "node 1 twice"],
        );
        expect_invalid(
            &hash_with("", "[raft]\nprefer_leaders = [3]\n"),
            &["prefer_leaders", "node 3", "not among [[nodes]]"],
        );
        expect_invalid(
            &hash_with("", "[raft]\nprefer_leaders = [1]\nbalance_leaders_ms = 0\n"),
            &["prefer_leaders", "balance_leaders_ms above 0"],
        );
        // Equal bounds: openraft would refuse them when a replica starts.
        expect_invalid(
            &hash_with(
                "",
                "[raft]\nelection_timeout_min_ms = 500\nelection_timeout_max_ms = 500\n",
            ),
            &["election_timeout_max_ms (500)", "greater than"],
        );
        // Timings past an hour, a retention past a year, shard id 0.
        expect_invalid(
            &hash_with(
                "",
                "[raft]\nelection_timeout_min_ms = 500\nelection_timeout_max_ms = 4611686018427387904\n",
            ),
            &["election_timeout_max_ms", "at most 3600000"],
        );
        expect_invalid(
            &hash_with(
                "",
                "[transactions]\nrecord_retention_s = 9223372036854775807\n",
            ),
            &["record_retention_s", "at most"],
        );
        expect_invalid(
            &hash_with("", "[[shards]]\nid = 0\nreplicas = [1]\n"),
            &["shard id 0 is reserved"],
        );
    }

    #[test]
    fn rejects_start_with_hash() {
        expect_invalid(
            &hash_with("", "[[shards]]\nid = 2\nreplicas = [1]\nstart = \"m\"\n"),
            &["shard 2", "start", "range partitioning"],
        );
    }

    fn range_toml(shards: &[(u64, Option<&str>)]) -> String {
        let mut t = format!("partitioning = \"range\"\n{}", nodes_toml(1));
        for (id, start) in shards {
            t.push_str(&format!("[[shards]]\nid = {id}\nreplicas = [1]\n"));
            if let Some(s) = start {
                t.push_str(&format!("start = \"{s}\"\n"));
            }
        }
        t
    }

    #[test]
    fn rejects_range_shard_without_start() {
        expect_invalid(
            &range_toml(&[(1, Some("")), (2, None)]),
            &["shard 2", "no start"],
        );
    }

    #[test]
    fn rejects_duplicate_range_start() {
        expect_invalid(
            &range_toml(&[(1, Some("")), (2, Some("k")), (3, Some("k"))]),
            &["duplicate start", "\"k\"", "shard 3"],
        );
        expect_invalid(
            &range_toml(&[(1, Some("")), (2, Some(""))]),
            &["duplicate start", "shard 2"],
        );
    }

    #[test]
    fn rejects_range_without_first_range() {
        expect_invalid(
            &range_toml(&[(1, Some("a")), (2, Some("k"))]),
            &["start \"\""],
        );
        assert!(
            ClusterConfig::from_toml_str(&range_toml(&[(1, Some("")), (2, Some("k"))])).is_ok()
        );
    }

    #[test]
    fn rejects_ids_beyond_toml_range() {
        let mut cfg = ClusterConfig::local(1, 1, 1, 7001).unwrap();
        cfg.shards[0].id = ShardId(u64::MAX);
        let err = cfg.validate().unwrap_err();
        assert!(err.to_string().contains("shard id"), "{err}");
        // Serializing the invalid config must not panic and must not load.
        assert!(ClusterConfig::from_toml_str(&cfg.to_toml_string()).is_err());
    }

    #[test]
    fn local_cluster() {
        let cfg = ClusterConfig::local(3, 3, 3, 7001).unwrap();
        assert_eq!(cfg.partitioning, PartitionScheme::Hash);
        assert_eq!(cfg.nodes.len(), 3);
        assert_eq!(cfg.node(NodeId(1)).unwrap().addr, "127.0.0.1:7001");
        assert_eq!(cfg.node(NodeId(3)).unwrap().addr, "127.0.0.1:7003");
        assert_eq!(cfg.shards.len(), 3);
        for s in &cfg.shards {
            let distinct: BTreeSet<_> = s.replicas.iter().collect();
            assert_eq!(
                distinct.len(),
                3,
                "shard {} replicas {:?}",
                s.id,
                s.replicas
            );
            assert!(s.start.is_none());
        }
        assert_eq!(
            cfg.shard(ShardId(1)).unwrap().replicas,
            vec![NodeId(1), NodeId(2), NodeId(3)]
        );
        assert_eq!(
            cfg.shard(ShardId(2)).unwrap().replicas,
            vec![NodeId(2), NodeId(3), NodeId(1)]
        );
        let text = cfg.to_toml_string();
        let again = ClusterConfig::from_toml_str(&text).unwrap();
        assert_eq!(again, cfg, "round trip through:\n{text}");
    }

    #[test]
    fn local_round_robin_placement() {
        let cfg = ClusterConfig::local(5, 4, 2, 9000).unwrap();
        assert_eq!(
            cfg.shard(ShardId(4)).unwrap().replicas,
            vec![NodeId(4), NodeId(5)]
        );
        assert_eq!(cfg.shards_of_node(NodeId(1)), vec![ShardId(1)]);
        assert_eq!(cfg.shards_of_node(NodeId(5)), vec![ShardId(4)]);
        let cfg = ClusterConfig::local(3, 4, 2, 9000).unwrap();
        assert_eq!(
            cfg.shard(ShardId(3)).unwrap().replicas,
            vec![NodeId(3), NodeId(1)]
        );
        assert_eq!(
            cfg.shards_of_node(NodeId(1)),
            vec![ShardId(1), ShardId(3), ShardId(4)]
        );
    }

    #[test]
    fn local_rejects_nonsense() {
        assert!(matches!(
            ClusterConfig::local(0, 1, 1, 7001),
            Err(ConfigError::Invalid(_))
        ));
        assert!(matches!(
            ClusterConfig::local(1, 0, 1, 7001),
            Err(ConfigError::Invalid(_))
        ));
        assert!(matches!(
            ClusterConfig::local(2, 1, 3, 7001),
            Err(ConfigError::Invalid(_))
        ));
        assert!(matches!(
            ClusterConfig::local(2, 1, 0, 7001),
            Err(ConfigError::Invalid(_))
        ));
        assert!(matches!(
            ClusterConfig::local(2, 1, 1, 65535),
            Err(ConfigError::Invalid(_))
        ));
        assert!(matches!(
            ClusterConfig::local(u64::MAX, u64::MAX, 1, 1),
            Err(ConfigError::Invalid(_))
        ));
        assert!(matches!(
            ClusterConfig::local(1, 1, 1, 65535 - 19),
            Err(ConfigError::Invalid(_))
        ));
        assert!(ClusterConfig::local(1, 1, 1, 65535 - 20).is_ok());
    }

    #[test]
    fn load_reports_missing_file_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.toml");
        match ClusterConfig::load(&path) {
            Err(ConfigError::Io { path: p, .. }) => assert!(p.contains("missing.toml"), "{p}"),
            other => panic!("expected Io error, got {other:?}"),
        }
        let good = dir.path().join("cluster.toml");
        std::fs::write(&good, HASH_EXAMPLE).unwrap();
        assert_eq!(
            ClusterConfig::load(&good).unwrap(),
            ClusterConfig::from_toml_str(HASH_EXAMPLE).unwrap()
        );
    }

    #[test]
    fn example_files_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let hash = ClusterConfig::load(&dir.join("cluster-hash.toml")).unwrap();
        assert_eq!(hash.partitioning, PartitionScheme::Hash);
        assert!(hash.shard_map().range_of(hash.shards[0].id).is_none());
        let range = ClusterConfig::load(&dir.join("cluster-range.toml")).unwrap();
        assert_eq!(range.partitioning, PartitionScheme::Range);
        let map = range.shard_map();
        // Every key has an owner and ranges partition the whole key space.
        assert_eq!(map.shards_for_range(b"", None), map.shards());
        for s in map.shards() {
            assert!(map.range_of(s).is_some());
        }
    }
}
