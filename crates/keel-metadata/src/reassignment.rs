//! Partition reassignment (Kafka's AlterPartitionReassignments): moving a
//! partition's replicas to other brokers without losing what it holds.
//!
//! Kafka's scheme (`PartitionReassignmentReplicas`): while a reassignment is
//! under way the partition's replicas are the target replicas followed by
//! those being removed, so the new ones fetch and catch up while the old
//! ones keep serving. Once every added replica is in the ISR the controller
//! completes it: the replicas become the target, the ISR keeps only target
//! replicas, and a leader outside the target hands over to one inside.
//! Cancelling reverts to the replicas from before.

use crate::cluster::{serving, NO_LEADER};
use crate::controller::{check_replica_list, ControllerError};
use crate::{MetadataImage, MetadataRecord, PartitionImage};

/// Starts, replaces or (with `target: None`) cancels the reassignment of
/// `topic`-`partition`. Returns the partition's record, or none when nothing
/// changes. `allow_replication_factor_change` is KIP-860's switch.
pub fn alter_reassignment(
    image: &MetadataImage,
    topic: &str,
    partition: i32,
    target: Option<&[i32]>,
    allow_replication_factor_change: bool,
) -> Result<Option<MetadataRecord>, ControllerError> {
    let (t, p) = image
        .partition(topic, partition)
        .ok_or(ControllerError::UnknownTopicOrPartition)?;
    let reverted = revert(p)?;
    let next = match target {
        None if !p.reassigning() => return Err(ControllerError::NoReassignmentInProgress),
        None => reverted,
        Some(target) => {
            check_replica_list(image, partition, target)?;
            if !allow_replication_factor_change && target.len() != reverted.replicas.len() {
                return Err(ControllerError::InvalidReplicationFactor(format!(
                    "The replication factor is changed from {} to {}, which the request does not allow",
                    reverted.replicas.len(),
                    target.len()
                )));
            }
            let adding = without(target, &reverted.replicas);
            let removing = without(&reverted.replicas, target);
            let started = PartitionImage {
                replicas: target.iter().chain(&removing).copied().collect(),
                adding_replicas: adding,
                removing_replicas: removing,
                ..reverted
            };
            // A pure removal or reordering may complete at once.
            complete_if_caught_up(image, &started).unwrap_or(started)
        }
    };
    if next == *p {
        return Ok(None);
    }
    let leader_changed = next.leader != p.leader;
    let next = PartitionImage {
        leader_epoch: p.leader_epoch + i32::from(leader_changed),
        partition_epoch: p.partition_epoch + 1,
        ..next
    };
    Ok(Some(next.to_record(t.topic_id)))
}

/// The partition as it was before any reassignment under way: the added
/// replicas leave replicas and ISR. Epochs are left to the caller.
fn revert(p: &PartitionImage) -> Result<PartitionImage, ControllerError> {
    if !p.reassigning() {
        return Ok(p.clone());
    }
    // Only added replicas in sync: reverting would leave the partition
    // without an in-sync replica.
    settled_without(p, &p.adding_replicas, |_| true).ok_or_else(|| {
        ControllerError::InvalidReplicaAssignment(
            "the reassignment cannot be changed or cancelled while only its added replicas are in sync"
                .into(),
        )
    })
}

/// `list` without the brokers in `excluded`, in order.
fn without(list: &[i32], excluded: &[i32]) -> Vec<i32> {
    list.iter()
        .copied()
        .filter(|b| !excluded.contains(b))
        .collect()
}

/// The partition with its reassignment completed, if every added replica
/// is in the ISR and some target replica is too (Kafka's
/// `maybeCompleteReassignment`). Epochs are left to the caller.
pub(crate) fn complete_if_caught_up(
    image: &MetadataImage,
    p: &PartitionImage,
) -> Option<PartitionImage> {
    if !p.reassigning() || !p.adding_replicas.iter().all(|b| p.isr.contains(b)) {
        return None;
    }
    settled_without(p, &p.removing_replicas, |b| serving(image, b))
}

/// `p` with no reassignment under way, on its replicas without `gone`;
/// `None` if no in-sync replica would be left. The leader stays if it is
/// still in sync, else the first remaining in-sync replica that
/// `can_lead` takes over (or none). Epochs are left to the caller.
fn settled_without(
    p: &PartitionImage,
    gone: &[i32],
    can_lead: impl Fn(i32) -> bool,
) -> Option<PartitionImage> {
    let isr = without(&p.isr, gone);
    if isr.is_empty() {
        return None;
    }
    let replicas = without(&p.replicas, gone);
    let leader = if isr.contains(&p.leader) {
        p.leader
    } else {
        replicas
            .iter()
            .copied()
            .find(|b| isr.contains(b) && can_lead(*b))
            .unwrap_or(NO_LEADER)
    };
    Some(PartitionImage {
        replicas,
        isr,
        leader,
        adding_replicas: Vec::new(),
        removing_replicas: Vec::new(),
        ..p.clone()
    })
}

