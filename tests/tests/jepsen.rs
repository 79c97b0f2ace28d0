//! The fast tier of the Jepsen-style suite: every nemesis against the real
//! build (each run must check valid), and deliberately broken builds (each
//! run must be caught). Runs last ~15 s of load each; `PACT_JEPSEN_SECONDS`
//! makes them longer (the long tier, see README). Artifacts land in
//! `target/jepsen/`.

use pact_tests::jepsen::{run, Fault, Report, Spec, Workload};

fn assert_valid(r: &Report) {
    assert!(r.valid(), "checker found anomalies: {}", r.summary());
    assert!(
        r.final_reads_ok,
        "final reads never succeeded: {}",
        r.summary()
    );
    assert!(
        r.ok >= 10,
        "too little progress to mean anything: {}",
        r.summary()
    );
}

/// The run of a broken build was found invalid, with an anomaly whose name
/// starts with one of `expected`.
fn assert_caught(r: &Report, expected: &[&str]) {
    assert!(!r.valid(), "the checkers missed the bug: {}", r.summary());
    assert!(
        r.anomalies()
            .iter()
            .any(|a| expected.iter().any(|e| a.starts_with(e))),
        "expected one of {expected:?}: {}",
        r.summary()
    );
}

/// Every listed fault was applied at least once (the schedule goes through
/// all of them before repeating, and runs are long enough for one round).
fn assert_faulted(r: &Report, spec_faults: &[Fault]) {
    for f in spec_faults {
        assert!(
            r.intervals.iter().any(|i| i.fault == *f),
            "fault {f:?} was never applied: {}",
            r.summary()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bank_survives_kills_of_random_nodes_and_shard_leaders() {
    let faults = [Fault::KillRandom, Fault::KillShardLeader];
    let mut spec = Spec::new("bank-kill", Workload::Bank, &faults);
    // Leaders gathered on node 1 (as in the playground): each kill of it
    // scatters them, and the balancer brings them back under the load.
    spec.gather_leaders = true;
    let r = run(spec).await;
    assert_faulted(&r, &faults);
    assert_valid(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bank_survives_coordinator_kills_between_prepare_and_decision() {
    let faults = [Fault::KillCoordinator];
    let mut spec = Spec::new("bank-coordinator-kill", Workload::Bank, &faults);
    // Hold each decision 200 ms after the votes, so kills land in doubt.
    spec.server_faults = vec!["decision-delay"];
    // Each kill aborts the transactions the dead leader had open (their
    // participants notice within about 2 s): leave room for progress.
    spec.quiet_ms = (3000, 5000);
    spec.duration += std::time::Duration::from_secs(10);
    let r = run(spec).await;
    assert_faulted(&r, &faults);
    assert!(
        r.intervals
            .iter()
            .any(|i| i.detail.starts_with("killed coordinator leader")),
        "no coordinator leader was killed: {}",
        r.summary()
    );
    assert_valid(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_append_survives_partitions() {
    let faults = [
        Fault::IsolateOne,
        Fault::MajorityMinority,
        Fault::Ring,
        Fault::OneWay,
        Fault::CoordinatorCutOffShard,
    ];
    let mut spec = Spec::new("list-append-partition", Workload::ListAppend, &faults);
    // Five participants, so a ring leaves each node a majority of neighbours.
    spec.participants = 5;
    // Long enough for every partition kind at least once.
    spec.duration += std::time::Duration::from_secs(15);
    let r = run(spec).await;
    assert_faulted(&r, &faults);
    assert_valid(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registers_stay_linearizable_under_pauses_and_isolation() {
    let faults = [Fault::Pause, Fault::IsolateOne];
    let r = run(Spec::new("register-pause", Workload::Register, &faults)).await;
    assert_faulted(&r, &faults);
    assert_valid(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn set_survives_clock_skew_and_crashes_before_fsync() {
    let faults = [Fault::ClockSkew, Fault::CrashBeforeFsync];
    let mut spec = Spec::new("set-skew-fsync", Workload::Set, &faults);
    spec.server_faults = vec!["crash-before-fsync"];
    spec.skewed_clocks = true;
    let r = run(spec).await;
    assert_faulted(&r, &faults);
    assert_valid(&r);
}

/// Leadership handed over through the admin API (what `txn admin leader
/// transfer` and the leader balancer do) while list-append runs, no
/// process harmed: transactions open at the old leader abort, prepared
/// ones and the recovery log's decisions carry over, and nothing
/// acknowledged may be lost or seen out of order. At least one transfer
/// must have gone through, or the run tested nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_append_survives_leadership_transfers() {
    let faults = [Fault::TransferLeader];
    let r = run(Spec::new(
        "list-append-transfer",
        Workload::ListAppend,
        &faults,
    ))
    .await;
    assert_faulted(&r, &faults);
    assert!(
        r.intervals
            .iter()
            .any(|i| i.detail.starts_with("moved the leadership")),
        "no leadership transfer went through: {}",
        r.summary()
    );
    assert_valid(&r);
}

/// Shard replicas moved to nodes that did not hold them (and their old
/// copies dropped) while bank transfers run, between kills of shard
/// leaders: a spare fourth participant gives every move a target, and
/// replicas wander over the four nodes. The bank's total holds, every
/// acknowledged transfer is there, and at least one move went through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bank_survives_replica_moves_and_leader_kills() {
    let faults = [Fault::MoveReplica, Fault::KillShardLeader];
    let mut spec = Spec::new("bank-move", Workload::Bank, &faults);
    spec.spare = true;
    let r = run(spec).await;
    assert_faulted(&r, &faults);
    assert!(
        r.intervals
            .iter()
            .any(|i| i.detail.starts_with("moved a replica")),
        "no replica move went through: {}",
        r.summary()
    );
    assert_valid(&r);
}

/// Nodes the config does not list join (member add, start, a shard
/// replica moved onto them) and leave again (replicas moved away, member
/// remove, process stopped) while bank transfers run, between kills of
/// shard leaders. The bank's total holds and every acknowledged transfer
/// is there; at least one node joined and took a replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bank_survives_nodes_joining_and_leaving() {
    let faults = [Fault::JoinOrLeave, Fault::KillShardLeader];
    let mut spec = Spec::new("bank-grow", Workload::Bank, &faults);
    spec.spare = true;
    let r = run(spec).await;
    assert_faulted(&r, &faults);
    assert!(
        r.intervals
            .iter()
            .any(|i| i.detail.contains("joined the cluster and took")),
        "no node joined and took a replica: {}",
        r.summary()
    );
    assert_valid(&r);
}

/// Shards split in two (hash-partitioned: each at the middle of its ring
/// share) and merge back into others while list-append transactions run,
/// between kills of shard leaders: transactions holding locks in a moving
/// part abort, and the shards that take the keys over serve them; merged
/// shards are then retired (records expire within 2 s here), every node
/// answering for them. The Elle-style checker finds no anomaly, and at
/// least one split, one merge and one retirement went through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_append_survives_shard_splits_merges_and_leader_kills() {
    let faults = [Fault::Split, Fault::Merge, Fault::KillShardLeader];
    let mut spec = Spec::new("append-split", Workload::ListAppend, &faults);
    spec.spare = true;
    spec.record_retention_s = Some(2);
    // A merge waits out its shard's records to retire it (a few seconds):
    // time enough for every fault once.
    spec.duration = spec.duration.max(std::time::Duration::from_secs(25));
    let r = run(spec).await;
    assert_faulted(&r, &faults);
    assert!(
        r.intervals
            .iter()
            .any(|i| i.detail.starts_with("split shard")),
        "no split went through: {}",
        r.summary()
    );
    assert!(
        r.intervals
            .iter()
            .any(|i| i.detail.starts_with("merged shard")),
        "no merge went through: {}",
        r.summary()
    );
    assert!(
        r.intervals
            .iter()
            .any(|i| i.detail.contains("retired shard")),
        "no merged shard was retired: {}",
        r.summary()
    );
    assert_valid(&r);
}

/// Broken build: transactional reads take no lock. Snapshot reads of the
/// bank then see transfers half-applied, and the checker must say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broken_build_without_read_locks_is_caught_by_bank_checker() {
    let mut spec = Spec::new("broken-skip-read-locks", Workload::Bank, &[]);
    spec.server_faults = vec!["skip-read-locks"];
    assert_caught(&run(spec).await, &["wrong-total"]);
}

/// Broken build: followers answer reads from their own state. With one
/// replica cut off, its reads go stale, and linearizability must fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broken_build_with_follower_reads_is_caught_by_linearizability_checker() {
    let mut spec = Spec::new(
        "broken-stale-reads",
        Workload::Register,
        &[Fault::IsolateOne],
    );
    spec.server_faults = vec!["stale-reads"];
    spec.follower_reads = true;
    assert_caught(&run(spec).await, &["nonlinearizable"]);
}

/// The same 2PL bug seen by list-append: reads that take no lock observe
/// states no serial order explains, and the Elle-style checker names the
/// dependency cycles.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broken_build_without_read_locks_is_caught_by_elle_checker() {
    let mut spec = Spec::new("broken-skip-read-locks-elle", Workload::ListAppend, &[]);
    spec.server_faults = vec!["skip-read-locks"];
    // Cycles in any variant (plain, -process, -realtime) count.
    assert_caught(&run(spec).await, &["G-single", "G2-item", "G1c", "G0"]);
}

/// Impatient writers: plain one-shard batches of a key group, each request
/// abandoned after 1-5 ms (its gRPC deadline passes or its stream is
/// reset), while patient workers read and write those keys in
/// transactions. A cancelled request's entry may still commit after it is
/// gone: its locks must hold until then, or a reader sees half a batch
/// (G-single) or a writer overwrites on a stale read.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rw_register_with_impatient_clients() {
    let mut spec = Spec::new("rw-register-impatient", Workload::RwRegister, &[]);
    spec.impatient = 2;
    let r = run(spec).await;
    assert_valid(&r);
}

/// Impatient transactions beside patient ones: every commit and one read
/// in four abandoned after 1-5 ms, at any point of the coordinator's and
/// the shards' work on them; transfers must still conserve the total.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bank_with_impatient_clients() {
    let mut spec = Spec::new("bank-impatient", Workload::Bank, &[]);
    spec.impatient = 2;
    let r = run(spec).await;
    assert_valid(&r);
}

/// Transaction ids are the coordinator's hybrid-clock time (plus node and
/// group): a coordinator restarted with its clock set back must still
/// never hand out an id it used before, or a commit meets the old one's
/// outcome record and is acknowledged without being applied. One shard and
/// one coordinator, so every transaction commits in one phase (no decision
/// record to push the clock forward on recovery) and the restarted node is
/// the leader again at once. A reused id shows in the `txn-ids` check
/// (`duplicate-txn-id`); a lost append as a cycle through the acknowledged
/// element no read ever shows (G-single, G0, with -process/-realtime).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_append_survives_coordinator_restarts_with_clock_set_back() {
    let faults = [Fault::ClockSetBack];
    let mut spec = Spec::new("list-append-clock-set-back", Workload::ListAppend, &faults);
    spec.shards = 1;
    spec.coordinators = 1;
    // A restart reuses an id only where the old run of the clock issued
    // one in the same millisecond, and loses a write only if both wrote:
    // on a loaded machine that is about one transaction in a few hundred,
    // so give it the time for several.
    spec.duration += std::time::Duration::from_secs(10);
    let r = run(spec).await;
    assert_faulted(&r, &faults);
    assert_valid(&r);
}

fn env_secs(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number of seconds")),
        Err(_) => default,
    }
}

