//! Tests of transactions in the log against real files: markers, the first
//! unstable offset, the transaction index through reopen, recovery,
//! truncation and replication, coordinator-epoch fencing of markers, and
//! the producer snapshot's versions.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::batch::{
    control_record_type, end_txn_marker, set_base_offset, BatchBuilder, BatchIter, BatchRecords,
};
use crate::codec::RECORDS_UNCOMPRESSED_BYTES_MAX;
use crate::segment::file_name;
use crate::tests::{open, DAY_MS, NOW};
use crate::*;

const ABORT: ControlRecordType = ControlRecordType::Abort;
const COMMIT: ControlRecordType = ControlRecordType::Commit;
const COORDINATOR_EPOCH: i32 = 3;

/// A transactional batch of `records` records from producer `pid`.
fn txn(pid: i64, epoch: i16, seq: i32, records: usize) -> Vec<u8> {
    let mut b = BatchBuilder::new(0)
        .producer(pid, epoch, seq)
        .transactional(true);
    for i in 0..records {
        b.push(Some(format!("k{i}").as_bytes()), Some(b"v"), &[], NOW);
    }
    b.build()
}

fn plain(value_len: usize) -> Vec<u8> {
    let mut b = BatchBuilder::new(0);
    b.push(Some(b"k"), Some(&vec![b'x'; value_len]), &[], NOW);
    b.build()
}

fn append(log: &mut Log, bytes: Vec<u8>) -> LogAppendResult {
    log.append_as_leader(&bytes, 0, NOW).unwrap()
}

fn mark(log: &mut Log, pid: i64, epoch: i16, marker: ControlRecordType) -> LogAppendResult {
    log.append_marker(pid, epoch, marker, COORDINATOR_EPOCH, 0, NOW)
        .unwrap()
}

fn aborted(producer_id: i64, first: i64, last: i64, last_stable: i64) -> AbortedTxn {
    AbortedTxn {
        producer_id,
        first_offset: first,
        last_offset: last,
        last_stable_offset: last_stable,
    }
}

fn small_segments() -> LogConfig {
    LogConfig {
        segment_bytes: 1000,
        index_interval_bytes: 128,
        ..LogConfig::default()
    }
}

/// Every `.txnindex` in the log's directory, by name, with its bytes.
fn txn_index_files(log_dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(log_dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_str().unwrap().ends_with(".txnindex"))
        .map(|e| {
            let name = e.file_name().into_string().unwrap();
            (name, std::fs::read(e.path()).unwrap())
        })
        .collect()
}

#[test]
fn markers_end_transactions_and_move_the_first_unstable_offset() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig::default(), None);
    append(&mut log, plain(1)); // 0
    append(&mut log, txn(1, 0, 0, 2)); // 1..=2
    assert_eq!(log.first_unstable_offset(), Some(1));
    assert!(log.has_ongoing_transaction(1));
    assert!(!log.has_ongoing_transaction(2));
    append(&mut log, txn(2, 5, 0, 1)); // 3
    append(&mut log, txn(1, 0, 2, 1)); // 4, in P1's transaction
    assert_eq!(
        log.ongoing_transactions(),
        vec![
            OngoingTxn {
                producer_id: 1,
                producer_epoch: 0,
                first_offset: 1,
                last_timestamp: NOW
            },
            OngoingTxn {
                producer_id: 2,
                producer_epoch: 5,
                first_offset: 3,
                last_timestamp: NOW
            },
        ]
    );
    let commit = mark(&mut log, 1, 0, COMMIT); // 5
    assert_eq!(
        (commit.first_offset, commit.last_offset, commit.record_count),
        (5, 5, 1)
    );
    assert_eq!(log.first_unstable_offset(), Some(3));
    assert!(!log.has_ongoing_transaction(1));
    assert!(log.aborted_transactions(0, 100).unwrap().is_empty());
    assert!(txn_index_files(log.dir()).is_empty(), "no abort, no file");

    mark(&mut log, 2, 5, ABORT); // 6
    assert_eq!(log.first_unstable_offset(), None);
    assert!(log.ongoing_transactions().is_empty());
    assert_eq!(
        log.aborted_transactions(0, 7).unwrap(),
        vec![aborted(2, 3, 6, 7)]
    );
    // A transaction still open when another aborts is its last stable offset.
    append(&mut log, txn(1, 0, 3, 1)); // 7
    append(&mut log, txn(2, 5, 1, 1)); // 8
    mark(&mut log, 2, 5, ABORT); // 9
    mark(&mut log, 1, 0, ABORT); // 10
    let all = vec![
        aborted(2, 3, 6, 7),
        aborted(2, 8, 9, 7),
        aborted(1, 7, 10, 11),
    ];
    assert_eq!(log.aborted_transactions(0, 11).unwrap(), all);
    assert_eq!(log.aborted_transactions(7, 9).unwrap(), all[1..]);
    assert_eq!(log.aborted_transactions(10, 11).unwrap(), all[2..]);
    assert!(log.aborted_transactions(11, 20).unwrap().is_empty());
    // The search ends at an entry whose last stable offset reaches the
    // bound: nothing indexed after it can start below.
    assert_eq!(log.aborted_transactions(0, 5).unwrap(), all[..1]);

    // The index is Kafka's: 34-byte entries in marker order.
    let files = txn_index_files(log.dir());
    let index = &files[&file_name(0, ".txnindex")];
    assert_eq!(index.len(), 3 * 34);
    assert_eq!(&index[..2], &[0, 0]);
    assert_eq!(&index[2..10], &2i64.to_be_bytes());

    // The marker is Kafka's end transaction marker.
    let slice = log.read(10, u32::MAX, i64::MAX, true).unwrap();
    let bytes = slice.read_bytes().unwrap();
    let (h, range) = BatchIter::strict(&bytes).next().unwrap().unwrap();
    let batch = &bytes[range];
    assert!(h.is_control() && h.is_transactional());
    assert_eq!(
        (
            h.base_offset(),
            h.producer_id(),
            h.producer_epoch(),
            h.base_sequence(),
            h.record_count()
        ),
        (10, 1, 0, -1, 1)
    );
    assert_eq!(control_record_type(batch).unwrap(), Some(ABORT));
    let decoded = BatchRecords::decode(batch, RECORDS_UNCOMPRESSED_BYTES_MAX).unwrap();
    let record = &decoded.records().unwrap()[0];
    assert_eq!(record.key, Some(&[0, 0, 0, 0][..]));
    assert_eq!(record.value, Some(&[0, 0, 0, 0, 0, 3][..]));
}

