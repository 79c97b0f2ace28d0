//! Operations, histories, their EDN/JSON forms, and pairing of invocations
//! with completions.

use std::collections::HashMap;

use crate::edn;
use crate::Value;

/// A history that could not be read. `line` is 1-based; it points at the
/// operation (or the character) that is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

impl ParseError {
    pub fn new(line: usize, message: impl Into<String>) -> Self {
        ParseError {
            line,
            message: message.into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpType {
    Invoke,
    Ok,
    Fail,
    Info,
}

impl OpType {
    pub fn name(self) -> &'static str {
        match self {
            OpType::Invoke => "invoke",
            OpType::Ok => "ok",
            OpType::Fail => "fail",
            OpType::Info => "info",
        }
    }

    fn from_name(s: &str) -> Option<OpType> {
        match s {
            "invoke" => Some(OpType::Invoke),
            "ok" => Some(OpType::Ok),
            "fail" => Some(OpType::Fail),
            "info" => Some(OpType::Info),
            _ => None,
        }
    }
}

/// The process id the nemesis gets; checkers skip its operations.
pub const NEMESIS: i64 = -1;

#[derive(Clone, Debug, PartialEq)]
pub struct Op {
    /// Position in the history (assigned by the parser when absent).
    pub index: u64,
    pub time_ns: Option<u64>,
    /// Jepsen's `:process`; the nemesis is [`NEMESIS`].
    pub process: i64,
    pub typ: OpType,
    /// Function name without the `:`.
    pub f: String,
    /// Porcupine kv histories carry `:key`.
    pub key: Option<Value>,
    pub value: Value,
}

pub type History = Vec<Op>;

impl Op {
    /// One-line EDN map.
    pub fn to_edn(&self) -> String {
        let mut out = String::with_capacity(64);
        out.push_str("{:index ");
        out.push_str(&self.index.to_string());
        if let Some(t) = self.time_ns {
            out.push_str(", :time ");
            out.push_str(&t.to_string());
        }
        out.push_str(", :type :");
        out.push_str(self.typ.name());
        out.push_str(", :process ");
        if self.process == NEMESIS {
            out.push_str(":nemesis");
        } else {
            out.push_str(&self.process.to_string());
        }
        out.push_str(", :f ");
        Value::Keyword(self.f.clone()).write_edn(&mut out);
        if let Some(k) = &self.key {
            out.push_str(", :key ");
            k.write_edn(&mut out);
        }
        out.push_str(", :value ");
        self.value.write_edn(&mut out);
        out.push('}');
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("index".into(), self.index.into());
        if let Some(t) = self.time_ns {
            m.insert("time".into(), t.into());
        }
        m.insert("type".into(), self.typ.name().into());
        m.insert(
            "process".into(),
            if self.process == NEMESIS {
                "nemesis".into()
            } else {
                self.process.into()
            },
        );
        m.insert("f".into(), self.f.clone().into());
        if let Some(k) = &self.key {
            m.insert("key".into(), k.to_json());
        }
        m.insert("value".into(), self.value.to_json());
        serde_json::Value::Object(m)
    }

    /// Builds an op from a decoded map; `take` removes a field by name, so
    /// the (possibly large) value moves into the op instead of being copied.
    fn from_fields(
        line: usize,
        position: usize,
        mut take: impl FnMut(&str) -> Option<Value>,
    ) -> Result<Op, ParseError> {
        let err = |m: String| ParseError::new(line, m);
        let typ = match take("type") {
            None => return Err(err("operation has no :type".into())),
            Some(v) => v.as_name().and_then(OpType::from_name).ok_or_else(|| {
                err(format!(
                    ":type must be invoke/ok/fail/info, got {}",
                    v.to_edn()
                ))
            })?,
        };
        let process = match take("process") {
            None => return Err(err("operation has no :process".into())),
            Some(Value::Int(p)) if p >= 0 => p,
            Some(v) if v.as_name() == Some("nemesis") => NEMESIS,
            Some(v) => {
                return Err(err(format!(
                    ":process must be a non-negative integer or :nemesis, got {}",
                    v.to_edn()
                )))
            }
        };
        let f = match take("f") {
            None => return Err(err("operation has no :f".into())),
            Some(v) => v
                .as_name()
                .ok_or_else(|| {
                    err(format!(
                        ":f must be a keyword or string, got {}",
                        v.to_edn()
                    ))
                })?
                .to_string(),
        };
        let uint = |name: &str, v: Option<Value>| -> Result<Option<u64>, ParseError> {
            match v {
                None | Some(Value::Nil) => Ok(None),
                Some(Value::Int(i)) if i >= 0 => Ok(Some(i as u64)),
                Some(v) => Err(err(format!(
                    ":{name} must be a non-negative integer, got {}",
                    v.to_edn()
                ))),
            }
        };
        let index = uint("index", take("index"))?.unwrap_or(position as u64);
        let time_ns = uint("time", take("time"))?;
        Ok(Op {
            index,
            time_ns,
            process,
            typ,
            f,
            key: take("key"),
            value: take("value").unwrap_or(Value::Nil),
        })
    }
}

fn op_from_value(line: usize, position: usize, v: Value) -> Result<Op, ParseError> {
    match v {
        Value::Map(mut entries) => Op::from_fields(line, position, |name| {
            // Last binding wins, as when reading a map with duplicate keys.
            entries
                .iter_mut()
                .rev()
                .find(|(k, _)| {
                    matches!(k, Value::Keyword(_) | Value::Str(_)) && k.as_name() == Some(name)
                })
                .map(|(_, v)| std::mem::replace(v, Value::Nil))
        }),
        other => Err(ParseError::new(
            line,
            format!(
                "expected an operation map, got {}",
                truncate(&other.to_edn(), 60)
            ),
        )),
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n).collect();
        t.push('…');
        t
    }
}

/// Parses an EDN history: one op map per line, or one top-level vector of
/// maps. `;` comments, tagged literals and `#_` discards are allowed.
pub fn parse_edn(text: &str) -> Result<History, ParseError> {
    edn::read_history_forms(text)?
        .into_iter()
        .enumerate()
        .map(|(i, (line, v))| op_from_value(line, i, v))
        .collect()
}

/// Parses a JSON history: an array of op objects, or JSON lines.
pub fn parse_json(text: &str) -> Result<History, ParseError> {
    let trimmed = text.trim_start();
    let forms: Vec<(usize, serde_json::Value)> = if trimmed.starts_with('[') {
        let all: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| ParseError::new(e.line(), format!("invalid JSON: {e}")))?;
        let serde_json::Value::Array(items) = all else {
            return Err(ParseError::new(1, "expected a JSON array of operations"));
        };
        let lines = json_array_element_lines(text);
        items
            .into_iter()
            .enumerate()
            .map(|(i, v)| (lines.get(i).copied().unwrap_or(1), v))
            .collect()
    } else {
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let l = line.trim();
            if l.is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(l)
                .map_err(|e| ParseError::new(i + 1, format!("invalid JSON: {e}")))?;
            out.push((i + 1, v));
        }
        out
    };
    forms
        .iter()
        .enumerate()
        .map(|(i, (line, v))| {
            let serde_json::Value::Object(obj) = v else {
                return Err(ParseError::new(
                    *line,
                    "expected a JSON object for an operation",
                ));
            };
            // Converted lazily so fields other than the op's are never
            // copied.
            Op::from_fields(*line, i, |name| {
                obj.get(name)
                    .or_else(|| obj.get(&format!(":{name}")))
                    .map(Value::from_json)
            })
        })
        .collect()
}

