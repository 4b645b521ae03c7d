//! Tests of the log cleaner against real files, time passed in.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use proptest::prelude::*;

use super::swap::{swap_steps, SwapStep};
use super::*;
use crate::batch::{
    compute_crc, BatchBuilder, BatchIter, BatchRecords, Compression, RecordBatchHeader,
};
use crate::codec::RECORDS_UNCOMPRESSED_BYTES_MAX;
use crate::config::CleanupPolicy;
use crate::tests::{open as open_at, DAY_MS, NOW};
use crate::{AbortedTxn, ControlRecordType, LogManager, StorageError, TimestampType};

type Key = Vec<u8>;
type Value = Option<Vec<u8>>;

/// One record as read back: offset, key, value, timestamp.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Read {
    offset: i64,
    key: Option<Key>,
    value: Value,
    timestamp: i64,
}

fn compacted() -> LogConfig {
    LogConfig {
        cleanup_policy: CleanupPolicy::COMPACT,
        segment_bytes: 1000,
        index_interval_bytes: 128,
        ..LogConfig::default()
    }
}

fn open(dir: &Path, config: LogConfig) -> Log {
    open_at(dir, config, None)
}

/// A batch of `(key, value)` records; `None` values are tombstones.
fn batch(records: &[(&str, Option<&str>)], timestamp: i64, codec: Compression) -> Vec<u8> {
    let mut b = BatchBuilder::new(0).compression(codec);
    for (i, (key, value)) in records.iter().enumerate() {
        b.push(
            Some(key.as_bytes()),
            value.map(str::as_bytes),
            &[("h", b"x")],
            timestamp + i as i64,
        );
    }
    b.build()
}

fn append(log: &mut Log, bytes: Vec<u8>) -> i64 {
    log.append_as_leader(&bytes, 0, NOW).unwrap().first_offset
}

/// Every batch from the log start, CRC-checked, with its records.
fn read_batches(log: &Log) -> Vec<(RecordBatchHeader, Vec<Read>)> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let slice = log.read(offset, u32::MAX, i64::MAX, true).unwrap();
        if slice.is_empty() {
            break;
        }
        let bytes = slice.read_bytes().unwrap();
        for item in BatchIter::strict(&bytes) {
            let (header, range) = item.unwrap();
            let bytes = &bytes[range];
            assert_eq!(compute_crc(bytes), header.crc(), "CRC at {offset}");
            let decoded = BatchRecords::decode(bytes, RECORDS_UNCOMPRESSED_BYTES_MAX).unwrap();
            let records = decoded
                .records()
                .unwrap()
                .into_iter()
                .map(|r| Read {
                    offset: r.offset,
                    key: r.key.map(<[u8]>::to_vec),
                    value: r.value.map(<[u8]>::to_vec),
                    timestamp: r.timestamp,
                })
                .collect();
            offset = header.next_offset();
            out.push((header, records));
        }
    }
    out
}

fn read_all(log: &Log) -> Vec<Read> {
    read_batches(log).into_iter().flat_map(|(_, r)| r).collect()
}

/// Everything ever appended, by offset, and the latest record per key.
#[derive(Default)]
struct Model {
    appended: BTreeMap<i64, Read>,
    latest: BTreeMap<Key, i64>,
}

impl Model {
    fn append(&mut self, log: &mut Log, records: &[(&str, Option<&str>)], codec: Compression) {
        let first = append(log, batch(records, NOW, codec));
        for (i, (key, value)) in records.iter().enumerate() {
            let offset = first + i as i64;
            self.appended.insert(
                offset,
                Read {
                    offset,
                    key: Some(key.as_bytes().to_vec()),
                    value: value.map(|v| v.as_bytes().to_vec()),
                    timestamp: NOW + i as i64,
                },
            );
            self.latest.insert(key.as_bytes().to_vec(), offset);
        }
    }

    /// The latest record of every key, tombstones included, in offset order.
    fn compacted(&self, keep_tombstones: bool) -> Vec<Read> {
        let mut out: Vec<Read> = self
            .latest
            .values()
            .map(|o| self.appended[o].clone())
            .filter(|r| keep_tombstones || r.value.is_some())
            .collect();
        out.sort_by_key(|r| r.offset);
        out
    }

    /// What any valid state of the log must satisfy, cleaned or not: every
    /// record is the one appended at its offset, and each key's last record
    /// is its latest.
    fn check_valid(&self, log: &Log) {
        let records = read_all(log);
        let mut last: BTreeMap<Key, i64> = BTreeMap::new();
        for r in &records {
            assert_eq!(
                self.appended.get(&r.offset),
                Some(r),
                "record at {}",
                r.offset
            );
            last.insert(r.key.clone().unwrap(), r.offset);
        }
        for (key, &offset) in &self.latest {
            if self.appended[&offset].value.is_some() {
                assert_eq!(last.get(key), Some(&offset), "latest of {key:?}");
            } else {
                // A deleted key may be gone, but never back to an old value.
                assert!(
                    last.get(key).is_none_or(|&o| o == offset),
                    "deleted {key:?}"
                );
            }
        }
    }
}

/// Steps 1-3 with the high watermark at the log end.
fn clean(
    log: &mut Log,
    checkpoint: Option<i64>,
    now_ms: i64,
    config: &CleanerConfig,
) -> CleanOutcome {
    let task = log
        .prepare_clean(checkpoint, log.log_end_offset(), now_ms)
        .expect("something to clean");
    let cleaned = task.clean(config, &Throttler::new(f64::MAX)).unwrap();
    log.install_cleaned(cleaned).unwrap()
}

fn installed(outcome: CleanOutcome) -> CleanerStats {
    match outcome {
        CleanOutcome::Installed(stats, _) => stats,
        CleanOutcome::Aborted { reason } => panic!("aborted: {reason}"),
    }
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".cleaned") || n.ends_with(".swap"))
        .collect()
}

