//! `txn playground`: a whole local cluster in one command.
//!
//! Starts 3 nodes as real processes on 127.0.0.1, each one `pact` process
//! holding a replica of `--shards` shards and of the coordinator group
//! (`--layout split`: 3 `participant` processes for the shards and 3
//! `coordinator` processes for the group, 6 in all), with all data and
//! logs under one folder. The cluster config is written there on the first
//! start and reused afterwards, so a restart comes back on the same data
//! and layout; a flag that would change it (`--shards`, `--port`,
//! `--layout`, `--tls`) is refused on a restart rather than ignored. The
//! folder is locked while the playground runs (`pact.pid`, see
//! `pact_common::dirlock`), and so is each node's data folder by its
//! process: a second playground on a folder in use is refused before it
//! starts anything, naming the pid. Ctrl-C (or SIGTERM) stops every
//! process cleanly.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pact_client::{Client, ClientError, ClientOptions, ReplicaStatus};
use pact_common::dirlock::DirLock;
use pact_common::{ClusterConfig, NodeId, ShardId};

/// Used for a new playground when the flags do not say.
const DEFAULT_SHARDS: u64 = 3;
const DEFAULT_PORT: u16 = 7001;
const DEFAULT_REPLICAS: u64 = 3;

/// Replicas per shard of a playground's config (they all have the same).
fn replicas_of(c: &ClusterConfig) -> Option<u64> {
    c.shards.first().map(|s| s.replicas.len() as u64)
}

/// How the playground places its groups on processes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// 3 nodes, each one `pact` process with every shard's replica and the
    /// coordinator group's.
    Combined,
    /// 3 `participant` nodes for the shards and 3 `coordinator` nodes for
    /// the group: 6 processes.
    Split,
}

impl Layout {
    fn of(config: &ClusterConfig) -> Layout {
        if config.nodes.iter().any(|n| config.is_combined(n.id)) {
            Layout::Combined
        } else {
            Layout::Split
        }
    }

    fn name(self) -> &'static str {
        match self {
            Layout::Combined => "combined",
            Layout::Split => "split",
        }
    }
}

pub struct Options {
    pub dir: PathBuf,
    /// None: 3 for a new playground, whatever an existing one has.
    pub shards: Option<u64>,
    /// Replicas per shard and of the coordinator group. None: 3 for a new
    /// playground, whatever an existing one has.
    pub replicas: Option<u64>,
    /// None: 7001 for a new playground, whatever an existing one has.
    pub port: Option<u16>,
    /// Make certificates and turn on mutual TLS (first start only).
    pub tls: bool,
    /// For a new playground; None: combined, or whatever an existing one has.
    pub layout: Option<Layout>,
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the txn binary's location")?;
    let p = exe.with_file_name(name);
    if !p.exists() {
        bail!(
            "{} not found next to txn; build it with `cargo build --bins`",
            p.display()
        );
    }
    Ok(p)
}

/// A new combined playground's leader balancing round (`[raft]
/// balance_leaders_ms`): leaders reach the preferred node within a few
/// seconds of a start.
const GATHER_EVERY_MS: u64 = 1_000;

/// How long past every group having a leader the playground waits for the
/// leaders to be gathered (`[raft] prefer_leaders`) before it says ready
/// anyway.
const GATHER_WITHIN: Duration = Duration::from_secs(20);

