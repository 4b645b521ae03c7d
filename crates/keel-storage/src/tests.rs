//! Tests of `Log` and `LogManager` against real files in temporary dirs.

use std::path::Path;

use proptest::prelude::*;

use crate::batch::{field, BatchBuilder, BatchIter, RecordBatchHeader};
use crate::segment::file_name;
use crate::*;

pub(crate) const DAY_MS: i64 = 24 * 60 * 60 * 1000;
pub(crate) const NOW: i64 = 1_700_000_000_000;

fn batch_with(records: usize, ts: i64, value_len: usize) -> Vec<u8> {
    let mut b = BatchBuilder::new(0);
    let value = vec![b'x'; value_len];
    for i in 0..records {
        b.push(
            Some(format!("k{i}").as_bytes()),
            Some(&value),
            &[],
            ts + i as i64,
        );
    }
    b.build()
}

fn idempotent(pid: i64, epoch: i16, seq: i32, records: usize) -> Vec<u8> {
    let mut b = BatchBuilder::new(0).producer(pid, epoch, seq);
    for _ in 0..records {
        b.push(None, Some(b"v"), &[], NOW);
    }
    b.build()
}

pub(crate) fn open(dir: &Path, config: LogConfig, recover_from: Option<i64>) -> Log {
    Log::open(
        dir.join("t-0"),
        "topic-id",
        config,
        recover_from,
        7 * DAY_MS,
        NOW,
    )
    .unwrap()
}

fn append(log: &mut Log, bytes: Vec<u8>) -> LogAppendResult {
    log.append_as_leader(&bytes, 0, NOW).unwrap()
}

/// Appends `batch` `n` times; each gets its own offsets on append.
fn append_copies(log: &mut Log, n: usize, batch: &[u8]) {
    for _ in 0..n {
        log.append_as_leader(batch, 0, NOW).unwrap();
    }
}

/// Reads everything from `offset` and returns the batch headers.
fn read_headers(log: &Log, offset: i64, max_bytes: u32) -> Vec<RecordBatchHeader> {
    let slice = log.read(offset, max_bytes, i64::MAX, true).unwrap();
    let bytes = slice.read_bytes().unwrap();
    BatchIter::strict(&bytes)
        .map(|r| {
            let (h, range) = r.unwrap();
            validate_batch(&bytes[range]).unwrap();
            h
        })
        .collect()
}

/// Every batch the log holds, as its segment files store them.
fn stored_bytes(log: &Log) -> Vec<u8> {
    log.segments()
        .values()
        .flat_map(|segment| std::fs::read(segment.log_path()).unwrap())
        .collect()
}

fn small_segments() -> LogConfig {
    LogConfig {
        segment_bytes: 1000,
        index_interval_bytes: 128,
        ..LogConfig::default()
    }
}

#[test]
fn append_read_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig::default(), None);
    let mut two = batch_with(2, NOW, 10);
    two.extend(batch_with(3, NOW, 10));
    let r = log.append_as_leader(&two, 4, NOW).unwrap();
    assert_eq!((r.first_offset, r.last_offset, r.record_count), (0, 4, 5));
    assert_eq!(r.log_append_time, -1);
    assert!(!r.duplicate);
    let r = append(&mut log, batch_with(1, NOW, 10));
    assert_eq!((r.first_offset, r.last_offset), (5, 5));
    assert_eq!(log.log_end_offset(), 6);

    let headers = read_headers(&log, 0, u32::MAX);
    let bases: Vec<i64> = headers.iter().map(|h| h.base_offset()).collect();
    assert_eq!(bases, vec![0, 2, 5]);
    assert_eq!(headers[0].partition_leader_epoch(), 4);
    assert_eq!(headers[2].partition_leader_epoch(), 0);
    // Reading from the middle of a batch returns that whole batch.
    assert_eq!(read_headers(&log, 3, u32::MAX)[0].base_offset(), 2);
    let slice = log.read(0, u32::MAX, i64::MAX, false).unwrap();
    let bytes = slice.read_bytes().unwrap();
    let records: Vec<i64> = BatchIter::strict(&bytes)
        .flat_map(|r| {
            let (_, range) = r.unwrap();
            iter_records(&bytes[range])
                .unwrap()
                .map(|r| r.unwrap().offset)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(records, vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(
        std::fs::read_to_string(log.dir().join("leader-epoch-checkpoint")).unwrap(),
        "0\n1\n4 0\n"
    );
    assert_eq!(
        std::fs::read_to_string(log.dir().join("partition.metadata")).unwrap(),
        "version: 0\ntopic_id: topic-id\n"
    );
}

#[test]
fn rejects_bad_batches_without_appending() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        max_message_bytes: 200,
        ..LogConfig::default()
    };
    let mut log = open(dir.path(), config, None);
    let mut good_then_bad = batch_with(1, NOW, 10);
    let mut bad = batch_with(1, NOW, 10);
    let n = bad.len();
    bad[n - 1] ^= 1;
    good_then_bad.extend(bad);
    assert!(matches!(
        log.append_as_leader(&good_then_bad, 0, NOW),
        Err(StorageError::CorruptMessage(_))
    ));
    assert!(matches!(
        log.append_as_leader(&batch_with(1, NOW, 500), 0, NOW),
        Err(StorageError::MessageTooLarge { max: 200, .. })
    ));
    let mut old = batch_with(1, NOW, 10);
    old[field::MAGIC] = 1;
    assert!(matches!(
        log.append_as_leader(&old, 0, NOW),
        Err(StorageError::UnsupportedMagic(1))
    ));
    let mut cut = batch_with(1, NOW, 10);
    cut.pop();
    assert!(matches!(
        log.append_as_leader(&cut, 0, NOW),
        Err(StorageError::CorruptMessage(_))
    ));
    assert_eq!(log.log_end_offset(), 0);
    assert_eq!(log.size_bytes(), 0);
}

