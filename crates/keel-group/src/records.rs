//! The `__consumer_offsets` record formats, written from Kafka's schemas
//! (`OffsetCommitKey`, `OffsetCommitValue`, `GroupMetadataKey`,
//! `GroupMetadataValue`), so that a log written by Keel reads like one
//! written by Kafka.
//!
//! Every key and value starts with an `int16` schema version. Strings are an
//! `int16` length and UTF-8 bytes (`-1` is null for nullable strings), byte
//! arrays an `int32` length, arrays an `int32` count. A tombstone (value
//! `None`) deletes the offset or the group named by its key.
//!
//! Decoding never panics: every read checks the bytes that remain.

use bytes::Bytes;
use keel_types::record_schema::{
    put_bytes, put_i16, put_i32, put_i64, put_nullable_string, put_string, Reader, SchemaError,
};

mod consumer;
pub use consumer::*;

/// Key version of `OffsetCommitKey` that Keel writes (0 and 1 are the same layout).
pub const OFFSET_COMMIT_KEY_VERSION: i16 = 1;
/// Key version of `GroupMetadataKey`.
pub const GROUP_METADATA_KEY_VERSION: i16 = 2;
/// Value version of `OffsetCommitValue` that Keel writes (with leader epoch, no expiry).
pub const OFFSET_COMMIT_VALUE_VERSION: i16 = 3;
/// Value version of `GroupMetadataValue` that Keel writes (with `group_instance_id`).
pub const GROUP_METADATA_VALUE_VERSION: i16 = 3;

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error("unsupported {kind} version {version}")]
    UnsupportedVersion { kind: &'static str, version: i16 },
    #[error("invalid record: {0}")]
    Invalid(&'static str),
}

/// The key of a `__consumer_offsets` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordKey {
    OffsetCommit {
        group_id: String,
        topic: String,
        partition: i32,
    },
    GroupMetadata {
        group_id: String,
    },
    /// A key version 3 and up: KIP-848 consumer group records (which
    /// `decode` reads through `decode_consumer_group_record`) and share
    /// group records, which replay skips.
    Other {
        version: i16,
    },
}

/// `OffsetCommitValue`: one committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommitValue {
    pub offset: i64,
    /// `-1` when the committer did not know it.
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
}

/// One member inside `GroupMetadataValue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberMetadataValue {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    /// The member's metadata for the group's selected protocol.
    pub subscription: Bytes,
    pub assignment: Bytes,
}

/// `GroupMetadataValue`: a classic group as of its last completed generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMetadataValue {
    pub protocol_type: String,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub current_state_timestamp_ms: i64,
    pub members: Vec<MemberMetadataValue>,
}

/// A decoded record: a key and its value, `None` for a tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    OffsetCommit {
        group_id: String,
        topic: String,
        partition: i32,
        value: Option<OffsetCommitValue>,
    },
    GroupMetadata {
        group_id: String,
        value: Option<GroupMetadataValue>,
    },
    /// A KIP-848 consumer group record (key versions 3 to 8).
    ConsumerGroup(ConsumerGroupRecord),
    Other {
        key_version: i16,
    },
}

// ---------------------------------------------------------------- encoding

/// `OffsetCommitKey` bytes.
pub fn offset_commit_key(group_id: &str, topic: &str, partition: i32) -> Vec<u8> {
    let mut buf = Vec::with_capacity(2 + 2 + group_id.len() + 2 + topic.len() + 4);
    put_i16(&mut buf, OFFSET_COMMIT_KEY_VERSION);
    put_string(&mut buf, group_id);
    put_string(&mut buf, topic);
    put_i32(&mut buf, partition);
    buf
}

/// `GroupMetadataKey` bytes.
pub fn group_metadata_key(group_id: &str) -> Vec<u8> {
    let mut buf = Vec::with_capacity(4 + group_id.len());
    put_i16(&mut buf, GROUP_METADATA_KEY_VERSION);
    put_string(&mut buf, group_id);
    buf
}

