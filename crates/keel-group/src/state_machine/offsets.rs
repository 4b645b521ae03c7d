//! OffsetCommit, TxnOffsetCommit, OffsetFetch, OffsetDelete and offset
//! expiry.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::txn_offset_commit_request::{
    TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
};
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{
    OffsetCommitRequest, OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse,
    OffsetFetchRequest, OffsetFetchResponse, TopicName, TxnOffsetCommitRequest,
    TxnOffsetCommitResponse,
};
use uuid::Uuid;

use crate::group::{Group, GroupState};
use crate::records::{self, OffsetCommitValue};

use super::{
    code, sb, validate_member, Effects, GroupCoordinator, RequestToken, Response,
    TransactionalProducer, NONE,
};

/// Who commits what, as OffsetCommit and TxnOffsetCommit both say it.
pub(crate) struct Committer<'a> {
    pub group_id: &'a str,
    pub generation_id_or_member_epoch: i32,
    pub member_id: &'a str,
    pub group_instance_id: Option<&'a str>,
    /// The request's version.
    pub version: i16,
    pub topics: CommittedTopics<'a>,
}

impl Committer<'_> {
    /// TxnOffsetCommit, which Kafka validates with a few exceptions.
    pub fn transactional(&self) -> bool {
        matches!(self.topics, CommittedTopics::Transactional(_))
    }
}

/// The topics a commit names, in its request's own types: read only when a
/// member's older epoch has its partitions checked one by one.
pub(crate) enum CommittedTopics<'a> {
    Offset(&'a [OffsetCommitRequestTopic]),
    Transactional(&'a [TxnOffsetCommitRequestTopic]),
}

impl CommittedTopics<'_> {
    /// Whether `accept` holds for every (topic name, partition) committed.
    pub fn all(&self, mut accept: impl FnMut(&str, i32) -> bool) -> bool {
        match self {
            CommittedTopics::Offset(topics) => topics
                .iter()
                .all(|t| (t.partitions.iter()).all(|p| accept(t.name.as_str(), p.partition_index))),
            CommittedTopics::Transactional(topics) => topics
                .iter()
                .all(|t| (t.partitions.iter()).all(|p| accept(t.name.as_str(), p.partition_index))),
        }
    }
}

/// One partition of an OffsetFetch answer: its index, its committed offset
/// (or the `-1` placeholder) and its error.
type FetchedPartition = (i32, OffsetCommitValue, i16);

/// The answer for one topic of an OffsetCommit, `error` deciding each
/// partition's. It echoes both the topic's name and its id: kafka-protocol
/// writes whichever of the two the negotiated version has (the name to v9,
/// the id from v10).
pub(crate) fn commit_answer(
    topic: &OffsetCommitRequestTopic,
    mut error: impl FnMut(&OffsetCommitRequestPartition) -> i16,
) -> OffsetCommitResponseTopic {
    let partitions = topic
        .partitions
        .iter()
        .map(|p| {
            OffsetCommitResponsePartition::default()
                .with_partition_index(p.partition_index)
                .with_error_code(error(p))
        })
        .collect();
    OffsetCommitResponseTopic::default()
        .with_name(topic.name.clone())
        .with_topic_id(topic.topic_id)
        .with_partitions(partitions)
}

/// The answer for one topic of a TxnOffsetCommit, `error` deciding each
/// partition's.
pub fn txn_commit_answer(
    topic: &TxnOffsetCommitRequestTopic,
    mut error: impl FnMut(&TxnOffsetCommitRequestPartition) -> i16,
) -> TxnOffsetCommitResponseTopic {
    let partitions = topic
        .partitions
        .iter()
        .map(|p| {
            TxnOffsetCommitResponsePartition::default()
                .with_partition_index(p.partition_index)
                .with_error_code(error(p))
        })
        .collect();
    TxnOffsetCommitResponseTopic::default()
        .with_name(topic.name.clone())
        .with_partitions(partitions)
}

