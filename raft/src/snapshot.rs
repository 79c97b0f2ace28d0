//! Streamed snapshots: a group's state is sent, received and installed in
//! chunks of bounded size, never held in memory whole, and installed
//! without stalling the other groups of the node.
//!
//! **Building** a snapshot copies nothing: the state machine is already
//! durable in fjall, so a snapshot is a fjall read snapshot of the group's
//! range ([`View`]) plus its applied log id and membership, after an
//! fsync. The pairs are read from the view a chunk at a time
//! ([`View::chunk`], about [`CHUNK_BYTES`]) only when a follower needs
//! them.
//!
//! **Sending** (`network`): the leader streams chunks, each its own
//! message with its own deadline, numbered within a session; the last
//! message carries the snapshot's meta. The follower appends each chunk
//! to a file ([`Spool`]) in the data directory's `snapshots/`, checking
//! that it decodes first, and fsyncs the file when the last one arrives.
//!
//! **Holding the log for a transfer** ([`Outbound`]). A follower that
//! needs a snapshot needs, once it has installed it, the log from the
//! snapshot's index on. openraft purges the log only after it builds a
//! snapshot (every `snapshot_logs` entries, keeping `keep_logs` behind),
//! so under writes a transfer that outlasts `snapshot_logs - keep_logs`
//! entries arrives to find the log gone, and the follower is sent a whole
//! new snapshot, again and again (a 1 GiB move under YCSB-A needed five).
//! So while this replica streams a snapshot that its follower is storing
//! (from the first acknowledged chunk on: a dead follower, which openraft
//! keeps trying, holds nothing), the state machine defers the policy's
//! builds: nothing is purged behind the transfer. A transfer
//! that never ends must not keep the log forever: after
//! [`MAX_DEFERRED`] deferrals in a row (that many times `snapshot_logs`
//! entries) a build goes ahead. (TiKV likewise holds log GC for a peer
//! that is being sent a snapshot.)
//!
//! A follower that has no room for a snapshot refuses it
//! (`RESOURCE_EXHAUSTED` with `network::NO_ROOM`); its leader then sends
//! it none for [`ROOM_BACKOFF`] rather than move the same chunks again.
//!
//! **Installing** ([`install`]) replaces the group's state through the
//! node's writer thread in bounded jobs, so other groups' jobs run between
//! them: the file is renamed to the group's install slot, then one durable
//! job writes the install marker and deletes the applied log id and
//! membership; then jobs of at most [`WIPE_KEYS`] deletes clear the old
//! pairs, jobs of one file frame each write the new ones, and a final
//! durable job writes the new applied log id and membership and deletes
//! the marker. The file is removed after that.
//!
//! **Crash safety.** Before the marker job the old state is untouched
//! (the file, complete or not, is deleted at the next open). After the
//! final job the new state is complete. In between, the marker is present
//! and the file is complete and durable (fsynced and renamed before the
//! marker was written), so at the next start [`recover`] redoes the wipe
//! and the load from the file (both idempotent) and writes the final job:
//! the group comes up at the new state, as if the install had finished
//! just before the crash, which openraft already handles (it purges the
//! log behind the applied id at start). While the marker is present the
//! group reports no applied state, never a mix. If the file cannot be read
//! back (lost or corrupted outside Pact), the group is wiped whole, log
//! and vote included, and starts as an empty replica: it rejoins behind
//! the gate as after a lost disk (see `rejoin`) and is sent a snapshot.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use fjall::{Keyspace, Readable};
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::store::{
    blocking, group_end, group_key, group_prefix, to_io, NodeStore, Op, Space, SM_APPLIED,
    SM_INSTALLING, SM_MEMBERSHIP,
};
use crate::types::{byte_string, LogId, SnapshotMeta, StoredMembership};

/// The directory under the data directory that holds snapshot files.
pub(crate) const DIR: &str = "snapshots";

/// Target size of one chunk's pairs: a chunk ends with the first pair
/// that brings it to this size (one pair can be larger, up to the largest
/// value a command can write, well under the message limit).
pub const CHUNK_BYTES: usize = 4 << 20;

/// Policy snapshots deferred in a row, at most, while this replica streams
/// one to a follower (see the module doc): the log then holds at most this
/// many times `snapshot_logs` entries more than usual.
pub(crate) const MAX_DEFERRED: u32 = 50;

/// The snapshots one replica is streaming to its peers, shared by its
/// network (which counts them) and its state machine (which defers the
/// policy's builds meanwhile, so the log a follower needs after the
/// transfer is not purged during it).
#[derive(Debug, Default)]
pub(crate) struct Outbound {
    sending: AtomicUsize,
    deferred: AtomicU32,
    /// Followers that refused a snapshot for want of room, and until when
    /// none is sent to them.
    no_room: std::sync::Mutex<std::collections::HashMap<u64, std::time::Instant>>,
}

