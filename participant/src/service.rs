//! The gRPC services of a participant node: `pact.v1.Kv` (plain
//! operations) and `pact.v1.Participant` (transactional operations for
//! coordinators). Each handler converts, calls [`Node`], converts back.
//! gRPC drops a handler's future when the caller's deadline passes, and
//! nothing that holds locks across a proposal may be dropped half way:
//! every proposal runs in a task of its own ([`owned`] here, or inside
//! [`Node`] once a commit's lock waits are over).
//!
//! Admission: reads, writes and the transactional calls that take locks
//! first take a place under the node's in-flight limit ([`Node::admit`])
//! and are refused with OVERLOADED, having done nothing, when there is
//! none. Prepare, Decide and Inquire are exempt: they finish transactions
//! already admitted (and release their locks), so refusing them under
//! load would only hold locks longer; Status is cheap and for operators.

use std::sync::Arc;

use pact_common::{ShardId, Timestamp};
use pact_proto as pb;
use pact_proto::kv_server::{Kv, KvServer};
use pact_proto::participant_server::{Participant, ParticipantServer};
use tonic::{Request, Response, Status};

use crate::convert;
use crate::node::{Node, TxnRef};
use crate::Error;

/// Largest request or reply: a maximal write batch plus framing. Larger
/// messages are refused by tonic before they are decoded.
pub const MAX_KV_MESSAGE_BYTES: usize = pact_common::MAX_BATCH_BYTES + (1 << 20);

/// Run an operation that proposes to Raft in a task of its own, so that the
/// caller going away (its deadline passing, or a reset stream dropping the
/// handler) cannot cut it short. (Write and CommitOnePhase do this inside
/// [`Node`], after their lock waits, which a caller may still cut short.)
async fn owned<T: Send + 'static>(
    op: impl std::future::Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Error> {
    tokio::spawn(op)
        .await
        .unwrap_or_else(|e| Err(Error::Fatal(format!("request task failed: {e}"))))
}

/// `Describe`, on both ports: the shard's descriptor from its leader.
async fn describe(
    node: &Node,
    request: Request<pb::DescribeRequest>,
) -> Result<Response<pb::ShardDescriptor>, Status> {
    let _admitted = node.admit()?;
    let d = node
        .describe(ShardId(request.into_inner().shard_id))
        .await?;
    let mut reply = convert::descriptor(&d.descriptor);
    reply.successors = d.successors.iter().map(|s| s.0).collect();
    reply.voters = d.voters.iter().map(|n| n.0).collect();
    reply.voters_at = d.voters_at;
    Ok(Response::new(reply))
}

fn who(txn: pact_common::TxnId, first: bool, prio: pact_common::Timestamp) -> TxnRef {
    TxnRef { txn, first, prio }
}

#[derive(Clone)]
pub struct KvService {
    node: Arc<Node>,
}

impl KvService {
    pub fn new(node: Arc<Node>) -> KvServer<KvService> {
        KvServer::new(KvService { node })
            .max_decoding_message_size(MAX_KV_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_KV_MESSAGE_BYTES)
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let _admitted = self.node.admit()?;
        let r = request.into_inner();
        let v = self
            .node
            .get(ShardId(r.shard_id), r.shard_version, &r.key)
            .await?;
        Ok(Response::new(convert::value(v)))
    }

    async fn scan(
        &self,
        request: Request<pb::ScanRequest>,
    ) -> Result<Response<pb::ScanResponse>, Status> {
        let _admitted = self.node.admit()?;
        let r = request.into_inner();
        let (pairs, more) = self
            .node
            .scan(
                ShardId(r.shard_id),
                r.shard_version,
                &r.start,
                convert::end_key(&r.end),
                r.limit,
            )
            .await?;
        Ok(Response::new(convert::pairs(pairs, more)))
    }

    async fn write(
        &self,
        request: Request<pb::WriteRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let _admitted = self.node.admit()?;
        let r = request.into_inner();
        let ops = convert::write_ops(r.ops)?;
        let index = self
            .node
            .write(ShardId(r.shard_id), r.shard_version, ops)
            .await?;
        Ok(Response::new(pb::WriteResponse { index }))
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let r = request.into_inner();
        let s = self.node.status(ShardId(r.shard_id))?;
        Ok(Response::new(pact_raft::wire::status_response(s)))
    }

