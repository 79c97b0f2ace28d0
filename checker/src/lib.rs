//! # pact-check: consistency checkers for Jepsen-style histories
//!
//! A history is what clients saw: for every operation, an `:invoke` and
//! then an `:ok` (it happened), a `:fail` (it did not) or an `:info` (no
//! idea: it may have happened, at any later time, or never). This crate
//! decides whether such a history could have come from a correct system.
//! It reads histories as Jepsen writes them (EDN, one map per line or one
//! vector, read by the `clojure-reader` crate: see the `edn` module for
//! what it reads and why that crate) or as elle-cli writes them (JSON), and
//! does no I/O itself.
//!
//! ## Models and algorithms
//!
//! * **Linearizability** (`cas-register`, `kv`): the Wing & Gong search as
//!   improved by Lowe and implemented in Porcupine. Calls and returns sit in
//!   one time-ordered linked list; the search linearizes any call not
//!   preceded by a pending return, backtracks at a return it could not
//!   serve, and memoizes (set of linearized ops, model state) so that each
//!   configuration is explored once. The set is stored as a 128-bit Zobrist
//!   fingerprint, so an entry costs bytes rather than a bitset over all
//!   ops. `:fail` ops are dropped, `:info` ops get a return at +infinity and
//!   may be left out, and crashed reads, which observed nothing, are
//!   dropped. The `kv` model is checked key by key,
//!   which linearizability's locality makes sound and the search cheap. The
//!   engine is generic over [`linear::Model`].
//! * **Serializability** (`list-append`, `rw-register`): Elle's approach.
//!   Each transaction is a node; the values it read and wrote give
//!   write-write, write-read and read-write (anti-dependency) edges, plus,
//!   for strict serializability, process-order and realtime edges. Any
//!   cycle is an anomaly, named by the edges it needs (Adya's G0, G1c,
//!   G-single, G2-item, with `-process`/`-realtime` suffixes when it needs
//!   those orders). List-append recovers the version order of each key from
//!   its reads, since every read returns the whole list; rw-register only
//!   knows that nil precedes everything and that a transaction that read v1
//!   and wrote v2 ordered v1 before v2. Non-cycle anomalies (G1a aborted
//!   reads, G1b intermediate reads, internal inconsistency, incompatible
//!   orders, duplicated elements) are found directly. Components come from
//!   an iterative Tarjan, first over data edges alone, then adding process
//!   and then realtime order; cycles come from BFS restricted to edge-type
//!   masks, trying the most specific class first. Each component is
//!   reported once, under the class that best explains it, and never as a
//!   `-realtime` variant of a cycle that exists without realtime edges.
//! * **Bank** and **set**: Jepsen's invariants. Every snapshot read of the
//!   bank sees the same total and no negative balance; the final read of a
//!   set holds every acknowledged add and nothing never attempted.
//!
//! ## Limits
//!
//! Linearizability checking is NP-complete: the memo makes typical Jepsen
//! histories fast, but many concurrent `:info` ops can still blow up the
//! search, which gives up after [`Options::max_states`] configurations and
//! reports `unknown` rather than guessing (two different sets of ops share
//! a memo fingerprint with probability 2^-128, which would wrongly prune a
//! branch; in practice never). The transactional checkers
//! assume, as Elle does, that each value is written (appended) at most
//! once per key. rw-register infers version orders from a transaction's
//! read then write of a key and, with `realtime` on, from realtime (keys
//! are linearizable under strict serializability; cycles that need such an
//! order are reported as -realtime); it does not iterate order inference
//! to a fixed point, so it can still miss anomalies list-append would
//! catch. Realtime order comes from
//! `:time` when every op has one, otherwise from position in the history.
//! Only one cycle per component is reported, so a component holding, say,
//! both a G1c and a G2-item cycle shows as G1c. Elle's rarer classes
//! (G-nonadjacent, lost-update, dirty-update) are not reported; cycles
//! they would name are reported as G2-item. rw-register reports
//! `future-read` (a read of a value the same transaction writes later). With
//! `realtime` off, process order is dropped too, so the check is plain
//! serializability. The set checker compares elements by their EDN text,
//! so `1` and `1.0` differ.

