//! [`MetadataQuorum`]: the one type the broker holds. Starting it opens the
//! log, bootstraps a fresh quorum, binds the controller listener and starts
//! openraft; afterwards it proposes, forwards, reports, and shuts down.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use keel_types::{LeaderEpoch, Offset};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, RaftMetrics, ServerState};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::QuorumConfig;
use crate::error::QuorumError;
use crate::forward::{answer, ControllerRequestHandler};
use crate::frame::{Request, Response};
use crate::limits::{CONTROLLER_REQUEST_BYTES_MAX, PROPOSAL_BYTES_MAX};
use crate::log_format::proposal_value_len;
use crate::log_store::{now_ms, LogStore};
use crate::network::{Network, Outlogged};
use crate::observer;
use crate::server::{bind, Server, ServerTimeouts, Services};
use crate::snapshot::{SnapshotStore, StoredSnapshot};
use crate::state_machine::{SnapshotTrigger, StateMachine, StateMachineApply};
use crate::stop::Stopper;
use crate::type_config::{
    kafka_node_id, leader_epoch, offset, raft_node_id, Membership, Proposal, Raft,
};

/// Where a proposal was committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The proposal's offset in `__cluster_metadata-0`, shared by its records.
    pub offset: Offset,
    /// The epoch of the leader that committed it.
    pub leader_epoch: LeaderEpoch,
}

/// This node's view of the quorum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuorumInfo {
    pub node_id: i32,
    /// The leader (active controller) this node knows of.
    pub leader_id: Option<i32>,
    /// The current epoch (Raft term); it grows with each election.
    pub leader_epoch: LeaderEpoch,
    pub voters: Vec<i32>,
    /// The offset of the last entry applied here, -1 before the first.
    /// Everything up to it is committed (below the high watermark).
    pub applied_offset: Offset,
    /// The offset after the last entry in the local log, committed or not.
    pub log_end_offset: Offset,
}

impl QuorumInfo {
    fn from_metrics(m: &RaftMetrics<u64, BasicNode>) -> QuorumInfo {
        QuorumInfo {
            node_id: kafka_node_id(m.id),
            leader_id: m.current_leader.map(kafka_node_id),
            leader_epoch: leader_epoch(m.current_term).unwrap_or(LeaderEpoch::MAX),
            voters: m
                .membership_config
                .membership()
                .voter_ids()
                .map(kafka_node_id)
                .collect(),
            applied_offset: m.last_applied.map_or(-1, |id| offset(id.index)),
            log_end_offset: m.last_log_index.map_or(0, |i| offset(i) + 1),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.leader_id == Some(self.node_id)
    }
}

/// One node's membership in the metadata quorum, as a voter or an
/// observer.
pub struct MetadataQuorum {
    node_id: i32,
    pub(crate) raft: Raft,
    network: Network,
    requests: Arc<dyn ControllerRequestHandler>,
    request_timeout: Duration,
    listener_addr: SocketAddr,
    info: watch::Receiver<QuorumInfo>,
    server: Server,
    /// Publishes `info`, asks for snapshots, breaks split votes, registers
    /// an observer; aborted on shutdown.
    tasks: Vec<JoinHandle<()>>,
    stopper: Stopper,
}

/// openraft draws a voter's election timeout once, at start, and checks it
/// on a fixed tick, so two candidates whose ticks line up (voters started
/// together) can split every vote for good. A candidate that has not won
/// or lost within a random backoff stands again, off that grid: KRaft's
/// randomised election backoff. Followers are left alone, so a live leader
/// is never disturbed from here; so is a candidate that a peer with a
/// longer log refused in this term, which only that peer can beat.
async fn break_split_votes(
    raft: Raft,
    outlogged: Outlogged,
    fetch_timeout: Duration,
    election_timeout: Duration,
) {
    let mut metrics = raft.metrics();
    loop {
        let candidate = |m: &RaftMetrics<u64, BasicNode>| m.state == ServerState::Candidate;
        if metrics.wait_for(candidate).await.is_err() {
            return;
        }
        let backoff = fetch_timeout + election_timeout.mul_f64(rand::random::<f64>());
        let decided = async { metrics.wait_for(|m| !candidate(m)).await.map(drop) };
        match tokio::time::timeout(backoff, decided).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) if outlogged.term() >= metrics.borrow().current_term => {}
            Err(_) => {
                if raft.trigger().elect().await.is_err() {
                    return;
                }
            }
        }
    }
}

fn stopped(e: impl std::fmt::Display) -> QuorumError {
    QuorumError::Stopped(e.to_string())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, keel_storage::StorageError> + Send + 'static,
) -> Result<T, QuorumError> {
    Ok(tokio::task::spawn_blocking(f)
        .await
        .expect("storage task panicked")?)
}

