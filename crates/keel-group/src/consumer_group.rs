//! KIP-848 "consumer" groups: ConsumerGroupHeartbeat and
//! ConsumerGroupDescribe, member epochs, server-side assignment and the
//! per-member reconciliation that revokes partitions before anyone else gets
//! them (Kafka's `ConsumerGroup`, `GroupMetadataManager.consumerGroupHeartbeat`
//! and `CurrentAssignmentBuilder`, written afresh).
//!
//! These groups share the `GroupCoordinator` (one group id namespace, one
//! offsets store) with classic groups but none of their state.
//!
//! Persistence (`consumer_persist.rs`): every change to a group is written
//! as Kafka's `ConsumerGroup*` records; committed offsets go through the
//! usual offset records. After a restart a returning member keeps its member
//! id, epoch and assignment.
//!
//! A member subscribes by topic names, by a regular expression
//! (`SubscribedTopicRegex`, matched against whole topic names as Kafka's
//! `Pattern.matcher(topic).matches()` does), or both. The group resolves
//! every regex against the broker's topics once per heartbeat; when what a
//! regex matches changes, so do the group's subscribed topics, which bumps
//! the group epoch and recomputes the target assignment.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::consumer_group_describe_response::{
    self as cgd, DescribedGroup as CgDescribedGroup,
};
use kafka_protocol::messages::consumer_group_heartbeat_response::{
    self as cgh, ConsumerGroupHeartbeatResponse,
};
use kafka_protocol::messages::{
    ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse, ConsumerGroupHeartbeatRequest,
    GroupId, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use regex::Regex;
use uuid::Uuid;

use crate::assignor::{self, Assignment, AssignorMember, ASSIGNORS, DEFAULT_ASSIGNOR};
use crate::state_machine::{
    Committer, Effects, GroupCoordinator, JoinContext, RequestToken, Response, TimerKey,
};

/// The first OffsetCommit version a member of the consumer protocol may
/// commit with: v9 carries the member epoch.
const FIRST_CONSUMER_PROTOCOL_COMMIT_VERSION: i16 = 9;

/// Where the coordinator learns the topics: the assignor their partition
/// counts and ids by name, OffsetCommit and OffsetFetch v10 their names by
/// id. The broker implements it from its metadata image.
pub trait TopicMetadata: Send + Sync {
    fn partitions(&self, topic: &str) -> Option<(Uuid, i32)>;
    /// Every topic's name, for resolving regex subscriptions.
    fn topic_names(&self) -> Box<dyn Iterator<Item = &str> + '_>;
    /// The name of the topic with this id. The default walks every topic;
    /// an implementation that indexes its topics by id should answer from
    /// the index, as this runs once per topic of a v10 offset request.
    fn topic_name(&self, topic_id: &Uuid) -> Option<&str> {
        self.topic_names()
            .find(|name| self.partitions(name).is_some_and(|(id, _)| id == *topic_id))
    }
}

/// No topics at all (a service nobody gave metadata to).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoTopics;

impl TopicMetadata for NoTopics {
    fn partitions(&self, _topic: &str) -> Option<(Uuid, i32)> {
        None
    }

    fn topic_names(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        Box::new(std::iter::empty())
    }
}

impl TopicMetadata for BTreeMap<String, (Uuid, i32)> {
    fn partitions(&self, topic: &str) -> Option<(Uuid, i32)> {
        self.get(topic).copied()
    }

    fn topic_names(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        Box::new(self.keys().map(String::as_str))
    }
}

/// Internal topics (`__consumer_offsets`, `__transaction_state`, ...) are
/// never matched by a regex subscription.
fn is_internal(topic: &str) -> bool {
    topic.starts_with("__")
}

/// Compiles a `SubscribedTopicRegex` to match whole topic names, as Kafka's
/// `Pattern.matcher(topic).matches()` does; the error is a one-line reason.
fn compile_topic_regex(pattern: &str) -> Result<Regex, String> {
    // One line of the regex crate's multi-line report: the reason, without
    // the pattern drawn above it.
    let reason = |e: regex::Error| {
        let text = e.to_string();
        let last = text.lines().last().unwrap_or_default();
        last.strip_prefix("error: ").unwrap_or(last).to_owned()
    };
    // The pattern alone first: inside the anchors' group, `a)|(b` would
    // compile.
    Regex::new(pattern).map_err(reason)?;
    Regex::new(&format!("^(?:{pattern})$")).map_err(reason)
}

/// One regex subscription as the group last resolved it (Kafka's
/// `ResolvedRegularExpression`).
#[derive(Debug, Clone)]
pub struct ResolvedRegex {
    /// Compiled once for the group, not on every heartbeat.
    matcher: Regex,
    /// The topics it matched, internal ones aside.
    pub topics: BTreeSet<String>,
}

impl ResolvedRegex {
    fn new(matcher: Regex) -> Self {
        ResolvedRegex {
            matcher,
            topics: BTreeSet::new(),
        }
    }
}

/// Keeps a resolution for each regex some member subscribes with, and
/// resolves each against `topic_names` (Kafka's `refreshRegularExpressions`).
fn resolve_regexes<'a>(
    resolved: &mut BTreeMap<String, ResolvedRegex>,
    members: &BTreeMap<String, ConsumerMember>,
    topic_names: impl Iterator<Item = &'a str>,
) {
    let wanted: BTreeSet<&str> = members
        .values()
        .filter_map(|m| m.subscribed_topic_regex.as_deref())
        .collect();
    resolved.retain(|pattern, _| wanted.contains(pattern.as_str()));
    for pattern in wanted {
        if !resolved.contains_key(pattern) {
            // A heartbeat's new regex is compiled when it is validated; only
            // members restored from records get here. A pattern that does
            // not compile (a record Keel did not write) matches nothing;
            // `complete_consumer_load` warned about it.
            if let Ok(matcher) = compile_topic_regex(pattern) {
                resolved.insert(pattern.to_owned(), ResolvedRegex::new(matcher));
            }
        }
    }
    if resolved.is_empty() {
        return;
    }
    for r in resolved.values_mut() {
        r.topics.clear();
    }
    for name in topic_names.filter(|n| !is_internal(n)) {
        for r in resolved.values_mut() {
            if r.matcher.is_match(name) {
                r.topics.insert(name.to_owned());
            }
        }
    }
}

