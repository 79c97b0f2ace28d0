//! The `pact.v1.Txn` gRPC service of a coordinator.

use std::sync::Arc;

use pact_proto as pb;
use pact_proto::txn_server::{Txn, TxnServer};
use tonic::{Request, Response, Status};

use crate::convert;
use crate::coordinator::{Coordinator, Hosted};
use crate::Error;

const MAX_MESSAGE_BYTES: usize = pact_common::MAX_BATCH_BYTES + (1 << 20);

pub struct TxnService {
    hosted: Hosted,
}

impl TxnService {
    pub fn new(c: Arc<Coordinator>) -> TxnServer<TxnService> {
        let hosted = Hosted::default();
        hosted.set(Some(c));
        Self::hosted(hosted)
    }

    /// The service of whatever coordinator replica `hosted` holds at each
    /// call (on `pact`, where one may be added or removed at run time);
    /// with none, every call is "not leader", without a hint, so a client
    /// asks the group's other replicas.
    pub fn hosted(hosted: Hosted) -> TxnServer<TxnService> {
        TxnServer::new(TxnService { hosted })
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn c(&self) -> Result<Arc<Coordinator>, Status> {
        self.c_for(0)
    }

    /// The coordinator replica of `group` this node runs (of any group for
    /// 0): else "not leader" without a hint, so the caller asks the
    /// group's other replicas (this node left the group, or runs another
    /// one's replica since a move) instead of taking another group's
    /// answer.
    fn c_for(&self, group: u64) -> Result<Arc<Coordinator>, Status> {
        match self.hosted.get() {
            Some(c) if group == 0 || c.group() == group => Ok(c),
            // No such group at all: a bad request, not a routing miss.
            Some(c) if !c.knows_group(group) => Err(Error::InvalidInput(format!(
                "no coordinator group {group} in the cluster"
            ))
            .into()),
            _ => Err(Error::NotLeader { hint: None }.into()),
        }
    }
}

/// Ends a transaction whose `Begin` (with reads) was dropped before its
/// reads finished: nobody will hear of it.
struct EndIfDropped {
    c: Option<Arc<Coordinator>>,
    txn: pact_common::TxnId,
}

impl Drop for EndIfDropped {
    fn drop(&mut self) {
        if let (Some(c), Ok(rt)) = (self.c.take(), tokio::runtime::Handle::try_current()) {
            let txn = self.txn;
            rt.spawn(async move { c.rollback(txn).await });
        }
    }
}

#[tonic::async_trait]
impl Txn for TxnService {
    async fn begin(
        &self,
        r: Request<pb::BeginRequest>,
    ) -> Result<Response<pb::BeginResponse>, Status> {
        let r = r.into_inner();
        let p = r.priority;
        let reads: Vec<Vec<u8>> = r.reads.into_iter().map(|k| k.to_vec()).collect();
        // Refused whole before a transaction exists.
        crate::coordinator::check_reads(&reads)?;
        let c = self.c_for(r.group)?;
        let (txn, priority) = c
            .begin((p != 0).then_some(pact_common::Timestamp(p)))
            .await?;
        let mut resp = pb::BeginResponse {
            txn: Some(convert::pb_txn(txn)),
            priority: priority.0,
            ..Default::default()
        };
        if reads.is_empty() {
            return Ok(Response::new(resp));
        }
        // The client heartbeats only once it has the transaction: renew
        // the lease here while the reads wait for their locks. If this
        // request is dropped (the caller gave up), the guard ends the
        // transaction rather than leave its locks to the lease.
        let mut guard = EndIfDropped {
            c: Some(c.clone()),
            txn,
        };
        let read = c
            .keeping_alive(txn, c.get_many(txn, reads, r.reads_for_update))
            .await;
        guard.c = None;
        match read {
            Ok(values) => resp.values = values.into_iter().map(convert::value).collect(),
            // In the answer, not as an error: the client learns the id
            // and age it needs to start over.
            Err(Error::Aborted(a)) => {
                resp.abort = pact_client::convert::pb_abort_kind(a.kind) as i32;
                resp.abort_reason = a.reason;
            }
            Err(e) => {
                // The client never hears of this transaction: end it now
                // rather than when its lease runs out.
                c.rollback(txn).await;
                return Err(e.into());
            }
        }
        Ok(Response::new(resp))
    }

    async fn keepalive(&self, r: Request<pb::TxnRequest>) -> Result<Response<pb::TxnDone>, Status> {
        let txn = convert::txn_id(r.into_inner().txn)?;
        self.c_for(txn.group)?.keepalive(txn)?;
        Ok(Response::new(pb::TxnDone {}))
    }

    async fn wounded(
        &self,
        r: Request<pb::WoundedRequest>,
    ) -> Result<Response<pb::TxnDone>, Status> {
        let r = r.into_inner();
        let txn = convert::txn_id(r.txn)?;
        self.c_for(txn.group)?.wounded(txn, r.reason)?;
        Ok(Response::new(pb::TxnDone {}))
    }

    async fn get(
        &self,
        r: Request<pb::TxnGetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let r = r.into_inner();
        let txn = convert::txn_id(r.txn)?;
        let v = self
            .c_for(txn.group)?
            .get(txn, r.key.to_vec(), r.for_update)
            .await?;
        Ok(Response::new(convert::value(v)))
    }

