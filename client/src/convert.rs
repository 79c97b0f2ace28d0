//! Wire conversion for the client: prost types in and out, and the error
//! convention every Pact server follows (`pact_proto::status`): the
//! client classifies a status by the code in its details, never by its
//! message. Servers use [`pb_abort_kind`] and [`abort_kind`] too, so the
//! abort kinds have one wire mapping.

use pact_common::codes::{META_ABORT_KIND, META_LEADER_ID};
use pact_common::{Abort, AbortKind, ErrorCode, NodeId};
use pact_proto as pb;
use tonic::{Code, Status};

use crate::{ClientError, Mutation};

pub(crate) enum Class {
    /// Refused by a non-leader; maybe with the leader's id.
    NotLeader(Option<NodeId>),
    /// Certainly not applied; safe to retry elsewhere.
    Retry(String),
    /// Refused by admission control (the server is at a limit); nothing
    /// was done. Retry the same server after the pause it asked for
    /// (RetryInfo, if any), with backoff.
    Overloaded(String, Option<std::time::Duration>),
    /// May have been applied.
    Unknown(String),
    /// Final.
    Fail(ClientError),
}

pub(crate) fn classify(s: &Status) -> Class {
    let msg = s.message().to_string();
    let Some((code, meta)) = pb::status::info(s) else {
        return unmarked(s, msg);
    };
    match ErrorCode::parse(&code) {
        Some(ErrorCode::NotLeader) => Class::NotLeader(
            meta.get(META_LEADER_ID)
                .and_then(|v| v.parse().ok())
                .map(NodeId),
        ),
        Some(ErrorCode::Unavailable) => Class::Retry(msg),
        Some(ErrorCode::OutcomeUnknown) => Class::Unknown(msg),
        // Aborted by the lock manager or the coordinator (wounded, lock
        // wait timed out, expired...): nothing was applied; the caller
        // decides whether to start again.
        Some(ErrorCode::Aborted) => Class::Fail(ClientError::Aborted(Abort::new(
            meta.get(META_ABORT_KIND)
                .and_then(|k| AbortKind::parse(k))
                .unwrap_or(AbortKind::Conflict),
            reason(&msg, "aborted: "),
        ))),
        // The request contradicts recorded state (e.g. a decision refused
        // because the other outcome is already recorded).
        Some(ErrorCode::Conflict) => Class::Fail(ClientError::Conflict(reason(&msg, "conflict: "))),
        Some(ErrorCode::InvalidInput) => {
            Class::Fail(ClientError::InvalidInput(reason(&msg, "invalid input: ")))
        }
        Some(ErrorCode::UnknownShard) => Class::Fail(ClientError::InvalidInput(msg)),
        // A replica that stopped on a fatal error, possibly after it
        // proposed the request (one refused before anything was tried is
        // UNAVAILABLE): the outcome is not known.
        Some(ErrorCode::Stopped) => Class::Unknown(msg),
        Some(ErrorCode::Overloaded) => Class::Overloaded(msg, retry_after(s)),
        // Routed by a stale map: the caller refreshes it and routes again.
        Some(ErrorCode::WrongShard) => {
            Class::Fail(ClientError::WrongShard(reason(&msg, "wrong shard: ")))
        }
        // A code newer than this client: only the gRPC code is known.
        None => unmarked(s, msg),
    }
}

