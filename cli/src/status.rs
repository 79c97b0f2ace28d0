//! `txn status` and `txn health`: every replica of every shard and
//! coordinator group, asked at once, and a verdict per group.
//!
//! Each replica gets its own short deadline (`--replica-timeout`) and all
//! are asked in parallel, so a stopped or frozen node costs one deadline,
//! not one per group it holds. Shards and coordinator groups are labelled
//! apart (`shard 1`, `coord 4`): their ids are separate namespaces; the
//! metadata group (`meta`), where the cluster runs one, is judged too.
//!
//! A replica that answers that it stopped (its node's storage failed; the
//! answer says why) counts as not answering: it acknowledges nothing.
//! A group is `down` when no replica that answered is its leader, or fewer
//! voters than a quorum answered; `degraded` when it serves but a replica
//! did not answer, stopped, or applies more than `--max-lag` entries behind
//! the leader; `ok` otherwise. The cluster is as bad as its worst group.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use pact_client::{Client, ClientError, ReplicaStatus};
use pact_common::{NodeId, ShardId, META_GROUP};
use serde_json::json;

/// Options shared by `status` and `health`.
#[derive(clap::Args, Debug, Clone)]
pub struct StatusArgs {
    /// Seconds to wait for each replica's answer (all are asked at once).
    #[arg(long, default_value_t = 2.0, value_parser = parse_secs)]
    pub replica_timeout: f64,
    /// A replica whose applied index is more than this many entries behind
    /// its group's leader counts as lagging (the group is then degraded).
    #[arg(long, default_value_t = 1000)]
    pub max_lag: u64,
}

fn parse_secs(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if v.is_finite() && (0.05..=3600.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{s} is out of range (0.05 to 3600 seconds)"))
    }
}

/// Exit code of `txn health` for a group that serves with a replica missing
/// or lagging (3, unavailable, is for a group that cannot serve).
pub const EXIT_DEGRADED: u8 = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Shard,
    Coord,
    /// The metadata group (the member table); one, so no number.
    Meta,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Shard => "shard",
            Kind::Coord => "coord",
            Kind::Meta => "meta",
        }
    }

    /// `shard 1`, `coord 4`, `meta`.
    fn label(self, group: u64) -> String {
        match self {
            Kind::Meta => self.name().to_string(),
            _ => format!("{} {group}", self.name()),
        }
    }
}

/// One replica's answer (or why there is none).
struct Row {
    kind: Kind,
    group: u64,
    node: NodeId,
    addr: String,
    answer: Result<ReplicaStatus, ClientError>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Health {
    Ok,
    Degraded,
    Down,
}

impl Health {
    fn name(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Degraded => "degraded",
            Health::Down => "down",
        }
    }

    fn exit_code(self) -> u8 {
        match self {
            Health::Ok => 0,
            Health::Degraded => EXIT_DEGRADED,
            Health::Down => 3,
        }
    }
}

/// The verdict on one group.
#[derive(Debug, PartialEq, Eq)]
struct GroupHealth {
    kind: Kind,
    group: u64,
    leader: Option<u64>,
    term: Option<u64>,
    voters: usize,
    answered: usize,
    quorum: usize,
    /// (node, entries behind the leader) of replicas over `max_lag`.
    lagging: Vec<(u64, u64)>,
    unreachable: Vec<u64>,
    /// (node, why) of replicas that answered that they stopped.
    stopped: Vec<(u64, String)>,
    /// (node, gate) of running replicas that may not vote (see
    /// `ReplicaStatus::votes`): the group commits, but cannot elect.
    not_voting: Vec<(u64, String)>,
    health: Health,
}

impl GroupHealth {
    fn label(&self) -> String {
        self.kind.label(self.group)
    }

