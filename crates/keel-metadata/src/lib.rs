//! Cluster metadata: the records of the metadata log, the immutable image
//! they build, the topic configuration catalogue, and the controller logic that
//! turns admin requests into records.
//!
//! **Architecture Invariant:** nothing here does I/O. The metadata log's
//! durability belongs to whoever appends the records (today a local log in the
//! data dir, later a Raft quorum); this crate only decides *which* records to
//! append and what the cluster looks like once they are applied.

pub mod cluster;
pub mod config;
pub mod controller;
pub mod elections;
mod image;
pub mod reassignment;
mod records;
pub mod request;

pub use image::{BrokerImage, MetadataImage, PartitionImage, TopicImage};
pub use records::{ConfigResource, MetadataRecord};
pub use request::{ControllerReply, ControllerRequest};
