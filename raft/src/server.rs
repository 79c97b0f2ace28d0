//! Process plumbing shared by the server binaries (`pact`, participant
//! and coordinator): fault-injection arming, the shutdown signal, the gRPC
//! server's connection limits and request metrics, and who may call the
//! peer port ([`PeerAuth`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use pact_common::identity::node_of_certificate;
use pact_common::{ClusterConfig, NodeId};

/// Most concurrent HTTP/2 streams (requests) one connection may have open;
/// a client that opens more has them refused. A node's peers multiplex
/// every group's Raft traffic over one connection, which needs a handful of
/// streams per group; a client needs one per request in flight.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;

/// The server pings a connection after this long without a frame from it,
/// and closes it if the ping goes unanswered for [`KEEPALIVE_TIMEOUT`]: a
/// dead or half-open peer does not hold a connection (and its streams'
/// buffers) forever.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// TCP keepalive on accepted sockets: the kernel finds a peer that
/// vanished (no FIN, no RST) even if HTTP/2 never got going on it.
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const TCP_KEEPALIVE_RETRIES: u32 = 3;

/// A connection that has not finished its TLS handshake by then is
/// dropped: one that connects and stalls holds nothing for long.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Server-side mutual TLS from PEM bytes: serve `cert`/`key`, and accept
/// only clients whose certificate `ca` signed (a connection without one is
/// refused in the handshake).
pub fn server_tls(ca: &[u8], cert: &[u8], key: &[u8]) -> tonic::transport::ServerTlsConfig {
    tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(cert, key))
        .client_ca_root(tonic::transport::Certificate::from_pem(ca))
        .client_auth_optional(false)
        .timeout(TLS_HANDSHAKE_TIMEOUT)
}

/// The node a peer-port request comes from, as its TLS certificate names
/// it ([`pact_common::identity`]); put into the request's extensions by
/// [`PeerAuth`]. Absent without TLS, where nothing authenticates a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerNode(pub NodeId);

/// Who may call a node's peer port, checked before any service there sees
/// a request: with TLS, only a node of the cluster, by the node identity
/// in the certificate the handshake verified (a client's certificate names
/// no node and is refused with `PERMISSION_DENIED`). The cluster's nodes
/// are the config's until a directory is attached
/// ([`PeerAuth::trust_directory`], on `pact`), then the directory's: the
/// metadata group's live members, so a node added at run time is admitted
/// and a removed one is not.
/// The caller's id goes along as [`PeerNode`], so the Raft transport can
/// insist that a message's sender is that node. Without TLS every request
/// passes as before.
#[derive(Clone, Debug)]
pub struct PeerAuth {
    /// The config's nodes; `None` without TLS.
    nodes: Option<Arc<BTreeSet<NodeId>>>,
    /// Once set, the nodes trusted instead of the config's.
    directory: Arc<std::sync::OnceLock<crate::Directory>>,
}

impl PeerAuth {
    pub fn new(config: &ClusterConfig, tls: bool) -> PeerAuth {
        PeerAuth {
            nodes: tls.then(|| Arc::new(config.nodes.iter().map(|n| n.id).collect())),
            directory: Default::default(),
        }
    }

    /// Trust the nodes `directory` lists from now on (every clone of this
    /// `PeerAuth`, the layer already serving included). Set once; later
    /// calls change nothing.
    pub fn trust_directory(&self, directory: crate::Directory) {
        let _ = self.directory.set(directory);
    }

    /// A config node the member table does not list (added to the file
    /// after the table was seeded) stays trusted, unless the table lists
    /// it removed.
    fn trusts(&self, nodes: &BTreeSet<NodeId>, id: NodeId) -> bool {
        match self.directory.get() {
            Some(d) => d.get(id.0).is_some() || (nodes.contains(&id) && !d.is_removed(id.0)),
            None => nodes.contains(&id),
        }
    }

    /// The node that presented `leaf` (the DER of the peer's own
    /// certificate, `None` if it presented none); `Ok(None)` without TLS.
    pub fn check(&self, leaf: Option<&[u8]>) -> Result<Option<NodeId>, tonic::Status> {
        let Some(nodes) = &self.nodes else {
            return Ok(None);
        };
        let Some(der) = leaf else {
            // The handshake demands a certificate; this is a guard should
            // that ever change, not a path a peer can take.
            return Err(tonic::Status::unauthenticated(
                "the peer port needs a node certificate",
            ));
        };
        let id = node_of_certificate(der).map_err(|e| {
            tracing::debug!("peer port refused a certificate: {e}");
            tonic::Status::permission_denied(format!("the peer port serves nodes only: {e}"))
        })?;
        if !self.trusts(nodes, id) {
            tracing::debug!(node = %id, "peer port refused a certificate of an unknown node");
            return Err(tonic::Status::permission_denied(format!(
                "the certificate names node {id}, which is not a member of this cluster"
            )));
        }
        Ok(Some(id))
    }

