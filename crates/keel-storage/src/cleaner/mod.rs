//! Kafka's log cleaner: compaction of logs whose `cleanup.policy` includes
//! `compact`, keeping the latest record of every key.
//!
//! A clean runs in three steps so that appends and fetches never wait for it:
//!
//! 1. [`Log::prepare_clean`], under the caller's lock: snapshot what to
//!    clean (the closed segments from the log start to the first
//!    uncleanable offset, their files and sizes, the config, the dirty
//!    range, the producers' last batches). Reads no segment data.
//! 2. [`CleanerTask::clean`], on a blocking thread with no access to the
//!    log: build the offset map over the dirty section, then rewrite the
//!    segments into `.cleaned` files by positional reads of the closed
//!    segments, which nothing else writes.
//! 3. [`Log::install_cleaned`], under the lock: check that the segments to
//!    replace are still there unchanged (retention or truncation may have
//!    removed or cut them: then the clean is aborted and its files deleted),
//!    swap the files in (see [`swap`]) and replace the segments in memory.
//!    Readers holding a `FetchSlice` of an old segment keep its file.
//!
//! One clean per log at a time: `prepare_clean` declines while a task or its
//! result is alive, and dropping either ends the clean (deleting its files).
//! Drop them before closing or deleting the log, as Kafka aborts cleaning
//! before it removes a log.
//!
//! Offsets never change, so the leader-epoch cache and producer state stay
//! valid; segments only shrink. Nothing at or past the first unstable
//! offset is cleaned, so a transaction is over before its records are
//! judged; the data of aborted transactions goes, and a cleaned segment
//! keeps the transaction index entries of the segments it replaces.
//! [`Log::dirtiness`] and [`filthiest_log`] choose which log to clean, as
//! Kafka's `LogCleanerManager` does, and the first dirty offset of each log
//! lives in the log dir's `cleaner-offset-checkpoint` (see `LogManager`).

mod clean;
mod offset_map;
pub(crate) mod swap;
mod throttler;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use throttler::Throttler;

use crate::config::LogConfig;
use crate::error::{Result, StorageError};
use crate::log::Log;
use crate::producer_state::{remove_if_exists, LastRecord};
use crate::retention::largest_timestamp;
use crate::segment::{OpenedSegment, Segment};
use clean::AbortedTxns;

/// Broker-wide cleaner settings, named after Kafka's `log.cleaner.*`.
#[derive(Clone, Debug, PartialEq)]
pub struct CleanerConfig {
    /// `log.cleaner.threads`: the buffers below are divided among them.
    pub threads: usize,
    /// `log.cleaner.dedupe.buffer.size`: memory for all threads' offset maps.
    pub dedupe_buffer_bytes: u64,
    /// `log.cleaner.io.buffer.load.factor`: how full an offset map may get.
    pub dedupe_buffer_load_factor: f64,
    /// `log.cleaner.io.buffer.size`: read and write buffers of all threads.
    pub io_buffer_bytes: usize,
    /// `log.cleaner.io.max.bytes.per.second`, for the shared [`Throttler`].
    pub io_max_bytes_per_second: f64,
}

impl Default for CleanerConfig {
    fn default() -> Self {
        CleanerConfig {
            threads: 1,
            dedupe_buffer_bytes: 128 * 1024 * 1024,
            dedupe_buffer_load_factor: 0.9,
            io_buffer_bytes: 512 * 1024,
            io_max_bytes_per_second: f64::MAX,
        }
    }
}

impl CleanerConfig {
    /// One thread's offset map, capped at 2 GiB as Kafka caps it.
    fn offset_map_bytes(&self) -> usize {
        let per_thread = self.dedupe_buffer_bytes / self.threads.max(1) as u64;
        usize::try_from(per_thread.min(i32::MAX as u64)).expect("2 GiB fits usize")
    }

