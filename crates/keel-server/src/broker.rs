//! The broker's shared state and the operations that span its parts.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kafka_protocol::ResponseError;
use keel_group::GroupService;
use keel_metadata::cluster::IsrChange;
use keel_metadata::controller::{self, ConfigChange, ControllerError, NewTopic};
use keel_metadata::elections::{ElectionResult, ElectionType};
use keel_metadata::{ConfigResource, ControllerReply, ControllerRequest, MetadataImage};
use keel_storage::{LogManager, StorageError};
use keel_txn::TxnService;
use keel_types::TopicPartition;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::broker_client::BrokerClients;
use crate::config::BrokerConfig;
use crate::controller_node::run_controller_duties;
use crate::coordinator_leadership::CoordinatorLeadership;
use crate::coordinator_log::{CoordinatorLog, OFFSETS_TOPIC, TRANSACTION_STATE_TOPIC};
use crate::fetch_session::FetchSessionCache;
use crate::log_cleaner::LogCleaner;
use crate::metadata_store::{MetadataError, MetadataStore};
use crate::replica_fetcher::ReplicaFetchers;
use crate::replica_manager::{IsrProposal, Partition, ReplicaManager};
use crate::transactions::TxnBridge;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the controller refused this broker's registration: {0}")]
    Registration(String),
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Producer ids are reserved from the metadata log in blocks this large, so
/// one InitProducerId rarely costs an fsync.
const PRODUCER_ID_BLOCK_SIZE: i64 = 1000;

/// A leader's ISR change on its way to the controller.
type IsrChangeRequest = (Arc<Partition>, IsrProposal);

pub struct Broker {
    pub config: Arc<BrokerConfig>,
    pub metadata: MetadataStore,
    pub replicas: Arc<ReplicaManager>,
    pub groups: Arc<GroupService>,
    pub txns: Arc<TxnService>,
    pub fetch_sessions: FetchSessionCache,
    pub log_cleaner: LogCleaner,
    /// `(next id to hand out, end of the reserved block)`.
    producer_ids: tokio::sync::Mutex<(i64, i64)>,
    /// What the group coordinator follows of `__consumer_offsets`.
    offsets_leadership: tokio::sync::Mutex<CoordinatorLeadership>,
    /// What the transaction coordinator follows of `__transaction_state`.
    pub(crate) transaction_leadership: tokio::sync::Mutex<CoordinatorLeadership>,
    /// Connections to other brokers for markers and verification.
    pub(crate) broker_clients: BrokerClients,
    /// Follower fetchers, one per leader this broker follows.
    fetchers: ReplicaFetchers,
    /// ISR changes this broker, as leader, asks of the controller, sent
    /// from the fetch path and the upkeep task, one at a time, in order.
    isr_changes: mpsc::UnboundedSender<IsrChangeRequest>,
    isr_change_queue: Mutex<Option<mpsc::UnboundedReceiver<IsrChangeRequest>>>,
    /// Set once a controlled shutdown has begun; held while a heartbeat is
    /// in flight, so none can unfence this broker after it left service.
    heartbeats_stopped: tokio::sync::Mutex<bool>,
}

