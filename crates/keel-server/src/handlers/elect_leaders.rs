//! ElectLeaders: a preferred or unclean leader election for named
//! partitions, or for all of them, decided by the active controller.

use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::{ElectLeadersRequest, ElectLeadersResponse};
use kafka_protocol::ResponseError;
use keel_metadata::elections::{ElectionOutcome, ElectionType};

use super::{str_bytes, topic_name};
use crate::broker::Broker;
use crate::dispatch::RequestContext;
use crate::errors::admin_error;

pub async fn handle(
    broker: &Broker,
    ctx: &RequestContext<'_>,
    request: ElectLeadersRequest,
) -> ElectLeadersResponse {
    let named: Option<Vec<(String, i32)>> = request.topic_partitions.as_ref().map(|topics| {
        topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|&p| (t.topic.0.to_string(), p)))
            .collect()
    });
    // v0 has no election type: it is always preferred.
    let election = match (ctx.api_version, request.election_type) {
        (0, _) | (_, 0) => Some(ElectionType::Preferred),
        (_, 1) => Some(ElectionType::Unclean),
        _ => None,
    };
    let Some(election) = election else {
        tracing::info!(
            election_type = request.election_type,
            "ElectLeaders with an unknown election type"
        );
        let refused = every(named, ResponseError::InvalidRequest);
        return response(refused, Some(ResponseError::InvalidRequest));
    };
    match broker.elect_leaders(election, named.clone()).await {
        Ok(results) => {
            let elected = results
                .iter()
                .filter(|r| r.outcome == ElectionOutcome::Elected)
                .count();
            if elected > 0 {
                tracing::info!(?election, elected, "elected leaders on request");
            }
            let results = results
                .into_iter()
                .map(|r| {
                    let error = match r.outcome {
                        ElectionOutcome::Elected => None,
                        ElectionOutcome::ElectionNotNeeded => {
                            Some(ResponseError::ElectionNotNeeded)
                        }
                        ElectionOutcome::PreferredLeaderNotAvailable => {
                            Some(ResponseError::PreferredLeaderNotAvailable)
                        }
                        ElectionOutcome::EligibleLeadersNotAvailable => {
                            Some(ResponseError::EligibleLeadersNotAvailable)
                        }
                        ElectionOutcome::UnknownTopicOrPartition => {
                            Some(ResponseError::UnknownTopicOrPartition)
                        }
                    };
                    (r.topic, r.partition, error)
                })
                .collect();
            response(results, None)
        }
        Err(e) => {
            tracing::info!(error = %e, "ElectLeaders failed");
            let error = admin_error(&e);
            response(every(named, error), Some(error))
        }
    }
}

/// `error` for every named partition (none named: none answered).
fn every(
    named: Option<Vec<(String, i32)>>,
    error: ResponseError,
) -> Vec<(String, i32, Option<ResponseError>)> {
    named
        .unwrap_or_default()
        .into_iter()
        .map(|(topic, partition)| (topic, partition, Some(error)))
        .collect()
}

/// Results grouped by topic, in the order first named.
fn response(
    results: Vec<(String, i32, Option<ResponseError>)>,
    error: Option<ResponseError>,
) -> ElectLeadersResponse {
    let mut topics: Vec<ReplicaElectionResult> = Vec::new();
    for (topic, partition, error) in results {
        let result = PartitionResult::default()
            .with_partition_id(partition)
            .with_error_code(error.map_or(0, |e| e.code()))
            .with_error_message(error.map(|e| str_bytes(&e.to_string())));
        match topics.iter_mut().find(|t| t.topic.0.as_str() == topic) {
            Some(t) => t.partition_result.push(result),
            None => topics.push(
                ReplicaElectionResult::default()
                    .with_topic(topic_name(&topic))
                    .with_partition_result(vec![result]),
            ),
        }
    }
    ElectLeadersResponse::default()
        .with_error_code(error.map_or(0, |e| e.code()))
        .with_replica_election_results(topics)
}
