//! UnregisterBroker: the active controller forgets a broker taken out of
//! service (after its replicas were moved and its process stopped), so
//! that it no longer counts among the cluster's brokers.

use kafka_protocol::messages::{UnregisterBrokerRequest, UnregisterBrokerResponse};

use super::str_bytes;
use crate::broker::Broker;
use crate::dispatch::RequestContext;
use crate::errors::admin_error;

pub async fn handle(
    broker: &Broker,
    _ctx: &RequestContext<'_>,
    request: UnregisterBrokerRequest,
) -> UnregisterBrokerResponse {
    let broker_id = request.broker_id.0;
    match broker.unregister_broker(broker_id).await {
        Ok(()) => {
            tracing::info!(broker_id, "unregistered broker on request");
            UnregisterBrokerResponse::default()
        }
        Err(e) => {
            tracing::info!(broker_id, error = %e, "UnregisterBroker refused");
            UnregisterBrokerResponse::default()
                .with_error_code(admin_error(&e).code())
                .with_error_message(Some(str_bytes(&e.to_string())))
        }
    }
}
