//! Log compaction end to end: librdkafka producers and consumers against a
//! broker whose cleaner runs with short backoffs, small segments and a low
//! dirty ratio so that cleans happen within a test.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::*;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

/// Broker settings that make the cleaner prompt.
const PROMPT_CLEANER: &[(&str, &str)] = &[("log.cleaner.backoff.ms", "100")];

/// Topic settings: small segments, clean whenever a segment closes.
const COMPACTED: &[(&str, &str)] = &[
    ("cleanup.policy", "compact"),
    ("segment.bytes", "4096"),
    ("min.cleanable.dirty.ratio", "0.01"),
];

async fn send_keyed(producer: &FutureProducer, topic: &str, key: &str, value: Option<&str>) -> i64 {
    let mut record = FutureRecord::<str, str>::to(topic).partition(0).key(key);
    record.payload = value;
    producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .expect("record delivered")
        .offset
}

/// Every record of partition 0 from the log start to the end.
fn read_to_end(bootstrap: &str, topic: &str) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = {
        let mut config = client_config(bootstrap);
        config
            .set("group.id", "keel-tests-unused")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("fetch.wait.max.ms", "50");
        config.create().expect("consumer")
    };
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let deadline = std::time::Instant::now() + CLIENT_TIMEOUT;
    let mut out = Vec::new();
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "reading {topic} timed out"
        );
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(m)) => out.push(m.detach()),
            Some(Err(KafkaError::PartitionEOF(_))) => return out,
            Some(Err(e)) => panic!(
                "reading {topic}: {e} after offset {:?}",
                out.last().map(|m| m.offset())
            ),
        }
    }
}

fn key_of(m: &OwnedMessage) -> String {
    String::from_utf8(m.key().expect("compacted records have keys").to_vec()).unwrap()
}

/// `key -> [(offset, value)]` in offset order.
fn by_key(records: &[OwnedMessage]) -> BTreeMap<String, Vec<(i64, Option<String>)>> {
    let mut keys: BTreeMap<String, Vec<(i64, Option<String>)>> = BTreeMap::new();
    let mut last = -1;
    for m in records {
        assert!(m.offset() > last, "offsets go backwards at {}", m.offset());
        last = m.offset();
        let value = m.payload().map(|v| String::from_utf8(v.to_vec()).unwrap());
        keys.entry(key_of(m)).or_default().push((m.offset(), value));
    }
    keys
}

