//! openraft's state machine for one group: it hands each committed command
//! to the application's [`Apply`] and stores the result in fjall.
//!
//! Each entry's writes and the new applied log id are one atomic fjall
//! batch, so the stored state is always exactly "entries 1..=applied". The
//! state machine is not fsynced per entry (the log is); a snapshot fsyncs
//! before openraft may purge the log behind it, so nothing committed is ever
//! only in volatile memory and missing from the log. Snapshots are views of
//! that stored state, read lazily, and are installed in bounded jobs (see
//! `snapshot`).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use openraft::storage::{ApplyResponder, EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};

use crate::codec::{decode, encode};
use crate::snapshot::Outbound;
use crate::store::{
    blocking, group_end, group_key, Compute, NodeStore, Op, SmImage, Space, Then, SM_APPLIED,
    SM_MEMBERSHIP,
};
use crate::types::{
    LogId, Reply, Snapshot, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig,
};

/// Most committed entries handed to the writer at once.
const APPLY_BATCH: usize = 64;

/// Key changes of one applied command: `Some(v)` puts, `None` deletes.
pub type Writes = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// Point reads of a group's applied state, as an application's pure
/// `effect` function sees it (a [`StateView`] in production, a map in tests).
pub type Lookup<'a> = &'a dyn Fn(&[u8]) -> io::Result<Option<Vec<u8>>>;

/// The result of applying one command.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Key changes: `Some(v)` puts, `None` deletes. Keys are the
    /// application's own; the group prefix is added here.
    pub writes: Writes,
    /// Encoded reply handed back to the proposer.
    pub reply: Vec<u8>,
}

/// Read access to a group's applied state, for the application.
pub struct StateView<'a> {
    store: &'a NodeStore,
    group: u64,
}

impl StateView<'_> {
    pub fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        self.store.get_sync(Space::Sm, &group_key(self.group, key))
    }

    /// Pairs with keys in `[start, end)` (`end` None: to the end), at most `limit`.
    pub fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        scan_sm(self.store, self.group, start, end, limit)
    }
}

pub(crate) fn scan_sm(
    store: &NodeStore,
    group: u64,
    start: &[u8],
    end: Option<&[u8]>,
    limit: usize,
) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let from = group_key(group, start);
    let to = match end {
        Some(e) => group_key(group, e),
        None => group_end(group),
    };
    if from >= to {
        return Ok(Vec::new());
    }
    let raw = store.range_sync(Space::Sm, &from, &to, limit, false)?;
    Ok(raw.into_iter().map(|(k, v)| (k[8..].to_vec(), v)).collect())
}

/// The application logic of a replicated group. It must be deterministic:
/// every replica applies the same commands in the same order and must reach
/// the same state. An `Err` means the replica cannot go on (corrupt command,
/// storage failure); the group stops on this node.
pub trait Apply: Send + Sync + 'static {
    /// Apply the command at log position (`index`, `term`): `term` is the
    /// term of the leader that proposed it, which lets the application
    /// reject, deterministically on every replica, a command whose
    /// preconditions were checked under an older leader.
    fn apply(
        &self,
        state: &StateView<'_>,
        index: u64,
        term: u64,
        command: &[u8],
    ) -> Result<Applied, String>;

    /// Called once the effects of an applied command are visible to
    /// readers of the state (and before its proposer hears the reply).
    /// Anything that lets others observe the command's outcome, such as
    /// releasing locks, belongs here, not in `apply`: a reader let in
    /// earlier could miss the writes.
    ///
    /// It runs on the node's storage writer thread, as `apply` does, so
    /// every group of the node waits while it runs: it must be quick, and
    /// must never wait for storage, nor take a lock whose holder might.
    /// A panic in it stops every group of the node (the store is
    /// poisoned).
    fn visible(&self, _command: &[u8], _reply: &[u8]) {}

    /// Called after the whole state was replaced by a snapshot, so the
    /// application can drop caches derived from the old state.
    fn state_replaced(&self) {}
}

