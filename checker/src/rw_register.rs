//! Elle's rw-register checker: transactions of `[:r k v]` and `[:w k v]`
//! over registers with unique writes per key.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;

use crate::elle::{self, GraphBuilder, Why, RW, WR, WW};
use crate::history::{pair, Call};
use crate::intern::{Interner, NIL_ID};
use crate::linear::FxMap;
use crate::list_append::{malformed, micro_ops, Found};
use crate::{CheckResult, History, OpType, Options};

#[derive(Clone, Copy)]
enum Mop {
    Read(u32, u32),
    Write(u32, u32),
}

struct Txn<'a> {
    call: &'a Call<'a>,
    mops: Vec<Mop>,
}

impl Txn<'_> {
    /// Reads of keys the transaction had not yet touched: these observe
    /// other transactions' writes.
    fn ext_reads(&self) -> Vec<(u32, u32)> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for m in &self.mops {
            match *m {
                Mop::Read(k, v) => {
                    if seen.insert(k) {
                        out.push((k, v));
                    }
                }
                Mop::Write(k, _) => {
                    seen.insert(k);
                }
            }
        }
        out
    }

    /// The last write to each key: the version the transaction installs.
    fn ext_writes(&self) -> FxMap<u32, u32> {
        let mut out = FxMap::default();
        for m in &self.mops {
            if let Mop::Write(k, v) = *m {
                out.insert(k, v);
            }
        }
        out
    }

    fn writes(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.mops.iter().filter_map(|m| match *m {
            Mop::Write(k, v) => Some((k, v)),
            Mop::Read(..) => None,
        })
    }

    fn reads(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.mops.iter().filter_map(|m| match *m {
            Mop::Read(k, v) => Some((k, v)),
            Mop::Write(..) => None,
        })
    }
}

