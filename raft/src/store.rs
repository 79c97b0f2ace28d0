//! One fjall database per node, shared by every Raft group the node hosts.
//!
//! Layout (every key starts with the 8-byte big-endian group id, so one
//! group's data is one contiguous range in each keyspace):
//!
//! | keyspace | key                       | value                              |
//! |----------|---------------------------|------------------------------------|
//! | `log`    | group ++ index (BE u64)   | codec(Entry)                       |
//! | `meta`   | group ++ tag              | codec(vote / committed / purged / rejoin floor) |
//! | `meta`   | [`FORMAT_KEY`]            | format version, ASCII decimal      |
//! | `meta`   | `journal_mark::ROUND_KEY` | last fsync round, BE u64           |
//! | `sm`     | group ++ application key  | application value                  |
//! | `smmeta` | group ++ tag              | codec(applied log id / membership / install marker) |
//!
//! Besides the database, `snapshots/` under the data directory holds
//! snapshot files while they are received or installed (see `snapshot`).
//!
//! `codec(x)` is [`crate::codec`]'s encoding: a version byte, then postcard.
//! The format record says which format the whole database is in; it is
//! written when the database is created and checked on every open (see
//! [`check_format`]), so a node refuses to start on a directory it cannot
//! read rather than failing, or misreading, later.
//!
//! All writes that must be durable before they are acknowledged go through a
//! single writer thread ([`Writer`]). It drains every queued job, commits each
//! as its own atomic fjall batch, then fsyncs the journal once for the whole
//! round: group commit across every group on the node. A failed commit or
//! fsync poisons the store ([`Poison`]), and every later job fails, so a
//! replica never acknowledges anything after a storage error; the poison
//! keeps the first error's text, which the replicas report as the reason
//! they stopped. A read that fails (an I/O error, or a block whose
//! checksum does not match) poisons it too: data fjall cannot vouch for is
//! never served, and the node stops rather than guess.
//!
//! At open, fjall replays its journal. A complete batch whose checksum
//! fails is corruption of fsynced data, and the open is refused with what
//! to do ([`open_error`]). Anything it cannot decode it cuts off, and
//! [`crate::journal_mark`] tells a torn tail (past the last fsync:
//! accepted) from lost fsynced data (refused, and the directory stays
//! refused: [`REFUSED_FILE`]).
//!
//! The writer's queue is bounded ([`StorageTuning::writer_queue`] jobs): a
//! submitter first takes a slot of a semaphore, waiting asynchronously
//! while the queue is full, and the writer frees the slot once the job is
//! written. Every submitter is Raft (appends, applies, votes), whose
//! writes must not be dropped, so a full queue is backpressure on Raft,
//! never an error; admission control in front of Raft (see the
//! participant and coordinator) is what refuses clients.

use std::collections::VecDeque;
use std::io;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread;
use std::time::Duration;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable};
use openraft::storage::IOFlushed;
use pact_common::StorageTuning;

use crate::codec::FORMAT_VERSION;
use crate::journal_mark;
use crate::tail::Tail;
use crate::types::TypeConfig;

pub(crate) const META_VOTE: &[u8] = b"vote";
pub(crate) const META_COMMITTED: &[u8] = b"committed";
pub(crate) const META_PURGED: &[u8] = b"purged";
/// Present while the group rejoins after a lost disk: the leader-id floor
/// (see `rejoin`), so a restart mid-rejoin keeps the same restrictions.
pub(crate) const META_REJOIN: &[u8] = b"rejoin";
/// How this node came to host the group, when not by its config: an
/// operator added the replica (`Joined`), or removed it (`Dropped`; see
/// `replica::Hosting`). Kept when the group's data is wiped.
pub(crate) const META_HOSTING: &[u8] = b"hosting";
pub(crate) const SM_APPLIED: &[u8] = b"applied";
pub(crate) const SM_MEMBERSHIP: &[u8] = b"membership";
/// Present while a received snapshot is being installed (see `snapshot`):
/// the group's state machine is then neither the old state nor the new
/// one, and is rolled forward from the snapshot file before use.
pub(crate) const SM_INSTALLING: &[u8] = b"installing";
/// The database's format record, in `meta`. It starts with eight 0xff
/// bytes, the prefix of no group (ids stop at [`MAX_GROUP_ID`]), so it lies
/// past every group's range and no group's range delete can reach it.
pub(crate) const FORMAT_KEY: &[u8] = b"\xff\xff\xff\xff\xff\xff\xff\xffformat";

/// Which keyspace a write goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Space {
    Log,
    Meta,
    Sm,
    SmMeta,
}

/// One key-level change inside an atomic batch.
#[derive(Debug)]
pub(crate) enum Op {
    Put(Space, Vec<u8>, Vec<u8>),
    Delete(Space, Vec<u8>),
    /// Delete every key of a space in `[from, to)`.
    DeleteRange(Space, Vec<u8>, Vec<u8>),
}

/// What to tell the submitter, and when.
pub(crate) enum Notify {
    /// Reply once the batch is durable.
    Durable(tokio::sync::oneshot::Sender<io::Result<()>>),
    /// Reply once the batch is visible to readers; call `flushed` once durable.
    /// This is openraft's async-flush append: the log entry may be read and
    /// replicated before it is fsynced, but never acknowledged as persisted.
    Visible {
        visible: tokio::sync::oneshot::Sender<io::Result<()>>,
        flushed: IOFlushed<TypeConfig>,
    },
    /// Reply once visible; durability comes with a later fsync.
    Lazy(tokio::sync::oneshot::Sender<io::Result<()>>),
    /// Reply once the job's puts and point deletes are visible (written in
    /// its turn, as `Lazy`); its range deletes are done later, a few keys
    /// between rounds in the writer's background lane, so that a large one
    /// (a log purge) does not hold every group of the node behind it. Only
    /// for deletes of keys nothing reads any more, whose timing does not
    /// matter; a failure of theirs poisons the store, which stops
    /// everything after it.
    Background(tokio::sync::oneshot::Sender<io::Result<()>>),
}

