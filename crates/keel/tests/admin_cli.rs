//! The admin CLI against a real broker: `keel config describe|alter`,
//! `keel topic alter`, `keel records delete` and what `keel topic describe`
//! shows of them.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_topic_and_records_commands_change_the_broker() {
    let broker = TestBroker::start();
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("cli-admin");
    create_topic(&bootstrap, &topic, 1, &[]).await;
    let producer = producer(&bootstrap, &[]);
    for i in 0..10 {
        send(&producer, &topic, 0, Some("k"), &format!("v{i}")).await;
    }

    // Topic configs: set (a list in brackets), describe, delete.
    let topic_entity = ["--entity-type", "topics", "--entity-name", topic.as_str()];
    let alter: Vec<&str> = ["config", "alter"]
        .into_iter()
        .chain(topic_entity)
        .chain([
            "--add-config",
            "retention.ms=3600000,cleanup.policy=[compact,delete]",
        ])
        .collect();
    keel_cli_ok(&bootstrap, &alter);
    let configs = topic_configs(&bootstrap, &topic).await;
    assert_eq!(configs["retention.ms"].0.as_deref(), Some("3600000"));
    assert_eq!(
        configs["cleanup.policy"].0.as_deref(),
        Some("compact,delete")
    );
    let describe: Vec<&str> = ["config", "describe"]
        .into_iter()
        .chain(topic_entity)
        .collect();
    let out = keel_cli_ok(&bootstrap, &describe);
    assert!(
        out.contains("retention.ms=3600000 sensitive=false synonyms={DYNAMIC_TOPIC_CONFIG:retention.ms=3600000"),
        "{out}"
    );
    let delete: Vec<&str> = ["config", "alter"]
        .into_iter()
        .chain(topic_entity)
        .chain(["--delete-config", "retention.ms"])
        .collect();
    keel_cli_ok(&bootstrap, &delete);
    assert!(!keel_cli_ok(&bootstrap, &describe).contains("retention.ms="));

    // A refused change exits non-zero with Kafka's error name.
    let refused = keel_cli(
        &bootstrap,
        &[
            "config",
            "alter",
            "--entity-type",
            "brokers",
            "--entity-name",
            "1",
            "--add-config",
            "listeners=PLAINTEXT://:1",
        ],
    );
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("INVALID_REQUEST"), "{stderr}");

    // Broker-wide defaults.
    keel_cli_ok(
        &bootstrap,
        &[
            "config",
            "alter",
            "--entity-type",
            "brokers",
            "--entity-default",
            "--add-config",
            "log.retention.ms=7200000",
        ],
    );
    let out = keel_cli_ok(
        &bootstrap,
        &[
            "config",
            "describe",
            "--entity-type",
            "brokers",
            "--entity-default",
        ],
    );
    assert!(out.contains("log.retention.ms=7200000"), "{out}");

    // More partitions, then records deleted below an offset.
    keel_cli_ok(&bootstrap, &["topic", "alter", &topic, "--partitions", "3"]);
    let refused = keel_cli(&bootstrap, &["topic", "alter", &topic, "--partitions", "2"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("INVALID_PARTITIONS"));
    let out = keel_cli_ok(
        &bootstrap,
        &[
            "records",
            "delete",
            "--topic",
            &topic,
            "--partition",
            "0",
            "--before",
            "4",
        ],
    );
    assert!(
        out.contains(&format!("partition: {topic}-0\tlow_watermark: 4")),
        "{out}"
    );
    assert_eq!(watermarks(&bootstrap, &topic, 0), (4, 10));

    let out = keel_cli_ok(&bootstrap, &["topic", "describe", &topic]);
    assert!(out.contains("PartitionCount: 3"), "{out}");
    assert!(out.contains("CleanupPolicy: compact,delete"), "{out}");
    let partition0 = out
        .lines()
        .find(|l| l.contains("Partition: 0\t"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        partition0.contains("LogStartOffset: 4\tLogEndOffset: 10"),
        "{partition0}"
    );
    let size: u64 = partition0
        .split("SizeOnDisk: ")
        .nth(1)
        .and_then(|s| s.split('\t').next())
        .and_then(|s| s.trim_end_matches(" B").parse().ok())
        .unwrap_or_else(|| panic!("{partition0}"));
    assert!(size > 0, "{partition0}");
    // A compacted topic also shows its cleaner's progress.
    assert!(partition0.contains("\tCleanedBelow: "), "{partition0}");
}
