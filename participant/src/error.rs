use pact_raft::ReplicaError;
use thiserror::Error;

/// Errors of the participant, each telling the caller what to do.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum Error {
    /// Retry at the leader (`hint`: node id and address) or, without a
    /// hint, at another replica.
    #[error("not leader{}", match .hint { Some((id, addr)) => format!("; leader is node {id} at {addr}"), None => String::new() })]
    NotLeader { hint: Option<(u64, String)> },
    /// Nothing was done; retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A write was proposed but its fate is unknown; read before retrying.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// The transaction cannot go on (wounded by an older one, lock wait
    /// timed out, expired, leadership changed); abort it and retry anew.
    #[error("aborted: {0}")]
    Aborted(pact_common::Abort),
    /// The request contradicts the transaction's recorded state (for
    /// example a commit after an abort).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The request is malformed; fix it, retrying will not help.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// No such shard in the cluster configuration.
    #[error("unknown shard {0}")]
    UnknownShard(u64),
    /// The replica stopped after a storage failure and must be restarted.
    #[error("replica stopped: {0}")]
    Fatal(String),
    /// Refused at an admission limit before anything was done; retry
    /// later, with backoff.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// Routed by a stale map (the shard does not own the key, or is at
    /// another descriptor version); nothing was done. `version` is the
    /// shard's.
    #[error("wrong shard: {message}")]
    WrongShard { message: String, version: u64 },
}

impl Error {
    /// The stable code a caller acts on.
    pub fn code(&self) -> pact_common::ErrorCode {
        use pact_common::ErrorCode as C;
        match self {
            Error::NotLeader { .. } => C::NotLeader,
            Error::Unavailable(_) => C::Unavailable,
            Error::Unknown(_) => C::OutcomeUnknown,
            Error::Aborted(_) => C::Aborted,
            Error::Conflict(_) => C::Conflict,
            Error::InvalidInput(_) => C::InvalidInput,
            Error::UnknownShard(_) => C::UnknownShard,
            Error::Fatal(_) => C::Stopped,
            Error::Overloaded(_) => C::Overloaded,
            Error::WrongShard { .. } => C::WrongShard,
        }
    }
}

impl From<ReplicaError> for Error {
    fn from(e: ReplicaError) -> Self {
        match e {
            ReplicaError::NotLeader { leader } => Error::NotLeader { hint: leader },
            ReplicaError::Unavailable(m) => Error::Unavailable(m),
            ReplicaError::Unknown(m) => Error::Unknown(m),
            ReplicaError::Fatal(m) => Error::Fatal(m),
            e @ ReplicaError::TooLarge { .. } => Error::InvalidInput(e.to_string()),
        }
    }
}

impl From<pact_common::LimitError> for Error {
    fn from(e: pact_common::LimitError) -> Self {
        Error::InvalidInput(e.to_string())
    }
}