impl Broker {
    /// Opens the data dir: joins the metadata quorum, registers this broker
    /// with the active controller (creating the cluster on first start),
    /// and opens every hosted log once its image has caught up.
    pub async fn open(config: BrokerConfig) -> Result<Arc<Self>, BrokerError> {
        let dir = config.log_dir.clone();
        let log_manager = blocking(move || LogManager::open(dir)).await?;
        let metadata = MetadataStore::start(config.quorum.clone(), config.topic_defaults()).await?;
        register(&metadata, &config).await?;
        let replicas = Arc::new(ReplicaManager::new(
            config.node_id,
            log_manager,
            config.producer_id_expiration_ms,
        ));
        let image = metadata.image();
        let (opening, opening_config) = (replicas.clone(), config.clone());
        let opened_image = image.clone();
        blocking(move || {
            opening.quarantine_strays(&opened_image)?;
            opening.apply_image(&opened_image, &opening_config, now_ms())
        })
        .await?;
        tracing::info!(
            cluster_id = %image.cluster_id,
            node_id = config.node_id,
            topics = image.topic_count(),
            "broker opened its data dir"
        );
        let config = Arc::new(config);
        let groups = GroupService::new(
            config.group.clone(),
            Arc::new(CoordinatorLog {
                replicas: replicas.clone(),
                topic: OFFSETS_TOPIC,
                config: config.clone(),
                image: metadata.subscribe(),
            }),
        );
        let cleaner_checkpoint = replicas.log_manager().read_cleaner_checkpoint()?;
        let (isr_changes, isr_change_queue) = mpsc::unbounded_channel();
        let broker = Arc::new_cyclic(|me| Self {
            txns: TxnService::new(
                config.txn.clone(),
                Arc::new(CoordinatorLog {
                    replicas: replicas.clone(),
                    topic: TRANSACTION_STATE_TOPIC,
                    config: config.clone(),
                    image: metadata.subscribe(),
                }),
                Arc::new(TxnBridge { broker: me.clone() }),
                Arc::new(TxnBridge { broker: me.clone() }),
            ),
            transaction_leadership: tokio::sync::Mutex::new(CoordinatorLeadership::new(
                TRANSACTION_STATE_TOPIC,
            )),
            broker_clients: BrokerClients::new("keel-broker"),
            fetchers: ReplicaFetchers::default(),
            offsets_leadership: tokio::sync::Mutex::new(CoordinatorLeadership::new(OFFSETS_TOPIC)),
            isr_changes,
            isr_change_queue: Mutex::new(Some(isr_change_queue)),
            log_cleaner: LogCleaner::new(cleaner_checkpoint),
            heartbeats_stopped: tokio::sync::Mutex::new(false),
            groups,
            fetch_sessions: FetchSessionCache::new(config.fetch_session_cache_slots),
            config,
            metadata,
            replicas,
            producer_ids: tokio::sync::Mutex::new((0, 0)),
        });
        if let Err(e) = broker.compact_offsets_topic().await {
            tracing::error!(error = %e, "{OFFSETS_TOPIC} stays as it was configured");
        }
        broker.follow_offsets_leadership(&image).await;
        broker.follow_transaction_leadership(&image).await;
        Ok(broker)
    }

    pub fn image(&self) -> Arc<MetadataImage> {
        self.metadata.image()
    }

    /// The partition if this broker hosts it. One that exists but is hosted
    /// elsewhere (or not yet here) has a leader to ask:
    /// NOT_LEADER_OR_FOLLOWER; one that does not exist is
    /// UNKNOWN_TOPIC_OR_PARTITION.
    pub fn hosted_partition(&self, tp: &TopicPartition) -> Result<Arc<Partition>, ResponseError> {
        self.replicas.get(tp).ok_or_else(|| {
            if self.image().partition(&tp.topic, tp.partition).is_some() {
                ResponseError::NotLeaderOrFollower
            } else {
                ResponseError::UnknownTopicOrPartition
            }
        })
    }

    /// Brings the hosted partitions in line with `image`.
    async fn publish(&self, image: Arc<MetadataImage>) -> Result<(), StorageError> {
        let (replicas, config) = (self.replicas.clone(), self.config.clone());
        let applied = image.clone();
        blocking(move || replicas.apply_image(&applied, &config, now_ms())).await?;
        self.follow_offsets_leadership(&image).await;
        self.follow_transaction_leadership(&image).await;
        Ok(())
    }

    /// The group coordinator moves with the leadership of
    /// `__consumer_offsets` partitions (Kafka's `onElection` and
    /// `onResignation`): a partition this broker starts to lead, or leads in
    /// a new epoch, is loaded from its replicated log, which holds every
    /// commit the old leader acknowledged; one it stops leading is
    /// unloaded. The groups of the other partitions are left alone.
    async fn follow_offsets_leadership(&self, image: &MetadataImage) {
        let mut followed = self.offsets_leadership.lock().await;
        let Some(change) = followed.follow(image, self.config.node_id) else {
            return;
        };
        for partition in change.lost {
            self.groups.unload_partition(partition).await;
        }
        for (partition, _) in change.gained {
            if let Err(e) = self.groups.load_partition(partition).await {
                tracing::error!(partition, error = %e, "loading consumer groups failed");
            }
        }
    }

