//! DeleteRecords: advances a partition's log start offset. Segments wholly
//! below it go at the next retention check, as in Kafka.

use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};
use kafka_protocol::ResponseError;
use keel_types::TopicPartition;

use crate::broker::Broker;
use crate::dispatch::RequestContext;
use crate::errors::storage_error;

/// "Delete up to the high watermark."
const HIGH_WATERMARK: i64 = -1;

pub fn handle(
    broker: &Broker,
    _ctx: &RequestContext<'_>,
    request: DeleteRecordsRequest,
) -> DeleteRecordsResponse {
    let mut moved = false;
    let topics = request
        .topics
        .iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let result =
                        DeleteRecordsPartitionResult::default().with_partition_index(p.partition_index);
                    let tp = TopicPartition::new(topic.name.0.as_str(), p.partition_index);
                    let Some(partition) = broker.replicas.get(&tp) else {
                        return result
                            .with_low_watermark(-1)
                            .with_error_code(ResponseError::UnknownTopicOrPartition.code());
                    };
                    // Kafka's Partition.deleteRecordsOnLeader: a log that is only
                    // compacted keeps every key's latest value, whatever the offset.
                    if !partition.with_log(|log| log.config().cleanup_policy.delete) {
                        tracing::info!(partition = %tp, "DeleteRecords refused on a compacted topic");
                        return result
                            .with_low_watermark(-1)
                            .with_error_code(ResponseError::PolicyViolation.code());
                    }
                    let high_watermark = partition.high_watermark();
                    let offset = match p.offset {
                        HIGH_WATERMARK => high_watermark,
                        o => o,
                    };
                    if offset < 0 || offset > high_watermark {
                        tracing::info!(partition = %tp, offset = p.offset, high_watermark, "DeleteRecords beyond the high watermark refused");
                        return result
                            .with_low_watermark(-1)
                            .with_error_code(ResponseError::OffsetOutOfRange.code());
                    }
                    match partition.with_log(|log| {
                        log.maybe_increment_log_start_offset(offset)
                            .map(|()| log.log_start_offset())
                    }) {
                        Ok(low_watermark) => {
                            moved = true;
                            tracing::info!(partition = %tp, low_watermark, "deleted records");
                            result.with_low_watermark(low_watermark)
                        }
                        Err(e) => result
                            .with_low_watermark(-1)
                            .with_error_code(storage_error(&e).code()),
                    }
                })
                .collect();
            DeleteRecordsTopicResult::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    if moved {
        // Checkpoint at once: a restart must not bring deleted records back.
        if let Err(e) = broker.checkpoint() {
            tracing::error!(error = %e, "writing checkpoints after DeleteRecords failed");
        }
    }
    DeleteRecordsResponse::default().with_topics(topics)
}
