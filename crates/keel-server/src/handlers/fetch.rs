use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, EpochEndOffset, FetchableTopicResponse, LeaderIdAndEpoch, PartitionData,
};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse, ProducerId, TopicName};
use kafka_protocol::ResponseError;
use keel_storage::{AbortedTxn, FetchSlice, StorageError};
use keel_types::TopicPartition;
use tokio::time::Instant;

use super::{leadership_error, topic_name};
use crate::broker::Broker;
use crate::codec::FileRegion;
use crate::dispatch::RequestContext;
use crate::errors::storage_error;
use crate::fetch_session::{PartitionFetch, PartitionKey, FINAL_EPOCH};
use crate::replica_manager::{Partition, ReadBound};

/// Fetch v13 names topics by id instead of by name.
const TOPIC_IDS_VERSION: i16 = 13;
/// Fetch sessions exist from v7.
const SESSIONS_VERSION: i16 = 7;
/// From v15 a follower names itself in `replica_state`, not `replica_id`.
const REPLICA_STATE_VERSION: i16 = 15;

/// Kafka's check of a fetch's last fetched epoch (Fetch v12+, sent by
/// followers): that epoch must end, in this log, at or after the fetch
/// offset; otherwise the fetcher's log diverged and it must first truncate
/// to the returned (epoch, end offset). An epoch this log cannot place, or
/// a fetch offset below the log start, is out of range.
fn divergence(
    partition: &Partition,
    fetch: &PartitionFetch,
) -> Result<Option<(i32, i64)>, ResponseError> {
    if fetch.last_fetched_epoch < 0 {
        return Ok(None);
    }
    partition.with_log(|log| {
        let (epoch, end_offset) = log
            .end_offset_for_epoch(fetch.last_fetched_epoch)
            .ok_or(ResponseError::OffsetOutOfRange)?;
        if fetch.fetch_offset < log.log_start_offset() {
            return Err(ResponseError::OffsetOutOfRange);
        }
        Ok(
            (epoch < fetch.last_fetched_epoch || end_offset < fetch.fetch_offset)
                .then_some((epoch, end_offset)),
        )
    })
}

struct PartitionResult {
    key: PartitionKey,
    topic_id: uuid::Uuid,
    error: Option<ResponseError>,
    /// (leader, leader epoch) as this broker knows them, for KIP-951.
    leader: (i32, i32),
    /// Where a follower's log parts from the leader's: (epoch, end offset).
    diverging_epoch: Option<(i32, i64)>,
    high_watermark: i64,
    last_stable_offset: i64,
    log_start_offset: i64,
    /// Only for read_committed consumers.
    aborted_transactions: Option<Vec<AbortedTxn>>,
    /// Read bytes, or the stand-in of `file_region`.
    records: Bytes,
    file_region: Option<FileRegion>,
}

