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
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

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

/// Waits until every delivered record is consumed, closes the members, and
/// checks the journal: resume points right, nothing missing, and no more
/// duplicates than members had read past their commits when they lost
/// partitions.
fn finish_and_check(
    broker: &TestBroker,
    producer: BackgroundProducer,
    journal: &Journal,
    members: &mut [&mut MemberThread],
    allowed: &[(usize, &str)],
) -> JournalReport {
    let delivered = producer.finish();
    let ends = ends_of(&delivered);
    {
        let refs: Vec<&MemberThread> = members.iter().map(|m| &**m).collect();
        wait_for_members(
            broker,
            "every record is consumed",
            CLIENT_TIMEOUT,
            &refs,
            || all_consumed(journal, &ends),
        );
    }
    close_all(members, allowed);
    let report = check_journal(&journal_snapshot(journal));
    assert!(
        report.violations.is_empty(),
        "resume-point violations:\n{}",
        report.violations.join("\n")
    );
    let missing: Vec<_> = delivered
        .iter()
        .filter(|po| !report.seen.contains_key(po))
        .collect();
    assert!(missing.is_empty(), "records never consumed: {missing:?}");
    assert!(
        report.duplicates <= report.uncommitted_at_revocation,
        "{} duplicates, but members held only {} uncommitted records when they lost partitions",
        report.duplicates,
        report.uncommitted_at_revocation
    );
    eprintln!(
        "{} records, {} duplicates; {} uncommitted over {} revocations (largest window {})",
        delivered.len(),
        report.duplicates,
        report.uncommitted_at_revocation,
        report.revocations,
        report.largest_window
    );
    report
}

