//! Persistence of KIP-848 consumer groups as Kafka's new coordinator does
//! it: one `__consumer_offsets` record per piece of state (group epoch,
//! subscribed topic metadata, member metadata, target assignment, current
//! member assignment), keyed so that the latest record wins on compaction.
//!
//! Writing is by difference: a call that may change a group snapshots it
//! first, and `emit_consumer_group_diff` writes the records whose value
//! changed and tombstones for the keys that went away. Replaying the records
//! in order rebuilds the group; `complete_consumer_load` then gives every
//! restored member a fresh session and re-resolves the regex subscriptions
//! (their resolutions are not records of their own, unlike Kafka's
//! `ConsumerGroupRegularExpression`: Keel resolves on every heartbeat).

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

use crate::assignor::Assignment;
use crate::consumer_group::{ConsumerGroup, ConsumerMember, MemberState};
use crate::records::{self, ConsumerGroupRecord, HeldTopicPartitions, TopicPartitions};
use crate::state_machine::{Effects, GroupCoordinator, TimerKey};

fn to_tps(a: &Assignment) -> TopicPartitions {
    a.iter()
        .map(|(t, ps)| (*t, ps.iter().copied().collect()))
        .collect()
}

fn from_tps(tps: &TopicPartitions) -> Assignment {
    let mut out = Assignment::new();
    for (t, ps) in tps {
        if !ps.is_empty() {
            out.entry(*t).or_default().extend(ps.iter().copied());
        }
    }
    out
}

/// What a member holds of `a` (its assigned or its revoking partitions),
/// with their assignment epochs.
fn to_held(m: &ConsumerMember, a: &Assignment) -> Vec<HeldTopicPartitions> {
    a.iter()
        .map(|(t, ps)| HeldTopicPartitions {
            topic_id: *t,
            partitions: ps.iter().copied().collect(),
            assignment_epochs: Some(
                ps.iter()
                    .map(|p| {
                        m.assignment_epochs
                            .get(&(*t, *p))
                            .copied()
                            .unwrap_or(m.member_epoch)
                    })
                    .collect(),
            ),
        })
        .collect()
}

/// Replays held partitions into an assignment, their assignment epochs
/// into `epochs`. A record written without epochs (before KIP-1251) holds
/// each at `default_epoch`, as Kafka reads it.
fn from_held(
    held: &[HeldTopicPartitions],
    default_epoch: i32,
    epochs: &mut BTreeMap<(Uuid, i32), i32>,
) -> Assignment {
    let mut out = Assignment::new();
    for t in held {
        for (i, &p) in t.partitions.iter().enumerate() {
            let epoch = t
                .assignment_epochs
                .as_ref()
                .and_then(|e| e.get(i).copied())
                .unwrap_or(default_epoch);
            epochs.insert((t.topic_id, p), epoch);
            out.entry(t.topic_id).or_default().insert(p);
        }
    }
    out
}

/// Kafka's `MemberState` bytes.
fn state_byte(s: MemberState) -> i8 {
    match s {
        MemberState::UnrevokedPartitions => 0,
        MemberState::UnreleasedPartitions => 1,
        MemberState::Stable => 2,
    }
}

fn state_from(b: i8) -> MemberState {
    match b {
        0 => MemberState::UnrevokedPartitions,
        1 => MemberState::UnreleasedPartitions,
        _ => MemberState::Stable,
    }
}

/// The member a replayed record describes, made blank on its first record.
fn replayed_member(group: &mut ConsumerGroup, member_id: String) -> &mut ConsumerMember {
    group
        .members
        .entry(member_id)
        .or_insert_with_key(|id| blank_member(id))
}

fn blank_member(member_id: &str) -> ConsumerMember {
    ConsumerMember {
        member_id: member_id.to_owned(),
        instance_id: None,
        rack_id: None,
        client_id: String::new(),
        client_host: String::new(),
        subscribed: BTreeSet::new(),
        subscribed_topic_regex: None,
        server_assignor: None,
        rebalance_timeout_ms: -1,
        member_epoch: 0,
        previous_member_epoch: 0,
        state: MemberState::Stable,
        assigned: Assignment::new(),
        revoking: Assignment::new(),
        assignment_epochs: BTreeMap::new(),
        session_deadline_ms: 0,
        revocation_deadline_ms: None,
    }
}

/// Record kinds in the order they are written; tombstones go in
/// `TOMBSTONE_ORDER` (assignments first, the group itself last).
const MEMBER_METADATA: usize = 0;
const GROUP_METADATA: usize = 1;
const PARTITION_METADATA: usize = 2;
const TARGET_MEMBER: usize = 3;
const TARGET_METADATA: usize = 4;
const CURRENT_ASSIGNMENT: usize = 5;
const TOMBSTONE_ORDER: [usize; 6] = [
    CURRENT_ASSIGNMENT,
    TARGET_MEMBER,
    TARGET_METADATA,
    MEMBER_METADATA,
    PARTITION_METADATA,
    GROUP_METADATA,
];

