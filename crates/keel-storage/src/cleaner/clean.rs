//! Step 2 of a clean, Kafka's `Cleaner.doClean`: map the dirty section's
//! keys to their latest offsets, then rewrite the log from its start to the
//! end of the mapped section, group by group, into `.cleaned` segments.
//!
//! A record survives if no later record of its key was mapped, or if it is
//! past the mapped section. Records without a key go. Offsets never
//! change: a batch that loses records is rebuilt with its base offset,
//! `lastOffsetDelta`, producer fields and codec, so `next_offset()` and the
//! producer's sequence range stay as they were; a batch that loses nothing
//! is copied byte for byte.
//!
//! Tombstones follow KIP-534 rather than Kafka's older rule: the first
//! clean that keeps a tombstone stamps its batch with a delete horizon of
//! now + `delete.retention.ms`, and a clean after that horizon drops it.
//! The older rule judged tombstones by segment modification times, which
//! change whenever a segment is rewritten and differ between replicas;
//! the horizon travels inside the batch, so every replica and every restart
//! agrees on it, and it is what Kafka does for v2 batches.
//!
//! Transactions are over below the first unstable offset, where cleaning
//! stops. The data batches of aborted transactions never enter the offset
//! map (they must not supersede committed records) and lose their records,
//! as Kafka's `CleanedTransactionMetadata` decides; committed transactional
//! batches are compacted like any other.
//!
//! A transaction marker stays while any data batch of its transaction
//! does (Kafka's `CleanedTransactionMetadata`): a replay that met the
//! batches without it would reopen the transaction and hold back the last
//! stable offset. The first clean to find no batch of it before a marker
//! stamps the marker with a delete horizon, as for tombstones, and a clean
//! after the horizon removes it, with its transaction index entry. Like a
//! producer's last data batch, the marker that holds a producer's only
//! record of its epoch is emptied instead, as the epoch fences.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::FileExt;
use std::time::Instant;

use keel_types::limits::{RECORD_BATCH_HEADER_BYTES, SEGMENT_RELATIVE_OFFSET_MAX};

use super::offset_map::OffsetMap;
use super::swap::CLEANED_SUFFIX;
use super::{
    CleanPlan, CleanedGroup, CleanedLog, CleanerConfig, CleanerStats, CleanerTask, SegmentSnapshot,
    Throttler,
};
use crate::batch::{
    check_crc, check_framing, empty_batch_like, BatchBuilder, BatchRecords, RecordBatchHeader,
    RecordView,
};
use crate::codec::RECORDS_UNCOMPRESSED_BYTES_MAX;
use crate::error::{IoContext, Result, StorageError};
use crate::segment::SegmentWriter;
use crate::txn_index::AbortedTxn;
use crate::TimestampType;

/// The aborted transactions a clean sees. Held whole, as the segments'
/// transaction indexes already are.
#[derive(Debug)]
pub(super) struct AbortedTxns {
    /// In marker order, as the transaction indexes hold them.
    txns: Vec<AbortedTxn>,
    /// (producer id, first offset) to the marker's offset.
    by_producer: BTreeMap<(i64, i64), i64>,
}

impl AbortedTxns {
    pub(super) fn new(txns: Vec<AbortedTxn>) -> AbortedTxns {
        let by_producer = txns
            .iter()
            .map(|t| ((t.producer_id, t.first_offset), t.last_offset))
            .collect();
        AbortedTxns { txns, by_producer }
    }

    /// Whether `header` is a data batch of an aborted transaction: the
    /// producer's last aborted transaction starting at or before it has
    /// its marker after it.
    fn holds(&self, header: &RecordBatchHeader) -> bool {
        let producer = header.producer_id();
        header.is_transactional()
            && !header.is_control()
            && self
                .by_producer
                .range((producer, i64::MIN)..=(producer, header.base_offset()))
                .next_back()
                .is_some_and(|(_, &marker)| header.base_offset() < marker)
    }

    /// The entries whose marker is in `offsets`.
    fn indexed_in(&self, offsets: std::ops::Range<i64>) -> Vec<AbortedTxn> {
        self.txns
            .iter()
            .filter(|t| offsets.contains(&t.last_offset))
            .copied()
            .collect()
    }
}

/// The transactions one clean has met so far, read in offset order from
/// the log start: what decides whether a marker still guards data.
#[derive(Debug, Default)]
struct CleanedTxns {
    /// Producers whose open transaction had a data batch in this clean.
    with_batches: HashSet<i64>,
    /// Offsets of the markers this clean removed or emptied: their
    /// transaction index entries go with them.
    dropped_markers: HashSet<i64>,
}

