//! The controller's decisions: admin requests in, metadata records out.
//!
//! Every function here is pure over a `MetadataImage` so it can be tested
//! without a log or a socket; the caller appends the records it returns and
//! applies them to get the next image.

use std::collections::BTreeMap;

use keel_types::limits::{PARTITIONS_PER_TOPIC_MAX, TOPIC_NAME_CHARS_MAX};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::cluster::placement_order;
use crate::config::{
    config_kind, topic_config_def, validate_dynamic_broker_config, validate_topic_config,
    ConfigType, TOPIC_CONFIGS,
};
use crate::{ConfigResource, MetadataImage, MetadataRecord};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ControllerError {
    #[error("Topic '{0}' already exists.")]
    TopicAlreadyExists(String),
    #[error("{0}")]
    InvalidTopic(String),
    #[error("{0}")]
    InvalidPartitions(String),
    #[error("{0}")]
    InvalidReplicationFactor(String),
    #[error("{0}")]
    InvalidReplicaAssignment(String),
    #[error("{0}")]
    InvalidConfig(String),
    #[error("This server does not host this topic ID.")]
    UnknownTopicId,
    #[error("This server does not host this topic-partition.")]
    UnknownTopicOrPartition,
    #[error("{0}")]
    InvalidRequest(String),
    #[error("The request came from a broker that does not lead the partition.")]
    NotLeaderOrFollower,
    #[error("The leader epoch in the request is older than the controller's.")]
    FencedLeaderEpoch,
    #[error("The partition epoch in the request does not match the controller's.")]
    InvalidUpdateVersion,
    #[error("A replica added to the ISR is fenced or not registered.")]
    IneligibleReplica,
    #[error("No partition reassignment is in progress.")]
    NoReassignmentInProgress,
    #[error("Broker ID {0} is not currently registered")]
    BrokerIdNotRegistered(i32),
}

/// A CreateTopics entry, after the handler has decoded it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewTopic {
    pub name: String,
    /// -1 means the broker's `num.partitions`.
    pub num_partitions: i32,
    /// -1 means the broker's `default.replication.factor`.
    pub replication_factor: i16,
    /// Manual placement: partition -> broker ids. Empty means "place for me".
    pub assignments: BTreeMap<i32, Vec<i32>>,
    pub configs: Vec<(String, String)>,
}

/// The active controller's own settings that its decisions use.
#[derive(Debug, Clone, Copy)]
pub struct TopicDefaults {
    pub num_partitions: i32,
    pub replication_factor: i16,
    /// The static `unclean.leader.election.enable`, below topic overrides
    /// and the dynamic cluster default.
    pub unclean_leader_election_enable: bool,
}

/// Kafka's rules for a legal topic name (`Topic.validate`).
pub fn validate_topic_name(name: &str) -> Result<(), ControllerError> {
    let invalid = |why: &str| {
        ControllerError::InvalidTopic(format!("Topic name \"{name}\" is illegal, {why}"))
    };
    if name.is_empty() {
        return Err(ControllerError::InvalidTopic(
            "Topic name is illegal, it can't be empty".into(),
        ));
    }
    if name == "." || name == ".." {
        return Err(invalid("it cannot be \".\" or \"..\""));
    }
    if name.len() > TOPIC_NAME_CHARS_MAX {
        return Err(invalid("it can't be longer than 249 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Err(invalid(
            "it contains a character other than ASCII alphanumerics, '.', '_' and '-'",
        ));
    }
    Ok(())
}

/// Kafka refuses topics whose names differ only by '.' versus '_', because
/// metric names cannot tell them apart.
fn collides(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .all(|(x, y)| x == y || matches!((x, y), (b'.', b'_') | (b'_', b'.')))
}

