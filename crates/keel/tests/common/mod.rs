//! Shared harness for the end-to-end tests: a real `keel` process on an
//! ephemeral port with its own data dir, librdkafka clients pointed at it, a
//! raw Kafka-protocol connection for what no client will send, a reader for
//! the on-disk segment format, and a TCP proxy that cuts connections;
//! `cluster` runs several such processes as one controller quorum.
//!
//! Every broker a test starts is killed when its `TestBroker` drops, also
//! when the test panics; the broker's log is then printed to help diagnosis.

#![allow(dead_code)]

pub mod cluster;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::describe_log_dirs_request::DescribableLogDirTopic;
use kafka_protocol::messages::{DescribeLogDirsRequest, RequestHeader, ResponseHeader, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use rand::{Rng, SeedableRng};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

/// How long a broker may take to print its listening line. Generous: a
/// loaded 2-core machine running other tests' brokers and recovery.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a SIGTERM'd broker may take to shut down cleanly.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound for any client operation a test waits on.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// The broker process
// ---------------------------------------------------------------------------

pub struct TestBroker {
    /// Holds `data/` and `broker.log`; removed when the broker drops.
    root: tempfile::TempDir,
    overrides: Vec<(String, String)>,
    child: Option<Child>,
    /// Between `launch` and `await_listening`: where the listening address
    /// arrives.
    listening: Option<mpsc::Receiver<String>>,
    addr: SocketAddr,
    /// Starts so far, to label each run in the log.
    starts: u32,
    /// What failure messages call this process: "broker", or "node 2" in a
    /// cluster.
    label: String,
}

impl TestBroker {
    /// A broker with default settings.
    pub fn start() -> TestBroker {
        TestBroker::with(&[])
    }

    /// A broker with extra `--override key=value` settings.
    pub fn with(overrides: &[(&str, &str)]) -> TestBroker {
        let mut broker = TestBroker::unstarted("broker", overrides);
        broker.spawn();
        broker
    }

    /// A broker with its own data dir, not yet started.
    fn unstarted(label: &str, overrides: &[(&str, &str)]) -> TestBroker {
        let root = tempfile::Builder::new()
            .prefix("keel-test-")
            .tempdir()
            .expect("creating a temp dir");
        TestBroker {
            root,
            overrides: overrides
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
            listening: None,
            addr: "127.0.0.1:0".parse().unwrap(),
            starts: 0,
            label: label.to_string(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }

    /// The `log.dirs` directory.
    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// Everything the broker wrote to stderr, over all its runs.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.root.path().join("broker.log")
    }

    /// The last `n` lines of the broker's log, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Starts the process and waits until it listens.
    fn spawn(&mut self) {
        self.launch();
        self.await_listening();
    }

    /// Starts the process without waiting for it to listen: a cluster's
    /// nodes listen only once a quorum of them is up, so all are launched
    /// before any is awaited.
    fn launch(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        self.starts += 1;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("opening broker.log");
        writeln!(log, "===== keel test harness: start #{} =====", self.starts).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keel"));
        cmd.arg("server")
            .arg("--override")
            .arg(format!("log.dirs={}", self.data_dir().display()))
            .arg("--override")
            .arg("listeners=PLAINTEXT://127.0.0.1:0");
        for (k, v) in &self.overrides {
            cmd.arg("--override").arg(format!("{k}={v}"));
        }
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        cmd.env("NO_COLOR", "1");
        // If the test process dies without running Drop (a SIGKILL'd test
        // binary), the kernel kills the broker too. The signal follows the
        // spawning *thread*; brokers are spawned from test threads, which
        // outlive them.
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawning the keel binary");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        // Reads the listening line, then keeps draining stdout so the broker
        // never blocks on a full pipe. Ends when the broker exits.
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !sent {
                    let line = line.trim();
                    let listening = line
                        .strip_prefix("keel listening on ")
                        .or_else(|| line.strip_prefix("keel controller listening on "));
                    if let Some(rest) = listening {
                        let _ = tx.send(rest.trim().to_string());
                        sent = true;
                    }
                }
            }
        });
        // Stored at once, so that Drop kills it if the test fails before
        // it listens.
        self.child = Some(child);
        self.listening = Some(rx);
    }

    /// Waits for the listening line of the process `launch` started.
    fn await_listening(&mut self) {
        let rx = self.listening.take().expect("broker not launched");
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let addr = loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(addr) => break addr,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {}
            }
            let child = self.child.as_mut().expect("broker launched");
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "keel ({}) exited with {status} before listening\n--- {} log ---\n{}",
                    self.label,
                    self.label,
                    self.log_tail(80)
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "keel ({}) did not print its listening line within {STARTUP_TIMEOUT:?}\n--- {} log ---\n{}",
                    self.label,
                    self.label,
                    self.log_tail(80)
                );
            }
        };
        self.addr = addr
            .parse()
            .unwrap_or_else(|e| panic!("bad listening address {addr:?}: {e}"));
    }

    /// Whether the broker process is still running.
    pub fn is_alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().expect("polling the broker").is_none(),
            None => false,
        }
    }

    /// Panics (with the broker's log) if the broker process has exited.
    pub fn assert_alive(&mut self) {
        if !self.is_alive() {
            panic!(
                "the broker process died\n--- broker log ---\n{}",
                self.log_tail(80)
            );
        }
    }

    /// SIGTERM, then waits for a clean exit (status 0).
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("broker not running");
        let pid = child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM) failed");
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("waiting for the broker") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "keel did not exit within {SHUTDOWN_TIMEOUT:?} of SIGTERM\n--- broker log ---\n{}",
                    self.log_tail(80)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            status.success(),
            "keel exited with {status} after SIGTERM\n--- broker log ---\n{}",
            self.log_tail(80)
        );
    }

    /// SIGKILL: the broker gets no chance to flush or checkpoint anything.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("broker not running");
        child.kill().expect("SIGKILL");
        child.wait().expect("reaping the broker");
    }

    /// Starts the broker again on the same data dir (and a new port).
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// Clean restart: SIGTERM, wait, start again on the same data dir.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Crash restart: SIGKILL, then start again on the same data dir.
    pub fn kill9_and_restart(&mut self) {
        self.kill9();
        self.spawn();
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- {} log (last 60 lines) ---\n{}",
                self.label,
                self.log_tail(60)
            );
        }
    }
}

