//! Consumer-group helpers shared by `groups.rs` (classic protocol) and
//! `groups_kip848.rs` (`group.protocol=consumer`): group members on their own
//! threads journaling every rebalance callback, record and commit; a
//! checker replaying that journal; a producer that keeps writing; and the
//! scenarios both protocols run unchanged.
//!
//! Included with `#[path = "common/groups.rs"] mod group_common;`.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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

use crate::common::*;

/// What differs between the group protocols in these tests: the broker
/// settings and the member settings every test starts from.
pub struct GroupProtocol {
    pub broker: &'static [(&'static str, &'static str)],
    pub member: &'static [(&'static str, &'static str)],
}

impl GroupProtocol {
    pub fn start_broker(&self) -> TestBroker {
        TestBroker::with(self.broker)
    }

    /// Settings for a group member: manual commits only, earliest reset,
    /// short fetch waits, the protocol's own settings, then `extra`.
    pub fn member_config(
        &self,
        bootstrap: &str,
        group: &str,
        extra: &[(&str, &str)],
    ) -> ClientConfig {
        let mut config = client_config(bootstrap);
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "100")
            .set("topic.metadata.refresh.interval.ms", "2000");
        for (k, v) in self.member.iter().chain(extra) {
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
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

pub fn create(broker: &TestBroker, topic: &str, partitions: i32) {
    runtime().block_on(create_topic(&broker.bootstrap(), topic, partitions, &[]));
}

pub fn all_partitions(n: i32) -> BTreeSet<i32> {
    (0..n).collect()
}

// ---------------------------------------------------------------------------
// The journal and the group members that write it
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub enum Ev {
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

pub type Journal = Arc<Mutex<Vec<Ev>>>;

pub fn new_journal() -> Journal {
    Arc::new(Mutex::new(Vec::new()))
}

/// What a member thread shares with the test.
pub struct MemberShared {
    pub id: usize,
    pub topic: String,
    pub journal: Journal,
    /// Whether a revocation first commits what was processed of the
    /// partitions being revoked (the usual cooperative-sticky practice).
    pub commit_on_revoke: bool,
    /// Partitions the member holds, as its rebalance callbacks said.
    pub owned: Mutex<BTreeSet<i32>>,
    /// Per owned partition, the offset after the last record processed and
    /// not yet committed.
    pub pending: Mutex<BTreeMap<i32, i64>>,
    /// If set, the next revocation callback sleeps this long first (a slow
    /// application commit, say), stretching the rebalance.
    pub revoke_sleep: Mutex<Option<Duration>>,
    /// While set, the thread does not call `poll` at all.
    pub paused: AtomicBool,
    pub stop: AtomicBool,
    pub consumed: AtomicUsize,
    pub rebalances: AtomicUsize,
    pub last_poll: Mutex<Instant>,
    /// Errors `poll` and `commit` returned, as text.
    pub errors: Mutex<Vec<String>>,
    pub max_poll_exceeded: AtomicBool,
}

impl MemberShared {
    pub fn owned(&self) -> BTreeSet<i32> {
        self.owned.lock().unwrap().clone()
    }
}

pub struct MemberContext(pub Arc<MemberShared>);

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

pub fn partitions_of(tpl: &TopicPartitionList) -> BTreeSet<i32> {
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
pub struct MemberThread {
    pub shared: Arc<MemberShared>,
    pub thread: Option<JoinHandle<()>>,
}

impl MemberThread {
    pub fn spawn(
        id: usize,
        config: ClientConfig,
        topic: &str,
        commit_every: usize,
        journal: &Journal,
    ) -> MemberThread {
        MemberThread::spawn_with(id, config, topic, commit_every, false, journal)
    }

    pub fn spawn_with(
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

    pub fn owned(&self) -> BTreeSet<i32> {
        self.shared.owned()
    }

    pub fn consumed(&self) -> usize {
        self.shared.consumed.load(Ordering::SeqCst)
    }

    pub fn rebalances(&self) -> usize {
        self.shared.rebalances.load(Ordering::SeqCst)
    }

    pub fn errors(&self) -> Vec<String> {
        self.shared.errors.lock().unwrap().clone()
    }

    /// Closes the consumer (LeaveGroup for a dynamic member) and joins the
    /// thread; returns when the close has finished.
    pub fn close(&mut self) {
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

pub fn member_loop(s: Arc<MemberShared>, config: ClientConfig, topic: String, commit_every: usize) {
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
pub fn commit_pending(
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
pub struct JournalReport {
    /// Records consumed more than once, counted once per extra read.
    pub duplicates: usize,
    /// Per (partition, offset), how often it was consumed.
    pub seen: HashMap<(i32, i64), usize>,
    /// Revocations that took partitions from a member.
    pub revocations: usize,
    /// Summed over revocations: records the member had read from the
    /// revoked partitions since it last committed them. The next owner
    /// starts at the commit, so this bounds the duplicates.
    pub uncommitted_at_revocation: usize,
    /// The largest single such window.
    pub largest_window: usize,
    pub violations: Vec<String>,
}

/// Replays the journal: every time a member is handed a partition it must
/// start at the latest committed offset (0 if none: `earliest` on a topic
/// that starts at 0), then read on without a gap or a jump back until it
/// is told to give the partition up; committed offsets never go back.
pub fn check_journal(journal: &[Ev]) -> JournalReport {
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

pub fn journal_snapshot(journal: &Journal) -> Vec<Ev> {
    journal.lock().unwrap().clone()
}

/// When a member was last handed `partition`.
pub fn last_assignment_of(journal: &[Ev], member: usize, partition: i32) -> Option<Instant> {
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
pub fn first_consumed_after(
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
pub fn is_partitioned(sets: &[BTreeSet<i32>], expected: &BTreeSet<i32>) -> bool {
    let total: usize = sets.iter().map(|s| s.len()).sum();
    let union: BTreeSet<i32> = sets.iter().flatten().copied().collect();
    total == union.len() && &union == expected
}

pub fn describe_members(members: &[&MemberThread]) -> String {
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
pub fn close_all(members: &mut [&mut MemberThread], allowed: &[(usize, &str)]) {
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
pub fn wait_for_members(
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

pub struct DeliveryLog {
    delivered: Mutex<Vec<(i32, i64)>>,
    failed: Mutex<Vec<String>>,
}

pub struct DeliveryContext(Arc<DeliveryLog>);

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
pub struct BackgroundProducer {
    log: Arc<DeliveryLog>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl BackgroundProducer {
    pub fn start(
        bootstrap: &str,
        topic: &str,
        partitions: i32,
        every: Duration,
    ) -> BackgroundProducer {
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

    pub fn delivered(&self) -> usize {
        self.log.delivered.lock().unwrap().len()
    }

    /// Stops writing, waits for every delivery report, and returns the
    /// delivered (partition, offset) pairs.
    pub fn finish(mut self) -> Vec<(i32, i64)> {
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
pub fn ends_of(delivered: &[(i32, i64)]) -> BTreeMap<i32, i64> {
    let mut ends = BTreeMap::new();
    for (p, o) in delivered {
        let e = ends.entry(*p).or_insert(0);
        *e = (*e).max(o + 1);
    }
    ends
}

/// Whether every delivered record has been consumed by someone.
pub fn all_consumed(journal: &Journal, ends: &BTreeMap<i32, i64>) -> bool {
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
// Steps the scenarios share
// ---------------------------------------------------------------------------

/// A broker with a fresh topic, the name of the group that reads it, and
/// the journal its members write.
pub struct Scenario {
    pub broker: TestBroker,
    pub bootstrap: String,
    pub topic: String,
    pub group: String,
    pub partitions: i32,
    pub journal: Journal,
}

impl Scenario {
    /// Starts a broker for `protocol` and creates a topic named after
    /// `prefix` with `partitions` partitions.
    pub fn start(protocol: &GroupProtocol, prefix: &str, partitions: i32) -> Scenario {
        let broker = protocol.start_broker();
        let bootstrap = broker.bootstrap();
        let topic = unique_topic(prefix);
        let group = format!("{topic}-group");
        create(&broker, &topic, partitions);
        Scenario {
            broker,
            bootstrap,
            topic,
            group,
            partitions,
            journal: new_journal(),
        }
    }

    /// Every partition of the topic.
    pub fn all(&self) -> BTreeSet<i32> {
        all_partitions(self.partitions)
    }

    /// A producer writing to every partition of the topic every `every`.
    pub fn producer(&self, every: Duration) -> BackgroundProducer {
        BackgroundProducer::start(&self.bootstrap, &self.topic, self.partitions, every)
    }

    /// `wait_for_members` against this broker.
    pub fn wait(
        &self,
        what: &str,
        timeout: Duration,
        members: &[&MemberThread],
        condition: impl FnMut() -> bool,
    ) {
        wait_for_members(&self.broker, what, timeout, members, condition);
    }

    /// Waits until `first`, the only member yet, owns every partition.
    pub fn wait_first_owns_all(&self, first: &MemberThread) {
        let all = self.all();
        self.wait(
            "the first member owns everything",
            CLIENT_TIMEOUT,
            &[first],
            || first.owned() == all,
        );
    }

    /// Waits until `members` own `each` partitions apiece and between them
    /// every partition, once.
    pub fn wait_split(
        &self,
        what: &str,
        timeout: Duration,
        members: &[&MemberThread],
        each: usize,
    ) {
        let all = self.all();
        self.wait(what, timeout, members, || {
            let sets: Vec<_> = members.iter().map(|m| m.owned()).collect();
            sets.iter().all(|s| s.len() == each) && is_partitioned(&sets, &all)
        });
    }

    /// Waits until `a` and `b` own three partitions each, then until both
    /// have read more than `more_than` records.
    pub fn wait_pair_reading(&self, a: &MemberThread, b: &MemberThread, more_than: usize) {
        self.wait_split(
            "two members own three partitions each",
            CLIENT_TIMEOUT,
            &[a, b],
            3,
        );
        self.wait("both read", CLIENT_TIMEOUT, &[a, b], || {
            a.consumed() > more_than && b.consumed() > more_than
        });
    }

    /// Stops the producer and waits until every record it delivered is
    /// consumed; returns the delivered (partition, offset) pairs.
    pub fn drain(
        &self,
        producer: BackgroundProducer,
        members: &[&MemberThread],
    ) -> Vec<(i32, i64)> {
        let delivered = producer.finish();
        let ends = ends_of(&delivered);
        self.wait("every record is consumed", CLIENT_TIMEOUT, members, || {
            all_consumed(&self.journal, &ends)
        });
        delivered
    }

    /// Waits until every delivered record is consumed, closes the members,
    /// and checks the journal: resume points right, nothing missing, and no
    /// more duplicates than members had read past their commits when they
    /// lost partitions.
    pub fn finish_and_check(
        &self,
        producer: BackgroundProducer,
        members: &mut [&mut MemberThread],
        allowed: &[(usize, &str)],
    ) -> JournalReport {
        let delivered = {
            let refs: Vec<&MemberThread> = members.iter().map(|m| &**m).collect();
            self.drain(producer, &refs)
        };
        close_all(members, allowed);
        let report = check_journal(&journal_snapshot(&self.journal));
        assert!(
            report.violations.is_empty(),
            "resume-point violations:\n{}",
            report.violations.join("\n")
        );
        assert_all_seen(&delivered, &report);
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
}

/// Asserts every delivered record was consumed.
pub fn assert_all_seen(delivered: &[(i32, i64)], report: &JournalReport) {
    let missing: Vec<_> = delivered
        .iter()
        .filter(|po| !report.seen.contains_key(po))
        .collect();
    assert!(missing.is_empty(), "records never consumed: {missing:?}");
}

// ---------------------------------------------------------------------------
// Scenarios both protocols run
// ---------------------------------------------------------------------------

/// Commits from a group member, then lower ones with metadata from outside
/// the generation; after a restart OffsetFetch returns the latest, and a new
/// member resumes exactly there, with `auto.offset.reset=latest` so a lost
/// commit would show as a jump to the end. Its own commits, written after
/// the coordinator replayed `__consumer_offsets`, survive a second restart.
pub fn commits_survive(protocol: &GroupProtocol, restart: impl Fn(&mut TestBroker)) {
    const PARTITIONS: i32 = 4;
    const PER_PARTITION: i64 = 40;
    let mut broker = protocol.start_broker();
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
            protocol.member_config(&bootstrap, &group, &[]),
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
        protocol.member_config(&bootstrap, &group, &[("auto.offset.reset", "latest")]),
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

/// Three members share six partitions two each; one leaves and the other
/// two take its partitions over, resuming at its last commit, while a
/// producer keeps writing. Every record is consumed, and the only records
/// read twice are those after a member's last commit.
///
/// `view` makes what the protocol's checks need, once the topic exists;
/// `check_stable` checks the broker's view of the three members;
/// `check_takeover`, called once the leaver's partitions (`leaving`, left
/// at `left_at`) are read again, checks the takeover and returns how long
/// it took.
pub fn share_and_take_over<V>(
    protocol: &GroupProtocol,
    prefix: &str,
    client_id: impl Fn(usize) -> String,
    view: impl FnOnce(&Scenario) -> V,
    check_stable: impl FnOnce(&Scenario, &V, &[MemberThread]),
    check_takeover: impl FnOnce(&Scenario, &V, &BTreeSet<i32>, Instant) -> Duration,
) -> JournalReport {
    const COMMIT_EVERY: usize = 20;
    let s = Scenario::start(protocol, prefix, 6);
    let view = view(&s);
    let producer = s.producer(Duration::from_millis(15));
    let mut members: Vec<MemberThread> = (0..3)
        .map(|id| {
            let config =
                protocol.member_config(&s.bootstrap, &s.group, &[("client.id", &client_id(id))]);
            MemberThread::spawn(id, config, &s.topic, COMMIT_EVERY, &s.journal)
        })
        .collect();

    // Two partitions each, no overlap, all covered, all of them reading.
    {
        let refs: Vec<&MemberThread> = members.iter().collect();
        s.wait_split(
            "three members own two partitions each",
            CLIENT_TIMEOUT,
            &refs,
            2,
        );
        let base: Vec<usize> = members.iter().map(|m| m.consumed()).collect();
        s.wait("all three members consume", CLIENT_TIMEOUT, &refs, || {
            members
                .iter()
                .zip(&base)
                .all(|(m, b)| m.consumed() >= b + 3 * COMMIT_EVERY)
        });
    }
    check_stable(&s, &view, &members);

    // Member 2 leaves.
    let leaving = members[2].owned();
    let left_at = Instant::now();
    members[2].close();
    let stayers: Vec<&MemberThread> = members[..2].iter().collect();
    s.wait_split(
        "the two remaining members own three partitions each",
        Duration::from_secs(6),
        &stayers,
        3,
    );
    s.wait(
        "the leaver's partitions are read again",
        Duration::from_secs(6),
        &stayers,
        || {
            let j = journal_snapshot(&s.journal);
            leaving
                .iter()
                .all(|p| first_consumed_after(&j, *p, left_at, Some(2)).is_some())
        },
    );
    let takeover = check_takeover(&s, &view, &leaving, left_at);

    // Keep writing a little longer, then stop and let the readers catch up.
    let target = producer.delivered() + 600;
    wait_until("the producer writes on", CLIENT_TIMEOUT, || {
        producer.delivered() >= target
    });
    let report = s.finish_and_check(producer, &mut members.iter_mut().collect::<Vec<_>>(), &[]);
    eprintln!("takeover in {takeover:?}");
    report
}

/// A member that stops polling for longer than `max.poll.interval.ms`
/// (6 s) is removed from the group while the other member takes its
/// partitions, resuming at its commits; when it polls again it is told so
/// and rejoins. `member_extra` adds to the members' settings; `view` makes
/// what `check_removed` needs to check the broker's view of the group
/// with the slow member removed.
pub fn max_poll_interval_exceeded<V>(
    protocol: &GroupProtocol,
    prefix: &str,
    member_extra: &[(&str, &str)],
    view: impl FnOnce(&Scenario) -> V,
    check_removed: impl FnOnce(&Scenario, &V),
) {
    let s = Scenario::start(protocol, prefix, 6);
    let view = view(&s);
    let producer = s.producer(Duration::from_millis(20));
    let config = || protocol.member_config(&s.bootstrap, &s.group, member_extra);
    let all = s.all();
    let mut a = MemberThread::spawn(0, config(), &s.topic, 10, &s.journal);
    let mut b = MemberThread::spawn(1, config(), &s.topic, 10, &s.journal);
    s.wait_pair_reading(&a, &b, 20);

    // Member 0 stops polling.
    let a_partitions = a.owned();
    a.shared.paused.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(250));
    let stalled_at = *a.shared.last_poll.lock().unwrap();
    s.wait(
        "member 1 owns everything",
        Duration::from_secs(20),
        &[&a, &b],
        || b.owned() == all,
    );
    let j = journal_snapshot(&s.journal);
    let taken_after = a_partitions
        .iter()
        .map(|p| last_assignment_of(&j, 1, *p).expect("member 1 was assigned it") - stalled_at)
        .min()
        .unwrap();
    assert!(
        taken_after >= Duration::from_secs(5),
        "member 0's partitions moved {taken_after:?} after its last poll, before max.poll.interval.ms (6 s)"
    );
    s.wait(
        "member 1 reads member 0's partitions",
        Duration::from_secs(10),
        &[&a, &b],
        || {
            let j = journal_snapshot(&s.journal);
            a_partitions.iter().all(|p| {
                let assigned = last_assignment_of(&j, 1, *p).unwrap();
                first_consumed_after(&j, *p, assigned, None).is_some()
            })
        },
    );
    check_removed(&s, &view);

    // Member 0 polls again: it hears it was too slow, and rejoins.
    a.shared.paused.store(false, Ordering::SeqCst);
    s.wait(
        "member 0 is told it exceeded max.poll.interval.ms",
        Duration::from_secs(10),
        &[&a, &b],
        || a.shared.max_poll_exceeded.load(Ordering::SeqCst),
    );
    s.wait_split(
        "member 0 is back with three partitions",
        CLIENT_TIMEOUT,
        &[&a, &b],
        3,
    );
    s.finish_and_check(
        producer,
        &mut [&mut a, &mut b],
        &[(0, "Maximum application poll interval")],
    );
}
