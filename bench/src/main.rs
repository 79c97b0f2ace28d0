//! `bench`: the command-line front of pact-bench (see the library docs).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use pact_bench::backend::{Backend, BackendKind, PactBackend};
use pact_bench::etcd::{parse_endpoints, EtcdBackend, EtcdOptions};
use pact_bench::generator::Distribution;
use pact_bench::runner::{execute, Phase, Spec};
use pact_bench::scope::{Placement, TxnScope};
use pact_bench::workload::Workload;
use pact_bench::{props, UsageError};
use pact_client::ClientOptions;
use pact_client::Given;
use pact_common::{ClusterConfig, MAX_BATCH_BYTES, MAX_BATCH_OPS};

#[derive(Parser, Debug)]
#[command(
    name = "bench",
    version = env!("PACT_VERSION"),
    about = "YCSB-like load generator for Pact (and etcd, for comparison)",
    after_help = "Examples:\n  bench load --workload a --recordcount 10000\n  \
                  bench run --workload a --threads 8 --duration 30\n  \
                  bench run --workload-file bench/workloads/workloada -p readproportion=0.9 --json\n  \
                  bench run --workload b --duration 60 --json-format ycsb > b.json\n  \
                  bench load --workload txn && bench run --workload txn --txn-keys 3\n  \
                  bench run --workload txn --txn-scope single-shard\n  \
                  bench run --workload a --backend etcd --etcd-endpoints http://127.0.0.1:2379\n\n\
                  bench/workloads/ holds YCSB's core workload files workloada..workloadf \
                  (the same mixes as --workload a..f).\n\n\
                  Exit status: 0 every operation succeeded; 1 the run could not be made \
                  (e.g. the runtime or the etcd connection failed); 2 bad command line, \
                  config or workload file; 3 some operations failed (the report is still \
                  printed; --allow-failures makes that 0)."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Insert the records (or accounts) the workload reads.
    Load(Opts),
    /// Run the workload's operation mix and report latencies.
    Run(Opts),
}

