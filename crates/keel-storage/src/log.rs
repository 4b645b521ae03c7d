//! One partition's log: an ordered set of segments, the leader-epoch cache
//! and the producer state (idempotence and transactions). The caller wraps
//! it in a mutex; reads return a [`FetchSlice`] whose I/O happens after the
//! lock is released.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::IoSlice;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use bytes::Bytes;
use keel_types::limits::{RECORD_BATCH_HEADER_BYTES, SEGMENT_RELATIVE_OFFSET_MAX};

use crate::batch::{
    self, check_crc, check_framing, BatchIter, Compression, ControlRecordType, EndTxnMarker, Keys,
    RecordBatchHeader,
};
use crate::checkpoint::{ensure_partition_metadata, sync_dir, LeaderEpochCache};
use crate::config::{LogConfig, TimestampType};
use crate::error::{IoContext, Result, StorageError};
use crate::producer_state::{
    append_batch, check_batch, AppendOrigin, LastRecord, OngoingTxn, ProducerEntry,
    ProducerStateManager, SequenceCheck,
};
use crate::recovery::load_segments;
use crate::segment::{read_header_at, Segment};
use crate::txn_index::AbortedTxn;

/// What an append did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogAppendResult {
    pub first_offset: i64,
    pub last_offset: i64,
    /// The time stamped on the batches, or -1 under CreateTime.
    pub log_append_time: i64,
    pub log_start_offset: i64,
    pub max_timestamp: i64,
    pub record_count: u64,
    /// An idempotent retry: offsets are the original ones, nothing appended.
    pub duplicate: bool,
    /// `flush.messages` or `flush.ms` says the caller should fsync now.
    pub needs_flush: bool,
}

/// A located range of whole batches in one segment file. Holding the
/// `Arc<File>` keeps the data readable even if retention deletes the
/// segment meanwhile.
#[derive(Clone, Debug)]
pub struct FetchSlice {
    file: Option<Arc<File>>,
    position: u64,
    /// Bytes to read: an upper bound, trimmed to whole batches after
    /// reading, unless `whole`.
    len: u64,
    /// Whether `len` ends on a batch boundary (the slice was not cut by
    /// its byte limit), so the bytes may be sent as they are, unread.
    whole: bool,
    first_offset: i64,
}

impl FetchSlice {
    fn empty() -> FetchSlice {
        FetchSlice {
            file: None,
            position: 0,
            len: 0,
            whole: true,
            first_offset: -1,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Upper bound on the bytes `read_bytes` returns.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// The segment file, for zero-copy senders: only when the slice is
    /// whole batches as located, since they cannot trim what they send.
    pub fn whole_batches_file(&self) -> Option<&Arc<File>> {
        self.file.as_ref().filter(|_| self.whole)
    }

    pub fn position(&self) -> u64 {
        self.position
    }

    /// Base offset of the first batch, or -1 when empty.
    pub fn first_offset(&self) -> i64 {
        self.first_offset
    }

    /// Reads the bytes and trims them to whole batches. Meant to run outside
    /// the log's lock.
    pub fn read_bytes(&self) -> Result<Bytes> {
        let Some(file) = &self.file else {
            return Ok(Bytes::new());
        };
        let len = usize::try_from(self.len).expect("fetch length fits memory");
        // Read into spare capacity: zeroing a megabyte first cost as much
        // as the read itself on the fetch path.
        let mut buf = Vec::with_capacity(len);
        while buf.len() < len {
            let at = self.position + buf.len() as u64;
            let read = rustix::io::pread(&**file, rustix::buffer::spare_capacity(&mut buf), at);
            match read {
                // Truncated since located: keep what is whole.
                Ok(0) => break,
                // The capacity may exceed what was asked; bytes past the
                // slice may be above the high watermark.
                Ok(_) => buf.truncate(len),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    return Err(std::io::Error::from(e))
                        .ctx(|| format!("reading log at position {}", self.position))
                }
            }
        }
        let mut batches = BatchIter::new(&buf);
        for item in &mut batches {
            item.map_err(|e| StorageError::Corrupt(format!("reading log: {e}")))?;
        }
        let whole = batches.position();
        buf.truncate(whole);
        Ok(Bytes::from(buf))
    }
}

/// Headers a fetch reads to end its slice on a batch boundary; past them,
/// the slice is cut at its byte limit and trimmed after reading.
const BOUNDARY_HEADERS_MAX: usize = 32;

/// The last batch boundary in `seg` at or below `limit`, walking headers
/// from `position` (a boundary); `None` if that takes more than
/// [`BOUNDARY_HEADERS_MAX`] of them (many small batches).
fn last_boundary_within(seg: &Segment, mut position: u64, limit: u64) -> Result<Option<u64>> {
    for _ in 0..BOUNDARY_HEADERS_MAX {
        let Some(header) = read_header_at(seg.file(), position, seg.size())? else {
            return Ok(Some(position));
        };
        let next = position + header.total_size();
        if next > limit {
            return Ok(Some(position));
        }
        position = next;
    }
    Ok(None)
}

/// One partition's log. See the crate docs for the on-disk layout.
#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    config: LogConfig,
    /// Keyed by base offset; never empty, the last one is active.
    segments: BTreeMap<i64, Segment>,
    log_start_offset: i64,
    /// Everything below this offset is on disk (fsynced).
    recovery_point: i64,
    /// When the oldest unflushed append happened; drives `flush.ms`.
    unflushed_since_ms: Option<i64>,
    leader_epochs: LeaderEpochCache,
    producers: ProducerStateManager,
    producer_id_expiration_ms: i64,
    /// Set while a clean of this log is under way (see `cleaner`).
    cleaning: Arc<AtomicBool>,
}

