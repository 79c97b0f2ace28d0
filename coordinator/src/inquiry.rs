//! TxnStatus for a transaction the recovery log has no decision for, and
//! that this leader is not deciding: what the shards recorded settles it.
//!
//! A one-phase commit is decided at its shard (the shard's outcome record);
//! the coordinator records it in its log afterwards, best effort, and that
//! record is lost if the leader dies in between. So before answering
//! "unknown", or presuming an abort, the coordinator asks every shard.
//! With `resolve`, every shard *fences* the transaction first (records an
//! abort unless it prepared or decided it), so no one-phase commit of it
//! can apply anywhere afterwards and the presumed abort cannot land beside
//! a commit. Pure: the coordinator gathers the answers and runs the
//! verdict it gets here.

use pact_common::ShardId;

/// What a shard recorded of a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardState {
    /// Nothing (only without a fence: a fence records an abort instead).
    None,
    /// Prepared, waiting for the decision: a two-phase transaction, which
    /// only the recovery log decides.
    Prepared,
    Committed,
    Aborted,
    /// Nothing recorded, and older than the shard's record horizon for
    /// this group: forgotten there, and it can no longer land there.
    Expired,
}

/// A shard's answer, or why there is none.
pub type Answer = Result<ShardState, String>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A shard committed it: a one-phase commit (or a two-phase commit
    /// whose decision the log got meanwhile). Record it and say so.
    Committed,
    /// Record the presumed abort (first decision wins) and report it,
    /// with the reason.
    Abort(String),
    /// Not final yet.
    Unknown(String),
}

/// Whether `a` settles the verdict whatever the other shards say, so the
/// coordinator need not wait for them.
pub fn decisive(a: &Answer, fenced: bool) -> bool {
    match a {
        Ok(ShardState::Committed) => true,
        // Prepared somewhere: two-phase, so no one-phase commit of it can
        // exist anywhere, and the log alone decides.
        Ok(ShardState::Prepared) => fenced,
        _ => false,
    }
}

/// The verdict from the shards' answers (`fenced`: they fenced the
/// transaction first, for TxnStatus with `resolve`).
pub fn verdict(answers: &[(ShardId, Answer)], fenced: bool) -> Verdict {
    if answers.iter().any(|(_, a)| *a == Ok(ShardState::Committed)) {
        return Verdict::Committed;
    }
    if !fenced {
        return Verdict::Unknown(
            "no decision recorded and no shard has committed it (yet); \
             resolve settles it"
                .into(),
        );
    }
    if let Some((s, _)) = answers.iter().find(|(_, a)| *a == Ok(ShardState::Prepared)) {
        return Verdict::Abort(format!(
            "prepared at shard {s} but never decided: its coordinator lost it \
             (crash or failover); presumed abort"
        ));
    }
    let missing: Vec<String> = answers
        .iter()
        .filter_map(|(s, a)| match a {
            Ok(ShardState::Aborted) => None,
            Ok(other) => Some(format!("shard {s}: unexpected answer {other:?}")),
            Err(e) => Some(format!("shard {s}: {e}")),
        })
        .collect();
    if !missing.is_empty() || answers.is_empty() {
        return Verdict::Unknown(format!(
            "no decision recorded, and a one-phase commit cannot be ruled out \
             until every shard answers ({})",
            missing.join("; ")
        ));
    }
    Verdict::Abort("no shard prepared or committed it (now fenced at every shard): aborted".into())
}

/// The verdict on a *staged* transaction (a parallel commit, whose
/// staging record lists `answers`' shards) with no decision in the log:
/// committed exactly when every listed shard holds its prepare record (or
/// already applied the commit); never, once one recorded an abort (a
/// fence that found no prepare record recorded one, so that prepare can
/// no longer land). Anything else (a shard unreachable, or not fenced and
/// not prepared yet) is not final.
pub fn staged_verdict(answers: &[(ShardId, Answer)], listed: usize) -> Verdict {
    if let Some((s, _)) = answers.iter().find(|(_, a)| *a == Ok(ShardState::Aborted)) {
        return Verdict::Abort(format!(
            "staged, but shard {s} never prepared it (its abort is recorded there): aborted"
        ));
    }
    let prepared = answers
        .iter()
        .filter(|(_, a)| matches!(a, Ok(ShardState::Prepared) | Ok(ShardState::Committed)))
        .count();
    if prepared == listed && answers.len() == listed {
        return Verdict::Committed;
    }
    let missing: Vec<String> = answers
        .iter()
        .filter_map(|(s, a)| match a {
            Ok(ShardState::Prepared) | Ok(ShardState::Committed) => None,
            Ok(other) => Some(format!("shard {s}: {other:?}")),
            Err(e) => Some(format!("shard {s}: {e}")),
        })
        .collect();
    Verdict::Unknown(format!(
        "staged, and not every shard has answered that it prepared ({})",
        missing.join("; ")
    ))
}

