//! The classic group coordinator as a deterministic state machine (Kafka's
//! `CoordinatorShard` shape): requests and timers go in with the time as an
//! argument, `Effects` come out as data. Nothing here sleeps, spawns or does
//! I/O; `service.rs` appends the records, releases the responses and arms the
//! timers.
//!
//! Responses that wait (JoinGroup until the join phase ends, SyncGroup until
//! the leader's assignment) are parked under the caller's `RequestToken` and
//! come out in the `Effects` of a later call.

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    ConsumerGroupHeartbeatResponse, DeleteGroupsResponse, HeartbeatResponse, JoinGroupResponse,
    LeaveGroupResponse, OffsetCommitResponse, OffsetDeleteResponse, SyncGroupResponse,
    TxnOffsetCommitResponse,
};
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use crate::consumer_group::ConsumerGroup;
use crate::group::{Group, GroupState};
use crate::member::Member;
use crate::offsets::Offsets;
use crate::records::{self, Record, RecordError};
use crate::GroupConfig;

mod admin;
mod join;
mod loading;
mod offsets;
mod sync_heartbeat_leave;

pub use loading::LoadId;
use loading::PartitionState;

pub use offsets::txn_commit_answer;
pub(crate) use offsets::{commit_answer, Committer};

/// How often the coordinator looks for offsets past retention
/// (Kafka's `offsets.retention.check.interval.ms` default).
pub const OFFSETS_RETENTION_CHECK_INTERVAL_MS: i64 = 600_000;

/// Identifies one request whose response may be released later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestToken(pub u64);

/// A timer the coordinator wants to fire at a deadline. Deadlines live in the
/// state machine; a timer that fires early or for a stale state is ignored
/// (or re-armed), so the driver never needs to cancel one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimerKey {
    /// The initial rebalance delay or the rebalance timeout of a group in
    /// PreparingRebalance.
    Join { group_id: String },
    /// The session timeout of a member, or the deadline of a member id
    /// handed out with MEMBER_ID_REQUIRED.
    Session { group_id: String, member_id: String },
    /// Members that completed the join but have not synced within the
    /// rebalance timeout.
    PendingSync { group_id: String },
    /// The periodic scan for offsets past retention.
    OffsetsExpiration,
    /// The session timeout of a KIP-848 consumer group member.
    ConsumerSession { group_id: String, member_id: String },
    /// The rebalance timeout of a consumer group member asked to revoke.
    ConsumerRebalance { group_id: String, member_id: String },
}

impl TimerKey {
    /// The group the timer is for; `None` for the retention scan, which is
    /// the whole coordinator's.
    pub fn group_id(&self) -> Option<&str> {
        match self {
            TimerKey::Join { group_id }
            | TimerKey::Session { group_id, .. }
            | TimerKey::PendingSync { group_id }
            | TimerKey::ConsumerSession { group_id, .. }
            | TimerKey::ConsumerRebalance { group_id, .. } => Some(group_id),
            TimerKey::OffsetsExpiration => None,
        }
    }
}

/// A response the service hands to the request that holds its token.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    JoinGroup(JoinGroupResponse),
    SyncGroup(SyncGroupResponse),
    Heartbeat(HeartbeatResponse),
    LeaveGroup(LeaveGroupResponse),
    OffsetCommit(OffsetCommitResponse),
    TxnOffsetCommit(TxnOffsetCommitResponse),
    OffsetDelete(OffsetDeleteResponse),
    DeleteGroups(DeleteGroupsResponse),
    ConsumerGroupHeartbeat(ConsumerGroupHeartbeatResponse),
}

