//! `participant`: run one Pact node.

/// jemalloc, not glibc malloc: under a steady transaction load glibc kept
/// the pages of freed memtable entries (allocated and freed on different
/// threads), so RSS rose by about 1.5 KB per transaction while the heap
/// stayed flat; jemalloc hands them back (see docs/performance.md).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use pact_common::{ClusterConfig, NodeId};
use pact_participant::service::{KvService, ParticipantService};
use pact_participant::Node;

/// Run a Pact participant node: this node's replica of every shard the
/// cluster config assigns to it, served over gRPC.
#[derive(Parser, Debug)]
#[command(name = "participant", version)]
struct Args {
    /// Cluster config (TOML). Without it, the embedded local default is used:
    /// participant nodes 1-3 on 127.0.0.1:7001-7003 (3 shards, 3 replicas
    /// each) and coordinator nodes 4-6 on 7004-7006.
    #[arg(long, env = "PACT_CONFIG")]
    config: Option<PathBuf>,
    /// This node's id in the config.
    #[arg(long)]
    node_id: u64,
    /// Where this node keeps its Raft logs and shard data.
    #[arg(long)]
    data_dir: PathBuf,
    /// Address to listen on; defaults to the node's address in the config.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Serve Prometheus metrics over HTTP on this address (off if unset).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
}

fn main() -> anyhow::Result<()> {
    pact_raft::server::init_tracing();
    let args = Args::parse();
    let config = match &args.config {
        Some(p) => ClusterConfig::load(p).with_context(|| format!("loading {}", p.display()))?,
        None => ClusterConfig::embedded_default(),
    };
    let id = NodeId(args.node_id);
    let Some(me) = config.node(id) else {
        bail!(
            "node {} is not in the cluster config (nodes: {:?})",
            args.node_id,
            config.nodes.iter().map(|n| n.id.0).collect::<Vec<_>>()
        );
    };
    if let Some(g) = config.coordinator_of(id) {
        bail!(
            "node {} is a replica of coordinator group {}; run `coordinator` for it",
            args.node_id,
            g.group
        );
    }
    let listen: SocketAddr = match args.listen {
        Some(l) => l,
        None => me
            .addr
            .parse()
            .with_context(|| format!("node address {} is not ip:port; pass --listen", me.addr))?,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(config, id, args.data_dir, listen, args.metrics_listen))
}

async fn run(
    config: ClusterConfig,
    id: NodeId,
    data_dir: PathBuf,
    listen: SocketAddr,
    metrics_listen: Option<SocketAddr>,
) -> anyhow::Result<()> {
    pact_raft::server::arm_faults().map_err(anyhow::Error::msg)?;
    // Bind first, so a port clash is reported before any state is touched.
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let node = Arc::new(Node::start(config, id, &data_dir).await?);
    if let Some(addr) = metrics_listen {
        let replicas = node.replicas().cloned().collect();
        pact_raft::metrics::serve_with_raft_gauges(addr, node.metrics.registry.clone(), replicas)
            .await
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        tracing::info!(%addr, "metrics at http://{addr}/metrics");
    }
    tracing::info!(node = %id, %listen, data_dir = %data_dir.display(), shards = node.replicas().count(), "participant started");
    let incoming = pact_raft::server::incoming(listener);
    let server = pact_raft::server::grpc_server()
        .add_service(node.router().service())
        .add_service(KvService::new(node.clone()))
        .add_service(ParticipantService::new(node.clone()))
        .serve_with_incoming_shutdown(incoming, pact_raft::server::shutdown_signal());
    let watchdog = {
        let node = node.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if let Some(f) = node.fatal() {
                    return f;
                }
            }
        }
    };
    tokio::select! {
        r = server => {
            r.context("grpc server failed")?;
            node.shutdown().await;
            tracing::info!("participant stopped");
            Ok(())
        }
        f = watchdog => {
            // Never serve after a storage failure: exit and let the operator
            // (or supervisor) restart the node from its durable state.
            tracing::error!(error = %f, "replica stopped; exiting");
            std::process::exit(70);
        }
    }
}
