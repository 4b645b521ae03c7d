//! The classic group coordinator as a deterministic state machine (Kafka's
//! `CoordinatorShard` shape): requests and timers go in with the time as an
//! argument, `Effects` come out as data. Nothing here sleeps, spawns or does
//! I/O; `service.rs` appends the records, releases the responses and arms the
//! timers.
//!
//! Responses that wait (JoinGroup until the join phase ends, SyncGroup until
//! the leader's assignment) are parked under the caller's `RequestToken` and
//! come out in the `Effects` of a later call.

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    ConsumerGroupHeartbeatResponse, DeleteGroupsRequest, DeleteGroupsResponse,
    DescribeGroupsRequest, DescribeGroupsResponse, GroupId, HeartbeatRequest, HeartbeatResponse,
    JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest,
    ListGroupsResponse, OffsetCommitRequest, OffsetCommitResponse, OffsetDeleteRequest,
    OffsetDeleteResponse, OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest,
    SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use crate::consumer_group::ConsumerGroup;
use crate::group::{Group, GroupState, InitialDelay};
use crate::member::{Member, Parked, Protocol};
use crate::offsets::Offsets;
use crate::records::{self, OffsetCommitValue, Record, RecordError};
use crate::GroupConfig;

/// How often the coordinator looks for offsets past retention
/// (Kafka's `offsets.retention.check.interval.ms` default).
pub const OFFSETS_RETENTION_CHECK_INTERVAL_MS: i64 = 600_000;

/// Identifies one request whose response may be released later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestToken(pub u64);

/// A timer the coordinator wants to fire at a deadline. Deadlines live in the
/// state machine; a timer that fires early or for a stale state is ignored
/// (or re-armed), so the driver never needs to cancel one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimerKey {
    /// The initial rebalance delay or the rebalance timeout of a group in
    /// PreparingRebalance.
    Join { group_id: String },
    /// The session timeout of a member, or the deadline of a member id
    /// handed out with MEMBER_ID_REQUIRED.
    Session { group_id: String, member_id: String },
    /// Members that completed the join but have not synced within the
    /// rebalance timeout.
    PendingSync { group_id: String },
    /// The periodic scan for offsets past retention.
    OffsetsExpiration,
    /// The session timeout of a KIP-848 consumer group member.
    ConsumerSession { group_id: String, member_id: String },
    /// The rebalance timeout of a consumer group member asked to revoke.
    ConsumerRebalance { group_id: String, member_id: String },
}

/// A response the service hands to the request that holds its token.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    JoinGroup(JoinGroupResponse),
    SyncGroup(SyncGroupResponse),
    Heartbeat(HeartbeatResponse),
    LeaveGroup(LeaveGroupResponse),
    OffsetCommit(OffsetCommitResponse),
    OffsetDelete(OffsetDeleteResponse),
    DeleteGroups(DeleteGroupsResponse),
    ConsumerGroupHeartbeat(ConsumerGroupHeartbeatResponse),
}

impl Response {
    /// The same response, failed with `code` (used when the records it
    /// depends on could not be appended).
    pub fn fail(self, code: i16) -> Response {
        match self {
            Response::JoinGroup(r) => Response::JoinGroup(r.with_error_code(code)),
            Response::SyncGroup(r) => Response::SyncGroup(
                r.with_error_code(code)
                    .with_assignment(Bytes::new())
                    .with_protocol_type(None)
                    .with_protocol_name(None),
            ),
            Response::Heartbeat(r) => Response::Heartbeat(r.with_error_code(code)),
            Response::LeaveGroup(r) => Response::LeaveGroup(r.with_error_code(code)),
            Response::OffsetCommit(mut r) => {
                for t in &mut r.topics {
                    for p in &mut t.partitions {
                        p.error_code = code;
                    }
                }
                Response::OffsetCommit(r)
            }
            Response::OffsetDelete(r) => {
                Response::OffsetDelete(r.with_error_code(code).with_topics(Vec::new()))
            }
            Response::DeleteGroups(mut r) => {
                for g in &mut r.results {
                    g.error_code = code;
                }
                Response::DeleteGroups(r)
            }
            Response::ConsumerGroupHeartbeat(r) => Response::ConsumerGroupHeartbeat(
                ConsumerGroupHeartbeatResponse::default()
                    .with_error_code(code)
                    .with_member_id(r.member_id),
            ),
        }
    }
}

/// One record for `__consumer_offsets`: partition, key, value (`None` = tombstone).
pub type OutRecord = (i32, Vec<u8>, Option<Vec<u8>>);

/// What a call asks its driver to do, in this order: append `records`, then
/// release `responses`, then arm `timers`.
#[derive(Debug, Default)]
pub struct Effects {
    pub records: Vec<OutRecord>,
    pub responses: Vec<(RequestToken, Response)>,
    pub timers: Vec<(TimerKey, i64)>,
}

impl Effects {
    pub(crate) fn respond(&mut self, token: RequestToken, response: Response) {
        self.responses.push((token, response));
    }

    pub(crate) fn timer(&mut self, key: TimerKey, deadline_ms: i64) {
        self.timers.push((key, deadline_ms));
    }
}

/// What the request header says about the client, and the id material a
/// new member gets (passed in so the state machine stays deterministic).
#[derive(Debug, Clone)]
pub struct JoinContext {
    pub client_id: String,
    pub client_host: String,
    pub member_uuid: Uuid,
}

const NONE: i16 = 0;

fn code(e: ResponseError) -> i16 {
    e.code()
}

fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

/// The classic group coordinator of every `__consumer_offsets` partition
/// this node leads (all of them: Keel is single-node for now).
#[derive(Debug)]
pub struct GroupCoordinator {
    pub(crate) config: GroupConfig,
    pub(crate) groups: BTreeMap<String, Group>,
    /// KIP-848 consumer groups (`consumer_group.rs`); a group id is in at
    /// most one of `groups` and `consumer_groups`.
    pub(crate) consumer_groups: BTreeMap<String, ConsumerGroup>,
    offsets: Offsets,
    /// False until `complete_load`: requests get COORDINATOR_LOAD_IN_PROGRESS.
    pub(crate) loaded: bool,
}

impl GroupCoordinator {
    pub fn new(config: GroupConfig) -> Self {
        assert!(config.offsets_topic_partitions > 0);
        assert!(config.group_min_session_timeout_ms <= config.group_max_session_timeout_ms);
        assert!(config.group_initial_rebalance_delay_ms >= 0);
        GroupCoordinator {
            config,
            groups: BTreeMap::new(),
            consumer_groups: BTreeMap::new(),
            offsets: Offsets::default(),
            loaded: false,
        }
    }

    pub fn config(&self) -> &GroupConfig {
        &self.config
    }