    /// The interceptor layer for the peer port's server builder, so that
    /// it covers every service mounted there.
    pub fn layer(self) -> tonic::service::InterceptorLayer<PeerAuth> {
        tonic::service::InterceptorLayer::new(self)
    }
}

impl tonic::service::Interceptor for PeerAuth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let certs = req.peer_certs();
        let leaf = certs.as_ref().and_then(|c| c.first()).map(|c| c.as_ref());
        if let Some(id) = self.check(leaf)? {
            req.extensions_mut().insert(PeerNode(id));
        }
        Ok(req)
    }
}

/// A gRPC server builder with the request metrics layer
/// ([`crate::metrics::grpc`]) outermost.
pub type GrpcServer = tonic::transport::Server<
    tower_layer::Stack<crate::metrics::grpc::GrpcMetricsLayer, tower_layer::Identity>,
>;

/// The gRPC server builder the server binaries use, for each of their two
/// ports: every service gets these connection limits, its requests counted
/// per method, and `tls` if given. Message size caps are per service (see
/// each service's constructor). Fails if the TLS material does not parse.
pub fn grpc_server(
    tls: Option<&tonic::transport::ServerTlsConfig>,
) -> Result<GrpcServer, tonic::transport::Error> {
    let mut b = tonic::transport::Server::builder();
    if let Some(t) = tls {
        b = b.tls_config(t.clone())?;
    }
    Ok(b.layer(crate::metrics::grpc::GrpcMetricsLayer)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        // A flood of streams opened and at once reset costs the server
        // work for nothing (the HTTP/2 "rapid reset" attack); h2's
        // current default bound, stated here so an update cannot drop it.
        .http2_max_pending_accept_reset_streams(Some(20)))
}

/// Where a server binary listens on one of its ports: the `flag` given on
/// its command line, else the node's configured address (`what` names
/// it, `flag_name` is the flag that overrides it, for the message).
pub fn listen_addr(
    flag: Option<std::net::SocketAddr>,
    configured: &str,
    what: &str,
    flag_name: &str,
) -> Result<std::net::SocketAddr, String> {
    match flag {
        Some(a) => Ok(a),
        None => configured
            .parse()
            .map_err(|e| format!("{what} {configured} is not ip:port ({e}); pass {flag_name}")),
    }
}

/// A server binary's two ports, bound and configured, before any state is
/// touched: a port clash or bad TLS material is reported at once.
pub struct Ports {
    pub client: tokio::net::TcpListener,
    pub peer: tokio::net::TcpListener,
    /// For the client-facing services (Kv, Txn, gRPC health).
    pub client_server: GrpcServer,
    /// For Raft and the transaction protocol: add `peer_auth` as a layer,
    /// so that with TLS only nodes of the cluster get to any service on it.
    pub peer_server: GrpcServer,
    pub peer_auth: PeerAuth,
}

impl Ports {
    /// Bind `listen` and `peer_listen` and build both servers; `tls` is
    /// (CA, certificate, key) in PEM.
    pub async fn bind(
        config: &ClusterConfig,
        listen: std::net::SocketAddr,
        peer_listen: std::net::SocketAddr,
        tls: Option<(&[u8], &[u8], &[u8])>,
    ) -> std::io::Result<Ports> {
        let bind = |addr, what: &'static str| async move {
            tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen on {addr}{what}: {e}"))
            })
        };
        let client = bind(listen, "").await?;
        let peer = bind(peer_listen, " (peer port)").await?;
        let server_tls = tls.map(|(ca, cert, key)| server_tls(ca, cert, key));
        let build = |what: &str| {
            grpc_server(server_tls.as_ref())
                .map_err(|e| std::io::Error::other(format!("TLS setup of the {what} port: {e}")))
        };
        let client_server = build("client")?;
        let peer_server = build("peer")?;
        let peer_auth = PeerAuth::new(config, tls.is_some());
        if tls.is_none() {
            tracing::warn!(
                %peer_listen,
                "no TLS: whoever reaches the peer port can send Raft and transaction-control \
                 messages; keep it behind a firewall, or set [tls] in the config"
            );
        }
        Ok(Ports {
            client,
            peer,
            client_server,
            peer_server,
            peer_auth,
        })
    }
}

