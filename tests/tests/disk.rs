//! Disk faults with real processes: a node whose disk fills up (a
//! size-limited tmpfs as its data directory) or whose fsync fails stops
//! acknowledging, hands its leadership on and says why (`txn status`, its
//! log, `/readyz`) while the other two keep serving; restarted once space
//! is back it catches up and loses nothing acknowledged. A journal whose
//! last fsynced batch was damaged (its checksum, which fjall verifies, or
//! its end marker's magic, which fjall takes for a torn write) is refused
//! at start with what to do, and again at every start until the operator
//! does it; a torn tail past the last fsync is dropped and the node
//! catches up. No read ever returns anything but what was written.
//!
//! The full-disk test mounts a tmpfs, so it needs root (CI runs as root);
//! without it the test fails and says so.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pact_client::{Client, ClientOptions};
use pact_common::{ClusterConfig, NodeId, ShardId};
use pact_tests::{binary, fast_tuning, free_ports, Cluster};

const SHARD: ShardId = ShardId(1);
const N1: NodeId = NodeId(1);
const N2: NodeId = NodeId(2);
const N3: NodeId = NodeId(3);

/// Three `pact` nodes, each a replica of one shard and of the coordinator
/// group; not started.
fn cluster() -> Cluster {
    let config = ClusterConfig::local_combined(3, 1, 3, 7001).expect("config");
    Cluster::create(config, fast_tuning())
}

/// The value written under key `i`: `len` bytes that depend on `i`, so a
/// read of any other bytes (corrupt, stale, another key's) is caught.
fn value(i: usize, len: usize) -> Vec<u8> {
    let seed = format!("value {i}:");
    seed.bytes().cycle().take(len).collect()
}

fn key(i: usize) -> String {
    format!("k-{i:05}")
}

fn quick_client(c: &Cluster) -> Client {
    c.client_with(ClientOptions {
        request_timeout: Duration::from_secs(3),
        retry_for: Duration::from_secs(10),
        ..Default::default()
    })
}

/// Node 3 starts again and catches up; then node 1 goes, so every quorum
/// needs node 3, and all acknowledged writes are there, byte for byte.
async fn back_and_needed(c: &mut Cluster, acked: &BTreeMap<usize, usize>) {
    c.start_node(N3);
    wait_caught_up(c, N3, &[N1, N2], Duration::from_secs(30)).await;
    c.kill(N1);
    c.wait_leader(SHARD, &[N2, N3], Duration::from_secs(15))
        .await;
    assert_all_readable(c, acked).await;
}

/// Every acknowledged key reads back exactly as written.
async fn assert_all_readable(c: &Cluster, acked: &BTreeMap<usize, usize>) {
    let client = c.client();
    for (&i, &len) in acked {
        let got = client
            .get(key(i).as_bytes())
            .await
            .unwrap_or_else(|e| panic!("get {}: {e}\n{}", key(i), c.logs_tail()));
        assert!(
            got.as_deref() == Some(&value(i, len)[..]),
            "acknowledged write of {} lost or changed: {:?}",
            key(i),
            got.map(|v| String::from_utf8_lossy(&v[..v.len().min(40)]).into_owned())
        );
    }
}

/// `txn status` against the cluster: (exit code, stdout).
fn txn_status(c: &Cluster) -> (Option<i32>, String) {
    let out = Command::new(binary("txn"))
        .arg("--config")
        .arg(&c.config_path)
        .arg("status")
        .output()
        .expect("run txn status");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.get(9..12)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n")?.1.to_string();
    Some((code, body))
}

