use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::{AddPartitionsToTxnRequest, AddPartitionsToTxnResponse};
use kafka_protocol::ResponseError;

use crate::broker::Broker;
use crate::dispatch::RequestContext;

/// From v4 the request is a broker's batch (KIP-890 verification), whose
/// partitions were produced to and so exist.
const BATCHED_VERSION: i16 = 4;

/// A producer's AddPartitionsToTxn, checked as Kafka's request handler does
/// before the coordinator sees it: a partition that does not exist answers
/// UNKNOWN_TOPIC_OR_PARTITION and the others OPERATION_NOT_ATTEMPTED, so a
/// transaction never holds a partition no marker can reach.
pub async fn handle(
    broker: &Broker,
    ctx: &RequestContext<'_>,
    request: AddPartitionsToTxnRequest,
) -> AddPartitionsToTxnResponse {
    if ctx.api_version < BATCHED_VERSION {
        let image = broker.image();
        let exists = |topic: &str, partition: i32| image.partition(topic, partition).is_some();
        let unknown = request
            .v3_and_below_topics
            .iter()
            .any(|t| t.partitions.iter().any(|&p| !exists(t.name.0.as_str(), p)));
        if unknown {
            let results = request
                .v3_and_below_topics
                .into_iter()
                .map(|t| {
                    let partitions = t
                        .partitions
                        .iter()
                        .map(|&p| {
                            let error = if exists(t.name.0.as_str(), p) {
                                ResponseError::OperationNotAttempted
                            } else {
                                ResponseError::UnknownTopicOrPartition
                            };
                            AddPartitionsToTxnPartitionResult::default()
                                .with_partition_index(p)
                                .with_partition_error_code(error.code())
                        })
                        .collect();
                    AddPartitionsToTxnTopicResult::default()
                        .with_name(t.name)
                        .with_results_by_partition(partitions)
                })
                .collect();
            return AddPartitionsToTxnResponse::default()
                .with_results_by_topic_v3_and_below(results);
        }
    }
    broker
        .txns
        .add_partitions_to_txn(request, ctx.api_version)
        .await
}
