//! The KIP-848 consumer group records (Kafka's `ConsumerGroup*Key` and
//! `ConsumerGroup*Value` schemas, key versions 3 to 8).
//!
//! Keys are not flexible: an `int16` version and `int16`-length strings, as
//! for the classic records. Values are flexible version 0: compact strings
//! and arrays (unsigned varint length + 1, 0 for null), 16-byte UUIDs, and
//! an empty tagged-field section after every struct. Tagged fields written
//! by others are skipped on decode.

use keel_types::record_schema::{
    put_compact_len, put_compact_nullable_string, put_compact_string, put_empty_tags, put_i16,
    put_i32, put_i8, put_string, put_uvarint, Reader,
};
use uuid::Uuid;

use super::RecordError;

/// `ConsumerGroupMetadataKey`.
pub const CONSUMER_GROUP_METADATA_KEY_VERSION: i16 = 3;
/// `ConsumerGroupPartitionMetadataKey`.
pub const CONSUMER_GROUP_PARTITION_METADATA_KEY_VERSION: i16 = 4;
/// `ConsumerGroupMemberMetadataKey`.
pub const CONSUMER_GROUP_MEMBER_METADATA_KEY_VERSION: i16 = 5;
/// `ConsumerGroupTargetAssignmentMetadataKey`.
pub const CONSUMER_GROUP_TARGET_ASSIGNMENT_METADATA_KEY_VERSION: i16 = 6;
/// `ConsumerGroupTargetAssignmentMemberKey`.
pub const CONSUMER_GROUP_TARGET_ASSIGNMENT_MEMBER_KEY_VERSION: i16 = 7;
/// `ConsumerGroupCurrentMemberAssignmentKey`.
pub const CONSUMER_GROUP_CURRENT_MEMBER_ASSIGNMENT_KEY_VERSION: i16 = 8;

/// Partitions by topic id, in the schemas' `TopicPartitions` shape.
pub type TopicPartitions = Vec<(Uuid, Vec<i32>)>;

/// One topic of a member's current assignment: its partitions and, aligned
/// with them, the member epoch at which each was assigned to the member
/// (the tagged `AssignmentEpochs` of KIP-1251, tag 0; `None` in records
/// written without it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldTopicPartitions {
    pub topic_id: Uuid,
    pub partitions: Vec<i32>,
    pub assignment_epochs: Option<Vec<i32>>,
}

/// `ConsumerGroupMetadataValue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerGroupMetadataValue {
    pub epoch: i32,
}

/// One topic of `ConsumerGroupPartitionMetadataValue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMetadataTopic {
    pub topic_id: Uuid,
    pub topic_name: String,
    pub num_partitions: i32,
}

/// `ConsumerGroupPartitionMetadataValue`: the subscribed topics as the
/// last target assignment saw them (partition racks are not kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerGroupPartitionMetadataValue {
    pub topics: Vec<PartitionMetadataTopic>,
}

/// `ConsumerGroupMemberMetadataValue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerGroupMemberMetadataValue {
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub subscribed_topic_names: Vec<String>,
    pub subscribed_topic_regex: Option<String>,
    pub rebalance_timeout_ms: i32,
    pub server_assignor: Option<String>,
}

/// `ConsumerGroupTargetAssignmentMetadataValue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerGroupTargetAssignmentMetadataValue {
    pub assignment_epoch: i32,
}

/// `ConsumerGroupTargetAssignmentMemberValue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerGroupTargetAssignmentMemberValue {
    pub topic_partitions: TopicPartitions,
}

/// `ConsumerGroupCurrentMemberAssignmentValue`. `state` is Kafka's
/// `MemberState` byte: 0 unrevoked, 1 unreleased, 2 stable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerGroupCurrentMemberAssignmentValue {
    pub member_epoch: i32,
    pub previous_member_epoch: i32,
    pub state: i8,
    pub assigned_partitions: Vec<HeldTopicPartitions>,
    pub partitions_pending_revocation: Vec<HeldTopicPartitions>,
}

