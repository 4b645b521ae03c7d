//! `keel dev cluster`: a multi-node cluster on loopback for trying things
//! out. Each node is a `keel server` child process (broker and controller)
//! with its own ports and log dir; their output is relayed, prefixed with
//! the node, and Ctrl-C or SIGTERM shuts them all down cleanly.

use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::sync::mpsc;

/// How long the nodes get to exit after SIGTERM before they are killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// How often the nodes are checked for having exited.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

#[derive(clap::Subcommand, Debug)]
pub enum DevCommand {
    /// Run a cluster of N nodes on this machine until Ctrl-C.
    ///
    /// Node i gets node.id=i, PLAINTEXT port BASE+i-1, CONTROLLER port
    /// BASE+100+i-1 and log dir DIR/node-i. The data is kept: running the
    /// same command again resumes the cluster; delete DIR to start afresh.
    Cluster(ClusterArgs),
}

#[derive(clap::Args, Debug)]
pub struct ClusterArgs {
    /// Number of nodes. At most 100, so that the PLAINTEXT ports stay below
    /// the CONTROLLER ports.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=100))]
    brokers: u16,
    /// Directory holding each node's log dir.
    #[arg(long, default_value = "keel-dev-cluster")]
    dir: PathBuf,
    /// PLAINTEXT port of node 1; CONTROLLER ports start 100 above it.
    #[arg(long, default_value_t = 9092)]
    base_port: u16,
    /// A setting for every node, applied after the cluster's own:
    /// `--override default.replication.factor=3`.
    #[arg(long = "override", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

pub async fn run(cmd: DevCommand) -> Result<()> {
    match cmd {
        DevCommand::Cluster(args) => cluster(args).await,
    }
}

/// One `keel server` child.
struct Node {
    id: u16,
    child: Child,
    /// Set once the child has exited and been reaped; its pid is then no
    /// longer ours to signal.
    exited: bool,
}

async fn cluster(args: ClusterArgs) -> Result<()> {
    let n = args.brokers;
    let last_port = u32::from(args.base_port) + 100 + u32::from(n) - 1;
    if last_port > u32::from(u16::MAX) {
        bail!(
            "--base-port {} leaves no room for {n} controller ports",
            args.base_port
        );
    }
    let plaintext_port = |id: u16| args.base_port + id - 1;
    let controller_port = |id: u16| args.base_port + 100 + id - 1;
    let voters = (1..=n)
        .map(|id| format!("{id}@127.0.0.1:{}", controller_port(id)))
        .collect::<Vec<_>>()
        .join(",");
    let exe = std::env::current_exe().context("locating the keel executable")?;

    // Every node is started before any is waited for: a node prints its
    // listening line only once a quorum majority is up to register it with.
    let (listening_tx, mut listening_rx) = mpsc::unbounded_channel();
    let mut nodes = Vec::with_capacity(usize::from(n));
    for id in 1..=n {
        let log_dir = args.dir.join(format!("node-{id}"));
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("creating {}", log_dir.display()))?;
        let settings = [
            format!("node.id={id}"),
            format!(
                "listeners=PLAINTEXT://127.0.0.1:{},CONTROLLER://127.0.0.1:{}",
                plaintext_port(id),
                controller_port(id)
            ),
            format!("controller.quorum.voters={voters}"),
            format!("log.dirs={}", log_dir.display()),
        ];
        let mut cmd = Command::new(&exe);
        cmd.arg("server");
        for setting in settings.iter().chain(&args.overrides) {
            cmd.arg("--override").arg(setting);
        }
        // Colours only where a person reads them; the children cannot tell,
        // as their stderr is our pipe.
        if !std::io::stderr().is_terminal() {
            cmd.env("NO_COLOR", "1");
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting node {id}"))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let tx = listening_tx.clone();
        std::thread::spawn(move || {
            relay(id, stdout, std::io::stdout, |line| {
                if let Some(addr) = line.trim().strip_prefix("keel listening on ") {
                    let _ = tx.send((id, addr.trim().to_string()));
                }
            })
        });
        std::thread::spawn(move || relay(id, stderr, std::io::stderr, |_| {}));
        nodes.push(Node {
            id,
            child,
            exited: false,
        });
    }
    drop(listening_tx);

    let mut listening: Vec<Option<String>> = vec![None; usize::from(n)];
    let mut poll = tokio::time::interval(POLL_INTERVAL);
    let shutdown = super::server::shutdown_signal()?;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some((id, addr)) = listening_rx.recv() => {
                // Each node prints its line once, so this holds once.
                listening[usize::from(id) - 1] = Some(addr);
                if listening.iter().all(Option::is_some) {
                    let servers: Vec<&str> = listening.iter().flatten().map(String::as_str).collect();
                    println!("keel dev cluster: all {n} nodes are up");
                    println!("bootstrap.servers={}", servers.join(","));
                }
            }
            _ = poll.tick() => {
                reap(&mut nodes, |id, status| {
                    eprintln!("keel dev cluster: node {id} exited unexpectedly ({status}); the others keep running");
                })?;
                if nodes.iter().all(|node| node.exited) {
                    bail!("every node has exited");
                }
            }
        }
    }
    shut_down(&mut nodes).await
}

