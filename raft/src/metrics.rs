//! Prometheus metrics shared by every server.
//!
//! Two kinds live here. [`ProcessMetrics`] are the process's own: the
//! process collector, build info, the storage writer's fsyncs, Raft events
//! per group (leader changes, snapshots) and gRPC requests per method
//! ([`grpc`]). They are counted where they happen (the writer thread, the
//! Raft network, a tower layer) without a handle threaded through every
//! constructor, so they sit in one process-wide registry ([`process`]): a
//! server process has one store and one pair of gRPC servers. Tests that
//! run several replicas in one process add their counts up, which only
//! matters to tests that read them.
//!
//! [`RaftGauges`] are read from the replicas at each scrape (role, term,
//! applied index, apply lag), with the allocator's counts. The participant
//! and coordinator keep their own registries; [`crate::endpoint`] serves
//! them all on one page. Every name starts with `pact_`; the list with
//! meanings is docs/metrics.md.

pub mod grpc;

use std::sync::LazyLock;

use prometheus::proto::MetricFamily;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::Replica;

/// The process-wide metrics; see the module doc.
pub struct ProcessMetrics {
    pub registry: Registry,
    /// Duration of the storage writer's fsyncs.
    pub fsync_seconds: Histogram,
    pub write_seconds: Histogram,
    /// Jobs (atomic write batches) made durable by one fsync: the size of
    /// a group commit.
    pub fsync_batch_jobs: Histogram,
    /// Times a replica saw its group get a new leader (or a new term of
    /// the same one), by group.
    pub leader_changes: IntCounterVec,
    /// Snapshots this node sent to a follower, by group.
    pub snapshots_sent: IntCounterVec,
    /// Snapshots this node installed from its leader, by group.
    pub snapshots_installed: IntCounterVec,
    /// Snapshots this node built of its own state, by group.
    pub snapshots_built: IntCounterVec,
    /// Snapshots due by policy that waited because this node was
    /// streaming one to a follower, by group.
    pub snapshots_deferred: IntCounterVec,
    /// Entry-less appends (a commit index alone) that went out inside the
    /// replication stream's next append, by group.
    pub appends_merged: IntCounterVec,
    /// Snapshot data bytes sent to followers (chunk payloads), by group.
    pub snapshot_bytes_sent: IntCounterVec,
    /// Snapshot data bytes received from leaders (chunk payloads), by group.
    pub snapshot_bytes_received: IntCounterVec,
    /// gRPC requests served, by method and status code.
    pub grpc_requests: IntCounterVec,
    /// gRPC request durations (until the response's end), by method.
    pub grpc_seconds: HistogramVec,
    /// Items waiting in a bounded queue, by queue ([`QUEUE_STORAGE_WRITER`],
    /// [`QUEUE_COORDINATOR_INPUT`], [`QUEUE_COORDINATOR_RECORDS`]).
    pub queue_depth: IntGaugeVec,
    /// Best-effort items a full queue dropped, by queue.
    pub queue_dropped: IntCounterVec,
    /// Admitted work holding a place under an admission limit, by limit
    /// (see [`crate::admission`]).
    pub admission_in_use: IntGaugeVec,
    /// The configured size of each admission limit.
    pub admission_limit: IntGaugeVec,
    /// Requests refused with OVERLOADED, by the limit or queue that was
    /// full.
    pub admission_rejected: IntCounterVec,
    /// Raft log reads, by where they were served from: `tail` (the newest
    /// entries, in memory) or `store` (fjall, on the blocking pool).
    pub log_reads: IntCounterVec,
    /// A proposal's time from being handed to Raft until this leader saw
    /// it committed (`stage="commit"`), and from then until its apply was
    /// visible (`stage="apply"`).
    pub proposal_seconds: HistogramVec,
}

/// Queue names of the `pact_queue_depth` gauge.
pub const QUEUE_STORAGE_WRITER: &str = "storage_writer";
pub const QUEUE_COORDINATOR_INPUT: &str = "coordinator_input";
pub const QUEUE_COORDINATOR_RECORDS: &str = "coordinator_records";