/// Work a [`Compute`] leaves to run on the writer thread right after its
/// job's batch is visible, only if it was written, and before the job's
/// submitter is told: a state machine answers its proposers from there,
/// one hand-off sooner than through the task waiting on the job. It must
/// be quick, and must never wait for this store (nor for a lock whose
/// holder might): every group of the node waits while it runs. A panic in
/// it poisons the store.
pub(crate) type Then = Box<dyn FnOnce() + Send>;

/// Work run on the writer thread right before its batch is written: it
/// reads the state left by every earlier job and returns more ops. An
/// error fails this job only (the store is not poisoned: nothing was
/// written).
/// Besides its ops it may return a [`Then`].
pub(crate) type Compute = Box<dyn FnOnce() -> io::Result<(Vec<Op>, Option<Then>)> + Send>;

struct Job {
    ops: Vec<Op>,
    compute: Option<Compute>,
    notify: Notify,
    /// The job's place in the bounded queue, freed once it is written.
    _slot: Slot,
}

/// A taken place in the writer's queue (see the module doc); counted in
/// the `storage_writer` queue-depth gauge while held.
struct Slot(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

impl Slot {
    async fn take(room: &Arc<tokio::sync::Semaphore>) -> Option<Slot> {
        // The semaphore is never closed; None only if it were.
        let permit = room.clone().acquire_owned().await.ok()?;
        if let Some(m) = crate::metrics::process() {
            m.queue_depth(crate::metrics::QUEUE_STORAGE_WRITER).inc();
        }
        Some(Slot(permit))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(m) = crate::metrics::process() {
            m.queue_depth(crate::metrics::QUEUE_STORAGE_WRITER).dec();
        }
    }
}

/// The node's storage: the fjall database plus its writer thread.
/// Bytes fjall keeps in memory (see [`NodeStore::memory`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StorageMemory {
    pub cache: u64,
    pub write_buffer: u64,
}

pub struct NodeStore {
    db: Database,
    pub(crate) log: Keyspace,
    pub(crate) meta: Keyspace,
    pub(crate) sm: Keyspace,
    pub(crate) smmeta: Keyspace,
    /// Where snapshot files live while received or installed.
    snap_dir: std::path::PathBuf,
    /// Bytes a snapshot being received must leave free on `snap_dir`'s
    /// file system ([`StorageTuning::disk_reserve_mb`]).
    disk_reserve: u64,
    /// As many places as `room` has permits, and every job in it holds
    /// one (a [`Slot`], freed only after the writer took the job out): a
    /// job with its slot always finds a place, so the send never blocks
    /// the async thread that makes it.
    jobs: crossbeam_channel::Sender<Job>,
    room: Arc<tokio::sync::Semaphore>,
    /// Held while a job is put in `jobs` (never across an await).
    order: Mutex<()>,
    poison: Arc<Poison>,
    /// The newest log entries of each group (see [`crate::tail`]); told
    /// of every log delete as it is queued.
    pub(crate) tails: crate::tail::Tails,
}

/// Set once, by the first storage failure: every later write is refused
/// and the replicas stop, reporting `reason`.
#[derive(Debug)]
pub(crate) struct Poison {
    dir: PathBuf,
    flag: AtomicBool,
    reason: OnceLock<String>,
}

impl Poison {
    fn new(dir: &Path) -> Self {
        Poison {
            dir: dir.to_path_buf(),
            flag: AtomicBool::new(false),
            reason: OnceLock::new(),
        }
    }

    fn is_set(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Record the failure of `what` (the first one wins) and log it once.
    fn set(&self, what: &str, e: &io::Error) {
        if self.reason.get().is_some() {
            self.flag.store(true, Ordering::SeqCst);
            return;
        }
        // fjall reports a failure of its own background flush only as
        // "poisoned" at the next write; a probe write finds the cause.
        let probe = match e.raw_os_error() {
            None if e.kind() != io::ErrorKind::InvalidData => probe(&self.dir).err(),
            _ => None,
        };
        let reason = match &probe {
            Some(p) => format!(
                "storage failed: {what} in {}: {e}; a write probe there fails: {p}",
                self.dir.display()
            ),
            None => format!("storage failed: {what} in {}: {e}", self.dir.display()),
        };
        let e = probe.as_ref().unwrap_or(e);
        if self.reason.set(reason.clone()).is_ok() {
            tracing::error!(
                data_dir = %self.dir.display(),
                error = %e,
                os_error = e.raw_os_error(),
                "{reason}; this node acknowledges nothing more: its replicas stop and it stays \
                 up only to report why. Free space or fix the disk, then restart it."
            );
        }
        self.flag.store(true, Ordering::SeqCst);
    }

    fn reason(&self) -> Option<String> {
        if !self.is_set() {
            return None;
        }
        Some(
            self.reason
                .get()
                .cloned()
                .unwrap_or_else(|| "storage failed".into()),
        )
    }

    fn refusal(&self) -> io::Error {
        io::Error::other(
            self.reason()
                .unwrap_or_else(|| "storage is poisoned by an earlier failure".into()),
        )
    }
}

impl std::fmt::Debug for NodeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeStore").finish_non_exhaustive()
    }
}

