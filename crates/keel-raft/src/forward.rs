//! Requests for the active controller. A broker that is not the active
//! controller hands its admin requests (create topic, register broker,
//! heartbeat, alter ISR...) to the one that is, which decides against its
//! own state and proposes: Kafka's request forwarding. The requests and
//! answers are the application's bytes; the quorum only carries them.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use crate::limits::CONTROLLER_REQUEST_BYTES_MAX;

/// What a controller does with a request sent to it by
/// [`MetadataQuorum::forward`](crate::MetadataQuorum::forward), its own
/// included. It runs wherever the request lands, which may have stopped
/// being the active controller since the sender last heard: it decides
/// under `wait_until_active` as a local change would, and answers
/// `NOT_CONTROLLER` in its own terms when that fails. A request whose
/// connection breaks is retried by its sender, so it may arrive twice.
pub trait ControllerRequestHandler: Send + Sync + 'static {
    fn handle(&self, request: Bytes) -> Pin<Box<dyn Future<Output = Bytes> + Send>>;
}

/// The handler's answer, or its size when it is over
/// [`CONTROLLER_REQUEST_BYTES_MAX`]. Local answers are held to the bound
/// too, so that no request works only where the leader happens to be.
pub(crate) async fn answer(
    handler: &dyn ControllerRequestHandler,
    request: Bytes,
) -> Result<Bytes, usize> {
    let answer = handler.handle(request).await;
    if answer.len() > CONTROLLER_REQUEST_BYTES_MAX {
        return Err(answer.len());
    }
    Ok(answer)
}
