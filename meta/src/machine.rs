//! The member table as a pure state machine: commands in, key changes and
//! a reply out, with every check made at apply from the replicated state
//! alone, so every replica reaches the same table whatever its leader
//! checked before proposing.

use pact_common::{GroupRecord, RetiredShard, ShardRecord};
use pact_raft::codec;
use pact_raft::{Applied, Apply, Lookup, StateView, Writes};
use serde::{Deserialize, Serialize};

/// Set once the config's nodes are in the table: later seeds are no-ops,
/// so a config edited after the first start changes no membership.
const SEEDED_KEY: &[u8] = b"seeded";
/// `n` + the node id (big-endian): one [`Member`] each.
const NODE_PREFIX: u8 = b'n';
/// `d` + the shard id (big-endian): one [`ShardRecord`] each.
const SHARD_PREFIX: u8 = b'd';
/// `c` + the coordinator group id (big-endian): one [`GroupRecord`] each.
const GROUP_PREFIX: u8 = b'c';
/// `r` + the shard id (big-endian): one [`RetiredShard`] each, for a
/// merged shard whose group is gone. Kept apart from the shard records,
/// whose decoding is strict, so older readers of those are not broken.
const RETIRED_PREFIX: u8 = b'r';
/// How many shard records the table has taken (big-endian u64).
const EPOCH_KEY: &[u8] = b"epoch";

/// One node of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: u64,
    /// Client port (Kv, Txn, Admin, Meta).
    pub addr: String,
    /// Peer port (Raft, Participant).
    pub peer_addr: String,
    /// Removed members stay in the table so their ids are never reused.
    pub removed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// The config's nodes, proposed by the group's first leaders; applied
    /// only to a table never seeded.
    Seed(Vec<Member>),
    Add(Member),
    Remove {
        id: u64,
    },
    /// What shards' leaders said of their shards (the group's leader asks
    /// them): each record replaces its shard's only if newer
    /// ([`ShardRecord::newer_than`]), so a late or repeated report
    /// changes nothing.
    Shards(Vec<ShardRecord>),
    /// What coordinator groups' leaders said of their voters: each record
    /// replaces its group's only if its `voters_at` is larger.
    Groups(Vec<GroupRecord>),
    /// A merged shard whose group may go, as its leader checked
    /// (`Participant.Retirable`); the first record of a shard stays.
    Retire(RetiredShard),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaReply {
    Done,
    /// Not applied; the message says why (for the operator).
    Refused(String),
    /// Not applied, for now: ask again later.
    NotYet(String),
}

/// `prefix` + `id` (big-endian): a record's key.
fn keyed(prefix: u8, id: u64) -> Vec<u8> {
    let mut k = vec![prefix];
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// Decode every value of a scan as one `T`, in key order.
fn values_of<T: for<'de> Deserialize<'de>>(pairs: &[(Vec<u8>, Vec<u8>)]) -> Result<Vec<T>, String> {
    pairs.iter().map(|(_, v)| decode::<T>(v)).collect()
}

pub(crate) fn node_key(id: u64) -> Vec<u8> {
    keyed(NODE_PREFIX, id)
}

pub(crate) fn shard_key(id: u64) -> Vec<u8> {
    keyed(SHARD_PREFIX, id)
}

pub(crate) fn retired_key(id: u64) -> Vec<u8> {
    keyed(RETIRED_PREFIX, id)
}

/// The key range of every retired shard's record: `[start, end)`.
pub(crate) fn retired_range() -> (Vec<u8>, Vec<u8>) {
    (vec![RETIRED_PREFIX], vec![RETIRED_PREFIX + 1])
}

/// Decode the records of a scan of [`retired_range`], sorted by shard.
pub fn retired_of(pairs: &[(Vec<u8>, Vec<u8>)]) -> Result<Vec<RetiredShard>, String> {
    values_of(pairs)
}

/// The key range of every shard record, for a scan: `[start, end)`.
pub(crate) fn shard_range() -> (Vec<u8>, Vec<u8>) {
    (vec![SHARD_PREFIX], vec![SHARD_PREFIX + 1])
}

pub(crate) fn group_key(id: u64) -> Vec<u8> {
    keyed(GROUP_PREFIX, id)
}

/// The key range of every coordinator group record: `[start, end)`.
pub(crate) fn group_range() -> (Vec<u8>, Vec<u8>) {
    (vec![GROUP_PREFIX], vec![GROUP_PREFIX + 1])
}

/// Decode the records of a scan of [`group_range`], sorted by group.
pub fn groups_of(pairs: &[(Vec<u8>, Vec<u8>)]) -> Result<Vec<GroupRecord>, String> {
    values_of(pairs)
}

pub(crate) fn epoch_key() -> &'static [u8] {
    EPOCH_KEY
}