/// Set by the `crash-before-fsync` fault (see `server::arm_faults`).
pub(crate) static CRASH_BEFORE_FSYNC: AtomicBool = AtomicBool::new(false);

/// Set by the `fail-fsync` fault (see `server::arm_faults`): every later
/// fsync of the writer fails with EIO, as a dying disk's would.
pub(crate) static FAIL_FSYNC: AtomicBool = AtomicBool::new(false);

/// Write and fsync a small file in `dir`, then remove it: whether the
/// disk takes writes at all, and the operating system's error if not.
fn probe(dir: &Path) -> io::Result<()> {
    use std::io::Write;
    let path = dir.join("write.probe");
    let r = std::fs::File::create(&path).and_then(|mut f| {
        f.write_all(&[0u8; 64 * 1024])?;
        f.sync_all()
    });
    let _ = std::fs::remove_file(&path);
    r
}

/// An fjall error as an `io::Error`, keeping the operating system's error
/// (so "No space left on device (os error 28)" reaches the operator, not
/// fjall's debug form).
pub(crate) fn to_io(e: fjall::Error) -> io::Error {
    match e {
        fjall::Error::Io(e) => e,
        fjall::Error::Storage(fjall::LsmError::Io(e)) => e,
        fjall::Error::Storage(fjall::LsmError::ChecksumMismatch { got, expected }) => {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "a data block's checksum does not match (got {got}, expected \
                     {expected}): the data on disk is corrupt"
                ),
            )
        }
        fjall::Error::JournalRecovery(r) => io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the journal is corrupt ({r:?}): a complete, fsynced batch does not match its \
                 checksum, so data was damaged after it was written"
            ),
        ),
        fjall::Error::Poisoned => io::Error::other(
            "fjall refuses writes after an earlier failed flush or commit (poisoned)",
        ),
        e => io::Error::other(e.to_string()),
    }
}

/// Written into a data directory found to have lost fsynced data, so
/// every later start refuses it too (fjall has already cut the journal,
/// and the loss could not be seen again).
pub(crate) const REFUSED_FILE: &str = "corrupt.refused";

fn refusal_text(dir: &Path, what: &str) -> String {
    format!(
        "data directory {} is corrupt: {what}. This node refuses to start rather than serve \
         it. Move the directory aside (keep it for inspection) and start the node on an \
         empty one: it rejoins its groups from its peers without a vote until it has \
         caught up",
        dir.display()
    )
}

/// Why the database under `dir` did not open, with what to do when it is
/// corrupt rather than unreadable for a passing reason.
fn open_error(dir: &Path, e: fjall::Error) -> io::Error {
    let corrupt = matches!(
        e,
        fjall::Error::JournalRecovery(_)
            | fjall::Error::Storage(fjall::LsmError::ChecksumMismatch { .. })
            | fjall::Error::Unrecoverable
    );
    let e = to_io(e);
    if !corrupt {
        return e;
    }
    io::Error::new(
        io::ErrorKind::InvalidData,
        refusal_text(dir, &e.to_string()),
    )
}

pub(crate) fn group_prefix(group: u64) -> [u8; 8] {
    group.to_be_bytes()
}

pub(crate) fn group_key(group: u64, suffix: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + suffix.len());
    k.extend_from_slice(&group_prefix(group));
    k.extend_from_slice(suffix);
    k
}

pub(crate) fn log_key(group: u64, index: u64) -> Vec<u8> {
    group_key(group, &index.to_be_bytes())
}

/// The exclusive end of the keys starting with `prefix`: the prefix with
/// its last non-0xff byte incremented; None (unbounded) if it is all 0xff.
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while end.last() == Some(&0xff) {
        end.pop();
    }
    let last = end.last_mut()?;
    *last += 1;
    Some(end)
}

/// Group ids must be below this: the top id would have no finite upper
/// bound for its key range.
pub const MAX_GROUP_ID: u64 = u64::MAX - 1;

/// The exclusive upper bound of a group's key range (`group <= MAX_GROUP_ID`).
pub(crate) fn group_end(group: u64) -> Vec<u8> {
    group.saturating_add(1).to_be_bytes().to_vec()
}

impl NodeStore {
    /// What fjall holds in memory, by its own counts: the block cache's
    /// bytes (bounded by `cache_mb`) and the write buffer's (active and
    /// sealed memtables, bounded by the memtable size times the
    /// keyspaces). Both fill up to their bounds as data grows, so a heap
    /// that rises with them is a cache warming, not a leak.
    pub fn memory(&self) -> StorageMemory {
        StorageMemory {
            cache: self.db.cache_size(),
            write_buffer: self.db.write_buffer_size(),
        }
    }

    /// Open (or create) the node's database under `dir` with the default
    /// memory bounds.
    pub fn open(dir: &Path) -> io::Result<Arc<Self>> {
        Self::open_with(dir, &StorageTuning::default())
    }