/// The line on which each top-level element of a JSON array starts, found
/// by a scan that only tracks strings and nesting depth. serde_json has
/// already validated the text, so the scan can be naive.
fn json_array_element_lines(text: &str) -> Vec<usize> {
    let mut lines = Vec::new();
    let mut line = 1;
    let mut depth = 0usize;
    let mut in_str = false;
    let mut escaped = false;
    let mut expect_elem = false;
    for b in text.bytes() {
        if b == b'\n' {
            line += 1;
        }
        if in_str {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_str = false;
            }
            continue;
        }
        if expect_elem && !b.is_ascii_whitespace() {
            expect_elem = false;
            if b != b']' {
                lines.push(line);
            }
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                if depth == 1 {
                    expect_elem = true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b',' if depth == 1 => expect_elem = true,
            _ => {}
        }
    }
    lines
}

/// Parses JSON or EDN, deciding by the first significant characters: JSON
/// ops start with `{"`, EDN ops with `{:`.
pub fn parse_auto(text: &str) -> Result<History, ParseError> {
    if looks_like_json(text) {
        parse_json(text)
    } else {
        parse_edn(text)
    }
}

fn looks_like_json(text: &str) -> bool {
    let mut s = text.trim_start_matches(|c: char| c.is_whitespace() || c == '\u{feff}');
    if let Some(rest) = s.strip_prefix('[') {
        s = rest.trim_start();
    }
    match s.strip_prefix('{') {
        Some(rest) => {
            let rest = rest.trim_start();
            rest.starts_with('"') || rest.starts_with('}')
        }
        None => false,
    }
}

