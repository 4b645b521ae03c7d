use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One entry of the metadata log. Kafka's KRaft log holds records of the same
/// shape (`RegisterBrokerRecord`, `TopicRecord`, `PartitionRecord`,
/// `ConfigRecord`, `RemoveTopicRecord`); we serialise ours as JSON inside
/// ordinary record batches because `kafka-protocol` has no KRaft record types
/// and the metadata log is small.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum MetadataRecord {
    /// The cluster's id, written once when the log is created.
    ClusterId {
        cluster_id: String,
    },
    /// A broker's (re)registration. A new `incarnation_id` means the
    /// process restarted: it may have lost unflushed data, so it leads
    /// nothing and rejoins ISRs only by catching up again.
    RegisterBroker {
        broker_id: i32,
        host: String,
        port: i32,
        rack: Option<String>,
        #[serde(default)]
        incarnation_id: Option<Uuid>,
    },
    /// The broker missed heartbeats for `broker.session.timeout.ms`: it
    /// leads nothing and is out of every ISR.
    FenceBroker {
        broker_id: i32,
    },
    UnfenceBroker {
        broker_id: i32,
    },
    /// The broker is forgotten (Kafka's UnregisterBroker): taken out of
    /// service for good. Its id stays in the replica lists that name it
    /// until they are reassigned.
    UnregisterBroker {
        broker_id: i32,
    },
    Topic {
        name: String,
        topic_id: Uuid,
    },
    Partition {
        topic_id: Uuid,
        partition: i32,
        replicas: Vec<i32>,
        isr: Vec<i32>,
        /// -1 when no eligible replica is alive (the partition is offline).
        leader: i32,
        leader_epoch: i32,
        /// Bumped by every change of the partition, so a leader's ISR change
        /// based on an older state is refused (Kafka's partition epoch).
        #[serde(default)]
        partition_epoch: i32,
        /// A reassignment under way (Kafka's adding and removing
        /// replicas): `replicas` holds the target replicas, then those
        /// being removed; the ones being added catch up meanwhile.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        adding_replicas: Vec<i32>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        removing_replicas: Vec<i32>,
    },
    /// Sets (`Some`) or removes (`None`) one dynamic config.
    Config {
        resource: ConfigResource,
        name: String,
        value: Option<String>,
    },
    RemoveTopic {
        topic_id: Uuid,
    },
    /// Producer ids below `next_block_start` have been handed out; a broker
    /// reserves a block by writing the next start, so ids stay unique across
    /// restarts (Kafka's `ProducerIdsRecord`).
    ProducerIds {
        next_block_start: i64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConfigResource {
    Topic(String),
    Broker(i32),
    /// The cluster-wide default of every broker's dynamic configs (Kafka's
    /// broker resource with an empty name).
    BrokerDefault,
}

impl MetadataRecord {
    /// The record's bytes as stored in a metadata log batch.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("metadata records contain no maps with non-string keys")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}
