//! `txn admin shard list` and `txn admin member list|add|remove`: the
//! topology as the replicas report it (the config's, changed by `txn admin
//! replica`), with who leads what now (every replica asked at once, as
//! `txn status` does), and the member table the metadata group keeps.

use std::collections::{BTreeMap, BTreeSet};

use pact_client::{Client, ClientError, ClusterMember, ReplicaStatus};
use pact_common::{NodeId, ShardId};
use serde_json::json;

use crate::output::Style;

/// The leader each group's replicas agree on (the highest term's), and
/// which replicas answered.
fn leaders<K: Ord + Copy>(
    answers: &[(K, NodeId, Result<ReplicaStatus, ClientError>)],
) -> (BTreeMap<K, (u64, u64)>, BTreeSet<NodeId>) {
    let mut lead: BTreeMap<K, (u64, u64)> = BTreeMap::new();
    let mut answered = BTreeSet::new();
    for (group, node, r) in answers {
        let Ok(s) = r else { continue };
        if s.stopped.is_none() {
            answered.insert(*node);
        }
        if let Some(l) = s.leader {
            let e = lead.entry(*group).or_insert((s.term, l));
            if s.term > e.0 {
                *e = (s.term, l);
            }
        }
    }
    (lead, answered)
}

/// Each group's voters as its replicas report them (the highest term's
/// answer, a leader's first): replicas added or removed at run time
/// differ from the config.
fn voters<K: Ord + Copy>(
    answers: &[(K, NodeId, Result<ReplicaStatus, ClientError>)],
) -> BTreeMap<K, Vec<u64>> {
    let mut best: BTreeMap<K, ((u64, bool), Vec<u64>)> = BTreeMap::new();
    for (group, _, r) in answers {
        let Ok(s) = r else { continue };
        if s.voters.is_empty() {
            continue;
        }
        let rank = (s.term, s.role == "leader");
        let e = best.entry(*group).or_insert((rank, s.voters.clone()));
        if rank > e.0 {
            *e = (rank, s.voters.clone());
        }
    }
    best.into_iter().map(|(k, (_, v))| (k, v)).collect()
}