    pub fn partition_for(&self, group_id: &str) -> i32 {
        records::partition_for(group_id, self.config.offsets_topic_partitions)
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    pub fn group(&self, group_id: &str) -> Option<&Group> {
        self.groups.get(group_id)
    }

    pub fn offsets(&self) -> &Offsets {
        &self.offsets
    }

    // ------------------------------------------------------------ loading

    /// Applies one `__consumer_offsets` record. Keys of other coordinators
    /// (KIP-848, share groups) are skipped.
    pub fn replay(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), RecordError> {
        match records::decode(key, value)? {
            Record::OffsetCommit {
                group_id,
                topic,
                partition,
                value,
            } => match value {
                Some(v) => {
                    let ts = v.commit_timestamp_ms;
                    self.groups
                        .entry(group_id.clone())
                        .or_insert_with(|| Group::new(group_id.clone(), ts));
                    self.offsets.put(&group_id, &topic, partition, v);
                }
                None => {
                    self.offsets.remove(&group_id, &topic, partition);
                }
            },
            Record::GroupMetadata { group_id, value } => match value {
                Some(v) => {
                    let group = Group::from_record(group_id.clone(), &v);
                    self.groups.insert(group_id, group);
                }
                None => {
                    self.groups.remove(&group_id);
                    self.offsets.remove_group(&group_id);
                }
            },
            Record::Other { .. } => {}
        }
        Ok(())
    }

    /// Ends loading: requests are served from now on, every replayed member
    /// gets a full session to heartbeat, and the retention scan starts.
    pub fn complete_load(&mut self, now_ms: i64) -> Effects {
        let mut fx = Effects::default();
        self.loaded = true;
        for group in self.groups.values_mut() {
            for m in group.members.values_mut() {
                m.session_deadline_ms = now_ms + i64::from(m.session_timeout_ms);
                fx.timer(
                    TimerKey::Session {
                        group_id: group.group_id.clone(),
                        member_id: m.member_id.clone(),
                    },
                    m.session_deadline_ms,
                );
            }
        }
        self.consumer_timers(&mut fx);
        fx.timer(
            TimerKey::OffsetsExpiration,
            now_ms + OFFSETS_RETENTION_CHECK_INTERVAL_MS,
        );
        fx
    }

    // ------------------------------------------------------------ JoinGroup

    pub fn join_group(
        &mut self,
        token: RequestToken,
        req: &JoinGroupRequest,
        version: i16,
        ctx: &JoinContext,
        now_ms: i64,
    ) -> Effects {
        let mut fx = Effects::default();
        let member_id = req.member_id.to_string();
        let fail = |fx: &mut Effects, e: ResponseError, member_id: &str| {
            fx.respond(
                token,
                Response::JoinGroup(join_error(version, code(e), member_id)),
            );
        };
        if !self.loaded {
            fail(
                &mut fx,
                ResponseError::CoordinatorLoadInProgress,
                &member_id,
            );
            return fx;
        }
        let group_id = req.group_id.0.to_string();
        if group_id.is_empty() {
            fail(&mut fx, ResponseError::InvalidGroupId, &member_id);
            return fx;
        }
        if let Some(cg) = self.consumer_groups.get(&group_id) {
            // A consumer group: classic members may only take it over empty.
            if !cg.members.is_empty() {
                fail(
                    &mut fx,
                    ResponseError::InconsistentGroupProtocol,
                    &member_id,
                );
                return fx;
            }
            self.consumer_groups.remove(&group_id);
        }
        if req.session_timeout_ms < self.config.group_min_session_timeout_ms
            || req.session_timeout_ms > self.config.group_max_session_timeout_ms
        {
            fail(&mut fx, ResponseError::InvalidSessionTimeout, &member_id);
            return fx;
        }
        let created = !self.groups.contains_key(&group_id);
        if created {
            if !member_id.is_empty() {
                fail(&mut fx, ResponseError::UnknownMemberId, &member_id);
                return fx;
            }
            self.groups
                .insert(group_id.clone(), Group::new(group_id.clone(), now_ms));
        }
        let protocols: Vec<Protocol> = req
            .protocols
            .iter()
            .map(|p| Protocol {
                name: p.name.to_string(),
                metadata: p.metadata.clone(),
            })
            .collect();
        // JoinGroup v0 has no rebalance timeout; Kafka uses the session timeout.
        let rebalance_timeout_ms = if version == 0 {
            req.session_timeout_ms
        } else {
            req.rebalance_timeout_ms
        };
        let join = JoinArgs {
            token,
            version,
            group_instance_id: req.group_instance_id.as_ref().map(|s| s.to_string()),
            protocol_type: req.protocol_type.to_string(),
            protocols,
            session_timeout_ms: req.session_timeout_ms,
            rebalance_timeout_ms,
        };
        if member_id.is_empty() {
            self.join_unknown_member(&group_id, join, ctx, now_ms, &mut fx);
        } else {
            self.join_known_member(&group_id, &member_id, join, ctx, now_ms, &mut fx);
        }
        // A group created by a join that failed must not linger.
        if created {
            let g = &self.groups[&group_id];
            if g.members.is_empty() && g.pending_members.is_empty() {
                self.groups.remove(&group_id);
            }
        }
        fx
    }

    fn join_unknown_member(
        &mut self,
        group_id: &str,
        join: JoinArgs,
        ctx: &JoinContext,
        now_ms: i64,
        fx: &mut Effects,
    ) {
        let max_size = usize::try_from(self.config.group_max_size).unwrap_or(usize::MAX);
        let group = self.groups.get_mut(group_id).expect("group exists");
        let (token, version) = (join.token, join.version);
        if group.state == GroupState::Dead {
            fx.respond(
                token,
                Response::JoinGroup(join_error(
                    version,
                    code(ResponseError::CoordinatorNotAvailable),
                    "",
                )),
            );
            return;
        }
        if !group.supports_protocols(&join.protocol_type, &join.protocols) {
            fx.respond(
                token,
                Response::JoinGroup(join_error(
                    version,
                    code(ResponseError::InconsistentGroupProtocol),
                    "",
                )),
            );
            return;
        }
        let prefix = join.group_instance_id.as_deref().unwrap_or(&ctx.client_id);
        let new_member_id = format!("{prefix}-{}", ctx.member_uuid);
        if let Some(instance) = join.group_instance_id.clone() {
            if let Some(old_member_id) = group.static_members.get(&instance).cloned() {
                self.replace_static_member(
                    group_id,
                    &old_member_id,
                    &new_member_id,
                    join,
                    now_ms,
                    fx,
                );
                return;
            }
        }
        if group.size() >= max_size {
            fx.respond(
                token,
                Response::JoinGroup(join_error(
                    version,
                    code(ResponseError::GroupMaxSizeReached),
                    "",
                )),
            );
            return;
        }
        if join.group_instance_id.is_none() && version >= 4 {
            // KIP-394: hand out the id and wait for the member to come back with it.
            let deadline = now_ms + i64::from(join.session_timeout_ms);
            group
                .pending_members
                .insert(new_member_id.clone(), deadline);
            fx.timer(
                TimerKey::Session {
                    group_id: group_id.to_owned(),
                    member_id: new_member_id.clone(),
                },
                deadline,
            );
            fx.respond(
                token,
                Response::JoinGroup(join_error(
                    version,
                    code(ResponseError::MemberIdRequired),
                    &new_member_id,
                )),
            );
            return;
        }
        self.add_member_and_rebalance(group_id, &new_member_id, join, ctx, now_ms, fx);
    }

    fn join_known_member(
        &mut self,
        group_id: &str,
        member_id: &str,
        join: JoinArgs,
        ctx: &JoinContext,
        now_ms: i64,
        fx: &mut Effects,
    ) {
        let group = self.groups.get_mut(group_id).expect("group exists");
        let (token, version) = (join.token, join.version);
        let fail = |fx: &mut Effects, e: ResponseError| {
            fx.respond(
                token,
                Response::JoinGroup(join_error(version, code(e), member_id)),
            );
        };
        if group.state == GroupState::Dead {
            fail(fx, ResponseError::CoordinatorNotAvailable);
            return;
        }
        if !group.supports_protocols(&join.protocol_type, &join.protocols) {
            fail(fx, ResponseError::InconsistentGroupProtocol);
            return;
        }
        if group.pending_members.contains_key(member_id) {
            if join.group_instance_id.is_some() {
                // Pending ids are only handed to dynamic members.
                fail(fx, ResponseError::UnknownMemberId);
                return;
            }
            group.pending_members.remove(member_id);
            self.add_member_and_rebalance(group_id, member_id, join, ctx, now_ms, fx);
            return;
        }
        if let Err(e) = validate_member(group, member_id, join.group_instance_id.as_deref()) {
            fail(fx, e);
            return;
        }
        match group.state {
            GroupState::Empty | GroupState::Dead => fail(fx, ResponseError::UnknownMemberId),
            GroupState::PreparingRebalance => {
                self.update_member_and_park(group_id, member_id, join, now_ms, fx);
                self.maybe_complete_join(group_id, now_ms, fx);
            }
            GroupState::CompletingRebalance => {
                let member = &group.members[member_id];
                if member.matches(&join.protocols) {
                    // The member lost its JoinGroup response: send it again.
                    let response = current_join_response(group, member_id, version);
                    fx.respond(token, Response::JoinGroup(response));
                } else {
                    self.update_member_and_park(group_id, member_id, join, now_ms, fx);
                    self.prepare_rebalance(group_id, now_ms, fx);
                }
            }
            GroupState::Stable => {
                let member = &group.members[member_id];
                if group.is_leader(member_id) || !member.matches(&join.protocols) {
                    // The leader rejoining or changed metadata (e.g. a new
                    // subscription, or owned partitions under cooperative
                    // rebalancing) calls for a new generation.
                    self.update_member_and_park(group_id, member_id, join, now_ms, fx);
                    self.prepare_rebalance(group_id, now_ms, fx);
                } else {
                    // A follower with unchanged metadata just gets the
                    // current generation back and can sync.
                    let response = current_join_response(group, member_id, version);
                    fx.respond(token, Response::JoinGroup(response));
                }
            }
        }
    }

    fn add_member_and_rebalance(
        &mut self,
        group_id: &str,
        member_id: &str,
        join: JoinArgs,
        ctx: &JoinContext,
        now_ms: i64,
        fx: &mut Effects,
    ) {
        let group = self.groups.get_mut(group_id).expect("group exists");
        let member = Member {
            member_id: member_id.to_owned(),
            group_instance_id: join.group_instance_id,
            client_id: ctx.client_id.clone(),
            client_host: ctx.client_host.clone(),
            rebalance_timeout_ms: join.rebalance_timeout_ms,
            session_timeout_ms: join.session_timeout_ms,
            protocol_type: join.protocol_type,
            protocols: join.protocols,
            assignment: Bytes::new(),
            awaiting_join: Some(Parked {
                token: join.token,
                version: join.version,
            }),
            awaiting_sync: None,
            session_deadline_ms: now_ms + i64::from(join.session_timeout_ms),
        };
        fx.timer(
            TimerKey::Session {
                group_id: group_id.to_owned(),
                member_id: member_id.to_owned(),
            },
            member.session_deadline_ms,
        );
        group.add_member(member);
        if let Some(delay) = &mut group.initial_delay {
            delay.new_member_added = true;
        }
        self.maybe_prepare_rebalance_or_complete_join(group_id, now_ms, fx);
    }

    /// Records a known member's rejoin and parks its JoinGroup.
    fn update_member_and_park(
        &mut self,
        group_id: &str,
        member_id: &str,
        join: JoinArgs,
        now_ms: i64,
        fx: &mut Effects,
    ) {
        let group = self.groups.get_mut(group_id).expect("group exists");
        let member = group.members.get_mut(member_id).expect("member exists");
        member.protocols = join.protocols;
        member.rebalance_timeout_ms = join.rebalance_timeout_ms;
        member.session_timeout_ms = join.session_timeout_ms;
        member.session_deadline_ms = now_ms + i64::from(join.session_timeout_ms);
        let previous = member.awaiting_join.replace(Parked {
            token: join.token,
            version: join.version,
        });
        if let Some(previous) = previous {
            // A retried JoinGroup supersedes the one still parked.
            fx.respond(
                previous.token,
                Response::JoinGroup(join_error(
                    previous.version,
                    code(ResponseError::RebalanceInProgress),
                    member_id,
                )),
            );
        }
        fx.timer(
            TimerKey::Session {
                group_id: group_id.to_owned(),
                member_id: member_id.to_owned(),
            },
            member.session_deadline_ms,
        );
    }

    /// KIP-345: a known `group_instance_id` came back with no member id.
    fn replace_static_member(
        &mut self,
        group_id: &str,
        old_member_id: &str,
        new_member_id: &str,
        join: JoinArgs,
        now_ms: i64,
        fx: &mut Effects,
    ) {
        let partition = self.partition_for(group_id);
        let group = self.groups.get_mut(group_id).expect("group exists");
        let current_leader = group.leader_id.clone();
        {
            let old = group
                .members
                .get_mut(old_member_id)
                .expect("static member exists");
            // The old incarnation's parked requests are fenced.
            if let Some(p) = old.awaiting_join.take() {
                fx.respond(
                    p.token,
                    Response::JoinGroup(join_error(
                        p.version,
                        code(ResponseError::FencedInstanceId),
                        old_member_id,
                    )),
                );
            }
            if let Some(p) = old.awaiting_sync.take() {
                fx.respond(
                    p.token,
                    Response::SyncGroup(sync_error(code(ResponseError::FencedInstanceId))),
                );
            }
        }
        group.replace_member_id(old_member_id, new_member_id);
        match group.state {
            GroupState::Stable => {
                let member = group.members.get_mut(new_member_id).expect("replaced");
                let old_protocols =
                    std::mem::replace(&mut member.protocols, join.protocols.clone());
                let selected = group.select_protocol();
                if selected.is_some() && selected == group.protocol_name {
                    let member = group.members.get_mut(new_member_id).expect("replaced");
                    member.rebalance_timeout_ms = join.rebalance_timeout_ms;
                    member.session_timeout_ms = join.session_timeout_ms;
                    member.session_deadline_ms = now_ms + i64::from(join.session_timeout_ms);
                    fx.timer(
                        TimerKey::Session {
                            group_id: group_id.to_owned(),
                            member_id: new_member_id.to_owned(),
                        },
                        member.session_deadline_ms,
                    );
                    // Persist the new member id; the group stays Stable and
                    // the member keeps its assignment.
                    fx.records.push((
                        partition,
                        records::group_metadata_key(group_id),
                        Some(group.to_record().encode()),
                    ));
                    let version = join.version;
                    let is_leader = group.is_leader(new_member_id);
                    let skip_assignment = is_leader && version >= 9;
                    // Before v9 a static leader must not redo the assignment,
                    // so it is told the old leader id and acts as a follower.
                    let leader = if version >= 9 {
                        group.leader_id.clone()
                    } else {
                        current_leader
                    };
                    let members = if skip_assignment {
                        join_members(group, version)
                    } else {
                        Vec::new()
                    };
                    let response = join_success(
                        group,
                        version,
                        new_member_id,
                        leader.as_deref().unwrap_or(""),
                        members,
                    )
                    .with_skip_assignment(skip_assignment);
                    fx.respond(join.token, Response::JoinGroup(response));
                } else {
                    let member = group.members.get_mut(new_member_id).expect("replaced");
                    member.protocols = old_protocols;
                    self.update_member_and_park(group_id, new_member_id, join, now_ms, fx);
                    self.prepare_rebalance(group_id, now_ms, fx);
                }
            }
            GroupState::CompletingRebalance => {
                // The leader may already be assigning to the old member id:
                // only a new generation keeps ids and assignments consistent.
                self.update_member_and_park(group_id, new_member_id, join, now_ms, fx);
                self.prepare_rebalance(group_id, now_ms, fx);
            }
            GroupState::PreparingRebalance => {
                self.update_member_and_park(group_id, new_member_id, join, now_ms, fx);
                self.maybe_complete_join(group_id, now_ms, fx);
            }
            GroupState::Empty | GroupState::Dead => {
                unreachable!(
                    "group {group_id} has a static member but is {:?}",
                    group.state
                )
            }
        }
    }

    fn maybe_prepare_rebalance_or_complete_join(
        &mut self,
        group_id: &str,
        now_ms: i64,
        fx: &mut Effects,
    ) {
        let state = self.groups[group_id].state;
        match state {
            GroupState::Stable | GroupState::CompletingRebalance | GroupState::Empty => {
                self.prepare_rebalance(group_id, now_ms, fx)
            }
            GroupState::PreparingRebalance => self.maybe_complete_join(group_id, now_ms, fx),
            GroupState::Dead => {}
        }
    }

    /// Starts a rebalance: answers parked SyncGroups with
    /// REBALANCE_IN_PROGRESS and arms the join deadline.
    fn prepare_rebalance(&mut self, group_id: &str, now_ms: i64, fx: &mut Effects) {
        let initial_delay_ms = i64::from(self.config.group_initial_rebalance_delay_ms);
        let group = self.groups.get_mut(group_id).expect("group exists");
        if group.state == GroupState::CompletingRebalance {
            for m in group.members.values_mut() {
                m.assignment = Bytes::new();
                if let Some(p) = m.awaiting_sync.take() {
                    fx.respond(
                        p.token,
                        Response::SyncGroup(sync_error(code(ResponseError::RebalanceInProgress))),
                    );
                }
            }
        }
        group.pending_sync.clear();
        group.pending_sync_deadline_ms = None;
        let initial = group.state == GroupState::Empty;
        group.transition(GroupState::PreparingRebalance, now_ms);
        let deadline = if initial && initial_delay_ms > 0 {
            group.initial_delay = Some(InitialDelay {
                remaining_ms: (group.rebalance_timeout_ms() - initial_delay_ms).max(0),
                new_member_added: false,
            });
            now_ms + initial_delay_ms
        } else {
            group.initial_delay = None;
            now_ms + group.rebalance_timeout_ms()
        };
        group.join_deadline_ms = Some(deadline);
        fx.timer(
            TimerKey::Join {
                group_id: group_id.to_owned(),
            },
            deadline,
        );
        self.maybe_complete_join(group_id, now_ms, fx);
    }

    /// Drops a deleted group's offsets and writes the tombstones that delete
    /// it and them from `__consumer_offsets`.
    fn tombstone_group(&mut self, group_id: &str, fx: &mut Effects) {
        let partition = self.partition_for(group_id);
        for (topic, p) in self.offsets.remove_group(group_id) {
            fx.records.push((
                partition,
                records::offset_commit_key(group_id, &topic, p),
                None,
            ));
        }
        fx.records
            .push((partition, records::group_metadata_key(group_id), None));
    }

    /// Completes the join phase once everyone is in (never during the
    /// initial delay, which only its timer ends).
    fn maybe_complete_join(&mut self, group_id: &str, now_ms: i64, fx: &mut Effects) {
        let group = &self.groups[group_id];
        if group.state == GroupState::PreparingRebalance
            && group.initial_delay.is_none()
            && group.all_members_joined()
        {
            self.complete_join(group_id, now_ms, fx);
        }
    }

    fn complete_join(&mut self, group_id: &str, now_ms: i64, fx: &mut Effects) {
        let partition = self.partition_for(group_id);
        let group = self.groups.get_mut(group_id).expect("group exists");
        assert_eq!(group.state, GroupState::PreparingRebalance);
        group.join_deadline_ms = None;
        group.initial_delay = None;
        // A leader that did not rejoin hands over to one that did.
        let leader_joined = group
            .leader_id
            .as_ref()
            .and_then(|l| group.members.get(l))
            .is_some_and(|m| m.awaiting_join.is_some());
        if !leader_joined {
            if let Some(id) = group
                .members
                .values()
                .find(|m| m.awaiting_join.is_some())
                .map(|m| m.member_id.clone())
            {
                group.leader_id = Some(id);
            }
        }
        // Dynamic members that did not rejoin in time are dropped; static
        // members stay until their session expires (as Kafka does).
        let stale: Vec<String> = group
            .members
            .values()
            .filter(|m| m.awaiting_join.is_none() && !m.is_static())
            .map(|m| m.member_id.clone())
            .collect();
        for id in &stale {
            let removed = group.remove_member(id).expect("stale member");
            assert!(removed.awaiting_sync.is_none());
        }
        group.generation_id += 1;
        if group.members.is_empty() {
            group.protocol_name = None;
            group.leader_id = None;
            group.transition(GroupState::Empty, now_ms);
            fx.records.push((
                partition,
                records::group_metadata_key(group_id),
                Some(group.to_record().encode()),
            ));
            return;
        }
        group.protocol_name = group.select_protocol();
        assert!(group.protocol_name.is_some(), "members share no protocol");
        group.transition(GroupState::CompletingRebalance, now_ms);
        let ids: Vec<String> = group.members.keys().cloned().collect();
        for id in &ids {
            let parked = group.members[id.as_str()].awaiting_join;
            let Some(parked) = parked else { continue };
            let response = current_join_response(group, id, parked.version);
            let member = group.members.get_mut(id.as_str()).expect("member");
            member.awaiting_join = None;
            member.session_deadline_ms = now_ms + i64::from(member.session_timeout_ms);
            fx.timer(
                TimerKey::Session {
                    group_id: group_id.to_owned(),
                    member_id: id.clone(),
                },
                member.session_deadline_ms,
            );
            fx.respond(parked.token, Response::JoinGroup(response));
        }
        group.pending_sync = ids.into_iter().collect();
        let deadline = now_ms + group.rebalance_timeout_ms();
        group.pending_sync_deadline_ms = Some(deadline);
        fx.timer(
            TimerKey::PendingSync {
                group_id: group_id.to_owned(),
            },
            deadline,
        );
    }

    /// Removes a member, answers its parked requests with UNKNOWN_MEMBER_ID
    /// and lets the group rebalance without it.
    fn remove_member(&mut self, group_id: &str, member_id: &str, now_ms: i64, fx: &mut Effects) {
        let group = self.groups.get_mut(group_id).expect("group exists");
        let Some(member) = group.remove_member(member_id) else {
            return;
        };
        if let Some(p) = member.awaiting_join {
            fx.respond(
                p.token,
                Response::JoinGroup(join_error(
                    p.version,
                    code(ResponseError::UnknownMemberId),
                    member_id,
                )),
            );
        }
        if let Some(p) = member.awaiting_sync {
            fx.respond(
                p.token,
                Response::SyncGroup(sync_error(code(ResponseError::UnknownMemberId))),
            );
        }
        match group.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.prepare_rebalance(group_id, now_ms, fx)
            }
            GroupState::PreparingRebalance => self.maybe_complete_join(group_id, now_ms, fx),
            GroupState::Empty | GroupState::Dead => {}
        }
    }

    // ------------------------------------------------------------ SyncGroup

    pub fn sync_group(
        &mut self,
        token: RequestToken,
        req: &SyncGroupRequest,
        _version: i16,
        now_ms: i64,
    ) -> Effects {
        let mut fx = Effects::default();
        let fail = |fx: &mut Effects, e: ResponseError| {
            fx.respond(token, Response::SyncGroup(sync_error(code(e))));
        };
        if !self.loaded {
            fail(&mut fx, ResponseError::CoordinatorLoadInProgress);
            return fx;
        }
        let group_id = req.group_id.0.to_string();
        let member_id = req.member_id.to_string();
        let partition = self.partition_for(&group_id);
        let Some(group) = self.groups.get_mut(&group_id) else {
            fail(&mut fx, ResponseError::UnknownMemberId);
            return fx;
        };
        if group.state == GroupState::Dead {
            fail(&mut fx, ResponseError::CoordinatorNotAvailable);
            return fx;
        }
        if let Err(e) = validate_member(group, &member_id, req.group_instance_id.as_deref()) {
            fail(&mut fx, e);
            return fx;
        }
        if req.generation_id != group.generation_id {
            fail(&mut fx, ResponseError::IllegalGeneration);
            return fx;
        }
        let type_mismatch = req
            .protocol_type
            .as_ref()
            .is_some_and(|t| group.protocol_type.as_deref() != Some(&**t));
        let name_mismatch = req
            .protocol_name
            .as_ref()
            .is_some_and(|n| group.protocol_name.as_deref() != Some(&**n));
        if type_mismatch || name_mismatch {
            fail(&mut fx, ResponseError::InconsistentGroupProtocol);
            return fx;
        }
        match group.state {
            GroupState::Empty | GroupState::Dead => fail(&mut fx, ResponseError::UnknownMemberId),
            GroupState::PreparingRebalance => fail(&mut fx, ResponseError::RebalanceInProgress),
            GroupState::CompletingRebalance => {
                group.pending_sync.remove(&member_id);
                let member = group.members.get_mut(&member_id).expect("validated");
                member.session_deadline_ms = now_ms + i64::from(member.session_timeout_ms);
                fx.timer(
                    TimerKey::Session {
                        group_id: group_id.clone(),
                        member_id: member_id.clone(),
                    },
                    member.session_deadline_ms,
                );
                if let Some(previous) = member.awaiting_sync.replace(Parked {
                    token,
                    version: _version,
                }) {
                    fx.respond(
                        previous.token,
                        Response::SyncGroup(sync_error(code(ResponseError::RebalanceInProgress))),
                    );
                }
                if group.is_leader(&member_id) {
                    let assignments: BTreeMap<&str, &Bytes> = req
                        .assignments
                        .iter()
                        .map(|a| (&*a.member_id, &a.assignment))
                        .collect();
                    for m in group.members.values_mut() {
                        m.assignment = assignments
                            .get(m.member_id.as_str())
                            .map(|b| (*b).clone())
                            .unwrap_or_default();
                    }
                    group.transition(GroupState::Stable, now_ms);
                    fx.records.push((
                        partition,
                        records::group_metadata_key(&group_id),
                        Some(group.to_record().encode()),
                    ));
                    let protocol_type = group.protocol_type.clone();
                    let protocol_name = group.protocol_name.clone();
                    for m in group.members.values_mut() {
                        if let Some(p) = m.awaiting_sync.take() {
                            fx.respond(
                                p.token,
                                Response::SyncGroup(sync_success(
                                    protocol_type.as_deref(),
                                    protocol_name.as_deref(),
                                    m.assignment.clone(),
                                )),
                            );
                        }
                    }
                }
            }
            GroupState::Stable => {
                group.pending_sync.remove(&member_id);
                let member = group.members.get_mut(&member_id).expect("validated");
                member.session_deadline_ms = now_ms + i64::from(member.session_timeout_ms);
                fx.timer(
                    TimerKey::Session {
                        group_id: group_id.clone(),
                        member_id: member_id.clone(),
                    },
                    member.session_deadline_ms,
                );
                let response = sync_success(
                    group.protocol_type.as_deref(),
                    group.protocol_name.as_deref(),
                    member.assignment.clone(),
                );
                fx.respond(token, Response::SyncGroup(response));
            }
        }
        fx
    }

    // ------------------------------------------------------------ Heartbeat

    pub fn heartbeat(
        &mut self,
        token: RequestToken,
        req: &HeartbeatRequest,
        _version: i16,
        now_ms: i64,
    ) -> Effects {
        let mut fx = Effects::default();
        let error = self.heartbeat_inner(req, now_ms, &mut fx);
        fx.respond(
            token,
            Response::Heartbeat(HeartbeatResponse::default().with_error_code(error)),
        );
        fx
    }

    fn heartbeat_inner(&mut self, req: &HeartbeatRequest, now_ms: i64, fx: &mut Effects) -> i16 {
        if !self.loaded {
            return code(ResponseError::CoordinatorLoadInProgress);
        }
        let group_id = req.group_id.0.to_string();
        let member_id = req.member_id.to_string();
        let Some(group) = self.groups.get_mut(&group_id) else {
            return code(ResponseError::UnknownMemberId);
        };
        if group.state == GroupState::Dead {
            return code(ResponseError::CoordinatorNotAvailable);
        }
        if let Err(e) = validate_member(group, &member_id, req.group_instance_id.as_deref()) {
            return code(e);
        }
        if req.generation_id != group.generation_id {
            return code(ResponseError::IllegalGeneration);
        }
        let state = group.state;
        if state == GroupState::Empty {
            return code(ResponseError::UnknownMemberId);
        }
        let member = group.members.get_mut(&member_id).expect("validated");
        member.session_deadline_ms = now_ms + i64::from(member.session_timeout_ms);
        fx.timer(
            TimerKey::Session {
                group_id,
                member_id,
            },
            member.session_deadline_ms,
        );
        if state == GroupState::PreparingRebalance {
            code(ResponseError::RebalanceInProgress)
        } else {
            NONE
        }
    }

    // ------------------------------------------------------------ LeaveGroup

    pub fn leave_group(
        &mut self,
        token: RequestToken,
        req: &LeaveGroupRequest,
        version: i16,
        now_ms: i64,
    ) -> Effects {
        let mut fx = Effects::default();
        let top = |e: i16| LeaveGroupResponse::default().with_error_code(e);
        if !self.loaded {
            fx.respond(
                token,
                Response::LeaveGroup(top(code(ResponseError::CoordinatorLoadInProgress))),
            );
            return fx;
        }
        let group_id = req.group_id.0.to_string();
        let Some(group) = self.groups.get(&group_id) else {
            fx.respond(
                token,
                Response::LeaveGroup(top(code(ResponseError::UnknownMemberId))),
            );
            return fx;
        };
        if group.state == GroupState::Dead {
            fx.respond(
                token,
                Response::LeaveGroup(top(code(ResponseError::CoordinatorNotAvailable))),
            );
            return fx;
        }
        let identities: Vec<(String, Option<String>)> = if version >= 3 {
            req.members
                .iter()
                .map(|m| {
                    (
                        m.member_id.to_string(),
                        m.group_instance_id.as_ref().map(|s| s.to_string()),
                    )
                })
                .collect()
        } else {
            vec![(req.member_id.to_string(), None)]
        };
        let mut results = Vec::with_capacity(identities.len());
        for (member_id, instance) in identities {
            let error = self.leave_one(&group_id, &member_id, instance.as_deref(), now_ms, &mut fx);
            results.push((member_id, instance, error));
        }
        let response = if version >= 3 {
            top(NONE).with_members(
                results
                    .into_iter()
                    .map(|(member_id, instance, error)| {
                        MemberResponse::default()
                            .with_member_id(sb(&member_id))
                            .with_group_instance_id(instance.as_deref().map(sb))
                            .with_error_code(error)
                    })
                    .collect(),
            )
        } else {
            top(results[0].2)
        };
        fx.respond(token, Response::LeaveGroup(response));
        fx
    }

    fn leave_one(
        &mut self,
        group_id: &str,
        member_id: &str,
        instance: Option<&str>,
        now_ms: i64,
        fx: &mut Effects,
    ) -> i16 {
        let group = self.groups.get_mut(group_id).expect("group exists");
        let target = match instance {
            None => {
                if group.pending_members.remove(member_id).is_some() {
                    self.maybe_complete_join(group_id, now_ms, fx);
                    return NONE;
                }
                if !group.members.contains_key(member_id) {
                    return code(ResponseError::UnknownMemberId);
                }
                member_id.to_owned()
            }
            Some(instance) => match group.static_members.get(instance) {
                None => return code(ResponseError::UnknownMemberId),
                Some(current) if !member_id.is_empty() && current != member_id => {
                    return code(ResponseError::FencedInstanceId)
                }
                Some(current) => current.clone(),
            },
        };
        self.remove_member(group_id, &target, now_ms, fx);
        NONE
    }

    // ------------------------------------------------------------ timers

    /// Fires a timer. Timers whose deadline moved or whose state passed are
    /// re-armed or ignored.
    pub fn on_timer(&mut self, key: &TimerKey, now_ms: i64) -> Effects {
        let mut fx = Effects::default();
        if !self.loaded {
            return fx;
        }
        match key {
            TimerKey::Join { group_id } => self.on_join_timer(group_id, now_ms, &mut fx),
            TimerKey::Session {
                group_id,
                member_id,
            } => self.on_session_timer(group_id, member_id, now_ms, &mut fx),
            TimerKey::PendingSync { group_id } => {
                self.on_pending_sync_timer(group_id, now_ms, &mut fx)
            }
            TimerKey::OffsetsExpiration => {
                self.expire_offsets(now_ms, &mut fx);
                fx.timer(
                    TimerKey::OffsetsExpiration,
                    now_ms + OFFSETS_RETENTION_CHECK_INTERVAL_MS,
                );
            }
            TimerKey::ConsumerSession {
                group_id,
                member_id,
            } => self.on_consumer_timer(group_id, member_id, false, now_ms, &mut fx),
            TimerKey::ConsumerRebalance {
                group_id,
                member_id,
            } => self.on_consumer_timer(group_id, member_id, true, now_ms, &mut fx),
        }
        fx
    }

    fn on_join_timer(&mut self, group_id: &str, now_ms: i64, fx: &mut Effects) {
        let initial_delay_ms = i64::from(self.config.group_initial_rebalance_delay_ms);
        let Some(group) = self.groups.get_mut(group_id) else {
            return;
        };
        let Some(deadline) = group.join_deadline_ms else {
            return;
        };
        if group.state != GroupState::PreparingRebalance {
            return;
        }
        if deadline > now_ms {
            fx.timer(
                TimerKey::Join {
                    group_id: group_id.to_owned(),
                },
                deadline,
            );
            return;
        }
        if let Some(delay) = &mut group.initial_delay {
            if delay.new_member_added && delay.remaining_ms > 0 {
                // Members keep arriving: wait a little longer, within the
                // rebalance timeout.
                let extension = initial_delay_ms.min(delay.remaining_ms);
                delay.remaining_ms = (delay.remaining_ms - initial_delay_ms).max(0);
                delay.new_member_added = false;
                let deadline = now_ms + extension;
                group.join_deadline_ms = Some(deadline);
                fx.timer(
                    TimerKey::Join {
                        group_id: group_id.to_owned(),
                    },
                    deadline,
                );
                return;
            }
        }
        self.complete_join(group_id, now_ms, fx);
    }

    fn on_session_timer(&mut self, group_id: &str, member_id: &str, now_ms: i64, fx: &mut Effects) {
        let Some(group) = self.groups.get_mut(group_id) else {
            return;
        };
        let key = || TimerKey::Session {
            group_id: group_id.to_owned(),
            member_id: member_id.to_owned(),
        };
        if let Some(&deadline) = group.pending_members.get(member_id) {
            if deadline > now_ms {
                fx.timer(key(), deadline);
            } else {
                group.pending_members.remove(member_id);
                self.maybe_complete_join(group_id, now_ms, fx);
            }
            return;
        }
        let Some(member) = group.members.get_mut(member_id) else {
            return;
        };
        if member.session_deadline_ms > now_ms {
            fx.timer(key(), member.session_deadline_ms);
            return;
        }
        if member.awaiting_join.is_some() || member.awaiting_sync.is_some() {
            // A member with a parked request is alive; the rebalance and
            // pending-sync timeouts bound its wait instead.
            member.session_deadline_ms = now_ms + i64::from(member.session_timeout_ms);
            fx.timer(key(), member.session_deadline_ms);
            return;
        }
        tracing::info!(group_id, member_id, "member session expired");
        self.remove_member(group_id, member_id, now_ms, fx);
    }

    fn on_pending_sync_timer(&mut self, group_id: &str, now_ms: i64, fx: &mut Effects) {
        let Some(group) = self.groups.get(group_id) else {
            return;
        };
        let Some(deadline) = group.pending_sync_deadline_ms else {
            return;
        };
        if deadline > now_ms {
            fx.timer(
                TimerKey::PendingSync {
                    group_id: group_id.to_owned(),
                },
                deadline,
            );
            return;
        }
        if !matches!(
            group.state,
            GroupState::CompletingRebalance | GroupState::Stable
        ) {
            return;
        }
        let late: Vec<String> = group.pending_sync.iter().cloned().collect();
        self.groups
            .get_mut(group_id)
            .expect("group")
            .pending_sync_deadline_ms = None;
        for member_id in late {
            tracing::info!(group_id, member_id, "member did not sync in time");
            self.remove_member(group_id, &member_id, now_ms, fx);
        }
    }

    fn expire_offsets(&mut self, now_ms: i64, fx: &mut Effects) {
        let retention_ms = self.config.offsets_retention_ms;
        let candidates: Vec<String> = self
            .groups
            .keys()
            .chain(self.consumer_groups.keys())
            .chain(self.offsets.group_ids())
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for group_id in candidates {
            let partition = self.partition_for(&group_id);
            if let Some(cg) = self.consumer_groups.get(&group_id) {
                // Offsets of a consumer group expire only while it is empty,
                // counted from when it became empty.
                if !cg.members.is_empty()
                    || now_ms.saturating_sub(cg.state_timestamp_ms) < retention_ms
                {
                    continue;
                }
                for (topic, p) in self.offsets.remove_group(&group_id) {
                    fx.records.push((
                        partition,
                        records::offset_commit_key(&group_id, &topic, p),
                        None,
                    ));
                }
                self.consumer_groups.remove(&group_id);
                continue;
            }
            let expired =
                self.offsets
                    .expired(self.groups.get(&group_id), &group_id, retention_ms, now_ms);
            for (topic, p) in expired {
                self.offsets.remove(&group_id, &topic, p);
                fx.records.push((
                    partition,
                    records::offset_commit_key(&group_id, &topic, p),
                    None,
                ));
            }
            let empty = self
                .groups
                .get(&group_id)
                .is_some_and(|g| g.state == GroupState::Empty && g.members.is_empty());
            if empty && !self.offsets.has_offsets(&group_id) {
                self.groups.remove(&group_id);
                fx.records
                    .push((partition, records::group_metadata_key(&group_id), None));
            }
        }
    }

    // ------------------------------------------------------------ offsets

    pub fn offset_commit(
        &mut self,
        token: RequestToken,
        req: &OffsetCommitRequest,
        version: i16,
        now_ms: i64,
    ) -> Effects {
        let mut fx = Effects::default();
        let group_id = req.group_id.0.to_string();
        let partition = self.partition_for(&group_id);
        let group_error = self.validate_offset_commit(&group_id, req, now_ms);
        let mut topics = Vec::with_capacity(req.topics.len());
        for t in &req.topics {
            let topic = t.name.0.to_string();
            let mut partitions = Vec::with_capacity(t.partitions.len());
            for p in &t.partitions {
                let metadata = p.committed_metadata.as_deref().unwrap_or("");
                let error = if group_error != NONE {
                    group_error
                } else if topic.is_empty() {
                    // v10 names topics by id; the handler resolves ids to names.
                    code(ResponseError::UnknownTopicId)
                } else if metadata.len() > self.config.offset_metadata_max_bytes {
                    code(ResponseError::OffsetMetadataTooLarge)
                } else {
                    let value = OffsetCommitValue {
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        metadata: metadata.to_owned(),
                        commit_timestamp_ms: now_ms,
                    };
                    fx.records.push((
                        partition,
                        records::offset_commit_key(&group_id, &topic, p.partition_index),
                        Some(value.encode()),
                    ));
                    self.offsets
                        .put(&group_id, &topic, p.partition_index, value);
                    NONE
                };
                partitions.push(
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(error),
                );
            }
            let mut out = OffsetCommitResponseTopic::default().with_partitions(partitions);
            if version <= 9 {
                out = out.with_name(t.name.clone());
            }
            if version >= 10 {
                out = out.with_topic_id(t.topic_id);
            }
            topics.push(out);
        }
        fx.respond(
            token,
            Response::OffsetCommit(OffsetCommitResponse::default().with_topics(topics)),
        );
        fx
    }

    fn validate_offset_commit(
        &mut self,
        group_id: &str,
        req: &OffsetCommitRequest,
        now_ms: i64,
    ) -> i16 {
        if !self.loaded {
            return code(ResponseError::CoordinatorLoadInProgress);
        }
        if group_id.is_empty() {
            return code(ResponseError::InvalidGroupId);
        }
        if let Some(error) = self.validate_consumer_offset_commit(
            group_id,
            &req.member_id,
            req.generation_id_or_member_epoch,
        ) {
            return error;
        }
        let generation = req.generation_id_or_member_epoch;
        let member_id = req.member_id.to_string();
        let instance = req.group_instance_id.as_deref();
        let group = match self.groups.get(group_id) {
            Some(g) => g,
            None if generation < 0 => {
                // A simple consumer (or the admin client): the group exists
                // from now on, Empty, to hold its offsets.
                self.groups
                    .insert(group_id.to_owned(), Group::new(group_id.to_owned(), now_ms));
                return NONE;
            }
            None => return code(ResponseError::IllegalGeneration),
        };
        if group.state == GroupState::Dead {
            return code(ResponseError::CoordinatorNotAvailable);
        }
        if generation < 0 && group.state == GroupState::Empty {
            return NONE;
        }
        if generation >= 0 || !member_id.is_empty() || instance.is_some() {
            if let Err(e) = validate_member(group, &member_id, instance) {
                return code(e);
            }
            if generation != group.generation_id {
                return code(ResponseError::IllegalGeneration);
            }
        } else if group.state != GroupState::Empty {
            return code(ResponseError::UnknownMemberId);
        }
        if group.state == GroupState::CompletingRebalance {
            return code(ResponseError::RebalanceInProgress);
        }
        NONE
    }

    /// OffsetFetch, v1-7 for one group and v8+ for a batch of groups.
    pub fn offset_fetch(&self, req: &OffsetFetchRequest, version: i16) -> OffsetFetchResponse {
        if version <= 7 {
            let group_id = req.group_id.0.to_string();
            if !self.loaded {
                let error = code(ResponseError::CoordinatorLoadInProgress);
                let mut response = OffsetFetchResponse::default();
                if version >= 2 {
                    response = response.with_error_code(error);
                } else {
                    // v1 has no top-level error: put it on every partition.
                    response = response.with_topics(
                        req.topics
                            .iter()
                            .flatten()
                            .map(|t| {
                                OffsetFetchResponseTopic::default()
                                    .with_name(t.name.clone())
                                    .with_partitions(
                                        t.partition_indexes
                                            .iter()
                                            .map(|&p| {
                                                OffsetFetchResponsePartition::default()
                                                    .with_partition_index(p)
                                                    .with_committed_offset(-1)
                                                    .with_error_code(error)
                                            })
                                            .collect(),
                                    )
                            })
                            .collect(),
                    );
                }
                return response;
            }
            let requested: Option<Vec<(String, Vec<i32>)>> = req.topics.as_ref().map(|ts| {
                ts.iter()
                    .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
                    .collect()
            });
            let topics = self
                .fetch_group_offsets(&group_id, requested)
                .into_iter()
                .map(|(topic, parts)| {
                    OffsetFetchResponseTopic::default()
                        .with_name(TopicName(sb(&topic)))
                        .with_partitions(
                            parts
                                .into_iter()
                                .map(|(p, v)| {
                                    OffsetFetchResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_committed_offset(v.offset)
                                        .with_committed_leader_epoch(v.leader_epoch)
                                        .with_metadata(Some(sb(&v.metadata)))
                                })
                                .collect(),
                        )
                })
                .collect();
            return OffsetFetchResponse::default().with_topics(topics);
        }
        let groups = req
            .groups
            .iter()
            .map(|g| {
                let out = OffsetFetchResponseGroup::default().with_group_id(g.group_id.clone());
                if !self.loaded {
                    return out.with_error_code(code(ResponseError::CoordinatorLoadInProgress));
                }
                if version >= 9 {
                    if let Some(e) = self.validate_consumer_offset_fetch(
                        &g.group_id.0,
                        g.member_id.as_deref(),
                        g.member_epoch,
                    ) {
                        return out.with_error_code(code(e));
                    }
                }
                let ids: BTreeMap<String, Uuid> = g
                    .topics
                    .iter()
                    .flatten()
                    .map(|t| (t.name.0.to_string(), t.topic_id))
                    .collect();
                let requested: Option<Vec<(String, Vec<i32>)>> = g.topics.as_ref().map(|ts| {
                    ts.iter()
                        .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
                        .collect()
                });
                let topics = self
                    .fetch_group_offsets(&g.group_id.0, requested)
                    .into_iter()
                    .map(|(topic, parts)| {
                        let unknown_id = topic.is_empty();
                        let mut t = OffsetFetchResponseTopics::default()
                            .with_name(TopicName(sb(&topic)))
                            .with_partitions(
                                parts
                                    .into_iter()
                                    .map(|(p, v)| {
                                        let r = OffsetFetchResponsePartitions::default()
                                            .with_partition_index(p)
                                            .with_committed_offset(v.offset)
                                            .with_committed_leader_epoch(v.leader_epoch)
                                            .with_metadata(Some(sb(&v.metadata)));
                                        if unknown_id {
                                            r.with_error_code(code(ResponseError::UnknownTopicId))
                                        } else {
                                            r
                                        }
                                    })
                                    .collect(),
                            );
                        if version >= 10 {
                            t = t.with_topic_id(ids.get(&topic).copied().unwrap_or_default());
                        }
                        t
                    })
                    .collect();
                out.with_topics(topics)
            })
            .collect();
        OffsetFetchResponse::default().with_groups(groups)
    }

    /// The offsets of `requested` partitions (`None`: every committed one),
    /// with `-1`, epoch `-1` and `""` for partitions without a commit.
    fn fetch_group_offsets(
        &self,
        group_id: &str,
        requested: Option<Vec<(String, Vec<i32>)>>,
    ) -> Vec<(String, Vec<(i32, OffsetCommitValue)>)> {
        let missing = OffsetCommitValue {
            offset: -1,
            leader_epoch: -1,
            metadata: String::new(),
            commit_timestamp_ms: -1,
        };
        match requested {
            Some(topics) => topics
                .into_iter()
                .map(|(topic, parts)| {
                    let values = parts
                        .into_iter()
                        .map(|p| {
                            let v = self
                                .offsets
                                .get(group_id, &topic, p)
                                .cloned()
                                .unwrap_or_else(|| missing.clone());
                            (p, v)
                        })
                        .collect();
                    (topic, values)
                })
                .collect(),
            None => {
                let mut out: Vec<(String, Vec<(i32, OffsetCommitValue)>)> = Vec::new();
                for ((topic, p), v) in self.offsets.group(group_id).into_iter().flatten() {
                    match out.last_mut() {
                        Some((t, parts)) if t == topic => parts.push((*p, v.clone())),
                        _ => out.push((topic.clone(), vec![(*p, v.clone())])),
                    }
                }
                out
            }
        }
    }

    pub fn offset_delete(
        &mut self,
        token: RequestToken,
        req: &OffsetDeleteRequest,
        _version: i16,
        _now_ms: i64,
    ) -> Effects {
        let mut fx = Effects::default();
        let fail = |fx: &mut Effects, e: ResponseError| {
            fx.respond(
                token,
                Response::OffsetDelete(OffsetDeleteResponse::default().with_error_code(code(e))),
            );
        };
        if !self.loaded {
            fail(&mut fx, ResponseError::CoordinatorLoadInProgress);
            return fx;
        }
        let group_id = req.group_id.0.to_string();
        let partition = self.partition_for(&group_id);
        // `None` = subscriptions unknown: every topic counts as subscribed.
        let subscribed = if let Some(cg) = self.consumer_groups.get(&group_id) {
            // A KIP-848 group: its members' subscriptions are known.
            (!cg.members.is_empty()).then(|| {
                Some(
                    cg.members
                        .values()
                        .flat_map(|m| m.subscribed.iter().cloned())
                        .collect(),
                )
            })
        } else {
            let Some(group) = self.groups.get(&group_id) else {
                fail(&mut fx, ResponseError::GroupIdNotFound);
                return fx;
            };
            if group.state == GroupState::Dead {
                fail(&mut fx, ResponseError::GroupIdNotFound);
                return fx;
            }
            let active = group.state != GroupState::Empty;
            if active && group.protocol_type.as_deref() != Some("consumer") {
                fail(&mut fx, ResponseError::NonEmptyGroup);
                return fx;
            }
            if active {
                Some(group.subscribed_topics())
            } else {
                None
            }
        };
        let mut topics = Vec::with_capacity(req.topics.len());
        for t in &req.topics {
            let topic = t.name.0.to_string();
            let is_subscribed = match &subscribed {
                None => false,
                Some(None) => true,
                Some(Some(set)) => set.contains(&topic),
            };
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let error = if is_subscribed {
                        code(ResponseError::GroupSubscribedToTopic)
                    } else {
                        if self
                            .offsets
                            .remove(&group_id, &topic, p.partition_index)
                            .is_some()
                        {
                            fx.records.push((
                                partition,
                                records::offset_commit_key(&group_id, &topic, p.partition_index),
                                None,
                            ));
                        }
                        NONE
                    };
                    OffsetDeleteResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(error)
                })
                .collect();
            topics.push(
                OffsetDeleteResponseTopic::default()
                    .with_name(t.name.clone())
                    .with_partitions(partitions),
            );
        }
        fx.respond(
            token,
            Response::OffsetDelete(OffsetDeleteResponse::default().with_topics(topics)),
        );
        fx
    }

    /// `(topic, partition, offset)` for every committed offset of a group.
    pub fn committed_offsets(&self, group_id: &str) -> Vec<(String, i32, i64)> {
        self.offsets
            .group(group_id)
            .into_iter()
            .flatten()
            .map(|((t, p), v)| (t.clone(), *p, v.offset))
            .collect()
    }

    // ------------------------------------------------------------ admin

    pub fn list_groups(&self, req: &ListGroupsRequest, version: i16) -> ListGroupsResponse {
        if !self.loaded {
            return ListGroupsResponse::default()
                .with_error_code(code(ResponseError::CoordinatorLoadInProgress));
        }
        let states: Vec<String> = if version >= 4 {
            req.states_filter.iter().map(|s| s.to_lowercase()).collect()
        } else {
            Vec::new()
        };
        let types: Vec<String> = if version >= 5 {
            req.types_filter.iter().map(|s| s.to_lowercase()).collect()
        } else {
            Vec::new()
        };
        let classic = types.is_empty() || types.iter().any(|t| t == "classic");
        let consumer = types.is_empty() || types.iter().any(|t| t == "consumer");
        let consumer_groups: Vec<ListedGroup> = self
            .consumer_groups
            .values()
            .filter(|_| consumer)
            .filter(|g| states.is_empty() || states.contains(&g.state().as_str().to_lowercase()))
            .map(|g| {
                ListedGroup::default()
                    .with_group_id(GroupId(sb(&g.group_id)))
                    .with_protocol_type(sb("consumer"))
                    .with_group_state(sb(g.state().as_str()))
                    .with_group_type(sb("consumer"))
            })
            .collect();
        let mut groups: Vec<ListedGroup> = self
            .groups
            .values()
            .filter(|_| classic)
            .filter(|g| g.state != GroupState::Dead)
            .filter(|g| states.is_empty() || states.contains(&g.state.as_str().to_lowercase()))
            .map(|g| {
                ListedGroup::default()
                    .with_group_id(GroupId(sb(&g.group_id)))
                    .with_protocol_type(sb(g.protocol_type.as_deref().unwrap_or("")))
                    .with_group_state(sb(g.state.as_str()))
                    .with_group_type(sb("classic"))
            })
            .collect();
        groups.extend(consumer_groups);
        ListGroupsResponse::default().with_groups(groups)
    }

    pub fn describe_groups(
        &self,
        req: &DescribeGroupsRequest,
        version: i16,
    ) -> DescribeGroupsResponse {
        let groups = req
            .groups
            .iter()
            .map(|id| {
                let out = DescribedGroup::default().with_group_id(id.clone());
                if !self.loaded {
                    return out
                        .with_error_code(code(ResponseError::CoordinatorLoadInProgress))
                        .with_group_state(sb(""));
                }
                if let Some(cg) = self.consumer_groups.get(id.0.as_str()) {
                    // A consumer group, as far as the classic API can say.
                    let members = cg
                        .members
                        .values()
                        .map(|m| {
                            let mut d = DescribedGroupMember::default()
                                .with_member_id(sb(&m.member_id))
                                .with_client_id(sb(&m.client_id))
                                .with_client_host(sb(&m.client_host));
                            if version >= 4 {
                                d = d.with_group_instance_id(m.instance_id.as_deref().map(sb));
                            }
                            d
                        })
                        .collect();
                    return out
                        .with_group_state(sb(cg.state().as_str()))
                        .with_protocol_type(sb("consumer"))
                        .with_protocol_data(sb(&cg.assignor))
                        .with_members(members);
                }
                let Some(group) = self.groups.get(&id.0.to_string()) else {
                    let out = out.with_group_state(sb(GroupState::Dead.as_str()));
                    // v6 (KIP-1043) reports a missing group as an error.
                    return if version >= 6 {
                        out.with_error_code(code(ResponseError::GroupIdNotFound))
                            .with_error_message(Some(sb(&format!("Group {} not found.", &**id))))
                    } else {
                        out
                    };
                };
                // Kafka shows metadata and assignments only once Stable.
                let stable = group.state == GroupState::Stable;
                let protocol = group.protocol_name.as_deref().filter(|_| stable);
                let members = group
                    .members
                    .values()
                    .map(|m| {
                        let mut d = DescribedGroupMember::default()
                            .with_member_id(sb(&m.member_id))
                            .with_client_id(sb(&m.client_id))
                            .with_client_host(sb(&m.client_host));
                        if version >= 4 {
                            d = d.with_group_instance_id(m.group_instance_id.as_deref().map(sb));
                        }
                        if let Some(p) = protocol {
                            d = d
                                .with_member_metadata(m.metadata(p))
                                .with_member_assignment(m.assignment.clone());
                        }
                        d
                    })
                    .collect();
                out.with_group_state(sb(group.state.as_str()))
                    .with_protocol_type(sb(group.protocol_type.as_deref().unwrap_or("")))
                    .with_protocol_data(sb(protocol.unwrap_or("")))
                    .with_members(members)
            })
            .collect();
        DescribeGroupsResponse::default().with_groups(groups)
    }

    pub fn delete_groups(
        &mut self,
        token: RequestToken,
        req: &DeleteGroupsRequest,
        _version: i16,
        _now_ms: i64,
    ) -> Effects {
        let mut fx = Effects::default();
        let mut results = Vec::with_capacity(req.groups_names.len());
        for id in &req.groups_names {
            let group_id = id.0.to_string();
            let error = if !self.loaded {
                code(ResponseError::CoordinatorLoadInProgress)
            } else if group_id.is_empty() {
                code(ResponseError::InvalidGroupId)
            } else if let Some(cg) = self.consumer_groups.get(&group_id) {
                if cg.members.is_empty() {
                    self.consumer_groups.remove(&group_id);
                    self.tombstone_group(&group_id, &mut fx);
                    NONE
                } else {
                    code(ResponseError::NonEmptyGroup)
                }
            } else {
                match self.groups.get(&group_id).map(|g| g.state) {
                    None | Some(GroupState::Dead) => code(ResponseError::GroupIdNotFound),
                    Some(GroupState::Empty) => {
                        self.groups.remove(&group_id);
                        self.tombstone_group(&group_id, &mut fx);
                        NONE
                    }
                    Some(_) => code(ResponseError::NonEmptyGroup),
                }
            };
            results.push(
                DeletableGroupResult::default()
                    .with_group_id(id.clone())
                    .with_error_code(error),
            );
        }
        fx.respond(
            token,
            Response::DeleteGroups(DeleteGroupsResponse::default().with_results(results)),
        );
        fx
    }
}

