//! Unit tests of KIP-848 consumer groups: the heartbeat state machine, the
//! assignors, reconciliation, timeouts, describe, offsets and regex
//! subscriptions.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::BytesMut;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::consumer_group_heartbeat_request::TopicPartitions;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Encodable, StrBytes};
use uuid::Uuid;

use crate::assignor::{self, Assignment, AssignorMember};
use crate::consumer_group::MemberState;
use crate::state_machine::{
    Effects, GroupCoordinator, JoinContext, RequestToken, Response, TimerKey,
};
use crate::tests::load_all;
use crate::{GroupConfig, LogEntry};

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_owned())
}

const T1: Uuid = Uuid::from_u128(0x1111);
const T2: Uuid = Uuid::from_u128(0x2222);

struct H {
    c: GroupCoordinator,
    now: i64,
    token: u64,
    topics: BTreeMap<String, (Uuid, i32)>,
    timers: HashMap<TimerKey, i64>,
    records: usize,
    /// Every record written, in order, with its partition:
    /// `__consumer_offsets` as a load reads it.
    log: Vec<(i32, LogEntry)>,
}

/// A client's view of itself: id, epoch, what it owns.
#[derive(Debug, Clone)]
struct Client {
    id: String,
    epoch: i32,
    owned: Assignment,
}

impl H {
    fn new() -> H {
        let mut c = GroupCoordinator::new(GroupConfig::default());
        let fx = load_all(&mut c, &[], 0);
        let mut h = H {
            c,
            now: 1_000,
            token: 0,
            topics: BTreeMap::from([("t1".to_owned(), (T1, 6)), ("t2".to_owned(), (T2, 4))]),
            timers: HashMap::new(),
            records: 0,
            log: Vec::new(),
        };
        h.absorb(&fx);
        h
    }

    fn absorb(&mut self, fx: &Effects) {
        self.records += fx.records.len();
        self.log.extend(fx.records.iter().map(|(p, key, value)| {
            let entry = LogEntry::Record {
                key: key.clone(),
                value: value.clone(),
                producer_id: None,
            };
            (*p, entry)
        }));
        for (k, d) in &fx.timers {
            self.timers.insert(k.clone(), *d);
        }
    }

    fn hb_raw(
        &mut self,
        req: ConsumerGroupHeartbeatRequest,
        version: i16,
    ) -> ConsumerGroupHeartbeatResponse {
        self.token += 1;
        let ctx = JoinContext {
            client_id: "cli".into(),
            client_host: "/127.0.0.1".into(),
            member_uuid: Uuid::from_u128(u128::from(self.token)),
        };
        let topics = self.topics.clone();
        let fx = self.c.consumer_group_heartbeat(
            RequestToken(self.token),
            &req,
            version,
            &ctx,
            &topics,
            self.now,
        );
        self.absorb(&fx);
        assert_eq!(fx.responses.len(), 1);
        let Response::ConsumerGroupHeartbeat(r) = fx.responses[0].1.clone() else {
            panic!("wrong response")
        };
        // Every response encodes at its version.
        r.encode(&mut BytesMut::new(), version).unwrap();
        r
    }

    fn join_with(
        &mut self,
        id: &str,
        topics: &[&str],
        assignor: Option<&str>,
    ) -> (Client, ConsumerGroupHeartbeatResponse) {
        let req = ConsumerGroupHeartbeatRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_member_id(s(id))
            .with_member_epoch(0)
            .with_rebalance_timeout_ms(30_000)
            .with_subscribed_topic_names(Some(topics.iter().map(|t| TopicName(s(t))).collect()))
            .with_server_assignor(assignor.map(s))
            .with_topic_partitions(Some(vec![]));
        let r = self.hb_raw(req, 1);
        assert_eq!(r.error_code, 0, "{:?}", r.error_message);
        let mut c = Client {
            id: id.to_owned(),
            epoch: r.member_epoch,
            owned: Assignment::new(),
        };
        apply(&mut c, &r);
        (c, r)
    }

    /// Joins with a regex subscription, and topic names if given.
    fn join_regex(&mut self, id: &str, regex: &str, names: Option<&[&str]>) -> Client {
        let req = ConsumerGroupHeartbeatRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_member_id(s(id))
            .with_member_epoch(0)
            .with_rebalance_timeout_ms(30_000)
            .with_subscribed_topic_names(
                names.map(|ns| ns.iter().map(|t| TopicName(s(t))).collect()),
            )
            .with_subscribed_topic_regex(Some(s(regex)))
            .with_topic_partitions(Some(vec![]));
        let r = self.hb_raw(req, 1);
        assert_eq!(r.error_code, 0, "{:?}", r.error_message);
        let mut c = Client {
            id: id.to_owned(),
            epoch: r.member_epoch,
            owned: Assignment::new(),
        };
        apply(&mut c, &r);
        c
    }

    fn join(&mut self, id: &str) -> Client {
        self.join_with(id, &["t1"], None).0
    }

    /// A plain heartbeat that reports what the client owns.
    fn hb(&mut self, c: &mut Client) -> ConsumerGroupHeartbeatResponse {
        let req = ConsumerGroupHeartbeatRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_member_id(s(&c.id))
            .with_member_epoch(c.epoch)
            .with_rebalance_timeout_ms(-1)
            .with_topic_partitions(Some(owned_tps(&c.owned)));
        let r = self.hb_raw(req, 1);
        if r.error_code == 0 {
            c.epoch = r.member_epoch;
            apply(c, &r);
        }
        r
    }

    /// Heartbeats everyone until nothing changes.
    fn settle(&mut self, clients: &mut [Client]) {
        for _ in 0..10 {
            for c in clients.iter_mut() {
                let r = self.hb(c);
                assert_eq!(r.error_code, 0);
            }
        }
    }

    /// A broker restart: a fresh coordinator replays the log and completes
    /// its load now; the old timers are gone.
    fn restart(&mut self) {
        let mut c = GroupCoordinator::new(GroupConfig::default());
        let fx = load_all(&mut c, &self.log, self.now);
        self.c = c;
        self.timers.clear();
        self.absorb(&fx);
    }

    fn fire_due(&mut self) {
        let due: Vec<TimerKey> = self
            .timers
            .iter()
            .filter(|(_, d)| **d <= self.now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            self.timers.remove(&k);
            let fx = self.c.on_timer(&k, self.now);
            self.absorb(&fx);
        }
    }

    fn describe(
        &self,
    ) -> kafka_protocol::messages::consumer_group_describe_response::DescribedGroup {
        let r = self.c.consumer_group_describe(
            &ConsumerGroupDescribeRequest::default().with_group_ids(vec![GroupId(s("g"))]),
            1,
        );
        r.encode(&mut BytesMut::new(), 1).unwrap();
        r.groups[0].clone()
    }
}

fn owned_tps(a: &Assignment) -> Vec<TopicPartitions> {
    a.iter()
        .map(|(t, ps)| {
            TopicPartitions::default()
                .with_topic_id(*t)
                .with_partitions(ps.iter().copied().collect())
        })
        .collect()
}

/// The client adopts an assignment it was sent (revoking what is missing).
fn apply(c: &mut Client, r: &ConsumerGroupHeartbeatResponse) {
    if let Some(a) = &r.assignment {
        c.owned = a
            .topic_partitions
            .iter()
            .map(|tp| (tp.topic_id, tp.partitions.iter().copied().collect()))
            .filter(|(_, s): &(Uuid, BTreeSet<i32>)| !s.is_empty())
            .collect();
    }
}

