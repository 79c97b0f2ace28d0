//! What the bench drives: a small trait so another store (etcd, see
//! [`crate::etcd`]) can be measured with the same workloads and report.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, Context};
use pact_client::{Client, ClientError, ClientOptions, Mutation};
use pact_common::{ClusterConfig, ShardId};

/// The operations the workloads need. Every method is one measured
/// operation; errors are counted as failures, not retried by the bench.
pub trait Backend: Send + Sync + 'static {
    /// Read one record.
    fn get(&self, key: &[u8]) -> impl Future<Output = anyhow::Result<Option<Vec<u8>>>> + Send;
    /// Insert or overwrite one record.
    fn put(&self, key: &[u8], value: &[u8]) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Insert or overwrite several records (a load's `--batch`), in as
    /// few round trips as the store allows. Not one atomic write: a
    /// failure may leave some of the records written (the load counts the
    /// whole batch as failed).
    fn put_batch(
        &self,
        records: &[(Vec<u8>, Vec<u8>)],
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Read up to `limit` records from `start` (inclusive) to `end`
    /// (exclusive); returns how many were read.
    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        limit: u32,
    ) -> impl Future<Output = anyhow::Result<usize>> + Send;
    /// Atomically move `amount` from `keys[0]` to each of `keys[1..]`
    /// (balances are decimal integers). Missing accounts are an error.
    fn txn_transfer(
        &self,
        keys: &[Vec<u8>],
        amount: i64,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// How many times a transfer was started over after an abort or a
    /// failed optimistic commit, in total since the backend was made.
    /// A transfer counts once in the report whatever its retries; this
    /// says how much contention there was.
    fn txn_retries(&self) -> u64 {
        0
    }
}

/// Backends that `--backend` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    Pact,
    Etcd,
}

/// Pact through `pact-client`: plain `get` / `put` / `scan` are
/// linearizable single-key operations at the shard leader; transfers are
/// `Client::transaction` (retried on abort by the client, up to its limit).
///
/// With several clients (`--clients`), operations go to them in turn: each
/// has its own connection to every node, as independent client processes
/// would (one connection carries at most 256 requests at once, so one
/// client alone cannot offer a node more than that).
#[derive(Clone, Debug)]
pub struct PactBackend {
    clients: Arc<Vec<Client>>,
    next: Arc<AtomicU64>,
}

impl PactBackend {
    pub fn new(config: &ClusterConfig, opts: ClientOptions) -> PactBackend {
        Self::with_clients(config, opts, 1)
    }

    /// `n` independent clients (at least one), used in turn.
    pub fn with_clients(config: &ClusterConfig, opts: ClientOptions, n: usize) -> PactBackend {
        PactBackend {
            clients: Arc::new(
                (0..n.max(1))
                    .map(|_| Client::new(config, opts.clone()))
                    .collect(),
            ),
            next: Arc::new(AtomicU64::new(0)),
        }
    }

    fn client(&self) -> &Client {
        let i = self.next.fetch_add(1, Ordering::Relaxed) as usize % self.clients.len();
        &self.clients[i]
    }
}

/// A balance: a decimal integer. Missing accounts and other values are
/// errors that name the account.
pub(crate) fn parse_balance(key: &[u8], v: Option<Vec<u8>>) -> Result<i64, String> {
    let name = String::from_utf8_lossy(key);
    let v = v.ok_or_else(|| {
        format!("account {name} does not exist; run `bench load --workload txn` first")
    })?;
    std::str::from_utf8(&v)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| format!("account {name} is not a number"))
}

/// Move `amount` from `balances[0]` to each of the others.
pub(crate) fn apply_transfer(balances: &mut [i64], amount: i64) -> Result<(), String> {
    let others = i64::try_from(balances.len().saturating_sub(1)).unwrap_or(i64::MAX);
    let overflow = || "a balance would overflow".to_string();
    let (first, rest) = balances
        .split_first_mut()
        .ok_or_else(|| "a transfer needs at least two accounts".to_string())?;
    *first = amount
        .checked_mul(others)
        .and_then(|total| first.checked_sub(total))
        .ok_or_else(overflow)?;
    for b in rest {
        *b = b.checked_add(amount).ok_or_else(overflow)?;
    }
    Ok(())
}

impl Backend for PactBackend {
    async fn get(&self, key: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self.client().get(key).await?)
    }

    async fn put(&self, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        Ok(self.client().put(key, value).await?)
    }

    /// One atomic single-shard write per shard the records fall on (one
    /// Raft round each, one-phase), all shards at once.
    async fn put_batch(&self, records: &[(Vec<u8>, Vec<u8>)]) -> anyhow::Result<()> {
        let client = self.client();
        let mut by_shard: BTreeMap<ShardId, Vec<Mutation>> = BTreeMap::new();
        for (k, v) in records {
            by_shard
                .entry(client.shard_for_key(k))
                .or_default()
                .push((k.clone(), Some(v.clone())));
        }
        futures::future::try_join_all(by_shard.into_values().map(|b| client.write(b))).await?;
        Ok(())
    }

    async fn scan(&self, start: &[u8], end: &[u8], limit: u32) -> anyhow::Result<usize> {
        Ok(self.client().scan(start, Some(end), limit).await?.len())
    }

    async fn txn_transfer(&self, keys: &[Vec<u8>], amount: i64) -> anyhow::Result<()> {
        if keys.len() < 2 {
            return Err(anyhow!("a transfer needs at least two accounts"));
        }
        // The accounts are read, locked, in the request that opens each
        // attempt: two requests per attempt (begin with reads, commit).
        self.client()
            .transaction_reading(keys, true, |t, values| {
                let keys = keys.to_vec();
                Box::pin(async move {
                    let mut balances = Vec::with_capacity(keys.len());
                    for (k, v) in keys.iter().zip(values) {
                        balances.push(parse_balance(k, v).map_err(ClientError::InvalidInput)?);
                    }
                    apply_transfer(&mut balances, amount).map_err(ClientError::InvalidInput)?;
                    for (k, b) in keys.iter().zip(&balances) {
                        t.put(k, b.to_string().as_bytes()).await?;
                    }
                    Ok(())
                })
            })
            .await
            .context("transfer")
    }

    /// Attempts of the transfer beyond the first, each after an abort or
    /// a refused begin (`Client::restarts`: the transfers are the only
    /// transactions the bench runs).
    fn txn_retries(&self) -> u64 {
        self.clients.iter().map(Client::restarts).sum()
    }
}
