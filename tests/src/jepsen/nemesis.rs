//! The nemesis: faults applied to a running cluster on a seeded schedule.
//! Each fault is applied, held, then healed; the interval is logged so
//! checkers' findings and latency can be lined up with it.

use std::time::Duration;

use pact_client::{Client, RaftGroup};
use pact_common::{NodeId, ShardId};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, IteratorRandom, SliceRandom};
use rand::Rng;

use super::net::Net;
use crate::Cluster;

/// The furthest [`Fault::ClockSetBack`] turns a clock back.
const MAX_SET_BACK_MS: i64 = 60_000;

/// Every fault the suite can inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// SIGKILL a random server, restart it at heal.
    KillRandom,
    /// SIGKILL the leader of a random shard.
    KillShardLeader,
    /// SIGKILL the coordinator leader; run with the `decision-delay`
    /// server fault, it dies between prepare and decision.
    KillCoordinator,
    /// SIGSTOP a random server for longer than election timeouts.
    Pause,
    /// Cut one participant off from every other server.
    IsolateOne,
    /// Split all servers into a random majority and minority.
    MajorityMinority,
    /// Participants in a ring, each reaching only its neighbours.
    Ring,
    /// One participant's outgoing traffic is dropped; it still hears others.
    OneWay,
    /// Every coordinator cut off from the replicas of one shard.
    CoordinatorCutOffShard,
    /// Restart a random server with its wall clock skewed by up to ±60 s.
    ClockSkew,
    /// SIGKILL the coordinator leader and restart it at once with its wall
    /// clock set back (by up to 60 s, but never to before the cluster
    /// started): it comes back reading times at which it already handed
    /// out transaction ids.
    ClockSetBack,
    /// A participant dies holding a round of writes that never reached
    /// the disk (needs the `crash-before-fsync` server fault), restarted at
    /// heal.
    CrashBeforeFsync,
    /// Hand the leadership of a random shard or coordinator group to
    /// another of its replicas (`pact.v1.Admin`, as `txn admin leader
    /// transfer` or the leader balancer does), with no process harmed:
    /// transactions open at the old leader abort, prepared ones and the
    /// recovery log's records carry over to the new one.
    TransferLeader,
    /// Move a random shard's replica from one of its voters to a node
    /// that does not hold it (`txn admin replica move`: the new replica
    /// catches up as a learner, becomes a voter, then the old one is
    /// removed and drops its data), with no process harmed; one time in
    /// three, a coordinator group's replica instead (`--coord`), to a
    /// participant node that runs no coordinator replica. Needs nodes
    /// that can host replicas at run time (`Spec::spare`).
    MoveReplica,
    /// Grow or shrink the cluster, with no process harmed: if no node
    /// this fault added is still in, add one the config does not list
    /// (`txn admin member add`), start it with the same config file, and
    /// move a random shard's replica onto it; else retire that node: move
    /// its replicas to nodes that do not hold them, remove it from the
    /// member table (`txn admin member remove`), then stop its process.
    /// Needs every node run as `pact` (`Spec::spare`).
    JoinOrLeave,
    /// Split a random shard in two (`txn admin shard split`: a
    /// hash-partitioned shard at the middle of its ring share, a range
    /// shard at a key inside its range), with no process harmed:
    /// transactions holding locks in the part that moves abort, the new
    /// shard takes over those keys. At most [`MAX_SPLIT_SHARDS`] shards.
    /// Needs every node run as `pact` (`Spec::spare`).
    Split,
    /// Merge a random shard into another (`txn admin shard merge`: a range
    /// shard into the one just before it, or the first into the one after;
    /// a hash-partitioned shard into any other), with no process harmed:
    /// transactions holding locks in the merged shard abort, the other
    /// takes over its keys. When the two are not on the same nodes, the
    /// merged shard's replicas are first moved onto the other's (as the
    /// CLI does). Then every shard merged so far is retired where its
    /// records allow (`txn admin shard retire`): its group goes, and every
    /// node answers for it. With a retention short enough for records to
    /// expire within the run (`Spec::record_retention_s`), a refusal for
    /// now is asked again for up to [`RETIRE_FOR`]; else once.
    /// Needs every node run as `pact` (`Spec::spare`).
    Merge,
}

