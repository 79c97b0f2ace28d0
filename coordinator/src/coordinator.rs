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

use futures::StreamExt;
use pact_client::{Client, ClientError, ClientOptions};
use pact_common::{
    system_clock, Abort, AbortKind, ClusterConfig, Guard, Hlc, NodeId, Op, ShardId, ShardMap,
    Timestamp, TxnId,
};
use pact_proto as pb;
use pact_proto::participant_client::ParticipantClient;
use pact_raft::admission::{Gate, Ticket};
use pact_raft::metrics::{QUEUE_COORDINATOR_INPUT, QUEUE_COORDINATOR_RECORDS};
use pact_raft::{Host, Replica, Router};
use tokio::sync::{mpsc, oneshot, watch};

use crate::convert::pb_txn;
use crate::handed::{Handed, HANDED_KEPT};
use crate::inquiry::{self, ShardState, Verdict};
use crate::log::{self, Decision, LogCommand, LogReply, DECISION_PREFIX, RESERVATION_KEY};
use crate::machine::{Action, Event, LogResult, Machine, Outcome, Vote};
use crate::stamps::{self, Reservation};
use crate::Error;

/// Most bytes of a wound's reason a session keeps.
const MAX_WOUND_REASON: usize = 1024;
/// How many times one request of a transaction is routed again after a
/// shard said the map was stale.
const REROUTES: u32 = 3;

/// Refresh the participants' map `stale` in the background: an abort or
/// a vote must not wait for every shard to describe itself.
fn refresh_soon(participants: &Client, stale: Arc<ShardMap>) {
    let participants = participants.clone();
    tokio::spawn(async move {
        if let Err(e) = participants.refresh_map(&stale).await {
            tracing::info!(error = %e, "could not refresh the routing map");
        }
    });
}

const STAMP_WAIT: Duration = Duration::from_secs(3);

/// How long a commit waits for room in the owner task's queue before it
/// is refused (OVERLOADED): a short bounded wait, as the transaction was
/// admitted already, but not the client's whole deadline.
const COMMIT_QUEUE_WAIT: Duration = Duration::from_secs(1);

/// How long the coordinator retries a participant that refuses with
/// OVERLOADED before the transaction aborts.
const PARTICIPANT_OVERLOAD_WAIT: Duration = Duration::from_millis(500);

/// The `limit` label of the open-transaction limit.
pub const OPEN_TXNS_LIMIT: &str = "open_txns";

/// How long TxnStatus with `resolve` waits for a shard's answer about a
/// transaction (without one it cannot presume the abort).
const INQUIRY_WAIT: Duration = Duration::from_secs(3);
/// The same without `resolve`: a missing answer only makes the reply
/// "unknown", which participants checking on a silent transaction act on.
const LOOKUP_WAIT: Duration = Duration::from_secs(1);

struct Session {
    shards: BTreeSet<ShardId>,
    /// Shards holding writes of the transaction (sent with TxnWrite).
    written: BTreeSet<ShardId>,
    /// Keys the transaction holds exclusively (read for update, or
    /// written): its commit may carry writes of these inside Prepare, as
    /// the shard will not need to wait for their locks.
    locked: BTreeSet<Vec<u8>>,
    /// The client's last request (idle timeout).
    last: Instant,
    /// The client's last sign of life, request or heartbeat (lease).
    alive: Instant,
    /// Its age for wound-wait (the start of its first attempt).
    priority: Timestamp,
    /// A participant wounded it: every later request fails with this,
    /// and no read reply is handed out any more (see [`Coordinator::wounded`]).
    wounded: Option<String>,
    /// Handed to the owner task to commit: the session stays until the
    /// machine has the transaction, so TxnStatus always sees it as open
    /// or in flight, never as neither (it would presume an abort).
    committing: bool,
    /// A `Commit` call is taking it to the owner task: a second call for
    /// the same transaction (a client retrying a slow commit, a proxy
    /// resending) sends nothing to the shards and waits for the first
    /// one's outcome instead of racing it. Cleared if that call gives up
    /// before the hand-over (refused, or dropped by its client).
    claimed: bool,
    /// Its abort was reported to the client and counted (a wound met by
    /// a request), so ending it later counts nothing more.
    counted: bool,
    /// Its place under `limits.max_open_txns`: handed to the owner task
    /// with the commit, given back when the client has its answer (or
    /// when the session ends any other way, by dropping it).
    admitted: Option<Ticket>,
}

/// Longest a retried transaction keeps the age of its first attempt: long
/// enough to outlive any contention, short enough that a client claiming
/// an old age cannot hold seniority over everyone for long.
pub const MAX_PRIORITY_AGE: Duration = Duration::from_secs(60);

/// A batch of reads (`GetMany`, reads at `Begin`) is refused whole, before
/// anything is done, if it has too many keys or a malformed one.
pub fn check_reads(keys: &[Vec<u8>]) -> Result<(), Error> {
    pact_common::validate_reads(keys).map_err(|e| Error::InvalidInput(e.to_string()))
}

/// How long a second `Commit` call for a transaction another call is
/// committing waits for its outcome before answering "unknown".
const COMMIT_OUTCOME_WAIT: Duration = Duration::from_secs(10);

/// A `Commit` call waiting on another's: sleeps `pause`, then doubles it
/// (up to 50 ms); false, without sleeping, if that would pass `deadline`.
async fn pause_before_asking_again(pause: &mut Duration, deadline: tokio::time::Instant) -> bool {
    if tokio::time::Instant::now() + *pause > deadline {
        return false;
    }
    tokio::time::sleep(*pause).await;
    *pause = (*pause * 2).min(Duration::from_millis(50));
    true
}

/// What [`Coordinator::end`] found of a transaction's session.
enum Ended {
    /// Open: ended now; `counted` if its abort was counted already.
    Now { counted: bool },
    /// Handed to the owner task to commit: not ended.
    Committing,
    /// No session here (ended before, handed over and taken by the owner,
    /// or never here).
    Absent,
}

/// What a `Commit` call found of its transaction's session.
enum Found {
    /// Open, and now claimed by this call: its shards and locked keys.
    Claimed(BTreeSet<ShardId>, BTreeSet<Vec<u8>>),
    /// Open, and claimed by another call.
    Busy,
    /// Committing, or no session here.
    Gone,
}

/// A `Commit` call's claim on its transaction's session
/// ([`Session::claimed`]), given back when dropped (by then the session is
/// committing, ended, or open again for another call to claim).
struct Claim<'a> {
    sessions: &'a Mutex<HashMap<TxnId, Session>>,
    txn: TxnId,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.sessions.lock() {
            if let Some(sess) = s.get_mut(&self.txn) {
                sess.claimed = false;
            }
        }
    }
}

/// Writes a client sent with its commit that travel inside the shard's
/// CommitOnePhase or Prepare instead of a TxnWrite of their own: all of
/// them when the transaction touches one shard, otherwise those whose keys
/// the transaction already holds exclusively.
#[derive(Clone, Default)]
struct Carried {
    /// The commit is the transaction's first request to the shard.
    first: bool,
    priority: u64,
    ops: Vec<pb::WriteOp>,
}

enum Input {
    Commit {
        txn: TxnId,
        shards: BTreeSet<ShardId>,
        writers: BTreeSet<ShardId>,
        carried: BTreeMap<ShardId, Carried>,
        reply: oneshot::Sender<Outcome>,
        admitted: Option<Ticket>,
    },
    Event(Event),
    Leader(Option<u64>),
    /// Is 2PC still working on this transaction?
    /// `None`: not in flight; `Some(None)`: in flight, undecided;
    /// `Some(Some(commit))`: decided, being delivered to the shards.
    InFlight(TxnId, oneshot::Sender<Option<Option<bool>>>),
    /// The oldest transaction 2PC is working on.
    Oldest(oneshot::Sender<Option<TxnId>>),
}

pub struct Coordinator {
    group: u64,
    node: NodeId,
    replica: Replica,
    router: Router,
    participants: Client,
    hlc: Hlc,
    sessions: Mutex<HashMap<TxnId, Session>>,
    /// The owner task's queue (`limits.coordinator_queue`). Requests
    /// (commit, status) are refused when it stays full; the results of
    /// the owner's own actions wait for room, since losing one would
    /// stall a transaction's 2PC: the owner never waits on anything, so
    /// room always comes.
    inputs: mpsc::Sender<Input>,
    /// Open transactions (`limits.max_open_txns`).
    open: Gate,
    /// The term in which this replica leads and has finished recovery.
    ready: Mutex<Option<u64>>,
    /// Idle timeout and lease of open transactions.
    txn_tuning: pact_common::TxnTuning,
    /// Transaction timestamps reserved in the recovery log.
    stamps: Mutex<Reservation>,
    /// The furthest extension of the reservation asked for, for the
    /// reserver task to append: one value that only grows, not a queue.
    reserve: watch::Sender<Timestamp>,
    /// Woken when an extension ends (`begin` may be waiting for it).
    reserved: tokio::sync::Notify,
    /// Off-path records for the recorder task to append in batches; best
    /// effort, so a full queue drops them (counted) rather than wait.
    records: mpsc::Sender<LogCommand>,
    /// Records the recorder task took from `records` and holds for up to
    /// [`RECORD_HOLD`], for the next staging append to carry.
    carriable: Mutex<Vec<LogCommand>>,
    /// Transactions that ran longer than `gc::SLACK` and finished here,
    /// with the instant their retention ends: garbage collection holds its
    /// horizon below them until then.
    long_finished: Mutex<BTreeMap<TxnId, Instant>>,
    /// The reservation this leader found when its term began, with the
    /// term: every id at or above it was issued, if at all, by this
    /// leader in this term, and every id below it by an earlier leader.
    term_start: Mutex<Option<(u64, Timestamp)>>,
    /// The highest fence floor every shard holds for this group (see
    /// [`Coordinator::status`]); floors only rise, so it stays true.
    floor_raised: Mutex<Timestamp>,
    /// Transactions of this term whose commit ended with its outcome
    /// unknown: an append or a one-phase commit of theirs may still land,
    /// so TxnStatus fences them one by one. Rare; pruned by the horizon.
    unsettled: Mutex<BTreeSet<TxnId>>,
    /// The latest transactions handed to the owner task to commit, and
    /// their outcomes: what a late request of one is told (see
    /// `crate::handed`). Taken after `sessions` when both are held.
    handed: Mutex<Handed>,
    pub metrics: crate::metrics::Metrics,
    /// Set once this replica was removed from its node
    /// ([`Coordinator::retire`]): the background tasks end.
    retired: watch::Sender<bool>,
}

/// The coordinator group replica a `pact` node runs now, if any: the one
/// its config gives it, or one an operator added at run time
/// (`txn admin replica add --coord`); empty once it was removed. A node
/// runs at most one coordinator group's replica.
pub type Hosted = pact_common::Slot<Coordinator>;

impl Coordinator {
    pub async fn start(
        config: ClusterConfig,
        node: NodeId,
        data_dir: &Path,
        tls: Option<pact_client::Tls>,
    ) -> Result<Arc<Self>, Error> {
        if config.coordinator_of(node).is_none() {
            return Err(Error::InvalidInput(format!(
                "node {node} is not a replica of any coordinator group in the config"
            )));
        }
        let host = Host::open(
            data_dir,
            &config.storage,
            tls.as_ref().map(|t| t.client_config()),
        )
        .map_err(|e| Error::Fatal(e.to_string()))?;
        Self::start_on(config, node, &host, tls).await
    }

    /// [`Coordinator::start`] on a storage, Raft router and peer
    /// connections that the process already has, shared with the other
    /// groups it hosts (a `pact` server that also runs shard replicas).
    pub async fn start_on(
        config: ClusterConfig,
        node: NodeId,
        host: &Host,
        tls: Option<pact_client::Tls>,
    ) -> Result<Arc<Self>, Error> {
        let Some(cg) = config.coordinator_of(node).cloned() else {
            return Err(Error::InvalidInput(format!(
                "node {node} is not a replica of any coordinator group in the config"
            )));
        };
        Self::start_group(config, node, cg.group, None, host, tls, None).await
    }