pub(crate) fn check(history: &History, opts: &Options) -> CheckResult {
    let calls = match pair(history) {
        Ok(c) => c,
        Err(e) => return malformed(0, e),
    };
    let mut keys = Interner::default();
    let mut vals = Interner::default();
    let mut txns = Vec::new();
    for c in &calls {
        let value = if c.typ == OpType::Ok {
            c.output()
        } else {
            c.input()
        };
        let raw = match micro_ops(c, value) {
            Ok(m) => m,
            Err(e) => return malformed(calls.len(), e),
        };
        let mut mops = Vec::with_capacity(raw.len());
        for (f, k, v) in raw {
            let (k, v) = (keys.id(k), vals.id(v));
            match f {
                "r" => mops.push(Mop::Read(k, v)),
                "w" => mops.push(Mop::Write(k, v)),
                f => {
                    return malformed(
                        calls.len(),
                        format!("op {}: rw-register has no micro-op :{f}", c.index()),
                    )
                }
            }
        }
        txns.push(Txn { call: c, mops });
    }
    let ok = |t: &Txn<'_>| t.call.typ == OpType::Ok;
    let mut found = Found::default();

    let mut failed: FxMap<(u32, u32), usize> = FxMap::default();
    let mut intermediate: FxMap<(u32, u32), usize> = FxMap::default();
    let mut writer: FxMap<(u32, u32), usize> = FxMap::default();
    for (ti, t) in txns.iter().enumerate() {
        let ext = t.ext_writes();
        for (k, v) in t.writes() {
            if t.call.typ == OpType::Fail {
                failed.insert((k, v), ti);
            } else if ext.get(&k) != Some(&v) {
                intermediate.insert((k, v), ti);
            }
        }
        if t.call.typ != OpType::Fail {
            for (k, v) in ext {
                writer.insert((k, v), ti);
            }
        }
    }

    for (ti, t) in txns.iter().enumerate().filter(|(_, t)| ok(t)) {
        // internal: a read must repeat the transaction's own last read or
        // write of the key.
        let mut state: FxMap<u32, u32> = FxMap::default();
        for m in &t.mops {
            match *m {
                Mop::Write(k, v) => {
                    state.insert(k, v);
                }
                Mop::Read(k, v) => {
                    if let Some(&s) = state.get(&k) {
                        if s != v {
                            found.add(
                                "internal",
                                json!({
                                    "op": t.call.summary(),
                                    "key": keys.edn(k),
                                    "expected": vals.edn(s),
                                    "read": vals.edn(v),
                                }),
                            );
                            break;
                        }
                    }
                    state.insert(k, v);
                }
            }
        }
        // future-read: an external read (nothing of the key written yet
        // here) of a value this transaction writes later. Writes are
        // unique, so no serial order explains it.
        for (k, v) in t.ext_reads() {
            if v != NIL_ID && t.writes().any(|w| w == (k, v)) {
                found.add(
                    "future-read",
                    json!({
                        "op": t.call.summary(),
                        "key": keys.edn(k),
                        "value": vals.edn(v),
                    }),
                );
            }
        }
        for (k, v) in t.reads() {
            if v == NIL_ID {
                continue;
            }
            if let Some(&w) = failed.get(&(k, v)) {
                found.add(
                    "G1a",
                    json!({
                        "op": t.call.summary(),
                        "key": keys.edn(k),
                        "value": vals.edn(v),
                        "writer": txns[w].call.summary(),
                    }),
                );
            }
            if let Some(&w) = intermediate.get(&(k, v)) {
                if w != ti {
                    found.add(
                        "G1b",
                        json!({
                            "op": t.call.summary(),
                            "key": keys.edn(k),
                            "value": vals.edn(v),
                            "writer": txns[w].call.summary(),
                        }),
                    );
                }
            }
        }
    }

    // Nodes: ok and crashed transactions (crashed ones only as writers).
    let mut node_of = vec![None; txns.len()];
    let mut nodes: Vec<&Call<'_>> = Vec::new();
    for (ti, t) in txns.iter().enumerate() {
        if t.call.typ != OpType::Fail {
            node_of[ti] = Some(nodes.len() as u32);
            nodes.push(t.call);
        }
    }
    let mut readers: FxMap<(u32, u32), Vec<u32>> = FxMap::default();
    // Version order per key, as edges (v1, v2): nil precedes every version,
    // and a transaction that read v1 and then wrote v2 orders v1 < v2
    // (writes follow reads).
    let mut versions: FxMap<u32, BTreeSet<(u32, u32)>> = FxMap::default();
    for (ti, t) in txns.iter().enumerate() {
        let Some(me) = node_of[ti] else { continue };
        let ext_w = t.ext_writes();
        for (&k, &v) in &ext_w {
            if v != NIL_ID {
                versions.entry(k).or_default().insert((NIL_ID, v));
            }
        }
        if ok(t) {
            for (k, v) in t.ext_reads() {
                readers.entry((k, v)).or_default().push(me);
                if v != NIL_ID {
                    versions.entry(k).or_default().insert((NIL_ID, v));
                }
                if let Some(&w) = ext_w.get(&k) {
                    if w != v {
                        versions.entry(k).or_default().insert((v, w));
                    }
                }
            }
        }
    }
    let node = |k: u32, v: u32| writer.get(&(k, v)).and_then(|&ti| node_of[ti]);
    let build = |versions: &FxMap<u32, BTreeSet<(u32, u32)>>| {
        let mut b = GraphBuilder::default();
        for (&(k, v), rs) in &readers {
            if let Some(w) = node(k, v) {
                for &r in rs {
                    b.link(w, r, WR, [k, v, 0]);
                }
            }
        }
        // Sorted keys: which of two equal edges is linked first decides
        // the reason a report gives for it.
        let mut keys_sorted: Vec<_> = versions.keys().copied().collect();
        keys_sorted.sort_unstable();
        for k in keys_sorted {
            for &(v1, v2) in &versions[&k] {
                let Some(w2) = node(k, v2) else { continue };
                if let Some(w1) = node(k, v1) {
                    b.link(w1, w2, WW, [k, v1, v2]);
                }
                for &r in readers.get(&(k, v1)).map_or(&[][..], |v| v.as_slice()) {
                    b.link(r, w2, RW, [k, v1, v2]);
                }
            }
        }
        if opts.realtime {
            elle::add_order_edges(&mut b, &nodes);
        }
        b.build(nodes.len())
    };
    // Under strict serializability every key is linearizable, so a
    // version installed or read by a transaction that completed before
    // another was invoked precedes what that one reads or installs (Elle's
    // linearizable-keys). Cycles that need these orders are reported as
    // -realtime: they rest on realtime, not on data alone.
    let mut inferred: BTreeSet<Why> = BTreeSet::new();
    // Keys whose version order realtime extends, with the extended order.
    let mut extended: Vec<(u32, BTreeSet<(u32, u32)>)> = Vec::new();
    if opts.realtime {
        let mut by_key: Vec<_> = realtime_versions(&txns).into_iter().collect();
        by_key.sort_unstable_by_key(|(k, _)| *k);
        for (k, edges) in by_key {
            let mut all = versions.get(&k).cloned().unwrap_or_default();
            let mut new = Vec::new();
            for e in edges {
                if all.insert(e) {
                    new.push(e);
                }
            }
            if new.is_empty() {
                continue;
            }
            // Realtime contradicts itself on this key (a read saw a version
            // older than one installed before it began): report that, and
            // keep the contradiction out of the dependency graph.
            if let Some(cycle) = version_cycle(&all) {
                found.add(
                    "cyclic-versions",
                    json!({
                        "key": keys.edn(k),
                        "versions": cycle.iter().map(|&v| vals.edn(v)).collect::<Vec<_>>(),
                    }),
                );
                continue;
            }
            inferred.extend(new.iter().map(|&(a, b)| [k, a, b]));
            extended.push((k, all));
        }
    }
    let explain = |a: u32, bn: u32, rel: u8, why: Why| {
        let [k, v1, v2] = why;
        let (ia, ib) = (nodes[a as usize].index(), nodes[bn as usize].index());
        let key = keys.edn(k);
        let text = match rel {
            WW => format!(
                "op {ia} wrote {key} = {}, which op {ib} overwrote with {}",
                vals.edn(v1),
                vals.edn(v2)
            ),
            WR => format!("op {ib} read op {ia}'s write of {key} = {}", vals.edn(v1)),
            _ => format!(
                "op {ia} read {key} = {}, which op {ib} overwrote with {}",
                vals.edn(v1),
                vals.edn(v2)
            ),
        };
        if rel != WR && inferred.contains(&why) {
            format!("{text} (version order from realtime: keys are linearizable)")
        } else {
            text
        }
    };
    let g = build(&versions);
    let (cycles, mut truncated) = elle::find_cycles(&g);
    for c in &cycles {
        found.add(&c.name, elle::render_cycle(&g, c, &nodes, &explain));
    }
    if !inferred.is_empty() {
        let mut more = versions.clone();
        more.extend(extended);
        let g2 = build(&more);
        let (cycles2, cut) = elle::find_cycles(&g2);
        truncated |= cut;
        for c in &cycles2 {
            // A cycle without an inferred order is in `g` too, and its
            // component was reported above.
            let uses_inferred = c.steps.iter().any(|&(a, b, rel)| {
                rel != WR && g2.why(a, b, rel).is_some_and(|w| inferred.contains(&w))
            });
            if uses_inferred {
                let base = c.name.trim_end_matches("-realtime");
                let name = format!("{}-realtime", base.trim_end_matches("-process"));
                found.add(&name, elle::render_cycle(&g2, c, &nodes, &explain));
            }
        }
    }
    let mut extra = serde_json::Map::new();
    if opts.realtime {
        extra.insert("realtime_version_orders".into(), json!(inferred.len()));
    }
    extra.insert("realtime".into(), json!(opts.realtime));
    if truncated {
        extra.insert("cycle_search_truncated".into(), json!(true));
    }
    found.finish(extra, calls.len())
}

