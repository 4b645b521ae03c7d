//! CreateTopics and DeleteTopics through librdkafka's AdminClient (and raw
//! requests where librdkafka has no call).

mod common;

use std::time::Duration;

use common::*;
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::DeleteTopicsRequest;
use rdkafka::admin::{NewTopic, TopicReplication};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::FutureRecord;

/// Kafka's UNKNOWN_TOPIC_OR_PARTITION.
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;

fn has_partition_dirs(broker: &TestBroker, topic: &str) -> bool {
    let prefix = format!("{topic}-");
    std::fs::read_dir(broker.data_dir())
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().starts_with(&prefix))
}

fn metadata_error(broker: &TestBroker, topic: &str) -> i16 {
    RawConn::connect(broker.addr())
        .unwrap()
        .metadata_topic(topic, false)
        .expect("Metadata")
        .error_code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_topics_answers_kafka_errors() {
    let broker = TestBroker::start();
    let bootstrap = broker.bootstrap();
    let admin = admin(&bootstrap);
    let opts = admin_options();
    let name = unique_topic("created");
    let long_name = "l".repeat(250);
    let bad_config = unique_topic("bad-config");
    let zero_partitions = unique_topic("zero-partitions");
    let rf3 = unique_topic("rf3");

    let ok = NewTopic::new(&name, 3, TopicReplication::Fixed(1));
    let results = admin
        .create_topics([&ok], &opts)
        .await
        .expect("CreateTopics");
    assert_eq!(results, vec![Ok(name.clone())]);

    let cases: Vec<(NewTopic<'_>, RDKafkaErrorCode)> = vec![
        (
            NewTopic::new(&name, 3, TopicReplication::Fixed(1)),
            RDKafkaErrorCode::TopicAlreadyExists,
        ),
        (
            NewTopic::new(&zero_partitions, 0, TopicReplication::Fixed(1)),
            RDKafkaErrorCode::InvalidPartitions,
        ),
        (
            NewTopic::new(&rf3, 1, TopicReplication::Fixed(3)),
            RDKafkaErrorCode::InvalidReplicationFactor,
        ),
        (
            NewTopic::new("bad name!", 1, TopicReplication::Fixed(1)),
            RDKafkaErrorCode::InvalidTopic,
        ),
        (
            NewTopic::new("..", 1, TopicReplication::Fixed(1)),
            RDKafkaErrorCode::InvalidTopic,
        ),
        (
            NewTopic::new(&long_name, 1, TopicReplication::Fixed(1)),
            RDKafkaErrorCode::InvalidTopic,
        ),
        (
            NewTopic::new(&bad_config, 1, TopicReplication::Fixed(1)).set("retention.ms", "soon"),
            RDKafkaErrorCode::InvalidConfig,
        ),
    ];
    // All in one request: each topic gets its own answer.
    let results = admin
        .create_topics(cases.iter().map(|(t, _)| t), &opts)
        .await
        .expect("CreateTopics");
    assert_eq!(results.len(), cases.len());
    for (result, (topic, code)) in results.iter().zip(&cases) {
        assert_eq!(
            result,
            &Err((topic.name.to_string(), *code)),
            "creating {:?}",
            topic.name
        );
    }
    for failed in [&zero_partitions, &rf3, &bad_config] {
        assert!(
            !has_partition_dirs(&broker, failed),
            "{failed} left partition dirs"
        );
        assert_eq!(
            metadata_error(&broker, failed),
            UNKNOWN_TOPIC_OR_PARTITION,
            "{failed} exists"
        );
    }
    let existing = RawConn::connect(broker.addr())
        .unwrap()
        .metadata_topic(&name, false)
        .unwrap();
    assert_eq!(
        existing.partitions.len(),
        3,
        "TOPIC_ALREADY_EXISTS changed the topic"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_topics_validate_only_creates_nothing() {
    let broker = TestBroker::start();
    let admin = admin(&broker.bootstrap());
    let name = unique_topic("validate-only");
    let topic = NewTopic::new(&name, 2, TopicReplication::Fixed(1)).set("retention.ms", "60000");
    let results = admin
        .create_topics([&topic], &admin_options().validate_only(true))
        .await
        .expect("CreateTopics");
    assert_eq!(results, vec![Ok(name.clone())]);
    assert_eq!(metadata_error(&broker, &name), UNKNOWN_TOPIC_OR_PARTITION);
    assert!(!has_partition_dirs(&broker, &name));
    // Validation still refuses what creation would.
    let bad = NewTopic::new(&name, 1, TopicReplication::Fixed(5));
    let results = admin
        .create_topics([&bad], &admin_options().validate_only(true))
        .await
        .expect("CreateTopics");
    assert_eq!(
        results,
        vec![Err((
            name.clone(),
            RDKafkaErrorCode::InvalidReplicationFactor
        ))]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_topics_removes_data_from_disk() {
    let mut broker = TestBroker::start();
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("doomed");
    create_topic(&bootstrap, &topic, 2, &[]).await;
    let producer = producer(&bootstrap, &[]);
    for p in 0..2 {
        for i in 0..5 {
            producer
                .send(
                    FutureRecord::<str, _>::to(&topic)
                        .partition(p)
                        .payload(&format!("d{i}")),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("record delivered");
        }
    }
    drop(producer);
    for p in 0..2 {
        let dir = broker.data_dir().join(format!("{topic}-{p}"));
        assert!(
            !segment_files(&dir).is_empty(),
            "{} holds no segment",
            dir.display()
        );
    }
    let old_id = RawConn::connect(broker.addr())
        .unwrap()
        .metadata_topic(&topic, false)
        .unwrap()
        .topic_id;

    let admin = admin(&bootstrap);
    let results = admin
        .delete_topics(&[&topic], &admin_options())
        .await
        .expect("DeleteTopics");
    assert_eq!(results, vec![Ok(topic.clone())]);
    wait_until("the partition dirs are gone", CLIENT_TIMEOUT, || {
        !has_partition_dirs(&broker, &topic)
    });
    assert_eq!(metadata_error(&broker, &topic), UNKNOWN_TOPIC_OR_PARTITION);
    let again = admin
        .delete_topics(&[&topic], &admin_options())
        .await
        .expect("DeleteTopics");
    assert_eq!(
        again,
        vec![Err((
            topic.clone(),
            RDKafkaErrorCode::UnknownTopicOrPartition
        ))]
    );

    // Deletion is in the metadata log: a restart does not bring it back.
    drop(admin);
    broker.restart();
    let bootstrap = broker.bootstrap();
    assert_eq!(metadata_error(&broker, &topic), UNKNOWN_TOPIC_OR_PARTITION);
    assert!(!has_partition_dirs(&broker, &topic));

    // The name can be used again, for a new, empty topic.
    create_topic(&bootstrap, &topic, 1, &[]).await;
    let new_id = RawConn::connect(broker.addr())
        .unwrap()
        .metadata_topic(&topic, false)
        .unwrap()
        .topic_id;
    assert_ne!(new_id, old_id, "a recreated topic gets a new id");
    assert_eq!(watermarks(&bootstrap, &topic, 0), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_topics_by_id() {
    let broker = TestBroker::start();
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("by-id");
    create_topic(&bootstrap, &topic, 1, &[]).await;
    let mut conn = RawConn::connect(broker.addr()).unwrap();
    let id = conn.metadata_topic(&topic, false).unwrap().topic_id;
    let request = DeleteTopicsRequest::default()
        .with_topics(vec![DeleteTopicState::default().with_topic_id(id)])
        .with_timeout_ms(10_000);
    let response = conn.request(6, &request).expect("DeleteTopics v6");
    assert_eq!(response.responses.len(), 1);
    assert_eq!(response.responses[0].error_code, 0);
    assert_eq!(
        response.responses[0].name.as_ref().map(|n| n.0.as_str()),
        Some(topic.as_str())
    );
    wait_until("the partition dir is gone", CLIENT_TIMEOUT, || {
        !has_partition_dirs(&broker, &topic)
    });

    // An id nobody has: UNKNOWN_TOPIC_ID (100).
    let request = DeleteTopicsRequest::default()
        .with_topics(vec![
            DeleteTopicState::default().with_topic_id(uuid::Uuid::new_v4())
        ])
        .with_timeout_ms(10_000);
    let response = conn.request(6, &request).expect("DeleteTopics v6");
    assert_eq!(response.responses[0].error_code, 100);
}
