//! The metadata group: the cluster's member table and shard table,
//! replicated by Raft.
//!
//! A Pact cluster starts from its config file, which lists the nodes. To
//! grow past that list, the set of nodes lives in the cluster itself: a
//! Raft group with the reserved id [`pact_common::META_GROUP`], first
//! hosted by the nodes of the config's first coordinator group (those
//! already run a recovery log, and a cluster without one has no metadata
//! group); its replicas move like any group's (`txn admin replica move
//! meta FROM TO`), and it records its own voters in its table, so nodes
//! and clients find it after it left the config's nodes. Its
//! state is one record per node: id, client address, peer address, and
//! whether it was removed; and one record per shard (its descriptor and
//! committed voters, as its leader last reported them) with the shard
//! table's epoch.
//!
//! # What it is for
//! - `txn admin member add ID ADDR PEER_ADDR` records a node; the node is
//!   then started with its id and `--endpoints` (it takes the config a
//!   metadata node runs with, `Meta.Config`) or the config file, asks the
//!   table for its addresses, and replicas can be moved onto it.
//! - Every `pact` node keeps a directory of the members (read every second
//!   from its own replica, or from the group's leader), which its Raft
//!   groups, its admin service (new learners' addresses, the routing table
//!   any node sends) and its clients of other nodes consult for nodes the
//!   config does not name.
//! - The group's leader asks every shard for its descriptor and voters
//!   every 2 s and records what changed; every node keeps that shard
//!   table in its directory, and the routing table any node sends
//!   (`Admin.Topology`) carries it, so a client given only endpoints
//!   routes to shards splits made, and finds moved replicas, at once.
//! - `txn admin shard retire SHARD` records a merged shard whose group
//!   may go, as its leader checked and described it (`Kv.Retirable`);
//!   every node then answers for the shard from that record and drops its
//!   replica (`pact_participant::Node`). The group's leader also does it
//!   by itself, every `raft.retire_merged_secs`, for each shard its table
//!   shows merged and not yet retired (the shard's leader decides; a
//!   refusal is asked again next round).
//!
//! # Invariants
//! - The table starts as the config's nodes: each new leader proposes
//!   that seed, and only the first one applied takes effect, so a config
//!   edited after the first start changes no membership.
//! - Every rule about the table is checked at apply, from the replicated
//!   table alone (`machine::effect`): an id is unique and never reused
//!   once removed; no address is used twice, a removed member's included.
//!   What does not depend on the table (address syntax and length) is
//!   checked by the leader before proposing (`machine::check_new`).
//! - Removing is marking: the record stays, so the id stays taken.
//! - A retired shard's record is written once and never changed (a
//!   later `Retire` of it is a no-op), and it is refused against a table
//!   record of a later version than the one checked.
//! - A shard record is replaced only by a newer one: a larger
//!   `(version, voters_at)` (descriptor version, then the log index of
//!   the committed membership), both of which only grow within a shard;
//!   so a late report never undoes a newer one. The table is a cache:
//!   shards decide what they own, and Raft decides who replicates them.
//! - The table is a directory, never the authority on who replicates
//!   what: each group's own Raft membership is. The leader refuses to
//!   remove a node that a shard's or a coordinator group's leader counts
//!   among its voters (or while one cannot say), and one in this group's
//!   own membership. A learner left on a node, or a
//!   replica added after that check, stays until it is moved.
//!
//! # Failure
//! Without a quorum of its nodes, the table cannot change, and a node
//! outside the config cannot start (it learns its own addresses here);
//! nodes already running keep their last directory.

mod error;
pub mod group;
pub mod machine;
pub mod service;

pub use error::Error;
pub use group::{keep_directory, MetaGroup, MetaSlot, Source};
pub use machine::Member;