pub async fn handle(
    broker: &Broker,
    ctx: &RequestContext<'_>,
    request: FetchRequest,
) -> (FetchResponse, Vec<FileRegion>) {
    let by_id = ctx.api_version >= TOPIC_IDS_VERSION;
    let image = broker.image();
    // An unknown topic id keeps its id as the name so that the answer can
    // carry UNKNOWN_TOPIC_ID for it.
    let name_of = |name: &TopicName, id: &uuid::Uuid| -> String {
        if by_id {
            image
                .topic_by_id(id)
                .map_or_else(|| format!("<unknown {id}>"), |t| t.name.clone())
        } else {
            name.0.to_string()
        }
    };
    let requested: Vec<(PartitionKey, PartitionFetch)> = request
        .topics
        .iter()
        .flat_map(|t| {
            let topic = name_of(&t.topic, &t.topic_id);
            t.partitions.iter().map(move |p| {
                (
                    PartitionKey {
                        topic: topic.clone(),
                        partition: p.partition,
                    },
                    PartitionFetch {
                        topic_id: t.topic_id,
                        fetch_offset: p.fetch_offset,
                        partition_max_bytes: p.partition_max_bytes,
                        current_leader_epoch: p.current_leader_epoch,
                        last_fetched_epoch: p.last_fetched_epoch,
                    },
                )
            })
        })
        .collect();
    let forgotten: Vec<PartitionKey> = request
        .forgotten_topics_data
        .iter()
        .flat_map(|t| {
            let topic = name_of(&t.topic, &t.topic_id);
            t.partitions.iter().map(move |&partition| PartitionKey {
                topic: topic.clone(),
                partition,
            })
        })
        .collect();
    let (session_id, epoch) = if ctx.api_version >= SESSIONS_VERSION {
        (request.session_id, request.session_epoch)
    } else {
        (0, FINAL_EPOCH)
    };
    let session = match broker
        .fetch_sessions
        .resolve(session_id, epoch, requested, forgotten)
    {
        Ok(session) => session,
        Err(error) => {
            return (
                FetchResponse::default().with_error_code(error.code()),
                Vec::new(),
            )
        }
    };

    // A follower names itself; consumers send -1.
    let replica_id = if ctx.api_version >= REPLICA_STATE_VERSION {
        request.replica_state.replica_id.0
    } else {
        request.replica_id.0
    };
    let follower = replica_id >= 0;
    let bound = if follower {
        ReadBound::LogEnd
    } else if request.isolation_level == super::READ_COMMITTED {
        ReadBound::LastStable
    } else {
        ReadBound::HighWatermark
    };
    let now = crate::broker::now_ms();
    let deadline = Instant::now() + Duration::from_millis(request.max_wait_ms.max(0) as u64);
    let response_bytes_max = if request.max_bytes > 0 {
        request.max_bytes.min(broker.config.fetch_max_bytes)
    } else {
        broker.config.fetch_max_bytes
    } as u32;
    let results = loop {
        let mut watches = Vec::new();
        let mut results = Vec::with_capacity(session.partitions.len());
        let mut total_bytes: u32 = 0;
        let mut any_error = false;
        for (key, fetch) in &session.partitions {
            let tp = TopicPartition::new(key.topic.clone(), key.partition);
            let partition = broker
                .replicas
                .get(&tp)
                .filter(|p| !by_id || p.topic_id == fetch.topic_id);
            let mut result = PartitionResult {
                key: key.clone(),
                topic_id: fetch.topic_id,
                error: None,
                leader: (-1, -1),
                diverging_epoch: None,
                high_watermark: -1,
                last_stable_offset: -1,
                log_start_offset: -1,
                aborted_transactions: None,
                records: Bytes::new(),
                file_region: None,
            };
            let Some(partition) = partition else {
                result.error = Some(if by_id {
                    ResponseError::UnknownTopicId
                } else {
                    ResponseError::UnknownTopicOrPartition
                });
                any_error = true;
                results.push(result);
                continue;
            };
            result.topic_id = partition.topic_id;
            let state = partition.leadership();
            result.leader = (state.leader, state.leader_epoch);
            // Fetch treats any negative epoch as none given.
            let current_leader_epoch =
                (fetch.current_leader_epoch >= 0).then_some(fetch.current_leader_epoch);
            let refusal = leadership_error(state, broker.config.node_id, current_leader_epoch);
            // A fetch naming a replica id must come from a replica: Kafka
            // refuses anyone else the data above the high watermark.
            let refusal = refusal.or_else(|| {
                (follower && !partition.is_replica(replica_id))
                    .then_some(ResponseError::NotLeaderOrFollower)
            });
            let (refusal, diverging) =
                match refusal.map_or_else(|| divergence(&partition, fetch), Err) {
                    Ok(diverging) => (None, diverging),
                    Err(refusal) => (Some(refusal), None),
                };
            if refusal.is_some() || diverging.is_some() {
                result.error = refusal;
                result.diverging_epoch = diverging;
                result.high_watermark = partition.high_watermark();
                result.log_start_offset = partition.log_start_offset();
                any_error = true;
                results.push(result);
                continue;
            }
            // Subscribe before reading, so an append between the read and
            // the wait still wakes us. Followers wait for appends,
            // consumers for the high watermark.
            if follower {
                if let Some(change) =
                    partition.record_follower_fetch(replica_id, fetch.fetch_offset, now)
                {
                    broker.propose_isr_change(partition.clone(), change);
                }
                watches.push(partition.subscribe_log_end());
            } else {
                watches.push(partition.subscribe());
            }
            let budget =
                (fetch.partition_max_bytes.max(0) as u32).min(response_bytes_max - total_bytes);
            // Kafka's rule: the first partition with data returns at least
            // one whole batch even if it exceeds the limits, so a batch
            // larger than max bytes can never stall a consumer.
            let min_one_batch = total_bytes == 0;
            let read = partition
                .read(fetch.fetch_offset, budget, min_one_batch, bound)
                .and_then(|r| Ok((r.slice.as_ref().map(records_of).transpose()?, r)));
            match read {
                Ok((records, read)) => {
                    result.high_watermark = read.high_watermark;
                    result.last_stable_offset = read.last_stable_offset;
                    result.log_start_offset = read.log_start_offset;
                    result.aborted_transactions = read.aborted_transactions;
                    if let Some((bytes, file_region)) = records {
                        total_bytes = total_bytes
                            .saturating_add(bytes.len() as u32)
                            .min(response_bytes_max);
                        result.records = bytes;
                        result.file_region = file_region;
                    }
                }
                Err(e) => {
                    result.error = Some(storage_error(&e));
                    result.high_watermark = partition.high_watermark();
                    result.log_start_offset = partition.log_start_offset();
                    any_error = true;
                }
            }
            results.push(result);
        }
        // min_bytes <= 0 asks for an immediate answer, data or not.
        let satisfied = total_bytes as i64 >= i64::from(request.min_bytes) || any_error;
        if satisfied || Instant::now() >= deadline {
            break results;
        }
        if !wait_for_append(&mut watches, deadline).await {
            // Timed out: answer with what there is now (usually nothing).
            break results;
        }
    };
    respond(broker, session.session_id, session.incremental, results)
}