impl GroupCoordinator {
    pub(super) fn expire_offsets(&mut self, now_ms: i64, fx: &mut Effects) {
        let retention_ms = self.config.offsets_retention_ms;
        let candidates: Vec<String> = self
            .groups
            .keys()
            .chain(self.consumer_groups.keys())
            .chain(self.offsets.group_ids())
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for group_id in candidates {
            let partition = self.partition_for(&group_id);
            if let Some(cg) = self.consumer_groups.get(&group_id) {
                // Offsets of a consumer group expire only while it is empty,
                // counted from when it became empty, and (as Kafka keeps
                // such a group) no transaction holds offsets of it.
                if !cg.members.is_empty()
                    || now_ms.saturating_sub(cg.state_timestamp_ms) < retention_ms
                    || self.offsets.has_open_transactions(&group_id)
                {
                    continue;
                }
                for (topic, p) in self.offsets.remove_group(&group_id) {
                    fx.records.push((
                        partition,
                        records::offset_commit_key(&group_id, &topic, p),
                        None,
                    ));
                }
                self.remove_consumer_group(&group_id, fx);
                continue;
            }
            let expired =
                self.offsets
                    .expired(self.groups.get(&group_id), &group_id, retention_ms, now_ms);
            for (topic, p) in expired {
                self.offsets.remove(&group_id, &topic, p);
                fx.records.push((
                    partition,
                    records::offset_commit_key(&group_id, &topic, p),
                    None,
                ));
            }
            let empty = self
                .groups
                .get(&group_id)
                .is_some_and(|g| g.state == GroupState::Empty && g.members.is_empty());
            if empty
                && !self.offsets.has_offsets(&group_id)
                && !self.offsets.has_open_transactions(&group_id)
            {
                self.groups.remove(&group_id);
                fx.records
                    .push((partition, records::group_metadata_key(&group_id), None));
            }
        }
    }

    // ------------------------------------------------------------ offsets

    /// OffsetCommit, every topic named: the service resolves v10's topic
    /// ids to names first (`topic_ids.rs`), so all versions commit alike.
    pub fn offset_commit(
        &mut self,
        token: RequestToken,
        req: &OffsetCommitRequest,
        version: i16,
        now_ms: i64,
    ) -> Effects {
        let mut fx = Effects::default();
        let group_id = req.group_id.0.to_string();
        let partition = self.partition_for(&group_id);
        let committer = Committer {
            group_id: &group_id,
            generation_id_or_member_epoch: req.generation_id_or_member_epoch,
            member_id: &req.member_id,
            group_instance_id: req.group_instance_id.as_deref(),
            version,
            topics: CommittedTopics::Offset(&req.topics),
        };
        let group_error = self.validate_offset_commit(&committer, now_ms);
        let mut topics = Vec::with_capacity(req.topics.len());
        for t in &req.topics {
            let topic = t.name.0.to_string();
            topics.push(commit_answer(t, |p| {
                if group_error != NONE {
                    return group_error;
                }
                let metadata = p.committed_metadata.as_deref();
                let value = match self.commit_value(
                    p.committed_offset,
                    p.committed_leader_epoch,
                    metadata,
                    now_ms,
                ) {
                    Ok(value) => value,
                    Err(error) => return error,
                };
                fx.records.push((
                    partition,
                    records::offset_commit_key(&group_id, &topic, p.partition_index),
                    Some(value.encode()),
                ));
                self.offsets
                    .put(&group_id, &topic, p.partition_index, value);
                NONE
            }));
        }
        fx.respond(
            token,
            Response::OffsetCommit(OffsetCommitResponse::default().with_topics(topics)),
        );
        fx
    }

