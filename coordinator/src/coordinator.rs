//! The coordinator process: open transactions (sessions), the owner task
//! that drives the 2PC [`Machine`], and the recovery log replica.
//!
//! Only the leader of the coordinator group serves transactions. Sessions
//! (which shards a transaction touched) live in the leader's memory: a
//! coordinator failover aborts open transactions (their participants
//! expire them), but never a decided one, whose decision is in the log.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pact_client::{Client, ClientOptions};
use pact_common::{system_clock, ClusterConfig, Guard, Hlc, NodeId, Op, ShardId, TxnId};
use pact_proto as pb;
use pact_proto::participant_client::ParticipantClient;
use pact_raft::{Host, NodeStore, Replica, Router};
use tokio::sync::{mpsc, oneshot};

use crate::convert::pb_txn;
use crate::log::{self, Decision, LogCommand, LogReply, DECISION_PREFIX};
use crate::machine::{Action, Event, LogResult, Machine, Outcome, Vote};
use crate::Error;

/// Open transactions idle this long are aborted by the coordinator.
pub const SESSION_IDLE: Duration = Duration::from_secs(30);

struct Session {
    shards: BTreeSet<ShardId>,
    last: Instant,
}

/// Writes a client sent with its commit, when the transaction touches one
/// shard only: they travel inside that shard's CommitOnePhase instead of a
/// Write of their own.
#[derive(Clone, Default)]
struct Carried {
    /// The commit is the transaction's first request to the shard.
    first: bool,
    ops: Vec<pb::WriteOp>,
}

enum Input {
    Commit {
        txn: TxnId,
        shards: BTreeSet<ShardId>,
        carried: Option<Carried>,
        reply: oneshot::Sender<Outcome>,
    },
    Event(Event),
    Leader(Option<u64>),
    /// Is 2PC still working on this transaction?
    InFlight(TxnId, oneshot::Sender<bool>),
}

pub struct Coordinator {
    group: u64,
    node: NodeId,
    replica: Replica,
    router: Router,
    participants: Client,
    hlc: Hlc,
    sessions: Mutex<HashMap<TxnId, Session>>,
    inputs: mpsc::UnboundedSender<Input>,
    /// The term in which this replica leads and has finished recovery.
    ready: Mutex<Option<u64>>,
    pub metrics: crate::metrics::Metrics,
}

