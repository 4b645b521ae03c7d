pub mod consume;
pub mod group;
pub mod produce;
pub mod server;
pub mod topic;
