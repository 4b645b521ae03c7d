//! How Raft entries sit in `__cluster_metadata-0`, a Kafka-format log.
//!
//! As in KRaft, a Raft index is a Kafka offset and a Raft term is the
//! batch's partition leader epoch. Each entry is one record batch holding
//! one record, so the entry at index `i` is the batch with base offset `i`:
//! - a proposal is a data batch; its record's value holds the proposal's
//!   records, each as a 4-byte big-endian length and the bytes. One record
//!   per proposal makes a proposal one Raft entry, committed or truncated
//!   whole; its records share its offset.
//! - openraft's blank entry (a new leader's first) is a control batch of
//!   KRaft's `LEADER_CHANGE` type; a membership entry is a control batch of
//!   KRaft's `KRAFT_VOTERS` type with a JSON value. (KRaft encodes both in
//!   its own schemas; the record types match, the values do not.)
//!
//! One entry per batch keeps truncation exact: `Log::truncate_to` removes
//! whole batches. Logs written by the pre-Raft `MetadataStore` hold data
//! batches of many records at leader epoch 0; each such record reads as one
//! entry of term 0 with one record. Raft itself proposes nothing at epoch
//! 0, since leaders are elected from term 1; it only copies such entries
//! to observers, as batches of one record each.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use keel_storage::{iter_records, BatchBuilder, RecordBatchHeader, StorageError};
use openraft::{BasicNode, EntryPayload};
use serde::{Deserialize, Serialize};

use crate::type_config::{index, leader_epoch, log_id, offset, Entry, Membership, Proposal};

/// Kafka's `ControlRecordType` ids used here.
pub(crate) const CONTROL_LEADER_CHANGE: i16 = 2;
pub(crate) const CONTROL_SNAPSHOT_HEADER: i16 = 3;
pub(crate) const CONTROL_SNAPSHOT_FOOTER: i16 = 4;
pub(crate) const CONTROL_VOTERS: i16 = 6;

fn corrupt(why: impl Into<String>) -> StorageError {
    StorageError::Corrupt(why.into())
}

/// A control record's key: version 0 and the type, as Kafka writes it.
pub(crate) fn control_key(control_type: i16) -> [u8; 4] {
    let mut key = [0u8; 4];
    key[2..].copy_from_slice(&control_type.to_be_bytes());
    key
}

pub(crate) fn control_type(key: Option<&[u8]>) -> Result<i16, StorageError> {
    match key {
        Some([0, 0, a, b]) => Ok(i16::from_be_bytes([*a, *b])),
        _ => Err(corrupt(format!("control record key {key:?}"))),
    }
}

/// The membership as stored: our JSON, independent of openraft's serde.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct VotersRecord {
    /// One set of voter ids, or two during a joint change.
    configs: Vec<BTreeSet<u64>>,
    /// Every member's address, voters and learners.
    nodes: BTreeMap<u64, String>,
}

impl VotersRecord {
    pub(crate) fn from_membership(m: &Membership) -> VotersRecord {
        VotersRecord {
            configs: m.get_joint_config().clone(),
            nodes: m.nodes().map(|(id, n)| (*id, n.addr.clone())).collect(),
        }
    }

    pub(crate) fn into_membership(self) -> Membership {
        let nodes: BTreeMap<u64, BasicNode> = self
            .nodes
            .into_iter()
            .map(|(id, addr)| (id, BasicNode::new(addr)))
            .collect();
        Membership::new(self.configs, nodes)
    }

    pub(crate) fn to_json(m: &Membership) -> Vec<u8> {
        serde_json::to_vec(&VotersRecord::from_membership(m)).expect("maps have integer keys")
    }

    pub(crate) fn from_json(bytes: &[u8]) -> Result<Membership, StorageError> {
        let record: VotersRecord =
            serde_json::from_slice(bytes).map_err(|e| corrupt(format!("voters record: {e}")))?;
        if record.configs.is_empty() || record.configs.iter().any(BTreeSet::is_empty) {
            return Err(corrupt("voters record without voters"));
        }
        Ok(record.into_membership())
    }
}

