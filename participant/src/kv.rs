//! The shard state machine's application logic: what a committed command
//! does to the shard's keys. Deterministic: it depends only on the stored
//! state, the command, and the term of the leader that proposed it.
//!
//! Layout inside the shard's state:
//! - `d` ++ user key -> value (user data);
//! - `p` ++ txn id -> prepare record (the writes of a prepared transaction,
//!   present exactly while it is in doubt here);
//! - `o` ++ txn id -> outcome (`1` committed, `0` aborted), so a repeated
//!   commit or abort is answered the same way (idempotence). For a
//!   one-phase commit this record *is* the decision: the coordinator's
//!   own record of it is written afterwards, best effort, so TxnStatus
//!   asks the shards when its log has nothing (`Fence`).
//! - `h` ++ coordinator group -> that group's record horizon here (a
//!   timestamp, `pact_raft::codec`): outcome records of the group's
//!   transactions older than it are deleted (`Forget`), and in exchange no
//!   transaction older than it may still prepare or commit in one phase
//!   here (it is refused as expired). The coordinator group sets it, never
//!   above its own horizon (see the coordinator's `gc` module for why that
//!   is safe); it only grows.
//! - `f` ++ coordinator group -> that group's fence floor here (a
//!   timestamp): a transaction of the group older than it that has left
//!   no record here can no longer prepare or commit here, so it is
//!   aborted here without a record of its own. A new coordinator leader
//!   raises it to the start of its term once, the first time TxnStatus
//!   must settle an id an earlier leader may have issued: one key
//!   overwritten per term instead of an abort record per id asked about
//!   (the coordinator's `status`). It only grows, and deletes nothing.
//! - `g` -> the shard's descriptor (`pact_common::Descriptor`: what it
//!   owns, and the version of that). The first leader of the shard writes
//!   the config's (`Describe`), once; from then on it is the authority on
//!   what the shard owns, whatever a config or a client's map says.
//! - `s` -> the split under way, if any (`Split`): from `SplitBegin` to
//!   `SplitDone` (or `SplitCancel`/`SplitAbandon`). While it is frozen and not
//!   committed, nothing that writes in the part that moves applies.
//! - `w` ++ user key -> empty: a key of the part that moves written since
//!   the split under way began (tracked at apply, so every replica has the
//!   same list): what the new shard must copy again once the part is
//!   frozen. Deleted with the trim; a leftover only costs a key copied
//!   twice.
//! - `l` -> present in a shard created by a split once its first copy of
//!   the parent's part (taken while the parent still served it) is
//!   complete: the parent freezes the part only then.
//! - `k` -> present in a shard created by a split once it has copied the
//!   keys written since, from the frozen part (the parent commits the
//!   split only then).
//! - `c` -> the shards split off this one, ever (`Vec<ShardId>`), so a
//!   client refreshing its map from the descriptors finds them; in a
//!   shard merged into another, that one.
//! - `a` -> the merge this shard is absorbing, if any (`Absorb`): from
//!   `AbsorbAccept` (`AbsorbBegin` before attempts were numbered) to
//!   `AbsorbCommit`. Meanwhile the shard loads the
//!   other shard's keys (outside its own span, so it does not serve them
//!   yet) and neither splits nor absorbs another.
//! - `b` -> the log index of the `SplitStart` of the split or merge under
//!   way, or begun last (a `u64`): its attempt number, which tells a merge
//!   asked again from one cancelled before. (A `SplitBegin`, written by a
//!   build before attempts were numbered, leaves it as it was.)
//! - `r` ++ shard id -> the highest attempt of a merge from that shard
//!   this shard refused (`AbsorbRefuse`): acceptance of that attempt, or
//!   an earlier one, is refused from then on, so the merging shard may
//!   cancel it safely.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pact_common::{Descriptor, ShardId, Timestamp, TxnId};
use pact_raft::codec::byte_string::{self, changes};
use pact_raft::codec::{decode, encode};
use pact_raft::{Applied, Apply, Lookup, StateView};
use serde::{Deserialize, Serialize};

use crate::txn::{Freed, TxnManager};

pub const DATA_PREFIX: u8 = b'd';
pub const PREPARED_PREFIX: u8 = b'p';
pub const OUTCOME_PREFIX: u8 = b'o';
pub const HORIZON_PREFIX: u8 = b'h';
pub const FLOOR_PREFIX: u8 = b'f';
pub const DESCRIPTOR_KEY: &[u8] = b"g";
pub const SPLIT_KEY: &[u8] = b"s";
pub const SUCCESSORS_KEY: &[u8] = b"c";
/// In a shard created by a split: its first copy of the parent's part is
/// complete.
pub const LOADED_KEY: &[u8] = b"l";
/// In a shard created by a split: it has copied again what was written
/// in the parent's part since the split began, now frozen.
pub const CAUGHT_UP_KEY: &[u8] = b"k";
/// Keys of the part a split moves written since it began.
pub const WRITTEN_PREFIX: u8 = b'w';
/// The merge a shard is absorbing.
pub const ABSORB_KEY: &[u8] = b"a";
/// The log index of the `SplitStart` of the split under way (or begun
/// last): its attempt number.
pub const ATTEMPT_KEY: &[u8] = b"b";
/// The highest attempt of a merge from a shard (`r` ++ its id) refused here.
pub const REFUSED_PREFIX: u8 = b'r';

/// Most outcome records one `Forget` command deletes, so one entry (and
/// the storage batch that applies it) stays small.
pub const FORGET_BATCH: usize = 4096;

/// One key change: `Some(value)` puts, `None` deletes.
pub type Mutation = (Vec<u8>, Option<Vec<u8>>);

/// A command replicated through a shard's Raft log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardCommand {
    /// Apply `writes` now: a transaction on this shard alone (one Raft
    /// round), whose locks were taken under the leader of `term`.
    OnePhase {
        txn: TxnId,
        #[serde(with = "changes")]
        writes: Vec<Mutation>,
        term: u64,
    },
    /// Make `txn`'s writes durable as in doubt, holding its locks, until
    /// the coordinator's decision arrives.
    Prepare {
        txn: TxnId,
        #[serde(with = "changes")]
        writes: Vec<Mutation>,
        term: u64,
    },
    Commit {
        txn: TxnId,
    },
    Abort {
        txn: TxnId,
    },
    /// Settle what this shard will ever say about `txn` (its coordinator
    /// found no decision and is about to presume an abort): an outcome or
    /// a prepare record stands; otherwise an abort is recorded, so a late
    /// one-phase commit or prepare of `txn` is rejected here. Appended
    /// last: older log entries keep their encoding.
    Fence {
        txn: TxnId,
    },
    /// Raise coordinator group `group`'s record horizon here to `below`
    /// (kept if already higher) and delete the outcome records of `txns`
    /// that are older than the horizon (the leader lists them, so every
    /// replica deletes the same keys). Appended last.
    Forget {
        group: u64,
        below: Timestamp,
        txns: Vec<TxnId>,
    },
    /// Raise coordinator group `group`'s fence floor here to `below`
    /// (kept if already higher): the group's transactions older than it
    /// that have no record here are aborted here from now on. Appended
    /// last.
    Floor {
        group: u64,
        below: Timestamp,
    },
    /// Record the shard's descriptor, unless it has one already (the
    /// first leader writes the config's). Appended last.
    Describe {
        descriptor: Descriptor,
    },
    /// Start a split: `split.child` will own part of what the shard owns
    /// now. From its apply on, every write there is also recorded
    /// (`WRITTEN_PREFIX`), for the new shard's second copy. Refused unless
    /// the descriptor is still the one the split was cut from. Appended
    /// last, like every command below.
    SplitBegin {
        split: Split,
    },
    /// Give up the split under way for `child` (its new shard could not
    /// be hosted); nothing moved. Refused once the new shard is being
    /// created.
    SplitCancel {
        child: ShardId,
    },
    /// The shard owns `split.left` from now on (its descriptor becomes
    /// it) and names `child` among its successors. Refused while a
    /// prepare record writes in the part that moves.
    SplitCommit {
        child: ShardId,
    },
    /// State copied into a new shard before it serves: data, record
    /// horizons and fence floors (stored keys, `d`, `h` or `f` first).
    /// Refused once the shard has a descriptor, so a copy driven again
    /// after a crash cannot overwrite what the shard wrote since.
    /// `done` marks the first copy complete (`LOADED_KEY`).
    Load {
        #[serde(with = "byte_string::pairs")]
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
        done: bool,
    },
    /// Delete these user keys where the shard no longer owns them (what
    /// a split moved away): the leader lists them.
    Trim {
        #[serde(with = "byte_string::list")]
        keys: Vec<Vec<u8>>,
    },
    /// The split for `child` is over (the child serves, the moved keys
    /// are trimmed).
    SplitDone {
        child: ShardId,
    },
    /// The locks and prepared transactions in the part that moves are
    /// gone: the new shard may copy what was written there since the
    /// split began. Refused while a prepare record writes there, and
    /// unless the part is frozen.
    SplitDrained {
        child: ShardId,
    },
    /// The new shard's replicas are hosted and it is being created.
    SplitCreated {
        child: ShardId,
    },
    /// The new shard has its first copy: freeze the part that moves. From
    /// its apply on, no lock there is granted and no one-phase commit or
    /// prepare writing there applies. `span` is the part (refused unless
    /// it is the recorded one), so the leader's lock table learns it from
    /// the command.
    SplitFreeze {
        child: ShardId,
        span: pact_common::Span,
    },
    /// The part that moves could not drain: lift the freeze (the split
    /// stays, and freezes again later). Refused once drained.
    SplitThaw {
        child: ShardId,
    },
    /// The second copy into a new shard: the keys written in the parent's
    /// part since the split began, each with its value now (`None`: it
    /// was deleted). Refused once the shard has a descriptor. `done`
    /// marks the copy complete (`CAUGHT_UP_KEY`).
    LoadWritten {
        #[serde(with = "changes")]
        pairs: Vec<Mutation>,
        done: bool,
    },
    /// Delete these marks of writes during a split (`w` keys, listed by
    /// the leader), unless a split under way still needs them (begun and
    /// not committed).
    Unmark {
        #[serde(with = "byte_string::list")]
        keys: Vec<Vec<u8>>,
    },
    /// Accept a merge (in the shard that stays): it will own `into` (its
    /// span and `from`'s), and loads `from`'s keys meanwhile (`Load`,
    /// `LoadWritten`). Refused unless its descriptor is at `base`, and
    /// while it splits or absorbs another shard.
    AbsorbBegin {
        from: ShardId,
        base: u64,
        into: Descriptor,
    },
    /// `from` committed the merge and owns nothing now: this shard owns
    /// the recorded `into` from here. Refused until the copy of what was
    /// written in `from` since the merge began is complete.
    AbsorbCommit {
        from: ShardId,
    },
    /// Refuse `from`'s merge into this shard, attempt `attempt` (and any
    /// earlier one) for good: proposed by a shard that is merging away
    /// itself, when the merging shard is the one to give way (a larger
    /// id). The merging shard cancels once it sees this. Refused once
    /// the merge from `from` is accepted.
    AbsorbRefuse {
        from: ShardId,
        attempt: u64,
    },
    /// `SplitBegin` that also numbers the attempt (`ATTEMPT_KEY`: this
    /// entry's log index). A separate command so that a `SplitBegin`
    /// applied by a build before attempts were numbered writes the same
    /// state on every replica, whichever build applies it.
    SplitStart {
        split: Split,
    },
    /// `SplitCancel` of attempt `attempt` only: refused if the split or
    /// merge under way is another attempt (a driver left from an earlier
    /// one, late, cancels nothing of a later one).
    SplitAbandon {
        child: ShardId,
        attempt: u64,
    },
    /// `AbsorbBegin` for attempt `attempt` of the merge: refused too if
    /// that attempt was refused here (`AbsorbRefuse`).
    AbsorbAccept {
        from: ShardId,
        base: u64,
        into: Descriptor,
        attempt: u64,
    },
    /// Coordinators' decisions (`(txn, commit)`, each applied as `Commit`
    /// or `Abort` would be, in order), then `then` if any (a `Prepare` or
    /// a `OnePhase`; anything else is refused), in one entry: a decision
    /// held for a moment rides in the shard's next transaction entry
    /// instead of taking a round and an fsync of its own, and lands ahead
    /// of that entry's writes in the same atomic batch.
    Decided {
        decisions: Vec<(TxnId, bool)>,
        then: Option<Box<ShardCommand>>,
    },
}

/// A merge being absorbed, as the shard that stays records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Absorb {
    /// The shard merged into this one.
    pub from: ShardId,
    /// This shard's descriptor once the merge commits.
    pub into: Descriptor,
    /// `from`'s keys, copied while it served them, are loaded.
    pub loaded: bool,
    /// The keys written in `from` since the merge began are loaded again,
    /// from its frozen, drained state.
    pub caught_up: bool,
}

/// The merge this shard is absorbing, if any.
pub fn absorb_record(get: Lookup<'_>) -> io::Result<Option<Absorb>> {
    match get(ABSORB_KEY)? {
        Some(v) => Ok(Some(decode(&v, "absorb record")?)),
        None => Ok(None),
    }
}

/// The attempt number of the split or merge begun here last (0: none
/// ever, or only before attempts were numbered).
pub fn attempt(get: Lookup<'_>) -> io::Result<u64> {
    match get(ATTEMPT_KEY)? {
        Some(v) => decode(&v, "split attempt"),
        None => Ok(0),
    }
}

pub fn refused_key(from: ShardId) -> Vec<u8> {
    let mut k = vec![REFUSED_PREFIX];
    k.extend_from_slice(&from.0.to_be_bytes());
    k
}

/// The highest attempt of a merge from `from` refused here, if any.
pub fn refused(get: Lookup<'_>, from: ShardId) -> io::Result<Option<u64>> {
    get(&refused_key(from))?
        .map(|v| decode(&v, "refused merge"))
        .transpose()
}

