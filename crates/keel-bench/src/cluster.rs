//! Cluster figures: a 3-node cluster on loopback against one node.
//!
//! 1. One broker: producer throughput of 1 KiB records, acks=all, to a topic
//!    of `--cluster-partitions` partitions with one replica each.
//! 2. Three brokers (each a controller quorum voter too): the same workload
//!    to a topic with three replicas and `min.insync.replicas=2`, and its
//!    rate as a share of the single node's (`throughput_ratio`). Each side
//!    runs `--cluster-runs` times and the ratio is of the medians.
//! 3. End-to-end latency on the cluster at `--cluster-latency-rate`, acks=all,
//!    to a one-partition topic with three replicas (`latency.rs`; the
//!    consumer fetches from the leader).
//! 4. Failover: an idempotent acks=all producer sends to a one-partition
//!    topic with three replicas, and the partition's leader is SIGKILLed.
//!    `failover_ms` is from the kill to the first acknowledgement of a
//!    record sent after it.
//!
//! 5. The failover again in Kafka's isolated mode: three brokers and three
//!    controller-only nodes (`process.roles`), so the killed leader is
//!    never the active controller too (`failover_isolated_ms`).
//!
//! Every node of every run has [`FAILOVER_SETTINGS`], so that the runs
//! differ only in the number of nodes and replicas.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use rdkafka::admin::AdminClient;
use rdkafka::client::{Client, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use serde_json::{json, Value};

use crate::broker::{Broker, Cluster};
use crate::compaction::create_topic;
use crate::{latency, throughput};

const NODES: usize = 3;
const REPLICAS: i32 = NODES as i32;
const MIN_INSYNC: &str = "2";
const RECORD_BYTES: usize = 1024;
const ACKS: &str = "all";
const SINGLE_TOPIC: &str = "bench-single-1k";
const CLUSTER_TOPIC: &str = "bench-cluster-1k";
const LATENCY_TOPIC: &str = "bench-cluster-latency";
const FAILOVER_TOPIC: &str = "bench-cluster-failover";
/// Broker settings for a prompt failover: a dead broker is fenced (and its
/// partitions get new leaders) after `broker.session.timeout.ms`, and a dead
/// active controller is replaced after the quorum's timeouts.
pub const FAILOVER_SETTINGS: [(&str, &str); 4] = [
    ("broker.session.timeout.ms", "1500"),
    ("broker.heartbeat.interval.ms", "500"),
    ("controller.quorum.fetch.timeout.ms", "1000"),
    ("controller.quorum.election.timeout.ms", "500"),
];
/// The failover producer's settings beyond acks and idempotence: retry and
/// reconnect soon, and look for the new leader soon. The periodic metadata
/// refresh matters: while the dead leader is not yet fenced, the metadata
/// still names it, and with a 1 s period the producer learnt of the new
/// leader 0.4 to 1.1 s after it was elected (0.1 to 0.5 s with 100 ms).
const FAILOVER_CLIENT_SETTINGS: [(&str, &str); 8] = [
    ("linger.ms", "1"),
    ("retry.backoff.ms", "50"),
    ("retry.backoff.max.ms", "200"),
    ("reconnect.backoff.ms", "50"),
    ("reconnect.backoff.max.ms", "200"),
    ("topic.metadata.refresh.interval.ms", "100"),
    ("socket.connection.setup.timeout.ms", "1000"),
    ("message.timeout.ms", "60000"),
];
/// Records per second the failover producer sends: the figure's resolution
/// is one interval.
const FAILOVER_RATE: u64 = 1000;
/// How long the failover producer runs before the kill.
const FAILOVER_WARM_UP: Duration = Duration::from_secs(2);
const TOPIC_READY_TIMEOUT: Duration = Duration::from_secs(30);
const MIB: f64 = 1024.0 * 1024.0;

pub struct Options<'a> {
    pub keel: &'a Path,
    /// The caller's `--override`s, after [`FAILOVER_SETTINGS`].
    pub overrides: &'a [String],
    pub partitions: i32,
    pub records: usize,
    /// Throughput runs on each side; the figures are the median run's.
    pub runs: usize,
    pub latency_rate: u64,
    pub latency_seconds: u64,
    /// Longest wait for an acknowledgement after the kill.
    pub failover_timeout: Duration,
    /// Keep the brokers' dirs even if every figure is measured.
    pub keep_dirs: bool,
}

