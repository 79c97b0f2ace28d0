//! Smoke test against a real cluster: `bench load` and `bench run` for
//! workload A and the txn workload, checking counts in the JSON report.
//! No timing assertions. Needs `cargo build --bins` first.

use std::path::Path;
use std::process::{Command, Output};

use pact_tests::{binary, Cluster};

fn bench(config: &Path, args: &[&str]) -> Output {
    let out = Command::new(binary("bench"))
        .args(args)
        .arg("--config")
        .arg(config)
        .args(["--seed", "7", "--retry-for", "20"])
        .env_remove("PACT_CONFIG")
        .output()
        .expect("spawn bench");
    assert!(
        out.status.success(),
        "bench {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The report, with bench's stderr (where it names failed operations'
/// errors) added as `stderr`, so a failed assertion shows why.
fn json(out: &Output) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}):\n{}", String::from_utf8_lossy(&out.stdout)));
    v["stderr"] = String::from_utf8_lossy(&out.stderr).into();
    v
}

fn ops(j: &serde_json::Value, kind: &str) -> u64 {
    j["ops"][kind]["operations"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_and_run_workload_a_and_txn() {
    let c = Cluster::transactional().await;
    let cfg = c.config_path.as_path();

    // Workload A: load 100 small records, then 200 operations.
    let load = json(&bench(
        cfg,
        &[
            "load",
            "--workload",
            "a",
            "--recordcount",
            "100",
            "--fieldcount",
            "2",
            "--fieldlength",
            "20",
            "--threads",
            "4",
            "--json",
        ],
    ));
    assert_eq!(load["phase"], "load");
    assert_eq!(ops(&load, "INSERT"), 100, "{load:#}");
    assert_eq!(load["failed"], 0, "{load:#}\n{}", c.logs_tail());

    let run = json(&bench(
        cfg,
        &[
            "run",
            "--workload",
            "a",
            "--recordcount",
            "100",
            "--fieldcount",
            "2",
            "--fieldlength",
            "20",
            "--operationcount",
            "200",
            "--threads",
            "4",
            "--json",
        ],
    ));
    assert_eq!(run["phase"], "run");
    assert_eq!(run["operations"], 200, "{run:#}");
    assert_eq!(ops(&run, "READ") + ops(&run, "UPDATE"), 200, "{run:#}");
    assert!(ops(&run, "READ") > 0 && ops(&run, "UPDATE") > 0, "{run:#}");
    assert_eq!(run["failed"], 0, "{run:#}\n{}", c.logs_tail());
    let read = &run["ops"]["READ"]["latency_us"];
    assert!(read["min"].as_u64().unwrap() <= read["p50"].as_u64().unwrap());
    assert!(read["p50"].as_u64().unwrap() <= read["max"].as_u64().unwrap());

    // A batched load: 250 records, 40 per operation (one write per shard
    // each), then every one of them readable.
    let load = json(&bench(
        cfg,
        &[
            "load",
            "--workload",
            "c",
            "--recordcount",
            "250",
            "--fieldcount",
            "2",
            "--fieldlength",
            "20",
            "--batch",
            "40",
            "--threads",
            "3",
            "--json",
        ],
    ));
    assert_eq!(load["failed"], 0, "{load:#}\n{}", c.logs_tail());
    assert_eq!(ops(&load, "INSERT"), 7, "{load:#}");
    assert_eq!(load["records"], 250, "{load:#}");
    assert_eq!(load["params"]["batch"], 40, "{load:#}");
    let client = c.client();
    for n in [0, 99, 100, 249] {
        let v = client
            .get(format!("user{n}").as_bytes())
            .await
            .expect("get");
        assert_eq!(v.map(|v| v.len()), Some(40), "user{n}");
    }
    assert_eq!(client.get(b"user250").await.expect("get"), None);
    let batch_run = Command::new(binary("bench"))
        .args(["run", "--workload", "c", "--batch", "10"])
        .output()
        .expect("spawn bench");
    assert_eq!(batch_run.status.code(), Some(2), "--batch is for load only");

    // A YCSB property file (scans and inserts), with a flag overriding it.
    let file = c.path().join("workload-e");
    std::fs::write(
        &file,
        "# YCSB-style\nworkload=site.ycsb.workloads.CoreWorkload\nrecordcount=100\n\
         operationcount=1000\nreadproportion=0\nupdateproportion=0\nscanproportion=0.8\n\
         insertproportion=0.2\nrequestdistribution=latest\nmaxscanlength=5\n\
         fieldcount=2\nfieldlength=20\n",
    )
    .expect("write workload file");
    let run = json(&bench(
        cfg,
        &[
            "run",
            "--workload-file",
            file.to_str().unwrap(),
            "--operationcount",
            "50",
            "--threads",
            "4",
            "--json",
        ],
    ));
    assert_eq!(ops(&run, "SCAN") + ops(&run, "INSERT"), 50, "{run:#}");
    assert_eq!(run["params"]["requestdistribution"], "latest", "{run:#}");
    assert_eq!(run["failed"], 0, "{run:#}\n{}", c.logs_tail());

    // Transfers between accounts, some across shards (two-phase commit).
    let load = json(&bench(
        cfg,
        &[
            "load",
            "--workload",
            "txn",
            "--recordcount",
            "20",
            "--threads",
            "4",
            "--json",
        ],
    ));
    assert_eq!(ops(&load, "INSERT"), 20, "{load:#}");
    assert_eq!(load["failed"], 0, "{load:#}\n{}", c.logs_tail());
    let run = json(&bench(
        cfg,
        &[
            "run",
            "--workload",
            "txn",
            "--recordcount",
            "20",
            "--operationcount",
            "40",
            "--threads",
            "4",
            "--txn-keys",
            "3",
            "--json",
        ],
    ));
    assert_eq!(ops(&run, "TXN"), 40, "{run:#}");
    assert_eq!(run["failed"], 0, "{run:#}\n{}", c.logs_tail());
    assert!(run["ops"]["TXN"]["retries"].is_u64(), "{run:#}");

    // The same on one shard (one-phase commit) and across shards.
    for scope in ["single-shard", "cross-shard"] {
        let run = json(&bench(
            cfg,
            &[
                "run",
                "--workload",
                "txn",
                "--recordcount",
                "20",
                "--operationcount",
                "20",
                "--threads",
                "2",
                "--txn-scope",
                scope,
                "--json",
            ],
        ));
        assert_eq!(ops(&run, "TXN"), 20, "{run:#}");
        assert_eq!(run["failed"], 0, "{run:#}\n{}", c.logs_tail());
        assert_eq!(run["params"]["txnscope"], scope, "{run:#}");
    }

    // Transfers conserve money.
    let mut total = 0i64;
    for n in 0..20 {
        let v = client
            .get(format!("account{n}").as_bytes())
            .await
            .expect("get")
            .expect("account exists");
        total += String::from_utf8(v).unwrap().parse::<i64>().unwrap();
    }
    assert_eq!(total, 20 * 1000);

    // Text report and a usage error.
    let text = bench(
        cfg,
        &[
            "run",
            "--workload",
            "c",
            "--recordcount",
            "100",
            "--operationcount",
            "10",
        ],
    );
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.contains("[READ], Operations, 10\n"), "{text}");
    assert!(
        text.contains("[READ], 99thPercentileLatency(us), "),
        "{text}"
    );
    let bad = Command::new(binary("bench"))
        .args(["run", "--workload", "z"])
        .output()
        .expect("spawn bench");
    assert_eq!(bad.status.code(), Some(2));

    // A shipped YCSB file (workload A: reads and updates over the 100
    // records loaded above), reported as YCSB's JSON array exporter does.
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads/workloada");
    let out = bench(
        cfg,
        &[
            "run",
            "--workload-file",
            file.to_str().unwrap(),
            "-p",
            "recordcount=100",
            "--fieldcount",
            "2",
            "--fieldlength",
            "20",
            "--operationcount",
            "30",
            "--threads",
            "2",
            "--json-format",
            "ycsb",
        ],
    );
    let ycsb: serde_json::Value = serde_json::from_slice(&out.stdout).expect("YCSB JSON");
    let value = |metric: &str, measurement: &str| {
        ycsb.as_array()
            .expect("an array")
            .iter()
            .find(|m| m["metric"] == metric && m["measurement"] == measurement)
            .map(|m| m["value"].clone())
            .unwrap_or(serde_json::Value::Null)
    };
    assert!(value("OVERALL", "RunTime(ms)").is_u64(), "{ycsb:#}");
    let n = |m: &str| value(m, "Operations").as_u64().unwrap_or(0);
    assert_eq!(n("READ") + n("UPDATE"), 30, "{ycsb:#}");
    assert!(
        value("READ", "99thPercentileLatency(us)").is_u64(),
        "{ycsb:#}"
    );
    assert_eq!(value("READ", "Return=OK"), n("READ"), "{ycsb:#}");

    // Reads of records never loaded fail ("not found"): counted in the
    // report and exit status 3, or 0 with --allow-failures.
    let missing = [
        "run",
        "--workload",
        "c",
        "--recordcount",
        "100000",
        "--requestdistribution",
        "uniform",
        "--operationcount",
        "20",
        "--json",
    ];
    let out = Command::new(binary("bench"))
        .args(missing)
        .args(["--seed", "7", "--config"])
        .arg(cfg)
        .env_remove("PACT_CONFIG")
        .output()
        .expect("spawn bench");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "stderr: {err}");
    assert!(err.contains("operation(s) failed"), "stderr: {err}");
    let report = json(&out);
    assert!(report["failed"].as_u64().unwrap_or(0) > 0, "{report:#}");
    let allowed = bench(cfg, &[&missing[..], &["--allow-failures"]].concat());
    assert!(json(&allowed)["failed"].as_u64().unwrap_or(0) > 0);
}

