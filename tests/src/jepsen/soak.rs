//! Soak sampling: while a long run goes on, every few seconds, each server
//! process's resident memory (from `/proc/PID/status`, which answers for a
//! SIGSTOPped process too), its jemalloc heap and transaction-record
//! counts (`pact_txn_records`, summed per `kind` over every group, from
//! its `/metrics`, when the servers export it), and the disk its data
//! directory takes (allocated blocks, as `du` counts them).
//!
//! A run with sampling writes `soak.csv` (one row per process per sample;
//! an empty cell is a value that could not be read: the process was down,
//! paused past the scrape's deadline, or does not export the metric),
//! `memory.png`, `disk.png` and, when any record counts were seen,
//! `records.png`; its summary gives each process's start, end and peak
//! RSS and how fast RSS still grew over the second half of the run
//! ([`Summary`]). A memory leak shows as a slope that does not go to
//! zero; a process restarted by the nemesis starts a new line, as its
//! memory starts over.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pact_common::NodeId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::plot::{self, Series};
use super::Interval;
use crate::PidTable;

/// The gauge of transaction records the servers may export, one series
/// per group and kind (outcome, prepare, decision, staging).
pub const TXN_RECORDS: &str = "pact_txn_records";
const HEAP: &str = "pact_heap_allocated_bytes";
/// fjall's block cache and memtables: memory bounded by configuration
/// that fills as data grows, which the heap includes.
const STORAGE: [&str; 2] = [
    "pact_storage_cache_bytes",
    "pact_storage_write_buffer_bytes",
];
/// How long a scrape may take: a paused process never answers.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(1);

/// One process to sample.
#[derive(Clone, Debug)]
pub struct Target {
    pub id: NodeId,
    /// How the process is named in the CSV and the plots.
    pub name: String,
    pub data_dir: PathBuf,
    /// `host:port` of its metrics endpoint.
    pub metrics: Option<String>,
}

/// One process at one time.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Seconds since the history began.
    pub t_s: f64,
    pub process: String,
    pub pid: Option<u32>,
    pub rss_bytes: Option<u64>,
    pub heap_bytes: Option<u64>,
    /// Of the heap, what fjall's cache and memtables hold.
    pub storage_bytes: Option<u64>,
    pub disk_bytes: Option<u64>,
    /// `pact_txn_records` summed per kind; empty when not exported.
    pub records: BTreeMap<String, f64>,
}

impl Sample {
    /// The heap less fjall's cache and memtables: what Pact itself holds.
    pub fn live_bytes(&self) -> Option<u64> {
        Some(self.heap_bytes?.saturating_sub(self.storage_bytes?))
    }
}

/// The resident set of a `/proc/PID/status` text, in bytes (`None` for a
/// zombie, which has no memory left).
pub fn parse_status_rss(status: impl BufRead) -> Option<u64> {
    use procfs_core::FromBufRead;
    let s = procfs_core::process::Status::from_buf_read(status).ok()?;
    s.vmrss.map(|kb| kb * 1024)
}

/// One sample line of a Prometheus text page.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricLine {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// The sample lines of a Prometheus text-format page (comments and lines
/// that do not parse are skipped).
pub fn parse_metrics(text: &str) -> Vec<MetricLine> {
    text.lines().filter_map(parse_metric_line).collect()
}

