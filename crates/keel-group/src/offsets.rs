//! Committed offsets per group and topic partition, the offsets of open
//! transactions (Kafka's `OffsetMetadataManager`), and the retention rule
//! that expires them.

use std::collections::{BTreeMap, BTreeSet};

use crate::group::{Group, GroupState};
use crate::records::OffsetCommitValue;

/// `(topic, partition)`.
pub type TopicPartitionKey = (String, i32);

/// An offset and where its record sits in `__consumer_offsets`.
#[derive(Debug, Clone)]
struct Stored {
    value: OffsetCommitValue,
    /// Orders the records of one partition as the log does. Kafka compares
    /// record offsets when a transaction commits, so that a regular commit
    /// written after the transactional one keeps its place; a counter over
    /// the records this coordinator appends and replays orders them alike.
    log_order: u64,
}

type PartitionOffsets = BTreeMap<TopicPartitionKey, Stored>;

#[derive(Debug, Clone, Default)]
pub struct Offsets {
    committed: BTreeMap<String, PartitionOffsets>,
    /// Kafka's `pendingTransactionalOffsets`: the offsets of open
    /// transactions by producer id, then group. A commit marker moves them
    /// to `committed`; an abort marker drops them.
    pending_transactional: BTreeMap<i64, BTreeMap<String, PartitionOffsets>>,
    /// Kafka's `openTransactionsByGroup`: the producers holding pending
    /// offsets of a group, exactly those of `pending_transactional`.
    open_transactions_by_group: BTreeMap<String, BTreeSet<i64>>,
    next_log_order: u64,
}

impl Offsets {
    pub fn get(&self, group_id: &str, topic: &str, partition: i32) -> Option<&OffsetCommitValue> {
        let stored = self
            .committed
            .get(group_id)?
            .get(&(topic.to_owned(), partition))?;
        Some(&stored.value)
    }

    /// The committed offsets of a group, ordered by topic and partition.
    pub fn group(
        &self,
        group_id: &str,
    ) -> impl Iterator<Item = (&TopicPartitionKey, &OffsetCommitValue)> {
        self.committed
            .get(group_id)
            .into_iter()
            .flatten()
            .map(|(tp, stored)| (tp, &stored.value))
    }

    pub fn has_offsets(&self, group_id: &str) -> bool {
        self.committed.get(group_id).is_some_and(|m| !m.is_empty())
    }

    /// Whether some producer's open transaction holds offsets of the group.
    pub fn has_open_transactions(&self, group_id: &str) -> bool {
        self.open_transactions_by_group.contains_key(group_id)
    }

    /// Whether an open transaction holds an offset of the partition (Kafka's
    /// `hasPendingTransactionalOffsets`).
    pub fn has_pending(&self, group_id: &str, topic: &str, partition: i32) -> bool {
        let key = (topic.to_owned(), partition);
        self.open_transactions_by_group
            .get(group_id)
            .into_iter()
            .flatten()
            .any(|producer_id| self.pending_transactional[producer_id][group_id].contains_key(&key))
    }

    /// Commits an offset: a regular commit replaces the committed one at once.
    pub fn put(&mut self, group_id: &str, topic: &str, partition: i32, value: OffsetCommitValue) {
        let stored = self.stored(value);
        self.committed
            .entry(group_id.to_owned())
            .or_default()
            .insert((topic.to_owned(), partition), stored);
    }

    /// Keeps an offset of `producer_id`'s open transaction; a later one of
    /// the same transaction for the same partition replaces it.
    pub fn put_pending(
        &mut self,
        producer_id: i64,
        group_id: &str,
        topic: &str,
        partition: i32,
        value: OffsetCommitValue,
    ) {
        let stored = self.stored(value);
        self.pending_transactional
            .entry(producer_id)
            .or_default()
            .entry(group_id.to_owned())
            .or_default()
            .insert((topic.to_owned(), partition), stored);
        self.open_transactions_by_group
            .entry(group_id.to_owned())
            .or_default()
            .insert(producer_id);
    }

