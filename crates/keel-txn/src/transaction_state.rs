//! One transactional id's state (Kafka's `TransactionMetadata`) and the
//! transitions between states (Kafka's `TxnTransitMetadata`).
//!
//! A transition is two-phase, as in Kafka: `prepare_*` checks it and marks
//! the metadata with a pending state (so concurrent requests get
//! CONCURRENT_TRANSACTIONS), the returned `TxnTransit` is written to the log,
//! and only then `complete_transition` applies it. The metadata therefore
//! never shows a state that is not in the log.

use std::collections::BTreeSet;

use keel_types::{TopicPartition, NO_PRODUCER_EPOCH, NO_PRODUCER_ID};

use crate::records::{PartitionsSchema, TransactionLogValue};

/// Kafka's `TransactionState`; the discriminant is the id written in
/// `TransactionLogValue.TransactionStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(i8)]
pub enum TransactionState {
    /// No transaction: just initialised, or the last one completed and the
    /// producer re-initialised.
    Empty = 0,
    /// Partitions have been added; EndTxn not yet received.
    Ongoing = 1,
    /// PrepareCommit is in the log; markers are being written.
    PrepareCommit = 2,
    /// PrepareAbort is in the log; markers are being written.
    PrepareAbort = 3,
    /// Every commit marker is written.
    CompleteCommit = 4,
    /// Every abort marker is written.
    CompleteAbort = 5,
    /// Being expired: only ever a pending state, its record is a tombstone.
    Dead = 6,
    /// Bumping the epoch to fence a producer: only ever a pending state
    /// (Kafka writes PrepareAbort with the bumped epoch instead).
    PrepareEpochFence = 7,
}

impl TransactionState {
    pub const ALL: [TransactionState; 8] = [
        TransactionState::Empty,
        TransactionState::Ongoing,
        TransactionState::PrepareCommit,
        TransactionState::PrepareAbort,
        TransactionState::CompleteCommit,
        TransactionState::CompleteAbort,
        TransactionState::Dead,
        TransactionState::PrepareEpochFence,
    ];

    pub fn id(self) -> i8 {
        self as i8
    }

    pub fn from_id(id: i8) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.id() == id)
    }

    /// The name DescribeTransactions and ListTransactions use.
    pub fn name(self) -> &'static str {
        match self {
            TransactionState::Empty => "Empty",
            TransactionState::Ongoing => "Ongoing",
            TransactionState::PrepareCommit => "PrepareCommit",
            TransactionState::PrepareAbort => "PrepareAbort",
            TransactionState::CompleteCommit => "CompleteCommit",
            TransactionState::CompleteAbort => "CompleteAbort",
            TransactionState::Dead => "Dead",
            TransactionState::PrepareEpochFence => "PrepareEpochFence",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Whether an idle transactional id in this state may be expired.
    pub fn is_expiration_allowed(self) -> bool {
        matches!(
            self,
            TransactionState::Empty
                | TransactionState::CompleteCommit
                | TransactionState::CompleteAbort
        )
    }

    /// Kafka's `validPreviousStates`.
    fn can_follow(self, previous: TransactionState) -> bool {
        use TransactionState::*;
        match self {
            Empty => matches!(previous, Empty | CompleteCommit | CompleteAbort),
            Ongoing => matches!(previous, Ongoing | Empty | CompleteCommit | CompleteAbort),
            PrepareCommit => previous == Ongoing,
            PrepareAbort => matches!(previous, Ongoing | PrepareEpochFence),
            CompleteCommit => previous == PrepareCommit,
            CompleteAbort => previous == PrepareAbort,
            Dead => matches!(previous, Empty | CompleteCommit | CompleteAbort),
            PrepareEpochFence => previous == Ongoing,
        }
    }
}

/// Whether `epoch` leaves no room to fence its producer: Kafka keeps
/// `i16::MAX` for the coordinator, so a client never gets more than
/// `i16::MAX - 2` and the next InitProducerId rotates the producer id.
pub fn is_epoch_exhausted(epoch: i16) -> bool {
    epoch >= i16::MAX - 1
}

