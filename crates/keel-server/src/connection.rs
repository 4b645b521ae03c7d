//! One client connection: frames in, responses out, in request order.
//!
//! Requests on a connection are handled one at a time, as Kafka does, so
//! responses need no reordering and a long-polling Fetch holds back only its
//! own connection. Writing runs in its own task so a large response is sent
//! while the next request is read and handled.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::api_versions_response::ApiVersionsResponse;
use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};
use kafka_protocol::protocol::Encodable;
use kafka_protocol::ResponseError;
use keel_types::limits::INFLIGHT_RESPONSES_PER_CONNECTION_MAX;
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::broker::Broker;
use crate::codec::{self, FrameError};
use crate::dispatch::{self, Outcome};
use crate::handlers;

/// Bytes buffered from the socket; most produce requests fit in one read.
const READ_BUFFER_BYTES: usize = 256 * 1024;

pub async fn serve(broker: Arc<Broker>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let (reader, writer) = stream.into_split();
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, reader);
    let (responses, queued) = mpsc::channel::<Bytes>(INFLIGHT_RESPONSES_PER_CONNECTION_MAX);
    let writing = tokio::spawn(write_responses(writer, queued));
    let idle = Duration::from_millis(broker.config.connections_max_idle_ms);
    loop {
        let frame = match tokio::time::timeout(
            idle,
            codec::read_frame(&mut reader, broker.config.socket_request_max_bytes),
        )
        .await
        {
            Err(_) => {
                tracing::debug!(%peer, "closing idle connection");
                break;
            }
            Ok(Err(FrameError::Closed)) => break,
            Ok(Err(e)) => {
                tracing::warn!(%peer, error = %e, "closing connection: bad frame");
                break;
            }
            Ok(Ok(frame)) => frame,
        };
        match handle_frame(&broker, frame).await {
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
        }
    }
    drop(responses);
    let _ = writing.await;
}

async fn write_responses(
    writer: tokio::net::tcp::OwnedWriteHalf,
    mut queued: mpsc::Receiver<Bytes>,
) {
    let mut writer = BufWriter::with_capacity(64 * 1024, writer);
    while let Some(response) = queued.recv().await {
        if writer.write_all(&response).await.is_err() {
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

/// Handles one frame. `Err` closes the connection, which is what Kafka does
/// for requests it cannot parse or does not support.
async fn handle_frame(broker: &Broker, mut frame: Bytes) -> Result<Option<Bytes>, String> {
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
            return codec::encode_with_header(0, raw.correlation_id, |buf| {
                response.encode(buf, 0).map_err(|e| e.to_string())
            })
            .map(Some);
        }
        return Err(format!(
            "unsupported version {} of {api_key:?}",
            raw.api_version
        ));
    }
    let header = codec::decode_header(api_key, &mut frame)?;
    let request = RequestKind::decode(api_key, &mut frame, raw.api_version)
        .map_err(|e| format!("malformed {api_key:?} v{} request: {e}", raw.api_version))?;
    match dispatch::dispatch(broker, &header, request).await {
        Outcome::Respond(response) => {
            encode(api_key, raw.api_version, raw.correlation_id, &response).map(Some)
        }
        Outcome::NoResponse => Ok(None),
        Outcome::Close(reason) => Err(reason.to_string()),
    }
}

fn encode(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    response: &ResponseKind,
) -> Result<Bytes, String> {
    codec::encode_response(api_key, version, correlation_id, response)
        .map_err(|e| format!("cannot encode {api_key:?} v{version} response: {e}"))
}