    /// One thread's read size: half its share, the other half being for
    /// writes, as Kafka splits it. Larger batches are read whole anyway.
    fn read_chunk_bytes(&self) -> usize {
        (self.io_buffer_bytes / self.threads.max(1) / 2).max(4096)
    }
}

/// A closed segment as step 1 saw it. Holding the file keeps it readable
/// even if retention deletes the segment meanwhile.
#[derive(Clone, Debug)]
struct SegmentSnapshot {
    base_offset: i64,
    file: Arc<File>,
    size: u64,
    next_offset: i64,
    index_bytes: u64,
    time_index_bytes: u64,
}

impl SegmentSnapshot {
    fn of(seg: &Segment) -> SegmentSnapshot {
        let (index_bytes, time_index_bytes) = seg.index_sizes();
        SegmentSnapshot {
            base_offset: seg.base_offset,
            file: Arc::clone(seg.file()),
            size: seg.size(),
            next_offset: seg.next_offset(),
            index_bytes,
            time_index_bytes,
        }
    }

    /// Whether `seg` is still the very segment this snapshot saw.
    fn matches(&self, seg: &Segment) -> bool {
        Arc::ptr_eq(&self.file, seg.file()) && seg.size() == self.size
    }
}

/// Marks a log as being cleaned for as long as its task or result lives,
/// so that two cleans never write the same `.cleaned` files.
#[derive(Debug)]
struct CleaningGuard(Arc<AtomicBool>);

impl CleaningGuard {
    fn acquire(flag: &Arc<AtomicBool>) -> Option<CleaningGuard> {
        flag.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| CleaningGuard(Arc::clone(flag)))
    }
}

impl Drop for CleaningGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Everything step 2 needs, taken from the log in step 1.
#[derive(Debug)]
pub struct CleanerTask {
    plan: CleanPlan,
    guard: CleaningGuard,
}

/// What to clean and how, fixed when the task is made.
#[derive(Debug)]
struct CleanPlan {
    dir: PathBuf,
    config: LogConfig,
    /// The closed segments from the log start to the first uncleanable
    /// offset, in offset order.
    segments: Vec<SegmentSnapshot>,
    first_dirty_offset: i64,
    /// Where the offset index says the batch holding the first dirty
    /// offset starts, in the segment holding it.
    first_dirty_position: u64,
    first_uncleanable_offset: i64,
    /// Producer id to the batch compaction must keep of it.
    last_records: HashMap<i64, LastRecord>,
    /// The aborted transactions starting below the first uncleanable offset.
    aborted: AbortedTxns,
    now_ms: i64,
}

impl CleanerTask {
    /// Where the dirty section starts (the checkpoint, or the log start if
    /// the checkpoint was out of range).
    pub fn first_dirty_offset(&self) -> i64 {
        self.plan.first_dirty_offset
    }

    /// Where the cleanable section ends: a segment base offset.
    pub fn first_uncleanable_offset(&self) -> i64 {
        self.plan.first_uncleanable_offset
    }
}

/// One cleaned segment awaiting its swap: it replaces the segments
/// snapshotted in `replaced`, the first of which has its base offset.
#[derive(Debug)]
struct CleanedGroup {
    replaced: Vec<SegmentSnapshot>,
}

impl CleanedGroup {
    fn base_offset(&self) -> i64 {
        self.replaced[0].base_offset
    }
}

/// What step 2 produced: `.cleaned` segments on disk, to install in step 3.
/// Dropping it without installing deletes those files.
#[derive(Debug)]
pub struct CleanedLog {
    dir: PathBuf,
    groups: Vec<CleanedGroup>,
    stats: CleanerStats,
    guard: CleaningGuard,
}

impl CleanedLog {
    pub fn stats(&self) -> &CleanerStats {
        &self.stats
    }
}

impl Drop for CleanedLog {
    fn drop(&mut self) {
        for group in &self.groups {
            for path in swap::cleaned_paths(&self.dir, group.base_offset()) {
                if let Err(e) = remove_if_exists(&path) {
                    tracing::warn!("cannot delete an abandoned cleaned segment: {e}");
                }
            }
        }
    }
}

