//! TxnOffsetCommit and the transaction markers: pending offsets, what
//! OffsetFetch shows of them, validation, versions, deletion, expiry and
//! replay.

use kafka_protocol::messages::txn_offset_commit_request::{
    TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
};
use kafka_protocol::protocol::{Decodable, HeaderVersion};

use super::*;

const P1: i64 = 1000;
const P2: i64 = 2000;

/// A TxnOffsetCommit of `(topic, partition, offset)`s by producer
/// `producer_id` at epoch 0, without member fields (a simple producer).
fn txn_req(group: &str, producer_id: i64, offsets: &[(&str, i32, i64)]) -> TxnOffsetCommitRequest {
    let mut topics: BTreeMap<&str, Vec<TxnOffsetCommitRequestPartition>> = BTreeMap::new();
    for (t, p, o) in offsets {
        topics.entry(t).or_default().push(
            TxnOffsetCommitRequestPartition::default()
                .with_partition_index(*p)
                .with_committed_offset(*o)
                .with_committed_leader_epoch(3)
                .with_committed_metadata(Some(s("txn"))),
        );
    }
    TxnOffsetCommitRequest::default()
        .with_transactional_id(TransactionalId(s("tx")))
        .with_group_id(GroupId(s(group)))
        .with_producer_id(ProducerId(producer_id))
        .with_producer_epoch(0)
        .with_topics(
            topics
                .into_iter()
                .map(|(t, ps)| {
                    TxnOffsetCommitRequestTopic::default()
                        .with_name(TopicName(s(t)))
                        .with_partitions(ps)
                })
                .collect(),
        )
}

fn member(req: TxnOffsetCommitRequest, generation: i32, member: &str) -> TxnOffsetCommitRequest {
    req.with_generation_id(generation).with_member_id(s(member))
}

impl H {
    /// Sends a TxnOffsetCommit; its response is encoded at `version`.
    fn txn_commit_with(
        &mut self,
        req: &TxnOffsetCommitRequest,
        version: i16,
    ) -> TxnOffsetCommitResponse {
        let t = self.token(version);
        let fx = self.c.txn_offset_commit(t, req, version, self.now);
        self.absorb(fx);
        match self.take(t) {
            Some(Response::TxnOffsetCommit(r)) => r,
            other => panic!("expected a TxnOffsetCommit response, got {other:?}"),
        }
    }

    /// Every partition's error of a v4 TxnOffsetCommit.
    fn txn_commit(&mut self, req: &TxnOffsetCommitRequest) -> Vec<i16> {
        self.txn_commit_with(req, 4)
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
            .collect()
    }

    /// The transaction coordinator's marker for `producer_id` in the
    /// partition of `group`, written and then reported.
    fn marker(&mut self, group: &str, producer_id: i64, commit: bool) {
        let partition = self.c.partition_for(group);
        self.log.push((
            partition,
            LogEntry::Marker {
                producer_id,
                commit,
            },
        ));
        self.c.complete_transaction(partition, producer_id, commit);
    }

    /// `(offset, error)` of each partition of `topic` in a v7 OffsetFetch.
    fn fetch_partitions(
        c: &GroupCoordinator,
        group: &str,
        topic: &str,
        partitions: &[i32],
        require_stable: bool,
    ) -> Vec<(i64, i16)> {
        let req = OffsetFetchRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_require_stable(require_stable)
            .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                .with_name(TopicName(s(topic)))
                .with_partition_indexes(partitions.to_vec())]));
        let r = c.offset_fetch(&req, 7);
        r.encode(&mut BytesMut::new(), 7).expect("encodes");
        assert_eq!(r.error_code, 0);
        r.topics[0]
            .partitions
            .iter()
            .map(|p| (p.committed_offset, p.error_code))
            .collect()
    }

    /// A fetch with `require_stable`.
    fn stable(&self, group: &str, topic: &str, partitions: &[i32]) -> Vec<(i64, i16)> {
        H::fetch_partitions(&self.c, group, topic, partitions, true)
    }

    /// A fetch without `require_stable`.
    fn last_committed(&self, group: &str, topic: &str, partitions: &[i32]) -> Vec<(i64, i16)> {
        H::fetch_partitions(&self.c, group, topic, partitions, false)
    }
}

const UNSTABLE: i16 = ResponseError::UnstableOffsetCommit.code();

