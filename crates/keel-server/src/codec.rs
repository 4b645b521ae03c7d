//! Kafka framing: a 4-byte big-endian size, then a request header and body.

use std::collections::VecDeque;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::buf::UninitSlice;
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::buf::ByteBufMut;
use kafka_protocol::protocol::{Decodable, Encodable};
use tokio::io::{AsyncRead, AsyncReadExt};

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("request of {size} bytes exceeds socket.request.max.bytes={max}")]
    TooLarge { size: i64, max: u32 },
    #[error("request size {0} is negative or too small for a header")]
    BadSize(i32),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The smallest valid request: api key, version, correlation id.
const REQUEST_HEADER_BYTES_MIN: i32 = 8;

/// Reads one frame. The declared size is checked against the limit before
/// anything is allocated, so a client cannot make us reserve memory by lying.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    request_bytes_max: u32,
) -> Result<Bytes, FrameError> {
    let size = match reader.read_i32().await {
        Ok(size) => size,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    };
    if size < REQUEST_HEADER_BYTES_MIN {
        return Err(FrameError::BadSize(size));
    }
    if size as u32 > request_bytes_max {
        return Err(FrameError::TooLarge {
            size: size as i64,
            max: request_bytes_max,
        });
    }
    Ok(Bytes::from(read_exactly(reader, size as usize).await?))
}

/// Reads exactly `len` bytes without zeroing a buffer first: a frame can be
/// a megabyte, and zeroing it cost as much as a copy on the produce and
/// replication paths.
pub async fn read_exactly<R: AsyncRead + Unpin>(
    reader: &mut R,
    len: usize,
) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(len);
    (&mut *reader)
        .take(len as u64)
        .read_to_end(&mut buf)
        .await?;
    if buf.len() < len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(buf)
}

/// What the first bytes of a frame say, before the rest is trusted.
pub struct RawHeader {
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
}

pub fn peek_header(frame: &Bytes) -> RawHeader {
    debug_assert!(frame.len() >= REQUEST_HEADER_BYTES_MIN as usize);
    RawHeader {
        api_key: i16::from_be_bytes([frame[0], frame[1]]),
        api_version: i16::from_be_bytes([frame[2], frame[3]]),
        correlation_id: i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]),
    }
}

/// Decodes the request header of a frame whose api key and version we support.
/// `kafka-protocol` reports decode failures as `anyhow::Error`; we keep only
/// the message so `anyhow` stays at the process edge.
pub fn decode_header(api_key: ApiKey, frame: &mut Bytes) -> Result<RequestHeader, String> {
    let raw = peek_header(frame);
    let header_version = api_key.request_header_version(raw.api_version);
    RequestHeader::decode(frame, header_version).map_err(|e| e.to_string())
}

/// An encoded response frame, size prefix included, in pieces: fetched
/// records are spliced in rather than copied into one buffer (a Fetch
/// answer is mostly records, and that copy was a tenth of a replicating
/// broker's CPU): from the buffers they were read into, or as regions of
/// segment files that go to the socket with sendfile, never read by us.
#[derive(Debug)]
pub struct ResponseFrame(Vec<Piece>);

#[derive(Debug)]
pub enum Piece {
    Bytes(Bytes),
    File(FileRegion),
}

/// Bytes of a segment file, sent as they are when the answer leaves.
#[derive(Clone, Debug)]
pub struct FileRegion {
    pub file: Arc<File>,
    pub position: u64,
    pub len: usize,
}

impl FileRegion {
    /// The records field `kafka-protocol` encodes for this region: as many
    /// bytes of a zeroed static, which `FrameBuf` recognises by address and
    /// replaces with the region. Nothing reads them, so they stay unmapped
    /// zero pages. `None` for a region larger than the static.
    pub fn stand_in(&self) -> Option<Bytes> {
        (self.len <= FILE_REGION_BYTES_MAX)
            .then(|| Bytes::from_static(&FILE_REGION_STAND_IN[..self.len]))
    }

