//! One segment: a `.log` file of batches plus its `.index`, `.timeindex`
//! and (once it has an aborted transaction) `.txnindex`.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, IoSlice, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use keel_types::limits::{
    RECORD_BATCH_HEADER_BYTES, SEGMENT_BYTES_MAX, SEGMENT_RELATIVE_OFFSET_MAX,
};

use crate::batch::{check_crc, check_framing, RecordBatchHeader};
use crate::error::{IoContext, Result, StorageError};
use crate::index::OffsetIndex;
use crate::time_index::TimeIndex;
use crate::txn_index::{AbortedTxn, TransactionIndex};

pub(crate) const LOG_SUFFIX: &str = ".log";
pub(crate) const INDEX_SUFFIX: &str = ".index";
pub(crate) const TIME_INDEX_SUFFIX: &str = ".timeindex";
pub(crate) const TXN_INDEX_SUFFIX: &str = ".txnindex";

/// The files of a segment, in the order the cleaner's swap renames them:
/// log first, so that a `.log.swap` exists whenever any index does.
pub(crate) const SEGMENT_SUFFIXES: [&str; 4] = [
    LOG_SUFFIX,
    INDEX_SUFFIX,
    TIME_INDEX_SUFFIX,
    TXN_INDEX_SUFFIX,
];

/// Kafka names every segment file by its base offset, 20 digits wide.
pub(crate) fn file_name(base_offset: i64, suffix: &str) -> String {
    format!("{base_offset:020}{suffix}")
}

/// Parses `00000000000000000042.log`-style names.
pub(crate) fn parse_file_name(name: &str, suffix: &str) -> Option<i64> {
    let stem = name.strip_suffix(suffix)?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// How a scan of a segment's batches ended.
#[derive(Debug)]
pub(crate) struct ScanEnd {
    /// Position after the last good batch.
    pub valid_end: u64,
    /// Why the scan stopped before the file end, if it did.
    pub problem: Option<String>,
}

/// `Read` over positional reads, so scanning never moves a shared cursor.
struct PosReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for PosReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end.saturating_sub(self.pos);
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Reads a header at `pos`; `None` if fewer than a header's bytes remain
/// before `end`.
pub(crate) fn read_header_at(file: &File, pos: u64, end: u64) -> Result<Option<RecordBatchHeader>> {
    if end.saturating_sub(pos) < RECORD_BATCH_HEADER_BYTES as u64 {
        return Ok(None);
    }
    let mut buf = [0u8; RECORD_BATCH_HEADER_BYTES];
    file.read_exact_at(&mut buf, pos)
        .ctx(|| format!("reading batch header at position {pos}"))?;
    RecordBatchHeader::parse(&buf).map(Some)
}

/// Walks batches from `start` to `end`, calling `f(position, header)` for
/// each good one. Stops at the first batch that is torn, badly framed, out of
/// offset order, or (with `verify_crc`) fails its CRC.
pub(crate) fn scan(
    file: &File,
    base_offset: i64,
    start: u64,
    end: u64,
    mut expected_next: i64,
    verify_crc: bool,
    mut f: impl FnMut(u64, &RecordBatchHeader) -> Result<()>,
) -> Result<ScanEnd> {
    let mut reader = BufReader::with_capacity(
        256 * 1024,
        PosReader {
            file,
            pos: start,
            end,
        },
    );
    let mut pos = start;
    let mut batch = Vec::new();
    let problem = loop {
        if pos == end {
            break None;
        }
        let mut head = [0u8; RECORD_BATCH_HEADER_BYTES];
        match reader.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                break Some(format!("torn batch header at position {pos}"))
            }
            Err(e) => return Err(e).ctx(|| format!("scanning segment {base_offset}")),
        }
        let header = RecordBatchHeader::parse(&head)?;
        if let Err(e) = check_framing(&header) {
            break Some(format!("at position {pos}: {e}"));
        }
        let total = header.total_size();
        if total > end - pos {
            break Some(format!(
                "torn batch at position {pos}: {total} bytes, {} on disk",
                end - pos
            ));
        }
        if header.base_offset < expected_next
            || header.last_offset_delta < 0
            || header.last_offset() - base_offset > SEGMENT_RELATIVE_OFFSET_MAX
        {
            break Some(format!(
                "batch at position {pos} has offsets {}..={} after {expected_next}",
                header.base_offset,
                header.last_offset()
            ));
        }
        batch.clear();
        batch.extend_from_slice(&head);
        batch.resize(total as usize, 0);
        match reader.read_exact(&mut batch[RECORD_BATCH_HEADER_BYTES..]) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                break Some(format!("torn batch at position {pos}"))
            }
            Err(e) => return Err(e).ctx(|| format!("scanning segment {base_offset}")),
        }
        if verify_crc {
            if let Err(e) = check_crc(&header, &batch) {
                break Some(format!("at position {pos}: {e}"));
            }
        }
        f(pos, &header)?;
        expected_next = header.next_offset();
        pos += total;
    };
    Ok(ScanEnd {
        valid_end: pos,
        problem,
    })
}

