//! Replication for Pact: Raft groups whose log, vote and state live in fjall.
//!
//! This crate is the one place that knows openraft (pinned
//! `=0.10.0-alpha.37`). Everything above it sees a [`Replica`] that proposes
//! opaque commands, serves linearizable reads, and reports its status; and
//! an [`Apply`] trait through which the application (a shard's participant
//! logic, or a coordinator's recovery log) turns committed commands into
//! key-value changes. When openraft's API moves, only this crate changes.
//!
//! # Storage
//! A node keeps every group it hosts in one fjall database ([`NodeStore`]).
//! A single writer thread applies every mutation as an atomic batch and
//! fsyncs once per round, so concurrent appends from many groups share an
//! fsync (group commit). Log entries are acknowledged to openraft as
//! persisted only after that fsync; votes are fsynced before they are sent.
//!
//! Every stored value and Raft message is encoded by [`codec`]: a format
//! version byte, then postcard. The database records its format version
//! when it is created, and [`NodeStore::open`] refuses a directory in
//! another format, or one from before the format was versioned, with an
//! error naming the version it found.
//!
//! # Invariants
//! - Nothing is reported durable before `fsync` returned.
//! - A group's applied state is always the result of applying exactly the
//!   log prefix `1..=applied`, because each entry's writes and its applied
//!   index are one atomic batch.
//! - A snapshot is made durable before openraft may purge the log behind it.
//! - Nothing at or below a group's purge point is read, even while the
//!   writer still deletes those entries in its background lane; the lane
//!   never reorders writes to the same keys (a job that overlaps a pending
//!   range delete waits for it).
//! - Snapshots never sit in memory whole: they are views of the stored
//!   state, streamed in chunks, spooled to a file by the receiver, and
//!   installed in bounded jobs; a crash mid-install is finished from the
//!   file at the next start, and a group never reports a half-installed
//!   state as applied (see `snapshot`).
//! - A read is served only after Raft's ReadIndex check (leadership
//!   confirmed by a quorum after the read arrived), so a deposed leader
//!   cannot serve a stale read.
//!
//! # Failure
//! A failed write, fsync or read (a full disk, a dying one, a block whose
//! checksum fails) poisons the store with its reason: every later write
//! and read fails, the affected Raft groups stop (openraft's `Fatal`), and
//! [`Replica::fatal`] reports why. The servers then fence the node
//! ([`Replica::fence`]: leaders hand leadership on, every Raft core stops)
//! and stay up, acknowledging nothing, so status, readiness and refused
//! requests can say why until an operator restarts the node. At open, a
//! journal whose fsynced part was damaged is refused (fjall's checksums,
//! and [`journal_mark`] for cuts fjall makes silently); a torn tail past
//! the last fsync is cut and the node catches up from its peers.
//!
//! # Membership
//! A group's replicas change at run time through openraft's joint
//! consensus, driven at the leader by [`membership`] (which refuses changes
//! that would leave the new voters without a live majority and promotes a
//! learner only once it has caught up). A node records what it was given
//! or relieved of beside the group's data ([`Hosting`]): a replica added
//! at run time starts without the rejoin probe (it never was a member, so
//! it can have lost no promise), and a dropped one leaves only its vote,
//! downgraded to a plain promise, behind.
//!
//! # What a server shows
//! The crate also holds what every server binary shares besides
//! replication ([`server`]: ports, TLS, connection limits), and what they
//! tell operators: Prometheus metrics ([`metrics`]: Raft gauges, fsyncs,
//! leader changes, snapshots, gRPC requests per method, queue depths and
//! admission refusals) and the HTTP and
//! gRPC health endpoints ([`endpoint`]), where a replica is ready when its
//! group has a known leader and it is not far behind
//! ([`Replica::readiness`]). Log setup is the binaries' own (see
//! `pact_common::logging`): a library installs no subscriber.
//!
//! # Backpressure
//! The storage writer's queue is bounded (Raft waits for room), and
//! [`admission`] is the counted limit servers put in front of new work,
//! refusing past it with OVERLOADED ([`wire::error_status`]).

pub mod admin;
pub mod admission;
pub mod balance;
pub mod codec;
pub mod endpoint;
mod error;
mod journal_mark;
mod log_store;
pub mod membership;
pub mod metrics;
mod network;
mod rejoin;
mod replica;
pub mod server;
mod snapshot;
mod state_machine;
mod store;
mod tail;
mod types;
pub mod wire;

pub use error::ReplicaError;
pub use network::{
    Peers, Removal, RemovalHook, Removals, Router, TransportService, MAX_APPEND_MESSAGE_BYTES,
    MAX_COMMAND_BYTES, MAX_RAFT_MESSAGE_BYTES, MAX_TERM_JUMP, MAX_VOTE_MESSAGE_BYTES, REMOVED_AT,
};
pub use replica::{
    members, Directory, Host, Hosting, Member, Proposal, Replica, ReplicaStatus, Replicas, Role,
    ShardTable, Tuning, DROP_CONFIRM_WITHIN, READY_MAX_LAG,
};
pub use state_machine::{Applied, Apply, Lookup, StateView, Writes};
pub use store::NodeStore;

#[cfg(test)]
mod tests;