    /// Reads the region, for the rare encoder that writes back into what it
    /// wrote (see [`FrameBuf::flatten`]).
    fn read(&self) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0; self.len];
        self.file.read_exact_at(&mut buf, self.position)?;
        Ok(buf)
    }
}

/// Larger record sets (beyond `fetch.max.bytes`' default) are read instead.
const FILE_REGION_BYTES_MAX: usize = 64 << 20;
static FILE_REGION_STAND_IN: [u8; FILE_REGION_BYTES_MAX] = [0; FILE_REGION_BYTES_MAX];

fn is_stand_in(src: &[u8]) -> bool {
    FILE_REGION_STAND_IN.as_ptr_range().contains(&src.as_ptr())
}

impl ResponseFrame {
    pub fn pieces(&self) -> &[Piece] {
        &self.0
    }

    /// The frame as one buffer, for tests that parse it.
    #[cfg(test)]
    fn contiguous(&self) -> Bytes {
        let mut whole = Vec::new();
        for piece in &self.0 {
            match piece {
                Piece::Bytes(bytes) => whole.extend_from_slice(bytes),
                Piece::File(region) => whole.extend(region.read().unwrap()),
            }
        }
        whole.into()
    }
}

/// Encodes a response with its header and size prefix. A Fetch answer's
/// `file_regions` are the regions whose stand-ins its records hold, in the
/// order they appear in it.
pub fn encode_response(
    api_key: ApiKey,
    api_version: i16,
    correlation_id: i32,
    response: &ResponseKind,
    file_regions: Vec<FileRegion>,
) -> Result<ResponseFrame, String> {
    let spliceable = match response {
        ResponseKind::Fetch(fetch) => fetch
            .responses
            .iter()
            .flat_map(|topic| &topic.partitions)
            .filter_map(|partition| partition.records.clone())
            .filter(|records| records.len() >= SPLICE_BYTES_MIN && !is_stand_in(records))
            .collect(),
        _ => Vec::new(),
    };
    let mut buf = FrameBuf {
        pieces: Vec::new(),
        spliced_bytes: 0,
        tail: BytesMut::with_capacity(256),
        spliceable,
        file_regions: file_regions.into(),
        broken: None,
    };
    buf.put_i32(0); // size, patched below
    let header_version = api_key.response_header_version(api_version);
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut buf, header_version)
        .map_err(|e| e.to_string())?;
    match response {
        ResponseKind::Fetch(fetch) => fetch.encode(&mut buf, api_version),
        // Only Fetch carries records worth splicing.
        other => other.encode(&mut buf.tail, api_version),
    }
    .map_err(|e| e.to_string())?;
    buf.finish()
}

/// Below this a record set is copied: a piece of its own costs an iovec
/// and keeps its whole read buffer alive until sent.
const SPLICE_BYTES_MIN: usize = 4096;

/// The buffer `kafka-protocol` encodes a response into. A `put_slice` of
/// one of `spliceable`'s record sets becomes a piece of its own.
struct FrameBuf {
    /// Finished pieces, in order.
    pieces: Vec<Piece>,
    spliced_bytes: usize,
    /// Being written after `pieces`.
    tail: BytesMut,
    spliceable: Vec<Bytes>,
    /// What the stand-ins still to come stand for, in order.
    file_regions: VecDeque<FileRegion>,
    /// Why the frame cannot be sent (a stand-in with no region, a region
    /// unreadable on flattening); `put_slice` cannot fail.
    broken: Option<String>,
}

impl FrameBuf {
    fn splice(&mut self, src: &[u8]) -> Option<Bytes> {
        if src.len() < SPLICE_BYTES_MIN {
            return None;
        }
        let range = src.as_ptr_range();
        self.spliceable
            .iter()
            .find(|records| {
                let within = records.as_ptr_range();
                within.start <= range.start && range.end <= within.end
            })
            .map(|records| records.slice_ref(src))
    }