/// `SplitBegin` (no `attempt`) and `SplitStart` (the entry's index as
/// `attempt`): record `split` if the shard is at the version it was cut
/// from and nothing else is under way.
fn begin(
    get: Lookup<'_>,
    split: &Split,
    attempt: Option<u64>,
) -> io::Result<(Vec<Mutation>, ShardReply)> {
    let d = descriptor(get)?;
    Ok(match split_record(get)? {
        Some(s) if s.child.shard == split.child.shard => (Vec::new(), ShardReply::Done),
        Some(s) => (
            Vec::new(),
            ShardReply::Rejected(format!("a split into shard {} is under way", s.child.shard)),
        ),
        None if absorb_record(get)?.is_some() => (
            Vec::new(),
            ShardReply::Rejected("the shard is absorbing a merge".into()),
        ),
        None => match d {
            Some(d)
                if split.left.shard == d.shard
                    && split.left.version == d.version + 1
                    && (split.child.version == d.version + 1
                        || (split.merge.is_some()
                            && split.child.version > d.version
                            && split.left.span.is_empty()))
                    && !split.committed
                    && !split.drained
                    && !split.frozen
                    && !split.created =>
            {
                let mut w = vec![(SPLIT_KEY.to_vec(), Some(encode(split)?))];
                if let Some(a) = attempt {
                    w.push((ATTEMPT_KEY.to_vec(), Some(encode(&a)?)));
                }
                (w, ShardReply::Done)
            }
            _ => (
                Vec::new(),
                ShardReply::Rejected("the split was cut from another version of the shard".into()),
            ),
        },
    })
}

/// `AbsorbBegin`/`AbsorbAccept`: accept `from`'s merge into `into` if
/// this shard is at `base`, neither splitting nor absorbing another, and
/// (given the attempt) has not refused that attempt.
fn accept(
    get: Lookup<'_>,
    from: ShardId,
    base: u64,
    into: &Descriptor,
    attempt: Option<u64>,
) -> io::Result<(Vec<Mutation>, ShardReply)> {
    let d = descriptor(get)?;
    Ok(match (absorb_record(get)?, split_record(get)?, d) {
        (Some(a), _, _) if a.from == from => (Vec::new(), ShardReply::Done),
        (Some(a), _, _) => (
            Vec::new(),
            ShardReply::Rejected(format!("absorbing shard {} already", a.from)),
        ),
        (None, Some(s), _) => (
            Vec::new(),
            ShardReply::Rejected(format!("a split into shard {} is under way", s.child.shard)),
        ),
        (None, None, _) if attempt.is_some() && refused(get, from)? >= attempt => (
            Vec::new(),
            ShardReply::Rejected(format!("the merge of shard {from} was refused here")),
        ),
        (None, None, Some(d))
            if d.version == base && into.shard == d.shard && into.version > d.version =>
        {
            let a = Absorb {
                from,
                into: into.clone(),
                loaded: false,
                caught_up: false,
            };
            (
                vec![(ABSORB_KEY.to_vec(), Some(encode(&a)?))],
                ShardReply::Done,
            )
        }
        _ => (
            Vec::new(),
            ShardReply::Rejected("the merge was planned from another version of the shard".into()),
        ),
    })
}

/// A split under way, as the parent records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    /// What the parent keeps: its descriptor after the split.
    pub left: Descriptor,
    /// The new shard's descriptor.
    pub child: Descriptor,
    /// The parent's voters when the split began: the new shard's first
    /// voters, whichever leader drives the split (one membership for the
    /// new group, however often it is created).
    pub voters: Vec<pact_common::NodeId>,
    /// `SplitCreated` applied: every voter was asked to host the new
    /// shard, and it is being created; from here no replica of it is
    /// created afresh (a voter that lost its data rejoins behind its
    /// gate instead), and the split is not cancelled.
    pub created: bool,
    /// `SplitFreeze` applied (and no `SplitThaw` since): nothing is locked
    /// or written in the part that moves.
    pub frozen: bool,
    /// `SplitDrained` applied: no prepare record writes in the part that
    /// moves, and none can land there any more, so the new shard may copy
    /// what was written there since it began. From here the split only
    /// goes forward.
    pub drained: bool,
    /// `SplitCommit` applied: the parent owns `left` only.
    pub committed: bool,
    /// A merge, not a split: the whole shard moves into `child`, an
    /// existing shard whose descriptor was at this version when the merge
    /// began; `left` owns nothing. "Created" then means that shard
    /// accepted the merge (`AbsorbAccept`), and its copies are recorded in
    /// its `Absorb` record instead of `l` and `k`.
    pub merge: Option<u64>,
}

/// The split under way here, if any.
pub fn split_record(get: Lookup<'_>) -> io::Result<Option<Split>> {
    match get(SPLIT_KEY)? {
        Some(v) => Ok(Some(decode(&v, "split record")?)),
        None => Ok(None),
    }
}

/// The shards split off this one.
pub fn successors(get: Lookup<'_>) -> io::Result<Vec<ShardId>> {
    match get(SUCCESSORS_KEY)? {
        Some(v) => decode(&v, "successor list"),
        None => Ok(Vec::new()),
    }
}

/// Why `writes` may not apply here: a key the descriptor does not hold,
/// or one in the part a split under way moves. Checked at apply, so a
/// command whose locks were taken before a split cannot write where the
/// shard no longer (or soon no longer) decides.
/// `split` is the split record as [`split_record`] reads it (the caller
/// reads it once for this and for the writes' marks).
fn misplaced(
    get: Lookup<'_>,
    split: Option<&Split>,
    writes: &[Mutation],
) -> io::Result<Option<String>> {
    let frozen = split.filter(|s| s.frozen && !s.committed);
    if let Some(s) = frozen {
        if let Some((k, _)) = writes.iter().find(|(k, _)| s.child.span.contains(k)) {
            return Ok(Some(format!(
                "key {} is moving to shard {} (a split is under way); retry",
                crate::txn::show_key(k),
                s.child.shard
            )));
        }
    }
    if let Some(d) = descriptor(get)? {
        if let Some((k, _)) = writes.iter().find(|(k, _)| !d.span.contains(k)) {
            return Ok(Some(format!(
                "shard {} (version {}) no longer owns key {}",
                d.shard,
                d.version,
                crate::txn::show_key(k)
            )));
        }
    }
    Ok(None)
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardReply {
    Done,
    Prepared,
    /// Not applied, with the reason.
    Rejected(String),
    /// Older than the shard's record horizon for its coordinator group,
    /// and nothing about it is recorded here any more: whether it ever
    /// committed here is forgotten, and it can no longer prepare or commit
    /// here. Appended last.
    Expired,
    /// Not applied: it writes a key a split moved or is moving away from
    /// the shard (a request routed again finds the new owner). Appended
    /// last.
    Moved(String),
    /// The replies of a [`ShardCommand::Decided`]: one per decision, in
    /// order, and its `then`'s.
    Decided {
        decisions: Vec<ShardReply>,
        then: Option<Box<ShardReply>>,
    },
}

/// What a shard has recorded of a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnState {
    /// Nothing: not prepared, no outcome.
    None,
    /// Prepared, its decision not applied yet.
    Prepared,
    Committed,
    Aborted,
    /// Nothing recorded, and older than the horizon: forgotten (see
    /// [`ShardReply::Expired`]).
    Expired,
}

/// What a `Fence` reply says the shard recorded: `Done` a commit,
/// `Prepared` a prepare, `Rejected` an abort (recorded before or by the
/// fence itself).
pub fn fenced_state(reply: &ShardReply) -> TxnState {
    match reply {
        ShardReply::Done => TxnState::Committed,
        ShardReply::Prepared => TxnState::Prepared,
        ShardReply::Rejected(_) => TxnState::Aborted,
        ShardReply::Expired => TxnState::Expired,
        // A fence moves nothing and carries no decisions; were it to say
        // so, nothing landed.
        ShardReply::Moved(_) | ShardReply::Decided { .. } => TxnState::Aborted,
    }
}

/// The state the records read through `get` give `txn`. Pure.
pub fn txn_state(get: Lookup<'_>, txn: TxnId) -> io::Result<TxnState> {
    Ok(match get(&txn.key(OUTCOME_PREFIX))? {
        Some(v) if v.first() == Some(&1) => TxnState::Committed,
        Some(_) => TxnState::Aborted,
        None if get(&txn.key(PREPARED_PREFIX))?.is_some() => TxnState::Prepared,
        None if expired(get, txn)? => TxnState::Expired,
        // Below the floor nothing of it can land here any more: as final
        // as a recorded abort.
        None if below_floor(get, txn)? => TxnState::Aborted,
        None => TxnState::None,
    })
}

/// `prefix` ++ coordinator group: the key of a per-group value, or the
/// prefix of the group's records under `prefix` (`TxnId::key` puts the
/// group first).
fn per_group(prefix: u8, group: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(prefix);
    k.extend_from_slice(&group.to_be_bytes());
    k
}

/// A per-group timestamp kept here (0 if never set).
fn group_stamp(get: Lookup<'_>, prefix: u8, group: u64, what: &str) -> io::Result<Timestamp> {
    match get(&per_group(prefix, group))? {
        Some(v) => decode(&v, what),
        None => Ok(Timestamp(0)),
    }
}

/// Whether `txn` is older than its group's timestamp under `prefix`.
/// Implicit single-operation transactions keep no records: never.
fn older_than(get: Lookup<'_>, prefix: u8, txn: TxnId, what: &str) -> io::Result<bool> {
    Ok(txn.group != crate::node::IMPLICIT_GROUP
        && txn.ts < group_stamp(get, prefix, txn.group, what)?)
}

/// The shard's descriptor as applied here; `None` until its first leader
/// wrote it.
pub fn descriptor(get: Lookup<'_>) -> io::Result<Option<Descriptor>> {
    match get(DESCRIPTOR_KEY)? {
        Some(v) => Ok(Some(decode(&v, "shard descriptor")?)),
        None => Ok(None),
    }
}

pub fn floor_key(group: u64) -> Vec<u8> {
    per_group(FLOOR_PREFIX, group)
}

/// Coordinator group `group`'s fence floor here (0 if never set).
pub fn floor(get: Lookup<'_>, group: u64) -> io::Result<Timestamp> {
    group_stamp(get, FLOOR_PREFIX, group, "fence floor")
}

/// Whether `txn` is older than its group's fence floor here: without a
/// record here it is aborted here, and may not prepare or commit.
pub fn below_floor(get: Lookup<'_>, txn: TxnId) -> io::Result<bool> {
    older_than(get, FLOOR_PREFIX, txn, "fence floor")
}

/// Why a transaction below the fence floor is refused.
pub const BELOW_FLOOR: &str =
    "aborted: older than its coordinator leader's term, and fenced here before it prepared or committed";

pub fn horizon_key(group: u64) -> Vec<u8> {
    per_group(HORIZON_PREFIX, group)
}

/// Coordinator group `group`'s record horizon here (0 if never set).
pub fn horizon(get: Lookup<'_>, group: u64) -> io::Result<Timestamp> {
    group_stamp(get, HORIZON_PREFIX, group, "record horizon")
}

/// Whether `txn` is older than its group's record horizon here: its
/// outcome record may be gone, and it may not prepare or commit here.
pub fn expired(get: Lookup<'_>, txn: TxnId) -> io::Result<bool> {
    older_than(get, HORIZON_PREFIX, txn, "record horizon")
}

/// The prefix of every outcome record of coordinator group `group`'s
/// transactions.
pub fn outcome_prefix(group: u64) -> Vec<u8> {
    per_group(OUTCOME_PREFIX, group)
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct PrepareRecord {
    #[serde(with = "changes")]
    writes: Vec<Mutation>,
}

impl ShardCommand {
    /// The coordinator's decision on `txn`, as the shard logs it.
    pub fn decision(txn: TxnId, commit: bool) -> Self {
        if commit {
            ShardCommand::Commit { txn }
        } else {
            ShardCommand::Abort { txn }
        }
    }

    /// The command as proposed to the shard's log (`pact_raft::codec`).
    pub fn encode(&self) -> io::Result<Vec<u8>> {
        encode(self)
    }
    pub fn decode(b: &[u8]) -> Result<Self, String> {
        decode(b, "shard command").map_err(|e| e.to_string())
    }
}

impl ShardReply {
    pub fn decode(b: &[u8]) -> Result<Self, String> {
        decode(b, "shard reply").map_err(|e| e.to_string())
    }
}

pub fn data_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(DATA_PREFIX);
    k.extend_from_slice(key);
    k
}

/// The mark that user key `key` was written during the split under way.
pub fn written_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(WRITTEN_PREFIX);
    k.extend_from_slice(key);
    k
}

/// The exclusive end of the user-data range.
pub fn data_end() -> Vec<u8> {
    vec![DATA_PREFIX + 1]
}

/// Decode a stored prepare record (for rebuilding locks on a new leader).
pub fn prepared_writes(v: &[u8]) -> Result<Vec<Mutation>, String> {
    decode::<PrepareRecord>(v, "prepare record")
        .map(|r| r.writes)
        .map_err(|e| e.to_string())
}

/// What the leader's transaction manager must learn from an applied command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    Prepared(TxnId, bool),
    Finished(TxnId),
    /// A split froze the part it moves (`Some`), or ended (`None`): the
    /// manager stops (or resumes) granting locks there, and the
    /// descriptor may have changed.
    Freeze(Option<pact_common::Span>),
    /// Nothing changed for the transaction manager.
    Nothing,
}

impl ShardCommand {
    /// Whether applying it may change the descriptor or the split record
    /// (what the shard owns, and what is frozen).
    pub fn changes_ownership(&self) -> bool {
        matches!(
            self,
            ShardCommand::Describe { .. }
                | ShardCommand::SplitBegin { .. }
                | ShardCommand::SplitStart { .. }
                | ShardCommand::SplitCancel { .. }
                | ShardCommand::SplitAbandon { .. }
                | ShardCommand::SplitCreated { .. }
                | ShardCommand::SplitFreeze { .. }
                | ShardCommand::SplitThaw { .. }
                | ShardCommand::SplitDrained { .. }
                | ShardCommand::SplitCommit { .. }
                | ShardCommand::SplitDone { .. }
                | ShardCommand::AbsorbCommit { .. }
        )
    }
}

/// What the manager learns from a command and the reply it produced.
pub fn notice(cmd: &ShardCommand, reply: &ShardReply) -> Notice {
    match cmd {
        ShardCommand::Prepare { txn, .. } => Notice::Prepared(*txn, *reply == ShardReply::Prepared),
        ShardCommand::OnePhase { txn, .. }
        | ShardCommand::Commit { txn }
        | ShardCommand::Abort { txn } => Notice::Finished(*txn),
        // A fenced transaction is over here unless it is prepared: its
        // locks go (a fence that recorded the abort ends an open one).
        ShardCommand::Fence { txn } => match reply {
            ShardReply::Prepared => Notice::Nothing,
            _ => Notice::Finished(*txn),
        },
        ShardCommand::SplitFreeze { span, .. } if *reply == ShardReply::Done => {
            Notice::Freeze(Some(span.clone()))
        }
        ShardCommand::SplitCancel { .. }
        | ShardCommand::SplitAbandon { .. }
        | ShardCommand::SplitCommit { .. }
        | ShardCommand::SplitThaw { .. }
        | ShardCommand::AbsorbCommit { .. }
            if *reply == ShardReply::Done =>
        {
            Notice::Freeze(None)
        }
        ShardCommand::Forget { .. }
        | ShardCommand::Floor { .. }
        | ShardCommand::Describe { .. }
        | ShardCommand::SplitBegin { .. }
        | ShardCommand::SplitStart { .. }
        | ShardCommand::SplitCancel { .. }
        | ShardCommand::SplitAbandon { .. }
        | ShardCommand::SplitCommit { .. }
        | ShardCommand::Load { .. }
        | ShardCommand::Trim { .. }
        | ShardCommand::SplitDone { .. }
        | ShardCommand::SplitDrained { .. }
        | ShardCommand::SplitCreated { .. }
        | ShardCommand::SplitFreeze { .. }
        | ShardCommand::SplitThaw { .. }
        | ShardCommand::LoadWritten { .. }
        | ShardCommand::Unmark { .. }
        | ShardCommand::AbsorbBegin { .. }
        | ShardCommand::AbsorbAccept { .. }
        | ShardCommand::AbsorbRefuse { .. }
        | ShardCommand::AbsorbCommit { .. }
        | ShardCommand::Decided { .. } => Notice::Nothing,
    }
}

