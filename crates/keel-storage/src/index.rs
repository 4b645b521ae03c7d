//! The sparse offset index (`.index`): 8-byte entries of relative offset and
//! file position, both `u32` big-endian. Like Kafka, an entry holds the LAST
//! offset of a batch and the position where that batch STARTS, so a lookup
//! lands at or before the batch holding the target and the caller scans on.
//!
//! Entries are kept in memory (an index is at most `segment.index.bytes`) and
//! appended to the file as they are made; the file is never preallocated, so
//! its length is always a whole number of entries unless a crash tore one.

use std::path::Path;

use crate::error::Result;
use crate::index_file::{IndexEntry, IndexFile};

/// (relative offset, position).
impl IndexEntry for (u32, u32) {
    const BYTES: usize = 8;

    fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0.to_be_bytes());
        out.extend_from_slice(&self.1.to_be_bytes());
    }

    fn read_from(bytes: &[u8]) -> Self {
        (
            u32::from_be_bytes(bytes[0..4].try_into().expect("4 bytes")),
            u32::from_be_bytes(bytes[4..8].try_into().expect("4 bytes")),
        )
    }
}

#[derive(Debug)]
pub(crate) struct OffsetIndex {
    /// (relative offset, position), strictly increasing in both.
    file: IndexFile<(u32, u32)>,
    base_offset: i64,
}

impl OffsetIndex {
    /// Creates or truncates the file and writes `entries` to it.
    pub(crate) fn create(path: &Path, base_offset: i64, entries: Vec<(u32, u32)>) -> Result<Self> {
        Ok(OffsetIndex {
            file: IndexFile::create(path, entries)?,
            base_offset,
        })
    }

    /// Loads an existing index, or `None` if it is missing or fails the
    /// sanity checks (then the caller rebuilds it from the log).
    pub(crate) fn load(path: &Path, base_offset: i64, log_size: u64) -> Result<Option<Self>> {
        let sane = |prev: Option<&(u32, u32)>, &(rel, pos): &(u32, u32)| {
            u64::from(pos) < log_size
                && prev.is_none_or(|&(prev_rel, prev_pos)| rel > prev_rel && pos > prev_pos)
        };
        Ok(IndexFile::load(path, sane)?.map(|file| OffsetIndex { file, base_offset }))
    }

    pub(crate) fn path(&self) -> &Path {
        self.file.path()
    }

    pub(crate) fn size_bytes(&self) -> u64 {
        self.file.size_bytes()
    }

    pub(crate) fn entries(&self) -> &[(u32, u32)] {
        self.file.entries()
    }

    /// Whether one more entry would exceed `segment.index.bytes`.
    pub(crate) fn is_full(&self, index_bytes_max: u32) -> bool {
        self.file.is_full(index_bytes_max)
    }

    pub(crate) fn last_entry(&self) -> Option<(i64, u32)> {
        self.entries()
            .last()
            .map(|&(rel, pos)| (self.base_offset + i64::from(rel), pos))
    }

    pub(crate) fn append(&mut self, last_offset: i64, position: u32) -> Result<()> {
        let rel = last_offset - self.base_offset;
        assert!(
            rel >= 0,
            "offset {last_offset} below base {}",
            self.base_offset
        );
        let rel = u32::try_from(rel).expect("roll keeps relative offsets within u32");
        if let Some(&(prev_rel, prev_pos)) = self.entries().last() {
            assert!(rel > prev_rel, "index offsets must increase");
            assert!(position > prev_pos, "index positions must increase");
        }
        self.file.append((rel, position))
    }

    /// The position of the largest entry whose offset is ≤ `offset`, or 0.
    /// The batch holding `offset` starts at or after that position.
    pub(crate) fn lookup(&self, offset: i64) -> u32 {
        let rel = offset - self.base_offset;
        if rel < 0 {
            return 0;
        }
        let rel = u32::try_from(rel).unwrap_or(u32::MAX);
        let entries = self.entries();
        let n = entries.partition_point(|&(r, _)| r <= rel);
        if n == 0 {
            0
        } else {
            entries[n - 1].1
        }
    }

    pub(crate) fn sync(&self) -> Result<()> {
        self.file.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.index");
        let mut idx = OffsetIndex::create(&path, 100, Vec::new()).unwrap();
        assert_eq!(idx.lookup(150), 0);
        idx.append(109, 500).unwrap();
        idx.append(119, 1000).unwrap();
        assert_eq!(idx.lookup(100), 0);
        assert_eq!(idx.lookup(109), 500);
        assert_eq!(idx.lookup(118), 500);
        assert_eq!(idx.lookup(119), 1000);
        assert_eq!(idx.lookup(99), 0);
        let again = OffsetIndex::load(&path, 100, 2000).unwrap().unwrap();
        assert_eq!(again.entries(), idx.entries());
        // Pointing past the log end means the index is stale.
        assert!(OffsetIndex::load(&path, 100, 900).unwrap().is_none());
        std::fs::write(&path, [0u8; 7]).unwrap();
        assert!(OffsetIndex::load(&path, 100, 2000).unwrap().is_none());
        assert!(OffsetIndex::load(&dir.path().join("missing"), 0, 1)
            .unwrap()
            .is_none());
    }
}
