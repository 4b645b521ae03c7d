//! The broker's side of transactions, around the coordinator in `keel-txn`:
//! transaction markers written on the partitions this broker leads or sent
//! to their leaders (WriteTxnMarkers), producer ids for the coordinator,
//! KIP-890 verification of transactional produce, and the coordinator
//! following the leadership of `__transaction_state` partitions.

use std::collections::{BTreeMap, HashMap};
use std::sync::Weak;
use std::time::Duration;

use futures::future::BoxFuture;
use kafka_protocol::messages::add_partitions_to_txn_request::{
    AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
};
use kafka_protocol::messages::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic,
};
use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, ProducerId, TopicName, TransactionalId, WriteTxnMarkersRequest,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use keel_metadata::controller::NewTopic;
use keel_metadata::MetadataImage;
use keel_txn::{MarkerWriter, ProducerIdSource, TxnMarker};
use keel_types::TopicPartition;

use crate::broker::{now_ms, AdminError, Broker};
use crate::coordinator_log::{OFFSETS_TOPIC, TRANSACTION_STATE_TOPIC};
use crate::errors::admin_error;
use crate::handlers::produce::replicated;
use crate::replica_manager::{AppendError, TxnMarkerEntry};

/// Kafka's `request.timeout.ms`: how long a marker may wait for the ISR.
const MARKER_REPLICATION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a marker or verification request to another broker may take.
const INTER_BROKER_TIMEOUT: Duration = Duration::from_secs(30);
/// WriteTxnMarkers v1 is the only version Kafka 4 brokers accept.
const WRITE_TXN_MARKERS_VERSION: i16 = 1;
/// AddPartitionsToTxn v4 is the first batched, broker-to-coordinator version.
const VERIFY_VERSION: i16 = 4;

/// What the coordinator in `keel-txn` reaches the rest of the broker
/// through. Weak: the broker owns the coordinator.
pub struct TxnBridge {
    pub broker: Weak<Broker>,
}

impl MarkerWriter for TxnBridge {
    fn write_markers(&self, marker: TxnMarker) -> BoxFuture<'static, Vec<(TopicPartition, i16)>> {
        let broker = self.broker.clone();
        Box::pin(async move {
            match broker.upgrade() {
                Some(broker) => broker.send_markers(&marker).await,
                // Shutting down: the coordinator's next owner resends them.
                None => marker
                    .partitions
                    .iter()
                    .map(|tp| (tp.clone(), ResponseError::CoordinatorNotAvailable.code()))
                    .collect(),
            }
        })
    }
}

impl ProducerIdSource for TxnBridge {
    fn next_producer_id(&self) -> BoxFuture<'static, Result<i64, i16>> {
        let broker = self.broker.clone();
        Box::pin(async move {
            let broker = broker
                .upgrade()
                .ok_or(ResponseError::CoordinatorNotAvailable.code())?;
            broker
                .next_producer_id()
                .await
                .map_err(|e| admin_error(&e).code())
        })
    }
}

impl Broker {
    /// Writes one transaction marker on every partition of `marker`: here
    /// for the partitions this broker leads, through WriteTxnMarkers to the
    /// leader for the others. One error code per partition, 0 = written.
    async fn send_markers(&self, marker: &TxnMarker) -> Vec<(TopicPartition, i16)> {
        let image = self.image();
        let mut results = Vec::with_capacity(marker.partitions.len());
        let mut by_leader: BTreeMap<i32, Vec<TopicPartition>> = BTreeMap::new();
        for tp in &marker.partitions {
            let Some(p) = image
                .topic_by_name(&tp.topic)
                .and_then(|t| t.partitions.get(&tp.partition))
            else {
                results.push((tp.clone(), ResponseError::UnknownTopicOrPartition.code()));
                continue;
            };
            if p.leader < 0 {
                results.push((tp.clone(), ResponseError::NotLeaderOrFollower.code()));
                continue;
            }
            by_leader.entry(p.leader).or_default().push(tp.clone());
        }
        let entry = TxnMarkerEntry {
            producer_id: marker.producer_id,
            producer_epoch: marker.producer_epoch,
            commit: marker.commit,
            coordinator_epoch: marker.coordinator_epoch,
        };
        for (leader, partitions) in by_leader {
            if leader == self.config.node_id {
                let written = futures::future::join_all(partitions.into_iter().map(|tp| async {
                    let code = self
                        .write_marker(&tp, &entry)
                        .await
                        .err()
                        .map_or(0, |e| e.code());
                    (tp, code)
                }))
                .await;
                results.extend(written);
                continue;
            }
            let request = write_txn_markers_request(marker, &partitions);
            let sent = self
                .broker_clients
                .send(
                    self,
                    leader,
                    WRITE_TXN_MARKERS_VERSION,
                    &request,
                    INTER_BROKER_TIMEOUT,
                )
                .await;
            match sent {
                Ok(response) => {
                    let mut answered: HashMap<TopicPartition, i16> = HashMap::new();
                    for m in response.markers {
                        for t in m.topics {
                            for p in t.partitions {
                                answered.insert(
                                    TopicPartition::new(t.name.0.as_str(), p.partition_index),
                                    p.error_code,
                                );
                            }
                        }
                    }
                    for tp in partitions {
                        let code = answered
                            .get(&tp)
                            .copied()
                            .unwrap_or(ResponseError::UnknownServerError.code());
                        results.push((tp, code));
                    }
                }
                Err(why) => {
                    tracing::info!(leader, %why, "sending transaction markers failed");
                    results.extend(
                        partitions
                            .into_iter()
                            .map(|tp| (tp, ResponseError::RequestTimedOut.code())),
                    );
                }
            }
        }
        results
    }