#[test]
fn rolls_by_size_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), small_segments(), None);
    append_copies(&mut log, 30, &batch_with(2, NOW, 50));
    assert!(log.segment_count() > 3, "{} segments", log.segment_count());
    for o in 0..60 {
        let h = read_headers(&log, o, 1);
        assert!(h[0].base_offset() <= o && h[0].last_offset() >= o);
    }
    let size = log.size_bytes();
    let segments = log.segment_count();
    log.close().unwrap();
    assert!(dir.path().join("t-0").join(file_name(0, ".log")).exists());
    let log = open(dir.path(), small_segments(), None);
    assert_eq!(log.log_end_offset(), 60);
    assert_eq!((log.size_bytes(), log.segment_count()), (size, segments));
    assert_eq!(read_headers(&log, 59, 1)[0].last_offset(), 59);
}

#[test]
fn rolls_by_time_and_offset_index_full() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_ms: 100,
        ..LogConfig::default()
    };
    let mut log = open(dir.path(), config, None);
    log.append_as_leader(&batch_with(1, NOW, 1), 0, NOW)
        .unwrap();
    log.append_as_leader(&batch_with(1, NOW, 1), 0, NOW + 50)
        .unwrap();
    assert_eq!(log.segment_count(), 1);
    log.append_as_leader(&batch_with(1, NOW, 1), 0, NOW + 100)
        .unwrap();
    assert_eq!(log.segment_count(), 2);
    log.roll_if_due(NOW + 150).unwrap();
    assert_eq!(log.segment_count(), 2);
    log.roll_if_due(NOW + 200).unwrap();
    assert_eq!(log.segment_count(), 3);
    log.roll_if_due(NOW + 10_000).unwrap(); // empty active segment: no roll
    assert_eq!(log.segment_count(), 3);
    // Rolls fsync the outgoing segment, so the recovery point moves.
    assert_eq!(log.recovery_point(), 3);

    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_index_bytes: 24, // three offset-index entries, two time-index entries
        index_interval_bytes: 0,
        ..LogConfig::default()
    };
    let mut log = open(dir.path(), config, None);
    append_copies(&mut log, 5, &batch_with(1, NOW, 1));
    assert_eq!(log.segment_count(), 2);
    assert_eq!(*log.segments().keys().nth(1).unwrap(), 3);
}

#[test]
fn max_bytes_min_one_batch_and_max_offset() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig::default(), None);
    let size = batch_with(2, NOW, 100).len() as u32;
    append_copies(&mut log, 4, &batch_with(2, NOW, 100));
    assert_eq!(read_headers(&log, 0, size * 2 + size / 2).len(), 2);
    assert_eq!(read_headers(&log, 0, size * 2).len(), 2);
    // The first batch alone is too big: whole with min_one_batch, else nothing.
    assert_eq!(read_headers(&log, 0, size - 1).len(), 1);
    let slice = log.read(0, size - 1, i64::MAX, false).unwrap();
    assert!(slice.is_empty());
    assert!(slice.read_bytes().unwrap().is_empty());
    // max_offset (exclusive) keeps out the batch holding it.
    let slice = log.read(0, u32::MAX, 4, true).unwrap();
    assert_eq!(slice.read_bytes().unwrap().len() as u32, size * 2);
    let slice = log.read(0, u32::MAX, 5, true).unwrap();
    assert_eq!(slice.read_bytes().unwrap().len() as u32, size * 2);
    assert!(log.read(4, u32::MAX, 4, true).unwrap().is_empty());
    assert!(log.read(4, u32::MAX, 5, true).unwrap().is_empty());
    assert!(log.read(8, u32::MAX, i64::MAX, true).unwrap().is_empty());
    // Only a slice not cut by its byte limit may be sent unread.
    let whole = |max_bytes, max_offset| {
        let slice = log.read(0, max_bytes, max_offset, true).unwrap();
        slice.whole_batches_file().is_some()
    };
    assert!(whole(u32::MAX, i64::MAX));
    assert!(whole(size * 4, i64::MAX));
    assert!(whole(u32::MAX, 5), "cut at a batch by max_offset");
    assert!(whole(size - 1, i64::MAX), "the first batch alone, whole");
    // A limit inside the third batch ends the slice after the second.
    let slice = log.read(0, size * 2 + size / 2, i64::MAX, true).unwrap();
    assert_eq!(
        (slice.len(), whole(size * 2 + size / 2, i64::MAX)),
        (u64::from(size) * 2, true)
    );
    assert!(whole(size * 2, i64::MAX));
}

#[test]
fn a_fetch_over_many_small_batches_is_cut_and_trimmed_instead() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig::default(), None);
    let batch = batch_with(1, NOW, 10);
    let size = batch.len() as u32;
    append_copies(&mut log, 100, &batch);
    let slice = log.read(0, size * 50 + 1, i64::MAX, true).unwrap();
    assert!(
        slice.whole_batches_file().is_none(),
        "more batches than headers walked"
    );
    assert_eq!(slice.read_bytes().unwrap().len() as u32, size * 50);
}

