//! What the group commands ask the cluster beyond what every admin command
//! does (`crate::commands::cluster`): a group's state and committed
//! offsets, and the partitions' offsets.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{anyhow, Result};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
use kafka_protocol::messages::{DescribeGroupsRequest, GroupId, OffsetFetchRequest};
use kafka_protocol::protocol::StrBytes;

use crate::client;
use crate::commands::cluster::{retry_loading, Coordinator, Pool, Topic};

/// A partition's log start offset and log end offset (high watermark).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LogRange {
    pub start: i64,
    pub end: i64,
}

/// A group's committed offset for one partition.
pub struct Committed {
    pub offset: i64,
    pub metadata: Option<String>,
}

pub type TopicPartition = (String, i32);

impl Pool {
    /// DescribeGroups for one group; None when the group does not exist.
    pub async fn describe_group(
        &mut self,
        coordinator: &Coordinator,
        group: &str,
    ) -> Result<Option<DescribedGroup>> {
        let request = DescribeGroupsRequest::default().with_groups(vec![group_id(group)]);
        let described = retry_loading(async || {
            let response = self
                .get(&coordinator.address)
                .await?
                .send(request.clone())
                .await?;
            let described = response
                .groups
                .into_iter()
                .find(|g| g.group_id.as_str() == group)
                .ok_or_else(|| anyhow!("DescribeGroups response lacks group {group}"))?;
            Ok((described.error_code, described))
        })
        .await?;
        // Before v6 (KIP-1043) a missing group is described as Dead.
        if described.error_code == ResponseError::GroupIdNotFound.code()
            || (described.error_code == 0 && described.group_state.as_str() == "Dead")
        {
            return Ok(None);
        }
        client::check_with_message(
            described.error_code,
            described.error_message.as_deref(),
            format!("describing group {group}"),
        )?;
        Ok(Some(described))
    }

    /// OffsetFetch for all of a group's committed offsets.
    pub async fn committed_offsets(
        &mut self,
        coordinator: &Coordinator,
        group: &str,
    ) -> Result<BTreeMap<TopicPartition, Committed>> {
        // No topics: all of them. Not require_stable: the tools show what
        // is committed, including offsets of open transactions.
        let request =
            OffsetFetchRequest::default().with_groups(vec![OffsetFetchRequestGroup::default()
                .with_group_id(group_id(group))
                .with_topics(None)]);
        let fetched = retry_loading(async || {
            let response = self
                .get(&coordinator.address)
                .await?
                .send(request.clone())
                .await?;
            let fetched = response
                .groups
                .into_iter()
                .find(|g| g.group_id.as_str() == group)
                .ok_or_else(|| anyhow!("OffsetFetch response lacks group {group}"))?;
            Ok((fetched.error_code, fetched))
        })
        .await?;
        let what = format!("fetching the committed offsets of group {group}");
        client::check(fetched.error_code, &what)?;
        let mut committed = BTreeMap::new();
        for topic in fetched.topics {
            for p in topic.partitions {
                let name = topic.name.to_string();
                client::check(
                    p.error_code,
                    format!("{what}: {name}-{}", p.partition_index),
                )?;
                // -1: no offset committed for this partition.
                if p.committed_offset >= 0 {
                    let metadata = p.metadata.map(|m| m.to_string());
                    let offset = p.committed_offset;
                    committed.insert((name, p.partition_index), Committed { offset, metadata });
                }
            }
        }
        Ok(committed)
    }

    /// ListOffsets at `timestamp` for each wanted partition, one request
    /// per leader and topic; a partition whose offset could not be listed
    /// maps to the reason.
    pub async fn list_offsets(
        &mut self,
        topics: &BTreeMap<String, Topic>,
        wanted: &BTreeSet<TopicPartition>,
        timestamp: i64,
    ) -> BTreeMap<TopicPartition, Result<i64, String>> {
        let mut offsets = BTreeMap::new();
        let mut by_leader: BTreeMap<(&str, &str), Vec<i32>> = BTreeMap::new();
        for (topic, partition) in wanted {
            let leader = match topics.get(topic) {
                None => Err("no metadata".to_string()),
                Some(t) => match (&t.error, t.partitions.get(partition)) {
                    (Some(error), _) => Err(error.clone()),
                    (None, None) => Err("no such partition".to_string()),
                    (None, Some(leader)) => leader.as_deref().map_err(Clone::clone),
                },
            };
            match leader {
                Ok(leader) => by_leader
                    .entry((leader, topic.as_str()))
                    .or_default()
                    .push(*partition),
                Err(e) => {
                    offsets.insert((topic.clone(), *partition), Err(e));
                }
            }
        }
        for ((leader, topic), partitions) in by_leader {
            let listed = match self.get(leader).await {
                Ok(client) => client.list_offsets(topic, &partitions, timestamp).await,
                Err(e) => Err(e),
            };
            for p in partitions {
                let offset = match &listed {
                    Ok(listed) => listed[&p]
                        .as_ref()
                        .map(|o| *o)
                        .map_err(|e| format!("{e:#}")),
                    Err(e) => Err(format!("{e:#}")),
                };
                offsets.insert((topic.to_string(), p), offset);
            }
        }
        offsets
    }

    /// Each wanted partition's log start and log end offsets.
    pub async fn log_ranges(
        &mut self,
        topics: &BTreeMap<String, Topic>,
        wanted: &BTreeSet<TopicPartition>,
    ) -> BTreeMap<TopicPartition, Result<LogRange, String>> {
        // Two requests: Kafka rejects a partition listed twice in one.
        let starts = self
            .list_offsets(topics, wanted, client::EARLIEST_TIMESTAMP)
            .await;
        let mut ends = self
            .list_offsets(topics, wanted, client::LATEST_TIMESTAMP)
            .await;
        starts
            .into_iter()
            .map(|(tp, start)| {
                let end = ends.remove(&tp).expect("both list every wanted partition");
                let range = start.and_then(|start| end.map(|end| LogRange { start, end }));
                (tp, range)
            })
            .collect()
    }
}

pub fn group_id(group: &str) -> GroupId {
    GroupId(StrBytes::from_string(group.to_string()))
}