#[derive(Clone)]
pub struct StateMachine {
    group: u64,
    store: Arc<NodeStore>,
    app: Arc<dyn Apply>,
    /// Snapshots this replica is streaming to followers: policy builds
    /// wait for them (see `snapshot`, "Holding the log for a transfer").
    outbound: Arc<Outbound>,
}

impl StateMachine {
    pub(crate) fn new(
        group: u64,
        store: Arc<NodeStore>,
        app: Arc<dyn Apply>,
        outbound: Arc<Outbound>,
    ) -> Self {
        StateMachine {
            group,
            store,
            app,
            outbound,
        }
    }

    async fn meta_value<T: serde::de::DeserializeOwned>(
        &self,
        tag: &[u8],
    ) -> io::Result<Option<T>> {
        match self
            .store
            .get(Space::SmMeta, group_key(self.group, tag))
            .await?
        {
            Some(b) => Ok(Some(decode(
                &b,
                format_args!(
                    "state machine meta `{}` of group {}",
                    String::from_utf8_lossy(tag),
                    self.group
                ),
            )?)),
            None => Ok(None),
        }
    }

    /// Count one event of this group in a counter of the process metrics.
    fn count(
        &self,
        which: impl FnOnce(&crate::metrics::ProcessMetrics) -> &prometheus::IntCounterVec,
    ) {
        if let Some(m) = crate::metrics::process() {
            which(m)
                .with_label_values(&[&crate::metrics::group_label(self.group)])
                .inc();
        }
    }

