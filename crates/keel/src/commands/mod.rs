pub mod consume;
pub mod produce;
pub mod server;
pub mod topic;
