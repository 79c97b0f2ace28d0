//! What the bench drives: a small trait so another store (etcd, say) can
//! be measured with the same workloads and report.

use std::future::Future;

use anyhow::{anyhow, Context};
use pact_client::{Client, ClientError, ClientOptions};
use pact_common::ClusterConfig;

/// The operations the workloads need. Every method is one measured
/// operation; errors are counted as failures, not retried by the bench.
pub trait Backend: Send + Sync + 'static {
    /// Read one record.
    fn get(&self, key: &[u8]) -> impl Future<Output = anyhow::Result<Option<Vec<u8>>>> + Send;
    /// Insert or overwrite one record.
    fn put(&self, key: &[u8], value: &[u8]) -> impl Future<Output = anyhow::Result<()>> + Send;
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
}

/// Backends that `--backend` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    Pact,
}

/// Pact through `pact-client`: plain `get` / `put` / `scan` are
/// linearizable single-key operations at the shard leader; transfers are
/// `Client::transaction` (retried on abort by the client, up to its limit).
#[derive(Clone, Debug)]
pub struct PactBackend {
    client: Client,
}

impl PactBackend {
    pub fn new(config: &ClusterConfig, opts: ClientOptions) -> PactBackend {
        PactBackend {
            client: Client::new(config, opts),
        }
    }
}

fn parse_balance(key: &[u8], v: Option<Vec<u8>>) -> Result<i64, ClientError> {
    let name = String::from_utf8_lossy(key);
    let v = v.ok_or_else(|| {
        ClientError::InvalidInput(format!(
            "account {name} does not exist; run `bench load --workload txn` first"
        ))
    })?;
    std::str::from_utf8(&v)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| ClientError::InvalidInput(format!("account {name} is not a number")))
}

impl Backend for PactBackend {
    async fn get(&self, key: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self.client.get(key).await?)
    }

    async fn put(&self, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        Ok(self.client.put(key, value).await?)
    }

    async fn scan(&self, start: &[u8], end: &[u8], limit: u32) -> anyhow::Result<usize> {
        Ok(self.client.scan(start, Some(end), limit).await?.len())
    }

    async fn txn_transfer(&self, keys: &[Vec<u8>], amount: i64) -> anyhow::Result<()> {
        if keys.len() < 2 {
            return Err(anyhow!("a transfer needs at least two accounts"));
        }
        self.client
            .transaction(|t| {
                let keys = keys.to_vec();
                Box::pin(async move {
                    let mut balances = Vec::with_capacity(keys.len());
                    for k in &keys {
                        let v = t.get_for_update(k).await?;
                        balances.push(parse_balance(k, v)?);
                    }
                    let others = (keys.len() - 1) as i64;
                    balances[0] -= amount * others;
                    for b in balances.iter_mut().skip(1) {
                        *b += amount;
                    }
                    for (k, b) in keys.iter().zip(&balances) {
                        t.put(k, b.to_string().as_bytes()).await?;
                    }
                    Ok(())
                })
            })
            .await
            .context("transfer")
    }
}
