use thiserror::Error;

/// What went wrong with a request to a replica, phrased as what the caller
/// should do next.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ReplicaError {
    /// This replica is not the leader; retry at `leader` if known.
    #[error("not leader{}", match .leader { Some((id, addr)) => format!(" (leader is node {id} at {addr})"), None => String::new() })]
    NotLeader { leader: Option<(u64, String)> },
    /// No quorum or no leader right now; retry later (nothing was applied).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The request was proposed but its fate is unknown (timeout or leader
    /// change after the entry was appended). It may or may not be applied.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// The command is larger than one log entry may be
    /// ([`crate::MAX_COMMAND_BYTES`]); nothing was proposed. Not retryable.
    #[error("command of {bytes} bytes is larger than a log entry may be ({max} bytes)")]
    TooLarge { bytes: usize, max: usize },
    /// The replica stopped after a storage failure; it must be restarted.
    #[error("replica stopped: {0}")]
    Fatal(String),
}
