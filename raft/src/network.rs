//! Raft messages over gRPC (`pact.v1.RaftTransport`).
//!
//! Every node runs one transport service for all its groups; a message names
//! its group and is routed to that group's Raft instance. Payloads are
//! bincode-encoded openraft messages. Outgoing connections are one tonic
//! channel per peer address, shared by all groups (HTTP/2 multiplexes them).
//!
//! A peer that sends bytes that do not decode gets `INVALID_ARGUMENT` and
//! the message is dropped; a message for a group this node does not host
//! gets `NOT_FOUND`. Neither touches any replica's state.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode, RaftNetworkV2};
use pact_proto::raft_transport_client::RaftTransportClient;
use pact_proto::raft_transport_server::{RaftTransport, RaftTransportServer};
use pact_proto::RaftMessage;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::log_store::{decode, encode};
use crate::types::{Raft, Snapshot, SnapshotMeta, TypeConfig, Vote};

/// Largest Raft message accepted or sent: bounds a snapshot sent in one piece.
pub const MAX_RAFT_MESSAGE_BYTES: usize = 256 << 20;

/// Shared pool of channels to peers, keyed by address.
#[derive(Clone, Default)]
pub struct Peers {
    channels: Arc<RwLock<HashMap<String, Channel>>>,
}

impl Peers {
    fn channel(&self, addr: &str) -> Result<Channel, String> {
        if let Ok(map) = self.channels.read() {
            if let Some(c) = map.get(addr) {
                return Ok(c.clone());
            }
        }
        let ep = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("bad peer address {addr}: {e}"))?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        let ch = ep.connect_lazy();
        if let Ok(mut map) = self.channels.write() {
            map.insert(addr.to_string(), ch.clone());
        }
        Ok(ch)
    }
}

/// Creates per-peer clients for one group.
#[derive(Clone)]
pub struct NetworkFactory {
    pub(crate) group: u64,
    pub(crate) me: u64,
    pub(crate) peers: Peers,
    /// Peer addresses from this node's own config. They win over the
    /// addresses recorded in the Raft membership, which are whatever the
    /// bootstrapping node's config said: each node reaches its peers the way
    /// its own config tells it to (a different route, or a proxy).
    pub(crate) addrs: Arc<BTreeMap<u64, String>>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerClient {
        PeerClient {
            group: self.group,
            me: self.me,
            target,
            addr: self.addrs.get(&target).unwrap_or(&node.addr).clone(),
            peers: self.peers.clone(),
        }
    }
}

pub struct PeerClient {
    group: u64,
    me: u64,
    target: u64,
    addr: String,
    peers: Peers,
}

#[derive(Debug)]
enum CallError {
    Unreachable(String),
    Network(String),
}

