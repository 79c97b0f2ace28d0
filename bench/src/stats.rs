//! Latency recording and the report (YCSB-style text, JSON in two shapes,
//! HdrHistogram interval log).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;
use serde_json::json;

use crate::workload::OpKind;

const KINDS: usize = OpKind::ALL.len();
/// Longest latency recorded exactly: one hour, in microseconds; longer
/// ones are clamped to it.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Auto-resizing, so a histogram only grows to the latencies it saw (a
/// fixed one-hour range would cost ~180 KB per task and type).
fn new_histogram() -> Histogram<u64> {
    Histogram::new(3).expect("3 significant digits are valid")
}

fn empty_histogram() -> &'static Histogram<u64> {
    static EMPTY: std::sync::OnceLock<Histogram<u64>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(new_histogram)
}

/// Live counters shared by all tasks, for the progress line.
#[derive(Debug, Default)]
pub struct Progress {
    ok: [AtomicU64; KINDS],
    failed: [AtomicU64; KINDS],
    /// Refused by a server's admission control (OVERLOADED), apart from
    /// the failures.
    overloaded: AtomicU64,
    /// Latencies (us) of the operations that succeeded since the progress
    /// line last took them; only kept when a progress line is printed.
    /// Every task records into it, but a record is a few nanoseconds under
    /// an uncontended lock, against an operation's hundreds of microseconds.
    interval: Option<Mutex<Histogram<u64>>>,
}

impl Progress {
    /// `live`: keep the interval histogram for [`Progress::take_interval`].
    pub fn new(live: bool) -> Progress {
        Progress {
            interval: live.then(|| Mutex::new(new_histogram())),
            ..Progress::default()
        }
    }

    fn note_latency(&self, us: u64) {
        if let Some(h) = &self.interval {
            if let Ok(mut h) = h.lock() {
                if h.record(us).is_err() {
                    h.saturating_record(us);
                }
            }
        }
    }

    /// The p50 and p99 latency in microseconds of the operations that
    /// succeeded since the last call, and starts a new interval; None if
    /// there were none (or the progress line is off).
    pub fn take_interval(&self) -> Option<(u64, u64)> {
        let mut h = self.interval.as_ref()?.lock().ok()?;
        if h.is_empty() {
            return None;
        }
        let q = (h.value_at_quantile(0.50), h.value_at_quantile(0.99));
        h.reset();
        Some(q)
    }

    /// Operations refused with OVERLOADED so far.
    pub fn overloaded(&self) -> u64 {
        self.overloaded.load(Ordering::Relaxed)
    }

    pub fn totals(&self) -> (u64, u64) {
        let sum = |a: &[AtomicU64; KINDS]| a.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        (sum(&self.ok), sum(&self.failed))
    }