#[test]
fn offset_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig::default(), None);
    append(&mut log, batch_with(3, NOW, 1));
    for bad in [-1, 4, 100] {
        assert!(matches!(
            log.read(bad, 1000, i64::MAX, true),
            Err(StorageError::OffsetOutOfRange { requested, log_start: 0, log_end: 3 }) if requested == bad
        ));
    }
    assert!(log.read(3, 1000, i64::MAX, true).unwrap().is_empty());
}

#[test]
fn log_append_time_rewrites_and_keeps_crc() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        message_timestamp_type: TimestampType::LogAppendTime,
        ..LogConfig::default()
    };
    let mut log = open(dir.path(), config, None);
    let r = log
        .append_as_leader(&batch_with(3, 1000, 5), 0, NOW)
        .unwrap();
    assert_eq!(r.log_append_time, NOW);
    assert_eq!(r.max_timestamp, NOW);
    let headers = read_headers(&log, 0, u32::MAX); // validates CRCs
    assert_eq!(headers[0].timestamp_type(), TimestampType::LogAppendTime);
    assert_eq!(headers[0].max_timestamp(), NOW);
    assert_eq!(log.max_timestamp_and_offset(), (NOW, 2));
}

/// `client` as the leader stores it at `base_offset`, patched whole as
/// Kafka does, to check the append's header-only patching against.
fn patched_whole(
    client: &[u8],
    base_offset: i64,
    leader_epoch: i32,
    log_append_time_ms: Option<i64>,
) -> Vec<u8> {
    let mut batch = client.to_vec();
    batch[field::BASE_OFFSET..field::BASE_OFFSET + 8].copy_from_slice(&base_offset.to_be_bytes());
    batch[field::PARTITION_LEADER_EPOCH..field::PARTITION_LEADER_EPOCH + 4]
        .copy_from_slice(&leader_epoch.to_be_bytes());
    if let Some(now_ms) = log_append_time_ms {
        batch[field::ATTRIBUTES + 1] |= 0x08; // the timestamp type bit
        batch[field::MAX_TIMESTAMP..field::MAX_TIMESTAMP + 8]
            .copy_from_slice(&now_ms.to_be_bytes());
        let crc = crate::batch::compute_crc(&batch);
        batch[field::CRC..field::CRC + 4].copy_from_slice(&crc.to_be_bytes());
    }
    batch
}

/// The leader writes a copy of each header with the client's records after
/// it; the log must hold what patching the whole batch would have made,
/// and a follower copying it must store the same bytes.
#[test]
fn leader_stores_client_records_behind_assigned_headers() {
    for timestamp_type in [TimestampType::CreateTime, TimestampType::LogAppendTime] {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            message_timestamp_type: timestamp_type,
            ..LogConfig::default()
        };
        let mut log = open(dir.path(), config, None);
        let stamp = (timestamp_type == TimestampType::LogAppendTime).then_some(NOW);
        let first = batch_with(3, 1000, 5);
        append(&mut log, first.clone());
        let mut gzip = BatchBuilder::new(0).compression(Compression::Gzip);
        gzip.push(Some(b"k"), Some(b"v"), &[], 2000);
        gzip.push(Some(b"k"), Some(b"w"), &[], 2001);
        let gzip = gzip.build();
        let sequenced = idempotent(7, 0, 0, 2);
        let request = [&gzip[..], &sequenced].concat();
        let r = log.append_as_leader(&request, 4, NOW).unwrap();
        assert_eq!((r.first_offset, r.last_offset), (3, 6));
        assert_eq!(r.log_append_time, stamp.unwrap_or(-1));
        assert_eq!(r.max_timestamp, stamp.unwrap_or(NOW));
        log.append_marker(7, 0, ControlRecordType::Commit, 0, 4, NOW)
            .unwrap();
        let marker = crate::batch::end_txn_marker(ControlRecordType::Commit, 7, 0, 0, NOW);

        let stored = stored_bytes(&log);
        let expected = [
            patched_whole(&first, 0, 0, stamp),
            patched_whole(&gzip, 3, 4, stamp),
            patched_whole(&sequenced, 5, 4, stamp),
            patched_whole(&marker, 7, 4, stamp),
        ]
        .concat();
        assert_eq!(stored, expected, "{timestamp_type:?}");
        let headers: Vec<_> = BatchIter::strict(&stored)
            .map(|item| validate_batch(&stored[item.unwrap().1]).unwrap())
            .collect();
        let assigned: Vec<_> = headers
            .iter()
            .map(|h| {
                (
                    h.base_offset(),
                    h.partition_leader_epoch(),
                    h.max_timestamp(),
                )
            })
            .collect();
        let sent = |max_timestamp| stamp.unwrap_or(max_timestamp);
        assert_eq!(
            assigned,
            [
                (0, 0, sent(1002)),
                (3, 4, sent(2001)),
                (5, 4, sent(NOW)),
                (7, 4, sent(NOW)),
            ]
        );
        assert!(headers.iter().all(|h| h.timestamp_type() == timestamp_type));
        let last = *log.producer_state(7).unwrap().batches.back().unwrap();
        assert_eq!(
            (last.last_seq, last.last_offset, last.timestamp),
            (1, 6, sent(NOW))
        );
        assert_eq!(log.leader_epoch_cache().entries(), &[(0, 0), (4, 3)]);

        let follower_dir = tempfile::tempdir().unwrap();
        let mut follower = open(follower_dir.path(), LogConfig::default(), None);
        follower.append_as_follower(&stored).unwrap();
        assert_eq!(stored_bytes(&follower), expected, "{timestamp_type:?}");
    }
}

