//! Workload definitions: YCSB core workloads A-F, the `txn` transfer
//! workload, property files and overrides.

use std::collections::BTreeMap;

use crate::generator::Distribution;
use crate::scope::TxnScope;
use crate::UsageError;

/// Operation types, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OpKind {
    Read,
    Update,
    Insert,
    Scan,
    ReadModifyWrite,
    Txn,
}

impl OpKind {
    pub const ALL: [OpKind; 6] = [
        OpKind::Read,
        OpKind::Update,
        OpKind::Insert,
        OpKind::Scan,
        OpKind::ReadModifyWrite,
        OpKind::Txn,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OpKind::Read => "READ",
            OpKind::Update => "UPDATE",
            OpKind::Insert => "INSERT",
            OpKind::Scan => "SCAN",
            OpKind::ReadModifyWrite => "READ-MODIFY-WRITE",
            OpKind::Txn => "TXN",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Everything that shapes the load. Property names follow YCSB.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// Name for the report (`a`..`f`, `txn`, or the file name).
    pub name: String,
    pub recordcount: u64,
    /// `None`: unlimited (only with a duration).
    pub operationcount: Option<u64>,
    pub readproportion: f64,
    pub updateproportion: f64,
    pub insertproportion: f64,
    pub scanproportion: f64,
    pub readmodifywriteproportion: f64,
    /// Not YCSB: share of `txn` transfers.
    pub txnproportion: f64,
    pub requestdistribution: Distribution,
    pub fieldcount: u64,
    pub fieldlength: u64,
    pub maxscanlength: u64,
    /// Accounts per transfer (`--txn-keys`).
    pub txn_keys: u64,
    /// Shards of a transfer's accounts (`--txn-scope`).
    pub txn_scope: TxnScope,
}

impl Default for Workload {
    /// YCSB's CoreWorkload defaults (read-only, uniform).
    fn default() -> Self {
        Workload {
            name: "default".into(),
            recordcount: 1000,
            operationcount: Some(1000),
            readproportion: 0.95,
            updateproportion: 0.05,
            insertproportion: 0.0,
            scanproportion: 0.0,
            readmodifywriteproportion: 0.0,
            txnproportion: 0.0,
            requestdistribution: Distribution::Uniform,
            fieldcount: 10,
            fieldlength: 100,
            maxscanlength: 1000,
            txn_keys: 2,
            txn_scope: TxnScope::Any,
        }
    }
}

/// Upper bounds that keep one record within the server's value limit and
/// keep the bench from allocating absurd amounts on a typo.
const MAX_RECORD_BYTES: u64 = pact_common::MAX_VALUE_BYTES as u64;
const MAX_TXN_KEYS: u64 = 64;
/// Key numbers beyond this would make the scrambled zipfian (drawn over
/// 10^10 items) miss most keys, and zeta sums for "latest" take minutes.
const MAX_RECORDS: u64 = 10_000_000_000;

impl Workload {
    /// A built-in workload by name: `a`..`f` (YCSB core) or `txn`.
    pub fn preset(name: &str) -> Result<Workload, UsageError> {
        let lower = name.trim().to_ascii_lowercase();
        let lower = lower.strip_prefix("workload").unwrap_or(&lower);
        let mut w = Workload {
            name: lower.to_string(),
            readproportion: 0.0,
            updateproportion: 0.0,
            requestdistribution: Distribution::Zipfian,
            ..Workload::default()
        };
        match lower {
            "a" => {
                w.readproportion = 0.5;
                w.updateproportion = 0.5;
            }
            "b" => {
                w.readproportion = 0.95;
                w.updateproportion = 0.05;
            }
            "c" => w.readproportion = 1.0,
            "d" => {
                w.readproportion = 0.95;
                w.insertproportion = 0.05;
                w.requestdistribution = Distribution::Latest;
            }
            "e" => {
                w.scanproportion = 0.95;
                w.insertproportion = 0.05;
                w.maxscanlength = 100;
            }
            "f" => {
                w.readproportion = 0.5;
                w.readmodifywriteproportion = 0.5;
            }
            "txn" => {
                w.txnproportion = 1.0;
                w.requestdistribution = Distribution::Uniform;
            }
            _ => {
                return Err(UsageError(format!(
                    "unknown workload {name:?}; use a, b, c, d, e, f or txn (or --workload-file)"
                )))
            }
        }
        Ok(w)
    }

