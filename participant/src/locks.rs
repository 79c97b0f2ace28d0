//! The lock table of a shard leader: shared and exclusive key locks, and
//! shared range locks for scans (so a scan's range cannot gain a phantom
//! key before the transaction ends). Pure data structure: no waiting, no
//! clocks; the transaction manager decides what a conflict means.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use pact_common::{Span, TxnId};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    Shared,
    Exclusive,
}

/// A shared lock on `[start, end)` (`end` None: to the end of the keys).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Range {
    pub start: Vec<u8>,
    pub end: Option<Vec<u8>>,
}

impl Range {
    #[cfg(test)]
    fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && self.end.as_deref().is_none_or(|e| key < e)
    }
}

/// Merge a transaction's range locks that overlap or touch, so that
/// scanning the same range again (a loop in an interactive transaction)
/// adds nothing: what it holds stays as many ranges as are disjoint.
fn coalesce(ranges: &mut Vec<Range>) {
    ranges.sort();
    let mut out: Vec<Range> = Vec::with_capacity(ranges.len());
    for r in ranges.drain(..) {
        match out.last_mut() {
            Some(last) if last.end.as_ref().is_none_or(|e| *e >= r.start) => {
                last.end = match (last.end.take(), r.end) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                };
            }
            _ => out.push(r),
        }
    }
    *ranges = out;
}

/// Which transactions' range locks cover each key: the key space cut at
/// the ends of every range lock into pieces, each piece with the set of
/// transactions covering all of it. An exclusive lock then finds the scans
/// it conflicts with in one lookup instead of testing every range lock of
/// every transaction. Pieces that no longer differ from the one before
/// them are merged away on grant and release, so the map holds at most two
/// pieces per live range lock. The price is paid by the scans instead: a
/// grant or release walks the pieces inside its range, and a piece lists
/// every transaction overlapping it, so many concurrent scans of the whole
/// key space make both grow with their number (as the old per-write test
/// did for every write).
#[derive(Default, Debug)]
struct Coverage {
    /// A piece from its key up to the next key (the last: to the end).
    pieces: BTreeMap<Vec<u8>, BTreeSet<TxnId>>,
}

impl Coverage {
    /// Who covers `key`.
    fn at(&self, key: &[u8]) -> Option<&BTreeSet<TxnId>> {
        self.before(Bound::Included(key))
    }

    /// The set of the last piece starting at or before `bound`.
    fn before(&self, bound: Bound<&[u8]>) -> Option<&BTreeSet<TxnId>> {
        self.pieces
            .range::<[u8], _>((Bound::Unbounded, bound))
            .next_back()
            .map(|(_, s)| s)
    }

    /// Make `at` the start of a piece (the piece it was in, split in two).
    fn cut(&mut self, at: &[u8]) {
        if !self.pieces.contains_key(at) {
            let s = self.at(at).cloned().unwrap_or_default();
            self.pieces.insert(at.to_vec(), s);
        }
    }

    fn span(r: &Range) -> (Bound<&[u8]>, Bound<&[u8]>) {
        let upper = r.end.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        (Bound::Included(r.start.as_slice()), upper)
    }

    fn add(&mut self, txn: TxnId, r: &Range) {
        self.cut(&r.start);
        if let Some(e) = &r.end {
            self.cut(e);
        }
        for (_, s) in self.pieces.range_mut::<[u8], _>(Self::span(r)) {
            s.insert(txn);
        }
        self.merge(r);
    }

    fn remove(&mut self, txn: TxnId, r: &Range) {
        for (_, s) in self.pieces.range_mut::<[u8], _>(Self::span(r)) {
            s.remove(&txn);
        }
        self.merge(r);
    }

    /// After `r` was added or removed, its own cuts, and any inside it, may
    /// separate equal pieces (or start an empty first one): merge them.
    fn merge(&mut self, r: &Range) {
        let upper = r.end.as_deref().map_or(Bound::Unbounded, Bound::Included);
        let cuts: Vec<Vec<u8>> = self
            .pieces
            .range::<[u8], _>((Bound::Included(r.start.as_slice()), upper))
            .map(|(k, _)| k.clone())
            .collect();
        for k in cuts {
            let same = match self.before(Bound::Excluded(&k)) {
                Some(prev) => Some(prev) == self.pieces.get(&k),
                None => self.pieces.get(&k).is_some_and(BTreeSet::is_empty),
            };
            if same {
                self.pieces.remove(&k);
            }
        }
    }
}