impl CleanedTxns {
    fn on_data_batch(&mut self, header: &RecordBatchHeader) {
        if header.is_transactional() {
            self.with_batches.insert(header.producer_id());
        }
    }

    /// Whether the transaction the marker `header` ends had a data batch
    /// in this clean. A marker ends its producer's open transaction.
    fn on_marker(&mut self, header: &RecordBatchHeader) -> bool {
        self.with_batches.remove(&header.producer_id())
    }
}

/// What rewriting carries from one group of segments to the next.
struct Rewrite<'m> {
    map: &'m OffsetMap,
    /// Where the mapped section ends: later records all stay.
    end_offset: i64,
    txns: CleanedTxns,
}

/// What the cleaner keeps of one batch.
enum Retention {
    /// Every record: copy the bytes.
    Whole,
    /// Some records, or none but the header: these bytes instead.
    Rebuilt(Vec<u8>),
    Removed,
}

impl CleanerTask {
    /// Step 2 of a clean (see the module docs): run it on a blocking thread,
    /// without the log's lock. Reads and writes only files: the closed
    /// segments snapshotted in step 1, and new `.cleaned` files.
    pub fn clean(self, config: &CleanerConfig, throttler: &Throttler) -> Result<CleanedLog> {
        let started = Instant::now();
        let CleanerTask { plan, guard } = self;
        // Built first, so that a failure below deletes what was written.
        let mut cleaned = CleanedLog {
            dir: plan.dir.clone(),
            groups: Vec::new(),
            stats: CleanerStats {
                first_dirty_offset: plan.first_dirty_offset,
                ..CleanerStats::default()
            },
            guard,
        };
        let stats = &mut cleaned.stats;
        let read_chunk_bytes = config.read_chunk_bytes();
        let mut map = OffsetMap::new(config.offset_map_bytes(), config.dedupe_buffer_load_factor);
        let end_offset = plan.build_offset_map(&mut map, read_chunk_bytes, throttler, stats)?;
        stats.next_dirty_offset = end_offset;
        stats.map_utilization = map.utilization();
        stats.map_elapsed = started.elapsed();
        tracing::debug!(
            dir = %plan.dir.display(),
            first_dirty = plan.first_dirty_offset,
            end_offset,
            "offset map built"
        );

        let mut rewrite = Rewrite {
            map: &map,
            end_offset,
            txns: CleanedTxns::default(),
        };
        let to_clean: Vec<&SegmentSnapshot> = plan
            .segments
            .iter()
            .filter(|s| s.base_offset < end_offset)
            .collect();
        let groups = group_segments_by_size(
            &to_clean,
            plan.config.effective_segment_bytes(),
            u64::from(plan.config.segment_index_bytes),
        );
        for group in groups {
            cleaned.groups.push(CleanedGroup {
                replaced: group.iter().map(|&s| s.clone()).collect(),
            });
            plan.clean_group(
                &group,
                &mut rewrite,
                read_chunk_bytes,
                throttler,
                &mut cleaned.stats,
            )?;
        }
        cleaned.stats.elapsed = started.elapsed();
        Ok(cleaned)
    }
}

impl CleanPlan {
    /// Maps keys of the dirty section to their latest offsets. Returns the
    /// offset the mapped section ends at: the first uncleanable offset, or
    /// the first batch that did not fit once the map was full.
    fn build_offset_map(
        &self,
        map: &mut OffsetMap,
        read_chunk_bytes: usize,
        throttler: &Throttler,
        stats: &mut CleanerStats,
    ) -> Result<i64> {
        let first_dirty = self.first_dirty_offset;
        let floor = self
            .segments
            .iter()
            .rev()
            .find(|s| s.base_offset <= first_dirty)
            .map(|s| s.base_offset);
        for seg in self.segments.iter().filter(|s| s.next_offset > first_dirty) {
            let start = if Some(seg.base_offset) == floor {
                self.first_dirty_position
            } else {
                0
            };
            let mut reader = SegmentReader::new(seg, start, read_chunk_bytes);
            while let Some((header, batch)) = reader.next_batch(throttler)? {
                assert!(
                    header.last_offset() < self.first_uncleanable_offset,
                    "cleanable segments end below the first uncleanable offset"
                );
                stats.map_bytes_read += batch.len() as u64;
                if header.last_offset() < first_dirty
                    || header.is_control()
                    || self.aborted.holds(&header)
                {
                    continue;
                }
                let decoded = BatchRecords::decode(batch, RECORDS_UNCOMPRESSED_BYTES_MAX)?;
                let records = decoded.records()?;
                stats.map_records_read += records.len() as u64;
                let keys: Vec<(&[u8], i64)> = records
                    .iter()
                    .filter(|r| r.offset >= first_dirty)
                    .filter_map(|r| r.key.map(|k| (k, r.offset)))
                    .collect();
                if !map.has_room_for(keys.len()) && !map.is_empty() {
                    // The next clean continues from this batch.
                    return Ok(header.base_offset);
                }
                for (key, offset) in keys {
                    if !map.put(key, offset) {
                        return Err(StorageError::InvalidRecord(format!(
                            "batch at offset {} holds more keys than the cleaner's offset map; \
                             raise log.cleaner.dedupe.buffer.size",
                            header.base_offset
                        )));
                    }
                }
            }
        }
        Ok(self.first_uncleanable_offset)
    }

