//! RecordBatch v2: header parsing, validation without decompression,
//! splitting a buffer into batches, iterating records (decompressing through
//! [`crate::codec`] when asked), and a builder for any codec and offsets.

use std::borrow::Cow;
use std::ops::Range;

use keel_types::limits::RECORD_BATCH_HEADER_BYTES;

use crate::error::{Result, StorageError};

/// Byte offsets of the v2 header fields.
pub(crate) mod field {
    pub const BASE_OFFSET: usize = 0;
    pub const BATCH_LENGTH: usize = 8;
    pub const PARTITION_LEADER_EPOCH: usize = 12;
    pub const MAGIC: usize = 16;
    pub const CRC: usize = 17;
    pub const ATTRIBUTES: usize = 21;
    pub const LAST_OFFSET_DELTA: usize = 23;
    pub const BASE_TIMESTAMP: usize = 27;
    pub const MAX_TIMESTAMP: usize = 35;
    pub const PRODUCER_ID: usize = 43;
    pub const PRODUCER_EPOCH: usize = 51;
    pub const BASE_SEQUENCE: usize = 53;
    pub const RECORD_COUNT: usize = 57;
    pub const RECORDS: usize = 61;
}

/// Bytes before `batchLength`'s coverage begins: baseOffset + batchLength.
pub const LOG_OVERHEAD_BYTES: usize = 12;

/// The smallest legal value of `batchLength`: a header with no records.
const BATCH_LENGTH_MIN: i32 = (RECORD_BATCH_HEADER_BYTES - LOG_OVERHEAD_BYTES) as i32;

const _: () = assert!(field::RECORDS == RECORD_BATCH_HEADER_BYTES);

const ATTR_COMPRESSION_MASK: i16 = 0x07;
const ATTR_TIMESTAMP_TYPE: i16 = 0x08;
const ATTR_TRANSACTIONAL: i16 = 0x10;
const ATTR_CONTROL: i16 = 0x20;
const ATTR_DELETE_HORIZON: i16 = 0x40;

/// The compression codec in attribute bits 0-2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
    /// Codec ids 5-7 are not defined; validation rejects them.
    Unknown(u8),
}

impl Compression {
    /// The attribute bits of a known codec.
    fn attribute_bits(self) -> i16 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
            Compression::Unknown(codec) => {
                unreachable!("codec {codec} is never written")
            }
        }
    }

    fn from_attributes(attributes: i16) -> Compression {
        match attributes & ATTR_COMPRESSION_MASK {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Snappy,
            3 => Compression::Lz4,
            4 => Compression::Zstd,
            other => Compression::Unknown(other as u8),
        }
    }
}

/// The fixed 61-byte header of a RecordBatch v2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordBatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

impl RecordBatchHeader {
    /// Parses the header at the start of `bytes`. Checks only that 61 bytes
    /// are present; `validate_batch` checks the rest.
    pub fn parse(bytes: &[u8]) -> Result<RecordBatchHeader> {
        if bytes.len() < RECORD_BATCH_HEADER_BYTES {
            return Err(StorageError::CorruptMessage(format!(
                "batch header needs {RECORD_BATCH_HEADER_BYTES} bytes, have {}",
                bytes.len()
            )));
        }
        Ok(RecordBatchHeader {
            base_offset: be_i64(bytes, field::BASE_OFFSET),
            batch_length: be_i32(bytes, field::BATCH_LENGTH),
            partition_leader_epoch: be_i32(bytes, field::PARTITION_LEADER_EPOCH),
            magic: bytes[field::MAGIC] as i8,
            crc: be_i32(bytes, field::CRC) as u32,
            attributes: be_i16(bytes, field::ATTRIBUTES),
            last_offset_delta: be_i32(bytes, field::LAST_OFFSET_DELTA),
            base_timestamp: be_i64(bytes, field::BASE_TIMESTAMP),
            max_timestamp: be_i64(bytes, field::MAX_TIMESTAMP),
            producer_id: be_i64(bytes, field::PRODUCER_ID),
            producer_epoch: be_i16(bytes, field::PRODUCER_EPOCH),
            base_sequence: be_i32(bytes, field::BASE_SEQUENCE),
            record_count: be_i32(bytes, field::RECORD_COUNT),
        })
    }

    pub fn base_offset(&self) -> i64 {
        self.base_offset
    }
    /// The offset of the batch's last record. Saturates so that a hostile
    /// header can never overflow; validation rejects such batches anyway.
    pub fn last_offset(&self) -> i64 {
        self.base_offset
            .saturating_add(i64::from(self.last_offset_delta))
    }
    /// The offset after this batch.
    pub fn next_offset(&self) -> i64 {
        self.last_offset().saturating_add(1)
    }
    pub fn batch_len(&self) -> i32 {
        self.batch_length
    }
    /// The whole batch's size on disk, including baseOffset and batchLength.
    /// Zero for a negative `batchLength` so callers' framing checks reject it.
    pub fn total_size(&self) -> u64 {
        u64::try_from(self.batch_length).map_or(0, |len| len + LOG_OVERHEAD_BYTES as u64)
    }
    pub fn partition_leader_epoch(&self) -> i32 {
        self.partition_leader_epoch
    }
    pub fn magic(&self) -> i8 {
        self.magic
    }
    pub fn crc(&self) -> u32 {
        self.crc
    }
    pub fn compression(&self) -> Compression {
        Compression::from_attributes(self.attributes)
    }
    pub fn timestamp_type(&self) -> crate::TimestampType {
        if self.attributes & ATTR_TIMESTAMP_TYPE != 0 {
            crate::TimestampType::LogAppendTime
        } else {
            crate::TimestampType::CreateTime
        }
    }
    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTR_TRANSACTIONAL != 0
    }
    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }
    pub fn has_delete_horizon(&self) -> bool {
        self.attributes & ATTR_DELETE_HORIZON != 0
    }
    /// KIP-534: when the cleaner may remove this batch's tombstones. Stored
    /// in place of the base timestamp.
    pub fn delete_horizon_ms(&self) -> Option<i64> {
        self.has_delete_horizon().then_some(self.base_timestamp)
    }
    pub fn last_offset_delta(&self) -> i32 {
        self.last_offset_delta
    }
    pub fn base_timestamp(&self) -> i64 {
        self.base_timestamp
    }
    pub fn max_timestamp(&self) -> i64 {
        self.max_timestamp
    }
    pub fn producer_id(&self) -> i64 {
        self.producer_id
    }
    pub fn producer_epoch(&self) -> i16 {
        self.producer_epoch
    }
    pub fn base_sequence(&self) -> i32 {
        self.base_sequence
    }
    /// Kafka wraps sequences at `i32::MAX` back to 0.
    pub fn last_sequence(&self) -> i32 {
        increment_sequence(self.base_sequence, self.last_offset_delta)
    }
    pub fn record_count(&self) -> i32 {
        self.record_count
    }
}

