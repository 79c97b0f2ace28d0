//! Bad input gets a clear error and loses nothing: oversized or empty keys,
//! oversized values and batches, unknown shards, misrouted keys, garbage on
//! the gRPC port, a peer sending undecodable Raft messages, a bad config.

use std::io::Write;
use std::time::Duration;

use pact_client::ClientError;
use pact_common::{ShardId, MAX_KEY_BYTES, MAX_VALUE_BYTES};
use pact_proto as pb;
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
            shard_id: 99,
            key: b"x".to_vec().into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert!(e.message().contains("unknown shard 99"), "{}", e.message());
    let e = raw
        .write(pb::WriteRequest {
            shard_id: shard.0,
            ops: vec![pb::WriteOp {
                key: other_key.clone().into(),
                op: Some(pb::write_op::Op::Put(b"v".to_vec().into())),
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("belongs to shard"), "{}", e.message());
    let e = raw
        .write(pb::WriteRequest {
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

    // A peer speaking garbage on the Raft transport.
    let mut rt = pb::raft_transport_client::RaftTransportClient::connect(format!("http://{addr}"))
        .await
        .expect("connect raft transport");
    let e = rt
        .append_entries(pb::RaftMessage {
            group: shard.0,
            from: 42,
            payload: b"\xde\xad\xbe\xef not bincode".to_vec().into(),
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
