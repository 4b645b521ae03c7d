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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use group_common::*;
use kafka_protocol::messages::consumer_group_describe_response::DescribedGroup;
use kafka_protocol::messages::{ConsumerGroupDescribeRequest, GroupId};
use kafka_protocol::protocol::StrBytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;

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

/// A partition by topic name.
type TopicPartition = (String, i32);
/// A record by topic name, partition and offset.
type TopicRecord = (String, i32, i64);

/// A group member reading several topics: what it holds (its librdkafka
/// assignment after each poll) and every record it read, as
/// (topic, partition, offset).
struct TopicsMember {
    owned: Arc<Mutex<BTreeSet<TopicPartition>>>,
    consumed: Arc<Mutex<BTreeSet<TopicRecord>>>,
    errors: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TopicsMember {
    fn spawn(config: ClientConfig, subscription: &str) -> TopicsMember {
        let owned: Arc<Mutex<BTreeSet<TopicPartition>>> = Arc::default();
        let consumed: Arc<Mutex<BTreeSet<TopicRecord>>> = Arc::default();
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let stop: Arc<AtomicBool> = Arc::default();
        let thread = {
            let (owned, consumed, errors, stop) = (
                owned.clone(),
                consumed.clone(),
                errors.clone(),
                stop.clone(),
            );
            let subscription = subscription.to_owned();
            std::thread::spawn(move || {
                let consumer: BaseConsumer = config.create().expect("creating a group consumer");
                consumer.subscribe(&[&subscription]).expect("subscribe");
                while !stop.load(Ordering::SeqCst) {
                    match consumer.poll(Duration::from_millis(100)) {
                        None => {}
                        Some(Err(e)) => errors.lock().unwrap().push(format!("poll: {e}")),
                        Some(Ok(m)) => {
                            let record = (m.topic().to_owned(), m.partition(), m.offset());
                            consumed.lock().unwrap().insert(record);
                        }
                    }
                    if let Ok(tpl) = consumer.assignment() {
                        *owned.lock().unwrap() = tpl
                            .elements()
                            .iter()
                            .map(|e| (e.topic().to_owned(), e.partition()))
                            .collect();
                    }
                }
                // Dropping the consumer closes it: it leaves the group.
            })
        };
        TopicsMember {
            owned,
            consumed,
            errors,
            stop,
            thread: Some(thread),
        }
    }

    fn owned(&self) -> BTreeSet<TopicPartition> {
        self.owned.lock().unwrap().clone()
    }

    /// Closes the consumer (it leaves the group) and returns its errors.
    fn close(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("member thread panicked");
        }
        self.errors.lock().unwrap().clone()
    }
}

impl Drop for TopicsMember {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Waits until the members' assignments are disjoint and cover
/// `partitions`, and they have read `records`.
fn wait_split_and_read(
    broker: &TestBroker,
    members: &[TopicsMember],
    what: &str,
    partitions: &BTreeSet<TopicPartition>,
    records: &BTreeSet<TopicRecord>,
) {
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    loop {
        let owned: Vec<BTreeSet<TopicPartition>> = members.iter().map(|m| m.owned()).collect();
        let total: usize = owned.iter().map(|o| o.len()).sum();
        let union: BTreeSet<TopicPartition> = owned.iter().flatten().cloned().collect();
        let read: BTreeSet<TopicRecord> = members
            .iter()
            .flat_map(|m| m.consumed.lock().unwrap().clone())
            .collect();
        if total == union.len() && &union == partitions && records.is_subset(&read) {
            return;
        }
        if Instant::now() > deadline {
            let errors: Vec<Vec<String>> = members
                .iter()
                .map(|m| m.errors.lock().unwrap().clone())
                .collect();
            panic!(
                "timed out waiting until {what}: members own {owned:?}, errors {errors:?}\n\
                 --- broker log ---\n{}",
                broker.log_tail(40)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Two members subscribe with a regex (librdkafka sends a subscription
/// starting with `^` as `SubscribedTopicRegex`): between them they read
/// every partition of the matching topics and nothing of the others, and a
/// matching topic created after they joined is assigned and read too.
#[test]
fn regex_subscription_follows_matching_topics() {
    const PER_PARTITION: i64 = 5;
    let broker = KIP848.start_broker();
    let bootstrap = broker.bootstrap();
    let prefix = unique_topic("regex848");
    let group = format!("group-{prefix}");
    let early = [(format!("{prefix}-a"), 3), (format!("{prefix}-b"), 2)];
    let late = (format!("{prefix}-late"), 4);
    let other = (format!("other-{prefix}"), 2);
    let rt = runtime();
    let fill = |(topic, partitions): &(String, i32)| {
        create(&broker, topic, *partitions);
        rt.block_on(async {
            let producer = producer(&bootstrap, &[]);
            for p in 0..*partitions {
                for i in 0..PER_PARTITION {
                    send(&producer, topic, p, None, &format!("{p}-{i}")).await;
                }
            }
        });
    };
    // Every (topic, partition) of `topics`, and every record in them.
    let expected = |topics: &[&(String, i32)]| {
        let partitions: BTreeSet<TopicPartition> = topics
            .iter()
            .flat_map(|(t, n)| (0..*n).map(move |p| (t.clone(), p)))
            .collect();
        let records: BTreeSet<TopicRecord> = partitions
            .iter()
            .flat_map(|(t, p)| (0..PER_PARTITION).map(move |o| (t.clone(), *p, o)))
            .collect();
        (partitions, records)
    };
    for topic in early.iter().chain([&other]) {
        fill(topic);
    }

    let subscription = format!("^{prefix}-.*");
    let members: Vec<TopicsMember> = (0..2)
        .map(|id| {
            let config = member_config(&bootstrap, &group, &[("client.id", &client_id(id))]);
            TopicsMember::spawn(config, &subscription)
        })
        .collect();
    let (partitions, records) = expected(&[&early[0], &early[1]]);
    wait_split_and_read(
        &broker,
        &members,
        "the members share and read the matching topics",
        &partitions,
        &records,
    );
    let described = describe(&broker, &group);
    assert_eq!(described.members.len(), 2, "{:?}", described.members);
    for m in &described.members {
        let regex = m.subscribed_topic_regex.as_ref().map(|r| r.to_string());
        assert!(
            regex.as_deref().is_some_and(|r| r.contains(&subscription)),
            "member {} subscribes with {regex:?}",
            m.client_id.as_str()
        );
    }
    let epoch = described.group_epoch;

    // A matching topic created after the join.
    fill(&late);
    let (partitions, records) = expected(&[&early[0], &early[1], &late]);
    wait_split_and_read(
        &broker,
        &members,
        "the members share and read the late topic too",
        &partitions,
        &records,
    );
    let described = describe(&broker, &group);
    assert!(
        described.group_epoch > epoch,
        "the new topic bumped the group epoch"
    );
    assert!(
        !described_assignments(&described, &other.0)
            .iter()
            .any(|(_, ps)| !ps.is_empty()),
        "a topic that does not match was assigned"
    );
    let read_other = members.iter().any(|m| {
        m.consumed
            .lock()
            .unwrap()
            .iter()
            .any(|(t, _, _)| *t == other.0)
    });
    assert!(!read_other, "a member read a topic that does not match");
    for m in members {
        assert_eq!(m.close(), Vec::<String>::new(), "a member's errors");
    }
}
