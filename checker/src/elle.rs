//! The transaction dependency graph shared by the list-append and
//! rw-register checkers: edges, realtime/process order, strongly connected
//! components and Elle-style cycle classification.

use std::collections::{HashMap, VecDeque};

use serde_json::json;

use crate::history::Call;
use crate::linear::FxBuild;
use crate::OpType;

pub(crate) const WW: u8 = 1;
pub(crate) const WR: u8 = 2;
pub(crate) const RW: u8 = 4;
pub(crate) const PROCESS: u8 = 8;
pub(crate) const REALTIME: u8 = 16;
const DATA: u8 = WW | WR | RW;
const NONE: u32 = u32::MAX;

/// Upper bound on edge visits spent looking for G-single cycles in one SCC.
/// The search is O(rw-targets x edges); past this, the SCC is still reported,
/// just possibly under a weaker class (G2-item instead of G-single).
const G_SINGLE_BUDGET: usize = 50_000_000;

pub(crate) fn rel_name(rel: u8) -> &'static str {
    match rel {
        WW => "ww",
        WR => "wr",
        RW => "rw",
        PROCESS => "process",
        REALTIME => "realtime",
        _ => "?",
    }
}

/// Why an edge exists, in model-specific ids (key, value, value). The
/// checker that built the graph knows how to render them.
pub(crate) type Why = [u32; 3];

#[derive(Default)]
pub(crate) struct GraphBuilder {
    edges: HashMap<(u32, u32), u8, FxBuild>,
    why: HashMap<(u32, u32, u8), Why, FxBuild>,
}

impl GraphBuilder {
    pub fn link(&mut self, a: u32, b: u32, rel: u8, why: Why) {
        // A transaction depending on itself is not an anomaly.
        if a == b {
            return;
        }
        *self.edges.entry((a, b)).or_default() |= rel;
        self.why.entry((a, b, rel)).or_insert(why);
    }

    pub fn build(self, n: usize) -> Graph {
        let mut adj = vec![Vec::new(); n];
        for (&(a, b), &m) in &self.edges {
            adj[a as usize].push((b, m));
        }
        // HashMap order is arbitrary; sorting makes reports reproducible.
        for l in &mut adj {
            l.sort_unstable();
        }
        let present = self.edges.values().fold(0, |acc, m| acc | m);
        Graph {
            adj,
            why: self.why,
            present,
        }
    }
}

pub(crate) struct Graph {
    adj: Vec<Vec<(u32, u8)>>,
    why: HashMap<(u32, u32, u8), Why, FxBuild>,
    present: u8,
}

impl Graph {
    /// Why the edge `a -> b` of relation `rel` was first linked.
    pub fn why(&self, a: u32, b: u32, rel: u8) -> Option<Why> {
        self.why.get(&(a, b, rel)).copied()
    }
}

