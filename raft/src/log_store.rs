//! openraft's log storage for one group, on the node's fjall database.
//!
//! Invariants: an entry handed to `append` is readable as soon as `append`
//! returns, and reported persisted (through `IOFlushed`) only after the
//! writer thread's fsync; the vote is fsynced before `save_vote` returns, so
//! a node never votes twice in a term across a crash.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};

use crate::codec::{decode, encode};
use crate::store::{
    blocking, group_end, group_key, group_prefix, log_key, NodeStore, Notify, Op, Space,
    META_COMMITTED, META_PURGED, META_VOTE,
};
use crate::tail::{keep_newest, Tail};
use crate::types::{Entry, LogId, TypeConfig, Vote};

/// Encoded entry bytes one AppendEntries carries (a single larger entry
/// still goes alone): far below the message limit, and small enough that
/// the deadline scaled by size (see `network`) stays a few seconds.
pub(crate) const MAX_APPEND_BYTES: usize = 8 << 20;

#[derive(Clone)]
pub struct LogStore {
    group: u64,
    store: Arc<NodeStore>,
    /// The newest entries, shared by this store and its readers.
    tail: Arc<Mutex<Tail>>,
    /// The lowest index that may still hold a purged entry: where the next
    /// purge's delete starts (0 in a new process: a crash may have cut the
    /// last purge's delete short).
    swept: u64,
    /// The first index not purged, shared with this store's readers:
    /// reads start here at the earliest, since a purge's entries are
    /// deleted in the background, after it returned. Per store, not per
    /// group: a replica hosted again starts from 0, whatever an earlier
    /// one of the group purged.
    kept_from: Arc<AtomicU64>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

/// One log read served from `source` (`tail` or `store`).
fn count_read(source: &str) {
    if let Some(m) = crate::metrics::process() {
        m.log_reads.with_label_values(&[source]).inc();
    }
}

/// A stored log entry; the error names its group and index.
fn decode_entry(key: &[u8], v: &[u8]) -> io::Result<Entry> {
    let num = |r: std::ops::Range<usize>| {
        key.get(r)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
    };
    match (num(0..8), num(8..16)) {
        (Some(g), Some(i)) => decode(v, format_args!("log entry {i} of group {g}")),
        _ => decode(v, format_args!("log entry at key {key:?}")),
    }
}

impl LogStore {
    pub fn new(group: u64, store: Arc<NodeStore>) -> Self {
        let tail = store.tails.of(group);
        LogStore {
            group,
            store,
            tail,
            swept: 0,
            kept_from: Arc::default(),
        }
    }

    /// Entries `[start, end)` from the tail, at most `max_bytes` of them
    /// (at least one), if it holds them all; counted as a tail read if so.
    /// Never from a poisoned store's tail: fjall refuses those reads, and
    /// so does the tail.
    fn read_tail(&self, start: u64, end: u64, max_bytes: usize) -> Option<Vec<Entry>> {
        if self.store.is_poisoned() {
            return None;
        }
        let hit = self
            .tail
            .lock()
            .ok()
            .and_then(|t| t.get(start, end, max_bytes))?;
        count_read("tail");
        Some(hit)
    }