/// `seq + delta` wrapping past `i32::MAX` to 0, as Kafka's `DefaultRecordBatch.incrementSequence`.
pub fn increment_sequence(seq: i32, delta: i32) -> i32 {
    if seq > i32::MAX - delta {
        delta - (i32::MAX - seq) - 1
    } else {
        seq + delta
    }
}

/// CRC32C over bytes 21..end, the span the header's `crc` covers.
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[field::ATTRIBUTES..])
}

/// Checks the framing that even stored data must satisfy: a sane length and
/// the v2 magic. Used by recovery and by every reader of the log.
pub(crate) fn check_framing(header: &RecordBatchHeader) -> Result<()> {
    if header.magic != 2 {
        return Err(StorageError::UnsupportedMagic(header.magic));
    }
    if header.batch_length < BATCH_LENGTH_MIN {
        return Err(StorageError::CorruptMessage(format!(
            "batchLength {} below minimum {BATCH_LENGTH_MIN}",
            header.batch_length
        )));
    }
    Ok(())
}

/// Verifies the CRC of one whole batch.
pub(crate) fn check_crc(header: &RecordBatchHeader, batch: &[u8]) -> Result<()> {
    let crc = compute_crc(batch);
    if crc != header.crc {
        return Err(StorageError::CorruptMessage(format!(
            "CRC mismatch at offset {}: stored {:#010x}, computed {crc:#010x}",
            header.base_offset, header.crc
        )));
    }
    Ok(())
}

/// Validates one client batch without decompressing it. `batch` must hold
/// exactly one batch (as yielded by [`BatchIter`]).
pub fn validate_batch(batch: &[u8]) -> Result<RecordBatchHeader> {
    validate_batch_keys(batch, Keys::Optional)
}

/// Whether every record of a batch must carry a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Keys {
    Optional,
    /// Kafka's rule for compacted topics.
    Required,
}

/// [`validate_batch`], refusing keyless records when `keys` says so, in the
/// same walk over the records (decompressing only when keys are required).
pub(crate) fn validate_batch_keys(batch: &[u8], keys: Keys) -> Result<RecordBatchHeader> {
    let header = RecordBatchHeader::parse(batch)?;
    check_framing(&header)?;
    if header.total_size() != batch.len() as u64 {
        return Err(StorageError::CorruptMessage(format!(
            "batchLength {} disagrees with {} bytes",
            header.batch_length,
            batch.len()
        )));
    }
    check_crc(&header, batch)?;
    if header.record_count < 0 {
        return Err(StorageError::InvalidRecord(format!(
            "negative record count {}",
            header.record_count
        )));
    }
    if header.record_count > 0 && header.last_offset_delta != header.record_count - 1 {
        return Err(StorageError::InvalidRecord(format!(
            "lastOffsetDelta {} with {} records",
            header.last_offset_delta, header.record_count
        )));
    }
    match header.compression() {
        Compression::Unknown(codec) => {
            return Err(StorageError::InvalidRecord(format!(
                "unknown compression codec {codec}"
            )))
        }
        Compression::None => {
            let mut records =
                RecordIter::new(&header, &batch[field::RECORDS..], OffsetDeltas::Contiguous);
            for record in &mut records {
                require_key(&record?, keys)?;
            }
            records.finish()?;
        }
        _ if keys == Keys::Required => {
            let decoded =
                BatchRecords::decode(batch, crate::codec::RECORDS_UNCOMPRESSED_BYTES_MAX)?;
            for record in decoded.iter() {
                require_key(&record?, keys)?;
            }
        }
        _ => {}
    }
    Ok(header)
}

fn require_key(record: &RecordView<'_>, keys: Keys) -> Result<()> {
    if keys == Keys::Required && record.key.is_none() {
        return Err(StorageError::InvalidRecord(
            "compacted topic cannot accept message without key".into(),
        ));
    }
    Ok(())
}

/// Splits a buffer of concatenated batches. In lenient mode a trailing
/// partial batch ends the iteration (fetch responses may be cut); in strict
/// mode it is an error. A `batchLength` too small to hold a header is an
/// error in both modes, since nothing after it can be framed.
pub struct BatchIter<'a> {
    buf: &'a [u8],
    pos: usize,
    strict: bool,
    done: bool,
}