/// A cycle in one key's version order, as the versions along it (the first
/// repeated at the end), if there is one. Iterative, so long histories
/// cannot overflow the stack.
fn version_cycle(edges: &BTreeSet<(u32, u32)>) -> Option<Vec<u32>> {
    let mut adj: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for &(a, b) in edges {
        adj.entry(a).or_default().push(b);
    }
    // 1: on the current path, 2: done.
    let mut state: FxMap<u32, u8> = FxMap::default();
    for &root in adj.keys() {
        if state.contains_key(&root) {
            continue;
        }
        let mut path: Vec<(u32, usize)> = vec![(root, 0)];
        state.insert(root, 1);
        while let Some(&mut (v, ref mut next)) = path.last_mut() {
            let succ = adj.get(&v).map_or(&[][..], |s| s.as_slice());
            if let Some(&w) = succ.get(*next) {
                *next += 1;
                match state.get(&w) {
                    Some(1) => {
                        let from = path.iter().position(|&(x, _)| x == w).unwrap_or(0);
                        let mut cycle: Vec<u32> = path[from..].iter().map(|&(x, _)| x).collect();
                        cycle.push(w);
                        return Some(cycle);
                    }
                    Some(_) => {}
                    None => {
                        state.insert(w, 1);
                        path.push((w, 0));
                    }
                }
            } else {
                state.insert(v, 2);
                path.pop();
            }
        }
    }
    None
}