pub fn run(options: &Options) -> Result<Value> {
    let overrides: Vec<String> = FAILOVER_SETTINGS
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .chain(options.overrides.iter().cloned())
        .collect();
    let mut line = json!({
        "suite": "cluster",
        "nodes": NODES,
        "failover_settings": settings_json(&FAILOVER_SETTINGS),
        "failover_client_settings": settings_json(&FAILOVER_CLIENT_SETTINGS),
        "overrides": options.overrides,
    });

    let single = {
        let mut broker = Broker::start(options.keel, &overrides).context("single node")?;
        let result = produce(broker.bootstrap(), SINGLE_TOPIC, 1, options);
        if let Some((rss, peak)) = broker.rss_mib() {
            line["single_node_rss_MiB"] = json!([rss, peak]);
        }
        let log = broker.stderr_path().expect("started here");
        if result.is_err() || options.keep_dirs {
            broker.keep_dir();
            line["single_node_log"] = json!(log.display().to_string());
        }
        result.map_err(|e| e.context(format!("single node (log: {})", log.display())))
    };
    line["single_node"] = figures_or_error(&single);

    let mut cluster = match Cluster::start(options.keel, NODES, 0, &overrides) {
        Ok(cluster) => cluster,
        Err(e) => {
            line["cluster"] = figures_or_error(&Err(e));
            return Ok(line);
        }
    };
    let bootstrap = cluster.bootstrap();
    let produced = produce(&bootstrap, CLUSTER_TOPIC, REPLICAS, options);
    line["cluster"] = figures_or_error(&produced);
    if let (Ok(single), Ok(cluster)) = (&single, &produced) {
        let ratio = cluster["msgs_per_s"].as_f64().unwrap_or(0.0)
            / single["msgs_per_s"].as_f64().unwrap_or(f64::NAN);
        line["throughput_ratio"] = json!((ratio * 1000.0).round() / 1000.0);
    }
    let latency = latency_run(&bootstrap, options);
    line["cluster_latency_1KiB_acks_all"] = figures_or_error(&latency);
    line["cluster_rss_MiB"] = cluster.rss_mib();
    let failover = failover(&mut cluster, options);
    line["failover"] = figures_or_error(&failover);
    if let Ok(figures) = &failover {
        line["failover_ms"] = figures["failover_ms"].clone();
    }
    if produced.is_err() || latency.is_err() || failover.is_err() || options.keep_dirs {
        cluster.keep_dirs();
        line["cluster_logs"] = json!(cluster.stderr_paths());
    }
    drop(cluster);

    // Isolated mode: the quorum on controller-only nodes, so the killed
    // leader is never the active controller as well.
    let isolated =
        Cluster::start(options.keel, NODES, NODES, &overrides).and_then(|mut cluster| {
            let figures = self::failover(&mut cluster, options);
            if figures.is_err() || options.keep_dirs {
                cluster.keep_dirs();
                line["isolated_cluster_logs"] = json!(cluster.stderr_paths());
            }
            figures
        });
    // Metadata names a broker as the controller; here none is one.
    let isolated = isolated.map(|mut figures| {
        if let Some(figures) = figures.as_object_mut() {
            figures.remove("controller_before");
            figures.insert("controller_killed".into(), json!(false));
        }
        figures
    });
    line["failover_isolated"] = figures_or_error(&isolated);
    if let Ok(figures) = &isolated {
        line["failover_isolated_ms"] = figures["failover_ms"].clone();
    }
    Ok(line)
}

/// Waits until the page cache holds no dirty pages (sync(1)), so that each
/// run starts alike. Otherwise the kernel's writeback of earlier runs, which
/// starts once dirty pages pass `vm.dirty_background_ratio`, lands in later
/// runs: the cluster, writing every record three times, passes it after one
/// run, the single node after three, and the ratio measured that instead.
fn write_back_dirty_pages() -> Result<()> {
    let status = std::process::Command::new("sync").status()?;
    if !status.success() {
        bail!("sync exited with {status}");
    }
    Ok(())
}