/// What the log should hold, computed independently of it.
#[derive(Default)]
struct Model {
    /// Producer to the first offset of its ongoing transaction.
    ongoing: BTreeMap<i64, i64>,
    aborted: Vec<AbortedTxn>,
    sequences: HashMap<i64, i32>,
}

impl Model {
    fn data(&mut self, log: &mut Log, pid: i64) {
        let seq = self.sequences.entry(pid).or_default();
        let r = append(log, txn(pid, 0, *seq, 2));
        *seq += 2;
        self.ongoing.entry(pid).or_insert(r.first_offset);
    }

    fn end(&mut self, log: &mut Log, pid: i64, marker: ControlRecordType) {
        let at = mark(log, pid, 0, marker).first_offset;
        if let Some(first) = self.ongoing.remove(&pid) {
            if marker == ABORT {
                let last_stable = self.ongoing.values().min().copied().unwrap_or(at + 1);
                self.aborted.push(aborted(pid, first, at, last_stable));
            }
        }
    }

    fn first_unstable_offset(&self) -> Option<i64> {
        self.ongoing.values().min().copied()
    }

    /// Checks every query against the model, over a grid of ranges.
    fn check(&self, log: &Log) {
        assert_eq!(log.first_unstable_offset(), self.first_unstable_offset());
        let end = log.log_end_offset();
        for start in (0..end).step_by(3) {
            for upper in (start + 1..=end + 1).step_by(5) {
                let expected: Vec<AbortedTxn> = self
                    .aborted
                    .iter()
                    .filter(|t| t.last_offset >= start && t.first_offset < upper)
                    .copied()
                    .collect();
                assert_eq!(
                    log.aborted_transactions(start, upper).unwrap(),
                    expected,
                    "[{start}, {upper})"
                );
            }
        }
    }
}

/// Three producers interleaving transactions over many small segments,
/// ending with an abort in the active segment and a transaction open.
fn busy_log(dir: &Path) -> (Log, Model) {
    let mut log = open(dir, small_segments(), None);
    let mut model = Model::default();
    for round in 0..40 {
        model.data(&mut log, 1 + round % 3);
        append(&mut log, plain(250));
        if round % 2 == 1 {
            let marker = if round % 4 == 1 { ABORT } else { COMMIT };
            model.end(&mut log, 1 + (round / 2) % 3, marker);
        }
    }
    model.data(&mut log, 2);
    model.data(&mut log, 1);
    model.end(&mut log, 1, ABORT);
    (log, model)
}

