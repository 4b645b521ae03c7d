//! `GroupService`: the async face of the group coordinator, and the only
//! entry point for the broker's handlers.
//!
//! Each call takes the write lock, lets the `GroupCoordinator` decide at the
//! current time, appends the resulting records through `OffsetsLog`, and only
//! then releases the responses (its own and any parked ones it completed).
//! A timer task fires the coordinator's deadlines the same way. The broker
//! hands it the `__consumer_offsets` partitions it leads, one at a time
//! (`load_partition`, `unload_partition`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{
    ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse, ConsumerGroupHeartbeatRequest,
    ConsumerGroupHeartbeatResponse, DeleteGroupsRequest, DeleteGroupsResponse,
    DescribeGroupsRequest, DescribeGroupsResponse, HeartbeatRequest, HeartbeatResponse,
    JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest,
    ListGroupsResponse, OffsetCommitRequest, OffsetCommitResponse, OffsetDeleteRequest,
    OffsetDeleteResponse, OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest,
    SyncGroupResponse, TxnOffsetCommitRequest, TxnOffsetCommitResponse,
};
use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify};
use uuid::Uuid;

use crate::consumer_group::TopicMetadata;
use crate::state_machine::{
    commit_answer, join_error, txn_commit_answer, Effects, GroupCoordinator, JoinContext,
    OutRecord, RequestToken, Response, TimerKey, TransactionalProducer,
};
use crate::topic_ids;
use crate::GroupConfig;

/// One `__consumer_offsets` record: key and value (`None` = tombstone).
pub type LogRecord = (Vec<u8>, Option<Vec<u8>>);

/// One entry read back from a `__consumer_offsets` partition, in offset order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEntry {
    /// A record; `producer_id` is Some for records of a transactional batch.
    Record {
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        producer_id: Option<i64>,
    },
    /// A transaction marker (control batch) for `producer_id`.
    Marker { producer_id: i64, commit: bool },
}

/// Where the coordinator's records go: the `__consumer_offsets` partitions.
pub trait OffsetsLog: Send + Sync + 'static {
    /// Appends records to one __consumer_offsets partition; returns once
    /// every in-sync replica has them (Kafka writes them with acks=all).
    /// Called on a blocking thread.
    fn append(&self, partition: i32, records: Vec<LogRecord>) -> Result<(), String>;
    /// Appends records as one transactional batch of the producer (TxnOffsetCommit).
    fn append_transactional(
        &self,
        partition: i32,
        producer_id: i64,
        producer_epoch: i16,
        records: Vec<LogRecord>,
    ) -> Result<(), String>;
    /// Every record and marker of one partition, in offset order (for loading).
    fn read_all(&self, partition: i32) -> Result<Vec<LogEntry>, String>;
}

/// The error a request gets when its records could not be appended (or it
/// went unanswered): retriable for every client.
const UNAVAILABLE: i16 = ResponseError::CoordinatorNotAvailable.code();

pub struct GroupService {
    /// Lets `&self` methods hand an owned handle to spawned tasks.
    me: Weak<GroupService>,
    config: GroupConfig,
    /// The state machine. A `parking_lot` mutex: it is held only for the
    /// synchronous decision, never across an await.
    coordinator: Mutex<GroupCoordinator>,
    /// Serialises decide-append-respond so records reach the log in the
    /// order the state machine produced them, and a response never goes out
    /// before the records it depends on.
    write_lock: Arc<tokio::sync::Mutex<()>>,
    log: Arc<dyn OffsetsLog>,
    /// Requests waiting for their response, by token.
    pending: Mutex<HashMap<RequestToken, oneshot::Sender<Response>>>,
    next_token: AtomicU64,
    /// Armed timers; the state machine holds the authoritative deadlines, so
    /// a later deadline for the same key simply replaces the earlier one.
    timers: Mutex<HashMap<TimerKey, i64>>,
    timer_wakeup: Arc<Notify>,
    timer_started: AtomicBool,
    /// Wall-clock milliseconds at `start`: the coordinator's time is
    /// `base_ms + start.elapsed()`, monotonic and controllable in tests.
    base_ms: i64,
    start: tokio::time::Instant,
}

impl std::fmt::Debug for GroupService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupService")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Drop for GroupService {
    fn drop(&mut self) {
        // Lets the timer task notice the service is gone.
        self.timer_wakeup.notify_one();
    }
}

/// Removes a request's sender if the request goes away before its response.
struct PendingGuard<'a> {
    pending: &'a Mutex<HashMap<RequestToken, oneshot::Sender<Response>>>,
    token: RequestToken,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.pending.lock().remove(&self.token);
    }
}