/// How long a leader sends no snapshot to a follower that refused one for
/// want of room (its disk would have fallen below `disk_reserve_mb`):
/// each attempt moves every chunk up to the point where the room runs
/// out, and room comes back only when an operator makes it.
pub(crate) const ROOM_BACKOFF: std::time::Duration = std::time::Duration::from_secs(60);

impl Outbound {
    /// One transfer is under way (its follower stored a chunk); it counts
    /// until the guard drops (ended, failed or cancelled alike).
    pub(crate) fn start(self: &Arc<Self>) -> Sending {
        // The first of overlapping transfers starts the budget afresh.
        if self.sending.fetch_add(1, Ordering::SeqCst) == 0 {
            self.deferred.store(0, Ordering::SeqCst);
        }
        Sending(self.clone())
    }

    /// Follower `target` refused a snapshot for want of room at `now`.
    pub(crate) fn refused_for_room(&self, target: u64, now: std::time::Instant) {
        if let Ok(mut m) = self.no_room.lock() {
            m.insert(target, now + ROOM_BACKOFF);
        }
    }

    /// How long before a snapshot may be sent to `target` again, if it
    /// refused one for want of room less than [`ROOM_BACKOFF`] ago.
    pub(crate) fn room_wait(
        &self,
        target: u64,
        now: std::time::Instant,
    ) -> Option<std::time::Duration> {
        let mut m = self.no_room.lock().ok()?;
        match m.get(&target) {
            Some(until) if *until > now => Some(*until - now),
            Some(_) => {
                m.remove(&target);
                None
            }
            None => None,
        }
    }

    /// Whether a snapshot due by policy should wait: yes while a transfer
    /// runs, unless [`MAX_DEFERRED`] already waited in a row.
    pub(crate) fn defer(&self) -> bool {
        if self.sending.load(Ordering::SeqCst) == 0 {
            self.deferred.store(0, Ordering::SeqCst);
            return false;
        }
        if self.deferred.fetch_add(1, Ordering::SeqCst) + 1 > MAX_DEFERRED {
            self.deferred.store(0, Ordering::SeqCst);
            return false;
        }
        true
    }
}

/// A transfer under way (see [`Outbound::start`]).
pub(crate) struct Sending(Arc<Outbound>);

impl Drop for Sending {
    fn drop(&mut self) {
        self.0.sending.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Most keys deleted by one job while clearing a group's old state.
pub(crate) const WIPE_KEYS: usize = 16_384;

/// Largest frame accepted in a snapshot file or chunk: a chunk's pairs
/// plus one command-sized pair, with room for framing. Anything larger is
/// refused rather than buffered.
pub(crate) const MAX_FRAME_BYTES: usize = crate::network::MAX_APPEND_MESSAGE_BYTES;

/// One key-value pair of a group's state (group prefix stripped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Pair {
    #[serde(with = "byte_string")]
    pub key: Vec<u8>,
    #[serde(with = "byte_string")]
    pub value: Vec<u8>,
}

/// A snapshot's data: openraft's `SnapshotData`.
pub enum SnapshotData {
    /// A view of this node's own store (built here, to be sent).
    View(View),
    /// A complete file received from the leader (to be installed).
    Spooled(Spooled),
}

impl std::fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotData::View(v) => write!(f, "View(group {})", v.group),
            SnapshotData::Spooled(s) => write!(f, "Spooled({:?}, {} bytes)", s.path, s.bytes),
        }
    }
}

/// A group's pairs as of one instant, read lazily from a fjall snapshot.
/// The snapshot keeps fjall from dropping the versions it sees, so a view
/// lives only as long as openraft holds the snapshot (one transfer).
#[derive(Clone)]
pub struct View {
    snap: fjall::Snapshot,
    sm: Keyspace,
    group: u64,
}

impl View {
    pub(crate) fn new(snap: fjall::Snapshot, sm: Keyspace, group: u64) -> View {
        View { snap, sm, group }
    }

    /// The pairs after `after` (an application key; from the start if
    /// None), up to the first that brings their size to `max_bytes`:
    /// the encoded frame and its last key, or None past the end.
    pub(crate) fn chunk(
        &self,
        after: Option<&[u8]>,
        max_bytes: usize,
    ) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        let start = match after {
            Some(k) => Bound::Excluded(group_key(self.group, k)),
            None => Bound::Included(group_prefix(self.group).to_vec()),
        };
        let end = Bound::Excluded(group_end(self.group));
        let mut pairs = Vec::new();
        let mut bytes = 0usize;
        for g in self.snap.range::<Vec<u8>, _>(&self.sm, (start, end)) {
            let (k, v) = g.into_inner().map_err(to_io)?;
            bytes = bytes.saturating_add(k.len() + v.len());
            pairs.push(Pair {
                key: k[8..].to_vec(),
                value: v.to_vec(),
            });
            if bytes >= max_bytes {
                break;
            }
        }
        let Some(last) = pairs.last().map(|p| p.key.clone()) else {
            return Ok(None);
        };
        Ok(Some((encode(&pairs)?, last)))
    }
}

