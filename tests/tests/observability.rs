//! What a running node tells its operator: `/metrics` with the families
//! docs/metrics.md lists (process, build, gRPC per method, fsync, leader
//! changes, snapshots, lock table, open transactions and sessions, aborts
//! counted by the coordinator that reports them), `/healthz`, `/readyz`
//! turning 200 once every local group has a leader and 503 once they lose
//! it, the gRPC health service on the client port following the same
//! readiness, logs without ANSI escapes in files and as JSON with
//! `--log-format json`, and a Grafana dashboard that asks only for metrics
//! the nodes export.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use pact_client::ClientError;
use pact_common::ClusterConfig;
use pact_tests::{fast_tuning, free_ports, Cluster};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// (status, body) of `GET path` on `127.0.0.1:port`; None if nothing
/// answers there.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Some((code, body.to_string()))
}

/// The metric names of a Prometheus text page: families (from `# TYPE`)
/// and the names of sample lines (`_bucket`, `_sum`, `_count` included).
fn names(page: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for l in page.lines() {
        if let Some(t) = l.strip_prefix("# TYPE ") {
            out.extend(t.split_whitespace().next().map(str::to_string));
        } else if !l.starts_with('#') {
            let end = l.find(['{', ' ']).unwrap_or(l.len());
            if end > 0 {
                out.insert(l[..end].to_string());
            }
        }
    }
    out
}

/// Every `pact_...` name in `text`.
fn pact_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("pact_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        // A name, not the end of a longer word.
        let starts_word = rest[..i]
            .chars()
            .last()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        if starts_word {
            out.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    out
}

async fn grpc_health(addr: &str, service: &str) -> Result<i32, String> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    HealthClient::new(ch)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(|r| r.into_inner().status)
        .map_err(|e| e.to_string())
}

/// Wait until the gRPC health service at `addr` says `want` for `service`.
async fn wait_grpc_health(addr: &str, service: &str, want: ServingStatus) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = grpc_health(addr, service).await;
        if s == Ok(want as i32) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "gRPC health of {service:?} at {addr} is {s:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait until `/readyz` on `port` answers `want`; returns its body.