/// More batches than one `writev` takes (IOV_MAX, 1024 pieces, two per
/// batch) still reach the log whole and in order.
#[test]
fn one_request_of_more_batches_than_a_writev_takes() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig::default(), None);
    let client: Vec<Vec<u8>> = (0..600).map(|i| batch_with(1, NOW + i, 3)).collect();
    let r = log.append_as_leader(&client.concat(), 2, NOW).unwrap();
    assert_eq!((r.first_offset, r.last_offset), (0, 599));
    let expected: Vec<u8> = client
        .iter()
        .zip(0..)
        .flat_map(|(batch, offset)| patched_whole(batch, offset, 2, None))
        .collect();
    assert_eq!(stored_bytes(&log), expected);
}

#[test]
fn fetch_offset_by_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), small_segments(), None);
    // Batches of 3 records with timestamps t, t+1, t+2 for t = 0, 100, ...
    for i in 0..20 {
        append(&mut log, batch_with(3, i * 100, 20));
    }
    assert!(log.segment_count() > 1);
    assert_eq!(log.fetch_offset_by_timestamp(0).unwrap(), Some((0, 0)));
    assert_eq!(log.fetch_offset_by_timestamp(501).unwrap(), Some((16, 501)));
    assert_eq!(log.fetch_offset_by_timestamp(503).unwrap(), Some((18, 600)));
    assert_eq!(
        log.fetch_offset_by_timestamp(1902).unwrap(),
        Some((59, 1902))
    );
    assert_eq!(log.fetch_offset_by_timestamp(1903).unwrap(), None);
    assert_eq!(log.max_timestamp_and_offset(), (1902, 59));

    // A compressed batch is answered at batch granularity.
    let mut gz = batch_with(3, 5000, 20);
    gz[field::ATTRIBUTES + 1] |= 1;
    let crc = crate::batch::compute_crc(&gz);
    gz[field::CRC..field::CRC + 4].copy_from_slice(&crc.to_be_bytes());
    append(&mut log, gz);
    assert_eq!(
        log.fetch_offset_by_timestamp(5001).unwrap(),
        Some((60, 5002))
    );
}

fn segment_log_path(log_dir: &Path, base: i64) -> std::path::PathBuf {
    log_dir.join(file_name(base, ".log"))
}

#[test]
fn recovery_truncates_garbage_tail_and_torn_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig::default(), None);
    append_copies(&mut log, 5, &batch_with(2, NOW, 30));
    let good_size = log.size_bytes();
    let log_dir = log.dir().to_path_buf();
    drop(log); // crash
    let path = segment_log_path(&log_dir, 0);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(&[0xAB; 100]);
    std::fs::write(&path, &bytes).unwrap();
    let mut log = open(dir.path(), LogConfig::default(), Some(0));
    assert_eq!(log.log_end_offset(), 10);
    assert_eq!(log.size_bytes(), good_size);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), good_size);
    // The log stays appendable after recovery.
    assert_eq!(append(&mut log, batch_with(1, NOW, 1)).first_offset, 10);
    drop(log);

    // A torn last batch goes entirely.
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 3).unwrap();
    let log = open(dir.path(), LogConfig::default(), Some(0));
    assert_eq!(log.log_end_offset(), 10);
    assert_eq!(log.size_bytes(), good_size);
}

#[test]
fn recovery_cuts_at_corrupt_crc_and_drops_later_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), small_segments(), None);
    append_copies(&mut log, 20, &batch_with(1, NOW, 100));
    let segments = log.segment_count();
    assert!(segments >= 3);
    let log_dir = log.dir().to_path_buf();
    let second = *log.segments().keys().nth(1).unwrap();
    drop(log);
    // Flip a byte in the second segment's first batch body.
    let path = segment_log_path(&log_dir, second);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[70] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();

    // A clean open trusts the data and does not read CRCs.
    let log = open(dir.path(), small_segments(), None);
    assert_eq!(log.log_end_offset(), 20);
    drop(log);
    // Recovery from a point past that segment does not look at it either.
    let log = open(dir.path(), small_segments(), Some(19));
    assert_eq!(log.log_end_offset(), 20);
    drop(log);
    let log = open(dir.path(), small_segments(), Some(0));
    assert_eq!(log.log_end_offset(), second);
    assert_eq!(log.segment_count(), 2);
    assert!(!segment_log_path(&log_dir, log.log_end_offset() + 1).exists());
    assert_eq!(read_headers(&log, second - 1, u32::MAX).len(), 1);
}

