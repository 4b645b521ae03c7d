//! Kafka's small text files: offset checkpoints, the leader-epoch
//! checkpoint and `partition.metadata`, all replaced atomically.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use keel_types::{TopicPartition, NO_LEADER_EPOCH};

use crate::error::{IoContext, Result, StorageError};

/// Kafka writes version 0 of every checkpoint format.
const CHECKPOINT_VERSION: &str = "0";

/// Replaces `path` with `bytes` so that a crash leaves either the old or the
/// new content: write a temporary file, fsync it, rename, fsync the directory.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(match path.extension() {
        Some(ext) => format!("{}.tmp", ext.to_string_lossy()),
        None => "tmp".to_string(),
    });
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&tmp)
        .ctx(|| format!("creating {}", tmp.display()))?;
    file.write_all(bytes)
        .ctx(|| format!("writing {}", tmp.display()))?;
    file.sync_all().ctx(|| format!("fsync {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .ctx(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Makes a directory's entries (created, renamed, deleted files) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx(|| format!("fsync directory {}", dir.display()))
}

/// Splits a checkpoint file into its entry lines after checking the
/// version and count header.
fn entry_lines<'a>(path: &Path, text: &'a str) -> Result<Vec<&'a str>> {
    let corrupt = |why: &str| StorageError::Corrupt(format!("{}: {why}", path.display()));
    let mut lines = text.lines();
    if lines.next() != Some(CHECKPOINT_VERSION) {
        return Err(corrupt("unknown version"));
    }
    let count: usize = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| corrupt("bad entry count"))?;
    let entries: Vec<&str> = lines.filter(|l| !l.trim().is_empty()).collect();
    if entries.len() != count {
        return Err(corrupt(&format!(
            "{} entries, header says {count}",
            entries.len()
        )));
    }
    Ok(entries)
}

fn read_optional(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Err(StorageError::Corrupt(
            format!("{} is not UTF-8", path.display()),
        )),
        Err(e) => Err(e).ctx(|| format!("reading {}", path.display())),
    }
}

/// Reads a log-dir offset checkpoint (`recovery-point-offset-checkpoint`,
/// `log-start-offset-checkpoint`). A missing file is empty.
pub fn read_offset_checkpoint(path: &Path) -> Result<BTreeMap<TopicPartition, i64>> {
    let Some(text) = read_optional(path)? else {
        return Ok(BTreeMap::new());
    };
    let mut out = BTreeMap::new();
    for line in entry_lines(path, &text)? {
        let mut parts = line.split(' ');
        let parsed = (|| {
            let topic = parts.next()?;
            let partition: i32 = parts.next()?.parse().ok()?;
            let offset: i64 = parts.next()?.parse().ok()?;
            (parts.next().is_none() && !topic.is_empty())
                .then(|| (TopicPartition::new(topic, partition), offset))
        })();
        let (tp, offset) = parsed.ok_or_else(|| {
            StorageError::Corrupt(format!("{}: bad line {line:?}", path.display()))
        })?;
        out.insert(tp, offset);
    }
    Ok(out)
}

pub fn write_offset_checkpoint<'a>(
    path: &Path,
    entries: impl ExactSizeIterator<Item = (&'a TopicPartition, i64)>,
) -> Result<()> {
    let mut text = format!("{CHECKPOINT_VERSION}\n{}\n", entries.len());
    for (tp, offset) in entries {
        text.push_str(&format!("{} {} {offset}\n", tp.topic, tp.partition));
    }
    write_atomically(path, text.as_bytes())
}

pub(crate) const LEADER_EPOCH_CHECKPOINT: &str = "leader-epoch-checkpoint";

/// `(epoch, start offset)` pairs, both strictly increasing: the first offset
/// each leader epoch wrote. Answers OffsetForLeaderEpoch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LeaderEpochCache {
    entries: Vec<(i32, i64)>,
}

impl LeaderEpochCache {
    pub(crate) fn load(dir: &Path) -> Result<LeaderEpochCache> {
        let path = dir.join(LEADER_EPOCH_CHECKPOINT);
        let Some(text) = read_optional(&path)? else {
            return Ok(LeaderEpochCache::default());
        };
        let mut entries: Vec<(i32, i64)> = Vec::new();
        for line in entry_lines(&path, &text)? {
            let parsed = line
                .split_once(' ')
                .and_then(|(e, o)| Some((e.parse().ok()?, o.parse().ok()?)));
            let (epoch, offset) = parsed.ok_or_else(|| {
                StorageError::Corrupt(format!("{}: bad line {line:?}", path.display()))
            })?;
            if entries
                .last()
                .is_some_and(|&(e, o)| epoch <= e || offset < o)
            {
                return Err(StorageError::Corrupt(format!(
                    "{}: entries not increasing",
                    path.display()
                )));
            }
            entries.push((epoch, offset));
        }
        Ok(LeaderEpochCache { entries })
    }

