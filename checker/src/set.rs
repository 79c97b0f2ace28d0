//! Jepsen's set checker: elements are added, then a final read must contain
//! every acknowledged add and nothing that was never attempted.

use std::collections::{HashMap, HashSet};

use serde_json::json;

use crate::history::pair;
use crate::list_append::malformed;
use crate::value::display_cmp;
use crate::{CheckResult, History, OpType, Options, Value};

pub(crate) fn check(history: &History, _opts: &Options) -> CheckResult {
    let calls = match pair(history) {
        Ok(c) => c,
        Err(e) => return malformed(0, e),
    };
    // Elements are compared by EDN text, so 1 and 1.0 are different.
    let mut attempts: HashMap<String, (&Value, OpType)> = HashMap::new();
    for c in calls.iter().filter(|c| c.f == "add") {
        let v = c.input();
        let slot = attempts.entry(v.to_edn()).or_insert((v, c.typ));
        // An element added more than once counts as acknowledged if any add
        // was; otherwise as possibly added if any add crashed.
        slot.1 = match (slot.1, c.typ) {
            (OpType::Ok, _) | (_, OpType::Ok) => OpType::Ok,
            (OpType::Info, _) | (_, OpType::Info) => OpType::Info,
            _ => OpType::Fail,
        };
    }
    // The final read is the ok read that completed last.
    let final_read = calls
        .iter()
        .filter(|c| c.typ == OpType::Ok && c.f == "read")
        .max_by_key(|c| (c.end, c.index()));
    let Some(read) = final_read else {
        return CheckResult::invalid(
            vec!["unknown".into()],
            json!({ "error": "the set was never read (no ok :read)" }),
            calls.len(),
        );
    };
    let Some(items) = read.output().as_seq() else {
        return malformed(
            calls.len(),
            format!(
                "op {}: set read must be a set or vector, got {}",
                read.index(),
                read.output().to_edn()
            ),
        );
    };
    let present: HashSet<String> = items.iter().map(Value::to_edn).collect();
    let sorted = |mut v: Vec<&Value>| {
        v.sort_by(|a, b| display_cmp(a, b));
        v.dedup();
        v.into_iter().map(Value::to_json).collect::<Vec<_>>()
    };
    let lost = sorted(
        attempts
            .iter()
            .filter(|(k, (_, t))| *t == OpType::Ok && !present.contains(*k))
            .map(|(_, (v, _))| *v)
            .collect(),
    );
    let unexpected = sorted(
        items
            .iter()
            .filter(|v| !attempts.contains_key(&v.to_edn()))
            .collect(),
    );
    let count = |t: OpType| attempts.values().filter(|(_, ty)| *ty == t).count();
    let recovered = attempts
        .iter()
        .filter(|(k, (_, t))| *t == OpType::Info && present.contains(*k))
        .count();
    let mut anomalies = Vec::new();
    if !lost.is_empty() {
        anomalies.push("lost".to_string());
    }
    if !unexpected.is_empty() {
        anomalies.push("unexpected".to_string());
    }
    let details = json!({
        "final_read": read.summary(),
        "attempt_count": attempts.len(),
        "ok_count": count(OpType::Ok),
        "info_count": count(OpType::Info),
        "recovered_count": recovered,
        "lost_count": lost.len(),
        "lost": lost,
        "unexpected_count": unexpected.len(),
        "unexpected": unexpected,
    });
    if anomalies.is_empty() {
        CheckResult::valid(details, calls.len())
    } else {
        CheckResult::invalid(anomalies, details, calls.len())
    }
}

#[cfg(test)]
mod tests {
    use crate::{check, parse_edn, Model, Options};

    const ADDS: &str = "{:process 0, :type :invoke, :f :add, :value 1}\n\
        {:process 0, :type :ok, :f :add, :value 1}\n\
        {:process 1, :type :invoke, :f :add, :value 2}\n\
        {:process 1, :type :info, :f :add, :value 2}\n\
        {:process 2, :type :invoke, :f :add, :value 3}\n\
        {:process 2, :type :fail, :f :add, :value 3}\n\
        {:process 3, :type :invoke, :f :add, :value 4}\n\
        {:process 3, :type :ok, :f :add, :value 4}\n";

    fn with_read(read: &str) -> crate::History {
        parse_edn(&format!(
            "{ADDS}{{:process 5, :type :invoke, :f :read, :value nil}}\n{{:process 5, :type :ok, :f :read, :value #{{}}}}\n\
             {{:process 5, :type :invoke, :f :read, :value nil}}\n{{:process 5, :type :ok, :f :read, :value {read}}}\n"
        ))
        .unwrap()
    }

    #[test]
    fn complete_read_is_valid() {
        let r = check(Model::Set, &with_read("#{1 2 4}"), &Options::default());
        assert!(r.valid, "{r:?}");
        assert_eq!(r.details["recovered_count"], 1);
        assert!(check(Model::Set, &with_read("[4 1]"), &Options::default()).valid);
    }

    #[test]
    fn lost_and_unexpected() {
        let r = check(Model::Set, &with_read("#{1 9 7}"), &Options::default());
        assert_eq!(r.anomalies, ["lost", "unexpected"]);
        assert_eq!(r.details["lost"], serde_json::json!([4]));
        assert_eq!(r.details["unexpected"], serde_json::json!([7, 9]));
    }

    #[test]
    fn never_read_is_unknown() {
        let r = check(Model::Set, &parse_edn(ADDS).unwrap(), &Options::default());
        assert!(!r.valid);
        assert_eq!(r.anomalies, ["unknown"]);
    }
}
