use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::str_bytes;
use crate::broker::Broker;
use crate::dispatch::RequestContext;
use crate::offsets_log::OFFSETS_TOPIC;

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
    let mut coordinators = Vec::with_capacity(keys.len());
    for key in keys {
        coordinators.push(find(broker, request.key_type, key).await);
    }
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

async fn find(broker: &Broker, key_type: i8, key: StrBytes) -> Coordinator {
    let partition = broker.groups.partition_for(key.as_str());
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
    if let Err(e) = broker.ensure_offsets_topic().await {
        tracing::error!(error = %e, "cannot create the offsets topic");
        return fail(
            ResponseError::CoordinatorNotAvailable,
            "the offsets topic is not available",
        );
    }
    // The coordinator is the leader of the group's offsets partition.
    let image = broker.image();
    let leader = image
        .topic_by_name(OFFSETS_TOPIC)
        .and_then(|t| t.partitions.get(&partition))
        .and_then(|p| image.brokers.get(&p.leader))
        .filter(|b| !b.fenced);
    match leader {
        Some(b) => coordinator
            .with_node_id(BrokerId(b.broker_id))
            .with_host(str_bytes(&b.host))
            .with_port(b.port),
        None => fail(
            ResponseError::CoordinatorNotAvailable,
            "the group's offsets partition has no leader",
        ),
    }
}
