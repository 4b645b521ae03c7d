//! The metadata log and the image built from it.
//!
//! The log is a Kafka-format partition, `__cluster_metadata-0`, in the data
//! dir: every decision the controller makes is appended as one record batch
//! and fsynced before anyone sees its effect, and replaying the log on start
//! rebuilds exactly the image the broker had. The cluster issue swaps this
//! local log for a Raft quorum behind the same `submit` call.

use std::sync::Arc;

use keel_metadata::{MetadataImage, MetadataRecord};
use keel_storage::batch::{iter_records, BatchBuilder, BatchIter};
use keel_storage::{Log, LogConfig, LogManager, StorageError};
use keel_types::TopicPartition;
use parking_lot::{Mutex, RwLock};

pub const METADATA_TOPIC: &str = "__cluster_metadata";

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("metadata log: {0}")]
    Storage(#[from] StorageError),
    #[error("metadata log record at offset {offset} is unreadable: {why}")]
    Corrupt { offset: i64, why: String },
}

pub struct MetadataStore {
    /// Held for the whole decide-append-apply step, so decisions are made
    /// against the latest image and applied in log order.
    log: Mutex<Log>,
    image: RwLock<Arc<MetadataImage>>,
}

/// Reads a batch at a time while replaying; metadata batches are small.
const REPLAY_READ_BYTES: u32 = 1 << 20;

impl MetadataStore {
    pub fn open(log_manager: &LogManager, now_ms: i64) -> Result<Self, MetadataError> {
        let tp = TopicPartition::new(METADATA_TOPIC, 0);
        let config = LogConfig {
            // The metadata log must never lose a record to retention.
            retention_ms: -1,
            retention_bytes: -1,
            ..LogConfig::default()
        };
        let log = log_manager.open_log(&tp, "metadata", config, i64::MAX, now_ms)?;
        let mut image = MetadataImage::empty();
        let mut offset = log.log_start_offset();
        while offset < log.log_end_offset() {
            let bytes = log
                .read(offset, REPLAY_READ_BYTES, log.log_end_offset(), true)?
                .read_bytes()?;
            let mut progressed = false;
            for batch in BatchIter::new(&bytes) {
                let (_, range) = batch?;
                for record in iter_records(&bytes[range])? {
                    let record = record?;
                    let corrupt = |why: String| MetadataError::Corrupt {
                        offset: record.offset,
                        why,
                    };
                    let value = record.value.ok_or_else(|| corrupt("no value".into()))?;
                    let decoded = MetadataRecord::from_bytes(value).map_err(corrupt)?;
                    if let Err(why) = image.apply(record.offset, &decoded) {
                        // Replay must always succeed; a record the image refuses
                        // was refused when first applied too, so skipping it
                        // reproduces the same image.
                        tracing::warn!(offset = record.offset, %why, "skipping metadata record");
                    }
                    offset = record.offset + 1;
                    progressed = true;
                }
            }
            if !progressed {
                break;
            }
        }
        Ok(Self {
            log: Mutex::new(log),
            image: RwLock::new(Arc::new(image)),
        })
    }

    pub fn image(&self) -> Arc<MetadataImage> {
        self.image.read().clone()
    }

    /// Runs `decide` against the latest image; appends and fsyncs the records
    /// it returns as one batch (all or nothing), then publishes the new image.
    pub fn submit<T, E>(
        &self,
        now_ms: i64,
        decide: impl FnOnce(&MetadataImage) -> Result<(Vec<MetadataRecord>, T), E>,
    ) -> Result<Result<(Arc<MetadataImage>, T), E>, MetadataError> {
        let mut log = self.log.lock();
        let current = self.image();
        let (records, answer) = match decide(&current) {
            Ok(decision) => decision,
            Err(e) => return Ok(Err(e)),
        };
        if records.is_empty() {
            return Ok(Ok((current, answer)));
        }
        let mut builder = BatchBuilder::new(now_ms);
        for record in &records {
            let value = record.to_bytes();
            builder.push(None, Some(&value), &[], now_ms);
        }
        let mut batch = builder.build();
        let appended = log.append_as_leader(&mut batch, 0, now_ms)?;
        log.flush()?;
        let mut next = (*current).clone();
        for (offset, record) in (appended.first_offset..).zip(&records) {
            if let Err(why) = next.apply(offset, record) {
                tracing::warn!(offset, %why, "metadata record refused by the image");
            }
        }
        let next = Arc::new(next);
        *self.image.write() = next.clone();
        Ok(Ok((next, answer)))
    }

    /// Flushes and closes the metadata log on shutdown.
    pub fn close(&self) -> Result<(), MetadataError> {
        self.log.lock().flush()?;
        Ok(())
    }

    pub fn recovery_point(&self) -> (TopicPartition, i64, i64) {
        let log = self.log.lock();
        (
            TopicPartition::new(METADATA_TOPIC, 0),
            log.recovery_point(),
            log.log_start_offset(),
        )
    }
}
