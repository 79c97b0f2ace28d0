//! Wire conversion for the client: prost types in and out, and the gRPC
//! status convention the participant uses (see its `convert` module).

use pact_common::NodeId;
use pact_proto as pb;
use tonic::{Code, Status};

use crate::{ClientError, Mutation};

pub(crate) enum Class {
    /// Refused by a non-leader; maybe with the leader's id.
    NotLeader(Option<NodeId>),
    /// Certainly not applied; safe to retry elsewhere.
    Retry(String),
    /// May have been applied.
    Unknown(String),
    /// Final.
    Fail(ClientError),
}

pub(crate) fn classify(s: &Status) -> Class {
    let msg = s.message().to_string();
    match s.code() {
        Code::FailedPrecondition if msg.starts_with("not leader") => {
            let hint = s
                .metadata()
                .get("pact-leader-id")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .map(NodeId);
            Class::NotLeader(hint)
        }
        // Our servers say "unavailable: ..." when they did nothing; tonic
        // says "...connect..." when the request never left this process.
        // Any other UNAVAILABLE (a connection cut mid-request) may have
        // reached the server.
        Code::Unavailable if msg.starts_with("unavailable") || connect_failed(s) => {
            Class::Retry(msg)
        }
        // Aborted by the lock manager (wounded, lock wait timed out,
        // transaction unknown): nothing was applied; the caller decides
        // whether to start again.
        Code::Aborted => Class::Fail(ClientError::Aborted(reason(&msg, "aborted: "))),
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled => {
            Class::Unknown(msg)
        }
        Code::InvalidArgument | Code::OutOfRange | Code::ResourceExhausted => {
            Class::Fail(ClientError::InvalidInput(reason(&msg, "invalid input: ")))
        }
        Code::NotFound => Class::Fail(ClientError::InvalidInput(msg)),
        // The request contradicts recorded state (e.g. a decision refused
        // because the other outcome is already recorded).
        Code::FailedPrecondition => Class::Fail(ClientError::Conflict(reason(&msg, "conflict: "))),
        _ => Class::Fail(ClientError::Internal(format!("{:?}: {msg}", s.code()))),
    }
}

/// The server's message without the class word it starts with: the
/// client error adds its own, and a reason passed through a coordinator
/// would otherwise read "aborted: aborted: ...".
fn reason(msg: &str, class: &str) -> String {
    msg.strip_prefix(class).unwrap_or(msg).to_string()
}

/// The request never left this process: the connection could not be made.
/// Only the connect phase counts; an error on an established connection
/// may come after the server received the request.
fn connect_failed(s: &Status) -> bool {
    let mut text = s.message().to_string();
    let mut src = std::error::Error::source(s);
    while let Some(e) = src {
        text.push_str(" / ");
        text.push_str(&e.to_string());
        src = e.source();
    }
    text.contains("tcp connect error") || text.contains("error trying to connect")
}

/// Nothing listens at the address: the connect was refused (a port with
/// no process on it), as opposed to a timeout or a broken connection.
pub(crate) fn connection_refused(s: &Status) -> bool {
    let mut src = std::error::Error::source(s);
    while let Some(e) = src {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        src = e.source();
    }
    false
}

pub(crate) fn write_ops(batch: Vec<Mutation>) -> Vec<pb::WriteOp> {
    batch
        .into_iter()
        .map(|(k, v)| pb::WriteOp {
            key: k.into(),
            op: Some(match v {
                Some(v) => pb::write_op::Op::Put(v.into()),
                None => pb::write_op::Op::Delete(true),
            }),
        })
        .collect()
}

/// One replica's Raft state as it reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub shard: u64,
    pub node: u64,
    pub role: String,
    pub term: u64,
    pub leader: Option<u64>,
    pub applied_index: u64,
    pub last_log_index: u64,
    pub snapshot_index: u64,
    pub voters: Vec<u64>,
}

impl From<pb::StatusResponse> for ReplicaStatus {
    fn from(r: pb::StatusResponse) -> Self {
        ReplicaStatus {
            shard: r.shard_id,
            node: r.node_id,
            role: r.role,
            term: r.term,
            leader: (r.leader_id != 0).then_some(r.leader_id),
            applied_index: r.applied_index,
            last_log_index: r.last_log_index,
            snapshot_index: r.snapshot_index,
            voters: r.voters,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(s: Status) -> ClientError {
        match classify(&s) {
            Class::Fail(e) => e,
            _ => panic!("not a final error: {s:?}"),
        }
    }

    #[test]
    fn class_word_is_said_once() {
        let e = fail(Status::aborted(
            "aborted: wounded by older transaction 1-2-3",
        ));
        assert_eq!(e.to_string(), "aborted: wounded by older transaction 1-2-3");
        let e = fail(Status::failed_precondition("conflict: already committed"));
        assert_eq!(e, ClientError::Conflict("already committed".into()));
        let e = fail(Status::invalid_argument("invalid input: empty key"));
        assert_eq!(e.to_string(), "invalid input: empty key");
        // A message without the word keeps all of itself.
        let e = fail(Status::aborted("deadlock victim"));
        assert_eq!(e, ClientError::Aborted("deadlock victim".into()));
    }
}
