//! Quorums in one process over real loopback TCP.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use keel_types::{LeaderEpoch, Offset};
use parking_lot::Mutex;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::frame::{decode, encode, read_frame, write_frame, Request, Response};
use crate::type_config::Vote;
use crate::{
    Committed, ControllerRequestHandler, MetadataQuorum, QuorumConfig, QuorumError, QuorumInfo,
    StateMachineApply, CONTROLLER_REQUEST_BYTES_MAX,
};

/// Generous: two cores are shared with other builds.
const WAIT: Duration = Duration::from_secs(10);

/// What a node's application saw: one (offset, records) per applied proposal.
type Applied = Arc<Mutex<Vec<(Offset, Vec<String>)>>>;

struct Recorder(Applied);

impl StateMachineApply for Recorder {
    fn apply(&mut self, offset: Offset, _: LeaderEpoch, records: &[Bytes]) {
        let records = records
            .iter()
            .map(|r| String::from_utf8(r.to_vec()).unwrap())
            .collect();
        let mut applied = self.0.lock();
        assert!(
            applied.last().is_none_or(|(o, _)| *o < offset),
            "applied out of order"
        );
        applied.push((offset, records));
    }

    fn snapshot(&self) -> Bytes {
        serde_json::to_vec(&*self.0.lock()).unwrap().into()
    }

    fn install_snapshot(&mut self, last_offset: Offset, snapshot: &[u8]) -> Result<(), String> {
        let state: Vec<(Offset, Vec<String>)> =
            serde_json::from_slice(snapshot).map_err(|e| e.to_string())?;
        assert!(state.last().is_none_or(|(o, _)| *o <= last_offset));
        *self.0.lock() = state;
        Ok(())
    }
}

/// Answers a forwarded request with the id of the node that handled it and
/// how the request got there: `#[tokio::test]` runs the test body outside
/// any task, so one handled inside a task came through the listener.
struct Answerer(i32);

impl ControllerRequestHandler for Answerer {
    fn handle(&self, request: Bytes) -> Pin<Box<dyn Future<Output = Bytes> + Send>> {
        let via = match tokio::task::try_id() {
            Some(_) => "listener",
            None => "caller",
        };
        let request = String::from_utf8_lossy(&request);
        let answer = Bytes::from(format!("{} via {via}: {request}", self.0));
        Box::pin(async move { answer })
    }
}

/// A port for a node to bind, and to bind again when it restarts: below the
/// kernel's ephemeral ports (from 32768 on Linux, 49152 elsewhere), which
/// an outgoing connection could take while the node is down, and never
/// handed out twice in this process.
fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = rand::thread_rng().gen_range(20_000..32_768);
        if HANDED_OUT.lock().unwrap().insert(port)
            && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
}

struct Node {
    config: QuorumConfig,
    applied: Applied,
    quorum: Option<MetadataQuorum>,
}

impl Node {
    fn new(id: i32, voters: &BTreeMap<i32, String>, root: &Path) -> Node {
        let mut config = QuorumConfig::new(id, voters.clone(), root.join(format!("node-{id}")));
        // An observer listens where it likes, and registers there.
        config.listener = voters
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("127.0.0.1:{}", free_port()));
        config.election_timeout_ms = 200;
        config.fetch_timeout_ms = 400;
        config.request_timeout_ms = 1000;
        config.log_segment_bytes = 2048;
        config.max_record_bytes_between_snapshots = 1024;
        config.log_entries_kept_after_snapshot = 0;
        Node {
            config,
            applied: Applied::default(),
            quorum: None,
        }
    }

    /// Starts (or restarts) the node with an empty application, as a new
    /// process would.
    async fn start(&mut self) {
        self.applied = Applied::default();
        let app = Box::new(Recorder(Arc::clone(&self.applied)));
        let requests = Arc::new(Answerer(self.config.node_id));
        self.quorum = Some(
            MetadataQuorum::start(self.config.clone(), app, requests)
                .await
                .unwrap(),
        );
    }

    async fn stop(&mut self) {
        self.quorum.take().unwrap().shutdown().await.unwrap();
    }

    fn q(&self) -> &MetadataQuorum {
        self.quorum.as_ref().unwrap()
    }

    fn dir(&self) -> PathBuf {
        self.config.partition_dir()
    }

    fn records(&self) -> Vec<String> {
        self.applied
            .lock()
            .iter()
            .flat_map(|(_, r)| r.clone())
            .collect()
    }

    async fn wait(&self, what: &str, pred: impl FnMut(&QuorumInfo) -> bool) -> QuorumInfo {
        let mut info = self.q().subscribe();
        let seen =
            tokio::time::timeout(WAIT, async { info.wait_for(pred).await.map(|i| i.clone()) })
                .await;
        seen.unwrap_or_else(|_| {
            panic!(
                "node {}: {what}: {:?}",
                self.config.node_id,
                self.q().info()
            )
        })
        .unwrap()
    }

    async fn wait_applied(&self, offset: Offset) {
        self.wait("apply", |i| i.applied_offset >= offset).await;
    }
}

