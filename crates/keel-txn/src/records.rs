//! The `__transaction_state` record formats, written from Kafka's schemas
//! (`TransactionLogKey.json`, `TransactionLogValue.json`), so that a log
//! written by Keel reads like one written by Kafka and the other way round.
//!
//! Every key and value starts with an `int16` schema version. Keel writes
//! key version 0 and value version 0, which every Kafka since 0.11 reads;
//! it also reads value version 1, the flexible layout Kafka writes once
//! `transaction.version` >= 1. A tombstone (value `None`) deletes the
//! transactional id named by its key.
//!
//! Version 0 is the classic layout: strings are an `int16` length and UTF-8
//! bytes, arrays an `int32` count (`-1` is null). Version 1 is flexible:
//! lengths and counts are unsigned varints holding `n + 1` (`0` is null), and
//! every struct ends with tagged fields.
//!
//! Decoding never panics: every read checks the bytes that remain.

use keel_types::record_schema::{
    put_count, put_i16, put_i32, put_i64, put_i8, put_string, Reader, SchemaError,
};

use crate::transaction_state::TransactionState;

/// `TransactionLogKey` version.
pub const KEY_VERSION: i16 = 0;
/// `TransactionLogValue` version Keel writes (non-flexible, readable by
/// every Kafka version).
pub const VALUE_VERSION: i16 = 0;
/// The highest `TransactionLogValue` version Keel reads.
pub const VALUE_VERSION_MAX: i16 = 1;
/// Tag of `PreviousProducerId` in value version 1.
const PREVIOUS_PRODUCER_ID_TAG: u32 = 0;

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error("unsupported {kind} version {version}")]
    UnsupportedVersion { kind: &'static str, version: i16 },
    #[error("unknown transaction status {0}")]
    UnknownTransactionStatus(i8),
}

/// One record of `__transaction_state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// The state of a transactional id, or its deletion (`value` `None`).
    Transaction {
        transactional_id: String,
        value: Option<TransactionLogValue>,
    },
    /// A key version this code does not know; Kafka's loader skips these
    /// too ("a left over from an aborted upgrade").
    Unknown { key_version: i16 },
}

/// One topic's partitions inside `TransactionLogValue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionsSchema {
    pub topic: String,
    pub partition_ids: Vec<i32>,
}

/// `TransactionLogValue`: a transactional id's producer and transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionLogValue {
    pub producer_id: i64,
    /// Tagged field of version 1; `-1` in version 0, which does not carry it.
    pub previous_producer_id: i64,
    pub producer_epoch: i16,
    pub transaction_timeout_ms: i32,
    pub transaction_status: TransactionState,
    /// Null for `Empty`, as Kafka writes it.
    pub transaction_partitions: Option<Vec<PartitionsSchema>>,
    pub transaction_last_update_timestamp_ms: i64,
    /// `-1` until the first partition is added.
    pub transaction_start_timestamp_ms: i64,
}

// ---------------------------------------------------------------- encoding

/// Whether `s` fits a record string (an `int16` length): callers refuse
/// longer transactional ids and topics before they reach a record.
pub fn fits_string(s: &str) -> bool {
    s.len() <= i16::MAX as usize
}

/// `TransactionLogKey` bytes.
pub fn key(transactional_id: &str) -> Vec<u8> {
    let mut buf = Vec::with_capacity(4 + transactional_id.len());
    put_i16(&mut buf, KEY_VERSION);
    put_string(&mut buf, transactional_id);
    buf
}

impl TransactionLogValue {
    /// Version 0 bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(64);
        put_i16(&mut buf, VALUE_VERSION);
        put_i64(&mut buf, self.producer_id);
        put_i16(&mut buf, self.producer_epoch);
        put_i32(&mut buf, self.transaction_timeout_ms);
        put_i8(&mut buf, self.transaction_status.id());
        match &self.transaction_partitions {
            None => put_i32(&mut buf, -1),
            Some(topics) => {
                put_count(&mut buf, topics.len());
                for t in topics {
                    put_string(&mut buf, &t.topic);
                    put_count(&mut buf, t.partition_ids.len());
                    for &p in &t.partition_ids {
                        put_i32(&mut buf, p);
                    }
                }
            }
        }
        put_i64(&mut buf, self.transaction_last_update_timestamp_ms);
        put_i64(&mut buf, self.transaction_start_timestamp_ms);
        buf
    }
}

// ---------------------------------------------------------------- decoding

/// Decodes a key: the transactional id, or `None` for a key version this
/// code does not know.
pub fn decode_key(key: &[u8]) -> Result<Option<String>, RecordError> {
    let mut r = Reader::new(key);
    if r.i16()? != KEY_VERSION {
        return Ok(None);
    }
    let transactional_id = r.string()?;
    r.finish()?;
    Ok(Some(transactional_id))
}