    /// Apply YCSB properties (from a file or `-p`); `origin` names them in
    /// errors. Unknown properties are returned so the caller can warn.
    pub fn apply(
        &mut self,
        props: &BTreeMap<String, String>,
        origin: &str,
    ) -> Result<Vec<String>, UsageError> {
        let mut ignored = Vec::new();
        for (key, value) in props {
            let v = value.trim();
            let bad = |what: &str| {
                UsageError(format!(
                    "{origin}: property {key}={value:?}: expected {what}"
                ))
            };
            let int = || v.parse::<u64>().map_err(|_| bad("a non-negative integer"));
            let prop = || match v.parse::<f64>() {
                Ok(p) if p.is_finite() && (0.0..=1.0).contains(&p) => Ok(p),
                _ => Err(bad("a proportion between 0 and 1")),
            };
            match key.as_str() {
                "recordcount" => self.recordcount = int()?,
                "operationcount" => self.operationcount = Some(int()?),
                "readproportion" => self.readproportion = prop()?,
                "updateproportion" => self.updateproportion = prop()?,
                "insertproportion" => self.insertproportion = prop()?,
                "scanproportion" => self.scanproportion = prop()?,
                "readmodifywriteproportion" => self.readmodifywriteproportion = prop()?,
                "txnproportion" => self.txnproportion = prop()?,
                "requestdistribution" => {
                    self.requestdistribution = v
                        .parse()
                        .map_err(|e: String| UsageError(format!("{origin}: {e}")))?
                }
                "fieldcount" => self.fieldcount = int()?,
                "fieldlength" => self.fieldlength = int()?,
                "maxscanlength" => self.maxscanlength = int()?,
                "txnkeys" => self.txn_keys = int()?,
                "txnscope" => {
                    self.txn_scope = <TxnScope as clap::ValueEnum>::from_str(v, true)
                        .map_err(|_| bad("any, single-shard or cross-shard"))?
                }
                // Scan lengths are always drawn uniformly from
                // 1..=maxscanlength here; refuse a file that asks otherwise
                // rather than measure something else.
                "scanlengthdistribution" if !v.eq_ignore_ascii_case("uniform") => {
                    return Err(bad("uniform (the only scan length distribution supported)"))
                }
                // Accepted and meaningless here (or always true here).
                "workload"
                | "readallfields"
                | "writeallfields"
                | "db"
                | "exporter"
                | "scanlengthdistribution"
                | "insertorder"
                | "table" => {}
                _ => ignored.push(key.clone()),
            }
        }
        Ok(ignored)
    }

    /// Reject combinations that cannot run.
    pub fn validate(&self) -> Result<(), UsageError> {
        let fail = |m: String| Err(UsageError(m));
        if self.recordcount == 0 {
            return fail("recordcount must be at least 1".into());
        }
        if self.recordcount > MAX_RECORDS {
            return fail(format!("recordcount must be at most {MAX_RECORDS}"));
        }
        let total = self.proportion_sum();
        if total <= 0.0 {
            return fail("all operation proportions are 0; nothing to run".into());
        }
        if self.fieldcount.saturating_mul(self.fieldlength) > MAX_RECORD_BYTES {
            return fail(format!(
                "fieldcount x fieldlength = {} bytes exceeds the {MAX_RECORD_BYTES}-byte value limit",
                self.fieldcount.saturating_mul(self.fieldlength)
            ));
        }
        if self.scanproportion > 0.0
            && (self.maxscanlength == 0
                || self.maxscanlength > u64::from(pact_common::MAX_SCAN_LIMIT))
        {
            return fail(format!(
                "maxscanlength must be between 1 and {}",
                pact_common::MAX_SCAN_LIMIT
            ));
        }
        if self.txnproportion > 0.0 {
            if !(2..=MAX_TXN_KEYS).contains(&self.txn_keys) {
                return fail(format!("--txn-keys must be between 2 and {MAX_TXN_KEYS}"));
            }
            if self.txn_keys > self.recordcount {
                return fail(format!(
                    "--txn-keys {} needs at least that many accounts (recordcount {})",
                    self.txn_keys, self.recordcount
                ));
            }
        }
        Ok(())
    }

    pub fn proportion_sum(&self) -> f64 {
        self.readproportion
            + self.updateproportion
            + self.insertproportion
            + self.scanproportion
            + self.readmodifywriteproportion
            + self.txnproportion
    }

    /// Cumulative thresholds for picking an operation with one uniform draw.
    pub fn op_table(&self) -> Vec<(f64, OpKind)> {
        let total = self.proportion_sum();
        let mut acc = 0.0;
        let mut table = Vec::new();
        for (p, op) in [
            (self.readproportion, OpKind::Read),
            (self.updateproportion, OpKind::Update),
            (self.insertproportion, OpKind::Insert),
            (self.scanproportion, OpKind::Scan),
            (self.readmodifywriteproportion, OpKind::ReadModifyWrite),
            (self.txnproportion, OpKind::Txn),
        ] {
            if p > 0.0 {
                acc += p / total;
                table.push((acc, op));
            }
        }
        table
    }

    /// Inserts a run is expected to make (YCSB sizes the zipfian key
    /// space with twice this much headroom).
    pub fn expected_inserts(&self) -> u64 {
        let ops = self.operationcount.unwrap_or(1_000_000) as f64;
        (ops * self.insertproportion / self.proportion_sum().max(f64::MIN_POSITIVE) * 2.0) as u64
    }