/// Copies `from` line by line to `to`, prefixed with the node, then shows
/// each line to `inspect`. Returns when the child closes the pipe.
fn relay<W: Write>(id: u16, from: impl Read, to: impl Fn() -> W, mut inspect: impl FnMut(&str)) {
    for line in BufReader::new(from).lines() {
        let Ok(line) = line else { break };
        // A closed terminal or pipe must not stop the draining: the child
        // would block on a full pipe.
        let _ = writeln!(to(), "[node {id}] {line}");
        // After the line is out, so what `inspect` sets off comes after it.
        inspect(&line);
    }
}

/// Notes every node that has exited since the last call, telling `report`.
fn reap(nodes: &mut [Node], mut report: impl FnMut(u16, std::process::ExitStatus)) -> Result<()> {
    for node in nodes.iter_mut().filter(|node| !node.exited) {
        if let Some(status) = node.child.try_wait().context("polling a node")? {
            node.exited = true;
            report(node.id, status);
        }
    }
    Ok(())
}

/// SIGTERM to every node still running, then waits for them all; a node
/// still there after `SHUTDOWN_GRACE`, or a second Ctrl-C, gets SIGKILL.
async fn shut_down(nodes: &mut [Node]) -> Result<()> {
    eprintln!("keel dev cluster: stopping the nodes");
    // After a Ctrl-C in a terminal the nodes have had SIGINT already, being
    // in our process group; this covers a signal sent to us alone.
    for node in nodes.iter().filter(|node| !node.exited) {
        sigterm(node.child.id())?;
    }
    let deadline = tokio::time::sleep(SHUTDOWN_GRACE);
    let again = tokio::signal::ctrl_c();
    tokio::pin!(deadline, again);
    let mut poll = tokio::time::interval(POLL_INTERVAL);
    let mut killed = false;
    loop {
        let why = tokio::select! {
            _ = poll.tick() => None,
            _ = &mut deadline, if !killed => Some("nodes still running after the grace period"),
            _ = &mut again, if !killed => Some("interrupted again"),
        };
        if let Some(why) = why {
            eprintln!("keel dev cluster: {why}; killing them");
            for node in nodes.iter_mut().filter(|node| !node.exited) {
                let _ = node.child.kill();
            }
            killed = true;
        }
        reap(nodes, |id, status| {
            if !status.success() {
                eprintln!("keel dev cluster: node {id} exited with {status}");
            }
        })?;
        if nodes.iter().all(|node| node.exited) {
            return Ok(());
        }
    }
}

/// Sends SIGTERM to `pid`, a child not yet reaped (so the pid is still
/// ours); a node that exited since the last reap makes it fail harmlessly.
fn sigterm(pid: u32) -> Result<()> {
    let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        tracing::debug!(pid, error = %std::io::Error::last_os_error(), "SIGTERM failed");
    }
    Ok(())
}