    /// Rewrites one group of segments into one `.cleaned` segment.
    fn clean_group(
        &self,
        group: &[&SegmentSnapshot],
        rewrite: &mut Rewrite<'_>,
        read_chunk_bytes: usize,
        throttler: &Throttler,
        stats: &mut CleanerStats,
    ) -> Result<()> {
        let base_offset = group[0].base_offset;
        // The group's last batch is kept even if emptied, so the cleaned
        // segment ends where the group did: swap recovery relies on it to
        // find every segment it replaces, and the offsets after it stay
        // accounted for (Kafka keeps the round's last batch likewise).
        let group_next_offset = group
            .iter()
            .filter(|s| s.size > 0)
            .map(|s| s.next_offset)
            .max();
        let mut writer = SegmentWriter::create(
            &self.dir,
            base_offset,
            CLEANED_SUFFIX,
            self.config.index_interval_bytes,
        )?;
        for seg in group {
            stats.segments_read += 1;
            let mut reader = SegmentReader::new(seg, 0, read_chunk_bytes);
            while let Some((header, batch)) = reader.next_batch(throttler)? {
                stats.bytes_read += batch.len() as u64;
                let keep_empty = Some(header.next_offset()) == group_next_offset;
                let before = writer.size();
                let retention = if header.is_control() {
                    self.filter_marker(&header, batch, &mut rewrite.txns, keep_empty, stats)?
                } else {
                    rewrite.txns.on_data_batch(&header);
                    self.filter_batch(&header, batch, rewrite, keep_empty, stats)?
                };
                match retention {
                    Retention::Whole => writer.append(batch, &header)?,
                    Retention::Rebuilt(bytes) => {
                        let rebuilt = RecordBatchHeader::parse(&bytes)?;
                        debug_assert_eq!(rebuilt.next_offset(), header.next_offset());
                        writer.append(&bytes, &rebuilt)?;
                    }
                    Retention::Removed => {}
                }
                let written = writer.size() - before;
                stats.bytes_written += written;
                throttler.maybe_throttle(written)?;
            }
        }
        let last = group.last().expect("groups are never empty");
        let modified = last.file.metadata().and_then(|m| m.modified()).ok();
        let mut aborted = self.aborted.indexed_in(base_offset..last.next_offset);
        aborted.retain(|t| !rewrite.txns.dropped_markers.contains(&t.last_offset));
        writer.finish(&aborted, modified)?;
        stats.segments_written += 1;
        Ok(())
    }

    /// Whether `header` is the batch of its producer that compaction keeps
    /// (see [`crate::producer_state::LastRecord`]).
    fn is_last_of_producer(&self, header: &RecordBatchHeader) -> bool {
        header.producer_id() >= 0
            && self
                .last_records
                .get(&header.producer_id())
                .is_some_and(|last| last.is(header))
    }