fn count(a: &Assignment) -> usize {
    a.values().map(|s| s.len()).sum()
}

fn all_owned(clients: &[Client]) -> Vec<(Uuid, i32)> {
    let mut v: Vec<(Uuid, i32)> = clients
        .iter()
        .flat_map(|c| {
            c.owned
                .iter()
                .flat_map(|(t, ps)| ps.iter().map(move |p| (*t, *p)))
        })
        .collect();
    v.sort();
    v
}

fn assert_no_double_ownership(clients: &[Client]) {
    let v = all_owned(clients);
    let set: BTreeSet<_> = v.iter().collect();
    assert_eq!(set.len(), v.len(), "a partition owned twice: {clients:?}");
}

#[test]
fn three_members_get_a_balanced_uniform_assignment() {
    let mut h = H::new();
    let mut a = h.join("a");
    assert_eq!(a.epoch, 1);
    assert_eq!(count(&a.owned), 6, "alone, it gets everything");
    let b = h.join("b");
    let c = h.join("c");
    assert_eq!(h.c.consumer_group("g").unwrap().group_epoch, 3);
    // b and c wait for a to release; a is asked to revoke.
    assert_eq!(count(&b.owned), 0);
    let r = h.hb(&mut a);
    assert_eq!(r.member_epoch, 1, "epoch stays until the revocation");
    assert_eq!(count(&a.owned), 2);
    let mut all = vec![a, b, c];
    h.settle(&mut all);
    for c in &all {
        assert_eq!(count(&c.owned), 2, "{c:?}");
        assert_eq!(c.epoch, 3);
    }
    assert_eq!(all_owned(&all).len(), 6);
    assert_no_double_ownership(&all);
    let d = h.describe();
    assert_eq!(d.group_state.as_str(), "Stable");
    assert_eq!((d.group_epoch, d.assignment_epoch), (3, 3));
    assert_eq!(d.assignor_name.as_str(), "uniform");
    assert!(h.records > 0, "membership is persisted");
}

#[test]
fn fourth_member_gets_partitions_only_after_the_owner_revoked() {
    let mut h = H::new();
    let mut all = vec![h.join("a"), h.join("b"), h.join("c")];
    h.settle(&mut all);
    let mut d = h.join("d");
    assert_eq!(d.epoch, 4);
    assert_eq!(count(&d.owned), 0, "nothing free yet");
    let g = h.c.consumer_group("g").unwrap();
    assert_eq!(g.group_epoch, 4);
    let target_d: Assignment = g.target["d"].clone();
    assert_eq!(count(&target_d), 1);
    // Find the current owner of d's target partition.
    let (&t, ps) = target_d.iter().next().unwrap();
    let p = *ps.iter().next().unwrap();
    let owner = all
        .iter()
        .position(|c| c.owned.get(&t).is_some_and(|s| s.contains(&p)))
        .unwrap();
    // d heartbeats: still unreleased.
    h.hb(&mut d);
    assert_eq!(count(&d.owned), 0);
    assert_eq!(
        h.c.consumer_group("g").unwrap().members["d"].state,
        MemberState::UnreleasedPartitions
    );
    // The owner is told to revoke; its epoch stays at 3 until it has.
    let before = all[owner].owned.clone();
    let r = h.hb(&mut all[owner]);
    assert!(r.assignment.is_some());
    assert_eq!(r.member_epoch, 3);
    assert_eq!(count(&all[owner].owned), count(&before) - 1);
    assert_eq!(
        h.c.consumer_group("g").unwrap().members[&all[owner].id].state,
        MemberState::UnrevokedPartitions
    );
    // A heartbeat that does not report its owned partitions changes nothing.
    let req = ConsumerGroupHeartbeatRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_member_id(s(&all[owner].id))
        .with_member_epoch(3)
        .with_rebalance_timeout_ms(-1);
    assert_eq!(h.hb_raw(req, 1).member_epoch, 3);
    assert_eq!(count(&d.owned), 0);
    // Once it reports the revocation, it advances and d gets the partition.
    let r = h.hb(&mut all[owner]);
    assert_eq!(r.member_epoch, 4);
    let r = h.hb(&mut d);
    assert!(r.assignment.is_some());
    assert_eq!(d.owned, target_d);
    all.push(d);
    h.settle(&mut all);
    assert_no_double_ownership(&all);
    let mut counts: Vec<usize> = all.iter().map(|c| count(&c.owned)).collect();
    counts.sort();
    assert_eq!(counts, vec![1, 1, 2, 2]);
    assert!(all.iter().all(|c| c.epoch == 4));
    assert_eq!(h.describe().group_state.as_str(), "Stable");
}

#[test]
fn a_leaving_member_s_partitions_are_reassigned() {
    let mut h = H::new();
    let mut all = vec![h.join("a"), h.join("b"), h.join("c")];
    h.settle(&mut all);
    let c = all.pop().unwrap();
    let req = ConsumerGroupHeartbeatRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_member_id(s(&c.id))
        .with_member_epoch(-1);
    let r = h.hb_raw(req, 1);
    assert_eq!((r.error_code, r.member_epoch), (0, -1));
    assert_eq!(h.c.consumer_group("g").unwrap().group_epoch, 4);
    h.settle(&mut all);
    assert_eq!(all_owned(&all).len(), 6);
    assert_eq!(count(&all[0].owned), 3);
    assert!(all.iter().all(|c| c.epoch == 4));
    // Unknown after leaving.
    let mut gone = c;
    assert_eq!(
        h.hb(&mut gone).error_code,
        ResponseError::UnknownMemberId.code()
    );
}

#[test]
fn session_timeout_removes_a_silent_member() {
    let mut h = H::new();
    let mut all = vec![h.join("a"), h.join("b")];
    h.settle(&mut all);
    // a keeps heartbeating, b goes silent.
    for _ in 0..10 {
        h.now += 5_000;
        let r = h.hb(&mut all[0]);
        assert_eq!(r.error_code, 0);
        h.fire_due();
    }
    let g = h.c.consumer_group("g").unwrap();
    assert_eq!(g.members.len(), 1);
    assert_eq!(g.group_epoch, 3);
    let r = h.hb(&mut all[0]);
    assert_eq!(r.member_epoch, 3);
    assert_eq!(count(&all[0].owned), 6);
    assert_eq!(
        h.hb(&mut all[1]).error_code,
        ResponseError::UnknownMemberId.code()
    );
}

#[test]
fn a_member_that_never_revokes_is_removed_after_its_rebalance_timeout() {
    let mut h = H::new();
    let mut a = h.join("a");
    let mut b = h.join("b");
    // a is asked to revoke but keeps reporting its old partitions.
    let stale = a.owned.clone();
    h.hb(&mut a);
    for _ in 0..8 {
        h.now += 5_000;
        let req = ConsumerGroupHeartbeatRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_member_id(s("a"))
            .with_member_epoch(1)
            .with_topic_partitions(Some(owned_tps(&stale)))
            .with_rebalance_timeout_ms(-1);
        h.hb_raw(req, 1);
        h.hb(&mut b);
        h.fire_due();
    }
    assert!(!h.c.consumer_group("g").unwrap().members.contains_key("a"));
    h.hb(&mut b);
    assert_eq!(count(&b.owned), 6);
}

