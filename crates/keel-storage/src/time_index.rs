//! The time index (`.timeindex`): 12-byte entries of timestamp (i64 BE) and
//! relative offset (u32 BE). An entry is added only when the segment's max
//! timestamp has grown, so timestamps strictly increase; the offset is the
//! last offset of the batch that first reached that timestamp.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};
use crate::index::reopen_append;

pub(crate) const TIME_INDEX_ENTRY_BYTES: u64 = 12;

#[derive(Debug)]
pub(crate) struct TimeIndex {
    path: PathBuf,
    file: File,
    base_offset: i64,
    /// (timestamp, relative offset); timestamps strictly increase.
    entries: Vec<(i64, u32)>,
}

impl TimeIndex {
    pub(crate) fn create(path: &Path, base_offset: i64, entries: Vec<(i64, u32)>) -> Result<Self> {
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)
            .ctx(|| format!("creating {}", path.display()))?;
        let mut bytes = Vec::with_capacity(entries.len() * TIME_INDEX_ENTRY_BYTES as usize);
        for (ts, rel) in &entries {
            bytes.extend_from_slice(&ts.to_be_bytes());
            bytes.extend_from_slice(&rel.to_be_bytes());
        }
        file.write_all(&bytes)
            .ctx(|| format!("writing {}", path.display()))?;
        Ok(TimeIndex {
            path: path.to_path_buf(),
            file: reopen_append(path)?,
            base_offset,
            entries,
        })
    }

    /// Loads an existing index, or `None` if it is missing or implausible.
    /// `next_offset` is the segment's next offset: no entry may reach it.
    pub(crate) fn load(path: &Path, base_offset: i64, next_offset: i64) -> Result<Option<Self>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).ctx(|| format!("reading {}", path.display())),
        };
        if bytes.len() as u64 % TIME_INDEX_ENTRY_BYTES != 0 {
            return Ok(None);
        }
        let mut entries: Vec<(i64, u32)> = Vec::with_capacity(bytes.len() / 12);
        for chunk in bytes.chunks_exact(12) {
            let ts = i64::from_be_bytes(chunk[0..8].try_into().expect("8 bytes"));
            let rel = u32::from_be_bytes(chunk[8..12].try_into().expect("4 bytes"));
            if base_offset + i64::from(rel) >= next_offset {
                return Ok(None);
            }
            if let Some(&(prev_ts, prev_rel)) = entries.last() {
                if ts <= prev_ts || rel < prev_rel {
                    return Ok(None);
                }
            }
            entries.push((ts, rel));
        }
        Ok(Some(TimeIndex {
            path: path.to_path_buf(),
            file: reopen_append(path)?,
            base_offset,
            entries,
        }))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn is_full(&self, index_bytes_max: u32) -> bool {
        (self.entries.len() as u64 + 1) * TIME_INDEX_ENTRY_BYTES > u64::from(index_bytes_max)
    }

    pub(crate) fn last_entry(&self) -> Option<(i64, i64)> {
        self.entries
            .last()
            .map(|&(ts, rel)| (ts, self.base_offset + i64::from(rel)))
    }

    /// Appends unless `timestamp` does not exceed the last entry's.
    pub(crate) fn maybe_append(&mut self, timestamp: i64, offset: i64) -> Result<()> {
        if let Some(&(last_ts, _)) = self.entries.last() {
            if timestamp <= last_ts {
                return Ok(());
            }
        }
        let rel = u32::try_from(offset - self.base_offset)
            .expect("roll keeps relative offsets within u32");
        let mut entry = [0u8; 12];
        entry[0..8].copy_from_slice(&timestamp.to_be_bytes());
        entry[8..12].copy_from_slice(&rel.to_be_bytes());
        self.file
            .write_all(&entry)
            .ctx(|| format!("appending to {}", self.path.display()))?;
        self.entries.push((timestamp, rel));
        Ok(())
    }

    /// The offset of the largest entry with timestamp ≤ `timestamp`: every
    /// batch before that offset's batch has a smaller max timestamp, so a
    /// search for `timestamp` may start there. `None` means start at the base.
    pub(crate) fn lookup(&self, timestamp: i64) -> Option<i64> {
        let n = self.entries.partition_point(|&(ts, _)| ts <= timestamp);
        (n > 0).then(|| self.base_offset + i64::from(self.entries[n - 1].1))
    }

    pub(crate) fn sync(&self) -> Result<()> {
        self.file
            .sync_data()
            .ctx(|| format!("fsync {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_lookup_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.timeindex");
        let mut idx = TimeIndex::create(&path, 10, Vec::new()).unwrap();
        idx.maybe_append(100, 12).unwrap();
        idx.maybe_append(100, 15).unwrap(); // not larger: skipped
        idx.maybe_append(200, 20).unwrap();
        assert_eq!(idx.entries.len(), 2);
        assert_eq!(idx.lookup(50), None);
        assert_eq!(idx.lookup(150), Some(12));
        assert_eq!(idx.lookup(200), Some(20));
        let again = TimeIndex::load(&path, 10, 21).unwrap().unwrap();
        assert_eq!(again.entries, idx.entries);
        assert!(TimeIndex::load(&path, 10, 20).unwrap().is_none());
    }
}
