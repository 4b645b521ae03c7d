//! OffsetForLeaderEpoch: where a leader epoch ends in the leader's log
//! (KIP-101, KIP-279). Consumers ask it after a leader change to check that
//! their position was not truncated away (KIP-320); followers may ask it too.
//!
//! Kafka answers from the leader only, whoever asks: the `replica_id` of v3+
//! changes nothing, and the latest epoch ends at the log end offset, not the
//! high watermark, for consumers as for followers.

use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};
use keel_types::{TopicPartition, NO_LEADER_EPOCH};

use super::led_partition;
use crate::broker::Broker;
use crate::dispatch::RequestContext;

pub fn handle(
    broker: &Broker,
    _ctx: &RequestContext<'_>,
    request: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let answer = EpochEndOffset::default()
                        .with_partition(p.partition)
                        .with_leader_epoch(NO_LEADER_EPOCH)
                        .with_end_offset(-1);
                    let tp = TopicPartition::new(topic.topic.0.to_string(), p.partition);
                    // Only -1 means no epoch here, unlike Fetch.
                    let current_leader_epoch = (p.current_leader_epoch != NO_LEADER_EPOCH)
                        .then_some(p.current_leader_epoch);
                    let partition = match led_partition(broker, &tp, current_leader_epoch) {
                        Ok(partition) => partition,
                        Err(error) => return answer.with_error_code(error.code()),
                    };
                    match partition.with_log(|log| log.end_offset_for_epoch(p.leader_epoch)) {
                        Some((epoch, end_offset)) => {
                            answer.with_leader_epoch(epoch).with_end_offset(end_offset)
                        }
                        None => answer,
                    }
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(topic.topic)
                .with_partitions(partitions)
        })
        .collect();
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}
