//! The partitions this broker hosts and the operations on them that the
//! handlers need: append, read, offsets, and the background upkeep of their
//! logs (retention, time-based rolls and flushes, checkpoints).
//!
//! One node leads every partition it hosts and is its whole ISR, so the high
//! watermark is the log end offset. The cluster issue replaces that equality
//! with follower tracking; handlers only ever ask for `high_watermark()`.

use std::collections::HashMap;
use std::sync::Arc;

use keel_metadata::MetadataImage;
use keel_storage::{FetchSlice, Log, LogAppendResult, LogManager, StorageError};
use keel_types::TopicPartition;
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;
use uuid::Uuid;

use crate::config::BrokerConfig;

pub struct Partition {
    pub tp: TopicPartition,
    pub topic_id: Uuid,
    pub leader_epoch: i32,
    log: Mutex<Log>,
    /// Fetchers waiting for data subscribe here; every append publishes the
    /// new high watermark, which is what wakes a long poll.
    high_watermark: watch::Sender<i64>,
    /// Serialises fsyncs so concurrent producers share one (group commit).
    flush_lock: tokio::sync::Mutex<()>,
    /// Set once the partition is deleted, so late readers stop waiting on it.
    deleted: std::sync::atomic::AtomicBool,
}

/// What a read returns besides the bytes.
pub struct ReadResult {
    pub slice: Option<FetchSlice>,
    pub high_watermark: i64,
    pub log_start_offset: i64,
}

impl Partition {
    fn new(tp: TopicPartition, topic_id: Uuid, leader_epoch: i32, log: Log) -> Self {
        let (high_watermark, _) = watch::channel(log.log_end_offset());
        Self {
            tp,
            topic_id,
            leader_epoch,
            log: Mutex::new(log),
            high_watermark,
            flush_lock: tokio::sync::Mutex::new(()),
            deleted: Default::default(),
        }
    }

    pub fn high_watermark(&self) -> i64 {
        *self.high_watermark.borrow()
    }

    pub fn log_start_offset(&self) -> i64 {
        self.log.lock().log_start_offset()
    }

    pub fn log_end_offset(&self) -> i64 {
        self.log.lock().log_end_offset()
    }

    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.high_watermark.subscribe()
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Appends a produce request's batches (already copied out of the request
    /// so offsets can be patched in place).
    pub fn append(&self, batches: &mut [u8], now_ms: i64) -> Result<LogAppendResult, StorageError> {
        let mut log = self.log.lock();
        let result = log.append_as_leader(batches, self.leader_epoch, now_ms)?;
        let log_end_offset = log.log_end_offset();
        drop(log);
        if !result.duplicate {
            self.high_watermark.send_replace(log_end_offset);
        }
        Ok(result)
    }

    /// Makes everything up to `offset` durable. Producers that arrive while
    /// an fsync is running wait for it and then find their data already
    /// covered, or run the next one for everyone queued behind them.
    pub async fn flush_to(&self, offset: i64) -> Result<(), StorageError> {
        if self.log.lock().flushed_offset() >= offset {
            return Ok(());
        }
        let _turn = self.flush_lock.lock().await;
        let (file, target) = {
            let log = self.log.lock();
            if log.flushed_offset() >= offset {
                return Ok(());
            }
            (log.active_segment_file(), log.log_end_offset())
        };
        // Older segments were fsynced when they were rolled, so syncing the
        // active one covers everything up to `target`.
        tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .map_err(|e| StorageError::Io(std::io::Error::other(e)))??;
        self.log.lock().mark_flushed(target);
        Ok(())
    }

    /// Locates data for a fetch. The bytes are read afterwards, outside the
    /// log's lock, by `FetchSlice::read_bytes`.
    pub fn read(
        &self,
        offset: i64,
        max_bytes: u32,
        min_one_batch: bool,
    ) -> Result<ReadResult, StorageError> {
        let log = self.log.lock();
        let high_watermark = self.high_watermark();
        let slice = if offset == high_watermark && offset >= log.log_start_offset() {
            None
        } else {
            Some(log.read(offset, max_bytes, high_watermark, min_one_batch)?)
        };
        Ok(ReadResult {
            slice,
            high_watermark,
            log_start_offset: log.log_start_offset(),
        })
    }

    pub fn with_log<T>(&self, f: impl FnOnce(&mut Log) -> T) -> T {
        f(&mut self.log.lock())
    }
}

pub struct ReplicaManager {
    node_id: i32,
    log_manager: LogManager,
    producer_id_expiration_ms: i64,
    partitions: RwLock<HashMap<TopicPartition, Arc<Partition>>>,
    /// Checkpoints are written from the background task and after
    /// DeleteRecords; one at a time, since they share temporary files.
    checkpoint_lock: Mutex<()>,
}

impl ReplicaManager {
    pub fn new(node_id: i32, log_manager: LogManager, producer_id_expiration_ms: i64) -> Self {
        Self {
            node_id,
            log_manager,
            producer_id_expiration_ms,
            partitions: RwLock::new(HashMap::new()),
            checkpoint_lock: Mutex::new(()),
        }
    }

    pub fn log_manager(&self) -> &LogManager {
        &self.log_manager
    }

