use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use keel_types::TopicPartition;

use super::led_partition;
use crate::broker::Broker;
use crate::dispatch::RequestContext;
use crate::errors::storage_error;

/// ListOffsets' special timestamps.
pub(crate) const LATEST_TIMESTAMP: i64 = -1;
pub(crate) const EARLIEST_TIMESTAMP: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
/// KIP-405: earliest offset still on local disk; without tiering, the log start.
const EARLIEST_LOCAL_TIMESTAMP: i64 = -4;
/// KIP-1005: latest offset in remote storage; none without tiering.
const LATEST_TIERED_TIMESTAMP: i64 = -5;

/// The `replica_id` of a consumer.
const CONSUMER_REPLICA_ID: i32 = -1;
/// The `replica_id` of Kafka's debugging tools, which may ask any replica.
const DEBUGGING_REPLICA_ID: i32 = -2;

/// Answers carry the offset's leader epoch from v4 on.
const LEADER_EPOCH_VERSION: i16 = 4;

pub fn handle(
    broker: &Broker,
    ctx: &RequestContext<'_>,
    request: ListOffsetsRequest,
) -> ListOffsetsResponse {
    let with_epoch = ctx.api_version >= LEADER_EPOCH_VERSION;
    // Kafka's rule: any replica id but a consumer's (a follower, or the
    // debugging id -2) reads to the log end, whatever the isolation level.
    let replica = request.replica_id.0 != CONSUMER_REPLICA_ID;
    let read_committed = request.isolation_level == super::READ_COMMITTED;
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let answer = ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index)
                        .with_timestamp(-1)
                        .with_offset(-1)
                        .with_leader_epoch(-1);
                    let tp = TopicPartition::new(topic.name.0.to_string(), p.partition_index);
                    let current_leader_epoch =
                        (p.current_leader_epoch >= 0).then_some(p.current_leader_epoch);
                    // Kafka's rule: only the debugging replica id may read a
                    // follower's offsets; consumers and followers ask the leader.
                    let partition = if request.replica_id.0 == DEBUGGING_REPLICA_ID {
                        broker.hosted_partition(&tp)
                    } else {
                        led_partition(broker, &tp, current_leader_epoch)
                    };
                    let partition = match partition {
                        Ok(partition) => partition,
                        Err(error) => return answer.with_error_code(error.code()),
                    };
                    // A consumer sees nothing at or past the high watermark
                    // (read_committed: the last stable offset), by offset or
                    // by timestamp.
                    let last_fetchable = if replica {
                        partition.log_end_offset()
                    } else if read_committed {
                        partition.last_stable_offset()
                    } else {
                        partition.high_watermark()
                    };
                    let found = match p.timestamp {
                        LATEST_TIMESTAMP => Ok(Some((last_fetchable, -1))),
                        EARLIEST_TIMESTAMP | EARLIEST_LOCAL_TIMESTAMP => {
                            Ok(Some((partition.log_start_offset(), -1)))
                        }
                        LATEST_TIERED_TIMESTAMP => Ok(None),
                        MAX_TIMESTAMP => Ok(partition.with_log(|log| {
                            let (timestamp, offset) = log.max_timestamp_and_offset();
                            (offset >= 0).then_some((offset, timestamp))
                        })),
                        timestamp => {
                            partition.with_log(|log| log.fetch_offset_by_timestamp(timestamp))
                        }
                    }
                    .map(|found| found.filter(|&(offset, _)| offset <= last_fetchable));
                    match found {
                        Ok(Some((offset, timestamp))) => answer
                            .with_offset(offset)
                            .with_timestamp(timestamp)
                            .with_leader_epoch(if with_epoch {
                                partition.leader_epoch()
                            } else {
                                -1
                            }),
                        Ok(None) => answer,
                        Err(e) => answer.with_error_code(storage_error(&e).code()),
                    }
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}