/// The state of one transactional id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionMetadata {
    pub transactional_id: String,
    pub producer_id: i64,
    /// The producer id before the last rotation: a KIP-360 retry that spans
    /// the rotation still names it.
    pub previous_producer_id: i64,
    pub producer_epoch: i16,
    /// The epoch before the last bump a producer asked for with its own
    /// id and epoch (KIP-360): a retry naming it gets the current epoch
    /// again. Not in the log, so `-1` after a reload, as in Kafka.
    pub last_producer_epoch: i16,
    pub transaction_timeout_ms: i32,
    pub state: TransactionState,
    pub topic_partitions: BTreeSet<TopicPartition>,
    /// `-1` until the first partition of a transaction is added.
    pub transaction_start_timestamp_ms: i64,
    pub transaction_last_update_timestamp_ms: i64,
    /// The state of a prepared transition not yet in the log (or, for
    /// Complete*, the markers being written).
    pub(crate) pending_state: Option<TransactionState>,
    /// The bumped epoch of a fence whose PrepareAbort failed to append is
    /// still in memory, never handed to a client: the next fence reuses it
    /// instead of bumping again.
    pub(crate) has_failed_epoch_fence: bool,
}

/// A prepared transition: what is written to the log and then applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TxnTransit {
    pub producer_id: i64,
    pub previous_producer_id: i64,
    pub producer_epoch: i16,
    pub last_producer_epoch: i16,
    pub transaction_timeout_ms: i32,
    pub state: TransactionState,
    pub topic_partitions: BTreeSet<TopicPartition>,
    pub transaction_start_timestamp_ms: i64,
    pub transaction_last_update_timestamp_ms: i64,
}

impl TxnTransit {
    pub fn is_complete(&self) -> bool {
        matches!(
            self.state,
            TransactionState::CompleteCommit | TransactionState::CompleteAbort
        )
    }

    /// The record value, as Kafka's `TransactionLog.valueToBytes` builds it.
    pub fn to_value(&self) -> TransactionLogValue {
        let transaction_partitions = (self.state != TransactionState::Empty).then(|| {
            let mut topics: Vec<PartitionsSchema> = Vec::new();
            for tp in &self.topic_partitions {
                // Sorted by topic, so one pass groups them.
                match topics.last_mut() {
                    Some(t) if t.topic == tp.topic => t.partition_ids.push(tp.partition),
                    _ => topics.push(PartitionsSchema {
                        topic: tp.topic.clone(),
                        partition_ids: vec![tp.partition],
                    }),
                }
            }
            topics
        });
        TransactionLogValue {
            producer_id: self.producer_id,
            previous_producer_id: self.previous_producer_id,
            producer_epoch: self.producer_epoch,
            transaction_timeout_ms: self.transaction_timeout_ms,
            transaction_status: self.state,
            transaction_partitions,
            transaction_last_update_timestamp_ms: self.transaction_last_update_timestamp_ms,
            transaction_start_timestamp_ms: self.transaction_start_timestamp_ms,
        }
    }
}

impl TransactionMetadata {
    /// Whether a request from `producer_id` at `producer_epoch` speaks for
    /// this transactional id: another producer id is a mapping error, an
    /// older or newer epoch a fenced producer.
    pub fn check_producer(
        &self,
        producer_id: i64,
        producer_epoch: i16,
    ) -> Result<(), kafka_protocol::ResponseError> {
        if self.producer_id != producer_id {
            return Err(kafka_protocol::ResponseError::InvalidProducerIdMapping);
        }
        if self.producer_epoch != producer_epoch {
            return Err(kafka_protocol::ResponseError::ProducerFenced);
        }
        Ok(())
    }

    /// A transactional id seen for the first time: its producer id is
    /// fresh and its epoch `-1`, so the first InitProducerId bumps it to 0.
    pub fn new(transactional_id: &str, producer_id: i64, timeout_ms: i32, now_ms: i64) -> Self {
        TransactionMetadata {
            transactional_id: transactional_id.to_owned(),
            producer_id,
            previous_producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            last_producer_epoch: NO_PRODUCER_EPOCH,
            transaction_timeout_ms: timeout_ms,
            state: TransactionState::Empty,
            topic_partitions: BTreeSet::new(),
            transaction_start_timestamp_ms: -1,
            transaction_last_update_timestamp_ms: now_ms,
            pending_state: None,
            has_failed_epoch_fence: false,
        }
    }

