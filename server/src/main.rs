//! `pact`: one process per node. It runs every replica the cluster config
//! assigns to its node id, shard replicas and a coordinator-group replica
//! alike, on one storage (so one writer thread and shared fsyncs), one
//! Raft router and peer connection pool, one tokio runtime and one pair of
//! ports.

/// jemalloc, not glibc malloc: under a steady transaction load glibc kept
/// the pages of freed memtable entries (allocated and freed on different
/// threads), so RSS rose by about 1.5 KB per transaction while the heap
/// stayed flat; jemalloc hands them back (see docs/performance.md).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
pact_raft::jemalloc_options!();

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use pact_common::{ClusterConfig, NodeId, ShardId};
use pact_coordinator::service::TxnService;
use pact_coordinator::Coordinator;
use pact_participant::service::{KvService, ParticipantService};
use pact_participant::Node;
use pact_raft::admin::{ChangeHold, GroupKind, HostError};
use pact_raft::Host;

/// Run a Pact node: its replicas of the shards and of the coordinator
/// group that the cluster config assigns to it, in one process.
#[derive(Parser, Debug)]
#[command(name = "pact", version = env!("PACT_VERSION"))]
struct Args {
    /// Cluster config (TOML). Without it, the embedded local default is used:
    /// nodes 1-3 on 127.0.0.1:7001-7003, each a replica of 3 shards and of
    /// coordinator group 4.
    #[arg(long, env = "PACT_CONFIG")]
    config: Option<PathBuf>,
    /// Instead of a config file, some running nodes' client ports
    /// (`host:port[,...]`): a node added at run time (`txn admin member
    /// add`) takes the cluster's config from them. Without TLS only. It
    /// wins over PACT_CONFIG; with --config it is an error.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    endpoints: Vec<String>,
    /// This node's id: in the config, or a member added at run time
    /// (`txn admin member add`), whose addresses the cluster then gives it.
    #[arg(long)]
    node_id: u64,
    /// Where this node keeps the Raft logs and data of all its groups.
    #[arg(long)]
    data_dir: PathBuf,
    /// Address of the client port (Kv and Txn); defaults to the node's
    /// `addr` in the config.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Address of the peer port (Raft and the transaction protocol);
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

/// What the config gives node `id`: its shards and its coordinator group,
/// if any. A node given neither is a spare: it runs, hosting nothing until
/// an operator adds replicas to it (`txn admin replica add`).
fn roles(config: &ClusterConfig, id: NodeId) -> Result<(Vec<ShardId>, Option<u64>), String> {
    if config.node(id).is_none() {
        return Err(format!(
            "node {id} is not in the cluster config (nodes: {:?})",
            config.nodes.iter().map(|n| n.id.0).collect::<Vec<_>>()
        ));
    }
    let shards = config.shards_of_node(id);
    let group = config.coordinator_of(id).map(|g| g.group);
    Ok((shards, group))
}

/// How long a replica that a leader called removed, but that was not
/// dropped, waits before the next such word is looked at (each check asks
/// the leader again).
const REMOVAL_RETRY: Duration = Duration::from_secs(10);

/// Starts and stops this node's replicas at run time for
/// `pact.v1.Admin`: shard replicas, and a coordinator group's replica (a
/// node runs at most one of those).
struct ShardHost {
    node: Arc<Node>,
    config: Arc<ClusterConfig>,
    /// This node's coordinator replica, if any.
    coordinator: pact_coordinator::Hosted,
    /// This node's replica of the metadata group, if any.
    meta: pact_meta::MetaSlot,
    /// What a metadata group replica started here asks the shards with.
    meta_client: pact_client::Client,
    /// One coordinator start or stop at a time.
    hosting: tokio::sync::Mutex<()>,
    host: Host,
    tls: Option<pact_client::Tls>,
}

#[tonic::async_trait]
impl pact_raft::admin::GroupHost for ShardHost {
    async fn host(
        &self,
        group: u64,
        kind: GroupKind,
        voters: Vec<u64>,
        create: bool,
    ) -> Result<(), HostError> {
        if kind == GroupKind::Meta {
            return self.host_meta(voters).await;
        }
        if kind == GroupKind::Coordinator {
            self.check_coordinator(group)?;
            return self.host_coordinator(group, voters).await;
        }
        self.check(group)?;
        self.node
            .host_shard(
                ShardId(group),
                voters.into_iter().map(NodeId).collect(),
                create,
            )
            .await
            .map_err(host_error)
    }

