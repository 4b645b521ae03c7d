//! One log directory: which partitions it holds, whether the broker shut
//! down cleanly, and the directory-level offset checkpoints.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use keel_types::TopicPartition;

use crate::checkpoint::{read_offset_checkpoint, sync_dir, write_offset_checkpoint};
use crate::config::LogConfig;
use crate::error::{IoContext, Result};
use crate::log::Log;

pub const RECOVERY_POINT_CHECKPOINT: &str = "recovery-point-offset-checkpoint";
pub const LOG_START_OFFSET_CHECKPOINT: &str = "log-start-offset-checkpoint";
pub const CLEAN_SHUTDOWN_MARKER: &str = ".kafka_cleanshutdown";
/// Each compacted partition's first dirty offset: where its next clean's
/// dirty section starts.
pub const CLEANER_OFFSET_CHECKPOINT: &str = "cleaner-offset-checkpoint";

#[derive(Debug)]
pub struct LogManager {
    dir: PathBuf,
    /// Whether the previous run ended with `mark_clean_shutdown`; decides
    /// whether opened logs skip recovery.
    had_clean_shutdown: bool,
    recovery_points: BTreeMap<TopicPartition, i64>,
    log_start_offsets: BTreeMap<TopicPartition, i64>,
}

impl LogManager {
    /// Opens (creating) the log dir. The clean-shutdown marker is consumed:
    /// a crash from here on must lead to recovery on the next start.
    pub fn open(dir: PathBuf) -> Result<LogManager> {
        std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        let marker = dir.join(CLEAN_SHUTDOWN_MARKER);
        let had_clean_shutdown = marker.exists();
        let recovery_points = read_offset_checkpoint(&dir.join(RECOVERY_POINT_CHECKPOINT))?;
        let log_start_offsets = read_offset_checkpoint(&dir.join(LOG_START_OFFSET_CHECKPOINT))?;
        if had_clean_shutdown {
            std::fs::remove_file(&marker).ctx(|| format!("deleting {}", marker.display()))?;
            sync_dir(&dir)?;
        }
        Ok(LogManager {
            dir,
            had_clean_shutdown,
            recovery_points,
            log_start_offsets,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn had_clean_shutdown(&self) -> bool {
        self.had_clean_shutdown
    }

    /// Partitions present on disk, from directory names. Anything that is
    /// not `<topic>-<partition>` (Kafka's `-delete`/`-future` dirs, stray
    /// files) is ignored.
    pub fn existing_partitions(&self) -> Result<Vec<TopicPartition>> {
        let mut out = Vec::new();
        for entry in
            std::fs::read_dir(&self.dir).ctx(|| format!("listing {}", self.dir.display()))?
        {
            let entry = entry.ctx(|| format!("listing {}", self.dir.display()))?;
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if let (true, Ok(tp)) = (is_dir, name.parse::<TopicPartition>()) {
                out.push(tp);
            }
        }
        out.sort();
        Ok(out)
    }

    fn partition_dir(&self, tp: &TopicPartition) -> PathBuf {
        self.dir.join(tp.dir_name())
    }

    /// Opens a partition's log, recovering it from its checkpointed
    /// recovery point (0 if none) unless the last shutdown was clean.
    pub fn open_log(
        &self,
        tp: &TopicPartition,
        topic_id: &str,
        config: LogConfig,
        producer_id_expiration_ms: i64,
        now_ms: i64,
    ) -> Result<Log> {
        let recover_from = if self.had_clean_shutdown {
            None
        } else {
            Some(self.recovery_points.get(tp).copied().unwrap_or(0))
        };
        let mut log = Log::open(
            self.partition_dir(tp),
            topic_id,
            config,
            recover_from,
            producer_id_expiration_ms,
            now_ms,
        )?;
        if let Some(&start) = self.log_start_offsets.get(tp) {
            log.maybe_increment_log_start_offset(start)?;
        }
        Ok(log)
    }

    pub fn delete_partition_dir(&self, tp: &TopicPartition) -> Result<()> {
        let dir = self.partition_dir(tp);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => sync_dir(&self.dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).ctx(|| format!("deleting {}", dir.display())),
        }
    }

    /// Renames a partition directory to `<name>.stray` so it is no longer
    /// loaded but its data survives for an operator to inspect.
    pub fn quarantine_partition_dir(&self, tp: &TopicPartition) -> Result<()> {
        let dir = self.partition_dir(tp);
        let mut target = dir.with_extension("stray");
        let mut n = 1;
        while target.exists() {
            target = dir.with_extension(format!("stray{n}"));
            n += 1;
        }
        std::fs::rename(&dir, &target)
            .ctx(|| format!("renaming {} to {}", dir.display(), target.display()))?;
        sync_dir(&self.dir)
    }

    /// Writes both checkpoints atomically. `points` lists every live
    /// partition as (partition, recovery point, log start offset).
    pub fn write_checkpoints(&self, points: &[(TopicPartition, i64, i64)]) -> Result<()> {
        write_offset_checkpoint(
            &self.dir.join(RECOVERY_POINT_CHECKPOINT),
            points.iter().map(|(tp, recovery, _)| (tp, *recovery)),
        )?;
        write_offset_checkpoint(
            &self.dir.join(LOG_START_OFFSET_CHECKPOINT),
            points.iter().map(|(tp, _, start)| (tp, *start)),
        )
    }

    /// The first dirty offset of every partition the cleaner has cleaned.
    pub fn read_cleaner_checkpoint(&self) -> Result<BTreeMap<TopicPartition, i64>> {
        read_offset_checkpoint(&self.dir.join(CLEANER_OFFSET_CHECKPOINT))
    }

    /// Replaces `cleaner-offset-checkpoint` atomically. `offsets` lists every
    /// compacted partition still in this dir (Kafka drops deleted ones).
    pub fn write_cleaner_checkpoint(&self, offsets: &BTreeMap<TopicPartition, i64>) -> Result<()> {
        write_offset_checkpoint(
            &self.dir.join(CLEANER_OFFSET_CHECKPOINT),
            offsets.iter().map(|(tp, &offset)| (tp, offset)),
        )
    }

    /// Call after every log is closed: the next open skips recovery.
    pub fn mark_clean_shutdown(&self) -> Result<()> {
        crate::checkpoint::write_atomically(&self.dir.join(CLEAN_SHUTDOWN_MARKER), b"")
    }
}
