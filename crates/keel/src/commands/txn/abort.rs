//! `keel txn abort`: ends a hanging transaction on one partition by
//! writing the ABORT marker its coordinator never wrote (WriteTxnMarkers to
//! the partition's leader), as Kafka's tool does. Read_committed consumers
//! then read past it.

use anyhow::{anyhow, Context, Result};
use kafka_protocol::messages::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic,
};
use kafka_protocol::messages::{ProducerId, WriteTxnMarkersRequest};

use super::describe_producers;
use crate::client::{self, BootstrapArgs, Client, PartitionLeader};

#[derive(clap::Args, Debug)]
#[command(group(
    clap::ArgGroup::new("transaction")
        .required(true)
        .args(["start_offset", "producer_id"]),
))]
pub struct AbortArgs {
    /// The topic of the partition holding the transaction.
    #[arg(long)]
    topic: String,
    /// The partition holding the transaction.
    #[arg(long, value_name = "P", value_parser = clap::value_parser!(i32).range(0..))]
    partition: i32,
    /// The first offset of the transaction to abort (START-OFFSET of
    /// `keel txn find-hanging`): its producer is looked up on the leader.
    #[arg(long, value_name = "OFFSET", value_parser = clap::value_parser!(i64).range(0..))]
    start_offset: Option<i64>,
    /// The id of the producer whose transaction to abort, instead of
    /// --start-offset.
    #[arg(long, value_name = "ID", requires = "producer_epoch",
          value_parser = clap::value_parser!(i64).range(0..))]
    producer_id: Option<i64>,
    /// The producer's epoch (with --producer-id).
    #[arg(long, value_name = "EPOCH", requires = "producer_id", conflicts_with = "start_offset",
          value_parser = clap::value_parser!(i16).range(0..))]
    producer_epoch: Option<i16>,
    /// The coordinator epoch to write in the marker (with --producer-id);
    /// -1 when unknown.
    #[arg(long, value_name = "EPOCH", default_value_t = -1, allow_negative_numbers = true,
          requires = "producer_id", conflicts_with = "start_offset",
          value_parser = clap::value_parser!(i32).range(-1..))]
    coordinator_epoch: i32,
    #[command(flatten)]
    bootstrap: BootstrapArgs,
}

/// The producer whose transaction is aborted.
#[derive(Debug, PartialEq)]
struct Target {
    producer_id: i64,
    producer_epoch: i16,
    coordinator_epoch: i32,
}

pub async fn run(args: AbortArgs) -> Result<()> {
    let (topic, partition) = (args.topic.as_str(), args.partition);
    let mut leader = PartitionLeader::connect(&args.bootstrap.address, topic, partition).await?;
    let target = match (args.start_offset, args.producer_id, args.producer_epoch) {
        (Some(offset), _, _) => find_producer(&mut leader.client, topic, partition, offset).await?,
        (None, Some(producer_id), Some(producer_epoch)) => Target {
            producer_id,
            producer_epoch,
            coordinator_epoch: args.coordinator_epoch,
        },
        _ => unreachable!("clap requires --start-offset or --producer-id and --producer-epoch"),
    };
    let what = format!(
        "the transaction of producer {} (epoch {}, coordinator epoch {}) on {topic}-{partition}",
        target.producer_id, target.producer_epoch, target.coordinator_epoch
    );
    let code = write_abort_marker(&mut leader.client, topic, partition, &target)
        .await
        .with_context(|| format!("aborting {what}"))?;
    client::check(
        code,
        format!("aborting {what} at {}", leader.client.address()),
    )?;
    println!("Aborted {what}.");
    Ok(())
}

/// The producer whose open transaction starts at `offset`, as the leader
/// describes it.
async fn find_producer(
    client: &mut Client,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<Target> {
    let producers = describe_producers(client, topic, &[partition])
        .await?
        .remove(&partition)
        .unwrap_or_default();
    let producer = producers
        .into_iter()
        .find(|p| p.current_txn_start_offset == offset)
        .ok_or_else(|| {
            anyhow!("no open transaction starts at offset {offset} of {topic}-{partition}")
        })?;
    let producer_epoch = i16::try_from(producer.producer_epoch).map_err(|_| {
        anyhow!(
            "DescribeProducers reports epoch {} for producer {}",
            producer.producer_epoch,
            producer.producer_id.0
        )
    })?;
    Ok(Target {
        producer_id: producer.producer_id.0,
        producer_epoch,
        coordinator_epoch: producer.coordinator_epoch,
    })
}

/// WriteTxnMarkers with one ABORT marker for `target` on the partition, to
/// its leader; the partition's error code.
async fn write_abort_marker(
    client: &mut Client,
    topic: &str,
    partition: i32,
    target: &Target,
) -> Result<i16> {
    let marker = WritableTxnMarker::default()
        .with_producer_id(ProducerId(target.producer_id))
        .with_producer_epoch(target.producer_epoch)
        .with_coordinator_epoch(target.coordinator_epoch)
        // false: ABORT.
        .with_transaction_result(false)
        .with_topics(vec![WritableTxnMarkerTopic::default()
            .with_name(client::topic_name(topic))
            .with_partition_indexes(vec![partition])]);
    let request = WriteTxnMarkersRequest::default().with_markers(vec![marker]);
    let response = client.send(request).await?;
    response
        .markers
        .iter()
        .filter(|m| m.producer_id.0 == target.producer_id)
        .flat_map(|m| &m.topics)
        .filter(|t| t.name.as_str() == topic)
        .flat_map(|t| &t.partitions)
        .find(|p| p.partition_index == partition)
        .map(|p| p.error_code)
        .ok_or_else(|| anyhow!("WriteTxnMarkers response lacks {topic}-{partition}"))
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::super::TxnCommand;
    use super::*;

    fn abort(args: &[&str]) -> Result<AbortArgs, clap::Error> {
        let args: Vec<&str> = ["abort", "--topic", "t", "--partition", "0"]
            .iter()
            .chain(args)
            .copied()
            .collect();
        match parse(&args)? {
            TxnCommand::Abort(args) => Ok(args),
            other => panic!("not an abort: {other:?}"),
        }
    }

    #[test]
    fn abort_takes_a_start_offset_or_a_producer() {
        assert!(abort(&[]).is_err());
        let a = abort(&["--start-offset", "5"]).unwrap();
        assert_eq!((a.start_offset, a.producer_id), (Some(5), None));
        let a = abort(&["--producer-id", "1000", "--producer-epoch", "2"]).unwrap();
        assert_eq!(
            (a.producer_id, a.producer_epoch, a.coordinator_epoch),
            (Some(1000), Some(2), -1)
        );
        let a = abort(&[
            "--producer-id",
            "1000",
            "--producer-epoch",
            "2",
            "--coordinator-epoch",
            "4",
        ])
        .unwrap();
        assert_eq!(a.coordinator_epoch, 4);
        // Not both ways, and a producer needs its epoch.
        assert!(abort(&["--start-offset", "5", "--producer-id", "1000"]).is_err());
        assert!(abort(&["--producer-id", "1000"]).is_err());
        assert!(abort(&["--producer-epoch", "2"]).is_err());
        assert!(abort(&["--start-offset", "5", "--producer-epoch", "2"]).is_err());
        assert!(abort(&["--start-offset", "5", "--coordinator-epoch", "3"]).is_err());
        assert!(abort(&["--start-offset", "-1"]).is_err());
        let missing_partition = parse(&["abort", "--topic", "t", "--start-offset", "5"]);
        assert!(missing_partition.is_err());
    }
}
