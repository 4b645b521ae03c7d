//! Raw bytes no well-behaved client sends: after each, the broker has
//! answered or closed that connection only, is still running, and a fresh
//! connection still gets a good ApiVersions answer.

mod common;

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use kafka_protocol::messages::api_versions_response::ApiVersionsResponse;
use kafka_protocol::messages::produce_response::ProduceResponse;
use kafka_protocol::messages::{
    ApiVersionsRequest, BrokerId, DescribeClusterRequest, DescribeConfigsRequest, FetchRequest,
    InitProducerIdRequest, ListOffsetsRequest, MetadataRequest, OffsetForLeaderEpochRequest,
    ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use rand::{Rng, RngCore, SeedableRng};

/// Kafka error codes these tests expect.
const CORRUPT_MESSAGE: i16 = 2;
const NOT_LEADER_OR_FOLLOWER: i16 = 6;
const UNSUPPORTED_VERSION: i16 = 35;
const INVALID_RECORD: i16 = 87;
const UNSUPPORTED_FOR_MESSAGE_FORMAT: i16 = 43;

/// How long the broker may take to close a connection it should close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A request header v1: api key, version, correlation id, client id.
fn header_v1(api_key: i16, version: i16, correlation_id: i32) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_i16(api_key);
    buf.put_i16(version);
    buf.put_i32(correlation_id);
    put_str(&mut buf, "bad-input");
    buf
}

/// A request header v2: v1 plus an empty tagged-field section.
fn header_v2(api_key: i16, version: i16, correlation_id: i32) -> BytesMut {
    let mut buf = header_v1(api_key, version, correlation_id);
    buf.put_u8(0);
    buf
}

fn put_uvarint(buf: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

/// Sends `bytes` raw (no size prefix added) on a fresh connection.
fn send_raw(broker: &TestBroker, bytes: &[u8]) -> RawConn {
    let mut conn = RawConn::connect(broker.addr()).expect("connecting");
    // The broker may close before reading everything; that is allowed.
    let _ = conn.stream.write_all(bytes);
    conn
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// The broker either closes the connection or answers with a frame for
/// `correlation_id`; anything else (silence, a wrong answer) fails.
fn assert_answered_or_closed(conn: &mut RawConn, correlation_id: i32, what: &str) {
    conn.stream.set_read_timeout(Some(CLOSE_TIMEOUT)).unwrap();
    let mut size = [0u8; 4];
    match conn.stream.read_exact(&mut size) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            panic!("{what}: the broker neither answered nor closed within {CLOSE_TIMEOUT:?}")
        }
        Err(_) => {} // closed
        Ok(()) => {
            let size = i32::from_be_bytes(size);
            assert!(
                (4..1 << 20).contains(&size),
                "{what}: answer of {size} bytes"
            );
            let mut body = vec![0u8; size as usize];
            conn.stream
                .read_exact(&mut body)
                .expect("reading the answer");
            let got = i32::from_be_bytes(body[..4].try_into().unwrap());
            assert_eq!(got, correlation_id, "{what}: answer for another request");
        }
    }
}

fn assert_closed(conn: &mut RawConn, what: &str) {
    assert!(
        conn.closed_within(CLOSE_TIMEOUT),
        "{what}: the broker kept the connection open"
    );
}

