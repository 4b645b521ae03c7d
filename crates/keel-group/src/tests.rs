//! Unit tests of the state machine, driven with explicit time through a
//! harness that behaves like `service.rs`: it keeps the log of emitted
//! records, the latest deadline per timer, and every released response
//! (each encoded at its request's version, so a field set outside its
//! version fails the test).

use std::collections::{BTreeMap, HashMap};

use bytes::{Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_delete_request::{
    OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Encodable, StrBytes};
use uuid::Uuid;

use crate::service::replay_partition;
use crate::state_machine::{
    Effects, GroupCoordinator, JoinContext, LoadId, RequestToken, Response, TimerKey,
};
use crate::{GroupConfig, GroupState, LogEntry};

mod txn;

const SESSION_MS: i32 = 10_000;
const REBALANCE_MS: i32 = 30_000;

fn code(e: ResponseError) -> i16 {
    e.code()
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_owned())
}

/// `ConsumerProtocolSubscription` v0 for `topics`.
fn subscription(topics: &[&str]) -> Bytes {
    let mut b = Vec::new();
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&(topics.len() as i32).to_be_bytes());
    for t in topics {
        b.extend_from_slice(&(t.len() as i16).to_be_bytes());
        b.extend_from_slice(t.as_bytes());
    }
    b.extend_from_slice(&(-1i32).to_be_bytes());
    Bytes::from(b)
}

/// Loads every partition from `log` (entries with their partitions), as the
/// service does for a broker that leads them all; the load's effects.
pub(crate) fn load_all(c: &mut GroupCoordinator, log: &[(i32, LogEntry)], now_ms: i64) -> Effects {
    let mut fx = Effects::default();
    for partition in 0..c.config().offsets_topic_partitions {
        let (load, unloaded) = c.begin_load(partition);
        fx.responses.extend(unloaded.responses);
        let entries = log
            .iter()
            .filter(|(p, _)| *p == partition)
            .map(|(_, entry)| entry.clone())
            .collect();
        let (replayed, skipped) = replay_partition(c.config().clone(), partition, entries);
        assert_eq!(skipped, 0, "partition {partition}");
        let loaded = c.complete_load(partition, load, replayed, now_ms);
        fx.timers.extend(loaded.expect("not overtaken").timers);
    }
    fx
}

struct H {
    c: GroupCoordinator,
    now: i64,
    next_token: u64,
    next_uuid: u128,
    /// `__consumer_offsets` as `load` reads it, with each entry's partition.
    log: Vec<(i32, LogEntry)>,
    timers: HashMap<TimerKey, i64>,
    responses: HashMap<RequestToken, Response>,
    versions: HashMap<RequestToken, i16>,
}

impl H {
    fn new(config: GroupConfig) -> H {
        let mut h = H {
            c: GroupCoordinator::new(config),
            now: 1_000_000,
            next_token: 1,
            next_uuid: 1,
            log: Vec::new(),
            timers: HashMap::new(),
            responses: HashMap::new(),
            versions: HashMap::new(),
        };
        let fx = load_all(&mut h.c, &[], h.now);
        h.absorb(fx);
        h
    }

    /// Default config with no initial delay.
    fn quick() -> H {
        H::new(GroupConfig {
            group_initial_rebalance_delay_ms: 0,
            ..GroupConfig::default()
        })
    }

    fn token(&mut self, version: i16) -> RequestToken {
        let t = RequestToken(self.next_token);
        self.next_token += 1;
        self.versions.insert(t, version);
        t
    }

    fn absorb(&mut self, fx: Effects) {
        let producer_id = fx.transactional.map(|p| p.producer_id);
        for (partition, key, value) in fx.records {
            if producer_id.is_some() {
                // As the service does once the log took the batch.
                self.c.replay(&key, value.as_deref(), producer_id).unwrap();
            }
            let entry = LogEntry::Record {
                key,
                value,
                producer_id,
            };
            self.log.push((partition, entry));
        }
        for (t, r) in fx.responses {
            let v = self.versions[&t];
            let mut buf = BytesMut::new();
            let encoded = match &r {
                Response::JoinGroup(x) => x.encode(&mut buf, v),
                Response::SyncGroup(x) => x.encode(&mut buf, v),
                Response::Heartbeat(x) => x.encode(&mut buf, v),
                Response::LeaveGroup(x) => x.encode(&mut buf, v),
                Response::OffsetCommit(x) => x.encode(&mut buf, v),
                Response::TxnOffsetCommit(x) => x.encode(&mut buf, v),
                Response::OffsetDelete(x) => x.encode(&mut buf, v),
                Response::DeleteGroups(x) => x.encode(&mut buf, v),
                Response::ConsumerGroupHeartbeat(x) => x.encode(&mut buf, v),
            };
            encoded.unwrap_or_else(|e| panic!("{r:?} does not encode at v{v}: {e}"));
            assert!(
                self.responses.insert(t, r).is_none(),
                "token {t:?} answered twice"
            );
        }
        for (k, d) in fx.timers {
            self.timers.insert(k, d);
        }
    }

    /// Moves time forward, firing due timers in deadline order.
    fn advance(&mut self, ms: i64) {
        let target = self.now + ms;
        loop {
            let next = self
                .timers
                .iter()
                .filter(|(_, d)| **d <= target)
                .min_by_key(|(k, d)| (**d, (*k).clone()))
                .map(|(k, d)| (k.clone(), *d));
            let Some((key, deadline)) = next else { break };
            self.timers.remove(&key);
            self.now = self.now.max(deadline);
            let fx = self.c.on_timer(&key, self.now);
            self.absorb(fx);
        }
        self.now = target;
    }

    fn take(&mut self, t: RequestToken) -> Option<Response> {
        self.responses.remove(&t)
    }

    fn join_req(
        group: &str,
        member: &str,
        instance: Option<&str>,
        protocols: &[(&str, Bytes)],
    ) -> JoinGroupRequest {
        JoinGroupRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_session_timeout_ms(SESSION_MS)
            .with_rebalance_timeout_ms(REBALANCE_MS)
            .with_member_id(s(member))
            .with_group_instance_id(instance.map(s))
            .with_protocol_type(s("consumer"))
            .with_protocols(
                protocols
                    .iter()
                    .map(|(n, m)| {
                        JoinGroupRequestProtocol::default()
                            .with_name(s(n))
                            .with_metadata(m.clone())
                    })
                    .collect(),
            )
    }

    fn join_with(&mut self, req: JoinGroupRequest, version: i16) -> RequestToken {
        let t = self.token(version);
        let ctx = JoinContext {
            client_id: "client".into(),
            client_host: "/127.0.0.1".into(),
            member_uuid: Uuid::from_u128(self.next_uuid),
        };
        self.next_uuid += 1;
        let fx = self.c.join_group(t, &req, version, &ctx, self.now);
        self.absorb(fx);
        t
    }

    fn join(&mut self, group: &str, member: &str, protocols: &[(&str, Bytes)]) -> RequestToken {
        self.join_with(H::join_req(group, member, None, protocols), 9)
    }

