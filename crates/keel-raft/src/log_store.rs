//! openraft's log storage over `keel_storage::Log`: the Raft log is the
//! Kafka-format partition `__cluster_metadata-0` (see `log_format` for the
//! entry layout) and the vote is its `quorum-state` file.
//!
//! Appends are fsynced before openraft hears they are persisted. A purge
//! raises the log start offset and deletes whole segments below it; the
//! purged position itself is not stored: after a restart everything at or
//! below the latest snapshot counts as purged, which is what openraft asked
//! for or more, and snapshots are only taken of applied, hence committed,
//! entries.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::PathBuf;
use std::sync::Arc;

use keel_storage::{validate_batch, BatchIter, Log, LogConfig, StorageError};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, EntryPayload, LogId, LogState, RaftLogReader, StorageIOError};
use parking_lot::Mutex;

use crate::config::METADATA_TOPIC_ID;
use crate::limits::REPLICATION_BYTES_MAX;
use crate::log_format::{decode_batch, encode_entry};
use crate::quorum_state::QuorumStateFile;
use crate::type_config::{
    index, log_id, offset, Entry, Membership, RaftStorageError, TypeConfig, Vote,
};

/// Log bytes located per `Log::read` when reading a range of entries.
const READ_CHUNK_BYTES: u32 = 1024 * 1024;

/// The wall clock in milliseconds, as batch timestamps and `Log` want it.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// What openraft is told when the disk fails: the failure, as a value.
fn raft_error(to_io: fn(AnyError) -> StorageIOError<u64>, e: &StorageError) -> RaftStorageError {
    to_io(AnyError::new(e)).into()
}

struct Inner {
    log: Log,
    /// The newest entry openraft has purged (or, after a restart, the
    /// snapshot's last entry).
    last_purged: Option<LogId<u64>>,
    /// The last entry in the log, or `last_purged` when it holds none.
    last_log: Option<LogId<u64>>,
}

/// The Raft log and vote. Clones share one `Log`; openraft uses one clone
/// to write and others to read for replication.
#[derive(Clone)]
pub(crate) struct LogStore {
    inner: Arc<Mutex<Inner>>,
    quorum_state: QuorumStateFile,
}

impl LogStore {
    /// Opens the partition directory. `snapshot_last` is the last entry of
    /// the newest snapshot on disk: batches at and past it are recovered
    /// (checked, a torn tail cut), and everything up to it counts as purged.
    pub(crate) fn open(
        dir: PathBuf,
        segment_bytes: u32,
        snapshot_last: Option<LogId<u64>>,
    ) -> Result<LogStore, StorageError> {
        let config = LogConfig {
            segment_bytes,
            // The log is cut only below snapshots, by `purge`.
            retention_ms: -1,
            retention_bytes: -1,
            ..LogConfig::default()
        };
        let recover_from = snapshot_last.map_or(0, |id| offset(id.index));
        let quorum_state = QuorumStateFile::new(&dir);
        let log = Log::open(
            dir,
            METADATA_TOPIC_ID,
            config,
            Some(recover_from),
            i64::MAX,
            now_ms(),
        )?;
        let mut inner = Inner {
            log,
            last_purged: None,
            last_log: None,
        };
        match snapshot_last {
            Some(id) if inner.log.log_start_offset() > offset(id.index + 1) => {
                return Err(StorageError::Corrupt(format!(
                    "{}: the log starts at {}, after the snapshot ending at {}",
                    inner.log.dir().display(),
                    inner.log.log_start_offset(),
                    id.index
                )));
            }
            Some(id) => inner.purge(id)?,
            None if inner.log.log_start_offset() > 0 => {
                return Err(StorageError::Corrupt(format!(
                    "{}: the log starts at {} but there is no snapshot",
                    inner.log.dir().display(),
                    inner.log.log_start_offset()
                )));
            }
            None => {}
        }
        inner.last_log = inner.find_last_log()?;
        Ok(LogStore {
            inner: Arc::new(Mutex::new(inner)),
            quorum_state,
        })
    }

    pub(crate) fn quorum_state(&self) -> &QuorumStateFile {
        &self.quorum_state
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.inner.lock().last_log.is_none()
    }

    /// Reads `[from, to)`; stops early at `bytes_max` log bytes but returns
    /// at least one entry when the range holds any.
    pub(crate) fn read(
        &self,
        from: u64,
        to: u64,
        bytes_max: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        self.inner.lock().read(from, to, bytes_max)
    }

