//! The supported APIs, listed once: this table answers ApiVersions and
//! decides what is dispatched. An API appears here only when its handler
//! does the work; clients learn of everything else by its absence.

use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseKind};
use kafka_protocol::protocol::VersionRange;

use crate::broker::Broker;
use crate::codec::FileRegion;
use crate::handlers;

/// `(api, lowest version, highest version)`. The highest is what
/// `kafka-protocol` can encode; the lowest is Kafka 4's floor.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 13),
    (ApiKey::Fetch, 4, 18),
    (ApiKey::ListOffsets, 1, 10),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::Metadata, 0, 13),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    // kafka-protocol 0.18 decodes InitProducerId requests only up to v5.
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::DescribeLogDirs, 1, 4),
    (ApiKey::DescribeCluster, 0, 2),
    (ApiKey::ElectLeaders, 0, 2),
    (ApiKey::AlterPartitionReassignments, 0, 1),
    (ApiKey::ListPartitionReassignments, 0, 0),
    (ApiKey::UnregisterBroker, 0, 0),
    (ApiKey::FindCoordinator, 0, 6),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    // v10 of both names topics by id (KIP-848): unstable in Kafka 4.1, whose
    // brokers leave it out of ApiVersions, and stable from Kafka 4.2.
    (ApiKey::OffsetCommit, 2, 10),
    (ApiKey::OffsetFetch, 1, 10),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DescribeGroups, 0, 6),
    (ApiKey::DeleteGroups, 0, 2),
    // KIP-848 consumer groups (v1: KIP-1082 client-generated member ids).
    (ApiKey::ConsumerGroupHeartbeat, 0, 1),
    (ApiKey::ConsumerGroupDescribe, 0, 1),
    // Transactions, Kafka's transaction version 1: the v5 of AddPartitionsToTxn,
    // EndTxn and TxnOffsetCommit belong to KIP-890's transaction version 2
    // (an epoch bump per transaction), which is not built.
    (ApiKey::AddPartitionsToTxn, 0, 4),
    (ApiKey::AddOffsetsToTxn, 0, 4),
    (ApiKey::EndTxn, 0, 4),
    (ApiKey::WriteTxnMarkers, 1, 1),
    (ApiKey::TxnOffsetCommit, 0, 4),
    (ApiKey::DescribeProducers, 0, 0),
    (ApiKey::DescribeTransactions, 0, 0),
    (ApiKey::ListTransactions, 0, 1),
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
    /// A Fetch answer whose records include segment file regions, which
    /// leave by sendfile; in the order their stand-ins appear in it.
    Fetched(Box<ResponseKind>, Vec<FileRegion>),
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
    /// The client's address, as DescribeGroups reports members' hosts.
    pub client_host: &'a str,
}

