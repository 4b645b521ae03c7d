//! Finding and connecting to the leader of one partition, as producing and
//! consuming require.

use anyhow::{anyhow, ensure, Context, Result};
use kafka_protocol::messages::MetadataResponse;
use uuid::Uuid;

use super::{check, Client};

/// A connection to the leader of one partition, found through Metadata.
pub struct PartitionLeader {
    pub client: Client,
    pub topic: String,
    /// Nil when the broker's Metadata version predates topic ids (v10).
    pub topic_id: Uuid,
    pub partition: i32,
}

impl PartitionLeader {
    /// Asks `bootstrap` who leads `topic`-`partition` and connects to that broker.
    pub async fn connect(bootstrap: &str, topic: &str, partition: i32) -> Result<PartitionLeader> {
        let mut client = Client::connect(bootstrap).await?;
        let metadata = client.metadata(Some(&[topic])).await?;
        let found = metadata
            .topics
            .iter()
            .find(|t| t.name.as_deref().map(|n| n.as_str()) == Some(topic))
            .ok_or_else(|| anyhow!("Metadata response lacks topic {topic}"))?;
        check(found.error_code, format!("topic {topic}"))?;
        let count = found.partitions.len();
        let p = found
            .partitions
            .iter()
            .find(|p| p.partition_index == partition)
            .ok_or_else(|| {
                anyhow!("topic {topic} has {count} partitions; there is no partition {partition}")
            })?;
        check(p.error_code, format!("partition {topic}-{partition}"))?;
        let leader = broker_address(&metadata, *p.leader_id)
            .with_context(|| format!("finding the leader of {topic}-{partition}"))?;
        let client = if leader == client.address() {
            client
        } else {
            Client::connect(&leader).await?
        };
        Ok(PartitionLeader {
            client,
            topic: topic.to_string(),
            topic_id: found.topic_id,
            partition,
        })
    }

    /// Whether a response's topic is this one: responses name topics up to
    /// Produce and Fetch v12 and identify them by id from v13.
    pub fn is_topic(&self, name: &str, id: Uuid) -> bool {
        name == self.topic || (!id.is_nil() && id == self.topic_id)
    }

    /// The partition's offset at `timestamp`, or at a sentinel such as `LATEST_TIMESTAMP`.
    pub async fn list_offset(&mut self, timestamp: i64) -> Result<i64> {
        let mut offsets = self
            .client
            .list_offsets(&self.topic, &[self.partition], timestamp)
            .await?;
        offsets
            .remove(&self.partition)
            .expect("list_offsets answers every partition")
    }
}

/// The HOST:PORT a Metadata response gives for `node_id`.
pub fn broker_address(metadata: &MetadataResponse, node_id: i32) -> Result<String> {
    ensure!(node_id >= 0, "no leader (node {node_id})");
    let broker = metadata
        .brokers
        .iter()
        .find(|b| *b.node_id == node_id)
        .ok_or_else(|| anyhow!("Metadata names leader {node_id} but lists no such broker"))?;
    // An IPv6 literal needs brackets to be followed by a port.
    Ok(if broker.host.contains(':') {
        format!("[{}]:{}", broker.host, broker.port)
    } else {
        format!("{}:{}", broker.host, broker.port)
    })
}