#[test]
fn committed_transaction_offsets_become_visible_at_the_commit_marker() {
    let mut h = H::quick();
    assert_eq!(
        h.txn_commit(&txn_req("g", P1, &[("t", 0, 5), ("t", 1, 6)])),
        vec![0, 0]
    );
    let written = h.log.last().unwrap();
    assert!(matches!(
        written.1,
        LogEntry::Record {
            producer_id: Some(P1),
            value: Some(_),
            ..
        }
    ));
    // Pending: not committed, and unstable for a fetch that requires it.
    assert_eq!(h.last_committed("g", "t", &[0, 1, 2]), vec![(-1, 0); 3]);
    assert_eq!(
        h.stable("g", "t", &[0, 1, 2]),
        vec![(-1, UNSTABLE), (-1, UNSTABLE), (-1, 0)]
    );
    assert!(h.c.committed_offsets("g").is_empty());
    assert!(h.c.group("g").is_some(), "a simple group holds them");

    h.marker("g", P1, true);
    assert_eq!(h.stable("g", "t", &[0, 1]), vec![(5, 0), (6, 0)]);
    let v = h.c.offsets().get("g", "t", 0).unwrap();
    assert_eq!((v.leader_epoch, v.metadata.as_str()), (3, "txn"));
    assert!(!h.c.offsets().tracks_transactions());
    // A second marker for the producer finds nothing and changes nothing.
    let before = h.c.offsets().clone();
    h.marker("g", P1, true);
    h.marker("g", P2, false);
    assert_eq!(h.c.offsets(), &before);
}

#[test]
fn aborted_transaction_offsets_are_dropped() {
    let mut h = H::quick();
    assert_eq!(h.commit_errors("g", -1, "", &[("t", 0, 3, "")]), vec![0]);
    assert_eq!(h.txn_commit(&txn_req("g", P1, &[("t", 0, 5)])), vec![0]);
    assert_eq!(
        h.last_committed("g", "t", &[0]),
        vec![(3, 0)],
        "the last committed"
    );
    assert_eq!(h.stable("g", "t", &[0]), vec![(-1, UNSTABLE)]);
    h.marker("g", P1, false);
    assert_eq!(h.stable("g", "t", &[0]), vec![(3, 0)]);
    assert!(!h.c.offsets().tracks_transactions());
}

#[test]
fn the_commit_written_last_wins() {
    let mut h = H::quick();
    // A regular commit after the transactional one stays.
    assert_eq!(
        h.txn_commit(&txn_req("g", P1, &[("t", 0, 5), ("t", 1, 5)])),
        vec![0, 0]
    );
    assert_eq!(h.commit_errors("g", -1, "", &[("t", 0, 7, "")]), vec![0]);
    h.marker("g", P1, true);
    assert_eq!(h.stable("g", "t", &[0, 1]), vec![(7, 0), (5, 0)]);

    // A transactional commit after the regular one replaces it, and a later
    // commit of the same transaction replaces an earlier one.
    assert_eq!(h.txn_commit(&txn_req("g", P1, &[("t", 0, 8)])), vec![0]);
    assert_eq!(h.txn_commit(&txn_req("g", P1, &[("t", 0, 9)])), vec![0]);
    h.marker("g", P1, true);
    assert_eq!(h.stable("g", "t", &[0]), vec![(9, 0)]);

    // Two producers: the record written later wins whichever commits first.
    assert_eq!(
        h.txn_commit(&txn_req("g", P1, &[("t", 0, 10), ("t", 1, 10)])),
        vec![0, 0]
    );
    assert_eq!(
        h.txn_commit(&txn_req("g", P2, &[("t", 0, 20), ("t", 1, 20)])),
        vec![0, 0]
    );
    h.marker("g", P2, true);
    assert_eq!(
        h.stable("g", "t", &[0, 1]),
        vec![(-1, UNSTABLE); 2],
        "P1 still open"
    );
    h.marker("g", P1, true);
    assert_eq!(h.stable("g", "t", &[0, 1]), vec![(20, 0), (20, 0)]);
    assert!(!h.c.offsets().tracks_transactions());
}

