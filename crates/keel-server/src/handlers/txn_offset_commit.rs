use kafka_protocol::messages::{TxnOffsetCommitRequest, TxnOffsetCommitResponse};
use kafka_protocol::ResponseError;
use keel_group::txn_commit_answer;
use keel_types::TopicPartition;

use crate::broker::Broker;
use crate::coordinator_log::OFFSETS_TOPIC;
use crate::dispatch::RequestContext;

/// TxnOffsetCommit, checked as Kafka's request handler does before the group
/// coordinator sees it: partitions that do not exist answer
/// UNKNOWN_TOPIC_OR_PARTITION; and the first commit of a transaction into
/// the group's `__consumer_offsets` partition is verified with the
/// transaction coordinator (KIP-890), so offsets no marker will ever end
/// (a producer that skipped AddOffsetsToTxn, or a zombie) stay out.
pub async fn handle(
    broker: &Broker,
    ctx: &RequestContext<'_>,
    mut request: TxnOffsetCommitRequest,
) -> TxnOffsetCommitResponse {
    let image = broker.image();
    let mut refused = Vec::new();
    for topic in &mut request.topics {
        let known = image.topic_by_name(topic.name.0.as_str());
        let (kept, unknown): (Vec<_>, Vec<_>) = std::mem::take(&mut topic.partitions)
            .into_iter()
            .partition(|p| known.is_some_and(|t| t.partitions.contains_key(&p.partition_index)));
        if !unknown.is_empty() {
            let unknown = topic.clone().with_partitions(unknown);
            refused.push(txn_commit_answer(&unknown, |_| {
                ResponseError::UnknownTopicOrPartition.code()
            }));
        }
        topic.partitions = kept;
    }
    request.topics.retain(|t| !t.partitions.is_empty());
    if request.topics.is_empty() {
        return TxnOffsetCommitResponse::default().with_topics(refused);
    }
    let offsets_partition = TopicPartition::new(
        OFFSETS_TOPIC,
        broker.groups.partition_for(request.group_id.0.as_str()),
    );
    let producer_id = request.producer_id.0;
    let open_here = broker
        .replicas
        .get(&offsets_partition)
        .is_some_and(|p| p.has_ongoing_transaction(producer_id));
    let verified = if open_here {
        Ok(())
    } else {
        broker
            .verify_transaction(
                request.transactional_id.0.as_str(),
                producer_id,
                request.producer_epoch,
                &offsets_partition,
            )
            .await
    };
    let mut response = match verified {
        Ok(()) => {
            broker
                .groups
                .txn_offset_commit(request, ctx.api_version)
                .await
        }
        Err(error) => {
            tracing::info!(group = %request.group_id.0.as_str(), ?error, "transactional offset commit refused");
            TxnOffsetCommitResponse::default().with_topics(
                request
                    .topics
                    .iter()
                    .map(|t| txn_commit_answer(t, |_| error.code()))
                    .collect(),
            )
        }
    };
    response.topics.extend(refused);
    response
}