    /// A consistent image of the state, made durable before it is returned,
    /// so openraft may purge the log up to its last log id.
    async fn durable_snapshot(&self) -> io::Result<Snapshot> {
        let store = self.store.clone();
        let group = self.group;
        let image: SmImage = blocking(move || store.sm_snapshot_sync(group)).await?;
        // The image was taken before this fsync, so all of it is on disk after it.
        self.store.sync().await?;
        let last_log_id: Option<LogId> = match &image.applied {
            Some(b) => decode(b, format_args!("applied log id of group {}", self.group))?,
            None => None,
        };
        let last_membership: StoredMembership = match &image.membership {
            Some(b) => decode(b, format_args!("membership of group {}", self.group))?,
            None => StoredMembership::default(),
        };
        Ok(Snapshot {
            meta: SnapshotMeta {
                last_log_id,
                last_membership,
            },
            snapshot: SnapshotData::View(image.view),
        })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let s = self.durable_snapshot().await?;
        self.count(|m| &m.snapshots_built);
        Ok(s)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let applied: Option<LogId> = self
            .meta_value::<Option<LogId>>(SM_APPLIED)
            .await?
            .flatten();
        let membership: StoredMembership =
            self.meta_value(SM_MEMBERSHIP).await?.unwrap_or_default();
        Ok((applied, membership))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures::Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>>
            + Unpin
            + OptionalSend,
    {
        while let Some(item) = entries.next().await {
            let mut batch = vec![item?];
            // Entries committed meanwhile are ready at once: queue them all
            // on the writer now, and wait for them in order afterwards.
            while batch.len() < APPLY_BATCH {
                match entries.next().now_or_never() {
                    Some(Some(item)) => batch.push(item?),
                    _ => break,
                }
            }
            // Set by the first entry whose apply fails: every entry queued
            // after it refuses, so the stored state never skips an entry.
            let failed = Arc::new(AtomicBool::new(false));
            let mut pending = Vec::with_capacity(batch.len());
            for (entry, responder) in batch {
                let log_id = entry.log_id;
                let mut ops = vec![Op::Put(
                    Space::SmMeta,
                    group_key(self.group, SM_APPLIED),
                    encode(&Some(log_id))?,
                )];
                // Each entry's computation leaves, as its `Then`, letting
                // others observe its outcome and answering its proposer:
                // on the writer thread right after the entry's writes are
                // visible, without a hand-off back to this task first.
                let compute: Compute = match entry.payload {
                    EntryPayload::Normal(cmd) => {
                        let (store, app, group) =
                            (self.store.clone(), self.app.clone(), self.group);
                        let failed = failed.clone();
                        let (index, term) = (log_id.index, log_id.leader_id.term);
                        Box::new(move || {
                            refuse_after(&failed)?;
                            let view = StateView {
                                store: &store,
                                group,
                            };
                            let applied = match app.apply(&view, index, term, &cmd.0) {
                                Ok(a) => a,
                                Err(e) => {
                                    failed.store(true, Ordering::SeqCst);
                                    return Err(io::Error::other(e));
                                }
                            };
                            let ops = applied
                                .writes
                                .into_iter()
                                .map(|(k, v)| {
                                    let key = group_key(group, &k);
                                    match v {
                                        Some(v) => Op::Put(Space::Sm, key, v),
                                        None => Op::Delete(Space::Sm, key),
                                    }
                                })
                                .collect();
                            let reply = applied.reply;
                            let then: Then = Box::new(move || {
                                app.visible(&cmd.0, &reply);
                                if let Some(r) = responder {
                                    r.send(Reply(reply));
                                }
                            });
                            Ok((ops, Some(then)))
                        })
                    }
                    // These write only the applied index (and the
                    // membership), but they too refuse behind a failed
                    // entry: an applied index past an entry that never
                    // applied would skip it for good after a restart.
                    EntryPayload::Blank => answer_only(failed.clone(), responder),
                    EntryPayload::Membership(m) => {
                        let sm = StoredMembership::new(Some(log_id), m);
                        ops.push(Op::Put(
                            Space::SmMeta,
                            group_key(self.group, SM_MEMBERSHIP),
                            encode(&sm)?,
                        ));
                        answer_only(failed.clone(), responder)
                    }
                };
                pending.push(self.store.submit_computed(ops, compute).await);
            }
            // openraft takes the entries as applied when this returns, so
            // it waits for all of them; a failure stops the replica.
            for done in pending {
                done.await
                    .map_err(|_| io::Error::other("storage writer stopped"))??;
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    /// A build due by policy (`force` false) waits while a transfer runs,
    /// and openraft asks again `snapshot_logs` entries later; a forced one
    /// never waits. Sending a snapshot does not come through here: it
    /// takes a fresh view of the state (`get_current_snapshot`).
    async fn try_create_snapshot_builder(&mut self, force: bool) -> Option<Self::SnapshotBuilder> {
        if !force && self.outbound.defer() {
            tracing::debug!(
                group = self.group,
                "snapshot due but a transfer to a follower is under way: keeping the log it needs"
            );
            self.count(|m| &m.snapshots_deferred);
            return None;
        }
        Some(self.clone())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        crate::snapshot::install(&self.store, self.group, meta, snapshot).await?;
        self.app.state_replaced();
        self.count(|m| &m.snapshots_installed);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let (applied, _) = self.applied_state().await?;
        if applied.is_none() {
            return Ok(None);
        }
        Ok(Some(self.durable_snapshot().await?))
    }
}

/// An entry's apply refuses once an earlier entry of its batch failed,
/// so the stored state (and applied index) never moves past a failure.
fn refuse_after(failed: &AtomicBool) -> io::Result<()> {
    if failed.load(Ordering::SeqCst) {
        return Err(io::Error::other("an earlier entry failed to apply"));
    }
    Ok(())
}

/// The computation of an entry that writes nothing of the application's
/// (blank, membership): it refuses behind a failed entry, and otherwise
/// answers its proposer, if any, with an empty reply once visible.
fn answer_only(failed: Arc<AtomicBool>, responder: Option<ApplyResponder<TypeConfig>>) -> Compute {
    Box::new(move || {
        refuse_after(&failed)?;
        let then = responder.map(|r| Box::new(move || r.send(Reply::default())) as Then);
        Ok((Vec::new(), then))
    })
}
