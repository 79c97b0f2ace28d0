//! Prometheus-style metrics shared by every server: an HTTP endpoint that
//! serves a registry in the text exposition format, and per-group Raft
//! gauges (role, term, applied index, apply lag) refreshed at each scrape.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus::proto::MetricFamily;
use prometheus::{Encoder, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Replica;

/// Raft gauges for the groups of one process.
#[derive(Clone)]
pub struct RaftGauges {
    term: IntGaugeVec,
    leader: IntGaugeVec,
    applied: IntGaugeVec,
    apply_lag: IntGaugeVec,
    rss: IntGauge,
    heap_allocated: IntGauge,
    heap_resident: IntGauge,
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
        let rss = IntGauge::new(
            "pact_process_resident_memory_bytes",
            "Resident memory of this process (RSS)",
        )?;
        registry.register(Box::new(rss.clone()))?;
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
        Ok(RaftGauges {
            rss,
            heap_allocated,
            heap_resident,
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
        if let Some(b) = resident_bytes() {
            self.rss.set(i64::try_from(b).unwrap_or(i64::MAX));
        }
        if let Some((allocated, resident)) = heap_stats() {
            self.heap_allocated
                .set(i64::try_from(allocated).unwrap_or(i64::MAX));
            self.heap_resident
                .set(i64::try_from(resident).unwrap_or(i64::MAX));
        }
        for r in replicas {
            let s = r.status();
            let g = s.group.to_string();
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

/// Serve `registry` plus Raft gauges of `replicas` at `addr`.
pub async fn serve_with_raft_gauges(
    addr: SocketAddr,
    registry: Registry,
    replicas: Vec<Replica>,
) -> std::io::Result<()> {
    let gauges = RaftGauges::new(&registry).map_err(std::io::Error::other)?;
    serve(addr, registry, Arc::new(move || gauges.refresh(&replicas))).await
}

/// Serve several registries as one page, plus Raft gauges of `replicas`:
/// a `pact` server's participant and coordinator metrics, and every group
/// it hosts.
pub async fn serve_all_with_raft_gauges(
    addr: SocketAddr,
    registries: Vec<Registry>,
    replicas: Vec<Replica>,
) -> std::io::Result<()> {
    let raft = Registry::new();
    let gauges = RaftGauges::new(&raft).map_err(std::io::Error::other)?;
    let mut all = registries;
    all.push(raft);
    serve_families(
        addr,
        Arc::new(move || {
            gauges.refresh(&replicas);
            gather_all(&all)
        }),
    )
    .await
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

/// Serve `registry` at `http://addr/metrics` (any path answers) until the
/// process ends. `refresh` runs before each scrape.
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    refresh: Arc<dyn Fn() + Send + Sync>,
) -> std::io::Result<()> {
    serve_families(
        addr,
        Arc::new(move || {
            refresh();
            registry.gather()
        }),
    )
    .await
}

/// Serve what `gather` returns at each scrape, as [`serve`] does.
async fn serve_families(
    addr: SocketAddr,
    gather: Arc<dyn Fn() -> Vec<MetricFamily> + Send + Sync>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let gather = gather.clone();
            tokio::spawn(async move {
                // Read the request head (bounded); its content does not matter.
                let mut buf = [0u8; 2048];
                let _ =
                    tokio::time::timeout(std::time::Duration::from_secs(2), sock.read(&mut buf))
                        .await;
                let families = gather();
                let mut body = Vec::new();
                let enc = TextEncoder::new();
                let _ = enc.encode(&families, &mut body);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    enc.format_type(),
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(&body).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn resident_memory_grows_with_touched_pages() {
        let before = resident_bytes().expect("procfs on Linux");
        // 64 MiB written (not just reserved) is resident.
        let big = std::hint::black_box(vec![1u8; 64 << 20]);
        let after = resident_bytes().unwrap();
        assert!(after >= before + (48 << 20), "{before} -> {after}");
        drop(big);
    }
}