    /// First start of a fresh quorum: writes `membership` as the entry after
    /// the log's end, at term 0, unless an interrupted bootstrap already
    /// did, and fsyncs it. A pre-Raft log's records stay in front of it as
    /// term-0 entries; only a single voter may adopt them, since every voter
    /// bootstraps the same entry at the same index and the others' logs
    /// would not hold those records.
    pub(crate) fn bootstrap(
        &self,
        membership: Membership,
        single_voter: bool,
    ) -> Result<(), StorageError> {
        let mut inner = self.inner.lock();
        if let Some(last) = inner.last_log {
            if last.leader_id.term != 0 {
                return Err(StorageError::Corrupt(format!(
                    "{}: no quorum-state, yet the log holds entries of term {}",
                    inner.log.dir().display(),
                    last.leader_id.term
                )));
            }
            let tail = inner.read(last.index, last.index + 1, 0)?;
            if matches!(
                tail.first().map(|e| &e.payload),
                Some(EntryPayload::Membership(_))
            ) {
                return Ok(());
            }
            if !single_voter {
                return Err(StorageError::Corrupt(format!(
                    "{}: holds records written before the Raft quorum, which only a \
                     single-voter quorum can adopt",
                    inner.log.dir().display()
                )));
            }
        }
        let entry = Entry {
            log_id: log_id(0, inner.last_log.map_or(0, |id| id.index + 1)),
            payload: EntryPayload::Membership(membership),
        };
        let bytes = encode_entry(&entry)?;
        inner.append(&bytes, entry.log_id, entry.log_id)?;
        inner.log.flush()?;
        Ok(())
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&LogStore) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this))
            .await
            .expect("log I/O task panicked")
    }

    fn append_and_flush(
        &self,
        bytes: &[u8],
        first: LogId<u64>,
        last: LogId<u64>,
    ) -> Result<(), StorageError> {
        let (file, log_end) = {
            let mut inner = self.inner.lock();
            inner.append(bytes, first, last)?;
            (inner.log.active_segment_file(), inner.log.log_end_offset())
        };
        // Readers need not wait for the disk: fsync outside the lock. Rolls
        // fsync the segments they close, so only the active one is left.
        file.sync_data()?;
        self.inner.lock().log.mark_flushed(log_end);
        Ok(())
    }
}

impl Inner {
    fn read(&self, from: u64, to: u64, bytes_max: usize) -> Result<Vec<Entry>, StorageError> {
        let mut entries = Vec::new();
        let mut next = from.max(self.last_purged.map_or(0, |id| id.index + 1));
        let log_end = index(self.log.log_end_offset());
        let to = to.min(log_end);
        let mut bytes_read = 0;
        while next < to && next >= index(self.log.log_start_offset()) {
            let budget = u32::try_from(bytes_max.saturating_sub(bytes_read))
                .unwrap_or(u32::MAX)
                .min(READ_CHUNK_BYTES);
            let first_one = entries.is_empty();
            let mut slice = self.log.read(offset(next), budget, offset(to), first_one)?;
            if slice.is_empty() && first_one {
                // Only a pre-Raft batch of many records can straddle `to`,
                // and `Log::read` stops before it; take it whole.
                slice = self.log.read(offset(next), 0, i64::MAX, true)?;
            }
            let bytes = slice.read_bytes()?;
            let before = entries.len();
            for item in BatchIter::new(&bytes) {
                let (_, range) = item?;
                // Checked once before the append, checked again after the read.
                let header = validate_batch(&bytes[range.clone()])?;
                decode_batch(&bytes[range], &header, next, to, &mut entries)?;
            }
            let Some(last) = entries.last().filter(|_| entries.len() > before) else {
                break;
            };
            next = last.log_id.index + 1;
            bytes_read += bytes.len();
            if bytes_read >= bytes_max {
                break;
            }
        }
        Ok(entries)
    }

    /// The log id of the last entry, or of the last purged one if none.
    fn find_last_log(&self) -> Result<Option<LogId<u64>>, StorageError> {
        let log_end = self.log.log_end_offset();
        if log_end <= self.log.log_start_offset() {
            return Ok(self.last_purged);
        }
        let last = index(log_end) - 1;
        match self.read(last, last + 1, 0)?.pop() {
            Some(entry) => Ok(Some(entry.log_id)),
            None => Err(StorageError::Corrupt(format!(
                "{}: no entry at offset {last} below the log end",
                self.log.dir().display()
            ))),
        }
    }

