//! Defects found by an outside review (issue 11), each pinned by a test
//! that failed before its fix: requests cancelled mid-proposal, wounded
//! transactions that kept reading, partial writes, lock-wait timeouts that
//! looked like unknown outcomes, and retries that starved.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pact_client::{Abort, AbortKind, Client, ClientError, ClientOptions};
use pact_common::ShardId;
use pact_proto as pb;
use pact_tests::{fast_tuning, Cluster};

/// A transaction begun over raw gRPC at the coordinator leader (no
/// heartbeats, no client-side checks), and the connection to use for it.
async fn raw_begin(
    c: &Cluster,
) -> (
    pb::txn_client::TxnClient<tonic::transport::Channel>,
    Option<pb::TxnId>,
) {
    let leader = c.wait_coordinator(1, Duration::from_secs(10)).await;
    let addr = c.config.node(leader).unwrap().addr.clone();
    let mut raw = pb::txn_client::TxnClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    // A new leader answers "still recovering" until its recovery (and its
    // first timestamp reservation) is done; the Rust client retries that.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match raw.begin(pb::BeginRequest::default()).await {
            Ok(r) => return (raw, r.into_inner().txn),
            Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) => panic!("begin: {s}"),
        }
    }
}

/// The first `n` keys `prefix0, prefix1, ...` of each shard, by shard.
fn keys_by_shard(client: &Client, prefix: &str, n: usize) -> BTreeMap<ShardId, Vec<Vec<u8>>> {
    let mut by: BTreeMap<ShardId, Vec<Vec<u8>>> = BTreeMap::new();
    for i in 0.. {
        let k = format!("{prefix}{i}").into_bytes();
        let v = by.entry(client.shard_for_key(&k)).or_default();
        if v.len() < n {
            v.push(k);
        }
        if by.len() == 3 && by.values().all(|v| v.len() == n) {
            break;
        }
    }
    by
}

/// Item 1: plain one-shard batches {x, y} from clients whose deadlines
/// (1-3 ms) expire mid-proposal, while other clients read x and y in
/// transactions. A cancelled request used to free its locks while its
/// entry could still commit, so readers saw x != y.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn impatient_plain_writes_never_fracture_transactional_reads() {
    let c = Cluster::transactional().await;
    let client = c.client();
    let by = keys_by_shard(&client, "pair", 2);
    let (x, y) = {
        let v = by.values().next().unwrap();
        (v[0].clone(), v[1].clone())
    };
    client
        .write(vec![
            (x.clone(), Some(b"0".to_vec())),
            (y.clone(), Some(b"0".to_vec())),
        ])
        .await
        .expect("initial pair");

    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(1));
    let mut writers = Vec::new();
    for w in 0..2u64 {
        let impatient = c.client_with(ClientOptions {
            request_timeout: Duration::from_millis(1 + 2 * w),
            retry_for: Duration::from_millis(10),
            ..ClientOptions::default()
        });
        let (x, y, stop, next) = (x.clone(), y.clone(), stop.clone(), next.clone());
        writers.push(tokio::spawn(async move {
            let mut gave_up = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let v = next
                    .fetch_add(1, Ordering::Relaxed)
                    .to_string()
                    .into_bytes();
                let batch = vec![(x.clone(), Some(v.clone())), (y.clone(), Some(v))];
                if impatient.write(batch).await.is_err() {
                    gave_up += 1;
                    // Leave the readers some room on 2 cores.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            gave_up
        }));
    }
    let mut readers = Vec::new();
    for _ in 0..3 {
        let (client, x, y, stop) = (client.clone(), x.clone(), y.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let (mut ok, mut fractured) = (0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut t) = client.begin().await else {
                    continue;
                };
                let r = async {
                    let a = t.get(&x).await?;
                    let b = t.get(&y).await?;
                    Ok::<_, ClientError>((a, b))
                }
                .await;
                let Ok((a, b)) = r else {
                    t.rollback().await;
                    continue;
                };
                if t.commit().await.is_ok() {
                    ok += 1;
                    if a != b {
                        fractured.push((a, b));
                    }
                }
            }
            (ok, fractured)
        }));
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop.store(true, Ordering::Relaxed);
    let mut gave_up = 0;
    for w in writers {
        gave_up += w.await.unwrap();
    }
    let (mut ok, mut fractured) = (0, Vec::new());
    for r in readers {
        let (o, f) = r.await.unwrap();
        ok += o;
        fractured.extend(f);
    }
    assert!(
        gave_up > 0,
        "no writer gave up mid-request: the test proves nothing"
    );
    assert!(ok >= 20, "too few committed reads ({ok}) to mean anything");
    assert!(
        fractured.is_empty(),
        "{} of {ok} committed read transactions saw x != y, e.g. {:?}",
        fractured.len(),
        &fractured[..fractured.len().min(3)]
    );
    // And the pair itself is whole.
    let (a, b) = (client.get(&x).await.unwrap(), client.get(&y).await.unwrap());
    assert_eq!(a, b);
}