#[derive(Default, Debug)]
struct KeyLock {
    shared: BTreeSet<TxnId>,
    exclusive: Option<TxnId>,
}

#[derive(Default, Debug)]
pub struct LockTable {
    keys: BTreeMap<Vec<u8>, KeyLock>,
    ranges: BTreeMap<TxnId, Vec<Range>>,
    /// The same range locks, indexed by key.
    covered: Coverage,
    /// Keys each transaction holds, so release is proportional to what it holds.
    held: BTreeMap<TxnId, BTreeSet<Vec<u8>>>,
    /// Releases that freed something, ever: a waiter needs waking only
    /// when this moved.
    releases: u64,
}

impl LockTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Take a key lock if no other transaction's lock conflicts; otherwise
    /// return the conflicting holders (sorted, deduplicated). Re-entrant; a
    /// shared lock upgrades to exclusive when its holder is the only one.
    pub fn try_key(&mut self, txn: TxnId, key: &[u8], mode: Mode) -> Result<(), Vec<TxnId>> {
        let mut blockers = BTreeSet::new();
        if let Some(l) = self.keys.get(key) {
            if let Some(x) = l.exclusive {
                if x != txn {
                    blockers.insert(x);
                }
            }
            if mode == Mode::Exclusive {
                blockers.extend(l.shared.iter().copied().filter(|t| *t != txn));
            }
        }
        if mode == Mode::Exclusive {
            if let Some(ts) = self.covered.at(key) {
                blockers.extend(ts.iter().copied().filter(|t| *t != txn));
            }
        }
        if !blockers.is_empty() {
            return Err(blockers.into_iter().collect());
        }
        let l = self.keys.entry(key.to_vec()).or_default();
        match mode {
            Mode::Shared => {
                if l.exclusive != Some(txn) {
                    l.shared.insert(txn);
                }
            }
            Mode::Exclusive => {
                l.shared.remove(&txn);
                l.exclusive = Some(txn);
            }
        }
        self.held.entry(txn).or_default().insert(key.to_vec());
        Ok(())
    }

    /// Take a shared range lock; it conflicts with other transactions'
    /// exclusive locks on keys inside the range.
    pub fn try_range(&mut self, txn: TxnId, range: Range) -> Result<(), Vec<TxnId>> {
        if range.end.as_ref().is_some_and(|e| *e <= range.start) {
            // An empty range covers no key: nothing to lock.
            return Ok(());
        }
        let upper = match &range.end {
            Some(e) => std::ops::Bound::Excluded(e.clone()),
            None => std::ops::Bound::Unbounded,
        };
        let blockers: BTreeSet<TxnId> = self
            .keys
            .range((std::ops::Bound::Included(range.start.clone()), upper))
            .filter_map(|(_, l)| l.exclusive.filter(|x| *x != txn))
            .collect();
        if !blockers.is_empty() {
            return Err(blockers.into_iter().collect());
        }
        self.covered.add(txn, &range);
        let held = self.ranges.entry(txn).or_default();
        held.push(range);
        coalesce(held);
        Ok(())
    }

    /// Release everything `txn` holds. Returns whether it held anything.
    pub fn release_all(&mut self, txn: TxnId) -> bool {
        let ranges = self.ranges.remove(&txn);
        let mut any = ranges.is_some();
        for r in ranges.iter().flatten() {
            self.covered.remove(txn, r);
        }
        if let Some(keys) = self.held.remove(&txn) {
            any = true;
            for k in keys {
                let empty = match self.keys.get_mut(&k) {
                    Some(l) => {
                        l.shared.remove(&txn);
                        if l.exclusive == Some(txn) {
                            l.exclusive = None;
                        }
                        l.shared.is_empty() && l.exclusive.is_none()
                    }
                    None => false,
                };
                if empty {
                    self.keys.remove(&k);
                }
            }
        }
        if any {
            self.releases = self.releases.wrapping_add(1);
        }
        any
    }

    /// Drop every lock (a leadership change). Counts as a release, so the
    /// count keeps moving forward: a waiter comparing it with what it saw
    /// before must not find it back at an old value.
    pub fn clear(&mut self) {
        self.keys.clear();
        self.ranges.clear();
        self.covered = Coverage::default();
        self.held.clear();
        self.releases = self.releases.wrapping_add(1);
    }

    /// How many releases freed something so far (wrapping): compared
    /// before and after a step, whether it freed any lock.
    pub fn releases(&self) -> u64 {
        self.releases
    }

    /// Keys `txn` holds exclusively, sorted.
    pub fn exclusive_keys(&self, txn: TxnId) -> Vec<Vec<u8>> {
        self.held
            .get(&txn)
            .map(|ks| {
                ks.iter()
                    .filter(|k| self.keys.get(*k).is_some_and(|l| l.exclusive == Some(txn)))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every transaction holding a lock on a key of `span` or a range
    /// lock that may cover one, sorted.
    pub fn holders_in(&self, span: &Span) -> BTreeSet<TxnId> {
        let mut out = BTreeSet::new();
        for (k, l) in &self.keys {
            if span.contains(k) {
                out.extend(l.shared.iter().copied());
                out.extend(l.exclusive);
            }
        }
        for (t, rs) in &self.ranges {
            if rs.iter().any(|r| span.meets(&r.start, r.end.as_deref())) {
                out.insert(*t);
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.ranges.is_empty()
    }

    /// How big the table is: keys locked, and range locks held.
    pub fn size(&self) -> (usize, usize) {
        (self.keys.len(), self.ranges.values().map(Vec::len).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pact_common::Timestamp;

    fn t(n: u64) -> TxnId {
        TxnId {
            ts: Timestamp(n),
            node: 1,
            group: 1,
        }
    }

    /// A transaction scanning the same or touching ranges again holds one
    /// range for them; disjoint ones stay apart; an unbounded one takes
    /// in everything after its start. The merged range still blocks
    /// writers everywhere it did.
    #[test]
    fn a_transactions_range_locks_merge_when_they_overlap() {
        let r = |a: &str, b: Option<&str>| Range {
            start: a.as_bytes().to_vec(),
            end: b.map(|b| b.as_bytes().to_vec()),
        };
        let mut l = LockTable::new();
        for _ in 0..100 {
            l.try_range(t(1), r("b", Some("d"))).unwrap();
        }
        assert_eq!(l.ranges[&t(1)], vec![r("b", Some("d"))]);
        l.try_range(t(1), r("d", Some("f"))).unwrap();
        l.try_range(t(1), r("x", Some("y"))).unwrap();
        l.try_range(t(1), r("c", Some("e"))).unwrap();
        assert_eq!(l.ranges[&t(1)], vec![r("b", Some("f")), r("x", Some("y"))]);
        l.try_range(t(1), r("e", None)).unwrap();
        assert_eq!(l.ranges[&t(1)], vec![r("b", None)]);
        for k in ["b", "e", "z"] {
            assert_eq!(
                l.try_key(t(2), k.as_bytes(), Mode::Exclusive),
                Err(vec![t(1)])
            );
        }
        assert!(l.try_key(t(2), b"a", Mode::Exclusive).is_ok());
    }

    /// The key index of range locks agrees with testing every range lock,
    /// through random grants and releases (seeded), and shrinks back to
    /// nothing once every range lock is gone.
    #[test]
    fn the_range_index_matches_every_range_lock() {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(12);
        let mut keys: Vec<Vec<u8>> = (b'a'..=b'h')
            .flat_map(|c| [vec![c], vec![c, 0], vec![c, b'5']])
            .collect();
        // The empty key and keys outside every bounded range.
        keys.extend([vec![], vec![0], b"z".to_vec()]);
        let pick = |rng: &mut StdRng| keys[rng.random_range(0..keys.len())].clone();
        for round in 0..200 {
            let mut l = LockTable::new();
            for step in 0..60 {
                let txn = t(rng.random_range(1..6));
                match rng.random_range(0..4) {
                    0 | 1 => {
                        let start = pick(&mut rng);
                        let end = rng.random_bool(0.8).then(|| pick(&mut rng));
                        let _ = l.try_range(txn, Range { start, end });
                    }
                    2 => {
                        let _ = l.try_key(txn, &pick(&mut rng), Mode::Exclusive);
                    }
                    _ => {
                        l.release_all(txn);
                    }
                }
                for k in &keys {
                    let naive: BTreeSet<TxnId> = l
                        .ranges
                        .iter()
                        .filter(|(_, rs)| rs.iter().any(|r| r.contains(k)))
                        .map(|(t, _)| *t)
                        .collect();
                    let indexed = l.covered.at(k).cloned().unwrap_or_default();
                    assert_eq!(indexed, naive, "round {round} step {step} key {k:?}");
                }
                let (_, n) = l.size();
                assert!(l.covered.pieces.len() <= 2 * n, "round {round} step {step}");
            }
            if round % 2 == 0 {
                for n in 1..6 {
                    l.release_all(t(n));
                }
            } else {
                l.clear();
            }
            assert!(l.covered.pieces.is_empty() && l.is_empty());
        }
    }

    #[test]
    fn the_release_count_moves_only_when_a_release_frees_something() {
        let mut l = LockTable::new();
        assert!(l.try_key(t(1), b"a", Mode::Exclusive).is_ok());
        assert!(l
            .try_range(
                t(2),
                Range {
                    start: b"b".to_vec(),
                    end: None
                }
            )
            .is_ok());
        let n = l.releases();
        assert!(l.try_key(t(3), b"c", Mode::Shared).is_ok());
        assert_eq!(l.releases(), n, "a grant frees nothing");
        assert!(!l.release_all(t(9)));
        assert_eq!(l.releases(), n, "nothing held, nothing freed");
        assert!(l.release_all(t(1)));
        assert_eq!(l.releases(), n + 1);
        assert!(l.release_all(t(2)));
        assert_eq!(l.releases(), n + 2, "a range lock counts too");
        assert!(l.try_key(t(4), b"d", Mode::Exclusive).is_ok());
        l.clear();
        assert!(l.is_empty());
        assert_eq!(
            l.releases(),
            n + 3,
            "clearing the table counts as a release"
        );
    }

    #[test]
    fn shared_locks_share_and_exclusive_excludes() {
        let mut l = LockTable::new();
        assert!(l.try_key(t(1), b"a", Mode::Shared).is_ok());
        assert!(l.try_key(t(2), b"a", Mode::Shared).is_ok());
        assert_eq!(
            l.try_key(t(3), b"a", Mode::Exclusive),
            Err(vec![t(1), t(2)])
        );
        // Upgrade is refused while another reader holds it...
        assert_eq!(l.try_key(t(1), b"a", Mode::Exclusive), Err(vec![t(2)]));
        l.release_all(t(2));
        // ...and granted once the upgrader is alone.
        assert!(l.try_key(t(1), b"a", Mode::Exclusive).is_ok());
        assert_eq!(l.try_key(t(2), b"a", Mode::Shared), Err(vec![t(1)]));
        // Re-entrant.
        assert!(l.try_key(t(1), b"a", Mode::Shared).is_ok());
        assert!(l.try_key(t(1), b"a", Mode::Exclusive).is_ok());
        assert_eq!(l.exclusive_keys(t(1)), vec![b"a".to_vec()]);
        assert!(l.release_all(t(1)));
        assert!(l.is_empty());
        assert!(!l.release_all(t(1)));
    }

    #[test]
    fn range_locks_block_writes_inside_only() {
        let mut l = LockTable::new();
        let r = Range {
            start: b"b".to_vec(),
            end: Some(b"d".to_vec()),
        };
        assert!(l.try_range(t(1), r).is_ok());
        assert_eq!(l.try_key(t(2), b"c", Mode::Exclusive), Err(vec![t(1)]));
        assert_eq!(l.try_key(t(2), b"b", Mode::Exclusive), Err(vec![t(1)]));
        assert!(
            l.try_key(t(2), b"d", Mode::Exclusive).is_ok(),
            "end is exclusive"
        );
        assert!(l.try_key(t(2), b"a", Mode::Exclusive).is_ok());
        assert!(
            l.try_key(t(2), b"c", Mode::Shared).is_ok(),
            "reads inside a scanned range are fine"
        );
        // A scan over a key someone writes waits for the writer.
        let r2 = Range {
            start: b"a".to_vec(),
            end: None,
        };
        assert_eq!(l.try_range(t(3), r2.clone()), Err(vec![t(2)]));
        l.release_all(t(2));
        assert!(l.try_range(t(3), r2).is_ok());
        assert_eq!(l.size(), (0, 2), "the ranges of t1 and t3");
        l.release_all(t(1));
        l.release_all(t(3));
        assert!(l.is_empty());
        assert_eq!(l.size(), (0, 0));
        // Inverted or empty ranges lock nothing and never panic.
        assert!(l.try_key(t(4), b"k", Mode::Exclusive).is_ok());
        let inverted = Range {
            start: b"z".to_vec(),
            end: Some(b"a".to_vec()),
        };
        assert!(l.try_range(t(5), inverted).is_ok());
        assert!(l.try_key(t(6), b"b", Mode::Shared).is_ok());
    }
}
