//! `txn`: command-line client for Pact.
//!
//! Plain operations (get, put, del, scan), transactions (incr, exec, the
//! shell), transaction outcomes (txn-status), cluster status and health,
//! a local playground, and completions and man pages. `--timeout` bounds
//! each command as a whole, retries included; the exit code says what is
//! known when it runs out. The data commands live in [`data`]; how output
//! is written, bytes shown and errors reported (JSON under `--json`), in
//! [`output`]. An error about reaching the cluster names the addresses
//! tried and where the config came from (see `source`).

use std::cell::Cell;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use pact_client::{Client, ClientError, ClientOptions, Guard, Op, TxnOutcome};
use pact_common::TxnId;

use output::{Codec, Style};

/// Talk to a Pact cluster.
#[derive(Parser, Debug)]
#[command(name = "txn", version = env!("PACT_VERSION"), after_long_help = output::HELP_NOTES)]
struct Args {
    /// Cluster config (TOML). Without it, the embedded local default
    /// (3 nodes on 127.0.0.1:7001-7003, 3 shards) is used.
    #[arg(long, global = true, env = "PACT_CONFIG")]
    config: Option<PathBuf>,
    /// Client addresses (`host:port`, comma-separated) of some of the
    /// cluster's nodes, instead of a config: the routing table comes from
    /// the first that answers. TLS then comes from --cacert, --cert and
    /// --key.
    /// A flag beats an environment variable: `--endpoints` is used even
    /// with PACT_CONFIG set, `--config` even with PACT_ENDPOINTS set.
    #[arg(long, global = true, env = "PACT_ENDPOINTS", value_delimiter = ',')]
    endpoints: Vec<String>,
    /// Print JSON instead of text, errors included (as {"error": {"code",
    /// "message"}} on stdout; exit codes unchanged).
    #[arg(long, global = true)]
    json: bool,
    #[command(flatten)]
    codec: output::CodecFlags,
    /// Give up on a command (in the shell: on a statement) after this many
    /// seconds, retries included [default: 15; 3600 for backup and
    /// restore; 600 for admin replica].
    #[arg(long, global = true, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    timeout: Option<u64>,
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
    Get(data::GetArgs),
    Put(data::PutArgs),
    Del(data::DelArgs),
    Scan(data::ScanArgs),
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
        /// Settle it if nothing is decided: the answer is final (aborted
        /// unless a shard committed it). Only for a transaction whose
        /// client is gone.
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
    /// Operator actions on the cluster's Raft groups.
    #[command(subcommand)]
    Admin(AdminCmd),
    /// Write a consistent cut of every shard into DIR while the cluster
    /// serves: all keys and values as one read-only transaction saw them,
    /// so no transaction is half in. Writers of keys it has read wait for
    /// it (it holds shared locks until it commits).
    Backup {
        /// An empty or new directory.
        dir: PathBuf,
    },
    /// Load a backup made by `txn backup` into this cluster (a new one):
    /// the whole backup is checked against its manifest first; a cluster
    /// that holds any key is refused unless --force. Not atomic: if it is
    /// cut short, run it again with --force.
    Restore {
        dir: PathBuf,
        /// Restore into a cluster that already holds keys (backed-up keys
        /// are overwritten; others stay).
        #[arg(long)]
        force: bool,
    },
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
    Man {
        subcommand: Option<String>,
    },
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
        /// Replicas of each shard and of the coordinator group, 1 to 3
        /// [default: 3] (first start only). 1 keeps one copy of the data
        /// (shard i on node i, no fault tolerance): for data sets too large
        /// to store three times.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=3))]
        replicas: Option<u64>,
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

#[derive(Subcommand, Debug)]
enum AdminCmd {
    /// Leadership of a shard or coordinator group.
    #[command(subcommand)]
    Leader(LeaderCmd),
    /// The shards.
    #[command(subcommand)]
    Shard(ShardCmd),
    /// The nodes of the cluster.
    #[command(subcommand)]
    Member(MemberCmd),
    /// A shard's replicas (or, with --coord, a coordinator group's; with
    /// `meta` for the shard, the metadata group's): add one on a node,
    /// remove one, or move one from a node to another (add, then remove). The group's leader refuses a change whose new voters
    /// would lack a live majority, and promotes a new replica only once it
    /// has caught up. Each step is idempotent: a command cut short is
    /// finished by running it again.
    #[command(subcommand)]
    Replica(ReplicaCmd),
}

#[derive(Subcommand, Debug)]
enum ReplicaCmd {
    /// Make NODE (a node of the config) a replica of shard SHARD: it
    /// starts an empty replica, catches up as a learner (by snapshot if
    /// the log was compacted), then becomes a voter.
    Add {
        shard: GroupArg,
        node: u64,
        /// SHARD is a coordinator group (`coord N` in `txn status`); a
        /// node runs one coordinator group's replica at most.
        #[arg(long)]
        coord: bool,
    },
    /// Take NODE out of shard SHARD and delete its copy of the shard's
    /// data there. If NODE leads the shard, it hands the leadership on
    /// first (transactions open on the shard are then aborted).
    Remove {
        shard: GroupArg,
        node: u64,
        /// SHARD is a coordinator group.
        #[arg(long)]
        coord: bool,
    },
    /// Move shard SHARD's replica from node FROM to node TO.
    Move {
        shard: GroupArg,
        from: u64,
        to: u64,
        /// SHARD is a coordinator group.
        #[arg(long)]
        coord: bool,
    },
}

#[derive(Subcommand, Debug)]
enum ShardCmd {
    /// Every shard: its keys (a key range, or its ring points and their
    /// share of key hashes), replicas and current leader.
    List,
    /// Split shard SHARD in two while it serves: a range shard at --at KEY
    /// (the new shard takes KEY and above), a hash-partitioned one at the
    /// middle of its share of the ring (no --at). The new shard starts on
    /// the same replicas; move them with `txn admin replica move`.
    /// Transactions holding locks in the part that moves are aborted
    /// (retryably); if prepared ones do not finish within 10 s the split
    /// is given up and nothing moves. `pact` servers only.
    Split {
        shard: u64,
        /// First key of the new shard (range partitioning only).
        #[arg(long)]
        at: Option<String>,
        /// Split only the shard as it was at this descriptor version (as
        /// `txn admin shard list` shows it; default: its version now).
        /// Run again after an unknown outcome, the same command with the
        /// same --version answers as the split did, and never splits the
        /// shard a second time; if the shard changed in another way, it
        /// is refused (WRONG_SHARD).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        version: Option<u64>,
        /// How long to wait for the split to finish, in seconds (a large
        /// shard's copy takes a while); past it the answer is UNKNOWN and
        /// the split goes on.
        #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        wait: u64,
    },
    /// Merge shard SHARD into shard --into while both serve: --into takes
    /// SHARD's keys (for range shards, SHARD must be the range just
    /// before or just after it), and SHARD owns nothing from then on.
    /// SHARD's replicas are first moved onto --into's nodes where they are
    /// elsewhere (one at a time, as `txn admin replica move` does; listed
    /// on stderr, and under "moved" with --json). Transactions holding
    /// locks in SHARD are aborted
    /// (retryably); if prepared ones do not finish within 10 s the merge
    /// lifts its freeze and tries again later. `pact` servers only.
    Merge {
        shard: u64,
        /// The shard that takes SHARD's keys.
        #[arg(long)]
        into: u64,
        /// How long to wait for the merge to finish, in seconds; past it
        /// the answer is UNKNOWN and the merge goes on.
        #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        wait: u64,
    },
    /// Retire shard SHARD, merged into another: its Raft group stops and
    /// its data is deleted on every node, and any node answers for its
    /// past transactions from then on. Refused (INVALID_INPUT) for a shard
    /// that owns keys; refused for now (CONFLICT) while it holds a
    /// prepare record or a commit outcome not yet past its coordinator's
    /// record horizon (`transactions.record_retention_s` after the
    /// transaction ended): run it again then. Idempotent. The metadata
    /// group's leader does the same by itself every
    /// `raft.retire_merged_secs` (60 s; 0: off), so this is only needed
    /// to retire at once, or with that turned off. `pact` servers only.
    Retire { shard: u64 },
}

#[derive(Subcommand, Debug)]
enum MemberCmd {
    /// Every node: its address, the groups it replicates and leads, and
    /// whether it answered. Nodes come from the cluster's member table
    /// (the config's nodes, plus those added, removed ones marked).
    List,
    /// Add node ID to the cluster, reachable by clients at ADDR and by
    /// its peers at PEER_ADDR. Then start it with the cluster's config
    /// file and `--node-id ID` (it asks the cluster for its addresses),
    /// and move replicas onto it (`txn admin replica`). Idempotent.
    Add {
        id: u64,
        addr: String,
        peer_addr: String,
    },
    /// Remove node ID from the cluster: refused while it replicates a
    /// shard, a coordinator group or the metadata group (move its
    /// replicas away first: `txn admin replica move`).
    /// Its id is never used again; stop its process afterwards.
    Remove { id: u64 },
}

#[derive(Subcommand, Debug)]
enum LeaderCmd {
    /// Hand the leadership of a group (`shard N` or `coord N`, as `txn
    /// status` names them, or `meta`, with no number) to NODE, one of its
    /// replicas; returns once NODE leads. Transactions open on a shard
    /// whose leader moves are aborted (their locks lived at the old leader;
    /// prepared ones are kept), as are those open at a coordinator group's
    /// old leader.
    #[command(
        override_usage = "txn admin leader transfer <shard|coord> <GROUP> <NODE>\n       \
                                txn admin leader transfer meta <NODE>"
    )]
    Transfer {
        #[arg(value_enum)]
        kind: GroupKind,
        /// The group's id (its node for `meta`).
        group: u64,
        node: Option<u64>,
    },
}

