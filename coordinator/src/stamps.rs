//! Transaction timestamps that never repeat and never go back, whatever
//! the wall clock does.
//!
//! A transaction id is its start timestamp plus the coordinator node and
//! group. The timestamp comes from the leader's hybrid clock, which starts
//! from the wall clock: a coordinator restarted with its clock set back
//! would hand out ids it had handed out before, and a reused id meets the
//! old outcome records at the shards. So, like a timestamp oracle, the
//! leader reserves a window of timestamps in the recovery log before it
//! uses them: it issues only timestamps below the durable reservation, and
//! a new leader moves its clock past every reservation of its predecessors
//! before it issues any. The window is extended in the background while a
//! comfortable part of it is left, so `begin` waits for the log only when
//! the window is used up (the log was unavailable for a while). One log
//! entry per [`REFILL_BELOW_MS`] or so of issuing, never one per
//! transaction.
//!
//! [`Reservation`] is the bookkeeping, without I/O; the coordinator runs
//! the log appends it asks for.

use pact_common::Timestamp;

/// How far ahead of the clock a reservation reaches. A new leader's ids
/// start past its predecessor's reservation, so up to this much ahead of
/// the wall clock: keep it well under a lock wait, since wound-wait
/// compares the timestamps of different coordinator groups.
pub const AHEAD_MS: u64 = 3_000;

/// Extend the reservation once less than this is left of it.
pub const REFILL_BELOW_MS: u64 = 2_000;

/// What a leader knows of its timestamp reservation.
#[derive(Debug, Default)]
pub struct Reservation {
    /// Timestamps strictly below this are reserved in the recovery log (a
    /// committed entry: every later leader sees it).
    limit: Timestamp,
    /// An extension is being appended.
    extending: bool,
}

/// The answer to a clock reading: whether it may be issued, and whether
/// the reservation must be extended (to `until`) first or meanwhile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Issue {
    pub ts: Option<Timestamp>,
    pub extend: Option<Timestamp>,
}

impl Reservation {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn limit(&self) -> Timestamp {
        self.limit
    }

    /// May `now` (a fresh reading of the hybrid clock) be issued?
    pub fn issue(&mut self, now: Timestamp) -> Issue {
        let ts = (now < self.limit).then_some(now);
        let left = self.limit.millis().saturating_sub(now.millis());
        let extend = if !self.extending && (ts.is_none() || left < REFILL_BELOW_MS) {
            self.extending = true;
            Some(Timestamp::from_parts(now.millis() + AHEAD_MS, 0))
        } else {
            None
        };
        Issue { ts, extend }
    }

    /// A reservation up to `until` is durable: it was read from the
    /// applied log, or an append of it committed.
    pub fn durable(&mut self, until: Timestamp) {
        self.limit = self.limit.max(until);
    }

    /// The extension asked for by [`Reservation::issue`] ended: committed
    /// (`Some`, the log's reservation now) or failed (`None`: the next
    /// reading asks again).
    pub fn extended(&mut self, until: Option<Timestamp>) {
        self.extending = false;
        if let Some(u) = until {
            self.durable(u);
        }
    }

    /// Start an extension outside [`Reservation::issue`] (a new leader
    /// reserving before it serves); false if one is running already.
    pub fn start_extending(&mut self) -> bool {
        !std::mem::replace(&mut self.extending, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pact_common::Hlc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    fn ms(m: u64) -> Timestamp {
        Timestamp::from_parts(m, 0)
    }

    #[test]
    fn nothing_is_issued_before_a_reservation_is_durable() {
        let mut r = Reservation::new();
        let i = r.issue(ms(10_000));
        assert_eq!(i.ts, None);
        assert_eq!(i.extend, Some(ms(10_000 + AHEAD_MS)));
        // One extension at a time.
        assert_eq!(
            r.issue(ms(10_001)),
            Issue {
                ts: None,
                extend: None
            }
        );
        r.extended(Some(ms(10_000 + AHEAD_MS)));
        assert_eq!(r.issue(ms(10_002)).ts, Some(ms(10_002)));
    }

    #[test]
    fn extends_in_the_background_before_the_window_runs_out() {
        let mut r = Reservation::new();
        r.durable(ms(13_000));
        // Plenty left: issue, no log append.
        assert_eq!(
            r.issue(ms(10_000)),
            Issue {
                ts: Some(ms(10_000)),
                extend: None
            }
        );
        // Less than REFILL_BELOW_MS left: issue, and extend meanwhile.
        let i = r.issue(ms(11_500));
        assert_eq!(i.ts, Some(ms(11_500)));
        assert_eq!(i.extend, Some(ms(11_500 + AHEAD_MS)));
        assert_eq!(r.issue(ms(11_600)).extend, None, "already extending");
        // The extension failed: the next reading asks again.
        r.extended(None);
        assert!(r.issue(ms(11_700)).extend.is_some());
        r.extended(Some(ms(14_700)));
        // At or past the limit: never issued.
        assert_eq!(r.issue(ms(14_700)).ts, None);
        assert_eq!(r.issue(ms(20_000)).ts, None);
        // A reservation never shrinks.
        r.durable(ms(1_000));
        assert_eq!(r.limit(), ms(14_700));
    }

    /// A leader issuing 5000 ids, one per millisecond of its clock.
    fn run(
        hlc: &Hlc,
        r: &mut Reservation,
        logged: &mut Timestamp,
        issued: &mut Vec<Timestamp>,
        wall: &AtomicU64,
    ) {
        for _ in 0..5_000 {
            let i = r.issue(hlc.now());
            if let Some(until) = i.extend {
                // The append commits; the log keeps the maximum.
                *logged = (*logged).max(until);
                r.extended(Some(*logged));
            }
            if let Some(ts) = i.ts {
                issued.push(ts);
            }
            wall.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The whole cycle without a cluster: a leader issues under its
    /// reservation, the group restarts with every clock 60 s behind, and
    /// the new leader, having moved its clock past the reservation it
    /// read from the log, issues only later ids.
    #[test]
    fn ids_stay_unique_and_increasing_across_a_restart_with_the_clock_behind() {
        let wall = Arc::new(AtomicU64::new(1_000_000));
        let clock = {
            let w = wall.clone();
            Arc::new(move || w.load(Ordering::SeqCst)) as pact_common::Clock
        };
        // The recovery log's reservation (the durable part of the state).
        let mut logged = Timestamp(0);
        let mut issued = Vec::new();
        let hlc = Hlc::new(clock.clone());
        let mut r = Reservation::new();
        run(&hlc, &mut r, &mut logged, &mut issued, &wall);
        let before = issued.len();
        assert!(before > 4_000, "issued {before} of 5000");
        assert!(issued.iter().all(|t| *t < logged));

        // Restart: memory is gone, the clock is 60 s behind.
        wall.fetch_sub(60_000, Ordering::SeqCst);
        let hlc = Hlc::new(clock);
        let mut r = Reservation::new();
        hlc.observe(logged);
        r.durable(logged);
        run(&hlc, &mut r, &mut logged, &mut issued, &wall);
        assert!(issued.len() > before + 4_000);
        assert!(
            issued.windows(2).all(|w| w[0] < w[1]),
            "ids repeated or went back"
        );
    }
}
