//! The etcd v3 backend (`--backend etcd --etcd-endpoints URL,...`), so the
//! same workloads and report measure etcd next to Pact.
//!
//! One gRPC connection per endpoint; operations go to the endpoints in
//! turn (etcd forwards writes to its leader and serves linearizable reads
//! through a ReadIndex round, whichever member receives them).
//!
//! - get: `Range` on the key (linearizable, etcd's default);
//! - put: `Put`;
//! - scan: `Range [start, end)` with a limit;
//! - transfer: optimistic, as etcd's own STM does it: read every account
//!   with `Range` (one after another, remembering each `mod_revision`),
//!   compute the new balances, then one `Txn` that compares every
//!   `mod_revision` with the one read and puts the balances if they all
//!   still match. A failed compare (another transfer got there first)
//!   starts over after a jittered backoff, up to
//!   [`pact_client::MAX_ATTEMPTS`] attempts, as `Client::transaction`
//!   does for Pact; each start-over is counted in
//!   [`Backend::txn_retries`].
//!
//! Reads are retried on another endpoint while an endpoint is unavailable
//! (until `retry_for`); writes are not retried, as a write whose answer
//! was lost may have been applied.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use rand::Rng;
use tonic::transport::{Channel, Endpoint};

use crate::backend::{apply_transfer, parse_balance, Backend};
use crate::UsageError;

/// Code generated from `bench/proto/etcd_kv.proto`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("etcdserverpb");
}

use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::kv_client::KvClient;
use pb::maintenance_client::MaintenanceClient;
use pb::request_op::Request;

/// etcd's default `--max-txn-ops`: the most operations one `Txn` may hold.
const ETCD_MAX_TXN_OPS: usize = 128;

const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// How long connecting and the first `Status` call may take per endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Connection settings.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Longest time one call may take, and how long reads keep retrying
    /// while an endpoint is unavailable.
    pub retry_for: Duration,
}

struct Member {
    url: String,
    channel: Channel,
}

/// etcd through its v3 gRPC API.
pub struct EtcdBackend {
    members: Vec<Member>,
    next: AtomicUsize,
    opts: EtcdOptions,
    retries: AtomicU64,
    version: String,
}

impl std::fmt::Debug for EtcdBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdBackend")
            .field(
                "endpoints",
                &self.members.iter().map(|m| &m.url).collect::<Vec<_>>(),
            )
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// Split `--etcd-endpoints` (comma-separated) into URLs; `host:port`
/// gets `http://`. TLS is not supported.
pub fn parse_endpoints(list: &str) -> Result<Vec<String>, UsageError> {
    let mut out = Vec::new();
    for raw in list.split(',') {
        let e = raw.trim();
        if e.is_empty() {
            continue;
        }
        if e.starts_with("https://") {
            return Err(UsageError(format!(
                "--etcd-endpoints {e}: TLS is not supported; use http://"
            )));
        }
        let url = if e.starts_with("http://") {
            e.to_string()
        } else if e.contains("://") {
            return Err(UsageError(format!(
                "--etcd-endpoints {e}: expected http://HOST:PORT or HOST:PORT"
            )));
        } else {
            format!("http://{e}")
        };
        if Endpoint::from_shared(url.clone()).is_err() {
            return Err(UsageError(format!(
                "--etcd-endpoints {e}: not a valid address"
            )));
        }
        out.push(url);
    }
    if out.is_empty() {
        return Err(UsageError(
            "--etcd-endpoints: give at least one endpoint, e.g. http://127.0.0.1:2379".into(),
        ));
    }
    Ok(out)
}

fn status_error(url: &str, s: &tonic::Status) -> anyhow::Error {
    if s.message().is_empty() {
        anyhow!("etcd {url}: {:?}", s.code())
    } else {
        anyhow!("etcd {url}: {:?}: {}", s.code(), s.message())
    }
}

/// `d` plus up to `d` more, so transfers that collided do not collide
/// again (the same backoff as `Client::transaction`).
fn jitter(d: Duration) -> Duration {
    let span = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    let extra = rand::rng().random_range(0..=span);
    d + Duration::from_micros(extra)
}