    fn save(&self, dir: &Path) -> Result<()> {
        let mut text = format!("{CHECKPOINT_VERSION}\n{}\n", self.entries.len());
        for (epoch, offset) in &self.entries {
            text.push_str(&format!("{epoch} {offset}\n"));
        }
        write_atomically(&dir.join(LEADER_EPOCH_CHECKPOINT), text.as_bytes())
    }

    pub fn entries(&self) -> &[(i32, i64)] {
        &self.entries
    }

    pub fn latest_epoch(&self) -> Option<i32> {
        self.entries.last().map(|&(e, _)| e)
    }

    /// Records that `epoch` starts at `start_offset`, if it is newer than
    /// the latest epoch. Returns whether anything changed. Epochs a leader
    /// recorded at the log end and never wrote in end where this one
    /// starts: they go, as Kafka's `assign` drops entries that would no
    /// longer increase.
    pub(crate) fn assign(&mut self, dir: &Path, epoch: i32, start_offset: i64) -> Result<bool> {
        if self.latest_epoch().is_some_and(|e| epoch <= e) || epoch < 0 {
            return Ok(false);
        }
        while self.entries.last().is_some_and(|&(_, o)| o >= start_offset) {
            self.entries.pop();
        }
        self.entries.push((epoch, start_offset));
        self.save(dir)?;
        Ok(true)
    }

    /// After the log was cut at `log_end_offset`, forget epochs that start
    /// at or past it.
    pub(crate) fn truncate_from_end(&mut self, dir: &Path, log_end_offset: i64) -> Result<()> {
        let before = self.entries.len();
        self.entries.retain(|&(_, o)| o < log_end_offset);
        if self.entries.len() != before {
            self.save(dir)?;
        }
        Ok(())
    }

    /// After the log start moved, epochs that started earlier now start at
    /// the new log start; only the newest of them is kept.
    pub(crate) fn truncate_from_start(&mut self, dir: &Path, log_start_offset: i64) -> Result<()> {
        let below = self.entries.partition_point(|&(_, o)| o < log_start_offset);
        if below == 0 {
            return Ok(());
        }
        let epoch = self.entries[below - 1].0;
        let mut entries = vec![(epoch, log_start_offset)];
        entries.extend(
            self.entries[below..]
                .iter()
                .filter(|&&(_, o)| o > log_start_offset),
        );
        if entries != self.entries {
            self.entries = entries;
            self.save(dir)?;
        }
        Ok(())
    }

    /// Where `epoch` ends in this log, as Kafka's `endOffsetFor` answers
    /// OffsetForLeaderEpoch and the leader's divergence check: the largest
    /// epoch ≤ `epoch` that has an entry, and the start of the next entry,
    /// or `log_end_offset` when `epoch` is the latest. None (Kafka's
    /// UNDEFINED_EPOCH_OFFSET) for the undefined epoch and for an epoch
    /// newer than every entry: nothing can be said of it. An epoch older
    /// than every entry is answered with itself and the first entry's
    /// start: what it wrote is gone with the log start, and a reader that
    /// starts over there replicates correctly from the leader's start.
    pub fn end_offset_for_epoch(&self, epoch: i32, log_end_offset: i64) -> Option<(i32, i64)> {
        if epoch == NO_LEADER_EPOCH {
            return None;
        }
        if self.latest_epoch() == Some(epoch) {
            return Some((epoch, log_end_offset));
        }
        let newer = self.entries.partition_point(|&(e, _)| e <= epoch);
        let &(_, end) = self.entries.get(newer)?;
        let found = newer.checked_sub(1).map_or(epoch, |i| self.entries[i].0);
        Some((found, end))
    }
}

pub(crate) const PARTITION_METADATA: &str = "partition.metadata";

