//! Test scaffolding shared by the transactional checkers: hand-written
//! concurrent histories, and the randomized cross-check, which builds
//! random transactions over two keys with random (invoke, complete) times
//! and tallies the checker's verdict against an exhaustive search for a
//! serial order that respects realtime and explains every read.

use crate::{check, parse_edn, History, Model, Op, OpType, Options, Value};

/// Ok transactions given as EDN, one process each, all invoked before any
/// completes (so all concurrent).
pub(crate) fn concurrent(txns: &[&str]) -> History {
    let mut text = String::new();
    for (p, t) in txns.iter().enumerate() {
        text.push_str(&format!(
            "{{:process {p}, :type :invoke, :f :txn, :value {t}}}\n"
        ));
    }
    for (p, t) in txns.iter().enumerate() {
        text.push_str(&format!(
            "{{:process {p}, :type :ok, :f :txn, :value {t}}}\n"
        ));
    }
    parse_edn(&text).unwrap()
}

/// A micro-op `(is_write, key, value)` over keys 0 and 1. What a write
/// writes and a read returns is up to the model.
pub(crate) type Mop<V> = (bool, usize, V);
pub(crate) type Txn<V> = Vec<Mop<V>>;

/// A xorshift generator: deterministic, so a failure always reproduces.
pub(crate) struct Rng(u64);

impl Rng {
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    /// A random permutation of `0..n`.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            order.swap(i, self.below(i as u64 + 1) as usize);
        }
        order
    }

    /// `n` transactions of one to three micro-ops on a random key, each a
    /// write of `fresh(key)` or a read of `V::default()` (to be filled in)
    /// with even odds.
    pub fn txns<V: Default>(&mut self, n: usize, mut fresh: impl FnMut(usize) -> V) -> Vec<Txn<V>> {
        (0..n)
            .map(|_| {
                (0..1 + self.below(3))
                    .map(|_| {
                        let k = self.below(2) as usize;
                        if self.below(2) == 0 {
                            (true, k, fresh(k))
                        } else {
                            (false, k, V::default())
                        }
                    })
                    .collect()
            })
            .collect()
    }
}

/// How the checker's verdicts compared with the exhaustive search's.
pub(crate) struct Tally {
    /// Both found the history strictly serializable.
    pub agree_valid: usize,
    /// Both found it not.
    pub caught: usize,
    /// Only the search found it not.
    pub missed: usize,
}

/// Whether some serial order of `n` transactions, each placed after every
/// transaction that completed before it was invoked, is accepted by
/// `explains` (which replays an order and checks every read).
fn serializable(
    n: usize,
    times: &[(u64, u64)],
    explains: &dyn Fn(&[usize]) -> bool,
    order: &mut Vec<usize>,
) -> bool {
    if order.len() == n {
        return explains(order);
    }
    for i in 0..n {
        if order.contains(&i) {
            continue;
        }
        // Every txn that finished before i started must already be placed.
        if (0..n).any(|j| j != i && !order.contains(&j) && times[j].1 < times[i].0) {
            continue;
        }
        order.push(i);
        let ok = serializable(n, times, explains, order);
        order.pop();
        if ok {
            return true;
        }
    }
    false
}

/// Invoke/ok pairs, one process per transaction, in time order (an
/// invocation before a completion at the same time).
fn history(values: &[Value], times: &[(u64, u64)]) -> History {
    let mut history = Vec::new();
    for (i, value) in values.iter().enumerate() {
        for (typ, time) in [(OpType::Invoke, times[i].0), (OpType::Ok, times[i].1)] {
            history.push(Op {
                index: 0,
                time_ns: Some(time),
                process: i as i64,
                typ,
                f: "txn".into(),
                key: None,
                value: value.clone(),
            });
        }
    }
    history.sort_by_key(|o| (o.time_ns, o.typ != OpType::Invoke));
    for (i, o) in history.iter_mut().enumerate() {
        o.index = i as u64;
    }
    history
}

/// Runs `rounds` random histories of two to four transactions from
/// `generate` (given the generator and the count), each with random
/// overlapping times, through `model`'s checker and through the search,
/// with `encode` spelling a micro-op and `explains` replaying a serial
/// order. Panics if the checker flags a history the search serializes.
pub(crate) fn cross_check<V>(
    model: Model,
    seed: u64,
    rounds: usize,
    mut generate: impl FnMut(&mut Rng, usize) -> Vec<Txn<V>>,
    encode: impl Fn(&Mop<V>) -> Value,
    explains: impl Fn(&[usize], &[Txn<V>]) -> bool,
) -> Tally {
    let mut rng = Rng(seed);
    let mut tally = Tally {
        agree_valid: 0,
        caught: 0,
        missed: 0,
    };
    for _ in 0..rounds {
        let n = 2 + rng.below(3) as usize;
        let txns = generate(&mut rng, n);
        let times: Vec<(u64, u64)> = (0..n)
            .map(|_| {
                let a = rng.below(20);
                (a, a + 1 + rng.below(10))
            })
            .collect();
        let values: Vec<Value> = txns
            .iter()
            .map(|t| Value::Vec(t.iter().map(&encode).collect()))
            .collect();
        let history = history(&values, &times);
        let expected = serializable(n, &times, &|order| explains(order, &txns), &mut Vec::new());
        let r = check(model, &history, &Options::default());
        match (expected, r.valid) {
            (true, true) => tally.agree_valid += 1,
            (true, false) => panic!(
                "flagged {:?} on a strictly serializable history:\n{}",
                r.anomalies,
                crate::to_edn(&history)
            ),
            (false, false) => tally.caught += 1,
            (false, true) => tally.missed += 1,
        }
    }
    tally
}