    /// The metadata a record value describes (Kafka's `readTxnRecordValue`).
    pub fn from_value(transactional_id: &str, value: &TransactionLogValue) -> Self {
        let topic_partitions = match (&value.transaction_partitions, value.transaction_status) {
            // Kafka ignores the partitions of an Empty record.
            (_, TransactionState::Empty) | (None, _) => BTreeSet::new(),
            (Some(topics), _) => topics
                .iter()
                .flat_map(|t| {
                    t.partition_ids
                        .iter()
                        .map(|p| TopicPartition::new(t.topic.clone(), *p))
                })
                .collect(),
        };
        TransactionMetadata {
            transactional_id: transactional_id.to_owned(),
            producer_id: value.producer_id,
            previous_producer_id: value.previous_producer_id,
            producer_epoch: value.producer_epoch,
            last_producer_epoch: NO_PRODUCER_EPOCH,
            transaction_timeout_ms: value.transaction_timeout_ms,
            state: value.transaction_status,
            topic_partitions,
            transaction_start_timestamp_ms: value.transaction_start_timestamp_ms,
            transaction_last_update_timestamp_ms: value.transaction_last_update_timestamp_ms,
            pending_state: None,
            has_failed_epoch_fence: false,
        }
    }

    pub fn pending_state(&self) -> Option<TransactionState> {
        self.pending_state
    }

    pub fn is_epoch_exhausted(&self) -> bool {
        is_epoch_exhausted(self.producer_epoch)
    }

    /// A transit from the current metadata with the given changes applied
    /// by `change`; marks the metadata pending.
    fn prepare(
        &mut self,
        state: TransactionState,
        change: impl FnOnce(&mut TxnTransit),
    ) -> TxnTransit {
        assert!(
            self.pending_state.is_none(),
            "{}: transition to {state:?} while {:?} is pending",
            self.transactional_id,
            self.pending_state
        );
        assert!(
            state.can_follow(self.state),
            "{}: {state:?} cannot follow {:?}",
            self.transactional_id,
            self.state
        );
        let mut transit = TxnTransit {
            producer_id: self.producer_id,
            previous_producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
            last_producer_epoch: self.last_producer_epoch,
            transaction_timeout_ms: self.transaction_timeout_ms,
            state,
            topic_partitions: self.topic_partitions.clone(),
            transaction_start_timestamp_ms: self.transaction_start_timestamp_ms,
            transaction_last_update_timestamp_ms: self.transaction_last_update_timestamp_ms,
        };
        change(&mut transit);
        assert!(
            transit.producer_id >= 0,
            "producer id {}",
            transit.producer_id
        );
        assert!(
            state == TransactionState::Dead || transit.producer_epoch >= 0,
            "producer epoch {}",
            transit.producer_epoch
        );
        self.pending_state = Some(state);
        transit
    }

    /// InitProducerId on an Empty or Complete* transaction: the next epoch,
    /// or, for a KIP-360 retry of a bump that succeeded, the same one.
    /// PRODUCER_FENCED when `expected_epoch` is neither.
    pub(crate) fn prepare_increment_producer_epoch(
        &mut self,
        timeout_ms: i32,
        expected_epoch: Option<i16>,
        now_ms: i64,
    ) -> Option<TxnTransit> {
        let bump = || {
            assert!(
                !self.is_epoch_exhausted(),
                "epoch {} exhausted",
                self.producer_epoch
            );
            self.producer_epoch + 1
        };
        let (epoch, last_epoch) = match expected_epoch {
            None => (bump(), NO_PRODUCER_EPOCH),
            // A new producer, or one recovering whose epoch is still current.
            Some(expected)
                if self.producer_epoch == NO_PRODUCER_EPOCH || expected == self.producer_epoch =>
            {
                (bump(), self.producer_epoch)
            }
            // A retry of a bump whose response was lost: no other producer
            // came in between, or it would have reset the last epoch.
            Some(expected) if expected == self.last_producer_epoch => {
                (self.producer_epoch, self.last_producer_epoch)
            }
            Some(_) => return None,
        };
        Some(self.prepare(TransactionState::Empty, |t| {
            t.producer_epoch = epoch;
            t.last_producer_epoch = last_epoch;
            t.transaction_timeout_ms = timeout_ms;
            t.topic_partitions.clear();
            t.transaction_start_timestamp_ms = -1;
            t.transaction_last_update_timestamp_ms = now_ms;
        }))
    }

