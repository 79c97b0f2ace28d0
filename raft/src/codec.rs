//! The one encoding of every structured value Pact stores or sends between
//! replicas: Raft log entries, votes and log ids, membership, snapshots,
//! Raft messages, and the applications' commands, replies and records.
//!
//! A value is one version byte ([`FORMAT_VERSION`]) followed by its postcard
//! encoding (a maintained, compact serde format whose wire format is
//! specified and stable across its 1.x releases). The byte makes every
//! value say which encoding wrote it: a reader meeting a version it does
//! not know reports that version instead of misreading the bytes, and a
//! later version can decode old values by dispatching on it. Decoding is
//! strict: an unknown version, a truncated value or trailing bytes are
//! errors naming what was being read, never a default.
//!
//! The database as a whole carries the same version in its format record
//! (see `store`), checked when a node opens its data directory, so a node
//! refuses to start on data it cannot read instead of failing later.

use std::fmt::Display;
use std::io;

use postcard::ser_flavors::Flavor;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The on-disk (and replica-to-replica) format this build writes and reads.
/// Bump it for any change in how a stored value is encoded, and teach
/// [`decode`] (and the format check at open) to read the old one.
pub const FORMAT_VERSION: u8 = 1;

/// Postcard output into a vector that already holds the version byte, so a
/// large entry is not copied again to prepend it.
struct Tagged(Vec<u8>);

impl Flavor for Tagged {
    type Output = Vec<u8>;

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<Vec<u8>> {
        Ok(self.0)
    }
}

/// `v` in the current format. An error (a type that postcard cannot
/// encode, such as a sequence of unknown length) is returned, never
/// replaced by empty bytes: the caller must not store or send anything.
pub fn encode<T: Serialize + ?Sized>(v: &T) -> io::Result<Vec<u8>> {
    postcard::serialize_with_flavor(v, Tagged(vec![FORMAT_VERSION])).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cannot encode {}: {e}", std::any::type_name::<T>()),
        )
    })
}

/// Decode a value written by [`encode`]; `what` names it in the error
/// (which keyspace and key, or which message).
pub fn decode<T: DeserializeOwned>(b: &[u8], what: impl Display) -> io::Result<T> {
    let bad = |why: String| io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {why}"));
    let Some((&version, body)) = b.split_first() else {
        return Err(bad("empty value (no format version byte)".into()));
    };
    if version != FORMAT_VERSION {
        return Err(bad(format!(
            "written in format version {version}, but this build reads only version \
             {FORMAT_VERSION}"
        )));
    }
    let (v, rest) = postcard::take_from_bytes::<T>(body).map_err(|e| {
        bad(format!(
            "undecodable {} (format version {version}): {e}",
            std::any::type_name::<T>()
        ))
    })?;
    if !rest.is_empty() {
        return Err(bad(format!(
            "{} trailing bytes after a {}",
            rest.len(),
            std::any::type_name::<T>()
        )));
    }
    Ok(v)
}