/// `--backend etcd` with nothing listening: a clear error and exit code 1,
/// not a panic or a hang; flag combinations that cannot work: exit code 2.
#[test]
fn etcd_backend_errors_are_clear() {
    let run = |args: &[&str]| {
        Command::new(binary("bench"))
            .args(args)
            .env_remove("PACT_CONFIG")
            .output()
            .expect("spawn bench")
    };
    let out = run(&[
        "run",
        "--workload",
        "a",
        "--operationcount",
        "1",
        "--backend",
        "etcd",
        "--etcd-endpoints",
        "127.0.0.1:1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(
        err.contains("cannot reach etcd at http://127.0.0.1:1"),
        "stderr: {err}"
    );
    assert!(!err.contains("panicked"), "stderr: {err}");

    for (args, expect) in [
        (
            &[
                "run",
                "--workload",
                "txn",
                "--backend",
                "etcd",
                "--txn-scope",
                "single-shard",
            ][..],
            "needs --backend pact",
        ),
        (
            &[
                "run",
                "--workload",
                "a",
                "--etcd-endpoints",
                "127.0.0.1:2379",
            ][..],
            "needs --backend etcd",
        ),
        (
            &[
                "run",
                "--workload",
                "a",
                "--backend",
                "etcd",
                "--etcd-endpoints",
                "https://x:1",
            ][..],
            "TLS is not supported",
        ),
    ] {
        let out = run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(expect), "{args:?}: {err}");
    }
}