    /// TxnOffsetCommit (Kafka's `commitTransactionalOffset`): validated as
    /// OffsetCommit, its records go to the log as one transactional batch of
    /// the request's producer (`Effects::transactional`), and their offsets
    /// stay pending until that producer's transaction ends
    /// (`replay_end_transaction_marker`). v3+ carries the member fields,
    /// checked when given; earlier versions decode to none (generation -1,
    /// no member id). Nothing else here depends on the version but the
    /// loading error of v0-1.
    pub fn txn_offset_commit(
        &mut self,
        token: RequestToken,
        req: &TxnOffsetCommitRequest,
        version: i16,
        now_ms: i64,
    ) -> Effects {
        let mut fx = Effects::default();
        let group_id = req.group_id.0.to_string();
        let partition = self.partition_for(&group_id);
        let committer = Committer {
            group_id: &group_id,
            generation_id_or_member_epoch: req.generation_id,
            member_id: &req.member_id,
            group_instance_id: req.group_instance_id.as_deref(),
            version,
            topics: CommittedTopics::Transactional(&req.topics),
        };
        let mut group_error = self.validate_offset_commit(&committer, now_ms);
        if version < 2 && group_error == code(ResponseError::CoordinatorLoadInProgress) {
            // Producers before 2.0 (v0-1) fail on this error instead of
            // retrying (KAFKA-7296); Kafka's KafkaApis answers them this.
            group_error = code(ResponseError::CoordinatorNotAvailable);
        }
        let topics = req
            .topics
            .iter()
            .map(|t| {
                txn_commit_answer(t, |p| {
                    if group_error != NONE {
                        return group_error;
                    }
                    let metadata = p.committed_metadata.as_deref();
                    match self.commit_value(
                        p.committed_offset,
                        p.committed_leader_epoch,
                        metadata,
                        now_ms,
                    ) {
                        Ok(value) => {
                            fx.records.push((
                                partition,
                                records::offset_commit_key(&group_id, &t.name, p.partition_index),
                                Some(value.encode()),
                            ));
                            NONE
                        }
                        Err(error) => error,
                    }
                })
            })
            .collect();
        fx.transactional = Some(TransactionalProducer {
            producer_id: req.producer_id.0,
            producer_epoch: req.producer_epoch,
        });
        fx.respond(
            token,
            Response::TxnOffsetCommit(TxnOffsetCommitResponse::default().with_topics(topics)),
        );
        fx
    }

    /// The value a partition's commit stores, or OFFSET_METADATA_TOO_LARGE.
    fn commit_value(
        &self,
        offset: i64,
        leader_epoch: i32,
        metadata: Option<&str>,
        now_ms: i64,
    ) -> Result<OffsetCommitValue, i16> {
        let metadata = metadata.unwrap_or("");
        if metadata.len() > self.config.offset_metadata_max_bytes {
            return Err(code(ResponseError::OffsetMetadataTooLarge));
        }
        Ok(OffsetCommitValue {
            offset,
            leader_epoch,
            metadata: metadata.to_owned(),
            commit_timestamp_ms: now_ms,
        })
    }

    /// Kafka's `validateOffsetCommit` and `validateTransactionalOffsetCommit`
    /// (with `ClassicGroup.validateOffsetCommit` and
    /// `ConsumerGroup.validateOffsetCommit`): the error every partition of
    /// the commit gets, or NONE.
    fn validate_offset_commit(&mut self, committer: &Committer<'_>, now_ms: i64) -> i16 {
        let group_id = committer.group_id;
        if let Some(e) = self.coordinator_error(group_id) {
            return code(e);
        }
        if group_id.is_empty() {
            return code(ResponseError::InvalidGroupId);
        }
        let generation = committer.generation_id_or_member_epoch;
        let member_id = committer.member_id;
        let instance = committer.group_instance_id;
        if let Some(error) = self.validate_consumer_offset_commit(committer) {
            // A transactional committer is told of a stale member epoch as
            // of an illegal generation, the error its protocol knows.
            if committer.transactional() && error == code(ResponseError::StaleMemberEpoch) {
                return code(ResponseError::IllegalGeneration);
            }
            return error;
        }
        let group = match self.groups.get(group_id) {
            Some(g) => g,
            None if generation < 0 => {
                // A simple consumer (or the admin client): the group exists
                // from now on, Empty, to hold its offsets.
                self.groups
                    .insert(group_id.to_owned(), Group::new(group_id.to_owned(), now_ms));
                return NONE;
            }
            None => return code(ResponseError::IllegalGeneration),
        };
        if group.state == GroupState::Dead {
            return code(ResponseError::CoordinatorNotAvailable);
        }
        if generation < 0 && group.state == GroupState::Empty {
            return NONE;
        }
        if generation >= 0 || !member_id.is_empty() || instance.is_some() {
            if let Err(e) = validate_member(group, member_id, instance) {
                return code(e);
            }
            if generation != group.generation_id {
                return code(ResponseError::IllegalGeneration);
            }
        } else if !committer.transactional() && group.state != GroupState::Empty {
            // Only an empty group takes commits without member and
            // generation; TxnOffsetCommit before v3 has neither, so Kafka
            // accepts it whatever the group's state.
            return code(ResponseError::UnknownMemberId);
        }
        if !committer.transactional() && group.state == GroupState::CompletingRebalance {
            // A transactional commit does not depend on the assignment in
            // progress, and Kafka does not hold it back.
            return code(ResponseError::RebalanceInProgress);
        }
        NONE
    }