/// 40 keys, each written five times, every seventh write a tombstone.
fn churn(model: &mut Model, log: &mut Log, codec: Compression) {
    for round in 0..5 {
        for chunk in 0..8 {
            let records: Vec<(String, Option<String>)> = (0..5)
                .map(|i| {
                    let k = chunk * 5 + i;
                    let n = round * 40 + k;
                    let value = (n % 7 != 3).then(|| format!("v{round}-{k}"));
                    (format!("key-{k:02}"), value)
                })
                .collect();
            let refs: Vec<(&str, Option<&str>)> = records
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_deref()))
                .collect();
            model.append(log, &refs, codec);
        }
    }
}

#[test]
fn keeps_the_latest_record_of_every_key_at_its_offset() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), compacted());
    let mut model = Model::default();
    churn(&mut model, &mut log, Compression::None);
    log.roll_active().unwrap();
    let segments_before = log.segment_count();
    let size_before = log.size_bytes();

    let stats = installed(clean(&mut log, None, NOW, &CleanerConfig::default()));
    assert_eq!(read_all(&log), model.compacted(true));
    assert_eq!(stats.first_dirty_offset, 0);
    assert_eq!(stats.next_dirty_offset, log.log_end_offset());
    assert_eq!(stats.records_read, 200);
    assert_eq!(stats.records_retained, 40);
    assert_eq!(stats.invalid_records_read, 0);
    assert_eq!(stats.segments_read, segments_before - 1);
    assert!(stats.bytes_written < stats.bytes_read);
    assert!(log.size_bytes() < size_before);
    assert!(leftovers(log.dir()).is_empty());
    // Groups are sized by their input, so full segments are rewritten one
    // by one; the next clean merges what they shrank to.
    assert_eq!(log.segment_count(), segments_before);
    installed(clean(&mut log, None, NOW, &CleanerConfig::default()));
    assert!(log.segment_count() < segments_before);
    assert_eq!(read_all(&log), model.compacted(true));

    // Every offset still reads the first batch ending at or after it.
    let batches = read_batches(&log);
    for o in 0..log.log_end_offset() {
        let slice = log.read(o, 1, i64::MAX, true).unwrap();
        let bytes = slice.read_bytes().unwrap();
        let (h, _) = BatchIter::strict(&bytes).next().unwrap().unwrap();
        let expected = batches.iter().find(|(b, _)| b.last_offset() >= o).unwrap();
        assert_eq!(h, expected.0, "read at {o}");
    }

    // The cleaned log survives both kinds of reopen.
    let log_end = log.log_end_offset();
    log.close().unwrap();
    let log = open(dir.path(), compacted());
    assert_eq!(read_all(&log), model.compacted(true));
    drop(log);
    let log = open_at(dir.path(), compacted(), Some(0));
    assert_eq!(read_all(&log), model.compacted(true));
    assert_eq!(log.log_end_offset(), log_end);
}

#[test]
fn tombstones_go_once_their_delete_horizon_passes() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        delete_retention_ms: 1000,
        ..compacted()
    };
    let mut log = open(dir.path(), config.clone());
    let mut model = Model::default();
    model.append(
        &mut log,
        &[("a", Some("1")), ("b", Some("1"))],
        Compression::None,
    );
    model.append(
        &mut log,
        &[("a", None), ("c", Some("1"))],
        Compression::None,
    );
    log.roll_active().unwrap();
    let cleaner = CleanerConfig::default();

    let first = installed(clean(&mut log, None, NOW, &cleaner));
    assert_eq!(read_all(&log), model.compacted(true));
    let (header, records) = read_batches(&log).pop().unwrap();
    assert_eq!(header.delete_horizon_ms(), Some(NOW + 1000));
    // The horizon replaces the base timestamp; record timestamps stay.
    assert_eq!(records[0].timestamp, NOW);
    assert_eq!(header.last_offset(), 3);

    // Before the horizon another clean keeps the tombstone and its horizon.
    model.append(&mut log, &[("d", Some("1"))], Compression::None);
    log.roll_active().unwrap();
    let second = installed(clean(
        &mut log,
        Some(first.next_dirty_offset),
        NOW + 999,
        &cleaner,
    ));
    assert_eq!(read_all(&log), model.compacted(true));
    assert!(read_batches(&log)
        .iter()
        .any(|(h, r)| h.delete_horizon_ms() == Some(NOW + 1000) && r[0].value.is_none()));

    model.append(&mut log, &[("e", Some("1"))], Compression::None);
    log.roll_active().unwrap();
    installed(clean(
        &mut log,
        Some(second.next_dirty_offset),
        NOW + 1000,
        &cleaner,
    ));
    assert_eq!(read_all(&log), model.compacted(false));
}

#[test]
fn min_compaction_lag_keeps_young_segments_dirty() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        min_compaction_lag_ms: 10_000,
        ..compacted()
    };
    let mut log = open(dir.path(), config);
    for i in 0..10 {
        let b = batch(&[("k", Some("old"))], NOW + i, Compression::None);
        log.append_as_leader(&b, 0, NOW).unwrap();
    }
    log.roll_active().unwrap();
    let young_base = log.log_end_offset();
    for i in 0..10 {
        let b = batch(&[("k", Some("young"))], NOW + 20_000 + i, Compression::None);
        log.append_as_leader(&b, 0, NOW).unwrap();
    }
    log.roll_active().unwrap();

    let dirtiness = log
        .dirtiness(None, log.log_end_offset(), NOW + 25_000)
        .unwrap();
    assert_eq!(dirtiness.first_uncleanable_offset, young_base);
    let stats = installed(clean(
        &mut log,
        None,
        NOW + 25_000,
        &CleanerConfig::default(),
    ));
    assert_eq!(stats.next_dirty_offset, young_base);
    let offsets: Vec<i64> = read_all(&log).iter().map(|r| r.offset).collect();
    // The old segment keeps only its last batch (superseded, but the
    // young segment was not mapped); the young one is untouched.
    assert_eq!(offsets, vec![9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]);

    // Once old enough, the young segment is cleaned too.
    let stats = installed(clean(
        &mut log,
        Some(young_base),
        NOW + 40_000,
        &CleanerConfig::default(),
    ));
    assert_eq!(stats.next_dirty_offset, log.log_end_offset());
    let offsets: Vec<i64> = read_all(&log).iter().map(|r| r.offset).collect();
    assert_eq!(offsets, vec![19]);
}

