//! The transaction manager of a shard leader: which transactions are open
//! here, what they hold, and what they wrote. Pure state: the caller passes
//! the time and does all waiting and I/O, so every decision below is
//! deterministic and tested without a cluster.
//!
//! Deadlock freedom is wound-wait on start timestamps: a transaction that
//! meets a lock held by a *younger* active transaction aborts ("wounds")
//! it and takes the lock; one that meets an *older* holder, or any holder
//! already preparing, waits (bounded by the caller). Waits therefore only
//! ever point from younger to older transactions, or at transactions that
//! are about to finish, so no cycle of waits can form.
//!
//! Locks and buffered writes are leader-local and tied to the term they
//! were taken in. On a leader change all unprepared state is dropped; the
//! new leader rebuilds exclusive locks only for prepared transactions, from
//! the replicated prepare records ([`TxnManager::leader_ready`]).

use std::collections::{BTreeMap, HashSet, VecDeque};

use pact_common::{Abort, AbortKind, Span, Timestamp, TxnId};

use crate::kv::Mutation;
use crate::locks::{LockTable, Mode, Range};

#[derive(Clone, Debug)]
pub struct TxnLimits {
    /// An open transaction with no request for this long is aborted.
    pub idle_timeout_ms: u64,
    /// Deliberate bug for the fault-injection suite (`skip-read-locks`):
    /// shared key locks are granted without being taken, so 2PL is broken.
    pub skip_shared_locks: bool,
}

impl Default for TxnLimits {
    fn default() -> Self {
        TxnLimits {
            idle_timeout_ms: 10_000,
            skip_shared_locks: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Active,
    /// The prepare record is being replicated: its locks can no longer be
    /// taken away.
    Preparing,
    /// The prepare record is durable; waiting for the coordinator's decision.
    Prepared,
    /// Aborted by an older transaction or by expiry; the reason is reported
    /// to the transaction's next request.
    Aborted(Abort),
}

#[derive(Clone, Debug)]
struct Txn {
    /// Its age for wound-wait: the start timestamp of the transaction's
    /// first attempt (a retry keeps it, so it ages into the oldest and
    /// cannot starve). Ties are broken by the whole id.
    prio: Timestamp,
    status: Status,
    /// Wounded, but its coordinator has not yet confirmed that the
    /// transaction will serve no more reads: its locks stay held until it
    /// has (see [`Step::Wound`]).
    unconfirmed: bool,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Bytes of keys and values in `writes`.
    bytes: usize,
    /// The term its locks were taken in.
    term: u64,
    last_active_ms: u64,
    /// When the owner last asked the coordinator whether it still has this
    /// transaction (see [`TxnManager::silent_active`]).
    asked_ms: u64,
}

pub use pact_common::MAX_TXN_BYTES;

fn entry_bytes(k: &[u8], v: &Option<Vec<u8>>) -> usize {
    k.len() + v.as_ref().map_or(0, Vec::len)
}

/// How the reason for a wound begins ("wounded by older transaction
/// 1-2-3"): a plain write batch recognises it to start itself again.
pub const WOUNDED: &str = "wounded by older transaction";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Buffered {
    Ok,
    /// Not active any more (preparing, aborted, unknown); says which.
    NotOpen(Abort),
    /// Would exceed [`MAX_TXN_BYTES`]; carries the size it would reach.
    TooLarge(usize),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Granted,
    /// Blocked by these older or preparing transactions: wait and retry.
    Wait(Vec<TxnId>),
    /// Blocked by these wounded transactions, whose locks go only once
    /// their coordinators confirm the wound (so none of their later reads,
    /// on any shard, can return a state after a write that took their
    /// lock). The caller tells each coordinator, then calls
    /// [`TxnManager::wound_confirmed`], and asks again.
    Wound(Vec<(TxnId, Abort)>),
    /// The transaction cannot go on; abort it with this reason.
    Abort(Abort),
    /// This replica does not lead the shard (any more).
    NotLeader,
}

/// The holders of locks in a span a split moves.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Holders {
    /// Open transactions: a split wounds them.
    pub open: Vec<TxnId>,
    /// Wounded ones whose coordinators have not confirmed yet: their
    /// locks go once they do.
    pub unconfirmed: Vec<(TxnId, Abort)>,
    /// Some are preparing or prepared: a split waits for their decisions.
    pub busy: bool,
}

/// What a transaction needs to replicate at prepare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrepareInput {
    pub writes: Vec<Mutation>,
    pub term: u64,
}

#[derive(Debug)]
pub struct TxnManager {
    /// Some(term) while this replica is a leader ready to take locks.
    term: Option<u64>,
    locks: LockTable,
    txns: BTreeMap<TxnId, Txn>,
    /// Writes of transactions decided to commit whose commit entry is in
    /// this leader's log but not applied yet, by key (the newest decided
    /// write of each key, and whose it is). They hold no locks any more
    /// (see [`TxnManager::decided`]), so readers must find their values
    /// here until the commit is visible in the store.
    committed: BTreeMap<Vec<u8>, (TxnId, Option<Vec<u8>>)>,
    /// The keys each of those transactions has in `committed`.
    committing: BTreeMap<TxnId, Vec<Vec<u8>>>,
    /// Transactions released at their decision whose decision entry this
    /// leader has not yet seen committed in the log. No write of their
    /// keys may be proposed meanwhile ([`TxnManager::awaits_decision`]).
    unlogged: BTreeMap<TxnId, Unlogged>,
    /// Transactions whose locks went since the waiters were last woken
    /// ([`TxnManager::take_freed`]): only the requests waiting for them
    /// need to look again.
    freed: Vec<TxnId>,
    /// Every lock went (a leadership change): every waiter looks again.
    freed_all: bool,
    /// The part of the shard a split under way gives to a new shard: no
    /// lock there is granted (see [`TxnManager::freeze`]).
    frozen: Option<Span>,
    /// What the shard owns (its descriptor's span), once known: no lock
    /// outside it is granted, so a request checked against an older
    /// descriptor (before a split committed) cannot lock a moved key.
    owned: Option<Span>,
    /// Coordinated transactions aborted here lately, oldest first (at
    /// most [`ENDED_REMEMBERED`]): a first request of one arriving late
    /// (sent before the abort, overtaken by it) is refused rather than
    /// registering the transaction again, which would hold its locks
    /// until this shard asked its coordinator about it.
    ended: VecDeque<TxnId>,
    ended_set: HashSet<TxnId>,
    limits: TxnLimits,
}

/// Whose locks went since the last [`TxnManager::take_freed`].
#[derive(Debug, PartialEq, Eq)]
pub enum Freed {
    Txns(Vec<TxnId>),
    All,
}

/// Past this many unclaimed entries the list gives way to [`Freed::All`],
/// so a caller that never drains it cannot make it grow without bound.
const MAX_FREED: usize = 4096;

/// How many aborted transactions a leader remembers (under 100 bytes
/// each): seconds of aborts under heavy contention, far longer than a
/// request overtaken by its transaction's abort takes to arrive. One
/// forgotten sooner is still freed when the shard asks its coordinator.
pub const ENDED_REMEMBERED: usize = 8192;

/// A decision released before it was seen in the log.
#[derive(Debug)]
struct Unlogged {
    /// The keys the transaction wrote, sorted.
    keys: Vec<Vec<u8>>,
    commit: bool,
    /// When it was released, or last proposed again.
    since_ms: u64,
}

/// What a lock request is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Key(Vec<u8>, Mode),
    Range(Range),
}

impl Target {
    pub fn key(k: &[u8], mode: Mode) -> Self {
        Target::Key(k.to_vec(), mode)
    }

    /// The key or range, for messages: `'bob'`, or `range ['a', 'm')`.
    pub fn describe(&self) -> String {
        match self {
            Target::Key(k, _) => format!("key {}", show_key(k)),
            Target::Range(r) => format!(
                "range [{}, {})",
                show_key(&r.start),
                r.end.as_deref().map_or("end".to_string(), show_key)
            ),
        }
    }
}

/// A key for an error message: quoted, non-printable bytes escaped, long
/// keys shortened.
pub fn show_key(k: &[u8]) -> String {
    let escaped: String = k
        .iter()
        .take(64)
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect();
    let more = if k.len() > 64 { "..." } else { "" };
    format!("'{escaped}{more}'")
}

impl TxnManager {
    pub fn new(limits: TxnLimits) -> Self {
        TxnManager {
            term: None,
            locks: LockTable::new(),
            txns: BTreeMap::new(),
            committed: BTreeMap::new(),
            committing: BTreeMap::new(),
            unlogged: BTreeMap::new(),
            freed: Vec::new(),
            freed_all: false,
            frozen: None,
            owned: None,
            ended: VecDeque::new(),
            ended_set: HashSet::new(),
            limits,
        }
    }

    pub fn term(&self) -> Option<u64> {
        self.term
    }

    /// Lock releases that freed something so far (see
    /// [`LockTable::releases`]): a step that leaves it unchanged freed
    /// nothing, so no waiter needs waking.
    pub fn lock_releases(&self) -> u64 {
        self.locks.releases()
    }