/// What [`Segment::open`] found.
#[derive(Debug)]
pub(crate) struct OpenedSegment {
    pub(crate) segment: Segment,
    /// Bytes cut off a bad tail, if any: then later segments must go too.
    pub(crate) truncated: Option<u64>,
    /// The transaction index was torn or implausible: the segment holds an
    /// empty stand-in until it is reset and refilled by replaying the log's
    /// producers (see `recovery::load_segments`).
    pub(crate) txn_index_lost: bool,
}

#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) base_offset: i64,
    log_path: PathBuf,
    /// Shared with outstanding `FetchSlice`s, which keeps a deleted
    /// segment's inode alive until they finish reading.
    log: Arc<File>,
    /// Bytes of whole batches; readers never look past it.
    size: u64,
    index: OffsetIndex,
    time_index: TimeIndex,
    txn_index: TransactionIndex,
    /// The offset after the last batch, or the base when empty.
    next_offset: i64,
    max_timestamp: i64,
    /// Last offset of the first batch that reached `max_timestamp`.
    offset_of_max_timestamp: i64,
    /// When the segment got its first batch; drives `segment.ms`.
    rolling_ms: Option<i64>,
    /// The first batch's max timestamp (Kafka's `getFirstBatchTimestamp`):
    /// how long its records have waited, for `max.compaction.lag.ms`.
    first_batch_timestamp: Option<i64>,
    bytes_since_index_entry: u64,
}

/// Tracks index entries while batches go by, shared by append and rebuild
/// so both produce byte-identical indexes.
struct IndexCursor {
    max_timestamp: i64,
    offset_of_max_timestamp: i64,
    bytes_since_index_entry: u64,
}

impl IndexCursor {
    /// Returns the entries to add for this batch: an offset-index entry and
    /// the time-index candidate, when the interval is reached.
    fn step(&mut self, header: &RecordBatchHeader, interval: u32) -> Option<(i64, (i64, i64))> {
        if header.max_timestamp > self.max_timestamp {
            self.max_timestamp = header.max_timestamp;
            self.offset_of_max_timestamp = header.last_offset();
        }
        let due = self.bytes_since_index_entry >= u64::from(interval);
        if due {
            self.bytes_since_index_entry = 0;
        }
        self.bytes_since_index_entry += header.total_size();
        due.then_some((
            header.last_offset(),
            (self.max_timestamp, self.offset_of_max_timestamp),
        ))
    }
}

impl Segment {
    /// Log, offset index, time index, transaction index.
    fn paths(dir: &Path, base_offset: i64) -> [PathBuf; 4] {
        SEGMENT_SUFFIXES.map(|suffix| dir.join(file_name(base_offset, suffix)))
    }