    /// Back to one contiguous buffer, for encoders that write into what
    /// they wrote before (record batch encoders; message encoders never do).
    fn flatten(&mut self) {
        if self.pieces.is_empty() {
            return;
        }
        let mut whole = BytesMut::with_capacity(self.spliced_bytes + self.tail.len());
        for piece in self.pieces.drain(..) {
            match piece {
                Piece::Bytes(bytes) => whole.extend_from_slice(&bytes),
                Piece::File(region) => match region.read() {
                    Ok(bytes) => whole.extend_from_slice(&bytes),
                    Err(e) => {
                        self.broken = Some(format!("reading a log segment: {e}"));
                        whole.extend_from_slice(&FILE_REGION_STAND_IN[..region.len]);
                    }
                },
            }
        }
        whole.extend_from_slice(&self.tail);
        self.tail = whole;
        self.spliced_bytes = 0;
    }

    /// Ends the written piece and adds `piece` after it.
    fn push(&mut self, piece: Piece, len: usize) {
        let written = self.tail.split().freeze();
        self.spliced_bytes += written.len() + len;
        self.pieces.push(Piece::Bytes(written));
        self.pieces.push(piece);
    }

    fn finish(mut self) -> Result<ResponseFrame, String> {
        if let Some(why) = self.broken {
            return Err(why);
        }
        if !self.file_regions.is_empty() {
            return Err("a log segment region had no place in the answer".into());
        }
        let size = self.spliced_bytes + self.tail.len() - 4;
        let size = i32::try_from(size)
            .map_err(|_| format!("a response of {size} bytes"))?
            .to_be_bytes();
        match self.pieces.first_mut() {
            None => self.tail[..4].copy_from_slice(&size),
            // The prefix is in the first piece, which holds what preceded
            // the first records: a few dozen bytes, so patch a copy.
            Some(Piece::Bytes(first)) => {
                let mut patched = BytesMut::from(&first[..]);
                patched[..4].copy_from_slice(&size);
                *first = patched.freeze();
            }
            Some(Piece::File(_)) => unreachable!("the header precedes any records"),
        }
        let mut pieces = self.pieces;
        if !self.tail.is_empty() {
            pieces.push(Piece::Bytes(self.tail.freeze()));
        }
        Ok(ResponseFrame(pieces))
    }
}

// SAFETY: every method hands the tail `BytesMut` on unchanged, so its
// guarantees are this type's.
unsafe impl BufMut for FrameBuf {
    fn remaining_mut(&self) -> usize {
        self.tail.remaining_mut()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: the caller's promise about `cnt` is about `chunk_mut`,
        // which is the tail's.
        unsafe { self.tail.advance_mut(cnt) }
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        self.tail.chunk_mut()
    }

    fn put_slice(&mut self, src: &[u8]) {
        if is_stand_in(src) {
            match self.file_regions.pop_front() {
                Some(region) if region.len == src.len() => {
                    let len = region.len;
                    self.push(Piece::File(region), len);
                    return;
                }
                _ => self.broken = Some("records stand in for no log segment region".into()),
            }
        }
        match self.splice(src) {
            Some(records) => {
                let len = records.len();
                self.push(Piece::Bytes(records), len);
            }
            None => self.tail.put_slice(src),
        }
    }
}

impl ByteBufMut for FrameBuf {
    fn offset(&self) -> usize {
        self.spliced_bytes + self.tail.len()
    }

    fn seek(&mut self, offset: usize) {
        self.flatten();
        self.tail.seek(offset);
    }

    fn range(&mut self, r: Range<usize>) -> &mut [u8] {
        self.flatten();
        self.tail.range(r)
    }
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::fetch_response::{
        AbortedTransaction, EpochEndOffset, FetchableTopicResponse, LeaderIdAndEpoch, NodeEndpoint,
        PartitionData,
    };
    use kafka_protocol::messages::{BrokerId, FetchResponse, ProducerId, TopicName};
    use kafka_protocol::protocol::StrBytes;

