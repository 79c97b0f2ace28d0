//! Key-to-shard mapping.
//!
//! Both schemes are pure functions of their inputs so that every node and
//! client, built from the same config, routes every key identically.
//!
//! * Hash: a consistent-hash ring. Each shard contributes `virtual_nodes`
//!   points; adding a shard only steals arcs from its neighbours, so roughly
//!   `1/n` of keys move and all of them move to the new shard.
//! * Range: sorted inclusive start keys; a shard owns `[start, next_start)`.
//!   Range scans then touch only the shards whose ranges overlap.

use std::collections::BTreeMap;

use crate::ids::ShardId;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

/// The version every shard's descriptor starts at (written from the
/// config at the shard's first start). 0 on a request means "not given":
/// the shard then checks only that it owns the key.
pub const FIRST_VERSION: u64 = 1;

/// What keys a shard owns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Span {
    /// Keys in `[start, end)`; `end` `None` is unbounded.
    Range {
        start: Vec<u8>,
        end: Option<Vec<u8>>,
    },
    /// Keys whose ring hash is in one of these inclusive intervals
    /// (sorted, disjoint): the arcs up to each of the shard's ring points.
    Ring { arcs: Vec<(u64, u64)> },
}

impl Span {
    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            Span::Range { start, end } => {
                key >= start.as_slice() && end.as_deref().is_none_or(|e| key < e)
            }
            Span::Ring { arcs } => {
                let h = xxh3_64(key);
                let i = arcs.partition_point(|&(_, hi)| hi < h);
                arcs.get(i).is_some_and(|&(lo, _)| lo <= h)
            }
        }
    }

    /// Whether every key of `[start, end)` that could be this shard's is
    /// here: a range span must hold the whole interval (a scan routed by
    /// a map with other boundaries would miss keys); a ring's keys are
    /// scattered, so a scan asks every shard and each answers for its own.
    pub fn covers(&self, start: &[u8], end: Option<&[u8]>) -> bool {
        match self {
            Span::Range { start: s, end: e } => {
                start >= s.as_slice()
                    && match (end, e) {
                        (_, None) => true,
                        (None, Some(_)) => false,
                        (Some(end), Some(e)) => end <= e.as_slice(),
                    }
            }
            Span::Ring { .. } => true,
        }
    }
}

/// The lowest id a shard created by a split can have. Config ids stop at
/// `i64::MAX` (TOML's integers), so a split-off shard never takes an id a
/// config could give, nor the metadata group's (`u64::MAX - 1`).
pub const FIRST_SPLIT_ID: u64 = 1 << 63;

/// The id of the shard that a split of `parent` at its descriptor version
/// `version` creates: a function of the two, so a split driven again after
/// a crash names the same shard, and (a parent's version only grows) no
/// two splits name the same one, barring a 62-bit hash collision, which
/// hosting refuses.
pub fn split_child_id(parent: ShardId, version: u64) -> ShardId {
    let mut buf = [0u8; 16];
    buf[..8].copy_from_slice(&parent.0.to_le_bytes());
    buf[8..].copy_from_slice(&version.to_le_bytes());
    ShardId(FIRST_SPLIT_ID | (xxh3_64(&buf) & ((1 << 62) - 1)))
}

impl Span {
    /// Cut the span in two: `(left, right)`, where right is what a new
    /// shard takes. A range splits at `at`, which must lie strictly
    /// inside it; a ring span is cut where half its share of the ring
    /// lies on each side (`at` must be absent).
    pub fn split(&self, at: Option<&[u8]>) -> Result<(Span, Span), String> {
        match (self, at) {
            (Span::Range { start, end }, Some(k)) => {
                if k <= start.as_slice() || end.as_deref().is_some_and(|e| k >= e) {
                    return Err(format!(
                        "split key {:?} is not strictly inside the shard's range",
                        String::from_utf8_lossy(k)
                    ));
                }
                Ok((
                    Span::Range {
                        start: start.clone(),
                        end: Some(k.to_vec()),
                    },
                    Span::Range {
                        start: k.to_vec(),
                        end: end.clone(),
                    },
                ))
            }
            (Span::Range { .. }, None) => Err("a range shard splits at a key: give one".into()),
            (Span::Ring { .. }, Some(_)) => {
                Err("a hash-partitioned shard splits its ring share in half; give no key".into())
            }
            (Span::Ring { arcs }, None) => {
                let width = |&(lo, hi): &(u64, u64)| u128::from(hi - lo) + 1;
                let total: u128 = arcs.iter().map(width).sum();
                if total < 2 {
                    return Err("the shard owns too little of the ring to split".into());
                }
                let half = total / 2;
                let (mut left, mut right) = (Vec::new(), Vec::new());
                let mut seen = 0u128;
                for a in arcs {
                    let w = width(a);
                    if seen + w <= half {
                        left.push(*a);
                    } else if seen >= half {
                        right.push(*a);
                    } else {
                        // The arc holding the middle is cut: `cut` is the
                        // last hash that stays left (`seen + cut - lo + 1`
                        // hashes are left then, exactly `half`).
                        let keep = u64::try_from(half - seen).unwrap_or(u64::MAX);
                        let cut = a.0 + (keep - 1);
                        left.push((a.0, cut));
                        right.push((cut + 1, a.1));
                    }
                    seen += w;
                }
                Ok((Span::Ring { arcs: left }, Span::Ring { arcs: right }))
            }
        }
    }

