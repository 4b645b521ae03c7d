//! What to do with the results of writing a transaction's markers: Kafka's
//! `TransactionMarkerRequestCompletionHandler` and the completion half of
//! `TransactionMarkerChannelManager`.
//!
//! The transaction's metadata holds the partitions still waiting for their
//! marker: a written one leaves the set, a failed one stays and is retried,
//! and once the set is empty the Complete* record is written.

use kafka_protocol::error::ResponseError;
use keel_types::TopicPartition;

use super::{PendingAppend, Reply, TransactionCoordinator, TxnMarker, TxnPartition};
use crate::transaction_state::TransactionMetadata;

/// What the marker writer does next.
#[derive(Debug)]
pub enum MarkerProgress {
    /// Write these markers again, after a backoff.
    Retry(TxnMarker),
    /// Every marker is written: append this Complete* record.
    Complete(PendingAppend),
    /// Stop: this node no longer coordinates the transaction at this epoch,
    /// or a leader refused the marker for good.
    Stop,
}

/// How one partition's marker write went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MarkerResult {
    Written,
    /// The partition no longer needs its marker.
    Dropped,
    Retry,
    /// The producer or the coordinator was fenced, or the marker can never
    /// be written: no more markers for this transaction.
    Abandon,
}

fn classify(error_code: i16) -> MarkerResult {
    use ResponseError::*;
    let Some(error) = ResponseError::try_from_code(error_code) else {
        return MarkerResult::Written;
    };
    match error {
        // The topic is gone, so nobody reads the partition any more (Kafka
        // drops the partitions whose leader it cannot find); or the
        // producer could not have written to it either.
        UnknownTopicOrPartition | UnsupportedForMessageFormat | UnsupportedVersion => {
            MarkerResult::Dropped
        }
        InvalidProducerEpoch | TransactionCoordinatorFenced => MarkerResult::Abandon,
        CorruptMessage | MessageTooLarge | RecordListTooLarge | InvalidRequiredAcks => {
            tracing::error!(?error, "transaction marker refused for good");
            MarkerResult::Abandon
        }
        NotLeaderOrFollower
        | LeaderNotAvailable
        | NotEnoughReplicas
        | NotEnoughReplicasAfterAppend
        | RequestTimedOut
        | KafkaStorageError
        | NetworkException
        | CoordinatorLoadInProgress
        | CoordinatorNotAvailable
        | NotCoordinator => MarkerResult::Retry,
        // Kafka treats any other code as a bug and stops; a transaction
        // stuck in Prepare* blocks its producer, so keep trying instead.
        _ => {
            tracing::warn!(
                ?error,
                "unexpected error writing a transaction marker; retrying"
            );
            MarkerResult::Retry
        }
    }
}

impl TransactionCoordinator {
    /// The metadata `marker` is being written for, if it still is: its
    /// partition is loaded at the marker's coordinator epoch, and the same
    /// producer's transaction is waiting for its markers.
    fn marker_owner(&mut self, marker: &TxnMarker) -> Option<(i32, &mut TransactionMetadata)> {
        let partition = self.partition_for(&marker.transactional_id);
        let Some(TxnPartition::Loaded {
            coordinator_epoch,
            transactions,
        }) = self.partitions.get_mut(&partition)
        else {
            return None;
        };
        if *coordinator_epoch != marker.coordinator_epoch {
            return None;
        }
        let metadata = transactions.get_mut(&marker.transactional_id)?;
        let same = metadata.is_writing_markers()
            && metadata.producer_id == marker.producer_id
            && metadata.producer_epoch == marker.producer_epoch
            && (metadata.state == crate::TransactionState::PrepareCommit) == marker.commit;
        same.then_some((partition, metadata))
    }

    /// Whether `marker` should still be written (checked before each
    /// attempt, so a coordinator that lost its partition stops at once).
    pub fn markers_wanted(&mut self, marker: &TxnMarker) -> bool {
        self.marker_owner(marker).is_some()
    }

    /// Takes the per-partition results of writing `marker` (a partition
    /// missing from them counts as failed) and says what comes next.
    pub fn on_markers_written(
        &mut self,
        marker: &TxnMarker,
        results: &[(TopicPartition, i16)],
        now_ms: i64,
    ) -> MarkerProgress {
        let Some((partition, metadata)) = self.marker_owner(marker) else {
            tracing::info!(
                transactional_id = marker.transactional_id,
                "no longer writing these markers: coordinator or transaction changed"
            );
            return MarkerProgress::Stop;
        };
        let mut abandon = false;
        for (tp, error_code) in results {
            match classify(*error_code) {
                MarkerResult::Written | MarkerResult::Dropped => {
                    metadata.topic_partitions.remove(tp);
                }
                MarkerResult::Retry => {}
                MarkerResult::Abandon => abandon = true,
            }
        }
        if abandon {
            tracing::warn!(
                transactional_id = marker.transactional_id,
                "transaction markers refused; the transaction completes when its partition is loaded again"
            );
            return MarkerProgress::Stop;
        }
        if !metadata.topic_partitions.is_empty() {
            return MarkerProgress::Retry(TxnMarker {
                partitions: metadata.topic_partitions.iter().cloned().collect(),
                ..marker.clone()
            });
        }
        let transit = metadata.complete_transit(now_ms);
        MarkerProgress::Complete(PendingAppend::transition(
            partition,
            marker.coordinator_epoch,
            &marker.transactional_id,
            transit,
            Reply::Transit,
        ))
    }
}
