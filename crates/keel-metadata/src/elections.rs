//! Leader elections asked for rather than forced by a failure: Kafka's
//! ElectLeaders (preferred and unclean), the active controller's periodic
//! move of leadership back to preferred replicas
//! (`auto.leader.rebalance.enable`), and unclean elections for partitions
//! left without a leader once their topic allows them.
//!
//! Kafka's rules (`ReplicationControlManager.electLeader`): a preferred
//! election is not needed when the first replica already leads, and is
//! possible only when that replica is in the ISR and serving; an unclean
//! election is not needed when the partition has a leader, and elects from
//! the ISR if it can, else from any serving replica.

use serde::{Deserialize, Serialize};

use crate::cluster::{partition_changes, rebalance_partition, serving, NO_LEADER};
use crate::controller::TopicDefaults;
use crate::{MetadataImage, MetadataRecord, PartitionImage};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ElectionType {
    /// Back to the first replica (Kafka's election type 0).
    Preferred,
    /// Any serving replica when the ISR has none (type 1).
    Unclean,
}

/// What ElectLeaders did for one partition; each but `Elected` is the
/// Kafka error of the same name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ElectionOutcome {
    Elected,
    ElectionNotNeeded,
    PreferredLeaderNotAvailable,
    EligibleLeadersNotAvailable,
    UnknownTopicOrPartition,
}

/// One partition's ElectLeaders answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElectionResult {
    pub topic: String,
    pub partition: i32,
    pub outcome: ElectionOutcome,
}

/// The partition after an election of type `election`, or why there is
/// none.
fn elect(
    image: &MetadataImage,
    p: &PartitionImage,
    election: ElectionType,
) -> Result<PartitionImage, ElectionOutcome> {
    match election {
        ElectionType::Preferred => {
            let preferred = *p
                .replicas
                .first()
                .ok_or(ElectionOutcome::PreferredLeaderNotAvailable)?;
            if p.leader == preferred {
                return Err(ElectionOutcome::ElectionNotNeeded);
            }
            if !p.isr.contains(&preferred) || !serving(image, preferred) {
                return Err(ElectionOutcome::PreferredLeaderNotAvailable);
            }
            Ok(PartitionImage {
                leader: preferred,
                leader_epoch: p.leader_epoch + 1,
                partition_epoch: p.partition_epoch + 1,
                ..p.clone()
            })
        }
        ElectionType::Unclean => {
            if p.leader != NO_LEADER {
                return Err(ElectionOutcome::ElectionNotNeeded);
            }
            rebalance_partition(p, |b| serving(image, b), true, None)
                .filter(|next| next.leader != NO_LEADER)
                .ok_or(ElectionOutcome::EligibleLeadersNotAvailable)
        }
    }
}

/// Kafka's ElectLeaders: `partitions` names topic and partition pairs, or
/// `None` for every partition, in which case partitions that need no
/// election are left out of the answer, as Kafka leaves them out.
pub fn elect_leaders(
    image: &MetadataImage,
    election: ElectionType,
    partitions: Option<&[(String, i32)]>,
) -> (Vec<MetadataRecord>, Vec<ElectionResult>) {
    let mut records = Vec::new();
    let mut results = Vec::new();
    let mut decide = |topic: &str, partition: i32| {
        let found = image
            .partition(topic, partition)
            .map(|(t, p)| (t.topic_id, p));
        let outcome = match found {
            None => ElectionOutcome::UnknownTopicOrPartition,
            Some((topic_id, p)) => match elect(image, p, election) {
                Ok(next) => {
                    records.push(next.to_record(topic_id));
                    ElectionOutcome::Elected
                }
                Err(why) => why,
            },
        };
        ElectionResult {
            topic: topic.to_string(),
            partition,
            outcome,
        }
    };
    match partitions {
        Some(named) => {
            for (topic, partition) in named {
                results.push(decide(topic, *partition));
            }
        }
        None => {
            for t in image.topics() {
                for &partition in t.partitions.keys() {
                    let result = decide(&t.name, partition);
                    if result.outcome != ElectionOutcome::ElectionNotNeeded {
                        results.push(result);
                    }
                }
            }
        }
    }
    (records, results)
}

