//! Log compaction figures (issue #5): how fast the cleaner cleans a
//! compacted log of `--compaction-log-mib` over `--compaction-keys` distinct
//! keys, and the throughput of a producer writing to another topic while the
//! cleaner runs, as a share of its throughput with the cleaner idle.
//!
//! Two compacted topics are filled with the same records while their
//! `min.cleanable.dirty.ratio` is 1, which keeps the cleaner off them (a
//! log's dirty ratio must exceed it). Their active segments are then rolled,
//! so that every record is cleanable. The first is cleaned with nothing else
//! running. Then a producer writes 1 KiB records to a third, non-compacted
//! topic (acks=1, the log suite's default): its rate is measured for
//! `--compaction-baseline-seconds`, the second compacted topic is made
//! cleanable, the rate is measured from the broker's `beginning cleaning of
//! log` line to its `cleaned log` line, so that the window is the clean
//! itself, and then for `--compaction-baseline-seconds` again. The ratio is
//! to the mean of the rates before and after the clean, which cancels a
//! drift in the machine's speed (other tenants of a shared machine) over
//! the run. The cleaner's figures come from those lines; like Kafka's, its
//! `bytes_read` counts the rewriting pass only, not the pass that builds
//! the offset map.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, Producer};
use serde_json::{json, Value};

use crate::broker::Broker;
use crate::throughput::{self, Delivered};

/// Cleaned alone.
const ALONE_TOPIC: &str = "bench-compact-alone";
/// Cleaned while the producer runs.
const LOADED_TOPIC: &str = "bench-compact-loaded";
/// Where the producer writes: not compacted.
const PRODUCE_TOPIC: &str = "bench-compact-produce";
/// 128 MiB: several closed segments, so the cleaner rewrites the log group
/// by group as it would a long-lived one.
const SEGMENT_BYTES: &str = "134217728";
/// `min.cleanable.dirty.ratio` that keeps the cleaner off a log: a dirty
/// ratio never exceeds 1.
const HELD: &str = "1";
/// `min.cleanable.dirty.ratio` that lets the cleaner take a log at once.
const CLEANABLE: &str = "0.01";
/// Compacted records' keys are this and a zero-padded number, all of a
/// length, so that every record has the same size.
const KEY_PREFIX: &str = "key-";
/// On-disk bytes of a record beyond its key and value (length, attributes,
/// timestamp and offset deltas, key and value lengths, header count, and its
/// share of the batch header), to size the fill.
const RECORD_OVERHEAD_BYTES: u64 = 12;
const PRODUCE_RECORD_BYTES: usize = 1024;
/// 1 GiB.
const PRODUCE_RETENTION_BYTES: &str = "1073741824";
/// Before the baseline, so that it measures the steady state.
const WARM_UP: Duration = Duration::from_secs(2);
const CLEAN_TIMEOUT: Duration = Duration::from_secs(600);
const MIB: f64 = 1024.0 * 1024.0;

pub struct Options {
    pub log_mib: u64,
    pub keys: u64,
    pub value_bytes: usize,
    pub baseline: Duration,
}

