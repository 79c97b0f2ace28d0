//! The recovery log's state machine: commit decisions, first one wins.
//!
//! Layout in the group's state: `x` ++ txn id -> decision record. A record
//! with `commit = false` is written only by TxnStatus, to make a presumed
//! abort final before it is reported; commits are written by 2PC, and by
//! the coordinator for one-phase commits (after the shard applied them).
//! Because the first decision for a transaction wins, a commit can never
//! follow a reported abort, nor an abort a logged commit.
//!
//! `r` -> the timestamp reservation (`crate::stamps`): the leader issues
//! transaction timestamps only below it; it never decreases.
//!
//! `s` ++ txn id -> staging record of a parallel commit (the shards it
//! spans): the transaction is committed exactly when this record and
//! every listed shard's prepare record are durable. It exists only while
//! no decision does: a decision for the transaction removes it in the
//! same batch, and staging a decided transaction writes nothing.
//!
//! `u` ++ txn id -> nothing: a commit decision some shard has still to
//! apply (not finished). A new leader resends exactly these, so it reads
//! them, and the staging records, not the whole history.
//!
//! `g` -> the group's record horizon (`crate::gc`): finished decisions of
//! transactions older than it are deleted (`Gc`), TxnStatus calls older
//! transactions without a record "expired", and no new staging record or
//! decision is written for them (a commit some shard still has to apply
//! excepted; none is expected there, see `crate::gc`).

use std::sync::Arc;

use pact_common::{ShardId, Timestamp, TxnId};
use pact_raft::{codec, Applied, Apply, Lookup, StateView, Writes};
use serde::{Deserialize, Serialize};

pub const DECISION_PREFIX: u8 = b'x';
pub const RESERVATION_KEY: &[u8] = b"r";
pub const STAGING_PREFIX: u8 = b's';
pub const UNFINISHED_PREFIX: u8 = b'u';
pub const HORIZON_KEY: &[u8] = b"g";

/// A parallel commit's staging record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staging {
    /// Every shard that must hold a prepare record for the transaction to
    /// be committed.
    pub shards: Vec<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub commit: bool,
    /// Shards that must apply it (the yes-voters).
    pub shards: Vec<u64>,
    /// Every shard applied it; recovery may skip it.
    pub finished: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogCommand {
    Decide {
        txn: TxnId,
        commit: bool,
        shards: Vec<u64>,
    },
    Finish {
        txn: TxnId,
    },
    /// Reserve transaction timestamps below `until` (kept if already
    /// higher). Appended last: older log entries keep their encoding.
    Reserve {
        until: Timestamp,
    },
    /// Stage a parallel commit over `shards` (nothing if decided).
    /// Appended last: older log entries keep their encoding.
    Stage {
        txn: TxnId,
        shards: Vec<u64>,
    },
    /// Several commands in one entry, applied in order (each sees the
    /// ones before it): the coordinator's off-path records (one-phase
    /// commits, finished commits) batched, so a busy coordinator appends
    /// one entry per round instead of one per transaction. Not nested.
    Many(Vec<LogCommand>),
    /// Raise the record horizon to `below` (kept if already higher) and
    /// delete the finished decisions of `txns` that it covers (the leader
    /// lists them, so every replica deletes the same records). Appended
    /// last.
    Gc {
        below: Timestamp,
        txns: Vec<TxnId>,
    },
    /// [`LogCommand::Stage`] by the leader of `term`, which is the only
    /// one proposed now: it lands only in an entry of that term. A leader
    /// that lost its term and won another must not stage in the new one
    /// what it decided to stage in the old: the new term's TxnStatus may
    /// already have called the transaction aborted (it found no staging
    /// record once the old term's entries were applied). Appended last.
    StageInTerm {
        txn: TxnId,
        shards: Vec<u64>,
        term: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogReply {
    /// The decision in the log now (the requested one, or an earlier one).
    Decided {
        commit: bool,
    },
    Finished,
    NotFound,
    /// The reservation in the log now.
    Reserved {
        until: Timestamp,
    },
    Staged,
    /// The replies of a [`LogCommand::Many`], in order.
    Many(Vec<LogReply>),
    /// The record horizon now, after a [`LogCommand::Gc`].
    Collected {
        horizon: Timestamp,
    },
}

/// A value for the recovery log (`pact_raft::codec`); an error, never
/// empty bytes, if it cannot be encoded.
fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
    codec::encode(v).map_err(|e| e.to_string())
}

pub fn decode<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<T, String> {
    codec::decode(b, "recovery log value").map_err(|e| e.to_string())
}

impl LogCommand {
    /// The command as proposed to the recovery log.
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        encode(self)
    }
}