/// Item 5: once wounded at one shard, a transaction's reads at other
/// shards fail too: it must never read a value written by the
/// transaction that wounded it after having read the old state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wounded_transaction_reads_nothing_more_anywhere() {
    let c = Cluster::transactional().await;
    let client = c.client();
    let by = keys_by_shard(&client, "acct", 1);
    let mut shards = by.values();
    let (a, b) = (
        shards.next().unwrap()[0].clone(),
        shards.next().unwrap()[0].clone(),
    );
    client
        .write(vec![(a.clone(), Some(b"100".to_vec()))])
        .await
        .unwrap();
    client
        .write(vec![(b.clone(), Some(b"100".to_vec()))])
        .await
        .unwrap();
    let mut old = client.begin().await.expect("begin older");
    let mut young = client.begin().await.expect("begin younger");
    assert!(old.id() < young.id());
    assert_eq!(young.get(&a).await.unwrap().as_deref(), Some(&b"100"[..]));
    // The older transaction takes a from the younger (a wound), moves
    // 10 from a to b, and commits.
    old.get_for_update(&a).await.expect("older wounds younger");
    old.get_for_update(&b).await.unwrap();
    old.put(&a, b"90").await.unwrap();
    old.put(&b, b"110").await.unwrap();
    old.commit().await.expect("older commits");
    // The younger one read a = 100; it must not now read b = 110.
    match young.get(&b).await {
        Err(ClientError::Aborted(m)) => assert_eq!(m.kind, AbortKind::Wounded, "{m}"),
        other => panic!("a wounded transaction read on: {other:?}"),
    }
}

/// Item 9: a lock wait that times out is an abort that names the key and
/// the holder, and the client hears it as such (not as "unknown").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_wait_timeout_is_an_abort_naming_key_and_holder() {
    let c = Cluster::transactional().await;
    let client = c.client();
    let mut holder = client.begin().await.unwrap();
    let mut waiter = client.begin().await.unwrap();
    // The older one holds the key; the younger must wait (not wound).
    holder.get_for_update(b"bob").await.unwrap();
    let started = Instant::now();
    let r = waiter.get_for_update(b"bob").await;
    let waited = started.elapsed();
    match r {
        Err(ClientError::Aborted(m)) => {
            assert_eq!(m.kind, AbortKind::LockTimeout, "{m}");
            assert!(m.reason.contains("lock wait on key 'bob' timed out"), "{m}");
            assert!(
                m.reason.contains(&format!("held by txn {}", holder.id())),
                "{m}"
            );
        }
        other => panic!("expected an abort naming the key, got {other:?}"),
    }
    assert!(waited >= Duration::from_secs(4), "gave up after {waited:?}");
    holder.commit().await.unwrap();
}