/// A status no Pact server marked: made by the transport (a refused
/// connection, a deadline, a reset stream) or by tonic itself (a message
/// over the size limit).
fn unmarked(s: &Status, msg: String) -> Class {
    match s.code() {
        // The request never left this process: the connection could not
        // be made, so it is safe to try elsewhere.
        Code::Unavailable if connect_failed(s) => Class::Retry(msg),
        // Any other of these (a connection cut mid-request) may have
        // reached the server.
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled => {
            Class::Unknown(msg)
        }
        // tonic refuses an oversized message with OUT_OF_RANGE; a bare
        // RESOURCE_EXHAUSTED is a quota (a proxy's, or a server newer than
        // this client): nothing was done, retry later.
        Code::ResourceExhausted => Class::Overloaded(msg, retry_after(s)),
        Code::InvalidArgument | Code::OutOfRange => Class::Fail(ClientError::InvalidInput(msg)),
        // A server of another kind or version: a `participant` or
        // `coordinator` process serves no member table, for one.
        Code::Unimplemented => Class::Fail(ClientError::InvalidInput(format!(
            "the server does not serve this call (a server of another kind or version): {msg}"
        ))),
        _ => Class::Fail(ClientError::Internal(format!("{:?}: {msg}", s.code()))),
    }
}

/// The pause the server asked for before a retry (`google.rpc.RetryInfo`).
fn retry_after(s: &Status) -> Option<std::time::Duration> {
    pb::status::retry_after(s)
}

/// The server's message without the class word it starts with: the
/// client error adds its own, and a reason passed through a coordinator
/// would otherwise read "aborted: aborted: ...".
fn reason(msg: &str, class: &str) -> String {
    msg.strip_prefix(class).unwrap_or(msg).to_string()
}

/// The request never left this process: the connection could not be made.
/// Only the connect phase counts (hyper's connect error, or a refused or
/// unroutable socket); an error on an established connection may come
/// after the server received the request.
fn connect_failed(s: &Status) -> bool {
    use std::io::ErrorKind as K;
    causes(s).any(|e| {
        // tonic's channel marks every failure to connect (a refused or
        // timed-out connect, a failed TLS handshake) with ConnectError.
        e.is::<tonic::ConnectError>()
            || e.downcast_ref::<hyper_util::client::legacy::Error>()
                .is_some_and(|h| h.is_connect())
            || io_kind(e).is_some_and(|k| {
                matches!(
                    k,
                    K::ConnectionRefused
                        | K::AddrNotAvailable
                        | K::HostUnreachable
                        | K::NetworkUnreachable
                )
            })
    })
}

/// The errors behind `s`, nearest first.
fn causes(s: &Status) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
    std::iter::successors(std::error::Error::source(s), |e| e.source())
}

fn io_kind(e: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    e.downcast_ref::<std::io::Error>().map(|io| io.kind())
}

/// The wire form of an abort kind.
pub fn pb_abort_kind(k: AbortKind) -> pb::AbortKind {
    match k {
        AbortKind::Wounded => pb::AbortKind::Wounded,
        AbortKind::LockTimeout => pb::AbortKind::LockTimeout,
        AbortKind::Expired => pb::AbortKind::Expired,
        AbortKind::Leadership => pb::AbortKind::Leadership,
        AbortKind::Unavailable => pb::AbortKind::Unavailable,
        AbortKind::Conflict => pb::AbortKind::Conflict,
        AbortKind::Rollback => pb::AbortKind::Rollback,
        AbortKind::Moved => pb::AbortKind::Moved,
    }
}

/// An abort kind from the wire; unset or unknown (a newer server) reads as
/// a conflict, the kind that promises least.
pub fn abort_kind(k: i32) -> AbortKind {
    match pb::AbortKind::try_from(k) {
        Ok(pb::AbortKind::Wounded) => AbortKind::Wounded,
        Ok(pb::AbortKind::LockTimeout) => AbortKind::LockTimeout,
        Ok(pb::AbortKind::Expired) => AbortKind::Expired,
        Ok(pb::AbortKind::Leadership) => AbortKind::Leadership,
        Ok(pb::AbortKind::Unavailable) => AbortKind::Unavailable,
        Ok(pb::AbortKind::Rollback) => AbortKind::Rollback,
        Ok(pb::AbortKind::Moved) => AbortKind::Moved,
        Ok(pb::AbortKind::Conflict | pb::AbortKind::Unspecified) | Err(_) => AbortKind::Conflict,
    }
}

