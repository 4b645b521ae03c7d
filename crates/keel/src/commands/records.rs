//! `keel records delete`: DeleteRecords, as Kafka's `kafka-delete-records.sh`.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};
use kafka_protocol::messages::delete_records_request::{
    DeleteRecordsPartition, DeleteRecordsTopic,
};
use kafka_protocol::messages::DeleteRecordsRequest;

use crate::client::{self, BootstrapArgs, Client};

/// How long the broker may take before answering REQUEST_TIMED_OUT.
const DELETE_RECORDS_TIMEOUT_MS: i32 = 30_000;

#[derive(clap::Subcommand, Debug)]
pub enum RecordsCommand {
    /// Delete every record below an offset: the log start offset moves up to it.
    Delete {
        #[arg(long)]
        topic: String,
        /// One partition; all of the topic's partitions if absent.
        #[arg(long)]
        partition: Option<i32>,
        /// The new log start offset; -1 means the high watermark (delete everything).
        #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(-1..))]
        before: i64,
        #[command(flatten)]
        bootstrap: BootstrapArgs,
    },
}

pub async fn run(cmd: RecordsCommand) -> Result<()> {
    let RecordsCommand::Delete {
        topic,
        partition,
        before,
        bootstrap,
    } = cmd;
    let mut bootstrap_client = Client::connect(&bootstrap.address).await?;
    let metadata = bootstrap_client.metadata(Some(&[&topic])).await?;
    let described = metadata
        .topics
        .iter()
        .find(|t| t.name.as_deref().map(|n| n.as_str()) == Some(topic.as_str()))
        .ok_or_else(|| anyhow!("Metadata response lacks topic {topic}"))?;
    client::check(described.error_code, format!("topic {topic}"))?;
    let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    for p in &described.partitions {
        if partition.is_none_or(|wanted| wanted == p.partition_index) {
            by_leader
                .entry(*p.leader_id)
                .or_default()
                .push(p.partition_index);
        }
    }
    if by_leader.is_empty() {
        bail!("topic {topic} has no partition {}", partition.unwrap_or(-1));
    }
    println!("Records delete operation completed:");
    let mut failed = false;
    for (leader, partitions) in by_leader {
        if leader < 0 {
            for p in partitions {
                println!("partition: {topic}-{p}\terror: LEADER_NOT_AVAILABLE");
                failed = true;
            }
            continue;
        }
        let address = client::broker_address(&metadata, leader)?;
        let mut client = Client::connect(&address).await?;
        let request = DeleteRecordsRequest::default()
            .with_timeout_ms(DELETE_RECORDS_TIMEOUT_MS)
            .with_topics(vec![DeleteRecordsTopic::default()
                .with_name(client::topic_name(&topic))
                .with_partitions(
                    partitions
                        .iter()
                        .map(|&p| {
                            DeleteRecordsPartition::default()
                                .with_partition_index(p)
                                .with_offset(before)
                        })
                        .collect(),
                )]);
        let response = client.send(request).await?;
        for t in &response.topics {
            for p in &t.partitions {
                if p.error_code == 0 {
                    println!(
                        "partition: {topic}-{}\tlow_watermark: {}",
                        p.partition_index, p.low_watermark
                    );
                } else {
                    failed = true;
                    println!(
                        "partition: {topic}-{}\terror: {}",
                        p.partition_index,
                        client::error_name(p.error_code)
                    );
                }
            }
        }
    }
    if failed {
        bail!("some partitions were not changed");
    }
    Ok(())
}