/// The parts of a JoinGroup that outlive its validation.
struct JoinArgs {
    token: RequestToken,
    version: i16,
    group_instance_id: Option<String>,
    protocol_type: String,
    protocols: Vec<Protocol>,
    session_timeout_ms: i32,
    rebalance_timeout_ms: i32,
}

/// Kafka's `ClassicGroup.validateMember`.
fn validate_member(
    group: &Group,
    member_id: &str,
    instance: Option<&str>,
) -> Result<(), ResponseError> {
    match instance {
        Some(instance) => match group.static_members.get(instance) {
            None => Err(ResponseError::UnknownMemberId),
            Some(current) if current != member_id => Err(ResponseError::FencedInstanceId),
            Some(_) => Ok(()),
        },
        None if group.members.contains_key(member_id) => Ok(()),
        None => Err(ResponseError::UnknownMemberId),
    }
}

pub(crate) fn join_error(version: i16, error: i16, member_id: &str) -> JoinGroupResponse {
    JoinGroupResponse::default()
        .with_error_code(error)
        .with_generation_id(-1)
        .with_protocol_name(if version >= 7 { None } else { Some(sb("")) })
        .with_leader(sb(""))
        .with_member_id(sb(member_id))
}

fn join_members(group: &Group, version: i16) -> Vec<JoinGroupResponseMember> {
    let protocol = group.protocol_name.as_deref().unwrap_or("");
    group
        .members
        .values()
        .map(|m| {
            let mut r = JoinGroupResponseMember::default()
                .with_member_id(sb(&m.member_id))
                .with_metadata(m.metadata(protocol));
            if version >= 5 {
                r = r.with_group_instance_id(m.group_instance_id.as_deref().map(sb));
            }
            r
        })
        .collect()
}

