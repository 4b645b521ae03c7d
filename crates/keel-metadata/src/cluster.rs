//! The controller's decisions about brokers and partition leadership:
//! placement order, fencing, restarts, leader election and ISR changes.
//!
//! Kafka's rules (`PartitionChangeBuilder`, `ReplicationControlManager`):
//! a leader is elected from the ISR, in replica order, among brokers that
//! are registered and not fenced; a broker that is fenced or restarted
//! leaves every ISR, except that the last ISR member stays (it holds the
//! newest acknowledged data, so it is the one to wait for). With no
//! eligible replica a partition has no leader (-1) unless
//! `unclean.leader.election.enable` lets an out-of-sync replica lead.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::controller::{ControllerError, TopicDefaults};
use crate::reassignment;
use crate::{MetadataImage, MetadataRecord, PartitionImage, TopicImage};

pub const NO_LEADER: i32 = -1;

/// Brokers new replicas go to: registered and unfenced, ordered so that
/// consecutive brokers are on different racks when racks are set (Kafka's
/// rack-alternated list), so each partition's replicas span racks.
pub fn placement_order(image: &MetadataImage) -> Vec<i32> {
    let mut by_rack: BTreeMap<Option<&str>, Vec<i32>> = BTreeMap::new();
    for b in image.brokers.values().filter(|b| !b.fenced) {
        by_rack
            .entry(b.rack.as_deref())
            .or_default()
            .push(b.broker_id);
    }
    let longest = by_rack.values().map(Vec::len).max().unwrap_or(0);
    (0..longest)
        .flat_map(|i| by_rack.values().filter_map(move |ids| ids.get(i).copied()))
        .collect()
}

fn unclean_election_enabled(
    image: &MetadataImage,
    topic: &TopicImage,
    defaults: TopicDefaults,
) -> bool {
    const NAME: &str = "unclean.leader.election.enable";
    topic
        .configs
        .get(NAME)
        .or_else(|| image.broker_default_configs.get(NAME))
        .map_or(defaults.unclean_leader_election_enable, |v| {
            v.eq_ignore_ascii_case("true")
        })
}

/// The partition once `can_serve` tells which brokers may be leader or in
/// the ISR, or `None` if nothing changes.
///
/// `restarted` is a broker that `can_serve` excludes because its process
/// restarted: it still leads where it is all the ISR has, since no one else
/// holds its data, but under a new epoch, as its log may have changed.
pub(crate) fn rebalance_partition(
    p: &PartitionImage,
    can_serve: impl Fn(i32) -> bool,
    unclean: bool,
    restarted: Option<i32>,
) -> Option<PartitionImage> {
    let mut isr: Vec<i32> = p.isr.iter().copied().filter(|b| can_serve(*b)).collect();
    let leader = if isr.contains(&p.leader) {
        p.leader
    } else if let Some(&b) = p.replicas.iter().find(|b| isr.contains(b)) {
        b
    } else if let Some(&b) = p
        .replicas
        .iter()
        .find(|b| unclean && (can_serve(**b) || restarted == Some(**b)))
    {
        // Unclean: an out-of-sync replica leads and the others truncate
        // to it; acknowledged records it lacks are lost, by request. A
        // restarted broker qualifies: whatever its log lost, an unclean
        // leader's log is only ever what it has, and once registered it
        // is not fenced, so no later unfencing would elect it.
        isr = vec![b];
        b
    } else {
        // The last ISR member stays in the ISR while it is away.
        if isr.is_empty() {
            isr = p.isr.clone();
        }
        match restarted {
            Some(b) if isr == [b] => b,
            _ => NO_LEADER,
        }
    };
    let new_epoch = leader != p.leader || restarted == Some(leader);
    if !new_epoch && isr == p.isr {
        return None;
    }
    Some(PartitionImage {
        isr,
        leader,
        leader_epoch: if new_epoch {
            p.leader_epoch + 1
        } else {
            p.leader_epoch
        },
        partition_epoch: p.partition_epoch + 1,
        ..p.clone()
    })
}

