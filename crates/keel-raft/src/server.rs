//! The controller listener: accepts peers' connections and hands their
//! AppendEntries, Vote and InstallSnapshot requests to the local Raft,
//! forwarded controller requests to the application's handler, and
//! observers' requests to join to `observer`. A connection that sends a bad
//! frame, or lingers, is closed; nothing a peer sends can take the node
//! down.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use crate::forward::{answer, ControllerRequestHandler};
use crate::frame::{decode, encode, read_frame, write_frame, FrameError, Request, Response};
use crate::limits::{CONTROLLER_CONNECTIONS_MAX, SNAPSHOT_BYTES_MAX};
use crate::observer::add_observer;
use crate::type_config::Raft;

pub(crate) struct ServerTimeouts {
    /// How long a connection may wait between requests.
    pub idle: Duration,
    /// How long a request may take to arrive once started, and its
    /// response to leave.
    pub request: Duration,
}

/// What the listener serves requests with.
pub(crate) struct Services {
    pub raft: Raft,
    pub requests: Arc<dyn ControllerRequestHandler>,
    pub timeouts: ServerTimeouts,
}

/// The running listener; dropping `stop` or sending on it ends the accept
/// loop and every connection.
pub(crate) struct Server {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Server {
    pub(crate) fn spawn(listener: TcpListener, services: Services) -> Server {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, Arc::new(services), stopped));
        Server { stop, task }
    }

    pub(crate) async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    services: Arc<Services>,
    mut stopped: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(CONTROLLER_CONNECTIONS_MAX));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped.changed() => {
                // Waits for the aborted tasks too, so that no response
                // leaves once `shutdown` has returned.
                connections.shutdown().await;
                return;
            }
            Some(_) = connections.join_next() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "controller listener accept failed");
                        continue;
                    }
                };
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    tracing::warn!(%peer, "controller listener full, closing connection");
                    continue;
                };
                let services = Arc::clone(&services);
                connections.spawn(async move {
                    if let Err(e) = serve(stream, &services).await {
                        tracing::warn!(%peer, error = %e, "closing controller connection");
                    }
                    drop(slot);
                });
            }
        }
    }
}

async fn serve(mut stream: TcpStream, services: &Services) -> Result<(), FrameError> {
    let Services {
        raft,
        requests,
        timeouts,
    } = services;
    stream.set_nodelay(true)?;
    loop {
        let mut first = [0u8; 1];
        match tokio::time::timeout(timeouts.idle, stream.peek(&mut first)).await {
            Err(_) | Ok(Ok(0)) => return Ok(()),
            Ok(Err(e)) => return Err(e.into()),
            Ok(Ok(_)) => {}
        }
        let body = match tokio::time::timeout(timeouts.request, read_frame(&mut stream)).await {
            Err(_) => return Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()),
            Ok(frame) => match frame? {
                Some(body) => body,
                None => return Ok(()),
            },
        };
        let response = match decode::<Request>(&body)? {
            Request::AppendEntries(rpc) => Response::AppendEntries(raft.append_entries(rpc).await),
            Request::Vote(rpc) => Response::Vote(raft.vote(rpc).await),
            Request::InstallSnapshot(rpc) => {
                // The receiving side buffers a snapshot whole, at the
                // offsets the leader names.
                let end = rpc.offset.saturating_add(rpc.data.len() as u64);
                if end > SNAPSHOT_BYTES_MAX {
                    return Err(FrameError::Decode(format!(
                        "snapshot chunk ends at {end}, past {SNAPSHOT_BYTES_MAX}"
                    )));
                }
                Response::InstallSnapshot(raft.install_snapshot(rpc).await)
            }
            Request::Forward(request) => Response::Forward(answer(&**requests, request).await),
            Request::AddObserver { node_id, addr } => {
                Response::AddObserver(add_observer(raft, node_id, addr).await)
            }
        };
        let body = encode(&response)?;
        tokio::time::timeout(timeouts.request, write_frame(&mut stream, &body))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    }
}

/// Binds the controller listener.
pub(crate) async fn bind(addr: &str) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}