/// A shard's descriptor from the wire, or why it is not one.
pub fn descriptor(d: pb::ShardDescriptor) -> Result<pact_common::Descriptor, String> {
    use pact_common::{ShardId, Span};
    let span = match d.span {
        Some(pb::shard_descriptor::Span::Range(r)) => Span::Range {
            start: r.start.to_vec(),
            end: r.end.map(|e| e.to_vec()),
        },
        Some(pb::shard_descriptor::Span::Ring(r)) => {
            if r.lo.len() != r.hi.len() {
                return Err(format!(
                    "shard {}: {} arc starts but {} ends",
                    d.shard_id,
                    r.lo.len(),
                    r.hi.len()
                ));
            }
            Span::Ring {
                arcs: r.lo.into_iter().zip(r.hi).collect(),
            }
        }
        None => return Err(format!("shard {}: descriptor without a span", d.shard_id)),
    };
    Ok(pact_common::Descriptor {
        shard: ShardId(d.shard_id),
        version: d.version,
        span,
    })
}

/// Nothing listens at the address: the connect was refused (a port with
/// no process on it), as opposed to a timeout or a broken connection.
pub(crate) fn connection_refused(s: &Status) -> bool {
    causes(s).any(|e| io_kind(e) == Some(std::io::ErrorKind::ConnectionRefused))
}

pub(crate) fn write_ops(batch: Vec<Mutation>) -> Vec<pb::WriteOp> {
    batch
        .into_iter()
        .map(|(k, v)| pb::WriteOp {
            key: k.into(),
            op: Some(match v {
                Some(v) => pb::write_op::Op::Put(v.into()),
                None => pb::write_op::Op::Delete(true),
            }),
        })
        .collect()
}

/// One replica's Raft state as it reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub shard: u64,
    pub node: u64,
    pub role: String,
    pub term: u64,
    pub leader: Option<u64>,
    pub applied_index: u64,
    pub last_log_index: u64,
    pub snapshot_index: u64,
    /// The last log index compacted away (0: none, or an older server).
    pub purged_index: u64,
    pub voters: Vec<u64>,
    /// Why the replica stopped (a storage failure), if it did.
    pub stopped: Option<String>,
    /// Whether it may vote: "open", "quiet" (just restarted), "probing"
    /// (started empty, asking its peers), "rejoining" (lost its data,
    /// catching up without a vote) or "dropping" (removed, being deleted);
    /// see [`ReplicaStatus::votes`].
    pub gate: String,
    /// The group's last committed membership's voters as this replica
    /// knows them, and its log index (0 from older servers).
    pub committed_voters: Vec<u64>,
    pub voters_at: u64,
}

impl ReplicaStatus {
    /// Whether this replica can help elect a leader now. One that cannot
    /// still acknowledges appends, so its group commits, but loses its
    /// leader for good if too few others can vote.
    pub fn votes(&self) -> bool {
        self.gate == "open"
    }
}

