//! `TxnService`: the async face of the transaction coordinator, and the
//! only entry point for the broker's handlers.
//!
//! Each request lets the `TransactionCoordinator` decide under a mutex
//! (fetching a producer id first if it asks for one), appends the record it
//! prepared through `TransactionLog` in a task of its own, and answers once
//! the record is in the log. The metadata stays pending from decision to
//! completion, so a second request for the same transactional id racing it
//! gets CONCURRENT_TRANSACTIONS instead of interleaving. Transactions in
//! PrepareCommit/PrepareAbort get a task that writes their markers through
//! `MarkerWriter`, retries what failed, and writes the Complete* record. A
//! timer task aborts timed-out transactions and expires idle ids.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_request::{
    AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
};
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest,
    AddPartitionsToTxnResponse, DescribeTransactionsRequest, DescribeTransactionsResponse,
    EndTxnRequest, EndTxnResponse, InitProducerIdRequest, InitProducerIdResponse,
    ListTransactionsRequest, ListTransactionsResponse,
};
use keel_types::{TopicPartition, NO_PRODUCER_EPOCH, NO_PRODUCER_ID};
use tokio::sync::Notify;

use crate::responses;
pub use crate::state_machine::LogRecord;
use crate::state_machine::{
    self, AppendCompletion, MarkerProgress, Outcome, PendingAppend, TransactionCoordinator,
    TxnAnswer, TxnMarker,
};
use crate::TxnConfig;

/// Where the coordinator's records go: the `__transaction_state` partitions.
pub trait TransactionLog: Send + Sync + 'static {
    /// Appends to one __transaction_state partition; returns once every
    /// in-sync replica has the records (acks=all). Called on a blocking thread.
    fn append(&self, partition: i32, records: Vec<LogRecord>) -> Result<(), String>;
    /// Every record of one partition, in offset order (for loading).
    fn read_all(&self, partition: i32) -> Result<Vec<LogRecord>, String>;
}

/// How markers reach the partitions of a transaction.
pub trait MarkerWriter: Send + Sync + 'static {
    /// Writes one marker per partition (the partition leader's WriteTxnMarkers); an error code per partition, 0 = written.
    ///
    /// UNKNOWN_TOPIC_OR_PARTITION means the partition is gone (no leader
    /// in the metadata) and drops it from the transaction; a leader that
    /// does not host it yet should answer NOT_LEADER_OR_FOLLOWER, which is
    /// retried like the other transient errors. A partition missing from
    /// the answer is retried.
    fn write_markers(&self, marker: TxnMarker) -> BoxFuture<'static, Vec<(TopicPartition, i16)>>;
}

/// Where fresh producer ids come from.
pub trait ProducerIdSource: Send + Sync + 'static {
    /// A fresh producer id from the cluster's id blocks; Err = Kafka error code.
    fn next_producer_id(&self) -> BoxFuture<'static, Result<i64, i16>>;
}

/// Backoff before writing failed markers (or a failed Complete* record)
/// again: Kafka's `retry.backoff.ms` default, doubling up to its
/// `retry.backoff.max.ms` default.
const RETRY_BACKOFF_MS: u64 = 100;
const RETRY_BACKOFF_MAX_MS: u64 = 1_000;

/// An exponential backoff between retries of one task.
struct Backoff(u64);

impl Backoff {
    fn new() -> Self {
        Backoff(RETRY_BACKOFF_MS)
    }

    async fn sleep(&mut self) {
        tokio::time::sleep(Duration::from_millis(self.0)).await;
        self.0 = (self.0 * 2).min(RETRY_BACKOFF_MAX_MS);
    }
}

