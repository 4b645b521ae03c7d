//! Kafka framing: a 4-byte big-endian size, then a request header and body.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader, ResponseKind};
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
    let mut buf = BytesMut::zeroed(size as usize);
    reader.read_exact(&mut buf).await?;
    Ok(buf.freeze())
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

/// Encodes a response with its header and size prefix.
pub fn encode_response(
    api_key: ApiKey,
    api_version: i16,
    correlation_id: i32,
    response: &ResponseKind,
) -> Result<Bytes, String> {
    let header_version = api_key.response_header_version(api_version);
    encode_with_header(header_version, correlation_id, |buf| {
        response.encode(buf, api_version).map_err(|e| e.to_string())
    })
}

pub fn encode_with_header(
    header_version: i16,
    correlation_id: i32,
    body: impl FnOnce(&mut BytesMut) -> Result<(), String>,
) -> Result<Bytes, String> {
    let mut buf = BytesMut::with_capacity(256);
    buf.put_i32(0); // size, patched below
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut buf, header_version)
        .map_err(|e| e.to_string())?;
    body(&mut buf)?;
    let size = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    Ok(buf.freeze())
}