impl<'a> BatchIter<'a> {
    /// Lenient: a trailing partial batch ends the iteration quietly, as a
    /// fetch response cut at `max_bytes` requires.
    pub fn new(buf: &'a [u8]) -> BatchIter<'a> {
        Self::with_mode(buf, false)
    }

    /// Strict: a trailing partial batch is `CorruptMessage` (produce requests).
    pub fn strict(buf: &'a [u8]) -> BatchIter<'a> {
        Self::with_mode(buf, true)
    }

    pub fn with_mode(buf: &'a [u8], strict: bool) -> BatchIter<'a> {
        BatchIter {
            buf,
            pos: 0,
            strict,
            done: false,
        }
    }

    /// Bytes consumed by the batches yielded so far.
    pub fn position(&self) -> usize {
        self.pos
    }
}

impl Iterator for BatchIter<'_> {
    type Item = Result<(RecordBatchHeader, Range<usize>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.pos == self.buf.len() {
            return None;
        }
        let rest = &self.buf[self.pos..];
        let partial = |what: String| {
            if self.strict {
                Some(Err(StorageError::CorruptMessage(what)))
            } else {
                None
            }
        };
        if rest.len() < RECORD_BATCH_HEADER_BYTES {
            self.done = true;
            return partial(format!("{} trailing bytes, less than a header", rest.len()));
        }
        let header = match RecordBatchHeader::parse(rest) {
            Ok(h) => h,
            Err(e) => {
                self.done = true;
                return Some(Err(e));
            }
        };
        if header.batch_length < BATCH_LENGTH_MIN {
            self.done = true;
            return Some(Err(StorageError::CorruptMessage(format!(
                "batchLength {} below minimum {BATCH_LENGTH_MIN}",
                header.batch_length
            ))));
        }
        let total = header.total_size();
        if total > rest.len() as u64 {
            self.done = true;
            return partial(format!(
                "batch of {total} bytes but only {} remain",
                rest.len()
            ));
        }
        let range = self.pos..self.pos + total as usize;
        self.pos = range.end;
        Some(Ok((header, range)))
    }
}

// ---------------------------------------------------------------------------
// Varints (zigzag, as Kafka's ByteUtils).

fn invalid(what: &str) -> StorageError {
    StorageError::InvalidRecord(what.to_string())
}

fn read_unsigned_varlong(buf: &[u8], pos: &mut usize, max_bytes: usize) -> Result<u64> {
    let mut value: u64 = 0;
    for i in 0..max_bytes {
        let byte = *buf
            .get(*pos)
            .ok_or_else(|| invalid("varint runs past the record"))?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(invalid("varint too long"))
}

pub(crate) fn read_varint(buf: &[u8], pos: &mut usize) -> Result<i32> {
    let raw = read_unsigned_varlong(buf, pos, 5)?;
    let raw = u32::try_from(raw).map_err(|_| invalid("varint overflows 32 bits"))?;
    Ok(((raw >> 1) as i32) ^ -((raw & 1) as i32))
}

pub(crate) fn read_varlong(buf: &[u8], pos: &mut usize) -> Result<i64> {
    let raw = read_unsigned_varlong(buf, pos, 10)?;
    Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
}

pub(crate) fn write_varint(out: &mut Vec<u8>, value: i32) {
    write_varlong(out, i64::from(value));
}

pub(crate) fn write_varlong(out: &mut Vec<u8>, value: i64) {
    let mut raw = ((value << 1) ^ (value >> 63)) as u64;
    while raw >= 0x80 {
        out.push((raw as u8 & 0x7f) | 0x80);
        raw >>= 7;
    }
    out.push(raw as u8);
}

// ---------------------------------------------------------------------------
// Records.

/// One record, borrowed from the (decompressed) records section of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: Vec<(&'a str, Option<&'a [u8]>)>,
}

/// What a batch's offset deltas must look like.
#[derive(Clone, Copy, Debug)]
enum OffsetDeltas {
    /// A client batch: exactly 0, 1, .., count - 1.
    Contiguous,
    /// A stored batch: the cleaner removes records and keeps the rest at
    /// their offsets, so deltas only increase, up to `lastOffsetDelta`.
    Increasing { last_offset_delta: i32 },
}

/// Walks the records of a records section, checking that each fits its
/// length prefix exactly and that offset deltas are as the batch kind requires.
pub struct RecordIter<'a> {
    records: &'a [u8],
    pos: usize,
    index: i32,
    count: i32,
    previous_delta: i32,
    deltas: OffsetDeltas,
    base_offset: i64,
    base_timestamp: i64,
    log_append_time: Option<i64>,
    failed: bool,
}

impl<'a> RecordIter<'a> {
    fn new(header: &RecordBatchHeader, records: &'a [u8], deltas: OffsetDeltas) -> RecordIter<'a> {
        RecordIter {
            records,
            pos: 0,
            index: 0,
            count: header.record_count.max(0),
            previous_delta: -1,
            deltas,
            base_offset: header.base_offset,
            base_timestamp: header.base_timestamp,
            log_append_time: (header.timestamp_type() == crate::TimestampType::LogAppendTime)
                .then_some(header.max_timestamp),
            failed: false,
        }
    }

    /// After the last record: the records must fill the section exactly.
    pub(crate) fn finish(&self) -> Result<()> {
        if self.pos != self.records.len() {
            return Err(StorageError::InvalidRecord(format!(
                "{} bytes after the last record",
                self.records.len() - self.pos
            )));
        }
        Ok(())
    }

    fn bytes(&self, pos: &mut usize, end: usize, what: &str) -> Result<Option<&'a [u8]>> {
        let len = read_varint(&self.records[..end], pos)?;
        if len < 0 {
            if len != -1 {
                return Err(invalid(&format!("{what} length {len}")));
            }
            return Ok(None);
        }
        let len = len as usize;
        if end - *pos < len {
            return Err(invalid(&format!("{what} runs past the record")));
        }
        let out = &self.records[*pos..*pos + len];
        *pos += len;
        Ok(Some(out))
    }

    fn check_offset_delta(&self, offset_delta: i32) -> Result<()> {
        let fits = match self.deltas {
            OffsetDeltas::Contiguous => offset_delta == self.index,
            OffsetDeltas::Increasing { last_offset_delta } => {
                offset_delta > self.previous_delta && offset_delta <= last_offset_delta
            }
        };
        if !fits {
            return Err(StorageError::InvalidRecord(format!(
                "record {} has offset delta {offset_delta}",
                self.index
            )));
        }
        Ok(())
    }

    fn parse_one(&mut self) -> Result<RecordView<'a>> {
        let mut pos = self.pos;
        let len = read_varint(self.records, &mut pos)?;
        if len < 0 || (len as usize) > self.records.len() - pos {
            return Err(invalid("record length runs past the batch"));
        }
        let end = pos + len as usize;
        let body = &self.records[..end];
        if pos >= end {
            return Err(invalid("empty record"));
        }
        pos += 1; // attributes: unused in v2
        let timestamp_delta = read_varlong(body, &mut pos)?;
        let offset_delta = read_varint(body, &mut pos)?;
        self.check_offset_delta(offset_delta)?;
        let key = self.bytes(&mut pos, end, "key")?;
        let value = self.bytes(&mut pos, end, "value")?;
        let header_count = read_varint(body, &mut pos)?;
        if header_count < 0 {
            return Err(invalid("negative header count"));
        }
        // Each header needs at least two bytes, which bounds the allocation.
        if (header_count as usize) > (end - pos) / 2 {
            return Err(invalid("header count exceeds record size"));
        }
        let mut headers = Vec::with_capacity(header_count as usize);
        for _ in 0..header_count {
            let k = self
                .bytes(&mut pos, end, "header key")?
                .ok_or_else(|| invalid("null header key"))?;
            let k = std::str::from_utf8(k).map_err(|_| invalid("header key is not UTF-8"))?;
            let v = self.bytes(&mut pos, end, "header value")?;
            headers.push((k, v));
        }
        if pos != end {
            return Err(invalid("record length disagrees with its fields"));
        }
        self.pos = end;
        self.previous_delta = offset_delta;
        let timestamp = self
            .log_append_time
            .unwrap_or_else(|| self.base_timestamp.wrapping_add(timestamp_delta));
        Ok(RecordView {
            offset: self.base_offset + i64::from(offset_delta),
            timestamp,
            key,
            value,
            headers,
        })
    }
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<RecordView<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.index >= self.count {
            return None;
        }
        let record = self.parse_one();
        if record.is_err() {
            self.failed = true;
        }
        self.index += 1;
        Some(record)
    }
}

