//! Backup and restore of a cluster's data.
//!
//! A backup is a consistent cut: every key and value of every shard as one
//! read-only transaction saw them, so it sits at one point of the
//! transaction order (strict serializability), with no transaction half
//! in. It runs while the cluster serves: the transaction takes shared
//! range locks page by page, so writers of keys it has read wait for it
//! (or, older than it, wound it, and it starts over, keeping its age, so
//! it soon outranks every writer). Writers never see anything of it.
//!
//! On disk, a backup directory holds `data.pact` (records `[u32 key
//! length][key][u32 value length][value]`, big-endian lengths, in key
//! order) and `manifest.txt` (`key = value` lines: the format version,
//! the transaction id, the record and byte counts, and a CRC-32 of
//! `data.pact`). The manifest is written last, by rename, so a directory
//! without one is an unfinished backup and is refused by restore; so is
//! one whose data does not match its manifest, or of a format version this
//! build does not know (the error names it).
//!
//! Restore loads a backup into a cluster with plain per-shard write
//! batches. It refuses a cluster that holds any key unless forced, checks
//! the whole file against the manifest before writing anything, and is
//! not atomic: a restore cut short leaves part of the data, and running it
//! again with `force` finishes it (every write is a put of the backed-up
//! value). Transaction records are not backed up: the restored cluster's
//! history starts at the restore.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{Client, ClientError, Mutation, MAX_ATTEMPTS};
use pact_common::{AbortKind, ShardId, TxnId};

/// The on-disk format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
const DATA: &str = "data.pact";
const MANIFEST: &str = "manifest.txt";
/// Keys read per scan of the backup transaction.
const PAGE: u32 = 1000;
/// A restore batch goes out at this many writes or bytes, whichever first.
const BATCH_OPS: usize = 256;
const BATCH_BYTES: usize = 512 * 1024;

/// What a backup wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupSummary {
    /// The read-only transaction whose view the backup is.
    pub txn: TxnId,
    pub records: u64,
    /// Bytes of keys and values.
    pub bytes: u64,
    /// Attempts it took (an attempt starts over when a writer older than
    /// it takes one of its locks).
    pub attempts: u32,
}

/// What a restore loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreSummary {
    /// The transaction the backup was taken in.
    pub txn: String,
    pub records: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Manifest {
    format: u32,
    txn: String,
    records: u64,
    bytes: u64,
    crc32: u32,
}

impl Manifest {
    fn render(&self) -> String {
        format!(
            "# Pact backup (see `txn restore`)\nformat = {}\ntxn = {}\nrecords = {}\nbytes = {}\ncrc32 = {:08x}\n",
            self.format, self.txn, self.records, self.bytes, self.crc32
        )
    }

    fn parse(text: &str) -> Result<Manifest, String> {
        let mut fields = std::collections::BTreeMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| format!("not `key = value`: {line:?}"))?;
            fields.insert(k.trim().to_string(), v.trim().to_string());
        }
        let get = |k: &str| {
            fields
                .get(k)
                .cloned()
                .ok_or_else(|| format!("no `{k}` in the manifest"))
        };
        let num = |k: &str| -> Result<u64, String> {
            get(k)?
                .parse()
                .map_err(|_| format!("`{k}` is not a number"))
        };
        let format = num("format")?;
        if format != u64::from(FORMAT_VERSION) {
            return Err(format!(
                "backup format version {format}; this build reads version {FORMAT_VERSION} only"
            ));
        }
        Ok(Manifest {
            format: FORMAT_VERSION,
            txn: get("txn")?,
            records: num("records")?,
            bytes: num("bytes")?,
            crc32: u32::from_str_radix(&get("crc32")?, 16)
                .map_err(|_| "`crc32` is not 8 hex digits".to_string())?,
        })
    }
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> ClientError {
    ClientError::InvalidInput(format!("{what} {}: {e}", path.display()))
}

/// One record's encoding.
fn record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(8 + key.len() + value.len());
    r.extend_from_slice(&(key.len() as u32).to_be_bytes());
    r.extend_from_slice(key);
    r.extend_from_slice(&(value.len() as u32).to_be_bytes());
    r.extend_from_slice(value);
    r
}

/// The records of a data file, checked against the limits every key and
/// value must meet (so a damaged length cannot ask for gigabytes).
fn records(data: &[u8]) -> impl Iterator<Item = Result<(&[u8], &[u8]), String>> {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        if at >= data.len() {
            return None;
        }
        let mut field = |max: usize, what: &str| -> Result<&[u8], String> {
            let len = data
                .get(at..at + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .ok_or_else(|| format!("{what} length cut off at byte {at}"))?;
            if len > max {
                return Err(format!(
                    "{what} of {len} bytes at byte {at} (at most {max})"
                ));
            }
            let v = data
                .get(at + 4..at + 4 + len)
                .ok_or_else(|| format!("{what} cut off at byte {at}"))?;
            at += 4 + len;
            Ok(v)
        };
        let r = field(pact_common::MAX_KEY_BYTES, "key")
            .and_then(|k| field(pact_common::MAX_VALUE_BYTES, "value").map(|v| (k, v)));
        if r.is_err() {
            // Stop after the first damage.
            at = data.len();
        }
        Some(r)
    })
}