pub fn decision_key(txn: TxnId) -> Vec<u8> {
    txn.key(DECISION_PREFIX)
}

pub fn staging_key(txn: TxnId) -> Vec<u8> {
    txn.key(STAGING_PREFIX)
}

pub fn unfinished_key(txn: TxnId) -> Vec<u8> {
    txn.key(UNFINISHED_PREFIX)
}

/// The stored record horizon (`HORIZON_KEY`), 0 if never set.
pub fn horizon(v: Option<&[u8]>) -> Result<Timestamp, String> {
    v.map_or(Ok(Timestamp(0)), decode)
}

pub fn staged_shards(s: &Staging) -> std::collections::BTreeSet<ShardId> {
    s.shards.iter().map(|s| ShardId(*s)).collect()
}

/// The stored reservation (`RESERVATION_KEY`), if any.
pub fn reservation(v: Option<&[u8]>) -> Result<Timestamp, String> {
    v.map_or(Ok(Timestamp(0)), decode)
}

pub fn shards_of(d: &Decision) -> std::collections::BTreeSet<ShardId> {
    d.shards.iter().map(|s| ShardId(*s)).collect()
}

/// The oldest staging record's transaction timestamp, if any (a scan of
/// the group's state, which `Gc` needs and nothing else does).
pub type OldestStaged<'a> = &'a dyn Fn() -> Result<Option<Timestamp>, String>;

/// The effect of a log command, in an entry of `term`, on the state seen
/// through `get` (and, for `Gc`, `staged`). Pure.
pub fn effect(
    get: Lookup<'_>,
    staged: OldestStaged<'_>,
    term: u64,
    cmd: &LogCommand,
) -> Result<(Writes, LogReply), String> {
    let LogCommand::Many(cmds) = cmd else {
        return effect_one(get, staged, term, cmd);
    };
    // Each command sees the writes of those before it in the batch.
    let mut overlay: std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>> = Default::default();
    let mut replies = Vec::with_capacity(cmds.len());
    for c in cmds {
        if matches!(c, LogCommand::Many(_)) {
            return Err("nested batch of log commands".into());
        }
        let view = |k: &[u8]| match overlay.get(k) {
            Some(v) => Ok(v.clone()),
            None => get(k),
        };
        // `Gc` is never batched; were it, a staging record earlier in the
        // batch would be missed by `staged`, so refuse.
        if matches!(c, LogCommand::Gc { .. }) {
            return Err("garbage collection inside a batch of log commands".into());
        }
        let (writes, reply) = effect_one(&view, staged, term, c)?;
        overlay.extend(writes);
        replies.push(reply);
    }
    Ok((overlay.into_iter().collect(), LogReply::Many(replies)))
}