/// Kafka's `ConsumerGroup.ConsumerGroupState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerGroupState {
    Empty,
    Assigning,
    Reconciling,
    Stable,
}

impl ConsumerGroupState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsumerGroupState::Empty => "Empty",
            ConsumerGroupState::Assigning => "Assigning",
            ConsumerGroupState::Reconciling => "Reconciling",
            ConsumerGroupState::Stable => "Stable",
        }
    }
}

/// Kafka's `MemberState` of the reconciliation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    /// At the target epoch with its whole target.
    Stable,
    /// Must give up `revoking` before it moves to the target epoch.
    UnrevokedPartitions,
    /// At the target epoch, waiting for partitions others still own.
    UnreleasedPartitions,
}

#[derive(Debug, Clone)]
pub struct ConsumerMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// `SubscribedTopicNames`.
    pub subscribed: BTreeSet<String>,
    /// `SubscribedTopicRegex`; `None` when it subscribes by names only (an
    /// empty regex in a request clears it).
    pub subscribed_topic_regex: Option<String>,
    pub server_assignor: Option<String>,
    pub rebalance_timeout_ms: i32,
    pub member_epoch: i32,
    pub previous_member_epoch: i32,
    pub state: MemberState,
    /// What the member owns (and was told it owns).
    pub assigned: Assignment,
    /// What it must revoke before moving on.
    pub revoking: Assignment,
    /// The member epoch at which each partition it holds, assigned or
    /// revoking, was handed to it (KIP-1251's assignment epochs): a commit
    /// from an older member epoch may still commit a partition it held
    /// then. Kept by `hold`.
    pub assignment_epochs: BTreeMap<(Uuid, i32), i32>,
    pub session_deadline_ms: i64,
    pub revocation_deadline_ms: Option<i64>,
}

impl ConsumerMember {
    /// Sets what the member holds. A partition it already held keeps its
    /// assignment epoch; a new one is held from the current member epoch.
    pub(crate) fn hold(&mut self, assigned: Assignment, revoking: Assignment) {
        let held: BTreeSet<(Uuid, i32)> = flatten(&assigned).chain(flatten(&revoking)).collect();
        self.assignment_epochs.retain(|tp, _| held.contains(tp));
        for tp in held {
            self.assignment_epochs
                .entry(tp)
                .or_insert(self.member_epoch);
        }
        self.assigned = assigned;
        self.revoking = revoking;
    }

    /// Whether a commit from `member_epoch`, older than the member's, may
    /// commit `partition`: the member held it already at that epoch and
    /// holds it still (Kafka's `createAssignmentEpochValidator`).
    fn held_since(&self, partition: (Uuid, i32), member_epoch: i32) -> bool {
        self.assignment_epochs
            .get(&partition)
            .is_some_and(|&assigned_at| assigned_at <= member_epoch)
    }
}

#[derive(Debug, Clone)]
pub struct ConsumerGroup {
    pub group_id: String,
    pub group_epoch: i32,
    /// The group epoch the target assignment was computed for.
    pub assignment_epoch: i32,
    /// The assignor that computed the target.
    pub assignor: String,
    pub members: BTreeMap<String, ConsumerMember>,
    pub target: BTreeMap<String, Assignment>,
    /// The subscribed topics that exist: name → (id, partition count).
    pub topics: BTreeMap<String, (Uuid, i32)>,
    /// The members' regex subscriptions by pattern. Not persisted: rebuilt
    /// from `topics` on load and against the broker's topics on every
    /// heartbeat.
    pub resolved_regexes: BTreeMap<String, ResolvedRegex>,
    pub state_timestamp_ms: i64,
}

