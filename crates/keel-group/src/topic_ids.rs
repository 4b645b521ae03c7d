//! OffsetCommit and OffsetFetch v10 name topics by id instead of by name
//! (KIP-848; KAFKA-14690, KAFKA-14691). The coordinator keeps offsets by
//! topic name, as the `__consumer_offsets` records and every older version
//! do, so v9 and v10 read and write the same offsets. The ids are therefore
//! resolved here, at the edge, before the coordinator sees the request, and
//! put back on its answer, as Kafka's `KafkaApis` does around its
//! `GroupCoordinatorService`.
//!
//! A topic whose id the metadata does not know (the zero id included) is
//! answered UNKNOWN_TOPIC_ID and never reaches the coordinator, so neither
//! the group's validation nor a failed append can change its answer.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::offset_commit_response::OffsetCommitResponseTopic;
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartitions, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    OffsetCommitRequest, OffsetFetchRequest, OffsetFetchResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use crate::consumer_group::TopicMetadata;
use crate::state_machine::commit_answer;

/// The first version of both APIs that names topics by id.
const TOPIC_IDS_VERSION: i16 = 10;

const UNKNOWN_TOPIC_ID: i16 = ResponseError::UnknownTopicId.code();

fn uses_topic_ids(version: i16) -> bool {
    version >= TOPIC_IDS_VERSION
}

/// The name of the topic `id` names. Kafka never asks its metadata about
/// the zero id: a v10 request that leaves the id out names no topic.
fn name_of(topics: &dyn TopicMetadata, id: &Uuid) -> Option<TopicName> {
    if id.is_nil() {
        return None;
    }
    let name = topics.topic_name(id)?;
    Some(TopicName(StrBytes::from_string(name.to_owned())))
}

/// Names every topic of a v10 OffsetCommit by its id and takes out those
/// whose id is unknown, returning their answers: every partition
/// UNKNOWN_TOPIC_ID (Kafka's `KafkaApis.handleOffsetCommitRequest`).
/// Below v10 the request already names its topics and is left alone.
pub(crate) fn resolve_commit(
    req: &mut OffsetCommitRequest,
    version: i16,
    topics: &dyn TopicMetadata,
) -> Vec<OffsetCommitResponseTopic> {
    if !uses_topic_ids(version) {
        return Vec::new();
    }
    let mut unknown = Vec::new();
    req.topics
        .retain_mut(|t| match name_of(topics, &t.topic_id) {
            Some(name) => {
                t.name = name;
                true
            }
            None => {
                unknown.push(commit_answer(t, |_| UNKNOWN_TOPIC_ID));
                false
            }
        });
    unknown
}

/// The answers an OffsetFetch's groups owe for topics the coordinator never
/// saw, group by group.
pub(crate) struct UnknownFetchTopics(Vec<Vec<OffsetFetchResponseTopics>>);

/// Names every requested topic of a v10 OffsetFetch by its id and takes out
/// those whose id is unknown, keeping their answers for `complete_fetch`:
/// committed offset -1 and UNKNOWN_TOPIC_ID on every partition. Below v10
/// the request already names its topics and is left alone.
pub(crate) fn resolve_fetch(
    req: &mut OffsetFetchRequest,
    version: i16,
    topics: &dyn TopicMetadata,
) -> UnknownFetchTopics {
    if !uses_topic_ids(version) {
        return UnknownFetchTopics(Vec::new());
    }
    let per_group = req
        .groups
        .iter_mut()
        .map(|g| {
            let mut unknown = Vec::new();
            // `None` asks for every topic: resolved on the way out.
            if let Some(requested) = &mut g.topics {
                requested.retain_mut(|t| match name_of(topics, &t.topic_id) {
                    Some(name) => {
                        t.name = name;
                        true
                    }
                    None => {
                        let partitions = t
                            .partition_indexes
                            .iter()
                            .map(|&p| {
                                OffsetFetchResponsePartitions::default()
                                    .with_partition_index(p)
                                    .with_committed_offset(-1)
                                    .with_error_code(UNKNOWN_TOPIC_ID)
                            })
                            .collect();
                        unknown.push(
                            OffsetFetchResponseTopics::default()
                                .with_topic_id(t.topic_id)
                                .with_partitions(partitions),
                        );
                        false
                    }
                });
            }
            unknown
        })
        .collect();
    UnknownFetchTopics(per_group)
}

