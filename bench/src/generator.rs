//! Key choosers: uniform, zipfian (YCSB's algorithm, scrambled by FNV-1a
//! style hashing as YCSB's `ScrambledZipfianGenerator` does) and latest
//! (zipfian over recency of inserted keys, as YCSB's
//! `SkewedLatestGenerator`).
//!
//! The zipfian sampler is the one from Gray et al., "Quickly Generating
//! Billion-Record Synthetic Databases" (SIGMOD 1994), which YCSB uses: with
//! `zeta(n) = sum_{i=1..n} 1/i^theta`, a uniform `u` in [0, 1) maps to
//! item 0 if `u * zeta(n) < 1`, to item 1 if below `1 + 0.5^theta`, and
//! otherwise to `n * (eta * u - eta + 1)^(1 / (1 - theta))`. When the item
//! count grows (inserts) zeta is extended incrementally.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rand::Rng;

/// YCSB's skew.
pub const ZIPFIAN_CONSTANT: f64 = 0.99;

/// Zipfian over `[base, base + items)`; item `base` is the most popular.
#[derive(Debug, Clone)]
pub struct Zipfian {
    base: u64,
    theta: f64,
    alpha: f64,
    zeta2: f64,
    zetan: f64,
    eta: f64,
    /// The item count `zetan` and `eta` were computed for.
    count: u64,
}

/// `sum_{i=from+1..=to} 1/i^theta + initial`.
fn zeta(from: u64, to: u64, theta: f64, initial: f64) -> f64 {
    let mut sum = initial;
    for i in from..to {
        sum += 1.0 / ((i + 1) as f64).powf(theta);
    }
    sum
}

impl Zipfian {
    /// `items >= 1` items starting at `base`, skew `theta` in (0, 1).
    pub fn new(base: u64, items: u64, theta: f64) -> Zipfian {
        let items = items.max(1);
        Self::with_zeta(base, items, theta, zeta(0, items, theta, 0.0))
    }

    /// As [`Zipfian::new`] with a precomputed `zeta(items)` (for huge
    /// item counts whose zeta would take long to sum).
    pub fn with_zeta(base: u64, items: u64, theta: f64, zetan: f64) -> Zipfian {
        let mut z = Zipfian {
            base,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zeta2: zeta(0, 2, theta, 0.0),
            zetan,
            eta: 0.0,
            count: items.max(1),
        };
        z.eta = z.eta_for(z.count);
        z
    }

    fn eta_for(&self, n: u64) -> f64 {
        (1.0 - (2.0 / n as f64).powf(1.0 - self.theta)) / (1.0 - self.zeta2 / self.zetan)
    }

    /// The current item count.
    pub fn items(&self) -> u64 {
        self.count
    }

    /// A sample over the current item count.
    pub fn sample<R: Rng + ?Sized>(&mut self, rng: &mut R) -> u64 {
        self.sample_of(rng, self.count)
    }

    /// A sample over `items` items, adjusting zeta if the count changed.
    pub fn sample_of<R: Rng + ?Sized>(&mut self, rng: &mut R, items: u64) -> u64 {
        let items = items.max(1);
        if items != self.count {
            self.zetan = if items > self.count {
                zeta(self.count, items, self.theta, self.zetan)
            } else {
                zeta(0, items, self.theta, 0.0)
            };
            self.count = items;
            self.eta = self.eta_for(items);
        }
        let u: f64 = rng.random();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return self.base;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return self.base + 1.min(items - 1);
        }
        let off = (items as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        self.base + off.min(items - 1)
    }
}

/// 64-bit FNV hash of the eight bytes of `v` (low byte first), made
/// non-negative as YCSB's `Utils.fnvhash64` does.
pub fn fnv_hash64(v: u64) -> u64 {
    const OFFSET_BASIS: u64 = 0xCBF2_9CE4_8422_2325;
    const PRIME: u64 = 1_099_511_628_211;
    let mut h = OFFSET_BASIS;
    let mut v = v;
    for _ in 0..8 {
        h ^= v & 0xff;
        h = h.wrapping_mul(PRIME);
        v >>= 8;
    }
    (h as i64).wrapping_abs() as u64
}

/// Zipfian popularity spread over the key space by hashing: the popular
/// items are scattered instead of clustered at the low key numbers.
#[derive(Debug, Clone)]
pub struct ScrambledZipfian {
    min: u64,
    items: u64,
    zipf: Zipfian,
}

impl ScrambledZipfian {
    /// YCSB draws from a zipfian over this many items, then hashes.
    const BIG_ITEMS: u64 = 10_000_000_000;
    /// zeta(10^10) for theta 0.99 (summing it takes minutes; YCSB also
    /// uses the precomputed value).
    const BIG_ZETAN: f64 = 26.469_028_201_783_02;