impl Response {
    /// The same response, failed with `code` (used when the records it
    /// depends on could not be appended).
    pub fn fail(self, code: i16) -> Response {
        match self {
            Response::JoinGroup(r) => Response::JoinGroup(r.with_error_code(code)),
            Response::SyncGroup(r) => Response::SyncGroup(
                r.with_error_code(code)
                    .with_assignment(Bytes::new())
                    .with_protocol_type(None)
                    .with_protocol_name(None),
            ),
            Response::Heartbeat(r) => Response::Heartbeat(r.with_error_code(code)),
            Response::LeaveGroup(r) => Response::LeaveGroup(r.with_error_code(code)),
            Response::OffsetCommit(mut r) => {
                for t in &mut r.topics {
                    for p in &mut t.partitions {
                        p.error_code = code;
                    }
                }
                Response::OffsetCommit(r)
            }
            Response::TxnOffsetCommit(mut r) => {
                for t in &mut r.topics {
                    for p in &mut t.partitions {
                        p.error_code = code;
                    }
                }
                Response::TxnOffsetCommit(r)
            }
            Response::OffsetDelete(r) => {
                Response::OffsetDelete(r.with_error_code(code).with_topics(Vec::new()))
            }
            Response::DeleteGroups(mut r) => {
                for g in &mut r.results {
                    g.error_code = code;
                }
                Response::DeleteGroups(r)
            }
            Response::ConsumerGroupHeartbeat(r) => Response::ConsumerGroupHeartbeat(
                ConsumerGroupHeartbeatResponse::default()
                    .with_error_code(code)
                    .with_member_id(r.member_id),
            ),
        }
    }
}

/// One record for `__consumer_offsets`: partition, key, value (`None` = tombstone).
pub type OutRecord = (i32, Vec<u8>, Option<Vec<u8>>);

/// The producer whose transaction a batch of records belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransactionalProducer {
    pub producer_id: i64,
    pub producer_epoch: i16,
}

/// What a call asks its driver to do, in this order: append `records`, then
/// release `responses`, then arm `timers`.
#[derive(Debug, Default)]
pub struct Effects {
    pub records: Vec<OutRecord>,
    pub responses: Vec<(RequestToken, Response)>,
    pub timers: Vec<(TimerKey, i64)>,
    /// Set by TxnOffsetCommit: `records` are one transactional batch of
    /// this producer, and once the log has taken them the driver replays
    /// them (`GroupCoordinator::replay` with the producer id) before it
    /// releases the response. Their offsets enter the state only then, so a
    /// batch the log refuses (a fenced producer) leaves nothing pending.
    pub transactional: Option<TransactionalProducer>,
}

impl Effects {
    pub(crate) fn respond(&mut self, token: RequestToken, response: Response) {
        self.responses.push((token, response));
    }

    pub(crate) fn timer(&mut self, key: TimerKey, deadline_ms: i64) {
        self.timers.push((key, deadline_ms));
    }
}

/// What the request header says about the client, and the id material a
/// new member gets (passed in so the state machine stays deterministic).
#[derive(Debug, Clone)]
pub struct JoinContext {
    pub client_id: String,
    pub client_host: String,
    pub member_uuid: Uuid,
}

const NONE: i16 = 0;

fn code(e: ResponseError) -> i16 {
    e.code()
}

fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

/// The group coordinator of the `__consumer_offsets` partitions this node
/// leads. Groups, consumer groups and offsets are held only for partitions
/// in `partitions` that are loaded (`loading.rs`).
#[derive(Debug)]
pub struct GroupCoordinator {
    pub(crate) config: GroupConfig,
    pub(crate) groups: BTreeMap<String, Group>,
    /// KIP-848 consumer groups (`consumer_group.rs`); a group id is in at
    /// most one of `groups` and `consumer_groups`.
    pub(crate) consumer_groups: BTreeMap<String, ConsumerGroup>,
    offsets: Offsets,
    /// The partitions this node coordinates; requests for groups of other
    /// partitions get NOT_COORDINATOR.
    partitions: BTreeMap<i32, PartitionState>,
    /// The next `LoadId`.
    next_load: u64,
}

