//! A replica that starts on an empty store: a brand-new group, or a replica
//! that lost its disk and must rejoin without breaking Raft's safety.
//!
//! A replica that lost its disk also lost its vote and its log. Let back in
//! as an ordinary voter it could (a) acknowledge appends from a deposed
//! leader whose leader id is below one it had already accepted, forming a
//! quorum that commits an entry conflicting with one committed through its
//! earlier acknowledgement, or (b) vote for a candidate that lacks an entry
//! committed with its earlier acknowledgement, electing a leader that
//! overwrites it. So it rejoins behind a [`Gate`]:
//!
//! - While *probing*, it asks every other replica for its vote and last log
//!   id (a Pre-Vote request, which changes nothing at the receiver) and
//!   refuses appends, snapshots and votes. It cannot tell a new group from
//!   a lost disk by itself, so it waits for all of them: the one peer that
//!   did not answer could be the only one that knows what it promised.
//!   "Every other replica" is the group's current voters, which its
//!   config, its own records and the metadata table may each have missed
//!   (the group moved): the answers also name each peer's membership, and
//!   the voters of the newest one named are asked too
//!   (`replica::widen_plan`).
//! - If no peer holds an entry past index 0, nothing was ever committed:
//!   the group is new and the replica joins normally (the first listed
//!   replica initializes the group if no peer did).
//! - Otherwise it *rejoins*: the floor is the largest leader id in any
//!   peer's vote, which is at least every leader id it ever acknowledged
//!   (a leader or candidate stores its own vote). It stores that floor
//!   durably before accepting anything, then accepts appends and snapshots
//!   only from leaders at or above the floor, never votes or campaigns,
//!   and remembers the first such leader L and its commit index c.
//! - It votes again once it has applied an entry at or past c whose leader
//!   id is at least L. L was elected without this replica's new vote, so
//!   by Raft's leader completeness L's log holds every entry committed
//!   before L's term, and they come before L's own entries (or, if L itself
//!   committed them, before c): the replica's log now holds them too.
//!
//! The decisions are pure functions of the answers, tested without I/O.

use std::sync::Mutex;

use openraft::raft::VoteResponse;

use crate::types::{LogId, TypeConfig, Vote};

/// A leader id: (term, node id), totally ordered (openraft's `leader_id_adv`).
pub(crate) type LeaderId = openraft::impls::leader_id_adv::LeaderId<u64, u64>;

/// What a replica on an empty store does once every peer answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// No peer has initialized the group: initialize it (first replica only).
    Create,
    /// The group exists but never committed anything: join as a voter.
    Join,
    /// The group has data this replica lost: rejoin above `floor`.
    Rejoin { floor: LeaderId },
}

/// Whether an answer shows the group's data (an entry past the first).
pub(crate) fn holds_data<'a>(
    answers: impl IntoIterator<Item = &'a VoteResponse<TypeConfig>>,
) -> bool {
    answers
        .into_iter()
        .any(|a| a.last_log_id.as_ref().is_some_and(|l| l.index > 0))
}

/// Decide from every peer's answer (`first`: this replica is the one that
/// creates the group).
pub(crate) fn decide(first: bool, answers: &[VoteResponse<TypeConfig>]) -> Decision {
    if holds_data(answers) {
        let floor = answers
            .iter()
            .map(|a| a.vote.leader_id)
            .max()
            .unwrap_or(LeaderId {
                term: 0,
                node_id: 0,
            });
        return Decision::Rejoin { floor };
    }
    if first && answers.iter().all(|a| a.last_log_id.is_none()) {
        Decision::Create
    } else {
        Decision::Join
    }
}

/// Why a message was refused at the gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Still asking peers whether the group exists.
    Probing,
    /// Rejoining: this replica does not vote yet.
    NoVote,
    /// Rejoining: the sender's leader id is below the floor.
    BelowFloor { leader: LeaderId, floor: LeaderId },
    /// Restarted less than a leader lease ago: no vote yet.
    Quiet,
    /// Its node is checking a leader's word that the group removed it,
    /// and will drop it if so: it takes nothing meanwhile.
    Dropping,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Probing => write!(f, "replica started empty; asking its peers first"),
            Refused::Dropping => write!(f, "replica is being dropped: its group removed it"),
            Refused::NoVote => write!(f, "replica is rejoining after data loss; not voting yet"),
            Refused::Quiet => write!(
                f,
                "replica restarted less than a leader lease ago; not voting yet"
            ),
            Refused::BelowFloor { leader, floor } => write!(
                f,
                "replica is rejoining after data loss; leader {leader} is below {floor}"
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Open,
    Probing,
    Rejoining {
        floor: LeaderId,
        /// First admitted leader and the commit index it announced then.
        contact: Option<(LeaderId, u64)>,
    },
}