/// The epoch as stored (0 before the first shard record).
pub fn epoch_of(v: Option<&[u8]>) -> Result<u64, String> {
    match v {
        None => Ok(0),
        Some(b) => <[u8; 8]>::try_from(b)
            .map(u64::from_be_bytes)
            .map_err(|_| format!("shard table epoch of {} bytes", b.len())),
    }
}

/// Decode the records of a scan of [`shard_range`], sorted by shard.
pub fn shards_of(pairs: &[(Vec<u8>, Vec<u8>)]) -> Result<Vec<ShardRecord>, String> {
    values_of(pairs)
}

/// The key range of every member, for a scan: `[start, end)`.
pub(crate) fn node_range() -> (Vec<u8>, Vec<u8>) {
    (vec![NODE_PREFIX], vec![NODE_PREFIX + 1])
}

pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
    codec::encode(v).map_err(|e| e.to_string())
}

pub fn decode<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<T, String> {
    codec::decode(b, "metadata group value").map_err(|e| e.to_string())
}

/// Decode the members of a scan of [`node_range`], sorted by id.
pub fn members_of(pairs: &[(Vec<u8>, Vec<u8>)]) -> Result<Vec<Member>, String> {
    let mut out: Vec<Member> = pairs
        .iter()
        .map(|(_, v)| decode::<Member>(v))
        .collect::<Result<_, _>>()?;
    out.sort_by_key(|m| m.id);
    Ok(out)
}

/// The largest node id: a config file (TOML, signed 64-bit integers)
/// holds no larger one, and the routing table a client reads is checked
/// as a config.
pub const MAX_NODE_ID: u64 = i64::MAX as u64;

/// The longest address accepted (`host:port` of a client or peer port).
pub const MAX_ADDR_BYTES: usize = 255;

/// What the leader checks before proposing an addition: the parts of a
/// member that do not depend on the table (address syntax is checked here
/// and not at apply, so replicas of different builds cannot disagree).
pub fn check_new(m: &Member) -> Result<(), String> {
    if m.id == 0 || m.id > MAX_NODE_ID {
        return Err(format!(
            "node id {} is out of range: ids are 1..={MAX_NODE_ID}",
            m.id
        ));
    }
    for (what, a) in [("address", &m.addr), ("peer address", &m.peer_addr)] {
        if a.len() > MAX_ADDR_BYTES {
            return Err(format!(
                "node {}'s {what} is {} bytes long; at most {MAX_ADDR_BYTES}",
                m.id,
                a.len()
            ));
        }
        if a.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!("node {}'s {what} {a:?} is not ip:port", m.id));
        }
    }
    if m.addr == m.peer_addr {
        return Err(format!(
            "node {}'s address and peer address are the same ({}); they must differ",
            m.id, m.addr
        ));
    }
    Ok(())
}

