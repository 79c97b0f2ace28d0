//! A shard's replicas added, removed and moved at run time (`txn admin
//! replica`, `pact.v1.Admin` HostReplica / ChangeReplicas / DropReplica),
//! with real `pact` processes: a spare node listed in the config takes
//! over replicas while bank transfers run, and nothing acknowledged is
//! lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pact_client::{Client, ClientError, RaftGroup};
use pact_common::{ClusterConfig, NodeConfig, NodeId, ShardId};
use pact_tests::bank::{self, read_settled};
use pact_tests::{fast_tuning, Cluster};

/// The config of [`cluster_with_spare`], and its Raft tuning.
fn config_with_spare() -> (ClusterConfig, pact_common::RaftTuning) {
    let mut config = ClusterConfig::local_combined(3, 3, 3, 7001).expect("config");
    config.nodes.push(NodeConfig {
        id: NodeId(4),
        addr: "127.0.0.1:1".into(),
        peer_addr: "127.0.0.1:2".into(),
    });
    // Frequent snapshots and a short log behind them: a new replica
    // catches up from a snapshot, not from the log.
    let tuning = pact_common::RaftTuning {
        snapshot_logs: 100,
        keep_logs: 20,
        ..fast_tuning()
    };
    (config, tuning)
}

const ACCOUNTS: usize = 8;
const INITIAL: i64 = 1000;

/// The first `n` keys `{prefix}-{i}` that map to shard 1.
fn keys_of_shard_one(client: &Client, prefix: &str, n: usize) -> Vec<String> {
    let map = client.shard_map();
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .filter(|k| map.shard_for_key(k.as_bytes()) == ShardId(1))
        .take(n)
        .collect()
}

/// Three `pact` nodes holding three shards and a coordinator group, and a
/// spare node 4 that the config names but gives nothing; node 4 serves
/// its metrics on the returned port.
async fn cluster_with_spare() -> (Cluster, u16) {
    let (config, tuning) = config_with_spare();
    cluster_with_spare_tuned(config, tuning).await
}

async fn cluster_with_spare_tuned(
    config: ClusterConfig,
    tuning: pact_common::RaftTuning,
) -> (Cluster, u16) {
    let mut c = Cluster::create(config, tuning);
    let metrics = pact_tests::free_ports(1)[0];
    c.set_args(
        NodeId(4),
        &["--metrics-listen".into(), format!("127.0.0.1:{metrics}")],
    );
    c.start_all();
    c.wait_ready(Duration::from_secs(30)).await;
    (c, metrics)
}