pub struct TxnService {
    /// Lets `&self` methods hand an owned handle to spawned tasks.
    me: Weak<TxnService>,
    config: TxnConfig,
    /// The state machine. A std mutex: it is held only for the synchronous
    /// decision, never across an await.
    coordinator: Mutex<TransactionCoordinator>,
    log: Arc<dyn TransactionLog>,
    markers: Arc<dyn MarkerWriter>,
    ids: Arc<dyn ProducerIdSource>,
    /// One per `__transaction_state` partition. Appends hold theirs shared
    /// from their `append_allowed` check to the end of the write; a load
    /// takes it exclusively once, after marking the partition loading, so
    /// every append decided under the old epoch is in the log (or refused)
    /// before the log is read back. Per partition, so a load never waits
    /// for the appends of other partitions.
    log_order: Vec<tokio::sync::RwLock<()>>,
    timer_started: AtomicBool,
    /// Wakes the timer task when the service is dropped.
    shutdown: Arc<Notify>,
    /// Wall-clock milliseconds at `start`: the coordinator's time is
    /// `base_ms + start.elapsed()`, monotonic and controllable in tests.
    base_ms: i64,
    start: tokio::time::Instant,
}

impl std::fmt::Debug for TxnService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxnService")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Drop for TxnService {
    fn drop(&mut self) {
        self.shutdown.notify_one();
    }
}

impl TxnService {
    pub fn new(
        config: TxnConfig,
        log: Arc<dyn TransactionLog>,
        markers: Arc<dyn MarkerWriter>,
        ids: Arc<dyn ProducerIdSource>,
    ) -> Arc<Self> {
        let base_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let partitions = config.transaction_state_partitions;
        let service = Arc::new_cyclic(|me| TxnService {
            me: me.clone(),
            coordinator: Mutex::new(TransactionCoordinator::new(config.clone())),
            config,
            log,
            markers,
            ids,
            log_order: (0..partitions)
                .map(|_| tokio::sync::RwLock::new(()))
                .collect(),
            timer_started: AtomicBool::new(false),
            shutdown: Arc::new(Notify::new()),
            base_ms,
            start: tokio::time::Instant::now(),
        });
        service.ensure_timer_task();
        service
    }

    pub fn partition_for(&self, transactional_id: &str) -> i32 {
        keel_types::coordinator::partition_for(
            transactional_id,
            self.config.transaction_state_partitions,
        )
    }

    /// Becomes the coordinator of a `__transaction_state` partition at a
    /// coordinator (leader) epoch: replays its records, then resumes the
    /// markers of transactions left in PrepareCommit/PrepareAbort. Until it
    /// returns, the partition's requests get COORDINATOR_LOAD_IN_PROGRESS;
    /// if the log cannot be read they get NOT_COORDINATOR.
    pub async fn load_partition(
        &self,
        partition: i32,
        coordinator_epoch: i32,
    ) -> Result<(), String> {
        self.ensure_timer_task();
        let Some(order) = usize::try_from(partition)
            .ok()
            .and_then(|p| self.log_order.get(p))
        else {
            // Kafka refuses to load when the topic's partition count no
            // longer matches the configured one.
            return Err(format!(
                "__transaction_state partition {partition} is not below transaction.state.log.num.partitions {}",
                self.config.transaction_state_partitions
            ));
        };
        self.lock().begin_load(partition, coordinator_epoch);
        // Waits out the appends that passed their check before the load began.
        drop(order.write().await);
        let log = self.log.clone();
        let replayed = tokio::task::spawn_blocking(move || {
            let mut transactions = BTreeMap::new();
            let mut skipped = 0usize;
            for (key, value) in log.read_all(partition)? {
                if let Err(e) = state_machine::replay(&mut transactions, &key, value.as_deref()) {
                    skipped += 1;
                    tracing::warn!(partition, error = %e, "skipping undecodable __transaction_state record");
                }
            }
            Ok((transactions, skipped))
        })
        .await
        .unwrap_or_else(|e| Err(format!("loading task failed: {e}")));
        let (transactions, skipped) = match replayed {
            Ok(r) => r,
            Err(e) => {
                self.lock().abandon_load(partition, coordinator_epoch);
                return Err(e);
            }
        };
        let loaded = transactions.len();
        let resumed = self
            .lock()
            .complete_load(partition, coordinator_epoch, transactions);
        match resumed {
            Some(markers) => {
                tracing::info!(
                    partition,
                    coordinator_epoch,
                    loaded,
                    skipped,
                    resumed = markers.len(),
                    "loaded __transaction_state partition"
                );
                for marker in markers {
                    self.spawn_markers(marker);
                }
            }
            None => {
                tracing::info!(
                    partition,
                    coordinator_epoch,
                    "load superseded by an unload or a newer epoch"
                );
            }
        }
        Ok(())
    }

