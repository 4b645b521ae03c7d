//! How far the log cleaner has got with one compacted replica: what the
//! broker reports and `keel topic describe` shows.
//!
//! Kafka exposes its cleaner only through JMX gauges, which no Kafka API
//! carries. Keel sends the figures as a tagged field of each partition in
//! DescribeLogDirs (v2 and later, the flexible versions). Kafka clients
//! skip tags they do not know (KIP-482), so they see Kafka's answer; the
//! tag is far above the ones Kafka assigns, which count up from 0.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The DescribeLogDirs partition tag that carries [`CompactionProgress`]
/// as JSON.
pub const COMPACTION_PROGRESS_TAG: i32 = 10_000;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompactionProgress {
    /// The cleaner checkpoint: records below it are compacted.
    pub first_dirty_offset: i64,
    /// Where the section the next clean may take ends (Kafka's first
    /// uncleanable offset: the active segment, the last stable offset or
    /// `min.compaction.lag.ms` stop it).
    pub first_uncleanable_offset: i64,
    /// Bytes of the segments below the first dirty offset.
    pub clean_bytes: u64,
    /// Bytes of the segments from the first dirty offset to the first
    /// uncleanable one.
    pub dirty_bytes: u64,
    /// The log's `min.cleanable.dirty.ratio`: a clean starts above it.
    pub min_cleanable_dirty_ratio: f64,
    /// Whether a clean of this log is running now.
    pub cleaning: bool,
    /// The last clean this broker process finished, if any.
    pub last_clean: Option<LastClean>,
}

/// What one finished clean did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LastClean {
    /// When it was installed, in milliseconds since the epoch.
    pub finished_ms: i64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub records_read: u64,
    pub records_retained: u64,
    pub elapsed_ms: u64,
}

impl CompactionProgress {
    /// Dirty bytes over all bytes up to the first uncleanable offset, as
    /// the cleaner ranks logs.
    pub fn dirty_ratio(&self) -> f64 {
        match self.clean_bytes + self.dirty_bytes {
            0 => 0.0,
            total => self.dirty_bytes as f64 / total as f64,
        }
    }

    pub fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("plain numbers serialize"))
    }

    /// `None` for bytes that are not a progress report, such as a future
    /// broker's different one.
    pub fn decode(bytes: &[u8]) -> Option<CompactionProgress> {
        serde_json::from_slice(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_ranks_like_the_cleaner() {
        let progress = CompactionProgress {
            first_dirty_offset: 120,
            first_uncleanable_offset: 300,
            clean_bytes: 3000,
            dirty_bytes: 1000,
            min_cleanable_dirty_ratio: 0.5,
            cleaning: false,
            last_clean: Some(LastClean {
                finished_ms: 1_700_000_000_000,
                bytes_read: 8000,
                bytes_written: 3000,
                records_read: 80,
                records_retained: 30,
                elapsed_ms: 12,
            }),
        };
        assert_eq!(
            CompactionProgress::decode(&progress.encode()),
            Some(progress.clone())
        );
        assert_eq!(progress.dirty_ratio(), 0.25);
        assert_eq!(CompactionProgress::decode(b"\x00\x01"), None);
    }
}
