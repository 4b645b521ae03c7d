//! The listener: accepts connections and runs the broker until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use keel_types::limits::CONNECTIONS_MAX;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::broker::Broker;
use crate::connection;

/// How long a stopping broker waits for the controller to move its
/// leadership elsewhere before it stops anyway.
const CONTROLLED_SHUTDOWN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub struct Server {
    broker: Arc<Broker>,
    listener: TcpListener,
}

/// A bound listener whose broker is not open yet. Binding comes first so
/// that with port 0 the broker registers (and advertises) the real port.
pub struct BoundListener {
    listener: TcpListener,
}

impl BoundListener {
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(addr).await?,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn serve(self, broker: Arc<Broker>) -> Server {
        Server {
            broker,
            listener: self.listener,
        }
    }
}

impl Server {
    /// Serves until `shutdown` resolves, then flushes and closes the logs.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), crate::broker::BrokerError> {
        let (stop, stopped) = watch::channel(false);
        let background = tokio::spawn(self.broker.clone().run_background(stopped.clone()));
        // Bounds open connections; beyond it, clients wait in the backlog.
        let permits = Arc::new(Semaphore::new(CONNECTIONS_MAX));
        let mut connections = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                _ = &mut shutdown => break,
                permit = permits.clone().acquire_owned() => permit.expect("semaphore is never closed"),
            };
            let (stream, peer) = tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                },
            };
            let broker = self.broker.clone();
            let mut stopped = stopped.clone();
            connections.spawn(async move {
                tokio::select! {
                    _ = connection::serve(broker, stream, peer) => {}
                    _ = stopped.changed() => {}
                }
                drop(permit);
            });
            while connections.try_join_next().is_some() {}
        }
        tracing::info!("shutting down");
        self.broker
            .controlled_shutdown(CONTROLLED_SHUTDOWN_TIMEOUT)
            .await;
        let _ = stop.send(true);
        connections.shutdown().await;
        let _ = background.await;
        let broker = self.broker;
        tokio::task::spawn_blocking(move || broker.shutdown())
            .await
            .expect("shutdown task panicked")
    }
}