    /// `READ 120 UPDATE 118` for the kinds seen so far.
    pub fn by_kind(&self) -> String {
        OpKind::ALL
            .iter()
            .filter_map(|k| {
                let n = self.ok[k.index()].load(Ordering::Relaxed);
                (n > 0).then(|| format!("{} {n}", k.name()))
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// One task's measurements; merged at the end. A histogram is allocated
/// when its operation type first succeeds (or first fails).
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    hists: [Option<Histogram<u64>>; KINDS],
    /// Latencies of the failed operations, apart (YCSB's `READ-FAILED`).
    failed: [Option<Histogram<u64>>; KINDS],
    /// Operations a server refused with OVERLOADED (after the client's
    /// own retries): neither successes nor failures, they measure the
    /// load shed. Their latencies are not kept.
    overloaded: [u64; KINDS],
    /// Open loop with an in-flight cap: operations not started because
    /// the bench itself had the cap's worth in flight at their time.
    pub(crate) not_started: u64,
    /// Load with `--batch`: records in the batches that succeeded (each
    /// batch is one INSERT operation).
    pub(crate) records: u64,
    /// With `--target`: when the next operation was meant to start. Its
    /// latency counts from then, not from when it could start, so time
    /// spent queued behind a slow operation is measured (coordinated
    /// omission corrected, as YCSB's `-target`).
    pub(crate) intended: Option<std::time::Instant>,
}

impl Recorder {
    pub fn record(&mut self, kind: OpKind, latency: Duration, ok: bool, progress: &Progress) {
        let i = kind.index();
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, MAX_LATENCY_US);
        let slot = if ok {
            progress.ok[i].fetch_add(1, Ordering::Relaxed);
            progress.note_latency(us);
            &mut self.hists[i]
        } else {
            progress.failed[i].fetch_add(1, Ordering::Relaxed);
            &mut self.failed[i]
        };
        let h = slot.get_or_insert_with(new_histogram);
        // `record` grows the histogram; `saturating_record` would clamp
        // to its current (initially tiny) range instead.
        if h.record(us).is_err() {
            h.saturating_record(us);
        }
    }

    /// `kind` was refused with OVERLOADED.
    pub fn reject(&mut self, kind: OpKind, progress: &Progress) {
        self.overloaded[kind.index()] += 1;
        progress.overloaded.fetch_add(1, Ordering::Relaxed);
    }

    pub fn merge(&mut self, other: &Recorder) {
        for (a, b) in self.overloaded.iter_mut().zip(&other.overloaded) {
            *a += b;
        }
        self.not_started += other.not_started;
        self.records += other.records;
        let pairs = self
            .hists
            .iter_mut()
            .zip(&other.hists)
            .chain(self.failed.iter_mut().zip(&other.failed));
        for (a, b) in pairs {
            if let Some(b) = b {
                // `a` resizes itself to `b`'s range, so adding cannot fail.
                let _ = a.get_or_insert_with(new_histogram).add(b);
            }
        }
    }

    fn overloaded_count(&self, kind: OpKind) -> u64 {
        self.overloaded[kind.index()]
    }

    fn failed_count(&self, kind: OpKind) -> u64 {
        self.failed[kind.index()].as_ref().map_or(0, |h| h.len())
    }
}

/// One object of YCSB's JSON array exporter; a struct, not a JSON map, so
/// the keys print in YCSB's order.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct YcsbMeasurement {
    pub metric: String,
    pub measurement: String,
    pub value: serde_json::Value,
}

/// The outcome of one phase.
#[derive(Debug, Clone)]
pub struct Report {
    pub phase: &'static str,
    pub workload: String,
    /// Resolved workload parameters (JSON report only).
    pub params: serde_json::Value,
    pub backend: &'static str,
    pub threads: usize,
    pub seed: u64,
    pub elapsed: Duration,
    pub started: SystemTime,
    pub data: Recorder,
    /// Transfers started over after an abort / failed commit, in total
    /// (each transfer still counts once in the operations).
    pub txn_retries: u64,
    /// RSS of the watched server processes (`--watch-rss`), if any.
    pub memory: Option<crate::memory::MemoryReport>,
}

impl Report {
    fn secs(&self) -> f64 {
        self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn ok_ops(&self) -> u64 {
        self.data.hists.iter().flatten().map(|h| h.len()).sum()
    }

    /// The `q` quantile of `kind`'s latencies in microseconds, if any.
    pub fn latency_us(&self, kind: OpKind, q: f64) -> Option<u64> {
        self.data.hists[kind.index()]
            .as_ref()
            .filter(|h| !h.is_empty())
            .map(|h| h.value_at_quantile(q))
    }

    pub fn failed_ops(&self) -> u64 {
        OpKind::ALL.iter().map(|k| self.data.failed_count(*k)).sum()
    }

    /// Operations refused with OVERLOADED (not counted as failed).
    pub fn overloaded_ops(&self) -> u64 {
        OpKind::ALL
            .iter()
            .map(|k| self.data.overloaded_count(*k))
            .sum()
    }

    /// Share of the operations started that were refused with OVERLOADED.
    pub fn overloaded_rate(&self) -> f64 {
        let started = self.ok_ops() + self.failed_ops() + self.overloaded_ops();
        self.overloaded_ops() as f64 / started.max(1) as f64
    }

    /// Latencies of every successful (admitted) operation, all types
    /// together.
    pub fn admitted(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for h in self.data.hists.iter().flatten() {
            // `all` resizes itself to `h`'s range, so adding cannot fail.
            let _ = all.add(h);
        }
        all
    }

    /// Records per load operation, when a load wrote them in batches
    /// (`--batch` above 1).
    fn batch(&self) -> Option<u64> {
        self.params
            .get("batch")
            .and_then(|b| b.as_u64())
            .filter(|b| *b > 1)
    }

    /// The overload figures, if there is anything to say (some refusal,
    /// or an in-flight cap): text lines and JSON.
    fn shows_overload(&self) -> bool {
        self.overloaded_ops() > 0
            || self
                .params
                .get("max_in_flight")
                .is_some_and(|v| !v.is_null())
    }

    fn kinds(&self) -> impl Iterator<Item = (OpKind, &Histogram<u64>, u64)> {
        OpKind::ALL
            .iter()
            .map(|k| {
                let h = self.data.hists[k.index()].as_ref();
                (
                    *k,
                    h.unwrap_or(empty_histogram()),
                    self.data.failed_count(*k),
                )
            })
            .filter(|(k, h, f)| !h.is_empty() || *f > 0 || self.data.overloaded_count(*k) > 0)
    }

    fn failed_hist(&self, kind: OpKind) -> &Histogram<u64> {
        self.data.failed[kind.index()]
            .as_ref()
            .unwrap_or(empty_histogram())
    }

    /// YCSB's text format: `[SECTION], Metric, value` lines.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let mut line = |sec: &str, metric: &str, v: String| {
            out.push_str(&format!("[{sec}], {metric}, {v}\n"));
        };
        line(
            "OVERALL",
            "RunTime(ms)",
            self.elapsed.as_millis().to_string(),
        );
        line(
            "OVERALL",
            "Throughput(ops/sec)",
            format!("{:.2}", self.ok_ops() as f64 / self.secs()),
        );
        line("OVERALL", "Operations", self.ok_ops().to_string());
        if let Some(b) = self.batch() {
            // Each INSERT below is one batch of up to `b` records.
            line("OVERALL", "RecordsPerBatch", b.to_string());
            line("OVERALL", "Records", self.data.records.to_string());
            line(
                "OVERALL",
                "Throughput(records/sec)",
                format!("{:.2}", self.data.records as f64 / self.secs()),
            );
        }
        if let Some(t) = self.params.get("target_ops_sec").and_then(|t| t.as_f64()) {
            // Latencies below count from each operation's scheduled start.
            line("OVERALL", "Target(ops/sec)", format!("{t:.2}"));
        }
        for (k, h, failed) in self.kinds() {
            let n = k.name();
            line(n, "Operations", h.len().to_string());
            line(
                n,
                "Throughput(ops/sec)",
                format!("{:.2}", h.len() as f64 / self.secs()),
            );
            if !h.is_empty() {
                line(n, "AverageLatency(us)", format!("{:.2}", h.mean()));
                line(n, "MinLatency(us)", h.min().to_string());
                line(n, "MaxLatency(us)", h.max().to_string());
                for (label, q) in PERCENTILES {
                    line(
                        n,
                        &format!("{label}PercentileLatency(us)"),
                        h.value_at_quantile(q).to_string(),
                    );
                }
            }
            if k == OpKind::Txn {
                line(n, "Retries", self.txn_retries.to_string());
            }
            line(n, "Return=OK", h.len().to_string());
            let shed = self.data.overloaded_count(k);
            if shed > 0 {
                line(n, "Return=OVERLOADED", shed.to_string());
            }
            if failed > 0 {
                line(n, "Return=ERROR", failed.to_string());
                let f = self.failed_hist(k);
                let n = format!("{n}-FAILED");
                line(&n, "Operations", failed.to_string());
                line(&n, "AverageLatency(us)", format!("{:.2}", f.mean()));
                line(&n, "MinLatency(us)", f.min().to_string());
                line(&n, "MaxLatency(us)", f.max().to_string());
            }
        }
        line("FAILED", "Operations", self.failed_ops().to_string());
        if self.shows_overload() {
            line(
                "OVERLOADED",
                "Operations",
                self.overloaded_ops().to_string(),
            );
            line(
                "OVERLOADED",
                "Rate(%)",
                format!("{:.2}", 100.0 * self.overloaded_rate()),
            );
            line(
                "OVERLOADED",
                "Throughput(ops/sec)",
                format!("{:.2}", self.overloaded_ops() as f64 / self.secs()),
            );
            line(
                "OVERLOADED",
                "NotStarted",
                self.data.not_started.to_string(),
            );
            let a = self.admitted();
            if !a.is_empty() {
                for (label, q) in PERCENTILES {
                    line(
                        "ADMITTED",
                        &format!("{label}PercentileLatency(us)"),
                        a.value_at_quantile(q).to_string(),
                    );
                }
                line("ADMITTED", "MaxLatency(us)", a.max().to_string());
            }
        }
        if let Some(m) = &self.memory {
            out.push_str(&m.text());
        }
        out
    }