impl ConsumerGroup {
    pub fn new(group_id: String, now_ms: i64) -> Self {
        ConsumerGroup {
            group_id,
            group_epoch: 0,
            assignment_epoch: 0,
            assignor: DEFAULT_ASSIGNOR.to_owned(),
            members: BTreeMap::new(),
            target: BTreeMap::new(),
            topics: BTreeMap::new(),
            resolved_regexes: BTreeMap::new(),
            state_timestamp_ms: now_ms,
        }
    }

    pub fn state(&self) -> ConsumerGroupState {
        if self.members.is_empty() {
            ConsumerGroupState::Empty
        } else if self.group_epoch > self.assignment_epoch {
            ConsumerGroupState::Assigning
        } else if self
            .members
            .values()
            .any(|m| m.member_epoch != self.assignment_epoch || m.state != MemberState::Stable)
        {
            ConsumerGroupState::Reconciling
        } else {
            ConsumerGroupState::Stable
        }
    }

    /// The assignor most members ask for (ties: the first by name), or uniform.
    pub(crate) fn preferred_assignor(&self) -> String {
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some(a) = &m.server_assignor {
                *votes.entry(a).or_default() += 1;
            }
        }
        let best = votes.values().copied().max();
        votes
            .iter()
            .find(|(_, &n)| Some(n) == best)
            .map(|(a, _)| (*a).to_owned())
            .unwrap_or_else(|| DEFAULT_ASSIGNOR.to_owned())
    }

    /// The topics one member subscribes to: its names, and what its regex
    /// matched at the last resolution.
    fn member_topics<'a>(&'a self, m: &'a ConsumerMember) -> impl Iterator<Item = &'a str> {
        let matched = m
            .subscribed_topic_regex
            .as_ref()
            .and_then(|r| self.resolved_regexes.get(r))
            .into_iter()
            .flat_map(|r| &r.topics);
        m.subscribed.iter().chain(matched).map(String::as_str)
    }

    /// Every topic some member subscribes to, by name or through its regex
    /// (Kafka's `ConsumerGroup.subscribedTopicNames`).
    pub fn subscribed_topic_names(&self) -> BTreeSet<&str> {
        self.members
            .values()
            .flat_map(|m| self.member_topics(m))
            .collect()
    }

    /// Re-resolves the members' regexes against the broker's topics.
    pub(crate) fn refresh_regexes(&mut self, topics: &dyn TopicMetadata) {
        resolve_regexes(
            &mut self.resolved_regexes,
            &self.members,
            topics.topic_names(),
        );
    }

    /// Rebuilds the regex resolutions after a load from `topics`, the
    /// subscribed topics as the last resolution saw them: a regex matched
    /// exactly those of them it matches.
    pub(crate) fn restore_regexes(&mut self) {
        let names = self.topics.keys().map(String::as_str);
        resolve_regexes(&mut self.resolved_regexes, &self.members, names);
    }

    /// Recomputes the target assignment for the current group epoch.
    pub fn compute_target(&mut self) {
        self.assignor = self.preferred_assignor();
        let partitions: BTreeMap<Uuid, i32> = self.topics.values().copied().collect();
        let new = {
            let members: Vec<AssignorMember<'_>> = self
                .members
                .values()
                .map(|m| AssignorMember {
                    member_id: &m.member_id,
                    topics: self
                        .member_topics(m)
                        .filter_map(|t| self.topics.get(t).map(|(id, _)| *id))
                        .collect(),
                    previous: self.target.get(&m.member_id),
                })
                .collect();
            assignor::assign(&self.assignor, &members, &partitions)
        };
        self.target = new;
        self.assignment_epoch = self.group_epoch;
    }

    fn topic_name(&self, id: &Uuid) -> String {
        self.topics
            .iter()
            .find(|(_, (tid, _))| tid == id)
            .map(|(n, _)| n.clone())
            .unwrap_or_default()
    }

    /// Advances one member towards its target (Kafka's
    /// `CurrentAssignmentBuilder`). `owned`: the partitions the member says
    /// it owns, if it said.
    pub fn reconcile(&mut self, member_id: &str, owned: Option<&Assignment>, now_ms: i64) {
        let target_epoch = self.assignment_epoch;
        let target = self.target.get(member_id).cloned().unwrap_or_default();
        let others: BTreeSet<(Uuid, i32)> = self
            .members
            .values()
            .filter(|m| m.member_id != member_id)
            .flat_map(|m| flatten(&m.assigned).chain(flatten(&m.revoking)))
            .collect();
        let Some(m) = self.members.get_mut(member_id) else {
            return;
        };
        match m.state {
            MemberState::UnrevokedPartitions => {
                let revoked = owned.is_some_and(|o| !intersects(o, &m.revoking));
                if !revoked {
                    return;
                }
                // What it revoked is let go by the `hold` below.
                m.revocation_deadline_ms = None;
            }
            MemberState::Stable if m.member_epoch == target_epoch => return,
            _ => {}
        }
        let retained = intersect(&m.assigned, &target);
        let to_revoke = minus(&m.assigned, &target);
        if !to_revoke.is_empty() {
            m.hold(retained, to_revoke);
            m.state = MemberState::UnrevokedPartitions;
            m.revocation_deadline_ms = Some(now_ms + i64::from(m.rebalance_timeout_ms.max(0)));
            return;
        }
        let mut next = retained;
        let mut unreleased = false;
        for (t, p) in flatten(&target) {
            if next.get(&t).is_some_and(|s| s.contains(&p)) {
                continue;
            }
            if others.contains(&(t, p)) {
                unreleased = true;
            } else {
                next.entry(t).or_default().insert(p);
            }
        }
        if m.member_epoch != target_epoch {
            m.previous_member_epoch = m.member_epoch;
            m.member_epoch = target_epoch;
        }
        m.hold(next, Assignment::new());
        m.state = if unreleased {
            MemberState::UnreleasedPartitions
        } else {
            MemberState::Stable
        };
    }
}

