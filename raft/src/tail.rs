//! The newest entries of each group's log, kept in memory so the reads
//! that follow an append (replication to the followers, then the apply
//! of the committed entries) need no fjall call and no blocking-pool
//! round trip.
//!
//! **Invariant: the cache never holds an entry fjall does not hold under
//! the same index**, so a read it serves is the read fjall would serve.
//! - Entries go in only after their write is visible in fjall
//!   ([`Tail::push`]); as an append is queued, the cached entries from its
//!   first index on (the ones it replaces) are dropped.
//! - Every delete of log keys, whoever queues it (truncation, purge, a
//!   wiped group), drops the entries it covers as it takes its place in
//!   the writer's queue, before the writer runs it
//!   ([`Tails::forget_replaced`], called by `NodeStore` under the lock that
//!   orders the queue).
//! - Each delete also bumps the group's generation, and an append reads
//!   the generation under that same lock as it is queued: if a delete
//!   was queued after it, its entries stay out of the tail (the delete
//!   may run after them and remove them).
//! - A poisoned store's tail answers nothing (`LogStore`), as fjall does.
//!
//! A range the cache does not hold whole is read from fjall, so a missing
//! entry costs a read, never a wrong answer.
//!
//! Bounded per group by [`MAX_TAIL_ENTRIES`] and [`MAX_TAIL_BYTES`]
//! (encoded bytes): the oldest entries are dropped first.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use crate::store::{group_end, group_prefix, Op, Space};
use crate::types::Entry;

/// Entries kept per group at most.
pub(crate) const MAX_TAIL_ENTRIES: usize = 1024;
/// Encoded bytes of the entries kept per group at most.
pub(crate) const MAX_TAIL_BYTES: usize = 2 << 20;

/// Drop the oldest of `entries` (with their encoded sizes, totalling
/// `bytes`) until they are within the tail's bounds.
pub(crate) fn keep_newest(entries: &mut VecDeque<(Entry, usize)>, bytes: &mut usize) {
    while entries.len() > MAX_TAIL_ENTRIES || *bytes > MAX_TAIL_BYTES {
        match entries.pop_front() {
            Some((_, b)) => *bytes -= b,
            None => break,
        }
    }
}

/// Every group's tail on one node, by group id.
#[derive(Default)]
pub(crate) struct Tails {
    groups: Mutex<HashMap<u64, Arc<Mutex<Tail>>>>,
}