    /// The first index of `range` (None if it starts past the last
    /// possible one) and its exclusive end (None: to the end of the log).
    fn bounds(range: &impl RangeBounds<u64>) -> Option<(u64, Option<u64>)> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.checked_add(1)?,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => i.checked_add(1),
            Bound::Excluded(&i) => Some(i),
            Bound::Unbounded => None,
        };
        Some((start, end))
    }

    async fn read_meta<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        tag: &[u8],
    ) -> io::Result<Option<T>> {
        match self
            .store
            .get(Space::Meta, group_key(self.group, tag))
            .await?
        {
            Some(b) => Ok(Some(decode(
                &b,
                format_args!(
                    "meta `{}` of group {}",
                    String::from_utf8_lossy(tag),
                    self.group
                ),
            )?)),
            None => Ok(None),
        }
    }

    /// Record that every index up to `index` is purged, for this
    /// process's readers.
    fn note_purged(&self, index: u64) {
        self.kept_from
            .fetch_max(index.saturating_add(1), Ordering::SeqCst);
        if let Ok(mut t) = self.tail.lock() {
            t.purged = t.purged.max(index);
        }
    }

    /// The keys of `range`, from the first index not purged on: the
    /// entries of a purge are deleted after it returns, and must not be
    /// read meanwhile (nor any a crash left behind).
    fn index_range(&self, range: impl RangeBounds<u64>) -> Option<(Vec<u8>, Vec<u8>)> {
        let (start, end) = Self::bounds(&range)?;
        let start = start.max(self.kept_from.load(Ordering::SeqCst));
        let end = match end {
            Some(e) => log_key(self.group, e),
            None => group_end(self.group),
        };
        let start = log_key(self.group, start);
        if start >= end {
            return None;
        }
        Some((start, end))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    // The entries just appended come from the tail (see `crate::tail`):
    // replication and apply read them right after the append, and a fjall
    // read would need the blocking pool (a fjall call may touch the disk
    // and must not block a runtime worker); reading them inline instead
    // cut a one-client write's p50 by about a fifth in an A/B
    // (docs/performance.md). Older entries are read from fjall.
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        // An open end reaches whatever is last: only fjall knows for certain.
        if let Some(hit) = Self::bounds(&range)
            .and_then(|(start, end)| end.and_then(|end| self.read_tail(start, end, usize::MAX)))
        {
            return Ok(hit);
        }
        let Some((from, to)) = self.index_range(range) else {
            return Ok(Vec::new());
        };
        count_read("store");
        let store = self.store.clone();
        blocking(move || {
            let raw = store.range_sync(Space::Log, &from, &to, usize::MAX, false)?;
            raw.iter().map(|(k, v)| decode_entry(k, v)).collect()
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.read_meta(META_VOTE).await
    }

    /// What replication sends in one AppendEntries: at most
    /// [`MAX_APPEND_BYTES`] of entries (but always one), so a follower far
    /// behind after large writes gets requests that fit the message limit
    /// and their deadline, instead of `max_payload_entries` entries of up to
    /// a batch each, which could never be delivered.
    ///
    /// Entries from `start` on, or none. A purge can land between the
    /// moment replication chose `start` and this read (openraft holds a
    /// purge back only while the engine counts the range in flight, and
    /// an append that failed clears that while the stream still reads):
    /// the entries after the purged ones would then be sent as if they
    /// followed `start - 1`, leaving a hole in the follower's log (a debug
    /// build's openraft asserts on it). Nothing read is taken as a
    /// heartbeat; the stream would then send such heartbeats for ever, so
    /// the network fails them (`PeerClient::stuck_below_purge`) and the
    /// leader, starting over, sends a snapshot.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, io::Error> {
        if let Some(hit) = self.read_tail(start, end, MAX_APPEND_BYTES) {
            return Ok(from_start(start, hit));
        }
        let Some((from, to)) = self.index_range(start..end) else {
            return Ok(Vec::new());
        };
        count_read("store");
        let store = self.store.clone();
        let read = blocking(move || {
            let raw = store.range_bytes_sync(Space::Log, &from, &to, MAX_APPEND_BYTES)?;
            raw.iter().map(|(k, v)| decode_entry(k, v)).collect()
        })
        .await?;
        Ok(from_start(start, read))
    }
}

