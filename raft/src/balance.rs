//! Leadership of the groups a node hosts: hand it to another voter on
//! request ([`transfer`], behind `pact.v1.Admin`), and spread it over the
//! nodes by itself ([`spawn`]).
//!
//! Every shard's and coordinator group's leader does that group's work
//! (locks, proposals, reads), so leaders piled on one node (as restarts
//! leave them: whoever stays up wins every election) make that node the
//! bottleneck. Each node looks at the groups it hosts, counts the leaders
//! each voter holds among them, and when it leads at least two more than
//! some voter of one of its groups, hands that group to the least loaded
//! such voter. One hand-over per node per round, so the counts move by one
//! and settle instead of swinging.
//!
//! A hand-over goes only to a voter whose log has caught up with the
//! leader's: openraft's transfer stops the leader's proposals and
//! heartbeats, so a target that cannot campaign would leave the group
//! leaderless until an election timeout. A group that changes leaders
//! aborts the transactions open on it there (their locks lived at the old
//! leader; prepared ones survive), so balancing is rate-limited by its
//! interval and can be switched off (`[raft] balance_leaders_ms = 0`).
//!
//! With `[raft] prefer_leaders` (an ordered list of nodes) leadership is
//! gathered instead: a node hands a group it leads to the first listed
//! voter of that group that ranks above it and is caught up. Each move
//! goes strictly up the list, so the moves end; when a preferred node is
//! down its groups stay with (or go to) the next listed voter, and come
//! back once it is up and caught up. Groups with no listed voter are
//! spread among themselves as above. Gathering suits nodes that share one
//! machine (the playground): spreading leaders there buys no cores, while
//! every leader on another node turns a coordinator's in-process call to
//! a shard into a network round trip.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::{Instant as _, ServerState};

use crate::network::Router;
use crate::types::Raft;

/// A follower at most this many entries behind the leader may be handed
/// the leadership.
pub const MAX_TRANSFER_LAG: u64 = 64;

/// ... and must have answered a heartbeat this recently: the replication
/// metrics keep a dead follower's last match.
pub const MAX_ACK_AGE: Duration = Duration::from_secs(1);

/// What one node sees of one group it hosts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupView {
    pub group: u64,
    pub leader: Option<u64>,
    pub voters: BTreeSet<u64>,
    /// Voters (other than the leader) caught up enough to take over; only
    /// known where this node leads.
    pub ready: BTreeSet<u64>,
}

/// The hand-over `me` should make, if any. First toward `prefer` (see
/// the module doc): a group `me` leads goes to the best-ranked listed
/// voter of it that ranks above `me` and is ready. Otherwise, among the
/// groups with no listed voter: a group `me` leads, to the voter holding
/// the fewest leaderships among those groups, when `me` holds at least two
/// more. Pure; ties go to the lowest group and node ids.
pub fn plan(me: u64, groups: &[GroupView], prefer: &[u64]) -> Option<(u64, u64)> {
    // Unsettled groups make the counts wrong; wait for them.
    if groups.iter().any(|g| g.leader.is_none()) {
        return None;
    }
    let rank = |g: &GroupView, node: u64| {
        prefer
            .iter()
            .filter(|p| g.voters.contains(p))
            .position(|p| *p == node)
    };
    for g in groups.iter().filter(|g| g.leader == Some(me)) {
        let mine = rank(g, me).unwrap_or(usize::MAX);
        let up = prefer
            .iter()
            .filter(|p| g.voters.contains(p))
            .take(mine)
            .find(|p| g.ready.contains(p));
        if let Some(to) = up {
            return Some((g.group, *to));
        }
    }
    let unlisted: Vec<&GroupView> = groups
        .iter()
        .filter(|g| !prefer.iter().any(|p| g.voters.contains(p)))
        .collect();
    spread(me, &unlisted)
}