#[derive(Args, Debug)]
struct Opts {
    /// Built-in workload: a, b, c, d, e, f (YCSB core) or txn (transfers).
    #[arg(long, short = 'w')]
    workload: Option<String>,
    /// YCSB workload property file (applied over --workload if both given).
    #[arg(long, short = 'P', value_name = "FILE")]
    workload_file: Option<PathBuf>,
    /// Set a YCSB property, overriding the file (repeatable).
    #[arg(long = "property", short = 'p', value_name = "KEY=VALUE")]
    properties: Vec<String>,
    /// Records to load / key space to run over.
    #[arg(long)]
    recordcount: Option<u64>,
    /// Operations to run (unlimited with --duration unless set).
    #[arg(long)]
    operationcount: Option<u64>,
    /// uniform, zipfian or latest.
    #[arg(long)]
    requestdistribution: Option<Distribution>,
    #[arg(long)]
    fieldcount: Option<u64>,
    #[arg(long)]
    fieldlength: Option<u64>,
    #[arg(long)]
    maxscanlength: Option<u64>,
    /// Accounts per transfer in the txn workload.
    #[arg(long, value_parser = clap::value_parser!(u64).range(2..=64))]
    txn_keys: Option<u64>,
    /// Shards of a transfer's accounts (Pact only): any, single-shard (all
    /// on one shard: one-phase commit) or cross-shard (on as many shards
    /// as possible: two-phase commit).
    #[arg(long, value_enum)]
    txn_scope: Option<TxnScope>,
    /// Stop after this many seconds (or at operationcount, if set).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    duration: Option<u64>,
    /// Open loop: start this many operations per second in total, each
    /// thread on a fixed schedule, and count latency from each operation's
    /// scheduled start (coordinated omission corrected). Without it each
    /// thread starts its next operation when the last one ends.
    #[arg(long, value_name = "OPS", value_parser = parse_target)]
    target: Option<f64>,
    /// With --target: start every operation at its scheduled time, in a
    /// task of its own, whether or not earlier ones have finished, with at
    /// most N in flight (operations due beyond that are counted as not
    /// started); --threads is then ignored. This offers the target load
    /// however slow the servers get: the overload test. Operations a
    /// server refuses with OVERLOADED (after the client's retries, see
    /// --retry-for) are counted apart from failures.
    #[arg(long, value_name = "N", requires = "target",
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_in_flight: Option<u64>,
    /// Independent Pact clients to spread the operations over, each with
    /// its own connection to every node (one connection carries at most
    /// 256 requests at once). For overload tests, so the servers, not one
    /// connection, see the offered load.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=256))]
    clients: u64,
    /// Give up on an operation the servers refuse with OVERLOADED after
    /// this many milliseconds of retries (0: at the first refusal) rather
    /// than after --retry-for; with 0 the admitted operations' latencies
    /// are those of operations a server took at once.
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    overload_retry_ms: Option<u64>,
    /// Load only: write this many records per operation (Pact: one
    /// atomic write per shard they fall on, the shards at once; etcd: one
    /// Txn of puts per 128). Each batch is one INSERT in the report, which
    /// adds the records written and records per second.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=MAX_BATCH_OPS as u64))]
    batch: u64,
    /// Concurrent client tasks.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    threads: u64,
    /// RNG seed (default: from the clock; printed in the report).
    #[arg(long)]
    seed: Option<u64>,
    /// Print the report as JSON (the bench's own shape; see --json-format).
    #[arg(long)]
    json: bool,
    /// Print the report as JSON in this shape (implies --json): pact (the
    /// bench's own object) or ycsb (YCSB's JSON array exporter: a list of
    /// {"metric", "measurement", "value"} objects).
    #[arg(long, value_enum, value_name = "FORMAT")]
    json_format: Option<JsonFormat>,
    /// Exit 0 even if some operations failed (they are still counted in
    /// the report). Without it, failed operations make the exit status 3.
    #[arg(long)]
    allow_failures: bool,
    /// Also write each operation type's histogram to FILE (HdrHistogram
    /// interval log, one interval per type, tagged with its name).
    #[arg(long, value_name = "FILE")]
    hdr_log: Option<PathBuf>,
    /// Print a progress line every second to stderr even if it is not a
    /// terminal.
    #[arg(long)]
    progress: bool,
    /// Store to drive: pact, or etcd (v3 API, see --etcd-endpoints).
    #[arg(long, value_enum, default_value_t = BackendKind::Pact)]
    backend: BackendKind,
    /// etcd client URLs, comma-separated (with --backend etcd; default
    /// http://127.0.0.1:2379). Operations go to them in turn.
    #[arg(long, value_name = "URLS")]
    etcd_endpoints: Option<String>,
    /// Pact cluster config (default: the embedded default cluster).
    #[arg(long, env = "PACT_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Client addresses (`host:port`, comma-separated) of some of the Pact
    /// cluster's nodes, instead of --config: the routing table comes from
    /// the first that answers (a cluster without TLS). A flag beats an
    /// environment variable: --endpoints wins over PACT_CONFIG, --config
    /// over PACT_ENDPOINTS.
    #[arg(
        long,
        env = "PACT_ENDPOINTS",
        value_name = "ADDRS",
        value_delimiter = ','
    )]
    endpoints: Vec<String>,
    /// Sample the RSS of the local processes with these names once a
    /// second (comma-separated, e.g. pact, participant,coordinator or etcd) and
    /// report each one's start, end and peak RSS and its growth per
    /// operation over the second half of the run.
    #[arg(long, value_name = "NAMES", value_delimiter = ',')]
    watch_rss: Vec<String>,
    /// Seconds the client keeps retrying one operation before it fails.
    #[arg(long, value_name = "SECS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    retry_for: u64,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum JsonFormat {
    Pact,
    Ycsb,
}

/// The run was made and reported, but some of its operations failed:
/// exit status 3 unless `--allow-failures`.
#[derive(Debug)]
struct OpsFailed(u64);

impl std::fmt::Display for OpsFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} operation(s) failed (see the report; --allow-failures to exit 0 anyway)",
            self.0
        )
    }
}

impl std::error::Error for OpsFailed {}

fn parse_target(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.1..=10_000_000.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?} is not a rate in 0.1..=10000000 operations per second"
        )),
    }
}

fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