/// Validates a new topic and returns the records that create it.
pub fn create_topic(
    image: &MetadataImage,
    topic: &NewTopic,
    defaults: TopicDefaults,
    topic_id: Uuid,
) -> Result<Vec<MetadataRecord>, ControllerError> {
    validate_topic_name(&topic.name)?;
    if image.topic_by_name(&topic.name).is_some() {
        return Err(ControllerError::TopicAlreadyExists(topic.name.clone()));
    }
    if let Some(existing) = image.topics().find(|t| collides(&t.name, &topic.name)) {
        return Err(ControllerError::InvalidTopic(format!(
            "Topic '{}' collides with existing topic: {}",
            topic.name, existing.name
        )));
    }
    for (name, value) in &topic.configs {
        validate_topic_config(name, value).map_err(ControllerError::InvalidConfig)?;
    }

    let placement = if topic.assignments.is_empty() {
        place_replicas(image, topic, defaults, topic_id)?
    } else {
        check_manual_assignment(image, topic)?
    };

    let mut records = vec![MetadataRecord::Topic {
        name: topic.name.clone(),
        topic_id,
    }];
    records.extend(
        topic
            .configs
            .iter()
            .map(|(name, value)| MetadataRecord::Config {
                resource: ConfigResource::Topic(topic.name.clone()),
                name: name.clone(),
                value: Some(value.clone()),
            }),
    );
    records.extend(
        placement
            .into_iter()
            .map(|(partition, replicas)| MetadataRecord::Partition {
                topic_id,
                partition,
                leader: replicas[0],
                isr: replicas.clone(),
                replicas,
                leader_epoch: 0,
                partition_epoch: 0,
                adding_replicas: Vec::new(),
                removing_replicas: Vec::new(),
            }),
    );
    Ok(records)
}

fn place_replicas(
    image: &MetadataImage,
    topic: &NewTopic,
    defaults: TopicDefaults,
    topic_id: Uuid,
) -> Result<BTreeMap<i32, Vec<i32>>, ControllerError> {
    let partitions = match topic.num_partitions {
        -1 => defaults.num_partitions,
        n => n,
    };
    let replication_factor = match topic.replication_factor {
        -1 => defaults.replication_factor,
        n => n,
    };
    if partitions <= 0 {
        return Err(ControllerError::InvalidPartitions(
            "Number of partitions was set to an invalid non-positive value.".into(),
        ));
    }
    if partitions > PARTITIONS_PER_TOPIC_MAX {
        return Err(ControllerError::InvalidPartitions(format!(
            "Number of partitions {partitions} exceeds the limit of {PARTITIONS_PER_TOPIC_MAX}."
        )));
    }
    if replication_factor <= 0 {
        return Err(ControllerError::InvalidReplicationFactor(
            "Replication factor must be larger than 0.".into(),
        ));
    }
    let brokers = placement_order(image);
    if replication_factor as usize > brokers.len() {
        return Err(ControllerError::InvalidReplicationFactor(format!(
            "Unable to replicate the partition {replication_factor} time(s): The target replication factor of {replication_factor} cannot be reached because only {} broker(s) are registered.",
            brokers.len()
        )));
    }
    Ok(round_robin(
        &brokers,
        topic_id,
        0..partitions,
        replication_factor,
    ))
}

/// Replicas for `partitions`, each starting one broker further round the
/// ring. The ring's starting point is derived from the topic id so leaders
/// of different topics spread over the brokers, as Kafka's random start
/// index does; the same topic always continues where it left off.
fn round_robin(
    brokers: &[i32],
    topic_id: Uuid,
    partitions: std::ops::Range<i32>,
    replication_factor: i16,
) -> BTreeMap<i32, Vec<i32>> {
    let start = (topic_id.as_u128() % brokers.len() as u128) as usize;
    partitions
        .map(|p| {
            let replicas = (0..replication_factor as usize)
                .map(|r| brokers[(start + p as usize + r) % brokers.len()])
                .collect();
            (p, replicas)
        })
        .collect()
}

fn check_manual_assignment(
    image: &MetadataImage,
    topic: &NewTopic,
) -> Result<BTreeMap<i32, Vec<i32>>, ControllerError> {
    if topic.num_partitions != -1 || topic.replication_factor != -1 {
        return Err(ControllerError::InvalidReplicaAssignment(
            "Both numPartitions or replicationFactor and replicasAssignments were set. Both cannot be used at the same time.".into(),
        ));
    }
    let expected: Vec<i32> = (0..topic.assignments.len() as i32).collect();
    if topic.assignments.keys().copied().collect::<Vec<_>>() != expected {
        return Err(ControllerError::InvalidReplicaAssignment(
            "Partitions should be a consecutive 0-based integer sequence".into(),
        ));
    }
    check_assignment(image, &topic.assignments, topic.assignments[&0].len())?;
    Ok(topic.assignments.clone())
}

