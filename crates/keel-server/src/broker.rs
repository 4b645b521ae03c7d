//! The broker's shared state and the operations that span its parts.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keel_group::GroupService;
use keel_metadata::controller::{self, ConfigChange, ControllerError, NewTopic, TopicDefaults};
use keel_metadata::{ConfigResource, MetadataImage, MetadataRecord};
use keel_storage::{LogManager, StorageError};
use parking_lot::Mutex;
use uuid::Uuid;

use crate::config::BrokerConfig;
use crate::fetch_session::FetchSessionCache;
use crate::log_cleaner::LogCleaner;
use crate::metadata_store::{MetadataError, MetadataStore};
use crate::offsets_log::{ConsumerOffsetsLog, OFFSETS_TOPIC};
use crate::replica_manager::ReplicaManager;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("loading consumer groups: {0}")]
    Groups(String),
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

pub struct Broker {
    pub config: BrokerConfig,
    pub metadata: MetadataStore,
    pub replicas: Arc<ReplicaManager>,
    pub groups: Arc<GroupService>,
    pub fetch_sessions: FetchSessionCache,
    pub log_cleaner: LogCleaner,
    /// `(next id to hand out, end of the reserved block)`.
    producer_ids: Mutex<(i64, i64)>,
    /// The id of the `__consumer_offsets` the coordinator has loaded. A
    /// deleted or recreated topic has another id (or none) and is reloaded.
    loaded_offsets_topic: Mutex<Option<Uuid>>,
}

impl Broker {
    /// Opens the data dir: replays the metadata log (creating the cluster and
    /// registering this broker on first start) and opens every hosted log.
    pub fn open(config: BrokerConfig) -> Result<Arc<Self>, BrokerError> {
        let now = now_ms();
        let log_manager = LogManager::open(config.log_dir.clone())?;
        let metadata = MetadataStore::open(&log_manager, now)?;
        let registration = MetadataRecord::RegisterBroker {
            broker_id: config.node_id,
            host: config.advertised_host.clone(),
            port: config.advertised_port,
            rack: config.rack.clone(),
        };
        metadata
            .submit(now, |image| {
                let mut records = Vec::new();
                if image.cluster_id.is_empty() {
                    records.push(MetadataRecord::ClusterId {
                        cluster_id: new_cluster_id(),
                    });
                }
                let registered = image.brokers.get(&config.node_id);
                if registered.is_none_or(|b| {
                    (&b.host, b.port, &b.rack)
                        != (
                            &config.advertised_host,
                            config.advertised_port,
                            &config.rack,
                        )
                }) {
                    records.push(registration);
                }
                Ok::<_, std::convert::Infallible>((records, ()))
            })?
            .expect("infallible");
        let replicas = Arc::new(ReplicaManager::new(
            config.node_id,
            log_manager,
            config.producer_id_expiration_ms,
        ));
        let image = metadata.image();
        replicas.quarantine_strays(&image)?;
        replicas.apply_image(&image, &config, now)?;
        tracing::info!(
            cluster_id = %image.cluster_id,
            node_id = config.node_id,
            topics = image.topic_count(),
            "broker opened its data dir"
        );
        let groups = GroupService::new(
            config.group.clone(),
            Arc::new(ConsumerOffsetsLog {
                replicas: replicas.clone(),
            }),
        );
        groups.load().map_err(BrokerError::Groups)?;
        let loaded_offsets_topic = image.topic_by_name(OFFSETS_TOPIC).map(|t| t.topic_id);
        let log_cleaner = LogCleaner::new(replicas.log_manager().read_cleaner_checkpoint()?);
        let broker = Arc::new(Self {
            log_cleaner,
            loaded_offsets_topic: Mutex::new(loaded_offsets_topic),
            groups,
            fetch_sessions: FetchSessionCache::new(config.fetch_session_cache_slots),
            config,
            metadata,
            replicas,
            producer_ids: Mutex::new((0, 0)),
        });
        if let Err(e) = broker.compact_offsets_topic() {
            tracing::error!(error = %e, "{OFFSETS_TOPIC} stays as it was configured");
        }
        Ok(broker)
    }

    pub fn image(&self) -> Arc<MetadataImage> {
        self.metadata.image()
    }

    pub fn topic_defaults(&self) -> TopicDefaults {
        TopicDefaults {
            num_partitions: self.config.num_partitions,
            replication_factor: self.config.default_replication_factor,
        }
    }

    /// Runs one controller decision through the metadata log and brings the
    /// hosted partitions in line with the result. With `validate_only` the
    /// decision is checked and nothing is written.
    fn submit_admin(
        &self,
        validate_only: bool,
        decide: impl FnOnce(&MetadataImage) -> Result<Vec<MetadataRecord>, ControllerError>,
    ) -> Result<Arc<MetadataImage>, AdminError> {
        let now = now_ms();
        let (image, ()) = self.metadata.submit(now, |image| {
            let records = decide(image)?;
            Ok::<_, ControllerError>((if validate_only { vec![] } else { records }, ()))
        })??;
        if !validate_only {
            self.replicas.apply_image(&image, &self.config, now)?;
        }
        Ok(image)
    }

