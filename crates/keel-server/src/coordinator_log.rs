//! The coordinators' internal topics, `__consumer_offsets` (groups) and
//! `__transaction_state` (transactions), as their coordinators see them: an
//! append-only record store per partition, written through the same
//! `Partition` appends as user topics so they share their format, recovery
//! and durability.

use std::collections::BTreeMap;
use std::sync::Arc;

use keel_group::{LogEntry, OffsetsLog};
use keel_metadata::MetadataImage;
use keel_storage::batch::{iter_records, BatchBuilder, BatchIter};
use keel_storage::ControlRecordType;
use keel_txn::TransactionLog;
use keel_types::TopicPartition;
use tokio::sync::watch;

use crate::broker::now_ms;
use crate::config::BrokerConfig;
use crate::handlers::produce::replicated;
use crate::replica_manager::{Partition, ReadBound, ReplicaManager};

pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
pub const TRANSACTION_STATE_TOPIC: &str = "__transaction_state";

/// How long a coordinator's append may wait for the ISR (Kafka's
/// `offsets.commit.timeout.ms`).
const APPEND_REPLICATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Bytes read per step while loading a partition.
const LOAD_READ_BYTES: u32 = 1 << 20;

type LogRecord = (Vec<u8>, Option<Vec<u8>>);

/// One internal topic on this broker.
pub struct CoordinatorLog {
    pub replicas: Arc<ReplicaManager>,
    pub topic: &'static str,
    /// With the image, what the topic's `min.insync.replicas` is.
    pub config: Arc<BrokerConfig>,
    pub image: watch::Receiver<Arc<MetadataImage>>,
}

impl CoordinatorLog {
    fn partition(&self, partition: i32) -> Result<Arc<Partition>, String> {
        let tp = TopicPartition::new(self.topic, partition);
        self.replicas
            .get(&tp)
            .ok_or_else(|| format!("{tp} is not hosted here"))
    }

    /// Appends records as one batch, as the partition's leader.
    fn append_batch(
        &self,
        partition: i32,
        records: &[LogRecord],
        producer: Option<(i64, i16)>,
    ) -> Result<(), String> {
        let target = self.partition(partition)?;
        let now = now_ms();
        let mut builder = BatchBuilder::new(0);
        if let Some((producer_id, producer_epoch)) = producer {
            builder = builder
                .producer(producer_id, producer_epoch, keel_types::NO_SEQUENCE)
                .transactional(true);
        }
        for (key, value) in records {
            builder.push(Some(key), value.as_deref(), &[], now);
        }
        let batch = builder.build();
        let leadership = target.leadership();
        // Kafka's coordinators append with acks=all, so the topic's
        // `min.insync.replicas` (for `__transaction_state`,
        // `transaction.state.log.min.isr`) holds for them as for producers;
        // their clients hear COORDINATOR_NOT_AVAILABLE and retry.
        let min_isr = self.min_insync_replicas();
        if leadership.isr_size < min_isr {
            return Err(format!(
                "NOT_ENOUGH_REPLICAS: {} has {} in-sync replicas, fewer than min.insync.replicas {min_isr}",
                target.tp, leadership.isr_size
            ));
        }
        let appended = if producer.is_some() {
            target.append_as_coordinator(&batch, now)
        } else {
            target.append(&batch, now)
        }
        .map_err(|e| e.to_string())?;
        // A commit or transaction state acknowledged before the ISR had it
        // would be lost with this leader. Called from a blocking thread (both coordinators append
        // through `spawn_blocking`), which may wait on the runtime.
        let deadline = tokio::time::Instant::now() + APPEND_REPLICATION_TIMEOUT;
        tokio::runtime::Handle::current()
            .block_on(replicated(
                &target,
                appended.last_offset + 1,
                leadership.leader_epoch,
                min_isr,
                deadline,
            ))
            .map_err(|e| format!("{tp} did not replicate the append: {e:?}", tp = target.tp))
    }

    fn min_insync_replicas(&self) -> usize {
        let image = self.image.borrow().clone();
        let no_overrides = BTreeMap::new();
        let overrides = image
            .topic_by_name(self.topic)
            .map_or(&no_overrides, |t| &t.configs);
        self.config.min_insync_replicas(&image, overrides)
    }

    /// Every committed entry of one partition, in offset order; nothing if
    /// this broker does not host it.
    fn read_entries(&self, partition: i32) -> Result<Vec<LogEntry>, String> {
        let Ok(source) = self.partition(partition) else {
            return Ok(Vec::new());
        };
        let mut entries = Vec::new();
        let mut offset = source.log_start_offset();
        loop {
            let read = source
                .read(offset, LOAD_READ_BYTES, true, ReadBound::HighWatermark)
                .map_err(|e| e.to_string())?;
            let Some(slice) = read.slice else { break };
            let bytes = slice.read_bytes().map_err(|e| e.to_string())?;
            let before = offset;
            for batch in BatchIter::new(&bytes) {
                let (header, range) = batch.map_err(|e| e.to_string())?;
                let batch = &bytes[range];
                if header.is_control() {
                    if let Some(control) = keel_storage::batch::control_record_type(batch)
                        .map_err(|e| e.to_string())?
                    {
                        entries.push(LogEntry::Marker {
                            producer_id: header.producer_id(),
                            commit: control == ControlRecordType::Commit,
                        });
                    }
                } else {
                    let producer_id = header.is_transactional().then_some(header.producer_id());
                    for record in iter_records(batch).map_err(|e| e.to_string())? {
                        let record = record.map_err(|e| e.to_string())?;
                        if let Some(key) = record.key {
                            entries.push(LogEntry::Record {
                                key: key.to_vec(),
                                value: record.value.map(<[u8]>::to_vec),
                                producer_id,
                            });
                        }
                    }
                }
                offset = header.last_offset() + 1;
            }
            if offset == before || offset >= read.high_watermark {
                break;
            }
        }
        Ok(entries)
    }
}

impl OffsetsLog for CoordinatorLog {
    fn append(&self, partition: i32, records: Vec<LogRecord>) -> Result<(), String> {
        self.append_batch(partition, &records, None)
    }

    fn append_transactional(
        &self,
        partition: i32,
        producer_id: i64,
        producer_epoch: i16,
        records: Vec<LogRecord>,
    ) -> Result<(), String> {
        self.append_batch(partition, &records, Some((producer_id, producer_epoch)))
    }

    fn read_all(&self, partition: i32) -> Result<Vec<LogEntry>, String> {
        self.read_entries(partition)
    }
}

impl TransactionLog for CoordinatorLog {
    fn append(&self, partition: i32, records: Vec<LogRecord>) -> Result<(), String> {
        self.append_batch(partition, &records, None)
    }

    fn read_all(&self, partition: i32) -> Result<Vec<LogRecord>, String> {
        // The transaction log is never written transactionally.
        Ok(self
            .read_entries(partition)?
            .into_iter()
            .filter_map(|entry| match entry {
                LogEntry::Record { key, value, .. } => Some((key, value)),
                LogEntry::Marker { .. } => None,
            })
            .collect())
    }
}