    async fn drop_group(&self, group: u64, kind: GroupKind) -> Result<(), HostError> {
        if kind == GroupKind::Meta {
            return self.drop_meta(None).await.map(|_| ());
        }
        if kind == GroupKind::Coordinator {
            return self.drop_coordinator(group, None).await.map(|_| ());
        }
        self.check(group)?;
        self.node
            .drop_shard(ShardId(group))
            .await
            .map_err(host_error)
    }

    async fn may_change(&self, group: u64, kind: GroupKind) -> Result<ChangeHold, HostError> {
        // A node that runs no replica of the group is let through: the
        // change then answers "not leader", and the caller asks the
        // group's other nodes (a refusal here would be final to it).
        if kind == GroupKind::Meta {
            return Ok(None);
        }
        if kind == GroupKind::Coordinator {
            return self.check_coordinator(group).map(|()| None);
        }
        self.check(group)?;
        // The shard's split lock, held through the change: no split (or
        // merge) of it begins meanwhile, recording voters about to change.
        let hold = self.node.hold_splits(ShardId(group)).await.map_err(|why| {
            HostError::Failed(format!(
                "{why}: its replicas cannot change until it is done; try again shortly"
            ))
        })?;
        match self.node.splitting(ShardId(group)).await {
            Some(why) => Err(HostError::Failed(format!(
                "{why}: its replicas cannot change until the split is done; try again shortly"
            ))),
            None => Ok(hold.map(|h| Box::new(h) as Box<dyn std::any::Any + Send + Sync>)),
        }
    }
}

impl ShardHost {
    /// A coordinator group that may move: one the config lists, whose id
    /// no shard has (a node's groups share one router keyed by id, and its
    /// records of what it hosts name groups by id alone).
    fn check_coordinator(&self, group: u64) -> Result<(), HostError> {
        if !self.config.coordinators.iter().any(|g| g.group == group) {
            return Err(HostError::Refused(format!(
                "no coordinator group {group} in the cluster config"
            )));
        }
        if !self.config.coordinator_can_move(group) {
            return Err(HostError::Refused(format!(
                "coordinator group {group} shares its id with shard {group}: its replicas \
                 cannot move (give coordinator groups ids no shard has)"
            )));
        }
        Ok(())
    }

    /// Start this node's replica of coordinator group `group`, whose
    /// voters are `voters` (idempotent); refused while the node runs
    /// another group's.
    async fn host_coordinator(&self, group: u64, voters: Vec<u64>) -> Result<(), HostError> {
        let _one = self.hosting.lock().await;
        if let Some(c) = self.coordinator.get() {
            if c.group() == group {
                return Ok(());
            }
            return Err(HostError::Refused(format!(
                "node {} runs a replica of coordinator group {} already; a node runs one \
                 coordinator group at most",
                self.node.id(),
                c.group()
            )));
        }
        if let Some(n) = voters
            .iter()
            .find(|n| !self.host.knows_node(&self.config, **n))
        {
            return Err(HostError::Refused(format!(
                "hosting coordinator group {group}: voter {n} is not a member of the cluster"
            )));
        }
        let c = Coordinator::start_group(
            self.config.as_ref().clone(),
            self.node.id(),
            group,
            Some(voters.into_iter().map(NodeId).collect()),
            &self.host,
            self.tls.clone(),
            Some(ParticipantService::local(self.node.clone())),
        )
        .await
        .map_err(|e| HostError::Failed(e.to_string()))?;
        self.coordinator.set(Some(c));
        tracing::info!(group, "hosting a new replica of the coordinator group");
        Ok(())
    }