/// The records of `change` applied to every partition of the cluster;
/// `change` also learns whether the partition's topic allows unclean
/// election, and answers `None` where nothing changes.
pub(crate) fn partition_changes(
    image: &MetadataImage,
    defaults: TopicDefaults,
    change: impl Fn(&PartitionImage, bool) -> Option<PartitionImage>,
) -> Vec<MetadataRecord> {
    let mut records = Vec::new();
    for topic in image.topics() {
        let unclean = unclean_election_enabled(image, topic, defaults);
        for p in topic.partitions.values() {
            if let Some(next) = change(p, unclean) {
                records.push(next.to_record(topic.topic_id));
            }
        }
    }
    records
}

/// Partition changes across the cluster once `can_serve` holds.
fn rebalance(
    image: &MetadataImage,
    defaults: TopicDefaults,
    can_serve: impl Fn(i32) -> bool + Copy,
    restarted: Option<i32>,
) -> Vec<MetadataRecord> {
    partition_changes(image, defaults, |p, unclean| {
        rebalance_partition(p, can_serve, unclean, restarted)
    })
}

pub(crate) fn serving(image: &MetadataImage, broker_id: i32) -> bool {
    image.brokers.get(&broker_id).is_some_and(|b| !b.fenced)
}

/// Fences a broker whose session expired: it leaves ISRs and leadership.
pub fn fence_broker(
    image: &MetadataImage,
    broker_id: i32,
    defaults: TopicDefaults,
) -> Vec<MetadataRecord> {
    if !serving(image, broker_id) {
        return Vec::new();
    }
    let mut records = vec![MetadataRecord::FenceBroker { broker_id }];
    records.extend(without(image, broker_id, defaults, false));
    records
}

/// Forgets a broker (Kafka's UnregisterBroker). It leaves ISRs and
/// leadership as a fenced one does, so a live broker is cut off too; as in
/// Kafka, nothing stops its process, which an operator stops first.
pub fn unregister_broker(
    image: &MetadataImage,
    broker_id: i32,
    defaults: TopicDefaults,
) -> Result<Vec<MetadataRecord>, ControllerError> {
    if !image.brokers.contains_key(&broker_id) {
        return Err(ControllerError::BrokerIdNotRegistered(broker_id));
    }
    let mut records = without(image, broker_id, defaults, false);
    records.push(MetadataRecord::UnregisterBroker { broker_id });
    Ok(records)
}

/// Partition changes once `broker_id` serves nothing; a `restarted` one
/// stays where it is all that is left.
fn without(
    image: &MetadataImage,
    broker_id: i32,
    defaults: TopicDefaults,
    restarted: bool,
) -> Vec<MetadataRecord> {
    rebalance(
        image,
        defaults,
        |b| b != broker_id && serving(image, b),
        restarted.then_some(broker_id),
    )
}

/// A heartbeat from a fenced broker brings it back: it may lead the
/// partitions that were waiting for it as their last ISR member.
pub fn unfence_broker(
    image: &MetadataImage,
    broker_id: i32,
    defaults: TopicDefaults,
) -> Vec<MetadataRecord> {
    if image.brokers.get(&broker_id).is_none_or(|b| !b.fenced) {
        return Vec::new();
    }
    let mut records = vec![MetadataRecord::UnfenceBroker { broker_id }];
    records.extend(rebalance(
        image,
        defaults,
        |b| b == broker_id || serving(image, b),
        None,
    ));
    records
}

/// A broker process that restarted (a new incarnation) may have lost what
/// it had not flushed, so it gives up leadership and ISR membership to the
/// others, as if fenced, except where it is all that is left.
pub fn restarted_broker(
    image: &MetadataImage,
    broker_id: i32,
    defaults: TopicDefaults,
) -> Vec<MetadataRecord> {
    without(image, broker_id, defaults, true)
}

/// A leader's request to change its partition's ISR (Kafka's
/// AlterPartition), checked against the current state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IsrChange {
    pub topic_id: Uuid,
    pub partition: i32,
    pub leader_id: i32,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub new_isr: Vec<i32>,
}

