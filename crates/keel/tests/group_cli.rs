//! `keel group describe` and `keel group reset-offsets` against a real
//! broker: a group whose committed offset fell behind retention is reported
//! as having lost records, in the table and in `--json`, and a reset to the
//! earliest offset moves its commit up to the log start.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};

/// Runs `keel group ARGS --bootstrap-server ADDR`; panics unless it exits 0.
fn keel_group(bootstrap: &str, args: &[&str]) -> String {
    let args: Vec<&str> = std::iter::once("group")
        .chain(args.iter().copied())
        .collect();
    keel_cli_ok(bootstrap, &args)
}

/// `keel group describe GROUP --json`, and its entry for `topic`-0.
fn describe_json(bootstrap: &str, group: &str, topic: &str) -> serde_json::Value {
    let out = keel_group(bootstrap, &["describe", group, "--json"]);
    let json: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("describe --json: {e}\n{out}"));
    assert_eq!(json["group"], group, "{json:#}");
    json["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .find(|p| p["topic"] == topic && p["partition"] == 0)
        .unwrap_or_else(|| panic!("no entry for {topic}-0: {json:#}"))
        .clone()
}

fn committed(bootstrap: &str, group: &str, topic: &str) -> Offset {
    let c = consumer(bootstrap, &[("group.id", group)]);
    let mut query = TopicPartitionList::new();
    query.add_partition(topic, 0);
    c.committed_offsets(query, CLIENT_TIMEOUT)
        .expect("OffsetFetch")
        .elements()[0]
        .offset()
}

#[test]
fn describe_reports_records_lost_to_retention_and_reset_to_earliest_recovers() {
    const COMMITTED: i64 = 5;
    let broker = TestBroker::with(&[
        ("log.retention.check.interval.ms", "500"),
        ("group.initial.rebalance.delay.ms", "0"),
        ("offsets.topic.num.partitions", "4"),
    ]);
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("lost");
    let group = format!("{topic}-group");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(create_topic(
        &bootstrap,
        &topic,
        1,
        &[("segment.bytes", "1024"), ("retention.ms", "2000")],
    ));
    let value = |i: usize| format!("r{i:04}-{}", "x".repeat(200));
    let produce = |range: std::ops::Range<usize>| {
        rt.block_on(async {
            let producer = producer(&bootstrap, &[]);
            for i in range {
                producer
                    .send(
                        FutureRecord::<(), _>::to(&topic)
                            .partition(0)
                            .payload(&value(i)),
                        Duration::from_secs(20),
                    )
                    .await
                    .expect("record delivered");
            }
        })
    };
    produce(0..10);

    // A group member reads a few records, commits after the fifth, and
    // leaves.
    {
        let mut config = client_config(&bootstrap);
        config
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "100");
        let member: BaseConsumer = config.create().expect("a group consumer");
        member.subscribe(&[&topic]).expect("subscribe");
        let mut read = 0;
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        while read < COMMITTED {
            assert!(Instant::now() < deadline, "read only {read} records");
            if let Some(m) = member.poll(Duration::from_millis(100)) {
                let m = m.expect("poll");
                assert_eq!(m.offset(), read);
                read += 1;
            }
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Offset(COMMITTED))
            .unwrap();
        member.commit(&tpl, CommitMode::Sync).expect("commit");
    }
    assert_eq!(
        committed(&bootstrap, &group, &topic),
        Offset::Offset(COMMITTED)
    );

    // Many more records, then retention deletes every closed segment: wait
    // until the log start passes the commit and then stays put (only the
    // active segment is left).
    produce(10..200);
    let (mut low, high) = watermarks(&bootstrap, &topic, 0);
    assert_eq!(high, 200);
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut steady_since = Instant::now();
    loop {
        let now = watermarks(&bootstrap, &topic, 0).0;
        if now != low {
            low = now;
            steady_since = Instant::now();
        }
        if low > COMMITTED && steady_since.elapsed() > Duration::from_secs(4) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the log start offset is {low}, not past the commit {COMMITTED} and steady\n--- broker log ---\n{}",
            broker.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let lost = low - COMMITTED;

    let out = keel_group(&bootstrap, &["describe", &group]);
    assert!(out.contains("RECORDS LOST"), "describe:\n{out}");
    assert!(
        out.contains(&format!(
            "RECORDS LOST: {lost} records were deleted by retention before this group read them \
             ({topic}-0: committed offset {COMMITTED}, log start offset {low})"
        )),
        "describe does not report {lost} lost records:\n{out}"
    );
    let p = describe_json(&bootstrap, &group, &topic);
    assert_eq!(p["committed_offset"], COMMITTED, "{p:#}");
    assert_eq!(p["log_start_offset"], low, "{p:#}");
    assert_eq!(p["log_end_offset"], 200, "{p:#}");
    assert_eq!(p["lost"], lost, "{p:#}");
    assert_eq!(p["lag"], 200 - COMMITTED, "{p:#}");
    assert_eq!(watermarks(&bootstrap, &topic, 0), (low, 200));

    // Reset to the earliest offset: the commit moves to the log start and
    // nothing is reported lost any more.
    let plan = keel_group(
        &bootstrap,
        &[
            "reset-offsets",
            &group,
            "--topic",
            &topic,
            "--to-earliest",
            "--execute",
        ],
    );
    assert_eq!(
        committed(&bootstrap, &group, &topic),
        Offset::Offset(low),
        "after reset-offsets:\n{plan}"
    );
    let p = describe_json(&bootstrap, &group, &topic);
    assert_eq!(p["committed_offset"], low, "{p:#}");
    assert_eq!(p["lost"], 0, "{p:#}");
    let out = keel_group(&bootstrap, &["describe", &group]);
    assert!(
        !out.contains("RECORDS LOST"),
        "describe after reset:\n{out}"
    );
}
