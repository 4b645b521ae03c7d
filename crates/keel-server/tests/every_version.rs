//! Every supported API, at every version we advertise, is decoded, handled
//! and encoded without error. `kafka-protocol` refuses to encode a field the
//! negotiated version lacks, so this catches handlers that fill one in.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

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
use kafka_protocol::ResponseError;
use keel_server::dispatch::{dispatch, supported_range, Outcome, SUPPORTED};
use keel_server::{Broker, BrokerConfig};
use keel_storage::BatchBuilder;
use uuid::Uuid;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

/// The group whose offsets the `txo{v}` transactions commit.
const TXN_GROUP: &str = "txg";
/// The transactional id whose open transaction on `t-0` WriteTxnMarkers ends.
const MARKED: &str = "txw";

/// The transactional ids the setup gives a producer:
/// - `tx{v}`: AddPartitionsToTxn v{v} adds `t-0` (v4 verifies `tx3`'s and
///   adds `tx4`'s), then EndTxn v{v} commits;
/// - `txo{v}`: AddOffsetsToTxn v{v} adds `TXN_GROUP`, then TxnOffsetCommit v{v}
///   commits an offset in the transaction, which stays open;
/// - `MARKED`: the setup opens a transaction on `t-0` with a transactional
///   produce, which WriteTxnMarkers v1 ends there.
fn transactional_ids() -> Vec<String> {
    let tx = (0..=4).map(|v| format!("tx{v}"));
    let txo = (0..=4).map(|v| format!("txo{v}"));
    tx.chain(txo).chain([MARKED.to_string()]).collect()
}

/// What the requests refer to: topic `t`'s id, and each transactional id's
/// producer id and epoch.
#[derive(Default)]
struct Fixture {
    topic_id: Uuid,
    producers: BTreeMap<String, (ProducerId, i16)>,
}

impl Fixture {
    fn producer(&self, transactional_id: &str) -> (ProducerId, i16) {
        *self
            .producers
            .get(transactional_id)
            .unwrap_or_else(|| panic!("no producer for {transactional_id}"))
    }
}

fn partition_t0() -> Vec<add_partitions_to_txn_request::AddPartitionsToTxnTopic> {
    vec![
        add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
            .with_name(TopicName(s("t")))
            .with_partitions(vec![0]),
    ]
}

/// AddPartitionsToTxn v0-3: `t-0` joins `transactional_id`'s transaction.
fn add_t0(fx: &Fixture, transactional_id: &str) -> AddPartitionsToTxnRequest {
    let (producer_id, producer_epoch) = fx.producer(transactional_id);
    AddPartitionsToTxnRequest::default()
        .with_v3_and_below_transactional_id(TransactionalId(s(transactional_id)))
        .with_v3_and_below_producer_id(producer_id)
        .with_v3_and_below_producer_epoch(producer_epoch)
        .with_v3_and_below_topics(partition_t0())
}