impl Coordinator {
    pub async fn start(
        config: ClusterConfig,
        node: NodeId,
        data_dir: &Path,
    ) -> Result<Arc<Self>, Error> {
        let Some(cg) = config.coordinator_of(node).cloned() else {
            return Err(Error::InvalidInput(format!(
                "node {node} is not a replica of any coordinator group in the config"
            )));
        };
        let store = NodeStore::open(data_dir).map_err(|e| {
            Error::Fatal(format!(
                "cannot open storage at {}: {e}",
                data_dir.display()
            ))
        })?;
        let host = Host::new(store);
        let members = cg
            .replicas
            .iter()
            .filter_map(|n| config.node(*n).map(|nc| (n.0, nc.addr.clone())))
            .collect();
        let tuning = pact_raft::Tuning::from(&config.raft);
        let replica = Replica::start(cg.group, node.0, members, &tuning, log::app(), &host).await?;
        let participants = Client::new(
            &config,
            ClientOptions {
                request_timeout: Duration::from_secs(10),
                retry_for: Duration::from_secs(10),
                ..ClientOptions::default()
            },
        );
        let (tx, rx) = mpsc::unbounded_channel();
        let c = Arc::new(Coordinator {
            group: cg.group,
            node,
            replica,
            router: host.router,
            participants,
            hlc: Hlc::new(system_clock()),
            sessions: Mutex::new(HashMap::new()),
            inputs: tx,
            ready: Mutex::new(None),
            metrics: crate::metrics::Metrics::new()
                .map_err(|e| Error::Fatal(format!("metrics: {e}")))?,
        });
        tokio::spawn(owner(c.clone(), rx));
        let mut leadership = c.replica.leadership();
        let inputs = c.inputs.clone();
        tokio::spawn(async move {
            while leadership.changed().await.is_ok() {
                let v = *leadership.borrow_and_update();
                if inputs.send(Input::Leader(v)).is_err() {
                    break;
                }
            }
        });
        tokio::spawn(expire_sessions(c.clone()));
        Ok(c)
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    pub fn fatal(&self) -> Option<String> {
        self.replica.fatal()
    }

    fn require_leader(&self) -> Result<(), Error> {
        let st = self.replica.status();
        let ready = self.ready.lock().map(|r| *r).unwrap_or(None);
        match (st.role, ready) {
            ("leader", Some(t)) if t == st.term => Ok(()),
            ("leader", _) => Err(Error::Unavailable(
                "coordinator leader is still recovering".into(),
            )),
            _ => Err(Error::NotLeader {
                hint: st.leader.filter(|(l, _)| *l != self.node.0),
            }),
        }
    }

    fn check_txn(&self, txn: TxnId) -> Result<(), Error> {
        if txn.group != self.group {
            return Err(Error::InvalidInput(format!(
                "transaction {txn} belongs to coordinator group {}, this is group {}",
                txn.group, self.group
            )));
        }
        Ok(())
    }

    pub fn begin(&self) -> Result<TxnId, Error> {
        self.require_leader()?;
        let txn = TxnId {
            ts: self.hlc.now(),
            node: self.node.0,
            group: self.group,
        };
        if let Ok(mut s) = self.sessions.lock() {
            s.insert(
                txn,
                Session {
                    shards: BTreeSet::new(),
                    last: Instant::now(),
                },
            );
        }
        Ok(txn)
    }

    /// Note that `txn` is about to touch `shard`; returns whether it is the
    /// transaction's first request there.
    fn touch(&self, txn: TxnId, shard: ShardId) -> Result<bool, Error> {
        self.check_txn(txn)?;
        self.require_leader()?;
        let mut s = self
            .sessions
            .lock()
            .map_err(|_| Error::Fatal("session lock poisoned".into()))?;
        let sess = s.get_mut(&txn).ok_or_else(|| {
            Error::Aborted(format!(
                "unknown transaction {txn} (expired, finished, or coordinator failover)"
            ))
        })?;
        sess.last = Instant::now();
        Ok(sess.shards.insert(shard))
    }

    /// A participant call failed: the transaction is done for; abort it
    /// everywhere it went, and tell the client why.
    async fn fail(&self, txn: TxnId, e: Error) -> Error {
        if matches!(e, Error::InvalidInput(_)) {
            // A bad request does not doom the transaction.
            return e;
        }
        self.rollback(txn).await;
        match e {
            Error::Aborted(_) => e,
            other => Error::Aborted(other.to_string()),
        }
    }

    pub async fn get(
        &self,
        txn: TxnId,
        key: Vec<u8>,
        for_update: bool,
    ) -> Result<Option<Vec<u8>>, Error> {
        pact_common::validate_key(&key).map_err(|e| Error::InvalidInput(e.to_string()))?;
        let shard = self.participants.shard_for_key(&key);
        let first = self.touch(txn, shard)?;
        let req = pb::TxnGetRequest {
            shard_id: shard.0,
            txn: Some(pb_txn(txn)),
            key: key.into(),
            for_update,
            first,
        };
        let r = self
            .participants
            .call_shard(shard, true, |ch| {
                let req = req.clone();
                async move { participant(ch).txn_get(req).await }
            })
            .await;
        match r {
            Ok(r) => Ok(r.found.then(|| r.value.to_vec())),
            Err(e) => Err(self.fail(txn, e.into()).await),
        }
    }

    pub async fn scan(
        &self,
        txn: TxnId,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: u32,
    ) -> Result<(Vec<(Vec<u8>, Vec<u8>)>, bool), Error> {
        let mut all = Vec::new();
        let mut more = false;
        for shard in self
            .participants
            .shard_map()
            .shards_for_range(&start, end.as_deref())
        {
            let first = self.touch(txn, shard)?;
            let req = pb::TxnScanRequest {
                shard_id: shard.0,
                txn: Some(pb_txn(txn)),
                start: start.clone().into(),
                end: end.clone().unwrap_or_default().into(),
                limit,
                first,
            };
            let r = self
                .participants
                .call_shard(shard, true, |ch| {
                    let req = req.clone();
                    async move { participant(ch).txn_scan(req).await }
                })
                .await;
            match r {
                Ok(r) => {
                    more |= r.more;
                    all.extend(
                        r.pairs
                            .into_iter()
                            .map(|p| (p.key.to_vec(), p.value.to_vec())),
                    );
                }
                Err(e) => return Err(self.fail(txn, e.into()).await),
            }
        }
        all.sort();
        let limit = if limit == 0 { 1000 } else { limit as usize };
        if all.len() > limit {
            all.truncate(limit);
            more = true;
        }
        Ok((all, more))
    }

    fn by_shard(&self, ops: Vec<pb::WriteOp>) -> BTreeMap<ShardId, Vec<pb::WriteOp>> {
        let mut by_shard: BTreeMap<ShardId, Vec<pb::WriteOp>> = BTreeMap::new();
        for op in ops {
            by_shard
                .entry(self.participants.shard_for_key(&op.key))
                .or_default()
                .push(op);
        }
        by_shard
    }

    /// Lock and buffer `ops` at `shard` for `txn`.
    async fn write_shard(
        &self,
        txn: TxnId,
        shard: ShardId,
        first: bool,
        ops: Vec<pb::WriteOp>,
    ) -> Result<(), Error> {
        let req = pb::TxnWriteRequest {
            shard_id: shard.0,
            txn: Some(pb_txn(txn)),
            ops,
            first,
        };
        self.participants
            .call_shard(shard, true, |ch| {
                let req = req.clone();
                async move { participant(ch).txn_write(req).await }
            })
            .await
            .map(|_| ())
            .map_err(Error::from)
    }

    pub async fn write(&self, txn: TxnId, ops: Vec<pb::WriteOp>) -> Result<(), Error> {
        for (shard, ops) in self.by_shard(ops) {
            let first = self.touch(txn, shard)?;
            if let Err(e) = self.write_shard(txn, shard, first, ops).await {
                return Err(self.fail(txn, e).await);
            }
        }
        Ok(())
    }

    /// Commit, first adding `ops`: writes the client buffered. If the
    /// transaction touches one shard only, they travel inside its one-phase
    /// commit (which locks and buffers them first). Otherwise they are
    /// locked at all their shards at once, before any shard prepares: a
    /// preparing transaction must wait for nothing, or wound-wait could
    /// deadlock.
    pub async fn commit(&self, txn: TxnId, ops: Vec<pb::WriteOp>) -> Result<Outcome, Error> {
        self.check_txn(txn)?;
        self.require_leader()?;
        let touched = match self.sessions.lock() {
            Ok(s) => s.get(&txn).map(|sess| sess.shards.clone()),
            Err(_) => return Err(Error::Fatal("session lock poisoned".into())),
        };
        let Some(mut touched) = touched else {
            // Not open here: maybe already decided (a retried commit).
            return self.status(txn, false).await;
        };
        let mut parts = self.by_shard(ops);
        touched.extend(parts.keys().copied());
        let mut carried = None;
        if touched.len() == 1 {
            if let Some((shard, ops)) = parts.pop_first() {
                let first = self.touch(txn, shard)?;
                carried = Some(Carried { first, ops });
            }
        } else if !parts.is_empty() {
            let mut calls = Vec::new();
            for (shard, ops) in parts {
                let first = self.touch(txn, shard)?;
                calls.push(self.write_shard(txn, shard, first, ops));
            }
            let failed = futures::future::join_all(calls)
                .await
                .into_iter()
                .find_map(Result::err);
            if let Some(e) = failed {
                // The client is done with the transaction either way.
                self.rollback(txn).await;
                return Err(match e {
                    Error::Aborted(_) => e,
                    other => Error::Aborted(other.to_string()),
                });
            }
        }
        let sess = self.sessions.lock().ok().and_then(|mut s| s.remove(&txn));
        let Some(sess) = sess else {
            return self.status(txn, false).await;
        };
        let (tx, rx) = oneshot::channel();
        self.inputs
            .send(Input::Commit {
                txn,
                shards: sess.shards,
                carried,
                reply: tx,
            })
            .map_err(|_| Error::Fatal("coordinator owner task stopped".into()))?;
        rx.await
            .map_err(|_| Error::Unknown("coordinator lost leadership during commit".into()))
    }

    /// Abort an open transaction everywhere it went (best effort: what is
    /// missed here expires at the participant).
    pub async fn rollback(&self, txn: TxnId) {
        let sess = self.sessions.lock().ok().and_then(|mut s| s.remove(&txn));
        let Some(sess) = sess else { return };
        let calls = sess
            .shards
            .into_iter()
            .map(|shard| self.send_decision(txn, shard, false));
        futures::future::join_all(calls).await;
    }

    /// The final outcome of `txn` as the recovery log knows it. With
    /// `resolve`, a transaction with no decision gets a presumed abort,
    /// recorded first so it is final; without, it is reported unknown.
    pub async fn status(&self, txn: TxnId, resolve: bool) -> Result<Outcome, Error> {
        self.check_txn(txn)?;
        self.require_leader()?;
        let open = self
            .sessions
            .lock()
            .map(|s| s.contains_key(&txn))
            .unwrap_or(false);
        if open {
            return Ok(Outcome::Open("transaction is still open".into()));
        }
        self.replica.read_barrier().await?;
        if let Some(b) = self.replica.get_local(&log::decision_key(txn)).await? {
            let d: Decision = log::decode(&b).map_err(Error::Fatal)?;
            return Ok(decided(d.commit));
        }
        let (tx, rx) = oneshot::channel();
        let _ = self.inputs.send(Input::InFlight(txn, tx));
        if rx.await.unwrap_or(false) {
            // Do not presume an abort under a commit that is progressing:
            // it would win (first decision wins) and abort a healthy 2PC.
            return Ok(Outcome::Open("commit in progress".into()));
        }
        if !resolve {
            return Ok(Outcome::Unknown(
                "no decision recorded (yet); a one-phase commit is recorded shortly after it is applied".into(),
            ));
        }
        // Nothing logged: record the presumed abort so it is final. If 2PC
        // is racing to log a commit for it right now, whichever record
        // lands first wins, and both sides report that one.
        let (_, reply) = self
            .replica
            .propose(
                LogCommand::Decide {
                    txn,
                    commit: false,
                    shards: Vec::new(),
                }
                .encode(),
            )
            .await?;
        match log::decode::<LogReply>(&reply).map_err(Error::Fatal)? {
            LogReply::Decided { commit } => Ok(decided(commit)),
            other => Err(Error::Fatal(format!("unexpected log reply {other:?}"))),
        }
    }

    async fn send_decision(&self, txn: TxnId, shard: ShardId, commit: bool) -> Result<(), Error> {
        let req = pb::DecideRequest {
            shard_id: shard.0,
            txn: Some(pb_txn(txn)),
            commit,
        };
        self.participants
            .call_shard(shard, true, |ch| async move {
                participant(ch).decide(req).await
            })
            .await
            .map(|_| ())
            .map_err(Error::from)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecResult {
    pub txn: TxnId,
    pub succeeded: bool,
    /// Results of the branch's gets, in order.
    pub results: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    pub outcome: Outcome,
}

/// How many times a one-shot transaction is started over after an abort.
pub const EXECUTE_ATTEMPTS: u32 = 10;

impl Coordinator {
    /// A one-shot transaction: guards, then one branch, then commit; started
    /// over on abort (it is the coordinator's own transaction, so a retry
    /// cannot repeat anything the client saw).
    pub async fn execute(
        &self,
        guards: Vec<Guard>,
        then: Vec<Op>,
        otherwise: Vec<Op>,
    ) -> Result<ExecResult, Error> {
        let mut last = String::new();
        let mut backoff = Duration::from_millis(5);
        for _ in 0..EXECUTE_ATTEMPTS {
            let txn = self.begin()?;
            let run = async {
                let mut ok = true;
                for g in &guards {
                    let (key, want): (&Vec<u8>, Option<Option<&Vec<u8>>>) = match g {
                        Guard::Exists(k) => (k, None),
                        Guard::Missing(k) => (k, Some(None)),
                        Guard::Equals(k, v) => (k, Some(Some(v))),
                    };
                    let v = self.get(txn, key.clone(), false).await?;
                    ok &= match want {
                        None => v.is_some(),
                        Some(None) => v.is_none(),
                        Some(Some(w)) => v.as_ref() == Some(w),
                    };
                }
                let mut results = Vec::new();
                for op in if ok { &then } else { &otherwise } {
                    match op {
                        Op::Get(k) => {
                            results.push((k.clone(), self.get(txn, k.clone(), false).await?))
                        }
                        Op::Put(k, v) => {
                            let w = pb::WriteOp {
                                key: k.clone().into(),
                                op: Some(pb::write_op::Op::Put(v.clone().into())),
                            };
                            self.write(txn, vec![w]).await?
                        }
                        Op::Delete(k) => {
                            let w = pb::WriteOp {
                                key: k.clone().into(),
                                op: Some(pb::write_op::Op::Delete(true)),
                            };
                            self.write(txn, vec![w]).await?
                        }
                    }
                }
                Ok::<_, Error>((ok, results))
            };
            match run.await {
                Ok((succeeded, results)) => match self.commit(txn, Vec::new()).await? {
                    Outcome::Aborted(r) => last = r,
                    outcome => {
                        return Ok(ExecResult {
                            txn,
                            succeeded,
                            results,
                            outcome,
                        })
                    }
                },
                Err(Error::Aborted(r)) => last = r,
                Err(e) => {
                    self.rollback(txn).await;
                    return Err(e);
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(200));
        }
        Err(Error::Aborted(format!(
            "gave up after {EXECUTE_ATTEMPTS} attempts; last: {last}"
        )))
    }
}

fn decided(commit: bool) -> Outcome {
    if commit {
        Outcome::Committed
    } else {
        Outcome::Aborted("aborted".into())
    }
}

fn participant(ch: tonic::transport::Channel) -> ParticipantClient<tonic::transport::Channel> {
    ParticipantClient::new(ch)
        .max_decoding_message_size(pact_client::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(pact_client::MAX_MESSAGE_BYTES)
}

/// The owner task: the only place the machine lives. Actions run as
/// spawned tasks whose results come back as events.
async fn owner(c: Arc<Coordinator>, mut rx: mpsc::UnboundedReceiver<Input>) {
    let mut machine = Machine::new();
    let mut waiters: HashMap<TxnId, oneshot::Sender<Outcome>> = HashMap::new();
    // Writes carried by one-phase commits, until their CommitOnePhase runs.
    let mut carried: HashMap<TxnId, Carried> = HashMap::new();
    let mut term: Option<u64> = None;
    while let Some(input) = rx.recv().await {
        let actions = match input {
            Input::Commit {
                txn,
                shards,
                carried: writes,
                reply,
            } => {
                if term.is_none() {
                    let _ = reply.send(Outcome::Aborted("coordinator is not leader".into()));
                    continue;
                }
                if let Some(w) = writes {
                    carried.entry(txn).or_insert(w);
                }
                waiters.insert(txn, reply);
                machine.step(Event::Commit { txn, shards })
            }
            Input::Event(ev) => machine.step(ev),
            Input::InFlight(txn, reply) => {
                let _ = reply.send(machine.in_flight(txn));
                continue;
            }
            Input::Leader(t) => {
                if t == term {
                    continue;
                }
                term = t;
                // Leadership changed either way: what this machine was doing
                // belongs to the old term. Decided transactions are picked up
                // again from the log by whoever leads now.
                machine = Machine::new();
                for (_, w) in waiters.drain() {
                    let _ = w.send(Outcome::Unknown(
                        "coordinator leadership changed during commit".into(),
                    ));
                }
                if let Ok(mut s) = c.sessions.lock() {
                    s.clear();
                }
                carried.clear();
                if let Ok(mut r) = c.ready.lock() {
                    *r = None;
                }
                if let Some(t) = t {
                    tokio::spawn(recover(c.clone(), t));
                }
                continue;
            }
        };
        for a in actions {
            run(&c, a, &mut waiters, &mut carried);
        }
    }
}

fn run(
    c: &Arc<Coordinator>,
    action: Action,
    waiters: &mut HashMap<TxnId, oneshot::Sender<Outcome>>,
    carried: &mut HashMap<TxnId, Carried>,
) {
    let feed = {
        let inputs = c.inputs.clone();
        move |ev: Event| {
            let _ = inputs.send(Input::Event(ev));
        }
    };
    match action {
        Action::Reply { txn, outcome } => {
            carried.remove(&txn);
            c.metrics.outcome(&outcome);
            if let Some(w) = waiters.remove(&txn) {
                let _ = w.send(outcome);
            }
        }
        Action::CommitOnePhase { txn, shard } => {
            let c = c.clone();
            let writes = carried.remove(&txn).unwrap_or_default();
            tokio::spawn(async move {
                let started = Instant::now();
                let req = pb::TxnRequest {
                    shard_id: shard.0,
                    txn: Some(pb_txn(txn)),
                    resolve: false,
                    ops: writes.ops,
                    first: writes.first,
                };
                let r = c
                    .participants
                    .call_shard(shard, false, |ch| {
                        let req = req.clone();
                        async move { participant(ch).commit_one_phase(req).await }
                    })
                    .await;
                let outcome = match r.map_err(Error::from) {
                    Ok(_) => Outcome::Committed,
                    Err(Error::Aborted(m))
                    | Err(Error::InvalidInput(m))
                    | Err(Error::Conflict(m)) => Outcome::Aborted(m),
                    // Fate open: settle it at the shard.
                    Err(e) => settle_one_phase(&c, txn, shard, e.to_string()).await,
                };
                if outcome == Outcome::Committed
                    && !pact_common::faults::enabled("skip-one-phase-record")
                {
                    // Record it for TxnStatus, off the commit path: the
                    // shard's apply is the decision; this record only
                    // answers later questions.
                    let cmd = LogCommand::Decide {
                        txn,
                        commit: true,
                        shards: Vec::new(),
                    };
                    let c2 = c.clone();
                    tokio::spawn(async move {
                        let _ = c2.replica.propose(cmd.encode()).await;
                    });
                }
                c.metrics.phase("one_phase", started);
                feed(Event::OnePhaseDone { txn, outcome });
            });
        }
        Action::Prepare { txn, shard } => {
            let c = c.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let req = pb::TxnRequest {
                    shard_id: shard.0,
                    txn: Some(pb_txn(txn)),
                    ..Default::default()
                };
                let r = c
                    .participants
                    .call_shard(shard, true, |ch| {
                        let req = req.clone();
                        async move { participant(ch).prepare(req).await }
                    })
                    .await;
                let vote = match r {
                    Ok(p) => match pb::Vote::try_from(p.vote) {
                        Ok(pb::Vote::Yes) => Vote::Yes,
                        Ok(pb::Vote::ReadOnly) => Vote::ReadOnly,
                        _ => Vote::No(if p.reason.is_empty() {
                            "participant voted no".into()
                        } else {
                            p.reason
                        }),
                    },
                    Err(e) => Vote::No(format!("prepare at shard {shard} failed: {e}")),
                };
                c.metrics.phase("prepare", started);
                feed(Event::Voted { txn, shard, vote });
            });
        }
        Action::Log { txn, shards } => {
            let c = c.clone();
            tokio::spawn(async move {
                let delay = pact_common::faults::decision_delay_ms();
                if delay > 0 {
                    // Fault injection: hold every prepared transaction in
                    // doubt a while, so a killed coordinator leaves some.
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                let started = Instant::now();
                let cmd = LogCommand::Decide {
                    txn,
                    commit: true,
                    shards: shards.iter().map(|s| s.0).collect(),
                };
                let result = match c.replica.propose(cmd.encode()).await {
                    Ok((_, reply)) => match log::decode::<LogReply>(&reply) {
                        Ok(LogReply::Decided { commit: true }) => LogResult::Logged,
                        Ok(LogReply::Decided { commit: false }) => {
                            LogResult::AlreadyDecided { commit: false }
                        }
                        Ok(other) => LogResult::Failed(format!("unexpected log reply {other:?}")),
                        Err(e) => LogResult::Failed(e),
                    },
                    // Refused before it was appended: it can never commit,
                    // since no one else proposes a commit for this txn.
                    Err(pact_raft::ReplicaError::NotLeader { .. }) => {
                        LogResult::AlreadyDecided { commit: false }
                    }
                    Err(e) => LogResult::Failed(e.to_string()),
                };
                c.metrics.phase("log", started);
                feed(Event::Logged { txn, result });
            });
        }
        Action::Decide { txn, shard, commit } => {
            let c = c.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let ev = decide_event(&c, txn, shard, commit).await;
                c.metrics.phase("decide", started);
                feed(ev);
            });
        }
        Action::RetryDecide { txn, shard, commit } => {
            let c = c.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let ev = decide_event(&c, txn, shard, commit).await;
                feed(ev);
            });
        }
        Action::Finish { txn } => {
            let c = c.clone();
            tokio::spawn(async move {
                // Best effort: without it, recovery resends an idempotent commit.
                let _ = c.replica.propose(LogCommand::Finish { txn }.encode()).await;
            });
        }
    }
}