/// Re-seals a hand-edited batch, so only the edit (not the CRC) is wrong.
fn reseal(batch: &mut BytesMut) {
    let crc = crc32c(&batch[21..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}

#[test]
fn old_formats_and_malformed_records_get_kafkas_errors() {
    let mut broker = TestBroker::start();
    let topic = unique_topic("bad-format");
    ensure_topic(&broker, &topic);
    let mut conn = RawConn::connect(broker.addr()).unwrap();
    let good = encode_batch(&[(Some(b"k"), Some(b"v")), (None, Some(b"w"))]);

    // Message format v1 (magic 1): Kafka 4 no longer accepts it.
    let mut old_magic = BytesMut::from(&good[..]);
    old_magic[16] = 1;
    assert_eq!(
        produce(&mut conn, &topic, old_magic.freeze()).0,
        UNSUPPORTED_FOR_MESSAGE_FORMAT,
        "magic 1"
    );
    // The header claims three records but the body holds two; the CRC is
    // right, so only record validation can catch it.
    let mut miscounted = BytesMut::from(&good[..]);
    miscounted[57..61].copy_from_slice(&3i32.to_be_bytes());
    miscounted[23..27].copy_from_slice(&2i32.to_be_bytes());
    reseal(&mut miscounted);
    assert_eq!(
        produce(&mut conn, &topic, miscounted.freeze()).0,
        INVALID_RECORD,
        "record count beyond the records"
    );

    // Nothing was appended, and the connection still works.
    assert_eq!(produce(&mut conn, &topic, good.clone()), (0, 0));
    assert_serving(&mut broker);
}

/// A Fetch that names a replica id the partition does not have is refused,
/// as Kafka refuses it: only followers may read above the high watermark.
#[test]
fn a_fetch_from_a_broker_that_is_no_replica_is_refused() {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    let mut broker = TestBroker::start();
    let topic = unique_topic("not-a-replica");
    ensure_topic(&broker, &topic);
    let mut conn = RawConn::connect(broker.addr()).unwrap();
    let batch = encode_batch(&[(Some(b"key"), Some(b"value"))]);
    assert_eq!(produce(&mut conn, &topic, batch).0, 0);
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(7))
        .with_max_wait_ms(10)
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.clone())))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])]);
    let response = conn.request(12, &request).expect("Fetch v12");
    let partition = &response.responses[0].partitions[0];
    assert_eq!(partition.error_code, NOT_LEADER_OR_FOLLOWER);
    assert!(partition.records.as_ref().is_none_or(|r| r.is_empty()));
    assert_serving(&mut broker);
}

/// Creates `topic` by Metadata auto-creation and waits for its leader.
fn ensure_topic(broker: &TestBroker, topic: &str) {
    wait_until("the topic has a leader", CLIENT_TIMEOUT, || {
        let Ok(mut conn) = RawConn::connect(broker.addr()) else {
            return false;
        };
        let Ok(t) = conn.metadata_topic(topic, true) else {
            return false;
        };
        t.error_code == 0 && t.partitions.first().is_some_and(|p| p.leader_id.0 >= 0)
    });
}

fn produce(conn: &mut RawConn, topic: &str, batch: Bytes) -> (i16, i64) {
    let response: ProduceResponse = conn
        .request(9, &produce_request(topic, batch))
        .expect("Produce v9");
    let p = &response.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

#[test]
fn api_versions_v99_gets_a_v0_answer_with_unsupported_version_and_the_api_list() {
    let mut broker = TestBroker::start();
    let mut conn = RawConn::connect(broker.addr()).unwrap();
    // A v99 request as a future client might send it: header v2, a body
    // this broker cannot know.
    let mut frame = header_v2(18, 99, 4242);
    frame.put_slice(&[0x05, b'f', b'u', b't', b'u', 0x02, b'9', 0x00, 0xFF, 0xEE]);
    conn.send_frame(&frame).unwrap();
    let mut answer = conn.read_frame().expect("an answer to ApiVersions v99");
    let header = ResponseHeader::decode(&mut answer, 0).unwrap();
    assert_eq!(header.correlation_id, 4242);
    let response = ApiVersionsResponse::decode(&mut answer, 0).expect("a v0 ApiVersions body");
    assert!(
        answer.is_empty(),
        "{} bytes after the v0 body",
        answer.len()
    );
    assert_eq!(response.error_code, UNSUPPORTED_VERSION);
    let listed = |key: i16| response.api_keys.iter().find(|k| k.api_key == key);
    let api_versions = listed(18).expect("ApiVersions in the list");
    assert_eq!(api_versions.min_version, 0);
    assert!(api_versions.max_version >= 3);
    for key in [0, 1, 2, 3] {
        assert!(listed(key).is_some(), "api {key} missing from the list");
    }
    // As in Kafka, the connection stays open for the client to retry with a
    // version from the list.
    let retry = conn
        .api_versions()
        .expect("ApiVersions v3 on the same connection");
    assert_eq!(retry.api_keys.len(), response.api_keys.len());
    assert_serving(&mut broker);
}

#[test]
fn random_bytes_close_only_their_connection() {
    let mut broker = TestBroker::start();
    let mut bystander = RawConn::connect(broker.addr()).unwrap();
    bystander.api_versions().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xbad);
    for i in 0..30 {
        let mut garbage = vec![0u8; rng.gen_range(1..10_000)];
        rng.fill_bytes(&mut garbage);
        let mut conn = send_raw(&broker, &garbage);
        let _ = conn.stream.shutdown(Shutdown::Write);
        assert_closed(&mut conn, &format!("garbage #{i}"));
    }
    assert_serving(&mut broker);
    bystander
        .api_versions()
        .expect("an open connection is unaffected");
}

