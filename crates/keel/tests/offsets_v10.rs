//! OffsetCommit and OffsetFetch v10 (KIP-848: topics named by id) against a
//! real broker. librdkafka stops at v9 for both APIs, so v10 goes out on a
//! raw connection; librdkafka's v9 commits and fetches show that both
//! versions read and write the same committed offsets.

mod common;

use common::*;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::offset_fetch_response::OffsetFetchResponseGroup;
use kafka_protocol::messages::{
    ApiKey, GroupId, OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;

const UNKNOWN_TOPIC_ID: i16 = 100;
/// An id no topic has.
const NO_SUCH_TOPIC: Uuid = Uuid::from_u128(0xdead_beef);

fn commit_v10(conn: &mut RawConn, group: &str, topics: &[(Uuid, i64)]) -> OffsetCommitResponse {
    let topics = topics
        .iter()
        .map(|&(id, offset)| {
            OffsetCommitRequestTopic::default()
                .with_topic_id(id)
                .with_partitions(vec![OffsetCommitRequestPartition::default()
                    .with_partition_index(0)
                    .with_committed_offset(offset)])
        })
        .collect();
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_owned())))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(topics);
    conn.request(10, &request).expect("OffsetCommit v10")
}

/// OffsetFetch v10 of partition 0 of `ids`, or of every topic (`None`).
fn fetch_v10(conn: &mut RawConn, group: &str, ids: Option<&[Uuid]>) -> OffsetFetchResponseGroup {
    let topics = ids.map(|ids| {
        ids.iter()
            .map(|&id| {
                OffsetFetchRequestTopics::default()
                    .with_topic_id(id)
                    .with_partition_indexes(vec![0])
            })
            .collect()
    });
    let request =
        OffsetFetchRequest::default().with_groups(vec![OffsetFetchRequestGroup::default()
            .with_group_id(GroupId(StrBytes::from_string(group.to_owned())))
            .with_topics(topics)]);
    let mut response = conn.request(10, &request).expect("OffsetFetch v10");
    assert_eq!(response.groups.len(), 1, "{response:?}");
    let group = response.groups.remove(0);
    assert_eq!(group.error_code, 0, "{group:?}");
    group
}

/// `(topic id, partition, committed offset, error)` of every partition.
fn offsets(group: &OffsetFetchResponseGroup) -> Vec<(Uuid, i32, i64, i16)> {
    group
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| {
                (
                    t.topic_id,
                    p.partition_index,
                    p.committed_offset,
                    p.error_code,
                )
            })
        })
        .collect()
}

/// librdkafka's committed offset (OffsetFetch v9) of `topic`-0.
fn committed_v9(consumer: &BaseConsumer, topic: &str) -> Offset {
    let mut query = TopicPartitionList::new();
    query.add_partition(topic, 0);
    let got = consumer
        .committed_offsets(query, CLIENT_TIMEOUT)
        .expect("OffsetFetch");
    got.elements()[0].offset()
}

#[test]
fn v10_names_topics_by_id_and_shares_offsets_with_v9() {
    let broker = TestBroker::start();
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("by-id");
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(create_topic(&bootstrap, &topic, 1, &[]));
    let group = unique_topic("group");

    let mut conn = RawConn::connect(broker.addr()).expect("connecting");
    let versions = conn.api_versions().expect("ApiVersions");
    for api in [ApiKey::OffsetCommit, ApiKey::OffsetFetch] {
        let advertised = versions
            .api_keys
            .iter()
            .find(|k| k.api_key == api as i16)
            .unwrap_or_else(|| panic!("{api:?} is not advertised"));
        assert_eq!(advertised.max_version, 10, "{api:?}");
    }
    let id = conn
        .metadata_topic(&topic, false)
        .expect("Metadata")
        .topic_id;
    assert_ne!(id, Uuid::nil());

    // librdkafka commits by name (v9); v10 reads the offset by id.
    let consumer = consumer(&bootstrap, &[("group.id", &group)]);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(5))
        .unwrap();
    consumer
        .commit(&tpl, CommitMode::Sync)
        .expect("OffsetCommit v9");
    assert_eq!(
        offsets(&fetch_v10(&mut conn, &group, Some(&[id]))),
        vec![(id, 0, 5, 0)]
    );

    // v10 commits by id; librdkafka reads the offset by name.
    let r = commit_v10(&mut conn, &group, &[(id, 9), (NO_SUCH_TOPIC, 1)]);
    let answers: Vec<(Uuid, i16)> = r
        .topics
        .iter()
        .map(|t| (t.topic_id, t.partitions[0].error_code))
        .collect();
    assert_eq!(answers, vec![(NO_SUCH_TOPIC, UNKNOWN_TOPIC_ID), (id, 0)]);
    assert_eq!(committed_v9(&consumer, &topic), Offset::Offset(9));

    // An unknown id is answered after the known topics; every topic comes back by id.
    let explicit = fetch_v10(&mut conn, &group, Some(&[NO_SUCH_TOPIC, id]));
    assert_eq!(
        offsets(&explicit),
        vec![(id, 0, 9, 0), (NO_SUCH_TOPIC, 0, -1, UNKNOWN_TOPIC_ID)]
    );
    assert_eq!(
        offsets(&fetch_v10(&mut conn, &group, None)),
        vec![(id, 0, 9, 0)]
    );
}