impl GroupService {
    pub fn new(config: GroupConfig, log: Arc<dyn OffsetsLog>) -> Arc<Self> {
        let base_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Arc::new_cyclic(|me| GroupService {
            me: me.clone(),
            coordinator: Mutex::new(GroupCoordinator::new(config.clone())),
            config,
            write_lock: Arc::new(tokio::sync::Mutex::new(())),
            log,
            pending: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(1),
            timers: Mutex::new(HashMap::new()),
            timer_wakeup: Arc::new(Notify::new()),
            timer_started: AtomicBool::new(false),
            base_ms,
            start: tokio::time::Instant::now(),
        })
    }

    fn now_ms(&self) -> i64 {
        self.base_ms + self.start.elapsed().as_millis() as i64
    }

    /// Becomes the coordinator of a `__consumer_offsets` partition (Kafka's
    /// `onElection`): replays its records and serves its groups, whose
    /// requests get COORDINATOR_LOAD_IN_PROGRESS meanwhile. A partition
    /// already loaded is loaded afresh. The groups of other partitions, and
    /// their parked requests and timers, carry on untouched. If the log
    /// cannot be read, the partition's requests get NOT_COORDINATOR.
    pub async fn load_partition(&self, partition: i32) -> Result<(), String> {
        if !(0..self.config.offsets_topic_partitions).contains(&partition) {
            // Kafka refuses to load when the topic's partition count no
            // longer matches the configured one.
            return Err(format!(
                "__consumer_offsets partition {partition} is not below offsets.topic.num.partitions {}",
                self.config.offsets_topic_partitions
            ));
        }
        self.ensure_timer_task();
        let load = {
            // Every append decided before the load began is in the log (or
            // refused) before the log is read back.
            let _ordered = self.write_lock.lock().await;
            let (load, fx) = self.coordinator.lock().begin_load(partition);
            self.release_unloaded(partition, fx);
            load
        };
        let (log, config) = (self.log.clone(), self.config.clone());
        let replayed = tokio::task::spawn_blocking(move || {
            log.read_all(partition)
                .map(|entries| replay_partition(config, partition, entries))
        })
        .await
        .unwrap_or_else(|e| Err(format!("loading task failed: {e}")));
        let (replayed, skipped) = match replayed {
            Ok(r) => r,
            Err(e) => {
                self.coordinator.lock().abandon_load(partition, load);
                return Err(e);
            }
        };
        let groups = replayed.groups.len() + replayed.consumer_groups.len();
        let completed =
            self.coordinator
                .lock()
                .complete_load(partition, load, replayed, self.now_ms());
        match completed {
            Some(fx) => {
                self.arm(fx.timers);
                tracing::info!(
                    partition,
                    groups,
                    skipped,
                    "loaded __consumer_offsets partition"
                );
            }
            None => tracing::info!(partition, "load overtaken by an unload or a newer load"),
        }
        Ok(())
    }

    /// Stops coordinating a `__consumer_offsets` partition (Kafka's
    /// `onResignation`): its groups are dropped, their parked requests and
    /// later ones get NOT_COORDINATOR, and the other partitions' groups
    /// carry on untouched.
    pub async fn unload_partition(&self, partition: i32) {
        // An append in flight for one of its groups finishes first, so it
        // cannot bring a dropped group back when it replays its records.
        let _ordered = self.write_lock.lock().await;
        let fx = self.coordinator.lock().unload(partition);
        self.release_unloaded(partition, fx);
        tracing::info!(partition, "unloaded __consumer_offsets partition");
    }

    /// Answers the parked requests of a partition's dropped groups and
    /// disarms their timers (they would find no group and do nothing).
    fn release_unloaded(&self, partition: i32, fx: Effects) {
        self.respond(fx.responses);
        self.timers.lock().retain(|key, _| {
            key.group_id()
                .is_none_or(|group_id| self.partition_for(group_id) != partition)
        });
    }

    pub fn partition_for(&self, group_id: &str) -> i32 {
        keel_types::coordinator::partition_for(group_id, self.config.offsets_topic_partitions)
    }

    /// ConsumerGroupHeartbeat v0-1 (KIP-848), with the header's client id
    /// and the client's address for ConsumerGroupDescribe, and the topics
    /// (ids and partition counts) as the broker's metadata has them now.
    pub async fn consumer_group_heartbeat(
        &self,
        req: ConsumerGroupHeartbeatRequest,
        version: i16,
        client_id: &str,
        client_host: &str,
        topics: &dyn TopicMetadata,
    ) -> ConsumerGroupHeartbeatResponse {
        let ctx = JoinContext {
            client_id: client_id.to_owned(),
            client_host: client_host.to_owned(),
            member_uuid: Uuid::new_v4(),
        };
        match self
            .call(|c, token, now| {
                c.consumer_group_heartbeat(token, &req, version, &ctx, topics, now)
            })
            .await
        {
            Some(Response::ConsumerGroupHeartbeat(r)) => r,
            _ => ConsumerGroupHeartbeatResponse::default().with_error_code(UNAVAILABLE),
        }
    }