#[test]
fn truncated_frames_close_only_their_connection() {
    let mut broker = TestBroker::start();
    let mut bystander = RawConn::connect(broker.addr()).unwrap();
    bystander.api_versions().unwrap();
    let metadata = RawConn::encode_request(
        12,
        1,
        &MetadataRequest::default()
            .with_topics(None)
            .with_allow_auto_topic_creation(false),
    );
    let whole = framed(&metadata);

    // Cut at every point of the frame: mid-size, mid-header, mid-body.
    for cut in [1, 2, 3, 4, 6, 10, whole.len() / 2, whole.len() - 1] {
        let mut conn = send_raw(&broker, &whole[..cut]);
        let _ = conn.stream.shutdown(Shutdown::Write);
        assert_closed(&mut conn, &format!("frame cut at byte {cut}"));
    }
    // A consistent size prefix around a body that ends too soon: the frame
    // is complete, the request inside it is not.
    for keep in [8, 9, metadata.len() - 1] {
        let mut conn = send_raw(&broker, &framed(&metadata[..keep]));
        assert_answered_or_closed(&mut conn, 1, &format!("request cut to {keep} bytes"));
    }
    assert_serving(&mut broker);
    bystander
        .api_versions()
        .expect("an open connection is unaffected");
}

#[test]
fn huge_and_negative_declared_sizes_close_the_connection_at_once() {
    let mut broker = TestBroker::start();
    for size in [104_857_601, 200 * 1024 * 1024, i32::MAX, -1, i32::MIN, 0, 3] {
        let mut bytes = size.to_be_bytes().to_vec();
        bytes.extend_from_slice(&header_v1(18, 0, 1));
        // No half-close: the broker must refuse on the size alone rather
        // than wait for (or allocate) a body that will never come.
        let mut conn = send_raw(&broker, &bytes);
        assert_closed(&mut conn, &format!("declared size {size}"));
        broker.assert_alive();
    }
    assert_serving(&mut broker);
}