/// How long [`Fault::Merge`] keeps asking to retire the merged shards
/// (refused, CONFLICT, while a shard still holds commit outcomes).
pub const RETIRE_FOR: Duration = Duration::from_secs(10);

/// Retire every shard merged away and not retired yet, each asked again
/// while it is refused for now (CONFLICT) and [`RETIRE_FOR`] lasts if
/// `patient` (records expire within the run), else once; what happened,
/// in words.
async fn retire_merged(client: &Client, patient: bool) -> String {
    let shards = all_shards(client).await;
    let owning = client.shard_map().shards();
    let until = tokio::time::Instant::now() + RETIRE_FOR;
    let mut said = Vec::new();
    for s in shards.into_iter().filter(|s| !owning.contains(s)) {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), client.retire_shard(s)).await {
                Ok(Ok(_)) => {
                    said.push(format!("retired shard {s}"));
                    break;
                }
                Ok(Err(pact_client::ClientError::Conflict(_)))
                    if patient && tokio::time::Instant::now() < until =>
                {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Ok(Err(e)) => {
                    said.push(format!("shard {s} not retired: {e}"));
                    break;
                }
                Err(_) => {
                    said.push(format!("retiring shard {s} timed out"));
                    break;
                }
            }
        }
    }
    said.join("; ")
}

/// [`Fault::Split`] stops splitting once the cluster has this many shards.
pub const MAX_SPLIT_SHARDS: usize = 10;

/// What a fault that picks a shard does when [`all_shards`] found none:
/// the map could not be refreshed (nodes down) and every shard the client
/// knew of was merged away and retired meanwhile.
const NO_SHARD_KNOWN: &str = "no live shard known (the map could not be refreshed): nothing done";

/// Every shard there is now, those splits created included, retired ones
/// (groups gone) left out (best effort: the config's and those known so
/// far if the descriptors cannot all be read).
async fn all_shards(client: &Client) -> Vec<ShardId> {
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        client.refresh_map(&client.shard_map()),
    )
    .await;
    client.learn_retired(Duration::from_secs(2)).await;
    let retired = client.retired_shards();
    let mut all = client.shards();
    all.retain(|s| !retired.contains(s));
    all
}

impl Fault {
    pub fn needs_net(self) -> bool {
        matches!(
            self,
            Fault::IsolateOne
                | Fault::MajorityMinority
                | Fault::Ring
                | Fault::OneWay
                | Fault::CoordinatorCutOffShard
        )
    }
}

/// One applied fault, with times in seconds since the history began.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Interval {
    pub fault: Fault,
    pub start_s: f64,
    pub end_s: f64,
    pub detail: String,
}

/// What a fault left behind, for its heal.
pub enum Applied {
    Nothing,
    Killed(NodeId),
    Paused(NodeId),
    Partitioned,
}

async fn shard_leader(c: &Cluster, shard: ShardId) -> Option<NodeId> {
    let client = c.client();
    // Every node, not only the config's replicas: replicas move at run
    // time (`Fault::MoveReplica`).
    for id in c.participant_ids() {
        if let Ok(s) = client.replica_status(shard, id).await {
            if s.role == "leader" {
                return Some(id);
            }
        }
    }
    None
}

/// The leader of the config's first coordinator group.
async fn coordinator_leader(c: &Cluster) -> Option<NodeId> {
    coordinator_group_leader(c, first_coordinator_group(c)?).await
}

fn first_coordinator_group(c: &Cluster) -> Option<u64> {
    c.config.coordinators.first().map(|g| g.group)
}