    /// Stops coordinating a partition: its requests get NOT_COORDINATOR,
    /// and its appends and markers in flight stop when they next report.
    pub fn unload_partition(&self, partition: i32) {
        self.lock().unload(partition);
    }

    /// InitProducerId. Without a transactional id (idempotent producers)
    /// it hands out a fresh producer id at epoch 0.
    pub async fn init_producer_id(
        &self,
        req: InitProducerIdRequest,
        version: i16,
    ) -> InitProducerIdResponse {
        let Some(transactional_id) = req.transactional_id.as_deref() else {
            let answer = match self.ids.next_producer_id().await {
                Ok(producer_id) => TxnAnswer::ok(producer_id, 0),
                Err(code) => TxnAnswer::code(code),
            };
            return responses::init_producer_id(answer, version);
        };
        let expected = match (req.producer_id.0, req.producer_epoch) {
            (NO_PRODUCER_ID, NO_PRODUCER_EPOCH) => None,
            (NO_PRODUCER_ID, _) | (_, NO_PRODUCER_EPOCH) => {
                return responses::init_producer_id(
                    TxnAnswer::error(ResponseError::InvalidRequest),
                    version,
                );
            }
            (producer_id, producer_epoch) => Some((producer_id, producer_epoch)),
        };
        let answer = self
            .decide(|c, fresh, now| {
                c.init_producer_id(
                    transactional_id,
                    req.transaction_timeout_ms,
                    expected,
                    fresh,
                    now,
                )
            })
            .await;
        responses::init_producer_id(answer, version)
    }

    /// AddPartitionsToTxn: v0-3 from a producer (one transaction), v4+
    /// batched from brokers, each transaction either added to or, with
    /// `verify_only`, verified. Authorization and unknown topics are the
    /// handler's, as in Kafka's `KafkaApis`.
    pub async fn add_partitions_to_txn(
        &self,
        req: AddPartitionsToTxnRequest,
        version: i16,
    ) -> AddPartitionsToTxnResponse {
        if version < 4 {
            let results = self
                .add_partitions(
                    &req.v3_and_below_transactional_id,
                    req.v3_and_below_producer_id.0,
                    req.v3_and_below_producer_epoch,
                    &req.v3_and_below_topics,
                    version,
                )
                .await;
            return AddPartitionsToTxnResponse::default()
                .with_results_by_topic_v3_and_below(results);
        }
        let results = futures::future::join_all(
            req.transactions
                .iter()
                .map(|t| self.add_partitions_for_broker(t, version)),
        )
        .await;
        AddPartitionsToTxnResponse::default().with_results_by_transaction(results)
    }

    async fn add_partitions_for_broker(
        &self,
        t: &AddPartitionsToTxnTransaction,
        version: i16,
    ) -> AddPartitionsToTxnResult {
        let topic_results = if t.verify_only {
            let partitions = responses::request_partitions(&t.topics);
            let codes: HashMap<TopicPartition, i16> = self
                .lock()
                .verify(
                    &t.transactional_id,
                    t.producer_id.0,
                    t.producer_epoch,
                    &partitions,
                )
                .into_iter()
                .collect();
            responses::topic_results(&t.topics, |tp| codes[tp])
        } else {
            self.add_partitions(
                &t.transactional_id,
                t.producer_id.0,
                t.producer_epoch,
                &t.topics,
                version,
            )
            .await
        };
        AddPartitionsToTxnResult::default()
            .with_transactional_id(t.transactional_id.clone())
            .with_topic_results(topic_results)
    }

    /// Adds `topics` to one transaction; every partition gets its one answer.
    async fn add_partitions(
        &self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        topics: &[AddPartitionsToTxnTopic],
        version: i16,
    ) -> Vec<AddPartitionsToTxnTopicResult> {
        let partitions: BTreeSet<_> = responses::request_partitions(topics).into_iter().collect();
        let answer = self
            .decide(|c, _, now| {
                c.add_partitions(
                    transactional_id,
                    producer_id,
                    producer_epoch,
                    &partitions,
                    now,
                )
            })
            .await;
        let code = responses::add_partitions_error(answer, version);
        responses::topic_results(topics, |_| code)
    }

