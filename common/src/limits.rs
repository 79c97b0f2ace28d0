//! Size limits shared by clients and servers.
//!
//! Every accepted write ends up in the Raft log of every replica and in each
//! snapshot, so limits are enforced before proposing: a single huge request
//! would otherwise stall replication for the whole shard. Clients use the same
//! constants so they can fail fast without a round trip.

/// Keys must be `1..=MAX_KEY_BYTES` bytes. Empty keys are refused because the
/// empty string is the lower bound of the key space (the first range start).
pub const MAX_KEY_BYTES: usize = 4096;

/// How long a shard leader lets one request wait for locks before its
/// transaction aborts ("lock wait ... timed out"). Clients wait longer than
/// this for an answer, so a lock-wait timeout reaches them as the abort it
/// is, not as an unknown outcome.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// Largest value accepted in one put (1 MiB).
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// Largest sum of key and value bytes in one write batch (4 MiB).
pub const MAX_BATCH_BYTES: usize = 4 << 20;
/// Largest number of operations in one write batch.
pub const MAX_BATCH_OPS: usize = 10_000;
/// Largest number of pairs a single scan request may ask for.
pub const MAX_SCAN_LIMIT: u32 = 10_000;
/// Most bytes of keys and values one transaction may write on one shard
/// (a delete counts its key): its writes there end up in one prepare
/// record, which must stay a reasonable Raft entry.
pub const MAX_TXN_BYTES: usize = 8 << 20;

/// Why a key, value or batch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("key must not be empty")]
    EmptyKey,
    #[error("key is {len} bytes, larger than the maximum of {max}")]
    KeyTooLarge { len: usize, max: usize },
    #[error("value is {len} bytes, larger than the maximum of {max}")]
    ValueTooLarge { len: usize, max: usize },
    #[error("write batch is {bytes} bytes, larger than the maximum of {max}")]
    BatchTooLarge { bytes: usize, max: usize },
    #[error("write batch has {ops} operations, more than the maximum of {max}")]
    TooManyOps { ops: usize, max: usize },
    #[error("{keys} keys to read in one request, more than the maximum of {max}")]
    TooManyReads { keys: usize, max: usize },
    #[error("the values read come to more than {max} bytes; read fewer keys per request")]
    ReadTooLarge { max: usize },
}

/// Adds the size of `value` to the `bytes` a batch of reads has read so
/// far; refused once the batch's values pass [`MAX_BATCH_BYTES`], so the
/// answer stays a reasonable message.
pub fn count_read(bytes: &mut usize, value: Option<&Vec<u8>>) -> Result<(), LimitError> {
    *bytes = bytes.saturating_add(value.map_or(0, Vec::len));
    if *bytes > MAX_BATCH_BYTES {
        return Err(LimitError::ReadTooLarge {
            max: MAX_BATCH_BYTES,
        });
    }
    Ok(())
}

/// Checks a scan's bound: empty (no bound) or at most one byte longer
/// than a key may be (a key with a byte appended, to start just past it).
/// A longer one bounds no differently, and would be held in the
/// transaction's range lock for nothing.
pub fn validate_bound(bound: &[u8]) -> Result<(), LimitError> {
    let max = MAX_KEY_BYTES + 1;
    if bound.len() > max {
        return Err(LimitError::KeyTooLarge {
            len: bound.len(),
            max,
        });
    }
    Ok(())
}

/// Checks that a key is non-empty and at most [`MAX_KEY_BYTES`] long.
pub fn validate_key(key: &[u8]) -> Result<(), LimitError> {
    if key.is_empty() {
        return Err(LimitError::EmptyKey);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(LimitError::KeyTooLarge {
            len: key.len(),
            max: MAX_KEY_BYTES,
        });
    }
    Ok(())
}

/// Checks a batch of reads (`GetMany`, the reads at `Begin`): at most
/// [`MAX_BATCH_OPS`] keys, each a valid key, so a bad one is refused whole
/// before anything is read.
pub fn validate_reads(keys: &[Vec<u8>]) -> Result<(), LimitError> {
    if keys.len() > MAX_BATCH_OPS {
        return Err(LimitError::TooManyReads {
            keys: keys.len(),
            max: MAX_BATCH_OPS,
        });
    }
    keys.iter().try_for_each(|k| validate_key(k))
}

/// Checks that a value is at most [`MAX_VALUE_BYTES`] long. Empty values are
/// allowed: they are distinct from an absent key.
pub fn validate_value(v: &[u8]) -> Result<(), LimitError> {
    if v.len() > MAX_VALUE_BYTES {
        return Err(LimitError::ValueTooLarge {
            len: v.len(),
            max: MAX_VALUE_BYTES,
        });
    }
    Ok(())
}

