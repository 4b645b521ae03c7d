use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::str_bytes;
use crate::broker::Broker;
use crate::dispatch::RequestContext;

const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;
/// From v4 a request carries a batch of keys.
const BATCHED_VERSION: i16 = 4;

pub async fn handle(
    broker: &Broker,
    ctx: &RequestContext<'_>,
    request: FindCoordinatorRequest,
) -> FindCoordinatorResponse {
    let keys = if ctx.api_version >= BATCHED_VERSION {
        request.coordinator_keys.clone()
    } else {
        vec![request.key.clone()]
    };
    let coordinators: Vec<Coordinator> = keys
        .into_iter()
        .map(|key| find(broker, request.key_type, key))
        .collect();
    if ctx.api_version >= BATCHED_VERSION {
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let c = coordinators.into_iter().next().expect("one key below v4");
    FindCoordinatorResponse::default()
        .with_error_code(c.error_code)
        .with_error_message(c.error_message)
        .with_node_id(c.node_id)
        .with_host(c.host)
        .with_port(c.port)
}

fn find(broker: &Broker, key_type: i8, key: StrBytes) -> Coordinator {
    let coordinator = Coordinator::default()
        .with_key(key)
        .with_node_id(BrokerId(-1))
        .with_port(-1);
    let fail = |error: ResponseError, message: &str| {
        coordinator
            .clone()
            .with_error_code(error.code())
            .with_error_message(Some(str_bytes(message)))
    };
    match key_type {
        KEY_TYPE_GROUP => {}
        KEY_TYPE_TRANSACTION => {
            return fail(
                ResponseError::CoordinatorNotAvailable,
                "transactions are not supported by this broker yet",
            )
        }
        _ => {
            return fail(
                ResponseError::InvalidRequest,
                "unknown coordinator key type",
            )
        }
    }
    // The offsets topic is created on first use, as Kafka does.
    if let Err(e) = broker.ensure_offsets_topic() {
        tracing::error!(error = %e, "cannot create the offsets topic");
        return fail(
            ResponseError::CoordinatorNotAvailable,
            "the offsets topic is not available",
        );
    }
    coordinator
        .with_node_id(BrokerId(broker.config.node_id))
        .with_host(str_bytes(&broker.config.advertised_host))
        .with_port(broker.config.advertised_port)
}
