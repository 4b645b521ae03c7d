//! `keel-bench`: starts a broker (or uses one given with `--bootstrap`),
//! drives it with librdkafka and prints one JSON line:
//! produce and consume throughput, end-to-end latency percentiles at a fixed
//! rate, and the broker's resident memory afterwards.
//!
//! Figures are measured, never asserted: this is not a test.

mod broker;
mod latency;
mod throughput;

use std::path::PathBuf;

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
}

fn main() -> Result<()> {
    let args = Args::parse();
    let broker = match &args.bootstrap {
        Some(addr) => broker::Broker::external(addr.clone()),
        None => broker::Broker::start(&args.keel, &args.overrides)?,
    };
    let bootstrap = broker.bootstrap().to_string();

    let produce_large =
        throughput::produce(&bootstrap, "bench-1k", args.large_count, 1024, &args.acks)?;
    let consume_large = throughput::consume(&bootstrap, "bench-1k", args.large_count)?;
    let produce_small =
        throughput::produce(&bootstrap, "bench-100b", args.small_count, 100, &args.acks)?;
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
    if let Some((rss, peak)) = broker.rss_mib() {
        line["broker_rss_MiB"] = json!(rss);
        line["broker_peak_rss_MiB"] = json!(peak);
    }
    println!("{line}");
    Ok(())
}
