//! Hand-made Raft payloads (bincode of openraft's messages, as the
//! transport carries them) for tests that forge messages: the tests do not
//! link pact-raft or openraft, so these spell the encoding out.

/// bincode of an openraft `Vote` (leader id adv: term, node id; committed).
pub fn vote_bytes(term: u64, node: u64, committed: bool) -> Vec<u8> {
    let mut b = term.to_le_bytes().to_vec();
    b.extend_from_slice(&node.to_le_bytes());
    b.push(u8::from(committed));
    b
}

/// bincode of `Option<LogId>` (leader id, index).
pub fn log_id_bytes(l: Option<(u64, u64, u64)>) -> Vec<u8> {
    match l {
        None => vec![0],
        Some((term, node, index)) => {
            let mut b = vec![1];
            b.extend_from_slice(&term.to_le_bytes());
            b.extend_from_slice(&node.to_le_bytes());
            b.extend_from_slice(&index.to_le_bytes());
            b
        }
    }
}

/// A `VoteRequest` from `node` at `term` whose log claims to end at `last`;
/// a forged one also claims a leadership transfer, which openraft grants
/// even while the voter still has a live leader.
pub fn vote_request(term: u64, node: u64, last: Option<(u64, u64, u64)>) -> Vec<u8> {
    let mut b = vote_bytes(term, node, false);
    b.extend(log_id_bytes(last));
    b.push(u8::from(last.is_some()));
    b
}

/// An empty `AppendEntriesRequest` (a heartbeat) from leader `node` of `term`.
pub fn append_request(term: u64, node: u64) -> Vec<u8> {
    let mut b = vote_bytes(term, node, true);
    b.extend(log_id_bytes(None));
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend(log_id_bytes(None));
    b
}
