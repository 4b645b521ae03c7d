//! The controller role: what a node with `controller` in `process.roles`
//! does besides voting. While it is the active controller it fences brokers
//! whose heartbeats stopped and periodically balances partition leadership.
//! A controller-only node ([`ControllerNode`]) does this and nothing else: it
//! hosts no partitions and serves no clients; brokers reach it over the
//! controller listener only.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use crate::broker::BrokerError;
use crate::config::BrokerConfig;
use crate::metadata_store::MetadataStore;

pub struct ControllerNode {
    metadata: MetadataStore,
    config: BrokerConfig,
}

impl ControllerNode {
    /// Joins the quorum and replays the metadata log.
    pub async fn start(config: BrokerConfig) -> Result<Self, BrokerError> {
        let metadata = MetadataStore::start(config.quorum.clone(), config.topic_defaults()).await?;
        Ok(Self { metadata, config })
    }

    /// Where the other voters and the brokers reach this node.
    pub fn controller_listener(&self) -> SocketAddr {
        self.metadata.controller_listener()
    }

    /// Serves the quorum until `shutdown` resolves.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        run_controller_duties(&self.metadata, &self.config, shutdown).await
    }
}

/// The active controller's timers, run on every controller (each acts only
/// while active): fencing is checked as often as brokers heartbeat, leader
/// balance every `leader.imbalance.check.interval.seconds`.
pub(crate) async fn run_controller_duties(
    metadata: &MetadataStore,
    config: &BrokerConfig,
    shutdown: impl Future<Output = ()>,
) {
    let session_timeout = Duration::from_millis(config.broker_session_timeout_ms);
    let mut fencing =
        tokio::time::interval(Duration::from_millis(config.broker_heartbeat_interval_ms));
    let mut balance = tokio::time::interval(Duration::from_millis(
        config.leader_imbalance_check_interval_ms,
    ));
    // The first tick is immediate; leadership right after start is still
    // settling, so the first pass waits a whole interval.
    balance.tick().await;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = fencing.tick() => metadata.fence_silent_brokers(session_timeout).await,
            _ = balance.tick() => metadata.balance_leaders(config.auto_leader_rebalance_enable).await,
        }
    }
}
