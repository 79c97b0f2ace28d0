//! The shard state machine's application logic: what a committed command
//! does to the shard's keys. Pure and deterministic; the replication crate
//! stores the result.
//!
//! Stored layout inside the shard's state: user key `k` is stored as
//! `b"d" ++ k`, so internal records (transaction state, later) can live
//! beside user data under other prefixes without colliding with it.

use pact_raft::{Applied, Apply, StateView};
use serde::{Deserialize, Serialize};

/// Prefix of user data inside the shard's state.
pub const DATA_PREFIX: u8 = b'd';

/// One change in an atomic write batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOp {
    Put { key: Vec<u8>, value: Vec<u8> },
    Delete { key: Vec<u8> },
}

impl WriteOp {
    pub fn key(&self) -> &[u8] {
        match self {
            WriteOp::Put { key, .. } | WriteOp::Delete { key } => key,
        }
    }
}

/// A command replicated through a shard's Raft log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardCommand {
    /// Apply all ops atomically (the one-phase path).
    Write { ops: Vec<WriteOp> },
}

impl ShardCommand {
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain enums of byte vectors into a Vec cannot fail.
        bincode::serialize(self).unwrap_or_default()
    }

    pub fn decode(b: &[u8]) -> Result<Self, String> {
        bincode::deserialize(b).map_err(|e| format!("undecodable shard command: {e}"))
    }
}

pub fn data_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(DATA_PREFIX);
    k.extend_from_slice(key);
    k
}

/// The exclusive end of the user-data range.
pub fn data_end() -> Vec<u8> {
    vec![DATA_PREFIX + 1]
}

/// Turns committed shard commands into key changes.
#[derive(Debug, Default)]
pub struct KvApp;

impl KvApp {
    /// The effect of one command, given the current state. Separate from
    /// the trait so it can be tested without storage.
    pub fn effect(&self, cmd: &ShardCommand) -> Applied {
        match cmd {
            ShardCommand::Write { ops } => {
                // Several ops on one key in a batch: the last one wins. The
                // storage batch must not carry the same key twice, since its
                // order within one atomic batch is not defined.
                let mut last = std::collections::BTreeMap::new();
                for op in ops {
                    let v = match op {
                        WriteOp::Put { value, .. } => Some(value.clone()),
                        WriteOp::Delete { .. } => None,
                    };
                    last.insert(data_key(op.key()), v);
                }
                Applied {
                    writes: last.into_iter().collect(),
                    reply: Vec::new(),
                }
            }
        }
    }
}

impl Apply for KvApp {
    fn apply(
        &self,
        _state: &StateView<'_>,
        _index: u64,
        command: &[u8],
    ) -> Result<Applied, String> {
        let cmd = ShardCommand::decode(command)?;
        Ok(self.effect(&cmd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_round_trips() {
        let c = ShardCommand::Write {
            ops: vec![
                WriteOp::Put {
                    key: b"a".to_vec(),
                    value: b"1".to_vec(),
                },
                WriteOp::Delete { key: b"b".to_vec() },
            ],
        };
        assert_eq!(ShardCommand::decode(&c.encode()).unwrap(), c);
        assert!(ShardCommand::decode(b"\xff\xff\xff garbage").is_err());
    }

    #[test]
    fn effect_prefixes_user_keys_and_last_op_per_key_wins() {
        let c = ShardCommand::Write {
            ops: vec![
                WriteOp::Put {
                    key: b"k".to_vec(),
                    value: b"1".to_vec(),
                },
                WriteOp::Delete { key: b"k".to_vec() },
            ],
        };
        let a = KvApp.effect(&c);
        assert_eq!(a.writes, vec![(b"dk".to_vec(), None)]);
        let c = ShardCommand::Write {
            ops: vec![
                WriteOp::Put {
                    key: b"z".to_vec(),
                    value: b"1".to_vec(),
                },
                WriteOp::Put {
                    key: b"a".to_vec(),
                    value: b"2".to_vec(),
                },
            ],
        };
        assert_eq!(
            KvApp.effect(&c).writes,
            vec![
                (b"da".to_vec(), Some(b"2".to_vec())),
                (b"dz".to_vec(), Some(b"1".to_vec()))
            ]
        );
    }

    #[test]
    fn data_range_covers_all_data_keys_only() {
        assert!(data_key(b"") < data_end());
        assert!(data_key(&[0xff; 10]) < data_end());
        assert!(b"t-internal".to_vec() > data_end());
    }
}
