//! Backup and restore (`txn backup`, `txn restore`): a backup taken while
//! transfers run is a consistent cut, so the bank invariant holds on the
//! data restored from it into a new cluster; restore refuses a cluster
//! that holds data and a backup that does not match its manifest.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pact_client::{Client, ClientError};
use pact_tests::{binary, fast_tuning, Cluster};

const ACCOUNTS: usize = 40;
const INITIAL: i64 = 100;

fn account(i: usize) -> Vec<u8> {
    format!("acct-{i:03}").into_bytes()
}

fn txn(c: &Cluster, args: &[&str]) -> Output {
    Command::new(binary("txn"))
        .arg("--config")
        .arg(c.path().join("cluster.toml"))
        .args(args)
        .output()
        .expect("run txn")
}

async fn cluster() -> Cluster {
    let config = pact_common::ClusterConfig::local_combined(3, 3, 3, 7001).expect("config");
    let mut c = Cluster::create(config, fast_tuning());
    c.start_all();
    c.wait_ready(Duration::from_secs(30)).await;
    c
}

/// Move a random amount between two random accounts, in one transaction.
async fn transfer(client: &Client, seed: u64) -> Result<(), ClientError> {
    let from = account((seed % ACCOUNTS as u64) as usize);
    let to = account(((seed / 7 + 1) % ACCOUNTS as u64) as usize);
    if from == to {
        return Ok(());
    }
    let amount = (seed % 13) as i64 + 1;
    client
        .transaction(|t| {
            let (from, to) = (from.clone(), to.clone());
            Box::pin(async move {
                let read = |v: Option<Vec<u8>>| -> i64 {
                    String::from_utf8(v.unwrap_or_default())
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0)
                };
                let a = read(t.get_for_update(&from).await?);
                let b = read(t.get_for_update(&to).await?);
                t.put(&from, (a - amount).to_string().as_bytes()).await?;
                t.put(&to, (b + amount).to_string().as_bytes()).await
            })
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_transfers_restores_with_the_invariant_kept() {
    let a = cluster().await;
    let client = a.client();
    for i in 0..ACCOUNTS {
        client
            .put(&account(i), INITIAL.to_string().as_bytes())
            .await
            .expect("open account");
    }
    // Transfers run throughout the backup.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..4u64 {
        let (client, stop, done) = (client.clone(), stop.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            let mut seed = w * 1_000_003 + 17;
            while !stop.load(Ordering::SeqCst) {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407)
                    >> 1;
                if transfer(&client, seed).await.is_ok() {
                    done.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let before = done.load(Ordering::SeqCst);
    let dir = tempfile::tempdir().expect("tempdir");
    let bdir = dir.path().join("backup");
    let bdir_s = bdir.to_str().expect("utf-8 path");
    let out = tokio::task::block_in_place(|| txn(&a, &["--json", "backup", bdir_s]));
    assert!(out.status.success(), "backup: {out:?}");
    let summary: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("backup prints JSON");
    assert_eq!(summary["records"], ACCOUNTS as u64, "{summary}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.expect("worker");
    }
    let during = done.load(Ordering::SeqCst);
    assert!(
        during > before,
        "no transfer committed while the backup ran ({before} before, {during} after)"
    );
    // A second backup into the same directory is refused.
    let again = tokio::task::block_in_place(|| txn(&a, &["backup", bdir_s]));
    assert_eq!(again.status.code(), Some(5), "{again:?}");
    drop(a);

    // A new cluster: restore, then the invariant.
    let b = cluster().await;
    let out = tokio::task::block_in_place(|| txn(&b, &["--json", "restore", bdir_s]));
    assert!(out.status.success(), "restore: {out:?}");
    let restored: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(restored["records"], ACCOUNTS as u64, "{restored}");
    assert_eq!(restored["txn"], summary["txn"]);
    let bclient = b.client();
    let mut total = 0i64;
    for i in 0..ACCOUNTS {
        let v = bclient
            .get(&account(i))
            .await
            .expect("read")
            .unwrap_or_else(|| panic!("account {i} missing after restore"));
        total += String::from_utf8(v).unwrap().parse::<i64>().unwrap();
    }
    assert_eq!(
        total,
        INITIAL * ACCOUNTS as i64,
        "the restored balances do not add up: the backup was not a consistent cut"
    );

    // Into a cluster that holds data: refused unless forced.
    let out = tokio::task::block_in_place(|| txn(&b, &["restore", bdir_s]));
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already holds data"),
        "{out:?}"
    );
    // A damaged backup: refused before anything is written, even forced.
    let data = bdir.join("data.pact");
    let mut bytes = std::fs::read(&data).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&data, bytes).unwrap();
    let out = tokio::task::block_in_place(|| txn(&b, &["restore", "--force", bdir_s]));
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not match its manifest"),
        "{out:?}"
    );
    // An unfinished backup (no manifest) is no backup.
    std::fs::remove_file(bdir.join("manifest.txt")).unwrap();
    let out = tokio::task::block_in_place(|| txn(&b, &["restore", "--force", bdir_s]));
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no finished backup"),
        "{out:?}"
    );
}

/// `txn admin shard list` and `txn admin member list`: the topology with
/// its leaders, as JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_and_member_lists_show_the_topology_and_its_leaders() {
    let c = cluster().await;
    let out = tokio::task::block_in_place(|| txn(&c, &["--json", "admin", "shard", "list"]));
    assert!(out.status.success(), "{out:?}");
    let shards: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let shards = shards.as_array().expect("a list");
    assert_eq!(shards.len(), 3, "{shards:?}");
    let share: f64 = shards
        .iter()
        .map(|s| s["keys"]["ring_share"].as_f64().expect("hash ring share"))
        .sum();
    assert!((share - 1.0).abs() < 1e-6, "ring shares add up to {share}");
    for s in shards {
        assert_eq!(s["replicas"].as_array().map(Vec::len), Some(3), "{s}");
        assert!(s["leader"].as_u64().is_some(), "no leader: {s}");
        // Read from the shards' own descriptors, at their first version.
        assert_eq!(
            (s["keys_from"].as_str(), s["version"].as_u64()),
            (Some("shards"), Some(1)),
            "{s}"
        );
    }
    let out = tokio::task::block_in_place(|| txn(&c, &["--json", "admin", "member", "list"]));
    assert!(out.status.success(), "{out:?}");
    let nodes: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let nodes = nodes.as_array().expect("a list");
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    let leads: usize = nodes
        .iter()
        .map(|n| {
            assert_eq!(n["answered"], true, "{n}");
            n["leads"].as_array().map_or(0, Vec::len)
        })
        .sum();
    assert_eq!(
        leads, 4,
        "3 shards and 1 coordinator group, each led once: {nodes:?}"
    );
}
