//! The file handling that `.index` and `.timeindex` share. Both are arrays of
//! fixed-size big-endian entries, mirrored in memory, never preallocated (so
//! a length that is not a whole number of entries means a torn write), and
//! only ever rewritten whole or appended to. Each index keeps its own entry
//! layout, sanity checks and lookups.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};

/// One fixed-size entry as stored on disk.
pub(crate) trait IndexEntry: Copy {
    const BYTES: usize;
    /// Appends exactly `BYTES` bytes.
    fn write_to(&self, out: &mut Vec<u8>);
    /// Decodes from exactly `BYTES` bytes.
    fn read_from(bytes: &[u8]) -> Self;
}

#[derive(Debug)]
pub(crate) struct IndexFile<E> {
    path: PathBuf,
    /// Opened for append, so entries land after whatever is on disk.
    file: File,
    entries: Vec<E>,
}

impl<E: IndexEntry> IndexFile<E> {
    /// Creates or truncates the file and writes `entries` to it.
    pub(crate) fn create(path: &Path, entries: Vec<E>) -> Result<Self> {
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)
            .ctx(|| format!("creating {}", path.display()))?;
        let mut bytes = Vec::with_capacity(entries.len() * E::BYTES);
        for entry in &entries {
            entry.write_to(&mut bytes);
        }
        file.write_all(&bytes)
            .ctx(|| format!("writing {}", path.display()))?;
        Self::open(path, entries)
    }

    /// Loads an existing file, or `None` if it is missing, torn, or an entry
    /// fails `sane(previous, entry)` (then the caller rebuilds it from the
    /// log). The file is reopened only once every entry passes, so a
    /// rejected file yields `None` rather than an error from opening it.
    pub(crate) fn load(path: &Path, sane: impl Fn(Option<&E>, &E) -> bool) -> Result<Option<Self>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).ctx(|| format!("reading {}", path.display())),
        };
        if bytes.len() % E::BYTES != 0 {
            return Ok(None);
        }
        let mut entries: Vec<E> = Vec::with_capacity(bytes.len() / E::BYTES);
        for chunk in bytes.chunks_exact(E::BYTES) {
            let entry = E::read_from(chunk);
            if !sane(entries.last(), &entry) {
                return Ok(None);
            }
            entries.push(entry);
        }
        Self::open(path, entries).map(Some)
    }

    fn open(path: &Path, entries: Vec<E>) -> Result<Self> {
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .ctx(|| format!("opening {}", path.display()))?;
        Ok(IndexFile {
            path: path.to_path_buf(),
            file,
            entries,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn entries(&self) -> &[E] {
        &self.entries
    }

    pub(crate) fn size_bytes(&self) -> u64 {
        (self.entries.len() * E::BYTES) as u64
    }

    /// Whether one more entry would exceed `segment.index.bytes`.
    pub(crate) fn is_full(&self, index_bytes_max: u32) -> bool {
        (self.entries.len() as u64 + 1) * E::BYTES as u64 > u64::from(index_bytes_max)
    }

    /// Writes `entry` to the file, then records it in memory.
    pub(crate) fn append(&mut self, entry: E) -> Result<()> {
        let mut bytes = Vec::with_capacity(E::BYTES);
        entry.write_to(&mut bytes);
        self.file
            .write_all(&bytes)
            .ctx(|| format!("appending to {}", self.path.display()))?;
        self.entries.push(entry);
        Ok(())
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

    /// Pins Kafka's layouts: `.index` is (u32 relative offset, u32 position),
    /// `.timeindex` is (i64 timestamp, u32 relative offset), all big-endian.
    #[test]
    fn entry_layouts_are_kafkas() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.index");
        IndexFile::create(&path, vec![(1u32, 0x0203u32)]).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), [0, 0, 0, 1, 0, 0, 2, 3]);
        let path = dir.path().join("x.timeindex");
        let mut idx = IndexFile::create(&path, Vec::new()).unwrap();
        idx.append((-2i64, 5u32)).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe, 0, 0, 0, 5]
        );
    }
}
