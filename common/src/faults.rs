//! Fault injection for the Jepsen-style suite (`tests/`), off unless the
//! process environment asks for it.
//!
//! Two kinds live here. *Faults* the real system must survive: a skewed
//! wall clock (`PACT_CLOCK_OFFSET_MS`, signed milliseconds added to
//! [`crate::system_clock`]) and the `crash-before-fsync` trigger (after
//! the process receives SIGUSR1, the storage writer aborts the process as
//! soon as its next round of writes arrives, before any of it reaches the
//! disk: those writes are lost, as un-fsynced writes are in a power cut), and
//! the `fail-fsync` trigger (after SIGUSR2, every fsync of the storage
//! writer fails with EIO, as a dying disk's does: the node must stop
//! acknowledging and say why). And deliberate *bugs*, so the
//! suite can prove its checkers notice when guarantees break:
//! `skip-read-locks` (transactional reads take no shared lock: 2PL is
//! broken) and `stale-reads` (any replica answers a plain read from its
//! local state, with no leader check or read barrier). And one *crash
//! window made permanent*: `skip-one-phase-record` (a coordinator never
//! writes its best-effort record of a one-phase commit, as if its leader
//! always died right after the shard applied it), so tests can check that
//! TxnStatus still finds the outcome at the shard. And one *crash point*:
//! `crash-mid-snapshot-install` (a replica installing a snapshot from its
//! leader aborts the process once its old state is deleted and the first
//! batch of the new one is durable, mid-install), so tests can check that
//! the next start finishes the install. And `crash-mid-membership-change`
//! (a leader adding a replica appends only the joint membership, waits
//! for it to commit and aborts the process, before any final
//! configuration exists: the group is left joint, as openraft leaves it
//! when a leader dies between the two steps of a change), so tests can check that the next change finishes it.
//! And `add-stops-at-learner` (a leader adding a replica stops once the
//! new replica has caught up as a learner, before promoting it, and
//! answers that the change is incomplete, as when it dies at that point),
//! so tests can leave a learner behind.
//! And three crash points of a split: `crash-split-frozen` (the driver
//! aborts the process once the parent froze the moving part, before it
//! drained), `crash-split-drained` (once the parent recorded the split
//! drained, before the new shard copied what was written since) and
//! `crash-split-committed` (once the parent committed it, before the new
//! shard serves); a driver that takes over from the recorded phase passes
//! none of these points again (a driver that freezes again after lifting
//! the freeze passes `crash-split-frozen` again). And two pauses:
//! `split-pause-before-freeze` (the driver waits 2 s between the new
//! shard's first copy and the freeze), so tests can write in the moving
//! part after it was copied; `split-pause-before-trim` (the driver waits
//! 10 s between the new shard serving and the parent's trim), so tests can
//! move replicas and leaders before the split is done. And one window
//! widened:
//! `merge-lagging-target-view` (a merge's leader does not see a merge its
//! target recorded, and a target's leader accepts a merge into it 2 s
//! after it sees it, as if each node's replica of the other shard lagged),
//! so tests can record two merges in opposite directions. And
//! `plain-scan-pause` (a plain scan waits 2 s once it holds its range
//! lock, before it reads), so an older transaction can wound it mid-read.
//! And `decision-hold-long` (a shard leader holds each coordinator's
//! decision 60 s for a transaction entry to carry it, instead of 10 ms; the
//! leader's own resend of decisions not seen in the log, after half a
//! second, still logs it), so tests can kill a leader while a decision
//! is held.
//! And `probe-ignores-table` (a replica on an empty store asks only the
//! peers its config or its own records name, as if the metadata table
//! lagged every membership change), so tests can check that it learns the
//! group's current voters from its peers' answers.
//!
//! `PACT_FAULTS` is a comma-separated list of those names. The servers log
//! a warning naming every fault that is on; unknown names are refused at
//! start-up so a typo cannot silently test the real build.

use std::sync::OnceLock;

/// Every name `PACT_FAULTS` accepts.
pub const FAULT_NAMES: &[&str] = &[
    "skip-read-locks",
    "stale-reads",
    "crash-before-fsync",
    "fail-fsync",
    "decision-delay",
    "decision-hold-long",
    "skip-one-phase-record",
    "crash-mid-snapshot-install",
    "crash-mid-membership-change",
    "add-stops-at-learner",
    "crash-split-frozen",
    "crash-split-drained",
    "crash-split-committed",
    "split-pause-before-freeze",
    "split-pause-before-trim",
    "merge-lagging-target-view",
    "plain-scan-pause",
    "probe-ignores-table",
];

fn parse(list: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if !FAULT_NAMES.contains(&name) {
            return Err(format!(
                "unknown fault {name:?} in PACT_FAULTS (known: {})",
                FAULT_NAMES.join(", ")
            ));
        }
        out.push(name.to_string());
    }
    Ok(out)
}

fn active() -> &'static Result<Vec<String>, String> {
    static ACTIVE: OnceLock<Result<Vec<String>, String>> = OnceLock::new();
    ACTIVE.get_or_init(|| parse(&std::env::var("PACT_FAULTS").unwrap_or_default()))
}

/// The faults switched on for this process, or why `PACT_FAULTS` is bad.
pub fn configured() -> Result<&'static [String], String> {
    active().as_ref().map(Vec::as_slice).map_err(Clone::clone)
}

/// Whether fault `name` is on. A bad `PACT_FAULTS` turns nothing on (and
/// the server refuses to start, see [`configured`]).
pub fn enabled(name: &str) -> bool {
    configured().is_ok_and(|f| f.iter().any(|n| n == name))
}

/// Milliseconds added to this process's wall clock (`PACT_CLOCK_OFFSET_MS`).
pub fn clock_offset_ms() -> i64 {
    static OFFSET: OnceLock<i64> = OnceLock::new();
    *OFFSET.get_or_init(|| {
        std::env::var("PACT_CLOCK_OFFSET_MS")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    })
}

/// How long a coordinator waits between collecting all votes and logging
/// its decision when `decision-delay` is on (`PACT_DECISION_DELAY_MS`,
/// default 200): widens the window a nemesis aims its kill at.
pub fn decision_delay_ms() -> u64 {
    if !enabled("decision-delay") {
        return 0;
    }
    std::env::var("PACT_DECISION_DELAY_MS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(200)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_names_and_refuses_others() {
        assert_eq!(
            parse(" stale-reads,skip-read-locks ").unwrap(),
            vec!["stale-reads".to_string(), "skip-read-locks".to_string()]
        );
        assert!(parse("").unwrap().is_empty());
        let e = parse("stale-reads,no-such-bug").unwrap_err();
        assert!(e.contains("no-such-bug"), "{e}");
    }
}
