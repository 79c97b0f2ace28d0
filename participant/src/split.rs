//! Splitting a shard in two, and merging two into one, while they serve.
//!
//! The shard that splits (the parent) keeps the lower part of what it
//! owns; a new shard (the child, id [`pact_common::split_child_id`]) takes
//! the rest, on the same replicas. Two Raft groups take part, and each is
//! driven only by its own leader, from its own log and from what the other
//! group's replica *on the same node* has applied (every child replica
//! starts beside a parent replica, so nothing crosses nodes but Raft):
//!
//! 1. **Begin** (parent log, `SplitStart`; `SplitBegin` from earlier
//!    builds): the split is recorded, with its attempt number, and
//!    from here every write the parent applies in the moving part also
//!    marks its key (`w` ++ key, at apply, so every replica has the same
//!    marks). The parent keeps serving the part.
//! 2. **Host** (parent leader): every voter of the parent hosts an empty
//!    child replica (`Admin.HostReplica`; asked first before Begin too,
//!    so a voter that does not answer refuses the split before anything
//!    is recorded), then `SplitCreated`, and the driver's own replica
//!    creates the group with those voters. Until `SplitCreated` the split
//!    can be cancelled (`SplitAbandon`, naming the attempt: the log index
//!    of its `SplitStart`); from it on it only goes forward.
//! 3. **First copy** (child leader): once its node's parent replica shows
//!    the split, it copies the moving part as that replica has it, while
//!    the parent still serves (a moving target, which step 6 corrects),
//!    with the parent's record horizons and fence floors, into its own
//!    log (`Load`), the last batch marked (`l`). A new child leader
//!    copies again unless the mark is there: `Load` only puts, and is
//!    refused once the child serves.
//! 4. **Freeze** (parent log, `SplitFreeze`, once the driver's node's
//!    child replica shows the first copy): no lock in the part is
//!    granted, and no one-phase commit or prepare that writes there
//!    applies (checked at apply, so a command whose locks predate the
//!    freeze cannot slip through).
//! 5. **Drain** (parent leader): open transactions holding locks there are
//!    wounded (confirmed by their coordinators, as any wound), and the
//!    split waits for prepared ones to be decided. Not drained within
//!    [`DRAIN_WITHIN`]: `SplitThaw` lifts the freeze and the split is
//!    frozen again after [`RETRY_PAUSE`]. Drained: `SplitDrained`,
//!    refused at apply while any prepare record writes in the moving part.
//! 6. **Second copy** (child leader, once its node's parent replica has
//!    applied `SplitDrained`): every marked key of the part, with its
//!    value now or its absence (`LoadWritten`), the last batch marked
//!    (`k`). A key not marked has not changed since before the first
//!    copy read it (the marks began before the first copy started), so
//!    the child now holds the part exactly as the frozen parent does. The
//!    part is frozen only for the drain and this copy of what changed,
//!    not for the whole part's copy.
//! 7. **Commit** (parent log, `SplitCommit`, once the driver's node's child
//!    replica has applied the second copy): the parent's descriptor
//!    becomes its lower part at version + 1 and names the child among its
//!    successors. From here a request for a moved key is WRONG_SHARD.
//! 8. **Serve** (child log, `Describe`, once the child leader's node's
//!    parent replica has applied `SplitCommit`): the child owns its part at
//!    version + 1. Between 7 and 8 the moved keys have no server (short).
//! 9. **Trim and done** (parent): the moved keys and the marks are deleted
//!    from the parent in bounded batches (`Trim`), then `SplitDone`.
//!
//! Invariants: at any time at most one of the two groups serves a key
//! (the parent until 7, the child from 8); no prepare record is ever
//! split (drained before the second copy, none can land after); a
//! transaction that held locks in the moving part before the freeze never
//! commits (wounded, and its prepare refused at apply); every write of
//! the part the parent applied before the freeze reaches the child (by
//! the first copy, or marked and copied again). Failure cases: a split
//! whose new shard cannot be hosted is cancelled; one that cannot drain
//! thaws and tries again; a driver that dies is replaced by the next
//! leader of its group, which continues from the recorded phase.
//! What a split needs of the layout: the child is hosted through
//! `Admin.HostReplica`, which only `pact` servers offer.
//!
//! **Merges** run on the same steps, in reverse: the merging shard plays
//! the parent with all it owns as the moving part (its split record has
//! `merge`: the target's version when the merge was planned), and the
//! target, an existing shard on the same nodes, plays the child. Instead
//! of being hosted and created, the target accepts (`AbsorbAccept`, which
//! its leader proposes on seeing the merge in its node's replica of the
//! merging shard, and which is refused unless its descriptor is still at
//! that version and it has not refused that attempt); the merge is
//! cancelled only once the target's version moved on, or the target
//! refused it in its own log (`AbsorbRefuse`, to break a cycle of
//! merges), when acceptance has become impossible. The target records
//! its copies in its `Absorb` record, loads only keys outside its own
//! span, and takes the merged span (`AbsorbCommit`) once the merging
//! shard committed, which leaves that shard owning nothing: its group
//! stays, answering for its transactions' records.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pact_common::{split_child_id, ClusterConfig, Descriptor, NodeId, ShardId};
use pact_raft::{Host, Replica};

use crate::kv::{
    absorb_record, data_key, prepared_writes, split_record, Absorb, Split, ABSORB_KEY, ATTEMPT_KEY,
    CAUGHT_UP_KEY, DATA_PREFIX, DESCRIPTOR_KEY, FLOOR_PREFIX, HORIZON_PREFIX, LOADED_KEY,
    PREPARED_PREFIX, SPLIT_KEY, SUCCESSORS_KEY, WRITTEN_PREFIX,
};
use crate::kv::{ShardCommand, ShardReply};
use crate::node::Shard;
use crate::Error;

/// How long a split waits for the locks and prepared transactions in the
/// part that moves before it gives up.
pub const DRAIN_WITHIN: Duration = Duration::from_secs(10);
/// How long a split that stopped half way (a freeze lifted because the
/// part could not drain, a step refused) rests before it is driven again,
/// so a part that keeps failing to drain is frozen half the time at most.
pub const RETRY_PAUSE: Duration = DRAIN_WITHIN;
/// Most bytes of keys and values one `Load` or `Trim` entry carries.
const BATCH_BYTES: usize = 256 << 10;
/// Most keys one `Load` or `Trim` entry carries.
const BATCH_KEYS: usize = 4096;
/// Most pairs read from the store at once while copying or trimming: the
/// store hands back values too, so a page of large values stays within
/// tens of MiB.
const PAGE: usize = 256;
/// How long the parent's driver waits for the child to copy its part
/// and to serve, before it lets the next attempt (a tick later) go on.
const CHILD_WITHIN: Duration = Duration::from_secs(600);

/// What a split's drivers need of the node.
#[derive(Clone)]
pub struct Ctx {
    pub host: Host,
    pub me: NodeId,
    pub config: Arc<ClusterConfig>,
    /// The node's client of the cluster: coordinators (wounds) and other
    /// nodes' Admin services (hosting the child).
    pub client: pact_client::Client,
}

