//! The partitions this broker hosts and the operations on them that the
//! handlers need: append, read, offsets, and the background upkeep of their
//! logs (retention, time-based rolls and flushes, checkpoints).
//!
//! One node leads every partition it hosts and is its whole ISR, so the high
//! watermark is the log end offset. The cluster issue replaces that equality
//! with follower tracking; handlers only ever ask for `high_watermark()`.

use std::collections::HashMap;
use std::sync::Arc;

use keel_metadata::{MetadataImage, PartitionImage};
use keel_storage::{
    AbortedTxn, ControlRecordType, FetchSlice, Log, LogAppendResult, LogManager, StorageError,
};
use keel_types::TopicPartition;
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;
use uuid::Uuid;

use crate::config::BrokerConfig;

pub struct Partition {
    pub tp: TopicPartition,
    pub topic_id: Uuid,
    /// This broker's id.
    node_id: i32,
    log: Mutex<Log>,
    /// Leadership and ISR as the metadata image says, plus, on the leader,
    /// each follower's progress.
    replication: Mutex<ReplicaState>,
    /// Consumers' long polls wait here: the high watermark, published on
    /// every advance.
    high_watermark: watch::Sender<i64>,
    /// Followers' long polls wait here: the log end offset, published on
    /// every append.
    log_end: watch::Sender<i64>,
    /// Serialises fsyncs so concurrent producers share one (group commit).
    flush_lock: tokio::sync::Mutex<()>,
    /// Set once the partition is deleted, so late readers stop waiting on it.
    deleted: std::sync::atomic::AtomicBool,
}

/// A partition's leader, epoch and ISR size, copied out at once.
#[derive(Clone, Copy, Debug)]
pub struct Leadership {
    pub leader: i32,
    pub leader_epoch: i32,
    pub isr_size: usize,
}

/// A partition's replication state: Kafka's `Partition` fields that the
/// metadata image sets (leader, epochs, replicas, ISR) and the leader's
/// view of its followers.
#[derive(Debug)]
struct ReplicaState {
    leader: i32,
    leader_epoch: i32,
    partition_epoch: i32,
    replicas: Vec<i32>,
    isr: Vec<i32>,
    followers: HashMap<i32, FollowerProgress>,
    /// An ISR change was sent to the controller and the image does not show
    /// its outcome yet: send no other (Kafka's pending ISR state).
    isr_change_pending: bool,
}

/// What the leader knows of one follower (Kafka's `Replica`).
#[derive(Clone, Copy, Debug)]
struct FollowerProgress {
    log_end_offset: i64,
    /// The last time the follower was known to have every record the
    /// leader had: `replica.lag.time.max.ms` counts from here.
    last_caught_up_ms: i64,
    /// The leader's log end offset and the time at the follower's previous
    /// fetch: reaching that offset later means it was caught up then.
    previous_fetch_leader_end: i64,
    previous_fetch_ms: i64,
}

/// An ISR change the leader wants the controller to make.
pub struct IsrProposal {
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub new_isr: Vec<i32>,
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("this broker does not lead the partition")]
    NotLeader,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// What a read returns besides the bytes.
pub struct ReadResult {
    pub slice: Option<FetchSlice>,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    /// For a read_committed read: the aborted transactions overlapping it.
    pub aborted_transactions: Option<Vec<AbortedTxn>>,
}

/// How far a reader may read (see `Partition::read`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadBound {
    LogEnd,
    HighWatermark,
    LastStable,
}

/// One WriteTxnMarkers marker as a partition leader writes it.
#[derive(Clone, Copy, Debug)]
pub struct TxnMarkerEntry {
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// COMMIT, or ABORT.
    pub commit: bool,
    pub coordinator_epoch: i32,
}

fn last_stable_offset(log: &Log, high_watermark: i64) -> i64 {
    log.first_unstable_offset()
        .map_or(high_watermark, |first| first.min(high_watermark))
}