/// The bytes a proposal's records take in its record value.
pub(crate) fn proposal_value_len(records: &[Bytes]) -> usize {
    records.iter().map(|r| 4 + r.len()).sum()
}

fn encode_records(records: &[Bytes]) -> Vec<u8> {
    let mut value = Vec::with_capacity(proposal_value_len(records));
    for record in records {
        let len = u32::try_from(record.len()).expect("proposals are bounded");
        value.extend_from_slice(&len.to_be_bytes());
        value.extend_from_slice(record);
    }
    value
}

fn decode_records(mut value: &[u8]) -> Result<Vec<Bytes>, StorageError> {
    let mut records = Vec::new();
    while !value.is_empty() {
        let Some((len, rest)) = value.split_first_chunk::<4>() else {
            return Err(corrupt("proposal record length cut short"));
        };
        let len = u32::from_be_bytes(*len) as usize;
        if rest.len() < len {
            return Err(corrupt("proposal record runs past its value"));
        }
        records.push(Bytes::copy_from_slice(&rest[..len]));
        value = &rest[len..];
    }
    if records.is_empty() {
        return Err(corrupt("proposal without records"));
    }
    Ok(records)
}

/// The record batch for one entry, base offset = index, epoch = term.
pub(crate) fn encode_entry(entry: &Entry) -> Result<Vec<u8>, StorageError> {
    let epoch = leader_epoch(entry.log_id.leader_id.term)
        .ok_or_else(|| corrupt(format!("term of {} exceeds i32", entry.log_id)))?;
    let builder = BatchBuilder::new(offset(entry.log_id.index)).partition_leader_epoch(epoch);
    let batch = match &entry.payload {
        EntryPayload::Normal(proposal) => {
            // Term 0 holds only a pre-Raft log's records, one per entry,
            // which a voter adopted and now replicates to observers: they
            // are written back as they are read, bare.
            let value = match (epoch, proposal.records.as_slice()) {
                (0, [record]) => record.to_vec(),
                (0, _) => return Err(corrupt(format!("{}: a term-0 proposal", entry.log_id))),
                _ => encode_records(&proposal.records),
            };
            let mut b = builder;
            b.push(None, Some(&value), &[], proposal.timestamp_ms);
            b.build()
        }
        EntryPayload::Blank => {
            let mut b = builder.control(true);
            let key = control_key(CONTROL_LEADER_CHANGE);
            b.push(Some(&key), None, &[], keel_types::NO_TIMESTAMP);
            b.build()
        }
        EntryPayload::Membership(m) => {
            let mut b = builder.control(true);
            let key = control_key(CONTROL_VOTERS);
            let value = VotersRecord::to_json(m);
            b.push(Some(&key), Some(&value), &[], keel_types::NO_TIMESTAMP);
            b.build()
        }
    };
    Ok(batch)
}