/// Checks every operation of a write batch and the batch totals.
///
/// Each item is `(key, Some(value))` for a put or `(key, None)` for a delete.
/// A delete's key counts toward [`MAX_BATCH_BYTES`] too, since it is stored in
/// the log just the same. Per-item errors are reported first (the first bad
/// item wins), then the operation count, then the byte total. An empty batch
/// violates no limit; whether it is meaningful is the caller's decision.
pub fn validate_batch<'a>(
    ops: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
) -> Result<(), LimitError> {
    let mut count = 0usize;
    let mut bytes = 0usize;
    for (key, value) in ops {
        validate_key(key)?;
        if let Some(v) = value {
            validate_value(v)?;
        }
        count = count.saturating_add(1);
        // Saturating so an absurd iterator cannot wrap the total back under the limit.
        bytes = bytes
            .saturating_add(key.len())
            .saturating_add(value.map_or(0, <[u8]>::len));
    }
    if count > MAX_BATCH_OPS {
        return Err(LimitError::TooManyOps {
            ops: count,
            max: MAX_BATCH_OPS,
        });
    }
    if bytes > MAX_BATCH_BYTES {
        return Err(LimitError::BatchTooLarge {
            bytes,
            max: MAX_BATCH_BYTES,
        });
    }
    Ok(())
}

/// Pairs read by a scan.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Where a scan's next page starts, after `pairs` read so far from
/// `from` on: just past the last key; None if the last page made no
/// progress (never from a server that keeps to the protocol: the caller
/// stops rather than ask again for ever).
pub fn next_scan_start(pairs: &Pairs, from: &[u8]) -> Option<Vec<u8>> {
    match pairs.last() {
        Some((k, _)) if k.as_slice() >= from => {
            let mut next = k.clone();
            next.push(0);
            Some(next)
        }
        _ => None,
    }
}

/// A scan that reads a range's parts one after another in key order
/// (range shards: every key of a part comes before the next part's):
/// whether the pages read so far already make a whole answer of at most
/// `limit` pairs and `max_bytes`, so the parts after them need not be
/// asked (nor, in a transaction, locked). True once the last page has
/// more past it, or the pages hold `limit` pairs or `max_bytes`. The
/// caller that stops with parts unasked adds an empty page that has
/// more, so [`merge_scan_pages`] says there is more.
fn ordered_pages_suffice(pages: &[(Pairs, bool)], limit: usize, max_bytes: usize) -> bool {
    if pages.last().is_some_and(|(_, more)| *more) {
        return true;
    }
    let pairs: usize = pages.iter().map(|(p, _)| p.len()).sum();
    let bytes = pages
        .iter()
        .flat_map(|(p, _)| p)
        .fold(0usize, |b, (k, v)| b.saturating_add(k.len() + v.len()));
    pairs >= limit || bytes >= max_bytes
}

/// One page of a scan of a range cut into parts (one per shard), built
/// as the parts' answers come in: what to ask the next part for, when the
/// page is whole, and the answer merged from the parts. Parts `ordered`
/// (range shards, in key order) are asked each for what the page still
/// lacks and stop at the first that fills it ([`ordered_pages_suffice`]);
/// other parts (a hash ring's, whose keys interleave) are all asked for
/// the whole page.
#[derive(Debug)]
pub struct ScanPage {
    pages: Vec<(Pairs, bool)>,
    ordered: bool,
    limit: usize,
}

impl ScanPage {
    pub fn new(ordered: bool, limit: usize) -> ScanPage {
        ScanPage {
            pages: Vec::new(),
            ordered,
            limit,
        }
    }

    /// How many pairs to ask the next part for.
    pub fn want(&self) -> usize {
        if self.ordered {
            let got: usize = self.pages.iter().map(|(p, _)| p.len()).sum();
            self.limit.saturating_sub(got)
        } else {
            self.limit
        }
    }

    /// Add a part's answer (`more`: the part has keys past it); true once
    /// the page is whole, so the parts after it need not be asked (nor, in
    /// a transaction, locked). `parts_left`: whether any part is still
    /// unasked, in which case the page says there is more.
    pub fn add(&mut self, pairs: Pairs, more: bool, parts_left: bool) -> bool {
        self.pages.push((pairs, more));
        if self.ordered && ordered_pages_suffice(&self.pages, self.limit, MAX_BATCH_BYTES) {
            if parts_left {
                self.pages.push((Vec::new(), true));
            }
            return true;
        }
        false
    }

    /// Forget the parts read so far (the range is read again, by a new
    /// map whose parts may be `ordered` or not).
    pub fn restart(&mut self, ordered: bool) {
        self.pages.clear();
        self.ordered = ordered;
    }

    /// The page: [`merge_scan_pages`] of the parts, at most `max_bytes`.
    pub fn finish(self, max_bytes: usize) -> (Pairs, bool) {
        merge_scan_pages(self.pages, self.limit, max_bytes)
    }
}

