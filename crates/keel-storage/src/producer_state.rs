//! Producer state, with Kafka's semantics (`ProducerStateManager`): per
//! producer id the current epoch, the last few batches' sequence ranges, so
//! that a retried batch is answered with its original offsets instead of
//! being written twice, the first offset of its ongoing transaction, from
//! which the first unstable offset follows, and the coordinator epoch of
//! its last transaction marker, which fences a deposed coordinator.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};

use keel_types::limits::PRODUCER_BATCHES_RETAINED_MAX;
use keel_types::{ProducerEpoch, ProducerId};

use crate::batch::{increment_sequence, ControlRecordType, EndTxnMarker, RecordBatchHeader};
use crate::checkpoint::write_atomically;
use crate::error::{IoContext, Result, StorageError};

pub(crate) const SNAPSHOT_SUFFIX: &str = ".snapshot";
/// A producer no marker has been written for (Kafka's
/// `RecordBatch.NO_PARTITION_LEADER_EPOCH`).
const NO_COORDINATOR_EPOCH: i32 = -1;
/// Version 2 adds each producer's ongoing transaction, version 3 its last
/// marker's coordinator epoch; versions 1 and 2 are still read.
const SNAPSHOT_VERSION: u16 = 3;
/// Snapshots kept on disk; older ones only slow down nothing but take space.
const SNAPSHOTS_RETAINED_MAX: usize = 2;

/// One appended batch of a producer, enough to recognise its retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchMetadata {
    pub first_seq: i32,
    pub last_seq: i32,
    pub first_offset: i64,
    pub last_offset: i64,
    pub timestamp: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProducerEntry {
    pub epoch: ProducerEpoch,
    /// Oldest first; at most `PRODUCER_BATCHES_RETAINED_MAX`.
    pub batches: VecDeque<BatchMetadata>,
    pub last_timestamp: i64,
    /// Where the producer's ongoing transaction starts, if one is.
    pub current_txn_first_offset: Option<i64>,
    /// The coordinator epoch of the last transaction marker written for
    /// the producer (-1: none); a marker from a lower one is refused.
    pub coordinator_epoch: i32,
}

/// An ongoing transaction, for DescribeProducers and DescribeTransactions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OngoingTxn {
    pub producer_id: ProducerId,
    pub producer_epoch: ProducerEpoch,
    pub first_offset: i64,
    pub last_timestamp: i64,
}

/// Kafka's `AppendOrigin`: who appends a batch decides what is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AppendOrigin {
    /// A producer: epochs, sequences and transaction state.
    Client,
    /// A coordinator writing for a producer (TxnOffsetCommit records,
    /// transaction markers): epochs and transaction state, but no
    /// sequences, which the producer's own batches carry.
    Coordinator,
    /// A follower copying its leader, or the log replayed at open: the
    /// log is the truth and nothing is checked.
    Replication,
}

/// The batch of a producer that compaction keeps, emptied if need be, so
/// that the producer's sequence and epoch survive it: its last data batch,
/// or, for a producer whose data is all gone, its marker of the current
/// epoch, which fences older epochs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LastRecord {
    pub last_data_offset: Option<i64>,
    pub epoch: ProducerEpoch,
}

impl LastRecord {
    /// Whether `h`, a batch of this producer, is the one to keep.
    pub(crate) fn is(&self, h: &RecordBatchHeader) -> bool {
        match self.last_data_offset {
            Some(offset) => h.last_offset() == offset,
            None => h.is_control() && h.producer_epoch == self.epoch,
        }
    }
}

/// A transaction a marker ended (Kafka's `CompletedTxn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CompletedTxn {
    pub(crate) producer_id: ProducerId,
    pub(crate) first_offset: i64,
    /// The marker's offset.
    pub(crate) last_offset: i64,
    pub(crate) aborted: bool,
}

impl ProducerEntry {
    fn new(epoch: ProducerEpoch) -> ProducerEntry {
        ProducerEntry {
            epoch,
            batches: VecDeque::with_capacity(PRODUCER_BATCHES_RETAINED_MAX),
            last_timestamp: keel_types::NO_TIMESTAMP,
            current_txn_first_offset: None,
            coordinator_epoch: NO_COORDINATOR_EPOCH,
        }
    }