/// The pairs of a frame (a chunk's payload), checked.
pub(crate) fn decode_frame(frame: &[u8], what: impl std::fmt::Display) -> io::Result<Vec<Pair>> {
    if frame.len() > MAX_FRAME_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{what}: snapshot frame of {} bytes exceeds the limit of {MAX_FRAME_BYTES}",
                frame.len()
            ),
        ));
    }
    decode(frame, what)
}

/// A snapshot file being written: frames, each a little-endian u32
/// length and the frame. Removed if dropped before [`Spool::finish`].
pub(crate) struct Spool {
    file: Option<File>,
    path: PathBuf,
    bytes: u64,
    /// Bytes the file system must keep free after each append (0: no
    /// check).
    reserve: u64,
}

/// Where snapshots sent by peers are spooled, and the disk space they
/// must leave free ([`pact_common::StorageTuning::disk_reserve_mb`]).
#[derive(Clone, Debug)]
pub(crate) struct Inbox {
    pub(crate) dir: PathBuf,
    pub(crate) reserve: u64,
}

impl Inbox {
    /// A new, empty file `name`, every append to which must leave the
    /// reserve free.
    pub(crate) fn create(&self, name: &str) -> io::Result<Spool> {
        let mut spool = Spool::create(&self.dir, name)?;
        spool.reserve = self.reserve;
        Ok(spool)
    }
}

/// Bytes an unprivileged writer may still use on the file system of
/// `path`.
// The statvfs field types differ between platforms (u64 here).
#[allow(clippy::useless_conversion)]
fn available(path: &Path) -> io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
    Ok(u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size())))
}

impl Spool {
    /// A new, empty file `name` in `dir`, with no free-space check.
    pub(crate) fn create(dir: &Path, name: &str) -> io::Result<Spool> {
        fs::create_dir_all(dir)?;
        let path = dir.join(name);
        let file = File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        Ok(Spool {
            file: Some(file),
            path,
            bytes: 0,
            reserve: 0,
        })
    }

    /// Append a frame that decodes (checked here, so a file that was
    /// accepted whole can be installed whole), if the file system keeps
    /// the reserve free after it; else `StorageFull`, and nothing of the
    /// frame is written.
    pub(crate) fn append(&mut self, frame: &[u8]) -> io::Result<()> {
        decode_frame(
            frame,
            format_args!("snapshot chunk for {}", self.path.display()),
        )?;
        // Each frame is stored after its 4-byte length.
        let stored = frame.len() as u64 + 4;
        if self.reserve > 0 {
            // The file so far with this chunk, and as much again for the
            // install, which writes the pairs into the store while the
            // file is still on disk (the old state's space comes back
            // only with compactions after it).
            let free = available(&self.path)?;
            let file = self.bytes.saturating_add(stored);
            let after = free.saturating_sub(stored);
            if after < file.saturating_add(self.reserve) {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    format!(
                        "snapshot file {}: {} MiB received; with the next chunk, {} MiB would \
                         be left free on its file system, which installing the snapshot would \
                         take down below the reserve of {} MiB ([storage] disk_reserve_mb); \
                         free disk space, or lower the reserve",
                        self.path.display(),
                        self.bytes >> 20,
                        after >> 20,
                        self.reserve >> 20
                    ),
                ));
            }
        }
        let len = u32::try_from(frame.len()).map_err(io::Error::other)?;
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("snapshot file already finished"))?;
        file.write_all(&len.to_le_bytes())?;
        file.write_all(frame)?;
        self.bytes += stored;
        Ok(())
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The complete file, fsynced.
    pub(crate) fn finish(mut self) -> io::Result<Spooled> {
        if let Some(f) = self.file.take() {
            f.sync_all()?;
        }
        Ok(Spooled {
            path: Some(std::mem::take(&mut self.path)),
            bytes: self.bytes,
        })
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// A complete snapshot file. Removed when dropped, unless an install took
/// it over (openraft drops a snapshot it decides not to install).
pub struct Spooled {
    path: Option<PathBuf>,
    bytes: u64,
}

impl Spooled {
    fn take(mut self) -> io::Result<PathBuf> {
        self.path
            .take()
            .ok_or_else(|| io::Error::other("snapshot file already taken"))
    }
}

impl Drop for Spooled {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// Reads a snapshot file's frames back, one at a time.
pub(crate) struct Frames {
    file: BufReader<File>,
    path: PathBuf,
}

impl Frames {
    pub(crate) fn open(path: &Path) -> io::Result<Frames> {
        Ok(Frames {
            file: BufReader::with_capacity(1 << 20, File::open(path)?),
            path: path.to_path_buf(),
        })
    }

    /// The next frame's pairs, None at the end of the file.
    pub(crate) fn next_frame(&mut self) -> io::Result<Option<Vec<Pair>>> {
        let mut len = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match self.file.read(&mut len[got..])? {
                0 if got == 0 => return Ok(None),
                0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("snapshot file {}: truncated frame", self.path.display()),
                    ))
                }
                n => got += n,
            }
        }
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_FRAME_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "snapshot file {}: frame of {len} bytes exceeds the limit",
                    self.path.display()
                ),
            ));
        }
        let mut frame = vec![0u8; len];
        self.file.read_exact(&mut frame).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("snapshot file {}: {e}", self.path.display()),
            )
        })?;
        decode_frame(
            &frame,
            format_args!("snapshot file {}", self.path.display()),
        )
        .map(Some)
    }
}

