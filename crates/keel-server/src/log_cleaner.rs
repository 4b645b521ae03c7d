//! The log cleaner's scheduler: Kafka's `LogCleaner` threads and
//! `LogCleanerManager`. Each round picks the dirtiest compacted log not
//! already being cleaned, prepares the clean under the partition's lock,
//! runs it on a blocking thread (`keel-storage` does the work), installs the
//! result under the lock, and advances the log's first dirty offset in
//! `cleaner-offset-checkpoint`. Up to `log.cleaner.threads` cleans run at
//! once; when nothing is dirty enough the cleaner sleeps
//! `log.cleaner.backoff.ms`. All `log.cleaner.*` settings are dynamic.
//!
//! Cleaning is upkeep, so it yields to the hot path: each clean runs on a
//! thread of its own at a lowered priority ([`CLEANER_THREAD_NICE`]). On an
//! idle machine it runs at full speed; under CPU contention produce and
//! fetch keep their pace and the cleaner takes what is left, as Redpanda
//! runs compaction in a scheduling group with few shares.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use keel_storage::{filthiest_log, CleanOutcome, CleanerConfig, CleanerStats, Throttler};
use keel_types::TopicPartition;
use parking_lot::Mutex;
use tokio::task::JoinSet;

use crate::broker::{now_ms, Broker};
use crate::compaction_progress::{CompactionProgress, LastClean};
use crate::replica_manager::Partition;

/// The nice value of cleaning threads: a scheduler weight about a tenth of
/// a default thread's.
const CLEANER_THREAD_NICE: i32 = 10;

pub struct LogCleaner {
    /// Each compacted log's first dirty offset, as in the checkpoint file.
    first_dirty_offsets: Mutex<BTreeMap<TopicPartition, i64>>,
    /// Logs being cleaned now, so that no two cleans pick the same log.
    in_progress: Mutex<HashSet<TopicPartition>>,
    /// Each log's last clean since the broker started, for its progress.
    last_cleans: Mutex<BTreeMap<TopicPartition, LastClean>>,
    /// Logs whose swap failed part way: left alone until the broker
    /// restarts and recovery completes or discards the swap.
    uncleanable: Mutex<HashSet<TopicPartition>>,
    /// Shared by every clean: the I/O budget, and how they are stopped.
    throttler: Arc<Throttler>,
}

impl LogCleaner {
    pub fn new(first_dirty_offsets: BTreeMap<TopicPartition, i64>) -> LogCleaner {
        LogCleaner {
            first_dirty_offsets: Mutex::new(first_dirty_offsets),
            in_progress: Mutex::new(HashSet::new()),
            last_cleans: Mutex::new(BTreeMap::new()),
            uncleanable: Mutex::new(HashSet::new()),
            throttler: Arc::new(Throttler::new(f64::MAX)),
        }
    }

    /// The first dirty offset of one log, as the checkpoint holds it.
    fn first_dirty_offset(&self, tp: &TopicPartition) -> Option<i64> {
        self.first_dirty_offsets.lock().get(tp).copied()
    }

    /// How far cleaning of `partition` has got; `None` unless its cleanup
    /// policy includes `compact`.
    pub fn progress(&self, partition: &Partition) -> Option<CompactionProgress> {
        let upper_bound = partition.high_watermark();
        let first_dirty = self.first_dirty_offset(&partition.tp);
        let dirtiness =
            partition.with_log(|log| log.dirtiness(first_dirty, upper_bound, now_ms()))?;
        Some(CompactionProgress {
            first_dirty_offset: dirtiness.first_dirty_offset,
            first_uncleanable_offset: dirtiness.first_uncleanable_offset,
            clean_bytes: dirtiness.clean_bytes,
            dirty_bytes: dirtiness.cleanable_bytes,
            min_cleanable_dirty_ratio: dirtiness.min_cleanable_dirty_ratio,
            cleaning: self.in_progress.lock().contains(&partition.tp),
            last_clean: self.last_cleans.lock().get(&partition.tp).cloned(),
        })
    }

