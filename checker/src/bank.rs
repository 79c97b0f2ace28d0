//! Jepsen's bank checker: transfers move money between accounts, so every
//! snapshot read must see the same total and no negative balance.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;

use crate::history::pair;
use crate::list_append::{malformed, Found};
use crate::{CheckResult, History, OpType, Options, Value};

/// Account identity: JSON turns integer map keys into strings, so `0`, `"0"`
/// and `:0` name the same account.
fn account(v: &Value) -> String {
    match v {
        Value::Int(i) => i.to_string(),
        Value::Str(s) | Value::Keyword(s) | Value::Symbol(s) => s.clone(),
        other => other.to_edn(),
    }
}

pub(crate) fn check(history: &History, opts: &Options) -> CheckResult {
    let calls = match pair(history) {
        Ok(c) => c,
        Err(e) => return malformed(0, e),
    };
    let expected_accounts: Option<BTreeSet<String>> = opts
        .bank_accounts
        .as_ref()
        .map(|a| a.iter().map(account).collect());
    let mut total = opts.bank_total;
    let mut found = Found::default();
    let mut reads = 0usize;
    for c in calls
        .iter()
        .filter(|c| c.typ == OpType::Ok && c.f == "read")
    {
        let Some(entries) = c.output().as_map() else {
            return malformed(
                calls.len(),
                format!(
                    "op {}: bank read must be a map of account -> balance, got {}",
                    c.index(),
                    c.output().to_edn()
                ),
            );
        };
        reads += 1;
        let mut balances: BTreeMap<String, Option<i64>> = BTreeMap::new();
        let mut bad_value = None;
        for (k, v) in entries {
            let bal = match v {
                Value::Nil => None,
                Value::Int(i) => Some(*i),
                // Fractional money is not a bank history; say so.
                other => {
                    bad_value = Some(other.to_edn());
                    None
                }
            };
            balances.insert(account(k), bal);
        }
        if let Some(v) = bad_value {
            return malformed(
                calls.len(),
                format!("op {}: balance {v} is not an integer", c.index()),
            );
        }
        let read = json!({ "op": c.summary() });
        let nils: Vec<&String> = balances
            .iter()
            .filter(|(_, b)| b.is_none())
            .map(|(k, _)| k)
            .collect();
        if !nils.is_empty() {
            found.add("nil-balance", json!({ "read": read, "accounts": nils }));
        }
        if let Some(expected) = &expected_accounts {
            let got: BTreeSet<String> = balances.keys().cloned().collect();
            let unexpected: Vec<_> = got.difference(expected).collect();
            if !unexpected.is_empty() {
                found.add(
                    "unexpected-key",
                    json!({ "read": read, "accounts": unexpected }),
                );
            }
            let missing: Vec<_> = expected.difference(&got).collect();
            if !missing.is_empty() {
                found.add(
                    "nil-balance",
                    json!({ "read": read, "missing_accounts": missing }),
                );
            }
        }
        let negative: Vec<_> = balances
            .iter()
            .filter_map(|(k, b)| b.filter(|b| *b < 0).map(|b| json!([k, b])))
            .collect();
        if !negative.is_empty() {
            found.add(
                "negative-balance",
                json!({ "read": read, "balances": negative }),
            );
        }
        // i128 so that absurd balances cannot overflow the sum.
        let sum: i128 = balances.values().flatten().map(|&b| i128::from(b)).sum();
        let expected_total =
            *total.get_or_insert(sum.clamp(i64::MIN as i128, i64::MAX as i128) as i64);
        if sum != i128::from(expected_total) {
            found.add(
                "wrong-total",
                json!({ "read": read, "total": sum.to_string(), "expected": expected_total }),
            );
        }
    }
    let mut extra = serde_json::Map::new();
    extra.insert("reads".into(), json!(reads));
    extra.insert("total".into(), json!(total));
    extra.insert(
        "total_source".into(),
        json!(if opts.bank_total.is_some() {
            "option"
        } else {
            "first ok read"
        }),
    );
    found.finish(extra, calls.len())
}

#[cfg(test)]
mod tests {
    use crate::{check, parse_edn, Model, Options, Value};

    fn hist(reads: &[&str]) -> crate::History {
        let mut text = String::from(
            "{:process 9, :type :invoke, :f :transfer, :value {:from 0, :to 1, :amount 5}}\n\
             {:process 9, :type :ok, :f :transfer, :value {:from 0, :to 1, :amount 5}}\n",
        );
        for (p, r) in reads.iter().enumerate() {
            text.push_str(&format!(
                "{{:process {p}, :type :invoke, :f :read, :value nil}}\n"
            ));
            text.push_str(&format!(
                "{{:process {p}, :type :ok, :f :read, :value {r}}}\n"
            ));
        }
        parse_edn(&text).unwrap()
    }

    #[test]
    fn consistent_reads_are_valid() {
        let h = hist(&["{0 10, 1 10}", "{0 5, 1 15}"]);
        let r = check(Model::Bank, &h, &Options::default());
        assert!(r.valid, "{r:?}");
        assert_eq!(r.details["total"], 20);
    }

    #[test]
    fn wrong_total_and_negative_balance() {
        let h = hist(&["{0 10, 1 10}", "{0 5, 1 10}", "{0 -5, 1 25}"]);
        let r = check(Model::Bank, &h, &Options::default());
        assert_eq!(r.anomalies, ["negative-balance", "wrong-total"]);
        assert_eq!(r.details["wrong-total"]["count"], 1);
        let opts = Options {
            bank_total: Some(15),
            ..Options::default()
        };
        let r = check(Model::Bank, &h, &opts);
        assert_eq!(r.details["wrong-total"]["count"], 2);
    }

    #[test]
    fn accounts_must_match() {
        let h = hist(&["{0 10, 2 10}", "{0 10, 1 nil}"]);
        let opts = Options {
            bank_accounts: Some(vec![Value::Int(0), Value::Int(1)]),
            bank_total: Some(20),
            ..Options::default()
        };
        let r = check(Model::Bank, &h, &opts);
        assert_eq!(
            r.anomalies,
            ["nil-balance", "unexpected-key", "wrong-total"]
        );
    }

    #[test]
    fn json_string_keys_match_integer_accounts() {
        let h = crate::parse_json(
            "{\"process\": 0, \"type\": \"ok\", \"f\": \"read\", \"value\": {\"0\": 10, \"1\": 10}}",
        )
        .unwrap();
        let opts = Options {
            bank_accounts: Some(vec![Value::Int(0), Value::Int(1)]),
            bank_total: Some(20),
            ..Options::default()
        };
        assert!(check(Model::Bank, &h, &opts).valid);
    }
}