    /// Open (or create) the node's database under `dir`, holding at most
    /// the memory `limits` allow (see [`StorageTuning`]).
    pub fn open_with(dir: &Path, limits: &StorageTuning) -> io::Result<Arc<Self>> {
        std::fs::create_dir_all(dir)?;
        const MIB: u64 = 1 << 20;
        if let Ok(why) = std::fs::read_to_string(dir.join(REFUSED_FILE)) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                refusal_text(dir, why.trim()),
            ));
        }
        let marked = journal_mark::read(dir);
        // fjall panics below these; the config refuses them, and the clamp
        // keeps a caller that skipped validation from reaching the panic.
        let db = Database::builder(dir)
            .cache_size(limits.cache_mb.max(1) * MIB)
            .max_journaling_size(limits.journal_mb.max(64) * MIB)
            .open()
            .map_err(|e| open_error(dir, e))?;
        let memtable = limits.memtable_mb.max(1) * MIB;
        let ks = |name: &str| {
            db.keyspace(name, || {
                KeyspaceCreateOptions::default().max_memtable_size(memtable)
            })
            .map_err(to_io)
        };
        let log = ks("log")?;
        let meta = ks("meta")?;
        let sm = ks("sm")?;
        let smmeta = ks("smmeta")?;
        check_format(dir, &db, &meta, &[&log, &meta, &sm, &smmeta])?;
        let round = match meta.get(journal_mark::ROUND_KEY).map_err(to_io)? {
            Some(v) => journal_mark::parse_round(&v)?,
            None => 0,
        };
        if let Some(what) = journal_mark::check(round, marked) {
            // Recorded before anything else: fjall has cut the journal
            // already, and once the next round is marked the loss could
            // not be seen again.
            std::fs::write(dir.join(REFUSED_FILE), format!("{what}\n"))?;
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                refusal_text(dir, &what),
            ));
        }
        let mut mark = journal_mark::MarkWriter::open(dir)?;
        mark.record(round)?;
        let snap_dir = dir.join(crate::snapshot::DIR);
        crate::snapshot::clean_dir(&snap_dir, &smmeta)?;
        let queue = usize::try_from(limits.writer_queue.max(1)).unwrap_or(usize::MAX);
        let (tx, rx) = crossbeam_channel::bounded::<Job>(queue);
        let poison = Arc::new(Poison::new(dir));
        let store = Arc::new(NodeStore {
            db: db.clone(),
            log: log.clone(),
            meta: meta.clone(),
            sm: sm.clone(),
            smmeta: smmeta.clone(),
            snap_dir,
            disk_reserve: limits.disk_reserve_mb.saturating_mul(MIB),
            jobs: tx,
            room: Arc::new(tokio::sync::Semaphore::new(queue)),
            order: Mutex::new(()),
            poison: poison.clone(),
            tails: crate::tail::Tails::default(),
        });
        let writer = Writer {
            db,
            spaces: [log, meta, sm, smmeta],
            poison,
            mark,
            round,
            background: VecDeque::new(),
        };
        thread::Builder::new()
            .name("pact-storage-writer".into())
            .spawn(move || writer.run(rx))?;
        Ok(store)
    }

    pub(crate) fn space(&self, s: Space) -> &Keyspace {
        match s {
            Space::Log => &self.log,
            Space::Meta => &self.meta,
            Space::Sm => &self.sm,
            Space::SmMeta => &self.smmeta,
        }
    }

    pub(crate) fn snap_dir(&self) -> &Path {
        &self.snap_dir
    }

    /// Where snapshots from peers are received, and the free space they
    /// must leave.
    pub(crate) fn inbox(&self) -> crate::snapshot::Inbox {
        crate::snapshot::Inbox {
            dir: self.snap_dir.clone(),
            reserve: self.disk_reserve,
        }
    }

    /// True once a write, fsync or read failed; the node must be restarted.
    pub fn is_poisoned(&self) -> bool {
        self.poison.is_set()
    }

    /// Why the store is poisoned (the first failure, with the data
    /// directory and the operating system's error), if it is.
    pub fn poison_reason(&self) -> Option<String> {
        self.poison.reason()
    }

    /// A failed read: the data is unreadable or corrupt, so nothing more
    /// is served or written from this store.
    fn read_failed(&self, e: fjall::Error) -> io::Error {
        let e = to_io(e);
        self.poison.set("read", &e);
        e
    }

    /// Queue a job, waiting while the queue is full.
    pub(crate) async fn submit(&self, ops: Vec<Op>, notify: Notify) {
        self.enqueue(ops, None, notify).await
    }

    async fn enqueue(&self, ops: Vec<Op>, compute: Option<Compute>, notify: Notify) {
        self.enqueue_reading(ops, compute, notify, None).await;
    }

    /// Queue a job; with `tail`, also read that log tail's generation in
    /// the same step as the job takes its place in the queue (see
    /// [`NodeStore::submit_append`]).
    async fn enqueue_reading(
        &self,
        ops: Vec<Op>,
        compute: Option<Compute>,
        notify: Notify,
        tail: Option<&Mutex<Tail>>,
    ) -> Option<u64> {
        // Without a slot (never: the semaphore is not closed) the job is
        // dropped with its notify channel, which the submitter reports as
        // an I/O error, as for a dead writer thread.
        let slot = Slot::take(&self.room).await?;
        // Jobs reach the queue in the order they pass this lock, so the
        // tails see log deletes and appends in the writer's order.
        let _order = self.order.lock().unwrap_or_else(PoisonError::into_inner);
        // Before the job can run: from here on no read is served from a
        // tail an entry this job deletes (a computed job's ops are the
        // state machine's, never the log's).
        self.tails.forget_replaced(&ops);
        let generation = tail.and_then(|t| t.lock().ok().map(|t| t.generation()));
        // Never full (see `jobs`). The writer thread lives as long as the
        // store; the send can only fail if it died, in which case the
        // notify channel is dropped and the submitter sees a closed
        // channel, which it reports as an I/O error.
        let _ = self.jobs.try_send(Job {
            ops,
            compute,
            notify,
            _slot: slot,
        });
        generation
    }

    /// Queue a log append; returns the generation of the group's `tail`
    /// as the job was queued, for [`Tail::push`] once it is visible: any
    /// log delete queued after it changes the generation, and the entries
    /// then stay out of the tail.
    pub(crate) async fn submit_append(
        &self,
        ops: Vec<Op>,
        notify: Notify,
        tail: &Mutex<Tail>,
    ) -> Option<u64> {
        self.enqueue_reading(ops, None, notify, Some(tail)).await
    }

    /// Queue `compute` to run on the writer thread after every job queued
    /// before it, and its ops (after `ops`) to be written atomically right
    /// then; the returned receiver fires once they are visible. Jobs run
    /// in queue order, so a computation sees the writes of every job
    /// queued before it: a state machine can queue a run of entries
    /// without waiting for each, and each still applies to the state the
    /// previous one left, with one hand-off per entry instead of a
    /// blocking-pool task plus a write.
    /// The [`Then`] it returns runs before the receiver fires.
    pub(crate) async fn submit_computed(
        &self,
        ops: Vec<Op>,
        compute: Compute,
    ) -> tokio::sync::oneshot::Receiver<io::Result<()>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.enqueue(ops, Some(compute), Notify::Lazy(tx)).await;
        rx
    }

    /// Apply `ops` atomically and wait until they are durable.
    pub(crate) async fn write_durable(&self, ops: Vec<Op>) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(ops, Notify::Durable(tx)).await;
        rx.await
            .map_err(|_| io::Error::other("storage writer stopped"))?
    }

    /// Queue `ops` as one atomic batch; the receiver fires once readers
    /// can see them (durable with a later fsync).
    /// (Waits for room in the writer's queue first.)
    pub(crate) async fn submit_lazy(
        &self,
        ops: Vec<Op>,
    ) -> tokio::sync::oneshot::Receiver<io::Result<()>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(ops, Notify::Lazy(tx)).await;
        rx
    }

    /// Write `ops`' puts and point deletes atomically and return once
    /// readers can see them; their range deletes follow in the background
    /// (see [`Notify::Background`]).
    pub(crate) async fn write_then_sweep(&self, ops: Vec<Op>) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(ops, Notify::Background(tx)).await;
        rx.await
            .map_err(|_| io::Error::other("storage writer stopped"))?
    }

    /// Apply `ops` atomically; return once readers can see them.
    pub(crate) async fn write_visible(&self, ops: Vec<Op>) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(ops, Notify::Lazy(tx)).await;
        rx.await
            .map_err(|_| io::Error::other("storage writer stopped"))?
    }

    /// Point read; runs on the blocking pool.
    pub(crate) async fn get(
        self: &Arc<Self>,
        space: Space,
        key: Vec<u8>,
    ) -> io::Result<Option<Vec<u8>>> {
        let me = self.clone();
        blocking(move || me.get_sync(space, &key)).await
    }

    pub(crate) fn get_sync(&self, space: Space, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        if self.poison.is_set() {
            return Err(self.poison.refusal());
        }
        Ok(self
            .space(space)
            .get(key)
            .map_err(|e| self.read_failed(e))?
            .map(|v| v.to_vec()))
    }

    /// Range read of `[from, to)` in one keyspace, at most `limit` pairs,
    /// optionally from the end backwards.
    pub(crate) fn range_sync(
        &self,
        space: Space,
        from: &[u8],
        to: &[u8],
        limit: usize,
        reverse: bool,
    ) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if self.poison.is_set() {
            return Err(self.poison.refusal());
        }
        let range = (Bound::Included(from.to_vec()), Bound::Excluded(to.to_vec()));
        let iter = self.space(space).range::<Vec<u8>, _>(range);
        let mut out = Vec::new();
        let mut push = |g: fjall::Guard| -> io::Result<bool> {
            let (k, v) = g.into_inner().map_err(|e| self.read_failed(e))?;
            out.push((k.to_vec(), v.to_vec()));
            Ok(out.len() < limit)
        };
        if reverse {
            for g in iter.rev() {
                if !push(g)? {
                    break;
                }
            }
        } else {
            for g in iter {
                if !push(g)? {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The pairs of `[from, to)` in key order whose values total at most
    /// `max_bytes`: always at least one pair when the range holds any.
    pub(crate) fn range_bytes_sync(
        &self,
        space: Space,
        from: &[u8],
        to: &[u8],
        max_bytes: usize,
    ) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if self.poison.is_set() {
            return Err(self.poison.refusal());
        }
        let range = (Bound::Included(from.to_vec()), Bound::Excluded(to.to_vec()));
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for g in self.space(space).range::<Vec<u8>, _>(range) {
            let (k, v) = g.into_inner().map_err(|e| self.read_failed(e))?;
            // At most `max_bytes`, but always one pair (as `crate::tail`).
            if !out.is_empty() && bytes.saturating_add(v.len()) > max_bytes {
                break;
            }
            bytes = bytes.saturating_add(v.len());
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// The keys of `[from, to)` after `after` (exclusive; from `from` if
    /// None), at most `max_keys`, stopping once the pairs read reach
    /// `max_bytes`: a bounded slice of a range to delete.
    pub(crate) fn keys_sync(
        &self,
        space: Space,
        after: Option<&[u8]>,
        from: &[u8],
        to: &[u8],
        max_keys: usize,
        max_bytes: usize,
    ) -> io::Result<Vec<Vec<u8>>> {
        let start = match after {
            Some(a) => Bound::Excluded(a.to_vec()),
            None => Bound::Included(from.to_vec()),
        };
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for g in self
            .space(space)
            .range::<Vec<u8>, _>((start, Bound::Excluded(to.to_vec())))
        {
            let (k, v) = g.into_inner().map_err(to_io)?;
            bytes = bytes.saturating_add(k.len() + v.len());
            out.push(k.to_vec());
            if out.len() >= max_keys || bytes >= max_bytes {
                break;
            }
        }
        Ok(out)
    }

    /// A consistent point-in-time view of one group's state machine: its
    /// metadata, read now, and a fjall snapshot from which its pairs are
    /// read later, chunk by chunk (nothing of the data is copied here).
    pub(crate) fn sm_snapshot_sync(&self, group: u64) -> io::Result<SmImage> {
        if self.poison.is_set() {
            return Err(self.poison.refusal());
        }
        let snap = self.db.snapshot();
        let applied = snap
            .get(&self.smmeta, group_key(group, SM_APPLIED))
            .map_err(|e| self.read_failed(e))?
            .map(|v| v.to_vec());
        let membership = snap
            .get(&self.smmeta, group_key(group, SM_MEMBERSHIP))
            .map_err(|e| self.read_failed(e))?
            .map(|v| v.to_vec());
        Ok(SmImage {
            view: crate::snapshot::View::new(snap, self.sm.clone(), group),
            applied,
            membership,
        })
    }

    /// Make everything written so far durable.
    pub(crate) async fn sync(&self) -> io::Result<()> {
        self.write_durable(Vec::new()).await
    }
}

/// Make sure the database under `dir` is in [`FORMAT_VERSION`]: a new
/// (empty) database gets the format record, durably, before anything else
/// is written; a database in another format, or one written before the
/// format record existed, is refused with an error naming what was found.
fn check_format(dir: &Path, db: &Database, meta: &Keyspace, all: &[&Keyspace]) -> io::Result<()> {
    let refuse = |why: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("data directory {}: {why}", dir.display()),
        )
    };
    match meta.get(FORMAT_KEY).map_err(to_io)? {
        Some(v) => {
            let found = std::str::from_utf8(&v)
                .ok()
                .and_then(|t| t.parse::<u64>().ok())
                .ok_or_else(|| refuse(format!("unreadable format record {:?}", v.as_ref())))?;
            if found == u64::from(FORMAT_VERSION) {
                Ok(())
            } else if found > u64::from(FORMAT_VERSION) {
                Err(refuse(format!(
                    "on-disk format version {found} is newer than this build supports \
                     (version {FORMAT_VERSION}); run a Pact build that reads version {found}"
                )))
            } else {
                Err(refuse(format!(
                    "on-disk format version {found} is older than this build's version \
                     {FORMAT_VERSION}, and this build has no migration from it"
                )))
            }
        }
        None => {
            for ks in all {
                if !ks.is_empty().map_err(to_io)? {
                    return Err(refuse(format!(
                        "it holds data but no format record: it was written by a Pact build \
                         older than the versioned on-disk format (version {FORMAT_VERSION}), \
                         which this build cannot read and does not migrate; start the node \
                         on an empty data directory and it rejoins from its peers"
                    )));
                }
            }
            meta.insert(FORMAT_KEY, FORMAT_VERSION.to_string().as_bytes())
                .map_err(to_io)?;
            db.persist(PersistMode::SyncAll).map_err(to_io)
        }
    }
}

/// A group's state machine at one instant: its data (to be read lazily)
/// and its metadata, as stored.
pub(crate) struct SmImage {
    pub view: crate::snapshot::View,
    pub applied: Option<Vec<u8>>,
    pub membership: Option<Vec<u8>>,
}

/// Run a blocking fjall call off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(format!("storage task failed: {e}")))?
}

