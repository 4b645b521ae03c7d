//! A cluster of `keel server` processes on loopback, every one a combined
//! broker and controller. Each node is a [`TestBroker`], so starting,
//! stopping, killing, logs and cleanup are the single-broker harness's; what
//! this adds is the quorum: ports fixed at start, so that a restarted node
//! comes back where the voter list and the clients expect it, and the
//! controller's view through Metadata.

use std::collections::BTreeSet;

use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{CreateTopicsRequest, MetadataRequest, MetadataResponse};

use super::*;

/// Settings every test cluster starts from: Raft and broker-liveness
/// timeouts short enough that an election or fencing takes a second or
/// two, not the production defaults' ten. Overrides given to
/// [`TestCluster::start`] come after, so a test can change any of them.
pub const FAST_FAILOVER: &[(&str, &str)] = &[
    ("controller.quorum.fetch.timeout.ms", "1000"),
    ("controller.quorum.election.timeout.ms", "500"),
    ("broker.heartbeat.interval.ms", "500"),
    ("broker.session.timeout.ms", "3000"),
];

/// Kafka's TOPIC_ALREADY_EXISTS.
const TOPIC_ALREADY_EXISTS: i16 = 36;

pub struct TestCluster {
    /// Node `id` is `nodes[id - 1]`: the brokers, which are also the
    /// controllers unless `controllers` holds any.
    nodes: Vec<TestBroker>,
    /// Controller-only nodes (`process.roles=controller`), ids from
    /// [`CONTROLLER_IDS_FROM`] on; empty when every node is both.
    controllers: Vec<TestBroker>,
    /// Nodes stopped with SIGSTOP: their sockets accept connections that are
    /// never answered, so no client is sent there.
    paused: BTreeSet<i32>,
}

/// The first controller-only node's id.
pub const CONTROLLER_IDS_FROM: i32 = 101;

impl TestCluster {
    /// Starts `n` nodes (ids 1..=n) forming one controller quorum, with
    /// [`FAST_FAILOVER`] and then `extra_overrides` as settings, and waits
    /// until every node's Metadata lists all `n` brokers and a controller.
    pub fn start(n: usize, extra_overrides: &[(&str, &str)]) -> TestCluster {
        Self::start_with_controllers(n, 0, extra_overrides)
    }

    /// Like [`Self::start`], but with `controllers` controller-only nodes
    /// as the quorum (Kafka's isolated mode), so brokers can die without
    /// taking the quorum along; 0 makes every broker a controller too.
    pub fn start_with_controllers(
        brokers: usize,
        controllers: usize,
        extra_overrides: &[(&str, &str)],
    ) -> TestCluster {
        assert!(brokers >= 1, "a cluster needs a broker");
        let ports = free_ports(2 * brokers + controllers);
        let (kafka_ports, controller_ports) = ports.split_at(brokers);
        let isolated = controllers > 0;
        let voter_ids: Vec<i32> = if isolated {
            (0..controllers as i32)
                .map(|i| CONTROLLER_IDS_FROM + i)
                .collect()
        } else {
            (1..=brokers as i32).collect()
        };
        // Brokers' controller ports first, then the controller-only nodes'.
        let controller_port = |id: i32| {
            if id >= CONTROLLER_IDS_FROM {
                controller_ports[brokers + (id - CONTROLLER_IDS_FROM) as usize]
            } else {
                controller_ports[index(id)]
            }
        };
        let voters = voter_ids
            .iter()
            .map(|&id| format!("{id}@127.0.0.1:{}", controller_port(id)))
            .collect::<Vec<_>>()
            .join(",");
        let node = |id: i32, roles: &str, listeners: String| {
            let node_id = id.to_string();
            let mut overrides = vec![
                ("node.id", node_id.as_str()),
                ("process.roles", roles),
                ("listeners", listeners.as_str()),
                ("controller.quorum.voters", voters.as_str()),
            ];
            overrides.extend_from_slice(FAST_FAILOVER);
            overrides.extend_from_slice(extra_overrides);
            let label = match roles {
                "controller" => format!("controller {id}"),
                _ => format!("node {id}"),
            };
            TestBroker::unstarted(&label, &overrides)
        };
        let broker_roles = if isolated {
            "broker"
        } else {
            "broker,controller"
        };
        let mut nodes: Vec<TestBroker> = (1..=brokers as i32)
            .map(|id| {
                // A broker alone still has a controller listener: the
                // voters push the metadata log to it there.
                let listeners = format!(
                    "PLAINTEXT://127.0.0.1:{},CONTROLLER://127.0.0.1:{}",
                    kafka_ports[index(id)],
                    controller_port(id)
                );
                node(id, broker_roles, listeners)
            })
            .collect();
        let mut controller_nodes: Vec<TestBroker> = voter_ids
            .iter()
            .filter(|_| isolated)
            .map(|&id| {
                let listeners = format!("CONTROLLER://127.0.0.1:{}", controller_port(id));
                node(id, "controller", listeners)
            })
            .collect();
        // All are launched before any is awaited: a node prints its
        // listening line only once a majority of voters is up.
        for node in controller_nodes.iter_mut().chain(&mut nodes) {
            node.launch();
        }
        for node in controller_nodes.iter_mut().chain(&mut nodes) {
            node.await_listening();
        }
        let cluster = TestCluster {
            nodes,
            controllers: controller_nodes,
            paused: BTreeSet::new(),
        };
        cluster.wait_until_formed();
        cluster
    }