impl OffsetCommitValue {
    /// Version 3 bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(2 + 8 + 4 + 2 + self.metadata.len() + 8);
        put_i16(&mut buf, OFFSET_COMMIT_VALUE_VERSION);
        put_i64(&mut buf, self.offset);
        put_i32(&mut buf, self.leader_epoch);
        put_string(&mut buf, &self.metadata);
        put_i64(&mut buf, self.commit_timestamp_ms);
        buf
    }
}

impl GroupMetadataValue {
    /// Version 3 bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(64);
        put_i16(&mut buf, GROUP_METADATA_VALUE_VERSION);
        put_string(&mut buf, &self.protocol_type);
        put_i32(&mut buf, self.generation);
        put_nullable_string(&mut buf, self.protocol.as_deref());
        put_nullable_string(&mut buf, self.leader.as_deref());
        put_i64(&mut buf, self.current_state_timestamp_ms);
        let count = i32::try_from(self.members.len()).expect("more than i32::MAX members");
        put_i32(&mut buf, count);
        for m in &self.members {
            put_string(&mut buf, &m.member_id);
            put_nullable_string(&mut buf, m.group_instance_id.as_deref());
            put_string(&mut buf, &m.client_id);
            put_string(&mut buf, &m.client_host);
            put_i32(&mut buf, m.rebalance_timeout_ms);
            put_i32(&mut buf, m.session_timeout_ms);
            put_bytes(&mut buf, &m.subscription);
            put_bytes(&mut buf, &m.assignment);
        }
        buf
    }
}

// ---------------------------------------------------------------- decoding

/// Classic bytes; Kafka's schema marks these non-nullable, but null reads
/// as empty rather than refusing a whole group.
fn bytes(r: &mut Reader<'_>) -> Result<Bytes, RecordError> {
    Ok(Bytes::copy_from_slice(
        r.nullable_bytes()?.unwrap_or_default(),
    ))
}

/// Decodes a classic key (offset commit, group metadata); newer key
/// versions come back as `RecordKey::Other`.
pub fn decode_key(key: &[u8]) -> Result<RecordKey, RecordError> {
    let mut r = Reader::new(key);
    let version = r.i16()?;
    let out = match version {
        0 | 1 => RecordKey::OffsetCommit {
            group_id: r.string()?,
            topic: r.string()?,
            partition: r.i32()?,
        },
        2 => RecordKey::GroupMetadata {
            group_id: r.string()?,
        },
        v if v < 0 => {
            return Err(RecordError::UnsupportedVersion {
                kind: "key",
                version: v,
            })
        }
        v => return Ok(RecordKey::Other { version: v }),
    };
    r.finish()?;
    Ok(out)
}

/// Decodes an `OffsetCommitValue` of versions 0 to 3.
pub fn decode_offset_commit_value(value: &[u8]) -> Result<OffsetCommitValue, RecordError> {
    let mut r = Reader::new(value);
    let version = r.i16()?;
    let out = match version {
        0 => OffsetCommitValue {
            offset: r.i64()?,
            leader_epoch: -1,
            metadata: r.string()?,
            commit_timestamp_ms: r.i64()?,
        },
        1 => {
            let offset = r.i64()?;
            let metadata = r.string()?;
            let commit_timestamp_ms = r.i64()?;
            let _expire_timestamp_ms = r.i64()?;
            OffsetCommitValue {
                offset,
                leader_epoch: -1,
                metadata,
                commit_timestamp_ms,
            }
        }
        2 => OffsetCommitValue {
            offset: r.i64()?,
            leader_epoch: -1,
            metadata: r.string()?,
            commit_timestamp_ms: r.i64()?,
        },
        3 => OffsetCommitValue {
            offset: r.i64()?,
            leader_epoch: r.i32()?,
            metadata: r.string()?,
            commit_timestamp_ms: r.i64()?,
        },
        v => {
            return Err(RecordError::UnsupportedVersion {
                kind: "OffsetCommitValue",
                version: v,
            })
        }
    };
    r.finish()?;
    Ok(out)
}

