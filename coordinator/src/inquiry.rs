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

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(a: &[(u64, Answer)]) -> Vec<(ShardId, Answer)> {
        a.iter().map(|(s, x)| (ShardId(*s), x.clone())).collect()
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
}