    /// The KIP-394 dance: returns the member id and the parked join's token.
    fn join_new(&mut self, group: &str, protocols: &[(&str, Bytes)]) -> (String, RequestToken) {
        let t = self.join(group, "", protocols);
        let r = self.join_resp(t);
        assert_eq!(r.error_code, code(ResponseError::MemberIdRequired));
        let id = r.member_id.to_string();
        assert!(id.starts_with("client-"));
        (id.clone(), self.join(group, &id, protocols))
    }

    fn join_resp(&mut self, t: RequestToken) -> JoinGroupResponse {
        match self.take(t) {
            Some(Response::JoinGroup(r)) => r,
            other => panic!("expected a JoinGroup response, got {other:?}"),
        }
    }

    fn sync(
        &mut self,
        group: &str,
        member: &str,
        generation: i32,
        assignments: &[(&str, &[u8])],
    ) -> RequestToken {
        let t = self.token(5);
        let req = SyncGroupRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_generation_id(generation)
            .with_member_id(s(member))
            .with_protocol_type(Some(s("consumer")))
            .with_assignments(
                assignments
                    .iter()
                    .map(|(m, a)| {
                        SyncGroupRequestAssignment::default()
                            .with_member_id(s(m))
                            .with_assignment(Bytes::copy_from_slice(a))
                    })
                    .collect(),
            );
        let fx = self.c.sync_group(t, &req, 5, self.now);
        self.absorb(fx);
        t
    }

    fn sync_resp(&mut self, t: RequestToken) -> SyncGroupResponse {
        match self.take(t) {
            Some(Response::SyncGroup(r)) => r,
            other => panic!("expected a SyncGroup response, got {other:?}"),
        }
    }

    fn heartbeat_with(
        &mut self,
        group: &str,
        member: &str,
        generation: i32,
        instance: Option<&str>,
    ) -> i16 {
        let t = self.token(4);
        let req = HeartbeatRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_generation_id(generation)
            .with_member_id(s(member))
            .with_group_instance_id(instance.map(s));
        let fx = self.c.heartbeat(t, &req, 4, self.now);
        self.absorb(fx);
        match self.take(t) {
            Some(Response::Heartbeat(r)) => r.error_code,
            other => panic!("expected a Heartbeat response, got {other:?}"),
        }
    }

    fn heartbeat(&mut self, group: &str, member: &str, generation: i32) -> i16 {
        self.heartbeat_with(group, member, generation, None)
    }

    fn leave(&mut self, req: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
        let t = self.token(version);
        let fx = self.c.leave_group(t, &req, version, self.now);
        self.absorb(fx);
        match self.take(t) {
            Some(Response::LeaveGroup(r)) => r,
            other => panic!("expected a LeaveGroup response, got {other:?}"),
        }
    }

    fn commit(
        &mut self,
        group: &str,
        generation: i32,
        member: &str,
        offsets: &[(&str, i32, i64, &str)],
        version: i16,
    ) -> OffsetCommitResponse {
        let mut topics: BTreeMap<&str, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
        for (t, p, o, m) in offsets {
            topics.entry(t).or_default().push(
                OffsetCommitRequestPartition::default()
                    .with_partition_index(*p)
                    .with_committed_offset(*o)
                    .with_committed_leader_epoch(3)
                    .with_committed_metadata(Some(s(m))),
            );
        }
        let req = OffsetCommitRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_generation_id_or_member_epoch(generation)
            .with_member_id(s(member))
            .with_topics(
                topics
                    .into_iter()
                    .map(|(t, ps)| {
                        OffsetCommitRequestTopic::default()
                            .with_name(TopicName(s(t)))
                            .with_partitions(ps)
                    })
                    .collect(),
            );
        let t = self.token(version);
        let fx = self.c.offset_commit(t, &req, version, self.now);
        self.absorb(fx);
        match self.take(t) {
            Some(Response::OffsetCommit(r)) => r,
            other => panic!("expected an OffsetCommit response, got {other:?}"),
        }
    }

    fn commit_errors(
        &mut self,
        group: &str,
        generation: i32,
        member: &str,
        offsets: &[(&str, i32, i64, &str)],
    ) -> Vec<i16> {
        self.commit(group, generation, member, offsets, 9)
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
            .collect()
    }

    fn fetch_v7(&self, group: &str, topics: Option<&[(&str, &[i32])]>) -> OffsetFetchResponse {
        let req = OffsetFetchRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_topics(topics.map(|ts| {
                ts.iter()
                    .map(|(t, ps)| {
                        OffsetFetchRequestTopic::default()
                            .with_name(TopicName(s(t)))
                            .with_partition_indexes(ps.to_vec())
                    })
                    .collect()
            }));
        let r = self.c.offset_fetch(&req, 7);
        r.encode(&mut BytesMut::new(), 7).expect("encodes");
        r
    }

    /// `(topic, partition, offset, metadata)` of a v7 fetch.
    fn fetched(
        &self,
        group: &str,
        topics: Option<&[(&str, &[i32])]>,
    ) -> Vec<(String, i32, i64, String)> {
        let r = self.fetch_v7(group, topics);
        assert_eq!(r.error_code, 0);
        r.topics
            .iter()
            .flat_map(|t| {
                t.partitions.iter().map(move |p| {
                    assert_eq!(p.error_code, 0);
                    (
                        t.name.to_string(),
                        p.partition_index,
                        p.committed_offset,
                        p.metadata.as_deref().unwrap_or("").to_owned(),
                    )
                })
            })
            .collect()
    }

    /// A broker restart: a fresh coordinator loads every partition from the
    /// log, records and transaction markers.
    fn replayed(&self) -> GroupCoordinator {
        let mut replayed = GroupCoordinator::new(self.c.config().clone());
        let _ = load_all(&mut replayed, &self.log, self.now);
        replayed
    }

    fn state(&self, group: &str) -> GroupState {
        self.c.group(group).expect("group exists").state
    }

    fn generation(&self, group: &str) -> i32 {
        self.c.group(group).expect("group exists").generation_id
    }
}

fn protos(names: &[&str]) -> Vec<(&'static str, Bytes)> {
    names
        .iter()
        .map(|n| {
            let n: &'static str = Box::leak(n.to_string().into_boxed_str());
            (n, Bytes::from(format!("meta-{n}")))
        })
        .collect()
}

fn range() -> Vec<(&'static str, Bytes)> {
    vec![("range", subscription(&["orders"]))]
}

/// A Stable group of `n` dynamic members; returns their ids in join order
/// (the first is the leader) and the generation.
fn is_tombstone(entry: &LogEntry) -> bool {
    matches!(entry, LogEntry::Record { value: None, .. })
}