/// The bank's accounts, `filler` more keys spread over the shards (so a
/// new replica has something to catch up on), and `workers` clients
/// making transfers (seeded by `seed`) until the returned flag is set.
async fn transfers_under_way(
    c: &Cluster,
    filler: usize,
    workers: usize,
    seed: u64,
) -> (
    Arc<AtomicBool>,
    Vec<tokio::task::JoinHandle<Vec<bank::Transfer>>>,
) {
    let client = c.client();
    bank::open_accounts(&client, ACCOUNTS, INITIAL).await;
    for i in 0..filler {
        client
            .put(format!("filler-{i}").as_bytes(), &[7u8; 100])
            .await
            .expect("filler");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let workers = bank::spawn_transfers(
        (0..workers).map(|_| c.client()).collect(),
        ACCOUNTS,
        seed,
        stop.clone(),
    );
    (stop, workers)
}

/// Node 4's metrics page (empty if it does not answer).
fn metrics_page(port: u16) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// A counter of node 4's metrics page for `group` (0 if absent).
fn counter(port: u16, name: &str, group: u64) -> u64 {
    metric(port, &format!("{name}{{group=\"{group}\"}}"))
}

/// The value of `series` (a name and its labels, as the page writes
/// them) on node 4's metrics page (0 if absent).
fn metric(port: u16, series: &str) -> u64 {
    let prefix = format!("{series} ");
    metrics_page(port)
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Run `txn --json admin replica ARGS` against the cluster.
/// Its exit status, its JSON answer (or error) and its stderr.
fn txn_replica(c: &Cluster, args: &[&str]) -> (bool, serde_json::Value, String) {
    let out = std::process::Command::new(pact_tests::binary("txn"))
        .arg("--config")
        .arg(&c.config_path)
        .args(["--json", "admin", "replica"])
        .args(args)
        .output()
        .expect("run txn");
    let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (
        out.status.success(),
        v,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Wait (up to `within`) until `node`, back after its replica of shard 1
/// was removed while it was down, has dropped that replica by itself.
async fn dropped_when_back(c: &Cluster, client: &Client, node: u64, within: Duration) {
    let deadline = Instant::now() + within;
    while voters_at(client, 1, node).await.is_some()
        || !std::fs::read_to_string(c.log_path(NodeId(node)))
            .unwrap_or_default()
            .contains("dropped the removed replica")
    {
        assert!(
            Instant::now() < deadline,
            "node {node} still hosts shard 1\n{}",
            c.logs_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The voters that `node`'s replica of `shard` reports, once it has a
/// leader; None if it does not host the shard.
async fn voters_at(client: &Client, shard: u64, node: u64) -> Option<Vec<u64>> {
    client
        .replica_status(ShardId(shard), NodeId(node))
        .await
        .ok()
        .map(|s| s.voters)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_replicas_move_to_a_spare_node_while_transfers_run() {
    let (mut c, metrics) = cluster_with_spare().await;
    let client = c.client();
    let (stop, workers) = transfers_under_way(&c, 600, 3, 11).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Move shard 1's replica from node 3 to the spare, with the CLI.
    let (ok, v, err) = txn_replica(&c, &["move", "1", "3", "4"]);
    assert!(ok, "replica move failed: {err}\n{}", c.logs_tail());
    assert_eq!(v["voters"], serde_json::json!([1, 2, 4]), "{v}");
    assert_eq!(v["dropped"], true, "{v}");
    // The log behind the leader's snapshot was compacted: node 4 caught up
    // from a snapshot.
    let installed = counter(metrics, "pact_raft_snapshots_installed_total", 1);
    assert!(
        installed >= 1,
        "node 4 installed {installed} snapshots of shard 1"
    );
    // Move the replica of shard 2 that leads it: the leader hands its
    // leadership on before it is removed.
    let leader = c
        .wait_leader(
            ShardId(2),
            &[NodeId(1), NodeId(2), NodeId(3)],
            Duration::from_secs(20),
        )
        .await;
    let moved = client
        .add_replica(RaftGroup::Shard(ShardId(2)), NodeId(4))
        .await
        .expect("add to shard 2");
    assert!(moved.contains(&NodeId(4)), "{moved:?}");
    let removed = client
        .remove_replica(RaftGroup::Shard(ShardId(2)), leader)
        .await
        .expect("remove shard 2's leader");
    assert!(!removed.voters.contains(&leader), "{removed:?}");
    assert_eq!(removed.dropped, None, "{removed:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    let mut log = Vec::new();
    for w in workers {
        log.extend(w.await.expect("worker"));
    }

    // Node 3 no longer hosts shard 1, node 4 does and agrees on the voters.
    assert_eq!(voters_at(&client, 1, 3).await, None);
    assert_eq!(voters_at(&client, 1, 4).await, Some(vec![1, 2, 4]));
    // Node 4 keeps its replicas across a crash; node 3 does not get shard 1
    // back from its config.
    c.kill(NodeId(4));
    c.kill(NodeId(3));
    c.start_node(NodeId(4));
    c.start_node(NodeId(3));
    back_on_four(&c, &client, RaftGroup::Shard(ShardId(1)), &[1, 2, 4]).await;
    assert_eq!(voters_at(&client, 1, 3).await, None);
    // What operators see: the replicas as they are now, and a healthy
    // cluster (node 3's missing copy of shard 1 is no fault).
    let txn = |args: &[&str]| {
        std::process::Command::new(pact_tests::binary("txn"))
            .arg("--config")
            .arg(&c.config_path)
            .arg("--json")
            .args(args)
            .output()
            .expect("run txn")
    };
    let out = txn(&["admin", "shard", "list"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v[0]["replicas"], serde_json::json!([1, 2, 4]), "{v}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = txn(&["health"]);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "txn health: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let checked = bank::check(&client, &log, ACCOUNTS, INITIAL).await;
    assert!(
        checked.acknowledged > 10,
        "too few transfers went through: {checked:?}"
    );
    for i in 0..600 {
        assert_eq!(
            read_settled(&client, format!("filler-{i}").as_bytes()).await,
            Some(vec![7u8; 100])
        );
    }
    println!("{checked:?} of {} tried", log.len());
}

/// A replica removed while its node was down (the drop cannot reach it)
/// is started again by that node's config, and campaigns; the group's
/// leader answers that the group removed it, and the node drops the
/// replica for good (a second restart does not bring it back). Without
/// that it stayed, hearing no leader, until the operator ran the same
/// `replica remove` again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_removed_while_its_node_was_down_is_dropped_when_it_returns() {
    let (mut c, _) = cluster_with_spare().await;
    let client = c.client();
    let shard = RaftGroup::Shard(ShardId(1));
    client
        .put(b"before-removal", b"1")
        .await
        .expect("a write to shard 1");
    let voters = client
        .add_replica(shard, NodeId(4))
        .await
        .expect("add node 4 to shard 1");
    assert!(voters.contains(&NodeId(4)), "{voters:?}");
    c.kill(NodeId(3));
    let removed = client
        .remove_replica(shard, NodeId(3))
        .await
        .unwrap_or_else(|e| panic!("remove node 3: {e}\n{}", c.logs_tail()));
    assert!(!removed.voters.contains(&NodeId(3)), "{removed:?}");
    assert!(
        removed.dropped.is_some(),
        "the drop reached a node that was down: {removed:?}"
    );
    // Back: its config gives it shard 1 again.
    c.start_node(NodeId(3));
    dropped_when_back(&c, &client, 3, Duration::from_secs(30)).await;
    // For good: a restart does not bring it back either.
    c.kill(NodeId(3));
    c.start_node(NodeId(3));
    c.wait_ready(Duration::from_secs(30)).await;
    assert_eq!(voters_at(&client, 1, 3).await, None);
    // The group, on nodes 1, 2 and 4, serves throughout.
    assert_eq!(
        read_settled(&client, b"before-removal").await,
        Some(b"1".to_vec())
    );
    client
        .put(b"after-removal", b"2")
        .await
        .expect("a write after the removal");
}

/// A learner removed while its node was down (a replica add that stopped
/// at the learner, as when its leader dies there: the
/// `add-stops-at-learner` fault) never campaigns, so no leader hears
/// from it to answer that the group removed it. Once it has heard no
/// leader for a while it asks the members it knows; the leader says so,
/// the node checks it once more and drops the copy for good. Without the
/// asking it stayed until the operator ran the same removal again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_removed_while_its_node_was_down_asks_and_is_dropped() {
    let (config, tuning) = config_with_spare();
    let mut c = Cluster::create(config, tuning);
    for id in 1..=3 {
        c.set_env(NodeId(id), "PACT_FAULTS", "add-stops-at-learner");
    }
    c.start_all();
    c.wait_ready(Duration::from_secs(30)).await;
    let client = c.client();
    client
        .put(b"before-removal", b"1")
        .await
        .expect("a write to the cluster");
    let shard = RaftGroup::Shard(ShardId(1));
    let stopped = client.add_replica(shard, NodeId(4)).await;
    assert!(stopped.is_err(), "the add went through: {stopped:?}");
    let learner = client
        .replica_status(ShardId(1), NodeId(4))
        .await
        .unwrap_or_else(|e| panic!("node 4 hosts no replica of shard 1: {e}"));
    assert!(
        !learner.voters.contains(&4) && learner.last_log_index > 0,
        "node 4 should be a caught-up learner: {learner:?}"
    );
    c.kill(NodeId(4));
    let removed = client
        .remove_replica(shard, NodeId(4))
        .await
        .unwrap_or_else(|e| panic!("remove the learner on node 4: {e}\n{}", c.logs_tail()));
    assert!(
        removed.dropped.is_some(),
        "the drop reached a node that was down: {removed:?}"
    );
    // Back: its hosting records give it shard 1 again, as a learner that
    // hears no leader.
    c.start_node(NodeId(4));
    dropped_when_back(&c, &client, 4, Duration::from_secs(60)).await;
    // For good: a restart does not bring it back.
    c.kill(NodeId(4));
    c.start_node(NodeId(4));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(voters_at(&client, 1, 4).await, None);
    assert_eq!(
        read_settled(&client, b"before-removal").await,
        Some(b"1".to_vec())
    );
}

/// A snapshot transfer paced by `[raft] snapshot_kib_per_sec` lasts
/// seconds while transfers write hundreds of entries to the shard, many
/// times `snapshot_logs` (100) past the snapshot sent, with only
/// `keep_logs` (20) kept behind each new one. The leader builds no
/// snapshot while it streams one, so the log the new replica needs after
/// installing it is still there: one snapshot is enough (without the
/// hold, every transfer came too late for the log and was sent again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_snapshot_transfer_keeps_the_log_it_needs() {
    let (config, tuning) = config_with_spare();
    let rate_kib = pact_common::MIN_SNAPSHOT_KIB_PER_SEC;
    let tuning = pact_common::RaftTuning {
        snapshot_kib_per_sec: rate_kib,
        ..tuning
    };
    let (c, metrics) = cluster_with_spare_tuned(config, tuning).await;
    let client = c.client();
    // About 1.5 MiB of filler per shard: six seconds at the pace.
    let value = vec![9u8; 4096];
    for i in 0..1200 {
        client
            .put(format!("big-{i}").as_bytes(), &value)
            .await
            .expect("filler");
    }
    // Writers of single keys of shard 1 (one entry each, many a second).
    let stop = Arc::new(AtomicBool::new(false));
    let keys = keys_of_shard_one(&client, "w", 20_000);
    // Enough for hundreds of entries during the transfer, few enough
    // (at most about 250 a second, however fast the machine) that they
    // stay well under the hold's limit (MAX_DEFERRED x 100 entries).
    let writers: Vec<_> = (0..5)
        .map(|w| {
            let (client, stop) = (c.client(), stop.clone());
            let mine: Vec<String> = keys.iter().skip(w).step_by(5).cloned().collect();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for key in mine {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if client.put(key.as_bytes(), b"x").await.is_ok() {
                        acked.push(key);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                acked
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let applied_before = client
        .replica_status(ShardId(1), NodeId(1))
        .await
        .expect("status")
        .applied_index;
    let started = Instant::now();
    let (ok, v, err) = txn_replica(&c, &["move", "1", "3", "4"]);
    let took = started.elapsed();
    assert!(ok, "replica move failed: {err}\n{}", c.logs_tail());
    assert_eq!(v["voters"], serde_json::json!([1, 2, 4]), "{v}");
    let applied_after = client
        .replica_status(ShardId(1), NodeId(1))
        .await
        .expect("status")
        .applied_index;
    stop.store(true, Ordering::SeqCst);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.expect("writer"));
    }
    let received = counter(metrics, "pact_raft_snapshot_bytes_received_total", 1);
    let installed = counter(metrics, "pact_raft_snapshots_installed_total", 1);
    println!(
        "move took {took:?}; {received} snapshot bytes; {installed} installed; \
         {} entries applied meanwhile",
        applied_after - applied_before
    );
    // Paced: the last byte left no sooner than the rate allows.
    assert!(received > 1 << 20, "snapshot of {received} bytes");
    let floor = Duration::from_millis(received * 1000 / (rate_kib * 1024));
    assert!(took >= floor, "{received} bytes in {took:?}");
    // The shard moved on by far more than the log kept behind a snapshot
    // while the snapshot travelled, and one snapshot still sufficed.
    assert!(
        applied_after - applied_before > 300,
        "too few writes during the move to test anything: {}",
        applied_after - applied_before
    );
    assert_eq!(installed, 1, "node 4 installed {installed} snapshots");
    for key in &acked {
        assert_eq!(
            read_settled(&client, key.as_bytes()).await,
            Some(b"x".to_vec()),
            "{key}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_changes_that_would_lose_the_group_are_refused() {
    let (mut c, _) = cluster_with_spare().await;
    let client = c.client();
    // A node that is not a member.
    let (ok, v, _) = txn_replica(&c, &["add", "1", "9"]);
    assert!(!ok);
    assert_eq!(v["error"]["code"], "INVALID_INPUT", "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("node 9 is not a member of the cluster"), "{v}");
    // A shard that does not exist.
    let (ok, v, _) = txn_replica(&c, &["add", "9", "4"]);
    assert!(!ok);
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("no shard 9"), "{v}");
    // A node may not drop a replica its group still counts.
    {
        let addr = c.config.node(NodeId(1)).unwrap().addr.clone();
        let mut admin = pact_proto::admin_client::AdminClient::connect(format!("http://{addr}"))
            .await
            .expect("connect");
        let e = admin
            .drop_replica(pact_proto::DropReplicaRequest {
                group: 1,
                voters: vec![1, 2, 3],
                coordinator: false,
            })
            .await
            .expect_err("dropping a member");
        assert!(
            e.message().contains("remove it from the group first"),
            "{e:?}"
        );
    }
    // With node 3 down, removing node 2 from shard 1 would leave voters
    // {1, 3}, only one of which answers.
    c.kill(NodeId(3));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let e = client
        .remove_replica(RaftGroup::Shard(ShardId(1)), NodeId(2))
        .await
        .expect_err("removing a live voter while another is down");
    assert!(matches!(e, ClientError::InvalidInput(_)), "{e:?}");
    assert!(e.to_string().contains("not answering: [3]"), "{e}");
    // Replacing the dead node is allowed: the spare joins, then node 3
    // leaves; it is down, so its data stays until it is asked again.
    let voters = client
        .add_replica(RaftGroup::Shard(ShardId(1)), NodeId(4))
        .await
        .expect("add the spare while node 3 is down");
    assert_eq!(voters, vec![NodeId(1), NodeId(2), NodeId(3), NodeId(4)]);
    let r = client
        .remove_replica(RaftGroup::Shard(ShardId(1)), NodeId(3))
        .await
        .expect("remove the dead node");
    assert_eq!(r.voters, vec![NodeId(1), NodeId(2), NodeId(4)]);
    assert!(r.dropped.is_some(), "{r:?}");
    // Back up, node 3 drops its copy when the command runs again.
    c.start_node(NodeId(3));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = client
            .remove_replica(RaftGroup::Shard(ShardId(1)), NodeId(3))
            .await
            .expect("remove again");
        if r.dropped.is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "node 3 never dropped: {r:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(voters_at(&client, 1, 3).await, None);
    client
        .put(b"after", b"ok")
        .await
        .expect("shard still writes");
    // The last of a shard's config replicas stays: clients find the shard
    // through them. Shard 2 goes from {1, 2, 3} to {3, 4}; removing 3 too
    // would leave only the spare.
    let g2 = RaftGroup::Shard(ShardId(2));
    client.add_replica(g2, NodeId(4)).await.expect("add 4");
    for n in [1, 2] {
        client.remove_replica(g2, NodeId(n)).await.expect("remove");
    }
    let e = client
        .remove_replica(g2, NodeId(3))
        .await
        .expect_err("removing the last config replica");
    assert!(matches!(e, ClientError::InvalidInput(_)), "{e:?}");
    assert!(e.to_string().contains("cluster config lists"), "{e}");
    assert_eq!(
        client.group_voters(g2).await.expect("voters"),
        vec![NodeId(3), NodeId(4)]
    );
}

/// Crash point: the leader dies with its group's membership joint (the
/// `crash-mid-membership-change` fault aborts it right after the joint
/// configuration, before the final one; openraft leaves the group joint).
/// The same command run again finishes the change at the new leader, and
/// the group takes further changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_dying_mid_change_leaves_nothing_stuck() {
    let mut config = ClusterConfig::local_combined(3, 3, 3, 7001).expect("config");
    config.nodes.push(NodeConfig {
        id: NodeId(4),
        addr: "127.0.0.1:1".into(),
        peer_addr: "127.0.0.1:2".into(),
    });
    let mut c = Cluster::create(config, fast_tuning());
    for id in 1..=3 {
        c.set_env(NodeId(id), "PACT_FAULTS", "crash-mid-membership-change");
    }
    c.start_all();
    c.wait_ready(Duration::from_secs(30)).await;
    let client = c.client();
    client.put(b"before", b"1").await.expect("put");
    let leader = c
        .wait_leader(
            ShardId(1),
            &[NodeId(1), NodeId(2), NodeId(3)],
            Duration::from_secs(20),
        )
        .await;
    // The leader aborts mid-change: the call fails (or its outcome is
    // unknown); either way the command is run again.
    let first = txn_replica(&c, &["add", "1", "4"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.is_running(leader) {
        assert!(
            Instant::now() < deadline,
            "leader {leader} did not crash mid-change: {first:?}\n{}",
            c.logs_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(c.log_path(leader)).unwrap_or_default();
    assert!(
        log.contains("crash-mid-membership-change: aborting"),
        "{}",
        c.logs_tail()
    );
    // Disarm the fault everywhere (the survivors may not have received
    // the joint entry, and would then crash again on the retried add) and
    // bring the nodes back; then run the command again.
    for id in 1..=3 {
        c.set_env(NodeId(id), "PACT_FAULTS", "");
        if NodeId(id) != leader {
            c.kill(NodeId(id));
        }
    }
    c.start_all();
    let deadline = Instant::now() + Duration::from_secs(40);
    let voters = loop {
        match client
            .add_replica(RaftGroup::Shard(ShardId(1)), NodeId(4))
            .await
        {
            Ok(v) => break v,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "add never finished: {e}\n{}",
                    c.logs_tail()
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    };
    assert_eq!(
        voters,
        vec![NodeId(1), NodeId(2), NodeId(3), NodeId(4)],
        "the change did not finish"
    );
    let finished_by = (1..=4)
        .filter(|id| {
            std::fs::read_to_string(c.log_path(NodeId(*id)))
                .unwrap_or_default()
                .contains("finishing a membership change its leader left joint")
        })
        .collect::<Vec<_>>();
    // The leader that died left the group joint; the new leader finished
    // the change when asked again.
    assert!(
        !finished_by.is_empty(),
        "no node finished the joint configuration\n{}",
        c.logs_tail()
    );
    c.start_node(leader);
    // Not joint any more: another change goes through.
    let r = client
        .remove_replica(RaftGroup::Shard(ShardId(1)), leader)
        .await
        .expect("a later change");
    assert!(!r.voters.contains(&leader), "{r:?}");
    assert_eq!(read_settled(&client, b"before").await, Some(b"1".to_vec()));
    client.put(b"after", b"2").await.expect("put after");
}

/// With mutual TLS on both ports: a shard's replica moves to the spare
/// node (its peer port admits the group's traffic by the config's node
/// certificates), the leadership is handed to it, and transfers commit
/// through it with nothing acknowledged lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_moves_and_leads_over_mutual_tls() {
    let (config, tuning) = config_with_spare();
    let mut c = Cluster::create_tls(config, tuning);
    c.start_all();
    c.wait_ready(Duration::from_secs(30)).await;
    let client = c.client();
    let (stop, workers) = transfers_under_way(&c, 300, 2, 5).await;
    let (ok, v, err) = txn_replica(&c, &["move", "1", "3", "4"]);
    assert!(ok, "replica move failed: {err}\n{}", c.logs_tail());
    assert_eq!(v["voters"], serde_json::json!([1, 2, 4]), "{v}");
    // Node 4 is a voter only by the move, not by the config.
    let (leader, _) = client
        .transfer_leader(RaftGroup::Shard(ShardId(1)), NodeId(4))
        .await
        .expect("hand shard 1 to node 4");
    assert_eq!(leader, NodeId(4));
    tokio::time::sleep(Duration::from_secs(2)).await;
    stopped_and_checked(&client, stop, workers).await;
    assert_eq!(voters_at(&client, 1, 3).await, None);
}

/// Stop the transfers and check the bank: some acknowledged, none lost.
async fn stopped_and_checked(
    client: &Client,
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<Vec<bank::Transfer>>>,
) {
    stop.store(true, Ordering::SeqCst);
    let mut log = Vec::new();
    for w in workers {
        log.extend(w.await.expect("worker"));
    }
    let checked = bank::check(client, &log, ACCOUNTS, INITIAL).await;
    assert!(checked.acknowledged > 0, "{checked:?}");
}

/// Wait (up to 20 s) until the routing table of every node 1-4 gives
/// `want` as the replicas of `what` (read from it by `replicas`).
async fn every_routing_table_says(
    c: &Cluster,
    what: &str,
    want: &[u64],
    replicas: impl Fn(&pact_client::Found) -> Vec<u64>,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for id in [1u64, 2, 3, 4] {
        let addr = c.config.node(NodeId(id)).expect("node").addr.clone();
        loop {
            let found = pact_client::discover_table(std::slice::from_ref(&addr), None)
                .await
                .expect("routing table");
            let got = replicas(&found);
            if got == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {id}'s routing table: {what} on {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// SIGKILL node 4, start it again after `pause`, and wait until it is
/// back in `group` ([`back_on_four`]).
async fn killed_and_back(
    c: &mut Cluster,
    client: &Client,
    group: RaftGroup,
    pause: Duration,
    voters: &[u64],
) {
    c.kill(NodeId(4));
    tokio::time::sleep(pause).await;
    c.start_node(NodeId(4));
    back_on_four(c, client, group, voters).await;
}

/// Wait (up to 30 s) until node 4's replica of `group` knows a leader and
/// `voters`: it came back from its own records of what it hosts.
async fn back_on_four(c: &Cluster, client: &Client, group: RaftGroup, voters: &[u64]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = match group {
            RaftGroup::Shard(s) => client.replica_status(s, NodeId(4)).await,
            RaftGroup::Coordinator(g) => client.coordinator_group_status(g, NodeId(4)).await,
            RaftGroup::Meta => client.meta_status(NodeId(4)).await,
        };
        if s.as_ref()
            .is_ok_and(|s| s.leader.is_some() && s.voters == voters)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node 4's replica of {group} did not come back: {s:?}\n{}",
            c.logs_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Run `txn --json ARGS` with the cluster's config: exit status, JSON
/// answer (Null if none) and stderr.
fn txn_json(c: &Cluster, args: &[&str]) -> (bool, serde_json::Value, String) {
    let out = std::process::Command::new(pact_tests::binary("txn"))
        .arg("--config")
        .arg(&c.config_path)
        .arg("--json")
        .args(args)
        .output()
        .expect("run txn");
    (
        out.status.success(),
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Wait (up to 30 s) until node `id` answers at `addr`, its client port.
async fn serving(c: &mut Cluster, id: NodeId, addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while pact_client::discover(&[addr.to_string()], None)
        .await
        .is_err()
    {
        if let Some(st) = c.exited(id) {
            panic!(
                "node {id} exited ({st}): {}",
                std::fs::read_to_string(c.log_path(id)).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "node {id} does not answer at {addr}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Node `id`'s exit status once its process ends (within `within`).
async fn exit_of(c: &mut Cluster, id: NodeId, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(st) = c.exited(id) {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "node {id} still runs after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Start node `id` (a member now), move shard 1's replica from node 3 to
/// it with the CLI, and hand it the shard's leadership.
async fn start_and_lead_shard_one(c: &mut Cluster, id: NodeId) {
    c.start_node(id);
    let log = |c: &Cluster| std::fs::read_to_string(c.log_path(id)).unwrap_or_default();
    let (ok, v, err) = txn_replica(c, &["move", "1", "3", &id.0.to_string()]);
    assert!(
        ok,
        "replica move failed: {err} {v}\n{}\n--- node {id} ---\n{}",
        c.logs_tail(),
        log(c)
    );
    assert_eq!(v["voters"], serde_json::json!([1, 2, id.0]), "{v}");
    let (ok, _, err) = txn_json(
        c,
        &[
            "admin",
            "leader",
            "transfer",
            "shard",
            "1",
            &id.0.to_string(),
        ],
    );
    assert!(ok, "leader transfer to node {id}: {err}\n{}", log(c));
}

/// Node `id`, which the config does not list and the member table does
/// not have yet, is refused at start, saying what to do.
async fn refused_until_member(c: &mut Cluster, id: NodeId) {
    c.start_node(id);
    let st = exit_of(c, id, Duration::from_secs(40)).await;
    let log = std::fs::read_to_string(c.log_path(id)).unwrap_or_default();
    assert!(!st.success(), "node {id} ran without being a member");
    assert!(log.contains("nor a member of the cluster"), "{log}");
}

/// Grow a 3-node cluster by a node its config does not list: the node is
/// refused until it is a member (`txn admin member add`), then starts with
/// the same config file and its id, takes a replica of shard 1 and its
/// leadership while bank transfers run, is found by clients that never saw
/// it in a config (through leader hints and `--endpoints`), keeps its
/// replica across a crash (restarted with only `--endpoints`, no config
/// file), and is removed once its replica has moved away
/// (refused before, and for a node of the metadata group); a removed id
/// cannot start again. Nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_outside_the_config_joins_takes_a_replica_and_leaves() {
    let config = ClusterConfig::local_combined(3, 3, 3, 7001).expect("config");
    let tuning = pact_common::RaftTuning {
        snapshot_logs: 100,
        keep_logs: 20,
        ..fast_tuning()
    };
    let mut c = Cluster::create(config, tuning);
    c.start_all();
    c.wait_ready(Duration::from_secs(30)).await;
    let four = NodeId(4);
    let ports = pact_tests::free_ports(3);
    let (addr, peer) = (
        format!("127.0.0.1:{}", ports[0]),
        format!("127.0.0.1:{}", ports[1]),
    );
    c.set_args(
        four,
        &["--metrics-listen".into(), format!("127.0.0.1:{}", ports[2])],
    );
    let log4 = |c: &Cluster| std::fs::read_to_string(c.log_path(four)).unwrap_or_default();
    refused_until_member(&mut c, four).await;

    let (stop, workers) = transfers_under_way(&c, 300, 3, 17).await;
    let (ok, v, err) = txn_json(&c, &["admin", "member", "add", "4", &addr, &peer]);
    assert!(ok, "member add: {err}\n{}", c.logs_tail());
    let ids: Vec<u64> = v
        .as_array()
        .expect("table")
        .iter()
        .map(|m| m["node"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(ids, vec![1, 2, 3, 4], "{v}");
    // `txn status` judges the metadata group beside shards and
    // coordinator groups.
    let (ok, v, err) = txn_json(&c, &["status"]);
    assert!(ok, "status: {err}");
    let meta = v["groups"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["kind"] == "meta").cloned())
        .unwrap_or_default();
    assert!(
        meta["leader"].as_u64().is_some(),
        "no meta group leader: {v}"
    );
    // Idempotent; another address for the same id is refused.
    let (ok, _, err) = txn_json(&c, &["admin", "member", "add", "4", &addr, &peer]);
    assert!(ok, "adding again: {err}");
    let (ok, v, _) = txn_json(&c, &["admin", "member", "add", "4", "127.0.0.1:1", &peer]);
    let why = v["error"]["message"].as_str().unwrap_or_default();
    assert!(!ok && why.contains("member already"), "{v}");
    assert_eq!(v["error"]["code"], "INVALID_INPUT", "{v}");

    // Node 4 takes shard 1's replica from node 3, with the CLI, while
    // transfers run (at once: the CLI asks a node that is still starting
    // again); then its leadership.
    start_and_lead_shard_one(&mut c, four).await;

    // A client given only node 1's address finds node 4 (the leader of
    // shard 1 now) through the routing table node 1 sends.
    let node1 = c.config.node(NodeId(1)).expect("node 1").addr.clone();
    let endpoints = pact_client::Client::connect(&[node1], Default::default())
        .await
        .expect("discover");
    let key = (0..1000)
        .map(|i| format!("joined-{i}"))
        .find(|k| endpoints.shard_for_key(k.as_bytes()) == ShardId(1))
        .expect("a key of shard 1");
    endpoints
        .put(key.as_bytes(), b"v")
        .await
        .expect("put via node 4");
    assert_eq!(
        endpoints.get(key.as_bytes()).await.expect("get"),
        Some(b"v".to_vec())
    );
    // Node 4 answers for the cluster too.
    let out = std::process::Command::new(pact_tests::binary("txn"))
        .args(["--endpoints", &addr, "--json", "admin", "member", "list"])
        .output()
        .expect("run txn");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let listed: Vec<u64> = v
        .as_array()
        .map(|a| a.iter().filter_map(|m| m["node"].as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(
        listed,
        vec![1, 2, 3, 4],
        "member list via node 4: {v} {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Node 4 keeps its replica across a crash; it comes back with no
    // config file, only node 2's address (it takes the cluster's config).
    c.kill(four);
    let node2 = c.config.node(NodeId(2)).expect("node 2").addr.clone();
    c.set_endpoints(four, &[node2]);
    c.start_node(four);
    serving(&mut c, four, &addr).await;
    let client = c.client();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = client.replica_status(ShardId(1), four).await;
        if s.as_ref()
            .is_ok_and(|s| s.leader.is_some() && s.voters == vec![1, 2, 4])
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 4's replica of shard 1 did not come back: {s:?}\n{}",
            log4(&c)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Removing: refused while it holds a replica, and for a node of the
    // metadata group; done once the replica moved back.
    let (ok, v, _) = txn_json(&c, &["admin", "member", "remove", "4"]);
    let why = v["error"]["message"].as_str().unwrap_or_default();
    assert!(!ok && why.contains("still replicates shard(s) 1"), "{v}");
    // (Node 1 replicates the metadata group, which its leader checks
    // first.)
    match client.remove_member(1).await {
        Err(ClientError::InvalidInput(m)) => {
            assert!(m.contains("replicates the metadata group"), "{m}")
        }
        other => panic!("removing node 1: {other:?}"),
    }
    let (ok, v, err) = txn_replica(&c, &["move", "1", "4", "3"]);
    assert!(ok, "replica move back failed: {err} {v}\n{}", log4(&c));
    assert_eq!(v["voters"], serde_json::json!([1, 2, 3]), "{v}");
    let (ok, v, err) = txn_json(&c, &["admin", "member", "remove", "4"]);
    assert!(ok, "member remove: {err}");
    let four_row = v
        .as_array()
        .and_then(|a| a.iter().find(|m| m["node"] == 4).cloned())
        .expect("node 4 listed");
    assert_eq!(four_row["removed"], true, "{v}");

    stop.store(true, Ordering::SeqCst);
    let mut log = Vec::new();
    for w in workers {
        log.extend(w.await.expect("worker"));
    }
    // A removed id does not run again.
    c.kill(four);
    c.start_node(four);
    let st = exit_of(&mut c, four, Duration::from_secs(40)).await;
    assert!(!st.success(), "a removed node started");
    assert!(
        log4(&c).contains("was removed from the cluster"),
        "{}",
        log4(&c)
    );

    let checked = bank::check(&client, &log, ACCOUNTS, INITIAL).await;
    assert!(
        checked.acknowledged > 10,
        "too few transfers went through: {checked:?}"
    );
    for i in 0..300 {
        assert_eq!(
            read_settled(&client, format!("filler-{i}").as_bytes()).await,
            Some(vec![7u8; 100])
        );
    }
    println!("{checked:?} of {} tried", log.len());
}

/// With mutual TLS, a node the config does not list joins: once it is a
/// member (`txn admin member add`), it starts with the config file (its
/// certificate found by the `[tls]` section's `{id}` pattern), the other
/// nodes' peer ports admit it because the member table lists it, and it
/// takes a replica of shard 1 and its leadership while transfers run.
/// Before it is a member, its certificate alone gets it nowhere: it is
/// refused at start, saying why. Nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_outside_the_config_joins_a_tls_cluster_through_the_member_table() {
    let config = ClusterConfig::local_combined(3, 3, 3, 7001).expect("config");
    let tuning = pact_common::RaftTuning {
        snapshot_logs: 100,
        keep_logs: 20,
        ..fast_tuning()
    };
    let mut c = Cluster::create_tls_with_spares(config, tuning, 1);
    c.start_all();
    c.wait_ready(Duration::from_secs(30)).await;
    let (four, addr, peer) = c.new_node();
    assert_eq!(four, NodeId(4));
    let log4 = |c: &Cluster| std::fs::read_to_string(c.log_path(four)).unwrap_or_default();
    refused_until_member(&mut c, four).await;

    let client = c.client();
    let (stop, workers) = transfers_under_way(&c, 300, 2, 23).await;
    let (ok, _, err) = txn_json(&c, &["admin", "member", "add", "4", &addr, &peer]);
    assert!(ok, "member add: {err}\n{}", c.logs_tail());
    start_and_lead_shard_one(&mut c, four).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stopped_and_checked(&client, stop, workers).await;
    assert!(
        !log4(&c).contains("not a member of this cluster"),
        "a peer port refused node 4 after it joined:\n{}",
        log4(&c)
    );
}

/// A coordinator group's replica moves to the spare node while transfers
/// run (`txn admin replica move --coord`), takes the group's leadership,
/// is killed as its leader (the others take over and settle what it left
/// in doubt), comes back as a replica added at run time, and moves back;
/// node 3, then node 4, stop answering for the group once they no longer
/// host it. Nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_group_replica_moves_leads_survives_a_kill_and_moves_back() {
    let (mut c, metrics) = cluster_with_spare().await;
    let client = c.client();
    let (stop, workers) = transfers_under_way(&c, 100, 3, 31).await;
    let group = c.config.coordinators[0].group.to_string();
    let status = |client: &Client, node: u64| {
        let client = client.clone();
        async move { client.coordinator_status(NodeId(node)).await }
    };

    let (ok, v, err) = txn_replica(&c, &["move", &group, "3", "4", "--coord"]);
    assert!(
        ok,
        "coordinator replica move failed: {err} {v}\n{}",
        c.logs_tail()
    );
    assert_eq!(v["voters"], serde_json::json!([1, 2, 4]), "{v}");
    assert!(status(&client, 3).await.is_err(), "node 3 still answers");
    // Node 4's page has the replica's metrics at once, not only from its
    // next start.
    let page = metrics_page(metrics);
    assert!(
        page.contains(&format!("pact_coordinator_sessions{{group=\"{group}\"}}")),
        "node 4's metrics lack coordinator group {group}:\n{page}"
    );
    // Every node's routing table names the group's new replicas (the
    // metadata group records coordinator groups' voters too).
    every_routing_table_says(&c, &format!("coord {group}"), &[1, 2, 4], |found| {
        found
            .config
            .coordinators
            .iter()
            .find(|g| g.group.to_string() == group)
            .map(|g| g.replicas.iter().map(|n| n.0).collect())
            .unwrap_or_default()
    })
    .await;
    let (ok, _, err) = txn_json(&c, &["admin", "leader", "transfer", "coord", &group, "4"]);
    assert!(ok, "leader transfer to node 4: {err}\n{}", c.logs_tail());
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Killed as the leader: nodes 1 and 2 go on; back, it rejoins from
    // its own record of what it hosts.
    let coord = RaftGroup::Coordinator(c.config.coordinators[0].group);
    killed_and_back(&mut c, &client, coord, Duration::from_secs(3), &[1, 2, 4]).await;

    let (ok, v, err) = txn_replica(&c, &["move", &group, "4", "3", "--coord"]);
    assert!(
        ok,
        "coordinator replica move back failed: {err} {v}\n{}",
        c.logs_tail()
    );
    assert_eq!(v["voters"], serde_json::json!([1, 2, 3]), "{v}");
    assert_eq!(v["dropped"], true, "{v}");
    assert!(status(&client, 4).await.is_err(), "node 4 still answers");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stopped_and_checked(&client, stop, workers).await;
    // Refused: a shard id given as a coordinator group.
    let (ok, v, _) = txn_replica(&c, &["add", "1", "4", "--coord"]);
    assert!(!ok, "{v}");
}

/// A coordinator group whose id a shard also has (shard 1 and coordinator
/// group 1, as `local_with_coordinators` lays them out) cannot move: a
/// node's groups share one router and one record of what it hosts, keyed
/// by id. The request names the kind of group, so the node asked to host
/// "coordinator group 1" refuses, saying why, rather than taking it for
/// shard 1; and shard 1 is left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_group_sharing_a_shards_id_is_refused_and_the_shard_untouched() {
    let mut config = ClusterConfig::local_with_coordinators(3, 3, 3, 1, 7001).expect("config");
    assert!(config.coordinators[0].group == 1 && config.shard(ShardId(1)).is_some());
    let spare = NodeId(config.nodes.len() as u64 + 1);
    config.nodes.push(NodeConfig {
        id: spare,
        addr: "127.0.0.1:1".into(),
        peer_addr: "127.0.0.1:2".into(),
    });
    let mut c = Cluster::create(config, fast_tuning());
    c.use_one_binary();
    c.start_all();
    c.wait_ready(Duration::from_secs(30)).await;
    let client = c.client();
    let before = client
        .leader_voters(RaftGroup::Shard(ShardId(1)))
        .await
        .expect("shard 1's voters");
    // Node 1 hosts shard 1; the spare hosts nothing.
    for node in [NodeId(1), spare] {
        match client.add_replica(RaftGroup::Coordinator(1), node).await {
            Err(ClientError::InvalidInput(m)) => {
                assert!(m.contains("shares its id with shard 1"), "{m}")
            }
            other => panic!("coordinator group 1 on node {node}: {other:?}"),
        }
    }
    assert_eq!(
        client
            .leader_voters(RaftGroup::Shard(ShardId(1)))
            .await
            .expect("shard 1's voters"),
        before
    );
    client.put(b"still", b"here").await.expect("put");
}

/// A coordinator group whose replicas moved off all but one of the nodes
/// the config gives it stays reachable when that last one is down: a
/// client that routes by the config finds none of those nodes leading,
/// asks a node for the routing table (the metadata group records
/// coordinator groups' voters), and commits through the group's new
/// replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_group_is_found_after_its_config_replicas_left_or_died() {
    let mut c = cluster_of_five().await;
    let group = c.config.coordinators[0].group.to_string();
    for (from, to) in [("3", "4"), ("2", "5")] {
        let (ok, v, err) = txn_replica(&c, &["move", &group, from, to, "--coord"]);
        assert!(ok, "move {from} -> {to}: {err} {v}\n{}", c.logs_tail());
    }
    // The last config-listed voter stays.
    let (ok, v, _) = txn_replica(&c, &["remove", &group, "1", "--coord"]);
    assert!(!ok, "{v}");
    // Recorded (within a look of the metadata group's leader).
    let addr2 = c.config.node(NodeId(2)).expect("node 2").addr.clone();
    until_table_says(&addr2, |t| {
        t.coordinators[0].replicas == vec![NodeId(1), NodeId(4), NodeId(5)]
    })
    .await;
    c.kill(NodeId(1));
    // A client of the config: nodes 1 (down), 2 and 3 (no longer in the
    // group) cannot lead it.
    let client = c.client_with(pact_client::ClientOptions {
        retry_for: Duration::from_secs(5),
        ..Default::default()
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut t = match client.begin().await {
            Ok(t) => t,
            Err(e) => {
                assert!(Instant::now() < deadline, "begin: {e}\n{}", c.logs_tail());
                continue;
            }
        };
        t.put(b"after", b"moves").await.expect("put");
        match t.commit().await {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "commit: {e}"),
        }
    }
    assert_eq!(
        read_settled(&client, b"after").await,
        Some(b"moves".to_vec())
    );
    // The metadata group did not move with the coordinator group: a client
    // given only node 2's address still reaches it (on nodes 2 and 3).
    let out = std::process::Command::new(pact_tests::binary("txn"))
        .args(["--endpoints", &addr2, "--json", "admin", "member", "list"])
        .output()
        .expect("run txn");
    assert!(
        out.status.success(),
        "member list via --endpoints: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The metadata group's replicas move like any group's (`txn admin
/// replica move meta FROM TO`), and that is what lets a node of the
/// config be replaced for good: node 3 cannot be removed while it
/// replicates the metadata group; once that replica, its shards' and its
/// coordinator group's have moved to node 4, it can. Meanwhile the member
/// table changes through the moved group, every node's routing table
/// names the group's new replicas, and node 4's replica comes back from
/// its own records after a kill. Transfers run throughout; none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metadata_group_moves_so_a_config_node_can_be_replaced() {
    let (mut c, _) = cluster_with_spare().await;
    let client = c.client();
    let (stop, workers) = transfers_under_way(&c, 50, 3, 37).await;

    let (ok, v, _) = txn_json(&c, &["admin", "member", "remove", "3"]);
    let refusal = |v: &serde_json::Value| v["error"]["message"].as_str().unwrap_or("").to_string();
    assert!(
        !ok && refusal(&v).contains("replicates the metadata group"),
        "{v}"
    );

    // Off node 1 first, which clients of the config ask first.
    let (ok, v, err) = txn_replica(&c, &["move", "meta", "1", "4"]);
    assert!(
        ok,
        "metadata group move failed: {err} {v}\n{}",
        c.logs_tail()
    );
    assert_eq!(v["group"], "meta", "{v}");
    assert_eq!(v["voters"], serde_json::json!([2, 3, 4]), "{v}");
    assert_eq!(v["dropped"], true, "{v}");
    match client.meta_status(NodeId(1)).await {
        Err(ClientError::Unavailable(_)) => {}
        other => panic!("node 1 still answers for the metadata group: {other:?}"),
    }
    // `meta` is no coordinator group.
    let (ok, v, _) = txn_replica(&c, &["add", "meta", "3", "--coord"]);
    assert!(!ok && refusal(&v).contains("metadata group"), "{v}");

    // Every node's routing table says where the group is now.
    every_routing_table_says(&c, "meta", &[2, 3, 4], |found| {
        found.meta.iter().map(|n| n.0).collect()
    })
    .await;

    // `txn health` (a client of the config) judges the group where it is
    // now: node 4 answers for it, node 1 is no longer counted.
    let (_, v, err) = txn_json(&c, &["health"]);
    let meta = v["groups"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["kind"] == "meta").cloned())
        .unwrap_or_default();
    assert_eq!(
        (meta["voters"].as_u64(), meta["answered"].as_u64()),
        (Some(3), Some(3)),
        "{v} {err}"
    );
    assert!(
        [2, 3, 4].contains(&meta["leader"].as_u64().unwrap_or(0)),
        "{meta}"
    );

    let (ok, v, err) = txn_json(&c, &["admin", "member", "list"]);
    assert!(ok, "{err}");
    let with_meta: Vec<u64> = v
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|m| {
                    m["groups"]
                        .as_array()
                        .is_some_and(|g| g.contains(&"meta".into()))
                })
                .filter_map(|m| m["node"].as_u64())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(with_meta, vec![2, 3, 4], "{v}");

    // The table changes through the moved group.
    let ports = pact_tests::free_ports(2);
    let (a5, p5) = (
        format!("127.0.0.1:{}", ports[0]),
        format!("127.0.0.1:{}", ports[1]),
    );
    let (ok, _, err) = txn_json(&c, &["admin", "member", "add", "5", &a5, &p5]);
    assert!(ok, "member add through the moved group: {err}");

    // Node 4 restarts into its replica, from its own records.
    killed_and_back(
        &mut c,
        &client,
        RaftGroup::Meta,
        Duration::from_secs(1),
        &[2, 3, 4],
    )
    .await;

    // Its leadership moves as any group's.
    let (ok, v, err) = txn_json(&c, &["admin", "leader", "transfer", "meta", "4"]);
    assert!(
        ok,
        "metadata group leader transfer: {err} {v}\n{}",
        c.logs_tail()
    );
    assert_eq!(
        (v["group"].as_str(), v["leader"].as_u64()),
        (Some("meta"), Some(4)),
        "{v}"
    );

    // Replace node 3: everything it replicates moves away (its metadata
    // replica removed, then one added back on node 1: each change is
    // asked of node 1 first, which runs no replica during the removal),
    // then it can be removed.
    let (ok, v, err) = txn_replica(&c, &["remove", "meta", "3"]);
    assert!(ok, "metadata group remove 3: {err} {v}\n{}", c.logs_tail());
    assert_eq!(v["voters"], serde_json::json!([2, 4]), "{v}");
    let (ok, v, err) = txn_replica(&c, &["add", "meta", "1"]);
    assert!(ok, "metadata group add 1: {err} {v}\n{}", c.logs_tail());
    assert_eq!(v["voters"], serde_json::json!([1, 2, 4]), "{v}");
    for shard in ["1", "2", "3"] {
        let (ok, v, err) = txn_replica(&c, &["move", shard, "3", "4"]);
        assert!(ok, "shard {shard} move: {err} {v}\n{}", c.logs_tail());
    }
    let group = c.config.coordinators[0].group.to_string();
    let (ok, v, err) = txn_replica(&c, &["move", &group, "3", "4", "--coord"]);
    assert!(ok, "coordinator group move: {err} {v}\n{}", c.logs_tail());
    let (ok, v, err) = txn_json(&c, &["admin", "member", "remove", "3"]);
    assert!(ok, "member remove 3: {err} {v}\n{}", c.logs_tail());
    // A metadata node of the config, removed, does not run again.
    c.kill(NodeId(3));
    c.start_node(NodeId(3));
    let st = exit_of(&mut c, NodeId(3), Duration::from_secs(40)).await;
    assert!(!st.success(), "removed node 3 started again");

    tokio::time::sleep(Duration::from_secs(1)).await;
    stopped_and_checked(&client, stop, workers).await;
}

/// A config voter whose disk is replaced after its group moved off the
/// config's other nodes rejoins through the voters the metadata table
/// lists. Shard 1 moves from nodes 2 and 3 to nodes 4 and 5 (its voters
/// 1, 4, 5); node 1 loses its data dir and restarts empty. Its config
/// peers of shard 1 (nodes 2 and 3) no longer host it: before, its
/// replica asked only them and waited for good, probing; now it asks
/// nodes 4 and 5 too, finds the group's data there, rejoins without a
/// vote, catches up (what was written while it was down included), and
/// votes again. Meanwhile a client of the config, which knows shard 1
/// only on nodes 1, 2 and 3, finds it on 4 and 5 from the routing table
/// (before, it gave up after its retry budget).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_config_voter_rejoins_through_the_voters_the_table_lists() {
    let mut c = cluster_of_five().await;
    let client = c.client();
    for i in 0..40 {
        let key = format!("before-{i:02}");
        client.put(key.as_bytes(), b"v").await.expect("put");
    }
    for (from, to) in [("2", "4"), ("3", "5")] {
        let (ok, v, err) = txn_replica(&c, &["move", "1", from, to]);
        assert!(ok, "move {from} -> {to}: {err} {v}\n{}", c.logs_tail());
    }
    // Recorded in the metadata table (within a look of its leader).
    let addr2 = c.config.node(NodeId(2)).expect("node 2").addr.clone();
    until_table_says(&addr2, |t| {
        t.shard(ShardId(1)).map(|s| s.replicas.clone())
            == Some(vec![NodeId(1), NodeId(4), NodeId(5)])
    })
    .await;
    c.kill(NodeId(1));
    std::fs::remove_dir_all(c.data_dir(NodeId(1))).expect("wipe node 1's data dir");
    // A client of the config asks nodes 1 (down), 2 and 3 (no longer
    // replicas) for shard 1, none of which leads it, then the routing
    // table, and finds it on nodes 4 and 5.
    let client = c.client();
    for i in 0..40 {
        let key = format!("away-{i:02}");
        client
            .put(key.as_bytes(), b"v")
            .await
            .expect("put while node 1 is away");
    }
    c.start_node(NodeId(1));
    until_rejoined(&c, NodeId(1), &[NodeId(4), NodeId(5)]).await;
    let log = std::fs::read_to_string(c.log_path(NodeId(1))).unwrap_or_default();
    assert!(
        log.contains("rejoining without a vote"),
        "node 1 did not rejoin as after a lost disk"
    );
    all_written(&client, 40).await;
}

/// A replica on an empty store asks the peers its config names and,
/// when they name a newer membership in their answers, that membership's
/// voters too: the rejoin floor must include every current voter's vote,
/// and the metadata table, the other source, may lag a change. Here the
/// table is out of the picture (`probe-ignores-table` on node 1): shard 1
/// gained node 4 as a voter, which leads it when node 1 comes back
/// wiped. Node 1 asks 2 and 3, learns of 4 from their answers, asks it,
/// lets it lead it back (it knows no membership yet), and rejoins. Before,
/// it asked only 2 and 3, and refused node 4's messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_voter_asks_the_voters_its_peers_name() {
    let mut c = cluster_of_five().await;
    let client = c.client();
    for i in 0..20 {
        let key = format!("before-{i:02}");
        client.put(key.as_bytes(), b"v").await.expect("put");
    }
    let (ok, v, err) = txn_replica(&c, &["add", "1", "4"]);
    assert!(ok, "add 4: {err} {v}\n{}", c.logs_tail());
    client
        .transfer_leader(RaftGroup::Shard(ShardId(1)), NodeId(4))
        .await
        .expect("node 4 leads shard 1");
    c.kill(NodeId(1));
    std::fs::remove_dir_all(c.data_dir(NodeId(1))).expect("wipe node 1's data dir");
    for i in 0..20 {
        let key = format!("away-{i:02}");
        client
            .put(key.as_bytes(), b"v")
            .await
            .expect("put while node 1 is away");
    }
    c.set_env(NodeId(1), "PACT_FAULTS", "probe-ignores-table");
    c.start_node(NodeId(1));
    until_rejoined(&c, NodeId(1), &[NodeId(2), NodeId(3), NodeId(4)]).await;
    let log = std::fs::read_to_string(c.log_path(NodeId(1))).unwrap_or_default();
    let rejoined: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("rejoining without a vote") && l.contains("group=1 "))
        .collect();
    assert!(
        rejoined.iter().any(|l| l.contains("asked=[2, 3, 4]")),
        "node 1 did not ask node 4: {rejoined:?}"
    );
    all_written(&client, 20).await;
}

/// Wait (up to 20 s) for shard 1 to have a leader among `rest`, then (up
/// to 40 s) for `node`'s replica of it to have applied what that leader
/// had and to vote again.
async fn until_rejoined(c: &Cluster, node: NodeId, rest: &[NodeId]) {
    let leader = c
        .wait_leader(ShardId(1), rest, Duration::from_secs(20))
        .await;
    let target = c
        .status(ShardId(1), leader)
        .await
        .expect("leader status")
        .applied_index;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let s = c.status(ShardId(1), node).await;
        if let Some(s) = &s {
            if s.applied_index >= target && s.gate == "open" {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "node {node}'s replica of shard 1 did not rejoin: {s:?}\n{}",
            group_one_lines(c)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Keys `before-NN` and `away-NN`, NN below `n`, all read back as "v".
async fn all_written(client: &Client, n: usize) {
    for i in 0..n {
        for what in ["before", "away"] {
            let key = format!("{what}-{i:02}");
            assert_eq!(
                read_settled(client, key.as_bytes()).await,
                Some(b"v".to_vec()),
                "{key}"
            );
        }
    }
}

/// Every node's log lines about group 1, for a failure's message.
fn group_one_lines(c: &Cluster) -> String {
    c.log_lines(|l| l.contains("group=1 ") || l.ends_with("group=1") || l.contains("shard=1 "))
}

/// Three `pact` nodes holding three shards and a coordinator group (the
/// config's), and nodes 4 and 5, which the config names but gives
/// nothing.
async fn cluster_of_five() -> Cluster {
    let mut config = ClusterConfig::local_combined(3, 3, 3, 7001).expect("config");
    for id in [4, 5] {
        config.nodes.push(NodeConfig {
            id: NodeId(id),
            addr: "127.0.0.1:1".into(),
            peer_addr: "127.0.0.1:2".into(),
        });
    }
    let mut c = Cluster::create(config, fast_tuning());
    c.start_all();
    c.wait_ready(Duration::from_secs(30)).await;
    c
}

/// Wait (up to 20 s) until the routing table the node at `addr` sends
/// satisfies `says`.
async fn until_table_says(addr: &str, says: impl Fn(&ClusterConfig) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = pact_client::discover_table(&[addr.to_string()], None)
            .await
            .expect("routing table");
        if says(&found.config) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{:?}\n{:?}",
            found.config.shards,
            found.config.coordinators
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A replica added at run time whose first snapshot install is cut short
/// by a crash, and whose install file is then lost (removed outside
/// Pact): at the restart its group is wiped whole, and, though it was
/// added at run time, it does not start as a fresh replica free to vote
/// at once (it may have voted in the group since it joined): it rejoins
/// behind the gate, is sent the snapshot again and holds every
/// acknowledged write of the shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_replica_whose_install_file_is_lost_rejoins_behind_the_gate() {
    let (mut c, metrics) = cluster_with_spare().await;
    let client = c.client();
    // Several snapshots' worth of shard 1's entries (snapshot_logs 100,
    // 20 kept behind): node 4 catches up from a snapshot.
    let keys = keys_of_shard_one(&client, "j", 250);
    for k in &keys {
        client.put(k.as_bytes(), b"v").await.expect("put");
    }
    c.kill(NodeId(4));
    c.set_env(NodeId(4), "PACT_FAULTS", "crash-mid-snapshot-install");
    c.start_node(NodeId(4));
    // The add waits for node 4 to catch up, which it never does before
    // it crashes; the command is left to itself and stopped below.
    let add = pact_tests::KillOnDrop(
        std::process::Command::new(pact_tests::binary("txn"))
            .arg("--config")
            .arg(&c.config_path)
            .args(["--json", "admin", "replica", "add", "1", "4"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run txn"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.is_running(NodeId(4)) {
        assert!(
            Instant::now() < deadline,
            "node 4 never crashed installing the snapshot\n{}",
            c.logs_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(add);
    let log = std::fs::read_to_string(c.log_path(NodeId(4))).unwrap_or_default();
    assert!(
        log.contains("crash-mid-snapshot-install: aborting"),
        "node 4 died of something else:\n{}",
        c.logs_tail()
    );
    let file = c.data_dir(NodeId(4)).join("snapshots").join("g1.install");
    std::fs::remove_file(&file).expect("the interrupted install's file");
    // Restarted answering plain reads from its own state (a deliberate
    // fault), so what it holds can be read directly.
    c.set_env(NodeId(4), "PACT_FAULTS", "stale-reads");
    let from = std::fs::metadata(c.log_path(NodeId(4))).map_or(0, |m| m.len() as usize);
    c.start_node(NodeId(4));
    until_rejoined(&c, NodeId(4), &[NodeId(1), NodeId(2), NodeId(3)]).await;
    let log = std::fs::read(c.log_path(NodeId(4))).unwrap_or_default();
    let log = String::from_utf8_lossy(log.get(from..).unwrap_or_default());
    for said in [
        "the snapshot file of an interrupted install cannot be read",
        "rejoining without a vote",
    ] {
        assert!(log.contains(said), "node 4 never said {said:?}\n{log}");
    }
    // It was sent the snapshot again (the counter is this start's).
    let installed = counter(metrics, "pact_raft_snapshots_installed_total", 1);
    assert!(
        installed >= 1,
        "node 4 installed no snapshot after the restart"
    );
    let local = c.client_for_replica(ShardId(1), NodeId(4), pact_client::ClientOptions::default());
    let served = || {
        metric(
            metrics,
            "pact_grpc_requests_total{code=\"OK\",method=\"/pact.v1.Kv/Get\"}",
        )
    };
    let before = served();
    for k in &keys {
        let got = local
            .get(k.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("local get {k}: {e}\n{}", c.logs_tail()));
        assert_eq!(got.as_deref(), Some(&b"v"[..]), "key {k} on node 4");
    }
    // Node 4 answered them (from its own state), not the leader.
    assert_eq!(
        served() - before,
        keys.len() as u64,
        "reads node 4 answered"
    );
}