/// What the install marker records: the state the group is moving to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Installing {
    pub last_log_id: Option<LogId>,
    pub membership: StoredMembership,
}

/// The name of a file being received for `group` in session `session`.
pub(crate) fn receive_name(group: u64, session: u64) -> String {
    format!("g{group}-{session:016x}.part")
}

fn install_path(store: &NodeStore, group: u64) -> PathBuf {
    store.snap_dir().join(format!("g{group}.install"))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// At open: remove files of receptions that never finished, and install
/// files whose install finished (no marker left).
pub(crate) fn clean_dir(dir: &Path, smmeta: &Keyspace) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let stale = if name.ends_with(".part") {
            true
        } else if let Some(g) = name
            .strip_suffix(".install")
            .and_then(|n| n.strip_prefix('g'))
            .and_then(|n| n.parse::<u64>().ok())
        {
            smmeta
                .get(group_key(g, SM_INSTALLING))
                .map_err(to_io)?
                .is_none()
        } else {
            false
        };
        if stale {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Replace `group`'s state with `data` (see the module doc).
pub(crate) async fn install(
    store: &Arc<NodeStore>,
    group: u64,
    meta: &SnapshotMeta,
    data: SnapshotData,
) -> io::Result<u64> {
    let spooled = match data {
        SnapshotData::Spooled(s) => s,
        // A view of some store (openraft's own tests install one node's
        // snapshot on another): copied to a file first, so the install
        // below can always be redone from disk after a crash.
        SnapshotData::View(view) => {
            let dir = store.snap_dir().to_path_buf();
            blocking(move || {
                let mut spool = Spool::create(&dir, &receive_name(group, 0))?;
                let mut after: Option<Vec<u8>> = None;
                while let Some((frame, last)) = view.chunk(after.as_deref(), CHUNK_BYTES)? {
                    spool.append(&frame)?;
                    after = Some(last);
                }
                spool.finish()
            })
            .await?
        }
    };
    let bytes = spooled.bytes;
    let target = install_path(store, group);
    {
        let (from, to) = (spooled.take()?, target.clone());
        blocking(move || {
            fs::rename(&from, &to)?;
            sync_dir(to.parent().unwrap_or(Path::new(".")))
        })
        .await?;
    }
    let marker = Installing {
        last_log_id: meta.last_log_id,
        membership: meta.last_membership.clone(),
    };
    store
        .write_durable(vec![
            Op::Put(
                Space::SmMeta,
                group_key(group, SM_INSTALLING),
                encode(&marker)?,
            ),
            Op::Delete(Space::SmMeta, group_key(group, SM_APPLIED)),
            Op::Delete(Space::SmMeta, group_key(group, SM_MEMBERSHIP)),
        ])
        .await?;
    let crash = pact_common::faults::enabled("crash-mid-snapshot-install");
    roll_forward(store, group, &marker, &target, crash).await?;
    Ok(bytes)
}

/// Clear the group's pairs, load the file's, and finish the install
/// (`crash`: the `crash-mid-snapshot-install` fault, see [`load`]).
async fn roll_forward(
    store: &Arc<NodeStore>,
    group: u64,
    marker: &Installing,
    path: &Path,
    crash: bool,
) -> io::Result<()> {
    // Opened first: a missing file is found before anything is deleted.
    let frames = {
        let p = path.to_path_buf();
        blocking(move || Frames::open(&p)).await?
    };
    wipe_sm(store, group).await?;
    load(store, group, frames, crash).await?;
    store
        .write_durable(vec![
            Op::Put(
                Space::SmMeta,
                group_key(group, SM_APPLIED),
                encode(&marker.last_log_id)?,
            ),
            Op::Put(
                Space::SmMeta,
                group_key(group, SM_MEMBERSHIP),
                encode(&marker.membership)?,
            ),
            Op::Delete(Space::SmMeta, group_key(group, SM_INSTALLING)),
        ])
        .await?;
    let p = path.to_path_buf();
    blocking(move || match fs::remove_file(&p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    })
    .await
}

/// Delete the group's pairs in jobs of at most [`WIPE_KEYS`] keys (and
/// [`CHUNK_BYTES`] read), each its own batch on the writer, so other
/// groups' jobs run between them. The keys are read off the writer: no
/// one else writes this group's state during an install (openraft's state
/// machine task is in it; at start, Raft is not running yet).
pub(crate) async fn wipe_sm(store: &Arc<NodeStore>, group: u64) -> io::Result<()> {
    let mut after: Option<Vec<u8>> = None;
    loop {
        let s = store.clone();
        let a = after.take();
        let keys = blocking(move || {
            s.keys_sync(
                Space::Sm,
                a.as_deref(),
                &group_prefix(group),
                &group_end(group),
                WIPE_KEYS,
                CHUNK_BYTES,
            )
        })
        .await?;
        let Some(last) = keys.last().cloned() else {
            return Ok(());
        };
        let ops = keys.into_iter().map(|k| Op::Delete(Space::Sm, k)).collect();
        store.write_visible(ops).await?;
        after = Some(last);
    }
}

/// Write the file's frames, one job each; the next frame is read while
/// the writer commits the previous one, so at most two are in memory.
/// With `crash` (a fault injected by tests) the process aborts once the
/// first frame is durable: the install is cut short on disk.
async fn load(
    store: &Arc<NodeStore>,
    group: u64,
    mut frames: Frames,
    crash: bool,
) -> io::Result<()> {
    let mut pending: Option<tokio::sync::oneshot::Receiver<io::Result<()>>> = None;
    loop {
        let (f, next) = blocking(move || {
            let next = frames.next_frame()?;
            Ok((frames, next))
        })
        .await?;
        frames = f;
        if let Some(p) = pending.take() {
            p.await
                .map_err(|_| io::Error::other("storage writer stopped"))??;
            if crash {
                store.sync().await?;
                eprintln!(
                    "crash-mid-snapshot-install: aborting with group {group}'s install half done"
                );
                std::process::abort();
            }
        }
        let Some(pairs) = next else {
            return Ok(());
        };
        let ops = pairs
            .into_iter()
            .map(|p| Op::Put(Space::Sm, group_key(group, &p.key), p.value))
            .collect();
        pending = Some(store.submit_lazy(ops).await);
    }
}

/// What [`recover`] found of an interrupted install.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Recovered {
    /// None was under way.
    Nothing,
    /// One was, and it is finished now.
    Finished,
    /// One was, its file could not be read, and the group's replica was
    /// wiped (its vote with it): it must rejoin behind the gate, never
    /// as a fresh replica that may vote at once.
    Wiped,
}

/// At start, before the group's Raft instance: finish an install that a
/// crash interrupted (see the module doc).
pub(crate) async fn recover(store: &Arc<NodeStore>, group: u64) -> io::Result<Recovered> {
    let Some(b) = store
        .get(Space::SmMeta, group_key(group, SM_INSTALLING))
        .await?
    else {
        return Ok(Recovered::Nothing);
    };
    let marker: Installing = decode(&b, format_args!("install marker of group {group}"))?;
    let path = install_path(store, group);
    match roll_forward(store, group, &marker, &path, false).await {
        Ok(()) => {
            tracing::info!(
                group,
                "finished a snapshot install interrupted by a restart"
            );
            Ok(Recovered::Finished)
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::InvalidData
            ) && !store.is_poisoned() =>
        {
            tracing::error!(
                group,
                error = %e,
                "the snapshot file of an interrupted install cannot be read; wiping the \
                 group's replica to rejoin from its peers as after a lost disk"
            );
            wipe_group(store, group).await?;
            let p = path.clone();
            blocking(move || match fs::remove_file(&p) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            })
            .await?;
            Ok(Recovered::Wiped)
        }
        Err(e) => Err(e),
    }
}