impl Partition {
    fn new(
        tp: TopicPartition,
        topic_id: Uuid,
        node_id: i32,
        state: ReplicaState,
        log: Log,
    ) -> Self {
        // A leader starts from what it has, a follower from what the leader
        // will tell it: either way nothing above its own log end is visible.
        let start = if state.isr == [node_id] {
            log.log_end_offset()
        } else {
            log.recovery_point().min(log.log_end_offset())
        };
        let (high_watermark, _) = watch::channel(start);
        let (log_end, _) = watch::channel(log.log_end_offset());
        Self {
            tp,
            topic_id,
            node_id,
            log: Mutex::new(log),
            replication: Mutex::new(state),
            high_watermark,
            log_end,
            flush_lock: tokio::sync::Mutex::new(()),
            deleted: Default::default(),
        }
    }

    /// What the produce and fetch paths need, without copying the ISR or
    /// the followers' progress.
    pub fn leadership(&self) -> Leadership {
        let state = self.replication.lock();
        Leadership {
            leader: state.leader,
            leader_epoch: state.leader_epoch,
            isr_size: state.isr.len(),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.replication.lock().leader == self.node_id
    }

    pub fn leader_epoch(&self) -> i32 {
        self.replication.lock().leader_epoch
    }

    /// On the leader, records where its epoch starts in the log, before
    /// anything is written in it (Kafka's `makeLeader`); a no-op once done.
    fn assign_leader_epoch_start(&self) -> Result<(), StorageError> {
        let state = self.leadership();
        if state.leader != self.node_id {
            return Ok(());
        }
        self.with_log(|log| log.assign_epoch_start_offset(state.leader_epoch))
    }

    /// Takes the leadership and ISR of a new image. A new leader epoch
    /// resets what the leader knows of its followers. Returns whether the
    /// leadership changed.
    fn update_replication(&self, p: &PartitionImage) -> bool {
        let mut state = self.replication.lock();
        let changed = p.leader_epoch != state.leader_epoch || p.leader != state.leader;
        if changed {
            state.followers.clear();
            tracing::info!(
                partition = %self.tp,
                leader = p.leader,
                leader_epoch = p.leader_epoch,
                role = if p.leader == self.node_id { "leader" } else { "follower" },
                "partition leadership changed"
            );
        }
        state.leader = p.leader;
        state.leader_epoch = p.leader_epoch;
        state.partition_epoch = p.partition_epoch;
        state.replicas = p.replicas.clone();
        state.isr = p.isr.clone();
        state.isr_change_pending = false;
        drop(state);
        let log_end_offset = self.log_end_offset();
        self.maybe_advance_high_watermark(log_end_offset);
        changed
    }

    /// The leader's high watermark: the lowest log end offset in the ISR,
    /// its own (`log_end_offset`, which every caller has just read)
    /// included. It never moves back.
    fn maybe_advance_high_watermark(&self, log_end_offset: i64) {
        let state = self.replication.lock();
        if state.leader != self.node_id {
            return;
        }
        let mut candidate = log_end_offset;
        for follower in state.isr.iter().filter(|&&b| b != self.node_id) {
            let end = state
                .followers
                .get(follower)
                .map_or(-1, |f| f.log_end_offset);
            candidate = candidate.min(end);
        }
        drop(state);
        self.high_watermark.send_if_modified(|hw| {
            let advanced = candidate > *hw;
            if advanced {
                *hw = candidate;
            }
            advanced
        });
    }

    /// Records a follower's fetch from `fetch_offset` (all it has) and
    /// returns the ISR change that follows, if any: a follower that has
    /// caught up with the high watermark rejoins the ISR.
    /// Whether broker `id` is one of this partition's assigned replicas.
    pub fn is_replica(&self, id: i32) -> bool {
        self.replication.lock().replicas.contains(&id)
    }

    pub fn record_follower_fetch(
        &self,
        replica_id: i32,
        fetch_offset: i64,
        now_ms: i64,
    ) -> Option<IsrProposal> {
        let leader_end = self.log_end_offset();
        let mut state = self.replication.lock();
        if !state.replicas.contains(&replica_id) {
            return None;
        }
        let progress = state
            .followers
            .entry(replica_id)
            .or_insert(FollowerProgress {
                log_end_offset: -1,
                last_caught_up_ms: now_ms,
                previous_fetch_leader_end: i64::MAX,
                previous_fetch_ms: now_ms,
            });
        progress.log_end_offset = fetch_offset;
        if fetch_offset >= leader_end {
            progress.last_caught_up_ms = now_ms;
        } else if fetch_offset >= progress.previous_fetch_leader_end {
            progress.last_caught_up_ms = progress.last_caught_up_ms.max(progress.previous_fetch_ms);
        }
        progress.previous_fetch_leader_end = leader_end;
        progress.previous_fetch_ms = now_ms;
        let rejoin = !state.isr.contains(&replica_id)
            && !state.isr_change_pending
            && fetch_offset >= self.high_watermark()
            && fetch_offset >= self.leader_epoch_start_offset(state.leader_epoch);
        let proposal = rejoin.then(|| {
            state.isr_change_pending = true;
            let mut new_isr = state.isr.clone();
            new_isr.push(replica_id);
            IsrProposal {
                leader_epoch: state.leader_epoch,
                partition_epoch: state.partition_epoch,
                new_isr,
            }
        });
        drop(state);
        self.maybe_advance_high_watermark(leader_end);
        proposal
    }

    /// The first offset this leader wrote in `epoch`; a follower must have
    /// reached it before it can be in sync (Kafka's check on ISR expansion).
    fn leader_epoch_start_offset(&self, epoch: i32) -> i64 {
        let log = self.log.lock();
        log.leader_epoch_cache()
            .entries()
            .iter()
            .find(|(e, _)| *e == epoch)
            .map_or(log.log_end_offset(), |(_, start)| *start)
    }

    /// On the leader: the ISR without followers that have not caught up
    /// for `lag_max_ms`, if any must go.
    pub fn isr_shrink(&self, lag_max_ms: i64, now_ms: i64) -> Option<IsrProposal> {
        let mut state = self.replication.lock();
        if state.leader != self.node_id || state.isr_change_pending {
            return None;
        }
        let leader_epoch = state.leader_epoch;
        let lagging = |b: &i32| {
            *b != self.node_id
                && state
                    .followers
                    .get(b)
                    .is_none_or(|f| now_ms - f.last_caught_up_ms > lag_max_ms)
        };
        if !state.isr.iter().any(lagging) {
            return None;
        }
        // A follower never heard from in this epoch gets a full lag period
        // from the first check.
        let new_isr: Vec<i32> = state.isr.iter().copied().filter(|b| !lagging(b)).collect();
        let unseen: Vec<i32> = state
            .isr
            .iter()
            .copied()
            .filter(|b| *b != self.node_id && !state.followers.contains_key(b))
            .collect();
        if !unseen.is_empty() {
            for b in unseen {
                state.followers.insert(
                    b,
                    FollowerProgress {
                        log_end_offset: -1,
                        last_caught_up_ms: now_ms,
                        previous_fetch_leader_end: i64::MAX,
                        previous_fetch_ms: now_ms,
                    },
                );
            }
            return None;
        }
        state.isr_change_pending = true;
        Some(IsrProposal {
            leader_epoch,
            partition_epoch: state.partition_epoch,
            new_isr,
        })
    }

    /// The controller refused or never answered an ISR change: the next
    /// fetch or check may propose again.
    pub fn isr_change_failed(&self) {
        self.replication.lock().isr_change_pending = false;
    }

    pub fn high_watermark(&self) -> i64 {
        *self.high_watermark.borrow()
    }

    pub fn log_start_offset(&self) -> i64 {
        self.log.lock().log_start_offset()
    }

    pub fn log_end_offset(&self) -> i64 {
        self.log.lock().log_end_offset()
    }

    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.high_watermark.subscribe()
    }

