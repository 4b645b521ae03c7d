use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::{DescribeProducersRequest, DescribeProducersResponse, ProducerId};
use kafka_protocol::ResponseError;
use keel_types::TopicPartition;

use crate::broker::Broker;
use crate::dispatch::RequestContext;

/// The producers a partition leader knows, with the first offset of each
/// one's open transaction: how `keel txn` (and Kafka's transactions tool)
/// finds a hanging transaction.
pub fn handle(
    broker: &Broker,
    _ctx: &RequestContext<'_>,
    request: DescribeProducersRequest,
) -> DescribeProducersResponse {
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partition_indexes
                .iter()
                .map(|&index| {
                    let answer = PartitionResponse::default().with_partition_index(index);
                    let tp = TopicPartition::new(topic.name.0.as_str(), index);
                    let Some(partition) = broker.replicas.get(&tp) else {
                        return answer
                            .with_error_code(ResponseError::UnknownTopicOrPartition.code());
                    };
                    if !partition.is_leader() {
                        return answer.with_error_code(ResponseError::NotLeaderOrFollower.code());
                    }
                    let producers = partition.with_log(|log| {
                        log.producers()
                            .into_iter()
                            .map(|(id, p)| {
                                ProducerState::default()
                                    .with_producer_id(ProducerId(id))
                                    .with_producer_epoch(i32::from(p.epoch))
                                    .with_last_sequence(p.batches.back().map_or(-1, |b| b.last_seq))
                                    .with_last_timestamp(p.last_timestamp)
                                    .with_coordinator_epoch(p.coordinator_epoch)
                                    .with_current_txn_start_offset(
                                        p.current_txn_first_offset.unwrap_or(-1),
                                    )
                            })
                            .collect()
                    });
                    answer.with_active_producers(producers)
                })
                .collect();
            TopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions)
        })
        .collect();
    DescribeProducersResponse::default().with_topics(topics)
}
