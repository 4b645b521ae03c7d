//! Per-topic log configuration, named after Kafka's topic configs with units last.

use keel_types::limits::SEGMENT_BYTES_MAX;

/// `message.timestamp.type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TimestampType {
    /// Keep the producer's timestamps.
    #[default]
    CreateTime,
    /// The broker stamps each batch with its append time.
    LogAppendTime,
}

/// `cleanup.policy`: a list of `delete` and `compact`. Kafka allows both
/// (`compact,delete`: compaction plus retention) or, since 4.0, neither.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CleanupPolicy {
    /// Retention by `retention.ms` and `retention.bytes` deletes old segments.
    pub delete: bool,
    /// The log cleaner keeps only the latest record of each key.
    pub compact: bool,
}

impl CleanupPolicy {
    pub const DELETE: CleanupPolicy = CleanupPolicy {
        delete: true,
        compact: false,
    };
    pub const COMPACT: CleanupPolicy = CleanupPolicy {
        delete: false,
        compact: true,
    };

    /// Parses Kafka's comma-separated list (`compact`, `delete,compact`,
    /// ...); `None` for any other word.
    pub fn parse(value: &str) -> Option<CleanupPolicy> {
        let mut policy = CleanupPolicy {
            delete: false,
            compact: false,
        };
        for word in value.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word {
                "delete" => policy.delete = true,
                "compact" => policy.compact = true,
                _ => return None,
            }
        }
        Some(policy)
    }
}

impl Default for CleanupPolicy {
    fn default() -> Self {
        CleanupPolicy::DELETE
    }
}

/// One partition's log settings. Defaults are Kafka's.
#[derive(Clone, Debug, PartialEq)]
pub struct LogConfig {
    /// `segment.bytes`: roll when an append would grow the active segment past this.
    pub segment_bytes: u32,
    /// `segment.ms`: roll when the active segment's first append is this old.
    pub segment_ms: i64,
    /// `segment.index.bytes`: roll when either index would grow past this.
    pub segment_index_bytes: u32,
    /// `index.interval.bytes`: log bytes between two sparse index entries.
    pub index_interval_bytes: u32,
    /// `retention.ms`: delete segments whose newest record is older; -1 keeps forever.
    pub retention_ms: i64,
    /// `retention.bytes`: delete oldest segments while the log is larger; -1 = no limit.
    pub retention_bytes: i64,
    /// `max.message.bytes`: the largest batch accepted.
    pub max_message_bytes: u32,
    /// `message.timestamp.type`.
    pub message_timestamp_type: TimestampType,
    /// `flush.messages`: ask the caller to fsync after this many unflushed messages.
    pub flush_messages: i64,
    /// `flush.ms`: ask the caller to fsync when the last flush is this old.
    pub flush_ms: i64,
    /// `file.delete.delay.ms`: accepted for compatibility; files are deleted at once
    /// because outstanding reads hold their own `Arc<File>`.
    pub file_delete_delay_ms: i64,
    /// `cleanup.policy`.
    pub cleanup_policy: CleanupPolicy,
    /// `delete.retention.ms`: how long the cleaner keeps a tombstone after
    /// the clean that first retained it, so consumers that read the key
    /// earlier can see its deletion.
    pub delete_retention_ms: i64,
    /// `min.compaction.lag.ms`: records younger than this stay uncompacted.
    pub min_compaction_lag_ms: i64,
    /// `max.compaction.lag.ms`: a dirty record older than this makes the log
    /// due for cleaning whatever its dirty ratio, and caps `segment.ms`.
    pub max_compaction_lag_ms: i64,
    /// `min.cleanable.dirty.ratio`: the dirty share of a log above which the
    /// cleaner picks it.
    pub min_cleanable_dirty_ratio: f64,
}

impl Default for LogConfig {
    fn default() -> Self {
        const DAY_MS: i64 = 24 * 60 * 60 * 1000;
        LogConfig {
            segment_bytes: 1024 * 1024 * 1024,
            segment_ms: 7 * DAY_MS,
            segment_index_bytes: 10 * 1024 * 1024,
            index_interval_bytes: 4096,
            retention_ms: 7 * DAY_MS,
            retention_bytes: -1,
            max_message_bytes: 1_048_588,
            message_timestamp_type: TimestampType::CreateTime,
            flush_messages: i64::MAX,
            flush_ms: i64::MAX,
            file_delete_delay_ms: 60_000,
            cleanup_policy: CleanupPolicy::DELETE,
            delete_retention_ms: DAY_MS,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX,
            min_cleanable_dirty_ratio: 0.5,
        }
    }
}

impl LogConfig {
    /// `segment.bytes` capped so that positions always fit the index's `u32`.
    pub(crate) fn effective_segment_bytes(&self) -> u64 {
        u64::from(self.segment_bytes).min(SEGMENT_BYTES_MAX)
    }

    /// `segment.ms`, lowered to `max.compaction.lag.ms` on compacted logs so
    /// that old records never wait in the active segment, which the cleaner
    /// cannot touch (Kafka's `LogConfig.maxSegmentMs`).
    pub(crate) fn effective_segment_ms(&self) -> i64 {
        if self.cleanup_policy.compact && self.max_compaction_lag_ms > 0 {
            self.segment_ms.min(self.max_compaction_lag_ms)
        } else {
            self.segment_ms
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleanup_policy_parses_kafkas_lists() {
        let both = CleanupPolicy {
            delete: true,
            compact: true,
        };
        assert_eq!(CleanupPolicy::parse("delete"), Some(CleanupPolicy::DELETE));
        assert_eq!(
            CleanupPolicy::parse("compact"),
            Some(CleanupPolicy::COMPACT)
        );
        assert_eq!(CleanupPolicy::parse("compact,delete"), Some(both));
        assert_eq!(CleanupPolicy::parse(" delete , compact "), Some(both));
        assert_eq!(
            CleanupPolicy::parse(""),
            Some(CleanupPolicy {
                delete: false,
                compact: false
            })
        );
        assert_eq!(CleanupPolicy::parse("compact,shred"), None);
    }

    #[test]
    fn compaction_lag_caps_segment_ms() {
        let config = LogConfig {
            segment_ms: 1000,
            max_compaction_lag_ms: 10,
            ..LogConfig::default()
        };
        assert_eq!(config.effective_segment_ms(), 1000);
        let compacted = LogConfig {
            cleanup_policy: CleanupPolicy::COMPACT,
            ..config
        };
        assert_eq!(compacted.effective_segment_ms(), 10);
    }
}