impl GroupCoordinator {
    pub fn new(config: GroupConfig) -> Self {
        assert!(config.offsets_topic_partitions > 0);
        assert!(config.group_min_session_timeout_ms <= config.group_max_session_timeout_ms);
        assert!(config.group_initial_rebalance_delay_ms >= 0);
        GroupCoordinator {
            config,
            groups: BTreeMap::new(),
            consumer_groups: BTreeMap::new(),
            offsets: Offsets::default(),
            partitions: BTreeMap::new(),
            next_load: 0,
        }
    }

    pub fn config(&self) -> &GroupConfig {
        &self.config
    }

    pub fn partition_for(&self, group_id: &str) -> i32 {
        keel_types::coordinator::partition_for(group_id, self.config.offsets_topic_partitions)
    }

    pub fn group(&self, group_id: &str) -> Option<&Group> {
        self.groups.get(group_id)
    }

    pub fn offsets(&self) -> &Offsets {
        &self.offsets
    }

    // ------------------------------------------------------------ replay

    /// Applies one `__consumer_offsets` record; `producer_id` is that of its
    /// batch when the batch is transactional, whose offsets stay pending
    /// until the producer's marker (`replay_end_transaction_marker`). Keys of
    /// other coordinators (share groups) are skipped.
    pub fn replay(
        &mut self,
        key: &[u8],
        value: Option<&[u8]>,
        producer_id: Option<i64>,
    ) -> Result<(), RecordError> {
        match records::decode(key, value)? {
            Record::OffsetCommit {
                group_id,
                topic,
                partition,
                value,
            } => match value {
                Some(v) => {
                    let ts = v.commit_timestamp_ms;
                    if !self.consumer_groups.contains_key(&group_id) {
                        self.groups
                            .entry(group_id.clone())
                            .or_insert_with(|| Group::new(group_id.clone(), ts));
                    }
                    match producer_id {
                        None => self.offsets.put(&group_id, &topic, partition, v),
                        Some(producer_id) => {
                            self.offsets
                                .put_pending(producer_id, &group_id, &topic, partition, v)
                        }
                    }
                }
                None => {
                    self.offsets.remove(&group_id, &topic, partition);
                }
            },
            Record::GroupMetadata { group_id, value } => match value {
                Some(v) => {
                    let group = Group::from_record(group_id.clone(), &v);
                    self.groups.insert(group_id, group);
                }
                None => {
                    self.groups.remove(&group_id);
                    self.offsets.remove_group(&group_id);
                }
            },
            Record::ConsumerGroup(record) => self.replay_consumer_group(record),
            Record::Other { .. } => {}
        }
        Ok(())
    }

    /// Applies a COMMIT (`commit`) or ABORT marker of `producer_id` written to
    /// `offsets_partition` (Kafka's `replayEndTransactionMarker`): the
    /// producer's pending offsets of the groups in that partition are
    /// committed or dropped. Groups of other partitions wait for their own
    /// marker; a producer with nothing pending is ignored. A marker the
    /// broker just wrote goes through `complete_transaction`, which knows
    /// whether the partition is loaded.
    pub fn replay_end_transaction_marker(
        &mut self,
        offsets_partition: i32,
        producer_id: i64,
        commit: bool,
    ) {
        let partitions = self.config.offsets_topic_partitions;
        self.offsets
            .complete_transaction(producer_id, commit, |group_id| {
                keel_types::coordinator::partition_for(group_id, partitions) == offsets_partition
            });
    }

    // ------------------------------------------------------------ shared

    /// Restarts a member's session: its deadline moves to `now + session
    /// timeout` and the session timer is armed for it.
    pub(super) fn renew_session(
        fx: &mut Effects,
        group_id: &str,
        member: &mut Member,
        now_ms: i64,
    ) {
        member.session_deadline_ms = now_ms + i64::from(member.session_timeout_ms);
        fx.timer(
            TimerKey::Session {
                group_id: group_id.to_owned(),
                member_id: member.member_id.clone(),
            },
            member.session_deadline_ms,
        );
    }

