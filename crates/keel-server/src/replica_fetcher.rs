//! The follower's side of replication (Kafka's `ReplicaFetcherThread`): one
//! task per leader this broker follows, fetching every partition it follows
//! there with its replica id, appending what comes back with the leader's
//! offsets and epochs, truncating first where its log diverged, and
//! resetting its log where the leader no longer has its fetch offset.
//!
//! A fetcher is started for a leader when the image first makes this
//! broker follow it, and ends by itself once it follows nothing there.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{
    BrokerId, FetchRequest, FetchResponse, ListOffsetsRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use keel_storage::StorageError;
use keel_types::TopicPartition;
use parking_lot::Mutex;
use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::broker_client::BrokerConnection;
use crate::handlers::list_offsets::{EARLIEST_TIMESTAMP, LATEST_TIMESTAMP};
use crate::replica_manager::Partition;

/// Fetch v12 is the first with `last_fetched_epoch` and diverging epochs,
/// and the last that names topics, which every hosted partition knows.
const FETCH_VERSION: i16 = 12;
/// ListOffsets v4+ carries the follower's current leader epoch.
const LIST_OFFSETS_VERSION: i16 = 7;
/// Kafka's `replica.fetch.backoff.ms`.
const FETCH_BACKOFF: Duration = Duration::from_millis(1000);
/// Kafka's `replica.fetch.response.max.bytes`.
const RESPONSE_MAX_BYTES: i32 = 10 * 1024 * 1024;
const CLIENT_ID: &str = "keel-replica-fetcher";

#[derive(Default)]
pub struct ReplicaFetchers {
    by_leader: Mutex<HashMap<i32, JoinHandle<()>>>,
}

impl ReplicaFetchers {
    /// Starts a fetcher for every leader this broker follows a partition of
    /// and has none yet.
    pub fn sync(&self, broker: &Arc<Broker>) {
        let node_id = broker.config.node_id;
        let leaders: HashSet<i32> = broker
            .replicas
            .all()
            .iter()
            .map(|p| p.leadership().leader)
            .filter(|&leader| leader >= 0 && leader != node_id)
            .collect();
        let mut running = self.by_leader.lock();
        running.retain(|_, task| !task.is_finished());
        for leader in leaders {
            running
                .entry(leader)
                .or_insert_with(|| tokio::spawn(fetch_from(broker.clone(), leader)));
        }
    }

    pub fn stop(&self) {
        for (_, task) in self.by_leader.lock().drain() {
            task.abort();
        }
    }
}

/// A partition this broker follows, with the leader epoch it follows in:
/// what a fetch's answer may be applied under.
type Followed = (Arc<Partition>, i32);

fn followed_partitions(broker: &Broker, leader: i32) -> Vec<Followed> {
    broker
        .replicas
        .all()
        .into_iter()
        .filter(|p| !p.is_deleted())
        .filter_map(|p| {
            let state = p.leadership();
            (state.leader == leader).then_some((p, state.leader_epoch))
        })
        .collect()
}

async fn fetch_from(broker: Arc<Broker>, leader: i32) {
    let mut connection = BrokerConnection::new(CLIENT_ID);
    loop {
        let partitions = followed_partitions(&broker, leader);
        if partitions.is_empty() {
            return;
        }
        let Some(address) = broker
            .image()
            .brokers
            .get(&leader)
            .map(|b| format!("{}:{}", b.host, b.port))
        else {
            tokio::time::sleep(FETCH_BACKOFF).await;
            continue;
        };
        let request = fetch_request(&broker, &partitions);
        let max_wait = Duration::from_millis(broker.config.replica_fetch_wait_max_ms as u64);
        let timeout = max_wait + FETCH_BACKOFF * 10;
        let response = match connection
            .send(&address, FETCH_VERSION, &request, timeout)
            .await
        {
            Ok(response) => response,
            Err(why) => {
                tracing::debug!(leader, %why, "fetch from the leader failed");
                tokio::time::sleep(FETCH_BACKOFF).await;
                continue;
            }
        };
        let (mut progressed, out_of_range) = apply_response(leader, &partitions, response);
        if !out_of_range.is_empty() {
            let exchange = LeaderExchange {
                broker: &broker,
                connection: &mut connection,
                address: &address,
                timeout,
            };
            progressed &= reset_out_of_range(exchange, leader, &out_of_range).await;
        }
        if !progressed {
            tokio::time::sleep(FETCH_BACKOFF).await;
        }
    }
}

