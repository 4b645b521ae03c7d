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
    RegisterBroker {
        broker_id: i32,
        host: String,
        port: i32,
        rack: Option<String>,
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
        leader: i32,
        leader_epoch: i32,
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
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConfigResource {
    Topic(String),
    Broker(i32),
}