    /// Creates one topic through the metadata log and opens its partitions.
    pub fn create_topic(
        &self,
        topic: &NewTopic,
        validate_only: bool,
    ) -> Result<(Uuid, Arc<MetadataImage>), AdminError> {
        let topic_id = Uuid::new_v4();
        let defaults = self.topic_defaults();
        let image = self.submit_admin(validate_only, |image| {
            controller::create_topic(image, topic, defaults, topic_id)
        })?;
        Ok((topic_id, image))
    }

    /// CreatePartitions for one topic.
    pub fn create_partitions(
        &self,
        topic: &str,
        count: i32,
        assignments: Option<&[Vec<i32>]>,
        validate_only: bool,
    ) -> Result<(), AdminError> {
        self.submit_admin(validate_only, |image| {
            controller::create_partitions(image, topic, count, assignments)
        })?;
        Ok(())
    }

    /// AlterConfigs or IncrementalAlterConfigs for one resource. Logs pick
    /// up their new settings at once; background tasks at their next round.
    pub fn alter_configs(
        &self,
        resource: &ConfigResource,
        change: &ConfigChange,
        validate_only: bool,
    ) -> Result<(), AdminError> {
        self.submit_admin(validate_only, |image| {
            controller::alter_configs(image, resource, change)
        })?;
        Ok(())
    }

    /// Creates `__consumer_offsets` on first use, as Kafka does, and loads
    /// the group state from it. Only after this returns may a client be told
    /// that this broker is its coordinator: concurrent callers wait here until
    /// every partition is open, instead of finding the topic in the metadata
    /// before its partitions exist.
    pub fn ensure_offsets_topic(&self) -> Result<(), AdminError> {
        let mut loaded = self.loaded_offsets_topic.lock();
        let current = self
            .image()
            .topic_by_name(OFFSETS_TOPIC)
            .map(|t| t.topic_id);
        if current.is_some() && current == *loaded {
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
            self.create_topic(&topic, false)?;
            tracing::info!(partitions = topic.num_partitions, "created {OFFSETS_TOPIC}");
        }
        self.groups
            .load()
            .map_err(|e| AdminError::Broker(BrokerError::Groups(e)))?;
        *loaded = self
            .image()
            .topic_by_name(OFFSETS_TOPIC)
            .map(|t| t.topic_id);
        Ok(())
    }

    /// Data dirs from before the log cleaner existed hold an offsets topic
    /// kept whole by `retention.ms=-1`; it becomes compacted like Kafka's.
    fn compact_offsets_topic(&self) -> Result<(), AdminError> {
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
            self.alter_configs(&resource, &change, false)?;
            tracing::info!("{OFFSETS_TOPIC} is now compacted");
        }
        Ok(())
    }

    pub fn delete_topic(&self, topic_id: Uuid) -> Result<(), AdminError> {
        self.submit_admin(false, |image| controller::delete_topic(image, topic_id))?;
        Ok(())
    }

    /// Hands out a producer id, reserving a new block in the metadata log
    /// when the current one is used up.
    pub fn next_producer_id(&self) -> Result<i64, BrokerError> {
        let mut ids = self.producer_ids.lock();
        if ids.0 >= ids.1 {
            let (_, start) = self
                .metadata
                .submit(now_ms(), |image| {
                    let start = image.next_producer_id;
                    Ok::<_, std::convert::Infallible>((
                        vec![MetadataRecord::ProducerIds {
                            next_block_start: start + PRODUCER_ID_BLOCK_SIZE,
                        }],
                        start,
                    ))
                })?
                .expect("infallible");
            *ids = (start, start + PRODUCER_ID_BLOCK_SIZE);
        }
        let id = ids.0;
        ids.0 += 1;
        Ok(id)
    }

    /// Writes every log's recovery point and log start offset.
    pub fn checkpoint(&self) -> Result<(), StorageError> {
        self.replicas.checkpoint(&[self.metadata.recovery_point()])
    }

    /// Runs retention, time-based upkeep and checkpoints until `shutdown` fires.
    pub async fn run_background(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let cleaner = self
            .config
            .log_cleaner_enable
            .then(|| tokio::spawn(LogCleaner::run(self.clone(), shutdown.clone())));
        let mut retention = tokio::time::interval(Duration::from_millis(
            self.config.log_retention_check_interval_ms,
        ));
        let mut upkeep = tokio::time::interval(Duration::from_millis(UPKEEP_INTERVAL_MS));
        let mut checkpoint = tokio::time::interval(Duration::from_millis(
            self.config.log_flush_offset_checkpoint_interval_ms.max(1),
        ));
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
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
                }
                _ = checkpoint.tick() => {
                    if let Err(e) = self.checkpoint() {
                        tracing::error!(error = %e, "writing checkpoints failed");
                    }
                }
            }
        }
    }

    /// Flushes everything and marks the shutdown clean, so the next start
    /// skips recovery.
    pub fn shutdown(&self) -> Result<(), BrokerError> {
        self.metadata.close()?;
        let mut points = self.replicas.close_all()?;
        points.push(self.metadata.recovery_point());
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

    fn topic_names(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        Box::new(self.0.topics().map(|t| t.name.as_str()))
    }
}
