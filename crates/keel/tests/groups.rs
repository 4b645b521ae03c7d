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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Buf;
use common::*;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, RebalanceProtocol,
};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::producer::{
    BaseRecord, DeliveryResult, FutureRecord, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::{Offset, TopicPartitionList};

/// Broker settings for every test here: no initial rebalance delay, a small
/// `__consumer_offsets`, and session timeouts down to 1 s.
const GROUP_BROKER: &[(&str, &str)] = &[
    ("group.initial.rebalance.delay.ms", "0"),
    ("offsets.topic.num.partitions", "4"),
    ("group.min.session.timeout.ms", "1000"),
];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn start_broker() -> TestBroker {
    TestBroker::with(GROUP_BROKER)
}

fn create(broker: &TestBroker, topic: &str, partitions: i32) {
    runtime().block_on(create_topic(&broker.bootstrap(), topic, partitions, &[]));
}

/// Settings for a group member: manual commits only, earliest reset, quick
/// heartbeats and short fetch waits.
fn member_config(bootstrap: &str, group: &str, extra: &[(&str, &str)]) -> ClientConfig {
    let mut config = client_config(bootstrap);
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set("fetch.wait.max.ms", "100")
        .set("topic.metadata.refresh.interval.ms", "2000");
    for (k, v) in extra {
        config.set(*k, *v);
    }
    // KEEL_TEST_DEBUG=cgrp,fetch (librdkafka debug contexts) prints the
    // members' client logs, with wall-clock times to match the broker log.
    if let Ok(contexts) = std::env::var("KEEL_TEST_DEBUG") {
        if !contexts.is_empty() {
            config
                .set("debug", contexts)
                .set_log_level(rdkafka::config::RDKafkaLogLevel::Debug);
        }
    }
    config
}

fn all_partitions(n: i32) -> BTreeSet<i32> {
    (0..n).collect()
}

// ---------------------------------------------------------------------------
// The journal and the group members that write it
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Ev {
    /// The member's rebalance callback was given these partitions to add.
    Assigned {
        member: usize,
        partitions: BTreeSet<i32>,
        cooperative: bool,
        at: Instant,
    },
    /// The member's rebalance callback was told to give these up. `at` is
    /// when the callback started (before any `revoke_sleep`).
    Revoked {
        member: usize,
        partitions: BTreeSet<i32>,
        cooperative: bool,
        at: Instant,
    },
    /// `poll` returned this record to the member.
    Consumed {
        member: usize,
        partition: i32,
        offset: i64,
        at: Instant,
    },
    /// A synchronous commit of `next` (the offset to resume at) succeeded.
    Committed {
        member: usize,
        partition: i32,
        next: i64,
    },
}

type Journal = Arc<Mutex<Vec<Ev>>>;

fn new_journal() -> Journal {
    Arc::new(Mutex::new(Vec::new()))
}

/// What a member thread shares with the test.
struct MemberShared {
    id: usize,
    topic: String,
    journal: Journal,
    /// Whether a revocation first commits what was processed of the
    /// partitions being revoked (the usual cooperative-sticky practice).
    commit_on_revoke: bool,
    /// Partitions the member holds, as its rebalance callbacks said.
    owned: Mutex<BTreeSet<i32>>,
    /// Per owned partition, the offset after the last record processed and
    /// not yet committed.
    pending: Mutex<BTreeMap<i32, i64>>,
    /// If set, the next revocation callback sleeps this long first (a slow
    /// application commit, say), stretching the rebalance.
    revoke_sleep: Mutex<Option<Duration>>,
    /// While set, the thread does not call `poll` at all.
    paused: AtomicBool,
    stop: AtomicBool,
    consumed: AtomicUsize,
    rebalances: AtomicUsize,
    last_poll: Mutex<Instant>,
    /// Errors `poll` and `commit` returned, as text.
    errors: Mutex<Vec<String>>,
    max_poll_exceeded: AtomicBool,
}

impl MemberShared {
    fn owned(&self) -> BTreeSet<i32> {
        self.owned.lock().unwrap().clone()
    }
}

struct MemberContext(Arc<MemberShared>);

impl ClientContext for MemberContext {
    fn log(&self, _level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        if std::env::var_os("KEEL_TEST_DEBUG").is_some() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            eprintln!(
                "[{}.{:03} member {}] {fac}: {message}",
                now.as_secs() % 1000,
                now.subsec_millis(),
                self.0.id
            );
        }
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> BTreeSet<i32> {
    tpl.elements().iter().map(|e| e.partition()).collect()
}

impl ConsumerContext for MemberContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let s = &self.0;
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        s.rebalances.fetch_add(1, Ordering::SeqCst);
        match rebalance {
            Rebalance::Assign(tpl) => {
                let partitions = partitions_of(tpl);
                {
                    let mut owned = s.owned.lock().unwrap();
                    if cooperative {
                        owned.extend(partitions.iter().copied());
                    } else {
                        *owned = partitions.clone();
                    }
                }
                s.journal.lock().unwrap().push(Ev::Assigned {
                    member: s.id,
                    partitions,
                    cooperative,
                    at: Instant::now(),
                });
            }
            Rebalance::Revoke(tpl) => {
                let partitions = partitions_of(tpl);
                s.journal.lock().unwrap().push(Ev::Revoked {
                    member: s.id,
                    partitions: partitions.clone(),
                    cooperative,
                    at: Instant::now(),
                });
                let sleep = s.revoke_sleep.lock().unwrap().take();
                if let Some(sleep) = sleep {
                    std::thread::sleep(sleep);
                }
                if s.commit_on_revoke {
                    commit_pending(consumer, s, Some(&partitions));
                }
                {
                    let mut owned = s.owned.lock().unwrap();
                    if cooperative {
                        for p in &partitions {
                            owned.remove(p);
                        }
                    } else {
                        owned.clear();
                    }
                }
                let mut pending = s.pending.lock().unwrap();
                for p in &partitions {
                    pending.remove(p);
                }
            }
            Rebalance::Error(e) => {
                s.errors
                    .lock()
                    .unwrap()
                    .push(format!("rebalance error: {e}"));
            }
        }
    }
}