/// One answer to a scan of a range cut into parts (one per shard), from
/// each part's page (sorted, with whether that part has keys past it):
/// the pairs in key order, but only up to the smallest last key of a part
/// that has more (past it, that part's keys are not known yet, and
/// handing out a later key of another part would skip them), at most
/// `limit` pairs and `max_bytes` of keys and values (at least one pair);
/// and whether there is more. The next page starts after the last pair.
pub fn merge_scan_pages(
    pages: Vec<(Pairs, bool)>,
    limit: usize,
    max_bytes: usize,
) -> (Pairs, bool) {
    let cut: Option<Vec<u8>> = pages
        .iter()
        .filter(|(p, more)| *more && !p.is_empty())
        .filter_map(|(p, _)| p.last().map(|(k, _)| k.clone()))
        .min();
    let mut more = pages.iter().any(|(_, more)| *more);
    let mut all: Pairs = pages.into_iter().flat_map(|(p, _)| p).collect();
    all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    if let Some(cut) = cut {
        all.retain(|(k, _)| *k <= cut);
    }
    if all.len() > limit {
        all.truncate(limit);
        more = true;
    }
    let mut bytes = 0usize;
    if let Some(over) = all.iter().position(|(k, v)| {
        bytes = bytes.saturating_add(k.len() + v.len());
        bytes > max_bytes
    }) {
        all.truncate(over.max(1));
        more = true;
    }
    (all, more)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_limits() {
        assert_eq!(validate_key(b""), Err(LimitError::EmptyKey));
        assert_eq!(validate_key(b"a"), Ok(()));
        assert_eq!(validate_key(&vec![b'k'; MAX_KEY_BYTES]), Ok(()));
        assert_eq!(
            validate_key(&vec![b'k'; MAX_KEY_BYTES + 1]),
            Err(LimitError::KeyTooLarge {
                len: MAX_KEY_BYTES + 1,
                max: MAX_KEY_BYTES
            })
        );
    }

    #[test]
    fn read_batch_limits() {
        assert_eq!(validate_reads(&[]), Ok(()));
        assert_eq!(validate_reads(&[b"a".to_vec(), b"b".to_vec()]), Ok(()));
        assert_eq!(
            validate_reads(&[b"a".to_vec(), Vec::new()]),
            Err(LimitError::EmptyKey)
        );
        assert_eq!(
            validate_reads(&vec![b"k".to_vec(); MAX_BATCH_OPS + 1]),
            Err(LimitError::TooManyReads {
                keys: MAX_BATCH_OPS + 1,
                max: MAX_BATCH_OPS
            })
        );
    }

    #[test]
    fn value_limits() {
        assert_eq!(validate_value(b""), Ok(()));
        assert_eq!(validate_value(&vec![0; MAX_VALUE_BYTES]), Ok(()));
        assert_eq!(
            validate_value(&vec![0; MAX_VALUE_BYTES + 1]),
            Err(LimitError::ValueTooLarge {
                len: MAX_VALUE_BYTES + 1,
                max: MAX_VALUE_BYTES
            })
        );
    }

    #[test]
    fn batch_accepts_puts_and_deletes() {
        let ops: Vec<(&[u8], Option<&[u8]>)> =
            vec![(b"a", Some(b"1")), (b"b", None), (b"c", Some(b""))];
        assert_eq!(validate_batch(ops), Ok(()));
        assert_eq!(validate_batch(std::iter::empty()), Ok(()));
    }

    #[test]
    fn batch_rejects_bad_items() {
        let ops: Vec<(&[u8], Option<&[u8]>)> = vec![(b"a", Some(b"1")), (b"", None)];
        assert_eq!(validate_batch(ops), Err(LimitError::EmptyKey));

        let big = vec![0u8; MAX_VALUE_BYTES + 1];
        let ops: Vec<(&[u8], Option<&[u8]>)> = vec![(b"a", Some(&big))];
        assert!(matches!(
            validate_batch(ops),
            Err(LimitError::ValueTooLarge { .. })
        ));
    }

    #[test]
    fn batch_op_count_limit() {
        let keys: Vec<Vec<u8>> = (0..=MAX_BATCH_OPS)
            .map(|i| format!("k{i}").into_bytes())
            .collect();
        let at_max = keys[..MAX_BATCH_OPS].iter().map(|k| (k.as_slice(), None));
        assert_eq!(validate_batch(at_max), Ok(()));
        let over = keys.iter().map(|k| (k.as_slice(), None));
        assert_eq!(
            validate_batch(over),
            Err(LimitError::TooManyOps {
                ops: MAX_BATCH_OPS + 1,
                max: MAX_BATCH_OPS
            })
        );
    }

    #[test]
    fn batch_byte_limit_counts_keys_and_values() {
        // Four full-size values are exactly at the limit only without keys;
        // the one-byte keys push the total over.
        let value = vec![0u8; MAX_VALUE_BYTES];
        let keys: Vec<[u8; 1]> = (0..4u8).map(|i| [i + 1]).collect();
        let ops = keys.iter().map(|k| (&k[..], Some(value.as_slice())));
        assert_eq!(
            validate_batch(ops),
            Err(LimitError::BatchTooLarge {
                bytes: MAX_BATCH_BYTES + 4,
                max: MAX_BATCH_BYTES
            })
        );
        let ops = keys[..3].iter().map(|k| (&k[..], Some(value.as_slice())));
        assert_eq!(validate_batch(ops), Ok(()));
    }

    #[test]
    fn messages_are_readable() {
        let msg = LimitError::KeyTooLarge {
            len: 5000,
            max: 4096,
        }
        .to_string();
        assert!(msg.contains("5000") && msg.contains("4096"), "{msg}");
        assert!(LimitError::EmptyKey.to_string().contains("empty"));
    }

    #[test]
    fn merged_scan_pages_never_skip_a_parts_unread_keys() {
        let p = |ks: &[&str]| -> Pairs {
            ks.iter()
                .map(|k| (k.as_bytes().to_vec(), b"v".to_vec()))
                .collect()
        };
        let keys = |r: &Pairs| -> Vec<String> {
            r.iter()
                .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
                .collect()
        };
        // Part one stopped at "c" with more to come: nothing past "c".
        let (r, more) = merge_scan_pages(
            vec![(p(&["a", "c"]), true), (p(&["b", "d"]), false)],
            10,
            usize::MAX,
        );
        assert_eq!(keys(&r), ["a", "b", "c"]);
        assert!(more);
        // All parts complete: everything, in order.
        let (r, more) = merge_scan_pages(
            vec![(p(&["d"]), false), (p(&["a", "b"]), false)],
            10,
            usize::MAX,
        );
        assert_eq!(keys(&r), ["a", "b", "d"]);
        assert!(!more);
        // The limit, then the byte budget (at least one pair).
        let (r, more) = merge_scan_pages(vec![(p(&["a", "b", "c"]), false)], 2, usize::MAX);
        assert_eq!(keys(&r), ["a", "b"]);
        assert!(more);
        let (r, more) = merge_scan_pages(vec![(p(&["a", "b", "c"]), false)], 10, 5);
        assert_eq!(keys(&r), ["a", "b"]);
        assert!(more);
        let (r, more) = merge_scan_pages(vec![(p(&["a", "b"]), false)], 10, 1);
        assert_eq!(keys(&r), ["a"]);
        assert!(more);
        // Parts read in key order: enough once a part has more, or the
        // pages hold the limit or the byte budget; an empty page with more
        // stands for the parts not asked.
        assert!(!ordered_pages_suffice(&[], 2, usize::MAX));
        assert!(!ordered_pages_suffice(&[(p(&["a"]), false)], 2, usize::MAX));
        assert!(ordered_pages_suffice(&[(p(&["a"]), true)], 2, usize::MAX));
        let two = [(p(&["a"]), false), (p(&["m"]), false)];
        assert!(ordered_pages_suffice(&two, 2, usize::MAX));
        assert!(ordered_pages_suffice(&two[..1], 5, 2));
        assert!(!ordered_pages_suffice(&two[..1], 5, 3));
        let (both, more) = merge_scan_pages(
            vec![(p(&["a"]), false), (p(&["m"]), false), (Vec::new(), true)],
            2,
            usize::MAX,
        );
        assert_eq!(keys(&both), ["a", "m"]);
        assert!(more);
        // A page built part by part: in key order, each part asked for what
        // is left, and whole at the limit with a part unasked; a ring's
        // parts each asked for the whole page.
        let mut page = ScanPage::new(true, 3);
        assert_eq!(page.want(), 3);
        assert!(!page.add(p(&["a", "b"]), false, true));
        assert_eq!(page.want(), 1);
        assert!(page.add(p(&["m"]), false, true));
        let (r3, more) = page.finish(usize::MAX);
        assert_eq!(keys(&r3), ["a", "b", "m"]);
        assert!(more);
        let mut ring = ScanPage::new(false, 3);
        assert!(!ring.add(p(&["b", "d", "f"]), true, true));
        assert_eq!(ring.want(), 3);
        assert!(!ring.add(p(&["a", "c"]), false, false));
        let (r3, more) = ring.finish(usize::MAX);
        assert_eq!(keys(&r3), ["a", "b", "c"]);
        assert!(more);
        // The next page starts just past the last key; none without progress.
        assert_eq!(next_scan_start(&r, b"a"), Some(b"a\0".to_vec()));
        assert_eq!(next_scan_start(&r, b"b"), None);
        assert_eq!(next_scan_start(&Vec::new(), b""), None);
    }
}
