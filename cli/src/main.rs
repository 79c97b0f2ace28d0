//! `txn`: command-line client for Pact.
//!
//! Today it covers single-shard operations (get, put, del, scan, status);
//! multi-key transactions, the interactive shell and the playground come
//! with the transaction layer.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use pact_client::{Client, ClientError, ClientOptions};
use pact_common::ClusterConfig;

/// Talk to a Pact cluster.
#[derive(Parser, Debug)]
#[command(name = "txn", version)]
struct Args {
    /// Cluster config (TOML). Without it, the embedded local default
    /// (3 nodes on 127.0.0.1:7001-7003, 3 shards) is used.
    #[arg(long, global = true, env = "PACT_CONFIG")]
    config: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Give up on an operation after this many seconds of retrying.
    #[arg(long, global = true, default_value_t = 15)]
    timeout: u64,
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
    /// Raft status of every replica of every shard.
    Status,
}

/// Exit codes: 0 ok, 1 not found (get), 2 usage, 3 unavailable,
/// 4 outcome unknown, 5 invalid input, 6 server error, 7 aborted.
fn exit_for(e: &ClientError) -> u8 {
    match e {
        ClientError::Unavailable(_) => 3,
        ClientError::Unknown(_) => 4,
        ClientError::InvalidInput(_) | ClientError::UnknownShard(_) => 5,
        ClientError::Internal(_) => 6,
        ClientError::Aborted(_) => 7,
    }
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let config = match &args.config {
        Some(p) => ClusterConfig::load(p),
        None => Ok(ClusterConfig::embedded_default()),
    };
    let config = match config {
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
    let opts = ClientOptions {
        retry_for: Duration::from_secs(args.timeout),
        ..ClientOptions::default()
    };
    let client = Client::new(&config, opts);
    match rt.block_on(run(&client, &args)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("txn: {e}");
            ExitCode::from(exit_for(&e))
        }
    }
}

async fn run(client: &Client, args: &Args) -> Result<u8, ClientError> {
    match &args.cmd {
        Cmd::Get { key } => {
            let v = client.get(key.as_bytes()).await?;
            if args.json {
                let value = v.as_ref().map(|v| String::from_utf8_lossy(v).to_string());
                println!(
                    "{}",
                    serde_json::json!({ "key": key, "found": v.is_some(), "value": value })
                );
            } else if let Some(v) = &v {
                println!("{}", String::from_utf8_lossy(v));
            } else {
                eprintln!("(not found)");
            }
            Ok(if v.is_some() { 0 } else { 1 })
        }
        Cmd::Put { key, value } => {
            client.put(key.as_bytes(), value.as_bytes()).await?;
            if args.json {
                println!("{}", serde_json::json!({ "ok": true }));
            } else {
                println!("OK");
            }
            Ok(0)
        }
        Cmd::Del { key } => {
            client.delete(key.as_bytes()).await?;
            if args.json {
                println!("{}", serde_json::json!({ "ok": true }));
            } else {
                println!("OK");
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
                println!("{}", serde_json::Value::Array(items));
            } else {
                for (k, v) in &pairs {
                    println!(
                        "{} = {}",
                        String::from_utf8_lossy(k),
                        String::from_utf8_lossy(v)
                    );
                }
            }
            Ok(0)
        }
        Cmd::Status => {
            let rows = client.status().await;
            if args.json {
                let items: Vec<_> = rows
                    .iter()
                    .map(|(shard, node, r)| match r {
                        Ok(s) => serde_json::json!({
                            "shard": shard.0, "node": node.0, "role": s.role, "term": s.term,
                            "leader": s.leader, "applied_index": s.applied_index,
                            "last_log_index": s.last_log_index, "snapshot_index": s.snapshot_index,
                        }),
                        Err(e) => serde_json::json!({ "shard": shard.0, "node": node.0, "error": e.to_string() }),
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(items));
            } else {
                println!(
                    "{:<6} {:<5} {:<10} {:>5} {:>7} {:>8} {:>8} {:>9}",
                    "SHARD", "NODE", "ROLE", "TERM", "LEADER", "APPLIED", "LASTLOG", "SNAPSHOT"
                );
                for (shard, node, r) in &rows {
                    match r {
                        Ok(s) => println!(
                            "{:<6} {:<5} {:<10} {:>5} {:>7} {:>8} {:>8} {:>9}",
                            shard.0,
                            node.0,
                            s.role,
                            s.term,
                            s.leader
                                .map(|l| l.to_string())
                                .unwrap_or_else(|| "-".into()),
                            s.applied_index,
                            s.last_log_index,
                            s.snapshot_index
                        ),
                        Err(e) => println!("{:<6} {:<5} unreachable: {e}", shard.0, node.0),
                    }
                }
            }
            Ok(0)
        }
    }
}