pub fn run(broker: &Broker, options: &Options) -> Result<Value> {
    let (Some(log_dir), Some(stderr)) = (broker.log_dir(), broker.stderr_path()) else {
        bail!("--suite compaction reads the broker's log dir and log lines: let it start the broker, without --bootstrap");
    };
    let bootstrap = broker.bootstrap();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let mut log = LogLines::open(&stderr)?;
    for topic in [ALONE_TOPIC, LOADED_TOPIC] {
        create_topic(&admin, topic, 1, 1, &compacted_configs(HELD))?;
    }
    // Bounded by retention, so that the run's disk use stays near
    // 4 GiB however fast the producer goes.
    create_topic(
        &admin,
        PRODUCE_TOPIC,
        1,
        1,
        &[
            ("segment.bytes", SEGMENT_BYTES),
            ("retention.bytes", PRODUCE_RETENTION_BYTES),
        ],
    )?;

    let key_width = (options.keys - 1).to_string().len();
    let record_bytes = (KEY_PREFIX.len() + key_width + options.value_bytes) as u64;
    let records = (options.log_mib << 20).div_ceil(record_bytes + RECORD_OVERHEAD_BYTES);
    let fill = fill(bootstrap, records, options, key_width, record_bytes)?;

    // Roll each active segment (the cleaner never cleans it) by its age.
    for topic in [ALONE_TOPIC, LOADED_TOPIC] {
        let mut configs = compacted_configs(HELD);
        configs.push(("segment.ms", "1"));
        alter_topic(&admin, topic, &configs)?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(active_segment_empty(&log_dir, ALONE_TOPIC)?
        && active_segment_empty(&log_dir, LOADED_TOPIC)?)
    {
        if Instant::now() > deadline {
            bail!("the compacted topics' active segments were not rolled within 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    alter_topic(&admin, ALONE_TOPIC, &compacted_configs(CLEANABLE))?;
    let begun = log.clean_began(ALONE_TOPIC)?;
    let alone = log.clean_ended(&begun)?;

    let load = Load::start(bootstrap)?;
    std::thread::sleep(WARM_UP);
    let baseline_start = load.sample();
    std::thread::sleep(options.baseline);
    let baseline_end = load.sample();
    alter_topic(&admin, LOADED_TOPIC, &compacted_configs(CLEANABLE))?;
    let begun = log.clean_began(LOADED_TOPIC)?;
    let during_start = load.sample();
    let loaded = log.clean_ended(&begun)?;
    let during_end = load.sample();
    std::thread::sleep(options.baseline);
    let after_end = load.sample();
    load.finish()?;

    let (before_mib_s, before) = rate(baseline_start, baseline_end);
    let (during_mib_s, during) = rate(during_start, during_end);
    let (after_mib_s, after) = rate(during_end, after_end);
    let ratio = during_mib_s / ((before_mib_s + after_mib_s) / 2.0);
    Ok(json!({
        "suite": "compaction",
        "log_MiB": options.log_mib,
        "distinct_keys": options.keys.min(records),
        "records_per_log": records,
        "value_bytes": options.value_bytes,
        "key_plus_value_bytes": record_bytes,
        "fill_both_logs": fill,
        "clean_alone": alone.figures(),
        "produce_before_clean_1KiB": before,
        "produce_during_clean_1KiB": during,
        "produce_after_clean_1KiB": after,
        "clean_under_load": loaded.figures(),
        "produce_ratio": (ratio * 1000.0).round() / 1000.0,
    }))
}

/// A compacted topic's configs. AlterConfigs replaces a topic's configs
/// whole, so every change sends them all.
fn compacted_configs(min_cleanable_dirty_ratio: &str) -> Vec<(&str, &str)> {
    vec![
        ("cleanup.policy", "compact"),
        ("segment.bytes", SEGMENT_BYTES),
        ("min.cleanable.dirty.ratio", min_cleanable_dirty_ratio),
    ]
}

/// Creates `topic` with `partitions` partitions of `replication` replicas
/// and `configs`.
pub fn create_topic(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    partitions: i32,
    replication: i32,
    configs: &[(&str, &str)],
) -> Result<()> {
    let new_topic = configs.iter().fold(
        NewTopic::new(topic, partitions, TopicReplication::Fixed(replication)),
        |t, (k, v)| t.set(k, v),
    );
    let results =
        futures::executor::block_on(admin.create_topics([&new_topic], &AdminOptions::new()))?;
    for result in results {
        if let Err((name, code)) = result {
            bail!("creating {name}: {code}");
        }
    }
    Ok(())
}

fn alter_topic(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    configs: &[(&str, &str)],
) -> Result<()> {
    let alter = configs.iter().fold(
        AlterConfig::new(ResourceSpecifier::Topic(topic)),
        |a, (k, v)| a.set(k, v),
    );
    let results = futures::executor::block_on(admin.alter_configs([&alter], &AdminOptions::new()))?;
    for result in results {
        if let Err((resource, code)) = result {
            bail!("altering {resource:?}: {code}");
        }
    }
    Ok(())
}

/// Writes `records` records to both compacted topics, keys cycling through
/// `options.keys` distinct ones.
fn fill(
    bootstrap: &str,
    records: u64,
    options: &Options,
    key_width: usize,
    record_bytes: u64,
) -> Result<Value> {
    let (producer, delivered) = throughput::producer(bootstrap, "1", 1_048_576)?;
    for topic in [ALONE_TOPIC, LOADED_TOPIC] {
        producer
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(10))?;
    }
    let value = vec![b'x'; options.value_bytes];
    let start = Instant::now();
    for i in 0..records {
        let key = format!("{KEY_PREFIX}{:0key_width$}", i % options.keys);
        for topic in [ALONE_TOPIC, LOADED_TOPIC] {
            throughput::send(
                &producer,
                BaseRecord::<[u8], [u8]>::to(topic)
                    .key(key.as_bytes())
                    .payload(&value[..])
                    .partition(0),
            )?;
        }
    }
    producer.flush(Duration::from_secs(600))?;
    let secs = start.elapsed().as_secs_f64();
    let failed = delivered.failed.load(Ordering::Relaxed);
    if failed > 0 || delivered.ok.load(Ordering::Relaxed) != 2 * records {
        bail!("{failed} of {} records failed", 2 * records);
    }
    let bytes = 2 * records * record_bytes;
    Ok(json!({
        "records": 2 * records,
        "seconds": (secs * 1000.0).round() / 1000.0,
        "MiB_per_s": (bytes as f64 / MIB / secs * 10.0).round() / 10.0,
    }))
}

/// Whether a partition's last segment, the active one, is empty: then every
/// record is in a closed segment.
fn active_segment_empty(log_dir: &Path, topic: &str) -> Result<bool> {
    let dir = log_dir.join(format!("{topic}-0"));
    let mut active: Option<(String, u64)> = None;
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Segment names are zero-padded base offsets: the greatest is last.
        if name.ends_with(".log") && active.as_ref().is_none_or(|(a, _)| name > *a) {
            active = Some((name, entry.metadata()?.len()));
        }
    }
    Ok(active.is_some_and(|(_, len)| len == 0))
}

/// A producer of 1 KiB records to [`PRODUCE_TOPIC`], as fast as the broker
/// takes them, on its own thread until finished.
struct Load {
    stop: Arc<AtomicBool>,
    delivered: Arc<Delivered>,
    thread: JoinHandle<Result<()>>,
}

impl Load {
    fn start(bootstrap: &str) -> Result<Load> {
        // A 64 MiB queue rather than the log suite's 1 GiB: records are
        // counted as they are acknowledged, so the queue only has to keep
        // the broker busy, and finishing need not wait for a large backlog.
        let (producer, delivered) = throughput::producer(bootstrap, "1", 65_536)?;
        producer
            .client()
            .fetch_metadata(Some(PRODUCE_TOPIC), Duration::from_secs(10))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let payload = vec![b'x'; PRODUCE_RECORD_BYTES];
            while !stopped.load(Ordering::Relaxed) {
                throughput::send(
                    &producer,
                    BaseRecord::<(), [u8]>::to(PRODUCE_TOPIC)
                        .payload(&payload[..])
                        .partition(0),
                )?;
            }
            producer.flush(Duration::from_secs(60))?;
            Ok(())
        });
        Ok(Load {
            stop,
            delivered,
            thread,
        })
    }

    /// Records acknowledged so far, and when.
    fn sample(&self) -> (Instant, u64) {
        (Instant::now(), self.delivered.ok.load(Ordering::Relaxed))
    }

    fn finish(self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the producer thread panicked")?;
        let failed = self.delivered.failed.load(Ordering::Relaxed);
        if failed > 0 {
            bail!("{failed} produced records failed");
        }
        Ok(())
    }
}