/// Item 4: a Write whose ops span shards is all or nothing. Here the
/// second shard refuses its part (the transaction would pass its size
/// limit there) after the first shard took its own: the transaction must
/// abort, never commit with half the request in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_write_leaves_nothing_of_itself_behind() {
    let c = Cluster::transactional().await;
    let client = c.client();
    let by = keys_by_shard(&client, "part", 9);
    let mut shards = by.values();
    let small = shards.next().unwrap()[0].clone();
    let bigs = shards.next().unwrap().clone();
    let (mut raw, txn) = raw_begin(&c).await;
    let put = |k: &[u8], len: usize| pb::WriteOp {
        key: k.to_vec().into(),
        op: Some(pb::write_op::Op::Put(vec![7u8; len].into())),
    };
    let write = |ops: Vec<pb::WriteOp>| pb::TxnWriteRequest {
        txn,
        ops,
        ..Default::default()
    };
    // 5 MiB on the big shard, then one request with a small put on the
    // first shard and 4 MiB more on the big one, past its 8 MiB limit.
    let mib = (1 << 20) - 1024;
    for k in &bigs[..5] {
        raw.write(write(vec![put(k, mib)]))
            .await
            .expect("filling the big shard");
    }
    let mut ops = vec![put(&small, 10)];
    ops.extend(bigs[5..9].iter().map(|k| put(k, mib)));
    let e = raw
        .write(write(ops))
        .await
        .expect_err("the big shard must refuse its part");
    assert!(
        matches!(
            e.code(),
            tonic::Code::Aborted | tonic::Code::InvalidArgument
        ),
        "{e}"
    );
    // The transaction must not see half of the refused request either.
    let seen = raw
        .get(pb::TxnGetRequest {
            txn,
            key: small.clone().into(),
            ..Default::default()
        })
        .await;
    assert!(
        !matches!(&seen, Ok(r) if r.get_ref().found),
        "the refused request's first half is in the transaction"
    );
    let done = raw
        .commit(pb::TxnRequest {
            txn,
            ..Default::default()
        })
        .await;
    let applied = client.get(&small).await.unwrap();
    assert!(
        applied.is_none(),
        "part of a refused write was applied (commit said {done:?})"
    );
}

/// Item 3: a transaction started over after an abort keeps the age of
/// its first attempt, with a fresh id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_transaction_keeps_its_first_age() {
    let c = Cluster::transactional().await;
    let client = c.client();
    let mut seen = Vec::new();
    let r: Result<(), ClientError> = client
        .transaction(|t| {
            seen.push((t.id(), t.priority()));
            let again = seen.len() < 3;
            Box::pin(async move {
                t.get(b"starve").await?;
                if again {
                    return Err(ClientError::Aborted(Abort::new(
                        AbortKind::Conflict,
                        "forced for the test",
                    )));
                }
                Ok(())
            })
        })
        .await;
    r.expect("third attempt commits");
    assert_eq!(seen.len(), 3);
    let first = seen[0].0.ts;
    for (id, prio) in &seen {
        assert_eq!(*prio, first, "attempt {id} lost its age");
    }
    assert!(seen[1].0 != seen[0].0 && seen[2].0 != seen[1].0);
    // A priority from the future is refused.
    let future = pact_common::Timestamp(u64::MAX / 2);
    assert!(matches!(
        client.begin_retry(future).await,
        Err(ClientError::InvalidInput(_))
    ));
}

/// `Client::transaction` and an unknown outcome: one the closure returns
/// of its own (not from a call of the transaction) is passed on after one
/// attempt, since the client cannot tell what it covers; one from the
/// transaction's own read whose answer was lost (its coordinator's leader
/// paused past the request's deadline) starts the transaction over, as no
/// commit was sent: the increment lands exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_read_answer_starts_the_transaction_over_and_it_commits_once() {
    let c = Cluster::transactional().await;
    let client = c.client();
    client.put(b"lost-read", b"0").await.expect("put");

    let mut runs = 0;
    let r: Result<(), ClientError> = client
        .transaction(|t| {
            runs += 1;
            Box::pin(async move {
                t.get(b"lost-read").await?;
                Err(ClientError::Unknown("the closure's own".into()))
            })
        })
        .await;
    assert!(matches!(r, Err(ClientError::Unknown(_))), "{r:?}");
    assert_eq!(runs, 1, "an unknown of the closure's own was retried");

    let leader = c.wait_coordinator(1, Duration::from_secs(10)).await;
    let seen: Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let mut runs = 0;
    let r: Result<i64, ClientError> = client
        .transaction(|t| {
            runs += 1;
            if runs == 1 {
                // The transaction began there; its read will hang.
                c.pause(leader);
            } else {
                c.resume(leader);
            }
            let seen = seen.clone();
            Box::pin(async move {
                let got = t.get(b"lost-read").await;
                if let Err(e) = &got {
                    seen.lock().unwrap().push(format!("{e:?}"));
                }
                let n: i64 = String::from_utf8(got?.unwrap_or_default())
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(-1);
                t.put(b"lost-read", (n + 1).to_string().as_bytes()).await?;
                Ok(n + 1)
            })
        })
        .await;
    c.resume(leader);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(r.as_ref().ok(), Some(&1), "{r:?} (errors seen: {seen:?})");
    assert_eq!(runs, 2, "errors seen: {seen:?}");
    assert!(
        seen.first().is_some_and(|e| e.starts_with("Unknown")),
        "the first read's answer was not lost: {seen:?}"
    );
    let v = client.get(b"lost-read").await.expect("get");
    assert_eq!(v, Some(b"1".to_vec()));
}

