//! The coordinator: runs two-phase commit for transactions that span
//! shards, and keeps its decisions in a recovery log that is itself a Raft
//! group (`pact-raft`), so a coordinator crash blocks participants no longer
//! than a failover.
//!
//! Reading order: [`machine`] is the protocol as a pure state machine
//! (with a test for a crash before and after every step); [`log`] is the
//! recovery log's state machine (first decision wins); [`coordinator`]
//! drives both and talks to participants (`handed` keeps the outcomes of
//! its latest commits, for requests that come late); [`service`] is the
//! gRPC face;
//! [`gc`] says which transaction records may be forgotten, and why.
//!
//! # Invariants
//! - The client hears "committed" only after the commit decision is durable
//!   in the recovery log (a Raft quorum has it).
//! - Presumed abort: no record means aborted. Before TxnStatus reports a
//!   presumed abort it records it, and the first decision recorded for a
//!   transaction wins, so a commit can never follow a reported abort.
//! - A new leader finishes every logged, unfinished commit by resending
//!   the (idempotent) commit to each participant until it is applied.
//! - Transaction ids never repeat and never go back: timestamps are issued
//!   only below a reservation made durable in the recovery log first
//!   ([`stamps`]), and a new leader starts past every earlier one.
//! - Every transaction id gets a final answer from TxnStatus with
//!   `resolve`: a one-phase commit's decision lives at its shard, so with
//!   no record in the log the coordinator asks every shard, once nothing
//!   of the id can land there any more: an id of the leader's own term
//!   with no session is over (it was never issued, or its commit ended
//!   with a known outcome); an earlier term's id is below every shard's
//!   fence floor, which a new leader raises to its term's start once.
//!   Neither writes a record per id asked about. (A commit of this term
//!   whose outcome was unknown is fenced by its id, as before.) Within
//!   the record retention, that is; past it, records are collected
//!   ([`gc`]) and the answer may be "expired", never a guess.
//!
//! # Failure
//! Open transactions live in the leader's memory: a coordinator failover
//! aborts them (their participants expire them). A commit whose decision
//! append fails for an unknown reason is reported as `Unknown`; TxnStatus
//! gives the final outcome later.
//!
//! # Load
//! A leader holds at most `limits.max_open_txns` open transactions; a
//! `Begin` past it is refused with `Overloaded` before anything is made.
//! The owner task's queue is bounded (`limits.coordinator_queue`): a
//! commit waits briefly for room, then is refused; results of the owner's
//! own actions wait for room instead, since none may be lost. A busy
//! participant is retried for half a second, then the transaction aborts
//! rather than hold its locks while it waits.

mod convert;
pub mod coordinator;
mod error;
pub mod gc;
mod handed;
pub mod inquiry;
pub mod log;
pub mod machine;
pub mod metrics;
pub mod service;
pub mod stamps;

pub use coordinator::{Coordinator, Hosted};
pub use error::Error;
