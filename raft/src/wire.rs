//! Wire conventions every Raft-group server shares (participants and
//! coordinators): the status reply, and how "not leader" travels.

use pact_proto as pb;
use std::time::Duration;
use tonic::metadata::MetadataValue;

use pact_common::codes::{META_ABORT_KIND, META_LEADER_ADDR, META_LEADER_ID, META_SHARD_VERSION};
use pact_common::{AbortKind, ErrorCode};
use tonic::{Code, Status};

use crate::ReplicaStatus;

/// Metadata keys carrying the leader hint on a "not leader" status.
pub const LEADER_ID_HEADER: &str = "pact-leader-id";
pub const LEADER_ADDR_HEADER: &str = "pact-leader-addr";

/// The pause an OVERLOADED status asks for before a retry (clients add
/// their own exponential backoff on top when refused again).
pub const OVERLOADED_RETRY_AFTER: Duration = Duration::from_millis(100);

/// The routing table `config` describes, as `Admin.Topology` sends it.
pub fn topology_response(config: &pact_common::ClusterConfig) -> pb::TopologyResponse {
    use pact_common::PartitionScheme;
    pb::TopologyResponse {
        partitioning: match config.partitioning {
            PartitionScheme::Hash => pb::Partitioning::Hash,
            PartitionScheme::Range => pb::Partitioning::Range,
        } as i32,
        virtual_nodes: config.virtual_nodes,
        nodes: config
            .nodes
            .iter()
            .map(|n| pb::TopologyNode {
                id: n.id.0,
                addr: n.addr.clone(),
                peer_addr: n.peer_addr.clone(),
            })
            .collect(),
        shards: config
            .shards
            .iter()
            .map(|s| pb::TopologyShard {
                id: s.id.0,
                replicas: s.replicas.iter().map(|r| r.0).collect(),
                start: s.start.clone(),
            })
            .collect(),
        coordinators: config
            .coordinators
            .iter()
            .map(|g| pb::TopologyGroup {
                group: g.group,
                replicas: g.replicas.iter().map(|r| r.0).collect(),
            })
            .collect(),
        lease_ms: config.transactions.lease_ms,
        descriptors: Vec::new(),
        epoch: 0,
        meta_replicas: config.meta_replicas().iter().map(|n| n.0).collect(),
        retired: Vec::new(),
    }
}

/// A descriptor as sent (no successors, no voters).
pub fn descriptor(d: &pact_common::Descriptor) -> pb::ShardDescriptor {
    use pact_common::Span;
    let span = match &d.span {
        Span::Range { start, end } => pb::shard_descriptor::Span::Range(pb::KeyRange {
            start: start.clone().into(),
            end: end.clone().map(Into::into),
        }),
        Span::Ring { arcs } => pb::shard_descriptor::Span::Ring(pb::RingArcs {
            lo: arcs.iter().map(|a| a.0).collect(),
            hi: arcs.iter().map(|a| a.1).collect(),
        }),
    };
    pb::ShardDescriptor {
        shard_id: d.shard.0,
        version: d.version,
        span: Some(span),
        successors: Vec::new(),
        voters: Vec::new(),
        voters_at: 0,
    }
}

/// A record of the metadata group's shard table as sent.
pub fn shard_record(r: &pact_common::ShardRecord) -> pb::ShardDescriptor {
    pb::ShardDescriptor {
        voters: r.voters.clone(),
        voters_at: r.voters_at,
        ..descriptor(&r.descriptor)
    }
}

/// A retired shard as sent.
pub fn retired_shard(r: &pact_common::RetiredShard) -> pb::RetiredShard {
    pb::RetiredShard {
        shard_id: r.shard.0,
        version: r.version,
        successors: r.successors.iter().map(|s| s.0).collect(),
        voters: r.voters.clone(),
        horizons: r
            .horizons
            .iter()
            .map(|(group, ts)| pb::GroupStamp {
                group: *group,
                ts: *ts,
            })
            .collect(),
    }
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
        purged_index: s.purged_index,
        voters: s.voters,
        stopped: s.fatal.unwrap_or_default(),
        gate: s.gate.to_string(),
        committed_voters: s.committed_voters,
        voters_at: s.voters_at,
    }
}

/// The status of an error with `code` (see `pact_common::codes`): the
/// gRPC code that fits it, the human message, and the code, the abort
/// kind and the leader hint as data. Retryable codes carry a RetryInfo
/// (NOT_LEADER: at once, at the leader; UNAVAILABLE: after a short pause;
/// OVERLOADED: after [`OVERLOADED_RETRY_AFTER`], the time a full queue or
/// admission limit needs to drain a little at peak throughput).
pub fn error_status(
    code: ErrorCode,
    msg: String,
    abort: Option<AbortKind>,
    hint: Option<(u64, String)>,
) -> Status {
    let grpc = match code {
        ErrorCode::NotLeader | ErrorCode::Conflict => Code::FailedPrecondition,
        ErrorCode::Unavailable => Code::Unavailable,
        ErrorCode::OutcomeUnknown => Code::DeadlineExceeded,
        ErrorCode::Aborted => Code::Aborted,
        ErrorCode::InvalidInput => Code::InvalidArgument,
        ErrorCode::UnknownShard => Code::NotFound,
        ErrorCode::Stopped => Code::Internal,
        ErrorCode::Overloaded => Code::ResourceExhausted,
        ErrorCode::WrongShard => Code::FailedPrecondition,
    };
    let retry = match code {
        ErrorCode::NotLeader | ErrorCode::WrongShard => Some(Duration::ZERO),
        ErrorCode::Unavailable => Some(Duration::from_millis(50)),
        ErrorCode::Overloaded => Some(OVERLOADED_RETRY_AFTER),
        _ => None,
    };
    let mut meta = Vec::new();
    if let Some(kind) = abort {
        meta.push((META_ABORT_KIND, kind.as_str().to_string()));
    }
    if let Some((id, addr)) = &hint {
        meta.push((META_LEADER_ID, id.to_string()));
        meta.push((META_LEADER_ADDR, addr.clone()));
    }
    let mut s = pb::status::error(grpc, code.as_str(), msg, meta, retry);
    // The same hint as plain headers, for clients that read no details.
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

/// WRONG_SHARD, with the refusing shard's descriptor version as data: the
/// caller refreshes its map and routes again at once.
pub fn wrong_shard_status(msg: String, version: u64) -> Status {
    pb::status::error(
        Code::FailedPrecondition,
        ErrorCode::WrongShard.as_str(),
        msg,
        vec![(META_SHARD_VERSION, version.to_string())],
        Some(Duration::ZERO),
    )
}
