//! Changing which nodes replicate a group: add a replica (as a learner
//! that catches up, then a voter) or remove one, at the group's leader.
//!
//! openraft does the consensus part (a learner entry, then a joint
//! configuration and the final one); this module decides whether a change
//! is safe to start and waits with its own deadlines, since openraft's
//! blocking calls have none. The refusals are the operator's protection
//! against losing the group:
//!
//! - a change whose new voter set would not have a majority of live
//!   members (the leader itself and the voters that acknowledged it within
//!   [`MAX_ACK_AGE`]) is refused: committing it would need nodes that are
//!   not answering, and once committed the group would be stuck;
//! - a new voter must have caught up first (within [`MAX_TRANSFER_LAG`]
//!   entries, acknowledged recently), or the new majority would wait for
//!   it to receive the whole log before committing anything;
//! - the last voter is never removed, nor the last voter among the
//!   replicas the config lists (clients and restarting nodes find the
//!   group through those until the cluster map lives in the cluster);
//! - only one change at a time: a group in a joint configuration refuses
//!   another change until the first one finishes. openraft leaves a group
//!   joint if its leader dies between the joint configuration and the
//!   final one; the next change finishes it first (proposing the joint
//!   configuration's target), so a crash mid-change never wedges a group.
//!
//! A leader asked to remove itself hands the leadership to a caught-up
//! voter first and answers "not leader" with the new leader, where the
//! caller sends the request again. Both changes are idempotent: adding a
//! voter or removing a non-member returns the voters as they are, so a
//! caller that lost its answer simply asks again.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};

use crate::balance::{MAX_ACK_AGE, MAX_TRANSFER_LAG};
use crate::network::Router;
use crate::types::Raft;

/// Why a membership change did not happen (or did not finish).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    #[error("group {0} is not hosted on this node")]
    UnknownGroup(u64),
    #[error("not the group's leader ({})", leader.map_or("none known".to_string(), |l| format!("node {l} is")))]
    NotLeader { leader: Option<u64> },
    /// Unsafe or impossible as asked; the message says why.
    #[error("{0}")]
    Refused(String),
    /// Started but not finished in time, or another change is under way;
    /// asking again finishes or retries it.
    #[error("{0}")]
    Incomplete(String),
}

/// A majority of `voters`.
fn majority(voters: &BTreeSet<u64>) -> usize {
    voters.len() / 2 + 1
}

/// Whether the group may move from `voters` to `new` given the members
/// that answer (`live`): `new` must be non-empty and a majority of it must
/// be live. Pure; the error says why not.
pub fn check_quorum(
    group: u64,
    voters: &BTreeSet<u64>,
    new: &BTreeSet<u64>,
    live: &BTreeSet<u64>,
) -> Result<(), String> {
    if new.is_empty() {
        return Err(format!(
            "removing the last voter of group {group} would leave it with none"
        ));
    }
    let up = new.intersection(live).count();
    if up < majority(new) {
        let down: Vec<u64> = new.difference(live).copied().collect();
        return Err(format!(
            "group {group} would go from voters {voters:?} to {new:?}, of which only {up} answer \
             (not answering: {down:?}); it needs {} to commit anything: bring the missing nodes \
             back first",
            majority(new)
        ));
    }
    Ok(())
}

/// The leader's view of its group: voters, whether a change is under way,
/// and which members are live and which are caught up.
struct LeaderView {
    voters: BTreeSet<u64>,
    nodes: BTreeSet<u64>,
    joint: bool,
    /// The target of a committed joint configuration, if the group is in
    /// one.
    stranded: Option<BTreeSet<u64>>,
    live: BTreeSet<u64>,
    caught_up: BTreeSet<u64>,
}

