//! Stopping a quorum member completely.
//!
//! openraft's `Raft::shutdown` ends its core task but not the tasks the core
//! spawned: replication streams, vote requests, the state-machine worker and
//! its snapshot builds each finish what they are doing. A replication
//! stream in the middle of an AppendEntries then delivers it after
//! `shutdown` returned, to a peer that may have restarted meanwhile and that
//! still takes this node for its leader: the "stopped" leader replicates,
//! and an entry it appended alone reaches a majority after all. So every
//! such task holds a [`Running`] while it may act, RPCs are abandoned the
//! moment the node stops, and [`Stopper::stop`] returns only once every
//! `Running` is gone.

use std::future::Future;

use tokio::sync::watch;

/// Held by the quorum; `stop` ends it.
pub(crate) struct Stopper(watch::Sender<bool>);

/// Held by everything that may still act for the node after openraft's core
/// has stopped.
#[derive(Clone)]
pub(crate) struct Running(watch::Receiver<bool>);

impl Stopper {
    pub(crate) fn new() -> (Stopper, Running) {
        let (tx, rx) = watch::channel(false);
        (Stopper(tx), Running(rx))
    }

    /// Abandons the RPCs in flight, refuses new ones, and waits until every
    /// holder of a [`Running`] has let go of it.
    pub(crate) async fn stop(self) {
        self.0.send_replace(true);
        self.0.closed().await;
    }
}

impl Running {
    /// `work`'s output, or `None` if the node stops first (or had already:
    /// then `work` is never polled, so nothing of it reaches the wire).
    pub(crate) async fn unless_stopped<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        let mut stopped = self.0.clone();
        tokio::select! {
            biased;
            _ = stopped.wait_for(|&s| s) => None,
            out = work => Some(out),
        }
    }
}
