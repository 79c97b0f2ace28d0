//! Bank transfers for process-level tests that run faults or operator
//! actions under load: accounts `acct-<i>`, concurrent transfer workers
//! that leave a marker key per transfer, and the check that the balances
//! match exactly the transfers whose marker exists (every acknowledged
//! one included) and that no money was created or destroyed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pact_client::{Client, ClientError};

/// Account `i`'s key.
pub fn account(i: usize) -> Vec<u8> {
    format!("acct-{i}").into_bytes()
}

/// A balance as stored (a decimal number).
pub fn parse(v: Option<Vec<u8>>) -> Result<i64, ClientError> {
    let v = v.ok_or_else(|| ClientError::InvalidInput("missing account".into()))?;
    std::str::from_utf8(&v)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ClientError::InvalidInput("bad balance".into()))
}

/// A plain read, retried while a prepared transaction still holds the key
/// (its resolution is bounded: the participant asks the coordinator).
pub async fn read_settled(client: &Client, key: &[u8]) -> Option<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.get(key).await {
            Ok(v) => return v,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!(
                "key {} stayed unreadable (in doubt?): {e}",
                String::from_utf8_lossy(key)
            ),
        }
    }
}

/// One transfer tried: (id, from, to, amount, acknowledged).
pub type Transfer = (u64, usize, usize, i64, bool);

/// `accounts` accounts holding `initial` each, written in one transaction.
pub async fn open_accounts(client: &Client, accounts: usize, initial: i64) {
    let mut t = client.begin().await.expect("begin");
    for i in 0..accounts {
        t.put(&account(i), initial.to_string().as_bytes())
            .await
            .expect("init");
    }
    t.commit().await.expect("init commit");
}

/// `workers` tasks making random transfers between `accounts` accounts
/// (seeded by `seed`) until `stop`, each with a marker key `xfer-<id>`; an
/// error after the client's retries is logged as not acknowledged (the
/// marker tells later whether it happened).
pub fn spawn_transfers(
    clients: Vec<Client>,
    accounts: usize,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Transfer>>> {
    let seq = Arc::new(AtomicU64::new(0));
    clients
        .into_iter()
        .enumerate()
        .map(|(w, client)| {
            let (stop, seq) = (stop.clone(), seq.clone());
            tokio::spawn(async move {
                let mut log = Vec::new();
                let mut n = seed + w as u64;
                while !stop.load(Ordering::SeqCst) {
                    n = n
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let from = (n >> 33) as usize % accounts;
                    let to = (from + 1 + (n >> 40) as usize % (accounts - 1)) % accounts;
                    let amount = 1 + (n >> 50) as i64 % 20;
                    let id = seq.fetch_add(1, Ordering::SeqCst);
                    let marker = format!("xfer-{id}").into_bytes();
                    // Every other transfer reads both accounts in the
                    // request that opens each attempt.
                    let reads = if id % 2 == 0 {
                        vec![account(from), account(to)]
                    } else {
                        Vec::new()
                    };
                    let r = client
                        .transaction_reading(&reads, true, |t, read| {
                            let marker = marker.clone();
                            Box::pin(async move {
                                let (a, b) = match read.as_slice() {
                                    [a, b] => (parse(a.clone())?, parse(b.clone())?),
                                    _ => (
                                        parse(t.get_for_update(&account(from)).await?)?,
                                        parse(t.get_for_update(&account(to)).await?)?,
                                    ),
                                };
                                if a < amount {
                                    return Ok(false);
                                }
                                t.put(&account(from), (a - amount).to_string().as_bytes())
                                    .await?;
                                t.put(&account(to), (b + amount).to_string().as_bytes())
                                    .await?;
                                t.put(&marker, format!("{from}:{to}:{amount}").as_bytes())
                                    .await?;
                                Ok(true)
                            })
                        })
                        .await;
                    match r {
                        Ok(true) => log.push((id, from, to, amount, true)),
                        Ok(false) => {}
                        Err(_) => log.push((id, from, to, amount, false)),
                    }
                }
                log
            })
        })
        .collect()
}

/// What [`check`] found.
#[derive(Debug)]
pub struct Checked {
    pub acknowledged: usize,
    /// Not acknowledged (unknown or aborted after retries).
    pub maybe: usize,
    /// Transfers whose marker exists.
    pub happened: usize,
}

/// Every acknowledged transfer has its marker, each balance is the initial
/// one moved by exactly the transfers whose marker exists, and the total
/// is unchanged. Reading a marker also proves it is not stuck in doubt.
pub async fn check(client: &Client, log: &[Transfer], accounts: usize, initial: i64) -> Checked {
    let mut expected: BTreeMap<usize, i64> = (0..accounts).map(|i| (i, initial)).collect();
    let (mut acknowledged, mut maybe, mut happened) = (0, 0, 0);
    for (id, from, to, amount, ok) in log {
        let marker = read_settled(client, format!("xfer-{id}").as_bytes()).await;
        if *ok {
            acknowledged += 1;
            assert!(marker.is_some(), "acknowledged transfer {id} is missing");
        } else {
            maybe += 1;
        }
        if marker.is_some() {
            happened += 1;
            *expected.get_mut(from).expect("account") -= amount;
            *expected.get_mut(to).expect("account") += amount;
        }
    }
    let mut total = 0;
    for i in 0..accounts {
        let v = parse(read_settled(client, &account(i)).await).expect("balance");
        assert!(v >= 0, "account {i} is negative: {v}");
        assert_eq!(
            v, expected[&i],
            "account {i} does not match the committed transfers"
        );
        total += v;
    }
    assert_eq!(
        total,
        initial * accounts as i64,
        "money was created or destroyed"
    );
    Checked {
        acknowledged,
        maybe,
        happened,
    }
}
