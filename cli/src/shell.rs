//! `txn shell`: an interactive session.
//!
//! Outside a transaction every command runs on its own (autocommit). After
//! `BEGIN`, commands run in one transaction until `COMMIT` or `ROLLBACK`.
//! On a terminal it has line editing and history (rustyline); reading from
//! a pipe it runs the lines as a script, printing no prompt.
//!
//! A statement that fails inside a transaction rolls the transaction back
//! at once, and the statements after it are skipped up to the `COMMIT` or
//! `ROLLBACK` that ends the block (as psql does): a script never commits
//! half of what it meant, and never runs the rest of a block outside any
//! transaction. Each statement gets `--timeout`. The exit code is the
//! first failed statement's (0 if none); a script that ends, or EXITs,
//! inside a transaction exits 7 (aborted) at least.
//!
//! Keys and values follow `--hex` / `--base64` as on the command line.
//! With `--json` every statement that does something prints exactly one
//! JSON object on stdout: its result, `{"error": {...}}` (with the line
//! in a script, and the transaction it rolled back), or `{"skipped":
//! ...}`, so a program driving the shell reads one answer per statement.

use std::cell::Cell;
use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use pact_client::{Client, ClientError, Transaction};
use pact_common::TxnId;
use serde_json::{json, Map, Value};

use crate::exit_for;
use crate::output::{Codec, Style};

const HELP: &str = "\
commands (case-insensitive):
  BEGIN                      start a transaction
  GET key [key...]           read (several keys in a transaction: one
                             request, one line `key = value` each)
  GETU key [key...]          read and lock for update (in a transaction)
  PUT key value              write (value: the rest of the line); in a
                             transaction, sent with COMMIT, which locks it
  DEL key                    delete (as PUT)
  SCAN [start [end]]         list keys in [start, end), 1000 at most (a
                             note on stderr names the next key)
  INCR key [delta]           add to an integer value
  COMMIT | ROLLBACK          end the transaction
  HELP | EXIT | QUIT
a failed statement in a transaction rolls it back; the statements after
it are ignored until COMMIT or ROLLBACK. Values print escaped (\\n for a
newline); --hex / --base64 apply to keys and values in and out.";

/// The refusal of GETU outside a transaction.
const GETU_OUTSIDE: &str = "GETU locks within a transaction: BEGIN first";

/// Pairs one SCAN shows.
const SCAN_LIMIT: u32 = 1000;

/// What a statement did, to print as text or JSON.
enum Reply {
    Begin(TxnId),
    Committed(TxnId),
    RolledBack,
    Read(Vec<u8>, Option<Vec<u8>>),
    /// Several keys read in one statement, in the order given.
    Reads(Vec<(Vec<u8>, Option<Vec<u8>>)>),
    Ok,
    /// Pairs, and the key after the last one shown if the range goes on.
    Pairs(Vec<(Vec<u8>, Vec<u8>)>, Option<Vec<u8>>),
    Int(Vec<u8>, i64),
    Help,
}

impl Reply {
    fn json(&self, c: Codec) -> Value {
        match self {
            Reply::Begin(id) => json!({ "begin": id.to_string() }),
            Reply::Committed(id) => json!({ "committed": true, "txn": id.to_string() }),
            Reply::RolledBack => json!({ "rolled_back": true }),
            Reply::Read(k, v) => c.lookup(k, v.as_deref()),
            Reply::Reads(reads) => {
                let items: Vec<Value> = reads
                    .iter()
                    .map(|(k, v)| c.lookup(k, v.as_deref()))
                    .collect();
                json!({ "reads": items })
            }
            Reply::Ok => json!({ "ok": true }),
            Reply::Pairs(pairs, next) => {
                let items: Vec<Value> = pairs.iter().map(|(k, v)| c.pair(k, Some(v))).collect();
                let mut o = Map::new();
                o.insert("count".into(), items.len().into());
                o.insert("pairs".into(), Value::Array(items));
                o.insert("more".into(), next.is_some().into());
                match next {
                    Some(k) => c.field(&mut o, "next", k),
                    None => {
                        o.insert("next".into(), Value::Null);
                    }
                }
                Value::Object(o)
            }
            Reply::Int(k, v) => {
                let mut o = Map::new();
                c.field(&mut o, "key", k);
                o.insert("value".into(), (*v).into());
                Value::Object(o)
            }
            Reply::Help => json!({ "help": HELP }),
        }
    }

