//! The `pact.v1.Kv` gRPC service of a participant node.

use std::sync::Arc;

use pact_common::ShardId;
use pact_proto as pb;
use pact_proto::kv_server::{Kv, KvServer};
use tonic::{Request, Response, Status};

use crate::convert;
use crate::node::Node;

/// Largest request or reply on the Kv service: a maximal write batch plus
/// framing. Larger messages are refused by tonic before they are decoded.
pub const MAX_KV_MESSAGE_BYTES: usize = pact_common::MAX_BATCH_BYTES + (1 << 20);

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
        let r = request.into_inner();
        let v = self.node.get(ShardId(r.shard_id), &r.key).await?;
        Ok(Response::new(pb::GetResponse {
            found: v.is_some(),
            value: v.unwrap_or_default().into(),
        }))
    }

    async fn scan(
        &self,
        request: Request<pb::ScanRequest>,
    ) -> Result<Response<pb::ScanResponse>, Status> {
        let r = request.into_inner();
        let end = if r.end.is_empty() {
            None
        } else {
            Some(r.end.as_ref())
        };
        let (pairs, more) = self
            .node
            .scan(ShardId(r.shard_id), &r.start, end, r.limit)
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
        request: Request<pb::WriteRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let r = request.into_inner();
        let ops = convert::write_ops(r.ops)?;
        let index = self.node.write(ShardId(r.shard_id), ops).await?;
        Ok(Response::new(pb::WriteResponse { index }))
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let r = request.into_inner();
        let s = self.node.status(ShardId(r.shard_id))?;
        Ok(Response::new(convert::status_response(s)))
    }
}
