use std::time::Duration;

use kafka_protocol::messages::produce_response::{
    LeaderIdAndEpoch, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::BrokerId;
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, ResponseKind};
use kafka_protocol::ResponseError;
use keel_storage::RecordBatchHeader;
use keel_types::TopicPartition;

use super::str_bytes;
use crate::broker::{now_ms, Broker};
use crate::dispatch::{Outcome, RequestContext};
use crate::errors::storage_error;
use crate::replica_manager::{AppendError, Leadership, Partition};

/// Produce v13 names topics by id instead of by name.
const TOPIC_IDS_VERSION: i16 = 13;

pub async fn handle(broker: &Broker, ctx: &RequestContext<'_>, request: ProduceRequest) -> Outcome {
    let acks = request.acks;
    let now = now_ms();
    let image = broker.image();
    let mut flushes = Vec::new();
    // acks=all appends: (partition, offset the high watermark must pass,
    // leader epoch of the append, min.insync.replicas).
    let mut replications = Vec::new();
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
                (None, _) => error(unknown, None),
                (Some(_), None) => {
                    error(ResponseError::CorruptMessage, Some("null records".into()))
                }
                (Some(partition), Some(records)) => {
                    let leadership = partition.leadership();
                    let topic_configs = &resolved.expect("partition implies topic").configs;
                    let min_isr = if acks == -1 {
                        broker.config.min_insync_replicas(&image, topic_configs)
                    } else {
                        0
                    };
                    let transaction = transaction_check(
                        broker,
                        request.transactional_id.as_ref().map(|id| id.0.as_str()),
                        &partition,
                        &records,
                    );
                    if leadership.leader != broker.config.node_id {
                        not_leader(answer.clone(), leadership)
                    } else if leadership.isr_size < min_isr {
                        error(ResponseError::NotEnoughReplicas, None)
                    } else if let Err(refused) = transaction.await {
                        tracing::info!(partition = %partition.tp, error = ?refused, "transactional produce refused");
                        error(refused, None)
                    } else {
                        match partition.append(&records, now) {
                            Ok(appended) => {
                                if appended.needs_flush {
                                    flushes.push((partition.clone(), appended.last_offset + 1));
                                }
                                if acks == -1 {
                                    replications.push((
                                        partition.clone(),
                                        appended.last_offset + 1,
                                        leadership.leader_epoch,
                                        min_isr,
                                    ));
                                }
                                answer
                                    .with_base_offset(appended.first_offset)
                                    .with_log_append_time_ms(appended.log_append_time)
                                    .with_log_start_offset(appended.log_start_offset)
                            }
                            Err(AppendError::NotLeader) => {
                                not_leader(answer.clone(), partition.leadership())
                            }
                            Err(AppendError::Storage(e)) => {
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
    if flushes.is_empty() && replications.is_empty() {
        return finish(acks, failed, responses);
    }
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(request.timeout_ms.max(0) as u64);
    // The answer waits for the fsync and the followers, but the connection
    // need not: it goes on reading and appending pipelined requests, so one
    // fsync covers them all (and whatever other producers appended).
    Outcome::Deferred(Box::pin(async move {
        let mut fail = |tp: &TopicPartition, error: ResponseError| {
            failed = true;
            for topic in &mut responses {
                let same_topic = topic.name.0.as_str() == tp.topic;
                for p in &mut topic.partition_responses {
                    if same_topic && p.index == tp.partition {
                        p.error_code = error.code();
                    }
                }
            }
        };
        for (partition, offset) in flushes {
            if let Err(e) = partition.flush_to(offset).await {
                tracing::error!(partition = %partition.tp, error = %e, "flush failed");
                fail(&partition.tp, ResponseError::KafkaStorageError);
            }
        }
        for (partition, offset, leader_epoch, min_isr) in replications {
            if let Err(error) =
                replicated(&partition, offset, leader_epoch, min_isr, deadline).await
            {
                fail(&partition.tp, error);
            }
        }
        finish(acks, failed, responses)
    }))
}

/// Transactional batches: only with a transactional id, and the first one
/// of a transaction on this partition only once its coordinator confirms
/// the partition is in the producer's ongoing transaction (KIP-890).
async fn transaction_check(
    broker: &Broker,
    transactional_id: Option<&str>,
    partition: &Partition,
    records: &[u8],
) -> Result<(), ResponseError> {
    let Ok(header) = RecordBatchHeader::parse(records) else {
        // Malformed batches are the append's to refuse, with its error.
        return Ok(());
    };
    if !header.is_transactional() {
        return Ok(());
    }
    let Some(transactional_id) = transactional_id else {
        return Err(ResponseError::TransactionalIdAuthorizationFailed);
    };
    let producer_id = header.producer_id();
    if partition.has_ongoing_transaction(producer_id) {
        return Ok(());
    }
    broker
        .verify_transaction(
            transactional_id,
            producer_id,
            header.producer_epoch(),
            &partition.tp,
        )
        .await
}

/// Kafka's delayed produce for acks=all: done once the high watermark
/// passes the append, which means every ISR member has it. The ISR may
/// have shrunk meanwhile; below `min.insync.replicas` the write is in the
/// log but not as safe as asked (NOT_ENOUGH_REPLICAS_AFTER_APPEND).
pub(crate) async fn replicated(
    partition: &Partition,
    offset: i64,
    leader_epoch: i32,
    min_isr: usize,
    deadline: tokio::time::Instant,
) -> Result<(), ResponseError> {
    let mut high_watermark = partition.subscribe();
    loop {
        if partition.is_deleted() {
            return Err(ResponseError::UnknownTopicOrPartition);
        }
        let now = partition.leadership();
        if now.leader_epoch != leader_epoch || !partition.is_leader() {
            return Err(ResponseError::NotLeaderOrFollower);
        }
        if *high_watermark.borrow_and_update() >= offset {
            return if now.isr_size < min_isr {
                Err(ResponseError::NotEnoughReplicasAfterAppend)
            } else {
                Ok(())
            };
        }
        // Leadership changes do not move the high watermark: look again
        // now and then.
        let wake = tokio::time::Instant::now() + LEADERSHIP_RECHECK;
        match tokio::time::timeout_at(deadline.min(wake), high_watermark.changed()).await {
            Ok(Err(_)) => return Err(ResponseError::NotLeaderOrFollower),
            Err(_) if tokio::time::Instant::now() >= deadline => {
                return Err(ResponseError::RequestTimedOut)
            }
            _ => {}
        }
    }
}

const LEADERSHIP_RECHECK: Duration = Duration::from_millis(100);

/// NOT_LEADER_OR_FOLLOWER with the leader this broker knows (KIP-951), so
/// the client goes there without a metadata round trip.
fn not_leader(answer: PartitionProduceResponse, state: Leadership) -> PartitionProduceResponse {
    answer
        .with_error_code(ResponseError::NotLeaderOrFollower.code())
        .with_current_leader(
            LeaderIdAndEpoch::default()
                .with_leader_id(BrokerId(state.leader))
                .with_leader_epoch(state.leader_epoch),
        )
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
