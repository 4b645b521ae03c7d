//! The openraft type configuration, and the conversions between Kafka's ids
//! (`i32` node ids and leader epochs, `i64` offsets) and openraft's (`u64`).

use std::io::Cursor;

use bytes::Bytes;
use keel_types::{LeaderEpoch, Offset};
use openraft::{BasicNode, LogId};
use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    /// The metadata quorum's openraft types.
    pub(crate) TypeConfig:
        D = Proposal,
        R = (),
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub(crate) type Entry = openraft::Entry<TypeConfig>;
pub(crate) type Membership = openraft::Membership<u64, BasicNode>;
pub(crate) type StoredMembership = openraft::StoredMembership<u64, BasicNode>;
pub(crate) type Vote = openraft::Vote<u64>;
pub(crate) type SnapshotMeta = openraft::SnapshotMeta<u64, BasicNode>;
pub(crate) type Snapshot = openraft::Snapshot<TypeConfig>;
pub(crate) type RaftStorageError = openraft::StorageError<u64>;
pub(crate) type Raft = openraft::Raft<TypeConfig>;

/// One proposal: the records a controller decision produced, committed
/// together as one Raft entry (one Kafka offset), so a decision is never
/// half applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Proposal {
    /// The leader's clock when proposed; stored as the batch timestamp so
    /// that every replica writes the same bytes.
    pub timestamp_ms: i64,
    pub records: Vec<Bytes>,
}

/// `node.id` as openraft's node id. Kafka node ids are never negative.
pub(crate) fn raft_node_id(node_id: i32) -> u64 {
    u64::try_from(node_id).expect("node ids are validated non-negative")
}

/// openraft's node id back to Kafka's; ids only ever come from `i32`s.
pub(crate) fn kafka_node_id(node_id: u64) -> i32 {
    i32::try_from(node_id).expect("node ids come from i32")
}

/// A Raft term as a Kafka leader epoch, or `None` past `i32::MAX`.
pub(crate) fn leader_epoch(term: u64) -> Option<LeaderEpoch> {
    i32::try_from(term).ok()
}

/// A Raft index as a Kafka offset: the same number, Raft index 0 being
/// offset 0.
pub(crate) fn offset(index: u64) -> Offset {
    i64::try_from(index).expect("log indexes stay below i64::MAX")
}

pub(crate) fn index(offset: Offset) -> u64 {
    u64::try_from(offset).expect("offsets in the log are never negative")
}

pub(crate) fn log_id(term: u64, index: u64) -> LogId<u64> {
    // Under `single-term-leader` a committed leader is its term alone.
    LogId::new(openraft::CommittedLeaderId::new(term, 0), index)
}