/// Adds process order (consecutive ops of one process) and realtime order
/// (a completed before b was invoked) between graph nodes.
///
/// Realtime edges are transitively reduced, as Elle builds them (see
/// [`realtime_sweep`]). Ops with unknown outcome never complete, so they get
/// incoming edges only: an indeterminate op may have taken effect
/// arbitrarily late, so nothing can be ordered after it.
pub(crate) fn add_order_edges(b: &mut GraphBuilder, nodes: &[&Call<'_>]) {
    let mut last_ok: HashMap<i64, u32> = HashMap::new();
    let mut order: Vec<u32> = (0..nodes.len() as u32).collect();
    order.sort_by_key(|&i| nodes[i as usize].start);
    for &i in &order {
        let c = nodes[i as usize];
        if let Some(&p) = last_ok.get(&c.process) {
            b.link(p, i, PROCESS, [NONE; 3]);
        }
        if c.typ == OpType::Ok {
            last_ok.insert(c.process, i);
        }
    }

    let spans: Vec<(u64, Option<u64>)> = nodes
        .iter()
        .map(|c| (c.start, if c.typ == OpType::Ok { c.end } else { None }))
        .collect();
    realtime_sweep(&spans, |a, c| {
        b.link(a as u32, c as u32, REALTIME, [NONE; 3])
    });
}

/// Realtime order over intervals `(start, end)`, transitively reduced:
/// calls `edge(a, b)` when `a` ended before `b` started and no interval
/// lies wholly between them. A sweep over start/end events keeps the
/// frontier of ended intervals not yet succeeded by another ended one; a
/// start links from the whole frontier, an end removes its own
/// predecessors from it. That is O(n x concurrency) edges instead of
/// O(n^2). Intervals without an end (unknown outcome) never end: they get
/// incoming edges only.
pub(crate) fn realtime_sweep(spans: &[(u64, Option<u64>)], mut edge: impl FnMut(usize, usize)) {
    // (time, is_end, interval); starts sort first at equal times so that
    // intervals sharing a timestamp are concurrent, not ordered.
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(spans.len() * 2);
    for (i, &(start, end)) in spans.iter().enumerate() {
        events.push((start, false, i));
        if let Some(end) = end {
            events.push((end, true, i));
        }
    }
    events.sort_unstable();
    let mut frontier: Vec<usize> = Vec::new();
    let mut preds: HashMap<usize, Vec<usize>> = HashMap::new();
    for (_, done, i) in events {
        if done {
            if let Some(p) = preds.remove(&i) {
                frontier.retain(|f| !p.contains(f));
            }
            frontier.push(i);
        } else {
            for &f in &frontier {
                edge(f, i);
            }
            if spans[i].1.is_some() && !frontier.is_empty() {
                preds.insert(i, frontier.clone());
            }
        }
    }
}

/// One cycle: the class name and its steps `(from, to, rel)`.
pub(crate) struct Cycle {
    pub name: String,
    pub steps: Vec<(u32, u32, u8)>,
}

/// Finds and classifies cycles, one per strongly connected component.
///
/// The search runs in three tiers of assumptions: data edges only, then
/// with process order ("-process"), then with process and realtime order
/// ("-realtime"). Each tier decomposes the graph into SCCs under its edges
/// and skips any SCC that contains a component already explained by a
/// lower tier, so a cycle that exists without realtime edges is never
/// reported as a -realtime variant, and data-only anomalies are reported
/// per component even when realtime edges glue everything into one SCC.
///
/// Within an SCC the classes are tried from the most specific to the least:
/// ww only (G0), then ww+wr (G1c), then exactly one rw (G-single), then any
/// cycle (G2-item, which by then has two or more rw edges). In a higher
/// tier every cycle found uses at least one of that tier's extra edges,
/// because the lower-tier subgraph of an unexplained SCC is acyclic.
pub(crate) fn find_cycles(g: &Graph) -> (Vec<Cycle>, bool) {
    let n = g.adj.len();
    let mut local = vec![NONE; n];
    let mut covered = vec![false; n];
    let mut out = Vec::new();
    let mut truncated = false;
    let mut tiers = vec![(0u8, "")];
    if g.present & PROCESS != 0 {
        tiers.push((PROCESS, "-process"));
    }
    if g.present & REALTIME != 0 {
        tiers.push((PROCESS | REALTIME, "-realtime"));
    }
    let all: Vec<u32> = (0..n as u32).collect();
    for (extra, suffix) in tiers {
        local.copy_from_slice(&all);
        let mut sccs = tarjan(g, &all, &local, DATA | extra);
        local.fill(NONE);
        for c in &mut sccs {
            c.sort_unstable();
        }
        sccs.sort_unstable();
        for scc in &sccs {
            if scc.iter().any(|&v| covered[v as usize]) {
                continue;
            }
            for (i, &v) in scc.iter().enumerate() {
                local[v as usize] = i as u32;
            }
            let (cycle, cut) = classify(g, scc, &local, extra, suffix);
            truncated |= cut;
            out.extend(cycle);
            for &v in scc {
                local[v as usize] = NONE;
            }
        }
        // Marked after the tier so that SCCs of one tier (which are
        // disjoint) do not hide each other.
        for scc in &sccs {
            for &v in scc {
                covered[v as usize] = true;
            }
        }
    }
    (out, truncated)
}

/// The most specific cycle class present in `scc` under data edges plus
/// `extra`.
fn classify(
    g: &Graph,
    scc: &[u32],
    local: &[u32],
    extra: u8,
    suffix: &str,
) -> (Option<Cycle>, bool) {
    let named = |name: &str, steps| Cycle {
        name: format!("{name}{suffix}"),
        steps,
    };
    for (name, mask) in [("G0", WW), ("G1c", WW | WR)] {
        if let Some(steps) = any_cycle(g, scc, local, mask | extra) {
            return (Some(named(name, steps)), false);
        }
    }
    let (single, cut) = single_rw_cycle(g, scc, local, WW | WR | extra);
    if let Some(steps) = single {
        return (Some(named("G-single", steps)), cut);
    }
    (
        any_cycle(g, scc, local, DATA | extra).map(|steps| named("G2-item", steps)),
        cut,
    )
}

/// Renders a cycle for a report. `explain(a, b, rel, why)` describes data
/// edges; order edges are described here.
pub(crate) fn render_cycle(
    g: &Graph,
    cycle: &Cycle,
    nodes: &[&Call<'_>],
    explain: &dyn Fn(u32, u32, u8, Why) -> String,
) -> serde_json::Value {
    let steps: Vec<_> = cycle
        .steps
        .iter()
        .map(|&(a, b, rel)| {
            let (ca, cb) = (nodes[a as usize], nodes[b as usize]);
            let text = match rel {
                PROCESS => format!(
                    "process {} executed op {} before op {}",
                    ca.process,
                    ca.index(),
                    cb.index()
                ),
                REALTIME => format!(
                    "op {} completed before op {} was invoked",
                    ca.index(),
                    cb.index()
                ),
                _ => {
                    let why = g.why.get(&(a, b, rel)).copied().unwrap_or([NONE; 3]);
                    explain(a, b, rel, why)
                }
            };
            json!({
                "from": ca.index(),
                "to": cb.index(),
                "rel": rel_name(rel),
                "explanation": text,
            })
        })
        .collect();
    json!({
        "type": cycle.name,
        "ops": cycle.steps.iter().map(|&(a, _, _)| nodes[a as usize].summary()).collect::<Vec<_>>(),
        "steps": steps,
    })
}

/// Picks the label to show for an edge allowed by `mask`: the least severe
/// relation it carries, so a cycle's labels match its class.
fn label(m: u8, mask: u8) -> u8 {
    let m = m & mask;
    for rel in [WW, WR, PROCESS, REALTIME, RW] {
        if m & rel != 0 {
            return rel;
        }
    }
    0
}

/// Iterative Tarjan over `nodes` (whose `local` ids are set) using edges in
/// `mask`; returns components with at least two nodes, as global ids.
/// `local` maps global ids to positions in `nodes` (NONE outside it).
fn tarjan(g: &Graph, nodes: &[u32], local: &[u32], mask: u8) -> Vec<Vec<u32>> {
    let k = nodes.len();
    let mut index = vec![NONE; k];
    let mut low = vec![0u32; k];
    let mut on_stack = vec![false; k];
    let mut stack: Vec<u32> = Vec::new();
    let mut calls: Vec<(u32, usize)> = Vec::new();
    let mut counter = 0u32;
    let mut out = Vec::new();
    for s in 0..k as u32 {
        if index[s as usize] != NONE {
            continue;
        }
        index[s as usize] = counter;
        low[s as usize] = counter;
        counter += 1;
        stack.push(s);
        on_stack[s as usize] = true;
        calls.push((s, 0));
        while let Some(&mut (v, ref mut pos)) = calls.last_mut() {
            let adj = &g.adj[nodes[v as usize] as usize];
            let mut descended = false;
            while *pos < adj.len() {
                let (w, m) = adj[*pos];
                *pos += 1;
                if m & mask == 0 {
                    continue;
                }
                let lw = local[w as usize];
                if lw == NONE {
                    continue;
                }
                if index[lw as usize] == NONE {
                    index[lw as usize] = counter;
                    low[lw as usize] = counter;
                    counter += 1;
                    stack.push(lw);
                    on_stack[lw as usize] = true;
                    calls.push((lw, 0));
                    descended = true;
                    break;
                } else if on_stack[lw as usize] {
                    low[v as usize] = low[v as usize].min(index[lw as usize]);
                }
            }
            if descended {
                continue;
            }
            calls.pop();
            if let Some(&(parent, _)) = calls.last() {
                low[parent as usize] = low[parent as usize].min(low[v as usize]);
            }
            if low[v as usize] == index[v as usize] {
                let mut comp = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w as usize] = false;
                    comp.push(nodes[w as usize]);
                    if w == v {
                        break;
                    }
                }
                if comp.len() > 1 {
                    out.push(comp);
                }
            }
        }
    }
    out
}

