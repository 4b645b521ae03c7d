//! Transaction figures, on one broker:
//!
//! 1. Producer throughput of 1 KiB records, acks=all, to a topic of
//!    `--txn-partitions` partitions (records round robin across them): first
//!    an idempotent producer (`enable.idempotence=true`, no transactions),
//!    then a transactional one per `--txn-sizes` entry (`init_transactions`
//!    once, then begin, that many records, commit, until
//!    `--txn-records`), each to a topic of its own with the same layout.
//!    Each transactional run's rate is also given as a share of the
//!    idempotent run's (`ratio_to_idempotent`), and its commits' durations
//!    (`commit_*_ms`: from the transaction's last send until
//!    `commit_transaction` returns, its records' acknowledgements included).
//! 2. End-to-end latency for a read_committed consumer (`latency.rs`): a
//!    transactional producer at `--txn-latency-rate`, committing every
//!    `--txn-latency-records-per-txn` records (`commit_every_ms` apart), to
//!    a topic of the same layout, round robin. Latency is from when each
//!    record was due to be sent (`latency_from`), so a record's wait for the
//!    commit before it, when no record can be sent, counts too.
//!
//! Commits flush with librdkafka's own flush rather than rdkafka's, which
//! takes at least 100 ms whenever it waits (see `throughput::flush_promptly`).
//!
//! The broker needs no settings for this: `__transaction_state` gets its
//! default partition count, and its replication factor is clamped to the
//! one broker.

use anyhow::Result;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use serde_json::{json, Value};

use crate::cluster::figures_or_error;
use crate::compaction::create_topic;
use crate::latency::{self, Producing};
use crate::throughput::{self, Mode};

const RECORD_BYTES: usize = 1024;
const ACKS: &str = "all";
const IDEMPOTENT_TOPIC: &str = "bench-txn-idempotent";
const LATENCY_TOPIC: &str = "bench-txn-latency";

pub struct Options<'a> {
    pub partitions: i32,
    /// Records of each throughput run.
    pub records: usize,
    /// Records per transaction of each transactional throughput run.
    pub sizes: &'a [usize],
    pub latency_rate: u64,
    pub latency_seconds: u64,
    pub latency_records_per_txn: usize,
}

pub fn run(bootstrap: &str, options: &Options) -> Result<Value> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let mut line = json!({
        "suite": "txn",
        "partitions": options.partitions,
        "record_bytes": RECORD_BYTES,
        "acks": ACKS,
    });

    let produce = |topic: &str, mode: Mode| -> Result<Value> {
        create_topic(&admin, topic, options.partitions, 1, &[])?;
        throughput::produce_as(
            bootstrap,
            topic,
            options.partitions,
            options.records,
            RECORD_BYTES,
            ACKS,
            mode,
        )
    };
    let idempotent = produce(IDEMPOTENT_TOPIC, Mode::Idempotent);
    line["idempotent_1KiB"] = figures_or_error(&idempotent);
    for &size in options.sizes {
        let topic = format!("bench-txn-{size}");
        let id = format!("keel-bench-txn-{size}");
        let mut figures = figures_or_error(&produce(
            &topic,
            Mode::Transactional {
                id: &id,
                records_per_txn: size,
            },
        ));
        if let (Ok(base), Some(rate)) = (&idempotent, figures["msgs_per_s"].as_f64()) {
            let ratio = rate / base["msgs_per_s"].as_f64().unwrap_or(f64::NAN);
            figures["ratio_to_idempotent"] = json!((ratio * 1000.0).round() / 1000.0);
        }
        line[format!("txn_{size}_1KiB")] = figures;
    }

    let latency = create_topic(&admin, LATENCY_TOPIC, options.partitions, 1, &[]).and_then(|()| {
        latency::run_with(
            bootstrap,
            &latency::Run {
                topic: LATENCY_TOPIC,
                partitions: options.partitions,
                record_bytes: RECORD_BYTES,
                rate: options.latency_rate,
                seconds: options.latency_seconds,
                producing: Producing::Transactional {
                    id: "keel-bench-txn-latency",
                    records_per_txn: options.latency_records_per_txn,
                },
            },
        )
    });
    line["latency_1KiB_read_committed"] = figures_or_error(&latency);
    Ok(line)
}
