//! EDN input. The `clojure-reader` crate reads the forms; this module turns
//! them into [`Value`]s, finds the line each operation starts on (the
//! crate reports lines in errors, not on values) and bounds nesting.
//!
//! **Which crate, and why.** Tried against every history in the shared
//! corpus (`shared/histories/`: cas-register, kv and list-append files from
//! Jepsen's etcd test, Knossos, Porcupine and Elle) and against the forms
//! Jepsen's own printer writes:
//!
//! * `clojure-reader` 0.7 (used): reads all of the corpus, with keywords,
//!   symbols, maps, vectors, lists, sets, chars, ratios, `N`/`M` numbers
//!   (its `arbitrary-nums` feature), `#_` discards and tagged literals,
//!   including Jepsen 0.3's record syntax `#jepsen.history.Op{...}` and
//!   `#object[java.lang.Foo 0x1f "x"]`; an iterative parser (no stack
//!   overflow on hostile nesting) whose errors carry line and column.
//!   It does not read the symbolic values `##Inf`, `##-Inf`, `##NaN`, the
//!   string escapes `\b`, `\f` and `\uXXXX` or `\uXXXX` character literals
//!   (Clojure's printer can write `\b` and `\f` in strings, and `##Inf` for
//!   an infinite double); none occur in the corpus, and a history that
//!   holds one is refused with its line. `^meta` prefixes are read as a
//!   symbol rather than dropped (Jepsen does not print metadata).
//! * `edn-format` 3.3: fails on `#object[java.lang.Foo 0x1f "x"]` (no hex
//!   integers), on ratios such as `1/2`, on `#_` right before a closing
//!   bracket and on `#inst "2020"`, and overflows the stack on deeply
//!   nested input.
//! * `edn-rs` 0.19: deprecated by its maintainers in favour of
//!   `clojure-reader`; it reads `#jepsen.history.Op{:type :ok}` as the tag
//!   `jepsen.history.Op{:type` on the keyword `:ok`, and accepts duplicate
//!   map keys silently.
//!
//! Lists and vectors both become [`Value::Vec`]; a tagged literal becomes
//! its inner value; maps and sets come in the reader's order (sorted), not
//! the file's.

use clojure_reader::edn::{self, Edn};
use clojure_reader::error::Code;

use crate::{ParseError, Value};

/// Deeper nesting than this is certainly not a history, and bounding it
/// keeps the recursive conversion to [`Value`] off the stack's end.
const MAX_DEPTH: usize = 256;

/// Reads exactly one form (surrounded only by whitespace, comments and
/// discards).
pub(crate) fn read_one(text: &str) -> Result<Value, ParseError> {
    let mut r = Reader::new(text);
    let Some((line, v)) = r.next_form()? else {
        return Err(ParseError::new(
            r.line,
            "expected an EDN form, found end of input",
        ));
    };
    if r.next_form()?.is_some() {
        return Err(ParseError::new(
            r.line,
            format!("unexpected data after the form that started on line {line}"),
        ));
    }
    Ok(v)
}

/// Reads the forms of a history: either a single top-level vector/list, whose
/// elements are returned, or a sequence of top-level forms (one op per line).
/// Each form comes with the line it starts on.
pub(crate) fn read_history_forms(text: &str) -> Result<Vec<(usize, Value)>, ParseError> {
    let mut r = Reader::new(text);
    r.skip_blank();
    let closer = match r.rest().chars().next() {
        Some('[') => ']',
        Some('(') => ')',
        _ => {
            let mut out = Vec::new();
            while let Some(item) = r.next_form()? {
                out.push(item);
            }
            return Ok(out);
        }
    };
    // One collection of operations: read its elements one by one, so each
    // gets its own line.
    let open_line = r.line;
    r.advance(1);
    let mut out = Vec::new();
    loop {
        r.skip_blank();
        match r.rest().chars().next() {
            None => {
                return Err(ParseError::new(
                    r.line,
                    format!("unterminated top-level collection opened on line {open_line}"),
                ))
            }
            Some(c) if c == closer => {
                r.advance(1);
                break;
            }
            Some(_) => {}
        }
        let line = r.line;
        match edn::read(r.rest()) {
            Ok((form, rest)) => {
                let consumed = r.rest().len() - rest.len();
                r.advance(consumed);
                out.push((line, to_value(&form, line)?));
            }
            // The collection closes after `#_` discards, which the reader
            // consumed before meeting the closer.
            Err(e)
                if e.code == Code::UnmatchedDelimiter(closer)
                    && e.ptr.is_some_and(|p| only_discards(&r.rest()[..p])) =>
            {
                r.advance(e.ptr.unwrap_or(0) + 1);
                break;
            }
            Err(e) if e.code == Code::UnexpectedEOF => {
                return Err(ParseError::new(
                    r.line_at_end(),
                    format!("unterminated top-level collection opened on line {open_line}"),
                ))
            }
            Err(e) => return Err(r.error(&e)),
        }
    }
    if let Some((line, _)) = r.next_form()? {
        return Err(ParseError::new(
            line,
            "unexpected form after the top-level vector of operations",
        ));
    }
    Ok(out)
}

