//! The transaction coordinator as a deterministic state machine: Kafka's
//! `TransactionCoordinator` decisions and `TransactionStateManager` cache in
//! one synchronous struct. Time is an argument; writes, markers and
//! producer ids leave as data, and their results come back through
//! `complete_append` and `on_markers_written`. Nothing here sleeps, spawns
//! or does I/O; `service.rs` drives it.
//!
//! A request that changes state is answered in two steps: its call returns
//! `Outcome::Append` (the metadata is now pending, so requests racing it
//! get CONCURRENT_TRANSACTIONS), and `complete_append` applies the
//! transition once the record is in the log and gives the answer. A call
//! that needs a producer id it was not given returns
//! `Outcome::NeedProducerId`; the driver fetches one and calls again, and
//! the decision is taken afresh with it.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError;
use keel_types::{TopicPartition, NO_PRODUCER_EPOCH, NO_PRODUCER_ID};

use crate::records::{self, Record, RecordError};
use crate::transaction_state::{TransactionMetadata, TransactionState, TxnTransit};
use crate::TxnConfig;

mod add_partitions;
mod admin;
mod end_txn;
mod init_producer_id;
mod markers;

pub use markers::MarkerProgress;

/// One `__transaction_state` record: key and value (`None` = tombstone).
pub type LogRecord = (Vec<u8>, Option<Vec<u8>>);

/// The transaction markers of one transaction, to be written by the leaders
/// of `partitions` (Kafka's `TxnMarkerEntry` and WriteTxnMarkers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnMarker {
    /// Not sent to the leaders: it matches the results to the transaction.
    pub transactional_id: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// The `__transaction_state` partition's leader epoch: a leader that
    /// saw a newer one refuses the marker (TRANSACTION_COORDINATOR_FENCED).
    pub coordinator_epoch: i32,
    /// Commit (`true`) or abort.
    pub commit: bool,
    pub partitions: Vec<TopicPartition>,
}

/// The answer to InitProducerId, AddPartitionsToTxn, AddOffsetsToTxn and
/// EndTxn: an error code, and the producer id and epoch where the response
/// carries them (`-1` on errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnAnswer {
    pub error_code: i16,
    pub producer_id: i64,
    pub producer_epoch: i16,
}

impl TxnAnswer {
    pub fn ok(producer_id: i64, producer_epoch: i16) -> Self {
        TxnAnswer {
            error_code: 0,
            producer_id,
            producer_epoch,
        }
    }

    pub fn code(error_code: i16) -> Self {
        TxnAnswer {
            error_code,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
        }
    }

    pub fn error(error: ResponseError) -> Self {
        Self::code(error.code())
    }
}

/// What a request call decided.
#[derive(Debug)]
pub enum Outcome {
    /// Decided without writing anything.
    Answer(TxnAnswer),
    /// Call again with a fresh producer id.
    NeedProducerId,
    /// Append this, then pass it to `complete_append` for the answer.
    Append(PendingAppend),
}

impl From<ResponseError> for Outcome {
    fn from(error: ResponseError) -> Self {
        Outcome::Answer(TxnAnswer::error(error))
    }
}

/// Records to append to one `__transaction_state` partition, and what to
/// do once they are in the log (or failed to get there).
#[derive(Debug)]
pub struct PendingAppend {
    pub partition: i32,
    pub records: Vec<LogRecord>,
    /// The coordinator epoch the records were decided under; they are
    /// appended only while it is still the partition's.
    coordinator_epoch: i32,
    completion: Completion,
}

#[derive(Debug)]
enum Completion {
    /// One transactional id's transition.
    Transition {
        transactional_id: String,
        transit: TxnTransit,
        reply: Reply,
    },
    /// Tombstones of expired transactional ids, with the epoch each had.
    Expiration { expired: Vec<(String, i16)> },
}

/// What a transition's requester hears once it is in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// The new producer id and epoch.
    Transit,
    /// An epoch fence's abort: CONCURRENT_TRANSACTIONS, so the producer
    /// retries InitProducerId once the abort completes. A failed append
    /// keeps the bumped epoch for the next fence.
    EpochFence,
}

impl PendingAppend {
    fn transition(
        partition: i32,
        coordinator_epoch: i32,
        transactional_id: &str,
        transit: TxnTransit,
        reply: Reply,
    ) -> Self {
        let value = transit.to_value().encode();
        PendingAppend {
            partition,
            records: vec![(records::key(transactional_id), Some(value))],
            coordinator_epoch,
            completion: Completion::Transition {
                transactional_id: transactional_id.to_owned(),
                transit,
                reply,
            },
        }
    }
}