/// The leader of coordinator group `group`: one of the replicas the
/// config gives it, or the node they name (its replicas may have moved).
async fn coordinator_group_leader(c: &Cluster, group: u64) -> Option<NodeId> {
    let client = c.client();
    for id in c.coordinator_ids(group) {
        if let Ok(s) = client.coordinator_group_status(group, id).await {
            if s.role == "leader" {
                return Some(id);
            }
            if let Some(l) = s.leader.map(NodeId).filter(|l| *l != id) {
                if let Ok(s) = client.coordinator_group_status(group, l).await {
                    if s.role == "leader" {
                        return Some(l);
                    }
                }
            }
        }
    }
    None
}

/// Apply `fault` to a cluster started `age` ago; returns what to undo and
/// a description.
pub async fn apply(
    fault: Fault,
    c: &mut Cluster,
    net: Option<&Net>,
    rng: &mut StdRng,
    age: Duration,
) -> (Applied, String) {
    let participants = c.participant_ids();
    let all = c.node_ids();
    match fault {
        Fault::KillRandom => {
            let id = *all.choose(rng).expect("nodes");
            c.kill(id);
            (Applied::Killed(id), format!("killed node {id}"))
        }
        Fault::KillShardLeader => {
            let shards = all_shards(&c.client()).await;
            let Some(&shard) = shards.choose(rng) else {
                return (Applied::Nothing, NO_SHARD_KNOWN.into());
            };
            match shard_leader(c, shard).await {
                Some(id) => {
                    c.kill(id);
                    (
                        Applied::Killed(id),
                        format!("killed node {id}, leader of shard {shard}"),
                    )
                }
                None => (
                    Applied::Nothing,
                    format!("shard {shard} had no leader to kill"),
                ),
            }
        }
        Fault::KillCoordinator => match coordinator_leader(c).await {
            Some(id) => {
                c.kill(id);
                (
                    Applied::Killed(id),
                    format!("killed coordinator leader {id}"),
                )
            }
            None => (Applied::Nothing, "no coordinator leader to kill".into()),
        },
        Fault::Pause => {
            let id = *all.choose(rng).expect("nodes");
            c.pause(id);
            (Applied::Paused(id), format!("paused node {id}"))
        }
        Fault::ClockSkew => {
            let id = *all.choose(rng).expect("nodes");
            let skew = rng.random_range(-60_000i64..=60_000);
            c.kill(id);
            c.set_env(id, "PACT_CLOCK_OFFSET_MS", &skew.to_string());
            c.start_node(id);
            (
                Applied::Nothing,
                format!("restarted node {id} with clock skew {skew} ms"),
            )
        }
        Fault::ClockSetBack => match coordinator_leader(c).await {
            Some(id) => {
                let before: i64 = c
                    .env(id, "PACT_CLOCK_OFFSET_MS")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                // The node's clock now reads `age + before` past the
                // cluster's start. Going back further than that lands on
                // times it never issued ids at, which a 20 s run would
                // never climb out of: turn it back into its own past.
                let lived = age.as_millis() as i64 + before;
                let most = lived.clamp(1_000, MAX_SET_BACK_MS);
                let back = rng.random_range(most / 2..=most);
                let after = before - back;
                c.kill(id);
                c.set_env(id, "PACT_CLOCK_OFFSET_MS", &after.to_string());
                c.start_node(id);
                (
                    Applied::Nothing,
                    format!(
                        "restarted coordinator leader {id} with its clock set back {back} ms (offset {after} ms)"
                    ),
                )
            }
            None => (Applied::Nothing, "no coordinator leader to restart".into()),
        },
        Fault::TransferLeader => {
            let mut groups: Vec<RaftGroup> = c
                .config
                .shards
                .iter()
                .map(|s| RaftGroup::Shard(s.id))
                .collect();
            groups.extend(
                c.config
                    .coordinators
                    .iter()
                    .map(|g| RaftGroup::Coordinator(g.group)),
            );
            let group = *groups.choose(rng).expect("groups");
            let leader = match group {
                RaftGroup::Shard(s) => shard_leader(c, s).await,
                RaftGroup::Coordinator(g) => coordinator_group_leader(c, g).await,
                RaftGroup::Meta => None,
            };
            let client = c.client();
            // The group's voters now (its replicas may have moved).
            let voters = match client.group_voters(group).await {
                Ok(v) => v,
                Err(_) => client.group_replicas(group),
            };
            let others: Vec<NodeId> = voters.into_iter().filter(|n| Some(*n) != leader).collect();
            let Some(&to) = others.choose(rng) else {
                return (Applied::Nothing, format!("{group} has no other replica"));
            };
            let from = leader.map_or("no known leader".into(), |l| format!("node {l}"));
            let what = match client.transfer_leader(group, to).await {
                Ok((now, term)) => {
                    format!(
                        "moved the leadership of {group} from {from} to node {now} (term {term})"
                    )
                }
                // Refused (a target lagging behind, an election under
                // way): logged, and the run goes on; the test asks only
                // that transfers were tried, and the checkers that
                // nothing went wrong whichever way they went.
                Err(e) => format!("leadership of {group} ({from}) not moved to node {to}: {e}"),
            };
            (Applied::Nothing, what)
        }
        Fault::MoveReplica => {
            let client = c.client();
            let coordinators: Vec<u64> = client
                .coordinator_groups()
                .into_iter()
                .map(|(g, _)| g)
                .collect();
            // A coordinator group one time in three, the metadata group
            // (there is one where there are coordinator groups) one in six.
            let pick = rng.random_range(0..6);
            let group = match coordinators.choose(rng) {
                Some(g) if pick < 2 => RaftGroup::Coordinator(*g),
                Some(_) if pick == 2 => RaftGroup::Meta,
                _ => {
                    let shards = all_shards(&client).await;
                    let Some(&shard) = shards.choose(rng) else {
                        return (Applied::Nothing, NO_SHARD_KNOWN.into());
                    };
                    RaftGroup::Shard(shard)
                }
            };
            let voters = match client.group_voters(group).await {
                Ok(v) => v,
                Err(e) => return (Applied::Nothing, format!("{group}: no voters known: {e}")),
            };
            // A node runs one coordinator group's replica at most.
            let mut taken = voters.clone();
            if let RaftGroup::Coordinator(_) = group {
                for g in &coordinators {
                    if let Ok(v) = client.group_voters(RaftGroup::Coordinator(*g)).await {
                        taken.extend(v);
                    }
                }
            }
            let free: Vec<NodeId> = participants
                .iter()
                .copied()
                .filter(|n| !taken.contains(n))
                .collect();
            // Not the last voter the config lists for the group: its
            // leader refuses to remove that one, and the group would only
            // grow.
            let listed: Vec<NodeId> = match group {
                RaftGroup::Shard(s) => c.config.shard(s).map(|s| s.replicas.clone()),
                RaftGroup::Coordinator(g) => c
                    .config
                    .coordinators
                    .iter()
                    .find(|x| x.group == g)
                    .map(|x| x.replicas.clone()),
                RaftGroup::Meta => Some(c.config.meta_replicas()),
            }
            .unwrap_or_default();
            let still: Vec<NodeId> = voters
                .iter()
                .copied()
                .filter(|v| listed.contains(v))
                .collect();
            let movable: Vec<NodeId> = voters
                .iter()
                .copied()
                .filter(|v| still.len() > 1 || !still.contains(v))
                .collect();
            let (Some(&from), Some(&to)) = (movable.choose(rng), free.choose(rng)) else {
                return (
                    Applied::Nothing,
                    format!("{group}: nowhere to move a replica (voters {voters:?})"),
                );
            };
            // Bounded, so a change that cannot finish (a quorum down)
            // does not stall the schedule; a learner left behind is
            // harmless and the next move may promote or pass it.
            let moved = tokio::time::timeout(
                Duration::from_secs(20),
                move_replica(&client, group, from, to),
            )
            .await;
            let what = match moved {
                Ok(Ok(r)) => format!(
                    "moved a replica of {group} from node {from} to node {to}; voters {:?}{}",
                    r.voters.iter().map(|n| n.0).collect::<Vec<_>>(),
                    r.dropped
                        .map(|why| format!(" (node {from} kept its data: {why})"))
                        .unwrap_or_default()
                ),
                Ok(Err(e)) => format!("{group}: replica not moved from node {from} to {to}: {e}"),
                Err(_) => format!("{group}: moving a replica from node {from} to {to} timed out"),
            };
            (Applied::Nothing, what)
        }
        Fault::Split => {
            let client = c.client();
            let shards = all_shards(&client).await;
            if shards.len() >= MAX_SPLIT_SHARDS {
                return (
                    Applied::Nothing,
                    format!("{} shards already: no split", shards.len()),
                );
            }
            // A shard that owns keys: not one merged into another.
            let map = client.shard_map();
            let Some(&shard) = map.shards().choose(rng) else {
                return (Applied::Nothing, "no shard owns keys: no split".into());
            };
            // A key just above a range shard's start is inside it unless
            // the range is tiny (then the split is refused, and logged).
            let at = map.range_of(shard).map(|(start, _)| {
                let mut k = start;
                k.push(rng.random_range(b'a'..=b'z'));
                k
            });
            let split = tokio::time::timeout(
                Duration::from_secs(30),
                client.split_shard(shard, None, at, Duration::from_secs(25)),
            )
            .await;
            let what = match split {
                Ok(Ok((left, child))) => format!(
                    "split shard {shard} (now version {}) into it and shard {}",
                    left.version, child.shard
                ),
                Ok(Err(e)) => format!("shard {shard} not split: {e}"),
                Err(_) => format!("splitting shard {shard} timed out"),
            };
            (Applied::Nothing, what)
        }
        Fault::Merge => {
            let client = c.client();
            let _ = all_shards(&client).await;
            let map = client.shard_map();
            let live = map.shards();
            let Some(&shard) = live.choose(rng).filter(|_| live.len() > 1) else {
                return (Applied::Nothing, "one shard left: no merge".into());
            };
            let into = match map.range_of(shard) {
                Some((start, end)) if start.is_empty() => end.map(|e| map.shard_for_key(&e)),
                Some((start, _)) => live.iter().copied().find(|s| {
                    map.range_of(*s)
                        .is_some_and(|(_, e)| e == Some(start.clone()))
                }),
                None => live.iter().copied().filter(|s| *s != shard).choose(rng),
            };
            let Some(into) = into else {
                return (
                    Applied::Nothing,
                    format!("shard {shard}: no shard to merge it into"),
                );
            };
            let merged = tokio::time::timeout(Duration::from_secs(90), async {
                let moved = client.colocate(shard, into).await?;
                let d = client
                    .merge_shards(shard, into, Duration::from_secs(25))
                    .await?;
                Ok::<_, pact_client::ClientError>((moved.len(), d))
            })
            .await;
            let what = match merged {
                Ok(Ok((moved, d))) => format!(
                    "merged shard {shard} into shard {into} (now version {}) after {moved} \
                     replica move(s); {}",
                    d.version,
                    retire_merged(
                        &client,
                        c.config.transactions.record_retention_s <= RETIRE_FOR.as_secs() / 2
                    )
                    .await
                ),
                Ok(Err(e)) => format!("shard {shard} not merged into shard {into}: {e}"),
                Err(_) => format!("merging shard {shard} into shard {into} timed out"),
            };
            (Applied::Nothing, what)
        }
        Fault::JoinOrLeave => {
            // Bounded, so a change that cannot finish (a quorum down) does
            // not stall the schedule; what is left half done is finished
            // or passed over by the next application.
            match tokio::time::timeout(Duration::from_secs(30), join_or_leave(c, rng)).await {
                Ok(what) => (Applied::Nothing, what),
                Err(_) => (
                    Applied::Nothing,
                    "adding or retiring a node timed out".into(),
                ),
            }
        }
        Fault::CrashBeforeFsync => {
            let id = *participants.choose(rng).expect("participants");
            c.signal(id, libc::SIGUSR1);
            (
                Applied::Killed(id),
                format!("node {id} told to die before its next fsync"),
            )
        }
        _ => {
            let Some(net) = net else {
                return (
                    Applied::Nothing,
                    format!("{fault:?} needs a proxied network"),
                );
            };
            let what = match fault {
                Fault::IsolateOne => {
                    let id = *participants.choose(rng).expect("participants");
                    let rest: Vec<NodeId> = all.iter().copied().filter(|n| *n != id).collect();
                    net.partition(&[vec![id], rest]);
                    format!("isolated node {id}")
                }
                Fault::MajorityMinority => {
                    let mut nodes = all.clone();
                    nodes.shuffle(rng);
                    let minority = nodes.split_off(nodes.len().div_ceil(2));
                    let what = format!("majority {nodes:?} / minority {minority:?}");
                    net.partition(&[nodes, minority]);
                    what
                }
                Fault::Ring => {
                    let mut ring = participants.clone();
                    ring.shuffle(rng);
                    let n = ring.len();
                    let pos = |id: NodeId| ring.iter().position(|r| *r == id);
                    net.allow_only(|a, b| match (pos(a), pos(b)) {
                        (Some(i), Some(j)) => {
                            let d = i.abs_diff(j);
                            d <= 1 || d == n - 1
                        }
                        _ => true,
                    });
                    format!("ring {ring:?}")
                }
                Fault::OneWay => {
                    let id = *participants.choose(rng).expect("participants");
                    let pairs: Vec<(NodeId, NodeId)> =
                        all.iter().filter(|n| **n != id).map(|n| (id, *n)).collect();
                    net.block(&pairs);
                    format!("node {id} can hear but not speak")
                }
                Fault::CoordinatorCutOffShard => {
                    let shard = c.config.shards.choose(rng).expect("shards");
                    let mut pairs = Vec::new();
                    let group = first_coordinator_group(c).unwrap_or_default();
                    // The group's voters now (they may have moved).
                    let coordinators =
                        match c.client().group_voters(RaftGroup::Coordinator(group)).await {
                            Ok(v) => v,
                            Err(_) => c.coordinator_ids(group),
                        };
                    for co in coordinators {
                        for r in &shard.replicas {
                            pairs.push((co, *r));
                            pairs.push((*r, co));
                        }
                    }
                    net.block(&pairs);
                    format!("coordinators cut off from shard {}", shard.id)
                }
                _ => unreachable!("handled above"),
            };
            (Applied::Partitioned, what)
        }
    }
}