/// A one-shot transaction (`Execute`) whose read waits for an older
/// transaction's lock longer than a lease (1.5 s) keeps its lease alive
/// meanwhile: its first attempt reads the value the older one commits,
/// instead of being aborted as abandoned and begun again (its id's
/// timestamp shows which attempt answered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_shot_transaction_waiting_past_its_lease_is_kept_alive() {
    let c = Cluster::transactional().await;
    let client = c.client();
    client.put(b"kept", b"before").await.expect("put");
    let mut holder = client.begin().await.expect("begin holder");
    holder.get_for_update(b"kept").await.expect("holder locks");
    // The coordinator's clock now (an id's timestamp), for comparison.
    let mut probe = client.begin().await.expect("begin probe");
    let now = probe.id().ts;
    probe.rollback().await;
    let waiting = {
        let client = c.client();
        tokio::spawn(async move {
            client
                .execute(
                    Vec::new(),
                    vec![pact_client::Op::Get(b"kept".to_vec())],
                    Vec::new(),
                )
                .await
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    holder.put(b"kept", b"after").await.expect("holder writes");
    holder.commit().await.expect("holder commits");
    let done = waiting.await.expect("execute task").expect("execute");
    assert_eq!(
        done.results,
        vec![(b"kept".to_vec(), Some(b"after".to_vec()))]
    );
    let waited_before_begin = done.txn.ts.millis().saturating_sub(now.millis());
    assert!(
        waited_before_begin < 1000,
        "the answer came from an attempt begun {waited_before_begin} ms after the first: the \
         first was abandoned"
    );
}

/// Item 6: a read inside an open transaction is linearizable too: a
/// deposed (paused, then resumed) leader must not hand the transaction a
/// value its successor has overwritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_serves_no_stale_read_inside_a_transaction() {
    let c = Cluster::start_with_coordinators(3, 1, 3, 3, fast_tuning());
    let nodes = c.participant_ids();
    let shard = ShardId(1);
    let old = c.wait_leader(shard, &nodes, Duration::from_secs(20)).await;
    c.wait_coordinator(1, Duration::from_secs(30)).await;
    let client = c.client();
    client.put(b"k", b"v1").await.expect("put v1");
    client.put(b"j", b"v1").await.expect("put j");
    let addr = c.config.node(old).unwrap().peer_addr.clone();
    let mut raw = pb::participant_client::ParticipantClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    // A live transaction (its client heartbeats, so its coordinator
    // vouches for it), whose reads go straight to the old leader.
    let t = client.begin().await.expect("begin");
    let txn = pb::TxnId {
        group: t.id().group,
        node: t.id().node,
        ts: t.id().ts.0,
    };
    let get = |key: &[u8], first: bool| pb::TxnGetRequest {
        shard_id: shard.0,
        txn: Some(txn),
        key: key.to_vec().into(),
        first,
        ..Default::default()
    };
    // The transaction is known at the old leader (a read of another key).
    let r = raw.txn_get(get(b"j", true)).await.expect("first read");
    assert!(r.get_ref().found);

    c.pause(old);
    let rest: Vec<pact_common::NodeId> = nodes.iter().copied().filter(|n| *n != old).collect();
    let new = c.wait_leader(shard, &rest, Duration::from_secs(20)).await;
    c.client_for_node(new, ClientOptions::default())
        .put(b"k", b"v2")
        .await
        .expect("put v2 on the majority");
    c.resume(old);
    let answer = tokio::time::timeout(Duration::from_secs(5), raw.txn_get(get(b"k", false))).await;
    drop(t);
    // Refusing (or timing out) is fine; a value must be the new one.
    if let Ok(Ok(r)) = answer {
        assert_eq!(
            r.get_ref().value.as_ref(),
            b"v2",
            "deposed leader served a stale read inside a transaction"
        );
    }
}

/// Item 8: the locks of a client that died (no more heartbeats) go within
/// about a lease (1.5 s by default), not after the 10-30 s they used to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_clients_locks_go_within_two_seconds() {
    let c = Cluster::transactional().await;
    let client = c.client();
    // A client that locks a key and dies: raw calls, no heartbeat.
    let (mut raw, txn) = raw_begin(&c).await;
    raw.get(pb::TxnGetRequest {
        txn,
        key: b"orphan".to_vec().into(),
        for_update: true,
        ..Default::default()
    })
    .await
    .expect("dead client locks the key");
    drop(raw);
    let died = Instant::now();
    // A younger transaction waits for it, then gets the key.
    let mut t = client.begin().await.unwrap();
    t.get_for_update(b"orphan")
        .await
        .expect("the orphan lock went");
    let freed = died.elapsed();
    t.commit().await.unwrap();
    assert!(
        freed < Duration::from_millis(2500),
        "a dead client's lock was held {freed:?}"
    );
}

