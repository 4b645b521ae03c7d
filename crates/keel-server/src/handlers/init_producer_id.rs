use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use kafka_protocol::ResponseError;

use crate::broker::Broker;
use crate::dispatch::RequestContext;
use crate::errors::admin_error;

pub async fn handle(
    broker: &Broker,
    _ctx: &RequestContext<'_>,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let response = InitProducerIdResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    if request.transactional_id.is_some() {
        // Transactions need a transaction coordinator, which is not built
        // yet; FindCoordinator is not advertised, so clients do not get here.
        tracing::info!(
            "InitProducerId with a transactional.id refused: transactions are not supported yet"
        );
        return response.with_error_code(ResponseError::InvalidRequest.code());
    }
    // An idempotent producer gets a fresh id (epoch 0) every time, including
    // when it re-initialises after an error (KIP-360): its old sequence
    // state is abandoned with the old id.
    match broker.next_producer_id().await {
        Ok(id) => response
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(0),
        Err(e) => response.with_error_code(admin_error(&e).code()),
    }
}