    /// Writes a marker on a partition this broker leads and waits, as
    /// Kafka does (acks=all), until the ISR has it: a marker the next
    /// leader lacked would leave the transaction open there for good.
    /// A marker in `__consumer_offsets` also ends the producer's pending
    /// offset commits.
    pub async fn write_marker(
        &self,
        tp: &TopicPartition,
        entry: &TxnMarkerEntry,
    ) -> Result<(), ResponseError> {
        // A partition not hosted here (yet) moved: the coordinator asks the
        // new leader. One that does not exist is dropped from the
        // transaction.
        let partition = self.hosted_partition(tp)?;
        let leadership = partition.leadership();
        let appended = match partition.append_marker(entry, now_ms()) {
            Ok(appended) => appended,
            Err(AppendError::NotLeader) => return Err(ResponseError::NotLeaderOrFollower),
            Err(AppendError::Storage(e)) => {
                tracing::info!(partition = %tp, error = %e, "transaction marker refused");
                return Err(crate::errors::storage_error(&e));
            }
        };
        let image = self.image();
        let min_isr = image
            .topic_by_name(&tp.topic)
            .map_or(1, |t| self.config.min_insync_replicas(&image, &t.configs));
        let deadline = tokio::time::Instant::now() + MARKER_REPLICATION_TIMEOUT;
        replicated(
            &partition,
            appended.last_offset + 1,
            leadership.leader_epoch,
            min_isr,
            deadline,
        )
        .await?;
        if tp.topic == OFFSETS_TOPIC {
            self.groups
                .complete_transaction(tp.partition, entry.producer_id, entry.commit)
                .await;
        }
        Ok(())
    }

    /// KIP-890's check before a transactional batch opens a transaction on
    /// a partition: the producer's coordinator must have the partition in
    /// the producer's ongoing transaction. Without it, a late retry of an
    /// aborted transaction's batch would open a transaction nobody ends.
    pub async fn verify_transaction(
        &self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        tp: &TopicPartition,
    ) -> Result<(), ResponseError> {
        let coordinator_partition = self.txns.partition_for(transactional_id);
        let image = self.image();
        let leader = image
            .topic_by_name(TRANSACTION_STATE_TOPIC)
            .and_then(|t| t.partitions.get(&coordinator_partition))
            .map(|p| p.leader)
            .filter(|&leader| leader >= 0)
            .ok_or(ResponseError::NotEnoughReplicas)?;
        let code = if leader == self.config.node_id {
            self.txns
                .verify(
                    transactional_id,
                    producer_id,
                    producer_epoch,
                    std::slice::from_ref(tp),
                )
                .await
                .into_iter()
                .map(|(_, code)| code)
                .find(|&code| code != 0)
                .unwrap_or(0)
        } else {
            let request = verify_request(transactional_id, producer_id, producer_epoch, tp);
            let response = self
                .broker_clients
                .send(self, leader, VERIFY_VERSION, &request, INTER_BROKER_TIMEOUT)
                .await
                .map_err(|why| {
                    tracing::info!(%why, "transaction verification did not reach the coordinator");
                    ResponseError::NotEnoughReplicas
                })?;
            std::iter::once(response.error_code)
                .chain(response.results_by_transaction.iter().flat_map(|t| {
                    t.topic_results.iter().flat_map(|r| {
                        r.results_by_partition
                            .iter()
                            .map(|p| p.partition_error_code)
                    })
                }))
                .find(|&code| code != 0)
                .unwrap_or(0)
        };
        match ResponseError::try_from_code(code) {
            None => Ok(()),
            // The coordinator moved or is loading: retriable for the producer.
            Some(
                ResponseError::NotCoordinator
                | ResponseError::CoordinatorNotAvailable
                | ResponseError::CoordinatorLoadInProgress
                | ResponseError::ConcurrentTransactions,
            ) => Err(ResponseError::NotEnoughReplicas),
            // What a transaction version 1 producer understands (Kafka's
            // AddPartitionsToTxnManager maps them the same way).
            Some(ResponseError::TransactionAbortable) => Err(ResponseError::InvalidTxnState),
            Some(ResponseError::ProducerFenced) => Err(ResponseError::InvalidProducerEpoch),
            Some(error) => Err(error),
        }
    }