fn check_whole_batch(batch: &[u8]) -> Result<RecordBatchHeader> {
    let header = RecordBatchHeader::parse(batch)?;
    check_framing(&header)?;
    if header.total_size() != batch.len() as u64 {
        return Err(StorageError::CorruptMessage(
            "batchLength disagrees with the slice".into(),
        ));
    }
    Ok(header)
}

/// Iterates the records of one stored, uncompressed batch; a compressed
/// batch is an error (use [`BatchRecords::decode`]). Offset deltas may have
/// gaps, as the cleaner leaves them.
pub fn iter_records(batch: &[u8]) -> Result<RecordIter<'_>> {
    let header = check_whole_batch(batch)?;
    if header.compression() != Compression::None {
        return Err(StorageError::InvalidRecord(format!(
            "cannot iterate a {:?} batch without decompressing",
            header.compression()
        )));
    }
    Ok(RecordIter::new(
        &header,
        &batch[field::RECORDS..],
        OffsetDeltas::Increasing {
            last_offset_delta: header.last_offset_delta,
        },
    ))
}

/// The records section of one stored batch, decompressed if it was
/// compressed (borrowed otherwise), ready to iterate.
#[derive(Debug)]
pub struct BatchRecords<'a> {
    header: RecordBatchHeader,
    records: Cow<'a, [u8]>,
}

impl<'a> BatchRecords<'a> {
    /// Decodes `batch`, which must hold exactly one batch. Records that
    /// decompress to more than `uncompressed_bytes_max` bytes are
    /// `InvalidRecord` (see [`crate::codec::RECORDS_UNCOMPRESSED_BYTES_MAX`]).
    pub fn decode(batch: &'a [u8], uncompressed_bytes_max: usize) -> Result<BatchRecords<'a>> {
        let header = check_whole_batch(batch)?;
        let section = &batch[field::RECORDS..];
        let records = match header.compression() {
            Compression::None => Cow::Borrowed(section),
            codec => Cow::Owned(crate::codec::decompress(
                codec,
                section,
                uncompressed_bytes_max,
            )?),
        };
        Ok(BatchRecords { header, records })
    }

    pub fn header(&self) -> &RecordBatchHeader {
        &self.header
    }

    /// The records, with offset deltas checked as for a stored batch.
    pub fn iter(&self) -> RecordIter<'_> {
        RecordIter::new(
            &self.header,
            &self.records,
            OffsetDeltas::Increasing {
                last_offset_delta: self.header.last_offset_delta,
            },
        )
    }

    /// Every record, checking that together they fill the section exactly.
    pub fn records(&self) -> Result<Vec<RecordView<'_>>> {
        let mut iter = self.iter();
        let records = (&mut iter).collect::<Result<Vec<_>>>()?;
        iter.finish()?;
        Ok(records)
    }
}

// ---------------------------------------------------------------------------
// Building batches.

/// Builds a RecordBatch v2, uncompressed unless told otherwise.
#[derive(Clone, Debug)]
pub struct BatchBuilder {
    base_offset: i64,
    partition_leader_epoch: i32,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    control: bool,
    transactional: bool,
    log_append_time: bool,
    compression: Compression,
    delete_horizon_ms: Option<i64>,
    /// Set when records were removed after the last one pushed, so the
    /// batch must still end where it used to.
    last_offset_delta: Option<i32>,
    records: Vec<u8>,
    count: i32,
    previous_delta: i32,
    base_timestamp: i64,
    max_timestamp: i64,
}

impl BatchBuilder {
    pub fn new(base_offset: i64) -> BatchBuilder {
        BatchBuilder {
            base_offset,
            partition_leader_epoch: -1,
            producer_id: keel_types::NO_PRODUCER_ID,
            producer_epoch: keel_types::NO_PRODUCER_EPOCH,
            base_sequence: keel_types::NO_SEQUENCE,
            control: false,
            transactional: false,
            log_append_time: false,
            compression: Compression::None,
            delete_horizon_ms: None,
            last_offset_delta: None,
            records: Vec::new(),
            count: 0,
            previous_delta: -1,
            base_timestamp: keel_types::NO_TIMESTAMP,
            max_timestamp: keel_types::NO_TIMESTAMP,
        }
    }

    pub fn producer(mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) -> Self {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
        self
    }

    pub fn partition_leader_epoch(mut self, epoch: i32) -> Self {
        self.partition_leader_epoch = epoch;
        self
    }

    pub fn control(mut self, control: bool) -> Self {
        self.control = control;
        self
    }

    pub fn transactional(mut self, transactional: bool) -> Self {
        self.transactional = transactional;
        self
    }

    pub fn log_append_time(mut self, log_append_time: bool) -> Self {
        self.log_append_time = log_append_time;
        self
    }

    pub fn compression(mut self, compression: Compression) -> Self {
        assert!(
            !matches!(compression, Compression::Unknown(_)),
            "cannot build a batch with an unknown codec"
        );
        self.compression = compression;
        self
    }

    /// KIP-534: marks the batch with the time after which the cleaner may
    /// remove its tombstones. The horizon takes the place of the base
    /// timestamp, and record timestamps are stored relative to it.
    /// Call before pushing records.
    pub fn delete_horizon_ms(mut self, horizon_ms: i64) -> Self {
        assert_eq!(self.count, 0, "the delete horizon is the base timestamp");
        self.delete_horizon_ms = Some(horizon_ms);
        self.base_timestamp = horizon_ms;
        self
    }

    /// Makes the batch end at `base_offset + delta` whatever records it
    /// holds, as a cleaned batch must to keep its producer's sequence range.
    pub fn last_offset_delta(mut self, delta: i32) -> Self {
        self.last_offset_delta = Some(delta);
        self
    }