    fn summary(&self) -> String {
        let mut s = match self.leader {
            Some(l) => format!("leader {l}"),
            None => "NO LEADER".to_string(),
        };
        s.push_str(&format!(
            ", {}/{} voters answered (quorum {}{})",
            self.answered,
            self.voters,
            self.quorum,
            if self.answered < self.quorum {
                ": NOT MET"
            } else {
                ""
            }
        ));
        if !self.unreachable.is_empty() {
            s.push_str(&format!(
                "; no answer from node {}",
                join(&self.unreachable)
            ));
        }
        for (n, why) in &self.stopped {
            s.push_str(&format!("; node {n} STOPPED: {why}"));
        }
        for (n, behind) in &self.lagging {
            s.push_str(&format!("; node {n} lags {behind} entries"));
        }
        for (n, gate) in &self.not_voting {
            s.push_str(&format!("; node {n} does not vote ({gate})"));
        }
        s
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "kind": self.kind.name(), "group": self.group, "health": self.health.name(),
            "leader": self.leader, "term": self.term, "voters": self.voters,
            "answered": self.answered, "quorum": self.quorum,
            "has_quorum": self.answered >= self.quorum,
            "unreachable": self.unreachable,
            "stopped": self.stopped.iter().map(|(n, why)| json!({ "node": n, "reason": why })).collect::<Vec<_>>(),
            "lagging": self.lagging.iter().map(|(n, b)| json!({ "node": n, "behind": b })).collect::<Vec<_>>(),
            "not_voting": self.not_voting.iter().map(|(n, g)| json!({ "node": n, "gate": g })).collect::<Vec<_>>(),
        })
    }
}

fn join(nodes: &[u64]) -> String {
    nodes
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Judge one group from its replicas' rows (`replicas`: the config's).
fn judge(kind: Kind, group: u64, replicas: &[NodeId], rows: &[&Row], max_lag: u64) -> GroupHealth {
    let answers: Vec<(u64, &ReplicaStatus)> = rows
        .iter()
        .filter_map(|r| r.answer.as_ref().ok().map(|s| (r.node.0, s)))
        .filter(|(_, s)| s.stopped.is_none())
        .collect();
    let stopped: Vec<(u64, String)> = rows
        .iter()
        .filter_map(|r| {
            let s = r.answer.as_ref().ok()?;
            Some((r.node.0, s.stopped.clone()?))
        })
        .collect();
    let unreachable: Vec<u64> = rows
        .iter()
        .filter(|r| r.answer.is_err())
        .map(|r| r.node.0)
        .collect();
    // Two replicas may both think they lead for a moment after a
    // partition; the higher term is the real one.
    let leader = answers
        .iter()
        .filter(|(_, s)| s.role == "leader")
        .max_by_key(|(_, s)| s.term);
    // The membership as the leader knows it, else as any replica does;
    // the config only when no one answered.
    let voters: BTreeSet<u64> = leader
        .map(|(_, s)| &s.voters)
        .filter(|v| !v.is_empty())
        .or_else(|| {
            answers
                .iter()
                .map(|(_, s)| &s.voters)
                .find(|v| !v.is_empty())
        })
        .map(|v| v.iter().copied().collect())
        .unwrap_or_else(|| replicas.iter().map(|n| n.0).collect());
    let answered = answers.iter().filter(|(n, _)| voters.contains(n)).count();
    let quorum = voters.len() / 2 + 1;
    let reference = leader
        .map(|(_, s)| s.applied_index)
        .or_else(|| answers.iter().map(|(_, s)| s.applied_index).max())
        .unwrap_or(0);
    let lagging: Vec<(u64, u64)> = answers
        .iter()
        .map(|(n, s)| (*n, reference.saturating_sub(s.applied_index)))
        .filter(|(_, behind)| *behind > max_lag)
        .collect();
    let not_voting: Vec<(u64, String)> = answers
        .iter()
        .filter(|(_, s)| !s.votes())
        .map(|(n, s)| (*n, s.gate.clone()))
        .collect();
    let health = if leader.is_none() || answered < quorum {
        Health::Down
    } else if !unreachable.is_empty()
        || !stopped.is_empty()
        || !lagging.is_empty()
        || !not_voting.is_empty()
    {
        Health::Degraded
    } else {
        Health::Ok
    };
    GroupHealth {
        kind,
        group,
        leader: leader.map(|(n, _)| *n),
        term: leader
            .map(|(_, s)| s.term)
            .or_else(|| answers.iter().map(|(_, s)| s.term).max()),
        voters: voters.len(),
        answered,
        quorum,
        lagging,
        unreachable,
        stopped,
        not_voting,
        health,
    }
}