    /// OffsetFetch, v1-7 for one group and v8+ for a batch of groups.
    pub fn offset_fetch(&self, req: &OffsetFetchRequest, version: i16) -> OffsetFetchResponse {
        if version <= 7 {
            let group_id = req.group_id.0.to_string();
            if let Some(error) = self.coordinator_error(&group_id) {
                let error = code(error);
                let mut response = OffsetFetchResponse::default();
                if version >= 2 {
                    response = response.with_error_code(error);
                } else {
                    // v1 has no top-level error: put it on every partition.
                    response = response.with_topics(
                        req.topics
                            .iter()
                            .flatten()
                            .map(|t| {
                                OffsetFetchResponseTopic::default()
                                    .with_name(t.name.clone())
                                    .with_partitions(
                                        t.partition_indexes
                                            .iter()
                                            .map(|&p| {
                                                OffsetFetchResponsePartition::default()
                                                    .with_partition_index(p)
                                                    .with_committed_offset(-1)
                                                    .with_error_code(error)
                                            })
                                            .collect(),
                                    )
                            })
                            .collect(),
                    );
                }
                return response;
            }
            let requested: Option<Vec<(String, Vec<i32>)>> = req.topics.as_ref().map(|ts| {
                ts.iter()
                    .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
                    .collect()
            });
            let topics = self
                .fetch_group_offsets(&group_id, requested, req.require_stable)
                .into_iter()
                .map(|(topic, parts)| {
                    OffsetFetchResponseTopic::default()
                        .with_name(TopicName(sb(&topic)))
                        .with_partitions(
                            parts
                                .into_iter()
                                .map(|(p, v, error)| {
                                    OffsetFetchResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_committed_offset(v.offset)
                                        .with_committed_leader_epoch(v.leader_epoch)
                                        .with_metadata(Some(sb(&v.metadata)))
                                        .with_error_code(error)
                                })
                                .collect(),
                        )
                })
                .collect();
            return OffsetFetchResponse::default().with_topics(topics);
        }
        let groups = req
            .groups
            .iter()
            .map(|g| {
                let out = OffsetFetchResponseGroup::default().with_group_id(g.group_id.clone());
                if let Some(e) = self.coordinator_error(g.group_id.0.as_str()) {
                    return out.with_error_code(code(e));
                }
                if version >= 9 {
                    if let Some(e) = self.validate_consumer_offset_fetch(
                        &g.group_id.0,
                        g.member_id.as_deref(),
                        g.member_epoch,
                    ) {
                        return out.with_error_code(code(e));
                    }
                }
                let requested: Option<Vec<(String, Vec<i32>)>> = g.topics.as_ref().map(|ts| {
                    ts.iter()
                        .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
                        .collect()
                });
                // Each requested topic's id is echoed (v10, resolved by the
                // service); "all topics" get theirs from the service.
                let ids = g.topics.iter().flatten().map(|t| t.topic_id);
                let topics = self
                    .fetch_group_offsets(&g.group_id.0, requested, req.require_stable)
                    .into_iter()
                    .zip(ids.chain(std::iter::repeat(Uuid::nil())))
                    .map(|((topic, parts), topic_id)| {
                        let partitions = parts
                            .into_iter()
                            .map(|(p, v, error)| {
                                OffsetFetchResponsePartitions::default()
                                    .with_partition_index(p)
                                    .with_committed_offset(v.offset)
                                    .with_committed_leader_epoch(v.leader_epoch)
                                    .with_metadata(Some(sb(&v.metadata)))
                                    .with_error_code(error)
                            })
                            .collect();
                        OffsetFetchResponseTopics::default()
                            .with_name(TopicName(sb(&topic)))
                            .with_topic_id(topic_id)
                            .with_partitions(partitions)
                    })
                    .collect();
                out.with_topics(topics)
            })
            .collect();
        OffsetFetchResponse::default().with_groups(groups)
    }

