//! `--txn-scope`: which shards the accounts of one transfer live on.
//!
//! With `any` (the default) the accounts are drawn independently, so with
//! S shards most transfers span several shards (two-phase commit) and
//! some land on one. `single-shard` and `cross-shard` pick the accounts
//! with the client's shard map, to measure the two commit paths apart:
//! the first account is drawn by the workload's distribution as usual;
//! the others are drawn uniformly from the same shard (`single-shard`),
//! or from the other shards in turn (`cross-shard`: k accounts on
//! min(k, S) shards).

use std::collections::BTreeMap;

use pact_common::{ShardId, ShardMap};
use rand::Rng;

use crate::workload::account_key;
use crate::UsageError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TxnScope {
    /// Accounts drawn independently of their shards.
    #[default]
    Any,
    /// All accounts of a transfer on one shard.
    SingleShard,
    /// The accounts of a transfer on as many shards as possible (at least
    /// two).
    CrossShard,
}

impl TxnScope {
    pub fn name(self) -> &'static str {
        match self {
            TxnScope::Any => "any",
            TxnScope::SingleShard => "single-shard",
            TxnScope::CrossShard => "cross-shard",
        }
    }
}

/// The accounts grouped by shard, to pick a transfer's accounts by scope.
#[derive(Debug, Clone)]
pub struct Placement {
    scope: TxnScope,
    map: ShardMap,
    /// Account numbers per shard that holds any, by shard id.
    buckets: Vec<(ShardId, Vec<u64>)>,
}

/// Grouping accounts by shard keeps them all in memory.
const MAX_SCOPED_ACCOUNTS: u64 = 10_000_000;

impl Placement {
    /// Group accounts `0..accounts` by `map`; fails (a usage error) if
    /// `scope` cannot be met for `keys` accounts per transfer.
    pub fn new(
        scope: TxnScope,
        map: ShardMap,
        accounts: u64,
        keys: u64,
    ) -> Result<Placement, UsageError> {
        if accounts > MAX_SCOPED_ACCOUNTS {
            return Err(UsageError(format!(
                "--txn-scope {}: at most {MAX_SCOPED_ACCOUNTS} accounts (recordcount)",
                scope.name()
            )));
        }
        let mut by_shard: BTreeMap<ShardId, Vec<u64>> = BTreeMap::new();
        for n in 0..accounts {
            by_shard
                .entry(map.shard_for_key(&account_key(n)))
                .or_default()
                .push(n);
        }
        let buckets: Vec<(ShardId, Vec<u64>)> = by_shard.into_iter().collect();
        match scope {
            TxnScope::Any => {}
            TxnScope::SingleShard => {
                if let Some((shard, b)) = buckets.iter().find(|(_, b)| (b.len() as u64) < keys) {
                    return Err(UsageError(format!(
                        "--txn-scope single-shard: shard {} holds only {} of the {accounts} \
                         accounts, fewer than --txn-keys {keys}; raise --recordcount",
                        shard.0,
                        b.len()
                    )));
                }
            }
            TxnScope::CrossShard => {
                if buckets.len() < 2 {
                    return Err(UsageError(format!(
                        "--txn-scope cross-shard: the {accounts} accounts are all on one \
                         shard (the cluster has {} shards)",
                        map.shards().len()
                    )));
                }
            }
        }
        Ok(Placement {
            scope,
            map,
            buckets,
        })
    }

    pub fn scope(&self) -> TxnScope {
        self.scope
    }

    fn bucket_of(&self, n: u64) -> Option<usize> {
        let shard = self.map.shard_for_key(&account_key(n));
        self.buckets.iter().position(|(s, _)| *s == shard)
    }