fn request(api: ApiKey, version: i16, fx: &Fixture) -> RequestKind {
    let topic_id = fx.topic_id;
    let by_id = |v: i16, min: i16| v >= min;
    match api {
        ApiKey::ApiVersions => RequestKind::ApiVersions(ApiVersionsRequest::default()),
        ApiKey::Metadata => {
            RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(TopicName(s("t")))),
            ])))
        }
        ApiKey::DescribeCluster => RequestKind::DescribeCluster(DescribeClusterRequest::default()),
        // Onto the broker it is on already: accepted, and nothing moves.
        ApiKey::AlterPartitionReassignments => RequestKind::AlterPartitionReassignments(
            AlterPartitionReassignmentsRequest::default().with_topics(vec![
                alter_partition_reassignments_request::ReassignableTopic::default()
                    .with_name(TopicName(s("t")))
                    .with_partitions(vec![
                        alter_partition_reassignments_request::ReassignablePartition::default()
                            .with_partition_index(0)
                            .with_replicas(Some(vec![BrokerId(1)])),
                    ]),
            ]),
        ),
        ApiKey::ListPartitionReassignments => {
            RequestKind::ListPartitionReassignments(ListPartitionReassignmentsRequest::default())
        }
        // Not the fixture's broker, which must go on serving.
        ApiKey::UnregisterBroker => RequestKind::UnregisterBroker(
            UnregisterBrokerRequest::default().with_broker_id(BrokerId(99)),
        ),
        ApiKey::ElectLeaders => RequestKind::ElectLeaders(
            ElectLeadersRequest::default()
                .with_topic_partitions(Some(vec![elect_leaders_request::TopicPartitions::default(
                )
                .with_topic(TopicName(s("t")))
                .with_partitions(vec![0])]))
                .with_timeout_ms(10_000),
        ),
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
        ApiKey::OffsetForLeaderEpoch => {
            use offset_for_leader_epoch_request::{OffsetForLeaderPartition, OffsetForLeaderTopic};
            RequestKind::OffsetForLeaderEpoch(
                OffsetForLeaderEpochRequest::default()
                    .with_replica_id(BrokerId(-1))
                    .with_topics(vec![OffsetForLeaderTopic::default()
                        .with_topic(TopicName(s("t")))
                        .with_partitions(vec![OffsetForLeaderPartition::default()
                            .with_partition(0)
                            .with_current_leader_epoch(0)
                            .with_leader_epoch(0)])]),
            )
        }
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
        // v0-3 as a producer sends it, for `tx{v}`. v4 as a partition leader
        // sends it (KIP-890), batched: whether `tx3` (v3 added it) has `t-0`,
        // and `t-0` added to `tx4`.
        ApiKey::AddPartitionsToTxn => RequestKind::AddPartitionsToTxn(if version >= 4 {
            let transaction = |id: &str, verify_only: bool| {
                let (producer_id, producer_epoch) = fx.producer(id);
                add_partitions_to_txn_request::AddPartitionsToTxnTransaction::default()
                    .with_transactional_id(TransactionalId(s(id)))
                    .with_producer_id(producer_id)
                    .with_producer_epoch(producer_epoch)
                    .with_verify_only(verify_only)
                    .with_topics(partition_t0())
            };
            AddPartitionsToTxnRequest::default()
                .with_transactions(vec![transaction("tx3", true), transaction("tx4", false)])
        } else {
            add_t0(fx, &format!("tx{version}"))
        }),
        ApiKey::AddOffsetsToTxn => {
            let id = format!("txo{version}");
            let (producer_id, producer_epoch) = fx.producer(&id);
            RequestKind::AddOffsetsToTxn(
                AddOffsetsToTxnRequest::default()
                    .with_transactional_id(TransactionalId(s(&id)))
                    .with_producer_id(producer_id)
                    .with_producer_epoch(producer_epoch)
                    .with_group_id(GroupId(s(TXN_GROUP))),
            )
        }
        // Commits what AddPartitionsToTxn v{v} added to `tx{v}`; the markers
        // follow in the background.
        ApiKey::EndTxn => {
            let id = format!("tx{version}");
            let (producer_id, producer_epoch) = fx.producer(&id);
            RequestKind::EndTxn(
                EndTxnRequest::default()
                    .with_transactional_id(TransactionalId(s(&id)))
                    .with_producer_id(producer_id)
                    .with_producer_epoch(producer_epoch)
                    .with_committed(true),
            )
        }
        // As a coordinator would: commits `MARKED`'s transaction on `t-0`.
        ApiKey::WriteTxnMarkers => RequestKind::WriteTxnMarkers(commit_marked(fx, 0)),
        // In the transaction AddOffsetsToTxn v{v} added `TXN_GROUP` to. The
        // v3+ member fields are those of a committer that is no group
        // member (generation -1, no member id), which a group without
        // members accepts. Keel's group coordinator does not (yet) verify
        // the transaction with its coordinator as Kafka's does (KIP-890), so
        // a success here does not show that AddOffsetsToTxn worked:
        // DescribeTransactions below does.
        ApiKey::TxnOffsetCommit => {
            use txn_offset_commit_request::{
                TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
            };
            let id = format!("txo{version}");
            let (producer_id, producer_epoch) = fx.producer(&id);
            RequestKind::TxnOffsetCommit(
                TxnOffsetCommitRequest::default()
                    .with_transactional_id(TransactionalId(s(&id)))
                    .with_group_id(GroupId(s(TXN_GROUP)))
                    .with_producer_id(producer_id)
                    .with_producer_epoch(producer_epoch)
                    .with_generation_id(-1)
                    .with_member_id(s(""))
                    .with_topics(vec![TxnOffsetCommitRequestTopic::default()
                        .with_name(TopicName(s("t")))
                        .with_partitions(vec![TxnOffsetCommitRequestPartition::default()
                            .with_partition_index(0)
                            .with_committed_offset(1)])]),
            )
        }
        ApiKey::DescribeProducers => {
            RequestKind::DescribeProducers(DescribeProducersRequest::default().with_topics(vec![
                describe_producers_request::TopicRequest::default()
                    .with_name(TopicName(s("t")))
                    .with_partition_indexes(vec![0]),
            ]))
        }
        ApiKey::DescribeTransactions => RequestKind::DescribeTransactions(
            DescribeTransactionsRequest::default().with_transactional_ids(
                transactional_ids()
                    .iter()
                    .map(|id| TransactionalId(s(id)))
                    .collect(),
            ),
        ),
        // v0 lists every transaction; v1 only the Ongoing ones, and names
        // back the state it does not know.
        ApiKey::ListTransactions => RequestKind::ListTransactions(if version >= 1 {
            ListTransactionsRequest::default()
                .with_state_filters(vec![s("Ongoing"), s("NoSuchState")])
        } else {
            ListTransactionsRequest::default()
        }),
        other => panic!("add a request for {other:?} to this test"),
    }
}