/// Polls `condition` every 50 ms until it holds or `timeout` passes.
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `n` distinct ports free on loopback now. They are picked below the
/// kernel's ephemeral range: the ports bound to ":0" (every single-broker
/// test's) and of outgoing connections come from that range, and any of
/// them could take a node's port while the node is down for a restart.
/// A port is handed out once per test process: tests run concurrently,
/// and one whose nodes have not bound their ports yet must not see them
/// picked again by another.
pub fn free_ports(n: usize) -> Vec<u16> {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let range = 10_000..ephemeral_start.max(20_000);
    let mut rng = rand::thread_rng();
    // Held until all are chosen, so none is picked twice.
    let mut held = Vec::with_capacity(n);
    for _ in 0..1000 {
        if held.len() == n {
            break;
        }
        let port = rng.gen_range(range.clone());
        if handed_out.contains(&port) {
            continue;
        }
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            held.push(listener);
        }
    }
    assert_eq!(held.len(), n, "no {n} free ports in {range:?}");
    let ports: Vec<u16> = held
        .iter()
        .map(|l| l.local_addr().expect("a bound port").port())
        .collect();
    handed_out.extend(&ports);
    ports
}

/// A topic name unique within this process, so tests sharing a broker never
/// collide.
pub fn unique_topic(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

// ---------------------------------------------------------------------------
// librdkafka clients
// ---------------------------------------------------------------------------

/// Settings shared by every client: short reconnect backoff so a restarted
/// broker is found quickly, bounded socket timeouts.
pub fn client_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("socket.timeout.ms", "10000")
        .set("reconnect.backoff.ms", "20")
        .set("reconnect.backoff.max.ms", "500")
        .set("retry.backoff.ms", "20")
        .set("retry.backoff.max.ms", "500");
    config
}

