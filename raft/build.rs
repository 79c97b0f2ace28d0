//! Records the commit this build comes from, for the `pact_build_info`
//! gauge: `PACT_COMMIT` if the builder sets it (a source tarball has no
//! git), else `git rev-parse`, else nothing (the gauge then says
//! "unknown").

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=PACT_COMMIT");
    let commit = match std::env::var("PACT_COMMIT") {
        Ok(c) if !c.is_empty() => c,
        _ => {
            // Rebuild when HEAD moves: the reflog of HEAD changes on every
            // commit and checkout (in a worktree too). Only an existing path
            // is watched: cargo reruns a script on every build for a
            // missing one.
            for p in ["logs/HEAD", "HEAD"] {
                if let Some(path) = git(&["rev-parse", "--git-path", p]) {
                    if std::path::Path::new(&path).exists() {
                        println!("cargo:rerun-if-changed={path}");
                    }
                }
            }
            git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_default()
        }
    };
    println!("cargo:rustc-env=PACT_COMMIT={commit}");
}
