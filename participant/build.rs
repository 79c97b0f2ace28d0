//! `--version` names the git commit: see `pact-buildinfo`.

fn main() {
    pact_buildinfo::emit();
}