/// A decoded consumer group record; `value` is `None` for a tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumerGroupRecord {
    Metadata {
        group_id: String,
        value: Option<ConsumerGroupMetadataValue>,
    },
    PartitionMetadata {
        group_id: String,
        value: Option<ConsumerGroupPartitionMetadataValue>,
    },
    MemberMetadata {
        group_id: String,
        member_id: String,
        value: Option<ConsumerGroupMemberMetadataValue>,
    },
    TargetAssignmentMetadata {
        group_id: String,
        value: Option<ConsumerGroupTargetAssignmentMetadataValue>,
    },
    TargetAssignmentMember {
        group_id: String,
        member_id: String,
        value: Option<ConsumerGroupTargetAssignmentMemberValue>,
    },
    CurrentMemberAssignment {
        group_id: String,
        member_id: String,
        value: Option<ConsumerGroupCurrentMemberAssignmentValue>,
    },
}

impl ConsumerGroupRecord {
    pub fn group_id(&self) -> &str {
        match self {
            ConsumerGroupRecord::Metadata { group_id, .. }
            | ConsumerGroupRecord::PartitionMetadata { group_id, .. }
            | ConsumerGroupRecord::MemberMetadata { group_id, .. }
            | ConsumerGroupRecord::TargetAssignmentMetadata { group_id, .. }
            | ConsumerGroupRecord::TargetAssignmentMember { group_id, .. }
            | ConsumerGroupRecord::CurrentMemberAssignment { group_id, .. } => group_id,
        }
    }
}

// ---------------------------------------------------------------- keys

fn group_key(version: i16, group_id: &str) -> Vec<u8> {
    let mut buf = Vec::with_capacity(4 + group_id.len());
    put_i16(&mut buf, version);
    put_string(&mut buf, group_id);
    buf
}

fn member_key(version: i16, group_id: &str, member_id: &str) -> Vec<u8> {
    let mut buf = Vec::with_capacity(6 + group_id.len() + member_id.len());
    put_i16(&mut buf, version);
    put_string(&mut buf, group_id);
    put_string(&mut buf, member_id);
    buf
}

pub fn consumer_group_metadata_key(group_id: &str) -> Vec<u8> {
    group_key(CONSUMER_GROUP_METADATA_KEY_VERSION, group_id)
}

pub fn consumer_group_partition_metadata_key(group_id: &str) -> Vec<u8> {
    group_key(CONSUMER_GROUP_PARTITION_METADATA_KEY_VERSION, group_id)
}

pub fn consumer_group_member_metadata_key(group_id: &str, member_id: &str) -> Vec<u8> {
    member_key(
        CONSUMER_GROUP_MEMBER_METADATA_KEY_VERSION,
        group_id,
        member_id,
    )
}

pub fn consumer_group_target_assignment_metadata_key(group_id: &str) -> Vec<u8> {
    group_key(
        CONSUMER_GROUP_TARGET_ASSIGNMENT_METADATA_KEY_VERSION,
        group_id,
    )
}

pub fn consumer_group_target_assignment_member_key(group_id: &str, member_id: &str) -> Vec<u8> {
    member_key(
        CONSUMER_GROUP_TARGET_ASSIGNMENT_MEMBER_KEY_VERSION,
        group_id,
        member_id,
    )
}

pub fn consumer_group_current_member_assignment_key(group_id: &str, member_id: &str) -> Vec<u8> {
    member_key(
        CONSUMER_GROUP_CURRENT_MEMBER_ASSIGNMENT_KEY_VERSION,
        group_id,
        member_id,
    )
}

// ---------------------------------------------------------------- flexible encoding

fn put_uuid(buf: &mut Vec<u8>, id: &Uuid) {
    buf.extend_from_slice(id.as_bytes());
}

fn put_i32_array(buf: &mut Vec<u8>, values: &[i32]) {
    put_compact_len(buf, values.len());
    for &v in values {
        put_i32(buf, v);
    }
}

/// The tag of `AssignmentEpochs` in a current assignment's
/// `TopicPartitions`.
const ASSIGNMENT_EPOCHS_TAG: u32 = 0;