/// The newest snapshot on disk and the log, which holds the voter set
/// once this returns on a voter: it is bootstrapped into a fresh log. An
/// observer's log comes whole from the leader, so a fresh one must be
/// empty.
async fn open_storage(
    config: &QuorumConfig,
    voters: &BTreeMap<u64, String>,
    observer: bool,
) -> Result<(SnapshotStore, Option<StoredSnapshot>, LogStore), QuorumError> {
    let dir = config.partition_dir();
    let snapshots = SnapshotStore::new(dir.clone());
    let store = snapshots.clone();
    let latest = blocking(move || store.latest()).await?;
    let snapshot_last = latest.as_ref().and_then(|s| s.meta.last_log_id);
    let segment_bytes = config.log_segment_bytes;
    let log_store = blocking(move || LogStore::open(dir, segment_bytes, snapshot_last)).await?;

    let store = log_store.clone();
    let membership = (!observer).then(|| {
        Membership::new(
            vec![voters.keys().copied().collect()],
            voters
                .iter()
                .map(|(&id, addr)| (id, BasicNode::new(addr)))
                .collect::<BTreeMap<_, _>>(),
        )
    });
    let single_voter = voters.len() == 1;
    let dir = config.partition_dir();
    blocking(move || {
        if store.quorum_state().read()?.is_some() {
            return Ok(());
        }
        if snapshot_last.is_some() {
            return Err(keel_storage::StorageError::Corrupt(
                "a snapshot but no quorum-state".into(),
            ));
        }
        match membership {
            Some(membership) => {
                store.bootstrap(membership, single_voter)?;
                store.quorum_state().write(None)
            }
            None if store.is_empty() => Ok(()),
            None => Err(keel_storage::StorageError::Corrupt(format!(
                "{}: holds records written before the Raft quorum, which an observer \
                 cannot adopt",
                dir.display()
            ))),
        }
    })
    .await?;
    Ok((snapshots, latest, log_store))
}

/// Where voters dial an observer: voters are dialled at their
/// `controller.quorum.voters` address, observers at the one they register.
fn observer_addr(config: &QuorumConfig, bound: SocketAddr) -> Result<String, QuorumError> {
    match &config.advertised_listener {
        Some(addr) => Ok(addr.clone()),
        None if bound.ip().is_unspecified() => Err(QuorumError::Config(format!(
            "observer {} listens on {bound}, which voters cannot dial; set its advertised \
             controller listener",
            config.node_id
        ))),
        None => Ok(bound.to_string()),
    }
}

impl MetadataQuorum {
    /// Opens the metadata log in `config.metadata_log_dir`, binds the
    /// controller listener and starts the Raft node: as a voter if
    /// `config.voters` names this node, bootstrapping the quorum from them
    /// if it never has; else as an observer, which asks the voters to add
    /// it and then follows the log without voting. `app` receives every
    /// committed proposal from the newest snapshot on. `requests` answers
    /// what other nodes [`forward`](Self::forward) here. A single-voter
    /// quorum is its own active controller when this returns.
    pub async fn start(
        config: QuorumConfig,
        app: Box<dyn StateMachineApply>,
        requests: Arc<dyn ControllerRequestHandler>,
    ) -> Result<MetadataQuorum, QuorumError> {
        let observer = !config.voters.contains_key(&config.node_id);
        let single_voter = !observer && config.voters.len() == 1;
        let raft_config = Arc::new(config.raft_config().map_err(QuorumError::Config)?);
        let voters: BTreeMap<u64, String> = config
            .voters
            .iter()
            .map(|(&id, addr)| (raft_node_id(id), addr.clone()))
            .collect();
        let (snapshots, latest, log_store) = open_storage(&config, &voters, observer).await?;

        let trigger = Arc::new(SnapshotTrigger::new(
            config.max_record_bytes_between_snapshots,
        ));
        let (listener, listener_addr) =
            bind(&config.listener)
                .await
                .map_err(|source| QuorumError::Listener {
                    addr: config.listener.clone(),
                    source,
                })?;
        let observer_addr = observer
            .then(|| observer_addr(&config, listener_addr))
            .transpose()?;
        let (stopper, running) = Stopper::new();
        let state_machine = StateMachine::new(
            app,
            snapshots,
            latest,
            Arc::clone(&trigger),
            running.clone(),
        )?;
        let raft_id = raft_node_id(config.node_id);
        let request_timeout = Duration::from_millis(config.request_timeout_ms);
        let network = Network::new(raft_id, voters, request_timeout, running);
        let raft = Raft::new(
            raft_id,
            raft_config,
            network.clone(),
            log_store,
            state_machine,
        )
        .await
        .map_err(stopped)?;
        let server = Server::spawn(
            listener,
            Services {
                raft: raft.clone(),
                requests: Arc::clone(&requests),
                timeouts: ServerTimeouts {
                    idle: Duration::from_millis(config.connections_max_idle_ms),
                    request: request_timeout,
                },
            },
        );

        let mut metrics = raft.metrics();
        let (info_tx, info) = watch::channel(QuorumInfo::from_metrics(&metrics.borrow()));
        let publish = tokio::spawn(async move {
            while metrics.changed().await.is_ok() {
                let next = QuorumInfo::from_metrics(&metrics.borrow_and_update());
                info_tx.send_if_modified(|current| {
                    let changed = *current != next;
                    *current = next;
                    changed
                });
            }
        });
        let snapshot_raft = raft.clone();
        let snapshots = tokio::spawn(async move {
            loop {
                trigger.due.notified().await;
                if snapshot_raft.trigger().snapshot().await.is_err() {
                    return;
                }
            }
        });

        let mut tasks = vec![publish, snapshots];
        let fetch_timeout = Duration::from_millis(config.fetch_timeout_ms);
        if let Some(addr) = observer_addr {
            tasks.push(tokio::spawn(observer::register(
                network.clone(),
                raft_id,
                addr,
                fetch_timeout,
            )));
        } else if !single_voter {
            tasks.push(tokio::spawn(break_split_votes(
                raft.clone(),
                network.outlogged(),
                fetch_timeout,
                Duration::from_millis(config.election_timeout_ms),
            )));
        }
        let quorum = MetadataQuorum {
            node_id: config.node_id,
            raft,
            network,
            requests,
            request_timeout,
            listener_addr,
            info,
            server,
            tasks,
            stopper,
        };
        let ready = match quorum.check_voters(&config).await {
            Ok(()) if single_voter => quorum.lead_alone().await,
            checked => checked,
        };
        if let Err(e) = ready {
            // Not fatal to the caller's process: stop what was started.
            let _ = quorum.shutdown().await;
            return Err(e);
        }
        Ok(quorum)
    }

