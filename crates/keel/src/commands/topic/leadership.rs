//! `keel topic elect-leaders`, `reassign` and `reassignments`: what Kafka's
//! `kafka-leader-election.sh` and `kafka-reassign-partitions.sh` do, one
//! partition or topic at a time.

use anyhow::{bail, Result};
use kafka_protocol::messages::alter_partition_reassignments_request::{
    ReassignablePartition, ReassignableTopic,
};
use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, BrokerId, ElectLeadersRequest,
    ListPartitionReassignmentsRequest,
};
use kafka_protocol::ResponseError;

use crate::client::{self, BootstrapArgs, Client};

/// How long the controller may take before the broker answers.
const TIMEOUT_MS: i32 = 30_000;

/// Preferred (or unclean) elections for `topic`'s partitions, one
/// partition of it, or every partition of every topic. Exits non-zero if
/// an election that was needed failed.
pub async fn elect_leaders(
    bootstrap: &BootstrapArgs,
    topic: Option<&str>,
    partition: Option<i32>,
    unclean: bool,
) -> Result<()> {
    let mut client = Client::connect(&bootstrap.address).await?;
    let partitions = match (topic, partition) {
        (None, Some(_)) => bail!("--partition needs a topic"),
        (None, None) => None,
        (Some(topic), Some(p)) => Some(vec![(topic.to_string(), vec![p])]),
        (Some(topic), None) => {
            let metadata = client.metadata(Some(&[topic])).await?;
            let t = metadata
                .topics
                .first()
                .filter(|t| t.error_code == 0)
                .ok_or_else(|| anyhow::anyhow!("unknown topic {topic}"))?;
            let mut indexes: Vec<i32> = t.partitions.iter().map(|p| p.partition_index).collect();
            indexes.sort_unstable();
            Some(vec![(topic.to_string(), indexes)])
        }
    };
    let request = ElectLeadersRequest::default()
        .with_election_type(i8::from(unclean))
        .with_topic_partitions(partitions.map(|topics| {
            topics
                .into_iter()
                .map(|(topic, partitions)| {
                    TopicPartitions::default()
                        .with_topic(client::topic_name(&topic))
                        .with_partitions(partitions)
                })
                .collect()
        }))
        .with_timeout_ms(TIMEOUT_MS);
    let response = client.send(request).await?;
    client::check(response.error_code, "ElectLeaders")?;
    let election = if unclean { "UNCLEAN" } else { "PREFERRED" };
    let mut failed = 0;
    for t in &response.replica_election_results {
        for p in &t.partition_result {
            let name = format!("{}-{}", t.topic.as_str(), p.partition_id);
            match p.error_code {
                0 => println!("Elected a {election} leader for {name}"),
                code if code == ResponseError::ElectionNotNeeded.code() => {
                    println!("A valid leader already leads {name}")
                }
                code => {
                    failed += 1;
                    println!(
                        "Election for {name} failed: {}{}",
                        client::error_name(code),
                        p.error_message
                            .as_deref()
                            .map_or(String::new(), |m| format!(": {m}"))
                    );
                }
            }
        }
    }
    if failed > 0 {
        bail!("{failed} elections failed");
    }
    Ok(())
}

/// Moves `topic`-`partition` onto `replicas`, or cancels its move.
pub async fn reassign(
    bootstrap: &BootstrapArgs,
    topic: &str,
    partition: i32,
    replicas: Option<Vec<i32>>,
) -> Result<()> {
    let mut client = Client::connect(&bootstrap.address).await?;
    let request = AlterPartitionReassignmentsRequest::default()
        .with_timeout_ms(TIMEOUT_MS)
        .with_topics(vec![ReassignableTopic::default()
            .with_name(client::topic_name(topic))
            .with_partitions(vec![ReassignablePartition::default()
                .with_partition_index(partition)
                .with_replicas(
                    replicas
                        .as_ref()
                        .map(|r| r.iter().copied().map(BrokerId).collect()),
                )])]);
    let response = client.send(request).await?;
    let what = format!("reassigning {topic}-{partition}");
    client::check_with_message(
        response.error_code,
        response.error_message.as_deref(),
        &what,
    )?;
    for p in response.responses.iter().flat_map(|t| &t.partitions) {
        client::check_with_message(p.error_code, p.error_message.as_deref(), &what)?;
    }
    match replicas {
        Some(r) => println!("Reassignment of {topic}-{partition} to {r:?} started."),
        None => println!("Reassignment of {topic}-{partition} cancelled."),
    }
    Ok(())
}

/// The reassignments under way.
pub async fn list_reassignments(bootstrap: &BootstrapArgs) -> Result<()> {
    let mut client = Client::connect(&bootstrap.address).await?;
    let response = client
        .send(ListPartitionReassignmentsRequest::default().with_timeout_ms(TIMEOUT_MS))
        .await?;
    client::check_with_message(
        response.error_code,
        response.error_message.as_deref(),
        "ListPartitionReassignments",
    )?;
    let ids = |b: &[BrokerId]| b.iter().map(|b| b.0).collect::<Vec<_>>();
    let mut any = false;
    for t in &response.topics {
        for p in &t.partitions {
            any = true;
            println!(
                "{}-{}\tReplicas: {:?}\tAdding: {:?}\tRemoving: {:?}",
                t.name.as_str(),
                p.partition_index,
                ids(&p.replicas),
                ids(&p.adding_replicas),
                ids(&p.removing_replicas)
            );
        }
    }
    if !any {
        println!("No partition reassignments in progress.");
    }
    Ok(())
}