/// One `TopicPartitions` entry, with `AssignmentEpochs` when given.
fn put_topic_entry(buf: &mut Vec<u8>, topic_id: &Uuid, partitions: &[i32], epochs: Option<&[i32]>) {
    put_uuid(buf, topic_id);
    put_i32_array(buf, partitions);
    match epochs {
        None => put_empty_tags(buf),
        Some(epochs) => {
            let mut field = Vec::with_capacity(1 + 4 * epochs.len());
            put_i32_array(&mut field, epochs);
            put_uvarint(buf, 1);
            put_uvarint(buf, ASSIGNMENT_EPOCHS_TAG);
            put_uvarint(buf, u32::try_from(field.len()).expect("tagged field size"));
            buf.extend_from_slice(&field);
        }
    }
}

fn put_topic_partitions(buf: &mut Vec<u8>, tps: &TopicPartitions) {
    put_compact_len(buf, tps.len());
    for (topic_id, partitions) in tps {
        put_topic_entry(buf, topic_id, partitions, None);
    }
}

fn put_held_topic_partitions(buf: &mut Vec<u8>, held: &[HeldTopicPartitions]) {
    put_compact_len(buf, held.len());
    for t in held {
        put_topic_entry(
            buf,
            &t.topic_id,
            &t.partitions,
            t.assignment_epochs.as_deref(),
        );
    }
}

fn value_header(buf: &mut Vec<u8>) {
    // Every value schema here has a single version, 0.
    put_i16(buf, 0);
}

impl ConsumerGroupMetadataValue {
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(7);
        value_header(&mut buf);
        put_i32(&mut buf, self.epoch);
        put_empty_tags(&mut buf);
        buf
    }
}

impl ConsumerGroupPartitionMetadataValue {
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(8 + 32 * self.topics.len());
        value_header(&mut buf);
        put_compact_len(&mut buf, self.topics.len());
        for t in &self.topics {
            put_uuid(&mut buf, &t.topic_id);
            put_compact_string(&mut buf, &t.topic_name);
            put_i32(&mut buf, t.num_partitions);
            put_compact_len(&mut buf, 0); // PartitionMetadata (racks): not kept.
            put_empty_tags(&mut buf);
        }
        put_empty_tags(&mut buf);
        buf
    }
}

impl ConsumerGroupMemberMetadataValue {
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(64);
        value_header(&mut buf);
        put_compact_nullable_string(&mut buf, self.instance_id.as_deref());
        put_compact_nullable_string(&mut buf, self.rack_id.as_deref());
        put_compact_string(&mut buf, &self.client_id);
        put_compact_string(&mut buf, &self.client_host);
        put_compact_len(&mut buf, self.subscribed_topic_names.len());
        for t in &self.subscribed_topic_names {
            put_compact_string(&mut buf, t);
        }
        put_compact_nullable_string(&mut buf, self.subscribed_topic_regex.as_deref());
        put_i32(&mut buf, self.rebalance_timeout_ms);
        put_compact_nullable_string(&mut buf, self.server_assignor.as_deref());
        put_empty_tags(&mut buf);
        buf
    }
}

impl ConsumerGroupTargetAssignmentMetadataValue {
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(7);
        value_header(&mut buf);
        put_i32(&mut buf, self.assignment_epoch);
        put_empty_tags(&mut buf);
        buf
    }
}

impl ConsumerGroupTargetAssignmentMemberValue {
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(16);
        value_header(&mut buf);
        put_topic_partitions(&mut buf, &self.topic_partitions);
        put_empty_tags(&mut buf);
        buf
    }
}

impl ConsumerGroupCurrentMemberAssignmentValue {
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(32);
        value_header(&mut buf);
        put_i32(&mut buf, self.member_epoch);
        put_i32(&mut buf, self.previous_member_epoch);
        put_i8(&mut buf, self.state);
        put_held_topic_partitions(&mut buf, &self.assigned_partitions);
        put_held_topic_partitions(&mut buf, &self.partitions_pending_revocation);
        put_empty_tags(&mut buf);
        buf
    }
}

// ---------------------------------------------------------------- flexible decoding

/// A non-nullable compact string; null is `Invalid` here.
fn non_null_compact_string(r: &mut Reader<'_>) -> Result<String, RecordError> {
    r.compact_nullable_string()?
        .ok_or(RecordError::Invalid("null string in a non-nullable field"))
}