pub fn producer(bootstrap: &str, extra: &[(&str, &str)]) -> FutureProducer {
    let mut config = client_config(bootstrap);
    config
        .set("message.timeout.ms", "20000")
        .set("linger.ms", "1");
    for (k, v) in extra {
        config.set(*k, *v);
    }
    config.create().expect("creating a producer")
}

/// A consumer that is only ever assigned partitions (no group).
pub fn consumer(bootstrap: &str, extra: &[(&str, &str)]) -> BaseConsumer {
    let mut config = client_config(bootstrap);
    config
        .set("group.id", "keel-tests-unused")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "100")
        .set("max.partition.fetch.bytes", "1048576")
        .set("receive.message.max.bytes", "104857600");
    for (k, v) in extra {
        config.set(*k, *v);
    }
    config.create().expect("creating a consumer")
}

/// Upper bound for a transactional producer's calls (init, commit, abort).
pub const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// A producer with `transactional.id`, its transactions initialized.
pub fn transactional_producer(
    bootstrap: &str,
    transactional_id: &str,
    extra: &[(&str, &str)],
) -> FutureProducer {
    let mut config = client_config(bootstrap);
    config
        .set("transactional.id", transactional_id)
        .set("message.timeout.ms", "20000")
        .set("linger.ms", "5");
    for (k, v) in extra {
        config.set(*k, *v);
    }
    let producer: FutureProducer = config.create().expect("creating a transactional producer");
    producer
        .init_transactions(TXN_TIMEOUT)
        .expect("init_transactions");
    producer
}

/// Queues one record (the commit flushes it).
pub fn queue(producer: &FutureProducer, topic: &str, partition: i32, value: &str) {
    let record = FutureRecord::<str, str>::to(topic)
        .partition(partition)
        .key(value)
        .payload(value);
    if let Err((e, _)) = producer.send_result(record) {
        panic!("queueing {value}: {e}");
    }
}

/// Reads every partition of `topic` from the start with `isolation.level`
/// until `expected` records arrived, then a little longer to catch any
/// record that should not be there, or until `timeout`. Returns the values.
pub fn read_values(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    isolation: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<String> {
    let consumer = consumer(bootstrap, &[("isolation.level", isolation)]);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut values = Vec::new();
    let deadline = Instant::now() + timeout;
    let mut settle: Option<Instant> = None;
    loop {
        if values.len() >= expected && settle.is_none() {
            settle = Some(Instant::now() + Duration::from_secs(1));
        }
        if settle.is_some_and(|s| Instant::now() >= s) || Instant::now() >= deadline {
            return values;
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                values.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned())
            }
            Some(Err(e)) => panic!("consuming {topic} ({isolation}): {e}"),
            None => {}
        }
    }
}

pub fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    client_config(bootstrap)
        .create()
        .expect("creating an admin client")
}

pub fn admin_options() -> AdminOptions {
    AdminOptions::new().request_timeout(Some(Duration::from_secs(20)))
}

/// Creates a topic through CreateTopics and waits until its partitions have a
/// leader in Metadata.
pub async fn create_topic(bootstrap: &str, name: &str, partitions: i32, configs: &[(&str, &str)]) {
    let admin = admin(bootstrap);
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        topic = topic.set(k, v);
    }
    let results = admin
        .create_topics([&topic], &admin_options())
        .await
        .expect("CreateTopics request");
    assert_eq!(results.len(), 1);
    if let Err((topic, code)) = &results[0] {
        panic!("creating topic {topic}: {code:?}");
    }
    let addr: SocketAddr = bootstrap.parse().expect("bootstrap is host:port");
    wait_until("the new topic has leaders", CLIENT_TIMEOUT, || {
        let Ok(mut conn) = RawConn::connect(addr) else {
            return false;
        };
        let Ok(topic) = conn.metadata_topic(name, false) else {
            return false;
        };
        topic.error_code == 0
            && topic.partitions.len() == partitions as usize
            && topic.partitions.iter().all(|p| p.leader_id.0 >= 0)
    });
}

