use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};
use kafka_protocol::ResponseError;

use super::metadata::CLUSTER_OPERATIONS_ALL;
use super::{str_bytes, AUTHORIZED_OPERATIONS_OMITTED};
use crate::broker::Broker;
use crate::dispatch::RequestContext;

/// `endpoint_type` 1 asks for brokers; 2 (controllers) is for KRaft admin
/// tools talking to a controller listener, which Keel does not expose apart.
const ENDPOINT_TYPE_BROKERS: i8 = 1;

pub fn handle(
    broker: &Broker,
    _ctx: &RequestContext<'_>,
    request: DescribeClusterRequest,
) -> DescribeClusterResponse {
    let image = broker.image();
    let response = DescribeClusterResponse::default()
        .with_endpoint_type(request.endpoint_type)
        .with_cluster_id(str_bytes(&image.cluster_id))
        .with_controller_id(BrokerId(broker.config.node_id))
        .with_cluster_authorized_operations(if request.include_cluster_authorized_operations {
            CLUSTER_OPERATIONS_ALL
        } else {
            AUTHORIZED_OPERATIONS_OMITTED
        });
    if request.endpoint_type != ENDPOINT_TYPE_BROKERS {
        return response
            .with_error_code(ResponseError::UnsupportedEndpointType.code())
            .with_error_message(Some(str_bytes("Keel serves only the broker endpoint type")));
    }
    response.with_brokers(
        image
            .brokers
            .values()
            // KIP-1073: fenced brokers too when asked (v2), so that an
            // operator sees every registered broker, as unregistering needs.
            .filter(|b| !b.fenced || request.include_fenced_brokers)
            .map(|b| {
                DescribeClusterBroker::default()
                    .with_broker_id(BrokerId(b.broker_id))
                    .with_host(str_bytes(&b.host))
                    .with_port(b.port)
                    .with_rack(b.rack.as_deref().map(str_bytes))
                    .with_is_fenced(b.fenced)
            })
            .collect(),
    )
}