/// The spreading hand-over among `groups` (see [`plan`]).
fn spread(me: u64, groups: &[&GroupView]) -> Option<(u64, u64)> {
    let mut led: BTreeMap<u64, usize> = BTreeMap::new();
    for g in groups {
        for v in &g.voters {
            led.entry(*v).or_insert(0);
        }
        if let Some(l) = g.leader {
            *led.entry(l).or_insert(0) += 1;
        }
    }
    let mine = led.get(&me).copied().unwrap_or(0);
    let mut best: Option<(usize, u64, u64)> = None;
    for g in groups.iter().filter(|g| g.leader == Some(me)) {
        for to in g.ready.iter().filter(|v| **v != me && g.voters.contains(v)) {
            let n = led.get(to).copied().unwrap_or(0);
            if n + 2 > mine {
                continue;
            }
            let cand = (n, *to, g.group);
            if best.is_none_or(|b| (cand.0, cand.2, cand.1) < (b.0, b.2, b.1)) {
                best = Some(cand);
            }
        }
    }
    best.map(|(_, to, group)| (group, to))
}

/// Whether `node` acknowledged this leader within [`MAX_ACK_AGE`] (the
/// replication metrics keep a dead follower's last match; these say when
/// it last answered). False on a replica that does not lead.
pub(crate) fn acked_recently(
    m: &openraft::RaftMetrics<crate::types::TypeConfig>,
    node: &u64,
) -> bool {
    m.heartbeat
        .as_ref()
        .and_then(|h| h.get(node))
        .and_then(|t| t.as_ref())
        .is_some_and(|t| t.elapsed() <= MAX_ACK_AGE)
}

fn view(group: u64, raft: &Raft) -> GroupView {
    let m = raft.metrics().borrow_watched().clone();
    let me = *raft.node_id();
    let voters: BTreeSet<u64> = m.membership_config.membership().voter_ids().collect();
    let mut ready = BTreeSet::new();
    if m.state == ServerState::Leader {
        let last = m.last_log_index.unwrap_or(0);
        let acked = |node: &u64| acked_recently(&m, node);
        if let Some(rep) = &m.replication {
            for (node, matched) in rep {
                let at = matched.as_ref().map_or(0, |l| l.index);
                if *node != me && last.saturating_sub(at) <= MAX_TRANSFER_LAG && acked(node) {
                    ready.insert(*node);
                }
            }
        }
    }
    GroupView {
        group,
        leader: m.current_leader,
        voters,
        ready,
    }
}

/// Why a transfer did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    #[error("group {0} is not hosted on this node")]
    UnknownGroup(u64),
    #[error("not the group's leader ({})", leader.map_or("none known".to_string(), |l| format!("node {l} is")))]
    NotLeader { leader: Option<u64> },
    #[error("node {to} is not a voter of group {group}")]
    NotVoter { group: u64, to: u64 },
    /// The group did not get `to` as its leader in time (it may still).
    #[error("{0}")]
    Incomplete(String),
}

/// Hand the leadership of `group` to `to`, from this node (its leader);
/// returns the leader and term once `to` leads, within `within`.
pub async fn transfer(
    router: &Router,
    group: u64,
    to: u64,
    within: Duration,
) -> Result<(u64, u64), TransferError> {
    let raft = router
        .raft(group)
        .ok_or(TransferError::UnknownGroup(group))?;
    let m = raft.metrics().borrow_watched().clone();
    let me = *raft.node_id();
    if m.current_leader != Some(me) || m.state != ServerState::Leader {
        return Err(TransferError::NotLeader {
            leader: m.current_leader,
        });
    }
    if !m
        .membership_config
        .membership()
        .voter_ids()
        .any(|v| v == to)
    {
        return Err(TransferError::NotVoter { group, to });
    }
    if to == me {
        return Ok((me, m.current_term));
    }
    raft.trigger()
        .transfer_leader(to)
        .await
        .map_err(|e| TransferError::Incomplete(format!("raft stopped: {e}")))?;
    match raft
        .wait(Some(within))
        .metrics(
            |m| m.current_leader == Some(to),
            format!("node {to} leads group {group}"),
        )
        .await
    {
        Ok(m) => Ok((to, m.current_term)),
        Err(e) => Err(TransferError::Incomplete(format!(
            "node {to} did not take over group {group} within {within:?} ({e}); \
             the group elects a leader by itself"
        ))),
    }
}

