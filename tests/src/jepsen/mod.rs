//! Jepsen-style runs: a real cluster, concurrent clients recording a
//! history, a nemesis injecting faults on a seeded schedule, then heal,
//! quiesce, final reads and the checkers of `pact-check`.
//!
//! A run leaves its artifacts in `target/jepsen/<name>-<seed>/` (or under
//! `PACT_JEPSEN_RESULTS`): `history.jsonl`, `history.edn`, `results.json`,
//! `nemesis.json`, `seed`, `latency.png` (each operation's latency over
//! time), `rate.png` (completions per second), both by outcome and
//! operation with fault periods shaded and named (see [`plot`]), and every
//! node's log. A run of several workloads (`Spec::also`) writes one
//! `history-<workload>.*` per workload instead, each checked by its own
//! checker; a sampled run (`Spec::sample_every`, the soak) adds
//! `soak.csv`, `soak.txt` and the memory, disk and record plots (see
//! [`soak`]). `PACT_JEPSEN_SEED` replays a
//! schedule; `PACT_JEPSEN_SECONDS` lengthens runs (the long tier).

pub mod nemesis;
pub mod net;
mod plot;
pub mod soak;
pub mod workload;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pact_check::{CheckResult, History, Op, OpType, Value};
use pact_client::{Client, ClientOptions};
use pact_common::{ClusterConfig, NodeId, TxnId};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

pub use nemesis::{Fault, Interval};
pub use workload::Workload;

use crate::{fast_tuning, Cluster};

/// The history being recorded; shared by every worker of one workload and
/// the nemesis. The workloads of a mixed run have one each, on one clock
/// (see [`Recorder::sibling`]).
pub struct Recorder {
    t0: Instant,
    ops: Mutex<Vec<Op>>,
    shared: Arc<Shared>,
}

/// What the recorders of one run share: ids and errors are the cluster's,
/// whichever workload met them.
#[derive(Default)]
struct Shared {
    /// Why operations failed or went unknown, counted by message shape.
    errors: Mutex<BTreeMap<String, usize>>,
    /// Every transaction id a coordinator handed out, with the process
    /// and time (seconds) it went to, and the ids handed out twice.
    txn_ids: Mutex<TxnIds>,
}

#[derive(Default)]
struct TxnIds {
    seen: HashMap<TxnId, (i64, f64)>,
    repeated: Vec<serde_json::Value>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            t0: Instant::now(),
            ops: Mutex::new(Vec::new()),
            shared: Arc::default(),
        }
    }
}

impl Recorder {
    /// A recorder of another history on the same clock, sharing the
    /// transaction-id check and the error tally.
    pub fn sibling(&self) -> Recorder {
        Recorder {
            t0: self.t0,
            ops: Mutex::new(Vec::new()),
            shared: self.shared.clone(),
        }
    }

    /// Note the id a coordinator gave `process`'s transaction. Clients name
    /// a transaction by its id (`txn_status` after an unknown commit, the
    /// shards' outcome records): one id for two transactions lets the
    /// answer about one be taken for the other.
    pub fn note_txn(&self, process: i64, id: TxnId) {
        let now = self.elapsed_s();
        if let Ok(mut ids) = self.shared.txn_ids.lock() {
            if let Some(&(p, t)) = ids.seen.get(&id) {
                ids.repeated.push(serde_json::json!({
                    "id": id.to_string(),
                    "first": {"process": p, "time_s": t},
                    "again": {"process": process, "time_s": now},
                }));
            } else {
                ids.seen.insert(id, (process, now));
            }
        }
    }

    /// The check that no transaction id was handed out twice.
    fn check_txn_ids(&self) -> CheckResult {
        let (count, repeated) = self
            .shared
            .txn_ids
            .lock()
            .map(|ids| (ids.seen.len(), ids.repeated.clone()))
            .unwrap_or_default();
        let valid = repeated.is_empty();
        CheckResult {
            valid,
            anomalies: if valid {
                Vec::new()
            } else {
                vec!["duplicate-txn-id".into()]
            },
            details: serde_json::json!({
                "ids": count,
                "repeated_count": repeated.len(),
                "repeated": repeated.iter().take(8).collect::<Vec<_>>(),
            }),
            op_count: count,
        }
    }