/// The label value of a group id.
/// `pact_txn_records{group,kind}`: transaction records a group keeps, as
/// counted by its leader's last garbage collection. Shards and
/// coordinator groups each register one; a process page merges them
/// ([`gather_all`]).
pub fn txn_records() -> prometheus::Result<prometheus::IntGaugeVec> {
    prometheus::IntGaugeVec::new(
        prometheus::Opts::new(
            "pact_txn_records",
            "Transaction records kept, by Raft group and kind, as of the last garbage collection",
        ),
        &["group", "kind"],
    )
}

pub fn group_label(group: u64) -> String {
    group.to_string()
}

impl ProcessMetrics {
    fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            // pact_process_cpu_seconds_total, ..._resident_memory_bytes,
            // ..._open_fds, ..._threads, ...
            prometheus::process_collector::ProcessCollector::new(std::process::id() as i32, "pact"),
        ))?;
        let build = IntGaugeVec::new(
            Opts::new(
                "pact_build_info",
                "Always 1; the labels say which build runs (commit empty if unknown)",
            ),
            &["version", "commit"],
        )?;
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("PACT_GIT_COMMIT")])
            .set(1);
        registry.register(Box::new(build))?;
        let fsync_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "pact_storage_fsync_seconds",
                "Duration of the storage writer's fsyncs (one per group-commit round)",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5,
            ]),
        )?;
        registry.register(Box::new(fsync_seconds.clone()))?;
        let write_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "pact_storage_write_seconds",
                "Duration of one write batch on the storage writer (before any fsync); \
                 fjall's write stalls (too many memtables waiting to be flushed) show as 0.1 s",
            )
            .buckets(vec![
                0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                0.1, 0.25, 0.5, 1.0,
            ]),
        )?;
        registry.register(Box::new(write_seconds.clone()))?;
        let fsync_batch_jobs = Histogram::with_opts(
            HistogramOpts::new(
                "pact_storage_fsync_batch_jobs",
                "Write batches made durable by one fsync (group-commit size)",
            )
            .buckets(vec![
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
            ]),
        )?;
        registry.register(Box::new(fsync_batch_jobs.clone()))?;
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounterVec> {
            let c = IntCounterVec::new(Opts::new(name, help), &["group"])?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let leader_changes = counter(
            "pact_raft_leader_changes_total",
            "Times this replica saw its group get a leader it did not know (a new leader or a new term)",
        )?;
        let snapshots_sent = counter(
            "pact_raft_snapshots_sent_total",
            "Snapshots this node sent to followers that were too far behind for the log",
        )?;
        let snapshots_installed = counter(
            "pact_raft_snapshots_installed_total",
            "Snapshots this node installed from its leader",
        )?;
        let snapshots_built = counter(
            "pact_raft_snapshots_built_total",
            "Snapshots this node built of its own state (log compaction)",
        )?;
        let snapshots_deferred = counter(
            "pact_raft_snapshots_deferred_total",
            "Snapshots due by policy that waited (keeping the log) because this node was streaming one to a follower",
        )?;
        let appends_merged = counter(
            "pact_raft_appends_merged_total",
            "Entry-less appends (the commit index alone) this leader did not send because the replication stream's next append, sent within the hold, carried their commit index",
        )?;
        let snapshot_bytes_sent = counter(
            "pact_raft_snapshot_bytes_sent_total",
            "Snapshot data bytes this node streamed to followers, in chunks",
        )?;
        let snapshot_bytes_received = counter(
            "pact_raft_snapshot_bytes_received_total",
            "Snapshot data bytes this node received from its leader, in chunks",
        )?;
        let grpc_requests = IntCounterVec::new(
            Opts::new(
                "pact_grpc_requests_total",
                "gRPC requests served, by method path and status code",
            ),
            &["method", "code"],
        )?;
        registry.register(Box::new(grpc_requests.clone()))?;
        let grpc_seconds = HistogramVec::new(
            HistogramOpts::new(
                "pact_grpc_request_duration_seconds",
                "Time from a gRPC request's arrival to the end of its response, by method path",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0,
            ]),
            &["method"],
        )?;
        registry.register(Box::new(grpc_seconds.clone()))?;
        let gauge = |name: &str, help: &str, label: &str| -> prometheus::Result<IntGaugeVec> {
            let g = IntGaugeVec::new(Opts::new(name, help), &[label])?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let queue_depth = gauge(
            "pact_queue_depth",
            "Items waiting in a bounded internal queue, by queue",
            "queue",
        )?;
        let admission_in_use = gauge(
            "pact_admission_in_use",
            "Admitted work holding a place under an admission limit, by limit",
            "limit",
        )?;
        let admission_limit = gauge(
            "pact_admission_limit",
            "The configured size of an admission limit",
            "limit",
        )?;
        let queue_dropped = IntCounterVec::new(
            Opts::new(
                "pact_queue_dropped_total",
                "Best-effort items (coordinator records) dropped because their queue was full",
            ),
            &["queue"],
        )?;
        registry.register(Box::new(queue_dropped.clone()))?;
        let admission_rejected = IntCounterVec::new(
            Opts::new(
                "pact_admission_rejected_total",
                "Requests refused with OVERLOADED, by the limit or queue that was full",
            ),
            &["limit"],
        )?;
        registry.register(Box::new(admission_rejected.clone()))?;
        let log_reads = IntCounterVec::new(
            Opts::new(
                "pact_raft_log_reads_total",
                "Raft log reads (replication, apply), by source: tail (the newest entries, in \
                 memory) or store (fjall)",
            ),
            &["source"],
        )?;
        registry.register(Box::new(log_reads.clone()))?;
        let proposal_seconds = HistogramVec::new(
            HistogramOpts::new(
                "pact_raft_proposal_seconds",
                "Stages of a proposal at its leader: commit (handed to Raft until committed \
                 in the log) and apply (committed until its apply is visible)",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01, 0.025,
                0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["stage"],
        )?;
        registry.register(Box::new(proposal_seconds.clone()))?;
        Ok(ProcessMetrics {
            registry,
            fsync_seconds,
            write_seconds,
            fsync_batch_jobs,
            leader_changes,
            snapshots_sent,
            snapshots_installed,
            snapshots_built,
            snapshots_deferred,
            appends_merged,
            snapshot_bytes_sent,
            snapshot_bytes_received,
            grpc_requests,
            grpc_seconds,
            queue_depth,
            queue_dropped,
            admission_in_use,
            admission_limit,
            admission_rejected,
            log_reads,
            proposal_seconds,
        })
    }

    /// The depth gauge of `queue`.
    pub fn queue_depth(&self, queue: &str) -> IntGauge {
        self.queue_depth.with_label_values(&[queue])
    }

    /// Show `group`'s counters at 0 before anything happens to it, so a
    /// dashboard's rate has a series to start from.
    pub fn add_group(&self, group: u64) {
        let g = group_label(group);
        for c in [
            &self.leader_changes,
            &self.snapshots_sent,
            &self.snapshots_installed,
            &self.snapshots_built,
            &self.snapshots_deferred,
            &self.appends_merged,
            &self.snapshot_bytes_sent,
            &self.snapshot_bytes_received,
        ] {
            c.with_label_values(&[&g]);
        }
    }
}

