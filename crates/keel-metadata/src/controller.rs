//! The controller's decisions: admin requests in, metadata records out.
//!
//! Every function here is pure over a `MetadataImage` so it can be tested
//! without a log or a socket; the caller appends the records it returns and
//! applies them to get the next image.

use std::collections::BTreeMap;

use keel_types::limits::{PARTITIONS_PER_TOPIC_MAX, TOPIC_NAME_CHARS_MAX};
use uuid::Uuid;

use crate::config::validate_topic_config;
use crate::{ConfigResource, MetadataImage, MetadataRecord};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
}

/// A CreateTopics entry, after the handler has decoded it.
#[derive(Debug, Clone)]
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

#[derive(Debug, Clone, Copy)]
pub struct TopicDefaults {
    pub num_partitions: i32,
    pub replication_factor: i16,
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
    let brokers: Vec<i32> = image.brokers.keys().copied().collect();
    if replication_factor as usize > brokers.len() {
        return Err(ControllerError::InvalidReplicationFactor(format!(
            "Unable to replicate the partition {replication_factor} time(s): The target replication factor of {replication_factor} cannot be reached because only {} broker(s) are registered.",
            brokers.len()
        )));
    }
    // Start from a point derived from the topic id so leaders of different
    // topics spread over the brokers, as Kafka's random start index does.
    let start = (topic_id.as_u128() % brokers.len() as u128) as usize;
    Ok((0..partitions)
        .map(|p| {
            let replicas = (0..replication_factor as usize)
                .map(|r| brokers[(start + p as usize + r) % brokers.len()])
                .collect();
            (p, replicas)
        })
        .collect())
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
    let rf = topic.assignments[&0].len();
    for (p, replicas) in &topic.assignments {
        if replicas.is_empty() || replicas.len() != rf {
            return Err(ControllerError::InvalidReplicaAssignment(format!(
                "All partitions should have the same number of replicas (partition {p})"
            )));
        }
        let mut unique = replicas.clone();
        unique.sort_unstable();
        unique.dedup();
        if unique.len() != replicas.len() {
            return Err(ControllerError::InvalidReplicaAssignment(format!(
                "Duplicate brokers not allowed in replica assignment: {replicas:?} for partition {p}"
            )));
        }
        if let Some(b) = replicas.iter().find(|b| !image.brokers.contains_key(b)) {
            return Err(ControllerError::InvalidReplicaAssignment(format!(
                "Replica assignment for partition {p} refers to broker {b}, which is not registered"
            )));
        }
    }
    Ok(topic.assignments.clone())
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

    #[test]
    fn deleting_an_unknown_topic_fails() {
        let image = image_with_brokers(1);
        assert_eq!(
            delete_topic(&image, Uuid::new_v4()).unwrap_err(),
            ControllerError::UnknownTopicId
        );
    }
}
