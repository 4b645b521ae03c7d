//! The quorum's error type. `keel-server::errors` maps `NotController` to
//! Kafka's `NOT_CONTROLLER`; the rest are the broker's own failures.

use keel_storage::StorageError;
use keel_types::LeaderEpoch;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuorumError {
    /// This node is not the active controller (Kafka `NOT_CONTROLLER`).
    /// `leader_id` is the leader this node knows of, if any; a proposal
    /// that fails so may still commit under the new leader.
    #[error("not the active controller (leader {leader_id:?}, epoch {leader_epoch})")]
    NotController {
        leader_id: Option<i32>,
        leader_epoch: LeaderEpoch,
    },
    /// A proposal above `limits::PROPOSAL_BYTES_MAX`.
    #[error("proposal of {size} bytes exceeds {max}")]
    ProposalTooLarge { size: usize, max: usize },
    /// A forwarded request, or the active controller's answer to it, above
    /// `limits::CONTROLLER_REQUEST_BYTES_MAX`.
    #[error("controller request or answer of {size} bytes exceeds {max}")]
    RequestTooLarge { size: usize, max: usize },
    /// The active controller could not be reached, or the connection broke
    /// before its answer came: the request may or may not have been
    /// carried out. Retry; the leader may have moved meanwhile.
    #[error("active controller {leader_id} unreachable: {error}")]
    ControllerUnreachable { leader_id: i32, error: String },
    /// The settings cannot form a quorum member.
    #[error("controller quorum config: {0}")]
    Config(String),
    /// The controller listener could not be bound.
    #[error("controller listener {addr}: {source}")]
    Listener {
        addr: String,
        source: std::io::Error,
    },
    /// The metadata log or its companion files.
    #[error("metadata log: {0}")]
    Storage(#[from] StorageError),
    /// The Raft node has stopped, after `shutdown` or a fatal storage error.
    #[error("metadata quorum stopped: {0}")]
    Stopped(String),
}