    async fn get_many(
        &self,
        r: Request<pb::TxnGetManyRequest>,
    ) -> Result<Response<pb::GetManyResponse>, Status> {
        let r = r.into_inner();
        let txn = convert::txn_id(r.txn)?;
        let keys = r.keys.into_iter().map(|k| k.to_vec()).collect();
        let values = self
            .c_for(txn.group)?
            .get_many(txn, keys, r.for_update)
            .await?;
        Ok(Response::new(pb::GetManyResponse {
            values: values.into_iter().map(convert::value).collect(),
        }))
    }

    async fn scan(
        &self,
        r: Request<pb::TxnScanRequest>,
    ) -> Result<Response<pb::ScanResponse>, Status> {
        let r = r.into_inner();
        let txn = convert::txn_id(r.txn)?;
        if r.limit > pact_common::MAX_SCAN_LIMIT {
            return Err(Error::InvalidInput(format!(
                "scan limit {} is over the maximum {}",
                r.limit,
                pact_common::MAX_SCAN_LIMIT
            ))
            .into());
        }
        for b in [&r.start[..], &r.end[..]] {
            pact_common::validate_bound(b).map_err(|e| Error::InvalidInput(e.to_string()))?;
        }
        let end = if r.end.is_empty() {
            None
        } else {
            Some(r.end.to_vec())
        };
        let (pairs, more) = self
            .c_for(txn.group)?
            .scan(txn, r.start.to_vec(), end, r.limit)
            .await?;
        Ok(Response::new(pb::ScanResponse {
            pairs: pairs
                .into_iter()
                .map(|(k, v)| pb::KeyValue {
                    key: k.into(),
                    value: v.into(),
                })
                .collect(),
            more,
        }))
    }

    async fn write(
        &self,
        r: Request<pb::TxnWriteRequest>,
    ) -> Result<Response<pb::TxnWriteResponse>, Status> {
        let r = r.into_inner();
        let txn = convert::txn_id(r.txn)?;
        if r.ops.is_empty() {
            return Err(Error::InvalidInput("empty write".into()).into());
        }
        validate_ops(&r.ops)?;
        self.c_for(txn.group)?.write(txn, r.ops).await?;
        Ok(Response::new(pb::TxnWriteResponse {}))
    }

    async fn commit(
        &self,
        r: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        let r = r.into_inner();
        let txn = convert::txn_id(r.txn)?;
        validate_ops(&r.ops)?;
        let o = self.c_for(txn.group)?.commit(txn, r.ops).await?;
        Ok(Response::new(convert::outcome(o)))
    }

    async fn rollback(&self, r: Request<pb::TxnRequest>) -> Result<Response<pb::TxnDone>, Status> {
        let txn = convert::txn_id(r.into_inner().txn)?;
        self.c_for(txn.group)?.rollback(txn).await;
        Ok(Response::new(pb::TxnDone {}))
    }

    async fn execute(
        &self,
        r: Request<pb::ExecuteRequest>,
    ) -> Result<Response<pb::ExecuteResponse>, Status> {
        let r = r.into_inner();
        let guards = r
            .guards
            .into_iter()
            .map(convert::guard)
            .collect::<Result<Vec<_>, _>>()?;
        let then = r
            .then
            .into_iter()
            .map(convert::exec_op)
            .collect::<Result<Vec<_>, _>>()?;
        let otherwise = r
            .otherwise
            .into_iter()
            .map(convert::exec_op)
            .collect::<Result<Vec<_>, _>>()?;
        let bytes: usize = then
            .iter()
            .chain(otherwise.iter())
            .map(|o| match o {
                pact_common::Op::Put(k, v) => k.len() + v.len(),
                pact_common::Op::Delete(k) | pact_common::Op::Get(k) => k.len(),
            })
            .sum();
        let ops = guards.len() + then.len() + otherwise.len();
        if bytes > pact_common::MAX_BATCH_BYTES || ops > pact_common::MAX_BATCH_OPS {
            return Err(Error::InvalidInput(format!(
                "transaction of {ops} ops and {bytes} bytes is over the limits ({} ops, {} bytes)",
                pact_common::MAX_BATCH_OPS,
                pact_common::MAX_BATCH_BYTES
            ))
            .into());
        }
        let res = self.c()?.execute(guards, then, otherwise).await?;
        Ok(Response::new(convert::exec_result(res)))
    }

    async fn group_status(
        &self,
        r: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        // `shard_id` names the coordinator group here (0: any).
        let group = r.into_inner().shard_id;
        Ok(Response::new(pact_raft::wire::status_response(
            self.c_for(group)?.replica().status(),
        )))
    }

    async fn txn_status(
        &self,
        r: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        let r = r.into_inner();
        let txn = convert::txn_id(r.txn)?;
        let o = self.c_for(txn.group)?.status(txn, r.resolve).await?;
        Ok(Response::new(convert::outcome(o)))
    }
}

/// Limits and well-formedness of a batch of writes from a client.
fn validate_ops(ops: &[pb::WriteOp]) -> Result<(), Error> {
    pact_common::validate_batch(ops.iter().map(|op| {
        let v = match &op.op {
            Some(pb::write_op::Op::Put(v)) => Some(v.as_ref()),
            _ => None,
        };
        (op.key.as_ref(), v)
    }))
    .map_err(|e| Error::InvalidInput(e.to_string()))?;
    if ops.iter().any(|op| op.op.is_none()) {
        return Err(Error::InvalidInput(
            "write op has neither put nor delete".into(),
        ));
    }
    Ok(())
}