impl Log {
    /// Opens (creating if missing) the partition directory `dir`.
    /// `recover_from`: `None` after a clean shutdown; `Some(recovery_point)`
    /// to verify every batch at or past it and cut off a bad tail.
    pub fn open(
        dir: PathBuf,
        topic_id: &str,
        config: LogConfig,
        recover_from: Option<i64>,
        producer_id_expiration_ms: i64,
        now_ms: i64,
    ) -> Result<Log> {
        std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        ensure_partition_metadata(&dir, topic_id)?;
        let (mut segments, txn_index_from) =
            load_segments(&dir, recover_from, config.index_interval_bytes)?;
        if segments.is_empty() {
            segments.insert(0, Segment::create(&dir, 0)?);
            sync_dir(&dir)?;
        }
        let log_start_offset = *segments.keys().next().expect("at least one segment");
        let mut log = Log {
            dir,
            config,
            segments,
            log_start_offset,
            recovery_point: 0,
            unflushed_since_ms: None,
            leader_epochs: LeaderEpochCache::default(),
            producers: ProducerStateManager::default(),
            producer_id_expiration_ms,
            cleaning: Arc::new(AtomicBool::new(false)),
        };
        let log_end_offset = log.log_end_offset();
        log.recovery_point = log_end_offset;
        log.leader_epochs = LeaderEpochCache::load(&log.dir)?;
        log.leader_epochs
            .truncate_from_end(&log.dir, log_end_offset)?;
        log.leader_epochs
            .truncate_from_start(&log.dir, log_start_offset)?;
        log.rebuild_producer_state(txn_index_from)?;
        if let Some(from) = txn_index_from {
            // Recovered data, and the transaction indexes just rebuilt, may
            // sit only in the page cache of a crashed process; make them
            // durable before calling them recovered. Every recovered
            // segment's index was rebuilt, so this covers them all.
            for seg in log.segments.range(from..).map(|(_, s)| s) {
                seg.sync_all()?;
            }
        }
        log.producers.expire(now_ms, producer_id_expiration_ms);
        Ok(log)
    }

    /// Loads the newest usable producer snapshot and replays the log after
    /// it. With `txn_index_from` (a segment base: the segments from there
    /// on have emptied transaction indexes), the replay starts at or below
    /// it and puts back every aborted transaction whose marker it passes.
    fn rebuild_producer_state(&mut self, txn_index_from: Option<i64>) -> Result<()> {
        let log_end = self.log_end_offset();
        let snapshot = self.producers.load_latest(
            &self.dir,
            txn_index_from.map_or(log_end, |from| from.min(log_end)),
            log_end,
            self.log_start_offset,
        )?;
        // Without a snapshot, state starts at the log start, which a
        // segment to reindex may begin below.
        let from = txn_index_from.map_or(snapshot, |f| f.min(snapshot));
        let bases: Vec<i64> = self
            .segments
            .values()
            .filter(|s| s.next_offset() > from)
            .map(|s| s.base_offset)
            .collect();
        for base in bases {
            let seg = &self.segments[&base];
            let batches = seg
                .headers_from(from)?
                .into_iter()
                .map(|(pos, h)| {
                    let marker = if h.is_control() {
                        batch::end_txn_marker_of(&seg.read_batch(pos, &h)?)?
                    } else {
                        None
                    };
                    Ok((h, marker))
                })
                .collect::<Result<Vec<_>>>()?;
            for (h, marker) in &batches {
                let index = txn_index_from.is_some_and(|f| h.base_offset >= f);
                self.apply_batch(h, *marker, index)?;
            }
        }
        Ok(())
    }

    /// The one way a batch in the log reaches producer state, whether the
    /// leader or a coordinator appended it, a follower copied it, or a
    /// replay read it back: the producer's entry moves on, and an ABORT
    /// marker ending a transaction puts that transaction in the marker's
    /// segment's transaction index (when `index`: every append, and on
    /// replay the indexes being rebuilt), with the first unstable offset
    /// once it is over.
    fn apply_batch(
        &mut self,
        h: &RecordBatchHeader,
        marker: Option<EndTxnMarker>,
        index: bool,
    ) -> Result<()> {
        let Some(txn) = self.producers.replay(h, marker) else {
            return Ok(());
        };
        if !txn.aborted || !index {
            return Ok(());
        }
        let aborted = AbortedTxn {
            producer_id: txn.producer_id,
            first_offset: txn.first_offset,
            last_offset: txn.last_offset,
            last_stable_offset: self.producers.last_stable_offset(&txn),
        };
        let (_, seg) = self
            .segments
            .range_mut(..=txn.last_offset)
            .next_back()
            .expect("the marker is in the log");
        seg.append_aborted_txn(aborted)
    }

