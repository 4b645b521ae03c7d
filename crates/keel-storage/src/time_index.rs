//! The time index (`.timeindex`): 12-byte entries of timestamp (i64 BE) and
//! relative offset (u32 BE). An entry is added only when the segment's max
//! timestamp has grown, so timestamps strictly increase; the offset is the
//! last offset of the batch that first reached that timestamp.

use std::path::Path;

use crate::error::Result;
use crate::index_file::{IndexEntry, IndexFile};

/// (timestamp, relative offset).
impl IndexEntry for (i64, u32) {
    const BYTES: usize = 12;

    fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0.to_be_bytes());
        out.extend_from_slice(&self.1.to_be_bytes());
    }

    fn read_from(bytes: &[u8]) -> Self {
        (
            i64::from_be_bytes(bytes[0..8].try_into().expect("8 bytes")),
            u32::from_be_bytes(bytes[8..12].try_into().expect("4 bytes")),
        )
    }
}

#[derive(Debug)]
pub(crate) struct TimeIndex {
    /// (timestamp, relative offset); timestamps strictly increase.
    file: IndexFile<(i64, u32)>,
    base_offset: i64,
}

impl TimeIndex {
    pub(crate) fn create(path: &Path, base_offset: i64, entries: Vec<(i64, u32)>) -> Result<Self> {
        Ok(TimeIndex {
            file: IndexFile::create(path, entries)?,
            base_offset,
        })
    }

    /// Loads an existing index, or `None` if it is missing or implausible.
    /// `next_offset` is the segment's next offset: no entry may reach it.
    pub(crate) fn load(path: &Path, base_offset: i64, next_offset: i64) -> Result<Option<Self>> {
        let sane = |prev: Option<&(i64, u32)>, &(ts, rel): &(i64, u32)| {
            base_offset + i64::from(rel) < next_offset
                && prev.is_none_or(|&(prev_ts, prev_rel)| ts > prev_ts && rel >= prev_rel)
        };
        Ok(IndexFile::load(path, sane)?.map(|file| TimeIndex { file, base_offset }))
    }

    pub(crate) fn path(&self) -> &Path {
        self.file.path()
    }

    pub(crate) fn size_bytes(&self) -> u64 {
        self.file.size_bytes()
    }

    pub(crate) fn is_full(&self, index_bytes_max: u32) -> bool {
        self.file.is_full(index_bytes_max)
    }

    pub(crate) fn last_entry(&self) -> Option<(i64, i64)> {
        self.file
            .entries()
            .last()
            .map(|&(ts, rel)| (ts, self.base_offset + i64::from(rel)))
    }

    /// Appends unless `timestamp` does not exceed the last entry's.
    pub(crate) fn maybe_append(&mut self, timestamp: i64, offset: i64) -> Result<()> {
        if let Some(&(last_ts, _)) = self.file.entries().last() {
            if timestamp <= last_ts {
                return Ok(());
            }
        }
        let rel = u32::try_from(offset - self.base_offset)
            .expect("roll keeps relative offsets within u32");
        self.file.append((timestamp, rel))
    }

    /// The offset of the largest entry with timestamp ≤ `timestamp`: every
    /// batch before that offset's batch has a smaller max timestamp, so a
    /// search for `timestamp` may start there. `None` means start at the base.
    pub(crate) fn lookup(&self, timestamp: i64) -> Option<i64> {
        let entries = self.file.entries();
        let n = entries.partition_point(|&(ts, _)| ts <= timestamp);
        (n > 0).then(|| self.base_offset + i64::from(entries[n - 1].1))
    }

    pub(crate) fn sync(&self) -> Result<()> {
        self.file.sync()
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
        assert_eq!(idx.file.entries().len(), 2);
        assert_eq!(idx.lookup(50), None);
        assert_eq!(idx.lookup(150), Some(12));
        assert_eq!(idx.lookup(200), Some(20));
        let again = TimeIndex::load(&path, 10, 21).unwrap().unwrap();
        assert_eq!(again.file.entries(), idx.file.entries());
        assert!(TimeIndex::load(&path, 10, 20).unwrap().is_none());
    }
}