#[test]
fn arrays_declaring_2_pow_31_elements_are_refused() {
    let mut broker = TestBroker::start();
    let topic = unique_topic("huge-arrays");
    ensure_topic(&broker, &topic);

    let mut cases: Vec<(String, BytesMut)> = Vec::new();
    for count in [i32::MAX, i32::MIN, -2] {
        // Metadata v1: topics is a classic array (i32 count).
        let mut f = header_v1(3, 1, 1);
        f.put_i32(count);
        put_str(&mut f, &topic);
        cases.push((format!("Metadata v1 with {count} topics"), f));
        // Produce v3: topic_data is a classic array.
        let mut f = header_v1(0, 3, 1);
        f.put_i16(-1); // transactional id: null
        f.put_i16(1); // acks
        f.put_i32(1000); // timeout
        f.put_i32(count);
        cases.push((format!("Produce v3 with {count} topics"), f));
    }
    for count_plus_one in [(1u64 << 31) + 1, u32::MAX as u64] {
        // Metadata v9: topics is a compact array (unsigned varint N+1).
        let mut f = header_v2(3, 9, 1);
        put_uvarint(&mut f, count_plus_one);
        cases.push((format!("Metadata v9 with {} topics", count_plus_one - 1), f));
    }
    for (what, frame) in cases {
        let mut conn = send_raw(&broker, &framed(&frame));
        assert_answered_or_closed(&mut conn, 1, &what);
        broker.assert_alive();
    }

    // A record batch whose header claims 2^31-1 records (CRC made right):
    // refused per partition, nothing appended.
    let mut conn = RawConn::connect(broker.addr()).unwrap();
    let mut batch = BytesMut::from(&encode_batch(&[(None, Some(b"one"))])[..]);
    batch[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
    reseal(&mut batch);
    let (error, _) = produce(&mut conn, &topic, batch.freeze());
    assert!(
        error == CORRUPT_MESSAGE || error == INVALID_RECORD,
        "a batch claiming 2^31-1 records got error {error}"
    );
    let (error, base_offset) = produce(&mut conn, &topic, encode_batch(&[(None, Some(b"good"))]));
    assert_eq!(
        (error, base_offset),
        (0, 0),
        "the bad batch appended something"
    );
    assert_serving(&mut broker);
}

#[test]
fn bad_crcs_in_produce_get_corrupt_message() {
    let mut broker = TestBroker::start();
    let topic = unique_topic("bad-crc");
    ensure_topic(&broker, &topic);
    let mut conn = RawConn::connect(broker.addr()).unwrap();
    let records: &[KeyValue<'_>] = &[
        (Some(b"k1"), Some(b"v1")),
        (None, Some(b"v2")),
        (Some(b"k3"), None),
    ];
    let good = encode_batch(records);
    assert_eq!(
        crc32c(&good[21..]),
        u32::from_be_bytes(good[17..21].try_into().unwrap())
    );

    // The stored CRC is wrong.
    let mut bad_crc = BytesMut::from(&good[..]);
    bad_crc[18] ^= 0x01;
    assert_eq!(
        produce(&mut conn, &topic, bad_crc.freeze()).0,
        CORRUPT_MESSAGE,
        "bad CRC field"
    );
    // The CRC is right for other bytes: a record was changed.
    let mut bad_body = BytesMut::from(&good[..]);
    let last = bad_body.len() - 2;
    bad_body[last] ^= 0x40;
    assert_eq!(
        produce(&mut conn, &topic, bad_body.freeze()).0,
        CORRUPT_MESSAGE,
        "changed record"
    );
    // The attributes are covered by the CRC too.
    let mut bad_attributes = BytesMut::from(&good[..]);
    bad_attributes[22] ^= 0x08;
    assert_eq!(
        produce(&mut conn, &topic, bad_attributes.freeze()).0,
        CORRUPT_MESSAGE,
        "changed attributes"
    );

    // The connection is still usable and nothing was appended.
    assert_eq!(produce(&mut conn, &topic, good.clone()), (0, 0));
    let fetched = raw_fetch(&mut conn, &topic, 0, 0, 0).unwrap();
    assert_eq!(fetched.error_code, 0);
    assert_eq!(fetched.high_watermark, 3);
    let stored = fetched.records.expect("records");
    assert_eq!(stored.len(), good.len());
    // Base offset and partition leader epoch are the broker's to set; from
    // the magic byte on, the batch is served exactly as produced.
    assert_eq!(
        &stored[16..],
        &good[16..],
        "the batch was not served as produced"
    );
    assert_serving(&mut broker);
}

#[test]
fn unknown_apis_and_versions_are_answered_or_closed() {
    let mut broker = TestBroker::start();
    let mut bystander = RawConn::connect(broker.addr()).unwrap();
    bystander.api_versions().unwrap();
    let cases: &[(i16, i16, &str)] = &[
        (9999, 0, "api key 9999"),
        (-5, 0, "api key -5"),
        (i16::MAX, 3, "api key 32767"),
        (33, 1, "AlterConfigs, not implemented"),
        (11, 5, "JoinGroup, not implemented yet"),
        (0, 99, "Produce v99"),
        (1, -1, "Fetch v-1"),
        (3, 500, "Metadata v500"),
    ];
    for &(api_key, version, what) in cases {
        let mut frame = header_v1(api_key, version, 77);
        frame.put_slice(&[0, 0, 0, 0, 0, 0]);
        let mut conn = send_raw(&broker, &framed(&frame));
        assert_answered_or_closed(&mut conn, 77, what);
        broker.assert_alive();
    }
    assert_serving(&mut broker);
    bystander
        .api_versions()
        .expect("an open connection is unaffected");
}

// ---------------------------------------------------------------------------
// Random and mutated frames
// ---------------------------------------------------------------------------

/// Valid requests (header and body, no size prefix) for the fuzz cases to
/// mutate. CreateTopics is left out on purpose: a mutated one can ask for
/// millions of partitions, which is a valid (if unwise) request.
fn seed_frames(topic: &str) -> Vec<Vec<u8>> {
    let name = || TopicName(StrBytes::from_string(topic.to_string()));
    let mut seeds = Vec::new();
    let api_versions = ApiVersionsRequest::default()
        .with_client_software_name(StrBytes::from_static_str("fuzz"))
        .with_client_software_version(StrBytes::from_static_str("1"));
    seeds.push(RawConn::encode_request(3, 1, &api_versions).to_vec());
    seeds.push(RawConn::encode_request(0, 1, &ApiVersionsRequest::default()).to_vec());
    for version in [1, 4, 9, 12] {
        use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
        let request = MetadataRequest::default()
            .with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(name()))
            ]))
            // The flag exists from v4; before that, Metadata never creates.
            .with_allow_auto_topic_creation(version < 4);
        seeds.push(RawConn::encode_request(version, 1, &request).to_vec());
    }
    let batch = encode_batch(&[(Some(b"key"), Some(b"value")), (None, Some(b"v2"))]);
    for version in [3, 9] {
        seeds.push(
            RawConn::encode_request(version, 1, &produce_request(topic, batch.clone())).to_vec(),
        );
    }
    for version in [4, 12] {
        use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(10)
            .with_min_bytes(1)
            .with_max_bytes(1 << 20)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(name())
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(0)
                    .with_partition_max_bytes(1 << 20)])]);
        seeds.push(RawConn::encode_request(version, 1, &request).to_vec());
    }
    {
        use kafka_protocol::messages::list_offsets_request::{
            ListOffsetsPartition, ListOffsetsTopic,
        };
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(name())
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(0)
                    .with_timestamp(-1)])]);
        seeds.push(RawConn::encode_request(7, 1, &request).to_vec());
    }
    for version in [2, 4] {
        use kafka_protocol::messages::offset_for_leader_epoch_request::{
            OffsetForLeaderPartition, OffsetForLeaderTopic,
        };
        let request = OffsetForLeaderEpochRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![OffsetForLeaderTopic::default()
                .with_topic(name())
                .with_partitions(vec![OffsetForLeaderPartition::default()
                    .with_partition(0)
                    .with_current_leader_epoch(0)
                    .with_leader_epoch(0)])]);
        seeds.push(RawConn::encode_request(version, 1, &request).to_vec());
    }
    {
        use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
        let request = DescribeConfigsRequest::default().with_resources(vec![
            DescribeConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from_string(topic.to_string())),
        ]);
        seeds.push(RawConn::encode_request(4, 1, &request).to_vec());
    }
    let init = InitProducerIdRequest::default().with_transaction_timeout_ms(60_000);
    seeds.push(RawConn::encode_request(4, 1, &init).to_vec());
    seeds.extend(transaction_seeds(topic));
    seeds.push(RawConn::encode_request(0, 1, &DescribeClusterRequest::default()).to_vec());
    seeds.extend(leadership_seeds(topic));
    seeds
}