/// Every partition has `replication_factor` distinct, registered brokers.
fn check_assignment(
    image: &MetadataImage,
    assignments: &BTreeMap<i32, Vec<i32>>,
    replication_factor: usize,
) -> Result<(), ControllerError> {
    for (&p, replicas) in assignments {
        if replicas.len() != replication_factor {
            return Err(ControllerError::InvalidReplicaAssignment(format!(
                "All partitions should have the same number of replicas, {replication_factor} (partition {p} has {})",
                replicas.len()
            )));
        }
        check_replica_list(image, p, replicas)?;
    }
    Ok(())
}

/// One partition's manually chosen replicas (CreateTopics, CreatePartitions,
/// AlterPartitionReassignments): some, none twice, each a registered broker
/// (Kafka's `validateManualPartitionAssignment`).
pub(crate) fn check_replica_list(
    image: &MetadataImage,
    partition: i32,
    replicas: &[i32],
) -> Result<(), ControllerError> {
    if replicas.is_empty() {
        return Err(ControllerError::InvalidReplicaAssignment(format!(
            "The manual partition assignment for partition {partition} includes an empty replica list."
        )));
    }
    let mut unique = replicas.to_vec();
    unique.sort_unstable();
    unique.dedup();
    if unique.len() != replicas.len() {
        return Err(ControllerError::InvalidReplicaAssignment(format!(
            "Duplicate brokers not allowed in replica assignment: {replicas:?} for partition {partition}"
        )));
    }
    if let Some(b) = replicas.iter().find(|b| !image.brokers.contains_key(b)) {
        return Err(ControllerError::InvalidReplicaAssignment(format!(
            "Replica assignment for partition {partition} refers to broker {b}, which is not registered"
        )));
    }
    Ok(())
}

/// Adds partitions to a topic (CreatePartitions). `assignments`, when given,
/// places each new partition, in order.
pub fn create_partitions(
    image: &MetadataImage,
    topic: &str,
    count: i32,
    assignments: Option<&[Vec<i32>]>,
) -> Result<Vec<MetadataRecord>, ControllerError> {
    let existing = image
        .topic_by_name(topic)
        .ok_or(ControllerError::UnknownTopicOrPartition)?;
    let current = existing.partitions.len() as i32;
    if count < current {
        return Err(ControllerError::InvalidPartitions(format!(
            "Topic currently has {current} partitions, which is higher than the requested {count}."
        )));
    }
    if count == current {
        return Err(ControllerError::InvalidPartitions(format!(
            "Topic already has {current} partitions."
        )));
    }
    if count > PARTITIONS_PER_TOPIC_MAX {
        return Err(ControllerError::InvalidPartitions(format!(
            "Number of partitions {count} exceeds the limit of {PARTITIONS_PER_TOPIC_MAX}."
        )));
    }
    let replication_factor = existing
        .partitions
        .values()
        .next()
        .map_or(1, |p| p.replicas.len() as i16);
    let placement = match assignments {
        None => {
            let brokers = placement_order(image);
            if brokers.len() < replication_factor as usize {
                return Err(ControllerError::InvalidReplicationFactor(format!(
                    "Unable to replicate the partition {replication_factor} time(s): only {} broker(s) are registered.",
                    brokers.len()
                )));
            }
            round_robin(
                &brokers,
                existing.topic_id,
                current..count,
                replication_factor,
            )
        }
        Some(assignments) => {
            let added = count - current;
            if assignments.len() as i32 != added {
                return Err(ControllerError::InvalidReplicaAssignment(format!(
                    "Increasing the number of partitions by {added} but {} assignments provided.",
                    assignments.len()
                )));
            }
            let placement: BTreeMap<i32, Vec<i32>> =
                (current..).zip(assignments.to_vec()).collect();
            check_assignment(image, &placement, replication_factor as usize)?;
            placement
        }
    };
    Ok(placement
        .into_iter()
        .map(|(partition, replicas)| MetadataRecord::Partition {
            topic_id: existing.topic_id,
            partition,
            leader: replicas[0],
            isr: replicas.clone(),
            replicas,
            leader_epoch: 0,
            partition_epoch: 0,
            adding_replicas: Vec::new(),
            removing_replicas: Vec::new(),
        })
        .collect())
}

