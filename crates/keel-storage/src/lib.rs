//! Keel's storage: partitions as directories of segments in Apache Kafka's
//! on-disk format. A segment is a `.log` of RecordBatch v2 bytes exactly as
//! received (base offset and leader epoch patched in place), a sparse
//! `.index` and a `.timeindex`; a partition adds `leader-epoch-checkpoint`,
//! `partition.metadata` and producer-state `.snapshot` files; a log dir adds
//! offset checkpoints and the clean-shutdown marker.
//!
//! **Architecture Invariant:** this crate knows nothing of sockets, tokio,
//! the Kafka wire protocol or Raft. It is synchronous file I/O on `std`.
//!
//! **API Boundary:** [`Log`] (one partition, wrapped in a mutex by the
//! caller) and [`LogManager`] (one log dir).

pub mod batch;
mod checkpoint;
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

pub use batch::{
    iter_records, validate_batch, BatchBuilder, BatchIter, Compression, RecordBatchHeader,
    RecordView,
};
pub use checkpoint::{read_offset_checkpoint, write_offset_checkpoint, LeaderEpochCache};
pub use config::{LogConfig, TimestampType};
pub use error::StorageError;
pub use log::{FetchSlice, Log, LogAppendResult};
pub use log_manager::{
    LogManager, CLEAN_SHUTDOWN_MARKER, LOG_START_OFFSET_CHECKPOINT, RECOVERY_POINT_CHECKPOINT,
};
pub use producer_state::{BatchMetadata, ProducerEntry};

#[cfg(test)]
mod tests;
