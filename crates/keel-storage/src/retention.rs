//! Deleting old segments by `retention.ms`, `retention.bytes` and the log
//! start offset, always from the oldest end and never the active segment.
//! Retention by time and size applies only when `cleanup.policy` includes
//! `delete`; a compact-only log loses records to the cleaner alone.

use std::time::UNIX_EPOCH;

use crate::error::Result;
use crate::log::Log;
use crate::segment::Segment;

/// The timestamp retention and `min.compaction.lag.ms` judge a segment by:
/// its largest record timestamp, or the file's modification time when
/// records carry none.
pub(crate) fn largest_timestamp(seg: &Segment) -> i64 {
    if seg.max_timestamp() >= 0 {
        return seg.max_timestamp();
    }
    std::fs::metadata(seg.log_path())
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(i64::MAX, |d| {
            i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
        })
}

impl Log {
    /// Applies retention; returns how many segments were deleted.
    pub fn delete_old_segments(&mut self, now_ms: i64) -> Result<usize> {
        let mut deleted = 0;
        // Segments wholly below the log start (raised by a checkpoint or
        // DeleteRecords) are unreachable, whatever the policy.
        while self.segments().len() > 1 {
            let first = self.segments().values().next().expect("segments");
            if first.next_offset() > self.log_start_offset() {
                break;
            }
            self.delete_oldest_segment()?;
            deleted += 1;
        }
        if self.config().cleanup_policy.delete {
            deleted += self.delete_retention_ms_breached(now_ms)?;
            deleted += self.delete_retention_size_breached()?;
        }
        if deleted > 0 {
            crate::checkpoint::sync_dir(self.dir_path())?;
        }
        Ok(deleted)
    }

    fn delete_retention_ms_breached(&mut self, now_ms: i64) -> Result<usize> {
        let retention_ms = self.config().retention_ms;
        let mut deleted = 0;
        if retention_ms < 0 {
            return Ok(deleted);
        }
        loop {
            let first = self.segments().values().next().expect("segments");
            if first.is_empty() || now_ms.saturating_sub(largest_timestamp(first)) <= retention_ms {
                return Ok(deleted);
            }
            if self.segments().len() == 1 {
                // The active segment is wholly expired: roll so it can go.
                self.roll_active()?;
            }
            self.delete_oldest_segment()?;
            deleted += 1;
        }
    }

    fn delete_retention_size_breached(&mut self) -> Result<usize> {
        let retention_bytes = self.config().retention_bytes;
        let mut deleted = 0;
        if retention_bytes < 0 {
            return Ok(deleted);
        }
        let mut excess = self.size_bytes() as i64 - retention_bytes;
        while self.segments().len() > 1 {
            let size = self.segments().values().next().expect("segments").size() as i64;
            if excess - size < 0 {
                break;
            }
            excess -= size;
            self.delete_oldest_segment()?;
            deleted += 1;
        }
        Ok(deleted)
    }
}
