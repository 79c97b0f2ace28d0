//! What `txn` writes: the two streams, how keys and values are shown, and
//! errors as data.
//!
//! # Closed pipes
//! `txn scan | head -1` closes stdout under the writer; a closed stderr
//! (`2>&1 | head`) is the same. Every line goes through [`write_out`] or
//! [`write_err`], which end the process by SIGPIPE on a broken pipe, as
//! any Unix filter ends: silently, with the status a shell reports as 141.
//! SIGPIPE itself stays ignored (Rust's default) for the rest of the run,
//! because with it on, a gRPC connection that the server closes could
//! kill the process in the middle of a socket write (a TLS server refusing
//! a plain client does); only a write to our own output raises it.
//!
//! # Bytes
//! Keys and values are bytes. `--hex` and `--base64` (global, one or the
//! other) decode keys and values given as arguments, and encode the keys
//! and values printed, in text and in JSON. Without them ([`Codec::Text`])
//! arguments are taken as they are, and output is escaped so that a line
//! stays one line and every byte can be told apart: `\\`, `\n`, `\r`,
//! `\t`, other control characters and bytes that are not UTF-8 as `\xNN`
//! (`\u{NN}` for control characters beyond ASCII), and in keys also `=`
//! as `\x3d`, so that the first ` = ` of a `KEY = VALUE` line separates.
//! In JSON, text mode writes a key or value that is valid UTF-8 as a JSON
//! string and any other under `key_base64` / `value_base64` instead.
//!
//! # Errors
//! Under `--json` an error is one JSON object on stdout, in place of the
//! result: `{"error": {"code": "INVALID_INPUT", "message": "..."}}`, with
//! the code from [`pact_client::ClientError::code`] or, for what fails
//! before any request, `USAGE` or `CONFIG`. The exit code is the same as
//! without `--json`.

use std::io::Write;

use data_encoding::{BASE64, HEXLOWER, HEXLOWER_PERMISSIVE};
use pact_client::ClientError;
use serde_json::{Map, Value};

/// Like `println!`, for stdout that may be a closed pipe.
macro_rules! outln {
    ($($t:tt)*) => { $crate::output::write_out(format_args!("{}\n", format_args!($($t)*))) };
}

/// Like `eprintln!`, for stderr that may be a closed pipe.
macro_rules! errln {
    ($($t:tt)*) => { $crate::output::write_err(format_args!("{}\n", format_args!($($t)*))) };
}

pub fn write_out(args: std::fmt::Arguments<'_>) {
    let mut o = std::io::stdout().lock();
    if let Err(e) = o.write_fmt(args).and_then(|()| o.flush()) {
        gone(e);
    }
}

pub fn write_err(args: std::fmt::Arguments<'_>) {
    let mut o = std::io::stderr().lock();
    if let Err(e) = o.write_fmt(args) {
        gone(e);
    }
}

/// Output cannot be written: a reader that quit ends the process as it
/// would end any filter; anything else is an error exit (there is nowhere
/// left to say why).
fn gone(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        // SAFETY: SIG_DFL is a valid handler; raise(3) on our own process
        // ends it as the closed pipe asked.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::raise(libc::SIGPIPE);
        }
    }
    std::process::exit(1)
}

/// `--hex` / `--base64`: how keys and values are given and shown.
#[derive(clap::Args, Debug, Clone, Copy, Default)]
pub struct CodecFlags {
    /// Keys and values are hex, in arguments (also START, END, --prefix,
    /// --from) and in output. Stdin and --file are read as raw bytes.
    #[arg(long, global = true, conflicts_with = "base64")]
    hex: bool,
    /// As --hex, in standard base64 (with padding).
    #[arg(long, global = true)]
    base64: bool,
}