fn stable_group(h: &mut H, group: &str, n: usize) -> (Vec<String>, i32) {
    // Every member first gets its id (pending members hold the join phase
    // open), then joins with it: one generation for all.
    let ids: Vec<String> = (0..n)
        .map(|_| {
            let t = h.join(group, "", &range());
            h.join_resp(t).member_id.to_string()
        })
        .collect();
    let tokens: Vec<RequestToken> = ids.iter().map(|id| h.join(group, id, &range())).collect();
    for t in tokens {
        assert_eq!(h.join_resp(t).error_code, 0);
    }
    assert_eq!(h.state(group), GroupState::CompletingRebalance);
    let generation = h.generation(group);
    let leader = h.c.group(group).unwrap().leader_id.clone().unwrap();
    let assignments: Vec<(String, Vec<u8>)> = ids
        .iter()
        .map(|id| (id.clone(), format!("asg-{id}").into_bytes()))
        .collect();
    let refs: Vec<(&str, &[u8])> = assignments
        .iter()
        .map(|(m, a)| (m.as_str(), a.as_slice()))
        .collect();
    let t = h.sync(group, &leader, generation, &refs);
    assert_eq!(h.sync_resp(t).error_code, 0);
    for id in ids.iter().filter(|id| **id != leader) {
        let t = h.sync(group, id, generation, &[]);
        assert_eq!(h.sync_resp(t).assignment, Bytes::from(format!("asg-{id}")));
    }
    assert_eq!(h.state(group), GroupState::Stable);
    (ids, generation)
}

// ------------------------------------------------------------------ join

#[test]
fn member_id_required_for_v4_and_not_before() {
    let mut h = H::quick();
    let t = h.join("g", "", &range());
    let r = h.join_resp(t);
    assert_eq!(r.error_code, code(ResponseError::MemberIdRequired));
    assert_eq!(
        r.member_id.to_string(),
        format!("client-{}", Uuid::from_u128(1))
    );
    assert_eq!(r.generation_id, -1);
    assert!(h
        .c
        .group("g")
        .unwrap()
        .pending_members
        .contains_key(r.member_id.as_str()));
    // v3 joins directly.
    let t = h.join_with(H::join_req("g3", "", None, &range()), 3);
    let r = h.join_resp(t);
    assert_eq!(r.error_code, 0);
    assert_eq!(r.generation_id, 1);
    assert_eq!(r.leader, r.member_id);
    // A pending member id that is never used expires with its session.
    h.advance(i64::from(SESSION_MS));
    assert!(h.c.group("g").is_none_or(|g| g.pending_members.is_empty()));
}

#[test]
fn join_group_validation_errors() {
    let mut h = H::quick();
    let mut req = H::join_req("g", "", None, &range());
    req.session_timeout_ms = 1000;
    let t = h.join_with(req, 9);
    assert_eq!(
        h.join_resp(t).error_code,
        code(ResponseError::InvalidSessionTimeout)
    );
    let mut req = H::join_req("g", "", None, &range());
    req.session_timeout_ms = 1_800_001;
    let t = h.join_with(req, 2);
    assert_eq!(
        h.join_resp(t).error_code,
        code(ResponseError::InvalidSessionTimeout)
    );
    // An unknown member id in a group that does not exist.
    let t = h.join("g", "nobody", &range());
    assert_eq!(
        h.join_resp(t).error_code,
        code(ResponseError::UnknownMemberId)
    );
    assert!(
        h.c.group("g").is_none(),
        "failed join leaves no group behind"
    );
    let t = h.join_with(H::join_req("", "", None, &range()), 9);
    assert_eq!(
        h.join_resp(t).error_code,
        code(ResponseError::InvalidGroupId)
    );
    // Protocol type and protocols must match the group's.
    let (_, t) = h.join_new("g", &range());
    assert_eq!(h.join_resp(t).error_code, 0);
    let mut req = H::join_req("g", "", None, &range());
    req.protocol_type = s("connect");
    let t = h.join_with(req, 9);
    assert_eq!(
        h.join_resp(t).error_code,
        code(ResponseError::InconsistentGroupProtocol)
    );
    let t = h.join("g", "", &protos(&["roundrobin"]));
    assert_eq!(
        h.join_resp(t).error_code,
        code(ResponseError::InconsistentGroupProtocol)
    );
    // Known member in the wrong group.
    let t = h.join("g", "stranger", &range());
    assert_eq!(
        h.join_resp(t).error_code,
        code(ResponseError::UnknownMemberId)
    );
}

#[test]
fn group_max_size() {
    let mut h = H::new(GroupConfig {
        group_initial_rebalance_delay_ms: 0,
        group_max_size: 1,
        ..GroupConfig::default()
    });
    let (_, t) = h.join_new("g", &range());
    assert_eq!(h.join_resp(t).error_code, 0);
    let t = h.join("g", "", &range());
    assert_eq!(
        h.join_resp(t).error_code,
        code(ResponseError::GroupMaxSizeReached)
    );
}

/// The error every group API answers for group `g`.
fn group_errors(h: &mut H) -> Vec<i16> {
    let t = h.join("g", "", &range());
    let join = h.join_resp(t).error_code;
    let t = h.sync("g", "m", 1, &[]);
    let sync = h.sync_resp(t).error_code;
    let heartbeat = h.heartbeat("g", "m", 1);
    let commit = h.commit_errors("g", -1, "", &[("t", 0, 1, "")]);
    let fetch = h.fetch_v7("g", None).error_code;
    let describe =
        h.c.describe_groups(
            &DescribeGroupsRequest::default().with_groups(vec![GroupId(s("g"))]),
            5,
        )
        .groups[0]
            .error_code;
    vec![join, sync, heartbeat, commit[0], fetch, describe]
}

#[test]
fn requests_for_a_partition_loading_or_not_coordinated_here() {
    let mut h = H::quick();
    assert_eq!(h.commit_errors("g", -1, "", &[("t", 0, 1, "")]), vec![0]);
    let other = "other-partition";
    let partition = h.c.partition_for("g");
    assert_ne!(h.c.partition_for(other), partition);
    let (load, fx) = h.c.begin_load(partition);
    h.absorb(fx);
    assert!(h.c.group("g").is_none(), "a reload starts from the log");
    let loading = code(ResponseError::CoordinatorLoadInProgress);
    assert_eq!(group_errors(&mut h), vec![loading; 6]);
    let l = h.c.list_groups(&ListGroupsRequest::default(), 5);
    assert_eq!(l.error_code, loading);
    // Another partition's groups are served meanwhile.
    assert_eq!(h.commit_errors(other, -1, "", &[("t", 0, 1, "")]), vec![0]);

    // Unloaded while loading: the load installs nothing.
    let fx = h.c.unload(partition);
    h.absorb(fx);
    let replayed = h.replayed();
    assert!(h
        .c
        .complete_load(partition, load, replayed, h.now)
        .is_none());
    let not_coordinator = code(ResponseError::NotCoordinator);
    assert_eq!(group_errors(&mut h), vec![not_coordinator; 6]);
    let l = h.c.list_groups(&ListGroupsRequest::default(), 5);
    assert_eq!(l.error_code, 0);
    let listed: Vec<&str> = l.groups.iter().map(|g| g.group_id.as_str()).collect();
    assert_eq!(listed, vec![other]);

    // A coordinator that has loaded nothing coordinates nothing.
    h.c = GroupCoordinator::new(GroupConfig::default());
    assert_eq!(group_errors(&mut h), vec![not_coordinator; 6]);
}

