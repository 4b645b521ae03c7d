//! What the group commands ask the cluster: connections shared between
//! brokers, the group's coordinator, its state and committed offsets, and
//! the partitions' leaders and offsets.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use anyhow::{anyhow, ensure, Result};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
use kafka_protocol::messages::{
    DescribeGroupsRequest, FindCoordinatorRequest, GroupId, OffsetFetchRequest,
};
use kafka_protocol::protocol::StrBytes;
use tokio::time::Instant;
use uuid::Uuid;

use crate::client::{self, Client};

/// FindCoordinator's key type for a consumer group.
const GROUP_KEY_TYPE: i8 = 0;

/// How long to keep asking while a coordinator is loading its groups or
/// not yet elected, as a freshly started broker answers.
const COORDINATOR_WAIT: Duration = Duration::from_secs(15);
const RETRY_BACKOFF: Duration = Duration::from_millis(200);

/// One connection per broker address, opened when first needed.
#[derive(Default)]
pub struct Pool {
    clients: HashMap<String, Client>,
}

/// The broker coordinating a group.
pub struct Coordinator {
    pub node_id: i32,
    pub address: String,
}

/// A topic's partitions and their leaders, from Metadata.
pub struct Topic {
    /// Nil before Metadata v10.
    pub id: Uuid,
    /// Each partition's leader as HOST:PORT, or why it has none.
    pub partitions: BTreeMap<i32, Result<String, String>>,
    /// Why the topic could not be described, such as UNKNOWN_TOPIC_OR_PARTITION.
    pub error: Option<String>,
}

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
    pub fn new() -> Pool {
        Pool::default()
    }

    pub async fn get(&mut self, address: &str) -> Result<&mut Client> {
        if !self.clients.contains_key(address) {
            let client = Client::connect(address).await?;
            self.clients.insert(address.to_string(), client);
        }
        Ok(self.clients.get_mut(address).expect("inserted above"))
    }

    /// Asks `bootstrap` which broker coordinates `group`.
    pub async fn coordinator(&mut self, bootstrap: &str, group: &str) -> Result<Coordinator> {
        let request = FindCoordinatorRequest::default()
            .with_key_type(GROUP_KEY_TYPE)
            .with_coordinator_keys(vec![StrBytes::from_string(group.to_string())]);
        let found = retry_loading(async || {
            let response = self.get(bootstrap).await?.send(request.clone()).await?;
            let found = response
                .coordinators
                .into_iter()
                .find(|c| c.key.as_str() == group)
                .ok_or_else(|| anyhow!("FindCoordinator response lacks group {group}"))?;
            Ok((found.error_code, found))
        })
        .await?;
        client::check_with_message(
            found.error_code,
            found.error_message.as_deref(),
            format!("finding the coordinator of group {group}"),
        )?;
        Ok(Coordinator {
            node_id: *found.node_id,
            address: host_port(&found.host, found.port),
        })
    }

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

    /// Metadata for the named topics, asked of `bootstrap`.
    pub async fn topics(
        &mut self,
        bootstrap: &str,
        names: &BTreeSet<String>,
    ) -> Result<BTreeMap<String, Topic>> {
        let mut topics = BTreeMap::new();
        if names.is_empty() {
            return Ok(topics);
        }
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let metadata = self.get(bootstrap).await?.metadata(Some(&names)).await?;
        for t in &metadata.topics {
            let Some(name) = t.name.as_deref() else {
                continue;
            };
            let error = (t.error_code != 0).then(|| client::error_name(t.error_code));
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let leader = if p.error_code != 0 && *p.leader_id < 0 {
                        Err(client::error_name(p.error_code))
                    } else {
                        client::broker_address(&metadata, *p.leader_id).map_err(|e| e.to_string())
                    };
                    (p.partition_index, leader)
                })
                .collect();
            let topic = Topic {
                id: t.topic_id,
                partitions,
                error,
            };
            topics.insert(name.to_string(), topic);
        }
        for name in names {
            ensure!(
                topics.contains_key(name),
                "Metadata response lacks topic {name}"
            );
        }
        Ok(topics)
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

/// Runs `attempt` until its error code is not one a coordinator answers
/// while it loads or moves, or [`COORDINATOR_WAIT`] has passed; returns the
/// last answer, which the caller checks.
pub async fn retry_loading<T>(mut attempt: impl AsyncFnMut() -> Result<(i16, T)>) -> Result<T> {
    let deadline = Instant::now() + COORDINATOR_WAIT;
    loop {
        let (code, answer) = attempt().await?;
        let retriable = code == ResponseError::CoordinatorLoadInProgress.code()
            || code == ResponseError::CoordinatorNotAvailable.code();
        if !retriable || Instant::now() >= deadline {
            return Ok(answer);
        }
        tokio::time::sleep(RETRY_BACKOFF).await;
    }
}

pub fn group_id(group: &str) -> GroupId {
    GroupId(StrBytes::from_string(group.to_string()))
}

/// HOST:PORT, with an IPv6 literal in brackets.
fn host_port(host: &str, port: i32) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_hosts_are_bracketed() {
        assert_eq!(host_port("127.0.0.1", 9092), "127.0.0.1:9092");
        assert_eq!(host_port("::1", 9092), "[::1]:9092");
    }

    #[tokio::test]
    async fn retries_stop_at_the_first_final_answer() {
        let mut codes = vec![0, 14, 15].into_iter().rev();
        let mut tries = 0;
        let answer = retry_loading(async || {
            tries += 1;
            let code = codes.next().unwrap();
            Ok((code, code))
        })
        .await
        .unwrap();
        assert_eq!((answer, tries), (0, 3));
        let mut tries = 0;
        let answer = retry_loading(async || {
            tries += 1;
            Ok((16, "not coordinator"))
        })
        .await
        .unwrap();
        assert_eq!((answer, tries), ("not coordinator", 1));
    }
}
