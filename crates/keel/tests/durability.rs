//! What survives restarts, crashes, dropped connections and corruption, and
//! what retention removes.

mod common;

use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rand::{RngCore, SeedableRng};
use rdkafka::admin::ConfigSource;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureRecord, Producer, PurgeConfig};
use rdkafka::Offset;

fn topic_id(addr: std::net::SocketAddr, topic: &str) -> uuid::Uuid {
    let mut conn = RawConn::connect(addr).expect("connecting");
    let t = conn.metadata_topic(topic, false).expect("Metadata");
    assert_eq!(t.error_code, 0, "Metadata error for {topic}");
    assert!(!t.topic_id.is_nil(), "{topic} has no topic id");
    t.topic_id
}

/// `name -> (value, source)` for a topic's configs, through DescribeConfigs.
async fn restart_keeps_state(crash: bool) {
    let mut broker = TestBroker::start();
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("keep");
    let set: [(&str, &str); 3] = [
        ("retention.ms", "123456789"),
        ("max.message.bytes", "50000"),
        ("message.timestamp.type", "LogAppendTime"),
    ];
    create_topic(&bootstrap, &topic, 3, &set).await;
    let producer = producer(&bootstrap, &[]);
    for p in 0..3 {
        for i in 0..10 {
            send(
                &producer,
                &topic,
                p,
                Some(&format!("k{p}-{i}")),
                &format!("v{p}-{i}"),
            )
            .await;
        }
    }
    // A topic created by Metadata rather than CreateTopics is kept too.
    let auto = unique_topic("keep-auto");
    send(&producer, &auto, 0, None, "auto-created").await;
    drop(producer);

    let ids = (
        topic_id(broker.addr(), &topic),
        topic_id(broker.addr(), &auto),
    );
    let configs = topic_configs(&bootstrap, &topic).await;
    for (name, value) in set {
        let (v, source) = &configs[name];
        assert_eq!(v.as_deref(), Some(value), "{name} before the restart");
        assert_eq!(
            source,
            &format!("{:?}", ConfigSource::DynamicTopic),
            "source of {name}"
        );
    }

    if crash {
        broker.kill9_and_restart();
    } else {
        broker.restart();
    }
    let bootstrap = broker.bootstrap();

    assert_eq!(
        (
            topic_id(broker.addr(), &topic),
            topic_id(broker.addr(), &auto)
        ),
        ids,
        "topic ids changed across the restart"
    );
    assert_eq!(
        topic_configs(&bootstrap, &topic).await,
        configs,
        "configs changed across the restart"
    );
    for p in 0..3 {
        assert_eq!(
            watermarks(&bootstrap, &topic, p),
            (0, 10),
            "watermarks of partition {p}"
        );
        let records = consume_all(&bootstrap, &topic, p);
        let values: Vec<String> = records
            .iter()
            .map(|m| String::from_utf8(m.payload().unwrap().to_vec()).unwrap())
            .collect();
        let expected: Vec<String> = (0..10).map(|i| format!("v{p}-{i}")).collect();
        assert_eq!(values, expected, "partition {p}");
        assert_eq!(records[3].key(), Some(format!("k{p}-3").as_bytes()));
    }
    let auto_records = consume_all(&bootstrap, &auto, 0);
    assert_eq!(auto_records.len(), 1);
    assert_eq!(auto_records[0].payload(), Some(&b"auto-created"[..]));

    // The log continues where it stopped.
    let producer = common::producer(&bootstrap, &[]);
    assert_eq!(send(&producer, &topic, 1, None, "after").await, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_restart_keeps_data_topic_ids_and_configs() {
    restart_keeps_state(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_restart_keeps_data_topic_ids_and_configs() {
    restart_keeps_state(true).await;
}

#[derive(Clone, Copy, PartialEq)]
enum Restart {
    /// The proxy cuts connections at random instead.
    No,
    Clean,
    Crash,
}

/// Produces `count` numbered records with an idempotent producer through a
/// proxy that drops connections at random, or restarts the broker midway,
/// then checks the partition holds each exactly once, in order.
async fn idempotent_run(seed: u64, count: usize, restart: Restart) {
    let proxy = ChaosProxy::start(seed);
    let mut broker = TestBroker::with(&[("advertised.listeners", &proxy.advertised_listener())]);
    proxy.set_upstream(broker.addr());
    let bootstrap = proxy.bootstrap();
    let topic = unique_topic("idem");
    create_topic(&bootstrap, &topic, 1, &[]).await;

    let producer = producer(
        &bootstrap,
        &[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("linger.ms", "2"),
            ("batch.num.messages", "20"),
            ("max.in.flight.requests.per.connection", "5"),
            ("message.timeout.ms", "60000"),
        ],
    );
    // One record before any cut, so the producer id is settled.
    send(&producer, &topic, 0, None, "warm-up").await;
    if restart == Restart::No {
        proxy.set_chaos(true, 40);
    }

    let delivered = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(count);
    let queue = |range: std::ops::Range<usize>, tasks: &mut Vec<_>| {
        for i in range {
            let value = format!("idem-{i:05}");
            let future = producer
                .send_result(
                    FutureRecord::<str, _>::to(&topic)
                        .partition(0)
                        .payload(&value),
                )
                .map_err(|(e, _)| e)
                .expect("queueing a record");
            let delivered = delivered.clone();
            tasks.push(tokio::spawn(async move {
                let result = future.await.expect("delivery future");
                delivered.fetch_add(1, Ordering::SeqCst);
                result.map(|d| d.offset).map_err(|(e, _)| e)
            }));
        }
    };
    if restart != Restart::No {
        // Half before the restart, some of it still in flight when the
        // broker stops; the other half after, with the same producer id and
        // sequence numbers the broker must have kept.
        queue(0..count / 2, &mut tasks);
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        while delivered.load(Ordering::SeqCst) < count / 6 {
            assert!(
                Instant::now() < deadline,
                "deliveries stalled before the restart"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if restart == Restart::Crash {
            broker.kill9_and_restart();
        } else {
            broker.restart();
        }
        proxy.set_upstream(broker.addr());
        proxy.cut_all();
        queue(count / 2..count, &mut tasks);
    } else {
        queue(0..count, &mut tasks);
    }
    let mut failures = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        if let Err(e) = task.await.unwrap() {
            failures.push(format!("record {i}: {e}"));
        }
    }
    proxy.set_chaos(false, 0);
    assert!(
        failures.is_empty(),
        "{} records failed, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    eprintln!("{count} records through {} cut connections", proxy.cuts());
    if restart == Restart::No {
        assert!(
            proxy.cuts() > 0,
            "the proxy never cut a connection; the test proved nothing"
        );
    }

    let records = consume_all(&bootstrap, &topic, 0);
    let values: Vec<String> = records
        .iter()
        .map(|m| String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned())
        .collect();
    let mut expected = vec!["warm-up".to_string()];
    expected.extend((0..count).map(|i| format!("idem-{i:05}")));
    if values != expected {
        let mut seen = BTreeMap::new();
        for v in &values {
            *seen.entry(v.as_str()).or_insert(0) += 1;
        }
        let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(10).collect();
        let first_diff = values.iter().zip(&expected).position(|(a, b)| a != b);
        panic!(
            "partition holds {} records for {} sent; duplicates (first 10): {dups:?}; first difference at offset {first_diff:?}; cuts {}",
            values.len(),
            expected.len(),
            proxy.cuts()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_producer_over_dropped_connections_leaves_no_duplicates() {
    idempotent_run(0x6b65656c, 3000, Restart::No).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_producer_across_a_broker_restart_leaves_no_duplicates() {
    idempotent_run(7, 3000, Restart::Clean).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_producer_across_a_broker_crash_leaves_no_duplicates() {
    idempotent_run(9, 3000, Restart::Crash).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_a_produce_stream_loses_no_acknowledged_record() {
    let mut broker = TestBroker::with(&[("log.flush.interval.messages", "1")]);
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("crash");
    create_topic(&bootstrap, &topic, 1, &[]).await;
    let producer = producer(
        &bootstrap,
        &[
            ("acks", "all"),
            ("linger.ms", "1"),
            ("message.timeout.ms", "5000"),
            ("queue.buffering.max.messages", "2000"),
        ],
    );
    let value = |i: usize| format!("crash-{i:06}");

    let acked: Arc<Mutex<Vec<(usize, i64)>>> = Arc::default();
    let mut tasks = Vec::new();
    let started = Instant::now();
    let mut i = 0;
    // Keep records in flight until enough are acknowledged, then crash the
    // broker with more still on the way.
    while acked.lock().unwrap().len() < 1500 && started.elapsed() < Duration::from_secs(60) {
        let v = value(i);
        match producer.send_result(FutureRecord::<str, _>::to(&topic).partition(0).payload(&v)) {
            Ok(future) => {
                let acked = acked.clone();
                let n = i;
                tasks.push(tokio::spawn(async move {
                    if let Ok(Ok(delivery)) = future.await {
                        acked.lock().unwrap().push((n, delivery.offset));
                    }
                }));
                i += 1;
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err((e, _)) => panic!("queueing record {i}: {e}"),
        }
    }
    broker.kill9();
    producer.purge(PurgeConfig::default().queue().inflight());
    for t in tasks {
        t.await.unwrap();
    }
    drop(producer);
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(
        acked.len() >= 100,
        "only {} records acknowledged before the crash",
        acked.len()
    );

    broker.start_again();
    let bootstrap = broker.bootstrap();
    let records = consume_all(&bootstrap, &topic, 0);
    eprintln!(
        "{} records acknowledged of {i} sent; {} in the log after the crash",
        acked.len(),
        records.len()
    );
    assert_eq!(records.first().map(|m| m.offset()), Some(0));
    for (n, offset) in &acked {
        let stored = records.get(*offset as usize).and_then(|m| m.payload());
        assert_eq!(
            stored,
            Some(value(*n).as_bytes()),
            "acknowledged record {n} at offset {offset} (log end {} after restart, {} acked)",
            records.len(),
            acked.len()
        );
    }
}

/// Produces 20 one-record batches, SIGKILLs the broker, lets `corrupt`
/// damage the segment (it returns how many batches should survive), then
/// checks recovery serves exactly those and appends right after them.
async fn recovery_case(corrupt: impl FnOnce(&Path, &[StoredBatch]) -> usize) {
    let mut broker = TestBroker::start();
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("torn");
    create_topic(&bootstrap, &topic, 1, &[]).await;
    let producer = producer(&bootstrap, &[]);
    for i in 0..20 {
        assert_eq!(
            send(
                &producer,
                &topic,
                0,
                Some("k"),
                &format!("good-{i:02}-{}", "x".repeat(100))
            )
            .await,
            i
        );
    }
    drop(producer);
    broker.kill9();

    let segment = broker
        .data_dir()
        .join(format!("{topic}-0"))
        .join("00000000000000000000.log");
    let (batches, trailing) = read_segment(&segment);
    assert_eq!(
        batches.len(),
        20,
        "acknowledged batches on disk after kill -9"
    );
    assert_eq!(trailing, 0);
    let keep = corrupt(&segment, &batches);

    broker.start_again();
    let bootstrap = broker.bootstrap();
    assert_eq!(
        watermarks(&bootstrap, &topic, 0),
        (0, keep as i64),
        "log after recovery"
    );
    let records = consume_all(&bootstrap, &topic, 0);
    for (i, m) in records.iter().enumerate() {
        assert_eq!(
            m.payload(),
            Some(format!("good-{i:02}-{}", "x".repeat(100)).as_bytes())
        );
    }
    let producer = common::producer(&bootstrap, &[]);
    assert_eq!(
        send(&producer, &topic, 0, None, "after recovery").await,
        keep as i64
    );
    let (batches, trailing) = read_segment(&segment);
    assert_eq!(
        batches.len(),
        keep + 1,
        "valid batches in the segment after recovery and one append"
    );
    assert_eq!(trailing, 0, "garbage left in the segment");
}

fn overwrite(path: &Path, at: u64, garbage: &[u8]) {
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(garbage).unwrap();
    f.sync_all().unwrap();
}

fn len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_drops_a_last_batch_with_garbage_over_its_end() {
    recovery_case(|path, _| {
        let end = len(path);
        let mut tail = std::fs::read(path).unwrap()[(end - 16) as usize..].to_vec();
        tail.iter_mut().for_each(|b| *b ^= 0xA5);
        overwrite(path, end - 16, &tail);
        19
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_truncates_at_the_first_batch_under_garbage() {
    recovery_case(|path, batches| {
        let from = batches[12].position + 30;
        let mut garbage = vec![0u8; (len(path) - from) as usize];
        rand::rngs::StdRng::seed_from_u64(12).fill_bytes(&mut garbage);
        overwrite(path, from, &garbage);
        12
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_cuts_a_torn_last_batch() {
    recovery_case(|path, batches| {
        let last = &batches[19];
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.set_len(last.position + last.size / 2).unwrap();
        f.sync_all().unwrap();
        19
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_cuts_garbage_appended_after_the_last_batch() {
    recovery_case(|path, _| {
        let mut garbage = vec![0u8; 4096];
        rand::rngs::StdRng::seed_from_u64(99).fill_bytes(&mut garbage);
        overwrite(path, len(path), &garbage);
        20
    })
    .await;
}

fn base_offsets(partition_dir: &Path) -> Vec<i64> {
    segment_files(partition_dir)
        .iter()
        .map(|p| p.file_stem().unwrap().to_str().unwrap().parse().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_segments_and_moves_the_log_start() {
    let broker = TestBroker::with(&[
        ("log.retention.ms", "3000"),
        ("log.retention.check.interval.ms", "500"),
        ("log.segment.bytes", "2048"),
    ]);
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("retention");
    create_topic(&bootstrap, &topic, 1, &[]).await;
    let dir = broker.data_dir().join(format!("{topic}-0"));
    let producer = producer(&bootstrap, &[]);
    let value = |i: i64| format!("r{i:03}-{}", "y".repeat(300));
    for i in 0..40 {
        assert_eq!(send(&producer, &topic, 0, None, &value(i)).await, i);
    }
    let segments_before = base_offsets(&dir);
    assert!(
        segments_before.len() >= 4,
        "2 KiB segments rolled: {segments_before:?}"
    );

    wait_until(
        "retention moves the log start offset",
        CLIENT_TIMEOUT,
        || watermarks(&bootstrap, &topic, 0).0 > 0,
    );
    let (low, high) = watermarks(&bootstrap, &topic, 0);
    assert_eq!(high, 40, "retention does not touch the log end");
    let segments_after = base_offsets(&dir);
    assert!(
        segments_after.iter().all(|&base| base >= low),
        "segments below the log start offset {low} remain: {segments_after:?}"
    );
    assert!(
        segments_after.len() < segments_before.len(),
        "{segments_before:?} -> {segments_after:?}"
    );

    // New records go on at the log end; a consumer starting at the earliest
    // offset begins at the log start, past everything deleted.
    for i in 40..60 {
        assert_eq!(send(&producer, &topic, 0, None, &value(i)).await, i);
    }
    let first = consume(&bootstrap, &topic, 0, Offset::Beginning, 1);
    assert!(
        first[0].offset() >= low,
        "read offset {} below the log start {low}",
        first[0].offset()
    );
    assert_eq!(
        first[0].payload(),
        Some(value(first[0].offset()).as_bytes())
    );

    // And the log start keeps moving as newer data expires.
    wait_until(
        "retention moves the log start past the new records",
        CLIENT_TIMEOUT,
        || watermarks(&bootstrap, &topic, 0).0 > 40,
    );
    assert_eq!(watermarks(&bootstrap, &topic, 0).1, 60);
}
