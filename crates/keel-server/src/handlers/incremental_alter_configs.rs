//! IncrementalAlterConfigs: SET, DELETE, APPEND and SUBTRACT on single
//! configs, leaving the others as they are.

use kafka_protocol::messages::incremental_alter_configs_request::AlterableConfig;
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse};
use kafka_protocol::ResponseError;
use keel_metadata::controller::{ConfigChange, ConfigOp};

use super::alter_configs::{alter_resources, Refusal};
use crate::broker::Broker;
use crate::dispatch::RequestContext;

pub async fn handle(
    broker: &Broker,
    _ctx: &RequestContext<'_>,
    request: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let resources = request.resources.iter().map(|resource| {
        let change = resource
            .configs
            .iter()
            .map(config_op)
            .collect::<Result<Vec<_>, _>>()
            .map(ConfigChange::Incremental);
        (resource.resource_type, &resource.resource_name, change)
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
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

fn config_op(config: &AlterableConfig) -> Result<(String, ConfigOp), Refusal> {
    let name = config.name.to_string();
    let value = || {
        config.value.as_ref().map(|v| v.to_string()).ok_or_else(|| {
            (
                ResponseError::InvalidRequest,
                format!("Null value not supported for : {name}"),
            )
        })
    };
    let op = match config.config_operation {
        0 => ConfigOp::Set(value()?),
        1 => ConfigOp::Delete,
        2 => ConfigOp::Append(value()?),
        3 => ConfigOp::Subtract(value()?),
        other => {
            return Err((
                ResponseError::InvalidRequest,
                format!("Unknown alter config operation type {other}"),
            ))
        }
    };
    Ok((name, op))
}