#[test]
fn a_marker_completes_only_the_groups_of_its_partition() {
    let mut h = H::quick();
    let (a, b) = ("g", "h");
    assert_ne!(h.c.partition_for(a), h.c.partition_for(b));
    assert_eq!(h.txn_commit(&txn_req(a, P1, &[("t", 0, 1)])), vec![0]);
    assert_eq!(h.txn_commit(&txn_req(b, P1, &[("t", 0, 2)])), vec![0]);
    h.marker(a, P1, true);
    assert_eq!(h.stable(a, "t", &[0]), vec![(1, 0)]);
    assert_eq!(h.stable(b, "t", &[0]), vec![(-1, UNSTABLE)]);
    h.marker(b, P1, false);
    assert_eq!(h.stable(b, "t", &[0]), vec![(-1, 0)]);
    assert!(!h.c.offsets().tracks_transactions());
}

#[test]
fn a_fetch_of_all_topics_reports_unstable_committed_partitions() {
    let mut h = H::quick();
    assert_eq!(
        h.commit_errors("g", -1, "", &[("t", 0, 3, ""), ("t", 1, 4, "")]),
        vec![0, 0]
    );
    assert_eq!(
        h.txn_commit(&txn_req("g", P1, &[("t", 1, 5), ("u", 0, 6)])),
        vec![0, 0]
    );
    let req = OffsetFetchRequest::default()
        .with_require_stable(true)
        .with_groups(vec![OffsetFetchRequestGroup::default()
            .with_group_id(GroupId(s("g")))
            .with_topics(None)]);
    let r = h.c.offset_fetch(&req, 8);
    r.encode(&mut BytesMut::new(), 8).expect("encodes");
    let g = &r.groups[0];
    assert_eq!(g.error_code, 0);
    // As Kafka, the committed partitions only: "u" has no committed offset.
    let got: Vec<(String, i32, i64, i16)> = g
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| {
                (
                    t.name.to_string(),
                    p.partition_index,
                    p.committed_offset,
                    p.error_code,
                )
            })
        })
        .collect();
    assert_eq!(
        got,
        vec![("t".into(), 0, 3, 0), ("t".into(), 1, -1, UNSTABLE)]
    );
}

#[test]
fn transactional_commits_are_validated_like_offset_commits() {
    let mut h = H::quick();
    let ok = txn_req("g", P1, &[("t", 0, 1)]);
    // An unknown group with a generation: ILLEGAL_GENERATION, as OffsetCommit.
    assert_eq!(
        h.txn_commit(&member(ok.clone(), 1, "m")),
        vec![code(ResponseError::IllegalGeneration)]
    );
    assert!(h.c.group("g").is_none());
    assert_eq!(
        h.txn_commit(&txn_req("", P1, &[("t", 0, 1)])),
        vec![code(ResponseError::InvalidGroupId)]
    );

    let (ids, generation) = stable_group(&mut h, "g", 2);
    // A static member joins: the group rebalances; the others rejoin and
    // the group waits for their SyncGroup.
    let ts = h.join_with(H::join_req("g", "", Some("inst"), &range()), 5);
    let t0 = h.join("g", &ids[0], &range());
    let t1 = h.join("g", &ids[1], &range());
    let static_id = h.join_resp(ts).member_id.to_string();
    assert_eq!(h.join_resp(t1).error_code, 0);
    let generation = {
        let r = h.join_resp(t0);
        assert!(r.generation_id > generation);
        r.generation_id
    };
    assert_eq!(h.state("g"), GroupState::CompletingRebalance);
    let before = h.log.len();
    for (req, error) in [
        (
            member(ok.clone(), generation - 1, &ids[0]),
            ResponseError::IllegalGeneration,
        ),
        (
            member(ok.clone(), generation, "ghost"),
            ResponseError::UnknownMemberId,
        ),
        (
            member(ok.clone(), generation, "other").with_group_instance_id(Some(s("inst"))),
            ResponseError::FencedInstanceId,
        ),
        (
            member(ok.clone(), generation, &static_id).with_group_instance_id(Some(s("nobody"))),
            ResponseError::UnknownMemberId,
        ),
    ] {
        assert_eq!(h.txn_commit(&req), vec![code(error)], "{req:?}");
    }
    assert_eq!(h.log.len(), before, "refused commits write nothing");

    // Unlike OffsetCommit, a transactional commit is taken while the group
    // completes a rebalance, and without member fields (v0-2) from a group
    // with members.
    assert_eq!(
        h.txn_commit(&member(ok.clone(), generation, &ids[1])),
        vec![0]
    );
    assert_eq!(
        h.txn_commit(
            &member(ok.clone(), generation, &static_id).with_group_instance_id(Some(s("inst")))
        ),
        vec![0]
    );
    assert_eq!(h.txn_commit(&ok), vec![0]);
    assert_eq!(
        h.commit_errors("g", generation, &ids[1], &[("t", 0, 1, "")]),
        vec![code(ResponseError::RebalanceInProgress)]
    );
    assert_eq!(
        h.commit_errors("g", -1, "", &[("t", 0, 1, "")]),
        vec![code(ResponseError::UnknownMemberId)]
    );

    // Metadata past `offset.metadata.max.bytes` fails its partition only.
    let mut req = txn_req("g", P1, &[("t", 1, 1), ("t", 2, 2)]);
    req.topics[0].partitions[0].committed_metadata = Some(s(&"x".repeat(4097)));
    assert_eq!(
        h.txn_commit(&req),
        vec![code(ResponseError::OffsetMetadataTooLarge), 0]
    );
    h.marker("g", P1, true);
    assert_eq!(
        h.stable("g", "t", &[0, 1, 2]),
        vec![(1, 0), (-1, 0), (2, 0)]
    );
}

