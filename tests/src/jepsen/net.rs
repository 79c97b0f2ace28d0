//! Per-link fault-injecting TCP proxies between cluster nodes.
//!
//! Every ordered pair of nodes (a, b) gets its own listener per port of b
//! (client and peer): node a's config says b lives there, and the proxy
//! forwards to b's real address. Bytes
//! travelling from a to b (requests on link a->b, replies on link b->a) are
//! discarded while the directed pair (a, b) is blocked, like a firewall DROP
//! rule: the sender sees silence, not a reset. Whenever a link's blocking
//! changes, its open connections are cut, so a healed link starts from
//! clean HTTP/2 streams rather than from a stream with a hole in it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use pact_common::NodeId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

type Pair = (NodeId, NodeId);

/// Which of a node's two ports a link leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Port {
    Client,
    Peer,
}

struct Shared {
    blocked: Mutex<BTreeSet<Pair>>,
    /// Bumped on every change; `u64::MAX` means the net is shutting down.
    epoch: watch::Sender<u64>,
}

impl Shared {
    fn is_blocked(&self, from: NodeId, to: NodeId) -> bool {
        self.blocked
            .lock()
            .map(|b| b.contains(&(from, to)))
            .unwrap_or(false)
    }

    fn link_state(&self, a: NodeId, b: NodeId) -> (bool, bool) {
        (self.is_blocked(a, b), self.is_blocked(b, a))
    }
}

/// The proxies for one cluster; dropping it closes them all.
pub struct Net {
    shared: Arc<Shared>,
    links: BTreeMap<(NodeId, NodeId, Port), String>,
    nodes: Vec<NodeId>,
}

impl Net {
    /// One proxy per ordered pair of `nodes` and port (id, real client
    /// and peer addresses).
    pub async fn start(nodes: &[(NodeId, [String; 2])]) -> std::io::Result<Net> {
        let (epoch, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            blocked: Mutex::new(BTreeSet::new()),
            epoch,
        });
        let mut links = BTreeMap::new();
        for (a, _) in nodes {
            for (b, b_addrs) in nodes {
                if a == b {
                    continue;
                }
                for (port, b_addr) in [Port::Client, Port::Peer].into_iter().zip(b_addrs) {
                    let listener = TcpListener::bind("127.0.0.1:0").await?;
                    links.insert((*a, *b, port), listener.local_addr()?.to_string());
                    tokio::spawn(accept_loop(
                        listener,
                        *a,
                        *b,
                        b_addr.clone(),
                        shared.clone(),
                    ));
                }
            }
        }
        Ok(Net {
            shared,
            links,
            nodes: nodes.iter().map(|(id, _)| *id).collect(),
        })
    }

    /// Where node `from` should dial to reach node `to`'s `port`.
    pub fn link_addr(&self, from: NodeId, to: NodeId, port: Port) -> String {
        self.links[&(from, to, port)].clone()
    }

    pub fn nodes(&self) -> &[NodeId] {
        &self.nodes
    }

    fn change(&self, f: impl FnOnce(&mut BTreeSet<Pair>)) {
        if let Ok(mut b) = self.shared.blocked.lock() {
            f(&mut b);
        }
        self.shared.epoch.send_modify(|e| *e += 1);
    }

    /// Drop everything `from` sends to `to` (one direction only).
    pub fn block(&self, pairs: &[Pair]) {
        self.change(|b| b.extend(pairs.iter().copied()));
    }

    /// Cut the network into `groups`: nodes talk only within their group
    /// (nodes in no group are cut off from everyone).
    pub fn partition(&self, groups: &[Vec<NodeId>]) {
        let group_of = |n: NodeId| groups.iter().position(|g| g.contains(&n));
        let mut pairs = Vec::new();
        for &a in &self.nodes {
            for &b in &self.nodes {
                if a != b && (group_of(a).is_none() || group_of(a) != group_of(b)) {
                    pairs.push((a, b));
                }
            }
        }
        self.block(&pairs);
    }

    /// Every node reaches only the nodes `sees` allows (both directions
    /// must allow it), e.g. ring neighbours.
    pub fn allow_only(&self, sees: impl Fn(NodeId, NodeId) -> bool) {
        let mut pairs = Vec::new();
        for &a in &self.nodes {
            for &b in &self.nodes {
                if a != b && !(sees(a, b) && sees(b, a)) {
                    pairs.push((a, b));
                }
            }
        }
        self.block(&pairs);
    }

    /// Restore every link.
    pub fn heal(&self) {
        self.change(|b| b.clear());
    }

    /// The directed pairs blocked now, for the nemesis log.
    pub fn blocked(&self) -> Vec<Pair> {
        self.shared
            .blocked
            .lock()
            .map(|b| b.iter().copied().collect())
            .unwrap_or_default()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.shared.epoch.send_replace(u64::MAX);
    }
}

async fn accept_loop(listener: TcpListener, a: NodeId, b: NodeId, to: String, s: Arc<Shared>) {
    let mut epoch = s.epoch.subscribe();
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            _ = epoch.changed() => {
                if *epoch.borrow() == u64::MAX { return; }
                continue;
            }
        };
        let Ok((inbound, _)) = conn else { continue };
        let _ = inbound.set_nodelay(true);
        let s = s.clone();
        let to = to.clone();
        tokio::spawn(async move {
            if let Ok(outbound) = TcpStream::connect(&to).await {
                let _ = outbound.set_nodelay(true);
                relay(inbound, outbound, a, b, s).await;
            }
        });
    }
}

/// Copy both ways until either side closes or the link's blocking changes.
async fn relay(inbound: TcpStream, outbound: TcpStream, a: NodeId, b: NodeId, s: Arc<Shared>) {
    let start = s.link_state(a, b);
    let mut epoch = s.epoch.subscribe();
    let (mut in_r, mut in_w) = inbound.into_split();
    let (mut out_r, mut out_w) = outbound.into_split();
    let (s1, s2) = (s.clone(), s.clone());
    let forward = async move {
        let mut buf = vec![0u8; 16 << 10];
        loop {
            let n = match in_r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if !s1.is_blocked(a, b) && out_w.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let backward = async move {
        let mut buf = vec![0u8; 16 << 10];
        loop {
            let n = match out_r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if !s2.is_blocked(b, a) && in_w.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let changed = async move {
        loop {
            if epoch.changed().await.is_err() || *epoch.borrow() == u64::MAX {
                return;
            }
            if s.link_state(a, b) != start {
                return;
            }
        }
    };
    tokio::select! {
        _ = forward => {}
        _ = backward => {}
        _ = changed => {}
    }
}