#[test]
fn rebuilds_missing_or_corrupt_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        index_interval_bytes: 64,
        ..LogConfig::default()
    };
    let mut log = open(dir.path(), config.clone(), None);
    for i in 0..30 {
        append(&mut log, batch_with(2, NOW + i, 40));
    }
    let log_dir = log.dir().to_path_buf();
    log.close().unwrap();
    let index = log_dir.join(file_name(0, ".index"));
    let time_index = log_dir.join(file_name(0, ".timeindex"));
    let original = std::fs::read(&index).unwrap();
    let original_time = std::fs::read(&time_index).unwrap();
    assert!(original.len() >= 8 * 10);
    std::fs::remove_file(&index).unwrap();
    std::fs::remove_file(&time_index).unwrap();
    let log = open(dir.path(), config.clone(), None);
    assert_eq!(std::fs::read(&index).unwrap(), original);
    // The rebuilt time index lacks only the entry `close` adds at the end.
    let rebuilt_time = std::fs::read(&time_index).unwrap();
    assert!(original_time.starts_with(&rebuilt_time));
    assert_eq!(log.log_end_offset(), 60);
    for o in 0..60 {
        assert_eq!(read_headers(&log, o, 1)[0].last_offset(), o | 1);
    }
    log.close().unwrap();
    std::fs::write(&index, &original[..original.len() - 3]).unwrap();
    let log = open(dir.path(), config, None);
    assert_eq!(std::fs::read(&index).unwrap(), original);
    assert_eq!(
        log.fetch_offset_by_timestamp(NOW + 29).unwrap(),
        Some((57, NOW + 29))
    );
}

#[test]
fn removes_leftover_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig::default(), None);
    append(&mut log, batch_with(1, NOW, 1));
    let log_dir = log.dir().to_path_buf();
    log.close().unwrap();
    for name in [
        "00000000000000000000.log.deleted",
        "00000000000000000000.log.cleaned",
        "00000000000000000000.index.swap",
        "x.cleaned",
        &file_name(50, ".index"),
    ] {
        std::fs::write(log_dir.join(name), b"junk").unwrap();
    }
    // A `.log.swap` is a committed clean: it is completed, never dropped,
    // so one that does not parse stops the open.
    let swap = log_dir.join("00000000000000000000.log.swap");
    std::fs::write(&swap, b"junk").unwrap();
    assert!(matches!(
        Log::open(
            log_dir.clone(),
            "topic-id",
            LogConfig::default(),
            None,
            DAY_MS,
            NOW
        ),
        Err(StorageError::Corrupt(_))
    ));
    std::fs::remove_file(&swap).unwrap();
    let log = open(dir.path(), LogConfig::default(), None);
    assert_eq!(log.log_end_offset(), 1);
    let mut names: Vec<String> = std::fs::read_dir(&log_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            "00000000000000000000.index",
            "00000000000000000000.log",
            "00000000000000000000.timeindex",
            "00000000000000000001.snapshot",
            "leader-epoch-checkpoint",
            "partition.metadata",
        ]
    );
}

#[test]
fn retention_by_time() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        retention_ms: 1000,
        ..small_segments()
    };
    let mut log = open(dir.path(), config, None);
    for i in 0..10 {
        append(&mut log, batch_with(1, NOW + i * 100, 300));
    }
    let segments = log.segment_count();
    assert!(segments >= 4);
    assert_eq!(log.delete_old_segments(NOW + 1000).unwrap(), 0);
    let deleted = log.delete_old_segments(NOW + 1500).unwrap();
    assert!(deleted >= 1);
    assert!(log.log_start_offset() > 0);
    assert!(log.log_start_offset() <= 5);
    assert!(matches!(
        log.read(0, 100, i64::MAX, true),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    // Everything expired, including the active segment: it is rolled away.
    log.delete_old_segments(NOW + DAY_MS).unwrap();
    assert_eq!(log.log_start_offset(), 10);
    assert_eq!(log.log_end_offset(), 10);
    assert_eq!(log.segment_count(), 1);
    assert_eq!(log.size_bytes(), 0);
    assert_eq!(append(&mut log, batch_with(1, NOW, 1)).first_offset, 10);
}

#[test]
fn retention_by_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        retention_bytes: 1500,
        ..small_segments()
    };
    let mut log = open(dir.path(), config, None);
    append_copies(&mut log, 20, &batch_with(1, NOW, 300));
    let before = log.size_bytes();
    assert!(before > 3000);
    let deleted = log.delete_old_segments(NOW).unwrap();
    assert!(deleted > 0);
    assert!(log.size_bytes() >= 1500, "{}", log.size_bytes());
    assert!(log.size_bytes() < 1500 + 1000);
    assert_eq!(
        log.log_start_offset(),
        *log.segments().keys().next().unwrap()
    );
    assert_eq!(log.delete_old_segments(NOW).unwrap(), 0);
}

#[test]
fn fetch_slice_survives_segment_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        retention_bytes: 0,
        ..small_segments()
    };
    let mut log = open(dir.path(), config, None);
    append_copies(&mut log, 10, &batch_with(1, NOW, 300));
    let slice = log.read(0, u32::MAX, i64::MAX, true).unwrap();
    assert!(log.delete_old_segments(NOW).unwrap() > 0);
    assert!(!segment_log_path(log.dir(), 0).exists());
    let bytes = slice.read_bytes().unwrap();
    let (h, _) = BatchIter::strict(&bytes).next().unwrap().unwrap();
    assert_eq!(h.base_offset(), 0);
}

