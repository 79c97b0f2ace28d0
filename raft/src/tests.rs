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
            StateMachine::new(group, store, Arc::new(Echo)),
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
    use crate::log_store::{encode, MAX_APPEND_BYTES};
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
fn commands_encode_exactly_as_before_so_stored_logs_stay_readable() {
    use crate::log_store::{decode, encode};
    use crate::types::Command;
    #[derive(serde::Serialize)]
    struct Derived(Vec<u8>);
    let bytes: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let new = encode(&Command(bytes.clone())).unwrap();
    assert_eq!(new, encode(&Derived(bytes.clone())).unwrap());
    assert_eq!(decode::<Command>(&new).unwrap(), Command(bytes));
    let entry = normal_entry(9, 5000);
    assert_eq!(
        decode::<crate::types::Entry>(&encode(&entry).unwrap()).unwrap(),
        entry
    );
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
