//! Every supported API, at every version we advertise, is decoded, handled
//! and encoded without error. `kafka-protocol` refuses to encode a field the
//! negotiated version lacks, so this catches handlers that fill one in.

use std::collections::BTreeMap;

use bytes::BytesMut;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use keel_server::dispatch::{dispatch, supported_range, Outcome, SUPPORTED};
use keel_server::{Broker, BrokerConfig};
use keel_storage::BatchBuilder;
use uuid::Uuid;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn request(api: ApiKey, version: i16, topic_id: Uuid) -> RequestKind {
    let by_id = |v: i16, min: i16| v >= min;
    match api {
        ApiKey::ApiVersions => RequestKind::ApiVersions(ApiVersionsRequest::default()),
        ApiKey::Metadata => {
            RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(TopicName(s("t")))),
            ])))
        }
        ApiKey::DescribeCluster => RequestKind::DescribeCluster(DescribeClusterRequest::default()),
        ApiKey::CreateTopics => {
            RequestKind::CreateTopics(CreateTopicsRequest::default().with_topics(vec![
            CreatableTopic::default()
                .with_name(TopicName(s(&format!("c{version}"))))
                .with_num_partitions(2)
                .with_replication_factor(1),
        ]))
        }
        ApiKey::DeleteTopics => {
            // CreateTopics starts at v2 and DeleteTopics at v1: delete what v+1 created.
            let name = TopicName(s(&format!("c{}", version + 1)));
            let request = if version >= 6 {
                DeleteTopicsRequest::default()
                    .with_topics(vec![DeleteTopicState::default().with_name(Some(name))])
            } else {
                DeleteTopicsRequest::default().with_topic_names(vec![name])
            };
            RequestKind::DeleteTopics(request)
        }
        ApiKey::Produce => {
            let mut builder = BatchBuilder::new(0);
            builder.push(Some(b"k"), Some(b"v"), &[], 1_700_000_000_000);
            let topic = TopicProduceData::default().with_partition_data(vec![
                PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(builder.build().into())),
            ]);
            let topic = if by_id(version, 13) {
                topic.with_topic_id(topic_id)
            } else {
                topic.with_name(TopicName(s("t")))
            };
            RequestKind::Produce(
                ProduceRequest::default()
                    .with_acks(1)
                    .with_timeout_ms(1000)
                    .with_topic_data(vec![topic]),
            )
        }
        ApiKey::Fetch => {
            let topic = FetchTopic::default().with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)]);
            let topic = if by_id(version, 13) {
                topic.with_topic_id(topic_id)
            } else {
                topic.with_topic(TopicName(s("t")))
            };
            RequestKind::Fetch(
                FetchRequest::default()
                    .with_replica_id(BrokerId(-1))
                    .with_max_wait_ms(0)
                    .with_min_bytes(1)
                    .with_max_bytes(1 << 20)
                    .with_topics(vec![topic]),
            )
        }
        ApiKey::ListOffsets => RequestKind::ListOffsets(
            ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![ListOffsetsTopic::default()
                    .with_name(TopicName(s("t")))
                    .with_partitions(vec![ListOffsetsPartition::default()
                        .with_partition_index(0)
                        .with_timestamp(-1)])]),
        ),
        ApiKey::DescribeConfigs => {
            RequestKind::DescribeConfigs(DescribeConfigsRequest::default().with_resources(vec![
            DescribeConfigsResource::default().with_resource_type(2).with_resource_name(s("t")),
            DescribeConfigsResource::default().with_resource_type(4).with_resource_name(s("1")),
        ]))
        }
        ApiKey::FindCoordinator => RequestKind::FindCoordinator(if version >= 4 {
            FindCoordinatorRequest::default().with_coordinator_keys(vec![s("g")])
        } else {
            FindCoordinatorRequest::default().with_key(s("g"))
        }),
        // One group per version: a second member joining a group would wait
        // for the first to rejoin.
        ApiKey::JoinGroup => RequestKind::JoinGroup(
            JoinGroupRequest::default()
                .with_group_id(GroupId(s(&format!("g{version}"))))
                .with_session_timeout_ms(10_000)
                .with_rebalance_timeout_ms(10_000)
                .with_protocol_type(s("consumer"))
                .with_protocols(vec![join_group_request::JoinGroupRequestProtocol::default(
                )
                .with_name(s("range"))
                .with_metadata(bytes::Bytes::from_static(b"\0\x01"))]),
        ),
        ApiKey::SyncGroup => RequestKind::SyncGroup(
            SyncGroupRequest::default()
                .with_group_id(GroupId(s("g0")))
                .with_member_id(s("nobody")),
        ),
        ApiKey::Heartbeat => RequestKind::Heartbeat(
            HeartbeatRequest::default()
                .with_group_id(GroupId(s("g0")))
                .with_member_id(s("nobody")),
        ),
        ApiKey::LeaveGroup => RequestKind::LeaveGroup(if version >= 3 {
            LeaveGroupRequest::default()
                .with_group_id(GroupId(s("g0")))
                .with_members(vec![
                    leave_group_request::MemberIdentity::default().with_member_id(s("nobody"))
                ])
        } else {
            LeaveGroupRequest::default()
                .with_group_id(GroupId(s("g0")))
                .with_member_id(s("nobody"))
        }),
        ApiKey::OffsetCommit => {
            let topic =
                offset_commit_request::OffsetCommitRequestTopic::default().with_partitions(vec![
                    offset_commit_request::OffsetCommitRequestPartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(1),
                ]);
            let topic = if by_id(version, 10) {
                topic.with_topic_id(topic_id)
            } else {
                topic.with_name(TopicName(s("t")))
            };
            RequestKind::OffsetCommit(
                OffsetCommitRequest::default()
                    .with_group_id(GroupId(s("simple")))
                    .with_generation_id_or_member_epoch(-1)
                    .with_topics(vec![topic]),
            )
        }
        // Every topic (null topics) from v8; from v10 also `t` by id.
        ApiKey::OffsetFetch => RequestKind::OffsetFetch(if version >= 8 {
            let every_topic = offset_fetch_request::OffsetFetchRequestGroup::default()
                .with_group_id(GroupId(s("simple")))
                .with_topics(None);
            let mut groups = vec![every_topic];
            if by_id(version, 10) {
                groups.push(
                    offset_fetch_request::OffsetFetchRequestGroup::default()
                        .with_group_id(GroupId(s("simple")))
                        .with_topics(Some(vec![
                            offset_fetch_request::OffsetFetchRequestTopics::default()
                                .with_topic_id(topic_id)
                                .with_partition_indexes(vec![0]),
                        ])),
                );
            }
            OffsetFetchRequest::default().with_groups(groups)
        } else {
            OffsetFetchRequest::default().with_group_id(GroupId(s("simple")))
        }),
        ApiKey::OffsetDelete => RequestKind::OffsetDelete(
            OffsetDeleteRequest::default()
                .with_group_id(GroupId(s("simple")))
                .with_topics(vec![
                    offset_delete_request::OffsetDeleteRequestTopic::default()
                        .with_name(TopicName(s("t")))
                        .with_partitions(vec![
                            offset_delete_request::OffsetDeleteRequestPartition::default()
                                .with_partition_index(0),
                        ]),
                ]),
        ),
        ApiKey::ListGroups => RequestKind::ListGroups(ListGroupsRequest::default()),
        ApiKey::DescribeGroups => RequestKind::DescribeGroups(
            DescribeGroupsRequest::default().with_groups(vec![GroupId(s("g0"))]),
        ),
        ApiKey::DeleteGroups => RequestKind::DeleteGroups(
            DeleteGroupsRequest::default().with_groups_names(vec![GroupId(s("g0"))]),
        ),
        // A KIP-848 member joins its own group on topic `t` (member id
        // from the client for v1, KIP-1082; from the coordinator for v0).
        ApiKey::ConsumerGroupHeartbeat => RequestKind::ConsumerGroupHeartbeat(
            ConsumerGroupHeartbeatRequest::default()
                .with_group_id(GroupId(s(&format!("cg{version}"))))
                .with_member_id(s(if version >= 1 { "member-1" } else { "" }))
                .with_member_epoch(0)
                .with_rebalance_timeout_ms(30_000)
                .with_subscribed_topic_names(Some(vec![TopicName(s("t"))]))
                .with_server_assignor(Some(s("uniform")))
                .with_topic_partitions(Some(vec![])),
        ),
        ApiKey::ConsumerGroupDescribe => RequestKind::ConsumerGroupDescribe(
            ConsumerGroupDescribeRequest::default().with_group_ids(vec![GroupId(s("cg1"))]),
        ),
        ApiKey::InitProducerId => RequestKind::InitProducerId(
            InitProducerIdRequest::default().with_transactional_id(None),
        ),
        ApiKey::AlterConfigs => {
            use alter_configs_request::{AlterConfigsResource, AlterableConfig};
            RequestKind::AlterConfigs(AlterConfigsRequest::default().with_resources(vec![
                AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(s("t"))
                    .with_configs(vec![AlterableConfig::default()
                        .with_name(s("retention.ms"))
                        .with_value(Some(s(&format!("{}", 1000 + version))))]),
            ]))
        }
        ApiKey::IncrementalAlterConfigs => {
            use incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig};
            RequestKind::IncrementalAlterConfigs(
                IncrementalAlterConfigsRequest::default().with_resources(vec![
                    AlterConfigsResource::default()
                        .with_resource_type(4)
                        .with_resource_name(s("1"))
                        .with_configs(vec![AlterableConfig::default()
                            .with_name(s("log.roll.ms"))
                            .with_config_operation(0)
                            .with_value(Some(s(&format!("{}", 100_000 + i64::from(version)))))]),
                ]),
            )
        }
        ApiKey::CreatePartitions => {
            RequestKind::CreatePartitions(CreatePartitionsRequest::default().with_topics(vec![
                create_partitions_request::CreatePartitionsTopic::default()
                    .with_name(TopicName(s("t")))
                    .with_count(2 + version as i32)
                    .with_assignments(None),
            ]))
        }
        ApiKey::DeleteRecords => {
            RequestKind::DeleteRecords(DeleteRecordsRequest::default().with_topics(vec![
                delete_records_request::DeleteRecordsTopic::default()
                    .with_name(TopicName(s("t")))
                    .with_partitions(vec![delete_records_request::DeleteRecordsPartition::default()
                        .with_partition_index(0)
                        .with_offset(-1)]),
            ]))
        }
        ApiKey::DescribeLogDirs => {
            RequestKind::DescribeLogDirs(DescribeLogDirsRequest::default().with_topics(None))
        }
        other => panic!("add a request for {other:?} to this test"),
    }
}