use serde::Serialize;

mod bank;
mod edn;
mod elle;
mod history;
mod intern;
pub mod linear;
mod list_append;
mod rw_register;
mod set;
#[cfg(test)]
mod testkit;
mod value;

pub use history::{
    parse_auto, parse_edn, parse_json, to_edn, to_jsonl, History, Op, OpType, ParseError, NEMESIS,
};
pub use value::Value;

/// The consistency model (and data type) a history is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Model {
    /// Elle list-append transactions: `[:append k v]`, `[:r k [v ...]]`.
    ListAppend,
    /// Elle rw-register transactions: `[:w k v]`, `[:r k v]`.
    RwRegister,
    /// Jepsen bank: `:transfer` and `:read` of all balances.
    Bank,
    /// A single linearizable register: `:read`, `:write v`, `:cas [old new]`.
    CasRegister,
    /// Porcupine's key-value store: `:get`, `:put`, `:append` with `:key`.
    Kv,
    /// Jepsen set: `:add v` and a final `:read`.
    Set,
}

#[derive(Clone, Debug, Serialize)]
pub struct CheckResult {
    pub valid: bool,
    /// Sorted and deduplicated, named as Elle/Jepsen name them.
    pub anomalies: Vec<String>,
    /// Examples: cycles with their edges, failing keys, bad reads.
    pub details: serde_json::Value,
    /// Client operations (invocation/completion pairs) in the history.
    pub op_count: usize,
}

impl CheckResult {
    pub(crate) fn valid(details: serde_json::Value, op_count: usize) -> Self {
        CheckResult {
            valid: true,
            anomalies: Vec::new(),
            details,
            op_count,
        }
    }

    pub(crate) fn invalid(
        mut anomalies: Vec<String>,
        details: serde_json::Value,
        op_count: usize,
    ) -> Self {
        anomalies.sort();
        anomalies.dedup();
        CheckResult {
            valid: anomalies.is_empty(),
            anomalies,
            details,
            op_count,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    /// Bank: the expected sum of all balances; inferred from the first ok
    /// read when None.
    pub bank_total: Option<i64>,
    /// Bank: the exact set of accounts every read must show.
    pub bank_accounts: Option<Vec<Value>>,
    /// List-append / rw-register: include process and realtime order
    /// (strict serializability). Default true.
    pub realtime: bool,
    /// Linearizability: memo-table budget; exceeding it yields anomaly
    /// `unknown`.
    pub max_states: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            bank_total: None,
            bank_accounts: None,
            realtime: true,
            max_states: 5_000_000,
        }
    }
}

/// Checks `history` against `model`. Never panics on odd histories: ops a
/// model cannot interpret yield the anomaly `malformed`.
/// Check each key's sub-history with `f` (ops without a key, such as the
/// nemesis's, are left out); invalid if any key is, anomalies merged.
fn per_key(history: &History, f: impl Fn(&History) -> CheckResult) -> CheckResult {
    let mut keys: std::collections::BTreeMap<String, History> = Default::default();
    for op in history {
        if let Some(k) = &op.key {
            keys.entry(k.to_edn()).or_default().push(op.clone());
        }
    }
    let mut anomalies = Vec::new();
    let mut bad = serde_json::Map::new();
    let mut op_count = 0;
    for (key, h) in &keys {
        let r = f(h);
        op_count += r.op_count;
        if !r.valid {
            anomalies.extend(r.anomalies);
            bad.insert(key.clone(), r.details);
        }
    }
    anomalies.sort();
    anomalies.dedup();
    CheckResult {
        valid: anomalies.is_empty(),
        anomalies,
        details: serde_json::json!({ "keys": keys.len(), "invalid_keys": bad }),
        op_count,
    }
}