#[test]
fn a_full_offset_map_cleans_in_passes_that_converge() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), compacted());
    let mut model = Model::default();
    churn(&mut model, &mut log, Compression::None);
    log.roll_active().unwrap();
    let tiny = CleanerConfig {
        // 30 slots, 27 keys under the load factor: fewer than the 40 keys.
        dedupe_buffer_bytes: 30 * offset_map::ENTRY_BYTES as u64,
        ..CleanerConfig::default()
    };
    let mut checkpoint = None;
    let mut passes = 0;
    loop {
        let Some(task) = log.prepare_clean(checkpoint, log.log_end_offset(), NOW) else {
            break;
        };
        let stats = installed(
            log.install_cleaned(task.clean(&tiny, &Throttler::new(f64::MAX)).unwrap())
                .unwrap(),
        );
        assert!(
            stats.next_dirty_offset > checkpoint.unwrap_or(0),
            "progress"
        );
        assert!(stats.map_utilization <= 0.9 + 1e-9);
        model.check_valid(&log);
        checkpoint = Some(stats.next_dirty_offset);
        passes += 1;
    }
    assert!(passes >= 3, "{passes} passes");
    assert_eq!(checkpoint, Some(log.log_end_offset()));
    // Later passes only saw later keys; a pass from the start finishes it.
    installed(clean(&mut log, None, NOW, &CleanerConfig::default()));
    assert_eq!(read_all(&log), model.compacted(true));
}

#[test]
fn compressed_batches_are_cleaned_with_their_codec() {
    for codec in [
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), compacted());
        let mut model = Model::default();
        churn(&mut model, &mut log, codec);
        log.roll_active().unwrap();
        installed(clean(&mut log, None, NOW, &CleanerConfig::default()));
        assert_eq!(read_all(&log), model.compacted(true), "{codec:?}");
        for (header, records) in read_batches(&log) {
            if !records.is_empty() {
                assert_eq!(header.compression(), codec);
            }
        }
    }
}

#[test]
fn rebuilt_batches_keep_header_fields_and_log_append_time() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        message_timestamp_type: TimestampType::LogAppendTime,
        ..compacted()
    };
    let mut log = open(dir.path(), config);
    let b = batch(
        &[("a", Some("1")), ("b", Some("1")), ("a", Some("2"))],
        5,
        Compression::Zstd,
    );
    log.append_as_leader(&b, 7, NOW).unwrap();
    log.roll_active().unwrap();
    let epochs = log.leader_epoch_cache().clone();
    installed(clean(
        &mut log,
        None,
        NOW + DAY_MS,
        &CleanerConfig::default(),
    ));
    assert_eq!(log.leader_epoch_cache(), &epochs);
    let batches = read_batches(&log);
    assert_eq!(batches.len(), 1);
    let (h, records) = &batches[0];
    assert_eq!(
        (h.base_offset(), h.last_offset(), h.record_count()),
        (0, 2, 2)
    );
    assert_eq!(h.partition_leader_epoch(), 7);
    assert_eq!(h.timestamp_type(), TimestampType::LogAppendTime);
    assert_eq!(h.max_timestamp(), NOW);
    assert_eq!(h.compression(), Compression::Zstd);
    let got: Vec<(i64, i64)> = records.iter().map(|r| (r.offset, r.timestamp)).collect();
    assert_eq!(got, vec![(1, NOW), (2, NOW)]);
}

#[test]
fn small_segments_merge_within_segment_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 500,
        ..compacted()
    };
    let mut log = open(dir.path(), config.clone());
    let mut model = Model::default();
    for i in 0..30 {
        let key = format!("key-{i:02}");
        model.append(
            &mut log,
            &[(&key, Some("value-value-value"))],
            Compression::None,
        );
        log.roll_active().unwrap();
    }
    assert_eq!(log.segment_count(), 31);
    let per_segment = log.segments().values().next().unwrap().size();
    installed(clean(&mut log, None, NOW, &CleanerConfig::default()));
    assert_eq!(read_all(&log), model.compacted(true));
    let per_group = (500 / per_segment) as usize;
    assert!(per_group > 1 && per_group < 30);
    assert_eq!(log.segment_count() - 1, 30usize.div_ceil(per_group));
    for seg in log.segments().values() {
        assert!(seg.size() <= 500);
    }
    // Groups start at the first replaced segment's base.
    let bases: Vec<i64> = log.segments().keys().copied().collect();
    let expected: Vec<i64> = (0..30).step_by(per_group).chain([30]).collect();
    assert_eq!(bases, expected);
    // The merged segments' indexes serve offset and time lookups, and are
    // the ones a clean reopen trusts.
    assert_eq!(log.fetch_offset_by_timestamp(NOW).unwrap(), Some((0, NOW)));
    assert_eq!(log.read(17, 1, i64::MAX, true).unwrap().first_offset(), 17);
    log.close().unwrap();
    let index = dir
        .path()
        .join("t-0")
        .join(crate::segment::file_name(0, ".index"));
    let written = std::fs::read(&index).unwrap();
    let log = open(dir.path(), config);
    assert_eq!(std::fs::read(&index).unwrap(), written);
    assert_eq!(read_all(&log), model.compacted(true));
}