    fn find_duplicate(&self, header: &RecordBatchHeader) -> Option<BatchMetadata> {
        if header.producer_epoch != self.epoch {
            return None;
        }
        let (first, last) = (header.base_sequence, header.last_sequence());
        self.batches
            .iter()
            .find(|b| b.first_seq == first && b.last_seq == last)
            .copied()
    }

    /// A new epoch starts with no batches to deduplicate against.
    fn update_epoch(&mut self, epoch: ProducerEpoch) {
        if epoch != self.epoch {
            self.epoch = epoch;
            self.batches.clear();
        }
    }

    /// Records a data batch that has been (or is being) appended.
    fn record(&mut self, header: &RecordBatchHeader) {
        self.update_epoch(header.producer_epoch);
        if self.batches.len() == PRODUCER_BATCHES_RETAINED_MAX {
            self.batches.pop_front();
        }
        self.batches.push_back(BatchMetadata {
            first_seq: header.base_sequence,
            last_seq: header.last_sequence(),
            first_offset: header.base_offset,
            last_offset: header.last_offset(),
            timestamp: header.max_timestamp,
        });
    }
}

/// What a leader append should do with a batch from an idempotent producer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SequenceCheck {
    Append,
    Duplicate(BatchMetadata),
}

/// Checks a client batch's sequence and epoch against its producer's entry
/// (`None`: unknown), and recognises a retry.
pub(crate) fn check_batch(
    entry: Option<&ProducerEntry>,
    h: &RecordBatchHeader,
) -> Result<SequenceCheck> {
    let producer_id = h.producer_id;
    let Some(entry) = entry else {
        if h.base_sequence != 0 {
            return Err(StorageError::UnknownProducerId(producer_id));
        }
        return Ok(SequenceCheck::Append);
    };
    if let Some(dup) = entry.find_duplicate(h) {
        return Ok(SequenceCheck::Duplicate(dup));
    }
    check_epoch(Some(entry), h)?;
    let expected = if h.producer_epoch > entry.epoch {
        0
    } else {
        entry
            .batches
            .back()
            .map_or(0, |last| increment_sequence(last.last_seq, 1))
    };
    if h.base_sequence != expected {
        return Err(StorageError::OutOfOrderSequence {
            producer_id,
            expected,
            received: h.base_sequence,
        });
    }
    Ok(SequenceCheck::Append)
}

/// A batch from an older epoch than the producer's is from a fenced
/// producer, or for a marker, a fenced coordinator decision.
fn check_epoch(entry: Option<&ProducerEntry>, h: &RecordBatchHeader) -> Result<()> {
    match entry {
        Some(entry) if h.producer_epoch < entry.epoch => Err(StorageError::InvalidProducerEpoch {
            producer_id: h.producer_id,
            current: entry.epoch,
            received: h.producer_epoch,
        }),
        _ => Ok(()),
    }
}

/// Kafka's `checkCoordinatorEpoch`: a marker from a lower coordinator
/// epoch than the producer's last marker comes from a coordinator its
/// successor has replaced. Equal or higher is accepted. As in Kafka, -1
/// is not special: a producer no marker has been written for holds -1 and
/// takes any epoch from -1 up, and a marker with -1 is refused once a
/// marker with a real epoch has been written.
fn check_coordinator_epoch(
    entry: &ProducerEntry,
    h: &RecordBatchHeader,
    marker: &EndTxnMarker,
) -> Result<()> {
    if marker.coordinator_epoch < entry.coordinator_epoch {
        return Err(StorageError::TransactionCoordinatorFenced {
            producer_id: h.producer_id,
            current: entry.coordinator_epoch,
            received: marker.coordinator_epoch,
        });
    }
    Ok(())
}

