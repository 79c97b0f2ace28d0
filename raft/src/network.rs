//! Raft messages over gRPC (`pact.v1.RaftTransport`).
//!
//! Every node runs one transport service for all its groups; a message names
//! its group and is routed to that group's Raft instance. Payloads are
//! openraft messages in the storage encoding (`codec`, with its version
//! byte, so a peer running another format is told which). Outgoing connections are one tonic
//! channel per peer address, shared by all groups (HTTP/2 multiplexes them).
//! A snapshot travels as a session of numbered `InstallSnapshot` chunks,
//! each with its own deadline and retries, then a last message with its
//! meta; the receiver spools the chunks to a file (see `snapshot`).
//!
//! A peer that sends bytes that do not decode gets `INVALID_ARGUMENT` and
//! the message is dropped; a message for a group this node does not host
//! gets `NOT_FOUND`. Neither touches any replica's state.
//!
//! A replica removed from its group while its node was down (the drop
//! could not reach it) is started again with the node, and, hearing no
//! leader, campaigns. The group's leader answers its (pre-)vote requests
//! with [`REMOVED_AT`]: the index of the committed membership that left it
//! out, past the sender's last entry. The sender's node is told through
//! [`Removals`], and drops the replica for good (see `Removals`). A
//! replica that campaigns for nothing (a learner, or one behind its
//! rejoin gate) sends the same question itself once it has heard no
//! leader for a while (`Replica::ask_if_removed`).
//!
//! Every decoded message is checked before it reaches openraft (see
//! [`check_sender`]): the sender must be another member of the group, the
//! request must name that same sender as its candidate or leader, and its
//! term must be one a member could have reached. The service is served on
//! the node's peer port only, never the client port. With TLS on, only a
//! node's certificate (one naming a node of the config, see
//! [`crate::server::PeerAuth`]) gets there at all, and a message's sender
//! must be that node ([`authenticated`]); without TLS the sender id is what
//! the message claims, but junk and stray messages still cannot move a
//! group's term or leader.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::storage::RaftLogStorage;
use openraft::{AnyError, BasicNode, RaftNetworkV2};
use pact_proto::raft_transport_client::RaftTransportClient;
use pact_proto::raft_transport_server::{RaftTransport, RaftTransportServer};
use pact_proto::RaftMessage;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Response, Status};

use crate::codec::{decode, encode};
use crate::log_store::LogStore;
use crate::rejoin::{Gate, LeaderId, Refused};
use crate::server::PeerNode;
use crate::snapshot::{receive_name, Inbox, Outbound, SnapshotData, Spool, CHUNK_BYTES};
use crate::types::{byte_string, LogId, Raft, Snapshot, SnapshotMeta, TypeConfig, Vote};

/// The metadata key of a leader's answer to a vote request from a replica
/// its group removed: the log index of the committed membership that left
/// the sender out (the status is `FAILED_PRECONDITION`).
pub const REMOVED_AT: &str = "pact-removed-at";

/// Metadata on a snapshot chunk's RESOURCE_EXHAUSTED refusal: the
/// follower has no room for the snapshot (its disk would fall below the
/// reserve). The leader then sends that follower no snapshot for
/// [`crate::snapshot::ROOM_BACKOFF`].
pub const NO_ROOM: &str = "pact-no-room";

/// A group's leader told this node that the group removed this node's
/// replica, by a committed membership at log index `at` (beyond the
/// replica's last entry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removal {
    pub group: u64,
    pub at: u64,
    /// The leader, and its peer address.
    pub told_by: u64,
    pub addr: String,
    /// Which start of the replica asked ([`crate::Replica::instance`]): a
    /// replica hosted afresh since is not the one that was told.
    pub instance: u64,
}

/// What a node does when told its replica of a group was removed: the
/// server drops the replica (as `Admin.DropReplica` would have, had the
/// node been up), once [`crate::Replica::confirm_removed`] agrees.
pub type RemovalHook = Arc<dyn Fn(Removal) + Send + Sync>;

/// Where [`Removal`]s go: the hook the server sets, each group's once
/// until the hook [`Removals::retry`]s it (a replica campaigns every
/// election timeout, and is told each time).
#[derive(Clone, Default)]
pub struct Removals {
    hook: Arc<std::sync::OnceLock<RemovalHook>>,
    told: Arc<std::sync::Mutex<BTreeSet<u64>>>,
}

impl Removals {
    /// Set what to do when told (once; later calls are ignored). A group
    /// told before is passed on at its next telling.
    pub fn set_hook(&self, hook: RemovalHook) {
        let _ = self.hook.set(hook);
        if let Ok(mut t) = self.told.lock() {
            t.clear();
        }
    }

    /// Let the next telling of `group` reach the hook again (the drop
    /// failed, or the replica turned out not to be removed).
    pub fn retry(&self, group: u64) {
        if let Ok(mut t) = self.told.lock() {
            t.remove(&group);
        }
    }

    /// Pass on a leader's word that the group removed this node's
    /// replica (at most once per group until [`Removals::retry`]).
    pub(crate) fn tell(&self, r: Removal) {
        let first = self
            .told
            .lock()
            .map(|mut t| t.insert(r.group))
            .unwrap_or(false);
        if !first {
            return;
        }
        match self.hook.get() {
            Some(hook) => hook(r),
            None => tracing::warn!(
                group = r.group,
                at = r.at,
                told_by = r.told_by,
                "this node's replica was removed from its group while the node was away; \
                 this server cannot drop it by itself: run the same `txn admin replica remove` \
                 again"
            ),
        }
    }
}

/// Largest command one log entry may carry: `Replica::propose` refuses a
/// larger one before anything is replicated. The applications stay far
/// below it (a shard's prepare or one-phase commit carries at most 8 MiB of
/// keys and values in at most 10,000 operations, a few bytes of framing
/// each); the bound is what lets followers cap appends.
pub const MAX_COMMAND_BYTES: usize = 16 << 20;

/// Largest AppendEntries accepted: `MAX_APPEND_BYTES` (8 MiB) of entries,
/// or more when the first entry alone is larger (an append always carries
/// at least one), so one entry of the largest command plus the rest of a
/// full batch, with room for the entries' and message's framing.
pub const MAX_APPEND_MESSAGE_BYTES: usize = 32 << 20;

/// Largest Raft message accepted or sent at all. Snapshots travel in
/// chunks of about [`crate::snapshot::CHUNK_BYTES`] (one pair more at most,
/// and a pair is at most a command's size), so no message needs more than
/// an append does, whatever the size of the snapshot.
pub const MAX_RAFT_MESSAGE_BYTES: usize = MAX_APPEND_MESSAGE_BYTES;

/// Base deadline of one snapshot chunk (its bytes add time, see
/// [`deadline`]); a chunk that misses it is resent, up to
/// [`CHUNK_ATTEMPTS`] times, before the transfer is given up and
/// openraft starts a new one.
const CHUNK_TTL: Duration = Duration::from_secs(10);

/// Attempts at one snapshot chunk before the transfer is abandoned.
const CHUNK_ATTEMPTS: u32 = 3;

/// Base deadline of a snapshot's last message, which the follower answers
/// once it installed the snapshot: the install's time grows with the
/// snapshot's size, so the snapshot's total bytes are added (see
/// [`deadline`]).
const INSTALL_TTL: Duration = Duration::from_secs(60);

/// Largest Vote or PreVote accepted: the request is a vote and a log id (a
/// few dozen bytes), so anything bigger is junk and is refused from its
/// length prefix, before it is buffered.
pub const MAX_VOTE_MESSAGE_BYTES: usize = 64 << 10;

/// How far above the receiver's own term a request's term may be. A term
/// is spent only by an election that passed Pre-Vote (a majority had not
/// heard from a leader for an election timeout), so terms grow by about one
/// per election timeout at most: at the default 400 ms, a whole day of
/// back-to-back failed elections is about 216,000 terms. A forged term
/// near 2^63, accepted, would become the group's term and leave its
/// members one overflow from never campaigning again. A receiver that
/// started empty measures from its rejoin floor (the highest vote its peers
/// reported), so it is not stranded at term 0.
pub const MAX_TERM_JUMP: u64 = 1_000_000;

/// The slowest rate at which a healthy peer is assumed to receive and
/// persist a message: a request's deadline grows with its size at this
/// rate, so a large but bounded append (or snapshot) is not timed out, and
/// then resent unchanged, forever.
const MIN_BYTES_PER_SEC: u64 = 2 << 20;

/// When a transfer paced at `rate` bytes per second, which started at
/// `started` and has sent `sent` bytes, may send more (None: no pace).
fn paced(started: tokio::time::Instant, sent: usize, rate: u64) -> Option<tokio::time::Instant> {
    if rate == 0 {
        return None;
    }
    // A day at most: far past any real transfer, and no Instant overflow.
    Some(started + time_for(sent, rate).min(Duration::from_secs(86_400)))
}

/// `base` plus the time `bytes` take at [`MIN_BYTES_PER_SEC`].
pub(crate) fn deadline(base: Duration, bytes: usize) -> Duration {
    base + time_for(bytes, MIN_BYTES_PER_SEC)
}

/// How long `bytes` take at `rate` (> 0) bytes per second, in whole
/// milliseconds (saturating).
fn time_for(bytes: usize, rate: u64) -> Duration {
    let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
    Duration::from_millis(bytes.saturating_mul(1000) / rate)
}

/// Shared pool of channels to peers, keyed by address.
#[derive(Clone, Default)]
pub struct Peers {
    channels: Arc<RwLock<HashMap<String, Channel>>>,
    /// With TLS, peers are dialled over TLS presenting this node's
    /// certificate (the receiver refuses anything else).
    tls: Option<ClientTlsConfig>,
}

impl Peers {
    /// A pool whose connections use `tls` (plain HTTP/2 if `None`).
    pub fn new(tls: Option<ClientTlsConfig>) -> Peers {
        Peers {
            channels: Arc::default(),
            tls,
        }
    }

