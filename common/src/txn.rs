//! Transaction identity and time.
//!
//! A transaction is named by the coordinator group that runs it, the
//! coordinator node that began it, and its start timestamp from that node's
//! hybrid logical clock. The timestamp orders transactions for wound-wait:
//! smaller is older, and older transactions win conflicts.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Hybrid logical clock reading: milliseconds since the epoch in the high
/// 48 bits, a logical counter in the low 16.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub fn from_parts(ms: u64, logical: u16) -> Self {
        Timestamp((ms << 16) | u64::from(logical))
    }
    pub fn millis(self) -> u64 {
        self.0 >> 16
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.0 >> 16, self.0 & 0xffff)
    }
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct TxnId {
    /// Start timestamp first, so ordering TxnIds orders by age.
    pub ts: Timestamp,
    /// Coordinator node that began it (makes ids from two coordinator
    /// leaders that read the same clock distinct).
    pub node: u64,
    /// Coordinator group that runs it and holds its decision.
    pub group: u64,
}

impl TxnId {
    /// A storage key for records about this transaction: `prefix`, then
    /// group, node and timestamp as big-endian u64s (25 bytes).
    pub fn key(self, prefix: u8) -> Vec<u8> {
        let mut k = Vec::with_capacity(25);
        k.push(prefix);
        k.extend_from_slice(&self.group.to_be_bytes());
        k.extend_from_slice(&self.node.to_be_bytes());
        k.extend_from_slice(&self.ts.0.to_be_bytes());
        k
    }

    /// The id in a key made by [`TxnId::key`] (any prefix); None if the
    /// key is not one.
    pub fn from_key(k: &[u8]) -> Option<TxnId> {
        if k.len() != 25 {
            return None;
        }
        let n = |i: usize| {
            k.get(i..i + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
        };
        Some(TxnId {
            group: n(1)?,
            node: n(9)?,
            ts: Timestamp(n(17)?),
        })
    }
}

impl fmt::Display for TxnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.group, self.node, self.ts.0)
    }
}

impl std::str::FromStr for TxnId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut it = s.split('-');
        let mut next = |what: &str| -> Result<u64, String> {
            it.next()
                .ok_or_else(|| {
                    format!("transaction id {s:?} lacks its {what}; expected GROUP-NODE-TS")
                })?
                .parse::<u64>()
                .map_err(|_| format!("transaction id {s:?}: {what} is not a number"))
        };
        let group = next("group")?;
        let node = next("node")?;
        let ts = Timestamp(next("timestamp")?);
        if it.next().is_some() {
            return Err(format!(
                "transaction id {s:?} has extra parts; expected GROUP-NODE-TS"
            ));
        }
        Ok(TxnId { ts, node, group })
    }
}

/// A condition of a one-shot transaction (as in etcd's txn).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Guard {
    /// The key exists.
    Exists(Vec<u8>),
    /// The key does not exist.
    Missing(Vec<u8>),
    /// The key exists with exactly this value.
    Equals(Vec<u8>, Vec<u8>),
}

/// An operation of a one-shot transaction's branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    Get(Vec<u8>),
}

/// A source of wall-clock milliseconds; injected so tests control time.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The machine's wall clock, shifted by `PACT_CLOCK_OFFSET_MS` when the
/// fault-injection suite skews this process (see [`crate::faults`]).
pub fn system_clock() -> Clock {
    let offset = crate::faults::clock_offset_ms();
    Arc::new(move || {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        ms.saturating_add_signed(offset)
    })
}

/// Hybrid logical clock: never goes backwards, ticks strictly on every
/// `now`, and jumps forward past any timestamp it observes.
pub struct Hlc {
    clock: Clock,
    last: AtomicU64,
}

impl Hlc {
    pub fn new(clock: Clock) -> Self {
        Hlc {
            clock,
            last: AtomicU64::new(0),
        }
    }

    pub fn now(&self) -> Timestamp {
        let wall = Timestamp::from_parts((self.clock)(), 0).0;
        let mut prev = self.last.load(Ordering::SeqCst);
        loop {
            let next = wall.max(prev + 1);
            match self
                .last
                .compare_exchange(prev, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return Timestamp(next),
                Err(p) => prev = p,
            }
        }
    }

    /// Move past a timestamp seen elsewhere (a message, the recovery log).
    pub fn observe(&self, ts: Timestamp) {
        self.last.fetch_max(ts.0, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn hlc_is_strictly_monotonic_even_if_the_wall_clock_goes_back() {
        let wall = Arc::new(AtomicU64::new(1000));
        let w = wall.clone();
        let hlc = Hlc::new(Arc::new(move || w.load(Ordering::SeqCst)));
        let a = hlc.now();
        let b = hlc.now();
        assert!(b > a);
        assert_eq!(a.millis(), 1000);
        wall.store(500, Ordering::SeqCst);
        let c = hlc.now();
        assert!(c > b, "clock went back: {c} <= {b}");
        hlc.observe(Timestamp::from_parts(5000, 7));
        assert!(hlc.now() > Timestamp::from_parts(5000, 7));
        wall.store(9000, Ordering::SeqCst);
        assert_eq!(hlc.now(), Timestamp::from_parts(9000, 0));
    }

    #[test]
    fn txn_ids_order_by_age_and_round_trip_as_text() {
        let old = TxnId {
            ts: Timestamp(5),
            node: 9,
            group: 2,
        };
        let young = TxnId {
            ts: Timestamp(6),
            node: 1,
            group: 1,
        };
        assert!(old < young);
        let s = old.to_string();
        assert_eq!(s.parse::<TxnId>().unwrap(), old);
        assert!("1-2".parse::<TxnId>().is_err());
        assert!("a-b-c".parse::<TxnId>().is_err());
        assert!("1-2-3-4".parse::<TxnId>().is_err());
        assert_eq!(TxnId::from_key(&old.key(b'p')), Some(old));
        assert_eq!(TxnId::from_key(b"short"), None);
    }
}