/// Kafka's `ProducerAppendInfo.append`: the producer's entry (`None`:
/// unknown) after batch `h`, and the transaction `h` ends if it is a
/// marker; `marker` is what the control batch `h` holds. Checks what
/// `origin` calls for, except what `check_batch` checks for clients, which
/// the leader runs first to recognise retries.
pub(crate) fn append_batch(
    entry: Option<&ProducerEntry>,
    h: &RecordBatchHeader,
    marker: Option<EndTxnMarker>,
    origin: AppendOrigin,
) -> Result<(ProducerEntry, Option<CompletedTxn>)> {
    if origin == AppendOrigin::Coordinator {
        check_epoch(entry, h)?;
    }
    let mut updated = entry
        .cloned()
        .unwrap_or_else(|| ProducerEntry::new(h.producer_epoch));
    updated.last_timestamp = updated.last_timestamp.max(h.max_timestamp);
    if h.is_control() {
        // Other control records are not markers at all.
        let Some(marker) = marker else {
            updated.update_epoch(h.producer_epoch);
            return Ok((updated, None));
        };
        // A replica or a replay keeps what the leader wrote, and the epoch
        // the marker carries, as Kafka does.
        if origin != AppendOrigin::Replication {
            check_coordinator_epoch(&updated, h, &marker)?;
        }
        updated.update_epoch(h.producer_epoch);
        updated.coordinator_epoch = marker.coordinator_epoch;
        // A marker for a producer with no transaction here completes nothing.
        let completed = updated
            .current_txn_first_offset
            .take()
            .map(|first_offset| CompletedTxn {
                producer_id: h.producer_id,
                first_offset,
                last_offset: h.last_offset(),
                aborted: marker.control_type == ControlRecordType::Abort,
            });
        return Ok((updated, completed));
    }
    match (updated.current_txn_first_offset, h.is_transactional()) {
        // Kafka refuses this from any origin; a replica or a replay keeps
        // what the leader wrote, and the transaction stays open.
        (Some(first_offset), false) if origin != AppendOrigin::Replication => {
            return Err(StorageError::InvalidTxnState(format!(
                "producer {} wrote a non-transactional batch during its \
                 transaction starting at offset {first_offset}",
                h.producer_id
            )));
        }
        (None, true) => updated.current_txn_first_offset = Some(h.base_offset),
        _ => {}
    }
    updated.record(h);
    Ok((updated, None))
}

#[derive(Debug, Default)]
pub(crate) struct ProducerStateManager {
    producers: HashMap<ProducerId, ProducerEntry>,
    /// Each ongoing transaction's first offset and producer, in step with
    /// `producers` (Kafka's `ongoingTxns`): the first unstable offset is
    /// its first key, not a scan of every producer.
    ongoing_txns: BTreeMap<i64, ProducerId>,
}

impl ProducerStateManager {
    pub(crate) fn get(&self, producer_id: ProducerId) -> Option<&ProducerEntry> {
        self.producers.get(&producer_id)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (ProducerId, &ProducerEntry)> {
        self.producers.iter().map(|(&id, e)| (id, e))
    }

    /// What the cleaner must keep of each producer (Kafka's
    /// `lastRecordsOfActiveProducers`): see [`LastRecord`].
    pub(crate) fn last_records(&self) -> HashMap<ProducerId, LastRecord> {
        self.producers
            .iter()
            .map(|(&id, e)| {
                let last = LastRecord {
                    last_data_offset: e.batches.back().map(|b| b.last_offset),
                    epoch: e.epoch,
                };
                (id, last)
            })
            .collect()
    }

    /// Kafka's `update`: puts `entry` in place of the producer's.
    fn update(&mut self, producer_id: ProducerId, entry: ProducerEntry) {
        let previous = self.producers.get(&producer_id);
        if let Some(first) = previous.and_then(|e| e.current_txn_first_offset) {
            self.ongoing_txns.remove(&first);
        }
        if let Some(first) = entry.current_txn_first_offset {
            self.ongoing_txns.insert(first, producer_id);
        }
        self.producers.insert(producer_id, entry);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.producers.len()
    }

    /// Applies a batch that is in the log (appended, or read back) without
    /// checks, and returns the transaction it ends, if any. `marker` is
    /// what a control batch holds.
    pub(crate) fn replay(
        &mut self,
        h: &RecordBatchHeader,
        marker: Option<EndTxnMarker>,
    ) -> Option<CompletedTxn> {
        if h.producer_id < 0 {
            return None;
        }
        let (entry, completed) = append_batch(
            self.producers.get(&h.producer_id),
            h,
            marker,
            AppendOrigin::Replication,
        )
        .expect("replication appends are not checked");
        self.update(h.producer_id, entry);
        completed
    }

    /// Kafka's `lastStableOffset(completedTxn)`, once `txn` is no longer
    /// ongoing: the first offset of the earliest transaction still open,
    /// or the offset after the marker.
    pub(crate) fn last_stable_offset(&self, txn: &CompletedTxn) -> i64 {
        self.ongoing_txns
            .iter()
            .find(|&(_, &producer_id)| producer_id != txn.producer_id)
            .map_or(txn.last_offset + 1, |(&first_offset, _)| first_offset)
    }

    pub(crate) fn first_unstable_offset(&self) -> Option<i64> {
        self.ongoing_txns.keys().next().copied()
    }

    /// Ongoing transactions, by first offset.
    pub(crate) fn ongoing_txns(&self) -> impl Iterator<Item = OngoingTxn> + '_ {
        self.ongoing_txns
            .iter()
            .map(|(&first_offset, &producer_id)| {
                let entry = &self.producers[&producer_id];
                OngoingTxn {
                    producer_id,
                    producer_epoch: entry.epoch,
                    first_offset,
                    last_timestamp: entry.last_timestamp,
                }
            })
    }