    fn text(&self, c: Codec) -> String {
        match self {
            Reply::Begin(id) => format!("BEGIN {id}"),
            Reply::Committed(id) => format!("COMMITTED {id}"),
            Reply::RolledBack => "ROLLED BACK".into(),
            Reply::Read(_, Some(v)) => c.value(v),
            Reply::Read(_, None) => "(not found)".into(),
            Reply::Reads(reads) => reads
                .iter()
                .map(|(k, v)| match v {
                    Some(v) => format!("{} = {}", c.key(k), c.value(v)),
                    None => format!("{} (not found)", c.key(k)),
                })
                .collect::<Vec<_>>()
                .join("\n"),
            Reply::Ok => "OK".into(),
            Reply::Pairs(pairs, _) if pairs.is_empty() => "(empty)".into(),
            Reply::Pairs(pairs, _) => pairs
                .iter()
                .map(|(k, v)| format!("{} = {}", c.key(k), c.value(v)))
                .collect::<Vec<_>>()
                .join("\n"),
            Reply::Int(_, v) => v.to_string(),
            Reply::Help => HELP.into(),
        }
    }
}

pub struct Shell {
    client: Client,
    style: Style,
    /// Deadline of one statement.
    timeout: Duration,
    txn: Option<Transaction>,
    /// A statement failed inside this transaction, which was rolled back;
    /// statements are skipped until COMMIT or ROLLBACK ends its block.
    aborted: Option<TxnId>,
    /// Exit code of the first failed statement; 0 while none failed.
    code: u8,
    /// Reading a script from a pipe (not a terminal).
    script: bool,
    /// Number of the line being run, for messages in script mode.
    line_no: usize,
}

/// Said for each statement skipped after a failure.
fn skipped_note(id: TxnId) -> String {
    format!("transaction {id} was rolled back; statements are ignored until COMMIT or ROLLBACK")
}

impl Shell {
    pub fn new(client: Client, timeout: Duration, style: Style) -> Self {
        Shell {
            client,
            style,
            timeout,
            txn: None,
            aborted: None,
            code: 0,
            script: false,
            line_no: 0,
        }
    }

    fn prompt(&self) -> String {
        match (&self.txn, self.aborted) {
            (Some(t), _) => format!("pact:{}> ", t.id()),
            (None, Some(id)) => format!("pact:{id} (rolled back)> "),
            (None, None) => "pact> ".to_string(),
        }
    }

    /// Where a message is about: the line, in a script.
    fn at(&self) -> String {
        if self.script {
            format!("line {}: ", self.line_no)
        } else {
            String::new()
        }
    }

    fn record(&mut self, code: u8) {
        if self.code == 0 {
            self.code = code;
        }
    }

    /// Roll back without waiting longer than a statement may: what the
    /// rollback cannot reach expires at the coordinator, uncommitted.
    async fn rollback(&self, mut t: Transaction) {
        let _ = tokio::time::timeout(self.timeout, t.rollback()).await;
    }

    /// Print a statement's result.
    fn show(&self, r: &Reply) {
        if self.style.json {
            outln!("{}", r.json(self.style.codec));
        } else {
            outln!("{}", r.text(self.style.codec));
        }
        if let (false, Reply::Pairs(_, Some(next))) = (self.style.json, r) {
            let k = self.style.codec.key(next);
            errln!(
                "{}more pairs follow (SCAN shows {SCAN_LIMIT}); the next key is {k}: SCAN {k} to continue",
                self.at()
            );
        }
    }