fn settings_json(settings: &[(&str, &str)]) -> Value {
    settings
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// A run's figures, or its error (also printed to stderr).
pub fn figures_or_error(result: &Result<Value>) -> Value {
    match result {
        Ok(figures) => figures.clone(),
        Err(e) => {
            eprintln!("keel-bench: {e:#}");
            json!({ "error": format!("{e:#}") })
        }
    }
}

/// The configs of a topic with `replicas` replicas.
fn topic_configs(replicas: i32) -> Vec<(&'static str, &'static str)> {
    if replicas > 1 {
        vec![("min.insync.replicas", MIN_INSYNC)]
    } else {
        Vec::new()
    }
}

/// Creates `topic` and waits until every partition has a leader and every
/// replica is in sync.
fn create_and_await(bootstrap: &str, topic: &str, partitions: i32, replicas: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    create_topic(
        &admin,
        topic,
        partitions,
        replicas,
        &topic_configs(replicas),
    )?;
    let deadline = Instant::now() + TOPIC_READY_TIMEOUT;
    loop {
        let metadata = admin
            .inner()
            .fetch_metadata(Some(topic), Duration::from_secs(5))?;
        let ready = metadata.topics().iter().any(|t| {
            t.name() == topic
                && t.error().is_none()
                && t.partitions().len() == partitions as usize
                && t.partitions()
                    .iter()
                    .all(|p| p.leader() >= 0 && p.isr().len() == replicas as usize)
        });
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{topic}: not every partition had a leader and {replicas} in-sync replicas within {TOPIC_READY_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The log suite's producer throughput, acks=all, over `partitions`
/// partitions of `replicas` replicas each, `runs` times (a topic each):
/// the median run's figures, with MiB/s besides MB/s, and every run's
/// rate. On a shared 2-core machine one run can be off by a third.
fn produce(bootstrap: &str, topic: &str, replicas: i32, options: &Options) -> Result<Value> {
    let mut runs = Vec::with_capacity(options.runs);
    for run in 0..options.runs.max(1) {
        let topic = format!("{topic}-{run}");
        create_and_await(bootstrap, &topic, options.partitions, replicas)?;
        write_back_dirty_pages()?;
        runs.push(throughput::produce(
            bootstrap,
            &topic,
            options.partitions,
            options.records,
            RECORD_BYTES,
            ACKS,
        )?);
    }
    let rate = |figures: &Value| figures["msgs_per_s"].as_f64().unwrap_or(0.0);
    let every_rate: Vec<f64> = runs.iter().map(rate).collect();
    runs.sort_by(|a, b| rate(a).total_cmp(&rate(b)));
    let mut figures = runs.swap_remove(runs.len() / 2);
    figures["runs_msgs_per_s"] = json!(every_rate);
    let seconds = figures["seconds"].as_f64().unwrap_or(f64::NAN);
    let mib_s = (options.records * RECORD_BYTES) as f64 / MIB / seconds;
    figures["MiB_per_s"] = json!((mib_s * 10.0).round() / 10.0);
    figures["partitions"] = json!(options.partitions);
    figures["replicas"] = json!(replicas);
    figures["acks"] = json!(ACKS);
    Ok(figures)
}

fn latency_run(bootstrap: &str, options: &Options) -> Result<Value> {
    create_and_await(bootstrap, LATENCY_TOPIC, 1, REPLICAS)?;
    let mut figures = latency::run(
        bootstrap,
        LATENCY_TOPIC,
        RECORD_BYTES,
        options.latency_rate,
        options.latency_seconds,
        ACKS,
    )?;
    figures["replicas"] = json!(REPLICAS);
    Ok(figures)
}

/// What the failover producer's deliveries showed.
#[derive(Default)]
struct Acks {
    ok: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// Records with this sequence number or above were sent after the kill.
    after_kill: AtomicUsize,
    /// When the first of those was acknowledged.
    first_after_kill: OnceLock<Instant>,
}

struct Sequenced(Arc<Acks>);

impl ClientContext for Sequenced {}

impl ProducerContext for Sequenced {
    /// The record's sequence number.
    type DeliveryOpaque = usize;
    fn delivery(&self, result: &DeliveryResult<'_>, seq: usize) {
        let acks = &self.0;
        match result {
            Ok(_) => {
                acks.ok.fetch_add(1, Ordering::Relaxed);
                if seq >= acks.after_kill.load(Ordering::SeqCst) {
                    acks.first_after_kill.get_or_init(Instant::now);
                }
            }
            Err((e, _)) => {
                acks.failed.fetch_add(1, Ordering::Relaxed);
                let mut first = acks.first_error.lock().expect("not poisoned");
                first.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// The active controller, as the metadata answer names it.
fn controller_id<C: ClientContext>(client: &Client<C>) -> i32 {
    // SAFETY: the client's handle is valid while `client` lives, and
    // rd_kafka_controllerid only reads it (it may send a metadata request).
    unsafe { rdkafka::bindings::rd_kafka_controllerid(client.native_ptr(), 5000) }
}

fn partition_leader<C: ClientContext>(client: &Client<C>) -> Result<(i32, Vec<i32>)> {
    let metadata = client.fetch_metadata(Some(FAILOVER_TOPIC), Duration::from_secs(5))?;
    let partition = metadata
        .topics()
        .iter()
        .find(|t| t.name() == FAILOVER_TOPIC)
        .and_then(|t| t.partitions().first())
        .context("no metadata for the failover topic's partition")?;
    Ok((partition.leader(), partition.isr().to_vec()))
}

fn failover(cluster: &mut Cluster, options: &Options) -> Result<Value> {
    let bootstrap = cluster.bootstrap();
    create_and_await(&bootstrap, FAILOVER_TOPIC, 1, REPLICAS)?;
    let acks = Arc::new(Acks {
        after_kill: AtomicUsize::new(usize::MAX),
        ..Acks::default()
    });
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &bootstrap)
        .set("acks", ACKS)
        .set("enable.idempotence", "true");
    for (k, v) in FAILOVER_CLIENT_SETTINGS {
        config.set(k, v);
    }
    let producer: Arc<ThreadedProducer<Sequenced>> =
        Arc::new(config.create_with_context(Sequenced(acks.clone()))?);

    let sent = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (producer, sent, stop) = (producer.clone(), sent.clone(), stop.clone());
        std::thread::spawn(move || -> Result<()> {
            let payload = vec![b'x'; RECORD_BYTES];
            let interval = Duration::from_nanos(1_000_000_000 / FAILOVER_RATE);
            let start = Instant::now();
            let mut seq = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let due = start + interval * seq as u32;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let record = BaseRecord::<(), [u8], usize>::with_opaque_to(FAILOVER_TOPIC, seq)
                    .payload(&payload[..])
                    .partition(0);
                match producer.send(record) {
                    Ok(()) => {}
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        bail!("the failover producer's queue is full")
                    }
                    Err((e, _)) => bail!("failover produce: {e}"),
                }
                seq += 1;
                sent.store(seq, Ordering::SeqCst);
            }
            Ok(())
        })
    };
    let result = kill_leader(cluster, &producer, &acks, &sent, options);
    stop.store(true, Ordering::Relaxed);
    let sender = sender.join().expect("the failover sender panicked");
    let flushed = producer.flush(Duration::from_secs(10));
    let mut figures = result?;
    sender?;
    flushed.context("flushing the failover producer")?;
    let records_sent = sent.load(Ordering::SeqCst);
    figures["records_sent"] = json!(records_sent);
    figures["records_acked"] = json!(acks.ok.load(Ordering::Relaxed));
    figures["records_failed"] = json!(acks.failed.load(Ordering::Relaxed));
    if let Some(e) = acks.first_error.lock().expect("not poisoned").as_ref() {
        figures["first_delivery_error"] = json!(e);
    }
    Ok(figures)
}

/// With the producer running, kills the partition's leader and waits for
/// the first acknowledgement of a record sent after the kill.
fn kill_leader(
    cluster: &mut Cluster,
    producer: &ThreadedProducer<Sequenced>,
    acks: &Acks,
    sent: &AtomicUsize,
    options: &Options,
) -> Result<Value> {
    std::thread::sleep(FAILOVER_WARM_UP);
    let acked = acks.ok.load(Ordering::Relaxed);
    let failed = acks.failed.load(Ordering::Relaxed);
    if acked == 0 || failed > 0 {
        bail!(
            "before the kill: {acked} records acknowledged, {failed} failed ({})",
            acks.first_error
                .lock()
                .expect("not poisoned")
                .as_deref()
                .unwrap_or("no error")
        );
    }
    let client = producer.client();
    let controller = controller_id(client);
    let (leader, isr) = partition_leader(client)?;
    let victim = cluster.node_mut(leader).context("the partition's leader")?;
    let killed_at = Instant::now();
    // To find the kill among the nodes' log lines.
    let killed_at_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    victim.kill()?;
    // Every record from here on was sent after the kill.
    acks.after_kill
        .store(sent.load(Ordering::SeqCst), Ordering::SeqCst);
    let deadline = killed_at + options.failover_timeout;
    let acked_at = loop {
        if let Some(at) = acks.first_after_kill.get() {
            break *at;
        }
        if Instant::now() > deadline {
            bail!(
                "no record sent after node {leader} (the leader) was killed was acknowledged within {:?}; {} delivery errors ({})",
                options.failover_timeout,
                acks.failed.load(Ordering::Relaxed),
                acks.first_error
                    .lock()
                    .expect("not poisoned")
                    .as_deref()
                    .unwrap_or("no error")
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let failover_ms = (acked_at - killed_at).as_secs_f64() * 1000.0;
    let (new_leader, new_isr) = partition_leader(client)?;
    Ok(json!({
        "failover_ms": (failover_ms * 10.0).round() / 10.0,
        "rate_per_s": FAILOVER_RATE,
        "killed_leader": leader,
        "killed_at_unix_s": (killed_at_unix * 1000.0).round() / 1000.0,
        "isr_before": isr,
        "controller_before": controller,
        "controller_killed": controller == leader,
        "new_leader": new_leader,
        "isr_after": new_isr,
        "acked_before_kill": acked,
    }))
}
