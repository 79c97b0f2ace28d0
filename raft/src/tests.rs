//! Storage conformance: openraft's own test suite for log stores and state
//! machines, run against the fjall implementation; plus durability of the
//! group-commit writer across reopen.

use std::sync::Arc;

use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;

use crate::log_store::LogStore;
use crate::state_machine::{Applied, Apply, StateMachine, StateView};
use crate::store::{group_key, NodeStore, Op, Space};
use crate::types::TypeConfig;

/// Stores each command under its index, so applies are observable.
struct Echo;

impl Apply for Echo {
    fn apply(
        &self,
        _s: &StateView<'_>,
        index: u64,
        _term: u64,
        command: &[u8],
    ) -> Result<Applied, String> {
        Ok(Applied {
            writes: vec![(index.to_be_bytes().to_vec(), Some(command.to_vec()))],
            reply: command.to_vec(),
        })
    }
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().map_err(|e| {
            StorageError::read(
                <openraft::impls::BoxedErrorSource as openraft::errors::ErrorSource>::from_error(
                    &e,
                ),
            )
        })?;
        let store = NodeStore::open(dir.path()).map_err(|e| {
            StorageError::read(
                <openraft::impls::BoxedErrorSource as openraft::errors::ErrorSource>::from_error(
                    &e,
                ),
            )
        })?;
        // A non-zero group id, so prefixing bugs cannot hide behind group 0.
        let group = 7;
        Ok((
            dir,
            LogStore::new(group, store.clone()),
            StateMachine::new(group, store, Arc::new(Echo), Arc::default()),
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite() {
    Suite::test_all(Builder)
        .await
        .expect("openraft storage suite");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_writes_survive_reopen_and_groups_do_not_mix() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = NodeStore::open(dir.path()).unwrap();
        store
            .write_durable(vec![
                Op::Put(Space::Sm, group_key(1, b"a"), b"one".to_vec()),
                Op::Put(Space::Sm, group_key(2, b"a"), b"two".to_vec()),
            ])
            .await
            .unwrap();
        store
            .write_durable(vec![Op::DeleteRange(
                Space::Sm,
                group_key(2, b""),
                crate::store::group_end(2),
            )])
            .await
            .unwrap();
    }
    let store = NodeStore::open(dir.path()).unwrap();
    assert_eq!(
        store.get_sync(Space::Sm, &group_key(1, b"a")).unwrap(),
        Some(b"one".to_vec())
    );
    assert_eq!(
        store.get_sync(Space::Sm, &group_key(2, b"a")).unwrap(),
        None
    );
}

#[test]
fn prefix_ends_bound_exactly_the_prefixed_keys() {
    use crate::store::prefix_end;
    assert_eq!(prefix_end(b"p"), Some(b"q".to_vec()));
    assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
    assert_eq!(prefix_end(b"\xff\xff"), None);
    let end = prefix_end(b"p").unwrap();
    assert!(b"p\xff\xff".as_slice() < end.as_slice() && b"q".as_slice() >= end.as_slice());
}

#[test]
fn group_ranges_are_disjoint_and_ordered() {
    use crate::store::{group_end, log_key};
    assert!(log_key(1, u64::MAX) < group_end(1));
    assert!(group_end(1) <= log_key(2, 0));
    let top = u64::MAX - 1;
    assert!(log_key(top, u64::MAX) < group_end(top));
    assert!(group_end(top) <= log_key(u64::MAX, 0));
}

fn normal_entry(index: u64, bytes: usize) -> crate::types::Entry {
    use openraft::impls::leader_id_adv::LeaderId;
    openraft::Entry {
        log_id: openraft::LogId::new(
            LeaderId {
                term: 1,
                node_id: 1,
            },
            index,
        ),
        payload: openraft::EntryPayload::Normal(crate::types::Command(vec![7; bytes])),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_reads_are_bounded_by_bytes_not_only_entries() {
    use crate::codec::encode;
    use crate::log_store::MAX_APPEND_BYTES;
    use openraft::RaftLogReader;
    let dir = tempfile::tempdir().unwrap();
    let store = NodeStore::open(dir.path()).unwrap();
    let group = 3;
    let big = 1 << 20;
    let mut ops = Vec::new();
    for i in 1..=20 {
        let e = normal_entry(i, big);
        ops.push(Op::Put(
            Space::Log,
            crate::store::log_key(group, i),
            encode(&e).unwrap(),
        ));
    }
    store.write_durable(ops).await.unwrap();
    let mut log = LogStore::new(group, store.clone());

    let sent = log.limited_get_log_entries(1, 21).await.unwrap();
    let bytes: usize = sent.iter().map(|e| encode(e).unwrap().len()).sum();
    assert!(
        !sent.is_empty() && bytes < MAX_APPEND_BYTES + big + 1024,
        "one append would carry {} entries, {bytes} bytes",
        sent.len()
    );
    assert_eq!(sent[0].log_id.index, 1);
    // Consecutive from the start, as openraft requires.
    for (i, e) in sent.iter().enumerate() {
        assert_eq!(e.log_id.index, i as u64 + 1);
    }

    // One entry above the budget still goes, alone.
    let huge = normal_entry(21, MAX_APPEND_BYTES + 1);
    store
        .write_durable(vec![Op::Put(
            Space::Log,
            crate::store::log_key(group, 21),
            encode(&huge).unwrap(),
        )])
        .await
        .unwrap();
    let sent = log.limited_get_log_entries(21, 22).await.unwrap();
    assert_eq!(sent.len(), 1);

    // Small entries are not held back.
    let small = LogStore::new(group + 1, store.clone());
    let mut ops = Vec::new();
    for i in 1..=50 {
        ops.push(Op::Put(
            Space::Log,
            crate::store::log_key(group + 1, i),
            encode(&normal_entry(i, 100)).unwrap(),
        ));
    }
    store.write_durable(ops).await.unwrap();
    let mut small = small;
    assert_eq!(
        small.limited_get_log_entries(1, 51).await.unwrap().len(),
        50
    );
}

#[test]
fn commands_encode_as_one_byte_string() {
    use crate::codec::{decode, encode};
    use crate::types::Command;
    // The hand-written impl must encode as the derived one would (length,
    // then the bytes), only faster.
    #[derive(serde::Serialize)]
    struct Derived(Vec<u8>);
    let bytes: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let new = encode(&Command(bytes.clone())).unwrap();
    assert_eq!(new, encode(&Derived(bytes.clone())).unwrap());
    assert_eq!(decode::<Command>(&new, "command").unwrap(), Command(bytes));
}

/// `v` decodes back to itself (compared through `Debug`, as openraft's
/// messages are not `PartialEq`), and re-encodes to the same bytes.
fn round_trip<T>(v: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    use crate::codec::{decode, encode, FORMAT_VERSION};
    let b = encode(v).unwrap();
    assert_eq!(b[0], FORMAT_VERSION);
    let back = decode::<T>(&b, std::any::type_name::<T>()).unwrap();
    assert_eq!(format!("{back:?}"), format!("{v:?}"));
    assert_eq!(encode(&back).unwrap(), b);
}

/// Every type the store keeps, and every Raft message, survives encode
/// and decode unchanged.
#[test]
fn every_stored_type_and_message_round_trips() {
    use crate::types::{Entry, LogId, SnapshotMeta, StoredMembership, Vote};
    use openraft::impls::leader_id_adv::LeaderId;
    use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse};
    use openraft::{BasicNode, EntryPayload, Membership};
    use std::collections::{BTreeMap, BTreeSet};

    let leader = LeaderId {
        term: 5,
        node_id: 2,
    };
    let log_id = LogId::new(leader, 41);
    let nodes: BTreeMap<u64, BasicNode> = (1..=3)
        .map(|i| (i, BasicNode::new(format!("127.0.0.1:{}", 7000 + i))))
        .collect();
    let membership: Membership<u64, BasicNode> =
        Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes).unwrap();
    let entries: Vec<Entry> = vec![
        normal_entry(9, 5000),
        Entry {
            log_id,
            payload: EntryPayload::Blank,
        },
        Entry {
            log_id,
            payload: EntryPayload::Membership(membership.clone()),
        },
    ];
    for e in &entries {
        round_trip(e); // `log`
    }
    let mut vote = Vote::new(5, 2);
    round_trip(&vote); // `meta` vote
    vote.committed = true;
    round_trip(&vote);
    round_trip(&Some(log_id)); // `meta` committed, `smmeta` applied
    round_trip(&None::<LogId>);
    round_trip(&log_id); // `meta` purged
    round_trip(&leader); // `meta` rejoin floor
    let stored = StoredMembership::new(Some(log_id), membership);
    round_trip(&stored); // `smmeta` membership
    round_trip(&StoredMembership::default());
    // Snapshot data.
    round_trip(&vec![
        (b"k".to_vec(), vec![0u8; 300]),
        (Vec::new(), Vec::new()),
    ]);

    // Raft messages use the same encoding.
    round_trip(&AppendEntriesRequest::<TypeConfig> {
        vote,
        prev_log_id: Some(log_id),
        entries,
        leader_commit: Some(log_id),
    });
    round_trip(&AppendEntriesResponse::<TypeConfig>::Success);
    round_trip(&AppendEntriesResponse::<TypeConfig>::Conflict);
    round_trip(&AppendEntriesResponse::<TypeConfig>::HigherVote(vote));
    round_trip(&VoteRequest::<TypeConfig>::new(vote, Some(log_id)));
    round_trip(&VoteResponse::<TypeConfig>::new(vote, Some(log_id), true));
    round_trip(&SnapshotMeta {
        last_log_id: Some(log_id),
        last_membership: stored,
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_store_records_its_format_and_reopens() {
    use crate::store::FORMAT_KEY;
    let dir = tempfile::tempdir().unwrap();
    let store = NodeStore::open(dir.path()).unwrap();
    assert_eq!(
        store.get_sync(Space::Meta, FORMAT_KEY).unwrap(),
        Some(crate::codec::FORMAT_VERSION.to_string().into_bytes())
    );
    store
        .write_durable(vec![Op::Put(Space::Sm, group_key(1, b"a"), b"1".to_vec())])
        .await
        .unwrap();
    drop(store);
    NodeStore::open(dir.path()).expect("a store in the current format reopens");
}

/// Opening `dir` fails; the error's text.
fn open_refused(dir: &std::path::Path) -> String {
    match NodeStore::open(dir) {
        Ok(_) => panic!("the store opened"),
        Err(e) => {
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
            e.to_string()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_of_a_newer_or_unknown_format_refuses_to_open() {
    use crate::store::FORMAT_KEY;
    let dir = tempfile::tempdir().unwrap();
    let store = NodeStore::open(dir.path()).unwrap();
    store
        .write_durable(vec![Op::Put(
            Space::Meta,
            FORMAT_KEY.to_vec(),
            b"99".to_vec(),
        )])
        .await
        .unwrap();
    drop(store);
    let msg = open_refused(dir.path());
    assert!(msg.contains("format version 99"), "{msg}");
    assert!(
        msg.contains("newer than this build supports (version 1)"),
        "{msg}"
    );
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    // It keeps refusing: the failed open changed nothing.
    assert!(open_refused(dir.path()).contains("format version 99"));

    let dir = tempfile::tempdir().unwrap();
    let store = NodeStore::open(dir.path()).unwrap();
    store
        .write_durable(vec![Op::Put(
            Space::Meta,
            FORMAT_KEY.to_vec(),
            b"\x01garbage".to_vec(),
        )])
        .await
        .unwrap();
    drop(store);
    let msg = open_refused(dir.path());
    assert!(msg.contains("unreadable format record"), "{msg}");
}

/// A directory with data but no format record is what a build before the
/// versioned format left behind: refused, not misread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_from_before_the_format_record_refuses_to_open() {
    use crate::store::FORMAT_KEY;
    let dir = tempfile::tempdir().unwrap();
    let store = NodeStore::open(dir.path()).unwrap();
    store
        .write_durable(vec![
            // A bincode 1 vote: term and node id as fixed little-endian u64s.
            Op::Put(
                Space::Meta,
                group_key(1, b"vote"),
                [5u64.to_le_bytes(), 2u64.to_le_bytes()].concat(),
            ),
            Op::Delete(Space::Meta, FORMAT_KEY.to_vec()),
        ])
        .await
        .unwrap();
    drop(store);
    let msg = open_refused(dir.path());
    assert!(msg.contains("no format record"), "{msg}");
    assert!(
        msg.contains("older than the versioned on-disk format"),
        "{msg}"
    );
}

/// A stored value that does not decode is an error naming what it is,
/// never a default (an empty log, no vote, nothing applied).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_value_is_a_decode_error_not_a_default() {
    use crate::store::{log_key, META_VOTE, SM_APPLIED};
    use openraft::storage::{RaftLogStorage, RaftStateMachine};
    use openraft::RaftLogReader;
    let dir = tempfile::tempdir().unwrap();
    let store = NodeStore::open(dir.path()).unwrap();
    let group = 3;
    let mut good = crate::codec::encode(&normal_entry(4, 10)).unwrap();
    let mut truncated = crate::codec::encode(&normal_entry(5, 10)).unwrap();
    truncated.truncate(truncated.len() - 3);
    store
        .write_durable(vec![
            Op::Put(Space::Log, log_key(group, 4), good.clone()),
            Op::Put(Space::Log, log_key(group, 5), truncated),
            Op::Put(Space::Meta, group_key(group, META_VOTE), vec![1, 0xff]),
            Op::Put(Space::SmMeta, group_key(group, SM_APPLIED), Vec::new()),
        ])
        .await
        .unwrap();
    let mut log = LogStore::new(group, store.clone());
    let e = log.try_get_log_entries(4..6).await.unwrap_err();
    assert!(e.to_string().contains("log entry 5 of group 3"), "{e}");
    let e = log.get_log_state().await.unwrap_err();
    assert!(e.to_string().contains("log entry 5 of group 3"), "{e}");
    let e = log.read_vote().await.unwrap_err();
    assert!(e.to_string().contains("meta `vote` of group 3"), "{e}");
    let mut sm = StateMachine::new(group, store.clone(), Arc::new(Echo), Arc::default());
    let e = sm.applied_state().await.unwrap_err();
    assert!(e.to_string().contains("`applied` of group 3"), "{e}");

    // A value from a newer format names its version.
    good[0] = 2;
    store
        .write_durable(vec![Op::Put(Space::Log, log_key(group, 5), good)])
        .await
        .unwrap();
    let e = log.try_get_log_entries(5..6).await.unwrap_err();
    assert!(e.to_string().contains("format version 2"), "{e}");
}

/// The memtable bound from the config reaches fjall: 8 MiB written with a
/// 1 MiB memtable is flushed to tables on disk, while with the 64 MiB that
/// fjall would pick by itself it all stays in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memtables_are_flushed_at_the_configured_size() {
    async fn on_disk_after_8_mib(memtable_mb: u64, wait_for: u64) -> u64 {
        let dir = tempfile::tempdir().unwrap();
        let limits = pact_common::StorageTuning {
            memtable_mb,
            ..pact_common::StorageTuning::default()
        };
        let store = NodeStore::open_with(dir.path(), &limits).unwrap();
        for batch in 0..64u32 {
            let ops = (0..32u32)
                .map(|i| {
                    let key = group_key(1, format!("k{batch:03}-{i:03}").as_bytes());
                    Op::Put(Space::Sm, key, vec![batch as u8; 4096])
                })
                .collect();
            store.write_durable(ops).await.unwrap();
        }
        // Flushes run on fjall's workers; give them a moment.
        for _ in 0..100 {
            if store.sm.disk_space() >= wait_for {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        store.sm.disk_space()
    }
    assert!(on_disk_after_8_mib(1, 4 << 20).await >= 4 << 20);
    // Nothing to wait for (and a flush would show within the 5 s).
    assert_eq!(on_disk_after_8_mib(64, 1).await, 0);
}

/// A table block damaged on disk is never served: opening refuses it as
/// corrupt, or reading it fails and poisons the store, which then refuses
/// every later read and write with the reason. What is served is exactly
/// what was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_table_block_is_an_error_that_poisons_the_store_never_data() {
    let dir = tempfile::tempdir().unwrap();
    let limits = pact_common::StorageTuning {
        memtable_mb: 1,
        ..pact_common::StorageTuning::default()
    };
    let value = |k: u32| format!("value of {k:05} ").repeat(256).into_bytes();
    let keys = 0..1024u32;
    {
        let store = NodeStore::open_with(dir.path(), &limits).unwrap();
        for chunk in keys.clone().collect::<Vec<_>>().chunks(32) {
            let ops = chunk
                .iter()
                .map(|k| Op::Put(Space::Sm, group_key(1, &k.to_be_bytes()), value(*k)))
                .collect();
            store.write_durable(ops).await.unwrap();
        }
        for _ in 0..100 {
            if store.sm.disk_space() >= 2 << 20 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(
            store.sm.disk_space() >= 2 << 20,
            "nothing flushed to tables"
        );
    }
    // Damage a few bytes in the first quarter (data blocks come first) of
    // every table file.
    let mut damaged = 0;
    for ks in std::fs::read_dir(dir.path().join("keyspaces")).unwrap() {
        let tables = ks.unwrap().path().join("tables");
        let Ok(files) = std::fs::read_dir(&tables) else {
            continue;
        };
        for f in files {
            let path = f.unwrap().path();
            let mut b = std::fs::read(&path).unwrap();
            if b.len() < 64 << 10 {
                continue;
            }
            let at = b.len() / 4;
            for x in &mut b[at..at + 16] {
                *x ^= 0xa5;
            }
            std::fs::write(&path, b).unwrap();
            damaged += 1;
        }
    }
    assert!(damaged > 0, "no table to damage");
    let store = match NodeStore::open_with(dir.path(), &limits) {
        Err(e) => {
            let e = e.to_string();
            assert!(
                e.contains("corrupt") && e.contains("refuses to start"),
                "{e}"
            );
            return;
        }
        Ok(s) => s,
    };
    let mut failed = None;
    for k in keys {
        match store.get_sync(Space::Sm, &group_key(1, &k.to_be_bytes())) {
            Ok(v) => assert_eq!(v, Some(value(k)), "key {k} served wrong data"),
            Err(e) => {
                failed = Some(e.to_string());
                break;
            }
        }
    }
    let e = failed.expect("every read of a damaged table succeeded");
    assert!(e.contains("checksum") || e.contains("corrupt"), "{e}");
    assert!(store.is_poisoned());
    let why = store.poison_reason().unwrap();
    assert!(why.starts_with("storage failed: read in "), "{why}");
    // Nothing more is read or written.
    assert!(store.get_sync(Space::Sm, &group_key(1, b"x")).is_err());
    assert!(store
        .write_durable(vec![Op::Put(Space::Sm, group_key(1, b"x"), b"y".to_vec())])
        .await
        .is_err());
}

/// A full writer queue is backpressure, not an error: with room for one
/// job, many writers at once all wait their turn and all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_writer_queue_makes_writers_wait_not_fail() {
    let dir = tempfile::tempdir().unwrap();
    let limits = pact_common::StorageTuning {
        writer_queue: 1,
        ..pact_common::StorageTuning::default()
    };
    let store = NodeStore::open_with(dir.path(), &limits).unwrap();
    let writes = (0..64u32).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            let key = group_key(9, format!("w{i:02}").as_bytes());
            store
                .write_durable(vec![Op::Put(Space::Sm, key, vec![1; 64])])
                .await
        })
    });
    for r in futures::future::join_all(writes).await {
        r.unwrap().unwrap();
    }
    for i in 0..64u32 {
        let key = group_key(9, format!("w{i:02}").as_bytes());
        assert!(
            store.get_sync(Space::Sm, &key).unwrap().is_some(),
            "w{i:02}"
        );
    }
}

/// The log tail (`crate::tail`) serves the newest entries but never one
/// a delete removed, whoever queued the delete: a wipe of the group
/// through the node store (as after an unreadable snapshot file) empties
/// its reads at once and leaves other groups' alone; a truncation and a
/// purge do the same for what they cover; entries written again are
/// read back as the new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_tail_never_serves_deleted_entries() {
    use openraft::storage::{IOFlushed, RaftLogStorage};
    use openraft::{EntryPayload, RaftLogReader};

    use crate::store::{group_end, group_prefix};
    use crate::types::{Entry, LogId};

    let id = |term: u64, index: u64| {
        LogId::new(
            openraft::impls::leader_id_adv::LeaderId { term, node_id: 1 },
            index,
        )
    };
    let entries = |term: u64, r: std::ops::RangeInclusive<u64>| -> Vec<Entry> {
        r.map(|i| Entry {
            log_id: id(term, i),
            payload: EntryPayload::Blank,
        })
        .collect()
    };
    async fn read(log: &mut LogStore, r: std::ops::Range<u64>) -> Vec<(u64, u64)> {
        log.try_get_log_entries(r)
            .await
            .unwrap()
            .iter()
            .map(|e| (e.log_id.index, e.log_id.leader_id.term))
            .collect()
    }
    let dir = tempfile::tempdir().unwrap();
    let store = NodeStore::open(dir.path()).unwrap();
    let mut log = LogStore::new(7, store.clone());
    let mut other = LogStore::new(8, store.clone());
    log.append(entries(1, 1..=5), IOFlushed::noop())
        .await
        .unwrap();
    other
        .append(entries(1, 1..=3), IOFlushed::noop())
        .await
        .unwrap();
    assert_eq!(read(&mut log, 2..4).await, vec![(2, 1), (3, 1)]);

    store
        .write_durable(vec![Op::DeleteRange(
            Space::Log,
            group_prefix(7).to_vec(),
            group_end(7),
        )])
        .await
        .unwrap();
    assert_eq!(read(&mut log, 1..6).await, vec![]);
    assert_eq!(read(&mut other, 1..4).await.len(), 3);

    log.append(entries(2, 1..=4), IOFlushed::noop())
        .await
        .unwrap();
    assert_eq!(read(&mut log, 3..5).await, vec![(3, 2), (4, 2)]);
    log.truncate_after(Some(id(2, 2))).await.unwrap();
    assert_eq!(read(&mut log, 1..5).await, vec![(1, 2), (2, 2)]);
    log.append(entries(3, 3..=3), IOFlushed::noop())
        .await
        .unwrap();
    assert_eq!(read(&mut log, 2..4).await, vec![(2, 2), (3, 3)]);
    log.purge(id(2, 1)).await.unwrap();
    assert_eq!(read(&mut log, 1..4).await, vec![(2, 2), (3, 3)]);
    // Replication reads entries from where it asked or none: the entries
    // after a purged head would go out as if they followed it.
    assert!(log.limited_get_log_entries(1, 4).await.unwrap().is_empty());
    assert_eq!(log.limited_get_log_entries(2, 4).await.unwrap().len(), 2);
    // The reader openraft hands to replication shares the same tail.
    let mut reader = log.get_log_reader().await;
    assert_eq!(read(&mut reader, 3..4).await, vec![(3, 3)]);
}

/// A replica hosted at run time is recorded before it starts; dropping it
/// records that first, then deletes everything of the group but its vote
/// and the record, and the wipe can be run again (a crash cut it short).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosting_is_recorded_and_a_dropped_group_keeps_only_its_vote() {
    use crate::replica::{Host, Hosting, Member, Replica, Tuning};
    use crate::store::{META_HOSTING, META_VOTE, SM_APPLIED};
    let dir = tempfile::tempdir().unwrap();
    let host = Host::new(
        NodeStore::open(dir.path()).unwrap(),
        crate::network::Peers::new(None),
    );
    let tuning = Tuning {
        heartbeat_ms: 50,
        election_timeout_min_ms: 300,
        election_timeout_max_ms: 600,
        snapshot_logs: 1000,
        keep_logs: 100,
        lease_reads: false,
        snapshot_bytes_per_sec: 0,
    };
    let voters = vec![Member {
        id: 1,
        peer_addr: "127.0.0.1:1".into(),
        client_addr: "127.0.0.1:2".into(),
    }];
    let r = Replica::start_joined(7, 2, voters, &tuning, Arc::new(Echo), &host)
        .await
        .unwrap();
    assert_eq!(
        host.hosting().await.unwrap(),
        std::collections::BTreeMap::from([(7, Hosting::Joined { voters: vec![1] })])
    );
    assert_eq!(host.replicas.list().len(), 1);
    // What a replica accumulates: a vote, applied state, data, log.
    let store = host.store.clone();
    store
        .write_durable(vec![
            Op::Put(
                Space::Meta,
                group_key(7, META_VOTE),
                crate::codec::encode(&crate::types::Vote::new_committed(3, 2)).unwrap(),
            ),
            Op::Put(Space::Meta, group_key(7, b"committed"), b"c".to_vec()),
            Op::Put(Space::SmMeta, group_key(7, SM_APPLIED), b"a".to_vec()),
            Op::Put(Space::Sm, group_key(7, b"k"), b"x".to_vec()),
            Op::Put(Space::Log, group_key(7, &1u64.to_be_bytes()), b"e".to_vec()),
            // Another group's keys stay.
            Op::Put(Space::Sm, group_key(8, b"k"), b"y".to_vec()),
        ])
        .await
        .unwrap();
    r.remove_here(&host).await.unwrap();
    assert!(host.replicas.list().is_empty());
    assert_eq!(
        host.hosting().await.unwrap(),
        std::collections::BTreeMap::from([(7, Hosting::Dropped)])
    );
    let left = |space| {
        store
            .range_sync(
                space,
                &crate::store::group_prefix(7),
                &crate::store::group_end(7),
                usize::MAX,
                false,
            )
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        left(Space::Meta),
        vec![group_key(7, META_HOSTING), group_key(7, META_VOTE)]
    );
    for s in [Space::Sm, Space::SmMeta, Space::Log] {
        assert!(left(s).is_empty(), "{s:?} still holds keys of group 7");
    }
    // The vote keeps its term but no longer says "granted": added back,
    // the replica must not restore itself as leader of an empty log.
    let vote: crate::types::Vote = crate::codec::decode(
        &store
            .get_sync(Space::Meta, &group_key(7, META_VOTE))
            .unwrap()
            .unwrap(),
        "vote",
    )
    .unwrap();
    assert_eq!(vote, crate::types::Vote::new(3, 2));
    assert_eq!(
        store.get_sync(Space::Sm, &group_key(8, b"k")).unwrap(),
        Some(b"y".to_vec())
    );
    // A crash between the record and the end of the wipe: the next start
    // wipes again.
    store
        .write_durable(vec![Op::Put(
            Space::Sm,
            group_key(7, b"late"),
            b"z".to_vec(),
        )])
        .await
        .unwrap();
    host.wipe_dropped(7).await.unwrap();
    assert!(left(Space::Sm).is_empty());
    host.wipe_dropped(7).await.unwrap();
}