#[test]
fn the_index_spans_segments_and_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let (log, model) = busy_log(dir.path());
    let log_dir = log.dir().to_path_buf();
    let files = txn_index_files(&log_dir);
    assert!(files.len() >= 4, "{} indexed segments", files.len());
    assert!(model.aborted.len() >= 8);
    assert!(model.first_unstable_offset().is_some());
    model.check(&log);
    let segments: Vec<i64> = log.segments().keys().copied().collect();
    let active = *segments.last().unwrap();
    assert!(files.contains_key(&file_name(active, ".txnindex")));

    // After a clean shutdown the files are loaded as they are.
    log.close().unwrap();
    let log = open(dir.path(), small_segments(), None);
    model.check(&log);
    assert_eq!(txn_index_files(&log_dir), files);

    // After a crash from the log start, every index is rebuilt by replay.
    drop(log);
    let log = open(dir.path(), small_segments(), Some(0));
    model.check(&log);
    assert_eq!(txn_index_files(&log_dir), files);

    // After a crash from a recovery point in the active segment, whose
    // index may never have reached the disk, the replay starts from the
    // producer snapshot taken when it was rolled, open transactions and all.
    drop(log);
    std::fs::remove_file(log_dir.join(file_name(active, ".txnindex"))).unwrap();
    assert!(log_dir.join(file_name(active, ".snapshot")).exists());
    let log = open(dir.path(), small_segments(), Some(active + 1));
    model.check(&log);
    assert_eq!(txn_index_files(&log_dir), files);
}

#[test]
fn a_torn_or_corrupt_index_is_rebuilt_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let (log, model) = busy_log(dir.path());
    let log_dir = log.dir().to_path_buf();
    log.close().unwrap();
    let files = txn_index_files(&log_dir);
    let (victim, bytes) = files.iter().nth(1).unwrap();

    // A torn trailing entry.
    std::fs::write(log_dir.join(victim), &bytes[..bytes.len() - 5]).unwrap();
    let log = open(dir.path(), small_segments(), None);
    model.check(&log);
    assert_eq!(txn_index_files(&log_dir), files);
    log.close().unwrap();

    // An entry of an unknown version.
    let mut unknown = bytes.clone();
    unknown[1] = 9;
    std::fs::write(log_dir.join(victim), &unknown).unwrap();
    let log = open(dir.path(), small_segments(), None);
    model.check(&log);
    assert_eq!(txn_index_files(&log_dir), files);
}

#[test]
fn truncating_below_a_marker_reopens_its_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), small_segments(), None);
    append(&mut log, plain(1)); // 0
    append(&mut log, txn(1, 0, 0, 2)); // 1..=2
    append(&mut log, txn(2, 0, 0, 1)); // 3
    mark(&mut log, 2, 0, ABORT); // 4
    append(&mut log, plain(1)); // 5
    mark(&mut log, 1, 0, ABORT); // 6
    assert_eq!(
        log.aborted_transactions(0, 7).unwrap(),
        vec![aborted(2, 3, 4, 1), aborted(1, 1, 6, 7)]
    );
    let index = log.dir().join(file_name(0, ".txnindex"));
    assert_eq!(std::fs::metadata(&index).unwrap().len(), 68);

    log.truncate_to(6).unwrap();
    assert!(log.has_ongoing_transaction(1));
    assert_eq!(log.first_unstable_offset(), Some(1));
    assert_eq!(
        log.aborted_transactions(0, 6).unwrap(),
        vec![aborted(2, 3, 4, 1)]
    );
    assert_eq!(std::fs::metadata(&index).unwrap().len(), 34);

    log.truncate_to(4).unwrap();
    assert!(log.has_ongoing_transaction(2));
    assert_eq!(log.first_unstable_offset(), Some(1));
    assert!(log.aborted_transactions(0, 4).unwrap().is_empty());
    assert_eq!(std::fs::metadata(&index).unwrap().len(), 0);

    // The coordinator writes the markers again.
    mark(&mut log, 2, 0, ABORT); // 4
    mark(&mut log, 1, 0, COMMIT); // 5
    assert_eq!(log.first_unstable_offset(), None);
    assert_eq!(
        log.aborted_transactions(0, 6).unwrap(),
        vec![aborted(2, 3, 4, 1)]
    );
    // A truncation that drops whole segments drops their indexes too.
    for seq in 0..6 {
        append(&mut log, txn(3, 0, seq, 1));
        append(&mut log, plain(300));
    }
    mark(&mut log, 3, 0, ABORT);
    assert!(log.segment_count() > 2);
    let marker_segment = *log.segments().keys().last().unwrap();
    let marker_index = log.dir().join(file_name(marker_segment, ".txnindex"));
    assert!(marker_index.exists());
    log.truncate_to(marker_segment).unwrap();
    assert!(!marker_index.exists());
    assert!(log.has_ongoing_transaction(3));
}

