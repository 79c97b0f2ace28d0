//! What a server tells the outside about itself: an HTTP endpoint (axum)
//! with `/metrics` (Prometheus text), `/healthz` (the process answers) and
//! `/readyz` (every local replica can do its part, see
//! [`Replica::readiness`]), and the standard gRPC health service
//! (`grpc.health.v1.Health`) whose status follows the same readiness.
//!
//! One [`Endpoint`] per process gathers every registry the process has
//! (the participant's, the coordinator's, the process-wide one and the
//! Raft gauges) onto one page, so each name appears once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{Encoder, Registry, TextEncoder};
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};
use tonic_health::ServingStatus;

use crate::metrics::{gather_all, RaftGauges};

/// How often the gRPC health status is brought up to date.
const HEALTH_EVERY: Duration = Duration::from_millis(500);

/// Work done before each scrape: refreshing gauges that are read, not
/// counted (lock table size, open transactions).
pub type Refresh = Arc<dyn Fn() + Send + Sync>;

/// Registries of what a process runs now, asked at each scrape: a group
/// hosted at run time (a coordinator group's replica) brings its own.
pub type Registries = Arc<dyn Fn() -> Vec<Registry> + Send + Sync>;

/// A server's metrics and readiness; see the module doc.
#[derive(Clone)]
pub struct Endpoint {
    registries: Vec<Registry>,
    dynamic: Vec<Registries>,
    refresh: Vec<Refresh>,
    replicas: crate::Replicas,
    gauges: RaftGauges,
}

impl Endpoint {
    /// For a process hosting `replicas`: their Raft gauges and the
    /// process-wide metrics, so far.
    pub fn new(replicas: impl Into<crate::Replicas>) -> prometheus::Result<Endpoint> {
        let raft = Registry::new();
        let gauges = RaftGauges::new(&raft)?;
        let mut registries = vec![raft];
        registries.extend(crate::metrics::process().map(|m| m.registry.clone()));
        Ok(Endpoint {
            registries,
            dynamic: Vec::new(),
            refresh: Vec::new(),
            replicas: replicas.into(),
            gauges,
        })
    }

    /// Also serve `registry`.
    pub fn with_registry(mut self, registry: Registry) -> Self {
        self.registries.push(registry);
        self
    }

    /// Also serve the registries `f` returns at each scrape (after the
    /// [`Endpoint::on_scrape`] work; `f` may refresh what it returns).
    pub fn with_registries_from(
        mut self,
        f: impl Fn() -> Vec<Registry> + Send + Sync + 'static,
    ) -> Self {
        self.dynamic.push(Arc::new(f));
        self
    }

    /// Run `f` before each scrape.
    pub fn on_scrape(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.refresh.push(Arc::new(f));
        self
    }

    /// The page `/metrics` serves.
    pub fn render(&self) -> String {
        self.gauges.refresh(&self.replicas.list());
        for f in &self.refresh {
            f();
        }
        let mut body = Vec::new();
        // Encoding into a Vec fails only on a malformed family, which
        // registration already refuses.
        let mut all = self.registries.clone();
        for f in &self.dynamic {
            all.extend(f());
        }
        let _ = TextEncoder::new().encode(&gather_all(&all), &mut body);
        String::from_utf8_lossy(&body).into_owned()
    }

    /// Ok if every local replica is ready, else why not (one line per
    /// replica that is not).
    pub fn readiness(&self) -> Result<(), String> {
        let why: Vec<String> = self
            .replicas
            .list()
            .iter()
            .filter_map(|r| r.readiness().err())
            .collect();
        if why.is_empty() {
            Ok(())
        } else {
            Err(why.join("\n"))
        }
    }

    /// The HTTP routes, for [`Endpoint::serve`] (and tests).
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .fallback(not_found)
            .with_state(Arc::new(self.clone()))
    }

    /// Serve the HTTP endpoint on `addr` until the process ends; returns
    /// the bound address (`addr` may have port 0).
    pub async fn serve(&self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let app = self.router();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(addr = %bound, error = %e, "metrics endpoint stopped");
            }
        });
        Ok(bound)
    }

    /// The gRPC health service for this process's client port: the
    /// overall status ("") and each of `services` are SERVING while
    /// [`Endpoint::readiness`] holds and NOT_SERVING otherwise, checked
    /// every [`HEALTH_EVERY`] by a task that runs as long as the process.
    /// Returns once the first status is set, so nothing is reported
    /// SERVING before it was checked.
    pub async fn grpc_health(&self, services: &[&str]) -> HealthServer<HealthService> {
        let reporter = HealthReporter::new();
        let mut names = vec![String::new()];
        names.extend(services.iter().map(|s| s.to_string()));
        let mut last = self.readiness();
        set_health(&reporter, &names, &last).await;
        let me = self.clone();
        let watched = reporter.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEALTH_EVERY).await;
                let now = me.readiness();
                if now != last {
                    match &now {
                        Ok(()) => tracing::info!("ready: every local replica has a leader"),
                        Err(why) => tracing::warn!(reason = %why, "not ready"),
                    }
                    set_health(&watched, &names, &now).await;
                    last = now;
                }
            }
        });
        HealthServer::new(HealthService::from_health_reporter(reporter))
    }
}

async fn set_health(reporter: &HealthReporter, names: &[String], ready: &Result<(), String>) {
    let status = if ready.is_ok() {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    for n in names {
        reporter.set_service_status(n, status).await;
    }
}

const TEXT: &str = "text/plain; charset=utf-8";

async fn metrics(State(e): State<Arc<Endpoint>>) -> axum::response::Response {
    // Reading /proc and the replicas' state is quick but not async work.
    match tokio::task::spawn_blocking(move || e.render()).await {
        Ok(page) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], page).into_response(),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, TEXT)],
            format!("metrics unavailable: {err}\n"),
        )
            .into_response(),
    }
}