fn flatten(a: &Assignment) -> impl Iterator<Item = (Uuid, i32)> + '_ {
    a.iter()
        .flat_map(|(t, ps)| ps.iter().map(move |p| (*t, *p)))
}

fn intersects(a: &Assignment, b: &Assignment) -> bool {
    flatten(a).any(|(t, p)| b.get(&t).is_some_and(|s| s.contains(&p)))
}

fn intersect(a: &Assignment, b: &Assignment) -> Assignment {
    let mut out = Assignment::new();
    for (t, p) in flatten(a) {
        if b.get(&t).is_some_and(|s| s.contains(&p)) {
            out.entry(t).or_default().insert(p);
        }
    }
    out
}

fn minus(a: &Assignment, b: &Assignment) -> Assignment {
    let mut out = Assignment::new();
    for (t, p) in flatten(a) {
        if !b.get(&t).is_some_and(|s| s.contains(&p)) {
            out.entry(t).or_default().insert(p);
        }
    }
    out
}

fn is_subset(a: &Assignment, b: &Assignment) -> bool {
    flatten(a).all(|(t, p)| b.get(&t).is_some_and(|s| s.contains(&p)))
}

fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

type HbError = (ResponseError, Option<String>);

fn invalid(msg: &str) -> HbError {
    (ResponseError::InvalidRequest, Some(msg.to_owned()))
}

impl GroupCoordinator {
    pub fn consumer_group(&self, group_id: &str) -> Option<&ConsumerGroup> {
        self.consumer_groups.get(group_id)
    }

    /// Validates a heartbeat's `SubscribedTopicRegex` (Kafka's
    /// `throwIfRegularExpressionIsInvalid`): the pattern and its compiled
    /// form if the group does not have it yet, `None` if it has or there is
    /// none (an empty regex clears the member's).
    fn compile_new_regex(
        &self,
        group_id: &str,
        req: &ConsumerGroupHeartbeatRequest,
    ) -> Result<Option<(String, Regex)>, HbError> {
        let Some(pattern) = req
            .subscribed_topic_regex
            .as_ref()
            .map(|r| r.as_str())
            .filter(|r| !r.is_empty())
        else {
            return Ok(None);
        };
        let known = self
            .consumer_groups
            .get(group_id)
            .is_some_and(|g| g.resolved_regexes.contains_key(pattern));
        if known {
            return Ok(None);
        }
        match compile_topic_regex(pattern) {
            Ok(matcher) => Ok(Some((pattern.to_owned(), matcher))),
            Err(reason) => Err((
                ResponseError::InvalidRegularExpression,
                Some(format!(
                    "SubscribedTopicRegex `{pattern}` is not a valid regular expression: {reason}."
                )),
            )),
        }
    }

    /// ConsumerGroupHeartbeat v0-1: join (epoch 0), heartbeat, leave (-1, -2).
    pub fn consumer_group_heartbeat(
        &mut self,
        token: RequestToken,
        req: &ConsumerGroupHeartbeatRequest,
        version: i16,
        ctx: &JoinContext,
        topics: &dyn TopicMetadata,
        now_ms: i64,
    ) -> Effects {
        let mut fx = Effects::default();
        let group_id = req.group_id.0.as_str();
        let before = self.consumer_groups.get(group_id).cloned();
        let result = self.cg_heartbeat(req, version, ctx, topics, now_ms, &mut fx);
        self.emit_consumer_group_diff(group_id, before.as_ref(), &mut fx);
        let response = match result {
            Ok(r) => r,
            Err((e, msg)) => {
                tracing::debug!(error = ?e, message = ?msg, request = ?req, "ConsumerGroupHeartbeat refused");
                ConsumerGroupHeartbeatResponse::default()
                    .with_error_code(e.code())
                    .with_error_message(msg.as_deref().map(sb))
            }
        };
        fx.respond(token, Response::ConsumerGroupHeartbeat(response));
        fx
    }

