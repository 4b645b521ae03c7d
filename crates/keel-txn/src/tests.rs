//! Unit tests of the state machine: every transition driven by hand, with
//! an in-memory `__transaction_state` that each test can replay.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    DescribeTransactionsRequest, ListTransactionsRequest, ProducerId, TransactionalId,
};
use kafka_protocol::protocol::StrBytes;

use crate::records::{self, PartitionsSchema, TransactionLogValue};
use crate::state_machine::{self, AppendCompletion, MarkerProgress, Outcome, PendingAppend};
use crate::{
    LogRecord, TopicPartition, TransactionCoordinator, TransactionMetadata, TransactionState,
    TxnAnswer, TxnConfig, TxnMarker,
};

use TransactionState::*;

const T0: i64 = 1_000_000;
const TIMEOUT_MS: i32 = 60_000;
const EPOCH: i32 = 1;

fn code(e: ResponseError) -> i16 {
    e.code()
}

fn error(e: ResponseError) -> TxnAnswer {
    TxnAnswer::error(e)
}

fn tp(topic: &str, partition: i32) -> TopicPartition {
    TopicPartition::new(topic, partition)
}

fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

/// A coordinator leading every partition at coordinator epoch 1, the log
/// its appends go to, a producer id block and a clock.
struct Harness {
    c: TransactionCoordinator,
    log: BTreeMap<i32, Vec<LogRecord>>,
    next_producer_id: i64,
    now: i64,
}

impl Harness {
    fn new() -> Self {
        let mut h = Self::unloaded(BTreeMap::new());
        h.load_all(EPOCH);
        h
    }

    fn unloaded(log: BTreeMap<i32, Vec<LogRecord>>) -> Self {
        Harness {
            c: TransactionCoordinator::new(TxnConfig::default()),
            log,
            next_producer_id: 1000,
            now: T0,
        }
    }

    /// Loads every partition; returns the markers to resume.
    fn load_all(&mut self, coordinator_epoch: i32) -> Vec<TxnMarker> {
        (0..self.c.config().transaction_state_partitions)
            .flat_map(|p| self.load(p, coordinator_epoch))
            .collect()
    }

    fn load(&mut self, partition: i32, coordinator_epoch: i32) -> Vec<TxnMarker> {
        self.c.begin_load(partition, coordinator_epoch);
        let transactions = self.replayed(partition);
        self.c
            .complete_load(partition, coordinator_epoch, transactions)
            .expect("not superseded")
    }

    fn replayed(&self, partition: i32) -> BTreeMap<String, TransactionMetadata> {
        let mut transactions = BTreeMap::new();
        for (key, value) in self.log.get(&partition).into_iter().flatten() {
            state_machine::replay(&mut transactions, key, value.as_deref()).unwrap();
        }
        transactions
    }

    fn meta(&self, id: &str) -> &TransactionMetadata {
        self.c.transaction(id).expect("transaction exists")
    }

    /// The records of a partition so far.
    fn records(&self, partition: i32) -> usize {
        self.log.get(&partition).map_or(0, Vec::len)
    }

    /// Appends successfully (as the log would) and completes.
    fn append(&mut self, pending: PendingAppend) -> AppendCompletion {
        assert!(self.c.append_allowed(&pending));
        self.log
            .entry(pending.partition)
            .or_default()
            .extend(pending.records.iter().cloned());
        self.c.complete_append(pending, true)
    }

    /// Drives a request to its answer, handing out producer ids and
    /// appending; returns the markers it started.
    fn run(
        &mut self,
        mut decide: impl FnMut(&mut TransactionCoordinator, Option<i64>, i64) -> Outcome,
    ) -> (TxnAnswer, Option<TxnMarker>) {
        let mut outcome = decide(&mut self.c, None, self.now);
        if let Outcome::NeedProducerId = outcome {
            self.next_producer_id += 1;
            outcome = decide(&mut self.c, Some(self.next_producer_id), self.now);
        }
        match outcome {
            Outcome::Answer(a) => (a, None),
            Outcome::NeedProducerId => panic!("asked twice"),
            Outcome::Append(p) => {
                let c = self.append(p);
                assert!(c.retry.is_none());
                (c.answer, c.markers)
            }
        }
    }

    fn init(&mut self, id: &str, expected: Option<(i64, i16)>) -> TxnAnswer {
        let (answer, markers) =
            self.run(|c, fresh, now| c.init_producer_id(id, TIMEOUT_MS, expected, fresh, now));
        assert!(markers.is_none());
        answer
    }

    /// InitProducerId that must fence an Ongoing transaction.
    fn init_fencing(&mut self, id: &str) -> TxnMarker {
        let (answer, markers) =
            self.run(|c, fresh, now| c.init_producer_id(id, TIMEOUT_MS, None, fresh, now));
        assert_eq!(answer, error(ResponseError::ConcurrentTransactions));
        markers.expect("abort markers")
    }

    fn add(&mut self, id: &str, answer: TxnAnswer, partitions: &[TopicPartition]) -> TxnAnswer {
        let set = partitions.iter().cloned().collect();
        let (pid, epoch) = (answer.producer_id, answer.producer_epoch);
        self.run(|c, _, now| c.add_partitions(id, pid, epoch, &set, now))
            .0
    }

    fn end(&mut self, id: &str, answer: TxnAnswer, commit: bool) -> (TxnAnswer, Option<TxnMarker>) {
        let (pid, epoch) = (answer.producer_id, answer.producer_epoch);
        self.run(|c, _, now| c.end_txn(id, pid, epoch, commit, now))
    }

