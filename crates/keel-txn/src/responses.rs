//! Building the wire responses from the state machine's answers, with the
//! per-version error remapping Kafka's `KafkaApis` handlers apply.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnResponse, EndTxnResponse, InitProducerIdResponse, ProducerId,
};
use keel_types::TopicPartition;

use crate::state_machine::TxnAnswer;

/// PRODUCER_FENCED as a client of `version` understands it: clients older
/// than KIP-588 only know INVALID_PRODUCER_EPOCH, which they handle the
/// same way. `first_version` is the API's first version that knows it.
fn fenced_for(error_code: i16, version: i16, first_version: i16) -> i16 {
    if version < first_version && error_code == ResponseError::ProducerFenced.code() {
        ResponseError::InvalidProducerEpoch.code()
    } else {
        error_code
    }
}

/// InitProducerId (PRODUCER_FENCED from v4).
pub fn init_producer_id(answer: TxnAnswer, version: i16) -> InitProducerIdResponse {
    InitProducerIdResponse::default()
        .with_error_code(fenced_for(answer.error_code, version, 4))
        .with_producer_id(ProducerId(answer.producer_id))
        .with_producer_epoch(answer.producer_epoch)
}

/// EndTxn (PRODUCER_FENCED from v2).
pub fn end_txn(answer: TxnAnswer, version: i16) -> EndTxnResponse {
    EndTxnResponse::default()
        .with_error_code(fenced_for(answer.error_code, version, 2))
        .with_producer_id(ProducerId(answer.producer_id))
        .with_producer_epoch(answer.producer_epoch)
}

/// AddOffsetsToTxn (PRODUCER_FENCED from v2).
pub fn add_offsets_to_txn(answer: TxnAnswer, version: i16) -> AddOffsetsToTxnResponse {
    AddOffsetsToTxnResponse::default().with_error_code(fenced_for(answer.error_code, version, 2))
}

/// The error of one AddPartitionsToTxn transaction (PRODUCER_FENCED from
/// v2), given to each of its partitions.
pub fn add_partitions_error(answer: TxnAnswer, version: i16) -> i16 {
    fenced_for(answer.error_code, version, 2)
}

/// The partitions of a request's topics, in request order.
pub fn request_partitions(topics: &[AddPartitionsToTxnTopic]) -> Vec<TopicPartition> {
    topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| TopicPartition::new(t.name.to_string(), *p))
        })
        .collect()
}

/// Per-topic results in the request's shape, each partition's error from
/// `error_for`.
pub fn topic_results(
    topics: &[AddPartitionsToTxnTopic],
    mut error_for: impl FnMut(&TopicPartition) -> i16,
) -> Vec<AddPartitionsToTxnTopicResult> {
    topics
        .iter()
        .map(|t| {
            let results_by_partition = t
                .partitions
                .iter()
                .map(|p| {
                    let tp = TopicPartition::new(t.name.to_string(), *p);
                    AddPartitionsToTxnPartitionResult::default()
                        .with_partition_index(*p)
                        .with_partition_error_code(error_for(&tp))
                })
                .collect();
            AddPartitionsToTxnTopicResult::default()
                .with_name(t.name.clone())
                .with_results_by_partition(results_by_partition)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FENCED: i16 = ResponseError::ProducerFenced.code();
    const INVALID_EPOCH: i16 = ResponseError::InvalidProducerEpoch.code();

    #[test]
    fn producer_fenced_is_remapped_for_old_versions() {
        let fenced = TxnAnswer::code(FENCED);
        for (version, code) in [
            (0, INVALID_EPOCH),
            (3, INVALID_EPOCH),
            (4, FENCED),
            (5, FENCED),
        ] {
            assert_eq!(
                init_producer_id(fenced, version).error_code,
                code,
                "v{version}"
            );
        }
        for (version, code) in [
            (0, INVALID_EPOCH),
            (1, INVALID_EPOCH),
            (2, FENCED),
            (4, FENCED),
        ] {
            assert_eq!(end_txn(fenced, version).error_code, code, "v{version}");
            assert_eq!(
                add_offsets_to_txn(fenced, version).error_code,
                code,
                "v{version}"
            );
            assert_eq!(add_partitions_error(fenced, version), code, "v{version}");
        }
        // Other errors pass through untouched.
        let concurrent = TxnAnswer::error(ResponseError::ConcurrentTransactions);
        assert_eq!(end_txn(concurrent, 0).error_code, concurrent.error_code);
        let ok = init_producer_id(TxnAnswer::ok(7, 3), 0);
        assert_eq!(
            (ok.error_code, ok.producer_id.0, ok.producer_epoch),
            (0, 7, 3)
        );
    }
}
