//! One process per node: 3 `pact` processes, each hosting a replica of
//! every shard and of the coordinator group on one store, one Raft router
//! and one pair of ports. Plain writes, cross-shard transactions and the
//! metrics of both roles; a node SIGKILLed (the coordinator leader, so
//! every kind of group loses a replica at once) while transfers go on; its
//! restart catches up every group, and the cluster then commits with it in
//! the quorum. The same over mutual TLS. The split binaries refuse a node
//! they cannot serve.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use pact_client::Client;
use pact_common::{ClusterConfig, Guard, NodeId, Op};
use pact_tests::bank::{account, parse};
use pact_tests::{binary, fast_tuning, free_ports, Cluster};

const ACCOUNTS: usize = 6;
const INITIAL: i64 = 100;

/// Transfers recorded as (marker key, from, to, amount, acknowledged).
type Log = Vec<(Vec<u8>, usize, usize, i64, bool)>;

/// `n` transfers between the accounts, one after another, each leaving a
/// marker key; an error (after the client's retries) is logged as not
/// acknowledged: the marker tells later whether it happened.
async fn transfers(client: &Client, tag: &str, n: usize, log: &mut Log) -> usize {
    let mut ok = 0;
    for i in 0..n {
        let from = i % ACCOUNTS;
        let to = (i * 5 + 1) % ACCOUNTS;
        let to = if to == from { (to + 1) % ACCOUNTS } else { to };
        let amount = 1 + (i as i64 % 7);
        let marker = format!("xfer-{tag}-{i}").into_bytes();
        let r = client
            .transaction(|t| {
                let marker = marker.clone();
                Box::pin(async move {
                    let a = parse(t.get_for_update(&account(from)).await?)?;
                    let b = parse(t.get_for_update(&account(to)).await?)?;
                    t.put(&account(from), (a - amount).to_string().as_bytes())
                        .await?;
                    t.put(&account(to), (b + amount).to_string().as_bytes())
                        .await?;
                    t.put(&marker, b"done").await
                })
            })
            .await;
        if r.is_ok() {
            ok += 1;
        }
        log.push((marker, from, to, amount, r.is_ok()));
    }
    ok
}

/// Balances read back agree with the transfers whose markers exist, every
/// acknowledged transfer is there, and the total is unchanged.
async fn check_bank(client: &Client, log: &Log) {
    let mut expect = vec![INITIAL; ACCOUNTS];
    for (marker, from, to, amount, acked) in log {
        let present = client.get(marker).await.expect("read marker").is_some();
        assert!(
            present || !acked,
            "acknowledged transfer {} lost",
            String::from_utf8_lossy(marker)
        );
        if present {
            expect[*from] -= amount;
            expect[*to] += amount;
        }
    }
    let mut got = Vec::new();
    for i in 0..ACCOUNTS {
        got.push(parse(client.get(&account(i)).await.expect("read account")).unwrap());
    }
    assert_eq!(got, expect, "balances do not match the committed transfers");
    assert_eq!(got.iter().sum::<i64>(), INITIAL * ACCOUNTS as i64);
}