    /// Writes every marker successfully and appends the Complete* record.
    fn complete_markers(&mut self, marker: &TxnMarker) {
        let results: Vec<_> = marker.partitions.iter().map(|p| (p.clone(), 0)).collect();
        match self.c.on_markers_written(marker, &results, self.now) {
            MarkerProgress::Complete(p) => {
                let c = self.append(p);
                assert_eq!(c.answer.error_code, 0);
                assert!(c.markers.is_none() && c.retry.is_none());
            }
            other => panic!("expected completion, got {other:?}"),
        }
    }

    /// Writes `value` for `id` to the log and reloads its partition, as if
    /// another coordinator had left it there.
    fn seed(&mut self, id: &str, value: TransactionLogValue) {
        let partition = self.c.partition_for(id);
        self.log
            .entry(partition)
            .or_default()
            .push((records::key(id), Some(value.encode())));
        self.load(partition, EPOCH);
    }

    /// The in-memory metadata of `id` is what its log replays to, apart
    /// from what value version 0 does not carry (the last epoch, the
    /// previous producer id) and the in-memory pending state.
    fn assert_log_matches(&self, id: &str) {
        let partition = self.c.partition_for(id);
        let replayed = self.replayed(partition);
        let mut in_memory = self.meta(id).clone();
        in_memory.last_producer_epoch = -1;
        in_memory.previous_producer_id = -1;
        in_memory.pending_state = None;
        assert_eq!(replayed.get(id), Some(&in_memory));
    }
}

/// A transactional id whose `__transaction_state` partition is `partition`.
fn id_in_partition(c: &TransactionCoordinator, partition: i32) -> String {
    (0..)
        .map(|n| format!("id-{n}"))
        .find(|id| c.partition_for(id) == partition)
        .expect("some id hashes there")
}

/// A producer that initialised and began a transaction over two partitions.
fn ongoing(h: &mut Harness, id: &str) -> TxnAnswer {
    let producer = h.init(id, None);
    assert_eq!(producer.error_code, 0);
    let added = h.add(id, producer, &[tp("a", 0), tp("b", 1)]);
    assert_eq!(added.error_code, 0);
    producer
}

// ---------------------------------------------------------------- InitProducerId

#[test]
fn new_transactional_id_gets_a_fresh_producer_id_at_epoch_0() {
    let mut h = Harness::new();
    assert!(matches!(
        h.c.init_producer_id("tx", TIMEOUT_MS, None, None, T0),
        Outcome::NeedProducerId
    ));
    let partition = h.c.partition_for("tx");
    assert_eq!(h.records(partition), 0, "nothing written without an id");
    let answer = h.init("tx", None);
    assert_eq!(answer, TxnAnswer::ok(1001, 0));
    let m = h.meta("tx");
    assert_eq!(
        (m.state, m.producer_epoch, m.transaction_timeout_ms),
        (Empty, 0, TIMEOUT_MS)
    );
    assert_eq!(h.records(partition), 1);
    h.assert_log_matches("tx");
}

#[test]
fn existing_empty_or_complete_transactions_get_the_next_epoch() {
    let mut h = Harness::new();
    let first = h.init("tx", None);
    assert_eq!(h.init("tx", None), TxnAnswer::ok(first.producer_id, 1));
    let producer = ongoing(&mut h, "tx");
    let (answer, marker) = h.end("tx", producer, true);
    assert_eq!(answer, TxnAnswer::ok(producer.producer_id, 2));
    h.complete_markers(&marker.unwrap());
    assert_eq!(h.meta("tx").state, CompleteCommit);
    assert_eq!(h.init("tx", None), TxnAnswer::ok(first.producer_id, 3));
    assert_eq!(h.meta("tx").state, Empty);
    assert!(h.meta("tx").topic_partitions.is_empty());
    h.assert_log_matches("tx");
}

#[test]
fn init_producer_id_refuses_bad_requests() {
    let mut h = Harness::new();
    let max = h.c.config().transaction_max_timeout_ms;
    for timeout in [0, -1, max + 1] {
        assert_eq!(
            h.run(|c, fresh, now| c.init_producer_id("tx", timeout, None, fresh, now))
                .0,
            error(ResponseError::InvalidTransactionTimeout)
        );
    }
    assert_eq!(
        h.run(|c, fresh, now| c.init_producer_id("tx", max, None, fresh, now))
            .0
            .error_code,
        0
    );
    assert_eq!(h.init("", None), error(ResponseError::InvalidRequest));
    let long = "x".repeat(40_000);
    assert_eq!(h.init(&long, None), error(ResponseError::InvalidRequest));
}

#[test]
fn requests_for_partitions_not_loaded_or_loading() {
    let mut h = Harness::new();
    let partition = h.c.partition_for("tx");
    h.c.unload(partition);
    assert_eq!(h.init("tx", None), error(ResponseError::NotCoordinator));
    h.c.begin_load(partition, 2);
    assert_eq!(
        h.init("tx", None),
        error(ResponseError::CoordinatorLoadInProgress)
    );
    assert_eq!(
        h.c.verify("tx", 1, 0, &[tp("a", 0)]),
        vec![(tp("a", 0), code(ResponseError::CoordinatorLoadInProgress))]
    );
    h.c.complete_load(partition, 2, BTreeMap::new()).unwrap();
    assert_eq!(h.init("tx", None).error_code, 0);
    // A load that fails leaves the partition uncoordinated.
    h.c.begin_load(partition, 3);
    h.c.abandon_load(partition, 3);
    assert_eq!(h.init("tx", None), error(ResponseError::NotCoordinator));
}

