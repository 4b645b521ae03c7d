//! EndTxn (Kafka's `handleEndTransaction`, transaction version 1: the epoch
//! stays the same across transactions), and the two background jobs of
//! Kafka's `TransactionStateManager`: aborting transactions past their
//! timeout and expiring idle transactional ids.

use kafka_protocol::error::ResponseError;

use super::{
    illegal_state, Completion, Outcome, PendingAppend, Reply, TransactionCoordinator, TxnAnswer,
    TxnPartition,
};
use crate::records;
use crate::transaction_state::TransactionState;

/// Tombstones per append when expiring ids: bounds one batch (Kafka bounds
/// it by the partition's `max.message.bytes`).
pub const TOMBSTONES_PER_APPEND_MAX: usize = 500;

impl TransactionCoordinator {
    /// EndTxn from the producer: Ongoing becomes PrepareCommit or
    /// PrepareAbort, answered once in the log, and the markers follow. A
    /// retry of an EndTxn that already completed is answered OK.
    pub fn end_txn(
        &mut self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        now_ms: i64,
    ) -> Outcome {
        use TransactionState::*;
        if transactional_id.is_empty() {
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
        let finished = TxnAnswer::ok(metadata.producer_id, metadata.producer_epoch);
        let transit = match (metadata.state, commit) {
            (Ongoing, true) => metadata.prepare_abort_or_commit(PrepareCommit, now_ms),
            (Ongoing, false) => metadata.prepare_abort_or_commit(PrepareAbort, now_ms),
            (CompleteCommit, true) | (CompleteAbort, false) => return Outcome::Answer(finished),
            (PrepareCommit, true) | (PrepareAbort, false) => {
                return ResponseError::ConcurrentTransactions.into()
            }
            (CompleteCommit | CompleteAbort | PrepareCommit | PrepareAbort | Empty, _) => {
                tracing::debug!(transactional_id, state = ?metadata.state, commit, "EndTxn in the wrong state");
                return ResponseError::InvalidTxnState.into();
            }
            (state @ (Dead | PrepareEpochFence), _) => {
                return illegal_state(transactional_id, state)
            }
        };
        Outcome::Append(PendingAppend::transition(
            partition,
            coordinator_epoch,
            transactional_id,
            transit,
            Reply::Transit,
        ))
    }

    /// Aborts every Ongoing transaction older than its timeout, bumping
    /// the epoch so that its producer, a zombie now, is fenced (Kafka's
    /// `abortTimedOutTransactions`). The appends have no requester.
    pub fn abort_timed_out_transactions(&mut self, now_ms: i64) -> Vec<PendingAppend> {
        let mut appends = Vec::new();
        for (&partition, loaded) in &mut self.partitions {
            let TxnPartition::Loaded {
                coordinator_epoch,
                transactions,
            } = loaded
            else {
                continue;
            };
            for metadata in transactions.values_mut() {
                let timed_out = metadata.state == TransactionState::Ongoing
                    && metadata.pending_state.is_none()
                    && metadata.transaction_start_timestamp_ms
                        + i64::from(metadata.transaction_timeout_ms)
                        < now_ms;
                if !timed_out {
                    continue;
                }
                tracing::info!(
                    transactional_id = metadata.transactional_id,
                    producer_id = metadata.producer_id,
                    producer_epoch = metadata.producer_epoch,
                    "aborting transaction past its timeout"
                );
                let transit = metadata.prepare_epoch_fence_abort(now_ms);
                appends.push(PendingAppend::transition(
                    partition,
                    *coordinator_epoch,
                    &metadata.transactional_id,
                    transit,
                    Reply::EpochFence,
                ));
            }
        }
        appends
    }

    /// Tombstones every transactional id idle in Empty or Complete* for
    /// `transactional.id.expiration.ms` (Kafka's
    /// `removeExpiredTransactionalIds`); they leave the cache once the
    /// tombstones are in the log.
    pub fn remove_expired_transactional_ids(&mut self, now_ms: i64) -> Vec<PendingAppend> {
        let expiration_ms = self.config.transactional_id_expiration_ms;
        let mut appends = Vec::new();
        for (&partition, loaded) in &mut self.partitions {
            let TxnPartition::Loaded {
                coordinator_epoch,
                transactions,
            } = loaded
            else {
                continue;
            };
            let mut expired = Vec::new();
            for metadata in transactions.values_mut() {
                if metadata.pending_state.is_none()
                    && metadata.state.is_expiration_allowed()
                    && metadata.transaction_last_update_timestamp_ms <= now_ms - expiration_ms
                {
                    metadata.prepare_dead();
                    expired.push((metadata.transactional_id.clone(), metadata.producer_epoch));
                }
            }
            for chunk in expired.chunks(TOMBSTONES_PER_APPEND_MAX) {
                appends.push(PendingAppend {
                    partition,
                    records: chunk
                        .iter()
                        .map(|(transactional_id, _)| (records::key(transactional_id), None))
                        .collect(),
                    coordinator_epoch: *coordinator_epoch,
                    completion: Completion::Expiration {
                        expired: chunk.to_vec(),
                    },
                });
            }
        }
        appends
    }
}
