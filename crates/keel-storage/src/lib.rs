//! Keel's storage: partitions as directories of segments in Apache Kafka's
//! on-disk format. A segment is a `.log` of RecordBatch v2 bytes as
//! received (the leader assigns the base offset and leader epoch), a sparse
//! `.index`, a `.timeindex` and, once it holds an ABORT marker, a
//! `.txnindex` of aborted transactions; a partition adds
//! `leader-epoch-checkpoint`, `partition.metadata` and producer-state
//! `.snapshot` files (idempotence and ongoing transactions); a log dir adds
//! offset checkpoints (recovery point, log start, and the cleaner's first
//! dirty offsets in `cleaner-offset-checkpoint`) and the clean-shutdown marker.
//!
//! Logs whose `cleanup.policy` includes `compact` are compacted by the log
//! cleaner (`cleaner/`): `clean.rs` maps keys to their latest offsets and
//! rewrites segments into `.cleaned` files, `swap.rs` swaps them in through
//! Kafka's `.swap` files, which `recovery.rs` completes after a crash.
//! `codec.rs` holds the record codecs (gzip, snappy, lz4, zstd) for the few
//! places that look inside batches: the cleaner and the key check on
//! compacted topics.
//!
//! **Architecture Invariant:** this crate knows nothing of sockets, tokio,
//! the Kafka wire protocol or Raft. It is synchronous file I/O on `std`.
//!
//! **API Boundary:** [`Log`] (one partition, wrapped in a mutex by the
//! caller), [`LogManager`] (one log dir), and the cleaner's three steps
//! ([`Log::prepare_clean`], [`CleanerTask::clean`], [`Log::install_cleaned`]).

pub mod batch;
mod checkpoint;
mod cleaner;
pub mod codec;
mod config;
mod error;
mod index;
mod index_file;
mod log;
mod log_manager;
mod producer_state;
mod recovery;
mod retention;
mod segment;
mod time_index;
mod txn_index;

pub use batch::{
    iter_records, validate_batch, BatchBuilder, BatchIter, BatchRecords, Compression,
    ControlRecordType, EndTxnMarker, RecordBatchHeader, RecordView,
};
pub use checkpoint::{read_offset_checkpoint, write_offset_checkpoint, LeaderEpochCache};
pub use cleaner::{
    filthiest_log, CleanOutcome, CleanedLog, CleanerConfig, CleanerStats, CleanerTask,
    LogDirtiness, RetiredSegments, Throttler,
};
pub use config::{CleanupPolicy, LogConfig, TimestampType};
pub use error::StorageError;
pub use log::{FetchSlice, Log, LogAppendResult};
pub use log_manager::{
    LogManager, CLEANER_OFFSET_CHECKPOINT, CLEAN_SHUTDOWN_MARKER, LOG_START_OFFSET_CHECKPOINT,
    RECOVERY_POINT_CHECKPOINT,
};
pub use producer_state::{BatchMetadata, OngoingTxn, ProducerEntry};
pub use txn_index::AbortedTxn;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod txn_tests;