#[test]
fn three_members_join_and_sync_with_leader_election() {
    let mut h = H::new(GroupConfig::default()); // 3 s initial delay
    let (m1, t1) = h.join_new("g", &protos(&["a", "b"]));
    let (m2, t2) = h.join_new("g", &protos(&["b", "a"]));
    let (m3, t3) = h.join_new("g", &protos(&["b", "a"]));
    assert_eq!(h.state("g"), GroupState::PreparingRebalance);
    assert!(h.responses.is_empty(), "joins wait for the initial delay");
    // New members arrived during the delay: it extends once, then completes.
    h.advance(3_000);
    assert_eq!(h.state("g"), GroupState::PreparingRebalance);
    h.advance(3_000);
    assert_eq!(h.state("g"), GroupState::CompletingRebalance);
    let (r1, r2, r3) = (h.join_resp(t1), h.join_resp(t2), h.join_resp(t3));
    for r in [&r1, &r2, &r3] {
        assert_eq!(r.error_code, 0);
        assert_eq!(r.generation_id, 1);
        assert_eq!(r.leader.as_str(), m1);
        // "b" has two votes against one.
        assert_eq!(r.protocol_name.as_deref(), Some("b"));
        assert_eq!(r.protocol_type.as_deref(), Some("consumer"));
        assert!(!r.skip_assignment);
    }
    assert_eq!(r1.member_id.as_str(), m1);
    assert_eq!(r1.members.len(), 3);
    assert_eq!(r1.members[1].member_id.as_str(), m2);
    assert_eq!(r1.members[1].metadata, Bytes::from("meta-b"));
    assert!(r2.members.is_empty() && r3.members.is_empty());
    // Followers sync before the leader and wait.
    let s2 = h.sync("g", &m2, 1, &[]);
    let s3 = h.sync("g", &m3, 1, &[]);
    assert!(h.take(s2).is_none() && h.take(s3).is_none());
    let records_before = h.log.len();
    let s1 = h.sync("g", &m1, 1, &[(&m1, b"A1"), (&m2, b"A2"), (&m3, b"A3")]);
    assert_eq!(
        h.log.len(),
        records_before + 1,
        "group metadata record on sync"
    );
    assert_eq!(h.sync_resp(s1).assignment, Bytes::from("A1"));
    let r2 = h.sync_resp(s2);
    assert_eq!(r2.assignment, Bytes::from("A2"));
    assert_eq!(r2.protocol_name.as_deref(), Some("b"));
    assert_eq!(h.sync_resp(s3).assignment, Bytes::from("A3"));
    assert_eq!(h.state("g"), GroupState::Stable);
    // A late sync in Stable gets the stored assignment.
    let s3 = h.sync("g", &m3, 1, &[]);
    assert_eq!(h.sync_resp(s3).assignment, Bytes::from("A3"));
}

#[test]
fn initial_delay_is_bounded_by_rebalance_timeout() {
    let mut h = H::new(GroupConfig {
        group_initial_rebalance_delay_ms: 3_000,
        ..GroupConfig::default()
    });
    let (_, t) = h.join_new("g", &range());
    // A new member every 2.9 s keeps extending the delay, but only up to
    // the rebalance timeout (30 s).
    let mut tokens = vec![t];
    let start = h.now;
    while h.state("g") == GroupState::PreparingRebalance {
        h.advance(2_900);
        if h.state("g") == GroupState::PreparingRebalance {
            let (_, t) = h.join_new("g", &range());
            tokens.push(t);
        }
    }
    assert!(
        h.now - start <= i64::from(REBALANCE_MS) + 3_000,
        "waited {} ms",
        h.now - start
    );
    for t in tokens {
        assert_eq!(h.join_resp(t).error_code, 0);
    }
}

#[test]
fn no_initial_delay_completes_at_once() {
    let mut h = H::quick();
    let (m, t) = h.join_new("g", &range());
    let r = h.join_resp(t);
    assert_eq!((r.error_code, r.generation_id), (0, 1));
    assert_eq!(r.leader.as_str(), m);
    assert_eq!(r.members.len(), 1);
}

#[test]
fn rejoin_triggers_rebalance_and_bumps_generation() {
    let mut h = H::quick();
    let (ids, generation) = stable_group(&mut h, "g", 3);
    // The leader rejoins (e.g. metadata refresh): new rebalance.
    let t0 = h.join("g", &ids[0], &range());
    assert_eq!(h.state("g"), GroupState::PreparingRebalance);
    assert_eq!(
        h.heartbeat("g", &ids[1], generation),
        code(ResponseError::RebalanceInProgress)
    );
    let s = h.sync("g", &ids[1], generation, &[]);
    assert_eq!(
        h.sync_resp(s).error_code,
        code(ResponseError::RebalanceInProgress)
    );
    // Members keep their assignment until the new one arrives.
    assert!(!h.c.group("g").unwrap().members[ids[1].as_str()]
        .assignment
        .is_empty());
    let t1 = h.join("g", &ids[1], &range());
    assert!(h.take(t0).is_none());
    let t2 = h.join("g", &ids[2], &range());
    for t in [t0, t1, t2] {
        assert_eq!(h.join_resp(t).generation_id, generation + 1);
    }
    // The old generation is now illegal.
    assert_eq!(
        h.heartbeat("g", &ids[1], generation),
        code(ResponseError::IllegalGeneration)
    );
    assert_eq!(h.heartbeat("g", &ids[1], generation + 1), 0);
}

#[test]
fn follower_rejoin_with_changed_metadata_rebalances_and_unchanged_does_not() {
    let mut h = H::quick();
    let (ids, generation) = stable_group(&mut h, "g", 2);
    let t = h.join("g", &ids[1], &range());
    let r = h.join_resp(t);
    assert_eq!((r.error_code, r.generation_id), (0, generation));
    assert_eq!(h.state("g"), GroupState::Stable);
    // Cooperative rebalancing: owned partitions change the metadata.
    let t = h.join(
        "g",
        &ids[1],
        &[("range", subscription(&["orders", "payments"]))],
    );
    assert!(h.take(t).is_none());
    assert_eq!(h.state("g"), GroupState::PreparingRebalance);
}

#[test]
fn session_timeout_removes_member_and_rebalances() {
    let mut h = H::quick();
    let (ids, generation) = stable_group(&mut h, "g", 2);
    for _ in 0..3 {
        h.advance(i64::from(SESSION_MS) / 2);
        let e = h.heartbeat("g", &ids[0], generation);
        assert!(
            e == 0 || e == code(ResponseError::RebalanceInProgress),
            "{e}"
        );
    }
    // ids[1] never heartbeated: gone, and the group rebalances without it.
    let g = h.c.group("g").unwrap();
    assert!(!g.members.contains_key(ids[1].as_str()));
    assert_eq!(g.state, GroupState::PreparingRebalance);
    assert_eq!(
        h.heartbeat("g", &ids[1], generation),
        code(ResponseError::UnknownMemberId)
    );
    let t = h.join("g", &ids[0], &range());
    let r = h.join_resp(t);
    assert_eq!((r.generation_id, r.members.len()), (generation + 1, 1));
}

