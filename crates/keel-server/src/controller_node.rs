//! A node with `process.roles=controller`: a voter of the metadata quorum
//! that, while it is the active controller, decides every change and fences
//! brokers whose heartbeats stopped. It hosts no partitions and serves no
//! clients; brokers reach it over the controller listener only.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use crate::broker::BrokerError;
use crate::config::BrokerConfig;
use crate::metadata_store::MetadataStore;

pub struct ControllerNode {
    metadata: MetadataStore,
    /// How often fencing is checked: as often as brokers heartbeat.
    check_interval: Duration,
    session_timeout: Duration,
}

impl ControllerNode {
    /// Joins the quorum and replays the metadata log.
    pub async fn start(config: &BrokerConfig) -> Result<Self, BrokerError> {
        let metadata = MetadataStore::start(config.quorum.clone(), config.topic_defaults()).await?;
        Ok(Self {
            metadata,
            check_interval: Duration::from_millis(config.broker_heartbeat_interval_ms),
            session_timeout: Duration::from_millis(config.broker_session_timeout_ms),
        })
    }

    /// Where the other voters and the brokers reach this node.
    pub fn controller_listener(&self) -> SocketAddr {
        self.metadata.controller_listener()
    }

    /// Serves the quorum until `shutdown` resolves.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let mut tick = tokio::time::interval(self.check_interval);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => self.metadata.fence_silent_brokers(self.session_timeout).await,
            }
        }
    }
}
