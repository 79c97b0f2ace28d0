//! Leadership as an operator moves it (`txn admin leader transfer`,
//! `pact.v1.Admin`), as the nodes spread it by themselves (`[raft]
//! balance_leaders_ms`) and as they gather it on preferred nodes (`[raft]
//! prefer_leaders`), with real processes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pact_client::{ClientError, RaftGroup};
use pact_common::{ClusterConfig, NodeId, ShardId};
use pact_tests::{fast_tuning, Cluster};

/// Who leads each group, as its replicas report it (groups without an
/// answering leader are left out).
async fn leaders(c: &Cluster) -> BTreeMap<RaftGroup, NodeId> {
    let client = c.client();
    let mut out = BTreeMap::new();
    for s in &c.config.shards {
        for id in &s.replicas {
            if let Ok(st) = client.replica_status(s.id, *id).await {
                if st.role == "leader" {
                    out.insert(RaftGroup::Shard(s.id), *id);
                }
            }
        }
    }
    for g in &c.config.coordinators {
        for id in &g.replicas {
            if let Ok(st) = client.coordinator_status(*id).await {
                if st.role == "leader" {
                    out.insert(RaftGroup::Coordinator(g.group), *id);
                }
            }
        }
    }
    out
}

/// Every replica's view of its group, for failure messages.
async fn views(c: &Cluster) -> String {
    let client = c.client();
    let mut out = String::new();
    for s in &c.config.shards {
        for id in &s.replicas {
            let v = client.replica_status(s.id, *id).await;
            out.push_str(&format!("shard {} node {id}: {v:?}\n", s.id));
        }
    }
    for g in &c.config.coordinators {
        for id in &g.replicas {
            let v = client.coordinator_status(*id).await;
            out.push_str(&format!("coordinator {} node {id}: {v:?}\n", g.group));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_where_the_operator_says() {
    // One process per node, each with every group (as the playground).
    let config = ClusterConfig::local_combined(3, 3, 3, 7001).expect("config");
    let mut c = Cluster::create(config, fast_tuning());
    c.start_all();
    c.wait_ready(Duration::from_secs(30)).await;
    let client = c.client();

    // Move shard 1's leadership to each other replica in turn.
    let shard = RaftGroup::Shard(ShardId(1));
    for _ in 0..2 {
        let now = leaders(&c).await[&shard];
        let to = *client
            .shard_replicas(ShardId(1))
            .iter()
            .find(|n| **n != now)
            .expect("another replica");
        let (leader, _term) = client.transfer_leader(shard, to).await.expect("transfer");
        assert_eq!(leader, to);
        assert_eq!(leaders(&c).await.get(&shard), Some(&to));
        // The shard serves at its new leader.
        client
            .put(b"moved", to.0.to_string().as_bytes())
            .await
            .expect("put");
    }
    // A transaction across shards after the coordinator group's leader moved.
    let coord = RaftGroup::Coordinator(c.config.coordinators[0].group);
    let now = leaders(&c).await[&coord];
    let to = *c.config.coordinators[0]
        .replicas
        .iter()
        .find(|n| **n != now)
        .expect("another replica");
    assert_eq!(
        client.transfer_leader(coord, to).await.expect("transfer").0,
        to
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut t = client.begin().await.expect("begin");
        t.put(b"a", b"1").await.expect("put");
        t.put(b"zz", b"2").await.expect("put");
        match t.commit().await {
            Ok(()) => break,
            // The new leader may still be recovering for a moment.
            Err(e) if Instant::now() < deadline => {
                eprintln!("retrying after {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no commit after the coordinator moved: {e}"),
        }
    }

    // Refusals: a node that is not a replica, a group not in the config.
    let e = client
        .transfer_leader(shard, NodeId(9))
        .await
        .expect_err("not a replica");
    assert!(matches!(e, ClientError::InvalidInput(_)), "{e:?}");
    let e = client
        .transfer_leader(RaftGroup::Shard(ShardId(77)), NodeId(1))
        .await
        .expect_err("no such shard");
    assert!(matches!(e, ClientError::InvalidInput(_)), "{e:?}");

    // The CLI does the same.
    let now = leaders(&c).await[&shard];
    let to = if now.0 == 1 { 2 } else { 1 };
    let out = std::process::Command::new(pact_tests::binary("txn"))
        .arg("--config")
        .arg(c.dir.path().join("cluster.toml"))
        .args(["--json", "admin", "leader", "transfer", "shard", "1"])
        .arg(to.to_string())
        .output()
        .expect("run txn");
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["leader"], to, "{v}");
    assert_eq!(v["group"], "shard 1", "{v}");
}

/// Leaders left on two nodes while the third was down spread back over
/// all three once it returns, with no operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_spread_over_the_nodes_by_themselves() {
    let config = ClusterConfig::local_combined(3, 3, 3, 7001).expect("config");
    let tuning = pact_common::RaftTuning {
        balance_leaders_ms: 1_000,
        ..fast_tuning()
    };
    let mut c = Cluster::create(config, tuning);
    c.start_all();
    c.wait_ready(Duration::from_secs(30)).await;
    c.kill(NodeId(3));
    // Every group elects among nodes 1 and 2.
    let off_3 = |l: &BTreeMap<RaftGroup, NodeId>| l.values().all(|n| n.0 != 3);
    leaders_until(
        &c,
        Duration::from_secs(30),
        "no leaders on nodes 1 and 2",
        off_3,
    )
    .await;
    c.restart(NodeId(3));
    // 4 groups over 3 nodes: nobody leads two more than another.
    let spread = |l: &BTreeMap<RaftGroup, NodeId>| {
        let mut count: BTreeMap<u64, usize> = (1..=3).map(|n| (n, 0)).collect();
        for n in l.values() {
            *count.entry(n.0).or_insert(0) += 1;
        }
        let min = count.values().min().copied().unwrap_or(0);
        let max = count.values().max().copied().unwrap_or(0);
        max - min <= 1
    };
    leaders_until(
        &c,
        Duration::from_secs(40),
        "leaders did not spread",
        spread,
    )
    .await;
    // And the cluster serves.
    c.client().put(b"after", b"balance").await.expect("put");
}

/// Waits until `want` holds of the leaders of all 4 groups, or fails
/// naming `what`.
async fn leaders_until(
    c: &Cluster,
    within: Duration,
    what: &str,
    want: impl Fn(&BTreeMap<RaftGroup, NodeId>) -> bool,
) {
    let deadline = Instant::now() + within;
    loop {
        let l = leaders(c).await;
        if l.len() == 4 && want(&l) {
            return;
        }
        if Instant::now() >= deadline {
            panic!("{what}: {l:?}\n{}\n{}", views(c).await, c.logs_tail());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_gather_up_the_preference_list() {
    let config = ClusterConfig::local_combined(3, 3, 3, 7001).expect("config");
    let tuning = pact_common::RaftTuning {
        balance_leaders_ms: 1_000,
        prefer_leaders: vec![NodeId(1), NodeId(2)],
        ..fast_tuning()
    };
    let mut c = Cluster::create(config, tuning);
    c.start_all();
    c.wait_ready(Duration::from_secs(30)).await;
    let on = |n: u64| move |l: &BTreeMap<RaftGroup, NodeId>| l.values().all(|x| x.0 == n);
    let secs = Duration::from_secs;
    leaders_until(&c, secs(30), "not gathered on node 1", on(1)).await;
    // Node 1 gone: the groups elect among 2 and 3, and whatever node 3
    // won goes to node 2, the next on the list.
    c.kill(NodeId(1));
    leaders_until(&c, secs(40), "not gathered on node 2", on(2)).await;
    // Back, and caught up: everything returns to node 1.
    c.restart(NodeId(1));
    leaders_until(&c, secs(40), "not back on node 1", on(1)).await;
    c.client().put(b"after", b"gather").await.expect("put");
}
