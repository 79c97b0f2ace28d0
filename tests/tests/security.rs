//! Ports and trust: internal services only on the peer port, and mutual
//! TLS on both ports. Needs the binaries (`cargo build --bins`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use pact_client::{ClientOptions, Tls};
use pact_common::certgen::Ca;
use pact_common::{ClusterConfig, NodeId, ShardId};
use pact_proto as pb;
use pact_tests::raft_forge::vote_request;
use pact_tests::{fast_tuning, Cluster};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

/// A channel to `addr`, plain (`tls` None) or over TLS.
fn channel(addr: &str, tls: Option<ClientTlsConfig>) -> Channel {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5));
    if let Some(t) = tls {
        ep = ep.tls_config(t).unwrap();
    }
    ep.connect_lazy()
}

/// A Raft PreVote whose payload does not decode: a member that reaches
/// the service gets INVALID_ARGUMENT back, and nothing changes.
async fn raft_probe(ch: Channel) -> Result<(), tonic::Status> {
    pb::raft_transport_client::RaftTransportClient::new(ch)
        .pre_vote(pb::RaftMessage {
            group: 1,
            from: 2,
            payload: vec![0xff; 3].into(),
        })
        .await
        .map(|_| ())
}

/// A forged Decide (commit) for a transaction nobody prepared.
async fn decide_probe(ch: Channel) -> Result<(), tonic::Status> {
    pb::participant_client::ParticipantClient::new(ch)
        .decide(pb::DecideRequest {
            shard_id: 1,
            txn: Some(pb::TxnId {
                group: 1,
                node: 4,
                ts: 1 << 40,
            }),
            commit: true,
            open: false,
        })
        .await
        .map(|_| ())
}

async fn kv_probe(ch: Channel) -> Result<(), tonic::Status> {
    pb::kv_client::KvClient::new(ch)
        .status(pb::StatusRequest { shard_id: 1 })
        .await
        .map(|_| ())
}

async fn txn_probe(ch: Channel) -> Result<(), tonic::Status> {
    pb::txn_client::TxnClient::new(ch)
        .group_status(pb::StatusRequest { shard_id: 1 })
        .await
        .map(|_| ())
}

/// Two keys on different shards.
fn two_shards(c: &pact_client::Client) -> (Vec<u8>, Vec<u8>) {
    let a = b"acct-0".to_vec();
    let b = (1..)
        .map(|i| format!("acct-{i}").into_bytes())
        .find(|k| c.shard_for_key(k) != c.shard_for_key(&a))
        .unwrap();
    (a, b)
}