    /// InitProducerId once the epoch is exhausted: a new producer id at
    /// epoch 0. `record_last_epoch` keeps the old epoch so the producer's
    /// retry (KIP-360) is recognised.
    pub(crate) fn prepare_producer_id_rotation(
        &mut self,
        producer_id: i64,
        timeout_ms: i32,
        now_ms: i64,
        record_last_epoch: bool,
    ) -> TxnTransit {
        let last_epoch = if record_last_epoch {
            self.producer_epoch
        } else {
            NO_PRODUCER_EPOCH
        };
        self.prepare(TransactionState::Empty, |t| {
            t.producer_id = producer_id;
            t.producer_epoch = 0;
            t.last_producer_epoch = last_epoch;
            t.transaction_timeout_ms = timeout_ms;
            t.topic_partitions.clear();
            t.transaction_start_timestamp_ms = -1;
            t.transaction_last_update_timestamp_ms = now_ms;
        })
    }

    /// AddPartitionsToTxn / AddOffsetsToTxn: Ongoing with the union of the
    /// partitions; a transaction starting now takes `now_ms` as its start.
    pub(crate) fn prepare_add_partitions(
        &mut self,
        partitions: &BTreeSet<TopicPartition>,
        now_ms: i64,
    ) -> TxnTransit {
        let starting = self.state != TransactionState::Ongoing;
        self.prepare(TransactionState::Ongoing, |t| {
            t.topic_partitions.extend(partitions.iter().cloned());
            if starting {
                t.transaction_start_timestamp_ms = now_ms;
            }
            t.transaction_last_update_timestamp_ms = now_ms;
        })
    }

    /// EndTxn: PrepareCommit or PrepareAbort, same epoch (TV1).
    pub(crate) fn prepare_abort_or_commit(
        &mut self,
        state: TransactionState,
        now_ms: i64,
    ) -> TxnTransit {
        self.prepare(state, |t| t.transaction_last_update_timestamp_ms = now_ms)
    }

    /// Fences the current producer of an Ongoing transaction and aborts it:
    /// the epoch is bumped in memory at once (so the old producer is fenced
    /// from now on) and PrepareAbort is prepared with it. This is Kafka's
    /// `prepareFenceProducerEpoch` followed by `endTransaction(ABORT)`.
    pub(crate) fn prepare_epoch_fence_abort(&mut self, now_ms: i64) -> TxnTransit {
        assert!(self.state == TransactionState::Ongoing);
        // A client never holds i16::MAX, so a fence always has room.
        assert!(
            self.producer_epoch < i16::MAX,
            "cannot fence epoch i16::MAX"
        );
        if !self.has_failed_epoch_fence {
            self.producer_epoch += 1;
        }
        self.last_producer_epoch = NO_PRODUCER_EPOCH;
        self.prepare_abort_or_commit(TransactionState::PrepareAbort, now_ms)
    }

    /// After Prepare* is in the log: the markers go out, and until the
    /// Complete* record is written the metadata stays pending, so requests
    /// get CONCURRENT_TRANSACTIONS.
    pub(crate) fn begin_markers(&mut self) {
        assert!(self.pending_state.is_none());
        self.pending_state = Some(match self.state {
            TransactionState::PrepareCommit => TransactionState::CompleteCommit,
            TransactionState::PrepareAbort => TransactionState::CompleteAbort,
            other => panic!(
                "{}: markers for a transaction in {other:?}",
                self.transactional_id
            ),
        });
        // The fence (if any) is in the log now.
        self.has_failed_epoch_fence = false;
    }

