//! Keel's metadata quorum: Kafka's KRaft role. The metadata log,
//! `__cluster_metadata-0`, is replicated by Raft (openraft 0.9) among the
//! controller voters named by `controller.quorum.voters`; one of them, the
//! Raft leader, is the active controller and the only writer.
//!
//! **What it owns.** The log on disk as a Kafka-format partition through
//! `keel_storage::Log` (Raft index = Kafka offset, Raft term = batch leader
//! epoch, one entry per batch: see `log_format`), the vote in
//! `quorum-state`, snapshots as `<offset>-<epoch>.checkpoint` files, the
//! controller listener and its peer connections, and the mapping of KRaft's
//! timeouts onto openraft's. Records are opaque bytes here.
//!
//! **Architecture Invariant:** depends on no `kafka-protocol`, no
//! `keel-server` and no `keel-metadata`, and on `keel-storage` only through
//! `Log` and batch framing, never segment internals. The broker never names
//! an openraft type, only [`MetadataQuorum`], [`StateMachineApply`] and the
//! plain types beside them.
//!
//! **How the broker drives it.**
//! 1. At start it builds a [`QuorumConfig`] from its settings
//!    ([`parse_voters`] for `controller.quorum.voters`) and calls
//!    [`MetadataQuorum::start`] with its [`StateMachineApply`]: the object
//!    that applies committed records to the `MetadataImage`, and that turns
//!    the image into snapshot bytes and back. The application starts
//!    empty: it is handed the newest snapshot on disk, if any, then every
//!    committed proposal after it, in log order, as this node learns that
//!    they are committed (at once for a single voter; from the leader
//!    otherwise, since the commit point is not stored, as in KRaft).
//! 2. To change metadata, under its own decision lock, it calls
//!    [`MetadataQuorum::wait_until_active`], decides against its image, and
//!    [`MetadataQuorum::propose`]s the records; on return they are applied.
//!    [`QuorumError::NotController`] becomes Kafka's `NOT_CONTROLLER`.
//! 3. [`MetadataQuorum::subscribe`] reports leader, epoch, voters and the
//!    applied offset; [`MetadataQuorum::shutdown`] stops it.
//!
//! **API Boundary:** [`MetadataQuorum`], [`StateMachineApply`],
//! [`QuorumConfig`], [`QuorumError`].

mod config;
mod error;
mod frame;
mod limits;
mod log_format;
mod log_store;
mod network;
mod quorum;
mod quorum_state;
mod server;
mod snapshot;
mod state_machine;
mod type_config;

pub use config::{parse_voters, QuorumConfig, VotersParseError, METADATA_TOPIC};
pub use error::QuorumError;
pub use limits::PROPOSAL_BYTES_MAX;
pub use quorum::{Committed, MetadataQuorum, QuorumInfo};
pub use state_machine::StateMachineApply;

#[cfg(test)]
mod tests;