    /// Start node `node`'s replica of coordinator group `group`: as the
    /// config gives it (`joined` None), or as one added at run time, whose
    /// group's voters were `joined` when it was added (it waits, empty,
    /// for the group's leader to add it, and is hosted again at restart).
    /// `local`: the node's own participant service, when the process runs
    /// one ([`pact_client::Local`]).
    #[allow(clippy::too_many_arguments)]
    pub async fn start_group(
        config: ClusterConfig,
        node: NodeId,
        group: u64,
        joined: Option<Vec<NodeId>>,
        host: &Host,
        tls: Option<pact_client::Tls>,
        local: Option<pact_client::Local>,
    ) -> Result<Arc<Self>, Error> {
        let Some(cg) = config
            .coordinators
            .iter()
            .find(|g| g.group == group)
            .cloned()
        else {
            return Err(Error::InvalidInput(format!(
                "no coordinator group {group} in the config"
            )));
        };
        let tuning = pact_raft::Tuning::from(&config.raft);
        let replica = match joined {
            None => {
                let members = pact_raft::members(&config, &cg.replicas);
                Replica::start(cg.group, node.0, members, &tuning, log::app(), host).await?
            }
            Some(voters) => {
                let members = host.members_of(&config, &voters);
                Replica::start_joined(cg.group, node.0, members, &tuning, log::app(), host).await?
            }
        };
        // Participants' transaction service is on their peer ports.
        let participants = Client::new(
            &config,
            ClientOptions {
                request_timeout: Duration::from_secs(10),
                retry_for: Duration::from_secs(10),
                // A transaction holds its locks while its coordinator
                // waits for a busy participant: better to abort it soon
                // (its client starts over) than to keep others waiting.
                overload_retry_for: Some(PARTICIPANT_OVERLOAD_WAIT),
                tls,
                peer_ports: true,
                // Nodes added at run time, as the host's directory knows them.
                resolver: Some(pact_client::Resolver({
                    let dir = host.directory();
                    Arc::new(move |n: NodeId| dir.addrs(n.0))
                })),
                // The participant service of this process's node, if it
                // runs one: its shard leaders are reached without the
                // network.
                local,
                ..ClientOptions::default()
            },
        );
        let queue = usize::try_from(config.limits.coordinator_queue.max(1)).unwrap_or(usize::MAX);
        let (tx, rx) = mpsc::channel(queue);
        let (reserve, reserve_rx) = watch::channel(Timestamp(0));
        let (records, records_rx) = mpsc::channel(RECORD_QUEUE);
        let open = Gate::new(
            OPEN_TXNS_LIMIT,
            usize::try_from(config.limits.max_open_txns).unwrap_or(usize::MAX),
        );
        let c = Arc::new(Coordinator {
            group: cg.group,
            node,
            replica,
            router: host.router.clone(),
            participants,
            hlc: Hlc::new(system_clock()),
            sessions: Mutex::new(HashMap::new()),
            inputs: tx,
            open,
            ready: Mutex::new(None),
            txn_tuning: config.transactions.clone(),
            stamps: Mutex::new(Reservation::new()),
            reserve,
            reserved: tokio::sync::Notify::new(),
            records,
            carriable: Mutex::new(Vec::new()),
            long_finished: Mutex::new(BTreeMap::new()),
            term_start: Mutex::new(None),
            floor_raised: Mutex::new(Timestamp(0)),
            unsettled: Mutex::new(BTreeSet::new()),
            handed: Mutex::new(Handed::new(HANDED_KEPT)),
            metrics: crate::metrics::Metrics::new()
                .map_err(|e| Error::Fatal(format!("metrics: {e}")))?,
            retired: watch::channel(false).0,
        });
        tokio::spawn(owner(c.clone(), rx));
        tokio::spawn(reserve_ahead(c.clone(), reserve_rx));
        tokio::spawn(record_batches(c.clone(), records_rx));
        let mut leadership = c.replica.leadership();
        let inputs = c.inputs.clone();
        let watcher = c.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = leadership.changed() => if r.is_err() { break },
                    _ = watcher.retired() => break,
                }
                let v = *leadership.borrow_and_update();
                if inputs.send(Input::Leader(v)).await.is_err() {
                    break;
                }
            }
        });
        tokio::spawn(expire_sessions(c.clone()));
        tokio::spawn(collect_garbage(c.clone()));
        Ok(c)
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    pub fn group(&self) -> u64 {
        self.group
    }

    /// Whether the cluster has coordinator group `group` (its config's
    /// groups).
    pub fn knows_group(&self, group: u64) -> bool {
        self.participants
            .coordinator_groups()
            .iter()
            .any(|(g, _)| *g == group)
    }

    /// Stop this replica for good and delete its data (its group no longer
    /// counts this node: the admin service checks), and end its background
    /// tasks. Transactions it was driving are the group's new leader's.
    pub async fn retire(&self, host: &Host) -> Result<(), Error> {
        self.replica.remove_here(host).await?;
        self.retired.send_replace(true);
        Ok(())
    }

    /// Resolves once [`Coordinator::retire`] ran.
    async fn retired(&self) {
        let mut r = self.retired.subscribe();
        let _ = r.wait_for(|v| *v).await;
    }

    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    pub fn fatal(&self) -> Option<String> {
        self.replica.fatal()
    }

    /// Bring the gauges read at a scrape up to date (open sessions,
    /// queue depths).
    pub fn refresh_metrics(&self) {
        let open = self.sessions.lock().map(|s| s.len()).unwrap_or(0);
        self.metrics
            .sessions
            .with_label_values(&[&pact_raft::metrics::group_label(self.group)])
            .set(open as i64);
        if let Some(m) = pact_raft::metrics::process() {
            let depth = |q: usize, room: usize| i64::try_from(q - room).unwrap_or(i64::MAX);
            m.queue_depth(QUEUE_COORDINATOR_INPUT)
                .set(depth(self.inputs.max_capacity(), self.inputs.capacity()));
            m.queue_depth(QUEUE_COORDINATOR_RECORDS)
                .set(depth(self.records.max_capacity(), self.records.capacity()));
        }
    }

    /// Transactions holding a place under `limits.max_open_txns` now.
    pub fn open_txns(&self) -> usize {
        self.open.in_use()
    }

    fn require_leader(&self) -> Result<(), Error> {
        let r = self.replica.role();
        let ready = self.ready.lock().map(|r| *r).unwrap_or(None);
        match (r.leader, ready) {
            (true, Some(t)) if t == r.term => Ok(()),
            (true, _) => Err(Error::Unavailable(
                "coordinator leader is still recovering".into(),
            )),
            _ => Err(Error::NotLeader {
                hint: r.known_leader.filter(|(l, _)| *l != self.node.0),
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

    /// Open a transaction. `priority`: the start of an earlier attempt of
    /// the same work, whose age it keeps (capped at [`MAX_PRIORITY_AGE`]);
    /// a priority from the future is refused. Returns the id and the age.
    pub async fn begin(&self, priority: Option<Timestamp>) -> Result<(TxnId, Timestamp), Error> {
        self.require_leader()?;
        // First of all, so a refused begin leaves nothing behind (not even
        // a used timestamp).
        let admitted = self.open.try_enter().ok_or_else(|| {
            Error::Overloaded(format!(
                "coordinator group {} has {} transactions open (limits.max_open_txns); retry later",
                self.group,
                self.open.max()
            ))
        })?;
        let mut admitted = Some(admitted);
        let mut opened = None;
        // The session is made as the id is issued, under the reservation's
        // lock, so TxnStatus never sees an issued id without its session.
        let ts = self
            .stamp(|ts| {
                let txn = TxnId {
                    ts,
                    node: self.node.0,
                    group: self.group,
                };
                let floor = Timestamp::from_parts(
                    ts.millis()
                        .saturating_sub(MAX_PRIORITY_AGE.as_millis() as u64),
                    0,
                );
                let priority = match priority {
                    None => ts,
                    Some(p) if p > ts => {
                        opened = Some(Err(Error::InvalidInput(format!(
                            "priority {p} is in the future (now {ts})"
                        ))));
                        return;
                    }
                    Some(p) => p.max(floor),
                };
                if let Ok(mut s) = self.sessions.lock() {
                    s.insert(
                        txn,
                        Session {
                            shards: BTreeSet::new(),
                            written: BTreeSet::new(),
                            locked: BTreeSet::new(),
                            last: Instant::now(),
                            alive: Instant::now(),
                            priority,
                            wounded: None,
                            committing: false,
                            claimed: false,
                            counted: false,
                            admitted: admitted.take(),
                        },
                    );
                }
                opened = Some(Ok((txn, priority)));
            })
            .await?;
        opened.unwrap_or_else(|| {
            Err(Error::Fatal(format!(
                "timestamp {ts} issued without a session"
            )))
        })
    }

    /// A participant wounded `txn`: from now on none of its requests
    /// succeeds and no read reply reaches its client, so nothing it reads
    /// later can come from after the write that took its lock (the
    /// participant frees that lock only once this returns). Nothing to do
    /// if the transaction is not open here: it is committing (its prepare
    /// will fail where it was wounded) or gone.
    pub fn wounded(&self, txn: TxnId, mut reason: String) -> Result<(), Error> {
        // Kept in the session until it ends, and told to its client: a
        // reason is a sentence, not a payload.
        if reason.len() > MAX_WOUND_REASON {
            let mut cut = MAX_WOUND_REASON;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        // Only the leader's sessions serve requests; a follower must not
        // confirm a wound it cannot enforce (`leader_session` refuses).
        self.leader_session(txn, |sess| {
            if let Some(sess) = sess {
                sess.wounded.get_or_insert(reason);
            }
        })
    }

    /// Run `f` on `txn`'s session (None if it has none), on the leader.
    fn leader_session<T>(
        &self,
        txn: TxnId,
        f: impl FnOnce(Option<&mut Session>) -> T,
    ) -> Result<T, Error> {
        self.check_txn(txn)?;
        self.require_leader()?;
        let mut s = self
            .sessions
            .lock()
            .map_err(|_| Error::Fatal("session lock poisoned".into()))?;
        Ok(f(s.get_mut(&txn)))
    }

    /// The client of `txn` is alive (a heartbeat): renew its lease.
    pub fn keepalive(&self, txn: TxnId) -> Result<(), Error> {
        self.leader_session(txn, |sess| match sess {
            Some(sess) => {
                sess.alive = Instant::now();
                Ok(())
            }
            None => match self.handed_state(txn) {
                // Its commit is under way: nothing to renew, nothing wrong.
                Some(None) => Ok(()),
                _ => Err(self.no_session(txn)),
            },
        })?
    }

    /// None if `txn` was not handed to the owner task to commit (or is
    /// forgotten); `Some(None)` while its commit is in flight; then its
    /// outcome.
    fn handed_state(&self, txn: TxnId) -> Option<Option<Outcome>> {
        self.handed.lock().ok().and_then(|h| h.get(txn))
    }

    /// The error for a request of `txn` that found no session here: if
    /// its commit was handed over, what became of it (the request took
    /// no part in a commit, and must not be told "aborted" about a
    /// transaction that may commit); otherwise "unknown transaction".
    fn no_session(&self, txn: TxnId) -> Error {
        self.after_hand_over(txn)
            .unwrap_or_else(|| unknown_txn(txn))
    }

    /// What a request of `txn` that arrived after its commit was handed to
    /// the owner task is told; None if it was not (or is forgotten).
    fn after_hand_over(&self, txn: TxnId) -> Option<Error> {
        Some(match self.handed_state(txn)? {
            None => Error::InvalidInput(format!(
                "transaction {txn} is committing; this request took no part in it (its outcome comes from the commit, or TxnStatus)"
            )),
            Some(Outcome::Committed) => Error::InvalidInput(format!(
                "transaction {txn} committed already; this request took no part in it"
            )),
            Some(Outcome::Aborted(why)) => Error::Aborted(why),
            Some(other) => Error::InvalidInput(format!(
                "transaction {txn} went to commit ({other:?}); this request took no part in it; ask TxnStatus"
            )),
        })
    }

    /// Why `txn` can no longer go on, if a participant wounded it.
    fn wound_of(&self, txn: TxnId) -> Option<String> {
        self.sessions
            .lock()
            .ok()
            .and_then(|s| s.get(&txn).and_then(|sess| sess.wounded.clone()))
    }

    /// A fresh timestamp below the durable reservation; waits only if the
    /// reservation is used up (the log has not committed an extension).
    /// `issued` runs with the timestamp while the reservation is still
    /// locked, once.
    async fn stamp(&self, mut issued: impl FnMut(Timestamp)) -> Result<Timestamp, Error> {
        let deadline = tokio::time::Instant::now() + STAMP_WAIT;
        loop {
            let notified = self.reserved.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let issue = {
                let mut stamps = self
                    .stamps
                    .lock()
                    .map_err(|_| Error::Fatal("timestamp reservation lock poisoned".into()))?;
                let issue = stamps.issue(self.hlc.now());
                if let Some(ts) = issue.ts {
                    issued(ts);
                }
                issue
            };
            if let Some(until) = issue.extend {
                // Always a wake-up, even for a target not past the last
                // one: the reservation waits for this extension to end.
                self.reserve.send_modify(|u| *u = (*u).max(until));
            }
            if let Some(ts) = issue.ts {
                return Ok(ts);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(Error::Unavailable(
                    "cannot reserve transaction timestamps: the recovery log commits nothing"
                        .into(),
                ));
            }
            self.require_leader()?;
        }
    }

    /// Append a timestamp reservation up to `until`; returns the log's
    /// reservation after it (durable).
    async fn reserve(&self, until: Timestamp) -> Result<Timestamp, Error> {
        let (_, reply) = self
            .replica
            .propose(encode_command(&LogCommand::Reserve { until })?)
            .await?;
        match log::decode::<LogReply>(&reply).map_err(Error::Fatal)? {
            LogReply::Reserved { until } => Ok(until),
            other => Err(Error::Fatal(format!("unexpected log reply {other:?}"))),
        }
    }

    /// Run the extension the reservation asked for, and wake `begin`s.
    async fn extend_reservation(&self, until: Timestamp) {
        let r = self.reserve(until).await;
        if let Err(e) = &r {
            tracing::warn!(error = %e, "could not extend the timestamp reservation");
        }
        if let Ok(mut s) = self.stamps.lock() {
            s.extended(r.ok());
        }
        self.reserved.notify_waiters();
    }

    /// Note that `txn` is about to touch `shard`; returns whether it is the
    /// transaction's first request there, and its age.
    fn touch(&self, txn: TxnId, shard: ShardId) -> Result<(bool, u64), Error> {
        self.leader_session(txn, |sess| {
            let Some(sess) = sess else {
                return Err(self.no_session(txn));
            };
            if sess.committing {
                // Not an abort: the commit under way decides, and a client
                // told "aborted" here could believe the other outcome.
                return Err(Error::InvalidInput(format!(
                    "transaction {txn} is already committing: no more requests; its outcome comes from the commit (or TxnStatus)"
                )));
            }
            if let Some(w) = &sess.wounded {
                if !sess.counted {
                    sess.counted = true;
                    self.metrics.abort(AbortKind::Wounded);
                }
                return Err(Error::aborted(AbortKind::Wounded, w.clone()));
            }
            sess.last = Instant::now();
            sess.alive = sess.last;
            Ok((sess.shards.insert(shard), sess.priority.0))
        })?
    }

    /// [`Coordinator::touch`] for a request of the client's (a read, a
    /// scan, a write, the shards a commit adds): a transaction it finds
    /// aborted (wounded meanwhile) is ended here and now, its locks freed
    /// at every shard, rather than left for its lease to run out: the
    /// client, told it aborted, sends nothing more (and the reads at
    /// `Begin` have no client handle at all), while younger transactions
    /// would wait for its locks. One already committing is refused by
    /// `touch` without an abort: its outcome is the machine's.
    async fn touch_or_end(&self, txn: TxnId, shard: ShardId) -> Result<(bool, u64), Error> {
        match self.touch(txn, shard) {
            Err(e @ Error::Aborted(_)) => Err(self.abort_for(txn, e).await),
            r => r,
        }
    }

    /// `shard` refused `txn`'s first request there as routed by a stale
    /// map (nothing was done there): it is not one of the transaction's
    /// shards after all.
    fn untouch(&self, txn: TxnId, shard: ShardId) {
        if let Ok(mut s) = self.sessions.lock() {
            if let Some(sess) = s.get_mut(&txn) {
                sess.shards.remove(&shard);
            }
        }
    }

    /// After WRONG_SHARD at `shard` (the transaction's `first` request
    /// there if so) under `map`: forget the shard if nothing of the
    /// transaction is there, and refresh the map; false once the request
    /// was routed again [`REROUTES`] times (the caller gives up).
    async fn reroute(
        &self,
        txn: TxnId,
        shard: ShardId,
        first: bool,
        map: &Arc<ShardMap>,
        tries: &mut u32,
    ) -> Result<bool, Error> {
        if first {
            self.untouch(txn, shard);
        }
        if *tries >= REROUTES {
            return Ok(false);
        }
        *tries += 1;
        match self.participants.refresh_map(map).await {
            Ok(()) => Ok(true),
            Err(e) => Err(self.fail(txn, e.into()).await),
        }
    }

    /// A participant call failed: the transaction is done for; abort it
    /// everywhere it went, and tell the client why.
    async fn fail(&self, txn: TxnId, e: Error) -> Error {
        if matches!(e, Error::InvalidInput(_)) {
            // A bad request does not doom the transaction: the shard
            // refused it whole.
            return e;
        }
        self.abort_for(txn, e).await
    }

    pub async fn get(
        &self,
        txn: TxnId,
        key: Vec<u8>,
        for_update: bool,
    ) -> Result<Option<Vec<u8>>, Error> {
        pact_common::validate_key(&key).map_err(|e| Error::InvalidInput(e.to_string()))?;
        let mut tries = 0;
        let (req, r) = loop {
            let map = self.participants.shard_map();
            let shard = map.shard_for_key(&key);
            let (first, priority) = self.touch_or_end(txn, shard).await?;
            let req = pb::TxnGetRequest {
                shard_id: shard.0,
                txn: Some(pb_txn(txn)),
                key: key.clone().into(),
                for_update,
                first,
                priority,
                shard_version: map.version(shard),
            };
            let r = self
                .participants
                .call_shard(shard, true, |ch| {
                    let req = req.clone();
                    async move { participant(ch).txn_get(req).await }
                })
                .await;
            if let Err(ClientError::WrongShard(_)) = &r {
                if self.reroute(txn, shard, first, &map, &mut tries).await? {
                    continue;
                }
            }
            break (req, r);
        };
        match r {
            Ok(r) => {
                self.may_hand_out(txn).await?;
                if for_update {
                    self.note_locked(txn, None, [req.key.to_vec()]);
                }
                Ok(r.found.then(|| r.value.to_vec()))
            }
            Err(e) => Err(self.fail(txn, e.into()).await),
        }
    }

    /// Several reads of `txn` in one request: one `TxnGetBatch` per shard
    /// (its keys in the order asked), to every shard at once, so a read
    /// on two shards costs one relayed round, not two.
    ///
    /// A shard whose read fails (wounded, a lock wait that timed out) ends
    /// the transaction at once: the abort frees what the batch locked and
    /// fails its reads still waiting at other shards. A read still on its
    /// way to a shard when the abort gets there is refused there
    /// (`TxnManager::end_aborted`), so it cannot register the transaction
    /// again. The answer waits for every read of the batch.
    ///
    /// No value is handed out unless the wound mark is still clear after
    /// the last answer (invariant 13): every lock the batch took was held
    /// from its own read until then, so the values were all current
    /// together at that point. Keys of a shard that moved are read again
    /// one by one by the new map ([`Coordinator::get`]).
    pub async fn get_many(
        &self,
        txn: TxnId,
        keys: Vec<Vec<u8>>,
        for_update: bool,
    ) -> Result<Vec<Option<Vec<u8>>>, Error> {
        check_reads(&keys)?;
        let map = self.participants.shard_map();
        // Each shard's keys, by their places in the answer.
        let mut by_shard: BTreeMap<ShardId, Vec<usize>> = BTreeMap::new();
        for (i, k) in keys.iter().enumerate() {
            by_shard.entry(map.shard_for_key(k)).or_default().push(i);
        }
        let mut sends = Vec::with_capacity(by_shard.len());
        for (shard, places) in by_shard {
            let (first, priority) = self.touch_or_end(txn, shard).await?;
            let req = pb::TxnGetBatchRequest {
                shard_id: shard.0,
                txn: Some(pb_txn(txn)),
                keys: places.iter().map(|&i| keys[i].clone().into()).collect(),
                for_update,
                first,
                priority,
                shard_version: map.version(shard),
            };
            sends.push((shard, first, places, req));
        }
        let mut pending: futures::stream::FuturesUnordered<_> = sends
            .iter()
            .enumerate()
            .map(|(n, (shard, _, _, req))| {
                let call = self.participants.call_shard(*shard, true, move |ch| {
                    let req = req.clone();
                    async move { participant(ch).txn_get_batch(req).await }
                });
                async move { (n, call.await) }
            })
            .collect();
        let mut values = vec![None; keys.len()];
        let mut moved = Vec::new();
        let mut refused = None;
        while let Some((n, answer)) = pending.next().await {
            let (shard, first, places, _) = &sends[n];
            let ends = match answer {
                Ok(r) if r.values.len() == places.len() => {
                    if for_update {
                        self.note_locked(txn, None, places.iter().map(|&i| keys[i].clone()));
                    }
                    for (&i, v) in places.iter().zip(r.values) {
                        values[i] = v.found.then(|| v.value.to_vec());
                    }
                    continue;
                }
                Ok(r) => Error::Unavailable(format!(
                    "shard {shard} answered {} values for {} keys",
                    r.values.len(),
                    places.len()
                )),
                Err(ClientError::WrongShard(_)) => {
                    if *first {
                        // Nothing of the transaction is there.
                        self.untouch(txn, *shard);
                    }
                    moved.extend(places.iter().copied());
                    continue;
                }
                Err(e) => match Error::from(e) {
                    // Refused whole at that shard; the locks taken at the
                    // others stay with the transaction, which goes on.
                    e @ Error::InvalidInput(_) => {
                        refused = Some(e);
                        continue;
                    }
                    e => e,
                },
            };
            // The transaction is over: end it now, which frees what it
            // locked and fails its reads still waiting at other shards (a
            // read that arrives after the abort is refused there), and
            // wait for them.
            let drain = async { while pending.next().await.is_some() {} };
            let (e, ()) = futures::join!(self.fail(txn, ends), drain);
            return Err(e);
        }
        drop(pending);
        if let Some(e) = refused {
            return Err(e);
        }
        if !moved.is_empty() {
            if let Err(e) = self.participants.refresh_map(&map).await {
                return Err(self.fail(txn, e.into()).await);
            }
            moved.sort_unstable();
            for i in moved {
                values[i] = self.get(txn, keys[i].clone(), for_update).await?;
            }
        }
        let mut bytes = 0usize;
        for v in &values {
            pact_common::count_read(&mut bytes, v.as_ref())
                .map_err(|e| Error::InvalidInput(e.to_string()))?;
        }
        self.may_hand_out(txn).await?;
        Ok(values)
    }

    pub async fn scan(
        &self,
        txn: TxnId,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: u32,
    ) -> Result<(Vec<(Vec<u8>, Vec<u8>)>, bool), Error> {
        let limit = if limit == 0 { 1000 } else { limit as usize };
        let mut tries = 0;
        let mut map = self.participants.shard_map();
        let (mut shards, ordered) = map.scan_shards(&start, end.as_deref());
        let mut page = pact_common::ScanPage::new(ordered, limit);
        while let Some(shard) = shards.first().copied() {
            shards.remove(0);
            // The shard's part only, which it checks it owns whole.
            let Some((lo, hi)) = map.clip(shard, &start, end.as_deref()) else {
                continue;
            };
            let want = page.want();
            let (first, priority) = self.touch_or_end(txn, shard).await?;
            let req = pb::TxnScanRequest {
                shard_id: shard.0,
                txn: Some(pb_txn(txn)),
                start: lo.into(),
                end: hi.unwrap_or_default().into(),
                limit: u32::try_from(want).unwrap_or(u32::MAX),
                first,
                priority,
                shard_version: map.version(shard),
            };
            let r = self
                .participants
                .call_shard(shard, true, |ch| {
                    let req = req.clone();
                    async move { participant(ch).txn_scan(req).await }
                })
                .await;
            if let Err(ClientError::WrongShard(_)) = &r {
                if self.reroute(txn, shard, first, &map, &mut tries).await? {
                    // Read it all again by the new map: the locks taken
                    // so far stay (a transaction's locks only grow).
                    map = self.participants.shard_map();
                    let ordered;
                    (shards, ordered) = map.scan_shards(&start, end.as_deref());
                    page.restart(ordered);
                    continue;
                }
            }
            match r {
                Ok(r) => {
                    self.may_hand_out(txn).await?;
                    let pairs = r
                        .pairs
                        .into_iter()
                        .map(|p| (p.key.to_vec(), p.value.to_vec()))
                        .collect();
                    // Whole: the later range shards are neither asked nor
                    // locked (the next page reaches them; a short scan
                    // stays a one-shard transaction).
                    if page.add(pairs, r.more, !shards.is_empty()) {
                        break;
                    }
                }
                Err(e) => return Err(self.fail(txn, e.into()).await),
            }
        }
        // One answer: in key order, never past a shard's unread keys, and
        // small enough to send.
        Ok(page.finish(pact_common::MAX_BATCH_BYTES))
    }

    fn by_shard(&self, ops: Vec<pb::WriteOp>) -> BTreeMap<ShardId, Vec<pb::WriteOp>> {
        let map = self.participants.shard_map();
        let mut by_shard: BTreeMap<ShardId, Vec<pb::WriteOp>> = BTreeMap::new();
        for op in ops {
            by_shard
                .entry(map.shard_for_key(&op.key))
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
        touched: (bool, u64),
        ops: Vec<pb::WriteOp>,
    ) -> Result<(), Error> {
        let map = self.participants.shard_map();
        let r = self.write_routed(txn, shard, touched, ops, &map).await;
        if let Err(ClientError::WrongShard(_)) = &r {
            // The transaction aborts (the caller cannot route part of a
            // commit again); its retry finds the map up to date.
            refresh_soon(&self.participants, map);
        }
        r.map_err(Error::from)
    }

    /// Lock and buffer `ops` at `shard`, routed by `map`.
    async fn write_routed(
        &self,
        txn: TxnId,
        shard: ShardId,
        (first, priority): (bool, u64),
        ops: Vec<pb::WriteOp>,
        map: &ShardMap,
    ) -> Result<(), ClientError> {
        let keys: Vec<Vec<u8>> = ops.iter().map(|o| o.key.to_vec()).collect();
        let req = pb::TxnWriteRequest {
            shard_id: shard.0,
            txn: Some(pb_txn(txn)),
            ops,
            first,
            priority,
            shard_version: map.version(shard),
        };
        self.participants
            .call_shard(shard, true, |ch| {
                let req = req.clone();
                async move { participant(ch).txn_write(req).await }
            })
            .await?;
        self.note_locked(txn, Some(shard), keys);
        Ok(())
    }

    /// `txn` now holds `keys` exclusively (and has writes at `written`).
    fn note_locked(
        &self,
        txn: TxnId,
        written: Option<ShardId>,
        keys: impl IntoIterator<Item = Vec<u8>>,
    ) {
        if let Ok(mut s) = self.sessions.lock() {
            if let Some(sess) = s.get_mut(&txn) {
                sess.written.extend(written);
                sess.locked.extend(keys);
            }
        }
    }

    /// Lock and buffer `ops` at their shards: all of them, or none. Each
    /// shard takes its part whole or not at all; if a later shard refuses
    /// its part after an earlier one took its own, the earlier part cannot
    /// be taken back, so the transaction aborts (nothing of it applies).
    pub async fn write(&self, txn: TxnId, ops: Vec<pb::WriteOp>) -> Result<(), Error> {
        let mut sent_some = false;
        let mut tries = 0;
        let mut map = self.participants.shard_map();
        let mut parts: Vec<(ShardId, Vec<pb::WriteOp>)> = self.by_shard(ops).into_iter().collect();
        while let Some((shard, ops)) = parts.pop() {
            let touched = self.touch_or_end(txn, shard).await?;
            match self
                .write_routed(txn, shard, touched, ops.clone(), &map)
                .await
            {
                Ok(()) => sent_some = true,
                // That shard took nothing: route its part again by the
                // refreshed map (the parts taken stay taken).
                Err(ClientError::WrongShard(_))
                    if self
                        .reroute(txn, shard, touched.0, &map, &mut tries)
                        .await? =>
                {
                    map = self.participants.shard_map();
                    parts.extend(self.by_shard(ops));
                }
                Err(e) => {
                    let e = Error::from(e);
                    return Err(if sent_some {
                        self.abort_for(txn, e).await
                    } else {
                        self.fail(txn, e).await
                    });
                }
            }
        }
        Ok(())
    }

    /// Roll `txn` back and report why, as an abort; counted by its reason
    /// if this ends the transaction (it was open, not counted before).
    async fn abort_for(&self, txn: TxnId, e: Error) -> Error {
        let why = match e {
            Error::Aborted(why) => why,
            Error::NotLeader { .. } => Abort::new(AbortKind::Leadership, e.to_string()),
            Error::Unavailable(_) => Abort::new(AbortKind::Unavailable, e.to_string()),
            other => Abort::new(AbortKind::Conflict, other.to_string()),
        };
        match self.end(txn).await {
            Ended::Now { counted } => {
                if !counted {
                    self.metrics.abort(why.kind);
                }
                Error::Aborted(why)
            }
            // A request that raced the commit (its shard refused it after
            // the prepare): the commit decides, and its caller must not
            // hear "aborted" about a transaction that may commit.
            Ended::Committing => Error::InvalidInput(format!(
                "transaction {txn} is committing; this request took no part in it ({why})"
            )),
            // Handed to the owner task and taken (a request that raced
            // the commit): what became of the commit. Otherwise ended
            // already (by another request, its lease, a rollback) and
            // counted then.
            Ended::Absent => self.after_hand_over(txn).unwrap_or(Error::Aborted(why)),
        }
    }

    /// Invariant 13, checked when a read reply comes back: it is handed
    /// out only while `txn` is still open here and not wounded. A
    /// transaction that ended meanwhile (its lease ran out, a concurrent
    /// request found it wounded and ended it) may have had its locks taken
    /// by now, so its late reply is refused too.
    async fn may_hand_out(&self, txn: TxnId) -> Result<(), Error> {
        let state = self
            .sessions
            .lock()
            .ok()
            .and_then(|s| s.get(&txn).map(|sess| sess.wounded.is_some()));
        match state {
            Some(false) => Ok(()),
            Some(true) => Err(self.fail_wounded(txn).await),
            None => Err(self.after_hand_over(txn).unwrap_or_else(|| {
                Error::aborted(
                    AbortKind::Expired,
                    format!("transaction {txn} ended while its read was under way"),
                )
            })),
        }
    }

    /// How long an open transaction lives without a sign of its client.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.txn_tuning.lease_ms)
    }

    /// A read came back after a participant wounded `txn`: its value may
    /// come from after the write that took the transaction's lock
    /// elsewhere, so it is never handed out.
    async fn fail_wounded(&self, txn: TxnId) -> Error {
        let why = self
            .wound_of(txn)
            .unwrap_or_else(|| "wounded by an older transaction".into());
        self.abort_for(txn, Error::aborted(AbortKind::Wounded, why))
            .await
    }

    /// Commit, first adding `ops`: writes the client buffered. If the
    /// transaction touches one shard only, they travel inside its one-phase
    /// commit (which locks and buffers them first). Otherwise writes of
    /// keys the transaction already holds exclusively travel inside the
    /// shard's Prepare (or the single writer's one-phase commit), and the
    /// rest are locked at all their shards at once before anything else:
    /// a preparing transaction must wait for nothing, or wound-wait could
    /// deadlock, and no lock may be taken after a read-only shard let its
    /// locks go.
    pub async fn commit(&self, txn: TxnId, ops: Vec<pb::WriteOp>) -> Result<Outcome, Error> {
        self.check_txn(txn)?;
        self.require_leader()?;
        let deadline = tokio::time::Instant::now() + COMMIT_OUTCOME_WAIT;
        let mut pause = Duration::from_millis(1);
        let (mut touched, locked) = loop {
            let found = match self.sessions.lock() {
                Ok(mut s) => match s.get_mut(&txn) {
                    Some(sess) if !sess.committing && !sess.claimed => {
                        sess.claimed = true;
                        Found::Claimed(sess.shards.clone(), sess.locked.clone())
                    }
                    Some(sess) if !sess.committing => Found::Busy,
                    _ => Found::Gone,
                },
                Err(_) => return Err(Error::Fatal("session lock poisoned".into())),
            };
            match found {
                Found::Claimed(shards, locked) => break (shards, locked),
                // Another call is taking it to the owner task; it may yet
                // give up (and give the claim back) before the hand-over,
                // and then this call carries on with its own writes.
                Found::Busy => {
                    if !pause_before_asking_again(&mut pause, deadline).await {
                        return Err(Error::Unknown(format!(
                            "transaction {txn}: another commit call held it for {COMMIT_OUTCOME_WAIT:?}; ask TxnStatus"
                        )));
                    }
                }
                // Not open here, or handed over: decided already (a
                // retried commit), or on its way to a decision that this
                // call must report, not contradict.
                Found::Gone => return self.await_outcome(txn, deadline).await,
            }
        };
        // Until the hand-over below, a return or a dropped handler gives
        // the claim back, so a retried commit can take the transaction on.
        let claim = Claim {
            sessions: &self.sessions,
            txn,
        };
        // Room in the owner's queue first, before any participant work, so
        // a refused commit did nothing: the transaction stays open as it
        // was, for the client to retry the commit or roll back.
        let slot = match tokio::time::timeout(COMMIT_QUEUE_WAIT, self.inputs.reserve()).await {
            Ok(Ok(slot)) => slot,
            Ok(Err(_)) => return Err(Error::Fatal("coordinator owner task stopped".into())),
            Err(_) => {
                pact_raft::admission::rejected(QUEUE_COORDINATOR_INPUT);
                return Err(Error::Overloaded(format!(
                    "coordinator group {}: the commit queue stayed full for {COMMIT_QUEUE_WAIT:?} (limits.coordinator_queue); retry later",
                    self.group
                )));
            }
        };
        let mut parts = self.by_shard(ops);
        let before = touched.clone();
        touched.extend(parts.keys().copied());
        let mut carried = BTreeMap::new();
        if let Some(w) = self.wound_of(txn) {
            let why = Error::aborted(AbortKind::Wounded, w);
            return Err(self.abort_for(txn, why).await);
        }
        if touched.len() == 1 {
            if let Some((shard, ops)) = parts.pop_first() {
                // A wound landing since the check above ends the session
                // here too, as at a read: the client hears "aborted" and
                // sends nothing more, so nothing else would free its locks
                // before the lease ran out.
                let (first, priority) = self.touch_or_end(txn, shard).await?;
                carried.insert(
                    shard,
                    Carried {
                        first,
                        priority,
                        ops,
                    },
                );
            }
        } else if !parts.is_empty() {
            let mut calls = Vec::new();
            for (shard, ops) in parts {
                let held =
                    before.contains(&shard) && ops.iter().all(|o| locked.contains(o.key.as_ref()));
                let touched = self.touch_or_end(txn, shard).await?;
                if held {
                    let (first, priority) = touched;
                    carried.insert(
                        shard,
                        Carried {
                            first,
                            priority,
                            ops,
                        },
                    );
                } else {
                    calls.push(self.write_shard(txn, shard, touched, ops));
                }
            }
            let failed = futures::future::join_all(calls)
                .await
                .into_iter()
                .find_map(Result::err);
            if let Some(e) = failed {
                // The client is done with the transaction either way.
                return Err(self.abort_for(txn, e).await);
            }
        }
        let (tx, rx) = oneshot::channel();
        // Marked and handed over in one step (no await between): the
        // owner task removes the session once its machine has the commit.
        let handed = {
            let mut s = self
                .sessions
                .lock()
                .map_err(|_| Error::Fatal("session lock poisoned".into()))?;
            match s.get_mut(&txn) {
                Some(sess) if !sess.committing => {
                    sess.committing = true;
                    if let Ok(mut h) = self.handed.lock() {
                        h.insert(txn);
                    }
                    let mut writers = sess.written.clone();
                    writers.extend(carried.keys().copied());
                    slot.send(Input::Commit {
                        txn,
                        shards: sess.shards.clone(),
                        writers,
                        carried,
                        reply: tx,
                        admitted: sess.admitted.take(),
                    });
                    true
                }
                _ => false,
            }
        };
        drop(claim);
        if !handed {
            // Ended meanwhile (a rollback, its lease, a wound).
            return self.await_outcome(txn, deadline).await;
        }
        rx.await
            .map_err(|_| Error::Unknown("coordinator lost leadership during commit".into()))
    }

    /// The outcome of `txn` for a `Commit` call that does not take it to
    /// the owner task itself: waits while the transaction is open or its
    /// commit in flight (another call has it), until `deadline` (the
    /// call's [`COMMIT_OUTCOME_WAIT`]); then, or if this replica cannot
    /// tell any more (it lost leadership meanwhile), the outcome is
    /// unknown.
    async fn await_outcome(
        &self,
        txn: TxnId,
        deadline: tokio::time::Instant,
    ) -> Result<Outcome, Error> {
        // Handed over here: the owner task says when it has the outcome.
        let cell = self.handed.lock().ok().and_then(|h| h.watch(txn));
        if let Some(mut cell) = cell {
            let heard = tokio::time::timeout_at(deadline, async move {
                cell.wait_for(Option::is_some)
                    .await
                    .ok()
                    .and_then(|o| o.clone())
            })
            .await;
            match heard {
                Ok(Some(o @ (Outcome::Committed | Outcome::Aborted(_)))) => return Ok(o),
                // Unknown here (leadership changed, an append failed), or
                // forgotten meanwhile (pushed out by newer commits):
                // TxnStatus below may know more.
                Ok(_) => {}
                Err(_) => {
                    return Err(Error::Unknown(format!(
                        "transaction {txn}: its commit did not end within {COMMIT_OUTCOME_WAIT:?}; ask TxnStatus"
                    )))
                }
            }
        }
        let mut pause = Duration::from_millis(1);
        loop {
            let why = match self.status(txn, false).await {
                Ok(Outcome::Open(why)) => why,
                Ok(o) => return Ok(o),
                // Refused for now (a full queue, no quorum yet): ask again.
                Err(e @ (Error::Overloaded(_) | Error::Unavailable(_))) => e.to_string(),
                Err(e @ Error::InvalidInput(_)) => return Err(e),
                Err(e) => {
                    return Err(Error::Unknown(format!(
                        "transaction {txn}: its outcome cannot be told here ({e}); ask TxnStatus"
                    )))
                }
            };
            if !pause_before_asking_again(&mut pause, deadline).await {
                return Err(Error::Unknown(format!(
                    "transaction {txn}: {why} after {COMMIT_OUTCOME_WAIT:?}; ask TxnStatus"
                )));
            }
        }
    }

    /// Abort an open transaction everywhere it went (best effort: what is
    /// missed here expires at the participant).
    pub async fn rollback(&self, txn: TxnId) {
        self.end(txn).await;
    }

    /// [`Coordinator::rollback`]; says what it found.
    async fn end(&self, txn: TxnId) -> Ended {
        // A committing transaction is the machine's to decide.
        let sess = match self.sessions.lock() {
            Ok(mut s) => match s.get(&txn) {
                Some(sess) if sess.committing => return Ended::Committing,
                Some(_) => s.remove(&txn),
                None => None,
            },
            Err(_) => None,
        };
        let Some(sess) = sess else {
            return Ended::Absent;
        };
        self.finished(txn);
        // Not committing: no prepare or one-phase commit of it went out,
        // so the shards free it in memory and log nothing. The fan-out is
        // a task of its own: the session is gone already, so a caller
        // dropped here (a deadline, a reset) must not leave the shards not
        // yet told holding its locks until they ask about it.
        let (participants, shards, counted) =
            (self.participants.clone(), sess.shards, sess.counted);
        let fan_out = tokio::spawn(async move {
            let calls = shards
                .into_iter()
                .map(|shard| send_decide(&participants, txn, shard, false, true));
            futures::future::join_all(calls).await;
        });
        let _ = fan_out.await;
        Ended::Now { counted }
    }

    /// The outcome of `txn`. From the recovery log if it has a decision;
    /// open or in flight if this leader is working on it; otherwise from
    /// what the shards recorded (a one-phase commit is decided at its
    /// shard, and the coordinator's record of it may be lost).
    ///
    /// Settling an id with no record costs no record (a client may ask
    /// about made-up ids):
    /// - an id of this term (at or above the reservation found when it
    ///   began) without a session is over, or was never issued: nothing
    ///   of it is on its way any more, so the shards' records, only read,
    ///   are final (a commit found, or an abort);
    /// - an id of an earlier term, with `resolve`: every shard's fence
    ///   floor is raised to this term's start first (once per term: one
    ///   key per shard), so nothing of it can land, then the same read;
    /// - what is left (an earlier term's id without `resolve` before the
    ///   floor is up; a commit of this term whose outcome was unknown, an
    ///   append of which may still land) goes the old way: with `resolve`
    ///   the shards fence the id, then a commit found at one is recorded,
    ///   and otherwise the presumed abort; without, a commit found is
    ///   recorded and reported, and anything else is unknown.
    pub async fn status(&self, txn: TxnId, resolve: bool) -> Result<Outcome, Error> {
        self.check_txn(txn)?;
        self.require_leader()?;
        // The term whose recovery had finished before the reads below:
        // they see every staging record an earlier term committed only if
        // the branches at the end are taken in that same term.
        let entry_term = self.ready.lock().ok().and_then(|r| *r);
        // Under the reservation's lock no id is half issued (`begin` makes
        // the session as it issues the id), so an id below the clock read
        // here and without a session now never gets one.
        let (open, issued_before) = {
            let _issuing = self
                .stamps
                .lock()
                .map_err(|_| Error::Fatal("timestamp reservation lock poisoned".into()))?;
            let now = self.hlc.now();
            let open = self
                .sessions
                .lock()
                .ok()
                .and_then(|s| s.get(&txn).map(|sess| sess.committing));
            (open, txn.ts < now)
        };
        match open {
            Some(true) => return Ok(Outcome::Open("commit in progress".into())),
            Some(false) => return Ok(Outcome::Open("transaction is still open".into())),
            None => {}
        }
        self.replica.read_barrier().await?;
        if let Some(b) = self.replica.get_local(&log::decision_key(txn)).await? {
            let d: Decision = log::decode(&b).map_err(Error::Fatal)?;
            return Ok(decided(d.commit));
        }
        let (tx, rx) = oneshot::channel();
        match self.inputs.try_send(Input::InFlight(txn, tx)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                pact_raft::admission::rejected(QUEUE_COORDINATOR_INPUT);
                return Err(Error::Overloaded(format!(
                    "coordinator group {}: the 2PC queue is full (limits.coordinator_queue); retry later",
                    self.group
                )));
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(Error::Fatal("coordinator owner task stopped".into()))
            }
        }
        match rx.await.unwrap_or(None) {
            // A parallel commit is decided (and its client told) before
            // any record says so: the machine knows while it delivers it.
            Some(Some(commit)) => return Ok(decided(commit)),
            // Do not presume an abort under a commit that is progressing:
            // it would win (first decision wins) and abort a healthy 2PC.
            Some(None) => return Ok(Outcome::Open("commit in progress".into())),
            None => {}
        }
        if let Some(b) = self.replica.get_local(&log::staging_key(txn)).await? {
            // A parallel commit nobody is driving: its shards' prepare
            // records say whether it committed.
            let staging: log::Staging = log::decode(&b).map_err(Error::Fatal)?;
            let shards = log::staged_shards(&staging);
            return match self.resolve_staged(txn, &shards, resolve).await? {
                Some(commit) => Ok(decided(commit)),
                None => Ok(Outcome::Unknown(
                    "staged; not every shard has said yet whether it prepared".into(),
                )),
            };
        }
        let past = log::horizon(self.replica.get_local(log::HORIZON_KEY).await?.as_deref())
            .map_err(Error::Fatal)?;
        if txn.ts < past {
            return Ok(self.status_past_horizon(txn).await);
        }
        let reserved = log::reservation(self.replica.get_local(RESERVATION_KEY).await?.as_deref())
            .map_err(Error::Fatal)?;
        if txn.ts >= reserved {
            // No leader issued it (ids stay below the reservation), and
            // fencing it at the shards would leave records no horizon
            // reaches for a long time.
            return Err(Error::InvalidInput(format!(
                "transaction {txn} was never issued: its timestamp is past every id group {} \
                 has handed out",
                self.group
            )));
        }
        // Nothing logged and nothing running here.
        let unsettled = self
            .unsettled
            .lock()
            .map(|u| u.contains(&txn))
            .unwrap_or(true);
        if self.ready.lock().ok().and_then(|r| *r) != entry_term {
            // Leadership moved while this call read the log (the new
            // term's recovery may have committed a staging record of it
            // after the read): the branches below would trust a stale
            // read.
            return Ok(Outcome::Unknown(
                "coordinator leadership changed while the outcome was looked up; ask again".into(),
            ));
        }
        // (`term_start_in` checks the term again: a change since falls
        // through to the fenced path, which records what it answers.)
        match entry_term.and_then(|t| self.term_start_in(t)) {
            // This leader issued it, if anyone did, and it is over: its
            // commit (if it got that far) ended with a known outcome, so
            // nothing of it is still on its way to a shard or the log.
            // Reading the shards settles it; nothing is written.
            Some(start) if txn.ts >= start && !unsettled => {
                if !issued_before {
                    return Err(Error::InvalidInput(format!(
                        "transaction {txn} was never issued: its timestamp is past the clock of \
                         group {}'s leader",
                        self.group
                    )));
                }
                return Ok(self.status_settled(txn, "").await);
            }
            // An earlier leader's: with every shard's floor at this term's
            // start, nothing of it can land any more either. One write per
            // shard per term, however many ids are asked about.
            // If a shard cannot be fenced or read now (one unrelated to
            // the transaction may be down), the fenced path below decides
            // from the shards that answer: a prepare found there settles
            // it (no staging record: nothing can commit it), so one shard's
            // outage does not hold other shards' prepared locks.
            Some(start) if txn.ts < start && (resolve || self.floor_is_raised(start)) => match self
                .raise_floor(start)
                .await
            {
                Ok(()) => {
                    let o = self
                        .status_settled(txn, " (fenced: older than the coordinator leader's term)")
                        .await;
                    if !matches!(o, Outcome::Unknown(_)) {
                        return Ok(o);
                    }
                }
                Err(e) => {
                    tracing::debug!(%txn, error = %e, "not every shard's floor could be raised; fencing the id instead");
                }
            },
            _ => {}
        }
        // Without `resolve`, or a commit of this term whose outcome was
        // unknown: a one-phase commit or append of it may still land, so
        // it is fenced at every shard by its id before an abort is
        // presumed.
        let answers = self
            .inquire_everywhere(txn, resolve, |a| inquiry::decisive(a, resolve))
            .await;
        match inquiry::verdict(&answers, resolve) {
            Verdict::Committed => {
                // The shard's record is the decision; this one only makes
                // the next answer cheap.
                match self.record(txn, true, Vec::new()).await {
                    Ok(false) => tracing::error!(
                        %txn,
                        "a shard committed a transaction the recovery log has aborted"
                    ),
                    Ok(true) => {}
                    Err(e) => {
                        tracing::warn!(%txn, error = %e, "could not record a commit found at a shard")
                    }
                }
                Ok(Outcome::Committed)
            }
            // First decision wins: if a commit was logged meanwhile (an
            // append of this leader's that was in doubt), it stands.
            Verdict::Abort(why) => Ok(if self.record(txn, false, Vec::new()).await? {
                Outcome::Committed
            } else {
                Outcome::Aborted(Abort::new(AbortKind::Rollback, why))
            }),
            Verdict::Unknown(why) => Ok(Outcome::Unknown(why)),
        }
    }

    /// The reservation this leader found when `term` began, while this
    /// replica is still ready in `term`.
    fn term_start_in(&self, term: u64) -> Option<Timestamp> {
        if self.ready.lock().ok().and_then(|r| *r) != Some(term) {
            return None;
        }
        match self.term_start.lock().ok().and_then(|t| *t) {
            Some((t, start)) if t == term => Some(start),
            _ => None,
        }
    }

    /// Whether every shard's floor is at `start` or higher already.
    fn floor_is_raised(&self, start: Timestamp) -> bool {
        self.floor_raised.lock().is_ok_and(|f| *f >= start)
    }

    /// Raise every shard's fence floor for this group to `start` (this
    /// term's start), once per term.
    async fn raise_floor(&self, start: Timestamp) -> Result<(), Error> {
        if self.floor_is_raised(start) {
            return Ok(());
        }
        // Every shard there is, those a split created included: after
        // each round the map is read again, and shards that appeared
        // (split off one that was raised, which may have copied its floor
        // before the raise) are raised too.
        let mut raised = BTreeSet::new();
        loop {
            // A refresh that starts now: one that began before this
            // round's raise could have missed a shard split off since.
            tokio::time::timeout(INQUIRY_WAIT, self.participants.refresh_all())
                .await
                .map_err(|_| {
                    Error::Unavailable("the shards' descriptors did not answer in time".into())
                })?
                .map_err(|e| Error::Unavailable(format!("reading the shards' descriptors: {e}")))?;
            let todo: Vec<ShardId> = self
                .participants
                .shards()
                .into_iter()
                .filter(|s| !raised.contains(s))
                .collect();
            if todo.is_empty() {
                break;
            }
            self.raise_floor_at(&todo, start).await?;
            raised.extend(todo);
        }
        if let Ok(mut f) = self.floor_raised.lock() {
            *f = (*f).max(start);
        }
        Ok(())
    }

    /// One round of [`Coordinator::raise_floor`]: every shard of `shards`.
    async fn raise_floor_at(&self, shards: &[ShardId], start: Timestamp) -> Result<(), Error> {
        let calls = shards.iter().copied().map(|shard| async move {
            let req = pb::FloorRequest {
                shard_id: shard.0,
                group: self.group,
                below: start.0,
            };
            tokio::time::timeout(
                INQUIRY_WAIT,
                self.participants.call_shard(shard, true, |ch| async move {
                    participant(ch).raise_floor(req).await
                }),
            )
            .await
            .map_err(|_| Error::Unavailable(format!("shard {shard} did not answer in time")))?
            .map_err(Error::from)
            .map_err(|e| Error::Unavailable(format!("shard {shard}: {e}")))
        });
        for r in futures::future::join_all(calls).await {
            r?;
        }
        Ok(())
    }

    /// TxnStatus for a transaction nothing of which can still land (no
    /// decision, no staging record, nothing in flight, and either over at
    /// this leader or below every shard's floor): the shards' records,
    /// read and not written, decide it.
    async fn status_settled(&self, txn: TxnId, note: &str) -> Outcome {
        let answers = self
            .inquire_everywhere(txn, false, |a| *a == Ok(ShardState::Committed))
            .await;
        match inquiry::settled(&answers) {
            Verdict::Committed => Outcome::Committed,
            Verdict::Abort(why) => {
                Outcome::Aborted(Abort::new(AbortKind::Rollback, format!("{why}{note}")))
            }
            Verdict::Unknown(why) => Outcome::Unknown(why),
        }
    }

    /// `txn` ended here (its client was told, or it was rolled back or
    /// finished by recovery). A long one keeps its records a retention
    /// from now, not from its start.
    fn finished(&self, txn: TxnId) {
        let ran = self.hlc.now().millis().saturating_sub(txn.ts.millis());
        if Duration::from_millis(ran) <= crate::gc::SLACK {
            return;
        }
        let until = Instant::now() + Duration::from_secs(self.txn_tuning.record_retention_s);
        if let Ok(mut l) = self.long_finished.lock() {
            l.insert(txn, until);
        }
    }

    /// TxnStatus for a transaction older than the record horizon with no
    /// decision left in the log: the shards' records, read and not fenced
    /// (nothing of it can land any more), say committed, aborted, or that
    /// it is forgotten (`crate::gc`). Writes nothing.
    async fn status_past_horizon(&self, txn: TxnId) -> Outcome {
        let answers = self
            .inquire_everywhere(txn, false, inquiry::decisive_past_horizon)
            .await;
        match inquiry::past_horizon(&answers) {
            inquiry::PastHorizon::Committed => Outcome::Committed,
            inquiry::PastHorizon::Aborted(why) => {
                Outcome::Aborted(Abort::new(AbortKind::Rollback, why))
            }
            inquiry::PastHorizon::Expired => Outcome::Expired(format!(
                "older than the record retention ({} s): its records were collected",
                self.txn_tuning.record_retention_s
            )),
            inquiry::PastHorizon::Unknown(why) => Outcome::Unknown(why),
        }
    }

    /// One round of garbage collection (`crate::gc`), on the leader: raise
    /// the record horizon as far as the rule allows, delete the finished
    /// decisions below it, and tell every shard. Returns the horizon.
    async fn collect_garbage(&self) -> Result<Timestamp, Error> {
        self.require_leader()?;
        // Sessions before the machine: a transaction leaves its session
        // only once the machine has it, and the question to the machine
        // queues behind that hand-over.
        let session = self
            .sessions
            .lock()
            .map_err(|_| Error::Fatal("session lock poisoned".into()))?
            .keys()
            .map(|t| t.ts)
            .min();
        let (tx, rx) = oneshot::channel();
        self.inputs
            .send(Input::Oldest(tx))
            .await
            .map_err(|_| Error::Unavailable("coordinator is stopping".into()))?;
        let in_flight = rx
            .await
            .map_err(|_| Error::Unavailable("coordinator is stopping".into()))?
            .map(|t| t.ts);
        let staging = self
            .replica
            .scan_prefix_local(&[log::STAGING_PREFIX])
            .await?;
        let staged = staging
            .iter()
            .filter_map(|(k, _)| TxnId::from_key(k))
            .map(|t| t.ts)
            .min();
        let reserved = log::reservation(self.replica.get_local(RESERVATION_KEY).await?.as_deref())
            .map_err(Error::Fatal)?;
        let finished = self
            .long_finished
            .lock()
            .map_err(|_| Error::Fatal("finished-transactions lock poisoned".into()))
            .map(|mut l| {
                let now = Instant::now();
                l.retain(|_, until| *until > now);
                l.keys().map(|t| t.ts).min()
            })?;
        let live = crate::gc::Live {
            reserved,
            session,
            in_flight,
            staged,
            finished,
        };
        let retention = Duration::from_secs(self.txn_tuning.record_retention_s);
        let below = crate::gc::horizon(self.hlc.now(), retention, &live);
        let mut horizon;
        let mut kept;
        loop {
            let decisions = self.replica.scan_prefix_local(&[DECISION_PREFIX]).await?;
            let mut old = Vec::new();
            for (k, v) in &decisions {
                let Some(t) = TxnId::from_key(k) else {
                    continue;
                };
                if t.ts < below && log::decode::<Decision>(v).is_ok_and(|d| d.finished) {
                    old.push(t);
                    if old.len() == GC_BATCH {
                        break;
                    }
                }
            }
            let n = old.len();
            let (_, reply) = self
                .replica
                .propose(encode_command(&LogCommand::Gc { below, txns: old })?)
                .await?;
            horizon = match log::decode::<LogReply>(&reply).map_err(Error::Fatal)? {
                LogReply::Collected { horizon } => horizon,
                other => return Err(Error::Fatal(format!("unexpected log reply {other:?}"))),
            };
            kept = decisions.len() - n;
            if n < GC_BATCH {
                break;
            }
        }
        let unfinished = self
            .replica
            .scan_prefix_local(&[log::UNFINISHED_PREFIX])
            .await?
            .len();
        let group = pact_raft::metrics::group_label(self.group);
        for (kind, n) in [
            ("decision", kept),
            ("staging", staging.len()),
            ("unfinished", unfinished),
        ] {
            self.metrics
                .records
                .with_label_values(&[&group, kind])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        // The shards follow; one that cannot be reached now catches up at
        // a later round (its horizon only trails, which is safe). Shards a
        // split created are found from the descriptors (best effort too).
        let _ = tokio::time::timeout(
            INQUIRY_WAIT,
            self.participants
                .refresh_map(&self.participants.shard_map()),
        )
        .await;
        let calls = self.participants.shards().into_iter().map(|shard| async move {
            let req = pb::ForgetRequest {
                shard_id: shard.0,
                group: self.group,
                below: horizon.0,
            };
            let r = tokio::time::timeout(
                INQUIRY_WAIT,
                self.participants.call_shard(shard, true, |ch| async move {
                    participant(ch).forget(req).await
                }),
            )
            .await;
            match r {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(shard = shard.0, error = %e, "shard did not collect records")
                }
                Err(_) => tracing::debug!(shard = shard.0, "shard did not collect records in time"),
            }
        });
        futures::future::join_all(calls).await;
        if let Ok(mut u) = self.unsettled.lock() {
            // Past the horizon TxnStatus no longer fences anything.
            u.retain(|t| t.ts >= horizon);
        }
        Ok(horizon)
    }

    /// Settle a staged transaction from its shards (fencing it there with
    /// `fence`): logs and returns the decision, or None while not every
    /// shard answered (without `fence`: or one has not prepared yet).
    async fn resolve_staged(
        &self,
        txn: TxnId,
        shards: &BTreeSet<ShardId>,
        fence: bool,
    ) -> Result<Option<bool>, Error> {
        let answers = self
            .inquire_all(txn, shards.iter().copied(), fence, inquiry::decisive_staged)
            .await;
        let commit = match inquiry::staged_verdict(&answers, shards.len()) {
            Verdict::Committed => true,
            Verdict::Abort(why) => {
                tracing::info!(%txn, reason = %why, "staged transaction aborted by recovery");
                false
            }
            Verdict::Unknown(_) => return Ok(None),
        };
        // First decision wins: a decision logged meanwhile stands. A
        // commit names its shards: they may still hold their prepare
        // records, so it stays unfinished (resent by a later leader, and
        // never collected) until the machine's Finish says all applied.
        let to = if commit {
            shards.iter().map(|s| s.0).collect()
        } else {
            Vec::new()
        };
        self.record(txn, commit, to).await.map(Some)
    }

    /// Record a decision for `txn` unless one is recorded; returns the
    /// decision in the log now (true: commit). `shards`: those that may
    /// still have to apply a commit (none for an abort, or a commit found
    /// applied at its shard).
    async fn record(&self, txn: TxnId, commit: bool, shards: Vec<u64>) -> Result<bool, Error> {
        let (_, reply) = self
            .replica
            .propose(encode_command(&LogCommand::Decide {
                txn,
                commit,
                shards,
            })?)
            .await?;
        match log::decode::<LogReply>(&reply).map_err(Error::Fatal)? {
            LogReply::Decided { commit } => Ok(commit),
            other => Err(Error::Fatal(format!("unexpected log reply {other:?}"))),
        }
    }

    /// Ask `shards` what they recorded of `txn` (fencing it there with
    /// `fence`), in parallel; stops early once an answer `settles` the
    /// verdict.
    /// [`Coordinator::inquire_all`] at every shard there is: the map is
    /// refreshed from the descriptors first, so shards a split created
    /// since this leader last looked are asked too. If it cannot be, the
    /// answers carry the failure, so no verdict that needs every shard's
    /// word is reached without it.
    async fn inquire_everywhere(
        &self,
        txn: TxnId,
        fence: bool,
        settles: impl Fn(&inquiry::Answer) -> bool,
    ) -> Vec<(ShardId, inquiry::Answer)> {
        let mut answers = Vec::new();
        let mut asked = BTreeSet::new();
        // The shards known now first (a decisive answer there settles it
        // whatever the rest say); then the map read afresh, after each
        // round, for shards split off meanwhile (a parent names them from
        // its commit on), until none is new.
        let mut todo = self.participants.shards();
        loop {
            todo.retain(|s| asked.insert(*s));
            if todo.is_empty() {
                return answers;
            }
            let round = self
                .inquire_all(txn, std::mem::take(&mut todo), fence, &settles)
                .await;
            let settled = round.iter().any(|(_, a)| settles(a));
            answers.extend(round);
            if settled {
                return answers;
            }
            match tokio::time::timeout(INQUIRY_WAIT, self.participants.refresh_all()).await {
                Ok(Ok(())) => todo = self.participants.shards(),
                failed => {
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no answer within {INQUIRY_WAIT:?}"),
                    };
                    answers.push((
                        ShardId(0),
                        Err(format!(
                            "the shards' descriptors could not be read (a shard split off may \
                             be missing): {why}"
                        )),
                    ));
                    return answers;
                }
            }
        }
    }

    async fn inquire_all(
        &self,
        txn: TxnId,
        shards: impl IntoIterator<Item = ShardId>,
        fence: bool,
        settles: impl Fn(&inquiry::Answer) -> bool,
    ) -> Vec<(ShardId, inquiry::Answer)> {
        let wait = if fence { INQUIRY_WAIT } else { LOOKUP_WAIT };
        let mut calls: futures::stream::FuturesUnordered<_> = shards
            .into_iter()
            .map(|shard| async move {
                let a = match tokio::time::timeout(wait, self.inquire(txn, shard, fence)).await {
                    Ok(Ok(state)) => Ok(state),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no answer within {wait:?}")),
                };
                (shard, a)
            })
            .collect();
        let mut answers = Vec::new();
        while let Some((shard, a)) = calls.next().await {
            let settled = settles(&a);
            answers.push((shard, a));
            if settled {
                break;
            }
        }
        answers
    }

    /// What `shard` recorded of `txn`; with `fence`, it first records an
    /// abort unless it prepared or decided `txn` (idempotent).
    async fn inquire(&self, txn: TxnId, shard: ShardId, fence: bool) -> Result<ShardState, Error> {
        let req = pb::InquireRequest {
            shard_id: shard.0,
            txn: Some(pb_txn(txn)),
            fence,
        };
        let r = self
            .participants
            .call_shard(shard, true, |ch| async move {
                participant(ch).inquire(req).await
            })
            .await?;
        crate::convert::shard_state(r.state)
    }

    async fn send_decision(&self, txn: TxnId, shard: ShardId, commit: bool) -> Result<(), Error> {
        send_decide(&self.participants, txn, shard, commit, false).await
    }
}

/// Tell `shard` the outcome of `txn` (`open`: an open transaction's abort,
/// freed in memory without a log entry).
async fn send_decide(
    participants: &Client,
    txn: TxnId,
    shard: ShardId,
    commit: bool,
    open: bool,
) -> Result<(), Error> {
    let req = pb::DecideRequest {
        shard_id: shard.0,
        txn: Some(pb_txn(txn)),
        commit,
        open,
    };
    participants
        .call_shard(shard, true, |ch| async move {
            participant(ch).decide(req).await
        })
        .await
        .map(|_| ())
        .map_err(Error::from)
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
    /// Run `work` for the open transaction `txn`, renewing its lease every
    /// third of it meanwhile (for work nobody else heartbeats: the reads
    /// at `Begin`, a one-shot transaction).
    pub(crate) async fn keeping_alive<T>(
        &self,
        txn: TxnId,
        work: impl std::future::Future<Output = T>,
    ) -> T {
        let every = self.lease() / 3;
        tokio::pin!(work);
        loop {
            tokio::select! {
                r = &mut work => return r,
                _ = tokio::time::sleep(every) => {
                    let _ = self.keepalive(txn);
                }
            }
        }
    }

    /// A one-shot transaction: guards, then one branch, then commit; started
    /// over on abort (it is the coordinator's own transaction, so a retry
    /// cannot repeat anything the client saw).
    pub async fn execute(
        &self,
        guards: Vec<Guard>,
        then: Vec<Op>,
        otherwise: Vec<Op>,
    ) -> Result<ExecResult, Error> {
        let mut last = Abort::new(AbortKind::Conflict, "no attempt made");
        let mut backoff = Duration::from_millis(5);
        let mut priority = None;
        for _ in 0..EXECUTE_ATTEMPTS {
            let (txn, age) = self.begin(priority).await?;
            // Attempts after the first keep its age, so this one-shot
            // transaction cannot starve under wound-wait.
            priority.get_or_insert(age);
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
                // The values read go back in the answer: past the batch
                // limit it could not be sent, after the commit had
                // happened, so the transaction is refused before it.
                let mut bytes = 0usize;
                // Writes travel with the commit (one request fewer per
                // shard), except before a read, which must see them.
                let mut buffered = Vec::new();
                for op in if ok { &then } else { &otherwise } {
                    match op {
                        Op::Get(k) => {
                            if !buffered.is_empty() {
                                self.write(txn, std::mem::take(&mut buffered)).await?;
                            }
                            let v = self.get(txn, k.clone(), false).await?;
                            pact_common::count_read(&mut bytes, Some(k))
                                .and_then(|()| pact_common::count_read(&mut bytes, v.as_ref()))
                                .map_err(|e| Error::InvalidInput(e.to_string()))?;
                            results.push((k.clone(), v))
                        }
                        Op::Put(k, v) => buffered.push(pb::WriteOp {
                            key: k.clone().into(),
                            op: Some(pb::write_op::Op::Put(v.clone().into())),
                        }),
                        Op::Delete(k) => buffered.push(pb::WriteOp {
                            key: k.clone().into(),
                            op: Some(pb::write_op::Op::Delete(true)),
                        }),
                    }
                }
                Ok::<_, Error>((ok, results, buffered))
            };
            // Nobody heartbeats the coordinator's own transaction: its
            // lease is renewed here while its reads and the commit's
            // writes wait for their locks (up to a lock wait, longer than
            // the lease).
            match self.keeping_alive(txn, run).await {
                Ok((succeeded, results, buffered)) => {
                    match self.keeping_alive(txn, self.commit(txn, buffered)).await {
                        Ok(Outcome::Aborted(r)) | Err(Error::Aborted(r)) => last = r,
                        Ok(outcome) => {
                            return Ok(ExecResult {
                                txn,
                                succeeded,
                                results,
                                outcome,
                            })
                        }
                        Err(e) => return Err(e),
                    }
                }
                Err(Error::Aborted(r)) => last = r,
                Err(e) => {
                    self.rollback(txn).await;
                    return Err(e);
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(200));
        }
        Err(Error::aborted(
            last.kind,
            format!("gave up after {EXECUTE_ATTEMPTS} attempts; last: {last}"),
        ))
    }
}

/// A request for a transaction this leader has no session for.
fn unknown_txn(txn: TxnId) -> Error {
    Error::aborted(
        AbortKind::Expired,
        format!("unknown transaction {txn} (expired, finished, or coordinator failover)"),
    )
}

fn decided(commit: bool) -> Outcome {
    if commit {
        Outcome::Committed
    } else {
        Outcome::Aborted(Abort::new(AbortKind::Rollback, "aborted"))
    }
}

fn participant(ch: pact_client::Conn) -> ParticipantClient<pact_client::Conn> {
    ParticipantClient::new(ch)
        .max_decoding_message_size(pact_client::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(pact_client::MAX_MESSAGE_BYTES)
}

/// The owner task: the only place the machine lives. Actions run as
/// spawned tasks whose results come back as events.
async fn owner(c: Arc<Coordinator>, mut rx: mpsc::Receiver<Input>) {
    let mut machine = Machine::new();
    let mut waiters: HashMap<TxnId, Waiter> = HashMap::new();
    // Writes carried by commits, until their CommitOnePhase or Prepare runs.
    let mut carried: HashMap<TxnId, BTreeMap<ShardId, Carried>> = HashMap::new();
    let mut term: Option<u64> = None;
    loop {
        let input = tokio::select! {
            i = rx.recv() => match i {
                Some(i) => i,
                None => break,
            },
            _ = c.retired() => break,
        };
        let actions = match input {
            Input::Commit {
                txn,
                shards,
                writers,
                carried: writes,
                reply,
                admitted,
            } => {
                let forget = || {
                    if let Ok(mut s) = c.sessions.lock() {
                        s.remove(&txn);
                    }
                };
                // Its session is gone only if a leadership change cleared
                // it after the hand-over (only this task removes a
                // committing session otherwise): the commit belongs to the
                // old term, whose machine is gone, and nothing of it went
                // out yet.
                let cleared = c.sessions.lock().map_or(true, |s| !s.contains_key(&txn));
                if term.is_none() || cleared {
                    let o = Outcome::Aborted(Abort::new(
                        AbortKind::Leadership,
                        "coordinator leadership changed before the commit began",
                    ));
                    c.metrics.outcome(&o);
                    if let Ok(mut h) = c.handed.lock() {
                        h.settle(txn, &o);
                    }
                    let _ = reply.send(o);
                    forget();
                    continue;
                }
                if !writes.is_empty() {
                    carried.entry(txn).or_insert(writes);
                }
                waiters.insert(
                    txn,
                    Waiter {
                        reply,
                        _admitted: admitted,
                    },
                );
                let actions = machine.step(Event::Commit {
                    txn,
                    shards,
                    writers,
                });
                // Only now: until the machine had it, the session showed
                // TxnStatus that it is alive.
                forget();
                actions
            }
            Input::Event(ev) => machine.step(ev),
            Input::InFlight(txn, reply) => {
                let _ = reply.send(machine.in_flight(txn).then(|| machine.decided(txn)));
                continue;
            }
            Input::Oldest(reply) => {
                let _ = reply.send(machine.oldest());
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
                const CHANGED: &str = "coordinator leadership changed during commit";
                for (_, w) in waiters.drain() {
                    let o = Outcome::Unknown(CHANGED.into());
                    c.metrics.outcome(&o);
                    let _ = w.reply.send(o);
                }
                if let Ok(mut h) = c.handed.lock() {
                    h.clear(CHANGED);
                }
                if let Ok(mut s) = c.sessions.lock() {
                    // Open transactions end with the term (their clients
                    // hear "unknown transaction" at the next leader).
                    let dropped = s.values().filter(|v| !v.committing && !v.counted).count();
                    if dropped > 0 {
                        c.metrics
                            .aborts
                            .with_label_values(&[AbortKind::Leadership.as_str()])
                            .inc_by(dropped as u64);
                    }
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
            run(&c, a, term, &mut waiters, &mut carried);
        }
    }
}

/// A client waiting for its commit's outcome, and the transaction's place
/// under the open-transaction limit, given back with the answer.
struct Waiter {
    reply: oneshot::Sender<Outcome>,
    _admitted: Option<Ticket>,
}

/// Hand an action's result back to the owner task. It waits for room in a
/// full queue rather than drop the event (a lost event would stall its
/// transaction's 2PC); the owner drains the queue without waiting on
/// anything, so the wait ends.
async fn feed(c: &Coordinator, ev: Event) {
    let _ = c.inputs.send(Input::Event(ev)).await;
}

/// Carry out one action of the machine, which works for the leader of
/// `term` (None: no term; what it asks for is refused).
fn run(
    c: &Arc<Coordinator>,
    action: Action,
    term: Option<u64>,
    waiters: &mut HashMap<TxnId, Waiter>,
    carried: &mut HashMap<TxnId, BTreeMap<ShardId, Carried>>,
) {
    match action {
        Action::Reply { txn, outcome } => {
            carried.remove(&txn);
            c.finished(txn);
            if let Outcome::Unknown(_) = outcome {
                if let Ok(mut u) = c.unsettled.lock() {
                    u.insert(txn);
                }
            }
            c.metrics.outcome(&outcome);
            if let Ok(mut h) = c.handed.lock() {
                h.settle(txn, &outcome);
            }
            if let Some(w) = waiters.remove(&txn) {
                let _ = w.reply.send(outcome);
            }
        }
        Action::CommitOnePhase { txn, shard } => {
            let c = c.clone();
            let writes = take_carried(carried, txn, shard);
            tokio::spawn(async move {
                let started = Instant::now();
                let map = c.participants.shard_map();
                let req = pb::TxnRequest {
                    shard_id: shard.0,
                    txn: Some(pb_txn(txn)),
                    resolve: false,
                    ops: writes.ops,
                    first: writes.first,
                    priority: writes.priority,
                    durable: false,
                    shard_version: map.version(shard),
                };
                let r = c
                    .participants
                    .call_shard(shard, false, |ch| {
                        let req = req.clone();
                        async move { participant(ch).commit_one_phase(req).await }
                    })
                    .await;
                if let Err(pact_client::ClientError::Overloaded(_)) = &r {
                    // Refused before anything was done: the commit can
                    // never apply, but the shard still holds the
                    // transaction's locks and writes; release them now.
                    let _ = c.send_decision(txn, shard, false).await;
                }
                if let Err(pact_client::ClientError::Aborted(a)) = &r {
                    if a.kind == AbortKind::Moved {
                        // Routed by a stale map: the retry must not be.
                        refresh_soon(&c.participants, map);
                    }
                }
                let outcome = match r.map_err(Error::from) {
                    Ok(_) => Outcome::Committed,
                    Err(Error::Aborted(a)) => Outcome::Aborted(a),
                    Err(Error::InvalidInput(m)) | Err(Error::Conflict(m)) => {
                        Outcome::Aborted(Abort::new(AbortKind::Conflict, m))
                    }
                    // Fate open: settle it at the shard.
                    Err(e) => settle_one_phase(&c, txn, shard, e.to_string()).await,
                };
                if outcome == Outcome::Committed
                    && !pact_common::faults::enabled("skip-one-phase-record")
                {
                    // Record it for TxnStatus, off the commit path: the
                    // shard's apply is the decision; this record only
                    // answers later questions.
                    c.record_later(LogCommand::Decide {
                        txn,
                        commit: true,
                        shards: Vec::new(),
                    });
                }
                c.metrics.phase("one_phase", started);
                feed(&c, Event::OnePhaseDone { txn, outcome }).await;
            });
        }
        Action::Prepare {
            txn,
            shard,
            durable,
        } => {
            let c = c.clone();
            let writes = take_carried(carried, txn, shard);
            tokio::spawn(async move {
                let started = Instant::now();
                let map = c.participants.shard_map();
                let req = pb::TxnRequest {
                    shard_id: shard.0,
                    txn: Some(pb_txn(txn)),
                    ops: writes.ops,
                    durable,
                    shard_version: map.version(shard),
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
                        _ => Vote::No(Abort::new(
                            pact_client::convert::abort_kind(p.abort),
                            if p.reason.is_empty() {
                                "participant voted no".into()
                            } else {
                                p.reason
                            },
                        )),
                    },
                    Err(e) => {
                        let e = Error::from(e);
                        let kind = match &e {
                            Error::Aborted(a) => a.kind,
                            Error::NotLeader { .. } => AbortKind::Leadership,
                            _ => AbortKind::Unavailable,
                        };
                        Vote::No(Abort::new(
                            kind,
                            format!("prepare at shard {shard} failed: {e}"),
                        ))
                    }
                };
                if matches!(&vote, Vote::No(a) if a.kind == AbortKind::Moved) {
                    // Routed by a stale map: the retry must not be.
                    refresh_soon(&c.participants, map);
                }
                c.metrics.phase("prepare", started);
                feed(&c, Event::Voted { txn, shard, vote }).await;
            });
        }
        Action::Stage { txn, shards } => {
            let c = c.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let result = match term {
                    Some(term) => append_stage(&c, txn, &shards, term).await,
                    None => LogResult::NotAppended("not the coordinator leader".into()),
                };
                c.metrics.phase("stage", started);
                let delay = pact_common::faults::decision_delay_ms();
                if delay > 0 {
                    // Fault injection: hold every staged transaction in
                    // doubt a while (prepared and staged, nobody told), so
                    // a killed coordinator leaves some for recovery.
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                feed(&c, Event::Staged { txn, result }).await;
            });
        }
        Action::LogAbort { txn } => {
            let c = c.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let cmd = LogCommand::Decide {
                    txn,
                    commit: false,
                    shards: Vec::new(),
                };
                let result = append_for(&c, &cmd, |reply| match reply {
                    LogReply::Decided { commit: false } => Ok(LogResult::Logged),
                    LogReply::Decided { commit: true } => {
                        Ok(LogResult::AlreadyDecided { commit: true })
                    }
                    other => Err(format!("unexpected log reply {other:?}")),
                })
                .await;
                c.metrics.phase("log", started);
                feed(&c, Event::Logged { txn, result }).await;
            });
        }
        Action::Resolve { txn, shards } => {
            tokio::spawn(resolve_task(c.clone(), txn, shards, false));
        }
        Action::RetryResolve { txn, shards } => {
            tokio::spawn(resolve_task(c.clone(), txn, shards, true));
        }
        Action::Decide { txn, shard, commit } => {
            let c = c.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let ev = decide_event(&c, txn, shard, commit).await;
                c.metrics.phase("decide", started);
                feed(&c, ev).await;
            });
        }
        Action::RetryDecide { txn, shard, commit } => {
            let c = c.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let ev = decide_event(&c, txn, shard, commit).await;
                feed(&c, ev).await;
            });
        }
        Action::Finish { txn } => {
            c.finished(txn);
            // Best effort: without it, recovery settles the transaction
            // again and resends an idempotent commit.
            c.record_later(LogCommand::Finish { txn });
        }
    }
}