#[test]
fn fenced_and_unknown_epochs() {
    let mut h = H::new();
    let mut a = h.join("a");
    let mut wrong = a.clone();
    wrong.epoch = 7;
    assert_eq!(
        h.hb(&mut wrong).error_code,
        ResponseError::FencedMemberEpoch.code()
    );
    // An older epoch that is not the previous one is fenced too.
    h.join("b");
    let mut all = vec![a.clone(), h.join("c")];
    h.settle(&mut all);
    a = all[0].clone();
    assert!(a.epoch >= 3);
    let prev = h.c.consumer_group("g").unwrap().members["a"].previous_member_epoch;
    assert_eq!(prev, 1);
    // The previous epoch is tolerated only while it claims no more than the
    // member owns (a retried heartbeat).
    let mut old = a.clone();
    old.epoch = prev;
    old.owned = BTreeMap::from([(T1, (0..6).collect())]);
    assert_eq!(
        h.hb(&mut old).error_code,
        ResponseError::FencedMemberEpoch.code()
    );
    let mut retry = a.clone();
    retry.epoch = prev;
    let r = h.hb(&mut retry);
    assert_eq!(r.error_code, 0);
    assert_eq!(r.member_epoch, a.epoch);
    // Unknown member and unknown group.
    let mut ghost = Client {
        id: "ghost".into(),
        epoch: 3,
        owned: Assignment::new(),
    };
    assert_eq!(
        h.hb(&mut ghost).error_code,
        ResponseError::UnknownMemberId.code()
    );
    // Fenced members rejoin with epoch 0 and the same id.
    let (again, r) = h.join_with("a", &["t1"], None);
    assert_eq!(r.error_code, 0);
    assert_eq!(
        again.epoch,
        h.c.consumer_group("g").unwrap().assignment_epoch
    );
}

#[test]
fn request_validation() {
    let mut h = H::new();
    let base = ConsumerGroupHeartbeatRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_member_id(s("m"))
        .with_member_epoch(0)
        .with_rebalance_timeout_ms(30_000)
        .with_subscribed_topic_names(Some(vec![TopicName(s("t1"))]))
        .with_topic_partitions(Some(vec![]));
    let inv = ResponseError::InvalidRequest.code();
    assert_eq!(
        h.hb_raw(base.clone().with_member_id(s("")), 1).error_code,
        inv
    );
    assert_eq!(
        h.hb_raw(base.clone().with_group_id(GroupId(s(""))), 1)
            .error_code,
        inv
    );
    assert_eq!(
        h.hb_raw(base.clone().with_rebalance_timeout_ms(-1), 1)
            .error_code,
        inv
    );
    assert_eq!(
        h.hb_raw(base.clone().with_topic_partitions(None), 1)
            .error_code,
        inv
    );
    assert_eq!(
        h.hb_raw(base.clone().with_subscribed_topic_names(None), 1)
            .error_code,
        inv
    );
    assert_eq!(
        h.hb_raw(base.clone().with_member_epoch(-3), 1).error_code,
        inv
    );
    assert_eq!(
        h.hb_raw(base.clone().with_subscribed_topic_regex(Some(s("t.("))), 1)
            .error_code,
        ResponseError::InvalidRegularExpression.code()
    );
    assert_eq!(
        h.hb_raw(base.clone().with_server_assignor(Some(s("sticky"))), 1)
            .error_code,
        ResponseError::UnsupportedAssignor.code()
    );
    // v0: the coordinator picks the member id.
    let r = h.hb_raw(base.clone().with_member_id(s("")), 0);
    assert_eq!(r.error_code, 0);
    assert!(!r.member_id.unwrap().is_empty());
    // Max size.
    let mut small = GroupCoordinator::new(GroupConfig {
        group_max_size: 1,
        ..GroupConfig::default()
    });
    load_all(&mut small, &[], 0);
    h.c = small;
    assert_eq!(h.hb_raw(base.clone(), 1).error_code, 0);
    assert_eq!(
        h.hb_raw(base.clone().with_member_id(s("m2")), 1).error_code,
        ResponseError::GroupMaxSizeReached.code()
    );
    // Loading, then not coordinated here.
    let partition = h.c.partition_for("g");
    h.c.begin_load(partition);
    assert_eq!(
        h.hb_raw(base.clone(), 1).error_code,
        ResponseError::CoordinatorLoadInProgress.code()
    );
    h.c.unload(partition);
    assert_eq!(
        h.hb_raw(base, 1).error_code,
        ResponseError::NotCoordinator.code()
    );
}

#[test]
fn range_assignor_and_subscription_changes() {
    let mut h = H::new();
    let (a, _) = h.join_with("a", &["t1", "t2"], Some("range"));
    let (b, _) = h.join_with("b", &["t1", "t2"], Some("range"));
    let mut all = vec![a, b];
    h.settle(&mut all);
    let g = h.c.consumer_group("g").unwrap();
    assert_eq!(g.assignor, "range");
    assert_eq!(all[0].owned[&T1], BTreeSet::from([0, 1, 2]));
    assert_eq!(all[0].owned[&T2], BTreeSet::from([0, 1]));
    assert_eq!(all[1].owned[&T1], BTreeSet::from([3, 4, 5]));
    assert_eq!(all[1].owned[&T2], BTreeSet::from([2, 3]));
    // New partitions show up at the next heartbeat and bump the epoch.
    h.topics.insert("t2".into(), (T2, 6));
    h.settle(&mut all);
    assert_eq!(h.c.consumer_group("g").unwrap().group_epoch, 3);
    assert_eq!(all[0].owned[&T2], BTreeSet::from([0, 1, 2]));
    assert_eq!(all[1].owned[&T2], BTreeSet::from([3, 4, 5]));
    assert_eq!(h.describe().assignor_name.as_str(), "range");
}

#[test]
fn assignors_directly() {
    let parts = BTreeMap::from([(T1, 7), (T2, 2)]);
    let both = BTreeSet::from([T1, T2]);
    let m = |id: &'static str, topics: BTreeSet<Uuid>| AssignorMember {
        member_id: id,
        topics,
        previous: None,
    };
    let out = assignor::uniform(
        &[
            m("a", both.clone()),
            m("b", both.clone()),
            m("c", both.clone()),
        ],
        &parts,
    );
    let mut counts: Vec<usize> = out.values().map(count).collect();
    counts.sort();
    assert_eq!(counts, vec![3, 3, 3]);
    // Heterogeneous: only a subscribes to t2.
    let out = assignor::uniform(
        &[m("a", both.clone()), m("b", BTreeSet::from([T1]))],
        &parts,
    );
    assert_eq!(count(&out["a"]) + count(&out["b"]), 9);
    assert!(!out["b"].contains_key(&T2));
    assert!(count(&out["a"]).abs_diff(count(&out["b"])) <= 1);
    // Sticky: a new member takes only from the surplus.
    let prev = assignor::uniform(&[m("a", both.clone()), m("b", both.clone())], &parts);
    let members = [
        AssignorMember {
            member_id: "a",
            topics: both.clone(),
            previous: Some(&prev["a"]),
        },
        AssignorMember {
            member_id: "b",
            topics: both.clone(),
            previous: Some(&prev["b"]),
        },
        m("c", both.clone()),
    ];
    let next = assignor::uniform(&members, &parts);
    let kept = |id: &str| {
        next[id]
            .iter()
            .flat_map(|(t, ps)| ps.iter().map(move |p| (*t, *p)))
            .filter(|(t, p)| prev[id].get(t).is_some_and(|s| s.contains(p)))
            .count()
    };
    assert_eq!(kept("a") + kept("b"), 6);
    assert_eq!(count(&next["c"]), 3);
}

