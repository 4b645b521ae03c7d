//! Which partitions of a coordinator's internal topic (`__consumer_offsets`,
//! `__transaction_state`) this broker leads. A coordinator moves with that
//! leadership (Kafka's `onElection` and `onResignation`): it loads a
//! partition it starts to lead, or leads in a new epoch, from the
//! replicated log, and unloads one it stops leading.

use std::collections::BTreeMap;

use keel_metadata::MetadataImage;
use uuid::Uuid;

/// What a coordinator follows of its topic. Kept behind an async lock that
/// is held while the coordinator loads and unloads, so leadership changes
/// reach it one image at a time, in order.
pub(crate) struct CoordinatorLeadership {
    topic: &'static str,
    /// The offset of the image followed. An older image (a request's reply
    /// published after the watcher published a newer one) would undo
    /// leadership changes, and is not followed.
    image_offset: i64,
    /// The topic's id: a recreated topic is another one, whose partitions
    /// are loaded afresh whatever their epochs.
    topic_id: Option<Uuid>,
    /// The partitions this broker leads, with their leader epochs.
    partitions: BTreeMap<i32, i32>,
}

/// What changed between the image followed and a newer one.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct LeadershipChange {
    /// Partitions to unload.
    pub lost: Vec<i32>,
    /// Partitions to load, with the leader epoch they are led at (the
    /// transaction coordinator's coordinator epoch).
    pub gained: Vec<(i32, i32)>,
}

impl CoordinatorLeadership {
    pub(crate) fn new(topic: &'static str) -> Self {
        Self {
            topic,
            image_offset: i64::MIN,
            topic_id: None,
            partitions: BTreeMap::new(),
        }
    }

    /// The id of the topic as last followed: `None` before it exists.
    pub(crate) fn topic_id(&self) -> Option<Uuid> {
        self.topic_id
    }

    /// Moves to `image`, returning what to unload and load; `None` for an
    /// image older than the one followed.
    pub(crate) fn follow(
        &mut self,
        image: &MetadataImage,
        node_id: i32,
    ) -> Option<LeadershipChange> {
        if image.offset < self.image_offset {
            return None;
        }
        let topic_id = image.topic_by_name(self.topic).map(|t| t.topic_id);
        let led = partitions_led(image, self.topic, node_id);
        let recreated = topic_id != self.topic_id;
        let lost = self
            .partitions
            .keys()
            .filter(|p| recreated || !led.contains_key(p))
            .copied()
            .collect();
        let gained = led
            .iter()
            .filter(|(p, epoch)| recreated || self.partitions.get(p) != Some(epoch))
            .map(|(&p, &epoch)| (p, epoch))
            .collect();
        self.image_offset = image.offset;
        self.topic_id = topic_id;
        self.partitions = led;
        Some(LeadershipChange { lost, gained })
    }
}

/// The partitions of `topic` that `node_id` leads, with their leader epochs.
pub(crate) fn partitions_led(
    image: &MetadataImage,
    topic: &str,
    node_id: i32,
) -> BTreeMap<i32, i32> {
    image
        .topic_by_name(topic)
        .map(|t| {
            t.partitions
                .values()
                .filter(|p| p.leader == node_id)
                .map(|p| (p.partition, p.leader_epoch))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use keel_metadata::MetadataRecord;

    use super::*;

    const TOPIC: &str = "__transaction_state";

    fn topic(image: &mut MetadataImage, offset: i64, id: u128) {
        image
            .apply(
                offset,
                &MetadataRecord::Topic {
                    name: TOPIC.into(),
                    topic_id: Uuid::from_u128(id),
                },
            )
            .unwrap();
    }

    fn partition(
        image: &mut MetadataImage,
        offset: i64,
        id: u128,
        p: i32,
        leader: i32,
        epoch: i32,
    ) {
        image
            .apply(
                offset,
                &MetadataRecord::Partition {
                    topic_id: Uuid::from_u128(id),
                    partition: p,
                    replicas: vec![1, 2],
                    isr: vec![1, 2],
                    leader,
                    leader_epoch: epoch,
                    partition_epoch: epoch,
                    adding_replicas: vec![],
                    removing_replicas: vec![],
                },
            )
            .unwrap();
    }

    fn change(lost: &[i32], gained: &[(i32, i32)]) -> Option<LeadershipChange> {
        Some(LeadershipChange {
            lost: lost.to_vec(),
            gained: gained.to_vec(),
        })
    }

    #[test]
    fn follows_gains_new_epochs_and_losses_and_ignores_older_images() {
        let mut followed = CoordinatorLeadership::new(TOPIC);
        let mut image = MetadataImage::empty();
        topic(&mut image, 1, 7);
        partition(&mut image, 2, 7, 0, 1, 0);
        partition(&mut image, 3, 7, 1, 2, 0);
        let older = image.clone();
        assert_eq!(followed.follow(&image, 1), change(&[], &[(0, 0)]));
        assert_eq!(followed.follow(&image, 1), change(&[], &[]));

        // Partition 1 comes to this broker; partition 0 is led anew (a
        // leader epoch bump) and must be reloaded.
        partition(&mut image, 4, 7, 1, 1, 1);
        partition(&mut image, 5, 7, 0, 1, 1);
        assert_eq!(followed.follow(&image, 1), change(&[], &[(0, 1), (1, 1)]));

        // A reply's image published late would hand partition 1 back.
        assert_eq!(followed.follow(&older, 1), None);

        partition(&mut image, 6, 7, 0, 2, 2);
        assert_eq!(followed.follow(&image, 1), change(&[0], &[]));
    }

    #[test]
    fn a_recreated_topic_is_unloaded_and_loaded_afresh() {
        let mut followed = CoordinatorLeadership::new(TOPIC);
        let mut image = MetadataImage::empty();
        topic(&mut image, 1, 7);
        partition(&mut image, 2, 7, 0, 1, 0);
        assert_eq!(followed.follow(&image, 1), change(&[], &[(0, 0)]));

        let mut recreated = MetadataImage::empty();
        topic(&mut recreated, 10, 8);
        partition(&mut recreated, 11, 8, 0, 1, 0);
        assert_eq!(followed.follow(&recreated, 1), change(&[0], &[(0, 0)]));
    }
}