    fn cg_heartbeat(
        &mut self,
        req: &ConsumerGroupHeartbeatRequest,
        version: i16,
        ctx: &JoinContext,
        topics: &dyn TopicMetadata,
        now_ms: i64,
        fx: &mut Effects,
    ) -> Result<ConsumerGroupHeartbeatResponse, HbError> {
        let group_id = req.group_id.0.to_string();
        if let Some(e) = self.coordinator_error(&group_id) {
            return Err((e, None));
        }
        let epoch = req.member_epoch;
        let mut member_id = req.member_id.to_string();
        if group_id.is_empty() {
            return Err(invalid("GroupId can't be empty."));
        }
        if member_id.is_empty() && (version >= 1 || epoch != 0) {
            return Err(invalid("MemberId can't be empty."));
        }
        if epoch < -2 {
            return Err(invalid(&format!("MemberEpoch {epoch} is invalid.")));
        }
        if req.instance_id.as_ref().is_some_and(|i| i.is_empty()) {
            return Err(invalid("InstanceId can't be empty."));
        }
        if epoch == 0 {
            if req.rebalance_timeout_ms == -1 {
                return Err(invalid(
                    "RebalanceTimeoutMs must be provided in first request.",
                ));
            }
            if req.topic_partitions.as_ref().is_none_or(|t| !t.is_empty()) {
                return Err(invalid("TopicPartitions must be empty when (re-)joining."));
            }
            if req.subscribed_topic_names.is_none() && req.subscribed_topic_regex.is_none() {
                return Err(invalid(
                    "SubscribedTopicNames or SubscribedTopicRegex must be set in first request.",
                ));
            }
        }
        if let Some(a) = &req.server_assignor {
            if !ASSIGNORS.contains(&a.as_str()) {
                return Err((
                    ResponseError::UnsupportedAssignor,
                    Some(format!("ServerAssignor {} is not supported.", a.as_str())),
                ));
            }
        }
        let heartbeat_interval_ms = self.config.consumer_heartbeat_interval_ms;
        let session_ms = i64::from(self.config.consumer_session_timeout_ms);

        if epoch == -2 && req.instance_id.is_none() {
            return Err(invalid(
                "InstanceId can't be null when leaving with epoch -2.",
            ));
        }
        if epoch < 0 {
            // Leaving (-1), or a static member leaving for now (-2).
            let Some(group) = self.consumer_groups.get_mut(&group_id) else {
                return Err((ResponseError::UnknownMemberId, None));
            };
            if epoch == -2 {
                // It keeps its partitions until it returns under its
                // instance id or its session times out.
                let Some(m) = group.members.get_mut(&member_id) else {
                    return Err((ResponseError::UnknownMemberId, None));
                };
                if m.instance_id.as_deref() != req.instance_id.as_deref() {
                    return Err((ResponseError::FencedInstanceId, None));
                }
                // Its epoch waits in `previous_member_epoch` for its return.
                m.previous_member_epoch = m.member_epoch;
                m.member_epoch = -2;
                tracing::info!(
                    group_id,
                    member_id,
                    "static consumer group member left for now"
                );
                return Ok(ConsumerGroupHeartbeatResponse::default()
                    .with_member_id(Some(sb(&member_id)))
                    .with_member_epoch(epoch)
                    .with_heartbeat_interval_ms(0));
            }
            if group.members.remove(&member_id).is_none() {
                return Err((ResponseError::UnknownMemberId, None));
            }
            group.target.remove(&member_id);
            group.group_epoch += 1;
            group.compute_target();
            if group.members.is_empty() {
                group.state_timestamp_ms = now_ms;
            }
            tracing::info!(group_id, member_id, epoch, "consumer group member left");
            return Ok(ConsumerGroupHeartbeatResponse::default()
                .with_member_id(Some(sb(&member_id)))
                .with_member_epoch(epoch)
                .with_heartbeat_interval_ms(0));
        }

        let new_regex = self.compile_new_regex(&group_id, req)?;
        if !self.consumer_groups.contains_key(&group_id) {
            if let Some(classic) = self.groups.get(&group_id) {
                if !classic.members.is_empty() || !classic.pending_members.is_empty() {
                    return Err((
                        ResponseError::GroupIdNotFound,
                        Some(format!("Group {group_id} is not a consumer group.")),
                    ));
                }
            }
            if epoch != 0 {
                return Err((ResponseError::UnknownMemberId, None));
            }
            // An empty classic group (only offsets) becomes a consumer group.
            self.groups.remove(&group_id);
            self.consumer_groups.insert(
                group_id.clone(),
                ConsumerGroup::new(group_id.clone(), now_ms),
            );
        }
        let max_size = usize::try_from(self.config.group_max_size).unwrap_or(usize::MAX);
        let group = self
            .consumer_groups
            .get_mut(&group_id)
            .expect("group exists");
        let owned: Option<Assignment> = req.topic_partitions.as_ref().map(|tps| {
            let mut a = Assignment::new();
            for tp in tps {
                a.entry(tp.topic_id)
                    .or_default()
                    .extend(tp.partitions.iter().copied());
            }
            a
        });
        let mut bump = false;
        if epoch == 0 {
            if member_id.is_empty() {
                member_id = ctx.member_uuid.to_string();
            }
            let instance = req.instance_id.as_ref().map(|i| i.to_string());
            let previous = instance.as_ref().and_then(|i| {
                group
                    .members
                    .values()
                    .find(|m| m.instance_id.as_ref() == Some(i) && m.member_id != member_id)
                    .map(|m| (m.member_id.clone(), m.member_epoch))
            });
            match previous {
                Some((_, e)) if e != -2 => {
                    return Err((
                        ResponseError::UnreleasedInstanceId,
                        Some(format!(
                            "Static member with instance id {} is still in the group.",
                            instance.as_deref().unwrap_or("")
                        )),
                    ));
                }
                Some((ref old_id, _)) => {
                    // A static member back inside its session: the new
                    // member id takes over its epoch and assignment.
                    let mut m = group.members.remove(old_id).expect("member");
                    m.member_epoch = m.previous_member_epoch;
                    if let Some(t) = group.target.remove(old_id) {
                        group.target.insert(member_id.clone(), t);
                    }
                    let epoch_back = m.member_epoch;
                    m.member_id = member_id.clone();
                    group.members.insert(member_id.clone(), m);
                    tracing::info!(
                        group_id,
                        member_id,
                        old_id,
                        epoch_back,
                        "static consumer group member replaced"
                    );
                }
                None => {}
            }
            match group.members.get_mut(&member_id) {
                Some(_) if previous.is_some() => {}
                Some(m) => {
                    // A rejoin: whatever it owned, it owns no more.
                    m.hold(Assignment::new(), Assignment::new());
                    m.member_epoch = 0;
                    m.previous_member_epoch = 0;
                    m.state = MemberState::Stable;
                    m.revocation_deadline_ms = None;
                }
                None => {
                    if group.members.len() >= max_size {
                        return Err((
                            ResponseError::GroupMaxSizeReached,
                            Some(format!("The group {group_id} has reached its max size.")),
                        ));
                    }
                    group.members.insert(
                        member_id.clone(),
                        ConsumerMember {
                            member_id: member_id.clone(),
                            instance_id: None,
                            rack_id: None,
                            client_id: String::new(),
                            client_host: String::new(),
                            subscribed: BTreeSet::new(),
                            subscribed_topic_regex: None,
                            server_assignor: None,
                            rebalance_timeout_ms: req.rebalance_timeout_ms,
                            member_epoch: 0,
                            previous_member_epoch: 0,
                            state: MemberState::Stable,
                            assigned: Assignment::new(),
                            revoking: Assignment::new(),
                            assignment_epochs: BTreeMap::new(),
                            session_deadline_ms: now_ms + session_ms,
                            revocation_deadline_ms: None,
                        },
                    );
                    bump = true;
                    tracing::info!(group_id, member_id, "consumer group member joined");
                }
            }
        } else {
            let Some(m) = group.members.get(&member_id) else {
                return Err((ResponseError::UnknownMemberId, None));
            };
            if epoch > m.member_epoch {
                return Err((ResponseError::FencedMemberEpoch, None));
            }
            if epoch < m.member_epoch {
                let ok = epoch == m.previous_member_epoch
                    && owned.as_ref().is_some_and(|o| is_subset(o, &m.assigned));
                if !ok {
                    return Err((ResponseError::FencedMemberEpoch, None));
                }
            }
        }
        let m = group.members.get_mut(&member_id).expect("member");
        let before = m.assigned.clone();
        if let Some(names) = &req.subscribed_topic_names {
            let names: BTreeSet<String> = names.iter().map(|n| n.0.to_string()).collect();
            if names != m.subscribed {
                m.subscribed = names;
                bump = true;
            }
        }
        if let Some(r) = &req.subscribed_topic_regex {
            // librdkafka sends an empty regex next to its topic names: it
            // clears a regex subscription.
            let regex = (!r.is_empty()).then(|| r.to_string());
            if regex != m.subscribed_topic_regex {
                m.subscribed_topic_regex = regex;
                bump = true;
            }
        }
        if let Some(a) = &req.server_assignor {
            if m.server_assignor.as_deref() != Some(a.as_str()) {
                m.server_assignor = Some(a.to_string());
                bump = true;
            }
        }
        if req.rebalance_timeout_ms != -1 {
            m.rebalance_timeout_ms = req.rebalance_timeout_ms;
        }
        if let Some(i) = &req.instance_id {
            m.instance_id = Some(i.to_string());
        }
        if let Some(r) = &req.rack_id {
            m.rack_id = Some(r.to_string());
        }
        if !ctx.client_id.is_empty() || m.client_id.is_empty() {
            m.client_id = ctx.client_id.clone();
        }
        if !ctx.client_host.is_empty() || m.client_host.is_empty() {
            m.client_host = ctx.client_host.clone();
        }
        m.session_deadline_ms = now_ms + session_ms;
        fx.timer(
            TimerKey::ConsumerSession {
                group_id: group_id.clone(),
                member_id: member_id.clone(),
            },
            m.session_deadline_ms,
        );

        // The subscribed topics as they are now: by name, and whatever the
        // regexes match today. A topic created or deleted changes them, and
        // with them the group epoch.
        if let Some((pattern, matcher)) = new_regex {
            group
                .resolved_regexes
                .insert(pattern, ResolvedRegex::new(matcher));
        }
        group.refresh_regexes(topics);
        let fresh: BTreeMap<String, (Uuid, i32)> = group
            .subscribed_topic_names()
            .into_iter()
            .filter_map(|n| topics.partitions(n).map(|v| (n.to_owned(), v)))
            .collect();
        if fresh != group.topics {
            group.topics = fresh;
            bump = true;
        }
        if bump {
            group.group_epoch += 1;
        }
        if group.group_epoch > group.assignment_epoch {
            group.compute_target();
        }
        group.reconcile(&member_id, owned.as_ref(), now_ms);

        let m = &group.members[&member_id];
        if let Some(deadline) = m.revocation_deadline_ms {
            fx.timer(
                TimerKey::ConsumerRebalance {
                    group_id: group_id.clone(),
                    member_id: member_id.clone(),
                },
                deadline,
            );
        }
        let full = epoch == 0
            || (req.rebalance_timeout_ms != -1
                && (req.subscribed_topic_names.is_some() || req.subscribed_topic_regex.is_some())
                && req.topic_partitions.is_some());
        let mut response = ConsumerGroupHeartbeatResponse::default()
            .with_member_id(Some(sb(&member_id)))
            .with_member_epoch(m.member_epoch)
            .with_heartbeat_interval_ms(heartbeat_interval_ms);
        if full || before != m.assigned {
            response = response.with_assignment(Some(
                cgh::Assignment::default().with_topic_partitions(
                    m.assigned
                        .iter()
                        .map(|(t, ps)| {
                            cgh::TopicPartitions::default()
                                .with_topic_id(*t)
                                .with_partitions(ps.iter().copied().collect())
                        })
                        .collect(),
                ),
            ));
        }
        Ok(response)
    }

