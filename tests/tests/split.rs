//! Shards split while bank transfers run (`txn admin shard split`,
//! `pact.v1.Kv.Split`), on real `pact` processes: the new shard serves
//! the moved keys, clients that never heard of it find it from the
//! descriptors, nothing acknowledged is lost, and the split survives the
//! new shard's leader being killed. Shards merge back the same way
//! (`txn admin shard merge`, `pact.v1.Kv.Merge`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pact_client::Client;
use pact_common::{ClusterConfig, PartitionScheme, ShardId, FIRST_SPLIT_ID};
use pact_tests::bank::{self, read_settled};
use pact_tests::{fast_tuning, Cluster};

const ACCOUNTS: usize = 8;
const INITIAL: i64 = 1000;

/// `txn --json admin shard ARGS`: exit status and JSON answer.
fn txn_shard(c: &Cluster, args: &[&str]) -> (bool, serde_json::Value) {
    txn_admin(c, "shard", args)
}

/// `txn --json admin WHAT ARGS`: exit status and JSON answer.
fn txn_admin(c: &Cluster, what: &str, args: &[&str]) -> (bool, serde_json::Value) {
    let out = std::process::Command::new(pact_tests::binary("txn"))
        .arg("--config")
        .arg(&c.config_path)
        .args(["--json", "admin", what])
        .args(args)
        .output()
        .expect("run txn");
    let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.success(), v)
}

/// The nodes' log lines about splits and new shards, for a failure's
/// message.
fn split_lines(c: &Cluster) -> String {
    c.log_lines(|l| l.contains("split") || l.contains("new shard") || l.contains("merge"))
}

async fn start(config: ClusterConfig) -> Cluster {
    start_with_faults(config, "").await
}

/// A cluster whose nodes run with `PACT_FAULTS=faults` (none if empty).
async fn start_with_faults(config: ClusterConfig, faults: &str) -> Cluster {
    start_with(config, fast_tuning(), faults).await
}

/// [`start_with_faults`] with Raft `tuning`.
async fn start_with(
    config: ClusterConfig,
    tuning: pact_common::RaftTuning,
    faults: &str,
) -> Cluster {
    let mut c = Cluster::create(config, tuning);
    if !faults.is_empty() {
        for id in c.node_ids() {
            c.set_env(id, "PACT_FAULTS", faults);
        }
    }
    c.start_all();
    c.wait_ready(Duration::from_secs(30)).await;
    c
}

/// Three range shards: shard 3 holds acct-6, acct-7 and every key from
/// there on (fillers, transfer markers, k-*).
fn range_config() -> ClusterConfig {
    let mut config = ClusterConfig::local_combined(3, 3, 3, 7001).expect("config");
    config.partitioning = PartitionScheme::Range;
    for (s, start) in config.shards.iter_mut().zip(["", "acct-3", "acct-6"]) {
        s.start = Some(start.to_string());
    }
    config
}

