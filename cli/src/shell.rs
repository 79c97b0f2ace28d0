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

use std::cell::Cell;
use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use pact_client::{Client, ClientError, Transaction};
use pact_common::TxnId;

use crate::exit_for;

const HELP: &str = "\
commands (case-insensitive):
  BEGIN                      start a transaction
  GET key                    read
  GETU key                   read and lock for update (in a transaction)
  PUT key value              write (value: the rest of the line); in a
                             transaction, sent with COMMIT, which locks it
  DEL key                    delete (as PUT)
  SCAN [start [end]]         list keys in [start, end)
  INCR key [delta]           add to an integer value
  COMMIT | ROLLBACK          end the transaction
  HELP | EXIT | QUIT
a failed statement in a transaction rolls it back; the statements after
it are ignored until COMMIT or ROLLBACK";

pub struct Shell {
    client: Client,
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
    pub fn new(client: Client, timeout: Duration) -> Self {
        Shell {
            client,
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

    /// Report a failed statement; inside a transaction, roll it back and
    /// skip the rest of its block.
    async fn fail(&mut self, e: &ClientError) {
        self.record(exit_for(e));
        eprintln!("{}ERROR: {e}", self.at());
        if let Some(t) = self.txn.take() {
            let id = t.id();
            self.rollback(t).await;
            self.aborted = Some(id);
            eprintln!(
                "{}transaction {id} rolled back because of this error; statements are ignored until COMMIT or ROLLBACK",
                self.at()
            );
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
                outln!("{HELP}");
                return true;
            }
            "ROLLBACK" => {
                if let Some(t) = self.txn.take() {
                    self.rollback(t).await;
                    outln!("ROLLED BACK");
                } else if self.aborted.take().is_some() {
                    outln!("ROLLED BACK");
                } else {
                    self.fail(&ClientError::InvalidInput("no transaction".into()))
                        .await;
                }
                return true;
            }
            _ => {}
        }
        if let Some(id) = self.aborted {
            if cmd == "COMMIT" {
                self.aborted = None;
                eprintln!(
                    "{}transaction {id} did not commit: a statement in it failed",
                    self.at()
                );
                outln!("ROLLED BACK");
            } else {
                eprintln!("{}skipped: {}", self.at(), skipped_note(id));
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
            Ok(out) => outln!("{out}"),
            Err(e) => {
                self.fail(&e).await;
                if let (Some(id), "COMMIT") = (in_txn, cmd.as_str()) {
                    match e {
                        ClientError::Aborted(_) | ClientError::InvalidInput(_) => {
                            eprintln!("{}transaction {id} did not commit", self.at())
                        }
                        _ => eprintln!(
                            "{}`txn txn-status {id}` tells whether it committed",
                            self.at()
                        ),
                    }
                }
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
            eprintln!("end of script inside transaction {id}: rolled back");
        } else {
            eprintln!("(open transaction {id} rolled back)");
        }
    }

    /// Run one statement (EXIT, HELP and ROLLBACK are handled by the
    /// caller); returns what to print.
    async fn exec(
        &mut self,
        cmd: &str,
        rest: &str,
        began: &Cell<Option<TxnId>>,
    ) -> Result<String, ClientError> {
        let args: Vec<&str> = rest.split_whitespace().collect();
        let usage = |u: &str| ClientError::InvalidInput(format!("usage: {u}"));
        let show = |v: Option<Vec<u8>>| match v {
            Some(v) => String::from_utf8_lossy(&v).to_string(),
            None => "(not found)".to_string(),
        };
        Ok(match cmd {
            "BEGIN" => {
                if self.txn.is_some() {
                    return Err(ClientError::InvalidInput("already in a transaction".into()));
                }
                let t = self.client.begin().await?;
                let id = t.id();
                self.txn = Some(t);
                format!("BEGIN {id}")
            }
            "COMMIT" => {
                let mut t = self
                    .txn
                    .take()
                    .ok_or_else(|| ClientError::InvalidInput("no transaction".into()))?;
                t.commit().await?;
                format!("COMMITTED {}", t.id())
            }
            "GET" => {
                let [k] = args[..] else {
                    return Err(usage("GET key"));
                };
                match &mut self.txn {
                    Some(t) => show(t.get(k.as_bytes()).await?),
                    None => show(self.client.get(k.as_bytes()).await?),
                }
            }
            "GETU" => {
                let [k] = args[..] else {
                    return Err(usage("GETU key"));
                };
                let t = self.txn.as_mut().ok_or_else(|| {
                    ClientError::InvalidInput("GETU locks within a transaction: BEGIN first".into())
                })?;
                show(t.get_for_update(k.as_bytes()).await?)
            }
            "PUT" => {
                let mut kv = rest.splitn(2, char::is_whitespace);
                let (Some(k), Some(v)) = (kv.next(), kv.next()) else {
                    return Err(usage("PUT key value"));
                };
                let v = v.trim();
                match &mut self.txn {
                    Some(t) => t.put(k.as_bytes(), v.as_bytes()).await?,
                    None => self.client.put(k.as_bytes(), v.as_bytes()).await?,
                }
                "OK".to_string()
            }
            "DEL" => {
                let [k] = args[..] else {
                    return Err(usage("DEL key"));
                };
                match &mut self.txn {
                    Some(t) => t.delete(k.as_bytes()).await?,
                    None => self.client.delete(k.as_bytes()).await?,
                }
                "OK".to_string()
            }
            "SCAN" => {
                let (start, end) = match args[..] {
                    [] => ("", None),
                    [s] => (s, None),
                    [s, e] => (s, Some(e)),
                    _ => return Err(usage("SCAN [start [end]]")),
                };
                let pairs = match &mut self.txn {
                    Some(t) => {
                        t.scan(start.as_bytes(), end.map(str::as_bytes), 1000)
                            .await?
                    }
                    None => {
                        self.client
                            .scan(start.as_bytes(), end.map(str::as_bytes), 1000)
                            .await?
                    }
                };
                if pairs.is_empty() {
                    "(empty)".to_string()
                } else {
                    pairs
                        .iter()
                        .map(|(k, v)| {
                            format!(
                                "{} = {}",
                                String::from_utf8_lossy(k),
                                String::from_utf8_lossy(v)
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                }
            }
            "INCR" => {
                let (k, d) = match args[..] {
                    [k] => (k, 1),
                    [k, d] => (k, d.parse::<i64>().map_err(|_| usage("INCR key [delta]"))?),
                    _ => return Err(usage("INCR key [delta]")),
                };
                let v = match &mut self.txn {
                    Some(t) => t.incr(k.as_bytes(), d).await?,
                    None => crate::incr(&self.client, k, d, began).await?,
                };
                v.to_string()
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
                eprintln!("txn: no line editor ({e}); reading plain lines");
                return self.run_plain().await;
            }
        };
        outln!("Pact shell. Type HELP for commands.");
        loop {
            match ed.readline(&self.prompt()) {
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
    /// input as if the script were complete.
    async fn run_plain(mut self) -> u8 {
        let stdin = std::io::stdin();
        let mut input = stdin.lock();
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match input.read_until(b'\n', &mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    self.line_no += 1;
                    self.fail(&ClientError::InvalidInput(format!(
                        "cannot read input: {e}"
                    )))
                    .await;
                    break;
                }
            }
            self.line_no += 1;
            let go_on = match std::str::from_utf8(&buf) {
                Ok(line) => self.line(line).await,
                Err(_) => {
                    self.fail(&ClientError::InvalidInput(
                        "the line is not valid UTF-8".into(),
                    ))
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
        let sh = Shell::new(client, Duration::from_secs(3));
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
