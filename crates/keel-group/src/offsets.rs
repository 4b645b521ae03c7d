//! Committed offsets, per group, per topic partition (Kafka's
//! `OffsetMetadataManager`), and the retention rule that expires them.

use std::collections::BTreeMap;

use crate::group::{Group, GroupState};
use crate::records::OffsetCommitValue;

/// `(topic, partition)`.
pub type TopicPartitionKey = (String, i32);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Offsets {
    by_group: BTreeMap<String, BTreeMap<TopicPartitionKey, OffsetCommitValue>>,
}

impl Offsets {
    pub fn get(&self, group_id: &str, topic: &str, partition: i32) -> Option<&OffsetCommitValue> {
        self.by_group
            .get(group_id)?
            .get(&(topic.to_owned(), partition))
    }

    pub fn group(&self, group_id: &str) -> Option<&BTreeMap<TopicPartitionKey, OffsetCommitValue>> {
        self.by_group.get(group_id)
    }

    pub fn has_offsets(&self, group_id: &str) -> bool {
        self.by_group.get(group_id).is_some_and(|m| !m.is_empty())
    }

    pub fn put(&mut self, group_id: &str, topic: &str, partition: i32, value: OffsetCommitValue) {
        self.by_group
            .entry(group_id.to_owned())
            .or_default()
            .insert((topic.to_owned(), partition), value);
    }

    pub fn remove(
        &mut self,
        group_id: &str,
        topic: &str,
        partition: i32,
    ) -> Option<OffsetCommitValue> {
        let offsets = self.by_group.get_mut(group_id)?;
        let removed = offsets.remove(&(topic.to_owned(), partition));
        if offsets.is_empty() {
            self.by_group.remove(group_id);
        }
        removed
    }

    pub fn remove_group(&mut self, group_id: &str) -> Vec<TopicPartitionKey> {
        self.by_group
            .remove(group_id)
            .map(|m| m.into_keys().collect())
            .unwrap_or_default()
    }

    pub fn group_ids(&self) -> impl Iterator<Item = &String> {
        self.by_group.keys()
    }

    /// The offsets of `group` past retention at `now_ms` (Kafka's
    /// `ClassicGroup.offsetExpirationCondition`): for a consumer group only
    /// once it is Empty, counted from when it became Empty; for a group of
    /// simple consumers (no protocol type) from each offset's commit.
    pub fn expired(
        &self,
        group: Option<&Group>,
        group_id: &str,
        retention_ms: i64,
        now_ms: i64,
    ) -> Vec<TopicPartitionKey> {
        let Some(offsets) = self.by_group.get(group_id) else {
            return Vec::new();
        };
        let base: Box<dyn Fn(&OffsetCommitValue) -> i64> = match group {
            Some(g) if g.protocol_type.is_some() => {
                if g.state != GroupState::Empty {
                    return Vec::new();
                }
                let since = g.state_timestamp_ms;
                Box::new(move |_| since)
            }
            _ => Box::new(|v: &OffsetCommitValue| v.commit_timestamp_ms),
        };
        offsets
            .iter()
            .filter(|(_, v)| now_ms.saturating_sub(base(v)) >= retention_ms)
            .map(|(k, _)| k.clone())
            .collect()
    }
}