async fn healthz() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, TEXT)], "ok\n")
}

async fn readyz(State(e): State<Arc<Endpoint>>) -> impl IntoResponse {
    match e.readiness() {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, TEXT)],
            "ready\n".to_string(),
        ),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, TEXT)],
            format!("not ready:\n{why}\n"),
        ),
    }
}

async fn not_found() -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, TEXT)],
        "not found: try /metrics, /healthz or /readyz\n",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Applied, Apply, Host, Member, NodeStore, Peers, Replica, StateView, Tuning};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tonic_health::pb::health_check_response::ServingStatus;

    struct Nothing;

    impl Apply for Nothing {
        fn apply(
            &self,
            _s: &StateView<'_>,
            _index: u64,
            _term: u64,
            _command: &[u8],
        ) -> Result<Applied, String> {
            Ok(Applied {
                writes: Vec::new(),
                reply: Vec::new(),
            })
        }
    }

    fn tuning() -> Tuning {
        Tuning {
            heartbeat_ms: 50,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
            snapshot_logs: 5000,
            keep_logs: 1000,
            lease_reads: false,
            snapshot_bytes_per_sec: 0,
        }
    }

    /// Node 1's replica of `group`, whose replicas are nodes `ids`; the
    /// others' ports lead nowhere.
    async fn replica(dir: &std::path::Path, group: u64, ids: &[u64]) -> Replica {
        let host = Host::new(NodeStore::open(dir).unwrap(), Peers::new(None));
        let members = ids
            .iter()
            .map(|id| Member {
                id: *id,
                peer_addr: "127.0.0.1:9".into(),
                client_addr: format!("127.0.0.1:{}", 9 + id),
            })
            .collect();
        Replica::start(group, 1, members, &tuning(), Arc::new(Nothing), &host)
            .await
            .unwrap()
    }

    /// (status, body) of `GET path` over plain HTTP/1.1.
    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let status = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {out}"));
        let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        (status, body.to_string())
    }

    async fn grpc_status(addr: SocketAddr, service: &str) -> Result<i32, tonic::Status> {
        use tonic_health::pb::health_client::HealthClient;
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut c = HealthClient::new(ch);
        c.check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(|r| r.into_inner().status)
    }

    async fn serve_grpc(e: &Endpoint) -> SocketAddr {
        let health = e.grpc_health(&["pact.v1.Kv"]).await;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(l)),
        );
        addr
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn routes_answer_what_they_promise_and_readiness_follows_the_leader() {
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        // A group of three whose other replicas never answer: no leader.
        let lonely = replica(dirs[0].path(), 3, &[1, 2, 3]).await;
        let e = Endpoint::new(vec![lonely.clone()])
            .unwrap()
            .with_registry({
                let r = Registry::new();
                let c = prometheus::IntCounter::new("pact_test_scraped_total", "t").unwrap();
                r.register(Box::new(c.clone())).unwrap();
                c.inc();
                r
            })
            .on_scrape(|| {});
        let addr = e.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let (code, page) = get(addr, "/metrics").await;
        assert_eq!(code, 200, "{page}");
        for family in [
            "pact_test_scraped_total 1",
            "pact_raft_applied_index{group=\"3\"}",
            "# TYPE pact_process_resident_memory_bytes gauge",
            "# TYPE pact_storage_fsync_seconds histogram",
            "pact_raft_leader_changes_total{group=\"3\"}",
            "pact_build_info{",
        ] {
            assert!(page.contains(family), "{family}:\n{page}");
        }
        assert_eq!(get(addr, "/healthz").await, (200, "ok\n".into()));
        let (code, why) = get(addr, "/readyz").await;
        assert_eq!(code, 503, "{why}");
        assert!(why.contains("group 3: no known leader"), "{why}");
        let (code, body) = get(addr, "/nope").await;
        assert_eq!(code, 404, "{body}");
        let grpc = serve_grpc(&e).await;
        assert_eq!(
            grpc_status(grpc, "").await.unwrap(),
            ServingStatus::NotServing as i32
        );
        assert_eq!(
            grpc_status(grpc, "pact.v1.Kv").await.unwrap(),
            ServingStatus::NotServing as i32
        );
        // A service it does not serve is NOT_FOUND, per the protocol.
        assert_eq!(
            grpc_status(grpc, "no.Such").await.unwrap_err().code(),
            tonic::Code::NotFound
        );

        // A group of one elects itself: ready once it has.
        let alone = replica(dirs[1].path(), 5, &[1]).await;
        let e = Endpoint::new(vec![alone.clone()]).unwrap();
        let addr = e.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let grpc = serve_grpc(&e).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (code, body) = get(addr, "/readyz").await;
            if code == 200 {
                assert_eq!(body, "ready\n");
                break;
            }
            assert_eq!(code, 503, "{body}");
            assert!(
                tokio::time::Instant::now() < deadline,
                "never ready: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while grpc_status(grpc, "").await.unwrap() != ServingStatus::Serving as i32 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "gRPC health never SERVING"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (_, page) = get(addr, "/metrics").await;
        assert!(
            page.contains("pact_raft_is_leader{group=\"5\"} 1"),
            "{page}"
        );
        lonely.shutdown().await;
        alone.shutdown().await;
    }
}