/// `read` if it begins at `start`; else nothing (its head was purged).
fn from_start(start: u64, read: Vec<Entry>) -> Vec<Entry> {
    match read.first() {
        Some(e) if e.log_id.index != start => {
            tracing::debug!(
                start,
                first = e.log_id.index,
                "log entries purged under a replication read; sending none"
            );
            Vec::new()
        }
        _ => read,
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged: Option<LogId> = self.read_meta(META_PURGED).await?;
        if let Some(p) = &last_purged {
            self.note_purged(p.index);
        }
        let store = self.store.clone();
        let from = group_prefix(self.group).to_vec();
        let to = group_end(self.group);
        let last = blocking(move || {
            let raw = store.range_sync(Space::Log, &from, &to, 1, true)?;
            match raw.first() {
                Some((k, v)) => Ok(Some(decode_entry(k, v)?.log_id)),
                None => Ok(None),
            }
        })
        .await?;
        // The newest entry may be one the last purge had not deleted yet
        // when the process stopped: then the log ends at the purge point.
        let last_log_id = match (last, &last_purged) {
            (Some(l), Some(p)) if l.index <= p.index => Some(*p),
            (Some(l), _) => Some(l),
            (None, p) => *p,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let op = Op::Put(Space::Meta, group_key(self.group, META_VOTE), encode(vote)?);
        self.store.write_durable(vec![op]).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Not fsynced on its own: it only speeds up recovery, and it rides
        // along with the next log fsync. Not waited for either: openraft
        // applies the committed entries only after this returns, and that
        // apply queues behind this write on the writer thread anyway, so
        // waiting would only hold the Raft core for a writer round trip
        // (longer when an fsync is running) between commit and apply. A
        // failed write poisons the store, which stops everything after it.
        let op = Op::Put(
            Space::Meta,
            group_key(self.group, META_COMMITTED),
            encode(&committed)?,
        );
        drop(self.store.submit_lazy(vec![op]).await);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self
            .read_meta::<Option<LogId>>(META_COMMITTED)
            .await?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut ops = Vec::new();
        let mut kept = VecDeque::new();
        let mut kept_bytes = 0usize;
        for e in entries {
            let bytes = encode(&e)?;
            let size = bytes.len();
            ops.push(Op::Put(
                Space::Log,
                log_key(self.group, e.log_id.index),
                bytes,
            ));
            // Only the newest entries that fit the tail are kept for it.
            kept_bytes += size;
            kept.push_back((e, size));
            keep_newest(&mut kept, &mut kept_bytes);
        }
        // The entries these replace (openraft truncates first, but the tail
        // does not count on it) leave the tail as the job is queued
        // (`Tails::forget_replaced` treats log puts as replacements).
        let (tx, rx) = tokio::sync::oneshot::channel();
        let generation = self
            .store
            .submit_append(
                ops,
                Notify::Visible {
                    visible: tx,
                    flushed: callback,
                },
                &self.tail,
            )
            .await;
        rx.await
            .map_err(|_| io::Error::other("storage writer stopped"))??;
        if let (Some(g), Ok(mut t)) = (generation, self.tail.lock()) {
            t.push(g, kept.into());
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = match &last_log_id {
            Some(l) => l.index + 1,
            None => 0,
        };
        let op = Op::DeleteRange(Space::Log, log_key(self.group, from), group_end(self.group));
        self.store.write_durable(vec![op]).await
    }

    /// Records the purge point and returns once it is visible; the entries
    /// up to it are deleted afterwards in the writer's background lane, a
    /// few keys between rounds. A purge follows every snapshot, on every
    /// replica at about the same index, and its thousands of entries
    /// deleted in one batch held every group of the node for 15-30 ms.
    /// Reads skip what is purged from the moment it is noted
    /// (`kept_from`), and the tail drops those entries as the job is
    /// queued; a failed delete poisons the store, which stops everything
    /// after it.
    ///
    /// The point is written before any entry goes (the writer keeps the
    /// queue's order, and so does fjall's journal), so a crash never
    /// leaves a gap that `get_log_state` cannot explain; it may leave
    /// entries at or below the point, which nothing reads and the next
    /// purge deletes (a new process starts its delete at index 0).
    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.note_purged(log_id.index);
        let upto = log_id.index.saturating_add(1);
        let ops = vec![
            Op::Put(
                Space::Meta,
                group_key(self.group, META_PURGED),
                encode(&log_id)?,
            ),
            Op::DeleteRange(
                Space::Log,
                log_key(self.group, self.swept.min(upto)),
                log_key(self.group, upto),
            ),
        ];
        self.store.write_then_sweep(ops).await?;
        self.swept = self.swept.max(upto);
        Ok(())
    }
}