/// Runs `f` on the writer thread; a panic in it poisons the store, naming
/// `what`, and comes back as an error, so the round goes on answering.
fn caught<T>(poison: &Poison, what: &str, f: impl FnOnce() -> T) -> io::Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|_| {
        let e = io::Error::other("it panicked; see the log above");
        poison.set(what, &e);
        e
    })
}

/// Poisons the store if the writer thread unwinds.
struct PoisonOnPanic(Arc<Poison>);

impl Drop for PoisonOnPanic {
    fn drop(&mut self) {
        if thread::panicking() {
            self.0.set(
                "the storage writer",
                &io::Error::other("its thread panicked; see the log above"),
            );
        }
    }
}

struct Writer {
    db: Database,
    spaces: [Keyspace; 4],
    poison: Arc<Poison>,
    mark: journal_mark::MarkWriter,
    /// The last fsync round (see `journal_mark`).
    round: u64,
    /// Range deletes of [`Notify::Background`] jobs not done yet, in the
    /// order they were queued, each as `[from, to)` in its space: `from`
    /// moves on as keys are deleted.
    background: VecDeque<(Space, Vec<u8>, Vec<u8>)>,
}

/// Keys one step of the background lane deletes at most: a fraction of a
/// millisecond of the writer's time between two rounds.
const BACKGROUND_STEP_KEYS: usize = 64;