fn load_or_create(opts: &Options) -> anyhow::Result<(ClusterConfig, PathBuf)> {
    std::fs::create_dir_all(&opts.dir)
        .with_context(|| format!("cannot create {}", opts.dir.display()))?;
    let path = opts.dir.join("cluster.toml");
    if path.exists() {
        let c = ClusterConfig::load(&path)?;
        if opts.tls && c.tls.is_none() {
            bail!(
                "{} exists without TLS; --tls applies to a new playground only (use another --dir)",
                path.display()
            );
        }
        let has = Layout::of(&c);
        if let Some(want) = opts.layout.filter(|l| *l != has) {
            bail!(
                "{} has the {} layout; --layout {} applies to a new playground only (use another --dir)",
                path.display(),
                has.name(),
                want.name()
            );
        }
        if let Some(want) = opts.shards.filter(|n| *n != c.shards.len() as u64) {
            bail!(
                "{} has {} shards; --shards {want} applies to a new playground only \
                 (drop the flag to restart it, or use another --dir)",
                path.display(),
                c.shards.len()
            );
        }
        let has = replicas_of(&c);
        if let Some(want) = opts.replicas.filter(|n| Some(*n) != has) {
            bail!(
                "{} has {} replicas per shard; --replicas {want} applies to a new playground \
                 only (drop the flag to restart it, or use another --dir)",
                path.display(),
                has.map(|n| n.to_string()).unwrap_or_else(|| "?".into())
            );
        }
        let first = first_port(&c);
        if let Some(want) = opts.port.filter(|p| Some(*p) != first) {
            bail!(
                "{} has its first node on port {}; --port {want} applies to a new playground only \
                 (drop the flag to restart it, or use another --dir)",
                path.display(),
                first.map(|p| p.to_string()).unwrap_or_else(|| "?".into())
            );
        }
        return Ok((c, path));
    }
    let shards = opts.shards.unwrap_or(DEFAULT_SHARDS);
    let port = opts.port.unwrap_or(DEFAULT_PORT);
    let r = opts.replicas.unwrap_or(DEFAULT_REPLICAS);
    let mut c = match opts.layout.unwrap_or(Layout::Combined) {
        Layout::Combined => {
            let mut c = ClusterConfig::local_combined(3, shards, r, port)?;
            // The nodes share this machine's cores, so leaders spread over
            // them buy nothing, while each shard leader away from the
            // coordinator's makes its calls network round trips: gather
            // them on the first node, and soon after a start.
            c.raft.prefer_leaders = c.nodes.first().map(|n| n.id).into_iter().collect();
            c.raft.balance_leaders_ms = GATHER_EVERY_MS;
            c.validate()?;
            c
        }
        Layout::Split => ClusterConfig::local_with_coordinators(3, shards, r, r, port)?,
    };
    if opts.tls {
        c.tls = Some(
            pact_common::certgen::write_cluster_certs(&c, &opts.dir.join("certs"), &opts.dir)
                .context("cannot make the playground's certificates")?,
        );
    }
    std::fs::write(&path, c.to_toml_string())
        .with_context(|| format!("cannot write {}", path.display()))?;
    // Read back as every node will: relative certificate paths resolved.
    let c = ClusterConfig::load(&path)?;
    Ok((c, path))
}

/// The first node's client port, from which the playground numbered all.
fn first_port(config: &ClusterConfig) -> Option<u16> {
    config
        .nodes
        .first()?
        .addr
        .rsplit_once(':')?
        .1
        .parse::<u16>()
        .ok()
}

/// Metrics of the i-th node: on the ports just after the nodes' block.
pub fn metrics_addr(config: &ClusterConfig, i: usize) -> Option<String> {
    let first = first_port(config)?;
    Some(format!("127.0.0.1:{}", first.checked_add(10 + i as u16)?))
}

/// Node data folders must be free too: a node left running by an earlier
/// playground that was killed would refuse the new one's node (and answer
/// its readiness probe in its place). Each is locked and released at once;
/// the node takes it for good when it starts.
fn check_node_dirs(dir: &Path, config: &ClusterConfig) -> anyhow::Result<()> {
    for n in &config.nodes {
        let data = node_dir(dir, n.id);
        if data.exists() {
            DirLock::acquire(&data).map_err(|e| {
                anyhow::anyhow!(
                    "{e} (a node of an earlier playground still running? stop it first)"
                )
            })?;
        }
    }
    Ok(())
}

fn node_dir(dir: &Path, id: pact_common::NodeId) -> PathBuf {
    dir.join(format!("node-{id}"))
}

fn spawn(
    dir: &Path,
    config_path: &Path,
    config: &ClusterConfig,
) -> anyhow::Result<Vec<(u64, Child)>> {
    // Every binary found before any node starts.
    let bins = config
        .nodes
        .iter()
        .map(|n| sibling(server_binary(config, n.id)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut children = Vec::new();
    for (i, (n, bin)) in config.nodes.iter().zip(&bins).enumerate() {
        match spawn_node(dir, config_path, config, i, n.id, bin) {
            Ok(c) => children.push((n.id.0, c)),
            Err(e) => {
                // Those already started would outlive the playground.
                stop(&mut children);
                return Err(e);
            }
        }
    }
    Ok(children)
}

fn spawn_node(
    dir: &Path,
    config_path: &Path,
    config: &ClusterConfig,
    i: usize,
    id: pact_common::NodeId,
    bin: &Path,
) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("node-{id}.log")))?;
    Command::new(bin)
        .arg("--config")
        .arg(config_path)
        .arg("--node-id")
        .arg(id.0.to_string())
        .arg("--data-dir")
        .arg(node_dir(dir, id))
        .args(
            metrics_addr(config, i)
                .map(|a| vec!["--metrics-listen".to_string(), a])
                .unwrap_or_default(),
        )
        .args(
            workers_per_node(config.nodes.len())
                .map(|n| vec!["--worker-threads".to_string(), n.to_string()])
                .unwrap_or_default(),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))
}