    /// Asks the active controller for a change and, once this broker's
    /// image has it, brings the hosted partitions in line.
    async fn request(&self, request: ControllerRequest) -> Result<ControllerReply, AdminError> {
        let (image, reply) = self.metadata.request(request).await??;
        self.publish(image).await?;
        Ok(reply)
    }

    /// Queues an ISR change for the controller (Kafka's AlterPartition).
    pub fn propose_isr_change(&self, partition: Arc<Partition>, change: IsrProposal) {
        // The receiver lives as long as the background task; after it,
        // nothing needs the ISR to change.
        let _ = self.isr_changes.send((partition, change));
    }

    async fn send_isr_changes(&self, mut queue: mpsc::UnboundedReceiver<IsrChangeRequest>) {
        while let Some((partition, change)) = queue.recv().await {
            let request = ControllerRequest::AlterPartition(IsrChange {
                topic_id: partition.topic_id,
                partition: partition.tp.partition,
                leader_id: self.config.node_id,
                leader_epoch: change.leader_epoch,
                partition_epoch: change.partition_epoch,
                new_isr: change.new_isr.clone(),
            });
            match self.request(request).await {
                Ok(_) => {
                    tracing::info!(partition = %partition.tp, isr = ?change.new_isr, "ISR changed")
                }
                Err(e) => {
                    tracing::info!(partition = %partition.tp, isr = ?change.new_isr, error = %e, "ISR change refused");
                    partition.isr_change_failed();
                }
            }
        }
    }

    /// Creates one topic through the controller and opens its partitions.
    pub async fn create_topic(
        &self,
        topic: &NewTopic,
        validate_only: bool,
    ) -> Result<(Uuid, Arc<MetadataImage>), AdminError> {
        let topic_id = Uuid::new_v4();
        self.request(ControllerRequest::CreateTopic {
            topic: topic.clone(),
            topic_id,
            validate_only,
        })
        .await?;
        Ok((topic_id, self.image()))
    }

    /// CreatePartitions for one topic.
    pub async fn create_partitions(
        &self,
        topic: &str,
        count: i32,
        assignments: Option<Vec<Vec<i32>>>,
        validate_only: bool,
    ) -> Result<(), AdminError> {
        self.request(ControllerRequest::CreatePartitions {
            topic: topic.to_string(),
            count,
            assignments,
            validate_only,
        })
        .await?;
        Ok(())
    }

    /// AlterConfigs or IncrementalAlterConfigs for one resource. Logs pick
    /// up their new settings at once; background tasks at their next round.
    pub async fn alter_configs(
        &self,
        resource: &ConfigResource,
        change: &ConfigChange,
        validate_only: bool,
    ) -> Result<(), AdminError> {
        self.request(ControllerRequest::AlterConfigs {
            resource: resource.clone(),
            change: change.clone(),
            validate_only,
        })
        .await?;
        Ok(())
    }

    /// Creates `__consumer_offsets` on first use, as Kafka does, and loads
    /// the partitions this broker leads. Only after this returns may a
    /// client be told that this broker is its coordinator: concurrent
    /// callers wait here until every partition is open and loaded, instead
    /// of finding the topic in the metadata before its partitions exist.
    pub async fn ensure_offsets_topic(&self) -> Result<(), AdminError> {
        let current = self
            .image()
            .topic_by_name(OFFSETS_TOPIC)
            .map(|t| t.topic_id);
        if current.is_some() && current == self.offsets_leadership.lock().await.topic_id() {
            return Ok(());
        }
        if current.is_none() {
            let brokers = self.image().brokers.len().max(1) as i16;
            let topic = NewTopic {
                name: OFFSETS_TOPIC.to_string(),
                num_partitions: self.config.group.offsets_topic_partitions,
                replication_factor: self.config.offsets_topic_replication_factor.min(brokers),
                assignments: Default::default(),
                // Kafka's offsets topic settings: compacted, so it keeps
                // the latest commit of every group and partition.
                configs: vec![
                    ("cleanup.policy".into(), "compact".into()),
                    (
                        "segment.bytes".into(),
                        self.config.offsets_topic_segment_bytes.to_string(),
                    ),
                ],
            };
            self.create_internal_topic(&topic).await?;
        }
        // Another broker may have created (or recreated) it: this one opens
        // its partitions and loads those it leads without waiting for the
        // image watcher.
        self.publish(self.image()).await?;
        Ok(())
    }

