//! The commit protocol as a pure state machine: `Event -> Vec<Action>`.
//!
//! The machine never performs I/O; the coordinator's owner task executes
//! its actions (RPCs to participants, appends to the recovery log, replies
//! to clients) and feeds their results back as events. Every step is thus
//! reproducible in a unit test, including a crash at any point: a crash is
//! simply the loss of the machine, after which [`Event::Recovered`] rebuilds
//! it from the recovery log.
//!
//! Protocol (docs/architecture.md, "The protocol", has the proof sketch):
//! 1. One shard touched: commit in one phase at that shard.
//! 2. At most one shard writes: the other shards validate their reads
//!    (no Raft entry), then the writing shard commits in one phase; nothing
//!    goes to the recovery log. With no writer at all, validation is all.
//! 3. Two or more shards write: **parallel commit**. In one round, every
//!    shard replicates a prepare record and the recovery log replicates a
//!    *staging* record listing the shards. The transaction is committed
//!    exactly when the staging record and every listed shard's prepare
//!    record are durable; no record states it, so the client hears
//!    "committed" after one consensus round. Then every shard is told to
//!    commit, and once all applied, the log records the commit as
//!    finished (which also drops the staging record).
//! 4. A "no" vote after staging: the abort is appended to the log first
//!    (first decision wins), since a prepare whose reply was lost may have
//!    landed and completed the commit condition; only a logged abort is
//!    reported and sent to the shards.
//! 5. Recovery of a staged transaction without a decision asks every listed
//!    shard to *fence* it: a shard that did not prepare it records an abort
//!    and can never prepare it afterwards. All prepared (or committed):
//!    it was committed; any aborted: it can never be. The verdict is
//!    logged (first decision wins) and sent to the shards.

use std::collections::{BTreeMap, BTreeSet};

use pact_common::{Abort, AbortKind, ShardId, TxnId};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Vote {
    Yes,
    ReadOnly,
    No(Abort),
}

