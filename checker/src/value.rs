//! The dynamic value type shared by the EDN and JSON front ends.

use std::cmp::Ordering;
use std::fmt::Write as _;

use crate::edn;
use crate::ParseError;

/// An EDN datum. Lists and vectors collapse into `Vec` because no checker
/// cares about the difference, and tagged literals are read as their inner
/// value, so this is all a history can contain.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    /// Keyword name without the leading `:`.
    Keyword(String),
    Symbol(String),
    /// Vectors and lists.
    Vec(Vec<Value>),
    /// A list, not a hashed set: sets in histories are small, and a list
    /// prints deterministically without requiring `Ord` on floats. From
    /// EDN, in the reader's (sorted) order.
    Set(Vec<Value>),
    /// A list of entries for the same reason as `Set`: from EDN in the
    /// reader's (sorted) order, from JSON in the object's.
    Map(Vec<(Value, Value)>),
}

impl serde::Serialize for Value {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

impl Value {
    /// Parses exactly one EDN form.
    pub fn from_edn(text: &str) -> Result<Value, ParseError> {
        edn::read_one(text)
    }

    /// Renders as EDN that [`Value::from_edn`] reads back to an equal value,
    /// except for non-finite floats: written as Clojure does (`##Inf`,
    /// `##NaN`), which the reader refuses (see the `edn` module). Neither
    /// EDN nor JSON input can produce them.
    pub fn to_edn(&self) -> String {
        let mut out = String::new();
        self.write_edn(&mut out);
        out
    }

    pub(crate) fn write_edn(&self, out: &mut String) {
        match self {
            Value::Nil => out.push_str("nil"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Value::Float(f) => write_float(*f, out),
            Value::Str(s) => write_edn_string(s, out),
            Value::Keyword(k) => {
                // A keyword that came from JSON may contain characters EDN
                // cannot spell; a string keeps the output readable.
                if is_symbolic(k) {
                    out.push(':');
                    out.push_str(k);
                } else {
                    write_edn_string(k, out);
                }
            }
            Value::Symbol(s) => {
                if is_symbolic(s) && !matches!(s.as_str(), "nil" | "true" | "false") {
                    out.push_str(s);
                } else {
                    write_edn_string(s, out);
                }
            }
            Value::Vec(items) => write_seq(out, "[", "]", items),
            Value::Set(items) => write_seq(out, "#{", "}", items),
            Value::Map(entries) => {
                out.push('{');
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    k.write_edn(out);
                    out.push(' ');
                    v.write_edn(out);
                }
                out.push('}');
            }
        }
    }

    /// Converts JSON as elle-cli and Jepsen write it. Strings starting with
    /// `:` become keywords, which is how [`Value::to_json`] spells them, so
    /// EDN -> JSON -> EDN round-trips.
    pub fn from_json(v: &serde_json::Value) -> Value {
        match v {
            serde_json::Value::Null => Value::Nil,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::String(s) => string_from_json(s),
            serde_json::Value::Array(items) => {
                Value::Vec(items.iter().map(Value::from_json).collect())
            }
            serde_json::Value::Object(obj) => Value::Map(
                obj.iter()
                    .map(|(k, v)| (string_from_json(k), Value::from_json(v)))
                    .collect(),
            ),
        }
    }

