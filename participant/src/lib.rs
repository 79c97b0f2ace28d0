//! The participant: a node that hosts replicas of shards and serves them.
//!
//! A shard is a Raft group (see `pact-raft`) whose state machine is the
//! shard's key-value data. This crate holds what is specific to shards:
//! the command format and its effect ([`kv`]), the node that hosts one
//! replica per assigned shard ([`node`]), and the gRPC service in front of
//! it ([`service`]), with wire conversion kept in [`convert`].
//!
//! # Invariants
//! - A request is served only by the shard's leader; reads after Raft's
//!   ReadIndex check, so they reflect every write acknowledged before the
//!   read began (linearizable), and a deposed leader cannot answer.
//! - A write batch is one Raft entry: all of it is applied or none of it.
//! - A coordinator's decision lets the transaction's locks go at once; the
//!   decision itself is held briefly for the shard's next transaction
//!   entry to carry ahead of its writes (one atomic batch), and no entry
//!   writing its keys is proposed without it or behind it unlogged
//!   ([`kv::ShardCommand::Decided`], docs/architecture.md section 8,
//!   invariant 1).
//! - Every key in a request must belong to the named shard by the shard's
//!   own descriptor (what it owns, recorded in its replicated state by its
//!   first leader), and the request's `shard_version`, if given, must be
//!   the descriptor's: a misrouted request is refused with `WrongShard`
//!   before it locks anything, never stored.
//! - Requests are validated (key and value sizes, batch size, scan limit)
//!   before anything is proposed.
//! - At most `limits.max_in_flight_requests` requests that take locks or
//!   propose are served at once per node; one past it is refused with
//!   `Overloaded` before it touches anything ([`Node::admit`]).
//! - A shard the metadata group retired (merged, no prepare record and no
//!   commit outcome left when its leader checked, [`Node::retirable`]) is
//!   answered for by every node from that record, is dropped wherever it
//!   is hosted, and is never hosted again.
//!
//! # Failure
//! A request to a follower answers `NotLeader` with the leader's id and
//! address when known. A storage failure stops the replica; the node binary
//! then exits so a supervisor restarts it from its durable state.

mod convert;
mod error;
pub mod kv;
pub mod locks;
pub mod metrics;
pub mod node;
pub mod service;
pub mod split;
pub mod txn;

pub use error::Error;
pub use node::Node;
