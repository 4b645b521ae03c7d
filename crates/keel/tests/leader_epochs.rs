//! OffsetForLeaderEpoch: where each leader epoch ends in the leader's log,
//! asked on the wire, and asked by librdkafka to validate a consumer's
//! position after the partition's leader changes (KIP-320).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::cluster::TestCluster;
use common::*;
use kafka_protocol::messages::delete_records_request::{
    DeleteRecordsPartition, DeleteRecordsTopic,
};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::{
    BrokerId, DeleteRecordsRequest, ListOffsetsRequest, OffsetForLeaderEpochRequest,
    ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};

/// Kafka error codes.
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const NOT_LEADER_OR_FOLLOWER: i16 = 6;
const FENCED_LEADER_EPOCH: i16 = 74;
const UNKNOWN_LEADER_EPOCH: i16 = 75;

/// How long electing a new leader may take on a loaded machine.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);

/// One partition's answer: (error code, leader epoch, end offset).
type Answer = (i16, i32, i64);

fn name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

/// OffsetForLeaderEpoch at `version` for one partition, as a consumer.
fn ask(
    conn: &mut RawConn,
    version: i16,
    topic: &str,
    partition: i32,
    current_leader_epoch: i32,
    leader_epoch: i32,
) -> Answer {
    let request = OffsetForLeaderEpochRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![OffsetForLeaderTopic::default()
            .with_topic(name(topic))
            .with_partitions(vec![OffsetForLeaderPartition::default()
                .with_partition(partition)
                .with_current_leader_epoch(current_leader_epoch)
                .with_leader_epoch(leader_epoch)])]);
    let response = conn
        .request(version, &request)
        .unwrap_or_else(|e| panic!("OffsetForLeaderEpoch v{version}: {e}"));
    assert_eq!(response.topics.len(), 1, "{response:?}");
    assert_eq!(response.topics[0].topic.0.as_str(), topic);
    let p = &response.topics[0].partitions[0];
    assert_eq!(p.partition, partition);
    (p.error_code, p.leader_epoch, p.end_offset)
}

/// Waits until `topic`-0 has a leader under an epoch newer than `after`
/// (creating the topic on first use) and returns that epoch.
fn leader_epoch_after(broker: &TestBroker, topic: &str, after: i32) -> i32 {
    let mut epoch = -1;
    wait_until(
        "the partition has a leader in a new epoch",
        CLIENT_TIMEOUT,
        || {
            let Ok(mut conn) = RawConn::connect(broker.addr()) else {
                return false;
            };
            let Ok(t) = conn.metadata_topic(topic, true) else {
                return false;
            };
            let Some(p) = t.partitions.first().filter(|_| t.error_code == 0) else {
                return false;
            };
            epoch = p.leader_epoch;
            p.leader_id.0 >= 0 && epoch > after
        },
    );
    epoch
}

/// Appends `records` one-byte records in one batch.
fn produce(conn: &mut RawConn, topic: &str, records: usize) {
    let values: Vec<KeyValue> = (0..records).map(|_| (None, Some(&b"v"[..]))).collect();
    let response: ProduceResponse = conn
        .request(9, &produce_request(topic, encode_batch(&values)))
        .expect("Produce v9");
    assert_eq!(response.responses[0].partition_responses[0].error_code, 0);
}