/// One op map per line.
pub fn to_edn(h: &History) -> String {
    let mut out = String::new();
    for op in h {
        out.push_str(&op.to_edn());
        out.push('\n');
    }
    out
}

/// One JSON object per line.
pub fn to_jsonl(h: &History) -> String {
    let mut out = String::new();
    for op in h {
        out.push_str(&op.to_json().to_string());
        out.push('\n');
    }
    out
}

/// A client operation with its invocation and completion joined.
#[derive(Clone, Debug)]
pub(crate) struct Call<'a> {
    pub invoke: Option<&'a Op>,
    pub complete: Option<&'a Op>,
    /// Ok, Fail or Info (an invocation that never completed counts as Info).
    pub typ: OpType,
    pub process: i64,
    pub f: &'a str,
    /// Logical timestamps: `time_ns` when every client op has one, otherwise
    /// the position in the history. `end` is None when the op may take
    /// effect arbitrarily late (Info).
    pub start: u64,
    pub end: Option<u64>,
}

impl<'a> Call<'a> {
    /// The index to show in reports: the completion's, as Elle does.
    pub fn index(&self) -> u64 {
        self.complete.or(self.invoke).map_or(0, |o| o.index)
    }

    /// What the op asked for: the invocation's value, falling back to the
    /// completion's when the history has no invocations.
    pub fn input(&self) -> &'a Value {
        match (self.invoke, self.complete) {
            (Some(i), _) if !i.value.is_nil() => &i.value,
            (_, Some(c)) => &c.value,
            (Some(i), None) => &i.value,
            (None, None) => &NIL,
        }
    }

    /// What the op observed: the completion's value for ok ops.
    pub fn output(&self) -> &'a Value {
        match (self.complete, self.invoke) {
            (Some(c), _) => &c.value,
            (None, Some(i)) => &i.value,
            (None, None) => &NIL,
        }
    }

    pub fn key(&self) -> Option<&'a Value> {
        self.invoke
            .and_then(|o| o.key.as_ref())
            .or_else(|| self.complete.and_then(|o| o.key.as_ref()))
    }

    pub fn summary(&self) -> serde_json::Value {
        // A crashed op's completion usually says nothing (nil); what it
        // tried to do is the useful part.
        let value = if self.typ == OpType::Ok {
            self.output()
        } else {
            self.input()
        };
        let mut s = serde_json::json!({
            "index": self.index(),
            "process": self.process,
            "type": self.typ.name(),
            "f": self.f,
            "value": value.to_edn(),
        });
        if let Some(k) = self.key() {
            s["key"] = k.to_edn().into();
        }
        s
    }
}

static NIL: Value = Value::Nil;