#[test]
fn idempotent_producer_rules() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig::default(), None);
    append(&mut log, batch_with(2, NOW, 1));
    let first = append(&mut log, idempotent(7, 0, 0, 3));
    assert_eq!((first.first_offset, first.last_offset), (2, 4));
    let dup = append(&mut log, idempotent(7, 0, 0, 3));
    assert!(dup.duplicate);
    assert_eq!((dup.first_offset, dup.last_offset), (2, 4));
    assert_eq!(log.log_end_offset(), 5);
    let err = |log: &mut Log, b: Vec<u8>| log.append_as_leader(&b, 0, NOW).unwrap_err();
    assert!(matches!(
        err(&mut log, idempotent(7, 0, 5, 1)),
        StorageError::OutOfOrderSequence {
            producer_id: 7,
            expected: 3,
            received: 5
        }
    ));
    assert!(matches!(
        err(&mut log, idempotent(8, 0, 4, 1)),
        StorageError::UnknownProducerId(8)
    ));
    assert!(matches!(
        err(&mut log, idempotent(7, 1, 3, 1)),
        StorageError::OutOfOrderSequence { expected: 0, .. }
    ));
    append(&mut log, idempotent(7, 1, 0, 1));
    assert!(matches!(
        err(&mut log, idempotent(7, 0, 3, 1)),
        StorageError::InvalidProducerEpoch {
            current: 1,
            received: 0,
            ..
        }
    ));
    // Several producers in one append.
    let mut many = idempotent(7, 1, 1, 2);
    many.extend(idempotent(9, 0, 0, 1));
    let r = log.append_as_leader(&many, 0, NOW).unwrap();
    assert_eq!((r.first_offset, r.last_offset), (6, 8));
    assert_eq!(log.producer_state(9).unwrap().batches[0].first_offset, 8);
    assert_eq!(log.log_end_offset(), 9);
}

#[test]
fn producer_state_survives_close_and_crash() {
    for crash in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), small_segments(), None);
        for seq in 0..10 {
            append(&mut log, idempotent(7, 2, seq * 2, 2));
            append(&mut log, batch_with(1, NOW, 200));
        }
        let last = append(&mut log, idempotent(7, 2, 20, 2));
        assert!(log.segment_count() > 2);
        if crash {
            drop(log);
        } else {
            log.close().unwrap();
        }
        let recover = crash.then_some(0);
        let mut log = open(dir.path(), small_segments(), recover);
        let dup = append(&mut log, idempotent(7, 2, 20, 2));
        assert!(dup.duplicate, "crash={crash}");
        assert_eq!(dup.first_offset, last.first_offset);
        let next = append(&mut log, idempotent(7, 2, 22, 1));
        assert!(!next.duplicate);
        assert_eq!(next.first_offset, last.last_offset + 1);
        let stale = idempotent(7, 1, 24, 1);
        assert!(matches!(
            log.append_as_leader(&stale, 0, NOW),
            Err(StorageError::InvalidProducerEpoch { .. })
        ));
    }
}

#[test]
fn producer_snapshot_newer_than_log_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig::default(), None);
    append(&mut log, idempotent(7, 0, 0, 1));
    append(&mut log, idempotent(7, 0, 1, 1));
    log.truncate_to(1).unwrap();
    assert_eq!(log.log_end_offset(), 1);
    // Sequence 1 is no longer in the log, so it is not a duplicate.
    let r = append(&mut log, idempotent(7, 0, 1, 1));
    assert!(!r.duplicate);
    assert_eq!(r.first_offset, 1);
}

#[test]
fn expire_producers() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig::default(), None);
    append(&mut log, idempotent(7, 0, 0, 1));
    log.expire_producers(NOW + DAY_MS);
    assert!(log.producer_state(7).is_some());
    log.expire_producers(NOW + 7 * DAY_MS);
    assert!(log.producer_state(7).is_none());
}

#[test]
fn truncate_and_follower_append() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = open(dir.path(), small_segments(), None);
    for i in 0..12 {
        leader
            .append_as_leader(&batch_with(2, NOW, 100), i / 4, NOW)
            .unwrap();
    }
    let shipped = stored_bytes(&leader);
    let follower_dir = tempfile::tempdir().unwrap();
    let mut follower = Log::open(
        follower_dir.path().join("t-0"),
        "id",
        small_segments(),
        None,
        DAY_MS,
        NOW,
    )
    .unwrap();
    let r = follower.append_as_follower(&shipped).unwrap();
    assert_eq!((r.first_offset, r.last_offset), (0, 23));
    assert_eq!(
        follower.leader_epoch_cache().entries(),
        &[(0, 0), (1, 8), (2, 16)]
    );
    assert_eq!(follower.leader_epoch_cache(), leader.leader_epoch_cache());
    assert!(matches!(
        follower.append_as_follower(&shipped),
        Err(StorageError::UnexpectedAppendOffset {
            first_offset: 0,
            log_end: 24
        })
    ));
    follower.truncate_to(9).unwrap(); // the batch 8..=9 straddles: goes whole
    assert_eq!(follower.log_end_offset(), 8);
    assert_eq!(follower.leader_epoch_cache().entries(), &[(0, 0)]);
    assert_eq!(
        read_headers(&follower, 7, u32::MAX)
            .last()
            .unwrap()
            .last_offset(),
        7
    );
    follower.truncate_to(0).unwrap();
    assert_eq!(follower.log_end_offset(), 0);
    assert_eq!(follower.segment_count(), 1);
    follower.append_as_follower(&shipped).unwrap();
    assert_eq!(follower.log_end_offset(), 24);
}