/// Writes `txn` carries to `shard` (none if it carries nothing there).
fn take_carried(
    carried: &mut HashMap<TxnId, BTreeMap<ShardId, Carried>>,
    txn: TxnId,
    shard: ShardId,
) -> Carried {
    let Some(m) = carried.get_mut(&txn) else {
        return Carried::default();
    };
    let c = m.remove(&shard).unwrap_or_default();
    if m.is_empty() {
        carried.remove(&txn);
    }
    c
}

/// Append `cmd` to the recovery log and read its reply with `read`.
async fn append_for(
    c: &Coordinator,
    cmd: &LogCommand,
    read: impl FnOnce(LogReply) -> Result<LogResult, String>,
) -> LogResult {
    let b = match encode_command(cmd) {
        Ok(b) => b,
        // Nothing was appended.
        Err(e) => return LogResult::NotAppended(e.to_string()),
    };
    match c.replica.propose(b).await {
        Ok((_, reply)) => match log::decode::<LogReply>(&reply).and_then(read) {
            Ok(r) => r,
            Err(e) => LogResult::Failed(e),
        },
        // Refused before it was appended: it can never commit, since no
        // one else proposes this record.
        Err(e @ pact_raft::ReplicaError::NotLeader { .. }) => LogResult::NotAppended(e.to_string()),
        Err(e) => LogResult::Failed(e.to_string()),
    }
}