/// The bank's accounts, `filler` more keys, and 4 clients making
/// transfers until the returned flag is set.
async fn transfers_under_way(
    c: &Cluster,
    filler: usize,
) -> (
    Arc<AtomicBool>,
    Vec<tokio::task::JoinHandle<Vec<bank::Transfer>>>,
) {
    let client = c.client();
    bank::open_accounts(&client, ACCOUNTS, INITIAL).await;
    for i in 0..filler {
        client
            .put(
                format!("filler-{i:04}").as_bytes(),
                format!("f{i}").as_bytes(),
            )
            .await
            .expect("filler");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let workers = bank::spawn_transfers(
        (0..4).map(|_| c.client()).collect(),
        ACCOUNTS,
        7,
        stop.clone(),
    );
    (stop, workers)
}

async fn stop_and_check(
    client: &Client,
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<Vec<bank::Transfer>>>,
) -> bank::Checked {
    stop.store(true, Ordering::SeqCst);
    let mut log = Vec::new();
    for w in workers {
        log.extend(w.await.expect("worker"));
    }
    bank::check(client, &log, ACCOUNTS, INITIAL).await
}

/// Every filler key reads back, through point reads and one scan.
async fn fillers_intact(client: &Client, filler: usize) {
    for i in 0..filler {
        let v = read_settled(client, format!("filler-{i:04}").as_bytes()).await;
        assert_eq!(v, Some(format!("f{i}").into_bytes()), "filler-{i:04}");
    }
    let pairs = client
        .scan(b"filler-", Some(b"filler-\xff"), 10_000)
        .await
        .expect("scan fillers");
    assert_eq!(pairs.len(), filler, "the scan sees every filler key once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_shard_splits_under_transfers_and_its_new_shard_survives_a_kill() {
    // Shard 3 holds acct-6, acct-7, the fillers and every transfer marker
    // (xfer-*): the split at "g" moves the markers, written by every
    // transfer, to the new shard.
    let mut c = start(range_config()).await;
    let filler = 300;
    let (stop, workers) = transfers_under_way(&c, filler).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (ok, v) = txn_shard(&c, &["split", "3", "--at", "g"]);
    assert!(ok, "split refused: {v}\n{}", split_lines(&c));
    let child = v["new_shard"].as_u64().expect("new shard id");
    assert!(child >= FIRST_SPLIT_ID, "{v}");
    assert_eq!(v["version"], 2, "{v}");
    assert_eq!(v["new_keys"]["start"], "g", "{v}");
    // Asked again for the version it split, the same answer, and no
    // second split; at another key, it was not this split: refused.
    let (ok, again) = txn_shard(&c, &["split", "3", "--at", "g", "--version", "1"]);
    assert!(ok, "repeated split refused: {again}\n{}", split_lines(&c));
    assert_eq!(again["new_shard"], v["new_shard"], "{again}");
    assert_eq!(again["version"], 2, "{again}");
    let (ok, other) = txn_shard(&c, &["split", "3", "--at", "h", "--version", "1"]);
    assert!(
        !ok,
        "a split of a version left behind went through: {other}"
    );
    assert_eq!(other["error"]["code"], "WRONG_SHARD", "{other}");

    // Accounts under transfer split too (acct-0.. stays, acct-1.. moves).
    let (ok, v1) = txn_shard(&c, &["split", "1", "--at", "acct-1"]);
    assert!(ok, "second split refused: {v1}\n{}", split_lines(&c));
    // A bad split key is refused, and nothing moves.
    let (ok, bad) = txn_shard(&c, &["split", "2", "--at", "a"]);
    assert!(!ok, "split outside the shard's range accepted: {bad}");
    assert_eq!(bad["error"]["code"], "INVALID_INPUT", "{bad}");
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A client that routes by the config finds the new shards from the
    // descriptors: the transfer markers are read through it.
    let stale = c.client();
    let marker = read_settled(&stale, b"xfer-0").await;
    assert!(marker.is_some(), "the first transfer's marker is gone");
    assert_eq!(stale.shard_for_key(b"xfer-0"), ShardId(child));

    let (ok, list) = txn_shard(&c, &["list"]);
    assert!(ok, "{list}");
    let shards: Vec<u64> = list
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|s| s["shard"].as_u64())
        .collect();
    assert_eq!(shards.len(), 5, "{list}");
    assert!(shards.contains(&child), "{list}");

    // Kill the new shard's leader: another replica takes over, from the
    // log, and the markers stay readable.
    let leader = c
        .wait_leader(ShardId(child), &c.node_ids(), Duration::from_secs(10))
        .await;
    c.kill(leader);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_kill = c.client();
    assert!(read_settled(&after_kill, b"xfer-0").await.is_some());
    c.restart(leader);
    c.wait_ready(Duration::from_secs(30)).await;

    let checked = stop_and_check(&c.client(), stop, workers).await;
    assert!(checked.acknowledged > 0, "{checked:?}");
    fillers_intact(&c.client(), filler).await;
}

/// A split whose new shard serves, and whose parent has not trimmed yet
/// (the `split-pause-before-trim` fault holds the driver), when the new
/// shard's replica leaves a node and the parent's leadership moves to that
/// node: the new leader drives the split from its record, learns from the
/// new shard's leader that it serves, trims and records the split done
/// (before, it looked for the new shard's replica on its own node and
/// never finished: the parent stayed "splitting", refusing further splits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_finishes_after_its_new_shard_left_the_parents_leader() {
    let c = start_with_faults(range_config(), "split-pause-before-trim").await;
    let client = c.client();
    for i in 0..50 {
        let key = format!("k-{i:03}");
        client.put(key.as_bytes(), b"v").await.expect("put");
    }
    let all = c.node_ids();
    let leader = c
        .wait_leader(ShardId(3), &all, Duration::from_secs(10))
        .await;
    let (ok, v) = txn_shard(&c, &["split", "3", "--at", "g"]);
    assert!(ok, "split refused: {v}\n{}", split_lines(&c));
    let child = ShardId(v["new_shard"].as_u64().expect("new shard id"));
    let to = *all.iter().find(|n| **n != leader).expect("another node");
    let removed = client
        .remove_replica(pact_client::RaftGroup::Shard(child), to)
        .await;
    assert!(removed.is_ok(), "{removed:?}\n{}", split_lines(&c));
    let (now, _) = client
        .transfer_leader(pact_client::RaftGroup::Shard(ShardId(3)), to)
        .await
        .expect("leadership transfer");
    assert_eq!(now, to);
    let until = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        // A second split goes through once the first is done.
        let (ok, again) = txn_shard(&c, &["split", "3", "--at", "b", "--wait", "5"]);
        if ok {
            assert_eq!(again["version"], 3, "{again}");
            // Finished by the node the leadership moved to, which has no
            // replica of the new shard.
            let lines = split_lines(&c);
            let done = format!("node {to}: ");
            assert!(
                lines
                    .lines()
                    .any(|l| l.starts_with(&done) && l.contains("split done")),
                "{lines}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "shard 3 still splitting: {again}\n{}",
            split_lines(&c)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for i in 0..50 {
        let key = format!("k-{i:03}");
        let got = read_settled(&client, key.as_bytes()).await;
        assert_eq!(got, Some(b"v".to_vec()), "{key}");
    }
}

/// Hosting a shard with an id in the split range is for splits: a new
/// shard is created only as the next split of a shard the node hosts
/// names it, and a replica is added only of one the metadata table or a
/// split recorded on the node knows. A made-up id is
/// refused, created or not, and nothing is hosted (before, any such id
/// was hosted, and nodes asked together started a group under it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_split_creates_or_hosts_a_shard_in_the_split_range() {
    let c = start(range_config()).await;
    let client = c.client();
    // A real split creates its new shard through the same check.
    let (ok, v) = txn_shard(&c, &["split", "3", "--at", "g"]);
    assert!(ok, "split refused: {v}\n{}", split_lines(&c));
    let child = ShardId(v["new_shard"].as_u64().expect("new shard id"));
    let all = c.node_ids();
    let bogus = ShardId(FIRST_SPLIT_ID + 12_345);
    assert_ne!(bogus, child);
    // Created, node 1 among its first voters: refused for good. Added to
    // voters 2 and 3: refused as not known yet (a table lagging a split
    // just made would say the same).
    for (create, voters, code) in [
        (true, &all[..], pact_common::ErrorCode::InvalidInput),
        (false, &all[1..], pact_common::ErrorCode::Unavailable),
    ] {
        let e = client
            .host_new(pact_client::RaftGroup::Shard(bogus), all[0], voters, create)
            .await
            .expect_err("a made-up split-range shard was hosted");
        assert_eq!(e.code(), code, "{e}");
        assert!(e.to_string().contains("split"), "{e}");
    }
    // Hosted already: an idempotent yes (the check is for new replicas).
    let again = client
        .host_new(pact_client::RaftGroup::Shard(child), all[0], &all, true)
        .await;
    assert!(again.is_ok(), "{again:?}");
    for id in &all {
        assert!(
            c.status(bogus, *id).await.is_none(),
            "node {id} hosts the made-up shard"
        );
    }
}

/// Crash points: the node driving the split dies once it froze the part
/// that moves (after the new shard's first copy, before the drain), the
/// node that takes over dies once the split is drained (before the new
/// shard copied what was written since), and the next once it has
/// committed it (before the new shard serves). Each next leader of shard
/// 3 goes on from the recorded phase (freezing the part again under its
/// own lock table); the split finishes, and nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_whose_drivers_crash_is_finished_by_the_next_leaders() {
    let filler = 200;
    let (c, stop, workers, owners) =
        driver_crashes(&["split", "3", "--at", "g"], filler, |owners| {
            owners.len() == 4
        })
        .await;
    let child = *owners
        .iter()
        .find(|s| **s >= FIRST_SPLIT_ID)
        .expect("the new shard");
    let client = c.client();
    assert!(read_settled(&client, b"xfer-0").await.is_some());
    assert_eq!(client.shard_for_key(b"xfer-0"), ShardId(child));
    let checked = stop_and_check(&client, stop, workers).await;
    assert!(checked.acknowledged > 0, "{checked:?}");
    fillers_intact(&client, filler).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hash_shard_splits_its_ring_share_under_transfers() {
    let config = ClusterConfig::local_combined(3, 3, 3, 7001).expect("config");
    let c = start(config).await;
    let filler = 300;
    let (stop, workers) = transfers_under_way(&c, filler).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (ok, v) = txn_shard(&c, &["split", "2", "--at", "k"]);
    assert!(!ok, "a hash shard split at a key: {v}");
    let (ok, v) = txn_shard(&c, &["split", "2"]);
    assert!(ok, "split refused: {v}\n{}", split_lines(&c));
    let child = ShardId(v["new_shard"].as_u64().expect("new shard id"));
    let share = v["new_keys"]["ring_share"].as_f64().expect("share");
    assert!(share > 0.1 && share < 0.25, "{v}");

    let client = c.client();
    let map = {
        // Route once through the config's map so the client refreshes.
        let _ = read_settled(&client, b"filler-0001").await;
        client
            .refresh_map(&client.shard_map())
            .await
            .expect("refresh");
        client.shard_map()
    };
    assert!(map.shards().contains(&child), "{:?}", map.shards());
    let moved = (0..filler)
        .filter(|i| map.shard_for_key(format!("filler-{i:04}").as_bytes()) == child)
        .count();
    assert!(moved > 0, "no filler key moved to the new shard");

    let checked = stop_and_check(&client, stop, workers).await;
    assert!(checked.acknowledged > 0, "{checked:?}");
    fillers_intact(&client, filler).await;
}

/// The new shard's second copy: keys of the moving part overwritten and
/// deleted while the split runs end up as the last acknowledged write
/// left them, read through the new shard. The driver pauses 2 s between
/// the first copy and the freeze (`split-pause-before-freeze`), so keys
/// the first copy already took are written and deleted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_written_and_deleted_during_a_split_reach_the_new_shard() {
    const KEYS: usize = 20_000;
    let key = |i: usize| format!("k-{i:05}").into_bytes();
    // Shard 3 holds every k-* key; the split moves the upper half.
    let c = start_with_faults(range_config(), "split-pause-before-freeze").await;
    let client = c.client();
    let first = vec![b'v'; 200];
    let all: Vec<usize> = (0..KEYS).collect();
    for chunk in all.chunks(500) {
        let batch = chunk
            .iter()
            .map(|i| (key(*i), Some(first.clone())))
            .collect();
        client.write(batch).await.expect("load");
    }

    // One writer, so its last acknowledged write of a key is the key's
    // value; a key whose last write failed (outcome unknown) is skipped.
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, done) = (c.client(), done.clone());
        tokio::spawn(async move {
            let mut last: std::collections::BTreeMap<usize, Option<Vec<u8>>> = Default::default();
            let mut unsure = std::collections::BTreeSet::new();
            let mut seed: u64 = 42;
            let mut n = 0u64;
            while !done.load(Ordering::SeqCst) {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let i = KEYS / 2 + (seed >> 33) as usize % (KEYS / 2);
                n += 1;
                let wrote = if n.is_multiple_of(3) {
                    client.delete(&key(i)).await.map(|_| None)
                } else {
                    let v = format!("w{n}").into_bytes();
                    client.put(&key(i), &v).await.map(|_| Some(v))
                };
                match wrote {
                    Ok(v) => {
                        last.insert(i, v);
                        unsure.remove(&i);
                    }
                    Err(_) => {
                        unsure.insert(i);
                    }
                }
            }
            (last, unsure, n)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let at = String::from_utf8(key(KEYS / 2)).expect("utf-8");
    let (ok, v) = txn_shard(&c, &["split", "3", "--at", &at]);
    assert!(ok, "split refused: {v}\n{}", split_lines(&c));
    let child = ShardId(v["new_shard"].as_u64().expect("new shard id"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    done.store(true, Ordering::SeqCst);
    let (last, unsure, n) = writer.await.expect("writer");
    assert!(n > 20, "only {n} writes while the split ran");

    // The second copy carried keys: the path under test ran.
    let copied_again: usize = c
        .node_ids()
        .into_iter()
        .flat_map(|id| {
            let text = std::fs::read_to_string(c.log_path(id)).unwrap_or_default();
            text.lines()
                .filter(|l| l.contains("keys written during the split"))
                .filter_map(|l| {
                    let at = l.find("keys=")? + 5;
                    let digits: String = l[at..].chars().take_while(char::is_ascii_digit).collect();
                    digits.parse::<usize>().ok()
                })
                .collect::<Vec<_>>()
        })
        .max()
        .unwrap_or(0);
    // Most of the writes fell in the pause, after the first copy.
    assert!(
        copied_again > 20,
        "{copied_again} keys copied again\n{}",
        split_lines(&c)
    );

    let reader = c.client();
    // A client routing by the config learns the new shard on the way.
    let _ = read_settled(&reader, &key(KEYS - 1)).await;
    assert_eq!(reader.shard_for_key(&key(KEYS - 1)), child);
    let mut got = std::collections::BTreeMap::new();
    let mut from = b"k-".to_vec();
    loop {
        let page = reader
            .scan(&from, Some(b"k-\xff"), 10_000)
            .await
            .expect("scan");
        let Some((last_key, _)) = page.last() else {
            break;
        };
        from = last_key.clone();
        from.push(0);
        got.extend(page);
    }
    let mut checked = 0;
    for i in 0..KEYS {
        if unsure.contains(&i) {
            continue;
        }
        let want = last.get(&i).cloned().unwrap_or_else(|| Some(first.clone()));
        assert_eq!(got.get(&key(i)), want.as_ref(), "k-{i:05} (of {n} writes)");
        checked += 1;
    }
    assert!(checked > KEYS - 100, "{checked}");
}

/// `txn admin shard ARGS` (a split or merge) on a range cluster whose
/// nodes die at its three crash points, under transfers: every node that
/// dies is restarted until the shards that own keys, each with a leader,
/// are `done`, and three have died (once per crash point, or more if a
/// freeze was lifted, a drain over 10 s, and put back: that passes the
/// frozen point again). Returns the cluster, ready, the transfers, and
/// those shards.
async fn driver_crashes(
    args: &[&str],
    filler: usize,
    done: impl Fn(&[u64]) -> bool,
) -> (
    Cluster,
    Arc<AtomicBool>,
    Vec<tokio::task::JoinHandle<Vec<bank::Transfer>>>,
    Vec<u64>,
) {
    let mut c = start_with_faults(
        range_config(),
        "crash-split-frozen,crash-split-drained,crash-split-committed",
    )
    .await;
    let (stop, workers) = transfers_under_way(&c, filler).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Not the default wait: the command keeps asking while its time
    // lasts, and the dead drivers are started again only after it gave up.
    let args: Vec<&str> = args.iter().copied().chain(["--wait", "5"]).collect();
    let (ok, v) = txn_shard(&c, &args);
    assert!(!ok, "the driver should have died: {v}");
    let mut crashed = Vec::new();
    let until = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        for id in c.node_ids() {
            if c.exited(id).is_some() {
                crashed.push(id);
                c.restart(id);
            }
        }
        let owners = owning(&c);
        if let Some(o) = owners.as_ref().filter(|o| done(o) && crashed.len() >= 3) {
            let o = o.clone();
            c.wait_ready(Duration::from_secs(30)).await;
            return (c, stop, workers, o);
        }
        assert!(
            std::time::Instant::now() < until,
            "not done: crashed {crashed:?}, shards {owners:?}\n{}",
            split_lines(&c)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Wait (up to 20 s) until a node logged that a split or merge began
/// (`what` names it in the failure).
async fn until_begun(c: &Cluster, what: &str) {
    let begun = std::time::Instant::now();
    while !split_lines(c).contains("split begun") {
        assert!(
            begun.elapsed() < Duration::from_secs(20),
            "{what} did not begin\n{}",
            split_lines(c)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Merge `from` into `into` in a task of its own (40 s at most).
fn spawn_merge(
    c: &Cluster,
    from: u64,
    into: u64,
) -> tokio::task::JoinHandle<Result<pact_common::Descriptor, pact_client::ClientError>> {
    let client = c.client();
    tokio::spawn(async move {
        client
            .merge_shards(ShardId(from), ShardId(into), Duration::from_secs(40))
            .await
    })
}

/// Wait (up to 90 s) until at least `n` shards own keys.
async fn until_owning(c: &Cluster, n: usize) {
    let until = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let owners = owning(c);
        if owners.as_ref().is_some_and(|o| o.len() >= n) {
            return;
        }
        assert!(
            std::time::Instant::now() < until,
            "shards now {owners:?}\n{}",
            split_lines(c)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The shards `txn admin shard list` shows owning keys (not merged
/// away), if it answered.
fn owning(c: &Cluster) -> Option<Vec<u64>> {
    let (ok, list) = txn_shard(c, &["list"]);
    let rows = list.as_array().cloned().filter(|_| ok)?;
    Some(
        rows.iter()
            .filter(|r| r["keys"]["merged"] != true && r["leader"].is_u64())
            .filter_map(|s| s["shard"].as_u64())
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_shards_merge_under_transfers_and_a_split_is_undone() {
    let c = start(range_config()).await;
    let filler = 300;
    let (stop, workers) = transfers_under_way(&c, filler).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Shards 1 and 3 are not neighbours; a shard does not merge into
    // itself; nothing moves.
    let (ok, bad) = txn_shard(&c, &["merge", "1", "--into", "3"]);
    assert!(!ok, "a merge of shards that are not neighbours: {bad}");
    assert_eq!(bad["error"]["code"], "INVALID_INPUT", "{bad}");
    let (ok, bad) = txn_shard(&c, &["merge", "2", "--into", "2"]);
    assert_eq!(
        (ok, &bad["error"]["code"]),
        (false, &"INVALID_INPUT".into()),
        "{bad}"
    );

    // Accounts under transfer (acct-3..5) move into shard 1.
    let (ok, v) = txn_shard(&c, &["merge", "2", "--into", "1"]);
    assert!(ok, "merge refused: {v}\n{}", split_lines(&c));
    assert_eq!(v["version"], 2, "{v}");
    assert_eq!(v["keys"]["start"], "", "{v}");
    assert_eq!(v["keys"]["end"], "acct-6", "{v}");
    // Asked again (as a client does when a leader change cut off the
    // first answer): the same answer. Into another shard: it owns nothing.
    let (ok, again) = txn_shard(&c, &["merge", "2", "--into", "1"]);
    assert!(ok, "a merge asked again: {again}");
    assert_eq!(again["version"], 2, "{again}");
    assert_eq!(again["keys"]["end"], "acct-6", "{again}");
    let (ok, again) = txn_shard(&c, &["merge", "2", "--into", "3"]);
    assert!(!ok, "{again}");
    assert_eq!(again["error"]["code"], "INVALID_INPUT", "{again}");

    // A split undone: the transfer markers go to a new shard and back.
    let (ok, v) = txn_shard(&c, &["split", "3", "--at", "g"]);
    assert!(ok, "split refused: {v}\n{}", split_lines(&c));
    let child = v["new_shard"].as_u64().expect("new shard id");
    let (ok, v) = txn_shard(&c, &["merge", &child.to_string(), "--into", "3"]);
    assert!(ok, "merge refused: {v}\n{}", split_lines(&c));
    assert_eq!(v["version"], 3, "{v}");
    assert_eq!(v["keys"]["end"], serde_json::Value::Null, "{v}");
    assert_eq!(owning(&c), Some(vec![1, 3]));

    // A client routing by the config (shard 2 owns acct-4 there) is
    // corrected by the descriptors.
    let stale = c.client();
    assert!(read_settled(&stale, b"acct-4").await.is_some());
    assert_eq!(stale.shard_for_key(b"acct-4"), ShardId(1));
    assert!(read_settled(&stale, b"xfer-0").await.is_some());
    assert_eq!(stale.shard_for_key(b"xfer-0"), ShardId(3));

    let checked = stop_and_check(&c.client(), stop, workers).await;
    assert!(checked.acknowledged > 0, "{checked:?}");
    fillers_intact(&c.client(), filler).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_shards_merge_their_ring_shares_under_transfers() {
    let config = ClusterConfig::local_combined(3, 3, 3, 7001).expect("config");
    let c = start(config).await;
    let filler = 300;
    let (stop, workers) = transfers_under_way(&c, filler).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok, v) = txn_shard(&c, &["merge", "2", "--into", "3"]);
    assert!(ok, "merge refused: {v}\n{}", split_lines(&c));
    let share = v["keys"]["ring_share"].as_f64().expect("share");
    assert!(share > 0.45 && share < 0.85, "{v}");
    assert_eq!(owning(&c), Some(vec![1, 3]));
    let client = c.client();
    let checked = stop_and_check(&client, stop, workers).await;
    assert!(checked.acknowledged > 0, "{checked:?}");
    fillers_intact(&client, filler).await;
    assert!(!client.shard_map().shards().contains(&ShardId(2)));
}

/// The merge's driver (shard 2's leader) dies at each crash point it
/// shares with a split (frozen, drained, committed); the next leaders of
/// shard 2 go on from the record, shard 1's leader goes on absorbing, and
/// nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_whose_drivers_crash_is_finished_by_the_next_leaders() {
    let filler = 200;
    let (c, stop, workers, _) = driver_crashes(&["merge", "2", "--into", "1"], filler, |owners| {
        owners == [1, 3]
    })
    .await;
    let client = c.client();
    assert!(read_settled(&client, b"acct-4").await.is_some());
    assert_eq!(client.shard_for_key(b"acct-4"), ShardId(1));
    let checked = stop_and_check(&client, stop, workers).await;
    assert!(checked.acknowledged > 0, "{checked:?}");
    fillers_intact(&client, filler).await;
}

/// The merging shard's leadership moves while the merge waits between
/// its first copy and the freeze (`split-pause-before-freeze`), as the
/// leader balancer may move it: the next leader finishes the merge from
/// its record, and the client that asked learns that it went through (it
/// asks again, and a merge asked again answers as the first time), not
/// "owns nothing" nor an unknown outcome. Transfers run throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_whose_leader_moves_half_way_is_answered_as_done() {
    let c = start_with_faults(range_config(), "split-pause-before-freeze").await;
    let filler = 50;
    let (stop, workers) = transfers_under_way(&c, filler).await;
    let client = c.client();
    let all = c.node_ids();
    let leader = c
        .wait_leader(ShardId(2), &all, Duration::from_secs(10))
        .await;
    let merging = {
        let client = c.client();
        tokio::spawn(async move {
            client
                .merge_shards(ShardId(2), ShardId(1), Duration::from_secs(60))
                .await
        })
    };
    // Begun (recorded), and inside the 2 s pause before the freeze.
    until_begun(&c, "the merge").await;
    let to = *all.iter().find(|n| **n != leader).expect("another node");
    let (now, _) = client
        .transfer_leader(pact_client::RaftGroup::Shard(ShardId(2)), to)
        .await
        .expect("leadership transfer");
    assert_eq!(now, to);
    let d = merging.await.expect("merge task");
    let d = d.unwrap_or_else(|e| panic!("merge: {e}\n{}", split_lines(&c)));
    assert_eq!(d.shard, ShardId(1), "{d:?}");
    assert!(d.span.contains(b"acct-4"), "{d:?}");
    assert_eq!(owning(&c), Some(vec![1, 3]), "{}", split_lines(&c));
    let checked = stop_and_check(&client, stop, workers).await;
    assert!(checked.acknowledged > 0, "{checked:?}");
    fillers_intact(&client, filler).await;
}

/// Two merges in opposite directions between the same shards, each
/// recorded before its leader's replica of the other shard showed the
/// other (the `merge-lagging-target-view` fault makes that window
/// certain): neither could be accepted while the other's record stood,
/// and both waited for ever. The merge from the larger id gives way
/// (CONFLICT, nothing moved), and the other goes through. Transfers
/// run throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opposite_merges_recorded_at_once_end_with_one_merge() {
    let c = start_with_faults(range_config(), "merge-lagging-target-view").await;
    let filler = 50;
    let (stop, workers) = transfers_under_way(&c, filler).await;
    let client = c.client();
    let merge = |from: u64, into: u64| spawn_merge(&c, from, into);
    let two_into_three = merge(2, 3);
    until_begun(&c, "the first merge").await;
    let three_into_two = merge(3, 2);
    let lost = three_into_two.await.expect("merge task");
    match lost {
        Err(pact_client::ClientError::Conflict(m)) => {
            assert!(m.contains("goes first"), "{m}")
        }
        other => panic!(
            "the merge from the larger id: {other:?}\n{}",
            split_lines(&c)
        ),
    }
    let won = two_into_three.await.expect("merge task");
    let d = won.unwrap_or_else(|e| panic!("merge 2 into 3: {e}\n{}", split_lines(&c)));
    assert_eq!(d.shard, ShardId(3), "{d:?}");
    assert!(d.span.contains(b"acct-4"), "{d:?}");
    assert_eq!(owning(&c), Some(vec![1, 3]), "{}", split_lines(&c));
    let checked = stop_and_check(&client, stop, workers).await;
    assert!(checked.acknowledged > 0, "{checked:?}");
    fillers_intact(&client, filler).await;
}

/// Hash shards can merge with any other, so merges recorded at once can
/// form a ring (1 into 2, 2 into 3, 3 into 1), where no target can accept
/// and no version moves. The merge into a smaller id whose target merges
/// away (3 into 1) gives way (CONFLICT); 2 into 3 goes through, and 1 into
/// 2 then finds its target owning nothing. Transfers run throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ring_of_hash_shard_merges_recorded_at_once_ends() {
    let config = ClusterConfig::local_combined(3, 3, 3, 7001).expect("config");
    let c = start_with_faults(config, "merge-lagging-target-view").await;
    let filler = 50;
    let (stop, workers) = transfers_under_way(&c, filler).await;
    let client = c.client();
    let merge = |from: u64, into: u64| spawn_merge(&c, from, into);
    let one_into_two = merge(1, 2);
    until_begun(&c, "the first merge").await;
    let (two_into_three, three_into_one) = (merge(2, 3), merge(3, 1));
    match three_into_one.await.expect("merge task") {
        Err(pact_client::ClientError::Conflict(m)) => {
            assert!(m.contains("merging into shard 2"), "{m}")
        }
        other => panic!("3 into 1: {other:?}\n{}", split_lines(&c)),
    }
    let d = two_into_three
        .await
        .expect("merge task")
        .unwrap_or_else(|e| panic!("2 into 3: {e}\n{}", split_lines(&c)));
    assert_eq!(d.shard, ShardId(3), "{d:?}");
    let first = one_into_two.await.expect("merge task");
    assert!(first.is_err(), "1 into 2 went through: {first:?}");
    assert_eq!(owning(&c), Some(vec![1, 3]), "{}", split_lines(&c));
    let checked = stop_and_check(&client, stop, workers).await;
    assert!(checked.acknowledged > 0, "{checked:?}");
    fillers_intact(&client, filler).await;
}

/// A split whose shard's leadership moves half way (the pause before the
/// freeze) is finished by the next leader, and the client that asked
/// learns the result by asking again for the same version: one new
/// shard, not two, and no error. Transfers run throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_whose_leader_moves_half_way_splits_once() {
    let c = start_with_faults(range_config(), "split-pause-before-freeze").await;
    let filler = 50;
    let (stop, workers) = transfers_under_way(&c, filler).await;
    let client = c.client();
    let all = c.node_ids();
    let leader = c
        .wait_leader(ShardId(3), &all, Duration::from_secs(10))
        .await;
    let splitting = {
        let client = c.client();
        tokio::spawn(async move {
            client
                .split_shard(
                    ShardId(3),
                    None,
                    Some(b"g".to_vec()),
                    Duration::from_secs(60),
                )
                .await
        })
    };
    until_begun(&c, "the split").await;
    let to = *all.iter().find(|n| **n != leader).expect("another node");
    let (now, _) = client
        .transfer_leader(pact_client::RaftGroup::Shard(ShardId(3)), to)
        .await
        .expect("leadership transfer");
    assert_eq!(now, to);
    let r = splitting.await.expect("split task");
    let (left, child) = r.unwrap_or_else(|e| panic!("split: {e}\n{}", split_lines(&c)));
    assert_eq!(left.shard, ShardId(3));
    assert_eq!(left.version, 2, "{left:?}");
    assert_eq!(child.shard, pact_common::split_child_id(ShardId(3), 1));
    assert!(child.span.contains(b"xfer-0"), "{child:?}");
    assert_eq!(
        owning(&c),
        Some(vec![1, 2, 3, child.shard.0]),
        "{}",
        split_lines(&c)
    );
    let checked = stop_and_check(&client, stop, workers).await;
    assert!(checked.acknowledged > 0, "{checked:?}");
    fillers_intact(&client, filler).await;
}

/// Shards split by themselves under load (`[raft] auto_split_ops_per_sec`,
/// over `auto_split_secs` windows) while transfers run, until the cluster
/// has `auto_split_max_shards`, and no further; the bank holds. Off by
/// default: every other test here counts its shards exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_shards_split_by_themselves_up_to_the_cap() {
    let tuning = pact_common::RaftTuning {
        auto_split_ops_per_sec: 5,
        auto_split_secs: 2,
        auto_split_max_shards: 5,
        ..fast_tuning()
    };
    let c = start_with(range_config(), tuning, "").await;
    let filler = 50;
    let (stop, workers) = transfers_under_way(&c, filler).await;
    until_owning(&c, 5).await;
    // Each leader checks the cap before it splits, so splits decided at
    // the same moment may pass it (by one per shard at most); once they
    // landed, three more windows split nothing.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let capped = owning(&c).expect("shard list");
    assert!(capped.len() <= 8, "{capped:?}\n{}", split_lines(&c));
    tokio::time::sleep(Duration::from_secs(6)).await;
    let owners = owning(&c).expect("shard list");
    assert_eq!(owners, capped, "{}", split_lines(&c));
    let client = c.client();
    let checked = stop_and_check(&client, stop, workers).await;
    assert!(checked.acknowledged > 0, "{checked:?}");
    fillers_intact(&client, filler).await;
}

/// Shards on different nodes merge: the merged shard's replica moves
/// onto the target's nodes first (`txn admin shard merge` does it, and
/// says so), then the merge runs, while transfers go on; the bank holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_moves_replicas_onto_the_targets_nodes_first() {
    // Four nodes: shard 1 on nodes 1-3, shard 2 on nodes 2-4.
    let mut config = ClusterConfig::local_combined(4, 3, 3, 7001).expect("config");
    config.partitioning = PartitionScheme::Range;
    for (s, start) in config.shards.iter_mut().zip(["", "acct-3", "acct-6"]) {
        s.start = Some(start.to_string());
    }
    let voters = |id: u64| -> Vec<u64> {
        let mut v: Vec<u64> = config
            .shard(ShardId(id))
            .expect("shard")
            .replicas
            .iter()
            .map(|n| n.0)
            .collect();
        v.sort();
        v
    };
    let (one, two) = (voters(1), voters(2));
    assert_ne!(one, two, "the shards must start on different nodes");
    let c = start(config.clone()).await;
    let filler = 100;
    let (stop, workers) = transfers_under_way(&c, filler).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok, v) = txn_shard(&c, &["merge", "2", "--into", "1"]);
    assert!(ok, "merge refused: {v}\n{}", split_lines(&c));
    let moved = v["moved"].as_array().cloned().unwrap_or_default();
    assert_eq!(moved.len(), 1, "{v}");
    let from = moved[0]["from"].as_u64().expect("from");
    let to = moved[0]["to"].as_u64().expect("to");
    assert!(two.contains(&from) && !one.contains(&from), "{v}");
    assert!(one.contains(&to) && !two.contains(&to), "{v}");
    assert_eq!(v["keys"]["end"], "acct-6", "{v}");
    assert_eq!(owning(&c), Some(vec![1, 3]));
    let client = c.client();
    let checked = stop_and_check(&client, stop, workers).await;
    assert!(checked.acknowledged > 0, "{checked:?}");
    fillers_intact(&client, filler).await;
}

/// A shard whose data passes `[raft] auto_split_bytes` splits by itself
/// at the key that halves its bytes, and its halves split again while
/// they are still too large, up to the cap, while transfers run; small
/// shards never split, and the bank and every filler key hold. Off by
/// default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_shards_split_by_themselves_by_size() {
    let tuning = pact_common::RaftTuning {
        auto_split_bytes: 40_000,
        auto_split_secs: 2,
        auto_split_max_shards: 6,
        ..fast_tuning()
    };
    let c = start_with(range_config(), tuning, "").await;
    let (stop, workers) = transfers_under_way(&c, 0).await;
    // Shard 3 takes every filler at once (one atomic write, so that no
    // measurement sees a part of them): 400 keys of about 210 bytes, ~84 KB.
    let client = c.client();
    let filler = 400;
    let big = "v".repeat(200);
    let batch = (0..filler)
        .map(|i| {
            (
                format!("filler-{i:04}").into_bytes(),
                Some(format!("f{i}{big}").into_bytes()),
            )
        })
        .collect();
    client.write(batch).await.expect("fillers");
    // Two splits at least: shard 3, then one of its halves (each about
    // 42 KB, still above the setting).
    until_owning(&c, 5).await;
    let (_, list) = txn_shard(&c, &["list"]);
    let rows = list.as_array().cloned().unwrap_or_default();
    for small in [1, 2] {
        let row = rows.iter().find(|r| r["shard"] == small).expect("listed");
        assert_eq!(row["version"], 1, "shard {small} split: {row}");
    }
    // The first split cut shard 3 among the fillers, near its bytes'
    // middle (not at a requested key: nothing here splits by load).
    let cut = rows
        .iter()
        .filter(|r| r["shard"].as_u64().is_some_and(|s| s >= FIRST_SPLIT_ID))
        .filter_map(|r| r["keys"]["start"].as_str().map(str::to_string))
        .min()
        .expect("a new shard's start");
    assert!(
        cut.as_str() > "filler-0100" && cut.as_str() < "filler-0300",
        "cut at {cut:?}: {list}"
    );
    let checked = stop_and_check(&client, stop, workers).await;
    assert!(checked.acknowledged > 0, "{checked:?}");
    for i in 0..filler {
        let v = read_settled(&client, format!("filler-{i:04}").as_bytes()).await;
        assert_eq!(v, Some(format!("f{i}{big}").into_bytes()), "filler-{i:04}");
    }
}

/// The routing table node `id` sends (`Admin.Topology`): its shard table
/// by shard id, and the table's epoch.
async fn table_at(
    c: &Cluster,
    id: u64,
) -> (
    u64,
    std::collections::BTreeMap<u64, pact_common::ShardRecord>,
) {
    let addr = c
        .config
        .node(pact_common::NodeId(id))
        .expect("node")
        .addr
        .clone();
    let found = pact_client::discover_table(&[addr], None)
        .await
        .expect("routing table");
    (
        found.epoch,
        found
            .shards
            .into_iter()
            .map(|r| (r.descriptor.shard.0, r))
            .collect(),
    )
}

/// Wait until every node's routing table satisfies `ok`.
async fn tables_until(
    c: &Cluster,
    what: &str,
    ok: impl Fn(&std::collections::BTreeMap<u64, pact_common::ShardRecord>) -> bool,
) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut epochs = Vec::new();
        for id in [1, 2, 3] {
            let (epoch, t) = table_at(c, id).await;
            if ok(&t) {
                epochs.push(epoch);
            }
        }
        if epochs.len() == 3 {
            return epochs.into_iter().min().unwrap_or(0);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the nodes' shard tables never showed {what}: {:?}",
            table_at(c, 1).await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metadata_group_records_splits_merges_and_replica_changes_for_every_node() {
    let mut c = start(range_config()).await;
    let first = tables_until(&c, "the config's three shards", |t| {
        t.len() == 3 && t.values().all(|r| r.voters == vec![1, 2, 3])
    })
    .await;
    assert!(first >= 3, "epoch {first}");
    let endpoints = |c: &Cluster, id: u64| {
        vec![c
            .config
            .node(pact_common::NodeId(id))
            .expect("node")
            .addr
            .clone()]
    };

    // A split: both halves are recorded, and a client given only an
    // endpoint routes to the new shard from the start.
    let client = c.client();
    client.put(b"xfer-x", b"1").await.expect("put");
    let (ok, v) = txn_shard(&c, &["split", "3", "--at", "g"]);
    assert!(ok, "split refused: {v}\n{}", split_lines(&c));
    let child = v["new_shard"].as_u64().expect("new shard id");
    let split = tables_until(&c, "the split", |t| {
        t.get(&3).is_some_and(|r| r.descriptor.version == 2)
            && t.get(&child).is_some_and(|r| r.voters.len() == 3)
    })
    .await;
    assert!(split > first, "epoch {first} -> {split}");
    let fresh = Client::connect(&endpoints(&c, 2), Default::default())
        .await
        .expect("connect");
    assert_eq!(fresh.shard_for_key(b"xfer-x"), ShardId(child));
    assert_eq!(fresh.shard_map().version(ShardId(3)), 2);
    assert_eq!(
        fresh.get(b"xfer-x").await.expect("get"),
        Some(b"1".to_vec())
    );

    // A replica removed and added back: the voters follow, each time at a
    // later membership.
    let at = table_at(&c, 1).await.1[&child].voters_at;
    let child_s = child.to_string();
    let txn_replica = |args: &[&str]| {
        let (ok, v) = txn_admin(&c, "replica", args);
        assert!(ok, "txn admin replica {args:?}: {v}");
    };
    txn_replica(&["remove", &child_s, "3"]);
    tables_until(&c, "node 3 out of the new shard", |t| {
        t.get(&child)
            .is_some_and(|r| r.voters == vec![1, 2] && r.voters_at > at)
    })
    .await;
    txn_replica(&["add", &child_s, "3"]);
    tables_until(&c, "node 3 back in the new shard", |t| {
        t.get(&child).is_some_and(|r| r.voters == vec![1, 2, 3])
    })
    .await;

    // The metadata group's leader killed: its successor keeps recording.
    let status = c
        .client()
        .meta_status(pact_common::NodeId(1))
        .await
        .expect("metadata group status");
    let leader = status.leader.expect("a leader");
    let up = if leader == 1 { 2 } else { 1 };
    c.kill(pact_common::NodeId(leader));
    let (ok, v) = txn_shard(&c, &["merge", &child_s, "--into", "3"]);
    assert!(ok, "merge refused: {v}\n{}", split_lines(&c));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, t) = table_at(&c, up).await;
        if t.get(&child).is_some_and(|r| r.descriptor.span.is_empty())
            && t.get(&3).is_some_and(|r| r.descriptor.version == 3)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the merge was never recorded with node {leader} down: {t:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    c.restart(pact_common::NodeId(leader));
    c.wait_ready(Duration::from_secs(30)).await;
    tables_until(&c, "the merge, on every node", |t| {
        t.get(&child).is_some_and(|r| r.descriptor.span.is_empty())
    })
    .await;
    let fresh = Client::connect(&endpoints(&c, leader), Default::default())
        .await
        .expect("connect");
    assert_eq!(fresh.shard_for_key(b"xfer-x"), ShardId(3));
    assert_eq!(
        fresh.get(b"xfer-x").await.expect("get"),
        Some(b"1".to_vec())
    );
}

/// A merged shard's group goes (`txn admin shard retire`) once nothing of
/// its transactions can still change: refused while the shard owns keys,
/// refused for now while it holds commit outcomes, then recorded; every
/// node drops its replica and answers for it (its descriptor, an old
/// transaction's fate), it is hosted nowhere again (a restarted node
/// included), listings leave it out, and transfers run throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merged_shard_is_retired_and_every_node_answers_for_it() {
    let mut config = range_config();
    config.transactions.record_retention_s = 1;
    config.transactions.gc_interval_ms = 300;
    // Retired by hand here: the metadata group's own rounds are off.
    let tuning = pact_common::RaftTuning {
        retire_merged_secs: 0,
        ..fast_tuning()
    };
    let mut c = start_with(config, tuning, "").await;
    let (stop, workers) = transfers_under_way(&c, 20).await;
    let client = c.client();

    // A transaction on shards 2 and 3, decided before the merge: its
    // records at shard 2 are what retirement waits out.
    let mut old = client.begin().await.expect("begin");
    old.put(b"acct-4x", b"old").await.expect("put on shard 2");
    old.put(b"zz-old", b"old").await.expect("put on shard 3");
    let old_id = old.id();
    old.commit().await.expect("commit across shards");

    let (ok, bad) = txn_shard(&c, &["retire", "2"]);
    assert!(!ok, "a shard that owns keys retired: {bad}");
    assert_eq!(bad["error"]["code"], "INVALID_INPUT", "{bad}");

    let (ok, v) = txn_shard(&c, &["merge", "2", "--into", "1"]);
    assert!(ok, "merge refused: {v}\n{}", split_lines(&c));
    // Refused for now (CONFLICT) while records are young; past the
    // retention (1 s) they are collected and it goes.
    let until = std::time::Instant::now() + Duration::from_secs(60);
    let retired = loop {
        let (ok, v) = txn_shard(&c, &["retire", "2"]);
        if ok {
            break v;
        }
        assert_eq!(v["error"]["code"], "CONFLICT", "{v}");
        assert!(std::time::Instant::now() < until, "never retired: {v}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(retired["retired"], true, "{retired}");
    assert_eq!(retired["successors"], serde_json::json!([1]), "{retired}");
    let version = retired["version"].as_u64().expect("version");
    let horizons = retired["horizons"].as_array().cloned().unwrap_or_default();
    assert!(
        horizons.iter().any(|h| h["horizon"].as_u64() > Some(0)),
        "its records were collected, so a horizon was raised: {retired}"
    );
    // Asked again: the same record.
    let (ok, again) = txn_shard(&c, &["retire", "2"]);
    assert!(ok && again == retired, "{again} against {retired}");

    // Every node drops its replica.
    dropped_everywhere(&c, ShardId(2)).await;
    // Any node answers for it: its descriptor, and the old transaction's
    // fate (every shard is asked; shard 2's records are gone with its
    // group, its answer stands in).
    let fresh = c.client();
    let d = fresh.describe_shard(ShardId(2)).await.expect("describe");
    assert_eq!(d.version, version);
    assert!(d.span.is_empty(), "{d:?}");
    let o = fresh.resolve_txn(old_id).await.expect("resolve");
    assert!(
        matches!(o, pact_client::TxnOutcome::Expired(_)),
        "{old_id}: {o:?}"
    );
    // A client that read the table asks any node for it.
    fresh.learn_retired(Duration::from_secs(5)).await;
    assert!(fresh.retired_shards().contains(&ShardId(2)));
    let again = fresh.describe_shard(ShardId(2)).await.expect("describe");
    assert_eq!(again, d);

    // Hosted nowhere again.
    let (ok, bad) = txn_admin(&c, "replica", &["add", "2", "1"]);
    assert!(!ok, "a retired shard hosted again: {bad}");
    // Listings leave it out of their replicas.
    let (ok, list) = txn_shard(&c, &["list"]);
    assert!(ok, "{list}");
    let row = list
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["shard"] == 2))
        .cloned()
        .expect("shard 2 listed");
    assert_eq!(row["keys"]["retired"], true, "{row}");
    assert_eq!(row["replicas"], serde_json::json!([]), "{row}");
    let health = std::process::Command::new(pact_tests::binary("txn"))
        .arg("--config")
        .arg(&c.config_path)
        .args(["--json", "health"])
        .output()
        .expect("run txn health");
    assert!(
        health.status.success(),
        "{}",
        String::from_utf8_lossy(&health.stdout)
    );

    // A node restarted afterwards does not host it either.
    c.restart(pact_common::NodeId(3));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(c.status(ShardId(2), pact_common::NodeId(3)).await.is_none());

    let checked = stop_and_check(&c.client(), stop, workers).await;
    assert!(checked.acknowledged > 0, "{checked:?}");
    assert!(read_settled(&c.client(), b"acct-4x").await.is_some());
}

/// With `raft.retire_merged_secs` set, nobody asks: the metadata group's
/// leader retires a merged shard once its records allow, every node
/// drops its replica, and the transfers that ran throughout add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merged_shard_retires_by_itself() {
    let mut config = range_config();
    config.transactions.record_retention_s = 1;
    config.transactions.gc_interval_ms = 300;
    let tuning = pact_common::RaftTuning {
        retire_merged_secs: 1,
        ..fast_tuning()
    };
    let c = start_with(config, tuning, "").await;
    let (stop, workers) = transfers_under_way(&c, 20).await;

    let (ok, v) = txn_shard(&c, &["merge", "2", "--into", "1"]);
    assert!(ok, "merge refused: {v}\n{}", split_lines(&c));
    let until = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (ok, list) = txn_shard(&c, &["list"]);
        assert!(ok, "{list}");
        let retired = list
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["shard"] == 2))
            .is_some_and(|row| row["keys"]["retired"] == true);
        if retired {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "shard 2 never retired by itself: {list}\n{}",
            c.logs_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    dropped_everywhere(&c, ShardId(2)).await;
    let logged = c.node_ids().into_iter().any(|id| {
        std::fs::read_to_string(c.log_path(id))
            .unwrap_or_default()
            .contains("retired by themselves")
    });
    assert!(logged, "no node logged the retirement");
    // The merge asked again answers as the first time did (from the
    // retirement record: shard 1's descriptor), and another target is
    // refused.
    let (ok, again) = txn_shard(&c, &["merge", "2", "--into", "1"]);
    assert!(ok, "the merge asked again after retirement: {again}");
    assert_eq!(again["into"], 1, "{again}");
    assert_eq!(again["version"], v["version"], "{again} against {v}");
    let (ok, other) = txn_shard(&c, &["merge", "2", "--into", "3"]);
    assert!(!ok, "{other}");
    assert_eq!(other["error"]["code"], "INVALID_INPUT", "{other}");

    let checked = stop_and_check(&c.client(), stop, workers).await;
    assert!(checked.acknowledged > 0, "{checked:?}");
}

/// Wait (up to 30 s) until no node hosts a replica of `shard`.
async fn dropped_everywhere(c: &Cluster, shard: ShardId) {
    let until = std::time::Instant::now() + Duration::from_secs(30);
    for id in c.node_ids() {
        while c.status(shard, id).await.is_some() {
            assert!(
                std::time::Instant::now() < until,
                "node {id} still hosts shard {shard}\n{}",
                c.logs_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
