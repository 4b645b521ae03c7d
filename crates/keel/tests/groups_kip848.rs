//! Consumer groups with the KIP-848 protocol (`group.protocol=consumer`):
//! the same scenarios as `groups.rs`, with the broker assigning partitions
//! (its `uniform` assignor by default, `range` on request) through
//! ConsumerGroupHeartbeat, and ConsumerGroupDescribe for the broker's view.
//!
//! Members run on their own threads and journal every rebalance callback,
//! record and commit (see `common/groups.rs`); `check_journal` replays the
//! journal: a member handed a partition starts at the last committed offset
//! and reads on without gaps until it loses it.

mod common;
#[path = "common/groups.rs"]
mod group_common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use group_common::*;
use kafka_protocol::messages::consumer_group_describe_response::DescribedGroup;
use kafka_protocol::messages::{ConsumerGroupDescribeRequest, GroupId};
use kafka_protocol::protocol::StrBytes;
use rdkafka::config::ClientConfig;

/// KIP-848. The broker sets the heartbeat interval (500 ms) and the session
/// timeout (6 s); librdkafka refuses `session.timeout.ms`,
/// `heartbeat.interval.ms` and `partition.assignment.strategy` with it.
const KIP848: GroupProtocol = GroupProtocol {
    broker: &[
        ("group.initial.rebalance.delay.ms", "0"),
        ("offsets.topic.num.partitions", "4"),
        ("group.consumer.heartbeat.interval.ms", "500"),
        ("group.consumer.session.timeout.ms", "6000"),
    ],
    member: &[("group.protocol", "consumer")],
};

fn member_config(bootstrap: &str, group: &str, extra: &[(&str, &str)]) -> ClientConfig {
    KIP848.member_config(bootstrap, group, extra)
}

/// ConsumerGroupDescribe v0 for `group`, straight to the (only) broker.
fn describe(broker: &TestBroker, group: &str) -> DescribedGroup {
    let request = ConsumerGroupDescribeRequest::default()
        .with_group_ids(vec![GroupId(StrBytes::from_string(group.to_string()))]);
    let response = RawConn::connect(broker.addr())
        .map_err(anyhow::Error::from)
        .and_then(|mut conn| conn.request(0, &request))
        .unwrap_or_else(|e| panic!("ConsumerGroupDescribe {group}: {e}"));
    let described = response
        .groups
        .into_iter()
        .next()
        .expect("ConsumerGroupDescribe answers for the group");
    assert_eq!(
        described.error_code, 0,
        "ConsumerGroupDescribe {group}: {:?}",
        described.error_message
    );
    described
}

/// Per member, sorted by member id: (client id, assigned partitions of
/// `topic`).
fn described_assignments(group: &DescribedGroup, topic: &str) -> Vec<(String, BTreeSet<i32>)> {
    let mut members: Vec<_> = group.members.iter().collect();
    members.sort_by(|a, b| a.member_id.as_str().cmp(b.member_id.as_str()));
    members
        .into_iter()
        .map(|m| {
            let partitions = m
                .assignment
                .topic_partitions
                .iter()
                .filter(|t| t.topic_name.0.as_str() == topic)
                .flat_map(|t| t.partitions.iter().copied())
                .collect();
            (m.client_id.to_string(), partitions)
        })
        .collect()
}

fn client_id(id: usize) -> String {
    format!("kip848-member-{id}")
}