/// The active controller's periodic pass: leadership back to preferred
/// replicas that are in sync (when `preferred`, i.e.
/// `auto.leader.rebalance.enable`), and an unclean election for every
/// leaderless partition whose topic allows one.
pub fn balance_leaders(
    image: &MetadataImage,
    preferred: bool,
    defaults: TopicDefaults,
) -> Vec<MetadataRecord> {
    partition_changes(image, defaults, |p, unclean| {
        let election = if p.leader == NO_LEADER {
            unclean.then_some(ElectionType::Unclean)
        } else {
            preferred.then_some(ElectionType::Preferred)
        };
        elect(image, p, election?).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::fence_broker;
    use crate::cluster::tests::{apply_all, image, partition, DEFAULTS};

    fn fence(img: &mut MetadataImage, broker_id: i32) {
        let records = fence_broker(img, broker_id, DEFAULTS);
        apply_all(img, &records);
    }

    fn named(partitions: &[(&str, i32)]) -> Vec<(String, i32)> {
        partitions
            .iter()
            .map(|(t, p)| (t.to_string(), *p))
            .collect()
    }

    #[test]
    fn preferred_election_moves_leadership_back_once_in_sync() {
        let (mut img, _) = image(&[(1, None), (2, None), (3, None)], &[1, 2, 3]);
        let (records, results) = elect_leaders(
            &img,
            ElectionType::Preferred,
            Some(&named(&[("t", 0), ("t", 9), ("u", 0)])),
        );
        assert!(records.is_empty());
        let outcomes: Vec<_> = results.iter().map(|r| r.outcome).collect();
        assert_eq!(
            outcomes,
            [
                ElectionOutcome::ElectionNotNeeded,
                ElectionOutcome::UnknownTopicOrPartition,
                ElectionOutcome::UnknownTopicOrPartition
            ]
        );

        fence(&mut img, 1);
        assert_eq!(partition(&img).leader, 2);
        // Fenced, and out of the ISR: not available.
        let (records, results) = elect_leaders(&img, ElectionType::Preferred, None);
        assert!(records.is_empty());
        assert_eq!(
            results[0].outcome,
            ElectionOutcome::PreferredLeaderNotAvailable
        );

        // Back in the ISR (as after AlterPartition) and unfenced.
        apply_all(&mut img, &[MetadataRecord::UnfenceBroker { broker_id: 1 }]);
        let p = partition(&img);
        let topic_id = img.topic_by_name("t").unwrap().topic_id;
        apply_all(
            &mut img,
            &[PartitionImage {
                isr: vec![2, 3, 1],
                partition_epoch: p.partition_epoch + 1,
                ..p.clone()
            }
            .to_record(topic_id)],
        );
        let (records, results) = elect_leaders(&img, ElectionType::Preferred, None);
        assert_eq!(results[0].outcome, ElectionOutcome::Elected);
        apply_all(&mut img, &records);
        let after = partition(&img);
        assert_eq!((after.leader, after.leader_epoch), (1, p.leader_epoch + 1));
        // All partitions: those that need nothing are left out.
        let (records, results) = elect_leaders(&img, ElectionType::Preferred, None);
        assert!(records.is_empty() && results.is_empty());
    }

    #[test]
    fn unclean_election_is_asked_for_or_follows_the_topic_config() {
        let (mut img, _) = image(&[(1, None), (2, None)], &[1, 2]);
        // With a leader, an unclean election is not needed.
        let (_, results) = elect_leaders(&img, ElectionType::Unclean, Some(&named(&[("t", 0)])));
        assert_eq!(results[0].outcome, ElectionOutcome::ElectionNotNeeded);

        // Broker 2 drops out of sync, then broker 1 (the last ISR member)
        // is fenced: offline, with only the out-of-sync replica serving.
        fence(&mut img, 2);
        apply_all(&mut img, &[MetadataRecord::UnfenceBroker { broker_id: 2 }]);
        fence(&mut img, 1);
        assert_eq!(
            (partition(&img).leader, partition(&img).isr.clone()),
            (NO_LEADER, vec![1])
        );

        // The periodic pass leaves it offline while the topic forbids it.
        assert!(balance_leaders(&img, true, DEFAULTS).is_empty());
        let unclean = TopicDefaults {
            unclean_leader_election_enable: true,
            ..DEFAULTS
        };
        let records = balance_leaders(&img, false, unclean);
        assert_eq!(records.len(), 1);

        // An admin's unclean election needs no config.
        let (records, results) = elect_leaders(&img, ElectionType::Unclean, None);
        assert_eq!(results[0].outcome, ElectionOutcome::Elected);
        apply_all(&mut img, &records);
        assert_eq!(
            (partition(&img).leader, partition(&img).isr.clone()),
            (2, vec![2])
        );

        // With no replica serving there is no one to elect.
        fence(&mut img, 2);
        let (records, results) = elect_leaders(&img, ElectionType::Unclean, None);
        assert!(records.is_empty());
        assert_eq!(
            results[0].outcome,
            ElectionOutcome::EligibleLeadersNotAvailable
        );
    }
}