/// The effect of `cmd` on the table: `get` reads one key, `all` lists
/// every member. Pure, so tests drive it with a map.
pub fn effect(
    get: Lookup<'_>,
    all: &dyn Fn() -> Result<Vec<Member>, String>,
    cmd: &MetaCommand,
) -> Result<(Writes, MetaReply), String> {
    let seeded = get(SEEDED_KEY).map_err(|e| e.to_string())?.is_some();
    let refused = |m: String| Ok((Vec::new(), MetaReply::Refused(m)));
    match cmd {
        MetaCommand::Seed(nodes) => {
            if seeded {
                return Ok((Vec::new(), MetaReply::Done));
            }
            let mut w: Writes = Vec::new();
            for n in nodes {
                w.push((node_key(n.id), Some(encode(n)?)));
            }
            w.push((SEEDED_KEY.to_vec(), Some(vec![1])));
            Ok((w, MetaReply::Done))
        }
        MetaCommand::Add(m) => {
            if !seeded {
                return Ok((
                    Vec::new(),
                    MetaReply::NotYet("the member table is not seeded yet".into()),
                ));
            }
            if m.removed {
                return refused("a member cannot be added as removed".into());
            }
            // Only table-independent rules that need no parsing: the
            // leader checked the rest (`check_new`).
            if m.id == 0 || m.id > MAX_NODE_ID {
                return refused(format!("node id {} is out of range", m.id));
            }
            let members = all()?;
            if let Some(old) = members.iter().find(|o| o.id == m.id) {
                if old.removed {
                    return refused(format!(
                        "node id {} was removed from the cluster; ids are never reused: pick \
                         another",
                        m.id
                    ));
                }
                if old.addr == m.addr && old.peer_addr == m.peer_addr {
                    return Ok((Vec::new(), MetaReply::Done));
                }
                return refused(format!(
                    "node {} is a member already, at {} (peer {}); remove it first to give it \
                     other addresses",
                    m.id, old.addr, old.peer_addr
                ));
            }
            // Removed members keep their addresses: a config node stays in
            // the routing table the config gives, so its address must not
            // turn up again under another id.
            for o in &members {
                for a in [&m.addr, &m.peer_addr] {
                    if *a == o.addr || *a == o.peer_addr {
                        let was = if o.removed { " (removed)" } else { "" };
                        return refused(format!("address {a} is node {}'s{was}", o.id));
                    }
                }
            }
            Ok((vec![(node_key(m.id), Some(encode(m)?))], MetaReply::Done))
        }
        MetaCommand::Shards(records) => keep_newer(
            get,
            records,
            |r| shard_key(r.descriptor.shard.0),
            |r, old| r.newer_than(old),
        ),
        MetaCommand::Groups(records) => keep_newer(
            get,
            records,
            |r| group_key(r.group),
            |r, old| r.newer_than(old),
        ),
        MetaCommand::Retire(r) => {
            let id = r.shard.0;
            if id == 0 || id >= pact_common::META_GROUP {
                return refused(format!("{id} is not a shard id"));
            }
            if get(&retired_key(id)).map_err(|e| e.to_string())?.is_some() {
                return Ok((Vec::new(), MetaReply::Done));
            }
            // The shard's own check is the authority; the table only
            // refuses what contradicts it (a record of a later span).
            if let Some(v) = get(&shard_key(id)).map_err(|e| e.to_string())? {
                let old: ShardRecord = decode(&v)?;
                if old.descriptor.version > r.version {
                    return refused(format!(
                        "shard {id} is at version {} in the table, the retirement was checked \
                         at version {}",
                        old.descriptor.version, r.version
                    ));
                }
            }
            let epoch = epoch_of(get(EPOCH_KEY).map_err(|e| e.to_string())?.as_deref())? + 1;
            Ok((
                vec![
                    (retired_key(id), Some(encode(r)?)),
                    (EPOCH_KEY.to_vec(), Some(epoch.to_be_bytes().to_vec())),
                ],
                MetaReply::Done,
            ))
        }
        MetaCommand::Remove { id } => {
            let Some(v) = get(&node_key(*id)).map_err(|e| e.to_string())? else {
                return refused(format!("node {id} is not a member of the cluster"));
            };
            let mut m: Member = decode(&v)?;
            if m.removed {
                return Ok((Vec::new(), MetaReply::Done));
            }
            m.removed = true;
            Ok((vec![(node_key(*id), Some(encode(&m)?))], MetaReply::Done))
        }
    }
}

