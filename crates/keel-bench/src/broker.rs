//! The brokers under test: started here, each with a temporary data dir,
//! alone or as a cluster on loopback; or a broker given by address.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How long a started node may take to print its listening line: a cluster
/// node prints it only once the quorum has a leader and it has registered.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Broker {
    bootstrap: String,
    child: Option<Child>,
    /// Holds the log dir (`data`) and the broker's stderr (`stderr.log`).
    dir: Option<tempfile::TempDir>,
}

/// A broker process started but not yet known to be listening (dropped, it
/// is killed, as a `Broker` is).
pub struct Starting {
    /// Its `bootstrap` is empty until the broker listens.
    broker: Broker,
    /// The broker's first line of stdout, once it prints it.
    listening: mpsc::Receiver<String>,
}

impl Broker {
    pub fn external(bootstrap: String) -> Self {
        Self {
            bootstrap,
            child: None,
            dir: None,
        }
    }

    /// A lone broker on a free port.
    pub fn start(keel: &Path, overrides: &[String]) -> Result<Self> {
        Self::spawn(
            keel,
            &["listeners=PLAINTEXT://127.0.0.1:0".to_string()],
            overrides,
        )?
        .wait()
    }

    /// Starts a broker process with `settings` and then `overrides` (so the
    /// caller's overrides win), without waiting for it to listen.
    pub fn spawn(keel: &Path, settings: &[String], overrides: &[String]) -> Result<Starting> {
        // On disk, not tmpfs, so the figures include the real write path.
        let dir = tempfile::Builder::new()
            .prefix("keel-bench-")
            .tempdir_in(".")?;
        let stderr = File::create(dir.path().join("stderr.log"))?;
        let mut command = Command::new(keel);
        command
            // Plain INFO lines, whatever the caller's environment says: the
            // compaction suite reads the cleaner's figures from them.
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .arg("server")
            .args([
                "--override",
                &format!("log.dirs={}", dir.path().join("data").display()),
            ]);
        for o in settings.iter().chain(overrides) {
            command.args(["--override", o]);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", keel.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, listening) = mpsc::channel();
        // Sends the first line, then drains stdout until the broker exits,
        // so that it never writes to a closed or full pipe.
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines.map_while(Result::ok) {}
        });
        Ok(Starting {
            broker: Broker {
                bootstrap: String::new(),
                child: Some(child),
                dir: Some(dir),
            },
            listening,
        })
    }

    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// The log dir of a broker started here.
    pub fn log_dir(&self) -> Option<PathBuf> {
        Some(self.dir.as_ref()?.path().join("data"))
    }

    /// The file a broker started here writes its log lines to.
    pub fn stderr_path(&self) -> Option<PathBuf> {
        Some(self.dir.as_ref()?.path().join("stderr.log"))
    }

    /// Current and peak resident set size, from /proc.
    pub fn rss_mib(&self) -> Option<(f64, f64)> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| -> Option<f64> {
            let line = status.lines().find(|l| l.starts_with(name))?;
            let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some((kib / 1024.0 * 10.0).round() / 10.0)
        };
        Some((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// Leaves the broker's dir (data and `stderr.log`) in place when it is
    /// dropped, so that its log can be read after a failure.
    pub fn keep_dir(&mut self) {
        if let Some(dir) = &mut self.dir {
            dir.disable_cleanup(true);
        }
    }

    /// SIGKILLs a broker started here, and reaps it.
    pub fn kill(&mut self) -> Result<()> {
        let Some(child) = &mut self.child else {
            bail!("{} was not started here", self.bootstrap);
        };
        child.kill()?;
        child.wait()?;
        Ok(())
    }
}

impl Starting {
    /// Waits for the broker's listening line. On failure the broker's dir is
    /// kept, for its `stderr.log`.
    pub fn wait(mut self) -> Result<Broker> {
        let result = self.await_listening();
        if result.is_err() {
            self.broker.keep_dir();
        }
        self.broker.bootstrap = result?;
        Ok(self.broker)
    }

    fn await_listening(&mut self) -> Result<String> {
        let stderr = self.broker.stderr_path().expect("started here");
        let child = self.broker.child.as_mut().expect("started here");
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let line = loop {
            match self.listening.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => break line,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                // Stdout closed without a line: the broker is exiting.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait()?;
                    bail!(
                        "broker exited with {status} before listening; see {}",
                        stderr.display()
                    );
                }
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "broker exited with {status} before listening; see {}",
                    stderr.display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "broker did not listen within {STARTUP_TIMEOUT:?}; see {}",
                    stderr.display()
                );
            }
        };
        let line = line.trim();
        let listening = line
            .strip_prefix("keel listening on ")
            .or_else(|| line.strip_prefix("keel controller listening on "));
        match listening {
            Some(addr) => Ok(addr.to_string()),
            None => bail!("broker did not start: {line:?}; see {}", stderr.display()),
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Brokers with node ids `1..=n` on loopback ports chosen here: each its
/// own controller quorum voter, or (Kafka's isolated mode) following a
/// quorum of controller-only nodes with ids from 101.
pub struct Cluster {
    /// Node `id` is `nodes[id - 1]`.
    nodes: Vec<Broker>,
    /// The controller-only nodes, if any; kept running with the brokers.
    controllers: Vec<Broker>,
}

/// The first controller-only node's id.
const CONTROLLER_IDS_FROM: usize = 101;

impl Cluster {
    /// `n` brokers, and `controllers` controller-only nodes as the quorum
    /// (0: every broker is a voter too).
    pub fn start(keel: &Path, n: usize, controllers: usize, overrides: &[String]) -> Result<Self> {
        // Held together until every port is chosen, so that they differ.
        let sockets = (0..2 * n + controllers)
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<std::io::Result<Vec<_>>>()?;
        let ports = sockets
            .iter()
            .map(|s| Ok(s.local_addr()?.port()))
            .collect::<std::io::Result<Vec<u16>>>()?;
        drop(sockets);
        let (client_ports, controller_ports) = ports.split_at(n);
        // Brokers' controller listeners first, then the controllers'.
        let voter_ids: Vec<usize> = if controllers > 0 {
            (0..controllers).map(|i| CONTROLLER_IDS_FROM + i).collect()
        } else {
            (1..=n).collect()
        };
        let controller_port = |id: usize| {
            if id >= CONTROLLER_IDS_FROM {
                controller_ports[n + id - CONTROLLER_IDS_FROM]
            } else {
                controller_ports[id - 1]
            }
        };
        let voters = voter_ids
            .iter()
            .map(|&id| format!("{id}@127.0.0.1:{}", controller_port(id)))
            .collect::<Vec<_>>()
            .join(",");
        let mut starting_controllers = Vec::with_capacity(controllers);
        for &id in voter_ids.iter().filter(|_| controllers > 0) {
            let settings = [
                format!("node.id={id}"),
                "process.roles=controller".to_string(),
                format!("listeners=CONTROLLER://127.0.0.1:{}", controller_port(id)),
                format!("controller.quorum.voters={voters}"),
            ];
            starting_controllers.push(Broker::spawn(keel, &settings, overrides)?);
        }
        let broker_roles = if controllers > 0 {
            "broker"
        } else {
            "broker,controller"
        };
        // Every node is started before any is waited for: a node prints its
        // listening line only once a quorum majority is up.
        let mut starting = Vec::with_capacity(n);
        for (i, client_port) in client_ports.iter().enumerate() {
            let id = i + 1;
            let settings = [
                format!("node.id={id}"),
                format!("process.roles={broker_roles}"),
                format!(
                    "listeners=PLAINTEXT://127.0.0.1:{client_port},CONTROLLER://127.0.0.1:{}",
                    controller_port(id)
                ),
                format!("controller.quorum.voters={voters}"),
                format!("default.replication.factor={n}"),
                format!("offsets.topic.replication.factor={n}"),
            ];
            starting.push(Broker::spawn(keel, &settings, overrides)?);
        }
        let mut started = Vec::with_capacity(controllers + n);
        let mut waiting = starting_controllers.into_iter().chain(starting);
        while let Some(node) = waiting.next() {
            let index = started.len();
            match node.wait() {
                Ok(broker) => started.push(broker),
                Err(e) => {
                    // The others' logs may tell why, too.
                    started.iter_mut().for_each(Broker::keep_dir);
                    let mut others = Vec::new();
                    for mut s in waiting {
                        s.broker.keep_dir();
                        others.extend(s.broker.stderr_path());
                    }
                    let others: Vec<_> = started
                        .iter()
                        .filter_map(Broker::stderr_path)
                        .chain(others)
                        .map(|p| p.display().to_string())
                        .collect();
                    let what = match index.checked_sub(controllers) {
                        None => format!("controller {}", voter_ids[index]),
                        Some(i) => format!("node {} of {n}", i + 1),
                    };
                    return Err(e.context(format!(
                        "starting {what} (the other nodes' logs: {})",
                        others.join(", ")
                    )));
                }
            }
        }
        let nodes = started.split_off(controllers);
        Ok(Self {
            nodes,
            controllers: started,
        })
    }

    /// Every node's address, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(Broker::bootstrap)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn node_mut(&mut self, id: i32) -> Result<&mut Broker> {
        let n = self.nodes.len();
        usize::try_from(id)
            .ok()
            .and_then(|id| self.nodes.get_mut(id.checked_sub(1)?))
            .with_context(|| format!("no node {id} in a cluster of {n}"))
    }

    /// Leaves every node's dir in place when the cluster is dropped.
    pub fn keep_dirs(&mut self) {
        self.nodes
            .iter_mut()
            .chain(&mut self.controllers)
            .for_each(Broker::keep_dir);
    }

    /// Each node's stderr file, for error messages.
    pub fn stderr_paths(&self) -> String {
        let brokers = self.nodes.iter().enumerate().map(|(i, b)| (i + 1, b));
        let controllers =
            (self.controllers.iter().enumerate()).map(|(i, b)| (CONTROLLER_IDS_FROM + i, b));
        brokers
            .chain(controllers)
            .filter_map(|(id, b)| Some(format!("node {id}: {}", b.stderr_path()?.display())))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Each node's current and peak resident set size, MiB, by node id.
    pub fn rss_mib(&self) -> serde_json::Value {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                let (rss, peak) = b.rss_mib()?;
                Some(((i + 1).to_string(), serde_json::json!([rss, peak])))
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}