static PROCESS: LazyLock<Option<ProcessMetrics>> = LazyLock::new(|| match ProcessMetrics::new() {
    Ok(m) => Some(m),
    Err(e) => {
        // Only a malformed name or bucket list above can fail, which the
        // unit test would catch; the server runs on without these.
        tracing::error!(error = %e, "process metrics unavailable");
        None
    }
});

/// The process-wide metrics (None only if they could not be built, which
/// a unit test rules out).
pub fn process() -> Option<&'static ProcessMetrics> {
    PROCESS.as_ref()
}

/// Raft gauges for the groups of one process.
#[derive(Clone)]
pub struct RaftGauges {
    term: IntGaugeVec,
    leader: IntGaugeVec,
    applied: IntGaugeVec,
    apply_lag: IntGaugeVec,
    heap_allocated: IntGauge,
    heap_resident: IntGauge,
    storage_cache: IntGauge,
    storage_write_buffer: IntGauge,
    background_purge: IntGauge,
}

/// jemalloc's options for the server binaries (see [`crate::jemalloc_options`]).
/// A background thread purges freed pages on a timer, rather than only
/// when some thread next allocates in the same arena, and unused dirty
/// pages go back to the system after one second rather than ten: without
/// them RSS crept about 0.3 MB/min above a flat heap in an hour's soak
/// (docs/performance.md).
pub const MALLOC_CONF: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// Defines jemalloc's options symbol in the binary that invokes it:
/// jemalloc's own definition is weak, and only a definition linked into
/// the binary itself reliably replaces it (one in a library's object file
/// may never be pulled in).
#[macro_export]
macro_rules! jemalloc_options {
    () => {
        #[allow(non_upper_case_globals)]
        #[export_name = "_rjem_malloc_conf"]
        pub static malloc_conf: &[u8; $crate::metrics::MALLOC_CONF.len()] =
            match $crate::metrics::MALLOC_CONF.first_chunk() {
                Some(conf) => conf,
                None => unreachable!(),
            };
    };
}

