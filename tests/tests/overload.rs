//! Backpressure (issue 13, item 3): a cluster configured with tiny
//! admission limits, flooded with far more transactions and reads than
//! the limits admit, sheds the excess with OVERLOADED, loses no admitted
//! work, leaks no admission place, and serves normally afterwards.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pact_client::{Client, ClientError, ClientOptions};
use pact_common::{ClusterConfig, Limits};
use pact_tests::{fast_tuning, Cluster};

const ACCOUNTS: u64 = 16;
const BALANCE: i64 = 100;

fn account(i: u64) -> Vec<u8> {
    format!("acct{i:02}").into_bytes()
}

fn balance(v: Option<Vec<u8>>) -> Result<i64, ClientError> {
    let v = v.ok_or_else(|| ClientError::Internal("account missing".into()))?;
    String::from_utf8_lossy(&v)
        .parse()
        .map_err(|e| ClientError::Internal(format!("bad balance: {e}")))
}

/// Move 1 from `from` to `to`, in one interactive transaction.
async fn transfer(client: &Client, from: u64, to: u64) -> Result<(), ClientError> {
    let mut t = client.begin().await?;
    let moved = async {
        let a = balance(t.get_for_update(&account(from)).await?)?;
        let b = balance(t.get_for_update(&account(to)).await?)?;
        t.put(&account(from), (a - 1).to_string().as_bytes())
            .await?;
        t.put(&account(to), (b + 1).to_string().as_bytes()).await
    }
    .await;
    match moved {
        Ok(()) => t.commit().await,
        Err(e) => {
            t.rollback().await;
            Err(e)
        }
    }
}