/// A new leader's epoch starts at the log end before anything is written
/// in it, so the previous epoch's end is known at once; a deposed leader
/// that never wrote in its epoch forgets it on truncation, as on reopening.
#[test]
fn a_leaders_epoch_starts_at_the_log_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig::default(), None);
    append(&mut log, batch_with(4, NOW, 10)); // 0..=3 in epoch 0
    log.assign_epoch_start_offset(2).unwrap();
    log.assign_epoch_start_offset(2).unwrap();
    log.assign_epoch_start_offset(1).unwrap(); // older: ignored
    assert_eq!(log.leader_epoch_cache().entries(), &[(0, 0), (2, 4)]);
    assert_eq!(log.end_offset_for_epoch(0), Some((0, 4)));
    assert_eq!(log.end_offset_for_epoch(1), Some((0, 4)));
    assert_eq!(log.end_offset_for_epoch(2), Some((2, 4)));
    assert_eq!(log.end_offset_for_epoch(3), None);
    // Writing in the epoch keeps its start; the latest ends at the log end.
    log.append_as_leader(&batch_with(2, NOW, 10), 2, NOW)
        .unwrap();
    assert_eq!(log.leader_epoch_cache().entries(), &[(0, 0), (2, 4)]);
    assert_eq!(log.end_offset_for_epoch(2), Some((2, 6)));

    // Deposed at epoch 3 before writing in it: a truncation that cuts
    // nothing still drops the epoch, and so does reopening.
    log.assign_epoch_start_offset(3).unwrap();
    log.truncate_to(100).unwrap();
    assert_eq!(log.log_end_offset(), 6);
    assert_eq!(log.leader_epoch_cache().entries(), &[(0, 0), (2, 4)]);
    log.assign_epoch_start_offset(3).unwrap();
    log.close().unwrap();
    let log = open(dir.path(), LogConfig::default(), None);
    assert_eq!(log.leader_epoch_cache().entries(), &[(0, 0), (2, 4)]);
}

/// A follower restarted at the leader's log start, which DeleteRecords put
/// inside a batch, takes that whole batch: its empty log restarts at the
/// batch's base offset. A log holding data refuses the same batch.
#[test]
fn an_empty_follower_takes_the_batch_holding_the_leaders_log_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = open(dir.path(), LogConfig::default(), None);
    leader
        .append_as_leader(&batch_with(5, NOW, 10), 1, NOW)
        .unwrap(); // 0..=4
    leader
        .append_as_leader(&batch_with(5, NOW, 10), 1, NOW)
        .unwrap(); // 5..=9
    leader.maybe_increment_log_start_offset(7).unwrap();
    let shipped = leader
        .read(7, u32::MAX, i64::MAX, true)
        .unwrap()
        .read_bytes()
        .unwrap();

    let follower_dir = tempfile::tempdir().unwrap();
    let mut follower = open(follower_dir.path(), LogConfig::default(), None);
    follower.truncate_fully_and_start_at(7).unwrap();
    let r = follower.append_as_follower(&shipped).unwrap();
    assert_eq!((r.first_offset, r.last_offset), (5, 9));
    assert_eq!(follower.log_start_offset(), 5);
    assert_eq!(follower.log_end_offset(), 10);
    follower.maybe_increment_log_start_offset(7).unwrap();
    assert_eq!(follower.log_start_offset(), 7);
    assert_eq!(follower.leader_epoch_cache().entries(), &[(1, 7)]);
    assert_eq!(read_headers(&follower, 7, u32::MAX)[0].base_offset(), 5);

    let busy_dir = tempfile::tempdir().unwrap();
    let mut busy = open(busy_dir.path(), LogConfig::default(), None);
    append(&mut busy, batch_with(7, NOW, 10)); // 0..=6
    assert!(matches!(
        busy.append_as_follower(&shipped),
        Err(StorageError::UnexpectedAppendOffset {
            first_offset: 5,
            log_end: 7
        })
    ));
}

#[test]
fn log_manager_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let tp = keel_types::TopicPartition::new("orders-eu", 1);
    {
        let mgr = LogManager::open(root.clone()).unwrap();
        assert!(!mgr.had_clean_shutdown());
        let mut log = mgr
            .open_log(&tp, "id", LogConfig::default(), DAY_MS, NOW)
            .unwrap();
        append(&mut log, batch_with(3, NOW, 10));
        let flushed = log.flush().unwrap();
        mgr.write_checkpoints(&[(tp.clone(), flushed, log.log_start_offset())])
            .unwrap();
        log.close().unwrap();
        mgr.mark_clean_shutdown().unwrap();
    }
    std::fs::create_dir(root.join("stray")).unwrap();
    std::fs::create_dir(root.join("orders-eu-1.abc-delete")).unwrap();
    std::fs::write(root.join("x-3"), b"file, not dir").unwrap();
    let mgr = LogManager::open(root.clone()).unwrap();
    assert!(mgr.had_clean_shutdown());
    assert!(!root.join(CLEAN_SHUTDOWN_MARKER).exists());
    assert_eq!(mgr.existing_partitions().unwrap(), vec![tp.clone()]);
    assert_eq!(
        std::fs::read_to_string(root.join(RECOVERY_POINT_CHECKPOINT)).unwrap(),
        "0\n1\norders-eu 1 3\n"
    );
    let log = mgr
        .open_log(&tp, "id", LogConfig::default(), DAY_MS, NOW)
        .unwrap();
    assert_eq!(log.log_end_offset(), 3);
    assert!(matches!(
        mgr.open_log(
            &keel_types::TopicPartition::new("orders-eu", 1),
            "other",
            LogConfig::default(),
            DAY_MS,
            NOW
        ),
        Err(StorageError::InconsistentTopicId { .. })
    ));
    drop(log);
    // No marker now: the next open recovers from the checkpoint.
    let mgr = LogManager::open(root.clone()).unwrap();
    assert!(!mgr.had_clean_shutdown());
    let log = mgr
        .open_log(&tp, "id", LogConfig::default(), DAY_MS, NOW)
        .unwrap();
    assert_eq!(log.log_end_offset(), 3);
    drop(log);
    mgr.delete_partition_dir(&tp).unwrap();
    assert!(mgr.existing_partitions().unwrap().is_empty());
}