#[test]
fn offset_for_leader_epoch_answers_where_each_epoch_ends() {
    let mut broker = TestBroker::start();
    let topic = unique_topic("epochs");
    let first = leader_epoch_after(&broker, &topic, -1);
    let mut conn = RawConn::connect(broker.addr()).unwrap();
    for _ in 0..3 {
        produce(&mut conn, &topic, 2);
    }
    for version in 2..=4 {
        // The latest epoch ends at the log end.
        assert_eq!(
            ask(&mut conn, version, &topic, 0, first, first),
            (0, first, 6)
        );
        // No current epoch given (-1): nothing to fence.
        assert_eq!(ask(&mut conn, version, &topic, 0, -1, first), (0, first, 6));
        // An epoch the log has never seen: undefined, without error.
        assert_eq!(
            ask(&mut conn, version, &topic, 0, first, first + 5),
            (0, -1, -1)
        );
        // The client knows a newer leader than this broker does.
        assert_eq!(
            ask(&mut conn, version, &topic, 0, first + 1, first),
            (UNKNOWN_LEADER_EPOCH, -1, -1)
        );
        assert_eq!(
            ask(&mut conn, version, "no-such-topic", 0, -1, first),
            (UNKNOWN_TOPIC_OR_PARTITION, -1, -1)
        );
        assert_eq!(
            ask(&mut conn, version, &topic, 7, -1, first),
            (UNKNOWN_TOPIC_OR_PARTITION, -1, -1)
        );
    }

    // A restart elects the lone broker again in a new epoch, which starts
    // at the log end before anything is written in it.
    broker.restart();
    let second = leader_epoch_after(&broker, &topic, first);
    let mut conn = RawConn::connect(broker.addr()).unwrap();
    wait_until("the broker leads in the new epoch", CLIENT_TIMEOUT, || {
        ask(&mut conn, 4, &topic, 0, second, second).0 == 0
    });
    assert_eq!(ask(&mut conn, 4, &topic, 0, second, first), (0, first, 6));
    assert_eq!(ask(&mut conn, 4, &topic, 0, second, second), (0, second, 6));
    // A client still on the old epoch is fenced.
    assert_eq!(
        ask(&mut conn, 4, &topic, 0, first, first),
        (FENCED_LEADER_EPOCH, -1, -1)
    );
    produce(&mut conn, &topic, 2);
    assert_eq!(ask(&mut conn, 4, &topic, 0, second, first), (0, first, 6));
    assert_eq!(ask(&mut conn, 4, &topic, 0, second, second), (0, second, 8));
    assert_eq!(
        ask(&mut conn, 4, &topic, 0, second, second + 1),
        (0, -1, -1)
    );

    // Once DeleteRecords removes every record, the first epoch is older
    // than any the log keeps: it is answered with itself and the start of
    // the oldest one left.
    let request = DeleteRecordsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(vec![DeleteRecordsTopic::default()
            .with_name(name(&topic))
            .with_partitions(vec![DeleteRecordsPartition::default()
                .with_partition_index(0)
                .with_offset(8)])]);
    let deleted = conn.request(2, &request).expect("DeleteRecords v2");
    assert_eq!(
        deleted.topics[0].partitions[0].low_watermark, 8,
        "{deleted:?}"
    );
    assert_eq!(ask(&mut conn, 4, &topic, 0, second, first), (0, first, 8));
    assert_eq!(ask(&mut conn, 4, &topic, 0, second, second), (0, second, 8));
    assert_serving(&mut broker);
}

/// librdkafka's log lines, kept for the test to read.
#[derive(Clone, Default)]
struct LogLines(Arc<Mutex<Vec<String>>>);

impl ClientContext for LogLines {
    fn log(&self, _level: RDKafkaLogLevel, fac: &str, line: &str) {
        self.0.lock().unwrap().push(format!("{fac} {line}"));
    }
}

impl ConsumerContext for LogLines {}

/// Polls `consumer` until `n` records arrived. Losing the connection to
/// the dead leader is expected; any other consumer error fails.
fn read(consumer: &BaseConsumer<LogLines>, n: usize) -> Vec<String> {
    let mut values = Vec::new();
    let deadline = std::time::Instant::now() + FAILOVER_TIMEOUT;
    while values.len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "read {} of {n} records: {values:?}",
            values.len()
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                values.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned())
            }
            Some(Err(KafkaError::MessageConsumption(
                RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown,
            ))) => {}
            Some(Err(e)) => panic!("consumer error: {e}"),
            None => {}
        }
    }
    values
}