    /// Changes of the log end offset, which a follower's fetch waits for.
    pub fn subscribe_log_end(&self) -> watch::Receiver<i64> {
        self.log_end.subscribe()
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Appends a produce request's batches.
    pub fn append(&self, batches: &[u8], now_ms: i64) -> Result<LogAppendResult, AppendError> {
        self.append_as_leader(|log, leader_epoch| {
            log.append_as_leader(batches, leader_epoch, now_ms)
        })
    }

    /// Appends batches a coordinator on this broker wrote (the group
    /// coordinator's transactional offset commits): no sequence check.
    pub fn append_as_coordinator(
        &self,
        batches: &[u8],
        now_ms: i64,
    ) -> Result<LogAppendResult, AppendError> {
        self.append_as_leader(|log, leader_epoch| {
            log.append_as_coordinator(batches, leader_epoch, now_ms)
        })
    }

    /// Writes a transaction marker (WriteTxnMarkers), ending the producer's
    /// transaction on this partition.
    pub fn append_marker(
        &self,
        marker: &TxnMarkerEntry,
        now_ms: i64,
    ) -> Result<LogAppendResult, AppendError> {
        self.append_as_leader(|log, leader_epoch| {
            log.append_marker(
                marker.producer_id,
                marker.producer_epoch,
                if marker.commit {
                    ControlRecordType::Commit
                } else {
                    ControlRecordType::Abort
                },
                marker.coordinator_epoch,
                leader_epoch,
                now_ms,
            )
        })
    }

    fn append_as_leader(
        &self,
        append: impl FnOnce(&mut Log, i32) -> Result<LogAppendResult, StorageError>,
    ) -> Result<LogAppendResult, AppendError> {
        let leader_epoch = {
            let state = self.replication.lock();
            if state.leader != self.node_id {
                return Err(AppendError::NotLeader);
            }
            state.leader_epoch
        };
        let mut log = self.log.lock();
        let result = append(&mut log, leader_epoch)?;
        let log_end_offset = log.log_end_offset();
        drop(log);
        if !result.duplicate {
            self.log_end.send_replace(log_end_offset);
            self.maybe_advance_high_watermark(log_end_offset);
        }
        Ok(result)
    }

    /// Whether `producer_id` has a transaction open on this partition: a
    /// transactional produce for one that has not is verified with the
    /// transaction coordinator first (KIP-890).
    pub fn has_ongoing_transaction(&self, producer_id: i64) -> bool {
        self.log.lock().has_ongoing_transaction(producer_id)
    }

    /// Kafka's last stable offset: nothing at or above it may reach a
    /// read_committed consumer, because a transaction that starts below it
    /// is still open (or the high watermark, if none is).
    pub fn last_stable_offset(&self) -> i64 {
        let log = self.log.lock();
        last_stable_offset(&log, self.high_watermark())
    }

    /// Runs `f` on the log while this broker still follows in
    /// `fetched_epoch`, the leader epoch a fetch was sent under; `None` once
    /// leadership moved. An answer that crossed a change must not touch the
    /// log: a new leader has already recorded where its epoch starts. The
    /// replication state stays locked throughout (it is always taken before
    /// the log), so a change lands before the check or after `f`.
    fn with_follower_log<T>(
        &self,
        fetched_epoch: i32,
        f: impl FnOnce(&mut Log) -> Result<T, StorageError>,
    ) -> Result<Option<T>, StorageError> {
        let state = self.replication.lock();
        if state.leader == self.node_id || state.leader_epoch != fetched_epoch {
            return Ok(None);
        }
        let mut log = self.log.lock();
        f(&mut log).map(Some)
    }

    /// Appends what the leader sent, with the leader's offsets and epochs,
    /// and takes the leader's high watermark as far as this log reaches;
    /// false if leadership moved since the fetch under `fetched_epoch`.
    pub fn append_as_follower(
        &self,
        fetched_epoch: i32,
        batches: &[u8],
        leader_high_watermark: i64,
    ) -> Result<bool, StorageError> {
        let appended = self.with_follower_log(fetched_epoch, |log| {
            if !batches.is_empty() {
                log.append_as_follower(batches)?;
            }
            Ok(log.log_end_offset())
        })?;
        let Some(log_end_offset) = appended else {
            return Ok(false);
        };
        self.log_end.send_replace(log_end_offset);
        self.set_follower_high_watermark(leader_high_watermark.min(log_end_offset));
        Ok(true)
    }

    fn set_follower_high_watermark(&self, offset: i64) {
        self.high_watermark.send_if_modified(|hw| {
            let changed = *hw != offset;
            *hw = offset;
            changed
        });
    }

    /// Removes records the leader does not have (after a divergence, or a
    /// leader whose log ends before ours), from the offset `target` picks
    /// in the log; false if leadership moved since the fetch under
    /// `fetched_epoch`. The high watermark never stays above the log end.
    pub fn truncate_as_follower(
        &self,
        fetched_epoch: i32,
        target: impl FnOnce(&Log) -> i64,
    ) -> Result<bool, StorageError> {
        let truncated = self.with_follower_log(fetched_epoch, |log| {
            let offset = target(log);
            if offset < log.log_end_offset() {
                tracing::warn!(partition = %self.tp, from = log.log_end_offset(), to = offset, "truncating a diverged follower log");
            }
            log.truncate_to(offset)?;
            Ok(log.log_end_offset())
        })?;
        let Some(log_end_offset) = truncated else {
            return Ok(false);
        };
        self.log_end.send_replace(log_end_offset);
        if self.high_watermark() > log_end_offset {
            self.set_follower_high_watermark(log_end_offset);
        }
        Ok(true)
    }

    /// Drops the whole log and restarts it at the leader's log start
    /// `offset`, past our log end: nothing we hold is still in the leader's
    /// log. The high watermark restarts there too. False if leadership
    /// moved since the fetch under `fetched_epoch`.
    pub fn truncate_fully_and_start_at(
        &self,
        fetched_epoch: i32,
        offset: i64,
    ) -> Result<bool, StorageError> {
        let restarted = self.with_follower_log(fetched_epoch, |log| {
            tracing::warn!(partition = %self.tp, log_end = log.log_end_offset(), leader_log_start = offset, "the leader's log starts past this follower's log end: restarting the log there");
            log.truncate_fully_and_start_at(offset)
        })?;
        if restarted.is_none() {
            return Ok(false);
        }
        self.log_end.send_replace(offset);
        self.set_follower_high_watermark(offset);
        Ok(true)
    }

    /// Makes everything up to `offset` durable. Producers that arrive while
    /// an fsync is running wait for it and then find their data already
    /// covered, or run the next one for everyone queued behind them.
    pub async fn flush_to(&self, offset: i64) -> Result<(), StorageError> {
        if self.log.lock().flushed_offset() >= offset {
            return Ok(());
        }
        let _turn = self.flush_lock.lock().await;
        let (file, target) = {
            let log = self.log.lock();
            if log.flushed_offset() >= offset {
                return Ok(());
            }
            (log.active_segment_file(), log.log_end_offset())
        };
        // Older segments were fsynced when they were rolled, so syncing the
        // active one covers everything up to `target`.
        tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .map_err(|e| StorageError::Io(std::io::Error::other(e)))??;
        self.log.lock().mark_flushed(target);
        Ok(())
    }

    /// Locates data for a fetch. The bytes are read afterwards, outside the
    /// log's lock, by `FetchSlice::read_bytes`. `bound` says how far the
    /// reader may see: a follower everything the leader has, a consumer
    /// below the high watermark, a read_committed consumer below the last
    /// stable offset, with the aborted transactions it must drop.
    pub fn read(
        &self,
        offset: i64,
        max_bytes: u32,
        min_one_batch: bool,
        bound: ReadBound,
    ) -> Result<ReadResult, StorageError> {
        let log = self.log.lock();
        let high_watermark = self.high_watermark();
        let last_stable_offset = last_stable_offset(&log, high_watermark);
        let upper = match bound {
            ReadBound::LogEnd => log.log_end_offset(),
            ReadBound::HighWatermark => high_watermark,
            ReadBound::LastStable => last_stable_offset,
        };
        let slice = if offset == upper && offset >= log.log_start_offset() {
            None
        } else {
            Some(log.read(offset, max_bytes, upper, min_one_batch)?)
        };
        let aborted_transactions = match (&slice, bound) {
            (Some(s), ReadBound::LastStable) if !s.is_empty() => {
                Some(log.aborted_transactions(offset, upper)?)
            }
            (_, ReadBound::LastStable) => Some(Vec::new()),
            _ => None,
        };
        Ok(ReadResult {
            slice,
            high_watermark,
            last_stable_offset,
            log_start_offset: log.log_start_offset(),
            aborted_transactions,
        })
    }

    pub fn with_log<T>(&self, f: impl FnOnce(&mut Log) -> T) -> T {
        f(&mut self.log.lock())
    }
}

pub struct ReplicaManager {
    node_id: i32,
    log_manager: LogManager,
    producer_id_expiration_ms: i64,
    partitions: RwLock<HashMap<TopicPartition, Arc<Partition>>>,
    /// Checkpoints are written from the background task and after
    /// DeleteRecords; one at a time, since they share temporary files.
    checkpoint_lock: Mutex<()>,
    /// Images are applied one at a time, so a partition is opened once, and
    /// in order (see `Applied`).
    applied: Mutex<Applied>,
}

/// What `apply_image` has done, kept under its lock.
#[derive(Default)]
struct Applied {
    /// The offset of the newest image applied. The watcher and a request's
    /// reply publish concurrently, so an older image can arrive after a
    /// newer one; applied, it would delete a topic the newer image created
    /// and roll leader epochs back.
    image_offset: Option<i64>,
    /// Set by `close_all`: after it no image is applied, since a blocking
    /// apply that outlived its aborted task would reopen every log
    /// (recovery removing the snapshot files the close is writing) while
    /// the close runs.
    closed: bool,
}

impl ReplicaManager {
    pub fn new(node_id: i32, log_manager: LogManager, producer_id_expiration_ms: i64) -> Self {
        Self {
            node_id,
            log_manager,
            producer_id_expiration_ms,
            partitions: RwLock::new(HashMap::new()),
            checkpoint_lock: Mutex::new(()),
            applied: Mutex::new(Applied::default()),
        }
    }