    /// Waits until every running node's Metadata lists all running nodes
    /// as brokers and names a controller: a node listens once registered,
    /// but the others learn of it as the metadata log reaches them.
    pub fn wait_until_formed(&self) {
        let running: BTreeSet<i32> = self.running().collect();
        let mut views = BTreeMap::new();
        wait_until("every node sees the whole cluster", STARTUP_TIMEOUT, || {
            // Every node is asked, not just up to the first behind, so a
            // failure shows them all.
            let mut formed = true;
            for &id in &running {
                let view = self.metadata_from(id, Some(&[])).map(|m| {
                    let brokers: BTreeSet<i32> = m.brokers.iter().map(|b| b.node_id.0).collect();
                    (brokers, m.controller_id.0)
                });
                formed &= view
                    .as_ref()
                    .is_ok_and(|(brokers, controller)| *controller >= 0 && *brokers == running);
                // Shown with the test's output if it fails; once per change.
                let view = format!("{view:?}");
                if views.get(&id) != Some(&view) {
                    eprintln!("node {id}'s (brokers, controller): {view}");
                    views.insert(id, view);
                }
            }
            formed
        });
    }

    /// Node ids: 1 to the number of nodes, running or not.
    pub fn ids(&self) -> impl Iterator<Item = i32> {
        1..=self.nodes.len() as i32
    }

    pub fn node(&self, id: i32) -> &TestBroker {
        &self.nodes[index(id)]
    }

    fn node_mut(&mut self, id: i32) -> &mut TestBroker {
        &mut self.nodes[index(id)]
    }