    fn channel(&self, addr: &str) -> Result<Channel, String> {
        if let Ok(map) = self.channels.read() {
            if let Some(c) = map.get(addr) {
                return Ok(c.clone());
            }
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| format!("bad peer address {addr}: {e}"))?;
        if let Some(tls) = &self.tls {
            ep = ep
                .tls_config(tls.clone())
                .map_err(|e| format!("TLS setup for peer {addr}: {e}"))?;
        }
        let ep = ep
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
    /// Nodes added since the replica started (the metadata group's
    /// members), consulted before the address in the Raft membership.
    pub(crate) directory: crate::replica::Directory,
    /// Shortest deadline of an append (see [`PeerClient::min_append_ttl`]).
    pub(crate) min_append_ttl: Duration,
    /// Snapshots being streamed from this replica (shared with its state
    /// machine, which keeps the log meanwhile).
    pub(crate) outbound: Arc<Outbound>,
    /// Pace of a snapshot transfer (`[raft] snapshot_kib_per_sec`); 0: none.
    pub(crate) snapshot_bytes_per_sec: u64,
    /// Told when a leader answers that the group removed this replica.
    pub(crate) removals: Removals,
    /// [`crate::Replica::instance`] of the replica this is for.
    pub(crate) instance: u64,
    /// The group's log tail, for its purge point.
    pub(crate) tail: Arc<std::sync::Mutex<crate::tail::Tail>>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerClient {
        PeerClient {
            group: self.group,
            me: self.me,
            target,
            addr: match self.addrs.get(&target) {
                Some(a) => a.clone(),
                None => self.directory.peer_addr_or(target, &node.addr),
            },
            peers: self.peers.clone(),
            min_append_ttl: self.min_append_ttl,
            outbound: self.outbound.clone(),
            snapshot_bytes_per_sec: self.snapshot_bytes_per_sec,
            removals: self.removals.clone(),
            instance: self.instance,
            tail: Some(self.tail.clone()),
            below_purge: Vec::new(),
        }
    }
}

pub struct PeerClient {
    group: u64,
    me: u64,
    target: u64,
    addr: String,
    peers: Peers,
    /// openraft gives an append the heartbeat interval (100 ms) as its
    /// deadline. On a busy 2-core node a healthy follower's answer can
    /// queue longer than that; the append was then cancelled, its stream
    /// reset and the entries sent again, which added 100+ ms to the tail of
    /// every write waiting on it (seen as 80 ms p99 at half load). Half the
    /// minimum election timeout still finds a dead follower well before an
    /// election would, and the lease does not depend on it (it counts from
    /// the send time of acknowledged appends).
    min_append_ttl: Duration,
    outbound: Arc<Outbound>,
    snapshot_bytes_per_sec: u64,
    removals: Removals,
    instance: u64,
    /// The group's log tail (None for one-off probes).
    tail: Option<Arc<std::sync::Mutex<crate::tail::Tail>>>,
    /// When the last empty appends below the purge point were sent.
    below_purge: Vec<std::time::Instant>,
}

/// How many empty appends below the purge point, within
/// [`STUCK_WITHIN`], mark a replication stream that cannot go on (its
/// heartbeats every `heartbeat_ms`, at least 30 ms apart by the config's
/// check, come nowhere near).
const STUCK_AFTER: usize = 5;
const STUCK_WITHIN: Duration = Duration::from_millis(100);

#[derive(Debug)]
enum CallError {
    Unreachable(String),
    Network(String),
    /// The follower has no room for a snapshot ([`NO_ROOM`]).
    NoRoom(String),
    /// The group's leader says the group removed this replica by a
    /// committed membership at this index.
    Removed(u64, String),
}

impl CallError {
    /// What went wrong, for a caller that only reports it.
    fn into_message(self) -> String {
        match self {
            CallError::Unreachable(m)
            | CallError::Network(m)
            | CallError::NoRoom(m)
            | CallError::Removed(_, m) => m,
        }
    }

    fn rpc(self) -> RPCError<TypeConfig> {
        match self {
            CallError::Unreachable(m) | CallError::NoRoom(m) => {
                RPCError::Unreachable(Unreachable::new(&AnyError::error(m)))
            }
            CallError::Network(m) | CallError::Removed(_, m) => {
                RPCError::Network(NetworkError::new(&AnyError::error(m)))
            }
        }
    }
    fn streaming(self) -> StreamingError<TypeConfig> {
        match self {
            // Unreachable makes openraft back off before it tries again.
            CallError::Unreachable(m) | CallError::NoRoom(m) => {
                StreamingError::Unreachable(Unreachable::new(&AnyError::error(m)))
            }
            CallError::Network(m) | CallError::Removed(_, m) => {
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
    TransferLeader,
}

impl PeerClient {
    /// A client for one-off questions to `target` outside any replica's
    /// Raft instance: it sends no append nor snapshot, and a leader's word
    /// that the group removed this node is not acted on through it.
    fn probe(peers: &Peers, group: u64, me: u64, target: u64, addr: &str) -> PeerClient {
        PeerClient {
            group,
            me,
            target,
            addr: addr.to_string(),
            peers: peers.clone(),
            min_append_ttl: Duration::ZERO,
            outbound: Arc::default(),
            snapshot_bytes_per_sec: 0,
            removals: Removals::default(),
            instance: 0,
            tail: None,
            below_purge: Vec::new(),
        }
    }

    /// Whether `rpc` is one of a replication stream's empty appends that
    /// follow an index whose successors were purged under it (see
    /// `LogStore::limited_get_log_entries`): openraft sends such a
    /// "heartbeat" every 10 ms and never starts over, while the entries it
    /// waits for are gone. Failing them makes the leader start over, and it
    /// then sends a snapshot. Only a burst counts: openraft's own heartbeats
    /// to a follower that needs a snapshot look the same, but come every
    /// `heartbeat_ms`, and must not fail (they carry the leader's lease).
    fn stuck_below_purge(&mut self, rpc: &AppendEntriesRequest<TypeConfig>) -> bool {
        let Some(tail) = &self.tail else {
            return false;
        };
        let next = rpc.prev_log_id.as_ref().map_or(0, |l| l.index + 1);
        let purged = tail.lock().map_or(0, |t| t.purged);
        if !rpc.entries.is_empty() || next > purged {
            self.below_purge.clear();
            return false;
        }
        let now = std::time::Instant::now();
        self.below_purge
            .retain(|t| now.duration_since(*t) < STUCK_WITHIN);
        self.below_purge.push(now);
        if self.below_purge.len() >= STUCK_AFTER {
            self.below_purge.clear();
            return true;
        }
        false
    }

    /// A failed vote request, passing on a leader's word that the group
    /// removed this replica.
    fn noted(&self, e: CallError) -> RPCError<TypeConfig> {
        if let CallError::Removed(at, _) = &e {
            self.removals.tell(Removal {
                group: self.group,
                at: *at,
                told_by: self.target,
                addr: self.addr.clone(),
                instance: self.instance,
            });
        }
        e.rpc()
    }

    async fn call<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        kind: Kind,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, CallError> {
        self.call_with_meta(kind, req, ttl).await.map(|(r, _)| r)
    }

    /// [`PeerClient::call`], with the answer's gRPC metadata.
    async fn call_with_meta<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        kind: Kind,
        req: &Req,
        ttl: Duration,
    ) -> Result<(Resp, tonic::metadata::MetadataMap), CallError> {
        let payload = encode(req).map_err(|e| CallError::Network(e.to_string()))?;
        // openraft hands every append the heartbeat interval as its
        // deadline, whatever it carries.
        let ttl = deadline(ttl, payload.len());
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
                Kind::TransferLeader => client.transfer_leader(request).await,
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
            Ok(Err(s)) => {
                let m = format!("node {}: {}", self.target, s);
                if s.code() == tonic::Code::ResourceExhausted && s.metadata().get(NO_ROOM).is_some()
                {
                    return Err(CallError::NoRoom(m));
                }
                return Err(match removed_at(&s) {
                    Some(at) => CallError::Removed(at, m),
                    None => CallError::Network(m),
                });
            }
            Ok(Ok(r)) => r.into_parts(),
        };
        let (meta, resp, _) = resp;
        decode(
            &resp.payload,
            format_args!("reply from node {}", self.target),
        )
        .map(|r| (r, meta))
        .map_err(|e| CallError::Network(format!("bad {e}")))
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = crate::types::SnapshotData;

    /// Appends one at a time, as openraft's default does, except that an
    /// entry-less append (the commit index alone) waits up to
    /// [`COMMIT_HOLD`] for the stream's next request and, if that one
    /// follows the same log id, goes out inside it (see [`held_appends`]).
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> openraft::base::BoxFuture<
        's,
        Result<
            futures::stream::BoxStream<
                's,
                Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>,
            >,
            RPCError<TypeConfig>,
        >,
    >
    where
        S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>>
            + openraft::OptionalSend
            + Unpin
            + 'static,
    {
        Box::pin(async move { Ok(held_appends(self, input, option, COMMIT_HOLD)) })
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        if self.stuck_below_purge(&rpc) {
            tracing::info!(
                group = self.group,
                target = self.target,
                "replication stream waits for purged entries: starting it over"
            );
            return Err(CallError::Network(format!(
                "entries after {:?} were purged under the replication stream to node {}",
                rpc.prev_log_id.as_ref().map(|l| l.index),
                self.target
            ))
            .rpc());
        }
        self.call(
            Kind::Append,
            &rpc,
            option.hard_ttl().max(self.min_append_ttl),
        )
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
            .map_err(|e| self.noted(e))
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Kind::PreVote, &rpc, option.hard_ttl())
            .await
            .map_err(|e| self.noted(e))
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Kind::TransferLeader, &req, option.hard_ttl())
            .await
            .map_err(CallError::rpc)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let SnapshotData::View(view) = snapshot.snapshot else {
            return Err(CallError::Network(
                "only a snapshot of this node's own state can be sent".into(),
            )
            .streaming());
        };
        let mut cancel = std::pin::pin!(cancel);
        // A follower that had no room a moment ago has none now: sending
        // again would move every chunk up to where its disk runs short,
        // over and over. Wait here (openraft would otherwise ask again
        // within a second, building a snapshot each time), without holding
        // the view, then let openraft start over with a fresh one.
        if let Some(left) = self
            .outbound
            .room_wait(self.target, std::time::Instant::now())
        {
            drop(view);
            tokio::select! {
                _ = tokio::time::sleep(left) => {}
                closed = &mut cancel => return Err(StreamingError::Closed(closed)),
            }
            return Err(CallError::NoRoom(format!(
                "node {} had no room for a snapshot of group {}; waited {} s",
                self.target,
                self.group,
                left.as_secs()
            ))
            .streaming());
        }
        let r = tokio::select! {
            r = self.stream_snapshot(vote, snapshot.meta, view) => r,
            closed = &mut cancel => return Err(StreamingError::Closed(closed)),
        };
        if let Err(CallError::NoRoom(m)) = &r {
            tracing::warn!(
                group = self.group,
                target = self.target,
                "snapshot refused for want of room: {m}; not sending that node one for {} s",
                crate::snapshot::ROOM_BACKOFF.as_secs()
            );
            self.outbound
                .refused_for_room(self.target, std::time::Instant::now());
        }
        let r = r.map_err(CallError::streaming)?;
        if let Some(m) = crate::metrics::process() {
            m.snapshots_sent
                .with_label_values(&[&crate::metrics::group_label(self.group)])
                .inc();
        }
        Ok(r)
    }
}

impl PeerClient {
    /// Send a snapshot as numbered chunks of one session, each with its
    /// own deadline and retries, then its meta; the reply to the last
    /// message comes once the follower installed it (or refused it).
    async fn stream_snapshot(
        &self,
        vote: Vote,
        meta: SnapshotMeta,
        view: crate::snapshot::View,
    ) -> Result<SnapshotResponse<TypeConfig>, CallError> {
        let session = new_session();
        let read = |after: Option<Vec<u8>>| {
            let view = view.clone();
            crate::store::blocking(move || view.chunk(after.as_deref(), CHUNK_BYTES))
        };
        let storage = |e: std::io::Error| CallError::Network(format!("reading the snapshot: {e}"));
        let mut next = read(None).await.map_err(storage)?;
        let mut seq = 0u64;
        let mut total = 0usize;
        let started = tokio::time::Instant::now();
        // Counted for the hold (see `snapshot::Outbound`) from the first
        // chunk the follower stored: attempts at a dead or refusing peer,
        // retried by openraft for as long as it stays down, must not keep
        // the leader from compacting its log.
        let mut sending = None;
        while let Some((frame, last)) = next.take() {
            let msg = SnapshotChunk {
                vote,
                session,
                seq,
                body: ChunkBody::Data(frame),
            };
            // The next chunk is read while this one travels: two in memory.
            let (sent, read_next) = tokio::join!(self.send_chunk(&msg), read(Some(last)));
            match sent? {
                ChunkReply::Next(n) if n == seq + 1 => {
                    sending.get_or_insert_with(|| self.outbound.start());
                }
                ChunkReply::Next(n) => {
                    return Err(CallError::Network(format!(
                        "node {} expects snapshot chunk {n} after chunk {seq}",
                        self.target
                    )))
                }
                // Refused outright (a newer leader): nothing more to send.
                ChunkReply::Done(r) => return Ok(r),
            }
            if let ChunkBody::Data(frame) = &msg.body {
                total += frame.len();
                if let Some(m) = crate::metrics::process() {
                    m.snapshot_bytes_sent
                        .with_label_values(&[&crate::metrics::group_label(self.group)])
                        .inc_by(frame.len() as u64);
                }
            }
            next = read_next.map_err(storage)?;
            seq += 1;
            // Paced by the bytes sent so far, so time lost to a slow chunk
            // is made up by the next ones instead of adding up.
            if let Some(at) = paced(started, total, self.snapshot_bytes_per_sec) {
                tokio::time::sleep_until(at).await;
            }
        }
        let end = SnapshotChunk {
            vote,
            session,
            seq,
            body: ChunkBody::End(meta),
        };
        match self
            .call(Kind::Snapshot, &end, deadline(INSTALL_TTL, total))
            .await?
        {
            ChunkReply::Done(r) => Ok(r),
            ChunkReply::Next(n) => Err(CallError::Network(format!(
                "node {} answered the end of a snapshot with chunk {n}",
                self.target
            ))),
        }
    }

