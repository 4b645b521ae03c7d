//! The metadata log, as this broker follows it, and the image built from it.
//!
//! The log is `__cluster_metadata-0`, replicated by the controller quorum
//! (`keel-raft`). Every committed proposal is applied here, in log order, to
//! a new `MetadataImage`, published through a `watch` channel so that the
//! broker's parts react to changes whichever controller made them. A change
//! is asked of the active controller as a `ControllerRequest`: here if this
//! node is it, else forwarded over the controller listener; the answer
//! comes back only once this broker's own image includes the change.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_metadata::controller::{ControllerError, TopicDefaults};
use keel_metadata::request::decide;
use keel_metadata::{ControllerReply, ControllerRequest, MetadataImage, MetadataRecord};
use keel_raft::{
    ControllerRequestHandler, MetadataQuorum, QuorumConfig, QuorumError, StateMachineApply,
};
use keel_types::{LeaderEpoch, Offset};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use keel_raft::METADATA_TOPIC;

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// No active controller could take the request (Kafka's
    /// `NOT_CONTROLLER`): an election is under way or the quorum is lost.
    #[error("no active controller: {0}")]
    NotController(String),
    #[error(transparent)]
    Quorum(QuorumError),
}

impl From<QuorumError> for MetadataError {
    fn from(e: QuorumError) -> Self {
        match e {
            QuorumError::NotController { .. } => MetadataError::NotController(e.to_string()),
            e => MetadataError::Quorum(e),
        }
    }
}

/// The active controller's answer to a `ControllerRequest`, as it crosses
/// the controller listener.
#[derive(Debug, Serialize, Deserialize)]
enum ControllerAnswer {
    /// Decided, and committed at `offset` when it changed anything.
    Decided {
        reply: ControllerReply,
        offset: Option<Offset>,
    },
    Refused(ControllerError),
    NotController(String),
    Failed(String),
}

/// Applies committed proposals to the image and publishes each new image.
struct ImageApplier {
    image: Arc<MetadataImage>,
    publish: watch::Sender<Arc<MetadataImage>>,
}

impl ImageApplier {
    fn apply_records(&mut self, offset: Offset, records: &[Bytes]) {
        let mut next = (*self.image).clone();
        for bytes in records {
            match MetadataRecord::from_bytes(bytes) {
                // A refused record was refused by every replica too, so
                // skipping it keeps every image identical.
                Ok(record) => {
                    if let Err(why) = next.apply(offset, &record) {
                        tracing::warn!(offset, %why, "metadata record refused by the image");
                    }
                }
                Err(why) => tracing::error!(offset, %why, "unreadable metadata record skipped"),
            }
        }
        self.image = Arc::new(next);
        self.publish.send_replace(self.image.clone());
    }
}

impl StateMachineApply for ImageApplier {
    fn apply(&mut self, offset: Offset, _: LeaderEpoch, records: &[Bytes]) {
        self.apply_records(offset, records);
    }

    fn snapshot(&self) -> Bytes {
        let records: Vec<MetadataRecord> = self.image.to_records();
        serde_json::to_vec(&records)
            .expect("metadata records serialise")
            .into()
    }

    fn install_snapshot(&mut self, last_offset: Offset, snapshot: &[u8]) -> Result<(), String> {
        let records: Vec<MetadataRecord> =
            serde_json::from_slice(snapshot).map_err(|e| e.to_string())?;
        let mut image = MetadataImage::empty();
        for record in &records {
            image.apply(last_offset, record)?;
        }
        self.image = Arc::new(image);
        self.publish.send_replace(self.image.clone());
        Ok(())
    }
}

pub struct MetadataStore {
    controller: Arc<Controller>,
    image: watch::Receiver<Arc<MetadataImage>>,
}

/// This node's controller role: it answers `ControllerRequest`s, its own
/// and forwarded ones, while it is the active controller.
struct Controller {
    /// Set once the quorum has started; requests that arrive before are
    /// answered NOT_CONTROLLER.
    quorum: std::sync::OnceLock<MetadataQuorum>,
    image: watch::Receiver<Arc<MetadataImage>>,
    /// Held from decision to commit, so every decision sees the image of
    /// every earlier one.
    decide_lock: tokio::sync::Mutex<()>,
    defaults: TopicDefaults,
    /// When each broker was last heard from (Kafka's
    /// `BrokerHeartbeatManager`). In memory only: a new active controller
    /// gives every broker a full session before fencing it.
    last_heartbeats: parking_lot::Mutex<HashMap<i32, Instant>>,
}

