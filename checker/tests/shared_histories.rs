//! Checks every history in the shared corpus (`shared/histories`, a sibling
//! of the repository) against its published verdict, and the CLI's exit
//! codes on them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pact_check::{check, parse_auto, parse_edn, parse_json, to_edn, to_jsonl, Model, Options};

/// Known verdicts: (file, model, expected anomalies; empty = valid).
const VERDICTS: &[(&str, Model, &[&str])] = &[
    (
        "cas-register/etcd_000.edn",
        Model::CasRegister,
        &["nonlinearizable"],
    ),
    (
        "cas-register/etcd_001.edn",
        Model::CasRegister,
        &["nonlinearizable"],
    ),
    ("cas-register/etcd_002.edn", Model::CasRegister, &[]),
    (
        "cas-register/etcd_003.edn",
        Model::CasRegister,
        &["nonlinearizable"],
    ),
    (
        "cas-register/etcd_004.edn",
        Model::CasRegister,
        &["nonlinearizable"],
    ),
    ("cas-register/etcd_005.edn", Model::CasRegister, &[]),
    (
        "cas-register/etcd_006.edn",
        Model::CasRegister,
        &["nonlinearizable"],
    ),
    ("cas-register/etcd_007.edn", Model::CasRegister, &[]),
    (
        "cas-register/etcd_008.edn",
        Model::CasRegister,
        &["nonlinearizable"],
    ),
    (
        "cas-register/etcd_009.edn",
        Model::CasRegister,
        &["nonlinearizable"],
    ),
    (
        "cas-register/knossos-memstress3-9.edn",
        Model::CasRegister,
        &[],
    ),
    (
        "cas-register/knossos-cas-failure.edn",
        Model::CasRegister,
        &["nonlinearizable"],
    ),
    ("kv/porcupine-c01-ok.edn", Model::Kv, &[]),
    ("kv/porcupine-c01-bad.edn", Model::Kv, &["nonlinearizable"]),
    (
        "list-append/elle-si-without-g-single.edn",
        Model::ListAppend,
        &["G2-item"],
    ),
];

/// Generous for a debug build on a 2-core machine; the slowest history
/// takes well under a second.
const TIME_LIMIT: Duration = Duration::from_secs(5);

/// `PACT_SHARED_DIR` (the `shared/` folder) wins; else the repository's
/// sibling `shared/`.
fn shared() -> Option<PathBuf> {
    let dir = match std::env::var_os("PACT_SHARED_DIR") {
        Some(d) => PathBuf::from(d).join("histories"),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/histories"),
    };
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "skipping: {} not found (CI clones the repository beside shared/)",
            dir.display()
        );
        None
    }
}

/// Files named in the first column of the README's table.
fn readme_files(dir: &Path) -> Vec<String> {
    let readme = std::fs::read_to_string(dir.join("README.md")).expect("README.md");
    readme
        .lines()
        .filter_map(|l| l.strip_prefix('|'))
        .filter_map(|l| l.split('|').next())
        .map(str::trim)
        .filter(|f| f.ends_with(".edn") || f.ends_with(".json") || f.ends_with(".jsonl"))
        .map(String::from)
        .collect()
}

#[test]
fn every_listed_history_has_a_verdict_here() {
    let Some(dir) = shared() else { return };
    let listed = readme_files(&dir);
    assert!(listed.len() >= VERDICTS.len(), "README lists {listed:?}");
    for f in &listed {
        assert!(
            VERDICTS.iter().any(|(v, _, _)| v == f),
            "{f} is listed in shared/histories/README.md but has no verdict in this test"
        );
    }
}

