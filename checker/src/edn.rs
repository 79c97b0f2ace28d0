//! A small EDN reader: enough of the format for Jepsen histories, with line
//! numbers on every error and no panics on malformed input.

use crate::{ParseError, Value};

/// Deeper nesting than this is certainly not a history, and bounding it keeps
/// the recursive descent from overflowing the stack on hostile input.
const MAX_DEPTH: usize = 256;

pub(crate) struct Reader<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    line: usize,
    depth: usize,
}

/// Reads exactly one form (surrounded only by whitespace and comments).
pub(crate) fn read_one(text: &str) -> Result<Value, ParseError> {
    let mut r = Reader::new(text);
    let Some((line, v)) = r.next_item(None)? else {
        return Err(r.err("expected an EDN form, found end of input"));
    };
    if r.next_item(None)?.is_some() {
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
    r.skip_ws();
    let mut out = Vec::new();
    let closer = match r.peek() {
        Some(b'[') => Some(b']'),
        Some(b'(') => Some(b')'),
        _ => None,
    };
    if let Some(closer) = closer {
        let open_line = r.line;
        r.pos += 1;
        r.depth = 1;
        loop {
            match r.next_item(Some(closer)) {
                Ok(Some(item)) => out.push(item),
                Ok(None) => break,
                Err(e) if e.message == UNTERMINATED => {
                    return Err(ParseError::new(
                        e.line,
                        format!("unterminated top-level collection opened on line {open_line}"),
                    ))
                }
                Err(e) => return Err(e),
            }
        }
        r.depth = 0;
        if let Some((line, _)) = r.next_item(None)? {
            return Err(ParseError::new(
                line,
                "unexpected form after the top-level vector of operations",
            ));
        }
    } else {
        while let Some(item) = r.next_item(None)? {
            out.push(item);
        }
    }
    Ok(out)
}

const UNTERMINATED: &str = "unexpected end of input inside a collection";

pub(crate) fn is_symbol_char(c: char) -> bool {
    c.is_alphanumeric() || "*+!-_?$%&=<>/.:#'".contains(c)
}

fn is_delimiter(b: u8) -> bool {
    matches!(
        b,
        b' ' | b'\t' | b'\n' | b'\r' | b',' | b'(' | b')' | b'[' | b']' | b'{' | b'}' | b'"' | b';'
    ) || b == 0x0c
}

impl<'a> Reader<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        Reader {
            text,
            bytes: text.as_bytes(),
            pos: 0,
            line: 1,
            depth: 0,
        }
    }

    fn err(&self, msg: impl Into<String>) -> ParseError {
        ParseError::new(self.line, msg)
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn peek_at(&self, off: usize) -> Option<u8> {
        self.bytes.get(self.pos + off).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b) = self.peek() {
            match b {
                b'\n' => {
                    self.line += 1;
                    self.pos += 1;
                }
                b' ' | b'\t' | b'\r' | b',' | 0x0c => self.pos += 1,
                b';' => {
                    while let Some(b) = self.peek() {
                        if b == b'\n' {
                            break;
                        }
                        self.pos += 1;
                    }
                }
                _ => {
                    // Unicode whitespace (e.g. a BOM or NBSP) is still
                    // whitespace; anything else starts a token.
                    match self.text[self.pos..].chars().next() {
                        Some(c) if c.is_whitespace() || c == '\u{feff}' => self.pos += c.len_utf8(),
                        _ => return,
                    }
                }
            }
        }
    }

    /// The next form of a collection closed by `closer` (or of the top level
    /// when `closer` is None). Returns None at the closer (consumed) or, at
    /// the top level, at end of input. Handles `#_` discards, which may sit
    /// right before a closer.
    pub(crate) fn next_item(
        &mut self,
        closer: Option<u8>,
    ) -> Result<Option<(usize, Value)>, ParseError> {
        loop {
            self.skip_ws();
            match self.peek() {
                None => {
                    return match closer {
                        None => Ok(None),
                        Some(_) => Err(self.err(UNTERMINATED)),
                    }
                }
                Some(b) if Some(b) == closer => {
                    self.pos += 1;
                    return Ok(None);
                }
                Some(b'#') if self.peek_at(1) == Some(b'_') => {
                    self.pos += 2;
                    self.read_form()?;
                }
                Some(_) => {
                    let line = self.line;
                    return Ok(Some((line, self.read_form()?)));
                }
            }
        }
    }

    fn read_form(&mut self) -> Result<Value, ParseError> {
        self.skip_ws();
        let Some(b) = self.peek() else {
            return Err(self.err("unexpected end of input, expected a form"));
        };
        match b {
            b'[' => self.read_coll(b']').map(Value::Vec),
            b'(' => self.read_coll(b')').map(Value::Vec),
            b'{' => self.read_map(),
            b')' | b']' | b'}' => Err(self.err(format!("unexpected `{}`", b as char))),
            b'"' => {
                self.pos += 1;
                self.read_string().map(Value::Str)
            }
            b'#' => self.read_dispatch(),
            b':' => {
                self.pos += 1;
                // `::kw` (auto-resolved) reads as the plain keyword.
                if self.peek() == Some(b':') {
                    self.pos += 1;
                }
                let tok = self.read_token();
                if tok.is_empty() {
                    return Err(self.err("empty keyword"));
                }
                Ok(Value::Keyword(tok.to_string()))
            }
            b'\\' => self.read_char(),
            b'^' => {
                // Metadata: read and drop it, then the form it decorates.
                self.pos += 1;
                self.nested(|r| r.read_form())?;
                self.read_form()
            }
            b'\'' | b'`' | b'~' | b'@' => {
                Err(self.err(format!("reader macro `{}` is not EDN", b as char)))
            }
            _ => {
                let line = self.line;
                let tok = self.read_token();
                if tok.is_empty() {
                    // A character that is neither a delimiter nor valid in a
                    // token; step over it so the error points at it.
                    let c = self.text[self.pos..].chars().next().unwrap_or('?');
                    return Err(ParseError::new(line, format!("unexpected character {c:?}")));
                }
                parse_atom(tok).map_err(|m| ParseError::new(line, m))
            }
        }
    }

    fn nested<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, ParseError>,
    ) -> Result<T, ParseError> {
        if self.depth >= MAX_DEPTH {
            return Err(self.err(format!("nesting deeper than {MAX_DEPTH} levels")));
        }
        self.depth += 1;
        let r = f(self);
        self.depth -= 1;
        r
    }

    fn read_coll(&mut self, closer: u8) -> Result<Vec<Value>, ParseError> {
        let open_line = self.line;
        self.pos += 1;
        self.nested(|r| {
            let mut items = Vec::new();
            loop {
                match r.next_item(Some(closer)) {
                    Ok(Some((_, v))) => items.push(v),
                    Ok(None) => return Ok(items),
                    Err(e) if e.message == UNTERMINATED => {
                        return Err(ParseError::new(
                            e.line,
                            format!(
                                "unterminated collection: `{}` opened on line {open_line} is never closed",
                                match closer {
                                    b']' => '[',
                                    b')' => '(',
                                    _ => '{',
                                }
                            ),
                        ))
                    }
                    Err(e) => return Err(e),
                }
            }
        })
    }

    fn read_map(&mut self) -> Result<Value, ParseError> {
        let line = self.line;
        let items = self.read_coll(b'}')?;
        if items.len() % 2 != 0 {
            return Err(ParseError::new(
                line,
                "map literal must contain an even number of forms",
            ));
        }
        let mut entries = Vec::with_capacity(items.len() / 2);
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            entries.push((k, v));
        }
        Ok(Value::Map(entries))
    }

    fn read_dispatch(&mut self) -> Result<Value, ParseError> {
        // self.peek() == '#'
        match self.peek_at(1) {
            Some(b'{') => {
                self.pos += 1;
                self.read_coll(b'}').map(Value::Set)
            }
            Some(b'_') => {
                self.pos += 2;
                self.nested(|r| r.read_form())?;
                self.read_form()
            }
            Some(b'#') => {
                self.pos += 2;
                let line = self.line;
                match self.read_token() {
                    "Inf" => Ok(Value::Float(f64::INFINITY)),
                    "-Inf" => Ok(Value::Float(f64::NEG_INFINITY)),
                    "NaN" => Ok(Value::Float(f64::NAN)),
                    t => Err(ParseError::new(
                        line,
                        format!("unknown symbolic value ##{t}"),
                    )),
                }
            }
            Some(b'"') => {
                // A regex literal; its source text is the useful part.
                self.pos += 2;
                self.read_string().map(Value::Str)
            }
            Some(c) if c.is_ascii_alphabetic() => {
                // Tagged literal, e.g. #inst "...", #object[...] or
                // #jepsen.history.Op{...}: keep the inner value.
                self.pos += 1;
                let tok = self.read_token();
                if tok.is_empty() {
                    return Err(self.err("empty tag after `#`"));
                }
                self.skip_ws();
                if self.peek().is_none() {
                    return Err(self.err(format!("tag #{tok} is not followed by a form")));
                }
                self.nested(|r| r.read_form())
            }
            _ => Err(self.err("unsupported dispatch `#` form")),
        }
    }

    /// Reads a token up to the next delimiter.
    fn read_token(&mut self) -> &'a str {
        let start = self.pos;
        while let Some(b) = self.peek() {
            if is_delimiter(b) {
                break;
            }
            if b >= 0x80 {
                // Stop at Unicode whitespace too.
                if let Some(c) = self.text[self.pos..].chars().next() {
                    if c.is_whitespace() {
                        break;
                    }
                    self.pos += c.len_utf8();
                    continue;
                }
            }
            self.pos += 1;
        }
        &self.text[start..self.pos]
    }

    /// Reads a string body; the opening quote has been consumed.
    fn read_string(&mut self) -> Result<String, ParseError> {
        let start_line = self.line;
        let mut out = String::new();
        let mut chars = self.text[self.pos..].char_indices();
        while let Some((off, c)) = chars.next() {
            match c {
                '"' => {
                    self.pos += off + 1;
                    return Ok(out);
                }
                '\n' => {
                    self.line += 1;
                    out.push('\n');
                }
                '\\' => {
                    let Some((_, e)) = chars.next() else { break };
                    match e {
                        'n' => out.push('\n'),
                        't' => out.push('\t'),
                        'r' => out.push('\r'),
                        'b' => out.push('\u{8}'),
                        'f' => out.push('\u{c}'),
                        '"' => out.push('"'),
                        '\\' => out.push('\\'),
                        '\'' => out.push('\''),
                        'u' => {
                            let hex: String = chars.by_ref().take(4).map(|(_, c)| c).collect();
                            let ch = (hex.len() == 4)
                                .then(|| u32::from_str_radix(&hex, 16).ok())
                                .flatten()
                                .and_then(char::from_u32);
                            match ch {
                                Some(ch) => out.push(ch),
                                None => {
                                    return Err(self.err(format!("invalid unicode escape \\u{hex}")))
                                }
                            }
                        }
                        other => {
                            return Err(self.err(format!("invalid string escape \\{other}")));
                        }
                    }
                }
                c => out.push(c),
            }
        }
        Err(ParseError::new(
            start_line,
            "unterminated string (no closing `\"`)",
        ))
    }

    fn read_char(&mut self) -> Result<Value, ParseError> {
        self.pos += 1;
        // The first character is taken even if it is a delimiter (`\(`).
        let Some(first) = self.text[self.pos..].chars().next() else {
            return Err(self.err("unexpected end of input after `\\`"));
        };
        let start = self.pos;
        self.pos += first.len_utf8();
        let rest = self.read_token();
        let tok = &self.text[start..start + first.len_utf8() + rest.len()];
        let c = match tok {
            "newline" => '\n',
            "space" => ' ',
            "tab" => '\t',
            "return" => '\r',
            "backspace" => '\u{8}',
            "formfeed" => '\u{c}',
            t if t.chars().count() == 1 => first,
            t if t.starts_with('u') && t.len() == 5 => u32::from_str_radix(&t[1..], 16)
                .ok()
                .and_then(char::from_u32)
                .ok_or_else(|| self.err(format!("invalid character literal \\{t}")))?,
            t => return Err(self.err(format!("invalid character literal \\{t}"))),
        };
        Ok(Value::Str(c.to_string()))
    }
}