impl CodecFlags {
    pub fn codec(&self) -> Codec {
        match (self.hex, self.base64) {
            (true, _) => Codec::Hex,
            (_, true) => Codec::Base64,
            _ => Codec::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Codec {
    /// Arguments as typed; output escaped (see the module doc).
    #[default]
    Text,
    Hex,
    Base64,
}

/// How a result is printed: JSON or text, and the bytes' encoding.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub json: bool,
    pub codec: Codec,
}

impl Codec {
    /// The bytes an argument names; `what` says which argument, for the
    /// error.
    pub fn decode(self, arg: &str, what: &str) -> Result<Vec<u8>, ClientError> {
        let bad = |kind: &str, e: data_encoding::DecodeError| {
            ClientError::InvalidInput(format!("{what} {arg:?} is not valid {kind}: {e}"))
        };
        match self {
            Codec::Text => Ok(arg.as_bytes().to_vec()),
            Codec::Hex => HEXLOWER_PERMISSIVE
                .decode(arg.as_bytes())
                .map_err(|e| bad("hex", e)),
            Codec::Base64 => BASE64.decode(arg.as_bytes()).map_err(|e| bad("base64", e)),
        }
    }

    /// A key for a text line.
    pub fn key(self, b: &[u8]) -> String {
        self.text(b, true)
    }

    /// A value for a text line.
    pub fn value(self, b: &[u8]) -> String {
        self.text(b, false)
    }

    fn text(self, b: &[u8], key: bool) -> String {
        match self {
            Codec::Text => escape(b, key),
            Codec::Hex => HEXLOWER.encode(b),
            Codec::Base64 => BASE64.encode(b),
        }
    }

    /// Put `b` into `obj` as field `name`: encoded with --hex / --base64;
    /// in text mode as a JSON string if it is UTF-8, else base64 under
    /// `{name}_base64`.
    pub fn field(self, obj: &mut Map<String, Value>, name: &str, b: &[u8]) {
        match self {
            Codec::Text => match std::str::from_utf8(b) {
                Ok(s) => {
                    obj.insert(name.into(), Value::String(s.into()));
                }
                Err(_) => {
                    obj.insert(format!("{name}_base64"), Value::String(BASE64.encode(b)));
                }
            },
            Codec::Hex => {
                obj.insert(name.into(), Value::String(HEXLOWER.encode(b)));
            }
            Codec::Base64 => {
                obj.insert(name.into(), Value::String(BASE64.encode(b)));
            }
        }
    }

    /// `{"key", "found", "value"}`: a read's answer (value null if not
    /// found).
    pub fn lookup(self, k: &[u8], v: Option<&[u8]>) -> Value {
        let mut o = Map::new();
        self.field(&mut o, "key", k);
        o.insert("found".into(), Value::Bool(v.is_some()));
        match v {
            Some(v) => self.field(&mut o, "value", v),
            None => {
                o.insert("value".into(), Value::Null);
            }
        }
        Value::Object(o)
    }

    /// A JSON object of a key and, if given, its value.
    pub fn pair(self, k: &[u8], v: Option<&[u8]>) -> Value {
        let mut o = Map::new();
        self.field(&mut o, "key", k);
        if let Some(v) = v {
            self.field(&mut o, "value", v);
        }
        Value::Object(o)
    }
}

/// Bytes as one line of text that tells every byte apart (module doc).
pub fn escape(b: &[u8], key: bool) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(b.len());
    for chunk in b.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => s.push_str("\\\\"),
                '\n' => s.push_str("\\n"),
                '\r' => s.push_str("\\r"),
                '\t' => s.push_str("\\t"),
                '=' if key => s.push_str("\\x3d"),
                c if c.is_ascii_control() => {
                    let _ = write!(s, "\\x{:02x}", c as u32);
                }
                c if c.is_control() => {
                    let _ = write!(s, "\\u{{{:x}}}", c as u32);
                }
                c => s.push(c),
            }
        }
        for byte in chunk.invalid() {
            let _ = write!(s, "\\x{byte:02x}");
        }
    }
    s
}

/// Whether `--json` is among the arguments (before any `--`), for an
/// error clap found before it could say.
pub fn json_requested(args: impl IntoIterator<Item = std::ffi::OsString>) -> bool {
    args.into_iter()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json")
}

/// The notes at the end of `txn --help`.
pub const HELP_NOTES: &str = r#"Keys and values:
  Without --hex or --base64, arguments are taken as typed, and text output
  is escaped so that every pair stays on one line and every byte shows:
  \\, \n, \r, \t; other control characters and bytes that are not UTF-8 as
  \xNN (\u{NN} beyond ASCII); in keys also = as \x3d (the first " = " of a
  "KEY = VALUE" line separates). JSON writes a key or value that is not
  UTF-8 as base64 under "key_base64" / "value_base64". With --hex or
  --base64, keys and values are in that encoding in arguments and output
  alike (stdin and --file stay raw bytes).

Errors:
  On stderr as text; with --json, as one object on stdout in place of the
  result: {"error": {"code": "INVALID_INPUT", "message": "..."}}. Codes:
  the servers' codes (UNAVAILABLE, ABORTED, CONFLICT, OUTCOME_UNKNOWN,
  INVALID_INPUT, UNKNOWN_SHARD, STOPPED, OVERLOADED); an abort adds "abort_kind"
  (wounded, lock_timeout, expired, leadership, unavailable, conflict,
  rollback). USAGE, CONFIG and INTERNAL come from txn itself.