/// Settle a staged transaction found by recovery, from its shards.
async fn resolve_task(c: Arc<Coordinator>, txn: TxnId, shards: BTreeSet<ShardId>, pause: bool) {
    if pause {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let commit = match c.resolve_staged(txn, &shards, true).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(%txn, error = %e, "cannot settle a staged transaction yet");
            None
        }
    };
    feed(&c, Event::Resolved { txn, commit }).await;
}

/// A one-phase commit whose fate is unknown: fence it at the shard until
/// the shard answers. The fence reports the commit if it applied first,
/// and otherwise records an abort, so the commit can no longer apply after
/// it. The shard lets go of the transaction's locks only once the fence
/// has applied, after the commit's entry if that is in its log.
/// A command ready to propose to the recovery log; one that cannot be
/// encoded is refused before anything is proposed.
fn encode_command(cmd: &LogCommand) -> Result<Vec<u8>, Error> {
    cmd.encode()
        .map_err(|e| Error::InvalidInput(format!("cannot propose the log command: {e}")))
}

async fn settle_one_phase(c: &Coordinator, txn: TxnId, shard: ShardId, why: String) -> Outcome {
    for _ in 0..20 {
        match c.inquire(txn, shard, true).await {
            Ok(ShardState::Committed) => return Outcome::Committed,
            Ok(ShardState::Aborted) => {
                return Outcome::Aborted(Abort::new(
                    AbortKind::Conflict,
                    format!("not applied ({why}); aborted"),
                ))
            }
            Ok(other) => {
                // A one-phase transaction never prepares, and a fence
                // always leaves an outcome: an invariant broke.
                tracing::error!(%txn, shard = shard.0, state = ?other, "unexpected state of a one-phase commit");
                return Outcome::Unknown(why);
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
    // Every reservation of earlier leaders is applied now: move the clock
    // past it before issuing any id, then reserve ahead of the clock.
    let reserved = match c.replica.get_local(RESERVATION_KEY).await {
        Ok(v) => log::reservation(v.as_deref()),
        Err(e) => Err(e.to_string()),
    };
    let reserved = match reserved {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the timestamp reservation");
            return;
        }
    };
    c.hlc.observe(reserved);
    let extend = c
        .stamps
        .lock()
        .map(|mut s| {
            s.durable(reserved);
            s.start_extending()
        })
        .unwrap_or(false);
    if extend {
        let until = Timestamp::from_parts(c.hlc.now().millis() + stamps::AHEAD_MS, 0);
        c.extend_reservation(until).await;
    }
    // Only the commits some shard has still to apply (`u`), not every
    // decision: the work of a failover does not grow with history.
    let pending = match c.replica.scan_prefix_local(&[log::UNFINISHED_PREFIX]).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the recovery log");
            return;
        }
    };
    let mut unfinished = Vec::new();
    for (k, _) in pending {
        let Some(txn) = TxnId::from_key(&k) else {
            tracing::error!("skipping a corrupt unfinished-commit record");
            continue;
        };
        let d = match c.replica.get_local(&log::decision_key(txn)).await {
            Ok(Some(v)) => log::decode::<Decision>(&v),
            Ok(None) => Err(format!("unfinished commit {txn} has no decision record")),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the recovery log");
                return;
            }
        };
        match d {
            Ok(d) if d.commit && !d.finished => unfinished.push((txn, log::shards_of(&d))),
            Ok(_) => {}
            Err(e) => tracing::error!(%txn, error = %e, "skipping a corrupt recovery log record"),
        }
    }
    let mut staged = Vec::new();
    match c.replica.scan_prefix_local(&[log::STAGING_PREFIX]).await {
        Ok(records) => {
            for (k, v) in records {
                match (TxnId::from_key(&k), log::decode::<log::Staging>(&v)) {
                    (Some(txn), Ok(s)) => {
                        c.hlc.observe(txn.ts);
                        staged.push((txn, log::staged_shards(&s)));
                    }
                    _ => tracing::error!("skipping a corrupt staging record"),
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot read the recovery log");
            return;
        }
    }
    tracing::info!(
        group = c.group,
        term,
        unfinished = unfinished.len(),
        staged = staged.len(),
        "coordinator leader recovered"
    );
    feed(&c, Event::Recovered { unfinished, staged }).await;
    if c.replica.role().term == term {
        // The term's start before the term is ready: `term_start` pairs
        // them, and a recovery of a term that is over writes neither.
        if let Ok(mut t) = c.term_start.lock() {
            *t = Some((term, reserved));
        }
        if let Ok(mut r) = c.ready.lock() {
            *r = Some(term);
        }
    }
}

/// Abort open transactions whose client died (no heartbeat for a lease)
/// or stayed idle too long; their participants free the locks when the
/// abort reaches them.
async fn expire_sessions(c: Arc<Coordinator>) {
    let lease = Duration::from_millis(c.txn_tuning.lease_ms);
    let idle = Duration::from_millis(c.txn_tuning.idle_timeout_ms);
    // Often enough that a dead client's locks go within a lease and a bit.
    let every = (lease / 6).max(Duration::from_millis(50));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = c.retired() => return,
        }
        let expired: Vec<(TxnId, String)> = c
            .sessions
            .lock()
            .map(|s| {
                s.iter()
                    .filter(|(_, v)| !v.committing)
                    .filter_map(|(t, v)| {
                        let why = if v.alive.elapsed() > lease {
                            format!("no heartbeat from its client for {lease:?}")
                        } else if v.last.elapsed() > idle {
                            format!("idle for {idle:?}")
                        } else {
                            return None;
                        };
                        Some((*t, why))
                    })
                    .collect()
            })
            .unwrap_or_default();
        for (txn, why) in expired {
            tracing::info!(%txn, reason = %why, "aborting open transaction");
            let c = c.clone();
            // `abort_for` counts the abort by what `end` found when it took
            // the session out (under the lock): not if a wound was counted
            // meanwhile, nor if a commit began or another request ended it.
            tokio::spawn(async move {
                c.abort_for(txn, Error::aborted(AbortKind::Expired, why))
                    .await
            });
        }
    }
}