fn cluster(n: i32, root: &Path) -> Vec<Node> {
    let voters: BTreeMap<i32, String> = (1..=n)
        .map(|id| (id, format!("127.0.0.1:{}", free_port())))
        .collect();
    (1..=n).map(|id| Node::new(id, &voters, root)).collect()
}

/// Waits until the running nodes agree on a leader; returns its index.
async fn leader(nodes: &[Node]) -> usize {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let infos: Vec<QuorumInfo> = nodes
            .iter()
            .filter(|n| n.quorum.is_some())
            .map(|n| n.q().info())
            .collect();
        if let Some(id) = infos[0].leader_id {
            let leading = nodes.iter().position(|n| n.config.node_id == id);
            if infos.iter().all(|i| i.leader_id == Some(id))
                && leading.is_some_and(|l| nodes[l].quorum.is_some())
            {
                return leading.unwrap();
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no leader: {infos:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn propose(node: &Node, records: &[&str]) -> Result<Committed, QuorumError> {
    node.q().wait_until_active().await?;
    let records = records.iter().map(|r| Bytes::from(r.to_string())).collect();
    node.q().propose(records).await
}

/// Forwards `request` until an answer comes, as a broker retries while the
/// controller moves.
async fn forward(node: &Node, request: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match node.q().forward(Bytes::from(request.to_string())).await {
            Ok(answer) => return String::from_utf8(answer.to_vec()).unwrap(),
            Err(QuorumError::NotController { .. } | QuorumError::ControllerUnreachable { .. })
                if tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("node {}: {e}", node.config.node_id),
        }
    }
}

/// Waits until `node` has purged its log past `offset`, so that a node
/// behind it can only catch up by snapshot.
async fn wait_purged_past(node: &Node, offset: Offset) {
    let purged = || {
        node.q()
            .raft
            .metrics()
            .borrow()
            .purged
            .map_or(-1, |id| id.index as i64)
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while purged() <= offset {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {} never purged",
            node.config.node_id
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Proposes `n` records of 64 bytes, enough for a snapshot (1 KiB between
/// snapshots), and returns them with where the last one was committed.
async fn propose_many(node: &Node, n: usize) -> (Vec<String>, Committed) {
    let mut records = Vec::new();
    let mut last = None;
    for i in 0..n {
        let record = format!("{i:064}");
        last = Some(propose(node, &[&record]).await.unwrap());
        records.push(record);
    }
    (records, last.expect("n > 0"))
}

#[tokio::test]
async fn single_voter_commits_and_replays_in_order_after_restart() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = cluster(1, root.path());
    let node = &mut nodes[0];
    node.start().await;
    assert!(node.q().info().is_leader(), "a single voter leads at once");
    let a = propose(node, &["a"]).await.unwrap();
    let bc = propose(node, &["b", "c"]).await.unwrap();
    let d = propose(node, &["d"]).await.unwrap();
    assert!(a.offset < bc.offset && bc.offset < d.offset);
    assert_eq!(node.q().info().applied_offset, d.offset);
    let before = node.applied.lock().clone();
    assert_eq!(
        before,
        [
            (a.offset, vec!["a".to_string()]),
            (bc.offset, vec!["b".to_string(), "c".to_string()]),
            (d.offset, vec!["d".to_string()]),
        ]
    );
    node.stop().await;
    assert!(node.dir().join("quorum-state").exists());

    node.start().await;
    assert_eq!(*node.applied.lock(), before, "replayed from the log");
    let e = propose(node, &["e"]).await.unwrap();
    assert!(e.offset > d.offset);
    assert!(e.leader_epoch >= d.leader_epoch);
    node.stop().await;
}

#[tokio::test]
async fn voters_other_than_the_logs_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = cluster(1, root.path());
    nodes[0].start().await;
    let big = vec![Bytes::from(vec![0u8; crate::PROPOSAL_BYTES_MAX])];
    assert!(matches!(
        nodes[0].q().propose(big).await,
        Err(QuorumError::ProposalTooLarge { .. })
    ));
    nodes[0].stop().await;
    let mut config = nodes[0].config.clone();
    config
        .voters
        .insert(2, format!("127.0.0.1:{}", free_port()));
    let app = Box::new(Recorder(Applied::default()));
    match MetadataQuorum::start(config, app, Arc::new(Answerer(1))).await {
        Err(QuorumError::Config(why)) => assert!(why.contains("voters"), "{why}"),
        other => panic!("started with other voters: {:?}", other.map(|q| q.info())),
    }
    // Nothing was left holding the directory or the port.
    nodes[0].start().await;
    nodes[0].stop().await;
}

#[tokio::test]
async fn single_voter_adopts_a_pre_raft_log() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = cluster(1, root.path());
    let node = &mut nodes[0];
    {
        // As today's `MetadataStore` writes it: batches of records at epoch 0.
        let mut log = keel_storage::Log::open(
            node.dir(),
            crate::config::METADATA_TOPIC_ID,
            keel_storage::LogConfig::default(),
            None,
            i64::MAX,
            0,
        )
        .unwrap();
        let mut batch = keel_storage::BatchBuilder::new(0);
        batch.push(None, Some(b"cluster-id"), &[], 5);
        batch.push(None, Some(b"topic"), &[], 5);
        log.append_as_leader(&batch.build(), 0, 5).unwrap();
        log.close().unwrap();
    }
    node.start().await;
    let next = propose(node, &["after"]).await.unwrap();
    assert_eq!(
        *node.applied.lock(),
        [
            (0, vec!["cluster-id".to_string()]),
            (1, vec!["topic".to_string()]),
            (next.offset, vec!["after".to_string()]),
        ]
    );
    node.stop().await;
}

#[tokio::test]
async fn three_voters_elect_replicate_fail_over_and_catch_up_by_snapshot() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = cluster(3, root.path());
    for node in &mut nodes {
        node.start().await;
    }
    let first = leader(&nodes).await;
    let committed = propose(&nodes[first], &["x1", "x2"]).await.unwrap();
    for node in &nodes {
        node.wait_applied(committed.offset).await;
        assert_eq!(node.records(), ["x1", "x2"]);
    }
    let follower = (first + 1) % 3;
    match propose(&nodes[follower], &["nope"]).await {
        Err(QuorumError::NotController { leader_id, .. }) => {
            assert_eq!(leader_id, Some(nodes[first].config.node_id));
        }
        other => panic!("a follower proposed: {other:?}"),
    }
    let records = nodes[follower].q().propose(vec![Bytes::from("nope")]).await;
    assert!(matches!(records, Err(QuorumError::NotController { .. })));

    // The leader goes away; the other two elect one of themselves.
    let old_epoch = nodes[first].q().info().leader_epoch;
    nodes[first].stop().await;
    let second = leader(&nodes).await;
    assert_ne!(second, first);
    assert!(nodes[second].q().info().leader_epoch > old_epoch);

    // A snapshot after which the log is purged, so the returning node must
    // take the snapshot.
    let mut expected = nodes[second].records();
    let (records, last) = propose_many(&nodes[second], 40).await;
    expected.extend(records);
    wait_purged_past(&nodes[second], committed.offset).await;

    nodes[first].start().await;
    nodes[first].wait_applied(last.offset).await;
    for node in &nodes {
        node.wait_applied(last.offset).await;
        assert_eq!(node.records(), expected, "node {}", node.config.node_id);
    }
    let checkpoints = std::fs::read_dir(nodes[first].dir())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".checkpoint")
        })
        .count();
    assert_eq!(checkpoints, 1, "the returning node installed a snapshot");
    assert_eq!(leader(&nodes).await, second);
    let more = propose(&nodes[second], &["after"]).await.unwrap();
    nodes[first].wait_applied(more.offset).await;
    for node in &mut nodes {
        node.stop().await;
    }
}

