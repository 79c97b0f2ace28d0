//! `txn`: command-line client for Pact.
//!
//! Plain operations (get, put, del, scan), transactions (incr, exec, the
//! shell), transaction outcomes (txn-status), cluster status and health,
//! a local playground, and completions and man pages. `--timeout` bounds
//! each command as a whole, retries included; the exit code says what is
//! known when it runs out. An error about reaching the cluster names the
//! addresses tried and where the config came from (see `source`).

use std::cell::Cell;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use pact_client::{Client, ClientError, ClientOptions, Guard, Op, TxnOutcome};
use pact_common::TxnId;

/// Talk to a Pact cluster.
#[derive(Parser, Debug)]
#[command(name = "txn", version = env!("PACT_VERSION"))]
struct Args {
    /// Cluster config (TOML). Without it, the embedded local default
    /// (3 nodes on 127.0.0.1:7001-7003, 3 shards) is used.
    #[arg(long, global = true, env = "PACT_CONFIG")]
    config: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Give up on a command (in the shell: on a statement) after this many
    /// seconds, retries included.
    #[arg(long, global = true, default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    timeout: u64,
    /// CA certificate (PEM) to trust, for a cluster with mutual TLS;
    /// overrides the config's `tls.ca`.
    #[arg(long = "cacert", id = "tls_ca", global = true, env = "PACT_CACERT")]
    tls_ca: Option<String>,
    /// Client certificate (PEM) to present; overrides the config's
    /// `tls.client_cert`.
    #[arg(long = "cert", id = "tls_cert", global = true, env = "PACT_CERT")]
    tls_cert: Option<String>,
    /// Private key (PEM) of --cert; overrides the config's `tls.client_key`.
    #[arg(long = "key", id = "tls_key", global = true, env = "PACT_KEY")]
    tls_key: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Read a key.
    Get { key: String },
    /// Write a key.
    Put { key: String, value: String },
    /// Delete a key.
    Del { key: String },
    /// List keys in [start, end), across all shards.
    Scan {
        #[arg(default_value = "")]
        start: String,
        end: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Add DELTA to the integer at KEY in a transaction; prints the result.
    Incr {
        key: String,
        #[arg(default_value_t = 1, allow_hyphen_values = true)]
        delta: i64,
    },
    /// One multi-key transaction (on any shards), committed atomically.
    ///
    /// OPS: `put KEY VALUE`, `del KEY`, `get KEY`, in order. With guards,
    /// the OPS run only if every guard holds, else the ops after `else`.
    /// Example: txn exec --guard missing:lock put lock me put owner me else get lock
    Exec {
        /// exists:KEY, missing:KEY or equals:KEY=VALUE (repeatable).
        #[arg(long = "guard")]
        guards: Vec<String>,
        /// The operations; `else` separates the otherwise-branch.
        #[arg(required = true, num_args = 1.., allow_hyphen_values = true)]
        ops: Vec<String>,
    },
    /// The outcome of a transaction (GROUP-NODE-TS). Exit 0 committed,
    /// 7 aborted, 4 not decided (yet).
    TxnStatus {
        id: String,
        /// Abort it if nothing is decided (presumed abort, recorded, so the
        /// answer is final). Only for a transaction whose client is gone.
        #[arg(long)]
        resolve: bool,
    },
    /// Raft status of every replica, with a health summary per group.
    ///
    /// Shards are labelled `shard N`, coordinator groups `coord N`. All
    /// replicas are asked at once, each within --replica-timeout. Exit 0 if
    /// any replica answered (3 if none did); `txn health` acts on the
    /// verdict.
    Status(status::StatusArgs),
    /// The health summary alone: exit 0 ok, 8 degraded, 3 down.
    ///
    /// Degraded: every group has a leader and a quorum of voters answering,
    /// but a replica did not answer or lags more than --max-lag entries.
    /// Down: some group has no leader among the replicas that answered, or
    /// fewer voters than a quorum answered.
    Health(status::StatusArgs),
    /// Print a shell completion script to stdout.
    ///
    /// e.g. `txn completions bash > ~/.local/share/bash-completion/completions/txn`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) of txn, or of one subcommand, to stdout.
    ///
    /// e.g. `txn man | man -l -`, or `txn man get > txn-get.1`.
    Man { subcommand: Option<String> },
    /// Interactive session: BEGIN, GET, PUT, DEL, SCAN, INCR, COMMIT,
    /// ROLLBACK (autocommit outside BEGIN). Reads a script from a pipe.
    Shell,
    /// Start a local cluster (3 nodes, each a `pact` process with a replica
    /// of 3 shards and of the coordinator group) on 127.0.0.1, data under
    /// DIR; Ctrl-C stops it, running it again restarts on the same data.
    Playground {
        /// Folder for config, data and logs.
        #[arg(long, default_value = "pact-data")]
        dir: PathBuf,
        /// Number of shards [default: 3] (first start only: on a restart,
        /// a different number is refused).
        #[arg(long)]
        shards: Option<u64>,
        /// First port [default: 7001]; nodes use consecutive client ports
        /// from it (3, or 6 with --layout split), metrics 10 above and peer
        /// ports 20 above (first start only: on a restart, a different port
        /// is refused).
        #[arg(long)]
        port: Option<u16>,
        /// combined: 3 `pact` processes, each with every role; split: 3
        /// `participant` and 3 `coordinator` processes (first start only;
        /// default combined; on a restart, another layout is refused).
        #[arg(long, value_enum)]
        layout: Option<playground::Layout>,
        /// Mutual TLS on every port: makes a CA, node certificates and a
        /// client certificate under DIR/certs and names them in the
        /// config's [tls] section (first start only).
        #[arg(long)]
        tls: bool,
    },
}

fn parse_guard(g: &str) -> Result<Guard, ClientError> {
    let bad = || {
        ClientError::InvalidInput(format!(
            "bad guard {g:?}; use exists:KEY, missing:KEY or equals:KEY=VALUE"
        ))
    };
    let (kind, rest) = g.split_once(':').ok_or_else(bad)?;
    match kind {
        "exists" => Ok(Guard::Exists(rest.as_bytes().to_vec())),
        "missing" => Ok(Guard::Missing(rest.as_bytes().to_vec())),
        "equals" => {
            let (k, v) = rest.split_once('=').ok_or_else(bad)?;
            Ok(Guard::Equals(k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        }
        _ => Err(bad()),
    }
}

fn parse_ops(words: &[String]) -> Result<(Vec<Op>, Vec<Op>), ClientError> {
    let mut then = Vec::new();
    let mut otherwise = Vec::new();
    let mut in_else = false;
    let mut i = 0;
    let need = |i: usize, what: &str| {
        words
            .get(i)
            .map(|w| w.as_bytes().to_vec())
            .ok_or_else(|| ClientError::InvalidInput(format!("`{what}` needs more arguments")))
    };
    while i < words.len() {
        let op = match words[i].as_str() {
            "else" if !in_else => {
                in_else = true;
                i += 1;
                continue;
            }
            "put" => {
                let op = Op::Put(need(i + 1, "put KEY VALUE")?, need(i + 2, "put KEY VALUE")?);
                i += 3;
                op
            }
            "del" => {
                let op = Op::Delete(need(i + 1, "del KEY")?);
                i += 2;
                op
            }
            "get" => {
                let op = Op::Get(need(i + 1, "get KEY")?);
                i += 2;
                op
            }
            w => {
                return Err(ClientError::InvalidInput(format!(
                    "unknown operation {w:?}; use put KEY VALUE, del KEY, get KEY, else"
                )))
            }
        };
        if in_else {
            otherwise.push(op);
        } else {
            then.push(op);
        }
    }
    Ok((then, otherwise))
}

/// Exit codes: 0 ok, 1 not found (get), 2 usage, 3 unavailable (or
/// unreachable), 4 outcome unknown, 5 invalid input, 6 server error,
/// 7 aborted; `health` adds 8, degraded (see `status`).
pub(crate) fn exit_for(e: &ClientError) -> u8 {
    match e {
        ClientError::Unavailable(_) | ClientError::Unreachable(_) => 3,
        ClientError::Unknown(_) => 4,
        ClientError::InvalidInput(_) | ClientError::UnknownShard(_) => 5,
        ClientError::Internal(_) => 6,
        ClientError::Aborted(_) => 7,
        ClientError::Conflict(_) => 6,
    }
}

/// Like `println!`, for stdout that may be a closed pipe (see [`out`]).
macro_rules! outln {
    ($($t:tt)*) => { $crate::out::write(format_args!("{}\n", format_args!($($t)*))) };
}

mod out {
    //! Output to stdout. SIGPIPE stays ignored (Rust's default), because
    //! with it on, a gRPC connection that the server closes can kill the
    //! process in the middle of a write (a TLS server refusing a plain
    //! client does). A reader that quits (`txn scan | head`) still ends
    //! the process as it would any Unix tool: by SIGPIPE, raised here.
    use std::io::Write;

    pub fn write(args: std::fmt::Arguments<'_>) {
        let mut o = std::io::stdout().lock();
        if let Err(e) = o.write_fmt(args) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                // SAFETY: SIG_DFL is a valid handler; raise(3) on our own
                // process ends it as the closed pipe asked.
                unsafe {
                    libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                    libc::raise(libc::SIGPIPE);
                }
            }
            std::process::exit(1);
        }
    }
}

mod meta;
mod playground;
mod shell;
mod source;
mod status;

/// Client options under a total deadline of `total` per command: the
/// client's own retry budget ends before it, so that it usually reports
/// what it knows (nothing sent, or maybe sent) before the hard cut.
fn client_options(total: Duration, tls: Option<pact_client::Tls>) -> ClientOptions {
    let defaults = ClientOptions::default();
    ClientOptions {
        request_timeout: defaults.request_timeout.min(total / 2),
        retry_for: total * 4 / 5,
        tls,
        // A port with nothing on it at every replica will not start
        // answering within the deadline: say so now, not after it.
        give_up_unreachable: Some(Duration::from_secs(1)),
        ..defaults
    }
}

/// What is known when a command's total deadline cut it off.
fn deadline_error(cmd: &Cmd, total: Duration, began: Option<TxnId>) -> ClientError {
    let waited = format!("no result within {}s (--timeout)", total.as_secs());
    match cmd {
        Cmd::Put { .. } | Cmd::Del { .. } | Cmd::Exec { .. } => ClientError::Unknown(format!(
            "{waited}; the write may or may not have been applied: read the keys to find out"
        )),
        Cmd::Incr { .. } => match began {
            Some(id) => ClientError::Unknown(format!(
                "{waited}; transaction {id} may or may not have committed: `txn txn-status {id}` tells"
            )),
            None => ClientError::Unavailable(format!("{waited}; no transaction was started")),
        },
        Cmd::TxnStatus { resolve: true, .. } => {
            ClientError::Unknown(format!("{waited}; the outcome is still unknown"))
        }
        _ => ClientError::Unavailable(waited),
    }
}

/// Adds `delta` to the integer at `key` in a transaction, started over on
/// abort. `began` holds the latest attempt's id: the earlier attempts
/// aborted, so only that one can be in doubt if the caller stops waiting.
pub(crate) async fn incr(
    client: &Client,
    key: &str,
    delta: i64,
    began: &Cell<Option<TxnId>>,
) -> Result<i64, ClientError> {
    client
        .transaction(|t| {
            began.set(Some(t.id()));
            let key = key.to_string();
            Box::pin(async move { t.incr(key.as_bytes(), delta).await })
        })
        .await
}

fn main() -> ExitCode {
    // Output piped into a reader that quits (`txn scan | head`) ends the
    // process as for any Unix tool, instead of a panic in println!: see
    // `out`, through which all output goes.
    let parsed = Args::command()
        .try_get_matches()
        .and_then(|m| Args::from_arg_matches(&m).map(|a| (a, m)));
    let (args, matches) = match parsed {
        Ok(a) => a,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match &args.cmd {
        Cmd::Completions { shell } => {
            return ExitCode::from(meta::completions(Args::command(), *shell))
        }
        Cmd::Man { subcommand } => {
            return ExitCode::from(meta::man(Args::command(), subcommand.as_deref()))
        }
        _ => {}
    }
    if let Cmd::Playground {
        dir,
        shards,
        port,
        tls,
        layout,
    } = &args.cmd
    {
        let opts = playground::Options {
            dir: dir.clone(),
            shards: *shards,
            port: *port,
            tls: *tls,
            layout: *layout,
        };
        let rt = match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("txn: cannot start runtime: {e}");
                return ExitCode::from(6);
            }
        };
        return match rt.block_on(playground::run(opts)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("txn playground: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    let source = source::ConfigSource::from_matches(&matches, "config");
    let config = match source.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("txn: bad config: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("txn: cannot start runtime: {e}");
            return ExitCode::from(6);
        }
    };
    let flags = pact_client::TlsPaths {
        ca: args.tls_ca.clone(),
        cert: args.tls_cert.clone(),
        key: args.tls_key.clone(),
    };
    let tls = match pact_client::Tls::for_client(&config, &flags) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("txn: {e}");
            return ExitCode::from(2);
        }
    };
    let total = Duration::from_secs(args.timeout);
    let client = Client::new(&config, client_options(total, tls));
    if let Cmd::Shell = args.cmd {
        // Each statement has its own deadline.
        return ExitCode::from(rt.block_on(shell::Shell::new(client, total).run()));
    }
    let began = Cell::new(None);
    let result = match rt.block_on(async {
        // Made inside the runtime: a timer needs one.
        tokio::time::timeout(total, run(&client, &args, &began)).await
    }) {
        Ok(r) => r,
        Err(_) => Err(deadline_error(&args.cmd, total, began.get())),
    };
    match result.map_err(|e| source.annotate(e)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("txn: {e}");
            ExitCode::from(exit_for(&e))
        }
    }
}