    /// Removes a consumer group member whose session (or revocation)
    /// deadline passed; the others get its partitions.
    pub(crate) fn on_consumer_timer(
        &mut self,
        group_id: &str,
        member_id: &str,
        revocation: bool,
        now_ms: i64,
        fx: &mut Effects,
    ) {
        let Some(group) = self.consumer_groups.get_mut(group_id) else {
            return;
        };
        let Some(m) = group.members.get(member_id) else {
            return;
        };
        let deadline = if revocation {
            match m.revocation_deadline_ms {
                Some(d) if m.state == MemberState::UnrevokedPartitions => d,
                _ => return,
            }
        } else {
            m.session_deadline_ms
        };
        if deadline > now_ms {
            let key = if revocation {
                TimerKey::ConsumerRebalance {
                    group_id: group_id.to_owned(),
                    member_id: member_id.to_owned(),
                }
            } else {
                TimerKey::ConsumerSession {
                    group_id: group_id.to_owned(),
                    member_id: member_id.to_owned(),
                }
            };
            fx.timer(key, deadline);
            return;
        }
        tracing::info!(
            group_id,
            member_id,
            revocation,
            "consumer group member expired"
        );
        group.members.remove(member_id);
        group.target.remove(member_id);
        group.group_epoch += 1;
        group.compute_target();
        if group.members.is_empty() {
            group.state_timestamp_ms = now_ms;
        }
    }

