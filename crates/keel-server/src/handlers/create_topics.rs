use std::collections::{BTreeMap, HashMap};

use futures::StreamExt;

use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
use kafka_protocol::ResponseError;
use keel_metadata::config::TOPIC_CONFIGS;
use keel_metadata::controller::NewTopic;
use uuid::Uuid;

use super::str_bytes;
use crate::broker::Broker;
use crate::dispatch::RequestContext;
use crate::errors::admin_error;

pub async fn handle(
    broker: &Broker,
    _ctx: &RequestContext<'_>,
    request: CreateTopicsRequest,
) -> CreateTopicsResponse {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for topic in &request.topics {
        *seen.entry(topic.name.0.to_string()).or_default() += 1;
    }
    let (seen, request_validate_only) = (&seen, request.validate_only);
    let results = futures::stream::iter(request.topics)
        .then(|topic| async move {
            let name = topic.name.0.to_string();
            let result = CreatableTopicResult::default().with_name(topic.name.clone());
            let fail = |error: ResponseError, message: String| {
                result
                    .clone()
                    .with_error_code(error.code())
                    .with_error_message(Some(str_bytes(&message)))
                    .with_num_partitions(-1)
                    .with_replication_factor(-1)
            };
            if seen[&name] > 1 {
                return fail(
                    ResponseError::InvalidRequest,
                    format!(
                        "Create topics request from client contains duplicate topic name {name}"
                    ),
                );
            }
            let mut configs = Vec::with_capacity(topic.configs.len());
            for config in &topic.configs {
                match &config.value {
                    Some(v) => configs.push((config.name.to_string(), v.to_string())),
                    None => {
                        return fail(
                            ResponseError::InvalidConfig,
                            format!(
                                "Null value not supported for topic configs: {}",
                                config.name
                            ),
                        )
                    }
                }
            }
            let new_topic = NewTopic {
                name: name.clone(),
                num_partitions: topic.num_partitions,
                replication_factor: topic.replication_factor,
                assignments: topic
                    .assignments
                    .iter()
                    .map(|a| {
                        (
                            a.partition_index,
                            a.broker_ids.iter().map(|b| b.0).collect(),
                        )
                    })
                    .collect(),
                configs,
            };
            match broker.create_topic(&new_topic, request_validate_only).await {
                Ok((topic_id, image)) => {
                    let overrides: BTreeMap<String, String> =
                        new_topic.configs.iter().cloned().collect();
                    let (partitions, replication_factor) = match image.topic_by_name(&name) {
                        Some(t) => (
                            t.partitions.len() as i32,
                            t.partitions
                                .values()
                                .next()
                                .map_or(0, |p| p.replicas.len() as i16),
                        ),
                        // validate_only: report what would have been created.
                        None => {
                            let defaults = broker.config.topic_defaults();
                            (
                                if new_topic.num_partitions == -1 {
                                    defaults.num_partitions
                                } else {
                                    new_topic.num_partitions
                                },
                                if new_topic.replication_factor == -1 {
                                    defaults.replication_factor
                                } else {
                                    new_topic.replication_factor
                                },
                            )
                        }
                    };
                    result
                        .with_topic_id(if request_validate_only {
                            Uuid::nil()
                        } else {
                            topic_id
                        })
                        .with_num_partitions(partitions)
                        .with_replication_factor(replication_factor)
                        .with_configs(Some(
                            TOPIC_CONFIGS
                                .iter()
                                .map(|def| {
                                    let (_, value, source) = broker
                                        .config
                                        .topic_config_synonyms(def, &image, &overrides)
                                        .remove(0);
                                    CreatableTopicConfigs::default()
                                        .with_name(str_bytes(def.name))
                                        .with_value(Some(str_bytes(&value)))
                                        .with_config_source(source as i8)
                                })
                                .collect(),
                        ))
                }
                Err(e) => {
                    tracing::info!(topic = %name, error = %e, "CreateTopics refused");
                    fail(admin_error(&e), e.to_string())
                }
            }
        })
        .collect()
        .await;
    CreateTopicsResponse::default().with_topics(results)
}