    /// Creates a coordinator's internal topic unless another broker did first.
    pub(crate) async fn create_internal_topic(&self, topic: &NewTopic) -> Result<(), AdminError> {
        match self.create_topic(topic, false).await {
            Ok(_) => {
                tracing::info!(partitions = topic.num_partitions, "created {}", topic.name);
                Ok(())
            }
            Err(AdminError::Controller(ControllerError::TopicAlreadyExists(_))) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Data dirs from before the log cleaner existed hold an offsets topic
    /// kept whole by `retention.ms=-1`; it becomes compacted like Kafka's.
    async fn compact_offsets_topic(&self) -> Result<(), AdminError> {
        let resource = ConfigResource::Topic(OFFSETS_TOPIC.to_string());
        let configs = self.image().dynamic_configs(&resource).cloned();
        if configs.is_some_and(|c| c.get("cleanup.policy").map(String::as_str) != Some("compact")) {
            let change = ConfigChange::Incremental(vec![
                (
                    "cleanup.policy".into(),
                    controller::ConfigOp::Set("compact".into()),
                ),
                ("retention.ms".into(), controller::ConfigOp::Delete),
            ]);
            self.alter_configs(&resource, &change, false).await?;
            tracing::info!("{OFFSETS_TOPIC} is now compacted");
        }
        Ok(())
    }

    /// ElectLeaders for `partitions` (None: every partition).
    pub async fn elect_leaders(
        &self,
        election: ElectionType,
        partitions: Option<Vec<(String, i32)>>,
    ) -> Result<Vec<ElectionResult>, AdminError> {
        let reply = self
            .request(ControllerRequest::ElectLeaders {
                election,
                partitions,
            })
            .await?;
        let ControllerReply::Elections(results) = reply else {
            unreachable!("the controller answers ElectLeaders with elections")
        };
        Ok(results)
    }

    /// UnregisterBroker: forgets a broker taken out of service.
    pub async fn unregister_broker(&self, broker_id: i32) -> Result<(), AdminError> {
        self.request(ControllerRequest::UnregisterBroker { broker_id })
            .await
            .map(|_| ())
    }

    /// AlterPartitionReassignments: each entry's refusal, in order.
    pub async fn alter_partition_reassignments(
        &self,
        reassignments: Vec<(String, i32, Option<Vec<i32>>)>,
        allow_replication_factor_change: bool,
    ) -> Result<Vec<Option<ControllerError>>, AdminError> {
        let reply = self
            .request(ControllerRequest::AlterPartitionReassignments {
                reassignments,
                allow_replication_factor_change,
            })
            .await?;
        let ControllerReply::Reassignments(refusals) = reply else {
            unreachable!("the controller answers reassignments with their refusals")
        };
        Ok(refusals)
    }

    pub async fn delete_topic(&self, topic_id: Uuid) -> Result<(), AdminError> {
        self.request(ControllerRequest::DeleteTopic { topic_id })
            .await?;
        Ok(())
    }

    /// Hands out a producer id, reserving a new block through the
    /// controller when the current one is used up.
    pub async fn next_producer_id(&self) -> Result<i64, AdminError> {
        let mut ids = self.producer_ids.lock().await;
        if ids.0 >= ids.1 {
            let reply = self
                .request(ControllerRequest::AllocateProducerIds {
                    block_size: PRODUCER_ID_BLOCK_SIZE,
                })
                .await?;
            let ControllerReply::ProducerIdBlock { start } = reply else {
                unreachable!("the controller answers AllocateProducerIds with a block")
            };
            *ids = (start, start + PRODUCER_ID_BLOCK_SIZE);
        }
        let id = ids.0;
        ids.0 += 1;
        Ok(id)
    }

    /// Writes every log's recovery point and log start offset.
    pub fn checkpoint(&self) -> Result<(), StorageError> {
        self.replicas.checkpoint()
    }

    /// Runs retention, time-based upkeep and checkpoints until `shutdown` fires.
    pub async fn run_background(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let cleaner = self
            .config
            .log_cleaner_enable
            .then(|| tokio::spawn(LogCleaner::run(self.clone(), shutdown.clone())));
        let liveness = tokio::spawn(self.clone().run_liveness(shutdown.clone()));
        let isr_sender = self.isr_change_queue.lock().take().map(|queue| {
            let broker = self.clone();
            tokio::spawn(async move { broker.send_isr_changes(queue).await })
        });
        self.fetchers.sync(&self);
        let mut retention = tokio::time::interval(Duration::from_millis(
            self.config.log_retention_check_interval_ms,
        ));
        let mut upkeep = tokio::time::interval(Duration::from_millis(UPKEEP_INTERVAL_MS));
        let mut checkpoint = tokio::time::interval(Duration::from_millis(
            self.config.log_flush_offset_checkpoint_interval_ms.max(1),
        ));
        let mut images = self.metadata.subscribe();
        loop {
            tokio::select! {
                Ok(()) = images.changed() => {
                    // Changes decided elsewhere: another broker's request,
                    // or one replayed from the log.
                    let image = images.borrow_and_update().clone();
                    if let Err(e) = self.publish(image).await {
                        tracing::error!(error = %e, "applying the metadata image failed");
                    }
                    self.fetchers.sync(&self);
                }
                _ = shutdown.changed() => {
                    let _ = liveness.await;
                    self.fetchers.stop();
                    if let Some(sender) = isr_sender {
                        sender.abort();
                    }
                    if let Some(cleaner) = cleaner {
                        // Stops cleans in flight; their partial files go.
                        let _ = cleaner.await;
                    }
                    return;
                }
                _ = retention.tick() => {
                    let broker = self.clone();
                    let _ = tokio::task::spawn_blocking(move || broker.replicas.enforce_retention(now_ms())).await;
                }
                _ = upkeep.tick() => {
                    let broker = self.clone();
                    let _ = tokio::task::spawn_blocking(move || broker.replicas.tick(now_ms())).await;
                    for (partition, change) in self.replicas.isr_shrinks(self.config.replica_lag_time_max_ms, now_ms()) {
                        self.propose_isr_change(partition, change);
                    }
                    self.fetchers.sync(&self);
                }
                _ = checkpoint.tick() => {
                    if let Err(e) = self.checkpoint() {
                        tracing::error!(error = %e, "writing checkpoints failed");
                    }
                }
            }
        }
    }

    /// Heartbeats to the active controller and, on a node that is also a
    /// controller, runs the active controller's duties.
    async fn run_liveness(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let duties = self.config.process_roles.controller.then(|| {
            let (broker, mut shutdown) = (self.clone(), shutdown.clone());
            tokio::spawn(async move {
                let stopped = async move {
                    let _ = shutdown.changed().await;
                };
                run_controller_duties(&broker.metadata, &broker.config, stopped).await
            })
        });
        let mut tick = tokio::time::interval(Duration::from_millis(
            self.config.broker_heartbeat_interval_ms,
        ));
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tick.tick() => {}
            }
            let stopped = self.heartbeats_stopped.lock().await;
            if *stopped {
                continue;
            }
            let heartbeat = ControllerRequest::BrokerHeartbeat {
                broker_id: self.config.node_id,
            };
            match self.metadata.request(heartbeat).await {
                Ok(Ok(_)) => {}
                Ok(Err(refused)) => tracing::warn!(error = %refused, "heartbeat refused"),
                Err(e) => tracing::debug!(error = %e, "heartbeat did not reach the controller"),
            }
            drop(stopped);
        }
        if let Some(duties) = duties {
            let _ = duties.await;
        }
    }