async fn run(client: &Client, args: &Args, began: &Cell<Option<TxnId>>) -> Result<u8, ClientError> {
    match &args.cmd {
        Cmd::Get { key } => {
            let v = client.get(key.as_bytes()).await?;
            if args.json {
                let value = v.as_ref().map(|v| String::from_utf8_lossy(v).to_string());
                outln!(
                    "{}",
                    serde_json::json!({ "key": key, "found": v.is_some(), "value": value })
                );
            } else if let Some(v) = &v {
                outln!("{}", String::from_utf8_lossy(v));
            } else {
                eprintln!("(not found)");
            }
            Ok(if v.is_some() { 0 } else { 1 })
        }
        Cmd::Put { key, value } => {
            client.put(key.as_bytes(), value.as_bytes()).await?;
            if args.json {
                outln!("{}", serde_json::json!({ "ok": true }));
            } else {
                outln!("OK");
            }
            Ok(0)
        }
        Cmd::Del { key } => {
            client.delete(key.as_bytes()).await?;
            if args.json {
                outln!("{}", serde_json::json!({ "ok": true }));
            } else {
                outln!("OK");
            }
            Ok(0)
        }
        Cmd::Scan { start, end, limit } => {
            let pairs = client
                .scan(start.as_bytes(), end.as_ref().map(|e| e.as_bytes()), *limit)
                .await?;
            if args.json {
                let items: Vec<_> = pairs
                    .iter()
                    .map(|(k, v)| serde_json::json!({ "key": String::from_utf8_lossy(k), "value": String::from_utf8_lossy(v) }))
                    .collect();
                outln!("{}", serde_json::Value::Array(items));
            } else {
                for (k, v) in &pairs {
                    outln!(
                        "{} = {}",
                        String::from_utf8_lossy(k),
                        String::from_utf8_lossy(v)
                    );
                }
            }
            Ok(0)
        }
        Cmd::Incr { key, delta } => {
            let v = incr(client, key, *delta, began).await?;
            if args.json {
                outln!("{}", serde_json::json!({ "key": key, "value": v }));
            } else {
                outln!("{v}");
            }
            Ok(0)
        }
        Cmd::Exec { guards, ops } => {
            let guards = guards
                .iter()
                .map(|g| parse_guard(g))
                .collect::<Result<Vec<_>, _>>()?;
            let (then, otherwise) = parse_ops(ops)?;
            let r = client.execute(guards, then, otherwise).await?;
            if args.json {
                let results: Vec<_> = r
                    .results
                    .iter()
                    .map(|(k, v)| serde_json::json!({ "key": String::from_utf8_lossy(k), "found": v.is_some(), "value": v.as_ref().map(|v| String::from_utf8_lossy(v).to_string()) }))
                    .collect();
                outln!(
                    "{}",
                    serde_json::json!({ "txn": r.txn.to_string(), "committed": true, "succeeded": r.succeeded, "results": results })
                );
            } else {
                outln!(
                    "COMMITTED {} ({})",
                    r.txn,
                    if r.succeeded {
                        "guards held"
                    } else {
                        "guards failed: else-branch ran"
                    }
                );
                for (k, v) in &r.results {
                    match v {
                        Some(v) => outln!(
                            "{} = {}",
                            String::from_utf8_lossy(k),
                            String::from_utf8_lossy(v)
                        ),
                        None => outln!("{} (not found)", String::from_utf8_lossy(k)),
                    }
                }
            }
            Ok(0)
        }
        Cmd::TxnStatus { id, resolve } => {
            let id: TxnId = id.parse().map_err(ClientError::InvalidInput)?;
            let outcome = if *resolve {
                client.resolve_txn(id).await?
            } else {
                client.txn_status(id).await?
            };
            let (word, reason, code) = match outcome {
                TxnOutcome::Committed => ("committed", String::new(), 0),
                TxnOutcome::Aborted(r) => ("aborted", r, 7),
                TxnOutcome::Unknown(r) => ("unknown", r, 4),
                TxnOutcome::Open(r) => ("open", r, 4),
            };
            if args.json {
                outln!(
                    "{}",
                    serde_json::json!({ "txn": id.to_string(), "outcome": word, "reason": reason })
                );
            } else if reason.is_empty() {
                outln!("{word}");
            } else {
                outln!("{word}: {reason}");
            }
            Ok(code)
        }
        // Handled in main: the playground, completions and man pages
        // before any client exists, the shell with a deadline per statement.
        Cmd::Playground { .. } | Cmd::Shell | Cmd::Completions { .. } | Cmd::Man { .. } => {
            Err(ClientError::InvalidInput("run by main, not here".into()))
        }
        Cmd::Status(a) => status::status(client, a, args.json).await,
        Cmd::Health(a) => status::health(client, a, args.json).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(words: &[&str]) -> Cmd {
        let mut all = vec!["txn"];
        all.extend_from_slice(words);
        Args::try_parse_from(all).expect("valid args").cmd
    }

    #[test]
    fn the_client_gives_up_before_the_deadline() {
        for secs in [1, 3, 15, 86_400] {
            let total = Duration::from_secs(secs);
            let o = client_options(total, None);
            assert!(o.retry_for < total, "{secs}: {o:?}");
            assert!(o.request_timeout < total, "{secs}: {o:?}");
        }
    }

    #[test]
    fn a_cut_off_write_is_unknown_a_cut_off_read_unavailable() {
        let t = Duration::from_secs(3);
        let id: TxnId = "1-4-99".parse().unwrap();
        let code = |words: &[&str], began| exit_for(&deadline_error(&cmd(words), t, began));
        assert_eq!(code(&["put", "k", "v"], None), 4);
        assert_eq!(code(&["del", "k"], None), 4);
        assert_eq!(code(&["exec", "put", "k", "v"], None), 4);
        assert_eq!(code(&["incr", "k"], Some(id)), 4);
        assert_eq!(code(&["incr", "k"], None), 3);
        assert_eq!(code(&["get", "k"], None), 3);
        assert_eq!(code(&["scan"], None), 3);
        assert_eq!(code(&["txn-status", "1-4-99"], None), 3);
        assert_eq!(code(&["txn-status", "--resolve", "1-4-99"], None), 4);
    }

    #[test]
    fn timeout_out_of_range_is_a_usage_error() {
        for t in ["0", "86401", "18446744073709551615", "-1"] {
            let e = Args::try_parse_from(["txn", "--timeout", t, "get", "k"]).unwrap_err();
            assert!(e.use_stderr(), "{t}");
        }
    }
}
