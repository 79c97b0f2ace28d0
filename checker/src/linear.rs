//! Linearizability checking: the Wing & Gong / Lowe search with Porcupine's
//! memoization, generic over a sequential specification, plus the
//! cas-register and Porcupine kv specifications.

use std::collections::{BTreeMap, HashSet};
use std::hash::{BuildHasherDefault, Hash, Hasher};

use serde_json::json;

use crate::history::{pair, Call};
use crate::intern::Interner;
use crate::list_append::malformed;
use crate::{CheckResult, History, OpType, Options, Value};

/// A sequential specification of an object: a state and the operations that
/// move it. `step` returns None when the operation (including the result it
/// claims to have observed) is impossible in `state`.
pub trait Model {
    type State: Clone + Eq + Hash;
    type Input;
    fn init(&self) -> Self::State;
    fn step(&self, state: &Self::State, input: &Self::Input) -> Option<Self::State>;
    /// For reports only.
    fn describe(&self, state: &Self::State) -> serde_json::Value;
}

/// One operation as the search sees it. `ret == None` means the op's outcome
/// is unknown (Jepsen `:info`): it may take effect at any point after `call`,
/// or never.
#[derive(Clone, Debug)]
pub struct LinOp<I> {
    pub call: u64,
    pub ret: Option<u64>,
    pub input: I,
}

#[derive(Clone, Debug, PartialEq)]
pub enum LinOutcome {
    Linearizable,
    /// `longest` is the longest linearizable prefix found (indices into the
    /// op slice, in linearization order); `stuck` is the op whose response
    /// came before it could be linearized at that point, and `state` the
    /// model state there.
    Illegal {
        longest: Vec<usize>,
        stuck: Option<usize>,
        state: serde_json::Value,
    },
    /// The memo table grew past the budget.
    Unknown {
        explored: usize,
    },
}

const NONE: u32 = u32::MAX;

/// FxHash: the memo keys are already well-mixed (Zobrist hashes and small
/// states), so SipHash's DoS resistance buys nothing but time.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

impl Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(buf));
        }
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
}

pub(crate) type FxBuild = BuildHasherDefault<FxHasher>;
pub(crate) type FxMap<K, V> = std::collections::HashMap<K, V, FxBuild>;

/// A memo entry: a fingerprint of which ops are linearized, and the
/// resulting state. The set is represented by two independent Zobrist
/// hashes (XORs of per-op random words), maintained incrementally as ops are
/// linearized and undone. Two distinct sets collide with probability 2^-128,
/// far below any practical concern, and in exchange an entry costs 16 bytes
/// instead of a bitset of n bits (Porcupine stores the bitset, which for
/// thousands of ops and millions of entries means gigabytes).
#[derive(PartialEq, Eq)]
struct MemoKey<S> {
    z1: u64,
    z2: u64,
    state: S,
}

