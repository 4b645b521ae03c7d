//! InitProducerId for transactional producers (Kafka's
//! `handleInitProducerId` and `prepareInitProducerIdTransit`).

use std::collections::btree_map::Entry;

use kafka_protocol::error::ResponseError;

use super::{illegal_state, Outcome, PendingAppend, Reply, TransactionCoordinator};
use crate::records;
use crate::transaction_state::{is_epoch_exhausted, TransactionMetadata, TransactionState};

impl TransactionCoordinator {
    /// InitProducerId with a transactional id. `expected` is the producer
    /// id and epoch the client already holds (KIP-360, v3+), `None` for a
    /// producer starting afresh. `fresh_producer_id` is a producer id from
    /// the cluster's blocks if the driver has one; without it, a call that
    /// needs one (a new transactional id, an exhausted epoch) answers
    /// `NeedProducerId`.
    ///
    /// Empty and Complete* transactions get the next epoch; an Ongoing one
    /// is aborted with a bumped epoch that fences its producer, and the
    /// caller hears CONCURRENT_TRANSACTIONS until the abort completes.
    pub fn init_producer_id(
        &mut self,
        transactional_id: &str,
        transaction_timeout_ms: i32,
        expected: Option<(i64, i16)>,
        fresh_producer_id: Option<i64>,
        now_ms: i64,
    ) -> Outcome {
        if transactional_id.is_empty() || !records::fits_string(transactional_id) {
            return ResponseError::InvalidRequest.into();
        }
        if transaction_timeout_ms <= 0
            || transaction_timeout_ms > self.config.transaction_max_timeout_ms
        {
            return ResponseError::InvalidTransactionTimeout.into();
        }
        let (partition, coordinator_epoch, transactions) =
            match self.transactions_mut(transactional_id) {
                Ok(found) => found,
                Err(e) => return e.into(),
            };
        let mut fresh_producer_id = fresh_producer_id;
        let metadata = match transactions.entry(transactional_id.to_owned()) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => match fresh_producer_id.take() {
                None => return Outcome::NeedProducerId,
                // Cached before its first record is written, as Kafka does:
                // a failed append leaves it at epoch -1 for the retry.
                Some(producer_id) => v.insert(TransactionMetadata::new(
                    transactional_id,
                    producer_id,
                    transaction_timeout_ms,
                    now_ms,
                )),
            },
        };

        if metadata.pending_state.is_some() {
            return ResponseError::ConcurrentTransactions.into();
        }
        if let Some((producer_id, producer_epoch)) = expected {
            // A producer naming its id is fenced unless the id is still
            // current: the metadata is brand new (a producer recovering from
            // UNKNOWN_PRODUCER_ID), the id matches (the epoch is checked
            // next), or it is the id rotated away from on an exhausted epoch
            // (a retry whose response was lost).
            let valid = metadata.producer_epoch == keel_types::NO_PRODUCER_EPOCH
                || producer_id == metadata.producer_id
                || (producer_id == metadata.previous_producer_id
                    && is_epoch_exhausted(producer_epoch));
            if !valid {
                return ResponseError::ProducerFenced.into();
            }
        }
        let (transit, reply) = match metadata.state {
            TransactionState::PrepareCommit | TransactionState::PrepareAbort => {
                return ResponseError::ConcurrentTransactions.into();
            }
            TransactionState::Empty
            | TransactionState::CompleteCommit
            | TransactionState::CompleteAbort => {
                let rotate = metadata.is_epoch_exhausted()
                    && expected.is_none_or(|(_, epoch)| epoch == metadata.producer_epoch);
                let transit = if rotate {
                    let Some(producer_id) = fresh_producer_id else {
                        return Outcome::NeedProducerId;
                    };
                    metadata.prepare_producer_id_rotation(
                        producer_id,
                        transaction_timeout_ms,
                        now_ms,
                        expected.is_some(),
                    )
                } else {
                    match metadata.prepare_increment_producer_epoch(
                        transaction_timeout_ms,
                        expected.map(|(_, epoch)| epoch),
                        now_ms,
                    ) {
                        Some(transit) => transit,
                        None => return ResponseError::ProducerFenced.into(),
                    }
                };
                (transit, Reply::Transit)
            }
            // The new epoch is never returned: the client retries after the
            // abort and gets a second bump (or a new producer id, if the
            // fence exhausted the epochs).
            TransactionState::Ongoing => (
                metadata.prepare_epoch_fence_abort(now_ms),
                Reply::EpochFence,
            ),
            state @ (TransactionState::Dead | TransactionState::PrepareEpochFence) => {
                return illegal_state(transactional_id, state);
            }
        };
        Outcome::Append(PendingAppend::transition(
            partition,
            coordinator_epoch,
            transactional_id,
            transit,
            reply,
        ))
    }
}
