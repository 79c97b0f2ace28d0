//! A participant node: this node's replica of every shard assigned to it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use pact_common::{
    validate_batch, validate_key, ClusterConfig, NodeId, ShardId, ShardMap, MAX_SCAN_LIMIT,
};
use pact_raft::{Host, NodeStore, Replica, ReplicaStatus, Router, Tuning};

use crate::kv::{data_end, data_key, KvApp, ShardCommand, WriteOp};
use crate::Error;

/// Default number of pairs a scan returns when the request sets no limit.
pub const DEFAULT_SCAN_LIMIT: u32 = 1000;

pub struct Node {
    id: NodeId,
    config: Arc<ClusterConfig>,
    map: ShardMap,
    replicas: BTreeMap<ShardId, Replica>,
    router: Router,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

pub fn tuning(config: &ClusterConfig) -> Tuning {
    let r = &config.raft;
    Tuning {
        heartbeat_ms: r.heartbeat_ms,
        election_timeout_min_ms: r.election_timeout_min_ms,
        election_timeout_max_ms: r.election_timeout_max_ms,
        snapshot_logs: r.snapshot_logs,
        keep_logs: r.keep_logs,
    }
}

impl Node {
    /// Open the node's storage under `data_dir` and start (or recover) its
    /// replica of every shard the config assigns to `id`.
    pub async fn start(config: ClusterConfig, id: NodeId, data_dir: &Path) -> Result<Node, Error> {
        if config.node(id).is_none() {
            return Err(Error::InvalidInput(format!(
                "node {id} is not in the cluster config"
            )));
        }
        let store = NodeStore::open(data_dir).map_err(|e| {
            Error::Fatal(format!(
                "cannot open storage at {}: {e}",
                data_dir.display()
            ))
        })?;
        let host = Host::new(store);
        let tuning = tuning(&config);
        let mut replicas = BTreeMap::new();
        let app = Arc::new(KvApp);
        for shard in config.shards_of_node(id) {
            let Some(sc) = config.shard(shard) else {
                continue;
            };
            let members = sc
                .replicas
                .iter()
                .filter_map(|n| config.node(*n).map(|nc| (n.0, nc.addr.clone())))
                .collect();
            let r = Replica::start(shard.0, id.0, members, &tuning, app.clone(), &host).await?;
            replicas.insert(shard, r);
        }
        Ok(Node {
            id,
            map: config.shard_map(),
            config: Arc::new(config),
            replicas,
            router: host.router,
        })
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    pub fn replicas(&self) -> impl Iterator<Item = &Replica> {
        self.replicas.values()
    }

    fn replica(&self, shard: ShardId) -> Result<&Replica, Error> {
        if self.config.shard(shard).is_none() {
            return Err(Error::UnknownShard(shard.0));
        }
        // A shard that exists but is not hosted here: the caller asked the
        // wrong node; it should try the shard's replicas.
        self.replicas
            .get(&shard)
            .ok_or(Error::NotLeader { hint: None })
    }

    fn check_owner(&self, shard: ShardId, key: &[u8]) -> Result<(), Error> {
        let owner = self.map.shard_for_key(key);
        if owner != shard {
            return Err(Error::InvalidInput(format!(
                "key belongs to shard {owner}, not shard {shard}"
            )));
        }
        Ok(())
    }

    /// Linearizable read of one key.
    pub async fn get(&self, shard: ShardId, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        validate_key(key)?;
        let r = self.replica(shard)?;
        self.check_owner(shard, key)?;
        r.read_barrier().await?;
        Ok(r.get_local(&data_key(key)).await?)
    }

    /// Linearizable read of the shard's keys in `[start, end)`; returns the
    /// pairs and whether the limit cut the scan short.
    pub async fn scan(
        &self,
        shard: ShardId,
        start: &[u8],
        end: Option<&[u8]>,
        limit: u32,
    ) -> Result<(Vec<(Vec<u8>, Vec<u8>)>, bool), Error> {
        if limit > MAX_SCAN_LIMIT {
            return Err(Error::InvalidInput(format!(
                "scan limit {limit} is over the maximum {MAX_SCAN_LIMIT}"
            )));
        }
        let limit = if limit == 0 {
            DEFAULT_SCAN_LIMIT
        } else {
            limit
        } as usize;
        let r = self.replica(shard)?;
        r.read_barrier().await?;
        let from = data_key(start);
        let to = match end {
            Some(e) => data_key(e),
            None => data_end(),
        };
        // One extra pair tells whether there is more.
        let mut pairs = r.scan_local(from, Some(to), limit + 1).await?;
        let more = pairs.len() > limit;
        pairs.truncate(limit);
        Ok((
            pairs
                .into_iter()
                .map(|(k, v)| (k[1..].to_vec(), v))
                .collect(),
            more,
        ))
    }

    /// Atomically apply a batch of puts and deletes on one shard.
    pub async fn write(&self, shard: ShardId, ops: Vec<WriteOp>) -> Result<u64, Error> {
        if ops.is_empty() {
            return Err(Error::InvalidInput("empty write batch".into()));
        }
        validate_batch(ops.iter().map(|op| match op {
            WriteOp::Put { key, value } => (key.as_slice(), Some(value.as_slice())),
            WriteOp::Delete { key } => (key.as_slice(), None),
        }))?;
        let r = self.replica(shard)?;
        for op in &ops {
            self.check_owner(shard, op.key())?;
        }
        let (index, _) = r.propose(ShardCommand::Write { ops }.encode()).await?;
        Ok(index)
    }

    pub fn status(&self, shard: ShardId) -> Result<ReplicaStatus, Error> {
        Ok(self.replica(shard)?.status())
    }

    /// The first fatal error of any replica, if one stopped.
    pub fn fatal(&self) -> Option<String> {
        self.replicas
            .values()
            .find_map(|r| r.fatal().map(|f| format!("shard {}: {f}", r.group())))
    }

    pub async fn shutdown(&self) {
        for r in self.replicas.values() {
            r.shutdown().await;
        }
    }
}