#[tokio::test]
async fn divergent_uncommitted_suffix_is_truncated() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = cluster(3, root.path());
    for node in &mut nodes {
        node.start().await;
    }
    let old = leader(&nodes).await;
    let base = propose(&nodes[old], &["base"]).await.unwrap();
    for node in &nodes {
        node.wait_applied(base.offset).await;
    }
    let followers: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    for &f in &followers {
        nodes[f].stop().await;
    }
    // Alone, the leader appends but cannot commit; then it crashes.
    let log_end = nodes[old].q().info().log_end_offset;
    let raft = nodes[old].q().raft.clone();
    let stuck = tokio::spawn(async move {
        raft.client_write(crate::type_config::Proposal {
            timestamp_ms: 0,
            records: vec![Bytes::from("divergent")],
        })
        .await
    });
    nodes[old]
        .wait("local append", |i| i.log_end_offset > log_end)
        .await;
    // Stopped means silent: a replication task of its still sending the
    // entry would deliver it to a restarted follower, which would rightly
    // commit it (see `stop`).
    nodes[old].stop().await;
    assert!(stuck.await.unwrap().is_err());

    for &f in &followers {
        nodes[f].start().await;
    }
    let new = leader(&nodes).await;
    let winner = propose(&nodes[new], &["winner"]).await.unwrap();
    assert!(
        winner.offset >= log_end,
        "the new entries overwrite the old suffix"
    );

    nodes[old].start().await;
    nodes[old].wait_applied(winner.offset).await;
    assert_eq!(nodes[old].records(), ["base", "winner"]);
    assert_eq!(leader(&nodes).await, new);
    for node in &mut nodes {
        node.stop().await;
    }
}