    /// Whether markers are being written for this transaction.
    pub(crate) fn is_writing_markers(&self) -> bool {
        matches!(
            (self.state, self.pending_state),
            (
                TransactionState::PrepareCommit,
                Some(TransactionState::CompleteCommit)
            ) | (
                TransactionState::PrepareAbort,
                Some(TransactionState::CompleteAbort)
            )
        )
    }

    /// The Complete* record once every marker is written.
    pub(crate) fn complete_transit(&self, now_ms: i64) -> TxnTransit {
        assert!(self.is_writing_markers());
        assert!(self.topic_partitions.is_empty());
        TxnTransit {
            producer_id: self.producer_id,
            previous_producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
            last_producer_epoch: self.last_producer_epoch,
            transaction_timeout_ms: self.transaction_timeout_ms,
            state: self.pending_state.expect("writing markers"),
            topic_partitions: BTreeSet::new(),
            transaction_start_timestamp_ms: self.transaction_start_timestamp_ms,
            transaction_last_update_timestamp_ms: now_ms,
        }
    }

    /// Expiration: pending Dead while the tombstone is appended.
    pub(crate) fn prepare_dead(&mut self) {
        self.prepare(TransactionState::Dead, |_| {});
    }

    /// Applies a transit that is now in the log (Kafka's
    /// `completeTransitionTo`), checking it is the one that was prepared.
    /// Unlike Kafka, which leaves an Empty transition's start timestamp as
    /// it was, every field is taken from the transit, so the metadata is
    /// exactly what a reload of the log gives (apart from the last epoch).
    pub(crate) fn complete_transition(&mut self, transit: &TxnTransit) {
        use TransactionState::*;
        assert_eq!(
            self.pending_state,
            Some(transit.state),
            "{}: completing a transition that is not pending",
            self.transactional_id
        );
        let same_producer = transit.producer_id == self.producer_id
            && transit.producer_epoch == self.producer_epoch;
        match transit.state {
            Empty => {
                let bumped = transit.producer_epoch == self.producer_epoch + 1
                    || (transit.producer_epoch == 0 && transit.producer_id != self.producer_id);
                assert!(
                    same_producer || bumped,
                    "{}: bad epoch in {transit:?}",
                    self.transactional_id
                );
                assert!(transit.topic_partitions.is_empty());
                assert_eq!(transit.transaction_start_timestamp_ms, -1);
            }
            Ongoing => {
                assert!(
                    same_producer,
                    "{}: bad epoch in {transit:?}",
                    self.transactional_id
                );
                assert!(self.topic_partitions.is_subset(&transit.topic_partitions));
            }
            PrepareCommit | PrepareAbort => {
                assert!(
                    same_producer,
                    "{}: bad epoch in {transit:?}",
                    self.transactional_id
                );
                assert_eq!(self.topic_partitions, transit.topic_partitions);
            }
            CompleteCommit | CompleteAbort => {
                assert!(
                    same_producer,
                    "{}: bad epoch in {transit:?}",
                    self.transactional_id
                );
                assert_ne!(transit.transaction_start_timestamp_ms, -1);
            }
            Dead | PrepareEpochFence => {
                panic!(
                    "{}: {:?} is never completed",
                    self.transactional_id, transit.state
                )
            }
        }
        if transit.state == Empty {
            // The producer id this one replaced (itself, unless rotated).
            self.previous_producer_id = transit.previous_producer_id;
        }
        self.producer_id = transit.producer_id;
        self.producer_epoch = transit.producer_epoch;
        self.last_producer_epoch = transit.last_producer_epoch;
        self.transaction_timeout_ms = transit.transaction_timeout_ms;
        self.state = transit.state;
        self.topic_partitions = transit.topic_partitions.clone();
        self.transaction_start_timestamp_ms = transit.transaction_start_timestamp_ms;
        self.transaction_last_update_timestamp_ms = transit.transaction_last_update_timestamp_ms;
        self.pending_state = None;
    }
}