#[test]
fn known_verdicts() {
    let Some(dir) = shared() else { return };
    let mut report = Vec::new();
    for &(file, model, expected) in VERDICTS {
        let text =
            std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let history = parse_auto(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        let mut runs = vec![Options::default()];
        if model == Model::ListAppend {
            // The G2-item cycle needs no realtime edge, so the verdict is
            // the same for serializability and strict serializability.
            runs.push(Options {
                realtime: false,
                ..Options::default()
            });
        }
        for opts in runs {
            let start = Instant::now();
            let result = check(model, &history, &opts);
            let took = start.elapsed();
            report.push(format!("{file}: {took:?} {:?}", result.anomalies));
            assert_eq!(
                result.anomalies, expected,
                "{file} (realtime {}): {}",
                opts.realtime, result.details
            );
            assert_eq!(result.valid, expected.is_empty(), "{file}");
            assert!(took < TIME_LIMIT, "{file} took {took:?}");
        }
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
fn invalid_verdicts_carry_evidence() {
    let Some(dir) = shared() else { return };
    let read = |f: &str| parse_edn(&std::fs::read_to_string(dir.join(f)).unwrap()).unwrap();
    let r = check(
        Model::CasRegister,
        &read("cas-register/etcd_000.edn"),
        &Options::default(),
    );
    assert!(
        r.details["op_that_could_not_be_linearized"].is_object(),
        "{}",
        r.details
    );
    let r = check(
        Model::ListAppend,
        &read("list-append/elle-si-without-g-single.edn"),
        &Options::default(),
    );
    let cycle = &r.details["G2-item"]["examples"][0];
    let steps = cycle["steps"].as_array().unwrap();
    assert!(
        steps.iter().filter(|s| s["rel"] == "rw").count() >= 2,
        "{cycle}"
    );
    assert_eq!(steps.first().unwrap()["from"], steps.last().unwrap()["to"]);
}

#[test]
fn round_trips() {
    let Some(dir) = shared() else { return };
    for &(file, _, _) in VERDICTS {
        let history = parse_auto(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap();
        assert!(!history.is_empty(), "{file}");
        assert_eq!(
            parse_edn(&to_edn(&history)).unwrap(),
            history,
            "{file} via EDN"
        );
        assert_eq!(
            parse_json(&to_jsonl(&history)).unwrap(),
            history,
            "{file} via JSON lines"
        );
        assert_eq!(
            parse_auto(&to_jsonl(&history)).unwrap(),
            history,
            "{file} sniffed"
        );
    }
}

#[test]
fn cli_exit_codes() {
    let Some(dir) = shared() else { return };
    let bin = env!("CARGO_BIN_EXE_pact-check");
    let run = |args: &[&str]| {
        let out = Command::new(bin)
            .args(args)
            .output()
            .expect("run pact-check");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let valid = dir.join("cas-register/etcd_002.edn");
    let invalid = dir.join("list-append/elle-si-without-g-single.edn");
    let (valid, invalid) = (valid.to_str().unwrap(), invalid.to_str().unwrap());

    let (code, out, _) = run(&["--model", "cas-register", valid]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.trim_end().ends_with(": valid"), "{out}");

    let (code, out, _) = run(&["--model", "list-append", invalid]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("INVALID [G2-item]"), "{out}");

    let (code, out, _) = run(&["--model", "list-append", "--json", "--no-realtime", invalid]);
    assert_eq!(code, Some(1));
    let json: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(json["anomalies"], serde_json::json!(["G2-item"]));
    assert_eq!(json["valid"], false);

    // Usage and input errors are 2, and win over an invalid verdict.
    let (code, _, err) = run(&["--model", "nope", valid]);
    assert_eq!(code, Some(2), "{err}");
    let (code, _, err) = run(&["--model", "kv", "/nonexistent/history.edn", invalid]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("/nonexistent/history.edn"), "{err}");

    let garbage =
        std::env::temp_dir().join(format!("pact-check-garbage-{}.edn", std::process::id()));
    std::fs::write(
        &garbage,
        "{:process 0, :type :invoke, :f :read}\n{:process 0, :type :ok\n",
    )
    .unwrap();
    let (code, _, err) = run(&["--model", "cas-register", garbage.to_str().unwrap()]);
    let _ = std::fs::remove_file(&garbage);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("line 2"), "{err}");
}

/// Every model on every history, and on randomly mangled copies of them:
/// wrong models and broken input must give errors or anomalies, not panics.
#[test]
fn no_panics_on_wrong_models_or_mangled_input() {
    let Some(dir) = shared() else { return };
    let models = [
        Model::ListAppend,
        Model::RwRegister,
        Model::Bank,
        Model::CasRegister,
        Model::Kv,
        Model::Set,
    ];
    let mut seed = 0x1234_5678_9abc_def1u64;
    let mut rand = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let opts = Options {
        max_states: 20_000,
        ..Options::default()
    };
    for &(file, _, _) in VERDICTS {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let history = parse_auto(&text).unwrap();
        for m in models {
            let r = check(m, &history, &opts);
            assert_eq!(r.valid, r.anomalies.is_empty(), "{file} {m:?}");
        }
        let bytes = text.as_bytes();
        for _ in 0..20 {
            let mut mangled = bytes.to_vec();
            for _ in 0..1 + rand(4) {
                let at = rand(mangled.len());
                match rand(3) {
                    0 => {
                        mangled.remove(at);
                    }
                    1 => {
                        let set = b"[]{}():;#\"\\ 1-";
                        mangled[at] = set[rand(set.len())];
                    }
                    _ => {
                        let set = b"[]{}#_";
                        mangled.insert(at, set[rand(set.len())]);
                    }
                }
            }
            let mangled = String::from_utf8_lossy(&mangled);
            if let Ok(h) = parse_auto(&mangled) {
                for m in models {
                    let _ = check(m, &h, &opts);
                }
            }
        }
    }
}
