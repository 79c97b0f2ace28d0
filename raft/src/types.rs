//! The openraft type configuration. Every other module names these aliases,
//! never openraft's generic types directly, so a change in openraft's type
//! parameters is absorbed here.

use serde::{Deserialize, Serialize};

pub(crate) use crate::codec::byte_string;

/// An application command, already encoded by the application. The
/// replication layer never looks inside: it only orders and stores it.
///
/// Serialized as one byte string, not a sequence of `u8`s: the storage
/// encoding writes both the same way (length, then the bytes), but a byte
/// string is copied in one piece instead of visited byte by byte, which
/// made a 1 MiB entry cost tens of milliseconds per encode or decode and
/// blew the append deadline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command(pub Vec<u8>);

impl Serialize for Command {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        byte_string::serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        byte_string::deserialize(d).map(Command)
    }
}

/// The application's reply to an applied command, encoded by the application.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply(#[serde(with = "byte_string")] pub Vec<u8>);

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Command({} bytes)", self.0.len())
    }
}

openraft::declare_raft_types!(
    /// Pact's Raft types: u64 node ids, addresses as `BasicNode`, opaque commands.
    pub TypeConfig:
        D = Command,
        R = Reply,
        NodeId = u64,
        Node = openraft::BasicNode,
);

pub type Raft = openraft::Raft<TypeConfig, crate::state_machine::StateMachine>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;
/// A snapshot's data: a view of the sender's store, or a file received
/// from the leader (see `snapshot`); never the data itself in memory.
pub type SnapshotData = crate::snapshot::SnapshotData;
