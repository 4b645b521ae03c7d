//! End-to-end latency at a fixed rate: each record carries a time, and a
//! consumer on its own thread records `receive - time`.
//!
//! A plain producer's records carry their send time. A transactional
//! producer's carry the time they were due: it cannot send while it commits,
//! so records due during a commit wait for it, and that wait is theirs.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};

use crate::throughput::{self, TXN_TIMEOUT};

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The value at quantile `p` of ascending `sorted` microseconds, in ms
/// (NaN, which JSON shows as null, if there are none).
pub fn millis_at(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)] as f64 / 1000.0
}

/// How the latency run's producer writes.
#[derive(Clone, Copy, Debug)]
pub enum Producing<'a> {
    /// Each record as soon as it is due, with `acks`.
    Plain { acks: &'a str },
    /// Transactions of `records_per_txn` records under `transactional.id`
    /// `id` (so idempotent, acks=all), each committed once its last record
    /// is sent; the consumer reads with `isolation.level=read_committed`.
    Transactional { id: &'a str, records_per_txn: usize },
}

/// A latency run: `rate * seconds` records of `record_bytes` to partitions
/// `0..partitions` of `topic`, round robin. With more than one partition the
/// topic must exist already; with one, the first record creates it.
pub struct Run<'a> {
    pub topic: &'a str,
    pub partitions: i32,
    pub record_bytes: usize,
    pub rate: u64,
    pub seconds: u64,
    pub producing: Producing<'a>,
}

/// Records sent before the measured ones, to create the topic and find its
/// leaders, carry this time; the consumer skips them.
const WARM_UP_TIME: u64 = 0;

/// The plain latency run to one partition of `topic`.
pub fn run(
    bootstrap: &str,
    topic: &str,
    record_bytes: usize,
    rate: u64,
    seconds: u64,
    acks: &str,
) -> Result<Value> {
    run_with(
        bootstrap,
        &Run {
            topic,
            partitions: 1,
            record_bytes,
            rate,
            seconds,
            producing: Producing::Plain { acks },
        },
    )
}

pub fn run_with(bootstrap: &str, run: &Run) -> Result<Value> {
    let Run {
        topic,
        partitions,
        record_bytes,
        rate,
        seconds,
        producing,
    } = *run;
    let partitions = partitions.max(1);
    let count = (rate * seconds) as usize;
    let records_per_txn = match producing {
        Producing::Plain { .. } => None,
        Producing::Transactional {
            records_per_txn, ..
        } => Some(records_per_txn.max(1)),
    };
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "0");
    match producing {
        Producing::Plain { acks } => config.set("acks", acks),
        Producing::Transactional { id, .. } => config.set("transactional.id", id),
    };
    let producer: ThreadedProducer<DefaultProducerContext> = config.create()?;
    // Create the topic and learn its leaders before the clock starts: one
    // record to each partition (in a committed transaction, if
    // transactional).
    if records_per_txn.is_some() {
        producer.init_transactions(TXN_TIMEOUT)?;
        producer.begin_transaction()?;
    }
    for partition in 0..partitions {
        producer
            .send(
                BaseRecord::<(), [u8]>::to(topic)
                    .payload(&WARM_UP_TIME.to_be_bytes()[..])
                    .partition(partition),
            )
            .map_err(|(e, _)| e)?;
    }
    if records_per_txn.is_some() {
        throughput::commit(&producer)?;
    } else {
        producer.flush(Duration::from_secs(10))?;
    }

    let consumer_bootstrap = bootstrap.to_string();
    let topic_name = topic.to_string();
    let read_committed = records_per_txn.is_some();
    let consumer = std::thread::spawn(move || -> Result<Vec<u64>> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &consumer_bootstrap)
            .set("group.id", "keel-bench-latency")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "100")
            .set("fetch.min.bytes", "1");
        if read_committed {
            config.set("isolation.level", "read_committed");
        }
        let consumer: BaseConsumer = config.create()?;
        let mut assignment = TopicPartitionList::new();
        for partition in 0..partitions {
            assignment.add_partition_offset(&topic_name, partition, Offset::Beginning)?;
        }
        consumer.assign(&assignment)?;
        let mut latencies = Vec::with_capacity(count);
        let give_up = Instant::now() + Duration::from_secs(seconds + 60);
        while latencies.len() < count && Instant::now() < give_up {
            if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                let message = message?;
                let payload = message.payload().unwrap_or_default();
                if payload.len() >= 8 {
                    let sent = u64::from_be_bytes(payload[..8].try_into().expect("8 bytes"));
                    if sent != WARM_UP_TIME {
                        latencies.push(now_micros().saturating_sub(sent));
                    }
                }
            }
        }
        Ok(latencies)
    });
    // Let the consumer join and fetch once before measuring.
    std::thread::sleep(Duration::from_millis(1000));

    let mut payload = vec![b'x'; record_bytes.max(8)];
    let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let mut commits = Vec::new();
    let start = Instant::now();
    let start_micros = now_micros();
    for i in 0..count {
        if records_per_txn.is_some_and(|n| i % n == 0) {
            producer.begin_transaction()?;
        }
        let since_start = interval * i as u32;
        let due = start + since_start;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let time = match records_per_txn {
            None => now_micros(),
            Some(_) => start_micros + since_start.as_micros() as u64,
        };
        payload[..8].copy_from_slice(&time.to_be_bytes());
        producer
            .send(
                BaseRecord::<(), [u8]>::to(topic)
                    .payload(&payload[..])
                    .partition(i as i32 % partitions),
            )
            .map_err(|(e, _)| e)?;
        if records_per_txn.is_some_and(|n| (i + 1) % n == 0 || i + 1 == count) {
            commits.push(throughput::commit(&producer)?.as_micros() as u64);
        }
    }
    producer.flush(Duration::from_secs(30))?;
    let mut latencies = consumer.join().expect("consumer thread")?;
    if latencies.len() < count {
        bail!(
            "latency run received {} of {count} records",
            latencies.len()
        );
    }
    latencies.sort_unstable();
    let acks = match producing {
        Producing::Plain { acks } => acks,
        Producing::Transactional { .. } => "all",
    };
    let mut figures = json!({
        "rate_per_s": rate,
        "records": count,
        "acks": acks,
        "p50_ms": millis_at(&latencies, 0.50),
        "p99_ms": millis_at(&latencies, 0.99),
        "p999_ms": millis_at(&latencies, 0.999),
        "max_ms": millis_at(&latencies, 1.0),
    });
    if let Some(n) = records_per_txn {
        commits.sort_unstable();
        figures["partitions"] = json!(partitions);
        figures["isolation_level"] = json!("read_committed");
        figures["records_per_txn"] = json!(n);
        figures["commit_every_ms"] = json!(n as f64 * 1000.0 / rate.max(1) as f64);
        figures["latency_from"] = json!("due_time");
        figures["transactions"] = json!(commits.len());
        figures["commit_p50_ms"] = json!(millis_at(&commits, 0.50));
        figures["commit_p99_ms"] = json!(millis_at(&commits, 0.99));
        figures["commit_max_ms"] = json!(millis_at(&commits, 1.0));
    }
    Ok(figures)
}