#[test]
fn control_batches_stay_and_transactional_batches_are_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), compacted());
    let mut txn = BatchBuilder::new(0).producer(9, 0, 0).transactional(true);
    txn.push(Some(b"a"), Some(b"1"), &[], NOW);
    txn.push(Some(b"b"), Some(b"1"), &[], NOW);
    let mut marker = BatchBuilder::new(2)
        .producer(9, 0, -1)
        .transactional(true)
        .control(true);
    // A COMMIT marker: key (version 0, type 1), value (version 0, coordinator epoch 0).
    marker.push(Some(&[0, 0, 0, 1]), Some(&[0, 0, 0, 0, 0, 0]), &[], NOW);
    let mut shipped = txn.build();
    shipped.extend(marker.build());
    log.append_as_follower(&shipped).unwrap();
    append(&mut log, batch(&[("a", Some("2"))], NOW, Compression::None));
    log.roll_active().unwrap();
    installed(clean(&mut log, None, NOW, &CleanerConfig::default()));
    let batches: Vec<(i64, bool, bool, Vec<i64>)> = read_batches(&log)
        .into_iter()
        .map(|(h, r)| {
            (
                h.base_offset(),
                h.is_transactional(),
                h.is_control(),
                r.iter().map(|r| r.offset).collect(),
            )
        })
        .collect();
    assert_eq!(
        batches,
        vec![
            (0, true, false, vec![1]),
            (2, true, true, vec![2]),
            (3, false, false, vec![3]),
        ]
    );
}

#[test]
fn a_producers_last_batch_survives_as_an_empty_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), compacted());
    let producer = |seq: i32, key: &str| {
        let mut b = BatchBuilder::new(0).producer(42, 3, seq);
        b.push(Some(key.as_bytes()), Some(b"p"), &[], NOW);
        b.push(Some(key.as_bytes()), Some(b"q"), &[], NOW);
        b.build()
    };
    append(&mut log, producer(0, "a"));
    append(&mut log, producer(2, "b"));
    // Plain writes supersede everything the producer wrote.
    append(
        &mut log,
        batch(
            &[("a", Some("x")), ("b", Some("y"))],
            NOW,
            Compression::None,
        ),
    );
    append(&mut log, batch(&[("z", Some("z"))], NOW, Compression::None));
    log.roll_active().unwrap();
    let producer_before = log.producer_state(42).cloned();
    installed(clean(&mut log, None, NOW, &CleanerConfig::default()));
    assert_eq!(log.producer_state(42).cloned(), producer_before);

    // Fetches skip the emptied batch; the segment file keeps it.
    let read: Vec<i64> = read_batches(&log)
        .iter()
        .map(|(h, _)| h.base_offset())
        .collect();
    assert_eq!(read, vec![4, 6]);
    let file = std::fs::read(log.dir().join("00000000000000000000.log")).unwrap();
    let stored: Vec<RecordBatchHeader> = BatchIter::strict(&file)
        .map(|item| item.unwrap().0)
        .collect();
    let kept: Vec<(i64, i64, i32)> = stored
        .iter()
        .map(|h| (h.base_offset(), h.producer_id(), h.record_count()))
        .collect();
    assert_eq!(kept, vec![(2, 42, 0), (4, -1, 2), (6, -1, 1)]);
    let empty = &stored[0];
    assert_eq!(
        (
            empty.base_sequence(),
            empty.last_sequence(),
            empty.last_offset()
        ),
        (2, 3, 3)
    );

    // Reopened from scratch, the producer's sequence state is intact.
    drop(log);
    for snapshot in crate::producer_state::list_snapshots(&dir.path().join("t-0")).unwrap() {
        crate::producer_state::remove_if_exists(&crate::producer_state::snapshot_path(
            &dir.path().join("t-0"),
            snapshot,
        ))
        .unwrap();
    }
    let mut log = open_at(dir.path(), compacted(), Some(0));
    let entry = log.producer_state(42).unwrap();
    assert_eq!(entry.batches.back().unwrap().last_seq, 3);
    let dup = log.append_as_leader(&producer(2, "b"), 0, NOW).unwrap();
    assert!(dup.duplicate);
    assert_eq!(dup.first_offset, 2);
    assert!(
        !log.append_as_leader(&producer(4, "c"), 0, NOW)
            .unwrap()
            .duplicate
    );
}

/// A log of several groups of several segments, closed so that copies of
/// its directory open without recovery.
fn crash_fixture(dir: &Path) -> Model {
    let mut log = open(dir, compacted());
    let mut model = Model::default();
    for round in 0..3 {
        for k in 0..12 {
            let key = format!("k{k}");
            let value = format!("r{round}");
            model.append(&mut log, &[(&key, Some(&value))], Compression::None);
            if k % 2 == 1 {
                log.roll_active().unwrap();
            }
        }
    }
    log.close().unwrap();
    model
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// What `install_cleaned` runs, group after group.
fn all_swap_steps(log: &Log, cleaned: &CleanedLog) -> Vec<SwapStep> {
    cleaned
        .groups
        .iter()
        .flat_map(|g| {
            let replaced: Vec<i64> = g.replaced.iter().map(|s| s.base_offset).collect();
            swap_steps(log.dir(), g.base_offset(), &replaced)
        })
        .collect()
}

#[test]
fn a_crash_at_any_swap_step_loses_nothing() {
    let template = tempfile::tempdir().unwrap();
    let model = crash_fixture(template.path());
    let mut steps = None;
    let mut previous_records = usize::MAX;
    let mut crash_after = 0;
    while steps.is_none_or(|n| crash_after <= n) {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&template.path().join("t-0"), &dir.path().join("t-0"));
        let log = open(dir.path(), compacted());
        let cleaned = log
            .prepare_clean(None, log.log_end_offset(), NOW)
            .unwrap()
            .clean(&CleanerConfig::default(), &Throttler::new(f64::MAX))
            .unwrap();
        assert!(cleaned.groups.len() >= 3, "{} groups", cleaned.groups.len());
        assert!(cleaned.groups.iter().any(|g| g.replaced.len() > 1));
        let all = all_swap_steps(&log, &cleaned);
        steps = Some(all.len());
        for step in &all[..crash_after] {
            step.run().unwrap();
        }
        // A crash: nothing else runs, not even destructors.
        std::mem::forget(cleaned);
        let log_end = log.log_end_offset();
        drop(log);

        let log = open_at(dir.path(), compacted(), Some(log_end));
        model.check_valid(&log);
        assert!(leftovers(log.dir()).is_empty(), "after {crash_after} steps");
        // Once a group's `.log.swap` exists its swap completes on open, so
        // each step leaves the log as clean as the one before, or cleaner.
        let records = read_all(&log).len();
        assert!(records <= previous_records, "after {crash_after} steps");
        previous_records = records;
        if crash_after == 0 {
            assert_eq!(records, model.appended.len());
        }
        crash_after += 1;
    }
    assert_eq!(previous_records, model.compacted(true).len());
}