Exit codes:
  0 ok, 1 not found (get), 2 usage or config, 3 unavailable (nothing done),
  4 outcome unknown, 5 invalid input, 6 server error, 7 aborted,
  9 overloaded (a server refused at its admission limit; nothing was
  done, retry later). A closed
  output pipe ends txn by SIGPIPE, as it ends any filter."#;

/// `{"error": {"code": ..., "message": ...}}`
pub fn error_json(code: &str, message: &str) -> Value {
    serde_json::json!({ "error": { "code": code, "message": message } })
}

/// Report a failed command: JSON on stdout under `--json`, else a line on
/// stderr.
pub fn report(json: bool, code: &str, message: &str) {
    if json {
        outln!("{}", error_json(code, message));
    } else {
        errln!("txn: {message}");
    }
}

pub fn report_client(json: bool, e: &ClientError) {
    if json {
        outln!("{}", client_error_json(e));
    } else {
        errln!("txn: {e}");
    }
}

/// A client error as JSON: its server code, and for an abort its kind.
pub fn client_error_json(e: &ClientError) -> Value {
    let mut v = error_json(e.code().as_str(), &e.to_string());
    if let (Some(kind), Some(obj)) = (e.abort_kind(), v["error"].as_object_mut()) {
        obj.insert("abort_kind".into(), kind.as_str().into());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_flag_is_seen_before_a_double_dash_only() {
        let args = |a: &[&str]| a.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        assert!(json_requested(args(&["txn", "get", "--json", "--bogus"])));
        assert!(!json_requested(args(&["txn", "put", "--", "--json"])));
        assert!(!json_requested(args(&["--json", "get"])[..1].to_vec()));
    }

    #[test]
    fn escaping_keeps_one_line_and_every_byte() {
        assert_eq!(escape(b"plain text", false), "plain text");
        assert_eq!(escape(b"two\nlines\r\n", false), "two\\nlines\\r\\n");
        assert_eq!(escape(b"tab\there", false), "tab\\there");
        assert_eq!(escape(b"back\\n", false), "back\\\\n");
        assert_eq!(escape(b"\x00\x1b\x7f", false), "\\x00\\x1b\\x7f");
        assert_eq!(escape(b"caf\xc3\xa9", false), "caf\u{e9}");
        assert_eq!(escape(b"\xff\xfeok", false), "\\xff\\xfeok");
        assert_eq!(escape("\u{85}".as_bytes(), false), "\\u{85}");
        // In keys `=` is escaped, so ` = ` separates a pair's line.
        assert_eq!(escape(b"a = b", true), "a \\x3d b");
        assert_eq!(escape(b"a = b", false), "a = b");
        // A literal backslash-n and a newline stay apart.
        assert_ne!(escape(b"\\n", false), escape(b"\n", false));
    }

    #[test]
    fn codecs_round_trip() {
        let bytes = b"\x00\xffk=v\n";
        for c in [Codec::Hex, Codec::Base64] {
            let shown = c.value(bytes);
            assert_eq!(c.decode(&shown, "value").unwrap(), bytes, "{c:?}");
        }
        assert_eq!(Codec::Hex.value(b"\x01\xab"), "01ab");
        assert_eq!(Codec::Hex.decode("01AB", "key").unwrap(), b"\x01\xab");
        assert_eq!(Codec::Base64.value(b"hi"), "aGk=");
        assert_eq!(Codec::Text.decode("a b", "key").unwrap(), b"a b");
    }

    #[test]
    fn bad_encodings_are_invalid_input() {
        for (c, arg) in [
            (Codec::Hex, "abc"),
            (Codec::Hex, "zz"),
            (Codec::Base64, "a!=="),
        ] {
            match c.decode(arg, "key") {
                Err(ClientError::InvalidInput(m)) => assert!(m.contains("key"), "{m}"),
                other => panic!("{c:?} {arg}: {other:?}"),
            }
        }
    }

    #[test]
    fn json_fields_say_how_bytes_are_encoded() {
        let v = Codec::Text.pair(b"k", Some(b"line\nbreak"));
        assert_eq!(v, serde_json::json!({"key": "k", "value": "line\nbreak"}));
        let v = Codec::Text.pair(b"k", Some(b"\xff"));
        assert_eq!(v, serde_json::json!({"key": "k", "value_base64": "/w=="}));
        let v = Codec::Hex.pair(b"k", None);
        assert_eq!(v, serde_json::json!({"key": "6b"}));
    }
}
