//! `__consumer_offsets` as the group coordinator sees it: an append-only
//! record store per partition, written through the same `Partition::append`
//! as user topics so it shares their format, recovery and durability.

use std::sync::Arc;

use keel_group::OffsetsLog;
use keel_storage::batch::{iter_records, BatchBuilder, BatchIter};
use keel_types::TopicPartition;

use crate::broker::now_ms;
use crate::replica_manager::ReplicaManager;

pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Bytes read per step while loading a partition.
const LOAD_READ_BYTES: u32 = 1 << 20;

pub struct ConsumerOffsetsLog {
    pub replicas: Arc<ReplicaManager>,
}

impl OffsetsLog for ConsumerOffsetsLog {
    fn append(
        &self,
        partition: i32,
        records: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) -> Result<(), String> {
        let tp = TopicPartition::new(OFFSETS_TOPIC, partition);
        let target = self
            .replicas
            .get(&tp)
            .ok_or_else(|| format!("{tp} is not hosted here"))?;
        let now = now_ms();
        let mut builder = BatchBuilder::new(0);
        for (key, value) in &records {
            builder.push(Some(key), value.as_deref(), &[], now);
        }
        let mut batch = builder.build();
        target.append(&mut batch, now).map_err(|e| e.to_string())?;
        Ok(())
    }

    fn read_all(&self, partition: i32) -> Result<Vec<(Vec<u8>, Option<Vec<u8>>)>, String> {
        let tp = TopicPartition::new(OFFSETS_TOPIC, partition);
        let Some(source) = self.replicas.get(&tp) else {
            return Ok(Vec::new());
        };
        let mut records = Vec::new();
        let mut offset = source.log_start_offset();
        loop {
            let read = source
                .read(offset, LOAD_READ_BYTES, true, false)
                .map_err(|e| e.to_string())?;
            let Some(slice) = read.slice else { break };
            let bytes = slice.read_bytes().map_err(|e| e.to_string())?;
            let before = offset;
            for batch in BatchIter::new(&bytes) {
                let (header, range) = batch.map_err(|e| e.to_string())?;
                for record in iter_records(&bytes[range]).map_err(|e| e.to_string())? {
                    let record = record.map_err(|e| e.to_string())?;
                    if let Some(key) = record.key {
                        records.push((key.to_vec(), record.value.map(<[u8]>::to_vec)));
                    }
                }
                offset = header.last_offset() + 1;
            }
            if offset == before || offset >= read.high_watermark {
                break;
            }
        }
        Ok(records)
    }
}
