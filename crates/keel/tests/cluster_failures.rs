//! Replication under failures, on separate `keel server` processes: a
//! follower frozen with SIGSTOP leaves the ISR and comes back, unclean
//! leader election off and on, and twenty SIGKILLs of a partition's leader
//! under an idempotent producer. Each test checks what clients were told
//! against what every replica's log holds.

mod common;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::TestCluster;
use common::*;
use rdkafka::admin::{AlterConfig, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// How long electing a new controller or leader, fencing a silent broker
/// or changing an ISR may take: the cluster's timeouts are at most 3 s,
/// the rest is slack for a loaded machine.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(20);

/// Creates `topic` with one partition on `replicas` (None: three replicas
/// wherever the controller places them) and waits until every replica is
/// in its ISR under a leader.
async fn create_partition(cluster: &TestCluster, topic: &str, replicas: Option<&[i32]>) {
    let assignment = replicas.map(|replicas| [replicas]);
    let new_topic = match &assignment {
        Some(assignment) => NewTopic::new(topic, 1, TopicReplication::Variable(assignment)),
        None => NewTopic::new(topic, 1, TopicReplication::Fixed(3)),
    };
    let results = admin(&cluster.bootstrap())
        .create_topics([&new_topic], &admin_options())
        .await
        .expect("CreateTopics");
    assert_eq!(results, vec![Ok(topic.to_string())]);
    let size = replicas.map_or(3, <[i32]>::len);
    wait_for_partition(cluster, topic, "every replica is in sync", |leader, isr| {
        leader >= 0 && isr.len() == size
    });
}

/// Polls the partition's leader and ISR (sorted) until `check` holds, and
/// returns them. Each state seen is printed, so a timeout shows the way
/// the partition went.
fn wait_for_partition(
    cluster: &TestCluster,
    topic: &str,
    what: &str,
    check: impl Fn(i32, &[i32]) -> bool,
) -> (i32, Vec<i32>) {
    let mut last = None;
    let mut seen = None;
    wait_until(&format!("{topic}: {what}"), FAILOVER_TIMEOUT, || {
        let state = cluster.leader_and_isr(topic, 0).map(|(leader, mut isr)| {
            isr.sort_unstable();
            (leader, isr)
        });
        if state != last {
            eprintln!("{topic}-0 (leader, isr): {state:?}");
            last.clone_from(&state);
        }
        seen = state.filter(|(leader, isr)| check(*leader, isr));
        seen.is_some()
    });
    seen.expect("the state that passed")
}

/// The active controller, once every running node names the same one.
fn agreed_controller(cluster: &TestCluster) -> i32 {
    let mut agreed = None;
    wait_until("the nodes agree on a controller", FAILOVER_TIMEOUT, || {
        agreed = cluster.agreed_controller_id();
        agreed.is_some()
    });
    agreed.expect("an agreed controller")
}

/// Sends `value` to partition 0 and waits for the answer: the offset, or
/// why it was not written.
async fn try_send(producer: &FutureProducer, topic: &str, value: &str) -> Result<i64, KafkaError> {
    let record = FutureRecord::<str, str>::to(topic)
        .partition(0)
        .payload(value);
    producer
        .send(record, Duration::from_secs(10))
        .await
        .map(|delivery| delivery.offset)
        .map_err(|(e, _)| e)
}

/// Records clients were told are written, as (offset, value).
type Acked = Vec<(i64, String)>;

/// Sends `value`, which must be acknowledged.
async fn send_acked(producer: &FutureProducer, topic: &str, value: String) -> (i64, String) {
    match try_send(producer, topic, &value).await {
        Ok(offset) => (offset, value),
        Err(e) => panic!("{value} was not acknowledged: {e}"),
    }
}

/// Sends `count` records named `prefix-0`, `prefix-1`, ... one at a time;
/// every one must be acknowledged.
async fn send_all(producer: &FutureProducer, topic: &str, prefix: &str, count: usize) -> Acked {
    let mut acked = Vec::with_capacity(count);
    for i in 0..count {
        acked.push(send_acked(producer, topic, format!("{prefix}-{i}")).await);
    }
    acked
}

/// Keeps sending records named `prefix-0`, `prefix-1`, ..., each one
/// acknowledged before the next, until `done` holds after a send;
/// returns them.
async fn send_until(
    producer: &FutureProducer,
    topic: &str,
    prefix: &str,
    what: &str,
    done: impl Fn() -> bool,
) -> Acked {
    let deadline = Instant::now() + FAILOVER_TIMEOUT;
    let mut acked = Vec::new();
    loop {
        let value = format!("{prefix}-{}", acked.len());
        acked.push(send_acked(producer, topic, value).await);
        if done() {
            return acked;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {FAILOVER_TIMEOUT:?} waiting until {what}, having sent {} records",
            acked.len()
        );
    }
}

/// The whole partition read through `bootstrap`, as (offset, value);
/// offsets must run from the log start to the high watermark unbroken.
fn read_partition(bootstrap: &str, topic: &str) -> Acked {
    consume_all(bootstrap, topic, 0)
        .iter()
        .map(|m| {
            let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
            (m.offset(), value)
        })
        .collect()
}

/// Waits until the logs of `replicas` hold the same batches at the same
/// offsets: no offset holds two different records on two replicas, and
/// none lacks what another has.
fn wait_for_identical_logs(cluster: &TestCluster, topic: &str, replicas: &[i32]) {
    let mut last = String::new();
    wait_until(
        &format!("replicas {replicas:?} hold identical logs of {topic}-0"),
        FAILOVER_TIMEOUT,
        || {
            let logs: Vec<Vec<(i64, Vec<u8>)>> = replicas
                .iter()
                .map(|&id| cluster.stored_batches(id, topic, 0))
                .collect();
            let identical = logs.windows(2).all(|w| w[0] == w[1]);
            // Shown with the test's output if it fails; once per change.
            let summary = replicas
                .iter()
                .zip(&logs)
                .map(|(id, log)| {
                    let end = log.last().map(|(base, _)| *base);
                    format!("node {id}: {} batches, last at {end:?}", log.len())
                })
                .collect::<Vec<_>>()
                .join("; ");
            if summary != last {
                eprintln!("{topic}-0 on disk: {summary}");
                last = summary;
            }
            identical && !logs[0].is_empty()
        },
    );
}

/// Produces with acks=all while a follower is frozen: the leader drops it
/// from the ISR after `replica.lag.time.max.ms` and the writes, which
/// waited for it meanwhile, go through on the two replicas left
/// (min.insync.replicas=2). Once continued, it catches up and is taken
/// back, and every acknowledged record is in every log, once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_follower_leaves_the_isr_and_rejoins_after_resuming() {
    let mut cluster = TestCluster::start(
        3,
        &[
            ("min.insync.replicas", "2"),
            ("replica.lag.time.max.ms", "2000"),
        ],
    );
    let topic = unique_topic("paused-follower");
    create_partition(&cluster, &topic, None).await;
    let producer = producer(&cluster.bootstrap(), &[("acks", "all")]);
    let mut acked = send_all(&producer, &topic, "before", 20).await;

    let (leader, _) = cluster.leader_and_isr(&topic, 0).expect("a leader");
    // Not the active controller either: freezing it would also stall
    // metadata changes, the ISR shrink among them, until the others elect
    // a new controller, and this test is about the follower alone.
    let controller = agreed_controller(&cluster);
    let paused = cluster
        .ids()
        .find(|&id| id != leader && id != controller)
        .expect("a follower that is not the controller");
    eprintln!("leader {leader}, controller {controller}, pausing {paused}");
    cluster.pause(paused);

    let isr_without = |isr: &[i32]| !isr.contains(&paused);
    acked.extend(
        send_until(
            &producer,
            &topic,
            "while-paused",
            "the paused follower leaves the ISR",
            || {
                cluster
                    .leader_and_isr(&topic, 0)
                    .is_some_and(|(_, isr)| isr_without(&isr))
            },
        )
        .await,
    );
    let (leader_while_paused, isr) = wait_for_partition(
        &cluster,
        &topic,
        "the ISR lacks the paused node",
        |_, isr| isr_without(isr),
    );
    assert_eq!(
        leader_while_paused, leader,
        "a follower's pause moved leadership"
    );
    assert_eq!(isr.len(), 2, "{isr:?}");
    acked.extend(send_all(&producer, &topic, "out-of-isr", 50).await);

    cluster.resume(paused);
    acked.extend(
        send_until(
            &producer,
            &topic,
            "after-resume",
            "the resumed follower rejoins the ISR",
            || {
                cluster
                    .leader_and_isr(&topic, 0)
                    .is_some_and(|(_, isr)| isr.contains(&paused))
            },
        )
        .await,
    );
    acked.extend(send_all(&producer, &topic, "rejoined", 20).await);

    let offsets: Vec<i64> = acked.iter().map(|(offset, _)| *offset).collect();
    assert_eq!(offsets, (0..acked.len() as i64).collect::<Vec<_>>());
    assert_eq!(read_partition(&cluster.bootstrap(), &topic), acked);
    wait_for_identical_logs(&cluster, &topic, &[1, 2, 3]);
}