    pub fn log_manager(&self) -> &LogManager {
        &self.log_manager
    }

    pub fn get(&self, tp: &TopicPartition) -> Option<Arc<Partition>> {
        self.partitions.read().get(tp).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Partition>> {
        self.partitions.read().values().cloned().collect()
    }

    /// Brings the hosted partitions in line with the metadata image: opens
    /// (creating on disk) every partition this broker is a replica of, and
    /// closes and deletes the data of every partition whose topic is gone.
    /// Called for every new image, by whichever task sees it first.
    pub fn apply_image(
        &self,
        image: &MetadataImage,
        config: &BrokerConfig,
        now_ms: i64,
    ) -> Result<(), StorageError> {
        let mut applied = self.applied.lock();
        if applied.closed || applied.image_offset > Some(image.offset) {
            tracing::debug!(
                offset = image.offset,
                "metadata image not applied: the logs are closed, or a newer image was applied"
            );
            return Ok(());
        }
        applied.image_offset = Some(image.offset);
        let mut wanted = HashMap::new();
        for topic in image.topics() {
            for p in topic.partitions.values() {
                if p.replicas.contains(&self.node_id) {
                    wanted.insert(
                        TopicPartition::new(topic.name.clone(), p.partition),
                        (topic.clone(), p.clone()),
                    );
                }
            }
        }
        let gone: Vec<Arc<Partition>> = {
            let mut partitions = self.partitions.write();
            let gone_keys: Vec<TopicPartition> = partitions
                .iter()
                .filter(|(tp, p)| {
                    wanted
                        .get(*tp)
                        .is_none_or(|(t, _)| t.topic_id != p.topic_id)
                })
                .map(|(tp, _)| tp.clone())
                .collect();
            gone_keys
                .iter()
                .filter_map(|tp| partitions.remove(tp))
                .collect()
        };
        for partition in gone {
            partition
                .deleted
                .store(true, std::sync::atomic::Ordering::Release);
            // Wake long polls so they answer instead of waiting out their timeout.
            partition.high_watermark.send_modify(|_| {});
            tracing::info!(partition = %partition.tp, "deleting partition data");
            self.log_manager.delete_partition_dir(&partition.tp)?;
        }
        for (tp, (topic, p)) in wanted {
            if let Some(existing) = self.get(&tp) {
                let config = config.log_config(image, &topic);
                existing.with_log(|log| log.update_config(config));
                if existing.update_replication(&p) {
                    existing.assign_leader_epoch_start()?;
                }
                continue;
            }
            let log = self.log_manager.open_log(
                &tp,
                &topic.topic_id.to_string(),
                config.log_config(image, &topic),
                self.producer_id_expiration_ms,
                now_ms,
            )?;
            let state = ReplicaState {
                leader: p.leader,
                leader_epoch: p.leader_epoch,
                partition_epoch: p.partition_epoch,
                replicas: p.replicas.clone(),
                isr: p.isr.clone(),
                followers: HashMap::new(),
                isr_change_pending: false,
            };
            let partition = Arc::new(Partition::new(
                tp.clone(),
                topic.topic_id,
                self.node_id,
                state,
                log,
            ));
            partition.assign_leader_epoch_start()?;
            self.partitions.write().insert(tp, partition);
        }
        Ok(())
    }

    /// Moves aside partition directories the metadata does not know, instead
    /// of deleting them: a lost metadata log must not mean lost data.
    pub fn quarantine_strays(&self, image: &MetadataImage) -> Result<(), StorageError> {
        for tp in self.log_manager.existing_partitions()? {
            if tp.topic == crate::metadata_store::METADATA_TOPIC {
                continue;
            }
            if image.partition(&tp.topic, tp.partition).is_none() {
                tracing::warn!(partition = %tp, "partition directory is not in the metadata; renaming it to .stray");
                self.log_manager.quarantine_partition_dir(&tp)?;
            }
        }
        Ok(())
    }

    /// ISR shrinks due on the partitions this broker leads.
    pub fn isr_shrinks(&self, lag_max_ms: i64, now_ms: i64) -> Vec<(Arc<Partition>, IsrProposal)> {
        self.all()
            .into_iter()
            .filter_map(|p| {
                let change = p.isr_shrink(lag_max_ms, now_ms)?;
                tracing::warn!(partition = %p.tp, isr = ?change.new_isr, "a follower fell behind; shrinking the ISR");
                Some((p, change))
            })
            .collect()
    }

    /// Deletes segments past retention in every partition.
    pub fn enforce_retention(&self, now_ms: i64) {
        for partition in self.all() {
            match partition.with_log(|log| log.delete_old_segments(now_ms)) {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(partition = %partition.tp, segments = n, "retention deleted segments")
                }
                Err(e) => {
                    tracing::error!(partition = %partition.tp, error = %e, "retention failed")
                }
            }
        }
    }