/// What one clean did, for the broker's log line and the CLI's compaction
/// progress. Kafka's `CleanerStats`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CleanerStats {
    /// Where this clean's dirty section started.
    pub first_dirty_offset: i64,
    /// Where the next clean's dirty section starts: persist it in
    /// `cleaner-offset-checkpoint`. Below the first uncleanable offset when
    /// the offset map filled up.
    pub next_dirty_offset: i64,
    /// Bytes and records read to build the offset map.
    pub map_bytes_read: u64,
    pub map_records_read: u64,
    /// Bytes and records read and written while rewriting segments.
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub records_read: u64,
    pub records_retained: u64,
    /// Records without a key, which compaction drops (Kafka counts them
    /// as invalid).
    pub invalid_records_read: u64,
    pub segments_read: usize,
    pub segments_written: usize,
    /// The share of the offset map's slots in use.
    pub map_utilization: f64,
    pub map_elapsed: Duration,
    pub elapsed: Duration,
}

/// The outcome of [`Log::install_cleaned`].
#[derive(Debug)]
pub enum CleanOutcome {
    /// The cleaned segments replaced the old ones.
    Installed(CleanerStats, RetiredSegments),
    /// A segment to replace was deleted or changed while cleaning; the log
    /// is untouched and the checkpoint must stay where it was.
    Aborted { reason: String },
}

/// The replaced segments' open files. Drop this after releasing the log's
/// lock: closing the last handle of a large unlinked file frees its page
/// cache, tens of milliseconds per segment that appends would wait for.
#[derive(Debug)]
pub struct RetiredSegments {
    _segments: Vec<Segment>,
    _snapshots: Vec<CleanedGroup>,
}

/// How dirty a compacted log is: Kafka's `LogToClean`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LogDirtiness {
    /// The first dirty offset in effect: the checkpoint, or the log start
    /// if the checkpoint was out of range (then the caller should rewrite it).
    pub first_dirty_offset: i64,
    pub first_uncleanable_offset: i64,
    /// Bytes of segments below the first dirty offset.
    pub clean_bytes: u64,
    /// Bytes of segments from the first dirty offset to the first
    /// uncleanable one.
    pub cleanable_bytes: u64,
    /// How long past `max.compaction.lag.ms` the oldest dirty batch is; 0
    /// when none is overdue.
    pub max_compaction_delay_ms: i64,
    /// The log's `min.cleanable.dirty.ratio`.
    pub min_cleanable_dirty_ratio: f64,
}

impl LogDirtiness {
    /// Dirty bytes over all bytes up to the first uncleanable offset.
    pub fn cleanable_ratio(&self) -> f64 {
        let total = self.clean_bytes + self.cleanable_bytes;
        if total == 0 {
            0.0
        } else {
            self.cleanable_bytes as f64 / total as f64
        }
    }

    /// Kafka's rule: overdue by `max.compaction.lag.ms` with something to
    /// clean, or dirtier than `min.cleanable.dirty.ratio` (strictly, so a
    /// ratio of 0 does not clean a clean log over and over).
    pub fn is_cleanable(&self) -> bool {
        (self.max_compaction_delay_ms > 0 && self.cleanable_bytes > 0)
            || self.cleanable_ratio() > self.min_cleanable_dirty_ratio
    }
}

/// Kafka's `grabFilthiestCompactedLog`: of the cleanable logs, the one with
/// the highest dirty ratio.
pub fn filthiest_log<K>(
    candidates: impl IntoIterator<Item = (K, LogDirtiness)>,
) -> Option<(K, LogDirtiness)> {
    candidates
        .into_iter()
        .filter(|(_, d)| d.is_cleanable())
        .max_by(|(_, a), (_, b)| a.cleanable_ratio().total_cmp(&b.cleanable_ratio()))
}

/// The dirty section of a log, with Kafka's bounds.
struct CleanableRange {
    first_dirty_offset: i64,
    first_uncleanable_offset: i64,
}