    /// The span of a shard that a merge absorbs `other` into: a range
    /// must touch this one at one end (either), ring arcs are simply
    /// pooled (any two ring shards may merge). The two must not overlap.
    pub fn merge(&self, other: &Span) -> Result<Span, String> {
        match (self, other) {
            (Span::Range { start, end }, Span::Range { start: os, end: oe }) => {
                if self.is_empty() || other.is_empty() {
                    Err("a shard that owns nothing merges with nothing".into())
                } else if end.as_deref() == Some(os.as_slice()) {
                    Ok(Span::Range {
                        start: start.clone(),
                        end: oe.clone(),
                    })
                } else if oe.as_deref() == Some(start.as_slice()) {
                    Ok(Span::Range {
                        start: os.clone(),
                        end: end.clone(),
                    })
                } else {
                    Err("range shards merge only with a neighbour (the range just before or just after)".into())
                }
            }
            (Span::Ring { arcs }, Span::Ring { arcs: other }) => {
                if arcs.is_empty() || other.is_empty() {
                    return Err("a shard that owns nothing merges with nothing".into());
                }
                let mut all: Vec<(u64, u64)> = arcs.iter().chain(other).copied().collect();
                all.sort_unstable();
                if all.windows(2).any(|w| w[1].0 <= w[0].1) {
                    return Err("the two shards' ring arcs overlap".into());
                }
                // Neighbouring arcs become one.
                let mut joined: Vec<(u64, u64)> = Vec::with_capacity(all.len());
                for (lo, hi) in all {
                    match joined.last_mut() {
                        Some(last) if last.1.checked_add(1) == Some(lo) => last.1 = hi,
                        _ => joined.push((lo, hi)),
                    }
                }
                Ok(Span::Ring { arcs: joined })
            }
            _ => Err("a range shard and a hash shard cannot merge".into()),
        }
    }

    /// What a shard merged into another owns: nothing, of the same kind.
    pub fn emptied(&self) -> Span {
        match self {
            Span::Range { start, .. } => Span::Range {
                start: start.clone(),
                end: Some(start.clone()),
            },
            Span::Ring { .. } => Span::Ring { arcs: Vec::new() },
        }
    }

    /// Whether the span holds no key (a shard merged away).
    pub fn is_empty(&self) -> bool {
        match self {
            Span::Range { start, end } => end.as_deref().is_some_and(|e| e <= start.as_slice()),
            Span::Ring { arcs } => arcs.is_empty(),
        }
    }

    /// Whether some key of `[start, end)` may lie in the span (a ring's
    /// keys are anywhere: always, unless the interval is empty).
    pub fn meets(&self, start: &[u8], end: Option<&[u8]>) -> bool {
        if end.is_some_and(|e| e <= start) {
            return false;
        }
        match self {
            Span::Range { start: s, end: e } => {
                end.is_none_or(|end| end > s.as_slice()) && e.as_deref().is_none_or(|e| start < e)
            }
            Span::Ring { arcs } => !arcs.is_empty(),
        }
    }
}

/// A shard's own record of what it owns, kept in its replicated state:
/// the authority on ownership (a map is a cache of descriptors). `version`
/// grows with every change of the span (split, merge), never with a
/// change of replicas, so moving a replica does not disturb routing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    pub shard: ShardId,
    pub version: u64,
    pub span: Span,
}

/// What the metadata group records of a shard: its descriptor and its
/// voters, as the shard's leader last reported them. Records of one shard
/// are ordered by `(descriptor.version, voters_at)`: the span's version,
/// then the log index of the committed membership the voters come from
/// (both only grow within a shard), so a late report never overwrites a
/// newer one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRecord {
    pub descriptor: Descriptor,
    pub voters: Vec<u64>,
    pub voters_at: u64,
}

impl ShardRecord {
    /// Whether this record says something newer about its shard than
    /// `old` (a record of the same shard).
    pub fn newer_than(&self, old: &ShardRecord) -> bool {
        (self.descriptor.version, self.voters_at) > (old.descriptor.version, old.voters_at)
    }
}

/// What the metadata group records of a coordinator group: its committed
/// voters as its leader last reported them, ordered by `voters_at` (the
/// membership's log index, which only grows).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub group: u64,
    pub voters: Vec<u64>,
    pub voters_at: u64,
}

impl GroupRecord {
    /// Whether this record says something newer about its group than
    /// `old` (a record of the same group).
    pub fn newer_than(&self, old: &GroupRecord) -> bool {
        self.voters_at > old.voters_at
    }
}

/// A merged shard whose Raft group is gone, as the metadata group records
/// it (`txn admin shard retire`): what every node answers for it from
/// then on, in its group's place. Taken at the shard's leader when it
/// owned nothing, its merge was done, and it held no prepare record and
/// no commit outcome: from then on nothing can prepare or commit there,
/// so each of its answers is a function of these fields (see
/// [`RetiredShard::inquiry`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiredShard {
    pub shard: ShardId,
    /// Its descriptor's version (its span is empty).
    pub version: u64,
    /// The shards split off it, ever, and the one it merged into.
    pub successors: Vec<ShardId>,
    /// Its voters when it retired.
    pub voters: Vec<u64>,
    /// Its record horizon per coordinator group then, sorted by group:
    /// `(group, timestamp)`. A group not listed had none (0).
    pub horizons: Vec<(u64, u64)>,
}

/// What a retired shard answers to an inquiry about a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetiredAnswer {
    /// Older than the shard's record horizon for its group: whatever it
    /// recorded is forgotten (as a live shard answers).
    Expired,
    /// Nothing of it is there, and nothing can land any more: as final as
    /// a recorded abort.
    Aborted,
}

impl RetiredShard {
    /// The record horizon of coordinator group `group` (0: none).
    pub fn horizon(&self, group: u64) -> u64 {
        self.horizons
            .iter()
            .find(|(g, _)| *g == group)
            .map_or(0, |(_, h)| *h)
    }

    /// The answer for a transaction of coordinator group `group` with
    /// start timestamp `ts`.
    pub fn inquiry(&self, group: u64, ts: u64) -> RetiredAnswer {
        if ts < self.horizon(group) {
            RetiredAnswer::Expired
        } else {
            RetiredAnswer::Aborted
        }
    }
}