impl Client {
    /// Write a consistent cut of every shard into `dir` (created if
    /// missing; an existing backup there is refused). `progress` is called
    /// with the records read so far, after every page.
    pub async fn backup(
        &self,
        dir: &Path,
        mut progress: impl FnMut(u64),
    ) -> Result<BackupSummary, ClientError> {
        if dir.join(MANIFEST).exists() {
            return Err(ClientError::InvalidInput(format!(
                "{} already holds a backup; use an empty directory",
                dir.display()
            )));
        }
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| io_err("cannot create", dir, e))?;
        let tmp = dir.join(format!("{DATA}.partial"));
        let mut last = None;
        let mut priority = None;
        for attempt in 1..=MAX_ATTEMPTS {
            let begun = match priority {
                None => self.begin().await,
                Some(p) => self.begin_retry(p).await,
            };
            let mut t = match begun {
                Ok(t) => t,
                Err(e @ (ClientError::Aborted(_) | ClientError::Unavailable(_))) => {
                    last = Some(e);
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            // Later attempts keep the first one's age: it soon outranks
            // every writer, which then waits for it instead of wounding it.
            priority.get_or_insert(t.priority());
            let file = tokio::fs::File::create(&tmp)
                .await
                .map_err(|e| io_err("cannot write", &tmp, e))?;
            let mut out = tokio::io::BufWriter::new(file);
            let mut crc = crc32fast::Hasher::new();
            let (mut n, mut bytes) = (0u64, 0u64);
            let mut start: Vec<u8> = Vec::new();
            let read = loop {
                let page = match t.scan(&start, None, PAGE).await {
                    Ok(p) => p,
                    Err(e) => break Err(e),
                };
                for (k, v) in &page {
                    let r = record(k, v);
                    crc.update(&r);
                    out.write_all(&r)
                        .await
                        .map_err(|e| io_err("cannot write", &tmp, e))?;
                    n += 1;
                    bytes += (k.len() + v.len()) as u64;
                }
                progress(n);
                match page.last() {
                    Some((k, _)) if page.len() >= PAGE as usize => {
                        // The next key after the last one read.
                        start = k.clone();
                        start.push(0);
                    }
                    _ => break Ok(()),
                }
            };
            let committed = match read {
                Ok(()) => t.commit().await,
                Err(e) => {
                    t.rollback().await;
                    Err(e)
                }
            };
            match committed {
                Ok(()) => {
                    out.flush()
                        .await
                        .map_err(|e| io_err("cannot write", &tmp, e))?;
                    out.get_ref()
                        .sync_all()
                        .await
                        .map_err(|e| io_err("cannot sync", &tmp, e))?;
                    drop(out);
                    let data = dir.join(DATA);
                    tokio::fs::rename(&tmp, &data)
                        .await
                        .map_err(|e| io_err("cannot rename", &tmp, e))?;
                    let manifest = Manifest {
                        format: FORMAT_VERSION,
                        txn: t.id().to_string(),
                        records: n,
                        bytes,
                        crc32: crc.finalize(),
                    };
                    write_synced(&dir.join(MANIFEST), manifest.render().as_bytes()).await?;
                    return Ok(BackupSummary {
                        txn: t.id(),
                        records: n,
                        bytes,
                        attempts: attempt,
                    });
                }
                // Wounded by an older writer, or its coordinator failed
                // over: start over (the partial file is rewritten).
                Err(e @ (ClientError::Aborted(_) | ClientError::Unavailable(_))) => {
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        let why = last.map_or("no attempt made".to_string(), |e| e.to_string());
        Err(ClientError::Aborted(pact_common::Abort::new(
            AbortKind::Conflict,
            format!("backup gave up after {MAX_ATTEMPTS} attempts; last: {why}"),
        )))
    }

    /// Load the backup in `dir` into this cluster: refused if the cluster
    /// holds any key (unless `force`), or if the backup is unfinished,
    /// damaged, or of an unknown format version; checked whole before
    /// anything is written. `progress` is called with the records written
    /// so far.
    pub async fn restore(
        &self,
        dir: &Path,
        force: bool,
        mut progress: impl FnMut(u64),
    ) -> Result<RestoreSummary, ClientError> {
        let mpath = dir.join(MANIFEST);
        let text = tokio::fs::read_to_string(&mpath).await.map_err(|e| {
            ClientError::InvalidInput(format!(
                "no finished backup in {} (reading {MANIFEST}: {e})",
                dir.display()
            ))
        })?;
        let manifest = Manifest::parse(&text)
            .map_err(|e| ClientError::InvalidInput(format!("{}: {e}", mpath.display())))?;
        let dpath: PathBuf = dir.join(DATA);
        let mut data = Vec::new();
        tokio::fs::File::open(&dpath)
            .await
            .map_err(|e| io_err("cannot read", &dpath, e))?
            .read_to_end(&mut data)
            .await
            .map_err(|e| io_err("cannot read", &dpath, e))?;
        let damaged = |why: String| {
            ClientError::InvalidInput(format!(
                "{} does not match its manifest: {why}",
                dpath.display()
            ))
        };
        if crc32fast::hash(&data) != manifest.crc32 {
            return Err(damaged("CRC-32 differs".into()));
        }
        let (mut n, mut bytes) = (0u64, 0u64);
        for r in records(&data) {
            let (k, v) = r.map_err(damaged)?;
            n += 1;
            bytes += (k.len() + v.len()) as u64;
        }
        if (n, bytes) != (manifest.records, manifest.bytes) {
            return Err(damaged(format!(
                "{n} records of {bytes} bytes, the manifest says {} of {}",
                manifest.records, manifest.bytes
            )));
        }
        if !force && !self.scan(b"", None, 1).await?.is_empty() {
            return Err(ClientError::InvalidInput(
                "the cluster already holds data; restore into an empty cluster (or force it)"
                    .into(),
            ));
        }
        // Batches are grouped by shard, so by the shards' own descriptors
        // (a config edited since the cluster's first start routes
        // otherwise, and a batch grouped by it would span shards). A
        // refresh that fails leaves the config's map: writes then refresh
        // it themselves.
        let _ = self.refresh_map(&self.shard_map()).await;
        let mut batches: std::collections::BTreeMap<ShardId, (Vec<Mutation>, usize)> =
            Default::default();
        let mut written = 0u64;
        for r in records(&data) {
            let (k, v) = r.map_err(damaged)?;
            let shard = self.shard_for_key(k);
            let (batch, size) = batches.entry(shard).or_default();
            *size += k.len() + v.len();
            batch.push((k.to_vec(), Some(v.to_vec())));
            if batch.len() >= BATCH_OPS || *size >= BATCH_BYTES {
                let full = std::mem::take(batch);
                *size = 0;
                written += full.len() as u64;
                self.write(full).await?;
                progress(written);
            }
        }
        for (_, (batch, _)) in batches {
            if !batch.is_empty() {
                written += batch.len() as u64;
                self.write(batch).await?;
            }
        }
        progress(written);
        Ok(RestoreSummary {
            txn: manifest.txn,
            records: n,
            bytes,
        })
    }
}

async fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), ClientError> {
    let tmp = path.with_extension("partial");
    let mut f = tokio::fs::File::create(&tmp)
        .await
        .map_err(|e| io_err("cannot write", &tmp, e))?;
    f.write_all(bytes)
        .await
        .map_err(|e| io_err("cannot write", &tmp, e))?;
    f.sync_all()
        .await
        .map_err(|e| io_err("cannot sync", &tmp, e))?;
    tokio::fs::rename(&tmp, path)
        .await
        .map_err(|e| io_err("cannot rename", &tmp, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_round_trips_and_refuses_other_versions() {
        let m = Manifest {
            format: FORMAT_VERSION,
            txn: "4-1-77".into(),
            records: 3,
            bytes: 40,
            crc32: 0xdead_beef,
        };
        assert_eq!(Manifest::parse(&m.render()).unwrap(), m);
        let newer = m.render().replace("format = 1", "format = 2");
        let e = Manifest::parse(&newer).unwrap_err();
        assert!(e.contains("version 2"), "{e}");
        assert!(Manifest::parse("format = 1\n").is_err(), "fields missing");
        assert!(Manifest::parse("garbage").is_err());
    }

    #[test]
    fn records_round_trip_and_damage_is_caught() {
        let mut data = record(b"a", b"1");
        data.extend(record(b"bb", b""));
        let got: Vec<_> = records(&data).collect::<Result<_, _>>().unwrap();
        assert_eq!(got, vec![(&b"a"[..], &b"1"[..]), (&b"bb"[..], &b""[..])]);
        // Cut off, or a length past every limit: an error, not a panic.
        assert!(records(&data[..data.len() - 1]).any(|r| r.is_err()));
        let mut huge = data.clone();
        huge[0] = 0xff;
        assert!(records(&huge).any(|r| r.is_err()));
        assert_eq!(records(&[]).count(), 0);
    }
}
