//! The controller role: what a node with `controller` in `process.roles`
//! does besides voting. While it is the active controller it fences brokers
//! whose heartbeats stopped and periodically balances partition leadership.
//! A controller-only node ([`ControllerNode`]) does this and nothing else: it
//! hosts no partitions and serves no clients; brokers reach it over the
//! controller listener only.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

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
/// while active): fencing when a broker's session expires (checked at
/// least as often as brokers heartbeat), leader balance every
/// `leader.imbalance.check.interval.seconds`.
pub(crate) async fn run_controller_duties(
    metadata: &MetadataStore,
    config: &BrokerConfig,
    shutdown: impl Future<Output = ()>,
) {
    let session_timeout = Duration::from_millis(config.broker_session_timeout_ms);
    let check_interval = Duration::from_millis(config.broker_heartbeat_interval_ms);
    // Kafka's controller fences at the moment the earliest session expires,
    // not on a coarser tick that would add up to an interval to failover.
    let fencing = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(fencing);
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
            _ = &mut fencing => {
                let next_check = Instant::now() + check_interval;
                let next_expiry = metadata.fence_silent_brokers(session_timeout).await;
                let at = next_expiry.map_or(next_check, |expiry| expiry.min(next_check));
                fencing.as_mut().reset(at.into());
            }
            _ = balance.tick() => metadata.balance_leaders(config.auto_leader_rebalance_enable).await,
        }
    }
}