/// Ask every replica of every group at once, each within `within`.
async fn ask(client: &Client, within: Duration) -> Vec<Row> {
    // Shards splits created are named by their parents' descriptors: a
    // refresh finds them (best effort, bounded: a shard that does not
    // answer is judged below all the same).
    let _ = tokio::time::timeout(within, client.refresh_map(&client.shard_map())).await;
    // Retired shards have no replicas to ask.
    client.learn_retired(within).await;
    let retired = client.retired_shards();
    let timed = |node: NodeId, r: Option<Result<ReplicaStatus, ClientError>>| {
        r.unwrap_or_else(|| {
            let addr = client.node_addr(node).unwrap_or_else(|| "?".into());
            Err(ClientError::Unavailable(format!(
                "node {node} ({addr}) did not answer within {within:?}"
            )))
        })
    };
    let shards = client
        .shards()
        .into_iter()
        .filter(|s| !retired.contains(s))
        .flat_map(|shard| {
            client
                .shard_replicas(shard)
                .into_iter()
                .map(move |node| async move {
                    let r = tokio::time::timeout(within, client.replica_status(shard, node))
                        .await
                        .ok();
                    (Kind::Shard, shard.0, node, timed(node, r))
                })
        });
    let coords = client
        .coordinator_groups()
        .into_iter()
        .flat_map(|(group, nodes)| {
            nodes.into_iter().map(move |node| async move {
                let r = tokio::time::timeout(within, client.coordinator_group_status(group, node))
                    .await
                    .ok();
                (Kind::Coord, group, node, timed(node, r))
            })
        });
    let metas = client.meta_replicas().into_iter().map(|node| async move {
        let r = tokio::time::timeout(within, client.meta_status(node))
            .await
            .ok();
        (Kind::Meta, META_GROUP, node, timed(node, r))
    });
    let (shards, coords, mut metas) = futures::future::join3(
        futures::future::join_all(shards),
        futures::future::join_all(coords),
        futures::future::join_all(metas),
    )
    .await;
    // A cluster of `participant` and `coordinator` processes runs no
    // metadata group: its servers say they do not serve the call (and
    // the others may not answer at all). One replica that answers is
    // enough to judge the group.
    let answered = metas.iter().any(|(_, _, _, a)| a.is_ok());
    let unserved = metas
        .iter()
        .any(|(_, _, _, a)| matches!(a, Err(ClientError::InvalidInput(_))));
    if !answered && (unserved || metas.is_empty()) {
        metas.clear();
    }
    let mut rows: Vec<Row> = shards
        .into_iter()
        .chain(coords)
        .chain(metas)
        .map(|(kind, group, node, answer)| Row {
            kind,
            group,
            node,
            addr: client.node_addr(node).unwrap_or_else(|| "?".into()),
            answer,
        })
        .collect();
    // Replicas added at run time are not in the config: ask the voters
    // that answers name too. A configured replica that no longer hosts
    // its group (removed at run time) answers with an error; it is not
    // part of the group, so it is left out.
    let mut voters: BTreeMap<(Kind, u64), (u64, Vec<NodeId>)> = BTreeMap::new();
    for r in &rows {
        if let Ok(s) = &r.answer {
            if !s.voters.is_empty() {
                let rank = s.term * 2 + u64::from(s.role == "leader");
                let e = voters
                    .entry((r.kind, r.group))
                    .or_insert((rank, Vec::new()));
                if rank >= e.0 {
                    *e = (rank, s.voters.iter().copied().map(NodeId).collect());
                }
            }
        }
    }
    let extra: Vec<(Kind, u64, NodeId)> = voters
        .iter()
        .flat_map(|((k, g), (_, v))| v.iter().map(move |n| (*k, *g, *n)))
        .filter(|(k, g, n)| {
            client.node_addr(*n).is_some()
                && !rows
                    .iter()
                    .any(|r| r.kind == *k && r.group == *g && r.node == *n)
        })
        .collect();
    let more = futures::future::join_all(extra.into_iter().map(|(kind, group, node)| async move {
        let r = match kind {
            Kind::Shard => {
                tokio::time::timeout(within, client.replica_status(ShardId(group), node)).await
            }
            Kind::Coord => {
                tokio::time::timeout(within, client.coordinator_group_status(group, node)).await
            }
            Kind::Meta => tokio::time::timeout(within, client.meta_status(node)).await,
        }
        .ok();
        Row {
            kind,
            group,
            node,
            addr: client.node_addr(node).unwrap_or_else(|| "?".into()),
            answer: timed(node, r),
        }
    }))
    .await;
    rows.extend(more);
    rows.retain(|r| {
        r.answer.is_ok()
            || voters
                .get(&(r.kind, r.group))
                .is_none_or(|(_, v)| v.contains(&r.node))
    });
    rows.sort_by_key(|r| (r.kind, r.group, r.node));
    rows
}

