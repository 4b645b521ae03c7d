use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse};
use kafka_protocol::ResponseError;
use keel_metadata::cluster::NO_LEADER;
use keel_metadata::controller::{validate_topic_name, NewTopic};
use keel_metadata::{MetadataImage, TopicImage};
use uuid::Uuid;

use super::{str_bytes, topic_name, AUTHORIZED_OPERATIONS_OMITTED};
use crate::broker::Broker;
use crate::coordinator_log::OFFSETS_TOPIC;
use crate::dispatch::RequestContext;
use crate::errors::admin_error;

/// Every topic operation is allowed: Keel has no authorizer yet, and Kafka
/// without one reports all of them (READ, WRITE, CREATE, DELETE, ALTER,
/// DESCRIBE, DESCRIBE_CONFIGS, ALTER_CONFIGS).
const TOPIC_OPERATIONS_ALL: i32 =
    (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 10) | (1 << 11);
/// Likewise for the cluster: CREATE, ALTER, DESCRIBE, CLUSTER_ACTION,
/// DESCRIBE_CONFIGS, ALTER_CONFIGS, IDEMPOTENT_WRITE.
pub const CLUSTER_OPERATIONS_ALL: i32 =
    (1 << 5) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12);

pub async fn handle(
    broker: &Broker,
    ctx: &RequestContext<'_>,
    request: MetadataRequest,
) -> MetadataResponse {
    let mut image = broker.image();
    let topic_operations = if request.include_topic_authorized_operations {
        TOPIC_OPERATIONS_ALL
    } else {
        AUTHORIZED_OPERATIONS_OMITTED
    };
    // v0 has no null: an empty list there means "all topics".
    let requested = match request.topics {
        Some(topics) if !(ctx.api_version == 0 && topics.is_empty()) => Some(topics),
        _ => None,
    };
    let topics = match requested {
        None => image
            .topics()
            .map(|t| describe_topic(&image, t, topic_operations))
            .collect(),
        Some(requested) => {
            let auto_create = broker.config.auto_create_topics_enable
                && (ctx.api_version < 4 || request.allow_auto_topic_creation);
            let mut topics = Vec::with_capacity(requested.len());
            for wanted in requested {
                topics.push(match wanted.name {
                    Some(name) => {
                        let name = name.0.as_str();
                        match image.topic_by_name(name) {
                            Some(t) => describe_topic(&image, t, topic_operations),
                            None if auto_create => {
                                auto_create_topic(broker, &mut image, name, topic_operations).await
                            }
                            None => unknown_topic(
                                Some(name),
                                Uuid::nil(),
                                ResponseError::UnknownTopicOrPartition,
                            ),
                        }
                    }
                    None => match image.topic_by_id(&wanted.topic_id) {
                        Some(t) => describe_topic(&image, t, topic_operations),
                        None => unknown_topic(None, wanted.topic_id, ResponseError::UnknownTopicId),
                    },
                });
            }
            topics
        }
    };
    MetadataResponse::default()
        .with_brokers(brokers(&image))
        .with_cluster_id(Some(str_bytes(&image.cluster_id)))
        .with_controller_id(BrokerId(controller_for_clients(broker, &image)))
        .with_topics(topics)
        .with_cluster_authorized_operations(if request.include_cluster_authorized_operations {
            CLUSTER_OPERATIONS_ALL
        } else {
            AUTHORIZED_OPERATIONS_OMITTED
        })
}

/// The controller id clients are told. They send admin requests to the
/// broker named here, so a controller-only node, which no client can reach,
/// is never named: this broker stands in and forwards, as Kafka's brokers
/// do. -1 while no controller is known.
fn controller_for_clients(broker: &Broker, image: &MetadataImage) -> i32 {
    match broker.metadata.controller_id() {
        Some(id) if image.brokers.get(&id).is_some_and(|b| !b.fenced) => id,
        Some(_) => broker.config.node_id,
        None => -1,
    }
}

