//! A follower that comes back after the leader's log start moved past its
//! log end: the leader calls its fetch offset out of range, and it drops
//! its log, starts over at the leader's log start, catches up and rejoins
//! the ISR (Kafka's `truncateFullyAndStartAt` on an out-of-range fetch).

mod common;

use std::time::Duration;

use common::cluster::TestCluster;
use common::*;
use kafka_protocol::messages::delete_records_request::{
    DeleteRecordsPartition, DeleteRecordsTopic,
};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{
    BrokerId, DeleteRecordsRequest, ListOffsetsRequest, ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

/// How long an election, a fencing or a catch-up may take on a loaded
/// machine.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Records per produced batch.
const BATCH: usize = 10;
/// Kafka's error code.
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;

fn name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

/// Appends `batches` batches of `BATCH` records to `topic`-0 at `node`,
/// acknowledged by the whole ISR. A node that has not yet taken the
/// partition from the metadata is asked again.
fn produce(cluster: &TestCluster, node: i32, topic: &str, batches: usize) {
    let mut conn = RawConn::connect(cluster.node(node).addr()).unwrap();
    let values: Vec<KeyValue> = (0..BATCH).map(|_| (None, Some(&b"v"[..]))).collect();
    for _ in 0..batches {
        let mut code = -1;
        wait_until("the leader takes a batch", TIMEOUT, || {
            let request = produce_request(topic, encode_batch(&values)).with_acks(-1);
            let response: ProduceResponse = conn.request(9, &request).expect("Produce v9");
            code = response.responses[0].partition_responses[0].error_code;
            code != UNKNOWN_TOPIC_OR_PARTITION
        });
        assert_eq!(code, 0);
    }
}

/// `topic`-0's ISR as node `node` sees it.
fn isr(cluster: &TestCluster, node: i32, topic: &str) -> Vec<i32> {
    cluster
        .metadata_from(node, Some(&[topic]))
        .ok()
        .and_then(|m| m.topics.into_iter().next())
        .and_then(|t| t.partitions.into_iter().next())
        .map(|p| p.isr_nodes.iter().map(|b| b.0).collect())
        .unwrap_or_default()
}

/// The log start and end of `topic`-0 in node `node`'s own log, leader or
/// not: ListOffsets as Kafka's debugging replica (-2), which sees the log
/// end.
fn log_offsets(cluster: &TestCluster, node: i32, topic: &str) -> (i64, i64) {
    let mut conn = RawConn::connect(cluster.node(node).addr()).unwrap();
    let mut at = |timestamp: i64| {
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-2))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(name(topic))
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(0)
                    .with_timestamp(timestamp)])]);
        let response = conn.request(7, &request).expect("ListOffsets v7");
        let p = &response.topics[0].partitions[0];
        assert_eq!(p.error_code, 0, "{response:?}");
        p.offset
    };
    (at(-2), at(-1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_the_leaders_log_start_starts_over_there() {
    let mut cluster = TestCluster::start(3, &[]);
    let topic = unique_topic("catch-up");
    cluster.create_topic_via_retrying(1, &topic, 1, 3, TIMEOUT);
    let mut leader = -1;
    wait_until("the partition has a leader and a full ISR", TIMEOUT, || {
        leader = cluster.node_of_leader(&topic, 0).unwrap_or(-1);
        leader >= 0 && isr(&cluster, leader, &topic).len() == 3
    });
    let follower = cluster.ids().find(|&id| id != leader).unwrap();
    produce(&cluster, leader, &topic, 10); // 0..100, on every replica
    wait_until("the follower has every record", TIMEOUT, || {
        log_offsets(&cluster, follower, &topic) == (0, 100)
    });

    cluster.stop(follower);
    wait_until("the follower leaves the ISR", TIMEOUT, || {
        !isr(&cluster, leader, &topic).contains(&follower)
    });
    produce(&cluster, leader, &topic, 10); // 100..200
                                           // The new log start falls inside the batch 150..160.
    let mut conn = RawConn::connect(cluster.node(leader).addr()).unwrap();
    let request = DeleteRecordsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(vec![DeleteRecordsTopic::default()
            .with_name(name(&topic))
            .with_partitions(vec![DeleteRecordsPartition::default()
                .with_partition_index(0)
                .with_offset(155)])]);
    let deleted = conn.request(2, &request).expect("DeleteRecords v2");
    let p = &deleted.topics[0].partitions[0];
    assert_eq!((p.error_code, p.low_watermark), (0, 155), "{deleted:?}");
    produce(&cluster, leader, &topic, 5); // 200..250

    // Its log ends at 100, below the leader's start at 155: it starts over.
    cluster.restart(follower);
    wait_until("the follower is back in the ISR", TIMEOUT, || {
        isr(&cluster, leader, &topic).contains(&follower)
    });
    wait_until("the follower has the leader's log", TIMEOUT, || {
        log_offsets(&cluster, follower, &topic) == (155, 250)
    });
    assert_eq!(log_offsets(&cluster, leader, &topic), (155, 250));
    // Nothing of its old log is left: its one segment starts at the base
    // of the batch holding the leader's log start.
    let dir = cluster.node(follower).data_dir().join(format!("{topic}-0"));
    let segments: Vec<String> = segment_files(&dir)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(segments, ["00000000000000000150.log"]);
    assert!(
        cluster
            .node(follower)
            .log()
            .contains("the leader's log starts past this follower's log end"),
        "the follower never restarted its log"
    );
}
