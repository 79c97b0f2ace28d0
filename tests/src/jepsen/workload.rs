//! Client workloads: each operation is recorded as an invoke and then an
//! ok (it happened), fail (it certainly did not) or info (unknown). An
//! operation is never retried blindly after an unknown outcome: the worker
//! records info and moves on as a new process, as Jepsen does.

use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pact_check::{CheckResult, History, Model, OpType, Options, Value};
use pact_client::{Client, ClientError, ClientOptions};
use pact_common::Guard;
use rand::rngs::StdRng;
use rand::Rng;

use super::Recorder;

/// The workloads of the suite, each with its checker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Transfers between accounts on different shards, and snapshot reads
    /// of all accounts: the total is conserved, no balance goes negative.
    Bank,
    /// Transactions of appends and reads over a few keys, checked by the
    /// Elle-style cycle search.
    ListAppend,
    /// Reads, writes and compare-and-sets of independent registers, each
    /// checked for linearizability.
    Register,
    /// Unique adds, then a final read: every acknowledged add is present.
    Set,
    /// Transactions of reads and unique writes over groups of registers,
    /// each group's keys on one shard, and plain one-shard write batches of
    /// a group's keys; checked by Elle's rw-register cycle search. Reads of
    /// a whole group in one transaction see a batch entirely or not at all.
    RwRegister,
}

pub const BANK_ACCOUNTS: i64 = 5;
pub const BANK_INITIAL: i64 = 100;
const LIST_KEYS: i64 = 6;
const REGISTERS: i64 = 3;
/// rw-register: groups of keys that share a shard (spread over the shards
/// when there are several), so a group can be written as a plain batch.
const RW_GROUPS: usize = 3;
const RW_GROUP_KEYS: usize = 3;

/// Clients of a worker that gives up on its requests after 1-5 ms: the
/// server sees the request cancelled (gRPC deadline passed, stream reset)
/// at any point of its handling, while what it proposed may still commit.
pub struct Impatient {
    /// One client per deadline, 1 ms to 5 ms; a request picks one.
    clients: Vec<Client>,
}

impl Impatient {
    pub fn new(client: impl Fn(ClientOptions) -> Client) -> Impatient {
        let clients = (1..=5)
            .map(|ms| {
                client(ClientOptions {
                    request_timeout: Duration::from_millis(ms),
                    // Reads and begins are retried on another replica after
                    // a timeout: let them give up soon as well.
                    retry_for: Duration::from_millis(3 * ms),
                    ..ClientOptions::default()
                })
            })
            .collect();
        Impatient { clients }
    }
}

/// What one worker uses to talk to the cluster.
pub struct Ctx {
    pub client: Client,
    /// One client per participant node that talks to that node only: the
    /// register workload's reads go to a random replica when
    /// `follower_reads` is on (a correct build refuses or redirects them).
    pub replicas: Vec<Client>,
    pub follower_reads: bool,
    pub rec: Arc<Recorder>,
    pub rng: StdRng,
    pub unique: Arc<AtomicI64>,
    /// Set for impatient workers: their plain writes use a client with a
    /// 1-5 ms deadline, and their transactions give up on the commit and
    /// on some reads after 1-5 ms (begin and rollback keep the normal
    /// client, so an abandoned transaction is still rolled back rather than
    /// left holding locks until it expires).
    pub impatient: Option<Impatient>,
}

impl Ctx {
    /// The client for a plain write: an impatient one, if this worker is.
    fn writer(&mut self) -> Client {
        match &self.impatient {
            Some(i) => {
                let n = self.rng.random_range(0..i.clients.len());
                i.clients[n].clone()
            }
            None => self.client.clone(),
        }
    }

