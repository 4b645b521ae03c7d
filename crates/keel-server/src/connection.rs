//! One client connection: frames in, responses out, in request order.
//!
//! Requests are handled one at a time and in order, so appends from one
//! producer land in the order it sent them. A handler may finish its work
//! but defer its answer (a produce waiting for an fsync); the next requests
//! are handled meanwhile and answers queue up behind it, so they still
//! leave in request order. Reading and writing run in their own tasks: a
//! large response is sent while the next request is read and handled.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use kafka_protocol::messages::api_versions_response::ApiVersionsResponse;
use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};
use kafka_protocol::ResponseError;
use keel_types::limits::INFLIGHT_RESPONSES_PER_CONNECTION_MAX;
use tokio::io::Interest;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::broker::Broker;
use crate::codec::{self, FileRegion, FrameError, Piece, ResponseFrame};
use crate::dispatch::{self, Outcome};
use crate::handlers;

/// Bytes buffered from the socket; most produce requests fit in one read.
const READ_BUFFER_BYTES: usize = 256 * 1024;

/// An answer that is ready, or will be: `Ok(None)` sends nothing (acks=0),
/// `Err` closes the connection.
type Answer = BoxFuture<'static, Result<Option<ResponseFrame>, String>>;

pub async fn serve(broker: Arc<Broker>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let (reader, writer) = stream.into_split();
    let (frames, mut incoming) = mpsc::channel::<Bytes>(INFLIGHT_RESPONSES_PER_CONNECTION_MAX);
    let reading = tokio::spawn(read_frames(broker.clone(), reader, frames, peer));
    let (responses, queued) = mpsc::channel::<ResponseFrame>(INFLIGHT_RESPONSES_PER_CONNECTION_MAX);
    let writing = tokio::spawn(write_responses(writer, queued));
    let mut pending: FuturesOrdered<Answer> = FuturesOrdered::new();
    let client_host = format!("/{}", peer.ip());
    loop {
        // Both branches are cancel-safe: frames arrive whole over a channel.
        tokio::select! {
            Some(answer) = pending.next(), if !pending.is_empty() => match answer {
                Ok(Some(response)) => {
                    if responses.send(response).await.is_err() {
                        break;
                    }
                }
                Ok(None) => {}
                Err(reason) => {
                    tracing::warn!(%peer, reason, "closing connection");
                    break;
                }
            },
            frame = incoming.recv(), if pending.len() < INFLIGHT_RESPONSES_PER_CONNECTION_MAX => {
                let Some(frame) = frame else {
                    // The client is gone or sent a bad frame; answer what
                    // was already handled, then close.
                    while let Some(Ok(Some(response))) = pending.next().await {
                        if responses.send(response).await.is_err() {
                            break;
                        }
                    }
                    break;
                };
                match handle_frame(&broker, &client_host, frame).await {
                    // Nothing queued ahead of it: send at once.
                    Handled::Ready(Ok(Some(response))) if pending.is_empty() => {
                        if responses.send(response).await.is_err() {
                            break;
                        }
                    }
                    Handled::Ready(answer) => pending.push_back(Box::pin(std::future::ready(answer))),
                    Handled::Later(answer) => pending.push_back(answer),
                }
            }
        }
    }
    reading.abort();
    drop(responses);
    let _ = writing.await;
}

async fn read_frames(
    broker: Arc<Broker>,
    reader: OwnedReadHalf,
    frames: mpsc::Sender<Bytes>,
    peer: SocketAddr,
) {
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, reader);
    let idle = Duration::from_millis(broker.config.connections_max_idle_ms);
    let request_bytes_max = broker.config.socket_request_max_bytes;
    loop {
        let frame =
            match tokio::time::timeout(idle, codec::read_frame(&mut reader, request_bytes_max))
                .await
            {
                Err(_) => {
                    tracing::debug!(%peer, "closing idle connection");
                    return;
                }
                Ok(Err(FrameError::Closed)) => return,
                Ok(Err(e)) => {
                    tracing::warn!(%peer, error = %e, "closing connection: bad frame");
                    return;
                }
                Ok(Ok(frame)) => frame,
            };
        if frames.send(frame).await.is_err() {
            return;
        }
    }
}

async fn write_responses(
    writer: tokio::net::tcp::OwnedWriteHalf,
    mut queued: mpsc::Receiver<ResponseFrame>,
) {
    let mut writer = BufWriter::with_capacity(64 * 1024, writer);
    while let Some(response) = queued.recv().await {
        if let Err(e) = write_frame(&mut writer, response.pieces()).await {
            tracing::debug!(error = %e, "closing connection: writing a response failed");
            return;
        }
        // Flush only when nothing else is queued, so pipelined responses
        // leave in as few writes as possible.
        if queued.is_empty() && writer.flush().await.is_err() {
            return;
        }
    }
    let _ = writer.shutdown().await;
}