/// Decodes a `TransactionLogValue` of version 0 or 1.
pub fn decode_value(value: &[u8]) -> Result<TransactionLogValue, RecordError> {
    let mut r = Reader::new(value);
    let version = r.i16()?;
    if !(0..=VALUE_VERSION_MAX).contains(&version) {
        return Err(RecordError::UnsupportedVersion {
            kind: "TransactionLogValue",
            version,
        });
    }
    let flexible = version >= 1;
    let producer_id = r.i64()?;
    let producer_epoch = r.i16()?;
    let transaction_timeout_ms = r.i32()?;
    let status = r.i8()?;
    let transaction_status =
        TransactionState::from_id(status).ok_or(RecordError::UnknownTransactionStatus(status))?;
    let topic_count = if flexible {
        r.compact_len()?
    } else {
        usize::try_from(r.i32()?).ok()
    };
    let transaction_partitions = match topic_count {
        None => None,
        Some(count) => {
            // A topic takes at least its length and its partition count.
            let count = r.checked_count(count, 2)?;
            let mut topics = Vec::with_capacity(count);
            for _ in 0..count {
                topics.push(decode_partitions(&mut r, flexible)?);
            }
            Some(topics)
        }
    };
    let transaction_last_update_timestamp_ms = r.i64()?;
    let transaction_start_timestamp_ms = r.i64()?;
    let mut previous_producer_id = keel_types::NO_PRODUCER_ID;
    if flexible {
        r.tagged_fields(|tag, bytes| {
            if tag == PREVIOUS_PRODUCER_ID_TAG {
                previous_producer_id = Reader::new(bytes).i64()?;
            }
            Ok(())
        })?;
    }
    r.finish()?;
    Ok(TransactionLogValue {
        producer_id,
        previous_producer_id,
        producer_epoch,
        transaction_timeout_ms,
        transaction_status,
        transaction_partitions,
        transaction_last_update_timestamp_ms,
        transaction_start_timestamp_ms,
    })
}

fn decode_partitions(r: &mut Reader<'_>, flexible: bool) -> Result<PartitionsSchema, RecordError> {
    let topic = if flexible {
        r.compact_string()?
    } else {
        r.string()?
    };
    let count = if flexible {
        r.compact_len()?.ok_or(SchemaError::NegativeLength(-1))?
    } else {
        let n = r.i32()?;
        usize::try_from(n).map_err(|_| SchemaError::NegativeLength(i64::from(n)))?
    };
    let count = r.checked_count(count, 4)?;
    let mut partition_ids = Vec::with_capacity(count);
    for _ in 0..count {
        partition_ids.push(r.i32()?);
    }
    if flexible {
        r.skip_tagged_fields()?;
    }
    Ok(PartitionsSchema {
        topic,
        partition_ids,
    })
}