#[test]
fn a_coordinator_still_loading_answers_by_version() {
    let mut h = H::quick();
    h.c.begin_load(h.c.partition_for("g"));
    let req = txn_req("g", P1, &[("t", 0, 1)]);
    for (version, error) in [
        (0, ResponseError::CoordinatorNotAvailable),
        (1, ResponseError::CoordinatorNotAvailable),
        (2, ResponseError::CoordinatorLoadInProgress),
        (4, ResponseError::CoordinatorLoadInProgress),
    ] {
        let r = h.txn_commit_with(&req, version);
        assert_eq!(
            r.topics[0].partitions[0].error_code,
            code(error),
            "v{version}"
        );
    }
    assert!(h.log.is_empty());
}

#[test]
fn versions_zero_to_four_on_the_wire() {
    let mut h = H::quick();
    let (ids, generation) = stable_group(&mut h, "g", 1);
    let request = |offset: i64, generation: i32| {
        member(txn_req("g", P1, &[("t", 0, offset)]), generation, &ids[0])
    };
    for version in 0..=4i16 {
        let offset = 10 + i64::from(version);
        // What a client of this version sends: the member fields from v3,
        // the leader epoch from v2; the encoder refuses more.
        let mut sent = if version >= 3 {
            request(offset, generation)
        } else {
            txn_req("g", P1, &[("t", 0, offset)])
        };
        if version < 2 {
            sent.topics[0].partitions[0].committed_leader_epoch = -1;
        }
        if version < 3 {
            assert!(
                request(offset, generation)
                    .encode(&mut BytesMut::new(), version)
                    .is_err(),
                "member fields do not exist at v{version}"
            );
        }
        let mut buf = BytesMut::new();
        sent.encode(&mut buf, version).unwrap();
        let received = TxnOffsetCommitRequest::decode(&mut buf.freeze(), version).unwrap();
        assert_eq!(received, sent, "v{version}");

        // The response is encoded at the request's version by the harness;
        // decode it back as a client of that version would.
        let r = h.txn_commit_with(&received, version);
        let mut buf = BytesMut::new();
        r.encode(&mut buf, version).unwrap();
        let decoded = TxnOffsetCommitResponse::decode(&mut buf.freeze(), version).unwrap();
        assert_eq!(decoded.topics[0].name.as_str(), "t");
        assert_eq!(decoded.topics[0].partitions[0].error_code, 0, "v{version}");
        h.marker("g", P1, true);
        let v = h.c.offsets().get("g", "t", 0).unwrap();
        let epoch = if version >= 2 { 3 } else { -1 };
        assert_eq!((v.offset, v.leader_epoch), (offset, epoch), "v{version}");

        // From v3 the member fields are checked.
        if version >= 3 {
            let stale = request(offset, generation + 1);
            assert_eq!(
                h.txn_commit_with(&stale, version).topics[0].partitions[0].error_code,
                code(ResponseError::IllegalGeneration)
            );
        }
    }
    // v3 is the first flexible version: the headers carry tagged fields.
    for (version, request_header, response_header) in [(2, 1, 0), (3, 2, 1), (4, 2, 1)] {
        assert_eq!(
            TxnOffsetCommitRequest::header_version(version),
            request_header
        );
        assert_eq!(
            TxnOffsetCommitResponse::header_version(version),
            response_header
        );
    }
}