    /// Nil becomes null, keywords `":name"`, vectors and sets arrays, maps
    /// objects when every key is a string or keyword and arrays of `[k, v]`
    /// pairs otherwise (JSON objects cannot have integer keys). Non-finite
    /// floats become null.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Nil => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Str(s) => J::String(s.clone()),
            Value::Keyword(k) => J::String(format!(":{k}")),
            Value::Symbol(s) => J::String(s.clone()),
            Value::Vec(items) | Value::Set(items) => {
                J::Array(items.iter().map(Value::to_json).collect())
            }
            Value::Map(entries) => {
                let stringy = entries
                    .iter()
                    .all(|(k, _)| matches!(k, Value::Str(_) | Value::Keyword(_)));
                if stringy {
                    let mut obj = serde_json::Map::new();
                    for (k, v) in entries {
                        let key = match k {
                            Value::Str(s) => s.clone(),
                            Value::Keyword(s) => format!(":{s}"),
                            _ => unreachable!("checked above"),
                        };
                        obj.insert(key, v.to_json());
                    }
                    J::Object(obj)
                } else {
                    J::Array(
                        entries
                            .iter()
                            .map(|(k, v)| J::Array(vec![k.to_json(), v.to_json()]))
                            .collect(),
                    )
                }
            }
        }
    }

    pub fn is_nil(&self) -> bool {
        matches!(self, Value::Nil)
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The name of a keyword, symbol or string, accepting both `:ok` and
    /// `ok` spellings because JSON histories use either.
    pub fn as_name(&self) -> Option<&str> {
        match self {
            Value::Keyword(s) | Value::Symbol(s) => Some(s),
            Value::Str(s) => Some(s.strip_prefix(':').unwrap_or(s)),
            _ => None,
        }
    }

    /// Elements of a vector, list or set.
    pub fn as_seq(&self) -> Option<&[Value]> {
        match self {
            Value::Vec(v) | Value::Set(v) => Some(v),
            _ => None,
        }
    }

    /// Map entries; a JSON array of `[k, v]` pairs (how [`Value::to_json`]
    /// writes maps with non-string keys) also counts as a map.
    pub fn as_map(&self) -> Option<Vec<(&Value, &Value)>> {
        match self {
            Value::Map(entries) => Some(entries.iter().map(|(k, v)| (k, v)).collect()),
            Value::Vec(items) => items
                .iter()
                .map(|item| match item {
                    Value::Vec(pair) if pair.len() == 2 => Some((&pair[0], &pair[1])),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    }

    /// Looks up a keyword (or string) key in a map.
    pub fn get(&self, name: &str) -> Option<&Value> {
        match self {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| {
                    matches!(k, Value::Keyword(_) | Value::Str(_)) && k.as_name() == Some(name)
                })
                .map(|(_, v)| v),
            _ => None,
        }
    }
}

/// A total order used only to print element lists deterministically:
/// numbers numerically, everything else by its EDN text.
pub(crate) fn display_cmp(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => x.cmp(y),
        (Value::Int(_), _) => Ordering::Less,
        (_, Value::Int(_)) => Ordering::Greater,
        _ => a.to_edn().cmp(&b.to_edn()),
    }
}

fn string_from_json(s: &str) -> Value {
    match s.strip_prefix(':') {
        Some(name) if !name.is_empty() => Value::Keyword(name.to_string()),
        _ => Value::Str(s.to_string()),
    }
}

fn write_seq(out: &mut String, open: &str, close: &str, items: &[Value]) {
    out.push_str(open);
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        item.write_edn(out);
    }
    out.push_str(close);
}

fn write_float(f: f64, out: &mut String) {
    if f.is_nan() {
        out.push_str("##NaN");
    } else if f.is_infinite() {
        out.push_str(if f > 0.0 { "##Inf" } else { "##-Inf" });
    } else {
        // `{:?}` always includes a `.` or an exponent, so it reads back as a
        // float rather than an integer.
        let _ = write!(out, "{f:?}");
    }
}

pub(crate) fn write_edn_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            // Other control characters go in raw, as Clojure prints them:
            // the EDN reader knows no `\b`, `\f` or `\u` escapes.
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Whether `s` can be written bare as a symbol or keyword name and read back
/// as the same token.
pub(crate) fn is_symbolic(s: &str) -> bool {
    let mut chars = s.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    if first.is_ascii_digit() || first == ':' || first == '#' {
        return false;
    }
    // "+1" or "-1" would read back as numbers.
    if (first == '+' || first == '-' || first == '.')
        && s[first.len_utf8()..].starts_with(|c: char| c.is_ascii_digit())
    {
        return false;
    }
    s.chars().all(is_symbol_char)
}

fn is_symbol_char(c: char) -> bool {
    c.is_alphanumeric() || "*+!-_?$%&=<>/.:#'".contains(c)
}
