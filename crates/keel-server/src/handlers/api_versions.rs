use kafka_protocol::messages::api_versions_response::{
    ApiVersion, FinalizedFeatureKey, SupportedFeatureKey,
};
use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse};

use super::str_bytes;
use crate::dispatch::{supported_range, RequestContext, SUPPORTED};

pub fn supported_api_keys() -> Vec<ApiVersion> {
    SUPPORTED
        .iter()
        .filter_map(|(key, _, _)| {
            let range = supported_range(*key)?;
            Some(
                ApiVersion::default()
                    .with_api_key(*key as i16)
                    .with_min_version(range.min)
                    .with_max_version(range.max),
            )
        })
        .collect()
}

/// The metadata version Keel's records correspond to (Kafka 4.1's IV).
const METADATA_VERSION: i16 = 27;

/// Features are tagged fields from ApiVersions v3 on.
const FEATURES_VERSION: i16 = 3;

pub fn handle(ctx: &RequestContext<'_>, _request: ApiVersionsRequest) -> ApiVersionsResponse {
    let response = ApiVersionsResponse::default().with_api_keys(supported_api_keys());
    if ctx.api_version < FEATURES_VERSION {
        return response;
    }
    response
        .with_supported_features(vec![SupportedFeatureKey::default()
            .with_name(str_bytes("metadata.version"))
            .with_min_version(METADATA_VERSION)
            .with_max_version(METADATA_VERSION)])
        .with_finalized_features_epoch(0)
        .with_finalized_features(vec![FinalizedFeatureKey::default()
            .with_name(str_bytes("metadata.version"))
            .with_min_version_level(METADATA_VERSION)
            .with_max_version_level(METADATA_VERSION)])
}
