//! `keel topic describe`: a topic's partitions with their replicas and
//! offsets, and the configs it does not take from defaults.

use std::collections::BTreeMap;

use anyhow::{anyhow, Result};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::metadata_response::MetadataResponsePartition;
use kafka_protocol::messages::{DescribeConfigsRequest, MetadataResponse};
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use crate::client::{self, BootstrapArgs, Client, EARLIEST_TIMESTAMP, LATEST_TIMESTAMP};

/// DescribeConfigs' resource type for a topic (Kafka `ConfigResource.Type.TOPIC`).
const TOPIC_RESOURCE_TYPE: i8 = 2;

/// DescribeConfigs' `config_source` for a value nobody set.
const DEFAULT_CONFIG_SOURCE: i8 = 5;

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
    let offsets = offset_ranges(&mut client, &metadata, name, &partitions).await?;
    let configs = non_default_configs(&mut client, name).await?;

    let replication_factor = partitions.first().map_or(0, |p| p.replica_nodes.len());
    println!(
        "Topic: {name}\tTopicId: {}\tPartitionCount: {}\tReplicationFactor: {replication_factor}",
        kafka_uuid(topic.topic_id),
        partitions.len()
    );
    println!("Configs: {}", configs.join(", "));
    for p in partitions {
        let (earliest, latest) = &offsets[&p.partition_index];
        println!(
            "\tPartition: {}\tLeader: {}\tReplicas: {}\tIsr: {}\tEarliest: {earliest}\tLatest: {latest}",
            p.partition_index,
            *p.leader_id,
            node_list(&p.replica_nodes),
            node_list(&p.isr_nodes),
        );
    }
    Ok(())
}

/// Earliest and latest offset of each partition, asked of its leader with
/// one request per leader and end. A partition without a leader shows `-`,
/// one whose leader refuses shows the error in place of the offset.
async fn offset_ranges(
    bootstrap: &mut Client,
    metadata: &MetadataResponse,
    topic: &str,
    partitions: &[&MetadataResponsePartition],
) -> Result<BTreeMap<i32, (String, String)>> {
    let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    let mut ranges = BTreeMap::new();
    for p in partitions {
        if *p.leader_id < 0 {
            ranges.insert(p.partition_index, ("-".to_string(), "-".to_string()));
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
        for index in indexes {
            ranges.insert(
                index,
                (show(earliest.remove(&index)), show(latest.remove(&index))),
            );
        }
    }
    Ok(ranges)
}

/// `key=value (SOURCE)` for each config not at its default, sorted by key.
async fn non_default_configs(client: &mut Client, topic: &str) -> Result<Vec<String>> {
    let resource = DescribeConfigsResource::default()
        .with_resource_type(TOPIC_RESOURCE_TYPE)
        .with_resource_name(StrBytes::from_string(topic.to_string()))
        .with_configuration_keys(None);
    let response = client
        .send(DescribeConfigsRequest::default().with_resources(vec![resource]))
        .await?;
    let result = response
        .results
        .into_iter()
        .find(|r| r.resource_name.as_str() == topic)
        .ok_or_else(|| anyhow!("DescribeConfigs response lacks topic {topic}"))?;
    let what = format!("DescribeConfigs for topic {topic}");
    client::check_with_message(result.error_code, result.error_message.as_deref(), what)?;
    let mut configs: Vec<String> = result
        .configs
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
        .collect();
    configs.sort_unstable();
    Ok(configs)
}

/// Kafka's names for DescribeConfigs' `config_source` (`DescribeConfigsResponse.ConfigSource`).
fn config_source_name(source: i8) -> &'static str {
    match source {
        1 => "DYNAMIC_TOPIC_CONFIG",
        2 => "DYNAMIC_BROKER_CONFIG",
        3 => "DYNAMIC_DEFAULT_BROKER_CONFIG",
        4 => "STATIC_BROKER_CONFIG",
        5 => "DEFAULT_CONFIG",
        6 => "DYNAMIC_BROKER_LOGGER_CONFIG",
        _ => "UNKNOWN",
    }
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