/// `group`'s replica from node `from` to node `to`: `to` added (as a
/// learner, then a voter), then `from` removed.
async fn move_replica(
    client: &pact_client::Client,
    group: RaftGroup,
    from: NodeId,
    to: NodeId,
) -> Result<pact_client::Removed, pact_client::ClientError> {
    client.add_replica(group, to).await?;
    client.remove_replica(group, from).await
}

/// [`Fault::JoinOrLeave`]: the node it added, retired if it runs, else a
/// new one added.
async fn join_or_leave(c: &mut Cluster, rng: &mut StdRng) -> String {
    let client = c.client();
    let shards = all_shards(&client).await;
    let present = c.joined_ids();
    if let Some(&node) = present.first() {
        // Move every replica it holds (shards, and the coordinator groups
        // and metadata group that replica moves may have put there) to a
        // participant that lacks one.
        let coordinators: Vec<u64> = client
            .coordinator_groups()
            .into_iter()
            .map(|(g, _)| g)
            .collect();
        let groups: Vec<RaftGroup> = shards
            .iter()
            .map(|s| RaftGroup::Shard(*s))
            .chain(coordinators.iter().map(|g| RaftGroup::Coordinator(*g)))
            .chain((!coordinators.is_empty()).then_some(RaftGroup::Meta))
            .collect();
        let mut moved = Vec::new();
        for group in groups {
            let voters = match client.group_voters(group).await {
                Ok(v) => v,
                Err(e) => return format!("node {node} not retired: {group}: no voters known: {e}"),
            };
            if !voters.contains(&node) {
                continue;
            }
            // A node runs one coordinator group's replica at most.
            let mut taken = voters.clone();
            if group.is_coordinator() {
                for g in &coordinators {
                    if let Ok(v) = client.group_voters(RaftGroup::Coordinator(*g)).await {
                        taken.extend(v);
                    }
                }
            }
            let free: Vec<NodeId> = c
                .participant_ids()
                .into_iter()
                .filter(|n| !taken.contains(n) && *n != node)
                .collect();
            let Some(&to) = free.choose(rng) else {
                return format!("node {node} not retired: nowhere to move its replica of {group}");
            };
            if let Err(e) = move_replica(&client, group, node, to).await {
                return format!(
                    "node {node} not retired: its replica of {group} not moved to node {to}: {e}"
                );
            }
            moved.push(format!("{group} to node {to}"));
        }
        // A metadata replica left there as a learner (a move cut short)
        // holds the removal back too: take it out.
        if client.meta_status(node).await.is_ok() {
            if let Err(e) = client.remove_replica(RaftGroup::Meta, node).await {
                return format!("node {node} not retired: its metadata learner not removed: {e}");
            }
        }
        if let Err(e) = client.remove_member(node.0).await {
            return format!("node {node} not retired: member remove: {e}");
        }
        // SIGKILL, not a stop that blocks this task for seconds: the node
        // holds nothing any more.
        c.kill(node);
        c.retire(node);
        return format!("node {node} left the cluster (replicas moved: {moved:?})");
    }
    let (node, addr, peer) = c.new_node();
    if let Err(e) = client.add_member(node.0, &addr, &peer).await {
        // Never a member: not one to retire later (its id is not reused).
        c.retire(node);
        return format!("node {node} not added: {e}");
    }
    c.start_node(node);
    // It serves once it has asked the member table who it is.
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while pact_client::discover(std::slice::from_ref(&addr), None)
        .await
        .is_err()
    {
        if tokio::time::Instant::now() >= until || !c.is_running(node) {
            return format!("node {node} added, but it did not start serving");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let shard = *shards.choose(rng).expect("shards");
    let group = RaftGroup::Shard(shard);
    let voters = match client.group_voters(group).await {
        Ok(v) => v,
        Err(e) => return format!("node {node} joined, holding nothing: {group}: {e}"),
    };
    let Some(&from) = voters.choose(rng) else {
        return format!("node {node} joined, holding nothing: {group} has no voters");
    };
    match move_replica(&client, group, from, node).await {
        Ok(r) => format!(
            "node {node} joined the cluster and took {group}'s replica from node {from}; voters {:?}",
            r.voters.iter().map(|n| n.0).collect::<Vec<_>>()
        ),
        Err(e) => format!("node {node} joined, but {group}'s replica not moved to it from node {from}: {e}"),
    }
}

/// Undo what [`apply`] did.
pub fn heal(applied: Applied, c: &mut Cluster, net: Option<&Net>) {
    match applied {
        Applied::Nothing => {}
        // Killed or doomed (crash-before-fsync may not have fired yet):
        // make sure it is dead, then start it from its durable state.
        Applied::Killed(id) => {
            c.kill(id);
            c.start_node(id);
        }
        Applied::Paused(id) => c.resume(id),
        Applied::Partitioned => {
            if let Some(net) = net {
                net.heal();
            }
        }
    }
}

/// How long a fault is held: beyond election timeouts, so leadership moves.
pub fn hold(rng: &mut StdRng) -> Duration {
    Duration::from_millis(rng.random_range(1500..3500))
}
