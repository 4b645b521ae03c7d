//! The supported APIs, listed once: this table answers ApiVersions and
//! decides what is dispatched. An API appears here only when its handler
//! does the work; clients learn of everything else by its absence.

use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseKind};
use kafka_protocol::protocol::VersionRange;

use crate::broker::Broker;
use crate::handlers;

/// `(api, lowest version, highest version)`. The highest is what
/// `kafka-protocol` can encode; the lowest is Kafka 4's floor.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 13),
    (ApiKey::Fetch, 4, 18),
    (ApiKey::ListOffsets, 1, 10),
    (ApiKey::Metadata, 0, 13),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    // kafka-protocol 0.18 decodes InitProducerId requests only up to v5.
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::DescribeCluster, 0, 2),
];

pub fn supported_range(api_key: ApiKey) -> Option<VersionRange> {
    SUPPORTED
        .iter()
        .find(|(k, _, _)| *k == api_key)
        .map(|&(k, min, max)| {
            let ours = VersionRange { min, max };
            ours.intersect(&k.valid_versions())
        })
}

/// What a connection does with a handled request.
pub enum Outcome {
    // Boxed: responses are large and this enum is moved through every request.
    Respond(Box<ResponseKind>),
    /// acks=0 produce: Kafka sends nothing back.
    NoResponse,
    /// Kafka's way to tell an acks=0 producer its request failed.
    Close(&'static str),
    /// The request's effects are done (a produce's appends), but its answer
    /// waits for something (an fsync). The connection may handle the next
    /// request meanwhile; answers still leave in request order.
    Deferred(futures::future::BoxFuture<'static, Outcome>),
}

pub struct RequestContext<'a> {
    pub header: &'a RequestHeader,
    pub api_version: i16,
}

pub async fn dispatch(broker: &Broker, header: &RequestHeader, request: RequestKind) -> Outcome {
    let ctx = RequestContext {
        header,
        api_version: header.request_api_version,
    };
    let v = ctx.api_version;
    let response = match request {
        RequestKind::ApiVersions(r) => {
            ResponseKind::ApiVersions(handlers::api_versions::handle(&ctx, r))
        }
        RequestKind::Metadata(r) => {
            ResponseKind::Metadata(handlers::metadata::handle(broker, &ctx, r))
        }
        RequestKind::DescribeCluster(r) => {
            ResponseKind::DescribeCluster(handlers::describe_cluster::handle(broker, &ctx, r))
        }
        RequestKind::CreateTopics(r) => {
            ResponseKind::CreateTopics(handlers::create_topics::handle(broker, &ctx, r).await)
        }
        RequestKind::DeleteTopics(r) => {
            ResponseKind::DeleteTopics(handlers::delete_topics::handle(broker, &ctx, r).await)
        }
        RequestKind::Produce(r) => return handlers::produce::handle(broker, &ctx, r).await,
        RequestKind::Fetch(r) => {
            ResponseKind::Fetch(handlers::fetch::handle(broker, &ctx, r).await)
        }
        RequestKind::ListOffsets(r) => {
            ResponseKind::ListOffsets(handlers::list_offsets::handle(broker, &ctx, r))
        }
        RequestKind::InitProducerId(r) => {
            ResponseKind::InitProducerId(handlers::init_producer_id::handle(broker, &ctx, r).await)
        }
        RequestKind::DescribeConfigs(r) => {
            ResponseKind::DescribeConfigs(handlers::describe_configs::handle(broker, &ctx, r))
        }
        other => {
            // Unreachable while SUPPORTED and this match agree; a mismatch
            // is answered like an unknown API rather than with a panic.
            tracing::error!(api = ?ApiKey::try_from(header.request_api_key), "no handler for a supported API");
            drop(other);
            return Outcome::Close("no handler");
        }
    };
    Outcome::Respond(Box::new(response))
}
