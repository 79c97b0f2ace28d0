//! The commit this build comes from, for the `pact_build_info` gauge: see
//! `pact-buildinfo` (the same helper gives the binaries their `--version`).

fn main() {
    pact_buildinfo::emit();
}