fn join_success(
    group: &Group,
    version: i16,
    member_id: &str,
    leader: &str,
    members: Vec<JoinGroupResponseMember>,
) -> JoinGroupResponse {
    let mut r = JoinGroupResponse::default()
        .with_error_code(NONE)
        .with_generation_id(group.generation_id)
        .with_protocol_name(group.protocol_name.as_deref().map(sb))
        .with_leader(sb(leader))
        .with_member_id(sb(member_id))
        .with_members(members);
    if version >= 7 {
        r = r.with_protocol_type(group.protocol_type.as_deref().map(sb));
    }
    r
}

/// The JoinGroup response of the current generation: the leader gets every
/// member's metadata, the others an empty list.
fn current_join_response(group: &Group, member_id: &str, version: i16) -> JoinGroupResponse {
    let members = if group.is_leader(member_id) {
        join_members(group, version)
    } else {
        Vec::new()
    };
    join_success(
        group,
        version,
        member_id,
        group.leader_id.as_deref().unwrap_or(""),
        members,
    )
}

fn sync_error(error: i16) -> SyncGroupResponse {
    SyncGroupResponse::default().with_error_code(error)
}

fn sync_success(
    protocol_type: Option<&str>,
    protocol_name: Option<&str>,
    assignment: Bytes,
) -> SyncGroupResponse {
    SyncGroupResponse::default()
        .with_protocol_type(protocol_type.map(sb))
        .with_protocol_name(protocol_name.map(sb))
        .with_assignment(assignment)
}
