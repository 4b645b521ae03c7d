//! `keel topic describe`: a topic's partitions with their replicas,
//! offsets, size on disk and, when compacted, the cleaner's progress on
//! the leader; its cleanup policy, and the configs it does not take from
//! defaults.

use std::collections::BTreeMap;

use anyhow::{anyhow, Result};
use kafka_protocol::messages::describe_configs_response::DescribeConfigsResourceResult;
use kafka_protocol::messages::describe_log_dirs_request::DescribableLogDirTopic;
use kafka_protocol::messages::metadata_response::MetadataResponsePartition;
use kafka_protocol::messages::{DescribeLogDirsRequest, MetadataResponse};
use keel_server::compaction_progress::{CompactionProgress, COMPACTION_PROGRESS_TAG};
use uuid::Uuid;

use crate::client::{self, BootstrapArgs, Client, EARLIEST_TIMESTAMP, LATEST_TIMESTAMP};
use crate::commands::config::{
    config_source_name, describe_configs, DEFAULT_CONFIG_SOURCE, TOPIC_RESOURCE_TYPE,
};

/// What the partitions' leaders say about each partition.
struct PartitionState {
    earliest: String,
    latest: String,
    /// Bytes on disk, or why it is unknown.
    size: String,
    /// For a compacted partition, how far its leader's cleaner has got.
    compaction: Option<CompactionProgress>,
}

pub async fn run(bootstrap: &BootstrapArgs, name: &str) -> Result<()> {
    let mut client = Client::connect(&bootstrap.address).await?;
    let metadata = client.metadata(Some(&[name])).await?;
    let topic = metadata
        .topics
        .iter()
        .find(|t| t.name.as_deref().map(|n| n.as_str()) == Some(name))
        .ok_or_else(|| anyhow!("Metadata response lacks topic {name}"))?;
    client::check(topic.error_code, format!("topic {name}"))?;
    let mut partitions: Vec<&MetadataResponsePartition> = topic.partitions.iter().collect();
    partitions.sort_by_key(|p| p.partition_index);
    let states = partition_states(&mut client, &metadata, name, &partitions).await?;
    let configs = describe_configs(&mut client, TOPIC_RESOURCE_TYPE, name).await?;
    let cleanup_policy = configs
        .iter()
        .find(|c| c.name.as_str() == "cleanup.policy")
        .and_then(|c| c.value.as_ref())
        .map_or_else(|| "delete".to_string(), |v| v.to_string());
    let configs = non_default(&configs);

    let replication_factor = partitions.first().map_or(0, |p| p.replica_nodes.len());
    println!(
        "Topic: {name}\tTopicId: {}\tPartitionCount: {}\tReplicationFactor: {replication_factor}",
        kafka_uuid(topic.topic_id),
        partitions.len()
    );
    println!("CleanupPolicy: {cleanup_policy}");
    println!("Configs: {}", configs.join(", "));
    let now = keel_server::now_ms();
    for p in partitions {
        let state = &states[&p.partition_index];
        println!(
            "\tPartition: {}\tLeader: {}\tReplicas: {}\tIsr: {}\tLogStartOffset: {}\tLogEndOffset: {}\tSizeOnDisk: {}{}",
            p.partition_index,
            *p.leader_id,
            node_list(&p.replica_nodes),
            node_list(&p.isr_nodes),
            state.earliest,
            state.latest,
            state.size,
            state
                .compaction
                .as_ref()
                .map_or_else(String::new, |c| compaction_fields(c, now)),
        );
    }
    Ok(())
}

/// Earliest and latest offset and size on disk of each partition, asked of
/// its leader with one request per leader and question. A partition without
/// a leader shows `-`, one whose leader refuses shows the error in place of
/// the offset.
async fn partition_states(
    bootstrap: &mut Client,
    metadata: &MetadataResponse,
    topic: &str,
    partitions: &[&MetadataResponsePartition],
) -> Result<BTreeMap<i32, PartitionState>> {
    let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    let mut states = BTreeMap::new();
    for p in partitions {
        if *p.leader_id < 0 {
            let unknown = || "-".to_string();
            states.insert(
                p.partition_index,
                PartitionState {
                    earliest: unknown(),
                    latest: unknown(),
                    size: unknown(),
                    compaction: None,
                },
            );
        } else {
            by_leader
                .entry(*p.leader_id)
                .or_default()
                .push(p.partition_index);
        }
    }
    for (leader, indexes) in by_leader {
        let address = client::broker_address(metadata, leader)?;
        let mut other;
        let client = if address == bootstrap.address() {
            &mut *bootstrap
        } else {
            other = Client::connect(&address).await?;
            &mut other
        };
        // Two requests: Kafka rejects a partition listed twice in one.
        let mut earliest = client
            .list_offsets(topic, &indexes, EARLIEST_TIMESTAMP)
            .await?;
        let mut latest = client
            .list_offsets(topic, &indexes, LATEST_TIMESTAMP)
            .await?;
        let show = |offset: Option<Result<i64>>| match offset
            .expect("list_offsets answers every partition")
        {
            Ok(offset) => offset.to_string(),
            Err(e) => format!("({e:#})"),
        };
        let mut log_dirs = partition_log_dirs(client, topic, &indexes).await?;
        for index in indexes {
            let log_dir = log_dirs.remove(&index);
            states.insert(
                index,
                PartitionState {
                    earliest: show(earliest.remove(&index)),
                    latest: show(latest.remove(&index)),
                    size: log_dir
                        .as_ref()
                        .map_or_else(|| "-".to_string(), |d| format!("{} B", d.size)),
                    compaction: log_dir.and_then(|d| d.compaction),
                },
            );
        }
    }
    Ok(states)
}