/// A COMMIT marker for `MARKED`'s producer on `t-0`, from a coordinator at
/// `coordinator_epoch`.
fn commit_marked(fx: &Fixture, coordinator_epoch: i32) -> WriteTxnMarkersRequest {
    use write_txn_markers_request::{WritableTxnMarker, WritableTxnMarkerTopic};
    let (producer_id, producer_epoch) = fx.producer(MARKED);
    WriteTxnMarkersRequest::default().with_markers(vec![WritableTxnMarker::default()
        .with_producer_id(producer_id)
        .with_producer_epoch(producer_epoch)
        .with_transaction_result(true)
        .with_coordinator_epoch(coordinator_epoch)
        .with_topics(vec![WritableTxnMarkerTopic::default()
            .with_name(TopicName(s("t")))
            .with_partition_indexes(vec![0])])])
}

/// Sends `request` through `dispatch` as it would come off the wire, and
/// checks its answer encodes.
async fn send(broker: &Broker, api: ApiKey, version: i16, request: RequestKind) -> ResponseKind {
    let mut wire = BytesMut::new();
    request
        .encode(&mut wire, version)
        .unwrap_or_else(|e| panic!("{api:?} v{version} request: {e}"));
    let decoded = RequestKind::decode(api, &mut wire.freeze(), version).unwrap();
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version);
    let mut outcome = dispatch(broker, &header, "/127.0.0.1", decoded).await;
    let response = loop {
        match outcome {
            // A Fetch's file regions stand in as zeros: only codes are checked.
            Outcome::Respond(response) | Outcome::Fetched(response, _) => break *response,
            Outcome::Deferred(answer) => outcome = answer.await,
            _ => panic!("{api:?} v{version} gave no response"),
        }
    };
    let mut out = BytesMut::new();
    response
        .encode(&mut out, version)
        .unwrap_or_else(|e| panic!("{api:?} v{version} response: {e}"));
    response
}