/// Every record that describes `g`: (kind, key, value), in write order.
fn group_records(g: &ConsumerGroup) -> Vec<(usize, Vec<u8>, Vec<u8>)> {
    let id = g.group_id.as_str();
    let mut out = Vec::with_capacity(3 + 3 * g.members.len());
    for m in g.members.values() {
        let v = records::ConsumerGroupMemberMetadataValue {
            instance_id: m.instance_id.clone(),
            rack_id: m.rack_id.clone(),
            client_id: m.client_id.clone(),
            client_host: m.client_host.clone(),
            subscribed_topic_names: m.subscribed.iter().cloned().collect(),
            subscribed_topic_regex: m.subscribed_topic_regex.clone(),
            rebalance_timeout_ms: m.rebalance_timeout_ms,
            server_assignor: m.server_assignor.clone(),
        };
        out.push((
            MEMBER_METADATA,
            records::consumer_group_member_metadata_key(id, &m.member_id),
            v.encode(),
        ));
    }
    out.push((
        GROUP_METADATA,
        records::consumer_group_metadata_key(id),
        records::ConsumerGroupMetadataValue {
            epoch: g.group_epoch,
        }
        .encode(),
    ));
    out.push((
        PARTITION_METADATA,
        records::consumer_group_partition_metadata_key(id),
        records::ConsumerGroupPartitionMetadataValue {
            topics: g
                .topics
                .iter()
                .map(|(name, (topic_id, n))| records::PartitionMetadataTopic {
                    topic_id: *topic_id,
                    topic_name: name.clone(),
                    num_partitions: *n,
                })
                .collect(),
        }
        .encode(),
    ));
    for (member_id, a) in &g.target {
        out.push((
            TARGET_MEMBER,
            records::consumer_group_target_assignment_member_key(id, member_id),
            records::ConsumerGroupTargetAssignmentMemberValue {
                topic_partitions: to_tps(a),
            }
            .encode(),
        ));
    }
    out.push((
        TARGET_METADATA,
        records::consumer_group_target_assignment_metadata_key(id),
        records::ConsumerGroupTargetAssignmentMetadataValue {
            assignment_epoch: g.assignment_epoch,
        }
        .encode(),
    ));
    for m in g.members.values() {
        out.push((
            CURRENT_ASSIGNMENT,
            records::consumer_group_current_member_assignment_key(id, &m.member_id),
            records::ConsumerGroupCurrentMemberAssignmentValue {
                member_epoch: m.member_epoch,
                previous_member_epoch: m.previous_member_epoch,
                state: state_byte(m.state),
                assigned_partitions: to_held(m, &m.assigned),
                partitions_pending_revocation: to_held(m, &m.revoking),
            }
            .encode(),
        ));
    }
    out
}

impl GroupCoordinator {
    /// Writes the records that take the log from `before` (the group as it
    /// was, `None` if it did not exist) to the group as it is now (`None`
    /// if it is gone): new or changed values, then tombstones.
    pub(crate) fn emit_consumer_group_diff(
        &self,
        group_id: &str,
        before: Option<&ConsumerGroup>,
        fx: &mut Effects,
    ) {
        let after = self.consumer_groups.get(group_id);
        if before.is_none() && after.is_none() {
            return;
        }
        let partition = self.partition_for(group_id);
        let old = before.map(group_records).unwrap_or_default();
        let new = after.map(group_records).unwrap_or_default();
        let old_values: BTreeMap<&[u8], &[u8]> = old
            .iter()
            .map(|(_, k, v)| (k.as_slice(), v.as_slice()))
            .collect();
        let new_keys: BTreeSet<&[u8]> = new.iter().map(|(_, k, _)| k.as_slice()).collect();
        for (_, key, value) in &new {
            if old_values.get(key.as_slice()) != Some(&value.as_slice()) {
                fx.records
                    .push((partition, key.clone(), Some(value.clone())));
            }
        }
        for kind in TOMBSTONE_ORDER {
            for (_, key, _) in old.iter().filter(|(k, _, _)| *k == kind) {
                if !new_keys.contains(key.as_slice()) {
                    fx.records.push((partition, key.clone(), None));
                }
            }
        }
    }

    /// Deletes a consumer group and writes the tombstones of its records
    /// (its offsets are the caller's business).
    pub(crate) fn remove_consumer_group(&mut self, group_id: &str, fx: &mut Effects) {
        if let Some(before) = self.consumer_groups.remove(group_id) {
            self.emit_consumer_group_diff(group_id, Some(&before), fx);
        }
    }