    /// ConsumerGroupDescribe v0-1.
    pub fn consumer_group_describe(
        &self,
        req: ConsumerGroupDescribeRequest,
        version: i16,
    ) -> ConsumerGroupDescribeResponse {
        self.coordinator
            .lock()
            .consumer_group_describe(&req, version)
    }

    /// JoinGroup without the request header: new members get ids of the form
    /// `-{uuid}`. Prefer `join_group_with_client`.
    pub async fn join_group(&self, req: JoinGroupRequest, version: i16) -> JoinGroupResponse {
        self.join_group_with_client(req, version, "", "").await
    }

    /// JoinGroup with the header's client id (new member ids are
    /// `{client_id}-{uuid}`, or `{group_instance_id}-{uuid}` for static
    /// members) and the client's address, as DescribeGroups reports them.
    pub async fn join_group_with_client(
        &self,
        req: JoinGroupRequest,
        version: i16,
        client_id: &str,
        client_host: &str,
    ) -> JoinGroupResponse {
        let ctx = JoinContext {
            client_id: client_id.to_owned(),
            client_host: client_host.to_owned(),
            member_uuid: Uuid::new_v4(),
        };
        match self
            .call(|c, token, now| c.join_group(token, &req, version, &ctx, now))
            .await
        {
            Some(Response::JoinGroup(r)) => r,
            _ => join_error(version, UNAVAILABLE, &req.member_id),
        }
    }

    pub async fn sync_group(&self, req: SyncGroupRequest, version: i16) -> SyncGroupResponse {
        match self
            .call(|c, token, now| c.sync_group(token, &req, version, now))
            .await
        {
            Some(Response::SyncGroup(r)) => r,
            _ => SyncGroupResponse::default().with_error_code(UNAVAILABLE),
        }
    }

    pub async fn heartbeat(&self, req: HeartbeatRequest, version: i16) -> HeartbeatResponse {
        match self
            .call(|c, token, now| c.heartbeat(token, &req, version, now))
            .await
        {
            Some(Response::Heartbeat(r)) => r,
            _ => HeartbeatResponse::default().with_error_code(UNAVAILABLE),
        }
    }

    pub async fn leave_group(&self, req: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
        match self
            .call(|c, token, now| c.leave_group(token, &req, version, now))
            .await
        {
            Some(Response::LeaveGroup(r)) => r,
            _ => {
                let r = LeaveGroupResponse::default().with_error_code(UNAVAILABLE);
                if version >= 3 {
                    r.with_members(
                        req.members
                            .iter()
                            .map(|m| {
                                MemberResponse::default()
                                    .with_member_id(m.member_id.clone())
                                    .with_group_instance_id(m.group_instance_id.clone())
                                    .with_error_code(UNAVAILABLE)
                            })
                            .collect(),
                    )
                } else {
                    r
                }
            }
        }
    }

    /// OffsetCommit v2-10. v10 names topics by id: `topics` resolves them,
    /// and an id it does not know is answered UNKNOWN_TOPIC_ID without
    /// reaching the coordinator.
    pub async fn offset_commit(
        &self,
        mut req: OffsetCommitRequest,
        version: i16,
        topics: &dyn TopicMetadata,
    ) -> OffsetCommitResponse {
        let unknown = topic_ids::resolve_commit(&mut req, version, topics);
        // As Kafka's KafkaApis, a request with nothing left to commit is
        // answered without the coordinator: it validates no member and
        // creates no group.
        let mut response = if req.topics.is_empty() {
            OffsetCommitResponse::default()
        } else {
            match self
                .call(|c, token, now| c.offset_commit(token, &req, version, now))
                .await
            {
                Some(Response::OffsetCommit(r)) => r,
                _ => OffsetCommitResponse::default().with_topics(
                    req.topics
                        .iter()
                        .map(|t| commit_answer(t, |_| UNAVAILABLE))
                        .collect(),
                ),
            }
        };
        // Kafka's OffsetCommitResponse.Builder lists them first.
        response.topics.splice(0..0, unknown);
        response
    }