/// A follower whose whole log is older than the leader's log start drops
/// it and restarts there: no segment, epoch, producer, open or aborted
/// transaction, index or snapshot of the old log is left, and it then
/// copies the leader from that offset, also across a reopen.
#[test]
fn truncating_fully_restarts_the_log_with_nothing_of_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), small_segments(), None);
    for seq in 0..4 {
        append(&mut log, txn(1, 0, seq, 1));
        append(&mut log, plain(300));
    }
    mark(&mut log, 1, 0, ABORT);
    append(&mut log, txn(2, 0, 0, 1)); // open at the end
    log.append_as_leader(&plain(300), 3, NOW).unwrap();
    assert!(log.segment_count() > 2);
    assert!(!txn_index_files(log.dir()).is_empty());
    assert!(log.has_ongoing_transaction(2));
    let snapshots = |log: &Log| {
        std::fs::read_dir(log.dir())
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                name.to_str().unwrap().ends_with(".snapshot")
            })
            .count()
    };
    assert!(snapshots(&log) > 0, "rolls took producer snapshots");
    let old_end = log.log_end_offset();

    log.truncate_fully_and_start_at(500).unwrap();
    assert!(500 > old_end);
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (500, 500));
    assert_eq!(log.segment_count(), 1);
    assert!(log.recovery_point() <= 500);
    assert!(log.leader_epoch_cache().entries().is_empty());
    assert_eq!(
        std::fs::read_to_string(log.dir().join("leader-epoch-checkpoint")).unwrap(),
        "0\n0\n"
    );
    assert!(log.producers().is_empty());
    assert_eq!(log.first_unstable_offset(), None);
    assert!(log.aborted_transactions(0, 600).unwrap().is_empty());
    assert!(txn_index_files(log.dir()).is_empty());
    assert_eq!(snapshots(&log), 0);
    assert!(matches!(
        log.read(499, u32::MAX, i64::MAX, true),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    assert!(log.read(500, u32::MAX, i64::MAX, true).unwrap().is_empty());

    // The leader's records from 500 on, in its epoch 7.
    let leader_dir = tempfile::tempdir().unwrap();
    let mut leader = open(leader_dir.path(), small_segments(), None);
    leader.truncate_fully_and_start_at(500).unwrap();
    let from = leader.log_end_offset();
    leader.append_as_leader(&txn(9, 0, 0, 2), 7, NOW).unwrap();
    leader.append_as_leader(&plain(10), 7, NOW).unwrap();
    let shipped = leader
        .read(from, u32::MAX, i64::MAX, true)
        .unwrap()
        .read_bytes()
        .unwrap();
    let r = log.append_as_follower(&shipped).unwrap();
    assert_eq!((r.first_offset, r.last_offset), (500, 502));
    assert_eq!(log.leader_epoch_cache().entries(), &[(7, 500)]);
    assert!(log.has_ongoing_transaction(9));
    assert_eq!(log.first_unstable_offset(), Some(500));

    log.close().unwrap();
    let log = open(dir.path(), small_segments(), None);
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (500, 503));
    assert_eq!(log.leader_epoch_cache().entries(), &[(7, 500)]);
    assert!(log.has_ongoing_transaction(9));
    assert!(!log.has_ongoing_transaction(2));
}

#[test]
fn a_follower_copying_the_leader_builds_the_same_index() {
    let leader_dir = tempfile::tempdir().unwrap();
    let mut leader = open(leader_dir.path(), small_segments(), None);
    let mut shipped: Vec<Vec<u8>> = Vec::new();
    let mut ship = |leader: &Log, from: i64| {
        let bytes = leader
            .read(from, u32::MAX, i64::MAX, true)
            .unwrap()
            .read_bytes()
            .unwrap();
        shipped.push(bytes.to_vec());
    };
    for round in 0..30i64 {
        let pid = 1 + round % 3;
        let from = leader.log_end_offset();
        let seq = i32::try_from(round / 3).unwrap();
        append(&mut leader, txn(pid, 0, seq, 1));
        ship(&leader, from);
        let from = leader.log_end_offset();
        append(&mut leader, plain(200));
        ship(&leader, from);
        if round % 3 == 2 {
            let from = leader.log_end_offset();
            mark(&mut leader, 1 + (round / 3) % 3, 0, ABORT);
            ship(&leader, from);
        }
    }
    assert!(leader.segment_count() > 3);

    let follower_dir = tempfile::tempdir().unwrap();
    let mut follower = open(follower_dir.path(), small_segments(), None);
    for bytes in &shipped {
        follower.append_as_follower(bytes).unwrap();
    }
    assert_eq!(follower.log_end_offset(), leader.log_end_offset());
    let end = leader.log_end_offset();
    assert_eq!(
        follower.aborted_transactions(0, end).unwrap(),
        leader.aborted_transactions(0, end).unwrap()
    );
    assert!(leader.aborted_transactions(0, end).unwrap().len() >= 9);
    assert_eq!(
        follower.first_unstable_offset(),
        leader.first_unstable_offset()
    );
    assert_eq!(
        txn_index_files(follower.dir()),
        txn_index_files(leader.dir())
    );
}