#[tokio::test]
async fn forwarded_requests_reach_the_leaders_handler() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = cluster(3, root.path());
    for node in &mut nodes {
        node.start().await;
    }
    let first = leader(&nodes).await;
    let id = nodes[first].config.node_id;
    let follower = (first + 1) % 3;
    assert_eq!(
        forward(&nodes[follower], "hello").await,
        format!("{id} via listener: hello")
    );
    assert_eq!(
        forward(&nodes[first], "here").await,
        format!("{id} via caller: here")
    );
    let big = Bytes::from(vec![b'x'; CONTROLLER_REQUEST_BYTES_MAX + 1]);
    assert!(matches!(
        nodes[follower].q().forward(big).await,
        Err(QuorumError::RequestTooLarge { .. })
    ));

    // The leader goes; retried, the request reaches its successor.
    nodes[first].stop().await;
    let answer = forward(&nodes[follower], "again").await;
    let second = leader(&nodes).await;
    let via = if second == follower {
        "caller"
    } else {
        "listener"
    };
    let id = nodes[second].config.node_id;
    assert_eq!(answer, format!("{id} via {via}: again"));
    for node in nodes.iter_mut().filter(|n| n.quorum.is_some()) {
        node.stop().await;
    }
}

#[tokio::test]
async fn observers_follow_the_log_without_voting() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = cluster(3, root.path());
    let voters = nodes[0].config.voters.clone();
    nodes.push(Node::new(4, &voters, root.path()));
    let observer = 3;
    for node in &mut nodes {
        node.start().await;
    }
    let first = leader(&nodes).await;
    let id = nodes[first].config.node_id;
    let committed = propose(&nodes[first], &["x"]).await.unwrap();
    nodes[observer].wait_applied(committed.offset).await;
    assert_eq!(nodes[observer].records(), ["x"]);
    assert_eq!(nodes[observer].q().info().voters, [1, 2, 3]);
    match propose(&nodes[observer], &["nope"]).await {
        Err(QuorumError::NotController { leader_id, .. }) => assert_eq!(leader_id, Some(id)),
        other => panic!("an observer proposed: {other:?}"),
    }
    assert_eq!(
        forward(&nodes[observer], "hi").await,
        format!("{id} via listener: hi")
    );

    // Down, the observer misses enough for the leader to purge past it;
    // it comes back at another address, and catches up by snapshot.
    nodes[observer].stop().await;
    let mut expected = nodes[first].records();
    let (records, last) = propose_many(&nodes[first], 40).await;
    expected.extend(records);
    wait_purged_past(&nodes[first], committed.offset).await;
    nodes[observer].config.listener = format!("127.0.0.1:{}", free_port());
    nodes[observer].start().await;
    nodes[observer].wait_applied(last.offset).await;
    assert_eq!(nodes[observer].records(), expected);

    // A voter restarts, the observer now in the log's membership.
    let follower = (first + 1) % 3;
    nodes[follower].stop().await;
    nodes[follower].start().await;
    nodes[follower].wait_applied(last.offset).await;

    // Two voters down: the leader and the observer are no quorum.
    for i in (0..3).filter(|&i| i != first) {
        nodes[i].stop().await;
    }
    let applied = nodes[observer].q().info().applied_offset;
    let lost =
        tokio::time::timeout(Duration::from_secs(2), propose(&nodes[first], &["lost"])).await;
    assert!(lost.is_err(), "committed without a quorum: {lost:?}");
    assert_eq!(nodes[observer].q().info().applied_offset, applied);
    assert_eq!(nodes[observer].records(), expected);
    for i in [first, observer] {
        nodes[i].stop().await;
    }
}