/// A shortest cycle through one node of the first nontrivial component of
/// the `mask` subgraph of `scc`, if there is one.
fn any_cycle(g: &Graph, scc: &[u32], local: &[u32], mask: u8) -> Option<Vec<(u32, u32, u8)>> {
    let comps = tarjan(g, scc, local, mask);
    let start = comps.iter().map(|c| *c.iter().min().unwrap_or(&0)).min()?;
    let (path, closing) = bfs(g, scc, local, start, mask, &|w| w == start, &mut 0)?;
    let mut steps = path;
    steps.push(closing);
    Some(steps)
}

/// BFS from `start` within `scc` over `mask` edges until an edge reaches a
/// node satisfying `goal`; returns the path to the edge's source and the
/// closing edge. `work` counts edge visits.
#[allow(clippy::type_complexity)]
fn bfs(
    g: &Graph,
    scc: &[u32],
    local: &[u32],
    start: u32,
    mask: u8,
    goal: &dyn Fn(u32) -> bool,
    work: &mut usize,
) -> Option<(Vec<(u32, u32, u8)>, (u32, u32, u8))> {
    let mut parent: Vec<(u32, u8)> = vec![(NONE, 0); scc.len()];
    let ls = local[start as usize] as usize;
    parent[ls] = (start, 0);
    let mut queue = VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for &(w, m) in &g.adj[v as usize] {
            *work += 1;
            if m & mask == 0 {
                continue;
            }
            let lw = local[w as usize];
            if lw == NONE {
                continue;
            }
            if goal(w) {
                let mut path = Vec::new();
                let mut x = v;
                while x != start {
                    let (p, pm) = parent[local[x as usize] as usize];
                    path.push((p, x, label(pm, mask)));
                    x = p;
                }
                path.reverse();
                return Some((path, (v, w, label(m, mask))));
            }
            if parent[lw as usize].0 == NONE {
                parent[lw as usize] = (v, m);
                queue.push_back(w);
            }
        }
    }
    None
}