    /// Runs cleans until `shutdown` fires, then stops those in flight.
    pub async fn run(broker: Arc<Broker>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let cleaner = &broker.log_cleaner;
        let mut running: JoinSet<()> = JoinSet::new();
        loop {
            let config = cleaner_config(&broker);
            cleaner
                .throttler
                .set_bytes_per_second(config.io_max_bytes_per_second);
            while running.len() < config.threads {
                let Some((partition, task)) = cleaner.next_task(&broker) else {
                    break;
                };
                let broker = broker.clone();
                let config = config.clone();
                running.spawn(async move { clean(&broker, partition, task, config).await });
            }
            let backoff = Duration::from_millis(
                broker
                    .config
                    .dynamic_broker_config_num(&broker.image(), "log.cleaner.backoff.ms"),
            );
            tokio::select! {
                _ = shutdown.changed() => break,
                // A finished clean frees a thread: look for more work at once.
                Some(_) = running.join_next() => {}
                _ = tokio::time::sleep(backoff) => {}
            }
        }
        cleaner.throttler.stop();
        while running.join_next().await.is_some() {}
    }

    /// The dirtiest cleanable log not being cleaned, with its clean prepared
    /// under the partition's lock.
    fn next_task(&self, broker: &Broker) -> Option<(Arc<Partition>, keel_storage::CleanerTask)> {
        let now = now_ms();
        let candidates: Vec<_> = {
            let (in_progress, uncleanable) = (self.in_progress.lock(), self.uncleanable.lock());
            broker
                .replicas
                .all()
                .into_iter()
                .filter(|p| !in_progress.contains(&p.tp) && !uncleanable.contains(&p.tp))
                .filter_map(|p| {
                    let upper_bound = p.high_watermark();
                    let first_dirty = self.first_dirty_offset(&p.tp);
                    let dirtiness =
                        p.with_log(|log| log.dirtiness(first_dirty, upper_bound, now))?;
                    Some(((p, upper_bound), dirtiness))
                })
                .collect()
        };
        let ((partition, upper_bound), dirtiness) = filthiest_log(candidates)?;
        let first_dirty = Some(dirtiness.first_dirty_offset);
        let task = partition.with_log(|log| log.prepare_clean(first_dirty, upper_bound, now))?;
        self.in_progress.lock().insert(partition.tp.clone());
        Some((partition, task))
    }

    fn finished(&self, broker: &Broker, tp: &TopicPartition, stats: Option<&CleanerStats>) {
        self.in_progress.lock().remove(tp);
        let Some(stats) = stats else {
            return;
        };
        let last_clean = LastClean {
            finished_ms: now_ms(),
            bytes_read: stats.bytes_read,
            bytes_written: stats.bytes_written,
            records_read: stats.records_read,
            records_retained: stats.records_retained,
            elapsed_ms: stats.elapsed.as_millis() as u64,
        };
        self.last_cleans.lock().insert(tp.clone(), last_clean);
        let offsets = {
            let mut offsets = self.first_dirty_offsets.lock();
            offsets.insert(tp.clone(), stats.next_dirty_offset);
            // Deleted partitions leave the checkpoint.
            let hosted: HashSet<TopicPartition> =
                broker.replicas.all().iter().map(|p| p.tp.clone()).collect();
            offsets.retain(|tp, _| hosted.contains(tp));
            self.last_cleans.lock().retain(|tp, _| hosted.contains(tp));
            offsets.clone()
        };
        if let Err(e) = broker
            .replicas
            .log_manager()
            .write_cleaner_checkpoint(&offsets)
        {
            tracing::error!(error = %e, "writing the cleaner checkpoint failed");
        }
    }
}

async fn clean(
    broker: &Broker,
    partition: Arc<Partition>,
    task: keel_storage::CleanerTask,
    config: CleanerConfig,
) {
    let tp = partition.tp.clone();
    let stats = clean_and_install(broker, partition, task, config).await;
    broker.log_cleaner.finished(broker, &tp, stats.as_ref());
}

