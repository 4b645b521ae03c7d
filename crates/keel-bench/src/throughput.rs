//! Produce and consume throughput with librdkafka's default batching.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, ToBytes};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde_json::{json, Value};

/// Delivery reports so far, counted by librdkafka's polling thread.
#[derive(Default)]
pub struct Delivered {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
}

pub struct Counting(Arc<Delivered>);

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.0.ok.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.0.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

fn figures(count: usize, record_bytes: usize, elapsed: Duration) -> Value {
    let secs = elapsed.as_secs_f64();
    json!({
        "records": count,
        "record_bytes": record_bytes,
        "seconds": (secs * 1000.0).round() / 1000.0,
        "msgs_per_s": (count as f64 / secs).round(),
        "MB_per_s": ((count * record_bytes) as f64 / secs / 1e6 * 10.0).round() / 10.0,
    })
}

/// A producer tuned for throughput (large batches, a short linger), whose
/// deliveries are counted. `queue_kbytes` bounds what librdkafka buffers.
pub fn producer(
    bootstrap: &str,
    acks: &str,
    queue_kbytes: u32,
) -> Result<(ThreadedProducer<Counting>, Arc<Delivered>)> {
    let delivered = Arc::new(Delivered::default());
    let producer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", acks)
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", queue_kbytes.to_string())
        .set("enable.idempotence", "false")
        .create_with_context(Counting(delivered.clone()))?;
    Ok((producer, delivered))
}

/// Sends one record, waiting while librdkafka's queue is full.
pub fn send<K: ToBytes + ?Sized>(
    producer: &ThreadedProducer<Counting>,
    mut record: BaseRecord<'_, K, [u8]>,
) -> Result<()> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                std::thread::sleep(Duration::from_micros(200));
            }
            Err((e, _)) => bail!("produce failed: {e}"),
        }
    }
}

/// Produces `count` records of `record_bytes` to partitions `0..partitions`
/// of `topic`, round robin, and waits for every acknowledgement.
pub fn produce(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    count: usize,
    record_bytes: usize,
    acks: &str,
) -> Result<Value> {
    let (producer, delivered) = producer(bootstrap, acks, 1_048_576)?;
    // Create the topic and learn its leader before the clock starts, so the
    // figure is the steady-state rate rather than client start-up.
    producer
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let payload = vec![b'x'; record_bytes];
    let start = Instant::now();
    let mut partition = 0;
    for _ in 0..count {
        send(
            &producer,
            BaseRecord::<(), [u8]>::to(topic)
                .payload(&payload[..])
                .partition(partition),
        )?;
        partition = (partition + 1) % partitions.max(1);
    }
    producer.flush(Duration::from_secs(120))?;
    let elapsed = start.elapsed();
    let failed = delivered.failed.load(Ordering::Relaxed);
    if failed > 0 || delivered.ok.load(Ordering::Relaxed) != count as u64 {
        bail!("{failed} of {count} records failed");
    }
    Ok(figures(count, record_bytes, elapsed))
}

pub fn consume(bootstrap: &str, topic: &str, count: usize) -> Result<Value> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "keel-bench")
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "10485760")
        .set("queued.max.messages.kbytes", "1048576")
        // librdkafka stops prefetching at 100k queued records by default,
        // which with 100 B records measures its refill pauses, not the broker.
        .set("queued.min.messages", "10000000")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, 0, Offset::Beginning)?;
    consumer.assign(&assignment)?;
    let mut received = 0usize;
    let mut bytes = 0usize;
    // The clock starts at the first record: connecting, the offset lookup
    // and the first fetch's round trip are start-up, not throughput.
    let mut start = None;
    let give_up = Instant::now() + Duration::from_secs(120);
    while received < count {
        if Instant::now() > give_up {
            bail!("consumed only {received} of {count} records");
        }
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            start.get_or_insert_with(Instant::now);
            bytes += message?.payload().map_or(0, <[u8]>::len);
            received += 1;
        }
    }
    let elapsed = start.map_or(Duration::ZERO, |s| s.elapsed());
    Ok(figures(count, bytes / count.max(1), elapsed))
}
