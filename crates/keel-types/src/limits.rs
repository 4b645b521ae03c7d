//! Limits on everything a client or the disk can make us allocate or hold.
//! Units come last in every name. Kafka's defaults where Kafka has one.

/// `socket.request.max.bytes`: the largest request frame we will allocate for.
pub const SOCKET_REQUEST_BYTES_MAX: u32 = 100 * 1024 * 1024;

/// Responses queued for writing per connection before we stop reading
/// requests from it (back-pressure on a client that does not read).
pub const INFLIGHT_RESPONSES_PER_CONNECTION_MAX: usize = 16;

/// Accepted connections open at once; more wait in the kernel's backlog.
pub const CONNECTIONS_MAX: usize = 4096;

/// The RecordBatch v2 header is 61 bytes; a batch shorter than this is corrupt.
pub const RECORD_BATCH_HEADER_BYTES: usize = 61;

/// Segment positions are stored as `u32` in `.index` entries, so a segment
/// can never be larger than this.
pub const SEGMENT_BYTES_MAX: u64 = i32::MAX as u64;

/// Offsets are stored relative to the segment base as `u32` in both indexes.
pub const SEGMENT_RELATIVE_OFFSET_MAX: i64 = i32::MAX as i64;

/// Kafka keeps the last five batches per producer to answer duplicates.
pub const PRODUCER_BATCHES_RETAINED_MAX: usize = 5;

/// Partitions per topic we accept in CreateTopics (Kafka has no hard cap,
/// but an unbounded number would let one request exhaust file descriptors).
pub const PARTITIONS_PER_TOPIC_MAX: i32 = 10_000;

/// Kafka's topic name limit (`Topic.MAX_NAME_LENGTH`).
pub const TOPIC_NAME_CHARS_MAX: usize = 249;

const _: () = assert!(SEGMENT_BYTES_MAX <= u32::MAX as u64); // `.index` stores u32 positions