/// Balance leaders every `[raft] balance_leaders_ms` (with a per-node
/// offset, so the nodes of a cluster do not act in the same instant),
/// toward the nodes of `[raft] prefer_leaders` first (see [`plan`]);
/// nothing if the interval is zero.
pub fn spawn(router: Router, node: pact_common::NodeId, tuning: &pact_common::RaftTuning) {
    let every = Duration::from_millis(tuning.balance_leaders_ms);
    if every.is_zero() {
        return;
    }
    let node = node.0;
    let prefer: Vec<u64> = tuning.prefer_leaders.iter().map(|n| n.0).collect();
    tokio::spawn(async move {
        // Spread the nodes' rounds over the interval.
        let offset = every.mul_f64((node % 7) as f64 / 7.0);
        tokio::time::sleep(every + offset).await;
        // Since when each group has had the leader this node saw last: a
        // group moves only once its leadership held for a whole round, so
        // elections after crashes settle before anything is handed on.
        let mut since: BTreeMap<u64, (Option<u64>, std::time::Instant)> = BTreeMap::new();
        loop {
            let now = std::time::Instant::now();
            let mut views: Vec<GroupView> = router
                .rafts()
                .iter()
                .map(|(g, raft)| view(*g, raft))
                .collect();
            let mut settled = true;
            for v in &mut views {
                let e = since.entry(v.group).or_insert((v.leader, now));
                if e.0 != v.leader {
                    *e = (v.leader, now);
                }
                if now.duration_since(e.1) < every {
                    settled = false;
                }
            }
            since.retain(|g, _| views.iter().any(|v| v.group == *g));
            let plan = if settled {
                plan(node, &views, &prefer)
            } else {
                None
            };
            if let Some((group, to)) = plan {
                tracing::info!(
                    group,
                    to,
                    "handing leadership on to balance or gather leaders"
                );
                match transfer(&router, group, to, every.min(Duration::from_secs(10))).await {
                    Ok(_) => tracing::info!(group, to, "leadership handed on"),
                    Err(e) => tracing::info!(group, to, error = %e, "leadership not handed on"),
                }
            }
            tokio::time::sleep(every).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(group: u64, leader: u64, voters: &[u64], ready: &[u64]) -> GroupView {
        GroupView {
            group,
            leader: Some(leader),
            voters: voters.iter().copied().collect(),
            ready: ready.iter().copied().collect(),
        }
    }

    #[test]
    fn a_node_leading_two_more_hands_one_to_the_least_loaded() {
        let all = [1, 2, 3];
        let groups = [
            g(1, 1, &all, &[2, 3]),
            g(2, 1, &all, &[2, 3]),
            g(3, 1, &all, &[2, 3]),
            g(4, 2, &all, &[]),
        ];
        // Node 1 leads 3, node 2 one, node 3 none: the lowest group goes to 3.
        assert_eq!(plan(1, &groups, &[]), Some((1, 3)));
        // The others lead no more than anyone by two: they do nothing.
        assert_eq!(plan(2, &groups, &[]), None);
        assert_eq!(plan(3, &groups, &[]), None);
    }

    #[test]
    fn balanced_enough_or_unsettled_means_no_move() {
        let all = [1, 2, 3];
        // 2, 1, 1: within one.
        let groups = [
            g(1, 1, &all, &[2, 3]),
            g(2, 1, &all, &[2, 3]),
            g(3, 2, &all, &[]),
            g(4, 3, &all, &[]),
        ];
        assert_eq!(plan(1, &groups, &[]), None);
        // A group without a leader: wait.
        let mut unsettled = groups.to_vec();
        unsettled[3].leader = None;
        unsettled[0].leader = Some(1);
        unsettled[2].leader = Some(1);
        assert_eq!(plan(1, &unsettled, &[]), None);
    }

    #[test]
    fn only_caught_up_voters_take_over() {
        let all = [1, 2, 3];
        let groups = [
            g(1, 1, &all, &[2]),
            g(2, 1, &all, &[2]),
            g(3, 1, &all, &[2]),
        ];
        // Node 3 leads nothing but is behind everywhere: node 2 gets one.
        assert_eq!(plan(1, &groups, &[]), Some((1, 2)));
        let lagging = [g(1, 1, &all, &[]), g(2, 1, &all, &[])];
        assert_eq!(plan(1, &lagging, &[]), None);
        // A node that is not a voter of the group is never chosen.
        let learner = [g(1, 1, &[1, 2], &[3]), g(2, 1, &[1, 2], &[3])];
        assert_eq!(plan(1, &learner, &[]), None);
    }

    #[test]
    fn leaders_go_up_the_preference_list_to_a_ready_voter() {
        let all = [1, 2, 3];
        let groups = [
            g(1, 2, &all, &[1, 3]),
            g(2, 3, &all, &[1, 2]),
            g(3, 1, &all, &[2, 3]),
        ];
        // Node 1 first: 2 and 3 each hand theirs to 1; 1 keeps its own.
        assert_eq!(plan(2, &groups, &[1]), Some((1, 1)));
        assert_eq!(plan(3, &groups, &[1]), Some((2, 1)));
        assert_eq!(plan(1, &groups, &[1]), None);
        // Node 1 not caught up in group 1: its leader goes to the next
        // listed voter above it, if any, else keeps it.
        let behind = [g(1, 3, &all, &[2]), g(2, 2, &all, &[3])];
        assert_eq!(plan(3, &behind, &[1, 2]), Some((1, 2)));
        assert_eq!(plan(2, &behind, &[1, 2]), None);
        // Never down the list: the second listed node keeps a group whose
        // first listed voter is not ready, and an unlisted node never
        // receives one.
        assert_eq!(plan(2, &[g(1, 2, &all, &[3])], &[1, 2]), None);
        // The list counts only the group's voters: node 4 is not one.
        assert_eq!(plan(2, &[g(1, 2, &all, &[1, 3])], &[4, 1]), Some((1, 1)));
    }

    #[test]
    fn groups_without_a_listed_voter_are_still_spread() {
        let abc = [1, 2, 3];
        let def = [4, 5, 6];
        let groups = [
            g(1, 4, &def, &[5, 6]),
            g(2, 4, &def, &[5, 6]),
            g(3, 4, &def, &[5, 6]),
            g(4, 1, &abc, &[2, 3]),
            g(5, 1, &abc, &[2, 3]),
        ];
        // Groups 4 and 5 stay on node 1 (listed); 1..3 spread from node 4.
        assert_eq!(plan(1, &groups, &[1]), None);
        assert_eq!(plan(4, &groups, &[1]), Some((1, 5)));
        // Without the list, node 1 leads two more than nodes 2 and 3: it
        // hands one on.
        assert_eq!(plan(1, &groups, &[]), Some((4, 2)));
        // A node leading listed and unlisted groups moves a listed one up
        // first; with its listed voters not ready, a listed group stays
        // and is not spread either.
        let mixed = [
            g(1, 4, &def, &[5, 6]),
            g(2, 4, &def, &[5, 6]),
            g(3, 4, &[4, 1, 5], &[1, 5]),
        ];
        assert_eq!(plan(4, &mixed, &[1]), Some((3, 1)));
        let not_ready = [g(1, 4, &[4, 1, 5], &[5]), g(2, 4, &[4, 1, 5], &[5])];
        assert_eq!(plan(4, &not_ready, &[1]), None);
        // Unsettled groups hold back every move, listed ones too.
        let mut unsettled = mixed.to_vec();
        unsettled[0].leader = None;
        assert_eq!(plan(4, &unsettled, &[1]), None);
    }
}
