//! The follower's side of replication (Kafka's `ReplicaFetcherThread`): one
//! task per leader this broker follows, fetching every partition it follows
//! there with its replica id, appending what comes back with the leader's
//! offsets and epochs, and truncating first where its log diverged.
//!
//! A fetcher is started for a leader when the image first makes this
//! broker follow it, and ends by itself once it follows nothing there.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use parking_lot::Mutex;
use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::broker_client::BrokerConnection;
use crate::replica_manager::Partition;

/// Fetch v12 is the first with `last_fetched_epoch` and diverging epochs,
/// and the last that names topics, which every hosted partition knows.
const FETCH_VERSION: i16 = 12;
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

fn followed_partitions(broker: &Broker, leader: i32) -> Vec<Arc<Partition>> {
    broker
        .replicas
        .all()
        .into_iter()
        .filter(|p| p.leadership().leader == leader && !p.is_deleted())
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
        if !apply_response(leader, &partitions, response) {
            tokio::time::sleep(FETCH_BACKOFF).await;
        }
    }
}

fn fetch_request(broker: &Broker, partitions: &[Arc<Partition>]) -> FetchRequest {
    let mut topics: Vec<FetchTopic> = Vec::new();
    for p in partitions {
        let (log_end, log_start, last_epoch) = p.with_log(|log| {
            (
                log.log_end_offset(),
                log.log_start_offset(),
                log.leader_epoch_cache().latest_epoch().unwrap_or(-1),
            )
        });
        let fetch = FetchPartition::default()
            .with_partition(p.tp.partition)
            .with_current_leader_epoch(p.leader_epoch())
            .with_fetch_offset(log_end)
            .with_last_fetched_epoch(last_epoch)
            .with_log_start_offset(log_start)
            .with_partition_max_bytes(broker.config.replica_fetch_max_bytes);
        match topics.iter_mut().find(|t| t.topic.0.as_str() == p.tp.topic) {
            Some(t) => t.partitions.push(fetch),
            None => topics.push(
                FetchTopic::default()
                    .with_topic(TopicName(StrBytes::from_string(p.tp.topic.clone())))
                    .with_partitions(vec![fetch]),
            ),
        }
    }
    FetchRequest::default()
        .with_replica_id(BrokerId(broker.config.node_id))
        .with_max_wait_ms(broker.config.replica_fetch_wait_max_ms)
        .with_min_bytes(1)
        .with_max_bytes(RESPONSE_MAX_BYTES)
        .with_session_id(0)
        .with_session_epoch(crate::fetch_session::FINAL_EPOCH)
        .with_topics(topics)
}

/// Applies one response; false when nothing could be done and the fetcher
/// should back off (leadership is moving, or the log refused).
fn apply_response(leader: i32, partitions: &[Arc<Partition>], response: FetchResponse) -> bool {
    if response.error_code != 0 {
        tracing::debug!(leader, code = response.error_code, "fetch refused whole");
        return false;
    }
    let mut progressed = true;
    for topic in response.responses {
        for data in topic.partitions {
            let Some(partition) = partitions.iter().find(|p| {
                p.tp.topic == topic.topic.0.as_str() && p.tp.partition == data.partition_index
            }) else {
                continue;
            };
            if let Err(why) = apply_partition(partition, data) {
                tracing::debug!(partition = %partition.tp, leader, %why, "follower fetch not applied");
                progressed = false;
            }
        }
    }
    progressed
}

fn apply_partition(partition: &Partition, data: PartitionData) -> Result<(), String> {
    if data.diverging_epoch.epoch >= 0 {
        // Truncate to where both logs agree: the leader's end of that
        // epoch, or ours if we know the epoch to end earlier.
        let target = partition.with_log(|log| {
            log.leader_epoch_cache()
                .end_offset_for_epoch(data.diverging_epoch.epoch, log.log_end_offset())
                .filter(|(epoch, _)| *epoch == data.diverging_epoch.epoch)
                .map_or(data.diverging_epoch.end_offset, |(_, ours)| {
                    ours.min(data.diverging_epoch.end_offset)
                })
        });
        return partition.truncate_to(target).map_err(|e| e.to_string());
    }
    if data.error_code != 0 {
        return Err(format!(
            "{:?}",
            ResponseError::try_from_code(data.error_code)
        ));
    }
    let records: Bytes = data.records.unwrap_or_default();
    partition
        .append_as_follower(&records, data.high_watermark)
        .map_err(|e| e.to_string())?;
    if data.log_start_offset >= 0 {
        // DeleteRecords and retention on the leader move its log start.
        partition
            .with_log(|log| log.maybe_increment_log_start_offset(data.log_start_offset))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}
