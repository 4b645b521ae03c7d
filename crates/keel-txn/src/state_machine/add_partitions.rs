//! AddPartitionsToTxn and AddOffsetsToTxn (Kafka's
//! `handleAddPartitionsToTransaction`), and the KIP-890 verification a
//! partition leader asks for before it appends a transactional batch
//! (`handleVerifyPartitionsInTransaction`).

use std::collections::BTreeSet;

use kafka_protocol::error::ResponseError;
use keel_types::TopicPartition;

use super::{illegal_state, Outcome, PendingAppend, Reply, TransactionCoordinator, TxnAnswer};
use crate::records;
use crate::transaction_state::TransactionState;

/// The topic of the partitions AddOffsetsToTxn adds.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

impl TransactionCoordinator {
    /// Adds partitions to the producer's transaction, starting it if none
    /// is Ongoing. Partitions already in an Ongoing transaction are
    /// answered at once, without a write.
    pub fn add_partitions(
        &mut self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        partitions: &BTreeSet<TopicPartition>,
        now_ms: i64,
    ) -> Outcome {
        if transactional_id.is_empty()
            || !partitions.iter().all(|tp| records::fits_string(&tp.topic))
        {
            return ResponseError::InvalidRequest.into();
        }
        let (partition, coordinator_epoch, metadata) = match self.existing_mut(transactional_id) {
            Ok(found) => found,
            Err(e) => return e.into(),
        };
        if let Err(e) = metadata.check_producer(producer_id, producer_epoch) {
            return e.into();
        }
        if metadata.pending_state.is_some() {
            return ResponseError::ConcurrentTransactions.into();
        }
        match metadata.state {
            TransactionState::PrepareCommit | TransactionState::PrepareAbort => {
                return ResponseError::ConcurrentTransactions.into();
            }
            TransactionState::Ongoing if partitions.is_subset(&metadata.topic_partitions) => {
                return Outcome::Answer(TxnAnswer::ok(producer_id, producer_epoch));
            }
            state @ (TransactionState::Dead | TransactionState::PrepareEpochFence) => {
                return illegal_state(transactional_id, state);
            }
            TransactionState::Empty
            | TransactionState::Ongoing
            | TransactionState::CompleteCommit
            | TransactionState::CompleteAbort => {}
        }
        let transit = metadata.prepare_add_partitions(partitions, now_ms);
        Outcome::Append(PendingAppend::transition(
            partition,
            coordinator_epoch,
            transactional_id,
            transit,
            Reply::Transit,
        ))
    }

    /// AddOffsetsToTxn: adds the group's `__consumer_offsets` partition, so
    /// the transaction's offset commits get its markers.
    pub fn add_offsets(
        &mut self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        group_id: &str,
        now_ms: i64,
    ) -> Outcome {
        let offsets_partition = TopicPartition::new(
            OFFSETS_TOPIC,
            keel_types::coordinator::partition_for(group_id, self.config.offsets_topic_partitions),
        );
        self.add_partitions(
            transactional_id,
            producer_id,
            producer_epoch,
            &BTreeSet::from([offsets_partition]),
            now_ms,
        )
    }

    /// Whether each partition is in the producer's Ongoing transaction,
    /// without changing anything (AddPartitionsToTxn v4+ `verify_only`).
    /// As in Kafka, a partition not in it gets TRANSACTION_ABORTABLE; a
    /// produce request from an older client expects INVALID_TXN_STATE
    /// instead (Kafka's `AddPartitionsToTxnManager` maps it, and
    /// PRODUCER_FENCED to INVALID_PRODUCER_EPOCH).
    pub fn verify(
        &self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        partitions: &[TopicPartition],
    ) -> Vec<(TopicPartition, i16)> {
        let all = |error: ResponseError| {
            partitions
                .iter()
                .map(|tp| (tp.clone(), error.code()))
                .collect()
        };
        if transactional_id.is_empty() {
            return all(ResponseError::InvalidRequest);
        }
        let metadata = match self.existing(transactional_id) {
            Ok(m) => m,
            Err(e) => return all(e),
        };
        if let Err(e) = metadata.check_producer(producer_id, producer_epoch) {
            return all(e);
        }
        // Pending transitions are not checked: partitions join the set only
        // once their record is in the log and leave it only once their
        // marker is written.
        if matches!(
            metadata.state,
            TransactionState::PrepareCommit | TransactionState::PrepareAbort
        ) {
            return all(ResponseError::ConcurrentTransactions);
        }
        partitions
            .iter()
            .map(|tp| {
                let code = if metadata.topic_partitions.contains(tp) {
                    0
                } else {
                    ResponseError::TransactionAbortable.code()
                };
                (tp.clone(), code)
            })
            .collect()
    }
}