#[test]
fn kip_360_retries_and_fencing_by_producer_id_and_epoch() {
    let mut h = Harness::new();
    let first = h.init("tx", None);
    let pid = first.producer_id;
    // The producer recovers with its own id and epoch: bumped, and the
    // epoch it came with is remembered.
    let bumped = h.init("tx", Some((pid, 0)));
    assert_eq!(bumped, TxnAnswer::ok(pid, 1));
    assert_eq!(h.meta("tx").last_producer_epoch, 0);
    // Its retry (the response was lost) gets the same epoch, no second bump.
    assert_eq!(h.init("tx", Some((pid, 0))), TxnAnswer::ok(pid, 1));
    // A stale epoch or another producer id is fenced.
    assert_eq!(
        h.init("tx", Some((pid, 5))),
        error(ResponseError::ProducerFenced)
    );
    assert_eq!(
        h.init("tx", Some((pid + 7, 1))),
        error(ResponseError::ProducerFenced)
    );
    // A new producer (no id) resets the last epoch: the old retry is fenced.
    assert_eq!(h.init("tx", None), TxnAnswer::ok(pid, 2));
    assert_eq!(
        h.init("tx", Some((pid, 0))),
        error(ResponseError::ProducerFenced)
    );
    // A brand new transactional id accepts any id the producer names
    // (recovering from UNKNOWN_PRODUCER_ID after the id expired).
    let answer = h.init("fresh", Some((55, 3)));
    assert_eq!(answer.error_code, 0);
    assert_eq!(answer.producer_epoch, 0);
}

#[test]
fn exhausted_epoch_rotates_the_producer_id() {
    let mut h = Harness::new();
    let exhausted = i16::MAX - 1;
    h.seed(
        "tx",
        TransactionLogValue {
            producer_epoch: exhausted,
            ..value(CompleteCommit, &[])
        },
    );
    let rotated = h.init("tx", Some((500, exhausted)));
    assert_ne!(rotated.producer_id, 500);
    assert_eq!(rotated.producer_epoch, 0);
    let m = h.meta("tx");
    assert_eq!(
        (m.previous_producer_id, m.last_producer_epoch),
        (500, exhausted)
    );
    // The producer's retry names the old id and epoch: same answer.
    assert_eq!(h.init("tx", Some((500, exhausted))), rotated);
    h.assert_log_matches("tx");
    // Without KIP-360 the rotation keeps no last epoch.
    h.seed(
        "tx2",
        TransactionLogValue {
            producer_epoch: exhausted,
            ..value(Empty, &[])
        },
    );
    let again = h.init("tx2", None);
    assert_eq!(again.producer_epoch, 0);
    assert_ne!(again.producer_id, 500);
    assert_eq!(h.meta("tx2").last_producer_epoch, -1);
    // A stale producer of an exhausted id is fenced, not rotated.
    h.seed(
        "tx3",
        TransactionLogValue {
            producer_epoch: exhausted,
            ..value(Empty, &[])
        },
    );
    assert_eq!(
        h.init("tx3", Some((500, 3))),
        error(ResponseError::ProducerFenced)
    );
}

// ---------------------------------------------------------------- a transaction

#[test]
fn commit_writes_prepare_then_markers_then_complete() {
    let mut h = Harness::new();
    let producer = h.init("tx", None);
    h.now += 5;
    assert_eq!(
        h.add("tx", producer, &[tp("a", 0), tp("b", 1)]).error_code,
        0
    );
    let m = h.meta("tx");
    assert_eq!(
        (m.state, m.transaction_start_timestamp_ms),
        (Ongoing, T0 + 5)
    );
    h.assert_log_matches("tx");
    // Partitions already in the transaction are answered without a write.
    let partition = h.c.partition_for("tx");
    let before = h.records(partition);
    assert_eq!(h.add("tx", producer, &[tp("a", 0)]).error_code, 0);
    assert_eq!(h.records(partition), before);
    // Offsets add the group's __consumer_offsets partition.
    h.now += 5;
    let (pid, epoch) = (producer.producer_id, producer.producer_epoch);
    let added = h
        .run(|c, _, now| c.add_offsets("tx", pid, epoch, "group", now))
        .0;
    assert_eq!(added.error_code, 0);
    let offsets = tp(
        "__consumer_offsets",
        keel_types::coordinator::partition_for("group", 50),
    );
    assert!(h.meta("tx").topic_partitions.contains(&offsets));
    assert_eq!(
        h.meta("tx").transaction_start_timestamp_ms,
        T0 + 5,
        "start kept"
    );

    let (answer, marker) = h.end("tx", producer, true);
    assert_eq!(answer, producer);
    let marker = marker.expect("markers");
    assert_eq!(
        marker,
        TxnMarker {
            transactional_id: "tx".into(),
            producer_id: pid,
            producer_epoch: epoch,
            coordinator_epoch: EPOCH,
            commit: true,
            partitions: vec![offsets.clone(), tp("a", 0), tp("b", 1)],
        }
    );
    assert_eq!(h.meta("tx").state, PrepareCommit);
    h.assert_log_matches("tx");

    // While the markers are written everything waits.
    assert_eq!(
        h.end("tx", producer, true).0,
        error(ResponseError::ConcurrentTransactions)
    );
    assert_eq!(
        h.end("tx", producer, false).0,
        error(ResponseError::ConcurrentTransactions)
    );
    assert_eq!(
        h.add("tx", producer, &[tp("c", 0)]),
        error(ResponseError::ConcurrentTransactions)
    );
    assert_eq!(
        h.init("tx", None),
        error(ResponseError::ConcurrentTransactions)
    );
    assert_eq!(
        h.c.verify("tx", pid, epoch, &[tp("a", 0)]),
        vec![(tp("a", 0), code(ResponseError::ConcurrentTransactions))]
    );

    // One leader moved: only its partition is retried.
    let results = vec![
        (offsets.clone(), 0),
        (tp("a", 0), code(ResponseError::NotLeaderOrFollower)),
        (tp("b", 1), 0),
    ];
    let retry = match h.c.on_markers_written(&marker, &results, h.now) {
        MarkerProgress::Retry(m) => m,
        other => panic!("{other:?}"),
    };
    assert_eq!(retry.partitions, vec![tp("a", 0)]);
    assert_eq!(h.meta("tx").topic_partitions.len(), 1);
    h.now += 100;
    h.complete_markers(&retry);
    let m = h.meta("tx");
    assert_eq!((m.state, m.pending_state()), (CompleteCommit, None));
    assert!(m.topic_partitions.is_empty());
    assert_eq!(m.transaction_last_update_timestamp_ms, h.now);
    h.assert_log_matches("tx");

    // Retries of the finished EndTxn are answered OK; the other outcome not.
    assert_eq!(h.end("tx", producer, true).0, producer);
    assert_eq!(
        h.end("tx", producer, false).0,
        error(ResponseError::InvalidTxnState)
    );
    // The next transaction starts from CompleteCommit with the same epoch.
    assert_eq!(h.add("tx", producer, &[tp("c", 0)]).error_code, 0);
    assert_eq!(h.meta("tx").transaction_start_timestamp_ms, h.now);
    let (_, marker) = h.end("tx", producer, false);
    assert!(!marker.as_ref().unwrap().commit);
    h.complete_markers(&marker.unwrap());
    assert_eq!(h.meta("tx").state, CompleteAbort);
    assert_eq!(h.end("tx", producer, false).0, producer);
    assert_eq!(
        h.end("tx", producer, true).0,
        error(ResponseError::InvalidTxnState)
    );
}

