//! The one place internal errors become Kafka error codes.

use kafka_protocol::ResponseError;
use keel_metadata::controller::ControllerError;
use keel_storage::StorageError;

use crate::broker::{AdminError, BrokerError};
use crate::metadata_store::MetadataError;

pub fn storage_error(e: &StorageError) -> ResponseError {
    match e {
        StorageError::CorruptMessage { .. } => ResponseError::CorruptMessage,
        StorageError::InvalidRecord(_) => ResponseError::InvalidRecord,
        StorageError::UnsupportedMagic(_) => ResponseError::UnsupportedForMessageFormat,
        StorageError::MessageTooLarge { .. } => ResponseError::MessageTooLarge,
        StorageError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        StorageError::OutOfOrderSequence { .. } => ResponseError::OutOfOrderSequenceNumber,
        StorageError::UnknownProducerId(_) => ResponseError::UnknownProducerId,
        StorageError::InvalidProducerEpoch { .. } => ResponseError::InvalidProducerEpoch,
        StorageError::TransactionCoordinatorFenced { .. } => {
            ResponseError::TransactionCoordinatorFenced
        }
        StorageError::InvalidTxnState(_) => ResponseError::InvalidTxnState,
        StorageError::RecordListTooLarge { .. } => ResponseError::RecordListTooLarge,
        StorageError::InconsistentTopicId { .. } => ResponseError::InconsistentTopicId,
        // Disk trouble is the broker's problem, not the request's: the
        // retriable KAFKA_STORAGE_ERROR tells clients to try again later.
        _ => ResponseError::KafkaStorageError,
    }
}

pub fn controller_error(e: &ControllerError) -> ResponseError {
    match e {
        ControllerError::TopicAlreadyExists(_) => ResponseError::TopicAlreadyExists,
        ControllerError::InvalidTopic(_) => ResponseError::InvalidTopicException,
        ControllerError::InvalidPartitions(_) => ResponseError::InvalidPartitions,
        ControllerError::InvalidReplicationFactor(_) => ResponseError::InvalidReplicationFactor,
        ControllerError::InvalidReplicaAssignment(_) => ResponseError::InvalidReplicaAssignment,
        ControllerError::InvalidConfig(_) => ResponseError::InvalidConfig,
        ControllerError::UnknownTopicId => ResponseError::UnknownTopicId,
        ControllerError::UnknownTopicOrPartition => ResponseError::UnknownTopicOrPartition,
        ControllerError::InvalidRequest(_) => ResponseError::InvalidRequest,
        ControllerError::NotLeaderOrFollower => ResponseError::NotLeaderOrFollower,
        ControllerError::FencedLeaderEpoch => ResponseError::FencedLeaderEpoch,
        ControllerError::InvalidUpdateVersion => ResponseError::InvalidUpdateVersion,
        ControllerError::IneligibleReplica => ResponseError::IneligibleReplica,
        ControllerError::NoReassignmentInProgress => ResponseError::NoReassignmentInProgress,
        ControllerError::BrokerIdNotRegistered(_) => ResponseError::BrokerIdNotRegistered,
    }
}

pub fn admin_error(e: &AdminError) -> ResponseError {
    match e {
        AdminError::Controller(e) => controller_error(e),
        AdminError::Broker(e) => broker_error(e),
    }
}

pub fn broker_error(e: &BrokerError) -> ResponseError {
    tracing::error!(error = %e, "broker failure while serving a request");
    match e {
        BrokerError::Storage(e) => storage_error(e),
        BrokerError::Metadata(MetadataError::NotController(_)) => ResponseError::NotController,
        BrokerError::Metadata(_) => ResponseError::KafkaStorageError,
        BrokerError::Registration(_) => ResponseError::BrokerNotAvailable,
    }
}