/// Whether jemalloc runs its background purge thread (so whether
/// [`MALLOC_CONF`] took effect). None if it cannot be read.
pub fn background_purge() -> Option<bool> {
    tikv_jemalloc_ctl::background_thread::read().ok()
}

/// jemalloc's own counts: bytes the program holds (allocated) and bytes
/// of the allocator's pages in memory (resident). Meaningful in the server
/// binaries, whose global allocator is jemalloc: RSS far above
/// `allocated` is allocator retention, not a leak in Pact. None if the
/// statistics cannot be read.
pub fn heap_stats() -> Option<(u64, u64)> {
    use tikv_jemalloc_ctl::{epoch, stats};
    // Statistics are snapshots refreshed by advancing the epoch.
    epoch::advance().ok()?;
    let allocated = stats::allocated::read().ok()?;
    let resident = stats::resident::read().ok()?;
    Some((allocated as u64, resident as u64))
}

/// This process's resident memory in bytes (None where there is no procfs).
pub fn resident_bytes() -> Option<u64> {
    pact_common::process::rss_bytes(None)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), &["group"])?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

impl RaftGauges {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let heap_allocated = IntGauge::new(
            "pact_heap_allocated_bytes",
            "Bytes allocated by the process and not yet freed (jemalloc)",
        )?;
        registry.register(Box::new(heap_allocated.clone()))?;
        let heap_resident = IntGauge::new(
            "pact_heap_resident_bytes",
            "Bytes of the allocator's pages resident in memory (jemalloc)",
        )?;
        registry.register(Box::new(heap_resident.clone()))?;
        let storage_cache = IntGauge::new(
            "pact_storage_cache_bytes",
            "Bytes in the storage engine's block cache (bounded by cache_mb)",
        )?;
        registry.register(Box::new(storage_cache.clone()))?;
        let storage_write_buffer = IntGauge::new(
            "pact_storage_write_buffer_bytes",
            "Bytes in the storage engine's memtables, active and sealed",
        )?;
        registry.register(Box::new(storage_write_buffer.clone()))?;
        let background_purge = IntGauge::new(
            "pact_heap_background_purge",
            "1 if jemalloc's background thread returns freed pages (MALLOC_CONF took effect)",
        )?;
        registry.register(Box::new(background_purge.clone()))?;
        Ok(RaftGauges {
            background_purge,
            heap_allocated,
            heap_resident,
            storage_cache,
            storage_write_buffer,
            term: gauge(
                registry,
                "pact_raft_term",
                "Current Raft term of this replica",
            )?,
            leader: gauge(
                registry,
                "pact_raft_is_leader",
                "1 if this replica leads its group",
            )?,
            applied: gauge(
                registry,
                "pact_raft_applied_index",
                "Last log index applied to the state machine",
            )?,
            apply_lag: gauge(
                registry,
                "pact_raft_apply_lag",
                "Log entries appended here but not yet applied (last log index - applied index)",
            )?,
        })
    }

    pub fn refresh(&self, replicas: &[Replica]) {
        if let Some((allocated, resident)) = heap_stats() {
            self.heap_allocated
                .set(i64::try_from(allocated).unwrap_or(i64::MAX));
            self.heap_resident
                .set(i64::try_from(resident).unwrap_or(i64::MAX));
        }
        if let Some(on) = background_purge() {
            self.background_purge.set(i64::from(on));
        }
        // Every replica of a process shares one store.
        if let Some(r) = replicas.first() {
            let m = r.store().memory();
            self.storage_cache
                .set(i64::try_from(m.cache).unwrap_or(i64::MAX));
            self.storage_write_buffer
                .set(i64::try_from(m.write_buffer).unwrap_or(i64::MAX));
        }
        // A group removed from this node must not linger as a series.
        for v in [&self.term, &self.leader, &self.applied, &self.apply_lag] {
            v.reset();
        }
        for r in replicas {
            let s = r.status();
            let g = group_label(s.group);
            self.term.with_label_values(&[&g]).set(s.term as i64);
            self.leader
                .with_label_values(&[&g])
                .set(i64::from(s.role == "leader"));
            self.applied
                .with_label_values(&[&g])
                .set(s.applied_index as i64);
            self.apply_lag
                .with_label_values(&[&g])
                .set(s.last_log_index.saturating_sub(s.applied_index) as i64);
        }
    }
}