/// Forwarded requests reach the controller through here. Weak, because the
/// quorum that holds this handler is owned by the controller.
struct ForwardedRequests(std::sync::Weak<Controller>);

impl ControllerRequestHandler for ForwardedRequests {
    fn handle(&self, request: Bytes) -> Pin<Box<dyn Future<Output = Bytes> + Send>> {
        let controller = self.0.upgrade();
        Box::pin(async move {
            let answer = match (
                controller,
                serde_json::from_slice::<ControllerRequest>(&request),
            ) {
                (Some(controller), Ok(request)) => controller.decide(&request).await,
                (None, _) => ControllerAnswer::NotController("the controller is stopping".into()),
                (_, Err(e)) => {
                    ControllerAnswer::Failed(format!("unreadable controller request: {e}"))
                }
            };
            Bytes::from(serde_json::to_vec(&answer).expect("controller answers serialise"))
        })
    }
}

impl MetadataStore {
    /// Joins the controller quorum and replays the metadata log into the
    /// image.
    pub async fn start(
        config: QuorumConfig,
        defaults: TopicDefaults,
    ) -> Result<Self, MetadataError> {
        let (publish, image) = watch::channel(Arc::new(MetadataImage::empty()));
        let applier = ImageApplier {
            image: Arc::new(MetadataImage::empty()),
            publish,
        };
        let controller = Arc::new(Controller {
            quorum: std::sync::OnceLock::new(),
            image: image.clone(),
            decide_lock: tokio::sync::Mutex::new(()),
            defaults,
            last_heartbeats: Default::default(),
        });
        let requests = Arc::new(ForwardedRequests(Arc::downgrade(&controller)));
        let quorum = MetadataQuorum::start(config, Box::new(applier), requests).await?;
        if controller.quorum.set(quorum).is_err() {
            unreachable!("the quorum is started once");
        }
        Ok(Self { controller, image })
    }

    fn quorum(&self) -> &MetadataQuorum {
        self.controller.quorum.get().expect("started")
    }

    pub fn image(&self) -> Arc<MetadataImage> {
        self.image.borrow().clone()
    }

    /// Every new image, as it is applied.
    pub fn subscribe(&self) -> watch::Receiver<Arc<MetadataImage>> {
        self.image.clone()
    }

    pub fn node_id(&self) -> i32 {
        self.quorum().node_id()
    }

    /// The controller listener as bound.
    pub fn controller_listener(&self) -> std::net::SocketAddr {
        self.quorum().listener_addr()
    }

    /// The active controller this node knows of.
    pub fn controller_id(&self) -> Option<i32> {
        self.quorum().info().leader_id
    }

    /// Asks the active controller to carry out `request` and returns once
    /// this broker's image includes the result. A controller that refuses
    /// answers `Ok(Err(_))`.
    pub async fn request(
        &self,
        request: ControllerRequest,
    ) -> Result<Result<(Arc<MetadataImage>, ControllerReply), ControllerError>, MetadataError> {
        let bytes =
            Bytes::from(serde_json::to_vec(&request).expect("controller requests serialise"));
        let answer = match self.quorum().forward(bytes).await {
            Ok(answer) => serde_json::from_slice(&answer).unwrap_or_else(|e| {
                ControllerAnswer::Failed(format!("unreadable controller answer: {e}"))
            }),
            Err(e @ QuorumError::ControllerUnreachable { .. }) => {
                ControllerAnswer::NotController(e.to_string())
            }
            Err(e) => return Err(e.into()),
        };
        match answer {
            ControllerAnswer::Decided { reply, offset } => {
                if let Some(offset) = offset {
                    self.wait_applied(offset).await?;
                }
                Ok(Ok((self.image(), reply)))
            }
            ControllerAnswer::Refused(e) => Ok(Err(e)),
            ControllerAnswer::NotController(why) => Err(MetadataError::NotController(why)),
            ControllerAnswer::Failed(why) => Err(MetadataError::Quorum(QuorumError::Stopped(why))),
        }
    }

    /// How long a change may take to reach this broker's image once the
    /// controller committed it.
    const APPLY_WAIT: Duration = Duration::from_secs(30);