    /// Run one transactional request; if this worker is impatient, give
    /// it up after 1-5 ms: always for a commit, for a read one time in
    /// four (a worker that always gave up its reads on a loaded machine
    /// would never reach a commit). Dropping the request future resets its
    /// stream, as the client's own deadline does.
    async fn within<T>(
        &mut self,
        commit: bool,
        req: impl Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        if self.impatient.is_none() || !(commit || self.rng.random_bool(0.25)) {
            return req.await;
        }
        let ms = self.rng.random_range(1..=5u64);
        match tokio::time::timeout(Duration::from_millis(ms), req).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Unknown(format!(
                "impatient client gave up after {ms} ms"
            ))),
        }
    }
}

fn bank_key(a: i64) -> Vec<u8> {
    format!("bank/{a}").into_bytes()
}
fn list_key(k: i64) -> Vec<u8> {
    format!("la/{k}").into_bytes()
}
fn reg_key(k: i64) -> Vec<u8> {
    format!("reg/{k}").into_bytes()
}
fn set_key(e: i64) -> Vec<u8> {
    format!("set/{e:012}").into_bytes()
}
fn rw_key(k: i64) -> Vec<u8> {
    format!("rw/{k}").into_bytes()
}

/// rw-register's key groups: group g holds the first keys that map to
/// shard g (mod the shard count), so every group is one shard's.
fn rw_groups(client: &Client) -> Vec<Vec<i64>> {
    // Shards that own keys: one merged into another owns none.
    let shards = client.shard_map().shards();
    let mut groups = vec![Vec::new(); RW_GROUPS];
    let mut k = 0;
    // Hashing spreads keys evenly: a few dozen candidates fill every group.
    while groups.iter().any(|g| g.len() < RW_GROUP_KEYS) && k < 100_000 {
        let shard = client.shard_for_key(&rw_key(k));
        for (g, keys) in groups.iter_mut().enumerate() {
            if keys.len() < RW_GROUP_KEYS && shards.get(g % shards.len().max(1)) == Some(&shard) {
                keys.push(k);
                break;
            }
        }
        k += 1;
    }
    groups
}

fn parse_int(v: Option<Vec<u8>>) -> Result<Option<i64>, ClientError> {
    match v {
        None => Ok(None),
        Some(b) => String::from_utf8_lossy(&b)
            .parse()
            .map(Some)
            .map_err(|e| ClientError::Internal(format!("not a number: {e}"))),
    }
}

fn parse_list(v: Option<Vec<u8>>) -> Result<Vec<i64>, ClientError> {
    let Some(b) = v else { return Ok(Vec::new()) };
    String::from_utf8_lossy(&b)
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|e| ClientError::Internal(format!("bad list element {s:?}: {e}")))
        })
        .collect()
}

/// How an error leaves a non-idempotent operation: the client library
/// promises that these kinds mean nothing was applied; anything else may
/// have been.
fn outcome_of(e: &ClientError) -> OpType {
    match e {
        ClientError::Aborted(_)
        | ClientError::Conflict(_)
        | ClientError::InvalidInput(_)
        | ClientError::UnknownShard(_)
        | ClientError::Unavailable(_)
        | ClientError::Overloaded(_)
        | ClientError::Unreachable(_)
        | ClientError::WrongShard(_) => OpType::Fail,
        ClientError::Unknown(_) | ClientError::Internal(_) => OpType::Info,
    }
}

