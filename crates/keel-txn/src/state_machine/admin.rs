//! DescribeTransactions and ListTransactions (Kafka's
//! `handleDescribeTransactions` and `listTransactionStates`).

use std::collections::BTreeSet;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_transactions_response::{self, TopicData};
use kafka_protocol::messages::list_transactions_response;
use kafka_protocol::messages::{
    DescribeTransactionsRequest, DescribeTransactionsResponse, ListTransactionsRequest,
    ListTransactionsResponse, ProducerId, TopicName, TransactionalId,
};
use kafka_protocol::protocol::StrBytes;

use super::{TransactionCoordinator, TxnPartition};
use crate::transaction_state::{TransactionMetadata, TransactionState};

fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

impl TransactionCoordinator {
    /// DescribeTransactions v0: each id's state, producer, timeout, start
    /// and partitions, or why it cannot be described.
    pub fn describe_transactions(
        &self,
        req: &DescribeTransactionsRequest,
    ) -> DescribeTransactionsResponse {
        let transaction_states = req
            .transactional_ids
            .iter()
            .map(|id| self.describe_transaction(id))
            .collect();
        DescribeTransactionsResponse::default().with_transaction_states(transaction_states)
    }

    fn describe_transaction(
        &self,
        id: &TransactionalId,
    ) -> describe_transactions_response::TransactionState {
        let answer = describe_transactions_response::TransactionState::default()
            .with_transactional_id(id.clone());
        if id.is_empty() {
            return answer.with_error_code(ResponseError::InvalidRequest.code());
        }
        let metadata = match self.existing(id) {
            Ok(m) => m,
            Err(ResponseError::InvalidProducerIdMapping) => {
                return answer.with_error_code(ResponseError::TransactionalIdNotFound.code())
            }
            Err(e) => return answer.with_error_code(e.code()),
        };
        // A Dead id is being expired.
        if metadata.state == TransactionState::Dead {
            return answer.with_error_code(ResponseError::TransactionalIdNotFound.code());
        }
        let mut topics: Vec<TopicData> = Vec::new();
        for tp in &metadata.topic_partitions {
            // Sorted by topic, so one pass groups them.
            match topics.last_mut() {
                Some(t) if *t.topic == *tp.topic => t.partitions.push(tp.partition),
                _ => topics.push(
                    TopicData::default()
                        .with_topic(TopicName(sb(&tp.topic)))
                        .with_partitions(vec![tp.partition]),
                ),
            }
        }
        answer
            .with_producer_id(ProducerId(metadata.producer_id))
            .with_producer_epoch(metadata.producer_epoch)
            .with_transaction_state(sb(metadata.state.name()))
            .with_transaction_timeout_ms(metadata.transaction_timeout_ms)
            .with_transaction_start_time_ms(metadata.transaction_start_timestamp_ms)
            .with_topics(topics)
    }

    /// ListTransactions v0-1: the transactions of every loaded partition,
    /// filtered by state names, producer ids and (v1) running for longer
    /// than `duration_filter` ms. Unknown state names come back in
    /// `unknown_state_filters`. v2's `transactional_id_pattern` (a
    /// regular expression) is not supported: a request using it is refused
    /// with UNSUPPORTED_VERSION rather than answered unfiltered.
    pub fn list_transactions(
        &self,
        req: &ListTransactionsRequest,
        version: i16,
        now_ms: i64,
    ) -> ListTransactionsResponse {
        if self.is_loading() {
            return ListTransactionsResponse::default()
                .with_error_code(ResponseError::CoordinatorLoadInProgress.code());
        }
        if version >= 2
            && req
                .transactional_id_pattern
                .as_deref()
                .is_some_and(|p| !p.is_empty())
        {
            return ListTransactionsResponse::default()
                .with_error_code(ResponseError::UnsupportedVersion.code());
        }
        let mut states = BTreeSet::new();
        let mut unknown_state_filters = Vec::new();
        for name in &req.state_filters {
            match TransactionState::from_name(name) {
                Some(state) => {
                    states.insert(state);
                }
                None => unknown_state_filters.push(name.clone()),
            }
        }
        let duration_filter_ms = if version >= 1 {
            req.duration_filter
        } else {
            -1
        };
        let include = |m: &TransactionMetadata| {
            // Dead is transient: the id is being removed.
            m.state != TransactionState::Dead
                && (req.producer_id_filters.is_empty()
                    || req.producer_id_filters.contains(&ProducerId(m.producer_id)))
                && (req.state_filters.is_empty() || states.contains(&m.state))
                && (duration_filter_ms < 0
                    || now_ms - m.transaction_start_timestamp_ms > duration_filter_ms)
        };
        let transaction_states = self
            .partitions
            .values()
            .filter_map(|p| match p {
                TxnPartition::Loaded { transactions, .. } => Some(transactions.values()),
                TxnPartition::Loading { .. } => None,
            })
            .flatten()
            .filter(|m| include(m))
            .map(|m| {
                list_transactions_response::TransactionState::default()
                    .with_transactional_id(TransactionalId(sb(&m.transactional_id)))
                    .with_producer_id(ProducerId(m.producer_id))
                    .with_transaction_state(sb(m.state.name()))
            })
            .collect();
        ListTransactionsResponse::default()
            .with_unknown_state_filters(unknown_state_filters)
            .with_transaction_states(transaction_states)
    }
}