    async fn describe(
        &self,
        request: Request<pb::DescribeRequest>,
    ) -> Result<Response<pb::ShardDescriptor>, Status> {
        describe(&self.node, request).await
    }

    async fn split(
        &self,
        request: Request<pb::SplitRequest>,
    ) -> Result<Response<pb::SplitResponse>, Status> {
        let r = request.into_inner();
        if let Some(at) = &r.at {
            pact_common::validate_key(at).map_err(Error::from)?;
        }
        let (left, child) = self
            .node
            .split(ShardId(r.shard_id), r.at.map(|a| a.to_vec()), r.version)
            .await?;
        Ok(Response::new(pb::SplitResponse {
            left: Some(convert::descriptor(&left)),
            child: Some(convert::descriptor(&child)),
        }))
    }

    async fn merge(
        &self,
        request: Request<pb::MergeRequest>,
    ) -> Result<Response<pb::MergeResponse>, Status> {
        let r = request.into_inner();
        let into = self
            .node
            .merge(ShardId(r.shard_id), ShardId(r.into))
            .await?;
        Ok(Response::new(pb::MergeResponse {
            into: Some(convert::descriptor(&into)),
        }))
    }

    async fn retirable(
        &self,
        request: Request<pb::DescribeRequest>,
    ) -> Result<Response<pb::RetiredShard>, Status> {
        let _admitted = self.node.admit()?;
        let r = self
            .node
            .retirable(ShardId(request.into_inner().shard_id))
            .await?;
        Ok(Response::new(pact_raft::wire::retired_shard(&r)))
    }
}

#[derive(Clone)]
pub struct ParticipantService {
    node: Arc<Node>,
}

impl ParticipantService {
    pub fn new(node: Arc<Node>) -> ParticipantServer<ParticipantService> {
        ParticipantServer::new(ParticipantService { node })
            .max_decoding_message_size(MAX_KV_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_KV_MESSAGE_BYTES)
    }

    /// The same service for callers in this process (the node's own
    /// coordinator): the same handlers, limits and request metrics, without
    /// the network. Only the peer port's certificate check is skipped: the
    /// caller is this node.
    pub fn local(node: Arc<Node>) -> pact_client::Local {
        use tower_layer::Layer;
        let id = node.id();
        let svc = pact_raft::metrics::grpc::GrpcMetricsLayer.layer(Self::new(node));
        pact_client::Local::new(
            id,
            &format!("/{}/", pact_proto::participant_server::SERVICE_NAME),
            svc,
        )
    }
}

#[tonic::async_trait]
impl Participant for ParticipantService {
    async fn txn_get(
        &self,
        request: Request<pb::TxnGetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let _admitted = self.node.admit()?;
        let r = request.into_inner();
        let txn = convert::txn_id(r.txn)?;
        let prio = convert::priority(r.priority, txn)?;
        let v = self
            .node
            .txn_get(
                ShardId(r.shard_id),
                r.shard_version,
                who(txn, r.first, prio),
                &r.key,
                r.for_update,
            )
            .await?;
        Ok(Response::new(convert::value(v)))
    }

    async fn txn_get_batch(
        &self,
        request: Request<pb::TxnGetBatchRequest>,
    ) -> Result<Response<pb::GetManyResponse>, Status> {
        let _admitted = self.node.admit()?;
        let r = request.into_inner();
        let txn = convert::txn_id(r.txn)?;
        let prio = convert::priority(r.priority, txn)?;
        let keys: Vec<Vec<u8>> = r.keys.into_iter().map(|k| k.to_vec()).collect();
        let values = self
            .node
            .txn_get_batch(
                ShardId(r.shard_id),
                r.shard_version,
                who(txn, r.first, prio),
                &keys,
                r.for_update,
            )
            .await?;
        Ok(Response::new(pb::GetManyResponse {
            values: values.into_iter().map(convert::value).collect(),
        }))
    }

    async fn txn_scan(
        &self,
        request: Request<pb::TxnScanRequest>,
    ) -> Result<Response<pb::ScanResponse>, Status> {
        let _admitted = self.node.admit()?;
        let r = request.into_inner();
        let txn = convert::txn_id(r.txn)?;
        let prio = convert::priority(r.priority, txn)?;
        let (pairs, more) = self
            .node
            .txn_scan(
                ShardId(r.shard_id),
                r.shard_version,
                who(txn, r.first, prio),
                &r.start,
                convert::end_key(&r.end),
                r.limit,
            )
            .await?;
        Ok(Response::new(convert::pairs(pairs, more)))
    }

