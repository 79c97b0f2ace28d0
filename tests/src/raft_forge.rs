//! Hand-made Raft payloads (Pact's encoding of openraft's messages, as the
//! transport carries them: `pact_raft::codec`, a format version byte, then
//! postcard, in which every integer is a LEB128 varint) for tests that
//! forge messages: the tests do not link pact-raft or openraft, so these
//! spell the encoding out.

/// The on-disk and wire format version (`pact_raft::codec::FORMAT_VERSION`).
pub const FORMAT_VERSION: u8 = 1;

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// An openraft `Vote` (leader id adv: term, node id; committed).
pub fn vote_bytes(term: u64, node: u64, committed: bool) -> Vec<u8> {
    let mut b = Vec::new();
    varint(term, &mut b);
    varint(node, &mut b);
    b.push(u8::from(committed));
    b
}

/// `Option<LogId>` (leader id, index).
pub fn log_id_bytes(l: Option<(u64, u64, u64)>) -> Vec<u8> {
    let mut b = Vec::new();
    match l {
        None => b.push(0),
        Some((term, node, index)) => {
            b.push(1);
            varint(term, &mut b);
            varint(node, &mut b);
            varint(index, &mut b);
        }
    }
    b
}

/// A `VoteRequest` from `node` at `term` whose log claims to end at `last`;
/// a forged one also claims a leadership transfer, which openraft grants
/// even while the voter still has a live leader.
pub fn vote_request(term: u64, node: u64, last: Option<(u64, u64, u64)>) -> Vec<u8> {
    let mut b = vec![FORMAT_VERSION];
    b.extend(vote_bytes(term, node, false));
    b.extend(log_id_bytes(last));
    b.push(u8::from(last.is_some()));
    b
}

/// An empty `AppendEntriesRequest` (a heartbeat) from leader `node` of `term`.
pub fn append_request(term: u64, node: u64) -> Vec<u8> {
    let mut b = vec![FORMAT_VERSION];
    b.extend(vote_bytes(term, node, true));
    b.extend(log_id_bytes(None));
    varint(0, &mut b);
    b.extend(log_id_bytes(None));
    b
}