#[test]
fn rebalance_timeout_removes_members_that_do_not_rejoin() {
    let mut h = H::quick();
    let (ids, generation) = stable_group(&mut h, "g", 3);
    let t0 = h.join("g", &ids[0], &range());
    // ids[1] keeps heartbeating but never rejoins; ids[2] is silent.
    for _ in 0..9 {
        h.advance(3_000);
        assert_eq!(h.state("g"), GroupState::PreparingRebalance);
        assert_eq!(
            h.heartbeat("g", &ids[1], generation),
            code(ResponseError::RebalanceInProgress)
        );
    }
    assert!(h.take(t0).is_none());
    h.advance(3_000); // 30 s: the rebalance timeout.
    let r = h.join_resp(t0);
    assert_eq!(
        (r.error_code, r.generation_id, r.members.len()),
        (0, generation + 1, 1)
    );
    assert_eq!(h.state("g"), GroupState::CompletingRebalance);
    let g = h.c.group("g").unwrap();
    assert_eq!(
        g.members.keys().cloned().collect::<Vec<_>>(),
        vec![ids[0].clone()]
    );
    assert_eq!(
        h.heartbeat("g", &ids[1], generation + 1),
        code(ResponseError::UnknownMemberId)
    );
}

#[test]
fn leader_that_does_not_rejoin_is_replaced() {
    let mut h = H::quick();
    let (ids, _) = stable_group(&mut h, "g", 2);
    let t1 = h.join("g", &ids[1], &[("range", subscription(&["x"]))]);
    h.advance(i64::from(REBALANCE_MS));
    let r = h.join_resp(t1);
    assert_eq!(r.leader.as_str(), ids[1]);
    assert_eq!(r.members.len(), 1);
}

#[test]
fn unsynced_members_are_removed_after_rebalance_timeout() {
    let mut h = H::quick();
    let (m1, t) = h.join_new("g", &range());
    assert_eq!(h.join_resp(t).error_code, 0);
    assert_eq!(h.state("g"), GroupState::CompletingRebalance);
    h.advance(i64::from(REBALANCE_MS));
    // The only member never synced: removed, group Empty.
    assert!(!h.c.group("g").unwrap().members.contains_key(m1.as_str()));
    assert_eq!(h.state("g"), GroupState::Empty);
}

// ------------------------------------------------------------------ static membership

#[test]
fn static_member_rejoin_replaces_without_rebalance_and_fences_old_id() {
    let mut h = H::quick();
    let t = h.join_with(H::join_req("g", "", Some("inst-1"), &range()), 5);
    let r = h.join_resp(t);
    assert_eq!(r.error_code, 0, "static members skip MEMBER_ID_REQUIRED");
    let old = r.member_id.to_string();
    assert!(old.starts_with("inst-1-"));
    let (dyn_id, t_dyn) = h.join_new("g", &range());
    assert!(h.take(t_dyn).is_none());
    let t = h.join_with(H::join_req("g", &old, Some("inst-1"), &range()), 5);
    assert_eq!(h.join_resp(t).generation_id, 2);
    assert_eq!(h.join_resp(t_dyn).generation_id, 2);
    let s1 = h.sync("g", &dyn_id, 2, &[]);
    let s0 = h.sync("g", &old, 2, &[(&old, b"A-static"), (&dyn_id, b"A-dyn")]);
    assert_eq!(h.sync_resp(s0).assignment, Bytes::from("A-static"));
    assert_eq!(h.sync_resp(s1).assignment, Bytes::from("A-dyn"));
    assert_eq!(h.state("g"), GroupState::Stable);

    // The static member restarts: empty member id, same instance id.
    let records_before = h.log.len();
    let t = h.join_with(H::join_req("g", "", Some("inst-1"), &range()), 5);
    let r = h.join_resp(t);
    assert_eq!(r.error_code, 0);
    let new = r.member_id.to_string();
    assert_ne!(new, old);
    assert_eq!(r.generation_id, 2, "no new generation");
    // It was the leader; before v9 it is told the old leader id so it does
    // not redo the assignment.
    assert_eq!(r.leader.as_str(), old);
    assert!(r.members.is_empty());
    assert_eq!(h.state("g"), GroupState::Stable);
    assert_eq!(h.log.len(), records_before + 1, "new member id persisted");
    let s = h.sync("g", &new, 2, &[]);
    assert_eq!(h.sync_resp(s).assignment, Bytes::from("A-static"));
    // The old incarnation is fenced everywhere.
    assert_eq!(
        h.heartbeat_with("g", &old, 2, Some("inst-1")),
        code(ResponseError::FencedInstanceId)
    );
    assert_eq!(h.heartbeat_with("g", &new, 2, Some("inst-1")), 0);
    let t = h.join_with(H::join_req("g", &old, Some("inst-1"), &range()), 5);
    assert_eq!(
        h.join_resp(t).error_code,
        code(ResponseError::FencedInstanceId)
    );
    assert_eq!(
        h.commit_errors("g", 2, &old, &[]),
        Vec::<i16>::new(),
        "no partitions, no errors"
    );
    // v9: the static leader learns it leads and may skip the assignment.
    let t = h.join_with(H::join_req("g", "", Some("inst-1"), &range()), 9);
    let r = h.join_resp(t);
    assert!(r.skip_assignment);
    assert_eq!(r.leader, r.member_id);
    assert_eq!(r.members.len(), 2);
    assert_eq!(h.state("g"), GroupState::Stable);
}

#[test]
fn static_member_with_changed_protocol_triggers_rebalance() {
    let mut h = H::quick();
    let t = h.join_with(H::join_req("g", "", Some("i"), &protos(&["a", "b"])), 5);
    let r = h.join_resp(t);
    let id = r.member_id.to_string();
    let s = h.sync("g", &id, 1, &[(&id, b"x")]);
    assert_eq!(h.sync_resp(s).error_code, 0);
    assert_eq!(h.c.group("g").unwrap().protocol_name.as_deref(), Some("a"));
    let t = h.join_with(H::join_req("g", "", Some("i"), &protos(&["b"])), 5);
    // Sole member: the join completes at once with a new generation.
    let r = h.join_resp(t);
    assert_eq!(r.generation_id, 2);
    assert_eq!(r.protocol_name.as_deref(), Some("b"));
}

#[test]
fn static_member_leaves_by_instance_id_and_by_session_timeout() {
    let mut h = H::quick();
    let t = h.join_with(H::join_req("g", "", Some("i1"), &range()), 5);
    let m = h.join_resp(t).member_id.to_string();
    let st = h.sync("g", &m, 1, &[]);
    assert_eq!(h.sync_resp(st).error_code, 0);
    // Wrong member id for the instance: fenced.
    let r = h.leave(
        LeaveGroupRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_members(vec![MemberIdentity::default()
                .with_member_id(s("other"))
                .with_group_instance_id(Some(s("i1")))]),
        5,
    );
    assert_eq!(
        r.members[0].error_code,
        code(ResponseError::FencedInstanceId)
    );
    // Unknown member id with the instance id: removed.
    let r = h.leave(
        LeaveGroupRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_members(vec![MemberIdentity::default()
                .with_member_id(s(""))
                .with_group_instance_id(Some(s("i1")))]),
        5,
    );
    assert_eq!(r.members[0].error_code, 0);
    assert_eq!(h.state("g"), GroupState::Empty);
    assert!(h.c.group("g").unwrap().static_members.is_empty());
    // Session timeout removes static members too.
    let t = h.join_with(H::join_req("g", "", Some("i2"), &range()), 5);
    let r = h.join_resp(t);
    let m = r.member_id.to_string();
    let st = h.sync("g", &m, r.generation_id, &[]);
    assert_eq!(h.sync_resp(st).error_code, 0);
    h.advance(i64::from(SESSION_MS) + 1);
    assert!(h.c.group("g").unwrap().members.is_empty());
}