    async fn txn_write(
        &self,
        request: Request<pb::TxnWriteRequest>,
    ) -> Result<Response<pb::TxnWriteResponse>, Status> {
        let _admitted = self.node.admit()?;
        let r = request.into_inner();
        let txn = convert::txn_id(r.txn)?;
        let prio = convert::priority(r.priority, txn)?;
        let ops = convert::write_ops(r.ops)?;
        self.node
            .txn_write(
                ShardId(r.shard_id),
                r.shard_version,
                who(txn, r.first, prio),
                ops,
            )
            .await?;
        Ok(Response::new(pb::TxnWriteResponse {}))
    }

    async fn prepare(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::PrepareResponse>, Status> {
        let r = request.into_inner();
        let txn = convert::txn_id(r.txn)?;
        let ops = convert::write_ops(r.ops)?;
        let node = self.node.clone();
        let vote = owned(async move {
            node.prepare(ShardId(r.shard_id), r.shard_version, txn, ops, r.durable)
                .await
        })
        .await?;
        Ok(Response::new(convert::prepare_response(vote)))
    }

    async fn commit_one_phase(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnDone>, Status> {
        let _admitted = self.node.admit()?;
        let r = request.into_inner();
        let txn = convert::txn_id(r.txn)?;
        let prio = convert::priority(r.priority, txn)?;
        let ops = convert::write_ops(r.ops)?;
        self.node
            .commit_one_phase(
                ShardId(r.shard_id),
                r.shard_version,
                who(txn, r.first, prio),
                ops,
            )
            .await?;
        Ok(Response::new(pb::TxnDone {}))
    }

    async fn decide(
        &self,
        request: Request<pb::DecideRequest>,
    ) -> Result<Response<pb::TxnDone>, Status> {
        let r = request.into_inner();
        let txn = convert::txn_id(r.txn)?;
        if r.open && r.commit {
            return Err(Error::InvalidInput(
                "`open` goes with an abort only: a commit needs the transaction's prepare".into(),
            )
            .into());
        }
        let node = self.node.clone();
        let shard = ShardId(r.shard_id);
        owned(async move {
            if r.open {
                node.abort_open(shard, txn).await
            } else {
                node.decide(shard, txn, r.commit).await
            }
        })
        .await?;
        Ok(Response::new(pb::TxnDone {}))
    }

    async fn inquire(
        &self,
        request: Request<pb::InquireRequest>,
    ) -> Result<Response<pb::InquireResponse>, Status> {
        let r = request.into_inner();
        let txn = convert::txn_id(r.txn)?;
        let state = self.node.inquire(ShardId(r.shard_id), txn, r.fence).await?;
        Ok(Response::new(convert::inquire_response(state)))
    }

    async fn forget(
        &self,
        request: Request<pb::ForgetRequest>,
    ) -> Result<Response<pb::ForgetResponse>, Status> {
        let r = request.into_inner();
        let node = self.node.clone();
        // Its proposals are idempotent, but it runs whole anyway: a
        // horizon raised and records half deleted is fine, a dropped
        // caller need not decide that.
        let (removed, kept) = owned(async move {
            node.forget(ShardId(r.shard_id), r.group, Timestamp(r.below))
                .await
        })
        .await?;
        Ok(Response::new(pb::ForgetResponse { removed, kept }))
    }

    async fn raise_floor(
        &self,
        request: Request<pb::FloorRequest>,
    ) -> Result<Response<pb::FloorResponse>, Status> {
        let r = request.into_inner();
        let node = self.node.clone();
        let floor = owned(async move {
            node.raise_floor(ShardId(r.shard_id), r.group, Timestamp(r.below))
                .await
        })
        .await?;
        Ok(Response::new(pb::FloorResponse { floor: floor.0 }))
    }

    async fn describe(
        &self,
        request: Request<pb::DescribeRequest>,
    ) -> Result<Response<pb::ShardDescriptor>, Status> {
        describe(&self.node, request).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use pact_common::{ClusterConfig, NodeId, Timestamp};
    use tonic::Code;

    use super::*;

    /// A one-node cluster whose node serves at most two requests at once,
    /// with its shard's leader elected.
    async fn small_node(dir: &std::path::Path) -> Arc<Node> {
        let mut config = ClusterConfig::local_with_coordinators(1, 1, 1, 1, 47_101).unwrap();
        config.limits.max_in_flight_requests = 2;
        let node = Arc::new(Node::start(config, NodeId(1), dir, None).await.unwrap());
        // A leader takes requests once it has recovered its transactions
        // (not as soon as it is elected): a read answers then.
        let kv = KvService { node: node.clone() };
        for _ in 0..200 {
            let read = kv
                .get(Request::new(pb::GetRequest {
                    shard_version: 0,
                    shard_id: 1,
                    key: b"k".to_vec().into(),
                }))
                .await;
            if node.status(ShardId(1)).is_ok_and(|s| s.role == "leader") && read.is_ok() {
                return node;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the shard's leader did not become ready");
    }

    /// Wall-clock milliseconds: transaction ids made up here must be
    /// near the node's clock.
    fn now_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    }

    fn gauge(node: &Node, which: &str) -> i64 {
        node.refresh_metrics();
        match which {
            "locks" => node
                .metrics
                .lock_table
                .with_label_values(&["1", "key"])
                .get(),
            _ => node.metrics.open_txns.with_label_values(&["1"]).get(),
        }
    }

    fn assert_overloaded(s: &Status) {
        assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
        let (code, _) = pb::status::info(s).expect("a Pact error code");
        assert_eq!(code, "OVERLOADED");
        assert!(pb::status::retry_after(s).is_some(), "a RetryInfo");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_past_the_in_flight_limit_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let node = small_node(dir.path()).await;
        let txns = ParticipantService { node: node.clone() };
        let kv = KvService { node: node.clone() };
        let now = now_ms();
        let write = pb::TxnWriteRequest {
            shard_version: 0,
            shard_id: 1,
            txn: Some(pb::TxnId {
                ts: Timestamp::from_parts(now, 0).0,
                node: 2,
                group: 1,
            }),
            ops: vec![pb::WriteOp {
                key: b"k".to_vec().into(),
                op: Some(pb::write_op::Op::Put(b"v".to_vec().into())),
            }],
            first: true,
            priority: 0,
        };
        // Two requests in flight: every place is taken.
        let held = [node.admit().unwrap(), node.admit().unwrap()];
        let e = txns
            .txn_write(Request::new(write.clone()))
            .await
            .unwrap_err();
        assert_overloaded(&e);
        let e = kv
            .get(Request::new(pb::GetRequest {
                shard_version: 0,
                shard_id: 1,
                key: b"k".to_vec().into(),
            }))
            .await
            .unwrap_err();
        assert_overloaded(&e);
        // The refused write registered no transaction and took no lock.
        assert_eq!(gauge(&node, "txns"), 0);
        assert_eq!(gauge(&node, "locks"), 0);
        // Decisions are exempt: they finish admitted work. (Another
        // transaction's: an abort here would refuse the write below for
        // good.)
        txns.decide(Request::new(pb::DecideRequest {
            shard_id: 1,
            txn: Some(pb::TxnId {
                ts: Timestamp::from_parts(now, 1).0,
                node: 2,
                group: 1,
            }),
            commit: false,
            open: false,
        }))
        .await
        .unwrap();
        drop(held);
        assert_eq!(node.in_flight(), 0);
        // With a place free the same write goes through and takes its lock,
        // and its place comes back when it is done.
        txns.txn_write(Request::new(write)).await.unwrap();
        assert_eq!(gauge(&node, "locks"), 1);
        assert_eq!(node.in_flight(), 0);
        node.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_open_transaction_s_abort_frees_it_and_logs_nothing() {
        use crate::kv::TxnState;
        let dir = tempfile::tempdir().unwrap();
        let node = small_node(dir.path()).await;
        let txns = ParticipantService { node: node.clone() };
        let now = now_ms();
        let id = |logical| pb::TxnId {
            ts: Timestamp::from_parts(now, logical).0,
            node: 2,
            group: 1,
        };
        let write = |txn: pb::TxnId, key: &[u8]| pb::TxnWriteRequest {
            shard_version: 0,
            shard_id: 1,
            txn: Some(txn),
            ops: vec![pb::WriteOp {
                key: key.to_vec().into(),
                op: Some(pb::write_op::Op::Put(b"v".to_vec().into())),
            }],
            first: true,
            priority: 0,
        };
        let abort = |txn: pb::TxnId, open: bool| pb::DecideRequest {
            shard_id: 1,
            txn: Some(txn),
            commit: false,
            open,
        };
        let log_end = || node.status(ShardId(1)).unwrap().last_log_index;
        // An open transaction's abort: its lock goes, nothing is logged,
        // no record is left, and a late first request of it is refused.
        txns.txn_write(Request::new(write(id(0), b"a")))
            .await
            .unwrap();
        assert_eq!(gauge(&node, "locks"), 1);
        let before = log_end();
        txns.decide(Request::new(abort(id(0), true))).await.unwrap();
        assert_eq!(gauge(&node, "locks"), 0);
        assert_eq!(gauge(&node, "txns"), 0);
        assert_eq!(log_end(), before, "nothing was logged");
        let t0 = convert::txn_id(Some(id(0))).unwrap();
        assert_eq!(
            node.inquire(ShardId(1), t0, false).await.unwrap(),
            TxnState::None
        );
        let late = txns
            .txn_write(Request::new(write(id(0), b"b")))
            .await
            .unwrap_err();
        assert_eq!(late.code(), tonic::Code::Aborted, "{late:?}");
        assert_eq!(gauge(&node, "locks"), 0);
        // The logged abort, as before, records the outcome.
        txns.txn_write(Request::new(write(id(1), b"a")))
            .await
            .unwrap();
        txns.decide(Request::new(abort(id(1), false)))
            .await
            .unwrap();
        assert_eq!(gauge(&node, "locks"), 0);
        assert!(log_end() > before);
        let t1 = convert::txn_id(Some(id(1))).unwrap();
        assert_eq!(
            node.inquire(ShardId(1), t1, false).await.unwrap(),
            TxnState::Aborted
        );
        // `open` goes with an abort only.
        let mut commit = abort(id(2), true);
        commit.commit = true;
        let e = txns.decide(Request::new(commit)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        node.shutdown().await;
    }

    /// A decision waits for the shard's next transaction entry and rides
    /// in it, ahead of that entry's writes: a commit decided on key `a`
    /// and a later one-phase commit that overwrote `a` (its lock free at
    /// once) take one log entry together, the later value wins, and the
    /// decision's request is answered from it. With nothing to carry it,
    /// a decision goes alone after the hold.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_held_decision_rides_in_the_next_entry_or_goes_alone() {
        let dir = tempfile::tempdir().unwrap();
        let node = small_node(dir.path()).await;
        let txns = ParticipantService { node: node.clone() };
        let kv = KvService { node: node.clone() };
        let now = now_ms();
        let id = |logical| pact_common::TxnId {
            ts: Timestamp::from_parts(now, logical),
            node: 2,
            group: 1,
        };
        let write = |txn: pact_common::TxnId, key: &[u8], value: &[u8]| {
            let txns = txns.clone();
            let (key, value) = (key.to_vec(), value.to_vec());
            async move {
                txns.txn_write(Request::new(pb::TxnWriteRequest {
                    shard_version: 0,
                    shard_id: 1,
                    txn: Some(pb::TxnId {
                        ts: txn.ts.0,
                        node: txn.node,
                        group: txn.group,
                    }),
                    ops: vec![pb::WriteOp {
                        key: key.into(),
                        op: Some(pb::write_op::Op::Put(value.into())),
                    }],
                    first: true,
                    priority: 0,
                }))
                .await
                .unwrap();
            }
        };
        let read = |key: &[u8]| {
            let kv = kv.clone();
            let key = key.to_vec();
            async move {
                let r = kv
                    .get(Request::new(pb::GetRequest {
                        shard_version: 0,
                        shard_id: 1,
                        key: key.into(),
                    }))
                    .await
                    .unwrap()
                    .into_inner();
                r.found.then(|| r.value.to_vec())
            }
        };
        let count = |how| node.metrics.decisions.with_label_values(&[how]).get();
        let log_end = || node.status(ShardId(1)).unwrap().last_log_index;
        node.set_decision_hold(Duration::from_secs(60));
        let (a, c) = (id(0), id(1));
        write(a, b"a", b"A").await;
        let vote = node.prepare(ShardId(1), 0, a, Vec::new(), true).await;
        assert_eq!(vote.unwrap(), crate::node::Vote::Yes);
        let decided = tokio::spawn({
            let node = node.clone();
            async move { node.decide(ShardId(1), a, true).await }
        });
        // Held: its lock went at once, and nothing was logged for it.
        let before = log_end();
        for _ in 0..200 {
            if gauge(&node, "locks") == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(gauge(&node, "locks"), 0);
        assert_eq!(read(b"a").await, Some(b"A".to_vec()), "served from memory");
        assert!(!decided.is_finished());
        write(c, b"a", b"C").await;
        let who = TxnRef {
            txn: c,
            first: false,
            prio: c.ts,
        };
        node.commit_one_phase(ShardId(1), 0, who, Vec::new())
            .await
            .unwrap();
        decided.await.unwrap().unwrap();
        assert_eq!(log_end(), before + 1, "one entry for both");
        assert_eq!((count("carried"), count("alone")), (1, 0));
        assert_eq!(read(b"a").await, Some(b"C".to_vec()));
        for t in [a, c] {
            assert_eq!(
                node.inquire(ShardId(1), t, false).await.unwrap(),
                crate::kv::TxnState::Committed
            );
        }
        // Nothing comes to carry it: alone, after the hold.
        node.set_decision_hold(Duration::from_millis(20));
        let d = id(2);
        write(d, b"b", b"D").await;
        let vote = node.prepare(ShardId(1), 0, d, Vec::new(), true).await;
        assert_eq!(vote.unwrap(), crate::node::Vote::Yes);
        let before = log_end();
        node.decide(ShardId(1), d, true).await.unwrap();
        assert_eq!(log_end(), before + 1);
        assert_eq!((count("carried"), count("alone")), (1, 1));
        assert_eq!(read(b"b").await, Some(b"D".to_vec()));
        node.shutdown().await;
    }

    /// A decision, record horizon or fence floor for a coordinator group
    /// the cluster does not have is refused, and a horizon or floor far
    /// ahead of the node's clock is refused for now (it only grows: it
    /// would refuse the group's transactions here for good). Nothing is
    /// written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stamps_and_decisions_of_unknown_groups_or_from_the_future_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let node = small_node(dir.path()).await;
        let config = ClusterConfig::local_with_coordinators(1, 1, 1, 1, 47_101).unwrap();
        let group = config.coordinators[0].group;
        let unknown = group + 1000;
        let now = now_ms();
        let stranger = pact_common::TxnId {
            ts: Timestamp::from_parts(now, 0),
            node: 2,
            group: unknown,
        };
        let before = node.status(ShardId(1)).unwrap().last_log_index;
        for r in [
            node.decide(ShardId(1), stranger, false).await,
            node.decide(ShardId(1), stranger, true).await,
            node.abort_open(ShardId(1), stranger).await,
        ] {
            assert!(matches!(r, Err(Error::InvalidInput(_))), "{r:?}");
        }
        let fenced = node.inquire(ShardId(1), stranger, true).await;
        assert!(matches!(fenced, Err(Error::InvalidInput(_))), "{fenced:?}");
        let soon = Timestamp::from_parts(now, 0);
        let later = Timestamp::from_parts(now + 3_600_000, 0);
        let r = node.forget(ShardId(1), unknown, soon).await;
        assert!(matches!(r, Err(Error::InvalidInput(_))), "{r:?}");
        let r = node.forget(ShardId(1), group, later).await;
        assert!(matches!(r, Err(Error::Unavailable(_))), "{r:?}");
        let r = node.raise_floor(ShardId(1), group, later).await;
        assert!(matches!(r, Err(Error::Unavailable(_))), "{r:?}");
        let r = node.raise_floor(ShardId(1), unknown, soon).await;
        assert!(matches!(r, Err(Error::InvalidInput(_))), "{r:?}");
        assert_eq!(node.status(ShardId(1)).unwrap().last_log_index, before);
        // Within the clock's reach, for a group it has: done.
        let earlier = Timestamp::from_parts(now.saturating_sub(60_000), 0);
        node.forget(ShardId(1), group, earlier).await.unwrap();
        node.raise_floor(ShardId(1), group, earlier).await.unwrap();
        node.shutdown().await;
    }
}