    /// Whether `load` must create `user<N>` records / `account<N>` accounts.
    pub fn needs_records(&self) -> bool {
        self.proportion_sum() - self.txnproportion > 0.0
    }

    pub fn needs_accounts(&self) -> bool {
        self.txnproportion > 0.0
    }

    /// The resolved parameters, for the JSON report.
    pub fn params(&self) -> serde_json::Value {
        serde_json::json!({
            "recordcount": self.recordcount,
            "operationcount": self.operationcount,
            "readproportion": self.readproportion,
            "updateproportion": self.updateproportion,
            "insertproportion": self.insertproportion,
            "scanproportion": self.scanproportion,
            "readmodifywriteproportion": self.readmodifywriteproportion,
            "txnproportion": self.txnproportion,
            "requestdistribution": self.requestdistribution.name(),
            "fieldcount": self.fieldcount,
            "fieldlength": self.fieldlength,
            "maxscanlength": self.maxscanlength,
            "txnkeys": self.txn_keys,
            "txnscope": self.txn_scope.name(),
        })
    }

    pub fn record_bytes(&self) -> usize {
        (self.fieldcount * self.fieldlength) as usize
    }
}

/// Key of record `n`.
pub fn record_key(n: u64) -> Vec<u8> {
    format!("user{n}").into_bytes()
}

/// Exclusive upper bound of all record keys (`:` sorts after `9`).
pub const RECORD_KEY_END: &[u8] = b"user:";

/// Key of account `n` of the transfer workload.
pub fn account_key(n: u64) -> Vec<u8> {
    format!("account{n}").into_bytes()
}

/// Initial balance of each account.
pub const INITIAL_BALANCE: i64 = 1000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_match_ycsb() {
        let a = Workload::preset("a").unwrap();
        assert_eq!((a.readproportion, a.updateproportion), (0.5, 0.5));
        assert_eq!(a.requestdistribution, Distribution::Zipfian);
        let d = Workload::preset("workloadd").unwrap();
        assert_eq!(d.requestdistribution, Distribution::Latest);
        let e = Workload::preset("E").unwrap();
        assert_eq!((e.scanproportion, e.maxscanlength), (0.95, 100));
        assert!(Workload::preset("g").is_err());
    }

    /// The shipped YCSB files give exactly the built-in mixes, and every
    /// property in them is understood.
    #[test]
    fn shipped_workload_files_match_the_presets() {
        let files = [
            ("a", include_str!("../workloads/workloada")),
            ("b", include_str!("../workloads/workloadb")),
            ("c", include_str!("../workloads/workloadc")),
            ("d", include_str!("../workloads/workloadd")),
            ("e", include_str!("../workloads/workloade")),
            ("f", include_str!("../workloads/workloadf")),
        ];
        for (name, text) in files {
            let props = crate::props::parse(text).unwrap();
            let mut w = Workload::default();
            let ignored = w.apply(&props, name).unwrap();
            assert!(ignored.is_empty(), "workload{name}: {ignored:?}");
            w.validate().unwrap();
            w.name = name.to_string();
            assert_eq!(w, Workload::preset(name).unwrap(), "workload{name}");
        }
        // The directory holds those six and nothing else to keep in step.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads");
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["a", "b", "c", "d", "e", "f"].map(|n| format!("workload{n}"))
        );
    }

    #[test]
    fn properties_apply_and_validate() {
        let mut w = Workload::default();
        let props = crate::props::parse(
            "recordcount=50\nreadproportion=0\nupdateproportion=0\nscanproportion=1\n\
             maxscanlength=10\nrequestdistribution=latest\nfoo=bar\nworkload=x\n",
        )
        .unwrap();
        let ignored = w.apply(&props, "f").unwrap();
        assert_eq!(ignored, vec!["foo".to_string()]);
        assert_eq!(w.recordcount, 50);
        assert_eq!(w.requestdistribution, Distribution::Latest);
        assert_eq!(w.op_table(), vec![(1.0, OpKind::Scan)]);
        w.validate().unwrap();

        for bad in [
            "recordcount=-1",
            "readproportion=1.5",
            "readproportion=nan",
            "requestdistribution=hotspot",
            "fieldlength=abc",
            "scanlengthdistribution=zipfian",
        ] {
            let props = crate::props::parse(bad).unwrap();
            let err = Workload::default().apply(&props, "f").unwrap_err();
            assert!(err.0.starts_with("f: "), "{err}");
        }
        let none = Workload {
            readproportion: 0.0,
            updateproportion: 0.0,
            ..Workload::default()
        };
        assert!(none.validate().is_err());
        let big = Workload {
            fieldlength: u64::MAX,
            ..Workload::default()
        };
        assert!(big.validate().is_err());
    }
}