    /// Start this node's replica of the metadata group, whose voters are
    /// `voters` (idempotent).
    async fn host_meta(&self, voters: Vec<u64>) -> Result<(), HostError> {
        let _one = self.hosting.lock().await;
        if self.config.meta_replicas().is_empty() {
            return Err(HostError::Refused(
                "this cluster has no metadata group (its config has no coordinator group)".into(),
            ));
        }
        if self.meta.get().is_some() {
            return Ok(());
        }
        if let Some(n) = voters
            .iter()
            .find(|n| !self.host.knows_node(&self.config, **n))
        {
            return Err(HostError::Refused(format!(
                "hosting the metadata group: voter {n} is not a member of the cluster"
            )));
        }
        let m = pact_meta::MetaGroup::start_on(
            &self.config,
            self.node.id(),
            &self.host,
            self.meta_client.clone(),
            Some(voters.into_iter().map(NodeId).collect()),
        )
        .await
        .map_err(|e| HostError::Failed(e.to_string()))?;
        self.meta.set(Some(m));
        tracing::info!("hosting a new replica of the metadata group");
        Ok(())
    }

    /// Drop this node's replica of coordinator group `group`, if it runs
    /// one; with `removed`, only once the replica confirms that word
    /// (under the hosting lock). `Ok(Err(why))` if it was not dropped.
    async fn drop_coordinator(
        &self,
        group: u64,
        removed: Option<&pact_raft::Removal>,
    ) -> Result<Result<(), String>, HostError> {
        self.check_coordinator(group)?;
        let _one = self.hosting.lock().await;
        let Some(c) = self.coordinator.get().filter(|c| c.group() == group) else {
            return Ok(Err("not hosted here".into()));
        };
        if let Err(why) = self.confirm_drop(c.replica(), removed).await? {
            return Ok(Err(why));
        }
        // Out of the slot first: the node's storage watch reads the slot,
        // and a replica being stopped on purpose reports itself stopped
        // (as a failed one would).
        self.coordinator.set(None);
        if let Err(e) = c.retire(&self.host).await {
            // Back only if it still runs (the record could not be
            // written); one stopped midway stays out, and its wipe is
            // finished at the next start.
            if c.fatal().is_none() {
                self.coordinator.set(Some(c));
            }
            return Err(HostError::Failed(e.to_string()));
        }
        tracing::info!(
            group,
            "dropped this node's replica of the coordinator group"
        );
        Ok(Ok(()))
    }

    /// Drop this node's replica of a group that removed it while the node
    /// was away (its drop could not reach the node then), as the group's
    /// leader `r.told_by` says, once the replica confirms it under the
    /// hosting lock ([`pact_raft::Replica::confirm_removed`]: the same
    /// replica, behind that membership, and the leader still says so). A
    /// drop not done is looked at again at the leader's next answer.
    async fn drop_removed(&self, r: pact_raft::Removal) {
        let group = r.group;
        let kind = if group == pact_common::META_GROUP {
            GroupKind::Meta
        } else if self.coordinator.get().is_some_and(|c| c.group() == group) {
            GroupKind::Coordinator
        } else {
            GroupKind::Shard
        };
        tracing::info!(
            group,
            ?kind,
            removed_at = r.at,
            told_by = r.told_by,
            "the group's leader says it removed this node's replica while the node was away"
        );
        let done = match kind {
            GroupKind::Meta => self.drop_meta(Some(&r)).await,
            GroupKind::Coordinator => self.drop_coordinator(group, Some(&r)).await,
            GroupKind::Shard => {
                async {
                    self.check(group)?;
                    (self.node.drop_removed_shard(ShardId(group), &r).await).map_err(host_error)
                }
                .await
            }
        };
        match done {
            Ok(Ok(())) => {
                tracing::warn!(
                    group,
                    ?kind,
                    removed_at = r.at,
                    told_by = r.told_by,
                    "dropped the removed replica"
                );
            }
            Ok(Err(why)) => {
                tracing::info!(group, reason = %why, "the replica stays");
                tokio::time::sleep(REMOVAL_RETRY).await;
            }
            Err(e) => {
                tracing::warn!(group, error = %e, "could not drop the removed replica");
                tokio::time::sleep(REMOVAL_RETRY).await;
            }
        }
        // Looked at again at the next word (a dropped replica campaigns no
        // more; one hosted again later may be told again).
        self.host.removals.retry(group);
    }

