//! Wire conventions every Raft-group server shares (participants and
//! coordinators): the status reply, and how "not leader" travels.

use pact_proto as pb;
use tonic::metadata::MetadataValue;
use tonic::Status;

use crate::ReplicaStatus;

/// Metadata keys carrying the leader hint on a "not leader" status.
pub const LEADER_ID_HEADER: &str = "pact-leader-id";
pub const LEADER_ADDR_HEADER: &str = "pact-leader-addr";

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

/// `FAILED_PRECONDITION` whose message starts with "not leader", with the
/// leader's id and address in metadata when known; clients retry there.
pub fn not_leader_status(msg: String, hint: Option<(u64, String)>) -> Status {
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
