//! YCSB workload files: Java `.properties` text.
//!
//! Handles what YCSB's files use: `key=value`, `key: value` and
//! `key value`, `#` / `!` comment lines, blank lines and lines continued
//! with a trailing backslash. Unicode escapes (`\uXXXX`) are not decoded.

use std::collections::BTreeMap;

/// Parse properties text; the error names the offending line.
pub fn parse(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    let mut lines = text.lines().enumerate();
    while let Some((idx, raw)) = lines.next() {
        let mut line = raw.trim_start().to_string();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        // Continuation: an odd number of trailing backslashes.
        while ends_with_continuation(&line) {
            line.pop();
            match lines.next() {
                Some((_, next)) => line.push_str(next.trim_start()),
                None => break,
            }
        }
        let (key, value) = split_pair(&line);
        if key.is_empty() {
            return Err(format!("line {}: missing property name: {raw:?}", idx + 1));
        }
        out.insert(unescape(key), unescape(value.trim()));
    }
    Ok(out)
}

fn ends_with_continuation(line: &str) -> bool {
    line.chars().rev().take_while(|c| *c == '\\').count() % 2 == 1
}

/// The key ends at the first unescaped `=`, `:` or whitespace.
fn split_pair(line: &str) -> (&str, &str) {
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '=' | ':' => return (&line[..i], &line[i + 1..]),
            c if c.is_whitespace() => {
                let rest = line[i..].trim_start();
                let rest = rest
                    .strip_prefix('=')
                    .or_else(|| rest.strip_prefix(':'))
                    .unwrap_or(rest);
                return (&line[..i], rest);
            }
            _ => {}
        }
    }
    (line, "")
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('t') => out.push('\t'),
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some(o) => out.push(o),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ycsb_style_file() {
        let text = "# Yahoo! Cloud System Benchmark\n\
                    ! bang comment\n\
                    \n\
                    recordcount=1000\n\
                    operationcount = 2000\n\
                    workload:site.ycsb.workloads.CoreWorkload\n\
                    readproportion 0.5\n\
                    requestdistribution=zip\\\n   fian\n\
                    empty=\n";
        let p = parse(text).unwrap();
        assert_eq!(p["recordcount"], "1000");
        assert_eq!(p["operationcount"], "2000");
        assert_eq!(p["workload"], "site.ycsb.workloads.CoreWorkload");
        assert_eq!(p["readproportion"], "0.5");
        assert_eq!(p["requestdistribution"], "zipfian");
        assert_eq!(p["empty"], "");
    }

    #[test]
    fn rejects_missing_name() {
        assert!(parse("=5\n").unwrap_err().contains("line 1"));
    }
}