/// Sends `request` again while `error` finds in its answer an error a
/// client retries: the transaction coordinator is loading or not there
/// yet, or the transactional id is busy.
async fn settled(
    broker: &Broker,
    api: ApiKey,
    version: i16,
    request: impl Fn() -> RequestKind,
    error: impl Fn(&ResponseKind) -> i16,
) -> ResponseKind {
    let retriable = [
        ResponseError::CoordinatorNotAvailable,
        ResponseError::CoordinatorLoadInProgress,
        ResponseError::NotCoordinator,
        ResponseError::ConcurrentTransactions,
    ];
    for _ in 0..200 {
        let response = send(broker, api, version, request()).await;
        let code = error(&response);
        if !retriable.iter().any(|e| e.code() == code) {
            return response;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{api:?} v{version} still answers a retriable error")
}

/// Gives every transactional id of `transactional_ids` a producer (through
/// InitProducerId at each version in turn), and opens `MARKED`'s
/// transaction on `t-0` with a transactional produce.
async fn set_up_transactions(broker: &Broker, fx: &mut Fixture) {
    // Creates `__transaction_state`, whose partitions load in the background.
    let found = settled(
        broker,
        ApiKey::FindCoordinator,
        3,
        || {
            RequestKind::FindCoordinator(
                FindCoordinatorRequest::default()
                    .with_key_type(1)
                    .with_key(s("tx0")),
            )
        },
        |r| match r {
            ResponseKind::FindCoordinator(r) => r.error_code,
            other => panic!("{other:?}"),
        },
    )
    .await;
    let ResponseKind::FindCoordinator(found) = found else {
        unreachable!()
    };
    assert_eq!(found.error_code, 0, "{found:?}");

    let versions = supported_range(ApiKey::InitProducerId).unwrap();
    for (i, id) in transactional_ids().into_iter().enumerate() {
        let version = versions.min + (i as i16) % (versions.max - versions.min + 1);
        let init = || {
            RequestKind::InitProducerId(
                InitProducerIdRequest::default()
                    .with_transactional_id(Some(TransactionalId(s(&id))))
                    .with_transaction_timeout_ms(600_000),
            )
        };
        let response = settled(broker, ApiKey::InitProducerId, version, init, |r| match r {
            ResponseKind::InitProducerId(r) => r.error_code,
            other => panic!("{other:?}"),
        })
        .await;
        let ResponseKind::InitProducerId(r) = response else {
            unreachable!()
        };
        assert_eq!(r.error_code, 0, "InitProducerId v{version} for {id}: {r:?}");
        assert!(r.producer_id.0 >= 0, "{r:?}");
        // A new transactional id starts at epoch 0.
        assert_eq!(r.producer_epoch, 0, "{r:?}");
        fx.producers.insert(id, (r.producer_id, r.producer_epoch));
    }
    let ids: BTreeSet<i64> = fx.producers.values().map(|(p, _)| p.0).collect();
    assert_eq!(ids.len(), fx.producers.len(), "one producer id each");

    // `MARKED`'s transaction on `t-0`: the coordinator adds it, and the
    // produce is verified with the coordinator (KIP-890) before it opens
    // the transaction in the log.
    let added = send(
        broker,
        ApiKey::AddPartitionsToTxn,
        3,
        RequestKind::AddPartitionsToTxn(add_t0(fx, MARKED)),
    )
    .await;
    assert_no_errors(ApiKey::AddPartitionsToTxn, 3, &added, fx);
    let (producer_id, producer_epoch) = fx.producer(MARKED);
    let mut builder = BatchBuilder::new(0)
        .producer(producer_id.0, producer_epoch, 0)
        .transactional(true);
    builder.push(
        Some(b"k"),
        Some(b"in a transaction"),
        &[],
        1_700_000_000_000,
    );
    let produced = send(
        broker,
        ApiKey::Produce,
        9,
        RequestKind::Produce(
            ProduceRequest::default()
                .with_transactional_id(Some(TransactionalId(s(MARKED))))
                .with_acks(-1)
                .with_timeout_ms(1000)
                .with_topic_data(vec![TopicProduceData::default()
                    .with_name(TopicName(s("t")))
                    .with_partition_data(vec![PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(builder.build().into()))])]),
        ),
    )
    .await;
    assert_no_errors(ApiKey::Produce, 9, &produced, fx);
}

#[tokio::test]
async fn every_supported_version_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let props: BTreeMap<String, String> = [
        ("log.dirs", dir.path().to_str().unwrap()),
        ("listeners", "PLAINTEXT://127.0.0.1:0"),
        ("group.initial.rebalance.delay.ms", "0"),
        ("offsets.topic.num.partitions", "3"),
        ("transaction.state.log.num.partitions", "3"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let (config, _) = BrokerConfig::from_properties(props).unwrap();
    let broker = Broker::open(config).await.unwrap();

    // Create the topic every request below refers to.
    let mut fx = Fixture::default();
    let metadata = send(
        &broker,
        ApiKey::Metadata,
        12,
        request(ApiKey::Metadata, 12, &fx),
    )
    .await;
    let ResponseKind::Metadata(metadata) = metadata else {
        panic!("metadata answered with another API");
    };
    fx.topic_id = metadata.topics[0].topic_id;
    assert_ne!(fx.topic_id, Uuid::nil());
    set_up_transactions(&broker, &mut fx).await;

    // Creation before deletion, so each DeleteTopics version has a topic to
    // delete. The transaction APIs rely on SUPPORTED's order: partitions and
    // groups are added to transactions before they end or commit offsets.
    let mut apis: Vec<ApiKey> = SUPPORTED.iter().map(|(k, _, _)| *k).collect();
    apis.sort_by_key(|k| *k == ApiKey::DeleteTopics);
    for api in apis {
        let range = supported_range(api).unwrap();
        for version in range.min..=range.max {
            let response = send(&broker, api, version, request(api, version, &fx)).await;
            assert_no_errors(api, version, &response, &fx);
        }
    }

    // A marker from a newer coordinator epoch is written; one from an older
    // epoch than the producer's last marker comes from a deposed
    // coordinator and is refused (TRANSACTION_COORDINATOR_FENCED).
    let (marked_id, _) = fx.producer(MARKED);
    for (coordinator_epoch, expected) in [
        (5, 0),
        (4, ResponseError::TransactionCoordinatorFenced.code()),
    ] {
        let ResponseKind::WriteTxnMarkers(response) = send(
            &broker,
            ApiKey::WriteTxnMarkers,
            1,
            RequestKind::WriteTxnMarkers(commit_marked(&fx, coordinator_epoch)),
        )
        .await
        else {
            panic!("WriteTxnMarkers answered with another API");
        };
        let codes: Vec<(i64, i16)> = response
            .markers
            .iter()
            .flat_map(|m| m.topics.iter().map(move |t| (m.producer_id.0, t)))
            .flat_map(|(id, t)| t.partitions.iter().map(move |p| (id, p.error_code)))
            .collect();
        assert_eq!(
            codes,
            [(marked_id.0, expected)],
            "coordinator epoch {coordinator_epoch}: {response:?}"
        );
    }
    let ResponseKind::DescribeProducers(response) = send(
        &broker,
        ApiKey::DescribeProducers,
        0,
        request(ApiKey::DescribeProducers, 0, &fx),
    )
    .await
    else {
        panic!("DescribeProducers answered with another API");
    };
    let marked = response.topics[0].partitions[0]
        .active_producers
        .iter()
        .find(|p| p.producer_id == marked_id)
        .unwrap_or_else(|| panic!("{MARKED}'s producer is on t-0: {response:?}"));
    assert_eq!(marked.coordinator_epoch, 5, "{response:?}");

    // A producer adding a partition that does not exist gets Kafka's
    // answer, and nothing of the request reaches its transaction.
    let (producer_id, producer_epoch) = fx.producer("tx0");
    let topics = vec![
        add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
            .with_name(TopicName(s("t")))
            .with_partitions(vec![0, 99]),
    ];
    let request = AddPartitionsToTxnRequest::default()
        .with_v3_and_below_transactional_id(TransactionalId(s("tx0")))
        .with_v3_and_below_producer_id(producer_id)
        .with_v3_and_below_producer_epoch(producer_epoch)
        .with_v3_and_below_topics(topics);
    let ResponseKind::AddPartitionsToTxn(response) = send(
        &broker,
        ApiKey::AddPartitionsToTxn,
        3,
        RequestKind::AddPartitionsToTxn(request),
    )
    .await
    else {
        panic!("AddPartitionsToTxn answered with another API");
    };
    let codes: BTreeMap<i32, i16> = response.results_by_topic_v3_and_below[0]
        .results_by_partition
        .iter()
        .map(|p| (p.partition_index, p.partition_error_code))
        .collect();
    let (not_attempted, unknown) = (
        ResponseError::OperationNotAttempted.code(),
        ResponseError::UnknownTopicOrPartition.code(),
    );
    assert_eq!(codes, BTreeMap::from([(0, not_attempted), (99, unknown)]));

    // Offsets of a producer whose transaction never added the group
    // (AddOffsetsToTxn) are refused after asking its coordinator (KIP-890).
    let request = TxnOffsetCommitRequest::default()
        .with_transactional_id(TransactionalId(s("tx1")))
        .with_group_id(GroupId(s("never-added")))
        .with_producer_id(fx.producer("tx1").0)
        .with_producer_epoch(fx.producer("tx1").1)
        .with_generation_id(-1)
        .with_topics(vec![
            txn_offset_commit_request::TxnOffsetCommitRequestTopic::default()
                .with_name(TopicName(s("t")))
                .with_partitions(vec![
                    txn_offset_commit_request::TxnOffsetCommitRequestPartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(1),
                ]),
        ]);
    let ResponseKind::TxnOffsetCommit(response) = send(
        &broker,
        ApiKey::TxnOffsetCommit,
        3,
        RequestKind::TxnOffsetCommit(request),
    )
    .await
    else {
        panic!("TxnOffsetCommit answered with another API");
    };
    let code = response.topics[0].partitions[0].error_code;
    assert_ne!(
        code, 0,
        "an unverified transactional offset commit was accepted"
    );
}

/// Errors a request above is built to get: it joins without a member id
/// (MEMBER_ID_REQUIRED, 79), or acts as a member that does not exist
/// (UNKNOWN_MEMBER_ID, 25), or deletes a group whose member is still in it
/// (NON_EMPTY_GROUP, 68), or unregisters a broker that never registered
/// (BROKER_ID_NOT_REGISTERED, 102).
fn expected_errors(api: ApiKey) -> &'static [i16] {
    match api {
        ApiKey::UnregisterBroker => &[102],
        ApiKey::JoinGroup => &[79],
        ApiKey::SyncGroup | ApiKey::Heartbeat | ApiKey::LeaveGroup => &[25],
        ApiKey::DeleteGroups => &[68],
        _ => &[],
    }
}

fn assert_no_errors(api: ApiKey, version: i16, response: &ResponseKind, fx: &Fixture) {
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
        ResponseKind::OffsetForLeaderEpoch(r) => {
            // Epoch 0 is `t-0`'s only one: it ends at the log end.
            let p = &r.topics[0].partitions[0];
            assert_eq!(p.leader_epoch, 0, "{r:?}");
            assert!(p.end_offset > 0, "{r:?}");
            r.topics
                .iter()
                .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
                .collect()
        }
        ResponseKind::Metadata(r) => r.topics.iter().map(|t| t.error_code).collect(),
        ResponseKind::CreateTopics(r) => r.topics.iter().map(|t| t.error_code).collect(),
        ResponseKind::DeleteTopics(r) => r.responses.iter().map(|t| t.error_code).collect(),
        ResponseKind::DescribeConfigs(r) => r.results.iter().map(|t| t.error_code).collect(),
        ResponseKind::InitProducerId(r) => vec![r.error_code],
        ResponseKind::DescribeCluster(r) => vec![r.error_code],
        ResponseKind::UnregisterBroker(r) => vec![r.error_code],
        ResponseKind::AlterPartitionReassignments(r) => std::iter::once(r.error_code)
            .chain(
                r.responses
                    .iter()
                    .flat_map(|t| t.partitions.iter().map(|p| p.error_code)),
            )
            .collect(),
        ResponseKind::ListPartitionReassignments(r) => {
            assert!(r.topics.is_empty(), "nothing is moving: {r:?}");
            vec![r.error_code]
        }
        ResponseKind::ElectLeaders(r) => {
            // The only broker is every partition's preferred leader.
            let codes: Vec<i16> = r
                .replica_election_results
                .iter()
                .flat_map(|t| t.partition_result.iter().map(|p| p.error_code))
                .collect();
            assert_eq!(codes, [ResponseError::ElectionNotNeeded.code()], "{r:?}");
            vec![r.error_code]
        }
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
        ResponseKind::AddPartitionsToTxn(r) => {
            // Each transaction answers for `t-0` alone.
            let topics: Vec<_> = if version >= 4 {
                let ids: Vec<&str> = r
                    .results_by_transaction
                    .iter()
                    .map(|t| t.transactional_id.0.as_str())
                    .collect();
                assert_eq!(ids, ["tx3", "tx4"], "{r:?}");
                r.results_by_transaction
                    .iter()
                    .flat_map(|t| &t.topic_results)
                    .collect()
            } else {
                r.results_by_topic_v3_and_below.iter().collect()
            };
            assert_eq!(topics.len(), if version >= 4 { 2 } else { 1 }, "{r:?}");
            for t in &topics {
                let partitions: Vec<i32> = t
                    .results_by_partition
                    .iter()
                    .map(|p| p.partition_index)
                    .collect();
                assert_eq!(
                    (t.name.0.as_str(), &partitions[..]),
                    ("t", &[0][..]),
                    "{r:?}"
                );
            }
            std::iter::once(r.error_code)
                .chain(topics.iter().flat_map(|t| {
                    t.results_by_partition
                        .iter()
                        .map(|p| p.partition_error_code)
                }))
                .collect()
        }
        // What they did is checked by DescribeTransactions below.
        ResponseKind::AddOffsetsToTxn(r) => vec![r.error_code],
        ResponseKind::EndTxn(r) => vec![r.error_code],
        ResponseKind::WriteTxnMarkers(r) => {
            let (producer_id, _) = fx.producer(MARKED);
            let answered: Vec<(i64, &str, Vec<i32>)> = r
                .markers
                .iter()
                .flat_map(|m| {
                    m.topics.iter().map(|t| {
                        let partitions = t.partitions.iter().map(|p| p.partition_index);
                        (m.producer_id.0, t.name.0.as_str(), partitions.collect())
                    })
                })
                .collect();
            assert_eq!(answered, [(producer_id.0, "t", vec![0])], "{r:?}");
            r.markers
                .iter()
                .flat_map(|m| &m.topics)
                .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
                .collect()
        }
        ResponseKind::TxnOffsetCommit(r) => {
            let answered: Vec<(&str, Vec<i32>)> = r
                .topics
                .iter()
                .map(|t| {
                    let partitions = t.partitions.iter().map(|p| p.partition_index);
                    (t.name.0.as_str(), partitions.collect())
                })
                .collect();
            assert_eq!(answered, [("t", vec![0])], "{r:?}");
            r.topics
                .iter()
                .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
                .collect()
        }
        ResponseKind::DescribeProducers(r) => {
            // `MARKED`'s producer wrote one batch (sequence 0) and
            // WriteTxnMarkers closed its transaction.
            assert_eq!(r.topics.len(), 1, "{r:?}");
            assert_eq!(r.topics[0].partitions.len(), 1, "{r:?}");
            let partition = &r.topics[0].partitions[0];
            assert_eq!(partition.partition_index, 0, "{r:?}");
            let (producer_id, producer_epoch) = fx.producer(MARKED);
            let marked = partition
                .active_producers
                .iter()
                .find(|p| p.producer_id == producer_id)
                .unwrap_or_else(|| panic!("{MARKED}'s producer is on t-0: {r:?}"));
            assert_eq!(marked.producer_epoch, i32::from(producer_epoch), "{r:?}");
            assert_eq!(marked.last_sequence, 0, "{r:?}");
            assert_eq!(marked.current_txn_start_offset, -1, "{r:?}");
            assert_eq!(marked.coordinator_epoch, 0, "{r:?}");
            r.topics
                .iter()
                .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
                .collect()
        }
        ResponseKind::DescribeTransactions(r) => {
            let ids: Vec<String> = r
                .transaction_states
                .iter()
                .map(|t| t.transactional_id.0.to_string())
                .collect();
            assert_eq!(ids, transactional_ids(), "{r:?}");
            for t in &r.transaction_states {
                let id = t.transactional_id.0.as_str();
                assert_eq!(
                    (t.producer_id, t.producer_epoch),
                    fx.producer(id),
                    "{id}: {r:?}"
                );
                assert_eq!(t.transaction_timeout_ms, 600_000, "{id}: {r:?}");
                let state = t.transaction_state.as_str();
                let topics: Vec<&str> = t.topics.iter().map(|t| t.topic.0.as_str()).collect();
                if id.starts_with("txo") {
                    // AddOffsetsToTxn added the group's offsets partition.
                    assert_eq!(state, "Ongoing", "{id}: {r:?}");
                    assert_eq!(topics, ["__consumer_offsets"], "{id}: {r:?}");
                } else if id == MARKED {
                    // Its coordinator has not ended it: WriteTxnMarkers
                    // went around the coordinator.
                    assert_eq!(state, "Ongoing", "{id}: {r:?}");
                    assert_eq!(topics, ["t"], "{id}: {r:?}");
                    assert_eq!(t.topics[0].partitions, [0], "{id}: {r:?}");
                } else {
                    // EndTxn committed it; the markers may still be on
                    // their way.
                    assert!(
                        ["PrepareCommit", "CompleteCommit"].contains(&state),
                        "{id}: {r:?}"
                    );
                }
            }
            r.transaction_states.iter().map(|t| t.error_code).collect()
        }
        ResponseKind::ListTransactions(r) => {
            let listed: BTreeMap<String, (ProducerId, &str)> = r
                .transaction_states
                .iter()
                .map(|t| {
                    let id = t.transactional_id.0.to_string();
                    (id, (t.producer_id, t.transaction_state.as_str()))
                })
                .collect();
            // v0: every transactional id; v1: the Ongoing ones.
            let expected: BTreeSet<String> = transactional_ids()
                .into_iter()
                .filter(|id| version == 0 || id.starts_with("txo") || id == MARKED)
                .collect();
            assert_eq!(
                listed.keys().cloned().collect::<BTreeSet<_>>(),
                expected,
                "{r:?}"
            );
            for (id, (producer_id, state)) in &listed {
                assert_eq!(*producer_id, fx.producer(id).0, "{id}: {r:?}");
                assert!(version == 0 || *state == "Ongoing", "{id}: {r:?}");
            }
            let unknown: Vec<&str> = r.unknown_state_filters.iter().map(|s| s.as_str()).collect();
            let expected_unknown: &[&str] = if version >= 1 { &["NoSuchState"] } else { &[] };
            assert_eq!(unknown, expected_unknown, "{r:?}");
            vec![r.error_code]
        }
        other => panic!("add the error codes of {other:?} to this test"),
    };
    let allowed = expected_errors(api);
    assert!(
        codes.iter().all(|c| *c == 0 || allowed.contains(c)),
        "{api:?} v{version} answered error codes {codes:?}"
    );
}