fn leader_view(raft: &Raft) -> Result<LeaderView, MembershipError> {
    let m = raft.metrics().borrow_watched().clone();
    let me = *raft.node_id();
    if m.state != ServerState::Leader || m.current_leader != Some(me) {
        return Err(MembershipError::NotLeader {
            leader: m.current_leader.filter(|l| *l != me),
        });
    }
    let membership = m.membership_config.membership();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let nodes: BTreeSet<u64> = membership.nodes().map(|(id, _)| *id).collect();
    // A joint configuration, or a newer one than the committed (a new
    // leader commits its predecessor's last change with its first entry).
    let uncommitted = m.membership_config.log_id() != m.committed_membership_config.log_id();
    let joint_configs = membership.get_joint_config();
    let joint = joint_configs.len() > 1 || uncommitted;
    // A committed joint configuration whose leader died before proposing
    // the final one: openraft leaves it so; the change is finished by
    // proposing its target.
    let stranded = (joint_configs.len() > 1 && !uncommitted)
        .then(|| joint_configs.last().cloned().unwrap_or_default());
    let last = m.last_log_index.unwrap_or(0);
    let acked = |node: &u64| crate::balance::acked_recently(&m, node);
    let mut live = BTreeSet::from([me]);
    let mut caught_up = BTreeSet::from([me]);
    if let Some(rep) = &m.replication {
        for (node, matched) in rep {
            if !acked(node) {
                continue;
            }
            live.insert(*node);
            let at = matched.as_ref().map_or(0, |l| l.index);
            if last.saturating_sub(at) <= MAX_TRANSFER_LAG {
                caught_up.insert(*node);
            }
        }
    }
    Ok(LeaderView {
        voters,
        nodes,
        joint,
        stranded,
        live,
        caught_up,
    })
}