    use super::*;

    fn records(len: usize, seed: u8) -> Bytes {
        (0..len).map(|i| (i as u8).wrapping_mul(seed)).collect()
    }

    fn partition(index: i32, records: Option<Bytes>) -> PartitionData {
        PartitionData::default()
            .with_partition_index(index)
            .with_high_watermark(1000 + i64::from(index))
            .with_last_stable_offset(900)
            .with_log_start_offset(7)
            .with_records(records)
    }

    /// A response with every kind of partition: large records (spliced),
    /// small ones (copied), none, and the optional and tagged fields.
    fn response(large: &[Bytes]) -> FetchResponse {
        let name = |n: &'static str| TopicName(StrBytes::from_static_str(n));
        FetchResponse::default()
            .with_throttle_time_ms(3)
            .with_session_id(11)
            .with_responses(vec![
                FetchableTopicResponse::default()
                    .with_topic(name("first"))
                    .with_partitions(vec![
                        partition(0, Some(large[0].clone())).with_aborted_transactions(Some(vec![
                            AbortedTransaction::default()
                                .with_producer_id(ProducerId(5))
                                .with_first_offset(42),
                        ])),
                        partition(1, Some(records(100, 3))),
                        partition(2, None).with_error_code(6).with_current_leader(
                            LeaderIdAndEpoch::default()
                                .with_leader_id(BrokerId(2))
                                .with_leader_epoch(9),
                        ),
                    ]),
                FetchableTopicResponse::default()
                    .with_topic(name("second"))
                    .with_partitions(vec![
                        partition(0, Some(large[1].clone())).with_diverging_epoch(
                            EpochEndOffset::default().with_epoch(4).with_end_offset(77),
                        ),
                        partition(1, Some(large[2].slice(10..))),
                    ]),
            ])
    }

    #[test]
    fn spliced_fetch_frames_equal_kafka_protocol_encoding_in_every_version() {
        let large = [
            records(SPLICE_BYTES_MIN, 7),
            records(100_000, 13),
            records(50_000, 17),
        ];
        for version in 4..=18 {
            let mut fetch = response(&large);
            if version < 7 {
                fetch.session_id = 0;
            }
            if version >= 16 {
                fetch.node_endpoints = vec![NodeEndpoint::default()
                    .with_node_id(BrokerId(2))
                    .with_host(StrBytes::from_static_str("localhost"))
                    .with_port(9093)];
            }
            let response = ResponseKind::Fetch(fetch.clone());
            let frame = encode_response(ApiKey::Fetch, version, 99, &response, Vec::new()).unwrap();

            let mut expected = BytesMut::new();
            expected.put_i32(0);
            ResponseHeader::default()
                .with_correlation_id(99)
                .encode(
                    &mut expected,
                    ApiKey::Fetch.response_header_version(version),
                )
                .unwrap();
            fetch.encode(&mut expected, version).unwrap();
            let size = (expected.len() - 4) as i32;
            expected[..4].copy_from_slice(&size.to_be_bytes());
            assert_eq!(frame.contiguous(), expected.freeze(), "v{version}");

            // The three large record sets went out from their own buffers.
            let spliced: Vec<_> = frame
                .pieces()
                .iter()
                .filter_map(|piece| match piece {
                    Piece::Bytes(bytes) => Some(bytes),
                    Piece::File(_) => None,
                })
                .filter(|piece| {
                    large
                        .iter()
                        .any(|l| l.as_ptr_range().contains(&piece.as_ptr()))
                })
                .map(|piece| piece.len())
                .collect();
            assert_eq!(
                spliced,
                [SPLICE_BYTES_MIN, 100_000, 50_000 - 10],
                "v{version}"
            );
        }
    }

