//! Transactions through a coordinator group.
//!
//! [`Client::begin`] picks a coordinator group (by the client's
//! [`Balance`](crate::Balance) policy) and opens a transaction at its
//! leader; every later request of that transaction goes to the same
//! leader, because only it knows the transaction. If that leader fails the
//! transaction is aborted (never silently restarted elsewhere).
//!
//! [`Client::transaction`] runs a closure in a transaction and retries it
//! from the start when the transaction aborts (conflict, wounded, lock
//! timeout, failover), with jittered backoff, up to a bound.
//!
//! Writes are buffered here and sent with the commit: one request instead
//! of one per write (the coordinator passes a one-shard transaction's
//! writes inside its one-phase commit, and otherwise locks them at all
//! their shards at once before preparing). The buffer is sent early, as a
//! plain Write, before a scan (the shards merge a transaction's own writes
//! into its scans) and when it grows past 1 MiB or 1,000 writes. A key
//! written but not read for update is therefore locked only at commit, so
//! a conflict on it shows as an aborted commit.

use std::collections::BTreeMap;
use std::time::Duration;

use pact_common::{Abort, AbortKind, NodeId, Timestamp, TxnId};
pub use pact_common::{Guard, Op};
use pact_proto as pb;
use pact_proto::txn_client::TxnClient;

use crate::convert::{classify, Class};
use crate::{Balance, Client, ClientError, Conn, Mutation, MAX_MESSAGE_BYTES};

/// How many times [`Client::transaction`] starts over before giving up.
pub const MAX_ATTEMPTS: u32 = 30;

/// Final state of a transaction, as TxnStatus reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOutcome {
    Committed,
    Aborted(Abort),
    /// Not decided yet (or the coordinator cannot tell yet).
    Unknown(String),
    /// Not decided, and alive: the coordinator leader has it open or is
    /// committing it.
    Open(String),
    /// Older than its coordinator group's record retention, with no
    /// record left: whether it committed is no longer known. Ask within
    /// the retention (`transactions.record_retention_s`) to get an answer.
    Expired(String),
}