/// Preset, then file, then `-p`, then flags.
fn resolve_workload(o: &Opts) -> anyhow::Result<Workload> {
    let mut w = match &o.workload {
        Some(name) => Workload::preset(name)?,
        None if o.workload_file.is_some() => Workload::default(),
        None => {
            return Err(usage(
                "give --workload a|b|c|d|e|f|txn or --workload-file FILE",
            ))
        }
    };
    let mut opcount_set = false;
    let warn = |ignored: Vec<String>, origin: &str| {
        for k in ignored {
            eprintln!("bench: {origin}: ignoring unknown property {k:?}");
        }
    };
    if let Some(path) = &o.workload_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| usage(format!("cannot read workload file {}: {e}", path.display())))?;
        let origin = path.display().to_string();
        let props = props::parse(&text).map_err(|e| usage(format!("{origin}: {e}")))?;
        opcount_set |= props.contains_key("operationcount");
        warn(w.apply(&props, &origin)?, &origin);
        if o.workload.is_none() {
            w.name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| origin.clone());
        }
    }
    let mut cli_props = BTreeMap::new();
    for p in &o.properties {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| usage(format!("-p {p:?}: expected KEY=VALUE")))?;
        cli_props.insert(k.trim().to_string(), v.to_string());
    }
    opcount_set |= cli_props.contains_key("operationcount");
    warn(w.apply(&cli_props, "-p")?, "-p");
    if let Some(v) = o.recordcount {
        w.recordcount = v;
    }
    if let Some(v) = o.operationcount {
        w.operationcount = Some(v);
        opcount_set = true;
    }
    if let Some(v) = o.requestdistribution {
        w.requestdistribution = v;
    }
    if let Some(v) = o.fieldcount {
        w.fieldcount = v;
    }
    if let Some(v) = o.fieldlength {
        w.fieldlength = v;
    }
    if let Some(v) = o.maxscanlength {
        w.maxscanlength = v;
    }
    if let Some(v) = o.txn_keys {
        w.txn_keys = v;
    }
    if let Some(v) = o.txn_scope {
        w.txn_scope = v;
    }
    if o.duration.is_some() && !opcount_set {
        w.operationcount = None;
    }
    w.validate()?;
    Ok(w)
}

/// `use_endpoints`: whether the Pact backend asks `o.endpoints` for the
/// routing table rather than reading a config, or why neither is clear
/// (see [`pact_client::prefer_endpoints`]).
async fn main_inner(
    phase: Phase,
    o: Opts,
    use_endpoints: Result<bool, String>,
) -> anyhow::Result<()> {
    let workload = resolve_workload(&o)?;
    let seed = o.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    let retry_for = Duration::from_secs(o.retry_for);
    // Fail on an unwritable --hdr-log before spending time on the run.
    if let Some(path) = &o.hdr_log {
        std::fs::File::create(path)
            .map_err(|e| usage(format!("--hdr-log {}: {e}", path.display())))?;
    }
    if o.batch > 1 {
        if phase == Phase::Run {
            return Err(usage("--batch is for `bench load`"));
        }
        // A batch may fall on one shard: it must fit one write request.
        let bytes = (o.batch as usize).saturating_mul(workload.record_bytes() + 64);
        if bytes > MAX_BATCH_BYTES {
            return Err(usage(format!(
                "--batch {} of {}-byte records is about {bytes} bytes; one write takes at most \
                 {MAX_BATCH_BYTES}: lower --batch",
                o.batch,
                workload.record_bytes()
            )));
        }
    }
    let mut spec = Spec {
        phase,
        batch: o.batch,
        threads: o.threads as usize,
        seed,
        duration: o.duration.map(Duration::from_secs),
        progress: o.progress || std::io::stderr().is_terminal(),
        backend_name: "pact",
        placement: None,
        workload,
        target: o.target,
        max_in_flight: o.max_in_flight.map(|n| n as usize),
        watch_rss: o
            .watch_rss
            .iter()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect(),
    };
    match o.backend {
        BackendKind::Pact => {
            if o.etcd_endpoints.is_some() {
                return Err(usage("--etcd-endpoints needs --backend etcd"));
            }
            let endpoints: Vec<String> = o
                .endpoints
                .iter()
                .filter(|e| !e.trim().is_empty())
                .cloned()
                .collect();
            let use_endpoints = use_endpoints.map_err(usage)?;
            let config = match &o.config {
                _ if use_endpoints => {
                    if endpoints.is_empty() {
                        return Err(usage("no endpoints given: --endpoints HOST:PORT[,...]"));
                    }
                    match pact_client::discover(&endpoints, None).await {
                        Ok(c) => c,
                        Err(e @ pact_client::ClientError::InvalidInput(_)) => {
                            return Err(usage(format!("--endpoints: {e}")))
                        }
                        Err(e) => return Err(anyhow::anyhow!("--endpoints: {e}")),
                    }
                }
                Some(p) => ClusterConfig::load(p)
                    .map_err(|e| usage(format!("bad config {}: {e}", p.display())))?,
                None => ClusterConfig::embedded_default(),
            };
            let w = &spec.workload;
            if w.txn_scope != TxnScope::Any && w.needs_accounts() && phase == Phase::Run {
                let p = Placement::new(w.txn_scope, config.shard_map(), w.recordcount, w.txn_keys)?;
                spec.placement = Some(Arc::new(p));
            }
            // A cluster with [tls] is reached with the config's client
            // certificate.
            let tls = pact_client::Tls::for_client(&config, &pact_client::TlsPaths::default())
                .map_err(|e| usage(e.to_string()))?;
            let opts = ClientOptions {
                retry_for,
                overload_retry_for: o.overload_retry_ms.map(Duration::from_millis),
                tls,
                ..ClientOptions::default()
            };
            let backend = PactBackend::with_clients(&config, opts, o.clients as usize);
            run(Arc::new(backend), spec, &o).await
        }
        BackendKind::Etcd => {
            if spec.workload.txn_scope != TxnScope::Any {
                return Err(usage(
                    "--txn-scope single-shard|cross-shard needs --backend pact \
                     (etcd keeps every key in one Raft group)",
                ));
            }
            let urls = parse_endpoints(
                o.etcd_endpoints
                    .as_deref()
                    .unwrap_or("http://127.0.0.1:2379"),
            )?;
            let etcd = EtcdBackend::connect(&urls, EtcdOptions { retry_for }).await?;
            tracing::debug!("etcd {} at {}", etcd.version(), urls.join(","));
            spec.backend_name = "etcd";
            run(Arc::new(etcd), spec, &o).await
        }
    }
}