/// Runs the `keel` CLI with `ARGS --bootstrap-server ADDR`.
pub fn keel_cli(bootstrap: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .arg("--bootstrap-server")
        .arg(bootstrap)
        .env("NO_COLOR", "1")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running keel")
}

/// [`keel_cli`], which must exit 0; returns its stdout.
pub fn keel_cli_ok(bootstrap: &str, args: &[&str]) -> String {
    let output = keel_cli(bootstrap, args);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "keel {args:?} exited with {}\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Produces one record and returns its offset.
pub async fn send(
    producer: &FutureProducer,
    topic: &str,
    partition: i32,
    key: Option<&str>,
    value: &str,
) -> i64 {
    let mut record = FutureRecord::<str, str>::to(topic)
        .partition(partition)
        .payload(value);
    record.key = key;
    producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .expect("record delivered")
        .offset
}

/// Every config of a topic as `name -> (value, source)`, through DescribeConfigs.
pub async fn topic_configs(
    bootstrap: &str,
    topic: &str,
) -> BTreeMap<String, (Option<String>, String)> {
    let admin = admin(bootstrap);
    let results = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &admin_options())
        .await
        .expect("DescribeConfigs");
    let resource = results
        .into_iter()
        .next()
        .expect("one resource")
        .unwrap_or_else(|code| panic!("DescribeConfigs for {topic}: {code:?}"));
    resource
        .entries
        .iter()
        .map(|e| (e.name.clone(), (e.value.clone(), format!("{:?}", e.source))))
        .collect()
}

/// Sizes of a topic's partitions through DescribeLogDirs.
pub fn partition_sizes(broker: &TestBroker, topic: &str, partitions: Vec<i32>) -> Vec<(i32, i64)> {
    let mut conn = RawConn::connect(broker.addr()).unwrap();
    let request =
        DescribeLogDirsRequest::default()
            .with_topics(Some(vec![DescribableLogDirTopic::default()
                .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partitions(partitions)]));
    let response = conn.request(4, &request).expect("DescribeLogDirs");
    assert_eq!(response.error_code, 0);
    assert_eq!(response.results.len(), 1);
    let dir = &response.results[0];
    assert!(dir.total_bytes > 0 && dir.usable_bytes > 0, "{dir:?}");
    dir.topics
        .iter()
        .flat_map(|t| t.partitions.iter())
        .map(|p| (p.partition_index, p.partition_size))
        .collect()
}

/// `(low, high)` watermarks through ListOffsets.
pub fn watermarks(bootstrap: &str, topic: &str, partition: i32) -> (i64, i64) {
    consumer(bootstrap, &[])
        .fetch_watermarks(topic, partition, CLIENT_TIMEOUT)
        .unwrap_or_else(|e| panic!("ListOffsets for {topic}-{partition}: {e}"))
}

/// Assigns `topic`/`partition` at `start` and reads `count` records.
pub fn try_consume(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    start: Offset,
    count: usize,
    extra: &[(&str, &str)],
) -> Result<Vec<OwnedMessage>, String> {
    let consumer = consumer(bootstrap, extra);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, start)
        .map_err(|e| e.to_string())?;
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        if Instant::now() > deadline {
            return Err(format!(
                "got {} of {count} records from {topic}-{partition} within {CLIENT_TIMEOUT:?}",
                out.len()
            ));
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(m)) => out.push(m.detach()),
            Some(Err(e)) => return Err(format!("after {} records: {e}", out.len())),
        }
    }
    Ok(out)
}

pub fn consume(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    start: Offset,
    count: usize,
) -> Vec<OwnedMessage> {
    try_consume(bootstrap, topic, partition, start, count, &[]).unwrap_or_else(|e| panic!("{e}"))
}

