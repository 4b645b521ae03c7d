//! The admin surface through librdkafka's AdminClient: CreatePartitions,
//! DeleteRecords, AlterConfigs and DescribeConfigs, each taking effect on a
//! live broker without a restart. (IncrementalAlterConfigs and
//! DescribeLogDirs, which librdkafka's Rust binding lacks, are driven by
//! `tests/scripts/admin_surface_test.py` and raw requests here.)

mod common;

use std::time::Duration;

use common::*;
use rdkafka::admin::{AlterConfig, ConfigSource, NewPartitions, ResourceSpecifier};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_partitions_only_grows_and_new_partitions_work() {
    let broker = TestBroker::start();
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("grow");
    create_topic(&bootstrap, &topic, 2, &[]).await;
    let admin = admin(&bootstrap);
    let opts = admin_options();

    let results = admin
        .create_partitions([&NewPartitions::new(&topic, 4)], &opts)
        .await
        .expect("CreatePartitions");
    assert_eq!(results, vec![Ok(topic.clone())]);
    wait_until("the topic has 4 partitions", CLIENT_TIMEOUT, || {
        RawConn::connect(broker.addr())
            .ok()
            .and_then(|mut c| c.metadata_topic(&topic, false).ok())
            .is_some_and(|t| t.partitions.len() == 4)
    });
    let producer = producer(&bootstrap, &[]);
    let offset = send(&producer, &topic, 3, Some("k"), "in a new partition").await;
    assert_eq!(offset, 0);
    let read = consume(&bootstrap, &topic, 3, Offset::Beginning, 1);
    assert_eq!(payload(&read[0]), Some(&b"in a new partition"[..]));

    let other = unique_topic("no-such");
    let cases = [
        (
            NewPartitions::new(&topic, 3),
            RDKafkaErrorCode::InvalidPartitions,
        ),
        (
            NewPartitions::new(&topic, 4),
            RDKafkaErrorCode::InvalidPartitions,
        ),
        (
            NewPartitions::new(&other, 2),
            RDKafkaErrorCode::UnknownTopicOrPartition,
        ),
    ];
    for (request, expected) in cases {
        let results = admin
            .create_partitions([&request], &opts)
            .await
            .expect("CreatePartitions");
        assert!(
            matches!(&results[0], Err((_, code)) if *code == expected),
            "{results:?}, expected {expected:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_records_moves_the_log_start_and_survives_a_crash() {
    let mut broker = TestBroker::start();
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("delete-records");
    // Small segments, so whole segments fall below the new log start.
    create_topic(&bootstrap, &topic, 1, &[("segment.bytes", "1024")]).await;
    let producer = producer(&bootstrap, &[("linger.ms", "0")]);
    for i in 0..100 {
        send(&producer, &topic, 0, None, &format!("record-{i:03}")).await;
    }
    let admin = admin(&bootstrap);
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(&topic, 0, Offset::Offset(40))
        .unwrap();
    let result = admin
        .delete_records(&offsets, &admin_options())
        .await
        .expect("DeleteRecords");
    let element = result.find_partition(&topic, 0).expect("partition 0");
    assert_eq!(element.offset(), Offset::Offset(40));
    assert!(element.error().is_ok(), "{:?}", element.error());
    assert_eq!(watermarks(&bootstrap, &topic, 0), (40, 100));
    let first = consume(&bootstrap, &topic, 0, Offset::Beginning, 1);
    assert_eq!(
        first[0].offset(),
        40,
        "reading from 0 starts at the new log start"
    );

    let mut beyond = TopicPartitionList::new();
    beyond
        .add_partition_offset(&topic, 0, Offset::Offset(101))
        .unwrap();
    let result = admin
        .delete_records(&beyond, &admin_options())
        .await
        .expect("DeleteRecords");
    let error = result.find_partition(&topic, 0).unwrap().error();
    assert!(
        matches!(error, Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::OffsetOutOfRange)),
        "beyond the high watermark"
    );

    broker.kill9_and_restart();
    let bootstrap = broker.bootstrap();
    assert_eq!(
        watermarks(&bootstrap, &topic, 0),
        (40, 100),
        "deleted records came back after a crash"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn altered_retention_deletes_old_segments_without_a_restart() {
    let broker = TestBroker::with(&[("log.retention.check.interval.ms", "200")]);
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("alter-retention");
    let other = unique_topic("broker-retention");
    for t in [&topic, &other] {
        create_topic(&bootstrap, t, 1, &[("segment.bytes", "1024")]).await;
    }
    let producer = producer(&bootstrap, &[("linger.ms", "0")]);
    for i in 0..60 {
        for t in [&topic, &other] {
            send(&producer, t, 0, None, &format!("record-{i:03}")).await;
        }
    }
    let before = partition_sizes(&broker, &topic, vec![0]);
    assert_eq!(before.len(), 1);
    assert!(before[0].1 > 2048, "several segments: {before:?}");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        watermarks(&bootstrap, &topic, 0).0,
        0,
        "nothing expired yet"
    );

    // AlterConfigs replaces the topic's whole set of overrides.
    let admin = admin(&bootstrap);
    let alter = AlterConfig::new(ResourceSpecifier::Topic(&topic)).set("retention.ms", "100");
    let results = admin
        .alter_configs([&alter], &admin_options())
        .await
        .expect("AlterConfigs");
    assert!(results[0].is_ok(), "{results:?}");
    let configs = topic_configs(&bootstrap, &topic).await;
    assert_eq!(
        configs["retention.ms"],
        (
            Some("100".into()),
            format!("{:?}", ConfigSource::DynamicTopic)
        )
    );
    assert_eq!(
        configs["segment.bytes"].1,
        format!("{:?}", ConfigSource::Default),
        "AlterConfigs dropped the override it was not given"
    );
    wait_until("retention deleted the old segments", CLIENT_TIMEOUT, || {
        watermarks(&bootstrap, &topic, 0).0 == 60
    });
    assert_eq!(
        watermarks(&bootstrap, &other, 0).0,
        0,
        "other topics keep theirs"
    );

    // A dynamic broker config reaches every topic without an override.
    let alter = AlterConfig::new(ResourceSpecifier::Broker(1)).set("log.retention.ms", "100");
    let results = admin
        .alter_configs([&alter], &admin_options())
        .await
        .expect("AlterConfigs on the broker");
    assert!(results[0].is_ok(), "{results:?}");
    wait_until(
        "the broker's retention reached the other topic",
        CLIENT_TIMEOUT,
        || watermarks(&bootstrap, &other, 0).0 == 60,
    );
    let configs = topic_configs(&bootstrap, &other).await;
    assert_eq!(
        configs["retention.ms"],
        (
            Some("100".into()),
            format!("{:?}", ConfigSource::DynamicBroker)
        )
    );

    // Refused changes change nothing. (rdkafka's Rust binding reports every
    // AlterConfigs resource as a success, so the error codes are checked by
    // the confluent-kafka script test.)
    for (resource, name, value) in [
        (ResourceSpecifier::Topic(&topic), "retention.ms", "soon"),
        (ResourceSpecifier::Topic(&topic), "no.such.config", "1"),
    ] {
        let alter = AlterConfig::new(resource).set(name, value);
        admin
            .alter_configs([&alter], &admin_options())
            .await
            .expect("AlterConfigs");
    }
    let configs = topic_configs(&bootstrap, &topic).await;
    assert_eq!(configs["retention.ms"].0.as_deref(), Some("100"));
    assert!(!configs.contains_key("no.such.config"));
    assert!(
        broker.log().contains("config change refused"),
        "refusals are logged"
    );
}
