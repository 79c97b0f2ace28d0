//! The participant's counters and histograms (Prometheus).

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};

pub struct Metrics {
    pub registry: Registry,
    /// Commits applied here, by path (`one_phase`, `two_phase`).
    pub commits: IntCounterVec,
    /// Transactions aborted here, by reason.
    pub aborts: IntCounterVec,
    /// Coordinators' decisions logged here, by how they went into the
    /// log: in another transaction's entry (`carried`) or in one of
    /// their own after the hold (`alone`).
    pub decisions: IntCounterVec,
    /// Lock requests that had to wait.
    pub lock_waits: IntCounter,
    pub lock_wakeups: IntCounter,
    /// How long waiting lock requests waited.
    pub lock_wait_seconds: Histogram,
    /// Lock table size per shard: keys locked (`kind="key"`) and range
    /// locks (`kind="range"`); only a shard leader holds locks.
    pub lock_table: IntGaugeVec,
    /// Transactions open per shard (locking, buffering or prepared).
    pub open_txns: IntGaugeVec,
    /// Transaction records kept per shard (`kind="outcome"`), as counted
    /// by the last garbage collection there (a leader's count).
    pub records: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let commits = IntCounterVec::new(
            Opts::new(
                "pact_participant_commits_total",
                "Transactions committed on this node's shards",
            ),
            &["path"],
        )?;
        let aborts = IntCounterVec::new(
            Opts::new(
                "pact_participant_aborts_total",
                "Transactions aborted on this node's shards",
            ),
            &["reason"],
        )?;
        let decisions = IntCounterVec::new(
            Opts::new(
                "pact_participant_decisions_total",
                "Coordinators' decisions proposed at this node's shards: in another transaction's entry (how=carried) or in their own (how=alone)",
            ),
            &["how"],
        )?;
        for how in ["carried", "alone"] {
            decisions.with_label_values(&[how]);
        }
        let lock_waits =
            IntCounter::new("pact_lock_waits_total", "Lock requests that had to wait")?;
        let lock_wakeups = IntCounter::new(
            "pact_lock_wakeups_total",
            "Times a waiting lock request was woken to look at its lock again",
        )?;
        let lock_wait_seconds = Histogram::with_opts(
            HistogramOpts::new("pact_lock_wait_seconds", "Time lock requests spent waiting")
                .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0]),
        )?;
        let lock_table = IntGaugeVec::new(
            Opts::new(
                "pact_lock_table_size",
                "Locks held at this shard leader: locked keys (kind=key) and range locks (kind=range)",
            ),
            &["shard", "kind"],
        )?;
        let open_txns = IntGaugeVec::new(
            Opts::new(
                "pact_participant_open_txns",
                "Transactions open at this shard leader (holding locks or writes, or prepared)",
            ),
            &["shard"],
        )?;
        let records = pact_raft::metrics::txn_records()?;
        registry.register(Box::new(records.clone()))?;
        registry.register(Box::new(lock_table.clone()))?;
        registry.register(Box::new(open_txns.clone()))?;
        registry.register(Box::new(commits.clone()))?;
        registry.register(Box::new(aborts.clone()))?;
        registry.register(Box::new(decisions.clone()))?;
        registry.register(Box::new(lock_waits.clone()))?;
        registry.register(Box::new(lock_wakeups.clone()))?;
        registry.register(Box::new(lock_wait_seconds.clone()))?;
        Ok(Metrics {
            registry,
            commits,
            aborts,
            decisions,
            lock_waits,
            lock_wakeups,
            lock_wait_seconds,
            lock_table,
            open_txns,
            records,
        })
    }

    pub fn set_records(&self, shard: pact_common::ShardId, kind: &str, n: u64) {
        self.records
            .with_label_values(&[&pact_raft::metrics::group_label(shard.0), kind])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn abort(&self, kind: pact_common::AbortKind) {
        self.aborts.with_label_values(&[kind.as_str()]).inc();
    }
}