    /// Kafka's controlled shutdown: before a clean stop, this broker leaves
    /// service through the controller, so its partitions get new leaders
    /// now rather than a session timeout after it is gone. Clients are
    /// still served meanwhile and follow the new leaders. Skipped when no
    /// other broker could take over, or the controller cannot be reached
    /// within `within`.
    pub async fn controlled_shutdown(&self, within: Duration) {
        *self.heartbeats_stopped.lock().await = true;
        let image = self.image();
        let others = image
            .brokers
            .values()
            .any(|b| b.broker_id != self.config.node_id && !b.fenced);
        if !others {
            return;
        }
        let leave = ControllerRequest::FenceBroker {
            broker_id: self.config.node_id,
        };
        match tokio::time::timeout(within, self.request(leave)).await {
            Ok(Ok(_)) => tracing::info!("controlled shutdown: leadership handed over"),
            Ok(Err(e)) => tracing::warn!(error = %e, "controlled shutdown refused"),
            Err(_) => tracing::warn!(?within, "controlled shutdown: no controller answered"),
        }
    }

    /// Flushes everything and marks the shutdown clean, so the next start
    /// skips recovery.
    pub fn shutdown(&self) -> Result<(), BrokerError> {
        let points = self.replicas.close_all()?;
        self.replicas.log_manager().write_checkpoints(&points)?;
        self.replicas.log_manager().mark_clean_shutdown()?;
        Ok(())
    }
}