/// Decodes one record of `__transaction_state`.
pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<Record, RecordError> {
    let Some(transactional_id) = decode_key(key)? else {
        let key_version = Reader::new(key).i16()?;
        return Ok(Record::Unknown { key_version });
    };
    Ok(Record::Transaction {
        transactional_id,
        value: value.map(decode_value).transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value() -> TransactionLogValue {
        TransactionLogValue {
            producer_id: 1000,
            previous_producer_id: -1,
            producer_epoch: 3,
            transaction_timeout_ms: 60_000,
            transaction_status: TransactionState::PrepareCommit,
            transaction_partitions: Some(vec![
                PartitionsSchema {
                    topic: "a".into(),
                    partition_ids: vec![0, 2],
                },
                PartitionsSchema {
                    topic: "b".into(),
                    partition_ids: vec![1],
                },
            ]),
            transaction_last_update_timestamp_ms: 20,
            transaction_start_timestamp_ms: 10,
        }
    }

    #[test]
    fn key_and_value_layout_match_kafka() {
        assert_eq!(key("tx"), vec![0, 0, 0, 2, b't', b'x']);
        let empty = TransactionLogValue {
            producer_id: 7,
            previous_producer_id: -1,
            producer_epoch: 1,
            transaction_timeout_ms: 2,
            transaction_status: TransactionState::Empty,
            transaction_partitions: None,
            transaction_last_update_timestamp_ms: 3,
            transaction_start_timestamp_ms: -1,
        };
        let mut expected = vec![0, 0];
        expected.extend_from_slice(&7i64.to_be_bytes());
        expected.extend_from_slice(&[0, 1, 0, 0, 0, 2, 0]);
        expected.extend_from_slice(&[0xff; 4]); // null partitions
        expected.extend_from_slice(&3i64.to_be_bytes());
        expected.extend_from_slice(&[0xff; 8]);
        assert_eq!(empty.encode(), expected);

        let mut expected = vec![0, 0];
        expected.extend_from_slice(&1000i64.to_be_bytes());
        expected.extend_from_slice(&[0, 3, 0, 0, 0xea, 0x60, 2]);
        expected.extend_from_slice(&[0, 0, 0, 2]);
        expected.extend_from_slice(&[0, 1, b'a', 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 2]);
        expected.extend_from_slice(&[0, 1, b'b', 0, 0, 0, 1, 0, 0, 0, 1]);
        expected.extend_from_slice(&20i64.to_be_bytes());
        expected.extend_from_slice(&10i64.to_be_bytes());
        assert_eq!(value().encode(), expected);
    }

    #[test]
    fn round_trip_and_tombstone() {
        let k = key("my-txn");
        let v = value();
        assert_eq!(
            decode(&k, Some(&v.encode())).unwrap(),
            Record::Transaction {
                transactional_id: "my-txn".into(),
                value: Some(v),
            }
        );
        assert_eq!(
            decode(&k, None).unwrap(),
            Record::Transaction {
                transactional_id: "my-txn".into(),
                value: None,
            }
        );
        for state in TransactionState::ALL {
            let v = TransactionLogValue {
                transaction_status: state,
                ..value()
            };
            assert_eq!(decode_value(&v.encode()).unwrap(), v);
        }
    }

    /// Version 1 as Kafka's generated `TransactionLogValue` writes it, with
    /// all three tagged fields set.
    fn flexible_value() -> Vec<u8> {
        let mut b = vec![0, 1];
        b.extend_from_slice(&1000i64.to_be_bytes());
        b.extend_from_slice(&[0, 3, 0, 0, 0xea, 0x60, 2]);
        b.push(3); // two topics
        b.extend_from_slice(&[2, b'a', 3, 0, 0, 0, 0, 0, 0, 0, 2, 0]);
        b.extend_from_slice(&[2, b'b', 2, 0, 0, 0, 1, 1, 9, 1, 0xaa]); // an unknown tag in the topic
        b.extend_from_slice(&20i64.to_be_bytes());
        b.extend_from_slice(&10i64.to_be_bytes());
        b.push(3); // tagged fields
        b.extend_from_slice(&[0, 8]);
        b.extend_from_slice(&999i64.to_be_bytes());
        b.extend_from_slice(&[1, 8]);
        b.extend_from_slice(&1001i64.to_be_bytes());
        b.extend_from_slice(&[2, 2, 0, 1]);
        b
    }

    #[test]
    fn flexible_version_1_decodes() {
        let v = decode_value(&flexible_value()).unwrap();
        assert_eq!(
            v,
            TransactionLogValue {
                previous_producer_id: 999,
                ..value()
            }
        );
        // Null partitions and no tagged fields.
        let mut b = vec![0, 1];
        b.extend_from_slice(&5i64.to_be_bytes());
        b.extend_from_slice(&[0, 0, 0, 0, 0, 9, 0, 0]);
        b.extend_from_slice(&1i64.to_be_bytes());
        b.extend_from_slice(&(-1i64).to_be_bytes());
        b.push(0);
        let v = decode_value(&b).unwrap();
        assert_eq!(v.transaction_partitions, None);
        assert_eq!(v.transaction_status, TransactionState::Empty);
        assert_eq!(v.previous_producer_id, -1);
    }

    #[test]
    fn garbage_returns_errors() {
        assert!(decode_key(&[]).is_err());
        assert!(decode_key(&[0, 0, 0, 5, b'a']).is_err());
        assert!(decode_key(&[0, 0, 0xff, 0xfe]).is_err());
        assert!(decode_key(&[0, 0, 0, 1, 0xff]).is_err()); // not UTF-8
        assert!(decode_key(&[0, 0, 0, 1, b'a', 0]).is_err()); // trailing byte
        assert_eq!(
            decode(&[0, 1, 9], None).unwrap(),
            Record::Unknown { key_version: 1 }
        );
        assert!(decode_value(&[0, 2]).is_err());
        let mut bad_status = value().encode();
        bad_status[16] = 8;
        assert_eq!(
            decode_value(&bad_status),
            Err(RecordError::UnknownTransactionStatus(8))
        );
        // A topic count of 2^31-1 with nothing behind it.
        let mut huge = value().encode();
        huge.truncate(17);
        huge.extend_from_slice(&i32::MAX.to_be_bytes());
        assert!(decode_value(&huge).is_err());

        for full in [value().encode(), flexible_value()] {
            // Every truncation is an error, never a panic.
            for n in 0..full.len() {
                assert!(decode_value(&full[..n]).is_err(), "len {n}");
            }
            // Every single-byte corruption decodes or errors, never panics.
            for i in 0..full.len() {
                for flip in [0xff, 0x80, 0x01] {
                    let mut c = full.clone();
                    c[i] ^= flip;
                    let _ = decode_value(&c);
                    let _ = decode(&c, Some(&c));
                }
            }
        }
    }
}