fn scrape(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics port");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

/// The value of one sample line, 0 if absent.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// Wait until `node` has applied, in every shard and in the coordinator
/// group, at least what the group's leader had applied when called.
async fn wait_caught_up(c: &Cluster, node: NodeId, others: &[NodeId], within: Duration) {
    let client = c.client();
    let mut targets = BTreeMap::new();
    for s in &c.config.shards {
        let leader = c.wait_leader(s.id, others, within).await;
        let st = c.status(s.id, leader).await.expect("leader status");
        targets.insert(format!("shard {}", s.id), (Some(s.id), st.applied_index));
    }
    let group = c.config.coordinators[0].group;
    let leader = c.wait_coordinator(group, within).await;
    let st = client
        .coordinator_status(leader)
        .await
        .expect("coordinator status");
    targets.insert(format!("group {group}"), (None, st.applied_index));
    let deadline = Instant::now() + within;
    for (what, (shard, target)) in targets {
        loop {
            let applied = match shard {
                Some(s) => c.status(s, node).await.map(|s| s.applied_index),
                None => client
                    .coordinator_status(node)
                    .await
                    .ok()
                    .map(|s| s.applied_index),
            };
            if applied.is_some_and(|a| a >= target) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {node} did not catch up in {what} (applied {applied:?}, leader {target})\n{}",
                c.logs_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_pact_processes_commit_across_shards_through_a_sigkill() {
    let config = ClusterConfig::local_combined(3, 3, 3, 7001).unwrap();
    let mut c = Cluster::create(config, fast_tuning());
    let metrics = free_ports(3);
    for (i, id) in c.node_ids().into_iter().enumerate() {
        c.set_args(
            id,
            &[
                "--metrics-listen".into(),
                format!("127.0.0.1:{}", metrics[i]),
            ],
        );
    }
    c.start_all();
    c.wait_ready(Duration::from_secs(30)).await;
    let group = c.config.coordinators[0].group;
    let nodes = c.node_ids();
    assert_eq!(nodes.len(), 3);
    for id in &nodes {
        let log = std::fs::read_to_string(c.log_path(*id)).unwrap();
        assert!(log.contains("pact started"), "node {id}:\n{log}");
    }
    let client = c.client();

    // Plain writes on every shard, and a batch on one.
    for i in 0..30 {
        client
            .put(format!("plain-{i}").as_bytes(), format!("v{i}").as_bytes())
            .await
            .unwrap_or_else(|e| panic!("put plain-{i}: {e}\n{}", c.logs_tail()));
    }
    let shards: std::collections::BTreeSet<_> = (0..30)
        .map(|i| client.shard_for_key(format!("plain-{i}").as_bytes()))
        .collect();
    assert_eq!(shards.len(), 3, "the keys should cover every shard");
    for i in 0..30 {
        assert_eq!(
            client
                .get(format!("plain-{i}").as_bytes())
                .await
                .expect("get"),
            Some(format!("v{i}").into_bytes())
        );
    }

    // Accounts on more than one shard, set up in one transaction.
    let spread: std::collections::BTreeSet<_> = (0..ACCOUNTS)
        .map(|i| client.shard_for_key(&account(i)))
        .collect();
    assert!(spread.len() > 1, "accounts all on one shard");
    let mut t = client.begin().await.expect("begin");
    for i in 0..ACCOUNTS {
        t.put(&account(i), INITIAL.to_string().as_bytes())
            .await
            .expect("put");
    }
    t.commit().await.expect("initial commit");
    assert_eq!(
        client.txn_status(t.id()).await.expect("status"),
        pact_client::TxnOutcome::Committed
    );
    assert_eq!(t.id().group, group);
    // One-shot with a guard that fails: the else branch reads.
    let r = client
        .execute(
            vec![Guard::Equals(account(0), b"0".to_vec())],
            vec![Op::Put(account(0), b"0".to_vec())],
            vec![Op::Get(account(0))],
        )
        .await
        .expect("execute");
    assert!(!r.succeeded);
    assert_eq!(r.results, vec![(account(0), Some(b"100".to_vec()))]);
    let mut log = Log::new();
    assert_eq!(transfers(&client, "a", 10, &mut log).await, 10);

    // One page per node with both roles' metrics and every group's gauges.
    let pages: Vec<String> = metrics.iter().map(|p| scrape(*p)).collect();
    for (i, p) in pages.iter().enumerate() {
        for g in 1..=group {
            assert!(
                p.contains(&format!("pact_raft_applied_index{{group=\"{g}\"}}")),
                "node {} lacks group {g}:\n{p}",
                i + 1
            );
        }
        assert!(p.contains("# TYPE pact_lock_wait_seconds histogram"), "{p}");
    }
    // The coordinator's metrics appear once it has counted something: on
    // a node that led the group, beside that node's participant metrics.
    assert!(
        pages.iter().any(|p| {
            p.contains("# TYPE pact_2pc_phase_seconds histogram")
                && p.contains("# TYPE pact_txn_outcomes_total counter")
        }),
        "no page has the coordinator's metrics:\n{}",
        pages.join("\n")
    );
    let sum = |name: &str| pages.iter().map(|p| metric(p, name)).sum::<f64>();
    assert!(sum("pact_txn_outcomes_total{outcome=\"committed\"}") >= 11.0);
    assert!(sum("pact_participant_commits_total{path=\"two_phase\"}") >= 1.0);

    // SIGKILL the coordinator leader: the recovery log and (most likely)
    // some shard leaders lose their leader together.
    let victim = c.wait_coordinator(group, Duration::from_secs(10)).await;
    let rest: Vec<NodeId> = nodes.iter().copied().filter(|n| *n != victim).collect();
    let killed = Instant::now();
    c.kill(victim);
    let ok = transfers(&client, "b", 20, &mut log).await;
    println!(
        "after SIGKILL of node {victim}: {ok}/20 transfers acknowledged in {:?}",
        killed.elapsed()
    );
    assert!(
        ok >= 18,
        "the cluster stopped committing:\n{}",
        c.logs_tail()
    );
    client
        .put(b"plain-after-kill", b"1")
        .await
        .expect("plain write after the kill");
    let new_coord = c.wait_coordinator(group, Duration::from_secs(10)).await;
    assert_ne!(new_coord, victim);

    // Back on its data: every group catches up, then it is needed for a
    // quorum (another node killed) and the cluster still commits.
    c.start_node(victim);
    wait_caught_up(&c, victim, &rest, Duration::from_secs(30)).await;
    let second = rest[0];
    c.kill(second);
    let ok = transfers(&client, "c", 10, &mut log).await;
    assert!(
        ok >= 8,
        "no commits with the restarted node in the quorum:\n{}",
        c.logs_tail()
    );
    assert_eq!(
        client.get(b"plain-after-kill").await.expect("get"),
        Some(b"1".to_vec())
    );
    check_bank(&client, &log).await;
    c.start_node(second);
    wait_caught_up(&c, second, &[victim, rest[1]], Duration::from_secs(30)).await;
}

/// With `[tls]`, the combined nodes talk to each other (Raft of every
/// group, 2PC between coordinator and shards, wounds back) over mutual TLS
/// with their node certificates, and clients with theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn combined_nodes_work_over_mutual_tls() {
    let config = ClusterConfig::local_combined(3, 3, 3, 7001).unwrap();
    let mut c = Cluster::create_tls(config, fast_tuning());
    c.start_all();
    c.wait_ready(Duration::from_secs(30)).await;
    let client = c.client();
    let mut t = client.begin().await.expect("begin over TLS");
    for i in 0..ACCOUNTS {
        t.put(&account(i), INITIAL.to_string().as_bytes())
            .await
            .expect("put");
    }
    t.commit().await.expect("cross-shard commit over TLS");
    let mut log = Log::new();
    assert_eq!(transfers(&client, "tls", 5, &mut log).await, 5);
    check_bank(&client, &log).await;
}

fn run(bin: &str, config: &std::path::Path, node: u64, data: &std::path::Path) -> (bool, String) {
    let o = Command::new(binary(bin))
        .arg("--config")
        .arg(config)
        .args(["--node-id", &node.to_string(), "--data-dir"])
        .arg(data)
        .output()
        .expect("run binary");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

/// `participant` and `coordinator` refuse a node that hosts both roles and
/// name `pact`; `pact` refuses a node not in the config; a config putting
/// a shard and a coordinator group of the same id on one node is refused.
/// None of them touches the data directory. (A node the config lists and
/// gives nothing is a spare that `pact` runs: `tests/tests/membership.rs`.)
#[test]
fn each_binary_refuses_nodes_it_cannot_serve() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ClusterConfig::local_combined(3, 3, 3, 7001).unwrap();
    let ports = free_ports(2);
    config.nodes.push(pact_common::NodeConfig {
        id: NodeId(4),
        addr: format!("127.0.0.1:{}", ports[0]),
        peer_addr: format!("127.0.0.1:{}", ports[1]),
    });
    config.validate().unwrap();
    let path = dir.path().join("cluster.toml");
    std::fs::write(&path, config.to_toml_string()).unwrap();
    let data = dir.path().join("data");

    for bin in ["participant", "coordinator"] {
        let (ok, err) = run(bin, &path, 1, &data);
        assert!(!ok && err.contains("run `pact` for it"), "{bin}: {err}");
    }
    let (ok, err) = run("pact", &path, 9, &data);
    assert!(!ok && err.contains("not in the cluster config"), "{err}");

    let mut clash = config.clone();
    clash.coordinators[0].group = 2;
    let clash_path = dir.path().join("clash.toml");
    std::fs::write(&clash_path, clash.to_toml_string()).unwrap();
    let (ok, err) = run("pact", &clash_path, 1, &data);
    assert!(
        !ok && err.contains("coordinator group 2 and shard 2 are both on node 1"),
        "{err}"
    );
    assert!(!data.exists(), "a refused node created its data directory");
}
