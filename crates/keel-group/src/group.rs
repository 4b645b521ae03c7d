//! A classic group: its state, generation, members and the bookkeeping of a
//! rebalance in progress. Transitions are driven by `state_machine/`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use indexmap::IndexMap;

use crate::member::{Member, Protocol};
use crate::records::{GroupMetadataValue, MemberMetadataValue};

/// Kafka's `ClassicGroupState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    /// The name Kafka puts in DescribeGroups and ListGroups.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// The delayed first rebalance of an Empty group
/// (`group.initial.rebalance.delay.ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitialDelay {
    /// What is left of the rebalance timeout for further extensions.
    pub remaining_ms: i64,
    /// Whether a member joined since the delay was last (re)armed.
    pub new_member_added: bool,
}

#[derive(Debug, Clone)]
pub struct Group {
    pub group_id: String,
    pub state: GroupState,
    /// When the group entered `state` (Kafka's `currentStateTimestamp`),
    /// which starts the offsets' retention clock once the group is Empty.
    pub state_timestamp_ms: i64,
    pub generation_id: i32,
    /// `None` for a group that only holds offsets of simple consumers.
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader_id: Option<String>,
    /// Members in join order; the order picks a new leader.
    pub members: IndexMap<String, Member>,
    /// `group_instance_id` → `member_id` for static members.
    pub static_members: HashMap<String, String>,
    /// Members given an id by MEMBER_ID_REQUIRED that have not joined with
    /// it yet, with the deadline for doing so (their session timeout).
    pub pending_members: BTreeMap<String, i64>,
    /// Members of the current generation that have not synced yet.
    pub pending_sync: BTreeSet<String>,
    pub pending_sync_deadline_ms: Option<i64>,
    /// When the join phase ends at the latest (initial delay or rebalance timeout).
    pub join_deadline_ms: Option<i64>,
    pub initial_delay: Option<InitialDelay>,
}

impl Group {
    pub fn new(group_id: String, now_ms: i64) -> Self {
        Group {
            group_id,
            state: GroupState::Empty,
            state_timestamp_ms: now_ms,
            generation_id: 0,
            protocol_type: None,
            protocol_name: None,
            leader_id: None,
            members: IndexMap::new(),
            static_members: HashMap::new(),
            pending_members: BTreeMap::new(),
            pending_sync: BTreeSet::new(),
            pending_sync_deadline_ms: None,
            join_deadline_ms: None,
            initial_delay: None,
        }
    }

    pub fn transition(&mut self, to: GroupState, now_ms: i64) {
        use GroupState::*;
        let valid = match to {
            Empty => matches!(self.state, PreparingRebalance | Empty),
            PreparingRebalance => matches!(self.state, Stable | CompletingRebalance | Empty),
            CompletingRebalance => self.state == PreparingRebalance,
            Stable => self.state == CompletingRebalance,
            Dead => true,
        };
        assert!(
            valid,
            "group {}: invalid transition {:?} -> {:?}",
            self.group_id, self.state, to
        );
        self.state = to;
        self.state_timestamp_ms = now_ms;
    }

    pub fn is_leader(&self, member_id: &str) -> bool {
        self.leader_id.as_deref() == Some(member_id)
    }

    /// Members plus members still to join with a given id.
    pub fn size(&self) -> usize {
        self.members.len() + self.pending_members.len()
    }

    /// Kafka's `rebalanceTimeoutMs`: the largest of the members'.
    pub fn rebalance_timeout_ms(&self) -> i64 {
        self.members
            .values()
            .map(|m| i64::from(m.rebalance_timeout_ms))
            .max()
            .unwrap_or(0)
    }

    pub fn add_member(&mut self, member: Member) {
        assert!(
            !self.members.contains_key(&member.member_id),
            "member {} added twice",
            member.member_id
        );
        if self.members.is_empty() {
            self.protocol_type = Some(member.protocol_type.clone());
        }
        if self.leader_id.is_none() {
            self.leader_id = Some(member.member_id.clone());
        }
        if let Some(instance) = &member.group_instance_id {
            self.static_members
                .insert(instance.clone(), member.member_id.clone());
        }
        self.members.insert(member.member_id.clone(), member);
    }

    /// Removes a member; a removed leader is replaced by the oldest member.
    pub fn remove_member(&mut self, member_id: &str) -> Option<Member> {
        let member = self.members.shift_remove(member_id)?;
        if let Some(instance) = &member.group_instance_id {
            if self.static_members.get(instance).map(String::as_str) == Some(member_id) {
                self.static_members.remove(instance);
            }
        }
        self.pending_sync.remove(member_id);
        if self.is_leader(member_id) {
            self.leader_id = self.members.keys().next().cloned();
        }
        Some(member)
    }

    /// Gives a static member a new member id in place (same join order,
    /// leadership and pending sync).
    pub fn replace_member_id(&mut self, old_id: &str, new_id: &str) {
        let index = self
            .members
            .get_index_of(old_id)
            .expect("replaced member exists");
        let mut member = self.members.shift_remove(old_id).expect("member exists");
        member.member_id = new_id.to_owned();
        if let Some(instance) = &member.group_instance_id {
            self.static_members
                .insert(instance.clone(), new_id.to_owned());
        }
        self.members.shift_insert(index, new_id.to_owned(), member);
        if self.is_leader(old_id) {
            self.leader_id = Some(new_id.to_owned());
        }
        if self.pending_sync.remove(old_id) {
            self.pending_sync.insert(new_id.to_owned());
        }
    }

    /// Whether every member has a JoinGroup parked and nobody holds an
    /// unused member id (Kafka's `hasAllMembersJoined`).
    pub fn all_members_joined(&self) -> bool {
        self.pending_members.is_empty() && self.members.values().all(|m| m.awaiting_join.is_some())
    }