// ------------------------------------------------------------------ leave, heartbeat, sync errors

#[test]
fn leave_group_single_and_batch() {
    let mut h = H::quick();
    let (ids, generation) = stable_group(&mut h, "g", 3);
    // v0-2: one member, error at the top.
    let r = h.leave(
        LeaveGroupRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_member_id(s(&ids[2])),
        1,
    );
    assert_eq!(r.error_code, 0);
    assert!(r.members.is_empty());
    assert_eq!(h.state("g"), GroupState::PreparingRebalance);
    let r = h.leave(
        LeaveGroupRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_member_id(s("ghost")),
        2,
    );
    assert_eq!(r.error_code, code(ResponseError::UnknownMemberId));
    // A pending join of a leaving member is answered UNKNOWN_MEMBER_ID.
    let t1 = h.join("g", &ids[1], &range());
    // v3+: a batch with per-member errors.
    let r = h.leave(
        LeaveGroupRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_members(vec![
                MemberIdentity::default().with_member_id(s(&ids[1])),
                MemberIdentity::default().with_member_id(s("ghost")),
            ]),
        4,
    );
    assert_eq!(r.error_code, 0);
    assert_eq!(r.members.len(), 2);
    assert_eq!(r.members[0].error_code, 0);
    assert_eq!(
        r.members[1].error_code,
        code(ResponseError::UnknownMemberId)
    );
    assert_eq!(
        h.join_resp(t1).error_code,
        code(ResponseError::UnknownMemberId)
    );
    // The remaining member rejoins and completes a new generation alone.
    let t0 = h.join("g", &ids[0], &range());
    let r = h.join_resp(t0);
    assert_eq!((r.generation_id, r.members.len()), (generation + 1, 1));
    // Unknown group.
    let r = h.leave(
        LeaveGroupRequest::default()
            .with_group_id(GroupId(s("nope")))
            .with_member_id(s("x")),
        0,
    );
    assert_eq!(r.error_code, code(ResponseError::UnknownMemberId));
    // Last member leaves: Empty, with a new generation persisted.
    let before = h.log.len();
    let r = h.leave(
        LeaveGroupRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_member_id(s(&ids[0])),
        0,
    );
    assert_eq!(r.error_code, 0);
    assert_eq!(h.state("g"), GroupState::Empty);
    assert_eq!(h.log.len(), before + 1);
}

#[test]
fn heartbeat_errors() {
    let mut h = H::quick();
    assert_eq!(
        h.heartbeat("nope", "m", 1),
        code(ResponseError::UnknownMemberId)
    );
    let (ids, generation) = stable_group(&mut h, "g", 2);
    assert_eq!(h.heartbeat("g", &ids[0], generation), 0);
    assert_eq!(
        h.heartbeat("g", "ghost", generation),
        code(ResponseError::UnknownMemberId)
    );
    assert_eq!(
        h.heartbeat("g", &ids[0], generation + 7),
        code(ResponseError::IllegalGeneration)
    );
    assert_eq!(
        h.heartbeat_with("g", &ids[0], generation, Some("no-such-instance")),
        code(ResponseError::UnknownMemberId)
    );
    let _t = h.join("g", &ids[0], &range());
    assert_eq!(
        h.heartbeat("g", &ids[1], generation),
        code(ResponseError::RebalanceInProgress)
    );
}

#[test]
fn sync_group_errors() {
    let mut h = H::quick();
    let t = h.sync("nope", "m", 1, &[]);
    assert_eq!(
        h.sync_resp(t).error_code,
        code(ResponseError::UnknownMemberId)
    );
    let (ids, generation) = stable_group(&mut h, "g", 2);
    let t = h.sync("g", "ghost", generation, &[]);
    assert_eq!(
        h.sync_resp(t).error_code,
        code(ResponseError::UnknownMemberId)
    );
    let t = h.sync("g", &ids[1], generation + 1, &[]);
    assert_eq!(
        h.sync_resp(t).error_code,
        code(ResponseError::IllegalGeneration)
    );
    let t = h.token(5);
    let req = SyncGroupRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_generation_id(generation)
        .with_member_id(s(&ids[1]))
        .with_protocol_name(Some(s("roundrobin")));
    let fx = h.c.sync_group(t, &req, 5, h.now);
    h.absorb(fx);
    assert_eq!(
        h.sync_resp(t).error_code,
        code(ResponseError::InconsistentGroupProtocol)
    );
    // Followers parked during CompletingRebalance get REBALANCE_IN_PROGRESS
    // when another rebalance starts before the leader syncs.
    let t0 = h.join("g", &ids[0], &range());
    let t1 = h.join("g", &ids[1], &range());
    let g2 = h.join_resp(t0).generation_id;
    let _ = h.join_resp(t1);
    let s1 = h.sync("g", &ids[1], g2, &[]);
    assert!(h.take(s1).is_none());
    let (_, _t) = h.join_new("g", &range());
    assert_eq!(
        h.sync_resp(s1).error_code,
        code(ResponseError::RebalanceInProgress)
    );
}

// ------------------------------------------------------------------ offsets

#[test]
fn simple_commit_and_fetch() {
    let mut h = H::quick();
    assert_eq!(
        h.commit_errors(
            "simple",
            -1,
            "",
            &[("t", 0, 10, "m0"), ("t", 1, 11, ""), ("u", 0, 5, "x")]
        ),
        vec![0, 0, 0]
    );
    let g =
        h.c.group("simple")
            .expect("simple commit creates the group");
    assert_eq!(
        (g.state, g.protocol_type.clone()),
        (GroupState::Empty, None)
    );
    assert_eq!(
        h.fetched("simple", Some(&[("t", &[0, 1, 2])])),
        vec![
            ("t".into(), 0, 10, "m0".into()),
            ("t".into(), 1, 11, "".into()),
            ("t".into(), 2, -1, "".into()),
        ]
    );
    // Null topics: everything committed.
    assert_eq!(h.fetched("simple", None).len(), 3);
    // Unknown group: -1 for requested partitions, nothing for "all".
    assert_eq!(
        h.fetched("nope", Some(&[("t", &[0])])),
        vec![("t".into(), 0, -1, "".into())]
    );
    assert!(h.fetched("nope", None).is_empty());
    // Leader epoch is returned, and -1 when unknown.
    let r = h.fetch_v7("simple", Some(&[("t", &[0, 5])]));
    assert_eq!(r.topics[0].partitions[0].committed_leader_epoch, 3);
    assert_eq!(r.topics[0].partitions[1].committed_leader_epoch, -1);
    assert_eq!(h.c.committed_offsets("simple")[0], ("t".to_string(), 0, 10));
    // v8+: batched groups.
    let req = OffsetFetchRequest::default().with_groups(vec![
        OffsetFetchRequestGroup::default()
            .with_group_id(GroupId(s("simple")))
            .with_topics(None),
        OffsetFetchRequestGroup::default()
            .with_group_id(GroupId(s("nope")))
            .with_topics(Some(vec![OffsetFetchRequestTopics::default()
                .with_name(TopicName(s("t")))
                .with_partition_indexes(vec![0])])),
    ]);
    for v in [8, 9, 10] {
        let r = h.c.offset_fetch(&req, v);
        r.encode(&mut BytesMut::new(), v).expect("encodes");
        assert_eq!(r.groups.len(), 2);
        assert_eq!(
            r.groups[0]
                .topics
                .iter()
                .map(|t| t.partitions.len())
                .sum::<usize>(),
            3
        );
        assert_eq!(r.groups[1].topics[0].partitions[0].committed_offset, -1);
    }
    // Older versions encode too.
    for v in 1..=7 {
        let req = OffsetFetchRequest::default()
            .with_group_id(GroupId(s("simple")))
            .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                .with_name(TopicName(s("t")))
                .with_partition_indexes(vec![0])]));
        let r = h.c.offset_fetch(&req, v);
        r.encode(&mut BytesMut::new(), v).expect("encodes");
        assert_eq!(r.topics[0].partitions[0].committed_offset, 10);
    }
}

