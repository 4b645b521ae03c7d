//! Loading and unloading one `__consumer_offsets` partition leaves the
//! groups of the others alone, and a partition loaded again brings its
//! groups back as their records left them.

use std::collections::BTreeMap;

use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::ConsumerGroupDescribeResponse;

use super::*;

/// A group id of `partition`.
fn group_in(svc: &GroupService, partition: i32) -> String {
    (0..)
        .map(|i| format!("group-{i}"))
        .find(|g| svc.partition_for(g) == partition)
        .expect("some id hashes to every partition")
}

fn timers_of(svc: &GroupService, group: &str) -> BTreeMap<TimerKey, i64> {
    svc.timers
        .lock()
        .iter()
        .filter(|(key, _)| key.group_id() == Some(group))
        .map(|(key, deadline)| (key.clone(), *deadline))
        .collect()
}

fn describe(svc: &GroupService, group: &str) -> DescribedGroup {
    let request = DescribeGroupsRequest::default().with_groups(vec![GroupId(s(group))]);
    svc.describe_groups(request, 5).groups.remove(0)
}

fn heartbeat_req(group: &str, generation: i32, member_id: &str) -> HeartbeatRequest {
    HeartbeatRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_generation_id(generation)
        .with_member_id(s(member_id))
}

fn commit_req(group: &str, generation: i32, member_id: &str, offset: i64) -> OffsetCommitRequest {
    OffsetCommitRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(s(member_id))
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(TopicName(s("t")))
            .with_partitions(vec![OffsetCommitRequestPartition::default()
                .with_partition_index(0)
                .with_committed_offset(offset)])])
}

/// A member that joined and synced alone: generation 1, Stable.
async fn stable_member(svc: &GroupService, group: &str, client: &str) -> JoinGroupResponse {
    let joined = join(svc, group, client).await;
    assert_eq!((joined.error_code, joined.generation_id), (0, 1));
    let me = joined.member_id.to_string();
    let synced = svc
        .sync_group(sync_req(group, 1, &me, &[(&me, "x")]), 5)
        .await;
    assert_eq!(synced.error_code, 0);
    joined
}

/// Starts a second member's join of `group`, and returns once it waits
/// for the first member to rejoin.
async fn parked_join(
    svc: &Arc<GroupService>,
    group: &str,
) -> tokio::task::JoinHandle<JoinGroupResponse> {
    let (joining, id) = (svc.clone(), group.to_owned());
    let handle = tokio::spawn(async move { join(&joining, &id, "b").await });
    while describe(svc, group).members.len() < 2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(
        describe(svc, group).group_state.as_str(),
        "PreparingRebalance"
    );
    assert!(!handle.is_finished());
    handle
}

fn quick() -> (Arc<GroupService>, Arc<MemoryLog>) {
    let log = Arc::new(MemoryLog::default());
    let config = GroupConfig {
        group_initial_rebalance_delay_ms: 0,
        ..GroupConfig::default()
    };
    (GroupService::new(config, log.clone()), log)
}

#[tokio::test]
async fn loading_a_partition_leaves_a_rebalance_of_another_alone() {
    let (svc, _log) = quick();
    load_all(&svc).await;
    let partition = svc.partition_for("g");
    let other = group_in(&svc, (partition + 1) % svc.config.offsets_topic_partitions);
    let r = svc
        .offset_commit(commit_req(&other, -1, "", 7), 8, &NoTopics)
        .await;
    assert_eq!(r.topics[0].partitions[0].error_code, 0);
    let a = stable_member(&svc, "g", "a").await;
    let b = parked_join(&svc, "g").await;
    let timers = timers_of(&svc, "g");
    assert!(timers.contains_key(&TimerKey::Join {
        group_id: "g".into()
    }));

    svc.load_partition(svc.partition_for(&other)).await.unwrap();

    assert_eq!(svc.committed_offsets(&other), vec![("t".to_string(), 0, 7)]);
    let g = describe(&svc, "g");
    assert_eq!(g.group_state.as_str(), "PreparingRebalance");
    assert_eq!(g.members.len(), 2);
    assert_eq!(timers_of(&svc, "g"), timers);
    assert!(!b.is_finished());
    // The first member rejoins: the parked join completes the rebalance.
    let rejoined = svc
        .join_group_with_client(join_req("g", &a.member_id), 9, "a", "/127.0.0.1")
        .await;
    let b = b.await.unwrap();
    assert_eq!((rejoined.error_code, b.error_code), (0, 0));
    assert_eq!((rejoined.generation_id, b.generation_id), (2, 2));
}