fn parse_metric_line(line: &str) -> Option<MetricLine> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        // Label values are quoted, with \\, \" and \n escaped.
        let mut chars = inner.char_indices().peekable();
        let mut end = None;
        loop {
            while chars
                .next_if(|(_, c)| *c == ',' || c.is_whitespace())
                .is_some()
            {}
            match chars.peek() {
                Some((i, '}')) => {
                    end = Some(*i);
                    break;
                }
                None => break,
                _ => {}
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return None;
            }
            let mut value = String::new();
            let mut closed = false;
            while let Some((_, c)) = chars.next() {
                match c {
                    '"' => {
                        closed = true;
                        break;
                    }
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    c => value.push(c),
                }
            }
            if !closed {
                return None;
            }
            labels.push((key.trim().to_string(), value));
        }
        rest = &inner[end? + 1..];
    }
    // A value, then an optional timestamp.
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(MetricLine {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Every series of `pact_txn_records`, summed per `kind` (over groups);
/// empty when the page has none.
pub fn txn_records(lines: &[MetricLine]) -> BTreeMap<String, f64> {
    let mut by_kind = BTreeMap::new();
    for l in lines.iter().filter(|l| l.name == TXN_RECORDS) {
        let kind = l
            .labels
            .iter()
            .find(|(k, _)| k == "kind")
            .map_or("all", |(_, v)| v.as_str());
        *by_kind.entry(kind.to_string()).or_insert(0.0) += l.value;
    }
    by_kind
}

fn gauge(lines: &[MetricLine], name: &str) -> Option<f64> {
    lines.iter().find(|l| l.name == name).map(|l| l.value)
}

/// Bytes allocated to the files under `dir` (as `du`), skipping what
/// vanishes during the walk (compaction deletes files all the time).
pub fn disk_usage(dir: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    let mut seen_root = false;
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        seen_root = true;
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.blocks() * 512;
            }
        }
    }
    seen_root.then_some(total)
}

/// The least-squares slope of `points` (`None` with fewer than two
/// distinct x values).
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

async fn scrape(addr: &str) -> Option<String> {
    let get = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: pact\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut page = Vec::new();
        s.read_to_end(&mut page).await.ok()?;
        let page = String::from_utf8_lossy(&page).into_owned();
        let (head, body) = page.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200").then(|| body.to_string())
    };
    tokio::time::timeout(SCRAPE_TIMEOUT, get).await.ok()?
}

async fn sample_one(t: &Target, pid: Option<u32>, t_s: f64) -> Sample {
    let dir = t.data_dir.clone();
    let (rss_bytes, disk_bytes) = tokio::task::spawn_blocking(move || {
        let rss = pid.and_then(|p| {
            let f = std::fs::File::open(format!("/proc/{p}/status")).ok()?;
            parse_status_rss(std::io::BufReader::new(f))
        });
        (rss, disk_usage(&dir))
    })
    .await
    .unwrap_or((None, None));
    let lines = match (&t.metrics, pid) {
        (Some(addr), Some(_)) => scrape(addr)
            .await
            .map(|p| parse_metrics(&p))
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    Sample {
        t_s,
        process: t.name.clone(),
        pid,
        rss_bytes,
        heap_bytes: gauge(&lines, HEAP).map(|v| v as u64),
        storage_bytes: STORAGE
            .iter()
            .map(|g| gauge(&lines, g))
            .sum::<Option<f64>>()
            .map(|v| v as u64),
        disk_bytes,
        records: txn_records(&lines),
    }
}

/// A running sampler; [`Sampler::finish`] stops it and returns what it
/// collected.
pub struct Sampler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Vec<Sample>>,
}