impl Writer {
    fn space(&self, s: Space) -> &Keyspace {
        match s {
            Space::Log => &self.spaces[0],
            Space::Meta => &self.spaces[1],
            Space::Sm => &self.spaces[2],
            Space::SmMeta => &self.spaces[3],
        }
    }

    fn commit(&self, ops: Vec<Op>) -> io::Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut batch = self.db.batch();
        for op in ops {
            match op {
                Op::Put(s, k, v) => batch.insert(self.space(s), k, v),
                Op::Delete(s, k) => batch.remove(self.space(s), k),
                Op::DeleteRange(s, from, to) => {
                    let ks = self.space(s);
                    for g in ks.range::<Vec<u8>, _>(from..to) {
                        let k = g.key().map_err(to_io)?;
                        batch.remove(ks, k);
                    }
                }
            }
        }
        batch.commit().map_err(to_io)
    }

    /// Delete up to `keys` keys of the lane's range at `at`, dropping the
    /// range once nothing of it is left. A failure poisons the store and
    /// empties the lane: nothing more is written.
    fn background_step(&mut self, at: usize, keys: usize) {
        if self.poison.is_set() {
            self.background.clear();
            return;
        }
        let Some((s, from, to)) = self.background.get(at).cloned() else {
            return;
        };
        let ks = self.space(s).clone();
        let mut batch = self.db.batch();
        let mut last = None;
        let mut n = 0;
        let scanned: io::Result<()> = (|| {
            for g in ks.range::<Vec<u8>, _>(from..to) {
                let k = g.key().map_err(to_io)?;
                batch.remove(&ks, k.clone());
                n += 1;
                if n == keys {
                    last = Some(k);
                    break;
                }
            }
            Ok(())
        })();
        let done = scanned.and_then(|()| {
            if n == 0 {
                Ok(())
            } else {
                batch.commit().map_err(to_io)
            }
        });
        if let Err(e) = done {
            self.poison.set("write", &e);
            self.background.clear();
            return;
        }
        match (last, self.background.get_mut(at)) {
            // Keys may remain: go on after the last one deleted.
            (Some(k), Some((_, from, _))) => {
                let mut next = k.to_vec();
                next.push(0);
                *from = next;
            }
            _ => {
                self.background.remove(at);
            }
        }
    }

    /// Before `ops` run: a pending lane range they touch is finished
    /// first, so a job never runs ahead of a delete queued before it that
    /// overlaps it (a wiped group's log, then a new replica's entries); one
    /// that a range delete of theirs covers whole is dropped, as that
    /// delete does its work. The lane holds only deletes, which commute,
    /// so the other ranges keep their place.
    fn before(&mut self, ops: &[Op]) {
        for op in ops {
            let mut at = 0;
            while at < self.background.len() {
                let (bs, from, to) = &self.background[at];
                let (covered, touched) = match op {
                    Op::Put(s, k, _) | Op::Delete(s, k) => (
                        false,
                        s == bs && from.as_slice() <= k.as_slice() && k.as_slice() < to.as_slice(),
                    ),
                    Op::DeleteRange(s, a, b) => (
                        s == bs && a <= from && to <= b,
                        s == bs && a < to && from < b,
                    ),
                };
                if covered {
                    self.background.remove(at);
                } else if touched {
                    self.background_step(at, usize::MAX);
                } else {
                    at += 1;
                }
            }
        }
    }

    fn run(mut self, rx: crossbeam_channel::Receiver<Job>) {
        // A panic here (in a state machine's computation, say) ends the
        // thread with a round's waiters dropped unanswered: the store is
        // poisoned on the way out, so the node reports it and refuses
        // everything after, as for a failed write.
        let _exit = PoisonOnPanic(self.poison.clone());
        loop {
            let first = if self.background.is_empty() {
                match rx.recv() {
                    Ok(j) => j,
                    Err(_) => break,
                }
            } else {
                match rx.try_recv() {
                    Ok(j) => j,
                    Err(crossbeam_channel::TryRecvError::Empty) => {
                        self.background_step(0, BACKGROUND_STEP_KEYS);
                        continue;
                    }
                    Err(crossbeam_channel::TryRecvError::Disconnected) => break,
                }
            };
            let written = self.round(first, &rx);
            // One step between rounds, deleting at least as many keys as
            // the round wrote: under any steady load the lane keeps up
            // with the purges that follow the appends, a step's delay at
            // a time.
            self.background_step(0, written.max(BACKGROUND_STEP_KEYS));
        }
    }

    /// One group-commit round from `first` on; returns how many ops it
    /// wrote.
    fn round(&mut self, first: Job, rx: &crossbeam_channel::Receiver<Job>) -> usize {
        {
            if CRASH_BEFORE_FSYNC.load(Ordering::SeqCst) {
                // Fault injection: die holding a round that never reached
                // the disk, none of it acknowledged: the writes a power cut
                // would lose because they were not fsynced yet.
                eprintln!("crash-before-fsync: aborting with a round of writes unwritten");
                std::process::abort();
            }
            let mut round = vec![first];
            // Group commit: everything already queued shares one fsync.
            while round.len() < 1024 {
                match rx.try_recv() {
                    Ok(j) => round.push(j),
                    Err(_) => break,
                }
            }
            let mut waiting = Vec::new();
            let mut need_sync = false;
            let mut slow = SlowRound::start(round.len());
            for job in round {
                let Job {
                    mut ops,
                    compute,
                    notify,
                    _slot,
                } = job;
                let computing = std::time::Instant::now();
                let mut then = None;
                let computed = match compute {
                    // A panicking computation poisons the store here,
                    // before anyone waiting on this round is answered.
                    Some(f) if !self.poison.is_set() => {
                        caught(&self.poison, "a state machine's apply", f)
                            .and_then(|r| r)
                            .map(|(more, t)| {
                                ops.extend(more);
                                then = t;
                            })
                    }
                    _ => Ok(()),
                };
                slow.compute += computing.elapsed();
                slow.ops += ops.len();
                if matches!(notify, Notify::Background(_)) {
                    // Its range deletes join the lane, behind any queued
                    // before; the rest is written now.
                    let (ranges, now): (Vec<Op>, Vec<Op>) = ops
                        .into_iter()
                        .partition(|op| matches!(op, Op::DeleteRange(..)));
                    ops = now;
                    let lane = std::time::Instant::now();
                    self.before(&ops);
                    slow.lane += lane.elapsed();
                    for op in ranges {
                        if let Op::DeleteRange(s, from, to) = op {
                            self.background.push_back((s, from, to));
                        }
                    }
                } else {
                    let lane = std::time::Instant::now();
                    self.before(&ops);
                    slow.lane += lane.elapsed();
                }
                let res = if self.poison.is_set() {
                    Err(self.poison.refusal())
                } else if let Err(e) = computed {
                    // The computation refused; nothing of this job is
                    // written, and the store stays sound.
                    Err(e)
                } else {
                    let started = std::time::Instant::now();
                    let r = self.commit(ops);
                    slow.write += started.elapsed();
                    if let Some(m) = crate::metrics::process() {
                        m.write_seconds.observe(started.elapsed().as_secs_f64());
                    }
                    if let Err(e) = &r {
                        self.poison.set("write", e);
                    }
                    r
                };
                // Caught as a panicking computation is: the rest of the
                // round (other groups' appends among it) is still answered,
                // with refusals from here on.
                let res = match then {
                    Some(t) => {
                        res.and_then(|()| caught(&self.poison, "a state machine's visible hook", t))
                    }
                    None => res,
                };
                match notify {
                    Notify::Lazy(tx) | Notify::Background(tx) => {
                        let _ = tx.send(res);
                    }
                    Notify::Visible { visible, flushed } => {
                        let ok = res.is_ok();
                        let _ = visible.send(res);
                        if ok {
                            need_sync = true;
                            waiting.push(Waiter::Flushed(flushed));
                        } else {
                            flushed.io_completed(Err(io::Error::other("write failed")));
                        }
                    }
                    Notify::Durable(tx) => match res {
                        Ok(()) => {
                            need_sync = true;
                            waiting.push(Waiter::Durable(tx));
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    },
                }
            }
            if !need_sync {
                slow.report(None);
                return slow.ops;
            }
            let synced = if self.poison.is_set() {
                Err(self.poison.refusal())
            } else if FAIL_FSYNC.load(Ordering::SeqCst) {
                let e = io::Error::from_raw_os_error(5);
                self.poison
                    .set("fsync (injected by the fail-fsync fault)", &e);
                Err(e)
            } else {
                let started = std::time::Instant::now();
                // The round's number is its last batch, so the mark can
                // tell whether every batch of the round survived.
                let next = self.round + 1;
                let r = self
                    .commit(vec![Op::Put(
                        Space::Meta,
                        journal_mark::ROUND_KEY.to_vec(),
                        journal_mark::round_value(next),
                    )])
                    .and_then(|()| self.db.persist(PersistMode::SyncAll).map_err(to_io));
                if r.is_ok() {
                    self.round = next;
                }
                if let Some(m) = crate::metrics::process() {
                    m.fsync_seconds.observe(started.elapsed().as_secs_f64());
                    m.fsync_batch_jobs.observe(waiting.len() as f64);
                }
                slow.report(Some(started.elapsed()));
                r
            };
            match &synced {
                Err(e) => self.poison.set("fsync", e),
                Ok(()) => {
                    // Advisory: a stale mark only weakens the check at the
                    // next open; it never makes it refuse a sound journal.
                    if let Err(e) = self.mark.record(self.round) {
                        tracing::warn!(error = %e, "cannot update the journal mark");
                    }
                }
            }
            for w in waiting {
                let r = match &synced {
                    Ok(()) => Ok(()),
                    Err(e) => Err(io::Error::other(e.to_string())),
                };
                match w {
                    Waiter::Flushed(f) => f.io_completed(r),
                    Waiter::Durable(tx) => {
                        let _ = tx.send(r);
                    }
                }
            }
            slow.ops
        }
    }
}

