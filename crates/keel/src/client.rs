//! A small Kafka client for the command-line tools: one TCP connection to
//! one broker, one request in flight at a time, versions negotiated through
//! ApiVersions when the connection opens.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Display;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ListOffsetsRequest, MetadataRequest, MetadataResponse,
    RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes, VersionRange};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod leader;

pub use leader::{broker_address, PartitionLeader};

/// Where a broker listens when no `--bootstrap-server` is given.
pub const DEFAULT_BOOTSTRAP_SERVER: &str = "127.0.0.1:9092";

/// A response larger than this is refused before it is buffered, so a
/// corrupt size prefix cannot make the tool allocate gigabytes. Fetches ask
/// for far less (see `consume.rs`).
pub const RESPONSE_BYTES_MAX: usize = 128 * 1024 * 1024;

/// How long connecting, or waiting for one response, may take. Fetch
/// long-polls for well under a second, so only a stuck broker hits this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// ListOffsets' sentinel timestamps (Kafka `ListOffsetsRequest.EARLIEST_TIMESTAMP`).
pub const EARLIEST_TIMESTAMP: i64 = -2;
pub const LATEST_TIMESTAMP: i64 = -1;

const CLIENT_ID: &str = "keel-cli";

/// The versions whose fields this client fills in correctly; the highest
/// version also supported by the broker is used. Where Produce v13 and Fetch
/// v13 address topics by id instead of name, the callers set both and the
/// encoder writes the one the version has. Bounds: Metadata v4 is the first that
/// can refuse to auto-create topics, CreateTopics v4 the first that accepts
/// -1 for "the broker's default" partitions and replication factor, and
/// DeleteTopics v6 adds only deletion by topic id, which keel does not offer.
/// The group APIs start where the request has one shape (Kafka 3.0 and
/// later): FindCoordinator v4 batches keys, ListGroups v4 filters by state,
/// OffsetFetch v8 batches groups; OffsetCommit and OffsetFetch stop at v9,
/// the last that names topics rather than identifying them by id. The
/// transaction APIs of `keel txn`: ListTransactions v2 adds only a
/// transactional-id pattern, left null; WriteTxnMarkers v1 is the only
/// version Kafka 4 brokers accept (v0 was removed).
const CLIENT_VERSIONS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::ApiVersions, 3, 3),
    (ApiKey::Metadata, 4, 13),
    (ApiKey::CreateTopics, 4, 7),
    (ApiKey::DeleteTopics, 1, 5),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::DescribeLogDirs, 1, 4),
    (ApiKey::ListOffsets, 1, 10),
    (ApiKey::Produce, 3, 13),
    (ApiKey::Fetch, 4, 18),
    (ApiKey::FindCoordinator, 4, 6),
    (ApiKey::ListGroups, 4, 5),
    (ApiKey::DescribeGroups, 0, 6),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetFetch, 8, 9),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::ListTransactions, 0, 2),
    (ApiKey::DescribeTransactions, 0, 0),
    (ApiKey::DescribeProducers, 0, 0),
    (ApiKey::WriteTxnMarkers, 1, 1),
    (ApiKey::ElectLeaders, 1, 2),
    (ApiKey::UnregisterBroker, 0, 0),
    (ApiKey::AlterPartitionReassignments, 0, 1),
    (ApiKey::ListPartitionReassignments, 0, 0),
];

/// `--bootstrap-server`, shared by every command that talks to a broker.
#[derive(clap::Args, Debug)]
pub struct BootstrapArgs {
    /// The broker to ask first, as HOST:PORT.
    #[arg(long = "bootstrap-server", value_name = "HOST:PORT", default_value = DEFAULT_BOOTSTRAP_SERVER)]
    pub address: String,
}

pub struct Client {
    stream: TcpStream,
    address: String,
    correlation_id: i32,
    /// The broker's supported range per API key, from ApiVersions.
    broker_versions: HashMap<i16, VersionRange>,
}