impl Sampler {
    /// Sample `targets` now and every `every` until finished; times are
    /// seconds since `t0`.
    pub fn start(targets: Vec<Target>, pids: PidTable, t0: Instant, every: Duration) -> Sampler {
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut out = Vec::new();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tick.tick() => {}
                }
                let t_s = t0.elapsed().as_secs_f64();
                for t in &targets {
                    let pid = pids.lock().ok().and_then(|p| p.get(&t.id).copied());
                    out.push(sample_one(t, pid, t_s).await);
                }
            }
            out
        });
        Sampler { stop, task }
    }

    pub async fn finish(self) -> Vec<Sample> {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

/// Every record kind seen in `samples`, sorted.
fn kinds(samples: &[Sample]) -> Vec<String> {
    let set: BTreeSet<&String> = samples.iter().flat_map(|s| s.records.keys()).collect();
    set.into_iter().cloned().collect()
}

const RECORDS_PREFIX: &str = "records_";

/// `samples` as CSV: `t_s,process,pid,rss_bytes,heap_bytes,storage_bytes,disk_bytes`,
/// then `records_<kind>` for every kind seen; empty cells where unknown.
pub fn to_csv(samples: &[Sample]) -> Result<String, csv::Error> {
    let kinds = kinds(samples);
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<String> = [
        "t_s",
        "process",
        "pid",
        "rss_bytes",
        "heap_bytes",
        "storage_bytes",
        "disk_bytes",
    ]
    .map(String::from)
    .to_vec();
    header.extend(kinds.iter().map(|k| format!("{RECORDS_PREFIX}{k}")));
    w.write_record(&header)?;
    let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
    for s in samples {
        let mut row = vec![
            format!("{:.3}", s.t_s),
            s.process.clone(),
            s.pid.map(|p| p.to_string()).unwrap_or_default(),
            opt(s.rss_bytes),
            opt(s.heap_bytes),
            opt(s.storage_bytes),
            opt(s.disk_bytes),
        ];
        row.extend(
            kinds
                .iter()
                .map(|k| s.records.get(k).map(|v| v.to_string()).unwrap_or_default()),
        );
        w.write_record(&row)?;
    }
    let bytes = w.into_inner().map_err(|e| e.into_error())?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Read back what [`to_csv`] wrote.
pub fn from_csv(text: &str) -> Result<Vec<Sample>, String> {
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let header = r.headers().map_err(|e| e.to_string())?.clone();
    let fixed = [
        "t_s",
        "process",
        "pid",
        "rss_bytes",
        "heap_bytes",
        "storage_bytes",
        "disk_bytes",
    ];
    if header.len() < fixed.len() || header.iter().zip(fixed).any(|(h, f)| h != f) {
        return Err(format!("not a soak CSV header: {header:?}"));
    }
    let kinds: Vec<String> = header
        .iter()
        .skip(fixed.len())
        .map(|h| {
            h.strip_prefix(RECORDS_PREFIX)
                .map(str::to_string)
                .ok_or_else(|| format!("unexpected column {h:?}"))
        })
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for (line, row) in r.records().enumerate() {
        let row = row.map_err(|e| e.to_string())?;
        let bad = |what: &str| format!("row {}: bad {what}", line + 1);
        let num = |i: usize| -> Result<Option<u64>, String> {
            let v = row.get(i).unwrap_or("");
            if v.is_empty() {
                return Ok(None);
            }
            v.parse().map(Some).map_err(|_| bad(fixed[i]))
        };
        let mut records = BTreeMap::new();
        for (j, k) in kinds.iter().enumerate() {
            let v = row.get(fixed.len() + j).unwrap_or("");
            if !v.is_empty() {
                records.insert(k.clone(), v.parse().map_err(|_| bad(k))?);
            }
        }
        out.push(Sample {
            t_s: row.get(0).unwrap_or("").parse().map_err(|_| bad("t_s"))?,
            process: row.get(1).unwrap_or("").to_string(),
            pid: num(2)?.map(|p| p as u32),
            rss_bytes: num(3)?,
            heap_bytes: num(4)?,
            storage_bytes: num(5)?,
            disk_bytes: num(6)?,
            records,
        });
    }
    Ok(out)
}

/// One process's memory over the run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProcessMemory {
    pub process: String,
    pub start_rss: u64,
    pub end_rss: u64,
    pub max_rss: u64,
    /// Growth of RSS over the second half of the run, in KB per minute
    /// (least squares), taken over the process's last run only (a restart
    /// starts its memory over); `None` with fewer than two samples.
    pub slope_kb_per_min: Option<f64>,
    /// Where that slope starts: the middle of the run, or the last
    /// restart if later.
    pub slope_from_s: f64,
    /// The same slope for jemalloc's heap, and for the heap less fjall's
    /// cache and memtables (which fill up to configured bounds): the
    /// memory Pact itself holds.
    pub heap_slope_kb_per_min: Option<f64>,
    pub live_slope_kb_per_min: Option<f64>,
    /// The heap at the end of the run, all of it and without fjall's
    /// cache and memtables.
    pub end_heap: Option<u64>,
    pub end_live: Option<u64>,
    /// Times the process was seen under a new pid.
    pub restarts: usize,
    pub start_disk: u64,
    pub end_disk: u64,
    pub max_disk: u64,
}

/// What a soak run's samples show.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    pub samples: usize,
    pub every_s: f64,
    pub processes: Vec<ProcessMemory>,
    /// Per kind: the records of all processes together at the first and
    /// the last sample, and the most at any sample; empty when the servers
    /// do not export `pact_txn_records`.
    pub records: BTreeMap<String, (f64, f64, f64)>,
}

