use pact_common::ErrorCode;
use pact_raft::ReplicaError;
use thiserror::Error;

/// What went wrong with a request to the metadata group, phrased as what
/// the caller should do next.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum Error {
    /// Ask the group's leader, `hint` if known.
    #[error("not the metadata group's leader{}", match .hint { Some((id, _)) => format!(" (node {id} is)"), None => String::new() })]
    NotLeader { hint: Option<(u64, String)> },
    /// Refused as asked; the message says why. Retrying will not help.
    #[error("{0}")]
    InvalidInput(String),
    /// No quorum or no leader now; nothing was applied. Retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Proposed, fate unknown: ask again (every change is idempotent).
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// The replica stopped; the node must be restarted.
    #[error("stopped: {0}")]
    Fatal(String),
    /// Not now: what the request needs is not settled yet (a shard to
    /// retire still holds records); the message says when to ask again.
    #[error("conflict: {0}")]
    Conflict(String),
}

impl Error {
    /// What a call this group made to a shard said, as this group's
    /// error (by its code, never its text).
    pub fn from_client(e: pact_client::ClientError) -> Self {
        use pact_client::ClientError as C;
        let msg = e.to_string();
        match e {
            C::Conflict(_) => Error::Conflict(msg),
            C::InvalidInput(_) | C::UnknownShard(_) | C::WrongShard(_) => Error::InvalidInput(msg),
            C::Unknown(_) => Error::Unknown(msg),
            _ => Error::Unavailable(msg),
        }
    }
}

impl From<ReplicaError> for Error {
    fn from(e: ReplicaError) -> Self {
        match e {
            ReplicaError::NotLeader { leader } => Error::NotLeader { hint: leader },
            ReplicaError::Unavailable(m) => Error::Unavailable(m),
            ReplicaError::Unknown(m) => Error::Unknown(m),
            ReplicaError::TooLarge { .. } => Error::InvalidInput(e.to_string()),
            ReplicaError::Fatal(m) => Error::Fatal(m),
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        let (code, hint) = match e {
            Error::NotLeader { hint } => (ErrorCode::NotLeader, hint),
            Error::InvalidInput(_) => (ErrorCode::InvalidInput, None),
            Error::Unavailable(_) => (ErrorCode::Unavailable, None),
            Error::Unknown(_) => (ErrorCode::OutcomeUnknown, None),
            Error::Fatal(_) => (ErrorCode::Stopped, None),
            Error::Conflict(_) => (ErrorCode::Conflict, None),
        };
        pact_raft::wire::error_status(code, msg, None, hint)
    }
}
