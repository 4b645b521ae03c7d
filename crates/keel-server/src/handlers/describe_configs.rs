use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};
use kafka_protocol::ResponseError;
use keel_metadata::config::{dynamic_broker_config, ConfigType, TOPIC_CONFIGS};

use super::str_bytes;
use crate::broker::Broker;
use crate::config::ConfigSource;
use crate::dispatch::RequestContext;

pub(crate) const RESOURCE_TOPIC: i8 = 2;
pub(crate) const RESOURCE_BROKER: i8 = 4;

pub fn handle(
    broker: &Broker,
    _ctx: &RequestContext<'_>,
    request: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let image = broker.image();
    let results = request
        .resources
        .into_iter()
        .map(|resource| {
            let result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            let wanted = |name: &str| {
                resource
                    .configuration_keys
                    .as_ref()
                    .is_none_or(|keys| keys.iter().any(|k| k.as_str() == name))
            };
            let synonym_list = |synonyms: &[(String, String, ConfigSource)]| {
                synonyms
                    .iter()
                    .map(|(name, value, source)| {
                        DescribeConfigsSynonym::default()
                            .with_name(str_bytes(name))
                            .with_value(Some(str_bytes(value)))
                            .with_source(*source as i8)
                    })
                    .collect()
            };
            // The effective value is the first synonym.
            let entry = |name: &str,
                         synonyms: &[(String, String, ConfigSource)],
                         kind: ConfigType,
                         doc: &str,
                         read_only: bool| {
                let (_, value, source) = &synonyms[0];
                let e = DescribeConfigsResourceResult::default()
                    .with_name(str_bytes(name))
                    .with_value(Some(str_bytes(value)))
                    .with_read_only(read_only)
                    .with_config_source(*source as i8)
                    .with_config_type(kind as i8)
                    .with_documentation(request.include_documentation.then(|| str_bytes(doc)));
                if request.include_synonyms {
                    e.with_synonyms(synonym_list(synonyms))
                } else {
                    e
                }
            };
            match resource.resource_type {
                RESOURCE_TOPIC => {
                    let Some(topic) = image.topic_by_name(resource.resource_name.as_str()) else {
                        return result
                            .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                            .with_error_message(Some(str_bytes("Topic does not exist")));
                    };
                    let configs = TOPIC_CONFIGS
                        .iter()
                        .filter(|def| wanted(def.name))
                        .map(|def| {
                            let synonyms =
                                broker
                                    .config
                                    .topic_config_synonyms(def, &image, &topic.configs);
                            entry(def.name, &synonyms, def.kind, def.doc, false)
                        })
                        .collect();
                    result.with_configs(configs)
                }
                RESOURCE_BROKER => {
                    let name = resource.resource_name.as_str();
                    if name.is_empty() {
                        // The cluster-wide defaults: only what has been set.
                        let configs = image
                            .broker_default_configs
                            .iter()
                            .filter(|(name, _)| wanted(name))
                            .filter_map(|(name, value)| {
                                let (kind, _) = dynamic_broker_config(name)?;
                                let synonyms = [(
                                    name.clone(),
                                    value.clone(),
                                    ConfigSource::DynamicDefaultBroker,
                                )];
                                Some(entry(name, &synonyms, kind, "", false))
                            })
                            .collect();
                        return result.with_configs(configs);
                    }
                    if name.parse::<i32>().ok() != Some(broker.config.node_id) {
                        return result
                            .with_error_code(ResponseError::InvalidRequest.code())
                            .with_error_message(Some(str_bytes(&format!(
                                "Unexpected broker id, expected {}",
                                broker.config.node_id
                            ))));
                    }
                    let configs = broker
                        .config
                        .describe(&image)
                        .into_iter()
                        .filter(|c| wanted(c.name))
                        .map(|c| entry(c.name, &c.synonyms, c.kind, c.doc, c.read_only))
                        .collect();
                    result.with_configs(configs)
                }
                other => result
                    .with_error_code(ResponseError::InvalidRequest.code())
                    .with_error_message(Some(str_bytes(&format!(
                        "Keel cannot describe configs of resource type {other}"
                    )))),
            }
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}