impl<S: Hash> Hash for MemoKey<S> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_u64(self.z1);
        self.state.hash(h);
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Decides whether `ops` are linearizable with respect to `model`.
///
/// Events are laid out in time order in a doubly-linked list. The search
/// repeatedly tries to linearize a call that is still minimal (no pending
/// return precedes it); reaching a return whose call is not yet linearized
/// means backtracking. A (linearized set, state) pair seen before cannot
/// lead anywhere new, so it is pruned: this memo is what makes the search
/// practical. Unknown-outcome ops have their return at +infinity; once the
/// only returns left are theirs, every remaining op is optional and the
/// history is linearizable.
pub fn check_ops<M: Model>(model: &M, ops: &[LinOp<M::Input>], max_states: usize) -> LinOutcome {
    let n = ops.len();
    if n == 0 {
        return LinOutcome::Linearizable;
    }
    // Event list: (time, is_return, op). At equal times calls sort first,
    // so ops that touch are treated as concurrent.
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        events.push((op.call, false, i));
        // A return stamped before its call (clock skew in the input) would
        // break the list's call-before-return invariant; clamp it.
        events.push((op.ret.map_or(u64::MAX, |r| r.max(op.call)), true, i));
    }
    events.sort_by_key(|&(t, is_ret, i)| (t, is_ret, i));

    let m = events.len();
    let head = m as u32; // sentinel
    let mut next = vec![NONE; m + 1];
    let mut prev = vec![NONE; m + 1];
    let mut op_of = vec![0usize; m];
    let mut is_call = vec![false; m];
    let mut match_of = vec![NONE; m];
    let mut call_entry = vec![NONE; n];
    let mut last = head;
    for (e, &(_, is_ret, i)) in events.iter().enumerate() {
        let e32 = e as u32;
        op_of[e] = i;
        is_call[e] = !is_ret;
        if is_ret {
            match_of[call_entry[i] as usize] = e32;
        } else {
            call_entry[i] = e32;
        }
        next[last as usize] = e32;
        prev[e] = last;
        last = e32;
    }

    let zob: Vec<(u64, u64)> = (0..n as u64)
        .map(|i| (splitmix(2 * i), splitmix(2 * i + 1)))
        .collect();
    let (mut z1, mut z2) = (0u64, 0u64);
    let mut state = model.init();
    let mut memo: HashSet<MemoKey<M::State>, FxBuild> = HashSet::default();
    // (call entry, state before it)
    let mut stack: Vec<(u32, M::State)> = Vec::new();
    let mut longest: Vec<usize> = Vec::new();
    let mut stuck: Option<(usize, M::State)> = None;

    let lift = |next: &mut [u32], prev: &mut [u32], e: u32, mt: u32| {
        for x in [e, mt] {
            let (p, nx) = (prev[x as usize], next[x as usize]);
            next[p as usize] = nx;
            if nx != NONE {
                prev[nx as usize] = p;
            }
        }
    };
    let unlift = |next: &mut [u32], prev: &mut [u32], e: u32, mt: u32| {
        // Reverse order of `lift`, so the dancing-links restore is exact.
        for x in [mt, e] {
            let (p, nx) = (prev[x as usize], next[x as usize]);
            next[p as usize] = x;
            if nx != NONE {
                prev[nx as usize] = x;
            }
        }
    };

    let mut entry = next[head as usize];
    loop {
        if entry == NONE {
            return LinOutcome::Linearizable;
        }
        let e = entry as usize;
        let i = op_of[e];
        if is_call[e] {
            match model.step(&state, &ops[i].input) {
                // Linearizing an unknown-outcome op that changes nothing
                // leads to a configuration the current one dominates (same
                // state, one fewer optional op), so it cannot help.
                Some(new_state) if ops[i].ret.is_none() && new_state == state => {
                    entry = next[e];
                }
                Some(new_state) => {
                    let key = MemoKey {
                        z1: z1 ^ zob[i].0,
                        z2: z2 ^ zob[i].1,
                        state: new_state,
                    };
                    if memo.contains(&key) {
                        entry = next[e];
                    } else {
                        let new_state = key.state.clone();
                        memo.insert(key);
                        if memo.len() > max_states {
                            return LinOutcome::Unknown {
                                explored: memo.len(),
                            };
                        }
                        z1 ^= zob[i].0;
                        z2 ^= zob[i].1;
                        let old = std::mem::replace(&mut state, new_state);
                        stack.push((entry, old));
                        lift(&mut next, &mut prev, entry, match_of[e]);
                        entry = next[head as usize];
                    }
                }
                None => entry = next[e],
            }
        } else {
            if ops[i].ret.is_none() {
                // Only unknown-outcome returns remain.
                return LinOutcome::Linearizable;
            }
            // The deepest dead end is the most informative one to report;
            // snapshotting only here keeps success paths free of copies.
            if stuck.is_none() || stack.len() > longest.len() {
                longest = stack.iter().map(|(ce, _)| op_of[*ce as usize]).collect();
                stuck = Some((i, state.clone()));
            }
            let Some((ce, old)) = stack.pop() else {
                let (stuck, state) = match stuck {
                    Some((s, st)) => (Some(s), model.describe(&st)),
                    None => (None, model.describe(&model.init())),
                };
                return LinOutcome::Illegal {
                    longest,
                    stuck,
                    state,
                };
            };
            let j = op_of[ce as usize];
            z1 ^= zob[j].0;
            z2 ^= zob[j].1;
            state = old;
            unlift(&mut next, &mut prev, ce, match_of[ce as usize]);
            entry = next[ce as usize];
        }
    }
}