    /// TxnOffsetCommit, every version: validated as OffsetCommit, appended through
    /// `OffsetsLog::append_transactional` with the request's producer id and
    /// epoch, and pending (not yet committed for OffsetFetch) until the
    /// broker reports the producer's marker with `complete_transaction`. A
    /// batch the log refuses is answered COORDINATOR_NOT_AVAILABLE and
    /// leaves nothing pending. Unknown topics and partitions are the
    /// handler's to answer first, as in Kafka's KafkaApis.
    pub async fn txn_offset_commit(
        &self,
        req: TxnOffsetCommitRequest,
        version: i16,
    ) -> TxnOffsetCommitResponse {
        // As Kafka's KafkaApis, nothing to commit is answered without the
        // coordinator: it validates no member and creates no group.
        if req.topics.is_empty() {
            return TxnOffsetCommitResponse::default();
        }
        match self
            .call(|c, token, now| c.txn_offset_commit(token, &req, version, now))
            .await
        {
            Some(Response::TxnOffsetCommit(r)) => r,
            _ => TxnOffsetCommitResponse::default().with_topics(
                req.topics
                    .iter()
                    .map(|t| txn_commit_answer(t, |_| UNAVAILABLE))
                    .collect(),
            ),
        }
    }

    /// The broker wrote a COMMIT (`commit`) or ABORT marker of `producer_id`
    /// into `__consumer_offsets` partition `offsets_partition`: the
    /// producer's pending offsets of that partition's groups are committed
    /// (unless a regular commit was written after them) or dropped. It waits
    /// for in-flight appends, so a TxnOffsetCommit whose batch is in the log
    /// before the marker has its offsets pending when the marker applies.
    pub async fn complete_transaction(
        &self,
        offsets_partition: i32,
        producer_id: i64,
        commit: bool,
    ) {
        let _ordered = self.write_lock.lock().await;
        self.coordinator
            .lock()
            .complete_transaction(offsets_partition, producer_id, commit);
    }

    /// OffsetFetch: v1-7 for one group, v8+ for a batch of groups, v10 with
    /// topics named by id (resolved through `topics`). It waits for
    /// in-flight appends, so it never returns an offset not yet in the log.
    /// With `require_stable` (v7+) a partition an open transaction holds an
    /// offset of answers UNSTABLE_OFFSET_COMMIT.
    pub async fn offset_fetch(
        &self,
        mut req: OffsetFetchRequest,
        version: i16,
        topics: &dyn TopicMetadata,
    ) -> OffsetFetchResponse {
        let unknown = topic_ids::resolve_fetch(&mut req, version, topics);
        let mut response = {
            let _ordered = self.write_lock.lock().await;
            self.coordinator.lock().offset_fetch(&req, version)
        };
        topic_ids::complete_fetch(&mut response, &req, unknown, version, topics);
        response
    }

    pub async fn offset_delete(
        &self,
        req: OffsetDeleteRequest,
        version: i16,
    ) -> OffsetDeleteResponse {
        match self
            .call(|c, token, now| c.offset_delete(token, &req, version, now))
            .await
        {
            Some(Response::OffsetDelete(r)) => r,
            _ => OffsetDeleteResponse::default().with_error_code(UNAVAILABLE),
        }
    }

    /// ListGroups with `states_filter` (v4+) and `types_filter` (v5+).
    pub fn list_groups(&self, req: ListGroupsRequest, version: i16) -> ListGroupsResponse {
        self.coordinator.lock().list_groups(&req, version)
    }

    pub fn describe_groups(
        &self,
        req: DescribeGroupsRequest,
        version: i16,
    ) -> DescribeGroupsResponse {
        self.coordinator.lock().describe_groups(&req, version)
    }

    /// DeleteGroups: NON_EMPTY_GROUP while members remain, GROUP_ID_NOT_FOUND
    /// for unknown groups, else tombstones for the group and its offsets.
    pub async fn delete_groups(
        &self,
        req: DeleteGroupsRequest,
        version: i16,
    ) -> DeleteGroupsResponse {
        match self
            .call(|c, token, now| c.delete_groups(token, &req, version, now))
            .await
        {
            Some(Response::DeleteGroups(r)) => r,
            _ => DeleteGroupsResponse::default().with_results(
                req.groups_names
                    .iter()
                    .map(|g| {
                        DeletableGroupResult::default()
                            .with_group_id(g.clone())
                            .with_error_code(UNAVAILABLE)
                    })
                    .collect(),
            ),
        }
    }

    /// `(topic, partition, committed offset)` of every offset of a group,
    /// ordered by topic and partition.
    pub fn committed_offsets(&self, group_id: &str) -> Vec<(String, i32, i64)> {
        self.coordinator.lock().committed_offsets(group_id)
    }

    // ------------------------------------------------------------ plumbing