/// A purge returns once its point is recorded; its entries go afterwards,
/// a few at a time between the writer's rounds. Reads skip them from the
/// start; a wipe of the group waits for a purge queued before it (or the
/// purge would delete a new replica's entries); and entries a crash left
/// below the point are neither read nor counted, and go with the next
/// purge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_deletes_its_entries_in_the_background() {
    use std::time::Duration;

    use openraft::storage::{IOFlushed, RaftLogStorage};
    use openraft::{EntryPayload, RaftLogReader};

    use crate::store::{group_end, group_prefix, log_key, META_PURGED};
    use crate::types::{Entry, LogId};

    let id = |index: u64| {
        LogId::new(
            openraft::impls::leader_id_adv::LeaderId {
                term: 1,
                node_id: 1,
            },
            index,
        )
    };
    let entries = |r: std::ops::RangeInclusive<u64>| -> Vec<Entry> {
        r.map(|i| Entry {
            log_id: id(i),
            payload: EntryPayload::Blank,
        })
        .collect()
    };
    async fn indexes(log: &mut LogStore, r: std::ops::Range<u64>) -> Vec<u64> {
        log.try_get_log_entries(r)
            .await
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect()
    }
    // Entries of `group` stored at or below `upto`, whatever reads skip.
    let stored = |store: &Arc<NodeStore>, group: u64, upto: u64| {
        store
            .range_sync(
                Space::Log,
                &log_key(group, 0),
                &log_key(group, upto + 1),
                usize::MAX,
                false,
            )
            .unwrap()
            .len()
    };
    let settled = |store: Arc<NodeStore>, group: u64, upto: u64| async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while stored(&store, group, upto) > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the purge's entries were never deleted"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let store = NodeStore::open(dir.path()).unwrap();

    let mut log = LogStore::new(7, store.clone());
    log.append(entries(1..=1000), IOFlushed::noop())
        .await
        .unwrap();
    log.purge(id(700)).await.unwrap();
    assert_eq!(
        indexes(&mut log, 1..1001).await,
        (701..=1000).collect::<Vec<_>>()
    );
    assert!(log
        .limited_get_log_entries(1, 800)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        log.limited_get_log_entries(701, 703).await.unwrap().len(),
        2
    );
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(id(700)));
    assert_eq!(state.last_log_id, Some(id(1000)));
    settled(store.clone(), 7, 700).await;
    assert_eq!(stored(&store, 7, 1000), 300);

    // A wipe queued behind a purge that waits in the lane (behind another
    // group's), then a new replica's entries at indexes the purge covered
    // (from a snapshot older than the purge point), more than the tail
    // holds: they survive the purge, and are read from fjall.
    let mut ahead = LogStore::new(6, store.clone());
    ahead
        .append(entries(1..=30_000), IOFlushed::noop())
        .await
        .unwrap();
    let mut log = LogStore::new(8, store.clone());
    log.append(entries(1..=20_000), IOFlushed::noop())
        .await
        .unwrap();
    ahead.purge(id(29_000)).await.unwrap();
    log.purge(id(19_000)).await.unwrap();
    store
        .write_durable(vec![Op::DeleteRange(
            Space::Log,
            group_prefix(8).to_vec(),
            group_end(8),
        )])
        .await
        .unwrap();
    let mut again = LogStore::new(8, store.clone());
    again
        .append(entries(10_001..=12_000), IOFlushed::noop())
        .await
        .unwrap();
    settled(store.clone(), 6, 29_000).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(stored(&store, 8, 20_000), 2000);
    assert_eq!(
        indexes(&mut again, 10_001..10_004).await,
        vec![10_001, 10_002, 10_003]
    );

    // As if a crash cut a purge's delete short: the point is recorded,
    // the entries are still there. A new log store (a new process) reads
    // none of them, ends its log at the point if nothing follows it, and
    // deletes them with its first purge.
    let mut log = LogStore::new(9, store.clone());
    log.append(entries(1..=10), IOFlushed::noop())
        .await
        .unwrap();
    let point = |i: u64| {
        Op::Put(
            Space::Meta,
            crate::store::group_key(9, META_PURGED),
            crate::codec::encode(&id(i)).unwrap(),
        )
    };
    store.write_durable(vec![point(12)]).await.unwrap();
    let mut log = LogStore::new(9, store.clone());
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(id(12)));
    assert_eq!(state.last_log_id, Some(id(12)), "the log ends at the point");
    assert!(indexes(&mut log, 1..13).await.is_empty());
    log.append(entries(13..=14), IOFlushed::noop())
        .await
        .unwrap();
    log.purge(id(13)).await.unwrap();
    settled(store.clone(), 9, 13).await;
    assert_eq!(indexes(&mut log, 1..15).await, vec![14]);
}

