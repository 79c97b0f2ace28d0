//! A shard is a real Raft group of participant processes: failover,
//! durability across kill -9 (with snapshots and compaction), no stale reads
//! from a deposed leader.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pact_client::{ClientError, ClientOptions};
use pact_common::{NodeId, RaftTuning, ShardId};
use pact_tests::{fast_tuning, Cluster};

const SHARD: ShardId = ShardId(1);

fn all_nodes(c: &Cluster) -> Vec<NodeId> {
    c.node_ids()
}

async fn write_keys(c: &Cluster, prefix: &str, n: usize) -> BTreeMap<String, String> {
    let client = c.client();
    let mut acked = BTreeMap::new();
    for i in 0..n {
        let k = format!("{prefix}-{i:05}");
        let v = format!("value-{i}-{}", "x".repeat(i % 50));
        client
            .put(k.as_bytes(), v.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("put {k}: {e}\n{}", c.logs_tail()));
        acked.insert(k, v);
    }
    acked
}

async fn assert_all_readable(c: &Cluster, acked: &BTreeMap<String, String>) {
    let client = c.client();
    for (k, v) in acked {
        let got = client
            .get(k.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("get {k}: {e}\n{}", c.logs_tail()));
        assert_eq!(
            got.as_deref(),
            Some(v.as_bytes()),
            "acknowledged write of {k} lost"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_leader_sigkill_and_resume_quickly() {
    let mut c = Cluster::start(3, 1, 3, fast_tuning());
    let nodes = all_nodes(&c);
    let leader = c.wait_leader(SHARD, &nodes, Duration::from_secs(20)).await;
    let acked = write_keys(&c, "before", 100).await;

    let killed_at = Instant::now();
    c.kill(leader);
    let rest: Vec<NodeId> = nodes.iter().copied().filter(|n| *n != leader).collect();
    // The first write after the kill: the client finds the new leader by itself.
    let client = c.client();
    client
        .put(b"after-0", b"1")
        .await
        .expect("write after failover");
    let resumed = killed_at.elapsed();
    let new_leader = c.wait_leader(SHARD, &rest, Duration::from_secs(10)).await;
    assert_ne!(new_leader, leader);
    println!(
        "writes resumed {resumed:?} after SIGKILL of leader {leader}; new leader {new_leader}"
    );
    // Election timeout here is 300-600 ms: a few timeouts plus client backoff.
    assert!(
        resumed < Duration::from_secs(10),
        "writes took {resumed:?} to resume"
    );

    assert_all_readable(&c, &acked).await;

    // The killed node comes back and catches up from its disk and its peers.
    c.start_node(leader);
    let target = c
        .status(SHARD, new_leader)
        .await
        .expect("leader status")
        .applied_index;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = c.status(SHARD, leader).await {
            if s.applied_index >= target {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "restarted node did not catch up\n{}",
            c.logs_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_cluster_sigkill_loses_nothing_even_after_snapshot_and_compaction() {
    let tuning = RaftTuning {
        snapshot_logs: 40,
        keep_logs: 5,
        ..fast_tuning()
    };
    let mut c = Cluster::start(3, 1, 3, tuning);
    let nodes = all_nodes(&c);
    c.wait_leader(SHARD, &nodes, Duration::from_secs(20)).await;

    // Concurrent writers, so several entries share appends and fsyncs.
    let mut tasks = Vec::new();
    for w in 0..4 {
        let client = c.client();
        tasks.push(tokio::spawn(async move {
            let mut acked = BTreeMap::new();
            for i in 0..60 {
                let k = format!("w{w}-{i:04}");
                let v = format!("v{w}-{i}");
                client.put(k.as_bytes(), v.as_bytes()).await.expect("put");
                acked.insert(k, v);
            }
            acked
        }));
    }
    let mut acked = BTreeMap::new();
    for t in tasks {
        acked.extend(t.await.expect("writer task"));
    }
    // Overwrites and deletes must survive too, not just first writes.
    let client = c.client();
    for i in 0..20 {
        let k = format!("w0-{i:04}");
        if i % 2 == 0 {
            client.delete(k.as_bytes()).await.expect("delete");
            acked.remove(&k);
        } else {
            client
                .put(k.as_bytes(), b"overwritten")
                .await
                .expect("overwrite");
            acked.insert(k, "overwritten".into());
        }
    }

    // Every replica built a snapshot and compacted its log behind it.
    let deadline = Instant::now() + Duration::from_secs(20);
    for n in &nodes {
        loop {
            let s = c.status(SHARD, *n).await;
            if s.as_ref()
                .is_some_and(|s| s.snapshot_index > 0 && s.purged_index > 0)
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {n} built no snapshot or compacted nothing: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    for n in &nodes {
        c.kill(*n);
    }
    for n in &nodes {
        c.start_node(*n);
    }
    c.wait_leader(SHARD, &nodes, Duration::from_secs(30)).await;
    assert_all_readable(&c, &acked).await;
    let scanned = c.client().scan(b"w", None, 10_000).await.expect("scan");
    let scanned: BTreeMap<String, String> = scanned
        .into_iter()
        .map(|(k, v)| (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap()))
        .collect();
    assert_eq!(
        scanned, acked,
        "scan after restart differs from acknowledged state"
    );
}

/// The last log index `node` holds.
async fn follower_last_log(c: &Cluster, node: NodeId) -> u64 {
    c.status(SHARD, node)
        .await
        .expect("follower status")
        .last_log_index
}

/// Waits until `leader` has compacted its log past `index`, so a follower
/// that holds no more than `index` can only catch up from a snapshot. A
/// snapshot alone is not enough: a leader postpones the purge while an
/// append to the stopped follower is in flight, and a follower back
/// before that append gives up would be sent the entries instead.
async fn wait_purged_past(c: &Cluster, leader: NodeId, index: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = c.status(SHARD, leader).await;
        if s.as_ref().is_some_and(|s| s.purged_index > index) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the leader did not compact its log past {index}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// 3 nodes, one shard, snapshots every 30 entries keeping 5 behind (so a
/// replica that misses a few dozen entries needs a snapshot); returns it
/// with the shard's leader and a follower.
async fn compacting_cluster() -> (Cluster, NodeId, NodeId) {
    let tuning = RaftTuning {
        snapshot_logs: 30,
        keep_logs: 5,
        ..fast_tuning()
    };
    let c = Cluster::start(3, 1, 3, tuning);
    let nodes = all_nodes(&c);
    let leader = c.wait_leader(SHARD, &nodes, Duration::from_secs(20)).await;
    let follower = *nodes.iter().find(|n| **n != leader).unwrap();
    (c, leader, follower)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_replica_catches_up_from_snapshot_after_compaction() {
    let (mut c, leader, follower) = compacting_cluster().await;
    let has = follower_last_log(&c, follower).await;
    c.kill(follower);
    let acked = write_keys(&c, "lag", 150).await;
    wait_purged_past(&c, leader, has.max(100)).await;
    c.start_node(follower);
    let target = c.status(SHARD, leader).await.unwrap().applied_index;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if c.status(SHARD, follower)
            .await
            .is_some_and(|s| s.applied_index >= target)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "follower did not catch up\n{}",
            c.logs_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The entries it missed were purged on the leader, so it must have
    // installed the leader's snapshot rather than replayed them.
    let fs = c.status(SHARD, follower).await.expect("follower status");
    assert!(
        fs.snapshot_index >= 100,
        "follower caught up without a snapshot: {fs:?}"
    );
    // Now make the caught-up follower serve: kill the third node, so the
    // follower is in every possible quorum and must hold all the data.
    let third = *all_nodes(&c)
        .iter()
        .find(|n| **n != leader && **n != follower)
        .unwrap();
    c.kill(third);
    c.kill(leader);
    c.start_node(leader);
    c.wait_leader(SHARD, &[leader, follower], Duration::from_secs(20))
        .await;
    assert_all_readable(&c, &acked).await;
}

/// A follower with no room for the snapshot it needs refuses it at the
/// first chunk (its disk would fall below `disk_reserve_mb`, here set
/// beyond any disk), marked as no room, and its leader sends it none for
/// a minute. Before, the leader resent the chunk and then the whole
/// snapshot at once, again and again, each time moving chunks up to where
/// the room ran out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_refused_for_room_is_not_sent_again_at_once() {
    let (mut c, leader, follower) = compacting_cluster().await;
    let has = follower_last_log(&c, follower).await;
    c.kill(follower);
    write_keys(&c, "room", 150).await;
    wait_purged_past(&c, leader, has.max(100)).await;
    // Only the follower reads the new config (the others run on).
    c.config.storage.disk_reserve_mb = 1 << 30;
    std::fs::write(&c.config_path, c.config.to_toml_string()).expect("write config");
    c.start_node(follower);
    // The senders of the refusals the follower logged ("from=N"): a new
    // leader, with no memory of the refusal, may send once more.
    let refusals = |c: &Cluster| -> Vec<String> {
        std::fs::read_to_string(c.log_path(follower))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("snapshot refused"))
            .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("from=")))
            .map(str::to_string)
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while refusals(&c).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the follower never refused the snapshot\n{}",
            c.logs_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Long enough for several attempts had the leader not waited (it
    // resent a chunk after 200 ms, and openraft a snapshot soon after).
    tokio::time::sleep(Duration::from_secs(8)).await;
    let from = refusals(&c);
    let mut senders = from.clone();
    senders.sort();
    senders.dedup();
    assert_eq!(
        senders.len(),
        from.len(),
        "a leader sent the snapshot again within seconds: {from:?}\n{}",
        c.logs_tail()
    );
    assert!(
        !c.log_lines(|l| l.contains("snapshot refused for want of room"))
            .is_empty(),
        "{}",
        c.logs_tail()
    );
}

/// Writes the follower of [`compacting_cluster`] has, then entries it
/// misses, purged on the leader; then the follower started with
/// `crash-mid-snapshot-install`, which kills it in the middle of
/// installing the leader's snapshot. Every acknowledged write.
async fn crashed_mid_install(
    c: &mut Cluster,
    leader: NodeId,
    follower: NodeId,
) -> BTreeMap<String, String> {
    let mut acked = write_keys(c, "before", 40).await;
    let target = c.status(SHARD, leader).await.unwrap().applied_index;
    wait_applied(c, follower, target, Duration::from_secs(20)).await;
    let has = follower_last_log(c, follower).await;
    c.kill(follower);
    acked.extend(write_keys(c, "missed", 150).await);
    wait_purged_past(c, leader, has.max(target + 100)).await;
    c.set_env(follower, "PACT_FAULTS", "crash-mid-snapshot-install");
    c.start_node(follower);
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.is_running(follower) {
        assert!(
            Instant::now() < deadline,
            "the follower never crashed installing the snapshot\n{}",
            c.logs_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(c.log_path(follower)).unwrap_or_default();
    assert!(
        log.contains("crash-mid-snapshot-install: aborting"),
        "the follower died of something else:\n{}",
        log.lines()
            .filter(|l| !l.starts_with(' ') && !l.contains(" WARN ") && !l.contains(" INFO "))
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    acked
}

/// A snapshot install cut short by a crash whose file is then lost
/// (removed outside Pact): at the restart the group's replica is wiped
/// whole, its vote included, and it rejoins from its peers behind the
/// gate as after a lost disk, never as a fresh replica free to vote at
/// once; it is sent the snapshot again and holds every acknowledged
/// write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_install_whose_file_is_lost_rejoins_as_after_a_lost_disk() {
    let (mut c, leader, follower) = compacting_cluster().await;
    let acked = crashed_mid_install(&mut c, leader, follower).await;
    let file = c
        .data_dir(follower)
        .join("snapshots")
        .join(format!("g{}.install", SHARD.0));
    std::fs::remove_file(&file).expect("the interrupted install's file");
    c.set_env(follower, "PACT_FAULTS", "stale-reads");
    // What this start logs (the log file goes on across restarts).
    let from = std::fs::metadata(c.log_path(follower)).map_or(0, |m| m.len() as usize);
    c.start_node(follower);
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let target = c.status(SHARD, leader).await.map_or(0, |s| s.applied_index);
        let s = c.status(SHARD, follower).await;
        if s.as_ref()
            .is_some_and(|s| s.gate == "open" && s.applied_index >= target)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the follower did not rejoin: {s:?}\n{}",
            c.logs_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = std::fs::read(c.log_path(follower)).unwrap_or_default();
    let log = String::from_utf8_lossy(log.get(from..).unwrap_or_default());
    for said in [
        "the snapshot file of an interrupted install cannot be read",
        "rejoining without a vote",
    ] {
        assert!(log.contains(said), "the follower never said {said:?}");
    }
    holds_locally(&c, follower, &acked).await;
}

/// A follower that crashes in the middle of installing a snapshot (its old
/// state partly deleted, part of the new one written) finishes the install
/// when it starts again, and then holds all the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_install_cut_short_by_a_crash_is_finished_at_restart() {
    let (mut c, leader, follower) = compacting_cluster().await;
    let acked = crashed_mid_install(&mut c, leader, follower).await;
    // Restarted without the crash, and answering plain reads from its own
    // state (a deliberate fault), so its data can be read directly.
    c.set_env(follower, "PACT_FAULTS", "stale-reads");
    c.start_node(follower);
    let target = c.status(SHARD, leader).await.unwrap().applied_index;
    wait_applied(&c, follower, target, Duration::from_secs(30)).await;
    let log = std::fs::read_to_string(c.log_path(follower)).unwrap_or_default();
    assert!(
        log.contains("finished a snapshot install interrupted by a restart"),
        "the restart did not finish the install\n{}",
        c.logs_tail()
    );
    // No snapshot file is left behind.
    let left: Vec<_> = std::fs::read_dir(c.data_dir(follower).join("snapshots"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "snapshot files left: {left:?}");
    // Its own state holds every acknowledged write, old and new.
    holds_locally(&c, follower, &acked).await;
}

/// `node`'s own state (read with `stale-reads` on) holds every pair of
/// `acked`.
async fn holds_locally(c: &Cluster, node: NodeId, acked: &BTreeMap<String, String>) {
    let local = c.client_for_node(node, ClientOptions::default());
    for (k, v) in acked {
        let got = local
            .get(k.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("local get {k}: {e}\n{}", c.logs_tail()));
        assert_eq!(got.as_deref(), Some(v.as_bytes()), "key {k} on node {node}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_leader_serves_no_stale_read() {
    let c = Cluster::start(3, 1, 3, fast_tuning());
    let nodes = all_nodes(&c);
    let old = c.wait_leader(SHARD, &nodes, Duration::from_secs(20)).await;
    let client = c.client();
    client.put(b"k", b"v1").await.expect("put v1");

    c.pause(old);
    let rest: Vec<NodeId> = nodes.iter().copied().filter(|n| *n != old).collect();
    let new = c.wait_leader(SHARD, &rest, Duration::from_secs(20)).await;
    // Straight to the new leader: a client that still believes in the
    // paused one would time out with an unknown outcome.
    c.client_for_node(new, ClientOptions::default())
        .put(b"k", b"v2")
        .await
        .expect("put v2 on the majority");
    println!("old leader {old} paused; new leader {new} committed v2");

    // Resume the deposed leader and read from it at once, before it hears
    // of the new term by itself: it must refuse or return v2, never v1.
    let probe = c.client_for_node(
        old,
        ClientOptions {
            request_timeout: Duration::from_secs(3),
            retry_for: Duration::from_millis(1),
            ..ClientOptions::default()
        },
    );
    c.resume(old);
    let answer = probe.get(b"k").await;
    println!("deposed leader answered: {answer:?}");
    match answer {
        Ok(Some(v)) => assert_eq!(v, b"v2", "deposed leader served a stale read"),
        Ok(None) => panic!("deposed leader answered that k does not exist"),
        Err(ClientError::Unavailable(_)) | Err(ClientError::Unknown(_)) => {}
        Err(e) => panic!("unexpected error from deposed leader: {e}"),
    }
    // And the cluster as a whole still reads v2.
    assert_eq!(
        client.get(b"k").await.expect("get").as_deref(),
        Some(&b"v2"[..])
    );
}

/// Wait until `node`'s replica of `shard` has applied at least `target`.
async fn wait_applied(c: &Cluster, node: NodeId, target: u64, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let s = c.status(SHARD, node).await;
        if s.as_ref().is_some_and(|s| s.applied_index >= target) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "node {node} did not apply index {target} within {within:?} (status {s:?})\n{}",
            c.logs_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_paused_through_64_mib_of_writes_catches_up() {
    // Elections slower than the fast default: this test loads the cores
    // with 1 MiB writes, and a needless election only slows it down.
    let tuning = RaftTuning {
        heartbeat_ms: 100,
        election_timeout_min_ms: 1000,
        election_timeout_max_ms: 2000,
        ..fast_tuning()
    };
    let mut c = Cluster::start(3, 1, 3, tuning);
    let nodes = all_nodes(&c);
    c.wait_leader(SHARD, &nodes, Duration::from_secs(20)).await;
    // Clients that know the leader: one asking the paused node first
    // gets no answer, an unknown outcome.
    let mut clients = Vec::new();
    for w in 0..4 {
        let client = c.client();
        client
            .put(format!("warm-{w}").as_bytes(), b"1")
            .await
            .expect("warm-up put");
        clients.push(client);
    }
    let leader = c.wait_leader(SHARD, &nodes, Duration::from_secs(20)).await;
    let lagging = *nodes.iter().find(|n| **n != leader).unwrap();
    let other = *nodes
        .iter()
        .find(|n| **n != leader && **n != lagging)
        .unwrap();
    c.pause(lagging);
    // 64 entries of ~1 MiB: openraft would send them all in one
    // AppendEntries (up to max_payload_entries, 300), with the heartbeat
    // interval (50 ms here) as its deadline, and resend it forever.
    let value = vec![b'v'; 1000 << 10];
    let started = Instant::now();
    let mut writers = Vec::new();
    for (w, client) in clients.into_iter().enumerate() {
        let value = value.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..16 {
                let k = format!("big-{w}-{i:02}");
                // Writing the same value again is harmless, so an unknown
                // outcome (a retry that reached the paused node, or a
                // commit slowed past the deadline on a loaded machine) is
                // retried rather than failing the test.
                let mut tries = 0;
                loop {
                    match client.put(k.as_bytes(), &value).await {
                        Ok(()) => break,
                        Err(ClientError::Unknown(e)) | Err(ClientError::Unavailable(e))
                            if tries < 5 =>
                        {
                            tries += 1;
                            println!("put {k}: {e}; again");
                        }
                        Err(e) => return Err(format!("put {k}: {e}")),
                    }
                }
            }
            Ok::<(), String>(())
        }));
    }
    for w in writers {
        if let Err(e) = w.await.expect("writer task") {
            panic!("{e}\n{}", c.logs_tail());
        }
    }
    println!("64 MiB written in {:?}", started.elapsed());
    let client = c.client();
    let target = c
        .status(SHARD, leader)
        .await
        .expect("leader status")
        .applied_index;
    c.resume(lagging);
    let took = wait_applied(&c, lagging, target, Duration::from_secs(60)).await;
    println!("paused follower {lagging} caught up to {target} in {took:?}");

    // It really holds the data: with the other follower gone it is in
    // every quorum.
    c.kill(other);
    let got = client
        .get(b"big-3-15")
        .await
        .unwrap_or_else(|e| panic!("read without {other}: {e}\n{}", c.logs_tail()));
    assert_eq!(got.as_deref(), Some(&value[..]));
    client
        .put(b"after", b"1")
        .await
        .unwrap_or_else(|e| panic!("write without {other}: {e}\n{}", c.logs_tail()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_restarted_on_an_empty_data_dir_rejoins_and_serves_in_a_quorum() {
    let (mut c, _, _) = compacting_cluster().await;
    let nodes = all_nodes(&c);
    let acked = write_keys(&c, "kept", 80).await;

    // A follower, so the leader remembers how far its log went; the
    // lowest such id, because the first replica is the one that creates
    // the group and could be tempted to create it again.
    let leader = c.wait_leader(SHARD, &nodes, Duration::from_secs(20)).await;
    let wiped = *nodes.iter().find(|n| **n != leader).unwrap();
    c.kill(wiped);
    std::fs::remove_dir_all(c.data_dir(wiped)).expect("wipe data dir");
    let mut acked2 = write_keys(&c, "while-away", 20).await;
    c.start_node(wiped);
    let rest: Vec<NodeId> = nodes.iter().copied().filter(|n| *n != wiped).collect();
    let leader = c.wait_leader(SHARD, &rest, Duration::from_secs(20)).await;

    let target = c.status(SHARD, leader).await.expect("leader").applied_index;
    let took = wait_applied(&c, wiped, target, Duration::from_secs(30)).await;
    println!("wiped node {wiped} caught up to {target} in {took:?}");
    // Every replica, the leader that saw the wiped log go backwards
    // included, goes on applying.
    acked2.extend(write_keys(&c, "settled", 5).await);
    let mut target = 0;
    for n in &nodes {
        if let Some(s) = c.status(SHARD, *n).await {
            target = target.max(s.applied_index);
        }
    }
    for n in &nodes {
        wait_applied(&c, *n, target, Duration::from_secs(20)).await;
    }

    // Take away the leader it rejoined under: the wiped node must now
    // vote and hold the data.
    c.kill(leader);
    let survivors: Vec<NodeId> = nodes.iter().copied().filter(|n| *n != leader).collect();
    c.wait_leader(SHARD, &survivors, Duration::from_secs(20))
        .await;
    assert_all_readable(&c, &acked).await;
    acked2.extend(write_keys(&c, "after", 5).await);
    assert_all_readable(&c, &acked2).await;
    // And it got there through the rejoin path, not by luck.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(c.log_path(wiped))
        .unwrap_or_default()
        .contains("rejoined after data loss")
    {
        assert!(
            Instant::now() < deadline,
            "the wiped node did not say it rejoined\n{}",
            c.logs_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