/// The producer's rate between two samples: MiB/s, and the JSON figures.
fn rate((from, from_records): (Instant, u64), (to, to_records): (Instant, u64)) -> (f64, Value) {
    let secs = (to - from).as_secs_f64();
    let records = to_records - from_records;
    let mib_s = (records as usize * PRODUCE_RECORD_BYTES) as f64 / MIB / secs;
    let figures = json!({
        "seconds": (secs * 1000.0).round() / 1000.0,
        "records": records,
        "msgs_per_s": (records as f64 / secs).round(),
        "MiB_per_s": (mib_s * 10.0).round() / 10.0,
    });
    (mib_s, figures)
}

/// A clean the broker has begun.
struct Begun {
    partition: String,
    /// Where the clean ends: the log is clean once a round reaches it.
    first_uncleanable: u64,
    seen: Instant,
}

/// What the cleaner reported for one log, summed over its rounds (a clean
/// stops early when the offset map is full, and the next round continues).
#[derive(Default)]
struct Clean {
    rounds: u64,
    bytes_read: u64,
    bytes_written: u64,
    records_read: u64,
    records_retained: u64,
    /// The cleaner's own measure: reading and writing segments, not
    /// swapping them in.
    elapsed_ms: u64,
    /// From the `beginning` line to the last `cleaned log` line, as seen
    /// here (to 50 ms): includes the swap and releasing the old segments.
    wall_ms: u64,
}