/// Runs `clean` on a new thread at [`CLEANER_THREAD_NICE`] (on Linux a
/// nice value is a thread's own). Not on tokio's blocking pool: its threads
/// run other work afterwards, and an unprivileged process cannot raise a
/// lowered priority back. Errs if the thread could not start or panicked.
async fn on_cleaning_thread<T: Send + 'static>(
    clean: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("keel-log-cleaner".into())
        .spawn(move || {
            let thread = Some(rustix::thread::gettid());
            if let Err(e) = rustix::process::setpriority_process(thread, CLEANER_THREAD_NICE) {
                tracing::debug!(error = %e, "cannot lower the cleaning thread's priority");
            }
            let _ = done.send(clean());
        })
        .map_err(|e| format!("starting a cleaning thread: {e}"))?;
    result
        .await
        .map_err(|_| "the cleaning thread panicked".to_string())
}

/// One clean from start to swap; the stats when it was installed.
async fn clean_and_install(
    broker: &Broker,
    partition: Arc<Partition>,
    task: keel_storage::CleanerTask,
    config: CleanerConfig,
) -> Option<CleanerStats> {
    let cleaner = &broker.log_cleaner;
    let tp = partition.tp.clone();
    let first_dirty = task.first_dirty_offset();
    tracing::info!(
        partition = %tp,
        first_dirty,
        first_uncleanable = task.first_uncleanable_offset(),
        "beginning cleaning of log"
    );
    let throttler = cleaner.throttler.clone();
    let cleaned = match on_cleaning_thread(move || task.clean(&config, &throttler)).await {
        Ok(Ok(cleaned)) => cleaned,
        Ok(Err(keel_storage::StorageError::CleanerStopped)) => return None,
        Ok(Err(e)) => {
            tracing::error!(partition = %tp, error = %e, "cleaning failed; the log is left as it was");
            return None;
        }
        Err(e) => {
            tracing::error!(partition = %tp, error = %e, "cleaning did not run");
            return None;
        }
    };
    if partition.is_deleted() {
        return None;
    }
    // The swap renames and fsyncs: a blocking thread's work, not a runtime
    // worker's. The replaced files are closed after the lock is released.
    let installed =
        tokio::task::spawn_blocking(move || partition.with_log(|log| log.install_cleaned(cleaned)))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
    match installed {
        Ok(CleanOutcome::Installed(stats, retired)) => {
            tokio::task::spawn_blocking(move || drop(retired));
            tracing::info!(
                partition = %tp,
                first_dirty,
                next_dirty = stats.next_dirty_offset,
                bytes_read = stats.bytes_read,
                bytes_written = stats.bytes_written,
                records_read = stats.records_read,
                records_retained = stats.records_retained,
                elapsed_ms = stats.elapsed.as_millis() as u64,
                "cleaned log"
            );
            Some(stats)
        }
        Ok(CleanOutcome::Aborted { reason }) => {
            tracing::info!(partition = %tp, %reason, "clean aborted; the log changed meanwhile");
            None
        }
        Err(e) => {
            tracing::error!(partition = %tp, error = %e, "installing a clean failed part way; the log is not cleaned again until a restart recovers it");
            cleaner.uncleanable.lock().insert(tp);
            None
        }
    }
}

/// The `log.cleaner.*` settings in effect now.
fn cleaner_config(broker: &Broker) -> CleanerConfig {
    let image = broker.image();
    let num = |name| broker.config.dynamic_broker_config_num(&image, name);
    let rate: f64 = broker
        .config
        .dynamic_broker_config(&image, "log.cleaner.io.max.bytes.per.second")
        .trim()
        .parse()
        .unwrap_or(f64::MAX);
    CleanerConfig {
        threads: num("log.cleaner.threads").max(1) as usize,
        dedupe_buffer_bytes: num("log.cleaner.dedupe.buffer.size"),
        io_buffer_bytes: num("log.cleaner.io.buffer.size") as usize,
        io_max_bytes_per_second: rate,
        ..CleanerConfig::default()
    }
}