#[test]
fn end_txn_and_add_partitions_errors() {
    let mut h = Harness::new();
    let unknown = TxnAnswer::ok(5, 0);
    assert_eq!(
        h.end("nobody", unknown, true).0,
        error(ResponseError::InvalidProducerIdMapping)
    );
    assert_eq!(
        h.add("nobody", unknown, &[tp("a", 0)]),
        error(ResponseError::InvalidProducerIdMapping)
    );
    assert_eq!(
        h.end("", unknown, true).0,
        error(ResponseError::InvalidRequest)
    );
    assert_eq!(
        h.add("", unknown, &[tp("a", 0)]),
        error(ResponseError::InvalidRequest)
    );

    let producer = h.init("tx", None);
    let (pid, epoch) = (producer.producer_id, producer.producer_epoch);
    assert_eq!(
        h.end("tx", producer, true).0,
        error(ResponseError::InvalidTxnState),
        "Empty"
    );
    let other_pid = TxnAnswer::ok(pid + 1, epoch);
    let old_epoch = TxnAnswer::ok(pid, epoch - 1);
    assert_eq!(
        h.end("tx", other_pid, true).0,
        error(ResponseError::InvalidProducerIdMapping)
    );
    assert_eq!(
        h.add("tx", other_pid, &[tp("a", 0)]),
        error(ResponseError::InvalidProducerIdMapping)
    );
    assert_eq!(
        h.end("tx", old_epoch, true).0,
        error(ResponseError::ProducerFenced)
    );
    assert_eq!(
        h.add("tx", old_epoch, &[tp("a", 0)]),
        error(ResponseError::ProducerFenced)
    );
    let long_topic = tp(&"t".repeat(40_000), 0);
    assert_eq!(
        h.add("tx", producer, &[long_topic]),
        error(ResponseError::InvalidRequest)
    );

    // A second request racing a pending append waits.
    let set = [tp("a", 0)].into_iter().collect();
    let Outcome::Append(pending) = h.c.add_partitions("tx", pid, epoch, &set, h.now) else {
        panic!("expected an append")
    };
    assert_eq!(
        h.add("tx", producer, &[tp("b", 0)]),
        error(ResponseError::ConcurrentTransactions)
    );
    assert_eq!(
        h.end("tx", producer, true).0,
        error(ResponseError::ConcurrentTransactions)
    );
    // The append fails: nothing changed, the producer may retry.
    let failed = h.c.complete_append(pending, false);
    assert_eq!(failed.answer, error(ResponseError::CoordinatorNotAvailable));
    assert!(failed.retry.is_none());
    assert_eq!(
        (h.meta("tx").state, h.meta("tx").pending_state()),
        (Empty, None)
    );
    assert_eq!(h.add("tx", producer, &[tp("a", 0)]).error_code, 0);
}

#[test]
fn empty_partition_set_completes_without_markers() {
    let mut h = Harness::new();
    let producer = h.init("tx", None);
    assert_eq!(h.add("tx", producer, &[]).error_code, 0);
    assert_eq!(h.meta("tx").state, Ongoing);
    let (_, marker) = h.end("tx", producer, true);
    let marker = marker.unwrap();
    assert!(marker.partitions.is_empty());
    assert!(matches!(
        h.c.on_markers_written(&marker, &[], h.now),
        MarkerProgress::Complete(_)
    ));
}

// ---------------------------------------------------------------- fencing and timeouts