impl Workload {
    /// The workload's name in artifacts (as its checker's).
    pub fn name(self) -> &'static str {
        match self {
            Workload::Bank => "bank",
            Workload::ListAppend => "list-append",
            Workload::Register => "register",
            Workload::Set => "set",
            Workload::RwRegister => "rw-register",
        }
    }

    /// Data the workload needs before the history starts.
    pub async fn setup(self, client: &Client) -> Result<(), ClientError> {
        if self == Workload::Bank {
            let mut t = client.begin().await?;
            for a in 0..BANK_ACCOUNTS {
                t.put(&bank_key(a), BANK_INITIAL.to_string().as_bytes())
                    .await?;
            }
            t.commit().await?;
        }
        Ok(())
    }

    /// Run one random operation as `process`; returns its completion type.
    pub async fn step(self, ctx: &mut Ctx, process: i64) -> OpType {
        match self {
            Workload::Bank => {
                if ctx.rng.random_bool(0.5) {
                    bank_read(ctx, process).await
                } else {
                    bank_transfer(ctx, process).await
                }
            }
            Workload::ListAppend => list_txn(ctx, process).await,
            Workload::Register => register_op(ctx, process).await,
            Workload::Set => set_add(ctx, process).await,
            Workload::RwRegister => rw_op(ctx, process).await,
        }
    }

    /// Reads after the cluster has healed and quiesced, recorded in the
    /// history like any other operation.
    pub async fn final_reads(self, ctx: &mut Ctx, process: i64) -> bool {
        match self {
            Workload::Bank => bank_read(ctx, process).await == OpType::Ok,
            Workload::ListAppend => {
                let mops = (0..LIST_KEYS).map(|k| (false, k)).collect();
                list_txn_of(ctx, process, mops).await == OpType::Ok
            }
            Workload::Register => {
                let mut all = true;
                for k in 0..REGISTERS {
                    all &= register_read(ctx, process, k, false).await == OpType::Ok;
                }
                all
            }
            Workload::Set => set_read(ctx, process).await == OpType::Ok,
            Workload::RwRegister => {
                let mops = rw_groups(&ctx.client)
                    .concat()
                    .into_iter()
                    .map(|k| (false, k))
                    .collect();
                rw_txn_of(ctx, process, mops).await == OpType::Ok
            }
        }
    }

    /// Check `history` with this workload's checker(s).
    pub fn check(self, history: &History) -> Vec<(String, CheckResult)> {
        let opts = Options::default();
        match self {
            Workload::Bank => {
                let opts = Options {
                    bank_total: Some(BANK_ACCOUNTS * BANK_INITIAL),
                    bank_accounts: Some((0..BANK_ACCOUNTS).map(Value::Int).collect()),
                    ..opts
                };
                vec![(
                    "bank".into(),
                    pact_check::check(Model::Bank, history, &opts),
                )]
            }
            Workload::ListAppend => vec![(
                "list-append".into(),
                pact_check::check(Model::ListAppend, history, &opts),
            )],
            // Keyed ops: pact-check checks each register on its own.
            Workload::Register => vec![(
                "register".into(),
                pact_check::check(Model::CasRegister, history, &opts),
            )],
            Workload::Set => vec![("set".into(), pact_check::check(Model::Set, history, &opts))],
            Workload::RwRegister => vec![(
                "rw-register".into(),
                pact_check::check(Model::RwRegister, history, &opts),
            )],
        }
    }
}

async fn bank_read(ctx: &mut Ctx, p: i64) -> OpType {
    ctx.rec.invoke(p, "read", None, Value::Nil);
    let mut t = match ctx.client.begin().await {
        Ok(t) => {
            ctx.rec.note_txn(p, t.id());
            t
        }
        Err(e) => {
            ctx.rec.note_error(&e);
            return ctx.rec.complete(p, OpType::Fail, "read", None, Value::Nil);
        }
    };
    // Half the reads ask for every account in one request (GetMany).
    let batched = ctx.rng.random_bool(0.5);
    let r = async {
        let mut m = Vec::new();
        if batched {
            let keys: Vec<Vec<u8>> = (0..BANK_ACCOUNTS).map(bank_key).collect();
            let values = ctx.within(false, t.get_many(&keys)).await?;
            for (a, v) in (0..BANK_ACCOUNTS).zip(values) {
                let v = parse_int(v)?;
                m.push((Value::Int(a), v.map_or(Value::Nil, Value::Int)));
            }
        } else {
            for a in 0..BANK_ACCOUNTS {
                let v = ctx
                    .within(false, t.get(&bank_key(a)))
                    .await
                    .and_then(parse_int)?;
                m.push((Value::Int(a), v.map_or(Value::Nil, Value::Int)));
            }
        }
        ctx.within(true, t.commit()).await?;
        Ok::<_, ClientError>(Value::Map(m))
    }
    .await;
    match r {
        Ok(v) => ctx.rec.complete(p, OpType::Ok, "read", None, v),
        // A read changes nothing, so every failed read simply did not happen.
        Err(e) => {
            ctx.rec.note_error(&e);
            // A no-op once the commit answered; otherwise it releases the
            // read locks now.
            t.rollback().await;
            ctx.rec.complete(p, OpType::Fail, "read", None, Value::Nil)
        }
    }
}