    fn open_log_file(path: &Path, create: bool) -> Result<File> {
        OpenOptions::new()
            .read(true)
            .append(true)
            .create(create)
            .truncate(false)
            .open(path)
            .ctx(|| format!("opening {}", path.display()))
    }

    /// A new, empty segment. Any files of that name are replaced.
    pub(crate) fn create(dir: &Path, base_offset: i64) -> Result<Segment> {
        let [log_path, index_path, time_path, txn_path] = Self::paths(dir, base_offset);
        let log = Self::open_log_file(&log_path, true)?;
        log.set_len(0)
            .ctx(|| format!("truncating {}", log_path.display()))?;
        Ok(Segment {
            base_offset,
            log_path,
            log: Arc::new(log),
            size: 0,
            index: OffsetIndex::create(&index_path, base_offset, Vec::new())?,
            time_index: TimeIndex::create(&time_path, base_offset, Vec::new())?,
            txn_index: TransactionIndex::empty(txn_path)?,
            next_offset: base_offset,
            max_timestamp: keel_types::NO_TIMESTAMP,
            offset_of_max_timestamp: base_offset,
            rolling_ms: None,
            first_batch_timestamp: None,
            bytes_since_index_entry: 0,
        })
    }

    /// Opens an existing segment. With `recover`, every batch's CRC is
    /// checked and a bad tail cut off; otherwise indexes are trusted if they
    /// look sane, and rebuilt if not. The transaction index cannot be
    /// rebuilt from the segment alone: see [`OpenedSegment::txn_index_lost`].
    pub(crate) fn open(
        dir: &Path,
        base_offset: i64,
        recover: bool,
        index_interval_bytes: u32,
    ) -> Result<OpenedSegment> {
        let [log_path, index_path, time_path, txn_path] = Self::paths(dir, base_offset);
        let log = Self::open_log_file(&log_path, false)?;
        let size = log
            .metadata()
            .ctx(|| format!("stat {}", log_path.display()))?
            .len();
        let (txn_index, txn_index_lost) = Self::load_txn_index(&txn_path, base_offset)?;
        let (segment, truncated) = if recover {
            Self::rebuild(
                log_path,
                log,
                size,
                base_offset,
                index_interval_bytes,
                true,
                txn_index,
            )?
        } else if let Some(segment) = Self::load_clean(
            &log_path,
            log,
            size,
            base_offset,
            &index_path,
            &time_path,
            txn_index,
        )? {
            (segment, None)
        } else {
            tracing::warn!(segment = %log_path.display(), "index missing or corrupt; rebuilding");
            let log = Self::open_log_file(&log_path, false)?;
            // `load_clean` took the transaction index, which was not at fault.
            let (txn_index, _) = Self::load_txn_index(&txn_path, base_offset)?;
            Self::rebuild(
                log_path,
                log,
                size,
                base_offset,
                index_interval_bytes,
                false,
                txn_index,
            )?
        };
        Ok(OpenedSegment {
            segment,
            truncated,
            txn_index_lost,
        })
    }

    /// The transaction index on disk, or a stand-in and `true` if it could
    /// not be trusted.
    fn load_txn_index(path: &Path, base_offset: i64) -> Result<(TransactionIndex, bool)> {
        if let Some(index) = TransactionIndex::load(path.to_path_buf(), base_offset)? {
            return Ok((index, false));
        }
        tracing::warn!(index = %path.display(), "transaction index torn or corrupt");
        Ok((TransactionIndex::lost(path.to_path_buf()), true))
    }