#[test]
fn replay_tolerates_control_records_that_are_not_markers() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig::default(), None);
    let mut shipped = txn(1, 0, 0, 1);
    // A control record of a type this broker does not know, then one too
    // short to hold a type.
    for (offset, key) in [(1i64, &[0u8, 0, 0, 9][..]), (2, &[0u8][..])] {
        let mut unknown = BatchBuilder::new(offset)
            .producer(1, 0, -1)
            .transactional(true)
            .control(true);
        unknown.push(Some(key), Some(&[0, 0]), &[], NOW);
        let unknown = unknown.build();
        assert_eq!(control_record_type(&unknown).unwrap(), None);
        shipped.extend(unknown);
    }
    log.append_as_follower(&shipped).unwrap();
    assert_eq!(log.first_unstable_offset(), Some(0));
    drop(log);
    let mut log = open(dir.path(), LogConfig::default(), Some(0));
    assert_eq!(log.first_unstable_offset(), Some(0));
    // A leader refuses them from the coordinator.
    let mut unknown = BatchBuilder::new(0)
        .producer(1, 0, -1)
        .transactional(true)
        .control(true);
    unknown.push(Some(&[0, 0, 0, 9]), Some(&[0, 0]), &[], NOW);
    assert!(matches!(
        log.append_as_coordinator(&unknown.build(), 0, NOW),
        Err(StorageError::InvalidRecord(_))
    ));
    mark(&mut log, 1, 0, COMMIT);
    assert_eq!(log.first_unstable_offset(), None);
}

#[test]
fn a_non_transactional_batch_during_a_transaction_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig::default(), None);
    append(&mut log, txn(1, 0, 0, 2));
    let mut idempotent = BatchBuilder::new(0).producer(1, 0, 2);
    idempotent.push(Some(b"k"), Some(b"v"), &[], NOW);
    let end = log.log_end_offset();
    assert!(matches!(
        log.append_as_leader(&idempotent.build(), 0, NOW),
        Err(StorageError::InvalidTxnState(_))
    ));
    assert_eq!(log.log_end_offset(), end);
    // Neither in the middle of one append: nothing of it is written.
    let mut both = txn(1, 0, 2, 1);
    both.extend(idempotent.clone().producer(1, 0, 3).build());
    assert!(matches!(
        log.append_as_leader(&both, 0, NOW),
        Err(StorageError::InvalidTxnState(_))
    ));
    assert_eq!(log.log_end_offset(), end);
    // The log start may pass the transaction's start; the first unstable
    // offset stays within the log.
    log.maybe_increment_log_start_offset(1).unwrap();
    assert_eq!(log.first_unstable_offset(), Some(1));
    assert_eq!(log.ongoing_transactions()[0].first_offset, 0);
    // Once the transaction is over, the producer may write outside one.
    mark(&mut log, 1, 0, COMMIT);
    log.append_as_leader(&idempotent.build(), 0, NOW).unwrap();
    assert!(!log.has_ongoing_transaction(1));
}

#[test]
fn markers_from_an_older_epoch_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig::default(), None);
    append(&mut log, txn(1, 2, 0, 1));
    let end = log.log_end_offset();
    assert!(matches!(
        log.append_marker(1, 1, ABORT, COORDINATOR_EPOCH, 0, NOW),
        Err(StorageError::InvalidProducerEpoch {
            producer_id: 1,
            current: 2,
            received: 1
        })
    ));
    assert_eq!(log.log_end_offset(), end);
    assert!(log.has_ongoing_transaction(1));
    // A newer epoch (a bumped producer, KIP-890) ends the transaction.
    mark(&mut log, 1, 3, ABORT);
    assert!(!log.has_ongoing_transaction(1));
    assert_eq!(log.producer_state(1).unwrap().epoch, 3);
    assert_eq!(log.aborted_transactions(0, 2).unwrap().len(), 1);

    // A marker for a producer with no transaction here is written and ends nothing.
    let r = mark(&mut log, 9, 0, ABORT);
    assert_eq!(r.first_offset, 2);
    assert_eq!(log.log_end_offset(), 3);
    assert_eq!(log.first_unstable_offset(), None);
    assert_eq!(log.aborted_transactions(0, 3).unwrap().len(), 1);
}

