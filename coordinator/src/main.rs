//! `coordinator`: run one replica of a coordinator group.

/// jemalloc, not glibc malloc: under a steady transaction load glibc kept
/// the pages of freed memtable entries (allocated and freed on different
/// threads), so RSS rose by about 1.5 KB per transaction while the heap
/// stayed flat; jemalloc hands them back (see docs/performance.md).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
pact_raft::jemalloc_options!();

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Parser;
use pact_common::{ClusterConfig, NodeId};
use pact_coordinator::service::TxnService;
use pact_coordinator::Coordinator;

/// Run a Pact coordinator: a replica of a coordinator group's recovery log,
/// serving transactions (pact.v1.Txn) while it is the group's leader.
#[derive(Parser, Debug)]
#[command(name = "coordinator", version = env!("PACT_VERSION"))]
struct Args {
    /// Cluster config (TOML). Without it, the embedded local default is used,
    /// whose nodes also host shard replicas: run `pact` for those.
    #[arg(long, env = "PACT_CONFIG")]
    config: Option<PathBuf>,
    /// This node's id in the config (a replica of a coordinator group).
    #[arg(long)]
    node_id: u64,
    /// Where this node keeps its recovery log.
    #[arg(long)]
    data_dir: PathBuf,
    /// Address of the client port (the client-facing service); defaults
    /// to the node's `addr` in the config.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Address of the peer port (Raft and other internal services);
    /// defaults to the node's `peer_addr` in the config.
    #[arg(long)]
    peer_listen: Option<SocketAddr>,
    /// CA certificate (PEM) for mutual TLS; overrides the config's
    /// `tls.ca`. With TLS, --cert and --key (or the config's) are needed too.
    #[arg(long)]
    cacert: Option<String>,
    /// This node's certificate (PEM); overrides the config's `tls.cert`.
    #[arg(long)]
    cert: Option<String>,
    /// This node's private key (PEM); overrides the config's `tls.key`.
    #[arg(long)]
    key: Option<String>,
    /// Serve Prometheus metrics over HTTP on this address (off if unset):
    /// `/metrics`, and `/healthz` and `/readyz` for probes.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    log: pact_common::logging::LogArgs,
    #[command(flatten)]
    runtime: pact_common::runtime::RuntimeArgs,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.log.init().map_err(anyhow::Error::msg)?;
    let config = match &args.config {
        Some(p) => ClusterConfig::load(p).with_context(|| format!("loading {}", p.display()))?,
        None => ClusterConfig::embedded_default(),
    };
    let id = NodeId(args.node_id);
    let Some(me) = config.node(id) else {
        bail!("node {} is not in the cluster config", args.node_id);
    };
    if config.coordinator_of(id).is_none() {
        bail!(
            "node {} is not a replica of any coordinator group; run `participant` (or `pact`) for shard nodes",
            args.node_id
        );
    }
    if config.is_combined(id) {
        bail!(
            "node {} hosts shard replicas as well as its coordinator replica; run `pact` for it (one process for both)",
            args.node_id
        );
    }
    let listen = pact_raft::server::listen_addr(args.listen, &me.addr, "node address", "--listen")
        .map_err(anyhow::Error::msg)?;
    let peer_listen = pact_raft::server::listen_addr(
        args.peer_listen,
        &me.peer_addr,
        "node peer address",
        "--peer-listen",
    )
    .map_err(anyhow::Error::msg)?;
    let flags = pact_client::TlsPaths {
        ca: args.cacert.clone(),
        cert: args.cert.clone(),
        key: args.key.clone(),
    };
    let tls = pact_client::Tls::for_node(&config, id, &flags)?;
    // Before a port is bound or the store opened: a second process on the
    // same data dir is refused with the first one's pid. Held until exit.
    let _dir_lock = pact_common::dirlock::DirLock::acquire(&args.data_dir)?;
    let rt = args.runtime.runtime()?;
    rt.block_on(run(Run {
        config,
        id,
        data_dir: args.data_dir,
        listen,
        peer_listen,
        metrics_listen: args.metrics_listen,
        tls,
    }))
}

struct Run {
    config: ClusterConfig,
    id: NodeId,
    data_dir: PathBuf,
    listen: SocketAddr,
    peer_listen: SocketAddr,
    metrics_listen: Option<SocketAddr>,
    tls: Option<pact_client::Tls>,
}

async fn run(r: Run) -> anyhow::Result<()> {
    let Run {
        config,
        id,
        data_dir,
        listen,
        peer_listen,
        metrics_listen,
        tls,
    } = r;
    pact_raft::server::arm_faults().map_err(anyhow::Error::msg)?;
    // Bind and set up both ports first, so a port clash or bad TLS material
    // is reported before any state is touched.
    let pact_raft::server::Ports {
        client: listener,
        peer: peer_listener,
        client_server: mut client_builder,
        peer_server,
        peer_auth,
    } = pact_raft::server::Ports::bind(
        &config,
        listen,
        peer_listen,
        tls.as_ref().map(|t| (&t.ca[..], &t.cert[..], &t.key[..])),
    )
    .await?;
    let mut peer_builder = peer_server.layer(peer_auth.clone().layer());
    let topology = config.clone();
    let tuning = config.raft.clone();
    let c = Coordinator::start(config, id, &data_dir, tls.clone()).await?;
    pact_raft::balance::spawn(c.router().clone(), id, &tuning);
    let endpoint = {
        let c = c.clone();
        pact_raft::endpoint::Endpoint::new(vec![c.replica().clone()])
            .context("setting up metrics")?
            .with_registry(c.metrics.registry.clone())
            .on_scrape(move || c.refresh_metrics())
    };
    if let Some(addr) = metrics_listen {
        let addr = endpoint
            .serve(addr)
            .await
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        tracing::info!(%addr, "metrics at http://{addr}/metrics, probes at /healthz and /readyz");
    }
    let health = endpoint
        .grpc_health(&[pact_proto::txn_server::SERVICE_NAME])
        .await;
    tracing::info!(node = %id, %listen, %peer_listen, tls = tls.is_some(), data_dir = %data_dir.display(), "coordinator started");
    // Clients get Txn only; the recovery log's Raft only on the peer port.
    let client_server = client_builder
        .add_service(health)
        .add_service(TxnService::new(c.clone()))
        .add_service(pact_raft::admin::AdminService::new(
            c.router().clone(),
            &topology,
            id.0,
        ))
        .serve_with_incoming_shutdown(
            pact_raft::server::incoming(listener),
            pact_raft::server::shutdown_signal(),
        );
    let peer_server = peer_builder
        .add_service(c.router().service())
        .serve_with_incoming_shutdown(
            pact_raft::server::incoming(peer_listener),
            pact_raft::server::shutdown_signal(),
        );
    let server = async { tokio::try_join!(client_server, peer_server) };
    let stopped = {
        let c2 = c.clone();
        pact_raft::server::fence_when_stopped(vec![c.replica().clone()], move || c2.fatal())
    };
    server.await.context("grpc server failed")?;
    let stopped = stopped.reason();
    c.replica().shutdown().await;
    if let Some(f) = stopped {
        tracing::error!(reason = %f, "coordinator stopped after a storage failure");
        std::process::exit(pact_raft::server::EXIT_STOPPED);
    }
    Ok(())
}