impl Tails {
    fn registry(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Mutex<Tail>>>> {
        // The map is whole after any panic elsewhere: nothing panics
        // half-way through changing it.
        self.groups.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The tail of `group` (made empty on first use).
    pub(crate) fn of(&self, group: u64) -> Arc<Mutex<Tail>> {
        self.registry().entry(group).or_default().clone()
    }

    /// `ops` are about to be queued: drop every cached entry a delete
    /// among them covers, in any group, and every entry a log put
    /// replaces (from the job's first put of a group on). Called with the
    /// job's place in the queue taken and under the queue's order lock,
    /// so a generation read in the same step (see
    /// `NodeStore::submit_append`) counts exactly the jobs touching the
    /// log that were queued before it.
    pub(crate) fn forget_replaced(&self, ops: &[Op]) {
        // Per group, the lowest index this job puts.
        let mut puts: Vec<(u64, u64)> = Vec::new();
        for op in ops {
            match op {
                Op::DeleteRange(Space::Log, from, to) => self.forget_keys(from, to),
                Op::Delete(Space::Log, key) => {
                    let mut end = key.clone();
                    end.push(0);
                    self.forget_keys(key, &end);
                }
                Op::Put(Space::Log, key, _) => {
                    let (Some(g), Some(i)) = (key.get(..8), key.get(8..16)) else {
                        // Not a log key's shape: forget everything after it.
                        self.forget_keys(key, &[0xff; 17]);
                        continue;
                    };
                    let g = u64::from_be_bytes(g.try_into().unwrap_or([0; 8]));
                    let i = u64::from_be_bytes(i.try_into().unwrap_or([0; 8]));
                    match puts.iter_mut().find(|(pg, _)| *pg == g) {
                        Some((_, low)) => *low = (*low).min(i),
                        None => puts.push((g, i)),
                    }
                }
                _ => {}
            }
        }
        for (group, low) in puts {
            let from = crate::store::log_key(group, low);
            self.forget_keys(&from, &group_end(group));
        }
    }

    /// Log keys `[from, to)` are deleted: each group's tail drops the
    /// indexes of its own that the range covers.
    fn forget_keys(&self, from: &[u8], to: &[u8]) {
        let tails: Vec<(u64, Arc<Mutex<Tail>>)> = self
            .registry()
            .iter()
            .map(|(g, t)| (*g, t.clone()))
            .collect();
        for (group, tail) in tails {
            let (lo, hi) = (group_prefix(group), group_end(group));
            if to <= lo.as_slice() || from >= hi.as_slice() {
                continue;
            }
            // A key inside the group: its index (a shorter key sorts
            // before index 0 of the group, a longer one after its index).
            // A key between the bounds that does not start with the
            // group's prefix is shorter than it and sorts after every key
            // of the group.
            let past = |k: &[u8]| !k.starts_with(lo.as_slice());
            if past(from) && from > lo.as_slice() {
                continue;
            }
            let index = |k: &[u8]| -> u64 {
                let mut b = [0u8; 8];
                let tail = k.get(8..).unwrap_or(&[]);
                let n = tail.len().min(8);
                b[..n].copy_from_slice(&tail[..n]);
                let i = u64::from_be_bytes(b);
                if tail.len() > 8 {
                    i.saturating_add(1)
                } else {
                    i
                }
            };
            let start = if from <= lo.as_slice() {
                0
            } else {
                index(from)
            };
            let end = if to >= hi.as_slice() || past(to) {
                u64::MAX
            } else {
                index(to)
            };
            // A delete of the whole group wipes the replica: what it
            // purged is gone too (a replica hosted again in this process
            // starts from whatever index its snapshot brings).
            let whole = from <= lo.as_slice() && to >= hi.as_slice();
            match tail.lock() {
                Ok(mut t) => {
                    t.forget(start, end);
                    if whole {
                        t.purged = 0;
                    }
                }
                // Poisoned mid-change: nothing may be served from it.
                Err(p) => p.into_inner().disable(),
            }
        }
    }
}

/// One group's newest entries, contiguous by index.
#[derive(Default)]
pub(crate) struct Tail {
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
    /// Bumped by deletes that may remove the newest entries.
    generation: u64,
    /// Set if the tail can no longer be trusted (a poisoned lock).
    disabled: bool,
    /// The last log index purged, as far as this process has seen (0:
    /// none): what replication can no longer read (see `network`).
    pub(crate) purged: u64,
}

impl Tail {
    /// The generation to hand back to [`Tail::push`] once the entries of
    /// an append are visible.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    fn first(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    fn last(&self) -> Option<u64> {
        self.entries.back().map(|(e, _)| e.log_id.index)
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    fn pop_front(&mut self) {
        if let Some((_, b)) = self.entries.pop_front() {
            self.bytes -= b;
        }
    }

    fn pop_back(&mut self) {
        if let Some((_, b)) = self.entries.pop_back() {
            self.bytes -= b;
        }
    }

    fn disable(&mut self) {
        self.clear();
        self.disabled = true;
    }

    /// Entries (with their encoded sizes) that an append made visible,
    /// in index order; ignored if any log delete was queued since
    /// `generation` was read.
    pub(crate) fn push(&mut self, generation: u64, new: Vec<(Entry, usize)>) {
        if self.disabled || generation != self.generation {
            return;
        }
        let Some(first_new) = new.first().map(|(e, _)| e.log_id.index) else {
            return;
        };
        match (self.first(), self.last()) {
            (Some(first), Some(last))
                if first_new > first && first_new <= last.saturating_add(1) =>
            {
                // Overwrites from `first_new` on (a follower replacing a
                // conflicting suffix): what it replaces goes.
                while self.last().is_some_and(|l| l >= first_new) {
                    self.pop_back();
                }
            }
            (None, None) => {}
            // Not contiguous with what is held: start again from these.
            _ => self.clear(),
        }
        let mut expected = first_new;
        for (e, b) in new {
            if e.log_id.index != expected {
                // Not contiguous within the append itself: keep nothing
                // rather than a tail with a hole.
                self.clear();
                return;
            }
            expected = expected.saturating_add(1);
            self.bytes += b;
            self.entries.push_back((e, b));
        }
        keep_newest(&mut self.entries, &mut self.bytes);
    }

    /// Drop indexes `[from, to)`. Any delete also keeps out the entries
    /// of appends queued before it and not yet in: they may be among the
    /// deleted ones.
    pub(crate) fn forget(&mut self, from: u64, to: u64) {
        self.generation = self.generation.wrapping_add(1);
        let (Some(first), Some(last)) = (self.first(), self.last()) else {
            return;
        };
        if to <= first || from > last {
            return;
        }
        if from <= first {
            while self.first().is_some_and(|f| f < to) {
                self.pop_front();
            }
        } else if to > last {
            while self.last().is_some_and(|l| l >= from) {
                self.pop_back();
            }
        } else {
            // A hole in the middle: no delete of Pact's does this.
            self.clear();
        }
    }

    /// Entries `[start, end)` if every one of them is held, at most
    /// `max_bytes` of them (but at least one); None to read fjall instead.
    pub(crate) fn get(&self, start: u64, end: u64, max_bytes: usize) -> Option<Vec<Entry>> {
        let first = self.first()?;
        let last = self.last()?;
        if self.disabled || start < first || end <= start || end > last.saturating_add(1) {
            return None;
        }
        let skip = usize::try_from(start - first).ok()?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for (e, b) in self.entries.iter().skip(skip) {
            if e.log_id.index >= end || (!out.is_empty() && bytes.saturating_add(*b) > max_bytes) {
                break;
            }
            bytes = bytes.saturating_add(*b);
            out.push(e.clone());
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::log_key;
    use openraft::impls::leader_id_adv::LeaderId;
    use openraft::EntryPayload;

    fn entry(term: u64, index: u64) -> (Entry, usize) {
        let log_id = crate::types::LogId::new(LeaderId { term, node_id: 1 }, index);
        let e = Entry {
            log_id,
            payload: EntryPayload::Blank,
        };
        (e, 100)
    }

    fn run(from: u64, to: u64, term: u64) -> Vec<(Entry, usize)> {
        (from..to).map(|i| entry(term, i)).collect()
    }

    /// How many of group `g`'s entries `[from, to)` its tail serves.
    fn held(tails: &Tails, g: u64, from: u64, to: u64) -> Option<usize> {
        let t = tails.of(g);
        let t = t.lock().unwrap();
        t.get(from, to, usize::MAX).map(|v| v.len())
    }

    fn indexes(v: Option<Vec<Entry>>) -> Option<Vec<(u64, u64)>> {
        v.map(|v| {
            v.iter()
                .map(|e| (e.log_id.index, e.log_id.leader_id.term))
                .collect()
        })
    }

    #[test]
    fn serves_only_ranges_it_holds_whole() {
        let mut t = Tail::default();
        t.push(0, run(5, 10, 1));
        assert_eq!(indexes(t.get(5, 10, usize::MAX)).map(|v| v.len()), Some(5));
        assert_eq!(indexes(t.get(7, 9, usize::MAX)), Some(vec![(7, 1), (8, 1)]));
        assert_eq!(
            t.get(4, 6, usize::MAX).map(|v| v.len()),
            None,
            "starts before"
        );
        assert_eq!(
            t.get(8, 11, usize::MAX).map(|v| v.len()),
            None,
            "runs past the end"
        );
        // A byte bound still returns at least one entry.
        assert_eq!(t.get(5, 10, 250).map(|v| v.len()), Some(2));
        assert_eq!(t.get(5, 10, 1).map(|v| v.len()), Some(1));
    }

    #[test]
    fn a_suffix_overwrite_replaces_the_old_entries() {
        let mut t = Tail::default();
        t.push(0, run(1, 6, 1));
        t.push(0, run(4, 5, 2));
        assert_eq!(
            indexes(t.get(1, 5, usize::MAX)),
            Some(vec![(1, 1), (2, 1), (3, 1), (4, 2)])
        );
        assert_eq!(
            t.get(5, 6, usize::MAX).map(|v| v.len()),
            None,
            "5 of term 1 is gone"
        );
        // A gap starts the tail again.
        t.push(0, run(9, 11, 2));
        assert_eq!(t.get(4, 5, usize::MAX).map(|v| v.len()), None);
        assert_eq!(t.get(9, 11, usize::MAX).map(|v| v.len()), Some(2));
    }

    #[test]
    fn a_truncation_queued_during_an_append_keeps_its_entries_out() {
        let tails = Tails::default();
        let tail = tails.of(3);
        tail.lock().unwrap().push(0, run(1, 4, 1));
        // An append of 4..6 reads the generation, then (before its write
        // is visible) a truncation after 3 is queued.
        let generation = tail.lock().unwrap().generation();
        tails.forget_replaced(&[Op::DeleteRange(Space::Log, log_key(3, 4), group_end(3))]);
        tail.lock().unwrap().push(generation, run(4, 6, 1));
        assert_eq!(
            tail.lock().unwrap().get(4, 5, usize::MAX).map(|v| v.len()),
            None
        );
        assert_eq!(
            tail.lock().unwrap().get(1, 4, usize::MAX).map(|v| v.len()),
            Some(3)
        );
        // A later append goes in.
        let generation = tail.lock().unwrap().generation();
        tail.lock().unwrap().push(generation, run(4, 5, 2));
        assert_eq!(
            indexes(tail.lock().unwrap().get(3, 5, usize::MAX)),
            Some(vec![(3, 1), (4, 2)])
        );
    }

    #[test]
    fn a_purge_drops_the_head_and_fences_appends_in_flight() {
        let tails = Tails::default();
        let tail = tails.of(1);
        tail.lock().unwrap().push(0, run(1, 10, 1));
        let generation = tail.lock().unwrap().generation();
        tails.forget_replaced(&[Op::DeleteRange(Space::Log, log_key(1, 0), log_key(1, 6))]);
        {
            let t = tail.lock().unwrap();
            assert_eq!(
                t.get(5, 7, usize::MAX).map(|v| v.len()),
                None,
                "5 was purged"
            );
            assert_eq!(t.get(6, 10, usize::MAX).map(|v| v.len()), Some(4));
        }
        // An append queued before the purge may hold purged indexes: out.
        tail.lock().unwrap().push(generation, run(3, 5, 1));
        assert_eq!(
            tail.lock().unwrap().get(3, 5, usize::MAX).map(|v| v.len()),
            None
        );
        let generation = tail.lock().unwrap().generation();
        tail.lock().unwrap().push(generation, run(10, 12, 1));
        assert_eq!(
            tail.lock().unwrap().get(6, 12, usize::MAX).map(|v| v.len()),
            Some(6)
        );
    }

    #[test]
    fn deletes_of_any_shape_reach_every_group_they_cover() {
        let tails = Tails::default();
        for g in 1..=4 {
            tails.of(g).lock().unwrap().push(0, run(1, 6, 1));
        }
        let held = |g: u64, from: u64, to: u64| held(&tails, g, from, to);
        // One key.
        tails.forget_replaced(&[Op::Delete(Space::Log, log_key(1, 5))]);
        assert_eq!(held(1, 1, 5), Some(4));
        assert_eq!(held(1, 5, 6), None);
        // A range over groups 2 and 3, from the middle of 2 to the middle of 3.
        tails.forget_replaced(&[Op::DeleteRange(Space::Log, log_key(2, 4), log_key(3, 3))]);
        assert_eq!(held(2, 1, 4), Some(3));
        assert_eq!(held(2, 4, 5), None);
        assert_eq!(held(3, 1, 2), None);
        assert_eq!(held(3, 3, 6), Some(3));
        // Other spaces' deletes leave the log's tails alone.
        tails.forget_replaced(&[Op::DeleteRange(Space::Sm, vec![0], vec![0xff; 9])]);
        assert_eq!(held(4, 1, 6), Some(5));
        // A short start key: everything from the start.
        tails.forget_replaced(&[Op::DeleteRange(Space::Log, vec![], group_end(4))]);
        assert_eq!(held(4, 1, 2), None);
    }

    #[test]
    fn puts_drop_what_they_replace_and_short_keys_sort_after_the_group() {
        let tails = Tails::default();
        for g in [1, 255] {
            tails.of(g).lock().unwrap().push(0, run(1, 6, 1));
        }
        let held = |g: u64, from: u64, to: u64| held(&tails, g, from, to);
        tails.forget_replaced(&[
            Op::Put(Space::Log, log_key(1, 5), vec![]),
            Op::Put(Space::Log, log_key(1, 4), vec![]),
        ]);
        assert_eq!(held(1, 1, 4), Some(3));
        assert_eq!(held(1, 4, 5), None);
        // [0, 0, 0, 0, 0, 0, 1] lies between group 255's prefix and the
        // next group's, after every key of 255: the range runs to its end.
        let short_end = vec![0, 0, 0, 0, 0, 0, 1];
        tails.forget_replaced(&[Op::DeleteRange(
            Space::Log,
            log_key(255, 3),
            short_end.clone(),
        )]);
        assert_eq!(held(255, 1, 3), Some(2));
        assert_eq!(held(255, 3, 4), None);
        assert_eq!(held(255, 5, 6), None);
        // A short start key there covers nothing of 255.
        let generation = tails.of(255).lock().unwrap().generation();
        tails.of(255).lock().unwrap().push(generation, run(3, 5, 2));
        tails.forget_replaced(&[Op::DeleteRange(Space::Log, short_end, vec![1])]);
        assert_eq!(held(255, 1, 5), Some(4));
    }

    #[test]
    fn a_wipe_empties_it_and_other_groups_keep_theirs() {
        let tails = Tails::default();
        tails.of(1).lock().unwrap().push(0, run(1, 4, 1));
        tails.of(2).lock().unwrap().push(0, run(1, 4, 1));
        for g in [1, 2] {
            tails.of(g).lock().unwrap().purged = 9;
        }
        // A purge's delete (from index 0 on) is no wipe.
        tails.forget_replaced(&[Op::DeleteRange(Space::Log, log_key(1, 0), log_key(1, 3))]);
        assert_eq!(tails.of(1).lock().unwrap().purged, 9);
        let wipe = Op::DeleteRange(Space::Log, group_prefix(1).to_vec(), group_end(1));
        tails.forget_replaced(&[wipe]);
        assert_eq!(
            tails
                .of(1)
                .lock()
                .unwrap()
                .get(1, 2, usize::MAX)
                .map(|v| v.len()),
            None
        );
        assert_eq!(
            tails
                .of(2)
                .lock()
                .unwrap()
                .get(1, 4, usize::MAX)
                .map(|v| v.len()),
            Some(3)
        );
        // What the wiped replica purged is forgotten; the other group's
        // purge point stays.
        let purged = |g: u64| tails.of(g).lock().unwrap().purged;
        assert_eq!(purged(1), 0);
        assert_eq!(purged(2), 9);
    }

    #[test]
    fn it_stays_within_its_bounds() {
        let mut t = Tail::default();
        t.push(0, run(1, 1 + MAX_TAIL_ENTRIES as u64 + 10, 1));
        assert_eq!(t.entries.len(), MAX_TAIL_ENTRIES);
        assert_eq!(t.first(), Some(11));
        let mut t = Tail::default();
        let big: Vec<(Entry, usize)> = (1..5)
            .map(|i| (entry(1, i).0, MAX_TAIL_BYTES / 2))
            .collect();
        t.push(0, big);
        assert_eq!(t.entries.len(), 2);
        assert_eq!(t.bytes, MAX_TAIL_BYTES);
        assert_eq!(t.first(), Some(3));
    }
}