async fn bank_transfer(ctx: &mut Ctx, p: i64) -> OpType {
    let from = ctx.rng.random_range(0..BANK_ACCOUNTS);
    let to = (from + ctx.rng.random_range(1..BANK_ACCOUNTS)) % BANK_ACCOUNTS;
    let amount = ctx.rng.random_range(1..=5i64);
    let value = Value::Map(vec![
        (Value::Keyword("from".into()), Value::Int(from)),
        (Value::Keyword("to".into()), Value::Int(to)),
        (Value::Keyword("amount".into()), Value::Int(amount)),
    ]);
    ctx.rec.invoke(p, "transfer", None, value.clone());
    // Half the transfers read both accounts, locked, in the request that
    // opens the transaction (given up on like any read by an impatient
    // worker: the transaction it may have opened then expires).
    let at_begin = if ctx.rng.random_bool(0.5) {
        let client = ctx.client.clone();
        let keys = [bank_key(from), bank_key(to)];
        match ctx.within(false, client.begin_reading(&keys, true)).await {
            Ok((t, v)) => Ok((t, Some(v))),
            Err(e) => Err(e),
        }
    } else {
        ctx.client.begin().await.map(|t| (t, None))
    };
    let (mut t, read) = match at_begin {
        Ok((t, read)) => {
            ctx.rec.note_txn(p, t.id());
            (t, read)
        }
        Err(e) => {
            ctx.rec.note_error(&e);
            return ctx.rec.complete(p, OpType::Fail, "transfer", None, value);
        }
    };
    let body = async {
        let (a, b) = match read {
            Some(v) => {
                let mut v = v.into_iter();
                let a = parse_int(v.next().flatten())?.unwrap_or(0);
                (a, parse_int(v.next().flatten())?.unwrap_or(0))
            }
            None => {
                let a = parse_int(ctx.within(false, t.get_for_update(&bank_key(from))).await?)?
                    .unwrap_or(0);
                let b = parse_int(ctx.within(false, t.get_for_update(&bank_key(to))).await?)?
                    .unwrap_or(0);
                (a, b)
            }
        };
        if a < amount {
            return Ok(false);
        }
        t.put(&bank_key(from), (a - amount).to_string().as_bytes())
            .await?;
        t.put(&bank_key(to), (b + amount).to_string().as_bytes())
            .await?;
        Ok::<_, ClientError>(true)
    }
    .await;
    match body {
        Ok(true) => {}
        // Before commit nothing can have been applied: the coordinator
        // commits only when asked to.
        Ok(false) | Err(_) => {
            if let Err(e) = &body {
                ctx.rec.note_error(e);
            }
            t.rollback().await;
            return ctx.rec.complete(p, OpType::Fail, "transfer", None, value);
        }
    }
    match ctx.within(true, t.commit()).await {
        Ok(()) => ctx.rec.complete(p, OpType::Ok, "transfer", None, value),
        Err(e) => {
            ctx.rec.note_error(&e);
            abandon(&mut t).await;
            ctx.rec.complete(p, outcome_of(&e), "transfer", None, value)
        }
    }
}

/// After a commit that failed or was given up on: release what the
/// transaction may still hold if the coordinator never took the commit
/// (an abandoned request can be dropped before it decides anything). A
/// no-op when the commit was answered, and harmless when it is under way:
/// the coordinator then has the transaction out of its open sessions.
async fn abandon(t: &mut pact_client::Transaction) {
    t.rollback().await;
}

fn mop_value(mops: &[(bool, i64, Value)]) -> Value {
    Value::Vec(
        mops.iter()
            .map(|(append, k, v)| {
                Value::Vec(vec![
                    Value::Keyword(if *append { "append" } else { "r" }.into()),
                    Value::Int(*k),
                    v.clone(),
                ])
            })
            .collect(),
    )
}