/// Wait until node `id`'s replica of `shard` says it stopped; its reason.
async fn wait_stopped(c: &Cluster, id: NodeId, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        if let Some(why) = c.status(SHARD, id).await.and_then(|s| s.stopped) {
            return why;
        }
        assert!(
            Instant::now() < deadline,
            "node {id} never reported itself stopped\n{}",
            c.logs_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait until node `id` has applied, in the shard and in the coordinator
/// group, everything their leaders among `leaders` have.
async fn wait_caught_up(c: &Cluster, id: NodeId, leaders: &[NodeId], within: Duration) {
    let client = c.client();
    let deadline = Instant::now() + within;
    loop {
        let mut done = true;
        let mine = client.replica_status(SHARD, id).await.ok();
        let lead = c.wait_leader(SHARD, leaders, within).await;
        let theirs = client.replica_status(SHARD, lead).await.ok();
        match (mine, theirs) {
            (Some(m), Some(t)) if m.stopped.is_none() && m.applied_index >= t.applied_index => {}
            _ => done = false,
        }
        let mine = client.coordinator_status(id).await.ok();
        let mut coord_leader = None;
        for n in leaders {
            if let Ok(s) = client.coordinator_status(*n).await {
                if s.role == "leader" {
                    coord_leader = Some(s);
                }
            }
        }
        match (mine, coord_leader) {
            (Some(m), Some(t)) if m.stopped.is_none() && m.applied_index >= t.applied_index => {}
            _ => done = false,
        }
        if done {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {id} did not catch up within {within:?}\n{}",
            c.logs_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A tmpfs mounted over a directory for the life of the guard.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("create mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test needs root to mount a size-limited tmpfs as a node's data directory \
             (CI runs it as root); mount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "remount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_node_which_says_why_and_loses_nothing_acknowledged() {
    let started = Instant::now();
    let mut c = cluster();
    let metrics = free_ports(1)[0];
    c.set_args(
        N3,
        &["--metrics-listen".into(), format!("127.0.0.1:{metrics}")],
    );
    // Declared after the cluster, so it is dropped (lazily unmounted)
    // before the cluster's folder is removed.
    let disk = Tmpfs::mount(&c.data_dir(N3), "6m");
    c.start_all();
    c.wait_ready(Duration::from_secs(30)).await;

    // Write 64 KiB values until node 3's disk is full and it says so.
    let client = quick_client(&c);
    let len = 64 * 1024;
    let mut acked = BTreeMap::new();
    let mut i = 0;
    let reason = loop {
        if client.put(key(i).as_bytes(), &value(i, len)).await.is_ok() {
            acked.insert(i, len);
        }
        i += 1;
        if i % 4 == 0 {
            if let Some(why) = c.status(SHARD, N3).await.and_then(|s| s.stopped) {
                break why;
            }
        }
        assert!(
            i < 1000 && started.elapsed() < Duration::from_secs(40),
            "node 3 never filled its 6 MiB disk after {i} writes\n{}",
            c.logs_tail()
        );
    };
    assert!(
        reason.contains("No space left on device") && reason.contains("storage failed"),
        "{reason}"
    );

    // The other two are a quorum: the cluster keeps taking writes, and
    // node 3 leads nothing.
    for j in i..i + 10 {
        client
            .put(key(j).as_bytes(), &value(j, 100))
            .await
            .unwrap_or_else(|e| panic!("put after node 3 stopped: {e}\n{}", c.logs_tail()));
        acked.insert(j, 100);
    }
    let leader = c
        .wait_leader(SHARD, &[N1, N2], Duration::from_secs(10))
        .await;
    assert_ne!(leader, N3);
    let st = c
        .status(SHARD, N3)
        .await
        .expect("node 3 still answers status");
    assert_ne!(st.role, "leader", "{st:?}");

    // It says why: in txn status, in its log, at /readyz.
    let (code, out) = txn_status(&c);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("STOPPED: storage failed") && out.contains("No space left on device"),
        "{out}"
    );
    assert!(out.contains("degraded"), "{out}");
    let log = std::fs::read_to_string(c.log_path(N3)).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("No space left on device")),
        "no ERROR line naming the cause in node 3's log\n{}",
        c.logs_tail()
    );
    let (code, body) = http_get(metrics, "/readyz").expect("/readyz answers");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("No space left on device"), "{body}");

    // Space returns; the operator restarts the node, which exits with 70
    // (it stopped on a failure) and comes back from its fsynced state.
    disk.resize("256m");
    let st = c.stop(N3).expect("node 3 was running");
    assert_eq!(st.code(), Some(70), "{st:?}\n{}", c.logs_tail());
    back_and_needed(&mut c, &acked).await;
    drop(c);
    drop(disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_fsync_stops_the_leader_which_steps_down_and_says_why() {
    let mut c = cluster();
    for id in c.node_ids() {
        c.set_env(id, "PACT_FAULTS", "fail-fsync");
    }
    c.start_all();
    c.wait_ready(Duration::from_secs(30)).await;
    let nodes = c.node_ids();
    let leader = c.wait_leader(SHARD, &nodes, Duration::from_secs(10)).await;
    let client = quick_client(&c);
    let mut acked = BTreeMap::new();
    for i in 0..20 {
        client
            .put(key(i).as_bytes(), &value(i, 200))
            .await
            .unwrap_or_else(|e| panic!("put: {e}\n{}", c.logs_tail()));
        acked.insert(i, 200);
    }

    c.signal(leader, libc::SIGUSR2);
    // The next write makes the leader fsync, which fails; the client may
    // see that write fail, then finds the new leader.
    let mut i = 20;
    let why = loop {
        if client.put(key(i).as_bytes(), &value(i, 200)).await.is_ok() {
            acked.insert(i, 200);
        }
        i += 1;
        if let Some(why) = c.status(SHARD, leader).await.and_then(|s| s.stopped) {
            break why;
        }
        assert!(i < 200, "the leader never stopped\n{}", c.logs_tail());
    };
    assert!(why.contains("fsync") && why.contains("os error 5"), "{why}");
    assert_eq!(wait_stopped(&c, leader, Duration::from_secs(5)).await, why);
    let rest: Vec<NodeId> = nodes.iter().copied().filter(|n| *n != leader).collect();
    let new = c.wait_leader(SHARD, &rest, Duration::from_secs(10)).await;
    assert_ne!(new, leader);
    let st = c
        .status(SHARD, leader)
        .await
        .expect("stopped node answers status");
    assert_ne!(st.role, "leader", "{st:?}");
    // The stopped node refuses, at once and with the reason, rather than
    // hanging or acknowledging.
    let only = c.client_for_node(
        leader,
        ClientOptions {
            request_timeout: Duration::from_secs(2),
            retry_for: Duration::from_secs(2),
            ..Default::default()
        },
    );
    let t = Instant::now();
    let e = only
        .put(b"refused", b"x")
        .await
        .expect_err("a stopped node acknowledges nothing");
    assert!(t.elapsed() < Duration::from_secs(4), "{e}");
    for j in i..i + 10 {
        client
            .put(key(j).as_bytes(), &value(j, 200))
            .await
            .unwrap_or_else(|e| panic!("put after the leader stopped: {e}\n{}", c.logs_tail()));
        acked.insert(j, 200);
    }
    let log = std::fs::read_to_string(c.log_path(leader)).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("fsync") && l.contains("os error 5")),
        "{}",
        c.logs_tail()
    );
    let (_, out) = txn_status(&c);
    assert!(out.contains("STOPPED: storage failed: fsync"), "{out}");
    assert_all_readable(&c, &acked).await;

    // Restarted without the fault armed, it comes back and catches up.
    assert_eq!(c.stop(leader).and_then(|s| s.code()), Some(70));
    c.start_node(leader);
    wait_caught_up(&c, leader, &rest, Duration::from_secs(30)).await;
    assert_all_readable(&c, &acked).await;
}

/// The newest journal file of a data directory.
fn last_journal(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .expect("data dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jnl"))
        .max_by_key(|p| {
            p.file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u64>().ok())
        })
        .expect("a journal file")
}