/// The families of all `registries`, by name. A family that two of them
/// have becomes one with the metrics of both, as one registry merges its
/// collectors': a name may appear only once in the text format.
pub fn gather_all(registries: &[Registry]) -> Vec<MetricFamily> {
    let mut by_name: std::collections::BTreeMap<String, MetricFamily> = Default::default();
    for mut mf in registries.iter().flat_map(Registry::gather) {
        match by_name.entry(mf.name().to_owned()) {
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(mf);
            }
            std::collections::btree_map::Entry::Occupied(mut e) => {
                e.get_mut().mut_metric().extend(mf.take_metric());
            }
        }
    }
    by_name.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{Encoder, TextEncoder};

    #[test]
    fn registries_gather_as_one_page_with_each_name_once() {
        use prometheus::{IntCounter, IntCounterVec};
        let a = Registry::new();
        let b = Registry::new();
        let ca = IntCounter::new("pact_a_total", "a").unwrap();
        a.register(Box::new(ca.clone())).unwrap();
        ca.inc();
        let cb = IntCounter::new("pact_b_total", "b").unwrap();
        b.register(Box::new(cb.clone())).unwrap();
        cb.inc_by(2);
        // The same family in both, with different labels.
        let va = IntCounterVec::new(Opts::new("pact_shared", "s"), &["group"]).unwrap();
        a.register(Box::new(va.clone())).unwrap();
        va.with_label_values(&["1"]).inc();
        let vb = IntCounterVec::new(Opts::new("pact_shared", "s"), &["group"]).unwrap();
        b.register(Box::new(vb.clone())).unwrap();
        vb.with_label_values(&["4"]).inc_by(3);
        let families = gather_all(&[a, b]);
        let names: Vec<&str> = families.iter().map(|f| f.name()).collect();
        assert_eq!(names, ["pact_a_total", "pact_b_total", "pact_shared"]);
        let mut text = Vec::new();
        TextEncoder::new().encode(&families, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("pact_a_total 1\n"), "{text}");
        assert!(text.contains("pact_b_total 2\n"), "{text}");
        assert!(text.contains("pact_shared{group=\"1\"} 1\n"), "{text}");
        assert!(text.contains("pact_shared{group=\"4\"} 3\n"), "{text}");
        assert_eq!(text.matches("# TYPE pact_shared").count(), 1, "{text}");
    }

    #[test]
    fn the_process_metrics_build_and_carry_process_and_build_facts() {
        let m = process().expect("process metrics build");
        m.add_group(7);
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(&m.registry.gather(), &mut text)
            .unwrap();
        let text = String::from_utf8(text).unwrap();
        for family in [
            "pact_process_resident_memory_bytes",
            "pact_process_cpu_seconds_total",
            "pact_process_open_fds",
            "pact_storage_fsync_seconds",
            "pact_storage_write_seconds",
            "pact_storage_fsync_batch_jobs",
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{family}:\n{text}"
            );
        }
        assert!(
            text.contains(&format!(
                "pact_build_info{{commit=\"{}\",version=\"{}\"}} 1",
                env!("PACT_GIT_COMMIT"),
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
        assert!(
            text.contains("pact_raft_leader_changes_total{group=\"7\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("pact_raft_snapshots_sent_total{group=\"7\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn resident_memory_grows_with_touched_pages() {
        let before = resident_bytes().expect("procfs on Linux");
        // 64 MiB written (not just reserved) is resident.
        let big = std::hint::black_box(vec![1u8; 64 << 20]);
        let after = resident_bytes().unwrap();
        assert!(after >= before + (48 << 20), "{before} -> {after}");
        drop(big);
    }
}
