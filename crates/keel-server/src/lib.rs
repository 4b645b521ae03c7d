//! The Kafka wire: framing, dispatch, one handler per API, the error seam,
//! and the broker state they share (metadata store, hosted partitions,
//! fetch sessions).
//!
//! **Architecture Invariant:** handlers reach storage only through
//! `replica_manager::Partition` and metadata only through
//! `metadata_store::MetadataStore`; they never touch segment files.

pub mod broker;
mod broker_client;
mod codec;
pub mod compaction_progress;
pub mod config;
mod connection;
mod controller_node;
mod coordinator_leadership;
mod coordinator_log;
pub mod dispatch;
mod errors;
mod fetch_session;
mod handlers;
mod log_cleaner;
pub mod metadata_store;
mod replica_fetcher;
pub mod replica_manager;
mod server;
mod transactions;

pub use broker::{now_ms, Broker, BrokerError};
pub use config::{BrokerConfig, ConfigError};
pub use controller_node::ControllerNode;
pub use server::{BoundListener, Server};