/// Item 8: an interactive transaction that is idle but whose client is
/// alive (it heartbeats) is not killed after 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_but_alive_transaction_lives_past_ten_seconds() {
    let c = Cluster::transactional().await;
    let client = c.client();
    let mut t = client.begin().await.unwrap();
    assert_eq!(t.get_for_update(b"idle").await.unwrap(), None);
    tokio::time::sleep(Duration::from_secs(12)).await;
    t.put(b"idle", b"still here").await.unwrap();
    t.commit().await.expect("an idle, live transaction commits");
    assert_eq!(
        client.get(b"idle").await.unwrap().as_deref(),
        Some(&b"still here"[..])
    );
}

/// Two or more `Commit` calls for one transaction at once (a client that
/// retries a slow commit on another connection, or a proxy that resends):
/// whatever each caller hears must agree with what happened. Before the
/// fix, a second call racing the first could be told "aborted" (its own
/// writes refused at a shard the first had prepared, or its touch finding
/// the transaction committing) while the first committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_of_one_transaction_agree_with_its_outcome() {
    let c = Cluster::transactional().await;
    let client = c.client();
    let by = keys_by_shard(&client, "twice", 1);
    let keys: Vec<Vec<u8>> = by.values().map(|v| v[0].clone()).collect();
    for round in 0..20u32 {
        let (raw, txn) = raw_begin(&c).await;
        let value = format!("round{round}").into_bytes();
        // The writes travel with the commit: every call locks and writes
        // at all three shards before its commit can be handed over.
        let req = pb::TxnRequest {
            txn,
            ops: keys
                .iter()
                .map(|k| pb::WriteOp {
                    key: k.clone().into(),
                    op: Some(pb::write_op::Op::Put(value.clone().into())),
                })
                .collect(),
            ..Default::default()
        };
        let calls: Vec<_> = (0..3)
            .map(|_| {
                let mut raw = raw.clone();
                let req = req.clone();
                tokio::spawn(async move { raw.commit(req).await })
            })
            .collect();
        let mut answers = Vec::new();
        for call in calls {
            answers.push(call.await.unwrap());
        }
        let committed = client.get(&keys[0]).await.unwrap().as_deref() == Some(&value[..]);
        for k in &keys[1..] {
            let v = client.get(k).await.unwrap();
            assert_eq!(
                v.as_deref() == Some(&value[..]),
                committed,
                "round {round}: a fractured commit ({answers:?})"
            );
        }
        for a in &answers {
            let said = match a {
                Ok(r) => r.get_ref().outcome(),
                Err(s) if s.code() == tonic::Code::Aborted => pb::Outcome::Aborted,
                Err(s) => panic!("round {round}: commit failed: {s}"),
            };
            match said {
                pb::Outcome::Committed => assert!(committed, "round {round}: {answers:?}"),
                pb::Outcome::Aborted => assert!(!committed, "round {round}: {answers:?}"),
                other => panic!("round {round}: a commit answered {other:?}: {answers:?}"),
            }
        }
    }
}