/// Three members share six partitions two each (the uniform assignor); one
/// leaves and the other two take its partitions over, resuming at its last
/// commit, while a producer keeps writing.
#[test]
fn three_members_share_partitions_and_take_over_when_one_leaves() {
    const PARTITIONS: i32 = 6;
    const COMMIT_EVERY: usize = 20;
    let broker = KIP848.start_broker();
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("share848");
    let group = format!("{topic}-group");
    create(&broker, &topic, PARTITIONS);
    let producer =
        BackgroundProducer::start(&bootstrap, &topic, PARTITIONS, Duration::from_millis(15));
    let journal = new_journal();
    let mut members: Vec<MemberThread> = (0..3)
        .map(|id| {
            let config = member_config(&bootstrap, &group, &[("client.id", &client_id(id))]);
            MemberThread::spawn(id, config, &topic, COMMIT_EVERY, &journal)
        })
        .collect();
    let all = all_partitions(PARTITIONS);
    {
        let refs: Vec<&MemberThread> = members.iter().collect();
        wait_for_members(
            &broker,
            "three members own two partitions each",
            CLIENT_TIMEOUT,
            &refs,
            || {
                let sets: Vec<_> = members.iter().map(|m| m.owned()).collect();
                sets.iter().all(|s| s.len() == 2) && is_partitioned(&sets, &all)
            },
        );
        let base: Vec<usize> = members.iter().map(|m| m.consumed()).collect();
        wait_for_members(
            &broker,
            "all three members consume",
            CLIENT_TIMEOUT,
            &refs,
            || {
                members
                    .iter()
                    .zip(&base)
                    .all(|(m, b)| m.consumed() >= b + 3 * COMMIT_EVERY)
            },
        );
    }
    // The broker's view: Stable, uniform, and the members' own assignments.
    let described = describe(&broker, &group);
    assert_eq!(described.group_state.as_str(), "Stable");
    assert_eq!(described.assignor_name.as_str(), "uniform");
    let assignments = described_assignments(&described, &topic);
    assert_eq!(assignments.len(), 3, "members: {assignments:?}");
    for m in &members {
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

    // Member 2 leaves (a heartbeat with epoch -1).
    let leaving = members[2].owned();
    let left_at = Instant::now();
    members[2].close();
    let stayers: Vec<&MemberThread> = members[..2].iter().collect();
    wait_for_members(
        &broker,
        "the two remaining members own three partitions each",
        Duration::from_secs(6),
        &stayers,
        || {
            let sets: Vec<_> = stayers.iter().map(|m| m.owned()).collect();
            sets.iter().all(|s| s.len() == 3) && is_partitioned(&sets, &all)
        },
    );
    wait_for_members(
        &broker,
        "the leaver's partitions are read again",
        Duration::from_secs(6),
        &stayers,
        || {
            let j = journal_snapshot(&journal);
            leaving
                .iter()
                .all(|p| first_consumed_after(&j, *p, left_at, Some(2)).is_some())
        },
    );
    let takeover = left_at.elapsed();
    let described = describe(&broker, &group);
    assert_eq!(
        described_assignments(&described, &topic).len(),
        2,
        "members after the leave: {:?}",
        described.members
    );
    let target = producer.delivered() + 600;
    wait_until("the producer writes on", CLIENT_TIMEOUT, || {
        producer.delivered() >= target
    });
    let [a, b, c] = &mut members[..] else {
        unreachable!()
    };
    let report = finish_and_check(&broker, producer, &journal, &mut [a, b, c], &[]);
    assert!(report.revocations > 0, "nobody lost a partition");
    eprintln!("takeover in {takeover:?}");
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
    const PARTITIONS: i32 = 6;
    let broker = KIP848.start_broker();
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("maxpoll848");
    let group = format!("{topic}-group");
    create(&broker, &topic, PARTITIONS);
    let producer =
        BackgroundProducer::start(&bootstrap, &topic, PARTITIONS, Duration::from_millis(20));
    let journal = new_journal();
    let config = || member_config(&bootstrap, &group, &[("max.poll.interval.ms", "6000")]);
    let all = all_partitions(PARTITIONS);
    let mut a = MemberThread::spawn(0, config(), &topic, 10, &journal);
    let mut b = MemberThread::spawn(1, config(), &topic, 10, &journal);
    let split = |a: &MemberThread, b: &MemberThread| {
        let sets = [a.owned(), b.owned()];
        sets.iter().all(|s| s.len() == 3) && is_partitioned(&sets, &all)
    };
    wait_for_members(
        &broker,
        "two members own three partitions each",
        CLIENT_TIMEOUT,
        &[&a, &b],
        || split(&a, &b),
    );
    wait_for_members(&broker, "both read", CLIENT_TIMEOUT, &[&a, &b], || {
        a.consumed() > 20 && b.consumed() > 20
    });

    // Member 0 stops polling.
    let a_partitions = a.owned();
    a.shared.paused.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(250));
    let stalled_at = *a.shared.last_poll.lock().unwrap();
    wait_for_members(
        &broker,
        "member 1 owns everything",
        Duration::from_secs(20),
        &[&a, &b],
        || b.owned() == all,
    );
    let j = journal_snapshot(&journal);
    let taken_after = a_partitions
        .iter()
        .map(|p| last_assignment_of(&j, 1, *p).expect("member 1 was assigned it") - stalled_at)
        .min()
        .unwrap();
    assert!(
        taken_after >= Duration::from_secs(5),
        "member 0's partitions moved {taken_after:?} after its last poll, before max.poll.interval.ms (6 s)"
    );
    wait_for_members(
        &broker,
        "member 1 reads member 0's partitions",
        Duration::from_secs(10),
        &[&a, &b],
        || {
            let j = journal_snapshot(&journal);
            a_partitions.iter().all(|p| {
                let assigned = last_assignment_of(&j, 1, *p).unwrap();
                first_consumed_after(&j, *p, assigned, None).is_some()
            })
        },
    );
    let described = describe(&broker, &group);
    assert_eq!(
        described.members.len(),
        1,
        "members after the removal: {:?}",
        described.members
    );

    // Member 0 polls again: it hears it was too slow, and rejoins.
    a.shared.paused.store(false, Ordering::SeqCst);
    wait_for_members(
        &broker,
        "member 0 is told it exceeded max.poll.interval.ms",
        Duration::from_secs(10),
        &[&a, &b],
        || a.shared.max_poll_exceeded.load(Ordering::SeqCst),
    );
    wait_for_members(
        &broker,
        "member 0 is back with three partitions",
        CLIENT_TIMEOUT,
        &[&a, &b],
        || split(&a, &b),
    );
    finish_and_check(
        &broker,
        producer,
        &journal,
        &mut [&mut a, &mut b],
        &[(0, "Maximum application poll interval")],
    );
}

/// With `group.remote.assignor=range` the broker hands each member, in
/// member-id order, a contiguous range: seven partitions over three
/// members are 0-2, 3-4 and 5-6.
#[test]
fn range_assignor_assigns_contiguous_ranges() {
    const PARTITIONS: i32 = 7;
    let broker = KIP848.start_broker();
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("range848");
    let group = format!("{topic}-group");
    create(&broker, &topic, PARTITIONS);
    let producer =
        BackgroundProducer::start(&bootstrap, &topic, PARTITIONS, Duration::from_millis(20));
    let journal = new_journal();
    let mut members: Vec<MemberThread> = (0..3)
        .map(|id| {
            let config = member_config(
                &bootstrap,
                &group,
                &[
                    ("client.id", &client_id(id)),
                    ("group.remote.assignor", "range"),
                ],
            );
            MemberThread::spawn(id, config, &topic, 10, &journal)
        })
        .collect();
    let all = all_partitions(PARTITIONS);
    let expected: Vec<BTreeSet<i32>> = vec![(0..3).collect(), (3..5).collect(), (5..7).collect()];
    {
        let refs: Vec<&MemberThread> = members.iter().collect();
        wait_for_members(
            &broker,
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
    let described = describe(&broker, &group);
    assert_eq!(described.assignor_name.as_str(), "range");
    let assignments = described_assignments(&described, &topic);
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
    finish_and_check(&broker, producer, &journal, &mut [a, b, c], &[]);
}
