//! Errors as data: the stable codes every server puts on an error, and the
//! kinds of abort.
//!
//! A caller decides what to do from a [`ErrorCode`] (retry elsewhere, retry
//! later, start the transaction again, fix the request), never from the
//! English message, which is for people and may change. On the wire the
//! code is the `reason` of a `google.rpc.ErrorInfo` in the gRPC status
//! details (domain [`ERROR_DOMAIN`]), with [`AbortKind`] and the leader
//! hint in its metadata; the names are part of the API and never change
//! meaning (new ones may be added: a client treats an unknown code by the
//! gRPC status code alone).

use std::fmt;

/// `ErrorInfo.domain` of every Pact error.
pub const ERROR_DOMAIN: &str = "pact.v1";
/// `ErrorInfo.metadata` keys.
pub const META_LEADER_ID: &str = "leader_id";
pub const META_LEADER_ADDR: &str = "leader_addr";
pub const META_ABORT_KIND: &str = "abort_kind";
/// WRONG_SHARD: the refusing shard's descriptor version.
pub const META_SHARD_VERSION: &str = "shard_version";

/// What went wrong, as far as the caller's next step is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// This replica does not lead its group; retry at the leader (hint in
    /// the metadata when known).
    NotLeader,
    /// Nothing was done; retry later or elsewhere.
    Unavailable,
    /// A write was proposed and its fate is unknown; read (or ask
    /// TxnStatus) before retrying.
    OutcomeUnknown,
    /// The transaction is aborted, nothing of it applied; start anew
    /// (why: [`AbortKind`]).
    Aborted,
    /// The request contradicts recorded state (a commit after an abort).
    Conflict,
    /// The request is malformed or too large; retrying will not help.
    InvalidInput,
    /// No such shard in the cluster.
    UnknownShard,
    /// The replica stopped after a storage failure; it must be restarted.
    Stopped,
    /// The server is at an admission limit (a full queue, too many open
    /// transactions or requests in flight) and refused the request before
    /// doing anything; retry after a pause, with backoff.
    Overloaded,
    /// The request was routed by a stale map: the shard does not own the
    /// key, or its descriptor's version is not the one the request names.
    /// Nothing was done; refresh the map (each shard's `Describe`) and
    /// route again. The shard's current version is in the metadata.
    WrongShard,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 10] = [
        ErrorCode::NotLeader,
        ErrorCode::Unavailable,
        ErrorCode::OutcomeUnknown,
        ErrorCode::Aborted,
        ErrorCode::Conflict,
        ErrorCode::InvalidInput,
        ErrorCode::UnknownShard,
        ErrorCode::Stopped,
        ErrorCode::Overloaded,
        ErrorCode::WrongShard,
    ];

    /// The stable name (`ErrorInfo.reason`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotLeader => "NOT_LEADER",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::OutcomeUnknown => "OUTCOME_UNKNOWN",
            ErrorCode::Aborted => "ABORTED",
            ErrorCode::Conflict => "CONFLICT",
            ErrorCode::InvalidInput => "INVALID_INPUT",
            ErrorCode::UnknownShard => "UNKNOWN_SHARD",
            ErrorCode::Stopped => "STOPPED",
            ErrorCode::Overloaded => "OVERLOADED",
            ErrorCode::WrongShard => "WRONG_SHARD",
        }
    }

    pub fn parse(s: &str) -> Option<ErrorCode> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a transaction aborted. Every kind means nothing of it applied; the
/// kinds differ in what is worth trying next (a wounded or timed-out
/// transaction usually succeeds at once when retried, an unavailable
/// participant needs the cluster to heal first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AbortKind {
    /// An older transaction took one of its locks (wound-wait).
    Wounded,
    /// It waited too long for a lock.
    LockTimeout,
    /// The server no longer knows it: idle timeout, client lease lost, or
    /// it was never begun.
    Expired,
    /// A leader changed (coordinator group or shard) and took its locks or
    /// its session with it.
    Leadership,
    /// A participant could not be reached.
    Unavailable,
    /// Recorded state refused it: already aborted, read locks lost before
    /// the commit, a prepare refused.
    Conflict,
    /// Rolled back on request, or presumed aborted by recovery.
    Rollback,
    /// A shard it had locks on no longer owns the keys as it did (its
    /// span changed: a split or merge), or the coordinator routed by a
    /// stale map when it prepared.
    Moved,
}

impl AbortKind {
    pub const ALL: [AbortKind; 8] = [
        AbortKind::Wounded,
        AbortKind::LockTimeout,
        AbortKind::Expired,
        AbortKind::Leadership,
        AbortKind::Unavailable,
        AbortKind::Conflict,
        AbortKind::Rollback,
        AbortKind::Moved,
    ];

    /// The stable name (metric label, `ErrorInfo` metadata, JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            AbortKind::Wounded => "wounded",
            AbortKind::LockTimeout => "lock_timeout",
            AbortKind::Expired => "expired",
            AbortKind::Leadership => "leadership",
            AbortKind::Unavailable => "unavailable",
            AbortKind::Conflict => "conflict",
            AbortKind::Rollback => "rollback",
            AbortKind::Moved => "moved",
        }
    }

    pub fn parse(s: &str) -> Option<AbortKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for AbortKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An abort: its kind for programs, its reason for people. Displays as the
/// reason alone, so messages read as before.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Abort {
    pub kind: AbortKind,
    pub reason: String,
}

impl Abort {
    pub fn new(kind: AbortKind, reason: impl Into<String>) -> Abort {
        Abort {
            kind,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Abort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_distinct() {
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(c.as_str()), Some(c));
        }
        for k in AbortKind::ALL {
            assert_eq!(AbortKind::parse(k.as_str()), Some(k));
        }
        let mut names: Vec<_> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len());
        assert_eq!(ErrorCode::parse("NOPE"), None);
        assert_eq!(AbortKind::parse("Wounded"), None);
    }

    #[test]
    fn an_abort_reads_as_its_reason() {
        let a = Abort::new(AbortKind::Wounded, "wounded by older transaction 1-2-3");
        assert_eq!(a.to_string(), "wounded by older transaction 1-2-3");
    }
}