    /// One data chunk, resent on a failure (the receiver acknowledges a
    /// chunk it already stored without storing it twice).
    async fn send_chunk(&self, msg: &SnapshotChunk) -> Result<ChunkReply, CallError> {
        let mut attempt = 1;
        loop {
            match self.call(Kind::Snapshot, msg, CHUNK_TTL).await {
                Ok(r) => return Ok(r),
                // No room now is no room in 200 ms either.
                Err(e @ CallError::NoRoom(_)) => return Err(e),
                Err(e) if attempt >= CHUNK_ATTEMPTS => return Err(e),
                Err(e) => {
                    tracing::debug!(
                        group = self.group,
                        target = self.target,
                        seq = msg.seq,
                        attempt,
                        error = ?e,
                        "snapshot chunk failed; resending"
                    );
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

/// How long an entry-less append, which carries only the leader's commit
/// index, waits for the replication stream's next request. openraft sends
/// one to each follower after every commit that no request carried, and
/// then holds the next entries until the follower answers it: at one
/// client, two of an update's four appends, and a round trip in front of
/// the next update's entries. Held this long, the commit index rides in
/// the next append instead whenever one comes. A follower learns of a
/// commit up to this much later when its group goes idle; the leader's
/// commit, its answer to the client and its lease do not wait for it (a
/// lease counts from the send time openraft recorded, so a held append
/// only shortens it).
pub(crate) const COMMIT_HOLD: Duration = Duration::from_millis(2);

/// What [`held_appends`] sends through: a peer's single-append call.
pub(crate) trait SendAppend: Send {
    fn send_append(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> impl Future<Output = Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>>> + Send;

    /// `n` held appends went out inside a later one.
    fn merged(&self, _n: usize) {}
}

impl SendAppend for PeerClient {
    fn send_append(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> impl Future<Output = Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>>> + Send
    {
        self.append_entries(rpc, option)
    }

    fn merged(&self, n: usize) {
        if let Some(m) = crate::metrics::process() {
            m.appends_merged
                .with_label_values(&[&crate::metrics::group_label(self.group)])
                .inc_by(n as u64);
        }
    }
}

type AppendResult = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>;

struct Held<'s, N, S> {
    net: &'s mut N,
    input: S,
    option: RPCOption,
    hold: Duration,
    /// Answers due to openraft, in the order of its requests.
    ready: std::collections::VecDeque<AppendResult>,
    /// A request taken from the input while holding that could not be merged.
    carried: Option<AppendEntriesRequest<TypeConfig>>,
    input_done: bool,
    stopped: bool,
}

/// openraft's replication stream, sent one append at a time (each waits
/// for the answer to the one before, as openraft's sequential default
/// does), with entry-less appends held for up to `hold`: a request taken
/// meanwhile that follows the same log id under the same vote replaces
/// the held one, whose answer is then implied by its own (its follower
/// holds that log id). Answers come out one per request, in order; a
/// conflict, a higher vote or a failed call answers for every request
/// merged into it and ends the stream, as openraft expects.
fn held_appends<'s, N, S>(
    net: &'s mut N,
    input: S,
    option: RPCOption,
    hold: Duration,
) -> futures::stream::BoxStream<'s, AppendResult>
where
    N: SendAppend,
    S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 's,
{
    use futures::StreamExt;
    let state = Held {
        net,
        input,
        option,
        hold,
        ready: Default::default(),
        carried: None,
        input_done: false,
        stopped: false,
    };
    Box::pin(futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(r) = st.ready.pop_front() {
                return Some((r, st));
            }
            if st.stopped {
                return None;
            }
            let mut req = match st.carried.take() {
                Some(r) => r,
                None if st.input_done => return None,
                None => st.input.next().await?,
            };
            // Log ids answered by the request that replaced them.
            let mut merged = Vec::new();
            if req.entries.is_empty() && !st.hold.is_zero() && !st.input_done {
                let until = tokio::time::Instant::now() + st.hold;
                loop {
                    // Dropping `next()` at the deadline loses nothing: the
                    // input keeps its own progress.
                    match tokio::time::timeout_at(until, st.input.next()).await {
                        Ok(Some(n)) if n.vote == req.vote && n.prev_log_id == req.prev_log_id => {
                            merged.push(req.prev_log_id);
                            req = n;
                            if !req.entries.is_empty() {
                                break;
                            }
                        }
                        Ok(Some(n)) => {
                            st.carried = Some(n);
                            break;
                        }
                        Ok(None) => {
                            st.input_done = true;
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
            if !merged.is_empty() {
                st.net.merged(merged.len());
            }
            let prev = req.prev_log_id;
            let last = req.entries.last().map(|e| e.log_id).or(prev);
            match st.net.send_append(req, st.option.clone()).await {
                Ok(resp) => {
                    let partial =
                        matches!(&resp, AppendEntriesResponse::PartialSuccess(m) if *m != last);
                    match resp.into_stream_result(prev, last) {
                        Ok(matching) => {
                            st.ready.extend(merged.into_iter().map(|m| Ok(Ok(m))));
                            st.ready.push_back(Ok(Ok(matching)));
                            // A partial answer ends the stream, as in openraft's own.
                            st.stopped = partial;
                        }
                        Err(e) => {
                            st.ready.push_back(Ok(Err(e)));
                            st.stopped = true;
                        }
                    }
                }
                Err(e) => {
                    st.ready.push_back(Err(e));
                    st.stopped = true;
                }
            }
        }
    }))
}

/// A snapshot transfer's id: unique enough that a receiver never takes a
/// chunk of one transfer for another's (it also checks the sender).
fn new_session() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ COUNTER.fetch_add(1, Ordering::Relaxed).rotate_right(17)
}

/// One message of a snapshot transfer (`InstallSnapshot`): chunk `seq` of
/// session `session`.
#[derive(serde::Serialize, serde::Deserialize)]
struct SnapshotChunk {
    vote: Vote,
    session: u64,
    seq: u64,
    body: ChunkBody,
}

#[derive(serde::Serialize, serde::Deserialize)]
enum ChunkBody {
    /// A frame of pairs (see `snapshot`).
    Data(#[serde(with = "byte_string")] Vec<u8>),
    /// The end: install what was sent as the snapshot with this meta.
    End(SnapshotMeta),
}

#[derive(serde::Serialize, serde::Deserialize)]
enum ChunkReply {
    /// Stored; the chunk expected next.
    Next(u64),
    /// Installed, or refused by Raft (the reply carries the vote).
    Done(SnapshotResponse<TypeConfig>),
}

/// A transfer being received.
struct Incoming {
    session: u64,
    from: u64,
    next: u64,
    spool: Spool,
    /// When its last chunk was stored (or it started).
    last: std::time::Instant,
}

/// A transfer that stored no chunk for this long is abandoned (its sender
/// died or gave up): it is dropped, and its file with it, rather than
/// kept until the group's next transfer. A sender paced at the slowest
/// rate the config allows sends a chunk every 16 s.
const ABANDONED_AFTER: Duration = Duration::from_secs(600);

/// How often a node looks for abandoned transfers.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Take out of `slots` the transfers that stored nothing for
/// [`ABANDONED_AFTER`] before `now` (a slot whose lock is held is busy
/// storing a chunk: not abandoned). Dropping them removes their files.
fn take_abandoned(
    slots: &[(u64, Arc<tokio::sync::Mutex<Option<Incoming>>>)],
    now: std::time::Instant,
) -> Vec<(u64, Incoming)> {
    let mut out = Vec::new();
    for (group, slot) in slots {
        let Ok(mut slot) = slot.try_lock() else {
            continue;
        };
        if slot
            .as_ref()
            .is_some_and(|i| now.saturating_duration_since(i.last) >= ABANDONED_AFTER)
        {
            if let Some(i) = slot.take() {
                out.push((*group, i));
            }
        }
    }
    out
}

/// Every [`SWEEP_EVERY`], drop the abandoned transfers of the groups in
/// `groups`, until the router is gone.
async fn sweep_abandoned(groups: std::sync::Weak<RwLock<HashMap<u64, Hosted>>>) {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let Some(groups) = groups.upgrade() else {
            return;
        };
        let slots: Vec<(u64, Arc<tokio::sync::Mutex<Option<Incoming>>>)> = groups
            .read()
            .map(|g| g.iter().map(|(id, h)| (*id, h.incoming.clone())).collect())
            .unwrap_or_default();
        drop(groups);
        let gone = take_abandoned(&slots, std::time::Instant::now());
        for (group, i) in &gone {
            tracing::info!(
                group,
                from = i.from,
                session = i.session,
                bytes = i.spool.bytes(),
                "snapshot transfer abandoned by its sender; its file is removed"
            );
        }
        if !gone.is_empty() {
            // Removing the files is file-system work.
            let _ = tokio::task::spawn_blocking(move || drop(gone)).await;
        }
    }
}

/// Ask peer `target` for its vote and last log id in `group`, with a
/// Pre-Vote request that can grant nothing (term 0, empty log) and that the
/// receiver answers without changing any state.
///
/// The answer also names the voters of the group as the peer knows them
/// ([`VOTERS_HEADER`]), if it says (a node of an older version does not,
/// and a header that does not parse counts as not saying).
pub(crate) async fn ask_state(
    peers: &Peers,
    group: u64,
    me: u64,
    target: u64,
    addr: &str,
) -> Result<(VoteResponse<TypeConfig>, Option<KnownVoters>), String> {
    let req = VoteRequest::<TypeConfig>::new(Vote::new(0, me), None);
    let (resp, meta) = PeerClient::probe(peers, group, me, target, addr)
        .call_with_meta(Kind::PreVote, &req, Duration::from_secs(1))
        .await
        .map_err(CallError::into_message)?;
    let known = meta
        .get(VOTERS_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(KnownVoters::parse);
    Ok((resp, known))
}

/// The gRPC metadata key under which a replica's answer to a Pre-Vote
/// names the voters of its group's membership as it knows it (both halves
/// of a joint one) and the log id of that membership. A replica on an
/// empty store asks those voters too: its rejoin floor must include the
/// vote of every current voter, and the metadata table it otherwise goes
/// by may lag a membership change.
pub(crate) const VOTERS_HEADER: &str = "pact-voters";

/// At most this many voters in one [`VOTERS_HEADER`] (a group has a
/// handful; a longer list is a peer speaking garbage).
const MAX_HEADER_VOTERS: usize = 64;

/// A peer's membership, as its Pre-Vote answer names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KnownVoters {
    /// The membership's log id as (term, leader node, index), ordered as
    /// openraft orders log ids (two leaders may share a term); (0, 0, 0)
    /// for none.
    pub(crate) at: (u64, u64, u64),
    pub(crate) voters: BTreeSet<u64>,
}

impl KnownVoters {
    /// "term:node:index;id,id,..." (no ids: a replica that knows no
    /// membership).
    fn encode(&self) -> String {
        let ids: Vec<String> = self.voters.iter().map(u64::to_string).collect();
        let (term, node, index) = self.at;
        format!("{term}:{node}:{index};{}", ids.join(","))
    }

    /// None for anything that is not exactly [`KnownVoters::encode`]'s
    /// form (decimal digits only, no empty or repeated id, at most
    /// [`MAX_HEADER_VOTERS`] ids).
    pub(crate) fn parse(v: &str) -> Option<KnownVoters> {
        let number = |t: &str| -> Option<u64> {
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            t.parse().ok()
        };
        let (at, ids) = v.split_once(';')?;
        let mut at = at.split(':');
        let (term, node, index) = (at.next()?, at.next()?, at.next()?);
        if at.next().is_some() {
            return None;
        }
        let at = (number(term)?, number(node)?, number(index)?);
        let mut voters = BTreeSet::new();
        if !ids.is_empty() {
            for id in ids.split(',') {
                if !voters.insert(number(id)?) || voters.len() > MAX_HEADER_VOTERS {
                    return None;
                }
            }
        }
        Some(KnownVoters { at, voters })
    }

    /// This replica's own.
    fn of(raft: &Raft) -> KnownVoters {
        let m = raft.metrics();
        let m = m.borrow_watched();
        let c = &m.membership_config;
        KnownVoters {
            at: c.log_id().as_ref().map_or((0, 0, 0), |l| {
                (l.leader_id.term, l.leader_id.node_id, l.index)
            }),
            voters: c.membership().voter_ids().collect(),
        }
    }
}

/// A Pre-Vote answer, with this replica's membership in its metadata.
fn vote_reply(
    group: u64,
    raft: &Raft,
    resp: &VoteResponse<TypeConfig>,
) -> Result<Response<RaftMessage>, Status> {
    let mut r = reply(group, *raft.node_id(), resp)?;
    if let Ok(v) = KnownVoters::of(raft).encode().parse() {
        r.metadata_mut().insert(VOTERS_HEADER, v);
    }
    Ok(r)
}

/// Ask `target` (at `addr`), the leader that said the group removed this
/// node's replica, whether it still says so of a replica whose log ends
/// at `last`: with a Pre-Vote request that can grant nothing (term 0) and
/// changes no state. The index it names, or why not.
pub(crate) async fn ask_removed(
    peers: &Peers,
    group: u64,
    me: u64,
    target: u64,
    addr: &str,
    last: Option<crate::types::LogId>,
) -> Result<u64, String> {
    let req = VoteRequest::<TypeConfig>::new(Vote::new(0, me), last);
    match PeerClient::probe(peers, group, me, target, addr)
        .call::<_, VoteResponse<TypeConfig>>(Kind::PreVote, &req, Duration::from_secs(1))
        .await
    {
        Err(CallError::Removed(at, _)) => Ok(at),
        Err(e) => Err(e.into_message()),
        Ok(_) => Err(format!("node {target} no longer says so")),
    }
}

/// A hosted group: its Raft instance, its gate, and its log (read directly
/// to answer peers while the gate is closed).
#[derive(Clone)]
struct Hosted {
    raft: Raft,
    gate: Arc<Gate>,
    log: LogStore,
    /// The group's replicas in this node's config: who may speak for the
    /// group before the replica has learned its membership (it started
    /// empty), in addition to that membership once known.
    configured: Arc<BTreeSet<u64>>,
    /// Where received snapshots are written.
    inbox: Arc<Inbox>,
    /// The snapshot transfer under way, if any (one per group: a new one
    /// replaces it). A tokio lock: it is held while a chunk is written.
    incoming: Arc<tokio::sync::Mutex<Option<Incoming>>>,
}

/// Routes incoming Raft messages to the groups this node hosts, through
/// each group's [`Gate`] (see `rejoin`).
#[derive(Clone, Default)]
pub struct Router {
    groups: Arc<RwLock<HashMap<u64, Hosted>>>,
    /// Whether the sweep of abandoned snapshot transfers runs.
    sweeping: Arc<std::sync::atomic::AtomicBool>,
}

impl Router {
    pub(crate) fn register(
        &self,
        group: u64,
        raft: Raft,
        gate: Arc<Gate>,
        log: LogStore,
        configured: BTreeSet<u64>,
        inbox: Inbox,
    ) {
        if !self
            .sweeping
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(sweep_abandoned(Arc::downgrade(&self.groups)));
                }
                Err(_) => self
                    .sweeping
                    .store(false, std::sync::atomic::Ordering::SeqCst),
            }
        }
        if let Ok(mut g) = self.groups.write() {
            g.insert(
                group,
                Hosted {
                    raft,
                    gate,
                    log,
                    configured: Arc::new(configured),
                    inbox: Arc::new(inbox),
                    incoming: Arc::default(),
                },
            );
        }
    }

    pub fn remove(&self, group: u64) {
        if let Ok(mut g) = self.groups.write() {
            g.remove(&group);
        }
    }

    /// The Raft of every hosted group, by group id (sorted).
    pub(crate) fn rafts(&self) -> Vec<(u64, Raft)> {
        let mut v: Vec<(u64, Raft)> = self
            .groups
            .read()
            .map(|g| g.iter().map(|(id, h)| (*id, h.raft.clone())).collect())
            .unwrap_or_default();
        v.sort_by_key(|(id, _)| *id);
        v
    }

    pub(crate) fn raft(&self, group: u64) -> Option<Raft> {
        self.groups
            .read()
            .ok()
            .and_then(|g| g.get(&group).map(|h| h.raft.clone()))
    }

    fn get(&self, group: u64) -> Result<Hosted, Status> {
        let h = self
            .groups
            .read()
            .ok()
            .and_then(|g| g.get(&group).cloned())
            .ok_or_else(|| {
                Status::not_found(format!("raft group {group} is not hosted on this node"))
            })?;
        // A replica stopped on a storage failure (or shut down) answers
        // nothing; refusing here, rather than handing each message to a
        // dead core, also spares the log one openraft error per message.
        let stopped = {
            let m = h.raft.metrics();
            let m = m.borrow_watched();
            m.state == openraft::ServerState::Shutdown || m.running_state.is_err()
        };
        if stopped {
            return Err(Status::unavailable(format!(
                "the replica of raft group {group} on this node has stopped"
            )));
        }
        Ok(h)
    }

    /// The tonic service to mount on the node's gRPC server.
    pub fn service(&self) -> TransportService {
        let server = |max| {
            RaftTransportServer::new(self.clone())
                .max_decoding_message_size(max)
                .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)
        };
        TransportService {
            votes: server(MAX_VOTE_MESSAGE_BYTES),
            appends: server(MAX_APPEND_MESSAGE_BYTES),
            bulk: server(MAX_RAFT_MESSAGE_BYTES),
        }
    }
}

/// `pact.v1.RaftTransport` with a size cap per method: tonic sets one per
/// service, so requests are routed by path to one of two copies of the
/// service, each with its own cap.
#[derive(Clone)]
pub struct TransportService {
    votes: RaftTransportServer<Router>,
    appends: RaftTransportServer<Router>,
    bulk: RaftTransportServer<Router>,
}

const VOTE_PATH: &str = "/pact.v1.RaftTransport/Vote";
const PRE_VOTE_PATH: &str = "/pact.v1.RaftTransport/PreVote";
const APPEND_PATH: &str = "/pact.v1.RaftTransport/AppendEntries";

impl<B> tonic::codegen::Service<tonic::codegen::http::Request<B>> for TransportService
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        // The inner services are always ready.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: tonic::codegen::http::Request<B>) -> Self::Future {
        match req.uri().path() {
            VOTE_PATH | PRE_VOTE_PATH => self.votes.call(req),
            APPEND_PATH => self.appends.call(req),
            _ => self.bulk.call(req),
        }
    }
}