    /// Runs one request through the state machine and waits for its response
    /// (`None` if it went unanswered).
    async fn call<F>(&self, decide: F) -> Option<Response>
    where
        F: FnOnce(&mut GroupCoordinator, RequestToken, i64) -> Effects,
    {
        let token = RequestToken(self.next_token.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(token, tx);
        let _guard = PendingGuard {
            pending: &self.pending,
            token,
        };
        self.execute(|c, now| decide(c, token, now)).await;
        rx.await.ok()
    }

    /// Decides under the write lock, then appends and releases the effects in
    /// a task of their own, so that a caller going away halfway cannot lose
    /// other members' responses.
    async fn execute<F>(&self, decide: F)
    where
        F: FnOnce(&mut GroupCoordinator, i64) -> Effects,
    {
        self.ensure_timer_task();
        let guard = self.write_lock.clone().lock_owned().await;
        let fx = {
            let mut coordinator = self.coordinator.lock();
            decide(&mut coordinator, self.now_ms())
        };
        let me = self.me.upgrade().expect("service alive while called");
        let apply = tokio::spawn(async move {
            me.apply(fx).await;
            drop(guard);
        });
        if let Err(e) = apply.await {
            tracing::error!(error = %e, "group coordinator effects task failed");
        }
    }

    async fn apply(&self, fx: Effects) {
        let Effects {
            records,
            mut responses,
            timers,
            transactional,
        } = fx;
        if !records.is_empty() {
            let appended = match transactional {
                None => self.append(records).await,
                Some(producer) => self.append_transactional(producer, records).await,
            };
            if let Err(e) = appended {
                tracing::error!(error = %e, "appending to __consumer_offsets failed");
                responses = responses
                    .into_iter()
                    .map(|(t, r)| (t, r.fail(UNAVAILABLE)))
                    .collect();
            }
        }
        self.respond(responses);
        self.arm(timers);
    }

    fn respond(&self, responses: Vec<(RequestToken, Response)>) {
        let mut pending = self.pending.lock();
        for (token, response) in responses {
            if let Some(tx) = pending.remove(&token) {
                // The requester may have gone away; nothing to do then.
                let _ = tx.send(response);
            }
        }
    }

    fn arm(&self, timers: Vec<(TimerKey, i64)>) {
        if !timers.is_empty() {
            self.timers.lock().extend(timers);
            self.timer_wakeup.notify_one();
        }
    }

    async fn append(&self, records: Vec<OutRecord>) -> Result<(), String> {
        // Keep each partition's records in order, partitions in first-use order.
        let mut batches: Vec<(i32, Vec<LogRecord>)> = Vec::new();
        for (partition, key, value) in records {
            match batches.iter_mut().find(|(p, _)| *p == partition) {
                Some((_, batch)) => batch.push((key, value)),
                None => batches.push((partition, vec![(key, value)])),
            }
        }
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || {
            for (partition, batch) in batches {
                log.append(partition, batch)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| format!("append task failed: {e}"))?
    }

    /// Appends a TxnOffsetCommit's records (all in its group's partition)
    /// as one batch of the producer, then replays them: their offsets are
    /// pending from now on, before the response goes out.
    async fn append_transactional(
        &self,
        producer: TransactionalProducer,
        records: Vec<OutRecord>,
    ) -> Result<(), String> {
        let partition = records[0].0;
        let batch: Vec<LogRecord> = records.into_iter().map(|(_, k, v)| (k, v)).collect();
        let appended = batch.clone();
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || {
            log.append_transactional(
                partition,
                producer.producer_id,
                producer.producer_epoch,
                appended,
            )
        })
        .await
        .map_err(|e| format!("append task failed: {e}"))??;
        let mut coordinator = self.coordinator.lock();
        for (key, value) in &batch {
            coordinator
                .replay(key, value.as_deref(), Some(producer.producer_id))
                .map_err(|e| format!("replaying a transactional offset commit: {e}"))?;
        }
        Ok(())
    }

    fn ensure_timer_task(&self) {
        if self.timer_started.load(Ordering::Acquire) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // The first async call starts it.
        };
        if self.timer_started.swap(true, Ordering::AcqRel) {
            return;
        }
        runtime.spawn(timer_loop(self.me.clone(), self.timer_wakeup.clone()));
    }
}

/// A `__consumer_offsets` partition's groups rebuilt from its entries, with
/// the number of records that could not be decoded and were skipped.
pub(crate) fn replay_partition(
    config: GroupConfig,
    partition: i32,
    entries: Vec<LogEntry>,
) -> (GroupCoordinator, usize) {
    let mut replayed = GroupCoordinator::new(config);
    let mut skipped = 0usize;
    for entry in entries {
        match entry {
            LogEntry::Record {
                key,
                value,
                producer_id,
            } => {
                if let Err(e) = replayed.replay(&key, value.as_deref(), producer_id) {
                    skipped += 1;
                    tracing::warn!(partition, error = %e, "skipping undecodable __consumer_offsets record");
                }
            }
            LogEntry::Marker {
                producer_id,
                commit,
            } => replayed.replay_end_transaction_marker(partition, producer_id, commit),
        }
    }
    (replayed, skipped)
}