async fn propose(r: &Replica, cmd: &ShardCommand) -> Result<ShardReply, Error> {
    let cmd = cmd
        .encode()
        .map_err(|e| Error::Fatal(format!("cannot encode a split command: {e}")))?;
    let (_, reply) = r.propose(cmd).await?;
    ShardReply::decode(&reply).map_err(Error::Fatal)
}

/// The proposal must have applied: anything else stops this attempt.
async fn expect_done(r: &Replica, cmd: &ShardCommand) -> Result<(), Error> {
    match propose(r, cmd).await? {
        ShardReply::Done => Ok(()),
        other => Err(Error::Unavailable(format!(
            "split step refused by shard {}: {other:?}",
            r.group()
        ))),
    }
}

/// The record at `key` as `r` has applied it, read by the state
/// machine's own reader of it (an unreadable one is fatal).
async fn local_record<T>(
    r: &Replica,
    key: &[u8],
    read: fn(pact_raft::Lookup<'_>) -> std::io::Result<Option<T>>,
) -> Result<Option<T>, Error> {
    let v = r.get_local(key).await?;
    read(&|_| Ok(v.clone())).map_err(|e| Error::Fatal(e.to_string()))
}

/// The split under way as `r` has applied it.
pub(crate) async fn local_split(r: &Replica) -> Result<Option<Split>, Error> {
    local_record(r, SPLIT_KEY, split_record).await
}

pub(crate) async fn local_descriptor(r: &Replica) -> Result<Option<Descriptor>, Error> {
    local_record(r, DESCRIPTOR_KEY, crate::kv::descriptor).await
}

/// The shards split off `r`'s shard, and last the one it merged into, if
/// it did, as `r` has applied them.
pub(crate) async fn local_successors(r: &Replica) -> Result<Vec<ShardId>, Error> {
    let list = local_record(r, SUCCESSORS_KEY, |get| {
        crate::kv::successors(get).map(Some)
    });
    Ok(list.await?.unwrap_or_default())
}

/// The merge `r` is absorbing, as it has applied it.
pub(crate) async fn local_absorb(r: &Replica) -> Result<Option<Absorb>, Error> {
    local_record(r, ABSORB_KEY, absorb_record).await
}

/// The number of the split or merge `r`'s shard began last, as `r` has
/// applied it.
pub(crate) async fn local_attempt(r: &Replica) -> Result<u64, Error> {
    let a = local_record(r, ATTEMPT_KEY, |get| crate::kv::attempt(get).map(Some));
    Ok(a.await?.unwrap_or_default())
}

/// The highest attempt of a merge from `from` that `r`'s shard refused,
/// as `r` has applied it.
async fn local_refused(r: &Replica, from: ShardId) -> Result<Option<u64>, Error> {
    let v = r.get_local(&crate::kv::refused_key(from)).await?;
    crate::kv::refused(&|_| Ok(v.clone()), from).map_err(|e| Error::Fatal(e.to_string()))
}

/// The split a leader starts: the descriptor `d` cut at `at`.
pub fn plan(d: &Descriptor, at: Option<&[u8]>, voters: Vec<NodeId>) -> Result<Split, Error> {
    let (left, right) = d.span.split(at).map_err(Error::InvalidInput)?;
    let version = d.version + 1;
    Ok(Split {
        left: Descriptor {
            shard: d.shard,
            version,
            span: left,
        },
        child: Descriptor {
            shard: split_child_id(d.shard, d.version),
            version,
            span: right,
        },
        voters,
        created: false,
        frozen: false,
        drained: false,
        committed: false,
        merge: None,
    })
}

/// The merge a leader of `from` starts: `from` moves whole into `into`
/// (whose descriptor this node's replica has), which then owns both
/// spans at a version above both.
pub fn plan_merge(
    from: &Descriptor,
    into: &Descriptor,
    voters: Vec<NodeId>,
) -> Result<Split, Error> {
    if from.shard == into.shard {
        return Err(Error::InvalidInput(
            "a shard does not merge into itself".into(),
        ));
    }
    let span = into.span.merge(&from.span).map_err(Error::InvalidInput)?;
    Ok(Split {
        left: Descriptor {
            shard: from.shard,
            version: from.version + 1,
            span: from.span.emptied(),
        },
        child: Descriptor {
            shard: into.shard,
            version: from.version.max(into.version) + 1,
            span,
        },
        voters,
        created: false,
        frozen: false,
        drained: false,
        committed: false,
        merge: Some(into.version),
    })
}

/// Begin `split` on the parent `s` (whose leader this node is) and drive
/// it to the end. The caller holds `s.splitting`.
pub(crate) async fn run(s: &Arc<Shard>, ctx: &Ctx, split: Split) -> Result<Split, Error> {
    // Every voter hosts the (empty, uncreated) child before anything is
    // recorded: a voter that does not answer refuses the split up front.
    if split.merge.is_none() {
        host_child(ctx, &split, true).await?;
    }
    expect_done(
        &s.replica,
        &ShardCommand::SplitStart {
            split: split.clone(),
        },
    )
    .await?;
    tracing::info!(shard = s.replica.group(), child = %split.child.shard, "split begun: writes in the moving part are tracked");
    // Read before the record, so never a later attempt than the record's
    // (a cancel naming it can then only cancel this split or nothing).
    let attempt = local_attempt(&s.replica).await?;
    match local_split(&s.replica).await? {
        Some(x) if x == split => drive(s, ctx, split, attempt).await,
        other => Err(Error::Unavailable(format!(
            "the split of shard {} changed as it began ({other:?}); try again",
            split.left.shard
        ))),
    }
}

/// Drive a begun split of `s` from the phase its record is in. `attempt`
/// is its attempt number, read before the record (no later than the
/// record's): a cancel names it.
pub(crate) async fn drive(
    s: &Arc<Shard>,
    ctx: &Ctx,
    mut split: Split,
    attempt: u64,
) -> Result<Split, Error> {
    let parent = s.replica.group();
    let child = split.child.shard;
    let in_background = |e: Error| {
        Error::Unknown(format!(
            "the split of shard {parent} into shard {child} is not finished ({e}); it goes on \
             in the background (txn admin shard list shows it when done)"
        ))
    };
    // A merge's target exists: it accepts instead of being created.
    if !split.created && split.merge.is_some() {
        accepted(s, ctx, &split, attempt).await?;
        split.created = true;
    }
    // Hosting with `create` is asked only until the split records that
    // the child is being created: after that a voter that lost its data
    // must rejoin behind its gate, not be created afresh (it could vote
    // away entries it had acknowledged).
    if !split.created {
        // A voter down now is not waited for: the child starts without
        // its replica there (a majority is enough).
        let created = match settled_voters(s, &split) {
            Ok(()) => match host_child(ctx, &split, false).await {
                Ok(()) => expect_done(&s.replica, &ShardCommand::SplitCreated { child }).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        if let Err(e) = created {
            // Nothing is frozen and the new shard does not exist yet: give
            // the split up. Refused if `SplitCreated` did apply after all:
            // then it goes on.
            let cancel = ShardCommand::SplitAbandon { child, attempt };
            return match propose(&s.replica, &cancel).await {
                Ok(ShardReply::Done) => {
                    tracing::warn!(shard = parent, %child, error = %e, "split cancelled");
                    if let Err(u) = unmark(s).await {
                        tracing::info!(shard = parent, error = %u, "marks of the cancelled split left for the next split's trim");
                    }
                    Err(e)
                }
                _ => Err(in_background(e)),
            };
        }
        split.created = true;
    }
    // Idempotent, and the same first membership (the recorded voters)
    // whichever driver does it. Not once committed: the new shard serves
    // (or soon will) and may have moved its replicas off this node.
    if split.merge.is_none() && !split.committed {
        let members = ctx.host.members_of(&ctx.config, &split.voters);
        local_replica(ctx, child)?
            .initialize_with(&members)
            .await
            .map_err(|e| in_background(e.into()))?;
    }
    if !split.drained {
        // The new shard copies the part while the parent still serves it;
        // only then is it frozen, for the drain and the copy of what was
        // written since: a short freeze, whatever the part's size.
        let local = local_replica(ctx, child)?;
        tracing::info!(shard = parent, %child, voters = ?split.voters, "split: the new shard is hosted; waiting for its first copy");
        wait_stage(&local, &split, Stage::Loaded)
            .await
            .map_err(in_background)?;
        if !split.frozen {
            if pact_common::faults::enabled("split-pause-before-freeze") {
                // Tests write in the part here, after the first copy.
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            let freeze = ShardCommand::SplitFreeze {
                child,
                span: split.child.span.clone(),
            };
            expect_done(&s.replica, &freeze)
                .await
                .map_err(in_background)?;
            split.frozen = true;
            tracing::info!(shard = parent, %child, "split: the moving part is frozen");
            crash_point("crash-split-frozen");
        }
        match drain(s, ctx, &split).await {
            Ok(()) => {}
            // Whether `SplitDrained` applied is not known.
            Err(e @ (Error::Unknown(_) | Error::Fatal(_))) => return Err(in_background(e)),
            Err(e) => {
                // Lift the freeze; the split stays, and is frozen again
                // after a rest. If this fails the next leader finds the
                // split undrained and drives it again.
                if let Err(c) = expect_done(&s.replica, &ShardCommand::SplitThaw { child }).await {
                    return Err(Error::Unknown(format!(
                        "the split of shard {parent} could not drain ({e}) nor lift its freeze \
                         ({c}); the shard's leader goes on with it"
                    )));
                }
                tracing::warn!(shard = parent, %child, error = %e, "split could not drain: freeze lifted, tried again later");
                return Err(Error::Unavailable(format!(
                    "{e}; the split stays under way and tries again in {RETRY_PAUSE:?}"
                )));
            }
        }
        split.drained = true;
        crash_point("crash-split-drained");
    }
    forward(s, ctx, split).await.map_err(in_background)
}

/// A drained split, from its recorded phase until the new shard serves
/// (the trim is [`finish`]'s).
async fn forward(s: &Arc<Shard>, ctx: &Ctx, mut split: Split) -> Result<Split, Error> {
    let parent = s.replica.group();
    let child = split.child.shard;
    if !split.committed {
        let local = local_replica(ctx, child)?;
        wait_stage(&local, &split, Stage::CaughtUp).await?;
        expect_done(&s.replica, &ShardCommand::SplitCommit { child }).await?;
        split.committed = true;
        crash_point("crash-split-committed");
        tracing::info!(shard = parent, %child, version = split.left.version, "split committed: the parent owns its part only");
    }
    serving(ctx, &split).await?;
    Ok(split)
}

/// Wait until the shard that takes a committed split's part serves it:
/// as this node's replica of it shows, or, once that replica has moved
/// away (its replicas change only once it serves, but that it did is
/// not proof here, so its leader is asked), as its leader answers. The
/// parent keeps its record until then: the new shard's leader reads it
/// to learn its descriptor.
async fn serving(ctx: &Ctx, split: &Split) -> Result<(), Error> {
    let child = split.child.shard;
    if let Ok(local) = local_replica(ctx, child) {
        return wait_stage(&local, split, Stage::Serving).await;
    }
    let until = Instant::now() + CHILD_WITHIN;
    loop {
        match ctx.client.describe_shard(child).await {
            Ok(d) if d.version >= split.child.version => return Ok(()),
            Ok(_) => {}
            Err(e) => {
                tracing::info!(%child, error = %e, "asking the new shard whether it serves");
            }
        }
        if Instant::now() > until {
            return Err(Error::Unavailable(format!(
                "shard {child} does not serve yet"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How far the shard that takes a split's (or merge's) part has come.
#[derive(Clone, Copy, Debug)]
enum Stage {
    /// Its first copy, taken while the part was served, is complete.
    Loaded,
    /// It copied again what was written in the part since.
    CaughtUp,
    /// It serves the part.
    Serving,
}

/// Whether `r` (this node's replica of the shard that takes `split`'s
/// part) has reached `stage`: a split's new shard records its copies in
/// `l` and `k` and serves once it has a descriptor; a merge's target
/// records them in its `Absorb` record, and serves at the merge's version.
async fn reached(r: &Replica, split: &Split, stage: Stage) -> Result<bool, Error> {
    if split.merge.is_none() {
        let key = match stage {
            Stage::Loaded => LOADED_KEY,
            Stage::CaughtUp => CAUGHT_UP_KEY,
            Stage::Serving => DESCRIPTOR_KEY,
        };
        return Ok(r.get_local(key).await?.is_some());
    }
    if local_descriptor(r)
        .await?
        .is_some_and(|d| d.version >= split.child.version)
    {
        return Ok(true);
    }
    Ok(match (stage, local_absorb(r).await?) {
        (Stage::Loaded, Some(a)) => a.from == split.left.shard && a.loaded,
        (Stage::CaughtUp, Some(a)) => a.from == split.left.shard && a.caught_up,
        _ => false,
    })
}

/// Wait until `r` has reached `stage` of `split`.
async fn wait_stage(r: &Replica, split: &Split, stage: Stage) -> Result<(), Error> {
    let until = Instant::now() + CHILD_WITHIN;
    loop {
        if reached(r, split, stage).await? {
            return Ok(());
        }
        if let Some(f) = r.fatal() {
            return Err(Error::Fatal(f));
        }
        if Instant::now() > until {
            return Err(Error::Unavailable(format!(
                "shard {} has not reached {stage:?} yet",
                r.group()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The merge `split` waits for its target to accept (`AbsorbAccept`, which
/// the target's leader proposes once it sees the merge recorded here),
/// then records that (`SplitCreated`): from then on it only goes forward.
/// Once the target's descriptor moved past the version the merge was
/// planned from, it can never accept (its version only grows, and an
/// accepted merge holds it until the merge commits): the merge is
/// cancelled; likewise once the target refused this attempt. A merge is
/// never cancelled on a view of the target alone: the target may have
/// accepted since.
async fn accepted(s: &Arc<Shard>, ctx: &Ctx, split: &Split, attempt: u64) -> Result<(), Error> {
    let (me, into) = (split.left.shard, split.child.shard);
    let base = split.merge.unwrap_or_default();
    let until = Instant::now() + ACCEPT_WITHIN;
    loop {
        if !s.replica.role().leader {
            // The next leader drives it (a cancel from here would name
            // this attempt, and cancel nothing later, but need not be
            // tried).
            return Err(Error::Unavailable(format!(
                "shard {me} is no longer led here; its next leader drives the merge"
            )));
        }
        if ctx.host.directory().retired(into).is_some() {
            // Merged away and retired: it can never accept (as a version
            // moved on).
            return cancel_merge(
                s,
                into,
                attempt,
                Error::InvalidInput(format!(
                    "shard {into} was merged away and retired; nothing moved"
                )),
            )
            .await;
        }
        let target = local_replica(ctx, into)?;
        if local_absorb(&target).await?.is_some_and(|a| a.from == me) {
            return expect_done(&s.replica, &ShardCommand::SplitCreated { child: into }).await;
        }
        // Past the version only: a replica here that lags behind it
        // says nothing about what the target may have accepted.
        if local_descriptor(&target)
            .await?
            .is_some_and(|d| d.version > base)
        {
            return cancel_merge(
                s,
                into,
                attempt,
                Error::Unavailable(format!(
                    "shard {into} changed (a split) before it accepted the merge; nothing moved, \
                     try again"
                )),
            )
            .await;
        }
        // The target refused this attempt (it was merging away itself,
        // and this merge is the one to give way: see `step_absorb`). Its
        // log orders the refusal before any acceptance, and refuses to
        // accept this attempt from then on, so the cancel is safe however
        // far this view of it lags.
        if local_refused(&target, me)
            .await?
            .is_some_and(|r| r >= attempt)
        {
            let why = match local_split(&target).await?.filter(|t| t.merge.is_some()) {
                Some(theirs) if theirs.child.shard == me => format!(
                    "shard {into} is merging into shard {me}: the merge the other way goes \
                     first (nothing moved)"
                ),
                Some(theirs) => {
                    let next = theirs.child.shard;
                    format!(
                        "shard {into} is merging into shard {next}: nothing moved (merge into \
                         shard {next} once that is done)"
                    )
                }
                None => format!(
                    "shard {into} was merging away when it saw this merge: nothing moved, try \
                     again"
                ),
            };
            // Not retryable at once: the target owns nothing once its own
            // merge is done.
            return cancel_merge(s, into, attempt, Error::Conflict(why)).await;
        }
        if Instant::now() > until {
            return Err(Error::Unknown(format!(
                "shard {into} has not accepted the merge of shard {me} yet (its leader must have \
                 a replica of shard {me} beside it); the merge stays under way"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether a merge from `from` was first looked at here 2 s ago or more
/// (the `merge-lagging-target-view` fault only).
fn seen_for_2s(from: ShardId) -> bool {
    static SEEN: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<ShardId, Instant>>,
    > = std::sync::OnceLock::new();
    let Ok(mut seen) = SEEN.get_or_init(Default::default).lock() else {
        return true;
    };
    seen.entry(from).or_insert_with(Instant::now).elapsed() >= Duration::from_secs(2)
}

/// Give up `s`'s merge into `into`, not accepted yet, and answer `why`.
/// If it was accepted meanwhile (the cancel is refused at apply), it goes
/// on instead: UNAVAILABLE, and the owner's next tick drives it from its
/// record.
async fn cancel_merge(
    s: &Arc<Shard>,
    into: ShardId,
    attempt: u64,
    why: Error,
) -> Result<(), Error> {
    let me = s.replica.group();
    let cancel = ShardCommand::SplitAbandon {
        child: into,
        attempt,
    };
    match propose(&s.replica, &cancel).await? {
        ShardReply::Done => {
            tracing::warn!(shard = me, %into, reason = %why, "merge cancelled");
            if let Err(u) = unmark(s).await {
                tracing::info!(shard = me, error = %u, "marks of the cancelled merge left for the next split's trim");
            }
            Err(why)
        }
        other => Err(Error::Unavailable(format!(
            "the merge of shard {me} into shard {into} was accepted meanwhile and goes on \
             ({other:?}); ask again to learn when it is done"
        ))),
    }
}

/// How long a merge's driver waits for the target to accept, before it
/// lets the next attempt (a tick later) go on.
const ACCEPT_WITHIN: Duration = Duration::from_secs(30);

/// The last step of a split whose new shard serves: trim the moved keys
/// and the marks from the parent, then `SplitDone`. The caller of a split
/// has its answer before this (the data is already where it belongs); if
/// it fails, the owner's tick drives the split again from its record.
pub(crate) async fn finish(s: &Arc<Shard>, split: &Split) -> Result<(), Error> {
    let child = split.child.shard;
    if pact_common::faults::enabled("split-pause-before-trim") {
        // Tests move the new shard's replicas and the parent's leadership
        // here.
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    trim(s, split).await?;
    expect_done(&s.replica, &ShardCommand::SplitDone { child }).await?;
    tracing::info!(shard = s.replica.group(), %child, "split done");
    Ok(())
}

/// The shard's replicas are the ones the split recorded, and not
/// changing: checked before the new shard is created (from then on the
/// split cannot be cancelled, and changes are refused). A change that
/// began before the split would leave the new shard's recorded voters
/// without their parent replicas.
fn settled_voters(s: &Arc<Shard>, split: &Split) -> Result<(), Error> {
    if let Some(why) = s.replica.membership_unsettled() {
        return Err(Error::Unavailable(format!(
            "shard {} cannot split now: {why}; nothing moved, try again",
            split.left.shard
        )));
    }
    let voters: Vec<NodeId> = s.replica.status().voters.into_iter().map(NodeId).collect();
    if voters != split.voters {
        return Err(Error::Unavailable(format!(
            "shard {}'s replicas changed during the split ({:?}, now {voters:?}); nothing \
             moved, try again",
            split.left.shard, split.voters
        )));
    }
    Ok(())
}

/// Have every voter of the parent host an empty replica of `child`
/// (idempotent): the split's recorded voters. With `all`, every voter
/// must; else this node and a majority must.
async fn host_child(ctx: &Ctx, split: &Split, all: bool) -> Result<(), Error> {
    let child = split.child.shard;
    let voters = &split.voters;
    let group = pact_client::RaftGroup::Shard(child);
    let asks = voters
        .iter()
        .map(|v| async move { (*v, ctx.client.host_new(group, *v, voters, true).await) });
    let mut hosted = 0;
    let mut failed = Vec::new();
    for (v, r) in futures::future::join_all(asks).await {
        match r {
            Ok(()) => hosted += 1,
            Err(e) if v == ctx.me => {
                return Err(Error::Unavailable(format!(
                    "hosting shard {child} here: {e}"
                )))
            }
            Err(e) => failed.push(format!("node {v}: {e}")),
        }
    }
    if (all && !failed.is_empty()) || hosted * 2 <= voters.len() {
        return Err(Error::Unavailable(format!(
            "shard {} cannot split now: not every replica could host the new shard ({})",
            split.left.shard,
            failed.join("; ")
        )));
    }
    Ok(())
}

/// The fault-injection crash points of a split (`pact_common::faults`).
fn crash_point(name: &str) {
    if pact_common::faults::enabled(name) {
        eprintln!("{name}: aborting the process");
        std::process::abort();
    }
}

fn local_replica(ctx: &Ctx, group: ShardId) -> Result<Replica, Error> {
    ctx.host
        .replicas
        .list()
        .into_iter()
        .find(|r| r.group() == group.0)
        .ok_or_else(|| Error::Unavailable(format!("shard {group} is not hosted on this node")))
}

/// Wound the open transactions holding locks in the moving part, and wait
/// (at most [`DRAIN_WITHIN`]) until no lock and no prepare record is left
/// there; then record that (`SplitDrained`).
async fn drain(s: &Arc<Shard>, ctx: &Ctx, split: &Split) -> Result<(), Error> {
    let until = Instant::now() + DRAIN_WITHIN;
    let span = &split.child.span;
    loop {
        let holders = s
            .shared
            .release_with(|m| {
                let h = m.holders_in(span);
                let mut tell = h.unconfirmed.clone();
                for t in &h.open {
                    if let Some(reason) = m.wound_for_split(*t) {
                        tell.push((*t, reason));
                    }
                }
                (
                    tell,
                    h.open.is_empty() && h.unconfirmed.is_empty() && !h.busy,
                )
            })
            .ok_or_else(|| Error::Fatal("the transaction manager's lock is poisoned".into()))?;
        let (tell, no_locks) = holders;
        for (txn, reason) in tell {
            let within = Duration::from_secs(1);
            crate::node::wound_confirmed_by(&s.shared, &ctx.client, txn, &reason, within).await;
        }
        if no_locks && !prepared_in(&s.replica, span).await? {
            // An error here may leave `SplitDrained` applied: the caller
            // then does not cancel (Unknown and Fatal pass through).
            let drained = propose(
                &s.replica,
                &ShardCommand::SplitDrained {
                    child: split.child.shard,
                },
            )
            .await?;
            match drained {
                ShardReply::Done => return Ok(()),
                // A prepare applied since the look: wait for it too.
                ShardReply::Rejected(_) => {}
                other => {
                    return Err(Error::Unavailable(format!(
                        "split drain refused: {other:?}"
                    )))
                }
            }
        }
        if Instant::now() > until {
            return Err(Error::Unavailable(format!(
                "shard {} could not split: transactions in the part that moves did not finish \
                 within {DRAIN_WITHIN:?}; nothing moved, try again",
                s.replica.group()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether a prepare record applied here writes in `span`.
async fn prepared_in(r: &Replica, span: &pact_common::Span) -> Result<bool, Error> {
    for (_, v) in r.scan_prefix_local(&[PREPARED_PREFIX]).await? {
        let writes = prepared_writes(&v).map_err(Error::Fatal)?;
        if writes.iter().any(|(k, _)| span.contains(k)) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Delete from the parent, in bounded entries, the keys it no longer owns
/// and the marks of writes during the split.
async fn trim(s: &Arc<Shard>, split: &Split) -> Result<(), Error> {
    let (mut from, end) = moving_part(split);
    let mut keys: Vec<Vec<u8>> = Vec::new();
    loop {
        let (page, full) = next_page(&s.replica, &mut from, &end, PAGE).await?;
        keys.extend(
            page.into_iter()
                .filter_map(|(k, _)| k.get(1..).map(<[u8]>::to_vec))
                .filter(|k| !split.left.span.contains(k)),
        );
        if keys.len() >= BATCH_KEYS || (!full && !keys.is_empty()) {
            let batch = std::mem::take(&mut keys);
            expect_done(&s.replica, &ShardCommand::Trim { keys: batch }).await?;
        }
        if !full {
            break;
        }
    }
    unmark(s).await
}

/// Delete every mark of a write during a split, in bounded entries (the
/// shard refuses while a split under way still needs them).
async fn unmark(s: &Arc<Shard>) -> Result<(), Error> {
    let (mut from, end) = (vec![WRITTEN_PREFIX], vec![WRITTEN_PREFIX + 1]);
    loop {
        let (page, full) = next_page(&s.replica, &mut from, &end, BATCH_KEYS).await?;
        if !page.is_empty() {
            let keys = page.into_iter().map(|(k, _)| k).collect();
            expect_done(&s.replica, &ShardCommand::Unmark { keys }).await?;
        }
        if !full {
            return Ok(());
        }
    }
}

/// Up to `n` pairs of `r`'s applied state from `from` (then moved past
/// them) to `end`, and whether there may be more.
pub(crate) async fn next_page(
    r: &Replica,
    from: &mut Vec<u8>,
    end: &[u8],
    n: usize,
) -> Result<(Vec<(Vec<u8>, Vec<u8>)>, bool), Error> {
    let page = r.scan_local(from.clone(), Some(end.to_vec()), n).await?;
    if let Some((last, _)) = page.last() {
        *from = last.clone();
        from.push(0);
    }
    let full = page.len() == n;
    Ok((page, full))
}

/// Wait until `bytes` handled since `started` are no faster than
/// `kib_per_sec` (0: no limit).
async fn pace(started: Instant, bytes: u64, kib_per_sec: u64) {
    if kib_per_sec > 0 {
        let due = Duration::from_secs_f64(bytes as f64 / (kib_per_sec * 1024) as f64);
        tokio::time::sleep_until((started + due).into()).await;
    }
}

/// What a scan of a shard's data found (for a split by size): its bytes
/// (keys and values as stored), its keys, and a key with about half of
/// the bytes before it (None for a shard with no data).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Measured {
    pub bytes: u64,
    pub keys: u64,
    pub middle: Option<Vec<u8>>,
}

/// Keys between two marks of [`Halfway`] at first; the gap doubles
/// whenever [`MAX_MARKS`] marks are kept, so memory stays bounded.
const MARK_EVERY: u64 = 16;
const MAX_MARKS: usize = 4096;

/// Finds, in one pass over keys in order, a key with about half of the
/// bytes before it: it keeps (bytes before the key, the key) for every
/// `every`-th key, and thins those marks out as they grow.
struct Halfway {
    bytes: u64,
    keys: u64,
    every: u64,
    marks: Vec<(u64, Vec<u8>)>,
}

impl Halfway {
    fn new() -> Halfway {
        Halfway {
            bytes: 0,
            keys: 0,
            every: MARK_EVERY,
            marks: Vec::new(),
        }
    }

    fn note(&mut self, key: &[u8], bytes: u64) {
        if self.keys.is_multiple_of(self.every) {
            self.marks.push((self.bytes, key.to_vec()));
            if self.marks.len() > MAX_MARKS {
                // Keep the marks at multiples of the doubled gap.
                let mut i = 0;
                self.marks.retain(|_| {
                    i += 1;
                    i % 2 == 1
                });
                self.every *= 2;
            }
        }
        self.bytes += bytes;
        self.keys += 1;
    }

    fn measured(self) -> Measured {
        let half = self.bytes / 2;
        let middle = self
            .marks
            .iter()
            .find(|(before, _)| *before >= half)
            .or(self.marks.last())
            .map(|(_, k)| k.clone());
        Measured {
            bytes: self.bytes,
            keys: self.keys,
            middle,
        }
    }
}

/// Scan every data key of `r`'s applied state, no faster than
/// `kib_per_sec` (0: no limit), so that the serving shard keeps the disk
/// and CPU: what [`Measured`] says.
pub(crate) async fn measure(r: &Replica, kib_per_sec: u64) -> Result<Measured, Error> {
    let (mut from, end) = (vec![DATA_PREFIX], vec![DATA_PREFIX + 1]);
    let started = Instant::now();
    let mut h = Halfway::new();
    loop {
        let (page, full) = next_page(r, &mut from, &end, PAGE).await?;
        for (k, v) in &page {
            let user = k.get(1..).unwrap_or_default();
            h.note(user, (user.len() + v.len()) as u64);
        }
        if !full {
            break;
        }
        pace(started, h.bytes, kib_per_sec).await;
    }
    Ok(h.measured())
}

/// The stored keys to look through for the part a split moves: a range
/// shard's moving range, a ring shard's every key.
fn moving_part(split: &Split) -> (Vec<u8>, Vec<u8>) {
    match &split.child.span {
        pact_common::Span::Range { start, end } => (
            data_key(start),
            end.as_deref().map_or(vec![DATA_PREFIX + 1], data_key),
        ),
        pact_common::Span::Ring { .. } => (vec![DATA_PREFIX], vec![DATA_PREFIX + 1]),
    }
}

/// The child's leader (this replica, `s`, of a shard a split created,
/// leading `term`): copy the parent's part once the split is drained, and
/// record the descriptor once it is committed. Returns once the shard has
/// a descriptor, or false if this replica stopped leading `term`.
pub(crate) async fn fill_child(s: &Arc<Shard>, ctx: &Ctx, term: u64) -> bool {
    while_leading(s, ctx, term, Taking::Split).await
}

/// What a shard's leader takes part in, the other group driving it.
#[derive(Clone, Copy)]
enum Taking {
    /// A split that creates the shard.
    Split,
    /// A merge into the shard.
    Merge,
}

/// Take one step of what the shard takes part in again every 50 ms
/// while this replica leads `term`: true once the step says `Some(true)`
/// (done), false once the replica stops leading. `None` means no replica
/// of the other shard here shows what is needed: this node cannot copy,
/// nor see the commit, so after [`ORPHAN_FOR`] the leadership goes to
/// another voter, which may.
async fn while_leading(s: &Arc<Shard>, ctx: &Ctx, term: u64, taking: Taking) -> bool {
    let me = ShardId(s.replica.group());
    let mut copied = Copied::default();
    let mut orphan_since: Option<Instant> = None;
    loop {
        let r = s.replica.role();
        if !r.leader || r.term != term || s.replica.fatal().is_some() {
            return false;
        }
        let step = match taking {
            Taking::Split => step_child(s, ctx, me, &mut copied).await,
            Taking::Merge => step_absorb(s, ctx, me, &mut copied).await,
        };
        match step {
            Ok(Some(true)) => return true,
            Ok(Some(false)) => orphan_since = None,
            Ok(None) => {
                let since = *orphan_since.get_or_insert_with(Instant::now);
                if since.elapsed() > ORPHAN_FOR {
                    hand_over(s, ctx, me).await;
                    orphan_since = None;
                }
            }
            Err(e) => {
                tracing::info!(shard = %me, error = %e, "not done yet with the split or merge it takes part in");
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The leader of a shard that a merge names as the one that stays (`s`,
/// leading `term`): accept the merge, load the merged shard's keys from
/// this node's replica of it (once while it serves them, then what was
/// written since, once it is frozen and drained), and take them over once
/// it committed. Returns when no merge into `s` is under way, or false if
/// this replica stopped leading `term`.
pub(crate) async fn absorb(s: &Arc<Shard>, ctx: &Ctx, term: u64) -> bool {
    while_leading(s, ctx, term, Taking::Merge).await
}

/// The merges into `me` that this node's replicas of other shards (of
/// `from` only, if given) record, in the order of the replicas (lowest id
/// first), each with its replica and an attempt number no later than the
/// merge's (read before the record: the replica may apply a cancel and a
/// new begin between).
async fn merges_into(ctx: &Ctx, me: ShardId, from: Option<ShardId>) -> Vec<(Replica, Split, u64)> {
    let mut found = Vec::new();
    for r in ctx.host.replicas.list() {
        if r.group() == me.0 || from.is_some_and(|f| f.0 != r.group()) {
            continue;
        }
        let Ok(attempt) = local_attempt(&r).await else {
            continue;
        };
        if let Ok(Some(split)) = local_split(&r).await {
            if split.merge.is_some() && split.child.shard == me {
                found.push((r, split, attempt));
            }
        }
    }
    found
}

/// The first of [`merges_into`].
pub(crate) async fn merge_into(
    ctx: &Ctx,
    me: ShardId,
    from: Option<ShardId>,
) -> Option<(Replica, Split, u64)> {
    merges_into(ctx, me, from).await.into_iter().next()
}

/// A leader of a shard that is merging away itself (`s`, its merge not
/// accepted yet) refuses, in its own log, every merge into it from a
/// larger id that this node's replicas show: that merge gives way.
/// Merges recorded within a replica's lag can form a cycle (A into B and
/// B into A; with hash shards, any ring): each target refuses to accept
/// while its own record stands, and no target's version moves, so all
/// would wait for ever. Every cycle has a merge into a smaller id whose
/// target merges away, and the merges left all go from smaller ids to
/// larger ones, so none is left waiting in a cycle. One that gives way
/// without a cycle loses nothing: its target will own nothing once its
/// own merge is done. The refusal is in the target's log, where no
/// acceptance of that attempt can follow it, and the merging shard
/// cancels only on seeing it (`accepted`). Run every 2 s by the leader's
/// owner task, whoever holds the shard's split lock (its own merge's
/// driver does, while it waits).
pub(crate) async fn refuse_merges_into(s: &Arc<Shard>, ctx: &Ctx) {
    let me = ShardId(s.replica.group());
    let Ok(Some(own)) = local_split(&s.replica).await else {
        return;
    };
    if own.merge.is_none() || own.created {
        // A split, or a merge accepted: it moves on, and with it this
        // shard's version (the merge into it is cancelled then).
        return;
    }
    for (_, theirs, attempt) in merges_into(ctx, me, None).await {
        let from = theirs.left.shard;
        if from <= me || theirs.created {
            continue;
        }
        if pact_common::faults::enabled("merge-lagging-target-view") && !seen_for_2s(from) {
            continue;
        }
        if local_refused(&s.replica, from)
            .await
            .is_ok_and(|h| h.is_some_and(|h| h >= attempt))
        {
            continue;
        }
        // Not awaited here: the owner's tick goes on meanwhile (a
        // refusal proposed twice applies once).
        let s = s.clone();
        tokio::spawn(async move {
            let refuse = ShardCommand::AbsorbRefuse { from, attempt };
            match propose(&s.replica, &refuse).await {
                Ok(reply) => {
                    tracing::info!(shard = %me, %from, attempt, ?reply, "merge into this shard refused: it merges away itself")
                }
                Err(e) => {
                    tracing::info!(shard = %me, %from, error = %e, "could not refuse a merge into this shard yet")
                }
            }
        });
    }
}

/// Whether a merge into `me` needs this leader: it is recorded by a
/// replica here of the shard that merges, or accepted by `me`.
pub(crate) async fn merge_pending(s: &Arc<Shard>, ctx: &Ctx) -> bool {
    let me = ShardId(s.replica.group());
    match local_absorb(&s.replica).await {
        Ok(Some(_)) => true,
        Ok(None) => merge_into(ctx, me, None)
            .await
            .is_some_and(|(_, x, _)| !x.created),
        Err(_) => false,
    }
}

/// One look at the merge into `me`: `Some(true)` once none needs this
/// leader now (none under way, absorbed, or not acceptable yet),
/// `Some(false)` while it goes on, `None` if `me` accepted one from a
/// shard with no replica here (another voter can copy it).
async fn step_absorb(
    s: &Arc<Shard>,
    ctx: &Ctx,
    me: ShardId,
    copied: &mut Copied,
) -> Result<Option<bool>, Error> {
    let mine = local_absorb(&s.replica).await?;
    // The merge accepted, if any: another one recorded meanwhile waits
    // until this one is over (and is then cancelled: the version moved).
    let found = merge_into(ctx, me, mine.as_ref().map(|a| a.from)).await;
    let (source, split, attempt) = match (mine.as_ref(), found) {
        (None, None) => return Ok(Some(true)),
        // This node's replica of the merging shard does not show the
        // merge yet (it lags): wait for it.
        (Some(a), None) if local_replica(ctx, a.from).is_ok() => return Ok(Some(false)),
        (Some(_), None) => return Ok(None),
        (_, Some(found)) => found,
    };
    let from = split.left.shard;
    let Some(a) = mine else {
        if split.created || split.committed {
            // Accepted and absorbed already: the record there is the
            // merged shard's trim.
            return Ok(Some(true));
        }
        if pact_common::faults::enabled("merge-lagging-target-view") && !seen_for_2s(from) {
            // As if this node's replica of the merging shard lagged: the
            // merge is not seen yet (and this shard may begin a merge or
            // split of its own meanwhile).
            return Ok(Some(true));
        }
        let own = local_split(&s.replica).await?;
        // Not acceptable now (splitting, or at another version): nothing
        // proposed; the merging shard cancels once the version moves on.
        let base = split.merge.unwrap_or_default();
        let d = local_descriptor(&s.replica).await?;
        if own.is_some() || d.is_none_or(|d| d.version != base) {
            return Ok(Some(true));
        }
        let begin = ShardCommand::AbsorbAccept {
            from,
            base,
            into: split.child.clone(),
            attempt,
        };
        match propose(&s.replica, &begin).await? {
            ShardReply::Done => {
                tracing::info!(shard = %me, %from, "merge accepted: loading the merged shard's keys")
            }
            // The merging shard's driver cancels once it sees why.
            other => {
                tracing::info!(shard = %me, %from, reply = ?other, "merge refused");
                return Ok(Some(true));
            }
        }
        return Ok(Some(false));
    };
    if split.committed {
        recopy_stamps(&source, s, false).await?;
        expect_done(&s.replica, &ShardCommand::AbsorbCommit { from }).await?;
        tracing::info!(shard = %me, %from, version = split.child.version, "merge absorbed: the shard serves both spans");
        return Ok(Some(true));
    }
    if !copied.first && !a.loaded {
        copy(&source, s, &split, ctx.config.raft.split_copy_kib_per_sec).await?;
        copied.first = true;
    } else if split.drained && !copied.written && !a.caught_up {
        copy_written(&source, s, &split).await?;
        copied.written = true;
    }
    Ok(Some(false))
}

/// Copy into `s` once more the record horizons and fence floors `source`
/// (the shard whose part `s` takes, committed) has now: one raised since
/// the first copy must hold here too (they only grow). `done` as in
/// `Load`.
async fn recopy_stamps(source: &Replica, s: &Arc<Shard>, done: bool) -> Result<(), Error> {
    let mut pairs = Vec::new();
    for prefix in [HORIZON_PREFIX, FLOOR_PREFIX] {
        pairs.extend(source.scan_prefix_local(&[prefix]).await?);
    }
    expect_done(&s.replica, &ShardCommand::Load { pairs, done }).await
}

/// How long a new shard's leader waits for its node's parent replica to
/// show the split before it hands the leadership to another voter.
const ORPHAN_FOR: Duration = Duration::from_secs(3);

/// The leader of a shard whose split or merge (`split`, not committed)
/// cannot go on here because this node has no replica of the shard that
/// takes the part (a voter that was down when the new shard was hosted
/// never gets one: after `SplitCreated` none is created afresh): hand the
/// leadership to another voter, which may have one. Otherwise the split
/// would stay where it is, its part possibly frozen, for as long as this
/// node leads.
pub(crate) async fn hand_over_if_orphan(s: &Arc<Shard>, ctx: &Ctx, split: &Split) {
    if split.committed || local_replica(ctx, split.child.shard).is_ok() {
        return;
    }
    if split.merge.is_none() && !split.created {
        // Not hosted yet: the driver hosts it (or cancels).
        return;
    }
    hand_over(s, ctx, ShardId(s.replica.group())).await;
}

/// Hand `me`'s leadership to another of its voters (one whose node has
/// the replica the leader here lacks, it is hoped: the next leader looks
/// for itself).
async fn hand_over(s: &Arc<Shard>, ctx: &Ctx, me: ShardId) {
    let others: Vec<u64> = s
        .replica
        .status()
        .voters
        .into_iter()
        .filter(|v| *v != ctx.me.0)
        .collect();
    let Some(&to) = others.get(rand_index(others.len())) else {
        return;
    };
    tracing::warn!(shard = %me, to, "the split or merge needs a replica this node lacks: handing the shard's leadership on");
    if let Err(e) =
        pact_raft::balance::transfer(&ctx.host.router, me.0, to, Duration::from_secs(3)).await
    {
        tracing::info!(shard = %me, to, error = %e, "leadership not handed on");
    }
}

/// An index below `n` (n > 0), varied between calls, so successive hand
/// overs do not always pick the same voter.
fn rand_index(n: usize) -> usize {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as usize)
        .unwrap_or(0);
    nanos % n.max(1)
}

/// Which copies this leader of a new shard has made.
#[derive(Default)]
struct Copied {
    /// The part as the parent served it.
    first: bool,
    /// What was written there since the split began, once frozen.
    written: bool,
}

/// One look at the split that creates `me`: `Some(true)` once `me`
/// serves, `Some(false)` while it waits for the parent, `None` if no
/// replica of the parent here knows the split.
async fn step_child(
    s: &Arc<Shard>,
    ctx: &Ctx,
    me: ShardId,
    copied: &mut Copied,
) -> Result<Option<bool>, Error> {
    if local_descriptor(&s.replica).await?.is_some() {
        return Ok(Some(true));
    }
    let mut found = None;
    for r in ctx.host.replicas.list() {
        if r.group() == me.0 {
            continue;
        }
        if let Ok(Some(split)) = local_split(&r).await {
            if split.child.shard == me {
                found = Some((r, split));
                break;
            }
        }
    }
    let Some((parent, split)) = found else {
        return Ok(None);
    };
    if split.committed {
        recopy_stamps(&parent, s, true).await?;
        expect_done(
            &s.replica,
            &ShardCommand::Describe {
                descriptor: split.child.clone(),
            },
        )
        .await?;
        tracing::info!(shard = %me, parent = parent.group(), version = split.child.version, "new shard serves");
        return Ok(Some(true));
    }
    // The first copy as soon as the parent replica here tracks the
    // part's writes (it applied `SplitBegin`: its record is here); the
    // second once it applied `SplitDrained`, so nothing more is written
    // in the part. A new leader skips a copy its shard has complete.
    if !copied.first && s.replica.get_local(LOADED_KEY).await?.is_none() {
        copy(&parent, s, &split, ctx.config.raft.split_copy_kib_per_sec).await?;
        copied.first = true;
    } else if split.drained
        && !copied.written
        && s.replica.get_local(CAUGHT_UP_KEY).await?.is_none()
    {
        copy_written(&parent, s, &split).await?;
        copied.written = true;
    }
    Ok(Some(false))
}

/// The entries of one copy into a new shard: pairs cut into entries of
/// at most [`BATCH_KEYS`] keys or [`BATCH_BYTES`] bytes, proposed one at a
/// time, no faster than `kib_per_sec` (0: no limit), the last one marked
/// done.
struct Entries<'a, T> {
    s: &'a Arc<Shard>,
    command: fn(Vec<T>, bool) -> ShardCommand,
    kib_per_sec: u64,
    started: Instant,
    batch: Vec<T>,
    bytes: usize,
    sent: u64,
    total: usize,
}

impl<'a, T> Entries<'a, T> {
    fn new(s: &'a Arc<Shard>, command: fn(Vec<T>, bool) -> ShardCommand, kib_per_sec: u64) -> Self {
        Entries {
            s,
            command,
            kib_per_sec,
            started: Instant::now(),
            batch: Vec::new(),
            bytes: 0,
            sent: 0,
            total: 0,
        }
    }

    async fn push(&mut self, item: T, bytes: usize) -> Result<(), Error> {
        self.bytes += bytes;
        self.batch.push(item);
        if self.batch.len() < BATCH_KEYS && self.bytes < BATCH_BYTES {
            return Ok(());
        }
        self.total += self.batch.len();
        self.sent += self.bytes as u64;
        self.bytes = 0;
        let batch = std::mem::take(&mut self.batch);
        expect_done(&self.s.replica, &(self.command)(batch, false)).await?;
        // The parent serves meanwhile: leave it the disk and CPU.
        pace(self.started, self.sent, self.kib_per_sec).await;
        Ok(())
    }

    /// The last entry, marked done; logs `what` with the count.
    async fn done(mut self, parent: &Replica, what: &str) -> Result<(), Error> {
        self.total += self.batch.len();
        let batch = std::mem::take(&mut self.batch);
        expect_done(&self.s.replica, &(self.command)(batch, true)).await?;
        tracing::info!(
            shard = self.s.replica.group(),
            parent = parent.group(),
            keys = self.total,
            elapsed_ms = self.started.elapsed().as_millis() as u64,
            "{what}"
        );
        Ok(())
    }
}

/// Copy into the child `s` each key of the moving part that the parent
/// wrote since the split began, as `parent` (drained) has it now: its
/// value, or its absence.
async fn copy_written(parent: &Replica, s: &Arc<Shard>, split: &Split) -> Result<(), Error> {
    let mut out = Entries::new(
        s,
        |pairs, done| ShardCommand::LoadWritten { pairs, done },
        0,
    );
    let (mut from, end) = (vec![WRITTEN_PREFIX], vec![WRITTEN_PREFIX + 1]);
    loop {
        let (page, full) = next_page(parent, &mut from, &end, PAGE).await?;
        for (k, _) in page {
            let Some(key) = k.get(1..).filter(|u| split.child.span.contains(u)) else {
                continue;
            };
            let key = data_key(key);
            let value = parent.get_local(&key).await?;
            let bytes = key.len() + value.as_ref().map_or(0, Vec::len);
            out.push((key, value), bytes).await?;
        }
        if !full {
            break;
        }
    }
    out.done(parent, "new shard copied the keys written during the split")
        .await
}

/// Copy the moving part of `parent`'s applied state (data, horizons,
/// floors) into the child `s` through its log.
async fn copy(
    parent: &Replica,
    s: &Arc<Shard>,
    split: &Split,
    kib_per_sec: u64,
) -> Result<(), Error> {
    let mut out = Entries::new(
        s,
        |pairs, done| ShardCommand::Load { pairs, done },
        kib_per_sec,
    );
    // Horizons and floors, whole: they are few.
    for prefix in [HORIZON_PREFIX, FLOOR_PREFIX] {
        for (k, v) in parent.scan_prefix_local(&[prefix]).await? {
            let bytes = k.len() + v.len();
            out.push((k, v), bytes).await?;
        }
    }
    let (mut from, end) = moving_part(split);
    loop {
        let (page, full) = next_page(parent, &mut from, &end, PAGE).await?;
        for (k, v) in page {
            if !k.get(1..).is_some_and(|u| split.child.span.contains(u)) {
                continue;
            }
            let bytes = k.len() + v.len();
            out.push((k, v), bytes).await?;
        }
        if !full {
            break;
        }
    }
    out.done(parent, "new shard copied its part").await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> Vec<u8> {
        format!("k{i:08}").into_bytes()
    }

    #[test]
    fn the_halfway_key_halves_the_bytes_and_memory_stays_bounded() {
        // Nothing measured: no middle.
        assert_eq!(
            Halfway::new().measured(),
            Measured {
                bytes: 0,
                keys: 0,
                middle: None
            }
        );
        // Even keys: the middle is near the middle key, within a mark's gap.
        let mut h = Halfway::new();
        for i in 0..1000 {
            h.note(&key(i), 100);
        }
        let m = h.measured();
        assert_eq!((m.bytes, m.keys), (100_000, 1000));
        let mid = m.middle.unwrap();
        assert!(mid >= key(500) && mid <= key(500 + MARK_EVERY), "{mid:?}");
        // The first half light, the second heavy: the middle moves up.
        let mut h = Halfway::new();
        for i in 0..1000 {
            h.note(&key(i), if i < 900 { 10 } else { 1000 });
        }
        let mid = h.measured().middle.unwrap();
        assert!(mid >= key(900) && mid < key(1000), "{mid:?}");
        // Many keys: the marks are thinned, never more than the cap, and
        // the middle stays within one (doubled) gap.
        let mut h = Halfway::new();
        let n = 200_000;
        for i in 0..n {
            h.note(&key(i), 50);
            assert!(h.marks.len() <= MAX_MARKS + 1);
        }
        let every = h.every;
        assert!(every > MARK_EVERY);
        let mid = h.measured().middle.unwrap();
        assert!(
            mid >= key(n / 2) && mid <= key(n / 2 + every),
            "{mid:?} (gap {every})"
        );
    }
}