impl Clean {
    fn figures(&self) -> Value {
        let secs = self.elapsed_ms.max(1) as f64 / 1000.0;
        let mib_s = |bytes: u64| (bytes as f64 / MIB / secs * 10.0).round() / 10.0;
        json!({
            "rounds": self.rounds,
            "bytes_read": self.bytes_read,
            "bytes_written": self.bytes_written,
            "records_read": self.records_read,
            "records_retained": self.records_retained,
            "elapsed_ms": self.elapsed_ms,
            "wall_ms": self.wall_ms,
            "read_MiB_per_s": mib_s(self.bytes_read),
            "read_plus_written_MiB_per_s": mib_s(self.bytes_read + self.bytes_written),
        })
    }
}

/// The broker's log lines, read as it writes them.
struct LogLines {
    file: File,
    /// Read but not yet a whole line.
    partial: Vec<u8>,
}

impl LogLines {
    fn open(path: &Path) -> Result<LogLines> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        Ok(LogLines {
            file,
            partial: Vec::new(),
        })
    }

    /// Waits for the first line, among those not yet seen, for which
    /// `pick` returns a value.
    fn wait_for<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&str) -> Result<Option<T>>,
    ) -> Result<T> {
        let deadline = Instant::now() + CLEAN_TIMEOUT;
        loop {
            self.file.read_to_end(&mut self.partial)?;
            while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.partial.drain(..=end).collect();
                if let Some(found) = pick(String::from_utf8_lossy(&line).trim_end())? {
                    return Ok(found);
                }
            }
            if Instant::now() > deadline {
                bail!("no {what} in the broker's log after {CLEAN_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the cleaner to begin on `topic`.
    fn clean_began(&mut self, topic: &str) -> Result<Begun> {
        let partition = format!("{topic}-0");
        let first_uncleanable =
            self.wait_for(&format!("clean of {partition} beginning"), |line| {
                if !line.contains("beginning cleaning of log")
                    || field(line, "partition") != Some(&partition)
                {
                    return Ok(None);
                }
                Ok(Some(number(line, "first_uncleanable")?))
            })?;
        Ok(Begun {
            partition,
            first_uncleanable,
            seen: Instant::now(),
        })
    }

    /// Waits until the log is clean up to where the clean `begun` ends.
    fn clean_ended(&mut self, begun: &Begun) -> Result<Clean> {
        let partition = &begun.partition;
        let mut clean = Clean::default();
        self.wait_for(&format!("end of the clean of {partition}"), |line| {
            if field(line, "partition") != Some(partition) {
                return Ok(None);
            }
            if line.contains(" ERROR ") || line.contains("clean aborted") {
                bail!("the clean of {partition} did not finish: {line}");
            }
            if !line.contains("cleaned log") {
                return Ok(None);
            }
            clean.rounds += 1;
            clean.bytes_read += number(line, "bytes_read")?;
            clean.bytes_written += number(line, "bytes_written")?;
            clean.records_read += number(line, "records_read")?;
            clean.records_retained += number(line, "records_retained")?;
            clean.elapsed_ms += number(line, "elapsed_ms")?;
            Ok((number(line, "next_dirty")? >= begun.first_uncleanable).then_some(()))
        })?;
        clean.wall_ms = begun.seen.elapsed().as_millis() as u64;
        Ok(clean)
    }
}

/// The value of a `name=value` field of a log line.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|token| token.strip_prefix(name)?.strip_prefix('='))
}

fn number(line: &str, name: &str) -> Result<u64> {
    field(line, name)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no number {name}= in {line:?}"))
}