#[test]
fn deleting_a_group_deletes_its_pending_offsets() {
    let mut h = H::quick();
    assert_eq!(h.commit_errors("g", -1, "", &[("t", 0, 1, "")]), vec![0]);
    assert_eq!(
        h.txn_commit(&txn_req("g", P1, &[("t", 0, 2), ("t", 1, 3)])),
        vec![0, 0]
    );
    let before = h.log.len();
    let t = h.token(2);
    let fx = h.c.delete_groups(
        t,
        &DeleteGroupsRequest::default().with_groups_names(vec![GroupId(s("g"))]),
        2,
        h.now,
    );
    h.absorb(fx);
    // One tombstone per partition, committed or pending, then the group's.
    let tombstones = h.log[before..]
        .iter()
        .filter(|(_, e)| is_tombstone(e))
        .count();
    assert_eq!(tombstones, 3);
    assert!(h.c.group("g").is_none());
    assert!(!h.c.offsets().tracks_transactions());
    // The transaction commits later: nothing of it comes back.
    h.marker("g", P1, true);
    assert!(h.c.committed_offsets("g").is_empty());
    assert_eq!(h.replayed().offsets(), h.c.offsets());
}

#[test]
fn offset_delete_removes_a_pending_offset() {
    let mut h = H::quick();
    assert_eq!(h.txn_commit(&txn_req("g", P1, &[("t", 0, 2)])), vec![0]);
    let t = h.token(0);
    let req = OffsetDeleteRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_topics(vec![OffsetDeleteRequestTopic::default()
            .with_name(TopicName(s("t")))
            .with_partitions(vec![
                OffsetDeleteRequestPartition::default().with_partition_index(0)
            ])]);
    let fx = h.c.offset_delete(t, &req, 0, h.now);
    h.absorb(fx);
    assert!(is_tombstone(&h.log.last().unwrap().1));
    assert_eq!(h.stable("g", "t", &[0]), vec![(-1, 0)]);
    h.marker("g", P1, true);
    assert!(h.c.committed_offsets("g").is_empty());
    assert_eq!(h.replayed().offsets(), h.c.offsets());
}

#[test]
fn an_open_transaction_holds_back_expiry() {
    let retention = 100_000;
    let mut h = H::new(GroupConfig {
        group_initial_rebalance_delay_ms: 0,
        offsets_retention_ms: retention,
        ..GroupConfig::default()
    });
    assert_eq!(
        h.commit_errors("g", -1, "", &[("t", 0, 1, ""), ("t", 1, 1, "")]),
        vec![0, 0]
    );
    assert_eq!(h.txn_commit(&txn_req("g", P1, &[("t", 0, 2)])), vec![0]);
    assert_eq!(
        h.txn_commit(&txn_req("only-pending", P1, &[("t", 0, 2)])),
        vec![0]
    );
    h.advance(retention + crate::state_machine::OFFSETS_RETENTION_CHECK_INTERVAL_MS);
    // The partition the transaction will write stays; the other expired.
    assert_eq!(h.c.committed_offsets("g"), vec![("t".to_string(), 0, 1)]);
    assert!(h.c.group("only-pending").is_some());
    h.marker("g", P1, false);
    h.marker("only-pending", P1, false);
    h.advance(crate::state_machine::OFFSETS_RETENTION_CHECK_INTERVAL_MS);
    assert!(h.c.committed_offsets("g").is_empty());
    assert!(h.c.group("g").is_none());
    assert!(h.c.group("only-pending").is_none());
}

