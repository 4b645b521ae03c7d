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

/// One resource of an alter request: type, name, and the change it asks for
/// (or why the request itself is refused).
pub(super) type AlterResource<'a> = (i8, &'a StrBytes, Result<ConfigChange, Refusal>);

pub async fn handle(
    broker: &Broker,
    _ctx: &RequestContext<'_>,
    request: AlterConfigsRequest,
) -> AlterConfigsResponse {
    let resources = request.resources.iter().map(|resource| {
        // Kafka drops entries without a value: they are simply not set.
        let configs = resource
            .configs
            .iter()
            .filter_map(|c| Some((c.name.to_string(), c.value.as_ref()?.to_string())))
            .collect();
        (
            resource.resource_type,
            &resource.resource_name,
            Ok(ConfigChange::Replace(configs)),
        )
    });
    let responses = alter_resources(broker, resources.collect(), request.validate_only)
        .await
        .into_iter()
        .zip(&request.resources)
        .map(|((code, message), resource)| {
            AlterConfigsResourceResponse::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone())
                .with_error_code(code)
                .with_error_message(message)
        })
        .collect();
    AlterConfigsResponse::default().with_responses(responses)
}

/// Applies each resource's change through the controller and returns each
/// one's error code and message, in request order. A resource named twice
/// is refused both times, as Kafka does.
pub(super) async fn alter_resources(
    broker: &Broker,
    resources: Vec<AlterResource<'_>>,
    validate_only: bool,
) -> Vec<(i16, Option<StrBytes>)> {
    let mut seen: HashMap<(i8, &str), usize> = HashMap::new();
    for (resource_type, name, _) in &resources {
        *seen.entry((*resource_type, name.as_str())).or_default() += 1;
    }
    let mut answers = Vec::with_capacity(resources.len());
    for (resource_type, name, change) in &resources {
        let outcome = if seen[&(*resource_type, name.as_str())] > 1 {
            Err((
                ResponseError::InvalidRequest,
                "Error due to duplicate resources in request".into(),
            ))
        } else {
            alter_resource(broker, *resource_type, name, change, validate_only).await
        };
        answers.push(match outcome {
            Ok(()) => (0, None),
            Err((error, message)) => {
                tracing::info!(?error, %message, "config change refused");
                (error.code(), Some(str_bytes(&message)))
            }
        });
    }
    answers
}

async fn alter_resource(
    broker: &Broker,
    resource_type: i8,
    resource_name: &StrBytes,
    change: &Result<ConfigChange, Refusal>,
    validate_only: bool,
) -> Result<(), Refusal> {
    let resource = config_resource(broker, resource_type, resource_name.as_str())?;
    let change = change.as_ref().map_err(Clone::clone)?;
    broker
        .alter_configs(&resource, change, validate_only)
        .await
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