impl EtcdBackend {
    /// Connect to every endpoint and ask each for its status, so an
    /// unreachable or non-etcd endpoint fails here, clearly, before the
    /// run starts.
    pub async fn connect(urls: &[String], opts: EtcdOptions) -> anyhow::Result<EtcdBackend> {
        if urls.is_empty() {
            return Err(UsageError("--etcd-endpoints: give at least one endpoint".into()).into());
        }
        let mut members = Vec::new();
        let mut version = String::new();
        for url in urls {
            let channel = Endpoint::from_shared(url.clone())
                .map_err(|e| UsageError(format!("--etcd-endpoints {url}: {e}")))?
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(opts.retry_for)
                .tcp_nodelay(true)
                .connect_lazy();
            let mut maintenance = MaintenanceClient::new(channel.clone());
            let call = maintenance.status(pb::StatusRequest {});
            let status = match tokio::time::timeout(CONNECT_TIMEOUT, call).await {
                Ok(Ok(r)) => r.into_inner(),
                Ok(Err(s)) => {
                    return Err(status_error(url, &s)
                        .context(format!("cannot reach etcd at {url} (is it running?)")))
                }
                Err(_) => {
                    return Err(anyhow!(
                        "cannot reach etcd at {url}: no answer within {CONNECT_TIMEOUT:?}"
                    ))
                }
            };
            if version.is_empty() {
                version = status.version;
            }
            members.push(Member {
                url: url.clone(),
                channel,
            });
        }
        Ok(EtcdBackend {
            members,
            next: AtomicUsize::new(0),
            opts,
            retries: AtomicU64::new(0),
            version,
        })
    }

    /// The server version the first endpoint reported.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The next endpoint in turn (`connect` never builds an empty list).
    fn member(&self) -> &Member {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.members.len();
        &self.members[i]
    }

    fn kv(&self, m: &Member) -> KvClient<Channel> {
        KvClient::new(m.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// A `Range`, retried on the next endpoint while endpoints are
    /// unavailable (a read is safe to repeat).
    async fn range(&self, req: pb::RangeRequest) -> anyhow::Result<pb::RangeResponse> {
        self.read_retrying(|mut kv| {
            let req = req.clone();
            async move { kv.range(req).await }
        })
        .await
    }

    /// A read (`call` with a member's client), retried on the next
    /// endpoint while endpoints are unavailable, up to `retry_for`.
    async fn read_retrying<T, F, Fut>(&self, call: F) -> anyhow::Result<T>
    where
        F: Fn(KvClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = Instant::now() + self.opts.retry_for;
        let mut backoff = Duration::from_millis(10);
        loop {
            let m = self.member();
            match call(self.kv(m)).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                    tracing::debug!("etcd {}: {s}; retrying", m.url);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
                Err(s) => return Err(status_error(&m.url, &s)),
            }
        }
    }

    /// Read every account of a transfer in one request (a read-only `Txn`
    /// of one range per key, which etcd serves as one linearizable read,
    /// as Pact's transfer reads its accounts in the request that opens the
    /// transaction): each balance and `mod_revision`.
    async fn read_accounts(&self, keys: &[Vec<u8>]) -> anyhow::Result<Vec<(i64, i64)>> {
        let req = pb::TxnRequest {
            compare: Vec::new(),
            success: keys
                .iter()
                .map(|k| pb::RequestOp {
                    request: Some(Request::RequestRange(pb::RangeRequest {
                        key: k.clone(),
                        ..Default::default()
                    })),
                })
                .collect(),
            failure: Vec::new(),
        };
        let r = self
            .read_retrying(|mut kv| {
                let req = req.clone();
                async move { kv.txn(req).await }
            })
            .await?;
        if r.responses.len() != keys.len() {
            return Err(anyhow!(
                "etcd answered {} reads with {} responses",
                keys.len(),
                r.responses.len()
            ));
        }
        keys.iter()
            .zip(r.responses)
            .map(|(k, op)| {
                let kv = match op.response {
                    Some(pb::response_op::Response::ResponseRange(r)) => r.kvs.into_iter().next(),
                    _ => return Err(anyhow!("etcd answered a range with something else")),
                };
                let rev = kv.as_ref().map_or(0, |kv| kv.mod_revision);
                let balance = parse_balance(k, kv.map(|kv| kv.value)).map_err(|e| anyhow!(e))?;
                Ok((balance, rev))
            })
            .collect()
    }

    /// One optimistic attempt: `Ok(true)` committed, `Ok(false)` a
    /// compared key changed since it was read.
    async fn transfer_once(&self, keys: &[Vec<u8>], amount: i64) -> anyhow::Result<bool> {
        let mut balances = Vec::with_capacity(keys.len());
        let mut compare = Vec::with_capacity(keys.len());
        for (k, (b, rev)) in keys.iter().zip(self.read_accounts(keys).await?) {
            balances.push(b);
            compare.push(pb::Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Mod as i32,
                key: k.clone(),
                target_union: Some(TargetUnion::ModRevision(rev)),
                range_end: Vec::new(),
            });
        }
        apply_transfer(&mut balances, amount).map_err(|e| anyhow!(e))?;
        let success = keys
            .iter()
            .zip(&balances)
            .map(|(k, b)| pb::RequestOp {
                request: Some(Request::RequestPut(pb::PutRequest {
                    key: k.clone(),
                    value: b.to_string().into_bytes(),
                    ..Default::default()
                })),
            })
            .collect();
        let m = self.member();
        let r = self
            .kv(m)
            .txn(pb::TxnRequest {
                compare,
                success,
                failure: Vec::new(),
            })
            .await
            .map_err(|s| status_error(&m.url, &s))?;
        Ok(r.into_inner().succeeded)
    }
}