impl From<pb::StatusResponse> for ReplicaStatus {
    fn from(r: pb::StatusResponse) -> Self {
        ReplicaStatus {
            shard: r.shard_id,
            node: r.node_id,
            role: r.role,
            term: r.term,
            leader: (r.leader_id != 0).then_some(r.leader_id),
            applied_index: r.applied_index,
            last_log_index: r.last_log_index,
            snapshot_index: r.snapshot_index,
            purged_index: r.purged_index,
            voters: r.voters,
            stopped: (!r.stopped.is_empty()).then_some(r.stopped),
            // Servers from before the field do not say: assume it votes.
            gate: if r.gate.is_empty() {
                "open".to_string()
            } else {
                r.gate
            },
            committed_voters: r.committed_voters,
            voters_at: r.voters_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marked(code: Code, name: &str, msg: &str, meta: Vec<(&str, String)>) -> Status {
        pb::status::error(code, name, msg.to_string(), meta, None)
    }

    fn fail(s: Status) -> ClientError {
        match classify(&s) {
            Class::Fail(e) => e,
            _ => panic!("not a final error: {s:?}"),
        }
    }

    #[test]
    fn errors_are_classified_by_their_code_and_the_class_word_is_said_once() {
        let e = fail(marked(
            Code::Aborted,
            "ABORTED",
            "aborted: wounded by older transaction 1-2-3",
            vec![(META_ABORT_KIND, "wounded".into())],
        ));
        assert_eq!(
            e,
            ClientError::Aborted(Abort::new(
                AbortKind::Wounded,
                "wounded by older transaction 1-2-3"
            ))
        );
        assert_eq!(e.to_string(), "aborted: wounded by older transaction 1-2-3");
        let e = fail(marked(
            Code::FailedPrecondition,
            "CONFLICT",
            "conflict: already committed",
            vec![],
        ));
        assert_eq!(e, ClientError::Conflict("already committed".into()));
        let e = fail(marked(
            Code::InvalidArgument,
            "INVALID_INPUT",
            "invalid input: empty key",
            vec![],
        ));
        assert_eq!(e.to_string(), "invalid input: empty key");
        // The code decides, not the words: an abort whose message reads
        // like something else is still an abort, with its kind.
        let e = fail(marked(
            Code::Aborted,
            "ABORTED",
            "not leader of anything",
            vec![(META_ABORT_KIND, "lock_timeout".into())],
        ));
        assert_eq!(
            e,
            ClientError::Aborted(Abort::new(AbortKind::LockTimeout, "not leader of anything"))
        );
    }

    #[test]
    fn not_leader_carries_its_hint_as_data() {
        let s = marked(
            Code::FailedPrecondition,
            "NOT_LEADER",
            "whatever the text",
            vec![(META_LEADER_ID, "2".into())],
        );
        assert!(matches!(classify(&s), Class::NotLeader(Some(NodeId(2)))));
        let s = marked(Code::FailedPrecondition, "NOT_LEADER", "x", vec![]);
        assert!(matches!(classify(&s), Class::NotLeader(None)));
        let s = marked(Code::Unavailable, "UNAVAILABLE", "x", vec![]);
        assert!(matches!(classify(&s), Class::Retry(_)));
        let s = marked(Code::DeadlineExceeded, "OUTCOME_UNKNOWN", "x", vec![]);
        assert!(matches!(classify(&s), Class::Unknown(_)));
    }

    #[test]
    fn a_failed_connect_is_retryable_and_a_stopped_replica_unknown() {
        // What tonic's channel reports when a connect times out: the
        // request never left, so another replica may take it.
        let timed_out = std::io::Error::from(std::io::ErrorKind::TimedOut);
        let s = Status::from_error(Box::new(tonic::ConnectError(Box::new(timed_out))));
        assert_eq!(s.code(), Code::Unavailable);
        assert!(matches!(classify(&s), Class::Retry(_)));
        // A timeout on an established connection may have reached it.
        let s = Status::deadline_exceeded("timeout");
        assert!(matches!(classify(&s), Class::Unknown(_)));
        // STOPPED: the replica may have proposed it before it stopped.
        let s = marked(Code::Internal, "STOPPED", "x", vec![]);
        assert!(matches!(classify(&s), Class::Unknown(_)));
    }

    #[test]
    fn overloaded_is_retryable_after_the_pause_it_asks_for() {
        // What the servers send (`pact_raft::wire::error_status`): the code
        // and a RetryInfo on RESOURCE_EXHAUSTED.
        let s = pb::status::error(
            Code::ResourceExhausted,
            "OVERLOADED",
            "overloaded: too many open transactions".into(),
            vec![],
            Some(std::time::Duration::from_millis(100)),
        );
        match classify(&s) {
            Class::Overloaded(m, after) => {
                assert_eq!(after, Some(std::time::Duration::from_millis(100)));
                assert!(m.contains("too many open transactions"), "{m}");
            }
            _ => panic!("OVERLOADED must classify as overloaded"),
        }
        // The code decides, whatever the gRPC code says.
        let s = marked(Code::Unavailable, "OVERLOADED", "x", vec![]);
        assert!(matches!(classify(&s), Class::Overloaded(_, None)));
    }

    #[test]
    fn a_status_without_a_code_is_never_read_by_its_words() {
        // What a server of the old convention (or a proxy) would send: the
        // text says "not leader", but nothing marks it, so it is not
        // taken as a hint to retry elsewhere.
        let s = Status::failed_precondition("not leader; leader is node 2");
        assert!(matches!(
            classify(&s),
            Class::Fail(ClientError::Internal(_))
        ));
        let s = Status::unavailable("unavailable: no quorum");
        assert!(matches!(classify(&s), Class::Unknown(_)));
        // A code newer than this client falls back on the gRPC code.
        let s = marked(Code::Unavailable, "SOMETHING_NEW", "x", vec![]);
        assert!(matches!(classify(&s), Class::Unknown(_)));
        let s = Status::out_of_range("decoded message length too large");
        assert!(matches!(
            classify(&s),
            Class::Fail(ClientError::InvalidInput(_))
        ));
        // A bare RESOURCE_EXHAUSTED is a quota: retryable, not a bad request.
        let s = Status::resource_exhausted("quota");
        assert!(matches!(classify(&s), Class::Overloaded(_, None)));
    }

    #[test]
    fn abort_kinds_survive_the_wire() {
        for k in AbortKind::ALL {
            assert_eq!(abort_kind(pb_abort_kind(k) as i32), k);
        }
        assert_eq!(abort_kind(0), AbortKind::Conflict);
        assert_eq!(abort_kind(999), AbortKind::Conflict);
    }
}

/// A record of the metadata group's shard table (or a `Describe`
/// answer) as a domain value.
pub fn shard_record(d: pb::ShardDescriptor) -> Result<pact_common::ShardRecord, String> {
    let (voters, voters_at) = (d.voters.clone(), d.voters_at);
    Ok(pact_common::ShardRecord {
        descriptor: descriptor(d)?,
        voters,
        voters_at,
    })
}

/// A retired shard as received. Its horizons are sorted by group and
/// name each group once; anything else is refused (a peer speaking
/// garbage).
pub fn retired_shard(r: pb::RetiredShard) -> Result<pact_common::RetiredShard, String> {
    let horizons: Vec<(u64, u64)> = r.horizons.iter().map(|h| (h.group, h.ts)).collect();
    if horizons.windows(2).any(|w| w[0].0 >= w[1].0) {
        return Err(format!(
            "retired shard {}: its horizons are not sorted by group, each once",
            r.shard_id
        ));
    }
    Ok(pact_common::RetiredShard {
        shard: pact_common::ShardId(r.shard_id),
        version: r.version,
        successors: r.successors.into_iter().map(pact_common::ShardId).collect(),
        voters: r.voters,
        horizons,
    })
}

/// What a routing table (`Admin.Topology`) describes: the cluster config
/// (its topology as sent, tuning at the defaults: a client uses only the
/// transaction lease, which is sent) and the shard table. Refused, with
/// the reason, if it does not hold together (an unknown partitioning, a
/// replica on a node the table does not list, ...): a peer speaking
/// garbage is not routed by.
pub fn config_from_topology(t: pb::TopologyResponse) -> Result<crate::discover::Found, String> {
    use pact_common::{
        ClusterConfig, CoordinatorConfig, NodeConfig, PartitionScheme, ShardConfig, ShardId,
        TxnTuning,
    };
    let partitioning = match pb::Partitioning::try_from(t.partitioning) {
        Ok(pb::Partitioning::Hash) => PartitionScheme::Hash,
        Ok(pb::Partitioning::Range) => PartitionScheme::Range,
        _ => return Err(format!("unknown partitioning {}", t.partitioning)),
    };
    let nodes = |ids: Vec<u64>| ids.into_iter().map(NodeId).collect::<Vec<_>>();
    let known: std::collections::BTreeSet<u64> = t.nodes.iter().map(|n| n.id).collect();
    let mut shards = Vec::with_capacity(t.descriptors.len());
    for d in t.descriptors {
        let r = shard_record(d)?;
        if let Some(n) = r.voters.iter().find(|n| !known.contains(n)) {
            return Err(format!(
                "shard {} has a voter on node {n}, which the table does not list",
                r.descriptor.shard
            ));
        }
        shards.push(r);
    }
    let config = ClusterConfig {
        partitioning,
        virtual_nodes: t.virtual_nodes,
        nodes: t
            .nodes
            .into_iter()
            .map(|n| NodeConfig {
                id: NodeId(n.id),
                addr: n.addr,
                peer_addr: n.peer_addr,
            })
            .collect(),
        shards: t
            .shards
            .into_iter()
            .map(|s| ShardConfig {
                id: ShardId(s.id),
                replicas: nodes(s.replicas),
                start: s.start,
            })
            .collect(),
        coordinators: t
            .coordinators
            .into_iter()
            .map(|g| CoordinatorConfig {
                group: g.group,
                replicas: nodes(g.replicas),
            })
            .collect(),
        // The idle timeout is the server's business (never sent); it only
        // has to be at least the lease for the config to validate.
        transactions: TxnTuning {
            lease_ms: t.lease_ms,
            idle_timeout_ms: TxnTuning::default().idle_timeout_ms.max(t.lease_ms),
            ..TxnTuning::default()
        },
        raft: Default::default(),
        storage: Default::default(),
        limits: Default::default(),
        tls: None,
    };
    config.validate().map_err(|e| e.to_string())?;
    Ok(crate::discover::Found {
        config,
        shards,
        epoch: t.epoch,
        meta: t.meta_replicas.into_iter().map(NodeId).collect(),
    })
}

#[cfg(test)]
mod topology_tests {
    use super::*;

    fn table() -> pb::TopologyResponse {
        pb::TopologyResponse {
            partitioning: pb::Partitioning::Range as i32,
            virtual_nodes: 128,
            nodes: (1..=3)
                .map(|i| pb::TopologyNode {
                    id: i,
                    addr: format!("127.0.0.1:{}", 7000 + i),
                    peer_addr: format!("127.0.0.1:{}", 7100 + i),
                })
                .collect(),
            shards: vec![
                pb::TopologyShard {
                    id: 1,
                    replicas: vec![1, 2, 3],
                    start: Some(String::new()),
                },
                pb::TopologyShard {
                    id: 2,
                    replicas: vec![2, 3, 1],
                    start: Some("m".into()),
                },
            ],
            coordinators: vec![pb::TopologyGroup {
                group: 3,
                replicas: vec![1, 2, 3],
            }],
            lease_ms: 4_000,
            descriptors: Vec::new(),
            epoch: 0,
            meta_replicas: vec![1, 2, 3],
            retired: Vec::new(),
        }
    }

    #[test]
    fn a_retired_shard_with_horizons_out_of_order_is_refused() {
        let h = |group, ts| pb::GroupStamp { group, ts };
        let r = |horizons| pb::RetiredShard {
            shard_id: 2,
            version: 3,
            successors: vec![1],
            voters: vec![1, 2, 3],
            horizons,
        };
        let ok = retired_shard(r(vec![h(4, 10), h(5, 7)])).unwrap();
        assert_eq!(ok.horizons, vec![(4, 10), (5, 7)]);
        assert_eq!(ok.successors, vec![pact_common::ShardId(1)]);
        for bad in [vec![h(5, 7), h(4, 10)], vec![h(4, 1), h(4, 2)]] {
            assert!(retired_shard(r(bad)).unwrap_err().contains("not sorted"));
        }
    }

    fn range(shard: u64, version: u64, start: &str, end: Option<&str>) -> pb::ShardDescriptor {
        pb::ShardDescriptor {
            shard_id: shard,
            version,
            span: Some(pb::shard_descriptor::Span::Range(pb::KeyRange {
                start: start.as_bytes().to_vec().into(),
                end: end.map(|e| e.as_bytes().to_vec().into()),
            })),
            successors: Vec::new(),
            voters: vec![1, 2, 3],
            voters_at: 7,
        }
    }

    #[test]
    fn a_routing_table_carries_the_shard_table_and_refuses_unknown_voters() {
        let mut t = table();
        t.epoch = 5;
        t.descriptors = vec![
            range(1, 2, "", Some("g")),
            range(2, 1, "m", None),
            range(pact_common::FIRST_SPLIT_ID + 1, 1, "g", Some("m")),
        ];
        let found = config_from_topology(t.clone()).expect("valid");
        assert_eq!(found.epoch, 5);
        assert_eq!(found.shards.len(), 3);
        assert_eq!(found.shards[2].voters_at, 7);
        let map = pact_common::ShardMap::from_descriptors(
            &found
                .shards
                .iter()
                .map(|r| r.descriptor.clone())
                .collect::<Vec<_>>(),
        )
        .expect("a whole map");
        assert_eq!(
            map.shard_for_key(b"h"),
            pact_common::ShardId(pact_common::FIRST_SPLIT_ID + 1)
        );
        t.descriptors[1].voters.push(9);
        let e = config_from_topology(t.clone()).unwrap_err();
        assert!(e.contains("node 9"), "{e}");
        t.descriptors[1].span = None;
        assert!(config_from_topology(t).is_err());
    }

    #[test]
    fn a_routing_table_becomes_a_config_or_a_reason() {
        let c = config_from_topology(table()).expect("valid").config;
        assert_eq!(c.nodes[2].peer_addr, "127.0.0.1:7103");
        assert_eq!(c.transactions.lease_ms, 4_000);
        let map = c.shard_map();
        assert_eq!(map.shard_for_key(b"a"), pact_common::ShardId(1));
        assert_eq!(map.shard_for_key(b"zz"), pact_common::ShardId(2));
        let mut t = table();
        t.partitioning = 9;
        assert!(config_from_topology(t)
            .unwrap_err()
            .contains("partitioning"));
        let mut t = table();
        t.shards[1].replicas.push(9);
        let e = config_from_topology(t).unwrap_err();
        assert!(e.contains('9'), "{e}");
        let mut t = table();
        t.nodes.clear();
        assert!(config_from_topology(t).is_err());
        // A lease longer than the default idle timeout is a valid cluster.
        let mut t = table();
        t.lease_ms = 90_000;
        assert_eq!(
            config_from_topology(t)
                .unwrap()
                .config
                .transactions
                .lease_ms,
            90_000
        );
        // A table too large to build is refused, not built.
        let mut t = table();
        t.partitioning = pb::Partitioning::Hash as i32;
        t.virtual_nodes = 4096;
        t.shards = (1..=2000)
            .map(|i| pb::TopologyShard {
                id: i,
                replicas: vec![1],
                start: None,
            })
            .collect();
        let e = config_from_topology(t).unwrap_err();
        assert!(e.contains("ring points"), "{e}");
    }
}

/// The member table from its wire form, sorted by id.
pub(crate) fn members(r: pb::MembersResponse) -> Vec<crate::ClusterMember> {
    let mut v: Vec<crate::ClusterMember> = r
        .members
        .into_iter()
        .map(|m| crate::ClusterMember {
            id: m.id,
            addr: m.addr,
            peer_addr: m.peer_addr,
            removed: m.removed,
        })
        .collect();
    v.sort_by_key(|m| m.id);
    v
}
