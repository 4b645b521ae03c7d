//! Every bound the quorum enforces, units last.

/// The largest proposal, counted as the encoded record bytes of its one Raft
/// entry: Kafka's `KafkaRaftClient.MAX_BATCH_SIZE_BYTES`.
pub const PROPOSAL_BYTES_MAX: usize = 8 * 1024 * 1024;

/// The largest request `MetadataQuorum::forward` carries to the active
/// controller, and the largest answer it brings back: each travels in one
/// frame, with the room a proposal has.
pub const CONTROLLER_REQUEST_BYTES_MAX: usize = PROPOSAL_BYTES_MAX;

/// Log bytes read for one AppendEntries; at least one entry is always sent,
/// however large.
pub(crate) const REPLICATION_BYTES_MAX: usize = 1024 * 1024;

/// openraft's `snapshot_max_chunk_size`: snapshot bytes per InstallSnapshot.
pub(crate) const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

/// Room in a frame for everything but entry and chunk bytes (ids, votes,
/// membership, per-entry framing).
const FRAME_OVERHEAD_BYTES: usize = 1024 * 1024;

/// The largest frame either side of the controller listener accepts.
pub(crate) const FRAME_BYTES_MAX: usize = PROPOSAL_BYTES_MAX + FRAME_OVERHEAD_BYTES;

// An AppendEntries holds entries up to REPLICATION_BYTES_MAX, or one entry
// of at most PROPOSAL_BYTES_MAX; a snapshot chunk must fit too.
const _: () = assert!(REPLICATION_BYTES_MAX <= PROPOSAL_BYTES_MAX);
const _: () = assert!(SNAPSHOT_CHUNK_BYTES <= PROPOSAL_BYTES_MAX);
// Frame lengths travel as u32.
const _: () = assert!(FRAME_BYTES_MAX <= u32::MAX as usize);

/// The largest snapshot a follower accepts from its leader; it is buffered
/// whole before it is installed.
pub(crate) const SNAPSHOT_BYTES_MAX: u64 = 1024 * 1024 * 1024;

/// Concurrent connections on the controller listener: a few per peer.
pub(crate) const CONTROLLER_CONNECTIONS_MAX: usize = 64;

/// Idle connections kept per peer for reuse.
pub(crate) const IDLE_CONNECTIONS_PER_PEER_MAX: usize = 4;