    fn stored(&mut self, value: OffsetCommitValue) -> Stored {
        let log_order = self.next_log_order;
        self.next_log_order += 1;
        Stored { value, log_order }
    }

    /// Applies the end of `producer_id`'s transaction to the groups that
    /// `in_partition` selects (those of the `__consumer_offsets` partition
    /// the marker was written to). On commit each pending offset becomes the
    /// committed one unless a commit written after it is already there.
    pub fn complete_transaction(
        &mut self,
        producer_id: i64,
        commit: bool,
        in_partition: impl Fn(&str) -> bool,
    ) {
        let Some(groups) = self.pending_transactional.get_mut(&producer_id) else {
            // Kafka ignores markers of producers with nothing pending here.
            return;
        };
        let completed: Vec<String> = groups.keys().filter(|g| in_partition(g)).cloned().collect();
        for group_id in completed {
            let pending = groups.remove(&group_id).expect("listed above");
            forget_producer(&mut self.open_transactions_by_group, &group_id, producer_id);
            if !commit {
                continue;
            }
            let committed = self.committed.entry(group_id).or_default();
            for (tp, offset) in pending {
                match committed.get(&tp) {
                    Some(newer) if newer.log_order > offset.log_order => {}
                    _ => {
                        committed.insert(tp, offset);
                    }
                }
            }
        }
        if groups.is_empty() {
            self.pending_transactional.remove(&producer_id);
        }
    }

    /// Deletes the partition's offset, committed and pending alike, as the
    /// replay of an offset tombstone does in Kafka. Returns whether there
    /// was one.
    pub fn remove(&mut self, group_id: &str, topic: &str, partition: i32) -> bool {
        let key = (topic.to_owned(), partition);
        let mut committed = false;
        if let Some(offsets) = self.committed.get_mut(group_id) {
            committed = offsets.remove(&key).is_some();
            if offsets.is_empty() {
                self.committed.remove(group_id);
            }
        }
        let pending = self.remove_pending(group_id, |tp| *tp == key);
        committed || !pending.is_empty()
    }

    /// Deletes every offset of a group, committed and pending; returns the
    /// partitions that had one, each once.
    pub fn remove_group(&mut self, group_id: &str) -> Vec<TopicPartitionKey> {
        let mut removed: BTreeSet<TopicPartitionKey> = self
            .committed
            .remove(group_id)
            .map(|m| m.into_keys().collect())
            .unwrap_or_default();
        removed.extend(self.remove_pending(group_id, |_| true));
        removed.into_iter().collect()
    }

    /// Drops the group's pending offsets that `select` picks, in every open
    /// transaction, and forgets the transactions left with none of them.
    fn remove_pending(
        &mut self,
        group_id: &str,
        select: impl Fn(&TopicPartitionKey) -> bool,
    ) -> Vec<TopicPartitionKey> {
        let producers: Vec<i64> = self
            .open_transactions_by_group
            .get(group_id)
            .into_iter()
            .flatten()
            .copied()
            .collect();
        let mut removed = Vec::new();
        for producer_id in producers {
            let groups = self
                .pending_transactional
                .get_mut(&producer_id)
                .expect("an open transaction has pending offsets");
            let offsets = groups
                .get_mut(group_id)
                .expect("an open transaction of the group has its offsets");
            offsets.retain(|tp, _| {
                let selected = select(tp);
                if selected {
                    removed.push(tp.clone());
                }
                !selected
            });
            if offsets.is_empty() {
                groups.remove(group_id);
                if groups.is_empty() {
                    self.pending_transactional.remove(&producer_id);
                }
                forget_producer(&mut self.open_transactions_by_group, group_id, producer_id);
            }
        }
        removed
    }