/// Shards: their keys (a range, or ring points and their share of all key
/// hashes) and its version, from the shards' own descriptors (the
/// config's if a shard cannot say: then marked so), replicas and leader.
pub async fn shards(client: &Client, style: Style, json: bool) -> Result<u8, ClientError> {
    // The descriptors first: they name the shards splits created, whose
    // replicas are then asked too.
    let described = client.refresh_map(&client.shard_map()).await;
    // Retired shards' versions come from their records (they are in no
    // map); the client learns which they are from the same read.
    let versions: BTreeMap<ShardId, u64> =
        tokio::time::timeout(std::time::Duration::from_secs(5), client.meta_shards())
            .await
            .ok()
            .and_then(Result::ok)
            .map(|t| t.retired.iter().map(|r| (r.shard, r.version)).collect())
            .unwrap_or_default();
    let retired = client.retired_shards();
    let answers = client.status().await;
    let (lead, _) = leaders(&answers);
    let live = voters(&answers);
    if let Err(e) = &described {
        eprintln!("warning: the keys shown are the config's, not the shards' own: {e}");
    }
    let source = if described.is_ok() {
        "shards"
    } else {
        "config"
    };
    let map = client.shard_map();
    let version = |s: ShardId| versions.get(&s).copied().unwrap_or_else(|| map.version(s));
    let mut rows = Vec::new();
    for shard in client.shards() {
        let replicas: Vec<u64> = live
            .get(&shard)
            .cloned()
            .unwrap_or_else(|| client.shard_replicas(shard).iter().map(|n| n.0).collect());
        let leader = lead.get(&shard).map(|(term, l)| (*l, *term));
        let keys = match (map.range_of(shard), map.ring_share(shard)) {
            (Some((start, end)), _) => json!({
                "start": style.codec.key(&start),
                "end": end.as_deref().map(|e| style.codec.key(e)),
            }),
            (None, Some((points, share))) => json!({"ring_points": points, "ring_share": share}),
            (None, None) => json!(null),
        };
        // A shard merged into another answers for its transactions'
        // records, and owns no key.
        let merged = described.is_ok() && !map.shards().contains(&shard);
        let keys = if retired.contains(&shard) {
            json!({"merged": true, "retired": true})
        } else if merged {
            json!({"merged": true})
        } else {
            keys
        };
        let replicas = if retired.contains(&shard) {
            Vec::new()
        } else {
            replicas
        };
        rows.push((shard, replicas, leader, keys));
    }
    if json {
        let all: Vec<_> = rows
            .iter()
            .map(|(s, r, l, k)| {
                json!({"shard": s.0, "keys": k, "version": version(*s),
                       "keys_from": source, "replicas": r,
                       "leader": l.map(|x| x.0), "term": l.map(|x| x.1)})
            })
            .collect();
        outln!("{}", serde_json::Value::Array(all));
    } else {
        for (s, r, l, k) in &rows {
            if k.get("retired").is_some() {
                outln!(
                    "shard {} (version {}): merged into another shard and retired: no keys, no \
                     replicas",
                    s.0,
                    version(*s)
                );
                continue;
            }
            let keys = if let Some(p) = k.get("ring_points") {
                let share = k["ring_share"].as_f64().unwrap_or(0.0) * 100.0;
                format!("{p} ring points, {share:.1}% of key hashes")
            } else if k.get("merged").is_some() {
                "merged into another shard: no keys".to_string()
            } else if !k.is_null() {
                let end = k["end"]
                    .as_str()
                    .map_or("(end)".to_string(), |e| format!("{e:?}"));
                format!("keys [{:?}, {end})", k["start"].as_str().unwrap_or(""))
            } else {
                "no keys".to_string()
            };
            let leader = l.map_or("no leader".to_string(), |(n, t)| {
                format!("leader node {n} (term {t})")
            });
            let replicas: Vec<String> = r.iter().map(u64::to_string).collect();
            outln!(
                "shard {} (version {}): {keys}; replicas {}; {leader}",
                s.0,
                version(*s),
                replicas.join(",")
            );
        }
    }
    Ok(0)
}

/// `txn admin shard retire`: the retired shard's record.
pub async fn retire(client: &Client, shard: u64, json: bool) -> Result<u8, ClientError> {
    let r = client.retire_shard(pact_common::ShardId(shard)).await?;
    let successors: Vec<u64> = r.successors.iter().map(|s| s.0).collect();
    if json {
        let horizons: Vec<_> = r
            .horizons
            .iter()
            .map(|(g, ts)| json!({"group": g, "horizon": ts}))
            .collect();
        outln!(
            "{}",
            json!({"shard": shard, "retired": true, "version": r.version,
                   "successors": successors, "voters": r.voters, "horizons": horizons})
        );
    } else {
        let list = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        outln!(
            "shard {shard} retired (version {}): its replicas on nodes {} are dropped, and any \
             node answers for it; successors {}",
            r.version,
            list(&r.voters),
            list(&successors)
        );
    }
    Ok(0)
}

/// How a descriptor's keys are shown: a key range, or a share of the ring.
fn show_span(style: Style, d: &pact_common::Descriptor) -> serde_json::Value {
    match &d.span {
        pact_common::Span::Range { start, end } => json!({
            "start": style.codec.key(start),
            "end": end.as_deref().map(|e| style.codec.key(e)),
        }),
        pact_common::Span::Ring { arcs } => {
            let share: f64 = arcs
                .iter()
                .map(|(lo, hi)| hi.saturating_sub(*lo) as f64 + 1.0)
                .sum::<f64>()
                / 2f64.powi(64);
            json!({"ring_arcs": arcs.len(), "ring_share": share})
        }
    }
}

/// [`show_span`]'s value in words.
fn span_text(v: serde_json::Value) -> String {
    if let Some(share) = v.get("ring_share").and_then(|s| s.as_f64()) {
        format!("{:.1}% of key hashes", share * 100.0)
    } else {
        let end = v["end"]
            .as_str()
            .map_or("(end)".to_string(), |e| format!("{e:?}"));
        format!("keys [{:?}, {end})", v["start"].as_str().unwrap_or(""))
    }
}