/// A compacted log whose closed segments hold an aborted transaction
/// rewriting `a` and `b`, and a transaction of producer 2 still open
/// rewriting `c`, closed so that copies of its directory open cleanly.
fn txn_fixture(dir: &Path) -> Log {
    let mut log = open(dir, compacted());
    let txn = |pid: i64, records: &[(&str, &str)]| {
        let mut b = BatchBuilder::new(0).producer(pid, 0, 0).transactional(true);
        for (k, v) in records {
            b.push(Some(k.as_bytes()), Some(v.as_bytes()), &[], NOW);
        }
        b.build()
    };
    append(
        &mut log,
        batch(
            &[("a", Some("1")), ("b", Some("1"))],
            NOW,
            Compression::None,
        ),
    ); // 0, 1
    log.roll_active().unwrap();
    append(&mut log, txn(1, &[("a", "x"), ("b", "x")])); // 2, 3
    log.append_marker(1, 0, ControlRecordType::Abort, 0, 0, NOW)
        .unwrap(); // 4
    log.roll_active().unwrap();
    append(&mut log, batch(&[("c", Some("1"))], NOW, Compression::None)); // 5
    log.roll_active().unwrap();
    append(&mut log, txn(2, &[("c", "y")])); // 6
    log.roll_active().unwrap();
    append(&mut log, batch(&[("a", Some("2"))], NOW, Compression::None)); // 7
    log.roll_active().unwrap();
    append(&mut log, batch(&[("z", Some("z"))], NOW, Compression::None)); // 8
    log.close().unwrap();
    open(dir, compacted())
}

/// (offset, key, value) of every data record a fetch returns.
fn data_records(log: &Log) -> Vec<(i64, String, String)> {
    read_batches(log)
        .into_iter()
        .filter(|(h, _)| !h.is_control())
        .flat_map(|(_, records)| records)
        .map(|r| {
            let text = |b: Option<Vec<u8>>| String::from_utf8(b.unwrap()).unwrap();
            (r.offset, text(r.key), text(r.value))
        })
        .collect()
}