    /// A note about a statement that did not run, or a transaction that
    /// ended: a line on stderr, or under --json an object with `fields`
    /// and the message on stdout.
    fn note(&self, fields: Value, message: &str) {
        if self.style.json {
            let mut o = match fields {
                Value::Object(o) => o,
                _ => Map::new(),
            };
            o.insert("message".into(), message.into());
            if self.script {
                o.insert("line".into(), self.line_no.into());
            }
            outln!("{}", Value::Object(o));
        } else {
            errln!("{}{message}", self.at());
        }
    }

    /// Report a failed statement; inside a transaction, roll it back and
    /// skip the rest of its block. `after` is said after the error (what
    /// it means for a COMMIT).
    async fn fail(&mut self, e: &ClientError, after: Option<String>) {
        self.record(exit_for(e));
        let rolled_back = match self.txn.take() {
            Some(t) => {
                let id = t.id();
                self.rollback(t).await;
                self.aborted = Some(id);
                Some(id)
            }
            None => None,
        };
        if self.style.json {
            let mut err = Map::new();
            err.insert("code".into(), e.code().as_str().into());
            if let Some(kind) = e.abort_kind() {
                err.insert("abort_kind".into(), kind.as_str().into());
            }
            err.insert("message".into(), e.to_string().into());
            if self.script {
                err.insert("line".into(), self.line_no.into());
            }
            if let Some(id) = rolled_back {
                err.insert("rolled_back".into(), id.to_string().into());
            }
            if let Some(a) = after {
                err.insert("note".into(), a.into());
            }
            outln!("{}", json!({ "error": err }));
            return;
        }
        errln!("{}ERROR: {e}", self.at());
        if let Some(id) = rolled_back {
            errln!(
                "{}transaction {id} rolled back because of this error; statements are ignored until COMMIT or ROLLBACK",
                self.at()
            );
        }
        if let Some(a) = after {
            errln!("{}{a}", self.at());
        }
    }

    /// What is known when a statement's deadline cut it off. `in_txn` is
    /// the transaction it ran in, if any.
    fn deadline_error(
        &self,
        cmd: &str,
        in_txn: Option<TxnId>,
        began: Option<TxnId>,
    ) -> ClientError {
        let waited = format!("no result within {}s (--timeout)", self.timeout.as_secs());
        match (cmd, in_txn) {
            ("COMMIT", Some(id)) => ClientError::Unknown(format!(
                "{waited}; transaction {id} may or may not have committed"
            )),
            // A transaction's statements apply nothing until its commit.
            (_, Some(_)) => ClientError::Unavailable(waited),
            ("PUT" | "DEL", None) => ClientError::Unknown(format!(
                "{waited}; the write may or may not have been applied"
            )),
            ("INCR", None) => match began {
                Some(id) => ClientError::Unknown(format!(
                    "{waited}; transaction {id} may or may not have committed: `txn txn-status {id}` tells"
                )),
                None => ClientError::Unavailable(format!("{waited}; no transaction was started")),
            },
            _ => ClientError::Unavailable(waited),
        }
    }