/// Whether `text` holds no form: only whitespace, comments and `#_`
/// discards. Asked of the reader itself, so it agrees with the reader on
/// what a discard covers: such text followed by `nil` reads as that `nil`.
fn only_discards(text: &str) -> bool {
    let probe = format!("{text}\nnil");
    let nothing_else = matches!(edn::read(&probe), Ok((Edn::Nil, rest)) if rest.trim().is_empty());
    nothing_else
}

/// A position in the text and its line.
struct Reader<'a> {
    text: &'a str,
    pos: usize,
    line: usize,
}

impl<'a> Reader<'a> {
    fn new(text: &'a str) -> Self {
        Reader {
            text,
            pos: 0,
            line: 1,
        }
    }

    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    /// Moves `n` bytes on (always to a char boundary: the reader reports
    /// byte offsets of characters), counting the newlines passed.
    fn advance(&mut self, n: usize) {
        let end = (self.pos + n).min(self.text.len());
        self.line += self.text[self.pos..end].matches('\n').count();
        self.pos = end;
    }

    fn line_at_end(&self) -> usize {
        self.line + self.rest().matches('\n').count()
    }

    /// Skips whitespace (a BOM too), commas and `;` comments, so that the
    /// next form's line is known before the reader consumes it.
    fn skip_blank(&mut self) {
        loop {
            let rest = self.rest();
            let skip = match rest.chars().next() {
                Some(';') => rest.find('\n').unwrap_or(rest.len()),
                Some(c) if c.is_whitespace() || c == ',' || c == '\u{feff}' => c.len_utf8(),
                _ => return,
            };
            self.advance(skip);
        }
    }

    /// The next top-level form and its line, or None at the end (trailing
    /// discards included).
    fn next_form(&mut self) -> Result<Option<(usize, Value)>, ParseError> {
        self.skip_blank();
        if self.rest().is_empty() {
            return Ok(None);
        }
        let line = self.line;
        match edn::read(self.rest()) {
            Ok((form, rest)) => {
                let consumed = self.rest().len() - rest.len();
                self.advance(consumed);
                to_value(&form, line).map(|v| Some((line, v)))
            }
            Err(e) if e.code == Code::UnexpectedEOF && only_discards(self.rest()) => {
                self.advance(self.rest().len());
                Ok(None)
            }
            // The reader names the end of the text; the form's first line
            // is where to look.
            Err(e) if e.code == Code::UnexpectedEOF => Err(ParseError::new(
                line,
                "the form starting on this line never ends (an unclosed \
                 collection or string, or a map key without a value)",
            )),
            Err(e) => Err(self.error(&e)),
        }
    }

    /// The reader's error on `self.rest()` as a [`ParseError`] on the
    /// line of the whole text.
    fn error(&self, e: &clojure_reader::error::Error) -> ParseError {
        let line = match e.line {
            Some(l) => self.line + l.saturating_sub(1),
            None => self.line_at_end(),
        };
        let near = e
            .ptr
            .and_then(|p| self.rest().get(..(p + 1).min(self.rest().len())))
            .unwrap_or(self.rest());
        let mut message = describe(&e.code);
        if near.contains("##") {
            message = "the symbolic values ##Inf, ##-Inf and ##NaN are not supported".into();
        }
        if let Some(col) = e.column {
            // The reader counts from where it started, which may be
            // mid-line (the second element on a line of the vector).
            let before = match e.line {
                Some(1) => self.text[..self.pos]
                    .rsplit('\n')
                    .next()
                    .map_or(0, |l| l.chars().count()),
                _ => 0,
            };
            message.push_str(&format!(" (column {})", col + before));
        }
        ParseError::new(line, message)
    }
}

fn describe(code: &Code) -> String {
    match code {
        Code::HashMapDuplicateKey => "duplicate key in a map".into(),
        Code::SetDuplicateKey => "duplicate element in a set".into(),
        Code::InvalidChar => "invalid character literal".into(),
        Code::InvalidEscape => {
            "unsupported string escape (supported: \\t \\r \\n \\\\ \\\")".into()
        }
        Code::InvalidKeyword => "invalid keyword".into(),
        Code::InvalidNumber => "invalid number".into(),
        Code::InvalidRadix(_) => "invalid radix in a number".into(),
        Code::InvalidTag => "invalid tag".into(),
        Code::UnexpectedEOF => {
            "unexpected end of input (an unclosed collection or string, or a map \
             with a key but no value)"
                .into()
        }
        Code::UnmatchedDelimiter(c) => format!("unexpected `{c}`"),
        other => format!("unreadable EDN ({other:?})"),
    }
}