#[test]
fn describe_shows_members_assignments_and_targets() {
    let mut h = H::new();
    let a = h.join("a");
    let _b = h.join("b");
    let d = h.describe();
    assert_eq!(d.error_code, 0);
    assert_eq!(d.group_state.as_str(), "Reconciling");
    assert_eq!((d.group_epoch, d.assignment_epoch), (2, 2));
    assert_eq!(d.members.len(), 2);
    let ma = d
        .members
        .iter()
        .find(|m| m.member_id.as_str() == "a")
        .unwrap();
    assert_eq!(ma.member_epoch, a.epoch);
    assert_eq!(ma.client_id.as_str(), "cli");
    assert_eq!(ma.subscribed_topic_names[0].0.as_str(), "t1");
    assert_eq!(
        ma.assignment.topic_partitions[0].topic_name.0.as_str(),
        "t1"
    );
    assert_eq!(ma.assignment.topic_partitions[0].partitions.len(), 6);
    assert_eq!(ma.target_assignment.topic_partitions[0].partitions.len(), 3);
    assert_eq!(ma.member_type, 1);
    // Unknown group.
    let r = h.c.consumer_group_describe(
        &ConsumerGroupDescribeRequest::default().with_group_ids(vec![GroupId(s("nope"))]),
        0,
    );
    assert_eq!(
        r.groups[0].error_code,
        ResponseError::GroupIdNotFound.code()
    );
    // Admin APIs see it as a consumer group.
    let l = h.c.list_groups(
        &ListGroupsRequest::default().with_types_filter(vec![s("consumer")]),
        5,
    );
    assert_eq!(l.groups.len(), 1);
    assert_eq!(l.groups[0].group_type.as_str(), "consumer");
    assert_eq!(l.groups[0].group_state.as_str(), "Reconciling");
    let l = h.c.list_groups(
        &ListGroupsRequest::default().with_types_filter(vec![s("classic")]),
        5,
    );
    assert!(l.groups.is_empty());
    let dg = h.c.describe_groups(
        &DescribeGroupsRequest::default().with_groups(vec![GroupId(s("g"))]),
        5,
    );
    assert_eq!(dg.groups[0].protocol_type.as_str(), "consumer");
    assert_eq!(dg.groups[0].members.len(), 2);
    // DeleteGroups refuses while members remain, then deletes.
    h.token += 1;
    let fx = h.c.delete_groups(
        RequestToken(h.token),
        &DeleteGroupsRequest::default().with_groups_names(vec![GroupId(s("g"))]),
        2,
        h.now,
    );
    let Response::DeleteGroups(r) = &fx.responses[0].1 else {
        panic!()
    };
    assert_eq!(r.results[0].error_code, ResponseError::NonEmptyGroup.code());
    for id in ["a", "b"] {
        let req = ConsumerGroupHeartbeatRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_member_id(s(id))
            .with_member_epoch(-1);
        assert_eq!(h.hb_raw(req, 1).error_code, 0);
    }
    assert_eq!(h.describe().group_state.as_str(), "Empty");
    let fx = h.c.delete_groups(
        RequestToken(99),
        &DeleteGroupsRequest::default().with_groups_names(vec![GroupId(s("g"))]),
        2,
        h.now,
    );
    let Response::DeleteGroups(r) = &fx.responses[0].1 else {
        panic!()
    };
    assert_eq!(r.results[0].error_code, 0);
    assert!(h.c.consumer_group("g").is_none());
}

fn commit(h: &mut H, member: &str, epoch: i32, offset: i64) -> i16 {
    commit_partitions(h, member, epoch, 9, &[0], offset)
}

/// An OffsetCommit of `offset` for `partitions` of t1 at `version`: the
/// error they all got (a commit is refused or taken whole).
fn commit_partitions(
    h: &mut H,
    member: &str,
    epoch: i32,
    version: i16,
    partitions: &[i32],
    offset: i64,
) -> i16 {
    h.token += 1;
    let req = OffsetCommitRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_generation_id_or_member_epoch(epoch)
        .with_member_id(s(member))
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(TopicName(s("t1")))
            .with_partitions(
                partitions
                    .iter()
                    .map(|&p| {
                        OffsetCommitRequestPartition::default()
                            .with_partition_index(p)
                            .with_committed_offset(offset)
                    })
                    .collect(),
            )]);
    let fx =
        h.c.offset_commit(RequestToken(h.token), &req, version, h.now);
    h.absorb(&fx);
    let Response::OffsetCommit(r) = &fx.responses[0].1 else {
        panic!()
    };
    let errors: BTreeSet<i16> = r.topics[0]
        .partitions
        .iter()
        .map(|p| p.error_code)
        .collect();
    assert_eq!(errors.len(), 1, "one error for the whole commit: {r:?}");
    errors.into_iter().next().unwrap()
}

/// The partitions of t1 a client owns.
fn t1_partitions(c: &Client) -> Vec<i32> {
    c.owned
        .get(&T1)
        .map(|ps| ps.iter().copied().collect())
        .unwrap_or_default()
}

/// KIP-1251: a commit from an older member epoch is taken for partitions
/// the member held already at that epoch, and refused for any it was
/// handed since (or no longer holds); assignment epochs survive a restart.
#[test]
fn an_older_epoch_commits_only_partitions_held_since_then() {
    let stale = ResponseError::StaleMemberEpoch.code();
    let mut h = H::new();
    let mut a = h.join("a");
    let first = a.epoch;
    let mut all = vec![a.clone(), h.join("b")];
    h.settle(&mut all);
    let [kept_a, b] = [&all[0], &all[1]].map(t1_partitions);
    a = all[0].clone();
    assert!(a.epoch > first && kept_a.len() == 3 && b.len() == 3);
    // a moved on with the partitions it kept; a commit it sent before it
    // heard so commits them, but not one it gave to b.
    assert_eq!(commit_partitions(&mut h, "a", first, 9, &kept_a, 10), 0);
    assert_eq!(commit_partitions(&mut h, "a", first, 9, &b[..1], 10), stale);
    assert_eq!(
        commit_partitions(&mut h, "a", a.epoch + 1, 9, &kept_a, 10),
        stale
    );
    // b got its partitions at its current epoch: nothing older commits.
    assert_eq!(commit_partitions(&mut h, "b", first, 9, &b, 10), stale);
    assert_eq!(commit_partitions(&mut h, "b", all[1].epoch, 9, &b, 10), 0);
    // A member of the consumer protocol commits with v9 or later.
    assert_eq!(
        commit_partitions(&mut h, "a", a.epoch, 8, &kept_a, 10),
        ResponseError::UnsupportedVersion.code()
    );

    // b leaves; a takes its partitions at a newer epoch.
    let second = a.epoch;
    let req = ConsumerGroupHeartbeatRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_member_id(s("b"))
        .with_member_epoch(-1);
    assert_eq!(h.hb_raw(req, 1).error_code, 0);
    let mut only = vec![a];
    h.settle(&mut only);
    let a = only.pop().unwrap();
    assert!(a.epoch > second && t1_partitions(&a).len() == 6);
    let before = h.c.committed_offsets("g");
    let mixed: Vec<i32> = kept_a.iter().chain(&b[..1]).copied().collect();
    assert_eq!(commit_partitions(&mut h, "a", second, 9, &mixed, 20), stale);
    assert_eq!(
        h.c.committed_offsets("g"),
        before,
        "a refused commit writes nothing"
    );
    assert_eq!(commit_partitions(&mut h, "a", second, 9, &kept_a, 20), 0);

    // The epochs are records of their own: a restart keeps them.
    let states = member_states(&h);
    h.restart();
    assert_eq!(member_states(&h), states);
    assert_eq!(commit_partitions(&mut h, "a", first, 9, &kept_a, 30), 0);
    assert_eq!(commit_partitions(&mut h, "a", second, 9, &b, 30), stale);
}