/// A consumer reading when its partition's leader dies finds a new leader
/// in a new epoch, checks with it that its position was not truncated
/// away (OffsetForLeaderEpoch), and reads on without a gap, a repeat or a
/// reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_validates_its_position_with_a_new_leader() {
    let mut cluster = TestCluster::start(3, &[]);
    let topic = unique_topic("kip320");
    cluster.create_topic_via_retrying(1, &topic, 1, 3, FAILOVER_TIMEOUT);
    let mut leader = -1;
    wait_until("the partition has a leader", FAILOVER_TIMEOUT, || {
        leader = cluster.node_of_leader(&topic, 0).unwrap_or(-1);
        leader >= 0
    });
    let send_all = |bootstrap: String, values: Vec<String>| {
        let topic = topic.clone();
        async move {
            let producer = producer(&bootstrap, &[("acks", "all")]);
            for value in values {
                let record = FutureRecord::<(), str>::to(&topic)
                    .partition(0)
                    .payload(&value);
                producer
                    .send(record, Duration::from_secs(20))
                    .await
                    .unwrap_or_else(|(e, _)| panic!("producing {value}: {e}"));
            }
        }
    };
    let before: Vec<String> = (0..10).map(|i| format!("before-{i}")).collect();
    send_all(cluster.bootstrap(), before.clone()).await;

    let lines = LogLines::default();
    let mut config = client_config(&cluster.bootstrap());
    config
        .set("group.id", "kip320")
        .set("enable.auto.commit", "false")
        // A detected truncation would reset the position: make it an error.
        .set("auto.offset.reset", "error")
        .set("fetch.wait.max.ms", "100")
        .set("topic.metadata.refresh.interval.ms", "1000")
        .set("debug", "fetch")
        .set_log_level(RDKafkaLogLevel::Debug);
    let consumer: BaseConsumer<LogLines> = config
        .create_with_context(lines.clone())
        .expect("creating a consumer");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(&topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    assert_eq!(read(&consumer, 10), before);

    cluster.kill(leader);
    wait_until("a survivor leads the partition", FAILOVER_TIMEOUT, || {
        cluster
            .node_of_leader(&topic, 0)
            .is_some_and(|l| l != leader)
    });
    // Only the leader answers; a follower sends the asker there.
    let new_leader = cluster.node_of_leader(&topic, 0).unwrap();
    let follower = cluster.running().find(|&id| id != new_leader).unwrap();
    let mut conn = RawConn::connect(cluster.node(follower).addr()).unwrap();
    assert_eq!(
        ask(&mut conn, 4, &topic, 0, -1, 0),
        (NOT_LEADER_OR_FOLLOWER, -1, -1)
    );
    // So does ListOffsets, for a consumer and a follower alike.
    for replica_id in [-1, follower] {
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(replica_id))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(name(&topic))
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(0)
                    .with_timestamp(-1)])]);
        let response = conn.request(7, &request).expect("ListOffsets v7");
        let answer = &response.topics[0].partitions[0];
        assert_eq!(answer.error_code, NOT_LEADER_OR_FOLLOWER, "{response:?}");
    }
    let after: Vec<String> = (0..10).map(|i| format!("after-{i}")).collect();
    send_all(cluster.bootstrap(), after.clone()).await;
    assert_eq!(read(&consumer, 10), after);
    // Nothing more: no record came twice.
    assert!(consumer.poll(Duration::from_millis(500)).is_none());

    let lines = lines.0.lock().unwrap();
    // Epoch 0 ends at offset 10, where the new leader's epoch starts.
    let validated = lines.iter().any(|l| {
        l.contains(
            "offset and epoch validation succeeded: broker end offset 10 (offset leader epoch 0)",
        )
    });
    let tail = &lines[lines.len().saturating_sub(100)..];
    assert!(
        validated,
        "librdkafka never validated its position with the new leader:\n{}",
        tail.join("\n")
    );
}
