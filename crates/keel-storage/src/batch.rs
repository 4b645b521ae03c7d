//! RecordBatch v2: header parsing, validation without decompression, a builder
//! for uncompressed batches, and splitting a buffer into batches.

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
            let mut records = RecordIter::new(&header, batch);
            for record in &mut records {
                record?;
            }
            records.finish()?;
        }
        _ => {}
    }
    Ok(header)
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
// Records of uncompressed batches.

/// One record of an uncompressed batch, borrowed from the batch bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: Vec<(&'a str, Option<&'a [u8]>)>,
}

/// Walks the records of an uncompressed batch, checking that each fits its
/// length prefix exactly and that offset deltas run 0..n-1.
pub struct RecordIter<'a> {
    batch: &'a [u8],
    pos: usize,
    index: i32,
    count: i32,
    base_offset: i64,
    base_timestamp: i64,
    log_append_time: Option<i64>,
    failed: bool,
}

impl<'a> RecordIter<'a> {
    fn new(header: &RecordBatchHeader, batch: &'a [u8]) -> RecordIter<'a> {
        RecordIter {
            batch,
            pos: field::RECORDS,
            index: 0,
            count: header.record_count.max(0),
            base_offset: header.base_offset,
            base_timestamp: header.base_timestamp,
            log_append_time: (header.timestamp_type() == crate::TimestampType::LogAppendTime)
                .then_some(header.max_timestamp),
            failed: false,
        }
    }

    /// After the last record: the records must fill the batch exactly.
    fn finish(&self) -> Result<()> {
        if self.pos != self.batch.len() {
            return Err(StorageError::InvalidRecord(format!(
                "{} bytes after the last record",
                self.batch.len() - self.pos
            )));
        }
        Ok(())
    }

    fn bytes(&self, pos: &mut usize, end: usize, what: &str) -> Result<Option<&'a [u8]>> {
        let len = read_varint(&self.batch[..end], pos)?;
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
        let out = &self.batch[*pos..*pos + len];
        *pos += len;
        Ok(Some(out))
    }

    fn parse_one(&mut self) -> Result<RecordView<'a>> {
        let mut pos = self.pos;
        let len = read_varint(self.batch, &mut pos)?;
        if len < 0 || (len as usize) > self.batch.len() - pos {
            return Err(invalid("record length runs past the batch"));
        }
        let end = pos + len as usize;
        let body = &self.batch[..end];
        if pos >= end {
            return Err(invalid("empty record"));
        }
        pos += 1; // attributes: unused in v2
        let timestamp_delta = read_varlong(body, &mut pos)?;
        let offset_delta = read_varint(body, &mut pos)?;
        if offset_delta != self.index {
            return Err(StorageError::InvalidRecord(format!(
                "record {} has offset delta {offset_delta}",
                self.index
            )));
        }
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

/// Iterates the records of one uncompressed batch. Compressed batches are an
/// error: the storage layer never decompresses.
pub fn iter_records(batch: &[u8]) -> Result<RecordIter<'_>> {
    let header = RecordBatchHeader::parse(batch)?;
    check_framing(&header)?;
    if header.total_size() != batch.len() as u64 {
        return Err(StorageError::CorruptMessage(
            "batchLength disagrees with the slice".into(),
        ));
    }
    if header.compression() != Compression::None {
        return Err(StorageError::InvalidRecord(format!(
            "cannot iterate a {:?} batch without decompressing",
            header.compression()
        )));
    }
    Ok(RecordIter::new(&header, batch))
}

// ---------------------------------------------------------------------------
// Building batches.

/// Builds an uncompressed RecordBatch v2.
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
    records: Vec<u8>,
    count: i32,
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
            records: Vec::new(),
            count: 0,
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

    pub fn record_count(&self) -> i32 {
        self.count
    }

    /// Adds one record. The first record's timestamp becomes the batch's base.
    pub fn push(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, &[u8])],
        timestamp: i64,
    ) -> &mut Self {
        if self.count == 0 {
            self.base_timestamp = timestamp;
        }
        self.max_timestamp = self.max_timestamp.max(timestamp);
        let mut body =
            Vec::with_capacity(16 + key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len));
        body.push(0);
        write_varlong(&mut body, timestamp - self.base_timestamp);
        write_varint(&mut body, self.count);
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
            put(&mut body, Some(v));
        }
        write_varint(
            &mut self.records,
            i32::try_from(body.len()).expect("record fits i32"),
        );
        self.records.extend_from_slice(&body);
        self.count += 1;
        self
    }

    /// Serialises the batch with a valid CRC.
    pub fn build(&self) -> Vec<u8> {
        assert!(self.count > 0, "a batch needs at least one record");
        let total = RECORD_BATCH_HEADER_BYTES + self.records.len();
        let mut out = Vec::with_capacity(total);
        let mut attributes: i16 = 0;
        if self.log_append_time {
            attributes |= ATTR_TIMESTAMP_TYPE;
        }
        if self.transactional {
            attributes |= ATTR_TRANSACTIONAL;
        }
        if self.control {
            attributes |= ATTR_CONTROL;
        }
        out.extend_from_slice(&self.base_offset.to_be_bytes());
        let batch_length = i32::try_from(total - LOG_OVERHEAD_BYTES).expect("batch fits i32");
        out.extend_from_slice(&batch_length.to_be_bytes());
        out.extend_from_slice(&self.partition_leader_epoch.to_be_bytes());
        out.push(2);
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&attributes.to_be_bytes());
        out.extend_from_slice(&(self.count - 1).to_be_bytes());
        out.extend_from_slice(&self.base_timestamp.to_be_bytes());
        out.extend_from_slice(&self.max_timestamp.to_be_bytes());
        out.extend_from_slice(&self.producer_id.to_be_bytes());
        out.extend_from_slice(&self.producer_epoch.to_be_bytes());
        out.extend_from_slice(&self.base_sequence.to_be_bytes());
        out.extend_from_slice(&self.count.to_be_bytes());
        debug_assert_eq!(out.len(), RECORD_BATCH_HEADER_BYTES);
        out.extend_from_slice(&self.records);
        let crc = compute_crc(&out);
        out[field::CRC..field::CRC + 4].copy_from_slice(&crc.to_be_bytes());
        out
    }
}

// ---------------------------------------------------------------------------
// In-place patching, used by the append path.

pub(crate) fn set_base_offset(batch: &mut [u8], offset: i64) {
    batch[field::BASE_OFFSET..field::BASE_OFFSET + 8].copy_from_slice(&offset.to_be_bytes());
}

pub(crate) fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) {
    batch[field::PARTITION_LEADER_EPOCH..field::PARTITION_LEADER_EPOCH + 4]
        .copy_from_slice(&epoch.to_be_bytes());
}

/// Marks the batch LogAppendTime with `now_ms` as its max timestamp and
/// re-seals the CRC, since both fields lie inside the CRC's span.
pub(crate) fn set_log_append_time(batch: &mut [u8], now_ms: i64) {
    let attributes = be_i16(batch, field::ATTRIBUTES) | ATTR_TIMESTAMP_TYPE;
    batch[field::ATTRIBUTES..field::ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
    batch[field::MAX_TIMESTAMP..field::MAX_TIMESTAMP + 8].copy_from_slice(&now_ms.to_be_bytes());
    let crc = compute_crc(batch);
    batch[field::CRC..field::CRC + 4].copy_from_slice(&crc.to_be_bytes());
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
        let mut batch = sample();
        set_base_offset(&mut batch, 42);
        set_partition_leader_epoch(&mut batch, 3);
        set_log_append_time(&mut batch, 123_456);
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