/// A non-nullable compact array count, refused before anything is
/// allocated for it when it exceeds the bytes that remain; null is
/// `Invalid` here.
fn non_null_compact_array_len(r: &mut Reader<'_>) -> Result<usize, RecordError> {
    r.compact_array_len(1)?
        .ok_or(RecordError::Invalid("null array in a non-nullable field"))
}

fn uuid(r: &mut Reader<'_>) -> Result<Uuid, RecordError> {
    let mut a = [0u8; 16];
    a.copy_from_slice(r.take(16)?);
    Ok(Uuid::from_bytes(a))
}

fn i32_array(r: &mut Reader<'_>) -> Result<Vec<i32>, RecordError> {
    let count = non_null_compact_array_len(r)?;
    (0..count).map(|_| Ok(r.i32()?)).collect()
}

/// A `TopicPartitions` array, with the `AssignmentEpochs` a current
/// assignment's (`with_epochs`) has when written; other tags are skipped.
fn held_topic_partitions(
    r: &mut Reader<'_>,
    with_epochs: bool,
) -> Result<Vec<HeldTopicPartitions>, RecordError> {
    let n = non_null_compact_array_len(r)?;
    let mut out = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let topic_id = uuid(r)?;
        let partitions = i32_array(r)?;
        let mut assignment_epochs = None;
        r.tagged_fields(|tag, bytes| {
            if with_epochs && tag == ASSIGNMENT_EPOCHS_TAG {
                let mut field = Reader::new(bytes);
                let count = field.compact_array_len(4)?;
                assignment_epochs = count
                    .map(|count| (0..count).map(|_| field.i32()).collect())
                    .transpose()?;
                field.finish()?;
            }
            Ok(())
        })?;
        out.push(HeldTopicPartitions {
            topic_id,
            partitions,
            assignment_epochs,
        });
    }
    Ok(out)
}

fn topic_partitions(r: &mut Reader<'_>) -> Result<TopicPartitions, RecordError> {
    Ok(held_topic_partitions(r, false)?
        .into_iter()
        .map(|t| (t.topic_id, t.partitions))
        .collect())
}

fn value_version(r: &mut Reader<'_>, kind: &'static str) -> Result<(), RecordError> {
    match r.i16()? {
        0 => Ok(()),
        version => Err(RecordError::UnsupportedVersion { kind, version }),
    }
}

fn decode_metadata_value(value: &[u8]) -> Result<ConsumerGroupMetadataValue, RecordError> {
    let mut r = Reader::new(value);
    value_version(&mut r, "ConsumerGroupMetadataValue")?;
    let out = ConsumerGroupMetadataValue { epoch: r.i32()? };
    r.skip_tagged_fields()?;
    r.finish()?;
    Ok(out)
}

fn decode_partition_metadata_value(
    value: &[u8],
) -> Result<ConsumerGroupPartitionMetadataValue, RecordError> {
    let mut r = Reader::new(value);
    value_version(&mut r, "ConsumerGroupPartitionMetadataValue")?;
    let n = non_null_compact_array_len(&mut r)?;
    let mut topics = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let topic_id = uuid(&mut r)?;
        let topic_name = non_null_compact_string(&mut r)?;
        let num_partitions = r.i32()?;
        let racks = non_null_compact_array_len(&mut r)?;
        for _ in 0..racks {
            let _partition = r.i32()?;
            let rack_count = non_null_compact_array_len(&mut r)?;
            for _ in 0..rack_count {
                non_null_compact_string(&mut r)?;
            }
            r.skip_tagged_fields()?;
        }
        r.skip_tagged_fields()?;
        topics.push(PartitionMetadataTopic {
            topic_id,
            topic_name,
            num_partitions,
        });
    }
    r.skip_tagged_fields()?;
    r.finish()?;
    Ok(ConsumerGroupPartitionMetadataValue { topics })
}

