//! # pact-bench: a YCSB-like load generator
//!
//! **What it measures.** The latency and throughput that a client sees for
//! each kind of operation (READ, UPDATE, INSERT, SCAN, READ-MODIFY-WRITE,
//! and TXN, a multi-account transfer), end to end through the real client
//! library: routing to the shard leader, leader discovery, the client's own
//! retries, gRPC, the Raft round and the fsync behind every write. A
//! latency is the wall time of one call to the [`backend::Backend`] as
//! awaited by the task that issued it, recorded in microseconds into an
//! HdrHistogram (3 significant digits); a failed call is counted, and its
//! time is kept apart from the successful calls' (YCSB's `<TYPE>-FAILED`).
//!
//! **Report.** YCSB's text lines (`[READ], 99thPercentileLatency(us), ...`),
//! the bench's own JSON object (`--json`), or the array of
//! `{"metric", "measurement", "value"}` objects that YCSB's JSON array
//! exporter writes (`--json-format ycsb`), so tools that read YCSB results
//! read these. A run with failed operations still reports, then exits with
//! status 3 (unless `--allow-failures`), so a script cannot mistake a run
//! against a broken cluster for a measurement. `bench/workloads/` holds
//! YCSB's six core workload files, in the property-file format YCSB reads.
//!
//! **How.** `bench load` writes `recordcount` records `user<N>` (one value
//! per record: `fieldcount` random printable fields of `fieldlength` bytes
//! each, joined), or `account<N>` balances for the `txn` workload. `bench
//! run` then starts `--threads` tokio tasks, each a closed loop issuing the
//! next operation as soon as the previous one returns (no think time), each
//! with its own seeded `StdRng`, until `operationcount` operations or
//! `--duration` seconds are used up. With `--target OPS` the loop is open:
//! each task has its share of the rate on a fixed schedule, and a latency
//! counts from the operation's scheduled start, so time spent waiting
//! behind a slow operation is measured (coordinated omission corrected,
//! as YCSB's `-target`); the tasks still bound how many operations are in
//! flight, so give enough `--threads` for the rate. Operation mix and key
//! choice follow YCSB's CoreWorkload: the built-in workloads A-F, or a YCSB
//! property file; keys are drawn uniformly, by YCSB's scrambled zipfian
//! (theta 0.99, FNV-hashed so hot keys are spread over the shards) or by
//! "latest" (zipfian over recency of inserts). The `txn` workload moves an
//! amount from one of `--txn-keys` accounts to the others inside
//! `Client::transaction`, reading each with `get_for_update`; when keys
//! land on several shards this is a two-phase commit through the
//! coordinator group; `--txn-scope single-shard|cross-shard` uses the
//! shard map to keep a transfer's accounts on one shard or spread them
//! (see [`scope`]). A transfer the client retried after an abort counts
//! once, with the retries inside its latency; the report adds how many
//! retries there were in all.
//!
//! **etcd.** `--backend etcd --etcd-endpoints URL,...` runs the same
//! workloads against etcd's v3 API (see [`etcd`]): Range, Put, and for a
//! transfer an optimistic read-then-`Txn` with `mod_revision` compares,
//! started over when a compare fails. `bench/compare-etcd.sh` runs both
//! side by side.
//!
//! **Memory.** `--watch-rss pact` (or `participant,coordinator`, `etcd`) samples
//! the RSS of the local processes of those names once a second and reports
//! each one's start, end and peak, and its growth per operation over the
//! second half of the run (see [`memory`]).
//!
//! **What is not measured.** Server-side time split (use the servers'
//! Prometheus metrics), coordinated omission in the closed loop (without
//! `--target`, a task waits for slow responses instead of sending on
//! schedule), time spent in the
//! bench itself before and after each call (value generation is outside
//! the timer), per-field reads or writes (a record is one value, so an
//! UPDATE rewrites the whole record, like YCSB's `writeallfields=true`),
//! warm-up exclusion, and correctness: no values are checked except that
//! a read found its record. Numbers from a debug build or from a cluster
//! sharing the machine with the bench say little about production.

pub mod backend;
pub mod etcd;
pub mod generator;
pub mod memory;
pub mod props;
pub mod runner;
pub mod scope;
pub mod stats;
pub mod workload;

/// A problem with the command line or a workload file: exit code 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}