impl Client {
    /// Connects and negotiates versions. ApiVersions goes out at v3 (Kafka
    /// 2.4 and later), the first version that names the client software.
    pub async fn connect(address: &str) -> Result<Client> {
        let stream = tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(address))
            .await
            .map_err(|_| anyhow!("timed out connecting to {address}"))?
            .with_context(|| format!("connecting to {address}"))?;
        // Requests are written whole; Nagle would only delay them.
        stream.set_nodelay(true)?;
        let mut client = Client {
            stream,
            address: address.to_string(),
            correlation_id: 0,
            broker_versions: HashMap::new(),
        };
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str(CLIENT_ID))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let response = client.send_at(request, 3).await?;
        check(response.error_code, format!("ApiVersions from {address}"))?;
        for key in response.api_keys {
            let range = VersionRange {
                min: key.min_version,
                max: key.max_version,
            };
            client.broker_versions.insert(key.api_key, range);
        }
        Ok(client)
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// Sends a request at the highest version both sides support and waits for its response.
    pub async fn send<R: Request>(&mut self, request: R) -> Result<R::Response> {
        let version = self.version(api_key::<R>())?;
        self.send_at(request, version).await
    }

    /// Sends a request the broker does not answer: a Produce with acks=0.
    pub async fn send_without_response<R: Request>(&mut self, request: R) -> Result<()> {
        let version = self.version(api_key::<R>())?;
        self.write_request(&request, version).await?;
        Ok(())
    }

    /// Metadata for the named topics, or for all topics when `topics` is None.
    pub async fn metadata(&mut self, topics: Option<&[&str]>) -> Result<MetadataResponse> {
        let topics = topics.map(|names| {
            let topic =
                |name: &&str| MetadataRequestTopic::default().with_name(Some(topic_name(name)));
            names.iter().map(topic).collect()
        });
        // A typo in a topic name must fail, not create a topic.
        let request = MetadataRequest::default()
            .with_topics(topics)
            .with_allow_auto_topic_creation(false);
        let response = self.send(request).await?;
        check(response.error_code, "Metadata")?;
        Ok(response)
    }

    /// The offset at `timestamp` (or a sentinel such as [`LATEST_TIMESTAMP`])
    /// for each partition, or that partition's error. Send it to the leader.
    pub async fn list_offsets(
        &mut self,
        topic: &str,
        partitions: &[i32],
        timestamp: i64,
    ) -> Result<BTreeMap<i32, Result<i64>>> {
        let partition = |&p: &i32| {
            ListOffsetsPartition::default()
                .with_partition_index(p)
                .with_timestamp(timestamp)
        };
        let request = ListOffsetsRequest::default()
            // -1: an ordinary consumer, not a follower replica.
            .with_replica_id((-1).into())
            .with_timeout_ms(REQUEST_TIMEOUT.as_millis() as i32)
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(topic_name(topic))
                .with_partitions(partitions.iter().map(partition).collect())]);
        let response = self.send(request).await?;
        let mut offsets = BTreeMap::new();
        for p in response
            .topics
            .into_iter()
            .filter(|t| t.name.as_str() == topic)
            .flat_map(|t| t.partitions)
        {
            let what = format!("ListOffsets for {topic}-{}", p.partition_index);
            offsets.insert(
                p.partition_index,
                check(p.error_code, what).map(|()| p.offset),
            );
        }
        for p in partitions {
            ensure!(
                offsets.contains_key(p),
                "ListOffsets response lacks {topic}-{p}"
            );
        }
        Ok(offsets)
    }

    fn version(&self, key: ApiKey) -> Result<i16> {
        let &(_, min, max) = CLIENT_VERSIONS
            .iter()
            .find(|(k, _, _)| *k == key)
            .unwrap_or_else(|| panic!("{key:?} is missing from CLIENT_VERSIONS"));
        let ours = VersionRange { min, max }.intersect(&key.valid_versions());
        let theirs = self
            .broker_versions
            .get(&(key as i16))
            .ok_or_else(|| anyhow!("{} does not support {key:?}", self.address))?;
        let both = ours.intersect(theirs);
        ensure!(
            !both.is_empty(),
            "no common version of {key:?}: keel supports {ours}, {} supports {theirs}",
            self.address
        );
        Ok(both.max)
    }

    async fn send_at<R: Request>(&mut self, request: R, version: i16) -> Result<R::Response> {
        let key = api_key::<R>();
        tracing::debug!(api = ?key, version, broker = self.address, "request");
        let correlation_id = self.write_request(&request, version).await?;
        let read = tokio::time::timeout(REQUEST_TIMEOUT, self.read_frame());
        let mut frame = read.await.map_err(|_| {
            anyhow!(
                "{} did not answer {key:?} within {REQUEST_TIMEOUT:?}",
                self.address
            )
        })??;
        let header = ResponseHeader::decode(&mut frame, key.response_header_version(version))
            .with_context(|| format!("decoding the {key:?} v{version} response header"))?;
        // One request is in flight at a time, so the next response must be its.
        ensure!(
            header.correlation_id == correlation_id,
            "{} answered correlation id {} while {correlation_id} was expected",
            self.address,
            header.correlation_id
        );
        R::Response::decode(&mut frame, version)
            .with_context(|| format!("decoding a {key:?} v{version} response"))
    }

    /// Writes one size-prefixed request and returns its correlation id.
    async fn write_request<R: Request>(&mut self, request: &R, version: i16) -> Result<i32> {
        let key = api_key::<R>();
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
        let mut frame = BytesMut::new();
        frame.put_i32(0); // The size, filled in once known.
        header.encode(&mut frame, key.request_header_version(version))?;
        request
            .encode(&mut frame, version)
            .with_context(|| format!("encoding a {key:?} v{version} request"))?;
        let size = i32::try_from(frame.len() - 4).context("request too large")?;
        frame[..4].copy_from_slice(&size.to_be_bytes());
        self.stream
            .write_all(&frame)
            .await
            .with_context(|| format!("sending {key:?} to {}", self.address))?;
        Ok(self.correlation_id)
    }

    async fn read_frame(&mut self) -> Result<Bytes> {
        let size = self
            .stream
            .read_i32()
            .await
            .with_context(|| format!("reading a response from {}", self.address))?;
        let size = usize::try_from(size).map_err(|_| anyhow!("negative response size {size}"))?;
        ensure!(
            size <= RESPONSE_BYTES_MAX,
            "response of {size} bytes exceeds {RESPONSE_BYTES_MAX}"
        );
        let mut frame = vec![0; size];
        self.stream.read_exact(&mut frame).await?;
        Ok(frame.into())
    }
}

