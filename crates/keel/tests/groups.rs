//! Consumer groups with the classic protocol, through librdkafka consumers
//! against a real broker process: partitions shared and taken over, commits
//! that survive restarts, static membership, cooperative-sticky rebalances,
//! `max.poll.interval.ms`, and the group admin APIs.
//!
//! Most tests run each group member on its own thread (`MemberThread`),
//! polling a `BaseConsumer` whose context records every rebalance callback
//! into a shared journal, next to every record consumed and every commit
//! acknowledged. `check_journal` then replays that journal: a member that
//! is assigned a partition must start reading it exactly at the last
//! committed offset (so duplicates come only from the uncommitted window),
//! and must read it without gaps until it loses it.

mod common;
#[path = "common/groups.rs"]
mod group_common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Buf;
use common::*;
use group_common::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};

/// The classic protocol. Broker: no initial rebalance delay, a small
/// `__consumer_offsets`, and session timeouts down to 1 s. Members: a 6 s
/// session, 500 ms heartbeats (tests may override both).
const CLASSIC: GroupProtocol = GroupProtocol {
    broker: &[
        ("group.initial.rebalance.delay.ms", "0"),
        ("offsets.topic.num.partitions", "4"),
        ("group.min.session.timeout.ms", "1000"),
    ],
    member: &[
        ("session.timeout.ms", "6000"),
        ("heartbeat.interval.ms", "500"),
    ],
};

fn member_config(bootstrap: &str, group: &str, extra: &[(&str, &str)]) -> ClientConfig {
    CLASSIC.member_config(bootstrap, group, extra)
}

// ---------------------------------------------------------------------------
// The ConsumerProtocol assignment that DescribeGroups reports
// ---------------------------------------------------------------------------

/// Decodes a ConsumerProtocolAssignment (any version): topic -> partitions.
fn decode_assignment(bytes: &[u8]) -> BTreeMap<String, BTreeSet<i32>> {
    let mut b = bytes;
    let mut out = BTreeMap::new();
    if b.remaining() < 6 {
        return out;
    }
    let _version = b.get_i16();
    let topics = b.get_i32();
    for _ in 0..topics.max(0) {
        let len = b.get_i16() as usize;
        let name = String::from_utf8(b[..len].to_vec()).expect("topic name is UTF-8");
        b.advance(len);
        let n = b.get_i32();
        let partitions = (0..n.max(0)).map(|_| b.get_i32()).collect();
        out.insert(name, partitions);
    }
    out
}

/// A client for `describe_group`. librdkafka's group listing first waits
/// up to a second for the client's initial metadata, so tests make one
/// early and keep it.
fn lister(bootstrap: &str) -> BaseConsumer {
    consumer(bootstrap, &[])
}

/// ListGroups + DescribeGroups through librdkafka: (state, protocol type,
/// protocol, each member's client id and assigned partitions of `topic`),
/// or None if the broker does not list the group.
#[allow(clippy::type_complexity)]
fn describe_group(
    client: &BaseConsumer,
    group: &str,
    topic: &str,
) -> Option<(String, String, String, Vec<(String, BTreeSet<i32>)>)> {
    let list = client
        .fetch_group_list(Some(group), CLIENT_TIMEOUT)
        .unwrap_or_else(|e| panic!("DescribeGroups for {group}: {e}"));
    let info = list.groups().iter().find(|g| g.name() == group)?;
    let members = info
        .members()
        .iter()
        .map(|m| {
            let assignment = m.assignment().map(decode_assignment).unwrap_or_default();
            (
                m.client_id().to_string(),
                assignment.get(topic).cloned().unwrap_or_default(),
            )
        })
        .collect();
    Some((
        info.state().to_string(),
        info.protocol_type().to_string(),
        info.protocol().to_string(),
        members,
    ))
}

// ---------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------