#[tokio::test]
async fn every_supported_version_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let props: BTreeMap<String, String> = [
        ("log.dirs", dir.path().to_str().unwrap()),
        ("listeners", "PLAINTEXT://127.0.0.1:0"),
        ("group.initial.rebalance.delay.ms", "0"),
        ("offsets.topic.num.partitions", "3"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let (config, _) = BrokerConfig::from_properties(props).unwrap();
    let broker = Broker::open(config).await.unwrap();

    // Create the topic every request below refers to.
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::Metadata as i16)
        .with_request_api_version(12);
    let Outcome::Respond(response) = dispatch(
        &broker,
        &header,
        "/127.0.0.1",
        request(ApiKey::Metadata, 12, Uuid::nil()),
    )
    .await
    else {
        panic!("metadata answered nothing");
    };
    let ResponseKind::Metadata(metadata) = *response else {
        panic!("metadata answered with another API");
    };
    let topic_id = metadata.topics[0].topic_id;
    assert_ne!(topic_id, Uuid::nil());

    // Creation before deletion, so each DeleteTopics version has a topic to delete.
    let mut apis: Vec<ApiKey> = SUPPORTED.iter().map(|(k, _, _)| *k).collect();
    apis.sort_by_key(|k| *k == ApiKey::DeleteTopics);
    for api in apis {
        let range = supported_range(api).unwrap();
        for version in range.min..=range.max {
            let request = request(api, version, topic_id);
            let mut wire = BytesMut::new();
            request
                .encode(&mut wire, version)
                .unwrap_or_else(|e| panic!("{api:?} v{version} request: {e}"));
            let decoded = RequestKind::decode(api, &mut wire.freeze(), version).unwrap();
            let header = RequestHeader::default()
                .with_request_api_key(api as i16)
                .with_request_api_version(version);
            let Outcome::Respond(response) =
                dispatch(&broker, &header, "/127.0.0.1", decoded).await
            else {
                panic!("{api:?} v{version} gave no response");
            };
            let mut out = BytesMut::new();
            response
                .encode(&mut out, version)
                .unwrap_or_else(|e| panic!("{api:?} v{version} response: {e}"));
            assert_no_errors(api, version, &response);
        }
    }
}

