//! The transaction index (`.txnindex`), Kafka's `TransactionIndex`: one
//! 34-byte entry per aborted transaction whose ABORT marker is in the
//! segment (version i16 = 0, producer id, first offset, last offset = the
//! marker's, last stable offset; big-endian), in marker order. Fetches at
//! `read_committed` collect them to tell consumers what to skip.
//!
//! As in Kafka, the file exists only once the segment has an entry, so
//! segments of topics without transactions carry no extra file, and a
//! missing file means no entries. Entries are kept in memory (a segment
//! holds at most one per ABORT marker, which is bounded by the segment's
//! size) and the file is their durable copy, synced with the segment.

use std::path::{Path, PathBuf};

use crate::checkpoint::sync_dir;
use crate::error::Result;
use crate::index_file::{IndexEntry, IndexFile};
use crate::producer_state::remove_if_exists;

/// One aborted transaction (Kafka's `AbortedTxn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    /// The ABORT marker's offset.
    pub last_offset: i64,
    /// The log's first unstable offset once this transaction completed, or
    /// the marker's next offset if none was unstable: no aborted
    /// transaction whose entry comes later starts below it, so a search
    /// may stop there.
    pub last_stable_offset: i64,
}

const ENTRY_VERSION: i16 = 0;

/// (version, entry), as stored.
impl IndexEntry for (i16, AbortedTxn) {
    const BYTES: usize = 34;

    fn write_to(&self, out: &mut Vec<u8>) {
        let (version, txn) = self;
        out.extend_from_slice(&version.to_be_bytes());
        for field in [
            txn.producer_id,
            txn.first_offset,
            txn.last_offset,
            txn.last_stable_offset,
        ] {
            out.extend_from_slice(&field.to_be_bytes());
        }
    }

    fn read_from(bytes: &[u8]) -> Self {
        let field = |at: usize| i64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        (
            i16::from_be_bytes(bytes[0..2].try_into().expect("2 bytes")),
            AbortedTxn {
                producer_id: field(2),
                first_offset: field(10),
                last_offset: field(18),
                last_stable_offset: field(26),
            },
        )
    }
}

#[derive(Debug)]
pub(crate) struct TransactionIndex {
    path: PathBuf,
    /// `None` while the segment has no entry and no file.
    file: Option<IndexFile<(i16, AbortedTxn)>>,
}

impl TransactionIndex {
    /// An index with no entries. A file left at `path` (by a segment of
    /// that base offset that is gone, or a reset) is removed.
    pub(crate) fn empty(path: PathBuf) -> Result<TransactionIndex> {
        remove_if_exists(&path)?;
        Ok(TransactionIndex { path, file: None })
    }

    /// Stands in, empty, for an index that failed to `load`, leaving its
    /// file for the next open to find should this one be abandoned; the
    /// segment's owner must rebuild the index or refuse the segment.
    pub(crate) fn lost(path: PathBuf) -> TransactionIndex {
        TransactionIndex { path, file: None }
    }

    /// Loads the index of the segment at `base_offset`, or `None` if the
    /// file is torn or fails Kafka's sanity checks (and ours: a known
    /// version, markers in order, first offsets not after them). The caller
    /// then rebuilds it by replaying the log rather than cutting off what
    /// is torn: an entry lost would show its aborted records to
    /// `read_committed` consumers.
    pub(crate) fn load(path: PathBuf, base_offset: i64) -> Result<Option<TransactionIndex>> {
        if !path.exists() {
            return Ok(Some(TransactionIndex { path, file: None }));
        }
        let sane = |prev: Option<&(i16, AbortedTxn)>, (version, txn): &(i16, AbortedTxn)| {
            *version == ENTRY_VERSION
                && txn.first_offset <= txn.last_offset
                && txn.last_offset >= base_offset
                && prev.is_none_or(|(_, p)| p.last_offset < txn.last_offset)
        };
        Ok(IndexFile::load(&path, sane)?.map(|file| TransactionIndex {
            path,
            file: Some(file),
        }))
    }