    /// Trusts the indexes if they are sane; finds the tail by scanning from
    /// the last index entry. `None` asks for a rebuild.
    fn load_clean(
        log_path: &Path,
        log: File,
        size: u64,
        base_offset: i64,
        index_path: &Path,
        time_path: &Path,
        txn_index: TransactionIndex,
    ) -> Result<Option<Segment>> {
        let Some(index) = OffsetIndex::load(index_path, base_offset, size)? else {
            return Ok(None);
        };
        let start = index.entries().last().map_or(0, |&(_, pos)| u64::from(pos));
        let mut tail_max = (keel_types::NO_TIMESTAMP, base_offset);
        let mut next_offset = base_offset;
        let mut bytes_since = 0;
        let end = scan(
            &log,
            base_offset,
            start,
            size,
            base_offset,
            false,
            |_, h| {
                if h.max_timestamp > tail_max.0 {
                    tail_max = (h.max_timestamp, h.last_offset());
                }
                next_offset = h.next_offset();
                bytes_since += h.total_size();
                Ok(())
            },
        )?;
        if end.problem.is_some() {
            return Ok(None);
        }
        let expected = next_offset;
        if let Some((last, _)) = index.last_entry() {
            if last >= expected {
                return Ok(None);
            }
        }
        let Some(time_index) = TimeIndex::load(time_path, base_offset, expected)? else {
            return Ok(None);
        };
        let (mut max_timestamp, mut offset_of_max) = time_index
            .last_entry()
            .unwrap_or((keel_types::NO_TIMESTAMP, base_offset));
        if tail_max.0 > max_timestamp {
            (max_timestamp, offset_of_max) = tail_max;
        }
        let rolling_ms = if size == 0 {
            None
        } else {
            read_header_at(&log, 0, size)?.map(|h| h.max_timestamp)
        };
        Ok(Some(Segment {
            base_offset,
            log_path: log_path.to_path_buf(),
            log: Arc::new(log),
            size,
            index,
            time_index,
            txn_index,
            next_offset: expected,
            max_timestamp,
            offset_of_max_timestamp: offset_of_max,
            rolling_ms,
            first_batch_timestamp: rolling_ms,
            bytes_since_index_entry: bytes_since,
        }))
    }

    /// Scans the whole segment, cuts any bad tail, and rewrites the offset
    /// and time indexes. Returns the number of bytes cut off, if any.
    fn rebuild(
        log_path: PathBuf,
        log: File,
        size: u64,
        base_offset: i64,
        index_interval_bytes: u32,
        verify_crc: bool,
        txn_index: TransactionIndex,
    ) -> Result<(Segment, Option<u64>)> {
        let mut cursor = IndexCursor {
            max_timestamp: keel_types::NO_TIMESTAMP,
            offset_of_max_timestamp: base_offset,
            bytes_since_index_entry: 0,
        };
        let mut offsets = Vec::new();
        let mut times: Vec<(i64, u32)> = Vec::new();
        let mut next_offset = base_offset;
        let mut rolling_ms = None;
        let end = scan(
            &log,
            base_offset,
            0,
            size,
            base_offset,
            verify_crc,
            |pos, h| {
                rolling_ms.get_or_insert(h.max_timestamp);
                next_offset = h.next_offset();
                if let Some(due) = cursor.step(h, index_interval_bytes) {
                    push_index_entries(&mut offsets, &mut times, base_offset, pos, due);
                }
                Ok(())
            },
        )?;
        let mut truncated = None;
        if let Some(problem) = &end.problem {
            let dropped = size - end.valid_end;
            tracing::warn!(
                segment = %log_path.display(),
                dropped_bytes = dropped,
                "truncating log: {problem}"
            );
            log.set_len(end.valid_end)
                .ctx(|| format!("truncating {}", log_path.display()))?;
            truncated = Some(dropped);
        }
        let dir = log_path.parent().expect("segment path has a parent");
        let [_, index_path, time_path, _] = Self::paths(dir, base_offset);
        let seg = Segment {
            base_offset,
            log_path: log_path.clone(),
            log: Arc::new(log),
            size: end.valid_end,
            index: OffsetIndex::create(&index_path, base_offset, offsets)?,
            time_index: TimeIndex::create(&time_path, base_offset, times)?,
            txn_index,
            next_offset,
            max_timestamp: cursor.max_timestamp,
            offset_of_max_timestamp: cursor.offset_of_max_timestamp,
            rolling_ms,
            first_batch_timestamp: rolling_ms,
            bytes_since_index_entry: cursor.bytes_since_index_entry,
        };
        Ok((seg, truncated))
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }
    pub(crate) fn next_offset(&self) -> i64 {
        self.next_offset
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.size == 0
    }
    pub(crate) fn max_timestamp(&self) -> i64 {
        self.max_timestamp
    }
    pub(crate) fn offset_of_max_timestamp(&self) -> i64 {
        self.offset_of_max_timestamp
    }
    pub(crate) fn rolling_ms(&self) -> Option<i64> {
        self.rolling_ms
    }
    pub(crate) fn first_batch_timestamp(&self) -> Option<i64> {
        self.first_batch_timestamp
    }
    /// Bytes in the offset and time indexes, which bound how many segments
    /// the cleaner may merge into one.
    pub(crate) fn index_sizes(&self) -> (u64, u64) {
        (self.index.size_bytes(), self.time_index.size_bytes())
    }
    /// Where a scan for `offset` may start, from the offset index alone.
    pub(crate) fn index_position(&self, offset: i64) -> u64 {
        u64::from(self.index.lookup(offset))
    }
    pub(crate) fn file(&self) -> &Arc<File> {
        &self.log
    }
    pub(crate) fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Whether an index has no room for another entry.
    pub(crate) fn indexes_full(&self, index_bytes_max: u32) -> bool {
        self.index.is_full(index_bytes_max) || self.time_index.is_full(index_bytes_max)
    }

