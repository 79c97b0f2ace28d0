use pact_raft::ReplicaError;
use thiserror::Error;

/// Errors of the coordinator, each telling the caller what to do.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum Error {
    /// Retry at the coordinator group's leader.
    #[error("not leader{}", match .hint { Some((id, addr)) => format!("; leader is node {id} at {addr}"), None => String::new() })]
    NotLeader { hint: Option<(u64, String)> },
    /// Nothing was done; retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The transaction is aborted; start a new one.
    #[error("aborted: {0}")]
    Aborted(pact_common::Abort),
    /// The outcome is not known; ask TxnStatus.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A participant refused a request because it contradicts what it
    /// recorded (the other outcome).
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("coordinator stopped: {0}")]
    Fatal(String),
    /// Refused at an admission limit (too many open transactions, a full
    /// queue) before anything was done; retry later, with backoff.
    #[error("overloaded: {0}")]
    Overloaded(String),
}

impl Error {
    /// The stable code a caller acts on.
    pub fn code(&self) -> pact_common::ErrorCode {
        use pact_common::ErrorCode as C;
        match self {
            Error::NotLeader { .. } => C::NotLeader,
            Error::Unavailable(_) => C::Unavailable,
            Error::Aborted(_) => C::Aborted,
            Error::Unknown(_) => C::OutcomeUnknown,
            Error::InvalidInput(_) => C::InvalidInput,
            Error::Conflict(_) => C::Conflict,
            Error::Fatal(_) => C::Stopped,
            Error::Overloaded(_) => C::Overloaded,
        }
    }

    pub(crate) fn aborted(kind: pact_common::AbortKind, reason: impl Into<String>) -> Error {
        Error::Aborted(pact_common::Abort::new(kind, reason))
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

impl From<pact_client::ClientError> for Error {
    fn from(e: pact_client::ClientError) -> Self {
        use pact_client::ClientError as C;
        match e {
            C::Aborted(m) => Error::Aborted(m),
            C::Unavailable(m) | C::Unreachable(m) => Error::aborted(
                pact_common::AbortKind::Unavailable,
                format!("participant unavailable: {m}"),
            ),
            C::Unknown(m) => Error::Unknown(m),
            C::InvalidInput(m) => Error::InvalidInput(m),
            C::UnknownShard(s) => Error::InvalidInput(format!("unknown shard {s}")),
            C::Internal(m) => Error::Unknown(format!("participant failed: {m}")),
            C::Conflict(m) => Error::Conflict(m),
            // A participant still refused after the retries with backoff:
            // for the transaction that is a participant it cannot use.
            C::Overloaded(m) => Error::aborted(
                pact_common::AbortKind::Unavailable,
                format!("participant overloaded: {m}"),
            ),
            // Reads and lock requests are routed again before it comes to
            // this (`Coordinator::get`, `scan`, `write`); here the
            // transaction cannot go on as routed.
            C::WrongShard(m) => Error::aborted(
                pact_common::AbortKind::Moved,
                format!("routed by a stale map: {m}"),
            ),
        }
    }
}