/// `txn admin shard merge`.
pub async fn merge(
    client: &Client,
    style: Style,
    shard: u64,
    into: u64,
    wait: std::time::Duration,
    json: bool,
) -> Result<u8, ClientError> {
    let started = std::time::Instant::now();
    let (s, t) = (pact_common::ShardId(shard), pact_common::ShardId(into));
    // Both shards on the same nodes first (nothing moves if they are).
    client.know(pact_client::RaftGroup::Shard(s)).await;
    client.know(pact_client::RaftGroup::Shard(t)).await;
    let moved = client.colocate(s, t).await?;
    for m in moved.iter().filter(|_| !json) {
        let node = |n: Option<pact_common::NodeId>| n.map_or("-".to_string(), |n| n.to_string());
        eprintln!(
            "shard {shard}: replica moved from node {} to node {} (onto shard {into}'s nodes)",
            node(m.from),
            node(m.to)
        );
    }
    let d = client.merge_shards(s, t, wait).await?;
    let secs = started.elapsed().as_secs_f64();
    if json {
        let moved: Vec<_> = moved
            .iter()
            .map(|m| json!({"from": m.from.map(|n| n.0), "to": m.to.map(|n| n.0)}))
            .collect();
        outln!(
            "{}",
            json!({"shard": shard, "into": into, "version": d.version,
                   "keys": show_span(style, &d), "seconds": secs, "moved": moved})
        );
    } else {
        outln!(
            "shard {shard} merged into shard {into} in {secs:.2} s: shard {into} has {} (version {}); shard {shard} owns nothing",
            span_text(show_span(style, &d)),
            d.version
        );
    }
    Ok(0)
}

/// `txn admin shard split`.
pub async fn split(
    client: &Client,
    style: Style,
    shard: u64,
    version: Option<u64>,
    at: Option<Vec<u8>>,
    wait: std::time::Duration,
    json: bool,
) -> Result<u8, ClientError> {
    let started = std::time::Instant::now();
    let id = pact_common::ShardId(shard);
    // The version split is named, so that an unknown outcome can be
    // asked about again without splitting twice.
    let version = match version {
        Some(v) => v,
        None => client.describe_shard(id).await?.version,
    };
    let (left, child) = match client.split_shard(id, Some(version), at, wait).await {
        Err(ClientError::Unknown(m)) => {
            return Err(ClientError::Unknown(format!(
                "{m}; to learn whether shard {shard} split, run the same command with \
                 --version {version} (it never splits twice)"
            )))
        }
        r => r?,
    };
    let secs = started.elapsed().as_secs_f64();
    let show = |d: &pact_common::Descriptor| show_span(style, d);
    if json {
        outln!(
            "{}",
            json!({"shard": shard, "version": left.version, "keys": show(&left),
                   "new_shard": child.shard.0, "new_keys": show(&child), "seconds": secs})
        );
    } else {
        outln!(
            "shard {shard} split in {secs:.2} s: it keeps {} (version {}); new shard {} has {}",
            span_text(show(&left)),
            left.version,
            child.shard,
            span_text(show(&child))
        );
    }
    Ok(0)
}

