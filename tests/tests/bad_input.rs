//! Bad input gets a clear error and loses nothing: oversized or empty keys,
//! oversized values and batches, unknown shards, misrouted keys, garbage on
//! the gRPC port, a peer sending undecodable Raft messages, a bad config.

use std::io::Write;
use std::time::Duration;

use pact_client::ClientError;
use pact_common::{NodeId, ShardId, MAX_KEY_BYTES, MAX_VALUE_BYTES};
use pact_proto as pb;
use pact_tests::raft_forge::{append_request, vote_request};
use pact_tests::{binary, fast_tuning, Cluster};

fn expect_invalid(r: Result<(), ClientError>, what: &str, needle: &str) {
    match r {
        Err(ClientError::InvalidInput(m)) => {
            assert!(
                m.contains(needle),
                "{what}: message {m:?} does not mention {needle:?}"
            )
        }
        other => panic!("{what}: expected InvalidInput, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_the_node_keeps_serving() {
    let c = Cluster::start(3, 2, 3, fast_tuning());
    let nodes = c.node_ids();
    for s in [ShardId(1), ShardId(2)] {
        c.wait_leader(s, &nodes, Duration::from_secs(20)).await;
    }
    let client = c.client();
    client.put(b"keep", b"me").await.expect("baseline put");

    expect_invalid(client.put(b"", b"v").await, "empty key", "empty");
    let big_key = vec![b'k'; MAX_KEY_BYTES + 1];
    expect_invalid(client.put(&big_key, b"v").await, "oversized key", "key");
    let big_value = vec![b'v'; MAX_VALUE_BYTES + 1];
    expect_invalid(
        client.put(b"bigvalue", &big_value).await,
        "oversized value",
        "value",
    );
    // Five 1 MiB values on one shard: over the 4 MiB batch limit.
    let shard = client.shard_for_key(b"keep");
    let mut batch = Vec::new();
    let mut i = 0;
    while batch.len() < 5 {
        let k = format!("batch-{i}").into_bytes();
        if client.shard_for_key(&k) == shard {
            batch.push((k, Some(vec![b'b'; MAX_VALUE_BYTES])));
        }
        i += 1;
    }
    match client.write(batch).await {
        Err(ClientError::InvalidInput(_)) => {}
        other => panic!("oversized batch: expected InvalidInput, got {other:?}"),
    }
    // A batch spanning shards is refused by the client before sending.
    let other_key = (0..)
        .map(|i| format!("o{i}").into_bytes())
        .find(|k| client.shard_for_key(k) != shard)
        .unwrap();
    match client
        .write(vec![(b"keep".to_vec(), None), (other_key.clone(), None)])
        .await
    {
        Err(ClientError::InvalidInput(m)) => assert!(m.contains("spans shards"), "{m}"),
        other => panic!("cross-shard batch: expected InvalidInput, got {other:?}"),
    }

    // Raw gRPC: unknown shard, misrouted key, op with neither put nor delete.
    let leader = c.wait_leader(shard, &nodes, Duration::from_secs(5)).await;
    let addr = c.config.node(leader).unwrap().addr.clone();
    let mut raw = pb::kv_client::KvClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let e = raw
        .get(pb::GetRequest {
            shard_version: 0,
            shard_id: 99,
            key: b"x".to_vec().into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert!(e.message().contains("unknown shard 99"), "{}", e.message());
    // Errors are data: the code a program acts on is in the details.
    let (code, _) = pb::status::info(&e).expect("error info on the status");
    assert_eq!(code, "UNKNOWN_SHARD");
    // A follower refuses with NOT_LEADER and names the leader as data.
    let follower = *nodes.iter().find(|n| **n != leader).unwrap();
    let faddr = c.config.node(follower).unwrap().addr.clone();
    let mut fraw = pb::kv_client::KvClient::connect(format!("http://{faddr}"))
        .await
        .expect("connect");
    let e = fraw
        .get(pb::GetRequest {
            shard_version: 0,
            shard_id: shard.0,
            key: b"keep".to_vec().into(),
        })
        .await
        .unwrap_err();
    let (code, meta) = pb::status::info(&e).expect("error info on the status");
    assert_eq!(code, "NOT_LEADER", "{e:?}");
    assert_eq!(meta.get("leader_id"), Some(&leader.0.to_string()), "{e:?}");
    let e = raw
        .write(pb::WriteRequest {
            shard_version: 0,
            shard_id: shard.0,
            ops: vec![pb::WriteOp {
                key: other_key.clone().into(),
                op: Some(pb::write_op::Op::Put(b"v".to_vec().into())),
            }],
        })
        .await
        .unwrap_err();
    // A misrouted key: retryable, with the shard's version as data, and
    // nothing written (the client refreshes its map and routes again).
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("does not own key"), "{}", e.message());
    let (code, meta) = pb::status::info(&e).expect("error info on the status");
    assert_eq!(code, "WRONG_SHARD");
    assert_eq!(meta.get("shard_version").map(String::as_str), Some("1"));
    assert_eq!(client.get(&other_key).await.unwrap(), None);
    // Routed by a version the shard is not at: refused the same way.
    let e = raw
        .get(pb::GetRequest {
            shard_version: 7,
            shard_id: shard.0,
            key: b"keep".to_vec().into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        pb::status::info(&e).map(|i| i.0).as_deref(),
        Some("WRONG_SHARD")
    );
    assert!(
        e.message().contains("routed by version 7"),
        "{}",
        e.message()
    );
    // The shard's own record of what it owns.
    let d = raw
        .describe(pb::DescribeRequest { shard_id: shard.0 })
        .await
        .expect("describe")
        .into_inner();
    assert_eq!((d.shard_id, d.version), (shard.0, 1));
    assert!(
        matches!(d.span, Some(pb::shard_descriptor::Span::Ring(ref r)) if !r.lo.is_empty() && r.lo.len() == r.hi.len()),
        "{d:?}"
    );
    let e = raw
        .write(pb::WriteRequest {
            shard_version: 0,
            shard_id: shard.0,
            ops: vec![pb::WriteOp {
                key: b"keep".to_vec().into(),
                op: None,
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = raw
        .scan(pb::ScanRequest {
            shard_version: 0,
            shard_id: shard.0,
            start: Default::default(),
            end: Default::default(),
            limit: 1_000_000,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    // Garbage bytes on the gRPC port, raw and after an HTTP/2 preface.
    for payload in [
        &b"\x00\x01\x02 this is not http/2 \xff\xfe"[..],
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x04\xff\xff\xff\xff\xff garbage frame"[..],
    ] {
        let mut s = std::net::TcpStream::connect(&addr).expect("tcp connect");
        let _ = s.write_all(payload);
        let _ = s.flush();
        drop(s);
    }

    // A peer speaking garbage on the Raft transport (on the peer port).
    let peer_addr = c.config.node(leader).unwrap().peer_addr.clone();
    let mut rt =
        pb::raft_transport_client::RaftTransportClient::connect(format!("http://{peer_addr}"))
            .await
            .expect("connect raft transport");
    let e = rt
        .append_entries(pb::RaftMessage {
            group: shard.0,
            from: 42,
            payload: b"\xde\xad\xbe\xef not a raft message".to_vec().into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    let e = rt
        .vote(pb::RaftMessage {
            group: 12345,
            from: 42,
            payload: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");

    // Nothing was lost and every node still serves.
    assert_eq!(
        client.get(b"keep").await.expect("get").as_deref(),
        Some(&b"me"[..])
    );
    client
        .put(b"after", b"ok")
        .await
        .expect("put after bad input");
    let mut c = c;
    for n in nodes {
        assert!(c.is_running(n), "node {n} died\n{}", c.logs_tail());
    }
}

#[test]
fn bad_config_and_flags_fail_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(binary("participant"))
            .args(args)
            .output()
            .expect("run participant");
        (out.status, String::from_utf8_lossy(&out.stderr).to_string())
    };
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "partitioning = \"hash\"\nnodes = [ { id = 1, addr = \"127.0.0.1:1\" } ]\nshards = [ { id = 1, replicas = [1, 7] } ]\n").unwrap();
    let (st, err) = run(&[
        "--config",
        bad.to_str().unwrap(),
        "--node-id",
        "1",
        "--data-dir",
        data,
    ]);
    assert!(!st.success());
    assert!(
        err.contains("unknown node") || err.contains("7"),
        "stderr: {err}"
    );

    let garbage = dir.path().join("garbage.toml");
    std::fs::write(&garbage, "this is = = not toml [[[").unwrap();
    let (st, err) = run(&[
        "--config",
        garbage.to_str().unwrap(),
        "--node-id",
        "1",
        "--data-dir",
        data,
    ]);
    assert!(!st.success());
    assert!(err.to_lowercase().contains("garbage.toml"), "stderr: {err}");

    let (st, err) = run(&[
        "--config",
        "/nonexistent/pact.toml",
        "--node-id",
        "1",
        "--data-dir",
        data,
    ]);
    assert!(!st.success());
    assert!(err.contains("/nonexistent/pact.toml"), "stderr: {err}");

    let (st, err) = run(&["--node-id", "9", "--data-dir", data]);
    assert!(!st.success());
    assert!(
        err.contains("node 9 is not in the cluster config"),
        "stderr: {err}"
    );

    let (st, err) = run(&["--node-id", "one", "--data-dir", data]);
    assert!(!st.success());
    assert!(err.contains("invalid value"), "stderr: {err}");
}

#[derive(Clone, Copy, Debug)]
enum Rpc {
    Vote,
    PreVote,
    Append,
    Snapshot,
}

async fn send_raft(
    addr: &str,
    rpc: Rpc,
    group: u64,
    from: u64,
    payload: Vec<u8>,
) -> Result<(), tonic::Status> {
    let mut rt = pb::raft_transport_client::RaftTransportClient::connect(format!("http://{addr}"))
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let m = pb::RaftMessage {
        group,
        from,
        payload: payload.into(),
    };
    let r = match rpc {
        Rpc::Vote => rt.vote(m).await,
        Rpc::PreVote => rt.pre_vote(m).await,
        Rpc::Append => rt.append_entries(m).await,
        Rpc::Snapshot => rt.install_snapshot(m).await,
    };
    r.map(|_| ())
}

/// Every (node, group, term) of the cluster's Raft groups, as status says.
async fn terms(c: &Cluster) -> Vec<(u64, u64, u64)> {
    let client = c.client();
    let mut out = Vec::new();
    for n in c.participant_ids() {
        for s in [ShardId(1), ShardId(2)] {
            let st = client.replica_status(s, n).await.expect("shard status");
            out.push((n.0, s.0, st.term));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_raft_messages_are_refused_and_move_no_term() {
    let c = Cluster::start_with_coordinators(3, 2, 3, 3, fast_tuning());
    let parts = c.participant_ids();
    for s in [ShardId(1), ShardId(2)] {
        c.wait_leader(s, &parts, Duration::from_secs(20)).await;
    }
    c.wait_coordinator(1, Duration::from_secs(20)).await;
    let client = c.client();
    client.put(b"keep", b"me").await.expect("baseline put");
    let before = terms(&c).await;

    // (node, group, the group's replicas) for every replica in the cluster.
    let mut targets = Vec::new();
    for n in &parts {
        for g in [1u64, 2] {
            targets.push((*n, g, parts.clone()));
        }
    }
    let coords = c.coordinator_ids(1);
    for n in &coords {
        targets.push((*n, 1, coords.clone()));
    }

    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut junk = |len: usize| -> Vec<u8> {
        (0..len)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (seed >> 33) as u8
            })
            .collect()
    };
    let near_max = (1u64 << 63) - 1_000;
    let mut accepted = Vec::new();
    for (node, group, members) in &targets {
        let addr = c.config.node(*node).unwrap().peer_addr.clone();
        let me = node.0;
        let peer = members.iter().find(|m| **m != *node).unwrap().0;
        let term = before
            .iter()
            .find(|(n, g, _)| *n == me && *g == *group)
            .map_or(1, |t| t.2);

        // Well-formed and harmless (what a replica that starts empty asks
        // its peers): proves the hand-made encoding decodes.
        send_raft(
            &addr,
            Rpc::PreVote,
            *group,
            peer,
            vote_request(0, peer, None),
        )
        .await
        .unwrap_or_else(|e| panic!("node {me} group {group}: state query refused: {e}"));

        for rpc in [Rpc::Vote, Rpc::PreVote, Rpc::Append, Rpc::Snapshot] {
            for len in [0, 3, 17, 64, 1000] {
                match send_raft(&addr, rpc, *group, peer, junk(len)).await {
                    Err(e) if e.code() == tonic::Code::InvalidArgument => {}
                    other => accepted.push(format!(
                        "node {me} group {group} {rpc:?}: {len} random bytes: {other:?}"
                    )),
                }
            }
        }

        let far = term + 500_000;
        // (what, rpc, sender, payload, what the refusal must say)
        let forged: Vec<(&str, Rpc, u64, Vec<u8>, &str)> = vec![
            (
                "vote from node 99",
                Rpc::Vote,
                99,
                vote_request(far, 99, Some((far, 99, 1 << 40))),
                "not a member",
            ),
            (
                "pre-vote from node 99",
                Rpc::PreVote,
                99,
                vote_request(far, 99, Some((far, 99, 1 << 40))),
                "not a member",
            ),
            (
                "append from node 99",
                Rpc::Append,
                99,
                append_request(far, 99),
                "not a member",
            ),
            (
                "vote from itself",
                Rpc::Vote,
                me,
                vote_request(far, me, Some((far, me, 1 << 40))),
                "receiver itself",
            ),
            (
                "append from itself",
                Rpc::Append,
                me,
                append_request(far, me),
                "receiver itself",
            ),
            (
                "vote naming another candidate",
                Rpc::Vote,
                peer,
                vote_request(far, 99, Some((far, 99, 1 << 40))),
                "names node 99",
            ),
            (
                "append naming another leader",
                Rpc::Append,
                peer,
                append_request(far, 99),
                "names node 99",
            ),
            (
                "vote at term near 2^63",
                Rpc::Vote,
                peer,
                vote_request(near_max, peer, Some((near_max, peer, 1 << 40))),
                "implausibly far",
            ),
            (
                "pre-vote at term near 2^63",
                Rpc::PreVote,
                peer,
                vote_request(near_max, peer, Some((near_max, peer, 1 << 40))),
                "implausibly far",
            ),
            (
                "append at term near 2^63",
                Rpc::Append,
                peer,
                append_request(near_max, peer),
                "implausibly far",
            ),
        ];
        for (what, rpc, from, payload, needle) in forged {
            match send_raft(&addr, rpc, *group, from, payload).await {
                Err(e) if e.message().contains(needle) => {}
                other => accepted.push(format!("node {me} group {group}: {what}: {other:?}")),
            }
        }
    }

    // A vote is a few dozen bytes: a megabyte one is refused before it is
    // read, not buffered and then found undecodable.
    let addr = c.config.node(parts[0]).unwrap().peer_addr.clone();
    for rpc in [Rpc::Vote, Rpc::PreVote] {
        match send_raft(&addr, rpc, 1, parts[1].0, vec![7; 1 << 20]).await {
            Err(e) if e.code() == tonic::Code::OutOfRange => {}
            other => accepted.push(format!("1 MiB {rpc:?}: {other:?}")),
        }
    }
    // An append carries at most 8 MiB of entries, or one entry of at most
    // pact_raft::MAX_COMMAND_BYTES (16 MiB): a 40 MiB one is refused from
    // its length, not buffered.
    match send_raft(&addr, Rpc::Append, 1, parts[1].0, vec![7; 40 << 20]).await {
        Err(e) if e.code() == tonic::Code::OutOfRange => {}
        other => accepted.push(format!("40 MiB append: {other:?}")),
    }

    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = terms(&c).await;
    // Tolerates an ordinary election or two under load; a forged term is
    // 500,000 or about 2^63 above.
    let moved: Vec<_> = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| a.2 > b.2 + 100)
        .map(|(b, a)| format!("node {} group {}: term {} -> {}", b.0, b.1, b.2, a.2))
        .collect();
    assert!(moved.is_empty(), "forged messages moved terms: {moved:#?}");
    assert!(
        accepted.is_empty(),
        "forged messages were not refused: {accepted:#?}"
    );

    // The cluster still serves reads, writes and transactions.
    assert_eq!(
        client.get(b"keep").await.expect("get").as_deref(),
        Some(&b"me"[..])
    );
    client
        .put(b"after", b"ok")
        .await
        .expect("put after forged messages");
    let mut t = client.begin().await.expect("begin");
    t.put(b"txn-after", b"ok").await.expect("txn put");
    t.commit().await.expect("commit after forged messages");
    let mut c = c;
    for n in c.node_ids() {
        assert!(c.is_running(n), "node {n} died\n{}", c.logs_tail());
    }
}

/// Read HTTP/2 frames from `s` until EOF or `within`; returns each frame's
/// (type, flags, payload).
fn read_frames(s: &mut std::net::TcpStream, within: Duration) -> (Vec<(u8, u8, Vec<u8>)>, bool) {
    use std::io::Read;
    let deadline = std::time::Instant::now() + within;
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    let mut eof = false;
    loop {
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            frames.push((buf[3], buf[4], buf[9..9 + len].to_vec()));
            buf.drain(..9 + len);
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        s.set_read_timeout(Some(left)).unwrap();
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk) {
            Ok(0) => {
                eof = true;
                break;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(_) => {
                eof = true;
                break;
            }
        }
    }
    (frames, eof)
}

/// Open `n` requests on one HTTP/2 connection to `addr` without waiting
/// for the server's limit (each an AppendEntries whose body never comes, so
/// it stays open); returns how many the server reset with REFUSED_STREAM.
fn refused_streams(addr: &str, n: u32) -> usize {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00");
    // HPACK, no Huffman: :method POST, :scheme http (static 3, 6), then
    // :path and content-type as literals with static names (4, 31).
    let path = b"/pact.v1.RaftTransport/AppendEntries";
    let mut block = vec![0x83, 0x86, 0x04, path.len() as u8];
    block.extend_from_slice(path);
    block.extend_from_slice(&[0x0f, 0x10, 16]);
    block.extend_from_slice(b"application/grpc");
    for i in 0..n {
        let id = 2 * i + 1;
        let len = block.len() as u32;
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.push(0x1); // HEADERS
        out.push(0x4); // END_HEADERS; no END_STREAM: the body is pending
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&block);
    }
    s.write_all(&out).expect("write streams");
    let (frames, _) = read_frames(&mut s, Duration::from_secs(3));
    frames
        .iter()
        .filter(|(t, _, p)| *t == 3 && p.as_slice() == 7u32.to_be_bytes())
        .count()
}

#[test]
fn servers_cap_streams_and_close_silent_connections_and_those_that_stop_answering_pings() {
    let c = Cluster::start_with_coordinators(1, 1, 1, 1, fast_tuning());
    // Both ports of every node: the client port and the peer port.
    let ports: Vec<(NodeId, String)> = c
        .config
        .nodes
        .iter()
        .flat_map(|n| [(n.id, n.addr.clone()), (n.id, n.peer_addr.clone())])
        .collect();
    // The ports are checked side by side: each waits tens of seconds for
    // its keepalive to give up.
    std::thread::scope(|scope| {
        for (n, addr) in &ports {
            scope.spawn(move || {
                let deadline = std::time::Instant::now() + Duration::from_secs(20);
                // Up, and then two sockets that connect and stay silent, one
                // of them after a few bytes: closed unserved within
                // pact_raft::server::FIRST_BYTES_TIMEOUT (10 s), TLS or not.
                let mut silent = loop {
                    match std::net::TcpStream::connect(addr) {
                        Ok(s) => break s,
                        Err(e) if std::time::Instant::now() > deadline => panic!("node {n}: {e}"),
                        Err(_) => std::thread::sleep(Duration::from_millis(100)),
                    }
                };
                let mut partial = std::net::TcpStream::connect(addr).unwrap();
                partial.write_all(b"PRI *").unwrap();
                let opened = std::time::Instant::now();
                // A client that ignores the announced limit gets the excess
                // refused, not served.
                let refused = refused_streams(addr, 300);
                assert_eq!(refused, 300 - 256, "node {n}: streams refused out of 300");
                for (what, sock) in [("silent", &mut silent), ("partial", &mut partial)] {
                    let left = Duration::from_secs(25).saturating_sub(opened.elapsed());
                    let (frames, eof) = read_frames(sock, left);
                    assert!(
                        eof && frames.is_empty(),
                        "node {n}: {what} connection not closed unserved within 25 s: {frames:?}"
                    );
                }
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                // Client preface and an empty SETTINGS frame; then never answer.
                s.write_all(
                    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
                )
                .unwrap();
                let (frames, _) = read_frames(&mut s, Duration::from_secs(2));
                let settings = frames
                    .iter()
                    .find(|(t, flags, _)| *t == 4 && flags & 1 == 0)
                    .unwrap_or_else(|| panic!("node {n}: no SETTINGS frame in {frames:?}"));
                let max_streams = settings
                    .2
                    .chunks(6)
                    .find(|e| e.len() == 6 && u16::from_be_bytes([e[0], e[1]]) == 3)
                    .map(|e| u32::from_be_bytes([e[2], e[3], e[4], e[5]]));
                assert_eq!(
                    max_streams,
                    // pact_raft::server::MAX_CONCURRENT_STREAMS
                    Some(256),
                    "node {n}: SETTINGS_MAX_CONCURRENT_STREAMS"
                );
                // The server pings an idle connection and closes it when the pings
                // go unanswered: a dead or half-open peer does not hold it forever.
                let (frames, eof) = read_frames(&mut s, Duration::from_secs(40));
                assert!(
                    frames.iter().any(|(t, _, _)| *t == 6),
                    "node {n}: no PING within 40 s: {frames:?}"
                );
                assert!(
                    eof,
                    "node {n}: connection still open after unanswered pings"
                );
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_refuses_reserved_transaction_ids() {
    let c = Cluster::start_with_coordinators(1, 1, 1, 1, fast_tuning());
    let leader = c.wait_coordinator(1, Duration::from_secs(20)).await;
    let addr = c.config.node(leader).unwrap().addr.clone();
    let mut txn = pb::txn_client::TxnClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    for (id, needle) in [
        (
            pb::TxnId {
                group: 1,
                node: leader.0,
                ts: 0,
            },
            "timestamp 0",
        ),
        (
            pb::TxnId {
                group: 0,
                node: leader.0,
                ts: 12345,
            },
            "group 0",
        ),
    ] {
        let req = || pb::TxnRequest {
            txn: Some(id),
            ..Default::default()
        };
        for (what, r) in [
            ("rollback", txn.rollback(req()).await.map(|_| ())),
            ("txn_status", txn.txn_status(req()).await.map(|_| ())),
            ("keepalive", txn.keepalive(req()).await.map(|_| ())),
            ("commit", txn.commit(req()).await.map(|_| ())),
        ] {
            match r {
                Err(e) if e.code() == tonic::Code::InvalidArgument => {
                    assert!(e.message().contains(needle), "{what} {id:?}: {e}")
                }
                other => panic!("{what} of {id:?}: expected InvalidArgument, got {other:?}"),
            }
        }
    }
}