/// A register starting at nil, with values interned to ids.
pub(crate) struct CasRegister<'a> {
    values: &'a Interner,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum RegOp {
    Read(u32),
    Write(u32),
    Cas(u32, u32),
}

impl Model for CasRegister<'_> {
    type State = u32;
    type Input = RegOp;
    fn init(&self) -> u32 {
        0
    }
    fn step(&self, s: &u32, op: &RegOp) -> Option<u32> {
        match *op {
            RegOp::Read(v) => (v == *s).then_some(*s),
            RegOp::Write(v) => Some(v),
            RegOp::Cas(old, new) => (old == *s).then_some(new),
        }
    }
    fn describe(&self, s: &u32) -> serde_json::Value {
        json!(self.values.value(*s).to_edn())
    }
}

/// Porcupine's kv object restricted to one key: a string that starts empty.
pub(crate) struct KvKey;

#[derive(Clone, Debug)]
pub(crate) enum KvOp {
    Get(String),
    Put(String),
    Append(String),
}

impl Model for KvKey {
    type State = String;
    type Input = KvOp;
    fn init(&self) -> String {
        String::new()
    }
    fn step(&self, s: &String, op: &KvOp) -> Option<String> {
        match op {
            KvOp::Get(v) => (v == s).then(|| s.clone()),
            KvOp::Put(v) => Some(v.clone()),
            KvOp::Append(v) => Some(format!("{s}{v}")),
        }
    }
    fn describe(&self, s: &String) -> serde_json::Value {
        json!(s)
    }
}

fn to_lin<I>(c: &Call<'_>, input: I) -> LinOp<I> {
    LinOp {
        call: c.start,
        ret: c.end,
        input,
    }
}

pub(crate) fn check_cas_register(history: &History, opts: &Options) -> CheckResult {
    let calls = match pair(history) {
        Ok(c) => c,
        Err(e) => return malformed(0, e),
    };
    let mut values = Interner::default();
    let mut ops = Vec::new();
    let mut origin = Vec::new();
    for c in &calls {
        // Failed ops did not happen; crashed reads observed nothing.
        if c.typ == OpType::Fail || (c.typ == OpType::Info && c.f == "read") {
            continue;
        }
        let op = match c.f {
            "read" => RegOp::Read(values.id(c.output())),
            "write" => RegOp::Write(values.id(c.input())),
            "cas" => match c.input().as_seq() {
                Some([old, new]) => RegOp::Cas(values.id(old), values.id(new)),
                _ => {
                    return malformed(
                        calls.len(),
                        format!(
                            "op {}: :cas value must be [old new], got {}",
                            c.index(),
                            c.input().to_edn()
                        ),
                    )
                }
            },
            f => {
                return malformed(
                    calls.len(),
                    format!("op {}: cas-register has no operation :{f}", c.index()),
                )
            }
        };
        ops.push(to_lin(c, op));
        origin.push(c);
    }
    let outcome = check_ops(&CasRegister { values: &values }, &ops, opts.max_states);
    report(outcome, &origin, calls.len(), None)
}