/// Worker threads for each of `nodes` servers sharing this machine: the
/// cores divided among them, at least one (with a worker per core each,
/// three nodes on two cores ran about a fifth slower and with three times
/// the open-loop p99: docs/performance.md, "Worker threads per node").
/// None, leaving it to the servers, when the environment already says
/// (`PACT_WORKER_THREADS` or `TOKIO_WORKER_THREADS`, inherited).
fn workers_per_node(nodes: usize) -> Option<usize> {
    if ["PACT_WORKER_THREADS", "TOKIO_WORKER_THREADS"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
    {
        return None;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Some(split_cores(cores, nodes))
}

fn split_cores(cores: usize, nodes: usize) -> usize {
    (cores / nodes.max(1)).clamp(1, 1024)
}

/// The server binary that runs node `id`: `pact` for a node with both
/// roles (it could run any node, but a split layout keeps its binaries).
fn server_binary(config: &ClusterConfig, id: pact_common::NodeId) -> &'static str {
    if config.is_combined(id) {
        "pact"
    } else if config.coordinator_of(id).is_some() {
        "coordinator"
    } else {
        "participant"
    }
}

async fn wait_ready(config: &ClusterConfig, within: Duration) -> anyhow::Result<bool> {
    let tls = pact_client::Tls::for_client(config, &pact_client::TlsPaths::default())?;
    let client = Client::new(
        config,
        ClientOptions {
            tls,
            ..ClientOptions::default()
        },
    );
    let deadline = Instant::now() + within;
    let mut all_led: Option<Instant> = None;
    while Instant::now() < deadline {
        // A config's shard merged away and retired has no leader, ever.
        client.learn_retired(Duration::from_millis(500)).await;
        let retired = client.retired_shards();
        let rows = client.status().await;
        let coords = client.coordinator_status_all().await;
        let leads =
            |r: &Result<ReplicaStatus, ClientError>| r.as_ref().is_ok_and(|r| r.role == "leader");
        let leaders: Vec<(Group, NodeId)> = rows
            .iter()
            .filter(|(_, _, r)| leads(r))
            .map(|(id, n, _)| (Group::Shard(id.0), *n))
            .chain(
                coords
                    .iter()
                    .filter(|(_, _, r)| leads(r))
                    .map(|(g, n, _)| (Group::Coordinator(*g), *n)),
            )
            .collect();
        let led = |group: Group| leaders.iter().any(|(g, _)| *g == group);
        let shards_led = config
            .shards
            .iter()
            .filter(|s| retired.contains(&s.id) || led(Group::Shard(s.id.0)))
            .count();
        let coord_led = config
            .coordinators
            .iter()
            .filter(|g| led(Group::Coordinator(g.group)))
            .count();
        if shards_led == config.shards.len() && coord_led == config.coordinators.len() {
            let placed = gathered(config, &retired, &leaders);
            let led_at = *all_led.get_or_insert_with(Instant::now);
            if placed || led_at.elapsed() >= GATHER_WITHIN {
                return Ok(true);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every group led, only not gathered yet: ready all the same.
    Ok(all_led.is_some())
}

/// A Raft group as `wait_ready` tells them apart (shard and coordinator
/// group ids are numbered apart only in the combined layout).
#[derive(PartialEq, Eq)]
enum Group {
    Shard(u64),
    Coordinator(u64),
}

/// Whether every group with a node of `[raft] prefer_leaders` among its
/// configured voters is led by the first such node (`leaders`: group,
/// its leader; `retired` shards, which have none, are left out). True
/// without a preference. The configured voters, not the live ones: a
/// replica moved at run time can only make the wait run its course.
fn gathered(
    config: &ClusterConfig,
    retired: &BTreeSet<ShardId>,
    leaders: &[(Group, NodeId)],
) -> bool {
    let prefer = &config.raft.prefer_leaders;
    let groups = config
        .shards
        .iter()
        .filter(|s| !retired.contains(&s.id))
        .map(|s| (Group::Shard(s.id.0), &s.replicas))
        .chain(
            config
                .coordinators
                .iter()
                .map(|g| (Group::Coordinator(g.group), &g.replicas)),
        );
    groups.into_iter().all(
        |(group, voters)| match prefer.iter().find(|p| voters.contains(p)) {
            Some(first) => leaders.iter().any(|(g, n)| *g == group && n == first),
            None => true,
        },
    )
}

fn stop(children: &mut [(u64, Child)]) {
    for (_, c) in children.iter() {
        // SAFETY: kill(2) on processes we spawned and have not reaped.
        unsafe {
            libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for (_, c) in children.iter_mut() {
        while Instant::now() < deadline {
            if matches!(c.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    // First, before the config is read or written: another playground on
    // this folder would otherwise find its own nodes refused, and take the
    // first one's for them.
    let _lock = DirLock::acquire(&opts.dir).context("cannot start the playground")?;
    let (config, config_path) = load_or_create(&opts)?;
    check_node_dirs(&opts.dir, &config)?;
    let mut children = spawn(&opts.dir, &config_path, &config)?;
    outln!(
        "Pact playground in {} ({} layout, {} processes)",
        opts.dir.display(),
        Layout::of(&config).name(),
        children.len()
    );
    for (i, n) in config.nodes.iter().enumerate() {
        let shards: Vec<u64> = config.shards_of_node(n.id).iter().map(|s| s.0).collect();
        let role = match config.coordinator_of(n.id) {
            Some(g) if !shards.is_empty() => {
                format!("pact (shards {shards:?}, coordinator group {})", g.group)
            }
            Some(g) => format!("coordinator (group {})", g.group),
            None => format!("participant (shards {shards:?})"),
        };
        let metrics = metrics_addr(&config, i)
            .map(|a| format!("  metrics http://{a}/metrics"))
            .unwrap_or_default();
        outln!(
            "  node {}  {}  (peer {})  {}{}",
            n.id,
            n.addr,
            n.peer_addr,
            role,
            metrics
        );
    }
    if let Some(t) = &config.tls {
        outln!(
            "mutual TLS: CA {}; clients present {} (or --cacert/--cert/--key)",
            t.ca,
            t.client_cert.as_deref().unwrap_or("their own certificate")
        );
    }
    outln!(
        "config: {}   (use: export PACT_CONFIG={})",
        config_path.display(),
        config_path.display()
    );
    outln!("then: txn put KEY VALUE, txn exec put alice 100 put bob 50, txn shell, txn status");
    let ready = match wait_ready(&config, Duration::from_secs(60)).await {
        Ok(r) => r,
        Err(e) => {
            stop(&mut children);
            return Err(e);
        }
    };
    if ready {
        outln!("ready: every shard and coordinator group has a leader. Ctrl-C stops the cluster.");
    } else {
        errln!(
            "warning: not every group has a leader yet; see {}/node-*.log",
            opts.dir.display()
        );
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = tick.tick() => {
                for (id, c) in children.iter_mut() {
                    if let Ok(Some(st)) = c.try_wait() {
                        errln!("warning: node {id} exited ({st}); see {}/node-{id}.log", opts.dir.display());
                    }
                }
                children.retain_mut(|(_, c)| !matches!(c.try_wait(), Ok(Some(_))));
            }
        }
    }
    outln!("stopping...");
    stop(&mut children);
    outln!(
        "stopped; data kept in {} (run the same command to restart on it)",
        opts.dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_on_one_machine_split_its_cores() {
        assert_eq!(split_cores(2, 3), 1, "at least one each");
        assert_eq!(split_cores(8, 3), 2);
        assert_eq!(split_cores(16, 1), 16);
        assert_eq!(split_cores(4, 0), 4);
    }

    fn opts(dir: &Path, replicas: Option<u64>) -> Options {
        Options {
            dir: dir.to_path_buf(),
            shards: None,
            replicas,
            port: Some(27_901),
            tls: false,
            layout: None,
        }
    }

    #[test]
    fn one_replica_playground_puts_shard_i_on_node_i_and_keeps_its_count() {
        let dir = std::env::temp_dir().join(format!("pact-pg-replicas-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (c, _) = load_or_create(&opts(&dir, Some(1))).expect("new playground");
        let placed: Vec<(u64, Vec<u64>)> = c
            .shards
            .iter()
            .map(|s| (s.id.0, s.replicas.iter().map(|n| n.0).collect()))
            .collect();
        assert_eq!(placed, vec![(1, vec![1]), (2, vec![2]), (3, vec![3])]);
        assert_eq!(c.coordinators[0].replicas.len(), 1);
        assert_eq!(Layout::of(&c), Layout::Combined);
        // A restart keeps it; asking for another count is refused.
        assert!(load_or_create(&opts(&dir, None)).is_ok());
        assert!(load_or_create(&opts(&dir, Some(1))).is_ok());
        let e = load_or_create(&opts(&dir, Some(3))).expect_err("changed replicas");
        assert!(e.to_string().contains("--replicas 3"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
        // The default is three of each.
        let (c, _) = load_or_create(&opts(&dir, None)).expect("new playground");
        assert!(c.shards.iter().all(|s| s.replicas.len() == 3));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