/// Whether the server closed the connection: EOF or a reset.
async fn closed(conn: &mut TcpStream) -> bool {
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(WAIT, conn.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

fn vote_request() -> Request {
    Request::Vote(openraft::raft::VoteRequest::new(Vote::new(0, 9), None))
}

async fn vote(conn: &mut TcpStream) -> Response {
    write_frame(conn, &encode(&vote_request()).unwrap())
        .await
        .unwrap();
    decode(&read_frame(conn).await.unwrap().unwrap()).unwrap()
}

#[tokio::test]
async fn bad_frames_close_only_their_connection() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = cluster(1, root.path());
    let node = &mut nodes[0];
    node.start().await;
    let addr = node.q().listener_addr();
    let mut good = TcpStream::connect(addr).await.unwrap();
    assert!(matches!(vote(&mut good).await, Response::Vote(Ok(_))));

    let mut oversized = TcpStream::connect(addr).await.unwrap();
    oversized.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    assert!(closed(&mut oversized).await);

    let mut garbage = TcpStream::connect(addr).await.unwrap();
    garbage
        .write_all(&[0, 0, 0, 4, 0xde, 0xad, 0xbe, 0xef])
        .await
        .unwrap();
    assert!(closed(&mut garbage).await);

    // A well-framed body that ends mid-message.
    let mut cut = TcpStream::connect(addr).await.unwrap();
    let mut body = encode(&vote_request()).unwrap();
    body.pop();
    write_frame(&mut cut, &body).await.unwrap();
    assert!(closed(&mut cut).await);

    // The node and its other connections carry on.
    assert!(matches!(vote(&mut good).await, Response::Vote(Ok(_))));
    propose(node, &["still here"]).await.unwrap();
    node.stop().await;
}
