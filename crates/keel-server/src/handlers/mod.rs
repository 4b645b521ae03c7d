//! One module per Kafka API. A handler decodes nothing and writes nothing:
//! it takes the decoded request and returns the response.

pub mod add_partitions_to_txn;
pub mod alter_configs;
pub mod alter_partition_reassignments;
pub mod api_versions;
pub mod create_partitions;
pub mod create_topics;
pub mod delete_records;
pub mod delete_topics;
pub mod describe_cluster;
pub mod describe_configs;
pub mod describe_log_dirs;
pub mod describe_producers;
pub mod elect_leaders;
pub mod fetch;
pub mod find_coordinator;
pub mod incremental_alter_configs;
pub mod init_producer_id;
pub mod list_offsets;
pub mod list_partition_reassignments;
pub mod metadata;
pub mod offset_for_leader_epoch;
pub mod produce;
pub mod txn_offset_commit;
pub mod unregister_broker;
pub mod write_txn_markers;

use std::sync::Arc;

use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use keel_types::TopicPartition;

use crate::broker::Broker;
use crate::replica_manager::{Leadership, Partition};

pub fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

pub fn topic_name(s: &str) -> TopicName {
    TopicName(str_bytes(s))
}

/// Kafka's "authorized operations were not requested" sentinel.
pub const AUTHORIZED_OPERATIONS_OMITTED: i32 = i32::MIN;

/// `isolation_level` (Fetch, ListOffsets) of a consumer that must not see
/// open or aborted transactions.
pub const READ_COMMITTED: i8 = 1;

/// Why this broker cannot serve a partition's reads (Fetch,
/// OffsetForLeaderEpoch), if it cannot: a client's leader epoch, when it
/// gives one, must be ours (KIP-320), and only the leader serves (Keel has
/// no follower fetching for consumers). Kafka's `getLocalLog`.
pub fn leadership_error(
    state: Leadership,
    node_id: i32,
    current_leader_epoch: Option<i32>,
) -> Option<ResponseError> {
    match current_leader_epoch {
        Some(epoch) if epoch > state.leader_epoch => Some(ResponseError::UnknownLeaderEpoch),
        Some(epoch) if epoch < state.leader_epoch => Some(ResponseError::FencedLeaderEpoch),
        _ => (state.leader != node_id).then_some(ResponseError::NotLeaderOrFollower),
    }
}

/// The partition, if this broker leads it in the epoch the client named
/// (`None`: it named none), for requests only a leader answers
/// (OffsetForLeaderEpoch, ListOffsets); errors as
/// [`Broker::hosted_partition`].
pub fn led_partition(
    broker: &Broker,
    tp: &TopicPartition,
    current_leader_epoch: Option<i32>,
) -> Result<Arc<Partition>, ResponseError> {
    let partition = broker.hosted_partition(tp)?;
    match leadership_error(
        partition.leadership(),
        broker.config.node_id,
        current_leader_epoch,
    ) {
        Some(error) => Err(error),
        None => Ok(partition),
    }
}
