//! Shared vocabulary of Pact: ids, request limits, the cluster config file,
//! and the mapping from keys to shards; and, with the `logging` feature,
//! the log setup and runtime flags the server binaries share ([`logging`],
//! [`runtime`]).
//!
//! Invariants: under a validated config every key maps to exactly one shard
//! ([`ShardMap::shard_for_key`]), and every process that loads the same
//! config computes the same mapping (the ring is built from sorted shard ids
//! and a fixed hash, xxh3). Configs are validated when loaded, so code that
//! holds a [`ClusterConfig`] may assume its nodes and shards are consistent.
//!
//! Failure cases are [`ConfigError`] (unreadable file, bad TOML, or a
//! config that contradicts itself, each message naming the problem) and
//! [`LimitError`] (a request over a size limit); [`identity::IdentityError`]
//! (a certificate that names no node, for the peer port);
//! [`dirlock::DirLockError`] (a data directory another process holds: every
//! server and the playground take [`dirlock::DirLock`] before using one).

#[cfg(feature = "certgen")]
pub mod certgen;
pub mod codes;
mod config;
pub mod dirlock;
pub mod faults;
pub mod identity;
mod ids;
mod limits;
#[cfg(feature = "logging")]
pub mod logging;
mod partition;
pub mod process;
#[cfg(feature = "logging")]
pub mod runtime;
mod slot;
mod txn;

pub use codes::{Abort, AbortKind, ErrorCode};
pub use config::{
    ClusterConfig, ConfigError, CoordinatorConfig, Limits, NodeConfig, PartitionScheme, RaftTuning,
    ShardConfig, StorageTuning, TlsConfig, TxnTuning, LOCAL_PEER_PORT_OFFSET, META_GROUP,
    MIN_SNAPSHOT_KIB_PER_SEC,
};
pub use ids::{NodeId, ShardId};
pub use limits::{
    count_read, merge_scan_pages, next_scan_start, validate_batch, validate_bound, validate_key,
    validate_reads, validate_value, LimitError, Pairs, ScanPage, LOCK_WAIT, MAX_BATCH_BYTES,
    MAX_BATCH_OPS, MAX_KEY_BYTES, MAX_SCAN_LIMIT, MAX_TXN_BYTES, MAX_VALUE_BYTES,
};
pub use partition::{
    split_child_id, Descriptor, GroupRecord, RetiredAnswer, RetiredShard, ShardMap, ShardRecord,
    ShardTable, Span, FIRST_SPLIT_ID, FIRST_VERSION,
};
pub use slot::Slot;
pub use txn::{system_clock, Clock, Guard, Hlc, Op, Timestamp, TxnId};
