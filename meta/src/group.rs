//! This node's replica of the metadata group, and the task that keeps a
//! node's directory of members up to date.

use std::sync::Arc;
use std::time::Duration;

use pact_client::RaftGroup;
use pact_common::{ClusterConfig, NodeId, META_GROUP};
use pact_raft::{Directory, Host, Replica, ReplicaError, ShardTable, Tuning};

use crate::machine::{
    check_new, decode, encode, epoch_key, epoch_of, group_range, groups_of, members_of, node_range,
    retired_of, retired_range, shard_range, shards_of, Member, MetaApp, MetaCommand, MetaReply,
};
use crate::Error;

/// How often a node refreshes its directory from the member table.
pub const DIRECTORY_EVERY: Duration = Duration::from_secs(1);

/// How often the group's leader asks every shard for its descriptor and
/// voters, to record what changed: the longest a split, merge or replica
/// move takes to reach the shard table (a shard without a leader then,
/// longer).
pub const SHARDS_EVERY: Duration = Duration::from_secs(2);

/// How long one look at a coordinator group may take.
const GROUP_LOOK_WITHIN: Duration = Duration::from_secs(2);

/// This node's replica of the metadata group.
pub struct MetaGroup {
    replica: Replica,
    /// Asks the shards whether a node to be removed still replicates one.
    shards: pact_client::Client,
    /// Notified when the applied table may have changed.
    changed: Arc<tokio::sync::Notify>,
    /// Set once the replica was removed here: its background tasks stop
    /// (a stopped replica's leadership watch keeps its last value).
    retired: std::sync::atomic::AtomicBool,
    /// The coordinator groups, whose leaders are asked whether a node to
    /// be removed still replicates one.
    coordinators: Vec<u64>,
}

/// The config's nodes as the table's first members.
pub fn seeds(config: &ClusterConfig) -> Vec<Member> {
    config
        .nodes
        .iter()
        .map(|n| Member {
            id: n.id.0,
            addr: n.addr.clone(),
            peer_addr: n.peer_addr.clone(),
            removed: false,
        })
        .collect()
}

/// The metadata group replica a `pact` node runs now, if any: the one its
/// config gives it (the first coordinator group's nodes), or one an
/// operator added at run time (`txn admin replica add meta NODE`); empty
/// once it was removed.
pub type MetaSlot = pact_common::Slot<MetaGroup>;

