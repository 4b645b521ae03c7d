//! ListGroups, DescribeGroups and DeleteGroups.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{
    DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse,
    GroupId, ListGroupsRequest, ListGroupsResponse,
};

use crate::group::GroupState;

use super::{code, sb, Effects, GroupCoordinator, RequestToken, Response, NONE};

impl GroupCoordinator {
    // ------------------------------------------------------------ admin

    pub fn list_groups(&self, req: &ListGroupsRequest, version: i16) -> ListGroupsResponse {
        if self.is_loading() {
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
                if let Some(e) = self.coordinator_error(id.0.as_str()) {
                    return out.with_error_code(code(e)).with_group_state(sb(""));
                }
                if let Some(cg) = self.consumer_groups.get(id.0.as_str()) {
                    // A consumer group, as far as the classic API can say.
                    let members = cg
                        .members
                        .values()
                        .map(|m| {
                            described_member(
                                version,
                                &m.member_id,
                                &m.client_id,
                                &m.client_host,
                                m.instance_id.as_deref(),
                            )
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
                        let mut d = described_member(
                            version,
                            &m.member_id,
                            &m.client_id,
                            &m.client_host,
                            m.group_instance_id.as_deref(),
                        );
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
            let error = if let Some(e) = self.coordinator_error(&group_id) {
                code(e)
            } else if group_id.is_empty() {
                code(ResponseError::InvalidGroupId)
            } else if let Some(cg) = self.consumer_groups.get(&group_id) {
                if cg.members.is_empty() {
                    self.remove_consumer_group(&group_id, &mut fx);
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

/// A DescribeGroups member entry; the instance id exists from v4.
fn described_member(
    version: i16,
    member_id: &str,
    client_id: &str,
    client_host: &str,
    instance_id: Option<&str>,
) -> DescribedGroupMember {
    let member = DescribedGroupMember::default()
        .with_member_id(sb(member_id))
        .with_client_id(sb(client_id))
        .with_client_host(sb(client_host));
    if version >= 4 {
        member.with_group_instance_id(instance_id.map(sb))
    } else {
        member
    }
}
