//! The consumer group coordinator: the classic group protocol (JoinGroup,
//! SyncGroup, Heartbeat, LeaveGroup), the KIP-848 consumer protocol
//! (ConsumerGroupHeartbeat, ConsumerGroupDescribe), committed offsets
//! (transactional ones too: TxnOffsetCommit), and the group admin APIs,
//! persisted as Kafka's `__consumer_offsets` records.
//!
//! Code map:
//! - `state_machine/` (`GroupCoordinator`): every decision, deterministic
//!   and synchronous; time is an argument, effects are data.
//!   `state_machine/loading.rs`: the `__consumer_offsets` partitions it
//!   coordinates; loading or unloading one touches only that partition's
//!   groups.
//! - `group.rs`, `member.rs`, `offsets.rs`: the state it decides over;
//!   `offsets.rs` also holds the offsets of open transactions until their
//!   producer's COMMIT or ABORT marker.
//! - `consumer_group.rs`: KIP-848 "consumer" groups (ConsumerGroupHeartbeat,
//!   ConsumerGroupDescribe, member epochs, reconciliation), decided by the
//!   same `GroupCoordinator` in the same group id namespace; `assignor.rs`:
//!   their server-side assignors (uniform, range); `consumer_persist.rs`:
//!   their membership as Kafka's `ConsumerGroup*` records, written on every
//!   change and replayed on load.
//! - `records.rs`: the `__consumer_offsets` key and value formats.
//! - `topic_ids.rs`: OffsetCommit and OffsetFetch v10 name topics by id;
//!   the service resolves them to names around the coordinator, which keeps
//!   offsets by name for every version.
//! - `service.rs` (`GroupService`): **API Boundary.** The async entry the
//!   broker's handlers call; it owns the mutex, the timers and the log.
//!
//! **Architecture Invariant:** only `service.rs` knows about tokio and the
//! clock; nothing here opens a socket or a file (records leave through the
//! `OffsetsLog` trait).

pub mod assignor;
pub mod consumer_group;
mod consumer_persist;
mod group;
mod member;
mod offsets;
pub mod records;
mod service;
pub mod state_machine;
mod topic_ids;

pub use consumer_group::{
    ConsumerGroup, ConsumerGroupState, ConsumerMember, MemberState, NoTopics, TopicMetadata,
};
pub use group::{Group, GroupState};
pub use keel_types::coordinator::partition_for;
pub use member::{Member, Protocol};
pub use service::{GroupService, LogEntry, LogRecord, OffsetsLog};
pub use state_machine::{
    txn_commit_answer, Effects, GroupCoordinator, JoinContext, RequestToken, Response, TimerKey,
    TransactionalProducer,
};

/// The coordinator's settings, named after Kafka's broker configs with the
/// dots turned into underscores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    /// `offsets.topic.num.partitions`.
    pub offsets_topic_partitions: i32,
    /// `group.min.session.timeout.ms`.
    pub group_min_session_timeout_ms: i32,
    /// `group.max.session.timeout.ms`.
    pub group_max_session_timeout_ms: i32,
    /// `group.initial.rebalance.delay.ms`; 0 completes the first join at once.
    pub group_initial_rebalance_delay_ms: i32,
    /// `group.max.size`.
    pub group_max_size: i32,
    /// `offsets.retention.minutes`, in milliseconds.
    pub offsets_retention_ms: i64,
    /// `offset.metadata.max.bytes`.
    pub offset_metadata_max_bytes: usize,
    /// `group.consumer.heartbeat.interval.ms` (KIP-848 groups).
    pub consumer_heartbeat_interval_ms: i32,
    /// `group.consumer.session.timeout.ms` (KIP-848 groups).
    pub consumer_session_timeout_ms: i32,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            offsets_topic_partitions: 50,
            group_min_session_timeout_ms: 6_000,
            group_max_session_timeout_ms: 1_800_000,
            group_initial_rebalance_delay_ms: 3_000,
            group_max_size: i32::MAX,
            offsets_retention_ms: 7 * 24 * 60 * 60 * 1000,
            offset_metadata_max_bytes: 4096,
            consumer_heartbeat_interval_ms: 5_000,
            consumer_session_timeout_ms: 45_000,
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod consumer_tests;
