//! Produce and consume through librdkafka: codecs, record shapes, size
//! limits, ListOffsets by timestamp, long polls and OFFSET_OUT_OF_RANGE.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use rand::RngCore;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn first_segment(broker: &TestBroker, topic: &str) -> std::path::PathBuf {
    broker
        .data_dir()
        .join(format!("{topic}-0"))
        .join("00000000000000000000.log")
}

/// Produces 300 keyed records with `codec`, reads them back, and checks the
/// segment holds them in batches compressed with that codec: the broker
/// stores batches as they came.
async fn codec_round_trip(codec: &str, codec_id: i16) {
    let broker = TestBroker::start();
    let bootstrap = broker.bootstrap();
    let topic = unique_topic(&format!("codec-{codec}"));
    create_topic(&bootstrap, &topic, 1, &[]).await;
    let expected: Vec<(String, String)> = (0..300)
        .map(|i| {
            (
                format!("key-{i}"),
                format!("value {i}: {}", "compressible ".repeat(20)),
            )
        })
        .collect();
    let producer = producer(
        &bootstrap,
        &[
            ("compression.codec", codec),
            ("linger.ms", "50"),
            ("batch.num.messages", "100"),
        ],
    );
    let deliveries: Vec<_> = expected
        .iter()
        .map(|(k, v)| {
            producer
                .send_result(FutureRecord::to(&topic).partition(0).key(k).payload(v))
                .map_err(|(e, _)| e)
                .expect("queueing a record")
        })
        .collect();
    for d in deliveries {
        d.await.expect("delivery future").expect("record delivered");
    }

    let records = consume_all(&bootstrap, &topic, 0);
    assert_eq!(records.len(), expected.len());
    for (m, (k, v)) in records.iter().zip(&expected) {
        assert_eq!(m.key(), Some(k.as_bytes()));
        assert_eq!(m.payload(), Some(v.as_bytes()));
    }

    let (batches, _) = read_segment(&first_segment(&broker, &topic));
    let stored: i32 = batches.iter().map(|b| b.record_count).sum();
    assert_eq!(stored, 300, "records in valid batches on disk");
    assert!(
        batches.iter().all(|b| b.codec() == codec_id),
        "every stored batch keeps codec {codec_id}: {:?}",
        batches.iter().map(|b| b.codec()).collect::<Vec<_>>()
    );
    assert!(
        batches.iter().any(|b| b.record_count > 1),
        "linger.ms batched records"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_round_trip() {
    codec_round_trip("gzip", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snappy_round_trip() {
    codec_round_trip("snappy", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lz4_round_trip() {
    codec_round_trip("lz4", 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_round_trip() {
    codec_round_trip("zstd", 4).await;
}

type Hdrs = Vec<(String, Option<Vec<u8>>)>;

fn headers_of(m: &rdkafka::message::OwnedMessage) -> Hdrs {
    m.headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_null_keys_and_null_values_round_trip() {
    let broker = TestBroker::start();
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("shapes");
    create_topic(&bootstrap, &topic, 1, &[]).await;
    let producer = producer(&bootstrap, &[]);

    struct Case {
        key: Option<&'static [u8]>,
        value: Option<&'static [u8]>,
        headers: Vec<(&'static str, Option<&'static [u8]>)>,
    }
    let cases = vec![
        Case {
            key: None,
            value: Some(b"null key"),
            headers: vec![],
        },
        Case {
            key: Some(b"tombstone"),
            value: None,
            headers: vec![("h1", Some(b"a"))],
        },
        Case {
            key: None,
            value: None,
            headers: vec![
                ("dup", Some(b"1")),
                ("dup", Some(b"2")),
                ("null", None),
                ("empty", Some(b"")),
            ],
        },
        Case {
            key: Some(b""),
            value: Some(b""),
            headers: vec![("utf8-\u{e9}", Some(&[0, 255, 1]))],
        },
        Case {
            key: Some(b"k"),
            value: Some(b"v"),
            headers: vec![],
        },
    ];
    for case in &cases {
        let mut record = FutureRecord::<[u8], [u8]>::to(&topic).partition(0);
        record.key = case.key;
        record.payload = case.value;
        if !case.headers.is_empty() {
            let mut headers = OwnedHeaders::new();
            for (k, v) in &case.headers {
                headers = headers.insert(Header { key: k, value: *v });
            }
            record = record.headers(headers);
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .expect("record delivered");
    }

    let records = consume_all(&bootstrap, &topic, 0);
    assert_eq!(records.len(), cases.len());
    for (i, (m, case)) in records.iter().zip(&cases).enumerate() {
        assert_eq!(m.key(), case.key, "key of record {i}");
        assert_eq!(m.payload(), case.value, "value of record {i}");
        let expected: Hdrs = case
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(<[u8]>::to_vec)))
            .collect();
        assert_eq!(headers_of(m), expected, "headers of record {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mebibyte_values_round_trip() {
    let broker = TestBroker::with(&[("message.max.bytes", "3145728")]);
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("big");
    create_topic(&bootstrap, &topic, 1, &[]).await;
    let producer = producer(&bootstrap, &[("message.max.bytes", "3000000")]);
    let mut rng = rand::thread_rng();
    let values: Vec<Vec<u8>> = (0..3)
        .map(|_| {
            let mut v = vec![0u8; 1024 * 1024];
            rng.fill_bytes(&mut v);
            v
        })
        .collect();
    for (i, v) in values.iter().enumerate() {
        producer
            .send(
                FutureRecord::to(&topic)
                    .partition(0)
                    .key(&format!("big-{i}"))
                    .payload(v),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("1 MiB record delivered");
    }
    // max.partition.fetch.bytes is 1 MiB, smaller than each batch: Kafka's
    // "at least one batch" rule must still hand each one out.
    let records = consume_all(&bootstrap, &topic, 0);
    assert_eq!(records.len(), 3);
    for (m, v) in records.iter().zip(&values) {
        assert_eq!(m.payload().map(<[u8]>::len), Some(v.len()));
        assert!(
            m.payload() == Some(&v[..]),
            "1 MiB value at offset {} differs",
            m.offset()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_too_large_reaches_the_producer() {
    let broker = TestBroker::start();
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("too-large");
    create_topic(&bootstrap, &topic, 1, &[("max.message.bytes", "10000")]).await;
    let producer = producer(&bootstrap, &[("message.max.bytes", "1000000")]);

    let big = vec![b'x'; 20_000];
    let result = producer
        .send(
            FutureRecord::<str, _>::to(&topic)
                .partition(0)
                .payload(&big),
            Duration::from_secs(10),
        )
        .await;
    match result {
        Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _)) => {}
        other => panic!("expected MESSAGE_TOO_LARGE, got {other:?}"),
    }
    assert_eq!(
        watermarks(&bootstrap, &topic, 0),
        (0, 0),
        "nothing was appended"
    );

    let small = vec![b'y'; 1_000];
    let delivery = producer
        .send(
            FutureRecord::<str, _>::to(&topic)
                .partition(0)
                .payload(&small),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("a record under the limit is accepted");
    assert_eq!(delivery.offset, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_offsets_by_timestamp() {
    let broker = TestBroker::start();
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("by-time");
    create_topic(&bootstrap, &topic, 1, &[]).await;
    let base = now_ms() - 120_000;

    // Offsets 0..10, one batch each, a second apart.
    let producer = producer(&bootstrap, &[]);
    for i in 0..10i64 {
        producer
            .send(
                FutureRecord::<str, _>::to(&topic)
                    .partition(0)
                    .payload(&format!("t{i}"))
                    .timestamp(base + i * 1000),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("record delivered");
    }
    // Offsets 10..20 in as few batches as linger allows, 100 ms apart, so
    // the answer lies inside a batch rather than at its start.
    let batched = producer_with_linger(&bootstrap);
    let deliveries: Vec<_> = (0..10i64)
        .map(|i| {
            batched
                .send_result(
                    FutureRecord::<str, _>::to(&topic)
                        .partition(0)
                        .payload("batched")
                        .timestamp(base + 20_000 + i * 100),
                )
                .map_err(|(e, _)| e)
                .expect("queueing")
        })
        .collect();
    for d in deliveries {
        d.await
            .unwrap()
            .map_err(|(e, _)| e)
            .expect("record delivered");
    }

    let consumer = consumer(&bootstrap, &[]);
    let cases: &[(i64, Offset)] = &[
        (base - 5_000, Offset::Offset(0)),
        (base, Offset::Offset(0)),
        (base + 1, Offset::Offset(1)),
        (base + 3_000, Offset::Offset(3)),
        (base + 3_500, Offset::Offset(4)),
        (base + 9_000, Offset::Offset(9)),
        (base + 9_001, Offset::Offset(10)),
        (base + 20_350, Offset::Offset(14)),
        (base + 20_900, Offset::Offset(19)),
        (base + 20_901, Offset::End),
    ];
    for &(timestamp, expected) in cases {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Offset(timestamp))
            .unwrap();
        let answer = consumer
            .offsets_for_times(tpl, CLIENT_TIMEOUT)
            .expect("ListOffsets by timestamp");
        let got = answer
            .find_partition(&topic, 0)
            .expect("partition in the answer");
        assert_eq!(got.error(), Ok(()));
        assert_eq!(
            got.offset(),
            expected,
            "offset for timestamp base{:+}",
            timestamp - base
        );
    }
}

fn producer_with_linger(bootstrap: &str) -> rdkafka::producer::FutureProducer {
    producer(bootstrap, &[("linger.ms", "200")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_long_poll_returns_soon_after_a_produce() {
    let broker = TestBroker::start();
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("long-poll");
    create_topic(&bootstrap, &topic, 1, &[]).await;
    let producer = producer(&bootstrap, &[("linger.ms", "0")]);
    let send = |i: usize| {
        let value = format!("poll-{i}");
        let producer = &producer;
        let topic = &topic;
        async move {
            producer
                .send(
                    FutureRecord::<str, _>::to(topic)
                        .partition(0)
                        .payload(&value),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("record delivered")
        }
    };
    send(0).await;

    // A Fetch waits up to 10 s for data, so an answer well inside that can
    // only come from the append waking it. The bound is half the wait, not a
    // latency figure: on a loaded 2-core host a woken fetch has taken 0.75 s.
    let consumer = consumer(
        &bootstrap,
        &[("fetch.wait.max.ms", "10000"), ("fetch.min.bytes", "1")],
    );
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(0))
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let poll_one = |expected_offset: i64| {
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        loop {
            assert!(
                Instant::now() < deadline,
                "no record at offset {expected_offset}"
            );
            if let Some(m) = consumer.poll(Duration::from_millis(10)) {
                let m = m.expect("consuming");
                assert_eq!(m.offset(), expected_offset);
                return Instant::now();
            }
        }
    };
    poll_one(0);
    for i in 1..=3 {
        // Gives the consumer's next Fetch time to reach the broker and park
        // there; no client call reports that, so this one wait is fixed.
        std::thread::sleep(Duration::from_millis(300));
        let sent = Instant::now();
        send(i).await;
        let received = poll_one(i as i64);
        let waited = received - sent;
        assert!(
            waited < Duration::from_secs(5),
            "the parked fetch answered {waited:?} after the produce"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_out_of_range_reaches_the_consumer() {
    let broker = TestBroker::start();
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("oor");
    create_topic(&bootstrap, &topic, 1, &[]).await;
    let producer = producer(&bootstrap, &[]);
    for i in 0..5 {
        producer
            .send(
                FutureRecord::<str, _>::to(&topic)
                    .partition(0)
                    .payload(&format!("r{i}")),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("record delivered");
    }

    // On the wire: past the end is OFFSET_OUT_OF_RANGE; at the end is an
    // empty, error-free answer.
    let mut conn = RawConn::connect(broker.addr()).unwrap();
    let past = raw_fetch(&mut conn, &topic, 0, 100, 0).expect("Fetch past the end");
    assert_eq!(past.error_code, 1, "OFFSET_OUT_OF_RANGE");
    let at_end = raw_fetch(&mut conn, &topic, 0, 5, 0).expect("Fetch at the end");
    assert_eq!(at_end.error_code, 0);
    assert_eq!(at_end.high_watermark, 5);
    assert!(at_end.records.as_ref().is_none_or(|r| r.is_empty()));

    // Through librdkafka: with auto.offset.reset=error the consumer reports
    // the failed fetch instead of resetting.
    let consumer = consumer(&bootstrap, &[("auto.offset.reset", "error")]);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(100))
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    loop {
        assert!(Instant::now() < deadline, "the consumer reported no error");
        match consumer.poll(Duration::from_millis(200)) {
            None => continue,
            Some(Ok(m)) => panic!("consumed offset {} past the end", m.offset()),
            Some(Err(KafkaError::MessageConsumption(code))) => {
                assert!(
                    matches!(
                        code,
                        RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange
                    ),
                    "unexpected consumer error {code:?}"
                );
                break;
            }
            Some(Err(e)) => panic!("unexpected consumer error {e}"),
        }
    }
}
