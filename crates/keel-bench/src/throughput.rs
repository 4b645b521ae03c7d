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

use crate::latency;

/// How long librdkafka may take to initialise or commit a transaction.
pub const TXN_TIMEOUT: Duration = Duration::from_secs(60);

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
    producer_with(bootstrap, acks, queue_kbytes, &[])
}

/// [`producer`], with `settings` set last (so they win): e.g.
/// `enable.idempotence=true`, or a `transactional.id`.
fn producer_with(
    bootstrap: &str,
    acks: &str,
    queue_kbytes: u32,
    settings: &[(&str, &str)],
) -> Result<(ThreadedProducer<Counting>, Arc<Delivered>)> {
    let delivered = Arc::new(Delivered::default());
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("acks", acks)
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", queue_kbytes.to_string())
        .set("enable.idempotence", "false");
    for (k, v) in settings {
        config.set(*k, *v);
    }
    let producer = config.create_with_context(Counting(delivered.clone()))?;
    Ok((producer, delivered))
}

/// Waits until every record sent so far is acknowledged (or has failed), as
/// [`Producer::flush`] does but promptly: rdkafka's flush polls in steps of
/// up to 100 ms that end only at their deadline, so a flush that has to
/// wait at all takes 100 ms or more, and `commit_transaction` begins with
/// one. A `ThreadedProducer`'s own thread serves the delivery reports
/// meanwhile, which librdkafka's flush waits for.
pub fn flush_promptly<C: ProducerContext + 'static>(
    producer: &ThreadedProducer<C>,
    timeout: Duration,
) -> Result<()> {
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: the handle is valid while `producer` lives, and librdkafka's
    // flush may be called from any thread.
    let err =
        unsafe { rdkafka::bindings::rd_kafka_flush(producer.client().native_ptr(), timeout_ms) };
    match RDKafkaErrorCode::from(err) {
        RDKafkaErrorCode::NoError => Ok(()),
        e => bail!("flush failed: {e}"),
    }
}

/// Commits the producer's transaction, after [`flush_promptly`] (so that
/// `commit_transaction`'s own flush finds nothing to wait for); returns how
/// long that took, flush included.
pub fn commit<C: ProducerContext + 'static>(producer: &ThreadedProducer<C>) -> Result<Duration> {
    let begun = Instant::now();
    flush_promptly(producer, TXN_TIMEOUT)?;
    producer.commit_transaction(TXN_TIMEOUT)?;
    Ok(begun.elapsed())
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

/// How a throughput run's producer writes.
#[derive(Clone, Copy, Debug)]
pub enum Mode<'a> {
    /// `enable.idempotence=false`, as the log suite has always measured.
    Plain,
    /// `enable.idempotence=true` (librdkafka requires acks=all then).
    Idempotent,
    /// A transactional producer with `transactional.id` `id`: initialised
    /// before the clock starts, then begin, `records_per_txn` records, commit.
    Transactional { id: &'a str, records_per_txn: usize },
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
    produce_as(
        bootstrap,
        topic,
        partitions,
        count,
        record_bytes,
        acks,
        Mode::Plain,
    )
}

/// [`produce`], with the producer writing as `mode` says. A transactional
/// run's figures add the transactions' count and how long their commits
/// took ([`commit`]: waiting for the transaction's records to be
/// acknowledged, then `commit_transaction`). Runs other than `Plain` end
/// with [`flush_promptly`], as their commits do.
pub fn produce_as(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    count: usize,
    record_bytes: usize,
    acks: &str,
    mode: Mode<'_>,
) -> Result<Value> {
    let settings: &[(&str, &str)] = match mode {
        Mode::Plain => &[],
        Mode::Idempotent => &[("enable.idempotence", "true")],
        Mode::Transactional { id, .. } => {
            &[("enable.idempotence", "true"), ("transactional.id", id)]
        }
    };
    let (producer, delivered) = producer_with(bootstrap, acks, 1_048_576, settings)?;
    // Create the topic and learn its leader before the clock starts, so the
    // figure is the steady-state rate rather than client start-up.
    producer
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let records_per_txn = match mode {
        Mode::Transactional {
            records_per_txn, ..
        } => {
            producer.init_transactions(TXN_TIMEOUT)?;
            Some(records_per_txn.max(1))
        }
        _ => None,
    };
    let payload = vec![b'x'; record_bytes];
    let mut commits = Vec::new();
    let start = Instant::now();
    let mut partition = 0;
    for i in 0..count {
        if records_per_txn.is_some_and(|n| i % n == 0) {
            producer.begin_transaction()?;
        }
        send(
            &producer,
            BaseRecord::<(), [u8]>::to(topic)
                .payload(&payload[..])
                .partition(partition),
        )?;
        partition = (partition + 1) % partitions.max(1);
        if records_per_txn.is_some_and(|n| (i + 1) % n == 0 || i + 1 == count) {
            commits.push(commit(&producer)?.as_micros() as u64);
        }
    }
    match mode {
        // As the log suite has always measured.
        Mode::Plain => producer.flush(Duration::from_secs(120))?,
        _ => flush_promptly(&producer, Duration::from_secs(120))?,
    }
    let elapsed = start.elapsed();
    let failed = delivered.failed.load(Ordering::Relaxed);
    if failed > 0 || delivered.ok.load(Ordering::Relaxed) != count as u64 {
        bail!("{failed} of {count} records failed");
    }
    let mut figures = figures(count, record_bytes, elapsed);
    if let Some(n) = records_per_txn {
        commits.sort_unstable();
        figures["records_per_txn"] = json!(n);
        figures["transactions"] = json!(commits.len());
        figures["commit_p50_ms"] = json!(latency::millis_at(&commits, 0.50));
        figures["commit_p99_ms"] = json!(latency::millis_at(&commits, 0.99));
        figures["commit_max_ms"] = json!(latency::millis_at(&commits, 1.0));
    }
    Ok(figures)
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