    /// Whether this node may drop its `replica`: on a leader's word that
    /// the group removed it (`removed`), once the replica confirms it
    /// (`Ok(Err(why))` if not); on an operator's (`None`), once a leader
    /// of the group confirms it left this node out (refused, retryable,
    /// otherwise).
    async fn confirm_drop(
        &self,
        replica: &pact_raft::Replica,
        removed: Option<&pact_raft::Removal>,
    ) -> Result<Result<(), String>, HostError> {
        match removed {
            Some(r) => Ok(replica.confirm_removed(r, &self.host).await),
            None => {
                let within = pact_raft::DROP_CONFIRM_WITHIN;
                replica
                    .confirm_dropped(&self.host, within)
                    .await
                    .map_err(|why| {
                        HostError::Failed(format!(
                        "this node's replica of group {} is not dropped: {why}; remove it from \
                         the group first, then ask again",
                        replica.group()
                    ))
                    })?;
                Ok(Ok(()))
            }
        }
    }

    /// Stop this node's replica of the metadata group for good and delete
    /// its data, if it runs one (idempotent); with `removed`, as
    /// [`ShardHost::drop_coordinator`].
    async fn drop_meta(
        &self,
        removed: Option<&pact_raft::Removal>,
    ) -> Result<Result<(), String>, HostError> {
        let _one = self.hosting.lock().await;
        let Some(m) = self.meta.get() else {
            return Ok(Err("not hosted here".into()));
        };
        if let Err(why) = self.confirm_drop(m.replica(), removed).await? {
            return Ok(Err(why));
        }
        // Out of the slot first: the directory then reads the table from
        // the group's leader, and requests get a hint.
        self.meta.set(None);
        if let Err(e) = m.retire(&self.host).await {
            if m.replica().fatal().is_none() {
                self.meta.set(Some(m));
            }
            return Err(HostError::Failed(e.to_string()));
        }
        tracing::info!("dropped this node's replica of the metadata group");
        Ok(Ok(()))
    }