/// Start a cluster, write, SIGKILL node 3 and let `damage` loose on its
/// data directory; returns the cluster and what was acknowledged.
async fn damaged_node(damage: impl FnOnce(&Path)) -> (Cluster, BTreeMap<usize, usize>) {
    let mut c = cluster();
    c.start_all();
    c.wait_ready(Duration::from_secs(30)).await;
    let client = quick_client(&c);
    let mut acked = BTreeMap::new();
    for i in 0..60 {
        client
            .put(key(i).as_bytes(), &value(i, 1000))
            .await
            .unwrap_or_else(|e| panic!("put: {e}\n{}", c.logs_tail()));
        acked.insert(i, 1000);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.kill(N3);
    damage(&c.data_dir(N3));
    // The others go on while node 3 is down.
    for i in 60..80 {
        client
            .put(key(i).as_bytes(), &value(i, 1000))
            .await
            .unwrap_or_else(|e| panic!("put: {e}\n{}", c.logs_tail()));
        acked.insert(i, 1000);
    }
    (c, acked)
}

/// The newest journal of `dir` and the end of the last batch in it that
/// was fsynced: the storage writer ends every fsync round with a batch
/// that puts the round's number under the key `ff*8 "fsync-round"`, so
/// that batch ends 8 bytes of value and a 13-byte end marker (tag,
/// checksum, magic) after the key.
fn last_fsynced_batch(dir: &Path) -> (PathBuf, Vec<u8>, usize) {
    let j = last_journal(dir);
    let b = std::fs::read(&j).unwrap();
    let key = b"fsync-round";
    let at = b
        .windows(key.len())
        .rposition(|w| w == key)
        .unwrap_or_else(|| panic!("no fsync round marker in {}", j.display()));
    (j, b, at + key.len() + 8 + 13)
}

/// Flip the bytes `from..to` before the end of the last fsynced batch.
fn flip_fsynced(dir: &Path, from: usize, to: usize) {
    let (j, mut b, end) = last_fsynced_batch(dir);
    assert_eq!(&b[end - 4..end], b"FJL\x03", "not an end marker");
    for x in &mut b[end - from..end - to] {
        *x ^= 0x5a;
    }
    std::fs::write(&j, b).unwrap();
}

/// Start node 3 on its damaged directory: it must exit, saying it is
/// corrupt and what to do; then do that (move it aside, start empty) and
/// check it rejoins and that every acknowledged write reads back intact.
async fn refused_then_rejoins(mut c: Cluster, acked: BTreeMap<usize, usize>, why: &str) {
    for attempt in 0..2 {
        c.start_node(N3);
        let deadline = Instant::now() + Duration::from_secs(20);
        let st = loop {
            if let Some(st) = c.exited(N3) {
                break st;
            }
            assert!(
                Instant::now() < deadline,
                "node 3 started on a corrupt journal (attempt {attempt})\n{}",
                c.logs_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(!st.success(), "{st:?}");
        let log = std::fs::read_to_string(c.log_path(N3)).unwrap();
        assert_eq!(
            log.matches("refuses to start rather than serve it").count(),
            attempt + 1,
            "not refused (again) with the reason\n{}",
            c.logs_tail()
        );
        assert!(
            log.contains("Move the directory aside") && log.contains(why),
            "{log}"
        );
    }
    let aside = c.path().join("node-3.corrupt");
    std::fs::rename(c.data_dir(N3), &aside).unwrap();
    back_and_needed(&mut c, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_batch_checksum_in_the_journal_is_refused_and_the_node_rejoins_empty() {
    // The last fsynced batch's end marker is a tag, an 8-byte checksum
    // and a 4-byte magic: damage the checksum, which fjall verifies.
    let (c, acked) = damaged_node(|dir| flip_fsynced(dir, 10, 6)).await;
    refused_then_rejoins(c, acked, "ChecksumMismatch").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_batch_trailer_in_the_journal_is_refused_and_the_node_rejoins_empty() {
    // Damage the magic: fjall takes that for a torn write and cuts the
    // batch off silently; the journal mark shows it was fsynced.
    let (c, acked) = damaged_node(|dir| flip_fsynced(dir, 4, 0)).await;
    refused_then_rejoins(c, acked, "but round").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_journal_tail_is_cut_and_the_node_catches_up() {
    // A batch's first bytes after the journal's end, as a crash in the
    // middle of writing one leaves them: its start marker (tag 1, 2 items,
    // a sequence number), then an item cut short.
    let (mut c, acked) = damaged_node(|dir| {
        let (j, mut b, end) = last_fsynced_batch(dir);
        let mut torn = vec![1u8, 2, 0, 0, 0];
        torn.extend_from_slice(&u64::MAX.to_le_bytes());
        torn.extend_from_slice(&[2, 0, 0]);
        b.truncate(end);
        b.extend_from_slice(&torn);
        std::fs::write(&j, b).unwrap();
    })
    .await;
    back_and_needed(&mut c, &acked).await;
}