/// A `Commit` call dropped by its client before the commit was handed
/// over (here: while its writes wait for an older transaction's lock)
/// leaves the transaction open as it was: a retried commit, sent while
/// the first call still waited, takes it on and commits, rather than
/// waiting for the dropped call's outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_dropped_before_its_hand_over_can_be_retried() {
    let c = Cluster::transactional().await;
    let client = c.client();
    let by = keys_by_shard(&client, "dropped", 1);
    let mut shards = by.values();
    let read = shards.next().unwrap()[0].clone();
    let held = shards.next().unwrap()[0].clone();
    // The older transaction holds `held`.
    let mut older = client.begin().await.unwrap();
    older.get_for_update(&held).await.unwrap();
    let (mut raw, txn) = raw_begin(&c).await;
    raw.get(pb::TxnGetRequest {
        txn,
        key: read.clone().into(),
        ..Default::default()
    })
    .await
    .expect("the younger transaction reads its first shard");
    let req = pb::TxnRequest {
        txn,
        ops: vec![pb::WriteOp {
            key: held.clone().into(),
            op: Some(pb::write_op::Op::Put(b"younger".to_vec().into())),
        }],
        ..Default::default()
    };
    // Its commit waits for `held` at the second shard, and the client
    // gives up on it; meanwhile it has sent the commit again, which waits
    // for the first call's claim and then takes the transaction on.
    let first = tokio::spawn({
        let (mut raw, req) = (raw.clone(), req.clone());
        async move { tokio::time::timeout(Duration::from_millis(400), raw.commit(req)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let retry = tokio::spawn(async move { raw.commit(req).await });
    let first = first.await.unwrap();
    assert!(first.is_err(), "the commit did not wait: {first:?}");
    older.commit().await.unwrap();
    let again = retry
        .await
        .unwrap()
        .expect("the retried commit is answered");
    assert_eq!(
        again.get_ref().outcome(),
        pb::Outcome::Committed,
        "{again:?}"
    );
    assert_eq!(
        client.get(&held).await.unwrap().as_deref(),
        Some(&b"younger"[..])
    );
}

/// A request of a transaction that arrives while or after its commit runs
/// (a raw-gRPC client reading beside its own commit, or late) is not told
/// "aborted" about a transaction that commits: it took no part in the
/// commit, and says so (INVALID_ARGUMENT). Before, one that came after
/// the owner task took the commit heard "unknown transaction" (ABORTED)
/// although the commit went on and committed. A second `Commit` sent
/// beside the first, or late, hears the outcome; a heartbeat after the
/// commit is refused as INVALID_ARGUMENT, not told "aborted".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_beside_its_own_commit_is_never_told_aborted() {
    let c = Cluster::transactional().await;
    let client = c.client();
    let by = keys_by_shard(&client, "beside", 1);
    let keys: Vec<Vec<u8>> = by.values().map(|v| v[0].clone()).collect();
    let read = |txn: Option<pb::TxnId>| pb::TxnGetRequest {
        txn,
        key: keys[0].clone().into(),
        ..Default::default()
    };
    for round in 0..10u32 {
        let (mut raw, txn) = raw_begin(&c).await;
        raw.get(read(txn)).await.expect("the first read");
        let value = format!("round{round}").into_bytes();
        let req = pb::TxnRequest {
            txn,
            ops: keys[1..]
                .iter()
                .map(|k| pb::WriteOp {
                    key: k.clone().into(),
                    op: Some(pb::write_op::Op::Put(value.clone().into())),
                })
                .collect(),
            ..Default::default()
        };
        let commit = tokio::spawn({
            let (mut raw, req) = (raw.clone(), req.clone());
            async move { raw.commit(req).await }
        });
        // Reads sent beside the commit, at staggered moments: before its
        // hand-over, while it is handed over, after the owner took it.
        let beside: Vec<_> = (0..6u64)
            .map(|i| {
                let mut raw = raw.clone();
                let req = read(txn);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_micros(300 * i)).await;
                    raw.get(req).await
                })
            })
            .collect();
        let duplicate = tokio::spawn({
            let (mut raw, req) = (raw.clone(), req.clone());
            async move {
                tokio::time::sleep(Duration::from_micros(500)).await;
                raw.commit(req).await
            }
        });
        let outcome = commit.await.unwrap().expect("the commit is answered");
        assert_eq!(outcome.get_ref().outcome(), pb::Outcome::Committed);
        let duplicate = duplicate
            .await
            .unwrap()
            .expect("a second commit beside the first is answered");
        assert_eq!(
            duplicate.get_ref().outcome(),
            pb::Outcome::Committed,
            "round {round}"
        );
        for (i, r) in beside.into_iter().enumerate() {
            match r.await.unwrap() {
                Ok(_) => {}
                Err(s) => assert_eq!(
                    s.code(),
                    tonic::Code::InvalidArgument,
                    "round {round}, read {i} beside a commit that committed: {s}"
                ),
            }
        }
        let late = raw.get(read(txn)).await;
        match late {
            Err(s) if s.code() == tonic::Code::InvalidArgument => {}
            other => panic!("round {round}: a read after the commit: {other:?}"),
        }
        let beat = raw
            .keepalive(pb::TxnRequest {
                txn,
                ..Default::default()
            })
            .await;
        match beat {
            Err(s) if s.code() == tonic::Code::InvalidArgument => {}
            other => panic!("round {round}: a heartbeat after the commit: {other:?}"),
        }
        let again = raw.commit(req).await.expect("a late second commit");
        assert_eq!(again.get_ref().outcome(), pb::Outcome::Committed);
        assert_eq!(
            client.get(&keys[1]).await.unwrap().as_deref(),
            Some(&value[..])
        );
    }
}

