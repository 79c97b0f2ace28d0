//! Transactions the leader handed to its owner task to commit, and what
//! became of them: a bounded memory of the latest [`HANDED_KEPT`].
//!
//! Why it exists: once the owner task has a commit, the transaction's
//! session is gone, and without this a late request of the same
//! transaction (a read a raw-gRPC client sent beside its commit, a
//! heartbeat, a second `Commit` call) found nothing and was told "unknown
//! transaction", an abort, while the commit went on and may have
//! committed. With it, the leader tells such a request what is true: the
//! transaction is committing or committed and the request took no part in
//! it, or it aborted, and why. A duplicate `Commit` waits on the outcome
//! here instead of polling `TxnStatus`.
//!
//! Invariants:
//! - An entry is made under the sessions lock in the same step that marks
//!   the session committing, so there is no moment at which a handed-over
//!   transaction has neither a session nor an entry (until the entry is
//!   evicted, [`HANDED_KEPT`] commits later).
//! - An outcome, once set, is final for this leader's term; a leadership
//!   change settles every entry still in flight as `Unknown` (their
//!   commits' callers hear the same) and forgets them all: a later term
//!   learns outcomes from the recovery log.
//!
//! Failure: past the bound, or after a leadership change, a late request
//! hears "unknown transaction" again; the outcome is always in `TxnStatus`.

use std::collections::{HashMap, VecDeque};

use pact_common::TxnId;
use tokio::sync::watch;

use crate::machine::Outcome;

/// How many settled transactions a leader remembers (a few seconds of
/// commits at full speed; about half a kilobyte each, mostly the watch
/// channel). Those still in flight are never forgotten for the bound:
/// `limits.max_open_txns` caps them already.
pub const HANDED_KEPT: usize = 8_192;

/// Where a handed-over transaction stands: `None` while its commit is in
/// flight, then its outcome.
pub type Cell = watch::Receiver<Option<Outcome>>;

/// The latest handed-over transactions, oldest first.
pub struct Handed {
    cells: HashMap<TxnId, watch::Sender<Option<Outcome>>>,
    order: VecDeque<TxnId>,
    kept: usize,
}

impl Handed {
    pub fn new(kept: usize) -> Self {
        Handed {
            cells: HashMap::new(),
            order: VecDeque::new(),
            kept: kept.max(1),
        }
    }

    /// `txn` was handed to the owner task; past the bound, forgets the
    /// oldest settled entry. One in flight is kept (moved to the back): a
    /// request beside a long commit forgotten here would hear "unknown
    /// transaction", an abort, about a transaction that may commit.
    pub fn insert(&mut self, txn: TxnId) {
        if self.cells.contains_key(&txn) {
            return;
        }
        self.cells.insert(txn, watch::channel(None).0);
        self.order.push_back(txn);
        let mut looked = 0;
        while self.order.len() > self.kept && looked < self.order.len() {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            let settled = self.cells.get(&old).is_none_or(|c| c.borrow().is_some());
            if settled {
                self.cells.remove(&old);
            } else {
                self.order.push_back(old);
                looked += 1;
            }
        }
    }

    /// `txn`'s commit ended with `outcome` (kept only if it was handed
    /// over and is still remembered; the first outcome stays).
    pub fn settle(&mut self, txn: TxnId, outcome: &Outcome) {
        if let Some(cell) = self.cells.get(&txn) {
            cell.send_if_modified(|o| {
                if o.is_none() {
                    *o = Some(outcome.clone());
                    true
                } else {
                    false
                }
            });
        }
    }

    /// None if `txn` was not handed over (or is forgotten); otherwise
    /// where it stands.
    pub fn get(&self, txn: TxnId) -> Option<Option<Outcome>> {
        self.cells.get(&txn).map(|c| c.borrow().clone())
    }

    /// A cell to wait on for `txn`'s outcome, if it was handed over.
    pub fn watch(&self, txn: TxnId) -> Option<Cell> {
        self.cells.get(&txn).map(|c| c.subscribe())
    }

    /// Leadership changed: whatever is still in flight is unknown here,
    /// and everything is forgotten.
    pub fn clear(&mut self, why: &str) {
        for txn in self.order.drain(..) {
            if let Some(cell) = self.cells.remove(&txn) {
                cell.send_if_modified(|o| {
                    if o.is_none() {
                        *o = Some(Outcome::Unknown(why.to_string()));
                        true
                    } else {
                        false
                    }
                });
            }
        }
        self.cells.clear();
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pact_common::{Abort, AbortKind, Timestamp};

    fn txn(n: u64) -> TxnId {
        TxnId {
            group: 1,
            node: 1,
            ts: Timestamp(n),
        }
    }

    #[test]
    fn in_flight_until_settled_and_the_first_outcome_stays() {
        let mut h = Handed::new(4);
        assert_eq!(h.get(txn(1)), None);
        h.insert(txn(1));
        assert_eq!(h.get(txn(1)), Some(None));
        h.settle(txn(1), &Outcome::Committed);
        h.settle(
            txn(1),
            &Outcome::Aborted(Abort::new(AbortKind::Rollback, "late")),
        );
        assert_eq!(h.get(txn(1)), Some(Some(Outcome::Committed)));
        // Not handed over: settling it keeps nothing.
        h.settle(txn(2), &Outcome::Committed);
        assert_eq!(h.get(txn(2)), None);
    }

    #[test]
    fn the_oldest_settled_go_past_the_bound_and_none_in_flight() {
        let mut h = Handed::new(3);
        for n in 1..=3 {
            h.insert(txn(n));
        }
        h.settle(txn(2), &Outcome::Committed);
        h.settle(txn(3), &Outcome::Committed);
        // 1 is in flight: the oldest settled one goes instead.
        h.insert(txn(4));
        assert_eq!(h.len(), 3);
        assert_eq!(h.get(txn(1)), Some(None));
        assert_eq!(h.get(txn(2)), None);
        h.insert(txn(5));
        assert_eq!(h.get(txn(3)), None);
        assert_eq!(h.get(txn(1)), Some(None));
        // Nothing settled is left to forget: over the bound, all kept.
        h.insert(txn(6));
        assert_eq!(h.len(), 4);
        assert_eq!(h.get(txn(1)), Some(None));
        // A second insert of a remembered transaction changes nothing.
        h.insert(txn(6));
        assert_eq!(h.len(), 4);
        // Once settled, the oldest go again, down to the bound.
        for n in [1, 4, 5, 6] {
            h.settle(txn(n), &Outcome::Committed);
        }
        h.insert(txn(7));
        assert_eq!(h.len(), 3);
        assert_eq!(h.get(txn(7)), Some(None));
    }

    #[tokio::test]
    async fn a_waiter_hears_the_outcome_or_unknown_at_a_leadership_change() {
        let mut h = Handed::new(8);
        h.insert(txn(1));
        h.insert(txn(2));
        h.settle(txn(2), &Outcome::Committed);
        let mut first = h.watch(txn(1)).unwrap();
        let mut second = h.watch(txn(2)).unwrap();
        h.clear("leadership changed");
        assert!(h.is_empty());
        let o = first.wait_for(Option::is_some).await.unwrap().clone();
        assert_eq!(o, Some(Outcome::Unknown("leadership changed".into())));
        let o = second.wait_for(Option::is_some).await.unwrap().clone();
        assert_eq!(o, Some(Outcome::Committed));
    }
}