    /// Appends already validated, offset-assigned batches, held in `bytes`
    /// as pieces in order (a leader's assigned headers lie apart from the
    /// client's records). `headers` gives each batch's header and its
    /// length, in order.
    pub(crate) fn append(
        &mut self,
        bytes: &mut [IoSlice<'_>],
        headers: &[RecordBatchHeader],
        index_interval_bytes: u32,
        now_ms: i64,
    ) -> Result<()> {
        let first = headers.first().expect("append of no batches");
        assert!(
            first.base_offset >= self.next_offset,
            "offsets must increase"
        );
        let len: u64 = bytes.iter().map(|piece| piece.len() as u64).sum();
        let written = write_all_vectored(&self.log, bytes);
        if let Err(e) = written {
            // Leave no partial batch behind for readers or recovery.
            let _ = self.log.set_len(self.size);
            return Err(e).ctx(|| format!("appending to {}", self.log_path.display()));
        }
        self.rolling_ms.get_or_insert(now_ms);
        self.first_batch_timestamp
            .get_or_insert(first.max_timestamp);
        let mut cursor = IndexCursor {
            max_timestamp: self.max_timestamp,
            offset_of_max_timestamp: self.offset_of_max_timestamp,
            bytes_since_index_entry: self.bytes_since_index_entry,
        };
        let mut pos = self.size;
        for h in headers {
            if let Some((last, (ts, ts_offset))) = cursor.step(h, index_interval_bytes) {
                let pos32 = u32::try_from(pos).expect("segment.bytes keeps positions within u32");
                if self.index.last_entry().is_none_or(|(_, p)| pos32 > p) {
                    self.index.append(last, pos32)?;
                }
                self.time_index.maybe_append(ts, ts_offset)?;
            }
            pos += h.total_size();
            self.next_offset = h.next_offset();
        }
        assert_eq!(pos - self.size, len, "headers must cover the bytes");
        self.size = pos;
        self.max_timestamp = cursor.max_timestamp;
        self.offset_of_max_timestamp = cursor.offset_of_max_timestamp;
        self.bytes_since_index_entry = cursor.bytes_since_index_entry;
        Ok(())
    }

    /// The first batch whose last offset is ≥ `offset`, with its position.
    pub(crate) fn find_batch(&self, offset: i64) -> Result<Option<(u64, RecordBatchHeader)>> {
        self.find_batch_from(u64::from(self.index.lookup(offset)), offset, self.size)
    }

    fn find_batch_from(
        &self,
        mut pos: u64,
        offset: i64,
        end: u64,
    ) -> Result<Option<(u64, RecordBatchHeader)>> {
        while let Some(h) = read_header_at(&self.log, pos, end)? {
            check_framing(&h).map_err(|e| {
                StorageError::Corrupt(format!("{} at {pos}: {e}", self.log_path.display()))
            })?;
            if h.total_size() > end - pos {
                return Err(StorageError::Corrupt(format!(
                    "{}: batch at {pos} runs past the segment end",
                    self.log_path.display()
                )));
            }
            if h.last_offset() >= offset {
                return Ok(Some((pos, h)));
            }
            pos += h.total_size();
        }
        Ok(None)
    }

    /// Batches from the one holding `offset` to the end, by header.
    pub(crate) fn headers_from(&self, offset: i64) -> Result<Vec<(u64, RecordBatchHeader)>> {
        let mut out = Vec::new();
        let start = u64::from(self.index.lookup(offset));
        scan(
            &self.log,
            self.base_offset,
            start,
            self.size,
            self.base_offset,
            false,
            |pos, h| {
                if h.last_offset() >= offset {
                    out.push((pos, *h));
                }
                Ok(())
            },
        )?;
        Ok(out)
    }

    /// The position where a search for `timestamp` may start.
    pub(crate) fn time_lookup_position(&self, timestamp: i64) -> u64 {
        match self.time_index.lookup(timestamp) {
            Some(offset) => u64::from(self.index.lookup(offset)),
            None => 0,
        }
    }

    /// Cuts the segment so that it holds no batch with last offset ≥
    /// `offset`, then rebuilds its indexes; aborted transactions whose
    /// marker went go from the transaction index.
    pub(crate) fn truncate_to(self, offset: i64, index_interval_bytes: u32) -> Result<Segment> {
        let cut = self.find_batch(offset)?.map_or(self.size, |(pos, _)| pos);
        self.log
            .set_len(cut)
            .ctx(|| format!("truncating {}", self.log_path.display()))?;
        let log = Self::open_log_file(&self.log_path, false)?;
        let (seg, _) = Self::rebuild(
            self.log_path,
            log,
            cut,
            self.base_offset,
            index_interval_bytes,
            false,
            self.txn_index.truncate_to(offset)?,
        )?;
        Ok(seg)
    }

    /// Aborted transactions whose marker is in this segment, in marker order.
    pub(crate) fn aborted_txns(&self) -> impl Iterator<Item = &AbortedTxn> + '_ {
        self.txn_index.entries()
    }

