//! What a broker asks of the active controller, and the one place each ask
//! becomes records.
//!
//! Every metadata change is decided by the active controller against its
//! own image, never by the broker that received the client's request: a
//! broker's image may lag, and two brokers deciding at once could both
//! create the same topic. So a broker sends a `ControllerRequest` (to its own
//! controller when it is the active one, otherwise over the controller
//! listener) and `decide` runs there, under the controller's lock.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::cluster::{self, IsrChange};
use crate::controller::{self, ConfigChange, ControllerError, NewTopic, TopicDefaults};
use crate::elections::{self, ElectionResult, ElectionType};
use crate::reassignment;
use crate::{ConfigResource, MetadataImage, MetadataRecord};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ControllerRequest {
    /// A broker (re)registers its address and rack at start. The first
    /// registration of a new cluster also names it.
    RegisterBroker {
        broker_id: i32,
        host: String,
        port: i32,
        rack: Option<String>,
        /// New at every process start.
        incarnation_id: Uuid,
        /// The cluster id to create the cluster with if it has none.
        new_cluster_id: String,
    },
    /// A registered broker is alive (Kafka's BrokerHeartbeat); a fenced one
    /// is unfenced by it.
    BrokerHeartbeat {
        broker_id: i32,
    },
    /// A broker leaves service, losing leadership and ISR membership: the
    /// active controller's session timer fences a silent one, and a broker
    /// shutting down cleanly asks for it (Kafka's controlled shutdown).
    FenceBroker {
        broker_id: i32,
    },
    /// Kafka's UnregisterBroker: a broker taken out of service for good
    /// leaves ISRs and leadership, then the registry.
    UnregisterBroker {
        broker_id: i32,
    },
    AlterPartition(IsrChange),
    CreateTopic {
        topic: NewTopic,
        topic_id: Uuid,
        validate_only: bool,
    },
    CreatePartitions {
        topic: String,
        count: i32,
        assignments: Option<Vec<Vec<i32>>>,
        validate_only: bool,
    },
    AlterConfigs {
        resource: ConfigResource,
        change: ConfigChange,
        validate_only: bool,
    },
    DeleteTopic {
        topic_id: Uuid,
    },
    /// Reserves `block_size` producer ids for the asking broker (Kafka's
    /// AllocateProducerIds).
    AllocateProducerIds {
        block_size: i64,
    },
    /// Kafka's ElectLeaders; `partitions: None` means every partition.
    ElectLeaders {
        election: ElectionType,
        partitions: Option<Vec<(String, i32)>>,
    },
    /// Kafka's AlterPartitionReassignments: target replicas per partition,
    /// `None` to cancel.
    AlterPartitionReassignments {
        reassignments: Vec<(String, i32, Option<Vec<i32>>)>,
        allow_replication_factor_change: bool,
    },
    /// The active controller's own periodic pass (see
    /// [`elections::balance_leaders`]).
    BalanceLeaders {
        preferred: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControllerReply {
    Done,
    /// The first id of the reserved block.
    ProducerIdBlock {
        start: i64,
    },
    Elections(Vec<ElectionResult>),
    /// Each reassignment's refusal, in request order.
    Reassignments(Vec<Option<ControllerError>>),
}

impl ControllerRequest {
    /// Whether the request only checks and must change nothing.
    fn validate_only(&self) -> bool {
        match self {
            ControllerRequest::CreateTopic { validate_only, .. }
            | ControllerRequest::CreatePartitions { validate_only, .. }
            | ControllerRequest::AlterConfigs { validate_only, .. } => *validate_only,
            _ => false,
        }
    }
}

/// The records that carry out `request` against `image`, and the answer.
/// `defaults` are the active controller's topic defaults, as in Kafka.
pub fn decide(
    image: &MetadataImage,
    request: &ControllerRequest,
    defaults: TopicDefaults,
) -> Result<(Vec<MetadataRecord>, ControllerReply), ControllerError> {
    let records = match request {
        ControllerRequest::RegisterBroker {
            broker_id,
            host,
            port,
            rack,
            incarnation_id,
            new_cluster_id,
        } => {
            let mut records = Vec::new();
            if image.cluster_id.is_empty() {
                records.push(MetadataRecord::ClusterId {
                    cluster_id: new_cluster_id.clone(),
                });
            }
            let known = image.brokers.get(broker_id);
            // The same process asking again (a retried request) changes
            // nothing; a new process hands over what it led.
            if known.is_none_or(|b| b.incarnation_id != Some(*incarnation_id)) {
                records.push(MetadataRecord::RegisterBroker {
                    broker_id: *broker_id,
                    host: host.clone(),
                    port: *port,
                    rack: rack.clone(),
                    incarnation_id: Some(*incarnation_id),
                });
                if known.is_some() {
                    records.extend(cluster::restarted_broker(image, *broker_id, defaults));
                }
            }
            records
        }
        ControllerRequest::BrokerHeartbeat { broker_id } => {
            if !image.brokers.contains_key(broker_id) {
                return Err(ControllerError::InvalidRequest(format!(
                    "broker {broker_id} is not registered"
                )));
            }
            cluster::unfence_broker(image, *broker_id, defaults)
        }
        ControllerRequest::FenceBroker { broker_id } => {
            cluster::fence_broker(image, *broker_id, defaults)
        }
        ControllerRequest::UnregisterBroker { broker_id } => {
            cluster::unregister_broker(image, *broker_id, defaults)?
        }
        ControllerRequest::AlterPartition(change) => {
            vec![cluster::alter_partition(image, change)?.0]
        }
        ControllerRequest::CreateTopic {
            topic, topic_id, ..
        } => controller::create_topic(image, topic, defaults, *topic_id)?,
        ControllerRequest::CreatePartitions {
            topic,
            count,
            assignments,
            ..
        } => controller::create_partitions(image, topic, *count, assignments.as_deref())?,
        ControllerRequest::AlterConfigs {
            resource, change, ..
        } => {
            let mut records = controller::alter_configs(image, resource, change)?;
            // Allowing unclean elections acts at once on partitions waiting
            // without a leader, as ZooKeeper-era Kafka's controller did
            // (KRaft waits for its periodic check).
            let mut next = image.clone();
            for record in &records {
                next.apply(image.offset + 1, record)
                    .map_err(ControllerError::InvalidRequest)?;
            }
            records.extend(elections::balance_leaders(&next, false, defaults));
            records
        }
        ControllerRequest::DeleteTopic { topic_id } => controller::delete_topic(image, *topic_id)?,
        ControllerRequest::AllocateProducerIds { block_size } => {
            if *block_size <= 0 {
                return Err(ControllerError::InvalidRequest(format!(
                    "producer id block size {block_size} is not positive"
                )));
            }
            let start = image.next_producer_id;
            let records = vec![MetadataRecord::ProducerIds {
                next_block_start: start + block_size,
            }];
            return Ok((records, ControllerReply::ProducerIdBlock { start }));
        }
        ControllerRequest::ElectLeaders {
            election,
            partitions,
        } => {
            let (records, results) =
                elections::elect_leaders(image, *election, partitions.as_deref());
            return Ok((records, ControllerReply::Elections(results)));
        }
        ControllerRequest::AlterPartitionReassignments {
            reassignments,
            allow_replication_factor_change,
        } => {
            // One after another on a working image, so two entries for one
            // partition see each other as Kafka's sequential handling does.
            let mut next = image.clone();
            let mut records = Vec::new();
            let mut refusals = Vec::new();
            for (topic, partition, target) in reassignments {
                let decided = reassignment::alter_reassignment(
                    &next,
                    topic,
                    *partition,
                    target.as_deref(),
                    *allow_replication_factor_change,
                );
                match decided {
                    Ok(record) => {
                        if let Some(record) = record {
                            let _ = next.apply(image.offset + 1, &record);
                            records.push(record);
                        }
                        refusals.push(None);
                    }
                    Err(e) => refusals.push(Some(e)),
                }
            }
            return Ok((records, ControllerReply::Reassignments(refusals)));
        }
        ControllerRequest::BalanceLeaders { preferred } => {
            elections::balance_leaders(image, *preferred, defaults)
        }
    };
    if request.validate_only() {
        return Ok((Vec::new(), ControllerReply::Done));
    }
    Ok((records, ControllerReply::Done))
}