/// The metadata group's tables of groups as read from it: `epoch` counts
/// the changes they have taken.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardTable {
    pub epoch: u64,
    pub shards: Vec<ShardRecord>,
    /// The coordinator groups' committed voters, and the metadata
    /// group's own ([`crate::META_GROUP`], see [`ShardTable::meta`]).
    pub groups: Vec<GroupRecord>,
    /// Merged shards whose groups are gone, sorted by shard.
    pub retired: Vec<RetiredShard>,
}

impl ShardTable {
    /// The record of `shard` if it is retired.
    pub fn retired(&self, shard: ShardId) -> Option<&RetiredShard> {
        self.retired.iter().find(|r| r.shard == shard)
    }

    /// The metadata group's voters as its leader last recorded them.
    pub fn meta(&self) -> Option<&GroupRecord> {
        self.groups
            .iter()
            .find(|g| g.group == crate::META_GROUP && !g.voters.is_empty())
    }
}

/// Routes keys to shards. Build it with [`ShardMap::new_hash`],
/// [`ShardMap::new_range`] or [`crate::ClusterConfig::shard_map`].
#[derive(Debug, Clone)]
pub struct ShardMap {
    kind: Kind,
    /// All shards, sorted and deduplicated.
    shards: Vec<ShardId>,
    /// Each shard's descriptor version as this map knows it; a shard not
    /// listed is at [`FIRST_VERSION`].
    versions: BTreeMap<ShardId, u64>,
}

#[derive(Debug, Clone)]
enum Kind {
    /// Ring points sorted by `(hash, shard)`. Breaking hash ties by shard id
    /// keeps the ring independent of the order shards were listed in.
    Hash(Vec<(u64, ShardId)>),
    /// `(start, shard)` sorted by start; the first start is the empty key.
    Range(Vec<(Vec<u8>, ShardId)>),
}

/// Position of a virtual node on the ring. The encoding (little-endian shard
/// id, then little-endian vnode index, 16 bytes) is part of the routing
/// contract: changing it reshuffles every key of an existing cluster.
fn vnode_point(shard: ShardId, vnode: u32) -> u64 {
    let mut buf = [0u8; 16];
    buf[..8].copy_from_slice(&shard.0.to_le_bytes());
    buf[8..].copy_from_slice(&u64::from(vnode).to_le_bytes());
    xxh3_64(&buf)
}

impl ShardMap {
    /// Consistent-hash ring with `virtual_nodes` points per shard.
    ///
    /// Duplicate shard ids are ignored. `virtual_nodes` of 0 is treated as 1 so
    /// that every listed shard owns part of the ring.
    pub fn new_hash(shards: &[ShardId], virtual_nodes: u32) -> Self {
        let mut ids = shards.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let vnodes = virtual_nodes.max(1);
        let mut points: Vec<(u64, ShardId)> = ids
            .iter()
            .flat_map(|&s| (0..vnodes).map(move |v| (vnode_point(s, v), s)))
            .collect();
        points.sort_unstable();
        ShardMap {
            kind: Kind::Hash(points),
            shards: ids,
            versions: BTreeMap::new(),
        }
    }

    /// Range partitioning from `(inclusive start, shard)` pairs in any order.
    ///
    /// The input should contain the empty start `[]`; if it does not, the
    /// lowest start is stretched down to cover the keys below it, so every key
    /// still has exactly one owner. For duplicate starts the first pair wins.
    pub fn new_range(starts: &[(Vec<u8>, ShardId)]) -> Self {
        let mut ranges = starts.to_vec();
        // Stable sort keeps input order among equal starts so "first wins".
        ranges.sort_by(|a, b| a.0.cmp(&b.0));
        ranges.dedup_by(|later, earlier| later.0 == earlier.0);
        if let Some(first) = ranges.first_mut() {
            first.0.clear();
        }
        let mut ids: Vec<ShardId> = ranges.iter().map(|r| r.1).collect();
        ids.sort_unstable();
        ids.dedup();
        ShardMap {
            kind: Kind::Range(ranges),
            shards: ids,
            versions: BTreeMap::new(),
        }
    }

    /// The map the shards' own descriptors make (one per shard), refused
    /// with the reason unless they cover every key exactly once: a table
    /// that does not hold together is never routed by.
    pub fn from_descriptors(descriptors: &[Descriptor]) -> Result<ShardMap, String> {
        // A shard merged into another owns nothing and takes no request.
        let live: Vec<Descriptor> = descriptors
            .iter()
            .filter(|d| !d.span.is_empty())
            .cloned()
            .collect();
        let descriptors = live.as_slice();
        let mut versions = BTreeMap::new();
        for d in descriptors {
            if versions.insert(d.shard, d.version).is_some() {
                return Err(format!("two descriptors of shard {}", d.shard));
            }
        }
        let shards: Vec<ShardId> = versions.keys().copied().collect();
        let ranges: Vec<_> = descriptors
            .iter()
            .filter_map(|d| match &d.span {
                Span::Range { start, end } => Some((start.clone(), end.clone(), d.shard)),
                Span::Ring { .. } => None,
            })
            .collect();
        if ranges.len() == descriptors.len() && !ranges.is_empty() {
            let mut ranges = ranges;
            ranges.sort();
            let mut expect: Option<Vec<u8>> = Some(Vec::new());
            for (start, end, shard) in &ranges {
                if expect.as_ref() != Some(start) {
                    return Err(format!(
                        "shard {shard}'s range starts at {:?}, expected {:?}",
                        String::from_utf8_lossy(start),
                        expect.as_deref().map(String::from_utf8_lossy)
                    ));
                }
                if end.as_ref().is_some_and(|e| e <= start) {
                    return Err(format!("shard {shard}'s range is empty"));
                }
                expect = end.clone();
            }
            if expect.is_some() {
                return Err("the ranges do not reach the end of the key space".into());
            }
            return Ok(ShardMap {
                kind: Kind::Range(ranges.into_iter().map(|(s, _, id)| (s, id)).collect()),
                shards,
                versions,
            });
        }
        if !ranges.is_empty() {
            return Err("some shards own ranges, others ring arcs".into());
        }
        let mut arcs: Vec<(u64, u64, ShardId)> = descriptors
            .iter()
            .flat_map(|d| match &d.span {
                Span::Ring { arcs } => arcs.iter().map(|&(lo, hi)| (lo, hi, d.shard)).collect(),
                Span::Range { .. } => Vec::new(),
            })
            .collect();
        arcs.sort_unstable();
        let mut next = Some(0u64);
        for &(lo, hi, shard) in &arcs {
            if next != Some(lo) || hi < lo {
                return Err(format!(
                    "shard {shard}'s ring arc {lo}..={hi} leaves a gap or overlaps (expected a start of {next:?})"
                ));
            }
            next = hi.checked_add(1);
        }
        if arcs.is_empty() || next.is_some() {
            return Err("the ring arcs do not cover the whole ring".into());
        }
        Ok(ShardMap {
            // An arc's last hash is a ring point: a key goes to the first
            // point at or past its hash, which is the arc holding it.
            kind: Kind::Hash(arcs.into_iter().map(|(_, hi, s)| (hi, s)).collect()),
            shards,
            versions,
        })
    }

