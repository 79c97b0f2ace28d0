//! End to end through the real `txn` binary against `txn playground`:
//! a cross-shard `exec` commits atomically, an interactive session (driven
//! through stdin) commits and rolls back, bad usage fails clearly, and the
//! playground stops on SIGINT and restarts on the same data.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use pact_tests::binary;

/// A base port with 16 free consecutive ports after it (6 nodes, and their
/// metrics 10 ports up).
fn free_block() -> u16 {
    pact_tests::free_block(16)
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
    let mut child = Command::new(binary("txn"))
        .args(["playground", "--dir"])
        .arg(dir)
        .args(["--port", &port.to_string()])
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

fn txn(config: &Path, args: &[&str]) -> Output {
    Command::new(binary("txn"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run txn")
}

fn scrape(port: u16) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics port");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
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
    assert_eq!(v.as_array().map(|a| a.len()), Some(3), "{v}");
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
    let mut sh = Command::new(binary("txn"))
        .arg("--config")
        .arg(&cfg)
        .arg("shell")
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
    // participant counted commits and exposes Raft apply lag.
    // Sum over the coordinator replicas: whichever led counted.
    let coords: Vec<String> = (3..6).map(|i| scrape(port + 10 + i)).collect();
    let sum = |name: &str| coords.iter().map(|c| metric(c, name)).sum::<f64>();
    let committed = sum("pact_txn_outcomes_total{outcome=\"committed\"}");
    assert!(
        committed >= 3.0,
        "committed outcomes: {committed}\n{}",
        coords[0]
    );
    assert!(sum("pact_2pc_phase_seconds_count{phase=\"prepare\"}") >= 1.0);
    assert!(sum("pact_2pc_phase_seconds_count{phase=\"log\"}") >= 1.0);
    let parts: Vec<String> = (0..3).map(|i| scrape(port + 10 + i)).collect();
    let two_phase: f64 = parts
        .iter()
        .map(|p| metric(p, "pact_participant_commits_total{path=\"two_phase\"}"))
        .sum();
    assert!(two_phase >= 1.0, "{}", parts[0]);
    assert!(
        parts[0].contains("pact_raft_apply_lag{group=\"1\"}"),
        "{}",
        parts[0]
    );

    // Ctrl-C stops the playground cleanly; restarting keeps the data.
    let st = pg.stop();
    assert!(st.success(), "playground exit: {st}");
    let pg = start_playground(dir.path(), port);
    let o = txn(&cfg, &["get", "alice"]);
    assert_eq!(stdout(&o).trim(), "90");
    assert!(pg.stop().success());
}