/// Reads the whole partition from the beginning and checks that offsets run
/// from the low watermark to the high watermark without a gap.
pub fn consume_all(bootstrap: &str, topic: &str, partition: i32) -> Vec<OwnedMessage> {
    let (low, high) = watermarks(bootstrap, topic, partition);
    let records = consume(
        bootstrap,
        topic,
        partition,
        Offset::Offset(low),
        (high - low) as usize,
    );
    let offsets: Vec<i64> = records.iter().map(|m| m.offset()).collect();
    let expected: Vec<i64> = (low..high).collect();
    assert_eq!(
        offsets, expected,
        "offsets of {topic}-{partition} are not contiguous"
    );
    records
}

pub fn payload(m: &OwnedMessage) -> Option<&[u8]> {
    m.payload()
}

// ---------------------------------------------------------------------------
// A raw Kafka-protocol connection
// ---------------------------------------------------------------------------

/// One blocking TCP connection speaking the Kafka protocol through the
/// `kafka-protocol` message types, plus raw frames for what no client sends.
pub struct RawConn {
    pub stream: TcpStream,
    next_correlation_id: i32,
}

impl RawConn {
    pub fn connect(addr: SocketAddr) -> std::io::Result<RawConn> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(15)))?;
        stream.set_write_timeout(Some(Duration::from_secs(15)))?;
        stream.set_nodelay(true)?;
        Ok(RawConn {
            stream,
            next_correlation_id: 1,
        })
    }

    /// Writes a size prefix and `body`.
    pub fn send_frame(&mut self, body: &[u8]) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(4 + body.len());
        buf.extend_from_slice(&(body.len() as i32).to_be_bytes());
        buf.extend_from_slice(body);
        self.stream.write_all(&buf)
    }

    pub fn read_frame(&mut self) -> std::io::Result<Bytes> {
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size)?;
        let size = i32::from_be_bytes(size);
        assert!(
            (4..=128 * 1024 * 1024).contains(&size),
            "the broker sent a frame of {size} bytes"
        );
        let mut body = vec![0u8; size as usize];
        self.stream.read_exact(&mut body)?;
        Ok(Bytes::from(body))
    }

    /// Encodes a request header and body, without the size prefix.
    pub fn encode_request<R: Request>(version: i16, correlation_id: i32, request: &R) -> BytesMut {
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("keel-test")));
        let mut buf = BytesMut::new();
        header
            .encode(&mut buf, R::header_version(version))
            .expect("encoding a request header");
        request
            .encode(&mut buf, version)
            .expect("encoding a request");
        buf
    }

    pub fn request<R: Request>(
        &mut self,
        version: i16,
        request: &R,
    ) -> anyhow::Result<R::Response> {
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id += 1;
        let body = Self::encode_request(version, correlation_id, request);
        self.send_frame(&body)?;
        let mut frame = self.read_frame()?;
        let header = ResponseHeader::decode(&mut frame, R::Response::header_version(version))?;
        anyhow::ensure!(
            header.correlation_id == correlation_id,
            "correlation id {} in answer to {correlation_id}",
            header.correlation_id
        );
        let response = R::Response::decode(&mut frame, version)?;
        anyhow::ensure!(
            !frame.has_remaining(),
            "{} bytes left after the response",
            frame.remaining()
        );
        Ok(response)
    }

    /// ApiVersions v3; the answer must have no error and list ApiVersions.
    pub fn api_versions(
        &mut self,
    ) -> anyhow::Result<kafka_protocol::messages::ApiVersionsResponse> {
        use kafka_protocol::messages::ApiVersionsRequest;
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("keel-test"))
            .with_client_software_version(StrBytes::from_static_str("1"));
        let response = self.request(3, &request)?;
        anyhow::ensure!(
            response.error_code == 0,
            "ApiVersions error {}",
            response.error_code
        );
        anyhow::ensure!(
            response.api_keys.iter().any(|k| k.api_key == 18),
            "ApiVersions does not list itself"
        );
        Ok(response)
    }

    /// One topic from Metadata v12 (which carries topic ids).
    pub fn metadata_topic(
        &mut self,
        topic: &str,
        allow_auto_topic_creation: bool,
    ) -> anyhow::Result<kafka_protocol::messages::metadata_response::MetadataResponseTopic> {
        use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
        use kafka_protocol::messages::{MetadataRequest, TopicName};
        let request = MetadataRequest::default()
            .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(
                TopicName(StrBytes::from_string(topic.to_string())),
            ))]))
            .with_allow_auto_topic_creation(allow_auto_topic_creation);
        let response = self.request(12, &request)?;
        let found = response
            .topics
            .into_iter()
            .find(|t| t.name.as_ref().map(|n| n.0.as_str()) == Some(topic));
        found.ok_or_else(|| anyhow::anyhow!("Metadata did not answer for topic {topic}"))
    }

    /// Waits until the broker closes this connection (EOF or reset) and says
    /// whether it did within `timeout`. Anything it sends first is ignored.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return false
                }
                Err(_) => return true,
            }
        }
    }
}

