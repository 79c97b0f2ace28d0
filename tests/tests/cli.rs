//! End to end through the real `txn` binary against `txn playground`:
//! a cross-shard `exec` commits atomically, an interactive session (driven
//! through stdin) commits and rolls back, bad usage fails clearly, and the
//! playground stops on SIGINT and restarts on the same data. Against a
//! cluster the harness starts: the data commands (listings with prefixes,
//! limits and paging, range deletes, values from stdin and files, hex and
//! base64, escaped text, errors as JSON, the shell under --json), closed
//! output pipes, and the shell's and `--timeout`'s exit codes. The default
//! playground is 3 `pact` processes; the TLS one uses the split layout
//! (3 `participant` and 3 `coordinator` processes).

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use pact_tests::binary;

/// A base port with 26 free consecutive ports after it (up to 6 nodes,
/// their metrics 10 ports up and their peer ports 20 up).
fn free_block() -> u16 {
    pact_tests::free_block(26)
}

/// Stops the playground (SIGINT) even when the test fails half-way.
struct Playground(Child);

impl Playground {
    fn stop(mut self) -> std::process::ExitStatus {
        unsafe {
            libc::kill(self.0.id() as libc::pid_t, libc::SIGINT);
        }
        self.0.wait().unwrap()
    }
}

impl Drop for Playground {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            unsafe {
                libc::kill(self.0.id() as libc::pid_t, libc::SIGINT);
            }
            let _ = self.0.wait();
        }
    }
}

fn start_playground(dir: &Path, port: u16) -> Playground {
    start_playground_with(dir, port, &[])
}

fn start_playground_with(dir: &Path, port: u16, extra: &[&str]) -> Playground {
    let mut child = Command::new(binary("txn"))
        .args(["playground", "--dir"])
        .arg(dir)
        .args(["--port", &port.to_string()])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start playground");
    // Wait for its "ready" line.
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(l) if l.starts_with("ready") => return Playground(child),
            Ok(l) => println!("playground: {l}"),
            Err(_) => assert!(Instant::now() < deadline, "playground did not become ready"),
        }
    }
}

/// `txn --config CONFIG ARGS...`, not started yet.
fn txn_cmd(config: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(binary("txn"));
    cmd.arg("--config").arg(config).args(args);
    cmd
}

fn txn(config: &Path, args: &[&str]) -> Output {
    txn_cmd(config, args).output().expect("run txn")
}

fn scrape(port: u16) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics port");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

