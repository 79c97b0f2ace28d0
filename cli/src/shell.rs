//! `txn shell`: an interactive session.
//!
//! Outside a transaction every command runs on its own (autocommit). After
//! `BEGIN`, commands run in one transaction until `COMMIT` or `ROLLBACK`.
//! On a terminal it has line editing and history (rustyline); reading from
//! a pipe it runs the lines as a script, printing no prompt.

use std::io::{BufRead, IsTerminal, Write};

use pact_client::{Client, ClientError, Transaction};

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
  HELP | EXIT | QUIT";

pub struct Shell {
    client: Client,
    txn: Option<Transaction>,
    failed: bool,
}

impl Shell {
    pub fn new(client: Client) -> Self {
        Shell {
            client,
            txn: None,
            failed: false,
        }
    }

    fn prompt(&self) -> String {
        match &self.txn {
            Some(t) => format!("pact:{}> ", t.id()),
            None => "pact> ".to_string(),
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
        match self.exec(&cmd, rest).await {
            Ok(Some(out)) => println!("{out}"),
            Ok(None) => return false,
            Err(e) => {
                self.failed = true;
                println!("ERROR: {e}");
                if matches!(e, ClientError::Aborted(_)) && self.txn.is_some() {
                    self.txn = None;
                    println!("(transaction aborted; start again with BEGIN)");
                }
            }
        }
        true
    }

    async fn exec(&mut self, cmd: &str, rest: &str) -> Result<Option<String>, ClientError> {
        let args: Vec<&str> = rest.split_whitespace().collect();
        let usage = |u: &str| ClientError::InvalidInput(format!("usage: {u}"));
        let show = |v: Option<Vec<u8>>| match v {
            Some(v) => String::from_utf8_lossy(&v).to_string(),
            None => "(not found)".to_string(),
        };
        Ok(Some(match cmd {
            "HELP" => HELP.to_string(),
            "EXIT" | "QUIT" => {
                if let Some(mut t) = self.txn.take() {
                    t.rollback().await;
                    println!("(open transaction rolled back)");
                }
                return Ok(None);
            }
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
            "ROLLBACK" => {
                let mut t = self
                    .txn
                    .take()
                    .ok_or_else(|| ClientError::InvalidInput("no transaction".into()))?;
                t.rollback().await;
                "ROLLED BACK".to_string()
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
                    None => {
                        let key = k.to_string();
                        self.client
                            .transaction(|t| {
                                let key = key.clone();
                                Box::pin(async move { t.incr(key.as_bytes(), d).await })
                            })
                            .await?
                    }
                };
                v.to_string()
            }
            other => {
                return Err(ClientError::InvalidInput(format!(
                    "unknown command {other:?}; type HELP"
                )))
            }
        }))
    }

    /// Run until EXIT or end of input. Returns whether any command failed.
    pub async fn run(mut self) -> bool {
        if std::io::stdin().is_terminal() {
            let mut ed = match rustyline::DefaultEditor::new() {
                Ok(ed) => ed,
                Err(e) => {
                    eprintln!("txn: no line editor ({e}); reading plain lines");
                    return self.run_plain().await;
                }
            };
            println!("Pact shell. Type HELP for commands.");
            loop {
                match ed.readline(&self.prompt()) {
                    Ok(line) => {
                        let _ = ed.add_history_entry(line.as_str());
                        if !self.line(&line).await {
                            break;
                        }
                    }
                    Err(rustyline::error::ReadlineError::Interrupted) => continue,
                    Err(_) => break,
                }
            }
            if let Some(mut t) = self.txn.take() {
                t.rollback().await;
            }
            self.failed
        } else {
            self.run_plain().await
        }
    }

    async fn run_plain(mut self) -> bool {
        let stdin = std::io::stdin();
        let mut lines = stdin.lock().lines();
        while let Some(Ok(line)) = lines.next() {
            if !self.line(&line).await {
                break;
            }
            let _ = std::io::stdout().flush();
        }
        if let Some(mut t) = self.txn.take() {
            t.rollback().await;
        }
        self.failed
    }
}
