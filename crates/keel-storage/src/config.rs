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

/// One partition's log settings. Defaults are Kafka's.
#[derive(Clone, Debug, PartialEq, Eq)]
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
        }
    }
}

impl LogConfig {
    /// `segment.bytes` capped so that positions always fit the index's `u32`.
    pub(crate) fn effective_segment_bytes(&self) -> u64 {
        u64::from(self.segment_bytes).min(SEGMENT_BYTES_MAX)
    }
}
