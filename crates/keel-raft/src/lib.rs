//! Keel's metadata quorum: Kafka's KRaft role. The metadata log,
//! `__cluster_metadata-0`, is replicated by Raft (openraft 0.9) among the
//! controller voters named by `controller.quorum.voters`; one of them, the
//! Raft leader, is the active controller and the only writer. Any other
//! node (a broker with `process.roles=broker`) is an observer: an openraft
//! learner, which the leader replicates to but which never votes.
//!
//! **What it owns.** The log on disk as a Kafka-format partition through
//! `keel_storage::Log` (Raft index = Kafka offset, Raft term = batch leader
//! epoch, one entry per batch: see `log_format`), the vote in
//! `quorum-state`, snapshots as `<offset>-<epoch>.checkpoint` files, the
//! controller listener and its peer connections, and the mapping of KRaft's
//! timeouts onto openraft's. Records, and the requests forwarded to the
//! active controller, are opaque bytes here.
//!
//! **Architecture Invariant:** depends on no `kafka-protocol`, no
//! `keel-server` and no `keel-metadata`, and on `keel-storage` only through
//! `Log` and batch framing, never segment internals. The broker never names
//! an openraft type, only [`MetadataQuorum`], [`StateMachineApply`],
//! [`ControllerRequestHandler`] and the plain types beside them.
//!
//! **How the broker drives it.**
//! 1. At start it builds a [`QuorumConfig`] from its settings
//!    ([`parse_voters`] for `controller.quorum.voters`; an observer also
//!    needs a controller listener voters can dial, see
//!    [`QuorumConfig::advertised_listener`]) and calls
//!    [`MetadataQuorum::start`] with its [`StateMachineApply`] and its
//!    [`ControllerRequestHandler`]. The first applies committed records to
//!    the `MetadataImage`, and turns the image into snapshot bytes and
//!    back. The application starts empty: it is handed the newest snapshot
//!    on disk, if any, then every committed proposal after it, in log
//!    order, as this node learns that they are committed (at once for a
//!    single voter; from the leader otherwise, since the commit point is
//!    not stored, as in KRaft). An observer asks the voters to add it, at
//!    every start, and is sent the log (or a snapshot) from then on.
//! 2. To change metadata, a node asks the active controller with
//!    [`MetadataQuorum::forward`]: the request reaches that node's
//!    [`ControllerRequestHandler`], over the controller listener or
//!    directly if it is this node, and its answer comes back. The handler,
//!    under the application's decision lock, calls
//!    [`MetadataQuorum::wait_until_active`], decides against its image, and
//!    [`MetadataQuorum::propose`]s the records; on return they are applied
//!    there (a forwarding node waits for its own image to catch up).
//!    [`QuorumError::NotController`] (no leader, or this one no longer
//!    leads) becomes Kafka's `NOT_CONTROLLER`;
//!    [`QuorumError::ControllerUnreachable`] is retried as well.
//! 3. [`MetadataQuorum::subscribe`] reports leader, epoch, voters and the
//!    applied offset; [`MetadataQuorum::shutdown`] stops it, and returns
//!    once nothing of it runs any more.
//!
//! **API Boundary:** [`MetadataQuorum`], [`StateMachineApply`],
//! [`ControllerRequestHandler`], [`QuorumConfig`], [`QuorumError`].

mod config;
mod error;
mod forward;
mod frame;
mod limits;
mod log_format;
mod log_store;
mod network;
mod observer;
mod quorum;
mod quorum_state;
mod server;
mod snapshot;
mod state_machine;
mod stop;
mod type_config;

pub use config::{parse_voters, QuorumConfig, VotersParseError, METADATA_TOPIC};
pub use error::QuorumError;
pub use forward::ControllerRequestHandler;
pub use limits::{CONTROLLER_REQUEST_BYTES_MAX, PROPOSAL_BYTES_MAX};
pub use quorum::{Committed, MetadataQuorum, QuorumInfo};
pub use state_machine::StateMachineApply;

#[cfg(test)]
mod tests;