/// The effect of one command on the state seen through `get`. Pure: the
/// same state, command and term give the same result on every replica.
pub fn effect(
    get: Lookup<'_>,
    term: u64,
    index: u64,
    cmd: &ShardCommand,
) -> io::Result<(Vec<Mutation>, ShardReply)> {
    let outcome = |txn: TxnId| -> io::Result<Option<bool>> {
        Ok(get(&txn.key(OUTCOME_PREFIX))?.map(|v| v.first() == Some(&1)))
    };
    let data = |split: Option<&Split>, writes: &[Mutation]| -> Vec<Mutation> {
        // The last write of a key wins; the storage batch must not carry a
        // key twice, since order inside one atomic batch is not defined.
        let mut last: BTreeMap<Vec<u8>, Option<Vec<u8>>> = writes
            .iter()
            .map(|(k, v)| (data_key(k), v.clone()))
            .collect();
        // A split under way copies these keys again once it froze them.
        if let Some(s) = split.filter(|s| !s.committed) {
            for (k, _) in writes.iter().filter(|(k, _)| s.child.span.contains(k)) {
                last.insert(written_key(k), Some(Vec::new()));
            }
        }
        last.into_iter().collect()
    };
    Ok(match cmd {
        ShardCommand::OnePhase {
            txn,
            writes,
            term: t,
        } => {
            // Coordinated transactions leave an outcome record, so that a
            // coordinator unsure whether the commit happened can settle it
            // with an abort: refused if this applied first, final if not.
            // Implicit single-operation ones (group 0) have no one to ask.
            let recorded = txn.group != crate::node::IMPLICIT_GROUP;
            let recorded_outcome = if recorded { outcome(*txn)? } else { None };
            match (recorded, recorded_outcome) {
                (true, Some(true)) => (Vec::new(), ShardReply::Done),
                (true, Some(false)) => (Vec::new(), ShardReply::Rejected("already aborted".into())),
                // Its outcome here could have been forgotten: it must not
                // apply, or a fence that found nothing could be wrong.
                _ if expired(get, *txn)? => (Vec::new(), ShardReply::Expired),
                // TxnStatus may have called it aborted without a record.
                (true, None) if below_floor(get, *txn)? => {
                    (Vec::new(), ShardReply::Rejected(BELOW_FLOOR.into()))
                }
                _ if *t != term => {
                    let r = format!("locks were taken in term {t}, entry is in term {term}");
                    (Vec::new(), ShardReply::Rejected(r))
                }
                _ => {
                    let split = split_record(get)?;
                    if let Some(r) = misplaced(get, split.as_ref(), writes)? {
                        return Ok((Vec::new(), ShardReply::Moved(r)));
                    }
                    let mut w = data(split.as_ref(), writes);
                    if recorded {
                        w.push((txn.key(OUTCOME_PREFIX), Some(vec![1])));
                    }
                    (w, ShardReply::Done)
                }
            }
        }
        ShardCommand::Prepare {
            txn,
            writes,
            term: t,
        } => {
            let p = txn.key(PREPARED_PREFIX);
            if let Some(committed) = outcome(*txn)? {
                let r = if committed {
                    "already committed"
                } else {
                    "already aborted"
                };
                (Vec::new(), ShardReply::Rejected(r.into()))
            } else if get(&p)?.is_some() {
                (Vec::new(), ShardReply::Prepared)
            } else if expired(get, *txn)? {
                (Vec::new(), ShardReply::Expired)
            } else if below_floor(get, *txn)? {
                (Vec::new(), ShardReply::Rejected(BELOW_FLOOR.into()))
            } else if *t != term {
                let r = format!("leadership changed: locks from term {t}, prepare in term {term}");
                (Vec::new(), ShardReply::Rejected(r))
            } else if let Some(r) = misplaced(get, split_record(get)?.as_ref(), writes)? {
                (Vec::new(), ShardReply::Moved(r))
            } else {
                let rec = encode(&PrepareRecord {
                    writes: writes.clone(),
                })?;
                (vec![(p, Some(rec))], ShardReply::Prepared)
            }
        }
        ShardCommand::Commit { txn } => {
            let p = txn.key(PREPARED_PREFIX);
            let o = txn.key(OUTCOME_PREFIX);
            match (get(&p)?, outcome(*txn)?) {
                (Some(rec), _) => {
                    let writes = prepared_writes(&rec).map_err(io::Error::other)?;
                    let mut w = data(split_record(get)?.as_ref(), &writes);
                    w.push((p, None));
                    // Below the horizon the horizon itself refuses a late
                    // prepare; a record would only wait to be forgotten.
                    if !expired(get, *txn)? {
                        w.push((o, Some(vec![1])));
                    }
                    (w, ShardReply::Done)
                }
                (None, Some(true)) => (Vec::new(), ShardReply::Done),
                (None, Some(false)) => (Vec::new(), ShardReply::Rejected("already aborted".into())),
                // A commit decision is sent only to shards that prepared,
                // and a prepare record goes only with a decision applied
                // here; the first decision wins, so this one applied and
                // its outcome record was forgotten since: a late resend.
                (None, None) if expired(get, *txn)? => (Vec::new(), ShardReply::Done),
                (None, None) => (Vec::new(), ShardReply::Rejected("not prepared here".into())),
            }
        }
        ShardCommand::Abort { txn } => {
            let p = txn.key(PREPARED_PREFIX);
            let o = txn.key(OUTCOME_PREFIX);
            match outcome(*txn)? {
                Some(true) => (Vec::new(), ShardReply::Rejected("already committed".into())),
                Some(false) => (Vec::new(), ShardReply::Done),
                // The floor (or the horizon) already says aborted here.
                None if expired(get, *txn)? || below_floor(get, *txn)? => {
                    (vec![(p, None)], ShardReply::Done)
                }
                None => (vec![(p, None), (o, Some(vec![0]))], ShardReply::Done),
            }
        }
        ShardCommand::Fence { txn } => match txn_state(get, *txn)? {
            TxnState::None => (
                vec![(txn.key(OUTCOME_PREFIX), Some(vec![0]))],
                ShardReply::Rejected("aborted: fenced before it prepared or committed here".into()),
            ),
            TxnState::Prepared => (Vec::new(), ShardReply::Prepared),
            TxnState::Committed => (Vec::new(), ShardReply::Done),
            TxnState::Aborted => (Vec::new(), ShardReply::Rejected("already aborted".into())),
            // Nothing can land any more, but whether it committed here
            // is forgotten: say so rather than claim an abort.
            TxnState::Expired => (Vec::new(), ShardReply::Expired),
        },
        ShardCommand::Floor { group, below } => {
            if *group == crate::node::IMPLICIT_GROUP || *below <= floor(get, *group)? {
                (Vec::new(), ShardReply::Done)
            } else {
                (
                    vec![(floor_key(*group), Some(encode(below)?))],
                    ShardReply::Done,
                )
            }
        }
        ShardCommand::Describe { descriptor: d } => {
            if descriptor(get)?.is_some() {
                (Vec::new(), ShardReply::Done)
            } else {
                (
                    vec![(DESCRIPTOR_KEY.to_vec(), Some(encode(d)?))],
                    ShardReply::Done,
                )
            }
        }
        ShardCommand::SplitBegin { split } => begin(get, split, None)?,
        ShardCommand::SplitStart { split } => begin(get, split, Some(index))?,
        ShardCommand::SplitCancel { child } => match split_record(get)? {
            Some(s) if s.child.shard == *child && !s.created => {
                (vec![(SPLIT_KEY.to_vec(), None)], ShardReply::Done)
            }
            Some(s) if s.child.shard == *child => (
                Vec::new(),
                ShardReply::Rejected(
                    "the new shard is being created: the split only goes forward".into(),
                ),
            ),
            _ => (Vec::new(), ShardReply::Done),
        },
        ShardCommand::SplitAbandon { child, attempt: a } => match split_record(get)? {
            Some(s) if s.child.shard == *child && attempt(get)? == *a => effect(
                get,
                term,
                index,
                &ShardCommand::SplitCancel { child: *child },
            )?,
            _ => (
                Vec::new(),
                ShardReply::Rejected(format!(
                    "no split into shard {child} of attempt {a} is under way"
                )),
            ),
        },
        ShardCommand::SplitFreeze { child, span } => match split_record(get)? {
            Some(s) if s.child.shard == *child && (s.frozen || s.drained) => {
                (Vec::new(), ShardReply::Done)
            }
            Some(s) if s.child.shard == *child && s.created && s.child.span == *span => {
                let next = Split { frozen: true, ..s };
                (
                    vec![(SPLIT_KEY.to_vec(), Some(encode(&next)?))],
                    ShardReply::Done,
                )
            }
            _ => (
                Vec::new(),
                ShardReply::Rejected(format!(
                    "no split into shard {child} of that part is being created"
                )),
            ),
        },
        ShardCommand::SplitThaw { child } => match split_record(get)? {
            Some(s) if s.child.shard == *child && s.drained => (
                Vec::new(),
                ShardReply::Rejected("the split is past the point of no return".into()),
            ),
            Some(s) if s.child.shard == *child && s.frozen => {
                let next = Split { frozen: false, ..s };
                (
                    vec![(SPLIT_KEY.to_vec(), Some(encode(&next)?))],
                    ShardReply::Done,
                )
            }
            _ => (Vec::new(), ShardReply::Done),
        },
        ShardCommand::SplitCommit { child } => match split_record(get)? {
            Some(s) if s.child.shard == *child && s.committed => (Vec::new(), ShardReply::Done),
            Some(s) if s.child.shard == *child && s.drained => {
                let mut after = successors(get)?;
                // A merge's target goes last even if the shard split into it
                // before: the last successor of a shard that owns nothing is
                // the shard it merged into (`Node::merge` answers a repeated
                // merge by it). A split's child is new, so never listed.
                after.retain(|c| c != child);
                after.push(*child);
                let done = Split {
                    committed: true,
                    ..s.clone()
                };
                (
                    vec![
                        (DESCRIPTOR_KEY.to_vec(), Some(encode(&s.left)?)),
                        (SPLIT_KEY.to_vec(), Some(encode(&done)?)),
                        (SUCCESSORS_KEY.to_vec(), Some(encode(&after)?)),
                    ],
                    ShardReply::Done,
                )
            }
            _ => (
                Vec::new(),
                ShardReply::Rejected(format!("no split into shard {child} is under way")),
            ),
        },
        ShardCommand::SplitDrained { child } => match split_record(get)? {
            Some(s) if s.child.shard == *child && !s.drained && !s.frozen => (
                Vec::new(),
                ShardReply::Rejected("the part that moves is not frozen".into()),
            ),
            Some(s) if s.child.shard == *child && !s.drained => {
                let next = Split { drained: true, ..s };
                (
                    vec![(SPLIT_KEY.to_vec(), Some(encode(&next)?))],
                    ShardReply::Done,
                )
            }
            Some(s) if s.child.shard == *child => (Vec::new(), ShardReply::Done),
            _ => (
                Vec::new(),
                ShardReply::Rejected(format!("no split into shard {child} is under way")),
            ),
        },
        ShardCommand::SplitCreated { child } => match split_record(get)? {
            Some(s) if s.child.shard == *child && !s.created => {
                let next = Split { created: true, ..s };
                (
                    vec![(SPLIT_KEY.to_vec(), Some(encode(&next)?))],
                    ShardReply::Done,
                )
            }
            Some(s) if s.child.shard == *child => (Vec::new(), ShardReply::Done),
            _ => (
                Vec::new(),
                ShardReply::Rejected(format!("no split into shard {child} is under way")),
            ),
        },
        ShardCommand::LoadWritten { pairs, done } => {
            if let Some(why) = not_loadable(get, pairs.iter().map(|(k, _)| k))? {
                (Vec::new(), ShardReply::Rejected(why))
            } else if pairs.iter().any(|(k, _)| k.first() != Some(&DATA_PREFIX)) {
                (
                    Vec::new(),
                    ShardReply::Rejected("only data is loaded again".into()),
                )
            } else {
                let mut w: BTreeMap<Vec<u8>, Option<Vec<u8>>> = pairs.iter().cloned().collect();
                if *done {
                    let (k, v) = copy_complete(get, CopyPass::Second)?;
                    w.insert(k, v);
                }
                (w.into_iter().collect(), ShardReply::Done)
            }
        }
        ShardCommand::Load { pairs, done } => {
            if let Some(why) = not_loadable(get, pairs.iter().map(|(k, _)| k))? {
                (Vec::new(), ShardReply::Rejected(why))
            } else if pairs.iter().any(|(k, _)| {
                !matches!(
                    k.first(),
                    Some(&DATA_PREFIX) | Some(&HORIZON_PREFIX) | Some(&FLOOR_PREFIX)
                )
            }) {
                (
                    Vec::new(),
                    ShardReply::Rejected("only data, horizons and floors are loaded".into()),
                )
            } else {
                let mut w: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
                for (k, v) in pairs {
                    // Horizons and floors only grow: a shard that serves
                    // already (a merge's) keeps the higher of the two.
                    if matches!(k.first(), Some(&HORIZON_PREFIX) | Some(&FLOOR_PREFIX)) {
                        if let Some(have) = get(k)? {
                            let have: Timestamp = decode(&have, "horizon or floor")?;
                            let new: Timestamp = decode(v, "horizon or floor")?;
                            if new <= have {
                                continue;
                            }
                        }
                    }
                    w.insert(k.clone(), Some(v.clone()));
                }
                if *done {
                    let (k, v) = copy_complete(get, CopyPass::First)?;
                    w.insert(k, v);
                }
                (w.into_iter().collect(), ShardReply::Done)
            }
        }
        ShardCommand::Trim { keys } => {
            let Some(d) = descriptor(get)? else {
                return Ok((Vec::new(), ShardReply::Done));
            };
            // With the key, its mark of a write during the split.
            let mut gone: Vec<Vec<u8>> = keys
                .iter()
                .filter(|k| !d.span.contains(k))
                .flat_map(|k| [data_key(k), written_key(k)])
                .collect();
            gone.sort();
            gone.dedup();
            (
                gone.into_iter().map(|k| (k, None)).collect(),
                ShardReply::Done,
            )
        }
        ShardCommand::Unmark { keys } => {
            if split_record(get)?.is_some_and(|s| !s.committed) {
                (
                    Vec::new(),
                    ShardReply::Rejected("a split under way still needs its marks".into()),
                )
            } else {
                let mut gone: Vec<Vec<u8>> = keys
                    .iter()
                    .filter(|k| k.first() == Some(&WRITTEN_PREFIX))
                    .cloned()
                    .collect();
                gone.sort();
                gone.dedup();
                (
                    gone.into_iter().map(|k| (k, None)).collect(),
                    ShardReply::Done,
                )
            }
        }
        // Written by builds before attempts were numbered (its log may
        // still hold one): no refusal to check.
        ShardCommand::AbsorbBegin { from, base, into } => accept(get, *from, *base, into, None)?,
        ShardCommand::AbsorbAccept {
            from,
            base,
            into,
            attempt,
        } => accept(get, *from, *base, into, Some(*attempt))?,
        ShardCommand::AbsorbRefuse { from, attempt } => match absorb_record(get)? {
            Some(a) if a.from == *from => (
                Vec::new(),
                ShardReply::Rejected(format!("the merge of shard {from} is accepted already")),
            ),
            _ => {
                let have = refused(get, *from)?;
                let w = if have.is_some_and(|h| h >= *attempt) {
                    Vec::new()
                } else {
                    vec![(refused_key(*from), Some(encode(attempt)?))]
                };
                (w, ShardReply::Done)
            }
        },
        ShardCommand::AbsorbCommit { from } => match absorb_record(get)? {
            Some(a) if a.from == *from && a.caught_up => (
                vec![
                    (DESCRIPTOR_KEY.to_vec(), Some(encode(&a.into)?)),
                    (ABSORB_KEY.to_vec(), None),
                ],
                ShardReply::Done,
            ),
            Some(a) if a.from == *from => (
                Vec::new(),
                ShardReply::Rejected("the merged shard's keys are not all loaded yet".into()),
            ),
            // Applied already (or never begun: the descriptor says which).
            _ => (Vec::new(), ShardReply::Done),
        },
        ShardCommand::Decided { decisions, then } => {
            decided(get, term, index, decisions, then.as_deref())?
        }
        ShardCommand::SplitDone { child } => match split_record(get)? {
            Some(s) if s.child.shard == *child && s.committed => {
                (vec![(SPLIT_KEY.to_vec(), None)], ShardReply::Done)
            }
            _ => (Vec::new(), ShardReply::Done),
        },
        ShardCommand::Forget { group, below, txns } => {
            let was = horizon(get, *group)?;
            let h = was.max(*below);
            let mut w = Vec::with_capacity(txns.len() + 1);
            if h > was {
                w.push((horizon_key(*group), Some(encode(&h)?)));
            }
            // Only records the horizon now covers: a listed id that is not
            // (a confused leader) keeps its record.
            let mut gone: Vec<Vec<u8>> = txns
                .iter()
                .filter(|t| t.group == *group && t.ts < h)
                .map(|t| t.key(OUTCOME_PREFIX))
                .collect();
            gone.sort();
            gone.dedup();
            w.extend(gone.into_iter().map(|k| (k, None)));
            (w, ShardReply::Done)
        }
    })
}