/// The record that applies an ISR change, with Kafka's refusals.
pub fn alter_partition(
    image: &MetadataImage,
    change: &IsrChange,
) -> Result<(MetadataRecord, PartitionImage), ControllerError> {
    let topic = image
        .topic_by_id(&change.topic_id)
        .ok_or(ControllerError::UnknownTopicOrPartition)?;
    let p = topic
        .partitions
        .get(&change.partition)
        .ok_or(ControllerError::UnknownTopicOrPartition)?;
    if change.leader_id != p.leader {
        return Err(ControllerError::NotLeaderOrFollower);
    }
    if change.leader_epoch != p.leader_epoch {
        return Err(ControllerError::FencedLeaderEpoch);
    }
    if change.partition_epoch != p.partition_epoch {
        return Err(ControllerError::InvalidUpdateVersion);
    }
    if !change.new_isr.contains(&p.leader) || change.new_isr.iter().any(|b| !p.replicas.contains(b))
    {
        return Err(ControllerError::InvalidRequest(format!(
            "ISR {:?} must hold the leader {} and only replicas {:?}",
            change.new_isr, p.leader, p.replicas
        )));
    }
    let added_ineligible = change
        .new_isr
        .iter()
        .any(|b| !p.isr.contains(b) && !serving(image, *b));
    if added_ineligible {
        return Err(ControllerError::IneligibleReplica);
    }
    let next = PartitionImage {
        isr: change.new_isr.clone(),
        partition_epoch: p.partition_epoch + 1,
        ..p.clone()
    };
    // The ISR that takes in the last added replica completes a
    // reassignment, as in Kafka's PartitionChangeBuilder.
    let next = match reassignment::complete_if_caught_up(image, &next) {
        Some(done) => PartitionImage {
            leader_epoch: next.leader_epoch + i32::from(done.leader != next.leader),
            ..done
        },
        None => next,
    };
    Ok((next.to_record(change.topic_id), next))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::controller::TopicDefaults;

    pub(crate) const DEFAULTS: TopicDefaults = TopicDefaults {
        num_partitions: 1,
        replication_factor: 3,
        unclean_leader_election_enable: false,
    };

    pub(crate) fn image(
        brokers: &[(i32, Option<&str>)],
        replicas: &[i32],
    ) -> (MetadataImage, Uuid) {
        let mut image = MetadataImage::empty();
        let mut offset = 0;
        let mut apply = |image: &mut MetadataImage, r: MetadataRecord| {
            offset += 1;
            image.apply(offset, &r).unwrap();
        };
        for (id, rack) in brokers {
            apply(
                &mut image,
                MetadataRecord::RegisterBroker {
                    broker_id: *id,
                    host: "h".into(),
                    port: 1,
                    rack: rack.map(String::from),
                    incarnation_id: None,
                },
            );
        }
        let topic_id = Uuid::from_u128(1);
        apply(
            &mut image,
            MetadataRecord::Topic {
                name: "t".into(),
                topic_id,
            },
        );
        apply(
            &mut image,
            MetadataRecord::Partition {
                topic_id,
                partition: 0,
                replicas: replicas.to_vec(),
                isr: replicas.to_vec(),
                leader: replicas[0],
                leader_epoch: 0,
                partition_epoch: 0,
                adding_replicas: Vec::new(),
                removing_replicas: Vec::new(),
            },
        );
        (image, topic_id)
    }

    pub(crate) fn apply_all(image: &mut MetadataImage, records: &[MetadataRecord]) {
        let offset = image.offset + 1;
        for r in records {
            image.apply(offset, r).unwrap();
        }
    }

    pub(crate) fn partition(image: &MetadataImage) -> PartitionImage {
        image.topic_by_name("t").unwrap().partitions[&0].clone()
    }

    #[test]
    fn placement_alternates_racks_and_skips_fenced_brokers() {
        let (mut img, _) = image(
            &[
                (1, Some("a")),
                (2, Some("a")),
                (3, Some("b")),
                (4, Some("c")),
            ],
            &[1],
        );
        assert_eq!(placement_order(&img), vec![1, 3, 4, 2]);
        apply_all(&mut img, &[MetadataRecord::FenceBroker { broker_id: 3 }]);
        assert_eq!(placement_order(&img), vec![1, 4, 2]);
    }

    #[test]
    fn an_unregistered_broker_leaves_leadership_isrs_and_the_registry() {
        let (mut img, _) = image(&[(1, None), (2, None), (3, None)], &[1, 2, 3]);
        let records = unregister_broker(&img, 1, DEFAULTS).unwrap();
        apply_all(&mut img, &records);
        let p = partition(&img);
        assert_eq!(
            (p.leader, p.leader_epoch, p.isr.clone(), p.replicas.clone()),
            (2, 1, vec![2, 3], vec![1, 2, 3]),
            "the replica list keeps the id until a reassignment"
        );
        assert!(!img.brokers.contains_key(&1));
        assert_eq!(placement_order(&img), vec![2, 3]);
        // Gone, so asking again is refused, as is asking for a stranger.
        for id in [1, 9] {
            assert_eq!(
                unregister_broker(&img, id, DEFAULTS),
                Err(ControllerError::BrokerIdNotRegistered(id))
            );
        }
        // A fenced broker is unregistered with no partition change.
        let records = fence_broker(&img, 3, DEFAULTS);
        apply_all(&mut img, &records);
        let records = unregister_broker(&img, 3, DEFAULTS).unwrap();
        assert_eq!(
            records,
            vec![MetadataRecord::UnregisterBroker { broker_id: 3 }]
        );
        apply_all(&mut img, &records);
        // The image survives a snapshot without it.
        let mut rebuilt = MetadataImage::default();
        apply_all(&mut rebuilt, &img.to_records());
        assert_eq!(rebuilt.brokers.keys().collect::<Vec<_>>(), vec![&2]);
    }

    #[test]
    fn fencing_the_leader_elects_the_next_isr_replica() {
        let (mut img, _) = image(&[(1, None), (2, None), (3, None)], &[1, 2, 3]);
        let records = fence_broker(&img, 1, DEFAULTS);
        apply_all(&mut img, &records);
        let p = partition(&img);
        assert_eq!(
            (p.leader, p.leader_epoch, p.isr.clone()),
            (2, 1, vec![2, 3])
        );
        assert!(img.brokers[&1].fenced);
        // Fencing twice changes nothing.
        assert!(fence_broker(&img, 1, DEFAULTS).is_empty());
    }

    #[test]
    fn the_last_isr_member_stays_and_leads_again_when_back() {
        let (mut img, _) = image(&[(1, None), (2, None)], &[1, 2]);
        for b in [2, 1] {
            let records = fence_broker(&img, b, DEFAULTS);
            apply_all(&mut img, &records);
        }
        let p = partition(&img);
        assert_eq!((p.leader, p.isr.clone()), (NO_LEADER, vec![1]));
        // Broker 2 alone is out of sync: clean election leaves it offline.
        let records = unfence_broker(&img, 2, DEFAULTS);
        apply_all(&mut img, &records);
        assert_eq!(partition(&img).leader, NO_LEADER);
        let records = unfence_broker(&img, 1, DEFAULTS);
        apply_all(&mut img, &records);
        let p = partition(&img);
        assert_eq!((p.leader, p.isr.clone(), p.leader_epoch), (1, vec![1], 2));
    }

    #[test]
    fn unclean_election_lets_an_out_of_sync_replica_lead() {
        let (mut img, _) = image(&[(1, None), (2, None)], &[1, 2]);
        for b in [2, 1] {
            let records = fence_broker(&img, b, DEFAULTS);
            apply_all(&mut img, &records);
        }
        let unclean = TopicDefaults {
            unclean_leader_election_enable: true,
            ..DEFAULTS
        };
        let records = unfence_broker(&img, 2, unclean);
        apply_all(&mut img, &records);
        let p = partition(&img);
        assert_eq!((p.leader, p.isr.clone()), (2, vec![2]));
    }

    #[test]
    fn a_restarted_out_of_sync_replica_leads_only_if_unclean_election_is_on() {
        let (mut img, _) = image(&[(1, None), (2, None)], &[1, 2]);
        for b in [2, 1] {
            let records = fence_broker(&img, b, DEFAULTS);
            apply_all(&mut img, &records);
        }
        assert!(restarted_broker(&img, 2, DEFAULTS).is_empty());
        let unclean = TopicDefaults {
            unclean_leader_election_enable: true,
            ..DEFAULTS
        };
        let records = restarted_broker(&img, 2, unclean);
        apply_all(&mut img, &records);
        let p = partition(&img);
        assert_eq!((p.leader, p.isr.clone(), p.leader_epoch), (2, vec![2], 2));
    }

    #[test]
    fn enabling_unclean_election_elects_a_waiting_partition() {
        use crate::controller::ConfigChange;
        use crate::request::{decide, ControllerRequest};
        use crate::ConfigResource;

        let (mut img, _) = image(&[(1, None), (2, None)], &[1, 2]);
        for b in [2, 1] {
            let records = fence_broker(&img, b, DEFAULTS);
            apply_all(&mut img, &records);
        }
        let records = unfence_broker(&img, 2, DEFAULTS);
        apply_all(&mut img, &records);
        assert_eq!(partition(&img).leader, NO_LEADER);
        let enable = |validate_only| ControllerRequest::AlterConfigs {
            resource: ConfigResource::Topic("t".into()),
            change: ConfigChange::Replace(vec![(
                "unclean.leader.election.enable".into(),
                "true".into(),
            )]),
            validate_only,
        };
        let (records, _) = decide(&img, &enable(true), DEFAULTS).unwrap();
        assert!(records.is_empty());
        let (records, _) = decide(&img, &enable(false), DEFAULTS).unwrap();
        apply_all(&mut img, &records);
        let p = partition(&img);
        assert_eq!((p.leader, p.isr.clone()), (2, vec![2]));
        assert!(crate::elections::balance_leaders(&img, false, DEFAULTS).is_empty());
    }

    #[test]
    fn a_restarted_leader_hands_over_unless_it_is_alone() {
        let (mut img, _) = image(&[(1, None), (2, None)], &[1, 2]);
        let records = restarted_broker(&img, 1, DEFAULTS);
        apply_all(&mut img, &records);
        let p = partition(&img);
        assert_eq!((p.leader, p.isr.clone()), (2, vec![2]));
        let records = restarted_broker(&img, 2, DEFAULTS);
        apply_all(&mut img, &records);
        let p = partition(&img);
        assert_eq!((p.leader, p.isr.clone(), p.leader_epoch), (2, vec![2], 2));
    }

    #[test]
    fn isr_changes_are_checked_against_the_current_state() {
        let (img, topic_id) = image(&[(1, None), (2, None), (3, None)], &[1, 2, 3]);
        let change = |leader_id, leader_epoch, partition_epoch, new_isr: &[i32]| IsrChange {
            topic_id,
            partition: 0,
            leader_id,
            leader_epoch,
            partition_epoch,
            new_isr: new_isr.to_vec(),
        };
        let (_, next) = alter_partition(&img, &change(1, 0, 0, &[1, 2])).unwrap();
        assert_eq!((next.isr, next.partition_epoch), (vec![1, 2], 1));
        let refused = |c| alter_partition(&img, &c).unwrap_err();
        assert_eq!(
            refused(change(2, 0, 0, &[1, 2])),
            ControllerError::NotLeaderOrFollower
        );
        assert_eq!(
            refused(change(1, 1, 0, &[1, 2])),
            ControllerError::FencedLeaderEpoch
        );
        assert_eq!(
            refused(change(1, 0, 1, &[1, 2])),
            ControllerError::InvalidUpdateVersion
        );
        assert!(matches!(
            refused(change(1, 0, 0, &[2, 3])),
            ControllerError::InvalidRequest(_)
        ));
    }
}