/// A request of a transaction that fails at a shard beside its own
/// prepare (here a read whose lock wait runs out while the transaction is
/// prepared, its decision held back by the `decision-delay` hook) leaves
/// the prepare's locks in place until the decision. Before, the lock
/// wait's timeout freed every lock of the transaction, prepared or not: a
/// later transaction read the key the prepared one was about to write,
/// the old value, and could have overwritten the commit (a lost update).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_timing_out_beside_its_prepare_keeps_the_prepares_locks() {
    let config =
        pact_common::ClusterConfig::local_with_coordinators(3, 3, 3, 3, 7001).expect("config");
    let mut c = Cluster::create(config, fast_tuning());
    for id in c.coordinator_ids(1) {
        c.set_env(id, "PACT_FAULTS", "decision-delay");
        c.set_env(id, "PACT_DECISION_DELAY_MS", "8000");
    }
    c.start_all();
    c.wait_ready(Duration::from_secs(30)).await;
    let client = c.client();
    let by = keys_by_shard(&client, "beside-prepare", 2);
    let mut shards = by.values();
    let first = shards.next().unwrap();
    let (a, k) = (first[0].clone(), first[1].clone());
    let b = shards.next().unwrap()[0].clone();
    // The older transaction holds `k`.
    let mut older = client.begin().await.unwrap();
    older.get_for_update(&k).await.unwrap();
    let (raw, txn) = raw_begin(&c).await;
    for key in [&a, &b] {
        raw.clone()
            .get(pb::TxnGetRequest {
                txn,
                key: key.clone().into(),
                for_update: true,
                ..Default::default()
            })
            .await
            .expect("the younger transaction locks a and b");
    }
    // Its read of `k` waits for the older transaction, up to a lock wait.
    let waiting = tokio::spawn({
        let mut raw = raw.clone();
        let req = pb::TxnGetRequest {
            txn,
            key: k.clone().into(),
            ..Default::default()
        };
        async move { raw.get(req).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Its commit prepares at both shards, then the hook holds the
    // decision for 8 s: the read's lock wait (5 s) runs out meanwhile.
    let commit = tokio::spawn({
        let mut raw = raw.clone();
        let req = pb::TxnRequest {
            txn,
            ops: [&a, &b]
                .iter()
                .map(|key| pb::WriteOp {
                    key: (*key).clone().into(),
                    op: Some(pb::write_op::Op::Put(b"prepared".to_vec().into())),
                })
                .collect(),
            ..Default::default()
        };
        async move { raw.commit(req).await }
    });
    let read = waiting.await.unwrap();
    assert!(read.is_err(), "the read beside the prepare: {read:?}");
    assert!(!commit.is_finished(), "the decision came early");
    // A third transaction wants `a`: it must wait for the decision and
    // read the prepared transaction's write, not the value before it.
    let mut third = client.begin().await.unwrap();
    let seen = third.get_for_update(&a).await;
    let outcome = commit.await.unwrap().expect("the commit is answered");
    assert_eq!(outcome.get_ref().outcome(), pb::Outcome::Committed);
    assert_eq!(
        seen.expect("the third transaction's read").as_deref(),
        Some(&b"prepared"[..]),
        "a read of a key locked by a prepared transaction went through before its decision"
    );
    third.rollback().await;
    older.rollback().await;
}