async fn list_txn(ctx: &mut Ctx, p: i64) -> OpType {
    let n = ctx.rng.random_range(1..=4);
    let mops = (0..n)
        .map(|_| (ctx.rng.random_bool(0.5), ctx.rng.random_range(0..LIST_KEYS)))
        .collect();
    list_txn_of(ctx, p, mops).await
}

/// Micro-ops `(write?, key)` with the unique value each write will carry
/// (reads carry nil until they complete).
fn plan_mops(ctx: &Ctx, mops: Vec<(bool, i64)>) -> Vec<(bool, i64, Value)> {
    mops.into_iter()
        .map(|(write, k)| {
            let v = if write {
                Value::Int(ctx.unique.fetch_add(1, Ordering::Relaxed))
            } else {
                Value::Nil
            };
            (write, k, v)
        })
        .collect()
}

/// Record the invocation of a transaction and begin it; a failed begin is
/// recorded as a failed operation, whose completion is the `Err`.
async fn begin_recorded(
    ctx: &mut Ctx,
    p: i64,
    invoked: &Value,
) -> Result<pact_client::Transaction, OpType> {
    ctx.rec.invoke(p, "txn", None, invoked.clone());
    match ctx.client.begin().await {
        Ok(t) => {
            ctx.rec.note_txn(p, t.id());
            Ok(t)
        }
        Err(e) => {
            ctx.rec.note_error(&e);
            Err(ctx
                .rec
                .complete(p, OpType::Fail, "txn", None, invoked.clone()))
        }
    }
}

/// One transaction of micro-ops `(append?, key)`.
async fn list_txn_of(ctx: &mut Ctx, p: i64, mops: Vec<(bool, i64)>) -> OpType {
    let mut planned = plan_mops(ctx, mops);
    let invoked = mop_value(&planned);
    let mut t = match begin_recorded(ctx, p, &invoked).await {
        Ok(t) => t,
        Err(failed) => return failed,
    };
    let body = async {
        for (append, k, v) in planned.iter_mut() {
            if *append {
                let Value::Int(e) = v else {
                    unreachable!("appends carry ints")
                };
                let mut list =
                    parse_list(ctx.within(false, t.get_for_update(&list_key(*k))).await?)?;
                list.push(*e);
                let text: Vec<String> = list.iter().map(i64::to_string).collect();
                t.put(&list_key(*k), text.join(",").as_bytes()).await?;
            } else {
                let list = parse_list(ctx.within(false, t.get(&list_key(*k))).await?)?;
                *v = Value::Vec(list.into_iter().map(Value::Int).collect());
            }
        }
        Ok::<_, ClientError>(())
    }
    .await;
    if let Err(e) = &body {
        ctx.rec.note_error(e);
        t.rollback().await;
        return ctx.rec.complete(p, OpType::Fail, "txn", None, invoked);
    }
    match ctx.within(true, t.commit()).await {
        Ok(()) => ctx
            .rec
            .complete(p, OpType::Ok, "txn", None, mop_value(&planned)),
        Err(e) => {
            ctx.rec.note_error(&e);
            abandon(&mut t).await;
            ctx.rec.complete(p, outcome_of(&e), "txn", None, invoked)
        }
    }
}

