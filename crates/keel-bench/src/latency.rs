//! End-to-end latency at a fixed rate: each record carries its send time,
//! and a consumer on its own thread records `receive - send`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

pub fn run(
    bootstrap: &str,
    topic: &str,
    record_bytes: usize,
    rate: u64,
    seconds: u64,
    acks: &str,
) -> Result<Value> {
    let count = (rate * seconds) as usize;
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", acks)
        .set("linger.ms", "0")
        .create()?;
    // Create the topic and learn its leader before the clock starts.
    producer
        .send(
            BaseRecord::<(), [u8]>::to(topic)
                .payload(&[0u8; 8][..])
                .partition(0),
        )
        .map_err(|(e, _)| e)?;
    producer.flush(Duration::from_secs(10))?;

    let consumer_bootstrap = bootstrap.to_string();
    let topic_name = topic.to_string();
    let consumer = std::thread::spawn(move || -> Result<Vec<u64>> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &consumer_bootstrap)
            .set("group.id", "keel-bench-latency")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "100")
            .set("fetch.min.bytes", "1")
            .create()?;
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(&topic_name, 0, Offset::Offset(1))?;
        consumer.assign(&assignment)?;
        let mut latencies = Vec::with_capacity(count);
        let give_up = Instant::now() + Duration::from_secs(seconds + 60);
        while latencies.len() < count && Instant::now() < give_up {
            if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                let message = message?;
                let payload = message.payload().unwrap_or_default();
                if payload.len() >= 8 {
                    let sent = u64::from_be_bytes(payload[..8].try_into().expect("8 bytes"));
                    latencies.push(now_micros().saturating_sub(sent));
                }
            }
        }
        Ok(latencies)
    });
    // Let the consumer join and fetch once before measuring.
    std::thread::sleep(Duration::from_millis(1000));

    let mut payload = vec![b'x'; record_bytes.max(8)];
    let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let start = Instant::now();
    for i in 0..count {
        let due = start + interval * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        payload[..8].copy_from_slice(&now_micros().to_be_bytes());
        producer
            .send(
                BaseRecord::<(), [u8]>::to(topic)
                    .payload(&payload[..])
                    .partition(0),
            )
            .map_err(|(e, _)| e)?;
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
    let pct = |p: f64| {
        latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)] as f64 / 1000.0
    };
    Ok(json!({
        "rate_per_s": rate,
        "records": count,
        "acks": acks,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "p999_ms": pct(0.999),
        "max_ms": pct(1.0),
    }))
}
