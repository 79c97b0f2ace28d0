//! The data commands: `get`, `put`, `del`, `scan`.
//!
//! Listings (`scan`, `get --prefix`) read page by page and stop at
//! `--limit` pairs (or go on to the end with `--all`). A page asks for one
//! pair more than it shows: when that one exists, the listing says the
//! range goes on and names the key to continue from, instead of stopping
//! silently. Pages (like a scan's parts on different shards) are read one
//! after another, not as one snapshot; a transaction gives that.
//!
//! A range delete (`del --prefix`, `del --range`) is one transaction: it
//! scans the range in the transaction (which keeps other writers out of
//! it until the end), deletes every key it finds, and commits; all or
//! nothing, across shards. It is bounded by what one transaction may write
//! on a shard ([`MAX_TXN_BYTES`], where a delete counts its key's bytes):
//! past it the transaction is rolled back before the commit, and the error
//! says so.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use pact_client::{Client, ClientError};
use pact_common::{ShardId, TxnId, MAX_TXN_BYTES, MAX_VALUE_BYTES};
use serde_json::{Map, Value};

use crate::output::{Codec, Style};

/// Where a command that runs a transaction got to, for what to say if the
/// deadline cuts it off.
#[derive(Debug, Default)]
pub struct Progress {
    /// The latest attempt's transaction (the earlier ones aborted).
    pub began: Cell<Option<TxnId>>,
    /// A range delete has read and deleted its keys: the commit is next,
    /// or under way.
    pub committing: Arc<AtomicBool>,
}

/// How a listing is cut and shown.
#[derive(clap::Args, Debug, Clone)]
pub struct ListOpts {
    /// Show at most N pairs. When more follow, stderr says so and names
    /// the next key (in JSON: "more" and "next"); --from continues there.
    #[arg(long, value_name = "N", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: u64,
    /// Show every pair of the range, reading page after page.
    #[arg(long, conflicts_with = "limit")]
    pub all: bool,
    /// Pairs asked for per request.
    #[arg(long, value_name = "N", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=9999))]
    pub page_size: u32,
    /// Start at KEY instead of at the range's start: where a listing cut
    /// off by --limit stopped.
    #[arg(long, value_name = "KEY")]
    pub from: Option<String>,
    /// Print keys only.
    #[arg(long, conflicts_with = "count_only")]
    pub keys_only: bool,
    /// Print only how many pairs there are (up to --limit; all with --all).
    #[arg(long)]
    pub count_only: bool,
}

/// Read a key, or every key under a prefix.
///
/// Text output: the value alone (escaped: see `txn --help`); with
/// --prefix, one `KEY = VALUE` line per pair, as `scan`. A missing key
/// exits 1.
#[derive(clap::Args, Debug, Clone)]
pub struct GetArgs {
    /// The key.
    #[arg(required_unless_present = "prefix",
          conflicts_with_all = ["prefix", "limit", "all", "page_size", "from", "keys_only", "count_only"])]
    pub key: Option<String>,
    /// Every key that starts with P, with its value: `scan --prefix P`.
    #[arg(long, value_name = "P")]
    pub prefix: Option<String>,
    #[command(flatten)]
    pub list: ListOpts,
}

/// List the pairs in [START, END) across all shards, in key order.
///
/// One `KEY = VALUE` line per pair (escaped: see `txn --help`). Stops at
/// --limit (1000 by default) and then says on stderr which key comes next;
/// --all reads to the end. JSON: {"pairs": [{"key", "value"}...],
/// "count", "more", "next"}.
#[derive(clap::Args, Debug, Clone)]
pub struct ScanArgs {
    /// First key (default: the start of the key space).
    #[arg(conflicts_with = "prefix")]
    pub start: Option<String>,
    /// End, excluded (default: the end of the key space).
    pub end: Option<String>,
    /// Every key that starts with P, instead of START and END.
    #[arg(long, value_name = "P")]
    pub prefix: Option<String>,
    #[command(flatten)]
    pub list: ListOpts,
}