async fn register_op(ctx: &mut Ctx, p: i64) -> OpType {
    let k = ctx.rng.random_range(0..REGISTERS);
    match ctx.rng.random_range(0..3) {
        0 => {
            let any = ctx.follower_reads;
            register_read(ctx, p, k, any).await
        }
        1 => {
            let v = ctx.rng.random_range(0..5i64);
            let key = Some(Value::Int(k));
            ctx.rec.invoke(p, "write", key.clone(), Value::Int(v));
            let t = match ctx.client.put(&reg_key(k), v.to_string().as_bytes()).await {
                Ok(()) => OpType::Ok,
                Err(e) => {
                    ctx.rec.note_error(&e);
                    outcome_of(&e)
                }
            };
            ctx.rec.complete(p, t, "write", key, Value::Int(v))
        }
        _ => {
            let (old, new) = (ctx.rng.random_range(0..5i64), ctx.rng.random_range(0..5i64));
            let key = Some(Value::Int(k));
            let value = Value::Vec(vec![Value::Int(old), Value::Int(new)]);
            ctx.rec.invoke(p, "cas", key.clone(), value.clone());
            let r = ctx
                .client
                .execute(
                    vec![Guard::Equals(reg_key(k), old.to_string().into_bytes())],
                    vec![pact_common::Op::Put(
                        reg_key(k),
                        new.to_string().into_bytes(),
                    )],
                    vec![],
                )
                .await;
            if let Ok(x) = &r {
                ctx.rec.note_txn(p, x.txn);
            }
            let t = match r {
                Ok(x) if x.succeeded => OpType::Ok,
                Ok(_) => OpType::Fail,
                Err(e) => {
                    ctx.rec.note_error(&e);
                    outcome_of(&e)
                }
            };
            ctx.rec.complete(p, t, "cas", key, value)
        }
    }
}

async fn register_read(ctx: &mut Ctx, p: i64, k: i64, any_replica: bool) -> OpType {
    let key = Some(Value::Int(k));
    ctx.rec.invoke(p, "read", key.clone(), Value::Nil);
    let client = if any_replica && !ctx.replicas.is_empty() {
        let i = ctx.rng.random_range(0..ctx.replicas.len());
        &ctx.replicas[i]
    } else {
        &ctx.client
    };
    match client.get(&reg_key(k)).await.and_then(parse_int) {
        Ok(v) => ctx
            .rec
            .complete(p, OpType::Ok, "read", key, v.map_or(Value::Nil, Value::Int)),
        Err(e) => {
            ctx.rec.note_error(&e);
            ctx.rec.complete(p, OpType::Fail, "read", key, Value::Nil)
        }
    }
}

async fn set_add(ctx: &mut Ctx, p: i64) -> OpType {
    let e = ctx.unique.fetch_add(1, Ordering::Relaxed);
    ctx.rec.invoke(p, "add", None, Value::Int(e));
    let t = match ctx.client.put(&set_key(e), b"1").await {
        Ok(()) => OpType::Ok,
        Err(e) => {
            ctx.rec.note_error(&e);
            outcome_of(&e)
        }
    };
    ctx.rec.complete(p, t, "add", None, Value::Int(e))
}

async fn set_read(ctx: &mut Ctx, p: i64) -> OpType {
    ctx.rec.invoke(p, "read", None, Value::Nil);
    let mut elements = Vec::new();
    let mut start = b"set/".to_vec();
    let end = b"set0".to_vec();
    let r = loop {
        match ctx.client.scan(&start, Some(&end), 5000).await {
            Ok(page) => {
                let full = page.len() == 5000;
                for (k, _) in &page {
                    if let Some(e) = std::str::from_utf8(&k[4..])
                        .ok()
                        .and_then(|s| s.parse().ok())
                    {
                        elements.push(Value::Int(e));
                    }
                }
                match page.last() {
                    Some((k, _)) if full => {
                        start = k.clone();
                        start.push(0);
                    }
                    _ => break Ok(()),
                }
            }
            Err(e) => break Err(e),
        }
    };
    match r {
        Ok(()) => ctx
            .rec
            .complete(p, OpType::Ok, "read", None, Value::Set(elements)),
        Err(_) => ctx.rec.complete(p, OpType::Fail, "read", None, Value::Nil),
    }
}

fn rw_mops_value(mops: &[(bool, i64, Value)]) -> Value {
    Value::Vec(
        mops.iter()
            .map(|(write, k, v)| {
                Value::Vec(vec![
                    Value::Keyword(if *write { "w" } else { "r" }.into()),
                    Value::Int(*k),
                    v.clone(),
                ])
            })
            .collect(),
    )
}