#[test]
fn the_coordinator_writes_for_a_producer_without_sequences() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig::default(), None);
    // TxnOffsetCommit: the producer's id and epoch, no sequence.
    let offsets = || txn(5, 3, -1, 2);
    assert!(matches!(
        log.append_as_leader(&offsets(), 0, NOW),
        Err(StorageError::UnknownProducerId(5))
    ));
    let r = log.append_as_coordinator(&offsets(), 0, NOW).unwrap();
    assert_eq!((r.first_offset, r.last_offset), (0, 1));
    assert!(log.has_ongoing_transaction(5));
    assert_eq!(log.first_unstable_offset(), Some(0));
    // Twice is not a duplicate without sequences: both are written.
    let r = log.append_as_coordinator(&offsets(), 0, NOW).unwrap();
    assert!(!r.duplicate);
    assert_eq!(r.first_offset, 2);
    assert_eq!(log.first_unstable_offset(), Some(0));
    assert!(matches!(
        log.append_as_coordinator(&txn(5, 2, -1, 1), 0, NOW),
        Err(StorageError::InvalidProducerEpoch { current: 3, .. })
    ));
    mark(&mut log, 5, 3, COMMIT);
    assert_eq!(log.first_unstable_offset(), None);
}

#[test]
fn producers_with_an_ongoing_transaction_never_expire() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig::default(), None);
    append(&mut log, txn(1, 0, 0, 1));
    let mut idempotent = BatchBuilder::new(0).producer(2, 0, 0);
    idempotent.push(None, Some(b"v"), &[], NOW);
    append(&mut log, idempotent.build());
    log.expire_producers(NOW + 30 * DAY_MS);
    assert!(log.producer_state(2).is_none());
    assert!(log.has_ongoing_transaction(1));
    // Nor across a restart, which expires producers as it opens.
    log.close().unwrap();
    let dir_path = dir.path().join("t-0");
    let mut log = Log::open(
        dir_path,
        "topic-id",
        LogConfig::default(),
        None,
        DAY_MS,
        NOW + 30 * DAY_MS,
    )
    .unwrap();
    assert!(log.has_ongoing_transaction(1));
    log.append_marker(1, 0, COMMIT, 0, 0, NOW + 30 * DAY_MS)
        .unwrap();
    log.expire_producers(NOW + 31 * DAY_MS);
    assert!(log.producer_state(1).is_none());
}

/// A producer as an older snapshot holds it: id, epoch, last timestamp,
/// ongoing transaction's first offset (version 2 only) and batches.
type OldSnapshotEntry<'a> = (i64, i16, i64, Option<i64>, &'a [BatchMetadata]);

/// The version 1 snapshot layout, from before transactions, and version 2,
/// from before coordinator epochs.
fn old_snapshot(version: u16, producers: &[OldSnapshotEntry<'_>]) -> Vec<u8> {
    assert!(version == 1 || version == 2);
    let mut body = Vec::new();
    body.extend_from_slice(&(producers.len() as u32).to_be_bytes());
    for (id, epoch, last_timestamp, txn_first_offset, batches) in producers {
        body.extend_from_slice(&id.to_be_bytes());
        body.extend_from_slice(&epoch.to_be_bytes());
        body.extend_from_slice(&last_timestamp.to_be_bytes());
        if version == 2 {
            body.extend_from_slice(&txn_first_offset.unwrap_or(-1).to_be_bytes());
        }
        body.push(batches.len() as u8);
        for b in *batches {
            body.extend_from_slice(&b.first_seq.to_be_bytes());
            body.extend_from_slice(&b.last_seq.to_be_bytes());
            body.extend_from_slice(&b.first_offset.to_be_bytes());
            body.extend_from_slice(&b.last_offset.to_be_bytes());
            body.extend_from_slice(&b.timestamp.to_be_bytes());
        }
    }
    let mut out = version.to_be_bytes().to_vec();
    out.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

#[test]
fn older_snapshot_versions_still_load_and_the_current_one_keeps_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig::default(), None);
    let mut idempotent = BatchBuilder::new(0).producer(7, 1, 0);
    idempotent.push(None, Some(b"v"), &[], NOW);
    append(&mut log, idempotent.build());
    append(&mut log, txn(8, 0, 0, 1));
    log.close().unwrap();
    let snapshot = dir.path().join("t-0").join(file_name(2, ".snapshot"));
    assert_eq!(&std::fs::read(&snapshot).unwrap()[..2], &[0, 3]);

    // Version 3 carries the open transaction: nothing is replayed.
    let log = open(dir.path(), LogConfig::default(), None);
    assert_eq!(log.first_unstable_offset(), Some(1));
    assert_eq!(
        log.producer_state(8).unwrap().current_txn_first_offset,
        Some(1)
    );
    drop(log);

    // A version 1 snapshot is used as it is: it names a producer the log
    // does not, which only the snapshot can have told.
    let batch = BatchMetadata {
        first_seq: 0,
        last_seq: 0,
        first_offset: 0,
        last_offset: 0,
        timestamp: NOW,
    };
    std::fs::write(
        &snapshot,
        old_snapshot(1, &[(7, 1, NOW, None, &[batch]), (99, 4, NOW, None, &[])]),
    )
    .unwrap();
    let mut log = open(dir.path(), LogConfig::default(), None);
    assert_eq!(log.producer_state(99).unwrap().epoch, 4);
    let seven = log.producer_state(7).unwrap();
    assert_eq!(seven.batches.back(), Some(&batch));
    assert_eq!(seven.current_txn_first_offset, None);
    assert_eq!(seven.coordinator_epoch, -1);
    let mut retry = BatchBuilder::new(0).producer(7, 1, 0);
    retry.push(None, Some(b"v"), &[], NOW);
    assert!(
        log.append_as_leader(&retry.build(), 0, NOW)
            .unwrap()
            .duplicate
    );
}