/// A partition on nodes 4 and 5 of five, so that the controller quorum
/// (nodes 1 to 3 suffice) outlives both replicas. Node 5 falls behind
/// while stopped; node 4 alone acknowledges more and is killed. With
/// unclean election off the partition stays offline with node 5 back,
/// until node 4 returns with everything. With it on (turned on while the
/// partition is offline), node 5 leads and what only node 4 had is lost,
/// on node 4 too once it follows; and a restarted out-of-sync replica is
/// elected as soon as it registers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unclean_leader_election_off_keeps_data_and_on_keeps_availability() {
    let mut cluster = TestCluster::start(5, &[]);
    let topic = unique_topic("unclean");
    // min.insync.replicas is 1 (Kafka's default): a lone leader acknowledges.
    create_partition(&cluster, &topic, Some(&[4, 5])).await;
    let producer = producer(&cluster.bootstrap(), &[("acks", "all")]);
    assert_eq!(
        in_sync(&cluster, &topic, &[4, 5]),
        4,
        "the first replica leads"
    );
    let mut kept = send_all(&producer, &topic, "both", 10).await;

    // Off: node 5 stops and leaves the ISR; node 4 alone takes more, dies.
    cluster.stop(5);
    in_sync(&cluster, &topic, &[4]);
    kept.extend(send_all(&producer, &topic, "only-on-4", 10).await);
    cluster.kill(4);
    offline(&cluster, &topic, "node 4 is fenced and nobody leads");
    cluster.restart(5);
    wait_until("node 5 is registered again", FAILOVER_TIMEOUT, || {
        cluster
            .metadata_from(1, Some(&[]))
            .is_ok_and(|m| m.brokers.iter().any(|b| b.node_id.0 == 5))
    });
    // Writes wait for a leader that never comes: node 5 heartbeats all
    // along, and each heartbeat could have elected it.
    let short_lived = common::producer(
        &cluster.bootstrap(),
        &[("acks", "all"), ("message.timeout.ms", "4000")],
    );
    let refused = try_send(&short_lived, &topic, "never-written").await;
    assert!(refused.is_err(), "written at {refused:?} without a leader");
    drop(short_lived);
    assert_eq!(
        cluster.leader_and_isr(&topic, 0),
        Some((-1, vec![4])),
        "node 4, the last in sync, is waited for"
    );
    // Node 4 comes back with everything it acknowledged, and node 5
    // catches up.
    cluster.restart(4);
    assert_eq!(in_sync(&cluster, &topic, &[4, 5]), 4);
    assert_eq!(read_partition(&cluster.bootstrap(), &topic), kept);

    // On, enabled while the partition is offline.
    cluster.stop(5);
    in_sync(&cluster, &topic, &[4]);
    let lost = send_all(&producer, &topic, "lost-with-4", 10).await;
    cluster.kill(4);
    offline(&cluster, &topic, "node 4 is fenced again");
    cluster.restart(5);
    assert_eq!(cluster.leader_and_isr(&topic, 0), Some((-1, vec![4])));
    set_topic_config(&cluster, &topic, "unclean.leader.election.enable", "true").await;
    assert_eq!(
        in_sync(&cluster, &topic, &[5]),
        5,
        "the out-of-sync replica is elected"
    );
    // Node 5 took over at the end of what it had: the records only node 4
    // held are gone, and their offsets are written anew.
    let after_unclean = send_all(&producer, &topic, "on-5", 10).await;
    assert_eq!(after_unclean[0].0, lost[0].0, "{lost:?} {after_unclean:?}");
    kept.extend(after_unclean);
    assert_eq!(read_partition(&cluster.bootstrap(), &topic), kept);
    // Node 4 returns, drops its diverging records and follows.
    cluster.restart(4);
    in_sync(&cluster, &topic, &[4, 5]);
    wait_for_identical_logs(&cluster, &topic, &[4, 5]);

    // With unclean election already on, a restarted out-of-sync replica
    // leads as soon as it registers.
    cluster.stop(4);
    in_sync(&cluster, &topic, &[5]);
    send_all(&producer, &topic, "lost-with-5", 10).await;
    cluster.kill(5);
    offline(&cluster, &topic, "node 5 is fenced");
    cluster.restart(4);
    assert_eq!(
        in_sync(&cluster, &topic, &[4]),
        4,
        "the restarted replica is elected"
    );
    kept.extend(send_all(&producer, &topic, "on-4", 10).await);
    assert_eq!(read_partition(&cluster.bootstrap(), &topic), kept);
    cluster.restart(5);
    in_sync(&cluster, &topic, &[4, 5]);
    wait_for_identical_logs(&cluster, &topic, &[4, 5]);
}