async fn run<B: Backend>(backend: Arc<B>, spec: Spec, o: &Opts) -> anyhow::Result<()> {
    let report = execute(backend, spec).await?;
    let out = match (o.json, o.json_format) {
        (_, Some(JsonFormat::Ycsb)) => serde_json::to_string_pretty(&report.ycsb_json())? + "\n",
        (true, _) | (_, Some(JsonFormat::Pact)) => {
            serde_json::to_string_pretty(&report.json())? + "\n"
        }
        (false, None) => report.text(),
    };
    // A reader that stopped early (`bench ... | head`) is not an error of
    // the run; the exit status still says how the operations went.
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            return Err(anyhow::Error::new(e).context("writing the report"))
        }
        _ => {}
    }
    if let Some(path) = &o.hdr_log {
        report
            .write_hdr_log(path)
            .with_context(|| format!("--hdr-log {}", path.display()))?;
    }
    match report.failed_ops() {
        0 => Ok(()),
        _ if o.allow_failures => Ok(()),
        n => Err(OpsFailed(n).into()),
    }
}

fn main() -> ExitCode {
    let matches = Cli::command().try_get_matches();
    let (cli, matches) = match matches.and_then(|m| Ok((Cli::from_arg_matches(&m)?, m))) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    // Where --config and --endpoints came from (flag or variable).
    let sub = matches.subcommand().map(|(_, m)| m);
    let given = |id: &str| match sub.map(|m| (m.contains_id(id), m.value_source(id))) {
        Some((true, Some(ValueSource::EnvVariable))) => Given::Env,
        Some((true, _)) => Given::Flag,
        _ => Given::Not,
    };
    let use_endpoints = pact_client::prefer_endpoints(given("config"), given("endpoints"));
    let (phase, opts) = match cli.cmd {
        Cmd::Load(o) => (Phase::Load, o),
        Cmd::Run(o) => (Phase::Run, o),
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(main_inner(phase, opts, use_endpoints)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<UsageError>().is_some() => {
            eprintln!("bench: {e}");
            ExitCode::from(2)
        }
        Err(e) if e.downcast_ref::<OpsFailed>().is_some() => {
            eprintln!("bench: {e}");
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