fn effect_one(
    get: Lookup<'_>,
    staged: OldestStaged<'_>,
    term: u64,
    cmd: &LogCommand,
) -> Result<(Writes, LogReply), String> {
    let horizon_now = || -> Result<Timestamp, String> {
        horizon(get(HORIZON_KEY).map_err(|e| e.to_string())?.as_deref())
    };
    let read = |txn: TxnId| -> Result<Option<Decision>, String> {
        match get(&decision_key(txn)).map_err(|e| e.to_string())? {
            Some(b) => decode(&b).map(Some),
            None => Ok(None),
        }
    };
    Ok(match cmd {
        LogCommand::Decide {
            txn,
            commit,
            shards,
        } => match read(*txn)? {
            Some(d) => (Vec::new(), LogReply::Decided { commit: d.commit }),
            // Older than the horizon: nobody may ask for the record (the
            // answer there is the shards' or "expired"), so it would only
            // wait to be collected. A commit with shards to tell is kept,
            // as a new leader must resend it.
            None if txn.ts < horizon_now()? && (!*commit || shards.is_empty()) => (
                // A staging record cannot be below the horizon (`Gc`
                // stops short of it); were one there, the decision ends it.
                vec![(staging_key(*txn), None)],
                LogReply::Decided { commit: *commit },
            ),
            None => {
                // Nothing to resend for an abort, or for a commit with
                // no shards left to tell (a recorded one-phase commit).
                let finished = !*commit || shards.is_empty();
                let d = Decision {
                    commit: *commit,
                    shards: shards.clone(),
                    finished,
                };
                let mut w = vec![
                    (decision_key(*txn), Some(encode(&d)?)),
                    (staging_key(*txn), None),
                ];
                if !finished {
                    w.push((unfinished_key(*txn), Some(Vec::new())));
                }
                (w, LogReply::Decided { commit: *commit })
            }
        },
        LogCommand::Finish { txn } => match read(*txn)? {
            Some(mut d) => {
                d.finished = true;
                (
                    vec![
                        (decision_key(*txn), Some(encode(&d)?)),
                        (unfinished_key(*txn), None),
                    ],
                    LogReply::Finished,
                )
            }
            // A parallel commit whose every shard applied it: its staging
            // record becomes the finished commit.
            None if get(&staging_key(*txn))
                .map_err(|e| e.to_string())?
                .is_some() =>
            {
                let d = Decision {
                    commit: true,
                    shards: Vec::new(),
                    finished: true,
                };
                (
                    vec![
                        (decision_key(*txn), Some(encode(&d)?)),
                        (staging_key(*txn), None),
                    ],
                    LogReply::Finished,
                )
            }
            None => (Vec::new(), LogReply::NotFound),
        },
        LogCommand::Many(_) => return Err("nested batch of log commands".into()),
        // Proposed in another term: never staged, so aborted (the machine
        // that proposed it belongs to a term that is over).
        LogCommand::StageInTerm { term: t, .. } if *t != term => {
            (Vec::new(), LogReply::Decided { commit: false })
        }
        LogCommand::Stage { txn, shards } | LogCommand::StageInTerm { txn, shards, .. } => {
            match read(*txn)? {
                Some(d) => (Vec::new(), LogReply::Decided { commit: d.commit }),
                // The horizon passed it: recovery would never see this
                // staging record as live (none is expected, `crate::gc`), so
                // it is aborted instead, which needs no record.
                None if txn.ts < horizon_now()? => {
                    (Vec::new(), LogReply::Decided { commit: false })
                }
                None => {
                    let s = Staging {
                        shards: shards.clone(),
                    };
                    (
                        vec![(staging_key(*txn), Some(encode(&s)?))],
                        LogReply::Staged,
                    )
                }
            }
        }
        LogCommand::Gc { below, txns } => {
            // Never past a staging record, even one the leader did not see
            // when it computed `below` (a Stage whose append it had given
            // up on may still have committed before this entry).
            let target = match staged()? {
                Some(s) => (*below).min(s),
                None => *below,
            };
            let was = horizon_now()?;
            let h = was.max(target);
            let mut w = Vec::new();
            if h > was {
                w.push((HORIZON_KEY.to_vec(), Some(encode(&h)?)));
            }
            let mut gone = std::collections::BTreeSet::new();
            for t in txns.iter().filter(|t| t.ts < h) {
                // Only finished decisions: a commit some shard has still to
                // apply is resent by the next leader, so it stays.
                if read(*t)?.is_some_and(|d| d.finished) {
                    gone.insert(decision_key(*t));
                }
            }
            w.extend(gone.into_iter().map(|k| (k, None)));
            (w, LogReply::Collected { horizon: h })
        }
        LogCommand::Reserve { until } => {
            let now = reservation(get(RESERVATION_KEY).map_err(|e| e.to_string())?.as_deref())?;
            if *until > now {
                (
                    vec![(RESERVATION_KEY.to_vec(), Some(encode(until)?))],
                    LogReply::Reserved { until: *until },
                )
            } else {
                (Vec::new(), LogReply::Reserved { until: now })
            }
        }
    })
}

pub struct LogApp;