    fn active(&self) -> &Segment {
        self.segments
            .values()
            .next_back()
            .expect("at least one segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .values_mut()
            .next_back()
            .expect("at least one segment")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset
    }

    pub fn log_end_offset(&self) -> i64 {
        self.active().next_offset()
    }

    pub fn size_bytes(&self) -> u64 {
        self.segments.values().map(Segment::size).sum()
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    pub fn recovery_point(&self) -> i64 {
        self.recovery_point
    }

    pub fn flushed_offset(&self) -> i64 {
        self.recovery_point
    }

    pub fn leader_epoch_cache(&self) -> &LeaderEpochCache {
        &self.leader_epochs
    }

    /// Where `epoch` ends in this log (see
    /// [`LeaderEpochCache::end_offset_for_epoch`]): OffsetForLeaderEpoch's
    /// answer, the leader's divergence check on a fetch, and the follower's
    /// side of the truncation that follows.
    pub fn end_offset_for_epoch(&self, epoch: i32) -> Option<(i32, i64)> {
        self.leader_epochs
            .end_offset_for_epoch(epoch, self.log_end_offset())
    }

    /// A new leader records that its epoch starts at the log end before it
    /// writes anything (Kafka's `maybeAssignEpochStartOffset` on becoming
    /// leader): where the previous epoch ended is then known even while the
    /// new one is empty, so a follower holding more of it truncates.
    pub fn assign_epoch_start_offset(&mut self, epoch: i32) -> Result<()> {
        let log_end = self.log_end_offset();
        self.leader_epochs.assign(&self.dir, epoch, log_end)?;
        Ok(())
    }

    /// The producer's current state, if any (for tests and InitProducerId).
    pub fn producer_state(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.producers.get(producer_id)
    }

    // -- Transactions ------------------------------------------------------

    /// The smallest first offset of any ongoing transaction; the last
    /// stable offset is the smaller of this and the high watermark. Never
    /// below the log start, which retention or DeleteRecords may move past
    /// the start of a transaction still open (as Kafka's
    /// `maybeIncrementFirstUnstableOffset` keeps it).
    pub fn first_unstable_offset(&self) -> Option<i64> {
        self.producers
            .first_unstable_offset()
            .map(|offset| offset.max(self.log_start_offset))
    }

    /// Every producer this log remembers, by id (DescribeProducers).
    pub fn producers(&self) -> Vec<(i64, &ProducerEntry)> {
        let mut producers: Vec<_> = self.producers.iter().collect();
        producers.sort_unstable_by_key(|(id, _)| *id);
        producers
    }

    /// Ongoing transactions, by first offset.
    pub fn ongoing_transactions(&self) -> Vec<OngoingTxn> {
        self.producers.ongoing_txns().collect()
    }

    /// Whether the producer has a transaction open here: a transactional
    /// produce that would start one must first be verified with the
    /// transaction coordinator (KIP-890).
    pub fn has_ongoing_transaction(&self, producer_id: i64) -> bool {
        self.producer_state(producer_id)
            .is_some_and(|e| e.current_txn_first_offset.is_some())
    }

    /// Every aborted transaction overlapping `[start_offset,
    /// upper_bound_offset)`, for a `read_committed` fetch (Kafka's
    /// `collectAbortedTransactions`). An entry lives in the segment of its
    /// marker, so the search runs from the segment holding `start_offset`
    /// onwards, until an entry whose last stable offset reaches the upper
    /// bound: no transaction indexed after it starts below that.
    pub fn aborted_transactions(
        &self,
        start_offset: i64,
        upper_bound_offset: i64,
    ) -> Result<Vec<AbortedTxn>> {
        Ok(self.collect_aborted_txns(start_offset, upper_bound_offset))
    }

    pub(crate) fn collect_aborted_txns(
        &self,
        start_offset: i64,
        upper_bound_offset: i64,
    ) -> Vec<AbortedTxn> {
        let floor = self
            .segments
            .range(..=start_offset)
            .next_back()
            .map_or(i64::MIN, |(&base, _)| base);
        let mut found = Vec::new();
        for txn in self
            .segments
            .range(floor..)
            .flat_map(|(_, s)| s.aborted_txns())
        {
            if txn.last_offset >= start_offset && txn.first_offset < upper_bound_offset {
                found.push(*txn);
            }
            if txn.last_stable_offset >= upper_bound_offset {
                break;
            }
        }
        found
    }

    /// Raises the log start offset, e.g. from `log-start-offset-checkpoint`.
    /// Segments wholly below it go at the next `delete_old_segments`.
    pub fn maybe_increment_log_start_offset(&mut self, offset: i64) -> Result<()> {
        if offset > self.log_start_offset && offset <= self.log_end_offset() {
            self.log_start_offset = offset;
            self.leader_epochs.truncate_from_start(&self.dir, offset)?;
        }
        Ok(())
    }

    pub fn update_config(&mut self, config: LogConfig) {
        self.config = config;
    }

    // -- Appends -----------------------------------------------------------

    /// Appends client batches as the leader: validates them all, checks
    /// idempotent and transactional producer state, assigns offsets and the
    /// leader epoch in copies of their headers, and writes those with the
    /// records as sent. Nothing is written if any check fails.
    pub fn append_as_leader(
        &mut self,
        batches: &[u8],
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<LogAppendResult> {
        self.append(batches, leader_epoch, now_ms, AppendOrigin::Client)
    }

    /// [`Log::append_as_leader`] for a coordinator writing on a producer's
    /// behalf, as the group coordinator writes TxnOffsetCommit records: a
    /// transactional batch with the producer's id and epoch but no
    /// sequence, so sequences are not checked; epochs and transactions are.
    /// Control batches are taken as transaction markers.
    pub fn append_as_coordinator(
        &mut self,
        batches: &[u8],
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<LogAppendResult> {
        self.append(batches, leader_epoch, now_ms, AppendOrigin::Coordinator)
    }

    /// Writes a transaction marker as the leader (WriteTxnMarkers): ends
    /// the producer's transaction here, and for an ABORT indexes it. A
    /// marker from an older producer epoch is a fenced decision and is
    /// refused, and so is one from a lower coordinator epoch than the
    /// producer's last marker (a deposed coordinator); nothing is written
    /// then. One for a producer with no transaction here is written all
    /// the same, as Kafka does, and ends nothing.
    pub fn append_marker(
        &mut self,
        producer_id: i64,
        producer_epoch: i16,
        marker: ControlRecordType,
        coordinator_epoch: i32,
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<LogAppendResult> {
        let batch = batch::end_txn_marker(
            marker,
            producer_id,
            producer_epoch,
            coordinator_epoch,
            now_ms,
        );
        self.append(&batch, leader_epoch, now_ms, AppendOrigin::Coordinator)
    }

    fn append(
        &mut self,
        batches: &[u8],
        leader_epoch: i32,
        now_ms: i64,
        origin: AppendOrigin,
    ) -> Result<LogAppendResult> {
        assert!(leader_epoch >= 0, "leader epoch {leader_epoch} is negative");
        let max_message_bytes = u64::from(self.config.max_message_bytes);
        let mut spans = Vec::new();
        for item in BatchIter::strict(batches) {
            let (header, range) = item?;
            if header.total_size() > max_message_bytes {
                return Err(StorageError::MessageTooLarge {
                    size: header.total_size(),
                    max: max_message_bytes,
                });
            }
            let keys = if self.config.cleanup_policy.compact {
                Keys::Required
            } else {
                Keys::Optional
            };
            let header = batch::validate_batch_keys(&batches[range.clone()], keys)?;
            if header.is_control() && origin == AppendOrigin::Client {
                return Err(StorageError::InvalidRecord(
                    "clients may not send control batches".into(),
                ));
            }
            if header.record_count == 0 {
                return Err(StorageError::InvalidRecord("batch holds no records".into()));
            }
            let marker = batch::end_txn_marker_of(&batches[range.clone()])?;
            if header.is_control() && marker.is_none() {
                return Err(StorageError::InvalidRecord(
                    "control batch is not a transaction marker".into(),
                ));
            }
            spans.push((header, range, marker));
        }
        if spans.is_empty() {
            return Err(StorageError::InvalidRecord(
                "produce holds no batches".into(),
            ));
        }
        let total = batches.len() as u64;
        let segment_bytes = self.config.effective_segment_bytes();
        if total > segment_bytes {
            return Err(StorageError::RecordListTooLarge {
                size: total,
                max: segment_bytes,
            });
        }
        let log_append_time = self.config.message_timestamp_type == TimestampType::LogAppendTime;

        // Plan offsets and check producer state before touching anything.
        // `checked` is each producer's entry as the batches before leave it;
        // once written, the batches reach producer state by `apply_batch`,
        // as a follower's would.
        let first_offset = self.log_end_offset();
        let mut next_offset = first_offset;
        let mut checked: HashMap<i64, ProducerEntry> = HashMap::new();
        for (header, _, marker) in &spans {
            let mut assigned = *header;
            assigned.base_offset = next_offset;
            if log_append_time {
                assigned.max_timestamp = now_ms;
            }
            if header.producer_id >= 0 {
                let pid = header.producer_id;
                let current = checked.get(&pid).or_else(|| self.producers.get(pid));
                let sequence = if origin == AppendOrigin::Client {
                    check_batch(current, header)?
                } else {
                    SequenceCheck::Append
                };
                match sequence {
                    SequenceCheck::Duplicate(dup) => {
                        return Ok(LogAppendResult {
                            first_offset: dup.first_offset,
                            last_offset: dup.last_offset,
                            log_append_time: -1,
                            log_start_offset: self.log_start_offset,
                            max_timestamp: dup.timestamp,
                            record_count: (dup.last_offset - dup.first_offset + 1) as u64,
                            duplicate: true,
                            needs_flush: false,
                        });
                    }
                    SequenceCheck::Append => {}
                }
                let (entry, _) = append_batch(current, &assigned, *marker, origin)?;
                checked.insert(pid, entry);
            }
            next_offset = assigned.next_offset();
        }

        let mut header_bytes = Vec::with_capacity(spans.len());
        let mut headers = Vec::with_capacity(spans.len());
        let mut offset = first_offset;
        for (_, range, _) in &spans {
            let bytes = &batches[range.clone()];
            let header = batch::assigned_header(
                bytes,
                offset,
                leader_epoch,
                log_append_time.then_some(now_ms),
            );
            let patched = RecordBatchHeader::parse(&header)?;
            offset = patched.next_offset();
            headers.push(patched);
            header_bytes.push(header);
        }
        let mut pieces: Vec<IoSlice<'_>> = header_bytes
            .iter()
            .zip(&spans)
            .flat_map(|(header, (_, range, _))| {
                let records = &batches[range.start + RECORD_BATCH_HEADER_BYTES..range.end];
                [IoSlice::new(header), IoSlice::new(records)]
            })
            .collect();
        let last_offset = next_offset - 1;
        self.write(
            &mut pieces,
            &headers,
            first_offset,
            last_offset,
            now_ms,
            true,
        )?;
        self.leader_epochs
            .assign(&self.dir, leader_epoch, first_offset)?;
        for (h, (_, _, marker)) in headers.iter().zip(&spans) {
            self.apply_batch(h, *marker, true)?;
        }
        let record_count: u64 = headers.iter().map(|h| h.record_count as u64).sum();
        Ok(LogAppendResult {
            first_offset,
            last_offset,
            log_append_time: if log_append_time { now_ms } else { -1 },
            log_start_offset: self.log_start_offset,
            max_timestamp: headers.iter().map(|h| h.max_timestamp).max().unwrap_or(-1),
            record_count,
            duplicate: false,
            needs_flush: self.needs_flush(now_ms),
        })
    }

    /// Appends batches that already carry offsets (replication). Checks
    /// framing and CRCs and that offsets only move forward.
    pub fn append_as_follower(&mut self, batches: &[u8]) -> Result<LogAppendResult> {
        let mut headers = Vec::new();
        let mut markers = Vec::new();
        let log_end = self.log_end_offset();
        let mut expected = log_end;
        let mut restart_at = None;
        for item in BatchIter::strict(batches) {
            let (header, range) = item?;
            check_framing(&header)?;
            check_crc(&header, &batches[range.clone()])?;
            // A leader whose log start falls inside a batch (DeleteRecords)
            // sends that whole batch to a follower fetching from its log
            // start. An empty log takes it by restarting at the batch's
            // base offset, as Kafka's follower does; the leader's log start
            // comes back with the next fetch answer.
            if headers.is_empty()
                && log_end == self.log_start_offset
                && (0..log_end).contains(&header.base_offset)
                && header.last_offset() >= log_end
            {
                restart_at = Some(header.base_offset);
                expected = header.base_offset;
            }
            if header.base_offset < expected || header.last_offset_delta < 0 {
                return Err(StorageError::UnexpectedAppendOffset {
                    first_offset: header.base_offset,
                    log_end: expected,
                });
            }
            expected = header.next_offset();
            headers.push(header);
            markers.push(batch::end_txn_marker_of(&batches[range])?);
        }
        let (Some(first), Some(last)) = (headers.first(), headers.last()) else {
            return Err(StorageError::InvalidRecord(
                "append holds no batches".into(),
            ));
        };
        let (first_offset, last_offset) = (first.base_offset, last.last_offset());
        if let Some(base) = restart_at {
            tracing::info!(log = %self.dir.display(), from = log_end, to = base, "the leader's first batch starts below this empty log: restarting the log at its base offset");
            self.truncate_fully_and_start_at(base)?;
        }
        // Followers roll by size only; `roll_if_due` handles segment.ms.
        let rolling_ms = first.max_timestamp;
        self.write(
            &mut [IoSlice::new(batches)],
            &headers,
            first_offset,
            last_offset,
            rolling_ms,
            false,
        )?;
        for (h, marker) in headers.iter().zip(markers) {
            self.leader_epochs
                .assign(&self.dir, h.partition_leader_epoch, h.base_offset)?;
            self.apply_batch(h, marker, true)?;
        }
        Ok(LogAppendResult {
            first_offset,
            last_offset,
            log_append_time: -1,
            log_start_offset: self.log_start_offset,
            max_timestamp: headers.iter().map(|h| h.max_timestamp).max().unwrap_or(-1),
            record_count: headers.iter().map(|h| h.record_count.max(0) as u64).sum(),
            duplicate: false,
            needs_flush: false,
        })
    }

    fn write(
        &mut self,
        bytes: &mut [IoSlice<'_>],
        headers: &[RecordBatchHeader],
        first_offset: i64,
        last_offset: i64,
        now_ms: i64,
        time_roll: bool,
    ) -> Result<()> {
        self.maybe_roll(
            headers.iter().map(RecordBatchHeader::total_size).sum(),
            first_offset,
            last_offset,
            now_ms,
            time_roll,
        )?;
        if self.recovery_point == self.log_end_offset() {
            self.unflushed_since_ms = Some(now_ms);
        }
        let interval = self.config.index_interval_bytes;
        self.active_mut().append(bytes, headers, interval, now_ms)
    }

    fn maybe_roll(
        &mut self,
        size: u64,
        first_offset: i64,
        last_offset: i64,
        now_ms: i64,
        time_roll: bool,
    ) -> Result<()> {
        let config = &self.config;
        let seg = self.active();
        if seg.is_empty() {
            // A follower may jump ahead; an empty active segment is simply
            // re-based there so relative offsets stay small.
            if first_offset != seg.base_offset {
                let base = seg.base_offset;
                let old = self.segments.remove(&base).expect("active segment");
                old.delete_files()?;
                self.segments
                    .insert(first_offset, Segment::create(&self.dir, first_offset)?);
                if base == self.log_start_offset && self.segments.len() == 1 {
                    self.log_start_offset = first_offset;
                }
                sync_dir(&self.dir)?;
            }
            return Ok(());
        }
        let full = seg.size() + size > config.effective_segment_bytes();
        let old = time_roll
            && seg
                .rolling_ms()
                .is_some_and(|t| now_ms.saturating_sub(t) >= config.effective_segment_ms());
        let offsets = last_offset - seg.base_offset > SEGMENT_RELATIVE_OFFSET_MAX;
        let indexes = seg.indexes_full(config.segment_index_bytes);
        if full || old || offsets || indexes {
            tracing::debug!(dir = %self.dir.display(), full, old, offsets, indexes, "rolling segment");
            self.roll(first_offset)?;
        }
        Ok(())
    }

    /// Starts a new active segment at `base_offset`. The outgoing segment is
    /// fsynced, so everything below the new base is durable.
    fn roll(&mut self, base_offset: i64) -> Result<()> {
        let log_end_offset = self.log_end_offset();
        assert!(base_offset >= log_end_offset, "roll below the log end");
        assert!(!self.active().is_empty(), "rolling an empty segment");
        self.active_mut().on_become_inactive()?;
        self.producers.take_snapshot(&self.dir, log_end_offset)?;
        self.segments
            .insert(base_offset, Segment::create(&self.dir, base_offset)?);
        sync_dir(&self.dir)?;
        self.mark_flushed(log_end_offset);
        Ok(())
    }

    /// Rolls the active segment if `segment.ms` (on compacted logs at most
    /// `max.compaction.lag.ms`) has passed since its first append.
    pub fn roll_if_due(&mut self, now_ms: i64) -> Result<()> {
        let seg = self.active();
        if !seg.is_empty()
            && seg
                .rolling_ms()
                .is_some_and(|t| now_ms.saturating_sub(t) >= self.config.effective_segment_ms())
        {
            self.roll(self.log_end_offset())?;
        }
        Ok(())
    }

    /// Flushes once `flush.ms` has passed since the oldest unflushed append
    /// (or `flush.messages` is reached); the broker's upkeep calls this.
    pub fn flush_if_due(&mut self, now_ms: i64) -> Result<()> {
        if self.recovery_point < self.log_end_offset() && self.needs_flush(now_ms) {
            self.flush()?;
        }
        Ok(())
    }

    fn needs_flush(&self, now_ms: i64) -> bool {
        let unflushed = self.log_end_offset() - self.recovery_point;
        unflushed >= self.config.flush_messages
            || self
                .unflushed_since_ms
                .is_some_and(|t| now_ms.saturating_sub(t) >= self.config.flush_ms)
    }

    // -- Reads -------------------------------------------------------------

    /// Locates whole batches from the one holding `start_offset`, within one
    /// segment, below `max_offset`, up to `max_bytes` (or the first batch
    /// whole if `min_one_batch`). Cheap: only index lookups and header reads.
    pub fn read(
        &self,
        start_offset: i64,
        max_bytes: u32,
        max_offset: i64,
        min_one_batch: bool,
    ) -> Result<FetchSlice> {
        let log_end = self.log_end_offset();
        if start_offset < self.log_start_offset || start_offset > log_end {
            return Err(StorageError::OffsetOutOfRange {
                requested: start_offset,
                log_start: self.log_start_offset,
                log_end,
            });
        }
        if start_offset >= max_offset || start_offset == log_end {
            return Ok(FetchSlice::empty());
        }
        let floor = self
            .segments
            .range(..=start_offset)
            .next_back()
            .map_or(self.log_start_offset, |(&b, _)| b);
        for seg in self.segments.range(floor..).map(|(_, s)| s) {
            if seg.next_offset() <= start_offset {
                continue;
            }
            let Some((mut position, mut first)) = seg.find_batch(start_offset)? else {
                continue;
            };
            // Batches the cleaner emptied (kept for their offsets) are
            // skipped: a response holding nothing else would look to
            // librdkafka like a batch too large for its fetch size. A
            // segment holding nothing else is passed over.
            let emptied = |h: &RecordBatchHeader| h.record_count() == 0 && !h.is_control();
            while emptied(&first) {
                let next = position + first.total_size();
                let Some(header) = read_header_at(seg.file(), next, seg.size())? else {
                    break;
                };
                (position, first) = (next, header);
            }
            if emptied(&first) {
                continue;
            }
            if first.last_offset() >= max_offset {
                return Ok(FetchSlice::empty());
            }
            let end = if max_offset >= seg.next_offset() {
                seg.size()
            } else {
                seg.find_batch(max_offset)?
                    .map_or(seg.size(), |(pos, _)| pos)
            };
            let first_size = first.total_size();
            let max_bytes = u64::from(max_bytes);
            let (len, whole) = if first_size > max_bytes {
                (if min_one_batch { first_size } else { 0 }, true)
            } else if end - position <= max_bytes {
                (end - position, true)
            } else {
                // The first batch fits (checked above): walk on from its end.
                let second = position + first_size;
                match last_boundary_within(seg, second, position + max_bytes)? {
                    Some(boundary) => (boundary - position, true),
                    None => (max_bytes, false),
                }
            };
            return Ok(FetchSlice {
                file: (len > 0).then(|| Arc::clone(seg.file())),
                position,
                len,
                whole,
                first_offset: first.base_offset,
            });
        }
        Ok(FetchSlice::empty())
    }

    /// The first record with timestamp ≥ `timestamp`: its offset and
    /// timestamp. For compressed batches (which we never decompress) and
    /// LogAppendTime batches this is the batch's base offset and max
    /// timestamp, an approximation Kafka avoids by decompressing.
    pub fn fetch_offset_by_timestamp(&self, timestamp: i64) -> Result<Option<(i64, i64)>> {
        for seg in self.segments.values() {
            if seg.is_empty()
                || seg.max_timestamp() < timestamp
                || seg.next_offset() <= self.log_start_offset
            {
                continue;
            }
            let mut pos = seg.time_lookup_position(timestamp);
            while let Some(h) = read_header_at(seg.file(), pos, seg.size())? {
                check_framing(&h).map_err(|e| StorageError::Corrupt(e.to_string()))?;
                if h.total_size() > seg.size() - pos {
                    return Err(StorageError::Corrupt(format!(
                        "batch at {pos} runs past its segment"
                    )));
                }
                if h.max_timestamp >= timestamp && h.last_offset() >= self.log_start_offset {
                    return self
                        .find_record_by_timestamp(seg, pos, &h, timestamp)
                        .map(Some);
                }
                pos += h.total_size();
            }
        }
        Ok(None)
    }

    fn find_record_by_timestamp(
        &self,
        seg: &Segment,
        pos: u64,
        h: &RecordBatchHeader,
        timestamp: i64,
    ) -> Result<(i64, i64)> {
        let fallback = (h.base_offset.max(self.log_start_offset), h.max_timestamp);
        if h.compression() != Compression::None
            || h.timestamp_type() == TimestampType::LogAppendTime
        {
            return Ok(fallback);
        }
        let mut bytes = vec![0u8; h.total_size() as usize];
        seg.file()
            .read_exact_at(&mut bytes, pos)
            .ctx(|| format!("reading batch at {pos} of {}", seg.log_path().display()))?;
        for record in batch::iter_records(&bytes)? {
            let record = record.map_err(|e| StorageError::Corrupt(e.to_string()))?;
            if record.timestamp >= timestamp && record.offset >= self.log_start_offset {
                return Ok((record.offset, record.timestamp));
            }
        }
        Ok(fallback)
    }

    /// The largest timestamp in the log and the last offset of the batch
    /// holding it (Kafka's batch-level answer), or (-1, -1) when empty.
    pub fn max_timestamp_and_offset(&self) -> (i64, i64) {
        let mut best = (keel_types::NO_TIMESTAMP, -1);
        for seg in self.segments.values().filter(|s| !s.is_empty()) {
            if seg.max_timestamp() > best.0 {
                best = (seg.max_timestamp(), seg.offset_of_max_timestamp());
            }
        }
        best
    }

    // -- Durability --------------------------------------------------------

    /// Fsyncs every segment holding unflushed data; returns the new
    /// recovery point (the log end offset).
    pub fn flush(&mut self) -> Result<i64> {
        let point = self.recovery_point;
        for seg in self.segments.values().filter(|s| s.next_offset() > point) {
            seg.sync_all()?;
        }
        let log_end = self.log_end_offset();
        self.mark_flushed(log_end);
        Ok(log_end)
    }

    /// The active segment's file, so the caller can fsync outside its lock
    /// and then call `mark_flushed` with the log end offset it saw.
    pub fn active_segment_file(&self) -> Arc<File> {
        Arc::clone(self.active().file())
    }

    /// Records that everything below `offset` is durable. Rolls fsync the
    /// outgoing segment, so only the active segment needs the caller's fsync.
    pub fn mark_flushed(&mut self, offset: i64) {
        let offset = offset.min(self.log_end_offset());
        if offset > self.recovery_point {
            self.recovery_point = offset;
        }
        if self.recovery_point == self.log_end_offset() {
            self.unflushed_since_ms = None;
        }
    }

    // -- Retention and truncation -----------------------------------------

    pub(crate) fn dir_path(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn segments(&self) -> &BTreeMap<i64, Segment> {
        &self.segments
    }

    /// Removes the oldest segment (never the only one) and advances the log
    /// start offset past it.
    pub(crate) fn delete_oldest_segment(&mut self) -> Result<()> {
        assert!(
            self.segments.len() > 1,
            "the active segment is never deleted"
        );
        let (_, seg) = self.segments.pop_first().expect("segments");
        tracing::info!(segment = %seg.log_path().display(), "deleting segment");
        seg.delete_files()?;
        let next_base = *self.segments.keys().next().expect("segments");
        if next_base > self.log_start_offset {
            self.log_start_offset = next_base;
            self.leader_epochs
                .truncate_from_start(&self.dir, next_base)?;
        }
        Ok(())
    }

    pub(crate) fn roll_active(&mut self) -> Result<()> {
        self.roll(self.log_end_offset())
    }

    // -- For the cleaner ---------------------------------------------------

    pub(crate) fn cleaning_flag(&self) -> &Arc<AtomicBool> {
        &self.cleaning
    }

    pub(crate) fn producer_last_records(&self) -> HashMap<i64, LastRecord> {
        self.producers.last_records()
    }

    /// Puts a cleaned segment in place of the closed segments it replaces,
    /// whose files are already unlinked, and returns those so the caller can
    /// close their files outside the log's lock. Offsets do not change, so
    /// neither the log start, the epochs nor the producer state do.
    pub(crate) fn replace_segments(&mut self, replaced: &[i64], cleaned: Segment) -> Vec<Segment> {
        let active_base = self.active().base_offset;
        assert!(
            cleaned.base_offset < active_base,
            "the active segment is never cleaned"
        );
        let mut removed = Vec::with_capacity(replaced.len());
        for base in replaced {
            assert!(base < &active_base, "the active segment is never cleaned");
            removed.push(
                self.segments
                    .remove(base)
                    .expect("install checked the replaced segments are present"),
            );
        }
        assert!(
            self.segments
                .range(cleaned.base_offset..)
                .next()
                .is_none_or(|(&next, _)| cleaned.next_offset() <= next),
            "a cleaned segment overlaps the next one"
        );
        self.segments.insert(cleaned.base_offset, cleaned);
        removed
    }

    /// Removes producers idle for longer than `producer_id_expiration_ms`.
    pub fn expire_producers(&mut self, now_ms: i64) {
        self.producers
            .expire(now_ms, self.producer_id_expiration_ms);
    }

    /// Cuts the log so that its end is at most `offset` (a batch straddling
    /// `offset` goes entirely). Below the log start, the log is emptied and
    /// restarted at `offset`.
    pub fn truncate_to(&mut self, offset: i64) -> Result<()> {
        if offset >= self.log_end_offset() {
            // Nothing to cut, but an epoch this broker started as leader
            // and never wrote in may sit at the log end; the new leader's
            // log does not have it, and a follower must not fetch with it.
            return self
                .leader_epochs
                .truncate_from_end(&self.dir, self.log_end_offset());
        }
        if offset < self.log_start_offset {
            return self.truncate_fully_and_start_at(offset);
        }
        let doomed: Vec<i64> = self.segments.range(offset..).map(|(&b, _)| b).collect();
        let keep_one = doomed.len() == self.segments.len();
        for base in doomed {
            let seg = self.segments.remove(&base).expect("listed segment");
            seg.delete_files()?;
        }
        if keep_one {
            self.segments
                .insert(offset, Segment::create(&self.dir, offset)?);
        } else {
            let (&base, _) = self.segments.last_key_value().expect("segments");
            let seg = self.segments.remove(&base).expect("segment");
            let seg = seg.truncate_to(offset, self.config.index_interval_bytes)?;
            self.segments.insert(base, seg);
        }
        sync_dir(&self.dir)?;
        self.after_truncation()
    }

    /// Empties the log and restarts it at `offset`, which becomes the log
    /// start: a follower whose whole log is older than the leader's log
    /// start (Kafka's `truncateFullyAndStartAt`). Epochs, producer state and
    /// snapshots go with the data.
    pub fn truncate_fully_and_start_at(&mut self, offset: i64) -> Result<()> {
        while let Some((_, seg)) = self.segments.pop_first() {
            seg.delete_files()?;
        }
        self.segments
            .insert(offset, Segment::create(&self.dir, offset)?);
        sync_dir(&self.dir)?;
        self.log_start_offset = offset;
        self.leader_epochs.truncate_from_end(&self.dir, i64::MIN)?;
        for snapshot in crate::producer_state::list_snapshots(&self.dir)? {
            crate::producer_state::remove_if_exists(&crate::producer_state::snapshot_path(
                &self.dir, snapshot,
            ))?;
        }
        self.after_truncation()
    }

    /// The transaction indexes were cut with their segments, so the replay
    /// only reopens the transactions whose markers went.
    fn after_truncation(&mut self) -> Result<()> {
        let log_end = self.log_end_offset();
        self.recovery_point = self.recovery_point.min(log_end);
        self.leader_epochs.truncate_from_end(&self.dir, log_end)?;
        self.rebuild_producer_state(None)
    }

    /// Flushes, records final index entries and snapshots producer state,
    /// so the next open needs no recovery.
    pub fn close(mut self) -> Result<()> {
        self.active_mut().on_become_inactive()?;
        self.flush()?;
        self.producers
            .take_snapshot(&self.dir, self.log_end_offset())?;
        Ok(())
    }

    /// Removes the partition directory and everything in it.
    pub fn delete(self) -> Result<()> {
        let dir = self.dir.clone();
        drop(self);
        std::fs::remove_dir_all(&dir).ctx(|| format!("deleting {}", dir.display()))
    }
}