/// A located slice as the answer carries it: a file region sent with
/// sendfile when it is whole batches and fits a stand-in, else read bytes
/// (trimmed to whole batches, which our followers need and Kafka's clients
/// prefer).
fn records_of(slice: &FetchSlice) -> Result<(Bytes, Option<FileRegion>), StorageError> {
    if let Some(file) = slice.whole_batches_file() {
        let region = FileRegion {
            file: file.clone(),
            position: slice.position(),
            len: usize::try_from(slice.len()).expect("fetch length fits memory"),
        };
        if let Some(stand_in) = region.stand_in() {
            return Ok((stand_in, Some(region)));
        }
    }
    Ok((slice.read_bytes()?, None))
}

/// Waits until any watched partition's high watermark moves, or the
/// deadline. Returns false on timeout.
async fn wait_for_append(
    watches: &mut [tokio::sync::watch::Receiver<i64>],
    deadline: Instant,
) -> bool {
    if watches.is_empty() {
        tokio::time::sleep_until(deadline).await;
        return false;
    }
    let changed = futures::future::select_all(watches.iter_mut().map(|w| Box::pin(w.changed())));
    tokio::time::timeout_at(deadline, changed).await.is_ok()
}

fn respond(
    broker: &Broker,
    session_id: i32,
    incremental: bool,
    results: Vec<PartitionResult>,
) -> (FetchResponse, Vec<FileRegion>) {
    let mut topics: Vec<FetchableTopicResponse> = Vec::new();
    let mut file_regions = Vec::new();
    for r in results {
        let error_code = r.error.map_or(0, |e| e.code());
        let has_news = !r.records.is_empty() || error_code != 0 || r.diverging_epoch.is_some();
        let include = broker.fetch_sessions.note_response(
            session_id,
            &r.key,
            r.high_watermark,
            r.log_start_offset,
            has_news,
        );
        if incremental && !include {
            continue;
        }
        let mut data = PartitionData::default();
        if let Some((epoch, end_offset)) = r.diverging_epoch {
            data = data.with_diverging_epoch(
                EpochEndOffset::default()
                    .with_epoch(epoch)
                    .with_end_offset(end_offset),
            );
        }
        if r.error == Some(ResponseError::NotLeaderOrFollower) {
            data = data.with_current_leader(
                LeaderIdAndEpoch::default()
                    .with_leader_id(BrokerId(r.leader.0))
                    .with_leader_epoch(r.leader.1),
            );
        }
        let data = data
            .with_partition_index(r.key.partition)
            .with_error_code(error_code)
            .with_high_watermark(r.high_watermark)
            .with_last_stable_offset(r.last_stable_offset)
            .with_log_start_offset(r.log_start_offset)
            .with_aborted_transactions(r.aborted_transactions.map(|aborted| {
                aborted
                    .iter()
                    .map(|a| {
                        AbortedTransaction::default()
                            .with_producer_id(ProducerId(a.producer_id))
                            .with_first_offset(a.first_offset)
                    })
                    .collect()
            }))
            .with_preferred_read_replica(BrokerId(-1))
            .with_records(Some(r.records));
        // In the order the records are encoded: topics keep the results'
        // order, and only consecutive results share a topic.
        file_regions.extend(r.file_region);
        match topics.last_mut() {
            Some(t) if t.topic.0.as_str() == r.key.topic => t.partitions.push(data),
            _ => topics.push(
                FetchableTopicResponse::default()
                    .with_topic(topic_name(&r.key.topic))
                    .with_topic_id(r.topic_id)
                    .with_partitions(vec![data]),
            ),
        }
    }
    let response = FetchResponse::default()
        .with_session_id(session_id)
        .with_responses(topics);
    (response, file_regions)
}