    pub(crate) fn append_aborted_txn(&mut self, txn: AbortedTxn) -> Result<()> {
        assert!(
            (self.base_offset..self.next_offset).contains(&txn.last_offset),
            "an aborted transaction is indexed in the segment holding its marker"
        );
        self.txn_index.append(txn)
    }

    /// Empties the transaction index, for a replay of the log to refill it.
    pub(crate) fn reset_txn_index(&mut self) -> Result<()> {
        let path = self.txn_index.path().to_path_buf();
        self.txn_index = TransactionIndex::empty(path)?;
        Ok(())
    }

    /// The whole batch `header` at `pos`, as found by `headers_from`.
    pub(crate) fn read_batch(&self, pos: u64, header: &RecordBatchHeader) -> Result<Vec<u8>> {
        let mut batch = vec![0; usize::try_from(header.total_size()).expect("batches fit memory")];
        self.log
            .read_exact_at(&mut batch, pos)
            .ctx(|| format!("reading batch at {pos} of {}", self.log_path.display()))?;
        Ok(batch)
    }

    /// Called when the segment stops being active: records the final max
    /// timestamp (so a restart finds it without a scan) and syncs everything.
    pub(crate) fn on_become_inactive(&mut self) -> Result<()> {
        if !self.is_empty() {
            self.time_index
                .maybe_append(self.max_timestamp, self.offset_of_max_timestamp)?;
        }
        self.sync_all()
    }