/// What one replica lets through from its peers; shared by the router
/// (which consults it for every message) and the replica's rejoin task.
#[derive(Debug)]
pub(crate) struct Gate {
    state: Mutex<State>,
    /// Until then no vote passes even when open: a restarted replica's
    /// quiet period (lease reads; see `Replica::start`).
    quiet_until: Mutex<Option<std::time::Instant>>,
    /// When the gate was made (the replica's start).
    born: std::time::Instant,
    /// Milliseconds after `born` when a leader's append or snapshot last
    /// passed: how long a replica has heard from no leader (an atomic,
    /// since every append stores it).
    heard_ms: std::sync::atomic::AtomicU64,
    /// Shut while its node confirms that the group removed it: nothing
    /// passes, so it cannot be counted as caught up, promoted or voted
    /// for between the confirmation and the drop.
    shut: std::sync::atomic::AtomicBool,
    /// Voters of the group, as the metadata table lists them, that an
    /// empty replica's probe asked (see `replica::probe_plan`): they may
    /// speak for the group like the replicas the config names while the
    /// replica knows no membership or is rejoining (see `check_sender`).
    vouched: Mutex<std::collections::BTreeSet<u64>>,
}

impl Gate {
    fn new(state: State) -> Self {
        Gate {
            state: Mutex::new(state),
            quiet_until: Mutex::new(None),
            born: std::time::Instant::now(),
            heard_ms: std::sync::atomic::AtomicU64::new(0),
            shut: std::sync::atomic::AtomicBool::new(false),
            vouched: Mutex::default(),
        }
    }

    /// Let `peers`, and no others, speak for the group besides its known
    /// replicas (see `vouched`).
    pub(crate) fn vouch(&self, peers: std::collections::BTreeSet<u64>) {
        if let Ok(mut v) = self.vouched.lock() {
            *v = peers;
        }
    }