/// The partitions with a reassignment under way, as
/// ListPartitionReassignments reports them: `(topic, partition)` pairs to
/// look at, or every partition when `None`.
pub fn ongoing_reassignments<'a>(
    image: &'a MetadataImage,
    wanted: Option<&'a [(String, i32)]>,
) -> Vec<(&'a str, &'a PartitionImage)> {
    let mut ongoing = Vec::new();
    match wanted {
        Some(wanted) => {
            for (topic, partition) in wanted {
                let found = image
                    .partition(topic, *partition)
                    .map(|(t, p)| (t.name.as_str(), p));
                if let Some((name, p)) = found.filter(|(_, p)| p.reassigning()) {
                    ongoing.push((name, p));
                }
            }
        }
        None => {
            for t in image.topics() {
                for p in t.partitions.values().filter(|p| p.reassigning()) {
                    ongoing.push((t.name.as_str(), p));
                }
            }
            ongoing.sort_by_key(|(name, p)| (*name, p.partition));
        }
    }
    ongoing
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::tests::{apply_all, image, partition};
    use crate::cluster::{alter_partition, IsrChange};

    fn reassign(img: &mut MetadataImage, target: Option<&[i32]>) -> Result<(), ControllerError> {
        if let Some(record) = alter_reassignment(img, "t", 0, target, true)? {
            apply_all(img, &[record]);
        }
        Ok(())
    }

    /// The leader reports `isr` as the partition's new ISR.
    fn alter_isr(img: &mut MetadataImage, isr: &[i32]) {
        let p = partition(img);
        let change = IsrChange {
            topic_id: img.topic_by_name("t").unwrap().topic_id,
            partition: 0,
            leader_id: p.leader,
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            new_isr: isr.to_vec(),
        };
        let (record, _) = alter_partition(img, &change).unwrap();
        apply_all(img, &[record]);
    }

    #[test]
    fn a_moved_partition_keeps_its_old_replicas_until_the_new_ones_are_in_sync() {
        let (mut img, _) = image(&[(1, None), (2, None), (3, None), (4, None)], &[1, 2]);
        reassign(&mut img, Some(&[3, 4])).unwrap();
        let p = partition(&img);
        assert_eq!(p.replicas, [3, 4, 1, 2]);
        assert_eq!(
            (p.adding_replicas.clone(), p.removing_replicas.clone()),
            (vec![3, 4], vec![1, 2])
        );
        assert_eq!(
            (p.leader, p.isr.clone(), p.leader_epoch),
            (1, vec![1, 2], 0)
        );

        // One new replica in sync is not enough.
        alter_isr(&mut img, &[1, 2, 3]);
        assert!(partition(&img).reassigning());
        // Both are: the old replicas go, and leadership moves to the target.
        alter_isr(&mut img, &[1, 2, 3, 4]);
        let p = partition(&img);
        assert!(!p.reassigning());
        assert_eq!(
            (p.replicas.clone(), p.isr.clone(), p.leader),
            (vec![3, 4], vec![3, 4], 3)
        );
        assert_eq!(p.leader_epoch, 1);
    }

    #[test]
    fn cancelling_reverts_and_removal_alone_completes_at_once() {
        let (mut img, _) = image(&[(1, None), (2, None), (3, None)], &[1, 2]);
        assert_eq!(
            reassign(&mut img, None),
            Err(ControllerError::NoReassignmentInProgress)
        );
        reassign(&mut img, Some(&[1, 3])).unwrap();
        alter_isr(&mut img, &[1, 2]);
        reassign(&mut img, None).unwrap();
        let p = partition(&img);
        assert!(!p.reassigning());
        assert_eq!(
            (p.replicas.clone(), p.isr.clone()),
            (vec![1, 2], vec![1, 2])
        );

        // Dropping a replica needs no catching up.
        reassign(&mut img, Some(&[2])).unwrap();
        let p = partition(&img);
        assert_eq!(
            (p.replicas.clone(), p.isr.clone(), p.leader),
            (vec![2], vec![2], 2)
        );
        assert!(!p.reassigning());
        // Asking for what is already there changes nothing.
        assert_eq!(alter_reassignment(&img, "t", 0, Some(&[2]), true), Ok(None));
    }

    #[test]
    fn bad_targets_are_refused_as_kafka_refuses_them() {
        let (img, _) = image(&[(1, None), (2, None)], &[1, 2]);
        let refused = |target: &[i32], allow_rf_change| {
            alter_reassignment(&img, "t", 0, Some(target), allow_rf_change).unwrap_err()
        };
        assert!(matches!(
            refused(&[], true),
            ControllerError::InvalidReplicaAssignment(_)
        ));
        assert!(matches!(
            refused(&[1, 1], true),
            ControllerError::InvalidReplicaAssignment(_)
        ));
        assert!(matches!(
            refused(&[1, 9], true),
            ControllerError::InvalidReplicaAssignment(_)
        ));
        assert!(matches!(
            refused(&[1], false),
            ControllerError::InvalidReplicationFactor(_)
        ));
        assert_eq!(
            alter_reassignment(&img, "t", 5, Some(&[1]), true),
            Err(ControllerError::UnknownTopicOrPartition)
        );
        assert_eq!(ongoing_reassignments(&img, None).len(), 0);
    }
}
