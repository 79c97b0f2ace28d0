//! Garbage collection of transaction records: where the horizon may go.
//!
//! Every coordinated transaction leaves records: a decision (`x`) or a
//! staging record (`s`) in its group's recovery log, and an outcome
//! record (`o`) at each shard it prepared or committed on, or that fenced
//! it. They exist so that a repeated request is answered the same way
//! and TxnStatus can say what happened; kept forever they grow disk use,
//! and the time a new leader takes to read them, with history.
//!
//! # The rule
//! Each coordinator group keeps a **record horizon** `g`, a transaction
//! timestamp, raised only by its leader through its log (`LogCommand::Gc`),
//! never lowered. The leader raises it to
//!
//! ```text
//! min( now - retention,                  the retention promise
//!      the durable reservation,          every id a later leader issues is above it
//!      the oldest open session,          every transaction that may still commit
//!      the oldest transaction in 2PC,
//!      the oldest staging record,        every parallel commit not yet decided
//!      the oldest long transaction        its retention counts from its end
//!        finished within the retention )
//! ```
//!
//! (`now - retention` less a second's [`SLACK`], so a transaction that ran
//! at most that long also keeps its records a full retention after it
//! ended; one that ran longer is held back by name until then).
//!
//! and then tells every shard, which raises its own horizon for the group
//! (`h`, never above `g`) in its Raft log. Below its horizon:
//!
//! - the recovery log deletes *finished* decisions (every shard applied
//!   them; a commit settled by recovery names its shards, so it is not
//!   finished before they applied it), never goes past a staging record,
//!   even one appended after the leader looked (`Gc` checks when it
//!   applies), and writes no new abort, recorded one-phase commit or staging
//!   record (a staging record there is answered as an abort). A commit that
//!   shards must still apply is kept until they did;
//! - a shard deletes outcome records, and refuses a prepare or one-phase
//!   commit of the group's transactions it has no record of ("expired").
//!
//! # Why that is safe
//! The horizon passes only transactions that are over: none of them is
//! open, in 2PC or staged when it is computed, and a transaction begun
//! later gets a newer timestamp (it is above `now - retention` and above
//! the reservation, which a later leader also starts past). So nothing
//! below the horizon can still be decided a commit: the log and the shards
//! refusing new records there cannot abort live work. What the records
//! were for is then answered otherwise:
//!
//! - *Idempotence at a shard.* A late prepare or one-phase commit is
//!   refused by the horizon itself, where the outcome record used to refuse
//!   it. A late resend of a commit finds no prepare record and no outcome:
//!   it must have applied (a commit decision goes only to shards that
//!   prepared, and only a decision removes a prepare record), so it is
//!   answered done.
//! - *Recovery.* A staging record is never below the horizon, so the
//!   shards' outcome records that recovery reads for it are all there; a
//!   commit not yet finished keeps its decision; a prepared shard keeps its
//!   prepare record until it hears the decision.
//! - *TxnStatus* within the retention is answered exactly as before: a
//!   transaction younger than `now - retention` is above the horizon, so no
//!   record of it was deleted. Below the horizon, with no decision left in
//!   the log, the shards are read (nothing is written): a shard that
//!   committed it (its outcome record not yet collected) makes it
//!   committed; a shard holding its prepare record makes it aborted (a
//!   prepared transaction's commit decision would still be in the log,
//!   unfinished); every shard recording an abort makes it aborted;
//!   anything else is "expired", never a guess. A question about an id
//!   below the horizon therefore costs reads, no record.
//!
//! A new leader reads only the unfinished commits (`u`) and the staging
//! records, so a failover's work does not grow with history either.

use std::time::Duration;

use pact_common::Timestamp;

/// The horizon trails `now - retention` by this much more, so that a
/// transaction that ran at most this long keeps its records for the whole
/// retention counted from its *end* (the horizon follows start
/// timestamps). Longer ones are held back one by one ([`Live::finished`]).
pub const SLACK: Duration = Duration::from_secs(1);

/// What the leader knows is still alive when it computes the horizon.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Live {
    /// The durable timestamp reservation: every id issued from now on, by
    /// any leader, is above it.
    pub reserved: Timestamp,
    /// Oldest open (or committing) session.
    pub session: Option<Timestamp>,
    /// Oldest transaction the 2PC machine has.
    pub in_flight: Option<Timestamp>,
    /// Oldest staging record in the log.
    pub staged: Option<Timestamp>,
    /// Oldest transaction that ran longer than [`SLACK`] and finished
    /// less than a retention ago.
    pub finished: Option<Timestamp>,
}

/// The highest horizon the rule allows at `now`. Pure.
pub fn horizon(now: Timestamp, retention: Duration, live: &Live) -> Timestamp {
    let ms = u64::try_from((retention + SLACK).as_millis()).unwrap_or(u64::MAX);
    let mut h = Timestamp::from_parts(now.millis().saturating_sub(ms), 0);
    h = h.min(live.reserved);
    for t in [live.session, live.in_flight, live.staged, live.finished]
        .into_iter()
        .flatten()
    {
        h = h.min(t);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_parts(ms, 0)
    }

    #[test]
    fn the_horizon_trails_now_by_the_retention() {
        let live = Live {
            reserved: at(100_000),
            ..Live::default()
        };
        assert_eq!(
            horizon(at(90_000), Duration::from_secs(60), &live),
            at(29_000)
        );
        // A young cluster: nothing is old enough yet.
        assert_eq!(horizon(at(5_000), Duration::from_secs(60), &live), at(0));
    }

    #[test]
    fn anything_alive_holds_the_horizon_back() {
        let now = at(90_000);
        let ret = Duration::from_secs(60);
        let base = Live {
            reserved: at(100_000),
            ..Live::default()
        };
        for live in [
            Live {
                session: Some(at(10_000)),
                ..base
            },
            Live {
                in_flight: Some(at(10_000)),
                ..base
            },
            Live {
                staged: Some(at(10_000)),
                ..base
            },
            Live {
                finished: Some(at(10_000)),
                ..base
            },
            Live {
                reserved: at(10_000),
                ..base
            },
        ] {
            assert_eq!(horizon(now, ret, &live), at(10_000), "{live:?}");
        }
        // Something alive but younger than the retention changes nothing.
        let young = Live {
            session: Some(at(80_000)),
            ..base
        };
        assert_eq!(horizon(now, ret, &young), at(29_000));
    }
}
