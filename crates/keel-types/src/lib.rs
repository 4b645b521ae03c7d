//! Kafka-vocabulary types shared by every Keel crate.
//!
//! **Architecture Invariant:** this crate depends on no other Keel crate and on
//! no runtime (no tokio, no I/O). It holds names and limits, and the byte
//! layout of Kafka's internal-topic record schemas that both coordinators
//! share (`record_schema`), not behaviour.

pub mod coordinator;
pub mod limits;
pub mod record_schema;
mod topic_partition;

pub use topic_partition::{TopicPartition, TopicPartitionParseError};

/// An offset in a partition's log. Kafka offsets are signed 64-bit integers
/// and `-1` is a common "none" sentinel on the wire, so we keep `i64` rather
/// than wrapping it: every API we speak uses it raw.
pub type Offset = i64;

/// The epoch of a partition's leadership; bumped on every leader change.
pub type LeaderEpoch = i32;

/// A producer id handed out by InitProducerId; `-1` means "not idempotent".
pub type ProducerId = i64;

/// A producer's epoch; bumped when a transactional producer is re-initialised.
pub type ProducerEpoch = i16;

/// `-1` on the wire: no producer id.
pub const NO_PRODUCER_ID: ProducerId = -1;
/// `-1` on the wire: no producer epoch.
pub const NO_PRODUCER_EPOCH: ProducerEpoch = -1;
/// `-1` on the wire: no sequence number.
pub const NO_SEQUENCE: i32 = -1;
/// `-1` on the wire: no timestamp.
pub const NO_TIMESTAMP: i64 = -1;
/// `-1` on the wire: no leader epoch (Kafka's `NO_PARTITION_LEADER_EPOCH`,
/// and `UNDEFINED_EPOCH` in OffsetForLeaderEpoch answers).
pub const NO_LEADER_EPOCH: LeaderEpoch = -1;