/// A cycle with exactly one rw edge `a -> b`, closed by a path from `b` back
/// to `a` over `rest` edges. One BFS per distinct rw target.
#[allow(clippy::type_complexity)]
fn single_rw_cycle(
    g: &Graph,
    scc: &[u32],
    local: &[u32],
    rest: u8,
) -> (Option<Vec<(u32, u32, u8)>>, bool) {
    let mut rw_into: Vec<Vec<u32>> = vec![Vec::new(); scc.len()];
    for &a in scc {
        for &(b, m) in &g.adj[a as usize] {
            if m & RW != 0 && local[b as usize] != NONE {
                rw_into[local[b as usize] as usize].push(a);
            }
        }
    }
    let mut work = 0usize;
    for (lb, sources) in rw_into.iter().enumerate() {
        if sources.is_empty() {
            continue;
        }
        if work > G_SINGLE_BUDGET {
            return (None, true);
        }
        let b = scc[lb];
        let is_source = |w: u32| sources.contains(&w);
        if sources.contains(&b) {
            continue; // self rw edges are never created
        }
        if let Some((mut path, (v, a, m))) = bfs(g, scc, local, b, rest, &is_source, &mut work) {
            path.push((v, a, label(m, rest)));
            path.push((a, b, RW));
            return (Some(path), false);
        }
    }
    (None, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(n: usize, edges: &[(u32, u32, u8)]) -> Graph {
        let mut b = GraphBuilder::default();
        for &(x, y, r) in edges {
            b.link(x, y, r, [0; 3]);
        }
        b.build(n)
    }

    fn names(g: &Graph) -> Vec<String> {
        let mut v: Vec<_> = find_cycles(g).0.into_iter().map(|c| c.name).collect();
        v.sort();
        v
    }

    #[test]
    fn classification_prefers_the_most_specific_class() {
        assert_eq!(names(&graph(2, &[(0, 1, WW), (1, 0, WW)])), ["G0"]);
        assert_eq!(names(&graph(2, &[(0, 1, WW), (1, 0, WR)])), ["G1c"]);
        assert_eq!(
            names(&graph(3, &[(0, 1, WR), (1, 2, WR), (2, 0, RW)])),
            ["G-single"]
        );
        assert_eq!(names(&graph(2, &[(0, 1, RW), (1, 0, RW)])), ["G2-item"]);
        // Both a G0 and a G2 cycle in one SCC: the SCC is G0.
        assert_eq!(
            names(&graph(3, &[(0, 1, WW), (1, 0, WW), (1, 2, RW), (2, 0, RW)])),
            ["G0"]
        );
        // An edge carrying both ww and rw counts as ww.
        assert_eq!(names(&graph(2, &[(0, 1, WW | RW), (1, 0, WW)])), ["G0"]);
        assert_eq!(
            names(&graph(2, &[(0, 1, RW), (1, 0, REALTIME)])),
            ["G-single-realtime"]
        );
        assert_eq!(
            names(&graph(2, &[(0, 1, WW), (1, 0, PROCESS)])),
            ["G0-process"]
        );
        assert_eq!(
            names(&graph(3, &[(0, 1, RW), (1, 2, RW), (2, 0, REALTIME)])),
            ["G2-item-realtime"]
        );
        // Two separate SCCs are reported separately.
        assert_eq!(
            names(&graph(4, &[(0, 1, WW), (1, 0, WW), (2, 3, RW), (3, 2, WR)])),
            ["G-single", "G0"]
        );
        assert!(names(&graph(3, &[(0, 1, WW), (1, 2, RW), (0, 2, REALTIME)])).is_empty());
    }

    #[test]
    fn tiers_report_data_cycles_per_component() {
        // Realtime edges glue a G0 pair and a G-single pair into one SCC;
        // both data-only anomalies are still reported.
        let g = graph(
            4,
            &[
                (0, 1, WW),
                (1, 0, WW),
                (2, 3, WR),
                (3, 2, RW),
                (1, 2, REALTIME),
                (3, 0, REALTIME),
            ],
        );
        assert_eq!(names(&g), ["G-single", "G0"]);
        // A realtime cycle through an already explained component adds
        // nothing.
        let g = graph(3, &[(0, 1, WW), (1, 0, WW), (1, 2, RW), (2, 0, REALTIME)]);
        assert_eq!(names(&g), ["G0"]);
        // But a separate realtime-only cycle is reported as such.
        let g = graph(4, &[(0, 1, WW), (1, 0, WW), (2, 3, RW), (3, 2, REALTIME)]);
        assert_eq!(names(&g), ["G-single-realtime", "G0"]);
    }

    #[test]
    fn cycle_steps_close() {
        let g = graph(
            4,
            &[(0, 1, WR), (1, 2, WW), (2, 3, WR), (3, 1, RW), (3, 0, RW)],
        );
        let (cycles, _) = find_cycles(&g);
        assert_eq!(cycles.len(), 1);
        let c = &cycles[0];
        assert_eq!(c.name, "G-single");
        for w in c.steps.windows(2) {
            assert_eq!(w[0].1, w[1].0);
        }
        assert_eq!(c.steps.last().unwrap().1, c.steps[0].0);
        assert_eq!(c.steps.iter().filter(|s| s.2 == RW).count(), 1);
    }

    #[test]
    fn deep_graph_does_not_overflow() {
        let n = 200_000u32;
        let mut edges: Vec<_> = (0..n - 1).map(|i| (i, i + 1, WW)).collect();
        edges.push((n - 1, 0, RW));
        let g = graph(n as usize, &edges);
        assert_eq!(names(&g), ["G-single"]);
    }
}