/// Writes `partition.metadata` if missing; fails if it names another topic id.
pub(crate) fn ensure_partition_metadata(dir: &Path, topic_id: &str) -> Result<()> {
    let path = dir.join(PARTITION_METADATA);
    if let Some(text) = read_optional(&path)? {
        let found = text
            .lines()
            .find_map(|l| l.strip_prefix("topic_id:"))
            .map(|s| s.trim().to_string())
            .ok_or_else(|| StorageError::Corrupt(format!("{} has no topic_id", path.display())))?;
        if found != topic_id {
            return Err(StorageError::InconsistentTopicId {
                expected: topic_id.to_string(),
                found,
            });
        }
        return Ok(());
    }
    write_atomically(
        &path,
        format!("version: 0\ntopic_id: {topic_id}\n").as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_checkpoint_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("recovery-point-offset-checkpoint");
        assert!(read_offset_checkpoint(&path).unwrap().is_empty());
        let a = TopicPartition::new("orders-eu", 3);
        let b = TopicPartition::new("x", 0);
        write_offset_checkpoint(&path, [(&a, 42), (&b, 0)].into_iter()).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "0\n2\norders-eu 3 42\nx 0 0\n"
        );
        let back = read_offset_checkpoint(&path).unwrap();
        assert_eq!(back.get(&a), Some(&42));
        assert_eq!(back.get(&b), Some(&0));
        std::fs::write(&path, "0\n3\nx 0 1\n").unwrap();
        assert!(matches!(
            read_offset_checkpoint(&path),
            Err(StorageError::Corrupt(_))
        ));
        std::fs::write(&path, "0\n1\nx zero 1\n").unwrap();
        assert!(matches!(
            read_offset_checkpoint(&path),
            Err(StorageError::Corrupt(_))
        ));
    }

    #[test]
    fn leader_epochs() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = LeaderEpochCache::load(dir.path()).unwrap();
        assert!(c.assign(dir.path(), 1, 0).unwrap());
        assert!(!c.assign(dir.path(), 1, 5).unwrap());
        assert!(c.assign(dir.path(), 3, 10).unwrap());
        assert!(c.assign(dir.path(), 4, 20).unwrap());
        assert_eq!(
            std::fs::read_to_string(dir.path().join(LEADER_EPOCH_CHECKPOINT)).unwrap(),
            "0\n3\n1 0\n3 10\n4 20\n"
        );
        // An epoch never written in gives way to the next one at its start.
        assert!(c.assign(dir.path(), 6, 20).unwrap());
        assert_eq!(c.entries(), &[(1, 0), (3, 10), (6, 20)]);
        assert!(c.assign(dir.path(), 7, 30).unwrap());
        c.truncate_from_end(dir.path(), 20).unwrap();
        assert_eq!(c.entries(), &[(1, 0), (3, 10)]);
        c.truncate_from_start(dir.path(), 12).unwrap();
        assert_eq!(c.entries(), &[(3, 12)]);
        assert_eq!(LeaderEpochCache::load(dir.path()).unwrap(), c);
    }

    /// Kafka's `endOffsetFor` cases, over epochs 1, 3 and 4 starting at 0,
    /// 10 and 20, with the log ending at 30.
    #[test]
    fn end_offset_for_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = LeaderEpochCache::default();
        assert_eq!(c.end_offset_for_epoch(0, 30), None, "no entries");
        for (epoch, start) in [(1, 0), (3, 10), (4, 20)] {
            c.assign(dir.path(), epoch, start).unwrap();
        }
        // A known epoch ends where the next begins; the latest at the log end.
        assert_eq!(c.end_offset_for_epoch(1, 30), Some((1, 10)));
        assert_eq!(c.end_offset_for_epoch(3, 30), Some((3, 20)));
        assert_eq!(c.end_offset_for_epoch(4, 30), Some((4, 30)));
        // An epoch without entry: the largest older one, up to the next start.
        assert_eq!(c.end_offset_for_epoch(2, 30), Some((1, 10)));
        // Older than every entry: itself, up to the first start.
        assert_eq!(c.end_offset_for_epoch(0, 30), Some((0, 0)));
        // Newer than every entry, or undefined: nothing known.
        assert_eq!(c.end_offset_for_epoch(5, 30), None);
        assert_eq!(c.end_offset_for_epoch(NO_LEADER_EPOCH, 30), None);
    }

    #[test]
    fn partition_metadata() {
        let dir = tempfile::tempdir().unwrap();
        ensure_partition_metadata(dir.path(), "abc").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join(PARTITION_METADATA)).unwrap(),
            "version: 0\ntopic_id: abc\n"
        );
        ensure_partition_metadata(dir.path(), "abc").unwrap();
        assert!(matches!(
            ensure_partition_metadata(dir.path(), "def"),
            Err(StorageError::InconsistentTopicId { .. })
        ));
    }
}