fn owned(records: &[(i64, &str, &str)]) -> Vec<(i64, String, String)> {
    records
        .iter()
        .map(|&(o, k, v)| (o, k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn cleaning_stops_at_the_first_unstable_offset_and_drops_aborted_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = txn_fixture(dir.path());
    let aborted = vec![AbortedTxn {
        producer_id: 1,
        first_offset: 2,
        last_offset: 4,
        last_stable_offset: 5,
    }];
    assert_eq!(log.aborted_transactions(0, 9).unwrap(), aborted);
    assert_eq!(log.first_unstable_offset(), Some(6));
    let dirtiness = log.dirtiness(None, log.log_end_offset(), NOW).unwrap();
    assert_eq!(dirtiness.first_uncleanable_offset, 6);
    let stats = installed(clean(&mut log, None, NOW, &CleanerConfig::default()));
    assert_eq!(stats.next_dirty_offset, 6);

    // The aborted writes neither survive nor supersede the committed ones;
    // the open transaction's segment and everything after it is untouched.
    let expected = owned(&[
        (0, "a", "1"),
        (1, "b", "1"),
        (5, "c", "1"),
        (6, "c", "y"),
        (7, "a", "2"),
        (8, "z", "z"),
    ]);
    assert_eq!(data_records(&log), expected);
    let markers: Vec<i64> = read_batches(&log)
        .iter()
        .filter(|(h, _)| h.is_control())
        .map(|(h, _)| h.base_offset())
        .collect();
    assert_eq!(markers, vec![4]);
    // The cleaned segment took the replaced segments' index entries.
    assert_eq!(log.aborted_transactions(0, 9).unwrap(), aborted);
    assert!(leftovers(log.dir()).is_empty());
    for recover in [None, Some(0)] {
        drop(log);
        log = open_at(dir.path(), compacted(), recover);
        assert_eq!(log.aborted_transactions(0, 9).unwrap(), aborted);
        assert_eq!(data_records(&log), expected);
    }

    // Once the open transaction commits, its records count like any other.
    log.append_marker(2, 0, ControlRecordType::Commit, 0, 0, NOW)
        .unwrap();
    log.roll_active().unwrap();
    installed(clean(&mut log, Some(6), NOW, &CleanerConfig::default()));
    assert_eq!(
        data_records(&log),
        owned(&[(1, "b", "1"), (6, "c", "y"), (7, "a", "2"), (8, "z", "z")])
    );
    assert_eq!(log.aborted_transactions(0, 10).unwrap(), aborted);
}

/// Base offset, whether it holds a record, and delete horizon of every
/// control batch.
fn markers(log: &Log) -> Vec<(i64, bool, Option<i64>)> {
    read_batches(log)
        .iter()
        .filter(|(h, _)| h.is_control())
        .map(|(h, r)| (h.base_offset(), !r.is_empty(), h.delete_horizon_ms()))
        .collect()
}

#[test]
fn markers_go_once_their_data_is_gone_and_a_delete_horizon_passes() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        delete_retention_ms: 1000,
        ..compacted()
    };
    let mut log = open(dir.path(), config.clone());
    let txn = |seq: i32, key: &str| {
        let mut b = BatchBuilder::new(0).producer(7, 0, seq).transactional(true);
        b.push(Some(key.as_bytes()), Some(b"t"), &[], NOW);
        b.build()
    };
    let marker = |log: &mut Log, pid: i64, epoch: i16, kind: ControlRecordType| {
        log.append_marker(pid, epoch, kind, 0, 0, NOW).unwrap();
    };
    append(&mut log, txn(0, "a")); // 0
    marker(&mut log, 7, 0, ControlRecordType::Commit); // 1
    append(&mut log, txn(1, "b")); // 2
    marker(&mut log, 7, 0, ControlRecordType::Abort); // 3
    append(&mut log, txn(2, "c")); // 4: producer 7's last data batch
    marker(&mut log, 7, 0, ControlRecordType::Commit); // 5
                                                       // Producer 8's transaction reached this partition only as the
                                                       // coordinator's abort: its marker is all there is of its epoch.
    marker(&mut log, 8, 1, ControlRecordType::Abort); // 6
    append(&mut log, batch(&[("a", Some("2"))], NOW, Compression::None)); // 7
    log.roll_active().unwrap();
    append(&mut log, batch(&[("z", Some("z"))], NOW, Compression::None)); // 8
    let abort_of_7 = AbortedTxn {
        producer_id: 7,
        first_offset: 2,
        last_offset: 3,
        last_stable_offset: 4,
    };
    assert_eq!(log.aborted_transactions(0, 9).unwrap(), vec![abort_of_7]);

    // The first clean removes the superseded and the aborted data; the
    // markers of those transactions met their batches, so they stay.
    installed(clean(&mut log, None, NOW, &CleanerConfig::default()));
    assert_eq!(
        data_records(&log),
        owned(&[(4, "c", "t"), (7, "a", "2"), (8, "z", "z")])
    );
    assert_eq!(
        markers(&log),
        vec![
            (1, true, None),
            (3, true, None),
            (5, true, None),
            (6, true, Some(NOW + 1000))
        ]
    );
    assert_eq!(log.aborted_transactions(0, 9).unwrap(), vec![abort_of_7]);

    // The next finds them guarding nothing and stamps their horizon;
    // producer 7's last transaction still has its batch.
    installed(clean(&mut log, None, NOW + 10, &CleanerConfig::default()));
    let stamped = vec![
        (1, true, Some(NOW + 1010)),
        (3, true, Some(NOW + 1010)),
        (5, true, None),
        (6, true, Some(NOW + 1000)),
    ];
    assert_eq!(markers(&log), stamped);
    installed(clean(&mut log, None, NOW + 999, &CleanerConfig::default()));
    assert_eq!(markers(&log), stamped);

    // Past its horizon producer 8's marker is emptied, not removed: it
    // holds the epoch that fences the producer's older instances.
    installed(clean(&mut log, None, NOW + 1000, &CleanerConfig::default()));
    let expected = vec![
        (1, true, Some(NOW + 1010)),
        (3, true, Some(NOW + 1010)),
        (5, true, None),
        (6, false, None),
    ];
    assert_eq!(markers(&log), expected);
    installed(clean(&mut log, None, NOW + 1010, &CleanerConfig::default()));
    let expected = vec![(5, true, None), (6, false, None)];
    assert_eq!(markers(&log), expected);
    // The abort marker took its transaction index entry with it.
    assert!(log.aborted_transactions(0, 9).unwrap().is_empty());
    let data = owned(&[(4, "c", "t"), (7, "a", "2"), (8, "z", "z")]);
    assert_eq!(data_records(&log), data);
    for recover in [None, Some(0)] {
        drop(log);
        log = open_at(dir.path(), config.clone(), recover);
        assert_eq!(markers(&log), expected);
        assert_eq!(data_records(&log), data);
        assert!(log.aborted_transactions(0, 9).unwrap().is_empty());
        assert_eq!(log.first_unstable_offset(), None);
    }
}

#[test]
fn a_crash_at_any_swap_step_keeps_the_aborted_transactions() {
    let template = tempfile::tempdir().unwrap();
    let fixture = txn_fixture(template.path());
    let aborted = fixture.aborted_transactions(0, 9).unwrap();
    assert_eq!(aborted.len(), 1);
    drop(fixture);
    let mut crash_after = 0;
    loop {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&template.path().join("t-0"), &dir.path().join("t-0"));
        let log = open(dir.path(), compacted());
        let cleaned = log
            .prepare_clean(None, log.log_end_offset(), NOW)
            .unwrap()
            .clean(&CleanerConfig::default(), &Throttler::new(f64::MAX))
            .unwrap();
        let all = all_swap_steps(&log, &cleaned);
        for step in &all[..crash_after] {
            step.run().unwrap();
        }
        std::mem::forget(cleaned);
        let log_end = log.log_end_offset();
        drop(log);
        let log = open_at(dir.path(), compacted(), Some(log_end));
        assert_eq!(
            log.aborted_transactions(0, log_end).unwrap(),
            aborted,
            "after {crash_after} steps"
        );
        assert_eq!(log.first_unstable_offset(), Some(6));
        if crash_after == all.len() {
            break;
        }
        crash_after += 1;
    }
}

#[test]
fn appends_and_reads_go_on_while_cleaning() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), compacted());
    let mut model = Model::default();
    churn(&mut model, &mut log, Compression::None);
    log.roll_active().unwrap();
    let cleaned_end = log.log_end_offset();
    let task = log.prepare_clean(None, log.log_end_offset(), NOW).unwrap();
    let before = log.read(0, u32::MAX, i64::MAX, true).unwrap();
    let before_bytes = before.read_bytes().unwrap();

    // Appends (and their rolls) while step 2 would run on another thread.
    churn(&mut model, &mut log, Compression::Lz4);
    let cleaned = task
        .clean(&CleanerConfig::default(), &Throttler::new(f64::MAX))
        .unwrap();
    churn(&mut model, &mut log, Compression::None);
    let stats = installed(log.install_cleaned(cleaned).unwrap());
    assert_eq!(stats.next_dirty_offset, cleaned_end);
    model.check_valid(&log);
    assert!(read_all(&log).len() < model.appended.len());
    // A read located before the swap still reads the old bytes.
    assert_eq!(before.read_bytes().unwrap(), before_bytes);

    log.roll_active().unwrap();
    installed(clean(
        &mut log,
        Some(cleaned_end),
        NOW,
        &CleanerConfig::default(),
    ));
    assert_eq!(read_all(&log), model.compacted(true));
}