/// Three members share six partitions two each (the uniform assignor); one
/// leaves and the other two take its partitions over, resuming at its last
/// commit, while a producer keeps writing.
#[test]
fn three_members_share_partitions_and_take_over_when_one_leaves() {
    let report = share_and_take_over(
        &KIP848,
        "share848",
        client_id,
        |_| (),
        |s, _, members| {
            // The broker's view: Stable, uniform, and the members' own
            // assignments.
            let described = describe(&s.broker, &s.group);
            assert_eq!(described.group_state.as_str(), "Stable");
            assert_eq!(described.assignor_name.as_str(), "uniform");
            let assignments = described_assignments(&described, &s.topic);
            assert_eq!(assignments.len(), 3, "members: {assignments:?}");
            for m in members {
                let mine = assignments
                    .iter()
                    .find(|(c, _)| *c == client_id(m.shared.id))
                    .map(|(_, s)| s.clone());
                assert_eq!(
                    mine,
                    Some(m.owned()),
                    "ConsumerGroupDescribe and member {} disagree: {assignments:?}",
                    m.shared.id
                );
            }
        },
        |s, _, _, left_at| {
            let takeover = left_at.elapsed();
            let described = describe(&s.broker, &s.group);
            assert_eq!(
                described_assignments(&described, &s.topic).len(),
                2,
                "members after the leave: {:?}",
                described.members
            );
            takeover
        },
    );
    assert!(report.revocations > 0, "nobody lost a partition");
}

#[test]
fn committed_offsets_survive_a_clean_restart() {
    commits_survive(&KIP848, |b| b.restart());
}

#[test]
fn committed_offsets_survive_kill9() {
    commits_survive(&KIP848, |b| b.kill9_and_restart());
}

/// A member that stops polling for longer than `max.poll.interval.ms` leaves
/// the group (its client does, while its heartbeat thread would go on), and
/// the other member takes its partitions, resuming at its commits; when it
/// polls again it is told so and rejoins.
#[test]
fn member_exceeding_max_poll_interval_loses_its_partitions() {
    max_poll_interval_exceeded(
        &KIP848,
        "maxpoll848",
        &[("max.poll.interval.ms", "6000")],
        |_| (),
        |s, _| {
            let described = describe(&s.broker, &s.group);
            assert_eq!(
                described.members.len(),
                1,
                "members after the removal: {:?}",
                described.members
            );
        },
    );
}

/// With `group.remote.assignor=range` the broker hands each member, in
/// member-id order, a contiguous range: seven partitions over three
/// members are 0-2, 3-4 and 5-6.
#[test]
fn range_assignor_assigns_contiguous_ranges() {
    let s = Scenario::start(&KIP848, "range848", 7);
    let producer = s.producer(Duration::from_millis(20));
    let (broker, bootstrap, topic, group) = (&s.broker, &s.bootstrap, &s.topic, &s.group);
    let mut members: Vec<MemberThread> = (0..3)
        .map(|id| {
            let config = member_config(
                bootstrap,
                group,
                &[
                    ("client.id", &client_id(id)),
                    ("group.remote.assignor", "range"),
                ],
            );
            MemberThread::spawn(id, config, topic, 10, &s.journal)
        })
        .collect();
    let all = s.all();
    let expected: Vec<BTreeSet<i32>> = vec![(0..3).collect(), (3..5).collect(), (5..7).collect()];
    {
        let refs: Vec<&MemberThread> = members.iter().collect();
        wait_for_members(
            broker,
            "the members own 3, 2 and 2 partitions",
            CLIENT_TIMEOUT,
            &refs,
            || {
                let sets: Vec<_> = members.iter().map(|m| m.owned()).collect();
                let mut sizes: Vec<usize> = sets.iter().map(|s| s.len()).collect();
                sizes.sort_unstable();
                sizes == [2, 2, 3] && is_partitioned(&sets, &all)
            },
        );
    }
    let described = describe(broker, group);
    assert_eq!(described.assignor_name.as_str(), "range");
    let assignments = described_assignments(&described, topic);
    let ranges: Vec<BTreeSet<i32>> = assignments.iter().map(|(_, s)| s.clone()).collect();
    assert_eq!(
        ranges, expected,
        "assignments in member-id order: {assignments:?}"
    );
    for m in &members {
        let mine = assignments
            .iter()
            .find(|(c, _)| *c == client_id(m.shared.id))
            .map(|(_, s)| s.clone());
        assert_eq!(mine, Some(m.owned()), "member {} disagrees", m.shared.id);
    }
    let [a, b, c] = &mut members[..] else {
        unreachable!()
    };
    s.finish_and_check(producer, &mut [a, b, c], &[]);
}