fn txn_client(ch: Conn) -> TxnClient<Conn> {
    TxnClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

fn pb_txn(t: TxnId) -> pb::TxnId {
    pb::TxnId {
        group: t.group,
        node: t.node,
        ts: t.ts.0,
    }
}

fn outcome(r: pb::CommitResponse) -> TxnOutcome {
    match pb::Outcome::try_from(r.outcome) {
        Ok(pb::Outcome::Committed) => TxnOutcome::Committed,
        Ok(pb::Outcome::Aborted) => {
            TxnOutcome::Aborted(Abort::new(crate::convert::abort_kind(r.abort), r.reason))
        }
        Ok(pb::Outcome::Open) => TxnOutcome::Open(r.reason),
        Ok(pb::Outcome::Expired) => TxnOutcome::Expired(r.reason),
        _ => TxnOutcome::Unknown(r.reason),
    }
}

/// What a `Begin` gave: the open transaction and the values of its reads,
/// or, when those reads aborted it, its age (for the next attempt) and why.
enum Begun {
    Open(Transaction, Vec<Option<Vec<u8>>>),
    Aborted(Timestamp, Abort),
}

/// The values of a batch of `asked` reads, as the coordinator answered.
fn values(v: Vec<pb::GetResponse>, asked: usize) -> Result<Vec<Option<Vec<u8>>>, ClientError> {
    if v.len() != asked {
        return Err(ClientError::Internal(format!(
            "coordinator answered {asked} reads with {} values",
            v.len()
        )));
    }
    Ok(v.into_iter()
        .map(|r| r.found.then(|| r.value.to_vec()))
        .collect())
}

/// The client's own check of a batch of reads, so a bad one fails without
/// a round trip (the coordinator checks the same).
fn check_reads(keys: &[Vec<u8>]) -> Result<(), ClientError> {
    pact_common::validate_reads(keys).map_err(|e| ClientError::InvalidInput(e.to_string()))
}

/// An open transaction. Dropping it without commit leaves it to expire at
/// the coordinator; call [`Transaction::rollback`] to release locks now.
#[derive(Debug)]
pub struct Transaction {
    client: Client,
    id: TxnId,
    /// Its age for wound-wait: the start of its first attempt.
    priority: Timestamp,
    /// The task that tells the coordinator this client is alive; stopped
    /// when the transaction is dropped, so a client that dies or forgets a
    /// transaction frees its locks within the cluster's lease.
    heartbeat: tokio::task::AbortHandle,
    leader: NodeId,
    done: bool,
    /// A read or write of its own lost its answer (OUTCOME_UNKNOWN):
    /// with no commit sent, [`Client::transaction`] may start over.
    lost_answer: bool,
    /// Writes not yet sent: they go with the commit (or with the next
    /// flush), and reads of these keys see them.
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    pending_bytes: usize,
}

/// Buffered writes are sent early (as one Write) past these sizes, so a
/// commit stays a small message.
const FLUSH_BYTES: usize = 1 << 20;
const FLUSH_OPS: usize = 1000;
/// A participant's longest lock wait, added to a commit's timeout.
const COMMIT_LOCK_ALLOWANCE: Duration = Duration::from_secs(5);

impl Client {
    fn pick_group(&self) -> Result<u64, ClientError> {
        let groups: Vec<u64> = self.group_table().keys().copied().collect();
        if groups.is_empty() {
            return Err(ClientError::InvalidInput(
                "the cluster config has no coordinator groups".into(),
            ));
        }
        let i = match self.inner.balance {
            Balance::RoundRobin => self
                .inner
                .next_group
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            Balance::Random => {
                // Cheap, unpredictable enough for spreading load.
                let n = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.subsec_nanos() as usize)
                    .unwrap_or(0);
                n ^ (n >> 7)
            }
            Balance::LeastOutstanding => {
                let out = self
                    .inner
                    .outstanding
                    .lock()
                    .map_err(|_| ClientError::Internal("poisoned lock".into()))?;
                let best = groups
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, g)| out.get(g).copied().unwrap_or(0))
                    .map(|(i, _)| i)
                    .unwrap_or(0);
                best
            }
        };
        Ok(groups[i % groups.len()])
    }

    fn track(&self, group: u64, delta: isize) {
        if let Ok(mut out) = self.inner.outstanding.lock() {
            let e = out.entry(group).or_insert(0);
            *e = e.saturating_add_signed(delta);
        }
    }

    /// Open a transaction at a coordinator group's leader.
    pub async fn begin(&self) -> Result<Transaction, ClientError> {
        self.begin_with(None).await
    }

    /// Open a transaction that starts over work whose earlier attempt
    /// aborted: it keeps that attempt's age ([`Transaction::priority`]),
    /// so under wound-wait it grows older with each retry until it is
    /// the oldest and wins, instead of starving.
    pub async fn begin_retry(&self, priority: Timestamp) -> Result<Transaction, ClientError> {
        self.begin_with(Some(priority)).await
    }

    async fn begin_with(&self, priority: Option<Timestamp>) -> Result<Transaction, ClientError> {
        match self.begin_reads(priority, &[], false).await? {
            Begun::Open(t, _) => Ok(t),
            Begun::Aborted(_, a) => Err(ClientError::Aborted(a)),
        }
    }

    /// Open a transaction and read `keys` in the same request (with
    /// exclusive locks if `for_update`): a read-modify-write then costs
    /// two requests, this one and the commit. Values in the order of
    /// `keys`. If the reads abort the transaction (wounded, a lock wait
    /// that timed out), that is the error and nothing is held. An answer
    /// lost on the way is [`ClientError::Unknown`] and is not sent again:
    /// the transaction it may have opened is ended by the coordinator (or
    /// its lease), and nothing of it can commit. A retry of an aborted
    /// attempt does not keep its age this way; [`Client::transaction_reading`]
    /// does.
    pub async fn begin_reading(
        &self,
        keys: &[Vec<u8>],
        for_update: bool,
    ) -> Result<(Transaction, Vec<Option<Vec<u8>>>), ClientError> {
        match self.begin_reads(None, keys, for_update).await? {
            Begun::Open(t, v) => Ok((t, v)),
            Begun::Aborted(_, a) => Err(ClientError::Aborted(a)),
        }
    }

    async fn begin_reads(
        &self,
        priority: Option<Timestamp>,
        keys: &[Vec<u8>],
        for_update: bool,
    ) -> Result<Begun, ClientError> {
        check_reads(keys)?;
        let group = self.pick_group()?;
        let req = pb::BeginRequest {
            priority: priority.map_or(0, |p| p.0),
            group,
            reads: keys.iter().map(|k| k.clone().into()).collect(),
            reads_for_update: for_update,
        };
        // A plain begin is sent again after an unclear failure (a second
        // transaction costs nothing). One with reads is not: the first may
        // hold their locks (the coordinator rolls it back if the request
        // is dropped, or its lease runs out); the caller hears "unknown".
        // Its reads may each wait a lock wait (see `batch_timeout`).
        let within = self.batch_timeout(keys.len());
        let (resp, leader) = self
            .call_group_with_node(group, keys.is_empty(), within, |ch| {
                let req = req.clone();
                async move { txn_client(ch).begin(req).await }
            })
            .await?;
        let t = resp.txn.ok_or_else(|| {
            ClientError::Internal("coordinator returned no transaction id".into())
        })?;
        let ts = Timestamp(t.ts);
        let priority = if resp.priority == 0 {
            ts
        } else {
            Timestamp(resp.priority)
        };
        if resp.abort != pb::AbortKind::Unspecified as i32 {
            let kind = crate::convert::abort_kind(resp.abort);
            return Ok(Begun::Aborted(
                priority,
                Abort::new(kind, resp.abort_reason),
            ));
        }
        let values = values(resp.values, keys.len())?;
        self.track(group, 1);
        let id = TxnId {
            group: t.group,
            node: t.node,
            ts,
        };
        let heartbeat = tokio::spawn(heartbeat(self.clone(), id, leader)).abort_handle();
        let txn = Transaction {
            client: self.clone(),
            id,
            heartbeat,
            priority,
            leader,
            done: false,
            lost_answer: false,
            pending: BTreeMap::new(),
            pending_bytes: 0,
        };
        Ok(Begun::Open(txn, values))
    }

    /// How long to wait for a request carrying `reads` reads. The
    /// coordinator reads all their shards at once, each shard's keys
    /// sharing one lock wait, but keys of a shard that moved meanwhile are
    /// read again one by one, each with a lock wait of its own: so each
    /// read after the first adds one to the request timeout.
    fn batch_timeout(&self, reads: usize) -> Duration {
        let waits = u32::try_from(reads.saturating_sub(1)).unwrap_or(u32::MAX);
        self.inner.opts.request_timeout + pact_common::LOCK_WAIT.saturating_mul(waits)
    }

    async fn call_group_with_node<T, F, Fut>(
        &self,
        group: u64,
        idempotent: bool,
        within: Duration,
        call: F,
    ) -> Result<(T, NodeId), ClientError>
    where
        F: Fn(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let v = self
            .call_group_within(group, idempotent, within, call)
            .await?;
        let leader = self
            .cached_leader(crate::Route::Group(group))
            .ok_or_else(|| ClientError::Internal("leader not recorded".into()))?;
        Ok((v, leader))
    }

    /// The outcome of any transaction, from its coordinator group: its
    /// recovery log, or the shards (a one-phase commit is decided at its
    /// shard). Changes nothing; `Unknown` while nothing is final (yet).
    pub async fn txn_status(&self, id: TxnId) -> Result<TxnOutcome, ClientError> {
        self.status_request(id, false).await
    }

    /// Tell `id`'s coordinator that a participant wounded it (an older
    /// transaction took a lock from it), so it serves none of its later
    /// requests. For participants: they free the wounded transaction's
    /// locks only once this returns.
    pub async fn wounded(&self, id: TxnId, reason: &str) -> Result<(), ClientError> {
        let req = pb::WoundedRequest {
            txn: Some(pb_txn(id)),
            reason: reason.to_string(),
        };
        self.call_group(id.group, true, |ch| {
            let req = req.clone();
            async move { txn_client(ch).wounded(req).await }
        })
        .await
        .map(|_| ())
    }

    /// As [`Client::txn_status`], but final: with no decision anywhere,
    /// the shards fence the transaction (nothing of it can commit after)
    /// and the coordinator records the presumed abort. `Unknown` only while
    /// a shard cannot be reached. For participants holding a prepared
    /// transaction whose coordinator went silent, and for clients that
    /// must know.
    pub async fn resolve_txn(&self, id: TxnId) -> Result<TxnOutcome, ClientError> {
        self.status_request(id, true).await
    }

    async fn status_request(&self, id: TxnId, resolve: bool) -> Result<TxnOutcome, ClientError> {
        let req = pb::TxnRequest {
            shard_id: 0,
            txn: Some(pb_txn(id)),
            resolve,
            ..Default::default()
        };
        let r = self
            .call_group(id.group, true, |ch| {
                let req = req.clone();
                async move { txn_client(ch).txn_status(req).await }
            })
            .await?;
        Ok(outcome(r))
    }

    /// Run `f` in a transaction and commit it; start over (a new
    /// transaction) whenever it aborts, up to [`MAX_ATTEMPTS`] times.
    /// Errors other than an abort are returned at once; an unknown commit
    /// outcome is returned as [`ClientError::Unknown`] (never retried,
    /// since the transaction may have committed).
    ///
    /// ```ignore
    /// client.transaction(|t| Box::pin(async move {
    ///     let v = t.get(b"k").await?;
    ///     t.put(b"k", b"v2").await
    /// })).await?;
    /// ```
    pub async fn transaction<T, F>(&self, mut f: F) -> Result<T, ClientError>
    where
        F: for<'t> FnMut(
            &'t mut Transaction,
        ) -> futures::future::BoxFuture<'t, Result<T, ClientError>>,
    {
        self.transaction_reading(&[], false, |t, _| f(t)).await
    }

    /// How many attempts [`Client::transaction`] and
    /// [`Client::transaction_reading`] have started over on this client
    /// (an attempt aborted, or its begin refused, then another began).
    pub fn restarts(&self) -> u64 {
        self.inner
            .restarts
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// [`Client::transaction`] whose every attempt starts by reading
    /// `keys` (exclusively if `for_update`) in the request that opens it
    /// ([`Client::begin_reading`]); the closure gets the values, in the
    /// order of `keys`. A transfer is then two requests per attempt.
    ///
    /// ```ignore
    /// client.transaction_reading(&[a.clone(), b.clone()], true, |t, v| Box::pin(async move {
    ///     // v[0], v[1]: the balances, locked
    ///     t.put(&a, b"90").await?;
    ///     t.put(&b, b"110").await
    /// })).await?;
    /// ```
    pub async fn transaction_reading<T, F>(
        &self,
        keys: &[Vec<u8>],
        for_update: bool,
        mut f: F,
    ) -> Result<T, ClientError>
    where
        F: for<'t> FnMut(
            &'t mut Transaction,
            Vec<Option<Vec<u8>>>,
        ) -> futures::future::BoxFuture<'t, Result<T, ClientError>>,
    {
        let mut backoff = crate::backoff(Duration::from_millis(5), Duration::from_millis(500));
        let mut pause = || backoff.next().unwrap_or(Duration::from_millis(500));
        let mut last = Abort::new(AbortKind::Conflict, "no attempt made");
        // Every attempt after the first keeps the first one's age.
        let mut priority = None;
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                self.inner
                    .restarts
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let (mut txn, values) = match self.begin_reads(priority, keys, for_update).await {
                Ok(Begun::Open(t, v)) => (t, v),
                Ok(Begun::Aborted(p, a)) => {
                    // The reads aborted it: the next attempt still keeps
                    // this one's age.
                    priority.get_or_insert(p);
                    last = a;
                    tokio::time::sleep(pause()).await;
                    continue;
                }
                Err(ClientError::Aborted(a)) => {
                    last = a;
                    tokio::time::sleep(pause()).await;
                    continue;
                }
                Err(ClientError::Unavailable(m)) => {
                    last = Abort::new(AbortKind::Unavailable, m);
                    tokio::time::sleep(pause()).await;
                    continue;
                }
                // A begin (with reads) whose answer was lost: nothing of it
                // can commit, so starting over is safe.
                Err(ClientError::Unknown(m)) if !keys.is_empty() => {
                    last = Abort::new(AbortKind::Unavailable, m);
                    tokio::time::sleep(pause()).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            priority.get_or_insert(txn.priority);
            match f(&mut txn, values).await {
                Ok(v) => match txn.commit().await {
                    Ok(()) => return Ok(v),
                    Err(ClientError::Aborted(m)) => last = m,
                    Err(e) => return Err(e),
                },
                Err(ClientError::Aborted(m)) => {
                    txn.rollback().await;
                    last = m;
                }
                // A read or write of the transaction whose answer was lost
                // (a timeout, a broken connection): its outcome is not in
                // doubt, as no commit was sent and it is rolled back here,
                // so this is an abort to start over from, not an unknown.
                // (An unknown from anything else the closure did, or from
                // a commit it sent itself, is passed on as it is.)
                Err(ClientError::Unknown(m)) if txn.lost_answer && !txn.done => {
                    txn.rollback().await;
                    last = Abort::new(AbortKind::Unavailable, m);
                }
                Err(e) => {
                    txn.rollback().await;
                    return Err(e);
                }
            }
            tokio::time::sleep(pause()).await;
        }
        Err(ClientError::Aborted(Abort::new(
            last.kind,
            format!("gave up after {MAX_ATTEMPTS} attempts; last: {last}"),
        )))
    }
}

