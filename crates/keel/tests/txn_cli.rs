//! `keel txn` against a real broker, with librdkafka's transactional
//! producer: `list` and `describe` show what the transaction coordinator
//! knows, and a transaction left open is found by `find-hanging` and ended
//! by `abort`, after which read_committed consumers read past it.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use rdkafka::producer::Producer;
use serde_json::{json, Value};

/// A small `__transaction_state` with one replica.
const BROKER: &[(&str, &str)] = &[("transaction.state.log.num.partitions", "4")];

/// Runs `keel txn ARGS --bootstrap-server ADDR`; panics unless it exits 0.
fn keel_txn(bootstrap: &str, args: &[&str]) -> String {
    let args: Vec<&str> = std::iter::once("txn").chain(args.iter().copied()).collect();
    keel_cli_ok(bootstrap, &args)
}

/// [`keel_txn`] with `--json`, parsed.
fn keel_txn_json(bootstrap: &str, args: &[&str]) -> Value {
    let args: Vec<&str> = args.iter().copied().chain(["--json"]).collect();
    let out = keel_txn(bootstrap, &args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("keel txn {args:?}: {e}\n{out}"))
}

/// The entry for `id` in `keel txn list --json`.
fn listed(bootstrap: &str, id: &str) -> Value {
    let list = keel_txn_json(bootstrap, &["list"]);
    list.as_array()
        .expect("a list")
        .iter()
        .find(|t| t["transactional_id"] == id)
        .unwrap_or_else(|| panic!("{id} is not listed: {list:#}"))
        .clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn list_and_describe_show_a_committed_transaction() {
    let broker = TestBroker::with(BROKER);
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("txn-cli-committed");
    create_topic(&bootstrap, &topic, 1, &[]).await;
    let id = format!("{topic}-producer");
    let producer = transactional_producer(&bootstrap, &id, &[]);
    producer.begin_transaction().unwrap();
    queue(&producer, &topic, 0, "committed");
    producer.commit_transaction(TXN_TIMEOUT).expect("commit");

    // EndTxn is answered once the commit is decided; the coordinator
    // completes it once the markers are written.
    let mut described = Value::Null;
    wait_until("the transaction is CompleteCommit", CLIENT_TIMEOUT, || {
        described = keel_txn_json(&bootstrap, &["describe", &id]);
        described["state"] == "CompleteCommit"
    });
    assert_eq!(described["transactional_id"], id.as_str(), "{described:#}");
    assert_eq!(described["topic_partitions"], json!({}), "{described:#}");
    let producer_id = described["producer_id"].as_i64().expect("a producer id");
    assert!(producer_id >= 0, "{described:#}");

    let entry = listed(&bootstrap, &id);
    assert_eq!(entry["state"], "CompleteCommit", "{entry:#}");
    assert_eq!(entry["producer_id"], producer_id, "{entry:#}");
    assert_eq!(
        entry["coordinator"], described["coordinator"]["node_id"],
        "{entry:#}"
    );

    let table = keel_txn(&bootstrap, &["list"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().expect("a header").split_whitespace().collect();
    assert_eq!(
        header,
        ["TRANSACTIONAL-ID", "COORDINATOR", "PRODUCER-ID", "STATE"]
    );
    let row: Vec<&str> = lines
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&id.as_str()))
        .unwrap_or_else(|| panic!("{id} is not in the table:\n{table}"));
    let coordinator = entry["coordinator"].to_string();
    let producer_id = producer_id.to_string();
    assert_eq!(
        row,
        [
            id.as_str(),
            coordinator.as_str(),
            producer_id.as_str(),
            "CompleteCommit"
        ]
    );

    // An id no coordinator knows is named as Kafka names the error.
    let unknown = keel_cli(&bootstrap, &["txn", "describe", "no-such-transactional-id"]);
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(!unknown.status.success(), "{stderr}");
    assert!(stderr.contains("TRANSACTIONAL_ID_NOT_FOUND"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_open_transaction_is_described_found_hanging_and_aborted() {
    let broker = TestBroker::with(BROKER);
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("txn-cli-open");
    create_topic(&bootstrap, &topic, 2, &[]).await;
    let id = format!("{topic}-producer");

    // A transaction on both partitions, written and left open, then a
    // non-transactional record after it on each.
    let open = transactional_producer(&bootstrap, &id, &[]);
    open.begin_transaction().unwrap();
    queue(&open, &topic, 0, "open-0");
    queue(&open, &topic, 1, "open-1");
    open.flush(CLIENT_TIMEOUT)
        .expect("the open transaction's records written");
    let plain = producer(&bootstrap, &[]);
    for partition in 0..2 {
        let offset = send(
            &plain,
            &topic,
            partition,
            None,
            &format!("after-{partition}"),
        )
        .await;
        assert_eq!(offset, 1, "partition {partition}");
    }

    let described = keel_txn_json(&bootstrap, &["describe", &id]);
    assert_eq!(described["state"], "Ongoing", "{described:#}");
    assert_eq!(
        described["topic_partitions"],
        json!({ topic.as_str(): [0, 1] }),
        "{described:#}"
    );
    assert!(described["age_ms"].as_i64().unwrap() >= 0, "{described:#}");
    let producer_id = described["producer_id"].as_i64().expect("a producer id");
    let epoch = described["producer_epoch"].as_i64().expect("an epoch");
    let text = keel_txn(&bootstrap, &["describe", &id]);
    assert!(text.contains("Ongoing"), "{text}");
    assert!(text.contains(&format!("{topic}-0,1")), "{text}");
    assert_eq!(listed(&bootstrap, &id)["state"], "Ongoing");

    // Just started: within the default max timeout of 15 minutes.
    let out = keel_txn(&bootstrap, &["find-hanging", "--topic", &topic]);
    assert_eq!(out, "");
    // With a max timeout of 0 every open transaction is overdue.
    let find_all = [
        "find-hanging",
        "--topic",
        &topic,
        "--max-transaction-timeout-ms",
        "0",
    ];
    let hanging = keel_txn_json(&bootstrap, &find_all);
    let rows = hanging.as_array().expect("a list");
    assert_eq!(rows.len(), 2, "{hanging:#}");
    for (partition, row) in rows.iter().enumerate() {
        assert_eq!(row["topic"], topic.as_str(), "{row:#}");
        assert_eq!(row["partition"], partition, "{row:#}");
        assert_eq!(row["producer_id"], producer_id, "{row:#}");
        assert_eq!(row["producer_epoch"], epoch, "{row:#}");
        assert_eq!(row["start_offset"], 0, "{row:#}");
        assert_eq!(row["transactional_id"], id.as_str(), "{row:#}");
        assert_eq!(row["coordinator_state"], "Ongoing", "{row:#}");
        assert_eq!(row["reason"], "overdue", "{row:#}");
    }
    let table = keel_txn(
        &bootstrap,
        &[
            "find-hanging",
            "--topic",
            &topic,
            "--partition",
            "1",
            "--max-transaction-timeout-ms",
            "0",
        ],
    );
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    let cells: Vec<&str> = lines[1].split_whitespace().collect();
    let (producer_id_cell, epoch_cell) = (producer_id.to_string(), epoch.to_string());
    assert_eq!(
        cells[..6],
        [
            topic.as_str(),
            "1",
            producer_id_cell.as_str(),
            epoch_cell.as_str(),
            "-1",
            "0"
        ],
        "{table}"
    );
    assert!(cells.contains(&id.as_str()), "{table}");

    // The open transaction holds read_committed consumers back.
    let before = read_values(
        &bootstrap,
        &topic,
        2,
        "read_committed",
        1,
        Duration::from_secs(3),
    );
    assert!(
        before.is_empty(),
        "read past an open transaction: {before:?}"
    );

    // Abort it: on partition 0 by its start offset, on partition 1 by its
    // producer id and epoch.
    let out = keel_txn(
        &bootstrap,
        &[
            "abort",
            "--topic",
            &topic,
            "--partition",
            "0",
            "--start-offset",
            "0",
        ],
    );
    assert!(out.starts_with("Aborted"), "{out}");
    assert!(out.contains(&format!("producer {producer_id}")), "{out}");
    let out = keel_txn(
        &bootstrap,
        &[
            "abort",
            "--topic",
            &topic,
            "--partition",
            "1",
            "--producer-id",
            &producer_id_cell,
            "--producer-epoch",
            &epoch_cell,
        ],
    );
    assert!(out.starts_with("Aborted"), "{out}");

    // read_committed consumers read past the aborted records.
    let read: BTreeSet<String> =
        read_values(&bootstrap, &topic, 2, "read_committed", 2, CLIENT_TIMEOUT)
            .into_iter()
            .collect();
    let expected = BTreeSet::from(["after-0".to_string(), "after-1".to_string()]);
    assert_eq!(read, expected);

    // The leaders know no open transaction any more.
    assert_eq!(keel_txn(&bootstrap, &find_all), "");
    assert_eq!(keel_txn_json(&bootstrap, &find_all), json!([]));
    let again = keel_cli(
        &bootstrap,
        &[
            "txn",
            "abort",
            "--topic",
            &topic,
            "--partition",
            "0",
            "--start-offset",
            "0",
        ],
    );
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success(), "{stderr}");
    assert!(
        stderr.contains("no open transaction starts at offset 0"),
        "{stderr}"
    );
}
