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
}

impl Spool {
    /// A new, empty file `name` in `dir`.
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
        })
    }

    /// Append a frame that decodes (checked here, so a file that was
    /// accepted whole can be installed whole).
    pub(crate) fn append(&mut self, frame: &[u8]) -> io::Result<()> {
        decode_frame(
            frame,
            format_args!("snapshot chunk for {}", self.path.display()),
        )?;
        let len = u32::try_from(frame.len()).map_err(to_io)?;
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("snapshot file already finished"))?;
        file.write_all(&len.to_le_bytes())?;
        file.write_all(frame)?;
        self.bytes += 4 + frame.len() as u64;
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
    roll_forward(store, group, &marker, &target).await?;
    Ok(bytes)
}

/// Clear the group's pairs, load the file's, and finish the install.
async fn roll_forward(
    store: &Arc<NodeStore>,
    group: u64,
    marker: &Installing,
    path: &Path,
) -> io::Result<()> {
    // Opened first: a missing file is found before anything is deleted.
    let frames = {
        let p = path.to_path_buf();
        blocking(move || Frames::open(&p)).await?
    };
    wipe_sm(store, group).await?;
    load(store, group, frames).await?;
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
async fn wipe_sm(store: &Arc<NodeStore>, group: u64) -> io::Result<()> {
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
async fn load(store: &Arc<NodeStore>, group: u64, mut frames: Frames) -> io::Result<()> {
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
        }
        let Some(pairs) = next else {
            return Ok(());
        };
        let ops = pairs
            .into_iter()
            .map(|p| Op::Put(Space::Sm, group_key(group, &p.key), p.value))
            .collect();
        pending = Some(store.submit_lazy(ops));
    }
}

/// At start, before the group's Raft instance: finish an install that a
/// crash interrupted (see the module doc). Returns whether there was one.
pub(crate) async fn recover(store: &Arc<NodeStore>, group: u64) -> io::Result<bool> {
    let Some(b) = store
        .get(Space::SmMeta, group_key(group, SM_INSTALLING))
        .await?
    else {
        return Ok(false);
    };
    let marker: Installing = decode(&b, format_args!("install marker of group {group}"))?;
    let path = install_path(store, group);
    match roll_forward(store, group, &marker, &path).await {
        Ok(()) => {
            tracing::info!(
                group,
                "finished a snapshot install interrupted by a restart"
            );
            Ok(true)
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
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

/// Remove everything of `group` (state, log, vote, metadata): the replica
/// then starts empty. The marker goes last, with the rest of the
/// metadata, so a crash here wipes again at the next start.
async fn wipe_group(store: &Arc<NodeStore>, group: u64) -> io::Result<()> {
    wipe_sm(store, group).await?;
    let range = |s| Op::DeleteRange(s, group_prefix(group).to_vec(), group_end(group));
    store
        .write_durable(vec![
            range(Space::Log),
            range(Space::Meta),
            range(Space::SmMeta),
        ])
        .await
}