pub fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

/// Kafka's name for an error code, as its own tools print it:
/// `UNKNOWN_TOPIC_OR_PARTITION`.
pub fn error_name(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        None => "NONE".to_string(),
        Some(ResponseError::Unknown(code)) => format!("UNKNOWN_ERROR_CODE_{code}"),
        Some(known) => {
            let mut name = String::new();
            for (i, c) in known.to_string().chars().enumerate() {
                if c.is_ascii_uppercase() && i > 0 {
                    name.push('_');
                }
                name.push(c.to_ascii_uppercase());
            }
            name
        }
    }
}

/// Ok for error code 0; otherwise an error naming what failed and the code.
pub fn check(code: i16, what: impl Display) -> Result<()> {
    check_with_message(code, None, what)
}

/// Like [`check`], with the broker's optional explanation appended.
pub fn check_with_message(code: i16, message: Option<&str>, what: impl Display) -> Result<()> {
    if code == 0 {
        return Ok(());
    }
    let name = error_name(code);
    match message.filter(|m| !m.is_empty()) {
        Some(message) => bail!("{what}: {name}: {message}"),
        None => bail!("{what}: {name}"),
    }
}

fn api_key<R: Request>() -> ApiKey {
    ApiKey::try_from(R::KEY)
        .unwrap_or_else(|()| panic!("kafka-protocol defines request key {}", R::KEY))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names_match_kafka() {
        assert_eq!(error_name(0), "NONE");
        assert_eq!(error_name(1), "OFFSET_OUT_OF_RANGE");
        assert_eq!(error_name(3), "UNKNOWN_TOPIC_OR_PARTITION");
        assert_eq!(error_name(36), "TOPIC_ALREADY_EXISTS");
        assert_eq!(error_name(-1), "UNKNOWN_SERVER_ERROR");
        assert_eq!(error_name(9999), "UNKNOWN_ERROR_CODE_9999");
    }

    #[test]
    fn check_names_the_error_then_the_message() {
        assert!(check(0, "x").is_ok());
        let err = check_with_message(36, Some("Topic 't' already exists."), "creating t");
        let expected = "creating t: TOPIC_ALREADY_EXISTS: Topic 't' already exists.";
        assert_eq!(err.unwrap_err().to_string(), expected);
        assert_eq!(
            check(3, "t-0").unwrap_err().to_string(),
            "t-0: UNKNOWN_TOPIC_OR_PARTITION"
        );
    }

    #[test]
    fn client_versions_are_within_the_protocol() {
        for &(key, min, max) in CLIENT_VERSIONS {
            let valid = key.valid_versions();
            assert!(min <= max, "{key:?}");
            assert!(valid.min <= min, "{key:?}");
            assert!(max <= valid.max, "{key:?}");
        }
    }
}