/// Joins each client invocation with the next completion of its process.
/// Nemesis ops are dropped. A completion without an invocation (common in
/// hand-written Elle histories) becomes an instantaneous op; an invocation
/// without a completion becomes Info.
pub(crate) fn pair(history: &History) -> Result<Vec<Call<'_>>, String> {
    let client = || {
        history
            .iter()
            .enumerate()
            .filter(|(_, o)| o.process != NEMESIS)
    };
    let use_time = client().all(|(_, o)| o.time_ns.is_some()) && client().next().is_some();
    let clock = |pos: usize, op: &Op| {
        if use_time {
            op.time_ns.unwrap_or(0)
        } else {
            pos as u64
        }
    };

    let mut calls: Vec<Call<'_>> = Vec::new();
    let mut pending: HashMap<i64, usize> = HashMap::new();
    for (pos, op) in client() {
        match op.typ {
            OpType::Invoke => {
                if let Some(prev) = pending.get(&op.process) {
                    let prev = calls[*prev].invoke.map_or(0, |o| o.index);
                    return Err(format!(
                        "process {} invoked op {} while op {} was still pending",
                        op.process, op.index, prev
                    ));
                }
                pending.insert(op.process, calls.len());
                calls.push(Call {
                    invoke: Some(op),
                    complete: None,
                    typ: OpType::Info,
                    process: op.process,
                    f: &op.f,
                    start: clock(pos, op),
                    end: None,
                });
            }
            typ => {
                let t = clock(pos, op);
                let end = if typ == OpType::Info { None } else { Some(t) };
                match pending.remove(&op.process) {
                    Some(i) => {
                        let c = &mut calls[i];
                        c.complete = Some(op);
                        c.typ = typ;
                        c.end = end;
                    }
                    None => calls.push(Call {
                        invoke: None,
                        complete: Some(op),
                        typ,
                        process: op.process,
                        f: &op.f,
                        start: t,
                        end,
                    }),
                }
            }
        }
    }
    Ok(calls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_edn_ops_and_assigns_indices() {
        let h = parse_edn(
            "{:process 0, :type :invoke, :f :read, :value nil}\n\
             {:process :nemesis, :type :info, :f :start}\n\
             {:index 7, :time 12, :process 0, :type :ok, :f :read, :key \"k\", :value 3}\n",
        )
        .unwrap();
        assert_eq!(h.len(), 3);
        assert_eq!(h[0].index, 0);
        assert_eq!(h[1].process, NEMESIS);
        assert_eq!(h[1].value, Value::Nil);
        assert_eq!(h[2].index, 7);
        assert_eq!(h[2].time_ns, Some(12));
        assert_eq!(h[2].key, Some(Value::Str("k".into())));
        assert_eq!(h[2].typ, OpType::Ok);
    }

    #[test]
    fn bad_ops_report_their_line() {
        let e = parse_edn("{:process 0, :type :invoke, :f :read}\n{:process 0, :f :read}\n")
            .unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains(":type"), "{e}");
        let e = parse_edn("[{:process 0, :type :invoke, :f :read}\n\n 5]").unwrap_err();
        assert_eq!(e.line, 3);
        let e = parse_edn("{:process 0, :type :maybe, :f :read}").unwrap_err();
        assert!(e.message.contains("invoke/ok/fail/info"), "{e}");
        let e = parse_edn("{:process \"p\", :type :ok, :f :read}").unwrap_err();
        assert!(e.message.contains(":process"), "{e}");
    }

    #[test]
    fn parses_json_array_and_lines() {
        let arr = "[\n {\"index\": 0, \"type\": \"invoke\", \"process\": 1, \"f\": \"txn\", \"value\": [[\"append\", 1, 2]]},\n {\"index\": 1, \"type\": \":ok\", \"process\": 1, \"f\": \":txn\", \"value\": [[\"append\", 1, 2]]}\n]";
        let h = parse_json(arr).unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[1].typ, OpType::Ok);
        assert_eq!(h[1].f, "txn");
        let lines = "{\"type\": \"invoke\", \"process\": 0, \"f\": \"read\"}\n\n{\"type\": \"ok\", \"process\": 0, \"f\": \"read\", \"value\": 1}\n";
        let h = parse_json(lines).unwrap();
        assert_eq!(h[1].index, 1);
        assert_eq!(h[1].value, Value::Int(1));
        let e = parse_json(
            "[\n{\"type\": \"ok\", \"process\": 0, \"f\": \"read\"},\n{\"process\": 0}\n]",
        )
        .unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        let e = parse_json("{\"type\": \"ok\"\n").unwrap_err();
        assert_eq!(e.line, 1, "{e}");
        assert!(parse_json("[1, 2").is_err());
    }

    #[test]
    fn sniffs_format() {
        assert!(looks_like_json("[{\"type\": 1}]"));
        assert!(looks_like_json("  {\"type\": 1}\n"));
        assert!(!looks_like_json("[{:type :ok}]"));
        assert!(!looks_like_json("; comment\n{:type :ok}"));
        assert!(parse_auto("{\"type\": \"ok\", \"process\": 0, \"f\": \"read\"}").is_ok());
        assert!(parse_auto("{:type :ok, :process 0, :f :read}").is_ok());
    }

    #[test]
    fn pairing() {
        let h = parse_edn(
            "{:process 0, :type :invoke, :f :write, :value 1}\n\
             {:process 1, :type :invoke, :f :read, :value nil}\n\
             {:process 1, :type :ok, :f :read, :value 1}\n\
             {:process 0, :type :info, :f :write, :value nil}\n\
             {:process 2, :type :ok, :f :read, :value 1}\n\
             {:process 3, :type :invoke, :f :read, :value nil}\n",
        )
        .unwrap();
        let calls = pair(&h).unwrap();
        assert_eq!(calls.len(), 4);
        assert_eq!(
            (calls[0].typ, calls[0].start, calls[0].end),
            (OpType::Info, 0, None)
        );
        assert_eq!(calls[0].input(), &Value::Int(1));
        assert_eq!(
            (calls[1].typ, calls[1].start, calls[1].end),
            (OpType::Ok, 1, Some(2))
        );
        assert_eq!(calls[1].output(), &Value::Int(1));
        assert_eq!((calls[2].start, calls[2].end), (4, Some(4)));
        assert_eq!(calls[3].typ, OpType::Info);
        let dup = parse_edn(
            "{:process 0, :type :invoke, :f :read}\n{:process 0, :type :invoke, :f :read}",
        )
        .unwrap();
        assert!(pair(&dup).is_err());
    }
}
