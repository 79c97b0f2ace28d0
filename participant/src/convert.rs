//! The one place where prost wire types meet participant domain types, and
//! where participant errors become gRPC statuses.
//!
//! Status convention (the client crate decodes the same one):
//! - not leader: `FAILED_PRECONDITION`, message starts with "not leader",
//!   metadata `pact-leader-id` / `pact-leader-addr` when known;
//! - unavailable (nothing done, retry): `UNAVAILABLE`;
//! - outcome unknown: `DEADLINE_EXCEEDED`;
//! - transaction aborted: `ABORTED`, message "aborted: <reason>";
//! - contradicts recorded state: `FAILED_PRECONDITION` "conflict: ...";
//! - bad request: `INVALID_ARGUMENT`; unknown shard: `NOT_FOUND`;
//! - stopped replica: `INTERNAL`.

use pact_proto as pb;
use tonic::Status;

use pact_common::{Timestamp, TxnId};

use crate::kv::Mutation;
use crate::node::Vote;
use crate::Error;

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let msg = e.to_string();
        let code = e.code();
        match e {
            Error::NotLeader { hint } => pact_raft::wire::error_status(code, msg, None, hint),
            Error::Aborted(a) => pact_raft::wire::error_status(code, msg, Some(a.kind), None),
            Error::WrongShard { version, .. } => pact_raft::wire::wrong_shard_status(msg, version),
            _ => pact_raft::wire::error_status(code, msg, None, None),
        }
    }
}

pub use pact_raft::wire::descriptor;

pub fn write_ops(ops: Vec<pb::WriteOp>) -> Result<Vec<Mutation>, Error> {
    ops.into_iter()
        .map(|op| match op.op {
            Some(pb::write_op::Op::Put(v)) => Ok((op.key.to_vec(), Some(v.to_vec()))),
            Some(pb::write_op::Op::Delete(_)) => Ok((op.key.to_vec(), None)),
            None => Err(Error::InvalidInput(
                "write op has neither put nor delete".into(),
            )),
        })
        .collect()
}

pub fn txn_id(t: Option<pb::TxnId>) -> Result<TxnId, Error> {
    let t = t.ok_or_else(|| Error::InvalidInput("missing transaction id".into()))?;
    if t.group == crate::node::IMPLICIT_GROUP {
        return Err(Error::InvalidInput(
            "transaction group 0 is reserved".into(),
        ));
    }
    if t.ts == 0 {
        // It would be older than every real transaction and wound them all.
        return Err(Error::InvalidInput(
            "transaction timestamp 0 is invalid".into(),
        ));
    }
    Ok(TxnId {
        group: t.group,
        node: t.node,
        ts: Timestamp(t.ts),
    })
}

/// Longest a retried transaction may keep the age of its first attempt
/// (coordinators cap it at a minute; this leaves room for clock skew).
const MAX_PRIORITY_AGE_MS: u64 = 120_000;

/// The wound-wait age a request claims for `txn`: 0 means the id's own
/// timestamp. A retry is older than its id, but not by much, and never
/// younger.
pub fn priority(p: u64, txn: TxnId) -> Result<Timestamp, Error> {
    if p == 0 {
        return Ok(txn.ts);
    }
    let p = Timestamp(p);
    if p > txn.ts || txn.ts.millis() - p.millis() > MAX_PRIORITY_AGE_MS {
        return Err(Error::InvalidInput(format!(
            "priority {p} is not within {MAX_PRIORITY_AGE_MS} ms before transaction {txn}"
        )));
    }
    Ok(p)
}

pub fn prepare_response(v: Vote) -> pb::PrepareResponse {
    let (vote, reason) = match v {
        Vote::Yes => (pb::Vote::Yes, String::new()),
        Vote::ReadOnly => (pb::Vote::ReadOnly, String::new()),
        Vote::No(a) => {
            return pb::PrepareResponse {
                vote: pb::Vote::No as i32,
                abort: pact_client::convert::pb_abort_kind(a.kind) as i32,
                reason: a.reason,
            }
        }
    };
    pb::PrepareResponse {
        vote: vote as i32,
        reason,
        abort: 0,
    }
}

pub fn inquire_response(s: crate::kv::TxnState) -> pb::InquireResponse {
    use crate::kv::TxnState;
    let state = match s {
        TxnState::None => pb::TxnState::None,
        TxnState::Prepared => pb::TxnState::Prepared,
        TxnState::Committed => pb::TxnState::Committed,
        TxnState::Aborted => pb::TxnState::Aborted,
        TxnState::Expired => pb::TxnState::Expired,
    };
    pb::InquireResponse {
        state: state as i32,
    }
}

pub fn pairs(pairs: Vec<(Vec<u8>, Vec<u8>)>, more: bool) -> pb::ScanResponse {
    pb::ScanResponse {
        pairs: pairs
            .into_iter()
            .map(|(k, v)| pb::KeyValue {
                key: k.into(),
                value: v.into(),
            })
            .collect(),
        more,
    }
}

pub fn value(v: Option<Vec<u8>>) -> pb::GetResponse {
    pb::GetResponse {
        found: v.is_some(),
        value: v.unwrap_or_default().into(),
    }
}

/// An empty end key on the wire means "unbounded".
pub fn end_key(end: &[u8]) -> Option<&[u8]> {
    if end.is_empty() {
        None
    } else {
        Some(end)
    }
}