/// Three members share six partitions two each; one leaves and the other
/// two take its partitions over within the session timeout, resuming at its
/// last commit, while a producer keeps writing. Every record is consumed,
/// and the only records read twice are those after a member's last commit.
#[test]
fn three_members_share_partitions_and_take_over_when_one_leaves() {
    share_and_take_over(
        &CLASSIC,
        "share",
        |id| format!("share-member-{id}"),
        |s| lister(&s.bootstrap),
        |s, lister, members| {
            // The broker's view agrees: Stable, three members, two
            // partitions each.
            let all = s.all();
            let (state, protocol_type, protocol, described) =
                describe_group(lister, &s.group, &s.topic).expect("the group is described");
            assert_eq!(state, "Stable");
            assert_eq!(protocol_type, "consumer");
            assert!(
                protocol == "range" || protocol == "roundrobin",
                "protocol {protocol}"
            );
            assert_eq!(
                described.len(),
                3,
                "members in DescribeGroups: {described:?}"
            );
            let described_sets: Vec<_> = described.iter().map(|(_, s)| s.clone()).collect();
            assert!(
                described_sets.iter().all(|s| s.len() == 2)
                    && is_partitioned(&described_sets, &all),
                "DescribeGroups assignments: {described:?}"
            );
            for m in members {
                let id = format!("share-member-{}", m.shared.id);
                let mine = described.iter().find(|(c, _)| *c == id);
                assert_eq!(
                    mine.map(|(_, s)| s.clone()),
                    Some(m.owned()),
                    "DescribeGroups and member {id} disagree: {described:?}"
                );
            }
        },
        |s, _, leaving, left_at| {
            let j = journal_snapshot(&s.journal);
            let takeover = leaving
                .iter()
                .map(|p| first_consumed_after(&j, *p, left_at, Some(2)).unwrap() - left_at)
                .max()
                .unwrap();
            assert!(
                takeover < Duration::from_secs(6),
                "takeover took {takeover:?}, longer than session.timeout.ms"
            );
            takeover
        },
    );
}

#[test]
fn committed_offsets_survive_a_clean_restart() {
    commits_survive(&CLASSIC, |b| b.restart());
}

#[test]
fn committed_offsets_survive_kill9() {
    commits_survive(&CLASSIC, |b| b.kill9_and_restart());
}

/// A static member (`group.instance.id`) that restarts inside its session
/// timeout gets its partitions back and nobody else rebalances; one that
/// stays away longer is removed after the session timeout.
#[test]
fn static_member_restart_keeps_assignment_without_rebalance() {
    let s = Scenario::start(&CLASSIC, "static", 6);
    let lister = lister(&s.bootstrap);
    let producer = s.producer(Duration::from_millis(20));
    let config = |instance: &str| {
        member_config(
            &s.bootstrap,
            &s.group,
            &[
                ("group.instance.id", instance),
                ("client.id", instance),
                ("session.timeout.ms", "6000"),
            ],
        )
    };
    let spawn = |id, instance| MemberThread::spawn(id, config(instance), &s.topic, 10, &s.journal);

    // Member 0 first, so it leads; then 1 and 2.
    let mut a = spawn(0, "static-a");
    s.wait_first_owns_all(&a);
    let mut b = spawn(1, "static-b");
    let mut c = spawn(2, "static-c");
    s.wait_split(
        "three static members own two partitions each",
        CLIENT_TIMEOUT,
        &[&a, &b, &c],
        2,
    );
    let c_partitions = c.owned();
    let rebalances_before = (a.rebalances(), b.rebalances());

    // Member 2 closes (a static member sends no LeaveGroup) and comes back
    // with the same instance id.
    c.close();
    let restarted_at = Instant::now();
    let c2 = spawn(3, "static-c");
    s.wait(
        "the restarted member gets partitions",
        CLIENT_TIMEOUT,
        &[&a, &b, &c2],
        || !c2.owned().is_empty(),
    );
    let back_in = restarted_at.elapsed();
    assert_eq!(
        c2.owned(),
        c_partitions,
        "the restarted static member's partitions"
    );
    assert!(
        back_in < Duration::from_secs(6),
        "the restarted static member waited {back_in:?} for its assignment"
    );
    // The others keep reading and see no rebalance for a while (several
    // heartbeat intervals: a rebalance would reach them through one).
    let consumed_before = (a.consumed(), b.consumed(), c2.consumed());
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        (a.rebalances(), b.rebalances()),
        rebalances_before,
        "the other members saw rebalance callbacks:\n{}",
        describe_members(&[&a, &b, &c2])
    );
    assert!(
        a.consumed() > consumed_before.0
            && b.consumed() > consumed_before.1
            && c2.consumed() > consumed_before.2,
        "a member stopped reading:\n{}",
        describe_members(&[&a, &b, &c2])
    );
    let (state, _, _, described) =
        describe_group(&lister, &s.group, &s.topic).expect("the group is described");
    assert_eq!(state, "Stable");
    assert_eq!(
        described.len(),
        3,
        "members after the static restart: {described:?}"
    );
    let c2_described = described
        .iter()
        .find(|(id, _)| id == "static-c")
        .map(|(_, s)| s.clone());
    assert_eq!(
        c2_described,
        Some(c_partitions.clone()),
        "DescribeGroups: {described:?}"
    );

    // Now member 2 goes away for good: it is removed once its session times
    // out (not before: it sent no LeaveGroup), and the others take over.
    let mut c2 = c2;
    c2.close();
    let gone_at = Instant::now();
    s.wait_split(
        "the two others own three partitions each",
        Duration::from_secs(20),
        &[&a, &b],
        3,
    );
    let removed_after = gone_at.elapsed();
    assert!(
        removed_after >= Duration::from_secs(4),
        "the closed static member was removed after only {removed_after:?}, before its 6 s session timeout"
    );
    s.finish_and_check(producer, &mut [&mut a, &mut b, &mut c, &mut c2], &[]);
}