/// Write each of `records` under `key` unless the table (or a record of
/// the same key earlier in the batch) holds one it is not `newer` than;
/// the epoch grows by the number written. A batch that changes nothing
/// writes nothing.
fn keep_newer<R>(
    get: Lookup<'_>,
    records: &[R],
    key: impl Fn(&R) -> Vec<u8>,
    newer: impl Fn(&R, &R) -> bool,
) -> Result<(Writes, MetaReply), String>
where
    R: Clone + Serialize + for<'de> Deserialize<'de>,
{
    let mut taken: std::collections::BTreeMap<Vec<u8>, R> = Default::default();
    for r in records {
        let k = key(r);
        let old = match taken.get(&k) {
            Some(t) => Some(t.clone()),
            None => get(&k)
                .map_err(|e| e.to_string())?
                .map(|v| decode::<R>(&v))
                .transpose()?,
        };
        if old.is_none_or(|o| newer(r, &o)) {
            taken.insert(k, r.clone());
        }
    }
    if taken.is_empty() {
        return Ok((Vec::new(), MetaReply::Done));
    }
    let epoch =
        epoch_of(get(EPOCH_KEY).map_err(|e| e.to_string())?.as_deref())? + taken.len() as u64;
    let mut w: Writes = Vec::new();
    for (k, r) in &taken {
        w.push((k.clone(), Some(encode(r)?)));
    }
    w.push((EPOCH_KEY.to_vec(), Some(epoch.to_be_bytes().to_vec())));
    Ok((w, MetaReply::Done))
}

/// The metadata group's application. `changed` is notified whenever a
/// command's effects become visible here, so the node's directory follows
/// the table at once instead of at its next look.
pub struct MetaApp {
    pub changed: std::sync::Arc<tokio::sync::Notify>,
}

impl Apply for MetaApp {
    fn visible(&self, _command: &[u8], _reply: &[u8]) {
        self.changed.notify_one();
    }

    fn state_replaced(&self) {
        self.changed.notify_one();
    }

    fn apply(
        &self,
        state: &StateView<'_>,
        _index: u64,
        _term: u64,
        command: &[u8],
    ) -> Result<Applied, String> {
        let cmd: MetaCommand = decode(command)?;
        let all = || {
            let (start, end) = node_range();
            let pairs = state
                .scan(&start, Some(&end), usize::MAX)
                .map_err(|e| e.to_string())?;
            members_of(&pairs)
        };
        let (writes, reply) = effect(&|k| state.get(k), &all, &cmd)?;
        Ok(Applied {
            writes,
            reply: encode(&reply)?,
        })
    }
}

/// A table in memory, for tests of [`effect`].
#[cfg(test)]
#[derive(Default)]
pub struct MemTable(pub std::collections::BTreeMap<Vec<u8>, Vec<u8>>);

#[cfg(test)]
impl MemTable {
    /// Apply `cmd` as a replica would; the reply.
    pub fn apply(&mut self, cmd: &MetaCommand) -> MetaReply {
        let (w, r) = {
            let get = |k: &[u8]| Ok(self.0.get(k).cloned());
            let all = || {
                let (s, e) = node_range();
                let pairs: Vec<_> = self
                    .0
                    .range(s..e)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                members_of(&pairs)
            };
            effect(&get, &all, cmd).expect("effect")
        };
        for (k, v) in w {
            match v {
                Some(v) => self.0.insert(k, v),
                None => self.0.remove(&k),
            };
        }
        r
    }

    pub fn groups(&self) -> Vec<GroupRecord> {
        let (s, e) = group_range();
        let pairs: Vec<_> = self
            .0
            .range(s..e)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        groups_of(&pairs).expect("decode")
    }

    pub fn shards(&self) -> (u64, Vec<ShardRecord>) {
        let (s, e) = shard_range();
        let pairs: Vec<_> = self
            .0
            .range(s..e)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let epoch = epoch_of(self.0.get(EPOCH_KEY).map(Vec::as_slice)).expect("epoch");
        (epoch, shards_of(&pairs).expect("decode"))
    }

    pub fn retired(&self) -> Vec<RetiredShard> {
        let (s, e) = retired_range();
        let pairs: Vec<_> = self
            .0
            .range(s..e)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        retired_of(&pairs).expect("decode")
    }

    pub fn members(&self) -> Vec<Member> {
        let (s, e) = node_range();
        let pairs: Vec<_> = self
            .0
            .range(s..e)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        members_of(&pairs).expect("decode")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: u64) -> Member {
        Member {
            id,
            addr: format!("127.0.0.1:{}", 7000 + id),
            peer_addr: format!("127.0.0.1:{}", 7020 + id),
            removed: false,
        }
    }

