//! One member of a classic group.

use bytes::Bytes;

use crate::state_machine::RequestToken;

/// A request parked until the group can answer it (JoinGroup until the join
/// phase completes, SyncGroup until the leader sends the assignments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parked {
    pub token: RequestToken,
    /// The request's API version, so the late response is built for it.
    pub version: i16,
}

/// One protocol a member supports, in the member's order of preference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protocol {
    pub name: String,
    pub metadata: Bytes,
}

#[derive(Debug, Clone)]
pub struct Member {
    pub member_id: String,
    /// Set for static members (KIP-345); the group maps it back to `member_id`.
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// How long the member may take to rejoin during a rebalance; the group's
    /// rebalance timeout is the largest of its members'.
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    pub protocol_type: String,
    /// After a replay only the group's selected protocol is known (Kafka
    /// persists only that one's metadata).
    pub protocols: Vec<Protocol>,
    /// This member's part of the leader's assignment; empty until the leader syncs.
    pub assignment: Bytes,
    /// A JoinGroup waiting for the join phase to complete.
    pub awaiting_join: Option<Parked>,
    /// A SyncGroup waiting for the leader's assignment.
    pub awaiting_sync: Option<Parked>,
    /// When the member expires unless it heartbeats (or joins or syncs).
    pub session_deadline_ms: i64,
}

impl Member {
    /// The member's metadata for `protocol`, empty if it does not support it.
    pub fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|p| p.name == protocol)
            .map(|p| p.metadata.clone())
            .unwrap_or_default()
    }

    pub fn supports(&self, protocol: &str) -> bool {
        self.protocols.iter().any(|p| p.name == protocol)
    }

    /// Whether a rejoin carries exactly the protocols (and metadata) the
    /// member already has, in which case Kafka skips the rebalance.
    pub fn matches(&self, protocols: &[Protocol]) -> bool {
        self.protocols == protocols
    }

    /// The member's first choice among `candidates`.
    pub fn vote<'a>(&self, candidates: &[&'a str]) -> Option<&'a str> {
        self.protocols
            .iter()
            .find_map(|p| candidates.iter().copied().find(|c| *c == p.name))
    }

    pub fn is_static(&self) -> bool {
        self.group_instance_id.is_some()
    }
}
