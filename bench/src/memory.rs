//! `--watch-rss`: the resident memory of the server processes over a run.
//!
//! A memory leak shows as RSS that keeps rising with the work done, so the
//! sampler records, once a second, every watched process's RSS next to the
//! operations completed so far. The report gives each process's RSS at the
//! start, at the end and at its peak, and its growth per 1,000 operations
//! fitted over the second half of the run: warm-up (caches and buffers
//! filling) is in the first half, and a process with bounded memory
//! shows a slope near zero in the second.
//!
//! Processes are found by name in `/proc` (Linux only), so the watched
//! servers must run on this machine, as the playground's do.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::json;

/// One watched process: `name` (its `comm`), pid, and its node id if its
/// command line has `--node-id N`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Proc {
    pub name: String,
    pub node: Option<String>,
    pub pid: u32,
}

impl Proc {
    pub fn label(&self) -> String {
        match &self.node {
            Some(n) => format!("{} node {n} (pid {})", self.name, self.pid),
            None => format!("{} (pid {})", self.name, self.pid),
        }
    }
}

/// The running processes whose name is one of `names`, sorted.
pub fn find(proc_root: &Path, names: &[String]) -> Vec<Proc> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(proc_root) else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(e.path().join("comm")) else {
            continue;
        };
        let name = comm.trim();
        if !names.iter().any(|n| n == name) {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let node = args
            .iter()
            .position(|a| a == "--node-id")
            .and_then(|i| args.get(i + 1).cloned());
        out.push(Proc {
            name: name.to_string(),
            node,
            pid,
        });
    }
    out.sort();
    out
}

/// RSS of `pid` in bytes, or None once it has exited.
pub fn rss(pid: u32) -> Option<u64> {
    pact_common::process::rss_bytes(Some(pid))
}

/// Samples of one process: (operations completed, RSS bytes).
#[derive(Debug, Default, Clone)]
pub struct Series {
    pub samples: Vec<(u64, u64)>,
}

impl Series {
    pub fn first(&self) -> Option<u64> {
        self.samples.first().map(|s| s.1)
    }
    pub fn last(&self) -> Option<u64> {
        self.samples.last().map(|s| s.1)
    }
    pub fn max(&self) -> Option<u64> {
        self.samples.iter().map(|s| s.1).max()
    }

    /// Least-squares slope of RSS against operations over the second half
    /// of the samples, in bytes per operation (None with fewer than four
    /// samples there or no operations between them).
    pub fn growth_per_op(&self) -> Option<f64> {
        let tail = &self.samples[self.samples.len() / 2..];
        if tail.len() < 4 {
            return None;
        }
        let n = tail.len() as f64;
        let mx = tail.iter().map(|s| s.0 as f64).sum::<f64>() / n;
        let my = tail.iter().map(|s| s.1 as f64).sum::<f64>() / n;
        let sxx: f64 = tail.iter().map(|s| (s.0 as f64 - mx).powi(2)).sum();
        if sxx <= 0.0 {
            return None;
        }
        let sxy: f64 = tail
            .iter()
            .map(|s| (s.0 as f64 - mx) * (s.1 as f64 - my))
            .sum();
        Some(sxy / sxx)
    }
}

/// Everything sampled in one run.
#[derive(Debug, Default, Clone)]
pub struct MemoryReport {
    pub series: BTreeMap<Proc, Series>,
}

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / (1 << 20) as f64)
}

impl MemoryReport {
    pub fn record(&mut self, procs: &[Proc], ops: u64) {
        for p in procs {
            if let Some(r) = rss(p.pid) {
                self.series
                    .entry(p.clone())
                    .or_default()
                    .samples
                    .push((ops, r));
            }
        }
    }

    /// YCSB-style lines: `[MEMORY], participant node 1 (pid 7), ...`.
    pub fn text(&self) -> String {
        let mut out = String::new();
        if self.series.is_empty() {
            out.push_str("[MEMORY], no watched process was found\n");
        }
        for (p, s) in &self.series {
            let l = p.label();
            let opt = |v: Option<u64>| v.map_or("-".to_string(), mib);
            out.push_str(&format!(
                "[MEMORY], {l}, StartRSS(MiB), {}\n",
                opt(s.first())
            ));
            out.push_str(&format!("[MEMORY], {l}, EndRSS(MiB), {}\n", opt(s.last())));
            out.push_str(&format!("[MEMORY], {l}, PeakRSS(MiB), {}\n", opt(s.max())));
            out.push_str(&format!(
                "[MEMORY], {l}, SecondHalfGrowth(bytes/op), {}\n",
                s.growth_per_op()
                    .map_or("-".to_string(), |g| format!("{g:.1}"))
            ));
        }
        out
    }

    pub fn json(&self) -> serde_json::Value {
        let procs: Vec<serde_json::Value> = self
            .series
            .iter()
            .map(|(p, s)| {
                json!({
                    "name": p.name,
                    "node": p.node,
                    "pid": p.pid,
                    "start_rss_bytes": s.first(),
                    "end_rss_bytes": s.last(),
                    "peak_rss_bytes": s.max(),
                    "second_half_growth_bytes_per_op": s.growth_per_op(),
                    "samples": s.samples.iter().map(|(o, r)| json!([o, r])).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!(procs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(points: &[(u64, u64)]) -> Series {
        Series {
            samples: points.to_vec(),
        }
    }

    #[test]
    fn growth_is_fitted_over_the_second_half() {
        // Warm-up jump in the first half, then flat: no growth.
        let mut pts = vec![(0, 10_000), (100, 50_000), (200, 90_000), (300, 90_000)];
        pts.extend((4..8).map(|i| (i * 100, 90_000 + (i % 2) * 10)));
        let g = series(&pts).growth_per_op().unwrap();
        assert!(g.abs() < 1.0, "{g}");
        // A steady 3 KB per operation is found as such.
        let leak: Vec<(u64, u64)> = (0..10)
            .map(|i| (i * 1000, 40_000 + i * 3_000_000))
            .collect();
        let g = series(&leak).growth_per_op().unwrap();
        assert!((g - 3000.0).abs() < 1e-6, "{g}");
        assert_eq!(series(&leak).max(), Some(40_000 + 9 * 3_000_000));
        // Too few samples, or no work done, gives no figure.
        assert_eq!(series(&leak[..6]).growth_per_op(), None);
        assert_eq!(series(&[(5, 1); 10]).growth_per_op(), None);
    }

    #[test]
    fn finds_this_process_by_name_and_reads_its_rss() {
        let root = Path::new("/proc");
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        let me = std::process::id();
        let found = find(root, &[comm.trim().to_string()]);
        assert!(found.iter().any(|p| p.pid == me), "{found:?}");
        assert!(find(root, &["no-such-process-name".into()]).is_empty());
        assert!(rss(me).unwrap() > 1 << 20);
        let mut r = MemoryReport::default();
        r.record(&found, 0);
        assert!(r.text().contains(&format!("(pid {me}), StartRSS(MiB)")));
    }
}