    pub fn new(min: u64, items: u64) -> ScrambledZipfian {
        ScrambledZipfian {
            min,
            items: items.max(1),
            zipf: Zipfian::with_zeta(0, Self::BIG_ITEMS, ZIPFIAN_CONSTANT, Self::BIG_ZETAN),
        }
    }

    pub fn sample<R: Rng + ?Sized>(&mut self, rng: &mut R) -> u64 {
        self.min + fnv_hash64(self.zipf.sample(rng)) % self.items
    }
}

/// Key numbers handed to inserts, and the highest key number below which
/// every insert has finished (what reads may pick: YCSB's acknowledged
/// counter). Inserts that failed are acknowledged too, as YCSB does, so
/// one failure does not freeze the window.
#[derive(Debug)]
pub struct InsertSequence {
    next: AtomicU64,
    /// Number of key numbers, from 0, that are all acknowledged.
    limit: AtomicU64,
    pending: Mutex<BTreeSet<u64>>,
}

impl InsertSequence {
    /// Keys `0..start` exist already.
    pub fn new(start: u64) -> InsertSequence {
        InsertSequence {
            next: AtomicU64::new(start),
            limit: AtomicU64::new(start),
            pending: Mutex::new(BTreeSet::new()),
        }
    }

    pub fn allocate(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    pub fn acknowledge(&self, n: u64) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.insert(n);
        let mut limit = self.limit.load(Ordering::Acquire);
        while pending.remove(&limit) {
            limit += 1;
        }
        self.limit.store(limit, Ordering::Release);
    }

    /// Number of readable keys (`0..count`); at least 1.
    pub fn count(&self) -> u64 {
        self.limit.load(Ordering::Acquire).max(1)
    }
}

/// Which request distribution a workload uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distribution {
    Uniform,
    Zipfian,
    Latest,
}

impl std::str::FromStr for Distribution {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "uniform" => Ok(Distribution::Uniform),
            "zipfian" => Ok(Distribution::Zipfian),
            "latest" => Ok(Distribution::Latest),
            other => Err(format!(
                "unknown request distribution {other:?}; use uniform, zipfian or latest"
            )),
        }
    }
}

impl Distribution {
    pub fn name(self) -> &'static str {
        match self {
            Distribution::Uniform => "uniform",
            Distribution::Zipfian => "zipfian",
            Distribution::Latest => "latest",
        }
    }
}

/// Picks the key number of the next read / update / scan.
#[derive(Debug, Clone)]
pub enum KeyChooser {
    /// Uniform over the records loaded before the run (as YCSB).
    Uniform { records: u64 },
    /// Scrambled zipfian over the loaded records plus room for the
    /// expected inserts; draws beyond the inserted keys are redrawn.
    Zipfian(ScrambledZipfian),
    /// Most recent inserts are the most popular.
    Latest(Zipfian),
}

impl KeyChooser {
    /// `records` loaded, `expected_inserts` more expected during the run.
    pub fn new(dist: Distribution, records: u64, expected_inserts: u64) -> KeyChooser {
        let records = records.max(1);
        match dist {
            Distribution::Uniform => KeyChooser::Uniform { records },
            Distribution::Zipfian => KeyChooser::Zipfian(ScrambledZipfian::new(
                0,
                records.saturating_add(expected_inserts),
            )),
            Distribution::Latest => KeyChooser::Latest(Zipfian::new(0, records, ZIPFIAN_CONSTANT)),
        }
    }

