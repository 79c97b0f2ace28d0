//! A shard's descriptor (what it owns, recorded in its own replicated
//! state by its first leader) rules over any map. Here the map goes stale
//! the only way it can before shards split: the config's key ranges are
//! edited after the first start. The keys stay where they are; clients
//! and coordinators routing by the edited config are refused with
//! WRONG_SHARD, refresh their maps from the shards' descriptors and route
//! again, so reads, scans, writes and transactions all stay right.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pact_common::{ClusterConfig, PartitionScheme, ShardId, Span};
use pact_tests::bank::{self, account};
use pact_tests::{fast_tuning, Cluster};

const ACCOUNTS: usize = 8;
const INITIAL: i64 = 1000;

fn set_starts(config: &mut ClusterConfig, starts: [&str; 3]) {
    config.partitioning = PartitionScheme::Range;
    for (s, start) in config.shards.iter_mut().zip(starts) {
        s.start = Some(start.to_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_config_moves_no_keys_and_stale_maps_are_corrected() {
    // First start: shard 1 from "", shard 2 from acct-3, shard 3 from
    // acct-6 (the transfer markers, xfer-*, are shard 3's).
    let mut config = ClusterConfig::local_combined(3, 3, 3, 7001).expect("config");
    set_starts(&mut config, ["", "acct-3", "acct-6"]);
    let mut c = Cluster::create(config, fast_tuning());
    c.start_all();
    c.wait_ready(Duration::from_secs(30)).await;
    let first = c.client();
    bank::open_accounts(&first, ACCOUNTS, INITIAL).await;
    first.put(b"zz", b"end").await.expect("put");

    // The operator edits the ranges and restarts every node: by the new
    // config acct-3 and acct-4 are shard 1's, acct-5 to acct-7 shard 2's.
    for id in c.node_ids() {
        c.stop(id);
    }
    set_starts(&mut c.config, ["", "acct-5", "b"]);
    std::fs::write(&c.config_path, c.config.to_toml_string()).expect("write config");
    c.start_all();
    c.wait_ready(Duration::from_secs(30)).await;

    // A point read routed by the edited config goes to shard 1, is
    // refused, and lands at shard 2 after the map is refreshed.
    let stale = c.client();
    assert_eq!(stale.shard_for_key(&account(3)), ShardId(1));
    let v = stale
        .get(&account(3))
        .await
        .expect("read through a stale map");
    assert_eq!(v.as_deref(), Some(INITIAL.to_string().as_bytes()));
    assert_eq!(stale.shard_for_key(&account(3)), ShardId(2));
    let map = stale.shard_map();
    assert_eq!(
        map.descriptor(ShardId(2)).map(|d| (d.version, d.span)),
        Some((
            1,
            Span::Range {
                start: b"acct-3".to_vec(),
                end: Some(b"acct-6".to_vec())
            }
        ))
    );

    // A scan by the edited map would have asked shard 1 for acct-3 and
    // acct-4, which it does not have: it is refused and done again.
    let scanner = c.client();
    let accounts = scanner
        .scan(b"acct-", Some(b"acct-~"), 0)
        .await
        .expect("scan through a stale map");
    assert_eq!(accounts.len(), ACCOUNTS, "{accounts:?}");
    // A plain write routed by the edited map.
    let writer = c.client();
    writer.put(&account(4), b"1000").await.expect("write");
    assert_eq!(writer.shard_for_key(&account(4)), ShardId(2));

    // Transfers through the coordinators, whose maps come from the
    // edited config too, and through clients that have not refreshed.
    let stop = Arc::new(AtomicBool::new(false));
    let workers = bank::spawn_transfers(
        (0..3).map(|_| c.client()).collect(),
        ACCOUNTS,
        7,
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::SeqCst);
    let mut log = Vec::new();
    for w in workers {
        log.extend(w.await.expect("worker"));
    }
    let checked = bank::check(&c.client(), &log, ACCOUNTS, INITIAL).await;
    assert!(checked.acknowledged > 5, "{checked:?}");

    // The `txn` CLI, routed by the edited config.
    let out = std::process::Command::new(pact_tests::binary("txn"))
        .arg("--config")
        .arg(&c.config_path)
        .args(["get", "acct-3"])
        .output()
        .expect("run txn");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let balance = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(balance.parse::<i64>().is_ok(), "{balance:?}");

    // The leaders said why they ignore the config's ranges.
    let logs: String = c
        .node_ids()
        .into_iter()
        .map(|id| std::fs::read_to_string(c.log_path(id)).unwrap_or_default())
        .collect();
    assert!(
        logs.contains("gives this shard other keys than its descriptor"),
        "no warning in the logs"
    );
}

/// The hash ring's equivalent: `virtual_nodes` edited between two starts
/// gives the edited config another ring; every key is still found where
/// the shards' arcs say, and a full scan sees each key once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_ring_moves_no_keys() {
    let mut config = ClusterConfig::local_combined(3, 3, 3, 7001).expect("config");
    config.virtual_nodes = 64;
    let mut c = Cluster::create(config, fast_tuning());
    c.start_all();
    c.wait_ready(Duration::from_secs(30)).await;
    let first = c.client();
    let keys: Vec<Vec<u8>> = (0..60).map(|i| format!("ring-{i}").into_bytes()).collect();
    for k in &keys {
        first.put(k, k).await.expect("put");
    }
    for id in c.node_ids() {
        c.stop(id);
    }
    c.config.virtual_nodes = 5;
    std::fs::write(&c.config_path, c.config.to_toml_string()).expect("write config");
    c.start_all();
    c.wait_ready(Duration::from_secs(30)).await;

    let stale = c.client();
    let misrouted = keys
        .iter()
        .filter(|k| stale.shard_for_key(k) != first.shard_for_key(k))
        .count();
    assert!(misrouted > 0, "the edited ring routes every key as before");
    for k in &keys {
        assert_eq!(stale.get(k).await.expect("get").as_deref(), Some(&k[..]));
        assert_eq!(stale.shard_for_key(k), first.shard_for_key(k));
    }
    let writer = c.client();
    for k in keys.iter().take(10) {
        writer.put(k, b"again").await.expect("put");
    }
    let all = c
        .client()
        .scan(b"ring-", Some(b"ring-~"), 0)
        .await
        .expect("scan");
    assert_eq!(all.len(), keys.len(), "{all:?}");
    let again = all.iter().filter(|(_, v)| v == b"again").count();
    assert_eq!(again, 10);
}

/// On range shards a scan reads the shards in key order and stops once
/// its page is full: a short scan in a transaction asks, locks and makes
/// a participant of only the first shard, so a younger transaction takes
/// a key of the last shard at once. (Before, every shard the range met
/// was asked for a page and locked its part, though the page used none
/// of their keys: the younger one waited for the older one to end.)
/// Plain and transactional scans still page across the shards exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_scan_of_range_shards_asks_and_locks_only_the_shards_it_needs() {
    let mut config = ClusterConfig::local_combined(3, 3, 3, 7001).expect("config");
    set_starts(&mut config, ["", "k", "t"]);
    let mut c = Cluster::create(config, fast_tuning());
    c.start_all();
    c.wait_ready(Duration::from_secs(30)).await;
    let client = c.client();
    let keys = ["a1", "a2", "a3", "m1", "m2", "x1", "x2"];
    for k in keys {
        client.put(k.as_bytes(), b"v").await.expect("put");
    }
    let names = |pairs: Vec<(Vec<u8>, Vec<u8>)>| -> Vec<String> {
        pairs
            .into_iter()
            .map(|(k, _)| String::from_utf8_lossy(&k).into_owned())
            .collect()
    };

    let mut older = client.begin().await.expect("begin");
    let page = older.scan(b"", None, 2).await.expect("a short scan");
    assert_eq!(names(page), ["a1", "a2"]);
    let mut younger = client.begin().await.expect("begin");
    let got = tokio::time::timeout(Duration::from_secs(5), younger.get_for_update(b"x1"))
        .await
        .expect("the younger transaction waited for a lock the short scan should not hold")
        .expect("read x1");
    assert_eq!(got.as_deref(), Some(&b"v"[..]));
    younger.put(b"x1", b"new").await.expect("write x1");
    younger.commit().await.expect("commit the younger one");
    // The older one reads on, across all three shards, and sees it.
    let all = older.scan(b"", None, 0).await.expect("a full scan");
    assert_eq!(all.len(), keys.len(), "{all:?}");
    assert_eq!(
        all.iter()
            .find(|(k, _)| k == b"x1")
            .map(|(_, v)| v.as_slice()),
        Some(&b"new"[..])
    );
    older.commit().await.expect("commit the older one");

    // Pages that end inside a shard, at its end, and in the next one.
    assert_eq!(
        names(client.scan(b"", None, 4).await.expect("scan")),
        ["a1", "a2", "a3", "m1"]
    );
    assert_eq!(
        names(client.scan(b"a3", Some(b"x2"), 0).await.expect("scan")),
        ["a3", "m1", "m2", "x1"]
    );
    assert_eq!(
        names(client.scan(b"b", None, 2).await.expect("scan")),
        ["m1", "m2"]
    );
    let mut t = client.begin().await.expect("begin");
    assert_eq!(
        names(t.scan(b"a2", None, 3).await.expect("scan")),
        ["a2", "a3", "m1"]
    );
    t.commit().await.expect("commit");
}