#[test]
fn commit_metadata_too_large_fails_only_that_partition() {
    let mut h = H::quick();
    let big = "x".repeat(4097);
    assert_eq!(
        h.commit_errors("g", -1, "", &[("t", 0, 1, &big), ("t", 1, 2, "ok")]),
        vec![code(ResponseError::OffsetMetadataTooLarge), 0]
    );
    assert_eq!(h.fetched("g", None), vec![("t".into(), 1, 2, "ok".into())]);
}

#[test]
fn member_commit_validation() {
    let mut h = H::quick();
    assert_eq!(
        h.commit_errors("nope", 1, "m", &[("t", 0, 1, "")]),
        vec![code(ResponseError::IllegalGeneration)]
    );
    let (ids, generation) = stable_group(&mut h, "g", 2);
    assert_eq!(
        h.commit_errors("g", generation, &ids[1], &[("t", 0, 1, "")]),
        vec![0]
    );
    assert_eq!(
        h.commit_errors("g", generation - 1, &ids[1], &[("t", 0, 1, "")]),
        vec![code(ResponseError::IllegalGeneration)]
    );
    assert_eq!(
        h.commit_errors("g", generation, "ghost", &[("t", 0, 1, "")]),
        vec![code(ResponseError::UnknownMemberId)]
    );
    // A simple commit into a group with members.
    assert_eq!(
        h.commit_errors("g", -1, "", &[("t", 0, 1, "")]),
        vec![code(ResponseError::UnknownMemberId)]
    );
    // During PreparingRebalance the current generation may still commit;
    // during CompletingRebalance it is told to finish the rebalance.
    let t0 = h.join("g", &ids[0], &range());
    assert_eq!(
        h.commit_errors("g", generation, &ids[1], &[("t", 0, 2, "")]),
        vec![0]
    );
    let t1 = h.join("g", &ids[1], &range());
    let _ = (h.join_resp(t0), h.join_resp(t1));
    assert_eq!(
        h.commit_errors("g", generation + 1, &ids[1], &[("t", 0, 3, "")]),
        vec![code(ResponseError::RebalanceInProgress)]
    );
    // Every OffsetCommit version encodes.
    for v in 2..=10 {
        let _ = h.commit("g", -1, "", &[("t", 0, 1, "")], v);
    }
}