impl Backend for EtcdBackend {
    async fn get(&self, key: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
        let r = self
            .range(pb::RangeRequest {
                key: key.to_vec(),
                ..Default::default()
            })
            .await?;
        Ok(r.kvs.into_iter().next().map(|kv| kv.value))
    }

    async fn put(&self, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        let m = self.member();
        self.kv(m)
            .put(pb::PutRequest {
                key: key.to_vec(),
                value: value.to_vec(),
                ..Default::default()
            })
            .await
            .map_err(|s| status_error(&m.url, &s))?;
        Ok(())
    }

    /// One `Txn` of puts per [`ETCD_MAX_TXN_OPS`] records (etcd refuses
    /// larger ones by default), all at once.
    async fn put_batch(&self, records: &[(Vec<u8>, Vec<u8>)]) -> anyhow::Result<()> {
        let txns = records.chunks(ETCD_MAX_TXN_OPS).map(|chunk| {
            let success = chunk
                .iter()
                .map(|(k, v)| pb::RequestOp {
                    request: Some(Request::RequestPut(pb::PutRequest {
                        key: k.clone(),
                        value: v.clone(),
                        ..Default::default()
                    })),
                })
                .collect();
            let m = self.member();
            let mut kv = self.kv(m);
            async move {
                kv.txn(pb::TxnRequest {
                    compare: Vec::new(),
                    success,
                    failure: Vec::new(),
                })
                .await
                .map_err(|s| status_error(&m.url, &s))
            }
        });
        futures::future::try_join_all(txns).await?;
        Ok(())
    }

    async fn scan(&self, start: &[u8], end: &[u8], limit: u32) -> anyhow::Result<usize> {
        let r = self
            .range(pb::RangeRequest {
                key: start.to_vec(),
                range_end: end.to_vec(),
                limit: i64::from(limit),
                ..Default::default()
            })
            .await?;
        Ok(r.kvs.len())
    }

    async fn txn_transfer(&self, keys: &[Vec<u8>], amount: i64) -> anyhow::Result<()> {
        if keys.len() < 2 {
            return Err(anyhow!("a transfer needs at least two accounts"));
        }
        let mut backoff = Duration::from_millis(5);
        for attempt in 0..pact_client::MAX_ATTEMPTS {
            if attempt > 0 {
                self.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(jitter(backoff)).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
            if self.transfer_once(keys, amount).await.context("transfer")? {
                return Ok(());
            }
        }
        Err(anyhow!(
            "transfer: gave up after {} attempts; last: an account changed between the read \
             and the commit",
            pact_client::MAX_ATTEMPTS
        ))
    }

    fn txn_retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            parse_endpoints("http://127.0.0.1:2379, 127.0.0.1:22379,").unwrap(),
            vec!["http://127.0.0.1:2379", "http://127.0.0.1:22379"]
        );
        assert!(parse_endpoints("").is_err());
        assert!(parse_endpoints(" , ").is_err());
        assert!(parse_endpoints("https://127.0.0.1:2379")
            .unwrap_err()
            .0
            .contains("TLS"));
        assert!(parse_endpoints("unix://x").is_err());
        assert!(parse_endpoints("http://bad host:1").is_err());
    }

    #[tokio::test]
    async fn unreachable_endpoint_is_a_clear_error() {
        // Port 1 on loopback: nothing listens there.
        let urls = parse_endpoints("127.0.0.1:1").unwrap();
        let e = EtcdBackend::connect(
            &urls,
            EtcdOptions {
                retry_for: Duration::from_secs(1),
            },
        )
        .await
        .unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("cannot reach etcd at http://127.0.0.1:1"),
            "{msg}"
        );
    }
}