/// Renew an open transaction's lease at its coordinator every third of the
/// lease, until the coordinator no longer has it (or the task is aborted).
async fn heartbeat(client: Client, id: TxnId, leader: NodeId) {
    let every = client.inner.lease / 3;
    loop {
        tokio::time::sleep(every).await;
        let Ok(ch) = client.channel(leader) else {
            return;
        };
        let req = pb::TxnRequest {
            txn: Some(pb_txn(id)),
            ..Default::default()
        };
        // A missed beat is fine: the lease covers three of them.
        if let Ok(Err(s)) = tokio::time::timeout(every, txn_client(ch).keepalive(req)).await {
            if matches!(
                s.code(),
                tonic::Code::Aborted
                    | tonic::Code::FailedPrecondition
                    | tonic::Code::InvalidArgument
            ) {
                // Finished, expired, gone to commit (committed, or its
                // outcome up to the commit), or the coordinator lost its
                // leadership: nothing left to keep alive.
                return;
            }
        }
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

impl Transaction {
    pub fn id(&self) -> TxnId {
        self.id
    }

    /// Its age for wound-wait: its own start, or that of the first attempt
    /// it retries ([`Client::begin_retry`]).
    pub fn priority(&self) -> Timestamp {
        self.priority
    }

    /// One request to the transaction's coordinator, within the client's
    /// request timeout.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, ClientError>
    where
        F: FnOnce(TxnClient<Conn>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_within(self.client.inner.opts.request_timeout, call)
            .await
    }

    /// One request to the transaction's coordinator. A refusal other than
    /// a final error means the transaction is lost: report it aborted.
    async fn call_within<T, F, Fut>(&self, timeout: Duration, call: F) -> Result<T, ClientError>
    where
        F: FnOnce(TxnClient<Conn>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        if self.done {
            return Err(ClientError::InvalidInput(format!(
                "transaction {} is already finished",
                self.id
            )));
        }
        let ch = self.client.channel(self.leader)?;
        match tokio::time::timeout(timeout, call(txn_client(ch))).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(match classify(&s) {
                Class::Fail(e) => e,
                Class::NotLeader(_) | Class::Retry(_) => ClientError::Aborted(Abort::new(
                    AbortKind::Leadership,
                    format!(
                        "coordinator {} lost the transaction: {}",
                        self.leader,
                        s.message()
                    ),
                )),
                Class::Unknown(m) => ClientError::Unknown(m),
                // Refused before anything was done; the transaction is as
                // it was (open).
                Class::Overloaded(m, _) => ClientError::Overloaded(m),
            }),
            Err(_) => Err(ClientError::Unknown(format!(
                "coordinator {} did not answer within {timeout:?}",
                self.leader
            ))),
        }
    }

    pub async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        self.read(key, false).await
    }

    /// Read with an exclusive lock, for a read-modify-write.
    pub async fn get_for_update(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        self.read(key, true).await
    }

    async fn read(&mut self, key: &[u8], for_update: bool) -> Result<Option<Vec<u8>>, ClientError> {
        if let Some(own) = self.pending.get(key).cloned() {
            // Its own write, not yet sent. A plain read needs no lock for
            // that; a read for update still takes the lock now.
            if for_update {
                self.read_remote(key, true).await?;
            } else {
                self.check_open()?;
            }
            return Ok(own);
        }
        self.read_remote(key, for_update).await
    }

    /// Read several keys in one request (the coordinator reads all their
    /// shards at once). Values in the order of `keys`; the transaction's
    /// own buffered writes are seen, as with [`Transaction::get`].
    pub async fn get_many(
        &mut self,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, ClientError> {
        self.read_many(keys, false).await
    }

    /// [`Transaction::get_many`] with exclusive locks, for a
    /// read-modify-write of several keys.
    pub async fn get_many_for_update(
        &mut self,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, ClientError> {
        self.read_many(keys, true).await
    }

    async fn read_many(
        &mut self,
        keys: &[Vec<u8>],
        for_update: bool,
    ) -> Result<Vec<Option<Vec<u8>>>, ClientError> {
        check_reads(keys)?;
        // A buffered write answers a plain read here; a read for update
        // still takes its lock remotely.
        let remote: Vec<Vec<u8>> = keys
            .iter()
            .filter(|k| for_update || !self.pending.contains_key(*k))
            .cloned()
            .collect();
        if remote.is_empty() {
            self.check_open()?;
        }
        let mut got = Vec::new().into_iter();
        if !remote.is_empty() {
            let req = pb::TxnGetManyRequest {
                txn: Some(pb_txn(self.id)),
                keys: remote.iter().map(|k| k.clone().into()).collect(),
                for_update,
            };
            let within = self.client.batch_timeout(remote.len());
            let r = self
                .call_within(within, |mut c| async move { c.get_many(req).await })
                .await;
            let r = self.mark(r)?;
            got = values(r.values, remote.len())?.into_iter();
        }
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let remote_value = if for_update || !self.pending.contains_key(k) {
                got.next().flatten()
            } else {
                None
            };
            out.push(match self.pending.get(k) {
                Some(own) => own.clone(),
                None => remote_value,
            });
        }
        Ok(out)
    }

    async fn read_remote(
        &mut self,
        key: &[u8],
        for_update: bool,
    ) -> Result<Option<Vec<u8>>, ClientError> {
        let req = pb::TxnGetRequest {
            shard_id: 0,
            shard_version: 0,
            txn: Some(pb_txn(self.id)),
            key: key.to_vec().into(),
            for_update,
            first: false,
            priority: 0,
        };
        let r = self.call(|mut c| async move { c.get(req).await }).await;
        let r = self.mark(r)?;
        Ok(r.found.then(|| r.value.to_vec()))
    }

    /// Keys in `[start, end)` as this transaction sees them, in key
    /// order, at most `limit` (0: 1,000); fewer only if the range holds
    /// fewer. The range stays locked (no phantoms) until the transaction
    /// ends. Read in pages of at most a batch's bytes each.
    pub async fn scan(
        &mut self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: u32,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, ClientError> {
        // The participants merge a transaction's own writes into its scans:
        // send them first.
        self.flush().await?;
        let limit = if limit == 0 { 1000 } else { limit };
        let mut all: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut from = start.to_vec();
        loop {
            let req = pb::TxnScanRequest {
                shard_id: 0,
                shard_version: 0,
                txn: Some(pb_txn(self.id)),
                start: from.clone().into(),
                end: end.map(<[u8]>::to_vec).unwrap_or_default().into(),
                limit: limit - all.len() as u32,
                first: false,
                priority: 0,
            };
            let r = self.call(|mut c| async move { c.scan(req).await }).await;
            let r = self.mark(r)?;
            all.extend(
                r.pairs
                    .into_iter()
                    .map(|p| (p.key.to_vec(), p.value.to_vec())),
            );
            if !r.more || all.len() >= limit as usize {
                break;
            }
            match pact_common::next_scan_start(&all, &from) {
                Some(next) => from = next,
                None => break,
            }
        }
        Ok(all)
    }

    pub async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), ClientError> {
        self.write(vec![(key.to_vec(), Some(value.to_vec()))]).await
    }

    pub async fn delete(&mut self, key: &[u8]) -> Result<(), ClientError> {
        self.write(vec![(key.to_vec(), None)]).await
    }

    /// Buffer writes in the transaction. They are checked against the
    /// limits now, but locked at the shards only when the commit (or a
    /// scan, or a large buffer) sends them: a conflict over a written key
    /// shows at commit. Use [`Transaction::get_for_update`] to lock a key
    /// early. If the shards refuse writes sent before the commit (say,
    /// over the per-shard size limit), the transaction is rolled back and
    /// the error returned.
    pub async fn write(&mut self, batch: Vec<Mutation>) -> Result<(), ClientError> {
        self.check_open()?;
        if batch.is_empty() {
            return Err(ClientError::InvalidInput("empty write".into()));
        }
        pact_common::validate_batch(batch.iter().map(|(k, v)| (k.as_slice(), v.as_deref())))
            .map_err(|e| ClientError::InvalidInput(e.to_string()))?;
        // Send what is buffered first if this batch would take the buffer
        // past the flush sizes: each batch is within the limits on its own,
        // but the two together might not be.
        let bytes: usize = batch
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
            .sum();
        if self.pending_bytes + bytes > FLUSH_BYTES || self.pending.len() + batch.len() > FLUSH_OPS
        {
            self.flush().await?;
        }
        // Overwrites count twice, which only makes the buffer go out sooner.
        self.pending_bytes += bytes;
        self.pending.extend(batch);
        if self.pending_bytes >= FLUSH_BYTES || self.pending.len() >= FLUSH_OPS {
            self.flush().await?;
        }
        Ok(())
    }

    /// Send the buffered writes now (locking their keys).
    async fn flush(&mut self) -> Result<(), ClientError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch: Vec<Mutation> = std::mem::take(&mut self.pending).into_iter().collect();
        self.pending_bytes = 0;
        let req = pb::TxnWriteRequest {
            shard_id: 0,
            shard_version: 0,
            txn: Some(pb_txn(self.id)),
            ops: crate::convert::write_ops(batch),
            first: false,
            priority: 0,
        };
        let r = self.call(|mut c| async move { c.write(req).await }).await;
        if let Err(e) = self.mark(r) {
            // Part of the batch may be at the shards and the rest is no
            // longer buffered here: the transaction cannot go on.
            self.rollback().await;
            return Err(e);
        }
        Ok(())
    }

    fn check_open(&self) -> Result<(), ClientError> {
        if self.done {
            return Err(ClientError::InvalidInput(format!(
                "transaction {} is already finished",
                self.id
            )));
        }
        Ok(())
    }

    /// Add `delta` to the integer stored at `key` (absent counts as 0);
    /// returns the new value.
    pub async fn incr(&mut self, key: &[u8], delta: i64) -> Result<i64, ClientError> {
        let cur = match self.get_for_update(key).await? {
            None => 0,
            Some(v) => std::str::from_utf8(&v)
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .ok_or_else(|| ClientError::InvalidInput("value is not an integer".into()))?,
        };
        let next = cur
            .checked_add(delta)
            .ok_or_else(|| ClientError::InvalidInput("integer overflow".into()))?;
        self.put(key, next.to_string().as_bytes()).await?;
        Ok(next)
    }

    /// An aborted transaction is finished: later calls are refused locally.
    fn mark<T>(&mut self, r: Result<T, ClientError>) -> Result<T, ClientError> {
        match &r {
            Err(ClientError::Aborted(_)) => self.finish(),
            Err(ClientError::Unknown(_)) => self.lost_answer = true,
            _ => {}
        }
        r
    }

    fn finish(&mut self) {
        // Committed or rolled back: nothing left to keep alive.
        self.heartbeat.abort();
        if !self.done {
            self.done = true;
            self.client.track(self.id.group, -1);
        }
    }

    /// Commit. `Ok` means committed; `Aborted` means it did not and never
    /// will; `Unknown` means ask [`Client::txn_status`] later.
    pub async fn commit(&mut self) -> Result<(), ClientError> {
        let batch: Vec<Mutation> = std::mem::take(&mut self.pending).into_iter().collect();
        self.pending_bytes = 0;
        let req = pb::TxnRequest {
            shard_id: 0,
            txn: Some(pb_txn(self.id)),
            ops: crate::convert::write_ops(batch),
            ..Default::default()
        };
        // The commit takes the locks of the carried writes, which may wait
        // up to a participant's lock wait: allow for it on top.
        let timeout = self.client.inner.opts.request_timeout + COMMIT_LOCK_ALLOWANCE;
        let r = self
            .call_within(timeout, |mut c| async move { c.commit(req).await })
            .await;
        if let Err(e @ ClientError::Overloaded(_)) = r {
            // The coordinator refused the commit before 2PC had it: the
            // transaction is still open there, holding its locks. End it
            // now rather than when its lease runs out.
            self.rollback().await;
            return Err(e);
        }
        self.finish();
        match outcome(r?) {
            TxnOutcome::Committed => Ok(()),
            TxnOutcome::Aborted(a) => Err(ClientError::Aborted(a)),
            TxnOutcome::Unknown(m) | TxnOutcome::Open(m) | TxnOutcome::Expired(m) => Err(
                ClientError::Unknown(format!("transaction {}: {m}", self.id)),
            ),
        }
    }

    /// Abort and release locks now. Never fails: what it cannot reach
    /// expires on its own.
    pub async fn rollback(&mut self) {
        if self.done {
            return;
        }
        self.pending.clear();
        self.pending_bytes = 0;
        let req = pb::TxnRequest {
            shard_id: 0,
            txn: Some(pb_txn(self.id)),
            ..Default::default()
        };
        let _ = self
            .call(|mut c| async move { c.rollback(req).await })
            .await;
        self.finish();
    }
}