/// Write a key.
///
/// The value is the argument, all of stdin (`-`) or a file (--file); stdin
/// and files are taken byte for byte (never decoded by --hex/--base64), up
/// to the 1 MiB value limit. To store the one-character value `-`, use
/// --file or --hex 2d.
#[derive(clap::Args, Debug, Clone)]
pub struct PutArgs {
    /// The key.
    pub key: String,
    /// The value, or `-` to read it from stdin.
    #[arg(
        required_unless_present = "file",
        conflicts_with = "file",
        allow_hyphen_values = true
    )]
    pub value: Option<String>,
    /// Read the value from this file.
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
}

/// Delete a key, or every key under a prefix or in a range.
///
/// --prefix and --range delete in one transaction across shards: the keys
/// the range holds when it commits are all deleted, or (on an error, an
/// abort, a limit) none. Writers into the range wait until it ends. Bound:
/// a transaction writes at most 8 MiB on each shard, and a delete counts
/// its key's bytes (so about 2,000 keys of 4 KiB, or 500,000 of 16 bytes,
/// on one shard); past that nothing is deleted and the error says so.
/// Large ranges take time: raise --timeout.
#[derive(clap::Args, Debug, Clone)]
pub struct DelArgs {
    /// The key.
    #[arg(required_unless_present_any = ["prefix", "range"],
          conflicts_with_all = ["prefix", "range"])]
    pub key: Option<String>,
    /// Delete every key that starts with P (all keys if P is empty).
    #[arg(long, value_name = "P", conflicts_with = "range")]
    pub prefix: Option<String>,
    /// Delete every key in [START, END).
    #[arg(long, num_args = 2, value_names = ["START", "END"])]
    pub range: Option<Vec<String>>,
}

impl DelArgs {
    /// Deletes a range (in a transaction) rather than one key.
    pub fn is_range(&self) -> bool {
        self.key.is_none()
    }
}

/// The end of the range of keys that start with `p`: `None` (no end) if
/// every byte of `p` is 0xff, as for the empty prefix.
pub fn prefix_end(p: &[u8]) -> Option<Vec<u8>> {
    let mut e = p.to_vec();
    while let Some(last) = e.pop() {
        if last < 0xff {
            e.push(last + 1);
            return Some(e);
        }
    }
    None
}

/// A range from a prefix, or from a start and an optional end.
fn range(
    codec: Codec,
    prefix: Option<&str>,
    start: Option<&str>,
    end: Option<&str>,
) -> Result<(Vec<u8>, Option<Vec<u8>>), ClientError> {
    if let Some(p) = prefix {
        let p = codec.decode(p, "prefix")?;
        let end = prefix_end(&p);
        return Ok((p, end));
    }
    let start = match start {
        Some(s) => codec.decode(s, "start key")?,
        None => Vec::new(),
    };
    let end = end.map(|e| codec.decode(e, "end key")).transpose()?;
    Ok((start, end))
}

pub async fn get(client: &Client, style: Style, a: &GetArgs) -> Result<u8, ClientError> {
    let Some(key) = &a.key else {
        let (start, end) = range(style.codec, a.prefix.as_deref(), None, None)?;
        return list(client, style, start, end, &a.list).await;
    };
    let key = style.codec.decode(key, "key")?;
    let v = client.get(&key).await?;
    if style.json {
        outln!("{}", style.codec.lookup(&key, v.as_deref()));
    } else if let Some(v) = &v {
        outln!("{}", style.codec.value(v));
    } else {
        errln!("(not found)");
    }
    Ok(if v.is_some() { 0 } else { 1 })
}

pub async fn scan(client: &Client, style: Style, a: &ScanArgs) -> Result<u8, ClientError> {
    let (start, end) = range(
        style.codec,
        a.prefix.as_deref(),
        a.start.as_deref(),
        a.end.as_deref(),
    )?;
    list(client, style, start, end, &a.list).await
}

