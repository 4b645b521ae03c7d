//! openraft's state machine: committed entries go to the application's
//! [`StateMachineApply`] in log order; snapshots are the application's
//! opaque bytes, kept in `.checkpoint` files (see `snapshot`).

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use keel_storage::StorageError;
use keel_types::{LeaderEpoch, Offset};
use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, LogId, RaftSnapshotBuilder, StorageIOError,
};
use tokio::sync::Notify;

use crate::snapshot::{snapshot_id, SnapshotStore, StoredSnapshot};
use crate::stop::Running;
use crate::type_config::{
    leader_epoch, offset, Entry, RaftStorageError, Snapshot, SnapshotMeta, StoredMembership,
    TypeConfig,
};

/// What the broker implements to follow the metadata log: Kafka's
/// `RaftClient.Listener` (`handleCommit`, `handleLoadSnapshot`) plus the
/// snapshot writer. Every method runs on the quorum's state-machine task,
/// one at a time, so they see a consistent state; keep them quick (no
/// blocking I/O).
pub trait StateMachineApply: Send + Sync + 'static {
    /// Applies the records of one committed proposal, in log order. All
    /// records of a proposal share its `offset`; `leader_epoch` is the
    /// epoch of the controller that proposed it.
    fn apply(&mut self, offset: Offset, leader_epoch: LeaderEpoch, records: &[Bytes]);

    /// The application's whole state as of the last applied offset.
    fn snapshot(&self) -> Bytes;

    /// Replaces the application's state with a snapshot's, taken at
    /// `last_offset`: the newest snapshot on disk at start, or one sent by
    /// the leader to a voter that fell behind its log. An error here is
    /// fatal to the quorum member.
    fn install_snapshot(&mut self, last_offset: Offset, snapshot: &[u8]) -> Result<(), String>;
}

/// Asks for a snapshot once `metadata.log.max.record.bytes.between.snapshots`
/// record bytes have been applied since the last one (openraft only counts
/// entries), and again on every apply until one is taken: openraft ignores
/// the request while a snapshot is being built.
pub(crate) struct SnapshotTrigger {
    applied_bytes: AtomicU64,
    bytes_between_snapshots: u64,
    pub due: Notify,
}

impl SnapshotTrigger {
    pub(crate) fn new(bytes_between_snapshots: u64) -> SnapshotTrigger {
        SnapshotTrigger {
            applied_bytes: AtomicU64::new(0),
            bytes_between_snapshots,
            due: Notify::new(),
        }
    }

    fn applied(&self, bytes: u64) {
        let before = self.applied_bytes.fetch_add(bytes, Ordering::Relaxed);
        if before.saturating_add(bytes) >= self.bytes_between_snapshots {
            self.due.notify_one();
        }
    }

    fn reset(&self) {
        self.applied_bytes.store(0, Ordering::Relaxed);
    }
}

fn snapshot_error(
    meta: Option<&SnapshotMeta>,
    verb: ErrorVerb,
    e: &dyn std::fmt::Display,
) -> RaftStorageError {
    let subject = ErrorSubject::Snapshot(meta.map(SnapshotMeta::signature));
    StorageIOError::new(subject, verb, AnyError::error(e)).into()
}

pub(crate) struct StateMachine {
    app: Box<dyn StateMachineApply>,
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership,
    snapshots: SnapshotStore,
    trigger: Arc<SnapshotTrigger>,
    /// openraft's state-machine worker owns this and outlives its core:
    /// shutdown waits for it to be dropped (see `stop`).
    running: Running,
}

impl StateMachine {
    /// Starts from `latest`, the newest snapshot on disk, if any.
    pub(crate) fn new(
        mut app: Box<dyn StateMachineApply>,
        snapshots: SnapshotStore,
        latest: Option<StoredSnapshot>,
        trigger: Arc<SnapshotTrigger>,
        running: Running,
    ) -> Result<StateMachine, StorageError> {
        let (last_applied, membership) = match latest {
            Some(s) => {
                let last = s
                    .meta
                    .last_log_id
                    .expect("stored snapshots have a last entry");
                app.install_snapshot(offset(last.index), &s.data)
                    .map_err(|why| StorageError::Corrupt(format!("snapshot {last}: {why}")))?;
                (Some(last), s.meta.last_membership)
            }
            None => (None, StoredMembership::default()),
        };
        Ok(StateMachine {
            app,
            last_applied,
            membership,
            snapshots,
            trigger,
            running,
        })
    }

    fn meta(&self) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id: self.last_applied.map_or_else(String::new, snapshot_id),
        }
    }
}

/// A snapshot taken on the state-machine task, written out on openraft's
/// snapshot task.
pub(crate) struct SnapshotBuilder {
    meta: SnapshotMeta,
    data: Bytes,
    snapshots: SnapshotStore,
    /// Builds run in tasks of their own, which may write after the worker
    /// has gone.
    _running: Running,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, RaftStorageError> {
        if self.meta.last_log_id.is_some() {
            let (meta, data, store) =
                (self.meta.clone(), self.data.clone(), self.snapshots.clone());
            tokio::task::spawn_blocking(move || store.save(&meta, &data))
                .await
                .expect("snapshot writer panicked")
                .map_err(|e| snapshot_error(Some(&self.meta), ErrorVerb::Write, &e))?;
        }
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(Cursor::new(self.data.to_vec())),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership), RaftStorageError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>, RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut responses = Vec::new();
        for entry in entries {
            let id = entry.log_id;
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(proposal) => {
                    let epoch = leader_epoch(id.leader_id.term).expect("terms in the log fit i32");
                    self.app.apply(offset(id.index), epoch, &proposal.records);
                    self.trigger
                        .applied(proposal.records.iter().map(|r| r.len() as u64).sum());
                }
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(id), m);
                }
            }
            self.last_applied = Some(id);
            responses.push(());
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        self.trigger.reset();
        SnapshotBuilder {
            meta: self.meta(),
            data: self.app.snapshot(),
            snapshots: self.snapshots.clone(),
            _running: self.running.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, RaftStorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), RaftStorageError> {
        let last = meta
            .last_log_id
            .ok_or_else(|| snapshot_error(Some(meta), ErrorVerb::Read, &"snapshot of nothing"))?;
        let data = Bytes::from(snapshot.into_inner());
        let (m, store, bytes) = (meta.clone(), self.snapshots.clone(), data.clone());
        tokio::task::spawn_blocking(move || store.save(&m, &bytes))
            .await
            .expect("snapshot writer panicked")
            .map_err(|e| snapshot_error(Some(meta), ErrorVerb::Write, &e))?;
        self.app
            .install_snapshot(offset(last.index), &data)
            .map_err(|why| snapshot_error(Some(meta), ErrorVerb::Read, &why))?;
        self.last_applied = Some(last);
        self.membership = meta.last_membership.clone();
        self.trigger.reset();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, RaftStorageError> {
        let store = self.snapshots.clone();
        let latest = tokio::task::spawn_blocking(move || store.latest())
            .await
            .expect("snapshot reader panicked")
            .map_err(|e| snapshot_error(None, ErrorVerb::Read, &e))?;
        Ok(latest.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
