//! AlterConfigs (the legacy API: the given configs become the resource's
//! whole dynamic set) and the resource handling it shares with
//! IncrementalAlterConfigs.

use std::collections::HashMap;

use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{AlterConfigsRequest, AlterConfigsResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use keel_metadata::controller::ConfigChange;
use keel_metadata::ConfigResource;

use super::describe_configs::{RESOURCE_BROKER, RESOURCE_TOPIC};
use super::str_bytes;
use crate::broker::Broker;
use crate::dispatch::RequestContext;
use crate::errors::admin_error;

/// An error code and message for one resource of an alter request.
pub(super) type Refusal = (ResponseError, String);

pub fn handle(
    broker: &Broker,
    _ctx: &RequestContext<'_>,
    request: AlterConfigsRequest,
) -> AlterConfigsResponse {
    let keys: Vec<(i8, &str)> = request
        .resources
        .iter()
        .map(|r| (r.resource_type, r.resource_name.as_str()))
        .collect();
    let duplicates = duplicate_resources(&keys);
    let responses = request
        .resources
        .iter()
        .map(|resource| {
            // Kafka drops entries without a value: they are simply not set.
            let configs = resource
                .configs
                .iter()
                .filter_map(|c| Some((c.name.to_string(), c.value.as_ref()?.to_string())))
                .collect();
            let outcome = alter_resource(
                broker,
                resource.resource_type,
                &resource.resource_name,
                duplicates.contains(&(resource.resource_type, resource.resource_name.as_str())),
                Ok(ConfigChange::Replace(configs)),
                request.validate_only,
            );
            let (code, message) = outcome_fields(outcome);
            AlterConfigsResourceResponse::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone())
                .with_error_code(code)
                .with_error_message(message)
        })
        .collect();
    AlterConfigsResponse::default().with_responses(responses)
}

/// Resources named more than once in one request; Kafka refuses each of them.
pub(super) fn duplicate_resources<'a>(keys: &[(i8, &'a str)]) -> Vec<(i8, &'a str)> {
    let mut seen: HashMap<(i8, &str), usize> = HashMap::new();
    for key in keys {
        *seen.entry(*key).or_default() += 1;
    }
    seen.into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(k, _)| k)
        .collect()
}

/// Resolves the resource and applies the change through the controller.
pub(super) fn alter_resource(
    broker: &Broker,
    resource_type: i8,
    resource_name: &StrBytes,
    duplicate: bool,
    change: Result<ConfigChange, Refusal>,
    validate_only: bool,
) -> Result<(), Refusal> {
    if duplicate {
        return Err((
            ResponseError::InvalidRequest,
            "Error due to duplicate resources in request".into(),
        ));
    }
    let resource = config_resource(broker, resource_type, resource_name.as_str())?;
    let change = change?;
    broker
        .alter_configs(&resource, &change, validate_only)
        .map_err(|e| (admin_error(&e), e.to_string()))?;
    if !validate_only {
        tracing::info!(?resource, ?change, "altered configs");
    }
    Ok(())
}

fn config_resource(
    broker: &Broker,
    resource_type: i8,
    name: &str,
) -> Result<ConfigResource, Refusal> {
    match resource_type {
        RESOURCE_TOPIC => Ok(ConfigResource::Topic(name.to_string())),
        RESOURCE_BROKER if name.is_empty() => Ok(ConfigResource::BrokerDefault),
        RESOURCE_BROKER => match name.parse::<i32>() {
            Ok(id) if broker.image().brokers.contains_key(&id) => Ok(ConfigResource::Broker(id)),
            _ => Err((
                ResponseError::InvalidRequest,
                format!("Unexpected broker id {name:?}: no such broker is registered"),
            )),
        },
        other => Err((
            ResponseError::InvalidRequest,
            format!("Keel cannot alter configs of resource type {other}"),
        )),
    }
}

/// The response's error fields, logging a refusal.
pub(super) fn outcome_fields(outcome: Result<(), Refusal>) -> (i16, Option<StrBytes>) {
    match outcome {
        Ok(()) => (0, None),
        Err((error, message)) => {
            tracing::info!(?error, %message, "config change refused");
            (error.code(), Some(str_bytes(&message)))
        }
    }
}