    fn check(&self, group: u64) -> Result<(), HostError> {
        // A node's groups share one store and router keyed by group id:
        // a shard cannot join a node whose coordinator group has its id.
        if self.config.coordinator_of(self.node.id()).map(|g| g.group) == Some(group)
            || self.coordinator.get().is_some_and(|c| c.group() == group)
        {
            return Err(HostError::Refused(format!(
                "node {} hosts coordinator group {group}, whose id shard {group} shares; \
                 the shard cannot be hosted there",
                self.node.id()
            )));
        }
        // A split's new shard has an id no config can give.
        let split_child = (pact_common::FIRST_SPLIT_ID..pact_common::META_GROUP).contains(&group);
        if self.config.shard(ShardId(group)).is_none() && !split_child {
            return Err(HostError::Refused(format!(
                "no shard {group} in the cluster config"
            )));
        }
        Ok(())
    }
}

/// The coordinator group node `id` runs a replica of, and whether it was
/// added at run time (the group's voters then): the config's group unless
/// the node's records say it was removed (its leftovers wiped), else a
/// group an operator added it to.
async fn coordinator_plan(
    config: &ClusterConfig,
    id: NodeId,
    host: &Host,
) -> anyhow::Result<Option<(u64, Option<Vec<NodeId>>)>> {
    let plan = host
        .hosting_plan(config.coordinator_of(id).map(|g| g.group), |g| {
            config.coordinator_can_move(g)
        })
        .await
        .context("reading hosting records")?;
    // At most one (a node takes no second coordinator group); one added
    // at run time rather than the config's, should both be recorded.
    Ok(plan
        .into_iter()
        .max_by_key(|(_, joined)| joined.is_some())
        .map(|(g, joined)| (g, joined.map(|v| v.into_iter().map(NodeId).collect()))))
}

/// Whether node `id` runs a replica of the metadata group, and with which
/// voters if it was added at run time: the config's (the first
/// coordinator group's nodes) unless its records say it was removed (its
/// leftovers wiped), else one an operator added it to.
async fn meta_plan(
    config: &ClusterConfig,
    id: NodeId,
    host: &Host,
) -> anyhow::Result<Option<Option<Vec<NodeId>>>> {
    let configured = config
        .meta_replicas()
        .contains(&id)
        .then_some(pact_common::META_GROUP);
    let plan = host
        .hosting_plan(configured, |g| g == pact_common::META_GROUP)
        .await
        .context("reading hosting records")?;
    Ok(plan
        .into_iter()
        .next()
        .map(|(_, joined)| joined.map(|v| v.into_iter().map(NodeId).collect())))
}

fn host_error(e: pact_participant::Error) -> HostError {
    use pact_participant::Error as E;
    match e {
        E::InvalidInput(m) => HostError::Refused(m),
        E::UnknownShard(s) => HostError::Refused(format!("no shard {s} in the cluster config")),
        other => HostError::Failed(other.to_string()),
    }
}

/// How long a node outside the config waits for the metadata group to
/// say who it is.
const JOIN_WITHIN: Duration = Duration::from_secs(30);

/// `config` plus every live member of the cluster the metadata group
/// lists, for node `id`, which the config does not name: it runs with the
/// addresses the table gives it. Refused if the table does not list it
/// (or lists it removed). With TLS it asks with its own certificate
/// (`tls`), and its peers admit it because the table lists it.
async fn join(
    mut config: ClusterConfig,
    id: NodeId,
    tls: Option<pact_client::Tls>,
) -> anyhow::Result<ClusterConfig> {
    if config.meta_replicas().is_empty() {
        bail!("node {id} is not in the cluster config, which has no coordinator group and so no member table");
    }
    let client = pact_client::Client::new(
        &config,
        pact_client::ClientOptions {
            retry_for: JOIN_WITHIN,
            // Nothing listening at any metadata node: no cluster there
            // (or a mistyped id); say so soon.
            give_up_unreachable: Some(Duration::from_secs(5)),
            tls,
            ..pact_client::ClientOptions::default()
        },
    );
    let members = client.members().await.with_context(|| {
        format!("node {id} is not in the cluster config; asking the cluster's member table for it")
    })?;
    match members.iter().find(|m| m.id == id.0) {
        None => bail!(
            "node {id} is neither in the cluster config nor a member of the cluster: add it \
             first (`txn admin member add {id} ADDR PEER_ADDR`)"
        ),
        Some(m) if m.removed => bail!(
            "node {id} was removed from the cluster; a removed id never runs again (add the \
             node under a new id)"
        ),
        Some(_) => {}
    }
    for m in members.into_iter().filter(|m| !m.removed) {
        if config.node(NodeId(m.id)).is_none() {
            config.nodes.push(pact_common::NodeConfig {
                id: NodeId(m.id),
                addr: m.addr,
                peer_addr: m.peer_addr,
            });
        }
    }
    Ok(config)
}

/// The config the metadata group's nodes run with, asked through
/// `endpoints` (client ports of running nodes).
async fn config_from(endpoints: &[String]) -> anyhow::Result<ClusterConfig> {
    let opts = pact_client::ClientOptions {
        retry_for: JOIN_WITHIN,
        give_up_unreachable: Some(Duration::from_secs(5)),
        ..pact_client::ClientOptions::default()
    };
    let client = pact_client::Client::connect(endpoints, opts).await?;
    Ok(client.cluster_config().await?)
}

/// A config node that the member table says was removed does not run
/// again. Asked briefly: when the table cannot answer (the whole cluster
/// starting, say), the node starts as its config says.
async fn refuse_if_removed(
    config: &ClusterConfig,
    id: NodeId,
    tls: Option<pact_client::Tls>,
) -> anyhow::Result<()> {
    if config.meta_replicas().is_empty() {
        return Ok(());
    }
    let client = pact_client::Client::new(
        config,
        pact_client::ClientOptions {
            tls,
            retry_for: Duration::from_secs(2),
            request_timeout: Duration::from_secs(1),
            give_up_unreachable: Some(Duration::from_millis(500)),
            ..pact_client::ClientOptions::default()
        },
    );
    if let Ok(members) = client.members().await {
        if members.iter().any(|m| m.id == id.0 && m.removed) {
            bail!(
                "node {id} was removed from the cluster (txn admin member list); a removed id \
                 never runs again"
            );
        }
    }
    Ok(())
}

/// Whether this data directory holds anything: a node that has run
/// before (a removed node can only have been).
fn has_run_before(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
}

fn main() -> anyhow::Result<()> {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Args::command().get_matches();
    let mut args = match Args::from_arg_matches(&matches) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    if !args.endpoints.is_empty() && args.config.is_some() {
        if matches.value_source("config") == Some(clap::parser::ValueSource::EnvVariable) {
            args.config = None;
        } else {
            bail!("give either --config or --endpoints, not both");
        }
    }
    args.log.init().map_err(anyhow::Error::msg)?;
    let id = NodeId(args.node_id);
    if id.0 == 0 {
        bail!("node id 0 is reserved; node ids start at 1");
    }
    let rt = args.runtime.runtime()?;
    let config = match &args.config {
        Some(p) => ClusterConfig::load(p).with_context(|| format!("loading {}", p.display()))?,
        None if !args.endpoints.is_empty() => {
            rt.block_on(config_from(&args.endpoints)).with_context(|| {
                format!(
                    "asking {} for the cluster's config",
                    args.endpoints.join(",")
                )
            })?
        }
        None => ClusterConfig::embedded_default(),
    };
    let flags = pact_client::TlsPaths {
        ca: args.cacert.clone(),
        cert: args.cert.clone(),
        key: args.key.clone(),
    };
    // This node's certificate (with TLS) from the config's [tls] section
    // or the flags: the config's paths name a node by its id, so a node
    // the config does not list finds its own files the same way.
    let tls = pact_client::Tls::for_node(&config, id, &flags)?;
    let config = if config.node(id).is_none() {
        rt.block_on(join(config, id, tls.clone()))?
    } else {
        // Metadata nodes too (the group moves, so they can be removed),
        // except on their first start: the whole cluster starting, the
        // table has no leader to answer for a moment.
        if !config.meta_replicas().contains(&id) || has_run_before(&args.data_dir) {
            rt.block_on(refuse_if_removed(&config, id, tls.clone()))?;
        }
        config
    };
    let (shards, _) = roles(&config, id).map_err(anyhow::Error::msg)?;
    let Some(me) = config.node(id) else {
        bail!("node {id} is not in the cluster config");
    };
    let listen = pact_raft::server::listen_addr(args.listen, &me.addr, "node address", "--listen")
        .map_err(anyhow::Error::msg)?;
    let peer_listen = pact_raft::server::listen_addr(
        args.peer_listen,
        &me.peer_addr,
        "node peer address",
        "--peer-listen",
    )
    .map_err(anyhow::Error::msg)?;
    // Before a port is bound or the store opened: a second process on the
    // same data dir is refused with the first one's pid. Held until exit.
    let _dir_lock = pact_common::dirlock::DirLock::acquire(&args.data_dir)?;
    rt.block_on(run(Run {
        config,
        id,
        shards,
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
    shards: Vec<ShardId>,
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
        shards,
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
    // Opening the store replays fjall's journal: not on an async worker.
    // Every group of this node shares the store (one writer thread, one
    // fsync per round for all of them) and the router (one Raft service
    // routing by group id; the config keeps this node's group ids apart).
    let host = {
        let (dir, limits) = (data_dir.clone(), config.storage.clone());
        let peer_tls = tls.as_ref().map(|t| t.client_config());
        tokio::task::spawn_blocking(move || Host::open(&dir, &limits, peer_tls))
            .await
            .context("storage open task failed")??
    };
    // Every node learns how to reach every other, so a replica added to it
    // later can talk to its group whichever nodes that group is on.
    host.set_directory(pact_raft::members(
        &config,
        &config.nodes.iter().map(|n| n.id).collect::<Vec<_>>(),
    ));
    // With TLS the peer port admits the directory's nodes: the config's
    // now, the member table's live members once read (nodes added at run
    // time in, removed ones out).
    peer_auth.trust_directory(host.directory());
    if !config.meta_replicas().is_empty() {
        // Empty replicas wait for the shard table before they decide.
        host.directory().expect_table();
    }
    // The member table: hosted here on the first coordinator group's
    // nodes, asked of its leader elsewhere; every node keeps its directory
    // equal to it, so nodes added at run time are reached.
    // The metadata group's replica: the config's (the first coordinator
    // group's nodes) unless an operator moved it away, or one an operator
    // added here at run time (the node's own records say, as for shards).
    let meta_client = pact_client::Client::new(
        &config,
        pact_client::ClientOptions {
            tls: tls.clone(),
            retry_for: Duration::from_secs(5),
            resolver: Some(pact_client::Resolver({
                let dir = host.directory();
                Arc::new(move |n: NodeId| dir.addrs(n.0))
            })),
            ..pact_client::ClientOptions::default()
        },
    );
    let meta = pact_meta::MetaSlot::default();
    if let Some(joined) = meta_plan(&config, id, &host).await? {
        let m =
            pact_meta::MetaGroup::start_on(&config, id, &host, meta_client.clone(), joined).await?;
        // The table as last applied here, before the replicas that may
        // name added nodes start.
        match m.local_members().await {
            Ok(t) if !t.is_empty() => {
                host.set_directory(pact_meta::group::directory_entries(&t, &config))
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "member table not read at start"),
        }
        meta.set(Some(m));
    }
    let has_meta = !config.meta_replicas().is_empty();
    pact_meta::keep_directory(
        host.directory(),
        meta.clone(),
        has_meta.then(|| meta_client.clone()),
        config.clone(),
    );
    // A node runs its shard service even with no shard yet: an operator
    // can add replicas to it.
    let node = Some(Arc::new(
        Node::start_on(config.clone(), id, &host, tls.clone()).await?,
    ));
    // Replicas of shards the metadata group retired go, here as on every
    // node (a node down then drops its own once its directory is read).
    if let Some(n) = &node {
        pact_participant::node::keep_dropping_retired(n);
    }
    // The coordinator group replica: the config's, unless an operator
    // removed it, or one an operator added at run time (the node's own
    // records say, as for shards).
    let group = coordinator_plan(&config, id, &host).await?;
    let coordinator = match &group {
        Some((g, joined)) => Some(
            Coordinator::start_group(
                config.clone(),
                id,
                *g,
                joined.clone(),
                &host,
                tls.clone(),
                node.clone().map(ParticipantService::local),
            )
            .await?,
        ),
        None => None,
    };
    let group = group.map(|(g, _)| g);
    let hosted = pact_coordinator::Hosted::default();
    hosted.set(coordinator.clone());
    // One page and one readiness for every group of the node, those
    // added at run time included.
    let replicas = host.replicas.clone();
    let mut services = Vec::new();
    if node.is_some() {
        services.push(pact_proto::kv_server::SERVICE_NAME);
    }
    if coordinator.is_some() {
        services.push(pact_proto::txn_server::SERVICE_NAME);
    }
    let mut endpoint =
        pact_raft::endpoint::Endpoint::new(replicas.clone()).context("setting up metrics")?;
    if let Some(n) = &node {
        let n = n.clone();
        endpoint = endpoint
            .with_registry(n.metrics.registry.clone())
            .on_scrape(move || n.refresh_metrics());
    }
    // The coordinator replica the node runs at the scrape: one added at
    // run time included.
    {
        let hosted = hosted.clone();
        endpoint = endpoint.with_registries_from(move || {
            hosted
                .get()
                .map(|c| {
                    c.refresh_metrics();
                    vec![c.metrics.registry.clone()]
                })
                .unwrap_or_default()
        });
    }
    if let Some(addr) = metrics_listen {
        let addr = endpoint
            .serve(addr)
            .await
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        tracing::info!(%addr, "metrics at http://{addr}/metrics, probes at /healthz and /readyz");
    }
    let health = endpoint.grpc_health(&services).await;
    let shard_ids: Vec<u64> = shards.iter().map(|s| s.0).collect();
    tracing::info!(node = %id, %listen, %peer_listen, tls = tls.is_some(), data_dir = %data_dir.display(), shards = ?shard_ids, coordinator_group = ?group, "pact started");
    // Clients get Kv and Txn only; Raft and the transaction protocol (whose
    // Decide could commit another client's prepared transaction) only on
    // the peer port.
    pact_raft::balance::spawn(host.router.clone(), id, &config.raft);
    let shard_host = node.clone().map(|node| {
        Arc::new(ShardHost {
            node,
            config: Arc::new(config.clone()),
            coordinator: hosted.clone(),
            meta: meta.clone(),
            meta_client: meta_client.clone(),
            hosting: Default::default(),
            host: host.clone(),
            tls: tls.clone(),
        })
    });
    if let Some(sh) = &shard_host {
        // A replica removed while this node was down is dropped when its
        // group's leader says so (see `pact_raft::Removals`).
        let sh = Arc::downgrade(sh);
        host.removals.set_hook(Arc::new(move |r| {
            if let Some(sh) = sh.upgrade() {
                tokio::spawn(async move { sh.drop_removed(r).await });
            }
        }));
        // A learner or a rejoining replica never campaigns, so it would
        // never hear that word: it asks once it has heard no leader.
        host.keep_asking_if_removed(REMOVAL_RETRY);
    }
    let client_server = client_builder
        .add_service(health)
        .add_service(pact_raft::admin::AdminService::with_host(
            host.router.clone(),
            &config,
            id.0,
            shard_host.map(|sh| sh as Arc<dyn pact_raft::admin::GroupHost>),
            Some(host.directory()),
        ))
        .add_optional_service(has_meta.then(|| {
            pact_meta::service::MetaService::new(meta.clone(), host.directory(), id.0, &config)
        }))
        .add_optional_service(node.clone().map(KvService::new))
        .add_service(TxnService::hosted(hosted.clone()))
        .serve_with_incoming_shutdown(
            pact_raft::server::incoming(listener),
            pact_raft::server::shutdown_signal(),
        );
    let peer_server = peer_builder
        .add_service(host.router.service())
        .add_optional_service(node.clone().map(ParticipantService::new))
        .serve_with_incoming_shutdown(
            pact_raft::server::incoming(peer_listener),
            pact_raft::server::shutdown_signal(),
        );
    let server = async { tokio::try_join!(client_server, peer_server) };
    let stopped = {
        let (node, hosted) = (node.clone(), hosted.clone());
        pact_raft::server::fence_when_stopped(replicas, move || {
            node.as_ref()
                .and_then(|n| n.fatal())
                .or_else(|| hosted.get().and_then(|c| c.fatal()))
        })
    };
    server.await.context("grpc server failed")?;
    let stopped = stopped.reason();
    if let Some(n) = &node {
        n.shutdown().await;
    }
    if let Some(c) = hosted.get() {
        c.replica().shutdown().await;
    }
    if let Some(m) = meta.get() {
        m.replica().shutdown().await;
    }
    if let Some(f) = stopped {
        tracing::error!(reason = %f, "pact stopped after a storage failure");
        std::process::exit(pact_raft::server::EXIT_STOPPED);
    }
    tracing::info!("pact stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_runs_what_the_config_gives_it_or_waits_as_a_spare() {
        let combined = ClusterConfig::local_combined(3, 3, 3, 7001).unwrap();
        assert_eq!(
            roles(&combined, NodeId(2)),
            Ok((vec![ShardId(1), ShardId(2), ShardId(3)], Some(4)))
        );
        let split = ClusterConfig::local_with_coordinators(3, 3, 3, 3, 7001).unwrap();
        assert_eq!(
            roles(&split, NodeId(1)),
            Ok((vec![ShardId(1), ShardId(2), ShardId(3)], None))
        );
        assert_eq!(roles(&split, NodeId(5)), Ok((vec![], Some(1))));
        let err = roles(&split, NodeId(9)).unwrap_err();
        assert!(err.contains("node 9 is not in the cluster config"), "{err}");
        // A node listed in [[nodes]] that no shard or group names: a spare,
        // which runs and waits for replicas to be added to it.
        let mut idle = split.clone();
        idle.nodes.push(pact_common::NodeConfig {
            id: NodeId(7),
            addr: "127.0.0.1:7100".into(),
            peer_addr: "127.0.0.1:7101".into(),
        });
        idle.validate().unwrap();
        assert_eq!(roles(&idle, NodeId(7)), Ok((vec![], None)));
    }
}
