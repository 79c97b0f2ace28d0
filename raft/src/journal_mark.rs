//! Pact's own record of how many fsync rounds reached the disk, so that a
//! journal fjall cut short at open is told apart: torn tail, or lost
//! durable data.
//!
//! fjall replays its journal at open and cuts off everything from the
//! first batch it cannot decode: an incomplete last batch (what a crash in
//! the middle of a write leaves), but also a complete batch whose framing
//! bytes were damaged later (its end marker's magic, a tag). It cannot
//! tell the two apart and reports neither (and its journals are
//! preallocated, so their length says nothing about what was written).
//! For Raft they differ: a crash's torn tail holds only writes after the
//! last fsync, which were never acknowledged; a damaged fsynced batch may
//! hold a log entry this node acknowledged or the vote it granted, and a
//! node that forgot either can help commit a conflicting entry or vote
//! twice in a term.
//!
//! So the storage writer numbers its fsync rounds. The last batch of every
//! round, right before the fsync, puts the round's number under
//! [`ROUND_KEY`] in `meta`; once the fsync returned, it rewrites the
//! number in the file `fsync.mark` (one fixed-size record in place,
//! checksummed, *not* fsynced itself: after a power cut it may be older
//! than the last fsync, which only weakens the check below, never makes
//! it wrong). At open, the round fjall recovered must be at least the
//! marked one; if it is lower, a batch that was fsynced is gone, and the
//! node refuses to start. A cut past the last round's marker (a torn tail)
//! loses nothing acknowledged, and the node starts.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The mark's file, in the data directory.
pub(crate) const MARK_FILE: &str = "fsync.mark";

/// The key of the round number in `meta`: eight 0xff bytes first, so it
/// lies past every group's range, like the format record.
pub(crate) const ROUND_KEY: &[u8] = b"\xff\xff\xff\xff\xff\xff\xff\xfffsync-round";

const TAG: &str = "pact-fsync-mark-1";
/// Every record is exactly this long (space-padded), so rewriting it in
/// place never leaves a longer old record's tail behind.
const RECORD_LEN: usize = 64;

/// FNV-1a: enough to reject a record torn or garbled on disk.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn encode(round: u64) -> Vec<u8> {
    let body = format!("{TAG} {round}");
    let mut rec = format!("{body} {:016x}", checksum(body.as_bytes())).into_bytes();
    rec.resize(RECORD_LEN - 1, b' ');
    rec.push(b'\n');
    rec
}

/// The round in `bytes`, or None if it is not a whole, intact record.
fn decode(bytes: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(bytes).ok()?.trim_end();
    let (body, sum) = text.rsplit_once(' ')?;
    if u64::from_str_radix(sum, 16).ok()? != checksum(body.as_bytes()) {
        return None;
    }
    let (tag, round) = body.split_once(' ')?;
    if tag != TAG {
        return None;
    }
    round.parse().ok()
}

/// The last round recorded as fsynced in `dir`; None if there is no
/// readable mark (a directory from before the mark existed, or a record
/// torn by a power cut): then nothing can be checked.
pub(crate) fn read(dir: &Path) -> Option<u64> {
    decode(&std::fs::read(dir.join(MARK_FILE)).ok()?)
}

/// The round number as stored under [`ROUND_KEY`].
pub(crate) fn round_value(round: u64) -> Vec<u8> {
    round.to_be_bytes().to_vec()
}

pub(crate) fn parse_round(v: &[u8]) -> io::Result<u64> {
    let b: [u8; 8] = v.try_into().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("fsync round record of {} bytes, not 8", v.len()),
        )
    })?;
    Ok(u64::from_be_bytes(b))
}

/// Why the store must not open: the journal recovered only up to round
/// `recovered`, while round `marked` had been fsynced. None if it is
/// sound.
pub(crate) fn check(recovered: u64, marked: Option<u64>) -> Option<String> {
    let marked = marked?;
    (recovered < marked).then(|| {
        format!(
            "its journal replays only up to fsync round {recovered}, but round {marked} had \
             been fsynced: a batch written and fsynced before was damaged later and cut off \
             at recovery, so entries this node acknowledged, or its vote, may be gone"
        )
    })
}

/// Rewrites the mark after each fsync round (storage writer thread only).
pub(crate) struct MarkWriter {
    file: File,
}

impl MarkWriter {
    pub(crate) fn open(dir: &Path) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(MARK_FILE))?;
        Ok(MarkWriter { file })
    }

    /// Record that `round` is fsynced. Call only once its fsync returned.
    pub(crate) fn record(&mut self, round: u64) -> io::Result<()> {
        self.file.write_all_at(&encode(round), 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_damage_is_rejected() {
        let rec = encode(123_456);
        assert_eq!(rec.len(), RECORD_LEN);
        assert_eq!(decode(&rec), Some(123_456));
        let mut bad = rec.clone();
        bad[TAG.len() + 1] = b'9';
        assert_eq!(decode(&bad), None);
        assert_eq!(decode(&rec[..20]), None);
        assert_eq!(decode(b""), None);
        assert_eq!(parse_round(&round_value(7)).unwrap(), 7);
        assert!(parse_round(b"short").is_err());
    }

    #[test]
    fn a_journal_behind_its_mark_lost_fsynced_batches() {
        assert_eq!(check(10, Some(10)), None);
        assert_eq!(check(11, Some(10)), None, "a mark may lag a power cut");
        assert_eq!(check(3, None), None, "no mark: nothing to check");
        let why = check(9, Some(10)).unwrap();
        assert!(why.contains("round 9") && why.contains("round 10"), "{why}");
    }
}