/// Version orders per key that realtime implies when keys are linearizable:
/// (v1, v2) when a transaction that read or wrote v1 (its last version of
/// the key) completed before one that reads or writes v2 was invoked.
/// Built with [`elle::realtime_sweep`], so the orders come transitively
/// reduced. Transactions of unknown outcome only install
/// versions (their reads are unknown) and never complete.
fn realtime_versions(txns: &[Txn<'_>]) -> FxMap<u32, BTreeSet<(u32, u32)>> {
    // Per key: (start, end, version) of each transaction touching it.
    let mut touches: FxMap<u32, Vec<(u64, Option<u64>, u32)>> = FxMap::default();
    for t in txns.iter().filter(|t| t.call.typ != OpType::Fail) {
        let mut ver = t.ext_writes();
        if t.call.typ == OpType::Ok {
            for (k, v) in t.ext_reads() {
                ver.entry(k).or_insert(v);
            }
        }
        let end = if t.call.typ == OpType::Ok {
            t.call.end
        } else {
            None
        };
        for (k, v) in ver {
            touches.entry(k).or_default().push((t.call.start, end, v));
        }
    }
    let mut out: FxMap<u32, BTreeSet<(u32, u32)>> = FxMap::default();
    for (k, ts) in touches {
        let spans: Vec<(u64, Option<u64>)> = ts.iter().map(|&(s, e, _)| (s, e)).collect();
        let edges = out.entry(k).or_default();
        elle::realtime_sweep(&spans, |f, i| {
            if ts[f].2 != ts[i].2 {
                edges.insert((ts[f].2, ts[i].2));
            }
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::testkit::concurrent;
    use crate::{check, parse_edn, Model, Options};

    fn anomalies(h: &crate::History) -> Vec<String> {
        check(Model::RwRegister, h, &Options::default()).anomalies
    }

    #[test]
    fn valid_history() {
        let h = concurrent(&["[[:w :x 1]]", "[[:r :x 1] [:w :x 2]]", "[[:r :x 2]]"]);
        assert!(anomalies(&h).is_empty(), "{:?}", anomalies(&h));
    }

    #[test]
    fn g1c_via_wr() {
        let h = concurrent(&["[[:w :x 1] [:r :y 1]]", "[[:w :y 1] [:r :x 1]]"]);
        assert_eq!(anomalies(&h), ["G1c"]);
    }

    #[test]
    fn g_single_read_skew() {
        let h = concurrent(&["[[:w :x 1] [:w :y 1]]", "[[:r :x nil] [:r :y 1]]"]);
        assert_eq!(anomalies(&h), ["G-single"]);
    }

    #[test]
    fn g2_item_write_skew() {
        let h = concurrent(&["[[:r :x nil] [:w :y 1]]", "[[:r :y nil] [:w :x 1]]"]);
        assert_eq!(anomalies(&h), ["G2-item"]);
    }

    #[test]
    fn g0_via_wfr_orders() {
        // T3 orders x1 < x2, T4 orders y2 < y1; T1 wrote x1,y1 and T2 x2,y2.
        let h = concurrent(&[
            "[[:w :x 1] [:w :y 1]]",
            "[[:w :x 2] [:w :y 2]]",
            "[[:r :x 1] [:w :x 3]]",
            "[[:r :y 2] [:w :y 4]]",
        ]);
        // The version orders x1 < x3 and y2 < y4 do not relate T1 and T2
        // directly, so this history is fine.
        assert!(anomalies(&h).is_empty(), "{:?}", anomalies(&h));
        // Each transaction reads the other's write and overwrites it on a
        // different key: x1 < x2 (T2) and y2 < y3 (T1) make a ww cycle.
        let h = concurrent(&[
            "[[:w :x 1] [:r :y 2] [:w :y 3]]",
            "[[:r :x 1] [:w :x 2] [:w :y 2]]",
        ]);
        assert_eq!(anomalies(&h), ["G0"]);
    }

    /// Like the list-append test: the checker must never flag a history
    /// that an exhaustive search can serialize in realtime order.
    #[test]
    fn never_flags_a_strictly_serializable_history() {
        use crate::testkit::{cross_check, Mop, Rng, Tally, Txn};
        use crate::Value;
        // (is_write, key, value)
        fn run(order: &[usize], txns: &[Txn<Option<i64>>]) -> bool {
            let mut state = [None, None];
            order.iter().all(|&i| {
                txns[i].iter().all(|&(w, k, v)| {
                    if w {
                        state[k] = v;
                        true
                    } else {
                        state[k] == v
                    }
                })
            })
        }
        let generate = |rng: &mut Rng, n: usize| {
            let mut next = 1i64;
            let mut txns = rng.txns(n, |_| {
                next += 1;
                Some(next)
            });
            let order = rng.permutation(n);
            let mut state = [None, None];
            let mut seen: [Vec<Option<i64>>; 2] = [vec![None], vec![None]];
            for &i in &order {
                for (w, k, v) in txns[i].iter_mut() {
                    if *w {
                        state[*k] = *v;
                        seen[*k].push(*v);
                    } else {
                        *v = state[*k];
                    }
                }
            }
            if rng.below(2) == 0 {
                // Replace one read with some other version of its key.
                let i = rng.below(n as u64) as usize;
                for (w, k, v) in txns[i].iter_mut() {
                    if !*w && rng.below(2) == 0 {
                        *v = seen[*k][rng.below(seen[*k].len() as u64) as usize];
                    }
                }
            }
            txns
        };
        let encode = |&(w, k, v): &Mop<Option<i64>>| {
            Value::Vec(vec![
                Value::Keyword(if w { "w" } else { "r" }.into()),
                Value::Int(k as i64),
                v.map_or(Value::Nil, Value::Int),
            ])
        };
        let Tally {
            agree_valid,
            caught,
            missed,
        } = cross_check(
            Model::RwRegister,
            0xdead_beef_cafe_f00d,
            3000,
            generate,
            encode,
            run,
        );
        // Realtime version orders and future reads leave only what needs
        // inference iterated to a fixed point (1 of about 1,085 here).
        assert!(
            agree_valid > 300 && caught > 200 && missed * 100 < caught,
            "valid {agree_valid}, caught {caught}, missed {missed}"
        );
    }

    #[test]
    fn stale_read_after_a_later_write_is_caught_by_realtime_version_order() {
        // T1 writes x = 1, then T2 writes x = 2, then T3 reads x = 1. Only
        // realtime orders 1 before 2.
        let h = parse_edn(
            "{:process 0, :type :invoke, :f :txn, :value [[:w :x 1]]}\n\
             {:process 0, :type :ok, :f :txn, :value [[:w :x 1]]}\n\
             {:process 1, :type :invoke, :f :txn, :value [[:w :x 2]]}\n\
             {:process 1, :type :ok, :f :txn, :value [[:w :x 2]]}\n\
             {:process 2, :type :invoke, :f :txn, :value [[:r :x nil]]}\n\
             {:process 2, :type :ok, :f :txn, :value [[:r :x 1]]}\n",
        )
        .unwrap();
        // Realtime orders 1 < 2 (T1 before T2) and 2 < 1 (T3 began after
        // T2 and read 1): the versions of x contradict each other.
        assert_eq!(anomalies(&h), ["cyclic-versions"]);
        // Plain serializability does not order the writes: valid.
        let opts = Options {
            realtime: false,
            ..Options::default()
        };
        assert!(check(Model::RwRegister, &h, &opts).valid);
    }

    #[test]
    fn realtime_version_order_closes_a_g_single() {
        // T1 writes x = 1 and completes; then T2 writes x = 2, y = 2 while
        // T3 reads x = 1 and T2's y = 2. Serializable as T2 T1 T3, but T1
        // finished before T2 began, so x = 1 precedes x = 2 and T3 read
        // around T2.
        let h = parse_edn(
            "{:process 0, :type :invoke, :f :txn, :value [[:w :x 1]]}\n\
             {:process 0, :type :ok, :f :txn, :value [[:w :x 1]]}\n\
             {:process 1, :type :invoke, :f :txn, :value [[:w :x 2] [:w :y 2]]}\n\
             {:process 2, :type :invoke, :f :txn, :value [[:r :x nil] [:r :y nil]]}\n\
             {:process 1, :type :ok, :f :txn, :value [[:w :x 2] [:w :y 2]]}\n\
             {:process 2, :type :ok, :f :txn, :value [[:r :x 1] [:r :y 2]]}\n",
        )
        .unwrap();
        assert_eq!(anomalies(&h), ["G-single-realtime"]);
        let r = check(Model::RwRegister, &h, &Options::default());
        let text = r.details.to_string();
        assert!(text.contains("version order from realtime"), "{text}");
        let opts = Options {
            realtime: false,
            ..Options::default()
        };
        assert!(check(Model::RwRegister, &h, &opts).valid);
    }

    #[test]
    fn aborted_intermediate_and_internal_reads() {
        let h = parse_edn(
            "{:process 0, :type :invoke, :f :txn, :value [[:w :x 1]]}\n\
             {:process 0, :type :fail, :f :txn, :value [[:w :x 1]]}\n\
             {:process 1, :type :invoke, :f :txn, :value [[:r :x nil]]}\n\
             {:process 1, :type :ok, :f :txn, :value [[:r :x 1]]}\n",
        )
        .unwrap();
        assert_eq!(anomalies(&h), ["G1a"]);
        let h = concurrent(&["[[:w :x 1] [:w :x 2]]", "[[:r :x 1]]"]);
        assert_eq!(anomalies(&h), ["G1b"]);
        let h = concurrent(&["[[:r :x 1] [:w :x 1]]"]);
        assert_eq!(anomalies(&h), ["future-read"]);
        let h = concurrent(&["[[:w :x 1] [:r :x 2]]", "[[:w :x 2]]"]);
        assert!(
            anomalies(&h).contains(&"internal".to_string()),
            "{:?}",
            anomalies(&h)
        );
    }
}