/// Decodes a `GroupMetadataValue` of versions 0 to 3.
pub fn decode_group_metadata_value(value: &[u8]) -> Result<GroupMetadataValue, RecordError> {
    let mut r = Reader::new(value);
    let version = r.i16()?;
    if !(0..=3).contains(&version) {
        return Err(RecordError::UnsupportedVersion {
            kind: "GroupMetadataValue",
            version,
        });
    }
    let protocol_type = r.string()?;
    let generation = r.i32()?;
    let protocol = r.nullable_string()?;
    let leader = r.nullable_string()?;
    let current_state_timestamp_ms = if version >= 2 { r.i64()? } else { -1 };
    let count = r.i32()?;
    if count < 0 {
        return Err(SchemaError::NegativeLength(i64::from(count)).into());
    }
    // Each member takes at least a few bytes, so never reserve more than
    // the bytes that remain.
    let mut members = Vec::with_capacity((count as usize).min(value.len() / 8));
    for _ in 0..count {
        let member_id = r.string()?;
        let group_instance_id = if version >= 3 {
            r.nullable_string()?
        } else {
            None
        };
        let client_id = r.string()?;
        let client_host = r.string()?;
        let session_timeout_ms;
        let rebalance_timeout_ms;
        if version >= 1 {
            rebalance_timeout_ms = r.i32()?;
            session_timeout_ms = r.i32()?;
        } else {
            session_timeout_ms = r.i32()?;
            rebalance_timeout_ms = session_timeout_ms;
        }
        let subscription = bytes(&mut r)?;
        let assignment = bytes(&mut r)?;
        members.push(MemberMetadataValue {
            member_id,
            group_instance_id,
            client_id,
            client_host,
            rebalance_timeout_ms,
            session_timeout_ms,
            subscription,
            assignment,
        });
    }
    r.finish()?;
    Ok(GroupMetadataValue {
        protocol_type,
        generation,
        protocol,
        leader,
        current_state_timestamp_ms,
        members,
    })
}