/// What a one-shot transaction did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Executed {
    pub txn: TxnId,
    /// Whether the guards held (so `then` ran, not `otherwise`).
    pub succeeded: bool,
    /// The branch's gets, in order.
    pub results: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Client {
    /// One-shot transaction (as etcd's txn): if all `guards` hold run
    /// `then`, else `otherwise`, and commit; the coordinator retries it on
    /// conflict. `Unknown` errors carry the transaction id for
    /// [`Client::txn_status`].
    pub async fn execute(
        &self,
        guards: Vec<Guard>,
        then: Vec<Op>,
        otherwise: Vec<Op>,
    ) -> Result<Executed, ClientError> {
        let group = self.pick_group()?;
        let conv = |ops: Vec<Op>| -> Vec<pb::Op> {
            ops.into_iter()
                .map(|o| match o {
                    Op::Put(k, v) => pb::Op {
                        key: k.into(),
                        op: Some(pb::op::Op::Put(v.into())),
                    },
                    Op::Delete(k) => pb::Op {
                        key: k.into(),
                        op: Some(pb::op::Op::Delete(true)),
                    },
                    Op::Get(k) => pb::Op {
                        key: k.into(),
                        op: Some(pb::op::Op::Get(true)),
                    },
                })
                .collect()
        };
        let req = pb::ExecuteRequest {
            guards: guards
                .into_iter()
                .map(|g| {
                    let (key, kind, value) = match g {
                        Guard::Exists(k) => (k, pb::guard::Kind::Exists, Vec::new()),
                        Guard::Missing(k) => (k, pb::guard::Kind::Missing, Vec::new()),
                        Guard::Equals(k, v) => (k, pb::guard::Kind::Equals, v),
                    };
                    pb::Guard {
                        key: key.into(),
                        kind: kind as i32,
                        value: value.into(),
                    }
                })
                .collect(),
            then: conv(then),
            otherwise: conv(otherwise),
        };
        let r = self
            .call_group(group, false, |ch| {
                let req = req.clone();
                async move { txn_client(ch).execute(req).await }
            })
            .await?;
        let txn = r
            .txn
            .map(|t| TxnId {
                group: t.group,
                node: t.node,
                ts: Timestamp(t.ts),
            })
            .unwrap_or_default();
        match pb::Outcome::try_from(r.outcome) {
            Ok(pb::Outcome::Committed) => Ok(Executed {
                txn,
                succeeded: r.succeeded,
                results: r
                    .results
                    .into_iter()
                    .map(|x| (x.key.to_vec(), x.found.then(|| x.value.to_vec())))
                    .collect(),
            }),
            Ok(pb::Outcome::Aborted) => Err(ClientError::Aborted(Abort::new(
                crate::convert::abort_kind(r.abort),
                r.reason,
            ))),
            _ => Err(ClientError::Unknown(format!(
                "transaction {txn}: {}",
                r.reason
            ))),
        }
    }
}