    /// `shard`'s descriptor version as this map knows it (0 for a shard
    /// it does not have).
    pub fn version(&self, shard: ShardId) -> u64 {
        if self.shards.binary_search(&shard).is_err() {
            return 0;
        }
        self.versions.get(&shard).copied().unwrap_or(FIRST_VERSION)
    }

    /// What this map says `shard` owns, as a descriptor (`None` for a
    /// shard it does not have).
    pub fn descriptor(&self, shard: ShardId) -> Option<Descriptor> {
        if self.shards.binary_search(&shard).is_err() {
            return None;
        }
        let span = match &self.kind {
            Kind::Range(_) => {
                let (start, end) = self.range_of(shard)?;
                Span::Range { start, end }
            }
            Kind::Hash(points) => {
                let mut arcs: Vec<(u64, u64)> = Vec::new();
                let mut push = |lo: u64, hi: u64| match arcs.last_mut() {
                    Some(last) if last.1.checked_add(1) == Some(lo) => last.1 = hi,
                    _ => arcs.push((lo, hi)),
                };
                let mut lo = Some(0u64);
                for &(p, s) in points {
                    // A point with the same hash as the one before owns
                    // nothing: lookups stop at the first.
                    if let Some(l) = lo.filter(|l| *l <= p) {
                        if s == shard {
                            push(l, p);
                        }
                    }
                    lo = p.checked_add(1);
                }
                // Past the last point the ring wraps to the first one.
                if let (Some(l), Some(&(_, first))) = (lo, points.first()) {
                    if first == shard {
                        push(l, u64::MAX);
                    }
                }
                Span::Ring { arcs }
            }
        };
        Some(Descriptor {
            shard,
            version: self.version(shard),
            span,
        })
    }