impl Apply for LogApp {
    fn apply(
        &self,
        state: &StateView<'_>,
        _index: u64,
        term: u64,
        command: &[u8],
    ) -> Result<Applied, String> {
        let cmd: LogCommand = decode(command)?;
        let staged = || -> Result<Option<Timestamp>, String> {
            let end = [STAGING_PREFIX + 1];
            let first = state
                .scan(&[STAGING_PREFIX], Some(&end), usize::MAX)
                .map_err(|e| e.to_string())?;
            Ok(first
                .iter()
                .filter_map(|(k, _)| TxnId::from_key(k))
                .map(|t| t.ts)
                .min())
        };
        let (writes, reply) = effect(&|k| state.get(k), &staged, term, &cmd)?;
        // A reply that cannot be encoded stops the replica rather than
        // answering the proposer with nothing.
        Ok(Applied {
            writes,
            reply: encode(&reply)?,
        })
    }
}

pub fn app() -> Arc<dyn Apply> {
    Arc::new(LogApp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pact_common::Timestamp;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    fn t(n: u64) -> TxnId {
        TxnId {
            ts: Timestamp(n),
            node: 4,
            group: 1,
        }
    }

    struct Mem(RefCell<BTreeMap<Vec<u8>, Vec<u8>>>);

    impl Mem {
        fn run(&self, cmd: LogCommand) -> LogReply {
            let snap = self.0.borrow().clone();
            let staged = || {
                Ok(snap
                    .keys()
                    .filter(|k| k.first() == Some(&STAGING_PREFIX))
                    .filter_map(|k| TxnId::from_key(k))
                    .map(|t| t.ts)
                    .min())
            };
            let (w, r) = effect(&|k| Ok(snap.get(k).cloned()), &staged, 1, &cmd).unwrap();
            for (k, v) in w {
                match v {
                    Some(v) => self.0.borrow_mut().insert(k, v),
                    None => self.0.borrow_mut().remove(&k),
                };
            }
            r
        }
    }

    /// A staging record proposed by the leader of one term never lands in
    /// an entry of another (the proposer lost its term meanwhile).
    #[test]
    fn a_stage_lands_only_in_its_proposers_term() {
        let m: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let get = |k: &[u8]| Ok(m.get(k).cloned());
        let stage = LogCommand::StageInTerm {
            txn: t(1),
            shards: vec![1, 2],
            term: 3,
        };
        let (w, r) = effect(&get, &|| Ok(None), 4, &stage).unwrap();
        assert!(w.is_empty(), "nothing staged in term 4");
        assert_eq!(r, LogReply::Decided { commit: false });
        let (w, r) = effect(&get, &|| Ok(None), 3, &stage).unwrap();
        assert_eq!(r, LogReply::Staged);
        assert_eq!(
            w,
            vec![(
                staging_key(t(1)),
                Some(encode(&Staging { shards: vec![1, 2] }).unwrap())
            )]
        );
    }

    #[test]
    fn first_decision_wins_and_is_idempotent() {
        let m = Mem(RefCell::new(BTreeMap::new()));
        let commit = LogCommand::Decide {
            txn: t(1),
            commit: true,
            shards: vec![1, 2],
        };
        assert_eq!(m.run(commit.clone()), LogReply::Decided { commit: true });
        assert_eq!(m.run(commit), LogReply::Decided { commit: true });
        let abort = LogCommand::Decide {
            txn: t(1),
            commit: false,
            shards: vec![],
        };
        assert_eq!(
            m.run(abort.clone()),
            LogReply::Decided { commit: true },
            "a commit is never undone"
        );
        // And a presumed abort recorded first blocks a later commit.
        assert_eq!(
            m.run(LogCommand::Decide {
                txn: t(2),
                commit: false,
                shards: vec![]
            }),
            LogReply::Decided { commit: false }
        );
        assert_eq!(
            m.run(LogCommand::Decide {
                txn: t(2),
                commit: true,
                shards: vec![1]
            }),
            LogReply::Decided { commit: false }
        );
    }

    #[test]
    fn a_recorded_one_phase_commit_needs_no_recovery() {
        let m = Mem(RefCell::new(BTreeMap::new()));
        m.run(LogCommand::Decide {
            txn: t(3),
            commit: true,
            shards: vec![],
        });
        let rec: Decision = decode(m.0.borrow().get(&decision_key(t(3))).unwrap()).unwrap();
        assert!(rec.commit && rec.finished);
        m.run(LogCommand::Decide {
            txn: t(4),
            commit: true,
            shards: vec![1, 2],
        });
        let rec: Decision = decode(m.0.borrow().get(&decision_key(t(4))).unwrap()).unwrap();
        assert!(!rec.finished, "a 2PC commit must be driven to every shard");
    }

    #[test]
    fn the_reservation_only_grows() {
        let m = Mem(RefCell::new(BTreeMap::new()));
        let reserve = |n| LogCommand::Reserve {
            until: Timestamp(n),
        };
        assert_eq!(
            m.run(reserve(500)),
            LogReply::Reserved {
                until: Timestamp(500)
            }
        );
        assert_eq!(
            m.run(reserve(300)),
            LogReply::Reserved {
                until: Timestamp(500)
            },
            "an older, smaller reservation landing late changes nothing"
        );
        assert_eq!(
            m.run(reserve(900)),
            LogReply::Reserved {
                until: Timestamp(900)
            }
        );
        let stored = m.0.borrow().get(RESERVATION_KEY).cloned();
        assert_eq!(reservation(stored.as_deref()), Ok(Timestamp(900)));
        assert_eq!(reservation(None), Ok(Timestamp(0)));
        // Not a decision: recovery's scan of decisions does not see it.
        assert!(!RESERVATION_KEY.starts_with(&[DECISION_PREFIX]));
    }

    #[test]
    fn staging_lives_until_a_decision() {
        let m = Mem(RefCell::new(BTreeMap::new()));
        let stage = LogCommand::Stage {
            txn: t(1),
            shards: vec![1, 2],
        };
        assert_eq!(m.run(stage.clone()), LogReply::Staged);
        let rec: Staging = decode(m.0.borrow().get(&staging_key(t(1))).unwrap()).unwrap();
        assert_eq!(staged_shards(&rec), [ShardId(1), ShardId(2)].into());
        // Every shard applied the commit: the staging record becomes a
        // finished commit decision.
        assert_eq!(m.run(LogCommand::Finish { txn: t(1) }), LogReply::Finished);
        assert!(m.0.borrow().get(&staging_key(t(1))).is_none());
        let rec: Decision = decode(m.0.borrow().get(&decision_key(t(1))).unwrap()).unwrap();
        assert!(rec.commit && rec.finished);
        // Staging a decided transaction writes nothing and says so.
        assert_eq!(m.run(stage), LogReply::Decided { commit: true });
        assert!(m.0.borrow().get(&staging_key(t(1))).is_none());
        // A decision (an abort after a "no", or recovery's) removes the
        // staging record in the same batch.
        m.run(LogCommand::Stage {
            txn: t(2),
            shards: vec![1, 3],
        });
        assert_eq!(
            m.run(LogCommand::Decide {
                txn: t(2),
                commit: false,
                shards: vec![]
            }),
            LogReply::Decided { commit: false }
        );
        assert!(m.0.borrow().get(&staging_key(t(2))).is_none());
        assert_eq!(
            m.run(LogCommand::Stage {
                txn: t(2),
                shards: vec![1, 3],
            }),
            LogReply::Decided { commit: false },
            "a late staging after a recorded abort changes nothing"
        );
        assert!(m.0.borrow().get(&staging_key(t(2))).is_none());
        assert!(!RESERVATION_KEY.starts_with(&[STAGING_PREFIX]));
        assert_ne!(STAGING_PREFIX, DECISION_PREFIX);
    }

    #[test]
    fn a_batch_applies_in_order_each_seeing_the_ones_before() {
        let m = Mem(RefCell::new(BTreeMap::new()));
        m.run(LogCommand::Stage {
            txn: t(2),
            shards: vec![1, 2],
        });
        let reply = m.run(LogCommand::Many(vec![
            // A one-phase commit's record, then (same batch) a finish of it.
            LogCommand::Decide {
                txn: t(1),
                commit: true,
                shards: vec![],
            },
            LogCommand::Finish { txn: t(1) },
            // A staged transaction finished: its staging record goes.
            LogCommand::Finish { txn: t(2) },
            LogCommand::Finish { txn: t(3) },
        ]));
        assert_eq!(
            reply,
            LogReply::Many(vec![
                LogReply::Decided { commit: true },
                LogReply::Finished,
                LogReply::Finished,
                LogReply::NotFound,
            ])
        );
        for txn in [t(1), t(2)] {
            let rec: Decision = decode(m.0.borrow().get(&decision_key(txn)).unwrap()).unwrap();
            assert!(rec.commit && rec.finished);
        }
        assert!(m.0.borrow().get(&staging_key(t(2))).is_none());
        // A later command of the batch sees an earlier one's decision:
        // first decision wins inside a batch too.
        let reply = m.run(LogCommand::Many(vec![
            LogCommand::Decide {
                txn: t(4),
                commit: false,
                shards: vec![],
            },
            LogCommand::Decide {
                txn: t(4),
                commit: true,
                shards: vec![1],
            },
        ]));
        assert_eq!(
            reply,
            LogReply::Many(vec![
                LogReply::Decided { commit: false },
                LogReply::Decided { commit: false },
            ])
        );
        let get = |_: &[u8]| Ok(None);
        let nested = LogCommand::Many(vec![LogCommand::Many(vec![])]);
        assert!(effect(&get, &|| Ok(None), 1, &nested).is_err());
    }

    /// Records held by the recorder ride ahead of a staging record in its
    /// entry (the staging append's carry): each applies as alone, and a
    /// staging record of another term in the batch is still refused.
    #[test]
    fn records_carried_ahead_of_a_staging_record_apply_as_alone() {
        let m = Mem(RefCell::new(BTreeMap::new()));
        m.run(LogCommand::Stage {
            txn: t(1),
            shards: vec![1, 2],
        });
        let reply = m.run(LogCommand::Many(vec![
            LogCommand::Finish { txn: t(1) },
            LogCommand::Decide {
                txn: t(2),
                commit: true,
                shards: vec![],
            },
            LogCommand::StageInTerm {
                txn: t(3),
                shards: vec![1, 2],
                term: 1,
            },
        ]));
        assert_eq!(
            reply,
            LogReply::Many(vec![
                LogReply::Finished,
                LogReply::Decided { commit: true },
                LogReply::Staged,
            ])
        );
        let rec: Decision = decode(m.0.borrow().get(&decision_key(t(1))).unwrap()).unwrap();
        assert!(rec.commit && rec.finished);
        assert!(m.0.borrow().get(&staging_key(t(1))).is_none());
        assert!(m.0.borrow().get(&staging_key(t(3))).is_some());
        let reply = m.run(LogCommand::Many(vec![
            LogCommand::Finish { txn: t(3) },
            LogCommand::StageInTerm {
                txn: t(4),
                shards: vec![1, 2],
                term: 7,
            },
        ]));
        assert_eq!(
            reply,
            LogReply::Many(vec![
                LogReply::Finished,
                LogReply::Decided { commit: false },
            ])
        );
        assert!(m.0.borrow().get(&staging_key(t(4))).is_none());
    }

    #[test]
    fn finish_marks_without_forgetting() {
        let m = Mem(RefCell::new(BTreeMap::new()));
        assert_eq!(m.run(LogCommand::Finish { txn: t(1) }), LogReply::NotFound);
        m.run(LogCommand::Decide {
            txn: t(1),
            commit: true,
            shards: vec![3],
        });
        assert_eq!(m.run(LogCommand::Finish { txn: t(1) }), LogReply::Finished);
        let rec: Decision = decode(m.0.borrow().get(&decision_key(t(1))).unwrap()).unwrap();
        assert!(rec.commit && rec.finished);
        assert_eq!(TxnId::from_key(&decision_key(t(1))), Some(t(1)));
    }

    fn decision(m: &Mem, txn: TxnId) -> Option<Decision> {
        m.0.borrow()
            .get(&decision_key(txn))
            .map(|b| decode(b).unwrap())
    }

    fn has(m: &Mem, k: &[u8]) -> bool {
        m.0.borrow().contains_key(k)
    }

    /// Crash point: the coordinator logged the abort of a staged
    /// transaction (after a "no" vote) and died before any shard heard it.
    /// The new leader has nothing to resend or resolve (no staging record,
    /// no unfinished commit), and a shard holding the prepare asks
    /// `TxnStatus`, which reads the abort from the record; a late staging
    /// or commit of it, from the old leader, changes nothing.
    #[test]
    fn crash_after_the_abort_record_leaves_the_shards_to_read_it() {
        let m = Mem(RefCell::new(BTreeMap::new()));
        m.run(LogCommand::Stage {
            txn: t(1),
            shards: vec![1, 2],
        });
        let abort = LogCommand::Decide {
            txn: t(1),
            commit: false,
            shards: vec![1, 2],
        };
        assert_eq!(m.run(abort.clone()), LogReply::Decided { commit: false });
        assert!(!has(&m, &staging_key(t(1))), "nothing to resolve");
        assert!(!has(&m, &unfinished_key(t(1))), "nothing to resend");
        assert!(decision(&m, t(1)).is_some_and(|d| !d.commit));
        // Idempotent, and the first decision wins.
        assert_eq!(m.run(abort), LogReply::Decided { commit: false });
        for late in [
            LogCommand::Stage {
                txn: t(1),
                shards: vec![1, 2],
            },
            LogCommand::Decide {
                txn: t(1),
                commit: true,
                shards: vec![1, 2],
            },
        ] {
            assert_eq!(m.run(late), LogReply::Decided { commit: false });
        }
        assert!(!has(&m, &staging_key(t(1))) && !has(&m, &unfinished_key(t(1))));
    }

    /// An unfinished commit is indexed (`u`) until finished, so a new
    /// leader reads only those.
    #[test]
    fn unfinished_commits_are_indexed_until_finished() {
        let m = Mem(RefCell::new(BTreeMap::new()));
        let decide = |txn, commit, shards: &[u64]| LogCommand::Decide {
            txn,
            commit,
            shards: shards.to_vec(),
        };
        m.run(decide(t(1), true, &[3, 4]));
        m.run(decide(t(2), true, &[]));
        m.run(decide(t(3), false, &[3]));
        assert!(has(&m, &unfinished_key(t(1))));
        assert!(
            !has(&m, &unfinished_key(t(2))),
            "a recorded one-phase commit"
        );
        assert!(!has(&m, &unfinished_key(t(3))), "an abort is never resent");
        m.run(LogCommand::Finish { txn: t(1) });
        assert!(!has(&m, &unfinished_key(t(1))));
    }

    /// Garbage collection in the log: the horizon only grows, only
    /// finished decisions below it go, and nothing new is recorded below it
    /// except a commit shards must still apply.
    #[test]
    fn below_the_horizon_finished_decisions_go_and_no_new_record_lands() {
        let m = Mem(RefCell::new(BTreeMap::new()));
        let decide = |txn, commit, shards: &[u64]| LogCommand::Decide {
            txn,
            commit,
            shards: shards.to_vec(),
        };
        m.run(decide(t(1), true, &[]));
        m.run(decide(t(2), false, &[]));
        m.run(decide(t(3), true, &[5]));
        m.run(LogCommand::Stage {
            txn: t(4),
            shards: vec![5, 6],
        });
        m.run(decide(t(30), true, &[]));
        let gc = |below, txns: &[TxnId]| LogCommand::Gc {
            below: Timestamp(below),
            txns: txns.to_vec(),
        };
        // The undecided staging record of t(4) holds the horizon at 4.
        assert_eq!(
            m.run(gc(10, &[t(1), t(2), t(3), t(4), t(30)])),
            LogReply::Collected {
                horizon: Timestamp(4)
            }
        );
        m.run(decide(t(4), false, &[]));
        assert_eq!(
            m.run(gc(10, &[t(4)])),
            LogReply::Collected {
                horizon: Timestamp(10)
            }
        );
        assert_eq!(decision(&m, t(1)), None);
        assert_eq!(decision(&m, t(2)), None);
        assert!(
            decision(&m, t(3)).is_some(),
            "unfinished: a new leader resends it"
        );
        assert!(!has(&m, &staging_key(t(4))), "its abort ended it");
        assert!(decision(&m, t(30)).is_some(), "past the horizon");
        assert_eq!(
            m.run(gc(5, &[])),
            LogReply::Collected {
                horizon: Timestamp(10)
            },
            "never back"
        );
        assert_eq!(
            horizon(m.0.borrow().get(HORIZON_KEY).map(|v| v.as_slice())).unwrap(),
            Timestamp(10)
        );

        // Below it: an abort or a recorded one-phase commit is answered
        // but not written; staging is answered with an abort; a commit
        // with shards to tell is written (and indexed).
        assert_eq!(
            m.run(decide(t(6), false, &[])),
            LogReply::Decided { commit: false }
        );
        assert_eq!(
            m.run(decide(t(7), true, &[])),
            LogReply::Decided { commit: true }
        );
        assert_eq!(
            m.run(LogCommand::Stage {
                txn: t(8),
                shards: vec![1, 2]
            }),
            LogReply::Decided { commit: false }
        );
        assert_eq!(decision(&m, t(6)), None);
        assert_eq!(decision(&m, t(7)), None);
        assert!(!has(&m, &staging_key(t(8))));
        m.run(decide(t(9), true, &[5]));
        assert!(decision(&m, t(9)).is_some() && has(&m, &unfinished_key(t(9))));
        // A staging record the leader did not see stops the horizon short
        // of it (and later rounds too, until it is decided).
        m.run(LogCommand::Stage {
            txn: t(40),
            shards: vec![1, 2],
        });
        assert_eq!(
            m.run(gc(50, &[])),
            LogReply::Collected {
                horizon: Timestamp(40)
            }
        );
        m.run(LogCommand::Finish { txn: t(40) });
        assert_eq!(
            m.run(gc(50, &[])),
            LogReply::Collected {
                horizon: Timestamp(50)
            }
        );
        // A decision already there still wins below the horizon.
        assert_eq!(
            m.run(decide(t(3), false, &[])),
            LogReply::Decided { commit: true }
        );
    }

    /// Every command, reply and stored record decodes back to itself.
    #[test]
    fn commands_replies_and_records_round_trip() {
        for c in [
            LogCommand::Decide {
                txn: t(9),
                commit: true,
                shards: vec![1, u64::MAX],
            },
            LogCommand::Finish { txn: t(9) },
            LogCommand::Reserve {
                until: Timestamp(u64::MAX),
            },
            LogCommand::Stage {
                txn: t(9),
                shards: vec![1, 2, 3],
            },
            LogCommand::Many(vec![LogCommand::Finish { txn: t(9) }]),
            LogCommand::Gc {
                below: Timestamp(5),
                txns: vec![t(1)],
            },
        ] {
            assert_eq!(decode::<LogCommand>(&c.encode().unwrap()), Ok(c));
        }
        for r in [
            LogReply::Decided { commit: false },
            LogReply::Finished,
            LogReply::NotFound,
            LogReply::Reserved {
                until: Timestamp(7),
            },
            LogReply::Staged,
            LogReply::Many(vec![LogReply::Finished]),
            LogReply::Collected {
                horizon: Timestamp(5),
            },
        ] {
            assert_eq!(decode::<LogReply>(&encode(&r).unwrap()), Ok(r));
        }
        let d = Decision {
            commit: true,
            shards: vec![2, 3],
            finished: false,
        };
        assert_eq!(decode::<Decision>(&encode(&d).unwrap()), Ok(d));
        assert_eq!(
            reservation(Some(&encode(&Timestamp(42)).unwrap())),
            Ok(Timestamp(42))
        );
    }

    /// A corrupted record is an error that stops the apply, not a missing
    /// record (which would let a second, different decision in).
    #[test]
    fn a_corrupted_record_is_an_error_not_absent() {
        let m = BTreeMap::from([
            (decision_key(t(1)), vec![1, 0xff]),
            (RESERVATION_KEY.to_vec(), Vec::new()),
        ]);
        let get = |k: &[u8]| Ok(m.get(k).cloned());
        let decide = LogCommand::Decide {
            txn: t(1),
            commit: true,
            shards: vec![1],
        };
        let e = effect(&get, &|| Ok(None), 1, &decide).unwrap_err();
        assert!(e.contains("recovery log value"), "{e}");
        let e = effect(
            &get,
            &|| Ok(None),
            1,
            &LogCommand::Reserve {
                until: Timestamp(5),
            },
        )
        .unwrap_err();
        assert!(e.contains("empty value"), "{e}");
    }
}
