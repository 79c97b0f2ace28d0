//! Transactions across shards, as real processes: atomic cross-shard
//! commit and rollback, no hang on opposite lock orders, plain writes that
//! survive being wounded, and bank transfers that stay consistent while
//! coordinator and shard leaders are SIGKILLed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pact_client::{AbortKind, Client, ClientError};
use pact_common::{NodeId, ShardId};
use pact_tests::bank::{self, read_settled};
use pact_tests::{fast_tuning, Cluster};

/// Keys that land on `n` distinct shards.
fn keys_on_distinct_shards(client: &Client, prefix: &str, n: usize) -> Vec<Vec<u8>> {
    let mut seen = BTreeMap::new();
    for i in 0.. {
        let k = format!("{prefix}{i}").into_bytes();
        seen.entry(client.shard_for_key(&k)).or_insert(k);
        if seen.len() == n {
            break;
        }
    }
    seen.into_values().collect()
}

/// An id of coordinator group 1 that no leader issued, from a second ago:
/// within the record retention and below the reservation, so TxnStatus
/// must settle it (not call it expired or never issued).
fn recent_ghost(node: u64) -> pact_common::TxnId {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    pact_common::TxnId {
        group: 1,
        node,
        // A logical counter no leader reaches within a millisecond.
        ts: pact_common::Timestamp::from_parts(ms - 1_000, 0xfff3),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_shard_transaction_commits_atomically_and_rollback_leaves_nothing() {
    let c = Cluster::transactional().await;
    let client = c.client();
    let keys = keys_on_distinct_shards(&client, "x", 3);

    let mut t = client.begin().await.expect("begin");
    for (i, k) in keys.iter().enumerate() {
        t.put(k, format!("v{i}").as_bytes()).await.expect("put");
    }
    // Read your own writes before commit; others do not see them.
    assert_eq!(
        t.get(&keys[0]).await.expect("get").as_deref(),
        Some(&b"v0"[..])
    );
    t.commit().await.expect("commit");
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(
            client.get(k).await.expect("get").as_deref(),
            Some(format!("v{i}").as_bytes()),
        );
    }
    let outcome = client.txn_status(t.id()).await.expect("txn status");
    assert_eq!(outcome, pact_client::TxnOutcome::Committed);

    let mut r = client.begin().await.expect("begin");
    for k in &keys {
        r.put(k, b"rolled-back").await.expect("put");
    }
    r.rollback().await;
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(
            client.get(k).await.expect("get after rollback").as_deref(),
            Some(format!("v{i}").as_bytes()),
        );
    }
    // Commit after rollback, and commit twice, are refused or repeat the answer.
    assert!(r.commit().await.is_err());
    let mut d = client.begin().await.expect("begin");
    d.put(&keys[1], b"twice").await.expect("put");
    d.commit().await.expect("first commit");
    assert!(matches!(
        d.commit().await,
        Err(ClientError::InvalidInput(_))
    ));
    assert_eq!(
        client.get(&keys[1]).await.unwrap().as_deref(),
        Some(&b"twice"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opposite_lock_orders_never_hang() {
    let c = Cluster::transactional().await;
    let client = c.client();
    let keys = keys_on_distinct_shards(&client, "lock", 2);
    let (a, b) = (keys[0].clone(), keys[1].clone());
    let mut t1 = client.begin().await.expect("begin t1");
    let mut t2 = client.begin().await.expect("begin t2");
    // Writes are buffered until commit; reads for update lock at once.
    t1.get_for_update(&a).await.expect("t1 locks a");
    t2.get_for_update(&b).await.expect("t2 locks b");
    let started = Instant::now();
    let (r1, r2) = tokio::join!(
        async {
            match t1.get_for_update(&b).await {
                Ok(_) => {
                    t1.put(&a, b"t1").await?;
                    t1.put(&b, b"t1").await?;
                    t1.commit().await
                }
                Err(e) => Err(e),
            }
        },
        async {
            match t2.get_for_update(&a).await {
                Ok(_) => {
                    t2.put(&a, b"t2").await?;
                    t2.put(&b, b"t2").await?;
                    t2.commit().await
                }
                Err(e) => Err(e),
            }
        }
    );
    let took = started.elapsed();
    println!("opposite lock orders resolved in {took:?}: t1 {r1:?}, t2 {r2:?}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    // Wound-wait: the older t1 wins, the younger t2 is aborted with a reason.
    assert!(r1.is_ok(), "older transaction should commit: {r1:?}");
    match r2 {
        Err(ClientError::Aborted(reason)) => {
            assert_eq!(reason.kind, AbortKind::Wounded, "{reason}")
        }
        other => panic!("younger transaction should be aborted, got {other:?}"),
    }
    assert_eq!(client.get(&a).await.unwrap().as_deref(), Some(&b"t1"[..]));
    assert_eq!(client.get(&b).await.unwrap().as_deref(), Some(&b"t1"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_carried_by_the_commit_take_their_locks_under_wound_wait() {
    let c = Cluster::transactional().await;
    let client = c.client();
    let keys = keys_on_distinct_shards(&client, "carry", 2);
    let (a, b) = (keys[0].clone(), keys[1].clone());

    // An older commit takes a lock from a younger holder (wounds it).
    let mut old = client.begin().await.expect("begin old");
    let mut young = client.begin().await.expect("begin young");
    young.get_for_update(&a).await.expect("young locks a");
    old.put(&a, b"old").await.expect("buffered");
    old.put(&b, b"old").await.expect("buffered");
    // Own buffered writes are read back before any shard has seen them.
    assert_eq!(old.get(&a).await.unwrap().as_deref(), Some(&b"old"[..]));
    old.commit()
        .await
        .expect("older commit wounds the younger holder");
    young.put(&a, b"young").await.expect("buffered");
    match young.commit().await {
        Err(ClientError::Aborted(r)) => assert_eq!(r.kind, AbortKind::Wounded, "{r}"),
        other => panic!("wounded transaction must not commit: {other:?}"),
    }
    for k in [&a, &b] {
        assert_eq!(client.get(k).await.unwrap().as_deref(), Some(&b"old"[..]));
    }

    // A younger commit waits for an older holder, then commits after it.
    let mut old = client.begin().await.expect("begin old");
    let mut young = client.begin().await.expect("begin young");
    old.get_for_update(&a).await.expect("old locks a");
    let waiter = tokio::spawn(async move {
        young.put(&a, b"young").await?;
        young.put(&b, b"young").await?;
        young.commit().await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiter.is_finished(),
        "younger commit must wait for the lock"
    );
    old.put(&keys[0], b"old-2").await.expect("buffered");
    old.commit().await.expect("older commits");
    let r = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("younger commit finishes")
        .expect("task");
    assert!(r.is_ok(), "younger commit should go through after: {r:?}");
    for k in &keys {
        assert_eq!(client.get(k).await.unwrap().as_deref(), Some(&b"young"[..]));
    }

    // Two batches, each within the batch limits but over them together,
    // are both taken (the buffer is sent before it would overflow).
    let mut t = client.begin().await.expect("begin");
    let key = |i: usize| format!("limits-{i}").into_bytes();
    for i in 0..999 {
        t.put(&key(i), b"v").await.expect("buffered");
    }
    let batch = (999..10_499)
        .map(|i| (key(i), Some(b"v".to_vec())))
        .collect();
    t.write(batch)
        .await
        .expect("a batch of 9,500 on top of 999");
    t.commit().await.expect("commit");
    for i in [0, 998, 999, 10_498] {
        assert_eq!(
            client.get(&key(i)).await.unwrap().as_deref(),
            Some(&b"v"[..])
        );
    }
}

/// Two keys that land on one shard.
fn keys_on_one_shard(client: &Client, prefix: &str) -> (Vec<u8>, Vec<u8>) {
    let first = format!("{prefix}0").into_bytes();
    let shard = client.shard_for_key(&first);
    let second = (1..)
        .map(|i| format!("{prefix}{i}").into_bytes())
        .find(|k| client.shard_for_key(k) == shard)
        .expect("some key shares the shard");
    (first, second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_write_wounded_by_an_older_transaction_still_succeeds() {
    let c = Cluster::transactional().await;
    let client = c.client();
    let (k1, k2) = keys_on_one_shard(&client, "wound");
    // The older transaction holds k2.
    let mut old = client.begin().await.expect("begin");
    old.get_for_update(&k2).await.expect("old locks k2");
    old.put(&k2, b"old").await.expect("put");
    tokio::time::sleep(Duration::from_millis(20)).await;
    // A younger plain batch locks k1, then waits for k2.
    let batch = {
        let client = client.clone();
        let (k1, k2) = (k1.clone(), k2.clone());
        tokio::spawn(async move {
            client
                .write(vec![
                    (k1, Some(b"batch".to_vec())),
                    (k2, Some(b"batch".to_vec())),
                ])
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The older transaction now wants k1: it wounds the batch's own
    // transaction and takes the lock.
    old.get_for_update(&k1).await.expect("old takes k1");
    old.put(&k1, b"old").await.expect("put");
    old.commit().await.expect("older transaction commits");
    // The caller never opened a transaction, so it is not told of the
    // abort: the batch starts again and applies after the older one.
    let r = tokio::time::timeout(Duration::from_secs(15), batch)
        .await
        .expect("batch finishes")
        .expect("task");
    assert!(r.is_ok(), "plain write should succeed: {r:?}");
    for k in [&k1, &k2] {
        assert_eq!(client.get(k).await.unwrap().as_deref(), Some(&b"batch"[..]));
    }
}

/// A plain scan is a transaction of its own too: an older transaction
/// that wants a key in its range wounds it at once (it does not wait for
/// the scan), and the scan, wounded mid-read, reads again rather than
/// hand out what it read or an abort its caller never asked for. The
/// `plain-scan-pause` fault holds each scan 2 s between taking its range
/// lock and reading, the window the wound lands in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_scan_wounded_mid_read_reads_again() {
    // Range shards, so the scan asks one shard (each shard asked pauses).
    let mut config =
        pact_common::ClusterConfig::local_with_coordinators(3, 3, 3, 3, 7001).expect("config");
    config.partitioning = pact_common::PartitionScheme::Range;
    for (s, start) in config.shards.iter_mut().zip(["", "k", "t"]) {
        s.start = Some(start.to_string());
    }
    let mut c = Cluster::create(config, fast_tuning());
    for id in c.participant_ids() {
        c.set_env(id, "PACT_FAULTS", "plain-scan-pause");
    }
    c.start_all();
    c.wait_ready(Duration::from_secs(30)).await;
    let client = c.client();
    let (k1, k2) = (b"wscan-1".to_vec(), b"wscan-2".to_vec());
    client.put(&k1, b"before").await.expect("put");
    client.put(&k2, b"before").await.expect("put");
    let (lo, end) = (&b"wscan-"[..], &b"wscan-~"[..]);

    // Older than the scan: begun first.
    let mut old = client.begin().await.expect("begin");
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Each reading of the scan says so once it holds its range lock.
    let readings = |c: &Cluster| {
        c.log_lines(|l| l.contains("plain-scan-pause:"))
            .lines()
            .count()
    };
    let before = readings(&c);
    let scan = {
        let client = client.clone();
        tokio::spawn(async move { client.scan(lo, Some(end), 0).await })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while readings(&c) == before {
        assert!(
            Instant::now() < deadline,
            "the scan never took its range lock"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // (Had it waited for the scan instead, the scan would have read the
    // values from before it.)
    old.get_for_update(&k1)
        .await
        .expect("the older one takes k1");
    old.put(&k1, b"after").await.expect("put");
    old.put(&k2, b"after").await.expect("put");
    old.commit().await.expect("the older transaction commits");
    let r = tokio::time::timeout(Duration::from_secs(20), scan)
        .await
        .expect("the scan finishes")
        .expect("task")
        .expect("a wounded plain scan is read again, not reported");
    // Both keys in the same state: the scan's second reading, after the
    // commit.
    let values: Vec<&[u8]> = r.iter().map(|(_, v)| v.as_slice()).collect();
    assert_eq!(values, [&b"after"[..], &b"after"[..]], "{r:?}");
    assert_eq!(
        readings(&c) - before,
        2,
        "the scan was not read exactly twice (once wounded, once after the commit)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_at_begin_and_batched_reads_lock_see_own_writes_and_abort_when_wounded() {
    let c = Cluster::transactional().await;
    let client = c.client();
    let keys = keys_on_distinct_shards(&client, "many", 2);
    let (a, b) = (keys[0].clone(), keys[1].clone());
    let (_, a2) = keys_on_one_shard(&client, "many");
    let missing = b"many-missing".to_vec();
    client.put(&a, b"a0").await.expect("put a");
    client.put(&b, b"b0").await.expect("put b");
    client.put(&a2, b"a2").await.expect("put a2");

    // Values in the order asked, a missing key as None, two keys of one
    // shard and a key of another in one request.
    let (mut t, v) = client
        .begin_reading(&[b.clone(), a.clone(), missing.clone(), a2.clone()], true)
        .await
        .expect("begin with reads");
    assert_eq!(
        v,
        vec![
            Some(b"b0".to_vec()),
            Some(b"a0".to_vec()),
            None,
            Some(b"a2".to_vec())
        ]
    );
    // The reads took exclusive locks: a younger plain write waits for them.
    let blocked = {
        let (client, b) = (client.clone(), b.clone());
        tokio::spawn(async move { client.put(&b, b"plain").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !blocked.is_finished(),
        "a plain write overtook a locked read"
    );
    // Own buffered writes are seen; a plain batch read of them needs no
    // request, one for update still locks.
    t.put(&a, b"a1").await.expect("buffered");
    assert_eq!(
        t.get_many(&[a.clone(), b.clone()]).await.expect("get_many"),
        vec![Some(b"a1".to_vec()), Some(b"b0".to_vec())]
    );
    assert_eq!(
        t.get_many_for_update(std::slice::from_ref(&a))
            .await
            .expect("for update"),
        vec![Some(b"a1".to_vec())]
    );
    t.put(&b, b"b1").await.expect("buffered");
    t.commit().await.expect("commit");
    tokio::time::timeout(Duration::from_secs(10), blocked)
        .await
        .expect("the plain write finishes")
        .expect("task")
        .expect("plain write");
    assert_eq!(client.get(&a).await.unwrap().as_deref(), Some(&b"a1"[..]));
    assert_eq!(
        client.get(&b).await.unwrap().as_deref(),
        Some(&b"plain"[..])
    );

    // Bad input is refused whole, before a transaction exists.
    assert!(matches!(
        client.begin_reading(&[a.clone(), Vec::new()], false).await,
        Err(ClientError::InvalidInput(_))
    ));

    // Reads at begin that an older transaction wounds: the begin reports
    // the abort and holds nothing. The younger one takes `b` and waits for
    // `a`, which the older one holds; the older one then wants `b`.
    let mut old = client.begin().await.expect("begin old");
    old.get_for_update(&a).await.expect("old locks a");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let young = {
        let (client, a, b) = (client.clone(), a.clone(), b.clone());
        tokio::spawn(async move { client.begin_reading(&[b, a], true).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    old.get_for_update(&b)
        .await
        .expect("old wounds young for b");
    old.put(&a, b"old").await.expect("put");
    old.put(&b, b"old").await.expect("put");
    old.commit().await.expect("older commits");
    match tokio::time::timeout(Duration::from_secs(10), young)
        .await
        .expect("young finishes")
        .expect("task")
    {
        Err(ClientError::Aborted(why)) => assert_eq!(why.kind, AbortKind::Wounded, "{why}"),
        other => panic!("the younger begin should report its wound, got {other:?}"),
    }
    // Batched reads of a transaction wounded after it began: refused.
    let mut old = client.begin().await.expect("begin old");
    let mut young = client.begin().await.expect("begin young");
    young.get_for_update(&a).await.expect("young locks a");
    old.get_for_update(&a).await.expect("old wounds young");
    match young.get_many(std::slice::from_ref(&b)).await {
        Err(ClientError::Aborted(why)) => assert_eq!(why.kind, AbortKind::Wounded, "{why}"),
        other => panic!("a wounded transaction read again: {other:?}"),
    }
    old.rollback().await;
    // Nothing of the aborted transactions stayed locked.
    client.put(&a, b"after").await.expect("a is free");
    client.put(&b, b"after").await.expect("b is free");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_begin_with_reads_given_up_on_frees_its_locks_at_once() {
    // A lease far longer than a lock wait: only the coordinator's own
    // cleanup of the dropped request can free the locks in time.
    let mut config = pact_common::ClusterConfig::local_combined(3, 3, 3, 7001).expect("config");
    config.transactions.lease_ms = 60_000;
    let mut c = Cluster::create(config, fast_tuning());
    c.start_all();
    c.wait_ready(Duration::from_secs(30)).await;
    let client = c.client();
    let keys = keys_on_distinct_shards(&client, "drop", 2);
    let (a, b) = (keys[0].clone(), keys[1].clone());
    let mut old = client.begin().await.expect("begin old");
    old.get_for_update(&a).await.expect("old locks a");
    tokio::time::sleep(Duration::from_millis(20)).await;
    // The younger one's begin locks `b`, then waits for `a`; its caller
    // gives up (the request is dropped, its stream reset).
    let gave_up = tokio::time::timeout(
        Duration::from_millis(800),
        client.begin_reading(&[b.clone(), a.clone()], true),
    )
    .await;
    assert!(gave_up.is_err(), "the begin should still wait: {gave_up:?}");
    // A still younger plain write of `b` waits for the abandoned
    // transaction's lock: it gets it once the coordinator ends that
    // transaction, not after the lease (nor its own 5 s lock wait).
    let started = Instant::now();
    client.put(&b, b"free").await.expect("b is freed");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "b stayed locked for {took:?}"
    );
    old.rollback().await;
    assert_eq!(client.get(&b).await.unwrap().as_deref(), Some(&b"free"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_read_failing_at_one_shard_ends_its_reads_waiting_at_others() {
    let c = Cluster::transactional().await;
    let client = c.client();
    let (a, a2) = keys_on_one_shard(&client, "fails");
    let b = (0..)
        .map(|i| format!("waits{i}").into_bytes())
        .find(|k| client.shard_for_key(k) != client.shard_for_key(&a))
        .expect("a key on another shard");
    // Ages: b's holder is the oldest, then a's holder, then the batch.
    let mut holds_b = client.begin().await.expect("begin");
    holds_b.get_for_update(&b).await.expect("locks b");
    let mut holds_a = client.begin().await.expect("begin");
    holds_a.get_for_update(&a).await.expect("locks a");
    tokio::time::sleep(Duration::from_millis(20)).await;
    // The batch goes to both shards at once: at a's it takes a2 and waits
    // for a, at b's it waits for b.
    let batch = {
        let (client, keys) = (client.clone(), [a2.clone(), a.clone(), b.clone()]);
        tokio::spawn(async move { client.begin_reading(&keys, true).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!batch.is_finished(), "the batch should wait for a and b");
    // a's holder wounds the batch's transaction for a2: its read at a's
    // shard fails. That ends the transaction at once, its wait for b
    // included, while b's holder still holds b (kept open, with
    // heartbeats, until after the check): the abort at b's shard fails
    // the waiting read, and that read may not register the transaction
    // there again when it looks once more.
    holds_a.get_for_update(&a2).await.expect("wounds the batch");
    // Tens of milliseconds; a read left waiting at b's shard (or one that
    // registered the transaction there again after its abort) lasts until
    // that shard asks the coordinator about it, over a second later.
    match tokio::time::timeout(Duration::from_millis(700), batch).await {
        Ok(Ok(Err(ClientError::Aborted(why)))) => {
            assert_eq!(why.kind, AbortKind::Wounded, "{why}")
        }
        Ok(other) => panic!("the batch should report its wound: {other:?}"),
        Err(_) => panic!("the batch still waits for b at its shard after its transaction ended"),
    }
    holds_a.rollback().await;
    holds_b.rollback().await;
    for k in [&a, &a2, &b] {
        client.put(k, b"free").await.expect("nothing stayed locked");
    }
}

const ACCOUNTS: usize = 8;
const INITIAL: i64 = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_transfers_stay_consistent_while_leaders_are_killed() {
    let mut c = Cluster::transactional().await;
    let client = c.client();
    bank::open_accounts(&client, ACCOUNTS, INITIAL).await;
    let stop = Arc::new(AtomicBool::new(false));
    let workers = bank::spawn_transfers(
        (0..3).map(|_| c.client()).collect(),
        ACCOUNTS,
        0,
        stop.clone(),
    );

    // Faults: kill the coordinator leader, then each shard's leader, and
    // bring each back, while transfers run.
    let parts = c.participant_ids();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let coord = c.wait_coordinator(1, Duration::from_secs(20)).await;
    c.kill(coord);
    println!("killed coordinator leader {coord}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.start_node(coord);
    for s in 1..=3 {
        let l = c
            .wait_leader(ShardId(s), &parts, Duration::from_secs(20))
            .await;
        c.kill(l);
        println!("killed leader {l} of shard {s}");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        c.start_node(l);
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    let mut log = Vec::new();
    for w in workers {
        log.extend(w.await.expect("worker"));
    }

    // Heal and quiesce: every prepared transaction gets resolved.
    for s in 1..=3 {
        c.wait_leader(ShardId(s), &parts, Duration::from_secs(30))
            .await;
    }
    c.wait_coordinator(1, Duration::from_secs(30)).await;

    let client = c.client();
    let bank::Checked {
        acknowledged: acked,
        maybe,
        happened,
    } = bank::check(&client, &log, ACCOUNTS, INITIAL).await;
    println!("transfers: {acked} acknowledged, {maybe} unknown/aborted, {happened} took effect");
    assert!(
        acked > 10,
        "too few transfers committed ({acked}) to mean anything"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_execute_and_bad_transaction_input() {
    use pact_client::{Guard, Op};
    use pact_proto as pb;
    use std::io::Write;

    let c = Cluster::transactional().await;
    let client = c.client();

    // etcd-style compare-and-set.
    let put_if_missing = |v: &str| {
        (
            vec![Guard::Missing(b"cas".to_vec())],
            vec![Op::Put(b"cas".to_vec(), v.as_bytes().to_vec())],
            vec![Op::Get(b"cas".to_vec())],
        )
    };
    let (g, t, o) = put_if_missing("first");
    let r = client.execute(g, t, o).await.expect("execute");
    assert!(r.succeeded);
    let (g, t, o) = put_if_missing("second");
    let r = client.execute(g, t, o).await.expect("execute");
    assert!(!r.succeeded);
    assert_eq!(r.results, vec![(b"cas".to_vec(), Some(b"first".to_vec()))]);
    let r = client
        .execute(
            vec![Guard::Equals(b"cas".to_vec(), b"first".to_vec())],
            vec![Op::Delete(b"cas".to_vec())],
            vec![],
        )
        .await
        .expect("execute");
    assert!(r.succeeded);
    assert_eq!(client.get(b"cas").await.unwrap(), None);

    // Reads whose values could not all go back in the answer: refused
    // before the commit, so nothing of the transaction is applied (before,
    // it committed and then its answer failed as "too large", which the
    // client reads as "nothing was done").
    let big = vec![b'v'; pact_common::MAX_VALUE_BYTES];
    let mut gets = Vec::new();
    for i in 0..5 {
        let k = format!("exec-big-{i}").into_bytes();
        client.put(&k, &big).await.expect("put a big value");
        gets.push(Op::Get(k));
    }
    gets.push(Op::Put(b"exec-after-big".to_vec(), b"x".to_vec()));
    let r = client.execute(vec![], gets, vec![]).await;
    assert!(matches!(r, Err(ClientError::InvalidInput(_))), "{r:?}");
    assert_eq!(client.get(b"exec-after-big").await.unwrap(), None);

    // Over the size limit: refused, and the transaction stays usable.
    let mut t = client.begin().await.expect("begin");
    let big = vec![b'v'; pact_common::MAX_VALUE_BYTES + 1];
    assert!(matches!(
        t.put(b"big", &big).await,
        Err(ClientError::InvalidInput(_))
    ));
    assert!(matches!(
        t.put(b"", b"v").await,
        Err(ClientError::InvalidInput(_))
    ));
    t.put(b"small", b"ok").await.expect("put after refused put");
    // A transaction growing past the per-shard limit (8 MiB) is refused.
    let mut big_txn = client.begin().await.expect("begin");
    let shard = client.shard_for_key(b"small");
    let value = vec![b'x'; pact_common::MAX_VALUE_BYTES];
    let mut refused = false;
    for i in 0..200 {
        let k = format!("big-{i}").into_bytes();
        if client.shard_for_key(&k) != shard {
            continue;
        }
        match big_txn.put(&k, &value).await {
            Ok(()) => {}
            Err(ClientError::InvalidInput(m)) => {
                assert!(m.contains("size limit"), "{m}");
                refused = true;
                break;
            }
            Err(e) => panic!("unexpected error growing a transaction: {e}"),
        }
    }
    assert!(refused, "a transaction grew past the size limit");
    big_txn.rollback().await;
    let id = t.id();
    t.commit().await.expect("commit");

    // Raw gRPC against the coordinator leader.
    let leader = c.wait_coordinator(1, Duration::from_secs(10)).await;
    let addr = c.config.node(leader).unwrap().addr.clone();
    let mut raw = pb::txn_client::TxnClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let pid = |t: pact_common::TxnId| pb::TxnId {
        group: t.group,
        node: t.node,
        ts: t.ts.0,
    };
    // Commit twice: the second answers from the log, the same outcome (a
    // one-phase commit is recorded just after it is applied, so it may
    // briefly be "unknown", never "aborted").
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let again = raw
            .commit(pb::TxnRequest {
                shard_id: 0,
                txn: Some(pid(id)),
                ..Default::default()
            })
            .await
            .expect("second commit")
            .into_inner();
        if again.outcome == pb::Outcome::Committed as i32 {
            break;
        }
        assert_eq!(again.outcome, pb::Outcome::Unknown as i32, "{again:?}");
        assert!(Instant::now() < deadline, "one-phase commit never recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Operations on a transaction the coordinator does not know (expired).
    let ghost = recent_ghost(leader.0);
    let e = raw
        .get(pb::TxnGetRequest {
            shard_version: 0,
            shard_id: 0,
            txn: Some(pid(ghost)),
            key: b"small".to_vec().into(),
            for_update: false,
            first: false,
            priority: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Aborted, "{e}");
    assert!(
        e.message().contains("unknown transaction"),
        "{}",
        e.message()
    );
    // A client asking about it learns it is aborted (an id of this
    // leader's term with no session can no longer commit), or, if an
    // earlier leader could have issued it, that nothing is decided yet; a
    // participant resolving it gets a final abort, and a later commit
    // cannot win.
    assert!(matches!(
        client.txn_status(ghost).await.expect("status"),
        pact_client::TxnOutcome::Unknown(_) | pact_client::TxnOutcome::Aborted(_)
    ));
    assert!(matches!(
        client.resolve_txn(ghost).await.expect("resolve"),
        pact_client::TxnOutcome::Aborted(_)
    ));
    let late = raw
        .commit(pb::TxnRequest {
            shard_id: 0,
            txn: Some(pid(ghost)),
            ..Default::default()
        })
        .await
        .expect("late commit")
        .into_inner();
    assert_eq!(late.outcome, pb::Outcome::Aborted as i32);
    // A transaction of another group, and no transaction at all.
    let other = pact_common::TxnId { group: 9, ..ghost };
    let e = raw
        .commit(pb::TxnRequest {
            shard_id: 0,
            txn: Some(pid(other)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = raw
        .commit(pb::TxnRequest {
            shard_id: 0,
            txn: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    // A commit carrying a malformed write is refused before anything runs.
    let open = client.begin().await.expect("begin");
    let e = raw
        .commit(pb::TxnRequest {
            txn: Some(pid(open.id())),
            ops: vec![pb::WriteOp {
                key: b"k".to_vec().into(),
                op: None,
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");

    // Garbage on the coordinator's port; it keeps serving.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    let _ = s.write_all(b"\x16\x03\x01 not grpc at all \xff\xff");
    drop(s);
    assert_eq!(
        client.get(b"small").await.unwrap().as_deref(),
        Some(&b"ok"[..])
    );
    let mut t = client.begin().await.expect("begin after garbage");
    t.put(b"small", b"still").await.unwrap();
    t.commit().await.expect("commit after garbage");
}

/// Commit `key` = `value` in a transaction of its own (one shard: a
/// one-phase commit); returns the transaction's id.
async fn commit_one(client: &Client, key: &[u8], value: &[u8]) -> pact_common::TxnId {
    let mut t = client.begin().await.expect("begin");
    t.put(key, value).await.expect("put");
    let id = t.id();
    t.commit().await.expect("commit");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_ids_never_repeat_or_go_back_after_a_coordinator_restart_with_its_clock_behind() {
    let mut c = Cluster::transactional().await;
    let client = c.client();
    let mut ids = Vec::new();
    let mut written = Vec::new();
    for i in 0..20 {
        let (k, v) = (
            format!("ids-{i}").into_bytes(),
            format!("v{i}").into_bytes(),
        );
        ids.push(commit_one(&client, &k, &v).await);
        written.push((k, v));
    }
    // Begun and rolled back: the recovery log has no record of these.
    for _ in 0..5 {
        let mut t = client.begin().await.expect("begin");
        ids.push(t.id());
        t.rollback().await;
    }
    let newest = *ids.iter().max().expect("ids");

    // kill -9 the whole coordinator group; it comes back with its wall
    // clock 60 s behind.
    let coords = c.coordinator_ids(1);
    for id in &coords {
        c.kill(*id);
    }
    for id in &coords {
        c.set_env(*id, "PACT_CLOCK_OFFSET_MS", "-60000");
        c.start_node(*id);
    }
    c.wait_coordinator(1, Duration::from_secs(30)).await;

    let mut later = Vec::new();
    for i in 20..40 {
        let (k, v) = (
            format!("ids-{i}").into_bytes(),
            format!("v{i}").into_bytes(),
        );
        later.push(commit_one(&client, &k, &v).await);
        written.push((k, v));
    }
    let mut t = client.begin().await.expect("begin");
    later.push(t.id());
    t.rollback().await;
    for id in &later {
        assert!(
            !ids.contains(id),
            "transaction id {id} was issued twice (before and after the restart)"
        );
        assert!(
            *id > newest,
            "transaction id {id} went back: {newest} was issued before the restart"
        );
    }
    assert!(
        later.windows(2).all(|w| w[0] < w[1]),
        "ids not increasing: {later:?}"
    );
    for (k, v) in &written {
        assert_eq!(
            client.get(k).await.expect("get").as_ref(),
            Some(v),
            "committed write of {} is missing",
            String::from_utf8_lossy(k)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_phase_commit_whose_coordinator_record_is_lost_is_reported_committed() {
    let config =
        pact_common::ClusterConfig::local_with_coordinators(3, 3, 3, 3, 7001).expect("config");
    let mut c = Cluster::create(config, fast_tuning());
    // The coordinator never records its one-phase commits, as if its
    // leader died each time right after the shard applied one.
    for id in c.coordinator_ids(1) {
        c.set_env(id, "PACT_FAULTS", "skip-one-phase-record");
    }
    c.start_all();
    let parts = c.participant_ids();
    for s in 1..=3 {
        c.wait_leader(ShardId(s), &parts, Duration::from_secs(30))
            .await;
    }
    let coord = c.wait_coordinator(1, Duration::from_secs(30)).await;
    let client = c.client();
    let id = commit_one(&client, b"lost-record", b"applied").await;
    let before = client.txn_status(id).await.expect("status");

    // kill -9 everything and start it all again.
    for n in c.node_ids() {
        c.kill(n);
    }
    c.start_all();
    for s in 1..=3 {
        c.wait_leader(ShardId(s), &parts, Duration::from_secs(30))
            .await;
    }
    c.wait_coordinator(1, Duration::from_secs(30)).await;
    let after = client.txn_status(id).await.expect("status after restart");
    let resolved = client.resolve_txn(id).await.expect("resolve");
    let again = client.txn_status(id).await.expect("status after resolve");
    assert_eq!(
        (before, after, resolved, again),
        (
            pact_client::TxnOutcome::Committed,
            pact_client::TxnOutcome::Committed,
            pact_client::TxnOutcome::Committed,
            pact_client::TxnOutcome::Committed
        ),
        "txn_status before and after the restart, resolve_txn, txn_status"
    );
    assert_eq!(
        client.get(b"lost-record").await.expect("get").as_deref(),
        Some(&b"applied"[..])
    );

    // An id no coordinator ever issued: resolve gives a final abort, and
    // every later question the same answer.
    let ghost = recent_ghost(coord.0);
    let resolved = client.resolve_txn(ghost).await.expect("resolve ghost");
    assert!(
        matches!(resolved, pact_client::TxnOutcome::Aborted(_)),
        "{resolved:?}"
    );
    let status = client.txn_status(ghost).await.expect("status ghost");
    assert!(
        matches!(status, pact_client::TxnOutcome::Aborted(_)),
        "{status:?}"
    );
}

/// TxnStatus with `resolve` for an id of an earlier coordinator term
/// first raises every shard's fence floor to the new term's start, so
/// that nothing of the id can land, then reads the shards. With a shard
/// down the floor cannot be raised; the leader then falls back to fencing
/// the id itself at every shard, and a commit found at one settles it.
/// Here a one-phase commit whose coordinator record is lost
/// (`skip-one-phase-record`) is asked about after the coordinator's
/// leadership moved, while shard 2 (on nodes 4-6, two of them stopped)
/// has no quorum: it is reported committed, not unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_terms_commit_is_settled_with_a_shard_down() {
    let mut config =
        pact_common::ClusterConfig::local_with_coordinators(6, 2, 3, 3, 7001).expect("config");
    config.shards[0].replicas = vec![NodeId(1), NodeId(2), NodeId(3)];
    config.shards[1].replicas = vec![NodeId(4), NodeId(5), NodeId(6)];
    let mut c = Cluster::create(config, fast_tuning());
    for id in c.coordinator_ids(1) {
        c.set_env(id, "PACT_FAULTS", "skip-one-phase-record");
    }
    c.start_all();
    let first = [NodeId(1), NodeId(2), NodeId(3)];
    let second = [NodeId(4), NodeId(5), NodeId(6)];
    c.wait_leader(ShardId(1), &first, Duration::from_secs(30))
        .await;
    c.wait_leader(ShardId(2), &second, Duration::from_secs(30))
        .await;
    let coord = c.wait_coordinator(1, Duration::from_secs(30)).await;
    let client = c.client();
    let key = (0..)
        .map(|i| format!("earlier-{i}").into_bytes())
        .find(|k| client.shard_for_key(k) == ShardId(1))
        .expect("a key of shard 1");
    let id = commit_one(&client, &key, b"applied").await;

    // A new coordinator term: the id is an earlier term's.
    let other = c
        .coordinator_ids(1)
        .into_iter()
        .find(|n| *n != coord)
        .expect("another coordinator replica");
    client
        .transfer_leader(pact_client::RaftGroup::Coordinator(1), other)
        .await
        .expect("move the coordinator's leadership");
    c.wait_coordinator(1, Duration::from_secs(30)).await;
    // Shard 2 loses its quorum.
    c.pause(NodeId(5));
    c.pause(NodeId(6));
    let resolved = tokio::time::timeout(Duration::from_secs(30), client.resolve_txn(id))
        .await
        .expect("resolve answered");
    let status = client.txn_status(id).await;
    c.resume(NodeId(5));
    c.resume(NodeId(6));
    assert_eq!(
        (resolved.expect("resolve"), status.expect("status")),
        (
            pact_client::TxnOutcome::Committed,
            pact_client::TxnOutcome::Committed
        ),
        "\n{}",
        c.log_lines(|l| l.contains(&id.to_string()))
    );
}

/// Parallel commit's crash point after every prepare and the staging
/// record are durable, before anyone is told: the coordinator leader is
/// killed there (the `decision-delay` hook holds it). The transaction is
/// committed by definition; the new leader finds the staging record,
/// fences the listed shards, finds both prepared, and finishes it; the
/// client, who saw no answer, learns "committed" from TxnStatus, and the
/// prepared shards let their locks go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_transaction_whose_coordinator_dies_before_replying_is_committed_by_recovery() {
    let config =
        pact_common::ClusterConfig::local_with_coordinators(3, 3, 3, 3, 7001).expect("config");
    let mut c = Cluster::create(config, fast_tuning());
    for id in c.coordinator_ids(1) {
        c.set_env(id, "PACT_FAULTS", "decision-delay");
        c.set_env(id, "PACT_DECISION_DELAY_MS", "60000");
    }
    c.start_all();
    let parts = c.participant_ids();
    for s in 1..=3 {
        c.wait_leader(ShardId(s), &parts, Duration::from_secs(30))
            .await;
    }
    let leader = c.wait_coordinator(1, Duration::from_secs(30)).await;
    let client = c.client();
    let keys = keys_on_distinct_shards(&client, "staged", 2);
    let mut t = client.begin().await.expect("begin");
    for k in &keys {
        // Read for update: the writes then ride inside the prepares.
        t.get_for_update(k).await.expect("lock");
        t.put(k, b"staged").await.expect("put");
    }
    let id = t.id();
    let commit = tokio::spawn(async move { t.commit().await });
    // The prepares and the staging record take milliseconds; the hook
    // then holds the leader for a minute before it tells anyone.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!commit.is_finished(), "the client heard before the kill");
    c.kill(leader);
    let answer = commit.await.expect("commit task");
    assert!(answer.is_err(), "{answer:?}");
    // Recovery on the new leader settles it (had the staging record not
    // been durable, it would be presumed aborted and nothing applied).
    c.restart(leader);
    c.wait_coordinator(1, Duration::from_secs(30)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let outcome = loop {
        match client.txn_status(id).await {
            Ok(pact_client::TxnOutcome::Committed) => break pact_client::TxnOutcome::Committed,
            other => {
                assert!(tokio::time::Instant::now() < deadline, "{other:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(outcome, pact_client::TxnOutcome::Committed);
    for k in &keys {
        assert_eq!(
            read_settled(&client, k).await.as_deref(),
            Some(&b"staged"[..]),
            "both shards applied it"
        );
    }
}

/// A shard leader holds a coordinator's decision for the shard's next
/// transaction entry to carry it, its locks gone at once and the
/// committed writes served from memory. The crash point: the leader
/// dies while the decision is held, logged nowhere at that shard (the
/// `decision-hold-long` hook holds decisions a minute instead of
/// milliseconds). The prepare record survives; the new leader rebuilds
/// the lock and learns the commit again, so the write is there after
/// the crash, and a later transaction's writes of both keys (one of
/// them carrying the other shard's held decision) are not undone by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_held_at_a_shard_leader_that_dies_is_applied_after_it() {
    let config =
        pact_common::ClusterConfig::local_with_coordinators(3, 3, 3, 3, 7001).expect("config");
    let mut c = Cluster::create(config, fast_tuning());
    let parts = c.participant_ids();
    for id in &parts {
        c.set_env(*id, "PACT_FAULTS", "decision-hold-long");
    }
    c.start_all();
    c.wait_ready(Duration::from_secs(30)).await;
    let client = c.client();
    let keys = keys_on_distinct_shards(&client, "held", 2);
    let mut t = client.begin().await.expect("begin");
    for k in &keys {
        t.get_for_update(k).await.expect("lock");
        t.put(k, b"first").await.expect("put");
    }
    let id = t.id();
    t.commit().await.expect("commit across shards");
    // The read sees the commit once the decision reached the shard
    // leader and let the lock go: it is held there now, for a minute.
    assert_eq!(
        client.get(&keys[0]).await.expect("read").as_deref(),
        Some(&b"first"[..])
    );
    let leader = c
        .wait_leader(
            client.shard_for_key(&keys[0]),
            &parts,
            Duration::from_secs(5),
        )
        .await;
    c.kill(leader);
    c.restart(leader);
    c.wait_ready(Duration::from_secs(30)).await;
    for k in &keys {
        assert_eq!(
            read_settled(&client, k).await.as_deref(),
            Some(&b"first"[..]),
            "the commit survived the held decision's loss"
        );
    }
    assert_eq!(
        client.txn_status(id).await.expect("status"),
        pact_client::TxnOutcome::Committed
    );
    let mut later = client.begin().await.expect("begin");
    for k in &keys {
        later.get_for_update(k).await.expect("lock");
        later.put(k, b"second").await.expect("put");
    }
    later.commit().await.expect("a later commit of both keys");
    // Past the leaders' resend of unlogged decisions (half a second):
    // nothing of the first transaction lands again over the second.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for k in &keys {
        assert_eq!(
            read_settled(&client, k).await.as_deref(),
            Some(&b"second"[..])
        );
    }
}

/// Garbage collection of transaction records (coordinator `gc`): with a
/// 2 s retention, TxnStatus answers exactly for young transactions and
/// says "expired" once their records are collected, everywhere; a question
/// about an id older than the horizon, or never issued, records nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_records_are_collected_past_the_retention() {
    let mut config =
        pact_common::ClusterConfig::local_with_coordinators(3, 3, 3, 3, 7001).expect("config");
    config.transactions.record_retention_s = 2;
    config.transactions.gc_interval_ms = 300;
    let mut c = Cluster::create(config, fast_tuning());
    c.start_all();
    c.wait_ready(Duration::from_secs(30)).await;
    let client = c.client();
    let keys = keys_on_distinct_shards(&client, "gc", 2);

    // A parallel commit (two writing shards), a one-phase commit, and an
    // abort, each answered exactly while young.
    let mut two = client.begin().await.expect("begin");
    for k in &keys {
        two.get_for_update(k).await.expect("lock");
        two.put(k, b"v").await.expect("put");
    }
    let two_id = two.id();
    two.commit().await.expect("commit across shards");
    let mut one = client.begin().await.expect("begin");
    one.put(&keys[0], b"w").await.expect("put");
    let one_id = one.id();
    one.commit().await.expect("one-phase commit");
    let mut gone = client.begin().await.expect("begin");
    gone.put(&keys[1], b"never").await.expect("put");
    let gone_id = gone.id();
    gone.rollback().await;
    for id in [two_id, one_id] {
        let o = client.txn_status(id).await.expect("status");
        assert_eq!(o, pact_client::TxnOutcome::Committed, "{id} while young");
    }
    let o = client.resolve_txn(gone_id).await.expect("resolve");
    assert!(matches!(o, pact_client::TxnOutcome::Aborted(_)), "{o:?}");

    // Past the retention every record of them is collected (decisions in
    // the log, outcome records at the shards): "expired", not a guess.
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in [two_id, one_id, gone_id] {
        loop {
            let o = client.resolve_txn(id).await.expect("resolve");
            if matches!(o, pact_client::TxnOutcome::Expired(_)) {
                break;
            }
            assert!(
                matches!(
                    o,
                    pact_client::TxnOutcome::Committed | pact_client::TxnOutcome::Aborted(_)
                ),
                "{id}: {o:?} (the answer may only change to expired)"
            );
            assert!(Instant::now() < deadline, "{id} never expired: {o:?}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    // The data stays, of course.
    assert_eq!(
        client.get(&keys[0]).await.expect("get").as_deref(),
        Some(&b"w"[..])
    );
    assert_eq!(
        client.get(&keys[1]).await.expect("get").as_deref(),
        Some(&b"v"[..])
    );

    // An old made-up id: resolving it records nothing (a recorded abort
    // would make the next answer "aborted"), at the shards or in the log.
    let leader = c.wait_coordinator(1, Duration::from_secs(30)).await;
    let ancient = pact_common::TxnId {
        group: 1,
        node: leader.0,
        ts: pact_common::Timestamp::from_parts(1_000, 0),
    };
    for _ in 0..2 {
        let o = client.resolve_txn(ancient).await.expect("resolve ancient");
        assert!(matches!(o, pact_client::TxnOutcome::Expired(_)), "{o:?}");
    }
    // An id from the future was never issued: refused, nothing recorded.
    let future = pact_common::TxnId {
        group: 1,
        node: leader.0,
        ts: pact_common::Timestamp(u64::MAX - 1),
    };
    let e = client.resolve_txn(future).await.expect_err("never issued");
    assert!(matches!(e, ClientError::InvalidInput(_)), "{e:?}");

    // Collection leaves the cluster working: a new transaction commits,
    // and a young one is still answered exactly.
    let mut t = client.begin().await.expect("begin");
    for k in &keys {
        t.put(k, b"after").await.expect("put");
    }
    let id = t.id();
    t.commit().await.expect("commit after collection");
    assert_eq!(
        client.txn_status(id).await.expect("status"),
        pact_client::TxnOutcome::Committed
    );
}

/// `pact_txn_records` as the servers report it: per (group, kind), the
/// largest count any process shows (a group's count comes from its
/// leader; a former leader's may be stale, never larger).
fn txn_records(ports: &[u16]) -> BTreeMap<(String, String), f64> {
    use std::io::{Read, Write};
    let mut out: BTreeMap<(String, String), f64> = BTreeMap::new();
    for p in ports {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", *p)).expect("metrics port");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut page = String::new();
        s.read_to_string(&mut page).unwrap();
        for m in pact_tests::jepsen::soak::parse_metrics(&page) {
            if m.name != pact_tests::jepsen::soak::TXN_RECORDS {
                continue;
            }
            let label = |n: &str| {
                m.labels
                    .iter()
                    .find(|(k, _)| k == n)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            let e = out.entry((label("group"), label("kind"))).or_default();
            *e = e.max(m.value);
        }
    }
    out
}

/// Resolving ids nobody issued costs no record (issue 13): ids of the
/// coordinator leader's own term are settled by reading the shards, and
/// ids of an earlier term after one floor per shard is raised at the
/// first of them; every answer is a final abort, and the record counts
/// the servers report do not move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolving_made_up_ids_records_nothing() {
    let mut config = pact_common::ClusterConfig::local_combined(3, 3, 3, 7001).expect("config");
    // Counts refreshed often; nothing old enough to be collected.
    config.transactions.gc_interval_ms = 200;
    let mut c = Cluster::create(config, fast_tuning());
    let http = pact_tests::free_ports(3);
    for (i, id) in c.node_ids().into_iter().enumerate() {
        c.set_args(
            id,
            &[
                "--metrics-listen".to_string(),
                format!("127.0.0.1:{}", http[i]),
            ],
        );
    }
    c.start_all();
    c.wait_ready(Duration::from_secs(30)).await;
    let group = 4;
    let client = c.client();
    let keys = keys_on_distinct_shards(&client, "ghost", 2);
    let commit = |v: &'static [u8]| {
        let client = client.clone();
        let keys = keys.clone();
        async move {
            let mut t = client.begin().await.expect("begin");
            for k in &keys {
                t.put(k, v).await.expect("put");
            }
            let id = t.id();
            t.commit().await.expect("commit");
            id
        }
    };
    let real = commit(b"1").await;
    let leader = NodeId(real.node);
    // Let a collection round count what is there now.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let before = txn_records(&http);
    assert!(
        before.keys().any(|(_, k)| k == "outcome"),
        "no record counts reported: {before:?}"
    );

    let settle = |id: pact_common::TxnId| {
        let client = client.clone();
        async move {
            for _ in 0..2 {
                let o = client.resolve_txn(id).await.expect("resolve");
                assert!(
                    matches!(o, pact_client::TxnOutcome::Aborted(_)),
                    "{id}: {o:?}"
                );
                let o = client.txn_status(id).await.expect("status");
                assert!(
                    matches!(o, pact_client::TxnOutcome::Aborted(_)),
                    "{id}: {o:?}"
                );
            }
        }
    };
    // Ids just after the real one, which no leader issued: this term's
    // (the term began before the cluster's first id).
    let made_up = |node: NodeId, n: u64| pact_common::TxnId {
        group,
        node: node.0,
        ts: pact_common::Timestamp(real.ts.0 + n),
    };
    for n in 0..20 {
        settle(made_up(leader, 0x100 + n)).await;
    }
    // A real id is still answered exactly.
    assert_eq!(
        client.txn_status(real).await.expect("status"),
        pact_client::TxnOutcome::Committed
    );

    // A new leader: ids from before its term are an earlier leader's.
    let other = c
        .node_ids()
        .into_iter()
        .find(|n| *n != leader)
        .expect("another node");
    client
        .transfer_leader(pact_client::RaftGroup::Coordinator(group), other)
        .await
        .expect("transfer the coordinator leadership");
    for n in 0..20 {
        // Both leaders' node ids: either could have issued them.
        let node = if n % 2 == 0 { leader } else { other };
        settle(made_up(node, 0x200 + n)).await;
    }
    assert_eq!(
        client.txn_status(real).await.expect("status"),
        pact_client::TxnOutcome::Committed
    );
    // The cluster works on: a transaction of the new term commits.
    let after = commit(b"2").await;
    assert_eq!(
        client.txn_status(after).await.expect("status"),
        pact_client::TxnOutcome::Committed
    );
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // No new record for the 40 ids asked about, each twice: only the new
    // transaction's (at most one per shard it wrote, and its decision).
    let now = txn_records(&http);
    for ((g, kind), n) in &now {
        let was = before
            .get(&(g.clone(), kind.clone()))
            .copied()
            .unwrap_or(0.0);
        assert!(
            *n <= was + 2.0,
            "group {g} has {n} {kind} records, {was} before: {now:?} vs {before:?}"
        );
    }
}

/// Scans whose pairs could not go back in one answer (10 values of 1 MiB,
/// over the 4 MiB an answer carries) come in pages: the client and a
/// transaction get every pair, in order, none skipped (before, the answer
/// failed as too large; a page cut short must not end the scan early, nor
/// hand out a key past a shard's unread ones).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_of_large_values_come_whole_in_pages() {
    let c = Cluster::transactional().await;
    let client = c.client();
    let big = vec![b'v'; pact_common::MAX_VALUE_BYTES];
    let keys: Vec<Vec<u8>> = (0..10)
        .map(|i| format!("bigscan-{i:02}").into_bytes())
        .collect();
    for k in &keys {
        client.put(k, &big).await.expect("put a big value");
    }
    let got: Vec<Vec<u8>> = client
        .scan(b"bigscan-", Some(b"bigscan-~"), 100)
        .await
        .expect("a plain scan")
        .into_iter()
        .map(|(k, v)| {
            assert_eq!(v.len(), big.len());
            k
        })
        .collect();
    assert_eq!(got, keys);
    // A limit below the count still gets exactly the first ones.
    let first: Vec<Vec<u8>> = client
        .scan(b"bigscan-", Some(b"bigscan-~"), 7)
        .await
        .expect("a plain scan")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(first, keys[..7]);
    let mut t = client.begin().await.expect("begin");
    let got: Vec<Vec<u8>> = t
        .scan(b"bigscan-", Some(b"bigscan-~"), 100)
        .await
        .expect("a transaction's scan")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(got, keys);
    t.commit().await.expect("commit the read-only transaction");
}
