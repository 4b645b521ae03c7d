use futures::StreamExt;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse};
use kafka_protocol::ResponseError;
use uuid::Uuid;

use super::{str_bytes, topic_name};
use crate::broker::Broker;
use crate::dispatch::RequestContext;
use crate::errors::admin_error;

pub async fn handle(
    broker: &Broker,
    ctx: &RequestContext<'_>,
    request: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    // v0-5 name topics in `topic_names`; v6 names them by name or id in `topics`.
    let wanted: Vec<(Option<String>, Uuid)> = if ctx.api_version >= 6 {
        request
            .topics
            .into_iter()
            .map(|t| (t.name.map(|n| n.0.to_string()), t.topic_id))
            .collect()
    } else {
        request
            .topic_names
            .into_iter()
            .map(|n| (Some(n.0.to_string()), Uuid::nil()))
            .collect()
    };
    let responses = futures::stream::iter(wanted)
        .then(|(name, id)| async move {
            let image = broker.image();
            let topic = match &name {
                Some(name) => image.topic_by_name(name),
                None => image.topic_by_id(&id),
            };
            let result = DeletableTopicResult::default()
                .with_name(name.as_deref().map(topic_name))
                .with_topic_id(id);
            let Some(topic) = topic else {
                let error = if name.is_some() {
                    ResponseError::UnknownTopicOrPartition
                } else {
                    ResponseError::UnknownTopicId
                };
                return result.with_error_code(error.code());
            };
            let (topic_id, topic_label) = (topic.topic_id, topic.name.clone());
            let result = result
                .with_name(Some(topic_name(&topic_label)))
                .with_topic_id(topic_id);
            match broker.delete_topic(topic_id).await {
                Ok(()) => {
                    tracing::info!(topic = %topic_label, "deleted topic");
                    result
                }
                Err(e) => result
                    .with_error_code(admin_error(&e).code())
                    .with_error_message(Some(str_bytes(&e.to_string()))),
            }
        })
        .collect()
        .await;
    DeleteTopicsResponse::default().with_responses(responses)
}
