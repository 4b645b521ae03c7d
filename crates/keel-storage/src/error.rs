//! The storage layer's error type. Each variant maps to one Kafka error code
//! at the server's seam (`keel-server/src/errors.rs`), so names follow Kafka's.

use std::io;

/// Everything that can go wrong while storing or reading a partition.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The filesystem failed. Errors raised inside this crate carry what we
    /// were doing and on which path in their message (see [`IoContext`]);
    /// the `ErrorKind` is preserved.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// A batch's CRC or framing is wrong (Kafka `CORRUPT_MESSAGE`).
    #[error("corrupt message: {0}")]
    CorruptMessage(String),
    /// A batch is well framed but its contents break the format (Kafka `INVALID_RECORD`).
    #[error("invalid record: {0}")]
    InvalidRecord(String),
    /// Only RecordBatch v2 is accepted (Kafka `UNSUPPORTED_VERSION` / `CORRUPT_MESSAGE`).
    #[error("unsupported record batch magic {0}")]
    UnsupportedMagic(i8),
    /// A single batch exceeds `max.message.bytes` (Kafka `MESSAGE_TOO_LARGE`).
    #[error("batch of {size} bytes exceeds max.message.bytes {max}")]
    MessageTooLarge { size: u64, max: u64 },
    /// One append exceeds `segment.bytes` (Kafka `RECORD_LIST_TOO_LARGE`).
    #[error("append of {size} bytes exceeds segment.bytes {max}")]
    RecordListTooLarge { size: u64, max: u64 },
    /// The log cleaner was stopped in the middle of a clean.
    #[error("log cleaner stopped")]
    CleanerStopped,
    /// Kafka `OFFSET_OUT_OF_RANGE`.
    #[error("offset {requested} out of range [{log_start}, {log_end}]")]
    OffsetOutOfRange {
        requested: i64,
        log_start: i64,
        log_end: i64,
    },
    /// Kafka `OUT_OF_ORDER_SEQUENCE_NUMBER`.
    #[error(
        "out of order sequence for producer {producer_id}: expected {expected}, got {received}"
    )]
    OutOfOrderSequence {
        producer_id: i64,
        expected: i32,
        received: i32,
    },
    /// Kafka `UNKNOWN_PRODUCER_ID`.
    #[error("unknown producer id {0}")]
    UnknownProducerId(i64),
    /// Kafka `INVALID_PRODUCER_EPOCH`: a newer epoch has fenced this producer.
    #[error("producer {producer_id} epoch {received} is older than current epoch {current}")]
    InvalidProducerEpoch {
        producer_id: i64,
        current: i16,
        received: i16,
    },
    /// Kafka `TRANSACTION_COORDINATOR_FENCED`: a transaction marker from a
    /// lower coordinator epoch than the producer's last marker, written by
    /// a coordinator its successor has replaced.
    #[error(
        "transaction marker for producer {producer_id} has coordinator epoch {received}, \
         older than current coordinator epoch {current}"
    )]
    TransactionCoordinatorFenced {
        producer_id: i64,
        current: i32,
        received: i32,
    },
    /// Kafka `INVALID_TXN_STATE`: e.g. a non-transactional batch from a
    /// producer whose transaction is ongoing.
    #[error("invalid transaction state: {0}")]
    InvalidTxnState(String),
    /// A follower append that would move the log end backwards (Kafka's
    /// `UnexpectedAppendOffsetException`).
    #[error("append at offset {first_offset} below log end offset {log_end}")]
    UnexpectedAppendOffset { first_offset: i64, log_end: i64 },
    /// `partition.metadata` names another topic id (Kafka `INCONSISTENT_TOPIC_ID`).
    #[error("partition.metadata holds topic id {found}, expected {expected}")]
    InconsistentTopicId { expected: String, found: String },
    /// Data on disk does not parse; the broker cannot trust this directory.
    #[error("corrupt data on disk: {0}")]
    Corrupt(String),
}

/// Attaches what we were doing to an `io::Error`, so a failed broker start
/// names the file instead of just saying "No such file or directory".
pub(crate) trait IoContext<T> {
    fn ctx<F: FnOnce() -> String>(self, f: F) -> Result<T, StorageError>;
}

impl<T> IoContext<T> for Result<T, io::Error> {
    fn ctx<F: FnOnce() -> String>(self, f: F) -> Result<T, StorageError> {
        self.map_err(|e| StorageError::Io(io::Error::new(e.kind(), format!("{}: {e}", f()))))
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;