    /// The transaction coordinator moves with the leadership of
    /// `__transaction_state` partitions: a partition this broker starts to
    /// lead (or leads in a new epoch) is loaded from its log, with the
    /// leader epoch as the coordinator epoch that fences markers of the
    /// previous coordinator; one it stops leading is unloaded.
    pub(crate) async fn follow_transaction_leadership(&self, image: &MetadataImage) {
        let mut followed = self.transaction_leadership.lock().await;
        let Some(change) = followed.follow(image, self.config.node_id) else {
            return;
        };
        for partition in change.lost {
            self.txns.unload_partition(partition);
        }
        for (partition, coordinator_epoch) in change.gained {
            match self.txns.load_partition(partition, coordinator_epoch).await {
                Ok(()) => tracing::info!(
                    partition,
                    coordinator_epoch,
                    "transaction coordinator loaded its partition"
                ),
                Err(e) => {
                    tracing::error!(partition, error = %e, "loading transaction state failed")
                }
            }
        }
    }

    /// Creates `__transaction_state` on the first FindCoordinator for a
    /// transactional id, as Kafka does.
    pub async fn ensure_transaction_state_topic(&self) -> Result<(), AdminError> {
        if self
            .image()
            .topic_by_name(TRANSACTION_STATE_TOPIC)
            .is_some()
        {
            return Ok(());
        }
        let brokers = self.image().brokers.len().max(1) as i16;
        let replication_factor = self
            .config
            .transaction_state_log_replication_factor
            .min(brokers);
        let min_isr = self
            .config
            .transaction_state_log_min_isr
            .min(i32::from(replication_factor));
        let topic = NewTopic {
            name: TRANSACTION_STATE_TOPIC.to_string(),
            num_partitions: self.config.txn.transaction_state_partitions,
            replication_factor,
            assignments: Default::default(),
            // Kafka's settings: compacted, so it keeps each id's latest state.
            configs: vec![
                ("cleanup.policy".into(), "compact".into()),
                ("min.insync.replicas".into(), min_isr.to_string()),
                (
                    "segment.bytes".into(),
                    self.config.transaction_state_log_segment_bytes.to_string(),
                ),
            ],
        };
        self.create_internal_topic(&topic).await
    }
}

fn write_txn_markers_request(
    marker: &TxnMarker,
    partitions: &[TopicPartition],
) -> WriteTxnMarkersRequest {
    let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for tp in partitions {
        topics.entry(&tp.topic).or_default().push(tp.partition);
    }
    WriteTxnMarkersRequest::default().with_markers(vec![WritableTxnMarker::default()
        .with_producer_id(ProducerId(marker.producer_id))
        .with_producer_epoch(marker.producer_epoch)
        .with_transaction_result(marker.commit)
        .with_coordinator_epoch(marker.coordinator_epoch)
        .with_topics(
            topics
                .into_iter()
                .map(|(name, partition_indexes)| {
                    WritableTxnMarkerTopic::default()
                        .with_name(TopicName(StrBytes::from_string(name.to_string())))
                        .with_partition_indexes(partition_indexes)
                })
                .collect(),
        )])
}

fn verify_request(
    transactional_id: &str,
    producer_id: i64,
    producer_epoch: i16,
    tp: &TopicPartition,
) -> AddPartitionsToTxnRequest {
    AddPartitionsToTxnRequest::default().with_transactions(vec![
        AddPartitionsToTxnTransaction::default()
            .with_transactional_id(TransactionalId(StrBytes::from_string(
                transactional_id.to_string(),
            )))
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(producer_epoch)
            .with_verify_only(true)
            .with_topics(vec![AddPartitionsToTxnTopic::default()
                .with_name(TopicName(StrBytes::from_string(tp.topic.clone())))
                .with_partitions(vec![tp.partition])]),
    ])
}