async fn auto_create_topic(
    broker: &Broker,
    image: &mut std::sync::Arc<MetadataImage>,
    name: &str,
    ops: i32,
) -> MetadataResponseTopic {
    if let Err(e) = validate_topic_name(name) {
        return unknown_topic(Some(name), Uuid::nil(), keel_error(&e));
    }
    if name == OFFSETS_TOPIC {
        // Internal topics are created with their own settings, never as an
        // ordinary auto-created topic.
        if let Err(e) = broker.ensure_offsets_topic().await {
            return unknown_topic(Some(name), Uuid::nil(), admin_error(&e));
        }
        *image = broker.image();
        return match image.topic_by_name(name) {
            Some(t) => describe_topic(image, t, ops),
            None => unknown_topic(Some(name), Uuid::nil(), ResponseError::LeaderNotAvailable),
        };
    }
    let new_topic = NewTopic {
        name: name.to_string(),
        num_partitions: -1,
        replication_factor: -1,
        assignments: Default::default(),
        configs: vec![],
    };
    match broker.create_topic(&new_topic, false).await {
        Ok(_) => {
            tracing::info!(topic = name, "auto-created topic");
            *image = broker.image();
        }
        // Another connection created it first: describe what exists.
        Err(e) if admin_error(&e) == ResponseError::TopicAlreadyExists => *image = broker.image(),
        Err(e) => return unknown_topic(Some(name), Uuid::nil(), admin_error(&e)),
    }
    match image.topic_by_name(name) {
        Some(t) => describe_topic(image, t, ops),
        None => unknown_topic(Some(name), Uuid::nil(), ResponseError::LeaderNotAvailable),
    }
}

fn keel_error(e: &keel_metadata::controller::ControllerError) -> ResponseError {
    crate::errors::controller_error(e)
}

fn unknown_topic(
    name: Option<&str>,
    topic_id: Uuid,
    error: ResponseError,
) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_error_code(error.code())
        .with_name(name.map(topic_name))
        .with_topic_id(topic_id)
        .with_topic_authorized_operations(AUTHORIZED_OPERATIONS_OMITTED)
}

fn describe_topic(
    image: &MetadataImage,
    topic: &TopicImage,
    topic_authorized_operations: i32,
) -> MetadataResponseTopic {
    let partitions = topic
        .partitions
        .values()
        .map(|p| {
            // A replica on a fenced or unknown broker is offline; a
            // partition with no leader answers LEADER_NOT_AVAILABLE, which
            // clients retry.
            let offline = p
                .replicas
                .iter()
                .copied()
                .filter(|b| image.brokers.get(b).is_none_or(|b| b.fenced))
                .map(BrokerId)
                .collect();
            let error = if p.leader == NO_LEADER {
                ResponseError::LeaderNotAvailable.code()
            } else {
                0
            };
            MetadataResponsePartition::default()
                .with_error_code(error)
                .with_offline_replicas(offline)
                .with_partition_index(p.partition)
                .with_leader_id(BrokerId(p.leader))
                .with_leader_epoch(p.leader_epoch)
                .with_replica_nodes(p.replicas.iter().copied().map(BrokerId).collect())
                .with_isr_nodes(p.isr.iter().copied().map(BrokerId).collect())
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(topic_name(&topic.name)))
        .with_topic_id(topic.topic_id)
        .with_is_internal(topic.name.starts_with("__"))
        .with_partitions(partitions)
        .with_topic_authorized_operations(topic_authorized_operations)
}

fn brokers(image: &MetadataImage) -> Vec<MetadataResponseBroker> {
    image
        .brokers
        .values()
        .filter(|b| !b.fenced)
        .map(|b| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(b.broker_id))
                .with_host(str_bytes(&b.host))
                .with_port(b.port)
                .with_rack(b.rack.as_deref().map(str_bytes))
        })
        .collect()
}