/// Garbage collection of transaction records (`crate::gc`), every
/// `transactions.gc_interval_ms` while this replica leads.
async fn collect_garbage(c: Arc<Coordinator>) {
    let every = Duration::from_millis(c.txn_tuning.gc_interval_ms);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = c.retired() => return,
        }
        if c.require_leader().is_err() {
            continue;
        }
        match c.collect_garbage().await {
            Ok(h) => {
                tracing::debug!(group = c.group, horizon = %h, "collected transaction records")
            }
            Err(e) => {
                tracing::info!(group = c.group, error = %e, "record collection failed; will retry")
            }
        }
    }
}

/// Most decisions one `Gc` entry deletes, so the entry stays small.
const GC_BATCH: usize = 4096;

/// Most records in one batch entry.
const RECORD_BATCH: usize = 256;

/// Most records waiting for the recorder task: a few batches' worth. More
/// means the recovery log cannot keep up, and the records are best effort.
const RECORD_QUEUE: usize = 4 * RECORD_BATCH;

impl Coordinator {
    /// Queue an off-path record (best effort: see [`record_batches`]); a
    /// full queue drops it, counted, as a lost append would be.
    fn record_later(&self, cmd: LogCommand) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.records.try_send(cmd) {
            if let Some(m) = pact_raft::metrics::process() {
                m.queue_dropped
                    .with_label_values(&[QUEUE_COORDINATOR_RECORDS])
                    .inc();
            }
            tracing::debug!("record queue full; record dropped (best effort)");
        }
    }

    /// The records held for a staging append to carry (all of them).
    fn take_carriable(&self) -> Vec<LogCommand> {
        self.carriable
            .lock()
            .map(|mut h| std::mem::take(&mut *h))
            .unwrap_or_default()
    }
}