/// Writes a frame's pieces in order: runs of buffers with as few calls as
/// the writer allows, file regions with sendfile.
async fn write_frame(
    writer: &mut BufWriter<OwnedWriteHalf>,
    pieces: &[Piece],
) -> std::io::Result<()> {
    let mut buffers = Vec::with_capacity(pieces.len());
    for piece in pieces {
        match piece {
            Piece::Bytes(bytes) => buffers.push(IoSlice::new(bytes)),
            Piece::File(region) => {
                write_all_vectored(writer, &mut buffers).await?;
                buffers.clear();
                writer.flush().await?;
                send_file(writer.get_ref().as_ref(), region).await?;
            }
        }
    }
    write_all_vectored(writer, &mut buffers).await
}

/// Sends a segment file region from the page cache to the socket, without
/// reading it into memory (Kafka's zero-copy transfer). A region cut short
/// (its log truncated since it was located) cannot be made whole, and the
/// frame's size is already sent: the connection closes, as in Kafka.
async fn send_file(socket: &TcpStream, region: &FileRegion) -> std::io::Result<()> {
    let mut position = region.position;
    let end = region.position + region.len as u64;
    while position < end {
        socket.writable().await?;
        let remaining = usize::try_from(end - position).unwrap_or(usize::MAX);
        let sent = socket.try_io(Interest::WRITABLE, || {
            rustix::fs::sendfile(socket, &*region.file, Some(&mut position), remaining)
                .map_err(std::io::Error::from)
        });
        match sent {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "a log segment was truncated while being sent",
                ))
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes every buffer, with as few calls as the writer allows: a
/// `BufWriter` copies buffers that together fit its buffer, and hands
/// larger ones to the socket in one `writev`.
async fn write_all_vectored<W: AsyncWrite + Unpin>(
    writer: &mut W,
    buffers: &mut [IoSlice<'_>],
) -> std::io::Result<()> {
    let mut unwritten = buffers;
    while !unwritten.is_empty() {
        match writer.write_vectored(unwritten).await? {
            0 => return Err(std::io::ErrorKind::WriteZero.into()),
            n => IoSlice::advance_slices(&mut unwritten, n),
        }
    }
    Ok(())
}

enum Handled {
    Ready(Result<Option<ResponseFrame>, String>),
    Later(Answer),
}

/// Handles one frame: its effects happen now, its answer may come later.
/// An `Err` answer closes the connection, which is what Kafka does for
/// requests it cannot parse or does not support.
async fn handle_frame(broker: &Broker, client_host: &str, frame: Bytes) -> Handled {
    match handle_now(broker, client_host, frame).await {
        Err(reason) => Handled::Ready(Err(reason)),
        Ok((key, version, correlation_id, Outcome::Deferred(later))) => {
            Handled::Later(Box::pin(async move {
                answer(key, version, correlation_id, later.await)
            }))
        }
        Ok((key, version, correlation_id, outcome)) => {
            Handled::Ready(answer(key, version, correlation_id, outcome))
        }
    }
}

type Dispatched = (ApiKey, i16, i32, Outcome);

async fn handle_now(
    broker: &Broker,
    client_host: &str,
    mut frame: Bytes,
) -> Result<Dispatched, String> {
    let raw = codec::peek_header(&frame);
    let api_key =
        ApiKey::try_from(raw.api_key).map_err(|_| format!("unknown api key {}", raw.api_key))?;
    let Some(range) = dispatch::supported_range(api_key) else {
        return Err(format!("unsupported api {api_key:?}"));
    };
    if raw.api_version < range.min || raw.api_version > range.max {
        if api_key == ApiKey::ApiVersions {
            // KIP-511: answer in v0 with our versions so the client can pick one.
            let response = ApiVersionsResponse::default()
                .with_error_code(ResponseError::UnsupportedVersion.code())
                .with_api_keys(handlers::api_versions::supported_api_keys());
            return Ok((
                api_key,
                0,
                raw.correlation_id,
                Outcome::Respond(Box::new(ResponseKind::ApiVersions(response))),
            ));
        }
        return Err(format!(
            "unsupported version {} of {api_key:?}",
            raw.api_version
        ));
    }
    let header = codec::decode_header(api_key, &mut frame)?;
    let request = RequestKind::decode(api_key, &mut frame, raw.api_version)
        .map_err(|e| format!("malformed {api_key:?} v{} request: {e}", raw.api_version))?;
    let outcome = dispatch::dispatch(broker, &header, client_host, request).await;
    Ok((api_key, raw.api_version, raw.correlation_id, outcome))
}

fn answer(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    outcome: Outcome,
) -> Result<Option<ResponseFrame>, String> {
    let (response, file_regions) = match outcome {
        Outcome::Respond(response) => (response, Vec::new()),
        Outcome::Fetched(response, file_regions) => (response, file_regions),
        Outcome::NoResponse => return Ok(None),
        Outcome::Close(reason) => return Err(reason.to_string()),
        Outcome::Deferred(_) => return Err("an answer deferred twice".to_string()),
    };
    codec::encode_response(api_key, version, correlation_id, &response, file_regions)
        .map(Some)
        .map_err(|e| format!("cannot encode {api_key:?} v{version} response: {e}"))
}