#[test]
fn version_2_snapshots_still_load_without_coordinator_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig::default(), None);
    append(&mut log, txn(8, 0, 0, 1));
    log.close().unwrap();
    let snapshot = dir.path().join("t-0").join(file_name(1, ".snapshot"));
    let batch = BatchMetadata {
        first_seq: 0,
        last_seq: 0,
        first_offset: 0,
        last_offset: 0,
        timestamp: NOW,
    };
    // Producer 99 is only in the snapshot: it is used, not replayed over.
    std::fs::write(
        &snapshot,
        old_snapshot(
            2,
            &[(8, 0, NOW, Some(0), &[batch]), (99, 4, NOW, None, &[])],
        ),
    )
    .unwrap();
    let mut log = open(dir.path(), LogConfig::default(), None);
    assert_eq!(log.producer_state(99).unwrap().epoch, 4);
    assert_eq!(log.producer_state(99).unwrap().coordinator_epoch, -1);
    let eight = log.producer_state(8).unwrap();
    assert_eq!(eight.current_txn_first_offset, Some(0));
    assert_eq!(eight.coordinator_epoch, -1);
    // No marker is known, so any coordinator epoch ends the transaction.
    log.append_marker(8, 0, COMMIT, 0, 0, NOW).unwrap();
    assert_eq!(log.first_unstable_offset(), None);
    assert_eq!(log.producer_state(8).unwrap().coordinator_epoch, 0);
}

/// Whether a marker from `coordinator_epoch` is refused as fenced, and if
/// so that nothing of it was written and the producer is unchanged.
fn fenced(log: &mut Log, pid: i64, coordinator_epoch: i32, marker: ControlRecordType) -> bool {
    let end = log.log_end_offset();
    let before = log.producer_state(pid).cloned();
    match log.append_marker(pid, 0, marker, coordinator_epoch, 0, NOW) {
        Err(StorageError::TransactionCoordinatorFenced {
            producer_id,
            current,
            received,
        }) => {
            assert_eq!((producer_id, received), (pid, coordinator_epoch));
            assert_eq!(Some(current), before.as_ref().map(|e| e.coordinator_epoch));
            assert_eq!(log.log_end_offset(), end, "nothing is written");
            assert_eq!(log.producer_state(pid).cloned(), before);
            true
        }
        Ok(_) => false,
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[test]
fn markers_from_a_lower_coordinator_epoch_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig::default(), None);
    // No marker yet: the producer knows no coordinator epoch.
    append(&mut log, txn(1, 0, 0, 1)); // 0
    assert_eq!(log.producer_state(1).unwrap().coordinator_epoch, -1);
    assert!(!fenced(&mut log, 1, 5, COMMIT)); // 1
    assert_eq!(log.producer_state(1).unwrap().coordinator_epoch, 5);

    // A deposed coordinator cannot end the transaction its successor owns.
    append(&mut log, txn(1, 0, 1, 1)); // 2
    assert!(fenced(&mut log, 1, 4, ABORT));
    assert!(fenced(&mut log, 1, -1, ABORT));
    assert!(log.has_ongoing_transaction(1));
    assert!(log.aborted_transactions(0, 10).unwrap().is_empty());
    // The same coordinator epoch and a higher one are accepted.
    assert!(!fenced(&mut log, 1, 5, ABORT)); // 3
    assert!(!log.has_ongoing_transaction(1));
    assert_eq!(
        log.aborted_transactions(0, 10).unwrap(),
        vec![aborted(1, 2, 3, 4)]
    );
    assert!(!fenced(&mut log, 1, 7, COMMIT)); // 4
    assert_eq!(log.producer_state(1).unwrap().coordinator_epoch, 7);
    assert!(fenced(&mut log, 1, 6, COMMIT));
    // Another producer's markers are its own.
    assert!(!fenced(&mut log, 2, 0, COMMIT)); // 5
    assert_eq!(log.producer_state(2).unwrap().coordinator_epoch, 0);

    // Markers sent by a coordinator as batches are checked the same way,
    // against the ones before them in the same append: nothing is written.
    let end = log.log_end_offset();
    let mut two = end_txn_marker(COMMIT, 1, 0, 9, NOW);
    two.extend(end_txn_marker(COMMIT, 1, 0, 8, NOW));
    assert!(matches!(
        log.append_as_coordinator(&two, 0, NOW),
        Err(StorageError::TransactionCoordinatorFenced {
            producer_id: 1,
            current: 9,
            received: 8
        })
    ));
    assert_eq!(log.log_end_offset(), end);
    assert_eq!(log.producer_state(1).unwrap().coordinator_epoch, 7);
}