#[test]
fn offset_delete() {
    let mut h = H::quick();
    let del = |h: &mut H, group: &str, topic: &str| -> OffsetDeleteResponse {
        let t = h.token(0);
        let req = OffsetDeleteRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_topics(vec![OffsetDeleteRequestTopic::default()
                .with_name(TopicName(s(topic)))
                .with_partitions(vec![
                    OffsetDeleteRequestPartition::default().with_partition_index(0)
                ])]);
        let fx = h.c.offset_delete(t, &req, 0, h.now);
        h.absorb(fx);
        match h.take(t) {
            Some(Response::OffsetDelete(r)) => r,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        del(&mut h, "nope", "t").error_code,
        code(ResponseError::GroupIdNotFound)
    );
    let (_, generation) = stable_group(&mut h, "g", 1);
    let leader = h.c.group("g").unwrap().leader_id.clone().unwrap();
    assert_eq!(
        h.commit_errors(
            "g",
            generation,
            &leader,
            &[("orders", 0, 5, ""), ("old", 0, 7, "")]
        ),
        vec![0, 0]
    );
    // Subscribed topic of a Stable consumer group: refused.
    let r = del(&mut h, "g", "orders");
    assert_eq!(r.error_code, 0);
    assert_eq!(
        r.topics[0].partitions[0].error_code,
        code(ResponseError::GroupSubscribedToTopic)
    );
    // A topic nobody subscribes to: deleted, with a tombstone.
    let before = h.log.len();
    let r = del(&mut h, "g", "old");
    assert_eq!(r.topics[0].partitions[0].error_code, 0);
    assert_eq!(h.log.len(), before + 1);
    assert!(is_tombstone(&h.log.last().unwrap().1));
    assert_eq!(
        h.fetched("g", None),
        vec![("orders".into(), 0, 5, "".into())]
    );
}

#[test]
fn offsets_expire_after_retention_once_group_is_empty() {
    let retention = 100_000;
    let mut h = H::new(GroupConfig {
        group_initial_rebalance_delay_ms: 0,
        offsets_retention_ms: retention,
        ..GroupConfig::default()
    });
    let (ids, generation) = stable_group(&mut h, "g", 1);
    assert_eq!(
        h.commit_errors("g", generation, &ids[0], &[("t", 0, 5, "")]),
        vec![0]
    );
    assert_eq!(
        h.commit_errors("simple", -1, "", &[("t", 0, 9, "")]),
        vec![0]
    );
    // The consumer group stays alive: its offsets never expire.
    for _ in 0..150 {
        h.advance(i64::from(SESSION_MS) / 2);
        assert_eq!(h.heartbeat("g", &ids[0], generation), 0);
    }
    assert!(
        h.now > 1_000_000 + retention + crate::state_machine::OFFSETS_RETENTION_CHECK_INTERVAL_MS
    );
    assert_eq!(h.c.committed_offsets("g").len(), 1);
    // The simple group's offset expired from its commit time, and the
    // group went with it.
    assert!(h.c.committed_offsets("simple").is_empty());
    assert!(h.c.group("simple").is_none());
    // The consumer group empties; retention counts from then.
    let r = h.leave(
        LeaveGroupRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_member_id(s(&ids[0])),
        0,
    );
    assert_eq!(r.error_code, 0);
    h.advance(retention / 2);
    assert_eq!(h.c.committed_offsets("g").len(), 1);
    h.advance(retention + crate::state_machine::OFFSETS_RETENTION_CHECK_INTERVAL_MS);
    assert!(h.c.committed_offsets("g").is_empty());
    assert!(h.c.group("g").is_none());
    let tombstones = h.log.iter().filter(|(_, e)| is_tombstone(e)).count();
    assert_eq!(tombstones, 4, "two offsets and two groups");
}

// ------------------------------------------------------------------ admin

#[test]
fn describe_list_and_delete_groups() {
    let mut h = H::quick();
    let (ids, _) = stable_group(&mut h, "busy", 2);
    assert_eq!(h.commit_errors("idle", -1, "", &[("t", 0, 1, "")]), vec![0]);

    let d = h.c.describe_groups(
        &DescribeGroupsRequest::default().with_groups(vec![
            GroupId(s("busy")),
            GroupId(s("idle")),
            GroupId(s("nope")),
        ]),
        5,
    );
    d.encode(&mut BytesMut::new(), 5).unwrap();
    let busy = &d.groups[0];
    assert_eq!((busy.error_code, busy.group_state.as_str()), (0, "Stable"));
    assert_eq!(
        (busy.protocol_type.as_str(), busy.protocol_data.as_str()),
        ("consumer", "range")
    );
    assert_eq!(busy.members.len(), 2);
    assert_eq!(busy.members[0].member_id.as_str(), ids[0]);
    assert_eq!(busy.members[0].member_metadata, subscription(&["orders"]));
    assert_eq!(
        busy.members[1].member_assignment,
        Bytes::from(format!("asg-{}", ids[1]))
    );
    assert_eq!(busy.members[0].client_id.as_str(), "client");
    assert_eq!(d.groups[1].group_state.as_str(), "Empty");
    assert_eq!(
        (d.groups[2].error_code, d.groups[2].group_state.as_str()),
        (0, "Dead")
    );
    let d6 = h.c.describe_groups(
        &DescribeGroupsRequest::default().with_groups(vec![GroupId(s("nope"))]),
        6,
    );
    d6.encode(&mut BytesMut::new(), 6).unwrap();
    assert_eq!(
        d6.groups[0].error_code,
        code(ResponseError::GroupIdNotFound)
    );
    for v in 0..=6 {
        h.c.describe_groups(
            &DescribeGroupsRequest::default().with_groups(vec![GroupId(s("busy"))]),
            v,
        )
        .encode(&mut BytesMut::new(), v)
        .unwrap();
    }

    let names = |r: &ListGroupsResponse| {
        r.groups
            .iter()
            .map(|g| g.group_id.to_string())
            .collect::<Vec<_>>()
    };
    let all = h.c.list_groups(&ListGroupsRequest::default(), 5);
    assert_eq!(names(&all), vec!["busy", "idle"]);
    assert_eq!(all.groups[0].group_state.as_str(), "Stable");
    assert_eq!(all.groups[0].group_type.as_str(), "classic");
    assert_eq!(all.groups[0].protocol_type.as_str(), "consumer");
    assert_eq!(all.groups[1].protocol_type.as_str(), "");
    let stable = h.c.list_groups(
        &ListGroupsRequest::default().with_states_filter(vec![s("stable")]),
        4,
    );
    assert_eq!(names(&stable), vec!["busy"]);
    let consumer = h.c.list_groups(
        &ListGroupsRequest::default().with_types_filter(vec![s("consumer")]),
        5,
    );
    assert!(consumer.groups.is_empty());
    let classic = h.c.list_groups(
        &ListGroupsRequest::default().with_types_filter(vec![s("Classic")]),
        5,
    );
    assert_eq!(classic.groups.len(), 2);
    for v in 0..=5 {
        h.c.list_groups(&ListGroupsRequest::default(), v)
            .encode(&mut BytesMut::new(), v)
            .unwrap();
    }

    let t = h.token(2);
    let req = DeleteGroupsRequest::default().with_groups_names(vec![
        GroupId(s("busy")),
        GroupId(s("idle")),
        GroupId(s("nope")),
    ]);
    let fx = h.c.delete_groups(t, &req, 2, h.now);
    h.absorb(fx);
    let Some(Response::DeleteGroups(r)) = h.take(t) else {
        panic!()
    };
    let errors: Vec<i16> = r.results.iter().map(|g| g.error_code).collect();
    assert_eq!(
        errors,
        vec![
            code(ResponseError::NonEmptyGroup),
            0,
            code(ResponseError::GroupIdNotFound)
        ]
    );
    assert!(h.c.group("idle").is_none());
    assert!(h.fetched("idle", None).is_empty());
    let last_two: Vec<bool> = h
        .log
        .iter()
        .rev()
        .take(2)
        .map(|(_, e)| is_tombstone(e))
        .collect();
    assert_eq!(last_two, vec![true, true], "offset and group tombstones");
}

// ------------------------------------------------------------------ replay

#[test]
fn replay_rebuilds_identical_state() {
    let mut h = H::quick();
    let (ids, generation) = stable_group(&mut h, "g", 3);
    let t = h.join_with(H::join_req("s", "", Some("inst"), &range()), 5);
    let sid = h.join_resp(t).member_id.to_string();
    let st = h.sync("s", &sid, 1, &[(&sid, b"mine")]);
    assert_eq!(h.sync_resp(st).error_code, 0);
    assert_eq!(
        h.commit_errors(
            "g",
            generation,
            &ids[0],
            &[("t", 0, 5, "a"), ("t", 1, 6, "b")]
        ),
        vec![0, 0]
    );
    assert_eq!(
        h.commit_errors("simple", -1, "", &[("u", 3, 1, "")]),
        vec![0]
    );
    assert_eq!(h.commit_errors("gone", -1, "", &[("u", 3, 1, "")]), vec![0]);
    let t = h.token(2);
    let fx = h.c.delete_groups(
        t,
        &DeleteGroupsRequest::default().with_groups_names(vec![GroupId(s("gone"))]),
        2,
        h.now,
    );
    h.absorb(fx);

    let replayed = h.replayed();
    assert_eq!(replayed.offsets(), h.c.offsets());
    for id in ["g", "s", "simple"] {
        let (a, b) = (h.c.group(id).unwrap(), replayed.group(id).unwrap());
        assert_eq!(a.state, b.state, "{id}");
        assert_eq!(a.to_record(), b.to_record(), "{id}");
        assert_eq!(a.static_members, b.static_members, "{id}");
    }
    assert!(replayed.group("gone").is_none());
    // The rebuilt group keeps working: a member heartbeats and a static
    // member rejoins without a rebalance.
    let mut h2 = H::quick();
    h2.c = replayed;
    assert_eq!(h2.heartbeat("g", &ids[1], generation), 0);
    let t = h2.join_with(H::join_req("s", "", Some("inst"), &range()), 5);
    assert_eq!(h2.join_resp(t).generation_id, 1);
    assert_eq!(h2.state("s"), GroupState::Stable);
    // Undecodable records are errors, not panics.
    assert!(h2.c.replay(&[0, 1, 0], Some(&[1]), None).is_err());
    assert!(
        h2.c.replay(&[0, 9], None, None).is_ok(),
        "other coordinators' keys are skipped"
    );
}