#[tokio::test]
async fn unloading_a_partition_answers_its_groups_not_coordinator() {
    const NOT_COORDINATOR: i16 = ResponseError::NotCoordinator.code();
    let (svc, _log) = quick();
    load_all(&svc).await;
    let partition = svc.partition_for("g");
    let other = group_in(&svc, (partition + 1) % svc.config.offsets_topic_partitions);
    let o = stable_member(&svc, &other, "o").await;
    let a = stable_member(&svc, "g", "a").await;
    let r = svc
        .offset_commit(commit_req("g", 1, &a.member_id, 42), 8, &NoTopics)
        .await;
    assert_eq!(r.topics[0].partitions[0].error_code, 0);
    let b = parked_join(&svc, "g").await;

    svc.unload_partition(partition).await;

    // The parked join, and every later request, hear NOT_COORDINATOR.
    assert_eq!(b.await.unwrap().error_code, NOT_COORDINATOR);
    let hb = svc.heartbeat(heartbeat_req("g", 1, &a.member_id), 4).await;
    assert_eq!(hb.error_code, NOT_COORDINATOR);
    let fetch = OffsetFetchRequest::default().with_group_id(GroupId(s("g")));
    assert_eq!(
        svc.offset_fetch(fetch, 7, &NoTopics).await.error_code,
        NOT_COORDINATOR
    );
    assert_eq!(describe(&svc, "g").error_code, NOT_COORDINATOR);
    assert!(timers_of(&svc, "g").is_empty());
    // The other partition's group carries on.
    let hb = svc
        .heartbeat(heartbeat_req(&other, 1, &o.member_id), 4)
        .await;
    assert_eq!(hb.error_code, 0);
    assert!(!timers_of(&svc, &other).is_empty());
    let listed = svc.list_groups(ListGroupsRequest::default(), 5);
    let listed: Vec<&str> = listed.groups.iter().map(|g| g.group_id.as_str()).collect();
    assert_eq!(listed, vec![other.as_str()]);

    // Loaded again, the group is what its records say: the first member
    // in generation 1 with its offset; the rebalance never reached the log.
    svc.load_partition(partition).await.unwrap();
    assert_eq!(svc.committed_offsets("g"), vec![("t".to_string(), 0, 42)]);
    let g = describe(&svc, "g");
    assert_eq!(g.group_state.as_str(), "Stable");
    assert_eq!(g.members.len(), 1);
    let hb = svc.heartbeat(heartbeat_req("g", 1, &a.member_id), 4).await;
    assert_eq!(hb.error_code, 0);
}

#[tokio::test]
async fn a_partition_loaded_again_brings_back_offsets_transactions_and_consumer_groups() {
    const UNSTABLE: i16 = ResponseError::UnstableOffsetCommit.code();
    let log = Arc::new(MemoryLog::default());
    let svc = GroupService::new(GroupConfig::default(), log.clone());
    load_all(&svc).await;
    let partition = svc.partition_for("g");

    // Offsets of "g": a regular commit, a committed and an aborted
    // transaction, and one still open.
    let r = svc
        .offset_commit(commit_req("g", -1, "", 1), 8, &NoTopics)
        .await;
    assert_eq!(r.topics[0].partitions[0].error_code, 0);
    for (producer_id, offsets) in [(7, [(1, 5)]), (9, [(2, 90)]), (8, [(3, 30)])] {
        let r = svc
            .txn_offset_commit(txn(producer_id, 0, &offsets), 4)
            .await;
        assert_eq!(r.topics[0].partitions[0].error_code, 0);
    }
    for (producer_id, commit) in [(7, true), (9, false)] {
        log.write_marker(partition, producer_id, commit);
        svc.complete_transaction(partition, producer_id, commit)
            .await;
    }
    let offsets = vec![(1, 0), (5, 0), (-1, 0), (-1, UNSTABLE)];
    assert_eq!(stable_offsets(&svc).await, offsets);

    // A KIP-848 consumer group of the same partition.
    let cg = group_in(&svc, partition);
    let topics = BTreeMap::from([("t".to_owned(), (Uuid::from_u128(1), 4))]);
    let hb = ConsumerGroupHeartbeatRequest::default()
        .with_group_id(GroupId(s(&cg)))
        .with_member_id(s("m1"))
        .with_member_epoch(0)
        .with_rebalance_timeout_ms(30_000)
        .with_subscribed_topic_names(Some(vec![TopicName(s("t"))]))
        .with_topic_partitions(Some(Vec::new()));
    let r = svc
        .consumer_group_heartbeat(hb, 1, "client", "/127.0.0.1", &topics)
        .await;
    assert_eq!((r.error_code, r.member_epoch), (0, 1));
    let describe_cg = |svc: &GroupService| -> ConsumerGroupDescribeResponse {
        let request = ConsumerGroupDescribeRequest::default().with_group_ids(vec![GroupId(s(&cg))]);
        svc.consumer_group_describe(request, 1)
    };
    let described = describe_cg(&svc);
    assert_eq!(described.groups[0].members.len(), 1);

    svc.unload_partition(partition).await;
    let fetch = OffsetFetchRequest::default().with_group_id(GroupId(s("g")));
    assert_eq!(
        svc.offset_fetch(fetch, 7, &NoTopics).await.error_code,
        ResponseError::NotCoordinator.code()
    );
    assert_eq!(
        describe_cg(&svc).groups[0].error_code,
        ResponseError::NotCoordinator.code()
    );

    svc.load_partition(partition).await.unwrap();
    assert_eq!(stable_offsets(&svc).await, offsets);
    assert_eq!(describe_cg(&svc), described);
    assert!(
        timers_of(&svc, &cg).contains_key(&TimerKey::ConsumerSession {
            group_id: cg.clone(),
            member_id: "m1".into(),
        })
    );
    // The open transaction ends after the reload.
    log.write_marker(partition, 8, true);
    svc.complete_transaction(partition, 8, true).await;
    assert_eq!(
        stable_offsets(&svc).await,
        vec![(1, 0), (5, 0), (-1, 0), (30, 0)]
    );
}