/// One group member polling on its own thread. It commits synchronously
/// after every `commit_every` records it processes (0: never), and unless
/// `spawn_with` says otherwise never on revocation or close, so whatever it
/// read after its last commit is read again by the next owner: the
/// uncommitted window.
struct MemberThread {
    shared: Arc<MemberShared>,
    thread: Option<JoinHandle<()>>,
}

impl MemberThread {
    fn spawn(
        id: usize,
        config: ClientConfig,
        topic: &str,
        commit_every: usize,
        journal: &Journal,
    ) -> MemberThread {
        MemberThread::spawn_with(id, config, topic, commit_every, false, journal)
    }

    fn spawn_with(
        id: usize,
        config: ClientConfig,
        topic: &str,
        commit_every: usize,
        commit_on_revoke: bool,
        journal: &Journal,
    ) -> MemberThread {
        let shared = Arc::new(MemberShared {
            id,
            topic: topic.to_string(),
            journal: journal.clone(),
            commit_on_revoke,
            owned: Mutex::new(BTreeSet::new()),
            pending: Mutex::new(BTreeMap::new()),
            revoke_sleep: Mutex::new(None),
            paused: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            consumed: AtomicUsize::new(0),
            rebalances: AtomicUsize::new(0),
            last_poll: Mutex::new(Instant::now()),
            errors: Mutex::new(Vec::new()),
            max_poll_exceeded: AtomicBool::new(false),
        });
        let s = shared.clone();
        let topic = topic.to_string();
        let thread = std::thread::Builder::new()
            .name(format!("member-{id}"))
            .spawn(move || member_loop(s, config, topic, commit_every))
            .expect("spawning a member thread");
        MemberThread {
            shared,
            thread: Some(thread),
        }
    }

    fn owned(&self) -> BTreeSet<i32> {
        self.shared.owned()
    }

    fn consumed(&self) -> usize {
        self.shared.consumed.load(Ordering::SeqCst)
    }

    fn rebalances(&self) -> usize {
        self.shared.rebalances.load(Ordering::SeqCst)
    }

    fn errors(&self) -> Vec<String> {
        self.shared.errors.lock().unwrap().clone()
    }

    /// Closes the consumer (LeaveGroup for a dynamic member) and joins the
    /// thread; returns when the close has finished.
    fn close(&mut self) {
        self.shared.paused.store(false, Ordering::SeqCst);
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("member thread panicked");
        }
    }
}