/// A `Vec<u8>` (de)serialized as one byte string (`#[serde(with =
/// "byte_string")]`): postcard writes the same bytes for a byte string as
/// for a sequence of `u8`s (the length, then the bytes), but a byte string
/// is copied in one piece, where a sequence is visited byte by byte (a
/// push and a bounds check per byte: 1 KiB values made that a few percent
/// of a node's CPU, and a 1 MiB entry tens of milliseconds). So a field
/// can switch to it without changing what is stored.
pub mod byte_string {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Ok(Buf::deserialize(d)?.0)
    }

    /// A borrowed byte string, for the compound shapes below.
    struct Ref<'a>(&'a [u8]);

    impl Serialize for Ref<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    /// An owned byte string; reads a sequence of `u8`s too (a format
    /// without byte strings).
    struct Buf(Vec<u8>);

    impl<'de> Deserialize<'de> for Buf {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Visitor;
            impl<'de> serde::de::Visitor<'de> for Visitor {
                type Value = Vec<u8>;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a byte string")
                }
                fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                    Ok(v.to_vec())
                }
                fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                    Ok(v)
                }
                fn visit_seq<A: serde::de::SeqAccess<'de>>(
                    self,
                    mut seq: A,
                ) -> Result<Vec<u8>, A::Error> {
                    let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                    while let Some(b) = seq.next_element()? {
                        out.push(b);
                    }
                    Ok(out)
                }
            }
            d.deserialize_byte_buf(Visitor).map(Buf)
        }
    }

    /// `Vec<(Vec<u8>, Option<Vec<u8>>)>` (key changes: `None` deletes).
    pub mod changes {
        use super::{Buf, Ref};
        use serde::{Deserialize, Deserializer, Serializer};

        type Change = (Vec<u8>, Option<Vec<u8>>);

        pub fn serialize<S: Serializer>(v: &[Change], s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(v.iter().map(|(k, v)| (Ref(k), v.as_deref().map(Ref))))
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Change>, D::Error> {
            let v = Vec::<(Buf, Option<Buf>)>::deserialize(d)?;
            Ok(v.into_iter().map(|(k, v)| (k.0, v.map(|v| v.0))).collect())
        }
    }

    /// `Vec<(Vec<u8>, Vec<u8>)>` (key-value pairs).
    pub mod pairs {
        use super::{Buf, Ref};
        use serde::{Deserialize, Deserializer, Serializer};

        type Pair = (Vec<u8>, Vec<u8>);

        pub fn serialize<S: Serializer>(v: &[Pair], s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(v.iter().map(|(k, v)| (Ref(k), Ref(v))))
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Pair>, D::Error> {
            let v = Vec::<(Buf, Buf)>::deserialize(d)?;
            Ok(v.into_iter().map(|(k, v)| (k.0, v.0)).collect())
        }
    }

    /// `Vec<Vec<u8>>` (keys).
    pub mod list {
        use super::{Buf, Ref};
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(v.iter().map(|k| Ref(k)))
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
            let v = Vec::<Buf>::deserialize(d)?;
            Ok(v.into_iter().map(|k| k.0).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_start_with_the_version_and_round_trip() {
        let v = (7u64, Some(b"abc".to_vec()), "x".to_string());
        let b = encode(&v).unwrap();
        assert_eq!(b[0], FORMAT_VERSION);
        assert_eq!(
            decode::<(u64, Option<Vec<u8>>, String)>(&b, "t").unwrap(),
            v
        );
    }

    /// Each byte-string shape writes exactly what the plain derived shape
    /// writes (so stored entries and records read the same either way),
    /// and each reads what the other wrote.
    #[test]
    fn byte_string_shapes_encode_as_the_plain_shapes() {
        use serde::Deserialize;

        type Changes = Vec<(Vec<u8>, Option<Vec<u8>>)>;
        type Pairs = Vec<(Vec<u8>, Vec<u8>)>;
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Plain(Vec<u8>, Changes, Pairs, Vec<Vec<u8>>);
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Fast(
            #[serde(with = "byte_string")] Vec<u8>,
            #[serde(with = "byte_string::changes")] Changes,
            #[serde(with = "byte_string::pairs")] Pairs,
            #[serde(with = "byte_string::list")] Vec<Vec<u8>>,
        );
        let long: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let changes = vec![
            (b"k".to_vec(), Some(long.clone())),
            (Vec::new(), None),
            (long.clone(), Some(Vec::new())),
        ];
        let pairs = vec![(b"a".to_vec(), long.clone()), (Vec::new(), Vec::new())];
        let list = vec![long.clone(), Vec::new(), b"z".to_vec()];
        let plain = Plain(long.clone(), changes.clone(), pairs.clone(), list.clone());
        let fast = Fast(long, changes, pairs, list);
        let b = encode(&fast).unwrap();
        assert_eq!(b, encode(&plain).unwrap());
        assert_eq!(decode::<Fast>(&b, "fast").unwrap(), fast);
        assert_eq!(decode::<Plain>(&b, "plain").unwrap(), plain);
        let empty = Fast(Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let b = encode(&empty).unwrap();
        assert_eq!(
            b,
            encode(&Plain(Vec::new(), Vec::new(), Vec::new(), Vec::new())).unwrap()
        );
        assert_eq!(decode::<Fast>(&b, "fast").unwrap(), empty);
    }

    #[test]
    fn an_unknown_version_is_named_in_the_error() {
        let mut b = encode(&5u32).unwrap();
        b[0] = 99;
        let e = decode::<u32>(&b, "meta vote of group 3").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let msg = e.to_string();
        assert!(msg.contains("meta vote of group 3"), "{msg}");
        assert!(msg.contains("format version 99"), "{msg}");
        assert!(msg.contains("only version 1"), "{msg}");
    }

    #[test]
    fn empty_truncated_and_trailing_bytes_are_errors() {
        assert!(decode::<u32>(&[], "x")
            .unwrap_err()
            .to_string()
            .contains("empty value"));
        let b = encode(&(1u64, vec![1u8; 100])).unwrap();
        let e = decode::<(u64, Vec<u8>)>(&b[..b.len() - 1], "x").unwrap_err();
        assert!(e.to_string().contains("undecodable"), "{e}");
        let mut long = b.clone();
        long.push(0);
        let e = decode::<(u64, Vec<u8>)>(&long, "x").unwrap_err();
        assert!(e.to_string().contains("1 trailing bytes"), "{e}");
    }

    #[test]
    fn a_sequence_of_unknown_length_is_an_encode_error_not_empty_bytes() {
        struct Unsized;
        impl Serialize for Unsized {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeSeq;
                let mut seq = s.serialize_seq(None)?;
                seq.serialize_element(&1u8)?;
                seq.end()
            }
        }
        let e = encode(&Unsized).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("cannot encode"), "{e}");
    }
}