/// What a listing prints, as it goes: the pairs stream out page by page,
/// in text and in JSON alike (a JSON document opened at the first page
/// and closed at the end, with an error inside if one cut it short).
struct Printer {
    style: Style,
    keys_only: bool,
    count_only: bool,
    count: u64,
}

impl Printer {
    fn streams_json(&self) -> bool {
        self.style.json && !self.count_only
    }

    fn open(&self) {
        if self.streams_json() {
            crate::output::write_out(format_args!("{{\"pairs\":["));
        }
    }

    fn pair(&mut self, k: &[u8], v: &[u8]) {
        self.count += 1;
        if self.count_only {
            return;
        }
        let c = self.style.codec;
        if self.style.json {
            let sep = if self.count == 1 { "\n" } else { ",\n" };
            let v = (!self.keys_only).then_some(v);
            crate::output::write_out(format_args!("{sep}{}", c.pair(k, v)));
        } else if self.keys_only {
            outln!("{}", c.key(k));
        } else {
            outln!("{} = {}", c.key(k), c.value(v));
        }
    }

    /// The tail: the count, and whether and where the range goes on.
    fn tail(&self, next: Option<&[u8]>) -> Map<String, Value> {
        let mut o = Map::new();
        o.insert("count".into(), self.count.into());
        o.insert("more".into(), next.is_some().into());
        match next {
            Some(k) => self.style.codec.field(&mut o, "next", k),
            None => {
                o.insert("next".into(), Value::Null);
            }
        }
        o
    }

    fn close(&self, next: Option<&[u8]>) {
        let tail = Value::Object(self.tail(next)).to_string();
        if self.streams_json() {
            // `tail` is an object: splice its fields after the array.
            outln!("\n],{}", &tail[1..]);
        } else if self.style.json {
            outln!("{tail}");
        } else {
            if self.count_only {
                outln!("{}", self.count);
            }
            if let Some(k) = next {
                let k = self.style.codec.key(k);
                errln!(
                    "txn: more pairs follow (stopped at --limit {}); the next key is {k}: \
                     continue with --from {k}, or list all with --all",
                    self.count
                );
            }
        }
    }

    /// End a JSON document already begun with the error that cut it short.
    fn close_with_error(&self, e: &ClientError) {
        let mut tail = self.tail(None);
        tail.remove("more");
        tail.remove("next");
        if let Value::Object(err) = crate::output::client_error_json(e) {
            tail.extend(err);
        }
        outln!("\n],{}", &Value::Object(tail).to_string()[1..]);
    }
}

/// Print the pairs of `[start, end)`, page by page, up to the limit.
async fn list(
    client: &Client,
    style: Style,
    start: Vec<u8>,
    end: Option<Vec<u8>>,
    opts: &ListOpts,
) -> Result<u8, ClientError> {
    let mut from = start;
    if let Some(f) = &opts.from {
        let f = style.codec.decode(f, "--from key")?;
        if f < from {
            return Err(ClientError::InvalidInput(
                "--from names a key before the start of the range".into(),
            ));
        }
        from = f;
    }
    let cap = (!opts.all).then_some(opts.limit);
    let mut p = Printer {
        style,
        keys_only: opts.keys_only,
        count_only: opts.count_only,
        count: 0,
    };
    p.open();
    loop {
        let left = cap.map_or(u64::MAX, |c| c - p.count);
        let want = u64::from(opts.page_size).min(left) as u32;
        // One more than shown: whether it exists says if the range goes on.
        let page = match client.scan(&from, end.as_deref(), want + 1).await {
            Ok(page) => page,
            Err(e) if p.streams_json() => {
                p.close_with_error(&e);
                return Ok(crate::exit_for(&e));
            }
            Err(e) => return Err(e),
        };
        let mut page = page.into_iter();
        for (k, v) in page.by_ref().take(want as usize) {
            p.pair(&k, &v);
        }
        let Some((next, _)) = page.next() else {
            p.close(None);
            return Ok(0);
        };
        if cap.is_some_and(|c| p.count >= c) {
            p.close(Some(&next));
            return Ok(0);
        }
        from = next;
    }
}