    pub fn record_count(&self) -> i32 {
        self.count
    }

    /// Adds one record at the next offset. The first record's timestamp
    /// becomes the batch's base unless a delete horizon was set.
    pub fn push(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, &[u8])],
        timestamp: i64,
    ) -> &mut Self {
        let delta = self.previous_delta + 1;
        self.push_at(
            delta,
            timestamp,
            key,
            value,
            headers.iter().map(|&(k, v)| (k, Some(v))),
        )
    }

    /// Adds one record at `base_offset + offset_delta`; deltas must increase
    /// but may skip, as they do in a cleaned batch. Header values may be null.
    pub fn push_at<'h>(
        &mut self,
        offset_delta: i32,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: impl ExactSizeIterator<Item = (&'h str, Option<&'h [u8]>)>,
    ) -> &mut Self {
        assert!(
            offset_delta > self.previous_delta,
            "offset delta {offset_delta} after {}",
            self.previous_delta
        );
        if self.count == 0 && self.delete_horizon_ms.is_none() {
            self.base_timestamp = timestamp;
        }
        self.max_timestamp = self.max_timestamp.max(timestamp);
        let mut body =
            Vec::with_capacity(16 + key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len));
        body.push(0);
        write_varlong(&mut body, timestamp.wrapping_sub(self.base_timestamp));
        write_varint(&mut body, offset_delta);
        let put = |body: &mut Vec<u8>, bytes: Option<&[u8]>| match bytes {
            None => write_varint(body, -1),
            Some(b) => {
                write_varint(body, i32::try_from(b.len()).expect("field fits i32"));
                body.extend_from_slice(b);
            }
        };
        put(&mut body, key);
        put(&mut body, value);
        write_varint(
            &mut body,
            i32::try_from(headers.len()).expect("header count fits i32"),
        );
        for (k, v) in headers {
            put(&mut body, Some(k.as_bytes()));
            put(&mut body, v);
        }
        write_varint(
            &mut self.records,
            i32::try_from(body.len()).expect("record fits i32"),
        );
        self.records.extend_from_slice(&body);
        self.count += 1;
        self.previous_delta = offset_delta;
        self
    }

    /// Serialises the batch with a valid CRC. Compressing into memory cannot
    /// fail short of a codec bug, so that is a panic, not an error.
    pub fn build(&self) -> Vec<u8> {
        assert!(self.count > 0, "a batch needs at least one record");
        let last_offset_delta = self.last_offset_delta.unwrap_or(self.previous_delta);
        assert!(
            last_offset_delta >= self.previous_delta,
            "lastOffsetDelta {last_offset_delta} below the last record's {}",
            self.previous_delta
        );
        let records = crate::codec::compress(self.compression, &self.records)
            .expect("compressing records into memory");
        let mut out = Vec::with_capacity(RECORD_BATCH_HEADER_BYTES + records.len());
        let mut attributes = self.compression.attribute_bits();
        if self.log_append_time {
            attributes |= ATTR_TIMESTAMP_TYPE;
        }
        if self.transactional {
            attributes |= ATTR_TRANSACTIONAL;
        }
        if self.control {
            attributes |= ATTR_CONTROL;
        }
        if self.delete_horizon_ms.is_some() {
            attributes |= ATTR_DELETE_HORIZON;
        }
        write_header(
            &mut out,
            &RecordBatchHeader {
                base_offset: self.base_offset,
                batch_length: 0,
                partition_leader_epoch: self.partition_leader_epoch,
                magic: 2,
                crc: 0,
                attributes,
                last_offset_delta,
                base_timestamp: self.base_timestamp,
                max_timestamp: self.max_timestamp,
                producer_id: self.producer_id,
                producer_epoch: self.producer_epoch,
                base_sequence: self.base_sequence,
                record_count: self.count,
            },
        );
        out.extend_from_slice(&records);
        seal(&mut out);
        out
    }
}

/// Writes the 61 header bytes; `seal` fills in the length and CRC.
fn write_header(out: &mut Vec<u8>, h: &RecordBatchHeader) {
    out.extend_from_slice(&h.base_offset.to_be_bytes());
    out.extend_from_slice(&h.batch_length.to_be_bytes());
    out.extend_from_slice(&h.partition_leader_epoch.to_be_bytes());
    out.push(h.magic as u8);
    out.extend_from_slice(&h.crc.to_be_bytes());
    out.extend_from_slice(&h.attributes.to_be_bytes());
    out.extend_from_slice(&h.last_offset_delta.to_be_bytes());
    out.extend_from_slice(&h.base_timestamp.to_be_bytes());
    out.extend_from_slice(&h.max_timestamp.to_be_bytes());
    out.extend_from_slice(&h.producer_id.to_be_bytes());
    out.extend_from_slice(&h.producer_epoch.to_be_bytes());
    out.extend_from_slice(&h.base_sequence.to_be_bytes());
    out.extend_from_slice(&h.record_count.to_be_bytes());
    debug_assert_eq!(out.len(), RECORD_BATCH_HEADER_BYTES);
}

/// Sets `batchLength` from the buffer's length, then the CRC over the rest.
fn seal(batch: &mut [u8]) {
    let batch_length = i32::try_from(batch.len() - LOG_OVERHEAD_BYTES).expect("batch fits i32");
    batch[field::BATCH_LENGTH..field::BATCH_LENGTH + 4]
        .copy_from_slice(&batch_length.to_be_bytes());
    let crc = compute_crc(batch);
    batch[field::CRC..field::CRC + 4].copy_from_slice(&crc.to_be_bytes());
}

/// A batch with the same offsets, producer fields and flags as `header` but
/// no records: what Kafka's cleaner keeps when it removes every record of a
/// producer's last batch, so that the producer's sequence and epoch survive.
pub(crate) fn empty_batch_like(header: &RecordBatchHeader) -> Vec<u8> {
    let attributes = header.attributes & (ATTR_TIMESTAMP_TYPE | ATTR_TRANSACTIONAL | ATTR_CONTROL);
    let mut out = Vec::with_capacity(RECORD_BATCH_HEADER_BYTES);
    write_header(
        &mut out,
        &RecordBatchHeader {
            attributes,
            base_timestamp: header.max_timestamp,
            record_count: 0,
            ..*header
        },
    );
    seal(&mut out);
    out
}

// ---------------------------------------------------------------------------
// Transaction markers.