/// A connection must send its first [`FIRST_BYTES`] bytes (the HTTP/2
/// client preface is 24 bytes; a TLS ClientHello is longer) within this,
/// or it is closed unserved: a socket that connects and stays silent
/// (slowloris) holds nothing for long, TLS or not.
pub const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_BYTES: usize = 24;

/// The accepted connections of `listener`, with the socket options the
/// builder cannot apply to a listener bound by the caller, each handed to
/// the server only once it has sent its first bytes (see
/// [`FIRST_BYTES_TIMEOUT`]).
pub fn incoming(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = Result<tokio::net::TcpStream, std::io::Error>> + Send + 'static {
    use futures::StreamExt;
    let mut accepted = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(TCP_KEEPALIVE))
        .with_keepalive_interval(Some(TCP_KEEPALIVE_INTERVAL))
        .with_keepalive_retries(Some(TCP_KEEPALIVE_RETRIES));
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        while let Some(conn) = accepted.next().await {
            if tx.is_closed() {
                break;
            }
            match conn {
                Ok(stream) => {
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        if speaks_within(&stream, FIRST_BYTES_TIMEOUT).await {
                            let _ = tx.send(Ok(stream)).await;
                        }
                    });
                }
                // A failed accept (e.g. out of file descriptors) ends
                // nothing: the listener goes on.
                Err(e) => tracing::debug!(error = %e, "accept failed"),
            }
        }
    });
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) })
}