/// The value of one sample line, 0 if absent.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn txn_cli_against_the_playground() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_block();
    let pg = start_playground(dir.path(), port);
    let cfg = dir.path().join("cluster.toml");
    // The combined layout: 3 nodes, each one `pact` process with every role.
    let config = pact_common::ClusterConfig::load(&cfg).unwrap();
    assert_eq!(config.nodes.len(), 3);
    assert!(config.nodes.iter().all(|n| config.is_combined(n.id)));
    for id in 1..=3 {
        let log = std::fs::read_to_string(dir.path().join(format!("node-{id}.log"))).unwrap();
        assert!(log.contains("pact started"), "node {id}:\n{log}");
    }

    // Cross-shard one-shot transaction.
    let o = txn(
        &cfg,
        &[
            "exec", "put", "alice", "100", "put", "bob", "50", "put", "carol", "7",
        ],
    );
    assert!(o.status.success(), "exec failed: {o:?}");
    assert!(stdout(&o).starts_with("COMMITTED"), "{}", stdout(&o));
    let o = txn(&cfg, &["--json", "scan"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json scan");
    assert_eq!(v["pairs"].as_array().map(|a| a.len()), Some(3), "{v}");
    assert_eq!(v["more"], false, "{v}");
    // Guarded: the else-branch runs and reports the current value.
    let o = txn(
        &cfg,
        &[
            "exec",
            "--guard",
            "equals:alice=999",
            "put",
            "alice",
            "0",
            "else",
            "get",
            "alice",
        ],
    );
    assert!(o.status.success());
    assert!(
        stdout(&o).contains("guards failed") && stdout(&o).contains("alice = 100"),
        "{}",
        stdout(&o)
    );

    // Interactive session through stdin: one commit, one rollback.
    let mut sh = txn_cmd(&cfg, &["shell"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    sh.stdin
        .as_mut()
        .unwrap()
        .write_all(
            b"BEGIN\nGETU alice\nPUT alice 90\nINCR bob 10\nCOMMIT\n\
              BEGIN\nPUT alice 0\nDEL bob\nROLLBACK\n\
              GET alice\nGET bob\nEXIT\n",
        )
        .unwrap();
    let o = sh.wait_with_output().unwrap();
    let out = stdout(&o);
    assert!(o.status.success(), "shell failed:\n{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.iter().any(|l| l.starts_with("COMMITTED")), "{out}");
    assert!(lines.contains(&"ROLLED BACK"), "{out}");
    assert_eq!(&lines[lines.len() - 2..], &["90", "60"], "{out}");

    // Bad usage: clear message, distinct non-zero exits.
    let o = txn(&cfg, &["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unrecognized subcommand"));
    let o = txn(&cfg, &["exec", "put", "onlykey"]);
    assert_eq!(o.status.code(), Some(5), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("put KEY VALUE"));
    let o = txn(&cfg, &["get", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    let o = txn(&cfg, &["txn-status", "not-an-id"]);
    assert_eq!(o.status.code(), Some(5));

    // Metrics: the coordinator counted the commits and timed the phases; a
    // participant counted commits and exposes Raft apply lag. Each node
    // serves both on one page; sum over them: whichever led counted.
    let pages: Vec<String> = (0..3).map(|i| scrape(port + 10 + i)).collect();
    let sum = |name: &str| pages.iter().map(|c| metric(c, name)).sum::<f64>();
    let committed = sum("pact_txn_outcomes_total{outcome=\"committed\"}");
    assert!(
        committed >= 3.0,
        "committed outcomes: {committed}\n{}",
        pages[0]
    );
    assert!(sum("pact_2pc_phase_seconds_count{phase=\"prepare\"}") >= 1.0);
    assert!(sum("pact_2pc_phase_seconds_count{phase=\"stage\"}") >= 1.0);
    assert!(sum("pact_participant_commits_total{path=\"two_phase\"}") >= 1.0);
    for g in ["1", "4"] {
        assert!(
            pages[0].contains(&format!("pact_raft_apply_lag{{group=\"{g}\"}}")),
            "{}",
            pages[0]
        );
    }

    // Ctrl-C stops the playground cleanly; restarting keeps the data (and
    // the layout: another is refused before anything starts).
    let st = pg.stop();
    assert!(st.success(), "playground exit: {st}");
    let o = Command::new(binary("txn"))
        .args(["playground", "--layout", "split", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("has the combined layout"),
        "{o:?}"
    );
    let pg = start_playground(dir.path(), port);
    let o = txn(&cfg, &["get", "alice"]);
    assert_eq!(stdout(&o).trim(), "90");
    assert!(pg.stop().success());
}

/// Runs `txn` with `stdin` piped in; kills it if it outlives `limit`, so a
/// hanging command fails the test instead of stalling it.
/// `txn playground --tls`: certificates made, the config's [tls] section
/// written, the readiness check and the CLI over mutual TLS; a CLI without
/// a certificate (or with flags naming the wrong one) is refused. On the
/// split layout, which this keeps in use: 6 processes, 6 node certificates.
#[test]
fn playground_with_tls() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_block();
    let pg = start_playground_with(dir.path(), port, &["--tls", "--layout", "split"]);
    let cfg = dir.path().join("cluster.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("[tls]"), "{text}");
    let config = pact_common::ClusterConfig::load(&cfg).unwrap();
    assert_eq!(config.nodes.len(), 6);
    assert!(config.nodes.iter().all(|n| !config.is_combined(n.id)));
    for f in [
        "ca.pem",
        "node-1.pem",
        "node-6.key",
        "client.pem",
        "client.key",
    ] {
        assert!(dir.path().join("certs").join(f).exists(), "{f}");
    }
    // Node certificates name their node (peer ports require that); the
    // client's names none, so it opens only client ports.
    let read = |f: &str| std::fs::read(dir.path().join("certs").join(f)).unwrap();
    for id in 1..=6 {
        assert_eq!(
            pact_common::identity::node_of_pem(&read(&format!("node-{id}.pem"))),
            Ok(pact_common::NodeId(id))
        );
    }
    assert_eq!(
        pact_common::identity::node_of_pem(&read("client.pem")),
        Err(pact_common::identity::IdentityError::NoNode)
    );
    // The config's client certificate: a cross-shard transaction.
    let o = txn(
        &cfg,
        &[
            "exec", "put", "alice", "1", "put", "bob", "2", "put", "carol", "3",
        ],
    );
    assert!(o.status.success(), "exec over TLS: {o:?}");
    assert!(stdout(&o).starts_with("COMMITTED"), "{}", stdout(&o));
    // The same certificate named by flags, with a config that has no [tls].
    let mut plain = pact_common::ClusterConfig::load(&cfg).unwrap();
    let tls = plain.tls.take().unwrap();
    let plain_cfg = dir.path().join("plain.toml");
    std::fs::write(&plain_cfg, plain.to_toml_string()).unwrap();
    let o = txn(
        &plain_cfg,
        &[
            "--cacert",
            &tls.ca,
            "--cert",
            tls.client_cert.as_deref().unwrap(),
            "--key",
            tls.client_key.as_deref().unwrap(),
            "get",
            "alice",
        ],
    );
    assert!(o.status.success(), "get with flags: {o:?}");
    assert_eq!(stdout(&o).trim(), "1");
    // And with no config at all: the routing table over TLS.
    let o = Command::new(binary("txn"))
        .env_remove("PACT_CONFIG")
        .args(["--endpoints", &plain.nodes[3].addr, "--cacert", &tls.ca])
        .args(["--cert", tls.client_cert.as_deref().unwrap()])
        .args(["--key", tls.client_key.as_deref().unwrap(), "get", "bob"])
        .output()
        .expect("run txn");
    assert!(o.status.success(), "get with --endpoints over TLS: {o:?}");
    assert_eq!(stdout(&o).trim(), "2");
    // No certificate at all: refused (a plain HTTP/2 client cannot even
    // speak to a TLS port); an error exit, not a kill by SIGPIPE.
    let o = txn(&plain_cfg, &["--timeout", "3", "get", "alice"]);
    assert!(
        matches!(o.status.code(), Some(c) if c != 0),
        "get without TLS: {o:?}"
    );
    assert!(stdout(&o).is_empty(), "{o:?}");
    // A node's certificate is not the client's key pair: mismatched
    // flags are refused before anything is sent (exit 2).
    let (node_cert, _) = tls.node_files(pact_common::NodeId(1));
    let o = txn(
        &plain_cfg,
        &[
            "--cacert",
            &tls.ca,
            "--cert",
            &node_cert,
            "--key",
            tls.client_key.as_deref().unwrap(),
            "get",
            "alice",
        ],
    );
    assert!(!o.status.success(), "mismatched certificate and key: {o:?}");
    assert!(pg.stop().success());
}

fn txn_timed(config: &Path, args: &[&str], stdin: &[u8], limit: Duration) -> (Output, Duration) {
    run_bounded(txn_cmd(config, args), stdin, limit)
}

/// Runs `cmd` with `stdin` piped in and its output captured, killed if it
/// outlives `limit`; returns its output and how long it ran.
fn run_bounded(mut cmd: Command, stdin: &[u8], limit: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run txn");
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let killer = std::thread::spawn(move || {
        if done_rx.recv_timeout(limit).is_err() {
            // SAFETY: kill(2) on the child we spawned; it is reaped below.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
    });
    let out = child.wait_with_output().expect("wait txn");
    let _ = done_tx.send(());
    let _ = killer.join();
    let _ = writer.join();
    (out, started.elapsed())
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

async fn cluster_with_coordinators() -> pact_tests::Cluster {
    let c = pact_tests::Cluster::start_with_coordinators(3, 2, 3, 3, pact_tests::fast_tuning());
    let parts = c.participant_ids();
    for s in 1..=2 {
        c.wait_leader(pact_common::ShardId(s), &parts, Duration::from_secs(30))
            .await;
    }
    c.wait_coordinator(1, Duration::from_secs(30)).await;
    c
}

/// A piped script must never commit a transaction in which a statement
/// failed, nor end with exit 0 after an unreadable line or inside an open
/// transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_script_failures_roll_back() {
    let c = cluster_with_coordinators().await;
    let cfg = c.config_path.clone();
    let limit = Duration::from_secs(60);
    let shell = |script: &[u8]| txn_timed(&cfg, &["shell"], script, limit).0;
    let get = |key: &str| stdout(&txn(&cfg, &["get", key])).trim().to_string();
    let o = txn(&cfg, &["put", "k", "orig"]);
    assert!(o.status.success(), "{o:?}");

    // Two failed statements (a usage error, an unknown command) inside
    // BEGIN..COMMIT: rolled back, the rest of the block skipped, the
    // statements after COMMIT run, and the script fails with the error's
    // code (5, invalid input).
    let o = shell(b"BEGIN\nPUT k changed\nGET\nFROB x\nPUT other x\nCOMMIT\nPUT after yes\n");
    let (out, err) = (stdout(&o), stderr(&o));
    assert_eq!(o.status.code(), Some(5), "stdout:\n{out}\nstderr:\n{err}");
    assert!(!out.contains("COMMITTED"), "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains("rolled back"), "stderr:\n{err}");
    assert_eq!(get("k"), "orig", "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(get("other"), "", "a skipped statement ran");
    assert_eq!(
        get("after"),
        "yes",
        "the statement after COMMIT was skipped"
    );

    // An unreadable (invalid UTF-8) line: named by its number, the
    // transaction rolled back, exit 5.
    let o = shell(b"BEGIN\nPUT k bad\n\xff\xfe k\nCOMMIT\n");
    let (out, err) = (stdout(&o), stderr(&o));
    assert_eq!(o.status.code(), Some(5), "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains("line 3"), "stderr:\n{err}");
    assert!(!out.contains("COMMITTED"), "stdout:\n{out}");
    assert_eq!(get("k"), "orig");

    // The script ends inside a transaction: rolled back, said on stderr,
    // exit 7 (aborted).
    let o = shell(b"BEGIN\nPUT k eof\n");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(7), "stderr:\n{err}");
    assert!(err.contains("rolled back"), "stderr:\n{err}");
    assert_eq!(get("k"), "orig");

    // A clean script still exits 0.
    let o = shell(b"BEGIN\nPUT k new\nCOMMIT\n");
    assert!(o.status.success(), "{o:?}");
    assert_eq!(get("k"), "new");
}

/// `txn-status` exit codes: 0 committed, 7 aborted; `--resolve` records a
/// presumed abort for a transaction nobody decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_status_exit_codes() {
    let c = cluster_with_coordinators().await;
    let cfg = c.config_path.clone();
    let o = txn(&cfg, &["exec", "put", "a", "1", "put", "b", "2"]);
    let out = stdout(&o);
    assert!(o.status.success(), "{o:?}");
    let id = out
        .split_whitespace()
        .nth(1)
        .expect("COMMITTED ID")
        .to_string();
    // A one-phase commit is recorded shortly after it is applied.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let o = txn(&cfg, &["txn-status", &id]);
        if o.status.code() == Some(0) {
            assert_eq!(stdout(&o).trim(), "committed");
            break;
        }
        assert_eq!(o.status.code(), Some(4), "{o:?}");
        assert!(Instant::now() < deadline, "never reported committed: {o:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let o = txn(&cfg, &["txn-status", "--resolve", &id]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");

    // Never seen: --resolve aborts it, for good.
    let ghost = "1-4-12345";
    let o = txn(&cfg, &["txn-status", "--resolve", ghost]);
    assert_eq!(o.status.code(), Some(7), "{o:?}");
    assert!(stdout(&o).starts_with("aborted"), "{o:?}");
    let o = txn(&cfg, &["--json", "txn-status", ghost]);
    assert_eq!(o.status.code(), Some(7), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["outcome"], "aborted", "{v}");
}

/// `txn --endpoints` (or `PACT_ENDPOINTS`) needs no config: any node's
/// client port gives the routing table, an endpoint that refuses is
/// skipped, and the lists and transactions work as with the config. A
/// peer port, or nothing listening, is a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_alone_are_enough() {
    let c = cluster_with_coordinators().await;
    let cfg = c.config_path.clone();
    let addr = |i: usize| c.config.nodes[i].addr.clone();
    let bare = |args: &[&str], env: &[(&str, &str)]| txn_env(args, env, Duration::from_secs(60)).0;
    // A participant's port, and a coordinator's.
    for (i, key) in [(1usize, "a"), (4, "b")] {
        let ep = addr(i);
        let o = bare(&["--endpoints", &ep, "put", key, "1"], &[]);
        assert!(o.status.success(), "put via {ep}: {o:?}");
    }
    let o = bare(
        &[
            "--endpoints",
            &addr(2),
            "exec",
            "put",
            "x",
            "1",
            "put",
            "y",
            "2",
            "put",
            "z",
            "3",
        ],
        &[],
    );
    assert!(stdout(&o).starts_with("COMMITTED"), "{o:?}");
    // Nothing listens on the first: the second answers.
    let two = format!("127.0.0.1:1,{}", addr(0));
    let o = bare(&["--endpoints", &two, "get", "y"], &[]);
    assert_eq!(stdout(&o).trim(), "2", "{o:?}");
    let o = bare(&["get", "x"], &[("PACT_ENDPOINTS", &addr(5))]);
    assert_eq!(stdout(&o).trim(), "1", "{o:?}");
    // A flag beats an exported variable, either way round.
    let cfg_text = cfg.to_str().expect("utf-8 path");
    let o = bare(
        &["--endpoints", &addr(3), "get", "x"],
        &[("PACT_CONFIG", cfg_text)],
    );
    assert_eq!(stdout(&o).trim(), "1", "{o:?}");
    let o = bare(
        &["--config", cfg_text, "get", "z"],
        &[("PACT_ENDPOINTS", "127.0.0.1:1")],
    );
    assert_eq!(stdout(&o).trim(), "3", "{o:?}");
    // The same lists as from the config.
    for list in [["admin", "shard", "list"], ["admin", "member", "list"]] {
        let mut args = vec!["--json"];
        args.extend(list);
        let from_config = json_of(&txn(&cfg, &args));
        let mut with = vec!["--endpoints", &two];
        with.extend(&args);
        let from_endpoints = json_of(&bare(&with, &[]));
        let strip = |mut v: serde_json::Value| {
            // Which node leads or answered may differ between the calls.
            for row in v.as_array_mut().into_iter().flatten() {
                if let Some(o) = row.as_object_mut() {
                    o.retain(|k, _| !["leader", "leads", "answered", "term"].contains(&k.as_str()));
                }
            }
            v
        };
        assert_eq!(strip(from_config), strip(from_endpoints), "{list:?}");
    }
    // Both a config and endpoints: a usage error.
    let o = txn(&cfg, &["--endpoints", &addr(0), "get", "x"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(stderr(&o).contains("--endpoints"), "{o:?}");
    // A peer port does not serve the table; nothing listening is
    // unreachable. Both name the endpoint.
    let peer = c.config.nodes[0].peer_addr.clone();
    let o = bare(&["--endpoints", &peer, "get", "x"], &[]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert!(
        stderr(&o).contains(&peer) && stderr(&o).contains("peer_addr"),
        "{o:?}"
    );
    let o = bare(&["--endpoints", "127.0.0.1:1", "get", "x"], &[]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert!(
        stderr(&o).contains("127.0.0.1:1") && stderr(&o).contains("--endpoints"),
        "{o:?}"
    );
    let o = bare(&["--json", "--endpoints", "127.0.0.1:1", "get", "x"], &[]);
    assert_eq!(json_of(&o)["error"]["code"], "UNAVAILABLE", "{o:?}");
    // Not HOST:PORT, or none at all: a usage error before anything is sent.
    for bad in ["", "localhost", "h:port"] {
        let o = bare(&["--endpoints", bad, "get", "x"], &[]);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {o:?}");
    }
}

/// `--timeout` bounds a whole command, retries included: against nodes
/// whose ports are closed, and against nodes that accept connections but
/// never answer. A write that may have been sent is reported unknown (4);
/// a read, or a write that certainly was not sent, unavailable (3).
#[test]
fn timeout_bounds_the_whole_command() {
    let dir = tempfile::tempdir().unwrap();
    let base = pact_tests::free_block(6);
    let closed = pact_common::ClusterConfig::local_with_coordinators(3, 1, 3, 3, base).unwrap();
    let closed_cfg = dir.path().join("closed.toml");
    std::fs::write(&closed_cfg, closed.to_toml_string()).unwrap();

    // Accept connections, read nothing, answer nothing.
    let mut silent = closed.clone();
    let mut listeners = Vec::new();
    for n in silent.nodes.iter_mut() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        n.addr = l.local_addr().unwrap().to_string();
        listeners.push(l);
    }
    for l in listeners {
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for s in l.incoming().map_while(Result::ok) {
                held.push(s);
            }
        });
    }
    let silent_cfg = dir.path().join("silent.toml");
    std::fs::write(&silent_cfg, silent.to_toml_string()).unwrap();

    let limit = Duration::from_secs(60);
    let cases: &[(&Path, &[&str], i32)] = &[
        (&closed_cfg, &["get", "x"], 3),
        (&closed_cfg, &["put", "x", "1"], 3),
        (&closed_cfg, &["incr", "x"], 3),
        (&closed_cfg, &["exec", "put", "x", "1"], 3),
        (&silent_cfg, &["get", "x"], 3),
        (&silent_cfg, &["put", "x", "1"], 4),
        (&silent_cfg, &["incr", "x"], 3),
        (&silent_cfg, &["exec", "put", "x", "1"], 4),
        (&silent_cfg, &["txn-status", "1-4-5"], 3),
    ];
    for (cfg, args, code) in cases {
        let mut all = vec!["--timeout", "3"];
        all.extend_from_slice(args);
        let (o, took) = txn_timed(cfg, &all, b"", limit);
        println!("{args:?} on {}: {took:?} {o:?}", cfg.display());
        assert!(
            took < Duration::from_secs(10),
            "{args:?} took {took:?} with --timeout 3: {o:?}"
        );
        assert_eq!(o.status.code(), Some(*code), "{args:?}: {o:?}");
    }
    // A shell statement is bounded too; the script fails.
    let (o, took) = txn_timed(&silent_cfg, &["--timeout", "3", "shell"], b"GET x\n", limit);
    assert!(took < Duration::from_secs(10), "{took:?}: {o:?}");
    assert_eq!(o.status.code(), Some(3), "{o:?}");
}

/// `txn` with `stdin` piped in and a minute to finish.
fn txn_in(config: &Path, args: &[&str], stdin: &[u8]) -> Output {
    txn_timed(config, args, stdin, Duration::from_secs(60)).0
}

fn json_of(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {o:?}"))
}

/// Listings, range deletes, values beyond argv, binary keys and values,
/// escaped text and JSON errors, through the real binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_commands() {
    let c = cluster_with_coordinators().await;
    let cfg = c.config_path.clone();
    let run = |args: &[&str]| txn(&cfg, args);
    let ok = |args: &[&str]| {
        let o = txn(&cfg, args);
        assert!(o.status.success(), "{args:?}: {o:?}");
        o
    };
    // 12 keys under p/ (key order: p/1, p/10, p/11, p/12, p/2, ... p/9),
    // one beside them, on both shards.
    let mut ops = vec!["exec"];
    let keys: Vec<String> = (1..=12).map(|i| format!("p/{i}")).collect();
    for k in &keys {
        ops.extend(["put", k.as_str(), "v"]);
    }
    ops.extend(["put", "q/1", "other"]);
    ok(&ops);
    let mut sorted = keys.clone();
    sorted.sort();

    // Prefix listings: scan and get alike, in key order.
    let o = ok(&["scan", "--prefix", "p/"]);
    let lines: Vec<String> = stdout(&o).lines().map(String::from).collect();
    let want: Vec<String> = sorted.iter().map(|k| format!("{k} = v")).collect();
    assert_eq!(lines, want);
    assert!(stderr(&o).is_empty(), "{o:?}");
    let o = ok(&["get", "--prefix", "p/", "--keys-only"]);
    assert_eq!(stdout(&o).lines().collect::<Vec<_>>(), sorted, "{o:?}");

    // --limit: the rest is announced with the key to continue from, which
    // --from takes up.
    let o = ok(&["get", "--prefix", "p/", "--limit", "5"]);
    assert_eq!(stdout(&o).lines().count(), 5, "{o:?}");
    assert!(
        stderr(&o).contains("next key is p/3") && stderr(&o).contains("--from p/3"),
        "{o:?}"
    );
    let o = ok(&["scan", "--prefix", "p/", "--limit", "5", "--from", "p/3"]);
    let got = stdout(&o);
    let got: Vec<&str> = got.lines().collect();
    assert_eq!(got, ["p/3 = v", "p/4 = v", "p/5 = v", "p/6 = v", "p/7 = v"]);
    let v = json_of(&ok(&["--json", "scan", "--prefix", "p/", "--limit", "5"]));
    assert_eq!(v["count"], 5, "{v}");
    assert_eq!(v["more"], true, "{v}");
    assert_eq!(v["next"], "p/3", "{v}");
    assert_eq!(
        v["pairs"][0],
        serde_json::json!({"key": "p/1", "value": "v"})
    );
    // The default limit is 1000: all 12 shown, nothing announced.
    let v = json_of(&ok(&["--json", "scan", "--prefix", "p/"]));
    assert_eq!(
        (v["count"].as_u64(), &v["more"]),
        (Some(12), &serde_json::json!(false))
    );

    // --all pages through: 3 pages of 5, in order, in text and in JSON.
    let o = ok(&["scan", "--prefix", "p/", "--all", "--page-size", "5"]);
    assert_eq!(stdout(&o).lines().collect::<Vec<_>>(), want, "{o:?}");
    assert!(stderr(&o).is_empty(), "{o:?}");
    let v = json_of(&ok(&[
        "--json",
        "get",
        "--prefix",
        "p/",
        "--all",
        "--page-size",
        "5",
        "--keys-only",
    ]));
    let listed: Vec<&str> = v["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["key"].as_str().unwrap())
        .collect();
    assert_eq!(listed, sorted, "{v}");
    assert!(v["pairs"][0].get("value").is_none(), "{v}");

    // --count-only: all of them with --all, up to the limit without.
    let o = ok(&[
        "scan",
        "--prefix",
        "p/",
        "--count-only",
        "--all",
        "--page-size",
        "5",
    ]);
    assert_eq!(stdout(&o).trim(), "12", "{o:?}");
    let o = ok(&["scan", "--prefix", "p/", "--count-only", "--limit", "5"]);
    assert_eq!(stdout(&o).trim(), "5", "{o:?}");
    assert!(stderr(&o).contains("next key is p/3"), "{o:?}");
    let v = json_of(&ok(&["--json", "scan", "--count-only", "--all"]));
    assert_eq!(v["count"], 13, "{v}");

    // Range deletes: [p/1, p/2) holds p/1 and p/10..p/12, on both shards.
    let o = ok(&["del", "--range", "p/1", "p/2"]);
    assert!(stdout(&o).starts_with("deleted 4 keys"), "{o:?}");
    let o = ok(&["scan", "--prefix", "p/", "--keys-only"]);
    assert_eq!(
        stdout(&o).lines().collect::<Vec<_>>(),
        &sorted[4..],
        "{o:?}"
    );
    let v = json_of(&ok(&["--json", "del", "--prefix", "p/"]));
    assert_eq!(v["deleted"], 8, "{v}");
    assert_eq!(
        run(&["scan", "--prefix", "p/", "--count-only"]).stdout,
        b"0\n"
    );
    assert_eq!(stdout(&ok(&["get", "q/1"])).trim(), "other");
    let o = run(&["del", "--range", "b", "a"]);
    assert_eq!(o.status.code(), Some(5), "{o:?}");

    // Values from stdin and from a file, byte for byte: newlines, a NUL,
    // bytes that are not UTF-8.
    let raw: &[u8] = b"line one\nline two\n\x00\xff\xfe end";
    let o = txn_in(&cfg, &["put", "blob", "-"], raw);
    assert!(o.status.success(), "{o:?}");
    let o = ok(&["--base64", "get", "YmxvYg=="]);
    let b64 = stdout(&o).trim().to_string();
    let o = ok(&["--hex", "get", "626c6f62"]);
    let hex = stdout(&o).trim().to_string();
    assert_eq!(hex.len(), raw.len() * 2, "{o:?}");
    for (i, b) in raw.iter().enumerate() {
        assert_eq!(
            u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap(),
            *b,
            "{hex}"
        );
    }
    // The base64 text decodes (in txn itself) to the same bytes.
    let o = ok(&["--base64", "put", "YmxvYjI=", &b64]);
    assert_eq!(stdout(&o).trim(), "OK");
    assert_eq!(stdout(&ok(&["--hex", "get", "626c6f6232"])).trim(), hex);
    let file = c.dir.path().join("value.bin");
    std::fs::write(&file, raw).unwrap();
    ok(&["put", "blob3", "--file", file.to_str().unwrap()]);
    assert_eq!(stdout(&ok(&["--hex", "get", "626c6f6233"])).trim(), hex);
    // Text output: escaped, one line per value and per pair.
    let escaped = "line one\\nline two\\n\\x00\\xff\\xfe end";
    assert_eq!(stdout(&ok(&["get", "blob"])), format!("{escaped}\n"));
    let o = ok(&["scan", "--prefix", "blob"]);
    let lines: Vec<String> = stdout(&o).lines().map(String::from).collect();
    assert_eq!(
        lines,
        ["blob", "blob2", "blob3"].map(|k| format!("{k} = {escaped}")),
        "{o:?}"
    );
    // JSON: a value that is not UTF-8 goes as base64, under its own name.
    let v = json_of(&ok(&["--json", "get", "blob"]));
    assert_eq!(v["value_base64"].as_str(), Some(b64.as_str()), "{v}");
    assert!(v.get("value").is_none(), "{v}");
    let o = txn_in(&cfg, &["put", "nl", "-"], b"a\nb");
    assert!(o.status.success(), "{o:?}");
    let v = json_of(&ok(&["--json", "get", "nl"]));
    assert_eq!(v["value"], "a\nb", "{v}");

    // Binary keys: hex and base64 in and out, in text and JSON.
    ok(&["--hex", "put", "00ff0a", "0001020a"]);
    assert_eq!(stdout(&ok(&["--hex", "get", "00FF0A"])).trim(), "0001020a");
    assert_eq!(stdout(&ok(&["--base64", "get", "AP8K"])).trim(), "AAECCg==");
    let o = ok(&["--hex", "scan", "--prefix", "00ff"]);
    assert_eq!(stdout(&o), "00ff0a = 0001020a\n");
    let v = json_of(&ok(&["--json", "--base64", "scan", "--prefix", "AP8="]));
    assert_eq!(
        v["pairs"][0],
        serde_json::json!({"key": "AP8K", "value": "AAECCg=="})
    );
    let v = json_of(&ok(&["--json", "scan", "--limit", "1"]));
    assert_eq!(v["pairs"][0]["key_base64"], "AP8K", "{v}");

    // Errors under --json: one object on stdout, a stable code, the same
    // exit codes as without.
    let o = run(&["--json", "put", "", "v"]);
    assert_eq!(o.status.code(), Some(5), "{o:?}");
    let v = json_of(&o);
    assert_eq!(v["error"]["code"], "INVALID_INPUT", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("empty"),
        "{v}"
    );
    let v = json_of(&run(&["--json", "--hex", "get", "zz"]));
    assert_eq!(v["error"]["code"], "INVALID_INPUT", "{v}");
    let o = run(&["--json", "frobnicate"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert_eq!(json_of(&o)["error"]["code"], "USAGE");
    let o = run(&["--json", "--hex", "--base64", "get", "00"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let o = run(&["get", "k", "--limit", "3"]);
    assert_eq!(o.status.code(), Some(2), "--limit without --prefix: {o:?}");
    // Without --json the error stays a line on stderr.
    let o = run(&["put", "", "v"]);
    assert_eq!(o.status.code(), Some(5), "{o:?}");
    assert!(
        stdout(&o).is_empty() && stderr(&o).starts_with("txn: invalid input"),
        "{o:?}"
    );
    // A value over the limit from stdin is refused before sending.
    let big = vec![b'x'; (1 << 20) + 1];
    let o = txn_in(&cfg, &["--json", "put", "big", "-"], &big);
    assert_eq!(o.status.code(), Some(5), "{o:?}");
    assert_eq!(json_of(&o)["error"]["code"], "INVALID_INPUT");
}

/// `txn --json shell`: one JSON object per statement, results and errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_under_json() {
    let c = cluster_with_coordinators().await;
    let cfg = c.config_path.clone();
    let o = txn_in(
        &cfg,
        &["--json", "shell"],
        b"PUT a two\\nlines\nGET a\nBEGIN\nGET a\nFROB\nPUT a x\nCOMMIT\nGET missing\nINCR n 5\n",
    );
    assert_eq!(o.status.code(), Some(5), "{o:?}");
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 9, "one object per statement: {o:?}");
    assert_eq!(lines[0], serde_json::json!({"ok": true}));
    assert_eq!(lines[1]["value"], "two\\nlines");
    assert!(lines[2]["begin"].is_string(), "{}", lines[2]);
    assert_eq!(lines[3]["found"], true);
    let err = &lines[4]["error"];
    assert_eq!(err["code"], "INVALID_INPUT", "{err}");
    assert_eq!(err["line"], 5, "{err}");
    assert_eq!(err["rolled_back"], lines[2]["begin"], "{err}");
    assert_eq!(lines[5]["skipped"], true, "{}", lines[5]);
    assert_eq!(lines[6]["committed"], false, "{}", lines[6]);
    assert_eq!(
        lines[7],
        serde_json::json!({"key": "missing", "found": false, "value": null})
    );
    assert_eq!(lines[8], serde_json::json!({"key": "n", "value": 5}));
    assert!(stderr(&o).is_empty(), "{o:?}");
    // A script that ends inside a transaction: its last object says so.
    let o = txn_in(&cfg, &["--json", "shell"], b"BEGIN\n");
    assert_eq!(o.status.code(), Some(7), "{o:?}");
    let last = stdout(&o)
        .lines()
        .last()
        .map(String::from)
        .unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(v["error"]["code"], "ABORTED", "{v}");
    // --hex applies in the shell too; text output is escaped there.
    let o = txn_in(&cfg, &["--hex", "shell"], b"PUT 6b 610a62\nGET 6b\n");
    assert_eq!(stdout(&o), "OK\n610a62\n", "{o:?}");
    let o = txn_in(&cfg, &["shell"], b"GET k\n");
    assert_eq!(stdout(&o), "a\\nb\n", "{o:?}");
    // Several keys in one statement: one request in a transaction (GETU
    // locks them all), one line or object per key, in the order given.
    let o = txn_in(
        &cfg,
        &["--json", "shell"],
        b"PUT m1 one\nBEGIN\nGETU m1 nokey k\nCOMMIT\n",
    );
    assert!(o.status.success(), "{o:?}");
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(
        lines[2]["reads"],
        serde_json::json!([
            {"key": "m1", "found": true, "value": "one"},
            {"key": "nokey", "found": false, "value": null},
            {"key": "k", "found": true, "value": "a\nb"}
        ]),
        "{o:?}"
    );
    let o = txn_in(
        &cfg,
        &["shell"],
        b"BEGIN\nGET m1 nokey\nROLLBACK\nGETU m1 k\n",
    );
    let out = stdout(&o);
    assert!(out.contains("m1 = one\nnokey (not found)\n"), "{out}");
    assert_eq!(
        o.status.code(),
        Some(5),
        "GETU outside a transaction: {o:?}"
    );
}

/// A range delete is one transaction: when it cannot finish, nothing of
/// the range is deleted. Here an older transaction, open in a `txn shell`
/// that waits for its input, holds a lock on one of its keys until the
/// delete gives up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_range_delete_deletes_nothing() {
    let c = cluster_with_coordinators().await;
    let cfg = c.config_path.clone();
    let o = txn(
        &cfg,
        &[
            "exec", "put", "r/1", "1", "put", "r/2", "2", "put", "r/3", "3", "put", "r/4", "4",
        ],
    );
    assert!(o.status.success(), "{o:?}");
    // An older transaction locks r/3 and keeps it.
    let mut holder = txn_cmd(&cfg, &["shell"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut to_holder = holder.stdin.take().unwrap();
    to_holder.write_all(b"BEGIN\nGETU r/3\n").unwrap();
    let mut from_holder = std::io::BufReader::new(holder.stdout.take().unwrap());
    for want in ["BEGIN", "3"] {
        let mut line = String::new();
        use std::io::BufRead;
        from_holder.read_line(&mut line).unwrap();
        assert!(line.starts_with(want), "holder said {line:?}");
    }
    let (o, took) = txn_timed(
        &cfg,
        &["--timeout", "4", "del", "--prefix", "r/"],
        b"",
        Duration::from_secs(60),
    );
    assert!(took < Duration::from_secs(15), "{took:?}: {o:?}");
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert!(stderr(&o).contains("nothing was deleted"), "{o:?}");
    // The holder's transaction outlived the seconds its shell waited for
    // input (its heartbeat went on) and commits.
    to_holder.write_all(b"PUT r/3 held\nCOMMIT\n").unwrap();
    drop(to_holder);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut from_holder, &mut rest).unwrap();
    assert!(holder.wait().unwrap().success(), "{rest}");
    assert!(rest.starts_with("OK\nCOMMITTED"), "{rest}");
    let o = txn(&cfg, &["scan", "--prefix", "r/"]);
    assert_eq!(
        stdout(&o),
        "r/1 = 1\nr/2 = 2\nr/3 = held\nr/4 = 4\n",
        "{o:?}"
    );
    // With the lock gone it deletes them all.
    let o = txn(&cfg, &["del", "--prefix", "r/"]);
    assert!(stdout(&o).starts_with("deleted 4 keys"), "{o:?}");
}

/// A range delete past what one transaction may write on a shard is
/// refused with a clear error, and deletes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_delete_over_the_transaction_limit_deletes_nothing() {
    let c = cluster_with_coordinators().await;
    let cfg = c.config_path.clone();
    let client = c.client();
    // 2,100 keys of 4 KiB, all on one shard (the others are left out):
    // 8.6 MB of keys there, over the 8 MiB a transaction may write on one
    // shard.
    let mut keys = Vec::new();
    let mut i = 0u64;
    let shard = pact_common::ShardId(1);
    while keys.len() < 2100 {
        let mut k = format!("big/{i:08}/").into_bytes();
        k.resize(pact_common::MAX_KEY_BYTES, b'x');
        if client.shard_for_key(&k) == shard {
            keys.push(k);
        }
        i += 1;
    }
    let total = keys.len();
    for chunk in keys.chunks(100) {
        let batch: Vec<_> = chunk
            .iter()
            .map(|k| (k.clone(), Some(b"v".to_vec())))
            .collect();
        // Puts of the same values: a batch whose outcome is unknown is
        // simply written again.
        let mut tries = 0;
        while let Err(e) = client.write(batch.clone()).await {
            tries += 1;
            assert!(tries < 10, "load: {e}");
        }
    }
    let (o, _) = txn_timed(
        &cfg,
        &["--timeout", "300", "--json", "del", "--prefix", "big/"],
        b"",
        Duration::from_secs(320),
    );
    assert_eq!(o.status.code(), Some(5), "{o:?}");
    let v = json_of(&o);
    assert_eq!(v["error"]["code"], "INVALID_INPUT", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("too large for one transaction") && msg.contains("nothing was deleted"),
        "{msg}"
    );
    let (o, _) = txn_timed(
        &cfg,
        &[
            "--timeout",
            "120",
            "scan",
            "--prefix",
            "big/",
            "--count-only",
            "--all",
        ],
        b"",
        Duration::from_secs(140),
    );
    assert_eq!(stdout(&o).trim(), total.to_string(), "{o:?}");
}

/// Output into a closed pipe ends txn quietly, as any filter (SIGPIPE),
/// for stdout and for stderr: no panic, no exit 101.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_pipe_ends_txn_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let c = cluster_with_coordinators().await;
    let cfg = c.config_path.clone();
    let o = txn(
        &cfg,
        &["exec", "put", "a", "1", "put", "b", "2", "put", "c", "3"],
    );
    assert!(o.status.success(), "{o:?}");
    let closed = |args: &[&str], close_stdout: bool| {
        let mut child = txn_cmd(&cfg, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader quits before txn writes anything.
        let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let kept = if close_stdout {
            drop(out);
            Box::new(err) as Box<dyn std::io::Read>
        } else {
            drop(err);
            Box::new(out) as Box<dyn std::io::Read>
        };
        let mut rest = String::new();
        let mut kept = kept;
        let _ = kept.read_to_string(&mut rest);
        (child.wait().unwrap(), rest)
    };
    use std::io::Read;
    for args in [
        &["scan"][..],
        &["--json", "scan", "--all", "--page-size", "1"],
        &["get", "a"],
        &["status"],
        &["--json", "put", "", "v"],
    ] {
        let (st, err) = closed(args, true);
        assert_eq!(st.signal(), Some(libc::SIGPIPE), "{args:?}: {st:?} {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    // stderr closed: an error message, and get's "(not found)".
    for args in [&["get", "nope"][..], &["put", "", "v"]] {
        let (st, out) = closed(args, false);
        assert_eq!(st.signal(), Some(libc::SIGPIPE), "{args:?}: {st:?} {out}");
    }
    // A shell whose reader quits.
    let mut sh = txn_cmd(&cfg, &["shell"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(sh.stdout.take());
    sh.stdin
        .as_mut()
        .unwrap()
        .write_all(b"GET a\nGET b\n")
        .unwrap();
    drop(sh.stdin.take());
    let mut err = String::new();
    sh.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let st = sh.wait().unwrap();
    assert_eq!(st.signal(), Some(libc::SIGPIPE), "{st:?} {err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Runs `txn` with `args` and environment `env` (PACT_CONFIG removed
/// unless given), killed if it outlives `limit`.
fn txn_env(args: &[&str], env: &[(&str, &str)], limit: Duration) -> (Output, Duration) {
    let mut cmd = Command::new(binary("txn"));
    cmd.args(args).env_remove("PACT_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_bounded(cmd, b"", limit)
}

/// Polls `txn health` until it exits with `code`; returns its output.
fn health_until(cfg: &Path, code: i32, within: Duration) -> Output {
    let deadline = Instant::now() + within;
    loop {
        let o = txn(cfg, &["health"]);
        if o.status.code() == Some(code) {
            return o;
        }
        assert!(
            Instant::now() < deadline,
            "health never exited {code}: {o:?}\n{}",
            stdout(&o)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `txn status` labels shards and coordinator groups apart (this cluster
/// has both a shard 1 and a coordinator group 1), asks every replica at
/// once so a frozen node costs one short deadline, and summarises health;
/// `txn health` exits 0 when all is well, 8 with a node frozen (every
/// group still serves) and 3 when shards lose their quorum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_labels_groups_answers_in_parallel_and_health_exits_by_verdict() {
    let c = cluster_with_coordinators().await;
    let cfg = c.config_path.clone();
    let o = health_until(&cfg, 0, Duration::from_secs(30));
    assert!(stdout(&o).starts_with("HEALTH: ok"), "{}", stdout(&o));

    let o = txn(&cfg, &["status"]);
    let out = stdout(&o);
    assert!(o.status.success(), "{o:?}");
    for label in ["shard 1", "shard 2", "coord 1"] {
        assert!(out.lines().any(|l| l.starts_with(label)), "{label}:\n{out}");
    }
    assert!(!out.contains("GROUP 1"), "{out}");
    let o = txn(&cfg, &["--json", "status"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json status");
    assert_eq!(v["health"], "ok", "{v}");
    let groups = v["groups"].as_array().expect("groups");
    assert!(
        groups
            .iter()
            .any(|g| g["kind"] == "shard" && g["group"] == 1)
            && groups
                .iter()
                .any(|g| g["kind"] == "coord" && g["group"] == 1),
        "{v}"
    );
    // 2 shards x 3 replicas + 3 coordinator replicas.
    assert_eq!(v["replicas"].as_array().map(Vec::len), Some(9), "{v}");

    // A frozen participant: it accepts connections and never answers.
    let parts = c.participant_ids();
    c.pause(parts[2]);
    let (o, took) = txn_env(
        &["--config", cfg.to_str().unwrap(), "status"],
        &[],
        Duration::from_secs(60),
    );
    let out = stdout(&o);
    println!("status with node {} frozen, in {took:?}:\n{out}", parts[2]);
    assert!(o.status.success(), "{o:?}");
    assert!(took < Duration::from_secs(8), "status took {took:?}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("shard 1") && l.contains("no answer")),
        "{out}"
    );
    // Its shards elect new leaders where it led; then they serve, degraded.
    let o = health_until(&cfg, 8, Duration::from_secs(30));
    let out = stdout(&o);
    assert!(out.starts_with("HEALTH: degraded"), "{out}");
    assert!(
        out.contains(&format!("no answer from node {}", parts[2])),
        "{out}"
    );
    let o = txn(&cfg, &["--json", "health"]);
    assert_eq!(o.status.code(), Some(8), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json health");
    assert_eq!(v["health"], "degraded", "{v}");
    assert!(
        v["unanswered"]
            .as_array()
            .is_some_and(|u| u.iter().all(|r| r["node"] == parts[2].0)),
        "{v}"
    );

    // Two of three frozen: no shard has a quorum.
    c.pause(parts[1]);
    let o = health_until(&cfg, 3, Duration::from_secs(30));
    assert!(stdout(&o).starts_with("HEALTH: down"), "{}", stdout(&o));
    assert!(stdout(&o).contains("NOT MET"), "{}", stdout(&o));
    c.resume(parts[1]);
    c.resume(parts[2]);
}

/// Without a cluster, a command fails at once (every connection refused)
/// and says where it looked: the addresses, and whether the config came
/// from --config, PACT_CONFIG or the embedded default.
#[test]
fn no_cluster_error_names_the_addresses_and_the_config_source() {
    let dir = tempfile::tempdir().unwrap();
    let base = pact_tests::free_block(6);
    let config = pact_common::ClusterConfig::local_with_coordinators(3, 1, 3, 3, base).unwrap();
    let cfg = dir.path().join("nothing.toml");
    std::fs::write(&cfg, config.to_toml_string()).unwrap();
    let cfg = cfg.to_str().unwrap();
    let limit = Duration::from_secs(60);
    /// Arguments, environment, and how the error names the config.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (&["--config", cfg, "get", "k"], &[], "(from --config)"),
        (&["get", "k"], &[("PACT_CONFIG", cfg)], "(from PACT_CONFIG)"),
        (&["--config", cfg, "incr", "k"], &[], "(from --config)"),
        (&["--config", cfg, "status"], &[], "(from --config)"),
    ];
    for (args, env, source) in cases {
        let (o, took) = txn_env(args, env, limit);
        let err = stderr(&o);
        println!("{args:?}: {took:?}\n{err}");
        assert_eq!(o.status.code(), Some(3), "{args:?}: {o:?}");
        assert!(took < Duration::from_secs(8), "{args:?} took {took:?}");
        assert!(err.contains("connection refused"), "{err}");
        assert!(config.nodes.iter().any(|n| err.contains(&n.addr)), "{err}");
        assert!(err.contains(source), "{err}");
        assert!(err.contains(cfg), "{err}");
    }
    // `txn health` with nothing up: down, exit 3.
    let (o, _) = txn_env(&["--config", cfg, "health"], &[], limit);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert!(stdout(&o).starts_with("HEALTH: down"), "{o:?}");

    // The embedded default, when nothing listens on its ports here.
    let embedded = pact_common::ClusterConfig::embedded_default();
    let free = embedded
        .nodes
        .iter()
        .all(|n| std::net::TcpStream::connect(&n.addr).is_err());
    if free {
        let (o, took) = txn_env(&["get", "k"], &[], limit);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(3), "{o:?}");
        assert!(took < Duration::from_secs(8), "took {took:?}");
        assert!(err.contains("127.0.0.1:7001"), "{err}");
        assert!(
            err.contains("embedded default") && err.contains("PACT_CONFIG unset"),
            "{err}"
        );
    } else {
        println!("something listens on 127.0.0.1:7001-7003: embedded case not checked");
    }
}

/// A second server process on a data dir in use is refused before it
/// binds a port or opens the store, naming the first one's pid.
#[test]
fn data_dir_in_use_is_refused_with_the_pid() {
    let dir = tempfile::tempdir().unwrap();
    let base = pact_tests::free_block(4);
    let mut config = pact_common::ClusterConfig::local(1, 1, 1, base).unwrap();
    config.nodes[0].peer_addr = format!("127.0.0.1:{}", base + 1);
    config.validate().unwrap();
    let cfg = dir.path().join("cluster.toml");
    std::fs::write(&cfg, config.to_toml_string()).unwrap();
    let data = dir.path().join("node-1");
    let log = std::fs::File::create(dir.path().join("node-1.log")).unwrap();
    let first = Command::new(binary("participant"))
        .arg("--config")
        .arg(&cfg)
        .args(["--node-id", "1", "--data-dir"])
        .arg(&data)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut first = pact_tests::KillOnDrop(first);
    let pid = first.0.id();
    let pidfile = data.join("pact.pid");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(&pidfile)
        .ok()
        .map(|t| t.trim().to_string())
        != Some(pid.to_string())
    {
        assert!(Instant::now() < deadline, "no pid file from the first node");
        assert!(matches!(first.0.try_wait(), Ok(None)), "first node exited");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Other ports, so that only the data dir is shared.
    let other = pact_tests::free_block(2);
    for bin in ["participant", "pact"] {
        let o = Command::new(binary(bin))
            .arg("--config")
            .arg(&cfg)
            .args(["--node-id", "1", "--data-dir"])
            .arg(&data)
            .args(["--listen", &format!("127.0.0.1:{other}")])
            .args(["--peer-listen", &format!("127.0.0.1:{}", other + 1)])
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        let err = stderr(&o);
        assert!(!o.status.success(), "{bin}: {o:?}");
        assert!(
            err.contains(&format!("data dir {} in use by pid {pid}", data.display())),
            "{bin}: {err}"
        );
        assert!(!err.contains("Locked"), "{bin}: {err}");
    }
    assert!(
        matches!(first.0.try_wait(), Ok(None)),
        "the first node died"
    );
}

/// A playground on a folder in use is refused (naming the pid) before it
/// starts anything; on a restart, flags that would change the cluster are
/// refused instead of ignored.
#[test]
fn playground_refuses_a_folder_in_use_and_changed_flags() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_block();
    let pg = start_playground(dir.path(), port);
    let o = Command::new(binary("txn"))
        .args(["playground", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = stderr(&o);
    assert!(
        err.contains(&format!("in use by pid {}", pg.0.id())),
        "{err}"
    );
    assert!(!stdout(&o).contains("ready"), "{o:?}");
    // A node's own data dir is held by its process.
    let o = Command::new(binary("pact"))
        .arg("--config")
        .arg(dir.path().join("cluster.toml"))
        .args(["--node-id", "1", "--data-dir"])
        .arg(dir.path().join("node-1"))
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(!o.status.success(), "{o:?}");
    assert!(stderr(&o).contains("in use by pid"), "{o:?}");
    assert!(pg.stop().success());

    let other_port = pact_tests::free_block(26).to_string();
    let refused: &[(&[&str], &str)] = &[
        (&["--shards", "5"], "has 3 shards"),
        (
            &["--port", &other_port],
            &format!("first node on port {port}"),
        ),
        (&["--layout", "split"], "has the combined layout"),
        (&["--tls"], "exists without TLS"),
    ];
    for (flags, says) in refused {
        let o = Command::new(binary("txn"))
            .args(["playground", "--dir"])
            .arg(dir.path())
            .args(*flags)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{flags:?}: {o:?}");
        assert!(stderr(&o).contains(says), "{flags:?}: {}", stderr(&o));
        assert!(stdout(&o).is_empty(), "{flags:?} started something: {o:?}");
    }
}

/// Every binary's --version names the git commit (or says unknown), and
/// txn prints completion scripts and man pages.
#[test]
fn versions_completions_and_man_pages() {
    for bin in ["txn", "pact", "participant", "coordinator", "bench"] {
        let o = Command::new(binary(bin)).arg("--version").output().unwrap();
        assert!(o.status.success(), "{bin}: {o:?}");
        let out = stdout(&o);
        let commit = out
            .split("(git ")
            .nth(1)
            .and_then(|r| r.split(')').next())
            .unwrap_or_else(|| panic!("{bin}: no commit in {out:?}"));
        let hash = commit.strip_suffix("-dirty").unwrap_or(commit);
        assert!(
            hash == "unknown" || (hash.len() >= 7 && hash.chars().all(|c| c.is_ascii_hexdigit())),
            "{bin}: {out:?}"
        );
        assert!(out.starts_with(&format!("{bin} ")), "{out:?}");
    }
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let o = Command::new(binary("txn"))
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(o.status.success(), "{shell}: {o:?}");
        let out = stdout(&o);
        assert!(out.contains("txn") && out.contains("playground"), "{shell}");
    }
    let o = Command::new(binary("txn")).arg("man").output().unwrap();
    assert!(o.status.success(), "{o:?}");
    let page = stdout(&o);
    assert!(page.contains(".TH txn 1"), "{page}");
    assert!(page.contains("health"), "{page}");
    let o = Command::new(binary("txn"))
        .args(["man", "status"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    assert!(stdout(&o).contains("txn\\-status"), "{}", stdout(&o));
    let o = Command::new(binary("txn"))
        .args(["man", "nope"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let o = Command::new(binary("txn"))
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
}
