//! Requests this broker sends to other brokers over their Kafka listener:
//! a follower's Fetch, a transaction coordinator's WriteTxnMarkers, a
//! leader's transaction verification (AddPartitionsToTxn v4+). One
//! request at a time per connection, as Kafka's inter-broker channels do.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::broker::Broker;
use crate::codec;

/// A response larger than this is refused before it is read: twice Kafka's
/// `replica.fetch.response.max.bytes`, the largest answer we ask for.
const RESPONSE_FRAME_MAX: usize = 20 * 1024 * 1024;

/// One connection to one broker, carrying one request at a time.
pub struct BrokerConnection {
    client_id: &'static str,
    stream: Option<TcpStream>,
    correlation_id: i32,
}

impl BrokerConnection {
    pub fn new(client_id: &'static str) -> BrokerConnection {
        BrokerConnection {
            client_id,
            stream: None,
            correlation_id: 0,
        }
    }

    /// Sends `request` to `address` (connecting first if need be) and reads
    /// its answer within `timeout`. Any failure drops the connection, so
    /// the next call starts on a fresh one.
    pub async fn send<R: Request>(
        &mut self,
        address: &str,
        version: i16,
        request: &R,
        timeout: Duration,
    ) -> Result<R::Response, String> {
        let exchange = async {
            if self.stream.is_none() {
                let stream = TcpStream::connect(address)
                    .await
                    .map_err(|e| format!("cannot reach {address}: {e}"))?;
                let _ = stream.set_nodelay(true);
                self.stream = Some(stream);
            }
            self.correlation_id = self.correlation_id.wrapping_add(1);
            let stream = self.stream.as_mut().expect("connected above");
            round_trip(
                stream,
                self.client_id,
                self.correlation_id,
                version,
                request,
            )
            .await
        };
        let result = match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer from {address} within {timeout:?}")),
        };
        if result.is_err() {
            self.stream = None;
        }
        result
    }
}

/// Connections to other brokers by node id, for requests that are not on a
/// hot path (markers, verification). Each is used by one request at a time.
pub struct BrokerClients {
    client_id: &'static str,
    connections: parking_lot::Mutex<HashMap<i32, Arc<tokio::sync::Mutex<BrokerConnection>>>>,
}

impl BrokerClients {
    pub fn new(client_id: &'static str) -> BrokerClients {
        BrokerClients {
            client_id,
            connections: Default::default(),
        }
    }

    /// Sends `request` to broker `node_id`, found in the current image.
    pub async fn send<R: Request>(
        &self,
        broker: &Broker,
        node_id: i32,
        version: i16,
        request: &R,
        timeout: Duration,
    ) -> Result<R::Response, String> {
        let address = broker
            .image()
            .brokers
            .get(&node_id)
            .map(|b| format!("{}:{}", b.host, b.port))
            .ok_or_else(|| format!("broker {node_id} is not registered"))?;
        let connection = self
            .connections
            .lock()
            .entry(node_id)
            .or_insert_with(|| {
                Arc::new(tokio::sync::Mutex::new(BrokerConnection::new(
                    self.client_id,
                )))
            })
            .clone();
        let mut connection = connection.lock().await;
        connection.send(&address, version, request, timeout).await
    }
}

async fn round_trip<R: Request>(
    stream: &mut TcpStream,
    client_id: &'static str,
    correlation_id: i32,
    version: i16,
    request: &R,
) -> Result<R::Response, String> {
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str(client_id)));
    let mut frame = BytesMut::new();
    frame.put_i32(0);
    header
        .encode(&mut frame, R::header_version(version))
        .map_err(|e| e.to_string())?;
    request
        .encode(&mut frame, version)
        .map_err(|e| e.to_string())?;
    let size = (frame.len() - 4) as i32;
    frame[..4].copy_from_slice(&size.to_be_bytes());
    stream.write_all(&frame).await.map_err(|e| e.to_string())?;
    let size = stream.read_i32().await.map_err(|e| e.to_string())?;
    let size = usize::try_from(size)
        .ok()
        .filter(|s| *s <= RESPONSE_FRAME_MAX)
        .ok_or_else(|| format!("response of {size} bytes"))?;
    let body = codec::read_exactly(stream, size)
        .await
        .map_err(|e| e.to_string())?;
    let mut body = Bytes::from(body);
    let header = ResponseHeader::decode(&mut body, R::Response::header_version(version))
        .map_err(|e| e.to_string())?;
    if header.correlation_id != correlation_id {
        return Err(format!(
            "answer to {} while {correlation_id} was asked",
            header.correlation_id
        ));
    }
    R::Response::decode(&mut body, version).map_err(|e| e.to_string())
}