/// `partitions` grouped by topic, in the order first seen, each made into
/// a request's partition entry by `entry`: how Fetch and ListOffsets ask.
fn by_topic<P>(
    partitions: &[Followed],
    mut entry: impl FnMut(&Partition, i32) -> P,
) -> Vec<(TopicName, Vec<P>)> {
    let mut topics: Vec<(TopicName, Vec<P>)> = Vec::new();
    for (p, leader_epoch) in partitions {
        let asked = entry(p, *leader_epoch);
        match topics.iter_mut().find(|(t, _)| t.0.as_str() == p.tp.topic) {
            Some((_, entries)) => entries.push(asked),
            None => topics.push((
                TopicName(StrBytes::from_string(p.tp.topic.clone())),
                vec![asked],
            )),
        }
    }
    topics
}

fn fetch_request(broker: &Broker, partitions: &[Followed]) -> FetchRequest {
    let topics = by_topic(partitions, |p, leader_epoch| {
        let (log_end, log_start, last_epoch) = p.with_log(|log| {
            (
                log.log_end_offset(),
                log.log_start_offset(),
                log.leader_epoch_cache().latest_epoch().unwrap_or(-1),
            )
        });
        FetchPartition::default()
            .with_partition(p.tp.partition)
            .with_current_leader_epoch(leader_epoch)
            .with_fetch_offset(log_end)
            .with_last_fetched_epoch(last_epoch)
            .with_log_start_offset(log_start)
            .with_partition_max_bytes(broker.config.replica_fetch_max_bytes)
    })
    .into_iter()
    .map(|(topic, partitions)| {
        FetchTopic::default()
            .with_topic(topic)
            .with_partitions(partitions)
    })
    .collect();
    FetchRequest::default()
        .with_replica_id(BrokerId(broker.config.node_id))
        .with_max_wait_ms(broker.config.replica_fetch_wait_max_ms)
        .with_min_bytes(1)
        .with_max_bytes(RESPONSE_MAX_BYTES)
        .with_session_id(0)
        .with_session_epoch(crate::fetch_session::FINAL_EPOCH)
        .with_topics(topics)
}

/// Applies one response. Returns false when nothing could be done and the
/// fetcher should back off (leadership is moving, or the log refused), and
/// the partitions whose fetch offset the leader called out of range.
fn apply_response(
    leader: i32,
    partitions: &[Followed],
    response: FetchResponse,
) -> (bool, Vec<Followed>) {
    if response.error_code != 0 {
        tracing::debug!(leader, code = response.error_code, "fetch refused whole");
        return (false, Vec::new());
    }
    let mut progressed = true;
    let mut out_of_range = Vec::new();
    for topic in response.responses {
        for data in topic.partitions {
            let Some(followed @ (partition, epoch)) = partitions.iter().find(|(p, _)| {
                p.tp.topic == topic.topic.0.as_str() && p.tp.partition == data.partition_index
            }) else {
                continue;
            };
            if data.error_code == ResponseError::OffsetOutOfRange.code() {
                out_of_range.push(followed.clone());
                continue;
            }
            if let Err(why) = apply_partition(partition, *epoch, data) {
                tracing::debug!(partition = %partition.tp, leader, %why, "follower fetch not applied");
                progressed = false;
            }
        }
    }
    (progressed, out_of_range)
}