    /// Voters are static (KRaft would change them through the log, which
    /// is not supported yet), so the configured ones must be the log's.
    /// Observers are members too, but do not count.
    async fn check_voters(&self, config: &QuorumConfig) -> Result<(), QuorumError> {
        let in_log = self
            .raft
            .with_raft_state(|st| {
                let effective = st.membership_state.effective();
                effective
                    .log_id()
                    .map(|_| effective.voter_ids().map(kafka_node_id).collect::<Vec<_>>())
            })
            .await
            .map_err(stopped)?;
        match in_log {
            // An observer's first start: the leader will send the voters.
            None => Ok(()),
            Some(in_log) if in_log.iter().copied().eq(config.voters.keys().copied()) => Ok(()),
            Some(in_log) => Err(QuorumError::Config(format!(
                "controller.quorum.voters names {:?} but the log's voters are {in_log:?}; \
                 changing voters is not supported yet",
                config.voters.keys().collect::<Vec<_>>()
            ))),
        }
    }

    /// A single voter stands at once rather than after a fetch timeout,
    /// and `start` returns it ready to propose. Its election is local, a
    /// vote and an entry written to disk, so it is bounded by nothing but
    /// the disk, as opening the log is; a failing disk stops the node.
    async fn lead_alone(&self) -> Result<(), QuorumError> {
        self.raft.trigger().elect().await.map_err(stopped)?;
        self.subscribe()
            .wait_for(QuorumInfo::is_leader)
            .await
            .map_err(stopped)?;
        self.wait_until_active().await.map(drop)
    }

    pub fn node_id(&self) -> i32 {
        self.node_id
    }

    /// The controller listener's bound address (useful with port 0).
    pub fn listener_addr(&self) -> SocketAddr {
        self.listener_addr
    }

    pub fn info(&self) -> QuorumInfo {
        self.info.borrow().clone()
    }

    /// Changes of leader, epoch, voters and applied offset, as they happen.
    pub fn subscribe(&self) -> watch::Receiver<QuorumInfo> {
        self.info.clone()
    }

    fn not_controller(&self, leader_id: Option<u64>) -> QuorumError {
        let info = self.info();
        QuorumError::NotController {
            leader_id: leader_id.map(kafka_node_id).or(info.leader_id),
            leader_epoch: info.leader_epoch,
        }
    }

    /// Resolves once this node leads and has applied every entry committed
    /// before its epoch began (KRaft's controller claiming leadership), so
    /// that a decision made now against the application's state sees the
    /// whole log. Returns the epoch; `NotController` at once if this node
    /// does not lead.
    pub async fn wait_until_active(&self) -> Result<LeaderEpoch, QuorumError> {
        let mut metrics = self.raft.metrics();
        loop {
            {
                let m = metrics.borrow_and_update();
                if m.state != ServerState::Leader {
                    return Err(self.not_controller(m.current_leader));
                }
                // A leader's first entry is its blank one: once an entry of
                // its own term is applied, every earlier one is.
                if m.last_applied
                    .is_some_and(|id| id.leader_id.term == m.current_term)
                {
                    return Ok(leader_epoch(m.current_term).unwrap_or(LeaderEpoch::MAX));
                }
            }
            metrics.changed().await.map_err(stopped)?;
        }
    }