/// A group-commit round that kept the writer long enough to stall every
/// group of the node is logged with where its time went, so a latency
/// spike can be traced to a kind of work (state-machine applies, batch
/// writes, which include fjall's waits for its journal lock, a lane range
/// finished early, or the fsync).
struct SlowRound {
    started: std::time::Instant,
    jobs: usize,
    ops: usize,
    lane: Duration,
    compute: Duration,
    write: Duration,
}

/// Rounds longer than this are logged.
const SLOW_ROUND: Duration = Duration::from_millis(100);

impl SlowRound {
    fn start(jobs: usize) -> Self {
        SlowRound {
            started: std::time::Instant::now(),
            jobs,
            ops: 0,
            lane: Duration::ZERO,
            compute: Duration::ZERO,
            write: Duration::ZERO,
        }
    }

    fn report(&self, fsync: Option<Duration>) {
        let took = self.started.elapsed();
        if took < SLOW_ROUND {
            return;
        }
        tracing::warn!(
            took_ms = took.as_millis() as u64,
            jobs = self.jobs,
            ops = self.ops,
            lane_ms = self.lane.as_millis() as u64,
            compute_ms = self.compute.as_millis() as u64,
            write_ms = self.write.as_millis() as u64,
            fsync_ms = fsync.map(|f| f.as_millis() as u64),
            "slow storage round: every group of this node waited for it"
        );
    }
}

enum Waiter {
    Flushed(IOFlushed<TypeConfig>),
    Durable(tokio::sync::oneshot::Sender<io::Result<()>>),
}