/// How often segment.ms, flush.ms and producer expiry are checked.
const UPKEEP_INTERVAL_MS: u64 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Controller(#[from] ControllerError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl From<MetadataError> for AdminError {
    fn from(e: MetadataError) -> Self {
        AdminError::Broker(e.into())
    }
}

impl From<StorageError> for AdminError {
    fn from(e: StorageError) -> Self {
        AdminError::Broker(e.into())
    }
}

/// The partitions of `topic` that `node_id` leads, with their leader epochs:
/// what a coordinator on that node owns.
async fn blocking<T: Send + 'static, E: Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, E> {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking broker task panicked")
}

/// How long a starting broker waits between attempts to reach the active
/// controller, and how often it says so.
const REGISTRATION_RETRY: Duration = Duration::from_millis(200);
const REGISTRATION_LOG_EVERY: u32 = 25;

/// Registers this broker with the active controller, waiting as long as it
/// takes for one to be elected: a broker without the cluster's metadata
/// must not serve. On return the image holds everything committed before
/// the registration, so partitions it does not know really are strays.
async fn register(metadata: &MetadataStore, config: &BrokerConfig) -> Result<(), BrokerError> {
    let request = ControllerRequest::RegisterBroker {
        broker_id: config.node_id,
        host: config.advertised_host.clone(),
        port: config.advertised_port,
        rack: config.rack.clone(),
        incarnation_id: Uuid::new_v4(),
        new_cluster_id: new_cluster_id(),
    };
    for attempt in 1u32.. {
        match metadata.request(request.clone()).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(refused)) => return Err(BrokerError::Registration(refused.to_string())),
            Err(MetadataError::NotController(why)) => {
                if attempt % REGISTRATION_LOG_EVERY == 0 {
                    tracing::info!(%why, "waiting for an active controller to register with");
                }
                tokio::time::sleep(REGISTRATION_RETRY).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    unreachable!("registration retries until it succeeds or fails")
}

/// Kafka cluster ids are 16 random bytes in URL-safe base64 without padding.
fn new_cluster_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bits = Uuid::new_v4().as_u128();
    (0..22)
        .map(|i| ALPHABET[((bits >> (i * 6)) & 63) as usize] as char)
        .collect()
}

/// The topics as the consumer groups' assignors see them: one snapshot of
/// the metadata image per ConsumerGroupHeartbeat.
pub struct ImageTopics(pub Arc<MetadataImage>);

impl keel_group::TopicMetadata for ImageTopics {
    fn partitions(&self, topic: &str) -> Option<(Uuid, i32)> {
        let t = self.0.topic_by_name(topic)?;
        Some((t.topic_id, t.partitions.len() as i32))
    }

    fn topic_name(&self, topic_id: &Uuid) -> Option<&str> {
        self.0.topic_by_id(topic_id).map(|t| t.name.as_str())
    }

    fn topic_names(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        Box::new(self.0.topics().map(|t| t.name.as_str()))
    }
}