    /// Nodes started and neither stopped, killed nor paused by the test.
    pub fn running(&self) -> impl Iterator<Item = i32> + '_ {
        self.ids()
            .filter(|&id| self.node(id).child.is_some() && !self.paused.contains(&id))
    }

    /// `bootstrap.servers` for the running nodes.
    pub fn bootstrap(&self) -> String {
        let servers: Vec<String> = self.running().map(|id| self.node(id).bootstrap()).collect();
        assert!(!servers.is_empty(), "no node is running");
        servers.join(",")
    }

    /// SIGKILL: the node gets no chance to resign or flush anything.
    pub fn kill(&mut self, id: i32) {
        self.node_mut(id).kill9();
        self.paused.remove(&id);
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(&mut self, id: i32) {
        // A stopped process would only act on SIGTERM once continued.
        if self.paused.contains(&id) {
            self.resume(id);
        }
        self.node_mut(id).stop();
    }

    /// SIGSTOP: the node freezes with its connections open, as a hung or
    /// partitioned process would.
    pub fn pause(&mut self, id: i32) {
        self.signal(id, libc::SIGSTOP);
        self.paused.insert(id);
    }

    /// SIGCONT after [`Self::pause`].
    pub fn resume(&mut self, id: i32) {
        self.signal(id, libc::SIGCONT);
        self.paused.remove(&id);
    }

    /// Stops the node cleanly if it runs, then starts it again on the same
    /// data dir and ports and waits until it has registered.
    pub fn restart(&mut self, id: i32) {
        if self.node(id).child.is_some() {
            self.stop(id);
        }
        self.node_mut(id).start_again();
    }

    fn signal(&self, id: i32, signal: libc::c_int) {
        let child = self.node(id).child.as_ref().expect("node not running");
        // SAFETY: kill(2) on our own child, not yet reaped, so the pid is
        // still its; no memory is involved.
        let rc = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill({signal}) to node {id} failed");
    }

    /// Metadata v12 from node `id`, for `topics` (None: all of them).
    pub fn metadata_from(
        &self,
        id: i32,
        topics: Option<&[&str]>,
    ) -> anyhow::Result<MetadataResponse> {
        let topics = topics.map(|names| {
            names
                .iter()
                .map(|name| {
                    MetadataRequestTopic::default()
                        .with_name(Some(TopicName(StrBytes::from_string(name.to_string()))))
                })
                .collect()
        });
        let request = MetadataRequest::default()
            .with_topics(topics)
            .with_allow_auto_topic_creation(false);
        RawConn::connect(self.node(id).addr())?.request(12, &request)
    }

    /// The first answer any running node gives to `ask`; None if none does.
    fn ask_running<T>(&self, ask: impl FnMut(i32) -> Option<T>) -> Option<T> {
        self.running().find_map(ask)
    }

    /// The active controller as a running node's Metadata names it; None
    /// while none knows one. Nodes may disagree for a moment after an
    /// election; callers poll.
    pub fn controller_id(&self) -> Option<i32> {
        self.ask_running(|id| {
            let m = self.metadata_from(id, Some(&[])).ok()?;
            (m.controller_id.0 >= 0).then_some(m.controller_id.0)
        })
    }

    /// The controller every running node's Metadata names, if they all
    /// name the same one.
    pub fn agreed_controller_id(&self) -> Option<i32> {
        let named: BTreeSet<i32> = self
            .running()
            .map(|id| Some(self.metadata_from(id, Some(&[])).ok()?.controller_id.0))
            .collect::<Option<_>>()?;
        match named.into_iter().collect::<Vec<_>>()[..] {
            [id] if id >= 0 => Some(id),
            _ => None,
        }
    }

    /// The leader of `topic`-`partition` as a running node's Metadata
    /// names it; None while it has none or the topic is unknown there.
    pub fn node_of_leader(&self, topic: &str, partition: i32) -> Option<i32> {
        let (leader, _) = self.leader_and_isr(topic, partition)?;
        (leader >= 0).then_some(leader)
    }

    /// `topic`-`partition`'s leader (-1 while it has none) and ISR as a
    /// running node's Metadata describes them; None while the topic is
    /// unknown there.
    pub fn leader_and_isr(&self, topic: &str, partition: i32) -> Option<(i32, Vec<i32>)> {
        self.ask_running(|id| {
            let m = self.metadata_from(id, Some(&[topic])).ok()?;
            let t = m.topics.iter().find(|t| t.error_code == 0)?;
            let p = t
                .partitions
                .iter()
                .find(|p| p.partition_index == partition)?;
            Some((p.leader_id.0, p.isr_nodes.iter().map(|b| b.0).collect()))
        })
    }

    /// Every batch of `topic`-`partition` in node `id`'s log dir, as its
    /// base offset and bytes, in offset order. Followers store the bytes
    /// the leader sent, so replicas that agree hold identical lists.
    pub fn stored_batches(&self, id: i32, topic: &str, partition: i32) -> Vec<(i64, Vec<u8>)> {
        let dir = self
            .node(id)
            .data_dir()
            .join(format!("{topic}-{partition}"));
        stored_batches(&dir)
            .into_iter()
            .map(|(b, bytes)| (b.base_offset, bytes))
            .collect()
    }

    /// One CreateTopics sent to node `id` itself (not to the controller, as
    /// clients do), so a non-controller node has to forward it. Returns the
    /// topic's error code and message.
    pub fn create_topic_via(
        &self,
        id: i32,
        topic: &str,
        partitions: i32,
        replication_factor: i16,
    ) -> anyhow::Result<(i16, Option<String>)> {
        let request = CreateTopicsRequest::default()
            .with_topics(vec![CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_num_partitions(partitions)
                .with_replication_factor(replication_factor)])
            .with_timeout_ms(10_000);
        let response = RawConn::connect(self.node(id).addr())?.request(5, &request)?;
        let result = response
            .topics
            .into_iter()
            .find(|t| t.name.0.as_str() == topic)
            .ok_or_else(|| anyhow::anyhow!("CreateTopics did not answer for {topic}"))?;
        Ok((
            result.error_code,
            result.error_message.map(|m| m.to_string()),
        ))
    }

    /// Sends CreateTopics to node `id` until it succeeds, for up to
    /// `timeout`: during an election the answer is an error, or none. An
    /// attempt whose answer was lost may have created the topic, so from
    /// the second attempt on TOPIC_ALREADY_EXISTS counts as success.
    pub fn create_topic_via_retrying(
        &self,
        id: i32,
        topic: &str,
        partitions: i32,
        replication_factor: i16,
        timeout: Duration,
    ) {
        let mut attempts = 0;
        let mut last_failure = String::new();
        wait_until(&format!("node {id} creates {topic}"), timeout, || {
            attempts += 1;
            let failure = match self.create_topic_via(id, topic, partitions, replication_factor) {
                Ok((0, _)) => return true,
                Ok((TOPIC_ALREADY_EXISTS, _)) if attempts > 1 => return true,
                Ok((code, message)) => format!("error {code}: {message:?}"),
                Err(e) => e.to_string(),
            };
            // Shown with the test's output if it fails; once per change.
            if failure != last_failure {
                eprintln!("CreateTopics {topic} via node {id}, attempt {attempts}: {failure}");
                last_failure = failure;
            }
            false
        });
    }
}

fn index(id: i32) -> usize {
    usize::try_from(id - 1).expect("node ids start at 1")
}