#[test]
fn init_producer_id_fences_the_zombie_of_an_ongoing_transaction() {
    let mut h = Harness::new();
    let zombie = ongoing(&mut h, "tx");
    let marker = h.init_fencing("tx");
    // The abort is written with the bumped epoch, which fences the zombie.
    assert!(!marker.commit);
    assert_eq!(marker.producer_epoch, zombie.producer_epoch + 1);
    assert_eq!(marker.partitions, vec![tp("a", 0), tp("b", 1)]);
    assert_eq!(h.meta("tx").state, PrepareAbort);
    h.assert_log_matches("tx");
    assert_eq!(
        h.end("tx", zombie, true).0,
        error(ResponseError::ProducerFenced)
    );
    assert_eq!(
        h.add("tx", zombie, &[tp("c", 0)]),
        error(ResponseError::ProducerFenced)
    );
    assert_eq!(
        h.c.verify(
            "tx",
            zombie.producer_id,
            zombie.producer_epoch,
            &[tp("a", 0)]
        ),
        vec![(tp("a", 0), code(ResponseError::ProducerFenced))]
    );
    // The new producer retries until the abort completes...
    assert_eq!(
        h.init("tx", None),
        error(ResponseError::ConcurrentTransactions)
    );
    h.complete_markers(&marker);
    assert_eq!(h.meta("tx").state, CompleteAbort);
    // ...then gets a second bump.
    assert_eq!(
        h.init("tx", None),
        TxnAnswer::ok(zombie.producer_id, zombie.producer_epoch + 2)
    );
    h.assert_log_matches("tx");
}

#[test]
fn a_failed_fence_keeps_its_epoch_for_the_next_attempt() {
    let mut h = Harness::new();
    let zombie = ongoing(&mut h, "tx");
    let Outcome::Append(pending) = h.c.init_producer_id("tx", TIMEOUT_MS, None, None, h.now) else {
        panic!("expected the fence")
    };
    assert_eq!(
        h.meta("tx").producer_epoch,
        zombie.producer_epoch + 1,
        "fenced at once"
    );
    let failed = h.c.complete_append(pending, false);
    assert_eq!(failed.answer, error(ResponseError::CoordinatorNotAvailable));
    assert!(failed.markers.is_none());
    let m = h.meta("tx");
    assert_eq!(
        (m.state, m.pending_state(), m.producer_epoch),
        (Ongoing, None, zombie.producer_epoch + 1)
    );
    assert_eq!(
        h.end("tx", zombie, false).0,
        error(ResponseError::ProducerFenced)
    );
    // The second fence does not bump again.
    let marker = h.init_fencing("tx");
    assert_eq!(marker.producer_epoch, zombie.producer_epoch + 1);
}

#[test]
fn fencing_can_exhaust_the_epoch_and_the_retry_rotates() {
    let mut h = Harness::new();
    h.seed(
        "tx",
        TransactionLogValue {
            producer_epoch: i16::MAX - 2,
            ..value(Ongoing, &[("a", &[0])])
        },
    );
    let marker = h.init_fencing("tx");
    assert_eq!(marker.producer_epoch, i16::MAX - 1);
    h.complete_markers(&marker);
    let rotated = h.init("tx", None);
    assert_ne!(rotated.producer_id, 500);
    assert_eq!(rotated.producer_epoch, 0);
}

#[test]
fn timed_out_transactions_are_aborted_with_an_epoch_bump() {
    let mut h = Harness::new();
    let zombie = ongoing(&mut h, "tx");
    h.now = T0 + 50_000;
    ongoing(&mut h, "young");
    h.now = T0 + i64::from(TIMEOUT_MS);
    assert!(
        h.c.abort_timed_out_transactions(h.now).is_empty(),
        "not past the timeout yet"
    );
    h.now += 1;
    let mut appends = h.c.abort_timed_out_transactions(h.now);
    assert_eq!(appends.len(), 1, "only the old transaction");
    let completion = h.append(appends.pop().unwrap());
    assert_eq!(
        completion.answer,
        error(ResponseError::ConcurrentTransactions)
    );
    let marker = completion.markers.expect("abort markers");
    assert_eq!(
        (marker.transactional_id.as_str(), marker.commit),
        ("tx", false)
    );
    assert_eq!(marker.producer_epoch, zombie.producer_epoch + 1);
    // A transaction already aborting is not picked again.
    assert!(h.c.abort_timed_out_transactions(h.now + 1).is_empty());
    // The zombie wakes up and tries to commit.
    assert_eq!(
        h.end("tx", zombie, true).0,
        error(ResponseError::ProducerFenced)
    );
    h.complete_markers(&marker);
    let m = h.meta("tx");
    assert_eq!(
        (m.state, m.producer_epoch),
        (CompleteAbort, zombie.producer_epoch + 1)
    );
    h.assert_log_matches("tx");
}

// ---------------------------------------------------------------- markers

#[test]
fn marker_errors_drop_retry_or_stop() {
    let mut h = Harness::new();
    let producer = ongoing(&mut h, "tx");
    let (_, marker) = h.end("tx", producer, true);
    let marker = marker.unwrap();
    // The topic of a:0 was deleted; b:1 is missing from the answer.
    let results = vec![(tp("a", 0), code(ResponseError::UnknownTopicOrPartition))];
    let MarkerProgress::Retry(retry) = h.c.on_markers_written(&marker, &results, h.now) else {
        panic!("expected a retry")
    };
    assert_eq!(retry.partitions, vec![tp("b", 1)]);
    // A leader that saw a newer producer epoch: no more markers.
    let fenced = vec![(tp("b", 1), code(ResponseError::InvalidProducerEpoch))];
    assert!(matches!(
        h.c.on_markers_written(&retry, &fenced, h.now),
        MarkerProgress::Stop
    ));
    assert_eq!(
        h.meta("tx").state,
        PrepareCommit,
        "completes on the next load"
    );
    // Resuming on reload writes the remaining partition only.
    let markers = h.load(h.c.partition_for("tx"), EPOCH + 1);
    assert_eq!(markers.len(), 1);
    assert_eq!(markers[0].coordinator_epoch, EPOCH + 1);
    assert_eq!(
        markers[0].partitions,
        vec![tp("a", 0), tp("b", 1)],
        "the log still names both"
    );
}