/// Remove everything of `group` (state, log, vote, metadata) but how the
/// node came to host it (an operator's `Joined`, which a restart needs
/// to start the replica at all): the replica then starts empty. The
/// marker goes last, with the rest of the metadata, so a crash here wipes
/// again at the next start.
async fn wipe_group(store: &Arc<NodeStore>, group: u64) -> io::Result<()> {
    wipe_sm(store, group).await?;
    let range = |s| Op::DeleteRange(s, group_prefix(group).to_vec(), group_end(group));
    let hosting = group_key(group, crate::store::META_HOSTING);
    let mut past_hosting = hosting.clone();
    past_hosting.push(0);
    store
        .write_durable(vec![
            range(Space::Log),
            Op::DeleteRange(Space::Meta, group_prefix(group).to_vec(), hosting),
            Op::DeleteRange(Space::Meta, past_hosting, group_end(group)),
            range(Space::SmMeta),
        ])
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::impls::leader_id_adv::LeaderId;
    use openraft::{BasicNode, Membership};
    use std::collections::{BTreeMap, BTreeSet};

    const G: u64 = 7;

    #[test]
    fn policy_snapshots_wait_for_a_transfer_but_not_forever() {
        let out = Arc::new(Outbound::default());
        assert!(!out.defer(), "nothing is being sent");
        let sending = out.start();
        let second = out.start();
        for _ in 0..MAX_DEFERRED {
            assert!(out.defer());
        }
        // The log has grown by MAX_DEFERRED snapshots' worth: build.
        assert!(!out.defer());
        assert!(out.defer(), "and wait again after it");
        drop(sending);
        assert!(out.defer(), "one transfer still runs");
        drop(second);
        assert!(!out.defer());
        // The count starts over for the next transfer, even one that
        // starts before any build was due.
        let again = out.start();
        for _ in 0..MAX_DEFERRED / 2 {
            assert!(out.defer());
        }
        drop(again);
        let _next = out.start();
        for _ in 0..MAX_DEFERRED {
            assert!(out.defer());
        }
    }

    fn meta(index: u64) -> SnapshotMeta {
        let leader = LeaderId {
            term: 3,
            node_id: 1,
        };
        let log_id = LogId::new(leader, index);
        let nodes: BTreeMap<u64, BasicNode> = (1..=3)
            .map(|i| (i, BasicNode::new(format!("n{i}"))))
            .collect();
        let membership = Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes).unwrap();
        SnapshotMeta {
            last_log_id: Some(log_id),
            last_membership: StoredMembership::new(Some(log_id), membership),
        }
    }

    /// `n` pairs of `size`-byte values in `group`, keyed by index.
    async fn fill(store: &NodeStore, group: u64, n: u32, size: usize, tag: u8) {
        for part in (0..n).collect::<Vec<_>>().chunks(64) {
            let ops = part
                .iter()
                .map(|i| {
                    Op::Put(
                        Space::Sm,
                        group_key(group, &i.to_be_bytes()),
                        vec![tag.wrapping_add(*i as u8); size],
                    )
                })
                .collect();
            store.write_durable(ops).await.unwrap();
        }
    }

    fn pairs(store: &NodeStore, group: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
        store
            .range_sync(
                Space::Sm,
                &group_prefix(group),
                &group_end(group),
                usize::MAX,
                false,
            )
            .unwrap()
    }

    fn files(store: &NodeStore) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(store.snap_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// Send `view` the way the transport does: chunk by chunk into a
    /// spool in `to`'s snapshot directory. Returns the file and the frame
    /// sizes.
    fn transfer(view: &View, to: &NodeStore) -> (Spooled, Vec<usize>) {
        let mut spool = Spool::create(to.snap_dir(), &receive_name(G, 1)).unwrap();
        let mut sizes = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        while let Some((frame, last)) = view.chunk(after.as_deref(), CHUNK_BYTES).unwrap() {
            sizes.push(frame.len());
            spool.append(&frame).unwrap();
            after = Some(last);
        }
        (spool.finish().unwrap(), sizes)
    }

    async fn applied(store: &NodeStore, group: u64) -> Option<Vec<u8>> {
        store
            .get_sync(Space::SmMeta, &group_key(group, SM_APPLIED))
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_of_many_chunks_streams_and_installs_in_place_of_the_old_state() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = NodeStore::open(da.path()).unwrap();
        let b = NodeStore::open(db.path()).unwrap();
        // 24 MiB in 100 KiB values: six chunks at least.
        fill(&a, G, 240, 100 << 10, 1).await;
        // The follower has other, older data in the group (some keys the
        // snapshot lacks) and another group that must not be touched.
        fill(&b, G, 400, 1000, 9).await;
        fill(&b, G + 1, 50, 1000, 5).await;
        let other_before = pairs(&b, G + 1);

        let image = a.sm_snapshot_sync(G).unwrap();
        // Written after the view was taken: not part of the snapshot.
        fill(&a, G, 300, 10, 2).await;
        let (spooled, sizes) = transfer(&image.view, &b);
        assert!(sizes.len() >= 6, "{sizes:?}");
        for s in &sizes {
            // A chunk stops at the first pair that reaches the target.
            assert!(*s <= CHUNK_BYTES + (100 << 10) + 4096, "{s}");
        }
        let m = meta(500);
        let bytes = install(&b, G, &m, SnapshotData::Spooled(spooled))
            .await
            .unwrap();
        assert!(bytes as usize >= sizes.iter().sum::<usize>(), "{bytes}");

        let want: Vec<(Vec<u8>, Vec<u8>)> = (0u32..240)
            .map(|i| {
                (
                    group_key(G, &i.to_be_bytes()),
                    vec![1u8.wrapping_add(i as u8); 100 << 10],
                )
            })
            .collect();
        let got = pairs(&b, G);
        assert_eq!(got.len(), want.len());
        assert!(got == want, "installed state differs from the snapshot");
        assert_eq!(pairs(&b, G + 1), other_before);
        assert_eq!(applied(&b, G).await, Some(encode(&m.last_log_id).unwrap()));
        assert!(b
            .get_sync(Space::SmMeta, &group_key(G, SM_INSTALLING))
            .unwrap()
            .is_none());
        assert!(files(&b).is_empty(), "{:?}", files(&b));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_empty_snapshot_installs_as_an_empty_state() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = NodeStore::open(da.path()).unwrap();
        let b = NodeStore::open(db.path()).unwrap();
        fill(&b, G, 10, 10, 0).await;
        let (spooled, sizes) = transfer(&a.sm_snapshot_sync(G).unwrap().view, &b);
        assert!(sizes.is_empty());
        install(&b, G, &meta(3), SnapshotData::Spooled(spooled))
            .await
            .unwrap();
        assert!(pairs(&b, G).is_empty());
        assert!(applied(&b, G).await.is_some());
    }

    /// Crash in the middle of an install: the marker is written, the old
    /// state half deleted and the new one half loaded.
    async fn interrupted_install(dir: &Path) -> SnapshotMeta {
        let da = tempfile::tempdir().unwrap();
        let a = NodeStore::open(da.path()).unwrap();
        fill(&a, G, 100, 50 << 10, 3).await;
        let b = NodeStore::open(dir).unwrap();
        fill(&b, G, 300, 1000, 8).await;
        fill(&b, G + 1, 20, 100, 4).await;
        b.write_durable(vec![Op::Put(
            Space::SmMeta,
            group_key(G, SM_APPLIED),
            encode(&meta(100).last_log_id).unwrap(),
        )])
        .await
        .unwrap();
        let (spooled, _) = transfer(&a.sm_snapshot_sync(G).unwrap().view, &b);
        let m = meta(900);
        // What `install` does up to the marker...
        fs::rename(spooled.take().unwrap(), install_path(&b, G)).unwrap();
        let marker = Installing {
            last_log_id: m.last_log_id,
            membership: m.last_membership.clone(),
        };
        b.write_durable(vec![
            Op::Put(
                Space::SmMeta,
                group_key(G, SM_INSTALLING),
                encode(&marker).unwrap(),
            ),
            Op::Delete(Space::SmMeta, group_key(G, SM_APPLIED)),
            Op::Delete(Space::SmMeta, group_key(G, SM_MEMBERSHIP)),
        ])
        .await
        .unwrap();
        // ...then part of the wipe and part of the load, and the "crash".
        let keys: Vec<Op> = pairs(&b, G)
            .into_iter()
            .take(150)
            .map(|(k, _)| Op::Delete(Space::Sm, k))
            .collect();
        b.write_durable(keys).await.unwrap();
        let mut frames = Frames::open(&install_path(&b, G)).unwrap();
        let first = frames.next_frame().unwrap().unwrap();
        b.write_durable(
            first
                .into_iter()
                .map(|p| Op::Put(Space::Sm, group_key(G, &p.key), p.value))
                .collect(),
        )
        .await
        .unwrap();
        // A mix is never reported as applied.
        let mut sm = crate::state_machine::StateMachine::new(
            G,
            b.clone(),
            Arc::new(Nothing),
            Arc::default(),
        );
        let (applied, _) = openraft::storage::RaftStateMachine::applied_state(&mut sm)
            .await
            .unwrap();
        assert_eq!(applied, None);
        m
    }

    /// Open `dir` again once the last store on it has let go: its writer
    /// thread drops the database after the store handles are gone.
    async fn reopen(dir: &Path) -> Arc<NodeStore> {
        for _ in 0..100 {
            match NodeStore::open(dir) {
                Ok(s) => return s,
                Err(e) if e.to_string().contains("Locked") => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await
                }
                Err(e) => panic!("reopen: {e}"),
            }
        }
        panic!("the database stayed locked");
    }

    struct Nothing;
    impl crate::Apply for Nothing {
        fn apply(
            &self,
            _: &crate::StateView<'_>,
            _: u64,
            _: u64,
            _: &[u8],
        ) -> Result<crate::Applied, String> {
            Err("not used".into())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_install_cut_short_is_finished_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let m = interrupted_install(dir.path()).await;
        let b = reopen(dir.path()).await;
        let other = pairs(&b, G + 1);
        assert_eq!(recover(&b, G).await.unwrap(), Recovered::Finished);
        let got = pairs(&b, G);
        assert_eq!(got.len(), 100);
        for (i, (k, v)) in got.iter().enumerate() {
            assert_eq!(k, &group_key(G, &(i as u32).to_be_bytes()));
            assert_eq!(v, &vec![3u8.wrapping_add(i as u8); 50 << 10]);
        }
        assert_eq!(applied(&b, G).await, Some(encode(&m.last_log_id).unwrap()));
        assert_eq!(pairs(&b, G + 1), other);
        assert!(files(&b).is_empty(), "{:?}", files(&b));
        // Nothing left to do the next time.
        assert_eq!(recover(&b, G).await.unwrap(), Recovered::Nothing);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_install_whose_file_is_lost_wipes_the_group_to_rejoin() {
        let dir = tempfile::tempdir().unwrap();
        interrupted_install(dir.path()).await;
        fs::remove_file(dir.path().join(DIR).join(format!("g{G}.install"))).unwrap();
        let b = reopen(dir.path()).await;
        b.write_durable(vec![
            Op::Put(Space::Log, crate::store::log_key(G, 5), b"entry".to_vec()),
            Op::Put(
                Space::Meta,
                group_key(G, crate::store::META_VOTE),
                b"v".to_vec(),
            ),
            Op::Put(
                Space::Meta,
                group_key(G, crate::store::META_HOSTING),
                b"joined".to_vec(),
            ),
        ])
        .await
        .unwrap();
        let other = pairs(&b, G + 1);
        // Wiped: the caller must not take it for a fresh replica.
        assert_eq!(recover(&b, G).await.unwrap(), Recovered::Wiped);
        for space in [Space::Sm, Space::SmMeta, Space::Log, Space::Meta] {
            let left: Vec<_> = b
                .range_sync(space, &group_prefix(G), &group_end(G), 10, false)
                .unwrap()
                .into_iter()
                .filter(|(k, _)| *k != group_key(G, crate::store::META_HOSTING))
                .collect();
            assert!(left.is_empty(), "{space:?} still holds {left:?}");
        }
        // How the node came to host it stays, so a restart starts it.
        let hosting = b
            .range_sync(Space::Meta, &group_prefix(G), &group_end(G), 10, false)
            .unwrap();
        assert_eq!(hosting.len(), 1, "{hosting:?}");
        assert_eq!(pairs(&b, G + 1), other);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unfinished_receptions_and_finished_installs_leave_no_files() {
        let dir = tempfile::tempdir().unwrap();
        {
            let b = NodeStore::open(dir.path()).unwrap();
            let mut s = Spool::create(b.snap_dir(), &receive_name(G, 42)).unwrap();
            s.append(&encode(&Vec::<Pair>::new()).unwrap()).unwrap();
            std::mem::forget(s); // as if killed mid-transfer
            fs::write(b.snap_dir().join("g9.install"), b"done").unwrap();
            assert_eq!(files(&b).len(), 2);
        }
        let b = reopen(dir.path()).await;
        assert!(files(&b).is_empty(), "{:?}", files(&b));
        // A dropped, unfinished spool removes its file too.
        drop(Spool::create(b.snap_dir(), &receive_name(G, 43)).unwrap());
        assert!(files(&b).is_empty());
    }

    #[test]
    fn a_chunk_that_does_not_decode_or_is_too_large_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::create(dir.path(), "x.part").unwrap();
        let e = s.append(b"\x01junk").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let e = s.append(&vec![0u8; MAX_FRAME_BYTES + 1]).unwrap_err();
        assert!(e.to_string().contains("exceeds the limit"), "{e}");
        assert_eq!(s.bytes(), 0);
    }

    /// A follower that refused a snapshot for want of room is sent none
    /// for `ROOM_BACKOFF`, and then again; others are not held back.
    #[test]
    fn a_follower_without_room_is_sent_no_snapshot_for_a_while() {
        let out = Outbound::default();
        let t0 = std::time::Instant::now();
        assert_eq!(out.room_wait(2, t0), None);
        out.refused_for_room(2, t0);
        assert_eq!(out.room_wait(2, t0), Some(ROOM_BACKOFF));
        let later = t0 + ROOM_BACKOFF / 2;
        assert_eq!(out.room_wait(2, later), Some(ROOM_BACKOFF / 2));
        assert_eq!(out.room_wait(3, later), None);
        assert_eq!(out.room_wait(2, t0 + ROOM_BACKOFF), None);
        // Forgotten once over: a new refusal starts a new wait.
        out.refused_for_room(2, t0 + ROOM_BACKOFF * 2);
        assert!(out.room_wait(2, t0 + ROOM_BACKOFF * 2).is_some());
    }

    #[test]
    fn a_chunk_that_would_eat_into_the_disk_reserve_is_refused_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let frame = encode(&vec![(b"k".to_vec(), vec![7u8; 1000])]).unwrap();
        let free = available(dir.path()).unwrap();
        assert!(free > 0, "the test's file system has room");
        // A reserve the file system can keep: the chunk is stored.
        let roomy = Inbox {
            dir: dir.path().to_path_buf(),
            reserve: 1 << 20,
        };
        let mut s = roomy.create("ok.part").unwrap();
        s.append(&frame).unwrap();
        assert_eq!(s.bytes(), frame.len() as u64 + 4);
        // A reserve as large as the free space: refused, nothing written,
        // and dropping the transfer removes its file.
        let tight = Inbox {
            dir: dir.path().to_path_buf(),
            reserve: free,
        };
        let mut s = tight.create("full.part").unwrap();
        let e = s.append(&frame).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull, "{e}");
        assert!(e.to_string().contains("disk_reserve_mb"), "{e}");
        assert_eq!(s.bytes(), 0);
        let path = dir.path().join("full.part");
        assert_eq!(fs::metadata(&path).unwrap().len(), 0);
        drop(s);
        assert!(!path.exists(), "a dropped transfer leaves no file");
    }
}