    /// This replica leads `term` and has applied everything committed
    /// before it. `prepared` are the replicated prepare records: their
    /// writers keep their exclusive locks until the decision arrives.
    pub fn leader_ready(&mut self, term: u64, prepared: Vec<(TxnId, Vec<Mutation>)>, now_ms: u64) {
        self.step_down();
        self.term = Some(term);
        for (txn, writes) in prepared {
            for (k, _) in &writes {
                // A fresh table cannot conflict between prepared
                // transactions: their write sets were disjoint when prepared.
                let _ = self.locks.try_key(txn, k, Mode::Exclusive);
            }
            self.txns.insert(
                txn,
                Txn {
                    prio: txn.ts,
                    status: Status::Prepared,
                    unconfirmed: false,
                    bytes: writes.iter().map(|(k, v)| entry_bytes(k, v)).sum(),
                    writes: writes.into_iter().collect(),
                    term,
                    last_active_ms: now_ms,
                    asked_ms: now_ms,
                },
            );
        }
    }

    /// No longer leader: every lock and open transaction here is void.
    /// (keys locked, range locks, open transactions) here.
    pub fn sizes(&self) -> (usize, usize, usize) {
        let (keys, ranges) = self.locks.size();
        (keys, ranges, self.txns.len())
    }

    /// Transactions that may still do something here (active, preparing
    /// or prepared); aborted ones only wait to be forgotten.
    pub fn live(&self) -> usize {
        self.txns
            .values()
            .filter(|t| !matches!(t.status, Status::Aborted(_)))
            .count()
    }

    /// Whose locks went since the last call: the requests waiting for
    /// one of them (or for their own transaction, when it was wounded)
    /// are the ones to wake.
    pub fn take_freed(&mut self) -> Freed {
        if std::mem::take(&mut self.freed_all) {
            self.freed.clear();
            return Freed::All;
        }
        Freed::Txns(std::mem::take(&mut self.freed))
    }

    /// Release every lock of `txn`, noting it for the waiters. Returns
    /// whether it held any.
    fn release_locks(&mut self, txn: TxnId) -> bool {
        let any = self.locks.release_all(txn);
        if any {
            self.note_freed(txn);
        }
        any
    }

    /// Name `txn` to the waiters: its locks went, or it ended (a request
    /// of its own may be waiting here while it holds nothing yet).
    fn note_freed(&mut self, txn: TxnId) {
        if self.freed_all {
            return;
        }
        if self.freed.len() >= MAX_FREED {
            self.freed.clear();
            self.freed_all = true;
        } else {
            self.freed.push(txn);
        }
    }

    pub fn step_down(&mut self) {
        self.term = None;
        self.freed.clear();
        self.freed_all = true;
        self.locks.clear();
        self.txns.clear();
        self.committed.clear();
        self.committing.clear();
        self.unlogged.clear();
        self.frozen = None;
        self.owned = None;
    }

    /// What the shard owns now (see `owned`).
    pub fn set_owned(&mut self, span: Option<Span>) {
        self.owned = span;
    }

    /// A split gives `span` to a new shard: from now on no lock there is
    /// granted (the request aborts its transaction, retryably), so the
    /// split can wait for the locks held there to go. `None` lifts it.
    pub fn freeze(&mut self, span: Option<Span>) {
        self.frozen = span;
    }

    pub fn frozen(&self) -> Option<&Span> {
        self.frozen.as_ref()
    }

    /// Who holds a lock in `span` (see [`Holders`]).
    pub fn holders_in(&self, span: &Span) -> Holders {
        let mut h = Holders::default();
        for txn in self.locks.holders_in(span) {
            match self.txns.get(&txn) {
                Some(t) if t.status == Status::Active => h.open.push(txn),
                Some(Txn {
                    status: Status::Aborted(r),
                    unconfirmed: true,
                    ..
                }) => h.unconfirmed.push((txn, r.clone())),
                _ => h.busy = true,
            }
        }
        h
    }

    /// Wound the open transaction `txn` for a split (see
    /// [`TxnManager::holders_in`]): as an older transaction's wound, its
    /// locks stay until its coordinator confirms ([`Step::Wound`]); a
    /// plain operation goes at once. Returns the reason to tell the
    /// coordinator, or `None` if there is no one to tell.
    pub fn wound_for_split(&mut self, txn: TxnId) -> Option<Abort> {
        if !matches!(self.status(txn), Some(Status::Active)) {
            return None;
        }
        let reason = Abort::new(
            AbortKind::Moved,
            "the shard split while the transaction held locks in the part that moved",
        );
        if txn.group == crate::node::IMPLICIT_GROUP {
            self.abort_with(txn, reason);
            None
        } else {
            self.doom(txn, reason.clone());
            Some(reason)
        }
    }

    pub fn status(&self, txn: TxnId) -> Option<&Status> {
        self.txns.get(&txn).map(|t| &t.status)
    }

    /// [`TxnManager::lock_prio`] for a transaction whose age is its own
    /// start timestamp.
    pub fn lock(&mut self, txn: TxnId, first: bool, target: &Target, now_ms: u64) -> Step {
        self.lock_prio(txn, first, txn.ts, target, now_ms)
    }

    /// Try to lock `target` for `txn`. `first` says this is the
    /// transaction's first request here; only then is an unknown
    /// transaction registered (otherwise its earlier work was lost with a
    /// leader change or expiry, and it must abort), with age `prio`.
    pub fn lock_prio(
        &mut self,
        txn: TxnId,
        first: bool,
        prio: Timestamp,
        target: &Target,
        now_ms: u64,
    ) -> Step {
        let Some(term) = self.term else {
            return Step::NotLeader;
        };
        if first && self.ended_set.contains(&txn) {
            return Step::Abort(Abort::new(
                AbortKind::Conflict,
                format!("transaction {txn} was aborted here already; no more operations"),
            ));
        }
        if !first && !self.txns.contains_key(&txn) {
            return Step::Abort(Abort::new(
                AbortKind::Expired,
                "unknown transaction here (expired, or shard leadership changed)",
            ));
        }
        if self.released_early(txn) {
            return Step::Abort(Abort::new(
                AbortKind::Conflict,
                "transaction already decided; no more operations",
            ));
        }
        let t = self.txns.entry(txn).or_insert_with(|| Txn {
            prio,
            status: Status::Active,
            unconfirmed: false,
            writes: BTreeMap::new(),
            bytes: 0,
            term,
            last_active_ms: now_ms,
            asked_ms: now_ms,
        });
        t.last_active_ms = now_ms;
        match &t.status {
            Status::Active => {}
            Status::Aborted(r) => return Step::Abort(r.clone()),
            Status::Preparing | Status::Prepared => {
                return Step::Abort(Abort::new(
                    AbortKind::Conflict,
                    "transaction is already preparing; no more operations",
                ))
            }
        }
        if t.term != term {
            return Step::Abort(Abort::new(
                AbortKind::Leadership,
                "leadership changed during the transaction",
            ));
        }
        if let Some(o) = &self.owned {
            let inside = match target {
                Target::Key(k, _) => o.contains(k),
                Target::Range(r) => o.covers(&r.start, r.end.as_deref()),
            };
            if !inside {
                return Step::Abort(Abort::new(
                    AbortKind::Moved,
                    format!(
                        "{} is no longer this shard's alone (it split); retry",
                        target.describe()
                    ),
                ));
            }
        }
        if let Some(f) = &self.frozen {
            let meets = match target {
                Target::Key(k, _) => f.contains(k),
                Target::Range(r) => f.meets(&r.start, r.end.as_deref()),
            };
            if meets {
                return Step::Abort(Abort::new(
                    AbortKind::Moved,
                    format!(
                        "{} is moving to a new shard (a split is under way); retry",
                        target.describe()
                    ),
                ));
            }
        }
        if self.limits.skip_shared_locks && matches!(target, Target::Key(_, Mode::Shared)) {
            return Step::Granted;
        }
        let me = (t.prio, txn);
        // Two rounds at most: the first may wound every blocker.
        for _ in 0..2 {
            let res = match target {
                Target::Key(k, mode) => self.locks.try_key(txn, k, *mode),
                Target::Range(r) => self.locks.try_range(txn, r.clone()),
            };
            let blockers = match res {
                Ok(()) => return Step::Granted,
                Err(b) => b,
            };
            let mut waits = Vec::new();
            let mut unconfirmed = Vec::new();
            for b in blockers {
                let (wound, pending) = match self.txns.get(&b) {
                    Some(h) => (
                        h.status == Status::Active && me < (h.prio, b),
                        h.unconfirmed,
                    ),
                    None => (false, false),
                };
                if wound {
                    let reason = Abort::new(
                        AbortKind::Wounded,
                        format!("{WOUNDED} {txn} on {}", target.describe()),
                    );
                    if b.group == crate::node::IMPLICIT_GROUP {
                        // A plain operation has no coordinator to tell and
                        // serves no later reads: it goes at once.
                        self.abort_with(b, reason);
                    } else {
                        self.doom(b, reason.clone());
                        unconfirmed.push((b, reason));
                    }
                } else if pending {
                    let reason = match self.status(b) {
                        Some(Status::Aborted(r)) => r.clone(),
                        _ => Abort::new(AbortKind::Wounded, format!("{WOUNDED} {txn}")),
                    };
                    unconfirmed.push((b, reason));
                } else {
                    waits.push(b);
                }
            }
            if !unconfirmed.is_empty() {
                return Step::Wound(unconfirmed);
            }
            if !waits.is_empty() {
                return Step::Wait(waits);
            }
        }
        Step::Wait(Vec::new())
    }