/// The soak (an hour by default; `PACT_SOAK_SECS` sets it): bank transfers
/// and rw-register transactions and batches side by side, under kills,
/// pauses, partitions, leadership transfers, replica moves and shard
/// splits (up to `MAX_SPLIT_SHARDS` shards) and merges, with every server's RSS, data-directory size and
/// transaction-record counts sampled every `PACT_SOAK_SAMPLE_SECS` (10)
/// into `soak.csv`, `memory.png`, `disk.png` and `records.png`. Both
/// histories must check valid as in any run. With
/// `PACT_SOAK_MAX_GROWTH_KB_MIN` set, every process's RSS growth over the
/// second half of its run must stay under it; `PACT_SOAK_QUIET_SECS`
/// sets the calm between faults (3-10 s by default). See README for the
/// command.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "long: run with --ignored (README, the soak)"]
async fn soak_mixed_workload_under_nemeses() {
    let faults = [
        Fault::KillRandom,
        Fault::KillShardLeader,
        Fault::KillCoordinator,
        Fault::Pause,
        Fault::IsolateOne,
        Fault::MajorityMinority,
        Fault::TransferLeader,
        Fault::MoveReplica,
        Fault::Split,
        Fault::Merge,
    ];
    // Workloads whose data stays the same size however long they run (bank
    // balances, registers overwritten): what grows on disk or in memory
    // is then the store's own, not the workload's.
    let mut spec = Spec::new("soak", Workload::Bank, &faults);
    spec.also = vec![Workload::RwRegister];
    // A spare participant, so replica moves always have a target (every
    // node then runs as `pact`).
    spec.spare = true;
    spec.duration = std::time::Duration::from_secs(env_secs("PACT_SOAK_SECS", 3600));
    let every = env_secs("PACT_SOAK_SAMPLE_SECS", 10).max(1);
    spec.sample_every = Some(std::time::Duration::from_secs(every));
    // Stretches of calm between faults, so the curves show recovery.
    // `PACT_SOAK_QUIET_SECS` stretches them (each drawn from [N, 1.2 N]
    // seconds): with every fault once per round and few rounds an hour,
    // most processes then live through the whole run, and their memory
    // curves show what one process does over an hour.
    spec.quiet_ms = match env_secs("PACT_SOAK_QUIET_SECS", 0) {
        0 => (3000, 10_000),
        n => (n * 1000, n * 1200),
    };
    let r = run(spec).await;
    // A fault round takes about a minute: every fault in any soak.
    assert_faulted(&r, &faults);
    assert_valid(&r);
    let soak = r.soak.as_ref().expect("sampled");
    assert!(soak.samples >= 2, "too few samples: {soak:?}");
    // Seven processes: three participants, three coordinators, the spare.
    assert_eq!(soak.processes.len(), 7, "{soak:?}");
    for p in &soak.processes {
        assert!(
            p.max_rss > 1 << 20,
            "no RSS read for {}: {soak:?}",
            p.process
        );
        assert!(p.max_disk > 0, "no disk usage for {}: {soak:?}", p.process);
    }
    for f in ["soak.csv", "soak.txt", "memory.png", "disk.png"] {
        assert!(r.dir.join(f).exists(), "{f} missing in {}", r.dir.display());
    }
    if let Ok(max) = std::env::var("PACT_SOAK_MAX_GROWTH_KB_MIN") {
        let max: f64 = max.parse().expect("PACT_SOAK_MAX_GROWTH_KB_MIN: a number");
        // A process restarted just before the end has too few samples of
        // its last run for a slope; the others must all have one.
        let measured: Vec<_> = soak
            .processes
            .iter()
            .filter_map(|p| p.slope_kb_per_min.map(|g| (p, g)))
            .collect();
        assert!(measured.len() >= 3, "too few slopes: {soak:?}");
        for (p, growth) in measured {
            assert!(
                growth <= max,
                "{} grew {growth:.1} KB/min over the second half (limit {max}): {}",
                p.process,
                soak.lines().join("\n")
            );
        }
    }
}
