//! JoinGroup and the rebalance it drives: preparing it, completing the
//! join phase, and the JoinGroup responses.

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupRequest, JoinGroupResponse};

use crate::group::{Group, GroupState, InitialDelay};
use crate::member::{Member, Parked, Protocol};
use crate::records;

use super::{
    code, join_error, sb, sync_error, validate_member, Effects, GroupCoordinator, JoinContext,
    RequestToken, Response, TimerKey, NONE,
};

impl GroupCoordinator {
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
        let group_id = req.group_id.0.to_string();
        if let Some(e) = self.coordinator_error(&group_id) {
            fail(&mut fx, e, &member_id);
            return fx;
        }
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
            self.remove_consumer_group(&group_id, &mut fx);
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
        tracing::info!(
            group_id,
            member_id,
            state = group.state.as_str(),
            "new member joins group"
        );
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
    pub(super) fn prepare_rebalance(&mut self, group_id: &str, now_ms: i64, fx: &mut Effects) {
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

    /// Completes the join phase once everyone is in (never during the
    /// initial delay, which only its timer ends).
    pub(super) fn maybe_complete_join(&mut self, group_id: &str, now_ms: i64, fx: &mut Effects) {
        let group = &self.groups[group_id];
        if group.state == GroupState::PreparingRebalance
            && group.initial_delay.is_none()
            && group.all_members_joined()
        {
            self.complete_join(group_id, now_ms, fx);
        }
    }

    pub(super) fn complete_join(&mut self, group_id: &str, now_ms: i64, fx: &mut Effects) {
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
        tracing::info!(
            group_id,
            generation = group.generation_id,
            members = group.members.len(),
            "stabilized group"
        );
        let ids: Vec<String> = group.members.keys().cloned().collect();
        for id in &ids {
            let parked = group.members[id.as_str()].awaiting_join;
            let Some(parked) = parked else { continue };
            let response = current_join_response(group, id, parked.version);
            let member = group.members.get_mut(id.as_str()).expect("member");
            member.awaiting_join = None;
            Self::renew_session(fx, group_id, member, now_ms);
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
