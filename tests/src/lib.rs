//! Test harness: real Pact clusters as processes on 127.0.0.1.
//!
//! [`Cluster`] writes a config with free ports, starts one process per node
//! (`participant` for shard replicas, `coordinator` for a coordinator
//! group's, `pact` for a node hosting both; logs in the cluster's temp
//! folder), and can SIGKILL,
//! restart, SIGSTOP and SIGCONT any node. Dropping it kills every process,
//! so a failed test leaves nothing running. The binaries are found next to
//! the test executable (`target/<profile>/`), or in `PACT_BIN_DIR` if set;
//! build them first with `cargo build --bins` (the README's test command
//! does; `--release` for `cargo test --release`).
//!
//! [`jepsen`] builds the fault-injection suite on top: recorded histories,
//! a nemesis, per-link proxies and the checkers of `pact-check`.

pub mod bank;
pub mod jepsen;
pub mod raft_forge;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pact_client::{Client, ClientError, ClientOptions, ReplicaStatus};
use pact_common::{ClusterConfig, NodeId, RaftTuning, ShardId};

/// Directory holding the workspace's binaries for this test build.
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("PACT_BIN_DIR") {
        return PathBuf::from(d);
    }
    // target/<profile>/deps/<test-binary> -> target/<profile>
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Path of a workspace binary; panics with the fix if it was not built.
pub fn binary(name: &str) -> PathBuf {
    let dir = bin_dir();
    let p = dir.join(name);
    if p.exists() {
        return p;
    }
    // A checkout often has the other profile's build only (e.g. release
    // binaries from the benchmarks): name it, since that is the usual
    // reason for a missing binary.
    let other = ["debug", "release"].iter().find_map(|profile| {
        let d = dir.parent()?.join(profile);
        (d != dir && d.join(name).exists()).then_some(d)
    });
    let hint = match other {
        Some(d) => format!(
            "; or test those in {} with PACT_BIN_DIR={}",
            d.display(),
            d.display()
        ),
        None => String::new(),
    };
    panic!(
        "{} not found; build the servers first with `cargo build --bins` \
         (`cargo build --release --bins` for `cargo test --release`), or set \
         PACT_BIN_DIR to a directory holding them{hint}",
        p.display()
    );
}

/// Server ports come from below the kernel's ephemeral range (32768-60999
/// by default), from which port-0 binds (the Jepsen proxies) and outgoing
/// connections take theirs: a port picked there and released could be
/// taken by one of those before its server binds it, and the server would
/// fail to start.
const TEST_PORTS: std::ops::Range<u32> = 20_000..32_000;

/// Where the next search for free ports starts: spread by process so that
/// test binaries running side by side rarely meet.
fn port_cursor() -> &'static std::sync::atomic::AtomicU32 {
    static CURSOR: std::sync::OnceLock<std::sync::atomic::AtomicU32> = std::sync::OnceLock::new();
    CURSOR.get_or_init(|| {
        let span = TEST_PORTS.end - TEST_PORTS.start;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        std::sync::atomic::AtomicU32::new((std::process::id().wrapping_mul(7919) ^ nanos) % span)
    })
}