    /// Mark `txn` wounded but keep its locks until its coordinator knows.
    fn doom(&mut self, txn: TxnId, reason: Abort) {
        if let Some(t) = self.txns.get_mut(&txn) {
            t.status = Status::Aborted(reason);
            t.unconfirmed = true;
            t.writes.clear();
            t.bytes = 0;
        }
    }

    /// The coordinator of a wounded transaction has marked it aborted (or
    /// no longer has it): its locks can go now. Returns whether anything
    /// was released.
    pub fn wound_confirmed(&mut self, txn: TxnId) -> bool {
        match self.txns.get_mut(&txn) {
            Some(t) if t.unconfirmed => {
                t.unconfirmed = false;
                self.release_locks(txn)
            }
            _ => false,
        }
    }

    fn abort_with(&mut self, txn: TxnId, reason: Abort) {
        let had = self.release_locks(txn);
        if let Some(t) = self.txns.get_mut(&txn) {
            t.status = Status::Aborted(reason);
            t.unconfirmed = false;
            t.writes.clear();
            t.bytes = 0;
            if !had {
                self.note_freed(txn);
            }
        }
    }

    /// Record a write of a key `txn` holds exclusively. Records nothing if
    /// `txn` is no longer active, or if the write would take its writes on
    /// this shard over [`MAX_TXN_BYTES`] (the prepare record must stay a
    /// reasonable Raft entry).
    pub fn buffer_write(&mut self, txn: TxnId, key: Vec<u8>, value: Option<Vec<u8>>) -> Buffered {
        self.buffer_writes(txn, &[(key, value)])
    }

    /// Bytes of writes `txn` would hold here after buffering `ops`.
    pub fn bytes_after(&self, txn: TxnId, ops: &[Mutation]) -> usize {
        let Some(t) = self.txns.get(&txn) else {
            return ops.iter().map(|(k, v)| entry_bytes(k, v)).sum();
        };
        let mut last: BTreeMap<&[u8], &Option<Vec<u8>>> = BTreeMap::new();
        for (k, v) in ops {
            last.insert(k, v);
        }
        last.into_iter().fold(t.bytes, |n, (k, v)| {
            let old = t.writes.get(k).map_or(0, |o| entry_bytes(k, o));
            n - old + entry_bytes(k, v)
        })
    }

    /// Record a batch of writes of keys `txn` holds exclusively: all of
    /// them, or (not active, or over the size limit) none.
    pub fn buffer_writes(&mut self, txn: TxnId, ops: &[Mutation]) -> Buffered {
        let bytes = self.bytes_after(txn, ops);
        match self.txns.get_mut(&txn) {
            Some(t) if t.status == Status::Active => {
                if bytes > MAX_TXN_BYTES {
                    return Buffered::TooLarge(bytes);
                }
                for (k, v) in ops {
                    t.writes.insert(k.clone(), v.clone());
                }
                t.bytes = bytes;
                Buffered::Ok
            }
            Some(t) => Buffered::NotOpen(match &t.status {
                Status::Aborted(r) => r.clone(),
                _ => Abort::new(
                    AbortKind::Conflict,
                    "transaction is no longer open for writes (it is preparing)",
                ),
            }),
            None => Buffered::NotOpen(Abort::new(AbortKind::Expired, "unknown transaction")),
        }
    }

    /// The transaction's own pending write of `key`, if any (read your writes).
    pub fn own_write(&self, txn: TxnId, key: &[u8]) -> Option<Option<Vec<u8>>> {
        self.txns.get(&txn).and_then(|t| t.writes.get(key).cloned())
    }