impl tonic::server::NamedService for TransportService {
    const NAME: &'static str = <RaftTransportServer<Router> as tonic::server::NamedService>::NAME;
}

/// Refuse, with [`REMOVED_AT`], a vote request from a replica the group
/// removed: answered by the leader only (it alone knows the newest
/// membership: a node being added back is in it before it hears from the
/// leader), when both its newest and its committed membership leave the
/// sender out and the sender's log stops before that committed
/// membership. Then the sender cannot take part in the group again
/// without being added anew, whatever it holds.
fn removed_sender(
    h: &Hosted,
    m: &RaftMessage,
    req: &VoteRequest<TypeConfig>,
) -> Result<(), Status> {
    let at = {
        let metrics = h.raft.metrics();
        let metrics = metrics.borrow_watched();
        // A leader cut off from its quorum may have been replaced, and
        // its membership with it: only one whose quorum answered within
        // the shortest election timeout (no other leader can have been
        // elected since) speaks for the group.
        let lease = Duration::from_millis(h.raft.config().election_timeout_min);
        // A leader that is its group's only voter is its own quorum (and
        // hears from no one to refresh the time).
        let alone = metrics
            .membership_config
            .membership()
            .voter_ids()
            .eq(std::iter::once(metrics.id));
        let fresh = alone
            || metrics
                .last_quorum_acked
                .as_ref()
                .is_some_and(|t| openraft::Instant::elapsed(&**t) < lease);
        if metrics.state != openraft::ServerState::Leader
            || metrics.current_leader != Some(metrics.id)
            || !fresh
            || m.from == metrics.id
        {
            return Ok(());
        }
        let newest = metrics.membership_config.membership();
        let committed = &metrics.committed_membership_config;
        if newest.nodes().any(|(id, _)| *id == m.from)
            || committed.membership().nodes().any(|(id, _)| *id == m.from)
        {
            return Ok(());
        }
        let Some(at) = committed.log_id().as_ref().map(|l| l.index) else {
            return Ok(());
        };
        at
    };
    let theirs = req.last_log_id.as_ref().map(|l| l.index);
    if theirs.is_some_and(|i| i >= at) {
        return Ok(());
    }
    tracing::info!(
        group = m.group,
        from = m.from,
        at,
        "vote request from a replica this group removed: telling it so"
    );
    let mut s = Status::failed_precondition(format!(
        "node {} is not a member of raft group {}: the group removed it by the membership \
         committed at index {at}",
        m.from, m.group
    ));
    s.metadata_mut()
        .insert(REMOVED_AT, tonic::metadata::MetadataValue::from(at));
    Err(s)
}