    pub fn json(&self) -> serde_json::Value {
        let mut ops = serde_json::Map::new();
        for (k, h, failed) in self.kinds() {
            let latency = if !h.is_empty() {
                json!({
                    "min": h.min(),
                    "avg": h.mean(),
                    "p50": h.value_at_quantile(0.50),
                    "p95": h.value_at_quantile(0.95),
                    "p99": h.value_at_quantile(0.99),
                    "p999": h.value_at_quantile(0.999),
                    "max": h.max(),
                })
            } else {
                serde_json::Value::Null
            };
            let mut entry = json!({
                "operations": h.len(),
                "failed": failed,
                "overloaded": self.data.overloaded_count(k),
                "throughput_ops_sec": h.len() as f64 / self.secs(),
                "latency_us": latency,
            });
            if k == OpKind::Txn {
                entry["retries"] = json!(self.txn_retries);
            }
            ops.insert(k.name().to_string(), entry);
        }
        let a = self.admitted();
        let admitted = (!a.is_empty()).then(|| {
            json!({
                "p50": a.value_at_quantile(0.50),
                "p99": a.value_at_quantile(0.99),
                "p999": a.value_at_quantile(0.999),
                "max": a.max(),
            })
        });
        json!({
            "phase": self.phase,
            "workload": self.workload,
            "params": self.params,
            "backend": self.backend,
            "threads": self.threads,
            "seed": self.seed,
            "runtime_ms": self.elapsed.as_millis() as u64,
            "operations": self.ok_ops(),
            "failed": self.failed_ops(),
            "throughput_ops_sec": self.ok_ops() as f64 / self.secs(),
            "records": self.batch().map(|_| self.data.records),
            "throughput_records_sec": self.batch().map(|_| self.data.records as f64 / self.secs()),
            "overloaded": self.overloaded_ops(),
            "overloaded_rate": self.overloaded_rate(),
            "not_started": self.data.not_started,
            "admitted_latency_us": admitted,
            "ops": ops,
            "memory": self.memory.as_ref().map(|m| m.json()),
        })
    }