    /// Removes producers idle for `expiration_ms`, except those with an
    /// ongoing transaction, which only a marker may end.
    pub(crate) fn expire(&mut self, now_ms: i64, expiration_ms: i64) {
        self.producers.retain(|_, e| {
            e.current_txn_first_offset.is_some()
                || now_ms.saturating_sub(e.last_timestamp) < expiration_ms
        });
    }

    // -- Snapshots ---------------------------------------------------------

    fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        let mut ids: Vec<_> = self.producers.keys().copied().collect();
        ids.sort_unstable();
        body.extend_from_slice(
            &u32::try_from(ids.len())
                .expect("producer count fits u32")
                .to_be_bytes(),
        );
        for id in ids {
            let e = &self.producers[&id];
            body.extend_from_slice(&id.to_be_bytes());
            body.extend_from_slice(&e.epoch.to_be_bytes());
            body.extend_from_slice(&e.last_timestamp.to_be_bytes());
            body.extend_from_slice(&e.current_txn_first_offset.unwrap_or(-1).to_be_bytes());
            body.extend_from_slice(&e.coordinator_epoch.to_be_bytes());
            body.push(e.batches.len() as u8);
            for b in &e.batches {
                body.extend_from_slice(&b.first_seq.to_be_bytes());
                body.extend_from_slice(&b.last_seq.to_be_bytes());
                body.extend_from_slice(&b.first_offset.to_be_bytes());
                body.extend_from_slice(&b.last_offset.to_be_bytes());
                body.extend_from_slice(&b.timestamp.to_be_bytes());
            }
        }
        let mut out = Vec::with_capacity(body.len() + 6);
        out.extend_from_slice(&SNAPSHOT_VERSION.to_be_bytes());
        out.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn decode(bytes: &[u8]) -> Result<HashMap<ProducerId, ProducerEntry>> {
        let mut r = Reader { bytes, pos: 0 };
        let version = u16::from_be_bytes(r.take::<2>()?);
        if !(1..=SNAPSHOT_VERSION).contains(&version) {
            return Err(StorageError::Corrupt(format!(
                "producer snapshot version {version}"
            )));
        }
        let crc = u32::from_be_bytes(r.take::<4>()?);
        if crc32c::crc32c(&bytes[r.pos..]) != crc {
            return Err(StorageError::Corrupt(
                "producer snapshot CRC mismatch".into(),
            ));
        }
        let count = u32::from_be_bytes(r.take::<4>()?);
        let mut producers = HashMap::new();
        for _ in 0..count {
            let id = i64::from_be_bytes(r.take::<8>()?);
            let epoch = i16::from_be_bytes(r.take::<2>()?);
            let last_timestamp = i64::from_be_bytes(r.take::<8>()?);
            let current_txn_first_offset = if version >= 2 {
                Some(i64::from_be_bytes(r.take::<8>()?)).filter(|&offset| offset >= 0)
            } else {
                None
            };
            let coordinator_epoch = if version >= 3 {
                i32::from_be_bytes(r.take::<4>()?)
            } else {
                NO_COORDINATOR_EPOCH
            };
            let n = r.take::<1>()?[0] as usize;
            if n > PRODUCER_BATCHES_RETAINED_MAX {
                return Err(StorageError::Corrupt(format!(
                    "producer snapshot holds {n} batches"
                )));
            }
            let mut batches = VecDeque::with_capacity(n);
            for _ in 0..n {
                batches.push_back(BatchMetadata {
                    first_seq: i32::from_be_bytes(r.take::<4>()?),
                    last_seq: i32::from_be_bytes(r.take::<4>()?),
                    first_offset: i64::from_be_bytes(r.take::<8>()?),
                    last_offset: i64::from_be_bytes(r.take::<8>()?),
                    timestamp: i64::from_be_bytes(r.take::<8>()?),
                });
            }
            producers.insert(
                id,
                ProducerEntry {
                    epoch,
                    batches,
                    last_timestamp,
                    current_txn_first_offset,
                    coordinator_epoch,
                },
            );
        }
        if r.pos != bytes.len() {
            return Err(StorageError::Corrupt(
                "trailing bytes in producer snapshot".into(),
            ));
        }
        Ok(producers)
    }