/// State shared by a shard's apply path and its request handlers.
pub struct Shared {
    pub mgr: Mutex<TxnManager>,
    /// Woken whenever locks are released or a decision is seen in the
    /// log, for waits that are not for a particular transaction.
    pub released: tokio::sync::Notify,
    /// A lock request waiting for transactions to let go waits on theirs
    /// (and its own, should it be wounded meanwhile): a release wakes only
    /// the requests blocked by the transaction that released, not every
    /// waiter of the shard (each of which would take the manager's lock
    /// only to find its key still held). An entry lives while someone
    /// waits on it, or until its transaction's locks go.
    wakers: Mutex<HashMap<TxnId, Arc<tokio::sync::Notify>>>,
    /// The shard's descriptor as this replica last read it from its
    /// state (a leader loads it before it serves; `None` before that).
    pub descriptor: std::sync::RwLock<Option<Arc<Descriptor>>>,
    /// Bumped, under the manager's lock, each time a command that changes
    /// what the shard owns or freezes becomes visible: a new leader that
    /// read those records before installing them in the manager sees
    /// whether one changed in between (and reads again).
    pub ownership_changes: std::sync::atomic::AtomicU64,
}

impl Shared {
    pub fn new(mgr: TxnManager) -> Self {
        Shared {
            mgr: Mutex::new(mgr),
            released: tokio::sync::Notify::new(),
            wakers: Mutex::new(HashMap::new()),
            descriptor: std::sync::RwLock::new(None),
            ownership_changes: Default::default(),
        }
    }

    /// Change the manager with `f`, then wake whoever its releases
    /// concern, with one hold of the manager's lock (`f` does not run if
    /// the lock is poisoned; everyone is woken then).
    pub fn release_with<R>(&self, f: impl FnOnce(&mut TxnManager) -> R) -> Option<R> {
        let done = self.mgr.lock().map(|mut m| (f(&mut m), m.take_freed()));
        match done {
            Ok((r, freed)) => {
                self.wake_freed(freed);
                Some(r)
            }
            Err(_) => {
                self.wake_freed(Freed::All);
                None
            }
        }
    }

    /// Wake the requests waiting for locks that went since the last call,
    /// and every general waiter. Call after anything that may release.
    pub fn wake(&self) {
        self.release_with(|_| ());
    }

    fn wake_freed(&self, freed: Freed) {
        if let Ok(mut w) = self.wakers.lock() {
            match freed {
                Freed::All => w.drain().for_each(|(_, n)| n.notify_waiters()),
                Freed::Txns(txns) => {
                    for t in txns {
                        if let Some(n) = w.remove(&t) {
                            n.notify_waiters();
                        }
                    }
                }
            }
        }
        self.released.notify_waiters();
    }

    /// Wait until a lock of one of `holders` goes, or `txn`'s own (it was
    /// wounded), or `left` passes; false on the timeout. `seen` is the
    /// manager's release count when the request last found its target
    /// held: a release between that look and this registration would not
    /// wake it, so it makes this return at once instead.
    pub async fn await_release(
        &self,
        txn: TxnId,
        holders: &[TxnId],
        seen: u64,
        left: Duration,
    ) -> bool {
        let waits = Registered::new(self, holders.iter().copied().chain(std::iter::once(txn)));
        let mut woken: Vec<_> = waits
            .notifies
            .iter()
            .map(|(_, n)| {
                let mut f = Box::pin(n.notified());
                f.as_mut().enable();
                f
            })
            .collect();
        // Look again at once if anything was released since the caller
        // looked, or if its own transaction ended meanwhile: an abort of a
        // transaction that holds nothing here yet frees nothing, and its
        // wake-up went out before these wakers were in place.
        if self
            .mgr
            .lock()
            .map(|m| m.lock_releases() != seen || m.status(txn).is_none())
            .unwrap_or(true)
        {
            return true;
        }
        if woken.is_empty() {
            // The wakers' lock was poisoned: look again shortly.
            tokio::time::sleep(left.min(Duration::from_millis(50))).await;
            return !left.is_zero();
        }
        let any = futures::future::select_all(woken.iter_mut().map(|f| f.as_mut()));
        tokio::time::timeout(left, any).await.is_ok()
    }
}

/// A request's places in [`Shared::wakers`]; leaving (woken, timed out or
/// cancelled) removes the entries nobody else waits on.
struct Registered<'a> {
    shared: &'a Shared,
    notifies: Vec<(TxnId, Arc<tokio::sync::Notify>)>,
}

impl<'a> Registered<'a> {
    fn new(shared: &'a Shared, txns: impl Iterator<Item = TxnId>) -> Self {
        let notifies = match shared.wakers.lock() {
            Ok(mut w) => txns.map(|t| (t, w.entry(t).or_default().clone())).collect(),
            Err(_) => Vec::new(),
        };
        Registered { shared, notifies }
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        if let Ok(mut w) = self.shared.wakers.lock() {
            for (t, n) in self.notifies.drain(..) {
                // Two owners, the map and this request: no one else waits.
                let alone =
                    w.get(&t).is_some_and(|m| Arc::ptr_eq(m, &n)) && Arc::strong_count(&n) == 2;
                if alone {
                    w.remove(&t);
                }
            }
        }
    }
}

/// Which copy into a shard a `done` entry completes.
#[derive(Clone, Copy)]
enum CopyPass {
    /// `Load`: the part as it was served.
    First,
    /// `LoadWritten`: what was written there since, once frozen.
    Second,
}

/// The write that marks `copy` complete: a split's new shard has a key
/// for each (`LOADED_KEY`, `CAUGHT_UP_KEY`), a merge's target a field of
/// its `Absorb` record.
fn copy_complete(get: Lookup<'_>, copy: CopyPass) -> io::Result<Mutation> {
    Ok(match (absorb_record(get)?, copy) {
        (Some(a), CopyPass::First) => {
            let a = Absorb { loaded: true, ..a };
            (ABSORB_KEY.to_vec(), Some(encode(&a)?))
        }
        (Some(a), CopyPass::Second) => {
            let a = Absorb {
                caught_up: true,
                ..a
            };
            (ABSORB_KEY.to_vec(), Some(encode(&a)?))
        }
        (None, CopyPass::First) => (LOADED_KEY.to_vec(), Some(vec![1])),
        (None, CopyPass::Second) => (CAUGHT_UP_KEY.to_vec(), Some(vec![1])),
    })
}

/// Why `keys` may not be loaded here: a shard loads only before it serves
/// (a split's new shard), or, while it absorbs a merge, keys it does not
/// own yet (a late copy cannot overwrite what it wrote since).
fn not_loadable<'k>(
    get: Lookup<'_>,
    mut keys: impl Iterator<Item = &'k Vec<u8>>,
) -> io::Result<Option<String>> {
    let Some(d) = descriptor(get)? else {
        return Ok(None);
    };
    if absorb_record(get)?.is_none() {
        return Ok(Some("the shard already serves: nothing is loaded".into()));
    }
    if keys
        .any(|k| k.first() == Some(&DATA_PREFIX) && k.get(1..).is_some_and(|u| d.span.contains(u)))
    {
        return Ok(Some("a loaded key is the shard's own already".into()));
    }
    Ok(None)
}

/// Why the split into `child` may not commit yet: a prepare record with a
/// write in the part that moves.
fn prepared_in_moving_part(state: &StateView<'_>, child: ShardId) -> io::Result<Option<String>> {
    let Some(split) = split_record(&|k| state.get(k))? else {
        return Ok(None);
    };
    if split.child.shard != child {
        return Ok(None);
    }
    let end = [PREPARED_PREFIX + 1];
    for (k, v) in state.scan(&[PREPARED_PREFIX], Some(&end), usize::MAX)? {
        let writes = prepared_writes(&v).map_err(io::Error::other)?;
        if writes.iter().any(|(w, _)| split.child.span.contains(w)) {
            let txn = TxnId::from_key(&k).map_or_else(|| format!("{k:?}"), |t| t.to_string());
            return Ok(Some(format!(
                "transaction {txn} is prepared with writes in the part that moves"
            )));
        }
    }
    Ok(None)
}

/// The effect of [`ShardCommand::Decided`]: the decisions in order, then
/// `then`, each seeing what the ones before it wrote (a later write of a
/// key replaces an earlier one: the storage batch carries each key once).
fn decided(
    get: Lookup<'_>,
    term: u64,
    index: u64,
    decisions: &[(TxnId, bool)],
    then: Option<&ShardCommand>,
) -> io::Result<(Vec<Mutation>, ShardReply)> {
    let mut written: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
    let mut run = |cmd: &ShardCommand| -> io::Result<ShardReply> {
        let (w, r) = {
            let seen = |k: &[u8]| match written.get(k) {
                Some(v) => Ok(v.clone()),
                None => get(k),
            };
            effect(&seen, term, index, cmd)?
        };
        written.extend(w);
        Ok(r)
    };
    let mut replies = Vec::with_capacity(decisions.len());
    for (txn, commit) in decisions {
        replies.push(run(&ShardCommand::decision(*txn, *commit))?);
    }
    let then = match then {
        None => None,
        Some(c @ (ShardCommand::Prepare { .. } | ShardCommand::OnePhase { .. })) => Some(run(c)?),
        Some(_) => Some(ShardReply::Rejected(
            "only a prepare or a one-phase commit rides with decisions".into(),
        )),
    };
    Ok((
        written.into_iter().collect(),
        ShardReply::Decided {
            decisions: replies,
            then: then.map(Box::new),
        },
    ))
}

/// Turns committed shard commands into key changes, and tells the leader's
/// transaction manager what happened to its transactions.
pub struct KvApp {
    pub shared: Arc<Shared>,
}

impl Apply for KvApp {
    fn apply(
        &self,
        state: &StateView<'_>,
        index: u64,
        term: u64,
        command: &[u8],
    ) -> Result<Applied, String> {
        let cmd = ShardCommand::decode(command)?;
        if let ShardCommand::SplitDrained { child } = &cmd {
            // A prepared transaction's record is never cut in two: the
            // split waits until none writes in the part that moves (the
            // leader waited already; this makes it a rule of the state).
            if let Some(r) = prepared_in_moving_part(state, *child).map_err(|e| e.to_string())? {
                let reply = encode(&ShardReply::Rejected(r)).map_err(|e| e.to_string())?;
                return Ok(Applied {
                    writes: Vec::new(),
                    reply,
                });
            }
        }
        let (writes, reply) =
            effect(&|k| state.get(k), term, index, &cmd).map_err(|e| e.to_string())?;
        if let Some((_, Some(v))) = writes.iter().find(|(k, _)| k == DESCRIPTOR_KEY) {
            // What the shard owns changed (its first descriptor, or a
            // split): requests are checked against the new one at once.
            let d: Descriptor = decode(v, "shard descriptor").map_err(|e| e.to_string())?;
            if let Ok(mut cur) = self.shared.descriptor.write() {
                *cur = Some(Arc::new(d));
            }
        }
        // A reply that cannot be encoded stops the replica rather than
        // answering the proposer with nothing.
        let reply = encode(&reply).map_err(|e| e.to_string())?;
        Ok(Applied { writes, reply })
    }