/// One IncrementalAlterConfigs operation (Kafka's `AlterConfigOp`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfigOp {
    Set(String),
    Delete,
    /// Adds list items not already present.
    Append(String),
    /// Removes list items.
    Subtract(String),
}

/// What one resource of an AlterConfigs or IncrementalAlterConfigs request asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfigChange {
    /// AlterConfigs: these become the resource's whole set of dynamic configs.
    Replace(Vec<(String, String)>),
    /// IncrementalAlterConfigs: each operation applies to the current set.
    Incremental(Vec<(String, ConfigOp)>),
}

/// Validates a config change and returns the records that make it: one per
/// config whose dynamic value actually changes.
pub fn alter_configs(
    image: &MetadataImage,
    resource: &ConfigResource,
    change: &ConfigChange,
) -> Result<Vec<MetadataRecord>, ControllerError> {
    let current = image
        .dynamic_configs(resource)
        .ok_or(ControllerError::UnknownTopicOrPartition)?;
    let names: Vec<&str> = match change {
        ConfigChange::Replace(configs) => configs.iter().map(|(n, _)| n.as_str()).collect(),
        ConfigChange::Incremental(ops) => ops.iter().map(|(n, _)| n.as_str()).collect(),
    };
    let mut unique = names.clone();
    unique.sort_unstable();
    unique.dedup();
    if unique.len() != names.len() {
        return Err(ControllerError::InvalidRequest(
            "Error due to duplicate config keys".into(),
        ));
    }
    let next = match change {
        ConfigChange::Replace(configs) => configs.iter().cloned().collect(),
        ConfigChange::Incremental(ops) => {
            let mut next = current.clone();
            for (name, op) in ops {
                apply_config_op(&mut next, resource, name, op)?;
            }
            next
        }
    };
    for (name, value) in &next {
        if current.get(name) == Some(value) {
            continue;
        }
        match resource {
            ConfigResource::Topic(_) => {
                validate_topic_config(name, value).map_err(ControllerError::InvalidConfig)?
            }
            // Kafka answers INVALID_REQUEST for broker config changes it
            // refuses (ConfigAdminManager, kept for compatibility by KAFKA-13609).
            _ => validate_dynamic_broker_config(name, value)
                .map_err(ControllerError::InvalidRequest)?,
        }
    }
    let removed = current
        .keys()
        .filter(|name| !next.contains_key(*name))
        .map(|name| (name.clone(), None));
    let set = next
        .iter()
        .filter(|(name, value)| current.get(*name) != Some(*value))
        .map(|(name, value)| (name.clone(), Some(value.clone())));
    Ok(removed
        .chain(set)
        .map(|(name, value)| MetadataRecord::Config {
            resource: resource.clone(),
            name,
            value,
        })
        .collect())
}

fn apply_config_op(
    configs: &mut BTreeMap<String, String>,
    resource: &ConfigResource,
    name: &str,
    op: &ConfigOp,
) -> Result<(), ControllerError> {
    let (item, append) = match op {
        ConfigOp::Set(value) => {
            configs.insert(name.to_string(), value.clone());
            return Ok(());
        }
        ConfigOp::Delete => {
            configs.remove(name);
            return Ok(());
        }
        ConfigOp::Append(item) => (item, true),
        ConfigOp::Subtract(item) => (item, false),
    };
    if config_kind(name) != Some(ConfigType::List) {
        let verb = if append { "append" } else { "subtract" };
        return Err(ControllerError::InvalidConfig(format!(
            "Config value {verb} is not allowed for config key: {name}"
        )));
    }
    // Kafka appends to the current override, or else to the default.
    let default = match resource {
        ConfigResource::Topic(_) => topic_config_def(name).map(|d| d.default),
        _ => TOPIC_CONFIGS
            .iter()
            .find(|d| d.broker_synonym == name)
            .map(|d| d.default),
    };
    let current = configs
        .get(name)
        .map(String::as_str)
        .or(default)
        .unwrap_or("");
    let mut list: Vec<&str> = current
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    let items: Vec<&str> = item.split(',').map(str::trim).collect();
    if append {
        for i in items {
            if !list.contains(&i) {
                list.push(i);
            }
        }
    } else {
        list.retain(|v| !items.contains(v));
    }
    let joined = list.join(",");
    configs.insert(name.to_string(), joined);
    Ok(())
}