/// The index in a leader's [`removed_sender`] answer, read from its code
/// and metadata only (never from its text).
fn removed_at(s: &Status) -> Option<u64> {
    if s.code() != tonic::Code::FailedPrecondition {
        return None;
    }
    s.metadata().get(REMOVED_AT)?.to_str().ok()?.parse().ok()
}

/// Whether a decoded message may reach the group's Raft instance: `from`
/// (the transport's sender) must be a member other than this node, the
/// request's own candidate or leader (`claimed`) must be that sender, and
/// its term must be within [`MAX_TERM_JUMP`] of what this replica knows.
fn check_sender(h: &Hosted, m: &RaftMessage, claimed: &LeaderId) -> Result<(), Status> {
    let (me, known_term, members) = {
        let metrics = h.raft.metrics();
        let metrics = metrics.borrow_watched();
        let membership = metrics.membership_config.membership();
        // The metadata table's voters of the group, for a replica that
        // does not know its membership yet, or is catching up after a
        // lost disk (the membership it has applied may be an old one
        // that does not name its leader; see `replica::probe_plan`).
        let vouched = if membership.nodes().next().is_none() || h.gate.floor().is_some() {
            h.gate.vouched()
        } else {
            BTreeSet::new()
        };
        let members: BTreeSet<u64> = membership
            .nodes()
            .map(|(id, _)| *id)
            .chain(h.configured.iter().copied())
            .chain(vouched)
            .collect();
        let term = metrics
            .current_term
            .max(metrics.vote.leader_id.term)
            .max(h.gate.floor().map_or(0, |f| f.term));
        (metrics.id, term, members)
    };
    let refuse = |why: String| {
        tracing::debug!(
            group = m.group,
            from = m.from,
            "raft message refused: {why}"
        );
        why
    };
    if m.from == me {
        return Err(Status::invalid_argument(refuse(format!(
            "raft message for group {} claims to come from node {me}, the receiver itself",
            m.group
        ))));
    }
    if !members.contains(&m.from) {
        return Err(Status::permission_denied(refuse(format!(
            "node {} is not a member of raft group {} (members: {members:?})",
            m.from, m.group
        ))));
    }
    if claimed.node_id != m.from {
        return Err(Status::invalid_argument(refuse(format!(
            "raft message from node {} names node {} as its candidate or leader",
            m.from, claimed.node_id
        ))));
    }
    if claimed.term > known_term.saturating_add(MAX_TERM_JUMP) {
        return Err(Status::invalid_argument(refuse(format!(
            "raft message from node {} has term {}, implausibly far above this replica's \
             term {known_term} of group {} (more than {MAX_TERM_JUMP} ahead)",
            m.from, claimed.term, m.group
        ))));
    }
    Ok(())
}

/// The message, if its sender (`from`) is the node whose certificate sent
/// it: with TLS, one node cannot speak for another, whatever group or
/// payload. Checked first, before the message is routed or decoded.
/// Without TLS no certificate names the peer ([`PeerNode`] absent), and
/// the claim is checked only by [`check_sender`].
fn authenticated(request: Request<RaftMessage>) -> Result<RaftMessage, Status> {
    let peer = request.extensions().get::<PeerNode>().copied();
    let m = request.into_inner();
    match peer {
        Some(PeerNode(id)) if id.0 != m.from => {
            tracing::debug!(
                group = m.group,
                from = m.from,
                certificate = %id,
                "raft message refused: sender is not the certificate's node"
            );
            Err(Status::permission_denied(format!(
                "raft message claims to come from node {} but the certificate is node {id}'s",
                m.from
            )))
        }
        _ => Ok(m),
    }
}

fn parse<T: serde::de::DeserializeOwned>(m: &RaftMessage) -> Result<T, Status> {
    decode(
        &m.payload,
        format_args!("raft message from node {} for group {}", m.from, m.group),
    )
    .map_err(|e| Status::invalid_argument(format!("undecodable {e}")))
}

fn reply<T: serde::Serialize>(group: u64, me: u64, v: &T) -> Result<Response<RaftMessage>, Status> {
    let payload = encode(v).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(RaftMessage {
        group,
        from: me,
        payload: payload.into(),
    }))
}