/// Nodes: addresses, the groups each replicates, which it leads, and
/// whether it answered.
pub async fn members(client: &Client, json: bool) -> Result<u8, ClientError> {
    // The table first: the client learns the addresses of added nodes
    // from it before it asks the replicas.
    let table = match client.members().await {
        Ok(t) => Some(t),
        Err(e) => {
            eprintln!("warning: the member table could not be read, so the nodes shown are the config's: {e}");
            None
        }
    };
    let removed: BTreeSet<NodeId> = table
        .iter()
        .flatten()
        .filter(|m| m.removed)
        .map(|m| NodeId(m.id))
        .collect();
    // Shards splits created, found from the descriptors (best effort):
    // their replicas are asked too.
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        client.refresh_map(&client.shard_map()),
    )
    .await;
    client
        .learn_retired(std::time::Duration::from_secs(5))
        .await;
    let answers = client.status().await;
    let (shard_lead, s_up) = leaders(&answers);
    let live = voters(&answers);
    let (coord_lead, c_up) = leaders(&client.coordinator_status_all().await);
    // Every node of the config, a spare that hosts nothing included.
    let mut nodes: BTreeMap<NodeId, (Vec<String>, Vec<String>)> = client
        .node_ids()
        .into_iter()
        .chain(table.iter().flatten().map(|m| NodeId(m.id)))
        .map(|n| (n, Default::default()))
        .collect();
    let label = |s: ShardId| format!("shard {}", s.0);
    let retired = client.retired_shards();
    for shard in client.shards().into_iter().filter(|s| !retired.contains(s)) {
        let replicas: Vec<NodeId> = live
            .get(&shard)
            .map(|v| v.iter().copied().map(NodeId).collect())
            .unwrap_or_else(|| client.shard_replicas(shard));
        for n in replicas {
            let e = nodes.entry(n).or_default();
            e.0.push(label(shard));
            if shard_lead.get(&shard).map(|x| x.1) == Some(n.0) {
                e.1.push(label(shard));
            }
        }
    }
    for (group, replicas) in client.coordinator_groups() {
        for n in replicas {
            let e = nodes.entry(n).or_default();
            e.0.push(format!("coord {group}"));
            if coord_lead.get(&group).map(|x| x.1) == Some(n.0) {
                e.1.push(format!("coord {group}"));
            }
        }
    }
    // The metadata group's voters (they move too), where one answers.
    if let Ok(Ok(v)) = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        client.group_voters(pact_client::RaftGroup::Meta),
    )
    .await
    {
        for n in v {
            nodes.entry(n).or_default().0.push("meta".into());
        }
    }
    if json {
        let all: Vec<_> = nodes
            .iter()
            .map(|(n, (groups, leads))| {
                json!({"node": n.0, "addr": client.node_addr(*n), "groups": groups,
                       "leads": leads, "answered": s_up.contains(n) || c_up.contains(n),
                       "removed": removed.contains(n)})
            })
            .collect();
        outln!("{}", serde_json::Value::Array(all));
    } else {
        for (n, (groups, leads)) in &nodes {
            let up = if removed.contains(n) {
                "removed"
            } else if s_up.contains(n) || c_up.contains(n) {
                "up"
            } else {
                "NOT ANSWERING"
            };
            outln!(
                "node {} {} {up}: replicas {}; leads {}",
                n.0,
                client.node_addr(*n).as_deref().unwrap_or("?"),
                if groups.is_empty() {
                    "none (a spare)".to_string()
                } else {
                    groups.join(", ")
                },
                if leads.is_empty() {
                    "nothing".to_string()
                } else {
                    leads.join(", ")
                }
            );
        }
    }
    Ok(0)
}

fn print_table(table: &[ClusterMember], json: bool, what: &str) {
    if json {
        let all: Vec<_> = table
            .iter()
            .map(|m| json!({"node": m.id, "addr": m.addr, "peer_addr": m.peer_addr, "removed": m.removed}))
            .collect();
        outln!("{}", serde_json::Value::Array(all));
    } else {
        outln!("{what}");
        for m in table {
            let state = if m.removed { " (removed)" } else { "" };
            outln!("node {} {} peer {}{state}", m.id, m.addr, m.peer_addr);
        }
    }
}

/// `txn admin member add`: record the node; the table after.
pub async fn add(
    client: &Client,
    id: u64,
    addr: &str,
    peer_addr: &str,
    json: bool,
) -> Result<u8, ClientError> {
    let table = client.add_member(id, addr, peer_addr).await?;
    print_table(
        &table,
        json,
        &format!(
            "node {id} is a member; start it with the cluster's config and --node-id {id}, \
             then move replicas onto it (txn admin replica move SHARD FROM {id})"
        ),
    );
    Ok(0)
}

/// `txn admin member remove`: the metadata group's leader refuses it
/// while the node replicates the metadata group, a shard or a
/// coordinator group (it asks their leaders).
pub async fn remove(client: &Client, id: u64, json: bool) -> Result<u8, ClientError> {
    let table = client.remove_member(id).await?;
    print_table(
        &table,
        json,
        &format!("node {id} is removed; stop its process"),
    );
    Ok(0)
}