    pub fn get(&self, tp: &TopicPartition) -> Option<Arc<Partition>> {
        self.partitions.read().get(tp).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Partition>> {
        self.partitions.read().values().cloned().collect()
    }

    /// Brings the hosted partitions in line with the metadata image: opens
    /// (creating on disk) every partition this broker leads, and closes and
    /// deletes the data of every partition whose topic is gone.
    pub fn apply_image(
        &self,
        image: &MetadataImage,
        config: &BrokerConfig,
        now_ms: i64,
    ) -> Result<(), StorageError> {
        let mut wanted = HashMap::new();
        for topic in image.topics() {
            for p in topic.partitions.values() {
                if p.leader == self.node_id {
                    wanted.insert(
                        TopicPartition::new(topic.name.clone(), p.partition),
                        (topic.clone(), p.leader_epoch),
                    );
                }
            }
        }
        let gone: Vec<Arc<Partition>> = {
            let mut partitions = self.partitions.write();
            let gone_keys: Vec<TopicPartition> = partitions
                .iter()
                .filter(|(tp, p)| {
                    wanted
                        .get(*tp)
                        .is_none_or(|(t, _)| t.topic_id != p.topic_id)
                })
                .map(|(tp, _)| tp.clone())
                .collect();
            gone_keys
                .iter()
                .filter_map(|tp| partitions.remove(tp))
                .collect()
        };
        for partition in gone {
            partition
                .deleted
                .store(true, std::sync::atomic::Ordering::Release);
            // Wake long polls so they answer instead of waiting out their timeout.
            partition.high_watermark.send_modify(|_| {});
            tracing::info!(partition = %partition.tp, "deleting partition data");
            self.log_manager.delete_partition_dir(&partition.tp)?;
        }
        for (tp, (topic, leader_epoch)) in wanted {
            if let Some(existing) = self.get(&tp) {
                let config = config.log_config(image, &topic);
                existing.with_log(|log| log.update_config(config));
                continue;
            }
            let log = self.log_manager.open_log(
                &tp,
                &topic.topic_id.to_string(),
                config.log_config(image, &topic),
                self.producer_id_expiration_ms,
                now_ms,
            )?;
            let partition = Arc::new(Partition::new(
                tp.clone(),
                topic.topic_id,
                leader_epoch,
                log,
            ));
            self.partitions.write().insert(tp, partition);
        }
        Ok(())
    }

    /// Moves aside partition directories the metadata does not know, instead
    /// of deleting them: a lost metadata log must not mean lost data.
    pub fn quarantine_strays(&self, image: &MetadataImage) -> Result<(), StorageError> {
        for tp in self.log_manager.existing_partitions()? {
            if tp.topic == crate::metadata_store::METADATA_TOPIC {
                continue;
            }
            let known = image
                .topic_by_name(&tp.topic)
                .is_some_and(|t| t.partitions.contains_key(&tp.partition));
            if !known {
                tracing::warn!(partition = %tp, "partition directory is not in the metadata; renaming it to .stray");
                self.log_manager.quarantine_partition_dir(&tp)?;
            }
        }
        Ok(())
    }

    /// Deletes segments past retention in every partition.
    pub fn enforce_retention(&self, now_ms: i64) {
        for partition in self.all() {
            match partition.with_log(|log| log.delete_old_segments(now_ms)) {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(partition = %partition.tp, segments = n, "retention deleted segments")
                }
                Err(e) => {
                    tracing::error!(partition = %partition.tp, error = %e, "retention failed")
                }
            }
        }
    }

    /// Time-driven upkeep: segment.ms rolls, flush.ms flushes, producer expiry.
    pub fn tick(&self, now_ms: i64) {
        for partition in self.all() {
            let result = partition.with_log(|log| -> Result<(), StorageError> {
                log.roll_if_due(now_ms)?;
                log.flush_if_due(now_ms)?;
                log.expire_producers(now_ms);
                Ok(())
            });
            if let Err(e) = result {
                tracing::error!(partition = %partition.tp, error = %e, "log upkeep failed");
            }
        }
    }

    pub fn checkpoint(&self, extra: &[(TopicPartition, i64, i64)]) -> Result<(), StorageError> {
        let _one_writer = self.checkpoint_lock.lock();
        let mut points: Vec<(TopicPartition, i64, i64)> = self
            .all()
            .iter()
            .map(|p| p.with_log(|log| (p.tp.clone(), log.recovery_point(), log.log_start_offset())))
            .collect();
        points.extend_from_slice(extra);
        self.log_manager.write_checkpoints(&points)
    }

    /// Flushes and closes every log. Called once, after the listener
    /// stopped. Returns each partition's recovery point and log start offset
    /// as they stand on disk, for the final checkpoint.
    pub fn close_all(&self) -> Result<Vec<(TopicPartition, i64, i64)>, StorageError> {
        let partitions: Vec<Arc<Partition>> =
            self.partitions.write().drain().map(|(_, p)| p).collect();
        let mut points = Vec::with_capacity(partitions.len());
        for partition in partitions {
            let tp = partition.tp.clone();
            let (end, start) = partition.with_log(|log| -> Result<(i64, i64), StorageError> {
                Ok((log.flush()?, log.log_start_offset()))
            })?;
            points.push((tp.clone(), end, start));
            match Arc::try_unwrap(partition) {
                // Closing also writes the producer-state snapshot.
                Ok(partition) => partition.log.into_inner().close()?,
                Err(_) => {
                    tracing::warn!(partition = %tp, "partition still in use at shutdown; flushed only")
                }
            }
        }
        Ok(points)
    }
}