/// The result of `complete_append`.
#[derive(Debug)]
pub struct AppendCompletion {
    /// For the request that caused the append, if any.
    pub answer: TxnAnswer,
    /// Markers to write now: the transition was to Prepare*.
    pub markers: Option<TxnMarker>,
    /// A Complete* record that failed to append while this node is still
    /// the coordinator: append it again after a backoff.
    pub retry: Option<PendingAppend>,
}

impl AppendCompletion {
    fn answer(answer: TxnAnswer) -> Self {
        AppendCompletion {
            answer,
            markers: None,
            retry: None,
        }
    }
}

/// One `__transaction_state` partition this node coordinates.
#[derive(Debug)]
enum TxnPartition {
    /// Being replayed: requests get COORDINATOR_LOAD_IN_PROGRESS.
    Loading { coordinator_epoch: i32 },
    Loaded {
        coordinator_epoch: i32,
        transactions: BTreeMap<String, TransactionMetadata>,
    },
}

/// The transaction coordinator of the `__transaction_state` partitions this
/// node leads.
#[derive(Debug)]
pub struct TransactionCoordinator {
    config: TxnConfig,
    partitions: BTreeMap<i32, TxnPartition>,
}

/// Applies one `__transaction_state` record to the transactions being
/// loaded (Kafka's `loadTransactionMetadata`): the last value of an id wins,
/// a tombstone removes it, unknown key versions are skipped.
pub fn replay(
    transactions: &mut BTreeMap<String, TransactionMetadata>,
    key: &[u8],
    value: Option<&[u8]>,
) -> Result<(), RecordError> {
    match records::decode(key, value)? {
        Record::Transaction {
            transactional_id,
            value: Some(v),
        } => {
            let metadata = TransactionMetadata::from_value(&transactional_id, &v);
            transactions.insert(transactional_id, metadata);
        }
        Record::Transaction {
            transactional_id,
            value: None,
        } => {
            transactions.remove(&transactional_id);
        }
        Record::Unknown { key_version } => {
            tracing::warn!(
                key_version,
                "skipping __transaction_state record with an unknown key version"
            );
        }
    }
    Ok(())
}

/// Kafka throws IllegalStateException for these (they are never written),
/// which the client sees as UNKNOWN_SERVER_ERROR; a replayed log holding
/// one must not bring the broker down.
fn illegal_state(transactional_id: &str, state: TransactionState) -> Outcome {
    tracing::error!(
        transactional_id,
        ?state,
        "transaction in a state it can never rest in"
    );
    ResponseError::UnknownServerError.into()
}