/// Samples in time order by process (in order of first appearance).
fn by_process(samples: &[Sample]) -> Vec<(String, Vec<&Sample>)> {
    let mut out: Vec<(String, Vec<&Sample>)> = Vec::new();
    for s in samples {
        match out.iter_mut().find(|(p, _)| *p == s.process) {
            Some((_, v)) => v.push(s),
            None => out.push((s.process.clone(), vec![s])),
        }
    }
    out
}

pub fn summarize(samples: &[Sample], every: Duration) -> Summary {
    let t_first = samples.iter().map(|s| s.t_s).fold(f64::MAX, f64::min);
    let t_last = samples.iter().map(|s| s.t_s).fold(f64::MIN, f64::max);
    let mid = (t_first + t_last) / 2.0;
    let mut processes = Vec::new();
    for (process, ss) in by_process(samples) {
        let rss: Vec<(f64, u64, Option<u32>)> = ss
            .iter()
            .filter_map(|s| s.rss_bytes.map(|r| (s.t_s, r, s.pid)))
            .collect();
        let disk: Vec<u64> = ss.iter().filter_map(|s| s.disk_bytes).collect();
        let mut restarts = 0;
        let mut last_pid = None;
        for s in &ss {
            if let Some(p) = s.pid {
                if last_pid.is_some_and(|l| l != p) {
                    restarts += 1;
                }
                last_pid = Some(p);
            }
        }
        let last_run_from = rss
            .iter()
            .filter(|(_, _, p)| *p == last_pid)
            .map(|(t, _, _)| *t)
            .fold(t_last, f64::min);
        let slope_from_s = mid.max(last_run_from);
        // KB/min of `value` over the last run's samples from `slope_from_s`.
        let tail_slope = |value: fn(&Sample) -> Option<u64>| {
            let points: Vec<(f64, f64)> = ss
                .iter()
                .filter(|s| s.t_s >= slope_from_s && s.pid == last_pid)
                .filter_map(|s| Some((s.t_s / 60.0, value(s)? as f64 / 1024.0)))
                .collect();
            slope(&points)
        };
        processes.push(ProcessMemory {
            process,
            start_rss: rss.first().map_or(0, |r| r.1),
            end_rss: rss.last().map_or(0, |r| r.1),
            max_rss: rss.iter().map(|r| r.1).max().unwrap_or(0),
            slope_kb_per_min: tail_slope(|s| s.rss_bytes),
            slope_from_s,
            heap_slope_kb_per_min: tail_slope(|s| s.heap_bytes),
            live_slope_kb_per_min: tail_slope(Sample::live_bytes),
            end_heap: ss.iter().rev().find_map(|s| s.heap_bytes),
            end_live: ss.iter().rev().find_map(|s| s.live_bytes()),
            restarts,
            start_disk: disk.first().copied().unwrap_or(0),
            end_disk: disk.last().copied().unwrap_or(0),
            max_disk: disk.iter().copied().max().unwrap_or(0),
        });
    }
    let mut totals: BTreeMap<String, BTreeMap<u64, f64>> = BTreeMap::new();
    for s in samples {
        for (k, v) in &s.records {
            // Samples of one round share their time to the millisecond.
            *totals
                .entry(k.clone())
                .or_default()
                .entry((s.t_s * 1000.0) as u64)
                .or_insert(0.0) += v;
        }
    }
    let records = totals
        .into_iter()
        .map(|(k, by_t)| {
            let first = by_t.values().next().copied().unwrap_or(0.0);
            let last = by_t.values().last().copied().unwrap_or(0.0);
            let max = by_t.values().copied().fold(0.0, f64::max);
            (k, (first, last, max))
        })
        .collect();
    let rounds: BTreeSet<u64> = samples.iter().map(|s| (s.t_s * 1000.0) as u64).collect();
    Summary {
        samples: rounds.len(),
        every_s: every.as_secs_f64(),
        processes,
        records,
    }
}

const MIB: f64 = 1024.0 * 1024.0;