/// Errors a request above is built to get: it joins without a member id
/// (MEMBER_ID_REQUIRED, 79), or acts as a member that does not exist
/// (UNKNOWN_MEMBER_ID, 25), or deletes a group whose member is still in it
/// (NON_EMPTY_GROUP, 68).
fn expected_errors(api: ApiKey) -> &'static [i16] {
    match api {
        ApiKey::JoinGroup => &[79],
        ApiKey::SyncGroup | ApiKey::Heartbeat | ApiKey::LeaveGroup => &[25],
        ApiKey::DeleteGroups => &[68],
        _ => &[],
    }
}

fn assert_no_errors(api: ApiKey, version: i16, response: &ResponseKind) {
    let codes: Vec<i16> = match response {
        ResponseKind::Produce(r) => r
            .responses
            .iter()
            .flat_map(|t| t.partition_responses.iter().map(|p| p.error_code))
            .collect(),
        ResponseKind::Fetch(r) => std::iter::once(r.error_code)
            .chain(
                r.responses
                    .iter()
                    .flat_map(|t| t.partitions.iter().map(|p| p.error_code)),
            )
            .collect(),
        ResponseKind::ListOffsets(r) => r
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
            .collect(),
        ResponseKind::Metadata(r) => r.topics.iter().map(|t| t.error_code).collect(),
        ResponseKind::CreateTopics(r) => r.topics.iter().map(|t| t.error_code).collect(),
        ResponseKind::DeleteTopics(r) => r.responses.iter().map(|t| t.error_code).collect(),
        ResponseKind::DescribeConfigs(r) => r.results.iter().map(|t| t.error_code).collect(),
        ResponseKind::InitProducerId(r) => vec![r.error_code],
        ResponseKind::DescribeCluster(r) => vec![r.error_code],
        ResponseKind::ApiVersions(r) => vec![r.error_code],
        ResponseKind::FindCoordinator(r) => std::iter::once(r.error_code)
            .chain(r.coordinators.iter().map(|c| c.error_code))
            .collect(),
        ResponseKind::JoinGroup(r) => vec![r.error_code],
        ResponseKind::SyncGroup(r) => vec![r.error_code],
        ResponseKind::Heartbeat(r) => vec![r.error_code],
        ResponseKind::LeaveGroup(r) => std::iter::once(r.error_code)
            .chain(r.members.iter().map(|m| m.error_code))
            .collect(),
        ResponseKind::OffsetCommit(r) => r
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
            .collect(),
        ResponseKind::OffsetFetch(r) => {
            // Each group finds the offset OffsetCommit left on `t`, by id from v10.
            for g in &r.groups {
                assert_eq!(g.topics.len(), 1, "{r:?}");
                let by_id = g.topics[0].topic_id != Uuid::nil();
                assert_eq!(by_id, version >= 10, "{r:?}");
            }
            std::iter::once(r.error_code)
                .chain(r.groups.iter().flat_map(|g| {
                    let partitions = g.topics.iter().flat_map(|t| &t.partitions);
                    std::iter::once(g.error_code).chain(partitions.map(|p| p.error_code))
                }))
                .collect()
        }
        ResponseKind::OffsetDelete(r) => vec![r.error_code],
        ResponseKind::ListGroups(r) => vec![r.error_code],
        ResponseKind::DescribeGroups(r) => r.groups.iter().map(|g| g.error_code).collect(),
        ResponseKind::DeleteGroups(r) => r.results.iter().map(|g| g.error_code).collect(),
        ResponseKind::ConsumerGroupHeartbeat(r) => {
            assert!(r.member_epoch >= 1, "joined: {r:?}");
            assert!(r.assignment.is_some(), "a join gets its assignment: {r:?}");
            vec![r.error_code]
        }
        ResponseKind::ConsumerGroupDescribe(r) => {
            assert_eq!(r.groups[0].members.len(), 1, "{r:?}");
            r.groups.iter().map(|g| g.error_code).collect()
        }
        ResponseKind::AlterConfigs(r) => r.responses.iter().map(|r| r.error_code).collect(),
        ResponseKind::IncrementalAlterConfigs(r) => {
            r.responses.iter().map(|r| r.error_code).collect()
        }
        ResponseKind::CreatePartitions(r) => r.results.iter().map(|r| r.error_code).collect(),
        ResponseKind::DeleteRecords(r) => r
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
            .collect(),
        ResponseKind::DescribeLogDirs(r) => {
            let partitions: usize = r.results[0].topics.iter().map(|t| t.partitions.len()).sum();
            assert!(partitions > 0, "the log dir holds partitions: {r:?}");
            std::iter::once(r.error_code)
                .chain(r.results.iter().map(|d| d.error_code))
                .collect()
        }
        other => panic!("add the error codes of {other:?} to this test"),
    };
    let allowed = expected_errors(api);
    assert!(
        codes.iter().all(|c| *c == 0 || allowed.contains(c)),
        "{api:?} v{version} answered error codes {codes:?}"
    );
}
