//! Wire conversion for the coordinator, and its error -> gRPC status
//! mapping (the same convention as the participant's; see there).

use pact_common::{Timestamp, TxnId};
use pact_proto as pb;
use tonic::metadata::MetadataValue;
use tonic::Status;

use crate::machine::Outcome;
use crate::Error;

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let msg = e.to_string();
        match e {
            Error::NotLeader { hint } => {
                let mut s = Status::failed_precondition(msg);
                if let Some((id, addr)) = hint {
                    if let Ok(v) = MetadataValue::try_from(id.to_string()) {
                        s.metadata_mut().insert("pact-leader-id", v);
                    }
                    if let Ok(v) = MetadataValue::try_from(addr) {
                        s.metadata_mut().insert("pact-leader-addr", v);
                    }
                }
                s
            }
            Error::Unavailable(_) => Status::unavailable(msg),
            Error::Aborted(_) => Status::aborted(msg),
            Error::Unknown(_) => Status::deadline_exceeded(msg),
            Error::InvalidInput(_) => Status::invalid_argument(msg),
            Error::Fatal(_) => Status::internal(msg),
        }
    }
}

pub fn txn_id(t: Option<pb::TxnId>) -> Result<TxnId, Error> {
    let t = t.ok_or_else(|| Error::InvalidInput("missing transaction id".into()))?;
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

pub fn outcome(o: Outcome) -> pb::CommitResponse {
    let (outcome, reason) = match o {
        Outcome::Committed => (pb::Outcome::Committed, String::new()),
        Outcome::Aborted(r) => (pb::Outcome::Aborted, r),
        Outcome::Unknown(r) => (pb::Outcome::Unknown, r),
    };
    pb::CommitResponse {
        outcome: outcome as i32,
        reason,
    }
}