/// `len` consecutive ports on 127.0.0.1 that were free a moment ago (each
/// bound and released), never handed out before by this process; returns
/// the first.
pub fn free_block(len: u16) -> u16 {
    let span = TEST_PORTS.end - TEST_PORTS.start;
    for _ in 0..span {
        let at = port_cursor().fetch_add(u32::from(len), std::sync::atomic::Ordering::Relaxed);
        let base = TEST_PORTS.start + at % span;
        if base + u32::from(len) > TEST_PORTS.end {
            continue;
        }
        let base = base as u16;
        if (0..len).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no block of {len} free ports in {TEST_PORTS:?}");
}

/// `n` free TCP ports on 127.0.0.1 (see [`free_block`]).
pub fn free_ports(n: usize) -> Vec<u16> {
    let n = u16::try_from(n).expect("port count fits u16");
    let base = free_block(n);
    (base..base + n).collect()
}

/// Fast Raft timings for tests: elections in well under a second. No
/// leader balancing: a test that picks a leader to kill must find it
/// still leading (the tests of balancing, and the Jepsen-style suite, turn
/// it on).
pub fn fast_tuning() -> RaftTuning {
    RaftTuning {
        heartbeat_ms: 50,
        election_timeout_min_ms: 300,
        election_timeout_max_ms: 600,
        balance_leaders_ms: 0,
        ..RaftTuning::default()
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub config: ClusterConfig,
    pub config_path: PathBuf,
    procs: BTreeMap<NodeId, Child>,
    /// A node's own config file, where it differs from `config_path` (its
    /// peers reached through fault-injecting proxies).
    node_configs: BTreeMap<NodeId, PathBuf>,
    /// Extra environment per node (fault injection, clock skew).
    env: BTreeMap<NodeId, BTreeMap<String, String>>,
    /// Extra command-line arguments per node.
    args: BTreeMap<NodeId, Vec<String>>,
    /// What [`Cluster::client`] presents when the cluster has `[tls]`.
    client_tls: Option<pact_client::Tls>,
    /// Running nodes' process ids, shared with observers that sample the
    /// processes while the nemesis holds the cluster (see [`Cluster::pids`]).
    pids: PidTable,
    /// Run every node as `pact` (the server that can host replicas at run
    /// time), participant-only and coordinator-only nodes included.
    one_binary: bool,
    /// Nodes the config does not list, made by [`Cluster::new_node`] (to
    /// be added to the cluster's member table): whether each is still in
    /// (not yet [`Cluster::retire`]d).
    joined: BTreeMap<NodeId, bool>,
    /// Nodes started with `--endpoints` (these client ports) instead of a
    /// config file.
    endpoints: BTreeMap<NodeId, Vec<String>>,
}

/// Node id to the process id of its current run; a node is absent while
/// it is down.
pub type PidTable = std::sync::Arc<std::sync::Mutex<BTreeMap<NodeId, u32>>>;

impl Cluster {
    /// `nodes` nodes, `shards` shards of `replication` replicas each.
    pub fn start(nodes: u64, shards: u64, replication: u64, tuning: RaftTuning) -> Cluster {
        let config = ClusterConfig::local(nodes, shards, replication, 7001).expect("local config");
        Self::start_config(config, tuning)
    }

    /// As [`Cluster::start`], plus one coordinator group of
    /// `coordinators` replicas (separate `coordinator` processes).
    pub fn start_with_coordinators(
        nodes: u64,
        shards: u64,
        replication: u64,
        coordinators: u64,
        tuning: RaftTuning,
    ) -> Cluster {
        let config =
            ClusterConfig::local_with_coordinators(nodes, shards, replication, coordinators, 7001)
                .expect("local config");
        Self::start_config(config, tuning)
    }

    fn start_config(config: ClusterConfig, tuning: RaftTuning) -> Cluster {
        let mut c = Self::create(config, tuning);
        for id in c.node_ids() {
            c.start_node(id);
        }
        c
    }

    /// As [`Cluster::create`], with mutual TLS: a fresh CA and certificates
    /// for every node and a client under `certs/` in the cluster's folder,
    /// named in the config's `[tls]` section. [`Cluster::client`] presents
    /// the client certificate.
    pub fn create_tls(config: ClusterConfig, tuning: RaftTuning) -> Cluster {
        Self::create_tls_with_spares(config, tuning, 0)
    }

    /// [`Cluster::create_tls`], with certificates (for 127.0.0.1) also for
    /// the next `spares` node ids past the config's, the ids
    /// [`Cluster::new_node`] hands out: nodes the config does not list
    /// that join the cluster at run time.
    pub fn create_tls_with_spares(
        config: ClusterConfig,
        tuning: RaftTuning,
        spares: u64,
    ) -> Cluster {
        let mut c = Self::create(config, tuning);
        let mut certified = c.config.clone();
        let last = certified.nodes.iter().map(|n| n.id.0).max().unwrap_or(0);
        for id in last + 1..=last + spares {
            certified.nodes.push(pact_common::NodeConfig {
                id: NodeId(id),
                addr: "127.0.0.1:1".into(),
                peer_addr: "127.0.0.1:2".into(),
            });
        }
        let tls = pact_common::certgen::write_cluster_certs(
            &certified,
            &c.dir.path().join("certs"),
            c.dir.path(),
        )
        .expect("write certificates");
        c.config.tls = Some(tls);
        std::fs::write(&c.config_path, c.config.to_toml_string()).expect("write config");
        // As the nodes read it: certificate paths resolved.
        c.config = ClusterConfig::load(&c.config_path).expect("load config");
        c.client_tls = pact_client::Tls::for_client(&c.config, &Default::default())
            .expect("client certificate");
        c
    }

    /// Write the config (free ports, `tuning`) without starting anything,
    /// so the caller can route links or set environments first.
    pub fn create(mut config: ClusterConfig, tuning: RaftTuning) -> Cluster {
        // Client ports first, then peer ports, from one free block.
        let count = config.nodes.len();
        let ports = free_ports(2 * count);
        for (i, n) in config.nodes.iter_mut().enumerate() {
            n.addr = format!("127.0.0.1:{}", ports[i]);
            n.peer_addr = format!("127.0.0.1:{}", ports[count + i]);
        }
        config.raft = tuning;
        config.validate().expect("valid test config");
        let dir = tempfile::Builder::new()
            .prefix("pact-test-")
            .tempdir()
            .expect("tempdir");
        let config_path = dir.path().join("cluster.toml");
        std::fs::write(&config_path, config.to_toml_string()).expect("write config");
        Cluster {
            dir,
            config,
            config_path,
            procs: BTreeMap::new(),
            node_configs: BTreeMap::new(),
            env: BTreeMap::new(),
            args: BTreeMap::new(),
            client_tls: None,
            pids: PidTable::default(),
            one_binary: false,
            joined: BTreeMap::new(),
            endpoints: BTreeMap::new(),
        }
    }

    /// Start every node as `pact` from now on (see `one_binary`).
    pub fn use_one_binary(&mut self) {
        self.one_binary = true;
    }

    /// Start every node that is not running.
    pub fn start_all(&mut self) {
        for id in self.node_ids() {
            if !self.procs.contains_key(&id) {
                self.start_node(id);
            }
        }
    }

    /// Give node `id` its own config in which peer `p` lives at
    /// `addrs(p)` (its client address, its peer address); takes effect at
    /// the node's next start.
    pub fn set_peer_addrs(&mut self, id: NodeId, addrs: impl Fn(NodeId) -> (String, String)) {
        let mut cfg = self.config.clone();
        for n in cfg.nodes.iter_mut() {
            if n.id != id {
                (n.addr, n.peer_addr) = addrs(n.id);
            }
        }
        let path = self.dir.path().join(format!("cluster-{id}.toml"));
        std::fs::write(&path, cfg.to_toml_string()).expect("write node config");
        self.node_configs.insert(id, path);
    }

    /// Set an environment variable for node `id`'s next starts.
    pub fn set_env(&mut self, id: NodeId, key: &str, value: &str) {
        self.env
            .entry(id)
            .or_default()
            .insert(key.to_string(), value.to_string());
    }

    /// Extra command-line arguments for node `id`'s next starts (replacing
    /// any given before).
    pub fn set_args(&mut self, id: NodeId, args: &[String]) {
        self.args.insert(id, args.to_vec());
    }

    /// The value `set_env` gave `key` for node `id`, if any.
    pub fn env(&self, id: NodeId, key: &str) -> Option<&str> {
        self.env.get(&id)?.get(key).map(String::as_str)
    }

    pub fn node_ids(&self) -> Vec<NodeId> {
        self.config.nodes.iter().map(|n| n.id).collect()
    }

    /// A node the config does not list: an id past every node's so far,
    /// and free client and peer addresses. Add it to the member table
    /// (`Client::add_member`), then [`Cluster::start_node`] it.
    pub fn new_node(&mut self) -> (NodeId, String, String) {
        let last = self
            .node_ids()
            .into_iter()
            .chain(self.joined.keys().copied())
            .max()
            .map_or(0, |n| n.0);
        let id = NodeId(last + 1);
        let ports = free_ports(2);
        self.joined.insert(id, true);
        (
            id,
            format!("127.0.0.1:{}", ports[0]),
            format!("127.0.0.1:{}", ports[1]),
        )
    }

    /// The nodes made by [`Cluster::new_node`] and not retired, sorted.
    pub fn joined_ids(&self) -> Vec<NodeId> {
        self.joined
            .iter()
            .filter(|(_, in_)| **in_)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Start node `id` from now on with `--endpoints` (these client
    /// ports) instead of the config file: it asks them for the config.
    pub fn set_endpoints(&mut self, id: NodeId, endpoints: &[String]) {
        self.endpoints.insert(id, endpoints.to_vec());
    }

    /// Every node [`Cluster::new_node`] made, retired or not.
    pub fn ever_joined(&self) -> Vec<NodeId> {
        self.joined.keys().copied().collect()
    }

    /// Node `id` (made by [`Cluster::new_node`]) left the cluster: it no
    /// longer counts among the participants (its id is not used again).
    pub fn retire(&mut self, id: NodeId) {
        if let Some(in_) = self.joined.get_mut(&id) {
            *in_ = false;
        }
    }

    /// Nodes that host shard replicas: all but the coordinator-only ones,
    /// and the nodes added at run time that are still in.
    pub fn participant_ids(&self) -> Vec<NodeId> {
        self.node_ids()
            .into_iter()
            .filter(|n| self.config.coordinator_of(*n).is_none() || self.config.is_combined(*n))
            .chain(self.joined_ids())
            .collect()
    }

    /// Nodes of coordinator group `group`.
    pub fn coordinator_ids(&self, group: u64) -> Vec<NodeId> {
        self.config
            .coordinators
            .iter()
            .find(|g| g.group == group)
            .map(|g| g.replicas.clone())
            .unwrap_or_default()
    }

    pub fn data_dir(&self, id: NodeId) -> PathBuf {
        self.dir.path().join(format!("node-{id}"))
    }

    pub fn log_path(&self, id: NodeId) -> PathBuf {
        self.dir.path().join(format!("node-{id}.log"))
    }

    pub fn start_node(&mut self, id: NodeId) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .expect("open node log");
        let spare =
            self.config.coordinator_of(id).is_none() && self.config.shards_of_node(id).is_empty();
        // A spare node (the config gives it nothing yet) runs `pact`, the
        // server that can take replicas at run time.
        let bin = if self.one_binary || self.config.is_combined(id) || spare {
            "pact"
        } else if self.config.coordinator_of(id).is_some() {
            "coordinator"
        } else {
            "participant"
        };
        let config = self.node_configs.get(&id).unwrap_or(&self.config_path);
        let mut cmd = Command::new(binary(bin));
        match self.endpoints.get(&id) {
            Some(e) => cmd.arg("--endpoints").arg(e.join(",")),
            None => cmd.arg("--config").arg(config),
        };
        let child = cmd
            .arg("--node-id")
            .arg(id.0.to_string())
            .arg("--data-dir")
            .arg(self.data_dir(id))
            .args(self.args.get(&id).into_iter().flatten())
            .env("RUST_LOG", "info,openraft=warn")
            .envs(self.env.get(&id).into_iter().flatten())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
        if let Ok(mut pids) = self.pids.lock() {
            pids.insert(id, child.id());
        }
        self.procs.insert(id, child);
    }

    /// Send `sig` to node `id`'s process, if it runs.
    pub fn signal(&self, id: NodeId, sig: libc::c_int) {
        if let Some(c) = self.procs.get(&id) {
            // SAFETY: kill(2) on a pid we spawned and have not reaped.
            unsafe {
                libc::kill(c.id() as libc::pid_t, sig);
            }
        }
    }

    /// SIGKILL: no shutdown, no flush; only what was fsynced survives.
    pub fn kill(&mut self, id: NodeId) {
        if let Some(mut c) = self.procs.remove(&id) {
            if let Ok(mut pids) = self.pids.lock() {
                pids.remove(&id);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait (up to 15 s, then SIGKILL) for the process to
    /// end; its exit status, None if it was not running.
    pub fn stop(&mut self, id: NodeId) -> Option<std::process::ExitStatus> {
        let mut c = self.procs.remove(&id)?;
        // SAFETY: kill(2) on a pid we spawned and have not reaped.
        unsafe {
            libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return c.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The exit status of node `id`'s process if it has ended (it is then
    /// forgotten, so it can be started again); None while it runs.
    pub fn exited(&mut self, id: NodeId) -> Option<std::process::ExitStatus> {
        let st = self.procs.get_mut(&id)?.try_wait().ok()??;
        self.procs.remove(&id);
        Some(st)
    }

    pub fn restart(&mut self, id: NodeId) {
        self.kill(id);
        self.start_node(id);
    }

    pub fn pause(&self, id: NodeId) {
        self.signal(id, libc::SIGSTOP);
    }

    pub fn resume(&self, id: NodeId) {
        self.signal(id, libc::SIGCONT);
    }

    /// The live table of the nodes' process ids: a sampler reads it while
    /// the nemesis kills and restarts nodes.
    pub fn pids(&self) -> PidTable {
        self.pids.clone()
    }

    pub fn is_running(&mut self, id: NodeId) -> bool {
        match self.procs.get_mut(&id) {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn client(&self) -> Client {
        self.client_with(ClientOptions::default())
    }

    /// A client with `opts`; on a TLS cluster it presents the cluster's
    /// client certificate unless `opts` brings its own.
    pub fn client_with(&self, mut opts: ClientOptions) -> Client {
        if opts.tls.is_none() {
            opts.tls = self.client_tls.clone();
        }
        Client::new(&self.config, opts)
    }

    /// A client that talks to one node only, for probing that node.
    pub fn client_for_node(&self, id: NodeId, opts: ClientOptions) -> Client {
        let mut cfg = self.config.clone();
        for s in cfg.shards.iter_mut() {
            if s.replicas.contains(&id) {
                s.replicas = vec![id];
            }
        }
        self.pinned_client(&cfg, opts)
    }

    /// A client that reaches `shard` at node `id` only, whether or not
    /// the config lists `id` among the shard's replicas (one added at run
    /// time is not), for probing that replica.
    pub fn client_for_replica(&self, shard: ShardId, id: NodeId, opts: ClientOptions) -> Client {
        let mut cfg = self.config.clone();
        for s in cfg.shards.iter_mut().filter(|s| s.id == shard) {
            s.replicas = vec![id];
        }
        self.pinned_client(&cfg, opts)
    }

    /// A client of `cfg` (the cluster's TLS unless `opts` has its own)
    /// that asks only the replicas `cfg` lists: no routing table.
    fn pinned_client(&self, cfg: &ClusterConfig, mut opts: ClientOptions) -> Client {
        if opts.tls.is_none() {
            opts.tls = self.client_tls.clone();
        }
        opts.pinned = true;
        Client::new(cfg, opts)
    }

    /// The default transactional cluster (3 participants holding 3 shards
    /// x 3 replicas, a coordinator group of 3), started and with a leader
    /// in every shard and in the coordinator group.
    pub async fn transactional() -> Cluster {
        let c = Cluster::start_with_coordinators(3, 3, 3, 3, fast_tuning());
        let parts = c.participant_ids();
        for s in 1..=3 {
            c.wait_leader(ShardId(s), &parts, Duration::from_secs(30))
                .await;
        }
        c.wait_coordinator(1, Duration::from_secs(30)).await;
        c.wait_voting(Duration::from_secs(30)).await;
        c
    }

    /// Wait until every shard and every coordinator group has a leader
    /// (each within `within`), whatever the layout, and every replica
    /// that answers may vote ([`Cluster::wait_voting`]).
    pub async fn wait_ready(&self, within: Duration) {
        for s in &self.config.shards {
            self.wait_leader(s.id, &s.replicas, within).await;
        }
        for g in &self.config.coordinators {
            self.wait_coordinator(g.group, within).await;
        }
        self.wait_voting(within).await;
    }

    /// Wait until every replica on a running node answers and may vote
    /// (`ReplicaStatus::votes`). A group elects its first leader with two
    /// votes of three, so it can have one while its third replica, started
    /// a moment later, is still asking its peers whether the group is new,
    /// or is catching up behind the lost-disk gate because the group had
    /// already committed when it asked. Until that replica votes, the
    /// group cannot elect again: a test that kills the leader right after
    /// startup would find it stuck. Replicas that do not answer (a node
    /// held down, or one that no longer hosts the group: it answers "not
    /// leader", which the client reports as unavailable) are waited for
    /// 10 s at most, each call for 1 s; panics if a replica answers after
    /// `within` that it still cannot vote.
    pub async fn wait_voting(&self, within: Duration) {
        let client = self.client();
        let deadline = Instant::now() + within;
        let silent_deadline = Instant::now() + within.min(Duration::from_secs(10));
        let call = Duration::from_secs(1);
        let late = |e| ClientError::Unavailable(format!("no status within {e:?}"));
        let running = |id: &&NodeId| self.procs.contains_key(id);
        loop {
            let mut silent = Vec::new();
            let mut waiting = Vec::new();
            let mut judge = |what: String, answer: Result<ReplicaStatus, ClientError>| match answer
            {
                Ok(st) if st.votes() => {}
                Ok(st) => waiting.push(format!("{what}: {}", st.gate)),
                Err(e @ (ClientError::Unreachable(_) | ClientError::Unavailable(_))) => {
                    silent.push(format!("{what}: {e}"))
                }
                // Refused outright: nothing there to wait for.
                Err(_) => {}
            };
            for s in &self.config.shards {
                for id in s.replicas.iter().filter(running) {
                    let status = tokio::time::timeout(call, client.replica_status(s.id, *id));
                    let answer = status.await.unwrap_or_else(|_| Err(late(call)));
                    judge(format!("shard {} on node {id}", s.id), answer);
                }
            }
            for g in &self.config.coordinators {
                for id in g.replicas.iter().filter(running) {
                    let status =
                        tokio::time::timeout(call, client.coordinator_group_status(g.group, *id));
                    let answer = status.await.unwrap_or_else(|_| Err(late(call)));
                    judge(
                        format!("coordinator group {} on node {id}", g.group),
                        answer,
                    );
                }
            }
            if waiting.is_empty() && (silent.is_empty() || Instant::now() > silent_deadline) {
                return;
            }
            if Instant::now() > deadline {
                assert!(
                    waiting.is_empty(),
                    "replicas still not voting after {within:?}: {waiting:?}\n{}",
                    self.logs_tail()
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until some replica of `shard` reports itself leader, seen from
    /// the replicas in `among`; returns its id.
    pub async fn wait_leader(&self, shard: ShardId, among: &[NodeId], within: Duration) -> NodeId {
        let client = self.client();
        let deadline = Instant::now() + within;
        loop {
            for id in among {
                if let Ok(s) = client.replica_status(shard, *id).await {
                    if s.role == "leader" {
                        return *id;
                    }
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "no leader for shard {shard} among {among:?} within {within:?}\n{}",
                    self.logs_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until a replica of coordinator `group` reports itself leader.
    pub async fn wait_coordinator(&self, group: u64, within: Duration) -> NodeId {
        let client = self.client();
        let deadline = Instant::now() + within;
        loop {
            for id in self.coordinator_ids(group) {
                if let Ok(s) = client.coordinator_group_status(group, id).await {
                    if s.role == "leader" {
                        return id;
                    }
                    // The leader may be on a node the config does not give
                    // the group (its replicas moved).
                    if let Some(l) = s.leader.map(NodeId).filter(|l| *l != id) {
                        if let Ok(s) = client.coordinator_group_status(group, l).await {
                            if s.role == "leader" {
                                return l;
                            }
                        }
                    }
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "no coordinator leader within {within:?}\n{}",
                    self.logs_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn status(&self, shard: ShardId, id: NodeId) -> Option<ReplicaStatus> {
        self.client().replica_status(shard, id).await.ok()
    }

    /// Every node's log lines that `keep` picks, each headed by its node,
    /// for a failure message about one part of the system.
    pub fn log_lines(&self, keep: impl Fn(&str) -> bool) -> String {
        let mut out = String::new();
        for id in self.node_ids() {
            let text = std::fs::read_to_string(self.log_path(id)).unwrap_or_default();
            for l in text.lines().filter(|l| keep(l)) {
                out.push_str(&format!("node {id}: {l}\n"));
            }
        }
        out
    }

    /// The last lines of every node's log, for failure messages.
    pub fn logs_tail(&self) -> String {
        let mut out = String::new();
        for id in self.node_ids().into_iter().chain(self.ever_joined()) {
            let text = std::fs::read_to_string(self.log_path(id)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(15);
            // A panic's message, wherever it is (a backtrace after it
            // would push it out of the last lines).
            for (i, l) in lines[..from].iter().enumerate() {
                if l.contains("panicked at") {
                    out.push_str(&format!("--- node {id} log, line {} ---\n", i + 1));
                    for l in &lines[i..(i + 3).min(from)] {
                        out.push_str(l);
                        out.push('\n');
                    }
                }
            }
            out.push_str(&format!(
                "--- node {id} log (last {} lines) ---\n",
                lines.len() - from
            ));
            for l in &lines[from..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A child process killed and reaped when this is dropped, however the
/// test that started it ends.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, mut c) in std::mem::take(&mut self.procs) {
            // SIGCONT first: a stopped process cannot die of SIGKILL until resumed on some kernels.
            unsafe {
                libc::kill(c.id() as libc::pid_t, libc::SIGCONT);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