fn refused(r: Refused) -> Status {
    Status::unavailable(r.to_string())
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
        let m = authenticated(request)?;
        let h = self.get(m.group)?;
        let req: AppendEntriesRequest<TypeConfig> = parse(&m)?;
        check_sender(&h, &m, &req.vote.leader_id)?;
        let ids = req.entries.iter().map(|e| &e.log_id);
        if let Some(why) = append_shape_refusal(&req.vote, req.prev_log_id.as_ref(), ids) {
            return Err(Status::invalid_argument(format!(
                "append entries from node {} for group {}: {why}",
                m.from, m.group
            )));
        }
        let Hosted { raft, gate, .. } = h;
        let commit = req.leader_commit.as_ref().map_or(0, |l| l.index);
        gate.admit_leader(&req.vote, commit).map_err(refused)?;
        let resp = raft.append_entries(req).await.map_err(raft_status)?;
        reply(m.group, *raft.node_id(), &resp)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let m = authenticated(request)?;
        let h = self.get(m.group)?;
        let req: VoteRequest<TypeConfig> = parse(&m)?;
        removed_sender(&h, &m, &req)?;
        check_sender(&h, &m, &req.vote.leader_id)?;
        let Hosted { raft, gate, .. } = h;
        gate.admit_vote().map_err(refused)?;
        let resp = raft.vote(req).await.map_err(raft_status)?;
        reply(m.group, *raft.node_id(), &resp)
    }

    async fn pre_vote(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let m = authenticated(request)?;
        let h = self.get(m.group)?;
        let req: VoteRequest<TypeConfig> = parse(&m)?;
        removed_sender(&h, &m, &req)?;
        check_sender(&h, &m, &req.vote.leader_id)?;
        let Hosted {
            raft, gate, log, ..
        } = h;
        if gate.admit_vote().is_err() {
            // Behind the gate it grants nothing, but still tells what it
            // has: a peer that started empty decides from these answers.
            let vote = raft.metrics().borrow_watched().vote;
            let last = log
                .clone()
                .get_log_state()
                .await
                .map_err(|e| Status::internal(format!("storage: {e}")))?
                .last_log_id;
            let resp = VoteResponse::<TypeConfig>::new(vote, last, false);
            return vote_reply(m.group, &raft, &resp);
        }
        let resp = raft.pre_vote(req).await.map_err(raft_status)?;
        vote_reply(m.group, &raft, &resp)
    }

    async fn transfer_leader(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let m = authenticated(request)?;
        let h = self.get(m.group)?;
        let req: TransferLeaderRequest<TypeConfig> = parse(&m)?;
        check_sender(&h, &m, &req.from_leader().leader_id)?;
        let Hosted { raft, gate, .. } = h;
        // A replica still rejoining (empty store) neither campaigns nor
        // helps another to: it takes no part in elections yet.
        gate.admit_vote().map_err(refused)?;
        let resp = raft
            .handle_transfer_leader(req)
            .await
            .map_err(raft_status)?;
        reply(m.group, *raft.node_id(), &resp)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let m = authenticated(request)?;
        let h = self.get(m.group)?;
        let msg: SnapshotChunk = parse(&m)?;
        check_sender(&h, &m, &msg.vote.leader_id)?;
        let me = *h.raft.node_id();
        match msg.body {
            ChunkBody::Data(frame) => {
                h.gate.check_leader(&msg.vote).map_err(refused)?;
                let next = receive_chunk(&h, m.group, m.from, msg.session, msg.seq, frame).await?;
                reply(m.group, me, &ChunkReply::Next(next))
            }
            ChunkBody::End(meta) => {
                check_snapshot_meta(&h, &msg.vote, &meta)?;
                let last = meta.last_log_id.as_ref().map_or(0, |l| l.index);
                h.gate.admit_leader(&msg.vote, last).map_err(refused)?;
                let spooled = {
                    let mut incoming = h.incoming.lock().await;
                    match incoming.take() {
                        Some(i) if i.session == msg.session && i.from == m.from => {
                            if i.next != msg.seq {
                                return Err(Status::failed_precondition(format!(
                                    "snapshot session {:x} ends at chunk {} but chunk {} \
                                     is next",
                                    msg.session, msg.seq, i.next
                                )));
                            }
                            let spool = i.spool;
                            crate::store::blocking(move || spool.finish())
                                .await
                                .map_err(|e| Status::internal(format!("snapshot file: {e}")))?
                        }
                        other => {
                            *incoming = other;
                            // An empty state machine sends no data chunk.
                            if msg.seq != 0 {
                                return Err(unknown_session(msg.session));
                            }
                            let inbox = h.inbox.as_ref().clone();
                            let name = receive_name(m.group, msg.session);
                            crate::store::blocking(move || inbox.create(&name)?.finish())
                                .await
                                .map_err(|e| Status::internal(format!("snapshot file: {e}")))?
                        }
                    }
                };
                let snapshot = Snapshot {
                    meta,
                    snapshot: SnapshotData::Spooled(spooled),
                };
                let resp = h
                    .raft
                    .install_full_snapshot(msg.vote, snapshot)
                    .await
                    .map_err(raft_status)?;
                reply(m.group, me, &ChunkReply::Done(resp))
            }
        }
    }
}

/// A snapshot's metadata that no leader following the protocol sends,
/// and that openraft asserts on (a panic in the group's Raft core): a
/// last log id beyond the sending leader's vote, or one above this
/// replica's committed log id at an index not above it. Refused as
/// garbage instead.
fn check_snapshot_meta(h: &Hosted, vote: &Vote, meta: &SnapshotMeta) -> Result<(), Status> {
    let committed = h.raft.metrics().borrow_watched().local_committed;
    match snapshot_meta_refusal(vote, meta.last_log_id.as_ref(), committed.as_ref()) {
        Some(why) => Err(Status::invalid_argument(why)),
        None => Ok(()),
    }
}

/// Why entries sent after `prev` by the leader of `vote` cannot be a
/// leader's log: not one index after another from `prev`, a leader
/// going back, or one later than the sender's own vote. openraft only
/// asserts these in debug builds (a panic of the group's core); a release
/// build would store a log with holes.
fn append_shape_refusal<'a>(
    vote: &Vote,
    prev: Option<&LogId>,
    ids: impl Iterator<Item = &'a LogId>,
) -> Option<String> {
    let key = |l: &LogId| (l.leader_id.term, l.leader_id.node_id);
    let vid = (vote.leader_id.term, vote.leader_id.node_id);
    let mut last = prev;
    for id in ids {
        let want = match last {
            None => 0,
            Some(l) => match l.index.checked_add(1) {
                Some(w) => w,
                None => return Some(format!("entry {id} after the last index there is")),
            },
        };
        if id.index != want {
            return Some(format!("entry {id} where index {want} was due"));
        }
        if let Some(l) = last.filter(|l| key(l) > key(id)) {
            return Some(format!("entry {id} goes back from {l}"));
        }
        if key(id) > vid {
            return Some(format!("entry {id} is later than the sender's vote {vote}"));
        }
        last = Some(id);
    }
    None
}

/// Why a snapshot up to `last`, sent under `vote`, cannot be installed by
/// a replica that committed up to `committed` (see
/// [`check_snapshot_meta`]); None if it can.
fn snapshot_meta_refusal(
    vote: &Vote,
    last: Option<&LogId>,
    committed: Option<&LogId>,
) -> Option<String> {
    let last = last?;
    let (lid, vid) = (&last.leader_id, &vote.leader_id);
    if (lid.term, lid.node_id) > (vid.term, vid.node_id) {
        return Some(format!(
            "snapshot up to {last} cannot come from the leader of vote {vote}"
        ));
    }
    match committed {
        Some(c) if last > c && last.index <= c.index => Some(format!(
            "snapshot up to {last} contradicts the committed log up to {c}"
        )),
        _ => None,
    }
}

fn unknown_session(session: u64) -> Status {
    Status::failed_precondition(format!(
        "snapshot session {session:x} is not under way here (restarted or replaced); \
         start the transfer again"
    ))
}

/// What to do with chunk `seq` of `session` from `from`, given the
/// transfer under way (`here`: its session, sender and next chunk).
#[derive(Debug, PartialEq, Eq)]
enum ChunkAction {
    /// The chunk expected next: store it.
    Store,
    /// The chunk before the expected one, resent because its answer was
    /// lost: acknowledge it again (the next chunk expected) without storing.
    AckAgain(u64),
    /// Any other chunk of this transfer (the next one expected).
    OutOfOrder(u64),
    /// Chunk 0 of another transfer: it replaces the one under way.
    Start,
    /// A later chunk of a transfer that is not (or no longer) under way:
    /// refused, leaving the current one alone.
    Unknown,
}

fn chunk_action(here: Option<(u64, u64, u64)>, session: u64, from: u64, seq: u64) -> ChunkAction {
    match here {
        Some((s, f, next)) if s == session && f == from => {
            if next == seq {
                ChunkAction::Store
            } else if next == seq.saturating_add(1) {
                ChunkAction::AckAgain(next)
            } else {
                ChunkAction::OutOfOrder(next)
            }
        }
        _ if seq == 0 => ChunkAction::Start,
        _ => ChunkAction::Unknown,
    }
}