impl TransactionCoordinator {
    pub fn new(config: TxnConfig) -> Self {
        assert!(config.transaction_state_partitions > 0);
        assert!(config.offsets_topic_partitions > 0);
        assert!(config.transaction_max_timeout_ms > 0);
        assert!(config.transactional_id_expiration_ms > 0);
        assert!(config.abort_timed_out_transaction_cleanup_interval_ms > 0);
        assert!(config.remove_expired_transaction_cleanup_interval_ms > 0);
        TransactionCoordinator {
            config,
            partitions: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> &TxnConfig {
        &self.config
    }

    /// The `__transaction_state` partition of a transactional id.
    pub fn partition_for(&self, transactional_id: &str) -> i32 {
        keel_types::coordinator::partition_for(
            transactional_id,
            self.config.transaction_state_partitions,
        )
    }

    /// The metadata of a transactional id, if its partition is loaded.
    pub fn transaction(&self, transactional_id: &str) -> Option<&TransactionMetadata> {
        match self.partitions.get(&self.partition_for(transactional_id))? {
            TxnPartition::Loaded { transactions, .. } => transactions.get(transactional_id),
            TxnPartition::Loading { .. } => None,
        }
    }

    // ------------------------------------------------------------ loading

    /// Starts loading a partition at a coordinator epoch: its requests get
    /// COORDINATOR_LOAD_IN_PROGRESS, and whatever was loaded before (an
    /// older epoch) is dropped.
    pub fn begin_load(&mut self, partition: i32, coordinator_epoch: i32) {
        assert!((0..self.config.transaction_state_partitions).contains(&partition));
        self.partitions
            .insert(partition, TxnPartition::Loading { coordinator_epoch });
    }

    /// Installs the replayed transactions and resumes every transaction
    /// found in PrepareCommit or PrepareAbort: the returned markers must be
    /// (re)written before they complete. `None` if the load was superseded
    /// (the partition was unloaded or reloaded at another epoch meanwhile).
    pub fn complete_load(
        &mut self,
        partition: i32,
        coordinator_epoch: i32,
        mut transactions: BTreeMap<String, TransactionMetadata>,
    ) -> Option<Vec<TxnMarker>> {
        match self.partitions.get(&partition) {
            Some(TxnPartition::Loading {
                coordinator_epoch: e,
            }) if *e == coordinator_epoch => {}
            _ => return None,
        }
        let markers = transactions
            .values_mut()
            .filter(|m| {
                matches!(
                    m.state,
                    TransactionState::PrepareCommit | TransactionState::PrepareAbort
                )
            })
            .map(|m| start_markers(m, coordinator_epoch))
            .collect();
        self.partitions.insert(
            partition,
            TxnPartition::Loaded {
                coordinator_epoch,
                transactions,
            },
        );
        Some(markers)
    }

    /// Gives up a load whose log could not be read: the partition is not
    /// coordinated here (NOT_COORDINATOR) until loaded again.
    pub fn abandon_load(&mut self, partition: i32, coordinator_epoch: i32) {
        if let Some(TxnPartition::Loading {
            coordinator_epoch: e,
        }) = self.partitions.get(&partition)
        {
            if *e == coordinator_epoch {
                self.partitions.remove(&partition);
            }
        }
    }

    /// Drops a partition's transactions: this node no longer leads it.
    /// Appends and markers in flight for it stop when they next report.
    pub fn unload(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    /// Whether any partition is loading (ListTransactions refuses then).
    pub fn is_loading(&self) -> bool {
        self.partitions
            .values()
            .any(|p| matches!(p, TxnPartition::Loading { .. }))
    }

    // ------------------------------------------------------------ lookup

    /// The partition and transactions a transactional id belongs to, or
    /// why this node cannot answer for it (Kafka's `getTransactionState`).
    fn transactions_mut(
        &mut self,
        transactional_id: &str,
    ) -> Result<(i32, i32, &mut BTreeMap<String, TransactionMetadata>), ResponseError> {
        let partition = self.partition_for(transactional_id);
        match self.partitions.get_mut(&partition) {
            None => Err(ResponseError::NotCoordinator),
            Some(TxnPartition::Loading { .. }) => Err(ResponseError::CoordinatorLoadInProgress),
            Some(TxnPartition::Loaded {
                coordinator_epoch,
                transactions,
            }) => Ok((partition, *coordinator_epoch, transactions)),
        }
    }

    /// The metadata of an existing transactional id with its partition and
    /// coordinator epoch; INVALID_PRODUCER_ID_MAPPING if there is none.
    fn existing_mut(
        &mut self,
        transactional_id: &str,
    ) -> Result<(i32, i32, &mut TransactionMetadata), ResponseError> {
        let (partition, coordinator_epoch, transactions) =
            self.transactions_mut(transactional_id)?;
        match transactions.get_mut(transactional_id) {
            Some(m) => Ok((partition, coordinator_epoch, m)),
            None => Err(ResponseError::InvalidProducerIdMapping),
        }
    }

    fn existing(&self, transactional_id: &str) -> Result<&TransactionMetadata, ResponseError> {
        match self.partitions.get(&self.partition_for(transactional_id)) {
            None => Err(ResponseError::NotCoordinator),
            Some(TxnPartition::Loading { .. }) => Err(ResponseError::CoordinatorLoadInProgress),
            Some(TxnPartition::Loaded { transactions, .. }) => transactions
                .get(transactional_id)
                .ok_or(ResponseError::InvalidProducerIdMapping),
        }
    }

    /// The loaded transactions of a partition at a coordinator epoch.
    fn loaded_mut(
        &mut self,
        partition: i32,
        coordinator_epoch: i32,
    ) -> Result<&mut BTreeMap<String, TransactionMetadata>, ResponseError> {
        match self.partitions.get_mut(&partition) {
            Some(TxnPartition::Loaded {
                coordinator_epoch: e,
                transactions,
            }) if *e == coordinator_epoch => Ok(transactions),
            Some(TxnPartition::Loading { .. }) => Err(ResponseError::CoordinatorLoadInProgress),
            _ => Err(ResponseError::NotCoordinator),
        }
    }

    // ------------------------------------------------------------ appends

    /// Whether `pending` may still be appended: its partition is loaded at
    /// the epoch it was decided under. Checked by the driver right before
    /// the append (Kafka checks under its state lock), so a record decided
    /// before a reload never lands after it.
    pub fn append_allowed(&self, pending: &PendingAppend) -> bool {
        matches!(
            self.partitions.get(&pending.partition),
            Some(TxnPartition::Loaded { coordinator_epoch, .. }) if *coordinator_epoch == pending.coordinator_epoch
        )
    }

    /// Applies the outcome of appending `pending` (Kafka's
    /// `appendTransactionToLog` callback): on success the transition is
    /// completed; on failure it is dropped (the requester retries) except a
    /// Complete* record, which is retried while this node still
    /// coordinates its partition.
    pub fn complete_append(&mut self, pending: PendingAppend, written: bool) -> AppendCompletion {
        let PendingAppend {
            partition,
            records,
            coordinator_epoch,
            completion,
        } = pending;
        let transactions = match self.loaded_mut(partition, coordinator_epoch) {
            Ok(t) => t,
            Err(e) => return AppendCompletion::answer(TxnAnswer::error(e)),
        };
        let (transactional_id, transit, reply) = match completion {
            Completion::Expiration { expired } => {
                complete_expiration(transactions, expired, written);
                return AppendCompletion::answer(TxnAnswer::code(0));
            }
            Completion::Transition {
                transactional_id,
                transit,
                reply,
            } => (transactional_id, transit, reply),
        };
        let Some(metadata) = transactions.get_mut(&transactional_id) else {
            return AppendCompletion::answer(TxnAnswer::error(ResponseError::NotCoordinator));
        };
        if !written {
            if transit.is_complete() {
                return AppendCompletion {
                    answer: TxnAnswer::error(ResponseError::CoordinatorNotAvailable),
                    markers: None,
                    retry: Some(PendingAppend {
                        partition,
                        records,
                        coordinator_epoch,
                        completion: Completion::Transition {
                            transactional_id,
                            transit,
                            reply,
                        },
                    }),
                };
            }
            metadata.pending_state = None;
            if reply == Reply::EpochFence {
                metadata.has_failed_epoch_fence = true;
            }
            return AppendCompletion::answer(TxnAnswer::error(
                ResponseError::CoordinatorNotAvailable,
            ));
        }
        metadata.complete_transition(&transit);
        let markers = matches!(
            transit.state,
            TransactionState::PrepareCommit | TransactionState::PrepareAbort
        )
        .then(|| start_markers(metadata, coordinator_epoch));
        let answer = match reply {
            Reply::Transit => TxnAnswer::ok(transit.producer_id, transit.producer_epoch),
            Reply::EpochFence => TxnAnswer::error(ResponseError::ConcurrentTransactions),
        };
        AppendCompletion {
            answer,
            markers,
            retry: None,
        }
    }
}

/// Marks a Prepare* transaction as writing its markers and names them.
fn start_markers(metadata: &mut TransactionMetadata, coordinator_epoch: i32) -> TxnMarker {
    metadata.begin_markers();
    TxnMarker {
        transactional_id: metadata.transactional_id.clone(),
        producer_id: metadata.producer_id,
        producer_epoch: metadata.producer_epoch,
        coordinator_epoch,
        commit: metadata.state == TransactionState::PrepareCommit,
        partitions: metadata.topic_partitions.iter().cloned().collect(),
    }
}

/// Removes the expired ids whose tombstone is in the log and that nothing
/// touched meanwhile; the others stay, no longer pending.
fn complete_expiration(
    transactions: &mut BTreeMap<String, TransactionMetadata>,
    expired: Vec<(String, i16)>,
    written: bool,
) {
    for (transactional_id, producer_epoch) in expired {
        let Some(metadata) = transactions.get_mut(&transactional_id) else {
            continue;
        };
        if metadata.pending_state != Some(TransactionState::Dead) {
            continue;
        }
        if written && metadata.producer_epoch == producer_epoch {
            transactions.remove(&transactional_id);
        } else {
            tracing::warn!(
                transactional_id,
                written,
                "failed to expire transactional id"
            );
            metadata.pending_state = None;
        }
    }
}