    /// `want` distinct accounts: `first`, then others by the scope. Falls
    /// back to any unused accounts if the scope cannot be met (it always
    /// can for a `Placement` that `new` accepted with `want <= keys`).
    pub fn pick<R: Rng + ?Sized>(&self, rng: &mut R, first: u64, want: usize) -> Vec<u64> {
        let mut out = vec![first];
        let home = self.bucket_of(first);
        // The buckets to draw from, in the order to use them.
        let order: Vec<usize> = match (self.scope, home) {
            (TxnScope::SingleShard, Some(h)) => vec![h],
            (TxnScope::CrossShard, Some(h)) => {
                let n = self.buckets.len();
                let offset = rng.random_range(0..n);
                let mut others: Vec<usize> = (0..n)
                    .map(|i| (i + offset) % n)
                    .filter(|&i| i != h)
                    .collect();
                others.push(h);
                others
            }
            _ => (0..self.buckets.len()).collect(),
        };
        let all: Vec<usize> = (0..self.buckets.len()).collect();
        for order in [order, all] {
            loop {
                let mut drew = false;
                for &b in &order {
                    if out.len() >= want {
                        return out;
                    }
                    if let Some(n) = draw_unused(rng, &self.buckets[b].1, &out) {
                        out.push(n);
                        drew = true;
                    }
                }
                if !drew {
                    break;
                }
            }
        }
        out
    }
}

/// A uniformly drawn member of `bucket` not in `used` (after a few tries,
/// the first unused one), or `None` if all are used.
fn draw_unused<R: Rng + ?Sized>(rng: &mut R, bucket: &[u64], used: &[u64]) -> Option<u64> {
    if bucket.is_empty() {
        return None;
    }
    for _ in 0..32 {
        let n = bucket[rng.random_range(0..bucket.len())];
        if !used.contains(&n) {
            return Some(n);
        }
    }
    bucket.iter().copied().find(|n| !used.contains(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn map(shards: u64) -> ShardMap {
        let ids: Vec<ShardId> = (1..=shards).map(ShardId).collect();
        ShardMap::new_hash(&ids, 64)
    }

    fn shards_of(p: &Placement, nums: &[u64]) -> Vec<ShardId> {
        let mut s: Vec<ShardId> = nums
            .iter()
            .map(|n| p.map.shard_for_key(&account_key(*n)))
            .collect();
        s.sort_unstable();
        s.dedup();
        s
    }

    #[test]
    fn single_shard_keeps_every_transfer_on_one_shard() {
        let p = Placement::new(TxnScope::SingleShard, map(3), 1000, 4).unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        for first in 0..200 {
            let nums = p.pick(&mut rng, first, 4);
            assert_eq!(nums.len(), 4);
            assert_eq!(nums[0], first);
            let mut d = nums.clone();
            d.sort_unstable();
            d.dedup();
            assert_eq!(d.len(), 4, "{nums:?}");
            assert_eq!(shards_of(&p, &nums).len(), 1, "{nums:?}");
        }
    }

    #[test]
    fn cross_shard_spreads_over_min_k_s_shards() {
        let p = Placement::new(TxnScope::CrossShard, map(3), 1000, 5).unwrap();
        let mut rng = StdRng::seed_from_u64(2);
        for first in 0..200 {
            assert_eq!(shards_of(&p, &p.pick(&mut rng, first, 2)).len(), 2);
            let five = p.pick(&mut rng, first, 5);
            assert_eq!(five.len(), 5);
            assert_eq!(shards_of(&p, &five).len(), 3, "{five:?}");
        }
    }

    #[test]
    fn impossible_scopes_are_usage_errors() {
        assert!(Placement::new(TxnScope::CrossShard, map(1), 100, 2)
            .unwrap_err()
            .0
            .contains("one shard"));
        assert!(Placement::new(TxnScope::SingleShard, map(3), 3, 2)
            .unwrap_err()
            .0
            .contains("raise --recordcount"));
        // Exactly enough accounts: every one gets picked.
        let p = Placement::new(TxnScope::Any, map(2), 3, 3).unwrap();
        let mut rng = StdRng::seed_from_u64(3);
        let mut all = p.pick(&mut rng, 1, 3);
        all.sort_unstable();
        assert_eq!(all, vec![0, 1, 2]);
    }
}