/// Decodes one record of `__consumer_offsets`.
pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<Record, RecordError> {
    if let Some(record) = decode_consumer_group_record(key, value)? {
        return Ok(Record::ConsumerGroup(record));
    }
    Ok(match decode_key(key)? {
        RecordKey::OffsetCommit {
            group_id,
            topic,
            partition,
        } => Record::OffsetCommit {
            group_id,
            topic,
            partition,
            value: value.map(decode_offset_commit_value).transpose()?,
        },
        RecordKey::GroupMetadata { group_id } => Record::GroupMetadata {
            group_id,
            value: value.map(decode_group_metadata_value).transpose()?,
        },
        RecordKey::Other { version } => Record::Other {
            key_version: version,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group_value() -> GroupMetadataValue {
        GroupMetadataValue {
            protocol_type: "consumer".into(),
            generation: 7,
            protocol: Some("range".into()),
            leader: Some("m1".into()),
            current_state_timestamp_ms: 1234,
            members: vec![
                MemberMetadataValue {
                    member_id: "m1".into(),
                    group_instance_id: None,
                    client_id: "c1".into(),
                    client_host: "/127.0.0.1".into(),
                    rebalance_timeout_ms: 300_000,
                    session_timeout_ms: 45_000,
                    subscription: Bytes::from_static(b"sub1"),
                    assignment: Bytes::from_static(b"asg1"),
                },
                MemberMetadataValue {
                    member_id: "m2".into(),
                    group_instance_id: Some("i2".into()),
                    client_id: "c2".into(),
                    client_host: "/10.0.0.1".into(),
                    rebalance_timeout_ms: 1,
                    session_timeout_ms: 2,
                    subscription: Bytes::new(),
                    assignment: Bytes::from_static(&[0, 1, 2]),
                },
            ],
        }
    }

    #[test]
    fn offset_commit_round_trip() {
        let key = offset_commit_key("g", "topic-a", 3);
        let value = OffsetCommitValue {
            offset: 42,
            leader_epoch: 5,
            metadata: "meta".into(),
            commit_timestamp_ms: 99,
        };
        let rec = decode(&key, Some(&value.encode())).unwrap();
        assert_eq!(
            rec,
            Record::OffsetCommit {
                group_id: "g".into(),
                topic: "topic-a".into(),
                partition: 3,
                value: Some(value),
            }
        );
        let tomb = decode(&key, None).unwrap();
        assert!(matches!(tomb, Record::OffsetCommit { value: None, .. }));
    }

    #[test]
    fn offset_commit_value_layout_matches_kafka() {
        let v = OffsetCommitValue {
            offset: 1,
            leader_epoch: -1,
            metadata: "".into(),
            commit_timestamp_ms: 2,
        };
        assert_eq!(
            v.encode(),
            vec![0, 3, 0, 0, 0, 0, 0, 0, 0, 1, 255, 255, 255, 255, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]
        );
        assert_eq!(group_metadata_key("ab"), vec![0, 2, 0, 2, b'a', b'b']);
    }

    #[test]
    fn group_metadata_round_trip() {
        let key = group_metadata_key("my-group");
        let value = group_value();
        let rec = decode(&key, Some(&value.encode())).unwrap();
        assert_eq!(
            rec,
            Record::GroupMetadata {
                group_id: "my-group".into(),
                value: Some(value),
            }
        );
        let empty = GroupMetadataValue {
            protocol: None,
            leader: None,
            members: vec![],
            ..group_value()
        };
        assert_eq!(decode_group_metadata_value(&empty.encode()).unwrap(), empty);
    }

    #[test]
    fn older_offset_value_versions_decode() {
        // v1: offset, metadata, commit timestamp, expire timestamp.
        let mut v1 = vec![0, 1];
        v1.extend_from_slice(&10i64.to_be_bytes());
        v1.extend_from_slice(&[0, 1, b'x']);
        v1.extend_from_slice(&20i64.to_be_bytes());
        v1.extend_from_slice(&30i64.to_be_bytes());
        let d = decode_offset_commit_value(&v1).unwrap();
        assert_eq!(d.offset, 10);
        assert_eq!(d.metadata, "x");
        assert_eq!(d.commit_timestamp_ms, 20);
        assert_eq!(d.leader_epoch, -1);
    }

    #[test]
    fn garbage_returns_errors() {
        assert!(decode_key(&[]).is_err());
        assert!(decode_key(&[0]).is_err());
        assert!(decode_key(&[0, 2, 0, 9, b'a']).is_err());
        assert!(decode_key(&[0, 2, 0xff, 0xfe]).is_err());
        assert!(decode_key(&[0, 2, 0, 1, 0xff]).is_err()); // not UTF-8
        assert!(decode_key(&[0, 2, 0, 1, b'a', 0]).is_err()); // trailing byte
        assert!(decode_key(&[0xff, 0xff]).is_err());
        assert_eq!(
            decode_key(&[0, 3, 1, 2, 3]).unwrap(),
            RecordKey::Other { version: 3 }
        );
        assert!(decode_offset_commit_value(&[0, 9]).is_err());
        assert!(decode_offset_commit_value(&[0, 3, 1, 2]).is_err());
        // A member count of 2^31-1 with no members behind it.
        let mut v = vec![0, 3, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff];
        v.extend_from_slice(&0i64.to_be_bytes());
        v.extend_from_slice(&i32::MAX.to_be_bytes());
        assert!(decode_group_metadata_value(&v).is_err());
        // Every truncation of a valid value is an error, never a panic.
        let full = group_value().encode();
        for n in 0..full.len() {
            assert!(decode_group_metadata_value(&full[..n]).is_err(), "len {n}");
        }
        // Every single-byte corruption decodes or errors, never panics.
        for i in 0..full.len() {
            let mut c = full.clone();
            c[i] ^= 0xff;
            let _ = decode_group_metadata_value(&c);
            let _ = decode(&c, Some(&c));
        }
    }
}