fn parse_atom(tok: &str) -> Result<Value, String> {
    match tok {
        "nil" => return Ok(Value::Nil),
        "true" => return Ok(Value::Bool(true)),
        "false" => return Ok(Value::Bool(false)),
        _ => {}
    }
    let b = tok.as_bytes();
    let numeric = b[0].is_ascii_digit()
        || (matches!(b[0], b'+' | b'-') && b.len() > 1 && b[1].is_ascii_digit());
    if numeric {
        return parse_number(tok);
    }
    if tok.chars().all(is_symbol_char) {
        Ok(Value::Symbol(tok.to_string()))
    } else {
        Err(format!("invalid token {tok:?}"))
    }
}

fn parse_number(tok: &str) -> Result<Value, String> {
    // Fast path for the common case, a short run of digits: it cannot
    // overflow, so there is nothing to check.
    let b = tok.as_bytes();
    let (neg, start) = match b[0] {
        b'-' => (true, 1),
        b'+' => (false, 1),
        _ => (false, 0),
    };
    if b.len() - start <= 18 && b[start..].iter().all(u8::is_ascii_digit) && b.len() > start {
        let n = b[start..]
            .iter()
            .fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0'));
        return Ok(Value::Int(if neg { -n } else { n }));
    }
    let bad = || format!("invalid number {tok:?}");
    if let Some(int) = tok.strip_suffix('N') {
        return int
            .parse::<i64>()
            .map(Value::Int)
            .map_err(|_| format!("integer {tok} is out of range or malformed"));
    }
    if let Some(dec) = tok.strip_suffix('M') {
        return dec.parse::<f64>().map(Value::Float).map_err(|_| bad());
    }
    if let Some((n, d)) = tok.split_once('/') {
        let n: i64 = n.parse().map_err(|_| bad())?;
        let d: i64 = d.parse().map_err(|_| bad())?;
        if d == 0 {
            return Err(format!("ratio {tok} divides by zero"));
        }
        return Ok(Value::Float(n as f64 / d as f64));
    }
    if tok.contains(['.', 'e', 'E']) {
        // Rust's float grammar also accepts "inf"/"nan", but those never
        // reach here because numbers start with a digit.
        return tok.parse::<f64>().map(Value::Float).map_err(|_| bad());
    }
    let (neg, digits) = match tok.as_bytes()[0] {
        b'-' => (true, &tok[1..]),
        b'+' => (false, &tok[1..]),
        _ => (false, tok),
    };
    if let Some(hex) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        let v = i64::from_str_radix(hex, 16).map_err(|_| bad())?;
        return Ok(Value::Int(if neg { -v } else { v }));
    }
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    tok.parse::<i64>()
        .map(Value::Int)
        .map_err(|_| format!("integer {tok} is out of range for a 64-bit integer"))
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
        assert_eq!(read_one("1e3").unwrap(), Value::Float(1000.0));
        assert_eq!(read_one("1/2").unwrap(), Value::Float(0.5));
        assert_eq!(read_one(":ok").unwrap(), kw("ok"));
        assert_eq!(read_one(":jepsen/op").unwrap(), kw("jepsen/op"));
        assert_eq!(
            read_one("foo.bar").unwrap(),
            Value::Symbol("foo.bar".into())
        );
        assert_eq!(read_one("-").unwrap(), Value::Symbol("-".into()));
        assert_eq!(read_one("\\a").unwrap(), Value::Str("a".into()));
        assert_eq!(read_one("\\newline").unwrap(), Value::Str("\n".into()));
        assert_eq!(read_one("##Inf").unwrap(), Value::Float(f64::INFINITY));
    }

    #[test]
    fn strings_with_escapes() {
        assert_eq!(
            read_one(r#""a\"b\\c\nd\u00e9""#).unwrap(),
            Value::Str("a\"b\\c\nd\u{e9}".into())
        );
        assert_eq!(
            read_one("\"x 0 0 y\"").unwrap(),
            Value::Str("x 0 0 y".into())
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
    }

    #[test]
    fn history_forms_both_layouts() {
        let lines = read_history_forms("; c\n{:a 1}\n\n{:a 2}\n").unwrap();
        assert_eq!(
            lines.iter().map(|(l, _)| *l).collect::<Vec<_>>(),
            vec![2, 4]
        );
        let vec = read_history_forms("[{:a 1}\n {:a\n 2}]\n; trailing\n").unwrap();
        assert_eq!(vec.iter().map(|(l, _)| *l).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(read_history_forms("").unwrap(), vec![]);
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
            ("99999999999999999999", 1),
            ("1.2.3", 1),
            ("#", 1),
            ("#{", 1),
            ("'x", 1),
            ("\\", 1),
            ("##Foo", 1),
            ("1 2", 1),
            ("", 1),
        ];
        for (text, line) in cases {
            let err = read_one(text).expect_err(text);
            assert_eq!(err.line, line, "{text:?}: {err}");
        }
        let deep = "[".repeat(10_000);
        assert!(read_one(&deep).is_err());
        let err = read_history_forms("{:a 1}\n{:b 2\n").unwrap_err();
        assert_eq!(err.line, 3, "{err}");
        let err = read_history_forms("[{:a 1}\n{:b 2}\n").unwrap_err();
        assert!(err.message.contains("line 1"), "{err}");
    }

    #[test]
    fn never_panics_on_arbitrary_prefixes() {
        let text = "[{:process 0, :type :ok, :f :txn, :value [[:r 1 [1 2]] #{\"é\\n\" 1.5 \\c}]} ; x\n #_ #foo{:a ##NaN} ^:m (1 2N 1/2)]";
        for end in 0..=text.len() {
            if text.is_char_boundary(end) {
                let _ = read_one(&text[..end]);
                let _ = read_history_forms(&text[..end]);
            }
        }
    }
}