/// True once `s` has [`FIRST_BYTES`] bytes waiting to be read, false if it
/// closes or `limit` passes first. Peeks, so the server reads them whole.
async fn speaks_within(s: &tokio::net::TcpStream, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; FIRST_BYTES];
    loop {
        match tokio::time::timeout_at(deadline, s.peek(&mut buf)).await {
            Ok(Ok(n)) if n >= FIRST_BYTES => return true,
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return false,
            // Part of it: peek returns at once while those bytes wait, so
            // look again a little later rather than spin.
            Ok(Ok(_)) => {
                if tokio::time::timeout_at(deadline, tokio::time::sleep(Duration::from_millis(20)))
                    .await
                    .is_err()
                {
                    return false;
                }
            }
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM: the signal to stop serving and shut the
/// replicas down cleanly.
pub async fn shutdown_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Watch (every 200 ms) for the node to stop: `fatal` returns why, once a
/// replica stopped or the store failed. Then log it, and [`Replica::fence`]
/// every one of `replicas`: leaders hand leadership on and every Raft core
/// stops, so the node acknowledges nothing more. The process stays up, so
/// `txn status`, `/readyz` and the requests it refuses can say why; the
/// returned [`Stopped`] says why at exit, for the exit code.
///
/// [`Replica::fence`]: crate::Replica::fence
pub fn fence_when_stopped(
    replicas: impl Into<crate::Replicas>,
    fatal: impl Fn() -> Option<String> + Send + Sync + 'static,
) -> Stopped {
    let stopped = Stopped {
        cell: std::sync::Arc::new(std::sync::OnceLock::new()),
        fatal: std::sync::Arc::new(fatal),
    };
    let (cell, fatal) = (stopped.cell.clone(), stopped.fatal.clone());
    let replicas: crate::Replicas = replicas.into();
    tokio::spawn(async move {
        let why = loop {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            if let Some(f) = fatal() {
                break f;
            }
        };
        tracing::error!(
            reason = %why,
            "node stopped: it acknowledges nothing more and stays up only to report why \
             (txn status, /readyz); fix the cause, then restart it on the same data directory"
        );
        let _ = cell.set(why);
        futures::future::join_all(replicas.list().iter().map(|r| r.fence())).await;
    });
    stopped
}

/// Why the node stopped, if it did (see [`fence_when_stopped`]).
pub struct Stopped {
    cell: std::sync::Arc<std::sync::OnceLock<String>>,
    fatal: std::sync::Arc<dyn Fn() -> Option<String> + Send + Sync>,
}

impl Stopped {
    /// The reason the watcher saw, or, if the node failed since its last
    /// look (a shutdown can come within its 200 ms), the one it would see
    /// now. Ask before the replicas are shut down: a Raft core shut down
    /// on purpose reports itself stopped too.
    pub fn reason(&self) -> Option<String> {
        self.cell.get().cloned().or_else(|| (self.fatal)())
    }
}

/// Exit code of a server that stopped on a storage failure and was then
/// asked to shut down: a supervisor sees it as a failure.
pub const EXIT_STOPPED: i32 = 70;

/// Check `PACT_FAULTS` (see [`pact_common::faults`]) and arm what it asks
/// for. Must run inside the tokio runtime. A bad list is an error, so a typo
/// cannot make the suite test the real build by accident; every active fault
/// is logged as a warning, because it breaks guarantees on purpose.
pub fn arm_faults() -> Result<(), String> {
    let faults = pact_common::faults::configured()?;
    let offset = pact_common::faults::clock_offset_ms();
    if offset != 0 {
        tracing::warn!(
            offset_ms = offset,
            "wall clock skewed by PACT_CLOCK_OFFSET_MS"
        );
    }
    if faults.is_empty() {
        return Ok(());
    }
    tracing::warn!(
        ?faults,
        "FAULT INJECTION ON: this process breaks Pact's guarantees on purpose"
    );
    if pact_common::faults::enabled("crash-before-fsync") {
        let mut usr1 =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
                .map_err(|e| format!("cannot watch SIGUSR1: {e}"))?;
        tokio::spawn(async move {
            if usr1.recv().await.is_some() {
                tracing::warn!("SIGUSR1: the storage writer dies before its next fsync");
                crate::store::CRASH_BEFORE_FSYNC.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        });
    }
    if pact_common::faults::enabled("fail-fsync") {
        let mut usr2 =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2())
                .map_err(|e| format!("cannot watch SIGUSR2: {e}"))?;
        tokio::spawn(async move {
            if usr2.recv().await.is_some() {
                tracing::warn!("SIGUSR2: every later fsync of the storage writer fails");
                crate::store::FAIL_FSYNC.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pact_common::certgen::Ca;
    use pact_common::identity::first_certificate_der;
    use tonic::Code;

    #[test]
    fn the_peer_port_admits_only_the_clusters_nodes_and_only_with_tls() {
        let config = ClusterConfig::local(3, 1, 3, 7001).unwrap();
        let ca = Ca::new("test CA").unwrap();
        let hosts = ["localhost".to_string()];
        let der =
            |pem: &pact_common::certgen::Pem| first_certificate_der(pem.cert.as_bytes()).unwrap();
        let node2 = der(&ca.issue_node(NodeId(2), &hosts).unwrap());
        let stranger = der(&ca.issue_node(NodeId(9), &hosts).unwrap());
        let client = der(&ca.issue("pact client", &hosts).unwrap());

        let tls = PeerAuth::new(&config, true);
        assert_eq!(tls.check(Some(&node2)).unwrap(), Some(NodeId(2)));
        for (what, leaf) in [("client", &client), ("node 9", &stranger)] {
            let e = tls.check(Some(leaf)).unwrap_err();
            assert_eq!(e.code(), Code::PermissionDenied, "{what}: {e:?}");
        }
        assert_eq!(
            tls.check(Some(b"junk")).unwrap_err().code(),
            Code::PermissionDenied
        );
        assert_eq!(tls.check(None).unwrap_err().code(), Code::Unauthenticated);

        // With the member table's directory attached (to a clone: the
        // layer already serving follows), node 9 added at run time is
        // admitted and node 2, removed, no longer is.
        let directory = crate::Directory::default();
        let member = |id: u64| crate::Member {
            id,
            peer_addr: format!("127.0.0.1:{}", 7100 + id),
            client_addr: format!("127.0.0.1:{}", 7000 + id),
        };
        directory.set(vec![member(1), member(3), member(9)]);
        tls.clone().trust_directory(directory.clone());
        assert_eq!(tls.check(Some(&stranger)).unwrap(), Some(NodeId(9)));
        // A config node the table does not list (yet) is still trusted;
        // once the table lists it removed, it is not.
        assert_eq!(tls.check(Some(&node2)).unwrap(), Some(NodeId(2)));
        directory.set_removed([2]);
        assert_eq!(
            tls.check(Some(&node2)).unwrap_err().code(),
            Code::PermissionDenied
        );
        assert_eq!(
            tls.check(Some(&client)).unwrap_err().code(),
            Code::PermissionDenied
        );
        directory.set(vec![member(1), member(3)]);
        assert!(tls.check(Some(&stranger)).is_err());
        assert!(tls.check(Some(&node2)).is_err());

        // Without TLS nothing names a peer, and nothing is refused here.
        let plain = PeerAuth::new(&config, false);
        for leaf in [None, Some(&client[..]), Some(&node2[..])] {
            assert_eq!(plain.check(leaf).unwrap(), None);
        }
    }
}