    /// KIP-890 verification for a partition leader that is itself the
    /// coordinator: one error code per partition, 0 if the partition is in
    /// the producer's Ongoing transaction (see
    /// `TransactionCoordinator::verify` for the codes).
    pub async fn verify(
        &self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        partitions: &[TopicPartition],
    ) -> Vec<(TopicPartition, i16)> {
        self.lock()
            .verify(transactional_id, producer_id, producer_epoch, partitions)
    }

    pub async fn add_offsets_to_txn(
        &self,
        req: AddOffsetsToTxnRequest,
        version: i16,
    ) -> AddOffsetsToTxnResponse {
        let answer = self
            .decide(|c, _, now| {
                c.add_offsets(
                    &req.transactional_id,
                    req.producer_id.0,
                    req.producer_epoch,
                    &req.group_id,
                    now,
                )
            })
            .await;
        responses::add_offsets_to_txn(answer, version)
    }

    /// EndTxn: answered once PrepareCommit/PrepareAbort is in the log; the
    /// markers and the Complete* record follow in the background.
    pub async fn end_txn(&self, req: EndTxnRequest, version: i16) -> EndTxnResponse {
        let answer = self
            .decide(|c, _, now| {
                c.end_txn(
                    &req.transactional_id,
                    req.producer_id.0,
                    req.producer_epoch,
                    req.committed,
                    now,
                )
            })
            .await;
        responses::end_txn(answer, version)
    }

    pub fn describe_transactions(
        &self,
        req: DescribeTransactionsRequest,
        _version: i16,
    ) -> DescribeTransactionsResponse {
        self.lock().describe_transactions(&req)
    }

    pub fn list_transactions(
        &self,
        req: ListTransactionsRequest,
        version: i16,
    ) -> ListTransactionsResponse {
        self.lock().list_transactions(&req, version, self.now_ms())
    }

    // ------------------------------------------------------------ plumbing

    fn lock(&self) -> MutexGuard<'_, TransactionCoordinator> {
        // A panic under the lock is a broken invariant: fail loudly.
        self.coordinator
            .lock()
            .expect("transaction coordinator poisoned")
    }

    fn now_ms(&self) -> i64 {
        self.base_ms + self.start.elapsed().as_millis() as i64
    }

    /// Runs one request through the state machine: with a fresh producer
    /// id if it asks for one, then through the log if it prepared a record.
    async fn decide<F>(&self, mut decide: F) -> TxnAnswer
    where
        F: FnMut(&mut TransactionCoordinator, Option<i64>, i64) -> Outcome,
    {
        self.ensure_timer_task();
        let mut outcome = decide(&mut self.lock(), None, self.now_ms());
        if let Outcome::NeedProducerId = outcome {
            // The lock is released while the id is fetched: the decision is
            // taken again with it, against whatever the state is by then.
            let producer_id = match self.ids.next_producer_id().await {
                Ok(id) => id,
                Err(code) => return TxnAnswer::code(code),
            };
            outcome = decide(&mut self.lock(), Some(producer_id), self.now_ms());
        }
        match outcome {
            Outcome::Answer(answer) => answer,
            Outcome::NeedProducerId => panic!("a fresh producer id was given but not used"),
            Outcome::Append(pending) => {
                // In a task of its own: a caller going away must not leave
                // the metadata pending forever.
                let me = self.me.upgrade().expect("service alive while called");
                match tokio::spawn(async move { me.append(pending).await }).await {
                    Ok(completion) => completion.answer,
                    Err(e) => {
                        tracing::error!(error = %e, "transaction log append task failed");
                        TxnAnswer::error(ResponseError::CoordinatorNotAvailable)
                    }
                }
            }
        }
    }

    /// Appends one prepared record (if its partition is still loaded at its
    /// epoch), completes it, and starts the markers it calls for.
    async fn append(&self, pending: PendingAppend) -> AppendCompletion {
        let mut completion = {
            let _ordered = self.log_order[pending.partition as usize].read().await;
            let allowed = self.lock().append_allowed(&pending);
            let written = allowed
                && {
                    let log = self.log.clone();
                    let (partition, records) = (pending.partition, pending.records.clone());
                    match tokio::task::spawn_blocking(move || log.append(partition, records)).await
                    {
                        Ok(Ok(())) => true,
                        Ok(Err(e)) => {
                            tracing::warn!(partition, error = %e, "appending to __transaction_state failed");
                            false
                        }
                        Err(e) => {
                            tracing::error!(partition, error = %e, "__transaction_state append task failed");
                            false
                        }
                    }
                };
            self.lock().complete_append(pending, written)
        };
        if let Some(marker) = completion.markers.take() {
            self.spawn_markers(marker);
        }
        completion
    }

    fn spawn_markers(&self, marker: TxnMarker) {
        tokio::spawn(write_markers(self.me.clone(), marker));
    }

    /// Spawns the appends of a background job (timeouts, expiration).
    fn run_job(&self, job: impl FnOnce(&mut TransactionCoordinator, i64) -> Vec<PendingAppend>) {
        let appends = job(&mut self.lock(), self.now_ms());
        for pending in appends {
            let me = self.me.upgrade().expect("service alive while called");
            tokio::spawn(async move { me.append(pending).await });
        }
    }

    fn ensure_timer_task(&self) {
        if self.timer_started.load(Ordering::Acquire) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // The first async call starts it.
        };
        if self.timer_started.swap(true, Ordering::AcqRel) {
            return;
        }
        runtime.spawn(timer_loop(
            self.me.clone(),
            self.shutdown.clone(),
            Duration::from_millis(
                self.config.abort_timed_out_transaction_cleanup_interval_ms as u64,
            ),
            Duration::from_millis(
                self.config.remove_expired_transaction_cleanup_interval_ms as u64,
            ),
        ));
    }
}

