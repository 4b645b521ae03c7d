use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::str_bytes;
use crate::broker::Broker;
use crate::coordinator_log::{OFFSETS_TOPIC, TRANSACTION_STATE_TOPIC};
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
    let coordinator = Coordinator::default()
        .with_key(key.clone())
        .with_node_id(BrokerId(-1))
        .with_port(-1);
    let fail = |error: ResponseError, message: &str| {
        coordinator
            .clone()
            .with_error_code(error.code())
            .with_error_message(Some(str_bytes(message)))
    };
    // Each coordinator's internal topic is created on first use, as Kafka
    // does; the coordinator is the leader of the key's partition of it.
    let (topic, partition, ensured) = match key_type {
        KEY_TYPE_GROUP => (
            OFFSETS_TOPIC,
            broker.groups.partition_for(key.as_str()),
            broker.ensure_offsets_topic().await,
        ),
        KEY_TYPE_TRANSACTION => (
            TRANSACTION_STATE_TOPIC,
            broker.txns.partition_for(key.as_str()),
            broker.ensure_transaction_state_topic().await,
        ),
        _ => {
            return fail(
                ResponseError::InvalidRequest,
                "unknown coordinator key type",
            )
        }
    };
    if let Err(e) = ensured {
        tracing::error!(error = %e, "cannot create {topic}");
        return fail(
            ResponseError::CoordinatorNotAvailable,
            "the coordinator's topic is not available",
        );
    }
    let image = broker.image();
    let leader = image
        .topic_by_name(topic)
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
            "the coordinator's partition has no leader",
        ),
    }
}