#[test]
fn unloading_stops_markers_and_appends() {
    let mut h = Harness::new();
    let producer = ongoing(&mut h, "tx");
    let (_, marker) = h.end("tx", producer, false);
    let marker = marker.unwrap();
    let partition = h.c.partition_for("tx");
    // Another id of the same partition is mid-append.
    let other = id_in_partition(&h.c, partition);
    let Outcome::Append(pending) =
        h.c.init_producer_id(&other, TIMEOUT_MS, None, Some(77), h.now)
    else {
        panic!("expected an append")
    };
    h.c.unload(partition);
    assert!(!h.c.append_allowed(&pending));
    assert_eq!(
        h.c.complete_append(pending, true).answer,
        error(ResponseError::NotCoordinator)
    );
    assert_eq!(h.init("tx", None), error(ResponseError::NotCoordinator));
    assert!(!h.c.markers_wanted(&marker));
    assert!(matches!(
        h.c.on_markers_written(&marker, &[], h.now),
        MarkerProgress::Stop
    ));

    // Reloaded at a newer epoch: the old markers stay stopped, the resumed
    // ones carry the new epoch.
    let resumed = h.load(partition, EPOCH + 1);
    assert!(!h.c.markers_wanted(&marker));
    assert_eq!(resumed.len(), 1);
    assert_eq!(
        (
            resumed[0].producer_id,
            resumed[0].producer_epoch,
            resumed[0].coordinator_epoch
        ),
        (producer.producer_id, producer.producer_epoch, EPOCH + 1)
    );
    assert!(
        h.c.transaction(&other).is_none(),
        "its record never reached the log"
    );

    // An append decided before a reload began completes as loading.
    let Outcome::Append(pending) =
        h.c.init_producer_id(&other, TIMEOUT_MS, None, Some(78), h.now)
    else {
        panic!("expected an append")
    };
    h.c.begin_load(partition, EPOCH + 2);
    assert!(!h.c.append_allowed(&pending));
    assert_eq!(
        h.c.complete_append(pending, false).answer,
        error(ResponseError::CoordinatorLoadInProgress)
    );
}

#[test]
fn a_failed_complete_record_is_retried_while_still_coordinator() {
    let mut h = Harness::new();
    let producer = ongoing(&mut h, "tx");
    let (_, marker) = h.end("tx", producer, true);
    let marker = marker.unwrap();
    let results: Vec<_> = marker.partitions.iter().map(|p| (p.clone(), 0)).collect();
    let MarkerProgress::Complete(pending) = h.c.on_markers_written(&marker, &results, h.now) else {
        panic!("expected completion")
    };
    let failed = h.c.complete_append(pending, false);
    let retry = failed.retry.expect("retried");
    assert_eq!(
        h.meta("tx").pending_state(),
        Some(CompleteCommit),
        "still pending"
    );
    assert_eq!(
        h.end("tx", producer, true).0,
        error(ResponseError::ConcurrentTransactions)
    );
    let done = h.append(retry);
    assert!(done.retry.is_none());
    assert_eq!(h.meta("tx").state, CompleteCommit);
    // Once unloaded, a failure is not retried.
    let (_, marker) = {
        assert_eq!(h.add("tx", producer, &[tp("a", 0)]).error_code, 0);
        h.end("tx", producer, true)
    };
    let marker = marker.unwrap();
    let MarkerProgress::Complete(pending) =
        h.c.on_markers_written(&marker, &[(tp("a", 0), 0)], h.now)
    else {
        panic!("expected completion")
    };
    h.c.unload(h.c.partition_for("tx"));
    let failed = h.c.complete_append(pending, false);
    assert!(failed.retry.is_none());
    assert_eq!(failed.answer, error(ResponseError::NotCoordinator));
}

// ---------------------------------------------------------------- loading

fn value(state: TransactionState, partitions: &[(&str, &[i32])]) -> TransactionLogValue {
    TransactionLogValue {
        producer_id: 500,
        previous_producer_id: -1,
        producer_epoch: 4,
        transaction_timeout_ms: TIMEOUT_MS,
        transaction_status: state,
        transaction_partitions: (state != Empty).then(|| {
            partitions
                .iter()
                .map(|(t, ps)| PartitionsSchema {
                    topic: t.to_string(),
                    partition_ids: ps.to_vec(),
                })
                .collect()
        }),
        transaction_last_update_timestamp_ms: T0,
        transaction_start_timestamp_ms: if state == Empty { -1 } else { T0 - 10 },
    }
}