async fn rw_op(ctx: &mut Ctx, p: i64) -> OpType {
    let groups = rw_groups(&ctx.client);
    let g = ctx.rng.random_range(0..groups.len());
    let group = groups[g].clone();
    if ctx.impatient.is_some() {
        // Impatient workers only write whole groups as plain batches: the
        // requests most likely to be cancelled after their entry is
        // proposed, whose locks must still hold until it applies.
        return rw_batch(ctx, p, group).await;
    }
    match ctx.rng.random_range(0..10) {
        // A whole group read at once: sees each batch entirely or not at all.
        0..=3 => {
            let mops = group.into_iter().map(|k| (false, k)).collect();
            rw_txn_of(ctx, p, mops).await
        }
        4..=7 => {
            // Mostly one group's keys; sometimes two groups' (two shards).
            let mut keys = group;
            if ctx.rng.random_bool(0.2) {
                let other = (g + ctx.rng.random_range(1..groups.len().max(2))) % groups.len();
                keys.extend(&groups[other]);
            }
            let n = ctx.rng.random_range(1..=4);
            let mops = (0..n)
                .map(|_| {
                    let k = keys[ctx.rng.random_range(0..keys.len())];
                    (ctx.rng.random_bool(0.5), k)
                })
                .collect();
            rw_txn_of(ctx, p, mops).await
        }
        _ => {
            let n = ctx.rng.random_range(2..=group.len().max(2));
            let keys = group.into_iter().take(n).collect();
            rw_batch(ctx, p, keys).await
        }
    }
}

/// A plain (non-transactional) write of unique values to `keys`, which
/// share a shard: one atomic batch.
async fn rw_batch(ctx: &mut Ctx, p: i64, keys: Vec<i64>) -> OpType {
    let planned: Vec<(bool, i64, Value)> = keys
        .into_iter()
        .map(|k| {
            (
                true,
                k,
                Value::Int(ctx.unique.fetch_add(1, Ordering::Relaxed)),
            )
        })
        .collect();
    let value = rw_mops_value(&planned);
    let batch = planned
        .iter()
        .map(|(_, k, v)| (rw_key(*k), Some(v.to_edn().into_bytes())))
        .collect();
    ctx.rec.invoke(p, "txn", None, value.clone());
    let client = ctx.writer();
    let t = match client.write(batch).await {
        Ok(_) => OpType::Ok,
        Err(e) => {
            ctx.rec.note_error(&e);
            outcome_of(&e)
        }
    };
    ctx.rec.complete(p, t, "txn", None, value)
}

/// One transaction of micro-ops `(write?, key)`: reads take shared locks,
/// writes are unique values sent with the commit.
async fn rw_txn_of(ctx: &mut Ctx, p: i64, mops: Vec<(bool, i64)>) -> OpType {
    let mut planned = plan_mops(ctx, mops);
    let invoked = rw_mops_value(&planned);
    let mut t = match begin_recorded(ctx, p, &invoked).await {
        Ok(t) => t,
        Err(failed) => return failed,
    };
    let body = async {
        for (write, k, v) in planned.iter_mut() {
            if *write {
                t.put(&rw_key(*k), v.to_edn().as_bytes()).await?;
            } else {
                *v = parse_int(ctx.within(false, t.get(&rw_key(*k))).await?)?
                    .map_or(Value::Nil, Value::Int);
            }
        }
        Ok::<_, ClientError>(())
    }
    .await;
    if let Err(e) = &body {
        ctx.rec.note_error(e);
        t.rollback().await;
        return ctx.rec.complete(p, OpType::Fail, "txn", None, invoked);
    }
    match ctx.within(true, t.commit()).await {
        Ok(()) => ctx
            .rec
            .complete(p, OpType::Ok, "txn", None, rw_mops_value(&planned)),
        Err(e) => {
            ctx.rec.note_error(&e);
            abandon(&mut t).await;
            ctx.rec.complete(p, outcome_of(&e), "txn", None, invoked)
        }
    }
}