    /// Re-arms the session timers of consumer group members (after a load).
    pub(crate) fn consumer_timers(&self, fx: &mut Effects) {
        for g in self.consumer_groups.values() {
            for m in g.members.values() {
                fx.timer(
                    TimerKey::ConsumerSession {
                        group_id: g.group_id.clone(),
                        member_id: m.member_id.clone(),
                    },
                    m.session_deadline_ms,
                );
            }
        }
    }

    /// OffsetCommit and TxnOffsetCommit against a consumer group (Kafka's
    /// `ConsumerGroup.validateOffsetCommit`, with KIP-1251's assignment
    /// epochs): `None` if not a consumer group, else the error code for
    /// the whole commit (0 when it may go ahead).
    ///
    /// A member's own epoch commits anything; a newer one nothing. An
    /// older one commits only partitions the member held already at that
    /// epoch and holds still: a commit sent before the heartbeat answer
    /// that moved the member on is not refused for that, while one for a
    /// partition handed to it (or to anyone) since is. Topic names resolve
    /// through the group's subscribed topics, so a partition of a topic the
    /// group no longer subscribes to is refused at an older epoch.
    pub(crate) fn validate_consumer_offset_commit(&self, c: &Committer<'_>) -> Option<i16> {
        let group = self.consumer_groups.get(c.group_id)?;
        let epoch = c.generation_id_or_member_epoch;
        if epoch < 0 && group.members.is_empty() {
            return Some(0);
        }
        // A TxnOffsetCommit without member fields (before v3, or from a
        // producer given no group metadata) is not fenced by the group.
        if c.transactional()
            && epoch == -1
            && c.member_id.is_empty()
            && c.group_instance_id.is_none()
        {
            return Some(0);
        }
        let Some(m) = group.members.get(c.member_id) else {
            return Some(ResponseError::UnknownMemberId.code());
        };
        if !c.transactional() && c.version < FIRST_CONSUMER_PROTOCOL_COMMIT_VERSION {
            return Some(ResponseError::UnsupportedVersion.code());
        }
        let held_then = || {
            c.topics.all(|topic, partition| {
                (group.topics.get(topic))
                    .is_some_and(|&(id, _)| m.held_since((id, partition), epoch))
            })
        };
        match epoch.cmp(&m.member_epoch) {
            Ordering::Equal => Some(0),
            Ordering::Less if held_then() => {
                tracing::debug!(
                    group_id = c.group_id,
                    member_id = c.member_id,
                    commit_epoch = epoch,
                    member_epoch = m.member_epoch,
                    "offset commit from an older member epoch: its partitions were held since"
                );
                Some(0)
            }
            _ => {
                tracing::info!(
                    group_id = c.group_id,
                    member_id = c.member_id,
                    commit_epoch = epoch,
                    member_epoch = m.member_epoch,
                    transactional = c.transactional(),
                    "offset commit refused: stale member epoch"
                );
                Some(ResponseError::StaleMemberEpoch.code())
            }
        }
    }