/// Unique-key records until the segment holding everything before them has
/// closed, so the cleaner may take it.
async fn close_the_active_segment(producer: &FutureProducer, topic: &str, tag: &str) {
    let filler = "f".repeat(100);
    for i in 0..60 {
        send_keyed(producer, topic, &format!("{tag}-{i}"), Some(&filler)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_the_latest_value_of_every_key_at_its_offset() {
    let broker = TestBroker::with(PROMPT_CLEANER);
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("compacted");
    let mut configs = COMPACTED.to_vec();
    configs.push(("delete.retention.ms", "1500"));
    create_topic(&bootstrap, &topic, 1, &configs).await;
    let producer = producer(&bootstrap, &[("linger.ms", "0")]);

    // 50 keys updated 20 times each, then 10 of them deleted.
    let mut latest: HashMap<String, (i64, Option<String>)> = HashMap::new();
    for round in 0..20 {
        for k in 0..50 {
            let (key, value) = (format!("k{k:02}"), format!("k{k:02}-v{round:02}"));
            let offset = send_keyed(&producer, &topic, &key, Some(&value)).await;
            latest.insert(key, (offset, Some(value)));
        }
    }
    for k in 0..10 {
        let key = format!("k{k:02}");
        let offset = send_keyed(&producer, &topic, &key, None).await;
        latest.insert(key, (offset, None));
    }
    close_the_active_segment(&producer, &topic, "filler-a").await;

    let compacted = |records: &[OwnedMessage], tombstones_gone: bool| {
        let keys = by_key(records);
        latest.iter().all(|(key, (offset, value))| {
            let seen = keys.get(key).map(Vec::as_slice).unwrap_or_default();
            match value {
                None if tombstones_gone => seen.is_empty(),
                _ => seen == [(*offset, value.clone())],
            }
        })
    };
    wait_until(
        "the cleaner kept only the latest value of each key",
        CLIENT_TIMEOUT,
        || compacted(&read_to_end(&bootstrap, &topic), false),
    );

    // Past delete.retention.ms, the next clean drops the tombstones.
    std::thread::sleep(Duration::from_millis(1600));
    close_the_active_segment(&producer, &topic, "filler-b").await;
    wait_until(
        "tombstones went after delete.retention.ms",
        CLIENT_TIMEOUT,
        || compacted(&read_to_end(&bootstrap, &topic), true),
    );
    let records = read_to_end(&bootstrap, &topic);
    let keys = by_key(&records);
    for (key, seen) in &keys {
        assert_eq!(seen.len(), 1, "{key} appears {} times", seen.len());
    }
    assert_eq!(
        watermarks(&bootstrap, &topic, 0).0,
        0,
        "compaction never moves the log start"
    );

    // `keel topic describe` shows how far the cleaner has got: past the
    // tombstones it removed, with the last clean's figures.
    let out = keel_cli_ok(&bootstrap, &["topic", "describe", &topic]);
    let line = out
        .lines()
        .find(|l| l.contains("Partition: 0\t"))
        .unwrap_or_else(|| panic!("{out}"));
    let last_tombstone = latest.values().map(|(offset, _)| *offset).max().unwrap();
    let cleaned_below: i64 = line
        .split("CleanedBelow: ")
        .nth(1)
        .and_then(|rest| rest.split('\t').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(cleaned_below > last_tombstone, "{line}");
    assert!(line.contains("(cleans above 0.01)"), "{line}");
    assert!(
        line.contains("\tLastClean: ") && line.contains(" s ago, "),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_topic_refuses_records_without_a_key() {
    let broker = TestBroker::start();
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("keyless");
    create_topic(&bootstrap, &topic, 1, &[("cleanup.policy", "compact")]).await;
    let producer = producer(&bootstrap, &[("linger.ms", "0")]);
    let record = FutureRecord::<str, str>::to(&topic)
        .partition(0)
        .payload("no key");
    let error = producer
        .send(record, Duration::from_secs(10))
        .await
        .map(|d| d.offset)
        .expect_err("a keyless record on a compacted topic");
    assert!(
        matches!(
            error.0,
            KafkaError::MessageProduction(RDKafkaErrorCode::InvalidRecord)
        ),
        "{error:?}"
    );
    assert_eq!(send_keyed(&producer, &topic, "k", Some("v")).await, 0);

    // Kafka refuses DeleteRecords where the policy does not include delete.
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(&topic, 0, Offset::Offset(1))
        .unwrap();
    let result = admin(&bootstrap)
        .delete_records(&offsets, &admin_options())
        .await
        .expect("DeleteRecords");
    let error = result.find_partition(&topic, 0).unwrap().error();
    assert!(
        matches!(error, Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::PolicyViolation)),
        "DeleteRecords on a compacted topic"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_markers_go_once_their_data_is_compacted_away() {
    let broker = TestBroker::with(PROMPT_CLEANER);
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("compacted-txn");
    let mut configs = COMPACTED.to_vec();
    configs.push(("delete.retention.ms", "1000"));
    create_topic(&bootstrap, &topic, 1, &configs).await;

    // Six transactions over the same ten keys, every other one aborted,
    // then plain writes that supersede all of them.
    let txn = transactional_producer(&bootstrap, &unique_topic("compacted-txn-id"), &[]);
    for t in 0..6 {
        txn.begin_transaction().expect("begin");
        for k in 0..10 {
            let (key, value) = (format!("k{k}"), format!("txn{t}"));
            let record = FutureRecord::<str, str>::to(&topic)
                .partition(0)
                .key(&key)
                .payload(&value);
            if let Err((e, _)) = txn.send_result(record) {
                panic!("queueing: {e}");
            }
        }
        if t % 2 == 0 {
            txn.commit_transaction(TXN_TIMEOUT).expect("commit");
        } else {
            txn.flush(TXN_TIMEOUT).expect("flush");
            txn.abort_transaction(TXN_TIMEOUT).expect("abort");
        }
    }
    let plain = producer(&bootstrap, &[("linger.ms", "0")]);
    let mut latest = BTreeMap::new();
    for k in 0..10 {
        let key = format!("k{k}");
        let offset = send_keyed(&plain, &topic, &key, Some("final")).await;
        latest.insert(key, vec![(offset, Some("final".to_owned()))]);
    }
    let dir = broker.data_dir().join(format!("{topic}-0"));
    let markers = || {
        stored_batches(&dir)
            .iter()
            .filter(|(b, _)| b.is_control() && b.record_count > 0)
            .count()
    };
    assert_eq!(markers(), 6);

    // Each clean past a segment close moves the markers one step: their
    // data goes, then they are stamped with a delete horizon, then they
    // go. The producer's last data batch stays (emptied) for its
    // sequence, and with it the marker of its transaction.
    let deadline = std::time::Instant::now() + CLIENT_TIMEOUT;
    let mut round = 0;
    while markers() != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} markers left after {round} rounds",
            markers()
        );
        close_the_active_segment(&plain, &topic, &format!("filler-{round}")).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        round += 1;
    }
    let records = read_to_end(&bootstrap, &topic);
    let keys: BTreeMap<_, _> = by_key(&records)
        .into_iter()
        .filter(|(key, _)| !key.starts_with("filler"))
        .collect();
    assert_eq!(keys, latest, "read_committed sees only the final values");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_broker_mid_clean_never_loses_the_latest_value() {
    // A slow cleaner, so that a kill right after a clean begins lands in
    // the middle of it.
    let mut broker = TestBroker::with(&[
        ("log.cleaner.backoff.ms", "50"),
        ("log.cleaner.io.max.bytes.per.second", "300000"),
    ]);
    let topic = unique_topic("crash-clean");
    // Kafka's default dirty ratio: cleans wait for megabytes of dirt, so
    // each takes seconds at the throttled rate.
    create_topic(
        &broker.bootstrap(),
        &topic,
        1,
        &[("cleanup.policy", "compact"), ("segment.bytes", "262144")],
    )
    .await;
    let mut latest: HashMap<String, (i64, String)> = HashMap::new();
    let padding = "p".repeat(1000);
    // How long after a clean begins each kill comes: early ones land while
    // the offset map is built, later ones while cleaned files are written
    // or swapped in.
    let kill_delays_ms = [100, 1000, 1300, 400, 1150, 700];
    for (cycle, delay_ms) in kill_delays_ms.into_iter().enumerate() {
        let bootstrap = broker.bootstrap();
        let producer = producer(&bootstrap, &[("linger.ms", "5")]);
        let sends: Vec<(String, String)> = (0..600)
            .map(|i| {
                let key = format!("k{:03}", i % 100);
                let value = format!("{key}-c{cycle}-{i}-{padding}");
                (key, value)
            })
            .collect();
        let futures: Vec<_> = sends
            .iter()
            .map(|(key, value)| {
                let record = FutureRecord::<str, str>::to(&topic)
                    .partition(0)
                    .key(key)
                    .payload(value);
                producer.send(record, Duration::from_secs(10))
            })
            .collect();
        for ((key, value), sent) in sends.iter().zip(futures) {
            let offset = sent.await.map_err(|(e, _)| e).expect("delivered").offset;
            latest.insert(key.clone(), (offset, value.clone()));
        }
        drop(producer);
        wait_until("a clean is running", CLIENT_TIMEOUT, || {
            let log = broker.log();
            let ended = log.matches("cleaned log").count() + log.matches("clean aborted").count();
            log.matches("beginning cleaning of log").count() > ended
        });
        std::thread::sleep(Duration::from_millis(delay_ms));
        broker.kill9_and_restart();

        let keys = by_key(&read_to_end(&broker.bootstrap(), &topic));
        for (key, (offset, value)) in &latest {
            let last = keys[key].last().expect("every key survives");
            assert_eq!(
                last,
                &(*offset, Some(value.clone())),
                "cycle {cycle}: the latest value of {key}"
            );
        }
    }
    let interrupted = broker.log().matches("removing leftover file").count()
        + broker
            .log()
            .matches("completing interrupted segment swap")
            .count();
    assert!(interrupted > 0, "no kill landed in the middle of a clean");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_offsets_stays_bounded_under_many_commits() {
    let mut broker = TestBroker::with(&[
        ("log.cleaner.backoff.ms", "100"),
        ("offsets.topic.num.partitions", "1"),
        ("offsets.topic.segment.bytes", "8192"),
    ]);
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("committed");
    create_topic(&bootstrap, &topic, 1, &[]).await;
    let group = unique_topic("bounded-group");
    let committer = consumer(&bootstrap, &[("group.id", &group)]);
    const COMMITS: i64 = 3000;
    for offset in 1..=COMMITS {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Offset(offset))
            .unwrap();
        committer
            .commit(&tpl, CommitMode::Sync)
            .expect("OffsetCommit");
    }
    let uncompacted = COMMITS * 60;
    wait_until("__consumer_offsets was compacted", CLIENT_TIMEOUT, || {
        let size = partition_sizes(&broker, "__consumer_offsets", vec![0])[0].1;
        size < 64 * 1024
    });
    let size = partition_sizes(&broker, "__consumer_offsets", vec![0])[0].1;
    assert!(size < uncompacted / 2, "{size} bytes for {COMMITS} commits");
    drop(committer);

    broker.restart();
    let consumer = consumer(&broker.bootstrap(), &[("group.id", &group)]);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&topic, 0);
    let committed = consumer
        .committed_offsets(tpl, CLIENT_TIMEOUT)
        .expect("OffsetFetch");
    assert_eq!(
        committed.find_partition(&topic, 0).unwrap().offset(),
        Offset::Offset(COMMITS),
        "the latest commit survives compaction and a restart"
    );
}