async fn cross_shard_transfer(c: &pact_client::Client, round: u32) {
    let (a, b) = two_shards(c);
    // A leader change (a loaded machine has some) aborts a transaction:
    // a legitimate outcome, so try again a few times.
    for attempt in 1.. {
        let mut t = c.begin().await.expect("begin");
        t.put(&a, format!("a{round}").as_bytes())
            .await
            .expect("put a");
        t.put(&b, format!("b{round}").as_bytes())
            .await
            .expect("put b");
        match t.commit().await {
            Ok(_) => break,
            Err(pact_client::ClientError::Aborted(why)) if attempt < 5 => {
                eprintln!("cross-shard commit aborted ({why}); again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("cross-shard commit: {e:?}"),
        }
    }
    assert_eq!(
        c.get(&a).await.unwrap(),
        Some(format!("a{round}").into_bytes())
    );
    assert_eq!(
        c.get(&b).await.unwrap(),
        Some(format!("b{round}").into_bytes())
    );
}

fn unimplemented(r: Result<(), tonic::Status>, what: &str) {
    match r {
        Err(s) if s.code() == Code::Unimplemented => {}
        other => panic!("{what}: expected UNIMPLEMENTED, got {other:?}"),
    }
}

/// The service answered (with a result or one of the refusals it gives):
/// the connection was accepted. Transport failures (a refused handshake,
/// a plain client on a TLS port) come back as other codes.
fn reached(r: &Result<(), tonic::Status>) -> bool {
    match r {
        Ok(()) => true,
        Err(s) => matches!(
            s.code(),
            Code::InvalidArgument
                | Code::NotFound
                | Code::FailedPrecondition
                | Code::PermissionDenied
                | Code::Aborted
                | Code::OutOfRange
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_services_are_refused_on_the_client_port() {
    let c = Cluster::transactional().await;
    let client = c.client();
    cross_shard_transfer(&client, 1).await;
    for n in &c.config.nodes {
        let on_client = channel(&n.addr, None);
        let on_peer = channel(&n.peer_addr, None);
        let what = |s: &str| format!("node {} {s}", n.id);
        // Raft on the client port: refused. On the peer port it is served
        // (an undecodable message, or one for a group the node does not
        // host, is answered as such).
        unimplemented(
            raft_probe(on_client.clone()).await,
            &what("raft on client port"),
        );
        match raft_probe(on_peer.clone()).await {
            Err(s) if matches!(s.code(), Code::InvalidArgument | Code::NotFound) => {}
            other => panic!("{}: {other:?}", what("raft on peer port")),
        }
        if c.config.coordinator_of(n.id).is_some() {
            unimplemented(
                decide_probe(on_client).await,
                &what("decide on coordinator"),
            );
            unimplemented(txn_probe(on_peer).await, &what("txn on peer port"));
        } else {
            // A forged Decide would commit another client's prepared
            // transaction: not on the client port.
            unimplemented(
                decide_probe(on_client).await,
                &what("decide on client port"),
            );
            assert!(
                reached(&decide_probe(on_peer.clone()).await),
                "{}",
                what("decide on peer port")
            );
            unimplemented(kv_probe(on_peer).await, &what("kv on peer port"));
        }
    }
    // The real cluster kept working.
    cross_shard_transfer(&client, 2).await;

    // "Not leader" hints and status name client addresses, never peer ones.
    let parts = c.participant_ids();
    let leader = c
        .wait_leader(ShardId(1), &parts, Duration::from_secs(10))
        .await;
    let leader_addr = c.config.node(leader).unwrap().addr.clone();
    let follower = *parts.iter().find(|n| **n != leader).unwrap();
    let mut kv =
        pb::kv_client::KvClient::new(channel(&c.config.node(follower).unwrap().addr, None));
    let st = kv
        .status(pb::StatusRequest { shard_id: 1 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (st.leader_id, st.leader_addr.as_str()),
        (leader.0, leader_addr.as_str())
    );
    let key = (0..)
        .map(|i| format!("h{i}").into_bytes())
        .find(|k| client.shard_for_key(k) == ShardId(1))
        .unwrap();
    let err = kv
        .write(pb::WriteRequest {
            shard_id: 1,
            ops: vec![pb::WriteOp {
                key: key.into(),
                op: Some(pb::write_op::Op::Put(b"v".to_vec().into())),
            }],
            shard_version: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let hinted = err
        .metadata()
        .get(pact_raft_leader_addr_header())
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    assert_eq!(hinted.as_deref(), Some(leader_addr.as_str()));
}

/// pact_raft::wire::LEADER_ADDR_HEADER (the tests do not link pact-raft).
fn pact_raft_leader_addr_header() -> &'static str {
    "pact-leader-addr"
}

/// Certificates of a CA the cluster does not trust.
struct Rogue {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    pem: Tls,
}

fn rogue(dir: &Path, id: NodeId) -> Rogue {
    let ca = Ca::new("rogue CA").unwrap();
    // A node certificate (naming node `id`), so that only the CA tells it
    // from the cluster's own.
    let pem = ca
        .issue_node(id, &["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let r = Rogue {
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("cert.key"),
        pem: Tls {
            ca: ca.pem().cert.clone().into_bytes(),
            cert: pem.cert.clone().into_bytes(),
            key: pem.key.clone().into_bytes(),
        },
    };
    std::fs::write(&r.ca, &ca.pem().cert).unwrap();
    std::fs::write(&r.cert, &pem.cert).unwrap();
    std::fs::write(&r.key, &pem.key).unwrap();
    r
}

async fn wait_tls_cluster(c: &Cluster) {
    let parts = c.participant_ids();
    for s in &c.config.shards {
        c.wait_leader(s.id, &parts, Duration::from_secs(30)).await;
    }
    if !c.config.coordinators.is_empty() {
        c.wait_coordinator(1, Duration::from_secs(30)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_certificates_of_the_cluster_ca() {
    let config = ClusterConfig::local_with_coordinators(3, 3, 3, 3, 7001).unwrap();
    let mut c = Cluster::create_tls(config, fast_tuning());
    c.start_all();
    wait_tls_cluster(&c).await;
    // A client with a valid certificate: a cross-shard transaction, end to
    // end over TLS (client to coordinator, coordinator to participants,
    // Raft everywhere).
    let client = c.client();
    cross_shard_transfer(&client, 1).await;

    let good = Tls::for_client(&c.config, &Default::default())
        .unwrap()
        .unwrap();
    let ca_only = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&good.ca));
    let other = rogue(&c.path().join("rogue-client"), NodeId(1));
    // Trusts the cluster's CA (so the server is accepted), presents a
    // certificate of another CA.
    let foreign = ca_only
        .clone()
        .identity(Identity::from_pem(&other.pem.cert, &other.pem.key));
    for n in &c.config.nodes {
        let coordinator = c.config.coordinator_of(n.id).is_some();
        for (port, addr) in [("client", &n.addr), ("peer", &n.peer_addr)] {
            let probe = |tls: Option<ClientTlsConfig>| {
                let ch = channel(addr, tls);
                async move {
                    match (port, coordinator) {
                        ("client", false) => kv_probe(ch).await,
                        ("client", true) => txn_probe(ch).await,
                        _ => raft_probe(ch).await,
                    }
                }
            };
            let what = format!("node {} {port} port", n.id);
            assert!(
                reached(&probe(Some(good.client_config())).await),
                "{what}: a valid certificate must be served"
            );
            for (how, tls) in [
                ("plain connection", None),
                ("TLS without a client certificate", Some(ca_only.clone())),
                ("certificate of another CA", Some(foreign.clone())),
            ] {
                let r = probe(tls).await;
                assert!(!reached(&r), "{what}: {how} was served: {r:?}");
            }
        }
    }
    // The client library without a certificate is refused too.
    let bare = pact_client::Client::new(
        &c.config,
        ClientOptions {
            retry_for: Duration::from_secs(2),
            request_timeout: Duration::from_secs(2),
            ..ClientOptions::default()
        },
    );
    let r = bare.get(b"acct-0").await;
    assert!(r.is_err(), "a client without a certificate read: {r:?}");
    cross_shard_transfer(&client, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_certificate_of_another_ca_cannot_talk_to_its_group() {
    let config = ClusterConfig::local(3, 1, 3, 7001).unwrap();
    let mut c = Cluster::create_tls(config, fast_tuning());
    c.start_all();
    let shard = ShardId(1);
    let all = c.node_ids();
    c.wait_leader(shard, &all, Duration::from_secs(30)).await;
    let client = c.client();
    client.put(b"before", b"v").await.expect("put");

    // Node 3 comes back with a certificate (and CA) of its own.
    let node3 = NodeId(3);
    let r = rogue(&c.path().join("rogue-node"), NodeId(3));
    c.set_args(
        node3,
        &[
            "--cacert".into(),
            r.ca.display().to_string(),
            "--cert".into(),
            r.cert.display().to_string(),
            "--key".into(),
            r.key.display().to_string(),
        ],
    );
    c.restart(node3);
    let leader = c
        .wait_leader(shard, &[NodeId(1), NodeId(2)], Duration::from_secs(30))
        .await;
    // Node 3 itself, asked by a client it trusts.
    let rogue_client = pact_client::Client::new(
        &c.config,
        ClientOptions {
            tls: Some(r.pem.clone()),
            retry_for: Duration::from_secs(10),
            ..ClientOptions::default()
        },
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let at_restart = loop {
        match rogue_client.replica_status(shard, node3).await {
            Ok(s) => break s,
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "node 3 does not answer its own CA's client: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let term = c.status(shard, leader).await.unwrap().term;
    for i in 0..20 {
        client
            .put(format!("k{i}").as_bytes(), b"v")
            .await
            .expect("the group serves without node 3");
    }
    // Long enough for several election timeouts of node 3, which hears
    // from no leader and whose campaigns reach no one.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let st = rogue_client.replica_status(shard, node3).await.unwrap();
    let now = c.status(shard, leader).await.unwrap();
    assert_eq!(
        st.applied_index, at_restart.applied_index,
        "node 3 must not have received entries: {st:?}, leader {now:?}"
    );
    assert!(now.applied_index > st.applied_index, "{now:?}");
    assert_ne!(st.role, "leader", "{st:?}");
    assert_eq!(
        (now.role.as_str(), now.term),
        ("leader", term),
        "the group was not disturbed"
    );
    // And the cluster's own nodes refuse to be asked by node 3's side.
    assert!(
        pact_client::Client::new(
            &c.config,
            ClientOptions {
                tls: Some(r.pem.clone()),
                retry_for: Duration::from_secs(2),
                ..ClientOptions::default()
            },
        )
        .replica_status(shard, leader)
        .await
        .is_err(),
        "a certificate of another CA reached the leader"
    );
    client.put(b"after", b"v").await.expect("still serving");

    // The same node with the cluster's certificate catches up: the
    // certificate was the only thing keeping it out.
    c.set_args(node3, &[]);
    c.restart(node3);
    let target = c.status(shard, leader).await.unwrap().applied_index;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = c.status(shard, node3).await {
            if s.applied_index >= target {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node 3 did not catch up with the cluster's certificate\n{}",
            c.logs_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every (node, group, term) of the cluster's Raft groups, as status says.
async fn terms(c: &Cluster) -> Vec<(u64, u64, u64)> {
    let client = c.client();
    let mut out = Vec::new();
    for n in c.participant_ids() {
        for s in &c.config.shards {
            let st = client.replica_status(s.id, n).await.expect("shard status");
            out.push((n.0, s.id.0, st.term));
        }
    }
    for n in c.coordinator_ids(1) {
        let st = client
            .coordinator_status(n)
            .await
            .expect("coordinator status");
        out.push((n.0, 1, st.term));
    }
    out
}

/// A Raft message on `ch`, of `rpc` ("vote" or "pre-vote").
async fn raft_send(
    ch: Channel,
    rpc: &str,
    group: u64,
    from: u64,
    payload: Vec<u8>,
) -> Result<(), tonic::Status> {
    let mut rt = pb::raft_transport_client::RaftTransportClient::new(ch);
    let m = pb::RaftMessage {
        group,
        from,
        payload: payload.into(),
    };
    match rpc {
        "vote" => rt.vote(m).await,
        _ => rt.pre_vote(m).await,
    }
    .map(|_| ())
}

fn denied(r: Result<(), tonic::Status>, what: &str) {
    match r {
        Err(s) if s.code() == Code::PermissionDenied => {}
        other => panic!("{what}: expected PERMISSION_DENIED, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_nodes_reach_the_peer_port_and_each_speaks_only_for_itself() {
    let config = ClusterConfig::local_with_coordinators(3, 3, 3, 3, 7001).unwrap();
    let mut c = Cluster::create_tls(config, fast_tuning());
    c.start_all();
    wait_tls_cluster(&c).await;
    let client = c.client();
    cross_shard_transfer(&client, 1).await;
    let before = terms(&c).await;

    let tls = c.config.tls.clone().unwrap();
    let node_tls = |id: NodeId| {
        let (cert, key) = tls.node_files(id);
        Tls::load(&tls.ca, &cert, &key).unwrap().client_config()
    };
    // The certificate the playground hands to users: signed by the
    // cluster's CA, naming no node.
    let user = Tls::for_client(&c.config, &Default::default())
        .unwrap()
        .unwrap()
        .client_config();

    // (node, Raft group, the group's replicas) for every replica.
    let parts = c.participant_ids();
    let coords = c.coordinator_ids(1);
    let mut targets = Vec::new();
    for n in &parts {
        for s in &c.config.shards {
            let members = s.replicas.clone();
            if members.contains(n) {
                targets.push((*n, s.id.0, members));
            }
        }
    }
    for n in &coords {
        targets.push((*n, 1, coords.clone()));
    }
    assert!(targets.len() >= 6, "{targets:?}");

    for (node, group, members) in &targets {
        let n = c.config.node(*node).unwrap();
        let what = |s: &str| format!("node {node} group {group}: {s}");
        let others: Vec<u64> = members.iter().filter(|m| *m != node).map(|m| m.0).collect();
        let (a, b) = (others[0], others[1]);
        let far = before
            .iter()
            .find(|(m, g, _)| *m == node.0 && *g == *group)
            .map_or(1, |t| t.2)
            + 500_000;
        let campaign = |from: u64| vote_request(far, from, Some((far, from, 1 << 40)));

        // The user's certificate: refused on the peer port, whatever it
        // sends, well-formed and claiming a member's id included.
        let peer = channel(&n.peer_addr, Some(user.clone()));
        for rpc in ["vote", "pre-vote"] {
            denied(
                raft_send(peer.clone(), rpc, *group, a, campaign(a)).await,
                &what(&format!("{rpc} with the client certificate")),
            );
        }
        if parts.contains(node) {
            denied(
                decide_probe(peer.clone()).await,
                &what("decide with the client certificate"),
            );
        }

        // Node a's own certificate: it gets in and may speak as itself
        // (a harmless state query; the encoding decodes) ...
        let as_a = channel(&n.peer_addr, Some(node_tls(NodeId(a))));
        raft_send(
            as_a.clone(),
            "pre-vote",
            *group,
            a,
            vote_request(0, a, None),
        )
        .await
        .unwrap_or_else(|e| panic!("{}: {e:?}", what("node's own pre-vote refused")));
        // ... but not as node b, another member of the same group.
        for rpc in ["vote", "pre-vote"] {
            denied(
                raft_send(as_a.clone(), rpc, *group, b, campaign(b)).await,
                &what(&format!("{rpc} of node {a} claiming to be node {b}")),
            );
        }
    }

    // The user's certificate still works where it belongs.
    for n in &c.config.nodes {
        let ch = channel(&n.addr, Some(user.clone()));
        let r = if coords.contains(&n.id) {
            txn_probe(ch).await
        } else {
            kv_probe(ch).await
        };
        r.unwrap_or_else(|e| panic!("node {} client port: {e:?}", n.id));
    }
    // Every forged campaign carried a term 500,000 above the replica's;
    // an election of the real members (a loaded machine has some) moves a
    // term by a few at most.
    let after = terms(&c).await;
    for ((n, g, was), (_, _, now)) in before.iter().zip(&after) {
        assert!(
            *now < was + 1_000,
            "node {n} group {g}: term {was} -> {now}, a forged campaign got through"
        );
    }
    cross_shard_transfer(&client, 2).await;
}