/// With cooperative-sticky, a third member joining takes one partition from
/// each of the two others; they never give up the rest, and keep reading
/// those while the rebalance is under way (stretched here by one member's
/// slow revocation callback). Members commit only in their revocation
/// callbacks, as cooperative applications do, so no record is read twice.
///
/// (A member that commits synchronously *during* the rebalance stalls: its
/// OffsetCommit queues behind its pending JoinGroup on the coordinator
/// connection, as with Kafka, which answers one request per connection at
/// a time. So no periodic commits here.)
#[test]
fn cooperative_sticky_keeps_unaffected_partitions_consuming() {
    let s = Scenario::start(&CLASSIC, "coop", 6);
    let lister = lister(&s.bootstrap);
    let producer = s.producer(Duration::from_millis(10));
    let config = || {
        member_config(
            &s.bootstrap,
            &s.group,
            &[("partition.assignment.strategy", "cooperative-sticky")],
        )
    };
    let spawn = |id| MemberThread::spawn_with(id, config(), &s.topic, 0, true, &s.journal);

    let mut a = spawn(0);
    s.wait_first_owns_all(&a);
    let mut b = spawn(1);
    s.wait_pair_reading(&a, &b, 0);
    let (a_before, b_before) = (a.owned(), b.owned());
    let (_, _, protocol, _) =
        describe_group(&lister, &s.group, &s.topic).expect("the group is described");
    assert_eq!(
        protocol, "cooperative-sticky",
        "the protocol the broker chose"
    );

    // Member 0's next revocation takes 2 s; the second round of the
    // cooperative rebalance waits for it.
    *a.shared.revoke_sleep.lock().unwrap() = Some(Duration::from_secs(2));
    let joined_at = Instant::now();
    let mut c = spawn(2);
    s.wait_split(
        "three members own two partitions each",
        CLIENT_TIMEOUT,
        &[&a, &b, &c],
        2,
    );
    assert!(
        a.owned().is_subset(&a_before),
        "member 0 gained partitions: {:?}",
        a.owned()
    );
    assert!(
        b.owned().is_subset(&b_before),
        "member 1 gained partitions: {:?}",
        b.owned()
    );

    let delivered = s.drain(producer, &[&a, &b, &c]);
    // The closes below revoke everything; only what came before counts.
    let closing_at = Instant::now();
    close_all(&mut [&mut a, &mut b, &mut c], &[]);
    let journal = journal_snapshot(&s.journal);

    // Every callback was cooperative, and no revocation took everything a
    // member held: replay each member's holdings.
    for member in 0..3usize {
        let mut held: BTreeSet<i32> = BTreeSet::new();
        for ev in &journal {
            match ev {
                Ev::Assigned {
                    member: m,
                    partitions,
                    cooperative,
                    ..
                } if *m == member => {
                    assert!(cooperative, "member {member} got an eager assignment");
                    held.extend(partitions);
                }
                Ev::Revoked {
                    member: m,
                    partitions,
                    cooperative,
                    at,
                } if *m == member && *at < closing_at && !partitions.is_empty() => {
                    assert!(cooperative, "member {member} got an eager revocation");
                    assert!(
                        partitions.is_subset(&held) && partitions.len() < held.len(),
                        "member {member} holding {held:?} had {partitions:?} revoked"
                    );
                    for p in partitions {
                        held.remove(p);
                    }
                }
                _ => {}
            }
        }
    }
    let after_join: Vec<(usize, BTreeSet<i32>, Instant)> = journal
        .iter()
        .filter_map(|ev| match ev {
            Ev::Revoked {
                member,
                partitions,
                at,
                ..
            } if *at >= joined_at && *at < closing_at && !partitions.is_empty() => {
                Some((*member, partitions.clone(), *at))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        after_join.len(),
        2,
        "expected one revocation each for members 0 and 1 after member 2 joined: {after_join:?}"
    );
    for (member, partitions, _) in &after_join {
        assert!(
            *member < 2,
            "member {member} had partitions revoked: {after_join:?}"
        );
        assert_eq!(
            partitions.len(),
            1,
            "member {member} had {partitions:?} revoked; only one of its three should go"
        );
    }
    let c_assigned: BTreeSet<i32> = journal
        .iter()
        .filter_map(|ev| match ev {
            Ev::Assigned {
                member: 2,
                partitions,
                at,
                ..
            } if *at < closing_at => Some(partitions.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    let revoked_after_join: BTreeSet<i32> =
        after_join.iter().flat_map(|(_, p, _)| p.clone()).collect();
    assert_eq!(
        c_assigned, revoked_after_join,
        "member 2 got exactly what the others gave up"
    );

    // The rebalance window: from member 0's revocation callback to member
    // 2's assignment. Member 1 kept reading its retained partitions in it.
    let a_revoked_at = after_join
        .iter()
        .find(|(m, _, _)| *m == 0)
        .map(|(_, _, at)| *at)
        .unwrap();
    let c_assigned_at = journal
        .iter()
        .find_map(|ev| match ev {
            Ev::Assigned {
                member: 2,
                partitions,
                at,
                ..
            } if !partitions.is_empty() => Some(*at),
            _ => None,
        })
        .unwrap();
    assert!(
        c_assigned_at >= a_revoked_at + Duration::from_millis(1500),
        "member 2 was assigned {:?} after member 0's revocation started; the second round did not wait for it",
        c_assigned_at - a_revoked_at
    );
    let b_retained: BTreeSet<i32> = b_before.difference(&revoked_after_join).copied().collect();
    let b_reads: Vec<Instant> = journal
        .iter()
        .filter_map(|ev| match ev {
            Ev::Consumed {
                member: 1,
                partition,
                at,
                ..
            } if b_retained.contains(partition) && *at > a_revoked_at && *at < c_assigned_at => {
                Some(*at)
            }
            _ => None,
        })
        .collect();
    let b_reads_in_window = b_reads.len();
    // The producer writes to each partition every ~10 ms; a member that
    // stopped for the rebalance (eager) would show a gap as long as it.
    let mut edges = vec![a_revoked_at];
    edges.extend(&b_reads);
    edges.push(c_assigned_at);
    let longest_gap = edges.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(
        longest_gap < Duration::from_millis(1000),
        "member 1 stopped reading its retained partitions {b_retained:?} for {longest_gap:?} \
         during the {:?} rebalance ({b_reads_in_window} records read in it)",
        c_assigned_at - a_revoked_at
    );
    // No retained partition was re-assigned, and the readers never jumped:
    // check_journal flags any restart that did not come from an assignment.
    let report = check_journal(&journal);
    assert!(
        report.violations.is_empty(),
        "resume-point violations:\n{}",
        report.violations.join("\n")
    );
    for (member, before) in [(0usize, &a_before), (1, &b_before)] {
        let reassigned: Vec<_> = journal
            .iter()
            .filter(|ev| {
                matches!(ev, Ev::Assigned { member: m, partitions, at, .. }
                if *m == member && *at >= joined_at && *at < closing_at
                    && partitions.iter().any(|p| before.contains(p)))
            })
            .collect();
        assert!(
            reassigned.is_empty(),
            "member {member} was re-assigned retained partitions: {reassigned:?}"
        );
    }
    // Partitions moved only after their owner committed what it read, so
    // nothing was read twice (the closes at the end included).
    assert_eq!(
        report.duplicates, 0,
        "records read twice although every revocation committed first"
    );
    assert_all_seen(&delivered, &report);
    eprintln!(
        "rebalance window {:?}; member 1 read {b_reads_in_window} records in it, longest pause {longest_gap:?}",
        c_assigned_at - a_revoked_at
    );
}

/// A member that stops polling for longer than `max.poll.interval.ms` is
/// removed from the group (while its heartbeats go on) and the other
/// member takes its partitions, resuming at its commits; when it polls
/// again it is told so and rejoins.
#[test]
fn member_exceeding_max_poll_interval_loses_its_partitions() {
    max_poll_interval_exceeded(
        &CLASSIC,
        "maxpoll",
        &[
            ("session.timeout.ms", "3000"),
            ("heartbeat.interval.ms", "300"),
            ("max.poll.interval.ms", "6000"),
        ],
        |s| lister(&s.bootstrap),
        |s, lister| {
            let (state, _, _, described) =
                describe_group(lister, &s.group, &s.topic).expect("the group is described");
            assert_eq!(
                described.len(),
                1,
                "members after the removal ({state}): {described:?}"
            );
        },
    );
}

/// ListGroups and DescribeGroups show the group and its state; DeleteGroups
/// refuses a group with members (NON_EMPTY_GROUP), deletes an empty one
/// with its offsets, and says GROUP_ID_NOT_FOUND for one that is not there.
#[test]
fn admin_lists_describes_and_deletes_groups() {
    let Scenario {
        broker,
        bootstrap,
        topic,
        group,
        ..
    } = Scenario::start(&CLASSIC, "admin", 2);
    let lister = lister(&bootstrap);
    let rt = runtime();
    rt.block_on(async {
        let producer = producer(&bootstrap, &[]);
        for i in 0..10 {
            producer
                .send(
                    FutureRecord::<(), _>::to(&topic)
                        .partition(i % 2)
                        .payload(&format!("{i}")),
                    Duration::from_secs(20),
                )
                .await
                .expect("record delivered");
        }
    });
    let journal = new_journal();
    let mut member = MemberThread::spawn(
        0,
        member_config(&bootstrap, &group, &[("client.id", "admin-member")]),
        &topic,
        1,
        &journal,
    );
    wait_for_members(
        &broker,
        "the member reads and commits everything",
        CLIENT_TIMEOUT,
        &[&member],
        || member.consumed() >= 10,
    );

    // Listed, Stable, with its one member and that member's assignment.
    let listed = lister
        .fetch_group_list(None, CLIENT_TIMEOUT)
        .expect("ListGroups + DescribeGroups");
    let names: Vec<&str> = listed.groups().iter().map(|g| g.name()).collect();
    assert!(names.contains(&group.as_str()), "ListGroups: {names:?}");
    let (state, protocol_type, _, members) =
        describe_group(&lister, &group, &topic).expect("the group is described");
    assert_eq!(
        (state.as_str(), protocol_type.as_str()),
        ("Stable", "consumer")
    );
    assert_eq!(
        members,
        vec![("admin-member".to_string(), all_partitions(2))],
        "DescribeGroups members"
    );

    let admin = admin(&bootstrap);
    let delete = |g: &str| {
        let results = rt
            .block_on(admin.delete_groups(&[g], &admin_options()))
            .expect("DeleteGroups request");
        assert_eq!(results.len(), 1);
        results.into_iter().next().unwrap()
    };
    assert_eq!(
        delete(&group),
        Err((group.clone(), RDKafkaErrorCode::NonEmptyGroup)),
        "deleting a group with a member"
    );
    let (state, _, _, _) = describe_group(&lister, &group, &topic).expect("still there");
    assert_eq!(state, "Stable", "a refused delete changes nothing");

    close_all(&mut [&mut member], &[]);
    wait_until("the group is empty", CLIENT_TIMEOUT, || {
        matches!(describe_group(&lister, &group, &topic),
            Some((state, _, _, members)) if state == "Empty" && members.is_empty())
    });
    // Its offsets are still there while it is empty...
    let committed = |bootstrap: &str| {
        let c = consumer(bootstrap, &[("group.id", &group)]);
        let mut query = TopicPartitionList::new();
        query.add_partition(&topic, 0);
        query.add_partition(&topic, 1);
        c.committed_offsets(query, CLIENT_TIMEOUT)
            .expect("OffsetFetch")
            .elements()
            .iter()
            .map(|e| e.offset())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        committed(&bootstrap),
        vec![Offset::Offset(5), Offset::Offset(5)]
    );
    // ...and deleting it takes them along.
    assert_eq!(
        delete(&group),
        Ok(group.clone()),
        "deleting the empty group"
    );
    assert_eq!(
        committed(&bootstrap),
        vec![Offset::Invalid, Offset::Invalid]
    );
    let listed = lister
        .fetch_group_list(None, CLIENT_TIMEOUT)
        .expect("ListGroups + DescribeGroups");
    assert!(
        !listed.groups().iter().any(|g| g.name() == group),
        "the deleted group is still listed"
    );
    if let Some((state, _, _, members)) = describe_group(&lister, &group, &topic) {
        assert!(
            state == "Dead" && members.is_empty(),
            "a deleted group is described as {state} with {members:?}"
        );
    }
    let unknown = format!("{topic}-never-existed");
    assert_eq!(
        delete(&unknown),
        Err((unknown.clone(), RDKafkaErrorCode::GroupIdNotFound)),
        "deleting a group that never existed"
    );
}

/// librdkafka compresses with lz4 only for brokers it believes support it,
/// which it infers from FindCoordinator being offered. Now that it is, an
/// lz4 producer's batches arrive, and are stored, as lz4.
#[test]
fn librdkafka_lz4_batches_are_stored_as_lz4() {
    let broker = CLASSIC.start_broker();
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("lz4");
    create(&broker, &topic, 1);
    let expected: Vec<String> = (0..300)
        .map(|i| format!("value {i}: {}", "compressible ".repeat(20)))
        .collect();
    runtime().block_on(async {
        let producer = producer(
            &bootstrap,
            &[
                ("compression.type", "lz4"),
                ("linger.ms", "50"),
                ("batch.num.messages", "100"),
            ],
        );
        let deliveries: Vec<_> = expected
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let key = format!("key-{i}");
                producer
                    .send_result(FutureRecord::to(&topic).partition(0).key(&key).payload(v))
                    .map_err(|(e, _)| e)
                    .expect("queueing a record")
            })
            .collect();
        for d in deliveries {
            d.await.expect("delivery future").expect("record delivered");
        }
    });
    let records = consume_all(&bootstrap, &topic, 0);
    let values: Vec<&[u8]> = records
        .iter()
        .map(|m| m.payload().unwrap_or_default())
        .collect();
    let want: Vec<&[u8]> = expected.iter().map(|v| v.as_bytes()).collect();
    assert_eq!(values, want);
    let segment = broker
        .data_dir()
        .join(format!("{topic}-0"))
        .join("00000000000000000000.log");
    let (batches, _) = read_segment(&segment);
    assert_eq!(batches.iter().map(|b| b.record_count).sum::<i32>(), 300);
    let codecs: Vec<i16> = batches.iter().map(|b| b.codec()).collect();
    assert!(
        codecs.iter().all(|c| *c == 3),
        "librdkafka's lz4 batches are stored with codecs {codecs:?} (3 is lz4)"
    );
    assert!(
        batches.iter().any(|b| b.record_count > 1),
        "linger.ms batched records"
    );
}