    fn visible(&self, command: &[u8], reply: &[u8]) {
        // Only now may locks go: a reader let in before the writes were
        // visible would read the old values.
        let (Ok(cmd), Ok(reply)) = (ShardCommand::decode(command), ShardReply::decode(reply))
        else {
            return;
        };
        self.shared.release_with(|m| self.learn(m, &cmd, &reply));
    }

    fn state_replaced(&self) {
        // A snapshot replaced everything; whatever the manager believed is
        // void until this replica is a ready leader again.
        self.shared.release_with(TxnManager::step_down);
    }
}

impl KvApp {
    /// Tell the manager what an applied command did (each part of a
    /// `Decided`, in order).
    fn learn(&self, m: &mut TxnManager, cmd: &ShardCommand, reply: &ShardReply) {
        if let (
            ShardCommand::Decided { decisions, then },
            ShardReply::Decided {
                decisions: replies,
                then: then_reply,
            },
        ) = (cmd, reply)
        {
            for ((txn, commit), r) in decisions.iter().zip(replies) {
                self.learn(m, &ShardCommand::decision(*txn, *commit), r);
            }
            if let (Some(c), Some(r)) = (then, then_reply) {
                self.learn(m, c, r);
            }
            return;
        }
        if cmd.changes_ownership() {
            self.shared
                .ownership_changes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        match notice(cmd, reply) {
            Notice::Prepared(txn, ok) => m.prepare_applied(txn, ok),
            Notice::Finished(txn) => {
                m.finish(txn);
                // A decision whose locks went early: it is in the
                // log, and a commit's writes are in the store now.
                m.decision_applied(txn);
            }
            Notice::Freeze(span) => {
                m.freeze(span);
                // The descriptor the apply just loaded (a split commits
                // with the freeze lifted): locks outside it are refused
                // from the same moment.
                if m.term().is_some() {
                    let owned = self
                        .shared
                        .descriptor
                        .read()
                        .ok()
                        .and_then(|d| d.as_ref().map(|d| d.span.clone()));
                    m.set_owned(owned);
                }
            }
            Notice::Nothing => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pact_common::Timestamp;
    use std::cell::RefCell;

    fn t(n: u64) -> TxnId {
        TxnId {
            ts: Timestamp(n),
            node: 2,
            group: 1,
        }
    }

    /// A tiny in-memory state to run effects against.
    struct Mem(RefCell<BTreeMap<Vec<u8>, Vec<u8>>>);

    impl Mem {
        fn run(&self, term: u64, cmd: ShardCommand) -> ShardReply {
            let map = self.0.borrow().clone();
            // Every command its own log index, as in a log.
            static INDEX: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
            let index = INDEX.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let (w, r) = effect(&|k| Ok(map.get(k).cloned()), term, index, &cmd).unwrap();
            let mut m = self.0.borrow_mut();
            for (k, v) in w {
                match v {
                    Some(v) => m.insert(k, v),
                    None => m.remove(&k),
                };
            }
            r
        }
        fn get(&self, k: &[u8]) -> Option<Vec<u8>> {
            self.0.borrow().get(&data_key(k)).cloned()
        }
    }

    fn put(k: &str, v: &str) -> Mutation {
        (k.as_bytes().to_vec(), Some(v.as_bytes().to_vec()))
    }

    /// Decisions carried in a transaction's entry apply first, in order,
    /// and the entry's own command sees what they wrote: a commit's write
    /// of a key is overwritten by the carried one-phase commit's write of
    /// it (one storage write of the key, the later value), an abort ahead
    /// of the same transaction's prepare refuses the prepare, and only a
    /// prepare or a one-phase commit may ride.
    #[test]
    fn carried_decisions_apply_ahead_of_the_entry_s_own_command() {
        let m = Mem(RefCell::new(BTreeMap::new()));
        let prepare = |txn, writes| ShardCommand::Prepare {
            txn,
            writes,
            term: 1,
        };
        assert_eq!(
            m.run(1, prepare(t(1), vec![put("a", "1"), put("b", "1")])),
            ShardReply::Prepared
        );
        assert_eq!(
            m.run(1, prepare(t(2), vec![put("c", "2")])),
            ShardReply::Prepared
        );
        let carried = ShardCommand::Decided {
            decisions: vec![(t(1), true), (t(2), false), (t(1), true)],
            then: Some(Box::new(ShardCommand::OnePhase {
                txn: t(3),
                writes: vec![put("a", "3")],
                term: 1,
            })),
        };
        let (w, r) = {
            let map = m.0.borrow();
            effect(&|k| Ok(map.get(k).cloned()), 1, 99, &carried).unwrap()
        };
        assert_eq!(
            r,
            ShardReply::Decided {
                decisions: vec![ShardReply::Done, ShardReply::Done, ShardReply::Done],
                then: Some(Box::new(ShardReply::Done)),
            }
        );
        assert_eq!(
            w.iter().filter(|(k, _)| *k == data_key(b"a")).count(),
            1,
            "{w:?}"
        );
        m.run(1, carried);
        assert_eq!(m.get(b"a"), Some(b"3".to_vec()));
        assert_eq!(m.get(b"b"), Some(b"1".to_vec()));
        assert_eq!(m.get(b"c"), None);
        let state = |txn| txn_state(&|k| Ok(m.0.borrow().get(k).cloned()), txn).unwrap();
        assert_eq!(state(t(1)), TxnState::Committed);
        assert_eq!(state(t(2)), TxnState::Aborted);
        assert_eq!(state(t(3)), TxnState::Committed);
        // An abort carried ahead of its own transaction's prepare wins.
        let r = m.run(
            1,
            ShardCommand::Decided {
                decisions: vec![(t(4), false)],
                then: Some(Box::new(prepare(t(4), vec![put("d", "4")]))),
            },
        );
        assert!(
            matches!(&r, ShardReply::Decided { decisions, then: Some(p) }
                if decisions == &[ShardReply::Done] && matches!(**p, ShardReply::Rejected(_))),
            "{r:?}"
        );
        assert_eq!(state(t(4)), TxnState::Aborted);
        // Decisions alone; anything but a prepare or one-phase commit
        // behind them is refused, the decisions still applied.
        let r = m.run(
            1,
            ShardCommand::Decided {
                decisions: vec![(t(5), false)],
                then: Some(Box::new(ShardCommand::Fence { txn: t(6) })),
            },
        );
        assert!(
            matches!(&r, ShardReply::Decided { then: Some(p), .. } if matches!(**p, ShardReply::Rejected(_))),
            "{r:?}"
        );
        assert_eq!(state(t(5)), TxnState::Aborted);
        assert_eq!(state(t(6)), TxnState::None);
        let r = m.run(
            1,
            ShardCommand::Decided {
                decisions: vec![(t(6), false)],
                then: None,
            },
        );
        assert_eq!(
            r,
            ShardReply::Decided {
                decisions: vec![ShardReply::Done],
                then: None
            }
        );
        // As proposed and replied through the log.
        let c = ShardCommand::Decided {
            decisions: vec![(t(7), true)],
            then: Some(Box::new(prepare(t(8), vec![put("e", "8")]))),
        };
        assert_eq!(ShardCommand::decode(&c.encode().unwrap()).unwrap(), c);
        let reply = encode(&r).unwrap();
        assert_eq!(ShardReply::decode(&reply).unwrap(), r);
    }

    /// A shard merging away refuses a merge into it (the merging shard
    /// gives way); once refused, that attempt and earlier ones are never
    /// accepted, so the merging shard may cancel. Once accepted, the
    /// merge is never refused. A later attempt (begun again) is judged
    /// afresh. Every begin numbers its attempt (its log index), and a
    /// cancel naming another attempt cancels nothing.
    #[test]
    fn a_refused_merge_attempt_is_never_accepted_and_an_accepted_one_never_refused() {
        let m = Mem(RefCell::new(BTreeMap::new()));
        let whole = pact_common::Span::Range {
            start: Vec::new(),
            end: None,
        };
        let d = Descriptor {
            shard: ShardId(1),
            version: 4,
            span: whole.clone(),
        };
        assert_eq!(
            m.run(
                1,
                ShardCommand::Describe {
                    descriptor: d.clone()
                }
            ),
            ShardReply::Done
        );
        let get = |k: &[u8]| Ok(m.0.borrow().get(k).cloned());
        assert_eq!(attempt(&get).unwrap(), 0);
        let into = Descriptor {
            version: 5,
            ..d.clone()
        };
        let accept = |attempt| ShardCommand::AbsorbAccept {
            from: ShardId(2),
            base: 4,
            into: into.clone(),
            attempt,
        };
        let refuse = |attempt| ShardCommand::AbsorbRefuse {
            from: ShardId(2),
            attempt,
        };
        assert_eq!(m.run(1, refuse(3)), ShardReply::Done);
        // A lower refusal does not lower it.
        assert_eq!(m.run(1, refuse(1)), ShardReply::Done);
        assert_eq!(refused(&get, ShardId(2)).unwrap(), Some(3));
        for a in [1, 3] {
            assert!(matches!(m.run(1, accept(a)), ShardReply::Rejected(_)));
        }
        assert!(!m.0.borrow().contains_key(ABSORB_KEY));
        // Another shard's merge is not refused by it.
        let other = ShardCommand::AbsorbAccept {
            from: ShardId(9),
            base: 4,
            into: into.clone(),
            attempt: 1,
        };
        assert_eq!(m.run(1, other), ShardReply::Done);
        let (a, _) = absorb_record(&get)
            .unwrap()
            .map(|a| (a.from, a.loaded))
            .unwrap();
        assert_eq!(a, ShardId(9));
        m.0.borrow_mut().remove(ABSORB_KEY);
        // The next attempt is accepted, and from then on never refused.
        assert_eq!(m.run(1, accept(4)), ShardReply::Done);
        assert_eq!(m.run(1, accept(4)), ShardReply::Done);
        assert!(matches!(m.run(1, refuse(4)), ShardReply::Rejected(_)));
        assert_eq!(refused(&get, ShardId(2)).unwrap(), Some(3));
        // Attempts count the begins that recorded a split.
        let n = Mem(RefCell::new(BTreeMap::new()));
        assert_eq!(
            n.run(
                1,
                ShardCommand::Describe {
                    descriptor: d.clone()
                }
            ),
            ShardReply::Done
        );
        let (left, right) = whole.split(Some(b"m")).unwrap();
        let split = Split {
            left: Descriptor {
                shard: ShardId(1),
                version: 5,
                span: left,
            },
            child: Descriptor {
                shard: ShardId(pact_common::FIRST_SPLIT_ID + 1),
                version: 5,
                span: right,
            },
            voters: vec![pact_common::NodeId(1)],
            created: false,
            frozen: false,
            drained: false,
            committed: false,
            merge: None,
        };
        // A begin from a build before attempts were numbered numbers none.
        let legacy = ShardCommand::SplitBegin {
            split: split.clone(),
        };
        let child = split.child.shard;
        let nget = |k: &[u8]| Ok(n.0.borrow().get(k).cloned());
        assert_eq!(n.run(1, legacy), ShardReply::Done);
        assert_eq!(attempt(&nget).unwrap(), 0);
        assert_eq!(
            n.run(1, ShardCommand::SplitCancel { child }),
            ShardReply::Done
        );
        let begin = ShardCommand::SplitStart {
            split: split.clone(),
        };
        assert_eq!(n.run(1, begin.clone()), ShardReply::Done);
        let first = attempt(&nget).unwrap();
        assert!(first > 0);
        // Begun again while it stands: the same attempt.
        assert_eq!(n.run(1, begin.clone()), ShardReply::Done);
        assert_eq!(attempt(&nget).unwrap(), first);
        let abandon = |attempt| ShardCommand::SplitAbandon { child, attempt };
        assert!(matches!(
            n.run(1, abandon(first + 1)),
            ShardReply::Rejected(_)
        ));
        assert!(n.0.borrow().contains_key(SPLIT_KEY));
        assert_eq!(n.run(1, abandon(first)), ShardReply::Done);
        assert!(!n.0.borrow().contains_key(SPLIT_KEY));
        assert_eq!(n.run(1, begin), ShardReply::Done);
        let second = attempt(&nget).unwrap();
        assert!(second > first);
        // The first attempt's late cancel leaves the second standing.
        assert!(matches!(n.run(1, abandon(first)), ShardReply::Rejected(_)));
        assert!(n.0.borrow().contains_key(SPLIT_KEY));
        // Created: no attempt's cancel applies.
        let created = ShardCommand::SplitCreated { child };
        assert_eq!(n.run(1, created), ShardReply::Done);
        assert!(matches!(n.run(1, abandon(second)), ShardReply::Rejected(_)));
        // Nor one of another shard's split.
        let other = ShardCommand::SplitAbandon {
            child: ShardId(77),
            attempt: second,
        };
        assert!(matches!(n.run(1, other), ShardReply::Rejected(_)));
    }

    /// The two sides of a merge of shard 2 (`[m, end)`) into shard 1
    /// (`[, m)`): the merging shard marks its writes and ends owning
    /// nothing; the shard that stays accepts only at the version the merge
    /// was planned from, loads only keys it does not own, keeps the higher
    /// horizon, and takes the span only once caught up. Each step is
    /// idempotent.
    #[test]
    fn a_merge_moves_a_whole_shard_into_its_neighbour() {
        let (from, into) = (
            Mem(RefCell::new(BTreeMap::new())),
            Mem(RefCell::new(BTreeMap::new())),
        );
        let whole = pact_common::Span::Range {
            start: Vec::new(),
            end: None,
        };
        let (l, r) = whole.split(Some(b"m")).unwrap();
        let d1 = Descriptor {
            shard: ShardId(1),
            version: 4,
            span: l,
        };
        let d2 = Descriptor {
            shard: ShardId(2),
            version: 1,
            span: r,
        };
        for (m, d) in [(&into, &d1), (&from, &d2)] {
            let describe = ShardCommand::Describe {
                descriptor: d.clone(),
            };
            assert_eq!(m.run(1, describe), ShardReply::Done);
        }
        let merged = Descriptor {
            shard: ShardId(1),
            version: 5,
            span: whole.clone(),
        };
        let merge = Split {
            left: Descriptor {
                shard: ShardId(2),
                version: 2,
                span: d2.span.emptied(),
            },
            child: merged.clone(),
            voters: vec![pact_common::NodeId(1)],
            created: false,
            frozen: false,
            drained: false,
            committed: false,
            merge: Some(4),
        };
        // The merging side: begun, it marks its writes.
        let begin = ShardCommand::SplitBegin {
            split: merge.clone(),
        };
        assert_eq!(from.run(1, begin.clone()), ShardReply::Done);
        assert_eq!(from.run(1, begin), ShardReply::Done);
        let write = ShardCommand::OnePhase {
            txn: t(3),
            writes: vec![put("x", "1")],
            term: 1,
        };
        assert_eq!(from.run(1, write), ShardReply::Done);
        assert!(from.0.borrow().contains_key(&written_key(b"x")));

        // The staying side: refused at another version, accepted at 4.
        let accept = |base| ShardCommand::AbsorbBegin {
            from: ShardId(2),
            base,
            into: merged.clone(),
        };
        assert!(matches!(into.run(1, accept(3)), ShardReply::Rejected(_)));
        // Nothing is loaded before it accepted: it serves already.
        let load = |pairs: Vec<(Vec<u8>, Vec<u8>)>, done| ShardCommand::Load { pairs, done };
        let early = load(vec![(data_key(b"x"), b"1".to_vec())], false);
        assert!(matches!(
            into.run(1, early.clone()),
            ShardReply::Rejected(_)
        ));
        assert_eq!(into.run(1, accept(4)), ShardReply::Done);
        assert_eq!(into.run(1, accept(4)), ShardReply::Done);
        // Neither splits nor absorbs another meanwhile.
        let other = ShardCommand::AbsorbBegin {
            from: ShardId(9),
            base: 4,
            into: merged.clone(),
        };
        assert!(matches!(into.run(1, other), ShardReply::Rejected(_)));
        let (a, b) = d1.span.split(Some(b"f")).unwrap();
        let split = ShardCommand::SplitBegin {
            split: Split {
                left: Descriptor {
                    shard: ShardId(1),
                    version: 5,
                    span: a,
                },
                child: Descriptor {
                    shard: ShardId(pact_common::FIRST_SPLIT_ID + 1),
                    version: 5,
                    span: b,
                },
                merge: None,
                ..merge.clone()
            },
        };
        assert!(matches!(into.run(1, split), ShardReply::Rejected(_)));
        // A key it owns is never loaded over; the horizon keeps the higher.
        let own = load(vec![(data_key(b"a"), b"no".to_vec())], false);
        assert!(matches!(into.run(1, own), ShardReply::Rejected(_)));
        let mine = encode(&Timestamp(50)).unwrap();
        into.0.borrow_mut().insert(horizon_key(7), mine.clone());
        let lower = encode(&Timestamp(10)).unwrap();
        let higher = encode(&Timestamp(90)).unwrap();
        let first = load(
            vec![
                (horizon_key(7), lower),
                (floor_key(7), higher.clone()),
                (data_key(b"x"), b"1".to_vec()),
            ],
            true,
        );
        assert_eq!(into.run(1, first), ShardReply::Done);
        assert_eq!(into.0.borrow().get(&horizon_key(7)), Some(&mine));
        assert_eq!(into.0.borrow().get(&floor_key(7)), Some(&higher));
        assert_eq!(into.get(b"x"), Some(b"1".to_vec()));
        // Not caught up: it does not take the span yet.
        let take = ShardCommand::AbsorbCommit { from: ShardId(2) };
        assert!(matches!(into.run(1, take.clone()), ShardReply::Rejected(_)));

        // The merging side freezes, drains and commits: it owns nothing.
        let step = |c| from.run(1, c);
        assert_eq!(
            step(ShardCommand::SplitCreated { child: ShardId(1) }),
            ShardReply::Done
        );
        let freeze = ShardCommand::SplitFreeze {
            child: ShardId(1),
            span: whole.clone(),
        };
        assert_eq!(step(freeze), ShardReply::Done);
        assert_eq!(
            step(ShardCommand::SplitDrained { child: ShardId(1) }),
            ShardReply::Done
        );
        let again = ShardCommand::LoadWritten {
            pairs: vec![(data_key(b"x"), None)],
            done: true,
        };
        assert_eq!(into.run(1, again), ShardReply::Done);
        assert_eq!(into.get(b"x"), None);
        // Shards split off it before, the target among them (a split into
        // shard 1, then one into 9): the target moves to the end.
        let earlier = encode(&vec![ShardId(1), ShardId(9)]).unwrap();
        from.0.borrow_mut().insert(SUCCESSORS_KEY.to_vec(), earlier);
        assert_eq!(
            step(ShardCommand::SplitCommit { child: ShardId(1) }),
            ShardReply::Done
        );
        let gone = from.0.borrow().get(DESCRIPTOR_KEY).cloned().unwrap();
        let gone: Descriptor = decode(&gone, "d").unwrap();
        assert!(gone.span.is_empty() && gone.version == 2);
        assert_eq!(
            successors(&|k| Ok(from.0.borrow().get(k).cloned())).unwrap(),
            vec![ShardId(9), ShardId(1)]
        );

        // The staying side takes both spans, once; late loads are refused.
        assert_eq!(into.run(1, take.clone()), ShardReply::Done);
        assert_eq!(into.run(1, take), ShardReply::Done);
        let now = into.0.borrow().get(DESCRIPTOR_KEY).cloned().unwrap();
        assert_eq!(decode::<Descriptor>(&now, "d").unwrap(), merged);
        assert!(!into.0.borrow().contains_key(ABSORB_KEY));
        assert!(matches!(into.run(1, early), ShardReply::Rejected(_)));
    }

    #[test]
    fn a_split_freezes_then_moves_the_upper_part_and_each_step_is_idempotent() {
        let m = Mem(RefCell::new(BTreeMap::new()));
        let read = |m: &Mem, f: &dyn Fn(Lookup<'_>) -> io::Result<Option<Descriptor>>| {
            let map = m.0.borrow().clone();
            f(&|k| Ok(map.get(k).cloned())).unwrap()
        };
        let whole = Descriptor {
            shard: ShardId(3),
            version: 1,
            span: pact_common::Span::Range {
                start: Vec::new(),
                end: None,
            },
        };
        assert_eq!(
            m.run(
                1,
                ShardCommand::Describe {
                    descriptor: whole.clone()
                }
            ),
            ShardReply::Done
        );
        let (left, right) = whole.span.split(Some(b"m")).unwrap();
        let child = ShardId(pact_common::FIRST_SPLIT_ID + 5);
        let split = Split {
            left: Descriptor {
                shard: ShardId(3),
                version: 2,
                span: left,
            },
            child: Descriptor {
                shard: child,
                version: 2,
                span: right,
            },
            voters: vec![pact_common::NodeId(1), pact_common::NodeId(2)],
            created: false,
            frozen: false,
            drained: false,
            committed: false,
            merge: None,
        };
        // A split cut from another version is refused.
        let stale = Split {
            left: Descriptor {
                version: 3,
                ..split.left.clone()
            },
            ..split.clone()
        };
        assert!(matches!(
            m.run(1, ShardCommand::SplitBegin { split: stale }),
            ShardReply::Rejected(_)
        ));
        // A transaction prepared above the cut before the split began.
        let early = ShardCommand::Prepare {
            txn: t(1),
            writes: vec![put("p", "1")],
            term: 1,
        };
        assert_eq!(m.run(1, early), ShardReply::Prepared);
        let begin = ShardCommand::SplitBegin {
            split: split.clone(),
        };
        assert_eq!(m.run(1, begin.clone()), ShardReply::Done);
        assert_eq!(m.run(1, begin), ShardReply::Done);
        // Begun: the part still takes writes, and each one above the cut
        // is marked for the second copy.
        let up = ShardCommand::OnePhase {
            txn: t(6),
            writes: vec![put("x", "0"), put("b", "0")],
            term: 1,
        };
        assert_eq!(m.run(1, up), ShardReply::Done);
        assert!(m.0.borrow().contains_key(&written_key(b"x")));
        assert!(!m.0.borrow().contains_key(&written_key(b"b")));
        let freeze = ShardCommand::SplitFreeze {
            child,
            span: split.child.span.clone(),
        };
        // Nothing freezes before the new shard is created, nothing drains
        // unfrozen, nothing commits undrained.
        assert!(matches!(m.run(1, freeze.clone()), ShardReply::Rejected(_)));
        for early in [
            ShardCommand::SplitDrained { child },
            ShardCommand::SplitCommit { child },
        ] {
            assert!(matches!(m.run(1, early), ShardReply::Rejected(_)));
        }
        for _ in 0..2 {
            assert_eq!(
                m.run(1, ShardCommand::SplitCreated { child }),
                ShardReply::Done
            );
        }
        // Created: the split only goes forward.
        assert!(matches!(
            m.run(1, ShardCommand::SplitCancel { child }),
            ShardReply::Rejected(_)
        ));
        let wrong = ShardCommand::SplitFreeze {
            child,
            span: split.left.span.clone(),
        };
        assert!(matches!(m.run(1, wrong), ShardReply::Rejected(_)));
        assert_eq!(m.run(1, freeze.clone()), ShardReply::Done);
        assert_eq!(m.run(1, freeze.clone()), ShardReply::Done);
        assert_eq!(
            notice(&freeze, &ShardReply::Done),
            Notice::Freeze(Some(split.child.span.clone()))
        );
        // Frozen: nothing above the cut applies, below it as before.
        let up = ShardCommand::OnePhase {
            txn: t(2),
            writes: vec![put("x", "1")],
            term: 1,
        };
        assert!(matches!(m.run(1, up), ShardReply::Moved(_)));
        let up = ShardCommand::Prepare {
            txn: t(3),
            writes: vec![put("y", "1")],
            term: 1,
        };
        assert!(matches!(m.run(1, up), ShardReply::Moved(_)));
        let down = ShardCommand::OnePhase {
            txn: t(4),
            writes: vec![put("a", "1")],
            term: 1,
        };
        assert_eq!(m.run(1, down), ShardReply::Done);
        // The prepared one is decided; the commit is not refused.
        assert_eq!(
            m.run(1, ShardCommand::Commit { txn: t(1) }),
            ShardReply::Done
        );
        assert_eq!(m.get(b"p"), Some(b"1".to_vec()));
        // The prepared one was written in the part during the split.
        assert!(m.0.borrow().contains_key(&written_key(b"p")));
        // The marks stay while the split needs them.
        assert!(matches!(
            m.run(
                1,
                ShardCommand::Unmark {
                    keys: vec![written_key(b"p")]
                }
            ),
            ShardReply::Rejected(_)
        ));
        // Not drained in time: the freeze is lifted, writes apply (marked)
        // and it freezes again.
        let thaw = ShardCommand::SplitThaw { child };
        assert_eq!(m.run(1, thaw.clone()), ShardReply::Done);
        assert_eq!(notice(&thaw, &ShardReply::Done), Notice::Freeze(None));
        let up = ShardCommand::OnePhase {
            txn: t(7),
            writes: vec![(b"x".to_vec(), None)],
            term: 1,
        };
        assert_eq!(m.run(1, up), ShardReply::Done);
        assert_eq!(m.run(1, freeze), ShardReply::Done);
        assert_eq!(
            m.run(1, ShardCommand::SplitDrained { child }),
            ShardReply::Done
        );
        // Past the point of no return: no thaw, no cancel.
        for late in [thaw, ShardCommand::SplitCancel { child }] {
            assert!(matches!(m.run(1, late), ShardReply::Rejected(_)));
        }
        assert_eq!(
            m.run(1, ShardCommand::SplitCommit { child }),
            ShardReply::Done
        );
        assert_eq!(
            m.run(1, ShardCommand::SplitCommit { child }),
            ShardReply::Done
        );
        assert_eq!(read(&m, &descriptor), Some(split.left.clone()));
        let map = m.0.borrow().clone();
        assert_eq!(
            successors(&|k| Ok(map.get(k).cloned())).unwrap(),
            vec![child]
        );
        // Still the parent's until trimmed, but no longer writable here.
        let up = ShardCommand::OnePhase {
            txn: t(5),
            writes: vec![put("q", "2")],
            term: 1,
        };
        assert!(matches!(m.run(1, up), ShardReply::Moved(_)));
        let trim = ShardCommand::Trim {
            keys: vec![b"p".to_vec(), b"a".to_vec(), b"x".to_vec()],
        };
        assert_eq!(m.run(1, trim), ShardReply::Done);
        assert_eq!(m.get(b"p"), None);
        assert!(
            !m.0.borrow()
                .keys()
                .any(|k| k.first() == Some(&WRITTEN_PREFIX)),
            "the marks go with the trim"
        );
        // A mark left in the kept part (by a cancelled split) goes too,
        // and only marks are deleted.
        m.0.borrow_mut().insert(written_key(b"a"), Vec::new());
        let unmark = ShardCommand::Unmark {
            keys: vec![written_key(b"a"), data_key(b"a")],
        };
        assert_eq!(m.run(1, unmark), ShardReply::Done);
        assert!(!m.0.borrow().contains_key(&written_key(b"a")));
        assert_eq!(m.get(b"a"), Some(b"1".to_vec()));
        assert_eq!(
            m.get(b"a"),
            Some(b"1".to_vec()),
            "an owned key is never trimmed"
        );
        assert_eq!(
            m.run(1, ShardCommand::SplitDone { child }),
            ShardReply::Done
        );
        let map = m.0.borrow().clone();
        assert_eq!(split_record(&|k| Ok(map.get(k).cloned())).unwrap(), None);

        // The child: loads until it has a descriptor, then refuses.
        let c = Mem(RefCell::new(BTreeMap::new()));
        let load = ShardCommand::Load {
            pairs: vec![
                (data_key(b"p"), b"1".to_vec()),
                (horizon_key(1), encode(&Timestamp(7)).unwrap()),
            ],
            done: true,
        };
        assert_eq!(c.run(1, load.clone()), ShardReply::Done);
        assert!(c.0.borrow().contains_key(LOADED_KEY));
        let bad = ShardCommand::Load {
            pairs: vec![(b"g".to_vec(), vec![])],
            done: false,
        };
        assert!(matches!(c.run(1, bad), ShardReply::Rejected(_)));
        // The second copy: values now, and deletions.
        let again = ShardCommand::LoadWritten {
            pairs: vec![
                (data_key(b"p"), None),
                (data_key(b"q"), Some(b"2".to_vec())),
            ],
            done: true,
        };
        let bad = ShardCommand::LoadWritten {
            pairs: vec![(horizon_key(1), None)],
            done: false,
        };
        assert!(matches!(c.run(1, bad), ShardReply::Rejected(_)));
        assert_eq!(c.run(1, again.clone()), ShardReply::Done);
        assert!(c.0.borrow().contains_key(CAUGHT_UP_KEY));
        assert_eq!(c.get(b"p"), None);
        assert_eq!(
            c.run(
                1,
                ShardCommand::Describe {
                    descriptor: split.child.clone()
                }
            ),
            ShardReply::Done
        );
        assert!(matches!(c.run(1, load), ShardReply::Rejected(_)));
        assert!(matches!(c.run(1, again), ShardReply::Rejected(_)));
        assert_eq!(c.get(b"q"), Some(b"2".to_vec()));
    }

    #[test]
    fn a_split_is_cancelled_only_before_its_new_shard_is_created() {
        let m = Mem(RefCell::new(BTreeMap::new()));
        let whole = Descriptor {
            shard: ShardId(1),
            version: 1,
            span: pact_common::Span::Range {
                start: Vec::new(),
                end: None,
            },
        };
        m.run(
            1,
            ShardCommand::Describe {
                descriptor: whole.clone(),
            },
        );
        let mut split = crate::split::plan(&whole, Some(b"m"), Vec::new()).unwrap();
        let child = split.child.shard;
        assert_eq!(
            m.run(
                1,
                ShardCommand::SplitBegin {
                    split: split.clone()
                }
            ),
            ShardReply::Done
        );
        // Another split while one is under way: refused.
        split.child.shard = ShardId(child.0 + 1);
        assert!(matches!(
            m.run(1, ShardCommand::SplitBegin { split }),
            ShardReply::Rejected(_)
        ));
        assert_eq!(
            m.run(1, ShardCommand::SplitCancel { child }),
            ShardReply::Done
        );
        assert_eq!(
            m.run(1, ShardCommand::SplitCancel { child }),
            ShardReply::Done
        );
        // Nothing moved: the part takes writes as before, and the split
        // can no longer be driven on.
        let p = ShardCommand::Prepare {
            txn: t(1),
            writes: vec![put("x", "1")],
            term: 1,
        };
        assert_eq!(m.run(1, p), ShardReply::Prepared);
        assert!(matches!(
            m.run(1, ShardCommand::SplitDrained { child }),
            ShardReply::Rejected(_)
        ));
        assert!(matches!(
            m.run(1, ShardCommand::SplitCommit { child }),
            ShardReply::Rejected(_)
        ));
        assert!(matches!(
            m.run(1, ShardCommand::SplitCreated { child }),
            ShardReply::Rejected(_)
        ));
        assert!(
            notice(&ShardCommand::SplitCancel { child }, &ShardReply::Done) == Notice::Freeze(None)
        );
    }

    #[test]
    fn the_first_descriptor_recorded_stays() {
        let m = Mem(RefCell::new(BTreeMap::new()));
        let stored = |m: &Mem| {
            let map = m.0.borrow().clone();
            descriptor(&|k| Ok(map.get(k).cloned())).unwrap()
        };
        assert_eq!(stored(&m), None);
        let of = |start: &str| pact_common::Descriptor {
            shard: pact_common::ShardId(2),
            version: pact_common::FIRST_VERSION,
            span: pact_common::Span::Range {
                start: start.as_bytes().to_vec(),
                end: None,
            },
        };
        let first = of("g");
        let cmd = ShardCommand::Describe {
            descriptor: first.clone(),
        };
        assert_eq!(m.run(1, cmd.clone()), ShardReply::Done);
        assert_eq!(stored(&m), Some(first.clone()));
        // A later leader with another config proposes its own: ignored.
        let other = ShardCommand::Describe {
            descriptor: of("m"),
        };
        assert_eq!(m.run(2, other), ShardReply::Done);
        assert_eq!(stored(&m), Some(first));
        assert_eq!(ShardCommand::decode(&cmd.encode().unwrap()).unwrap(), cmd);
        // The record is outside the data keys: scans never see it.
        assert!(
            DESCRIPTOR_KEY < data_key(b"").as_slice() || DESCRIPTOR_KEY >= data_end().as_slice()
        );
    }

    #[test]
    fn one_phase_applies_in_its_term_only() {
        let m = Mem(RefCell::new(BTreeMap::new()));
        let w = vec![put("a", "1"), (b"a".to_vec(), None), put("b", "2")];
        assert_eq!(
            m.run(
                5,
                ShardCommand::OnePhase {
                    txn: t(1),
                    writes: w.clone(),
                    term: 5
                }
            ),
            ShardReply::Done
        );
        assert_eq!(m.get(b"a"), None, "last write of a key wins");
        assert_eq!(m.get(b"b"), Some(b"2".to_vec()));
        let r = m.run(
            6,
            ShardCommand::OnePhase {
                txn: t(2),
                writes: vec![put("c", "3")],
                term: 5,
            },
        );
        assert!(matches!(r, ShardReply::Rejected(_)));
        assert_eq!(m.get(b"c"), None);
    }

    /// Crash points of the participant side: every command may be applied
    /// again after a crash (replay, retry, duplicate delivery); each step
    /// must be idempotent and must never decide on its own.
    #[test]
    fn prepare_commit_is_idempotent_at_every_step() {
        let m = Mem(RefCell::new(BTreeMap::new()));
        let prep = ShardCommand::Prepare {
            txn: t(1),
            writes: vec![put("x", "1")],
            term: 3,
        };
        // Before prepare: a commit is refused, nothing applied.
        assert!(matches!(
            m.run(3, ShardCommand::Commit { txn: t(1) }),
            ShardReply::Rejected(_)
        ));
        assert_eq!(m.run(3, prep.clone()), ShardReply::Prepared);
        // Prepared writes are not visible before the decision.
        assert_eq!(m.get(b"x"), None);
        // Prepare again (retry after a lost reply), even in a later term: still prepared.
        assert_eq!(m.run(4, prep.clone()), ShardReply::Prepared);
        assert_eq!(
            m.run(4, ShardCommand::Commit { txn: t(1) }),
            ShardReply::Done
        );
        assert_eq!(m.get(b"x"), Some(b"1".to_vec()));
        // Commit twice: same answer, no change.
        assert_eq!(
            m.run(4, ShardCommand::Commit { txn: t(1) }),
            ShardReply::Done
        );
        // A late abort or prepare cannot undo it.
        assert!(matches!(
            m.run(4, ShardCommand::Abort { txn: t(1) }),
            ShardReply::Rejected(_)
        ));
        assert!(matches!(m.run(4, prep), ShardReply::Rejected(_)));
        assert_eq!(m.get(b"x"), Some(b"1".to_vec()));
    }

    #[test]
    fn abort_is_idempotent_and_final() {
        let m = Mem(RefCell::new(BTreeMap::new()));
        let prep = ShardCommand::Prepare {
            txn: t(1),
            writes: vec![put("y", "1")],
            term: 3,
        };
        assert_eq!(m.run(3, prep.clone()), ShardReply::Prepared);
        assert_eq!(
            m.run(3, ShardCommand::Abort { txn: t(1) }),
            ShardReply::Done
        );
        assert_eq!(
            m.run(3, ShardCommand::Abort { txn: t(1) }),
            ShardReply::Done
        );
        assert!(matches!(
            m.run(3, ShardCommand::Commit { txn: t(1) }),
            ShardReply::Rejected(_)
        ));
        assert!(matches!(m.run(3, prep), ShardReply::Rejected(_)));
        assert_eq!(m.get(b"y"), None);
        // Abort of a transaction never prepared here records the outcome,
        // so a prepare arriving late (reordered) is refused.
        assert_eq!(
            m.run(3, ShardCommand::Abort { txn: t(9) }),
            ShardReply::Done
        );
        let late = ShardCommand::Prepare {
            txn: t(9),
            writes: vec![put("z", "1")],
            term: 3,
        };
        assert!(matches!(m.run(3, late), ShardReply::Rejected(_)));
    }

    #[test]
    fn an_abort_settles_a_one_phase_commit_of_unknown_fate() {
        // Applied first: the abort is refused, the commit stands.
        let m = Mem(RefCell::new(BTreeMap::new()));
        let one = ShardCommand::OnePhase {
            txn: t(1),
            writes: vec![put("a", "1")],
            term: 2,
        };
        assert_eq!(m.run(2, one.clone()), ShardReply::Done);
        assert!(
            matches!(m.run(2, ShardCommand::Abort { txn: t(1) }), ShardReply::Rejected(r) if r.contains("committed"))
        );
        assert_eq!(m.get(b"a"), Some(b"1".to_vec()));
        // Abort first: the late one-phase entry is refused.
        let m = Mem(RefCell::new(BTreeMap::new()));
        assert_eq!(
            m.run(2, ShardCommand::Abort { txn: t(1) }),
            ShardReply::Done
        );
        assert!(matches!(m.run(2, one), ShardReply::Rejected(_)));
        assert_eq!(m.get(b"a"), None);
    }

    #[test]
    fn a_fence_keeps_what_is_recorded_and_otherwise_rules_out_a_late_commit() {
        let m = Mem(RefCell::new(BTreeMap::new()));
        let state = |m: &Mem, txn| {
            let map = m.0.borrow().clone();
            txn_state(&|k| Ok(map.get(k).cloned()), txn).unwrap()
        };
        let fence = |txn| ShardCommand::Fence { txn };
        // A one-phase commit that applied: the fence reports it, changes nothing.
        let one = |txn, v: &str| ShardCommand::OnePhase {
            txn,
            writes: vec![put("k", v)],
            term: 2,
        };
        assert_eq!(m.run(2, one(t(1), "1")), ShardReply::Done);
        assert_eq!(fenced_state(&m.run(2, fence(t(1)))), TxnState::Committed);
        assert_eq!(m.get(b"k"), Some(b"1".to_vec()));
        // Nothing here yet: the fence records an abort, so the one-phase
        // commit arriving late is rejected.
        assert_eq!(state(&m, t(2)), TxnState::None);
        assert_eq!(fenced_state(&m.run(2, fence(t(2)))), TxnState::Aborted);
        assert!(matches!(m.run(2, one(t(2), "2")), ShardReply::Rejected(_)));
        assert_eq!(m.get(b"k"), Some(b"1".to_vec()));
        assert_eq!(fenced_state(&m.run(2, fence(t(2)))), TxnState::Aborted);
        // A prepared transaction stays prepared: its coordinator decides.
        let prep = ShardCommand::Prepare {
            txn: t(3),
            writes: vec![put("p", "3")],
            term: 2,
        };
        assert_eq!(m.run(2, prep), ShardReply::Prepared);
        let reply = m.run(2, fence(t(3)));
        assert_eq!(fenced_state(&reply), TxnState::Prepared);
        assert_eq!(
            notice(&fence(t(3)), &reply),
            Notice::Nothing,
            "keeps its locks"
        );
        assert_eq!(
            m.run(2, ShardCommand::Commit { txn: t(3) }),
            ShardReply::Done
        );
        assert_eq!(m.get(b"p"), Some(b"3".to_vec()));
        assert_eq!(state(&m, t(3)), TxnState::Committed);
        // A fenced prepare is rejected too.
        m.run(2, fence(t(4)));
        let late = ShardCommand::Prepare {
            txn: t(4),
            writes: vec![put("q", "4")],
            term: 2,
        };
        assert!(matches!(m.run(2, late), ShardReply::Rejected(_)));
        let reply = m.run(2, fence(t(4)));
        assert_eq!(fenced_state(&reply), TxnState::Aborted);
        assert_eq!(notice(&fence(t(4)), &reply), Notice::Finished(t(4)));
    }

    fn shared_with(locks: &[(TxnId, &[u8])]) -> Shared {
        use crate::locks::Mode;
        use crate::txn::{Step, Target, TxnLimits};
        let mut mgr = TxnManager::new(TxnLimits::default());
        mgr.leader_ready(2, Vec::new(), 0);
        for (txn, key) in locks {
            assert_eq!(
                mgr.lock(*txn, true, &Target::key(key, Mode::Exclusive), 0),
                Step::Granted
            );
        }
        let shared = Shared::new(mgr);
        shared.wake();
        shared
    }

    fn releases(s: &Shared) -> u64 {
        s.mgr.lock().unwrap().lock_releases()
    }

    /// Make `txn` known to the manager, as the lock request that then
    /// waits has made it (a lock of a key of its own).
    fn known(s: &Shared, txn: TxnId) {
        use crate::locks::Mode;
        use crate::txn::{Step, Target};
        let own = format!("own-{txn}");
        let step =
            s.mgr
                .lock()
                .unwrap()
                .lock(txn, true, &Target::key(own.as_bytes(), Mode::Shared), 0);
        assert_eq!(step, Step::Granted);
    }

    /// `txn` waiting for `holder`'s locks (up to 5 s), registered by the
    /// time this returns; the task answers whether it was woken.
    async fn spawn_waiter(
        s: &Arc<Shared>,
        txn: TxnId,
        holder: TxnId,
    ) -> tokio::task::JoinHandle<bool> {
        known(s, txn);
        let seen = releases(s);
        let s = s.clone();
        let waiter = tokio::spawn(async move {
            s.await_release(txn, &[holder], seen, Duration::from_secs(5))
                .await
        });
        tokio::task::yield_now().await;
        waiter
    }

    /// A lock request waiting for a transaction is woken by that
    /// transaction's release and by nothing else's, and leaves no entry
    /// behind in the wakers.
    #[tokio::test(flavor = "current_thread")]
    async fn a_waiter_wakes_when_its_holder_lets_go_and_not_for_others() {
        let s = Arc::new(shared_with(&[(t(1), b"a"), (t(2), b"b")]));
        let waiter = spawn_waiter(&s, t(9), t(1)).await;
        assert_eq!(s.wakers.lock().unwrap().len(), 2, "its holder and itself");
        // Another transaction's release does not wake it...
        assert!(s.mgr.lock().unwrap().finish(t(2)));
        s.wake();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiter.is_finished());
        // ...its holder's does.
        assert!(s.mgr.lock().unwrap().finish(t(1)));
        s.wake();
        assert!(waiter.await.unwrap(), "woken, not timed out");
        assert!(s.wakers.lock().unwrap().is_empty(), "no entry left behind");
    }

    /// A leadership change between a request's look at its lock and its
    /// registration is not missed: the step-down moves the release count
    /// (the new table does not start it again from where it was).
    #[tokio::test(flavor = "current_thread")]
    async fn a_step_down_before_the_registration_is_not_missed() {
        let s = shared_with(&[(t(1), b"a")]);
        let seen = releases(&s);
        s.mgr.lock().unwrap().step_down();
        s.wake();
        assert!(
            s.await_release(t(9), &[t(1)], seen, Duration::from_millis(500))
                .await
        );
    }

    /// A waiter wounded meanwhile is woken by its own release; a release
    /// between its look at the lock and its registration is not missed;
    /// with nothing released it times out; a leadership change wakes all.
    #[tokio::test(flavor = "current_thread")]
    async fn a_waiter_wakes_on_its_own_release_a_missed_release_or_a_step_down() {
        use crate::locks::Mode;
        use crate::txn::{Step, Target};
        let s = Arc::new(shared_with(&[(t(1), b"a"), (t(5), b"b")]));
        known(&s, t(9));
        let seen = releases(&s);
        // Released before it registered: it returns at once.
        assert!(s.mgr.lock().unwrap().finish(t(5)));
        s.wake();
        assert!(
            s.await_release(t(9), &[t(1)], seen, Duration::from_secs(5))
                .await
        );
        // Nothing released: the timeout.
        let seen = releases(&s);
        assert!(
            !s.await_release(t(9), &[t(1)], seen, Duration::from_millis(200))
                .await
        );
        // t(7) waits for t(1) while holding "c"; an older t(3) wounds it there.
        assert_eq!(
            s.mgr
                .lock()
                .unwrap()
                .lock(t(7), true, &Target::key(b"c", Mode::Exclusive), 0),
            Step::Granted
        );
        let waiter = spawn_waiter(&s, t(7), t(1)).await;
        {
            let mut m = s.mgr.lock().unwrap();
            let step = m.lock(t(3), true, &Target::key(b"c", Mode::Exclusive), 1);
            assert!(matches!(step, Step::Wound(ref v) if v.len() == 1 && v[0].0 == t(7)));
            assert!(m.wound_confirmed(t(7)));
        }
        s.wake();
        assert!(waiter.await.unwrap(), "woken by its own release");
        // Its own transaction aborted before it registered, holding
        // nothing here (its first request waits for its first lock): the
        // abort released nothing and woke no one yet, so it looks again
        // at once rather than sleep out its lock wait.
        let step = s
            .mgr
            .lock()
            .unwrap()
            .lock(t(6), true, &Target::key(b"a", Mode::Exclusive), 2);
        assert_eq!(step, Step::Wait(vec![t(1)]));
        let seen = releases(&s);
        assert!(s.mgr.lock().unwrap().end_aborted(t(6)));
        s.wake();
        assert_eq!(releases(&s), seen, "the abort freed nothing");
        let looked = tokio::time::timeout(
            Duration::from_secs(1),
            s.await_release(t(6), &[t(1)], seen, Duration::from_secs(5)),
        )
        .await;
        assert_eq!(looked, Ok(true), "it should look again at once");
        // A step-down wakes every waiter.
        let waiter = spawn_waiter(&s, t(8), t(1)).await;
        s.mgr.lock().unwrap().step_down();
        s.wake();
        assert!(waiter.await.unwrap());
        assert!(s.wakers.lock().unwrap().is_empty());
    }

    /// A commit whose locks went at its decision: the apply, once
    /// visible, ends the serving of its writes from memory and the wait for it to be logged (and nothing
    /// else does).
    #[test]
    fn the_visible_commit_ends_the_decided_writes_kept_in_memory() {
        use crate::locks::Mode;
        use crate::txn::{Step, Target, TxnLimits, TxnManager};
        let mut mgr = TxnManager::new(TxnLimits::default());
        mgr.leader_ready(2, Vec::new(), 0);
        let app = KvApp {
            shared: Arc::new(Shared::new(mgr)),
        };
        {
            let mut m = app.shared.mgr.lock().unwrap();
            assert_eq!(
                m.lock(t(3), true, &Target::key(b"k", Mode::Exclusive), 0),
                Step::Granted
            );
            m.buffer_write(t(3), b"k".to_vec(), Some(b"v".to_vec()));
            m.begin_prepare(t(3), 0).unwrap();
            m.prepare_applied(t(3), true);
            assert!(m.decided(t(3), true, 0));
        }
        let served = || app.shared.mgr.lock().unwrap().committed_write(b"k");
        let done = encode(&ShardReply::Done).unwrap();
        // Other transactions' entries leave it alone.
        let other = ShardCommand::Commit { txn: t(4) }.encode().unwrap();
        app.visible(&other, &done);
        assert_eq!(served(), Some(Some(b"v".to_vec())));
        let commit = ShardCommand::Commit { txn: t(3) }.encode().unwrap();
        app.visible(&commit, &done);
        assert_eq!(served(), None);
    }

    fn outcomes(m: &Mem) -> usize {
        m.0.borrow()
            .keys()
            .filter(|k| k.first() == Some(&OUTCOME_PREFIX))
            .count()
    }

    fn forget(m: &Mem, below: u64, txns: &[TxnId]) -> ShardReply {
        m.run(
            9,
            ShardCommand::Forget {
                group: 1,
                below: Timestamp(below),
                txns: txns.to_vec(),
            },
        )
    }

    /// The fence floor: below it a transaction with no record here is
    /// aborted here without a record of its own, and can no longer land;
    /// records already here stand, and a prepared one gets its decision.
    #[test]
    fn below_the_floor_nothing_lands_and_nothing_is_written() {
        let m = Mem(RefCell::new(BTreeMap::new()));
        let one = |txn, k: &str| ShardCommand::OnePhase {
            txn,
            writes: vec![put(k, "1")],
            term: 9,
        };
        let prep = |txn, k: &str| ShardCommand::Prepare {
            txn,
            writes: vec![put(k, "1")],
            term: 9,
        };
        let floor_at = |group, below| ShardCommand::Floor {
            group,
            below: Timestamp(below),
        };
        assert_eq!(m.run(9, one(t(1), "a")), ShardReply::Done);
        assert_eq!(m.run(9, prep(t(2), "b")), ShardReply::Prepared);
        let before = m.0.borrow().len();
        assert_eq!(m.run(9, floor_at(1, 10)), ShardReply::Done);
        assert_eq!(m.0.borrow().len(), before + 1, "one key: the floor");
        // Lower or equal floors change nothing; the implicit group has none.
        assert_eq!(m.run(9, floor_at(1, 5)), ShardReply::Done);
        assert_eq!(m.run(9, floor_at(1, 10)), ShardReply::Done);
        assert_eq!(m.run(9, floor_at(0, 10)), ShardReply::Done);
        assert_eq!(m.0.borrow().len(), before + 1);
        let get = |k: &[u8]| Ok(m.0.borrow().get(k).cloned());
        assert_eq!(floor(&get, 1).unwrap(), Timestamp(10));
        assert_eq!(floor(&get, 7).unwrap(), Timestamp(0), "per group");

        // Below it: what is recorded stands; the rest is aborted, and
        // neither asking, fencing nor a late commit writes anything.
        assert_eq!(txn_state(&get, t(1)).unwrap(), TxnState::Committed);
        assert_eq!(txn_state(&get, t(2)).unwrap(), TxnState::Prepared);
        assert_eq!(txn_state(&get, t(3)).unwrap(), TxnState::Aborted);
        let n = m.0.borrow().len();
        assert_eq!(
            fenced_state(&m.run(9, ShardCommand::Fence { txn: t(3) })),
            TxnState::Aborted
        );
        assert_eq!(
            m.run(9, one(t(4), "d")),
            ShardReply::Rejected(BELOW_FLOOR.into())
        );
        assert_eq!(
            m.run(9, prep(t(5), "e")),
            ShardReply::Rejected(BELOW_FLOOR.into())
        );
        assert_eq!(
            m.run(9, ShardCommand::Abort { txn: t(6) }),
            ShardReply::Done
        );
        assert_eq!(m.0.borrow().len(), n, "nothing written below the floor");
        assert_eq!(m.get(b"d"), None);
        // A prepared transaction still commits (its coordinator decided).
        assert_eq!(
            m.run(9, ShardCommand::Commit { txn: t(2) }),
            ShardReply::Done
        );
        assert_eq!(m.get(b"b"), Some(b"1".to_vec()));
        // Other groups, ids at or above the floor, and implicit writes
        // are unaffected.
        let other = TxnId { group: 7, ..t(4) };
        assert_eq!(m.run(9, one(other, "o")), ShardReply::Done);
        assert_eq!(m.run(9, one(t(10), "f")), ShardReply::Done);
        let implicit = TxnId {
            group: crate::node::IMPLICIT_GROUP,
            ..t(3)
        };
        assert_eq!(m.run(9, one(implicit, "i")), ShardReply::Done);
    }

    /// Garbage collection at a shard: below the horizon outcome records go,
    /// and in exchange nothing of a transaction there can land any more,
    /// while a prepared one still gets its decision.
    #[test]
    fn below_the_horizon_records_go_and_nothing_new_lands() {
        let m = Mem(RefCell::new(BTreeMap::new()));
        let one = |txn, k: &str| ShardCommand::OnePhase {
            txn,
            writes: vec![put(k, "1")],
            term: 9,
        };
        let prep = |txn, k: &str| ShardCommand::Prepare {
            txn,
            writes: vec![put(k, "1")],
            term: 9,
        };
        assert_eq!(m.run(9, one(t(1), "a")), ShardReply::Done);
        assert_eq!(
            m.run(9, ShardCommand::Fence { txn: t(2) }),
            ShardReply::Rejected("aborted: fenced before it prepared or committed here".into())
        );
        assert_eq!(m.run(9, prep(t(3), "c")), ShardReply::Prepared);
        assert_eq!(m.run(9, one(t(20), "z")), ShardReply::Done);
        assert_eq!(outcomes(&m), 3);

        // Listed ids past the horizon, or of another group, keep their
        // records: only what the horizon covers goes.
        let other = TxnId { group: 7, ..t(1) };
        assert_eq!(
            forget(&m, 10, &[t(1), t(2), t(20), other]),
            ShardReply::Done
        );
        assert_eq!(outcomes(&m), 1, "t(20) is past the horizon and stays");
        let get = |k: &[u8]| Ok(m.0.borrow().get(k).cloned());
        assert_eq!(horizon(&get, 1).unwrap(), Timestamp(10));
        assert_eq!(horizon(&get, 7).unwrap(), Timestamp(0), "per group");
        // The horizon never goes back.
        assert_eq!(forget(&m, 5, &[]), ShardReply::Done);
        let get = |k: &[u8]| Ok(m.0.borrow().get(k).cloned());
        assert_eq!(horizon(&get, 1).unwrap(), Timestamp(10));

        // Forgotten: an inquiry says so, a fence writes nothing, and a late
        // one-phase commit or prepare is refused (it could otherwise land
        // beside a forgotten abort).
        assert_eq!(txn_state(&get, t(1)).unwrap(), TxnState::Expired);
        assert_eq!(
            m.run(9, ShardCommand::Fence { txn: t(4) }),
            ShardReply::Expired
        );
        assert_eq!(m.run(9, one(t(5), "e")), ShardReply::Expired);
        assert_eq!(m.run(9, prep(t(6), "f")), ShardReply::Expired);
        assert_eq!(m.get(b"e"), None);
        assert_eq!(outcomes(&m), 1, "nothing recorded below the horizon");
        // A resend of a commit that applied before its record went: done.
        assert_eq!(
            m.run(9, ShardCommand::Commit { txn: t(1) }),
            ShardReply::Done
        );
        // Implicit single-operation transactions keep no records: unaffected.
        let implicit = TxnId {
            group: crate::node::IMPLICIT_GROUP,
            ..t(1)
        };
        assert_eq!(m.run(9, one(implicit, "i")), ShardReply::Done);

        // A prepared transaction below the horizon keeps its prepare record
        // and its decision still applies, leaving no outcome record.
        assert_eq!(txn_state(&get, t(3)).unwrap(), TxnState::Prepared);
        assert_eq!(m.run(9, prep(t(3), "c")), ShardReply::Prepared);
        assert_eq!(
            m.run(9, ShardCommand::Commit { txn: t(3) }),
            ShardReply::Done
        );
        assert_eq!(m.get(b"c"), Some(b"1".to_vec()));
        assert_eq!(outcomes(&m), 1);
        assert_eq!(
            m.run(9, ShardCommand::Commit { txn: t(3) }),
            ShardReply::Done
        );

        // Above the horizon everything is as before.
        assert_eq!(m.run(9, one(t(20), "z")), ShardReply::Done, "idempotent");
        assert_eq!(
            m.run(9, ShardCommand::Fence { txn: t(21) }),
            ShardReply::Rejected("aborted: fenced before it prepared or committed here".into())
        );
        assert_eq!(
            m.run(9, one(t(21), "y")),
            ShardReply::Rejected("already aborted".into())
        );
    }

    #[test]
    fn prepare_from_an_old_term_is_rejected() {
        let m = Mem(RefCell::new(BTreeMap::new()));
        let prep = ShardCommand::Prepare {
            txn: t(1),
            writes: vec![put("x", "1")],
            term: 3,
        };
        assert!(
            matches!(m.run(4, prep), ShardReply::Rejected(r) if r.contains("leadership changed"))
        );
        assert!(m.0.borrow().is_empty());
    }

    #[test]
    fn keys_round_trip() {
        let id = t(77);
        assert_eq!(TxnId::from_key(&id.key(PREPARED_PREFIX)), Some(id));
        assert!(data_key(&[0xff; 4]) < data_end());
        assert!(id.key(PREPARED_PREFIX) > data_end());
    }

    /// Every command, reply and stored record decodes back to itself, and
    /// bytes that are not one are an error naming what was being read.
    #[test]
    fn commands_replies_and_records_round_trip() {
        let txn = t(77);
        let writes = vec![(b"a".to_vec(), Some(vec![0u8; 300])), (b"b".to_vec(), None)];
        for c in [
            ShardCommand::OnePhase {
                txn,
                writes: writes.clone(),
                term: 3,
            },
            ShardCommand::Prepare {
                txn,
                writes: writes.clone(),
                term: u64::MAX,
            },
            ShardCommand::Commit { txn },
            ShardCommand::Abort { txn },
            ShardCommand::Fence { txn },
            ShardCommand::Forget {
                group: 1,
                below: Timestamp(9),
                txns: vec![txn],
            },
        ] {
            assert_eq!(ShardCommand::decode(&c.encode().unwrap()).unwrap(), c);
        }
        for r in [
            ShardReply::Done,
            ShardReply::Prepared,
            ShardReply::Rejected("why".into()),
            ShardReply::Expired,
        ] {
            assert_eq!(ShardReply::decode(&encode(&r).unwrap()).unwrap(), r);
        }
        let rec = encode(&PrepareRecord {
            writes: writes.clone(),
        })
        .unwrap();
        assert_eq!(prepared_writes(&rec).unwrap(), writes);

        let e = ShardCommand::decode(b"\xff\xff\xff\xff garbage").unwrap_err();
        assert!(
            e.contains("shard command") && e.contains("format version 255"),
            "{e}"
        );
        let e = prepared_writes(&rec[..rec.len() - 1]).unwrap_err();
        assert!(
            e.contains("prepare record") && e.contains("undecodable"),
            "{e}"
        );
        assert!(ShardReply::decode(&[]).is_err());
    }
}