fn decode_member_metadata_value(
    value: &[u8],
) -> Result<ConsumerGroupMemberMetadataValue, RecordError> {
    let mut r = Reader::new(value);
    value_version(&mut r, "ConsumerGroupMemberMetadataValue")?;
    let instance_id = r.compact_nullable_string()?;
    let rack_id = r.compact_nullable_string()?;
    let client_id = non_null_compact_string(&mut r)?;
    let client_host = non_null_compact_string(&mut r)?;
    let n = non_null_compact_array_len(&mut r)?;
    let mut subscribed_topic_names = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        subscribed_topic_names.push(non_null_compact_string(&mut r)?);
    }
    let subscribed_topic_regex = r.compact_nullable_string()?;
    let rebalance_timeout_ms = r.i32()?;
    let server_assignor = r.compact_nullable_string()?;
    r.skip_tagged_fields()?;
    r.finish()?;
    Ok(ConsumerGroupMemberMetadataValue {
        instance_id,
        rack_id,
        client_id,
        client_host,
        subscribed_topic_names,
        subscribed_topic_regex,
        rebalance_timeout_ms,
        server_assignor,
    })
}

fn decode_target_assignment_metadata_value(
    value: &[u8],
) -> Result<ConsumerGroupTargetAssignmentMetadataValue, RecordError> {
    let mut r = Reader::new(value);
    value_version(&mut r, "ConsumerGroupTargetAssignmentMetadataValue")?;
    let out = ConsumerGroupTargetAssignmentMetadataValue {
        assignment_epoch: r.i32()?,
    };
    r.skip_tagged_fields()?;
    r.finish()?;
    Ok(out)
}

fn decode_target_assignment_member_value(
    value: &[u8],
) -> Result<ConsumerGroupTargetAssignmentMemberValue, RecordError> {
    let mut r = Reader::new(value);
    value_version(&mut r, "ConsumerGroupTargetAssignmentMemberValue")?;
    let out = ConsumerGroupTargetAssignmentMemberValue {
        topic_partitions: topic_partitions(&mut r)?,
    };
    r.skip_tagged_fields()?;
    r.finish()?;
    Ok(out)
}

fn decode_current_member_assignment_value(
    value: &[u8],
) -> Result<ConsumerGroupCurrentMemberAssignmentValue, RecordError> {
    let mut r = Reader::new(value);
    value_version(&mut r, "ConsumerGroupCurrentMemberAssignmentValue")?;
    let member_epoch = r.i32()?;
    let previous_member_epoch = r.i32()?;
    let state = r.i8()?;
    if !(0..=2).contains(&state) {
        return Err(RecordError::Invalid("unknown member state"));
    }
    let assigned_partitions = held_topic_partitions(&mut r, true)?;
    let partitions_pending_revocation = held_topic_partitions(&mut r, true)?;
    r.skip_tagged_fields()?;
    r.finish()?;
    Ok(ConsumerGroupCurrentMemberAssignmentValue {
        member_epoch,
        previous_member_epoch,
        state,
        assigned_partitions,
        partitions_pending_revocation,
    })
}