    pub(crate) fn sync_log(&self) -> Result<()> {
        self.log
            .sync_data()
            .ctx(|| format!("fsync {}", self.log_path.display()))
    }

    pub(crate) fn sync_all(&self) -> Result<()> {
        self.sync_log()?;
        self.index.sync()?;
        self.time_index.sync()?;
        self.txn_index.sync()
    }

    /// Removes the files. Outstanding readers keep the log's inode alive.
    pub(crate) fn delete_files(self) -> Result<()> {
        for path in [
            self.log_path.as_path(),
            self.index.path(),
            self.time_index.path(),
            self.txn_index.path(),
        ] {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).ctx(|| format!("deleting {}", path.display())),
            }
        }
        Ok(())
    }
}

/// `Write::write_all` for pieces, which std has only unstably
/// (`write_all_vectored`).
fn write_all_vectored(mut file: &File, mut pieces: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut pieces, 0);
    while !pieces.is_empty() {
        match file.write_vectored(pieces) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut pieces, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Adds the entries `IndexCursor::step` asked for to in-memory indexes
/// being built whole: `(last offset, (timestamp, its offset))` of the batch
/// at `pos`.
fn push_index_entries(
    offsets: &mut Vec<(u32, u32)>,
    times: &mut Vec<(i64, u32)>,
    base_offset: i64,
    pos: u64,
    (last_offset, (ts, ts_offset)): (i64, (i64, i64)),
) {
    let rel = (last_offset - base_offset) as u32;
    let pos = pos as u32;
    if offsets.last().is_none_or(|&(r, p)| rel > r && pos > p) {
        offsets.push((rel, pos));
    }
    push_time_entry(times, base_offset, ts, ts_offset);
}

/// Time index entries only ever raise the timestamp.
fn push_time_entry(times: &mut Vec<(i64, u32)>, base_offset: i64, ts: i64, ts_offset: i64) {
    if times.last().is_none_or(|&(t, _)| ts > t) {
        times.push((ts, (ts_offset - base_offset) as u32));
    }
}

/// How much a [`SegmentWriter`] writes before it waits for the disk to
/// have it. Left to the kernel, a gigabyte of cleaned output sits as dirty
/// pages, and past the dirty limits the kernel throttles every writer,
/// producers' appends included; written back as it goes, the output costs
/// only the cleaner's own thread a wait (RocksDB's `bytes_per_sync`).
const WRITEBACK_BYTES: u64 = 8 * 1024 * 1024;

/// Writes a new, closed segment's files under temporary names
/// (`<base>.log<suffix>`, ...), with the indexes that appends and a final
/// `on_become_inactive` would have made. The cleaner writes its output
/// through this, then renames the files into place.
pub(crate) struct SegmentWriter {
    base_offset: i64,
    log_path: PathBuf,
    index_path: PathBuf,
    time_index_path: PathBuf,
    txn_index_path: PathBuf,
    log: BufWriter<File>,
    size: u64,
    /// Bytes written since the file last reached the disk.
    unsynced: u64,
    /// Where the next batch may start.
    next_offset: i64,
    cursor: IndexCursor,
    offsets: Vec<(u32, u32)>,
    times: Vec<(i64, u32)>,
    index_interval_bytes: u32,
}

impl SegmentWriter {
    /// Creates (truncating) the log; `finish` writes the indexes.
    pub(crate) fn create(
        dir: &Path,
        base_offset: i64,
        suffix: &str,
        index_interval_bytes: u32,
    ) -> Result<SegmentWriter> {
        let [log_path, index_path, time_index_path, txn_index_path] =
            SEGMENT_SUFFIXES.map(|s| dir.join(file_name(base_offset, &format!("{s}{suffix}"))));
        let log = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&log_path)
            .ctx(|| format!("creating {}", log_path.display()))?;
        Ok(SegmentWriter {
            base_offset,
            log_path,
            index_path,
            time_index_path,
            txn_index_path,
            log: BufWriter::with_capacity(256 * 1024, log),
            size: 0,
            unsynced: 0,
            next_offset: base_offset,
            cursor: IndexCursor {
                max_timestamp: keel_types::NO_TIMESTAMP,
                offset_of_max_timestamp: base_offset,
                bytes_since_index_entry: 0,
            },
            offsets: Vec::new(),
            times: Vec::new(),
            index_interval_bytes,
        })
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Appends one whole batch; its offsets must follow the previous one's.
    pub(crate) fn append(&mut self, batch: &[u8], header: &RecordBatchHeader) -> Result<()> {
        assert_eq!(header.total_size(), batch.len() as u64, "one whole batch");
        assert!(
            header.base_offset >= self.next_offset,
            "batch at {} after offset {}",
            header.base_offset,
            self.next_offset
        );
        assert!(
            header.last_offset() - self.base_offset <= SEGMENT_RELATIVE_OFFSET_MAX,
            "the cleaner groups segments so relative offsets fit the index"
        );
        let end = self.size + batch.len() as u64;
        if end > SEGMENT_BYTES_MAX {
            // Recompression can grow a batch; index positions are u32.
            return Err(StorageError::RecordListTooLarge {
                size: end,
                max: SEGMENT_BYTES_MAX,
            });
        }
        self.log
            .write_all(batch)
            .ctx(|| format!("writing {}", self.log_path.display()))?;
        if let Some(due) = self.cursor.step(header, self.index_interval_bytes) {
            push_index_entries(
                &mut self.offsets,
                &mut self.times,
                self.base_offset,
                self.size,
                due,
            );
        }
        self.size = end;
        self.next_offset = header.next_offset();
        self.unsynced += batch.len() as u64;
        if self.unsynced >= WRITEBACK_BYTES {
            self.log
                .flush()
                .and_then(|()| self.log.get_ref().sync_data())
                .ctx(|| format!("writing back {}", self.log_path.display()))?;
            self.unsynced = 0;
        }
        Ok(())
    }

    /// Writes the indexes (the transaction index holding `aborted`, even
    /// if that is nothing, so that the swap finds every file), fsyncs all
    /// files and stamps the log with `modified` (Kafka keeps the replaced
    /// segments' last-modified time, which time retention falls back on).
    pub(crate) fn finish(
        mut self,
        aborted: &[AbortedTxn],
        modified: Option<SystemTime>,
    ) -> Result<()> {
        if self.size > 0 {
            push_time_entry(
                &mut self.times,
                self.base_offset,
                self.cursor.max_timestamp,
                self.cursor.offset_of_max_timestamp,
            );
        }
        self.log
            .flush()
            .ctx(|| format!("writing {}", self.log_path.display()))?;
        let log = self
            .log
            .into_inner()
            .map_err(|e| StorageError::Io(e.into_error()))?;
        if let Some(modified) = modified {
            log.set_modified(modified)
                .ctx(|| format!("stamping {}", self.log_path.display()))?;
        }
        log.sync_all()
            .ctx(|| format!("fsync {}", self.log_path.display()))?;
        OffsetIndex::create(&self.index_path, self.base_offset, self.offsets)?.sync()?;
        TimeIndex::create(&self.time_index_path, self.base_offset, self.times)?.sync()?;
        TransactionIndex::write(&self.txn_index_path, aborted)
    }
}