    /// Protocols every member supports, in the order of the first member's
    /// preference.
    fn candidate_protocols(&self) -> Vec<&str> {
        let Some(first) = self.members.values().next() else {
            return Vec::new();
        };
        first
            .protocols
            .iter()
            .map(|p| p.name.as_str())
            .filter(|name| self.members.values().all(|m| m.supports(name)))
            .collect()
    }

    /// Kafka's `supportsProtocols`: a joining member must share the group's
    /// protocol type and at least one protocol with every member.
    pub fn supports_protocols(&self, protocol_type: &str, protocols: &[Protocol]) -> bool {
        if protocol_type.is_empty() || protocols.is_empty() {
            return false;
        }
        if self.members.is_empty() {
            return true;
        }
        if self.protocol_type.as_deref() != Some(protocol_type) {
            return false;
        }
        let candidates = self.candidate_protocols();
        protocols
            .iter()
            .any(|p| candidates.contains(&p.name.as_str()))
    }

    /// Kafka's `selectProtocol`: each member votes for its most preferred
    /// protocol that every member supports; the most votes wins, ties going
    /// to the earlier candidate.
    pub fn select_protocol(&self) -> Option<String> {
        let candidates = self.candidate_protocols();
        let mut votes = vec![0usize; candidates.len()];
        for m in self.members.values() {
            if let Some(choice) = m.vote(&candidates) {
                let i = candidates
                    .iter()
                    .position(|c| *c == choice)
                    .expect("voted candidate");
                votes[i] += 1;
            }
        }
        let mut best: Option<(usize, usize)> = None;
        for (i, v) in votes.iter().enumerate() {
            if best.is_none_or(|(_, bv)| *v > bv) {
                best = Some((i, *v));
            }
        }
        best.map(|(i, _)| candidates[i].to_owned())
    }

    /// Topics the members subscribe to, when the group uses the consumer
    /// protocol and every subscription parses; `None` means "unknown", which
    /// callers treat as subscribed to everything.
    pub fn subscribed_topics(&self) -> Option<BTreeSet<String>> {
        if self.protocol_type.as_deref() != Some("consumer") {
            return None;
        }
        let protocol = self.protocol_name.as_deref()?;
        let mut topics = BTreeSet::new();
        for m in self.members.values() {
            topics.extend(parse_subscription_topics(&m.metadata(protocol))?);
        }
        Some(topics)
    }

    /// The group as Kafka persists it in `GroupMetadataValue`.
    pub fn to_record(&self) -> GroupMetadataValue {
        let protocol = self.protocol_name.clone();
        GroupMetadataValue {
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            generation: self.generation_id,
            protocol: protocol.clone(),
            leader: self.leader_id.clone(),
            current_state_timestamp_ms: self.state_timestamp_ms,
            members: self
                .members
                .values()
                .map(|m| MemberMetadataValue {
                    member_id: m.member_id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    session_timeout_ms: m.session_timeout_ms,
                    subscription: protocol
                        .as_deref()
                        .map(|p| m.metadata(p))
                        .unwrap_or_default(),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        }
    }

    /// Rebuilds a group from its record: Stable with members, else Empty.
    pub fn from_record(group_id: String, value: &GroupMetadataValue) -> Self {
        let mut group = Group::new(group_id, value.current_state_timestamp_ms);
        group.generation_id = value.generation;
        group.protocol_type = Some(value.protocol_type.clone()).filter(|t| !t.is_empty());
        group.protocol_name = value.protocol.clone();
        for m in &value.members {
            group.add_member(Member {
                member_id: m.member_id.clone(),
                group_instance_id: m.group_instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                rebalance_timeout_ms: m.rebalance_timeout_ms,
                session_timeout_ms: m.session_timeout_ms,
                protocol_type: value.protocol_type.clone(),
                protocols: value
                    .protocol
                    .iter()
                    .map(|name| Protocol {
                        name: name.clone(),
                        metadata: m.subscription.clone(),
                    })
                    .collect(),
                assignment: m.assignment.clone(),
                awaiting_join: None,
                awaiting_sync: None,
                session_deadline_ms: 0,
            });
        }
        // add_member elected the first member; the record names the leader.
        group.leader_id = value
            .leader
            .clone()
            .filter(|l| group.members.contains_key(l));
        if group.leader_id.is_none() {
            group.leader_id = group.members.keys().next().cloned();
        }
        group.state = if group.members.is_empty() {
            GroupState::Empty
        } else {
            GroupState::Stable
        };
        group
    }
}

/// The topic list of a `ConsumerProtocolSubscription` (versions 0 to 3 all
/// start with `int16 version, [string topics]`).
pub fn parse_subscription_topics(metadata: &[u8]) -> Option<Vec<String>> {
    fn take<'a>(buf: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if buf.len() < n {
            return None;
        }
        let (head, tail) = buf.split_at(n);
        *buf = tail;
        Some(head)
    }
    let mut buf = metadata;
    let version = i16::from_be_bytes(take(&mut buf, 2)?.try_into().ok()?);
    if version < 0 {
        return None;
    }
    let count = i32::from_be_bytes(take(&mut buf, 4)?.try_into().ok()?);
    if count < 0 {
        return None;
    }
    let mut topics = Vec::new();
    for _ in 0..count {
        let len = i16::from_be_bytes(take(&mut buf, 2)?.try_into().ok()?);
        if len < 0 {
            return None;
        }
        let bytes = take(&mut buf, len as usize)?;
        topics.push(String::from_utf8(bytes.to_vec()).ok()?);
    }
    Some(topics)
}