    /// The peers the metadata table vouched for (see `vouched`).
    pub(crate) fn vouched(&self) -> std::collections::BTreeSet<u64> {
        self.vouched.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Let nothing through (see `shut`) until [`Gate::unshut`].
    pub(crate) fn shut(&self) {
        self.shut.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub(crate) fn unshut(&self) {
        self.shut.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    fn is_shut(&self) -> Result<(), Refused> {
        if self.shut.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Refused::Dropping);
        }
        Ok(())
    }

    fn heard(&self) {
        let ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.heard_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// How long since a leader's message last passed (since the replica
    /// started, if none has).
    pub(crate) fn silent_for(&self) -> std::time::Duration {
        let heard = std::time::Duration::from_millis(
            self.heard_ms.load(std::sync::atomic::Ordering::Relaxed),
        );
        self.born.elapsed().saturating_sub(heard)
    }

    pub(crate) fn open() -> Self {
        Self::new(State::Open)
    }

    pub(crate) fn probing() -> Self {
        Self::new(State::Probing)
    }

    pub(crate) fn rejoining(floor: LeaderId) -> Self {
        Self::new(State::Rejoining {
            floor,
            contact: None,
        })
    }

    /// Grant no vote for `d` from now.
    pub(crate) fn quiet_for(&self, d: std::time::Duration) {
        let until = std::time::Instant::now() + d;
        *self.quiet_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(until);
    }

    fn quiet(&self) -> bool {
        self.quiet_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|u| std::time::Instant::now() < u)
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        // A poisoned lock only means a panic elsewhere mid-update; the
        // state itself is always a whole value.
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    pub(crate) fn is_open(&self) -> bool {
        self.with(|s| *s == State::Open)
    }

    pub(crate) fn is_probing(&self) -> bool {
        self.with(|s| *s == State::Probing)
    }

    pub(crate) fn set_open(&self) {
        self.with(|s| *s = State::Open);
    }

    pub(crate) fn set_rejoining(&self, floor: LeaderId) {
        self.with(|s| {
            *s = State::Rejoining {
                floor,
                contact: None,
            }
        });
    }

    /// For status: "open" (votes and campaigns), "quiet" (restarted less
    /// than a leader lease ago), "probing" (started empty, asking its peers
    /// whether the group exists) or "rejoining" (lost its data; catching up
    /// without a vote) or "dropping" (shut while its node confirms that
    /// the group removed it). Only an open replica helps elect a leader.
    pub(crate) fn name(&self) -> &'static str {
        if self.is_shut().is_err() {
            return "dropping";
        }
        let quiet = self.quiet();
        self.with(|s| match s {
            State::Open if quiet => "quiet",
            State::Open => "open",
            State::Probing => "probing",
            State::Rejoining { .. } => "rejoining",
        })
    }

    /// A vote or a vote request may pass only when open.
    pub(crate) fn admit_vote(&self) -> Result<(), Refused> {
        self.is_shut()?;
        let quiet = self.quiet();
        self.with(|s| match s {
            State::Open if quiet => Err(Refused::Quiet),
            State::Open => Ok(()),
            State::Probing => Err(Refused::Probing),
            State::Rejoining { .. } => Err(Refused::NoVote),
        })
    }

    /// An append (`commit`: the leader's commit index) or a snapshot
    /// (`commit`: its last index) from the leader of `vote`.
    pub(crate) fn admit_leader(&self, vote: &Vote, commit: u64) -> Result<(), Refused> {
        self.is_shut()?;
        let leader = vote.leader_id;
        let admitted = self.with(|s| match s {
            State::Open => Ok(()),
            State::Probing => Err(Refused::Probing),
            State::Rejoining { floor, contact } => {
                if leader < *floor {
                    return Err(Refused::BelowFloor {
                        leader,
                        floor: *floor,
                    });
                }
                if contact.is_none() {
                    *contact = Some((leader, commit));
                }
                Ok(())
            }
        });
        if admitted.is_ok() {
            self.heard();
        }
        admitted
    }

    /// A snapshot chunk from the leader of `vote`: refused where
    /// [`Gate::admit_leader`] would refuse it, but it records no contact
    /// (a chunk carries no commit index; the snapshot's last one comes
    /// with its final message, which goes through `admit_leader`).
    pub(crate) fn check_leader(&self, vote: &Vote) -> Result<(), Refused> {
        self.is_shut()?;
        let leader = vote.leader_id;
        let admitted = self.with(|s| match s {
            State::Open => Ok(()),
            State::Probing => Err(Refused::Probing),
            State::Rejoining { floor, .. } if leader < *floor => Err(Refused::BelowFloor {
                leader,
                floor: *floor,
            }),
            State::Rejoining { .. } => Ok(()),
        });
        if admitted.is_ok() {
            self.heard();
        }
        admitted
    }

    /// While rejoining: whether `applied` proves the log holds everything
    /// committed before this replica lost its disk (see the module doc).
    pub(crate) fn caught_up(&self, applied: Option<&LogId>) -> bool {
        self.with(|s| match s {
            State::Rejoining {
                contact: Some((leader, commit)),
                ..
            } => applied.is_some_and(|a| a.index >= *commit && a.leader_id >= *leader),
            _ => false,
        })
    }

    /// While rejoining: the lowest leader id it accepts.
    pub(crate) fn floor(&self) -> Option<LeaderId> {
        self.with(|s| match s {
            State::Rejoining { floor, .. } => Some(*floor),
            _ => None,
        })
    }

    /// For logs: the target while rejoining, once known.
    pub(crate) fn target(&self) -> Option<(LeaderId, u64)> {
        self.with(|s| match s {
            State::Rejoining { contact, .. } => *contact,
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lid(term: u64, node_id: u64) -> LeaderId {
        LeaderId { term, node_id }
    }

    fn log_id(term: u64, node: u64, index: u64) -> LogId {
        openraft::LogId::new(lid(term, node), index)
    }

    fn answer(vote: Vote, last: Option<LogId>) -> VoteResponse<TypeConfig> {
        VoteResponse::new(vote, last, false)
    }

    #[test]
    fn a_new_group_is_created_by_the_first_replica_only_when_no_peer_has_anything() {
        let empty = answer(Vote::new(0, 0), None);
        assert_eq!(
            decide(true, &[empty.clone(), empty.clone()]),
            Decision::Create
        );
        assert_eq!(
            decide(false, &[empty.clone(), empty.clone()]),
            Decision::Join
        );
        assert_eq!(decide(true, &[]), Decision::Create);
        // A peer holds the initial membership (index 0) only: nothing was
        // ever committed, so join, but do not initialize a second time.
        let init = answer(Vote::new(1, 2), Some(log_id(0, 0, 0)));
        assert_eq!(decide(true, &[empty, init]), Decision::Join);
    }

    #[test]
    fn a_peer_with_entries_means_rejoin_above_the_highest_vote_seen() {
        let a = answer(Vote::new_committed(5, 2), Some(log_id(5, 2, 40)));
        let b = answer(Vote::new(6, 3), Some(log_id(5, 2, 38)));
        let c = answer(Vote::new(0, 0), None);
        assert_eq!(
            decide(true, &[a, b, c]),
            Decision::Rejoin { floor: lid(6, 3) }
        );
    }

    /// A shut gate (its replica about to be dropped) takes nothing, in any
    /// state, until opened again.
    #[test]
    fn a_shut_gate_takes_nothing_until_unshut() {
        let g = Gate::open();
        g.shut();
        let v = Vote::new_committed(3, 1);
        assert_eq!(g.admit_vote(), Err(Refused::Dropping));
        assert_eq!(g.admit_leader(&v, 7), Err(Refused::Dropping));
        assert_eq!(g.check_leader(&v), Err(Refused::Dropping));
        g.unshut();
        assert_eq!(g.admit_vote(), Ok(()));
        assert_eq!(g.admit_leader(&v, 7), Ok(()));
        assert_eq!(g.check_leader(&v), Ok(()));
    }

    /// Silence counts from the start until a leader's message passes; a
    /// refused one does not end it.
    #[test]
    fn silence_ends_only_with_an_admitted_leader() {
        let g = Gate::probing();
        std::thread::sleep(std::time::Duration::from_millis(30));
        assert!(g.admit_leader(&Vote::new_committed(2, 1), 3).is_err());
        assert!(g.check_leader(&Vote::new_committed(2, 1)).is_err());
        let before = g.silent_for();
        assert!(before >= std::time::Duration::from_millis(30), "{before:?}");
        g.set_rejoining(lid(1, 1));
        std::thread::sleep(std::time::Duration::from_millis(30));
        let longer = g.silent_for();
        assert!(longer >= before + std::time::Duration::from_millis(30));
        assert_eq!(g.admit_leader(&Vote::new_committed(2, 1), 3), Ok(()));
        assert!(g.silent_for() < longer, "an admitted append ends it");
    }

    #[test]
    fn probing_refuses_everything_and_rejoining_refuses_votes_and_old_leaders() {
        let g = Gate::probing();
        assert_eq!(g.admit_vote(), Err(Refused::Probing));
        assert_eq!(
            g.admit_leader(&Vote::new_committed(9, 1), 3),
            Err(Refused::Probing)
        );

        g.set_rejoining(lid(5, 2));
        assert_eq!(g.admit_vote(), Err(Refused::NoVote));
        assert!(matches!(
            g.admit_leader(&Vote::new_committed(4, 3), 10),
            Err(Refused::BelowFloor { .. })
        ));
        assert!(matches!(
            g.admit_leader(&Vote::new_committed(5, 1), 10),
            Err(Refused::BelowFloor { .. })
        ));
        assert_eq!(g.target(), None);
        assert_eq!(g.admit_leader(&Vote::new_committed(5, 2), 30), Ok(()));
        // Later leaders pass too, but the target stays the first contact's.
        assert_eq!(g.admit_leader(&Vote::new_committed(7, 1), 50), Ok(()));
        assert_eq!(g.target(), Some((lid(5, 2), 30)));
        assert!(!g.is_open());

        g.set_open();
        assert_eq!(g.admit_vote(), Ok(()));
        assert_eq!(g.admit_leader(&Vote::new_committed(1, 1), 0), Ok(()));
    }

    #[test]
    fn caught_up_needs_the_contact_commit_index_and_an_entry_of_its_leader_or_later() {
        let g = Gate::rejoining(lid(5, 2));
        assert!(!g.caught_up(Some(&log_id(5, 2, 100))), "no leader seen yet");
        g.admit_leader(&Vote::new_committed(6, 3), 30).unwrap();
        assert!(!g.caught_up(None));
        assert!(!g.caught_up(Some(&log_id(6, 3, 29))), "below commit index");
        assert!(
            !g.caught_up(Some(&log_id(5, 2, 35))),
            "past the index, but an older leader's entry: the new leader's \
             first entry, behind which lost commits may hide, is not in yet"
        );
        assert!(g.caught_up(Some(&log_id(6, 3, 30))));
        assert!(g.caught_up(Some(&log_id(7, 1, 31))));
        assert!(!Gate::open().caught_up(Some(&log_id(9, 9, 99))));
    }

    #[test]
    fn a_quiet_replica_grants_no_vote_until_its_quiet_period_ends() {
        let g = Gate::open();
        assert_eq!(g.admit_vote(), Ok(()));
        g.quiet_for(std::time::Duration::from_millis(200));
        assert_eq!(g.admit_vote(), Err(Refused::Quiet));
        // Appends from a leader still pass: it only must not vote.
        assert_eq!(g.admit_leader(&Vote::new_committed(3, 1), 5), Ok(()));
        std::thread::sleep(std::time::Duration::from_millis(250));
        assert_eq!(g.admit_vote(), Ok(()));
    }
}