/// Store chunk `seq` of `session` from `from`; the chunk expected next.
/// Chunk 0 starts a new transfer (dropping any other); the chunk before
/// the expected one is a resend whose answer was lost, acknowledged again
/// without being stored twice; anything else is out of order.
async fn receive_chunk(
    h: &Hosted,
    group: u64,
    from: u64,
    session: u64,
    seq: u64,
    frame: Vec<u8>,
) -> Result<u64, Status> {
    let mut incoming = h.incoming.lock().await;
    let here = incoming.as_ref().map(|i| (i.session, i.from, i.next));
    let mut current = match chunk_action(here, session, from, seq) {
        ChunkAction::Store => incoming.take().ok_or_else(|| unknown_session(session))?,
        ChunkAction::AckAgain(next) => return Ok(next),
        ChunkAction::OutOfOrder(next) => {
            return Err(Status::failed_precondition(format!(
                "snapshot session {session:x}: chunk {seq} is out of order, chunk {next} is next"
            )))
        }
        ChunkAction::Start => {
            // Dropping the other transfer's spool removes its file.
            drop(incoming.take());
            let inbox = h.inbox.as_ref().clone();
            let name = receive_name(group, session);
            let spool = crate::store::blocking(move || inbox.create(&name))
                .await
                .map_err(|e| Status::internal(format!("snapshot file: {e}")))?;
            Incoming {
                session,
                from,
                next: 0,
                spool,
                last: std::time::Instant::now(),
            }
        }
        ChunkAction::Unknown => return Err(unknown_session(session)),
    };
    let len = frame.len() as u64;
    let (current, stored) = tokio::task::spawn_blocking(move || {
        let r = current.spool.append(&frame);
        (current, r)
    })
    .await
    .map_err(|e| Status::internal(format!("snapshot chunk task: {e}")))?;
    match stored {
        Ok(()) => {}
        // The transfer is dropped (and its file with it): a bad chunk is
        // the sender's, a full disk is ours; either way it starts over.
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            return Err(Status::invalid_argument(e.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::StorageFull => {
            tracing::warn!(group, from, session, "snapshot refused: {e}");
            let mut st = Status::resource_exhausted(e.to_string());
            st.metadata_mut()
                .insert(NO_ROOM, tonic::metadata::MetadataValue::from_static("1"));
            return Err(st);
        }
        Err(e) => return Err(Status::internal(format!("snapshot file: {e}"))),
    }
    let mut current = current;
    current.next += 1;
    current.last = std::time::Instant::now();
    let next = current.next;
    tracing::trace!(
        group,
        session,
        seq,
        bytes = current.spool.bytes(),
        "snapshot chunk stored"
    );
    *incoming = Some(current);
    if let Some(m) = crate::metrics::process() {
        m.snapshot_bytes_received
            .with_label_values(&[&crate::metrics::group_label(group)])
            .inc_by(len);
    }
    Ok(next)
}

#[cfg(test)]
mod abandoned_tests {
    use super::*;

    /// A transfer that stored nothing for ABANDONED_AFTER is taken out,
    /// and dropping it removes its file; a younger one, or one whose
    /// slot is locked (a chunk being stored), stays.
    #[tokio::test]
    async fn an_abandoned_transfer_is_dropped_with_its_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t0 = std::time::Instant::now();
        let slot = |name: &str, last| {
            let spool = Spool::create(dir.path(), name).expect("spool");
            Arc::new(tokio::sync::Mutex::new(Some(Incoming {
                session: 1,
                from: 2,
                next: 0,
                spool,
                last,
            })))
        };
        let old = slot("old", t0);
        let young = slot("young", t0 + ABANDONED_AFTER / 2);
        let busy = slot("busy", t0);
        let slots = vec![(1, old.clone()), (2, young.clone()), (3, busy.clone())];
        assert!(take_abandoned(&slots, t0 + ABANDONED_AFTER / 2).is_empty());
        let held = busy.lock().await;
        let gone = take_abandoned(&slots, t0 + ABANDONED_AFTER);
        assert_eq!(gone.iter().map(|(g, _)| *g).collect::<Vec<_>>(), [1]);
        assert!(old.lock().await.is_none());
        assert!(young.lock().await.is_some());
        drop(held);
        assert!(busy.lock().await.is_some());
        assert!(dir.path().join("old").exists());
        drop(gone);
        assert!(!dir.path().join("old").exists());
        assert!(dir.path().join("young").exists());
    }
}

#[cfg(test)]
mod voters_header_tests {
    use super::KnownVoters;

    /// A Pre-Vote answer's membership header reads back as written; what
    /// is not exactly that form (or names too many voters) is taken as no
    /// word at all, never as a membership.
    #[test]
    fn the_voters_header_reads_back_and_garbage_says_nothing() {
        let k = KnownVoters {
            at: (7, 2, 120),
            voters: [3, 1, 4].into_iter().collect(),
        };
        assert_eq!(k.encode(), "7:2:120;1,3,4");
        assert_eq!(KnownVoters::parse(&k.encode()), Some(k));
        let none = KnownVoters::parse("0:0:0;").expect("no membership yet");
        assert!(none.voters.is_empty());
        for bad in [
            "",
            "7:2:120",
            "7:120;1",
            "7:2:1:3;1",
            "x:2:1;2",
            "7:2:1;2,y",
            "7:2:1;-2",
            "7:2:1;+2",
            "7:2:1;,2,",
            "7:2:1;2,2",
            "7::1;2",
        ] {
            assert_eq!(KnownVoters::parse(bad), None, "{bad:?}");
        }
        let many: Vec<String> = (0..100).map(|i| i.to_string()).collect();
        assert_eq!(
            KnownVoters::parse(&format!("1:1:1;{}", many.join(","))),
            None
        );
    }
}

#[cfg(test)]
mod auth_tests {
    use super::*;
    use pact_common::NodeId;

    fn request(from: u64, peer: Option<u64>) -> Request<RaftMessage> {
        let mut r = Request::new(RaftMessage {
            group: 1,
            from,
            payload: Vec::new().into(),
        });
        if let Some(p) = peer {
            r.extensions_mut().insert(PeerNode(NodeId(p)));
        }
        r
    }

    #[test]
    fn a_snapshot_beyond_its_leaders_vote_or_against_the_committed_log_is_refused() {
        let id = |term, node_id, index| LogId::new(LeaderId { term, node_id }, index);
        let vote = Vote::new_committed(3, 1);
        // Fine: from this leader or an earlier one, past what is committed.
        assert_eq!(snapshot_meta_refusal(&vote, None, None), None);
        assert_eq!(
            snapshot_meta_refusal(&vote, Some(&id(3, 1, 50)), Some(&id(2, 2, 40))),
            None
        );
        assert_eq!(
            snapshot_meta_refusal(&vote, Some(&id(2, 2, 30)), Some(&id(2, 2, 40))),
            None
        );
        // A log id of a later term than the sender's vote.
        assert!(snapshot_meta_refusal(&vote, Some(&id(4, 1, 50)), None).is_some());
        // Above the committed log id at an index not above it.
        assert!(snapshot_meta_refusal(&vote, Some(&id(3, 1, 40)), Some(&id(2, 2, 40))).is_some());
    }

    #[test]
    fn appended_entries_must_follow_their_prev_one_index_at_a_time() {
        let id = |term, node_id, index| LogId::new(LeaderId { term, node_id }, index);
        let vote = Vote::new_committed(3, 1);
        let ok = |prev: Option<LogId>, ids: &[LogId]| {
            append_shape_refusal(&vote, prev.as_ref(), ids.iter()).is_none()
        };
        assert!(ok(None, &[]));
        assert!(ok(Some(id(2, 2, 9)), &[]));
        assert!(ok(None, &[id(1, 1, 0), id(1, 1, 1), id(3, 1, 2)]));
        assert!(ok(Some(id(2, 2, 9)), &[id(2, 2, 10), id(3, 1, 11)]));
        // A hole, a repeat, a step back in index.
        assert!(!ok(Some(id(2, 2, 9)), &[id(2, 2, 11)]));
        assert!(!ok(Some(id(2, 2, 9)), &[id(2, 2, 10), id(2, 2, 10)]));
        assert!(!ok(None, &[id(1, 1, 1)]));
        // A leader going back, or one past the sender's vote.
        assert!(!ok(Some(id(3, 1, 9)), &[id(2, 2, 10)]));
        assert!(!ok(Some(id(2, 2, 9)), &[id(4, 1, 10)]));
        // No overflow at the top index.
        assert!(!ok(Some(id(2, 2, u64::MAX - 1)), &[id(2, 2, 0)]));
    }

    #[test]
    fn a_paced_transfer_sends_no_faster_than_its_rate() {
        let t0 = tokio::time::Instant::now();
        assert_eq!(paced(t0, 4 << 20, 0), None);
        // 4 MiB at 1 MiB/s: not before 4 s from the start.
        assert_eq!(
            paced(t0, 4 << 20, 1 << 20),
            Some(t0 + Duration::from_secs(4))
        );
        assert_eq!(paced(t0, 0, 1 << 20), Some(t0));
        // No overflow at the extremes.
        assert!(paced(t0, usize::MAX, 1).is_some());
    }

    #[test]
    fn snapshot_chunks_are_stored_once_in_order_and_a_new_transfer_replaces_the_old() {
        use ChunkAction::*;
        // Nothing under way: chunk 0 starts a transfer, later ones are refused.
        assert_eq!(chunk_action(None, 9, 2, 0), Start);
        assert_eq!(chunk_action(None, 9, 2, 3), Unknown);
        // Session 9 from node 2 expects chunk 4.
        let here = Some((9, 2, 4));
        assert_eq!(chunk_action(here, 9, 2, 4), Store);
        assert_eq!(chunk_action(here, 9, 2, 3), AckAgain(4));
        assert_eq!(chunk_action(here, 9, 2, 5), OutOfOrder(4));
        assert_eq!(chunk_action(here, 9, 2, 0), OutOfOrder(4));
        // Another transfer (or the same id from another node) replaces it
        // only from its chunk 0; its stray later chunks leave it alone.
        assert_eq!(chunk_action(here, 10, 2, 0), Start);
        assert_eq!(chunk_action(here, 9, 3, 0), Start);
        assert_eq!(chunk_action(here, 10, 2, 1), Unknown);
        // Chunk 0 acknowledged, its answer lost, sent again: not restarted.
        assert_eq!(chunk_action(Some((9, 2, 1)), 9, 2, 0), AckAgain(1));
    }

    #[test]
    fn a_node_speaks_only_for_itself() {
        assert_eq!(authenticated(request(2, Some(2))).unwrap().from, 2);
        let e = authenticated(request(3, Some(2))).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        // Without TLS the claim stands (check_sender still applies).
        assert_eq!(authenticated(request(3, None)).unwrap().from, 3);
    }

    #[test]
    fn a_removal_reaches_the_hook_once_per_group_until_retried() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let r = Removals::default();
        let tell = |group| {
            r.tell(Removal {
                group,
                at: 9,
                told_by: 2,
                addr: "127.0.0.1:1".into(),
                instance: 1,
            })
        };
        // Told before the server set its hook: passed on at the next word.
        tell(7);
        let s = seen.clone();
        r.set_hook(Arc::new(move |x: Removal| s.lock().unwrap().push(x.group)));
        tell(7);
        tell(7);
        tell(8);
        assert_eq!(*seen.lock().unwrap(), vec![7, 8]);
        r.retry(7);
        tell(7);
        tell(8);
        assert_eq!(*seen.lock().unwrap(), vec![7, 8, 7]);
    }

    #[test]
    fn a_leaders_removal_answer_is_read_from_its_code_and_metadata_only() {
        let with = |mut s: Status, v: &'static str| {
            s.metadata_mut()
                .insert(REMOVED_AT, tonic::metadata::MetadataValue::from_static(v));
            s
        };
        assert_eq!(
            removed_at(&with(Status::failed_precondition("x"), "41")),
            Some(41)
        );
        // Another code, no metadata (a snapshot session's refusal), or a
        // value that is no index: not a removal, whatever the text says.
        assert_eq!(removed_at(&with(Status::unavailable("x"), "41")), None);
        assert_eq!(
            removed_at(&Status::failed_precondition(
                "the group removed it by the membership committed at index 41"
            )),
            None
        );
        assert_eq!(
            removed_at(&with(Status::failed_precondition("x"), "forty")),
            None
        );
        assert_eq!(removed_at(&unknown_session(5)), None);
    }

    #[test]
    fn only_a_burst_of_empty_appends_below_the_purge_point_is_stuck() {
        use openraft::impls::leader_id_adv::LeaderId;
        let lid = |index| {
            Some(openraft::LogId::new(
                LeaderId {
                    term: 1,
                    node_id: 1,
                },
                index,
            ))
        };
        let req = |prev: u64, entries: usize| AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new(1, 1),
            prev_log_id: lid(prev),
            leader_commit: None,
            entries: (0..entries)
                .map(|i| openraft::Entry {
                    log_id: lid(prev + 1 + i as u64).unwrap(),
                    payload: openraft::EntryPayload::Blank,
                })
                .collect(),
        };
        let tail = Arc::new(std::sync::Mutex::new(crate::tail::Tail::default()));
        tail.lock().unwrap().purged = 84;
        let mut c = PeerClient::probe(&Peers::new(None), 1, 1, 2, "127.0.0.1:1");
        // A probe has no tail: never stuck.
        assert!(!(0..10).any(|_| c.stuck_below_purge(&req(82, 0))));
        c.tail = Some(tail);
        // From the purge point on, entries can be read: never stuck.
        assert!(!(0..10).any(|_| c.stuck_below_purge(&req(84, 0))));
        // Below it: the fifth empty append of a burst is.
        let stuck: Vec<bool> = (0..5).map(|_| c.stuck_below_purge(&req(82, 0))).collect();
        assert_eq!(stuck, [false, false, false, false, true]);
        // An append that carries entries starts the count again.
        for _ in 0..4 {
            assert!(!c.stuck_below_purge(&req(82, 0)));
        }
        assert!(!c.stuck_below_purge(&req(90, 2)));
        assert!(!c.stuck_below_purge(&req(82, 0)));
        // Spaced like heartbeats, never.
        let mut c2 = PeerClient::probe(&Peers::new(None), 1, 1, 2, "127.0.0.1:1");
        c2.tail = c.tail.clone();
        for _ in 0..6 {
            assert!(!c2.stuck_below_purge(&req(82, 0)));
            std::thread::sleep(STUCK_WITHIN / 3);
        }
    }
}

