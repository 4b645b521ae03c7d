//! DescribeLogDirs: the log dir, each hosted partition's size on disk and,
//! for compacted ones, the cleaner's progress (see
//! `crate::compaction_progress`), and the volume's capacity.

use std::collections::BTreeMap;

use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::{DescribeLogDirsRequest, DescribeLogDirsResponse};

use super::{str_bytes, topic_name};
use crate::broker::Broker;
use crate::compaction_progress::COMPACTION_PROGRESS_TAG;
use crate::dispatch::RequestContext;

/// Kafka's "volume size not known".
const UNKNOWN_VOLUME_BYTES: i64 = -1;

pub fn handle(
    broker: &Broker,
    _ctx: &RequestContext<'_>,
    request: DescribeLogDirsRequest,
) -> DescribeLogDirsResponse {
    let wanted = |topic: &str, partition: i32| {
        request.topics.as_ref().is_none_or(|topics| {
            topics
                .iter()
                .any(|t| t.topic.0.as_str() == topic && t.partitions.contains(&partition))
        })
    };
    let mut topics: BTreeMap<String, Vec<DescribeLogDirsPartition>> = BTreeMap::new();
    for partition in broker.replicas.all() {
        if !wanted(&partition.tp.topic, partition.tp.partition) {
            continue;
        }
        let size = partition.with_log(|log| log.size_bytes());
        // Versions before 2 have no tagged fields; the encoder drops it.
        let progress = broker
            .log_cleaner
            .progress(&partition)
            .map(|p| (COMPACTION_PROGRESS_TAG, p.encode()));
        topics
            .entry(partition.tp.topic.to_string())
            .or_default()
            .push(
                DescribeLogDirsPartition::default()
                    .with_partition_index(partition.tp.partition)
                    .with_partition_size(size as i64)
                    // Every hosted replica is current: nothing is catching up.
                    .with_offset_lag(0)
                    .with_unknown_tagged_fields(progress.into_iter().collect()),
            );
    }
    let dir = broker.replicas.log_manager().dir();
    let dir_name = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let (total_bytes, usable_bytes) = match rustix::fs::statvfs(dir) {
        Ok(s) => (
            (s.f_blocks * s.f_frsize) as i64,
            (s.f_bavail * s.f_frsize) as i64,
        ),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot read the log dir's volume size");
            (UNKNOWN_VOLUME_BYTES, UNKNOWN_VOLUME_BYTES)
        }
    };
    let result = DescribeLogDirsResult::default()
        .with_log_dir(str_bytes(&dir_name.to_string_lossy()))
        .with_total_bytes(total_bytes)
        .with_usable_bytes(usable_bytes)
        .with_topics(
            topics
                .into_iter()
                .map(|(name, mut partitions)| {
                    partitions.sort_by_key(|p| p.partition_index);
                    DescribeLogDirsTopic::default()
                        .with_name(topic_name(&name))
                        .with_partitions(partitions)
                })
                .collect(),
        );
    DescribeLogDirsResponse::default().with_results(vec![result])
}
