//! SyncGroup, Heartbeat and LeaveGroup.

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{
    HeartbeatRequest, HeartbeatResponse, LeaveGroupRequest, LeaveGroupResponse, SyncGroupRequest,
    SyncGroupResponse,
};

use crate::group::GroupState;
use crate::member::Parked;
use crate::records;

use super::{
    code, sb, sync_error, validate_member, Effects, GroupCoordinator, RequestToken, Response, NONE,
};

impl GroupCoordinator {
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
        let group_id = req.group_id.0.to_string();
        if let Some(e) = self.coordinator_error(&group_id) {
            fail(&mut fx, e);
            return fx;
        }
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
                Self::renew_session(&mut fx, &group_id, member, now_ms);
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
                Self::renew_session(&mut fx, &group_id, member, now_ms);
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
        let group_id = req.group_id.0.to_string();
        if let Some(e) = self.coordinator_error(&group_id) {
            return code(e);
        }
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
        Self::renew_session(fx, &group_id, member, now_ms);
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
        let group_id = req.group_id.0.to_string();
        if let Some(e) = self.coordinator_error(&group_id) {
            fx.respond(token, Response::LeaveGroup(top(code(e))));
            return fx;
        }
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