/// An entry whose apply fails stops the batch: the entries queued behind
/// it in the same writer round, blank and membership entries included
/// (they write only the applied index), refuse too, so the stored applied
/// index never moves past an entry that did not apply (after a restart it
/// would be skipped for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_apply_is_never_skipped_by_a_later_entry_of_its_batch() {
    use openraft::storage::RaftStateMachine;

    struct FailsOnBad;
    impl Apply for FailsOnBad {
        fn apply(
            &self,
            _s: &StateView<'_>,
            _index: u64,
            _term: u64,
            command: &[u8],
        ) -> Result<Applied, String> {
            if command == b"bad" {
                return Err("cannot apply".into());
            }
            Ok(Applied {
                writes: Vec::new(),
                reply: Vec::new(),
            })
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let store = NodeStore::open(dir.path()).unwrap();
    let mut sm = StateMachine::new(7, store, Arc::new(FailsOnBad), Arc::default());
    let mut good = normal_entry(1, 4);
    good.payload = openraft::EntryPayload::Normal(crate::types::Command(b"good".to_vec()));
    let mut bad = normal_entry(2, 4);
    bad.payload = openraft::EntryPayload::Normal(crate::types::Command(b"bad".to_vec()));
    let mut blank = normal_entry(3, 4);
    blank.payload = openraft::EntryPayload::Blank;
    let entries: Vec<Result<_, std::io::Error>> =
        vec![Ok((good, None)), Ok((bad, None)), Ok((blank, None))];
    let r = sm.apply(futures::stream::iter(entries)).await;
    assert!(r.is_err(), "the failed entry is reported");
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(
        applied.map(|l| l.index),
        Some(1),
        "applied past a failed entry"
    );
}

/// A state machine that panics in its apply, or in its `visible` hook;
/// both run on the storage writer thread.
struct Panics {
    in_visible: bool,
}

impl Apply for Panics {
    fn apply(
        &self,
        _s: &StateView<'_>,
        _index: u64,
        _term: u64,
        _command: &[u8],
    ) -> Result<Applied, String> {
        if !self.in_visible {
            panic!("deliberate panic in apply (test)");
        }
        Ok(Applied::default())
    }

    fn visible(&self, _command: &[u8], _reply: &[u8]) {
        panic!("deliberate panic in visible (test)");
    }
}

/// Applies one entry through `app` on a fresh store, checks that the
/// apply is reported failed and that the writer thread still answers (a
/// later write is refused, not left hanging), and returns why the store
/// is poisoned.
async fn poison_after_a_panic(app: Panics) -> String {
    use openraft::storage::RaftStateMachine;

    let dir = tempfile::tempdir().unwrap();
    let store = NodeStore::open(dir.path()).unwrap();
    let mut sm = StateMachine::new(7, store.clone(), Arc::new(app), Arc::default());
    let entries: Vec<Result<_, std::io::Error>> = vec![Ok((normal_entry(1, 4), None))];
    let r = sm.apply(futures::stream::iter(entries)).await;
    assert!(r.is_err(), "the apply is reported failed");
    assert!(store.is_poisoned());
    let later = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        store.write_durable(vec![Op::Put(Space::Meta, b"k".to_vec(), b"v".to_vec())]),
    )
    .await
    .expect("the writer answers after the panic");
    assert!(later.is_err(), "a poisoned store refuses writes");
    store.poison_reason().unwrap()
}

/// A panic on the storage writer thread (here in a state machine's
/// apply) poisons the store: the node says why and refuses everything
/// after, instead of leaving the round's waiters unanswered for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_on_the_writer_thread_poisons_the_store() {
    let why = poison_after_a_panic(Panics { in_visible: false }).await;
    assert!(why.contains("apply") && why.contains("panicked"), "{why}");
}

/// A panic in a state machine's `visible` hook, which runs on the writer
/// thread right after the entry's batch is written, is caught as one in
/// its apply is, instead of ending the writer with its queue unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_visible_hook_poisons_the_store_and_is_answered() {
    let why = poison_after_a_panic(Panics { in_visible: true }).await;
    assert!(why.contains("visible hook"), "{why}");
}