    /// Writes and fsyncs a new index holding `entries` at `path`, replacing
    /// any file there. For the cleaner, whose swap renames every file of a
    /// segment: the file is written even when empty.
    pub(crate) fn write(path: &Path, entries: &[AbortedTxn]) -> Result<()> {
        let entries = entries.iter().map(|&txn| (ENTRY_VERSION, txn)).collect();
        IndexFile::create(path, entries)?.sync()
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn entries(&self) -> impl Iterator<Item = &AbortedTxn> + '_ {
        self.file
            .iter()
            .flat_map(|file| file.entries().iter().map(|(_, txn)| txn))
    }

    pub(crate) fn append(&mut self, txn: AbortedTxn) -> Result<()> {
        match &mut self.file {
            Some(file) => file.append((ENTRY_VERSION, txn)),
            None => {
                self.file = Some(IndexFile::create(&self.path, vec![(ENTRY_VERSION, txn)])?);
                // After a clean shutdown nothing is rebuilt, so the new
                // file's name must be as durable as its entries.
                sync_dir(self.path.parent().expect("index path has a parent"))
            }
        }
    }

    /// Drops the entries of transactions whose marker is at or past `offset`
    /// (Kafka's `truncateTo`).
    pub(crate) fn truncate_to(self, offset: i64) -> Result<TransactionIndex> {
        let file = match self.file {
            Some(file) if file.entries().iter().any(|(_, t)| t.last_offset >= offset) => {
                let kept = file
                    .entries()
                    .iter()
                    .copied()
                    .filter(|(_, t)| t.last_offset < offset)
                    .collect();
                Some(IndexFile::create(&self.path, kept)?)
            }
            file => file,
        };
        Ok(TransactionIndex {
            path: self.path,
            file,
        })
    }

    pub(crate) fn sync(&self) -> Result<()> {
        self.file.as_ref().map_or(Ok(()), IndexFile::sync)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(first: i64, last: i64) -> AbortedTxn {
        AbortedTxn {
            producer_id: 7,
            first_offset: first,
            last_offset: last,
            last_stable_offset: last + 1,
        }
    }

    /// Pins Kafka's layout and the lazy file.
    #[test]
    fn layout_lazy_file_truncation_and_sanity() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000000000000000010.txnindex");
        let mut idx = TransactionIndex::empty(path.clone()).unwrap();
        assert!(!path.exists());
        idx.append(txn(10, 12)).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let mut expected = vec![0, 0];
        for v in [7i64, 10, 12, 13] {
            expected.extend_from_slice(&v.to_be_bytes());
        }
        assert_eq!(bytes, expected);
        idx.append(txn(11, 20)).unwrap();

        let loaded = TransactionIndex::load(path.clone(), 10).unwrap().unwrap();
        assert_eq!(
            loaded.entries().copied().collect::<Vec<_>>(),
            vec![txn(10, 12), txn(11, 20)]
        );
        // A marker below the segment's base is not this segment's.
        assert!(TransactionIndex::load(path.clone(), 13).unwrap().is_none());

        let idx = idx.truncate_to(20).unwrap();
        assert_eq!(
            idx.entries().copied().collect::<Vec<_>>(),
            vec![txn(10, 12)]
        );
        assert_eq!(std::fs::read(&path).unwrap(), expected);

        // A torn entry, or one of an unknown version, is not trusted.
        std::fs::write(&path, &expected[..33]).unwrap();
        assert!(TransactionIndex::load(path.clone(), 10).unwrap().is_none());
        let mut unknown = expected.clone();
        unknown[1] = 1;
        std::fs::write(&path, &unknown).unwrap();
        assert!(TransactionIndex::load(path.clone(), 10).unwrap().is_none());

        std::fs::remove_file(&path).unwrap();
        let missing = TransactionIndex::load(path, 10).unwrap().unwrap();
        assert_eq!(missing.entries().count(), 0);
    }
}