    pub fn next<R: Rng + ?Sized>(&mut self, rng: &mut R, seq: &InsertSequence) -> u64 {
        let count = seq.count();
        match self {
            KeyChooser::Uniform { records } => rng.random_range(0..(*records).min(count)),
            KeyChooser::Zipfian(z) => {
                for _ in 0..64 {
                    let k = z.sample(rng);
                    if k < count {
                        return k;
                    }
                }
                z.sample(rng) % count
            }
            KeyChooser::Latest(z) => {
                let back = z.sample_of(rng, count);
                count - 1 - back
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn histogram(samples: impl Iterator<Item = u64>, n: u64) -> Vec<u64> {
        let mut counts = vec![0u64; n as usize];
        for s in samples {
            counts[s as usize] += 1;
        }
        counts
    }

    #[test]
    fn zipfian_item_zero_dominates_median() {
        let n = 1000;
        let mut rng = StdRng::seed_from_u64(7);
        let mut z = Zipfian::new(0, n, ZIPFIAN_CONSTANT);
        let counts = histogram((0..200_000).map(|_| z.sample(&mut rng)), n);
        let max = *counts.iter().max().unwrap();
        assert_eq!(counts[0], max, "item 0 is the most popular");
        let mut sorted = counts.clone();
        sorted.sort_unstable();
        let median = sorted[sorted.len() / 2].max(1);
        assert!(counts[0] > 50 * median, "top {} median {median}", counts[0]);
        // Rank 1 about twice as popular as rank 2 (1/1^0.99 vs 1/2^0.99).
        let ratio = counts[0] as f64 / counts[1] as f64;
        assert!((1.7..2.3).contains(&ratio), "ratio {ratio}");
    }

    #[test]
    fn zipfian_incremental_zeta_matches_fresh() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut grown = Zipfian::new(0, 100, ZIPFIAN_CONSTANT);
        grown.sample_of(&mut rng, 5000);
        let fresh = Zipfian::new(0, 5000, ZIPFIAN_CONSTANT);
        assert!((grown.zetan - fresh.zetan).abs() < 1e-9);
        assert!((grown.eta - fresh.eta).abs() < 1e-9);
        assert_eq!(grown.items(), 5000);
    }

    #[test]
    fn zipfian_stays_in_range_for_tiny_counts() {
        let mut rng = StdRng::seed_from_u64(3);
        for n in 1..5 {
            let mut z = Zipfian::new(10, n, ZIPFIAN_CONSTANT);
            for _ in 0..1000 {
                let v = z.sample(&mut rng);
                assert!((10..10 + n).contains(&v));
            }
        }
    }

    #[test]
    fn scrambled_zipfian_spreads_hot_keys_but_stays_skewed() {
        let n = 1000;
        let mut rng = StdRng::seed_from_u64(11);
        let mut z = ScrambledZipfian::new(0, n);
        let counts = histogram((0..200_000).map(|_| z.sample(&mut rng)), n);
        let mut by_pop: Vec<(u64, usize)> =
            counts.iter().enumerate().map(|(i, c)| (*c, i)).collect();
        by_pop.sort_unstable_by(|a, b| b.cmp(a));
        let hot: Vec<usize> = by_pop.iter().take(10).map(|(_, i)| *i).collect();
        // The ten hottest keys are not the ten lowest key numbers.
        assert!(hot.iter().filter(|i| **i < 10).count() <= 2, "hot {hot:?}");
        let spread = hot.iter().max().unwrap() - hot.iter().min().unwrap();
        assert!(spread > n as usize / 4, "hot keys clustered: {hot:?}");
        // Still skewed: the hottest key is far above the median.
        let mut sorted = counts.clone();
        sorted.sort_unstable();
        assert!(by_pop[0].0 > 10 * sorted[sorted.len() / 2].max(1));
    }

    #[test]
    fn latest_favors_recent_inserts() {
        let seq = InsertSequence::new(1000);
        let mut rng = StdRng::seed_from_u64(5);
        let mut k = KeyChooser::new(Distribution::Latest, 1000, 0);
        let samples: Vec<u64> = (0..50_000).map(|_| k.next(&mut rng, &seq)).collect();
        assert!(samples.iter().all(|s| *s < 1000));
        let newest = samples.iter().filter(|s| **s == 999).count();
        let recent = samples.iter().filter(|s| **s >= 900).count();
        assert!(newest > samples.len() / 20, "newest {newest}");
        assert!(recent > samples.len() / 2, "recent {recent}");
        // New inserts become the favorites once acknowledged.
        for _ in 0..10 {
            let n = seq.allocate();
            seq.acknowledge(n);
        }
        assert_eq!(seq.count(), 1010);
        let newest = (0..10_000)
            .filter(|_| k.next(&mut rng, &seq) == 1009)
            .count();
        assert!(newest > 500, "newest after inserts {newest}");
    }

    #[test]
    fn insert_sequence_waits_for_gaps() {
        let seq = InsertSequence::new(5);
        let a = seq.allocate();
        let b = seq.allocate();
        seq.acknowledge(b);
        assert_eq!(seq.count(), 5, "gap at {a} not yet acknowledged");
        seq.acknowledge(a);
        assert_eq!(seq.count(), 7);
    }

    #[test]
    fn same_seed_same_keys() {
        let seq = InsertSequence::new(10_000);
        for dist in [
            Distribution::Uniform,
            Distribution::Zipfian,
            Distribution::Latest,
        ] {
            let draw = |seed| {
                let mut rng = StdRng::seed_from_u64(seed);
                let mut k = KeyChooser::new(dist, 10_000, 0);
                (0..1000)
                    .map(|_| k.next(&mut rng, &seq))
                    .collect::<Vec<_>>()
            };
            assert_eq!(draw(42), draw(42), "{dist:?}");
            assert_ne!(draw(42), draw(43), "{dist:?}");
        }
    }

    #[test]
    fn fnv_hash_is_stable_and_spreads() {
        assert_eq!(fnv_hash64(0), fnv_hash64(0));
        assert_ne!(fnv_hash64(0) % 1000, fnv_hash64(1) % 1000);
        assert!(fnv_hash64(u64::MAX) <= i64::MAX as u64 + 1);
    }
}