pub async fn put(client: &Client, style: Style, a: &PutArgs) -> Result<u8, ClientError> {
    let key = style.codec.decode(&a.key, "key")?;
    let value = match (&a.value, &a.file) {
        (_, Some(path)) => {
            let f = std::fs::File::open(path).map_err(|e| {
                ClientError::InvalidInput(format!("cannot open {}: {e}", path.display()))
            })?;
            read_value(f, &path.display().to_string())?
        }
        (Some(v), None) if v == "-" => read_value(std::io::stdin().lock(), "stdin")?,
        (Some(v), None) => style.codec.decode(v, "value")?,
        (None, None) => return Err(ClientError::InvalidInput("put needs a value".into())),
    };
    client.put(&key, &value).await?;
    if style.json {
        outln!("{}", serde_json::json!({ "ok": true }));
    } else {
        outln!("OK");
    }
    Ok(0)
}

/// A whole value from `r`, refused past the value limit without reading
/// much beyond it.
fn read_value(r: impl Read, from: &str) -> Result<Vec<u8>, ClientError> {
    let mut v = Vec::new();
    r.take(MAX_VALUE_BYTES as u64 + 1)
        .read_to_end(&mut v)
        .map_err(|e| ClientError::InvalidInput(format!("cannot read {from}: {e}")))?;
    if v.len() > MAX_VALUE_BYTES {
        return Err(ClientError::InvalidInput(format!(
            "the value in {from} is over the limit of {MAX_VALUE_BYTES} bytes"
        )));
    }
    Ok(v)
}

pub async fn del(
    client: &Client,
    style: Style,
    a: &DelArgs,
    progress: &Progress,
) -> Result<u8, ClientError> {
    if let Some(key) = &a.key {
        client.delete(&style.codec.decode(key, "key")?).await?;
        if style.json {
            outln!("{}", serde_json::json!({ "ok": true }));
        } else {
            outln!("OK");
        }
        return Ok(0);
    }
    let (start, end) = match &a.range {
        Some(r) => {
            let [s, e] = &r[..] else {
                return Err(ClientError::InvalidInput(
                    "--range needs START and END".into(),
                ));
            };
            let (s, e) = range(style.codec, None, Some(s), Some(e))?;
            if e.as_ref().is_some_and(|e| *e <= s) {
                return Err(ClientError::InvalidInput(
                    "--range START END: END must come after START".into(),
                ));
            }
            (s, e)
        }
        None => range(style.codec, a.prefix.as_deref(), None, None)?,
    };
    let deleted = delete_range(client, start, end, progress).await?;
    let txn = progress
        .began
        .get()
        .map(|t| t.to_string())
        .unwrap_or_default();
    if style.json {
        outln!(
            "{}",
            serde_json::json!({ "ok": true, "deleted": deleted, "txn": txn })
        );
    } else {
        let keys = if deleted == 1 { "key" } else { "keys" };
        outln!("deleted {deleted} {keys} (transaction {txn})");
    }
    Ok(0)
}

/// Keys read per request of a range delete.
const DELETE_PAGE: u32 = 1000;