/// A one-phase commit whose fate is unknown: send an abort to the shard
/// until it answers definitely. The shard refuses the abort if the commit
/// applied first ("already committed"), and otherwise records the abort, so
/// the commit can no longer apply after it.
async fn settle_one_phase(c: &Coordinator, txn: TxnId, shard: ShardId, why: String) -> Outcome {
    for _ in 0..20 {
        match c.send_decision(txn, shard, false).await {
            Ok(()) => return Outcome::Aborted(format!("not applied ({why}); aborted")),
            Err(Error::Conflict(m)) if m.contains("already committed") => {
                return Outcome::Committed
            }
            Err(e) => {
                tracing::warn!(%txn, shard = shard.0, error = %e, "one-phase outcome not settled yet");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
    Outcome::Unknown(why)
}

async fn decide_event(c: &Coordinator, txn: TxnId, shard: ShardId, commit: bool) -> Event {
    match c.send_decision(txn, shard, commit).await {
        Ok(()) => Event::Applied { txn, shard },
        Err(Error::InvalidInput(m)) | Err(Error::Conflict(m)) => {
            // The participant refuses the decision outright (it recorded
            // the other outcome): retrying cannot help. This means a
            // protocol invariant broke; say so loudly.
            tracing::error!(%txn, shard = shard.0, commit, error = %m, "participant refused the decision");
            Event::Applied { txn, shard }
        }
        Err(e) => {
            tracing::warn!(%txn, shard = shard.0, commit, error = %e, "decision not delivered; will retry");
            Event::ApplyFailed { txn, shard }
        }
    }
}

/// On becoming leader: apply everything committed before, then finish
/// every logged commit not yet marked finished.
async fn recover(c: Arc<Coordinator>, term: u64) {
    if !c.replica.settle(term).await {
        return;
    }
    let records = match c.replica.scan_prefix_local(&[DECISION_PREFIX]).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the recovery log");
            return;
        }
    };
    let mut unfinished = Vec::new();
    for (k, v) in records {
        match (TxnId::from_key(&k), log::decode::<Decision>(&v)) {
            (Some(txn), Ok(d)) => {
                c.hlc.observe(txn.ts);
                if d.commit && !d.finished {
                    unfinished.push((txn, log::shards_of(&d)));
                }
            }
            _ => tracing::error!("skipping a corrupt recovery log record"),
        }
    }
    tracing::info!(
        group = c.group,
        term,
        unfinished = unfinished.len(),
        "coordinator leader recovered"
    );
    let _ = c.inputs.send(Input::Event(Event::Recovered { unfinished }));
    if c.replica.status().term == term {
        if let Ok(mut r) = c.ready.lock() {
            *r = Some(term);
        }
    }
}

async fn expire_sessions(c: Arc<Coordinator>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle: Vec<TxnId> = c
            .sessions
            .lock()
            .map(|s| {
                s.iter()
                    .filter(|(_, v)| v.last.elapsed() > SESSION_IDLE)
                    .map(|(k, _)| *k)
                    .collect()
            })
            .unwrap_or_default();
        for txn in idle {
            tracing::info!(%txn, "aborting idle transaction");
            c.rollback(txn).await;
        }
    }
}