    /// The offsets of `requested` partitions (`None`: every committed one),
    /// with `-1`, epoch `-1` and `""` for partitions without a commit, and
    /// each partition's error. With `require_stable` (v7+) a partition an
    /// open transaction holds an offset of answers UNSTABLE_OFFSET_COMMIT
    /// instead of its committed offset, as Kafka's `fetchOffsets` does; the
    /// client retries until the transaction ends.
    fn fetch_group_offsets(
        &self,
        group_id: &str,
        requested: Option<Vec<(String, Vec<i32>)>>,
        require_stable: bool,
    ) -> Vec<(String, Vec<FetchedPartition>)> {
        let missing = OffsetCommitValue {
            offset: -1,
            leader_epoch: -1,
            metadata: String::new(),
            commit_timestamp_ms: -1,
        };
        let answer = |topic: &str, p: i32, committed: Option<&OffsetCommitValue>| {
            if require_stable && self.offsets.has_pending(group_id, topic, p) {
                return (
                    p,
                    missing.clone(),
                    code(ResponseError::UnstableOffsetCommit),
                );
            }
            (p, committed.unwrap_or(&missing).clone(), NONE)
        };
        match requested {
            Some(topics) => topics
                .into_iter()
                .map(|(topic, parts)| {
                    let values = parts
                        .into_iter()
                        .map(|p| answer(&topic, p, self.offsets.get(group_id, &topic, p)))
                        .collect();
                    (topic, values)
                })
                .collect(),
            None => {
                let mut out: Vec<(String, Vec<FetchedPartition>)> = Vec::new();
                for ((topic, p), v) in self.offsets.group(group_id) {
                    let value = answer(topic, *p, Some(v));
                    match out.last_mut() {
                        Some((t, parts)) if t == topic => parts.push(value),
                        _ => out.push((topic.clone(), vec![value])),
                    }
                }
                out
            }
        }
    }

    pub fn offset_delete(
        &mut self,
        token: RequestToken,
        req: &OffsetDeleteRequest,
        _version: i16,
        _now_ms: i64,
    ) -> Effects {
        let mut fx = Effects::default();
        let fail = |fx: &mut Effects, e: ResponseError| {
            fx.respond(
                token,
                Response::OffsetDelete(OffsetDeleteResponse::default().with_error_code(code(e))),
            );
        };
        let group_id = req.group_id.0.to_string();
        if let Some(e) = self.coordinator_error(&group_id) {
            fail(&mut fx, e);
            return fx;
        }
        let partition = self.partition_for(&group_id);
        // `None` = subscriptions unknown: every topic counts as subscribed.
        let subscribed = if let Some(cg) = self.consumer_groups.get(&group_id) {
            // A KIP-848 group: its members' subscriptions are known.
            (!cg.members.is_empty()).then(|| {
                Some(
                    cg.subscribed_topic_names()
                        .into_iter()
                        .map(str::to_owned)
                        .collect(),
                )
            })
        } else {
            let Some(group) = self.groups.get(&group_id) else {
                fail(&mut fx, ResponseError::GroupIdNotFound);
                return fx;
            };
            if group.state == GroupState::Dead {
                fail(&mut fx, ResponseError::GroupIdNotFound);
                return fx;
            }
            let active = group.state != GroupState::Empty;
            if active && group.protocol_type.as_deref() != Some("consumer") {
                fail(&mut fx, ResponseError::NonEmptyGroup);
                return fx;
            }
            if active {
                Some(group.subscribed_topics())
            } else {
                None
            }
        };
        let mut topics = Vec::with_capacity(req.topics.len());
        for t in &req.topics {
            let topic = t.name.0.to_string();
            let is_subscribed = match &subscribed {
                None => false,
                Some(None) => true,
                Some(Some(set)) => set.contains(&topic),
            };
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let error = if is_subscribed {
                        code(ResponseError::GroupSubscribedToTopic)
                    } else {
                        // Kafka writes the tombstone for a pending offset
                        // too: its replay drops the pending ones.
                        if self.offsets.remove(&group_id, &topic, p.partition_index) {
                            fx.records.push((
                                partition,
                                records::offset_commit_key(&group_id, &topic, p.partition_index),
                                None,
                            ));
                        }
                        NONE
                    };
                    OffsetDeleteResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(error)
                })
                .collect();
            topics.push(
                OffsetDeleteResponseTopic::default()
                    .with_name(t.name.clone())
                    .with_partitions(partitions),
            );
        }
        fx.respond(
            token,
            Response::OffsetDelete(OffsetDeleteResponse::default().with_topics(topics)),
        );
        fx
    }

    /// `(topic, partition, offset)` for every committed offset of a group.
    pub fn committed_offsets(&self, group_id: &str) -> Vec<(String, i32, i64)> {
        self.offsets
            .group(group_id)
            .map(|((t, p), v)| (t.clone(), *p, v.offset))
            .collect()
    }
}
