//! The sparse offset index (`.index`): 8-byte entries of relative offset and
//! file position, both `u32` big-endian. Like Kafka, an entry holds the LAST
//! offset of a batch and the position where that batch STARTS, so a lookup
//! lands at or before the batch holding the target and the caller scans on.
//!
//! Entries are kept in memory (an index is at most `segment.index.bytes`) and
//! appended to the file as they are made; the file is never preallocated, so
//! its length is always a whole number of entries unless a crash tore one.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};

pub(crate) const OFFSET_INDEX_ENTRY_BYTES: u64 = 8;

#[derive(Debug)]
pub(crate) struct OffsetIndex {
    path: PathBuf,
    file: File,
    base_offset: i64,
    /// (relative offset, position), strictly increasing in both.
    entries: Vec<(u32, u32)>,
}

impl OffsetIndex {
    /// Creates or truncates the file and writes `entries` to it.
    pub(crate) fn create(path: &Path, base_offset: i64, entries: Vec<(u32, u32)>) -> Result<Self> {
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)
            .ctx(|| format!("creating {}", path.display()))?;
        let mut bytes = Vec::with_capacity(entries.len() * OFFSET_INDEX_ENTRY_BYTES as usize);
        for (rel, pos) in &entries {
            bytes.extend_from_slice(&rel.to_be_bytes());
            bytes.extend_from_slice(&pos.to_be_bytes());
        }
        file.write_all(&bytes)
            .ctx(|| format!("writing {}", path.display()))?;
        let file = reopen_append(path)?;
        Ok(OffsetIndex {
            path: path.to_path_buf(),
            file,
            base_offset,
            entries,
        })
    }

    /// Loads an existing index, or `None` if it is missing or fails the
    /// sanity checks (then the caller rebuilds it from the log).
    pub(crate) fn load(path: &Path, base_offset: i64, log_size: u64) -> Result<Option<Self>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).ctx(|| format!("reading {}", path.display())),
        };
        if bytes.len() as u64 % OFFSET_INDEX_ENTRY_BYTES != 0 {
            return Ok(None);
        }
        let mut entries = Vec::with_capacity(bytes.len() / 8);
        for chunk in bytes.chunks_exact(8) {
            let rel = u32::from_be_bytes(chunk[0..4].try_into().expect("4 bytes"));
            let pos = u32::from_be_bytes(chunk[4..8].try_into().expect("4 bytes"));
            if u64::from(pos) >= log_size {
                return Ok(None);
            }
            if let Some(&(prev_rel, prev_pos)) = entries.last() {
                if rel <= prev_rel || pos <= prev_pos {
                    return Ok(None);
                }
            }
            entries.push((rel, pos));
        }
        let file = reopen_append(path)?;
        Ok(Some(OffsetIndex {
            path: path.to_path_buf(),
            file,
            base_offset,
            entries,
        }))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn entries(&self) -> &[(u32, u32)] {
        &self.entries
    }

    pub(crate) fn len_bytes(&self) -> u64 {
        self.entries.len() as u64 * OFFSET_INDEX_ENTRY_BYTES
    }

    /// Whether one more entry would exceed `segment.index.bytes`.
    pub(crate) fn is_full(&self, index_bytes_max: u32) -> bool {
        self.len_bytes() + OFFSET_INDEX_ENTRY_BYTES > u64::from(index_bytes_max)
    }

    pub(crate) fn last_entry(&self) -> Option<(i64, u32)> {
        self.entries
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
        if let Some(&(prev_rel, prev_pos)) = self.entries.last() {
            assert!(rel > prev_rel, "index offsets must increase");
            assert!(position > prev_pos, "index positions must increase");
        }
        let mut entry = [0u8; 8];
        entry[0..4].copy_from_slice(&rel.to_be_bytes());
        entry[4..8].copy_from_slice(&position.to_be_bytes());
        self.file
            .write_all(&entry)
            .ctx(|| format!("appending to {}", self.path.display()))?;
        self.entries.push((rel, position));
        Ok(())
    }

    /// The position of the largest entry whose offset is ≤ `offset`, or 0.
    /// The batch holding `offset` starts at or after that position.
    pub(crate) fn lookup(&self, offset: i64) -> u32 {
        let rel = offset - self.base_offset;
        if rel < 0 {
            return 0;
        }
        let rel = u32::try_from(rel).unwrap_or(u32::MAX);
        let n = self.entries.partition_point(|&(r, _)| r <= rel);
        if n == 0 {
            0
        } else {
            self.entries[n - 1].1
        }
    }

    pub(crate) fn sync(&self) -> Result<()> {
        self.file
            .sync_data()
            .ctx(|| format!("fsync {}", self.path.display()))
    }
}

pub(crate) fn reopen_append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .append(true)
        .open(path)
        .ctx(|| format!("opening {}", path.display()))
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