/// Delete every key in `[start, end)` in one transaction, started over on
/// an abort; returns how many there were.
async fn delete_range(
    client: &Client,
    start: Vec<u8>,
    end: Option<Vec<u8>>,
    progress: &Progress,
) -> Result<u64, ClientError> {
    let r = client
        .transaction(|t| {
            progress.began.set(Some(t.id()));
            progress.committing.store(false, Ordering::SeqCst);
            let committing = progress.committing.clone();
            let (client, start, end) = (client.clone(), start.clone(), end.clone());
            Box::pin(async move {
                let mut budget = Budget::default();
                let mut deleted = 0u64;
                let mut from = start;
                loop {
                    // The transaction's own deletes are merged into its
                    // scans: each page starts after the last one's keys.
                    let page = t.scan(&from, end.as_deref(), DELETE_PAGE).await?;
                    let full = page.len() == DELETE_PAGE as usize;
                    let Some(last) = page.last().map(|(k, _)| k.clone()) else {
                        break;
                    };
                    for (k, _) in page {
                        budget.spend(client.shard_for_key(&k), k.len(), deleted)?;
                        t.delete(&k).await?;
                        deleted += 1;
                    }
                    if !full {
                        break;
                    }
                    from = last;
                    from.push(0);
                }
                committing.store(true, Ordering::SeqCst);
                Ok(deleted)
            })
        })
        .await;
    match r {
        // A scan or an early write whose answer did not come is not in
        // doubt here: without its commit the transaction applies nothing.
        Err(ClientError::Unknown(m)) if !progress.committing.load(Ordering::SeqCst) => Err(
            ClientError::Unavailable(format!("{m}; nothing was deleted (no commit was sent)")),
        ),
        r => r,
    }
}

/// Bytes a range delete has written on each shard, against
/// [`MAX_TXN_BYTES`]: the shards would refuse the write that passes it
/// (and abort the transaction); counted here, it is refused before it is
/// sent, with an error that says what to do.
#[derive(Debug, Default)]
struct Budget(BTreeMap<ShardId, usize>);

impl Budget {
    /// Count a delete of a key of `len` bytes on `shard`, the
    /// `deleted`+1-th; refused if it takes the shard over the limit.
    fn spend(&mut self, shard: ShardId, len: usize, deleted: u64) -> Result<(), ClientError> {
        let n = self.0.entry(shard).or_default();
        if *n + len > MAX_TXN_BYTES {
            return Err(ClientError::InvalidInput(format!(
                "the range is too large for one transaction: after {deleted} keys, the deletes \
                 on shard {shard} would pass the limit of {MAX_TXN_BYTES} bytes of keys one \
                 transaction may write on a shard; nothing was deleted; delete smaller ranges"
            )));
        }
        *n += len;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_first_key_after_the_prefix() {
        assert_eq!(prefix_end(b"user/"), Some(b"user0".to_vec()));
        assert_eq!(prefix_end(b"a\xff\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff"), None);
        assert_eq!(prefix_end(b""), None);
        // Every key with the prefix sorts before the end, and the end
        // itself does not have the prefix.
        let end = prefix_end(b"ab").unwrap();
        for k in [&b"ab"[..], b"ab\xff\xff", b"ab\x00"] {
            assert!(k < end.as_slice());
        }
        assert!(!end.starts_with(b"ab"));
    }

    #[test]
    fn a_range_delete_counts_key_bytes_per_shard() {
        let (a, b) = (ShardId(1), ShardId(2));
        let mut budget = Budget::default();
        // Up to the limit on each shard, side by side.
        for s in [a, b] {
            budget.spend(s, MAX_TXN_BYTES - 10, 0).unwrap();
            budget.spend(s, 10, 1).unwrap();
        }
        // One byte more on either is refused, and says so.
        match budget.spend(b, 1, 4) {
            Err(ClientError::InvalidInput(m)) => {
                assert!(
                    m.contains("shard 2") && m.contains("nothing was deleted"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
        let mut fresh = Budget::default();
        assert!(fresh.spend(a, MAX_TXN_BYTES + 1, 0).is_err());
    }

    #[test]
    fn a_value_over_the_limit_is_refused() {
        let big = vec![b'x'; MAX_VALUE_BYTES + 1];
        match read_value(&big[..], "stdin") {
            Err(ClientError::InvalidInput(m)) => assert!(m.contains("stdin"), "{m}"),
            other => panic!("{other:?}"),
        }
        let ok = vec![0u8; MAX_VALUE_BYTES];
        assert_eq!(read_value(&ok[..], "stdin").unwrap().len(), MAX_VALUE_BYTES);
    }
}