#[test]
fn install_aborts_when_retention_or_truncation_changed_a_segment() {
    let config = LogConfig {
        cleanup_policy: CleanupPolicy {
            delete: true,
            compact: true,
        },
        retention_bytes: 4000,
        ..compacted()
    };
    for truncate in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), config.clone());
        let mut model = Model::default();
        churn(&mut model, &mut log, Compression::None);
        log.roll_active().unwrap();
        let task = log.prepare_clean(None, log.log_end_offset(), NOW).unwrap();
        let cleaned = task
            .clean(&CleanerConfig::default(), &Throttler::new(f64::MAX))
            .unwrap();
        if truncate {
            let last_closed = *log.segments().keys().rev().nth(1).unwrap();
            log.truncate_to(last_closed + 1).unwrap();
        } else {
            assert!(log.delete_old_segments(NOW).unwrap() > 0);
        }
        let records = read_all(&log);
        assert!(matches!(
            log.install_cleaned(cleaned).unwrap(),
            CleanOutcome::Aborted { .. }
        ));
        assert_eq!(read_all(&log), records);
        assert!(leftovers(log.dir()).is_empty());
        // The flag is free again: the next clean starts over.
        assert!(log.prepare_clean(None, log.log_end_offset(), NOW).is_some());
    }
}

#[test]
fn one_clean_at_a_time_and_abandoned_cleans_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), compacted());
    let mut model = Model::default();
    churn(&mut model, &mut log, Compression::None);
    log.roll_active().unwrap();
    let task = log.prepare_clean(None, log.log_end_offset(), NOW).unwrap();
    assert!(log.prepare_clean(None, log.log_end_offset(), NOW).is_none());
    let cleaned = task
        .clean(&CleanerConfig::default(), &Throttler::new(f64::MAX))
        .unwrap();
    assert!(!leftovers(log.dir()).is_empty());
    assert!(log.prepare_clean(None, log.log_end_offset(), NOW).is_none());
    drop(cleaned);
    assert!(leftovers(log.dir()).is_empty());
    assert!(log.prepare_clean(None, log.log_end_offset(), NOW).is_some());
    // Nothing dirty, or not compacted: nothing to do.
    assert!(log
        .prepare_clean(Some(log.log_end_offset()), log.log_end_offset(), NOW)
        .is_none());
    log.update_config(LogConfig::default());
    assert!(log.prepare_clean(None, log.log_end_offset(), NOW).is_none());
    assert!(log.dirtiness(None, log.log_end_offset(), NOW).is_none());
}

#[test]
fn compacted_logs_reject_records_without_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), compacted());
    for codec in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let mut b = BatchBuilder::new(0).compression(codec);
        b.push(Some(b"k"), Some(b"v"), &[], NOW);
        b.push(None, Some(b"v"), &[], NOW);
        let bytes = b.build();
        assert!(matches!(
            log.append_as_leader(&bytes, 0, NOW),
            Err(StorageError::InvalidRecord(_))
        ));
    }
    assert_eq!(log.log_end_offset(), 0);
    assert_eq!(log.size_bytes(), 0);
    let keyed = batch(&[("k", None)], NOW, Compression::Snappy);
    log.append_as_leader(&keyed, 0, NOW).unwrap();

    let mut plain = open(&dir.path().join("plain"), LogConfig::default());
    let mut b = BatchBuilder::new(0);
    b.push(None, Some(b"v"), &[], NOW);
    plain.append_as_leader(&b.build(), 0, NOW).unwrap();
}

#[test]
fn retention_applies_only_with_the_delete_policy() {
    for (policy, deletes) in [
        (CleanupPolicy::COMPACT, false),
        (CleanupPolicy::DELETE, true),
        (
            CleanupPolicy {
                delete: true,
                compact: true,
            },
            true,
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            cleanup_policy: policy,
            retention_ms: 1000,
            retention_bytes: 100,
            ..compacted()
        };
        let mut log = open(dir.path(), config);
        for _ in 0..10 {
            append(
                &mut log,
                batch(
                    &[("k", Some("vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv"))],
                    NOW,
                    Compression::None,
                ),
            );
            log.roll_active().unwrap();
        }
        let deleted = log.delete_old_segments(NOW + DAY_MS).unwrap();
        assert_eq!(deleted > 0, deletes, "{policy:?}");
    }
}