/// Applies one partition's answer, fetched under `leader_epoch`; an answer
/// that crossed a leadership change is dropped.
fn apply_partition(
    partition: &Partition,
    leader_epoch: i32,
    data: PartitionData,
) -> Result<(), String> {
    let applied = |outcome: Result<bool, StorageError>| match outcome {
        Ok(true) => Ok(()),
        Ok(false) => Err("the leadership changed while fetching".to_string()),
        Err(e) => Err(e.to_string()),
    };
    if data.diverging_epoch.epoch >= 0 {
        let leader = (data.diverging_epoch.epoch, data.diverging_epoch.end_offset);
        return applied(partition.truncate_as_follower(leader_epoch, |log| {
            truncation_offset(log.end_offset_for_epoch(leader.0), leader).min(log.log_end_offset())
        }));
    }
    if data.error_code != 0 {
        return Err(format!(
            "{:?}",
            ResponseError::try_from_code(data.error_code)
        ));
    }
    let records: Bytes = data.records.unwrap_or_default();
    applied(partition.append_as_follower(leader_epoch, &records, data.high_watermark))?;
    if data.log_start_offset >= 0 {
        // DeleteRecords and retention on the leader move its log start.
        partition
            .with_log(|log| log.maybe_increment_log_start_offset(data.log_start_offset))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Where a follower truncates when the leader says its log diverged after
/// `leader` = (epoch, end offset): Kafka's `getOffsetTruncationState`.
/// `ours` is where the largest epoch we have up to that one ends in our
/// log. Both logs agree up to the earlier end of the same epoch. If we lack
/// that epoch, what we wrote after our older one is not the leader's: cut
/// there, and the next fetch checks again from our previous epoch. If the
/// leader's epoch is newer than all of ours, or we have none, its end
/// offset is all there is to go by.
fn truncation_offset(ours: Option<(i32, i64)>, leader: (i32, i64)) -> i64 {
    match ours {
        Some((epoch, end)) if epoch == leader.0 => end.min(leader.1),
        Some((_, end)) => end,
        None => leader.1,
    }
}

/// What a follower does once the leader called its fetch offset, its log
/// end, out of range (Kafka's `fetchOffsetAndTruncate`).
#[derive(Debug, PartialEq, Eq)]
enum OutOfRangeReset {
    /// The leader's log ends before ours, as after an unclean election:
    /// what we have past its end is not in its log.
    TruncateTo(i64),
    /// The leader's log starts past our end (retention or DeleteRecords
    /// while we were away): nothing we hold is still in its log.
    StartAt(i64),
    /// Our log end is within the leader's log by now (its log grew, or
    /// the refusal crossed a leadership change): fetch again at once, as
    /// Kafka does. The two ListOffsets round trips pace a leader that
    /// keeps refusing.
    Retry,
}

fn out_of_range_reset(log_end: i64, leader_start: i64, leader_end: i64) -> OutOfRangeReset {
    if leader_end < log_end {
        OutOfRangeReset::TruncateTo(leader_end)
    } else if leader_start > log_end {
        OutOfRangeReset::StartAt(leader_start)
    } else {
        OutOfRangeReset::Retry
    }
}

/// The fetcher's connection to its leader, for requests besides Fetch.
struct LeaderExchange<'a> {
    broker: &'a Broker,
    connection: &'a mut BrokerConnection,
    address: &'a str,
    timeout: Duration,
}

/// Learns the leader's log start and end for `partitions` (ListOffsets as
/// a replica, which sees up to the log end) and truncates each follower
/// log as [`out_of_range_reset`] says. Returns whether every partition was
/// reset; otherwise the fetcher backs off before fetching again.
async fn reset_out_of_range(
    mut exchange: LeaderExchange<'_>,
    leader: i32,
    partitions: &[Followed],
) -> bool {
    let ends = list_offsets(&mut exchange, partitions, LATEST_TIMESTAMP).await;
    let starts = list_offsets(&mut exchange, partitions, EARLIEST_TIMESTAMP).await;
    let (ends, starts) = match (ends, starts) {
        (Ok(ends), Ok(starts)) => (ends, starts),
        (Err(why), _) | (_, Err(why)) => {
            tracing::debug!(leader, %why, "asking the leader for its log offsets failed");
            return false;
        }
    };
    let mut reset = true;
    for (partition, epoch) in partitions {
        let offsets = ends.get(&partition.tp).zip(starts.get(&partition.tp));
        let Some((Ok(leader_end), Ok(leader_start))) = offsets else {
            tracing::debug!(partition = %partition.tp, leader, ?offsets, "the leader gave no log offsets");
            reset = false;
            continue;
        };
        let log_end = partition.log_end_offset();
        // The answers took a round trip: the partition acts only if it
        // still follows in the epoch they were asked under.
        let done = match out_of_range_reset(log_end, *leader_start, *leader_end) {
            OutOfRangeReset::TruncateTo(offset) => {
                partition.truncate_as_follower(*epoch, |_| offset)
            }
            OutOfRangeReset::StartAt(offset) => {
                partition.truncate_fully_and_start_at(*epoch, offset)
            }
            OutOfRangeReset::Retry => Ok(true),
        };
        match done {
            Ok(true) => {}
            Ok(false) => reset = false,
            Err(e) => {
                tracing::error!(partition = %partition.tp, error = %e, "resetting an out-of-range follower log failed");
                reset = false;
            }
        }
    }
    reset
}

/// One ListOffsets at `timestamp` for `partitions`, as replica of this
/// broker: each partition's offset or error.
async fn list_offsets(
    exchange: &mut LeaderExchange<'_>,
    partitions: &[Followed],
    timestamp: i64,
) -> Result<HashMap<TopicPartition, Result<i64, i16>>, String> {
    let topics = by_topic(partitions, |p, leader_epoch| {
        ListOffsetsPartition::default()
            .with_partition_index(p.tp.partition)
            .with_current_leader_epoch(leader_epoch)
            .with_timestamp(timestamp)
    })
    .into_iter()
    .map(|(name, partitions)| {
        ListOffsetsTopic::default()
            .with_name(name)
            .with_partitions(partitions)
    })
    .collect();
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(exchange.broker.config.node_id))
        .with_topics(topics);
    let response = exchange
        .connection
        .send(
            exchange.address,
            LIST_OFFSETS_VERSION,
            &request,
            exchange.timeout,
        )
        .await?;
    Ok(response
        .topics
        .into_iter()
        .flat_map(|t| {
            let topic = t.name.0.to_string();
            t.partitions.into_iter().map(move |p| {
                let answer = if p.error_code == 0 {
                    Ok(p.offset)
                } else {
                    Err(p.error_code)
                };
                (
                    TopicPartition::new(topic.clone(), p.partition_index),
                    answer,
                )
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_follows_the_leaders_log() {
        use OutOfRangeReset::*;
        // The leader lost records we have: cut back to its end.
        assert_eq!(out_of_range_reset(120, 0, 100), TruncateTo(100));
        // The leader deleted everything we have and more.
        assert_eq!(out_of_range_reset(100, 300, 350), StartAt(300));
        // Our end is inside the leader's log again.
        assert_eq!(out_of_range_reset(100, 50, 100), Retry);
        assert_eq!(out_of_range_reset(100, 100, 150), Retry);
    }

    #[test]
    fn truncation_stops_where_both_logs_agree() {
        // Same epoch: the earlier of the two ends.
        assert_eq!(truncation_offset(Some((3, 80)), (3, 60)), 60);
        assert_eq!(truncation_offset(Some((3, 50)), (3, 60)), 50);
        // We lack the leader's epoch: the end of our older one.
        assert_eq!(truncation_offset(Some((2, 50)), (3, 80)), 50);
        // The leader's epoch is newer than all of ours: the leader's end.
        assert_eq!(truncation_offset(None, (3, 80)), 80);
    }
}
