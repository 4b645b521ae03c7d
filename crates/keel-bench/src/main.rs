//! `keel-bench`: starts a broker (or uses one given with `--bootstrap`),
//! drives it with librdkafka and prints one JSON line:
//! produce and consume throughput, end-to-end latency percentiles at a fixed
//! rate, and the broker's resident memory afterwards; or consumer group
//! figures (`--suite groups`), log cleaner figures (`--suite compaction`),
//! a 3-node cluster's figures against one node's (`--suite cluster`), or
//! transactional produce throughput against idempotent produce's and
//! read_committed end-to-end latency (`--suite txn`).
//!
//! Figures are measured, never asserted: this is not a test.

mod broker;
mod cluster;
mod compaction;
mod groups;
mod latency;
mod throughput;
mod txn;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(about = "Benchmark a Keel broker with librdkafka")]
struct Args {
    /// The keel binary to start (ignored with --bootstrap).
    #[arg(long, default_value = "target/release/keel")]
    keel: PathBuf,
    /// Use a running broker instead of starting one (no RSS figure then).
    #[arg(long)]
    bootstrap: Option<String>,
    /// Extra broker settings, e.g. `--override log.flush.interval.messages=1`.
    #[arg(long = "override", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Records for the 1 KiB throughput run.
    #[arg(long, default_value_t = 100_000)]
    large_count: usize,
    /// Records for the 100 B throughput run.
    #[arg(long, default_value_t = 1_000_000)]
    small_count: usize,
    /// Producer acks for the throughput runs.
    #[arg(long, default_value = "1")]
    acks: String,
    /// Rate of the latency run, records per second.
    #[arg(long, default_value_t = 10_000)]
    latency_rate: u64,
    /// Length of the latency run, seconds.
    #[arg(long, default_value_t = 10)]
    latency_seconds: u64,
    /// Which figures: `log` (produce, consume, latency), `groups`
    /// (rebalance time and commit rate per group protocol), `compaction`
    /// (cleaner throughput, and produce throughput while it cleans),
    /// `cluster` (3 nodes against 1: throughput, latency, failover time) or
    /// `txn` (transactional produce throughput per transaction size, as a
    /// share of idempotent produce's, and read_committed end-to-end latency).
    #[arg(long, default_value = "log")]
    suite: String,
    /// Group protocols for `--suite groups`: classic assignment strategies,
    /// or `consumer` for KIP-848.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "range,cooperative-sticky,consumer"
    )]
    group_protocols: Vec<String>,
    /// The members' `heartbeat.interval.ms` (librdkafka's default if unset).
    #[arg(long)]
    heartbeat_interval_ms: Option<u32>,
    /// Rebalances per group protocol for `--suite groups`, each a new group
    /// of new members; the figures are their medians.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    group_trials: u64,
    /// Also measure `--suite groups` rebalances with members on a second
    /// client, @platformatic/kafka: the directory of its script, after
    /// `npm ci` there (`crates/keel-bench/node`).
    #[arg(long)]
    node_members: Option<PathBuf>,
    /// Size of each compacted log for `--suite compaction`, MiB.
    #[arg(long, default_value_t = 1024)]
    compaction_log_mib: u64,
    /// Distinct keys among the compacted log's records.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    compaction_keys: u64,
    /// Value size of the compacted log's records.
    #[arg(long, default_value_t = 1024)]
    compaction_value_bytes: usize,
    /// How long the produce rate is measured with the cleaner idle, before
    /// the clean and again after it, seconds.
    #[arg(long, default_value_t = 10)]
    compaction_baseline_seconds: u64,
    /// Partitions of the `--suite cluster` throughput topics, on one node
    /// and on the cluster alike.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(i32).range(1..))]
    cluster_partitions: i32,
    /// 1 KiB records of each `--suite cluster` throughput run.
    #[arg(long, default_value_t = 500_000)]
    cluster_records: usize,
    /// Throughput runs on one node and on the cluster; the ratio is of
    /// their medians.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    cluster_runs: u64,
    /// Rate of the cluster's latency run, records per second.
    #[arg(long, default_value_t = 5_000)]
    cluster_latency_rate: u64,
    /// Length of the cluster's latency run, seconds.
    #[arg(long, default_value_t = 20)]
    cluster_latency_seconds: u64,
    /// Longest wait, after the leader is killed, for an acknowledgement.
    #[arg(long, default_value_t = 60)]
    failover_timeout_seconds: u64,
    /// Partitions of each `--suite txn` topic; records are spread round robin.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(i32).range(1..))]
    txn_partitions: i32,
    /// 1 KiB records of each `--suite txn` throughput run (the idempotent
    /// one and each transactional one).
    #[arg(long, default_value_t = 300_000)]
    txn_records: usize,
    /// Records per transaction of the transactional throughput runs, one run
    /// per size.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    txn_sizes: Vec<usize>,
    /// Rate of the `--suite txn` read_committed latency run, records per
    /// second.
    #[arg(long, default_value_t = 5_000)]
    txn_latency_rate: u64,
    /// Length of the read_committed latency run, seconds.
    #[arg(long, default_value_t = 20)]
    txn_latency_seconds: u64,
    /// Records per transaction of the latency run's producer, which commits
    /// once it has sent them (at 5000 records/s, 100 is a commit every 20 ms).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    txn_latency_records_per_txn: u64,
    /// Leave the `--suite cluster` brokers' dirs (data and `stderr.log`) in
    /// place, as after a failure.
    #[arg(long)]
    keep_dirs: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.suite == "cluster" {
        if args.bootstrap.is_some() {
            anyhow::bail!("--suite cluster starts (and kills) its own brokers: drop --bootstrap");
        }
        let line = cluster::run(&cluster::Options {
            keel: &args.keel,
            overrides: &args.overrides,
            partitions: args.cluster_partitions,
            records: args.cluster_records,
            runs: args.cluster_runs as usize,
            latency_rate: args.cluster_latency_rate,
            latency_seconds: args.cluster_latency_seconds,
            failover_timeout: Duration::from_secs(args.failover_timeout_seconds),
            keep_dirs: args.keep_dirs,
        })?;
        println!("{line}");
        return Ok(());
    }
    let mut overrides = args.overrides.clone();
    if args.suite == "groups" {
        // The setting: no initial delay, so the figure is the protocol's.
        overrides.push("group.initial.rebalance.delay.ms=0".into());
    }
    if args.suite == "compaction" {
        // The cleaner looks for work this often (Kafka's default is 15 s),
        // so a clean starts soon after the bench makes a log cleanable.
        overrides.push("log.cleaner.backoff.ms=200".into());
        // The produce topic's retention (see `compaction.rs`) must keep up.
        overrides.push("log.retention.check.interval.ms=1000".into());
    }
    let broker = match &args.bootstrap {
        Some(addr) => broker::Broker::external(addr.clone()),
        None => broker::Broker::start(&args.keel, &overrides)?,
    };
    let bootstrap = broker.bootstrap().to_string();
    if args.suite == "groups" {
        let trials = args.group_trials as usize;
        let mut line = json!({ "overrides": overrides, "heartbeat_interval_ms": args.heartbeat_interval_ms, "groups": groups::run(&bootstrap, &args.group_protocols, args.heartbeat_interval_ms, trials)? });
        if let Some(dir) = &args.node_members {
            line["groups_platformatic_kafka"] =
                groups::run_node(&bootstrap, dir, args.heartbeat_interval_ms, trials)?;
        }
        println!("{line}");
        return Ok(());
    }
    if args.suite == "compaction" {
        let options = compaction::Options {
            log_mib: args.compaction_log_mib,
            keys: args.compaction_keys,
            value_bytes: args.compaction_value_bytes,
            baseline: Duration::from_secs(args.compaction_baseline_seconds),
        };
        let mut line = compaction::run(&broker, &options)?;
        line["overrides"] = json!(overrides);
        add_rss(&mut line, &broker);
        println!("{line}");
        return Ok(());
    }

    if args.suite == "txn" {
        if args.txn_sizes.contains(&0) {
            anyhow::bail!("--txn-sizes: a transaction holds at least one record");
        }
        let options = txn::Options {
            partitions: args.txn_partitions,
            records: args.txn_records,
            sizes: &args.txn_sizes,
            latency_rate: args.txn_latency_rate,
            latency_seconds: args.txn_latency_seconds,
            latency_records_per_txn: args.txn_latency_records_per_txn as usize,
        };
        let mut line = txn::run(&bootstrap, &options)?;
        line["overrides"] = json!(overrides);
        add_rss(&mut line, &broker);
        println!("{line}");
        return Ok(());
    }

    let produce_large = throughput::produce(
        &bootstrap,
        "bench-1k",
        1,
        args.large_count,
        1024,
        &args.acks,
    )?;
    let consume_large = throughput::consume(&bootstrap, "bench-1k", args.large_count)?;
    let produce_small = throughput::produce(
        &bootstrap,
        "bench-100b",
        1,
        args.small_count,
        100,
        &args.acks,
    )?;
    let consume_small = throughput::consume(&bootstrap, "bench-100b", args.small_count)?;
    let latency = latency::run(
        &bootstrap,
        "bench-latency",
        1024,
        args.latency_rate,
        args.latency_seconds,
        "all",
    )?;

    let mut line = json!({
        "overrides": args.overrides,
        "produce_1KiB": produce_large,
        "consume_1KiB": consume_large,
        "produce_100B": produce_small,
        "consume_100B": consume_small,
        "latency_1KiB_acks_all": latency,
    });
    add_rss(&mut line, &broker);
    println!("{line}");
    Ok(())
}

fn add_rss(line: &mut serde_json::Value, broker: &broker::Broker) {
    if let Some((rss, peak)) = broker.rss_mib() {
        line["broker_rss_MiB"] = json!(rss);
        line["broker_peak_rss_MiB"] = json!(peak);
    }
}