/// What the client is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Committed,
    Aborted(Abort),
    /// The decision may or may not have been made durable; TxnStatus tells later.
    Unknown(String),
    /// Not decided, and alive here: open, or its commit in flight
    /// (reported by TxnStatus only, never as a commit's outcome).
    Open(String),
    /// Older than the group's record retention, and no record of it is
    /// left: whether it committed is no longer known (TxnStatus only).
    Expired(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogResult {
    /// The record is durable.
    Logged,
    /// The log already held a decision for this transaction (for example
    /// one recorded by TxnStatus); it stands.
    AlreadyDecided { commit: bool },
    /// Refused before it was appended (this replica no longer leads): it
    /// can never become durable, since no one else proposes it.
    NotAppended(String),
    /// The append failed or its fate is unknown (lost leadership).
    Failed(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The client asked to commit; `shards` are all shards it touched,
    /// `writers` those holding its writes.
    Commit {
        txn: TxnId,
        shards: BTreeSet<ShardId>,
        writers: BTreeSet<ShardId>,
    },
    /// Result of a one-phase commit at the only writing shard.
    OnePhaseDone { txn: TxnId, outcome: Outcome },
    Voted {
        txn: TxnId,
        shard: ShardId,
        vote: Vote,
    },
    /// The staging record's append ended.
    Staged { txn: TxnId, result: LogResult },
    /// The abort decision's append ended.
    Logged { txn: TxnId, result: LogResult },
    /// A participant applied the decision.
    Applied { txn: TxnId, shard: ShardId },
    /// Sending the decision failed; it must be sent again.
    ApplyFailed { txn: TxnId, shard: ShardId },
    /// Recovery of a staged transaction: the decision now in the log
    /// (`Some(commit)`), or `None` while a listed shard cannot be asked.
    Resolved { txn: TxnId, commit: Option<bool> },
    /// This coordinator became leader: commit decisions in the recovery
    /// log not yet marked finished, and staged transactions with no
    /// decision.
    Recovered {
        unfinished: Vec<(TxnId, BTreeSet<ShardId>)>,
        staged: Vec<(TxnId, BTreeSet<ShardId>)>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    CommitOnePhase {
        txn: TxnId,
        shard: ShardId,
    },
    /// Ask `shard` to prepare. `durable`: replicate a prepare record even
    /// if the shard holds no writes (a parallel commit counts it); without
    /// it a read-only shard only validates its reads and votes ReadOnly.
    Prepare {
        txn: TxnId,
        shard: ShardId,
        durable: bool,
    },
    /// Append the staging record (the shards whose prepare records, with
    /// it, make the transaction committed).
    Stage {
        txn: TxnId,
        shards: BTreeSet<ShardId>,
    },
    /// Append an abort decision (first decision wins).
    LogAbort {
        txn: TxnId,
    },
    Reply {
        txn: TxnId,
        outcome: Outcome,
    },
    Decide {
        txn: TxnId,
        shard: ShardId,
        commit: bool,
    },
    /// Send the decision again after a pause.
    RetryDecide {
        txn: TxnId,
        shard: ShardId,
        commit: bool,
    },
    /// Every participant applied the commit: record it (finished) so
    /// recovery skips it.
    Finish {
        txn: TxnId,
    },
    /// Settle a staged transaction nobody decided: fence it at every
    /// listed shard, log the verdict, report [`Event::Resolved`].
    Resolve {
        txn: TxnId,
        shards: BTreeSet<ShardId>,
    },
    /// [`Action::Resolve`] again after a pause.
    RetryResolve {
        txn: TxnId,
        shards: BTreeSet<ShardId>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the only writing shard's one-phase commit.
    Single,
    /// Read-only shards validating their reads; then `writer` (if any)
    /// commits in one phase.
    Validating {
        all: BTreeSet<ShardId>,
        waiting: BTreeSet<ShardId>,
        writer: Option<ShardId>,
    },
    /// Parallel commit: prepares and the staging record in flight.
    Committing {
        shards: BTreeSet<ShardId>,
        waiting: BTreeSet<ShardId>,
        staged: bool,
    },
    /// A vote failed after staging may have begun: logging the abort.
    Aborting {
        shards: BTreeSet<ShardId>,
        reason: Abort,
    },
    Deciding {
        commit: bool,
        pending: BTreeSet<ShardId>,
    },
    /// Recovery is settling a staged transaction.
    Resolving { shards: BTreeSet<ShardId> },
}

#[derive(Debug, Default)]
pub struct Machine {
    txns: BTreeMap<TxnId, Phase>,
}

impl Machine {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the machine is working on `txn` (its outcome may still change).
    pub fn in_flight(&self, txn: TxnId) -> bool {
        self.txns.contains_key(&txn)
    }

    /// The decision on `txn` while the machine delivers it to the shards
    /// (a parallel commit is decided before any record states it).
    pub fn decided(&self, txn: TxnId) -> Option<bool> {
        match self.txns.get(&txn) {
            Some(Phase::Deciding { commit, .. }) => Some(*commit),
            _ => None,
        }
    }

    /// The oldest transaction in flight (garbage collection must not pass it).
    pub fn oldest(&self) -> Option<TxnId> {
        self.txns.keys().next().copied()
    }

    pub fn len(&self) -> usize {
        self.txns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.txns.is_empty()
    }

    pub fn step(&mut self, ev: Event) -> Vec<Action> {
        match ev {
            Event::Commit {
                txn,
                shards,
                writers,
            } => self.commit(txn, shards, writers),
            Event::OnePhaseDone { txn, outcome } => match self.txns.get(&txn) {
                Some(Phase::Single) => {
                    self.txns.remove(&txn);
                    vec![Action::Reply { txn, outcome }]
                }
                _ => Vec::new(),
            },
            Event::Voted { txn, shard, vote } => match self.txns.get(&txn) {
                Some(Phase::Validating { .. }) => self.validated(txn, shard, vote),
                Some(Phase::Committing { .. }) => self.voted(txn, shard, vote),
                _ => Vec::new(),
            },
            Event::Staged { txn, result } => self.staged(txn, result),
            Event::Logged { txn, result } => {
                let Some(Phase::Aborting { shards, reason }) = self.txns.get(&txn).cloned() else {
                    return Vec::new();
                };
                match result {
                    LogResult::Logged | LogResult::AlreadyDecided { commit: false } => {
                        self.reply_and_decide(txn, shards, Outcome::Aborted(reason))
                    }
                    LogResult::AlreadyDecided { commit: true } => {
                        self.reply_and_decide(txn, shards, Outcome::Committed)
                    }
                    // The abort is not durable, and the commit condition
                    // may hold: only recovery can tell now.
                    LogResult::NotAppended(r) | LogResult::Failed(r) => {
                        self.txns.remove(&txn);
                        vec![Action::Reply {
                            txn,
                            outcome: Outcome::Unknown(format!(
                                "{reason}; the abort could not be recorded: {r}"
                            )),
                        }]
                    }
                }
            }
            Event::Applied { txn, shard } => {
                let Some(Phase::Deciding { commit, pending }) = self.txns.get_mut(&txn) else {
                    return Vec::new();
                };
                pending.remove(&shard);
                if pending.is_empty() {
                    let commit = *commit;
                    self.txns.remove(&txn);
                    if commit {
                        return vec![Action::Finish { txn }];
                    }
                }
                Vec::new()
            }
            Event::ApplyFailed { txn, shard } => match self.txns.get(&txn) {
                Some(Phase::Deciding { commit, pending }) if pending.contains(&shard) => {
                    vec![Action::RetryDecide {
                        txn,
                        shard,
                        commit: *commit,
                    }]
                }
                _ => Vec::new(),
            },
            Event::Resolved { txn, commit } => {
                let Some(Phase::Resolving { shards }) = self.txns.get(&txn).cloned() else {
                    return Vec::new();
                };
                match commit {
                    Some(commit) => self.decide(txn, shards, commit),
                    None => vec![Action::RetryResolve { txn, shards }],
                }
            }
            Event::Recovered { unfinished, staged } => {
                let mut acts = Vec::new();
                for (txn, shards) in unfinished {
                    if self.txns.contains_key(&txn) {
                        continue;
                    }
                    acts.extend(self.decide(txn, shards, true));
                }
                for (txn, shards) in staged {
                    if self.txns.contains_key(&txn) {
                        continue;
                    }
                    self.txns.insert(
                        txn,
                        Phase::Resolving {
                            shards: shards.clone(),
                        },
                    );
                    acts.push(Action::Resolve { txn, shards });
                }
                acts
            }
        }
    }

    fn commit(
        &mut self,
        txn: TxnId,
        shards: BTreeSet<ShardId>,
        writers: BTreeSet<ShardId>,
    ) -> Vec<Action> {
        if self.txns.contains_key(&txn) {
            // A duplicate commit request: the first one will be answered.
            return Vec::new();
        }
        if shards.is_empty() {
            return vec![Action::Reply {
                txn,
                outcome: Outcome::Committed,
            }];
        }
        if shards.len() == 1 {
            let shard = *shards.iter().next().unwrap_or(&ShardId(0));
            self.txns.insert(txn, Phase::Single);
            return vec![Action::CommitOnePhase { txn, shard }];
        }
        // A writer the transaction never touched cannot be: count it anyway.
        let all: BTreeSet<ShardId> = shards.union(&writers).copied().collect();
        if writers.len() <= 1 {
            let readers: BTreeSet<ShardId> = all.difference(&writers).copied().collect();
            let acts = readers
                .iter()
                .map(|s| Action::Prepare {
                    txn,
                    shard: *s,
                    durable: false,
                })
                .collect();
            self.txns.insert(
                txn,
                Phase::Validating {
                    all,
                    waiting: readers,
                    writer: writers.iter().next().copied(),
                },
            );
            return acts;
        }
        let mut acts = vec![Action::Stage {
            txn,
            shards: all.clone(),
        }];
        acts.extend(all.iter().map(|s| Action::Prepare {
            txn,
            shard: *s,
            durable: true,
        }));
        self.txns.insert(
            txn,
            Phase::Committing {
                shards: all.clone(),
                waiting: all,
                staged: false,
            },
        );
        acts
    }

    /// A read-only shard's validation (at most one writer, nothing staged).
    fn validated(&mut self, txn: TxnId, shard: ShardId, vote: Vote) -> Vec<Action> {
        let Some(Phase::Validating {
            all,
            waiting,
            writer,
        }) = self.txns.get_mut(&txn)
        else {
            return Vec::new();
        };
        if !waiting.remove(&shard) {
            return Vec::new();
        }
        let failed = match vote {
            Vote::ReadOnly => None,
            Vote::No(reason) => Some(reason),
            // The shard held writes the coordinator did not know of and
            // prepared them. Nothing is staged, so nothing can commit this
            // transaction: abort it, prepared shard included.
            Vote::Yes => Some(Abort::new(
                AbortKind::Conflict,
                format!("shard {shard} prepared writes the coordinator did not expect"),
            )),
        };
        if let Some(reason) = failed {
            // Abort everywhere, including shards that have not answered
            // and the writer: the abort record each gets makes anything
            // of this transaction still on its way there fail.
            let all = all.clone();
            return self.reply_and_decide(txn, all, Outcome::Aborted(reason));
        }
        if !waiting.is_empty() {
            return Vec::new();
        }
        // Every read is still valid, and no lock was taken after any was
        // released (the writer's locks are all held): commit the writer.
        match *writer {
            Some(w) => {
                self.txns.insert(txn, Phase::Single);
                vec![Action::CommitOnePhase { txn, shard: w }]
            }
            None => {
                self.txns.remove(&txn);
                vec![Action::Reply {
                    txn,
                    outcome: Outcome::Committed,
                }]
            }
        }
    }

    /// A vote in a parallel commit.
    fn voted(&mut self, txn: TxnId, shard: ShardId, vote: Vote) -> Vec<Action> {
        let Some(Phase::Committing {
            shards,
            waiting,
            staged,
        }) = self.txns.get_mut(&txn)
        else {
            return Vec::new();
        };
        if !waiting.remove(&shard) {
            return Vec::new();
        }
        let reason = match vote {
            Vote::Yes => {
                return if waiting.is_empty() && *staged {
                    let shards = shards.clone();
                    self.reply_and_decide(txn, shards, Outcome::Committed)
                } else {
                    Vec::new()
                };
            }
            Vote::No(reason) => reason,
            Vote::ReadOnly => Abort::new(
                AbortKind::Conflict,
                format!("shard {shard} kept no prepare record"),
            ),
        };
        // The staging record may be durable, and a prepare whose "yes"
        // was lost may still land: the abort must be the log's decision
        // before anyone hears it.
        let shards = shards.clone();
        self.txns.insert(txn, Phase::Aborting { shards, reason });
        vec![Action::LogAbort { txn }]
    }

    fn staged(&mut self, txn: TxnId, result: LogResult) -> Vec<Action> {
        let Some(Phase::Committing {
            shards,
            waiting,
            staged,
        }) = self.txns.get_mut(&txn)
        else {
            return Vec::new();
        };
        let shards = shards.clone();
        match result {
            LogResult::Logged => {
                *staged = true;
                if waiting.is_empty() {
                    self.reply_and_decide(txn, shards, Outcome::Committed)
                } else {
                    Vec::new()
                }
            }
            LogResult::AlreadyDecided { commit: true } => {
                self.reply_and_decide(txn, shards, Outcome::Committed)
            }
            LogResult::AlreadyDecided { commit: false } => self.reply_and_decide(
                txn,
                shards,
                Outcome::Aborted(Abort::new(
                    AbortKind::Rollback,
                    "aborted by recovery before it was staged",
                )),
            ),
            // Never staged, and never will be: nothing can commit it.
            LogResult::NotAppended(r) => {
                let why = Abort::new(AbortKind::Leadership, format!("not staged: {r}"));
                self.reply_and_decide(txn, shards, Outcome::Aborted(why))
            }
            LogResult::Failed(r) => {
                // The staging record may still become durable through a
                // new leader, whose recovery then settles the transaction
                // from the shards; this leader must stop here.
                self.txns.remove(&txn);
                vec![Action::Reply {
                    txn,
                    outcome: Outcome::Unknown(r),
                }]
            }
        }
    }

    fn reply_and_decide(
        &mut self,
        txn: TxnId,
        shards: BTreeSet<ShardId>,
        outcome: Outcome,
    ) -> Vec<Action> {
        let commit = outcome == Outcome::Committed;
        let mut acts = vec![Action::Reply { txn, outcome }];
        acts.extend(self.decide(txn, shards, commit));
        acts
    }

    fn decide(&mut self, txn: TxnId, shards: BTreeSet<ShardId>, commit: bool) -> Vec<Action> {
        if shards.is_empty() {
            self.txns.remove(&txn);
            return if commit {
                vec![Action::Finish { txn }]
            } else {
                Vec::new()
            };
        }
        let acts = shards
            .iter()
            .map(|s| Action::Decide {
                txn,
                shard: *s,
                commit,
            })
            .collect();
        self.txns.insert(
            txn,
            Phase::Deciding {
                commit,
                pending: shards,
            },
        );
        acts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pact_common::Timestamp;

    fn t(n: u64) -> TxnId {
        TxnId {
            ts: Timestamp(n),
            node: 4,
            group: 1,
        }
    }

    fn shards(ids: &[u64]) -> BTreeSet<ShardId> {
        ids.iter().map(|i| ShardId(*i)).collect()
    }

    fn replies(acts: &[Action]) -> Vec<Outcome> {
        acts.iter()
            .filter_map(|a| match a {
                Action::Reply { outcome, .. } => Some(outcome.clone()),
                _ => None,
            })
            .collect()
    }

    fn decides(acts: &[Action]) -> Vec<(u64, bool)> {
        acts.iter()
            .filter_map(|a| match a {
                Action::Decide { shard, commit, .. } => Some((shard.0, *commit)),
                _ => None,
            })
            .collect()
    }

    fn commit(m: &mut Machine, txn: TxnId, all: &[u64], writers: &[u64]) -> Vec<Action> {
        m.step(Event::Commit {
            txn,
            shards: shards(all),
            writers: shards(writers),
        })
    }

    fn vote(m: &mut Machine, txn: TxnId, shard: u64, vote: Vote) -> Vec<Action> {
        m.step(Event::Voted {
            txn,
            shard: ShardId(shard),
            vote,
        })
    }

    fn staged(m: &mut Machine, txn: TxnId, result: LogResult) -> Vec<Action> {
        m.step(Event::Staged { txn, result })
    }

    /// A new leader whose log holds no staging record and no unfinished
    /// commit: it has nothing to do.
    fn recovered_with_nothing_in_the_log() -> Machine {
        let mut fresh = Machine::new();
        assert!(fresh
            .step(Event::Recovered {
                unfinished: vec![],
                staged: vec![]
            })
            .is_empty());
        fresh
    }

    #[test]
    fn single_shard_commits_in_one_phase() {
        let mut m = Machine::new();
        let a = commit(&mut m, t(1), &[2], &[2]);
        assert_eq!(
            a,
            vec![Action::CommitOnePhase {
                txn: t(1),
                shard: ShardId(2)
            }]
        );
        let a = m.step(Event::OnePhaseDone {
            txn: t(1),
            outcome: Outcome::Committed,
        });
        assert_eq!(replies(&a), vec![Outcome::Committed]);
        assert!(m.is_empty());
        // An empty transaction commits trivially.
        let a = commit(&mut m, t(2), &[], &[]);
        assert_eq!(replies(&a), vec![Outcome::Committed]);
    }

    #[test]
    fn one_writer_commits_in_one_phase_after_the_readers_validate() {
        let mut m = Machine::new();
        let a = commit(&mut m, t(1), &[1, 2, 3], &[2]);
        assert_eq!(
            a,
            vec![
                Action::Prepare {
                    txn: t(1),
                    shard: ShardId(1),
                    durable: false
                },
                Action::Prepare {
                    txn: t(1),
                    shard: ShardId(3),
                    durable: false
                },
            ],
            "only the readers validate, nothing is staged"
        );
        assert!(vote(&mut m, t(1), 1, Vote::ReadOnly).is_empty());
        // The writer commits only once every read is known valid.
        let a = vote(&mut m, t(1), 3, Vote::ReadOnly);
        assert_eq!(
            a,
            vec![Action::CommitOnePhase {
                txn: t(1),
                shard: ShardId(2)
            }]
        );
        let a = m.step(Event::OnePhaseDone {
            txn: t(1),
            outcome: Outcome::Committed,
        });
        assert_eq!(replies(&a), vec![Outcome::Committed]);
        assert!(m.is_empty());
    }

    #[test]
    fn a_failed_validation_aborts_the_writer_too_without_logging() {
        let mut m = Machine::new();
        commit(&mut m, t(1), &[1, 2, 3], &[2]);
        let a = vote(
            &mut m,
            t(1),
            1,
            Vote::No(Abort::new(AbortKind::Conflict, "read locks were lost")),
        );
        assert_eq!(
            replies(&a),
            vec![Outcome::Aborted(Abort::new(
                AbortKind::Conflict,
                "read locks were lost"
            ))]
        );
        assert_eq!(decides(&a), vec![(1, false), (2, false), (3, false)]);
        assert!(!a.iter().any(|x| matches!(
            x,
            Action::LogAbort { .. } | Action::Stage { .. } | Action::CommitOnePhase { .. }
        )));
        // A late validation changes nothing.
        assert!(vote(&mut m, t(1), 3, Vote::ReadOnly).is_empty());
        // A shard that unexpectedly prepared writes aborts too.
        let mut m = Machine::new();
        commit(&mut m, t(2), &[1, 2], &[]);
        let a = vote(&mut m, t(2), 1, Vote::Yes);
        assert!(matches!(replies(&a)[..], [Outcome::Aborted(_)]));
        assert_eq!(decides(&a), vec![(1, false), (2, false)]);
    }

    #[test]
    fn read_only_everywhere_commits_after_validation() {
        let mut m = Machine::new();
        let a = commit(&mut m, t(1), &[1, 2], &[]);
        assert_eq!(a.len(), 2);
        assert!(vote(&mut m, t(1), 1, Vote::ReadOnly).is_empty());
        let a = vote(&mut m, t(1), 2, Vote::ReadOnly);
        assert_eq!(
            a,
            vec![Action::Reply {
                txn: t(1),
                outcome: Outcome::Committed
            }]
        );
        assert!(m.is_empty());
    }

    #[test]
    fn parallel_commit_stages_and_prepares_in_one_round() {
        let mut m = Machine::new();
        // Shard 3 only read: it prepares durably too, as it is listed.
        let a = commit(&mut m, t(1), &[1, 2, 3], &[1, 2]);
        assert_eq!(
            a[0],
            Action::Stage {
                txn: t(1),
                shards: shards(&[1, 2, 3])
            }
        );
        for s in [1, 2, 3] {
            assert!(a.contains(&Action::Prepare {
                txn: t(1),
                shard: ShardId(s),
                durable: true
            }));
        }
        assert_eq!(a.len(), 4);
        assert!(vote(&mut m, t(1), 1, Vote::Yes).is_empty());
        assert!(vote(&mut m, t(1), 3, Vote::Yes).is_empty());
        assert!(staged(&mut m, t(1), LogResult::Logged).is_empty());
        assert_eq!(m.decided(t(1)), None, "not decided before the last vote");
        let a = vote(&mut m, t(1), 2, Vote::Yes);
        assert_eq!(replies(&a), vec![Outcome::Committed]);
        assert_eq!(decides(&a), vec![(1, true), (2, true), (3, true)]);
        // TxnStatus hears "committed" from the machine while it delivers.
        assert_eq!(m.decided(t(1)), Some(true));
        // A failed send is retried until applied; then it is finished.
        assert_eq!(
            m.step(Event::ApplyFailed {
                txn: t(1),
                shard: ShardId(3)
            }),
            vec![Action::RetryDecide {
                txn: t(1),
                shard: ShardId(3),
                commit: true
            }]
        );
        for s in [1, 2] {
            assert!(m
                .step(Event::Applied {
                    txn: t(1),
                    shard: ShardId(s)
                })
                .is_empty());
        }
        assert_eq!(
            m.step(Event::Applied {
                txn: t(1),
                shard: ShardId(3)
            }),
            vec![Action::Finish { txn: t(1) }]
        );
        assert!(m.is_empty());
    }

    /// Every order of the three votes and the staging record: the client
    /// hears "committed" exactly once, and only after the last of them.
    #[test]
    fn committed_only_once_staging_and_every_prepare_are_durable() {
        let events: Vec<Event> = (1..=3)
            .map(|s| Event::Voted {
                txn: t(1),
                shard: ShardId(s),
                vote: Vote::Yes,
            })
            .chain([Event::Staged {
                txn: t(1),
                result: LogResult::Logged,
            }])
            .collect();
        let mut orders = 0;
        for perm in permutations(events.len()) {
            let mut m = Machine::new();
            commit(&mut m, t(1), &[1, 2, 3], &[1, 2, 3]);
            for (i, e) in perm.iter().enumerate() {
                let a = m.step(events[*e].clone());
                let last = i + 1 == perm.len();
                assert_eq!(
                    replies(&a),
                    if last {
                        vec![Outcome::Committed]
                    } else {
                        vec![]
                    },
                    "order {perm:?}, step {i}"
                );
            }
            orders += 1;
        }
        assert_eq!(orders, 24);
    }

    fn permutations(n: usize) -> Vec<Vec<usize>> {
        if n == 0 {
            return vec![vec![]];
        }
        let mut out = Vec::new();
        for p in permutations(n - 1) {
            for i in 0..=p.len() {
                let mut q = p.clone();
                q.insert(i, n - 1);
                out.push(q);
            }
        }
        out
    }

    /// A "no" in any position of any order: never committed, the abort is
    /// logged before anyone hears it, whatever else arrives.
    #[test]
    fn a_no_vote_after_staging_logs_the_abort_before_reporting_it() {
        let events: Vec<Event> = vec![
            Event::Voted {
                txn: t(1),
                shard: ShardId(1),
                vote: Vote::Yes,
            },
            Event::Voted {
                txn: t(1),
                shard: ShardId(2),
                vote: Vote::No(Abort::new(AbortKind::Wounded, "wounded")),
            },
            Event::Staged {
                txn: t(1),
                result: LogResult::Logged,
            },
        ];
        for perm in permutations(events.len()) {
            let mut m = Machine::new();
            commit(&mut m, t(1), &[1, 2], &[1, 2]);
            let mut log_aborts = 0;
            for e in &perm {
                let a = m.step(events[*e].clone());
                assert!(replies(&a).is_empty(), "{perm:?}: {a:?}");
                assert!(decides(&a).is_empty(), "{perm:?}: {a:?}");
                log_aborts += a
                    .iter()
                    .filter(|x| matches!(x, Action::LogAbort { .. }))
                    .count();
            }
            assert_eq!(log_aborts, 1, "{perm:?}");
            let a = m.step(Event::Logged {
                txn: t(1),
                result: LogResult::Logged,
            });
            assert_eq!(
                replies(&a),
                vec![Outcome::Aborted(Abort::new(AbortKind::Wounded, "wounded"))]
            );
            assert_eq!(decides(&a), vec![(1, false), (2, false)]);
            m.step(Event::Applied {
                txn: t(1),
                shard: ShardId(1),
            });
            assert!(
                m.step(Event::Applied {
                    txn: t(1),
                    shard: ShardId(2)
                })
                .is_empty(),
                "no Finish for an abort"
            );
            assert!(m.is_empty());
        }
    }

    #[test]
    fn an_abort_that_cannot_be_logged_is_unknown_and_a_logged_commit_wins() {
        let mut m = Machine::new();
        commit(&mut m, t(1), &[1, 2], &[1, 2]);
        vote(
            &mut m,
            t(1),
            1,
            Vote::No(Abort::new(AbortKind::Unavailable, "prepare not confirmed")),
        );
        let a = m.step(Event::Logged {
            txn: t(1),
            result: LogResult::Failed("lost leadership".into()),
        });
        assert!(matches!(replies(&a)[..], [Outcome::Unknown(_)]));
        assert!(decides(&a).is_empty(), "recovery decides, not this leader");
        assert!(m.is_empty());

        let mut m = Machine::new();
        commit(&mut m, t(2), &[1, 2], &[1, 2]);
        vote(&mut m, t(2), 1, Vote::ReadOnly);
        let a = m.step(Event::Logged {
            txn: t(2),
            result: LogResult::NotAppended("not leader".into()),
        });
        assert!(matches!(replies(&a)[..], [Outcome::Unknown(_)]));

        // Recovery recorded the commit first (the lost "yes" had landed).
        let mut m = Machine::new();
        commit(&mut m, t(3), &[1, 2], &[1, 2]);
        vote(
            &mut m,
            t(3),
            2,
            Vote::No(Abort::new(AbortKind::LockTimeout, "timeout")),
        );
        let a = m.step(Event::Logged {
            txn: t(3),
            result: LogResult::AlreadyDecided { commit: true },
        });
        assert_eq!(replies(&a), vec![Outcome::Committed]);
        assert_eq!(decides(&a), vec![(1, true), (2, true)]);
    }

    #[test]
    fn staging_outcomes() {
        // Unknown whether staged: unknown, and nothing sent.
        let mut m = Machine::new();
        commit(&mut m, t(1), &[1, 2], &[1, 2]);
        vote(&mut m, t(1), 1, Vote::Yes);
        vote(&mut m, t(1), 2, Vote::Yes);
        let a = staged(&mut m, t(1), LogResult::Failed("lost leadership".into()));
        assert_eq!(
            replies(&a),
            vec![Outcome::Unknown("lost leadership".into())]
        );
        assert!(decides(&a).is_empty());
        assert!(m.is_empty());
        // Certainly never staged: aborted, without logging.
        let mut m = Machine::new();
        commit(&mut m, t(2), &[1, 2], &[1, 2]);
        let a = staged(&mut m, t(2), LogResult::NotAppended("not leader".into()));
        assert!(matches!(replies(&a)[..], [Outcome::Aborted(_)]));
        assert_eq!(decides(&a), vec![(1, false), (2, false)]);
        // A presumed abort in the log wins over a late staging.
        let mut m = Machine::new();
        commit(&mut m, t(3), &[1, 2], &[1, 2]);
        vote(&mut m, t(3), 1, Vote::Yes);
        let a = staged(&mut m, t(3), LogResult::AlreadyDecided { commit: false });
        assert!(matches!(replies(&a)[..], [Outcome::Aborted(_)]));
        assert_eq!(decides(&a), vec![(1, false), (2, false)]);
        assert!(vote(&mut m, t(3), 2, Vote::Yes).is_empty());
    }

    /// Crash points of the coordinator. The machine is lost on a crash; what
    /// survives is the recovery log. Each case checks what the new leader
    /// does, given what the log holds.
    #[test]
    fn crash_before_the_staging_record_leaves_nothing_to_recover() {
        let mut m = Machine::new();
        commit(&mut m, t(1), &[1, 2], &[1, 2]);
        vote(&mut m, t(1), 1, Vote::Yes);
        vote(&mut m, t(1), 2, Vote::Yes);
        // Crash here, the Stage append lost: the new leader finds nothing.
        let fresh = recovered_with_nothing_in_the_log();
        assert!(!fresh.in_flight(t(1)), "TxnStatus will presume abort");
    }

    #[test]
    fn crash_after_the_staging_record_resolves_from_the_shards() {
        let recovered = || {
            let mut fresh = Machine::new();
            let a = fresh.step(Event::Recovered {
                unfinished: vec![],
                staged: vec![(t(1), shards(&[1, 2]))],
            });
            assert_eq!(
                a,
                vec![Action::Resolve {
                    txn: t(1),
                    shards: shards(&[1, 2])
                }]
            );
            assert!(fresh.in_flight(t(1)), "TxnStatus waits for recovery");
            fresh
        };
        // Both prepared (crash after the last vote, before the reply or
        // after it): committed.
        let mut m = recovered();
        let a = m.step(Event::Resolved {
            txn: t(1),
            commit: Some(true),
        });
        assert_eq!(decides(&a), vec![(1, true), (2, true)]);
        assert!(replies(&a).is_empty(), "the client is gone");
        m.step(Event::Applied {
            txn: t(1),
            shard: ShardId(1),
        });
        assert_eq!(
            m.step(Event::Applied {
                txn: t(1),
                shard: ShardId(2)
            }),
            vec![Action::Finish { txn: t(1) }]
        );
        // A shard had not prepared (crash before its prepare landed): it
        // was fenced, so aborted.
        let mut m = recovered();
        let a = m.step(Event::Resolved {
            txn: t(1),
            commit: Some(false),
        });
        assert_eq!(decides(&a), vec![(1, false), (2, false)]);
        // A shard cannot be reached: ask again later.
        let mut m = recovered();
        assert_eq!(
            m.step(Event::Resolved {
                txn: t(1),
                commit: None
            }),
            vec![Action::RetryResolve {
                txn: t(1),
                shards: shards(&[1, 2])
            }]
        );
        assert!(m.in_flight(t(1)));
    }

    /// Crash points of a single writer with read-only shards: before the
    /// writer's one-phase commit is sent (the readers validated and let
    /// their locks go) and after it. Nothing of the transaction is in the
    /// recovery log either way, so the new leader has nothing to do, and
    /// the writer's open transaction is settled by `TxnStatus` (asked by
    /// the shard when its lease runs out, or by the client): it fences the
    /// shards, so the one-phase commit cannot land after an abort, and
    /// decides from what they recorded.
    #[test]
    fn crash_while_validating_is_settled_by_the_shards_records() {
        use crate::inquiry::{verdict, ShardState, Verdict};
        let mut m = Machine::new();
        commit(&mut m, t(1), &[1, 2], &[2]);
        let a = vote(&mut m, t(1), 1, Vote::ReadOnly);
        assert_eq!(
            a,
            vec![Action::CommitOnePhase {
                txn: t(1),
                shard: ShardId(2)
            }]
        );
        // Crash here (the action sent or not): the log holds nothing.
        let mut fresh = recovered_with_nothing_in_the_log();
        assert!(!fresh.in_flight(t(1)), "TxnStatus asks the shards");
        let answers = |writer| {
            vec![
                (ShardId(1), Ok(ShardState::Aborted)),
                (ShardId(2), Ok(writer)),
            ]
        };
        // Before: the fence records an abort at the writer too.
        assert!(matches!(
            verdict(&answers(ShardState::Aborted), true),
            Verdict::Abort(_)
        ));
        // After: the writer committed, and that commit stands.
        assert_eq!(
            verdict(&answers(ShardState::Committed), true),
            Verdict::Committed
        );
        // The old leader's late answer changes nothing in the new one.
        assert!(fresh
            .step(Event::OnePhaseDone {
                txn: t(1),
                outcome: Outcome::Committed
            })
            .is_empty());
    }

    /// Crash point: the abort of a staged transaction was logged, and the
    /// coordinator died before its decisions reached the shards (the log
    /// side is `log.rs`'s `crash_after_the_abort_record_leaves_the_shards_to_read_it`).
    #[test]
    fn crash_after_the_abort_record_sends_nothing_on_recovery() {
        let mut m = Machine::new();
        commit(&mut m, t(1), &[1, 2], &[1, 2]);
        staged(&mut m, t(1), LogResult::Logged);
        vote(&mut m, t(1), 1, Vote::Yes);
        let a = vote(
            &mut m,
            t(1),
            2,
            Vote::No(Abort::new(AbortKind::Wounded, "wounded")),
        );
        assert_eq!(a, vec![Action::LogAbort { txn: t(1) }]);
        // Crash before the append ends: the log may or may not hold the
        // abort; if not, the staging record is there and recovery
        // resolves it (`crash_after_the_staging_record_resolves_from_the_shards`).
        // Crash after it: no staging record and no unfinished commit.
        let fresh = recovered_with_nothing_in_the_log();
        assert!(!fresh.in_flight(t(1)), "TxnStatus reads the abort record");
        // The old machine, had it lived, would have sent the aborts.
        let a = m.step(Event::Logged {
            txn: t(1),
            result: LogResult::Logged,
        });
        assert_eq!(decides(&a), vec![(1, false), (2, false)]);
    }

    #[test]
    fn crash_after_the_decision_record_finishes_the_commit() {
        let mut fresh = Machine::new();
        let a = fresh.step(Event::Recovered {
            unfinished: vec![(t(1), shards(&[1, 2]))],
            staged: vec![],
        });
        assert_eq!(decides(&a), vec![(1, true), (2, true)]);
        assert!(fresh.in_flight(t(1)));
        fresh.step(Event::Applied {
            txn: t(1),
            shard: ShardId(1),
        });
        assert_eq!(
            fresh.step(Event::Applied {
                txn: t(1),
                shard: ShardId(2)
            }),
            vec![Action::Finish { txn: t(1) }]
        );
    }

    #[test]
    fn crash_during_commit_apply_resends_to_everyone_idempotently() {
        // Shard 1 applied, then the coordinator crashed before shard 2 did
        // and before Finish: recovery resolves from the shards again (one
        // reports committed, the other prepared: committed) and resends to
        // both; shard 1 answers the repeated commit with the same success.
        let mut fresh = Machine::new();
        fresh.step(Event::Recovered {
            unfinished: vec![],
            staged: vec![(t(1), shards(&[1, 2]))],
        });
        let a = fresh.step(Event::Resolved {
            txn: t(1),
            commit: Some(true),
        });
        assert_eq!(a.len(), 2);
        fresh.step(Event::Applied {
            txn: t(1),
            shard: ShardId(1),
        });
        assert_eq!(
            fresh.step(Event::Applied {
                txn: t(1),
                shard: ShardId(2)
            }),
            vec![Action::Finish { txn: t(1) }]
        );
    }

    #[test]
    fn duplicate_commit_requests_and_stray_events_are_ignored() {
        let mut m = Machine::new();
        commit(&mut m, t(1), &[1, 2], &[1, 2]);
        assert!(commit(&mut m, t(1), &[1, 2], &[1, 2]).is_empty());
        assert!(vote(&mut m, t(9), 1, Vote::Yes).is_empty());
        assert!(vote(&mut m, t(1), 7, Vote::Yes).is_empty());
        assert!(vote(&mut m, t(1), 1, Vote::Yes).is_empty());
        assert!(
            vote(&mut m, t(1), 1, Vote::Yes).is_empty(),
            "a repeated vote"
        );
        assert!(m
            .step(Event::Applied {
                txn: t(1),
                shard: ShardId(1)
            })
            .is_empty());
        assert!(m
            .step(Event::Logged {
                txn: t(1),
                result: LogResult::Logged
            })
            .is_empty());
        assert!(m
            .step(Event::Resolved {
                txn: t(1),
                commit: Some(true)
            })
            .is_empty());
        assert!(m.in_flight(t(1)));
        // Recovery does not take over a transaction the machine has.
        assert!(m
            .step(Event::Recovered {
                unfinished: vec![(t(1), shards(&[1, 2]))],
                staged: vec![(t(1), shards(&[1, 2]))],
            })
            .is_empty());
    }
}