/// Append `txn`'s staging record (proposed in `term`), with the records
/// the recorder holds riding ahead of it in the same entry.
async fn append_stage(
    c: &Coordinator,
    txn: TxnId,
    shards: &BTreeSet<ShardId>,
    term: u64,
) -> LogResult {
    let stage = LogCommand::StageInTerm {
        txn,
        shards: shards.iter().map(|s| s.0).collect(),
        term,
    };
    let mut cmds = c.take_carriable();
    let carrying = !cmds.is_empty();
    c.metrics
        .records_appended
        .with_label_values(&["carried"])
        .inc_by(cmds.len() as u64);
    let cmd = if carrying {
        cmds.push(stage);
        LogCommand::Many(cmds)
    } else {
        stage
    };
    append_for(c, &cmd, |reply| {
        let reply = match reply {
            LogReply::Many(mut replies) if carrying => {
                replies.pop().ok_or("no reply to the staging record")?
            }
            other => other,
        };
        match reply {
            LogReply::Staged => Ok(LogResult::Logged),
            LogReply::Decided { commit } => Ok(LogResult::AlreadyDecided { commit }),
            other => Err(format!("unexpected log reply {other:?}")),
        }
    })
    .await
}

/// How long the recorder task holds records for a staging append to
/// carry them (no entry, round or fsync of their own) before it appends
/// what is left itself. Under load a staging append comes sooner; at one
/// client the next but one transaction's does.
const RECORD_HOLD: Duration = Duration::from_millis(5);