/// What DescribeLogDirs says of one partition.
#[derive(Default)]
struct PartitionLogDir {
    size: i64,
    compaction: Option<CompactionProgress>,
}

/// Bytes on disk and compaction progress of the partitions one broker
/// hosts (DescribeLogDirs).
async fn partition_log_dirs(
    client: &mut Client,
    topic: &str,
    partitions: &[i32],
) -> Result<BTreeMap<i32, PartitionLogDir>> {
    let request =
        DescribeLogDirsRequest::default()
            .with_topics(Some(vec![DescribableLogDirTopic::default()
                .with_topic(client::topic_name(topic))
                .with_partitions(partitions.to_vec())]));
    let response = client.send(request).await?;
    client::check(response.error_code, "DescribeLogDirs")?;
    let mut log_dirs: BTreeMap<i32, PartitionLogDir> = BTreeMap::new();
    for dir in &response.results {
        for t in dir.topics.iter().filter(|t| t.name.as_str() == topic) {
            for p in &t.partitions {
                let entry = log_dirs.entry(p.partition_index).or_default();
                entry.size += p.partition_size;
                if let Some(progress) = p.unknown_tagged_fields.get(&COMPACTION_PROGRESS_TAG) {
                    entry.compaction = CompactionProgress::decode(progress);
                }
            }
        }
    }
    Ok(log_dirs)
}

/// The compaction columns of a partition line.
fn compaction_fields(progress: &CompactionProgress, now_ms: i64) -> String {
    let last_clean = match &progress.last_clean {
        Some(c) => format!(
            "{:.1} s ago, {} B read, {} B written, {} of {} records kept",
            (now_ms - c.finished_ms).max(0) as f64 / 1000.0,
            c.bytes_read,
            c.bytes_written,
            c.records_retained,
            c.records_read
        ),
        None => "none since the broker started".to_string(),
    };
    format!(
        "\tCleanedBelow: {}\tDirtyRatio: {:.2} (cleans above {:.2})\tLastClean: {last_clean}{}",
        progress.first_dirty_offset,
        progress.dirty_ratio(),
        progress.min_cleanable_dirty_ratio,
        if progress.cleaning {
            "\tCleaning: now"
        } else {
            ""
        }
    )
}

/// `key=value (SOURCE)` for each config not at its default, sorted by key.
fn non_default(configs: &[DescribeConfigsResourceResult]) -> Vec<String> {
    configs
        .iter()
        .filter(|c| c.config_source != DEFAULT_CONFIG_SOURCE)
        .map(|c| {
            let value = if c.is_sensitive {
                "(sensitive)"
            } else {
                c.value.as_deref().unwrap_or("null")
            };
            format!(
                "{}={value} ({})",
                c.name,
                config_source_name(c.config_source)
            )
        })
        .collect()
}

/// A topic id as Kafka's tools print it (`Uuid.toString`): URL-safe base64
/// of the 16 bytes, without padding.
fn kafka_uuid(id: Uuid) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bits = id.as_u128();
    // 21 whole six-bit groups from the most significant end, then the last
    // two bits, which base64 pads with four zero bits.
    let groups = (0..21)
        .map(|i| (bits >> (122 - 6 * i)) & 63)
        .chain([(bits & 3) << 4]);
    groups.map(|g| char::from(ALPHABET[g as usize])).collect()
}

fn node_list<T: std::ops::Deref<Target = i32>>(nodes: &[T]) -> String {
    nodes
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_ids_print_as_kafka_prints_them() {
        let id = |s: &str| Uuid::parse_str(s).unwrap();
        assert_eq!(
            kafka_uuid(id("e266adee-f9a1-4ef5-9144-ae8da044539b")),
            "4mat7vmhTvWRRK6NoERTmw"
        );
        assert_eq!(
            kafka_uuid(id("00000000-0000-0000-0000-000000000001")),
            "AAAAAAAAAAAAAAAAAAAAAQ"
        );
        assert_eq!(kafka_uuid(Uuid::max()), "_____________________w");
    }
}