impl Drop for MemberThread {
    fn drop(&mut self) {
        self.shared.paused.store(false, Ordering::SeqCst);
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            // A close can block on a dead broker; never hang a failing test
            // on it.
            let deadline = Instant::now() + Duration::from_secs(15);
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

fn member_loop(s: Arc<MemberShared>, config: ClientConfig, topic: String, commit_every: usize) {
    let consumer: BaseConsumer<MemberContext> = config
        .create_with_context(MemberContext(s.clone()))
        .expect("creating a group consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let mut since_commit = 0usize;
    while !s.stop.load(Ordering::SeqCst) {
        if s.paused.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let polled = consumer.poll(Duration::from_millis(100));
        *s.last_poll.lock().unwrap() = Instant::now();
        match polled {
            None => {}
            Some(Err(e)) => {
                if e.rdkafka_error_code() == Some(RDKafkaErrorCode::PollExceeded) {
                    s.max_poll_exceeded.store(true, Ordering::SeqCst);
                }
                s.errors.lock().unwrap().push(format!("poll: {e}"));
            }
            Some(Ok(m)) => {
                let (partition, offset) = (m.partition(), m.offset());
                s.journal.lock().unwrap().push(Ev::Consumed {
                    member: s.id,
                    partition,
                    offset,
                    at: Instant::now(),
                });
                s.pending.lock().unwrap().insert(partition, offset + 1);
                s.consumed.fetch_add(1, Ordering::SeqCst);
                since_commit += 1;
                if commit_every > 0 && since_commit >= commit_every {
                    since_commit = 0;
                    commit_pending(&consumer, &s, None);
                }
            }
        }
    }
    // Dropping the consumer closes it: revocation callback, LeaveGroup.
    drop(consumer);
}

/// Commits the processed positions of the partitions the member still owns
/// (of those in `only`, if given). Rebalance callbacks run only inside
/// `poll`, on this same thread, so the ownership seen here holds for the
/// whole synchronous commit.
fn commit_pending(
    consumer: &BaseConsumer<MemberContext>,
    s: &MemberShared,
    only: Option<&BTreeSet<i32>>,
) {
    let owned = s.owned();
    let pending: Vec<(i32, i64)> = s
        .pending
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| owned.contains(p) && only.is_none_or(|o| o.contains(p)))
        .map(|(p, o)| (*p, *o))
        .collect();
    if pending.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for (p, o) in &pending {
        tpl.add_partition_offset(&s.topic, *p, Offset::Offset(*o))
            .unwrap();
    }
    match consumer.commit(&tpl, CommitMode::Sync) {
        Ok(()) => {
            let mut journal = s.journal.lock().unwrap();
            let mut left = s.pending.lock().unwrap();
            for (p, o) in pending {
                journal.push(Ev::Committed {
                    member: s.id,
                    partition: p,
                    next: o,
                });
                if left.get(&p) == Some(&o) {
                    left.remove(&p);
                }
            }
        }
        Err(e) => s.errors.lock().unwrap().push(format!("commit: {e}")),
    }
}

/// What `check_journal` found.
#[derive(Debug, Default)]
struct JournalReport {
    /// Records consumed more than once, counted once per extra read.
    duplicates: usize,
    /// Per (partition, offset), how often it was consumed.
    seen: HashMap<(i32, i64), usize>,
    /// Revocations that took partitions from a member.
    revocations: usize,
    /// Summed over revocations: records the member had read from the
    /// revoked partitions since it last committed them. The next owner
    /// starts at the commit, so this bounds the duplicates.
    uncommitted_at_revocation: usize,
    /// The largest single such window.
    largest_window: usize,
    violations: Vec<String>,
}

/// Replays the journal: every time a member is handed a partition it must
/// start at the latest committed offset (0 if none: `earliest` on a topic
/// that starts at 0), then read on without a gap or a jump back until it
/// is told to give the partition up; committed offsets never go back.
fn check_journal(journal: &[Ev]) -> JournalReport {
    let mut report = JournalReport::default();
    let mut committed: HashMap<i32, i64> = HashMap::new();
    // (member, partition) -> last offset read in the current ownership,
    // None right after the assignment.
    let mut reading: HashMap<(usize, i32), Option<i64>> = HashMap::new();
    // (member, partition) -> records read since the member last committed it.
    let mut uncommitted: HashMap<(usize, i32), usize> = HashMap::new();
    for ev in journal {
        match ev {
            Ev::Committed {
                member,
                partition,
                next,
            } => {
                uncommitted.remove(&(*member, *partition));
                let before = committed.insert(*partition, *next);
                if let Some(before) = before {
                    if *next < before {
                        report.violations.push(format!(
                            "member {member} committed {next} for partition {partition} after {before} was committed"
                        ));
                    }
                }
            }
            Ev::Assigned {
                member, partitions, ..
            } => {
                for p in partitions {
                    if reading.insert((*member, *p), None).is_some() {
                        report.violations.push(format!(
                            "member {member} was assigned partition {p} it already held"
                        ));
                    }
                }
            }
            Ev::Revoked {
                member, partitions, ..
            } => {
                if !partitions.is_empty() {
                    report.revocations += 1;
                }
                let mut window = 0;
                for p in partitions {
                    reading.remove(&(*member, *p));
                    window += uncommitted.remove(&(*member, *p)).unwrap_or(0);
                }
                report.uncommitted_at_revocation += window;
                report.largest_window = report.largest_window.max(window);
            }
            Ev::Consumed {
                member,
                partition,
                offset,
                ..
            } => {
                *report.seen.entry((*partition, *offset)).or_default() += 1;
                *uncommitted.entry((*member, *partition)).or_default() += 1;
                match reading.get(&(*member, *partition)) {
                    None => report.violations.push(format!(
                        "member {member} consumed {partition}@{offset} without holding the partition"
                    )),
                    Some(None) => {
                        let expected = committed.get(partition).copied().unwrap_or(0);
                        if *offset != expected {
                            report.violations.push(format!(
                                "member {member} started partition {partition} at {offset}, but the committed offset was {expected}"
                            ));
                        }
                    }
                    Some(Some(last)) => {
                        if *offset != last + 1 {
                            report.violations.push(format!(
                                "member {member} read partition {partition} at {offset} right after {last}"
                            ));
                        }
                    }
                }
                reading.insert((*member, *partition), Some(*offset));
            }
        }
    }
    report.duplicates = report.seen.values().map(|n| n - 1).sum();
    report
}

fn journal_snapshot(journal: &Journal) -> Vec<Ev> {
    journal.lock().unwrap().clone()
}

/// When a member was last handed `partition`.
fn last_assignment_of(journal: &[Ev], member: usize, partition: i32) -> Option<Instant> {
    journal.iter().rev().find_map(|ev| match ev {
        Ev::Assigned {
            member: m,
            partitions,
            at,
            ..
        } if *m == member && partitions.contains(&partition) => Some(*at),
        _ => None,
    })
}

/// The first time after `after` that a member other than `except` consumed
/// from `partition`.
fn first_consumed_after(
    journal: &[Ev],
    partition: i32,
    after: Instant,
    except: Option<usize>,
) -> Option<Instant> {
    journal.iter().find_map(|ev| match ev {
        Ev::Consumed {
            member,
            partition: p,
            at,
            ..
        } if *p == partition && *at > after && Some(*member) != except => Some(*at),
        _ => None,
    })
}

/// Whether the owned sets are pairwise disjoint and together `expected`.
fn is_partitioned(sets: &[BTreeSet<i32>], expected: &BTreeSet<i32>) -> bool {
    let total: usize = sets.iter().map(|s| s.len()).sum();
    let union: BTreeSet<i32> = sets.iter().flatten().copied().collect();
    total == union.len() && &union == expected
}

fn describe_members(members: &[&MemberThread]) -> String {
    members
        .iter()
        .map(|m| {
            format!(
                "member {}: owns {:?}, consumed {}, rebalance callbacks {}, errors {:?}",
                m.shared.id,
                m.owned(),
                m.consumed(),
                m.rebalances(),
                m.errors()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Closes the members in order, then checks none of them saw an error from
/// `poll`, `commit` or a rebalance (`allowed` lists expected ones by
/// member id and text).
fn close_all(members: &mut [&mut MemberThread], allowed: &[(usize, &str)]) {
    for m in members.iter_mut() {
        m.close();
    }
    for m in members.iter() {
        let unexpected: Vec<String> = m
            .errors()
            .into_iter()
            .filter(|e| {
                !allowed
                    .iter()
                    .any(|(id, text)| *id == m.shared.id && e.contains(text))
            })
            .collect();
        assert!(
            unexpected.is_empty(),
            "member {} saw errors: {unexpected:?}",
            m.shared.id
        );
    }
}

/// Like `wait_until`, but the failure message shows the members' state and
/// the broker's log tail.
fn wait_for_members(
    broker: &TestBroker,
    what: &str,
    timeout: Duration,
    members: &[&MemberThread],
    mut condition: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        if Instant::now() > deadline {
            panic!(
                "timed out after {timeout:?} waiting until {what}\n{}\n--- broker log ---\n{}",
                describe_members(members),
                broker.log_tail(40)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// A producer that keeps writing
// ---------------------------------------------------------------------------

struct DeliveryLog {
    delivered: Mutex<Vec<(i32, i64)>>,
    failed: Mutex<Vec<String>>,
}

struct DeliveryContext(Arc<DeliveryLog>);

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(m) => self
                .0
                .delivered
                .lock()
                .unwrap()
                .push((m.partition(), m.offset())),
            Err((e, _)) => self.0.failed.lock().unwrap().push(e.to_string()),
        }
    }
}

/// Writes one record to every partition of `topic` every `every`, from its
/// own thread, until `finish`.
struct BackgroundProducer {
    log: Arc<DeliveryLog>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl BackgroundProducer {
    fn start(bootstrap: &str, topic: &str, partitions: i32, every: Duration) -> BackgroundProducer {
        let log = Arc::new(DeliveryLog {
            delivered: Mutex::new(Vec::new()),
            failed: Mutex::new(Vec::new()),
        });
        let mut config = client_config(bootstrap);
        config
            .set("message.timeout.ms", "20000")
            .set("linger.ms", "5")
            .set("acks", "all");
        let producer: ThreadedProducer<DeliveryContext> = config
            .create_with_context(DeliveryContext(log.clone()))
            .expect("creating a producer");
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let topic = topic.to_string();
        let thread = std::thread::spawn(move || {
            let mut seq = 0u64;
            while !thread_stop.load(Ordering::SeqCst) {
                for p in 0..partitions {
                    let value = format!("record {seq}");
                    seq += 1;
                    let mut record = BaseRecord::<(), String>::to(&topic)
                        .partition(p)
                        .payload(&value);
                    loop {
                        match producer.send(record) {
                            Ok(()) => break,
                            Err((e, r)) => {
                                assert_eq!(
                                    e.rdkafka_error_code(),
                                    Some(RDKafkaErrorCode::QueueFull),
                                    "queueing a record: {e}"
                                );
                                record = r;
                                std::thread::sleep(Duration::from_millis(10));
                            }
                        }
                    }
                }
                std::thread::sleep(every);
            }
            producer.flush(Duration::from_secs(20)).expect("flushing");
        });
        BackgroundProducer {
            log,
            stop,
            thread: Some(thread),
        }
    }

    fn delivered(&self) -> usize {
        self.log.delivered.lock().unwrap().len()
    }

    /// Stops writing, waits for every delivery report, and returns the
    /// delivered (partition, offset) pairs.
    fn finish(mut self) -> Vec<(i32, i64)> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .unwrap()
            .join()
            .expect("producer thread panicked");
        let failed = self.log.failed.lock().unwrap().clone();
        assert!(failed.is_empty(), "deliveries failed: {failed:?}");
        self.log.delivered.lock().unwrap().clone()
    }
}

impl Drop for BackgroundProducer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The highest offset delivered per partition, plus one.
fn ends_of(delivered: &[(i32, i64)]) -> BTreeMap<i32, i64> {
    let mut ends = BTreeMap::new();
    for (p, o) in delivered {
        let e = ends.entry(*p).or_insert(0);
        *e = (*e).max(o + 1);
    }
    ends
}

/// Whether every delivered record has been consumed by someone.
fn all_consumed(journal: &Journal, ends: &BTreeMap<i32, i64>) -> bool {
    let mut read_to: BTreeMap<i32, i64> = BTreeMap::new();
    for ev in journal.lock().unwrap().iter() {
        if let Ev::Consumed {
            partition, offset, ..
        } = ev
        {
            let e = read_to.entry(*partition).or_insert(0);
            *e = (*e).max(offset + 1);
        }
    }
    ends.iter()
        .all(|(p, end)| read_to.get(p).copied().unwrap_or(0) >= *end)
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
    const PARTITIONS: i32 = 6;
    const COMMIT_EVERY: usize = 20;
    let broker = start_broker();
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("share");
    let group = format!("{topic}-group");
    create(&broker, &topic, PARTITIONS);
    let lister = lister(&bootstrap);

    let producer =
        BackgroundProducer::start(&bootstrap, &topic, PARTITIONS, Duration::from_millis(15));
    let journal = new_journal();
    let mut members: Vec<MemberThread> = (0..3)
        .map(|id| {
            let config = member_config(
                &bootstrap,
                &group,
                &[("client.id", &format!("share-member-{id}"))],
            );
            MemberThread::spawn(id, config, &topic, COMMIT_EVERY, &journal)
        })
        .collect();

    // Two partitions each, no overlap, all covered, all of them reading.
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
    // The broker's view agrees: Stable, three members, two partitions each.
    let (state, protocol_type, protocol, described) =
        describe_group(&lister, &group, &topic).expect("the group is described");
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
        described_sets.iter().all(|s| s.len() == 2) && is_partitioned(&described_sets, &all),
        "DescribeGroups assignments: {described:?}"
    );
    for m in &members {
        let id = format!("share-member-{}", m.shared.id);
        let mine = described.iter().find(|(c, _)| *c == id);
        assert_eq!(
            mine.map(|(_, s)| s.clone()),
            Some(m.owned()),
            "DescribeGroups and member {id} disagree: {described:?}"
        );
    }

    // Member 2 leaves.
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
    let j = journal_snapshot(&journal);
    let takeover = leaving
        .iter()
        .map(|p| first_consumed_after(&j, *p, left_at, Some(2)).unwrap() - left_at)
        .max()
        .unwrap();
    assert!(
        takeover < Duration::from_secs(6),
        "takeover took {takeover:?}, longer than session.timeout.ms"
    );

    // Keep writing a little longer, then stop and let the readers catch up.
    let target = producer.delivered() + 600;
    wait_until("the producer writes on", CLIENT_TIMEOUT, || {
        producer.delivered() >= target
    });
    let delivered = producer.finish();
    let ends = ends_of(&delivered);
    wait_for_members(
        &broker,
        "every record is consumed",
        CLIENT_TIMEOUT,
        &stayers,
        || all_consumed(&journal, &ends),
    );
    close_all(&mut members.iter_mut().collect::<Vec<_>>(), &[]);

    let journal = journal_snapshot(&journal);
    let report = check_journal(&journal);
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
    // Only what a member read after its last commit is read again.
    assert!(
        report.duplicates <= report.uncommitted_at_revocation,
        "{} duplicates, but members held only {} uncommitted records when they lost partitions",
        report.duplicates,
        report.uncommitted_at_revocation
    );
    eprintln!(
        "{} records, {} duplicates; {} uncommitted over {} revocations (largest window {}); takeover in {takeover:?}",
        delivered.len(),
        report.duplicates,
        report.uncommitted_at_revocation,
        report.revocations,
        report.largest_window
    );
}

/// Commits from a group member, then lower ones with metadata from outside
/// the generation; after a restart OffsetFetch returns the latest, and a new
/// member resumes exactly there, with `auto.offset.reset=latest` so a lost
/// commit would show as a jump to the end. Its own commits, written after
/// the coordinator replayed `__consumer_offsets`, survive a second restart.
fn commits_survive(restart: impl Fn(&mut TestBroker)) {
    const PARTITIONS: i32 = 4;
    const PER_PARTITION: i64 = 40;
    let mut broker = start_broker();
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("commits");
    let group = format!("{topic}-group");
    create(&broker, &topic, PARTITIONS);
    let rt = runtime();
    rt.block_on(async {
        let producer = producer(&bootstrap, &[]);
        for p in 0..PARTITIONS {
            for i in 0..PER_PARTITION {
                producer
                    .send(
                        FutureRecord::<(), _>::to(&topic)
                            .partition(p)
                            .payload(&format!("{p}-{i}")),
                        Duration::from_secs(20),
                    )
                    .await
                    .expect("record delivered");
            }
        }
    });
    let committed_at = |p: i32| 5 + 7 * i64::from(p);

    let fetch_committed = |bootstrap: &str| {
        let c = consumer(bootstrap, &[("group.id", &group)]);
        let mut query = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            query.add_partition(&topic, p);
        }
        let got = c
            .committed_offsets(query, CLIENT_TIMEOUT)
            .expect("OffsetFetch");
        got.elements()
            .iter()
            .map(|e| (e.partition(), e.offset(), e.metadata().to_string()))
            .collect::<Vec<_>>()
    };
    let at_end: Vec<(i32, Offset, String)> = (0..PARTITIONS)
        .map(|p| (p, Offset::Offset(PER_PARTITION), String::new()))
        .collect();

    // A member reads everything, committing after every record.
    {
        let journal = new_journal();
        let mut member = MemberThread::spawn(
            0,
            member_config(&bootstrap, &group, &[]),
            &topic,
            1,
            &journal,
        );
        wait_for_members(
            &broker,
            "the member reads everything",
            CLIENT_TIMEOUT,
            &[&member],
            || member.consumed() >= (PER_PARTITION * i64::from(PARTITIONS)) as usize,
        );
        member.close();
        assert_eq!(member.errors(), Vec::<String>::new(), "the member's errors");
    }
    assert_eq!(fetch_committed(&bootstrap), at_end, "the member's commits");
    // Lower commits, with metadata, from a consumer outside the group's
    // generation (the group is empty now): Kafka accepts these "simple"
    // commits.
    let c = consumer(&bootstrap, &[("group.id", &group)]);
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(&topic, p, Offset::Offset(committed_at(p)))
            .unwrap();
    }
    for mut e in tpl.elements() {
        e.set_metadata(format!("meta-{}", e.partition()));
    }
    c.commit(&tpl, CommitMode::Sync).expect("OffsetCommit");
    drop(c);
    let expected: Vec<(i32, Offset, String)> = (0..PARTITIONS)
        .map(|p| (p, Offset::Offset(committed_at(p)), format!("meta-{p}")))
        .collect();
    assert_eq!(
        fetch_committed(&bootstrap),
        expected,
        "OffsetFetch before the restart"
    );

    restart(&mut broker);
    let bootstrap = broker.bootstrap();
    assert_eq!(
        fetch_committed(&bootstrap),
        expected,
        "OffsetFetch after the restart"
    );

    // A new member of the group resumes exactly at the committed offsets,
    // committing as it goes.
    let journal = new_journal();
    let mut member = MemberThread::spawn(
        1,
        member_config(&bootstrap, &group, &[("auto.offset.reset", "latest")]),
        &topic,
        1,
        &journal,
    );
    let expected_reads: usize = (0..PARTITIONS)
        .map(|p| (PER_PARTITION - committed_at(p)) as usize)
        .sum();
    wait_for_members(
        &broker,
        "the new member reads the rest",
        CLIENT_TIMEOUT,
        &[&member],
        || member.consumed() >= expected_reads,
    );
    member.close();
    let journal = journal_snapshot(&journal);
    for p in 0..PARTITIONS {
        let offsets: Vec<i64> = journal
            .iter()
            .filter_map(|ev| match ev {
                Ev::Consumed {
                    partition, offset, ..
                } if *partition == p => Some(*offset),
                _ => None,
            })
            .collect();
        let want: Vec<i64> = (committed_at(p)..PER_PARTITION).collect();
        assert_eq!(offsets, want, "partition {p} after the restart");
    }
    assert_eq!(
        member.errors(),
        Vec::<String>::new(),
        "the new member's errors"
    );

    // What was committed after the replay survives the next restart.
    assert_eq!(
        fetch_committed(&bootstrap),
        at_end,
        "commits after the restart"
    );
    restart(&mut broker);
    assert_eq!(
        fetch_committed(&broker.bootstrap()),
        at_end,
        "commits after the second restart"
    );
}

#[test]
fn committed_offsets_survive_a_clean_restart() {
    commits_survive(|b| b.restart());
}

#[test]
fn committed_offsets_survive_kill9() {
    commits_survive(|b| b.kill9_and_restart());
}

/// A static member (`group.instance.id`) that restarts inside its session
/// timeout gets its partitions back and nobody else rebalances; one that
/// stays away longer is removed after the session timeout.
#[test]
fn static_member_restart_keeps_assignment_without_rebalance() {
    const PARTITIONS: i32 = 6;
    let broker = start_broker();
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("static");
    let group = format!("{topic}-group");
    create(&broker, &topic, PARTITIONS);
    let lister = lister(&bootstrap);
    let producer =
        BackgroundProducer::start(&bootstrap, &topic, PARTITIONS, Duration::from_millis(20));
    let journal = new_journal();
    let config = |instance: &str| {
        member_config(
            &bootstrap,
            &group,
            &[
                ("group.instance.id", instance),
                ("client.id", instance),
                ("session.timeout.ms", "6000"),
            ],
        )
    };
    let all = all_partitions(PARTITIONS);

    // Member 0 first, so it leads; then 1 and 2.
    let mut a = MemberThread::spawn(0, config("static-a"), &topic, 10, &journal);
    wait_for_members(
        &broker,
        "the first member owns everything",
        CLIENT_TIMEOUT,
        &[&a],
        || a.owned() == all,
    );
    let mut b = MemberThread::spawn(1, config("static-b"), &topic, 10, &journal);
    let mut c = MemberThread::spawn(2, config("static-c"), &topic, 10, &journal);
    wait_for_members(
        &broker,
        "three static members own two partitions each",
        CLIENT_TIMEOUT,
        &[&a, &b, &c],
        || {
            let sets = [a.owned(), b.owned(), c.owned()];
            sets.iter().all(|s| s.len() == 2) && is_partitioned(&sets, &all)
        },
    );
    let c_partitions = c.owned();
    let rebalances_before = (a.rebalances(), b.rebalances());

    // Member 2 closes (a static member sends no LeaveGroup) and comes back
    // with the same instance id.
    c.close();
    let restarted_at = Instant::now();
    let c2 = MemberThread::spawn(3, config("static-c"), &topic, 10, &journal);
    wait_for_members(
        &broker,
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
        describe_group(&lister, &group, &topic).expect("the group is described");
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
    wait_for_members(
        &broker,
        "the two others own three partitions each",
        Duration::from_secs(20),
        &[&a, &b],
        || {
            let sets = [a.owned(), b.owned()];
            sets.iter().all(|s| s.len() == 3) && is_partitioned(&sets, &all)
        },
    );
    let removed_after = gone_at.elapsed();
    assert!(
        removed_after >= Duration::from_secs(4),
        "the closed static member was removed after only {removed_after:?}, before its 6 s session timeout"
    );
    let delivered = producer.finish();
    let ends = ends_of(&delivered);
    wait_for_members(
        &broker,
        "every record is consumed",
        CLIENT_TIMEOUT,
        &[&a, &b],
        || all_consumed(&journal, &ends),
    );
    close_all(&mut [&mut a, &mut b, &mut c, &mut c2], &[]);
    let report = check_journal(&journal_snapshot(&journal));
    assert!(
        report.violations.is_empty(),
        "resume-point violations:\n{}",
        report.violations.join("\n")
    );
    assert!(
        report.duplicates <= report.uncommitted_at_revocation,
        "{} duplicates, but members held only {} uncommitted records when they lost partitions",
        report.duplicates,
        report.uncommitted_at_revocation
    );
    let missing: Vec<_> = delivered
        .iter()
        .filter(|po| !report.seen.contains_key(po))
        .collect();
    assert!(missing.is_empty(), "records never consumed: {missing:?}");
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
    const PARTITIONS: i32 = 6;
    let broker = start_broker();
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("coop");
    let group = format!("{topic}-group");
    create(&broker, &topic, PARTITIONS);
    let lister = lister(&bootstrap);
    let producer =
        BackgroundProducer::start(&bootstrap, &topic, PARTITIONS, Duration::from_millis(10));
    let journal = new_journal();
    let config = || {
        member_config(
            &bootstrap,
            &group,
            &[("partition.assignment.strategy", "cooperative-sticky")],
        )
    };
    let all = all_partitions(PARTITIONS);

    let mut a = MemberThread::spawn_with(0, config(), &topic, 0, true, &journal);
    wait_for_members(
        &broker,
        "the first member owns everything",
        CLIENT_TIMEOUT,
        &[&a],
        || a.owned() == all,
    );
    let mut b = MemberThread::spawn_with(1, config(), &topic, 0, true, &journal);
    wait_for_members(
        &broker,
        "two members own three partitions each",
        CLIENT_TIMEOUT,
        &[&a, &b],
        || {
            let sets = [a.owned(), b.owned()];
            sets.iter().all(|s| s.len() == 3) && is_partitioned(&sets, &all)
        },
    );
    wait_for_members(&broker, "both read", CLIENT_TIMEOUT, &[&a, &b], || {
        a.consumed() > 0 && b.consumed() > 0
    });
    let (a_before, b_before) = (a.owned(), b.owned());
    let (_, _, protocol, _) =
        describe_group(&lister, &group, &topic).expect("the group is described");
    assert_eq!(
        protocol, "cooperative-sticky",
        "the protocol the broker chose"
    );

    // Member 0's next revocation takes 2 s; the second round of the
    // cooperative rebalance waits for it.
    *a.shared.revoke_sleep.lock().unwrap() = Some(Duration::from_secs(2));
    let joined_at = Instant::now();
    let mut c = MemberThread::spawn_with(2, config(), &topic, 0, true, &journal);
    wait_for_members(
        &broker,
        "three members own two partitions each",
        CLIENT_TIMEOUT,
        &[&a, &b, &c],
        || {
            let sets = [a.owned(), b.owned(), c.owned()];
            sets.iter().all(|s| s.len() == 2) && is_partitioned(&sets, &all)
        },
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

    let delivered = producer.finish();
    let ends = ends_of(&delivered);
    wait_for_members(
        &broker,
        "every record is consumed",
        CLIENT_TIMEOUT,
        &[&a, &b, &c],
        || all_consumed(&journal, &ends),
    );
    // The closes below revoke everything; only what came before counts.
    let closing_at = Instant::now();
    close_all(&mut [&mut a, &mut b, &mut c], &[]);
    let journal = journal_snapshot(&journal);

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
    let missing: Vec<_> = delivered
        .iter()
        .filter(|po| !report.seen.contains_key(po))
        .collect();
    assert!(missing.is_empty(), "records never consumed: {missing:?}");
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
    const PARTITIONS: i32 = 6;
    let broker = start_broker();
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("maxpoll");
    let group = format!("{topic}-group");
    create(&broker, &topic, PARTITIONS);
    let lister = lister(&bootstrap);
    let producer =
        BackgroundProducer::start(&bootstrap, &topic, PARTITIONS, Duration::from_millis(20));
    let journal = new_journal();
    let config = || {
        member_config(
            &bootstrap,
            &group,
            &[
                ("session.timeout.ms", "3000"),
                ("heartbeat.interval.ms", "300"),
                ("max.poll.interval.ms", "6000"),
            ],
        )
    };
    let all = all_partitions(PARTITIONS);
    let mut a = MemberThread::spawn(0, config(), &topic, 10, &journal);
    let mut b = MemberThread::spawn(1, config(), &topic, 10, &journal);
    wait_for_members(
        &broker,
        "two members own three partitions each",
        CLIENT_TIMEOUT,
        &[&a, &b],
        || {
            let sets = [a.owned(), b.owned()];
            sets.iter().all(|s| s.len() == 3) && is_partitioned(&sets, &all)
        },
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
    let (state, _, _, described) =
        describe_group(&lister, &group, &topic).expect("the group is described");
    assert_eq!(
        described.len(),
        1,
        "members after the removal ({state}): {described:?}"
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
        || {
            let sets = [a.owned(), b.owned()];
            sets.iter().all(|s| s.len() == 3) && is_partitioned(&sets, &all)
        },
    );
    let delivered = producer.finish();
    let ends = ends_of(&delivered);
    wait_for_members(
        &broker,
        "every record is consumed",
        CLIENT_TIMEOUT,
        &[&a, &b],
        || all_consumed(&journal, &ends),
    );
    close_all(
        &mut [&mut a, &mut b],
        &[(0, "Maximum application poll interval")],
    );
    let report = check_journal(&journal_snapshot(&journal));
    assert!(
        report.violations.is_empty(),
        "resume-point violations:\n{}",
        report.violations.join("\n")
    );
    assert!(
        report.duplicates <= report.uncommitted_at_revocation,
        "{} duplicates, but members held only {} uncommitted records when they lost partitions",
        report.duplicates,
        report.uncommitted_at_revocation
    );
    let missing: Vec<_> = delivered
        .iter()
        .filter(|po| !report.seen.contains_key(po))
        .collect();
    assert!(missing.is_empty(), "records never consumed: {missing:?}");
}

/// ListGroups and DescribeGroups show the group and its state; DeleteGroups
/// refuses a group with members (NON_EMPTY_GROUP), deletes an empty one
/// with its offsets, and says GROUP_ID_NOT_FOUND for one that is not there.
#[test]
fn admin_lists_describes_and_deletes_groups() {
    let broker = start_broker();
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("admin");
    let group = format!("{topic}-group");
    create(&broker, &topic, 2);
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
    let broker = start_broker();
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