/// ElectLeaders and the reassignment APIs, each about `topic`-0; a
/// mutated target may name brokers that do not exist, or none.
fn leadership_seeds(topic: &str) -> Vec<Vec<u8>> {
    use kafka_protocol::messages::alter_partition_reassignments_request::{
        ReassignablePartition, ReassignableTopic,
    };
    use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
    use kafka_protocol::messages::{
        AlterPartitionReassignmentsRequest, ElectLeadersRequest, ListPartitionReassignmentsRequest,
    };
    let name = || TopicName(StrBytes::from_string(topic.to_string()));
    let elect = ElectLeadersRequest::default()
        .with_election_type(1)
        .with_topic_partitions(Some(vec![TopicPartitions::default()
            .with_topic(name())
            .with_partitions(vec![0])]));
    let reassign = AlterPartitionReassignmentsRequest::default().with_topics(vec![
        ReassignableTopic::default()
            .with_name(name())
            .with_partitions(vec![ReassignablePartition::default()
                .with_partition_index(0)
                .with_replicas(Some(vec![BrokerId(1)]))]),
    ]);
    vec![
        RawConn::encode_request(2, 1, &elect).to_vec(),
        RawConn::encode_request(1, 1, &reassign).to_vec(),
        RawConn::encode_request(0, 1, &ListPartitionReassignmentsRequest::default()).to_vec(),
    ]
}