pub async fn dispatch(
    broker: &Broker,
    header: &RequestHeader,
    client_host: &str,
    request: RequestKind,
) -> Outcome {
    let ctx = RequestContext {
        header,
        api_version: header.request_api_version,
        client_host,
    };
    let v = ctx.api_version;
    let response = match request {
        RequestKind::ApiVersions(r) => {
            ResponseKind::ApiVersions(handlers::api_versions::handle(&ctx, r))
        }
        RequestKind::Metadata(r) => {
            ResponseKind::Metadata(handlers::metadata::handle(broker, &ctx, r).await)
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
            let (response, file_regions) = handlers::fetch::handle(broker, &ctx, r).await;
            return Outcome::Fetched(Box::new(ResponseKind::Fetch(response)), file_regions);
        }
        RequestKind::ListOffsets(r) => {
            ResponseKind::ListOffsets(handlers::list_offsets::handle(broker, &ctx, r))
        }
        RequestKind::OffsetForLeaderEpoch(r) => ResponseKind::OffsetForLeaderEpoch(
            handlers::offset_for_leader_epoch::handle(broker, &ctx, r),
        ),
        RequestKind::InitProducerId(r) if r.transactional_id.is_some() => {
            ResponseKind::InitProducerId(broker.txns.init_producer_id(r, v).await)
        }
        RequestKind::InitProducerId(r) => {
            ResponseKind::InitProducerId(handlers::init_producer_id::handle(broker, &ctx, r).await)
        }
        RequestKind::DescribeConfigs(r) => {
            ResponseKind::DescribeConfigs(handlers::describe_configs::handle(broker, &ctx, r))
        }
        RequestKind::AlterConfigs(r) => {
            ResponseKind::AlterConfigs(handlers::alter_configs::handle(broker, &ctx, r).await)
        }
        RequestKind::IncrementalAlterConfigs(r) => ResponseKind::IncrementalAlterConfigs(
            handlers::incremental_alter_configs::handle(broker, &ctx, r).await,
        ),
        RequestKind::CreatePartitions(r) => ResponseKind::CreatePartitions(
            handlers::create_partitions::handle(broker, &ctx, r).await,
        ),
        RequestKind::AlterPartitionReassignments(r) => ResponseKind::AlterPartitionReassignments(
            handlers::alter_partition_reassignments::handle(broker, &ctx, r).await,
        ),
        RequestKind::ListPartitionReassignments(r) => ResponseKind::ListPartitionReassignments(
            handlers::list_partition_reassignments::handle(broker, &ctx, r),
        ),
        RequestKind::ElectLeaders(r) => {
            ResponseKind::ElectLeaders(handlers::elect_leaders::handle(broker, &ctx, r).await)
        }
        RequestKind::UnregisterBroker(r) => ResponseKind::UnregisterBroker(
            handlers::unregister_broker::handle(broker, &ctx, r).await,
        ),
        RequestKind::DeleteRecords(r) => {
            ResponseKind::DeleteRecords(handlers::delete_records::handle(broker, &ctx, r))
        }
        RequestKind::DescribeLogDirs(r) => {
            ResponseKind::DescribeLogDirs(handlers::describe_log_dirs::handle(broker, &ctx, r))
        }
        RequestKind::FindCoordinator(r) => {
            ResponseKind::FindCoordinator(handlers::find_coordinator::handle(broker, &ctx, r).await)
        }
        // The group APIs' handlers are the coordinator service's methods:
        // it owns their validation, waiting and records.
        RequestKind::JoinGroup(r) => {
            let client_id = header.client_id.as_ref().map_or("", |c| c.as_str());
            ResponseKind::JoinGroup(
                broker
                    .groups
                    .join_group_with_client(r, v, client_id, client_host)
                    .await,
            )
        }
        RequestKind::SyncGroup(r) => ResponseKind::SyncGroup(broker.groups.sync_group(r, v).await),
        RequestKind::Heartbeat(r) => ResponseKind::Heartbeat(broker.groups.heartbeat(r, v).await),
        RequestKind::LeaveGroup(r) => {
            ResponseKind::LeaveGroup(broker.groups.leave_group(r, v).await)
        }
        RequestKind::OffsetCommit(r) => {
            // v10 names topics by id; the coordinator resolves them here.
            let topics = crate::broker::ImageTopics(broker.image());
            ResponseKind::OffsetCommit(broker.groups.offset_commit(r, v, &topics).await)
        }
        RequestKind::OffsetFetch(r) => {
            let topics = crate::broker::ImageTopics(broker.image());
            ResponseKind::OffsetFetch(broker.groups.offset_fetch(r, v, &topics).await)
        }
        RequestKind::OffsetDelete(r) => {
            ResponseKind::OffsetDelete(broker.groups.offset_delete(r, v).await)
        }
        RequestKind::ListGroups(r) => ResponseKind::ListGroups(broker.groups.list_groups(r, v)),
        RequestKind::DescribeGroups(r) => {
            ResponseKind::DescribeGroups(broker.groups.describe_groups(r, v))
        }
        RequestKind::DeleteGroups(r) => {
            ResponseKind::DeleteGroups(broker.groups.delete_groups(r, v).await)
        }
        RequestKind::ConsumerGroupHeartbeat(r) => {
            let client_id = header.client_id.as_ref().map_or("", |c| c.as_str());
            let topics = crate::broker::ImageTopics(broker.image());
            ResponseKind::ConsumerGroupHeartbeat(
                broker
                    .groups
                    .consumer_group_heartbeat(r, v, client_id, client_host, &topics)
                    .await,
            )
        }
        RequestKind::ConsumerGroupDescribe(r) => {
            ResponseKind::ConsumerGroupDescribe(broker.groups.consumer_group_describe(r, v))
        }
        RequestKind::AddPartitionsToTxn(r) => ResponseKind::AddPartitionsToTxn(
            handlers::add_partitions_to_txn::handle(broker, &ctx, r).await,
        ),
        RequestKind::TxnOffsetCommit(r) => ResponseKind::TxnOffsetCommit(
            handlers::txn_offset_commit::handle(broker, &ctx, r).await,
        ),
        // The other transaction APIs' handlers are the transaction
        // coordinator's methods, as the group APIs' are the group coordinator's.
        RequestKind::AddOffsetsToTxn(r) => {
            ResponseKind::AddOffsetsToTxn(broker.txns.add_offsets_to_txn(r, v).await)
        }
        RequestKind::EndTxn(r) => ResponseKind::EndTxn(broker.txns.end_txn(r, v).await),
        RequestKind::DescribeTransactions(r) => {
            ResponseKind::DescribeTransactions(broker.txns.describe_transactions(r, v))
        }
        RequestKind::ListTransactions(r) => {
            ResponseKind::ListTransactions(broker.txns.list_transactions(r, v))
        }
        RequestKind::WriteTxnMarkers(r) => ResponseKind::WriteTxnMarkers(
            handlers::write_txn_markers::handle(broker, &ctx, r).await,
        ),
        RequestKind::DescribeProducers(r) => {
            ResponseKind::DescribeProducers(handlers::describe_producers::handle(broker, &ctx, r))
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