    /// Time-driven upkeep: segment.ms rolls, flush.ms flushes, producer expiry.
    pub fn tick(&self, now_ms: i64) {
        for partition in self.all() {
            let result = partition.with_log(|log| -> Result<(), StorageError> {
                log.roll_if_due(now_ms)?;
                log.flush_if_due(now_ms)?;
                log.expire_producers(now_ms);
                Ok(())
            });
            if let Err(e) = result {
                tracing::error!(partition = %partition.tp, error = %e, "log upkeep failed");
            }
        }
    }

    pub fn checkpoint(&self) -> Result<(), StorageError> {
        let _one_writer = self.checkpoint_lock.lock();
        let points: Vec<(TopicPartition, i64, i64)> = self
            .all()
            .iter()
            .map(|p| p.with_log(|log| (p.tp.clone(), log.recovery_point(), log.log_start_offset())))
            .collect();
        self.log_manager.write_checkpoints(&points)
    }

    /// Flushes and closes every log. Called once, after the listener
    /// stopped. Returns each partition's recovery point and log start offset
    /// as they stand on disk, for the final checkpoint.
    pub fn close_all(&self) -> Result<Vec<(TopicPartition, i64, i64)>, StorageError> {
        self.applied.lock().closed = true;
        let partitions: Vec<Arc<Partition>> =
            self.partitions.write().drain().map(|(_, p)| p).collect();
        let mut points = Vec::with_capacity(partitions.len());
        for partition in partitions {
            let tp = partition.tp.clone();
            let (end, start) = partition.with_log(|log| -> Result<(i64, i64), StorageError> {
                Ok((log.flush()?, log.log_start_offset()))
            })?;
            points.push((tp.clone(), end, start));
            match Arc::try_unwrap(partition) {
                // Closing also writes the producer-state snapshot.
                Ok(partition) => partition.log.into_inner().close()?,
                Err(_) => {
                    tracing::warn!(partition = %tp, "partition still in use at shutdown; flushed only")
                }
            }
        }
        Ok(points)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use keel_metadata::MetadataRecord;
    use uuid::Uuid;

    use super::*;

    fn image_with_partition(node_id: i32) -> MetadataImage {
        let mut image = MetadataImage::empty();
        let topic_id = Uuid::from_u128(7);
        let records = [
            MetadataRecord::Topic {
                name: "t".into(),
                topic_id,
            },
            MetadataRecord::Partition {
                topic_id,
                partition: 0,
                replicas: vec![node_id],
                isr: vec![node_id],
                leader: node_id,
                leader_epoch: 0,
                partition_epoch: 0,
                adding_replicas: vec![],
                removing_replicas: vec![],
            },
        ];
        for (offset, record) in records.iter().enumerate() {
            image.apply(offset as i64, record).unwrap();
        }
        image
    }

    fn manager_in(dir: &std::path::Path) -> (ReplicaManager, BrokerConfig) {
        let (config, _) = BrokerConfig::from_properties(BTreeMap::new()).unwrap();
        let log_manager = LogManager::open(dir.to_path_buf()).unwrap();
        (
            ReplicaManager::new(config.node_id, log_manager, 60_000),
            config,
        )
    }

    #[test]
    fn an_older_image_applied_late_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (manager, config) = manager_in(dir.path());
        let older = MetadataImage::empty();
        let newer = image_with_partition(config.node_id);
        let tp = TopicPartition::new("t".to_string(), 0);
        manager.apply_image(&newer, &config, 0).unwrap();
        manager.apply_image(&older, &config, 0).unwrap();
        assert!(
            manager.get(&tp).is_some(),
            "an older image deleted a partition the newer one created"
        );
    }

    #[test]
    fn no_image_opens_a_log_once_the_logs_are_closed() {
        let dir = tempfile::tempdir().unwrap();
        let (manager, config) = manager_in(dir.path());
        let image = image_with_partition(config.node_id);
        let tp = TopicPartition::new("t".to_string(), 0);
        manager.apply_image(&image, &config, 0).unwrap();
        assert!(manager.get(&tp).is_some());

        assert_eq!(manager.close_all().unwrap().len(), 1);
        manager.apply_image(&image, &config, 0).unwrap();
        assert!(
            manager.get(&tp).is_none(),
            "a closed manager reopened a log"
        );
    }
}