    /// Run one line; returns false on EXIT.
    async fn line(&mut self, line: &str) -> bool {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return true;
        }
        let mut parts = line.splitn(2, char::is_whitespace);
        let cmd = parts.next().unwrap_or("").to_ascii_uppercase();
        let rest = parts.next().unwrap_or("").trim();
        match cmd.as_str() {
            "EXIT" | "QUIT" => return false,
            "HELP" => {
                self.show(&Reply::Help);
                return true;
            }
            "ROLLBACK" => {
                if let Some(t) = self.txn.take() {
                    self.rollback(t).await;
                    self.show(&Reply::RolledBack);
                } else if self.aborted.take().is_some() {
                    self.show(&Reply::RolledBack);
                } else {
                    self.fail(&ClientError::InvalidInput("no transaction".into()), None)
                        .await;
                }
                return true;
            }
            _ => {}
        }
        if let Some(id) = self.aborted {
            let txn = id.to_string();
            if cmd == "COMMIT" {
                self.aborted = None;
                let why = format!("transaction {id} did not commit: a statement in it failed");
                if self.style.json {
                    self.note(
                        json!({ "committed": false, "rolled_back": true, "txn": txn }),
                        &why,
                    );
                } else {
                    errln!("{}{why}", self.at());
                    self.show(&Reply::RolledBack);
                }
            } else {
                self.note(
                    json!({ "skipped": true, "txn": txn }),
                    &format!("skipped: {}", skipped_note(id)),
                );
            }
            return true;
        }
        let in_txn = self.txn.as_ref().map(|t| t.id());
        let began = Cell::new(None);
        let timeout = self.timeout;
        let res = match tokio::time::timeout(timeout, self.exec(&cmd, rest, &began)).await {
            Ok(r) => r,
            Err(_) => Err(self.deadline_error(&cmd, in_txn, began.get())),
        };
        match res {
            Ok(out) => self.show(&out),
            Err(e) => {
                let after = match (in_txn, cmd.as_str(), &e) {
                    (
                        Some(id),
                        "COMMIT",
                        ClientError::Aborted(_) | ClientError::InvalidInput(_),
                    ) => Some(format!("transaction {id} did not commit")),
                    (Some(id), "COMMIT", _) => {
                        Some(format!("`txn txn-status {id}` tells whether it committed"))
                    }
                    _ => None,
                };
                self.fail(&e, after).await;
            }
        }
        true
    }

    /// Roll back a transaction left open at EXIT or at the end of input.
    /// A script that did so did not do what it meant: it fails.
    async fn finish(&mut self) {
        let open = self.txn.take();
        let id = open.as_ref().map(|t| t.id()).or(self.aborted);
        if let Some(t) = open {
            self.rollback(t).await;
        }
        let Some(id) = id else { return };
        if self.script {
            self.record(7);
            let e = ClientError::Aborted(pact_client::Abort::new(
                pact_client::AbortKind::Rollback,
                format!("end of script inside transaction {id}: rolled back"),
            ));
            if self.style.json {
                outln!("{}", crate::output::client_error_json(&e));
            } else {
                errln!("end of script inside transaction {id}: rolled back");
            }
        } else {
            self.note(
                json!({ "rolled_back": true, "txn": id.to_string() }),
                &format!("(open transaction {id} rolled back)"),
            );
        }
    }

    /// Run one statement (EXIT, HELP and ROLLBACK are handled by the
    /// caller); returns what to print.
    async fn exec(
        &mut self,
        cmd: &str,
        rest: &str,
        began: &Cell<Option<TxnId>>,
    ) -> Result<Reply, ClientError> {
        let codec = self.style.codec;
        let args: Vec<&str> = rest.split_whitespace().collect();
        let usage = |u: &str| ClientError::InvalidInput(format!("usage: {u}"));
        Ok(match cmd {
            "BEGIN" => {
                if self.txn.is_some() {
                    return Err(ClientError::InvalidInput("already in a transaction".into()));
                }
                let t = self.client.begin().await?;
                let id = t.id();
                self.txn = Some(t);
                Reply::Begin(id)
            }
            "COMMIT" => {
                let mut t = self
                    .txn
                    .take()
                    .ok_or_else(|| ClientError::InvalidInput("no transaction".into()))?;
                t.commit().await?;
                Reply::Committed(t.id())
            }
            "GET" | "GETU" if args.len() > 1 => {
                let keys = args
                    .iter()
                    .map(|k| codec.decode(k, "key"))
                    .collect::<Result<Vec<_>, _>>()?;
                let values = match (&mut self.txn, cmd) {
                    (Some(t), "GETU") => t.get_many_for_update(&keys).await?,
                    (Some(t), _) => t.get_many(&keys).await?,
                    (None, "GETU") => return Err(ClientError::InvalidInput(GETU_OUTSIDE.into())),
                    (None, _) => {
                        let mut values = Vec::with_capacity(keys.len());
                        for k in &keys {
                            values.push(self.client.get(k).await?);
                        }
                        values
                    }
                };
                Reply::Reads(keys.into_iter().zip(values).collect())
            }
            "GET" => {
                let [k] = args[..] else {
                    return Err(usage("GET key [key...]"));
                };
                let k = codec.decode(k, "key")?;
                let v = match &mut self.txn {
                    Some(t) => t.get(&k).await?,
                    None => self.client.get(&k).await?,
                };
                Reply::Read(k, v)
            }
            "GETU" => {
                let [k] = args[..] else {
                    return Err(usage("GETU key [key...]"));
                };
                let k = codec.decode(k, "key")?;
                let t = self
                    .txn
                    .as_mut()
                    .ok_or_else(|| ClientError::InvalidInput(GETU_OUTSIDE.into()))?;
                let v = t.get_for_update(&k).await?;
                Reply::Read(k, v)
            }
            "PUT" => {
                let mut kv = rest.splitn(2, char::is_whitespace);
                let (Some(k), Some(v)) = (kv.next(), kv.next()) else {
                    return Err(usage("PUT key value"));
                };
                let k = codec.decode(k, "key")?;
                let v = codec.decode(v.trim(), "value")?;
                match &mut self.txn {
                    Some(t) => t.put(&k, &v).await?,
                    None => self.client.put(&k, &v).await?,
                }
                Reply::Ok
            }
            "DEL" => {
                let [k] = args[..] else {
                    return Err(usage("DEL key"));
                };
                let k = codec.decode(k, "key")?;
                match &mut self.txn {
                    Some(t) => t.delete(&k).await?,
                    None => self.client.delete(&k).await?,
                }
                Reply::Ok
            }
            "SCAN" => {
                let (start, end) = match args[..] {
                    [] => (Vec::new(), None),
                    [s] => (codec.decode(s, "start key")?, None),
                    [s, e] => (
                        codec.decode(s, "start key")?,
                        Some(codec.decode(e, "end key")?),
                    ),
                    _ => return Err(usage("SCAN [start [end]]")),
                };
                // One more than shown: whether it exists says if the range
                // goes on.
                let mut pairs = match &mut self.txn {
                    Some(t) => t.scan(&start, end.as_deref(), SCAN_LIMIT + 1).await?,
                    None => {
                        self.client
                            .scan(&start, end.as_deref(), SCAN_LIMIT + 1)
                            .await?
                    }
                };
                let next = if pairs.len() > SCAN_LIMIT as usize {
                    pairs.truncate(SCAN_LIMIT as usize + 1);
                    pairs.pop().map(|(k, _)| k)
                } else {
                    None
                };
                Reply::Pairs(pairs, next)
            }
            "INCR" => {
                let (k, d) = match args[..] {
                    [k] => (k, 1),
                    [k, d] => (k, d.parse::<i64>().map_err(|_| usage("INCR key [delta]"))?),
                    _ => return Err(usage("INCR key [delta]")),
                };
                let k = codec.decode(k, "key")?;
                let v = match &mut self.txn {
                    Some(t) => t.incr(&k, d).await?,
                    None => crate::incr(&self.client, &k, d, began).await?,
                };
                Reply::Int(k, v)
            }
            other => {
                return Err(ClientError::InvalidInput(format!(
                    "unknown command {other:?}; type HELP"
                )))
            }
        })
    }

    /// Run until EXIT or end of input; returns the exit code.
    pub async fn run(mut self) -> u8 {
        if !std::io::stdin().is_terminal() {
            self.script = true;
            return self.run_plain().await;
        }
        let mut ed = match rustyline::DefaultEditor::new() {
            Ok(ed) => ed,
            Err(e) => {
                errln!("txn: no line editor ({e}); reading plain lines");
                return self.run_plain().await;
            }
        };
        if !self.style.json {
            outln!("Pact shell. Type HELP for commands.");
        }
        loop {
            // Waiting for a line happens off the runtime's one thread, so
            // that an open transaction's heartbeat goes on meanwhile:
            // otherwise it would expire while its user thinks.
            let prompt = self.prompt();
            let read = tokio::task::spawn_blocking(move || {
                let r = ed.readline(&prompt);
                (ed, r)
            })
            .await;
            let Ok((back, read)) = read else { break };
            ed = back;
            match read {
                Ok(line) => {
                    self.line_no += 1;
                    let _ = ed.add_history_entry(line.as_str());
                    if !self.line(&line).await {
                        break;
                    }
                }
                Err(rustyline::error::ReadlineError::Interrupted) => continue,
                Err(_) => break,
            }
        }
        self.finish().await;
        self.code
    }

    /// Lines from stdin. They are read as bytes so that one that is not
    /// UTF-8 fails as a statement (with its number) instead of ending the
    /// input as if the script were complete. A thread reads them, so that
    /// the runtime keeps an open transaction's heartbeat going while the
    /// next line is slow to come.
    async fn run_plain(mut self) -> u8 {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(1);
        std::thread::spawn(move || {
            let mut input = std::io::stdin().lock();
            loop {
                let mut buf = Vec::new();
                let r = match input.read_until(b'\n', &mut buf) {
                    Ok(0) => return,
                    Ok(_) => Ok(buf),
                    Err(e) => Err(e),
                };
                let failed = r.is_err();
                if tx.blocking_send(r).is_err() || failed {
                    return;
                }
            }
        });
        while let Some(read) = rx.recv().await {
            self.line_no += 1;
            let buf = match read {
                Ok(buf) => buf,
                Err(e) => {
                    self.fail(
                        &ClientError::InvalidInput(format!("cannot read input: {e}")),
                        None,
                    )
                    .await;
                    break;
                }
            };
            let go_on = match std::str::from_utf8(&buf) {
                Ok(line) => self.line(line).await,
                Err(_) => {
                    self.fail(
                        &ClientError::InvalidInput("the line is not valid UTF-8".into()),
                        None,
                    )
                    .await;
                    true
                }
            };
            let _ = std::io::stdout().flush();
            if !go_on {
                break;
            }
        }
        self.finish().await;
        self.code
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pact_client::ClientOptions;
    use pact_common::ClusterConfig;

    #[test]
    fn a_cut_off_statement_is_unknown_only_where_it_may_have_written() {
        let client = Client::new(&ClusterConfig::embedded_default(), ClientOptions::default());
        let style = Style {
            json: false,
            codec: Codec::Text,
        };
        let sh = Shell::new(client, Duration::from_secs(3), style);
        let id: TxnId = "1-4-99".parse().unwrap();
        let code = |cmd, in_txn, began| exit_for(&sh.deadline_error(cmd, in_txn, began));
        assert_eq!(code("COMMIT", Some(id), None), 4);
        assert_eq!(code("PUT", Some(id), None), 3);
        assert_eq!(code("GETU", Some(id), None), 3);
        assert_eq!(code("INCR", Some(id), None), 3);
        assert_eq!(code("PUT", None, None), 4);
        assert_eq!(code("DEL", None, None), 4);
        assert_eq!(code("INCR", None, Some(id)), 4);
        assert_eq!(code("INCR", None, None), 3);
        assert_eq!(code("GET", None, None), 3);
        assert_eq!(code("BEGIN", None, None), 3);
    }
}