#[test]
fn offsets_commit_and_fetch_with_member_epochs() {
    let mut h = H::new();
    let a = h.join("a");
    let before = h.records;
    assert_eq!(commit(&mut h, "a", a.epoch, 10), 0);
    assert_eq!(h.records, before + 1, "the offset record");
    assert_eq!(
        commit(&mut h, "a", a.epoch + 1, 11),
        ResponseError::StaleMemberEpoch.code()
    );
    assert_eq!(
        commit(&mut h, "a", 0, 11),
        ResponseError::StaleMemberEpoch.code()
    );
    assert_eq!(
        commit(&mut h, "zz", 1, 11),
        ResponseError::UnknownMemberId.code()
    );
    assert_eq!(
        commit(&mut h, "", -1, 11),
        ResponseError::UnknownMemberId.code(),
        "admin commit to a non-empty group"
    );
    assert_eq!(h.c.committed_offsets("g"), vec![("t1".to_string(), 0, 10)]);
    let fetch = |h: &H, member: &str, epoch: i32| {
        let req =
            OffsetFetchRequest::default().with_groups(vec![OffsetFetchRequestGroup::default()
                .with_group_id(GroupId(s("g")))
                .with_member_id(Some(s(member)))
                .with_member_epoch(epoch)
                .with_topics(None)]);
        h.c.offset_fetch(&req, 9).groups[0].clone()
    };
    let g = fetch(&h, "a", a.epoch);
    assert_eq!(g.error_code, 0);
    assert_eq!(g.topics[0].partitions[0].committed_offset, 10);
    assert_eq!(
        fetch(&h, "a", 5).error_code,
        ResponseError::StaleMemberEpoch.code()
    );
    assert_eq!(
        fetch(&h, "x", 1).error_code,
        ResponseError::UnknownMemberId.code()
    );
    assert_eq!(fetch(&h, "", -1).error_code, 0, "admin fetch");
    // Once empty, an admin (epoch -1) may commit.
    let req = ConsumerGroupHeartbeatRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_member_id(s("a"))
        .with_member_epoch(-1);
    h.hb_raw(req, 1);
    assert_eq!(commit(&mut h, "", -1, 12), 0);
}

#[test]
fn transactional_commits_check_the_member_epoch() {
    use kafka_protocol::messages::txn_offset_commit_request::{
        TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
    };
    let mut h = H::new();
    let a = h.join("a");
    let mut txn_commit = |member: &str, epoch: i32| {
        h.token += 1;
        let req = TxnOffsetCommitRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_producer_id(ProducerId(7))
            .with_generation_id(epoch)
            .with_member_id(s(member))
            .with_topics(vec![TxnOffsetCommitRequestTopic::default()
                .with_name(TopicName(s("t1")))
                .with_partitions(vec![TxnOffsetCommitRequestPartition::default()
                    .with_partition_index(0)
                    .with_committed_offset(5)])]);
        let fx = h.c.txn_offset_commit(RequestToken(h.token), &req, 4, h.now);
        let Response::TxnOffsetCommit(r) = &fx.responses[0].1 else {
            panic!()
        };
        (r.topics[0].partitions[0].error_code, fx.records.len())
    };
    // A stale epoch is an illegal generation to a transactional producer.
    assert_eq!(
        txn_commit("a", a.epoch + 1),
        (ResponseError::IllegalGeneration.code(), 0)
    );
    assert_eq!(
        txn_commit("zz", a.epoch),
        (ResponseError::UnknownMemberId.code(), 0)
    );
    assert_eq!(txn_commit("a", a.epoch), (0, 1));
    // No member fields (before v3, or a producer given no group
    // metadata): the group does not fence it.
    assert_eq!(txn_commit("", -1), (0, 1));
}

#[test]
fn restart_makes_returning_members_rejoin_and_keeps_offsets() {
    let mut h = H::new();
    let a = h.join("a");
    assert_eq!(commit(&mut h, "a", a.epoch, 42), 0);
    // A fresh coordinator that replayed only the offset record.
    let mut c = GroupCoordinator::new(GroupConfig::default());
    let key = crate::records::offset_commit_key("g", "t1", 0);
    let value = crate::records::OffsetCommitValue {
        offset: 42,
        leader_epoch: -1,
        metadata: String::new(),
        commit_timestamp_ms: 1,
    };
    let record = LogEntry::Record {
        key,
        value: Some(value.encode()),
        producer_id: None,
    };
    let partition = c.partition_for("g");
    load_all(&mut c, &[(partition, record)], 0);
    h.c = c;
    let mut back = a.clone();
    assert_eq!(
        h.hb(&mut back).error_code,
        ResponseError::UnknownMemberId.code()
    );
    assert_eq!(
        commit(&mut h, "a", a.epoch, 43),
        ResponseError::UnknownMemberId.code()
    );
    let (again, _) = h.join_with("a", &["t1"], None);
    assert_eq!(again.epoch, 1);
    assert_eq!(count(&again.owned), 6);
    assert_eq!(h.c.committed_offsets("g"), vec![("t1".to_string(), 0, 42)]);
    assert_eq!(commit(&mut h, "a", 1, 44), 0);
}

#[test]
fn classic_and_consumer_groups_share_one_namespace() {
    let mut h = H::new();
    h.join("a");
    // A classic JoinGroup into a non-empty consumer group.
    h.token += 1;
    let join = JoinGroupRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_session_timeout_ms(10_000)
        .with_rebalance_timeout_ms(10_000)
        .with_protocol_type(s("consumer"))
        .with_protocols(vec![
            kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol::default()
                .with_name(s("range")),
        ]);
    let ctx = JoinContext {
        client_id: "x".into(),
        client_host: "h".into(),
        member_uuid: Uuid::nil(),
    };
    let fx = h.c.join_group(RequestToken(h.token), &join, 9, &ctx, h.now);
    let Response::JoinGroup(r) = &fx.responses[0].1 else {
        panic!()
    };
    assert_eq!(
        r.error_code,
        ResponseError::InconsistentGroupProtocol.code()
    );
    // A consumer heartbeat into a classic group with members.
    let fx = h.c.join_group(
        RequestToken(1000),
        &join
            .clone()
            .with_group_id(GroupId(s("classic")))
            .with_member_id(s("")),
        3,
        &ctx,
        h.now,
    );
    assert!(fx.responses.is_empty(), "parked for the initial delay");
    let req = ConsumerGroupHeartbeatRequest::default()
        .with_group_id(GroupId(s("classic")))
        .with_member_id(s("m"))
        .with_member_epoch(0)
        .with_rebalance_timeout_ms(30_000)
        .with_subscribed_topic_names(Some(vec![TopicName(s("t1"))]))
        .with_topic_partitions(Some(vec![]));
    assert_eq!(
        h.hb_raw(req, 1).error_code,
        ResponseError::GroupIdNotFound.code()
    );
}

