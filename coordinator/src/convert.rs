//! Wire conversion for the coordinator, and its error -> gRPC status
//! mapping (the same convention as the participant's; see there).

use pact_common::{Timestamp, TxnId};
use pact_proto as pb;
use tonic::Status;

use crate::machine::Outcome;
use crate::Error;

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let msg = e.to_string();
        let code = e.code();
        match e {
            Error::NotLeader { hint } => pact_raft::wire::error_status(code, msg, None, hint),
            Error::Aborted(a) => pact_raft::wire::error_status(code, msg, Some(a.kind), None),
            _ => pact_raft::wire::error_status(code, msg, None, None),
        }
    }
}

/// A transaction id from a client. Group 0 and timestamp 0 are never
/// handed out (participants refuse them too: group 0 marks a plain write
/// batch, and timestamp 0 would be older than every transaction), so they
/// are refused here rather than looked up, inquired about or fenced.
pub fn txn_id(t: Option<pb::TxnId>) -> Result<TxnId, Error> {
    let t = t.ok_or_else(|| Error::InvalidInput("missing transaction id".into()))?;
    if t.group == 0 {
        return Err(Error::InvalidInput(
            "transaction group 0 is reserved".into(),
        ));
    }
    if t.ts == 0 {
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

pub fn pb_txn(t: TxnId) -> pb::TxnId {
    pb::TxnId {
        group: t.group,
        node: t.node,
        ts: t.ts.0,
    }
}

pub fn shard_state(s: i32) -> Result<crate::inquiry::ShardState, Error> {
    use crate::inquiry::ShardState;
    match pb::TxnState::try_from(s) {
        Ok(pb::TxnState::None) => Ok(ShardState::None),
        Ok(pb::TxnState::Prepared) => Ok(ShardState::Prepared),
        Ok(pb::TxnState::Committed) => Ok(ShardState::Committed),
        Ok(pb::TxnState::Aborted) => Ok(ShardState::Aborted),
        Ok(pb::TxnState::Expired) => Ok(ShardState::Expired),
        _ => Err(Error::Unknown(format!(
            "participant sent an unknown transaction state {s}"
        ))),
    }
}

/// A read's answer on the wire.
pub fn value(v: Option<Vec<u8>>) -> pb::GetResponse {
    pb::GetResponse {
        found: v.is_some(),
        value: v.unwrap_or_default().into(),
    }
}

pub fn outcome(o: Outcome) -> pb::CommitResponse {
    let (outcome, reason, abort) = match o {
        Outcome::Committed => (pb::Outcome::Committed, String::new(), 0),
        Outcome::Aborted(a) => (
            pb::Outcome::Aborted,
            a.reason,
            pact_client::convert::pb_abort_kind(a.kind) as i32,
        ),
        Outcome::Unknown(r) => (pb::Outcome::Unknown, r, 0),
        Outcome::Open(r) => (pb::Outcome::Open, r, 0),
        Outcome::Expired(r) => (pb::Outcome::Expired, r, 0),
    };
    pb::CommitResponse {
        outcome: outcome as i32,
        reason,
        abort,
    }
}

pub fn guard(g: pb::Guard) -> Result<pact_common::Guard, Error> {
    use pact_common::Guard;
    pact_common::validate_key(&g.key).map_err(|e| Error::InvalidInput(e.to_string()))?;
    let key = g.key.to_vec();
    match pb::guard::Kind::try_from(g.kind) {
        Ok(pb::guard::Kind::Exists) => Ok(Guard::Exists(key)),
        Ok(pb::guard::Kind::Missing) => Ok(Guard::Missing(key)),
        Ok(pb::guard::Kind::Equals) => Ok(Guard::Equals(key, g.value.to_vec())),
        _ => Err(Error::InvalidInput(
            "guard has no kind (exists, missing, equals)".into(),
        )),
    }
}

pub fn exec_op(o: pb::Op) -> Result<pact_common::Op, Error> {
    pact_common::validate_key(&o.key).map_err(|e| Error::InvalidInput(e.to_string()))?;
    let key = o.key.to_vec();
    match o.op {
        Some(pb::op::Op::Put(v)) => {
            pact_common::validate_value(&v).map_err(|e| Error::InvalidInput(e.to_string()))?;
            Ok(pact_common::Op::Put(key, v.to_vec()))
        }
        Some(pb::op::Op::Delete(_)) => Ok(pact_common::Op::Delete(key)),
        Some(pb::op::Op::Get(_)) => Ok(pact_common::Op::Get(key)),
        None => Err(Error::InvalidInput(
            "op has neither put, delete nor get".into(),
        )),
    }
}

pub fn exec_result(r: crate::coordinator::ExecResult) -> pb::ExecuteResponse {
    let o = outcome(r.outcome);
    pb::ExecuteResponse {
        succeeded: r.succeeded,
        results: r
            .results
            .into_iter()
            .map(|(k, v)| pb::OpResult {
                key: k.into(),
                found: v.is_some(),
                value: v.unwrap_or_default().into(),
            })
            .collect(),
        outcome: o.outcome,
        reason: o.reason,
        abort: o.abort,
        txn: Some(pb_txn(r.txn)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_transaction_ids_are_refused() {
        let id = |group, ts| Some(pb::TxnId { group, node: 4, ts });
        for (t, needle) in [
            (None, "missing"),
            (id(0, 7), "group 0"),
            (id(1, 0), "timestamp 0"),
        ] {
            match txn_id(t) {
                Err(Error::InvalidInput(m)) => assert!(m.contains(needle), "{m}"),
                other => panic!("{t:?}: expected InvalidInput, got {other:?}"),
            }
        }
        assert_eq!(
            txn_id(id(1, 7)),
            Ok(TxnId {
                group: 1,
                node: 4,
                ts: Timestamp(7)
            })
        );
    }
}