/// The group of `txn admin replica`: a shard's (or coordinator group's)
/// id, or `meta`, the metadata group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GroupArg {
    Id(u64),
    Meta,
}

impl std::str::FromStr for GroupArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "meta" {
            return Ok(GroupArg::Meta);
        }
        s.parse().map(GroupArg::Id).map_err(|_| {
            format!("{s:?} is neither a group id (a number) nor `meta` (the metadata group)")
        })
    }
}

impl std::fmt::Display for GroupArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GroupArg::Id(g) => write!(f, "{g}"),
            GroupArg::Meta => write!(f, "meta"),
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum GroupKind {
    Shard,
    Coord,
    Meta,
}

fn parse_guard(g: &str, codec: Codec) -> Result<Guard, ClientError> {
    let bad = || {
        ClientError::InvalidInput(format!(
            "bad guard {g:?}; use exists:KEY, missing:KEY or equals:KEY=VALUE"
        ))
    };
    let (kind, rest) = g.split_once(':').ok_or_else(bad)?;
    match kind {
        "exists" => Ok(Guard::Exists(codec.decode(rest, "guard key")?)),
        "missing" => Ok(Guard::Missing(codec.decode(rest, "guard key")?)),
        "equals" => {
            // Base64 pads with `=`: the separator is the first `=` after
            // which both sides decode.
            let mut first_err = None;
            for (i, _) in rest.match_indices('=') {
                let (k, v) = (&rest[..i], &rest[i + 1..]);
                match (codec.decode(k, "guard key"), codec.decode(v, "guard value")) {
                    (Ok(k), Ok(v)) => return Ok(Guard::Equals(k, v)),
                    (Err(e), _) | (_, Err(e)) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            Err(first_err.unwrap_or_else(bad))
        }
        _ => Err(bad()),
    }
}

fn parse_ops(words: &[String], codec: Codec) -> Result<(Vec<Op>, Vec<Op>), ClientError> {
    let mut then = Vec::new();
    let mut otherwise = Vec::new();
    let mut in_else = false;
    let mut i = 0;
    let need = |i: usize, what: &str| {
        let w = words
            .get(i)
            .ok_or_else(|| ClientError::InvalidInput(format!("`{what}` needs more arguments")))?;
        codec.decode(w, what)
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
/// unreachable, or still routed to the wrong shard after the map was
/// refreshed: nothing done), 4 outcome unknown, 5 invalid input, 6 server error,
/// 7 aborted, 9 overloaded (refused at a server's admission limit,
/// nothing done); `health` adds 8, degraded (see `status`).
pub(crate) fn exit_for(e: &ClientError) -> u8 {
    match e {
        ClientError::Unavailable(_) | ClientError::Unreachable(_) | ClientError::WrongShard(_) => 3,
        ClientError::Unknown(_) => 4,
        ClientError::InvalidInput(_) | ClientError::UnknownShard(_) => 5,
        ClientError::Internal(_) => 6,
        ClientError::Aborted(_) => 7,
        ClientError::Conflict(_) => 6,
        ClientError::Overloaded(_) => 9,
    }
}

#[macro_use]
mod output;
mod data;
mod members;
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
fn deadline_error(cmd: &Cmd, total: Duration, progress: &data::Progress) -> ClientError {
    let waited = format!("no result within {}s (--timeout)", total.as_secs());
    let began = progress.began.get();
    match cmd {
        // Until its keys are read and deleted, a range delete has sent no
        // commit: the transaction expires unapplied.
        Cmd::Del(d) if d.is_range() && !progress.committing.load(Ordering::SeqCst) => {
            ClientError::Unavailable(format!("{waited}; nothing was deleted"))
        }
        Cmd::Del(d) if d.is_range() => match began {
            Some(id) => ClientError::Unknown(format!(
                "{waited}; transaction {id} may or may not have committed: `txn txn-status {id}` tells"
            )),
            None => ClientError::Unavailable(format!("{waited}; nothing was deleted")),
        },
        Cmd::Put(_) | Cmd::Del(_) | Cmd::Exec { .. } => ClientError::Unknown(format!(
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
        // Lists only read.
        Cmd::Admin(AdminCmd::Shard(ShardCmd::List) | AdminCmd::Member(MemberCmd::List)) => {
            ClientError::Unavailable(waited)
        }
        // A change under way when the deadline struck may go on, or may
        // have happened: not "nothing done". Every step is idempotent.
        Cmd::Admin(_) => ClientError::Unknown(format!(
            "{waited}; the change may or may not have been made: `txn status` shows where it stands, and running the command again finishes it"
        )),
        Cmd::Restore { .. } => ClientError::Unknown(format!(
            "{waited}; part of the backup may have been loaded: run it again with --force"
        )),
        _ => ClientError::Unavailable(waited),
    }
}

/// Adds `delta` to the integer at `key` in a transaction, started over on
/// abort. `began` holds the latest attempt's id: the earlier attempts
/// aborted, so only that one can be in doubt if the caller stops waiting.
pub(crate) async fn incr(
    client: &Client,
    key: &[u8],
    delta: i64,
    began: &Cell<Option<TxnId>>,
) -> Result<i64, ClientError> {
    client
        .transaction(|t| {
            began.set(Some(t.id()));
            let key = key.to_vec();
            Box::pin(async move { t.incr(&key, delta).await })
        })
        .await
}

fn main() -> ExitCode {
    // Output piped into a reader that quits (`txn scan | head`) ends the
    // process as for any Unix tool, instead of a panic in println!: see
    // `output`, through which all output goes.
    let parsed = Args::command()
        .try_get_matches()
        .and_then(|m| Args::from_arg_matches(&m).map(|a| (a, m)));
    let (args, matches) = match parsed {
        Ok(a) => a,
        Err(e) if e.use_stderr() && output::json_requested(std::env::args_os()) => {
            output::report(true, "USAGE", e.render().to_string().trim_end());
            return ExitCode::from(2);
        }
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let style = Style {
        json: args.json,
        codec: args.codec.codec(),
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
        replicas,
        port,
        tls,
        layout,
    } = &args.cmd
    {
        let opts = playground::Options {
            dir: dir.clone(),
            shards: *shards,
            replicas: *replicas,
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
                errln!("txn: cannot start runtime: {e}");
                return ExitCode::from(6);
            }
        };
        return match rt.block_on(playground::run(opts)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                errln!("txn playground: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    let source = match source::ConfigSource::from_matches(&matches, "config", "endpoints") {
        Ok(s) => s,
        Err(e) => {
            output::report(args.json, "USAGE", &e);
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            output::report(args.json, "INTERNAL", &format!("cannot start runtime: {e}"));
            return ExitCode::from(6);
        }
    };
    let flags = pact_client::TlsPaths {
        ca: args.tls_ca.clone(),
        cert: args.tls_cert.clone(),
        key: args.tls_key.clone(),
    };
    let total = Duration::from_secs(args.timeout.unwrap_or(match args.cmd {
        Cmd::Backup { .. } | Cmd::Restore { .. } => 3600,
        // A new replica catches up a whole shard before it votes.
        Cmd::Admin(AdminCmd::Replica(_)) => 600,
        // A split waits for transactions to leave, and copies.
        Cmd::Admin(AdminCmd::Shard(ShardCmd::Split { wait, .. }))
        | Cmd::Admin(AdminCmd::Shard(ShardCmd::Merge { wait, .. })) => wait.saturating_add(30),
        _ => 15,
    }));
    // --timeout bounds the whole command, the routing-table question
    // included.
    let started = std::time::Instant::now();
    // What a node's routing table said beyond the config, if one was asked.
    let mut found_table = None;
    let (config, tls) = match &source {
        source::ConfigSource::Endpoints(endpoints) => {
            let tls = match pact_client::Tls::from_flags(&flags) {
                Ok(t) => t,
                Err(e) => {
                    output::report(args.json, "CONFIG", &e.to_string());
                    return ExitCode::from(2);
                }
            };
            let asked = rt.block_on(async {
                tokio::time::timeout(total, pact_client::discover_table(endpoints, tls.as_ref()))
                    .await
                    .unwrap_or_else(|_| {
                        Err(ClientError::Unavailable(format!(
                            "no endpoint gave the routing table within {total:?}"
                        )))
                    })
            });
            match asked {
                Ok(found) => {
                    let config = found.config.clone();
                    found_table = Some(found);
                    (config, tls)
                }
                Err(e) => {
                    let e = source.annotate(e);
                    output::report_client(args.json, &e);
                    return ExitCode::from(exit_for(&e));
                }
            }
        }
        _ => {
            let config = match source.load() {
                Ok(c) => c,
                Err(e) => {
                    output::report(args.json, "CONFIG", &format!("bad config: {e}"));
                    return ExitCode::from(2);
                }
            };
            match pact_client::Tls::for_client(&config, &flags) {
                Ok(t) => (config, t),
                Err(e) => {
                    output::report(args.json, "CONFIG", &e.to_string());
                    return ExitCode::from(2);
                }
            }
        }
    };
    if let Cmd::Shell = args.cmd {
        // Each statement has its own deadline.
        let client = Client::new(&config, client_options(total, tls));
        if let Some(f) = &found_table {
            client.adopt(f);
        }
        return ExitCode::from(rt.block_on(shell::Shell::new(client, total, style).run()));
    }
    let left = total
        .saturating_sub(started.elapsed())
        .max(Duration::from_millis(1));
    let client = Client::new(&config, client_options(left, tls));
    if let Some(f) = &found_table {
        client.adopt(f);
    }
    let progress = data::Progress::default();
    let result = match rt.block_on(async {
        // Made inside the runtime: a timer needs one.
        tokio::time::timeout(left, run(&client, &args, style, &progress)).await
    }) {
        Ok(r) => r,
        Err(_) => Err(deadline_error(&args.cmd, total, &progress)),
    };
    match result.map_err(|e| source.annotate(e)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            output::report_client(args.json, &e);
            ExitCode::from(exit_for(&e))
        }
    }
}

/// Progress of a long copy on stderr: a line every 10,000 records.
fn every_10k(json: bool, verb: &'static str) -> impl FnMut(u64) {
    let mut shown = 0;
    move |n| {
        if !json && n / 10_000 > shown {
            shown = n / 10_000;
            eprintln!("{verb} {n} records");
        }
    }
}

/// `txn admin replica add|remove|move`.
async fn replica(client: &Client, r: &ReplicaCmd, json: bool) -> Result<u8, ClientError> {
    use pact_client::RaftGroup;
    use pact_common::ShardId;
    let (shard, added, removed, coord) = match *r {
        ReplicaCmd::Add { shard, node, coord } => (shard, Some(node), None, coord),
        ReplicaCmd::Remove { shard, node, coord } => (shard, None, Some(node), coord),
        ReplicaCmd::Move {
            shard,
            from,
            to,
            coord,
        } => {
            if from == to {
                return Err(ClientError::InvalidInput(format!(
                    "moving group {shard}'s replica from node {from} to itself"
                )));
            }
            (shard, Some(to), Some(from), coord)
        }
    };
    let shard = match (shard, coord) {
        (GroupArg::Meta, true) => {
            return Err(ClientError::InvalidInput(
                "`meta` names the metadata group; --coord is for a coordinator group's id".into(),
            ))
        }
        (GroupArg::Meta, false) => {
            return replica_changes(client, RaftGroup::Meta, added, removed, json).await
        }
        (GroupArg::Id(g), _) => g,
    };
    let group = if coord {
        if !client.coordinator_groups().iter().any(|(g, _)| *g == shard) {
            return Err(ClientError::InvalidInput(format!(
                "no coordinator group {shard} in the cluster (txn status lists them)"
            )));
        }
        RaftGroup::Coordinator(shard)
    } else {
        let group = RaftGroup::Shard(ShardId(shard));
        // A shard a split created is found from the descriptors.
        client.know(group).await;
        if client.shard_replicas(ShardId(shard)).is_empty() {
            return Err(ClientError::InvalidInput(format!(
                "no shard {shard} in the cluster (txn admin shard list)"
            )));
        }
        group
    };
    replica_changes(client, group, added, removed, json).await
}

/// Add `added` to `group`, then remove `removed` from it, and say what
/// happened.
async fn replica_changes(
    client: &Client,
    group: pact_client::RaftGroup,
    added: Option<u64>,
    removed: Option<u64>,
    json: bool,
) -> Result<u8, ClientError> {
    use pact_common::NodeId;
    let ids = |v: &[NodeId]| v.iter().map(|n| n.0).collect::<Vec<_>>();
    let mut voters = Vec::new();
    if let Some(node) = added {
        voters = client.add_replica(group, NodeId(node)).await?;
        if !json {
            outln!("{group}: node {node} is a voter; voters {:?}", ids(&voters));
        }
    }
    let mut dropped = None;
    if let Some(node) = removed {
        let r = client.remove_replica(group, NodeId(node)).await?;
        voters = r.voters;
        if !json {
            outln!("{group}: node {node} removed; voters {:?}", ids(&voters));
            match &r.dropped {
                None => outln!("node {node} dropped its replica and deleted its data"),
                Some(why) => outln!(
                    "node {node} still holds its replica's data ({why}); run the same command again once it answers"
                ),
            }
        }
        dropped = Some(r.dropped);
    }
    if json {
        let mut v = serde_json::json!({"group": group.to_string(), "voters": ids(&voters)});
        if let Some(d) = dropped {
            v["dropped"] = serde_json::json!(d.is_none());
            if let Some(why) = d {
                v["drop_error"] = serde_json::json!(why);
            }
        }
        outln!("{v}");
    }
    Ok(0)
}

/// The result of a backup or restore: `what` happened, as of `txn`.
fn report_copy(json: bool, dir: &std::path::Path, txn: &str, records: u64, bytes: u64, what: &str) {
    if json {
        outln!(
            "{}",
            serde_json::json!({"dir": dir.display().to_string(), "txn": txn, "records": records, "bytes": bytes})
        );
    } else {
        outln!("{what} records ({bytes} bytes of keys and values), as of transaction {txn}");
    }
}

async fn run(
    client: &Client,
    args: &Args,
    style: Style,
    progress: &data::Progress,
) -> Result<u8, ClientError> {
    let codec = style.codec;
    match &args.cmd {
        Cmd::Get(a) => data::get(client, style, a).await,
        Cmd::Put(a) => data::put(client, style, a).await,
        Cmd::Del(a) => data::del(client, style, a, progress).await,
        Cmd::Scan(a) => data::scan(client, style, a).await,
        Cmd::Incr { key, delta } => {
            let key = codec.decode(key, "key")?;
            let v = incr(client, &key, *delta, &progress.began).await?;
            if args.json {
                let mut o = serde_json::Map::new();
                codec.field(&mut o, "key", &key);
                o.insert("value".into(), v.into());
                outln!("{}", serde_json::Value::Object(o));
            } else {
                outln!("{v}");
            }
            Ok(0)
        }
        Cmd::Exec { guards, ops } => {
            let guards = guards
                .iter()
                .map(|g| parse_guard(g, codec))
                .collect::<Result<Vec<_>, _>>()?;
            let (then, otherwise) = parse_ops(ops, codec)?;
            let r = client.execute(guards, then, otherwise).await?;
            if args.json {
                let results: Vec<_> = r
                    .results
                    .iter()
                    .map(|(k, v)| codec.lookup(k, v.as_deref()))
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
                        Some(v) => outln!("{} = {}", codec.key(k), codec.value(v)),
                        None => outln!("{} (not found)", codec.key(k)),
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
            let (word, reason, kind, code) = match outcome {
                TxnOutcome::Committed => ("committed", String::new(), None, 0),
                TxnOutcome::Aborted(a) => ("aborted", a.reason, Some(a.kind.as_str()), 7),
                TxnOutcome::Unknown(r) => ("unknown", r, None, 4),
                TxnOutcome::Open(r) => ("open", r, None, 4),
                TxnOutcome::Expired(r) => ("expired", r, None, 4),
            };
            if args.json {
                outln!(
                    "{}",
                    serde_json::json!({
                        "txn": id.to_string(),
                        "outcome": word,
                        "reason": reason,
                        "abort_kind": kind,
                    })
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
        Cmd::Admin(AdminCmd::Leader(LeaderCmd::Transfer { kind, group, node })) => {
            let (target, node) = match (kind, *node) {
                (GroupKind::Shard, Some(n)) => (
                    pact_client::RaftGroup::Shard(pact_common::ShardId(*group)),
                    n,
                ),
                (GroupKind::Coord, Some(n)) => (pact_client::RaftGroup::Coordinator(*group), n),
                (GroupKind::Meta, None) => (pact_client::RaftGroup::Meta, *group),
                (GroupKind::Meta, Some(_)) => {
                    return Err(ClientError::InvalidInput(
                        "the metadata group has no number: txn admin leader transfer meta NODE"
                            .into(),
                    ))
                }
                (_, None) => {
                    return Err(ClientError::InvalidInput(
                        "give the group and the node: txn admin leader transfer shard|coord \
                         GROUP NODE"
                            .into(),
                    ))
                }
            };
            let (leader, term) = client
                .transfer_leader(target, pact_common::NodeId(node))
                .await?;
            if args.json {
                outln!(
                    "{}",
                    serde_json::json!({"group": target.to_string(), "leader": leader.0, "term": term})
                );
            } else {
                outln!("{target}: node {leader} leads (term {term})");
            }
            Ok(0)
        }
        Cmd::Admin(AdminCmd::Replica(r)) => replica(client, r, args.json).await,
        Cmd::Backup { dir } => {
            let s = client.backup(dir, every_10k(args.json, "read")).await?;
            let what = format!("backed up {} to {}", s.records, dir.display());
            report_copy(
                args.json,
                dir,
                &s.txn.to_string(),
                s.records,
                s.bytes,
                &what,
            );
            Ok(0)
        }
        Cmd::Restore { dir, force } => {
            let s = client
                .restore(dir, *force, every_10k(args.json, "wrote"))
                .await?;
            let what = format!("restored {} from {}", s.records, dir.display());
            report_copy(args.json, dir, &s.txn, s.records, s.bytes, &what);
            Ok(0)
        }
        Cmd::Admin(AdminCmd::Shard(ShardCmd::List)) => {
            members::shards(client, style, args.json).await
        }
        Cmd::Admin(AdminCmd::Shard(ShardCmd::Split {
            shard,
            at,
            version,
            wait,
        })) => {
            let at = at
                .as_deref()
                .map(|a| style.codec.decode(a, "--at key"))
                .transpose()?;
            let wait = std::time::Duration::from_secs(*wait);
            members::split(client, style, *shard, *version, at, wait, args.json).await
        }
        Cmd::Admin(AdminCmd::Shard(ShardCmd::Merge { shard, into, wait })) => {
            let wait = std::time::Duration::from_secs(*wait);
            members::merge(client, style, *shard, *into, wait, args.json).await
        }
        Cmd::Admin(AdminCmd::Shard(ShardCmd::Retire { shard })) => {
            members::retire(client, *shard, args.json).await
        }
        Cmd::Admin(AdminCmd::Member(MemberCmd::List)) => members::members(client, args.json).await,
        Cmd::Admin(AdminCmd::Member(MemberCmd::Add {
            id,
            addr,
            peer_addr,
        })) => members::add(client, *id, addr, peer_addr, args.json).await,
        Cmd::Admin(AdminCmd::Member(MemberCmd::Remove { id })) => {
            members::remove(client, *id, args.json).await
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
    fn overloaded_has_its_own_exit_code_and_json_code() {
        let e = ClientError::Overloaded("node 1 has 1024 requests in flight".into());
        assert_eq!(exit_for(&e), 9);
        let others = [
            ClientError::Unavailable(String::new()),
            ClientError::Unknown(String::new()),
            ClientError::InvalidInput(String::new()),
            ClientError::Internal(String::new()),
        ];
        assert!(others.iter().all(|o| exit_for(o) != 9));
        let j = output::client_error_json(&e);
        assert_eq!(j["error"]["code"], "OVERLOADED");
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
        let code_at = |words: &[&str], began, committing: bool| {
            let p = data::Progress::default();
            p.began.set(began);
            p.committing.store(committing, Ordering::SeqCst);
            exit_for(&deadline_error(&cmd(words), t, &p))
        };
        let code = |words: &[&str], began| code_at(words, began, false);
        assert_eq!(code(&["put", "k", "v"], None), 4);
        assert_eq!(code(&["del", "k"], None), 4);
        assert_eq!(code(&["exec", "put", "k", "v"], None), 4);
        assert_eq!(code(&["incr", "k"], Some(id)), 4);
        assert_eq!(code(&["incr", "k"], None), 3);
        assert_eq!(code(&["get", "k"], None), 3);
        assert_eq!(code(&["get", "--prefix", "k"], None), 3);
        assert_eq!(code(&["scan"], None), 3);
        assert_eq!(code(&["txn-status", "1-4-99"], None), 3);
        assert_eq!(code(&["txn-status", "--resolve", "1-4-99"], None), 4);
        // A range delete is in doubt only once its commit may be sent.
        let range = ["del", "--range", "a", "b"];
        assert_eq!(code_at(&range, Some(id), false), 3);
        assert_eq!(code_at(&["del", "--prefix", "a"], Some(id), false), 3);
        assert_eq!(code_at(&range, Some(id), true), 4);
        // An admin change or a restore cut off may go on: unknown; a list
        // only reads.
        assert_eq!(
            code(&["admin", "shard", "split", "1", "--at", "m"], None),
            4
        );
        assert_eq!(code(&["admin", "member", "remove", "4"], None), 4);
        assert_eq!(code(&["restore", "/tmp/backup"], None), 4);
        assert_eq!(code(&["admin", "shard", "list"], None), 3);
        assert_eq!(code(&["admin", "member", "list"], None), 3);
    }

    #[test]
    fn data_command_usage() {
        let bad = |words: &[&str]| {
            let mut all = vec!["txn"];
            all.extend_from_slice(words);
            Args::try_parse_from(all).is_err()
        };
        // A key or a prefix, not both; listing options only with a prefix.
        assert!(bad(&["get"]));
        assert!(bad(&["get", "k", "--prefix", "p"]));
        assert!(bad(&["get", "k", "--keys-only"]));
        assert!(!bad(&[
            "get",
            "--prefix",
            "p",
            "--keys-only",
            "--limit",
            "3"
        ]));
        assert!(bad(&["scan", "--all", "--limit", "3"]));
        assert!(bad(&["scan", "--keys-only", "--count-only"]));
        assert!(bad(&["scan", "--page-size", "10000"]));
        assert!(bad(&["scan", "a", "--prefix", "p"]));
        // del: exactly one of KEY, --prefix, --range START END.
        assert!(bad(&["del"]));
        assert!(bad(&["del", "k", "--prefix", "p"]));
        assert!(bad(&["del", "--range", "a"]));
        assert!(bad(&["del", "--prefix", "p", "--range", "a", "b"]));
        assert!(!bad(&["del", "--range", "a", "b"]));
        // put: a value, `-` or --file.
        assert!(bad(&["put", "k"]));
        assert!(bad(&["put", "k", "v", "--file", "f"]));
        assert!(!bad(&["put", "k", "-"]));
        assert!(!bad(&["put", "k", "-5"]));
        assert!(bad(&["--hex", "--base64", "get", "k"]));
        match cmd(&["put", "k", "--file", "f"]) {
            Cmd::Put(p) => assert_eq!((p.value, p.file), (None, Some(PathBuf::from("f")))),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn guards_and_ops_decode_with_the_codec() {
        let g = parse_guard("equals:aGk==dg==", Codec::Base64).unwrap();
        assert_eq!(g, Guard::Equals(b"hi".to_vec(), b"v".to_vec()));
        let g = parse_guard("equals:6b=", Codec::Hex).unwrap();
        assert_eq!(g, Guard::Equals(b"k".to_vec(), Vec::new()));
        let g = parse_guard("equals:a=b=c", Codec::Text).unwrap();
        assert_eq!(g, Guard::Equals(b"a".to_vec(), b"b=c".to_vec()));
        assert!(parse_guard("equals:zz=00", Codec::Hex).is_err());
        let words: Vec<String> = ["put", "00ff", "0a", "else", "get", "00ff"]
            .map(String::from)
            .to_vec();
        let (then, otherwise) = parse_ops(&words, Codec::Hex).unwrap();
        assert_eq!(then, [Op::Put(vec![0, 0xff], vec![0x0a])]);
        assert_eq!(otherwise, [Op::Get(vec![0, 0xff])]);
    }

    #[test]
    fn timeout_out_of_range_is_a_usage_error() {
        for t in ["0", "86401", "18446744073709551615", "-1"] {
            let e = Args::try_parse_from(["txn", "--timeout", t, "get", "k"]).unwrap_err();
            assert!(e.use_stderr(), "{t}");
        }
    }
}