/// A fresh connection gets a correct ApiVersions answer.
pub fn assert_serving(broker: &mut TestBroker) {
    broker.assert_alive();
    let result = RawConn::connect(broker.addr())
        .map_err(anyhow::Error::from)
        .and_then(|mut c| c.api_versions());
    if let Err(e) = result {
        panic!(
            "a fresh connection gets no good ApiVersions answer: {e}\n--- broker log ---\n{}",
            broker.log_tail(40)
        );
    }
}

// ---------------------------------------------------------------------------
// The on-disk segment format
// ---------------------------------------------------------------------------

/// A RecordBatch v2 header as stored in a `.log` segment.
#[derive(Clone, Debug)]
pub struct StoredBatch {
    /// Byte position of the batch in the file.
    pub position: u64,
    /// Bytes the batch takes in the file (12 + batch length).
    pub size: u64,
    pub base_offset: i64,
    pub magic: i8,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub record_count: i32,
    pub crc_ok: bool,
}

impl StoredBatch {
    /// The compression codec: 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd.
    pub fn codec(&self) -> i16 {
        self.attributes & 0x7
    }

    pub fn next_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta) + 1
    }

    /// A control batch: transaction markers.
    pub fn is_control(&self) -> bool {
        self.attributes & 0x20 != 0
    }
}

/// The valid batches at the start of a segment file, in order, and the
/// number of bytes after the last of them. Stops at the first batch whose
/// length, magic or CRC is wrong, as recovery does.
pub fn read_segment(path: &Path) -> (Vec<StoredBatch>, u64) {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    parse_segment(&data)
}

/// [`read_segment`] of a segment's bytes.
fn parse_segment(data: &[u8]) -> (Vec<StoredBatch>, u64) {
    let mut batches = Vec::new();
    let mut pos = 0usize;
    while data.len() - pos >= 61 {
        let b = &data[pos..];
        let base_offset = i64::from_be_bytes(b[0..8].try_into().unwrap());
        let length = i32::from_be_bytes(b[8..12].try_into().unwrap());
        if length < 49 || data.len() - pos < 12 + length as usize {
            break;
        }
        let end = 12 + length as usize;
        let magic = b[16] as i8;
        let crc = u32::from_be_bytes(b[17..21].try_into().unwrap());
        let crc_ok = crc32c(&b[21..end]) == crc;
        if magic != 2 || !crc_ok {
            break;
        }
        batches.push(StoredBatch {
            position: pos as u64,
            size: end as u64,
            base_offset,
            magic,
            attributes: i16::from_be_bytes(b[21..23].try_into().unwrap()),
            last_offset_delta: i32::from_be_bytes(b[23..27].try_into().unwrap()),
            record_count: i32::from_be_bytes(b[57..61].try_into().unwrap()),
            crc_ok,
        });
        pos += end;
    }
    (batches, (data.len() - pos) as u64)
}