#[test]
fn coordinator_epochs_survive_reopening_by_snapshot_and_by_replay() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig::default(), None);
    append(&mut log, txn(1, 0, 0, 1));
    log.append_marker(1, 0, COMMIT, 6, 0, NOW).unwrap();
    append(&mut log, txn(1, 0, 1, 1));
    log.append_marker(2, 0, ABORT, 2, 0, NOW).unwrap();
    log.close().unwrap();
    let log_dir = dir.path().join("t-0");
    let snapshot = log_dir.join(file_name(4, ".snapshot"));
    assert_eq!(&std::fs::read(&snapshot).unwrap()[..2], &[0, 3]);

    // From the snapshot.
    let mut log = open(dir.path(), LogConfig::default(), None);
    assert_eq!(log.producer_state(1).unwrap().coordinator_epoch, 6);
    assert_eq!(log.producer_state(2).unwrap().coordinator_epoch, 2);
    assert!(fenced(&mut log, 1, 5, ABORT));
    drop(log);

    // From the log alone.
    for offset in crate::producer_state::list_snapshots(&log_dir).unwrap() {
        std::fs::remove_file(crate::producer_state::snapshot_path(&log_dir, offset)).unwrap();
    }
    let mut log = open(dir.path(), LogConfig::default(), Some(0));
    assert_eq!(log.producer_state(1).unwrap().coordinator_epoch, 6);
    assert_eq!(log.producer_state(2).unwrap().coordinator_epoch, 2);
    assert!(fenced(&mut log, 1, 5, ABORT));
    assert!(!fenced(&mut log, 1, 6, ABORT));
    assert!(!log.has_ongoing_transaction(1));
}

#[test]
fn followers_and_replay_keep_what_the_leader_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig::default(), None);
    // A leader wrote a marker from epoch 5, then (as Kafka's replicas may
    // see after an unclean election) one from epoch 3 for the same producer.
    let mut shipped = Vec::new();
    let mut data = txn(1, 0, 0, 1);
    set_base_offset(&mut data, 0);
    shipped.extend(data);
    for (offset, coordinator_epoch) in [(1, 5), (2, 3)] {
        let mut marker = end_txn_marker(ABORT, 1, 0, coordinator_epoch, NOW);
        set_base_offset(&mut marker, offset);
        shipped.extend(marker);
    }
    log.append_as_follower(&shipped).unwrap();
    assert_eq!(log.log_end_offset(), 3);
    assert_eq!(log.producer_state(1).unwrap().coordinator_epoch, 3);
    assert_eq!(
        log.aborted_transactions(0, 3).unwrap(),
        vec![aborted(1, 0, 1, 2)]
    );
    drop(log);
    let log_dir = dir.path().join("t-0");
    for offset in crate::producer_state::list_snapshots(&log_dir).unwrap() {
        std::fs::remove_file(crate::producer_state::snapshot_path(&log_dir, offset)).unwrap();
    }
    let log = open(dir.path(), LogConfig::default(), Some(0));
    assert_eq!(log.producer_state(1).unwrap().coordinator_epoch, 3);
}