/// One request of each transaction API, for the fuzzer to mutate.
fn transaction_seeds(topic: &str) -> Vec<Vec<u8>> {
    use kafka_protocol::messages::add_partitions_to_txn_request::{
        AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
    };
    use kafka_protocol::messages::txn_offset_commit_request::{
        TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::write_txn_markers_request::{
        WritableTxnMarker, WritableTxnMarkerTopic,
    };
    use kafka_protocol::messages::*;
    let s = |v: &str| StrBytes::from_string(v.to_string());
    let id = TransactionalId(s("fuzz-txn"));
    let name = TopicName(s(topic));
    let topics = vec![AddPartitionsToTxnTopic::default()
        .with_name(name.clone())
        .with_partitions(vec![0])];
    let mut seeds = vec![
        RawConn::encode_request(
            4,
            1,
            &InitProducerIdRequest::default()
                .with_transactional_id(Some(id.clone()))
                .with_transaction_timeout_ms(60_000),
        ),
        RawConn::encode_request(
            3,
            1,
            &AddPartitionsToTxnRequest::default()
                .with_v3_and_below_transactional_id(id.clone())
                .with_v3_and_below_topics(topics.clone()),
        ),
        RawConn::encode_request(
            4,
            1,
            &AddPartitionsToTxnRequest::default().with_transactions(vec![
                AddPartitionsToTxnTransaction::default()
                    .with_transactional_id(id.clone())
                    .with_verify_only(true)
                    .with_topics(topics),
            ]),
        ),
        RawConn::encode_request(
            3,
            1,
            &AddOffsetsToTxnRequest::default()
                .with_transactional_id(id.clone())
                .with_group_id(GroupId(s("fuzz-group"))),
        ),
        RawConn::encode_request(
            3,
            1,
            &EndTxnRequest::default()
                .with_transactional_id(id.clone())
                .with_committed(true),
        ),
        RawConn::encode_request(
            1,
            1,
            &WriteTxnMarkersRequest::default().with_markers(vec![WritableTxnMarker::default()
                .with_producer_id(ProducerId(1))
                .with_topics(vec![WritableTxnMarkerTopic::default()
                    .with_name(name.clone())
                    .with_partition_indexes(vec![0])])]),
        ),
        RawConn::encode_request(
            3,
            1,
            &TxnOffsetCommitRequest::default()
                .with_transactional_id(id.clone())
                .with_group_id(GroupId(s("fuzz-group")))
                .with_topics(vec![TxnOffsetCommitRequestTopic::default()
                    .with_name(name)
                    .with_partitions(vec![
                        TxnOffsetCommitRequestPartition::default().with_committed_offset(1)
                    ])]),
        ),
        RawConn::encode_request(
            0,
            1,
            &DescribeTransactionsRequest::default().with_transactional_ids(vec![id]),
        ),
        RawConn::encode_request(1, 1, &ListTransactionsRequest::default()),
    ];
    seeds.push(RawConn::encode_request(
        0,
        1,
        &DescribeProducersRequest::default().with_topics(vec![
            describe_producers_request::TopicRequest::default()
                .with_name(TopicName(s(topic)))
                .with_partition_indexes(vec![0]),
        ]),
    ));
    seeds.into_iter().map(|b| b.to_vec()).collect()
}

#[derive(Clone, Debug)]
enum Mutation {
    /// Sets the byte at (position modulo length) to a value.
    Set(usize, u8),
    /// Writes a boundary i32 at (position modulo length).
    Boundary(usize, i32),
    Truncate(usize),
    Insert(usize, Vec<u8>),
}

#[derive(Clone, Debug)]
enum FuzzFrame {
    /// Entirely random bytes, no framing.
    Random(Vec<u8>),
    /// A mutated seed request; with `honest_size` the size prefix matches
    /// the mutated body, otherwise it is the original body's length.
    Mutated {
        seed: usize,
        mutations: Vec<Mutation>,
        honest_size: bool,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let boundary = prop_oneof![
        Just(i32::MAX),
        Just(i32::MIN),
        Just(-1),
        Just(0),
        Just(1 << 30),
        Just(0x7FFF_FFF0),
    ];
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(p, v)| Mutation::Set(p, v)),
        2 => (any::<usize>(), boundary).prop_map(|(p, v)| Mutation::Boundary(p, v)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16)).prop_map(|(p, b)| Mutation::Insert(p, b)),
    ]
}