    /// A temporary file holding `bytes` at position 3, as a region.
    fn file_region(bytes: &[u8]) -> (tempfile::NamedTempFile, FileRegion) {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, &[[7u8; 3].as_slice(), bytes].concat()).unwrap();
        let region = FileRegion {
            file: Arc::new(file.reopen().unwrap()),
            position: 3,
            len: bytes.len(),
        };
        (file, region)
    }

    #[test]
    fn file_regions_are_pieces_of_their_own_in_the_records_place() {
        let on_disk = records(70_000, 3);
        let (_file, region) = file_region(&on_disk);
        let large = records(SPLICE_BYTES_MIN, 11);
        let fetch = |first: Bytes| {
            FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
                .with_topic(TopicName(StrBytes::from_static_str("t")))
                .with_partitions(vec![
                    partition(0, Some(first)),
                    partition(1, Some(large.clone())),
                ])])
        };
        let stand_in = region.stand_in().unwrap();
        for version in [4, 12, 18] {
            let response = ResponseKind::Fetch(fetch(stand_in.clone()));
            let frame = encode_response(ApiKey::Fetch, version, 5, &response, vec![region.clone()])
                .unwrap();
            let read = ResponseKind::Fetch(fetch(on_disk.clone()));
            let expected = encode_response(ApiKey::Fetch, version, 5, &read, Vec::new()).unwrap();
            assert_eq!(frame.contiguous(), expected.contiguous(), "v{version}");
            let files: Vec<usize> = frame
                .pieces()
                .iter()
                .filter_map(|piece| match piece {
                    Piece::File(region) => Some(region.len),
                    Piece::Bytes(_) => None,
                })
                .collect();
            assert_eq!(files, [on_disk.len()], "v{version}");
        }
        // A stand-in with no region, or a region with no stand-in, is an
        // error to report, not a frame to send.
        let response = ResponseKind::Fetch(fetch(stand_in));
        assert!(encode_response(ApiKey::Fetch, 12, 5, &response, Vec::new()).is_err());
        let response = ResponseKind::Fetch(fetch(large.clone()));
        assert!(encode_response(ApiKey::Fetch, 12, 5, &response, vec![region]).is_err());
    }

    #[test]
    fn writing_back_into_a_spliced_frame_flattens_it() {
        let large = records(SPLICE_BYTES_MIN, 5);
        let on_disk = records(100, 9);
        let (_file, region) = file_region(&on_disk);
        let mut buf = FrameBuf {
            pieces: Vec::new(),
            spliced_bytes: 0,
            tail: BytesMut::new(),
            spliceable: vec![large.clone()],
            file_regions: [region.clone()].into(),
            broken: None,
        };
        buf.put_i32(0);
        buf.put_slice(&large);
        buf.put_slice(&region.stand_in().unwrap());
        buf.put_u8(1);
        assert_eq!(buf.pieces.len(), 4);
        buf.range(4..6).copy_from_slice(&[9, 9]);
        let frame = buf.finish().unwrap();
        assert_eq!(frame.pieces().len(), 1);
        let whole = frame.contiguous();
        assert_eq!(whole.len(), 4 + large.len() + on_disk.len() + 1);
        assert_eq!(&whole[4..6], &[9, 9]);
        assert_eq!(&whole[6..4 + large.len()], &large[2..]);
        assert_eq!(&whole[4 + large.len()..whole.len() - 1], &on_disk[..]);
    }

    #[test]
    fn other_responses_are_one_piece() {
        let response = ResponseKind::ApiVersions(Default::default());
        let frame = encode_response(ApiKey::ApiVersions, 3, 1, &response, Vec::new()).unwrap();
        assert_eq!(frame.pieces().len(), 1);
        let whole = frame.contiguous();
        assert_eq!(
            i32::from_be_bytes(whole[..4].try_into().unwrap()) as usize,
            whole.len() - 4
        );
    }
}