/// Returns the records that delete a topic.
pub fn delete_topic(
    image: &MetadataImage,
    topic_id: Uuid,
) -> Result<Vec<MetadataRecord>, ControllerError> {
    if image.topic_by_id(&topic_id).is_none() {
        return Err(ControllerError::UnknownTopicId);
    }
    Ok(vec![MetadataRecord::RemoveTopic { topic_id }])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image_with_brokers(n: i32) -> MetadataImage {
        let mut image = MetadataImage::empty();
        for b in 1..=n {
            image
                .apply(
                    b as i64,
                    &MetadataRecord::RegisterBroker {
                        broker_id: b,
                        host: "127.0.0.1".into(),
                        port: 9092,
                        rack: None,
                        incarnation_id: None,
                    },
                )
                .unwrap();
        }
        image
    }

    fn new_topic(name: &str, partitions: i32, rf: i16) -> NewTopic {
        NewTopic {
            name: name.into(),
            num_partitions: partitions,
            replication_factor: rf,
            assignments: BTreeMap::new(),
            configs: vec![],
        }
    }

    const DEFAULTS: TopicDefaults = TopicDefaults {
        num_partitions: 1,
        replication_factor: 1,
        unclean_leader_election_enable: false,
    };

    fn apply_all(image: &mut MetadataImage, records: &[MetadataRecord]) {
        for r in records {
            image.apply(image.offset + 1, r).unwrap();
        }
    }

    #[test]
    fn creates_partitions_spread_over_brokers() {
        let mut image = image_with_brokers(3);
        let records =
            create_topic(&image, &new_topic("t", 6, 2), DEFAULTS, Uuid::new_v4()).unwrap();
        apply_all(&mut image, &records);
        let topic = image.topic_by_name("t").unwrap();
        assert_eq!(topic.partitions.len(), 6);
        let mut leaders = [0; 4];
        for p in topic.partitions.values() {
            assert_eq!(p.replicas.len(), 2);
            assert_ne!(p.replicas[0], p.replicas[1]);
            assert_eq!(p.leader, p.replicas[0]);
            leaders[p.leader as usize] += 1;
        }
        assert_eq!(&leaders[1..], &[2, 2, 2]);
    }

    #[test]
    fn defaults_apply_to_minus_one() {
        let image = image_with_brokers(1);
        let defaults = TopicDefaults {
            num_partitions: 3,
            replication_factor: 1,
            unclean_leader_election_enable: false,
        };
        let records =
            create_topic(&image, &new_topic("t", -1, -1), defaults, Uuid::new_v4()).unwrap();
        let partitions = records
            .iter()
            .filter(|r| matches!(r, MetadataRecord::Partition { .. }))
            .count();
        assert_eq!(partitions, 3);
    }

    #[test]
    fn refuses_what_kafka_refuses() {
        let mut image = image_with_brokers(1);
        let records =
            create_topic(&image, &new_topic("a.b", 1, 1), DEFAULTS, Uuid::new_v4()).unwrap();
        apply_all(&mut image, &records);
        let err = |t: NewTopic| create_topic(&image, &t, DEFAULTS, Uuid::new_v4()).unwrap_err();

        assert!(matches!(
            err(new_topic("a.b", 1, 1)),
            ControllerError::TopicAlreadyExists(_)
        ));
        assert!(matches!(
            err(new_topic("a_b", 1, 1)),
            ControllerError::InvalidTopic(_)
        ));
        assert!(matches!(
            err(new_topic("bad name", 1, 1)),
            ControllerError::InvalidTopic(_)
        ));
        assert!(matches!(
            err(new_topic("..", 1, 1)),
            ControllerError::InvalidTopic(_)
        ));
        assert!(matches!(
            err(new_topic(&"x".repeat(250), 1, 1)),
            ControllerError::InvalidTopic(_)
        ));
        assert!(matches!(
            err(new_topic("t", 0, 1)),
            ControllerError::InvalidPartitions(_)
        ));
        assert!(matches!(
            err(new_topic("t", 1, 2)),
            ControllerError::InvalidReplicationFactor(_)
        ));
        assert!(matches!(
            err(new_topic("t", 1, 0)),
            ControllerError::InvalidReplicationFactor(_)
        ));
        let mut with_config = new_topic("t", 1, 1);
        with_config
            .configs
            .push(("retention.ms".into(), "soon".into()));
        assert!(matches!(
            err(with_config),
            ControllerError::InvalidConfig(_)
        ));
    }

    #[test]
    fn manual_assignments_are_checked() {
        let image = image_with_brokers(2);
        let mut t = new_topic("t", -1, -1);
        t.assignments.insert(0, vec![1, 2]);
        t.assignments.insert(1, vec![2, 1]);
        assert!(create_topic(&image, &t, DEFAULTS, Uuid::new_v4()).is_ok());
        t.assignments.insert(3, vec![1, 2]);
        assert!(create_topic(&image, &t, DEFAULTS, Uuid::new_v4()).is_err());
        t.assignments.remove(&3);
        t.assignments.insert(1, vec![1, 1]);
        assert!(create_topic(&image, &t, DEFAULTS, Uuid::new_v4()).is_err());
        t.assignments.insert(1, vec![1, 7]);
        assert!(create_topic(&image, &t, DEFAULTS, Uuid::new_v4()).is_err());
    }

    fn topic_with(image: &mut MetadataImage, name: &str, partitions: i32) {
        let records = create_topic(
            image,
            &new_topic(name, partitions, 1),
            DEFAULTS,
            Uuid::new_v4(),
        )
        .unwrap();
        apply_all(image, &records);
    }

    #[test]
    fn partitions_only_grow_and_continue_the_placement() {
        let mut image = image_with_brokers(3);
        topic_with(&mut image, "t", 2);
        let err = |count, assignments: Option<&[Vec<i32>]>| {
            create_partitions(&image, "t", count, assignments).unwrap_err()
        };
        assert!(
            matches!(err(1, None), ControllerError::InvalidPartitions(m) if m.contains("higher than the requested 1"))
        );
        assert!(
            matches!(err(2, None), ControllerError::InvalidPartitions(m) if m.contains("already has 2"))
        );
        assert!(matches!(
            err(4, Some(&[vec![1]])),
            ControllerError::InvalidReplicaAssignment(_)
        ));
        assert!(matches!(
            err(3, Some(&[vec![1, 2]])),
            ControllerError::InvalidReplicaAssignment(_)
        ));
        assert!(matches!(
            err(3, Some(&[vec![9]])),
            ControllerError::InvalidReplicaAssignment(_)
        ));
        assert_eq!(
            create_partitions(&image, "nope", 3, None).unwrap_err(),
            ControllerError::UnknownTopicOrPartition
        );

        let records = create_partitions(&image, "t", 5, None).unwrap();
        apply_all(&mut image, &records);
        let topic = image.topic_by_name("t").unwrap();
        assert_eq!(topic.partitions.len(), 5);
        let leaders: Vec<i32> = topic.partitions.values().map(|p| p.leader).collect();
        // One step round the ring per partition, old and new alike.
        for pair in leaders.windows(2) {
            assert_eq!(pair[1], pair[0] % 3 + 1);
        }
        let records = create_partitions(&image, "t", 6, Some(&[vec![2]])).unwrap();
        apply_all(&mut image, &records);
        assert_eq!(image.topic_by_name("t").unwrap().partitions[&5].leader, 2);
    }

    fn alter(
        image: &mut MetadataImage,
        resource: &ConfigResource,
        change: ConfigChange,
    ) -> Result<(), ControllerError> {
        let records = alter_configs(image, resource, &change)?;
        apply_all(image, &records);
        Ok(())
    }

    fn set(name: &str, value: &str) -> (String, ConfigOp) {
        (name.into(), ConfigOp::Set(value.into()))
    }

    #[test]
    fn incremental_alter_sets_deletes_and_edits_lists() {
        let mut image = image_with_brokers(1);
        topic_with(&mut image, "t", 1);
        let topic = ConfigResource::Topic("t".into());
        let configs = |image: &MetadataImage| image.topic_by_name("t").unwrap().configs.clone();

        alter(
            &mut image,
            &topic,
            ConfigChange::Incremental(vec![set("retention.ms", "1000")]),
        )
        .unwrap();
        assert_eq!(configs(&image)["retention.ms"], "1000");
        // Setting the same value again writes nothing.
        assert!(alter_configs(
            &image,
            &topic,
            &ConfigChange::Incremental(vec![set("retention.ms", "1000")])
        )
        .unwrap()
        .is_empty());
        alter(
            &mut image,
            &topic,
            ConfigChange::Incremental(vec![("retention.ms".into(), ConfigOp::Delete)]),
        )
        .unwrap();
        assert!(!configs(&image).contains_key("retention.ms"));

        // APPEND starts from the default; SUBTRACT removes items.
        alter(
            &mut image,
            &topic,
            ConfigChange::Incremental(vec![(
                "cleanup.policy".into(),
                ConfigOp::Append("delete".into()),
            )]),
        )
        .unwrap();
        assert_eq!(configs(&image)["cleanup.policy"], "delete");
        let err = alter(
            &mut image,
            &topic,
            ConfigChange::Incremental(vec![("retention.ms".into(), ConfigOp::Append("5".into()))]),
        )
        .unwrap_err();
        assert!(
            matches!(err, ControllerError::InvalidConfig(m) if m.contains("append is not allowed"))
        );
    }

    #[test]
    fn alter_refuses_bad_values_unknown_names_and_duplicates() {
        let mut image = image_with_brokers(1);
        topic_with(&mut image, "t", 1);
        let topic = ConfigResource::Topic("t".into());
        let incremental = |ops| ConfigChange::Incremental(ops);
        for bad in [
            incremental(vec![set("retention.ms", "soon")]),
            incremental(vec![set("no.such.config", "1")]),
        ] {
            assert!(matches!(
                alter_configs(&image, &topic, &bad).unwrap_err(),
                ControllerError::InvalidConfig(_)
            ));
        }
        assert!(matches!(
            alter_configs(
                &image,
                &topic,
                &incremental(vec![set("retention.ms", "1"), set("retention.ms", "2")])
            )
            .unwrap_err(),
            ControllerError::InvalidRequest(_)
        ));
        assert_eq!(
            alter_configs(
                &image,
                &ConfigResource::Topic("gone".into()),
                &incremental(vec![])
            )
            .unwrap_err(),
            ControllerError::UnknownTopicOrPartition
        );
        // Only dynamic broker configs can be altered.
        assert!(matches!(
            alter_configs(
                &image,
                &ConfigResource::Broker(1),
                &incremental(vec![set("listeners", "PLAINTEXT://:1")])
            )
            .unwrap_err(),
            ControllerError::InvalidRequest(m) if m.contains("dynamically")
        ));
    }

    #[test]
    fn replace_makes_the_given_set_the_whole_set() {
        let mut image = image_with_brokers(1);
        topic_with(&mut image, "t", 1);
        let topic = ConfigResource::Topic("t".into());
        alter(
            &mut image,
            &topic,
            ConfigChange::Incremental(vec![set("retention.ms", "1"), set("segment.ms", "9")]),
        )
        .unwrap();
        alter(
            &mut image,
            &topic,
            ConfigChange::Replace(vec![("segment.ms".into(), "10".into())]),
        )
        .unwrap();
        let configs = &image.topic_by_name("t").unwrap().configs;
        assert_eq!(configs.len(), 1);
        assert_eq!(configs["segment.ms"], "10");

        for resource in [ConfigResource::Broker(1), ConfigResource::BrokerDefault] {
            alter(
                &mut image,
                &resource,
                ConfigChange::Replace(vec![("log.retention.ms".into(), "5".into())]),
            )
            .unwrap();
        }
        assert_eq!(image.broker_configs[&1]["log.retention.ms"], "5");
        assert_eq!(image.broker_default_configs["log.retention.ms"], "5");
    }

    #[test]
    fn deleting_an_unknown_topic_fails() {
        let image = image_with_brokers(1);
        assert_eq!(
            delete_topic(&image, Uuid::new_v4()).unwrap_err(),
            ControllerError::UnknownTopicId
        );
    }
}