    /// Count an error, with digits blanked so ids do not split the tally.
    pub fn note_error(&self, e: &pact_client::ClientError) {
        let shape: String = e
            .to_string()
            .chars()
            .map(|c| if c.is_ascii_digit() { '#' } else { c })
            .take(100)
            .collect();
        if let Ok(mut m) = self.shared.errors.lock() {
            *m.entry(shape).or_default() += 1;
        }
    }

    pub fn errors(&self) -> BTreeMap<String, usize> {
        self.shared
            .errors
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    fn push(&self, process: i64, typ: OpType, f: &str, key: Option<Value>, value: Value) {
        let time_ns = self.t0.elapsed().as_nanos() as u64;
        if let Ok(mut ops) = self.ops.lock() {
            let index = ops.len() as u64;
            ops.push(Op {
                index,
                time_ns: Some(time_ns),
                process,
                typ,
                f: f.to_string(),
                key,
                value,
            });
        }
    }

    pub fn invoke(&self, process: i64, f: &str, key: Option<Value>, value: Value) {
        self.push(process, OpType::Invoke, f, key, value);
    }

    /// Record a completion; returns its type for the caller's bookkeeping.
    pub fn complete(
        &self,
        process: i64,
        typ: OpType,
        f: &str,
        key: Option<Value>,
        value: Value,
    ) -> OpType {
        self.push(process, typ, f, key, value);
        typ
    }

    pub fn elapsed_s(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    pub fn history(&self) -> History {
        self.ops.lock().map(|o| o.clone()).unwrap_or_default()
    }
}

/// One run of the suite.
#[derive(Clone, Debug)]
pub struct Spec {
    pub name: String,
    pub workload: Workload,
    /// More workloads run beside `workload` (the workers taking them in
    /// turn), each on its own keys with its own history and checker: a
    /// mixed load for soak runs.
    pub also: Vec<Workload>,
    /// Faults the nemesis applies one at a time, in a seeded shuffled
    /// order, every fault once before any repeats.
    pub faults: Vec<Fault>,
    pub participants: u64,
    pub shards: u64,
    pub coordinators: u64,
    pub duration: Duration,
    pub concurrency: usize,
    /// Extra workers that give up on their requests after 1-5 ms (see
    /// [`workload::Impatient`]); their operations mostly end as info.
    pub impatient: usize,
    /// `PACT_FAULTS` for every server: empty for the real build, a bug
    /// name for the deliberately broken one.
    pub server_faults: Vec<&'static str>,
    /// Register reads go to a random replica rather than the leader.
    pub follower_reads: bool,
    /// Start every server with its own random clock skew.
    pub skewed_clocks: bool,
    /// Fault-free time between faults (milliseconds, drawn uniformly), so
    /// the run shows recovery and not only failure.
    pub quiet_ms: (u64, u64),
    /// Sample every server's memory, disk and transaction records this
    /// often through the run (see [`soak`]).
    pub sample_every: Option<Duration>,
    /// One more participant node that the config gives nothing (a spare,
    /// for [`Fault::MoveReplica`]), and every node run as `pact`, the
    /// server that hosts and drops replicas at run time.
    pub spare: bool,
    /// `transactions.record_retention_s` (and a 300 ms collection
    /// interval) when set: records expire within the run, so merged
    /// shards can be retired ([`Fault::Merge`], and the metadata group's
    /// own rounds every 2 s) and old transactions are answered "expired".
    pub record_retention_s: Option<u64>,
    /// `[raft] prefer_leaders` names the first node: the balancer's
    /// rounds gather leaders there (and away from it while it is down)
    /// instead of spreading them.
    pub gather_leaders: bool,
}

impl Spec {
    pub fn new(name: &str, workload: Workload, faults: &[Fault]) -> Spec {
        let secs = std::env::var("PACT_JEPSEN_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(15);
        Spec {
            name: name.to_string(),
            workload,
            also: Vec::new(),
            faults: faults.to_vec(),
            participants: 3,
            shards: 3,
            coordinators: 3,
            duration: Duration::from_secs(secs),
            concurrency: 6,
            impatient: 0,
            server_faults: Vec::new(),
            follower_reads: false,
            skewed_clocks: false,
            quiet_ms: (500, 1500),
            sample_every: None,
            spare: false,
            record_retention_s: None,
            gather_leaders: false,
        }
    }
}

/// What a run produced.
pub struct Report {
    pub dir: PathBuf,
    pub seed: u64,
    pub results: Vec<(String, CheckResult)>,
    pub intervals: Vec<Interval>,
    pub ok: usize,
    pub fail: usize,
    pub info: usize,
    pub final_reads_ok: bool,
    /// Client errors seen, by message shape (see [`Recorder::note_error`]).
    pub errors: BTreeMap<String, usize>,
    /// What the servers' samples show, when the run sampled them.
    pub soak: Option<soak::Summary>,
}

impl Report {
    pub fn valid(&self) -> bool {
        self.results.iter().all(|(_, r)| r.valid)
    }

    /// Every anomaly name any checker reported, sorted.
    pub fn anomalies(&self) -> Vec<String> {
        let mut a: Vec<String> = self
            .results
            .iter()
            .flat_map(|(_, r)| r.anomalies.iter().cloned())
            .collect();
        a.sort();
        a.dedup();
        a
    }

    pub fn summary(&self) -> String {
        format!(
            "seed {} | ok {} fail {} info {} | faults {} | final reads {} | anomalies {:?} | artifacts {}",
            self.seed,
            self.ok,
            self.fail,
            self.info,
            self.intervals.len(),
            if self.final_reads_ok { "ok" } else { "FAILED" },
            self.anomalies(),
            self.dir.display()
        )
    }
}

fn results_root() -> PathBuf {
    if let Ok(d) = std::env::var("PACT_JEPSEN_RESULTS") {
        return PathBuf::from(d);
    }
    // target/<profile> -> target/jepsen
    let bin = crate::bin_dir();
    bin.parent()
        .map_or(bin.clone(), |p| p.to_path_buf())
        .join("jepsen")
}

fn seed() -> u64 {
    std::env::var("PACT_JEPSEN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

fn client_opts() -> ClientOptions {
    // Short deadlines: under a partition an operation should end (as fail
    // or info) within seconds, not hang the worker for the whole fault.
    ClientOptions {
        request_timeout: Duration::from_secs(3),
        retry_for: Duration::from_secs(6),
        ..ClientOptions::default()
    }
}

/// Run `spec` to the end and check it. Panics only on harness failures
/// (cannot start the cluster, cannot write artifacts).
pub async fn run(spec: Spec) -> Report {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    eprintln!(
        "jepsen {}: seed {seed} (PACT_JEPSEN_SEED={seed} replays it)",
        spec.name
    );
    let mut config = ClusterConfig::local_with_coordinators(
        spec.participants,
        spec.shards,
        3,
        spec.coordinators,
        7001,
    )
    .expect("config");
    if let Some(r) = spec.record_retention_s {
        config.transactions.record_retention_s = r;
        config.transactions.gc_interval_ms = 300;
    }
    // Coordinator group ids that no shard has, so that a coordinator
    // group's replicas can move (`Fault::MoveReplica`).
    for (i, g) in config.coordinators.iter_mut().enumerate() {
        g.group = spec.shards + 1 + i as u64;
    }
    if spec.spare {
        let id = NodeId(config.nodes.len() as u64 + 1);
        // Ports are assigned by `Cluster::create`.
        config.nodes.push(pact_common::NodeConfig {
            id,
            addr: "127.0.0.1:1".into(),
            peer_addr: "127.0.0.1:2".into(),
        });
    }
    // Leaders are balanced as in production (more often, so that the
    // hand-overs meet the faults): a transfer is one more way for a
    // leader to change under running transactions.
    // Where records expire within the run, the metadata group also
    // retires merged shards by itself, racing the nemesis's own retire.
    let retire_merged_secs = match spec.record_retention_s {
        Some(_) => 2,
        None => fast_tuning().retire_merged_secs,
    };
    let prefer_leaders = match spec.gather_leaders {
        true => config.nodes.first().map(|n| n.id).into_iter().collect(),
        false => Vec::new(),
    };
    let tuning = pact_common::RaftTuning {
        balance_leaders_ms: 3_000,
        prefer_leaders,
        retire_merged_secs,
        ..fast_tuning()
    };
    let mut cluster = Cluster::create(config, tuning);
    if spec.spare {
        cluster.use_one_binary();
    }
    let net = if spec.faults.iter().any(|f| f.needs_net()) {
        let nodes: Vec<(NodeId, [String; 2])> = cluster
            .config
            .nodes
            .iter()
            .map(|n| (n.id, [n.addr.clone(), n.peer_addr.clone()]))
            .collect();
        let net = net::Net::start(&nodes).await.expect("start link proxies");
        for id in cluster.node_ids() {
            cluster.set_peer_addrs(id, |peer| {
                (
                    net.link_addr(id, peer, net::Port::Client),
                    net.link_addr(id, peer, net::Port::Peer),
                )
            });
        }
        Some(net)
    } else {
        None
    };
    let faults = spec.server_faults.join(",");
    for id in cluster.node_ids() {
        if !faults.is_empty() {
            cluster.set_env(id, "PACT_FAULTS", &faults);
        }
        if spec.skewed_clocks {
            let skew = rng.random_range(-60_000i64..=60_000);
            cluster.set_env(id, "PACT_CLOCK_OFFSET_MS", &skew.to_string());
        }
    }
    // Sampled servers serve their metrics (transaction records, heap).
    let targets: Vec<soak::Target> = match spec.sample_every {
        Some(_) => {
            let ids = cluster.node_ids();
            let ports = crate::free_ports(ids.len());
            ids.into_iter()
                .zip(ports)
                .map(|(id, port)| {
                    let addr = format!("127.0.0.1:{port}");
                    cluster.set_args(id, &["--metrics-listen".into(), addr.clone()]);
                    let role = if cluster.config.is_combined(id) {
                        "pact"
                    } else if cluster.config.coordinator_of(id).is_some() {
                        "coordinator"
                    } else {
                        "participant"
                    };
                    soak::Target {
                        id,
                        name: format!("node-{id} {role}"),
                        data_dir: cluster.data_dir(id),
                        metrics: Some(addr),
                    }
                })
                .collect()
        }
        None => Vec::new(),
    };
    let started = Instant::now();
    cluster.start_all();
    quiesce(&cluster).await;
    let workloads: Vec<Workload> = std::iter::once(spec.workload)
        .chain(spec.also.iter().copied())
        .collect();
    let setup = cluster.client_with(client_opts());
    for workload in &workloads {
        let mut tries = 0;
        while let Err(e) = workload.setup(&setup).await {
            tries += 1;
            assert!(
                tries < 20,
                "workload setup failed: {e}\n{}",
                cluster.logs_tail()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    let rec = Arc::new(Recorder::default());
    // One history per workload, the first one's recorder first.
    let recs: Vec<Arc<Recorder>> = std::iter::once(rec.clone())
        .chain(workloads[1..].iter().map(|_| Arc::new(rec.sibling())))
        .collect();
    let sampler = spec
        .sample_every
        .map(|every| soak::Sampler::start(targets.clone(), cluster.pids(), rec.t0, every));
    let unique = Arc::new(AtomicI64::new(0));
    let deadline = Instant::now() + spec.duration;
    let replicas: Vec<Client> = cluster
        .participant_ids()
        .into_iter()
        .map(|id| cluster.client_for_node(id, client_opts()))
        .collect();
    let mut workers = Vec::new();
    let n = (spec.concurrency + spec.impatient) as i64;
    for w in 0..n {
        // The last `impatient` workers are the impatient ones.
        let impatient = (w >= spec.concurrency as i64)
            .then(|| workload::Impatient::new(|o| cluster.client_with(o)));
        let which = w as usize % workloads.len();
        let mut ctx = workload::Ctx {
            client: cluster.client_with(client_opts()),
            replicas: replicas.clone(),
            follower_reads: spec.follower_reads,
            rec: recs[which].clone(),
            rng: StdRng::seed_from_u64(seed.wrapping_add(w as u64 + 1)),
            unique: unique.clone(),
            impatient,
        };
        let workload = workloads[which];
        workers.push(tokio::spawn(async move {
            let mut process = w;
            let (mut ok, mut fail, mut info) = (0, 0, 0);
            while Instant::now() < deadline {
                match workload.step(&mut ctx, process).await {
                    OpType::Ok => ok += 1,
                    OpType::Fail => fail += 1,
                    _ => {
                        info += 1;
                        // Its operation may still take effect: this
                        // process is "crashed"; carry on as a new one.
                        process += n;
                    }
                }
                if ctx.impatient.is_some() {
                    // Each abandoned request still costs the servers a
                    // full round: leave them time for the patient workers.
                    let pause = ctx.rng.random_range(1..=5);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            }
            (ok, fail, info)
        }));
    }

    // The nemesis, on this task, until the deadline.
    let mut intervals = Vec::new();
    if !spec.faults.is_empty() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut order: Vec<Fault> = Vec::new();
        while Instant::now() + Duration::from_secs(2) < deadline {
            if order.is_empty() {
                order = spec.faults.clone();
                order.shuffle(&mut rng);
            }
            let fault = order.pop().expect("refilled above");
            let start_s = rec.elapsed_s();
            let name = Value::Keyword(format!("{fault:?}"));
            for r in &recs {
                r.invoke(-1, "start", None, name.clone());
            }
            let (applied, detail) = nemesis::apply(
                fault,
                &mut cluster,
                net.as_ref(),
                &mut rng,
                started.elapsed(),
            )
            .await;
            for r in &recs {
                r.complete(-1, OpType::Info, "start", None, Value::Str(detail.clone()));
            }
            tokio::time::sleep(nemesis::hold(&mut rng)).await;
            for r in &recs {
                r.invoke(-1, "stop", None, name.clone());
            }
            nemesis::heal(applied, &mut cluster, net.as_ref());
            for r in &recs {
                r.complete(-1, OpType::Info, "stop", None, Value::Str(detail.clone()));
            }
            intervals.push(Interval {
                fault,
                start_s,
                end_s: rec.elapsed_s(),
                detail,
            });
            let (lo, hi) = spec.quiet_ms;
            tokio::time::sleep(Duration::from_millis(rng.random_range(lo..=hi))).await;
        }
    }
    let (mut ok, mut fail, mut info) = (0, 0, 0);
    for w in workers {
        let (o, f, i) = w.await.expect("worker panicked");
        ok += o;
        fail += f;
        info += i;
    }

    // Heal, quiesce, final reads.
    if let Some(net) = &net {
        net.heal();
    }
    for id in cluster.node_ids() {
        cluster.resume(id);
        if !cluster.is_running(id) {
            cluster.kill(id);
            cluster.start_node(id);
        }
    }
    quiesce(&cluster).await;
    // In-doubt transactions are resolved by participants after a delay;
    // final reads wait on their locks, so retry for a while.
    let final_deadline = Instant::now() + Duration::from_secs(40);
    let mut final_reads_ok = true;
    for (i, workload) in workloads.iter().enumerate() {
        let mut fctx = workload::Ctx {
            client: cluster.client_with(client_opts()),
            replicas: Vec::new(),
            follower_reads: false,
            rec: recs[i].clone(),
            rng: StdRng::seed_from_u64(seed ^ 0xf1a1),
            unique: unique.clone(),
            impatient: None,
        };
        // Above any worker's process number, even after a long run's
        // many crashed (info) processes.
        let mut process = 1_000_000 * (i as i64 + 1);
        let mut ok = false;
        while !ok && Instant::now() < final_deadline {
            ok = workload.final_reads(&mut fctx, process).await;
            process += 1;
            if !ok {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        final_reads_ok &= ok;
    }
    let samples = match sampler {
        Some(s) => s.finish().await,
        None => Vec::new(),
    };

    let histories: Vec<(Workload, History)> = workloads
        .iter()
        .zip(&recs)
        .map(|(w, r)| (*w, r.history()))
        .collect();
    let mut results: Vec<(String, CheckResult)> =
        histories.iter().flat_map(|(w, h)| w.check(h)).collect();
    results.push(("txn-ids".into(), rec.check_txn_ids()));
    let dir = results_root().join(format!("{}-{seed}", spec.name));
    let report = Report {
        dir,
        seed,
        results,
        intervals,
        ok,
        fail,
        info,
        final_reads_ok,
        errors: rec.errors(),
        soak: spec
            .sample_every
            .map(|every| soak::summarize(&samples, every)),
    };
    write_artifacts(&report, &histories, &samples, &cluster);
    eprintln!("jepsen {}: {}", spec.name, report.summary());
    if let Some(sum) = &report.soak {
        for line in sum.lines() {
            eprintln!("jepsen {}: {line}", spec.name);
        }
    }
    report
}

async fn quiesce(c: &Cluster) {
    let participants = c.participant_ids();
    // Shards splits created included.
    let client = c.client();
    let _ = tokio::time::timeout(
        Duration::from_secs(30),
        client.refresh_map(&client.shard_map()),
    )
    .await;
    // Retired shards have no group, so no leader.
    client.learn_retired(Duration::from_secs(5)).await;
    let retired = client.retired_shards();
    for s in client.shards().into_iter().filter(|s| !retired.contains(s)) {
        c.wait_leader(s, &participants, Duration::from_secs(30))
            .await;
    }
    for g in &c.config.coordinators {
        c.wait_coordinator(g.group, Duration::from_secs(30)).await;
    }
}

fn write_artifacts(
    r: &Report,
    histories: &[(Workload, History)],
    samples: &[soak::Sample],
    c: &Cluster,
) {
    let dir = &r.dir;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("logs")).expect("create results dir");
    let w = |name: &str, text: String| {
        std::fs::write(dir.join(name), text).expect("write artifact");
    };
    w("seed", format!("{}\n", r.seed));
    // One workload: history.*; several: history-<workload>.* each.
    for (workload, history) in histories {
        let stem = if histories.len() == 1 {
            "history".to_string()
        } else {
            format!("history-{}", workload.name())
        };
        w(&format!("{stem}.jsonl"), pact_check::to_jsonl(history));
        w(&format!("{stem}.edn"), pact_check::to_edn(history));
    }
    let results: Vec<serde_json::Value> = r
        .results
        .iter()
        .map(|(name, res)| serde_json::json!({"checker": name, "result": res}))
        .collect();
    w(
        "results.json",
        serde_json::to_string_pretty(&serde_json::json!({
            "valid": r.valid(),
            "anomalies": r.anomalies(),
            "ok": r.ok, "fail": r.fail, "info": r.info,
            "final_reads_ok": r.final_reads_ok,
            "errors": r.errors,
            "checkers": results,
            "soak": r.soak,
        }))
        .expect("json"),
    );
    w(
        "nemesis.json",
        serde_json::to_string_pretty(&r.intervals).expect("json"),
    );
    for id in c.node_ids().into_iter().chain(c.ever_joined()) {
        let _ = std::fs::copy(
            c.log_path(id),
            dir.join("logs").join(format!("node-{id}.log")),
        );
    }
    let title = dir
        .file_name()
        .map_or_else(|| "jepsen".into(), |n| n.to_string_lossy().into_owned());
    // The plots show every workload's operations on their shared clock.
    let mut history: History = histories
        .iter()
        .flat_map(|(_, h)| h.iter().filter(|o| o.process >= 0).cloned())
        .collect();
    history.sort_by_key(|o| o.time_ns);
    let history = &history;
    if let Err(e) = plot::latency(&dir.join("latency.png"), &title, history, &r.intervals) {
        eprintln!("latency plot not written: {e}");
    }
    if let Err(e) = plot::rate(&dir.join("rate.png"), &title, history, &r.intervals) {
        eprintln!("rate plot not written: {e}");
    }
    if let Some(sum) = &r.soak {
        w("soak.csv", soak::to_csv(samples).expect("samples as CSV"));
        w("soak.txt", sum.lines().join("\n") + "\n");
        if let Err(e) = soak::plots(dir, &title, samples, &r.intervals) {
            eprintln!("soak plots not written: {e}");
        }
    }
}