    /// Appends `records` as one entry on the active controller and waits
    /// until it is committed and applied here (so the application's state
    /// includes it on return). Callers serialise decide-then-propose
    /// themselves, as `MetadataStore::submit` does under its lock. A
    /// proposal waits for a quorum as long as it takes; bound it with
    /// `tokio::time::timeout` if the caller has a deadline.
    pub async fn propose(&self, records: Vec<Bytes>) -> Result<Committed, QuorumError> {
        assert!(!records.is_empty(), "a proposal holds at least one record");
        let size = proposal_value_len(&records);
        if size > PROPOSAL_BYTES_MAX {
            return Err(QuorumError::ProposalTooLarge {
                size,
                max: PROPOSAL_BYTES_MAX,
            });
        }
        let proposal = Proposal {
            timestamp_ms: now_ms(),
            records,
        };
        match self.raft.client_write(proposal).await {
            Ok(response) => Ok(Committed {
                offset: offset(response.log_id.index),
                leader_epoch: leader_epoch(response.log_id.leader_id.term)
                    .expect("terms in the log fit i32"),
            }),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(to))) => {
                Err(self.not_controller(to.leader_id))
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                unreachable!("a proposal changes no membership: {e}")
            }
            Err(RaftError::Fatal(e)) => Err(stopped(e)),
        }
    }

    /// Has the active controller's [`ControllerRequestHandler`] carry out
    /// `request`, and returns its answer: over the controller listener, or
    /// without it when this node leads. Waits up to
    /// `controller.quorum.request.timeout.ms` for a leader to be known, else
    /// fails with `NotController`; a connection that fails before the
    /// answer arrives gives `ControllerUnreachable`. Either way the caller
    /// retries, and the request may have been carried out already. There is
    /// no other deadline: a leader's answer may wait on a commit, as
    /// `propose` does; bound it with `tokio::time::timeout` if the caller
    /// has one.
    pub async fn forward(&self, request: Bytes) -> Result<Bytes, QuorumError> {
        let too_large = |size| QuorumError::RequestTooLarge {
            size,
            max: CONTROLLER_REQUEST_BYTES_MAX,
        };
        if request.len() > CONTROLLER_REQUEST_BYTES_MAX {
            return Err(too_large(request.len()));
        }
        let (leader, node) = self.known_leader().await?;
        let answer = if leader == raft_node_id(self.node_id) {
            answer(&*self.requests, request).await
        } else {
            let unreachable = |error: String| QuorumError::ControllerUnreachable {
                leader_id: kafka_node_id(leader),
                error,
            };
            let peer = self.network.peer(leader, &node);
            match peer.send(&Request::Forward(request)).await {
                Ok(Response::Forward(answer)) => answer,
                Ok(other) => {
                    return Err(unreachable(format!(
                        "response to another request: {other:?}"
                    )))
                }
                Err(e) => return Err(unreachable(e.to_string())),
            }
        };
        answer.map_err(too_large)
    }

    /// The leader this node knows of and its membership entry, once there
    /// is one, within the request timeout.
    async fn known_leader(&self) -> Result<(u64, BasicNode), QuorumError> {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let mut metrics = self.raft.metrics();
        loop {
            {
                let m = metrics.borrow_and_update();
                let leader = m.current_leader.and_then(|id| {
                    let node = m.membership_config.membership().get_node(&id)?;
                    Some((id, node.clone()))
                });
                if let Some(leader) = leader {
                    return Ok(leader);
                }
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(stopped(e)),
                Err(_) => return Err(self.not_controller(None)),
            }
        }
    }

    /// Stops answering peers, then stops the Raft node, and returns once
    /// nothing of it is left running: no RPC leaves it afterwards, and its
    /// application is not called again (see `stop`). Every append was
    /// fsynced when made, so nothing is left to flush. A quorum dropped
    /// without this is cut off from its peers at once, but its tasks run on
    /// until the runtime stops.
    pub async fn shutdown(self) -> Result<(), QuorumError> {
        let MetadataQuorum {
            raft,
            network,
            server,
            tasks,
            stopper,
            ..
        } = self;
        server.shutdown().await;
        for task in &tasks {
            task.abort();
        }
        // `stop` waits for every copy of the network, this one too.
        drop(network);
        let core = raft.shutdown().await.map_err(stopped);
        stopper.stop().await;
        core
    }
}
