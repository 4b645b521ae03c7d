use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, ResponseKind};
use kafka_protocol::ResponseError;
use keel_types::TopicPartition;

use super::str_bytes;
use crate::broker::{now_ms, Broker};
use crate::dispatch::{Outcome, RequestContext};
use crate::errors::storage_error;

/// Produce v13 names topics by id instead of by name.
const TOPIC_IDS_VERSION: i16 = 13;

pub async fn handle(broker: &Broker, ctx: &RequestContext<'_>, request: ProduceRequest) -> Outcome {
    let acks = request.acks;
    let now = now_ms();
    let image = broker.image();
    let mut flushes = Vec::new();
    let mut failed = false;
    let mut responses = Vec::with_capacity(request.topic_data.len());
    for topic in request.topic_data {
        let resolved = if ctx.api_version >= TOPIC_IDS_VERSION {
            image.topic_by_id(&topic.topic_id)
        } else {
            image.topic_by_name(topic.name.0.as_str())
        };
        let unknown = if ctx.api_version >= TOPIC_IDS_VERSION {
            ResponseError::UnknownTopicId
        } else {
            ResponseError::UnknownTopicOrPartition
        };
        let mut partitions = Vec::with_capacity(topic.partition_data.len());
        for data in topic.partition_data {
            let answer = PartitionProduceResponse::default()
                .with_index(data.index)
                .with_base_offset(-1)
                .with_log_append_time_ms(-1)
                .with_log_start_offset(-1);
            let error = |error: ResponseError, message: Option<String>| {
                answer
                    .clone()
                    .with_error_code(error.code())
                    .with_error_message(message.as_deref().map(str_bytes))
            };
            let partition = resolved.and_then(|t| {
                broker
                    .replicas
                    .get(&TopicPartition::new(t.name.clone(), data.index))
            });
            let response = match (partition, data.records) {
                _ if !matches!(acks, -1..=1) => error(ResponseError::InvalidRequiredAcks, None),
                _ if request.transactional_id.is_some() => error(
                    ResponseError::TransactionalIdAuthorizationFailed,
                    Some("transactions are not supported by this broker yet".into()),
                ),
                (None, _) => error(unknown, None),
                (Some(_), None) => {
                    error(ResponseError::CorruptMessage, Some("null records".into()))
                }
                (Some(partition), Some(records)) => {
                    // This node is the whole ISR of every partition it leads.
                    let isr_size = 1;
                    let topic_configs = &resolved.expect("partition implies topic").configs;
                    if acks == -1
                        && isr_size < broker.config.min_insync_replicas(&image, topic_configs)
                    {
                        error(ResponseError::NotEnoughReplicas, None)
                    } else {
                        // Copy out of the request frame so offsets and
                        // timestamps can be patched in place.
                        let mut batches = records.to_vec();
                        match partition.append(&mut batches, now) {
                            Ok(appended) => {
                                if appended.needs_flush {
                                    flushes.push((partition.clone(), appended.last_offset + 1));
                                }
                                answer
                                    .with_base_offset(appended.first_offset)
                                    .with_log_append_time_ms(appended.log_append_time)
                                    .with_log_start_offset(appended.log_start_offset)
                            }
                            Err(e) => {
                                tracing::info!(partition = %partition.tp, error = %e, "produce refused");
                                error(storage_error(&e), Some(e.to_string()))
                            }
                        }
                    }
                }
            };
            failed |= response.error_code != 0;
            partitions.push(response);
        }
        responses.push(
            TopicProduceResponse::default()
                .with_name(topic.name)
                .with_topic_id(topic.topic_id)
                .with_partition_responses(partitions),
        );
    }
    if flushes.is_empty() {
        return finish(acks, failed, responses);
    }
    // The answer waits for the fsync, but the connection need not: it goes
    // on reading and appending pipelined requests, so one fsync covers them
    // all (and whatever other producers appended meanwhile).
    Outcome::Deferred(Box::pin(async move {
        for (partition, offset) in flushes {
            if let Err(e) = partition.flush_to(offset).await {
                tracing::error!(partition = %partition.tp, error = %e, "flush failed");
                failed = true;
                for topic in &mut responses {
                    let same_topic = topic.name.0.as_str() == partition.tp.topic;
                    for p in &mut topic.partition_responses {
                        if same_topic && p.index == partition.tp.partition {
                            p.error_code = ResponseError::KafkaStorageError.code();
                        }
                    }
                }
            }
        }
        finish(acks, failed, responses)
    }))
}

fn finish(acks: i16, failed: bool, responses: Vec<TopicProduceResponse>) -> Outcome {
    if acks == 0 {
        // No response is sent for acks=0; closing the connection is the only
        // way Kafka has to tell such a producer something went wrong.
        return if failed {
            Outcome::Close("acks=0 produce failed")
        } else {
            Outcome::NoResponse
        };
    }
    Outcome::Respond(Box::new(ResponseKind::Produce(
        ProduceResponse::default().with_responses(responses),
    )))
}