impl Summary {
    /// Lines for the run's log and `soak.txt`.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!(
            "{} samples, every {:.0} s; RSS in MiB, growth over the second half of each process's run",
            self.samples, self.every_s
        )];
        for p in &self.processes {
            let kb = |v: Option<f64>| v.map_or("n/a".to_string(), |s| format!("{s:+.1} KB/min"));
            let mib =
                |v: Option<u64>| v.map_or("n/a".to_string(), |b| format!("{:.1}", b as f64 / MIB));
            let slope = kb(p.slope_kb_per_min);
            out.push(format!(
                "  {}: RSS start {:.1} end {:.1} max {:.1}; growth {slope} (from {:.0} s){}; disk start {:.1} end {:.1} max {:.1} MiB",
                p.process,
                p.start_rss as f64 / MIB,
                p.end_rss as f64 / MIB,
                p.max_rss as f64 / MIB,
                p.slope_from_s,
                if p.restarts > 0 {
                    format!(", {} restarts", p.restarts)
                } else {
                    String::new()
                },
                p.start_disk as f64 / MIB,
                p.end_disk as f64 / MIB,
                p.max_disk as f64 / MIB,
            ));
            out.push(format!(
                "    heap end {} MiB, growth {}; without fjall's cache and memtables end {} MiB, growth {}",
                mib(p.end_heap),
                kb(p.heap_slope_kb_per_min),
                mib(p.end_live),
                kb(p.live_slope_kb_per_min),
            ));
        }
        if self.records.is_empty() {
            out.push(format!(
                "  transaction records: the servers do not export {TXN_RECORDS}"
            ));
        }
        for (k, (first, last, max)) in &self.records {
            out.push(format!(
                "  {TXN_RECORDS}{{kind={k:?}}}, all processes: start {first:.0} end {last:.0} max {max:.0}"
            ));
        }
        out
    }
}

/// Runs of `value` per process, split where the value is missing and, with
/// `per_run`, where the process changed pid (its memory starts over; its
/// data directory and stored records do not).
fn runs(samples: &[Sample], per_run: bool, value: impl Fn(&Sample) -> Option<f64>) -> Vec<Series> {
    by_process(samples)
        .into_iter()
        .map(|(name, ss)| {
            let mut runs: Vec<Vec<(f64, f64)>> = Vec::new();
            let mut last_pid = None;
            let mut broken = true;
            for s in ss {
                match value(s) {
                    Some(v) => {
                        if broken || (per_run && s.pid != last_pid) {
                            runs.push(Vec::new());
                        }
                        if let Some(r) = runs.last_mut() {
                            r.push((s.t_s, v));
                        }
                        broken = false;
                        last_pid = s.pid;
                    }
                    None => broken = true,
                }
            }
            Series { name, runs }
        })
        .collect()
}