/// The type of a transaction marker, from its control record's key
/// (version i16 = 0, type i16).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlRecordType {
    Abort,
    Commit,
}

impl ControlRecordType {
    /// The control key's version Kafka writes, and the marker value's.
    const VERSION: i16 = 0;

    fn type_id(self) -> i16 {
        match self {
            ControlRecordType::Abort => 0,
            ControlRecordType::Commit => 1,
        }
    }

    /// Kafka's `ControlRecordType.parse`. `None` for keys that are not a
    /// marker's: KRaft's control records, types newer than this broker, or
    /// keys too short to hold a type. Like Kafka, a key version above ours
    /// is read as far as we understand it.
    pub fn parse(key: &[u8]) -> Option<ControlRecordType> {
        let (version, type_id) = (key.get(0..2)?, key.get(2..4)?);
        if be_i16(version, 0) < 0 {
            return None;
        }
        match be_i16(type_id, 0) {
            0 => Some(ControlRecordType::Abort),
            1 => Some(ControlRecordType::Commit),
            _ => None,
        }
    }
}

/// What a transaction marker's control record holds (Kafka's
/// `EndTransactionMarker`): its type, from the key, and the coordinator
/// epoch of the coordinator that wrote it, from the value (version i16,
/// coordinator epoch i32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndTxnMarker {
    pub control_type: ControlRecordType,
    pub coordinator_epoch: i32,
}

impl EndTxnMarker {
    /// Kafka's `EndTransactionMarker.deserializeValue`: a value too short
    /// or of a negative version is invalid; a version above ours is read
    /// as far as we understand it.
    fn parse_value(control_type: ControlRecordType, value: Option<&[u8]>) -> Result<EndTxnMarker> {
        let value = value.unwrap_or_default();
        if value.len() < 6 {
            return Err(StorageError::InvalidRecord(format!(
                "transaction marker value of {} bytes, expected 6",
                value.len()
            )));
        }
        let version = be_i16(value, 0);
        if version < 0 {
            return Err(StorageError::InvalidRecord(format!(
                "transaction marker value version {version}"
            )));
        }
        Ok(EndTxnMarker {
            control_type,
            coordinator_epoch: be_i32(value, 2),
        })
    }
}

/// Kafka's `MemoryRecords.withEndTransactionMarker`: one control record
/// (key: version, type; value: version, coordinator epoch) in a
/// transactional control batch carrying the producer's id and epoch and no
/// sequence. Offsets and the leader epoch are the appender's to assign.
pub fn end_txn_marker(
    marker: ControlRecordType,
    producer_id: i64,
    producer_epoch: i16,
    coordinator_epoch: i32,
    timestamp: i64,
) -> Vec<u8> {
    let mut key = Vec::with_capacity(4);
    key.extend_from_slice(&ControlRecordType::VERSION.to_be_bytes());
    key.extend_from_slice(&marker.type_id().to_be_bytes());
    let mut value = Vec::with_capacity(6);
    value.extend_from_slice(&ControlRecordType::VERSION.to_be_bytes());
    value.extend_from_slice(&coordinator_epoch.to_be_bytes());
    let mut builder = BatchBuilder::new(0)
        .producer(producer_id, producer_epoch, keel_types::NO_SEQUENCE)
        .transactional(true)
        .control(true);
    builder.push(Some(&key), Some(&value), &[], timestamp);
    builder.build()
}

/// The transaction marker a batch holds: `None` for data batches, for
/// control batches without a producer (KRaft's, which are not read), for
/// control records that are not markers (see [`ControlRecordType::parse`])
/// and for control batches a cleaner left empty. A marker whose value does
/// not hold a coordinator epoch is invalid. `batch` must hold exactly one
/// batch.
pub fn end_txn_marker_of(batch: &[u8]) -> Result<Option<EndTxnMarker>> {
    let header = RecordBatchHeader::parse(batch)?;
    if !header.is_control() || header.producer_id < 0 {
        return Ok(None);
    }
    let decoded = BatchRecords::decode(batch, crate::codec::RECORDS_UNCOMPRESSED_BYTES_MAX)?;
    let Some(record) = decoded.iter().next().transpose()? else {
        return Ok(None);
    };
    let Some(control_type) = record.key.and_then(ControlRecordType::parse) else {
        return Ok(None);
    };
    EndTxnMarker::parse_value(control_type, record.value).map(Some)
}

/// The type of the transaction marker a batch holds, as
/// [`end_txn_marker_of`] reads it.
pub fn control_record_type(batch: &[u8]) -> Result<Option<ControlRecordType>> {
    Ok(end_txn_marker_of(batch)?.map(|marker| marker.control_type))
}

// ---------------------------------------------------------------------------
// Offset assignment, used by the leader's append.

/// The header the leader stores a client batch under: the batch's own with
/// `base_offset` and `leader_epoch` assigned and, under LogAppendTime, the
/// append time stamped. Only the header is copied; the records after it go
/// to disk as the client sent them.
pub(crate) fn assigned_header(
    batch: &[u8],
    base_offset: i64,
    leader_epoch: i32,
    log_append_time_ms: Option<i64>,
) -> [u8; RECORD_BATCH_HEADER_BYTES] {
    let (header, records) = batch.split_at(RECORD_BATCH_HEADER_BYTES);
    let mut header: [u8; RECORD_BATCH_HEADER_BYTES] =
        header.try_into().expect("split at the header's size");
    set_base_offset(&mut header, base_offset);
    set_partition_leader_epoch(&mut header, leader_epoch);
    if let Some(now_ms) = log_append_time_ms {
        set_log_append_time(&mut header, records, now_ms);
    }
    header
}

pub(crate) fn set_base_offset(batch: &mut [u8], offset: i64) {
    batch[field::BASE_OFFSET..field::BASE_OFFSET + 8].copy_from_slice(&offset.to_be_bytes());
}

fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) {
    batch[field::PARTITION_LEADER_EPOCH..field::PARTITION_LEADER_EPOCH + 4]
        .copy_from_slice(&epoch.to_be_bytes());
}