#[test]
fn replay_rebuilds_committed_aborted_and_open_transactions() {
    let mut h = H::quick();
    let (ids, generation) = stable_group(&mut h, "g", 1);
    let as_member = |req| member(req, generation, &ids[0]);
    // Committed, with a regular commit of the same partition after it.
    assert_eq!(
        h.txn_commit(&as_member(txn_req("g", P1, &[("t", 0, 5), ("t", 1, 5)]))),
        vec![0, 0]
    );
    assert_eq!(
        h.commit_errors("g", generation, &ids[0], &[("t", 1, 6, "")]),
        vec![0]
    );
    h.marker("g", P1, true);
    // Aborted.
    assert_eq!(
        h.txn_commit(&as_member(txn_req("g", P2, &[("t", 0, 50)]))),
        vec![0]
    );
    h.marker("g", P2, false);
    // Still open, in two groups of different partitions.
    assert_eq!(
        h.txn_commit(&as_member(txn_req("g", P1, &[("t", 2, 7)]))),
        vec![0]
    );
    assert_eq!(h.txn_commit(&txn_req("h", P1, &[("u", 0, 8)])), vec![0]);
    // A marker for a producer with nothing pending.
    h.marker("h", P2, true);

    let replayed = h.replayed();
    assert_eq!(replayed.offsets(), h.c.offsets());
    assert!(replayed.offsets().tracks_transactions());
    for c in [&h.c, &replayed] {
        assert_eq!(
            H::fetch_partitions(c, "g", "t", &[0, 1, 2], true),
            vec![(5, 0), (6, 0), (-1, UNSTABLE)]
        );
        assert_eq!(
            H::fetch_partitions(c, "h", "u", &[0], true),
            vec![(-1, UNSTABLE)]
        );
    }
    // The open transaction ends after the restart.
    let mut h2 = H::quick();
    h2.c = replayed;
    h2.marker("g", P1, true);
    h2.marker("h", P1, true);
    assert_eq!(h2.stable("g", "t", &[2]), vec![(7, 0)]);
    assert_eq!(h2.stable("h", "u", &[0]), vec![(8, 0)]);
    assert!(!h2.c.offsets().tracks_transactions());
}

impl H {
    /// Starts loading `group`'s partition afresh and replays what its log
    /// holds now; the load completes with `complete_load`.
    fn reload_from_log(&mut self, group: &str) -> (i32, LoadId, GroupCoordinator) {
        let partition = self.c.partition_for(group);
        let (load, fx) = self.c.begin_load(partition);
        self.absorb(fx);
        let entries = self
            .log
            .iter()
            .filter(|(p, _)| *p == partition)
            .map(|(_, entry)| entry.clone())
            .collect();
        let (replayed, _) = replay_partition(self.c.config().clone(), partition, entries);
        (partition, load, replayed)
    }

    fn complete_load(&mut self, partition: i32, load: LoadId, replayed: GroupCoordinator) {
        let fx = self.c.complete_load(partition, load, replayed, self.now);
        self.absorb(fx.expect("not overtaken"));
    }
}

#[test]
fn a_marker_written_while_its_partition_loads_applies_after_the_replay() {
    let mut h = H::quick();
    assert_eq!(h.txn_commit(&txn_req("g", P1, &[("t", 0, 5)])), vec![0]);
    // The load reads the log before the marker reaches it.
    let (partition, load, replayed) = h.reload_from_log("g");
    h.marker("g", P1, true);
    h.complete_load(partition, load, replayed);
    assert_eq!(h.stable("g", "t", &[0]), vec![(5, 0)]);
    assert!(!h.c.offsets().tracks_transactions());

    // A load that read the marker gets it again: the producer has nothing
    // pending then, and a later regular commit keeps its place.
    assert_eq!(h.commit_errors("g", -1, "", &[("t", 0, 6, "")]), vec![0]);
    let (partition, load, replayed) = h.reload_from_log("g");
    h.c.complete_transaction(partition, P1, true);
    h.complete_load(partition, load, replayed);
    assert_eq!(h.stable("g", "t", &[0]), vec![(6, 0)]);
}

#[test]
fn a_commit_after_a_load_stays_ahead_of_the_transactions_it_replayed() {
    let mut h = H::quick();
    // Enough records before the transactional one that its place in the
    // partition is far past anything counted since.
    for offset in 0..5 {
        assert_eq!(
            h.commit_errors("g", -1, "", &[("t", 0, offset, "")]),
            vec![0]
        );
    }
    assert_eq!(h.txn_commit(&txn_req("g", P1, &[("t", 0, 50)])), vec![0]);
    h.c = h.replayed();
    // Written after the transaction's offset: the commit marker must not
    // bring the older one back.
    assert_eq!(h.commit_errors("g", -1, "", &[("t", 0, 60, "")]), vec![0]);
    h.marker("g", P1, true);
    assert_eq!(h.stable("g", "t", &[0]), vec![(60, 0)]);
}
