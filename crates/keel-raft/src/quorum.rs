//! [`MetadataQuorum`]: the one type the broker holds. Starting it opens the
//! log, bootstraps a fresh quorum, binds the controller listener and starts
//! openraft; afterwards it proposes, reports, and shuts down.

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
use crate::limits::PROPOSAL_BYTES_MAX;
use crate::log_format::proposal_value_len;
use crate::log_store::{now_ms, LogStore};
use crate::network::Network;
use crate::server::{bind, Server, ServerTimeouts};
use crate::snapshot::SnapshotStore;
use crate::state_machine::{SnapshotTrigger, StateMachine, StateMachineApply};
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

/// One controller's membership in the metadata quorum.
pub struct MetadataQuorum {
    node_id: i32,
    pub(crate) raft: Raft,
    listener_addr: SocketAddr,
    info: watch::Receiver<QuorumInfo>,
    server: Server,
    /// Publishes `info` and asks for snapshots; aborted on shutdown.
    tasks: Vec<JoinHandle<()>>,
}

/// openraft draws a voter's election timeout once, at start, and checks it
/// on a fixed tick, so two candidates whose ticks line up (voters started
/// together) can split every vote for good. A candidate that has not won
/// or lost within a random backoff stands again, off that grid: KRaft's
/// randomised election backoff. Followers are left alone, so a live leader
/// is never disturbed from here.
async fn break_split_votes(raft: Raft, fetch_timeout: Duration, election_timeout: Duration) {
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

impl MetadataQuorum {
    /// Opens the metadata log in `config.metadata_log_dir`, bootstraps the
    /// quorum from `config.voters` if this node never has, binds the
    /// controller listener and starts the Raft node; `app` receives every
    /// committed proposal from the newest snapshot on. A single-voter quorum
    /// is its own active controller when this returns.
    pub async fn start(
        config: QuorumConfig,
        app: Box<dyn StateMachineApply>,
    ) -> Result<MetadataQuorum, QuorumError> {
        if !config.voters.contains_key(&config.node_id) {
            return Err(QuorumError::Config(format!(
                "node {} is not among the voters {:?}; observers are not supported yet",
                config.node_id,
                config.voters.keys().collect::<Vec<_>>()
            )));
        }
        let raft_config = Arc::new(config.raft_config().map_err(QuorumError::Config)?);
        let dir = config.partition_dir();
        let snapshots = SnapshotStore::new(dir.clone());
        let store = snapshots.clone();
        let latest = blocking(move || store.latest()).await?;
        let snapshot_last = latest.as_ref().and_then(|s| s.meta.last_log_id);
        let segment_bytes = config.log_segment_bytes;
        let log_store = blocking(move || LogStore::open(dir, segment_bytes, snapshot_last)).await?;

        let voters: BTreeMap<u64, String> = config
            .voters
            .iter()
            .map(|(&id, addr)| (raft_node_id(id), addr.clone()))
            .collect();
        let store = log_store.clone();
        let membership = Membership::new(
            vec![voters.keys().copied().collect()],
            voters
                .iter()
                .map(|(&id, addr)| (id, BasicNode::new(addr)))
                .collect::<BTreeMap<_, _>>(),
        );
        let single_voter = voters.len() == 1;
        blocking(move || {
            if store.quorum_state().read()?.is_some() {
                return Ok(());
            }
            if snapshot_last.is_some() {
                return Err(keel_storage::StorageError::Corrupt(
                    "a snapshot but no quorum-state".into(),
                ));
            }
            store.bootstrap(membership, single_voter)?;
            store.quorum_state().write(None)
        })
        .await?;

        let trigger = Arc::new(SnapshotTrigger::new(
            config.max_record_bytes_between_snapshots,
        ));
        let state_machine = StateMachine::new(app, snapshots, latest, Arc::clone(&trigger))?;
        let (listener, listener_addr) =
            bind(&config.listener)
                .await
                .map_err(|source| QuorumError::Listener {
                    addr: config.listener.clone(),
                    source,
                })?;
        let raft_id = raft_node_id(config.node_id);
        let request_timeout = Duration::from_millis(config.request_timeout_ms);
        let network = Network::new(raft_id, voters, request_timeout);
        let raft = Raft::new(raft_id, raft_config, network, log_store, state_machine)
            .await
            .map_err(stopped)?;
        let in_log: Vec<i32> = match raft
            .metrics()
            .wait_for(|m| m.membership_config.log_id().is_some())
            .await
        {
            Ok(m) => QuorumInfo::from_metrics(&m).voters,
            Err(e) => return Err(stopped(e)),
        };
        if !in_log.iter().copied().eq(config.voters.keys().copied()) {
            raft.shutdown().await.map_err(stopped)?;
            return Err(QuorumError::Config(format!(
                "controller.quorum.voters names {:?} but the log's voters are {in_log:?}; \
                 changing voters is not supported yet",
                config.voters.keys().collect::<Vec<_>>()
            )));
        }
        let server = Server::spawn(
            listener,
            raft.clone(),
            ServerTimeouts {
                idle: Duration::from_millis(config.connections_max_idle_ms),
                request: request_timeout,
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
        if !single_voter {
            tasks.push(tokio::spawn(break_split_votes(
                raft.clone(),
                Duration::from_millis(config.fetch_timeout_ms),
                Duration::from_millis(config.election_timeout_ms),
            )));
        }
        let quorum = MetadataQuorum {
            node_id: config.node_id,
            raft,
            listener_addr,
            info,
            server,
            tasks,
        };
        if single_voter {
            let deadline =
                Duration::from_millis(config.fetch_timeout_ms + config.election_timeout_ms);
            if let Err(e) = quorum.lead_alone(deadline).await {
                // Not fatal to the caller's process: stop what was started.
                let _ = quorum.shutdown().await;
                return Err(e);
            }
        }
        Ok(quorum)
    }

    /// A single voter stands at once rather than after a fetch timeout,
    /// and `start` returns it ready to propose.
    async fn lead_alone(&self, deadline: Duration) -> Result<(), QuorumError> {
        self.raft.trigger().elect().await.map_err(stopped)?;
        let mut info = self.subscribe();
        tokio::time::timeout(deadline, info.wait_for(QuorumInfo::is_leader))
            .await
            .map_err(|_| stopped("the single voter did not elect itself"))?
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

    /// Stops answering peers, then stops the Raft node. Every append was
    /// fsynced when made, so nothing is left to flush. A quorum dropped
    /// without this leaves its tasks running until the runtime stops.
    pub async fn shutdown(self) -> Result<(), QuorumError> {
        self.server.shutdown().await;
        for task in &self.tasks {
            task.abort();
        }
        self.raft.shutdown().await.map_err(stopped)
    }
}