fn fuzz_frame(seed_count: usize) -> impl Strategy<Value = FuzzFrame> {
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..2048).prop_map(FuzzFrame::Random),
        4 => (0..seed_count, proptest::collection::vec(mutation(), 1..6), proptest::bool::weighted(0.8))
            .prop_map(|(seed, mutations, honest_size)| FuzzFrame::Mutated { seed, mutations, honest_size }),
    ]
}

fn render(frame: &FuzzFrame, seeds: &[Vec<u8>]) -> Vec<u8> {
    match frame {
        FuzzFrame::Random(bytes) => bytes.clone(),
        FuzzFrame::Mutated {
            seed,
            mutations,
            honest_size,
        } => {
            let original = &seeds[*seed];
            let mut body = original.clone();
            for m in mutations {
                let at = |p: usize, len: usize| if len == 0 { 0 } else { p % len };
                match m {
                    Mutation::Set(p, v) => {
                        if !body.is_empty() {
                            let i = at(*p, body.len());
                            body[i] = *v;
                        }
                    }
                    Mutation::Boundary(p, v) => {
                        if body.len() >= 4 {
                            let i = at(*p, body.len() - 3);
                            body[i..i + 4].copy_from_slice(&v.to_be_bytes());
                        }
                    }
                    Mutation::Truncate(p) => {
                        let keep = at(*p, body.len() + 1);
                        body.truncate(keep);
                    }
                    Mutation::Insert(p, bytes) => {
                        let i = at(*p, body.len() + 1);
                        body.splice(i..i, bytes.iter().copied());
                    }
                }
            }
            let size = if *honest_size {
                body.len()
            } else {
                original.len()
            } as i32;
            let mut out = size.to_be_bytes().to_vec();
            out.extend_from_slice(&body);
            out
        }
    }
}

#[test]
fn random_and_mutated_frames_never_take_the_broker_down() {
    let broker = RefCell::new(TestBroker::start());
    let topic = unique_topic("fuzz");
    ensure_topic(&broker.borrow(), &topic);
    let seeds = seed_frames(&topic);
    let config = Config {
        cases: 200,
        failure_persistence: None,
        // A dead broker fails every smaller case too; shrinking would only
        // repeat the failure, so report the first failing frame as it is.
        max_shrink_iters: 0,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let cases_run = std::cell::Cell::new(0usize);
    let result = runner.run(&fuzz_frame(seeds.len()), |frame| {
        cases_run.set(cases_run.get() + 1);
        let bytes = render(&frame, &seeds);
        {
            let b = broker.borrow();
            let mut conn = RawConn::connect(b.addr())
                .map_err(|e| TestCaseError::fail(format!("connect: {e}")))?;
            let _ = conn.stream.write_all(&bytes);
            let _ = conn.stream.shutdown(Shutdown::Write);
            // Whatever the broker answers is fine; only its survival is
            // checked. A short drain lets it finish with the request.
            let _ = conn.closed_within(Duration::from_millis(200));
        }
        let mut b = broker.borrow_mut();
        if !b.is_alive() {
            return Err(TestCaseError::fail(format!(
                "the broker died on frame {:02x?}\n--- broker log ---\n{}",
                bytes,
                b.log_tail(40)
            )));
        }
        let answer = RawConn::connect(b.addr())
            .map_err(anyhow::Error::from)
            .and_then(|mut c| c.api_versions());
        if let Err(e) = answer {
            return Err(TestCaseError::fail(format!(
                "no good ApiVersions after frame {bytes:02x?}: {e}"
            )));
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    assert_eq!(cases_run.get(), 200, "fuzz cases run");
    assert_serving(&mut broker.borrow_mut());
}