fn wait_readyz(c: &Cluster, port: u16, want: u16, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let r = http_get(port, "/readyz");
        if let Some((code, body)) = &r {
            assert!(
                matches!((code, body.as_str()), (200, "ready\n"))
                    || (*code == 503 && body.starts_with("not ready:\n")),
                "{code}: {body}"
            );
            if *code == want {
                return body.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "/readyz on {port} not {want} within {within:?}: {r:?}\n{}",
            c.logs_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_shows_its_metrics_health_and_readiness() {
    let config = ClusterConfig::local_combined(3, 3, 3, 7001).unwrap();
    let mut c = Cluster::create(config, fast_tuning());
    let http = free_ports(3);
    let nodes = c.node_ids();
    for (i, id) in nodes.iter().enumerate() {
        let mut args = vec![
            "--metrics-listen".to_string(),
            format!("127.0.0.1:{}", http[i]),
        ];
        if i == 2 {
            args.extend(["--log-format".to_string(), "json".to_string()]);
        }
        c.set_args(*id, &args);
    }
    c.start_all();

    // Alive at once, ready once every group it hosts has a leader.
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_get(http[0], "/healthz").is_none() {
        assert!(Instant::now() < deadline, "no /healthz\n{}", c.logs_tail());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(http_get(http[0], "/healthz"), Some((200, "ok\n".into())));
    let (code, body) = http_get(http[0], "/nope").unwrap();
    assert_eq!(code, 404, "{body}");
    for p in &http {
        wait_readyz(&c, *p, 200, Duration::from_secs(30));
    }
    c.wait_ready(Duration::from_secs(30)).await;
    // The health service follows readiness within its check interval
    // (and a young cluster's leaders may still move).
    for n in &c.config.nodes {
        for service in ["", "pact.v1.Kv", "pact.v1.Txn"] {
            wait_grpc_health(&n.addr, service, ServingStatus::Serving).await;
        }
    }

    // Traffic: plain writes, a cross-shard transaction, and an abort the
    // coordinator reports (an older transaction wounds a younger one).
    let client = c.client();
    for i in 0..20 {
        client
            .put(format!("k{i}").as_bytes(), b"v")
            .await
            .unwrap_or_else(|e| panic!("put: {e}\n{}", c.logs_tail()));
    }
    let mut t = client.begin().await.expect("begin");
    for i in 0..6 {
        t.put(format!("t{i}").as_bytes(), b"1").await.expect("put");
    }
    t.commit().await.expect("cross-shard commit");
    let mut older = client.begin().await.expect("begin older");
    let mut younger = client.begin().await.expect("begin younger");
    younger.get_for_update(b"hot").await.expect("younger locks");
    older
        .get_for_update(b"hot")
        .await
        .expect("older wounds the younger and takes the lock");
    let e = younger
        .get(b"k1")
        .await
        .expect_err("the wounded one is aborted");
    assert!(matches!(e, ClientError::Aborted(_)), "{e:?}");
    younger.rollback().await;
    older.put(b"hot", b"mine").await.expect("put");
    older.commit().await.expect("older commits");
    // And one whose lock wait runs out (a younger one waits for an older).
    let mut holder = client.begin().await.expect("begin holder");
    holder.get_for_update(b"cold").await.expect("holder locks");
    let mut waiter = client.begin().await.expect("begin waiter");
    let e = waiter
        .get_for_update(b"cold")
        .await
        .expect_err("the lock wait runs out");
    assert!(matches!(e, ClientError::Aborted(_)), "{e:?}");
    waiter.rollback().await;
    holder.rollback().await;

    let pages: Vec<String> = http
        .iter()
        .map(|p| {
            let (code, page) = http_get(*p, "/metrics").expect("scrape");
            assert_eq!(code, 200, "{page}");
            page
        })
        .collect();
    let all = pages.join("\n");
    let exported: BTreeSet<String> = pages.iter().flat_map(|p| names(p)).collect();
    for family in [
        "pact_process_resident_memory_bytes",
        "pact_process_cpu_seconds_total",
        "pact_process_open_fds",
        "pact_build_info",
        "pact_grpc_requests_total",
        "pact_grpc_request_duration_seconds",
        "pact_storage_fsync_seconds",
        "pact_storage_fsync_batch_jobs",
        "pact_storage_write_seconds",
        "pact_storage_cache_bytes",
        "pact_storage_write_buffer_bytes",
        "pact_raft_leader_changes_total",
        "pact_raft_snapshots_sent_total",
        "pact_raft_snapshots_installed_total",
        "pact_raft_snapshot_bytes_sent_total",
        "pact_raft_snapshot_bytes_received_total",
        "pact_raft_appends_merged_total",
        "pact_participant_decisions_total",
        "pact_coordinator_records_appended_total",
        "pact_lock_table_size",
        "pact_participant_open_txns",
        "pact_coordinator_sessions",
        "pact_txn_aborts_total",
    ] {
        assert!(exported.contains(family), "no {family} on any page:\n{all}");
    }
    for p in &pages {
        // The server binaries' allocator options took effect.
        assert!(
            p.lines().any(|l| l == "pact_heap_background_purge 1"),
            "jemalloc's background purge is off:\n{p}"
        );
        assert!(
            p.contains("pact_build_info{commit=\"")
                && p.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))),
            "{p}"
        );
        // Each node saw at least one leader of each of its 4 groups.
        for g in 1..=4 {
            assert!(
                p.lines().any(|l| l
                    .starts_with(&format!("pact_raft_leader_changes_total{{group=\"{g}\"}}"))
                    && !l.ends_with(" 0")),
                "group {g}:\n{p}"
            );
        }
    }
    let grpc: Vec<&str> = all
        .lines()
        .filter(|l| l.starts_with("pact_grpc_requests_total{"))
        .collect();
    for method in [
        "/pact.v1.Kv/Write",
        "/pact.v1.Txn/Commit",
        "/pact.v1.RaftTransport/AppendEntries",
    ] {
        assert!(
            grpc.iter()
                .any(|l| l.contains(&format!("method=\"{method}\"")) && l.contains("code=\"OK\"")),
            "{method}: {grpc:#?}"
        );
    }
    for reason in ["wounded", "lock_timeout"] {
        assert!(
            all.contains(&format!("pact_txn_aborts_total{{reason=\"{reason}\"}} 1")),
            "the coordinator counts the abort it reported ({reason}):\n{all}"
        );
    }
    assert!(
        all.contains("pact_participant_aborts_total{reason=\"lock_timeout\"} 1"),
        "{all}"
    );

    // Every family a node exports is documented.
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md"))
        .expect("docs/metrics.md");
    let documented = pact_names(&doc);
    let families: BTreeSet<&String> = exported
        .iter()
        .filter(|n| {
            // Sample names of a histogram are documented by its family.
            !["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| n.strip_suffix(s).is_some_and(|b| exported.contains(b)))
        })
        .collect();
    for f in families {
        assert!(documented.contains(f), "{f} is not in docs/metrics.md");
    }

    // The dashboard: a Grafana model with a Prometheus data source
    // variable, asking only for what the nodes export.
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/grafana-dashboard.json"
    ))
    .expect("docs/grafana-dashboard.json");
    let d: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert!(d["title"].is_string() && d["uid"].is_string(), "{d}");
    assert!(d["schemaVersion"].is_u64());
    let vars = d["templating"]["list"].as_array().expect("templating");
    assert!(
        vars.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "no Prometheus data source variable: {vars:?}"
    );
    let panels = d["panels"].as_array().expect("panels");
    let mut exprs = Vec::new();
    for p in panels {
        assert!(p["gridPos"]["w"].is_u64() && p["type"].is_string(), "{p}");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{p}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{p}");
        exprs.extend(
            targets
                .iter()
                .map(|t| t["expr"].as_str().expect("expr").to_string()),
        );
    }
    let wanted: BTreeSet<String> = exprs.iter().flat_map(|e| pact_names(e)).collect();
    assert!(wanted.len() >= 15, "{wanted:?}");
    for w in &wanted {
        assert!(
            exported.contains(w),
            "the dashboard asks for {w}, which no node exports"
        );
    }
    for must in [
        "pact_txn_aborts_total",
        "pact_raft_leader_changes_total",
        "pact_storage_fsync_seconds_bucket",
        "pact_process_resident_memory_bytes",
        "pact_lock_table_size",
        "pact_grpc_request_duration_seconds_bucket",
    ] {
        assert!(wanted.contains(must), "the dashboard lacks {must}");
    }

    // Logs: files get no colour codes; --log-format json gives JSON lines.
    for (i, id) in nodes.iter().enumerate() {
        let log = std::fs::read_to_string(c.log_path(*id)).unwrap();
        assert!(
            !log.contains('\u{1b}'),
            "ANSI escapes in node {id}'s log:\n{log}"
        );
        if i == 2 {
            let started = log
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["fields"]["message"] == "pact started")
                .unwrap_or_else(|| panic!("no JSON 'pact started' line:\n{log}"));
            assert_eq!(started["level"], "INFO", "{started}");
        } else {
            assert!(log.contains("pact started"), "{log}");
        }
    }

    // Two of three nodes gone: the survivor's groups lose their quorum,
    // and it says so.
    let survivor = nodes[0];
    c.kill(nodes[1]);
    c.kill(nodes[2]);
    let why = wait_readyz(&c, http[0], 503, Duration::from_secs(20));
    assert!(why.contains("group "), "{why}");
    let addr = c.config.node(survivor).unwrap().addr.clone();
    wait_grpc_health(&addr, "", ServingStatus::NotServing).await;
    assert_eq!(http_get(http[0], "/healthz"), Some((200, "ok\n".into())));
}