/// Waits until a leader has exactly `isr` (sorted) in sync; returns the
/// leader.
fn in_sync(cluster: &TestCluster, topic: &str, isr: &[i32]) -> i32 {
    let what = format!("the ISR is {isr:?}");
    wait_for_partition(cluster, topic, &what, |l, i| l >= 0 && i == isr).0
}

/// Waits until the partition has no leader.
fn offline(cluster: &TestCluster, topic: &str, what: &str) {
    wait_for_partition(cluster, topic, what, |leader, _| leader == -1);
}

/// Sets one config of `topic` through AlterConfigs (which replaces all of
/// its overrides).
async fn set_topic_config(cluster: &TestCluster, topic: &str, name: &str, value: &str) {
    let change = AlterConfig::new(ResourceSpecifier::Topic(topic)).set(name, value);
    let results = admin(&cluster.bootstrap())
        .alter_configs([&change], &admin_options())
        .await
        .expect("AlterConfigs");
    assert_eq!(results.len(), 1);
    if let Err((_, code)) = &results[0] {
        panic!("setting {name}={value} on {topic}: {code:?}");
    }
}

/// What the streaming producer was told, record by record in the order
/// sent.
#[derive(Default)]
struct Stream {
    /// (value, offset) of each acknowledged record.
    acked: Vec<(u64, i64)>,
    /// Records that failed, with why.
    failed: Vec<(u64, String)>,
}

