//! CreatePartitions: more partitions for existing topics.

use std::collections::HashMap;

use futures::StreamExt;

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};
use kafka_protocol::ResponseError;

use super::str_bytes;
use crate::broker::Broker;
use crate::dispatch::RequestContext;
use crate::errors::admin_error;

pub async fn handle(
    broker: &Broker,
    _ctx: &RequestContext<'_>,
    request: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for topic in &request.topics {
        *seen.entry(topic.name.0.as_str()).or_default() += 1;
    }
    let (seen, validate_only) = (&seen, request.validate_only);
    let results = futures::stream::iter(&request.topics)
        .then(|topic| async move {
            let name = topic.name.0.as_str();
            let result = CreatePartitionsTopicResult::default().with_name(topic.name.clone());
            if seen[name] > 1 {
                return result
                    .with_error_code(ResponseError::InvalidRequest.code())
                    .with_error_message(Some(str_bytes("Duplicate topic in request.")));
            }
            let assignments: Option<Vec<Vec<i32>>> = topic.assignments.as_ref().map(|a| {
                a.iter()
                    .map(|p| p.broker_ids.iter().map(|b| b.0).collect())
                    .collect()
            });
            match broker
                .create_partitions(name, topic.count, assignments, validate_only)
                .await
            {
                Ok(()) => {
                    if !validate_only {
                        tracing::info!(topic = name, count = topic.count, "created partitions");
                    }
                    result
                }
                Err(e) => {
                    tracing::info!(topic = name, error = %e, "CreatePartitions refused");
                    result
                        .with_error_code(admin_error(&e).code())
                        .with_error_message(Some(str_bytes(&e.to_string())))
                }
            }
        })
        .collect()
        .await;
    CreatePartitionsResponse::default().with_results(results)
}