#[derive(Default)]
struct Tally {
    committed: AtomicU64,
    overloaded: AtomicU64,
    aborted: AtomicU64,
    unknown: AtomicU64,
    unavailable: AtomicU64,
    reads: AtomicU64,
    reads_overloaded: AtomicU64,
    reads_aborted: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_is_shed_with_overloaded_and_loses_nothing() {
    // One participant node (two shards) and one coordinator node.
    let mut config = ClusterConfig::local_with_coordinators(1, 2, 1, 1, 7001).unwrap();
    config.limits = Limits {
        max_open_txns: 4,
        max_in_flight_requests: 6,
        coordinator_queue: 8,
        ..Limits::default()
    };
    let mut c = Cluster::create(config, fast_tuning());
    c.start_all();
    c.wait_ready(Duration::from_secs(30)).await;
    let client = c.client();
    for i in 0..ACCOUNTS {
        client
            .put(&account(i), BALANCE.to_string().as_bytes())
            .await
            .unwrap();
    }

    // The flood: 48 transfer loops and 48 read loops for 4 s, from a
    // client that gives up on a refusal after 300 ms of retries.
    let flood = c.client_with(ClientOptions {
        retry_for: Duration::from_millis(300),
        ..ClientOptions::default()
    });
    let tally = Arc::new(Tally::default());
    let until = Instant::now() + Duration::from_secs(4);
    let mut tasks = Vec::new();
    for id in 0..48u64 {
        let (flood, tally) = (flood.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = id;
            while Instant::now() < until {
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let from = (n >> 33) % ACCOUNTS;
                let to = (from + 1 + (n >> 17) % (ACCOUNTS - 1)) % ACCOUNTS;
                let counter = match transfer(&flood, from, to).await {
                    Ok(()) => &tally.committed,
                    Err(ClientError::Overloaded(_)) => &tally.overloaded,
                    Err(ClientError::Aborted(_)) => &tally.aborted,
                    Err(ClientError::Unknown(_)) => &tally.unknown,
                    Err(ClientError::Unavailable(_)) => &tally.unavailable,
                    Err(e) => panic!("transfer {from} -> {to}: {e}"),
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for id in 0..48u64 {
        let (flood, tally) = (flood.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = id;
            while Instant::now() < until {
                i = (i + 7) % ACCOUNTS;
                match flood.get(&account(i)).await {
                    Ok(v) => {
                        balance(v).unwrap();
                        tally.reads.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(ClientError::Overloaded(_)) => {
                        tally.reads_overloaded.fetch_add(1, Ordering::Relaxed);
                    }
                    // A plain read behind a transfer's lock waits for it,
                    // and is refused if it waits too long.
                    Err(ClientError::Aborted(_)) => {
                        tally.reads_aborted.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => panic!("read: {e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let summary = format!(
        "transfers: {} committed, {} overloaded, {} aborted, {} unknown, {} unavailable; \
         reads: {} served, {} overloaded, {} aborted",
        n(&tally.committed),
        n(&tally.overloaded),
        n(&tally.aborted),
        n(&tally.unknown),
        n(&tally.unavailable),
        n(&tally.reads),
        n(&tally.reads_overloaded),
        n(&tally.reads_aborted),
    );
    eprintln!("{summary}");
    assert!(
        n(&tally.overloaded) > 0,
        "no transaction was refused: {summary}"
    );
    assert!(
        n(&tally.reads_overloaded) > 0,
        "no read was refused: {summary}"
    );
    assert!(n(&tally.committed) > 0, "nothing was admitted: {summary}");
    assert!(n(&tally.reads) > 0, "no read was served: {summary}");

    // No place leaked: once the flood's leftovers are settled (sessions of
    // refused commits rolled back, unknown outcomes decided), exactly
    // `max_open_txns` transactions open, and the next is refused.
    let patient = c.client();
    let impatient = c.client_with(ClientOptions {
        retry_for: Duration::from_millis(200),
        ..ClientOptions::default()
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut open = Vec::new();
    loop {
        while open.len() < 4 {
            match impatient.begin().await {
                Ok(t) => open.push(t),
                Err(ClientError::Overloaded(_)) => break,
                Err(e) => panic!("begin after the flood: {e}"),
            }
        }
        if open.len() == 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} transactions could open 20 s after the flood",
            open.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    match impatient.begin().await {
        Err(ClientError::Overloaded(m)) => assert!(m.contains("max_open_txns"), "{m}"),
        Ok(_) => panic!("a fifth transaction opened past max_open_txns = 4"),
        Err(e) => panic!("the fifth begin: {e}"),
    }
    for mut t in open {
        t.rollback().await;
    }

    // Nothing admitted was lost or applied twice: transfers keep the total.
    let mut t = patient.begin().await.unwrap();
    let mut total = 0;
    for i in 0..ACCOUNTS {
        total += balance(t.get(&account(i)).await.unwrap()).unwrap();
    }
    t.commit().await.unwrap();
    assert_eq!(total, BALANCE * ACCOUNTS as i64, "{summary}");

    // And the cluster serves normally.
    transfer(&patient, 0, 1).await.unwrap();
    patient.put(b"after", b"flood").await.unwrap();
    assert_eq!(
        patient.get(b"after").await.unwrap().as_deref(),
        Some(&b"flood"[..])
    );
}

/// A hot key's queue is bounded: with room for 2 waiters, plain writes
/// beyond them are refused at once with OVERLOADED instead of waiting (up
/// to the 5 s lock wait) behind the transaction that holds the key; the
/// admitted ones go through once it lets go, and nothing is left locked.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hot_key_queues_only_so_many_waiters() {
    let mut config = ClusterConfig::local_combined(3, 3, 3, 7001).unwrap();
    config.limits = Limits {
        max_waiters_per_key: 2,
        ..Limits::default()
    };
    let mut c = Cluster::create(config, fast_tuning());
    c.start_all();
    c.wait_ready(Duration::from_secs(30)).await;
    let client = c.client();
    client.put(b"hot", b"0").await.expect("put");
    let mut holder = client.begin().await.expect("begin");
    holder.get_for_update(b"hot").await.expect("lock hot");
    // Clients that give up at the first refusal, so refusals are seen.
    let impatient = c.client_with(ClientOptions {
        overload_retry_for: Some(Duration::ZERO),
        ..ClientOptions::default()
    });
    let started = Instant::now();
    let writes = (0..6).map(|i| {
        let client = impatient.clone();
        tokio::spawn(async move {
            let r = client.put(b"hot", format!("w{i}").as_bytes()).await;
            (r, Instant::now())
        })
    });
    let writes: Vec<_> = writes.collect();
    // Let the writers queue, then let the key go.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    holder.rollback().await;
    let mut refused = 0;
    let mut done = 0;
    for w in writes {
        let (r, at) = w.await.expect("task");
        match r {
            Ok(_) => done += 1,
            Err(ClientError::Overloaded(m)) => {
                assert!(m.contains("max_waiters_per_key"), "{m}");
                assert!(
                    at.duration_since(started) < Duration::from_millis(1500),
                    "a refusal waited for the key"
                );
                refused += 1;
            }
            Err(e) => panic!("unexpected error: {e:?}"),
        }
    }
    assert!(refused >= 1, "nobody was refused ({done} done)");
    assert!(
        done >= 2,
        "the queued writers did not get through ({refused} refused)"
    );
    // Nothing stays locked or queued: the key takes a write at once.
    let t = Instant::now();
    client.put(b"hot", b"after").await.expect("put after");
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(
        client.get(b"hot").await.expect("get").as_deref(),
        Some(&b"after"[..])
    );
}
