//! Tests of `TxnService` over in-memory fakes of the log, the marker writer
//! and the producer id source.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_request::{
    AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddPartitionsToTxnRequest, DescribeTransactionsRequest, EndTxnRequest,
    GroupId, InitProducerIdRequest, InitProducerIdResponse, ProducerId, TopicName, TransactionalId,
};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::records;
use crate::{
    LogRecord, MarkerWriter, ProducerIdSource, TopicPartition, TransactionLog, TransactionState,
    TxnConfig, TxnMarker, TxnService,
};

const NOT_LEADER: i16 = ResponseError::NotLeaderOrFollower.code();
const TIMED_OUT: i16 = ResponseError::RequestTimedOut.code();

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_owned())
}

fn tp(topic: &str, partition: i32) -> TopicPartition {
    TopicPartition::new(topic, partition)
}

/// `__transaction_state` in memory. While the gate is closed, appends
/// block (on their blocking-pool thread).
#[derive(Default)]
struct MemoryLog {
    partitions: Mutex<HashMap<i32, Vec<LogRecord>>>,
    fail: AtomicBool,
    fail_reads: AtomicBool,
    closed: Mutex<bool>,
    opened: Condvar,
    appends_started: AtomicUsize,
}

impl TransactionLog for MemoryLog {
    fn append(&self, partition: i32, records: Vec<LogRecord>) -> Result<(), String> {
        self.appends_started.fetch_add(1, Ordering::SeqCst);
        let mut closed = self.closed.lock().unwrap();
        while *closed {
            closed = self.opened.wait(closed).unwrap();
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err("disk on fire".into());
        }
        self.partitions
            .lock()
            .unwrap()
            .entry(partition)
            .or_default()
            .extend(records);
        Ok(())
    }

    fn read_all(&self, partition: i32) -> Result<Vec<LogRecord>, String> {
        if self.fail_reads.load(Ordering::SeqCst) {
            return Err("unreadable".into());
        }
        Ok(self
            .partitions
            .lock()
            .unwrap()
            .get(&partition)
            .cloned()
            .unwrap_or_default())
    }
}

impl MemoryLog {
    fn set_closed(&self, closed: bool) {
        *self.closed.lock().unwrap() = closed;
        self.opened.notify_all();
    }

    /// The states `id`'s records went through, `None` for a tombstone.
    fn history(&self, partition: i32, id: &str) -> Vec<Option<TransactionState>> {
        self.read_all(partition)
            .unwrap()
            .iter()
            .filter(|(k, _)| records::decode_key(k).unwrap().as_deref() == Some(id))
            .map(|(_, v)| {
                v.as_ref()
                    .map(|v| records::decode_value(v).unwrap().transaction_status)
            })
            .collect()
    }
}

/// Writes markers, answering each partition from a script of errors (then
/// success); while `hold` is set the writes wait for its permits.
#[derive(Default)]
struct FakeMarkers {
    calls: Mutex<Vec<(Instant, TxnMarker)>>,
    errors: Mutex<HashMap<TopicPartition, VecDeque<i16>>>,
    hold: Mutex<Option<Arc<Semaphore>>>,
}

impl MarkerWriter for FakeMarkers {
    fn write_markers(&self, marker: TxnMarker) -> BoxFuture<'static, Vec<(TopicPartition, i16)>> {
        let mut errors = self.errors.lock().unwrap();
        let results = marker
            .partitions
            .iter()
            .map(|p| {
                let code = errors.get_mut(p).and_then(VecDeque::pop_front).unwrap_or(0);
                (p.clone(), code)
            })
            .collect();
        self.calls.lock().unwrap().push((Instant::now(), marker));
        let hold = self.hold.lock().unwrap().clone();
        async move {
            if let Some(hold) = hold {
                hold.acquire().await.unwrap().forget();
            }
            results
        }
        .boxed()
    }
}

impl FakeMarkers {
    fn fail(&self, partition: TopicPartition, codes: &[i16]) {
        self.errors
            .lock()
            .unwrap()
            .insert(partition, codes.iter().copied().collect());
    }