fn to_value(form: &Edn<'_>, line: usize) -> Result<Value, ParseError> {
    convert(form, 0).map_err(|m| ParseError::new(line, m))
}

fn convert(form: &Edn<'_>, depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err(format!("nesting deeper than {MAX_DEPTH} levels"));
    }
    let seq = |items: &[Edn<'_>]| {
        let mut out = Vec::with_capacity(items.len());
        for e in items {
            out.push(convert(e, depth + 1)?);
        }
        Ok::<_, String>(out)
    };
    Ok(match form {
        Edn::Nil => Value::Nil,
        Edn::Bool(b) => Value::Bool(*b),
        Edn::Int(i) => Value::Int(*i),
        Edn::Double(f) => Value::Float(f.0),
        Edn::Rational((n, d)) => {
            if *d == 0 {
                return Err(format!("ratio {n}/{d} divides by zero"));
            }
            Value::Float(*n as f64 / *d as f64)
        }
        Edn::BigInt(b) => Value::Int(
            i64::try_from(b).map_err(|_| format!("integer {b} is out of range for 64 bits"))?,
        ),
        Edn::BigDec(d) => Value::Float(
            d.to_string()
                .parse()
                .map_err(|_| format!("decimal {d} is not a number"))?,
        ),
        Edn::Str(s) => Value::Str(s.to_string()),
        Edn::Char(c) => Value::Str(c.to_string()),
        Edn::Key(k) => Value::Keyword(k.to_string()),
        Edn::Symbol(s) => Value::Symbol(s.to_string()),
        Edn::Vector(items) | Edn::List(items) => Value::Vec(seq(items)?),
        Edn::Set(items) => {
            let mut out = Vec::with_capacity(items.len());
            for e in items {
                out.push(convert(e, depth + 1)?);
            }
            Value::Set(out)
        }
        Edn::Map(entries) => {
            let mut out = Vec::with_capacity(entries.len());
            for (k, v) in entries {
                out.push((convert(k, depth + 1)?, convert(v, depth + 1)?));
            }
            Value::Map(out)
        }
        // Jepsen writes records (`#jepsen.history.Op{...}`), objects and
        // instants as tagged literals; the inner value is what a checker
        // can use.
        Edn::Tagged(_, inner) => convert(inner, depth + 1)?,
        other => return Err(format!("unsupported EDN value {other}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kw(s: &str) -> Value {
        Value::Keyword(s.into())
    }

    #[test]
    fn atoms() {
        assert_eq!(read_one("nil").unwrap(), Value::Nil);
        assert_eq!(read_one("true").unwrap(), Value::Bool(true));
        assert_eq!(read_one(" -42 ").unwrap(), Value::Int(-42));
        assert_eq!(read_one("+7").unwrap(), Value::Int(7));
        assert_eq!(read_one("12N").unwrap(), Value::Int(12));
        assert_eq!(read_one("1.5").unwrap(), Value::Float(1.5));
        assert_eq!(read_one("2.5M").unwrap(), Value::Float(2.5));
        assert_eq!(read_one("1e3").unwrap(), Value::Float(1000.0));
        assert_eq!(read_one("1/2").unwrap(), Value::Float(0.5));
        assert_eq!(read_one("0x1f").unwrap(), Value::Int(31));
        assert_eq!(read_one(":ok").unwrap(), kw("ok"));
        assert_eq!(read_one(":jepsen/op").unwrap(), kw("jepsen/op"));
        assert_eq!(
            read_one("foo.bar").unwrap(),
            Value::Symbol("foo.bar".into())
        );
        assert_eq!(read_one("-").unwrap(), Value::Symbol("-".into()));
        assert_eq!(read_one("\\a").unwrap(), Value::Str("a".into()));
        assert_eq!(read_one("\\newline").unwrap(), Value::Str("\n".into()));
    }

    #[test]
    fn strings_with_escapes() {
        assert_eq!(
            read_one(r#""a\"b\\c\nd\té""#).unwrap(),
            Value::Str("a\"b\\c\nd\té".into())
        );
        assert_eq!(
            read_one("\"x 0 0 y\"").unwrap(),
            Value::Str("x 0 0 y".into())
        );
        // Raw control characters, as Clojure's printer writes most of them.
        assert_eq!(
            read_one("\"a\u{1}b\"").unwrap(),
            Value::Str("a\u{1}b".into())
        );
    }

    #[test]
    fn collections_nested() {
        let v = read_one("{:a [1 (2 3) #{4}], \"k\" {:b nil}}").unwrap();
        assert_eq!(
            v,
            Value::Map(vec![
                (
                    kw("a"),
                    Value::Vec(vec![
                        Value::Int(1),
                        Value::Vec(vec![Value::Int(2), Value::Int(3)]),
                        Value::Set(vec![Value::Int(4)]),
                    ])
                ),
                (
                    Value::Str("k".into()),
                    Value::Map(vec![(kw("b"), Value::Nil)])
                ),
            ])
        );
    }

    #[test]
    fn comments_commas_discard_and_tags() {
        let v = read_one("; leading\n[1, 2 ; two\n #_ 99 3 #_(x y)]").unwrap();
        assert_eq!(
            v,
            Value::Vec(vec![Value::Int(1), Value::Int(2), Value::Int(3)])
        );
        let v = read_one("#jepsen.history.Op{:type :ok}").unwrap();
        assert_eq!(v, Value::Map(vec![(kw("type"), kw("ok"))]));
        let v = read_one("#object[java.lang.Foo 0x1f \"x\"]").unwrap();
        assert_eq!(
            v,
            Value::Vec(vec![
                Value::Symbol("java.lang.Foo".into()),
                Value::Int(31),
                Value::Str("x".into())
            ])
        );
        assert_eq!(
            read_one("#inst \"2020\"").unwrap(),
            Value::Str("2020".into())
        );
        assert_eq!(read_one("#_ #foo{:a 1} 5").unwrap(), Value::Int(5));
        assert_eq!(read_one("5 #_ 6 ; end").unwrap(), Value::Int(5));
    }

    #[test]
    fn history_forms_both_layouts() {
        let lines = read_history_forms("; c\n{:a 1}\n\n{:a 2}\n#_ {:a 3}\n").unwrap();
        assert_eq!(
            lines.iter().map(|(l, _)| *l).collect::<Vec<_>>(),
            vec![2, 4]
        );
        let vec = read_history_forms("[{:a 1}\n {:a\n 2}]\n; trailing\n").unwrap();
        assert_eq!(vec.iter().map(|(l, _)| *l).collect::<Vec<_>>(), vec![1, 2]);
        let list = read_history_forms("({:a 1}, {:a 2} #_ {:a 3})").unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].1, Value::Map(vec![(kw("a"), Value::Int(2))]));
        assert_eq!(read_history_forms("").unwrap(), vec![]);
        assert_eq!(read_history_forms("[]").unwrap(), vec![]);
    }

    #[test]
    fn malformed_input_is_an_error_with_a_line() {
        let cases = [
            ("{:a 1", 1),
            ("\n\n[1 2", 3),
            ("{:a}", 1),
            ("\n)", 2),
            ("\"abc", 1),
            ("\n\"a\\q\"", 2),
            ("99999999999999999999999", 1),
            ("1.2.3", 1),
            ("#", 1),
            ("#{", 1),
            ("\\", 1),
            ("{:a 1 :a 2}", 1),
            ("\n#{1 1}", 2),
            ("1/0", 1),
            ("1 2", 1),
            ("", 1),
        ];
        for (text, line) in cases {
            let err = read_one(text).expect_err(text);
            assert_eq!(err.line, line, "{text:?}: {err}");
        }
        let deep = "[".repeat(10_000);
        assert!(read_one(&deep).is_err());
        let closed = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let err = read_one(&closed).unwrap_err();
        assert!(err.message.contains("nesting deeper"), "{err}");
        let err = read_history_forms("{:a 1}\n{:b 2\n").unwrap_err();
        assert_eq!(err.line, 2, "{err}");
        let err = read_history_forms("[{:a 1}\n{:b 2}\n").unwrap_err();
        assert!(err.message.contains("line 1"), "{err}");
        let err = read_history_forms("[{:a 1}\n{:b 2]\n").unwrap_err();
        assert_eq!(err.line, 2, "{err}");
        let err = read_history_forms("[{:a 1} {:b 2 :c]").unwrap_err();
        assert!(err.message.ends_with("(column 17)"), "{err}");
        let err = read_history_forms("[{:a 1}]\n{:b 2}").unwrap_err();
        assert_eq!(err.line, 2, "{err}");
        let err = read_history_forms("{:a 1}\n{:value ##Inf}\n").unwrap_err();
        assert_eq!(err.line, 2, "{err}");
        assert!(err.message.contains("##Inf"), "{err}");
    }

    #[test]
    fn never_panics_on_arbitrary_prefixes() {
        let text = "[{:process 0, :type :ok, :f :txn, :value [[:r 1 [1 2]] #{\"é\\n\" 1.5 \\c}]} ; x\n #_ #foo{:a 1} ^:m (1 2N 1/2)]";
        for end in 0..=text.len() {
            if text.is_char_boundary(end) {
                let _ = read_one(&text[..end]);
                let _ = read_history_forms(&text[..end]);
            }
        }
    }
}