impl CallError {
    fn rpc(self) -> RPCError<TypeConfig> {
        match self {
            CallError::Unreachable(m) => {
                RPCError::Unreachable(Unreachable::new(&AnyError::error(m)))
            }
            CallError::Network(m) => RPCError::Network(NetworkError::new(&AnyError::error(m))),
        }
    }
    fn streaming(self) -> StreamingError<TypeConfig> {
        match self {
            CallError::Unreachable(m) => {
                StreamingError::Unreachable(Unreachable::new(&AnyError::error(m)))
            }
            CallError::Network(m) => {
                StreamingError::Network(NetworkError::new(&AnyError::error(m)))
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Append,
    Vote,
    PreVote,
    Snapshot,
}

impl PeerClient {
    async fn call<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        kind: Kind,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, CallError> {
        let payload = encode(req).map_err(|e| CallError::Network(e.to_string()))?;
        let ch = self
            .peers
            .channel(&self.addr)
            .map_err(CallError::Unreachable)?;
        let mut client = RaftTransportClient::new(ch)
            .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES);
        let mut request = Request::new(RaftMessage {
            group: self.group,
            from: self.me,
            payload: payload.into(),
        });
        request.set_timeout(ttl);
        let fut = async {
            match kind {
                Kind::Append => client.append_entries(request).await,
                Kind::Vote => client.vote(request).await,
                Kind::PreVote => client.pre_vote(request).await,
                Kind::Snapshot => client.install_snapshot(request).await,
            }
        };
        let resp = match tokio::time::timeout(ttl, fut).await {
            Err(_) => {
                return Err(CallError::Network(format!(
                    "timeout after {ttl:?} to node {}",
                    self.target
                )))
            }
            Ok(Err(s)) if s.code() == tonic::Code::Unavailable => {
                return Err(CallError::Unreachable(format!(
                    "node {} at {}: {}",
                    self.target,
                    self.addr,
                    s.message()
                )))
            }
            Ok(Err(s)) => return Err(CallError::Network(format!("node {}: {}", self.target, s))),
            Ok(Ok(r)) => r.into_inner(),
        };
        decode(&resp.payload)
            .map_err(|e| CallError::Network(format!("bad reply from node {}: {e}", self.target)))
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = crate::types::SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Kind::Append, &rpc, option.hard_ttl())
            .await
            .map_err(CallError::rpc)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Kind::Vote, &rpc, option.hard_ttl())
            .await
            .map_err(CallError::rpc)
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Kind::PreVote, &rpc, option.hard_ttl())
            .await
            .map_err(CallError::rpc)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        _cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let msg = SnapshotMessage {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot.into_inner(),
        };
        self.call(
            Kind::Snapshot,
            &msg,
            option.hard_ttl().max(Duration::from_secs(30)),
        )
        .await
        .map_err(CallError::streaming)
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SnapshotMessage {
    vote: Vote,
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// Routes incoming Raft messages to the groups this node hosts.
#[derive(Clone, Default)]
pub struct Router {
    groups: Arc<RwLock<HashMap<u64, Raft>>>,
}

impl Router {
    pub fn register(&self, group: u64, raft: Raft) {
        if let Ok(mut g) = self.groups.write() {
            g.insert(group, raft);
        }
    }

    pub fn remove(&self, group: u64) {
        if let Ok(mut g) = self.groups.write() {
            g.remove(&group);
        }
    }

    fn get(&self, group: u64) -> Result<Raft, Status> {
        self.groups
            .read()
            .ok()
            .and_then(|g| g.get(&group).cloned())
            .ok_or_else(|| {
                Status::not_found(format!("raft group {group} is not hosted on this node"))
            })
    }

    /// The tonic service to mount on the node's gRPC server.
    pub fn service(&self) -> RaftTransportServer<Router> {
        RaftTransportServer::new(self.clone())
            .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)
    }
}

fn parse<T: serde::de::DeserializeOwned>(m: &RaftMessage) -> Result<T, Status> {
    decode(&m.payload).map_err(|e| {
        Status::invalid_argument(format!(
            "undecodable raft message from node {}: {e}",
            m.from
        ))
    })
}

fn reply<T: serde::Serialize>(group: u64, me: u64, v: &T) -> Result<Response<RaftMessage>, Status> {
    let payload = encode(v).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(RaftMessage {
        group,
        from: me,
        payload: payload.into(),
    }))
}

fn raft_status<E: std::fmt::Display>(e: E) -> Status {
    Status::unavailable(format!("raft: {e}"))
}

#[tonic::async_trait]
impl RaftTransport for Router {
    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let m = request.into_inner();
        let raft = self.get(m.group)?;
        let req: AppendEntriesRequest<TypeConfig> = parse(&m)?;
        let resp = raft.append_entries(req).await.map_err(raft_status)?;
        reply(m.group, *raft.node_id(), &resp)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let m = request.into_inner();
        let raft = self.get(m.group)?;
        let req: VoteRequest<TypeConfig> = parse(&m)?;
        let resp = raft.vote(req).await.map_err(raft_status)?;
        reply(m.group, *raft.node_id(), &resp)
    }

    async fn pre_vote(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let m = request.into_inner();
        let raft = self.get(m.group)?;
        let req: VoteRequest<TypeConfig> = parse(&m)?;
        let resp = raft.pre_vote(req).await.map_err(raft_status)?;
        reply(m.group, *raft.node_id(), &resp)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let m = request.into_inner();
        let raft = self.get(m.group)?;
        let msg: SnapshotMessage = parse(&m)?;
        let snapshot = Snapshot {
            meta: msg.meta,
            snapshot: std::io::Cursor::new(msg.data),
        };
        let resp = raft
            .install_full_snapshot(msg.vote, snapshot)
            .await
            .map_err(raft_status)?;
        reply(m.group, *raft.node_id(), &resp)
    }
}