/// Appends to `out` the entries of one validated batch whose index lies in
/// `[from, to)`.
pub(crate) fn decode_batch(
    batch: &[u8],
    header: &RecordBatchHeader,
    from: u64,
    to: u64,
    out: &mut Vec<Entry>,
) -> Result<(), StorageError> {
    let epoch = header.partition_leader_epoch();
    let term = u64::try_from(epoch).map_err(|_| {
        corrupt(format!(
            "batch at offset {} has leader epoch {epoch}",
            header.base_offset()
        ))
    })?;
    let legacy = term == 0 && !header.is_control();
    if !legacy && header.record_count() != 1 {
        return Err(corrupt(format!(
            "batch at offset {} holds {} records, a Raft entry holds one",
            header.base_offset(),
            header.record_count()
        )));
    }
    for record in iter_records(batch)? {
        let record = record?;
        let idx = index(record.offset);
        if idx < from || idx >= to {
            continue;
        }
        let payload = if header.is_control() {
            match control_type(record.key)? {
                CONTROL_LEADER_CHANGE => EntryPayload::Blank,
                CONTROL_VOTERS => {
                    let value = record.value.ok_or_else(|| corrupt("voters record"))?;
                    EntryPayload::Membership(VotersRecord::from_json(value)?)
                }
                other => return Err(corrupt(format!("control record type {other} in the log"))),
            }
        } else {
            let value = record
                .value
                .ok_or_else(|| corrupt(format!("record at {} has no value", record.offset)))?;
            let records = if legacy {
                vec![Bytes::copy_from_slice(value)]
            } else {
                decode_records(value)?
            };
            EntryPayload::Normal(Proposal {
                timestamp_ms: record.timestamp,
                records,
            })
        };
        out.push(Entry {
            log_id: log_id(term, idx),
            payload,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_storage::validate_batch;

    fn round_trip(entry: Entry) {
        let bytes = encode_entry(&entry).unwrap();
        let header = validate_batch(&bytes).unwrap();
        assert_eq!(header.base_offset(), offset(entry.log_id.index));
        let mut out = Vec::new();
        decode_batch(&bytes, &header, 0, u64::MAX, &mut out).unwrap();
        assert_eq!(out, vec![entry]);
    }

    #[test]
    fn entries_round_trip() {
        round_trip(Entry {
            log_id: log_id(3, 17),
            payload: EntryPayload::Normal(Proposal {
                timestamp_ms: 1_700_000_000_000,
                records: vec![Bytes::from_static(b"{\"a\":1}"), Bytes::new()],
            }),
        });
        round_trip(Entry {
            log_id: log_id(4, 18),
            payload: EntryPayload::Blank,
        });
        let nodes: BTreeMap<u64, BasicNode> =
            [(1, BasicNode::new("a:1")), (2, BasicNode::new("b:2"))]
                .into_iter()
                .collect();
        round_trip(Entry {
            log_id: log_id(0, 0),
            payload: EntryPayload::Membership(Membership::new(
                vec![[1, 2].into_iter().collect()],
                nodes,
            )),
        });
    }

    #[test]
    fn legacy_entries_round_trip_one_per_batch() {
        let legacy = |records: Vec<Bytes>| Entry {
            log_id: log_id(0, 4),
            payload: EntryPayload::Normal(Proposal {
                timestamp_ms: 11,
                records,
            }),
        };
        round_trip(legacy(vec![Bytes::from_static(b"r4")]));
        assert!(encode_entry(&legacy(vec![Bytes::new(), Bytes::new()])).is_err());
    }

    #[test]
    fn legacy_batches_read_as_term_zero_entries() {
        let mut b = BatchBuilder::new(5).partition_leader_epoch(0);
        b.push(None, Some(b"r5"), &[], 10);
        b.push(None, Some(b"r6"), &[], 11);
        let bytes = b.build();
        let header = validate_batch(&bytes).unwrap();
        let mut out = Vec::new();
        decode_batch(&bytes, &header, 6, 100, &mut out).unwrap();
        assert_eq!(
            out,
            vec![Entry {
                log_id: log_id(0, 6),
                payload: EntryPayload::Normal(Proposal {
                    timestamp_ms: 11,
                    records: vec![Bytes::from_static(b"r6")],
                }),
            }]
        );
    }

    #[test]
    fn malformed_values_are_corrupt() {
        assert!(decode_records(&[0, 0, 0, 9, 1]).is_err());
        assert!(decode_records(&[0, 0]).is_err());
        assert!(decode_records(&[]).is_err());
        let mut b = BatchBuilder::new(1).partition_leader_epoch(2);
        b.push(None, Some(b"x"), &[], 0);
        b.push(None, Some(b"y"), &[], 0);
        let bytes = b.build();
        let header = validate_batch(&bytes).unwrap();
        assert!(decode_batch(&bytes, &header, 0, 9, &mut Vec::new()).is_err());
    }
}
