//! Two-phase commit as a pure state machine: `Event -> Vec<Action>`.
//!
//! The machine never performs I/O; the coordinator's owner task executes
//! its actions (RPCs to participants, appends to the recovery log, replies
//! to clients) and feeds their results back as events. Every step is thus
//! reproducible in a unit test, including a crash at any point: a crash is
//! simply the loss of the machine, after which [`Event::Recovered`] rebuilds
//! it from the recovery log.
//!
//! Protocol (presumed abort):
//! 1. One shard touched: commit in one phase at that shard.
//! 2. Otherwise ask every shard to prepare. Any "no" (or failure) aborts:
//!    the client is told at once and every shard is told to abort. Nothing
//!    is logged for an abort: no record means aborted.
//! 3. All "yes" (read-only voters drop out): append the commit decision to
//!    the recovery log; only once it is durable is the client told
//!    "committed", then every yes-voter is told to commit, until each acks.
//! 4. When all have acked, log that the transaction is finished.

use std::collections::{BTreeMap, BTreeSet};

use pact_common::{ShardId, TxnId};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Vote {
    Yes,
    ReadOnly,
    No(String),
}

/// What the client is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Committed,
    Aborted(String),
    /// The decision may or may not have been made durable; TxnStatus tells later.
    Unknown(String),
    /// Not decided, and alive here: open, or its commit in flight
    /// (reported by TxnStatus only, never as a commit's outcome).
    Open(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogResult {
    /// The decision is durable.
    Logged,
    /// The log already held the other decision for this transaction (for
    /// example a presumed abort recorded by TxnStatus); it stands.
    AlreadyDecided { commit: bool },
    /// The append failed or its fate is unknown (lost leadership).
    Failed(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The client asked to commit; `shards` are all shards it touched.
    Commit {
        txn: TxnId,
        shards: BTreeSet<ShardId>,
    },
    /// Result of a one-phase commit at the only shard.
    OnePhaseDone {
        txn: TxnId,
        outcome: Outcome,
    },
    Voted {
        txn: TxnId,
        shard: ShardId,
        vote: Vote,
    },
    Logged {
        txn: TxnId,
        result: LogResult,
    },
    /// A participant applied the decision.
    Applied {
        txn: TxnId,
        shard: ShardId,
    },
    /// Sending the decision failed; it must be sent again.
    ApplyFailed {
        txn: TxnId,
        shard: ShardId,
    },
    /// This coordinator became leader: commit decisions in the recovery log
    /// not yet marked finished.
    Recovered {
        unfinished: Vec<(TxnId, BTreeSet<ShardId>)>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    CommitOnePhase {
        txn: TxnId,
        shard: ShardId,
    },
    Prepare {
        txn: TxnId,
        shard: ShardId,
    },
    Log {
        txn: TxnId,
        shards: BTreeSet<ShardId>,
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
    /// Every participant applied the commit: record it so recovery skips it.
    Finish {
        txn: TxnId,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the only shard's one-phase commit.
    Single,
    Preparing {
        waiting: BTreeSet<ShardId>,
        yes: BTreeSet<ShardId>,
    },
    Logging {
        yes: BTreeSet<ShardId>,
    },
    Deciding {
        commit: bool,
        pending: BTreeSet<ShardId>,
    },
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

    pub fn len(&self) -> usize {
        self.txns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.txns.is_empty()
    }

    pub fn step(&mut self, ev: Event) -> Vec<Action> {
        match ev {
            Event::Commit { txn, shards } => {
                if self.txns.contains_key(&txn) {
                    // A duplicate commit request: the first one will be answered.
                    return Vec::new();
                }
                match shards.len() {
                    0 => vec![Action::Reply {
                        txn,
                        outcome: Outcome::Committed,
                    }],
                    1 => {
                        let shard = *shards.iter().next().unwrap_or(&ShardId(0));
                        self.txns.insert(txn, Phase::Single);
                        vec![Action::CommitOnePhase { txn, shard }]
                    }
                    _ => {
                        let acts = shards
                            .iter()
                            .map(|s| Action::Prepare { txn, shard: *s })
                            .collect();
                        self.txns.insert(
                            txn,
                            Phase::Preparing {
                                waiting: shards,
                                yes: BTreeSet::new(),
                            },
                        );
                        acts
                    }
                }
            }
            Event::OnePhaseDone { txn, outcome } => match self.txns.get(&txn) {
                Some(Phase::Single) => {
                    self.txns.remove(&txn);
                    vec![Action::Reply { txn, outcome }]
                }
                _ => Vec::new(),
            },
            Event::Voted { txn, shard, vote } => self.voted(txn, shard, vote),
            Event::Logged { txn, result } => {
                let Some(Phase::Logging { yes }) = self.txns.get(&txn).cloned() else {
                    return Vec::new();
                };
                match result {
                    LogResult::Logged | LogResult::AlreadyDecided { commit: true } => {
                        let mut acts = vec![Action::Reply {
                            txn,
                            outcome: Outcome::Committed,
                        }];
                        acts.extend(self.decide(txn, yes, true));
                        acts
                    }
                    LogResult::AlreadyDecided { commit: false } => {
                        let mut acts = vec![Action::Reply {
                            txn,
                            outcome: Outcome::Aborted(
                                "aborted by recovery before the commit decision".into(),
                            ),
                        }];
                        acts.extend(self.decide(txn, yes, false));
                        acts
                    }
                    LogResult::Failed(reason) => {
                        // The record may still become durable through a new
                        // leader, which will then finish the commit; or it
                        // never will, and the participants learn "abort" from
                        // TxnStatus. Either way this leader must stop here.
                        self.txns.remove(&txn);
                        vec![Action::Reply {
                            txn,
                            outcome: Outcome::Unknown(reason),
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
            Event::Recovered { unfinished } => {
                let mut acts = Vec::new();
                for (txn, shards) in unfinished {
                    if self.txns.contains_key(&txn) {
                        continue;
                    }
                    acts.extend(self.decide(txn, shards, true));
                }
                acts
            }
        }
    }

    fn voted(&mut self, txn: TxnId, shard: ShardId, vote: Vote) -> Vec<Action> {
        let Some(Phase::Preparing { waiting, yes }) = self.txns.get_mut(&txn) else {
            return Vec::new();
        };
        if !waiting.remove(&shard) {
            return Vec::new();
        }
        match vote {
            Vote::Yes => {
                yes.insert(shard);
            }
            Vote::ReadOnly => {}
            Vote::No(reason) => {
                // Abort everywhere, including shards that have not voted
                // yet: their prepare may still land, and the abort record
                // it meets there makes it fail.
                let mut all = yes.clone();
                all.extend(waiting.iter().copied());
                all.insert(shard);
                let mut acts = vec![Action::Reply {
                    txn,
                    outcome: Outcome::Aborted(reason),
                }];
                acts.extend(self.decide(txn, all, false));
                return acts;
            }
        }
        if !waiting.is_empty() {
            return Vec::new();
        }
        let yes = std::mem::take(yes);
        if yes.is_empty() {
            // Read-only everywhere: nothing to decide.
            self.txns.remove(&txn);
            return vec![Action::Reply {
                txn,
                outcome: Outcome::Committed,
            }];
        }
        self.txns.insert(txn, Phase::Logging { yes: yes.clone() });
        vec![Action::Log { txn, shards: yes }]
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

    #[test]
    fn single_shard_commits_in_one_phase() {
        let mut m = Machine::new();
        let a = m.step(Event::Commit {
            txn: t(1),
            shards: shards(&[2]),
        });
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
        let a = m.step(Event::Commit {
            txn: t(2),
            shards: shards(&[]),
        });
        assert_eq!(replies(&a), vec![Outcome::Committed]);
    }

    #[test]
    fn client_hears_committed_only_after_the_decision_is_logged() {
        let mut m = Machine::new();
        let a = m.step(Event::Commit {
            txn: t(1),
            shards: shards(&[1, 2, 3]),
        });
        assert_eq!(a.len(), 3);
        assert!(a.iter().all(|x| matches!(x, Action::Prepare { .. })));
        assert!(m
            .step(Event::Voted {
                txn: t(1),
                shard: ShardId(1),
                vote: Vote::Yes
            })
            .is_empty());
        assert!(m
            .step(Event::Voted {
                txn: t(1),
                shard: ShardId(2),
                vote: Vote::ReadOnly
            })
            .is_empty());
        let a = m.step(Event::Voted {
            txn: t(1),
            shard: ShardId(3),
            vote: Vote::Yes,
        });
        // Read-only shard 2 drops out of phase two.
        assert_eq!(
            a,
            vec![Action::Log {
                txn: t(1),
                shards: shards(&[1, 3])
            }]
        );
        assert!(
            replies(&a).is_empty(),
            "no reply before the decision is durable"
        );
        let a = m.step(Event::Logged {
            txn: t(1),
            result: LogResult::Logged,
        });
        assert_eq!(replies(&a), vec![Outcome::Committed]);
        assert!(a.contains(&Action::Decide {
            txn: t(1),
            shard: ShardId(1),
            commit: true
        }));
        assert!(a.contains(&Action::Decide {
            txn: t(1),
            shard: ShardId(3),
            commit: true
        }));
        // A failed send is retried until applied; then the txn is finished.
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
        assert!(m
            .step(Event::Applied {
                txn: t(1),
                shard: ShardId(1)
            })
            .is_empty());
        assert_eq!(
            m.step(Event::Applied {
                txn: t(1),
                shard: ShardId(3)
            }),
            vec![Action::Finish { txn: t(1) }]
        );
        assert!(m.is_empty());
    }

    #[test]
    fn any_no_vote_aborts_everywhere_at_once() {
        let mut m = Machine::new();
        m.step(Event::Commit {
            txn: t(1),
            shards: shards(&[1, 2, 3]),
        });
        m.step(Event::Voted {
            txn: t(1),
            shard: ShardId(1),
            vote: Vote::Yes,
        });
        let a = m.step(Event::Voted {
            txn: t(1),
            shard: ShardId(2),
            vote: Vote::No("wounded".into()),
        });
        assert_eq!(replies(&a), vec![Outcome::Aborted("wounded".into())]);
        for s in [1, 2, 3] {
            assert!(a.contains(&Action::Decide {
                txn: t(1),
                shard: ShardId(s),
                commit: false
            }));
        }
        assert!(
            !a.iter().any(|x| matches!(x, Action::Log { .. })),
            "aborts are presumed, not logged"
        );
        // A late vote changes nothing.
        assert!(m
            .step(Event::Voted {
                txn: t(1),
                shard: ShardId(3),
                vote: Vote::Yes
            })
            .is_empty());
        for s in [1, 2, 3] {
            m.step(Event::Applied {
                txn: t(1),
                shard: ShardId(s),
            });
        }
        assert!(m.is_empty());
    }

    /// Crash points of the coordinator. The machine is lost on a crash; what
    /// survives is the recovery log. Each case checks what the new leader
    /// does, given what the log holds.
    #[test]
    fn crash_before_the_decision_record_leaves_nothing_to_recover() {
        let mut m = Machine::new();
        m.step(Event::Commit {
            txn: t(1),
            shards: shards(&[1, 2]),
        });
        m.step(Event::Voted {
            txn: t(1),
            shard: ShardId(1),
            vote: Vote::Yes,
        });
        m.step(Event::Voted {
            txn: t(1),
            shard: ShardId(2),
            vote: Vote::Yes,
        });
        // Crash here: the Log action never ran. The new leader finds nothing.
        let mut fresh = Machine::new();
        assert!(fresh
            .step(Event::Recovered { unfinished: vec![] })
            .is_empty());
        assert!(!fresh.in_flight(t(1)), "TxnStatus will presume abort");
    }

    #[test]
    fn crash_after_the_decision_record_finishes_the_commit() {
        let mut fresh = Machine::new();
        let a = fresh.step(Event::Recovered {
            unfinished: vec![(t(1), shards(&[1, 2]))],
        });
        assert_eq!(
            a,
            vec![
                Action::Decide {
                    txn: t(1),
                    shard: ShardId(1),
                    commit: true
                },
                Action::Decide {
                    txn: t(1),
                    shard: ShardId(2),
                    commit: true
                },
            ]
        );
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
        // and before Finish: recovery resends to both; shard 1 answers the
        // repeated commit with the same success.
        let mut fresh = Machine::new();
        let a = fresh.step(Event::Recovered {
            unfinished: vec![(t(1), shards(&[1, 2]))],
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
    fn failed_log_append_is_reported_unknown_not_committed() {
        let mut m = Machine::new();
        m.step(Event::Commit {
            txn: t(1),
            shards: shards(&[1, 2]),
        });
        m.step(Event::Voted {
            txn: t(1),
            shard: ShardId(1),
            vote: Vote::Yes,
        });
        m.step(Event::Voted {
            txn: t(1),
            shard: ShardId(2),
            vote: Vote::Yes,
        });
        let a = m.step(Event::Logged {
            txn: t(1),
            result: LogResult::Failed("lost leadership".into()),
        });
        assert_eq!(
            replies(&a),
            vec![Outcome::Unknown("lost leadership".into())]
        );
        assert!(!a.iter().any(|x| matches!(x, Action::Decide { .. })));
        assert!(m.is_empty());
    }

    #[test]
    fn a_presumed_abort_in_the_log_wins_over_a_late_commit() {
        let mut m = Machine::new();
        m.step(Event::Commit {
            txn: t(1),
            shards: shards(&[1, 2]),
        });
        m.step(Event::Voted {
            txn: t(1),
            shard: ShardId(1),
            vote: Vote::Yes,
        });
        m.step(Event::Voted {
            txn: t(1),
            shard: ShardId(2),
            vote: Vote::Yes,
        });
        let a = m.step(Event::Logged {
            txn: t(1),
            result: LogResult::AlreadyDecided { commit: false },
        });
        assert!(matches!(replies(&a)[..], [Outcome::Aborted(_)]));
        assert!(a.contains(&Action::Decide {
            txn: t(1),
            shard: ShardId(1),
            commit: false
        }));
    }

    #[test]
    fn duplicate_commit_requests_and_stray_events_are_ignored() {
        let mut m = Machine::new();
        m.step(Event::Commit {
            txn: t(1),
            shards: shards(&[1, 2]),
        });
        assert!(m
            .step(Event::Commit {
                txn: t(1),
                shards: shards(&[1, 2])
            })
            .is_empty());
        assert!(m
            .step(Event::Voted {
                txn: t(9),
                shard: ShardId(1),
                vote: Vote::Yes
            })
            .is_empty());
        assert!(m
            .step(Event::Voted {
                txn: t(1),
                shard: ShardId(7),
                vote: Vote::Yes
            })
            .is_empty());
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
    }
}
