//! `pact-check`: checks history files against a consistency model.
//!
//! Exit status: 0 when every file is valid, 1 when any is invalid, 2 on a
//! usage, I/O or parse error (errors win over invalid results so that a
//! broken input is never mistaken for a consistency verdict).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use pact_check::{check, parse_auto, parse_edn, parse_json, Model, Options};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    Auto,
    Edn,
    Json,
}

/// Check Jepsen-style histories for consistency anomalies.
#[derive(Parser, Debug)]
#[command(name = "pact-check", version)]
struct Args {
    /// The model to check against.
    #[arg(long, value_enum)]
    model: Model,
    /// Input format.
    #[arg(long, value_enum, default_value = "auto")]
    format: Format,
    /// Check serializability only (no process or realtime order) for
    /// list-append and rw-register.
    #[arg(long)]
    no_realtime: bool,
    /// Bank: expected total of all balances (default: the first read's).
    #[arg(long, allow_negative_numbers = true)]
    bank_total: Option<i64>,
    /// Linearizability search budget (memoized configurations).
    #[arg(long)]
    max_states: Option<usize>,
    /// Print each result as one JSON object per line.
    #[arg(long)]
    json: bool,
    /// History files.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

fn run_one(args: &Args, opts: &Options, path: &PathBuf) -> anyhow::Result<bool> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let history = match args.format {
        Format::Auto => parse_auto(&text),
        Format::Edn => parse_edn(&text),
        Format::Json => parse_json(&text),
    }
    .with_context(|| format!("parsing {}", path.display()))?;
    let result = check(args.model, &history, opts);
    if args.json {
        let mut obj = serde_json::Map::new();
        obj.insert("file".into(), path.display().to_string().into());
        if let serde_json::Value::Object(fields) = serde_json::to_value(&result)? {
            obj.extend(fields);
        }
        println!("{}", serde_json::Value::Object(obj));
    } else if result.valid {
        println!("{}: valid", path.display());
    } else {
        println!(
            "{}: INVALID [{}]",
            path.display(),
            result.anomalies.join(" ")
        );
    }
    Ok(result.valid)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let defaults = Options::default();
    let opts = Options {
        bank_total: args.bank_total,
        realtime: !args.no_realtime,
        max_states: args.max_states.unwrap_or(defaults.max_states),
        ..defaults
    };
    let mut any_invalid = false;
    let mut any_error = false;
    for path in &args.files {
        match run_one(&args, &opts, path) {
            Ok(valid) => any_invalid |= !valid,
            Err(e) => {
                eprintln!("pact-check: {e:#}");
                any_error = true;
            }
        }
    }
    if any_error {
        ExitCode::from(2)
    } else if any_invalid {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