#[test]
fn offset_delete_respects_consumer_subscriptions() {
    use kafka_protocol::messages::offset_delete_request::{
        OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
    };
    let mut h = H::new();
    let a = h.join("a");
    assert_eq!(commit(&mut h, "a", a.epoch, 5), 0);
    let del = |h: &mut H, topic: &str| {
        let req = OffsetDeleteRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_topics(vec![OffsetDeleteRequestTopic::default()
                .with_name(TopicName(s(topic)))
                .with_partitions(vec![
                    OffsetDeleteRequestPartition::default().with_partition_index(0)
                ])]);
        let fx = h.c.offset_delete(RequestToken(500), &req, 0, h.now);
        let Response::OffsetDelete(r) = &fx.responses[0].1 else {
            panic!()
        };
        (r.error_code, r.topics[0].partitions[0].error_code)
    };
    assert_eq!(
        del(&mut h, "t1"),
        (0, ResponseError::GroupSubscribedToTopic.code())
    );
    assert_eq!(del(&mut h, "other"), (0, 0));
}

#[test]
fn a_static_member_returning_in_time_keeps_its_assignment() {
    let mut h = H::new();
    let join = |h: &mut H, id: &str, instance: &str| {
        let req = ConsumerGroupHeartbeatRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_member_id(s(id))
            .with_member_epoch(0)
            .with_instance_id(Some(s(instance)))
            .with_rebalance_timeout_ms(30_000)
            .with_subscribed_topic_names(Some(vec![TopicName(s("t1"))]))
            .with_topic_partitions(Some(vec![]));
        h.hb_raw(req, 1)
    };
    let r = join(&mut h, "a", "i-a");
    let mut a = Client {
        id: "a".into(),
        epoch: r.member_epoch,
        owned: Assignment::new(),
    };
    apply(&mut a, &r);
    let r = join(&mut h, "b", "i-b");
    let mut b = Client {
        id: "b".into(),
        epoch: r.member_epoch,
        owned: Assignment::new(),
    };
    apply(&mut b, &r);
    let mut all = vec![a, b];
    h.settle(&mut all);
    let (b_owned, b_epoch) = (all[1].owned.clone(), all[1].epoch);
    assert_eq!(count(&b_owned), 3);
    // A second process with the same instance id while b is there.
    assert_eq!(
        join(&mut h, "b2", "i-b").error_code,
        ResponseError::UnreleasedInstanceId.code()
    );
    // b leaves with -2: nothing moves, the group epoch stays.
    let epoch_before = h.c.consumer_group("g").unwrap().group_epoch;
    let req = ConsumerGroupHeartbeatRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_member_id(s("b"))
        .with_instance_id(Some(s("i-b")))
        .with_member_epoch(-2);
    assert_eq!(h.hb_raw(req, 1).member_epoch, -2);
    assert_eq!(h.c.consumer_group("g").unwrap().group_epoch, epoch_before);
    h.hb(&mut all[0]);
    assert_eq!(count(&all[0].owned), 3, "a gets none of b's partitions");
    // b returns as b2 with the same instance id: same epoch and partitions.
    let r = join(&mut h, "b2", "i-b");
    assert_eq!(r.error_code, 0);
    assert_eq!(r.member_epoch, b_epoch);
    let mut b2 = Client {
        id: "b2".into(),
        epoch: r.member_epoch,
        owned: Assignment::new(),
    };
    apply(&mut b2, &r);
    assert_eq!(b2.owned, b_owned);
    assert_eq!(h.c.consumer_group("g").unwrap().group_epoch, epoch_before);
    // A -2 leave that is not followed by a return times out like any member.
    let req = ConsumerGroupHeartbeatRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_member_id(s("b2"))
        .with_instance_id(Some(s("i-b")))
        .with_member_epoch(-2);
    h.hb_raw(req, 1);
    for _ in 0..10 {
        h.now += 5_000;
        h.hb(&mut all[0]);
        h.fire_due();
    }
    assert_eq!(count(&all[0].owned), 6);
}

/// Everything replay must restore of a member (deadlines aside).
type MemberRestored = (
    String,
    i32,
    i32,
    MemberState,
    Assignment,
    Assignment,
    BTreeMap<(Uuid, i32), i32>,
);

fn member_states(h: &H) -> Vec<MemberRestored> {
    h.c.consumer_group("g")
        .unwrap()
        .members
        .values()
        .map(|m| {
            (
                m.member_id.clone(),
                m.member_epoch,
                m.previous_member_epoch,
                m.state,
                m.assigned.clone(),
                m.revoking.clone(),
                m.assignment_epochs.clone(),
            )
        })
        .collect()
}

#[test]
fn replay_after_heartbeats_rebuilds_an_identical_group() {
    let mut h = H::new();
    let mut all = vec![
        h.join("a"),
        h.join_with("b", &["t1", "t2"], Some("range")).0,
    ];
    h.settle(&mut all);
    all.push(h.join_with("c", &["t2"], None).0);
    h.settle(&mut all);
    // A member leaves and another arrives; only some heartbeat afterwards,
    // so the group is caught mid-reconciliation.
    let req = ConsumerGroupHeartbeatRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_member_id(s("c"))
        .with_member_epoch(-1);
    assert_eq!(h.hb_raw(req, 1).error_code, 0);
    all.pop();
    let mut d = h.join_with("d", &["t1", "t2"], Some("range")).0;
    h.hb(&mut all[0]);
    h.hb(&mut d);
    let states = member_states(&h);
    assert!(
        states.iter().any(|m| m.3 != MemberState::Stable),
        "mid-reconciliation: {states:?}"
    );
    let described = h.describe();
    assert_eq!(described.members.len(), 3);
    let group = h.c.consumer_group("g").unwrap().clone();

    h.restart();
    assert_eq!(h.describe(), described);
    assert_eq!(member_states(&h), states);
    let g = h.c.consumer_group("g").unwrap();
    assert_eq!(g.target, group.target);
    assert_eq!(g.topics, group.topics);
    assert_eq!(
        (g.group_epoch, g.assignment_epoch),
        (group.group_epoch, group.assignment_epoch)
    );
    for m in g.members.values() {
        let old = &group.members[&m.member_id];
        assert_eq!(
            (&m.client_id, &m.client_host, &m.subscribed),
            (&old.client_id, &old.client_host, &old.subscribed)
        );
        assert_eq!(
            (&m.server_assignor, m.rebalance_timeout_ms),
            (&old.server_assignor, old.rebalance_timeout_ms)
        );
    }
    // The left member's records were tombstoned: it is not back.
    assert!(!g.members.contains_key("c"));

    // The rebuilt group finishes reconciling as the original would have.
    all.push(d);
    h.settle(&mut all);
    assert_no_double_ownership(&all);
    assert_eq!(all_owned(&all).len(), 10);
    assert_eq!(h.describe().group_state.as_str(), "Stable");
    // And a second restart from the longer log agrees again.
    let described = h.describe();
    h.restart();
    assert_eq!(h.describe(), described);
}