    /// Range scheme: the part of `[start, end)` that `shard` owns, or
    /// `None` if it owns none of it. Hash scheme: the whole interval (a
    /// ring shard's keys are anywhere).
    pub fn clip(
        &self,
        shard: ShardId,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> Option<(Vec<u8>, Option<Vec<u8>>)> {
        if !self.is_range() {
            return Some((start.to_vec(), end.map(<[u8]>::to_vec)));
        }
        let (s, e) = self.range_of(shard)?;
        let lo = start.max(s.as_slice()).to_vec();
        let hi = match (end, e) {
            (None, e) => e,
            (Some(end), None) => Some(end.to_vec()),
            (Some(end), Some(e)) => Some(end.min(e.as_slice()).to_vec()),
        };
        if hi.as_ref().is_some_and(|h| *h <= lo) {
            return None;
        }
        Some((lo, hi))
    }

    /// The shard owning `key`.
    ///
    /// A map with no shards at all (only constructible by hand, never from a
    /// validated config) answers `ShardId(0)` rather than panicking.
    pub fn shard_for_key(&self, key: &[u8]) -> ShardId {
        match &self.kind {
            Kind::Hash(points) => {
                let h = xxh3_64(key);
                let i = points.partition_point(|&(p, _)| p < h);
                // Past the last point the ring wraps to the first one.
                points
                    .get(i)
                    .or_else(|| points.first())
                    .map_or(ShardId::default(), |&(_, s)| s)
            }
            Kind::Range(ranges) => Self::range_index(ranges, key)
                .and_then(|i| ranges.get(i))
                .map_or(ShardId::default(), |r| r.1),
        }
    }

    /// Index of the range containing `key`: the last start `<= key`.
    fn range_index(ranges: &[(Vec<u8>, ShardId)], key: &[u8]) -> Option<usize> {
        if ranges.is_empty() {
            return None;
        }
        // The first start is empty, so at least one start is <= any key.
        Some(
            ranges
                .partition_point(|(s, _)| s.as_slice() <= key)
                .saturating_sub(1),
        )
    }

    /// Shards that may hold keys in `[start, end)` (end `None` = unbounded),
    /// sorted by [`ShardId`], deduplicated.
    ///
    /// Hash: every shard, since keys are scattered. Range: only the shards
    /// whose ranges overlap. An empty interval (`end <= start`) holds no keys,
    /// so it yields no shards under either scheme.
    pub fn shards_for_range(&self, start: &[u8], end: Option<&[u8]>) -> Vec<ShardId> {
        if end.is_some_and(|e| e <= start) {
            return Vec::new();
        }
        match &self.kind {
            Kind::Hash(_) => self.shards.clone(),
            Kind::Range(ranges) => {
                let mut ids: Vec<ShardId> = Self::ranges_meeting(ranges, start, end)
                    .iter()
                    .map(|r| r.1)
                    .collect();
                ids.sort_unstable();
                ids.dedup();
                ids
            }
        }
    }

    /// Range scheme only: the shards that may hold keys in `[start, end)`
    /// in the order of their keys (each one's keys all come before the
    /// next one's), each once; `None` for a hash ring, whose shards' keys
    /// interleave. A scan can then read the shards one after another and
    /// stop at the first that fills its page, asking (and, in a
    /// transaction, locking) none of the rest.
    fn shards_in_key_order(&self, start: &[u8], end: Option<&[u8]>) -> Option<Vec<ShardId>> {
        let Kind::Range(ranges) = &self.kind else {
            return None;
        };
        let mut ids: Vec<ShardId> = Vec::new();
        for r in Self::ranges_meeting(ranges, start, end) {
            // Only a hand-built map gives a shard two ranges; its first
            // place is where a scan reaches it.
            if !ids.contains(&r.1) {
                ids.push(r.1);
            }
        }
        Some(ids)
    }

    /// The shards a scan of `[start, end)` reads, and whether they are in
    /// key order (range shards: read one after another, as far as a page
    /// needs) or not (a hash ring: every shard, each page merged).
    pub fn scan_shards(&self, start: &[u8], end: Option<&[u8]>) -> (Vec<ShardId>, bool) {
        match self.shards_in_key_order(start, end) {
            Some(ids) => (ids, true),
            None => (self.shards_for_range(start, end), false),
        }
    }

    /// The ranges (sorted by start) that overlap `[start, end)`; none for
    /// an empty interval (`end <= start`).
    fn ranges_meeting<'a>(
        ranges: &'a [(Vec<u8>, ShardId)],
        start: &[u8],
        end: Option<&[u8]>,
    ) -> &'a [(Vec<u8>, ShardId)] {
        if end.is_some_and(|e| e <= start) {
            return &[];
        }
        let Some(first) = Self::range_index(ranges, start) else {
            return &[];
        };
        // `end` is exclusive: a range starting exactly at `end` holds
        // none of the requested keys.
        let last = match end {
            None => ranges.len(),
            Some(e) => ranges.partition_point(|(s, _)| s.as_slice() < e),
        };
        ranges.get(first..last).unwrap_or_default()
    }

    /// Range scheme only: the key range `[start, end)` owned by `shard`
    /// (end `None` = unbounded). `None` for the hash scheme or an unknown
    /// shard. If a hand-built map gives one shard several ranges, the lowest
    /// is returned.
    pub fn range_of(&self, shard: ShardId) -> Option<(Vec<u8>, Option<Vec<u8>>)> {
        let Kind::Range(ranges) = &self.kind else {
            return None;
        };
        let i = ranges.iter().position(|r| r.1 == shard)?;
        let start = ranges.get(i)?.0.clone();
        let end = ranges.get(i + 1).map(|r| r.0.clone());
        Some((start, end))
    }

    /// Hash scheme only: how many ring points `shard` has, and the share
    /// of the ring (of all key hashes) they own. `None` for the range
    /// scheme or an unknown shard.
    pub fn ring_share(&self, shard: ShardId) -> Option<(usize, f64)> {
        let Kind::Hash(points) = &self.kind else {
            return None;
        };
        if points.len() == 1 {
            return (points[0].1 == shard).then_some((1, 1.0));
        }
        // A point owns the hashes after the point before it, up to itself
        // (the first one wraps around past the last).
        let mut n = 0;
        let mut owned = 0u128;
        for (i, &(p, s)) in points.iter().enumerate() {
            if s != shard {
                continue;
            }
            let prev = points[(i + points.len() - 1) % points.len()].0;
            n += 1;
            owned += u128::from(p.wrapping_sub(prev));
        }
        (n > 0).then(|| (n, owned as f64 / (u128::from(u64::MAX) + 1) as f64))
    }

    /// All shards in the map, sorted.
    pub fn shards(&self) -> Vec<ShardId> {
        self.shards.clone()
    }

    /// True for a range-partitioned map, false for a hash ring.
    pub fn is_range(&self) -> bool {
        matches!(self.kind, Kind::Range(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_merge_joins_neighbours_and_what_a_split_cut() {
        let r = Span::Range {
            start: b"b".to_vec(),
            end: Some(b"m".to_vec()),
        };
        let (l, rt) = r.split(Some(b"f")).unwrap();
        assert_eq!(l.merge(&rt).unwrap(), r);
        assert_eq!(rt.merge(&l).unwrap(), r);
        let far = Span::Range {
            start: b"x".to_vec(),
            end: None,
        };
        assert!(l.merge(&far).is_err());
        assert!(l.merge(&l.emptied()).is_err());
        assert!(l.emptied().is_empty() && !l.is_empty());
        assert!(!l.emptied().contains(b"b"));

        let m = ShardMap::new_hash(&ids(&[1, 2, 3]), 16);
        let d2 = m.descriptor(ShardId(2)).unwrap().span;
        let d3 = m.descriptor(ShardId(3)).unwrap().span;
        let (a, b) = d2.split(None).unwrap();
        assert_eq!(a.merge(&b).unwrap(), d2);
        assert!(d2.merge(&d2).is_err(), "overlapping arcs");
        assert!(d2.merge(&r).is_err(), "ring with range");
        let both = d2.merge(&d3).unwrap();
        for i in 0..5_000u32 {
            let k = i.to_be_bytes();
            assert_eq!(both.contains(&k), d2.contains(&k) || d3.contains(&k));
        }
        // A map from the merged shard's descriptor and a retired one.
        let d1 = m.descriptor(ShardId(1)).unwrap();
        let merged = ShardMap::from_descriptors(&[
            d1,
            Descriptor {
                shard: ShardId(2),
                version: 2,
                span: both,
            },
            Descriptor {
                shard: ShardId(3),
                version: 2,
                span: d3.emptied(),
            },
        ])
        .unwrap();
        assert_eq!(merged.shards(), ids(&[1, 2]));
        for i in 0..2_000u32 {
            let k = i.to_be_bytes();
            assert_ne!(merged.shard_for_key(&k), ShardId(3));
        }
    }

    #[test]
    fn a_split_divides_a_span_between_its_halves() {
        let r = Span::Range {
            start: b"b".to_vec(),
            end: Some(b"m".to_vec()),
        };
        assert!(r.split(Some(b"b")).is_err());
        assert!(r.split(Some(b"m")).is_err());
        assert!(r.split(None).is_err());
        let (l, rt) = r.split(Some(b"f")).unwrap();
        for k in [&b"b"[..], b"c", b"ezz", b"f", b"g", b"lzz"] {
            assert!(r.contains(k));
            assert_ne!(l.contains(k), rt.contains(k), "{k:?}");
        }
        assert!(rt.contains(b"f") && !l.contains(b"f"));
        assert!(rt.meets(b"a", Some(b"g")) && !rt.meets(b"a", Some(b"f")));

        let m = ShardMap::new_hash(&ids(&[1, 2, 3]), 16);
        let d = m.descriptor(ShardId(2)).unwrap();
        assert!(d.span.split(Some(b"k")).is_err());
        let (l, rt) = d.span.split(None).unwrap();
        let mut counts = (0, 0);
        for i in 0..20_000u32 {
            let k = i.to_be_bytes();
            let (a, b) = (l.contains(&k), rt.contains(&k));
            assert_eq!(d.span.contains(&k), a || b, "{i}");
            assert!(!(a && b), "{i}");
            counts.0 += usize::from(a);
            counts.1 += usize::from(b);
        }
        // Half of the shard's share of the ring each, give or take chance.
        let (a, b) = (counts.0 as f64, counts.1 as f64);
        assert!(
            a > 0.0 && b > 0.0 && (a / b) > 0.7 && (a / b) < 1.4,
            "{counts:?}"
        );
        // The three pieces still make a map that covers the ring.
        let child = split_child_id(ShardId(2), d.version);
        assert!(child.0 >= FIRST_SPLIT_ID && child.0 < u64::MAX - 1);
        let mut ds = vec![
            m.descriptor(ShardId(1)).unwrap(),
            m.descriptor(ShardId(3)).unwrap(),
        ];
        ds.push(Descriptor {
            shard: ShardId(2),
            version: 2,
            span: l,
        });
        ds.push(Descriptor {
            shard: child,
            version: 2,
            span: rt,
        });
        let split = ShardMap::from_descriptors(&ds).unwrap();
        for i in 0..2_000u32 {
            let k = i.to_be_bytes();
            let before = m.shard_for_key(&k);
            let after = split.shard_for_key(&k);
            assert!(
                before == after || (before == ShardId(2) && after == child),
                "{i}"
            );
        }
        // A one-point ring splits its single arc.
        let one = Span::Ring {
            arcs: vec![(0, u64::MAX)],
        };
        let (l, rt) = one.split(None).unwrap();
        assert_eq!(
            l,
            Span::Ring {
                arcs: vec![(0, u64::MAX / 2)]
            }
        );
        assert_eq!(
            rt,
            Span::Ring {
                arcs: vec![(u64::MAX / 2 + 1, u64::MAX)]
            }
        );
    }
    use std::collections::BTreeMap;

    #[test]
    fn ring_shares_add_up_and_match_where_keys_go() {
        let m = ShardMap::new_hash(&ids(&[1, 2, 3]), 64);
        let shares: Vec<(usize, f64)> =
            (1..=3).map(|s| m.ring_share(ShardId(s)).unwrap()).collect();
        assert!(shares.iter().all(|(n, _)| *n == 64), "{shares:?}");
        let total: f64 = shares.iter().map(|(_, f)| f).sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
        // Where 30,000 keys land agrees with the shares.
        let mut counts = BTreeMap::new();
        for i in 0..30_000 {
            *counts
                .entry(m.shard_for_key(format!("k{i}").as_bytes()))
                .or_insert(0.0) += 1.0 / 30_000.0;
        }
        for s in 1..=3 {
            let (_, f) = shares[s - 1];
            let got = counts[&ShardId(s as u64)];
            assert!((got - f).abs() < 0.02, "shard {s}: {got} vs {f}");
        }
        assert_eq!(m.ring_share(ShardId(9)), None);
        let one = ShardMap::new_hash(&ids(&[5]), 1);
        assert_eq!(one.ring_share(ShardId(5)), Some((1, 1.0)));
        let r = ShardMap::new_range(&[(Vec::new(), ShardId(1))]);
        assert_eq!(r.ring_share(ShardId(1)), None);
    }

    #[test]
    fn descriptors_rebuild_the_map_they_came_from_and_refuse_a_broken_table() {
        let maps = [
            ShardMap::new_hash(&ids(&[1, 2, 3]), 64),
            ShardMap::new_hash(&ids(&[7]), 1),
            ShardMap::new_range(&[
                (Vec::new(), ShardId(1)),
                (b"g".to_vec(), ShardId(2)),
                (b"p".to_vec(), ShardId(3)),
            ]),
        ];
        for m in &maps {
            let ds: Vec<Descriptor> = m
                .shards()
                .iter()
                .map(|s| m.descriptor(*s).unwrap())
                .collect();
            assert!(ds.iter().all(|d| d.version == FIRST_VERSION));
            let back = ShardMap::from_descriptors(&ds).unwrap();
            assert_eq!(back.shards(), m.shards());
            assert_eq!(back.is_range(), m.is_range());
            for k in keys(20_000) {
                let owner = m.shard_for_key(&k);
                assert_eq!(back.shard_for_key(&k), owner);
                let holders: Vec<ShardId> = ds
                    .iter()
                    .filter(|d| d.span.contains(&k))
                    .map(|d| d.shard)
                    .collect();
                assert_eq!(holders, vec![owner], "{k:?}");
            }
        }
        let range = &maps[2];
        let d2 = range.descriptor(ShardId(2)).unwrap();
        assert!(d2.span.covers(b"h", Some(b"k")));
        assert!(!d2.span.covers(b"a", Some(b"k")));
        assert!(!d2.span.covers(b"h", None));
        assert_eq!(
            range.clip(ShardId(2), b"a", Some(b"k")),
            Some((b"g".to_vec(), Some(b"k".to_vec())))
        );
        assert_eq!(range.clip(ShardId(3), b"a", Some(b"k")), None);
        assert_eq!(
            range.clip(ShardId(3), b"a", None),
            Some((b"p".to_vec(), None))
        );
        assert_eq!(range.version(ShardId(9)), 0);
        // A gap, an overlap, a missing end, two kinds, a shard twice.
        let mut ds: Vec<Descriptor> = range
            .shards()
            .iter()
            .map(|s| range.descriptor(*s).unwrap())
            .collect();
        let mut gap = ds.clone();
        gap[1].span = Span::Range {
            start: b"h".to_vec(),
            end: Some(b"p".to_vec()),
        };
        assert!(ShardMap::from_descriptors(&gap)
            .unwrap_err()
            .contains("shard 2"));
        let mut open = ds.clone();
        open[2].span = Span::Range {
            start: b"p".to_vec(),
            end: Some(b"z".to_vec()),
        };
        assert!(ShardMap::from_descriptors(&open).is_err());
        let ring = &maps[0];
        let mut mixed = ds.clone();
        mixed[0] = ring.descriptor(ShardId(1)).unwrap();
        assert!(ShardMap::from_descriptors(&mixed).is_err());
        ds.push(ds[0].clone());
        assert!(ShardMap::from_descriptors(&ds).unwrap_err().contains("two"));
        let mut rd: Vec<Descriptor> = ring
            .shards()
            .iter()
            .map(|s| ring.descriptor(*s).unwrap())
            .collect();
        if let Span::Ring { arcs } = &mut rd[0].span {
            arcs.pop();
        }
        assert!(ShardMap::from_descriptors(&rd).is_err());
        let newer = Descriptor {
            version: 5,
            ..range.descriptor(ShardId(3)).unwrap()
        };
        let mut vs: Vec<Descriptor> = range
            .shards()
            .iter()
            .map(|s| range.descriptor(*s).unwrap())
            .collect();
        vs[2] = newer;
        assert_eq!(
            ShardMap::from_descriptors(&vs).unwrap().version(ShardId(3)),
            5
        );
    }

    fn ids(v: &[u64]) -> Vec<ShardId> {
        v.iter().copied().map(ShardId).collect()
    }

    fn keys(n: usize) -> impl Iterator<Item = Vec<u8>> {
        (0..n).map(|i| format!("key{i}").into_bytes())
    }

    #[test]
    fn ring_is_roughly_uniform() {
        let map = ShardMap::new_hash(&ids(&[1, 2, 3]), 128);
        let n = 100_000;
        let mut counts: BTreeMap<ShardId, usize> = BTreeMap::new();
        for k in keys(n) {
            *counts.entry(map.shard_for_key(&k)).or_default() += 1;
        }
        assert_eq!(counts.len(), 3, "{counts:?}");
        for (shard, c) in &counts {
            let share = *c as f64 / n as f64;
            assert!(
                (0.25..=0.42).contains(&share),
                "shard {shard} got {share:.3} of keys: {counts:?}"
            );
        }
    }

    #[test]
    fn ring_is_deterministic_and_order_independent() {
        let a = ShardMap::new_hash(&ids(&[1, 2, 3]), 128);
        let b = ShardMap::new_hash(&ids(&[3, 1, 2, 2]), 128);
        for k in keys(10_000) {
            assert_eq!(a.shard_for_key(&k), b.shard_for_key(&k));
        }
        assert_eq!(a.shards(), ids(&[1, 2, 3]));
        assert_eq!(b.shards(), ids(&[1, 2, 3]));
    }

    #[test]
    fn ring_is_stable_when_a_shard_is_added() {
        let before = ShardMap::new_hash(&ids(&[1, 2, 3]), 128);
        let after = ShardMap::new_hash(&ids(&[1, 2, 3, 4]), 128);
        let n = 100_000;
        let mut moved = 0;
        for k in keys(n) {
            let (old, new) = (before.shard_for_key(&k), after.shard_for_key(&k));
            if old != new {
                assert_eq!(new, ShardId(4), "key {k:?} moved {old} -> {new}");
                moved += 1;
            }
        }
        let share = moved as f64 / n as f64;
        assert!(share <= 0.35, "{share:.3} of keys moved");
        assert!(share >= 0.15, "new shard took only {share:.3} of keys");
    }

    #[test]
    fn ring_covers_every_hash_including_wraparound() {
        let map = ShardMap::new_hash(&ids(&[5]), 1);
        assert_eq!(map.shard_for_key(b"anything"), ShardId(5));
        assert_eq!(map.shard_for_key(b""), ShardId(5));
        // Zero vnodes is clamped to one rather than leaving the shard unowned.
        let map = ShardMap::new_hash(&ids(&[7]), 0);
        assert_eq!(map.shard_for_key(b"x"), ShardId(7));
        assert!(map.range_of(ShardId(7)).is_none());
        assert!(!map.is_range());
    }

    #[test]
    fn empty_maps_do_not_panic() {
        let h = ShardMap::new_hash(&[], 128);
        assert_eq!(h.shard_for_key(b"k"), ShardId(0));
        assert!(h.shards_for_range(b"", None).is_empty());
        let r = ShardMap::new_range(&[]);
        assert_eq!(r.shard_for_key(b"k"), ShardId(0));
        assert!(r.shards_for_range(b"a", Some(b"b")).is_empty());
        assert!(r.range_of(ShardId(0)).is_none());
    }

    #[test]
    fn hash_range_queries_hit_every_shard() {
        let map = ShardMap::new_hash(&ids(&[3, 1, 2]), 16);
        assert_eq!(map.shards_for_range(b"a", Some(b"b")), ids(&[1, 2, 3]));
        assert_eq!(map.shards_for_range(b"", None), ids(&[1, 2, 3]));
        assert!(map.shards_for_range(b"b", Some(b"a")).is_empty());
    }

    #[test]
    fn range_scans_meet_shards_in_key_order_and_hash_scans_have_none() {
        // Ids out of key order, as after splits: 7 ["", "g"), 3 ["g", "p"),
        // 5 ["p", ..).
        let map = ShardMap::new_range(&[
            (b"p".to_vec(), ShardId(5)),
            (Vec::new(), ShardId(7)),
            (b"g".to_vec(), ShardId(3)),
        ]);
        assert_eq!(map.shards_in_key_order(b"", None), Some(ids(&[7, 3, 5])));
        assert_eq!(map.shards_in_key_order(b"h", None), Some(ids(&[3, 5])));
        assert_eq!(
            map.shards_in_key_order(b"a", Some(b"p")),
            Some(ids(&[7, 3]))
        );
        assert_eq!(map.shards_in_key_order(b"q", Some(b"a")), Some(Vec::new()));
        // The same shards as the unordered query, in another order.
        assert_eq!(map.shards_for_range(b"", None), ids(&[3, 5, 7]));
        let hash = ShardMap::new_hash(&ids(&[1, 2]), 16);
        assert_eq!(hash.shards_in_key_order(b"", None), None);
    }

    /// Shards 10 ["", "g"), 20 ["g", "p"), 30 ["p", ..), given out of order.
    fn range_map() -> ShardMap {
        ShardMap::new_range(&[
            (b"p".to_vec(), ShardId(30)),
            (Vec::new(), ShardId(10)),
            (b"g".to_vec(), ShardId(20)),
        ])
    }

    #[test]
    fn range_boundaries() {
        let map = range_map();
        assert!(map.is_range());
        assert_eq!(map.shard_for_key(b""), ShardId(10));
        assert_eq!(map.shard_for_key(b"a"), ShardId(10));
        // Just below "g" in byte order.
        assert_eq!(map.shard_for_key(b"f\xff\xff"), ShardId(10));
        assert_eq!(map.shard_for_key(b"g"), ShardId(20));
        assert_eq!(map.shard_for_key(b"g\x00"), ShardId(20));
        assert_eq!(map.shard_for_key(b"o\xff"), ShardId(20));
        assert_eq!(map.shard_for_key(b"p"), ShardId(30));
        assert_eq!(map.shard_for_key(b"\xff\xff"), ShardId(30));
        assert_eq!(map.shards(), ids(&[10, 20, 30]));
    }

    #[test]
    fn range_overlap() {
        let map = range_map();
        // Whole key space.
        assert_eq!(map.shards_for_range(b"", None), ids(&[10, 20, 30]));
        // Inside one range.
        assert_eq!(map.shards_for_range(b"a", Some(b"c")), ids(&[10]));
        assert_eq!(map.shards_for_range(b"h", Some(b"i")), ids(&[20]));
        assert_eq!(map.shards_for_range(b"q", None), ids(&[30]));
        // End exactly at a boundary is exclusive.
        assert_eq!(map.shards_for_range(b"a", Some(b"g")), ids(&[10]));
        assert_eq!(map.shards_for_range(b"", Some(b"p")), ids(&[10, 20]));
        // One byte past the boundary reaches the next shard.
        assert_eq!(map.shards_for_range(b"a", Some(b"g\x00")), ids(&[10, 20]));
        // Start exactly at a boundary belongs to that shard only.
        assert_eq!(map.shards_for_range(b"g", Some(b"h")), ids(&[20]));
        // Spanning all three.
        assert_eq!(map.shards_for_range(b"f", Some(b"z")), ids(&[10, 20, 30]));
        // Empty and inverted intervals.
        assert!(map.shards_for_range(b"g", Some(b"g")).is_empty());
        assert!(map.shards_for_range(b"z", Some(b"a")).is_empty());
    }

    #[test]
    fn range_of_shard() {
        let map = range_map();
        assert_eq!(
            map.range_of(ShardId(10)),
            Some((Vec::new(), Some(b"g".to_vec())))
        );
        assert_eq!(
            map.range_of(ShardId(20)),
            Some((b"g".to_vec(), Some(b"p".to_vec())))
        );
        assert_eq!(map.range_of(ShardId(30)), Some((b"p".to_vec(), None)));
        assert_eq!(map.range_of(ShardId(99)), None);
    }

    #[test]
    fn range_without_empty_start_still_covers_everything() {
        let map = ShardMap::new_range(&[(b"m".to_vec(), ShardId(2)), (b"c".to_vec(), ShardId(1))]);
        assert_eq!(map.shard_for_key(b"a"), ShardId(1));
        assert_eq!(map.shard_for_key(b"m"), ShardId(2));
        assert_eq!(
            map.range_of(ShardId(1)),
            Some((Vec::new(), Some(b"m".to_vec())))
        );
    }

    #[test]
    fn range_shard_owning_two_ranges_is_listed_once() {
        let map = ShardMap::new_range(&[
            (Vec::new(), ShardId(1)),
            (b"f".to_vec(), ShardId(2)),
            (b"m".to_vec(), ShardId(1)),
        ]);
        assert_eq!(map.shards_for_range(b"a", None), ids(&[1, 2]));
        assert_eq!(map.shards(), ids(&[1, 2]));
        assert_eq!(map.shard_for_key(b"z"), ShardId(1));
    }
}