pub fn check(model: Model, history: &History, opts: &Options) -> CheckResult {
    match model {
        Model::ListAppend => list_append::check(history, opts),
        Model::RwRegister => rw_register::check(history, opts),
        Model::Bank => bank::check(history, opts),
        // Keyed register ops are independent registers (Jepsen's
        // `independent` tuples): linearizability is local, so each key is
        // checked on its own.
        Model::CasRegister if history.iter().any(|o| o.key.is_some()) => {
            per_key(history, |h| linear::check_cas_register(h, opts))
        }
        Model::CasRegister => linear::check_cas_register(history, opts),
        Model::Kv => linear::check_kv(history, opts),
        Model::Set => set::check(history, opts),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_registers_are_checked_independently() {
        // Each key alone is linearizable; mixed into one register, the
        // read of 2 after 1 was written to the other key would not be.
        let h = parse_edn(
            "{:process 0, :type :invoke, :f :write, :key 1, :value 1}
             {:process 0, :type :ok, :f :write, :key 1, :value 1}
             {:process 0, :type :invoke, :f :write, :key 2, :value 2}
             {:process 0, :type :ok, :f :write, :key 2, :value 2}
             {:process 1, :type :invoke, :f :read, :key 1, :value nil}
             {:process 1, :type :ok, :f :read, :key 1, :value 1}
             {:process :nemesis, :type :info, :f :start, :value nil}",
        )
        .unwrap();
        let r = check(Model::CasRegister, &h, &Options::default());
        assert!(r.valid, "{r:?}");
        assert_eq!(r.details["keys"], 2);
        // A stale read on key 2 is caught, and named by its key.
        let mut bad = h.clone();
        bad.extend(
            parse_edn(
                "{:process 1, :type :invoke, :f :read, :key 2, :value nil}
                 {:process 1, :type :ok, :f :read, :key 2, :value nil}",
            )
            .unwrap(),
        );
        let r = check(Model::CasRegister, &bad, &Options::default());
        assert_eq!(r.anomalies, vec!["nonlinearizable".to_string()]);
        assert!(r.details["invalid_keys"].get("2").is_some(), "{r:?}");
    }

    #[test]
    fn value_json_round_trip() {
        let v = Value::from_edn("{:a [1 2.5 \"s\" nil true], \"b\" #{:k}}").unwrap();
        let j = v.to_json();
        assert_eq!(
            j,
            serde_json::json!({":a": [1, 2.5, "s", null, true], "b": [":k"]})
        );
        assert_eq!(serde_json::to_value(&v).unwrap(), j);
        // Maps with non-string keys become arrays of pairs.
        let m = Value::from_edn("{0 10, 1 20}").unwrap();
        assert_eq!(m.to_json(), serde_json::json!([[0, 10], [1, 20]]));
        assert_eq!(
            Value::from_json(&serde_json::json!({":x": [":y", "z"]})),
            Value::Map(vec![(
                Value::Keyword("x".into()),
                Value::Vec(vec![Value::Keyword("y".into()), Value::Str("z".into())])
            )])
        );
    }

    #[test]
    fn value_edn_round_trip() {
        for text in [
            "nil",
            "[1 -2 3.5 1e300 \"a\\\"b\\n\" :kw sym #{1} {:a {:b [()]}}]",
            "\"tab\\there\"",
            "[-0.0 0.5 -1e-300]",
            "\"control \u{1} \u{8} \u{c} chars\"",
        ] {
            let v = Value::from_edn(text).unwrap();
            assert_eq!(Value::from_edn(&v.to_edn()).unwrap(), v, "{text}");
        }
        // Names EDN cannot spell bare are written as strings.
        assert_eq!(Value::Keyword("a b".into()).to_edn(), "\"a b\"");
        assert_eq!(Value::Symbol("1x".into()).to_edn(), "\"1x\"");
    }

    #[test]
    fn op_round_trips() {
        let h = parse_edn(
            "{:index 3, :time 5, :type :ok, :process :nemesis, :f :start, :value \"x\"}\n\
             {:process 1, :type :invoke, :f :put, :key \"k\", :value {:a 1}}\n",
        )
        .unwrap();
        assert_eq!(parse_edn(&to_edn(&h)).unwrap(), h);
        assert_eq!(parse_json(&to_jsonl(&h)).unwrap(), h);
        assert_eq!(parse_auto(&to_jsonl(&h)).unwrap(), h);
    }
}