/// Why a replica did not answer, without the error class word.
fn reason(e: &ClientError) -> String {
    match e {
        ClientError::Unreachable(m) | ClientError::Unavailable(m) => m.clone(),
        e => e.to_string(),
    }
}

/// Every group of the config with its replicas, shards first.
fn groups(client: &Client) -> Vec<(Kind, u64, Vec<NodeId>)> {
    // A retired shard has no group left to judge.
    let retired = client.retired_shards();
    let mut out: Vec<_> = client
        .shards()
        .into_iter()
        .filter(|s| !retired.contains(s))
        .map(|s| (Kind::Shard, s.0, client.shard_replicas(s)))
        .collect();
    out.extend(
        client
            .coordinator_groups()
            .into_iter()
            .map(|(g, nodes)| (Kind::Coord, g, nodes)),
    );
    out
}

fn judge_all(client: &Client, rows: &[Row], max_lag: u64) -> Vec<GroupHealth> {
    let mut all = groups(client);
    if rows.iter().any(|r| r.kind == Kind::Meta) {
        all.push((Kind::Meta, META_GROUP, client.meta_replicas()));
    }
    all.into_iter()
        .map(|(kind, group, replicas)| {
            let mine: Vec<&Row> = rows
                .iter()
                .filter(|r| r.kind == kind && r.group == group)
                .collect();
            judge(kind, group, &replicas, &mine, max_lag)
        })
        .collect()
}

fn overall(groups: &[GroupHealth]) -> Health {
    groups.iter().map(|g| g.health).max().unwrap_or(Health::Ok)
}

fn row_json(r: &Row) -> serde_json::Value {
    let mut v = match &r.answer {
        Ok(s) => json!({
            "role": s.role, "term": s.term, "leader": s.leader,
            "applied_index": s.applied_index, "last_log_index": s.last_log_index,
            "snapshot_index": s.snapshot_index, "purged_index": s.purged_index,
            "voters": s.voters,
            "stopped": s.stopped, "gate": s.gate,
        }),
        Err(e) => json!({ "error": e.to_string() }),
    };
    v["kind"] = json!(r.kind.name());
    v["group"] = json!(r.group);
    v["node"] = json!(r.node.0);
    v["addr"] = json!(r.addr);
    v
}

fn print_summary(verdicts: &[GroupHealth], health: Health) {
    outln!("HEALTH: {}", health.name());
    for g in verdicts {
        outln!("{:<9} {:<8}  {}", g.label(), g.health.name(), g.summary());
    }
}

/// `txn status`: the table and the summary. Exit 0 when any replica
/// answered (the verdict is shown, `txn health` acts on it); when none did,
/// the error names the addresses tried.
pub async fn status(client: &Client, a: &StatusArgs, as_json: bool) -> Result<u8, ClientError> {
    let rows = ask(client, Duration::from_secs_f64(a.replica_timeout)).await;
    let verdicts = judge_all(client, &rows, a.max_lag);
    let health = overall(&verdicts);
    if rows.iter().all(|r| r.answer.is_err()) {
        return Err(nobody_answered(&rows));
    }
    if as_json {
        outln!(
            "{}",
            json!({
                "health": health.name(),
                "groups": verdicts.iter().map(GroupHealth::to_json).collect::<Vec<_>>(),
                "replicas": rows.iter().map(row_json).collect::<Vec<_>>(),
            })
        );
        return Ok(0);
    }
    outln!(
        "{:<9} {:<5} {:<21} {:<10} {:>5} {:>6} {:>8} {:>8} {:>8}",
        "GROUP",
        "NODE",
        "ADDRESS",
        "ROLE",
        "TERM",
        "LEADER",
        "APPLIED",
        "LASTLOG",
        "SNAPSHOT"
    );
    for r in &rows {
        let label = r.kind.label(r.group);
        match &r.answer {
            Ok(ReplicaStatus {
                stopped: Some(why), ..
            }) => outln!(
                "{:<9} {:<5} {:<21} STOPPED: {}",
                label,
                r.node.0,
                r.addr,
                why
            ),
            Ok(s) => outln!(
                "{:<9} {:<5} {:<21} {:<10} {:>5} {:>6} {:>8} {:>8} {:>8}{}",
                label,
                r.node.0,
                r.addr,
                s.role,
                s.term,
                s.leader
                    .map(|l| l.to_string())
                    .unwrap_or_else(|| "-".into()),
                s.applied_index,
                s.last_log_index,
                s.snapshot_index,
                if s.votes() {
                    String::new()
                } else {
                    format!("  not voting ({})", s.gate)
                }
            ),
            Err(e) => outln!(
                "{:<9} {:<5} {:<21} no answer: {}",
                label,
                r.node.0,
                r.addr,
                reason(e)
            ),
        }
    }
    outln!("");
    print_summary(&verdicts, health);
    Ok(0)
}