    /// Writes `{offset:020}.snapshot` and prunes all but the newest two.
    pub(crate) fn take_snapshot(&self, dir: &Path, offset: i64) -> Result<()> {
        write_atomically(&snapshot_path(dir, offset), &self.encode())?;
        let snapshots = list_snapshots(dir)?;
        if snapshots.len() > SNAPSHOTS_RETAINED_MAX {
            for &old in &snapshots[..snapshots.len() - SNAPSHOTS_RETAINED_MAX] {
                remove_if_exists(&snapshot_path(dir, old))?;
            }
        }
        Ok(())
    }

    /// Drops snapshots past `log_end_offset` (they describe a truncated
    /// log), then loads the newest readable one at or below `max_offset`.
    /// Returns the offset the caller must replay the log from.
    pub(crate) fn load_latest(
        &mut self,
        dir: &Path,
        max_offset: i64,
        log_end_offset: i64,
        log_start_offset: i64,
    ) -> Result<i64> {
        self.producers.clear();
        self.ongoing_txns.clear();
        let snapshots = list_snapshots(dir)?;
        for &offset in snapshots.iter().rev() {
            let path = snapshot_path(dir, offset);
            if offset > log_end_offset {
                remove_if_exists(&path)?;
                continue;
            }
            if offset > max_offset {
                continue;
            }
            if offset < log_start_offset {
                break;
            }
            let bytes = std::fs::read(&path).ctx(|| format!("reading {}", path.display()))?;
            match Self::decode(&bytes) {
                Ok(producers) => {
                    for (&producer_id, entry) in &producers {
                        if let Some(first) = entry.current_txn_first_offset {
                            self.ongoing_txns.insert(first, producer_id);
                        }
                    }
                    self.producers = producers;
                    return Ok(offset);
                }
                Err(e) => {
                    tracing::warn!(snapshot = %path.display(), "ignoring producer snapshot: {e}");
                    remove_if_exists(&path)?;
                }
            }
        }
        Ok(log_start_offset)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N]> {
        let end = self.pos + N;
        let slice = self
            .bytes
            .get(self.pos..end)
            .ok_or_else(|| StorageError::Corrupt("producer snapshot is truncated".into()))?;
        self.pos = end;
        Ok(slice.try_into().expect("N bytes"))
    }
}

pub(crate) fn snapshot_path(dir: &Path, offset: i64) -> PathBuf {
    dir.join(crate::segment::file_name(offset, SNAPSHOT_SUFFIX))
}