/// Decodes a record whose key version is 3 to 8; `Ok(None)` for any other
/// key version (not a consumer group record).
pub fn decode_consumer_group_record(
    key: &[u8],
    value: Option<&[u8]>,
) -> Result<Option<ConsumerGroupRecord>, RecordError> {
    let mut r = Reader::new(key);
    let version = r.i16()?;
    if !(3..=8).contains(&version) {
        return Ok(None);
    }
    let group_id = r.string()?;
    let member_id = if matches!(version, 5 | 7 | 8) {
        r.string()?
    } else {
        String::new()
    };
    r.finish()?;
    Ok(Some(match version {
        3 => ConsumerGroupRecord::Metadata {
            group_id,
            value: value.map(decode_metadata_value).transpose()?,
        },
        4 => ConsumerGroupRecord::PartitionMetadata {
            group_id,
            value: value.map(decode_partition_metadata_value).transpose()?,
        },
        5 => ConsumerGroupRecord::MemberMetadata {
            group_id,
            member_id,
            value: value.map(decode_member_metadata_value).transpose()?,
        },
        6 => ConsumerGroupRecord::TargetAssignmentMetadata {
            group_id,
            value: value
                .map(decode_target_assignment_metadata_value)
                .transpose()?,
        },
        7 => ConsumerGroupRecord::TargetAssignmentMember {
            group_id,
            member_id,
            value: value
                .map(decode_target_assignment_member_value)
                .transpose()?,
        },
        _ => ConsumerGroupRecord::CurrentMemberAssignment {
            group_id,
            member_id,
            value: value
                .map(decode_current_member_assignment_value)
                .transpose()?,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::super::{decode, Record};
    use super::*;

    const T: Uuid = Uuid::from_u128(0xabcd_0000_0000_0000_0000_0000_0000_0001);

    fn samples() -> Vec<(Vec<u8>, Vec<u8>, ConsumerGroupRecord)> {
        let meta = ConsumerGroupMetadataValue { epoch: 7 };
        let parts = ConsumerGroupPartitionMetadataValue {
            topics: vec![PartitionMetadataTopic {
                topic_id: T,
                topic_name: "orders".into(),
                num_partitions: 12,
            }],
        };
        let member = ConsumerGroupMemberMetadataValue {
            instance_id: Some("inst-1".into()),
            rack_id: None,
            client_id: "client".into(),
            client_host: "/10.0.0.1".into(),
            subscribed_topic_names: vec!["orders".into(), "é".into()],
            subscribed_topic_regex: None,
            rebalance_timeout_ms: 30_000,
            server_assignor: Some("range".into()),
        };
        let tmeta = ConsumerGroupTargetAssignmentMetadataValue {
            assignment_epoch: 6,
        };
        let tmember = ConsumerGroupTargetAssignmentMemberValue {
            topic_partitions: vec![(T, vec![0, 3, 200])],
        };
        let current = ConsumerGroupCurrentMemberAssignmentValue {
            member_epoch: 6,
            previous_member_epoch: 5,
            state: 0,
            assigned_partitions: vec![HeldTopicPartitions {
                topic_id: T,
                partitions: vec![0],
                assignment_epochs: Some(vec![6]),
            }],
            partitions_pending_revocation: vec![
                HeldTopicPartitions {
                    topic_id: T,
                    partitions: vec![1, 2],
                    assignment_epochs: Some(vec![3, 5]),
                },
                // Written before KIP-1251: no epochs.
                HeldTopicPartitions {
                    topic_id: Uuid::nil(),
                    partitions: vec![],
                    assignment_epochs: None,
                },
            ],
        };
        vec![
            (
                consumer_group_metadata_key("g"),
                meta.encode(),
                ConsumerGroupRecord::Metadata {
                    group_id: "g".into(),
                    value: Some(meta),
                },
            ),
            (
                consumer_group_partition_metadata_key("g"),
                parts.encode(),
                ConsumerGroupRecord::PartitionMetadata {
                    group_id: "g".into(),
                    value: Some(parts),
                },
            ),
            (
                consumer_group_member_metadata_key("g", "m"),
                member.encode(),
                ConsumerGroupRecord::MemberMetadata {
                    group_id: "g".into(),
                    member_id: "m".into(),
                    value: Some(member),
                },
            ),
            (
                consumer_group_target_assignment_metadata_key("g"),
                tmeta.encode(),
                ConsumerGroupRecord::TargetAssignmentMetadata {
                    group_id: "g".into(),
                    value: Some(tmeta),
                },
            ),
            (
                consumer_group_target_assignment_member_key("g", "m"),
                tmember.encode(),
                ConsumerGroupRecord::TargetAssignmentMember {
                    group_id: "g".into(),
                    member_id: "m".into(),
                    value: Some(tmember),
                },
            ),
            (
                consumer_group_current_member_assignment_key("g", "m"),
                current.encode(),
                ConsumerGroupRecord::CurrentMemberAssignment {
                    group_id: "g".into(),
                    member_id: "m".into(),
                    value: Some(current),
                },
            ),
        ]
    }

    #[test]
    fn consumer_group_records_round_trip() {
        for (key, value, expected) in samples() {
            assert_eq!(
                decode(&key, Some(&value)).unwrap(),
                Record::ConsumerGroup(expected.clone())
            );
            // A tombstone decodes to the same key with no value.
            let Record::ConsumerGroup(tomb) = decode(&key, None).unwrap() else {
                panic!("not a consumer group record");
            };
            assert_eq!(tomb.group_id(), "g");
            assert_ne!(tomb, expected);
        }
        // Key layout: int16 version, int16-length strings.
        assert_eq!(
            consumer_group_member_metadata_key("g", "m"),
            vec![0, 5, 0, 1, b'g', 0, 1, b'm']
        );
        // Value layout: version 0, flexible (empty tagged fields at the end).
        assert_eq!(
            ConsumerGroupMetadataValue { epoch: 1 }.encode(),
            vec![0, 0, 0, 0, 0, 1, 0]
        );
        // AssignmentEpochs is tag 0 of a current assignment's topic: its
        // size, then a compact int32 array.
        let held = ConsumerGroupCurrentMemberAssignmentValue {
            member_epoch: 6,
            previous_member_epoch: 5,
            state: 2,
            assigned_partitions: vec![HeldTopicPartitions {
                topic_id: T,
                partitions: vec![0],
                assignment_epochs: Some(vec![6]),
            }],
            partitions_pending_revocation: vec![],
        };
        let mut expected = vec![0, 0, 0, 0, 0, 6, 0, 0, 0, 5, 2, 2];
        expected.extend_from_slice(T.as_bytes());
        expected.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0, 5, 2, 0, 0, 0, 6, 1, 0]);
        assert_eq!(held.encode(), expected);
        // Tagged fields written by others are skipped.
        let mut tagged = ConsumerGroupMetadataValue { epoch: 9 }.encode();
        tagged.pop();
        tagged.extend_from_slice(&[1, 0, 2, 0xaa, 0xbb]);
        assert_eq!(decode_metadata_value(&tagged).unwrap().epoch, 9);
        // Long compact strings use multi-byte varints.
        let long = ConsumerGroupMemberMetadataValue {
            instance_id: None,
            rack_id: Some("r".repeat(300)),
            client_id: String::new(),
            client_host: "h".into(),
            subscribed_topic_names: vec![],
            subscribed_topic_regex: Some("re".into()),
            rebalance_timeout_ms: -1,
            server_assignor: None,
        };
        assert_eq!(decode_member_metadata_value(&long.encode()).unwrap(), long);
        // Key versions past 8 are not consumer group records.
        assert_eq!(
            decode(&[0, 9, 0, 0], None).unwrap(),
            Record::Other { key_version: 9 }
        );
    }

    #[test]
    fn consumer_group_garbage_returns_errors() {
        for (key, value, _) in samples() {
            for n in 0..value.len() {
                assert!(decode(&key, Some(&value[..n])).is_err(), "value len {n}");
            }
            for n in 2..key.len() {
                assert!(decode(&key[..n], None).is_err(), "key len {n}");
            }
            let mut trailing = value.clone();
            trailing.push(0);
            assert!(decode(&key, Some(&trailing)).is_err());
            for i in 0..value.len() {
                for flip in [0xff, 0x80, 0x01] {
                    let mut c = value.clone();
                    c[i] ^= flip;
                    let _ = decode(&key, Some(&c));
                    let _ = decode(&c, Some(&c));
                }
            }
        }
        let key = consumer_group_target_assignment_member_key("g", "m");
        // An array count of 2^32-2 with nothing behind it.
        assert!(decode(&key, Some(&[0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f])).is_err());
        // A varint that never ends.
        assert!(decode(&key, Some(&[0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01])).is_err());
        // A null array where one is required.
        assert!(decode(&key, Some(&[0, 0, 0, 0])).is_err());
        // An unsupported value version.
        assert!(decode(&key, Some(&[0, 1, 1, 0])).is_err());
        // An unknown member state.
        let key = consumer_group_current_member_assignment_key("g", "m");
        let mut v = vec![0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 5, 1, 1, 0];
        assert!(decode(&key, Some(&v)).is_err());
        v[10] = 2;
        assert!(decode(&key, Some(&v)).is_ok());
        // A key with a negative string length.
        assert!(decode(&[0, 3, 0xff, 0xff], None).is_err());
    }
}
