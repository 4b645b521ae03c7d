use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use kafka_protocol::messages::{WriteTxnMarkersRequest, WriteTxnMarkersResponse};
use keel_types::TopicPartition;

use crate::broker::Broker;
use crate::dispatch::RequestContext;
use crate::replica_manager::TxnMarkerEntry;

/// A transaction coordinator (another broker's, or `keel txn abort`) asks
/// this broker, as leader, to end a producer's transaction on partitions.
/// Each answer waits until the marker is in the ISR.
pub async fn handle(
    broker: &Broker,
    _ctx: &RequestContext<'_>,
    request: WriteTxnMarkersRequest,
) -> WriteTxnMarkersResponse {
    let mut markers = Vec::with_capacity(request.markers.len());
    for marker in request.markers {
        let entry = TxnMarkerEntry {
            producer_id: marker.producer_id.0,
            producer_epoch: marker.producer_epoch,
            commit: marker.transaction_result,
            coordinator_epoch: marker.coordinator_epoch,
        };
        let mut topics = Vec::with_capacity(marker.topics.len());
        for topic in marker.topics {
            // Appended one after another, replicated all at once.
            let written = futures::future::join_all(topic.partition_indexes.iter().map(|&index| {
                let tp = TopicPartition::new(topic.name.0.as_str(), index);
                async move { (index, broker.write_marker(&tp, &entry).await) }
            }))
            .await;
            let partitions = written
                .into_iter()
                .map(|(index, written)| {
                    WritableTxnMarkerPartitionResult::default()
                        .with_partition_index(index)
                        .with_error_code(written.err().map_or(0, |e| e.code()))
                })
                .collect();
            topics.push(
                WritableTxnMarkerTopicResult::default()
                    .with_name(topic.name)
                    .with_partitions(partitions),
            );
        }
        markers.push(
            WritableTxnMarkerResult::default()
                .with_producer_id(marker.producer_id)
                .with_topics(topics),
        );
    }
    WriteTxnMarkersResponse::default().with_markers(markers)
}