    fn refused(r: MetaReply, words: &str) {
        match r {
            MetaReply::Refused(why) => assert!(why.contains(words), "{why}"),
            other => panic!("expected a refusal naming {words:?}, got {other:?}"),
        }
    }

    #[test]
    fn the_first_seed_wins_and_later_ones_change_nothing() {
        let mut t = MemTable::default();
        assert!(matches!(
            t.apply(&MetaCommand::Add(m(4))),
            MetaReply::NotYet(_)
        ));
        assert_eq!(
            t.apply(&MetaCommand::Seed(vec![m(1), m(2), m(3)])),
            MetaReply::Done
        );
        // A config edited after the first start: no effect.
        assert_eq!(
            t.apply(&MetaCommand::Seed(vec![m(1), m(9)])),
            MetaReply::Done
        );
        let ids: Vec<u64> = t.members().iter().map(|m| m.id).collect();
        assert_eq!(ids, vec![1, 2, 3]);
    }

    #[test]
    fn adding_is_idempotent_and_refuses_clashes() {
        let mut t = MemTable::default();
        t.apply(&MetaCommand::Seed(vec![m(1), m(2), m(3)]));
        assert_eq!(t.apply(&MetaCommand::Add(m(4))), MetaReply::Done);
        assert_eq!(t.apply(&MetaCommand::Add(m(4))), MetaReply::Done);
        let mut other = m(4);
        other.addr = "127.0.0.1:9999".into();
        refused(t.apply(&MetaCommand::Add(other)), "member already");
        let mut clash = m(5);
        clash.peer_addr = m(2).addr;
        refused(t.apply(&MetaCommand::Add(clash)), "is node 2's");
        refused(t.apply(&MetaCommand::Add(m(0))), "out of range");
        refused(
            t.apply(&MetaCommand::Add(Member {
                id: u64::MAX,
                ..m(9)
            })),
            "out of range",
        );
        assert_eq!(t.members().len(), 4);
    }

    #[test]
    fn a_removed_id_is_kept_and_never_reused() {
        let mut t = MemTable::default();
        t.apply(&MetaCommand::Seed(vec![m(1), m(2), m(3)]));
        t.apply(&MetaCommand::Add(m(4)));
        assert_eq!(t.apply(&MetaCommand::Remove { id: 4 }), MetaReply::Done);
        assert_eq!(t.apply(&MetaCommand::Remove { id: 4 }), MetaReply::Done);
        refused(t.apply(&MetaCommand::Remove { id: 8 }), "not a member");
        refused(t.apply(&MetaCommand::Add(m(4))), "never reused");
        let four = t.members().into_iter().find(|x| x.id == 4).unwrap();
        assert!(four.removed);
        // Its addresses stay taken too.
        let mut five = m(5);
        five.addr = m(4).addr;
        refused(t.apply(&MetaCommand::Add(five)), "node 4's (removed)");
    }

    fn rec(shard: u64, version: u64, voters: &[u64], at: u64) -> ShardRecord {
        ShardRecord {
            descriptor: pact_common::Descriptor {
                shard: pact_common::ShardId(shard),
                version,
                span: pact_common::Span::Range {
                    start: format!("k{version}").into_bytes(),
                    end: None,
                },
            },
            voters: voters.to_vec(),
            voters_at: at,
        }
    }

    #[test]
    fn a_shard_record_is_replaced_only_by_a_newer_one() {
        let mut t = MemTable::default();
        assert_eq!(t.shards(), (0, Vec::new()));
        let first = rec(1, 1, &[1, 2, 3], 5);
        assert_eq!(
            t.apply(&MetaCommand::Shards(vec![
                first.clone(),
                rec(2, 1, &[1, 2, 3], 5)
            ])),
            MetaReply::Done
        );
        assert_eq!(t.shards().0, 2);
        // The same report again, and a late one: nothing changes, not even
        // the epoch.
        t.apply(&MetaCommand::Shards(vec![
            first.clone(),
            rec(1, 1, &[1, 2], 4),
        ]));
        assert_eq!(t.shards(), (2, vec![first, rec(2, 1, &[1, 2, 3], 5)]));
        // A replica moved (same version, later membership), then a split
        // (later version, with an older membership index than a report
        // that came first within the same batch).
        t.apply(&MetaCommand::Shards(vec![
            rec(1, 1, &[1, 2, 4], 9),
            rec(1, 2, &[1, 2, 4], 9),
            rec(1, 1, &[1, 2, 3], 12),
        ]));
        let (epoch, shards) = t.shards();
        assert_eq!(epoch, 3, "one shard changed");
        assert_eq!(shards[0], rec(1, 2, &[1, 2, 4], 9));
        // The member table is untouched.
        assert!(t.members().is_empty());
    }