#[cfg(test)]
mod held_append_tests {
    use super::*;
    use futures::StreamExt;
    use openraft::raft::StreamAppendError;

    fn id(index: u64) -> LogId {
        LogId::new(
            LeaderId {
                term: 1,
                node_id: 1,
            },
            index,
        )
    }

    /// An append after `prev` with entries at `entries`, carrying `commit`.
    fn append(prev: u64, entries: &[u64], commit: u64) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: Some(id(prev)),
            leader_commit: Some(id(commit)),
            entries: entries
                .iter()
                .map(|&i| crate::types::Entry {
                    log_id: id(i),
                    payload: openraft::EntryPayload::Blank,
                })
                .collect(),
        }
    }

    /// What reached a follower: (prev index, entries, commit index) each.
    type Got = Arc<std::sync::Mutex<Vec<(u64, usize, u64)>>>;

    /// A follower that records what reaches it and answers with `answer`.
    struct Follower {
        got: Got,
        answer: fn(&AppendEntriesRequest<TypeConfig>) -> AppendEntriesResponse<TypeConfig>,
        /// Held appends reported sent inside a later one.
        merged: std::sync::atomic::AtomicUsize,
    }

    impl SendAppend for Follower {
        async fn send_append(
            &mut self,
            rpc: AppendEntriesRequest<TypeConfig>,
            _option: RPCOption,
        ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
            let index = |l: &Option<LogId>| l.as_ref().map_or(0, |l| l.index);
            self.got.lock().unwrap().push((
                index(&rpc.prev_log_id),
                rpc.entries.len(),
                index(&rpc.leader_commit),
            ));
            Ok((self.answer)(&rpc))
        }

        fn merged(&self, n: usize) {
            self.merged
                .fetch_add(n, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn success(_: &AppendEntriesRequest<TypeConfig>) -> AppendEntriesResponse<TypeConfig> {
        AppendEntriesResponse::Success
    }

    fn conflict(_: &AppendEntriesRequest<TypeConfig>) -> AppendEntriesResponse<TypeConfig> {
        AppendEntriesResponse::Conflict
    }

    fn follower(
        answer: fn(&AppendEntriesRequest<TypeConfig>) -> AppendEntriesResponse<TypeConfig>,
    ) -> (Follower, Got) {
        let got = Arc::new(std::sync::Mutex::new(Vec::new()));
        (
            Follower {
                got: got.clone(),
                answer,
                merged: Default::default(),
            },
            got,
        )
    }

    fn option() -> RPCOption {
        RPCOption::new(Duration::from_secs(1))
    }

    #[tokio::test]
    async fn a_commit_index_rides_in_the_next_append() {
        let (mut f, got) = follower(success);
        let (tx, rx) = futures::channel::mpsc::unbounded();
        // Entry 5, then its commit alone, then entry 6 while that is held.
        tx.unbounded_send(append(4, &[5], 4)).unwrap();
        tx.unbounded_send(append(5, &[], 5)).unwrap();
        tx.unbounded_send(append(5, &[6], 5)).unwrap();
        drop(tx);
        let out: Vec<_> = held_appends(&mut f, rx, option(), Duration::from_secs(60))
            .collect()
            .await;
        assert_eq!(*got.lock().unwrap(), vec![(4, 1, 4), (5, 1, 5)]);
        assert_eq!(f.merged.load(std::sync::atomic::Ordering::SeqCst), 1);
        // One answer per request, in order: the merged one matched log 5.
        let matched: Vec<_> = out
            .into_iter()
            .map(|r| r.unwrap().unwrap().map(|l| l.index))
            .collect();
        assert_eq!(matched, vec![Some(5), Some(5), Some(6)]);
    }

    #[tokio::test]
    async fn a_held_commit_goes_alone_after_the_hold_or_when_the_input_ends() {
        // Nothing follows within the hold: it goes on its own.
        let (mut f, got) = follower(success);
        let (tx, rx) = futures::channel::mpsc::unbounded();
        tx.unbounded_send(append(5, &[], 5)).unwrap();
        let mut out = held_appends(&mut f, rx, option(), Duration::from_millis(20));
        let first = tokio::time::timeout(Duration::from_secs(10), out.next())
            .await
            .expect("a held append is sent once its hold is over");
        assert_eq!(first.unwrap().unwrap().unwrap(), Some(id(5)));
        drop(tx);
        assert!(out.next().await.is_none());
        drop(out);
        assert_eq!(*got.lock().unwrap(), vec![(5, 0, 5)]);

        // A one-request input (a heartbeat) is not held at all.
        let (mut f, got) = follower(success);
        let once = futures::stream::iter(vec![append(7, &[], 7)]);
        let out: Vec<_> = tokio::time::timeout(
            Duration::from_secs(10),
            held_appends(&mut f, once, option(), Duration::from_secs(3600)).collect::<Vec<_>>(),
        )
        .await
        .expect("an input that ended is not waited on");
        assert_eq!(out.len(), 1);
        assert_eq!(*got.lock().unwrap(), vec![(7, 0, 7)]);
    }

    #[tokio::test]
    async fn successive_commits_merge_and_other_shapes_go_in_order() {
        let (mut f, got) = follower(success);
        let (tx, rx) = futures::channel::mpsc::unbounded();
        // Two commits alone after log 5, then an append after another log
        // id (a new probe): the commits merge, the probe is not merged.
        tx.unbounded_send(append(5, &[], 4)).unwrap();
        tx.unbounded_send(append(5, &[], 5)).unwrap();
        tx.unbounded_send(append(3, &[4, 5], 5)).unwrap();
        drop(tx);
        let out: Vec<_> = held_appends(&mut f, rx, option(), Duration::from_secs(60))
            .collect()
            .await;
        assert_eq!(*got.lock().unwrap(), vec![(5, 0, 5), (3, 2, 5)]);
        assert_eq!(out.len(), 3);
        assert_eq!(f.merged.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_conflict_answers_once_for_the_merged_requests_and_ends_the_stream() {
        let (mut f, got) = follower(conflict);
        let (tx, rx) = futures::channel::mpsc::unbounded();
        tx.unbounded_send(append(5, &[], 5)).unwrap();
        tx.unbounded_send(append(5, &[6], 5)).unwrap();
        tx.unbounded_send(append(6, &[7], 5)).unwrap();
        drop(tx);
        let out: Vec<_> = held_appends(&mut f, rx, option(), Duration::from_secs(60))
            .collect()
            .await;
        assert_eq!(*got.lock().unwrap(), vec![(5, 1, 5)]);
        assert_eq!(out.len(), 1);
        assert!(matches!(
            out[0],
            Ok(Err(StreamAppendError::Conflict(ref l))) if *l == id(5)
        ));
    }
}
