use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use crate::broker::Broker;
use crate::dispatch::RequestContext;
use crate::errors::admin_error;

/// InitProducerId without a transactional id (an idempotent producer); a
/// transactional one is the transaction coordinator's.
pub async fn handle(
    broker: &Broker,
    _ctx: &RequestContext<'_>,
    _request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let response = InitProducerIdResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
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
