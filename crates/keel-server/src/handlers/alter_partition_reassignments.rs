//! AlterPartitionReassignments: move partitions to other brokers, or cancel
//! a move, decided by the active controller.

use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse,
};

use super::str_bytes;
use crate::broker::Broker;
use crate::dispatch::RequestContext;
use crate::errors::{admin_error, controller_error};

pub async fn handle(
    broker: &Broker,
    _ctx: &RequestContext<'_>,
    request: AlterPartitionReassignmentsRequest,
) -> AlterPartitionReassignmentsResponse {
    let reassignments: Vec<(String, i32, Option<Vec<i32>>)> = request
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| {
                let target = p.replicas.as_ref().map(|r| r.iter().map(|b| b.0).collect());
                (t.name.0.to_string(), p.partition_index, target)
            })
        })
        .collect();
    let answers = broker
        .alter_partition_reassignments(
            reassignments.clone(),
            request.allow_replication_factor_change,
        )
        .await;
    let answers: Vec<(i16, Option<String>)> = match answers {
        Ok(refusals) => refusals
            .iter()
            .zip(&reassignments)
            .map(|(refusal, (topic, partition, target))| match refusal {
                None => {
                    tracing::info!(topic, partition, ?target, "partition reassignment changed");
                    (0, None)
                }
                Some(e) => {
                    tracing::info!(topic, partition, ?target, error = %e, "partition reassignment refused");
                    (controller_error(e).code(), Some(e.to_string()))
                }
            })
            .collect(),
        Err(e) => {
            tracing::info!(error = %e, "AlterPartitionReassignments failed");
            let failed = (admin_error(&e).code(), Some(e.to_string()));
            vec![failed; reassignments.len()]
        }
    };
    let mut answers = answers.into_iter();
    let responses = request
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .zip(answers.by_ref())
                .map(|(p, (code, message))| {
                    ReassignablePartitionResponse::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code)
                        .with_error_message(message.map(|m| str_bytes(&m)))
                })
                .collect();
            ReassignableTopicResponse::default()
                .with_name(t.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    AlterPartitionReassignmentsResponse::default()
        .with_allow_replication_factor_change(request.allow_replication_factor_change)
        .with_responses(responses)
}