    fn calls(&self) -> Vec<TxnMarker> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|(_, m)| m.clone())
            .collect()
    }
}

/// Producer ids from 1000 up; `fail` answers an error code instead, and
/// `hold` makes the fetch wait for a permit.
struct FakeIds {
    next: AtomicI64,
    fetched: AtomicUsize,
    fail: Mutex<Option<i16>>,
    hold: Mutex<Option<Arc<Semaphore>>>,
}

impl Default for FakeIds {
    fn default() -> Self {
        FakeIds {
            next: AtomicI64::new(1000),
            fetched: AtomicUsize::new(0),
            fail: Mutex::new(None),
            hold: Mutex::new(None),
        }
    }
}

impl ProducerIdSource for FakeIds {
    fn next_producer_id(&self) -> BoxFuture<'static, Result<i64, i16>> {
        self.fetched.fetch_add(1, Ordering::SeqCst);
        let answer = match *self.fail.lock().unwrap() {
            Some(code) => Err(code),
            None => Ok(self.next.fetch_add(1, Ordering::SeqCst)),
        };
        let hold = self.hold.lock().unwrap().clone();
        async move {
            if let Some(hold) = hold {
                hold.acquire().await.unwrap().forget();
            }
            answer
        }
        .boxed()
    }
}

struct Fixture {
    svc: Arc<TxnService>,
    log: Arc<MemoryLog>,
    markers: Arc<FakeMarkers>,
    ids: Arc<FakeIds>,
}

impl Fixture {
    async fn new(config: TxnConfig) -> Self {
        let log = Arc::new(MemoryLog::default());
        let markers = Arc::new(FakeMarkers::default());
        let ids = Arc::new(FakeIds::default());
        let partitions = config.transaction_state_partitions;
        let svc = TxnService::new(config, log.clone(), markers.clone(), ids.clone());
        for p in 0..partitions {
            svc.load_partition(p, 1).await.unwrap();
        }
        Fixture {
            svc,
            log,
            markers,
            ids,
        }
    }

    async fn init(&self, id: &str, version: i16) -> InitProducerIdResponse {
        self.svc.init_producer_id(init_req(id), version).await
    }

    async fn add(
        &self,
        id: &str,
        producer: &InitProducerIdResponse,
        partitions: &[(&str, i32)],
    ) -> i16 {
        let r = self
            .svc
            .add_partitions_to_txn(add_req(id, producer, partitions), 3)
            .await;
        let codes: Vec<i16> = r
            .results_by_topic_v3_and_below
            .iter()
            .flat_map(|t| {
                t.results_by_partition
                    .iter()
                    .map(|p| p.partition_error_code)
            })
            .collect();
        assert_eq!(codes.len(), partitions.len());
        assert!(
            codes.iter().all(|c| *c == codes[0]),
            "one error for the transaction"
        );
        codes[0]
    }

    async fn end(
        &self,
        id: &str,
        producer: &InitProducerIdResponse,
        commit: bool,
        version: i16,
    ) -> i16 {
        let req = EndTxnRequest::default()
            .with_transactional_id(TransactionalId(s(id)))
            .with_producer_id(producer.producer_id)
            .with_producer_epoch(producer.producer_epoch)
            .with_committed(commit);
        self.svc.end_txn(req, version).await.error_code
    }

    /// The described state of `id`, or its error code.
    fn state(&self, id: &str) -> Result<(String, i16), i16> {
        let req = DescribeTransactionsRequest::default()
            .with_transactional_ids(vec![TransactionalId(s(id))]);
        let r = &self.svc.describe_transactions(req, 0).transaction_states[0];
        match r.error_code {
            0 => Ok((r.transaction_state.to_string(), r.producer_epoch)),
            code => Err(code),
        }
    }

    /// Waits (in virtual time) until `id` reaches `state`.
    async fn wait_for(&self, id: &str, state: &str) {
        for _ in 0..1000 {
            if matches!(self.state(id), Ok((ref s, _)) if s == state) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{id} never reached {state}: {:?}", self.state(id));
    }
}

fn init_req(id: &str) -> InitProducerIdRequest {
    InitProducerIdRequest::default()
        .with_transactional_id(Some(TransactionalId(s(id))))
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1)
}