    /// Drops a deleted group's offsets and writes the tombstones that delete
    /// it and them from `__consumer_offsets`.
    fn tombstone_group(&mut self, group_id: &str, fx: &mut Effects) {
        let partition = self.partition_for(group_id);
        for (topic, p) in self.offsets.remove_group(group_id) {
            fx.records.push((
                partition,
                records::offset_commit_key(group_id, &topic, p),
                None,
            ));
        }
        fx.records
            .push((partition, records::group_metadata_key(group_id), None));
    }

    /// Removes a member, answers its parked requests with UNKNOWN_MEMBER_ID
    /// and lets the group rebalance without it.
    fn remove_member(&mut self, group_id: &str, member_id: &str, now_ms: i64, fx: &mut Effects) {
        let group = self.groups.get_mut(group_id).expect("group exists");
        let Some(member) = group.remove_member(member_id) else {
            return;
        };
        if let Some(p) = member.awaiting_join {
            fx.respond(
                p.token,
                Response::JoinGroup(join_error(
                    p.version,
                    code(ResponseError::UnknownMemberId),
                    member_id,
                )),
            );
        }
        if let Some(p) = member.awaiting_sync {
            fx.respond(
                p.token,
                Response::SyncGroup(sync_error(code(ResponseError::UnknownMemberId))),
            );
        }
        match group.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.prepare_rebalance(group_id, now_ms, fx)
            }
            GroupState::PreparingRebalance => self.maybe_complete_join(group_id, now_ms, fx),
            GroupState::Empty | GroupState::Dead => {}
        }
    }

    // ------------------------------------------------------------ timers

    /// Fires a timer. Timers whose deadline moved or whose state passed are
    /// re-armed or ignored, as are those of groups not held here (their
    /// partition was unloaded).
    pub fn on_timer(&mut self, key: &TimerKey, now_ms: i64) -> Effects {
        let mut fx = Effects::default();
        match key {
            TimerKey::Join { group_id } => self.on_join_timer(group_id, now_ms, &mut fx),
            TimerKey::Session {
                group_id,
                member_id,
            } => self.on_session_timer(group_id, member_id, now_ms, &mut fx),
            TimerKey::PendingSync { group_id } => {
                self.on_pending_sync_timer(group_id, now_ms, &mut fx)
            }
            TimerKey::OffsetsExpiration => {
                self.expire_offsets(now_ms, &mut fx);
                // With no partition left there is nothing to scan; the next
                // load starts the scan again.
                if self.has_loaded_partitions() {
                    fx.timer(
                        TimerKey::OffsetsExpiration,
                        now_ms + OFFSETS_RETENTION_CHECK_INTERVAL_MS,
                    );
                }
            }
            TimerKey::ConsumerSession {
                group_id,
                member_id,
            }
            | TimerKey::ConsumerRebalance {
                group_id,
                member_id,
            } => {
                let revocation = matches!(key, TimerKey::ConsumerRebalance { .. });
                let before = self.consumer_groups.get(group_id).cloned();
                self.on_consumer_timer(group_id, member_id, revocation, now_ms, &mut fx);
                self.emit_consumer_group_diff(group_id, before.as_ref(), &mut fx);
            }
        }
        fx
    }

    fn on_join_timer(&mut self, group_id: &str, now_ms: i64, fx: &mut Effects) {
        let initial_delay_ms = i64::from(self.config.group_initial_rebalance_delay_ms);
        let Some(group) = self.groups.get_mut(group_id) else {
            return;
        };
        let Some(deadline) = group.join_deadline_ms else {
            return;
        };
        if group.state != GroupState::PreparingRebalance {
            return;
        }
        if deadline > now_ms {
            fx.timer(
                TimerKey::Join {
                    group_id: group_id.to_owned(),
                },
                deadline,
            );
            return;
        }
        if let Some(delay) = &mut group.initial_delay {
            if delay.new_member_added && delay.remaining_ms > 0 {
                // Members keep arriving: wait a little longer, within the
                // rebalance timeout.
                let extension = initial_delay_ms.min(delay.remaining_ms);
                delay.remaining_ms = (delay.remaining_ms - initial_delay_ms).max(0);
                delay.new_member_added = false;
                let deadline = now_ms + extension;
                group.join_deadline_ms = Some(deadline);
                fx.timer(
                    TimerKey::Join {
                        group_id: group_id.to_owned(),
                    },
                    deadline,
                );
                return;
            }
        }
        self.complete_join(group_id, now_ms, fx);
    }

    fn on_session_timer(&mut self, group_id: &str, member_id: &str, now_ms: i64, fx: &mut Effects) {
        let Some(group) = self.groups.get_mut(group_id) else {
            return;
        };
        let key = || TimerKey::Session {
            group_id: group_id.to_owned(),
            member_id: member_id.to_owned(),
        };
        if let Some(&deadline) = group.pending_members.get(member_id) {
            if deadline > now_ms {
                fx.timer(key(), deadline);
            } else {
                group.pending_members.remove(member_id);
                self.maybe_complete_join(group_id, now_ms, fx);
            }
            return;
        }
        let Some(member) = group.members.get_mut(member_id) else {
            return;
        };
        if member.session_deadline_ms > now_ms {
            fx.timer(key(), member.session_deadline_ms);
            return;
        }
        if member.awaiting_join.is_some() || member.awaiting_sync.is_some() {
            // A member with a parked request is alive; the rebalance and
            // pending-sync timeouts bound its wait instead.
            member.session_deadline_ms = now_ms + i64::from(member.session_timeout_ms);
            fx.timer(key(), member.session_deadline_ms);
            return;
        }
        tracing::info!(group_id, member_id, "member session expired");
        self.remove_member(group_id, member_id, now_ms, fx);
    }

    fn on_pending_sync_timer(&mut self, group_id: &str, now_ms: i64, fx: &mut Effects) {
        let Some(group) = self.groups.get(group_id) else {
            return;
        };
        let Some(deadline) = group.pending_sync_deadline_ms else {
            return;
        };
        if deadline > now_ms {
            fx.timer(
                TimerKey::PendingSync {
                    group_id: group_id.to_owned(),
                },
                deadline,
            );
            return;
        }
        if !matches!(
            group.state,
            GroupState::CompletingRebalance | GroupState::Stable
        ) {
            return;
        }
        let late: Vec<String> = group.pending_sync.iter().cloned().collect();
        self.groups
            .get_mut(group_id)
            .expect("group")
            .pending_sync_deadline_ms = None;
        for member_id in late {
            tracing::info!(group_id, member_id, "member did not sync in time");
            self.remove_member(group_id, &member_id, now_ms, fx);
        }
    }
}

/// Kafka's `ClassicGroup.validateMember`.
fn validate_member(
    group: &Group,
    member_id: &str,
    instance: Option<&str>,
) -> Result<(), ResponseError> {
    match instance {
        Some(instance) => match group.static_members.get(instance) {
            None => Err(ResponseError::UnknownMemberId),
            Some(current) if current != member_id => Err(ResponseError::FencedInstanceId),
            Some(_) => Ok(()),
        },
        None if group.members.contains_key(member_id) => Ok(()),
        None => Err(ResponseError::UnknownMemberId),
    }
}

pub(crate) fn join_error(version: i16, error: i16, member_id: &str) -> JoinGroupResponse {
    JoinGroupResponse::default()
        .with_error_code(error)
        .with_generation_id(-1)
        .with_protocol_name(if version >= 7 { None } else { Some(sb("")) })
        .with_leader(sb(""))
        .with_member_id(sb(member_id))
}

fn sync_error(error: i16) -> SyncGroupResponse {
    SyncGroupResponse::default().with_error_code(error)
}