    async fn wait_applied(&self, offset: Offset) -> Result<(), MetadataError> {
        let mut image = self.subscribe();
        let applied = tokio::time::timeout(Self::APPLY_WAIT, async {
            image.wait_for(|i| i.offset >= offset).await.map(drop)
        })
        .await;
        match applied {
            Ok(Ok(())) => Ok(()),
            _ => Err(MetadataError::NotController(format!(
                "the change at offset {offset} did not reach this broker"
            ))),
        }
    }

    /// On the active controller, the periodic leader pass: preferred
    /// replicas lead again when `preferred`, and leaderless partitions whose
    /// topic allows it get an unclean election.
    pub async fn balance_leaders(&self, preferred: bool) {
        let Some(quorum) = self.controller.quorum.get() else {
            return;
        };
        if !quorum.info().is_leader() {
            return;
        }
        match self
            .controller
            .decide(&ControllerRequest::BalanceLeaders { preferred })
            .await
        {
            ControllerAnswer::Decided {
                offset: Some(offset),
                ..
            } => tracing::info!(offset, "moved partition leadership"),
            ControllerAnswer::Decided { offset: None, .. } => {}
            ControllerAnswer::Refused(why) => tracing::warn!(%why, "leader balancing refused"),
            ControllerAnswer::NotController(why) | ControllerAnswer::Failed(why) => {
                tracing::info!(%why, "leader balancing did not happen")
            }
        }
    }

    /// On the active controller, fences every unfenced broker that has not
    /// been heard from for `session_timeout`, and returns when the next
    /// session expires unless heard from; elsewhere, forgets what it knew,
    /// so a later term starts with fresh sessions.
    pub async fn fence_silent_brokers(&self, session_timeout: Duration) -> Option<Instant> {
        self.controller.fence_silent_brokers(session_timeout).await
    }
}

impl Controller {
    /// The active controller's side of a request: decide against the
    /// latest image and commit the records.
    async fn decide(&self, request: &ControllerRequest) -> ControllerAnswer {
        let Some(quorum) = self.quorum.get() else {
            return ControllerAnswer::NotController("the quorum is starting".into());
        };
        let _decision = self.decide_lock.lock().await;
        if let Err(e) = quorum.wait_until_active().await {
            return ControllerAnswer::NotController(e.to_string());
        }
        if let ControllerRequest::BrokerHeartbeat { broker_id }
        | ControllerRequest::RegisterBroker { broker_id, .. } = request
        {
            self.last_heartbeats
                .lock()
                .insert(*broker_id, Instant::now());
        }
        let image = self.image.borrow().clone();
        let (records, reply) = match decide(&image, request, self.defaults) {
            Ok(decision) => decision,
            Err(e) => return ControllerAnswer::Refused(e),
        };
        if records.is_empty() {
            return ControllerAnswer::Decided {
                reply,
                offset: None,
            };
        }
        let records = records.iter().map(|r| Bytes::from(r.to_bytes())).collect();
        match quorum.propose(records).await {
            Ok(committed) => ControllerAnswer::Decided {
                reply,
                offset: Some(committed.offset),
            },
            Err(e @ QuorumError::NotController { .. }) => {
                ControllerAnswer::NotController(e.to_string())
            }
            Err(e) => ControllerAnswer::Failed(e.to_string()),
        }
    }

    async fn fence_silent_brokers(&self, session_timeout: Duration) -> Option<Instant> {
        let quorum = self.quorum.get()?;
        if !quorum.info().is_leader() {
            self.last_heartbeats.lock().clear();
            return None;
        }
        let now = Instant::now();
        let mut next_expiry: Option<Instant> = None;
        let silent: Vec<i32> = {
            let mut last = self.last_heartbeats.lock();
            self.image
                .borrow()
                .brokers
                .values()
                .filter(|b| !b.fenced)
                .filter(|b| {
                    // A new active controller starts every session afresh.
                    let expiry = *last.entry(b.broker_id).or_insert(now) + session_timeout;
                    if expiry > now {
                        next_expiry = Some(next_expiry.map_or(expiry, |n| n.min(expiry)));
                    }
                    expiry <= now
                })
                .map(|b| b.broker_id)
                .collect()
        };
        for broker_id in silent {
            tracing::warn!(
                broker_id,
                ?session_timeout,
                "fencing a broker that stopped heartbeating"
            );
            if let ControllerAnswer::Failed(why) = self
                .decide(&ControllerRequest::FenceBroker { broker_id })
                .await
            {
                tracing::error!(broker_id, %why, "fencing failed");
            }
        }
        next_expiry
    }
}