    /// OffsetFetch v9 with a member epoch (`ConsumerGroup.validateOffsetFetch`).
    pub(crate) fn validate_consumer_offset_fetch(
        &self,
        group_id: &str,
        member_id: Option<&str>,
        member_epoch: i32,
    ) -> Option<ResponseError> {
        let group = self.consumer_groups.get(group_id)?;
        if member_epoch < 0 {
            return None;
        }
        match group.members.get(member_id.unwrap_or("")) {
            None => Some(ResponseError::UnknownMemberId),
            Some(m) if m.member_epoch != member_epoch => Some(ResponseError::StaleMemberEpoch),
            Some(_) => None,
        }
    }

    /// ConsumerGroupDescribe v0-1.
    pub fn consumer_group_describe(
        &self,
        req: &ConsumerGroupDescribeRequest,
        version: i16,
    ) -> ConsumerGroupDescribeResponse {
        let groups = req
            .group_ids
            .iter()
            .map(|id| {
                let out = CgDescribedGroup::default()
                    .with_group_id(id.clone())
                    .with_authorized_operations(i32::MIN);
                if let Some(e) = self.coordinator_error(id.0.as_str()) {
                    return out.with_error_code(e.code());
                }
                let Some(g) = self.consumer_groups.get(id.0.as_str()) else {
                    let msg = if self.groups.contains_key(id.0.as_str()) {
                        format!("Group {} is not a consumer group.", id.0.as_str())
                    } else {
                        format!("Group {} not found.", id.0.as_str())
                    };
                    return out
                        .with_error_code(ResponseError::GroupIdNotFound.code())
                        .with_error_message(Some(sb(&msg)))
                        .with_group_state(sb("Dead"));
                };
                let describe = |a: &Assignment| {
                    cgd::Assignment::default().with_topic_partitions(
                        a.iter()
                            .map(|(t, ps)| {
                                cgd::TopicPartitions::default()
                                    .with_topic_id(*t)
                                    .with_topic_name(TopicName(sb(&g.topic_name(t))))
                                    .with_partitions(ps.iter().copied().collect())
                            })
                            .collect(),
                    )
                };
                let empty = Assignment::new();
                let members = g
                    .members
                    .values()
                    .map(|m| {
                        let mut d = cgd::Member::default()
                            .with_member_id(sb(&m.member_id))
                            .with_instance_id(m.instance_id.as_deref().map(sb))
                            .with_rack_id(m.rack_id.as_deref().map(sb))
                            .with_member_epoch(m.member_epoch)
                            .with_client_id(sb(&m.client_id))
                            .with_client_host(sb(&m.client_host))
                            .with_subscribed_topic_names(
                                m.subscribed.iter().map(|t| TopicName(sb(t))).collect(),
                            )
                            .with_subscribed_topic_regex(
                                m.subscribed_topic_regex.as_deref().map(sb),
                            )
                            .with_assignment(describe(&m.assigned))
                            .with_target_assignment(describe(
                                g.target.get(&m.member_id).unwrap_or(&empty),
                            ));
                        if version >= 1 {
                            d = d.with_member_type(1);
                        }
                        d
                    })
                    .collect();
                out.with_group_state(sb(g.state().as_str()))
                    .with_group_epoch(g.group_epoch)
                    .with_assignment_epoch(g.assignment_epoch)
                    .with_assignor_name(sb(&g.assignor))
                    .with_members(members)
            })
            .collect();
        ConsumerGroupDescribeResponse::default().with_groups(groups)
    }
}

/// `GroupId` from a `&str` (tests and admin).
pub fn group_id(s: &str) -> GroupId {
    GroupId(sb(s))
}