/// Every batch in a partition directory's segments, with its bytes, in
/// offset order. A segment the broker replaces while this reads (a clean,
/// a truncation, a roll) yields an empty list: callers poll.
pub fn stored_batches(partition_dir: &Path) -> Vec<(StoredBatch, Vec<u8>)> {
    let mut batches = Vec::new();
    for segment in segment_files(partition_dir) {
        let Ok(data) = std::fs::read(&segment) else {
            return Vec::new();
        };
        for b in parse_segment(&data).0 {
            let bytes = data[b.position as usize..(b.position + b.size) as usize].to_vec();
            batches.push((b, bytes));
        }
    }
    batches
}

/// The `.log` segments of a partition directory, sorted by base offset.
pub fn segment_files(partition_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(partition_dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

/// CRC-32C (Castagnoli), bitwise: slow, but test files are small.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

// ---------------------------------------------------------------------------
// A proxy that cuts connections
// ---------------------------------------------------------------------------

/// A TCP proxy between clients and the broker that, while chaos is on, cuts
/// each connection after a random number of bytes in either direction: in
/// the middle of a request (never delivered) or of a response (delivered and
/// applied, but never acknowledged, so the client retries it).
///
/// The broker must advertise the proxy's address so clients never go around
/// it; after a broker restart `set_upstream` points it at the new port.
pub struct ChaosProxy {
    addr: SocketAddr,
    shared: Arc<ProxyShared>,
    accept_thread: Option<JoinHandle<()>>,
}

struct ProxyShared {
    upstream: Mutex<Option<SocketAddr>>,
    stop: AtomicBool,
    chaos: AtomicBool,
    cuts: AtomicUsize,
    cuts_max: AtomicUsize,
    /// Both sockets of every connection, so `cut_all` and drop can end them.
    connections: Mutex<Vec<(TcpStream, TcpStream)>>,
    rng: Mutex<rand::rngs::StdRng>,
}

impl ChaosProxy {
    pub fn start(seed: u64) -> ChaosProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the proxy");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(ProxyShared {
            upstream: Mutex::new(None),
            stop: AtomicBool::new(false),
            chaos: AtomicBool::new(false),
            cuts: AtomicUsize::new(0),
            cuts_max: AtomicUsize::new(usize::MAX),
            connections: Mutex::new(Vec::new()),
            rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)),
        });
        let accept_shared = shared.clone();
        let accept_thread = std::thread::spawn(move || accept_loop(listener, accept_shared));
        ChaosProxy {
            addr,
            shared,
            accept_thread: Some(accept_thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }

    /// The `advertised.listeners` value a broker behind this proxy needs.
    pub fn advertised_listener(&self) -> String {
        format!("PLAINTEXT://{}", self.addr)
    }

    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.shared.upstream.lock().unwrap() = Some(upstream);
    }

    /// Turns random cuts on or off; at most `cuts_max` cuts in all.
    pub fn set_chaos(&self, on: bool, cuts_max: usize) {
        self.shared.cuts_max.store(cuts_max, Ordering::SeqCst);
        self.shared.chaos.store(on, Ordering::SeqCst);
    }

    pub fn cuts(&self) -> usize {
        self.shared.cuts.load(Ordering::SeqCst)
    }

    /// Ends every open connection now.
    pub fn cut_all(&self) {
        for (a, b) in self.shared.connections.lock().unwrap().drain(..) {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.cut_all();
        if let Some(t) = self.accept_thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<ProxyShared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(_) => continue,
        };
        let _ = client.set_nonblocking(false);
        let upstream_addr = *shared.upstream.lock().unwrap();
        let Some(upstream_addr) = upstream_addr else {
            continue;
        };
        let Ok(server) = TcpStream::connect_timeout(&upstream_addr, Duration::from_secs(2)) else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = (
            client.try_clone(),
            server.try_clone(),
            client.try_clone(),
            server.try_clone(),
        ) else {
            continue;
        };
        shared.connections.lock().unwrap().push((c3, s3));
        let (up_budget, down_budget) = {
            let mut rng = shared.rng.lock().unwrap();
            (
                rng.gen_range(200..20_000usize),
                rng.gen_range(100..3_000usize),
            )
        };
        let s = shared.clone();
        std::thread::spawn(move || pump(client, server, up_budget, s));
        let s = shared.clone();
        std::thread::spawn(move || pump(s2, c2, down_budget, s));
    }
}