/// Completes the coordinator's answer to a v10 OffsetFetch `req` (as
/// `resolve_fetch` left it), as Kafka's `KafkaApis.fetchOffsetsForGroup`
/// and `fetchAllOffsetsForGroup` do:
/// - a group the coordinator failed keeps its error alone;
/// - the unknown ids follow the topics the coordinator answered;
/// - a request for every topic gets each topic's id from the metadata, and
///   a topic the metadata no longer has (deleted, its offsets not yet
///   expired) is left out: without an id it cannot be written.
pub(crate) fn complete_fetch(
    response: &mut OffsetFetchResponse,
    req: &OffsetFetchRequest,
    unknown: UnknownFetchTopics,
    version: i16,
    topics: &dyn TopicMetadata,
) {
    if !uses_topic_ids(version) {
        return;
    }
    let groups = response.groups.iter_mut().zip(&req.groups);
    for ((group, requested), unknown) in groups.zip(unknown.0) {
        if group.error_code != 0 {
            continue;
        }
        if requested.topics.is_some() {
            group.topics.extend(unknown);
            continue;
        }
        group
            .topics
            .retain_mut(|t| match topics.partitions(&t.name) {
                Some((id, _)) => {
                    t.topic_id = id;
                    true
                }
                None => false,
            });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use bytes::BytesMut;
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::offset_fetch_request::{
        OffsetFetchRequestGroup, OffsetFetchRequestTopics,
    };
    use kafka_protocol::messages::{GroupId, ListGroupsRequest, OffsetCommitResponse};
    use kafka_protocol::protocol::{Decodable, Encodable};

    use super::*;
    use crate::service::tests::{load_all, MemoryLog};
    use crate::{GroupConfig, GroupService, LogEntry, OffsetsLog};

    const ORDERS: Uuid = Uuid::from_u128(0x0e0e);
    /// An id no topic has.
    const GONE: Uuid = Uuid::from_u128(0xdead);
    const ILLEGAL_GENERATION: i16 = ResponseError::IllegalGeneration.code();
    const NOT_COORDINATOR: i16 = ResponseError::NotCoordinator.code();

    fn s(v: &str) -> StrBytes {
        StrBytes::from_string(v.to_owned())
    }

    /// The broker's topics: `orders` only.
    fn metadata() -> BTreeMap<String, (Uuid, i32)> {
        BTreeMap::from([("orders".to_owned(), (ORDERS, 3))])
    }

    async fn loaded() -> (Arc<GroupService>, Arc<MemoryLog>) {
        let log = Arc::new(MemoryLog::default());
        let svc = GroupService::new(GroupConfig::default(), log.clone());
        load_all(&svc).await;
        (svc, log)
    }

    /// An OffsetCommit to group `g`; generation -1 commits as a simple
    /// consumer.
    fn commit(generation: i32, topics: Vec<OffsetCommitRequestTopic>) -> OffsetCommitRequest {
        OffsetCommitRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_generation_id_or_member_epoch(generation)
            .with_topics(topics)
    }

    fn partitions(offsets: &[(i32, i64)]) -> Vec<OffsetCommitRequestPartition> {
        offsets
            .iter()
            .map(|&(p, o)| {
                OffsetCommitRequestPartition::default()
                    .with_partition_index(p)
                    .with_committed_offset(o)
            })
            .collect()
    }

    fn by_id(id: Uuid, offsets: &[(i32, i64)]) -> OffsetCommitRequestTopic {
        OffsetCommitRequestTopic::default()
            .with_topic_id(id)
            .with_partitions(partitions(offsets))
    }

    fn by_name(name: &str, offsets: &[(i32, i64)]) -> OffsetCommitRequestTopic {
        OffsetCommitRequestTopic::default()
            .with_name(TopicName(s(name)))
            .with_partitions(partitions(offsets))
    }

    /// One group's OffsetFetch; `None` asks for every topic.
    fn fetch(topics: Option<Vec<OffsetFetchRequestTopics>>) -> OffsetFetchRequest {
        OffsetFetchRequest::default().with_groups(vec![OffsetFetchRequestGroup::default()
            .with_group_id(GroupId(s("g")))
            .with_topics(topics)])
    }

    fn fetch_id(id: Uuid, partitions: &[i32]) -> OffsetFetchRequestTopics {
        OffsetFetchRequestTopics::default()
            .with_topic_id(id)
            .with_partition_indexes(partitions.to_vec())
    }

    fn fetch_name(name: &str, partitions: &[i32]) -> OffsetFetchRequestTopics {
        OffsetFetchRequestTopics::default()
            .with_name(TopicName(s(name)))
            .with_partition_indexes(partitions.to_vec())
    }

    /// `(name, id, [(partition, offset, error)])` per topic of the one group.
    type Fetched = Vec<(String, Uuid, Vec<(i32, i64, i16)>)>;

    fn fetched(r: &OffsetFetchResponse) -> Fetched {
        assert_eq!(r.groups.len(), 1);
        assert_eq!(r.groups[0].error_code, 0, "{r:?}");
        r.groups[0]
            .topics
            .iter()
            .map(|t| {
                let parts = t
                    .partitions
                    .iter()
                    .map(|p| (p.partition_index, p.committed_offset, p.error_code))
                    .collect();
                (t.name.0.to_string(), t.topic_id, parts)
            })
            .collect()
    }

    /// `(id, [(partition, error)])` per topic.
    fn committed(r: &OffsetCommitResponse) -> Vec<(Uuid, Vec<(i32, i16)>)> {
        r.topics
            .iter()
            .map(|t| {
                let parts = t
                    .partitions
                    .iter()
                    .map(|p| (p.partition_index, p.error_code))
                    .collect();
                (t.topic_id, parts)
            })
            .collect()
    }

    /// Encodes and decodes at `version`: what a client reads.
    fn on_the_wire<M: Encodable + Decodable>(m: &M, version: i16) -> M {
        let mut buf = BytesMut::new();
        m.encode(&mut buf, version).unwrap();
        M::decode(&mut buf.freeze(), version).unwrap()
    }

    #[tokio::test]
    async fn an_offset_committed_by_id_is_the_offset_committed_by_name() {
        let (svc, log) = loaded().await;
        let topics = metadata();

        let r = svc
            .offset_commit(commit(-1, vec![by_id(ORDERS, &[(0, 42)])]), 10, &topics)
            .await;
        let r = on_the_wire(&r, 10);
        assert_eq!(committed(&r), vec![(ORDERS, vec![(0, 0)])]);
        // Stored by name, as v9 stores it.
        let key = crate::records::offset_commit_key("g", "orders", 0);
        let records = log.read_all(svc.partition_for("g")).unwrap();
        assert!(
            records
                .iter()
                .any(|e| matches!(e, LogEntry::Record { key: k, .. } if *k == key)),
            "{records:?}"
        );

        // v9 commits partition 1 by name; both versions read both.
        let r = svc
            .offset_commit(commit(-1, vec![by_name("orders", &[(1, 7)])]), 9, &topics)
            .await;
        assert_eq!(r.topics[0].partitions[0].error_code, 0);
        let v9 = svc
            .offset_fetch(
                fetch(Some(vec![fetch_name("orders", &[0, 1, 2])])),
                9,
                &topics,
            )
            .await;
        let v10 = svc
            .offset_fetch(fetch(Some(vec![fetch_id(ORDERS, &[0, 1, 2])])), 10, &topics)
            .await;
        let offsets = vec![(0, 42, 0), (1, 7, 0), (2, -1, 0)];
        assert_eq!(
            fetched(&v9),
            vec![("orders".to_owned(), Uuid::nil(), offsets.clone())]
        );
        // On the wire v10 carries the id and no name.
        assert_eq!(
            fetched(&on_the_wire(&v10, 10)),
            vec![(String::new(), ORDERS, offsets)]
        );
    }

    #[tokio::test]
    async fn a_commit_answers_unknown_ids_first_and_commits_the_rest() {
        let (svc, _log) = loaded().await;
        let request = commit(
            -1,
            vec![
                by_id(ORDERS, &[(0, 5)]),
                by_id(GONE, &[(0, 1), (1, 2)]),
                by_id(Uuid::nil(), &[(0, 3)]),
            ],
        );
        let r = svc.offset_commit(request, 10, &metadata()).await;
        assert_eq!(
            committed(&r),
            vec![
                (GONE, vec![(0, UNKNOWN_TOPIC_ID), (1, UNKNOWN_TOPIC_ID)]),
                (Uuid::nil(), vec![(0, UNKNOWN_TOPIC_ID)]),
                (ORDERS, vec![(0, 0)]),
            ]
        );
        assert_eq!(
            svc.committed_offsets("g"),
            vec![("orders".to_owned(), 0, 5)]
        );
    }

    #[tokio::test]
    async fn a_commit_of_unknown_ids_only_never_reaches_the_coordinator() {
        let (svc, log) = loaded().await;
        let r = svc
            .offset_commit(commit(-1, vec![by_id(GONE, &[(0, 1)])]), 10, &metadata())
            .await;
        assert_eq!(committed(&r), vec![(GONE, vec![(0, UNKNOWN_TOPIC_ID)])]);
        // A simple consumer's first commit would have created its group.
        assert!(svc
            .list_groups(ListGroupsRequest::default(), 5)
            .groups
            .is_empty());
        assert!(log.read_all(svc.partition_for("g")).unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_unknown_id_keeps_its_error_when_the_group_refuses_the_commit() {
        let (svc, _log) = loaded().await;
        // Generation 3 of a group that does not exist.
        let request = commit(3, vec![by_id(ORDERS, &[(0, 5)]), by_id(GONE, &[(0, 1)])]);
        let r = svc.offset_commit(request, 10, &metadata()).await;
        assert_eq!(
            committed(&r),
            vec![
                (GONE, vec![(0, UNKNOWN_TOPIC_ID)]),
                (ORDERS, vec![(0, ILLEGAL_GENERATION)]),
            ]
        );
    }

    #[tokio::test]
    async fn a_fetch_answers_unknown_ids_after_the_known_topics() {
        let (svc, _log) = loaded().await;
        let topics = metadata();
        svc.offset_commit(commit(-1, vec![by_id(ORDERS, &[(2, 9)])]), 10, &topics)
            .await;
        let request = fetch(Some(vec![
            fetch_id(GONE, &[0]),
            fetch_id(ORDERS, &[2]),
            fetch_id(Uuid::nil(), &[4, 5]),
        ]));
        let r = svc.offset_fetch(request, 10, &topics).await;
        assert_eq!(
            fetched(&r),
            vec![
                ("orders".to_owned(), ORDERS, vec![(2, 9, 0)]),
                (String::new(), GONE, vec![(0, -1, UNKNOWN_TOPIC_ID)]),
                (
                    String::new(),
                    Uuid::nil(),
                    vec![(4, -1, UNKNOWN_TOPIC_ID), (5, -1, UNKNOWN_TOPIC_ID)]
                ),
            ]
        );
    }

    #[tokio::test]
    async fn a_fetch_of_every_topic_leaves_out_topics_without_an_id() {
        let (svc, _log) = loaded().await;
        let topics = metadata();
        // `deleted` is not in the metadata any more; its offset remains.
        let request = commit(
            -1,
            vec![by_name("deleted", &[(0, 1)]), by_name("orders", &[(0, 2)])],
        );
        svc.offset_commit(request, 9, &topics).await;

        let v9 = svc.offset_fetch(fetch(None), 9, &topics).await;
        assert_eq!(
            fetched(&v9),
            vec![
                ("deleted".to_owned(), Uuid::nil(), vec![(0, 1, 0)]),
                ("orders".to_owned(), Uuid::nil(), vec![(0, 2, 0)]),
            ]
        );
        let v10 = svc.offset_fetch(fetch(None), 10, &topics).await;
        assert_eq!(
            fetched(&on_the_wire(&v10, 10)),
            vec![(String::new(), ORDERS, vec![(0, 2, 0)])]
        );
    }

    #[tokio::test]
    async fn a_group_error_answers_for_the_whole_group() {
        // Its partition is not coordinated here: the group is answered
        // NOT_COORDINATOR, with no topics, the unknown id included.
        let svc = GroupService::new(GroupConfig::default(), Arc::new(MemoryLog::default()));
        let request = fetch(Some(vec![fetch_id(GONE, &[0]), fetch_id(ORDERS, &[0])]));
        let r = svc.offset_fetch(request, 10, &metadata()).await;
        assert_eq!(r.groups[0].error_code, NOT_COORDINATOR);
        assert!(r.groups[0].topics.is_empty());
    }
}
