//! Loading and unloading `__consumer_offsets` partitions, as Kafka's group
//! coordinator follows their leadership (`onElection`, `onResignation`).
//! A partition's records are replayed into a coordinator of their own
//! (off the lock, by the driver) while its groups' requests get
//! COORDINATOR_LOAD_IN_PROGRESS; `complete_load` then moves the groups in
//! beside those of the other partitions, which neither a load nor an unload
//! touches.

use kafka_protocol::error::ResponseError;

use super::{
    code, join_error, sync_error, Effects, GroupCoordinator, Response, TimerKey,
    OFFSETS_RETENTION_CHECK_INTERVAL_MS,
};

/// One load of a partition. A load that an unload or a newer load of the
/// same partition overtook while the log was read installs nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadId(u64);

/// Kafka's `CoordinatorState` of a partition this node coordinates.
#[derive(Debug)]
pub(super) enum PartitionState {
    /// Its records are being replayed. Transaction markers written
    /// meanwhile may lie past what the replay reads, so they are kept and
    /// applied on top of it; one the replay did read finds nothing pending
    /// the second time.
    Loading {
        load: LoadId,
        markers: Vec<(i64, bool)>,
    },
    Loaded,
}

impl GroupCoordinator {
    /// Starts loading a partition: its groups' requests get
    /// COORDINATOR_LOAD_IN_PROGRESS until `complete_load`. Groups already
    /// held for it (a reload) are dropped as by `unload`.
    pub fn begin_load(&mut self, partition: i32) -> (LoadId, Effects) {
        assert!((0..self.config.offsets_topic_partitions).contains(&partition));
        let fx = self.unload(partition);
        let load = LoadId(self.next_load);
        self.next_load += 1;
        self.partitions.insert(
            partition,
            PartitionState::Loading {
                load,
                markers: Vec::new(),
            },
        );
        (load, fx)
    }

    /// Takes over the groups that `replayed` rebuilt from the partition's
    /// records: they are served from now on, every member gets a full
    /// session to heartbeat, and the first loaded partition starts the
    /// retention scan. `None` if the load was overtaken.
    pub fn complete_load(
        &mut self,
        partition: i32,
        load: LoadId,
        mut replayed: GroupCoordinator,
        now_ms: i64,
    ) -> Option<Effects> {
        let markers = match self.partitions.get_mut(&partition) {
            Some(PartitionState::Loading { load: l, markers }) if *l == load => {
                std::mem::take(markers)
            }
            _ => return None,
        };
        // Records of groups that hash to another partition (written under
        // another `offsets.topic.num.partitions`) are not this partition's
        // to serve, and would overwrite the groups of the one that owns them.
        let n = self.config.offsets_topic_partitions;
        replayed.drop_groups(|g| keel_types::coordinator::partition_for(g, n) != partition);
        for (producer_id, commit) in markers {
            replayed.replay_end_transaction_marker(partition, producer_id, commit);
        }
        let mut fx = Effects::default();
        for group in replayed.groups.values_mut() {
            for m in group.members.values_mut() {
                Self::renew_session(&mut fx, &group.group_id, m, now_ms);
            }
        }
        replayed.complete_consumer_load(now_ms, &mut fx);
        if !self.has_loaded_partitions() {
            fx.timer(
                TimerKey::OffsetsExpiration,
                now_ms + OFFSETS_RETENTION_CHECK_INTERVAL_MS,
            );
        }
        self.groups.append(&mut replayed.groups);
        self.consumer_groups.append(&mut replayed.consumer_groups);
        self.offsets.absorb(replayed.offsets);
        self.partitions.insert(partition, PartitionState::Loaded);
        Some(fx)
    }

    /// Gives up a load whose log could not be read: the partition is not
    /// coordinated here (NOT_COORDINATOR) until loaded again.
    pub fn abandon_load(&mut self, partition: i32, load: LoadId) {
        if matches!(
            self.partitions.get(&partition),
            Some(PartitionState::Loading { load: l, .. }) if *l == load
        ) {
            self.partitions.remove(&partition);
        }
    }

    /// Stops coordinating a partition (Kafka's `onResignation`): its groups
    /// are dropped and their requests get NOT_COORDINATOR, parked ones
    /// included, so their members find the new coordinator.
    pub fn unload(&mut self, partition: i32) -> Effects {
        self.partitions.remove(&partition);
        let n = self.config.offsets_topic_partitions;
        self.drop_groups(|g| keel_types::coordinator::partition_for(g, n) == partition)
    }

    /// A COMMIT or ABORT marker the broker has just written to
    /// `offsets_partition`: applied now if the partition is loaded, on top
    /// of the replay if it is loading, and left to whoever loads it next
    /// if it is not coordinated here.
    pub fn complete_transaction(&mut self, offsets_partition: i32, producer_id: i64, commit: bool) {
        match self.partitions.get_mut(&offsets_partition) {
            Some(PartitionState::Loaded) => {
                self.replay_end_transaction_marker(offsets_partition, producer_id, commit)
            }
            Some(PartitionState::Loading { markers, .. }) => markers.push((producer_id, commit)),
            None => {}
        }
    }

    /// Why this node cannot answer for a group (Kafka's `CoordinatorRuntime`
    /// checks): NOT_COORDINATOR for a partition it does not coordinate,
    /// COORDINATOR_LOAD_IN_PROGRESS while it loads it.
    pub(crate) fn coordinator_error(&self, group_id: &str) -> Option<ResponseError> {
        match self.partitions.get(&self.partition_for(group_id)) {
            Some(PartitionState::Loaded) => None,
            Some(PartitionState::Loading { .. }) => Some(ResponseError::CoordinatorLoadInProgress),
            None => Some(ResponseError::NotCoordinator),
        }
    }

    /// Whether some partition is loading: ListGroups cannot list its groups.
    pub(crate) fn is_loading(&self) -> bool {
        self.partitions
            .values()
            .any(|p| matches!(p, PartitionState::Loading { .. }))
    }

    pub(super) fn has_loaded_partitions(&self) -> bool {
        self.partitions
            .values()
            .any(|p| matches!(p, PartitionState::Loaded))
    }

    /// Drops the groups `select` picks, with their offsets (pending ones
    /// too), answering their parked requests NOT_COORDINATOR as Kafka's
    /// `GroupMetadataManager.onUnloaded` does.
    fn drop_groups(&mut self, select: impl Fn(&str) -> bool) -> Effects {
        let mut fx = Effects::default();
        let dropped: Vec<String> = self.groups.keys().filter(|g| select(g)).cloned().collect();
        for group_id in dropped {
            let group = self.groups.remove(&group_id).expect("listed above");
            for member in group.members.values() {
                if let Some(p) = member.awaiting_join {
                    let error = code(ResponseError::NotCoordinator);
                    let response = join_error(p.version, error, &member.member_id);
                    fx.respond(p.token, Response::JoinGroup(response));
                }
                if let Some(p) = member.awaiting_sync {
                    let response = sync_error(code(ResponseError::NotCoordinator));
                    fx.respond(p.token, Response::SyncGroup(response));
                }
            }
        }
        self.consumer_groups.retain(|g, _| !select(g));
        self.offsets.remove_groups(&select);
        fx
    }
}