/// Sleeps until the earliest armed deadline (or a new timer), then fires
/// every due timer through the state machine.
async fn timer_loop(service: Weak<GroupService>, wakeup: Arc<Notify>) {
    loop {
        let delay_ms = {
            let Some(svc) = service.upgrade() else { return };
            let next = svc.timers.lock().values().min().copied();
            next.map(|d| (d - svc.now_ms()).max(0))
        };
        match delay_ms {
            Some(ms) => {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(ms as u64)) => {}
                    _ = wakeup.notified() => {}
                }
            }
            None => wakeup.notified().await,
        }
        let Some(svc) = service.upgrade() else { return };
        let now = svc.now_ms();
        let due: Vec<TimerKey> = {
            let mut timers = svc.timers.lock();
            let keys: Vec<TimerKey> = timers
                .iter()
                .filter(|(_, d)| **d <= now)
                .map(|(k, _)| k.clone())
                .collect();
            for k in &keys {
                timers.remove(k);
            }
            keys
        };
        for key in due {
            svc.execute(|c, now| c.on_timer(&key, now)).await;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::NoTopics;
    use bytes::Bytes;
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
    use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
    use kafka_protocol::messages::txn_offset_commit_request::{
        TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::{GroupId, ProducerId, TopicName, TransactionalId};
    use kafka_protocol::protocol::StrBytes;

    mod partitions;

    /// `__consumer_offsets` as vectors in memory.
    #[derive(Default)]
    pub(crate) struct MemoryLog {
        partitions: Mutex<HashMap<i32, Vec<LogEntry>>>,
        /// Each transactional producer's latest epoch: a batch of an older
        /// one is refused, as the broker fences a zombie producer.
        producer_epochs: Mutex<HashMap<i64, i16>>,
    }

    impl MemoryLog {
        fn push(&self, partition: i32, entries: impl IntoIterator<Item = LogEntry>) {
            self.partitions
                .lock()
                .entry(partition)
                .or_default()
                .extend(entries);
        }

        /// The end of a transaction, as the broker writes it.
        pub(crate) fn write_marker(&self, partition: i32, producer_id: i64, commit: bool) {
            self.push(
                partition,
                [LogEntry::Marker {
                    producer_id,
                    commit,
                }],
            );
        }
    }

    impl OffsetsLog for MemoryLog {
        fn append(&self, partition: i32, records: Vec<LogRecord>) -> Result<(), String> {
            let entries = records.into_iter().map(|(key, value)| LogEntry::Record {
                key,
                value,
                producer_id: None,
            });
            self.push(partition, entries);
            Ok(())
        }
        fn append_transactional(
            &self,
            partition: i32,
            producer_id: i64,
            producer_epoch: i16,
            records: Vec<LogRecord>,
        ) -> Result<(), String> {
            let mut epochs = self.producer_epochs.lock();
            let latest = epochs.entry(producer_id).or_insert(producer_epoch);
            if producer_epoch < *latest {
                return Err(format!("producer {producer_id} fenced at epoch {latest}"));
            }
            *latest = producer_epoch;
            let entries = records.into_iter().map(|(key, value)| LogEntry::Record {
                key,
                value,
                producer_id: Some(producer_id),
            });
            self.push(partition, entries);
            Ok(())
        }
        fn read_all(&self, partition: i32) -> Result<Vec<LogEntry>, String> {
            Ok(self
                .partitions
                .lock()
                .get(&partition)
                .cloned()
                .unwrap_or_default())
        }
    }

    fn s(v: &str) -> StrBytes {
        StrBytes::from_string(v.to_owned())
    }

    /// Loads every partition, as a broker that leads them all does.
    pub(crate) async fn load_all(svc: &GroupService) {
        for partition in 0..svc.config.offsets_topic_partitions {
            svc.load_partition(partition).await.unwrap();
        }
    }

    fn join_req(group: &str, member_id: &str) -> JoinGroupRequest {
        JoinGroupRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_session_timeout_ms(10_000)
            .with_rebalance_timeout_ms(30_000)
            .with_member_id(s(member_id))
            .with_protocol_type(s("consumer"))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(s("range"))
                .with_metadata(Bytes::from_static(b"sub"))])
    }

    /// A member's whole join: MEMBER_ID_REQUIRED, then the real join.
    async fn join(svc: &GroupService, group: &str, client: &str) -> JoinGroupResponse {
        let r = svc
            .join_group_with_client(join_req(group, ""), 9, client, "/127.0.0.1")
            .await;
        assert_eq!(r.error_code, ResponseError::MemberIdRequired.code());
        assert!(r.member_id.starts_with(&format!("{client}-")));
        svc.join_group_with_client(join_req(group, &r.member_id), 9, client, "/127.0.0.1")
            .await
    }

    fn sync_req(
        group: &str,
        generation: i32,
        member_id: &str,
        assignments: &[(&str, &str)],
    ) -> SyncGroupRequest {
        SyncGroupRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_generation_id(generation)
            .with_member_id(s(member_id))
            .with_assignments(
                assignments
                    .iter()
                    .map(|(m, a)| {
                        SyncGroupRequestAssignment::default()
                            .with_member_id(s(m))
                            .with_assignment(Bytes::copy_from_slice(a.as_bytes()))
                    })
                    .collect(),
            )
    }

    #[tokio::test(start_paused = true)]
    async fn two_members_join_concurrently_and_state_survives_reload() {
        let log = Arc::new(MemoryLog::default());
        let svc = GroupService::new(GroupConfig::default(), log.clone());
        // No partition loaded yet: the group is not coordinated here.
        let r = svc.join_group(join_req("g", ""), 9).await;
        assert_eq!(r.error_code, ResponseError::NotCoordinator.code());
        load_all(&svc).await;

        let (a, b) = tokio::join!(join(&svc, "g", "a"), join(&svc, "g", "b"));
        assert_eq!((a.error_code, b.error_code), (0, 0));
        assert_eq!(a.generation_id, 1);
        assert_eq!(a.generation_id, b.generation_id);
        assert_eq!(a.leader, b.leader);
        let (leader, follower) = if a.leader == a.member_id {
            (a, b)
        } else {
            (b, a)
        };
        assert_eq!(leader.members.len(), 2);
        assert!(follower.members.is_empty());

        let assignments = [
            (&*leader.member_id, "to-leader"),
            (&*follower.member_id, "to-follower"),
        ];
        let (fs, ls) = tokio::join!(
            svc.sync_group(sync_req("g", 1, &follower.member_id, &[]), 5),
            async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                svc.sync_group(sync_req("g", 1, &leader.member_id, &assignments), 5)
                    .await
            }
        );
        assert_eq!(fs.assignment, Bytes::from_static(b"to-follower"));
        assert_eq!(ls.assignment, Bytes::from_static(b"to-leader"));

        let commit = OffsetCommitRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_generation_id_or_member_epoch(1)
            .with_member_id(follower.member_id.clone())
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(TopicName(s("t")))
                .with_partitions(vec![OffsetCommitRequestPartition::default()
                    .with_partition_index(0)
                    .with_committed_offset(42)])]);
        let r = svc.offset_commit(commit, 8, &NoTopics).await;
        assert_eq!(r.topics[0].partitions[0].error_code, 0);
        assert_eq!(svc.committed_offsets("g"), vec![("t".to_string(), 0, 42)]);
        let partition = svc.partition_for("g");
        assert_eq!(
            log.read_all(partition).unwrap().len(),
            2,
            "group and offset records"
        );

        // A second coordinator over the same log sees the same group.
        let again = GroupService::new(GroupConfig::default(), log.clone());
        load_all(&again).await;
        assert_eq!(again.committed_offsets("g"), vec![("t".to_string(), 0, 42)]);
        let fetch = OffsetFetchRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                .with_name(TopicName(s("t")))
                .with_partition_indexes(vec![0, 1])]));
        let r = again.offset_fetch(fetch, 7, &NoTopics).await;
        assert_eq!(r.topics[0].partitions[0].committed_offset, 42);
        assert_eq!(r.topics[0].partitions[1].committed_offset, -1);
        let d = again.describe_groups(
            DescribeGroupsRequest::default().with_groups(vec![GroupId(s("g"))]),
            5,
        );
        assert_eq!(d.groups[0].group_state.as_str(), "Stable");
        assert_eq!(d.groups[0].members.len(), 2);
        assert_eq!(d.groups[0].members[0].client_id.as_str(), "a");
    }

    /// A TxnOffsetCommit v4 of `(partition, offset)`s of topic "t" in group
    /// "g", by a simple producer.
    fn txn(
        producer_id: i64,
        producer_epoch: i16,
        offsets: &[(i32, i64)],
    ) -> TxnOffsetCommitRequest {
        TxnOffsetCommitRequest::default()
            .with_transactional_id(TransactionalId(s("tx")))
            .with_group_id(GroupId(s("g")))
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(producer_epoch)
            .with_topics(vec![TxnOffsetCommitRequestTopic::default()
                .with_name(TopicName(s("t")))
                .with_partitions(
                    offsets
                        .iter()
                        .map(|(p, o)| {
                            TxnOffsetCommitRequestPartition::default()
                                .with_partition_index(*p)
                                .with_committed_offset(*o)
                        })
                        .collect(),
                )])
    }

    /// `(offset, error)` of partitions 0-3 of "t" in a v7 OffsetFetch with
    /// `require_stable`.
    async fn stable_offsets(svc: &GroupService) -> Vec<(i64, i16)> {
        let fetch = OffsetFetchRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_require_stable(true)
            .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                .with_name(TopicName(s("t")))
                .with_partition_indexes(vec![0, 1, 2, 3])]));
        let r = svc.offset_fetch(fetch, 7, &NoTopics).await;
        r.topics[0]
            .partitions
            .iter()
            .map(|p| (p.committed_offset, p.error_code))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn transactional_offsets_go_through_the_log_and_survive_reload() {
        const UNSTABLE: i16 = ResponseError::UnstableOffsetCommit.code();
        let errors = |r: TxnOffsetCommitResponse| -> Vec<i16> {
            r.topics[0]
                .partitions
                .iter()
                .map(|p| p.error_code)
                .collect()
        };
        let log = Arc::new(MemoryLog::default());
        let svc = GroupService::new(GroupConfig::default(), log.clone());
        load_all(&svc).await;
        let partition = svc.partition_for("g");

        // Nothing to commit: answered without the coordinator.
        let empty = txn(7, 1, &[]).with_topics(Vec::new());
        assert!(svc.txn_offset_commit(empty, 4).await.topics.is_empty());
        assert!(svc
            .list_groups(ListGroupsRequest::default(), 5)
            .groups
            .is_empty());

        let r = svc.txn_offset_commit(txn(7, 1, &[(0, 5), (1, 6)]), 4).await;
        assert_eq!(errors(r), vec![0, 0]);
        let written = log.read_all(partition).unwrap();
        assert_eq!(written.len(), 2);
        assert!(written.iter().all(|e| matches!(
            e,
            LogEntry::Record {
                producer_id: Some(7),
                ..
            }
        )));
        // A zombie of the producer: the log refuses its batch, and nothing
        // of it is pending.
        let r = svc.txn_offset_commit(txn(7, 0, &[(2, 99)]), 4).await;
        assert_eq!(errors(r), vec![UNAVAILABLE]);
        // Producer 8 stays open, producer 9 aborts.
        let r = svc.txn_offset_commit(txn(8, 0, &[(3, 30)]), 4).await;
        assert_eq!(errors(r), vec![0]);
        let r = svc.txn_offset_commit(txn(9, 0, &[(0, 90)]), 4).await;
        assert_eq!(errors(r), vec![0]);
        assert_eq!(
            stable_offsets(&svc).await,
            vec![(-1, UNSTABLE), (-1, UNSTABLE), (-1, 0), (-1, UNSTABLE)]
        );
        for (producer_id, commit) in [(9, false), (7, true)] {
            log.write_marker(partition, producer_id, commit);
            svc.complete_transaction(partition, producer_id, commit)
                .await;
        }
        let expected = vec![(5, 0), (6, 0), (-1, 0), (-1, UNSTABLE)];
        assert_eq!(stable_offsets(&svc).await, expected);

        let again = GroupService::new(GroupConfig::default(), log.clone());
        load_all(&again).await;
        assert_eq!(stable_offsets(&again).await, expected);
        log.write_marker(partition, 8, true);
        again.complete_transaction(partition, 8, true).await;
        assert_eq!(
            stable_offsets(&again).await,
            vec![(5, 0), (6, 0), (-1, 0), (30, 0)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn timer_task_expires_silent_members() {
        let log = Arc::new(MemoryLog::default());
        let svc = GroupService::new(
            GroupConfig {
                group_initial_rebalance_delay_ms: 0,
                ..GroupConfig::default()
            },
            log,
        );
        load_all(&svc).await;
        let r = join(&svc, "g", "a").await;
        assert_eq!(r.error_code, 0);
        let synced = svc
            .sync_group(sync_req("g", 1, &r.member_id, &[(&r.member_id, "x")]), 5)
            .await;
        assert_eq!(synced.error_code, 0);
        let hb = |generation| {
            HeartbeatRequest::default()
                .with_group_id(GroupId(s("g")))
                .with_generation_id(generation)
                .with_member_id(r.member_id.clone())
        };
        assert_eq!(svc.heartbeat(hb(1), 4).await.error_code, 0);
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert_eq!(
            svc.heartbeat(hb(1), 4).await.error_code,
            ResponseError::UnknownMemberId.code()
        );
        let d = svc.describe_groups(
            DescribeGroupsRequest::default().with_groups(vec![GroupId(s("g"))]),
            5,
        );
        assert_eq!(d.groups[0].group_state.as_str(), "Empty");
    }
}