/// Copies `from` to `to`; while chaos is on, cuts both after `budget` bytes.
fn pump(mut from: TcpStream, mut to: TcpStream, budget: usize, shared: Arc<ProxyShared>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut forwarded = 0usize;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chaos = shared.chaos.load(Ordering::SeqCst);
        if chaos && forwarded + n > budget {
            let cuts = shared.cuts.fetch_add(1, Ordering::SeqCst);
            if cuts < shared.cuts_max.load(Ordering::SeqCst) {
                // Forward part of this chunk, so the cut lands mid-frame.
                let _ = to.write_all(&buf[..budget.saturating_sub(forwarded)]);
                break;
            }
            shared.cuts.fetch_sub(1, Ordering::SeqCst);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        forwarded += n;
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

// ---------------------------------------------------------------------------
// Hand-built requests
// ---------------------------------------------------------------------------

/// A record's key and value, either possibly null.
pub type KeyValue<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// Bytes of a RecordBatch v2 holding `records` (key, value) pairs, no
/// compression, not idempotent.
pub fn encode_batch(records: &[KeyValue<'_>]) -> Bytes {
    encode_batch_with(records, kafka_protocol::records::Compression::None)
}

/// Like `encode_batch`, compressed with `compression`.
pub fn encode_batch_with(
    records: &[KeyValue<'_>],
    compression: kafka_protocol::records::Compression,
) -> Bytes {
    use kafka_protocol::records::{Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, (k, v))| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder starts a new batch whenever offset - sequence
            // changes; this keeps one batch with base sequence -1 (none).
            sequence: i as i32 - 1,
            timestamp: now,
            key: k.map(Bytes::copy_from_slice),
            value: v.map(Bytes::copy_from_slice),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .expect("encoding a record batch");
    buf.freeze()
}

/// A Produce v9 request (acks=1) carrying `records` for `topic`-0.
pub fn produce_request(topic: &str, records: Bytes) -> kafka_protocol::messages::ProduceRequest {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ProduceRequest, TopicName};
    ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(records))])])
}

/// Puts a big-endian i32 into a new buffer (for hand-written frames).
pub fn be_i32(v: i32) -> [u8; 4] {
    v.to_be_bytes()
}

pub fn put_str(buf: &mut BytesMut, s: &str) {
    buf.put_i16(s.len() as i16);
    buf.put_slice(s.as_bytes());
}

/// A one-partition Fetch v12 (no session) and its answer for that partition.
pub fn raw_fetch(
    conn: &mut RawConn,
    topic: &str,
    partition: i32,
    fetch_offset: i64,
    max_wait_ms: i32,
) -> anyhow::Result<kafka_protocol::messages::fetch_response::PartitionData> {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{BrokerId, FetchRequest, TopicName};
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(1024 * 1024)
        .with_isolation_level(0)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(partition)
                .with_current_leader_epoch(-1)
                .with_fetch_offset(fetch_offset)
                .with_log_start_offset(-1)
                .with_partition_max_bytes(1024 * 1024)])]);
    let response = conn.request(12, &request)?;
    anyhow::ensure!(
        response.error_code == 0,
        "Fetch error {}",
        response.error_code
    );
    response
        .responses
        .into_iter()
        .flat_map(|t| t.partitions)
        .find(|p| p.partition_index == partition)
        .ok_or_else(|| anyhow::anyhow!("Fetch did not answer for partition {partition}"))
}