#[test]
fn replay_restores_every_state_and_resumes_prepared_transactions() {
    let states = [
        ("empty", Empty, &[][..]),
        ("ongoing", Ongoing, &[("a", &[0, 1][..])][..]),
        (
            "committing",
            PrepareCommit,
            &[("a", &[0][..]), ("b", &[2][..])][..],
        ),
        ("aborting", PrepareAbort, &[("c", &[3][..])][..]),
        ("committed", CompleteCommit, &[][..]),
        ("aborted", CompleteAbort, &[][..]),
    ];
    let mut h = Harness::unloaded(BTreeMap::new());
    let put = |h: &mut Harness, id: &str, v: Option<TransactionLogValue>| {
        let partition = h.c.partition_for(id);
        h.log
            .entry(partition)
            .or_default()
            .push((records::key(id), v.map(|v| v.encode())));
    };
    for (id, state, partitions) in states {
        // An older value first: the last one wins.
        put(&mut h, id, Some(value(Empty, &[])));
        put(&mut h, id, Some(value(state, partitions)));
    }
    put(&mut h, "deleted", Some(value(CompleteCommit, &[])));
    put(&mut h, "deleted", None);
    // Records of an unknown key version are skipped.
    let partition = h.c.partition_for("ongoing");
    h.log
        .entry(partition)
        .or_default()
        .push((vec![0, 9, 1], Some(vec![1, 2])));

    let mut resumed = h.load_all(7);
    for (id, state, partitions) in states {
        let m = h.meta(id);
        assert_eq!(
            (m.producer_id, m.producer_epoch, m.state),
            (500, 4, state),
            "{id}"
        );
        let expected: Vec<_> = partitions
            .iter()
            .flat_map(|(t, ps)| ps.iter().map(|p| tp(t, *p)))
            .collect();
        assert_eq!(
            m.topic_partitions.iter().cloned().collect::<Vec<_>>(),
            expected,
            "{id}"
        );
    }
    assert!(h.c.transaction("deleted").is_none());

    resumed.sort_by(|a, b| a.transactional_id.cmp(&b.transactional_id));
    assert_eq!(
        resumed,
        vec![
            TxnMarker {
                transactional_id: "aborting".into(),
                producer_id: 500,
                producer_epoch: 4,
                coordinator_epoch: 7,
                commit: false,
                partitions: vec![tp("c", 3)],
            },
            TxnMarker {
                transactional_id: "committing".into(),
                producer_id: 500,
                producer_epoch: 4,
                coordinator_epoch: 7,
                commit: true,
                partitions: vec![tp("a", 0), tp("b", 2)],
            },
        ]
    );
    let committing = TxnAnswer::ok(500, 4);
    assert_eq!(
        h.end("committing", committing, true).0,
        error(ResponseError::ConcurrentTransactions)
    );
    for marker in &resumed {
        h.complete_markers(marker);
    }
    assert_eq!(h.meta("committing").state, CompleteCommit);
    assert_eq!(h.meta("aborting").state, CompleteAbort);
    assert_eq!(h.end("committing", committing, true).0, committing);
    // The ongoing transaction carries on where it was.
    assert_eq!(h.add("ongoing", committing, &[tp("a", 1)]).error_code, 0);
    let (_, marker) = h.end("ongoing", committing, true);
    assert_eq!(marker.unwrap().partitions, vec![tp("a", 0), tp("a", 1)]);
}

#[test]
fn a_load_superseded_by_an_unload_or_a_newer_epoch_is_dropped() {
    let mut c = TransactionCoordinator::new(TxnConfig::default());
    c.begin_load(3, 1);
    c.unload(3);
    assert!(c.complete_load(3, 1, BTreeMap::new()).is_none());
    c.begin_load(3, 1);
    c.begin_load(3, 2);
    assert!(c.complete_load(3, 1, BTreeMap::new()).is_none());
    assert!(c.is_loading());
    assert_eq!(c.complete_load(3, 2, BTreeMap::new()), Some(vec![]));
    assert!(!c.is_loading());
}

// ---------------------------------------------------------------- expiration

#[test]
fn idle_transactional_ids_expire_with_a_tombstone() {
    let mut h = Harness::new();
    let producer = h.init("idle", None);
    ongoing(&mut h, "busy");
    let (_, marker) = {
        assert_eq!(h.add("idle", producer, &[tp("a", 0)]).error_code, 0);
        h.end("idle", producer, true)
    };
    h.complete_markers(&marker.unwrap());
    let expiration = h.c.config().transactional_id_expiration_ms;
    h.now += expiration - 1;
    assert!(h.c.remove_expired_transactional_ids(h.now).is_empty());
    h.now += 1;
    let mut appends = h.c.remove_expired_transactional_ids(h.now);
    assert_eq!(appends.len(), 1, "the Ongoing transaction never expires");
    let pending = appends.pop().unwrap();
    assert_eq!(pending.records, vec![(records::key("idle"), None)]);
    assert_eq!(h.meta("idle").pending_state(), Some(Dead));
    assert_eq!(
        h.init("idle", None),
        error(ResponseError::ConcurrentTransactions)
    );
    h.append(pending);
    assert!(h.c.transaction("idle").is_none());
    assert!(!h.replayed(h.c.partition_for("idle")).contains_key("idle"));
    // The id starts over with a fresh producer id.
    let again = h.init("idle", None);
    assert_ne!(again.producer_id, producer.producer_id);
    assert_eq!(again.producer_epoch, 0);
}

#[test]
fn a_failed_tombstone_leaves_the_id_in_place() {
    let mut h = Harness::new();
    let producer = h.init("idle", None);
    h.now += h.c.config().transactional_id_expiration_ms;
    let pending = h.c.remove_expired_transactional_ids(h.now).pop().unwrap();
    let done = h.c.complete_append(pending, false);
    assert_eq!(done.answer.error_code, 0);
    assert_eq!(h.meta("idle").pending_state(), None);
    assert_eq!(h.init("idle", None), TxnAnswer::ok(producer.producer_id, 1));
}

// ---------------------------------------------------------------- verification

#[test]
fn verify_checks_partitions_without_changing_state() {
    let mut h = Harness::new();
    let producer = h.init("tx", None);
    let (pid, epoch) = (producer.producer_id, producer.producer_epoch);
    let asked = [tp("a", 0), tp("z", 9)];
    let abortable = code(ResponseError::TransactionAbortable);
    assert_eq!(
        h.c.verify("tx", pid, epoch, &asked),
        vec![(tp("a", 0), abortable), (tp("z", 9), abortable)],
        "Empty: nothing added"
    );
    assert_eq!(h.add("tx", producer, &[tp("a", 0)]).error_code, 0);
    let before = h.meta("tx").clone();
    assert_eq!(
        h.c.verify("tx", pid, epoch, &asked),
        vec![(tp("a", 0), 0), (tp("z", 9), abortable)]
    );
    assert_eq!(h.meta("tx"), &before);
    let all = |e: ResponseError| {
        asked
            .iter()
            .map(|p| (p.clone(), code(e)))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        h.c.verify("tx", pid + 1, epoch, &asked),
        all(ResponseError::InvalidProducerIdMapping)
    );
    assert_eq!(
        h.c.verify("tx", pid, epoch + 1, &asked),
        all(ResponseError::ProducerFenced)
    );
    assert_eq!(
        h.c.verify("nobody", pid, epoch, &asked),
        all(ResponseError::InvalidProducerIdMapping)
    );
    assert_eq!(
        h.c.verify("", pid, epoch, &asked),
        all(ResponseError::InvalidRequest)
    );
}