#[test]
fn a_restored_member_heartbeats_with_its_old_epoch() {
    let mut h = H::new();
    let mut all = vec![h.join("a"), h.join("b")];
    h.settle(&mut all);
    let epochs: Vec<i32> = all.iter().map(|c| c.epoch).collect();
    let owned: Vec<Assignment> = all.iter().map(|c| c.owned.clone()).collect();
    let group_epoch = h.c.consumer_group("g").unwrap().group_epoch;
    assert_eq!(commit(&mut h, "a", all[0].epoch, 42), 0);

    h.now += 3_000;
    h.restart();
    let written = h.records;
    for (i, c) in all.iter_mut().enumerate() {
        let r = h.hb(c);
        assert_eq!(r.error_code, 0, "{:?}", r.error_message);
        assert_eq!(
            r.member_id.as_ref().map(|m| m.to_string()),
            Some(c.id.clone())
        );
        assert_eq!(c.epoch, epochs[i]);
        assert_eq!(c.owned, owned[i]);
    }
    assert_eq!(h.records, written, "nothing changed, nothing written");
    assert_eq!(h.c.consumer_group("g").unwrap().group_epoch, group_epoch);
    assert_eq!(h.describe().group_state.as_str(), "Stable");
    // Offsets commit with the old epoch too.
    assert_eq!(commit(&mut h, "a", epochs[0], 43), 0);
    assert_eq!(h.c.committed_offsets("g"), vec![("t1".to_string(), 0, 43)]);
}

#[test]
fn a_restored_member_that_never_returns_is_removed_after_its_session() {
    let mut h = H::new();
    let mut all = vec![h.join("a"), h.join("b")];
    h.settle(&mut all);
    h.restart();
    let session = i64::from(GroupConfig::default().consumer_session_timeout_ms);
    assert_eq!(
        h.timers.get(&TimerKey::ConsumerSession {
            group_id: "g".into(),
            member_id: "b".into(),
        }),
        Some(&(h.now + session)),
        "restored members' session timers are armed"
    );
    // a comes back, b never does.
    for _ in 0..10 {
        h.now += 5_000;
        assert_eq!(h.hb(&mut all[0]).error_code, 0);
        h.fire_due();
    }
    let g = h.c.consumer_group("g").unwrap();
    assert_eq!(g.members.keys().collect::<Vec<_>>(), vec!["a"]);
    h.hb(&mut all[0]);
    assert_eq!(count(&all[0].owned), 6);
    assert_eq!(
        h.hb(&mut all[1]).error_code,
        ResponseError::UnknownMemberId.code()
    );
    // Its removal was written: after another restart it stays gone.
    let member_key = crate::records::consumer_group_member_metadata_key("g", "b");
    let tombstone = LogEntry::Record {
        key: member_key,
        value: None,
        producer_id: None,
    };
    assert!(h.log.contains(&(h.c.partition_for("g"), tombstone)));
    h.restart();
    assert!(!h.c.consumer_group("g").unwrap().members.contains_key("b"));
    assert_eq!(
        count(&h.c.consumer_group("g").unwrap().members["a"].assigned),
        6
    );
}

#[test]
fn a_deleted_consumer_group_stays_deleted_after_replay() {
    let mut h = H::new();
    let a = h.join("a");
    assert_eq!(commit(&mut h, "a", a.epoch, 7), 0);
    let req = ConsumerGroupHeartbeatRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_member_id(s("a"))
        .with_member_epoch(-1);
    assert_eq!(h.hb_raw(req, 1).error_code, 0);
    // Restart while empty: the group is there, empty, with its offsets.
    h.restart();
    assert_eq!(h.describe().group_state.as_str(), "Empty");
    assert!(h.c.group("g").is_none(), "not a classic group");
    h.token += 1;
    let fx = h.c.delete_groups(
        RequestToken(h.token),
        &DeleteGroupsRequest::default().with_groups_names(vec![GroupId(s("g"))]),
        2,
        h.now,
    );
    h.absorb(&fx);
    let tombstones = fx.records.iter().filter(|(_, _, v)| v.is_none()).count();
    // Group, partition and target metadata, and the offset (the member was
    // tombstoned when it left), and the classic group key.
    assert_eq!(tombstones, 5, "{:?}", fx.records);
    h.restart();
    assert!(h.c.consumer_group("g").is_none());
    assert!(h.c.group("g").is_none());
    assert!(h.c.committed_offsets("g").is_empty());
}

// ---------------------------------------------------------------- regex subscriptions

const T3: Uuid = Uuid::from_u128(0x3333);
const X1: Uuid = Uuid::from_u128(0x7771);

/// Every partition of the given topics, as `all_owned` lists them.
fn partitions_of(topics: &[(Uuid, i32)]) -> Vec<(Uuid, i32)> {
    let mut v: Vec<(Uuid, i32)> = topics
        .iter()
        .flat_map(|&(t, n)| (0..n).map(move |p| (t, p)))
        .collect();
    v.sort();
    v
}

#[test]
fn a_regex_subscription_gets_the_partitions_of_the_matching_topics() {
    let mut h = H::new();
    // Matched against whole names: `t\d` does not take `xt1`.
    h.topics.insert("xt1".into(), (X1, 3));
    let mut all = vec![
        h.join_regex("a", r"t\d", None),
        h.join_regex("b", r"t\d", None),
    ];
    h.settle(&mut all);
    assert_eq!(all_owned(&all), partitions_of(&[(T1, 6), (T2, 4)]));
    assert_no_double_ownership(&all);
    assert!(all.iter().all(|c| count(&c.owned) == 5), "{all:?}");
    let g = h.c.consumer_group("g").unwrap();
    assert_eq!(
        g.topics.keys().collect::<Vec<_>>(),
        vec!["t1", "t2"],
        "the group's subscribed topics"
    );
    assert_eq!(g.group_epoch, 2, "one bump per join, none for resolving");
    let d = h.describe();
    assert_eq!(d.group_state.as_str(), "Stable");
    for m in &d.members {
        assert_eq!(m.subscribed_topic_regex.as_deref(), Some(r"t\d"));
        assert!(m.subscribed_topic_names.is_empty());
    }
}

#[test]
fn an_invalid_regex_is_refused_with_invalid_regular_expression() {
    let mut h = H::new();
    let join = |h: &mut H, regex: &str| {
        let req = ConsumerGroupHeartbeatRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_member_id(s("a"))
            .with_member_epoch(0)
            .with_rebalance_timeout_ms(30_000)
            .with_subscribed_topic_regex(Some(s(regex)))
            .with_topic_partitions(Some(vec![]));
        h.hb_raw(req, 1)
    };
    let r = join(&mut h, "t(");
    assert_eq!(r.error_code, ResponseError::InvalidRegularExpression.code());
    let message = r.error_message.unwrap();
    assert!(
        message.starts_with("SubscribedTopicRegex `t(` is not a valid regular expression: "),
        "{message}"
    );
    assert!(!message.contains('\n'), "one line: {message}");
    // Valid only once wrapped in the anchors' group: still refused.
    assert_eq!(
        join(&mut h, "a)|(b").error_code,
        ResponseError::InvalidRegularExpression.code()
    );
    assert!(h.c.consumer_group("g").is_none(), "no group was created");
    // A member in the group that changes to an invalid regex keeps its old
    // subscription.
    let mut a = h.join_regex("a", "t.*", None);
    let req = ConsumerGroupHeartbeatRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_member_id(s("a"))
        .with_member_epoch(a.epoch)
        .with_rebalance_timeout_ms(-1)
        .with_subscribed_topic_regex(Some(s("[t")));
    assert_eq!(
        h.hb_raw(req, 1).error_code,
        ResponseError::InvalidRegularExpression.code()
    );
    assert_eq!(h.hb(&mut a).error_code, 0);
    assert_eq!(count(&a.owned), 10);
    let g = h.c.consumer_group("g").unwrap();
    assert_eq!(
        g.members["a"].subscribed_topic_regex.as_deref(),
        Some("t.*")
    );
}