    /// Decides what of a control batch survives (see the module docs).
    /// A control batch a clean emptied guards nothing and has no horizon:
    /// its marker was already past one.
    fn filter_marker(
        &self,
        header: &RecordBatchHeader,
        batch: &[u8],
        txns: &mut CleanedTxns,
        keep_empty: bool,
        stats: &mut CleanerStats,
    ) -> Result<Retention> {
        let count = header.record_count().max(0) as u64;
        stats.records_read += count;
        let guards_data = count > 0 && txns.on_marker(header);
        let horizon = header.delete_horizon_ms();
        let expired = count == 0 || horizon.is_some_and(|h| self.now_ms >= h);
        let retention = if guards_data || !expired {
            stats.records_retained += count;
            match horizon {
                None if !guards_data => {
                    let decoded = BatchRecords::decode(batch, RECORDS_UNCOMPRESSED_BYTES_MAX)?;
                    let records = decoded.records()?;
                    let horizon = self.now_ms.saturating_add(self.config.delete_retention_ms);
                    let retained: Vec<&RecordView<'_>> = records.iter().collect();
                    Retention::Rebuilt(rebuild(header, &retained, Some(horizon)))
                }
                _ => Retention::Whole,
            }
        } else if keep_empty || self.is_last_of_producer(header) {
            match count {
                0 => Retention::Whole,
                _ => Retention::Rebuilt(empty_batch_like(header)),
            }
        } else {
            Retention::Removed
        };
        if count > 0 && !guards_data && expired {
            txns.dropped_markers.insert(header.last_offset());
        }
        Ok(retention)
    }

    /// Decides what of one data batch survives (Kafka's `cleanInto`
    /// filter). `keep_empty`: the batch must survive, if only as a header.
    fn filter_batch(
        &self,
        header: &RecordBatchHeader,
        batch: &[u8],
        rewrite: &Rewrite<'_>,
        keep_empty: bool,
        stats: &mut CleanerStats,
    ) -> Result<Retention> {
        let decoded = BatchRecords::decode(batch, RECORDS_UNCOMPRESSED_BYTES_MAX)?;
        let records = decoded.records()?;
        stats.records_read += records.len() as u64;
        let horizon = header.delete_horizon_ms();
        let aborted = self.aborted.holds(header);
        let mut retained: Vec<&RecordView<'_>> = Vec::with_capacity(records.len());
        for record in records.iter().filter(|_| !aborted) {
            if record.offset >= rewrite.end_offset {
                retained.push(record);
                continue;
            }
            let Some(key) = record.key else {
                stats.invalid_records_read += 1;
                continue;
            };
            let superseded = rewrite
                .map
                .get(key)
                .is_some_and(|latest| latest > record.offset);
            let expired_tombstone =
                record.value.is_none() && horizon.is_some_and(|h| self.now_ms >= h);
            if !superseded && !expired_tombstone {
                retained.push(record);
            }
        }
        stats.records_retained += retained.len() as u64;

        if retained.is_empty() {
            return Ok(
                match (
                    keep_empty || self.is_last_of_producer(header),
                    records.is_empty(),
                ) {
                    (false, _) => Retention::Removed,
                    (true, true) => Retention::Whole,
                    (true, false) => Retention::Rebuilt(empty_batch_like(header)),
                },
            );
        }
        let needs_horizon = horizon.is_none() && retained.iter().any(|r| r.value.is_none());
        if retained.len() == records.len() && !needs_horizon {
            return Ok(Retention::Whole);
        }
        let horizon = horizon
            .or(needs_horizon.then(|| self.now_ms.saturating_add(self.config.delete_retention_ms)));
        Ok(Retention::Rebuilt(rebuild(header, &retained, horizon)))
    }
}

/// The batch `header` with only `retained`, at their offsets.
fn rebuild(
    header: &RecordBatchHeader,
    retained: &[&RecordView<'_>],
    delete_horizon_ms: Option<i64>,
) -> Vec<u8> {
    let mut builder = BatchBuilder::new(header.base_offset())
        .partition_leader_epoch(header.partition_leader_epoch())
        .producer(
            header.producer_id(),
            header.producer_epoch(),
            header.base_sequence(),
        )
        .transactional(header.is_transactional())
        .control(header.is_control())
        .log_append_time(header.timestamp_type() == TimestampType::LogAppendTime)
        .compression(header.compression())
        .last_offset_delta(header.last_offset_delta());
    if let Some(horizon) = delete_horizon_ms {
        builder = builder.delete_horizon_ms(horizon);
    }
    for record in retained {
        let delta = i32::try_from(record.offset - header.base_offset())
            .expect("a batch's offsets are within its lastOffsetDelta");
        builder.push_at(
            delta,
            record.timestamp,
            record.key,
            record.value,
            record.headers.iter().copied(),
        );
    }
    builder.build()
}

/// Kafka's `groupSegmentsBySize`: consecutive segments whose logs together
/// fit `segment.bytes`, whose indexes each fit `segment.index.bytes`, and
/// whose offsets fit the index's relative offsets, so small segments merge.
fn group_segments_by_size<'a>(
    segments: &[&'a SegmentSnapshot],
    segment_bytes: u64,
    segment_index_bytes: u64,
) -> Vec<Vec<&'a SegmentSnapshot>> {
    let mut groups: Vec<Vec<&SegmentSnapshot>> = Vec::new();
    let mut rest = segments.iter().copied().peekable();
    while let Some(first) = rest.next() {
        let (mut log_bytes, mut index_bytes, mut time_index_bytes) =
            (first.size, first.index_bytes, first.time_index_bytes);
        let mut group = vec![first];
        while let Some(next) = rest.next_if(|next| {
            log_bytes + next.size <= segment_bytes
                && index_bytes + next.index_bytes <= segment_index_bytes
                && time_index_bytes + next.time_index_bytes <= segment_index_bytes
                && next.next_offset - 1 - first.base_offset <= SEGMENT_RELATIVE_OFFSET_MAX
        }) {
            log_bytes += next.size;
            index_bytes += next.index_bytes;
            time_index_bytes += next.time_index_bytes;
            group.push(next);
        }
        groups.push(group);
    }
    groups
}