impl MetaGroup {
    /// Start (or restart) node `id`'s replica of the metadata group: with
    /// `joined` None, one of the config's (the first coordinator group's
    /// nodes); else one added at run time to the group whose voters were
    /// `joined` then (it waits, empty, for the leader to add it). Its
    /// leaders seed the table with the config's nodes (the first seed
    /// applied wins).
    pub async fn start_on(
        config: &ClusterConfig,
        id: NodeId,
        host: &Host,
        shards: pact_client::Client,
        joined: Option<Vec<NodeId>>,
    ) -> Result<Arc<MetaGroup>, Error> {
        let tuning = Tuning::from(&config.raft);
        let changed = Arc::new(tokio::sync::Notify::new());
        let app = Arc::new(MetaApp {
            changed: changed.clone(),
        });
        let replica = match joined {
            None => {
                let replicas = config.meta_replicas();
                if !replicas.contains(&id) {
                    return Err(Error::InvalidInput(format!(
                        "node {id} is not a replica of the metadata group in the config (the \
                         first coordinator group's nodes: {replicas:?})"
                    )));
                }
                let members = pact_raft::members(config, &replicas);
                Replica::start(META_GROUP, id.0, members, &tuning, app, host).await?
            }
            Some(voters) => {
                let members = host.members_of(config, &voters);
                Replica::start_joined(META_GROUP, id.0, members, &tuning, app, host).await?
            }
        };
        let group = Arc::new(MetaGroup {
            replica,
            shards,
            changed,
            retired: Default::default(),
            coordinators: config.coordinators.iter().map(|g| g.group).collect(),
        });
        tokio::spawn(seed_when_leading(group.clone(), seeds(config)));
        tokio::spawn(while_leading(group.clone(), SHARDS_EVERY, record_shards));
        if config.raft.retire_merged_secs > 0 {
            let every = Duration::from_secs(config.raft.retire_merged_secs);
            tokio::spawn(while_leading(group.clone(), every, retire_merged));
        }
        Ok(group)
    }

    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    fn is_retired(&self) -> bool {
        self.retired.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stop this replica for good and delete its data (the group no
    /// longer counts this node: the admin service checks). Its background
    /// tasks end with the replica's leadership watch.
    pub async fn retire(&self, host: &Host) -> Result<(), Error> {
        self.replica.remove_here(host).await?;
        // Its tasks stop: what they would record is the remaining
        // replicas' leader's to record.
        self.retired
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.changed.notify_waiters();
        Ok(())
    }

    /// The table as this replica has applied it (possibly behind the
    /// leader): for the directory, which a moment's lag does not harm.
    pub async fn local_members(&self) -> Result<Vec<Member>, Error> {
        let (start, end) = node_range();
        let pairs = self
            .replica
            .scan_local(start, Some(end), usize::MAX)
            .await?;
        members_of(&pairs).map_err(Error::Fatal)
    }

    /// The table, linearizably (at the leader).
    pub async fn members(&self) -> Result<Vec<Member>, Error> {
        self.replica.read_barrier().await?;
        self.local_members().await
    }

    /// The shard table as this replica has applied it: (epoch, records
    /// sorted by shard).
    pub async fn local_shards(&self) -> Result<ShardTable, Error> {
        let shards = shards_of(&self.scan(shard_range()).await?).map_err(Error::Fatal)?;
        let epoch = self.replica.get_local(epoch_key()).await?;
        let epoch = epoch_of(epoch.as_deref()).map_err(Error::Fatal)?;
        let groups = groups_of(&self.scan(group_range()).await?).map_err(Error::Fatal)?;
        let retired = retired_of(&self.scan(retired_range()).await?).map_err(Error::Fatal)?;
        Ok(ShardTable {
            epoch,
            shards,
            groups,
            retired,
        })
    }

    /// Every pair of `[start, end)` as this replica has applied it.
    async fn scan(
        &self,
        (start, end): (Vec<u8>, Vec<u8>),
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, Error> {
        Ok(self
            .replica
            .scan_local(start, Some(end), usize::MAX)
            .await?)
    }

    /// The shard table, linearizably (at the leader).
    pub async fn shards(&self) -> Result<ShardTable, Error> {
        self.replica.read_barrier().await?;
        self.local_shards().await
    }

    /// One look at every shard: record what its leader says now where it
    /// is newer than the table. Shards recorded as merged are not asked
    /// (merged is final); a shard that does not answer keeps its record.
    async fn record_shards(self: &Arc<Self>) -> Result<usize, Error> {
        let table = self.local_shards().await?;
        let merged: std::collections::BTreeSet<pact_common::ShardId> = table
            .shards
            .iter()
            .filter(|r| r.descriptor.span.is_empty())
            .map(|r| r.descriptor.shard)
            .collect();
        // Coordinator groups are asked alongside, each with a short limit:
        // a silent one holds up neither the others nor the shards.
        let group_looks = futures::future::join_all(self.coordinators.iter().map(|g| {
            let also: Vec<u64> = table
                .groups
                .iter()
                .find(|r| r.group == *g)
                .map(|r| r.voters.clone())
                .unwrap_or_default();
            async move {
                let r =
                    tokio::time::timeout(GROUP_LOOK_WITHIN, self.shards.group_record(*g, &also))
                        .await;
                (*g, r)
            }
        }));
        let ((seen, failed), group_looks) = tokio::join!(
            self.shards.shard_records(&table.shards, &merged),
            group_looks
        );
        for (shard, e) in &failed {
            tracing::debug!(%shard, error = %e, "shard not described; its record is kept");
        }
        // The coordinator groups' voters too (they move as shards do).
        let mut groups = Vec::new();
        for (g, look) in group_looks {
            match look {
                Ok(Ok(r)) if !r.voters.is_empty() => {
                    let old = table.groups.iter().find(|o| o.group == g);
                    if old.is_none_or(|o| r.newer_than(o)) {
                        groups.push(r);
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(group = g, error = %e, "coordinator group not described")
                }
                Err(_) => tracing::debug!(group = g, "coordinator group did not answer in time"),
            }
        }
        // And this group's own voters, read here at its leader: where to
        // find it once it moved off the config's nodes.
        let (voters, voters_at) = self.replica.committed_voters();
        let own = pact_common::GroupRecord {
            group: META_GROUP,
            voters,
            voters_at,
        };
        if !own.voters.is_empty()
            && table
                .groups
                .iter()
                .find(|o| o.group == META_GROUP)
                .is_none_or(|o| own.newer_than(o))
        {
            groups.push(own);
        }
        let mut proposed = 0;
        if !groups.is_empty() {
            proposed += groups.len();
            let bytes = encode(&MetaCommand::Groups(groups)).map_err(Error::InvalidInput)?;
            self.replica.propose(bytes).await?;
        }
        let newer: Vec<pact_common::ShardRecord> = seen
            .into_iter()
            .filter(|r| {
                table
                    .shards
                    .iter()
                    .find(|o| o.descriptor.shard == r.descriptor.shard)
                    .is_none_or(|o| r.newer_than(o))
            })
            .collect();
        if newer.is_empty() {
            return Ok(proposed);
        }
        let n = newer.len();
        let bytes = encode(&MetaCommand::Shards(newer)).map_err(Error::InvalidInput)?;
        self.replica.propose(bytes).await?;
        Ok(proposed + n)
    }

    /// Retire merged shard `shard`: its leader checks that it may go and
    /// says what it answers (`Kv.Retirable`), and the record is applied
    /// here; every node then answers for the shard and drops its replica.
    /// Idempotent: a shard retired already answers its first record.
    pub async fn retire_shard(
        self: &Arc<Self>,
        shard: pact_common::ShardId,
    ) -> Result<pact_common::RetiredShard, Error> {
        if let Some(r) = self.shards().await?.retired(shard) {
            return Ok(r.clone());
        }
        let r = self
            .shards
            .retirable(shard)
            .await
            .map_err(Error::from_client)?;
        if r.shard != shard {
            return Err(Error::Fatal(format!(
                "asked whether shard {shard} may retire, its leader answered for shard {}",
                r.shard
            )));
        }
        self.apply(MetaCommand::Retire(r)).await?;
        self.local_shards()
            .await?
            .retired(shard)
            .cloned()
            .ok_or_else(|| {
                Error::Fatal(format!("shard {shard}'s retirement applied but not found"))
            })
    }

    /// Apply `cmd` through the log, and say whether the machine took it.
    async fn apply(self: &Arc<Self>, cmd: MetaCommand) -> Result<(), Error> {
        let bytes = encode(&cmd).map_err(Error::InvalidInput)?;
        // Owned: a caller that gives up leaves the proposal to its fate in
        // the log (every change is idempotent, so asking again is safe).
        let me = self.clone();
        let (_, reply) = tokio::spawn(async move { me.replica.propose(bytes).await })
            .await
            .map_err(|e| Error::Fatal(format!("proposal task failed: {e}")))??;
        match decode::<MetaReply>(&reply).map_err(Error::Fatal)? {
            MetaReply::Done => Ok(()),
            MetaReply::Refused(why) => Err(Error::InvalidInput(why)),
            MetaReply::NotYet(why) => Err(Error::Unavailable(why)),
        }
    }

    /// Apply a change of the member table through the log; the table after.
    async fn change(self: &Arc<Self>, cmd: MetaCommand) -> Result<Vec<Member>, Error> {
        self.apply(cmd).await?;
        self.local_members().await
    }

    /// One round of retiring merged shards by themselves: every shard
    /// the table shows owning nothing and not yet retired is asked, as
    /// `retire_shard` asks (its leader decides whether it may go; the
    /// table is only where the candidates come from). Returns the shards
    /// retired; one that may not go yet is asked again next round.
    async fn retire_merged(self: &Arc<Self>) -> Result<Vec<pact_common::ShardId>, Error> {
        let table = self.local_shards().await?;
        let merged: Vec<pact_common::ShardId> = table
            .shards
            .iter()
            .map(|r| &r.descriptor)
            .filter(|d| d.span.is_empty() && table.retired(d.shard).is_none())
            .map(|d| d.shard)
            .collect();
        let mut retired = Vec::new();
        for shard in merged {
            match self.retire_shard(shard).await {
                Ok(_) => retired.push(shard),
                // A replica whose apply failed stops itself; its
                // leadership watch then ends this task. A malformed
                // answer is the shard's fault, not the table's: the
                // others are still asked.
                Err(e @ Error::Fatal(_)) => tracing::warn!(
                    shard = shard.0,
                    error = %e,
                    "merged shard not retired; will ask again"
                ),
                Err(e) => tracing::debug!(
                    shard = shard.0,
                    error = %e,
                    "merged shard not retired yet; will ask again"
                ),
            }
        }
        Ok(retired)
    }

    /// Add a member (see [`MetaCommand::Add`]); what does not depend on
    /// the table is checked here, before anything is proposed.
    pub async fn add(
        self: &Arc<Self>,
        id: u64,
        addr: String,
        peer_addr: String,
    ) -> Result<Vec<Member>, Error> {
        let m = Member {
            id,
            addr,
            peer_addr,
            removed: false,
        };
        check_new(&m).map_err(Error::InvalidInput)?;
        self.change(MetaCommand::Add(m)).await
    }

    /// Mark a member removed. Refused for a node in this group's
    /// membership (as this replica, the leader once the removal is
    /// proposed, knows it), and for one that a shard or a coordinator
    /// group counts among its voters, or while one cannot say (its leader
    /// asked, as the client asks it). A replica added between this check
    /// and the removal is not caught: move replicas first.
    pub async fn remove(self: &Arc<Self>, id: u64) -> Result<Vec<Member>, Error> {
        if self.replica.member_ids().contains(&id) {
            return Err(Error::InvalidInput(format!(
                "node {id} still replicates the metadata group: move it away first (txn admin \
                 replica move meta {id} OTHER_NODE), then remove it"
            )));
        }
        // Every group's leader, all at once; retired shards have none (and
        // any node answers for them). The shards this group's table lists
        // as well as those its client knows: a split the client has not
        // heard of yet is in the table.
        let table = self.shards().await?;
        let mut known: std::collections::BTreeSet<pact_common::ShardId> =
            self.shards.shards().into_iter().collect();
        known.extend(table.shards.iter().map(|r| r.descriptor.shard));
        let groups: Vec<RaftGroup> = known
            .into_iter()
            .filter(|s| table.retired(*s).is_none())
            .map(RaftGroup::Shard)
            .chain(self.coordinators.iter().map(|g| RaftGroup::Coordinator(*g)))
            .collect();
        let views =
            futures::future::join_all(groups.iter().map(|g| self.shards.leader_voters(*g))).await;
        let (mut shards, mut coords) = (Vec::new(), Vec::new());
        for (group, view) in groups.into_iter().zip(views) {
            match (view, group) {
                (Ok(v), RaftGroup::Shard(s)) if v.contains(&NodeId(id)) => {
                    shards.push(s.0.to_string())
                }
                (Ok(v), RaftGroup::Coordinator(g)) if v.contains(&NodeId(id)) => {
                    coords.push(g.to_string())
                }
                (Ok(_), _) => {}
                (Err(e), _) => {
                    return Err(Error::Unavailable(format!(
                        "cannot tell whether node {id} replicates {group}: {e}"
                    )))
                }
            }
        }
        if !shards.is_empty() {
            return Err(Error::InvalidInput(format!(
                "node {id} still replicates shard(s) {}: move them away first (txn admin \
                 replica move SHARD {id} OTHER_NODE), then remove it",
                shards.join(", ")
            )));
        }
        if !coords.is_empty() {
            return Err(Error::InvalidInput(format!(
                "node {id} still replicates coordinator group(s) {}: move them away first \
                 (txn admin replica move --coord GROUP {id} OTHER_NODE), then remove it",
                coords.join(", ")
            )));
        }
        self.change(MetaCommand::Remove { id }).await
    }
}

/// Whenever this replica becomes leader, propose the seed until it is
/// applied (a no-op once any seed was).
async fn seed_when_leading(group: Arc<MetaGroup>, seeds: Vec<Member>) {
    let Ok(cmd) = encode(&MetaCommand::Seed(seeds)) else {
        tracing::error!("cannot encode the metadata group's seed");
        return;
    };
    let mut leadership = group.replica.leadership();
    loop {
        if leadership.borrow_and_update().is_some() && !group.is_retired() {
            // Until applied, or this replica no longer leads (the next
            // leader proposes it then).
            while let Err(e) = group.replica.propose(cmd.clone()).await {
                tracing::debug!(error = %e, "seeding the member table; will retry");
                // A stopped replica stays stopped (its leadership watch
                // keeps its last value once the core is gone).
                if leadership.borrow().is_none()
                    || group.is_retired()
                    || matches!(e, ReplicaError::Fatal(_))
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        if leadership.changed().await.is_err() {
            return;
        }
    }
}

/// Look at every shard and record what changed ([`SHARDS_EVERY`]).
async fn record_shards(group: Arc<MetaGroup>) -> Result<Option<String>, Error> {
    Ok(match group.record_shards().await? {
        0 => None,
        n => Some(format!("shard table updated ({n} record(s))")),
    })
}

/// Retire the merged shards that may go (`raft.retire_merged_secs`).
async fn retire_merged(group: Arc<MetaGroup>) -> Result<Option<String>, Error> {
    let shards = group.retire_merged().await?;
    let ids: Vec<String> = shards.iter().map(|s| s.to_string()).collect();
    Ok((!ids.is_empty())
        .then(|| format!("merged shard(s) {} retired by themselves", ids.join(", "))))
}

/// While this replica leads, run `round` every `every` (the next leader
/// takes over where it stops: every round starts from the replicated
/// table). A fatal error (the replica's state unreadable) ends it.
async fn while_leading<F, Fut>(group: Arc<MetaGroup>, every: Duration, round: F)
where
    F: Fn(Arc<MetaGroup>) -> Fut,
    Fut: std::future::Future<Output = Result<Option<String>, Error>>,
{
    let mut leadership = group.replica.leadership();
    loop {
        while leadership.borrow_and_update().is_some() {
            if group.is_retired() {
                return;
            }
            match round(group.clone()).await {
                Ok(None) => {}
                Ok(Some(what)) => tracing::info!("{what}"),
                Err(Error::Fatal(e)) => {
                    tracing::error!(error = %e, "metadata table unreadable; this job stops");
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "metadata job round failed; will retry"),
            }
            tokio::time::sleep(every).await;
        }
        if leadership.changed().await.is_err() {
            return;
        }
    }
}

/// The directory: the live members (removed ones left out), with the
/// config's addresses for the nodes it lists (an address edited in the
/// file wins over the one the table was seeded with).
pub fn directory_entries(members: &[Member], config: &ClusterConfig) -> Vec<pact_raft::Member> {
    members
        .iter()
        .filter(|m| !m.removed)
        .map(|m| match config.node(NodeId(m.id)) {
            Some(n) => pact_raft::Member {
                id: m.id,
                peer_addr: n.peer_addr.clone(),
                client_addr: n.addr.clone(),
            },
            None => pact_raft::Member {
                id: m.id,
                peer_addr: m.peer_addr.clone(),
                client_addr: m.addr.clone(),
            },
        })
        .collect()
}

/// Where a node reads the member table from: its own replica of the
/// metadata group, or the group's leader through a client.
#[derive(Clone)]
pub enum Source {
    Local(Arc<MetaGroup>),
    Remote(pact_client::Client),
}

impl Source {
    pub async fn shards(&self) -> Result<ShardTable, String> {
        match self {
            Source::Local(g) => g.local_shards().await.map_err(|e| e.to_string()),
            Source::Remote(c) => c.meta_shards().await.map_err(|e| e.to_string()),
        }
    }

    pub async fn members(&self) -> Result<Vec<Member>, String> {
        match self {
            Source::Local(g) => g.local_members().await.map_err(|e| e.to_string()),
            Source::Remote(c) => c
                .members()
                .await
                .map(|v| {
                    v.into_iter()
                        .map(|m| Member {
                            id: m.id,
                            addr: m.addr,
                            peer_addr: m.peer_addr,
                            removed: m.removed,
                        })
                        .collect()
                })
                .map_err(|e| e.to_string()),
        }
    }
}

/// Keep `directory` equal to the member table, read every
/// [`DIRECTORY_EVERY`] from this node's own replica of the metadata group
/// while `slot` holds one that knows a leader (and as soon as a change is
/// applied there), else
/// from the group's leader through `remote` (None: a cluster without a
/// metadata group); an empty table (not seeded yet) or a failed read
/// leaves it as it was. Runs until the runtime ends.
pub fn keep_directory(
    directory: Directory,
    slot: MetaSlot,
    remote: Option<pact_client::Client>,
    config: ClusterConfig,
) {
    tokio::spawn(async move {
        loop {
            // The local replica only while it hears from a leader: one
            // left over (removed while its node was down, or added and
            // never made a member) or behind a rejoin gate is not kept
            // current, and reading it would freeze the directory.
            let local = slot.get().filter(|g| g.replica().status().leader.is_some());
            let source = match (&local, &remote) {
                (Some(g), _) => Some(Source::Local(g.clone())),
                (None, Some(c)) => Some(Source::Remote(c.clone())),
                (None, None) => None,
            };
            if let Some(source) = source {
                match source.members().await {
                    Ok(m) if !m.is_empty() => {
                        directory.set_removed(m.iter().filter(|m| m.removed).map(|m| m.id));
                        directory.set(directory_entries(&m, &config));
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "member table not read; directory kept"),
                }
                match source.shards().await {
                    Ok(t) => directory.set_shards(t),
                    Err(e) => tracing::debug!(error = %e, "shard table not read; directory kept"),
                }
            }
            match &local {
                Some(g) => {
                    let _ = tokio::time::timeout(DIRECTORY_EVERY, g.changed.notified()).await;
                }
                None => tokio::time::sleep(DIRECTORY_EVERY).await,
            }
        }
    });
}