    fn append(
        &mut self,
        bytes: &[u8],
        first: LogId<u64>,
        last: LogId<u64>,
    ) -> Result<(), StorageError> {
        let expected = self.last_log.map_or(0, |id| id.index + 1);
        assert_eq!(first.index, expected, "appends continue the log");
        let log_end = index(self.log.log_end_offset());
        // After a purge past the log end the log is empty and an append
        // further on re-bases it (`Log::append_as_follower` allows that).
        assert!(
            log_end == first.index || (log_end < first.index && self.log.size_bytes() == 0),
            "log end {log_end} does not meet entry {first}"
        );
        self.log.append_as_follower(bytes)?;
        assert_eq!(index(self.log.log_end_offset()), last.index + 1);
        self.last_log = Some(last);
        Ok(())
    }

    fn truncate(&mut self, since: LogId<u64>) -> Result<(), StorageError> {
        assert!(
            self.last_purged.is_none_or(|p| p.index < since.index),
            "truncating purged entries"
        );
        self.log.truncate_to(offset(since.index))?;
        if self.log.log_end_offset() != offset(since.index) {
            return Err(StorageError::Corrupt(format!(
                "{}: truncating at {} cut a batch holding earlier entries",
                self.log.dir().display(),
                since.index
            )));
        }
        self.last_log = self.find_last_log()?;
        Ok(())
    }

    fn purge(&mut self, upto: LogId<u64>) -> Result<(), StorageError> {
        let new_start = offset(upto.index + 1);
        if new_start <= self.log.log_end_offset() {
            self.log.maybe_increment_log_start_offset(new_start)?;
        } else {
            // Everything present is covered (an installed snapshot is ahead
            // of this log): empty the log so the next append re-bases it.
            let start = self.log.log_start_offset();
            self.log
                .truncate_to(if start > 0 { start - 1 } else { 0 })?;
        }
        self.log.delete_old_segments(now_ms())?;
        self.last_purged = Some(upto);
        if self.last_log.is_none_or(|l| l.index < upto.index) {
            self.last_log = Some(upto);
        }
        Ok(())
    }
}