/// Snapshot offsets in the directory, ascending.
pub(crate) fn list_snapshots(dir: &Path) -> Result<Vec<i64>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).ctx(|| format!("listing {}", dir.display()))? {
        let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
        if let Some(name) = entry.file_name().to_str() {
            if let Some(offset) = crate::segment::parse_file_name(name, SNAPSHOT_SUFFIX) {
                out.push(offset);
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}

pub(crate) fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).ctx(|| format!("deleting {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::BatchBuilder;

    fn header(
        pid: i64,
        epoch: i16,
        seq: i32,
        records: usize,
        base_offset: i64,
    ) -> RecordBatchHeader {
        let mut b = BatchBuilder::new(base_offset).producer(pid, epoch, seq);
        for _ in 0..records {
            b.push(None, Some(b"v"), &[], 1);
        }
        RecordBatchHeader::parse(&b.build()).unwrap()
    }

    #[test]
    fn sequence_rules() {
        let h0 = header(1, 0, 0, 3, 0);
        assert_eq!(check_batch(None, &h0).unwrap(), SequenceCheck::Append);
        assert!(matches!(
            check_batch(None, &header(1, 0, 3, 1, 0)),
            Err(StorageError::UnknownProducerId(1))
        ));
        let mut e = ProducerEntry::new(0);
        e.record(&h0);
        assert!(
            matches!(check_batch(Some(&e), &h0).unwrap(), SequenceCheck::Duplicate(b) if b.first_offset == 0)
        );
        assert_eq!(
            check_batch(Some(&e), &header(1, 0, 3, 1, 3)).unwrap(),
            SequenceCheck::Append
        );
        assert!(matches!(
            check_batch(Some(&e), &header(1, 0, 5, 1, 3)),
            Err(StorageError::OutOfOrderSequence { expected: 3, .. })
        ));
        assert!(matches!(
            check_batch(Some(&e), &header(1, 1, 5, 1, 3)),
            Err(StorageError::OutOfOrderSequence { expected: 0, .. })
        ));
        assert_eq!(
            check_batch(Some(&e), &header(1, 1, 0, 1, 3)).unwrap(),
            SequenceCheck::Append
        );
        e.record(&header(1, 2, 0, 1, 3));
        assert!(matches!(
            check_batch(Some(&e), &header(1, 1, 1, 1, 4)),
            Err(StorageError::InvalidProducerEpoch { current: 2, .. })
        ));
    }

    #[test]
    fn keeps_five_batches_and_round_trips_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = ProducerStateManager::default();
        for i in 0..7 {
            m.replay(&header(9, 0, i * 2, 2, i64::from(i) * 2), None);
        }
        m.replay(&header(10, 3, 0, 1, 14), None);
        assert_eq!(
            m.get(9).unwrap().batches.len(),
            PRODUCER_BATCHES_RETAINED_MAX
        );
        for off in [5, 10, 15] {
            m.take_snapshot(dir.path(), off).unwrap();
        }
        assert_eq!(list_snapshots(dir.path()).unwrap(), vec![10, 15]);
        let mut loaded = ProducerStateManager::default();
        assert_eq!(loaded.load_latest(dir.path(), 15, 15, 0).unwrap(), 15);
        assert_eq!(loaded.producers, m.producers);
        // A snapshot past the log end is stale and removed.
        assert_eq!(loaded.load_latest(dir.path(), 12, 12, 0).unwrap(), 10);
        assert_eq!(list_snapshots(dir.path()).unwrap(), vec![10]);
        // A corrupt snapshot is ignored.
        let path = snapshot_path(dir.path(), 10);
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 1] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(loaded.load_latest(dir.path(), 12, 12, 0).unwrap(), 0);
        assert_eq!(loaded.len(), 0);
    }

    #[test]
    fn expiry() {
        let mut m = ProducerStateManager::default();
        m.replay(&header(1, 0, 0, 1, 0), None); // timestamp 1
        m.expire(100, 1000);
        assert_eq!(m.len(), 1);
        m.expire(1001, 1000);
        assert_eq!(m.len(), 0);
    }
}