    /// The transaction's pending writes in `[start, end)`.
    pub fn own_writes_in(
        &self,
        txn: TxnId,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let Some(t) = self.txns.get(&txn) else {
            return Vec::new();
        };
        t.writes
            .iter()
            .filter(|(k, _)| k.as_slice() >= start && end.is_none_or(|e| k.as_slice() < e))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// [`TxnManager::begin_prepare`], first taking `ops`: writes of keys
    /// `txn` should hold exclusively already. A lock is taken only if no
    /// other transaction holds it, never waited for, since a preparing
    /// transaction must wait for nothing (wound-wait's freedom from
    /// deadlock rests on it); if one is held, the prepare fails.
    pub fn begin_prepare_with(
        &mut self,
        txn: TxnId,
        ops: &[Mutation],
        now_ms: u64,
    ) -> Result<PrepareInput, Abort> {
        if !ops.is_empty() {
            let Some(term) = self.term else {
                return Err(Abort::new(AbortKind::Leadership, "not leader"));
            };
            match self.txns.get(&txn) {
                None => {
                    return Err(Abort::new(
                        AbortKind::Expired,
                        "unknown transaction here (expired, or leadership changed)",
                    ))
                }
                Some(t) => match &t.status {
                    Status::Active if t.term == term => {}
                    Status::Active => {
                        return Err(Abort::new(
                            AbortKind::Leadership,
                            "leadership changed during the transaction",
                        ))
                    }
                    Status::Aborted(r) => return Err(r.clone()),
                    Status::Preparing | Status::Prepared => {
                        return Err(Abort::new(
                            AbortKind::Conflict,
                            "prepare already in progress",
                        ))
                    }
                },
            }
            for (k, _) in ops {
                if let Err(holders) = self.locks.try_key(txn, k, Mode::Exclusive) {
                    let by: Vec<String> = holders.iter().map(ToString::to_string).collect();
                    return Err(Abort::new(
                        AbortKind::Conflict,
                        format!(
                            "key {} is locked by {} at prepare (a prepare does not wait)",
                            show_key(k),
                            by.join(", ")
                        ),
                    ));
                }
            }
            match self.buffer_writes(txn, ops) {
                Buffered::Ok => {}
                Buffered::NotOpen(r) => return Err(r),
                Buffered::TooLarge(n) => {
                    return Err(Abort::new(AbortKind::Conflict, format!(
                        "transaction over the size limit: {n} bytes of writes on one shard (max {MAX_TXN_BYTES})"
                    )))
                }
            }
        }
        self.begin_prepare(txn, now_ms)
    }

    /// Freeze `txn` for prepare: from now on no one can wound it.
    pub fn begin_prepare(&mut self, txn: TxnId, now_ms: u64) -> Result<PrepareInput, Abort> {
        let Some(term) = self.term else {
            return Err(Abort::new(AbortKind::Leadership, "not leader"));
        };
        let t = self.txns.get_mut(&txn).ok_or_else(|| {
            Abort::new(
                AbortKind::Expired,
                "unknown transaction here (expired, or leadership changed)",
            )
        })?;
        t.last_active_ms = now_ms;
        match &t.status {
            Status::Active => {}
            Status::Aborted(r) => return Err(r.clone()),
            Status::Preparing | Status::Prepared => {
                return Err(Abort::new(
                    AbortKind::Conflict,
                    "prepare already in progress",
                ))
            }
        }
        if t.term != term {
            return Err(Abort::new(
                AbortKind::Leadership,
                "leadership changed during the transaction",
            ));
        }
        t.status = Status::Preparing;
        Ok(PrepareInput {
            writes: t
                .writes
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            term: t.term,
        })
    }

    /// The prepare record was applied (`ok`) or rejected.
    pub fn prepare_applied(&mut self, txn: TxnId, ok: bool) {
        if ok {
            if let Some(t) = self.txns.get_mut(&txn) {
                t.status = Status::Prepared;
            }
        } else {
            self.finish(txn);
        }
    }

    /// The coordinator's decision on prepared `txn` was handed to this
    /// leader's Raft: its locks go at once instead of when the decision is
    /// applied, so the keys' next users need not wait out a Raft round.
    /// Two things keep that safe. (1) Until the decision is committed in
    /// the log ([`TxnManager::decision_logged`]), no write of its keys is
    /// proposed ([`TxnManager::awaits_decision`]): Raft may still refuse
    /// the entry (a lapsed leader lease refuses writes, and later ones can
    /// be accepted again in the same term), and a write of those keys
    /// must land behind the decision, never before it, and never beside
    /// a second prepare record of the same key. (2) A committed
    /// transaction's writes are served to readers from here until its
    /// commit is visible in the store ([`TxnManager::decision_applied`]),
    /// so no reader let in now sees the old values. A leader change drops
    /// all of it with the locks; the new leader rebuilds them from the
    /// prepare record, which only the decision's apply removes. Returns
    /// whether anything was released; false (and nothing changes) unless
    /// `txn` is prepared here.
    pub fn decided(&mut self, txn: TxnId, commit: bool, now_ms: u64) -> bool {
        if self.status(txn) != Some(&Status::Prepared) || self.released_early(txn) {
            return false;
        }
        let Some(t) = self.txns.remove(&txn) else {
            return false;
        };
        let keys: Vec<Vec<u8>> = t.writes.keys().cloned().collect();
        if commit {
            for (k, v) in t.writes {
                self.committed.insert(k, (txn, v));
            }
            self.committing.insert(txn, keys.clone());
        }
        self.unlogged.insert(
            txn,
            Unlogged {
                keys,
                commit,
                since_ms: now_ms,
            },
        );
        self.release_locks(txn);
        true
    }

    /// `txn` was released at its decision, which is not applied yet: it
    /// is over here, and nothing may bring it back (a late request of it
    /// is refused rather than registered anew).
    fn released_early(&self, txn: TxnId) -> bool {
        self.unlogged.contains_key(&txn) || self.committing.contains_key(&txn)
    }

    /// Decisions released early and still not seen in the log after
    /// `after_ms` (the proposal was refused or lost, and nobody resent
    /// it): the owner proposes them again, as (transaction, commit). Each
    /// is reported once per `after_ms`.
    pub fn unlogged_after(&mut self, now_ms: u64, after_ms: u64) -> Vec<(TxnId, bool)> {
        let mut again = Vec::new();
        for (txn, u) in &mut self.unlogged {
            if now_ms.saturating_sub(u.since_ms) >= after_ms {
                u.since_ms = now_ms;
                again.push((*txn, u.commit));
            }
        }
        again
    }

    /// The decision on `txn` is committed in the log: writes of its keys
    /// may be proposed again (they land behind it).
    pub fn decision_logged(&mut self, txn: TxnId) {
        self.unlogged.remove(&txn);
    }

    /// Whether `txn`'s decision, released early, still waits to be seen
    /// committed in the log.
    pub fn decision_unlogged(&self, txn: TxnId) -> bool {
        self.unlogged.contains_key(&txn)
    }

    /// Some key of `writes` belongs to a decision not yet committed in the
    /// log, other than those `carried` ahead of the writes in their own
    /// entry: proposing them now could put them ahead of it.
    pub fn awaits_decision(&self, writes: &[Mutation], carried: impl Fn(TxnId) -> bool) -> bool {
        self.unlogged.iter().any(|(t, u)| {
            writes.iter().any(|(k, _)| u.keys.binary_search(k).is_ok()) && !carried(*t)
        })
    }

    /// The decision on `txn` is applied and visible in the store: its
    /// writes need no longer be served from memory (unless a later decided
    /// transaction wrote the key again, whose write stays), and it is
    /// certainly in the log.
    pub fn decision_applied(&mut self, txn: TxnId) {
        self.unlogged.remove(&txn);
        for k in self.committing.remove(&txn).unwrap_or_default() {
            if matches!(self.committed.get(&k), Some((owner, _)) if *owner == txn) {
                self.committed.remove(&k);
            }
        }
    }

    /// The value of `key` as last written by a transaction decided to
    /// commit whose commit is not visible in the store yet, if any.
    pub fn committed_write(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        self.committed.get(key).map(|(_, v)| v.clone())
    }

    /// [`TxnManager::committed_write`] for every key in `[start, end)`.
    pub fn committed_in(&self, start: &[u8], end: Option<&[u8]>) -> Vec<Mutation> {
        use std::ops::Bound;
        let upper = end.map_or(Bound::Unbounded, |e| Bound::Excluded(e.to_vec()));
        if end.is_some_and(|e| e <= start) {
            return Vec::new();
        }
        self.committed
            .range((Bound::Included(start.to_vec()), upper))
            .map(|(k, (_, v))| (k.clone(), v.clone()))
            .collect()
    }

    /// `txn` is aborted here (a lock wait ran out, its coordinator's
    /// abort, idle too long): [`TxnManager::finish`], and refuse its
    /// requests from now on, first ones included (see `ended`).
    pub fn end_aborted(&mut self, txn: TxnId) -> bool {
        let had = self.finish(txn);
        if txn.group != crate::node::IMPLICIT_GROUP && self.ended_set.insert(txn) {
            self.ended.push_back(txn);
            if self.ended.len() > ENDED_REMEMBERED {
                if let Some(old) = self.ended.pop_front() {
                    self.ended_set.remove(&old);
                }
            }
        }
        had
    }

    /// [`TxnManager::end_aborted`] for a transaction not preparing or
    /// prepared here, in one step (a prepare cannot slip in between the
    /// look and the release); false, changing nothing, for one that is.
    pub fn end_open(&mut self, txn: TxnId) -> bool {
        if matches!(
            self.status(txn),
            Some(Status::Preparing) | Some(Status::Prepared)
        ) {
            return false;
        }
        self.end_aborted(txn);
        true
    }

    /// The transaction ended here (commit or abort applied, rollback,
    /// read-only prepare): release its locks and forget it.
    pub fn finish(&mut self, txn: TxnId) -> bool {
        let had = self.release_locks(txn);
        let known = self.txns.remove(&txn).is_some();
        if known && !had {
            self.note_freed(txn);
        }
        known || had
    }

    /// Abort open transactions idle longer than the limit. Prepared ones
    /// are never expired: only their coordinator may decide them.
    pub fn expire(&mut self, now_ms: u64) -> Vec<TxnId> {
        let limit = self.limits.idle_timeout_ms;
        let idle: Vec<TxnId> = self
            .txns
            .iter()
            .filter(|(_, t)| {
                matches!(t.status, Status::Active | Status::Aborted(_))
                    && now_ms.saturating_sub(t.last_active_ms) > limit
            })
            .map(|(id, _)| *id)
            .collect();
        for id in &idle {
            self.end_aborted(*id);
        }
        idle
    }

    /// Prepared transactions and how long since anything happened to them.
    pub fn prepared(&self) -> Vec<(TxnId, u64)> {
        self.txns
            .iter()
            .filter(|(_, t)| t.status == Status::Prepared)
            .map(|(id, t)| (*id, t.last_active_ms))
            .collect()
    }

    /// Active (unprepared) transactions of a coordinator group that have
    /// been silent, and not asked about, for `after_ms`: the owner asks
    /// their coordinator whether it still has them. Marks them asked.
    pub fn silent_active(&mut self, now_ms: u64, after_ms: u64) -> Vec<TxnId> {
        let mut out = Vec::new();
        for (id, t) in self.txns.iter_mut() {
            if id.group != 0
                && t.status == Status::Active
                && now_ms.saturating_sub(t.last_active_ms) > after_ms
                && now_ms.saturating_sub(t.asked_ms) > after_ms
            {
                t.asked_ms = now_ms;
                out.push(*id);
            }
        }
        out
    }

    /// Wounded transactions whose coordinator has not confirmed the wound
    /// (the wounder could not reach it, then gave up), quiet and not
    /// asked about for `after_ms`: the owner tells their coordinator
    /// again, so their locks go once it knows rather than at the idle
    /// timeout. Marks them asked.
    pub fn silent_unconfirmed(&mut self, now_ms: u64, after_ms: u64) -> Vec<(TxnId, Abort)> {
        let mut out = Vec::new();
        for (id, t) in self.txns.iter_mut() {
            if let Status::Aborted(r) = &t.status {
                if t.unconfirmed
                    && now_ms.saturating_sub(t.last_active_ms) > after_ms
                    && now_ms.saturating_sub(t.asked_ms) > after_ms
                {
                    t.asked_ms = now_ms;
                    out.push((*id, r.clone()));
                }
            }
        }
        out
    }

    /// Its coordinator no longer has `txn` (it crashed, or leadership
    /// moved): abort it here if it is still active. Safe whatever the
    /// coordinator thinks, because an unprepared transaction cannot have
    /// committed anywhere. Returns whether it aborted.
    pub fn abandon(&mut self, txn: TxnId) -> bool {
        if self.status(txn) != Some(&Status::Active) {
            return false;
        }
        self.abort_with(
            txn,
            Abort::new(
                AbortKind::Rollback,
                "abandoned: its coordinator no longer has it (restart or leader change)",
            ),
        );
        true
    }

    pub fn touch(&mut self, txn: TxnId, now_ms: u64) {
        if let Some(t) = self.txns.get_mut(&txn) {
            t.last_active_ms = now_ms;
        }
    }

    pub fn open_count(&self) -> usize {
        self.txns.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ts: u64) -> TxnId {
        TxnId {
            ts: Timestamp(ts),
            node: 1,
            group: 1,
        }
    }

    /// Lock, confirming every wound at once (what the node does after its
    /// coordinators acknowledge).
    fn lock_confirming(m: &mut TxnManager, txn: TxnId, target: &Target, now: u64) -> Step {
        loop {
            match m.lock(txn, true, target, now) {
                Step::Wound(victims) => {
                    for (v, _) in victims {
                        assert!(m.wound_confirmed(v));
                    }
                }
                other => return other,
            }
        }
    }

    fn mgr() -> TxnManager {
        let mut m = TxnManager::new(TxnLimits {
            idle_timeout_ms: 100,
            ..TxnLimits::default()
        });
        m.leader_ready(3, Vec::new(), 0);
        m
    }

    #[test]
    fn a_frozen_span_grants_no_lock_and_its_holders_are_wounded_until_confirmed() {
        let mut m = mgr();
        let moving = Span::Range {
            start: b"m".to_vec(),
            end: None,
        };
        let (a, b, c) = (t(1), t(2), t(3));
        assert_eq!(
            m.lock(a, true, &Target::key(b"n", Mode::Shared), 0),
            Step::Granted
        );
        assert_eq!(
            m.lock(b, true, &Target::key(b"a", Mode::Exclusive), 0),
            Step::Granted
        );
        let r = Range {
            start: b"k".to_vec(),
            end: Some(b"p".to_vec()),
        };
        assert_eq!(m.lock(c, true, &Target::Range(r.clone()), 0), Step::Granted);
        m.freeze(Some(moving.clone()));
        // Nothing new in the moving part, a key or a range that reaches it.
        for target in [Target::key(b"z", Mode::Shared), Target::Range(r)] {
            match m.lock(t(9), true, &target, 0) {
                Step::Abort(why) => assert_eq!(why.kind, AbortKind::Moved),
                other => panic!("{other:?}"),
            }
        }
        // Below it, as before.
        assert_eq!(
            m.lock(t(8), true, &Target::key(b"b", Mode::Shared), 0),
            Step::Granted
        );
        let h = m.holders_in(&moving);
        assert_eq!(h.open, vec![a, c]);
        assert!(h.unconfirmed.is_empty() && !h.busy);
        let reason = m.wound_for_split(a).expect("a coordinator to tell");
        assert_eq!(reason.kind, AbortKind::Moved);
        // Wounded, its locks stay until its coordinator confirms.
        let h = m.holders_in(&moving);
        assert_eq!(h.open, vec![c]);
        assert_eq!(h.unconfirmed.len(), 1);
        assert!(m.wound_confirmed(a));
        match m.lock(a, false, &Target::key(b"b", Mode::Shared), 0) {
            Step::Abort(why) => assert_eq!(why.kind, AbortKind::Moved),
            other => panic!("{other:?}"),
        }
        // A preparing holder is waited for, not wounded.
        assert!(m.begin_prepare(c, 0).is_ok());
        let h = m.holders_in(&moving);
        assert!(h.open.is_empty() && h.busy, "{h:?}");
        assert_eq!(m.wound_for_split(c), None);
        // Lifted: granted again.
        m.freeze(None);
        assert_eq!(
            m.lock(t(10), true, &Target::key(b"z", Mode::Shared), 0),
            Step::Granted
        );
        // A leadership change forgets it (the next leader reads the record).
        m.freeze(Some(moving));
        m.step_down();
        assert!(m.frozen().is_none());
    }

    #[test]
    fn abandoned_active_txn_releases_its_locks_but_prepared_stays() {
        let mut m = mgr();
        let x = |k: &[u8]| Target::key(k, Mode::Exclusive);
        let (a, b) = (t(10), t(11));
        assert_eq!(m.lock(a, true, &x(b"a"), 0), Step::Granted);
        assert_eq!(m.lock(b, true, &x(b"b"), 0), Step::Granted);
        m.buffer_write(b, b"b".to_vec(), Some(b"1".to_vec()));
        m.begin_prepare(b, 0).unwrap();
        // Nothing is silent yet; then both are, and each is reported once.
        assert!(m.silent_active(50, 60).is_empty());
        assert_eq!(m.silent_active(100, 60), vec![a]);
        assert!(m.silent_active(120, 60).is_empty());
        assert_eq!(m.live(), 2);
        assert!(m.abandon(a));
        assert!(!m.abandon(a), "abandon is idempotent");
        // Aborted, a waits to be forgotten and counts as open, not live.
        assert_eq!((m.live(), m.open_count()), (1, 2));
        assert!(!m.abandon(b), "a preparing transaction is never abandoned");
        // a's lock is free for an older transaction without waiting.
        assert_eq!(m.lock(t(5), true, &x(b"a"), 100), Step::Granted);
    }

    /// Writes carried in a prepare are taken only when no one else holds
    /// their keys; a prepare never waits, and a refused one changes
    /// nothing for other transactions.
    #[test]
    fn prepare_with_writes_takes_held_or_free_keys_only() {
        let mut m = mgr();
        let x = |k: &[u8]| Target::key(k, Mode::Exclusive);
        let put = |k: &str| (k.as_bytes().to_vec(), Some(b"v".to_vec()));
        // Read for update, then the write rides in the prepare.
        assert_eq!(m.lock(t(1), true, &x(b"a"), 0), Step::Granted);
        let p = m.begin_prepare_with(t(1), &[put("a")], 0).unwrap();
        assert_eq!(p.writes, vec![put("a")]);
        assert_eq!(m.status(t(1)), Some(&Status::Preparing));
        // A key another transaction holds: refused at once, never waited
        // for, naming the holder.
        assert_eq!(
            m.lock(t(2), true, &Target::key(b"b", Mode::Shared), 0),
            Step::Granted
        );
        assert_eq!(m.lock(t(3), true, &x(b"c"), 0), Step::Granted);
        let e = m
            .begin_prepare_with(t(3), &[put("c"), put("b")], 0)
            .unwrap_err();
        assert_eq!(e.kind, AbortKind::Conflict);
        assert!(e.reason.contains("'b'"), "{e}");
        assert!(e.reason.contains(&t(2).to_string()), "{e}");
        assert_eq!(m.status(t(3)), Some(&Status::Active), "not frozen");
        // A transaction this shard does not know, or no longer active,
        // takes no lock at all.
        assert!(m.begin_prepare_with(t(9), &[put("z")], 0).is_err());
        assert_eq!(m.lock(t(4), true, &x(b"z"), 0), Step::Granted);
        assert!(m.begin_prepare_with(t(1), &[put("a")], 0).is_err());
        // Without writes it is the plain prepare.
        let p = m.begin_prepare_with(t(2), &[], 0).unwrap();
        assert!(p.writes.is_empty());
    }

    #[test]
    fn skip_shared_locks_bug_grants_conflicting_locks() {
        let mut m = TxnManager::new(TxnLimits {
            skip_shared_locks: true,
            ..TxnLimits::default()
        });
        m.leader_ready(3, Vec::new(), 0);
        let x = Target::key(b"k", Mode::Exclusive);
        assert_eq!(m.lock(t(20), true, &x, 0), Step::Granted);
        // Correct 2PL makes this reader wait or wound; the bug lets it in.
        let s = Target::key(b"k", Mode::Shared);
        assert_eq!(m.lock(t(30), true, &s, 0), Step::Granted);
        assert_eq!(m.status(t(20)), Some(&Status::Active));
    }

    #[test]
    fn an_unconfirmed_wound_is_reported_once_quiet_and_again_later() {
        let mut m = mgr();
        let k = Target::key(b"k", Mode::Exclusive);
        assert_eq!(m.lock(t(20), true, &k, 0), Step::Granted);
        assert!(matches!(m.lock(t(10), true, &k, 0), Step::Wound(_)));
        // Quiet for the limit: reported, with the wound's reason, once per
        // limit; nothing else is.
        assert!(m.silent_unconfirmed(50, 60).is_empty());
        let late = m.silent_unconfirmed(100, 60);
        assert_eq!(late.len(), 1);
        assert_eq!(late[0].0, t(20));
        assert_eq!(late[0].1.kind, AbortKind::Wounded);
        assert!(m.silent_unconfirmed(120, 60).is_empty());
        assert_eq!(m.silent_unconfirmed(170, 60).len(), 1);
        // Confirmed: its locks go, and it is not reported again.
        assert!(m.wound_confirmed(t(20)));
        assert!(m.silent_unconfirmed(300, 60).is_empty());
        assert_eq!(m.lock(t(10), true, &k, 300), Step::Granted);
    }

    #[test]
    fn older_wounds_younger_and_younger_waits_for_older() {
        let mut m = mgr();
        assert_eq!(
            m.lock(t(20), true, &Target::key(b"k", Mode::Exclusive), 0),
            Step::Granted
        );
        m.buffer_write(t(20), b"k".to_vec(), Some(b"young".to_vec()));
        // Older t(10) wounds the younger holder; the holder keeps the lock
        // until its coordinator confirms, then t(10) gets it.
        let k = Target::key(b"k", Mode::Exclusive);
        assert!(matches!(
            m.lock(t(10), true, &k, 1),
            Step::Wound(v) if v.len() == 1 && v[0].0 == t(20) && v[0].1.kind == AbortKind::Wounded && v[0].1.reason.contains("on key 'k'")
        ));
        // Another waiter sees the same unconfirmed wound, not a plain wait.
        assert!(matches!(
            m.lock(t(15), true, &k, 1),
            Step::Wound(v) if v[0].0 == t(20)
        ));
        assert!(m.wound_confirmed(t(20)));
        assert!(!m.wound_confirmed(t(20)), "confirming is idempotent");
        assert_eq!(m.lock(t(10), true, &k, 1), Step::Granted);
        assert!(
            matches!(m.status(t(20)), Some(Status::Aborted(r)) if r.kind == AbortKind::Wounded)
        );
        assert_eq!(
            m.own_write(t(20), b"k"),
            None,
            "a wounded transaction's writes are dropped"
        );
        // The wounded one learns it on its next request.
        assert!(matches!(
            m.lock(t(20), true, &Target::key(b"x", Mode::Shared), 2),
            Step::Abort(_)
        ));
        // A younger transaction waits for the older holder.
        assert!(matches!(
            m.lock(t(30), true, &Target::key(b"k", Mode::Shared), 3),
            Step::Wait(_)
        ));
        m.finish(t(10));
        assert_eq!(
            m.lock(t(30), true, &Target::key(b"k", Mode::Shared), 4),
            Step::Granted
        );
    }

    #[test]
    fn opposite_lock_orders_cannot_deadlock() {
        let mut m = mgr();
        let (old, young) = (t(1), t(2));
        assert_eq!(
            m.lock(old, true, &Target::key(b"a", Mode::Exclusive), 0),
            Step::Granted
        );
        assert_eq!(
            m.lock(young, true, &Target::key(b"b", Mode::Exclusive), 0),
            Step::Granted
        );
        // young -> a: waits for old.
        assert!(matches!(
            m.lock(young, true, &Target::key(b"a", Mode::Exclusive), 1),
            Step::Wait(_)
        ));
        // old -> b: wounds young instead of waiting, so there is no cycle.
        assert_eq!(
            lock_confirming(&mut m, old, &Target::key(b"b", Mode::Exclusive), 1),
            Step::Granted
        );
        assert!(matches!(
            m.lock(young, true, &Target::key(b"a", Mode::Exclusive), 2),
            Step::Abort(_)
        ));
    }

    #[test]
    fn preparing_transactions_cannot_be_wounded() {
        let mut m = mgr();
        assert_eq!(
            m.lock(t(20), true, &Target::key(b"k", Mode::Exclusive), 0),
            Step::Granted
        );
        m.buffer_write(t(20), b"k".to_vec(), Some(b"v".to_vec()));
        let p = m.begin_prepare(t(20), 1).unwrap();
        assert_eq!(p.writes, vec![(b"k".to_vec(), Some(b"v".to_vec()))]);
        assert_eq!(p.term, 3);
        assert!(matches!(
            m.lock(t(10), true, &Target::key(b"k", Mode::Shared), 2),
            Step::Wait(_)
        ));
        m.prepare_applied(t(20), true);
        assert_eq!(m.status(t(20)), Some(&Status::Prepared));
        assert!(matches!(
            m.lock(t(10), true, &Target::key(b"k", Mode::Shared), 3),
            Step::Wait(_)
        ));
        // No more operations once preparing, and no second prepare.
        assert!(matches!(
            m.lock(t(20), true, &Target::key(b"z", Mode::Shared), 3),
            Step::Abort(_)
        ));
        assert!(m.begin_prepare(t(20), 3).is_err());
        m.finish(t(20));
        assert_eq!(
            m.lock(t(10), true, &Target::key(b"k", Mode::Shared), 4),
            Step::Granted
        );
    }

    /// Lock `keys` for `txn`, buffer a write of each, prepare, and apply
    /// the prepare: `txn` is then prepared here.
    fn prepared_with(m: &mut TxnManager, txn: TxnId, writes: &[(&[u8], Option<&[u8]>)]) {
        for (k, v) in writes {
            assert_eq!(
                m.lock(txn, true, &Target::key(k, Mode::Exclusive), 0),
                Step::Granted
            );
            m.buffer_write(txn, k.to_vec(), v.map(<[u8]>::to_vec));
        }
        m.begin_prepare(txn, 0).unwrap();
        m.prepare_applied(txn, true);
    }

    #[test]
    fn a_decided_commit_frees_its_locks_and_serves_its_writes_until_applied() {
        let mut m = mgr();
        let x = |k: &[u8]| Target::key(k, Mode::Exclusive);
        prepared_with(&mut m, t(20), &[(b"a", Some(b"1")), (b"b", None)]);
        assert!(matches!(m.lock(t(10), true, &x(b"a"), 1), Step::Wait(_)));
        assert_eq!(m.committed_write(b"a"), None, "undecided: nothing to serve");

        let w = |k: &[u8]| vec![(k.to_vec(), Some(b"x".to_vec()))];
        assert!(!m.awaits_decision(&w(b"a"), |_| false));
        assert!(m.decided(t(20), true, 0));
        assert_eq!(m.status(t(20)), None);
        // Until the decision is seen in the log, no write of its keys may
        // be proposed (it could land ahead of it).
        assert!(m.decision_unlogged(t(20)));
        assert!(m.awaits_decision(&w(b"a"), |_| false));
        assert!(m.awaits_decision(&w(b"b"), |_| false));
        assert!(!m.awaits_decision(&w(b"c"), |_| false));
        assert_eq!(m.committed_write(b"a"), Some(Some(b"1".to_vec())));
        assert_eq!(
            m.committed_write(b"b"),
            Some(None),
            "a delete is served too"
        );
        assert_eq!(m.committed_write(b"c"), None);
        assert_eq!(
            m.committed_in(b"a", Some(b"c")),
            vec![(b"a".to_vec(), Some(b"1".to_vec())), (b"b".to_vec(), None)]
        );
        assert_eq!(m.committed_in(b"b", Some(b"b")), Vec::new());
        assert_eq!(m.committed_in(b"c", None), Vec::new());
        // The older waiter takes the lock at once, and sees the new value.
        assert_eq!(m.lock(t(10), true, &x(b"a"), 2), Step::Granted);

        // A second decision (a resend) changes nothing.
        assert!(!m.decided(t(20), true, 0));
        // Releases of other paths (a late request of the transaction
        // failing, say) leave the served writes alone: only the apply ends
        // them.
        m.finish(t(20));
        assert_eq!(m.committed_write(b"a"), Some(Some(b"1".to_vec())));

        m.decision_logged(t(20));
        assert!(!m.decision_unlogged(t(20)));
        assert!(!m.awaits_decision(&w(b"a"), |_| false));
        assert_eq!(
            m.committed_write(b"a"),
            Some(Some(b"1".to_vec())),
            "served until applied, not just logged"
        );

        // t(10) writes a again and commits after t(20): when t(20)'s
        // commit is applied, t(10)'s write is still served.
        m.buffer_write(t(10), b"a".to_vec(), Some(b"2".to_vec()));
        m.begin_prepare(t(10), 3).unwrap();
        m.prepare_applied(t(10), true);
        assert!(m.decided(t(10), true, 0));
        m.decision_applied(t(20));
        assert_eq!(m.committed_write(b"a"), Some(Some(b"2".to_vec())));
        assert_eq!(m.committed_write(b"b"), None);
        assert!(
            m.awaits_decision(&w(b"a"), |_| false),
            "t(10)'s decision is not logged"
        );
        // The apply implies the log: it ends the wait too.
        m.decision_applied(t(10));
        assert!(!m.awaits_decision(&w(b"a"), |_| false));
        assert_eq!(m.committed_write(b"a"), None);
        assert_eq!(m.committed_in(b"", None), Vec::new());
    }

    #[test]
    fn only_a_prepared_transaction_is_released_at_its_decision() {
        let mut m = mgr();
        let x = |k: &[u8]| Target::key(k, Mode::Exclusive);
        // Active: its locks stay until the decision is applied.
        assert_eq!(m.lock(t(20), true, &x(b"a"), 0), Step::Granted);
        m.buffer_write(t(20), b"a".to_vec(), Some(b"1".to_vec()));
        assert!(!m.decided(t(20), true, 0));
        assert_eq!(m.committed_write(b"a"), None);
        // Preparing: the same (its prepare record is not there yet).
        m.begin_prepare(t(20), 1).unwrap();
        assert!(!m.decided(t(20), true, 0));
        assert!(matches!(m.lock(t(10), true, &x(b"a"), 1), Step::Wait(_)));
        // Unknown here: nothing.
        assert!(!m.decided(t(99), false, 0));

        // A prepared transaction decided to abort frees its locks and
        // serves nothing.
        m.prepare_applied(t(20), true);
        assert!(m.decided(t(20), false, 0));
        assert_eq!(m.committed_write(b"a"), None);
        assert_eq!(m.lock(t(10), true, &x(b"a"), 2), Step::Granted);
        // An abort's keys wait for it to be logged too: a second prepare
        // record of the key must not land beside the first.
        assert!(m.awaits_decision(&[(b"a".to_vec(), None)], |_| false));
        m.decision_applied(t(20));
        assert!(!m.awaits_decision(&[(b"a".to_vec(), None)], |_| false));
    }

    #[test]
    fn a_decision_not_seen_in_the_log_is_proposed_again_and_its_txn_stays_over() {
        let mut m = mgr();
        prepared_with(&mut m, t(20), &[(b"a", Some(b"1"))]);
        prepared_with(&mut m, t(21), &[(b"b", None)]);
        assert!(m.decided(t(20), true, 100));
        assert!(m.decided(t(21), false, 300));
        assert!(m.unlogged_after(500, 500).is_empty());
        assert_eq!(m.unlogged_after(600, 500), vec![(t(20), true)]);
        assert!(m.unlogged_after(700, 500).is_empty(), "once per interval");
        assert_eq!(m.unlogged_after(800, 500), vec![(t(21), false)]);
        assert_eq!(m.unlogged_after(1100, 500), vec![(t(20), true)]);
        m.decision_logged(t(20));
        assert!(m.unlogged_after(5000, 500).contains(&(t(21), false)));
        assert!(!m.unlogged_after(9000, 500).contains(&(t(20), true)));
        // A late first request of a decided transaction is refused, not
        // registered anew (it could prepare and be decided again).
        assert!(matches!(
            m.lock(t(20), true, &Target::key(b"z", Mode::Shared), 10),
            Step::Abort(_)
        ));
        assert_eq!(m.status(t(20)), None);
        assert!(!m.decided(t(20), true, 10));
        // Once applied, it is forgotten like any finished transaction.
        m.decision_applied(t(20));
        assert!(matches!(
            m.lock(t(20), false, &Target::key(b"z", Mode::Shared), 11),
            Step::Abort(_)
        ));
    }

    #[test]
    fn a_leader_change_drops_decided_writes_with_the_locks() {
        let mut m = mgr();
        prepared_with(&mut m, t(20), &[(b"a", Some(b"1"))]);
        assert!(m.decided(t(20), true, 0));
        m.step_down();
        assert_eq!(m.committed_write(b"a"), None);
        assert!(!m.decision_unlogged(t(20)));
        // The new term rebuilds the prepared transaction from its record
        // (its commit was not applied): it holds its lock again.
        m.leader_ready(
            4,
            vec![(t(20), vec![(b"a".to_vec(), Some(b"1".to_vec()))])],
            5,
        );
        assert_eq!(m.status(t(20)), Some(&Status::Prepared));
        assert_eq!(m.committed_write(b"a"), None);
        assert!(matches!(
            m.lock(t(10), true, &Target::key(b"a", Mode::Shared), 6),
            Step::Wait(_)
        ));
    }

    #[test]
    fn scans_lock_ranges_against_writers() {
        let mut m = mgr();
        let r = Range {
            start: b"a".to_vec(),
            end: Some(b"m".to_vec()),
        };
        assert_eq!(m.lock(t(10), true, &Target::Range(r), 0), Step::Granted);
        // A younger writer into the scanned range waits (no phantom).
        assert!(matches!(
            m.lock(t(20), true, &Target::key(b"c", Mode::Exclusive), 1),
            Step::Wait(_)
        ));
        assert_eq!(
            m.lock(t(20), true, &Target::key(b"z", Mode::Exclusive), 1),
            Step::Granted
        );
        // An older writer wounds the younger scanner.
        let r2 = Range {
            start: b"x".to_vec(),
            end: None,
        };
        assert!(matches!(
            m.lock(t(30), true, &Target::Range(r2), 2),
            Step::Wait(_)
        ));
        assert_eq!(
            lock_confirming(&mut m, t(5), &Target::key(b"b", Mode::Exclusive), 3),
            Step::Granted
        );
        assert!(matches!(m.status(t(10)), Some(Status::Aborted(_))));
    }

    #[test]
    fn idle_transactions_expire_but_prepared_ones_do_not() {
        let mut m = mgr();
        assert_eq!(
            m.lock(t(1), true, &Target::key(b"a", Mode::Exclusive), 0),
            Step::Granted
        );
        assert_eq!(
            m.lock(t(2), true, &Target::key(b"b", Mode::Exclusive), 0),
            Step::Granted
        );
        m.begin_prepare(t(2), 0).unwrap();
        m.prepare_applied(t(2), true);
        assert_eq!(m.expire(50), Vec::<TxnId>::new());
        assert_eq!(m.expire(500), vec![t(1)]);
        assert_eq!(m.status(t(1)), None);
        assert_eq!(m.status(t(2)), Some(&Status::Prepared));
        // Its lock was released.
        assert_eq!(
            m.lock(t(3), true, &Target::key(b"a", Mode::Exclusive), 501),
            Step::Granted
        );
    }

    #[test]
    fn leader_change_drops_open_transactions_and_rebuilds_prepared_locks() {
        let mut m = mgr();
        assert_eq!(
            m.lock(t(1), true, &Target::key(b"a", Mode::Shared), 0),
            Step::Granted
        );
        m.leader_ready(
            4,
            vec![(t(7), vec![(b"p".to_vec(), Some(b"v".to_vec()))])],
            10,
        );
        assert_eq!(m.status(t(1)), None, "read locks are leader-local");
        assert_eq!(m.status(t(7)), Some(&Status::Prepared));
        // Even an older transaction must wait for the prepared one.
        assert!(matches!(
            m.lock(t(2), true, &Target::key(b"p", Mode::Shared), 11),
            Step::Wait(_)
        ));
        // A transaction from the old term cannot prepare in the new one.
        m.step_down();
        assert_eq!(
            m.lock(t(1), true, &Target::key(b"a", Mode::Shared), 12),
            Step::NotLeader
        );
        assert!(m.begin_prepare(t(1), 12).is_err());
    }

    #[test]
    fn a_transaction_unknown_here_is_only_registered_on_its_first_request() {
        let mut m = mgr();
        assert!(matches!(
            m.lock(t(1), false, &Target::key(b"a", Mode::Shared), 0),
            Step::Abort(r) if r.kind == AbortKind::Expired
        ));
        assert_eq!(
            m.lock(t(1), true, &Target::key(b"a", Mode::Shared), 0),
            Step::Granted
        );
        assert_eq!(
            m.lock(t(1), false, &Target::key(b"b", Mode::Shared), 0),
            Step::Granted
        );
    }

    #[test]
    fn a_transaction_cannot_grow_past_the_size_limit() {
        let mut m = mgr();
        assert_eq!(
            m.lock(t(1), true, &Target::key(b"a", Mode::Exclusive), 0),
            Step::Granted
        );
        let big = vec![0u8; 3 << 20];
        for k in [b"a", b"b"] {
            assert_eq!(
                m.buffer_write(t(1), k.to_vec(), Some(big.clone())),
                Buffered::Ok
            );
        }
        assert!(matches!(
            m.buffer_write(t(1), b"c".to_vec(), Some(big.clone())),
            Buffered::TooLarge(_)
        ));
        // Overwriting a key replaces its bytes instead of adding them.
        assert_eq!(m.buffer_write(t(1), b"a".to_vec(), Some(big)), Buffered::Ok);
        assert_eq!(m.own_write(t(1), b"c"), None);
        assert!(matches!(
            m.buffer_write(t(9), b"x".to_vec(), None),
            Buffered::NotOpen(r) if r.kind == AbortKind::Expired
        ));
    }

    #[test]
    fn own_writes_are_visible_to_the_writer() {
        let mut m = mgr();
        assert_eq!(
            m.lock(t(1), true, &Target::key(b"b", Mode::Exclusive), 0),
            Step::Granted
        );
        m.buffer_write(t(1), b"b".to_vec(), None);
        assert_eq!(m.own_write(t(1), b"b"), Some(None));
        assert_eq!(m.own_write(t(2), b"b"), None);
        assert_eq!(
            m.own_writes_in(t(1), b"a", Some(b"c")),
            vec![(b"b".to_vec(), None)]
        );
        assert!(m.own_writes_in(t(1), b"c", None).is_empty());
    }

    #[test]
    fn equal_timestamps_are_ordered_by_the_whole_id() {
        let mut m = mgr();
        let a = TxnId {
            ts: Timestamp(7),
            node: 1,
            group: 1,
        };
        let b = TxnId {
            ts: Timestamp(7),
            node: 2,
            group: 1,
        };
        let k = Target::key(b"k", Mode::Exclusive);
        assert_eq!(m.lock(b, true, &k, 0), Step::Granted);
        // a is older by id: it wounds b rather than both waiting.
        assert!(matches!(m.lock(a, true, &k, 1), Step::Wound(v) if v[0].0 == b));
        m.wound_confirmed(b);
        assert_eq!(m.lock(a, true, &k, 1), Step::Granted);
        // b, started again with a fresh id, waits for a.
        let b2 = TxnId {
            ts: Timestamp(7),
            node: 2,
            group: 2,
        };
        assert!(matches!(m.lock(b2, true, &k, 2), Step::Wait(w) if w == vec![a]));
    }

    #[test]
    fn a_retry_keeps_its_first_attempts_age() {
        let mut m = mgr();
        let k = Target::key(b"k", Mode::Exclusive);
        assert_eq!(m.lock(t(50), true, &k, 0), Step::Granted);
        // A retry with a newer id but the age of its first attempt (ts 10)
        // is older than the holder (ts 50): it wounds instead of waiting.
        let retry = t(60);
        assert!(matches!(
            m.lock_prio(retry, true, Timestamp(10), &k, 1),
            Step::Wound(v) if v[0].0 == t(50)
        ));
        m.wound_confirmed(t(50));
        assert_eq!(
            m.lock_prio(retry, true, Timestamp(10), &k, 1),
            Step::Granted
        );
        // And a fresh transaction younger than that age waits for it.
        assert!(matches!(m.lock(t(20), true, &k, 2), Step::Wait(w) if w == vec![retry]));
    }

    #[test]
    fn plain_operations_are_wounded_at_once() {
        let mut m = mgr();
        let plain = TxnId {
            ts: Timestamp(40),
            node: 1,
            group: crate::node::IMPLICIT_GROUP,
        };
        let k = Target::key(b"k", Mode::Exclusive);
        assert_eq!(m.lock(plain, true, &k, 0), Step::Granted);
        assert_eq!(m.lock(t(10), true, &k, 1), Step::Granted);
        assert!(
            matches!(m.status(plain), Some(Status::Aborted(r)) if r.reason.starts_with(WOUNDED))
        );
    }

    /// Waiters are woken per transaction: `take_freed` names exactly the
    /// transactions whose locks went (a wounded plain operation, a
    /// finished or confirmed-wounded transaction), once; a leadership
    /// change names everyone.
    #[test]
    fn freed_names_the_transactions_whose_locks_went() {
        let mut m = mgr();
        let plain = TxnId {
            ts: Timestamp(40),
            node: 1,
            group: crate::node::IMPLICIT_GROUP,
        };
        let (a, b) = (
            Target::key(b"a", Mode::Exclusive),
            Target::key(b"b", Mode::Exclusive),
        );
        assert_eq!(m.take_freed(), Freed::All, "leader_ready starts afresh");
        assert_eq!(m.lock(plain, true, &a, 0), Step::Granted);
        assert_eq!(m.lock(t(30), true, &b, 0), Step::Granted);
        assert_eq!(m.take_freed(), Freed::Txns(vec![]), "grants free nothing");
        // An older transaction wounds the plain write: its lock goes at once.
        assert_eq!(m.lock(t(10), true, &a, 1), Step::Granted);
        assert_eq!(m.take_freed(), Freed::Txns(vec![plain]));
        // A coordinated one keeps its locks until the wound is confirmed.
        assert_eq!(lock_confirming(&mut m, t(20), &b, 2), Step::Granted);
        assert_eq!(m.take_freed(), Freed::Txns(vec![t(30)]));
        assert!(m.finish(t(10)));
        assert!(!m.finish(t(10)), "nothing left to free");
        assert_eq!(m.take_freed(), Freed::Txns(vec![t(10)]));
        assert_eq!(
            m.take_freed(),
            Freed::Txns(vec![]),
            "each release is named once"
        );
        // A transaction that ends holding nothing here is named too: a
        // request of its own may be waiting for its first lock.
        assert_eq!(
            m.lock(t(60), true, &Target::key(b"b", Mode::Exclusive), 3),
            Step::Wait(vec![t(20)])
        );
        assert!(m.finish(t(60)));
        assert_eq!(m.take_freed(), Freed::Txns(vec![t(60)]));
        assert!(!m.finish(t(61)), "unknown here");
        assert_eq!(m.take_freed(), Freed::Txns(vec![]));
        m.step_down();
        assert_eq!(m.take_freed(), Freed::All);
        assert_eq!(m.take_freed(), Freed::Txns(vec![]));
    }

    /// A caller that never drains the list cannot make it grow without
    /// bound: past the cap it becomes "everyone".
    #[test]
    fn an_undrained_freed_list_is_bounded() {
        let mut m = mgr();
        m.take_freed();
        for i in 0..(MAX_FREED as u64 + 10) {
            let k = Target::key(&i.to_be_bytes(), Mode::Exclusive);
            assert_eq!(m.lock(t(100 + i), true, &k, 0), Step::Granted);
            assert!(m.finish(t(100 + i)));
        }
        assert!(m.freed.len() <= MAX_FREED);
        assert_eq!(m.take_freed(), Freed::All);
    }

    #[test]
    fn targets_describe_themselves_for_messages() {
        assert_eq!(Target::key(b"bob", Mode::Shared).describe(), "key 'bob'");
        assert_eq!(show_key(b"a\x00"), "'a\\x00'");
        let r = Target::Range(Range {
            start: b"a".to_vec(),
            end: None,
        });
        assert_eq!(r.describe(), "range ['a', end)");
    }

    #[test]
    fn a_batch_of_writes_is_buffered_whole_or_not_at_all() {
        let mut m = mgr();
        let x = |k: &[u8]| Target::key(k, Mode::Exclusive);
        for k in [b"a", b"b", b"c"] {
            assert_eq!(m.lock(t(1), true, &x(k), 0), Step::Granted);
        }
        let big = vec![0u8; 3 << 20];
        let batch: Vec<Mutation> = [b"a", b"b", b"c"]
            .iter()
            .map(|k| (k.to_vec(), Some(big.clone())))
            .collect();
        assert_eq!(m.bytes_after(t(1), &batch), 3 * ((3 << 20) + 1));
        assert!(matches!(
            m.buffer_writes(t(1), &batch),
            Buffered::TooLarge(_)
        ));
        assert_eq!(m.own_write(t(1), b"a"), None, "nothing of the batch stays");
        assert_eq!(m.buffer_writes(t(1), &batch[..2]), Buffered::Ok);
        // Rewriting the same keys replaces their bytes.
        assert_eq!(m.bytes_after(t(1), &batch[..2]), 2 * ((3 << 20) + 1));
    }

    #[test]
    fn a_transaction_aborted_here_cannot_come_back_with_a_late_first_request() {
        let mut m = mgr();
        let a = Target::key(b"a", Mode::Exclusive);
        let b = Target::key(b"b", Mode::Exclusive);
        // A request waiting for its first lock here when its transaction
        // is aborted looks again as a first request: it must not register
        // the transaction anew (its locks would stay until this shard
        // asked the coordinator about it).
        assert_eq!(m.lock(t(10), true, &a, 0), Step::Granted);
        assert_eq!(m.lock(t(20), true, &a, 0), Step::Wait(vec![t(10)]));
        assert!(m.end_aborted(t(20)));
        assert!(
            matches!(m.lock(t(20), true, &a, 1), Step::Abort(r) if r.kind == AbortKind::Conflict)
        );
        assert!(
            matches!(m.lock(t(20), true, &b, 1), Step::Abort(_)),
            "nor any other key"
        );
        assert!(matches!(m.lock(t(20), false, &b, 1), Step::Abort(_)));
        assert_eq!(m.open_count(), 1, "only t(10) is known");
        // A finished (committed) transaction is not remembered: only an
        // abort refuses later first requests.
        assert!(m.finish(t(10)));
        assert_eq!(m.lock(t(10), true, &b, 2), Step::Granted);
        // Plain operations are never remembered.
        let plain = TxnId {
            ts: Timestamp(5),
            node: 1,
            group: crate::node::IMPLICIT_GROUP,
        };
        m.end_aborted(plain);
        assert_eq!(m.lock(plain, true, &a, 3), Step::Granted);
        // The memory is bounded: the oldest abort is forgotten first.
        for i in 0..ENDED_REMEMBERED as u64 {
            m.end_aborted(t(1_000 + i));
        }
        assert_eq!(m.ended.len(), ENDED_REMEMBERED);
        assert_eq!(m.ended_set.len(), ENDED_REMEMBERED);
        assert_eq!(
            m.lock(t(20), true, &Target::key(b"c", Mode::Shared), 4),
            Step::Granted
        );
        assert!(matches!(m.lock(t(1_000), true, &a, 4), Step::Abort(_)));
    }

    #[test]
    fn only_a_transaction_not_preparing_is_ended_as_open() {
        let mut m = mgr();
        let a = Target::key(b"a", Mode::Exclusive);
        let b = Target::key(b"b", Mode::Exclusive);
        assert_eq!(m.lock(t(1), true, &a, 0), Step::Granted);
        assert_eq!(m.lock(t(2), true, &b, 0), Step::Granted);
        assert!(m.begin_prepare(t(2), 0).is_ok());
        // Preparing: left as it is, its lock held.
        assert!(!m.end_open(t(2)));
        assert_eq!(m.status(t(2)), Some(&Status::Preparing));
        assert_eq!(m.lock(t(3), true, &b, 1), Step::Wait(vec![t(2)]));
        // Open: ended, its lock free, and remembered as aborted.
        assert!(m.end_open(t(1)));
        assert_eq!(m.status(t(1)), None);
        assert_eq!(m.lock(t(3), true, &a, 1), Step::Granted);
        assert!(matches!(m.lock(t(1), true, &a, 2), Step::Abort(_)));
        // Unknown here: nothing to free, still remembered.
        assert!(m.end_open(t(9)));
        assert!(matches!(
            m.lock(t(9), true, &Target::key(b"z", Mode::Shared), 2),
            Step::Abort(_)
        ));
    }
}