/// What the shards' records say of a transaction older than the group's
/// record horizon that has no decision left in the log (read, not
/// fenced: nothing of it can land at a shard any more). See `crate::gc`.
/// The verdict on a transaction none of whose writes, prepares or
/// records can land any more (see the coordinator's `status`), from its
/// shards' records read without fencing: a commit found decides; a
/// prepare record alone does not (with no staging record or decision,
/// nothing can commit it); anything but a full set of answers is unknown.
pub fn settled(answers: &[(ShardId, Answer)]) -> Verdict {
    if answers.iter().any(|(_, a)| *a == Ok(ShardState::Committed)) {
        return Verdict::Committed;
    }
    let missing: Vec<String> = answers
        .iter()
        .filter_map(|(s, a)| match a {
            Ok(ShardState::None) | Ok(ShardState::Aborted) | Ok(ShardState::Prepared) => None,
            Ok(other) => Some(format!("shard {s}: unexpected answer {other:?}")),
            Err(e) => Some(format!("shard {s}: {e}")),
        })
        .collect();
    if !missing.is_empty() || answers.is_empty() {
        return Verdict::Unknown(format!(
            "no decision recorded, and a one-phase commit cannot be ruled out until every \
             shard answers ({})",
            missing.join("; ")
        ));
    }
    Verdict::Abort("no shard committed it, and nothing of it can land any more: aborted".into())
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PastHorizon {
    Committed,
    Aborted(String),
    /// No record left says: its outcome is forgotten.
    Expired,
    /// A shard did not answer.
    Unknown(String),
}

pub fn past_horizon(answers: &[(ShardId, Answer)]) -> PastHorizon {
    if answers.iter().any(|(_, a)| *a == Ok(ShardState::Committed)) {
        return PastHorizon::Committed;
    }
    if let Some((s, _)) = answers.iter().find(|(_, a)| *a == Ok(ShardState::Prepared)) {
        return PastHorizon::Aborted(format!(
            "prepared at shard {s} but never decided, and older than the record horizon: \
             it can no longer commit"
        ));
    }
    let unanswered: Vec<String> = answers
        .iter()
        .filter_map(|(s, a)| a.as_ref().err().map(|e| format!("shard {s}: {e}")))
        .collect();
    if !unanswered.is_empty() {
        return PastHorizon::Unknown(format!(
            "older than the record horizon, and not every shard answered ({})",
            unanswered.join("; ")
        ));
    }
    // An abort recorded at one shard says nothing of another, which may
    // have committed it in one phase and since forgotten that: only an
    // abort recorded everywhere settles it.
    if !answers.is_empty() && answers.iter().all(|(_, a)| *a == Ok(ShardState::Aborted)) {
        return PastHorizon::Aborted("aborted at every shard".into());
    }
    PastHorizon::Expired
}

/// Whether `a` settles a past-horizon verdict by itself.
pub fn decisive_past_horizon(a: &Answer) -> bool {
    matches!(a, Ok(ShardState::Committed) | Ok(ShardState::Prepared))
}

/// Whether `a` settles a staged transaction's verdict by itself.
pub fn decisive_staged(a: &Answer) -> bool {
    *a == Ok(ShardState::Aborted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(a: &[(u64, Answer)]) -> Vec<(ShardId, Answer)> {
        a.iter().map(|(s, x)| (ShardId(*s), x.clone())).collect()
    }

    #[test]
    fn a_settled_transaction_is_decided_by_the_records_alone() {
        use ShardState::*;
        let v = |a: &[(u64, Answer)]| settled(&answers(a));
        assert_eq!(v(&[(1, Ok(None)), (2, Ok(Committed))]), Verdict::Committed);
        assert_eq!(
            v(&[(1, Err("down".into())), (2, Ok(Committed))]),
            Verdict::Committed,
            "a commit found is enough"
        );
        for a in [
            vec![(1, Ok(None)), (2, Ok(None))],
            vec![(1, Ok(Aborted)), (2, Ok(None))],
            vec![(1, Ok(Prepared)), (2, Ok(None))],
        ] {
            assert!(matches!(v(&a), Verdict::Abort(_)), "{a:?}");
        }
        // A shard not heard from may hold a one-phase commit.
        assert!(matches!(
            v(&[(1, Ok(None)), (2, Err("down".into()))]),
            Verdict::Unknown(_)
        ));
        assert!(matches!(v(&[(1, Ok(Expired))]), Verdict::Unknown(_)));
        assert!(matches!(v(&[]), Verdict::Unknown(_)));
    }

    #[test]
    fn past_the_horizon_only_a_record_decides_and_nothing_is_guessed() {
        use ShardState::*;
        let v = |a: &[(u64, Answer)]| past_horizon(&answers(a));
        assert_eq!(
            v(&[(1, Ok(Aborted)), (2, Ok(Committed))]),
            PastHorizon::Committed
        );
        assert!(matches!(
            v(&[(1, Ok(Prepared)), (2, Ok(None))]),
            PastHorizon::Aborted(_)
        ));
        assert!(matches!(
            v(&[(1, Ok(Aborted)), (2, Ok(Aborted))]),
            PastHorizon::Aborted(_)
        ));
        // One abort beside a forgotten shard: that shard may have committed.
        assert_eq!(
            v(&[(1, Ok(Aborted)), (2, Ok(Expired))]),
            PastHorizon::Expired
        );
        assert_eq!(v(&[(1, Ok(None)), (2, Ok(Expired))]), PastHorizon::Expired);
        assert!(matches!(
            v(&[(1, Ok(Expired)), (2, Err("down".into()))]),
            PastHorizon::Unknown(_)
        ));
        assert!(decisive_past_horizon(&Ok(Prepared)));
        assert!(!decisive_past_horizon(&Ok(Aborted)));
    }

    #[test]
    fn a_commit_at_any_shard_wins() {
        let a = answers(&[
            (1, Ok(ShardState::None)),
            (2, Ok(ShardState::Committed)),
            (3, Err("down".into())),
        ]);
        assert_eq!(verdict(&a, false), Verdict::Committed);
        assert_eq!(verdict(&a, true), Verdict::Committed);
        assert!(decisive(&Ok(ShardState::Committed), false));
    }

    #[test]
    fn without_a_fence_nothing_is_presumed() {
        let a = answers(&[(1, Ok(ShardState::None)), (2, Ok(ShardState::Aborted))]);
        assert!(matches!(verdict(&a, false), Verdict::Unknown(_)));
        let a = answers(&[(1, Ok(ShardState::Prepared))]);
        assert!(matches!(verdict(&a, false), Verdict::Unknown(_)));
        assert!(!decisive(&Ok(ShardState::Prepared), false));
    }

    #[test]
    fn fenced_everywhere_without_a_commit_is_aborted() {
        let a = answers(&[
            (1, Ok(ShardState::Aborted)),
            (2, Ok(ShardState::Aborted)),
            (3, Ok(ShardState::Aborted)),
        ]);
        assert!(matches!(verdict(&a, true), Verdict::Abort(_)));
    }

    #[test]
    fn an_unreachable_shard_could_hide_a_one_phase_commit() {
        let a = answers(&[(1, Ok(ShardState::Aborted)), (2, Err("no leader".into()))]);
        match verdict(&a, true) {
            Verdict::Unknown(r) => assert!(r.contains("shard 2: no leader"), "{r}"),
            v => panic!("{v:?}"),
        }
        assert!(matches!(verdict(&[], true), Verdict::Unknown(_)));
    }

    #[test]
    fn prepared_somewhere_is_two_phase_and_the_log_decides() {
        // The asking participant (resolving its in-doubt transaction)
        // reports Prepared; a shard that cannot be reached does not hold
        // up the presumed abort, since no one-phase commit can exist.
        let a = answers(&[(1, Ok(ShardState::Prepared)), (2, Err("down".into()))]);
        assert!(matches!(verdict(&a, true), Verdict::Abort(r) if r.contains("shard 1")));
        assert!(decisive(&Ok(ShardState::Prepared), true));
        assert!(!decisive(&Ok(ShardState::Aborted), true));
    }

    #[test]
    fn a_staged_transaction_is_committed_iff_every_shard_prepared() {
        let all = answers(&[
            (1, Ok(ShardState::Prepared)),
            (2, Ok(ShardState::Committed)),
            (3, Ok(ShardState::Prepared)),
        ]);
        assert_eq!(staged_verdict(&all, 3), Verdict::Committed);
        // Not all listed shards answered: not final.
        assert!(matches!(staged_verdict(&all[..2], 3), Verdict::Unknown(_)));
        let down = answers(&[(1, Ok(ShardState::Prepared)), (2, Err("down".into()))]);
        match staged_verdict(&down, 2) {
            Verdict::Unknown(r) => assert!(r.contains("shard 2: down"), "{r}"),
            v => panic!("{v:?}"),
        }
        // Without a fence a shard may not have prepared yet.
        let early = answers(&[(1, Ok(ShardState::Prepared)), (2, Ok(ShardState::None))]);
        assert!(matches!(staged_verdict(&early, 2), Verdict::Unknown(_)));
        // One recorded abort settles it, whatever the others say.
        let aborted = answers(&[(1, Ok(ShardState::Prepared)), (2, Ok(ShardState::Aborted))]);
        assert!(matches!(staged_verdict(&aborted, 3), Verdict::Abort(r) if r.contains("shard 2")));
        assert!(decisive_staged(&Ok(ShardState::Aborted)));
        assert!(!decisive_staged(&Ok(ShardState::Prepared)));
        assert!(!decisive_staged(&Err("down".into())));
    }
}