/// Draw `memory.png`, `disk.png` and (when any record counts were seen)
/// `records.png` into `dir`.
pub fn plots(
    dir: &Path,
    title: &str,
    samples: &[Sample],
    faults: &[Interval],
) -> Result<Vec<PathBuf>, String> {
    let mut written = Vec::new();
    let memory = runs(samples, true, |s| s.rss_bytes.map(|b| b as f64 / MIB));
    let path = dir.join("memory.png");
    plot::series(
        &path,
        &format!("{title}: resident memory per process"),
        "RSS (MiB)",
        &memory,
        faults,
    )?;
    written.push(path);
    let mut heap = runs(samples, true, |s| s.heap_bytes.map(|b| b as f64 / MIB));
    for mut l in runs(samples, true, |s| s.live_bytes().map(|b| b as f64 / MIB)) {
        if l.runs.iter().any(|r| !r.is_empty()) {
            l.name = format!("{} less fjall cache", l.name);
            heap.push(l);
        }
    }
    if heap.iter().any(|h| h.runs.iter().any(|r| !r.is_empty())) {
        let path = dir.join("heap.png");
        plot::series(
            &path,
            &format!(
                "{title}: jemalloc heap per process, with and without fjall's cache and memtables"
            ),
            "heap (MiB)",
            &heap,
            faults,
        )?;
        written.push(path);
    }
    let disk = runs(samples, false, |s| s.disk_bytes.map(|b| b as f64 / MIB));
    let path = dir.join("disk.png");
    plot::series(
        &path,
        &format!("{title}: data directory size per process"),
        "disk used (MiB)",
        &disk,
        faults,
    )?;
    written.push(path);
    let kinds = kinds(samples);
    if !kinds.is_empty() {
        let mut records = Vec::new();
        for k in &kinds {
            for mut s in runs(samples, false, |s| s.records.get(k).copied()) {
                if s.runs.iter().any(|r| !r.is_empty()) {
                    s.name = format!("{} {k}", s.name);
                    records.push(s);
                }
            }
        }
        let path = dir.join("records.png");
        plot::series(
            &path,
            &format!("{title}: transaction records ({TXN_RECORDS}) per process"),
            "records",
            &records,
            faults,
        )?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/proc/PID/status` of a `pact` server, as Linux writes it.
    const STATUS: &str = "Name:\tpact
Umask:\t0022
State:\tS (sleeping)
Tgid:\t4242
Ngid:\t0
Pid:\t4242
PPid:\t4200
TracerPid:\t0
Uid:\t0\t0\t0\t0
Gid:\t0\t0\t0\t0
FDSize:\t128
Groups:\t0
NStgid:\t4242
NSpid:\t4242
NSpgid:\t4200
NSsid:\t4100
VmPeak:\t  912344 kB
VmSize:\t  901232 kB
VmLck:\t       0 kB
VmPin:\t       0 kB
VmHWM:\t   61220 kB
VmRSS:\t   58344 kB
RssAnon:\t   41200 kB
RssFile:\t   17144 kB
RssShmem:\t       0 kB
VmData:\t  160012 kB
VmStk:\t     132 kB
VmExe:\t   21480 kB
VmLib:\t    3100 kB
VmPTE:\t     260 kB
VmSwap:\t       0 kB
HugetlbPages:\t       0 kB
CoreDumping:\t0
THP_enabled:\t1
Threads:\t9
SigQ:\t0/95000
SigPnd:\t0000000000000000
ShdPnd:\t0000000000000000
SigBlk:\t0000000000000000
SigIgn:\t0000000000001000
SigCgt:\t0000000100004440
CapInh:\t0000000000000000
CapPrm:\t000001ffffffffff
CapEff:\t000001ffffffffff
CapBnd:\t000001ffffffffff
CapAmb:\t0000000000000000
NoNewPrivs:\t0
Seccomp:\t0
Seccomp_filters:\t0
Speculation_Store_Bypass:\tthread vulnerable
Cpus_allowed:\t3
Cpus_allowed_list:\t0-1
Mems_allowed:\t00000000,00000001
Mems_allowed_list:\t0
voluntary_ctxt_switches:\t1520
nonvoluntary_ctxt_switches:\t33
";

    #[test]
    fn rss_comes_from_vmrss_in_bytes() {
        assert_eq!(parse_status_rss(STATUS.as_bytes()), Some(58344 * 1024));
        // A zombie has no memory lines at all.
        let zombie: String = STATUS
            .lines()
            .filter(|l| !l.starts_with("Vm") && !l.starts_with("Rss"))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            .replace("S (sleeping)", "Z (zombie)");
        assert_eq!(parse_status_rss(zombie.as_bytes()), None);
        assert_eq!(parse_status_rss("garbage".as_bytes()), None);
        // And this process's own status parses the same way.
        let own = std::fs::File::open("/proc/self/status").expect("own status");
        let rss = parse_status_rss(std::io::BufReader::new(own)).expect("own RSS");
        assert!(rss > 1024 * 1024, "{rss}");
    }

    const PAGE: &str = r#"# HELP pact_process_resident_memory_bytes resident memory (RSS)
# TYPE pact_process_resident_memory_bytes gauge
pact_process_resident_memory_bytes 6.1e7
# HELP pact_heap_allocated_bytes heap
# TYPE pact_heap_allocated_bytes gauge
pact_heap_allocated_bytes 25165824
# TYPE pact_txn_records gauge
pact_txn_records{group="1",kind="outcome"} 120
pact_txn_records{group="2",kind="outcome"} 30
pact_txn_records{kind="prepare",group="1"} 4
pact_txn_records{group="7",kind="decision",note="a \"quoted\", {braced} value"} 2 1700000000000
pact_txn_records_other{kind="outcome"} 999
pact_raft_term{group="1"} 3
"#;

    #[test]
    fn metrics_page_sums_txn_records_per_kind() {
        let lines = parse_metrics(PAGE);
        assert_eq!(lines.len(), 8, "{lines:?}");
        assert_eq!(gauge(&lines, HEAP), Some(25165824.0));
        assert_eq!(
            gauge(&lines, "pact_process_resident_memory_bytes"),
            Some(6.1e7)
        );
        let d = &lines[5];
        assert_eq!(d.labels[2].1, "a \"quoted\", {braced} value");
        let r = txn_records(&lines);
        assert_eq!(
            r,
            BTreeMap::from([
                ("decision".to_string(), 2.0),
                ("outcome".to_string(), 150.0),
                ("prepare".to_string(), 4.0),
            ])
        );
        // Servers without the gauge: nothing, not zeros.
        assert!(txn_records(&parse_metrics("pact_raft_term{group=\"1\"} 3\n")).is_empty());
        assert!(parse_metric_line("pact_x{kind=\"unclosed} 3").is_none());
        assert!(parse_metric_line("pact_x not-a-number").is_none());
    }

    fn samples() -> Vec<Sample> {
        let mut out = Vec::new();
        for i in 0..10u64 {
            let t_s = 10.0 * i as f64 + 0.25;
            out.push(Sample {
                t_s,
                process: "node-1 participant".into(),
                pid: Some(if i < 3 { 100 } else { 200 }),
                rss_bytes: (i != 2).then_some(50 * 1024 * 1024 + i * 4096),
                heap_bytes: Some(20 << 20),
                storage_bytes: Some((4 << 20) + i * 1024),
                disk_bytes: Some(1 << 20),
                records: BTreeMap::from([("outcome".into(), i as f64)]),
            });
            out.push(Sample {
                t_s,
                process: "node-4 coordinator".into(),
                pid: Some(300),
                rss_bytes: Some(30 << 20),
                heap_bytes: None,
                storage_bytes: None,
                disk_bytes: None,
                records: BTreeMap::from([("decision".into(), 1.0), ("outcome".into(), 2.0)]),
            });
        }
        out
    }

    #[test]
    fn csv_round_trips_with_record_kinds_as_columns() {
        let s = samples();
        let text = to_csv(&s).expect("csv");
        assert!(text.starts_with(
            "t_s,process,pid,rss_bytes,heap_bytes,storage_bytes,disk_bytes,records_decision,records_outcome\n"
        ));
        assert_eq!(from_csv(&text).expect("parse"), s);
        // No record kinds at all: no record columns.
        let bare: Vec<Sample> = s
            .iter()
            .cloned()
            .map(|mut x| {
                x.records.clear();
                x
            })
            .collect();
        let text = to_csv(&bare).unwrap();
        assert!(text.starts_with("t_s,process,pid,rss_bytes,heap_bytes,storage_bytes,disk_bytes\n"));
        assert_eq!(from_csv(&text).unwrap(), bare);
        assert!(from_csv("a,b\n1,2\n").is_err());
        assert!(from_csv(
            "t_s,process,pid,rss_bytes,heap_bytes,storage_bytes,disk_bytes\nx,p,1,2,3,4,5\n"
        )
        .is_err());
    }

    #[test]
    fn slope_is_least_squares() {
        assert_eq!(slope(&[]), None);
        assert_eq!(slope(&[(1.0, 5.0)]), None);
        assert_eq!(slope(&[(2.0, 1.0), (2.0, 3.0)]), None);
        let line: Vec<(f64, f64)> = (0..10).map(|x| (x as f64, 3.0 * x as f64 + 7.0)).collect();
        assert!((slope(&line).unwrap() - 3.0).abs() < 1e-9);
        // Noise around a flat line averages out.
        let flat = [
            (0.0, 10.0),
            (1.0, 12.0),
            (2.0, 8.0),
            (3.0, 12.0),
            (4.0, 8.0),
        ];
        assert!((slope(&flat).unwrap() + 0.4).abs() < 1e-9);
    }

    #[test]
    fn summary_measures_growth_over_the_last_run_of_the_second_half() {
        let sum = summarize(&samples(), Duration::from_secs(10));
        assert_eq!(sum.samples, 10);
        let p = &sum.processes[0];
        assert_eq!(p.process, "node-1 participant");
        assert_eq!(p.restarts, 1);
        assert_eq!(p.start_rss, 50 * 1024 * 1024);
        assert_eq!(p.end_rss, 50 * 1024 * 1024 + 9 * 4096);
        assert_eq!(p.max_rss, p.end_rss);
        // 4 KiB per 10 s sample = 24 KB/min, from the middle (45.25 s).
        assert!((p.slope_kb_per_min.unwrap() - 24.0).abs() < 1e-6, "{p:?}");
        assert!((p.slope_from_s - 45.25).abs() < 1e-9);
        // A flat heap whose fjall part grows 1 KiB per sample: what Pact
        // holds itself shrinks at 6 KB/min.
        assert_eq!(p.heap_slope_kb_per_min, Some(0.0));
        assert!(
            (p.live_slope_kb_per_min.unwrap() + 6.0).abs() < 1e-6,
            "{p:?}"
        );
        assert_eq!(p.end_live, Some((16 << 20) - 9 * 1024));
        let c = &sum.processes[1];
        assert_eq!((c.heap_slope_kb_per_min, c.end_live), (None, None));
        assert_eq!(c.slope_kb_per_min, Some(0.0));
        assert_eq!((c.start_disk, c.max_disk), (0, 0));
        assert_eq!(sum.records["outcome"], (2.0, 11.0, 11.0));
        assert_eq!(sum.records["decision"], (1.0, 1.0, 1.0));
        assert!(sum.lines().iter().any(|l| l.contains("+24.0 KB/min")));
        assert!(sum.lines().iter().any(|l| l.contains("growth -6.0 KB/min")));
    }

    #[test]
    fn lines_break_at_gaps_and_memory_lines_at_restarts() {
        let s = samples();
        let memory = runs(&s, true, |s| s.rss_bytes.map(|b| b as f64));
        let lens: Vec<usize> = memory[0].runs.iter().map(Vec::len).collect();
        // Two samples of pid 100, a gap, seven of pid 200.
        assert_eq!(lens, [2, 7]);
        let disk = runs(&s, false, |s| s.disk_bytes.map(|b| b as f64));
        assert_eq!(disk[0].runs.len(), 1, "the restart does not break it");
        assert!(disk[1].runs.is_empty(), "never measured");
        let split = runs(&s, true, |s| s.disk_bytes.map(|b| b as f64));
        assert_eq!(split[0].runs.len(), 2);
    }

    #[test]
    fn disk_usage_walks_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/f"), vec![1u8; 100_000]).unwrap();
        std::fs::write(dir.path().join("g"), vec![1u8; 50_000]).unwrap();
        let used = disk_usage(dir.path()).expect("exists");
        assert!((150_000..=170_000).contains(&used), "{used}");
        assert_eq!(disk_usage(&dir.path().join("missing")), None);
    }

    #[test]
    fn plots_draw_memory_disk_and_records_only_when_present() {
        let dir = tempfile::tempdir().unwrap();
        let written = plots(dir.path(), "soak-test", &samples(), &[]).expect("plots");
        let names: Vec<_> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["memory.png", "heap.png", "disk.png", "records.png"]);
        if let Ok(keep) = std::env::var("PACT_PLOT_KEEP") {
            for (p, name) in written.iter().zip(&names) {
                std::fs::copy(p, Path::new(&keep).join(name)).expect("copy plot");
            }
        }
        for p in &written {
            let img = image::open(p).expect("a PNG").to_rgb8();
            assert_eq!(img.dimensions(), (plot::WIDTH, plot::HEIGHT));
            // The first series' colour is drawn.
            let blue = img.pixels().filter(|p| p.0 == [31, 119, 180]).count();
            assert!(blue > 50, "{p:?}: {blue}");
        }
        let bare: Vec<Sample> = samples()
            .into_iter()
            .map(|mut s| {
                s.records.clear();
                s
            })
            .collect();
        let other = tempfile::tempdir().unwrap();
        let written = plots(other.path(), "soak-test", &bare, &[]).unwrap();
        assert_eq!(written.len(), 3, "memory, heap, disk");
        assert!(!other.path().join("records.png").exists());
    }
}