/// `txn health`: the summary only; exit 0 ok, 8 degraded, 3 down.
pub async fn health(client: &Client, a: &StatusArgs, as_json: bool) -> Result<u8, ClientError> {
    let rows = ask(client, Duration::from_secs_f64(a.replica_timeout)).await;
    let verdicts = judge_all(client, &rows, a.max_lag);
    let health = overall(&verdicts);
    if as_json {
        let unanswered: Vec<serde_json::Value> = rows
            .iter()
            .filter_map(|r| {
                r.answer.as_ref().err().map(|e| {
                    json!({ "kind": r.kind.name(), "group": r.group, "node": r.node.0,
                            "addr": r.addr, "error": e.to_string() })
                })
            })
            .collect();
        outln!(
            "{}",
            json!({
                "health": health.name(),
                "groups": verdicts.iter().map(GroupHealth::to_json).collect::<Vec<_>>(),
                "unanswered": unanswered,
            })
        );
    } else {
        print_summary(&verdicts, health);
        if rows.iter().all(|r| r.answer.is_err()) {
            eprintln!("txn: {}", nobody_answered(&rows));
        }
    }
    Ok(health.exit_code())
}

/// No replica answered: say where we asked and what each said.
fn nobody_answered(rows: &[Row]) -> ClientError {
    let mut seen = BTreeSet::new();
    let nodes: Vec<String> = rows
        .iter()
        .filter(|r| seen.insert(r.node))
        .filter_map(|r| r.answer.as_ref().err().map(reason))
        .collect();
    let all_refused = rows
        .iter()
        .all(|r| matches!(r.answer, Err(ClientError::Unreachable(_))));
    let msg = format!("no replica answered: {}", nodes.join("; "));
    if all_refused {
        ClientError::Unreachable(msg)
    } else {
        ClientError::Unavailable(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(node: u64, role: &str, term: u64, applied: u64, voters: &[u64]) -> Row {
        Row {
            kind: Kind::Shard,
            group: 1,
            node: NodeId(node),
            addr: format!("127.0.0.1:700{node}"),
            answer: Ok(ReplicaStatus {
                shard: 1,
                node,
                role: role.into(),
                term,
                leader: Some(1),
                applied_index: applied,
                last_log_index: applied,
                snapshot_index: 0,
                purged_index: 0,
                voters: voters.to_vec(),
                stopped: None,
                gate: "open".into(),
                committed_voters: voters.to_vec(),
                voters_at: 0,
            }),
        }
    }

    fn gone(node: u64) -> Row {
        Row {
            kind: Kind::Shard,
            group: 1,
            node: NodeId(node),
            addr: format!("127.0.0.1:700{node}"),
            answer: Err(ClientError::Unreachable("connection refused".into())),
        }
    }

    fn verdict(rows: &[Row], max_lag: u64) -> GroupHealth {
        let refs: Vec<&Row> = rows.iter().collect();
        let replicas = [NodeId(1), NodeId(2), NodeId(3)];
        judge(Kind::Shard, 1, &replicas, &refs, max_lag)
    }

    #[test]
    fn all_answering_and_caught_up_is_ok() {
        let v = [1, 2, 3];
        let g = verdict(
            &[
                up(1, "leader", 2, 10, &v),
                up(2, "follower", 2, 10, &v),
                up(3, "follower", 2, 9, &v),
            ],
            5,
        );
        assert_eq!(g.health, Health::Ok, "{g:?}");
        assert_eq!((g.leader, g.answered, g.quorum), (Some(1), 3, 2));
    }

    #[test]
    fn a_missing_or_lagging_replica_degrades_a_group_that_serves() {
        let v = [1, 2, 3];
        let g = verdict(
            &[
                up(1, "leader", 2, 10, &v),
                up(2, "follower", 2, 10, &v),
                gone(3),
            ],
            5,
        );
        assert_eq!(g.health, Health::Degraded);
        assert_eq!(g.unreachable, vec![3]);
        assert!(
            g.summary().contains("no answer from node 3"),
            "{}",
            g.summary()
        );
        let g = verdict(
            &[
                up(1, "leader", 2, 100, &v),
                up(2, "follower", 2, 100, &v),
                up(3, "follower", 2, 10, &v),
            ],
            5,
        );
        assert_eq!(g.health, Health::Degraded);
        assert_eq!(g.lagging, vec![(3, 90)]);
    }

    #[test]
    fn a_stopped_replica_counts_as_silent_and_says_why() {
        let v = [1, 2, 3];
        let mut dead = up(3, "leader", 2, 10, &v);
        if let Ok(s) = &mut dead.answer {
            s.stopped = Some("storage failed: write in /d: No space left on device".into());
        }
        let g = verdict(
            &[
                up(1, "follower", 3, 10, &v),
                up(2, "leader", 3, 10, &v),
                dead,
            ],
            5,
        );
        assert_eq!(g.health, Health::Degraded, "{g:?}");
        assert_eq!((g.leader, g.answered), (Some(2), 2));
        assert!(
            g.summary()
                .contains("node 3 STOPPED: storage failed: write in /d: No space"),
            "{}",
            g.summary()
        );
        // A stopped leader is no leader, and two stopped voters of three
        // leave no quorum.
        let mut a = up(1, "leader", 2, 10, &v);
        let mut b = up(2, "follower", 2, 10, &v);
        for r in [&mut a, &mut b] {
            if let Ok(s) = &mut r.answer {
                s.stopped = Some("storage failed".into());
            }
        }
        let g = verdict(&[a, b, up(3, "follower", 2, 10, &v)], 5);
        assert_eq!((g.health, g.leader), (Health::Down, None));
    }

    #[test]
    fn a_replica_that_may_not_vote_degrades_its_group() {
        let v = [1, 2, 3];
        let mut rejoining = up(3, "follower", 2, 10, &v);
        if let Ok(s) = &mut rejoining.answer {
            s.gate = "rejoining".into();
        }
        let g = verdict(
            &[
                up(1, "leader", 2, 10, &v),
                up(2, "follower", 2, 10, &v),
                rejoining,
            ],
            5,
        );
        // It answers and keeps up, so the quorum is met, but if the leader
        // went the group could not elect another.
        assert_eq!((g.health, g.answered), (Health::Degraded, 3), "{g:?}");
        assert_eq!(g.not_voting, vec![(3, "rejoining".to_string())]);
        assert!(
            g.summary().contains("node 3 does not vote (rejoining)"),
            "{}",
            g.summary()
        );
    }

    #[test]
    fn no_leader_or_no_quorum_is_down() {
        let v = [1, 2, 3];
        let g = verdict(
            &[
                up(1, "follower", 2, 10, &v),
                up(2, "candidate", 3, 10, &v),
                up(3, "follower", 2, 10, &v),
            ],
            5,
        );
        assert_eq!(g.health, Health::Down);
        assert!(g.summary().starts_with("NO LEADER"));
        let g = verdict(&[up(1, "leader", 2, 10, &v), gone(2), gone(3)], 5);
        assert_eq!(g.health, Health::Down);
        assert!(g.summary().contains("NOT MET"), "{}", g.summary());
        let g = verdict(&[gone(1), gone(2), gone(3)], 5);
        assert_eq!((g.health, g.voters, g.answered), (Health::Down, 3, 0));
    }

    #[test]
    fn the_higher_term_leader_wins_and_the_worst_group_decides() {
        let v = [1, 2, 3];
        let g = verdict(
            &[
                up(1, "leader", 2, 10, &v),
                up(2, "leader", 3, 10, &v),
                up(3, "follower", 3, 10, &v),
            ],
            5,
        );
        assert_eq!((g.leader, g.term), (Some(2), Some(3)));
        let ok = verdict(
            &[
                up(1, "leader", 2, 1, &v),
                up(2, "follower", 2, 1, &v),
                up(3, "follower", 2, 1, &v),
            ],
            5,
        );
        let down = verdict(&[gone(1), gone(2), gone(3)], 5);
        assert_eq!(overall(&[ok, down]), Health::Down);
        assert_eq!(overall(&[]), Health::Ok);
    }

    #[test]
    fn replica_timeout_is_bounded() {
        assert!(parse_secs("2").is_ok());
        assert!(parse_secs("0.5").is_ok());
        for bad in ["0", "-1", "nan", "inf", "99999", "x"] {
            assert!(parse_secs(bad).is_err(), "{bad}");
        }
    }
}