    /// The report as YCSB's JSON array exporter
    /// (`-p exporter=site.ycsb.measurements.exporter.JSONArrayMeasurementsExporter`)
    /// writes it, so tools that read YCSB results read these: an array of
    /// `{"metric", "measurement", "value"}` objects; OVERALL `RunTime(ms)`
    /// and `Throughput(ops/sec)`, then per operation type `Operations`,
    /// `AverageLatency(us)`, `MinLatency(us)`, `MaxLatency(us)`, YCSB's
    /// default percentiles (`95thPercentileLatency(us)`, `99th...`),
    /// `Return=OK` and `Return=ERROR` counts, and a type's failed
    /// operations as their own `<TYPE>-FAILED` metric. Transfer retries,
    /// which YCSB does not have, are added as `TXN` `Retries`.
    pub fn ycsb_json(&self) -> Vec<YcsbMeasurement> {
        fn put(
            out: &mut Vec<YcsbMeasurement>,
            metric: &str,
            measurement: &str,
            value: serde_json::Value,
        ) {
            out.push(YcsbMeasurement {
                metric: metric.to_string(),
                measurement: measurement.to_string(),
                value,
            });
        }
        fn latencies(out: &mut Vec<YcsbMeasurement>, name: &str, h: &Histogram<u64>) {
            put(out, name, "Operations", json!(h.len()));
            if h.is_empty() {
                return;
            }
            put(out, name, "AverageLatency(us)", json!(h.mean()));
            put(out, name, "MinLatency(us)", json!(h.min()));
            put(out, name, "MaxLatency(us)", json!(h.max()));
            for (label, q) in [("95th", 0.95), ("99th", 0.99)] {
                let measurement = format!("{label}PercentileLatency(us)");
                put(out, name, &measurement, json!(h.value_at_quantile(q)));
            }
        }
        let mut out = Vec::new();
        let runtime_ms = self.elapsed.as_millis() as u64;
        put(&mut out, "OVERALL", "RunTime(ms)", json!(runtime_ms));
        let throughput = self.ok_ops() as f64 / self.secs();
        put(
            &mut out,
            "OVERALL",
            "Throughput(ops/sec)",
            json!(throughput),
        );
        for (k, h, failed) in self.kinds() {
            let name = k.name();
            latencies(&mut out, name, h);
            put(&mut out, name, "Return=OK", json!(h.len()));
            if failed > 0 {
                put(&mut out, name, "Return=ERROR", json!(failed));
            }
            if k == OpKind::Txn {
                put(&mut out, name, "Retries", json!(self.txn_retries));
            }
            if failed > 0 {
                latencies(&mut out, &format!("{name}-FAILED"), self.failed_hist(k));
            }
        }
        out
    }