#[test]
fn dirtiness_picks_the_filthiest_log_and_overdue_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), compacted());
    let mut model = Model::default();
    churn(&mut model, &mut log, Compression::None);
    log.roll_active().unwrap();
    let fresh = log.dirtiness(None, log.log_end_offset(), NOW).unwrap();
    assert_eq!(fresh.clean_bytes, 0);
    assert_eq!(fresh.cleanable_bytes, log.size_bytes());
    assert_eq!(fresh.cleanable_ratio(), 1.0);
    assert!(fresh.is_cleanable());
    // The high watermark holds the cleanable section back to its segment.
    let held = log.dirtiness(None, 3, NOW).unwrap();
    assert_eq!(
        (held.first_uncleanable_offset, held.cleanable_bytes),
        (0, 0)
    );
    assert!(!held.is_cleanable());

    let stats = installed(clean(&mut log, None, NOW, &CleanerConfig::default()));
    churn(&mut model, &mut log, Compression::None);
    log.roll_active().unwrap();
    let checkpoint = Some(stats.next_dirty_offset);
    let dirty = log
        .dirtiness(checkpoint, log.log_end_offset(), NOW)
        .unwrap();
    assert!(dirty.clean_bytes > 0);
    assert!(dirty.cleanable_ratio() > 0.5 && dirty.cleanable_ratio() < 1.0);
    // A checkpoint past the log end is reset to the log start.
    let reset = log
        .dirtiness(Some(1 << 40), log.log_end_offset(), NOW)
        .unwrap();
    assert_eq!(reset.first_dirty_offset, 0);

    let at = |ratio: f64, delay: i64| LogDirtiness {
        first_dirty_offset: 0,
        first_uncleanable_offset: 10,
        clean_bytes: ((1.0 - ratio) * 1000.0) as u64,
        cleanable_bytes: (ratio * 1000.0) as u64,
        max_compaction_delay_ms: delay,
        min_cleanable_dirty_ratio: 0.5,
    };
    let picked = filthiest_log([("a", at(0.6, 0)), ("b", at(0.8, 0)), ("c", at(0.5, 0))]);
    assert_eq!(picked.map(|(k, _)| k), Some("b"));
    assert_eq!(filthiest_log([("a", at(0.2, 0)), ("b", at(0.5, 0))]), None);
    let overdue = filthiest_log([("a", at(0.2, 1)), ("b", at(0.4, 0))]);
    assert_eq!(overdue.map(|(k, _)| k), Some("a"));

    // max.compaction.lag.ms: a dirty batch older than the lag is overdue.
    let lagged = LogConfig {
        max_compaction_lag_ms: 1000,
        ..compacted()
    };
    log.update_config(lagged);
    let late = log
        .dirtiness(checkpoint, log.log_end_offset(), NOW + 5000)
        .unwrap();
    // The oldest dirty batch's max timestamp is NOW + 4.
    assert_eq!(late.max_compaction_delay_ms, 3996);
    let early = log
        .dirtiness(checkpoint, log.log_end_offset(), NOW + 500)
        .unwrap();
    assert_eq!(early.max_compaction_delay_ms, 0);
}

#[test]
fn cleaner_checkpoint_round_trips_in_the_log_dir() {
    let dir = tempfile::tempdir().unwrap();
    let mgr = LogManager::open(dir.path().to_path_buf()).unwrap();
    assert!(mgr.read_cleaner_checkpoint().unwrap().is_empty());
    let offsets: BTreeMap<_, _> = [
        (
            keel_types::TopicPartition::new("__consumer_offsets", 3),
            1234,
        ),
        (keel_types::TopicPartition::new("users", 0), 0),
    ]
    .into();
    mgr.write_cleaner_checkpoint(&offsets).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join(crate::CLEANER_OFFSET_CHECKPOINT)).unwrap(),
        "0\n2\n__consumer_offsets 3 1234\nusers 0 0\n"
    );
    assert_eq!(mgr.read_cleaner_checkpoint().unwrap(), offsets);
}

#[derive(Clone, Debug)]
enum Op {
    Append(Vec<(u8, bool)>, u8),
    Roll,
    Clean(i64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (prop::collection::vec((0u8..12, prop::bool::weighted(0.8)), 1..6), 0u8..5)
            .prop_map(|(records, codec)| Op::Append(records, codec)),
        2 => Just(Op::Roll),
        2 => (0i64..3000).prop_map(Op::Clean),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Any interleaving of appends (any codec, tombstones), rolls and
    /// cleans leaves a log that a model of the latest values agrees with,
    /// and a final clean past every horizon leaves exactly the live keys.
    #[test]
    fn cleaning_agrees_with_a_model(ops in prop::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig { segment_bytes: 600, delete_retention_ms: 1000, ..compacted() };
        let mut log = open(dir.path(), config);
        let mut model = Model::default();
        let tiny = CleanerConfig { dedupe_buffer_bytes: 10 * offset_map::ENTRY_BYTES as u64, ..CleanerConfig::default() };
        let mut checkpoints: HashMap<&str, i64> = HashMap::new();
        let codecs = [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd];
        for op in ops {
            match op {
                Op::Append(records, codec) => {
                    let owned: Vec<(String, Option<String>)> = records
                        .iter()
                        .map(|&(k, live)| (format!("key{k}"), live.then(|| format!("v{}", model.appended.len()))))
                        .collect();
                    let refs: Vec<(&str, Option<&str>)> =
                        owned.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
                    model.append(&mut log, &refs, codecs[codec as usize]);
                }
                Op::Roll => {
                    if log.segments().values().next_back().unwrap().size() > 0 {
                        log.roll_active().unwrap();
                    }
                }
                Op::Clean(at) => {
                    let checkpoint = checkpoints.get("t").copied();
                    if let Some(task) = log.prepare_clean(checkpoint, log.log_end_offset(), NOW + at) {
                        let cleaned = task.clean(&tiny, &Throttler::new(f64::MAX)).unwrap();
                        let stats = installed(log.install_cleaned(cleaned).unwrap());
                        checkpoints.insert("t", stats.next_dirty_offset);
                    }
                }
            }
            model.check_valid(&log);
        }
        if log.segments().values().next_back().unwrap().size() > 0 {
            log.roll_active().unwrap();
        }
        // Two passes from the start: the first stamps any unstamped
        // tombstones, the second is past every horizon.
        for at in [NOW + 3000, NOW + 10_000] {
            if let Some(task) = log.prepare_clean(None, log.log_end_offset(), at) {
                installed(log.install_cleaned(task.clean(&CleanerConfig::default(), &Throttler::new(f64::MAX)).unwrap()).unwrap());
            }
        }
        prop_assert_eq!(read_all(&log), model.compacted(false));
        drop(log);
        let log = open_at(dir.path(), LogConfig { segment_bytes: 600, ..compacted() }, Some(0));
        prop_assert_eq!(read_all(&log), model.compacted(false));
    }
}