/// Writes a transaction's markers until every partition has its marker,
/// then its Complete* record; stops as soon as the coordinator says the
/// markers are no longer wanted. Holds the service only while it reports.
async fn write_markers(service: Weak<TxnService>, mut marker: TxnMarker) {
    let mut backoff = Backoff::new();
    loop {
        let writing = {
            let Some(svc) = service.upgrade() else { return };
            if !svc.lock().markers_wanted(&marker) {
                return;
            }
            // A transaction with no partitions left completes at once.
            (!marker.partitions.is_empty()).then(|| svc.markers.write_markers(marker.clone()))
        };
        let results = match writing {
            Some(write) => write.await,
            None => Vec::new(),
        };
        let progress = {
            let Some(svc) = service.upgrade() else { return };
            let now_ms = svc.now_ms();
            let progress = svc.lock().on_markers_written(&marker, &results, now_ms);
            progress
        };
        match progress {
            MarkerProgress::Stop => return,
            MarkerProgress::Retry(rest) => {
                marker = rest;
                backoff.sleep().await;
            }
            MarkerProgress::Complete(pending) => {
                return write_complete_record(service, pending).await
            }
        }
    }
}

/// Appends a Complete* record, retrying while this node still coordinates
/// the transaction (Kafka's `txnLogAppendRetryQueue`).
async fn write_complete_record(service: Weak<TxnService>, mut pending: PendingAppend) {
    let mut backoff = Backoff::new();
    loop {
        let Some(svc) = service.upgrade() else { return };
        let completion = svc.append(pending).await;
        drop(svc);
        match completion.retry {
            Some(again) => {
                pending = again;
                backoff.sleep().await;
            }
            None => return,
        }
    }
}

/// Runs the two periodic jobs of Kafka's transaction coordinator until the
/// service is dropped.
async fn timer_loop(
    service: Weak<TxnService>,
    shutdown: Arc<Notify>,
    abort_every: Duration,
    expire_every: Duration,
) {
    let start = tokio::time::Instant::now();
    let mut next_abort = start + abort_every;
    let mut next_expire = start + expire_every;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next_abort.min(next_expire)) => {}
            _ = shutdown.notified() => return,
        }
        let Some(svc) = service.upgrade() else { return };
        let now = tokio::time::Instant::now();
        if now >= next_abort {
            next_abort = now + abort_every;
            svc.run_job(|c, now_ms| c.abort_timed_out_transactions(now_ms));
        }
        if now >= next_expire {
            next_expire = now + expire_every;
            svc.run_job(|c, now_ms| c.remove_expired_transactional_ids(now_ms));
        }
    }
}