/// Appends the off-path records (one-phase commits, finished commits):
/// one entry at a time, each carrying every record queued meanwhile and
/// not carried by a staging append within [`RECORD_HOLD`], so a busy
/// coordinator pays at most one entry per round, not one per
/// transaction. Best effort, like the records themselves: a failed
/// append is logged.
async fn record_batches(c: Arc<Coordinator>, mut rx: mpsc::Receiver<LogCommand>) {
    loop {
        let first = tokio::select! {
            f = rx.recv() => match f {
                Some(f) => f,
                None => break,
            },
            _ = c.retired() => break,
        };
        let mut batch = vec![first];
        while batch.len() < RECORD_BATCH {
            match rx.try_recv() {
                Ok(cmd) => batch.push(cmd),
                Err(_) => break,
            }
        }
        if let Ok(mut h) = c.carriable.lock() {
            h.append(&mut batch);
        }
        tokio::time::sleep(RECORD_HOLD).await;
        let mut batch = c.take_carriable();
        if batch.is_empty() {
            continue;
        }
        let n = batch.len();
        c.metrics
            .records_appended
            .with_label_values(&["alone"])
            .inc_by(n as u64);
        let cmd = if n == 1 {
            batch.pop().unwrap_or(LogCommand::Many(Vec::new()))
        } else {
            LogCommand::Many(batch)
        };
        let r = match encode_command(&cmd) {
            Ok(b) => c.replica.propose(b).await.map(|_| ()).map_err(Error::from),
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            tracing::debug!(records = n, error = %e, "records not appended (best effort)");
        }
    }
}

/// Appends the reservation extensions `begin` asks for, one at a time:
/// the furthest asked for since the last one.
async fn reserve_ahead(c: Arc<Coordinator>, mut wanted: watch::Receiver<Timestamp>) {
    loop {
        tokio::select! {
            r = wanted.changed() => if r.is_err() { break },
            _ = c.retired() => break,
        }
        let until = *wanted.borrow_and_update();
        c.extend_reservation(until).await;
    }
}