fn range_of<RB: RangeBounds<u64>>(range: &RB) -> (u64, u64) {
    let from = match range.start_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i + 1,
        Bound::Unbounded => 0,
    };
    let to = match range.end_bound() {
        Bound::Included(&i) => i + 1,
        Bound::Excluded(&i) => i,
        Bound::Unbounded => u64::MAX,
    };
    (from, to)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        let (from, to) = range_of(&range);
        self.blocking(move |s| s.read(from, to, usize::MAX))
            .await
            .map_err(|e| raft_error(StorageIOError::read_logs, &e))
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        self.blocking(move |s| s.read(start, end, REPLICATION_BYTES_MAX))
            .await
            .map_err(|e| raft_error(StorageIOError::read_logs, &e))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, RaftStorageError> {
        let inner = self.inner.lock();
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: inner.last_log,
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), RaftStorageError> {
        let vote = *vote;
        self.blocking(move |s| s.quorum_state.write(Some(&vote)))
            .await
            .map_err(|e| raft_error(StorageIOError::write_vote, &e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, RaftStorageError> {
        self.blocking(|s| s.quorum_state.read())
            .await
            .map(Option::flatten)
            .map_err(|e| raft_error(StorageIOError::read_vote, &e))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut bytes = Vec::new();
        let mut ids = Vec::new();
        for entry in entries {
            bytes.extend(
                encode_entry(&entry).map_err(|e| raft_error(StorageIOError::write_logs, &e))?,
            );
            ids.push(entry.log_id);
        }
        let (Some(&first), Some(&last)) = (ids.first(), ids.last()) else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        assert!(
            ids.windows(2).all(|w| w[1].index == w[0].index + 1),
            "openraft appends consecutive entries"
        );
        match self
            .blocking(move |s| s.append_and_flush(&bytes, first, last))
            .await
        {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(raft_error(StorageIOError::write_logs, &e))
            }
        }
    }

    async fn truncate(&mut self, since: LogId<u64>) -> Result<(), RaftStorageError> {
        self.blocking(move |s| s.inner.lock().truncate(since))
            .await
            .map_err(|e| raft_error(StorageIOError::write_logs, &e))
    }

    async fn purge(&mut self, upto: LogId<u64>) -> Result<(), RaftStorageError> {
        self.blocking(move |s| s.inner.lock().purge(upto))
            .await
            .map_err(|e| raft_error(StorageIOError::write_logs, &e))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bytes::Bytes;
    use keel_storage::BatchBuilder;
    use openraft::BasicNode;

    use super::*;
    use crate::type_config::Proposal;

    fn membership() -> Membership {
        let nodes: BTreeMap<u64, BasicNode> = [(1, BasicNode::new("a:1"))].into_iter().collect();
        Membership::new(vec![[1].into_iter().collect()], nodes)
    }

    fn normal(term: u64, index: u64, record: &'static str) -> Entry {
        Entry {
            log_id: log_id(term, index),
            payload: EntryPayload::Normal(Proposal {
                timestamp_ms: 1000 + index as i64,
                records: vec![Bytes::from_static(record.as_bytes())],
            }),
        }
    }

    fn append(store: &LogStore, entries: &[Entry]) {
        let mut bytes = Vec::new();
        for e in entries {
            bytes.extend(encode_entry(e).unwrap());
        }
        let (first, last) = (entries[0].log_id, entries[entries.len() - 1].log_id);
        store.append_and_flush(&bytes, first, last).unwrap();
    }

    fn open(dir: &std::path::Path, snapshot_last: Option<LogId<u64>>) -> LogStore {
        LogStore::open(dir.to_path_buf(), 4096, snapshot_last).unwrap()
    }

    /// (base offset, leader epoch) of every batch, read with keel-storage alone.
    fn batches(dir: &std::path::Path) -> Vec<(i64, i32)> {
        let log = Log::open(
            dir.to_path_buf(),
            METADATA_TOPIC_ID,
            LogConfig::default(),
            None,
            i64::MAX,
            0,
        )
        .unwrap();
        let bytes = log
            .read(log.log_start_offset(), u32::MAX, i64::MAX, true)
            .unwrap()
            .read_bytes()
            .unwrap();
        BatchIter::new(&bytes)
            .map(|b| {
                let (h, _) = b.unwrap();
                (h.base_offset(), h.partition_leader_epoch())
            })
            .collect()
    }

    fn state(store: &mut LogStore) -> (Option<LogId<u64>>, Option<LogId<u64>>) {
        let st = block_on(store.get_log_state()).unwrap();
        (st.last_purged_log_id, st.last_log_id)
    }

    /// Runs a future of this module's, none of which waits on anything.
    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn entries_are_batches_at_their_index_and_term() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), None);
        assert_eq!(state(&mut store), (None, None));
        let entries = vec![
            Entry {
                log_id: log_id(0, 0),
                payload: EntryPayload::Membership(membership()),
            },
            Entry {
                log_id: log_id(1, 1),
                payload: EntryPayload::Blank,
            },
            normal(1, 2, "a"),
            normal(1, 3, "b"),
        ];
        append(&store, &entries[..1]);
        append(&store, &entries[1..]);
        drop(store);
        let mut store = open(dir.path(), None);
        assert_eq!(state(&mut store), (None, Some(log_id(1, 3))));
        assert_eq!(store.read(0, 4, usize::MAX).unwrap(), entries);
        assert_eq!(store.read(2, 3, 0).unwrap(), entries[2..3]);
        assert_eq!(batches(dir.path()), [(0, 0), (1, 1), (2, 1), (3, 1)]);
    }

    #[test]
    fn truncate_cuts_the_conflicting_suffix() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), None);
        append(
            &store,
            &[normal(1, 0, "a"), normal(1, 1, "b"), normal(1, 2, "c")],
        );
        block_on(store.truncate(log_id(1, 1))).unwrap();
        assert_eq!(state(&mut store), (None, Some(log_id(1, 0))));
        append(&store, &[normal(2, 1, "B")]);
        drop(store);
        let mut store = open(dir.path(), None);
        assert_eq!(state(&mut store), (None, Some(log_id(2, 1))));
        assert_eq!(
            store.read(0, 9, usize::MAX).unwrap(),
            [normal(1, 0, "a"), normal(2, 1, "B")]
        );
        assert_eq!(batches(dir.path()), [(0, 1), (1, 2)]);
    }

    #[test]
    fn purge_raises_the_log_start_and_drops_whole_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), None);
        let entries: Vec<Entry> = (0..200)
            .map(|i| normal(1, i, "some record bytes"))
            .collect();
        for chunk in entries.chunks(10) {
            append(&store, chunk);
        }
        let segments = |dir: &std::path::Path| {
            std::fs::read_dir(dir)
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .ends_with(".log")
                })
                .count()
        };
        let before = segments(dir.path());
        assert!(before > 2, "4 KiB segments roll: {before}");
        block_on(store.purge(log_id(1, 149))).unwrap();
        assert_eq!(
            state(&mut store),
            (Some(log_id(1, 149)), Some(log_id(1, 199)))
        );
        assert!(segments(dir.path()) < before);
        assert_eq!(store.read(0, 152, usize::MAX).unwrap(), entries[150..152]);
        drop(store);
        // After a restart the newest snapshot marks what is purged.
        let mut store = open(dir.path(), Some(log_id(1, 149)));
        assert_eq!(
            state(&mut store),
            (Some(log_id(1, 149)), Some(log_id(1, 199)))
        );
        assert_eq!(store.read(150, 151, 0).unwrap(), entries[150..151]);
    }

    #[test]
    fn purge_past_the_end_restarts_the_log_after_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), None);
        append(&store, &[normal(1, 0, "a"), normal(1, 1, "b")]);
        // A snapshot from the leader covers far more than this log.
        block_on(store.purge(log_id(4, 40))).unwrap();
        assert_eq!(
            state(&mut store),
            (Some(log_id(4, 40)), Some(log_id(4, 40)))
        );
        assert!(store.read(0, 41, usize::MAX).unwrap().is_empty());
        append(&store, &[normal(4, 41, "c")]);
        drop(store);
        let mut store = open(dir.path(), Some(log_id(4, 40)));
        assert_eq!(
            state(&mut store),
            (Some(log_id(4, 40)), Some(log_id(4, 41)))
        );
        assert_eq!(store.read(0, 99, usize::MAX).unwrap(), [normal(4, 41, "c")]);
        assert_eq!(batches(dir.path()), [(41, 4)]);
    }

    #[test]
    fn vote_goes_to_quorum_state() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), None);
        assert_eq!(block_on(store.read_vote()).unwrap(), None);
        block_on(store.save_vote(&Vote::new_committed(5, 1))).unwrap();
        drop(store);
        let mut store = open(dir.path(), None);
        assert_eq!(
            block_on(store.read_vote()).unwrap(),
            Some(Vote::new_committed(5, 1))
        );
    }

    /// A log written by the pre-Raft `MetadataStore`: batches of several
    /// records at leader epoch 0.
    fn write_legacy_log(dir: &std::path::Path) {
        let mut log = Log::open(
            dir.to_path_buf(),
            METADATA_TOPIC_ID,
            LogConfig::default(),
            None,
            i64::MAX,
            0,
        )
        .unwrap();
        for records in [&["r0", "r1"][..], &["r2"]] {
            let mut b = BatchBuilder::new(0);
            for r in records {
                b.push(None, Some(r.as_bytes()), &[], 7);
            }
            log.append_as_leader(&b.build(), 0, 7).unwrap();
        }
        log.close().unwrap();
    }

    #[test]
    fn pre_raft_log_reads_as_term_zero_entries_before_the_voters() {
        let dir = tempfile::tempdir().unwrap();
        write_legacy_log(dir.path());
        let mut store = open(dir.path(), None);
        assert_eq!(state(&mut store), (None, Some(log_id(0, 2))));
        assert!(store.bootstrap(membership(), false).is_err());
        store.bootstrap(membership(), true).unwrap();
        // An interrupted start bootstraps again; the entry is not repeated.
        store.bootstrap(membership(), true).unwrap();
        let legacy = |i: u64, r: &'static str| Entry {
            log_id: log_id(0, i),
            payload: EntryPayload::Normal(Proposal {
                timestamp_ms: 7,
                records: vec![Bytes::from_static(r.as_bytes())],
            }),
        };
        let voters = Entry {
            log_id: log_id(0, 3),
            payload: EntryPayload::Membership(membership()),
        };
        assert_eq!(
            store.read(0, 9, usize::MAX).unwrap(),
            [
                legacy(0, "r0"),
                legacy(1, "r1"),
                legacy(2, "r2"),
                voters.clone()
            ]
        );
        // Reads inside a batch of many records start at the entry asked for.
        assert_eq!(store.read(1, 2, 0).unwrap(), [legacy(1, "r1")]);
        assert_eq!(state(&mut store), (None, Some(log_id(0, 3))));
    }
}
