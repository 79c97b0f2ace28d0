//! What every Pact binary says about its own build, computed once by a
//! build script.
//!
//! Each binary's package has a two-line `build.rs` that calls [`emit`]; it
//! asks git for the commit the tree is at and whether tracked files differ
//! from it, and hands the compiler `PACT_VERSION`, read by the binary's
//! clap `version` (`txn --version` prints `txn 0.1.0 (git 1a2b3c4d)`, or
//! `1a2b3c4d-dirty`). Keeping the logic here, not in five copies of a
//! build script, is why this crate exists; it has no dependencies and is
//! only ever a build-dependency.
//!
//! No network is involved, and nothing fails the build: without git, or
//! outside a git checkout (a source tarball), the commit is `unknown`. A
//! tarball from a git-less export can say where it came from by setting
//! `PACT_BUILD_COMMIT` at build time, which wins over git.
//!
//! When it is recomputed: cargo reruns the build script when HEAD moves
//! (commit, checkout), when the index file changes (`git add`, or a `git
//! status` that refreshes it), and when the package's own sources change;
//! each rerun recompiles that package. An edit to another crate that is
//! neither committed nor staged does not rerun it, so the dirty mark of a
//! binary whose own package was untouched can lag until the next git
//! operation; watching the whole tree would close that gap at the price of
//! recompiling every server crate on every edit anywhere.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Build-time override of the commit, for trees without git metadata.
pub const COMMIT_ENV: &str = "PACT_BUILD_COMMIT";

/// The commit as the version string shows it: the short hash, `-dirty`
/// when tracked files differed from it, or `unknown`.
pub fn describe(commit: Option<&str>, dirty: bool) -> String {
    match commit {
        Some(c) if dirty => format!("{c}-dirty"),
        Some(c) => c.to_string(),
        None => "unknown".to_string(),
    }
}

/// The full `--version` text after the binary's name.
pub fn version(pkg_version: &str, commit: &str) -> String {
    format!("{pkg_version} (git {commit})")
}

/// The checkout that `dir` belongs to, as far as this build is concerned.
pub struct Checkout {
    dir: PathBuf,
}

impl Checkout {
    pub fn at(dir: &Path) -> Checkout {
        Checkout {
            dir: dir.to_path_buf(),
        }
    }

    fn git(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("git")
            .arg("-C")
            .arg(&self.dir)
            .args(args)
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// True when `dir` is in a git work tree that tracks its `Cargo.toml`:
    /// a tarball unpacked inside some unrelated repository is not.
    fn tracked(&self) -> bool {
        self.git(&["ls-files", "--error-unmatch", "Cargo.toml"])
            .is_some()
    }

    /// Short hash of HEAD, if this is a checkout with git available.
    pub fn commit(&self) -> Option<String> {
        if !self.tracked() {
            return None;
        }
        self.git(&["rev-parse", "--short", "HEAD"])
            .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit()))
    }

    /// Whether tracked files differ from HEAD (staged or not); untracked
    /// files do not count, as with `git describe --dirty`.
    pub fn dirty(&self) -> bool {
        self.git(&["status", "--porcelain", "--untracked-files=no"])
            .is_some_and(|s| !s.is_empty())
    }

    /// The git files whose change means HEAD or the index moved: HEAD,
    /// the branch it points to, packed refs and the index. Only those that
    /// exist (cargo reruns a script on every build for a missing path).
    pub fn watched(&self) -> Vec<PathBuf> {
        let mut names = vec!["HEAD".to_string(), "index".to_string()];
        names.push("packed-refs".to_string());
        if let Some(branch) = self.git(&["symbolic-ref", "-q", "HEAD"]) {
            names.push(branch);
        }
        names
            .iter()
            .filter_map(|n| self.git(&["rev-parse", "--git-path", n]))
            .map(|p| {
                let p = PathBuf::from(p);
                if p.is_relative() {
                    self.dir.join(p)
                } else {
                    p
                }
            })
            .filter(|p| p.exists())
            .collect()
    }
}

/// For a package's `build.rs`: set `PACT_VERSION` (and `PACT_GIT_COMMIT`)
/// for the compiler and tell cargo when to recompute them.
pub fn emit() {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let pkg_version = std::env::var("CARGO_PKG_VERSION").unwrap_or_else(|_| "0.0.0".into());
    let checkout = Checkout::at(&manifest);
    let commit = match std::env::var(COMMIT_ENV) {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => describe(checkout.commit().as_deref(), checkout.dirty()),
    };
    println!("cargo:rustc-env=PACT_GIT_COMMIT={commit}");
    println!(
        "cargo:rustc-env=PACT_VERSION={}",
        version(&pkg_version, &commit)
    );
    println!("cargo:rerun-if-env-changed={COMMIT_ENV}");
    for p in checkout.watched() {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let src = manifest.join("src");
    if src.exists() {
        println!("cargo:rerun-if-changed={}", src.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_a_commit_dirty_or_clean_or_unknown() {
        assert_eq!(describe(Some("1a2b3c4"), false), "1a2b3c4");
        assert_eq!(describe(Some("1a2b3c4"), true), "1a2b3c4-dirty");
        assert_eq!(describe(None, true), "unknown");
        assert_eq!(version("0.1.0", "unknown"), "0.1.0 (git unknown)");
    }

    #[test]
    fn outside_a_checkout_the_commit_is_unknown_and_nothing_is_watched() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("Cargo.toml"), "[package]\n").unwrap();
        let c = Checkout::at(tmp.path());
        assert_eq!(c.commit(), None);
        assert!(!c.dirty());
        assert!(c.watched().is_empty());
    }

    /// In a fresh repository (when git is installed): the hash of its one
    /// commit, clean, then dirty after an edit to a tracked file.
    #[test]
    fn a_checkout_gives_its_head_and_dirtiness() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let git = |args: &[&str]| {
            Command::new("git")
                .arg("-C")
                .arg(dir)
                .args(["-c", "user.name=t", "-c", "user.email=t@t"])
                .args(["-c", "commit.gpgsign=false"])
                .args(args)
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !git(&["init", "-q"]) {
            eprintln!("git not available: skipped");
            return;
        }
        std::fs::write(dir.join("Cargo.toml"), "[package]\n").unwrap();
        assert!(git(&["add", "Cargo.toml"]));
        assert!(git(&["commit", "-q", "-m", "one"]));
        let c = Checkout::at(dir);
        let head = c.commit().expect("a commit");
        assert!(head.len() >= 7, "{head}");
        assert!(!c.dirty());
        assert!(c.watched().iter().any(|p| p.ends_with("HEAD")));
        std::fs::write(dir.join("Cargo.toml"), "[package]\nname = \"x\"\n").unwrap();
        assert!(c.dirty());
    }
}