    /// Forgets every offset, committed and pending, of the groups `select`
    /// picks (their partition is unloaded: nothing is written).
    pub fn remove_groups(&mut self, select: impl Fn(&str) -> bool) {
        self.committed.retain(|g, _| !select(g));
        self.pending_transactional.retain(|_, groups| {
            groups.retain(|g, _| !select(g));
            !groups.is_empty()
        });
        self.open_transactions_by_group.retain(|g, _| !select(g));
    }

    /// Takes over the offsets of other groups (a partition's, just
    /// replayed). They keep their order among themselves and come before
    /// every commit made here later, as their records come before its
    /// records in the log.
    pub fn absorb(&mut self, other: Offsets) {
        let base = self.next_log_order;
        self.next_log_order += other.next_log_order;
        let rebase = |offsets: PartitionOffsets| {
            offsets
                .into_iter()
                .map(|(tp, stored)| {
                    let log_order = base + stored.log_order;
                    (
                        tp,
                        Stored {
                            log_order,
                            ..stored
                        },
                    )
                })
                .collect::<PartitionOffsets>()
        };
        for (group_id, offsets) in other.committed {
            self.committed.insert(group_id, rebase(offsets));
        }
        for (producer_id, groups) in other.pending_transactional {
            let pending = self.pending_transactional.entry(producer_id).or_default();
            for (group_id, offsets) in groups {
                pending.insert(group_id, rebase(offsets));
            }
        }
        self.open_transactions_by_group
            .extend(other.open_transactions_by_group);
    }

    /// Groups with committed offsets.
    pub fn group_ids(&self) -> impl Iterator<Item = &String> {
        self.committed.keys()
    }

    /// The committed offsets of `group` past retention at `now_ms` (Kafka's
    /// `ClassicGroup.offsetExpirationCondition`): for a consumer group only
    /// once it is Empty, counted from when it became Empty; for a group of
    /// simple consumers (no protocol type) from each offset's commit. As in
    /// Kafka, an offset an open transaction will replace does not expire.
    pub fn expired(
        &self,
        group: Option<&Group>,
        group_id: &str,
        retention_ms: i64,
        now_ms: i64,
    ) -> Vec<TopicPartitionKey> {
        let Some(offsets) = self.committed.get(group_id) else {
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
            .filter(|(_, s)| now_ms.saturating_sub(base(&s.value)) >= retention_ms)
            .filter(|((topic, p), _)| !self.has_pending(group_id, topic, *p))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Whether any transaction's offsets are still tracked (tests check that
    /// completed and deleted ones leave nothing behind).
    #[cfg(test)]
    pub(crate) fn tracks_transactions(&self) -> bool {
        !self.pending_transactional.is_empty() || !self.open_transactions_by_group.is_empty()
    }
}

/// Equal when they hold the same offsets, committed and pending. Where
/// their records sit in the log is not compared: a partition loaded on its
/// own numbers its records afresh, keeping their order within each group,
/// the only order `complete_transaction` looks at.
impl PartialEq for Offsets {
    fn eq(&self, other: &Self) -> bool {
        fn values(
            groups: &BTreeMap<String, PartitionOffsets>,
        ) -> Vec<(&String, &TopicPartitionKey, &OffsetCommitValue)> {
            groups
                .iter()
                .flat_map(|(g, offsets)| offsets.iter().map(move |(tp, s)| (g, tp, &s.value)))
                .collect()
        }
        values(&self.committed) == values(&other.committed)
            && self
                .pending_transactional
                .keys()
                .eq(other.pending_transactional.keys())
            && self
                .pending_transactional
                .values()
                .map(values)
                .eq(other.pending_transactional.values().map(values))
            && self.open_transactions_by_group == other.open_transactions_by_group
    }
}

impl Eq for Offsets {}

fn forget_producer(open: &mut BTreeMap<String, BTreeSet<i64>>, group_id: &str, producer_id: i64) {
    if let Some(producers) = open.get_mut(group_id) {
        producers.remove(&producer_id);
        if producers.is_empty() {
            open.remove(group_id);
        }
    }
}