    /// Applies one consumer group record. Values create the group (and the
    /// member) they name; tombstones of unknown state are ignored.
    pub(crate) fn replay_consumer_group(&mut self, record: ConsumerGroupRecord) {
        let group_id = record.group_id().to_owned();
        let is_tombstone = matches!(
            &record,
            ConsumerGroupRecord::Metadata { value: None, .. }
                | ConsumerGroupRecord::PartitionMetadata { value: None, .. }
                | ConsumerGroupRecord::MemberMetadata { value: None, .. }
                | ConsumerGroupRecord::TargetAssignmentMetadata { value: None, .. }
                | ConsumerGroupRecord::TargetAssignmentMember { value: None, .. }
                | ConsumerGroupRecord::CurrentMemberAssignment { value: None, .. }
        );
        if is_tombstone {
            if let ConsumerGroupRecord::Metadata { .. } = record {
                self.consumer_groups.remove(&group_id);
                return;
            }
            let Some(g) = self.consumer_groups.get_mut(&group_id) else {
                return;
            };
            match record {
                ConsumerGroupRecord::PartitionMetadata { .. } => g.topics.clear(),
                ConsumerGroupRecord::MemberMetadata { member_id, .. } => {
                    g.members.remove(&member_id);
                }
                ConsumerGroupRecord::TargetAssignmentMember { member_id, .. } => {
                    g.target.remove(&member_id);
                }
                ConsumerGroupRecord::CurrentMemberAssignment { member_id, .. } => {
                    if let Some(m) = g.members.get_mut(&member_id) {
                        m.member_epoch = 0;
                        m.previous_member_epoch = 0;
                        m.state = MemberState::Stable;
                        m.hold(Assignment::new(), Assignment::new());
                    }
                }
                _ => {}
            }
            return;
        }
        // A consumer group replaces an (empty) classic group of the same id;
        // the offsets stay.
        self.groups.remove(&group_id);
        let g = self
            .consumer_groups
            .entry(group_id.clone())
            .or_insert_with(|| ConsumerGroup::new(group_id.clone(), 0));
        match record {
            ConsumerGroupRecord::Metadata { value: Some(v), .. } => g.group_epoch = v.epoch,
            ConsumerGroupRecord::PartitionMetadata { value: Some(v), .. } => {
                g.topics = v
                    .topics
                    .into_iter()
                    .map(|t| (t.topic_name, (t.topic_id, t.num_partitions)))
                    .collect();
            }
            ConsumerGroupRecord::MemberMetadata {
                member_id,
                value: Some(v),
                ..
            } => {
                let m = replayed_member(g, member_id);
                m.instance_id = v.instance_id;
                m.rack_id = v.rack_id;
                m.client_id = v.client_id;
                m.client_host = v.client_host;
                m.subscribed = v.subscribed_topic_names.into_iter().collect();
                // Kafka writes an empty regex for a member that cleared it.
                m.subscribed_topic_regex = v.subscribed_topic_regex.filter(|r| !r.is_empty());
                m.server_assignor = v.server_assignor;
                m.rebalance_timeout_ms = v.rebalance_timeout_ms;
            }
            ConsumerGroupRecord::TargetAssignmentMetadata { value: Some(v), .. } => {
                g.assignment_epoch = v.assignment_epoch;
            }
            ConsumerGroupRecord::TargetAssignmentMember {
                member_id,
                value: Some(v),
                ..
            } => {
                g.target.insert(member_id, from_tps(&v.topic_partitions));
            }
            ConsumerGroupRecord::CurrentMemberAssignment {
                member_id,
                value: Some(v),
                ..
            } => {
                let m = replayed_member(g, member_id);
                m.member_epoch = v.member_epoch;
                m.previous_member_epoch = v.previous_member_epoch;
                m.state = state_from(v.state);
                // Kafka's default for a legacy record, never negative (a
                // static member that left is at epoch -2).
                let default_epoch = v.member_epoch.max(0);
                m.assignment_epochs.clear();
                m.assigned = from_held(
                    &v.assigned_partitions,
                    default_epoch,
                    &mut m.assignment_epochs,
                );
                m.revoking = from_held(
                    &v.partitions_pending_revocation,
                    default_epoch,
                    &mut m.assignment_epochs,
                );
            }
            _ => {}
        }
    }

    /// After replay: every restored member gets a full session (and a
    /// member asked to revoke a full rebalance timeout) from `now_ms`, with
    /// timers armed, so one that never returns is removed.
    pub(crate) fn complete_consumer_load(&mut self, now_ms: i64, fx: &mut Effects) {
        let session_ms = i64::from(self.config.consumer_session_timeout_ms);
        for g in self.consumer_groups.values_mut() {
            g.assignor = g.preferred_assignor();
            g.state_timestamp_ms = now_ms;
            g.restore_regexes();
            for m in g.members.values() {
                if let Some(pattern) = &m.subscribed_topic_regex {
                    if !g.resolved_regexes.contains_key(pattern) {
                        tracing::warn!(
                            group_id = g.group_id,
                            member_id = m.member_id,
                            pattern,
                            "restored SubscribedTopicRegex does not compile; it matches nothing"
                        );
                    }
                }
            }
            for m in g.members.values_mut() {
                m.session_deadline_ms = now_ms + session_ms;
                m.revocation_deadline_ms = None;
                if m.state == MemberState::UnrevokedPartitions {
                    let deadline = now_ms + i64::from(m.rebalance_timeout_ms.max(0));
                    m.revocation_deadline_ms = Some(deadline);
                    fx.timer(
                        TimerKey::ConsumerRebalance {
                            group_id: g.group_id.clone(),
                            member_id: m.member_id.clone(),
                        },
                        deadline,
                    );
                }
            }
        }
        self.consumer_timers(fx);
    }
}