/// Records in flight at most: enough to keep a few requests queued, few
/// enough that the records acknowledged after a failover are mostly new.
const WINDOW: usize = 16;

/// Notes the answer for `value`; the error type is the future's, a
/// sender dropped without an answer.
fn settle<E>(stream: &Mutex<Stream>, value: u64, outcome: Result<OwnedDeliveryResult, E>) {
    let mut stream = stream.lock().unwrap();
    match outcome {
        Ok(Ok(delivery)) => stream.acked.push((value, delivery.offset)),
        Ok(Err((e, _))) => stream.failed.push((value, format!("{e}"))),
        Err(_) => stream.failed.push((value, "no answer".to_string())),
    }
}

/// Sends "0", "1", ... to partition 0 about every `PACE` until `stop`, then
/// waits for the last answers.
async fn stream_values(
    producer: FutureProducer,
    topic: String,
    stop: Arc<AtomicBool>,
    stream: Arc<Mutex<Stream>>,
) {
    const PACE: Duration = Duration::from_millis(4);
    let mut in_flight = VecDeque::new();
    let mut next = 0u64;
    while !stop.load(Ordering::SeqCst) {
        if in_flight.len() == WINDOW {
            let (value, delivery) = in_flight.pop_front().unwrap();
            settle(&stream, value, delivery.await);
        }
        let payload = next.to_string();
        let record = FutureRecord::<str, str>::to(&topic)
            .partition(0)
            .payload(&payload);
        match producer.send_result(record) {
            Ok(delivery) => {
                in_flight.push_back((next, delivery));
                next += 1;
            }
            Err((e, _)) => stream
                .lock()
                .unwrap()
                .failed
                .push((next, format!("queueing: {e}"))),
        }
        tokio::time::sleep(PACE).await;
    }
    for (value, delivery) in in_flight {
        settle(&stream, value, delivery.await);
    }
}