/// The leader's view once no membership change is under way, waiting up
/// to `within` for one to finish.
async fn settled_view(
    raft: &Raft,
    group: u64,
    within: Duration,
) -> Result<LeaderView, MembershipError> {
    let start = tokio::time::Instant::now();
    let deadline = start + within;
    let mut finishing = false;
    loop {
        let v = leader_view(raft)?;
        if !v.joint {
            return Ok(v);
        }
        // Still joint a second after the joint configuration committed:
        // nobody is finishing it (its leader died mid-change). Propose
        // its target, once; an error means someone else is at it.
        if let Some(target) = v
            .stranded
            .filter(|_| !finishing && start.elapsed() > Duration::from_secs(1))
        {
            finishing = true;
            tracing::info!(
                group,
                ?target,
                "finishing a membership change its leader left joint"
            );
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let _ = timed(
                left,
                raft.change_membership(ChangeMembers::ReplaceAllVoters(target), false),
            )
            .await;
            continue;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(MembershipError::Incomplete(format!(
                "group {group} is in the middle of another membership change; retry once it has finished"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn raft_of(router: &Router, group: u64) -> Result<Raft, MembershipError> {
    router
        .raft(group)
        .ok_or(MembershipError::UnknownGroup(group))
}

fn write_error(
    group: u64,
    e: RaftError<crate::types::TypeConfig, ClientWriteError<crate::types::TypeConfig>>,
) -> MembershipError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => MembershipError::NotLeader {
            leader: f.leader_id,
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            MembershipError::Incomplete(format!("group {group}: {c}; retry once it has finished"))
        }
        RaftError::APIError(e) => MembershipError::Incomplete(format!("group {group}: {e}")),
        RaftError::Fatal(e) => {
            MembershipError::Incomplete(format!("group {group}: raft stopped: {e}"))
        }
    }
}

/// Make `node` (reached at `peer_addr`) a voter of `group`, from its
/// leader: add it as a learner, wait (up to `within`) until it has caught
/// up, then change the membership. Returns the voters after the change.
/// `node` must already host a replica of the group (`Admin.HostReplica`).
pub async fn add(
    router: &Router,
    group: u64,
    node: u64,
    peer_addr: String,
    within: Duration,
) -> Result<BTreeSet<u64>, MembershipError> {
    let raft = raft_of(router, group)?;
    let v = settled_view(&raft, group, within / 4).await?;
    if v.voters.contains(&node) {
        return Ok(v.voters);
    }
    if !v.nodes.contains(&node) {
        timed(
            within,
            raft.add_learner(node, BasicNode { addr: peer_addr }, false),
        )
        .await
        .map_err(|_| {
            MembershipError::Incomplete(format!("group {group}: adding learner {node} timed out"))
        })?
        .map_err(|e| write_error(group, e))?;
    }
    let deadline = tokio::time::Instant::now() + within;
    let v = loop {
        let v = leader_view(&raft)?;
        if v.caught_up.contains(&node) {
            break v;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(MembershipError::Incomplete(format!(
                "node {node} is a learner of group {group} but has not caught up within {within:?} \
                 (is its replica hosted, and its peer port reachable?); run the command again to \
                 wait longer, or remove it"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    if pact_common::faults::enabled("add-stops-at-learner") {
        return Err(MembershipError::Incomplete(format!(
            "add-stops-at-learner: node {node} left a caught-up learner of group {group}"
        )));
    }
    let mut new = v.voters.clone();
    new.insert(node);
    let v = live_quorum(&raft, group, &new).await?;
    let add = BTreeSet::from([node]);
    if pact_common::faults::enabled("crash-mid-membership-change") {
        crash_mid_change(&raft, group, &v.voters, &new).await;
    }
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    timed(
        left.max(Duration::from_secs(1)),
        raft.change_membership(ChangeMembers::AddVoterIds(add), false),
    )
    .await
    .map_err(|_| {
        MembershipError::Incomplete(format!(
            "group {group}: making node {node} a voter did not commit in time; run the command again"
        ))
    })?
    .map_err(|e| write_error(group, e))?;
    Ok(leader_view(&raft)?.voters)
}

/// Take `node` out of `group`'s membership, from its leader; returns the
/// voters after the change. A leader asked to remove itself hands its
/// leadership to a caught-up voter and answers `NotLeader` naming it.
///
/// `anchors` (if not empty) are the group's replicas that clients and
/// restarting nodes find it through (the config's list): the last of them
/// is never removed, or the group could only be found by luck.
pub async fn remove(
    router: &Router,
    group: u64,
    node: u64,
    anchors: &BTreeSet<u64>,
    within: Duration,
) -> Result<BTreeSet<u64>, MembershipError> {
    let raft = raft_of(router, group)?;
    let v = settled_view(&raft, group, within / 4).await?;
    if !v.nodes.contains(&node) {
        return Ok(v.voters);
    }
    let me = *raft.node_id();
    let mut new = v.voters.clone();
    new.remove(&node);
    if !anchors.is_empty() && v.voters.contains(&node) && new.is_disjoint(anchors) {
        return Err(MembershipError::Refused(format!(
            "node {node} is the last voter of group {group} that the cluster config lists \
             ({anchors:?}); clients and restarting nodes find the group through those, so one \
             must stay: add one of them back first"
        )));
    }
    let v = if v.voters.contains(&node) {
        live_quorum(&raft, group, &new).await?
    } else {
        v
    };
    if node == me {
        let Some(to) = new.iter().copied().find(|n| v.caught_up.contains(n)) else {
            return Err(MembershipError::Incomplete(format!(
                "node {me} leads group {group} and no other voter has caught up to take over; retry"
            )));
        };
        crate::balance::transfer(router, group, to, within.min(crate::admin::TRANSFER_WITHIN))
            .await
            .map_err(|e| MembershipError::Incomplete(e.to_string()))?;
        return Err(MembershipError::NotLeader { leader: Some(to) });
    }
    let change = if v.voters.contains(&node) {
        ChangeMembers::RemoveVoters(BTreeSet::from([node]))
    } else {
        ChangeMembers::RemoveNodes(BTreeSet::from([node]))
    };
    timed(within, raft.change_membership(change, false))
        .await
        .map_err(|_| {
            MembershipError::Incomplete(format!(
                "group {group}: removing node {node} did not commit within {within:?}; run the command again"
            ))
        })?
        .map_err(|e| write_error(group, e))?;
    Ok(leader_view(&raft)?.voters)
}

/// The leader's view once a majority of `new` is live: a leader elected
/// a moment ago has not heard from its followers yet, so the check is
/// given [`MAX_ACK_AGE`] and a little more before it refuses.
async fn live_quorum(
    raft: &Raft,
    group: u64,
    new: &BTreeSet<u64>,
) -> Result<LeaderView, MembershipError> {
    let deadline = tokio::time::Instant::now() + MAX_ACK_AGE * 2;
    loop {
        let v = leader_view(raft)?;
        match check_quorum(group, &v.voters, new, &v.live) {
            Ok(()) => return Ok(v),
            Err(why) if tokio::time::Instant::now() >= deadline => {
                return Err(MembershipError::Refused(why))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The `crash-mid-membership-change` fault (see `pact_common::faults`):
/// the crash window of a change, made certain. Instead of openraft's two
/// steps, append the joint configuration of `old` and `new` alone, wait
/// until it commits, and abort the process before any final
/// configuration exists, as a leader dying between the steps leaves it.
async fn crash_mid_change(raft: &Raft, group: u64, old: &BTreeSet<u64>, new: &BTreeSet<u64>) {
    let m = raft.metrics().borrow_watched().clone();
    let nodes: std::collections::BTreeMap<u64, BasicNode> = m
        .membership_config
        .membership()
        .nodes()
        .map(|(id, n)| (*id, n.clone()))
        .collect();
    let joint = match openraft::Membership::new(vec![old.clone(), new.clone()], nodes) {
        Ok(j) => j,
        Err(e) => {
            tracing::error!(group, error = %e, "crash-mid-membership-change: no joint membership");
            return;
        }
    };
    let none: Vec<openraft::raft::Precondition<crate::types::TypeConfig>> = Vec::new();
    if let Err(e) = raft
        .append_membership(joint, openraft::entry::RaftPayload::blank(), none)
        .await
    {
        tracing::error!(group, error = %e, "crash-mid-membership-change: joint membership refused");
        return;
    }
    let committed = raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(
            |m| {
                m.committed_membership_config
                    .membership()
                    .get_joint_config()
                    .len()
                    > 1
            },
            "joint membership committed",
        )
        .await;
    tracing::error!(
        group,
        committed = committed.is_ok(),
        "crash-mid-membership-change: aborting with the group's membership joint"
    );
    std::process::abort();
}

async fn timed<F: std::future::Future>(within: Duration, f: F) -> Result<F::Output, ()> {
    tokio::time::timeout(within, f).await.map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[u64]) -> BTreeSet<u64> {
        v.iter().copied().collect()
    }

    #[test]
    fn a_change_needs_a_live_majority_of_the_new_voters() {
        let voters = set(&[1, 2, 3]);
        // All up: adding or removing one is fine.
        assert!(check_quorum(1, &voters, &set(&[1, 2, 3, 4]), &set(&[1, 2, 3, 4])).is_ok());
        assert!(check_quorum(1, &voters, &set(&[1, 2]), &set(&[1, 2, 3])).is_ok());
        // Node 3 is down: removing 2 leaves {1, 3}, half of which answers.
        let err = check_quorum(1, &voters, &set(&[1, 3]), &set(&[1, 2])).unwrap_err();
        assert!(err.contains("not answering: [3]"), "{err}");
        // ... but removing the dead node 3 itself is what the operator wants.
        assert!(check_quorum(1, &voters, &set(&[1, 2]), &set(&[1, 2])).is_ok());
        // Replacing a dead node: {1, 2, 3} + 4 with 3 down still has 3 of 4.
        assert!(check_quorum(1, &voters, &set(&[1, 2, 3, 4]), &set(&[1, 2, 4])).is_ok());
        // With two down, nothing can change.
        assert!(check_quorum(1, &voters, &set(&[1, 2, 3, 4]), &set(&[1, 4])).is_err());
    }

    #[test]
    fn the_last_voter_is_never_removed() {
        let err = check_quorum(7, &set(&[1]), &set(&[]), &set(&[1])).unwrap_err();
        assert!(err.contains("last voter of group 7"), "{err}");
    }
}