/// Reads a closed segment's batches by positional reads, a chunk at a time
/// (a larger batch is read whole), checking framing, CRC and offset order:
/// disk data is checked again on its way back in.
struct SegmentReader<'a> {
    seg: &'a SegmentSnapshot,
    /// File position of the next batch.
    pos: u64,
    buf: Vec<u8>,
    /// File position of `buf[0]`.
    buf_pos: u64,
    read_chunk_bytes: usize,
    expected_next: i64,
}

impl<'a> SegmentReader<'a> {
    fn new(seg: &'a SegmentSnapshot, start: u64, read_chunk_bytes: usize) -> SegmentReader<'a> {
        SegmentReader {
            seg,
            pos: start,
            buf: Vec::new(),
            buf_pos: start,
            read_chunk_bytes,
            expected_next: seg.base_offset,
        }
    }

    fn corrupt(&self, what: impl std::fmt::Display) -> StorageError {
        StorageError::Corrupt(format!(
            "segment {} at position {}: {what}",
            self.seg.base_offset, self.pos
        ))
    }

    /// Makes `buf` hold `len` bytes from `self.pos`.
    fn fill(&mut self, len: u64, throttler: &Throttler) -> Result<()> {
        let have_from = self.pos >= self.buf_pos;
        let buf_end = self.buf_pos + self.buf.len() as u64;
        if have_from && self.pos + len <= buf_end {
            return Ok(());
        }
        let want = len
            .max(self.read_chunk_bytes as u64)
            .min(self.seg.size - self.pos);
        self.buf
            .resize(usize::try_from(want).expect("segments fit memory"), 0);
        self.buf_pos = self.pos;
        self.seg
            .file
            .read_exact_at(&mut self.buf, self.pos)
            .ctx(|| format!("reading segment {} at {}", self.seg.base_offset, self.pos))?;
        throttler.maybe_throttle(want)?;
        Ok(())
    }

    fn next_batch(&mut self, throttler: &Throttler) -> Result<Option<(RecordBatchHeader, &[u8])>> {
        let left = self.seg.size - self.pos;
        if left == 0 {
            return Ok(None);
        }
        if left < RECORD_BATCH_HEADER_BYTES as u64 {
            return Err(self.corrupt("torn batch header"));
        }
        self.fill(RECORD_BATCH_HEADER_BYTES as u64, throttler)?;
        let at = (self.pos - self.buf_pos) as usize;
        let header = RecordBatchHeader::parse(&self.buf[at..])?;
        check_framing(&header).map_err(|e| self.corrupt(e))?;
        let total = header.total_size();
        if total > left {
            return Err(self.corrupt("batch runs past the segment end"));
        }
        if header.base_offset() < self.expected_next || header.last_offset_delta() < 0 {
            return Err(self.corrupt("offsets out of order"));
        }
        self.fill(total, throttler)?;
        let at = (self.pos - self.buf_pos) as usize;
        let batch = &self.buf[at..at + total as usize];
        if let Err(e) = check_crc(&header, batch) {
            return Err(StorageError::Corrupt(format!(
                "segment {}: {e}",
                self.seg.base_offset
            )));
        }
        self.pos += total;
        self.expected_next = header.next_offset();
        Ok(Some((header, batch)))
    }
}