/// Twenty times: SIGKILL the partition's leader while an idempotent
/// producer streams numbered records with acks=all, wait for a new leader
/// to acknowledge more, restart the killed node and wait until it is back
/// in the ISR. Every record is acknowledged once, at increasing offsets;
/// the partition holds exactly those, and all three logs are identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_leader_kills_lose_and_duplicate_nothing() {
    const CYCLES: usize = 20;
    let mut cluster = TestCluster::start(3, &[("min.insync.replicas", "2")]);
    let topic = unique_topic("leader-kills");
    // Leadership alternates between the first two replicas (an election
    // picks the first replica in the ISR, and each killed node is back in
    // it before the next kill), so the controller is put first: the first
    // kill, at least, takes the controller with the leader.
    let controller = agreed_controller(&cluster);
    let replicas: Vec<i32> = std::iter::once(controller)
        .chain(cluster.ids().filter(|&id| id != controller))
        .collect();
    create_partition(&cluster, &topic, Some(&replicas)).await;
    let producer = producer(
        &cluster.bootstrap(),
        &[
            ("acks", "all"),
            ("enable.idempotence", "true"),
            // A failover is seconds; a record that fails despite this
            // much is a failure of the cluster.
            ("message.timeout.ms", "120000"),
        ],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let stream = Arc::new(Mutex::new(Stream::default()));
    let streaming = tokio::spawn(stream_values(
        producer,
        topic.clone(),
        stop.clone(),
        stream.clone(),
    ));
    let acked = || stream.lock().unwrap().acked.len();
    let all_in_sync = |leader: i32, isr: &[i32]| leader >= 0 && isr == [1, 2, 3];

    wait_until(
        "the first records are acknowledged",
        FAILOVER_TIMEOUT,
        || acked() >= 2 * WINDOW,
    );
    let started = Instant::now();
    let mut controller_kills = 0;
    for cycle in 1..=CYCLES {
        let (leader, _) = wait_for_partition(&cluster, &topic, "all three in sync", all_in_sync);
        if cluster.agreed_controller_id() == Some(leader) {
            controller_kills += 1;
        }
        eprintln!(
            "cycle {cycle}: killing leader {leader} at {:?}, {} records acknowledged",
            started.elapsed(),
            acked()
        );
        cluster.kill(leader);
        wait_for_partition(&cluster, &topic, "a new leader", |l, _| {
            l >= 0 && l != leader
        });
        let before = acked();
        wait_until(
            &format!("cycle {cycle}: the new leader acknowledges records"),
            FAILOVER_TIMEOUT,
            || acked() >= before + 2 * WINDOW,
        );
        cluster.restart(leader);
        wait_for_partition(&cluster, &topic, "the restarted node rejoins", |_, isr| {
            isr.contains(&leader)
        });
        let failed = stream.lock().unwrap().failed.clone();
        assert!(
            failed.is_empty(),
            "cycle {cycle}: records failed: {failed:?}"
        );
    }
    stop.store(true, Ordering::SeqCst);
    streaming.await.expect("the producer task");
    eprintln!(
        "{CYCLES} cycles in {:?}, {controller_kills} of them killing the active controller",
        started.elapsed()
    );

    let stream = stream.lock().unwrap();
    assert!(
        stream.failed.is_empty(),
        "records failed: {:?}",
        stream.failed
    );
    // Answers come in the order sent; idempotence keeps that order in the
    // log, every record once.
    let mut expected: Acked = Vec::with_capacity(stream.acked.len());
    for (i, &(value, offset)) in stream.acked.iter().enumerate() {
        assert_eq!(value, i as u64, "answers out of order");
        if let Some((previous, _)) = expected.last() {
            assert!(offset > *previous, "{value} at {offset}, after {previous}");
        }
        expected.push((offset, value.to_string()));
    }
    let read = read_partition(&cluster.bootstrap(), &topic);
    if read != expected {
        // Thousands of records: show where they part.
        let at = read
            .iter()
            .zip(&expected)
            .take_while(|(r, e)| r == e)
            .count();
        let around =
            |records: &Acked| records[at.saturating_sub(3)..(at + 5).min(records.len())].to_vec();
        panic!(
            "the partition holds {} records, {} were acknowledged; from index {at} it holds {:?}, acknowledged were {:?}",
            read.len(),
            expected.len(),
            around(&read),
            around(&expected)
        );
    }
    wait_for_identical_logs(&cluster, &topic, &[1, 2, 3]);
}