    #[test]
    fn a_coordinator_group_record_is_replaced_only_by_a_later_membership() {
        let mut t = MemTable::default();
        let g = |voters: &[u64], at: u64| GroupRecord {
            group: 4,
            voters: voters.to_vec(),
            voters_at: at,
        };
        t.apply(&MetaCommand::Groups(vec![g(&[1, 2, 3], 3)]));
        assert_eq!(t.shards().0, 1);
        // Late, then repeated: nothing changes.
        t.apply(&MetaCommand::Groups(vec![g(&[1, 2], 2), g(&[1, 2, 3], 3)]));
        assert_eq!((t.shards().0, t.groups()), (1, vec![g(&[1, 2, 3], 3)]));
        t.apply(&MetaCommand::Groups(vec![
            g(&[1, 2, 5], 9),
            g(&[1, 2, 3], 7),
        ]));
        assert_eq!((t.shards().0, t.groups()), (2, vec![g(&[1, 2, 5], 9)]));
    }

    #[test]
    fn a_retired_shard_is_recorded_once_and_not_against_a_later_span() {
        let mut t = MemTable::default();
        let r = |shard: u64, version: u64, h: u64| RetiredShard {
            shard: pact_common::ShardId(shard),
            version,
            successors: vec![pact_common::ShardId(1)],
            voters: vec![1, 2, 3],
            horizons: vec![(4, h)],
        };
        t.apply(&MetaCommand::Shards(vec![rec(2, 2, &[1, 2, 3], 5)]));
        assert_eq!(t.apply(&MetaCommand::Retire(r(2, 2, 10))), MetaReply::Done);
        assert_eq!((t.shards().0, t.retired()), (2, vec![r(2, 2, 10)]));
        // Asked again (a later horizon): the first record stays, and the
        // epoch does not move.
        assert_eq!(t.apply(&MetaCommand::Retire(r(2, 2, 20))), MetaReply::Done);
        assert_eq!((t.shards().0, t.retired()), (2, vec![r(2, 2, 10)]));
        // Checked at a version older than the table's record of it.
        t.apply(&MetaCommand::Shards(vec![rec(3, 4, &[1, 2, 3], 5)]));
        refused(t.apply(&MetaCommand::Retire(r(3, 3, 10))), "version 4");
        refused(t.apply(&MetaCommand::Retire(r(0, 3, 10))), "not a shard id");
        assert_eq!(t.retired().len(), 1);
        // The answers it stands for.
        let rec = r(2, 2, 10);
        assert_eq!(rec.inquiry(4, 9), pact_common::RetiredAnswer::Expired);
        assert_eq!(rec.inquiry(4, 10), pact_common::RetiredAnswer::Aborted);
        assert_eq!(rec.inquiry(5, 1), pact_common::RetiredAnswer::Aborted);
    }

    #[test]
    fn the_leader_refuses_malformed_members_before_proposing() {
        check_new(&m(4)).unwrap();
        let mut bad = m(6);
        bad.addr = "nowhere".into();
        assert!(check_new(&bad).unwrap_err().contains("not ip:port"));
        let mut long = m(6);
        long.peer_addr = "1".repeat(10_000);
        let e = check_new(&long).unwrap_err();
        assert!(e.contains("10000 bytes long") && e.len() < 200, "{e}");
        let mut same = m(7);
        same.peer_addr = same.addr.clone();
        assert!(check_new(&same).unwrap_err().contains("must differ"));
        assert!(check_new(&m(0)).unwrap_err().contains("out of range"));
        assert!(check_new(&m(MAX_NODE_ID + 1))
            .unwrap_err()
            .contains("out of range"));
    }
}