// ---------------------------------------------------------------- describe and list

#[test]
fn describe_transactions_reports_state_partitions_and_errors() {
    let mut h = Harness::new();
    let producer = h.init("tx", None);
    h.now += 7;
    assert_eq!(
        h.add("tx", producer, &[tp("b", 1), tp("a", 2), tp("a", 0)])
            .error_code,
        0
    );
    let taken = [h.c.partition_for("tx"), h.c.partition_for("nobody")];
    let unloaded_partition = (0..50).find(|p| !taken.contains(p)).unwrap();
    let unloaded = id_in_partition(&h.c, unloaded_partition);
    h.c.unload(unloaded_partition);
    let req = DescribeTransactionsRequest::default().with_transactional_ids(
        ["tx", "nobody", "", &unloaded]
            .into_iter()
            .map(|s| TransactionalId(sb(s)))
            .collect(),
    );
    let r = h.c.describe_transactions(&req);
    let tx = &r.transaction_states[0];
    assert_eq!(tx.error_code, 0);
    assert_eq!(tx.transaction_state.as_str(), "Ongoing");
    assert_eq!(
        (tx.producer_id.0, tx.producer_epoch),
        (producer.producer_id, 0)
    );
    assert_eq!(tx.transaction_timeout_ms, TIMEOUT_MS);
    assert_eq!(tx.transaction_start_time_ms, T0 + 7);
    let topics: Vec<_> = tx
        .topics
        .iter()
        .map(|t| (t.topic.as_str(), t.partitions.clone()))
        .collect();
    assert_eq!(topics, vec![("a", vec![0, 2]), ("b", vec![1])]);
    let codes: Vec<_> = r.transaction_states.iter().map(|s| s.error_code).collect();
    assert_eq!(
        codes,
        vec![
            0,
            code(ResponseError::TransactionalIdNotFound),
            code(ResponseError::InvalidRequest),
            code(ResponseError::NotCoordinator)
        ]
    );
    assert_eq!(r.transaction_states[1].transactional_id.as_str(), "nobody");
}

#[test]
fn list_transactions_filters_by_state_producer_and_duration() {
    let mut h = Harness::new();
    let a = ongoing(&mut h, "a");
    h.now += 1_000;
    let b = ongoing(&mut h, "b");
    h.init("c", None);
    let list = |h: &Harness, states: &[&str], producers: &[i64], duration: i64, version: i16| {
        let req = ListTransactionsRequest::default()
            .with_state_filters(states.iter().map(|s| sb(s)).collect())
            .with_producer_id_filters(producers.iter().map(|p| ProducerId(*p)).collect())
            .with_duration_filter(duration);
        let r = h.c.list_transactions(&req, version, h.now + 500);
        let ids: Vec<String> = r
            .transaction_states
            .iter()
            .map(|s| {
                format!(
                    "{}:{}",
                    s.transactional_id.as_str(),
                    s.transaction_state.as_str()
                )
            })
            .collect();
        let unknown: Vec<String> = r
            .unknown_state_filters
            .iter()
            .map(|s| s.to_string())
            .collect();
        (r.error_code, ids, unknown)
    };
    let (error_code, mut ids, _) = list(&h, &[], &[], -1, 0);
    ids.sort();
    assert_eq!(error_code, 0);
    assert_eq!(ids, vec!["a:Ongoing", "b:Ongoing", "c:Empty"]);
    let (_, ids, _) = list(&h, &["Empty"], &[], -1, 0);
    assert_eq!(ids, vec!["c:Empty"]);
    let (_, ids, _) = list(&h, &[], &[b.producer_id], -1, 0);
    assert_eq!(ids, vec!["b:Ongoing"]);
    // Running for more than 1000 ms: only a (started 1500 ms ago).
    let (_, ids, _) = list(&h, &["Ongoing"], &[], 1_000, 1);
    assert_eq!(ids, vec!["a:Ongoing"]);
    // v0 has no duration filter.
    let (_, ids, _) = list(&h, &["Ongoing"], &[], 1_000, 0);
    assert_eq!(ids.len(), 2);
    let (_, ids, unknown) = list(&h, &["Bogus", "Empty"], &[], -1, 0);
    assert_eq!(
        (ids, unknown),
        (vec!["c:Empty".to_string()], vec!["Bogus".to_string()])
    );
    let (_, ids, unknown) = list(&h, &["Bogus"], &[a.producer_id], -1, 0);
    assert!(ids.is_empty(), "an unknown state matches nothing");
    assert_eq!(unknown, vec!["Bogus".to_string()]);

    let pattern = ListTransactionsRequest::default().with_transactional_id_pattern(Some(sb("a.*")));
    assert_eq!(
        h.c.list_transactions(&pattern, 2, h.now).error_code,
        code(ResponseError::UnsupportedVersion)
    );
    h.c.begin_load(0, 9);
    assert_eq!(
        list(&h, &[], &[], -1, 0).0,
        code(ResponseError::CoordinatorLoadInProgress)
    );
}
