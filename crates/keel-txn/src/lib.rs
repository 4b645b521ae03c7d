//! The transaction coordinator: InitProducerId for transactional producers,
//! AddPartitionsToTxn (with KIP-890 verification), AddOffsetsToTxn, EndTxn,
//! the transaction markers that complete a commit or abort, timeouts and
//! transactional id expiration, DescribeTransactions and ListTransactions,
//! persisted as Kafka's `__transaction_state` records. Transaction version
//! 1 semantics: a producer keeps its epoch from one transaction to the next.
//!
//! Code map:
//! - `state_machine/` (`TransactionCoordinator`): every decision,
//!   deterministic and synchronous; time is an argument, appends, markers
//!   and producer id needs are data.
//! - `transaction_state.rs` (`TransactionMetadata`, `TransactionState`):
//!   one transactional id's state and its two-phase transitions.
//! - `records.rs`: the `__transaction_state` key and value formats.
//! - `responses.rs`: wire responses and their per-version error codes.
//! - `service.rs` (`TxnService`): **API Boundary.** The async entry the
//!   broker's handlers call; it owns the mutex, the timer task, the marker
//!   retries and the three traits the broker implements.
//!
//! **Architecture Invariant:** only `service.rs` knows about tokio and the
//! clock; nothing here opens a socket or a file (records leave through
//! `TransactionLog`, markers through `MarkerWriter`, producer ids come from
//! `ProducerIdSource`).

pub mod records;
mod responses;
mod service;
pub mod state_machine;
mod transaction_state;

pub use keel_types::TopicPartition;
pub use service::{MarkerWriter, ProducerIdSource, TransactionLog, TxnService};
pub use state_machine::{
    AppendCompletion, LogRecord, MarkerProgress, Outcome, PendingAppend, TransactionCoordinator,
    TxnAnswer, TxnMarker,
};
pub use transaction_state::{is_epoch_exhausted, TransactionMetadata, TransactionState};

/// The coordinator's settings, named after Kafka's broker configs with the
/// dots turned into underscores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnConfig {
    /// `transaction.state.log.num.partitions`.
    pub transaction_state_partitions: i32,
    /// `offsets.topic.num.partitions`: AddOffsetsToTxn adds the group's
    /// partition of `__consumer_offsets`.
    pub offsets_topic_partitions: i32,
    /// `transaction.max.timeout.ms`.
    pub transaction_max_timeout_ms: i32,
    /// `transactional.id.expiration.ms`.
    pub transactional_id_expiration_ms: i64,
    /// `transaction.abort.timed.out.transaction.cleanup.interval.ms`.
    pub abort_timed_out_transaction_cleanup_interval_ms: i64,
    /// `transaction.remove.expired.transaction.cleanup.interval.ms`.
    pub remove_expired_transaction_cleanup_interval_ms: i64,
}

impl Default for TxnConfig {
    fn default() -> Self {
        TxnConfig {
            transaction_state_partitions: 50,
            offsets_topic_partitions: 50,
            transaction_max_timeout_ms: 900_000,
            transactional_id_expiration_ms: 7 * 24 * 60 * 60 * 1000,
            abort_timed_out_transaction_cleanup_interval_ms: 10_000,
            remove_expired_transaction_cleanup_interval_ms: 60 * 60 * 1000,
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod service_tests;