    /// One interval per operation type, tagged with its name, in the
    /// HdrHistogram interval log format (readable by HistogramLogProcessor
    /// and hdrhistogram's `IntervalLogIterator`). Values are microseconds.
    pub fn write_hdr_log(&self, path: &Path) -> anyhow::Result<()> {
        let mut buf = Vec::new();
        let mut ser = V2DeflateSerializer::new();
        {
            let mut w = IntervalLogWriterBuilder::new()
                .add_comment(&format!(
                    "pact-bench {} workload {} backend {}; latencies in microseconds",
                    self.phase, self.workload, self.backend
                ))
                .with_start_time(self.started)
                .with_base_time(self.started)
                .begin_log_with(&mut buf, &mut ser)
                .context("starting the histogram log")?;
            for (k, h, _) in self.kinds() {
                let tag = Tag::new(k.name());
                w.write_histogram(h, Duration::ZERO, self.elapsed, tag)
                    .map_err(|e| anyhow::anyhow!("serializing the {} histogram: {e}", k.name()))?;
            }
        }
        std::fs::write(path, buf).with_context(|| format!("writing {}", path.display()))
    }
}

const PERCENTILES: [(&str, f64); 4] = [
    ("50th", 0.50),
    ("95th", 0.95),
    ("99th", 0.99),
    ("99.9th", 0.999),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let progress = Progress::default();
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        for i in 1..=100u64 {
            a.record(OpKind::Read, Duration::from_micros(i), true, &progress);
        }
        b.record(OpKind::Update, Duration::from_micros(500), true, &progress);
        b.record(OpKind::Update, Duration::from_micros(5), false, &progress);
        a.merge(&b);
        assert_eq!(progress.totals(), (101, 1));
        Report {
            phase: "run",
            workload: "a".into(),
            params: serde_json::Value::Null,
            backend: "pact",
            threads: 2,
            seed: 1,
            elapsed: Duration::from_secs(2),
            started: SystemTime::now(),
            data: a,
            txn_retries: 0,
            memory: None,
        }
    }

    #[test]
    fn text_and_json_agree() {
        let r = report();
        let text = r.text();
        assert!(text.contains("[READ], Operations, 100\n"), "{text}");
        assert!(
            text.contains("[READ], 99thPercentileLatency(us), 99\n"),
            "{text}"
        );
        assert!(text.contains("[UPDATE-FAILED], Operations, 1\n"), "{text}");
        assert!(text.contains("[FAILED], Operations, 1\n"), "{text}");
        assert!(!text.contains("[SCAN]"));
        let j = r.json();
        assert_eq!(j["ops"]["READ"]["operations"], 100);
        assert_eq!(j["ops"]["READ"]["latency_us"]["max"], 100);
        assert_eq!(j["ops"]["READ"]["throughput_ops_sec"], 50.0);
        assert_eq!(j["ops"]["UPDATE"]["failed"], 1);
        assert_eq!(j["failed"], 1);
        assert_eq!(j["operations"], 101);
    }

    #[test]
    fn ycsb_json_is_the_array_exporters_shape() {
        let r = report();
        let items = r.ycsb_json();
        let text = serde_json::to_string_pretty(&items).unwrap();
        // YCSB's key order, as its exporter prints them.
        assert!(
            text.starts_with(
                "[\n  {\n    \"metric\": \"OVERALL\",\n    \"measurement\": \"RunTime(ms)\",\n    \"value\": 2000\n  },"
            ),
            "{text}"
        );
        assert!(items.iter().all(|i| i.value.is_number()), "{text}");
        let get = |metric: &str, measurement: &str| {
            items
                .iter()
                .find(|i| i.metric == metric && i.measurement == measurement)
                .map(|i| i.value.clone())
                .unwrap_or_else(|| panic!("no {metric} {measurement} in {text}"))
        };
        assert_eq!(get("OVERALL", "RunTime(ms)"), 2000);
        assert_eq!(get("OVERALL", "Throughput(ops/sec)"), 50.5);
        assert_eq!(get("READ", "Operations"), 100);
        assert_eq!(get("READ", "AverageLatency(us)"), 50.5);
        assert_eq!(get("READ", "MinLatency(us)"), 1);
        assert_eq!(get("READ", "MaxLatency(us)"), 100);
        assert_eq!(get("READ", "95thPercentileLatency(us)"), 95);
        assert_eq!(get("READ", "99thPercentileLatency(us)"), 99);
        assert_eq!(get("READ", "Return=OK"), 100);
        assert_eq!(get("UPDATE", "Return=OK"), 1);
        assert_eq!(get("UPDATE", "Return=ERROR"), 1);
        assert_eq!(get("UPDATE-FAILED", "Operations"), 1);
        assert_eq!(get("UPDATE-FAILED", "MaxLatency(us)"), 5);
        assert!(!items.iter().any(|i| i.metric == "READ-FAILED"));
        assert!(!items.iter().any(|i| i.metric == "SCAN"));
    }

    #[test]
    fn progress_interval_quantiles_reset_each_time() {
        let off = Progress::default();
        let mut rec = Recorder::default();
        rec.record(OpKind::Read, Duration::from_micros(10), true, &off);
        assert_eq!(off.take_interval(), None);

        let live = Progress::new(true);
        assert_eq!(live.take_interval(), None);
        for us in 1..=100 {
            rec.record(OpKind::Read, Duration::from_micros(us), true, &live);
        }
        // A failure is counted, not timed into the line's latencies.
        rec.record(OpKind::Read, Duration::from_secs(9), false, &live);
        assert_eq!(live.take_interval(), Some((50, 99)));
        assert_eq!(live.take_interval(), None);
        rec.record(OpKind::Update, Duration::from_micros(1500), true, &live);
        assert_eq!(live.take_interval(), Some((1500, 1500)));
    }

    #[test]
    fn huge_latencies_are_clamped_and_merge() {
        let progress = Progress::default();
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        a.record(OpKind::Scan, Duration::from_nanos(10), true, &progress);
        b.record(OpKind::Scan, Duration::from_secs(86_400), true, &progress);
        a.merge(&b);
        a.merge(&Recorder::default());
        let h = a.hists[OpKind::Scan.index()].as_ref().unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h.min(), 1);
        assert!(
            h.max() >= MAX_LATENCY_US && h.max() < MAX_LATENCY_US * 11 / 10,
            "max {}",
            h.max()
        );
    }

    #[test]
    fn hdr_log_round_trips() {
        let r = report();
        let dir = std::env::temp_dir().join(format!("pact-bench-hdr-{}", std::process::id()));
        r.write_hdr_log(&dir).unwrap();
        let bytes = std::fs::read(&dir).unwrap();
        let _ = std::fs::remove_file(&dir);
        use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
        use hdrhistogram::serialization::Deserializer;
        let mut seen = Vec::new();
        for entry in IntervalLogIterator::new(&bytes) {
            if let LogEntry::Interval(i) = entry.unwrap() {
                let raw = base64_decode(i.encoded_histogram());
                let h: Histogram<u64> = Deserializer::new()
                    .deserialize(&mut raw.as_slice())
                    .unwrap();
                seen.push((i.tag().unwrap().as_str().to_string(), h.len()));
            }
        }
        assert_eq!(seen, vec![("READ".into(), 100), ("UPDATE".into(), 1)]);
    }

    /// Minimal standard base64 decoder for the test (no extra dependency).
    fn base64_decode(s: &str) -> Vec<u8> {
        let val = |c: u8| match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            _ => 63,
        };
        let clean: Vec<u8> = s.bytes().filter(|c| *c != b'=').collect();
        let mut out = Vec::new();
        for chunk in clean.chunks(4) {
            let mut n = 0u32;
            for (i, c) in chunk.iter().enumerate() {
                n |= u32::from(val(*c)) << (18 - 6 * i);
            }
            for i in 0..chunk.len().saturating_sub(1) {
                out.push((n >> (16 - 8 * i)) as u8);
            }
        }
        out
    }
}