#[test]
fn log_start_offset_from_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let tp = keel_types::TopicPartition::new("t", 0);
    let mgr = LogManager::open(root.clone()).unwrap();
    let mut log = mgr
        .open_log(&tp, "id", small_segments(), DAY_MS, NOW)
        .unwrap();
    append_copies(&mut log, 10, &batch_with(1, NOW, 300));
    log.close().unwrap();
    mgr.write_checkpoints(&[(tp.clone(), 10, 6)]).unwrap();
    mgr.mark_clean_shutdown().unwrap();
    let mgr = LogManager::open(root).unwrap();
    let mut log = mgr
        .open_log(&tp, "id", small_segments(), DAY_MS, NOW)
        .unwrap();
    assert_eq!(log.log_start_offset(), 6);
    assert!(log.delete_old_segments(NOW).unwrap() > 0);
    assert!(*log.segments().keys().next().unwrap() <= 6);
    assert_eq!(log.log_start_offset(), 6);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Whatever the batch sizes, a read at any offset starts with the batch
    /// holding it, before and after a recovering reopen.
    #[test]
    fn every_offset_reads_its_batch(shapes in prop::collection::vec((1usize..6, 0usize..200), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig { segment_bytes: 1500, index_interval_bytes: 100, ..LogConfig::default() };
        let mut log = open(dir.path(), config.clone(), None);
        let mut ranges = Vec::new();
        for (records, value_len) in &shapes {
            let r = append(&mut log, batch_with(*records, NOW, *value_len));
            ranges.push((r.first_offset, r.last_offset));
        }
        let check = |log: &Log| {
            for &(first, last) in &ranges {
                for o in first..=last {
                    let h = read_headers(log, o, 1);
                    prop_assert_eq!(h.len(), 1);
                    prop_assert_eq!((h[0].base_offset(), h[0].last_offset()), (first, last));
                }
            }
            Ok(())
        };
        check(&log)?;
        drop(log);
        let log = open(dir.path(), config, Some(0));
        check(&log)?;
    }
}

/// `cargo test -p keel-storage --release -- --ignored --nocapture bench`
#[test]
#[ignore]
fn bench_append_and_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig::default(), None);
    let template = batch_with(10, NOW, 100);
    let n = 100_000;
    let start = std::time::Instant::now();
    for _ in 0..n {
        log.append_as_leader(&template, 0, NOW).unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "append: {:.0} batches/s, {:.1} MiB/s",
        n as f64 / secs,
        (n * template.len()) as f64 / secs / (1 << 20) as f64
    );
    let start = std::time::Instant::now();
    let mut offset = 0;
    let mut bytes = 0;
    while offset < log.log_end_offset() {
        let slice = log.read(offset, 1 << 20, i64::MAX, true).unwrap();
        let data = slice.read_bytes().unwrap();
        bytes += data.len();
        let last = BatchIter::strict(&data).last().unwrap().unwrap().0;
        offset = last.next_offset();
    }
    let secs = start.elapsed().as_secs_f64();
    println!("read: {:.1} MiB/s", bytes as f64 / secs / (1 << 20) as f64);
}

#[test]
fn reads_skip_batches_the_cleaner_emptied() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig::default(), None);
    let data = batch_with(2, NOW, 10);
    log.append_as_follower(&data).unwrap();
    // What the cleaner leaves at the end of a segment whose last records
    // were all superseded: a header-only batch keeping offsets 2..=4.
    let mut superseded = BatchBuilder::new(2).last_offset_delta(2);
    superseded.push(Some(b"k"), Some(b"old"), &[], NOW);
    let superseded = superseded.build();
    let emptied = crate::batch::empty_batch_like(&RecordBatchHeader::parse(&superseded).unwrap());
    log.append_as_follower(&emptied).unwrap();
    log.roll_active().unwrap();
    let mut later = BatchBuilder::new(5);
    later.push(Some(b"k"), Some(b"v"), &[], NOW);
    log.append_as_follower(&later.build()).unwrap();

    for offset in [2, 3, 4] {
        let headers = read_headers(&log, offset, 1 << 20);
        assert_eq!(headers.len(), 1, "from {offset}");
        assert_eq!(headers[0].base_offset(), 5, "from {offset}");
    }
    // Earlier data is read as it is, with the emptied batch behind it.
    let headers = read_headers(&log, 0, 1 << 20);
    assert_eq!(headers[0].base_offset(), 0);
}
