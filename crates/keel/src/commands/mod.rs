pub mod config;
pub mod consume;
pub mod dev;
pub mod group;
pub mod produce;
pub mod records;
pub mod server;
pub mod topic;