fn topics(partitions: &[(&str, i32)]) -> Vec<AddPartitionsToTxnTopic> {
    partitions
        .iter()
        .map(|(t, p)| {
            AddPartitionsToTxnTopic::default()
                .with_name(TopicName(s(t)))
                .with_partitions(vec![*p])
        })
        .collect()
}

fn add_req(
    id: &str,
    producer: &InitProducerIdResponse,
    partitions: &[(&str, i32)],
) -> AddPartitionsToTxnRequest {
    AddPartitionsToTxnRequest::default()
        .with_v3_and_below_transactional_id(TransactionalId(s(id)))
        .with_v3_and_below_producer_id(producer.producer_id)
        .with_v3_and_below_producer_epoch(producer.producer_epoch)
        .with_v3_and_below_topics(topics(partitions))
}

/// Polls `done` while letting other tasks and the blocking pool run,
/// without advancing the paused clock.
async fn until(done: impl Fn() -> bool) {
    for _ in 0..5_000 {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("condition never met");
}

#[tokio::test(start_paused = true)]
async fn a_committed_transaction_retries_failed_markers_with_backoff() {
    let f = Fixture::new(TxnConfig::default()).await;
    let producer = f.init("tx", 4).await;
    assert_eq!(
        (
            producer.error_code,
            producer.producer_id.0,
            producer.producer_epoch
        ),
        (0, 1000, 0)
    );
    assert_eq!(f.add("tx", &producer, &[("a", 0), ("b", 1)]).await, 0);
    let offsets = f
        .svc
        .add_offsets_to_txn(
            AddOffsetsToTxnRequest::default()
                .with_transactional_id(TransactionalId(s("tx")))
                .with_producer_id(producer.producer_id)
                .with_producer_epoch(producer.producer_epoch)
                .with_group_id(GroupId(s("g"))),
            3,
        )
        .await;
    assert_eq!(offsets.error_code, 0);
    f.markers.fail(tp("a", 0), &[NOT_LEADER, TIMED_OUT]);
    f.markers
        .fail(tp("b", 1), &[ResponseError::UnknownTopicOrPartition.code()]);

    assert_eq!(f.end("tx", &producer, true, 3).await, 0);
    f.wait_for("tx", "CompleteCommit").await;

    let calls = f.markers.calls.lock().unwrap().clone();
    let offsets_partition = tp(
        "__consumer_offsets",
        keel_types::coordinator::partition_for("g", 50),
    );
    let partitions: Vec<_> = calls.iter().map(|(_, m)| m.partitions.clone()).collect();
    assert_eq!(
        partitions,
        vec![
            vec![offsets_partition, tp("a", 0), tp("b", 1)],
            vec![tp("a", 0)],
            vec![tp("a", 0)],
        ],
        "b:1's topic is gone: dropped, not retried"
    );
    assert!(calls
        .iter()
        .all(|(_, m)| m.commit && m.coordinator_epoch == 1 && m.producer_epoch == 0));
    assert!(calls[1].0 - calls[0].0 >= Duration::from_millis(100));
    assert!(
        calls[2].0 - calls[1].0 >= Duration::from_millis(200),
        "the backoff doubles"
    );

    let partition = f.svc.partition_for("tx");
    use TransactionState::*;
    assert_eq!(
        f.log.history(partition, "tx"),
        vec![
            Some(Empty),
            Some(Ongoing),
            Some(Ongoing),
            Some(PrepareCommit),
            Some(CompleteCommit)
        ]
    );
    // The retry of the finished EndTxn is answered OK.
    assert_eq!(f.end("tx", &producer, true, 3).await, 0);

    // Another coordinator over the same log sees the same transaction.
    let again = TxnService::new(
        TxnConfig::default(),
        f.log.clone(),
        f.markers.clone(),
        f.ids.clone(),
    );
    again.load_partition(partition, 2).await.unwrap();
    let r = again.describe_transactions(
        DescribeTransactionsRequest::default()
            .with_transactional_ids(vec![TransactionalId(s("tx"))]),
        0,
    );
    assert_eq!(
        r.transaction_states[0].transaction_state.as_str(),
        "CompleteCommit"
    );
    assert_eq!(r.transaction_states[0].producer_id.0, 1000);
}

#[tokio::test(start_paused = true)]
async fn answers_only_once_the_record_is_in_the_log() {
    let f = Fixture::new(TxnConfig::default()).await;
    f.log.set_closed(true);
    let svc = f.svc.clone();
    let request = tokio::spawn(async move { svc.init_producer_id(init_req("tx"), 4).await });
    until(|| f.log.appends_started.load(Ordering::SeqCst) == 1).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(
        !request.is_finished(),
        "answered before the append returned"
    );
    assert!(f.log.history(f.svc.partition_for("tx"), "tx").is_empty());
    // Meanwhile the id is pending: a second producer waits.
    assert_eq!(
        f.init("tx", 4).await.error_code,
        ResponseError::ConcurrentTransactions.code()
    );
    f.log.set_closed(false);
    let r = request.await.unwrap();
    assert_eq!((r.error_code, r.producer_epoch), (0, 0));
    assert_eq!(
        f.log.history(f.svc.partition_for("tx"), "tx"),
        vec![Some(TransactionState::Empty)]
    );
}

#[tokio::test(start_paused = true)]
async fn concurrent_inits_of_a_new_id_do_not_interleave() {
    let f = Fixture::new(TxnConfig::default()).await;
    let hold = Arc::new(Semaphore::new(0));
    *f.ids.hold.lock().unwrap() = Some(hold.clone());
    f.log.set_closed(true);
    let (a, b) = (f.svc.clone(), f.svc.clone());
    let first = tokio::spawn(async move { a.init_producer_id(init_req("tx"), 4).await });
    let second = tokio::spawn(async move { b.init_producer_id(init_req("tx"), 4).await });
    // Both need a producer id and wait for one.
    until(|| f.ids.fetched.load(Ordering::SeqCst) == 2).await;
    hold.add_permits(2);
    // One decides first and appends; the other finds it pending.
    until(|| {
        (first.is_finished() || second.is_finished())
            && f.log.appends_started.load(Ordering::SeqCst) == 1
    })
    .await;
    f.log.set_closed(false);
    let mut codes = vec![
        first.await.unwrap().error_code,
        second.await.unwrap().error_code,
    ];
    codes.sort();
    assert_eq!(codes, vec![0, ResponseError::ConcurrentTransactions.code()]);
    assert_eq!(f.log.history(f.svc.partition_for("tx"), "tx").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn unloading_mid_markers_stops_them_and_a_reload_resumes() {
    let f = Fixture::new(TxnConfig::default()).await;
    let producer = f.init("tx", 4).await;
    assert_eq!(f.add("tx", &producer, &[("a", 0)]).await, 0);
    let hold = Arc::new(Semaphore::new(0));
    *f.markers.hold.lock().unwrap() = Some(hold.clone());
    // Without the unload this failure would be retried.
    f.markers.fail(tp("a", 0), &[NOT_LEADER]);
    assert_eq!(
        f.end("tx", &producer, true, 3).await,
        0,
        "answered before the markers"
    );
    until(|| f.markers.calls().len() == 1).await;
    let partition = f.svc.partition_for("tx");
    f.svc.unload_partition(partition);
    hold.add_permits(100);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(f.markers.calls().len(), 1, "no retry after the unload");
    assert_eq!(f.state("tx"), Err(ResponseError::NotCoordinator.code()));
    assert_eq!(
        f.log.history(partition, "tx").last(),
        Some(&Some(TransactionState::PrepareCommit))
    );

    // Leading again at a newer epoch resumes the markers.
    f.svc.load_partition(partition, 2).await.unwrap();
    f.wait_for("tx", "CompleteCommit").await;
    let calls = f.markers.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(
        (calls[1].coordinator_epoch, calls[1].partitions.clone()),
        (2, vec![tp("a", 0)])
    );
}

#[tokio::test(start_paused = true)]
async fn markers_waiting_to_retry_are_not_sent_after_an_unload() {
    let f = Fixture::new(TxnConfig::default()).await;
    let producer = f.init("tx", 4).await;
    assert_eq!(f.add("tx", &producer, &[("a", 0)]).await, 0);
    f.markers.fail(tp("a", 0), &[NOT_LEADER]);
    assert_eq!(f.end("tx", &producer, false, 3).await, 0);
    // The first write failed; the retry waits out its backoff.
    until(|| f.markers.calls().len() == 1).await;
    f.svc.unload_partition(f.svc.partition_for("tx"));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(f.markers.calls().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn failures_of_the_log_and_the_producer_id_source_are_answered() {
    let f = Fixture::new(TxnConfig::default()).await;
    let loading = ResponseError::CoordinatorLoadInProgress.code();
    *f.ids.fail.lock().unwrap() = Some(loading);
    let r = f.init("tx", 4).await;
    assert_eq!(
        (r.error_code, r.producer_id.0, r.producer_epoch),
        (loading, -1, -1)
    );
    assert!(f.log.history(f.svc.partition_for("tx"), "tx").is_empty());
    *f.ids.fail.lock().unwrap() = None;

    f.log.fail.store(true, Ordering::SeqCst);
    assert_eq!(
        f.init("tx", 4).await.error_code,
        ResponseError::CoordinatorNotAvailable.code()
    );
    f.log.fail.store(false, Ordering::SeqCst);
    let r = f.init("tx", 4).await;
    assert_eq!((r.error_code, r.producer_epoch), (0, 0));
    assert_eq!(
        f.ids.fetched.load(Ordering::SeqCst),
        2,
        "the cached id was reused"
    );

    // A producer id without an epoch is malformed; no transactional id is
    // an idempotent producer.
    let malformed = init_req("tx").with_producer_id(ProducerId(5));
    assert_eq!(
        f.svc.init_producer_id(malformed, 4).await.error_code,
        ResponseError::InvalidRequest.code()
    );
    let idempotent = f
        .svc
        .init_producer_id(init_req("x").with_transactional_id(None), 4)
        .await;
    assert_eq!((idempotent.error_code, idempotent.producer_epoch), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_failed_load_leaves_the_partition_uncoordinated() {
    let f = Fixture::new(TxnConfig::default()).await;
    assert_eq!(f.init("tx", 4).await.error_code, 0);
    let partition = f.svc.partition_for("tx");
    f.log.fail_reads.store(true, Ordering::SeqCst);
    assert!(f.svc.load_partition(partition, 2).await.is_err());
    assert_eq!(
        f.init("tx", 4).await.error_code,
        ResponseError::NotCoordinator.code()
    );
    f.log.fail_reads.store(false, Ordering::SeqCst);
    f.svc.load_partition(partition, 3).await.unwrap();
    assert_eq!(
        f.init("tx", 4).await.producer_epoch,
        1,
        "the replayed id is bumped"
    );
    // A partition beyond the configured count is refused, not loaded.
    assert!(f.svc.load_partition(50, 1).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn batched_add_partitions_adds_and_verifies() {
    let f = Fixture::new(TxnConfig::default()).await;
    let tx = f.init("tx", 4).await;
    assert_eq!(f.add("tx", &tx, &[("a", 0)]).await, 0);
    let other = f.init("other", 4).await;
    let transaction = |id: &str,
                       producer: &InitProducerIdResponse,
                       verify_only: bool,
                       partitions: &[(&str, i32)]| {
        AddPartitionsToTxnTransaction::default()
            .with_transactional_id(TransactionalId(s(id)))
            .with_producer_id(producer.producer_id)
            .with_producer_epoch(producer.producer_epoch)
            .with_verify_only(verify_only)
            .with_topics(topics(partitions))
    };
    let req = AddPartitionsToTxnRequest::default().with_transactions(vec![
        transaction("tx", &tx, true, &[("a", 0), ("z", 9)]),
        transaction("other", &other, false, &[("b", 0)]),
        transaction("nobody", &other, false, &[("b", 0)]),
    ]);
    let r = f.svc.add_partitions_to_txn(req, 5).await;
    type PartitionResult = (String, i32, i16);
    let results: Vec<(String, Vec<PartitionResult>)> = r
        .results_by_transaction
        .iter()
        .map(|t| {
            let partitions = t
                .topic_results
                .iter()
                .flat_map(|topic| {
                    topic.results_by_partition.iter().map(|p| {
                        (
                            topic.name.to_string(),
                            p.partition_index,
                            p.partition_error_code,
                        )
                    })
                })
                .collect();
            (t.transactional_id.to_string(), partitions)
        })
        .collect();
    assert_eq!(
        results,
        vec![
            (
                "tx".into(),
                vec![
                    ("a".into(), 0, 0),
                    ("z".into(), 9, ResponseError::TransactionAbortable.code())
                ]
            ),
            ("other".into(), vec![("b".into(), 0, 0)]),
            (
                "nobody".into(),
                vec![(
                    "b".into(),
                    0,
                    ResponseError::InvalidProducerIdMapping.code()
                )]
            ),
        ]
    );
    assert_eq!(f.state("other"), Ok(("Ongoing".into(), 0)));
    assert_eq!(
        f.state("tx"),
        Ok(("Ongoing".into(), 0)),
        "verification changes nothing"
    );
    assert_eq!(
        f.svc
            .verify("tx", tx.producer_id.0, tx.producer_epoch + 1, &[tp("a", 0)])
            .await,
        vec![(tp("a", 0), ResponseError::ProducerFenced.code())]
    );
}

#[tokio::test(start_paused = true)]
async fn the_timer_aborts_timed_out_transactions_and_fences_the_producer() {
    let f = Fixture::new(TxnConfig::default()).await;
    let zombie = f
        .svc
        .init_producer_id(init_req("tx").with_transaction_timeout_ms(1_000), 4)
        .await;
    assert_eq!(f.add("tx", &zombie, &[("a", 0)]).await, 0);
    // The abort job runs every 10 s.
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(f.state("tx"), Ok(("Ongoing".into(), 0)));
    tokio::time::sleep(Duration::from_secs(2)).await;
    f.wait_for("tx", "CompleteAbort").await;
    assert_eq!(
        f.state("tx"),
        Ok(("CompleteAbort".into(), 1)),
        "epoch bumped"
    );
    let markers = f.markers.calls();
    assert_eq!(markers.len(), 1);
    assert!(!markers[0].commit);
    assert_eq!(markers[0].producer_epoch, 1);
    // The zombie hears it was fenced, in its version's words.
    assert_eq!(
        f.end("tx", &zombie, true, 1).await,
        ResponseError::InvalidProducerEpoch.code()
    );
    assert_eq!(
        f.end("tx", &zombie, true, 3).await,
        ResponseError::ProducerFenced.code()
    );
}

#[tokio::test(start_paused = true)]
async fn the_timer_expires_idle_transactional_ids() {
    let config = TxnConfig {
        transactional_id_expiration_ms: 5_000,
        remove_expired_transaction_cleanup_interval_ms: 1_000,
        ..TxnConfig::default()
    };
    let f = Fixture::new(config).await;
    assert_eq!(f.init("idle", 4).await.error_code, 0);
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    assert!(f.state("idle").is_ok());
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    for _ in 0..100 {
        if f.state("idle").is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        f.state("idle"),
        Err(ResponseError::TransactionalIdNotFound.code())
    );
    let partition = f.svc.partition_for("idle");
    assert_eq!(
        f.log.history(partition, "idle"),
        vec![Some(TransactionState::Empty), None]
    );
}

#[tokio::test(start_paused = true)]
async fn the_timer_task_stops_when_the_service_is_dropped() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let f = Fixture::new(TxnConfig::default()).await;
    tokio::task::yield_now().await;
    assert_eq!(metrics.num_alive_tasks(), before + 1, "the timer task");
    let weak = Arc::downgrade(&f.svc);
    drop(f);
    assert!(weak.upgrade().is_none());
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(metrics.num_alive_tasks(), before);
}