impl Log {
    /// Kafka's `cleanableOffsets`: the checkpoint if it is within the log,
    /// else the log start; the cleanable section ends at the segment
    /// holding the smallest of the active segment's base, the caller's
    /// `upper_bound_offset` (the high watermark), the first unstable offset
    /// (the two making Kafka's last stable offset), and the first dirty
    /// segment with a record younger than `min.compaction.lag.ms`. Only
    /// whole closed segments are cleaned.
    fn cleanable_range(
        &self,
        checkpoint: Option<i64>,
        upper_bound_offset: i64,
        now_ms: i64,
    ) -> CleanableRange {
        let log_start = self.log_start_offset();
        let first_dirty_offset = checkpoint
            .filter(|&o| o >= log_start && o <= self.log_end_offset())
            .unwrap_or(log_start);
        let segments = self.segments();
        let active_base = *segments.keys().next_back().expect("at least one segment");
        let mut bound = upper_bound_offset.min(active_base);
        if let Some(unstable) = self.first_unstable_offset() {
            bound = bound.min(unstable);
        }
        let min_lag_ms = self.config().min_compaction_lag_ms;
        if min_lag_ms > 0 {
            let cutoff = now_ms.saturating_sub(min_lag_ms);
            let floor = self.floor_base(first_dirty_offset);
            if let Some(young) = segments
                .range(floor..active_base)
                .map(|(_, s)| s)
                .find(|s| largest_timestamp(s) > cutoff)
            {
                bound = bound.min(young.base_offset);
            }
        }
        CleanableRange {
            first_dirty_offset,
            first_uncleanable_offset: self.floor_base(bound).max(first_dirty_offset),
        }
    }

    /// The base of the segment holding `offset`, or `offset` below the first.
    fn floor_base(&self, offset: i64) -> i64 {
        self.segments()
            .range(..=offset)
            .next_back()
            .map_or(offset, |(&base, _)| base)
    }

    /// How dirty this log is, for [`filthiest_log`]; `None` unless its
    /// policy includes `compact`. `first_dirty_offset` is the log's entry in
    /// `cleaner-offset-checkpoint`, if any. Cheap: reads no segment data.
    pub fn dirtiness(
        &self,
        first_dirty_offset: Option<i64>,
        upper_bound_offset: i64,
        now_ms: i64,
    ) -> Option<LogDirtiness> {
        if !self.config().cleanup_policy.compact {
            return None;
        }
        let range = self.cleanable_range(first_dirty_offset, upper_bound_offset, now_ms);
        let segments = self.segments();
        let floor = self.floor_base(range.first_dirty_offset);
        let active_base = *segments.keys().next_back().expect("at least one segment");
        let clean_bytes = segments
            .range(..range.first_dirty_offset)
            .map(|(_, s)| s.size())
            .sum();
        let cleanable_bytes = segments
            .range(floor..range.first_uncleanable_offset.max(floor))
            .map(|(_, s)| s.size())
            .sum();
        let earliest_dirty_timestamp = segments
            .range(floor..active_base)
            .filter_map(|(_, s)| s.first_batch_timestamp())
            .filter(|&t| t > 0)
            .min();
        let clean_until = now_ms.saturating_sub(self.config().max_compaction_lag_ms.max(0));
        let max_compaction_delay_ms = earliest_dirty_timestamp
            .filter(|&t| t < clean_until)
            .map_or(0, |t| clean_until - t);
        Some(LogDirtiness {
            first_dirty_offset: range.first_dirty_offset,
            first_uncleanable_offset: range.first_uncleanable_offset,
            clean_bytes,
            cleanable_bytes,
            max_compaction_delay_ms,
            min_cleanable_dirty_ratio: self.config().min_cleanable_dirty_ratio,
        })
    }