/// Marks the batch whose header is `header` and whose records are `records`
/// LogAppendTime with `now_ms` as its max timestamp, and re-seals the CRC,
/// since both fields lie inside the CRC's span.
fn set_log_append_time(header: &mut [u8], records: &[u8], now_ms: i64) {
    let attributes = be_i16(header, field::ATTRIBUTES) | ATTR_TIMESTAMP_TYPE;
    header[field::ATTRIBUTES..field::ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
    header[field::MAX_TIMESTAMP..field::MAX_TIMESTAMP + 8].copy_from_slice(&now_ms.to_be_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&header[field::ATTRIBUTES..]), records);
    header[field::CRC..field::CRC + 4].copy_from_slice(&crc.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut b = BatchBuilder::new(0).producer(7, 1, 3);
        b.push(Some(b"k1"), Some(b"v1"), &[("h", b"x")], 1000);
        b.push(None, Some(b"v2"), &[], 1005);
        b.push(Some(b"k3"), None, &[], 990);
        b.build()
    }

    #[test]
    fn builds_and_validates() {
        let batch = sample();
        let h = validate_batch(&batch).unwrap();
        assert_eq!(h.record_count(), 3);
        assert_eq!(h.last_offset_delta(), 2);
        assert_eq!(h.max_timestamp(), 1005);
        assert_eq!(h.base_timestamp(), 1000);
        assert_eq!(h.producer_id(), 7);
        assert_eq!(h.last_sequence(), 5);
        let records: Vec<_> = iter_records(&batch).unwrap().map(Result::unwrap).collect();
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].key, Some(&b"k1"[..]));
        assert_eq!(records[0].headers, vec![("h", Some(&b"x"[..]))]);
        assert_eq!(records[1].key, None);
        assert_eq!(records[2].value, None);
        assert_eq!(records[2].timestamp, 990);
        assert_eq!(records[2].offset, 2);
    }

    #[test]
    fn sequence_wraps() {
        assert_eq!(increment_sequence(i32::MAX, 1), 0);
        assert_eq!(increment_sequence(i32::MAX - 1, 3), 1);
        assert_eq!(increment_sequence(5, 2), 7);
    }

    #[test]
    fn rejects_bad_crc_magic_and_counts() {
        let mut batch = sample();
        let last = batch.len() - 1;
        batch[last] ^= 1;
        assert!(matches!(
            validate_batch(&batch),
            Err(StorageError::CorruptMessage(_))
        ));

        let mut batch = sample();
        batch[field::MAGIC] = 1;
        assert!(matches!(
            validate_batch(&batch),
            Err(StorageError::UnsupportedMagic(1))
        ));

        let mut batch = sample();
        batch[field::RECORD_COUNT + 3] = 2;
        let crc = compute_crc(&batch);
        batch[field::CRC..field::CRC + 4].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            validate_batch(&batch),
            Err(StorageError::InvalidRecord(_))
        ));
    }

    #[test]
    fn rejects_bad_record_structure() {
        // Offset delta of the second record changed from 1 to 5.
        let mut b = BatchBuilder::new(0);
        b.push(None, Some(b"a"), &[], 1);
        b.push(None, Some(b"b"), &[], 1);
        let mut batch = b.build();
        // Record 2 starts after record 1: len varint(1 byte) + body.
        let first_len = {
            let mut p = field::RECORDS;
            let l = read_varint(&batch, &mut p).unwrap() as usize;
            p + l
        };
        // body: len(1) attr(1) tsdelta(1) offsetdelta(1)
        batch[first_len + 3] = 10; // zigzag 5
        let crc = compute_crc(&batch);
        batch[field::CRC..field::CRC + 4].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            validate_batch(&batch),
            Err(StorageError::InvalidRecord(_))
        ));
    }

    #[test]
    fn garbage_never_panics() {
        let batch = sample();
        for cut in 0..batch.len() {
            let _ = validate_batch(&batch[..cut]);
            let mut corrupt = batch.clone();
            corrupt[cut] = 0xff;
            let crc = compute_crc(&corrupt);
            corrupt[field::CRC..field::CRC + 4].copy_from_slice(&crc.to_be_bytes());
            let _ = validate_batch(&corrupt);
            let _ = BatchIter::strict(&corrupt).count();
        }
    }

    #[test]
    fn batch_iter_lenient_and_strict() {
        let a = sample();
        let mut buf = a.clone();
        buf.extend_from_slice(&a);
        buf.extend_from_slice(&a[..a.len() - 4]);
        let lenient: Vec<_> = BatchIter::new(&buf).collect::<Result<_>>().unwrap();
        assert_eq!(lenient.len(), 2);
        assert_eq!(lenient[1].1, a.len()..2 * a.len());
        let strict: Result<Vec<_>> = BatchIter::strict(&buf).collect();
        assert!(strict.is_err());
    }

    #[test]
    fn log_append_time_keeps_crc_valid() {
        let client = sample();
        let header = assigned_header(&client, 42, 3, Some(123_456));
        let batch = [&header[..], &client[RECORD_BATCH_HEADER_BYTES..]].concat();
        let h = validate_batch(&batch).unwrap();
        assert_eq!(h.base_offset(), 42);
        assert_eq!(h.partition_leader_epoch(), 3);
        assert_eq!(h.max_timestamp(), 123_456);
        assert_eq!(h.timestamp_type(), crate::TimestampType::LogAppendTime);
        assert!(iter_records(&batch)
            .unwrap()
            .all(|r| r.unwrap().timestamp == 123_456));
    }

    #[test]
    fn builds_cleaned_style_batches_with_any_codec() {
        for codec in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let mut b = BatchBuilder::new(100)
                .producer(7, 2, 40)
                .compression(codec)
                .delete_horizon_ms(5_000)
                .last_offset_delta(9);
            b.push_at(1, 1_000, Some(b"a"), None, std::iter::empty());
            b.push_at(6, 1_007, Some(b"b"), Some(b"v"), [("h", None)].into_iter());
            let batch = b.build();
            let h = RecordBatchHeader::parse(&batch).unwrap();
            assert_eq!(compute_crc(&batch), h.crc());
            assert_eq!(h.compression(), codec);
            assert_eq!(
                (h.base_offset(), h.last_offset(), h.record_count()),
                (100, 109, 2)
            );
            assert_eq!((h.base_sequence(), h.last_sequence()), (40, 49));
            assert_eq!(h.delete_horizon_ms(), Some(5_000));
            assert_eq!(h.max_timestamp(), 1_007);
            let decoded = BatchRecords::decode(&batch, 1 << 20).unwrap();
            let records = decoded.records().unwrap();
            let got: Vec<(i64, i64, Option<&[u8]>)> = records
                .iter()
                .map(|r| (r.offset, r.timestamp, r.value))
                .collect();
            assert_eq!(got, vec![(101, 1_000, None), (106, 1_007, Some(&b"v"[..]))]);
            assert_eq!(records[1].headers, vec![("h", None)]);
            // Gaps are fine in stored batches, never in client batches.
            if codec == Compression::None {
                assert_eq!(iter_records(&batch).unwrap().count(), 2);
                assert!(matches!(
                    validate_batch(&batch),
                    Err(StorageError::InvalidRecord(_))
                ));
            } else {
                assert!(iter_records(&batch).is_err());
            }
        }
    }

    #[test]
    fn stored_offset_deltas_must_increase_within_the_batch() {
        let mut b = BatchBuilder::new(0).last_offset_delta(3);
        b.push_at(2, 1, Some(b"k"), Some(b"v"), std::iter::empty());
        b.push_at(3, 1, Some(b"k"), Some(b"v"), std::iter::empty());
        let mut batch = b.build();
        // Claim lastOffsetDelta 2: the second record is now past the end.
        batch[field::LAST_OFFSET_DELTA + 3] = 2;
        let crc = compute_crc(&batch);
        batch[field::CRC..field::CRC + 4].copy_from_slice(&crc.to_be_bytes());
        let decoded = BatchRecords::decode(&batch, 1 << 20).unwrap();
        assert!(matches!(
            decoded.records(),
            Err(StorageError::InvalidRecord(_))
        ));
    }

    #[test]
    fn empty_batch_keeps_offsets_and_producer_fields() {
        let mut b = BatchBuilder::new(50)
            .producer(7, 1, 10)
            .transactional(true)
            .compression(Compression::Lz4)
            .delete_horizon_ms(9);
        b.push(Some(b"k"), None, &[], 1_234);
        b.push(Some(b"k"), None, &[], 1_240);
        let full = RecordBatchHeader::parse(&b.build()).unwrap();
        let empty = empty_batch_like(&full);
        let h = RecordBatchHeader::parse(&empty).unwrap();
        assert_eq!(compute_crc(&empty), h.crc());
        assert_eq!(h.total_size(), empty.len() as u64);
        assert_eq!(
            (h.base_offset(), h.next_offset(), h.record_count()),
            (50, 52, 0)
        );
        assert_eq!((h.producer_id(), h.producer_epoch()), (7, 1));
        assert_eq!((h.base_sequence(), h.last_sequence()), (10, 11));
        assert!(h.is_transactional());
        assert_eq!(h.compression(), Compression::None);
        assert_eq!(h.delete_horizon_ms(), None);
        assert_eq!((h.base_timestamp(), h.max_timestamp()), (1_240, 1_240));
        assert!(BatchRecords::decode(&empty, 0)
            .unwrap()
            .records()
            .unwrap()
            .is_empty());
    }

    #[test]
    fn transaction_markers_are_kafkas() {
        let batch = end_txn_marker(ControlRecordType::Commit, 42, 7, 11, 1_234);
        let h = validate_batch(&batch).unwrap();
        assert!(h.is_control() && h.is_transactional());
        assert_eq!(
            (h.producer_id(), h.producer_epoch(), h.base_sequence()),
            (42, 7, -1)
        );
        assert_eq!((h.record_count(), h.max_timestamp()), (1, 1_234));
        let records: Vec<_> = iter_records(&batch).unwrap().map(Result::unwrap).collect();
        assert_eq!(records[0].key, Some(&[0, 0, 0, 1][..]));
        assert_eq!(records[0].value, Some(&[0, 0, 0, 0, 0, 11][..]));
        assert_eq!(
            control_record_type(&batch).unwrap(),
            Some(ControlRecordType::Commit)
        );
        let abort = end_txn_marker(ControlRecordType::Abort, 42, 7, 11, 1_234);
        assert_eq!(
            control_record_type(&abort).unwrap(),
            Some(ControlRecordType::Abort)
        );

        // The value carries the coordinator epoch.
        assert_eq!(
            end_txn_marker_of(&abort).unwrap(),
            Some(EndTxnMarker {
                control_type: ControlRecordType::Abort,
                coordinator_epoch: 11
            })
        );
        let marker_with_value = |value: &[u8]| {
            let mut b = BatchBuilder::new(0)
                .producer(42, 7, -1)
                .transactional(true)
                .control(true);
            b.push(Some(&[0, 0, 0, 1]), Some(value), &[], 1);
            end_txn_marker_of(&b.build())
        };
        // A newer value version is read as far as it is understood...
        assert_eq!(
            marker_with_value(&[0, 1, 0, 0, 0, 9, 0xff]).unwrap(),
            Some(EndTxnMarker {
                control_type: ControlRecordType::Commit,
                coordinator_epoch: 9
            })
        );
        // ...but a value without an epoch or of a negative version is invalid.
        for bad in [&[0u8, 0, 0, 0, 9][..], &[0xff, 0xff, 0, 0, 0, 9]] {
            assert!(matches!(
                marker_with_value(bad),
                Err(StorageError::InvalidRecord(_))
            ));
        }

        // Data batches, KRaft's control records (no producer) and keys
        // this broker cannot read hold no marker.
        assert_eq!(control_record_type(&sample()).unwrap(), None);
        let mut kraft = BatchBuilder::new(0).control(true);
        kraft.push(Some(&[0, 0, 0, 2]), Some(b"leader change"), &[], 1);
        assert_eq!(control_record_type(&kraft.build()).unwrap(), None);
        assert_eq!(ControlRecordType::parse(&[0, 0, 0, 2]), None);
        assert_eq!(ControlRecordType::parse(&[0, 0, 0]), None);
        assert_eq!(ControlRecordType::parse(&[0xff, 0xff, 0, 0]), None);
        // A newer key version is read as far as it is understood.
        assert_eq!(
            ControlRecordType::parse(&[0, 1, 0, 0, 9]),
            Some(ControlRecordType::Abort)
        );
    }

    #[test]
    fn varint_round_trip() {
        for v in [
            0i64,
            1,
            -1,
            63,
            -64,
            64,
            i64::from(i32::MAX),
            i64::from(i32::MIN),
            i64::MAX,
            i64::MIN,
        ] {
            let mut out = Vec::new();
            write_varlong(&mut out, v);
            let mut p = 0;
            assert_eq!(read_varlong(&out, &mut p).unwrap(), v);
            assert_eq!(p, out.len());
        }
    }
}
