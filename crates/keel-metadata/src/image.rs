use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use uuid::Uuid;

use crate::records::{ConfigResource, MetadataRecord};

/// The cluster as the metadata log describes it at one offset. Handlers read
/// an `Arc<MetadataImage>`; applying records produces a new image, so a reader
/// never sees half an update.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetadataImage {
    pub cluster_id: String,
    /// Offset of the last record applied; -1 for the empty image.
    pub offset: i64,
    pub brokers: BTreeMap<i32, BrokerImage>,
    topics: HashMap<Uuid, Arc<TopicImage>>,
    topic_ids_by_name: HashMap<String, Uuid>,
    /// Dynamic broker configs set for one broker.
    pub broker_configs: HashMap<i32, BTreeMap<String, String>>,
    /// Dynamic broker configs set cluster-wide.
    pub broker_default_configs: BTreeMap<String, String>,
    /// The first producer id not yet reserved by any broker.
    pub next_producer_id: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BrokerImage {
    pub broker_id: i32,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
    pub incarnation_id: Option<Uuid>,
    pub fenced: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TopicImage {
    pub name: String,
    pub topic_id: Uuid,
    pub partitions: BTreeMap<i32, PartitionImage>,
    /// Dynamic topic configs (overrides of the broker defaults).
    pub configs: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PartitionImage {
    pub partition: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub leader: i32,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    /// Replicas a reassignment adds (they are in `replicas` too).
    pub adding_replicas: Vec<i32>,
    /// Replicas a reassignment will remove once the added ones are in sync.
    pub removing_replicas: Vec<i32>,
}

impl PartitionImage {
    /// The record that sets this partition's whole state.
    pub fn to_record(&self, topic_id: Uuid) -> MetadataRecord {
        MetadataRecord::Partition {
            topic_id,
            partition: self.partition,
            replicas: self.replicas.clone(),
            isr: self.isr.clone(),
            leader: self.leader,
            leader_epoch: self.leader_epoch,
            partition_epoch: self.partition_epoch,
            adding_replicas: self.adding_replicas.clone(),
            removing_replicas: self.removing_replicas.clone(),
        }
    }

    /// Whether a reassignment is under way.
    pub fn reassigning(&self) -> bool {
        !self.adding_replicas.is_empty() || !self.removing_replicas.is_empty()
    }
}

impl MetadataImage {
    pub fn empty() -> Self {
        Self {
            offset: -1,
            ..Self::default()
        }
    }

    pub fn topic_by_name(&self, name: &str) -> Option<&Arc<TopicImage>> {
        self.topic_ids_by_name
            .get(name)
            .and_then(|id| self.topics.get(id))
    }

    /// A partition by topic name and index, with its topic.
    pub fn partition(&self, topic: &str, partition: i32) -> Option<(&TopicImage, &PartitionImage)> {
        let t = self.topic_by_name(topic)?;
        Some((t.as_ref(), t.partitions.get(&partition)?))
    }

    pub fn topic_by_id(&self, id: &Uuid) -> Option<&Arc<TopicImage>> {
        self.topics.get(id)
    }

    pub fn topics(&self) -> impl Iterator<Item = &Arc<TopicImage>> {
        self.topics.values()
    }

    /// The dynamic configs currently set on a resource, if it exists.
    pub fn dynamic_configs(&self, resource: &ConfigResource) -> Option<&BTreeMap<String, String>> {
        static NONE: BTreeMap<String, String> = BTreeMap::new();
        match resource {
            ConfigResource::Topic(name) => self.topic_by_name(name).map(|t| &t.configs),
            ConfigResource::Broker(id) => Some(self.broker_configs.get(id).unwrap_or(&NONE)),
            ConfigResource::BrokerDefault => Some(&self.broker_default_configs),
        }
    }

    /// Records that rebuild this image when applied to an empty one: the
    /// body of a metadata snapshot, as KRaft's snapshots are records too.
    pub fn to_records(&self) -> Vec<MetadataRecord> {
        let mut records = Vec::new();
        if !self.cluster_id.is_empty() {
            records.push(MetadataRecord::ClusterId {
                cluster_id: self.cluster_id.clone(),
            });
        }
        for b in self.brokers.values() {
            records.push(MetadataRecord::RegisterBroker {
                broker_id: b.broker_id,
                host: b.host.clone(),
                port: b.port,
                rack: b.rack.clone(),
                incarnation_id: b.incarnation_id,
            });
            if b.fenced {
                records.push(MetadataRecord::FenceBroker {
                    broker_id: b.broker_id,
                });
            }
        }
        let configs = |resource: ConfigResource, configs: &BTreeMap<String, String>| {
            configs
                .iter()
                .map(|(name, value)| MetadataRecord::Config {
                    resource: resource.clone(),
                    name: name.clone(),
                    value: Some(value.clone()),
                })
                .collect::<Vec<_>>()
        };
        let mut topics: Vec<&Arc<TopicImage>> = self.topics.values().collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        for topic in topics {
            records.push(MetadataRecord::Topic {
                name: topic.name.clone(),
                topic_id: topic.topic_id,
            });
            records.extend(configs(
                ConfigResource::Topic(topic.name.clone()),
                &topic.configs,
            ));
            records.extend(
                topic
                    .partitions
                    .values()
                    .map(|p| p.to_record(topic.topic_id)),
            );
        }
        let mut brokers: Vec<_> = self.broker_configs.iter().collect();
        brokers.sort_by_key(|(id, _)| **id);
        for (id, c) in brokers {
            records.extend(configs(ConfigResource::Broker(*id), c));
        }
        records.extend(configs(
            ConfigResource::BrokerDefault,
            &self.broker_default_configs,
        ));
        if self.next_producer_id > 0 {
            records.push(MetadataRecord::ProducerIds {
                next_block_start: self.next_producer_id,
            });
        }
        records
    }

    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }

    /// Applies one record. Records come from our own log, so a record that
    /// refers to something missing is a bug in the controller, not bad input:
    /// we skip it with a warning-worthy `Err` rather than panic, because the
    /// log is also read back after crashes and must always replay.
    ///
    /// The records of one proposal to the quorum share its offset.
    pub fn apply(&mut self, offset: i64, record: &MetadataRecord) -> Result<(), String> {
        assert!(offset >= self.offset, "metadata offsets go backwards");
        self.offset = offset;
        match record {
            MetadataRecord::ClusterId { cluster_id } => self.cluster_id = cluster_id.clone(),
            MetadataRecord::RegisterBroker {
                broker_id,
                host,
                port,
                rack,
                incarnation_id,
            } => {
                self.brokers.insert(
                    *broker_id,
                    BrokerImage {
                        broker_id: *broker_id,
                        host: host.clone(),
                        port: *port,
                        rack: rack.clone(),
                        incarnation_id: *incarnation_id,
                        fenced: false,
                    },
                );
            }
            MetadataRecord::FenceBroker { broker_id }
            | MetadataRecord::UnfenceBroker { broker_id } => {
                let broker = self
                    .brokers
                    .get_mut(broker_id)
                    .ok_or_else(|| format!("fencing of unknown broker {broker_id}"))?;
                broker.fenced = matches!(record, MetadataRecord::FenceBroker { .. });
            }
            MetadataRecord::UnregisterBroker { broker_id } => {
                self.brokers
                    .remove(broker_id)
                    .ok_or_else(|| format!("unregistering unknown broker {broker_id}"))?;
            }
            MetadataRecord::Topic { name, topic_id } => {
                self.topic_ids_by_name.insert(name.clone(), *topic_id);
                self.topics.insert(
                    *topic_id,
                    Arc::new(TopicImage {
                        name: name.clone(),
                        topic_id: *topic_id,
                        partitions: BTreeMap::new(),
                        configs: BTreeMap::new(),
                    }),
                );
            }
            MetadataRecord::Partition {
                topic_id,
                partition,
                replicas,
                isr,
                leader,
                leader_epoch,
                partition_epoch,
                adding_replicas,
                removing_replicas,
            } => {
                let topic = self
                    .topics
                    .get_mut(topic_id)
                    .ok_or_else(|| format!("partition record for unknown topic {topic_id}"))?;
                Arc::make_mut(topic).partitions.insert(
                    *partition,
                    PartitionImage {
                        partition: *partition,
                        replicas: replicas.clone(),
                        isr: isr.clone(),
                        leader: *leader,
                        leader_epoch: *leader_epoch,
                        partition_epoch: *partition_epoch,
                        adding_replicas: adding_replicas.clone(),
                        removing_replicas: removing_replicas.clone(),
                    },
                );
            }
            MetadataRecord::Config {
                resource,
                name,
                value,
            } => {
                let configs = match resource {
                    ConfigResource::Topic(topic) => {
                        let id = self
                            .topic_ids_by_name
                            .get(topic)
                            .ok_or_else(|| format!("config record for unknown topic {topic}"))?;
                        let topic = self.topics.get_mut(id).expect("name index is consistent");
                        &mut Arc::make_mut(topic).configs
                    }
                    ConfigResource::Broker(id) => self.broker_configs.entry(*id).or_default(),
                    ConfigResource::BrokerDefault => &mut self.broker_default_configs,
                };
                match value {
                    Some(v) => configs.insert(name.clone(), v.clone()),
                    None => configs.remove(name),
                };
            }
            MetadataRecord::ProducerIds { next_block_start } => {
                if *next_block_start <= self.next_producer_id {
                    return Err(format!(
                        "producer id block start {next_block_start} does not advance past {}",
                        self.next_producer_id
                    ));
                }
                self.next_producer_id = *next_block_start;
            }
            MetadataRecord::RemoveTopic { topic_id } => {
                let topic = self
                    .topics
                    .remove(topic_id)
                    .ok_or_else(|| format!("removal of unknown topic {topic_id}"))?;
                self.topic_ids_by_name.remove(&topic.name);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(image: &mut MetadataImage, offset: i64, name: &str) -> Uuid {
        let topic_id = Uuid::new_v4();
        image
            .apply(
                offset,
                &MetadataRecord::Topic {
                    name: name.into(),
                    topic_id,
                },
            )
            .unwrap();
        topic_id
    }

    #[test]
    fn topics_partitions_and_configs_build_up_and_tear_down() {
        let mut image = MetadataImage::empty();
        let id = topic(&mut image, 0, "orders");
        image
            .apply(
                1,
                &MetadataRecord::Partition {
                    topic_id: id,
                    partition: 0,
                    replicas: vec![1],
                    isr: vec![1],
                    leader: 1,
                    leader_epoch: 0,
                    partition_epoch: 0,
                    adding_replicas: Vec::new(),
                    removing_replicas: Vec::new(),
                },
            )
            .unwrap();
        image
            .apply(
                2,
                &MetadataRecord::Config {
                    resource: ConfigResource::Topic("orders".into()),
                    name: "retention.ms".into(),
                    value: Some("1000".into()),
                },
            )
            .unwrap();
        let t = image.topic_by_name("orders").unwrap();
        assert_eq!(t.partitions.len(), 1);
        assert_eq!(t.configs["retention.ms"], "1000");
        assert_eq!(image.topic_by_id(&id).unwrap().name, "orders");

        image
            .apply(3, &MetadataRecord::RemoveTopic { topic_id: id })
            .unwrap();
        assert!(image.topic_by_name("orders").is_none());
        assert_eq!(image.offset, 3);
    }

    #[test]
    fn records_for_missing_topics_are_refused_not_panicked_on() {
        let mut image = MetadataImage::empty();
        let err = image.apply(
            0,
            &MetadataRecord::RemoveTopic {
                topic_id: Uuid::new_v4(),
            },
        );
        assert!(err.is_err());
    }

    #[test]
    fn an_older_image_is_unchanged_by_applying_to_a_clone() {
        let mut image = MetadataImage::empty();
        let id = topic(&mut image, 0, "a");
        let before = image.clone();
        image
            .apply(
                1,
                &MetadataRecord::Config {
                    resource: ConfigResource::Topic("a".into()),
                    name: "segment.ms".into(),
                    value: Some("5".into()),
                },
            )
            .unwrap();
        assert!(before.topic_by_id(&id).unwrap().configs.is_empty());
    }

    #[test]
    fn an_image_rebuilds_from_its_snapshot_records() {
        let mut image = MetadataImage::empty();
        let records = [
            MetadataRecord::ClusterId {
                cluster_id: "c".into(),
            },
            MetadataRecord::RegisterBroker {
                broker_id: 2,
                host: "h".into(),
                port: 9092,
                rack: Some("r1".into()),
                incarnation_id: Some(Uuid::from_u128(9)),
            },
            MetadataRecord::Topic {
                name: "t".into(),
                topic_id: Uuid::from_u128(7),
            },
            MetadataRecord::Partition {
                topic_id: Uuid::from_u128(7),
                partition: 0,
                replicas: vec![3, 2],
                isr: vec![2],
                leader: 2,
                leader_epoch: 3,
                partition_epoch: 4,
                adding_replicas: vec![3],
                removing_replicas: vec![2],
            },
            MetadataRecord::Config {
                resource: ConfigResource::Topic("t".into()),
                name: "retention.ms".into(),
                value: Some("5".into()),
            },
            MetadataRecord::Config {
                resource: ConfigResource::Broker(2),
                name: "log.cleaner.threads".into(),
                value: Some("2".into()),
            },
            MetadataRecord::Config {
                resource: ConfigResource::BrokerDefault,
                name: "log.cleaner.backoff.ms".into(),
                value: Some("9".into()),
            },
            MetadataRecord::ProducerIds {
                next_block_start: 1000,
            },
        ];
        for record in &records {
            image.apply(10, record).unwrap();
        }
        let mut rebuilt = MetadataImage::empty();
        for record in image.to_records() {
            rebuilt.apply(10, &record).unwrap();
        }
        assert_eq!(rebuilt, image);
    }
}