#[test]
fn a_topic_created_or_deleted_under_a_regex_bumps_the_epoch_and_moves_partitions() {
    let mut h = H::new();
    let mut all = vec![
        h.join_regex("a", "t.*", None),
        h.join_regex("b", "t.*", None),
    ];
    h.settle(&mut all);
    let epoch = h.c.consumer_group("g").unwrap().group_epoch;
    assert_eq!(all_owned(&all), partitions_of(&[(T1, 6), (T2, 4)]));
    // Heartbeats with nothing new change nothing.
    let written = h.records;
    h.settle(&mut all);
    assert_eq!(
        h.records, written,
        "resolving the same topics writes nothing"
    );
    assert_eq!(h.c.consumer_group("g").unwrap().group_epoch, epoch);

    // A matching topic appears: the next heartbeat bumps the epoch and the
    // members get its partitions.
    h.topics.insert("t3".into(), (T3, 4));
    h.hb(&mut all[0]);
    let g = h.c.consumer_group("g").unwrap();
    assert_eq!(g.group_epoch, epoch + 1);
    assert_eq!(g.assignment_epoch, epoch + 1);
    assert!(g.topics.contains_key("t3"));
    h.settle(&mut all);
    assert_no_double_ownership(&all);
    assert_eq!(all_owned(&all), partitions_of(&[(T1, 6), (T2, 4), (T3, 4)]));
    assert!(all
        .iter()
        .all(|c| c.epoch == epoch + 1 && count(&c.owned) == 7));
    // A topic that does not match changes nothing.
    h.topics.insert("other".into(), (X1, 2));
    h.settle(&mut all);
    assert_eq!(h.c.consumer_group("g").unwrap().group_epoch, epoch + 1);

    // A matched topic is deleted: another bump, and its partitions go.
    h.topics.remove("t1");
    h.settle(&mut all);
    assert_eq!(h.c.consumer_group("g").unwrap().group_epoch, epoch + 2);
    assert_eq!(all_owned(&all), partitions_of(&[(T2, 4), (T3, 4)]));
    assert_eq!(h.describe().group_state.as_str(), "Stable");
}

#[test]
fn names_and_a_regex_subscribe_to_the_union() {
    let mut h = H::new();
    h.topics.insert("x1".into(), (X1, 2));
    // librdkafka's way: names and a regex in one request.
    let a = h.join_regex("a", "x.*", Some(&["t1"]));
    // The other member subscribes by names, with librdkafka's empty regex.
    let b = h.join_regex("b", "", Some(&["t2"]));
    let mut all = vec![a, b];
    h.settle(&mut all);
    let g = h.c.consumer_group("g").unwrap();
    assert_eq!(
        g.subscribed_topic_names(),
        BTreeSet::from(["t1", "t2", "x1"])
    );
    assert_eq!(g.members["b"].subscribed_topic_regex, None);
    assert_eq!(all[0].owned.keys().collect::<Vec<_>>(), vec![&T1, &X1]);
    assert_eq!(count(&all[0].owned), 8);
    assert_eq!(all[1].owned.keys().collect::<Vec<_>>(), vec![&T2]);
    assert_eq!(count(&all[1].owned), 4);
    let d = h.describe();
    let da = d
        .members
        .iter()
        .find(|m| m.member_id.as_str() == "a")
        .unwrap();
    assert_eq!(da.subscribed_topic_regex.as_deref(), Some("x.*"));
    assert_eq!(da.subscribed_topic_names[0].0.as_str(), "t1");

    // An empty regex clears a's: x1 leaves the group's topics and a gives
    // its partitions up.
    let epoch = g.group_epoch;
    let req = ConsumerGroupHeartbeatRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_member_id(s("a"))
        .with_member_epoch(all[0].epoch)
        .with_rebalance_timeout_ms(-1)
        .with_subscribed_topic_regex(Some(s("")))
        .with_topic_partitions(Some(owned_tps(&all[0].owned)));
    let r = h.hb_raw(req, 1);
    assert_eq!(r.error_code, 0);
    apply(&mut all[0], &r);
    h.settle(&mut all);
    let g = h.c.consumer_group("g").unwrap();
    assert_eq!(g.group_epoch, epoch + 1, "one bump for the change");
    assert!(g.resolved_regexes.is_empty(), "nobody subscribes with x.*");
    assert_eq!(g.subscribed_topic_names(), BTreeSet::from(["t1", "t2"]));
    assert_eq!(all_owned(&all), partitions_of(&[(T1, 6), (T2, 4)]));
}

#[test]
fn regexes_never_match_internal_topics() {
    let mut h = H::new();
    h.topics
        .insert("__consumer_offsets".into(), (Uuid::from_u128(0xc0), 50));
    h.topics
        .insert("__transaction_state".into(), (Uuid::from_u128(0x75), 50));
    let mut all = vec![
        h.join_regex("a", ".*", None),
        h.join_regex("b", "__.*", None),
    ];
    h.settle(&mut all);
    let g = h.c.consumer_group("g").unwrap();
    assert_eq!(
        g.resolved_regexes[".*"].topics,
        BTreeSet::from(["t1".to_owned(), "t2".to_owned()])
    );
    assert!(g.resolved_regexes["__.*"].topics.is_empty());
    assert_eq!(all_owned(&all), partitions_of(&[(T1, 6), (T2, 4)]));
    assert_eq!(count(&all[1].owned), 0);
}

#[test]
fn a_regex_subscription_survives_a_restart() {
    let mut h = H::new();
    let mut all = vec![
        h.join_regex("a", "t.*", None),
        h.join_regex("b", "t.*", Some(&["extra"])),
    ];
    h.settle(&mut all);
    let described = h.describe();
    let states = member_states(&h);
    let group_epoch = h.c.consumer_group("g").unwrap().group_epoch;

    h.restart();
    assert_eq!(h.describe(), described);
    assert_eq!(member_states(&h), states);
    let g = h.c.consumer_group("g").unwrap();
    assert_eq!(
        g.members["a"].subscribed_topic_regex.as_deref(),
        Some("t.*")
    );
    assert_eq!(
        g.members["b"].subscribed.iter().collect::<Vec<_>>(),
        vec!["extra"]
    );
    // Resolved again from the stored subscribed topics, before anyone
    // heartbeats: a timer that recomputes the target keeps the regex topics.
    assert_eq!(
        g.resolved_regexes["t.*"].topics,
        BTreeSet::from(["t1".to_owned(), "t2".to_owned()])
    );
    let written = h.records;
    h.settle(&mut all);
    assert_eq!(h.records, written, "nothing changed, nothing written");
    assert_eq!(h.c.consumer_group("g").unwrap().group_epoch, group_epoch);

    // a leaves; b, alone, still gets every matching partition.
    let req = ConsumerGroupHeartbeatRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_member_id(s("a"))
        .with_member_epoch(-1);
    assert_eq!(h.hb_raw(req, 1).error_code, 0);
    let g = h.c.consumer_group("g").unwrap();
    assert_eq!(count(&g.target["b"]), 10);
    // And the regex goes on resolving: a new topic after the restart.
    h.topics.insert("t3".into(), (T3, 2));
    let mut b = all.pop().unwrap();
    h.settle(std::slice::from_mut(&mut b));
    assert_eq!(count(&b.owned), 12);
}