pub(crate) fn check_kv(history: &History, opts: &Options) -> CheckResult {
    let calls = match pair(history) {
        Ok(c) => c,
        Err(e) => return malformed(0, e),
    };
    // Linearizability is local (Herlihy & Wing): each key can be checked on
    // its own, which keeps the search space per key small.
    let mut by_key: BTreeMap<String, (Vec<LinOp<KvOp>>, Vec<&Call<'_>>)> = BTreeMap::new();
    for c in &calls {
        if c.typ == OpType::Fail || (c.typ == OpType::Info && c.f == "get") {
            continue;
        }
        let Some(key) = c.key() else {
            return malformed(calls.len(), format!("op {}: kv op has no :key", c.index()));
        };
        let text = |v: &Value| match v {
            Value::Nil => String::new(),
            Value::Str(s) => s.clone(),
            other => other.to_edn(),
        };
        let op = match c.f {
            "get" => KvOp::Get(text(c.output())),
            "put" => KvOp::Put(text(c.input())),
            "append" => KvOp::Append(text(c.input())),
            f => {
                return malformed(
                    calls.len(),
                    format!("op {}: kv has no operation :{f}", c.index()),
                )
            }
        };
        let slot = by_key.entry(key.to_edn()).or_default();
        slot.0.push(to_lin(c, op));
        slot.1.push(c);
    }
    let mut bad = Vec::new();
    let mut unknown = Vec::new();
    for (key, (ops, origin)) in &by_key {
        match check_ops(&KvKey, ops, opts.max_states) {
            LinOutcome::Linearizable => {}
            outcome @ LinOutcome::Illegal { .. } => {
                bad.push(report(outcome, origin, ops.len(), Some(key)).details)
            }
            outcome @ LinOutcome::Unknown { .. } => {
                unknown.push(report(outcome, origin, ops.len(), Some(key)).details)
            }
        }
    }
    let mut anomalies = Vec::new();
    if !bad.is_empty() {
        anomalies.push("nonlinearizable".to_string());
    }
    if !unknown.is_empty() {
        anomalies.push("unknown".to_string());
    }
    let details = json!({
        "keys": by_key.len(),
        "nonlinearizable_keys": bad,
        "unknown_keys": unknown,
    });
    if anomalies.is_empty() {
        CheckResult::valid(details, calls.len())
    } else {
        CheckResult::invalid(anomalies, details, calls.len())
    }
}

fn report(
    outcome: LinOutcome,
    origin: &[&Call<'_>],
    op_count: usize,
    key: Option<&str>,
) -> CheckResult {
    match outcome {
        LinOutcome::Linearizable => {
            CheckResult::valid(json!({ "ops_checked": origin.len() }), op_count)
        }
        LinOutcome::Illegal {
            longest,
            stuck,
            state,
        } => {
            // The tail of the prefix is what a reader needs to see why the
            // stuck op fits nowhere; the whole prefix can be hundreds long.
            const TAIL: usize = 12;
            let tail: Vec<_> = longest
                .iter()
                .skip(longest.len().saturating_sub(TAIL))
                .map(|&i| origin[i].summary())
                .collect();
            CheckResult::invalid(
                vec!["nonlinearizable".into()],
                json!({
                    "key": key,
                    "ops_checked": origin.len(),
                    "longest_linearizable_prefix_len": longest.len(),
                    "longest_linearizable_prefix_tail": tail,
                    "state_after_prefix": state,
                    "op_that_could_not_be_linearized": stuck.map(|i| origin[i].summary()),
                }),
                op_count,
            )
        }
        LinOutcome::Unknown { explored } => CheckResult::invalid(
            vec!["unknown".into()],
            json!({
                "key": key,
                "error": format!("linearizability search budget exhausted after {explored} states (Options::max_states)"),
            }),
            op_count,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{check, parse_edn, Model as M};

    fn reg(ops: &[(u64, Option<u64>, RegOp)]) -> LinOutcome {
        let values = Interner::default();
        let ops: Vec<_> = ops
            .iter()
            .map(|&(call, ret, input)| LinOp { call, ret, input })
            .collect();
        check_ops(&CasRegister { values: &values }, &ops, 1_000_000)
    }

    #[test]
    fn sequential_and_concurrent_histories() {
        use RegOp::*;
        assert_eq!(reg(&[]), LinOutcome::Linearizable);
        assert_eq!(
            reg(&[
                (0, Some(1), Write(1)),
                (2, Some(3), Read(1)),
                (4, Some(5), Cas(1, 2)),
                (6, Some(7), Read(2))
            ]),
            LinOutcome::Linearizable
        );
        // The read overlaps the write, so it may see either value.
        assert_eq!(
            reg(&[(0, Some(3), Write(1)), (1, Some(2), Read(1))]),
            LinOutcome::Linearizable
        );
        assert_eq!(
            reg(&[(0, Some(3), Write(1)), (1, Some(2), Read(0))]),
            LinOutcome::Linearizable
        );
        // A stale read after the write completed is not linearizable.
        let out = reg(&[(0, Some(1), Write(1)), (2, Some(3), Read(0))]);
        let LinOutcome::Illegal { longest, stuck, .. } = out else {
            panic!("expected illegal, got {out:?}")
        };
        assert_eq!(longest, vec![0]);
        assert_eq!(stuck, Some(1));
        // Two reads that disagree on the order of two concurrent writes.
        assert!(matches!(
            reg(&[
                (0, Some(10), Write(1)),
                (0, Some(10), Write(2)),
                (11, Some(12), Read(1)),
                (13, Some(14), Read(2)),
                (15, Some(16), Read(1)),
            ]),
            LinOutcome::Illegal { .. }
        ));
    }

    #[test]
    fn info_ops_may_happen_late_or_never() {
        use RegOp::*;
        // An unknown-outcome write seen long after its invocation.
        assert_eq!(
            reg(&[
                (0, None, Write(1)),
                (5, Some(6), Read(0)),
                (7, Some(8), Read(1))
            ]),
            LinOutcome::Linearizable
        );
        // ... or never seen at all.
        assert_eq!(
            reg(&[(0, None, Write(1)), (5, Some(6), Read(0))]),
            LinOutcome::Linearizable
        );
        // But it cannot take effect before it was invoked.
        assert!(matches!(
            reg(&[(0, Some(1), Read(1)), (2, None, Write(1))]),
            LinOutcome::Illegal { .. }
        ));
        // Nor be un-done once seen.
        assert!(matches!(
            reg(&[
                (0, None, Write(1)),
                (5, Some(6), Read(1)),
                (7, Some(8), Read(0))
            ]),
            LinOutcome::Illegal { .. }
        ));
    }

    /// Exhaustive reference: tries every order of every subset that keeps
    /// all completed ops and respects realtime order.
    fn brute(ops: &[(u64, Option<u64>, RegOp)]) -> bool {
        fn go(ops: &[(u64, Option<u64>, RegOp)], done: &mut Vec<bool>, state: u32) -> bool {
            let model = CasRegister {
                values: &Interner::default(),
            };
            if ops
                .iter()
                .zip(done.iter())
                .all(|(o, d)| *d || o.1.is_none())
            {
                return true;
            }
            for i in 0..ops.len() {
                if done[i] {
                    continue;
                }
                // i may go next only if no pending op returned before i's call.
                let blocked = ops
                    .iter()
                    .zip(done.iter())
                    .any(|(o, d)| !*d && o.1.is_some_and(|r| r < ops[i].0));
                if blocked {
                    continue;
                }
                if let Some(s) = model.step(&state, &ops[i].2) {
                    done[i] = true;
                    let ok = go(ops, done, s);
                    done[i] = false;
                    if ok {
                        return true;
                    }
                }
            }
            false
        }
        go(ops, &mut vec![false; ops.len()], 0)
    }

    #[test]
    fn agrees_with_brute_force_on_random_histories() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let (mut legal, mut illegal) = (0, 0);
        for _ in 0..3000 {
            let n = 1 + rand(6) as usize;
            let ops: Vec<_> = (0..n)
                .map(|_| {
                    let call = rand(10);
                    let ret = if rand(5) == 0 {
                        None
                    } else {
                        Some(call + 1 + rand(4))
                    };
                    let v = rand(3) as u32;
                    let op = match rand(3) {
                        0 => RegOp::Read(v),
                        1 => RegOp::Write(v),
                        _ => RegOp::Cas(v, rand(3) as u32),
                    };
                    (call, ret, op)
                })
                .collect();
            let expected = brute(&ops);
            let got = reg(&ops);
            match (&got, expected) {
                (LinOutcome::Linearizable, true) => legal += 1,
                (LinOutcome::Illegal { .. }, false) => illegal += 1,
                _ => panic!("WGL says {got:?}, brute force says {expected} for {ops:?}"),
            }
        }
        // Make sure both outcomes were actually exercised.
        assert!(
            legal > 300 && illegal > 300,
            "{legal} legal, {illegal} illegal"
        );
    }

    #[test]
    fn return_before_call_does_not_panic() {
        use RegOp::*;
        assert_eq!(
            reg(&[(5, Some(1), Write(1)), (6, Some(7), Read(1))]),
            LinOutcome::Linearizable
        );
    }

    #[test]
    fn budget_exhaustion_is_unknown() {
        use RegOp::*;
        let ops: Vec<_> = (0..12).map(|i| (0, Some(100), Write(i + 1))).collect();
        let values = Interner::default();
        let ops: Vec<_> = ops
            .into_iter()
            .map(|(call, ret, input)| LinOp { call, ret, input })
            .chain([LinOp {
                call: 101,
                ret: Some(102),
                input: Read(99),
            }])
            .collect();
        assert!(matches!(
            check_ops(&CasRegister { values: &values }, &ops, 50),
            LinOutcome::Unknown { .. }
        ));
    }

    #[test]
    fn cas_register_from_history() {
        let ok = parse_edn(
            "{:process 0, :type :invoke, :f :write, :value 1}\n\
             {:process 1, :type :invoke, :f :cas, :value [1 2]}\n\
             {:process 0, :type :ok, :f :write, :value 1}\n\
             {:process 1, :type :info, :f :cas, :value nil}\n\
             {:process 2, :type :invoke, :f :read, :value nil}\n\
             {:process 2, :type :ok, :f :read, :value 2}\n\
             {:process 3, :type :invoke, :f :cas, :value [5 6]}\n\
             {:process 3, :type :fail, :f :cas, :value [5 6]}\n\
             {:process 4, :type :invoke, :f :read, :value nil}\n\
             {:process 4, :type :info, :f :read, :value nil}\n",
        )
        .unwrap();
        let r = check(M::CasRegister, &ok, &Options::default());
        assert!(r.valid, "{r:?}");
        assert_eq!(r.op_count, 5);

        let mut bad = ok.clone();
        bad.push(
            parse_edn("{:process 2, :type :invoke, :f :read}")
                .unwrap()
                .remove(0),
        );
        bad.push(
            parse_edn("{:process 2, :type :ok, :f :read, :value 6}")
                .unwrap()
                .remove(0),
        );
        let r = check(M::CasRegister, &bad, &Options::default());
        assert!(!r.valid);
        assert_eq!(r.anomalies, vec!["nonlinearizable"]);
        assert_eq!(r.details["op_that_could_not_be_linearized"]["value"], "6");
    }

    #[test]
    fn kv_partitions_by_key() {
        let h = parse_edn(
            "{:process 0, :type :invoke, :f :append, :key \"a\", :value \"x\"}\n\
             {:process 0, :type :ok, :f :append, :key \"a\", :value \"x\"}\n\
             {:process 0, :type :invoke, :f :get, :key \"b\", :value nil}\n\
             {:process 0, :type :ok, :f :get, :key \"b\", :value \"\"}\n\
             {:process 0, :type :invoke, :f :append, :key \"a\", :value \"y\"}\n\
             {:process 0, :type :ok, :f :append, :key \"a\", :value \"y\"}\n\
             {:process 0, :type :invoke, :f :get, :key \"a\", :value nil}\n\
             {:process 0, :type :ok, :f :get, :key \"a\", :value \"xy\"}\n",
        )
        .unwrap();
        assert!(check(M::Kv, &h, &Options::default()).valid);
        let mut bad = h.clone();
        bad[7].value = Value::Str("yx".into());
        let r = check(M::Kv, &bad, &Options::default());
        assert_eq!(r.anomalies, vec!["nonlinearizable"]);
        assert_eq!(r.details["nonlinearizable_keys"][0]["key"], "\"a\"");
    }
}