    /// Step 1 of a clean (see the module docs): call under the log's lock.
    /// `None` when the policy does not include `compact`, nothing is dirty,
    /// or this log is already being cleaned. Cheap: reads no segment data.
    pub fn prepare_clean(
        &self,
        first_dirty_offset: Option<i64>,
        upper_bound_offset: i64,
        now_ms: i64,
    ) -> Option<CleanerTask> {
        if !self.config().cleanup_policy.compact {
            return None;
        }
        let range = self.cleanable_range(first_dirty_offset, upper_bound_offset, now_ms);
        if range.first_dirty_offset >= range.first_uncleanable_offset {
            return None;
        }
        let guard = CleaningGuard::acquire(self.cleaning_flag())?;
        let segments: Vec<SegmentSnapshot> = self
            .segments()
            .range(..range.first_uncleanable_offset)
            .map(|(_, s)| SegmentSnapshot::of(s))
            .collect();
        let first_dirty_position = self
            .segments()
            .range(..=range.first_dirty_offset)
            .next_back()
            .map_or(0, |(_, s)| s.index_position(range.first_dirty_offset));
        Some(CleanerTask {
            plan: CleanPlan {
                dir: self.dir().to_path_buf(),
                config: self.config().clone(),
                segments,
                first_dirty_offset: range.first_dirty_offset,
                first_dirty_position,
                first_uncleanable_offset: range.first_uncleanable_offset,
                last_records: self.producer_last_records(),
                aborted: AbortedTxns::new(
                    self.collect_aborted_txns(i64::MIN, range.first_uncleanable_offset),
                ),
                now_ms,
            },
            guard,
        })
    }

    /// Step 3 of a clean: call under the log's lock. Swaps the cleaned
    /// segments in unless a segment they replace was deleted or changed
    /// since step 1. An `Err` means the swap stopped part way: the next
    /// open of the log completes or discards it, so take the log offline.
    pub fn install_cleaned(&mut self, mut cleaned: CleanedLog) -> Result<CleanOutcome> {
        assert!(
            Arc::ptr_eq(&cleaned.guard.0, self.cleaning_flag()),
            "a clean installed into another log"
        );
        for group in &cleaned.groups {
            for old in &group.replaced {
                if !self
                    .segments()
                    .get(&old.base_offset)
                    .is_some_and(|seg| old.matches(seg))
                {
                    let reason = format!(
                        "segment {} was deleted or changed while cleaning",
                        old.base_offset
                    );
                    tracing::info!(dir = %self.dir().display(), "{reason}; aborting clean");
                    return Ok(CleanOutcome::Aborted { reason });
                }
            }
        }
        let groups = std::mem::take(&mut cleaned.groups);
        let mut retired = Vec::new();
        for (i, group) in groups.iter().enumerate() {
            let replaced: Vec<i64> = group.replaced.iter().map(|s| s.base_offset).collect();
            let swapped = swap::swap_steps(self.dir(), group.base_offset(), &replaced)
                .iter()
                .try_for_each(swap::SwapStep::run)
                .and_then(|()| {
                    Segment::open(
                        self.dir(),
                        group.base_offset(),
                        false,
                        self.config().index_interval_bytes,
                    )
                })
                .and_then(|opened| match opened {
                    // Refilling it takes a replay, which the next open does.
                    OpenedSegment {
                        txn_index_lost: true,
                        segment,
                        ..
                    } => Err(StorageError::Corrupt(format!(
                        "cleaned segment {} has an unreadable transaction index",
                        segment.base_offset
                    ))),
                    OpenedSegment { segment, .. } => Ok(segment),
                });
            match swapped {
                Ok(segment) => retired.extend(self.replace_segments(&replaced, segment)),
                Err(e) => {
                    // Later groups never started their swap: drop their files.
                    cleaned.groups = groups.into_iter().skip(i + 1).collect();
                    return Err(e);
                }
            }
        }
        Ok(CleanOutcome::Installed(
            cleaned.stats.clone(),
            RetiredSegments {
                _segments: retired,
                _snapshots: groups,
            },
        ))
    }
}
