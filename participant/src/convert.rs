//! The one place where prost wire types meet participant domain types, and
//! where participant errors become gRPC statuses.
//!
//! Status convention (the client crate decodes the same one):
//! - not leader: `FAILED_PRECONDITION`, message starts with "not leader",
//!   metadata `pact-leader-id` / `pact-leader-addr` when known;
//! - unavailable (nothing done, retry): `UNAVAILABLE`;
//! - outcome unknown: `DEADLINE_EXCEEDED`;
//! - bad request: `INVALID_ARGUMENT`; unknown shard: `NOT_FOUND`;
//! - stopped replica: `INTERNAL`.

use pact_proto as pb;
use pact_raft::ReplicaStatus;
use tonic::metadata::MetadataValue;
use tonic::Status;

use crate::kv::WriteOp;
use crate::Error;

pub const LEADER_ID_HEADER: &str = "pact-leader-id";
pub const LEADER_ADDR_HEADER: &str = "pact-leader-addr";

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let msg = e.to_string();
        match e {
            Error::NotLeader { hint } => {
                let mut s = Status::failed_precondition(msg);
                if let Some((id, addr)) = hint {
                    if let Ok(v) = MetadataValue::try_from(id.to_string()) {
                        s.metadata_mut().insert(LEADER_ID_HEADER, v);
                    }
                    if let Ok(v) = MetadataValue::try_from(addr) {
                        s.metadata_mut().insert(LEADER_ADDR_HEADER, v);
                    }
                }
                s
            }
            Error::Unavailable(_) => Status::unavailable(msg),
            Error::Unknown(_) => Status::deadline_exceeded(msg),
            Error::InvalidInput(_) => Status::invalid_argument(msg),
            Error::UnknownShard(_) => Status::not_found(msg),
            Error::Fatal(_) => Status::internal(msg),
        }
    }
}

pub fn write_ops(ops: Vec<pb::WriteOp>) -> Result<Vec<WriteOp>, Error> {
    ops.into_iter()
        .map(|op| match op.op {
            Some(pb::write_op::Op::Put(v)) => Ok(WriteOp::Put {
                key: op.key.to_vec(),
                value: v.to_vec(),
            }),
            Some(pb::write_op::Op::Delete(_)) => Ok(WriteOp::Delete {
                key: op.key.to_vec(),
            }),
            None => Err(Error::InvalidInput(
                "write op has neither put nor delete".into(),
            )),
        })
        .collect()
}

pub fn status_response(s: ReplicaStatus) -> pb::StatusResponse {
    let (leader_id, leader_addr) = s.leader.unwrap_or((0, String::new()));
    pb::StatusResponse {
        shard_id: s.group,
        node_id: s.node_id,
        role: s.role.to_string(),
        term: s.term,
        leader_id,
        leader_addr,
        applied_index: s.applied_index,
        last_log_index: s.last_log_index,
        snapshot_index: s.snapshot_index,
        voters: s.voters,
    }
}
