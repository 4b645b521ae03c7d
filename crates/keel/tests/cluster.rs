//! Three combined broker/controller nodes on loopback: the cluster forms,
//! spreads replicas and leaders over every broker, and carries on after
//! losing its active controller, a partition leader, or the transaction
//! coordinator in the middle of a transaction; leadership returns to
//! preferred replicas on request (ElectLeaders) or by itself; a partition
//! moves to other brokers under load (AlterPartitionReassignments). With separate
//! controllers, acks=all refuses writes while two of three brokers are down.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::cluster::TestCluster;
use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kafka_protocol::messages::alter_partition_reassignments_request::{
    ReassignablePartition, ReassignableTopic,
};
use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, BrokerId, DescribeClusterRequest, ElectLeadersRequest,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::admin::{NewTopic, TopicReplication};
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

/// How long electing a new controller (or leader) and acting on it may
/// take: the cluster's election and fetch timeouts are 0.5 s and 1 s, the
/// rest is slack for a loaded machine.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(15);

/// A partition as librdkafka's Metadata describes it.
#[derive(Debug, PartialEq)]
struct Placement {
    leader: i32,
    replicas: Vec<i32>,
    isr: Vec<i32>,
}

/// The brokers librdkafka's Metadata lists.
fn brokers(bootstrap: &str) -> BTreeSet<i32> {
    consumer(bootstrap, &[])
        .fetch_metadata(None, CLIENT_TIMEOUT)
        .expect("Metadata")
        .brokers()
        .iter()
        .map(|b| b.id())
        .collect()
}

/// `topic`'s partitions through librdkafka's Metadata, once it has
/// `partitions` of them, every one with a leader.
fn placements(bootstrap: &str, topic: &str, partitions: usize) -> BTreeMap<i32, Placement> {
    let consumer = consumer(bootstrap, &[]);
    let mut found = BTreeMap::new();
    wait_until(
        &format!("{topic} has {partitions} partitions with leaders"),
        CLIENT_TIMEOUT,
        || {
            let Ok(metadata) = consumer.fetch_metadata(Some(topic), CLIENT_TIMEOUT) else {
                return false;
            };
            let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
                return false;
            };
            found = t
                .partitions()
                .iter()
                .map(|p| {
                    let placement = Placement {
                        leader: p.leader(),
                        replicas: p.replicas().to_vec(),
                        isr: p.isr().to_vec(),
                    };
                    (p.id(), placement)
                })
                .collect();
            t.error().is_none()
                && found.len() == partitions
                && found.values().all(|p| p.leader >= 0)
        },
    );
    found
}

/// The values of the first `count` records of `topic`-0.
fn first_values(bootstrap: &str, topic: &str, count: usize) -> Vec<String> {
    consume(bootstrap, topic, 0, Offset::Beginning, count)
        .iter()
        .map(|m| String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned())
        .collect()
}

/// Creates `topic` with replication factor 3 through librdkafka's admin
/// client and returns its placements once every partition has a leader.
async fn create_replicated(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
) -> BTreeMap<i32, Placement> {
    let results = admin(bootstrap)
        .create_topics(
            [&NewTopic::new(
                topic,
                partitions,
                TopicReplication::Fixed(3),
            )],
            &admin_options(),
        )
        .await
        .expect("CreateTopics");
    assert_eq!(results, vec![Ok(topic.to_string())]);
    placements(bootstrap, topic, partitions as usize)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_a_cluster_and_spread_leaders() {
    let cluster = TestCluster::start(3, &[]);
    let bootstrap = cluster.bootstrap();

    let metadata = consumer(&bootstrap, &[])
        .fetch_metadata(None, CLIENT_TIMEOUT)
        .expect("Metadata");
    let listed: BTreeSet<i32> = metadata.brokers().iter().map(|b| b.id()).collect();
    assert_eq!(listed, BTreeSet::from([1, 2, 3]));
    // Each at its own address, or clients would send one node's partitions
    // to another.
    for b in metadata.brokers() {
        assert_eq!(
            format!("{}:{}", b.host(), b.port()),
            cluster.node(b.id()).bootstrap(),
            "broker {}'s address",
            b.id()
        );
    }
    // All name the same controller, one of the brokers. (Polled: on a
    // loaded machine the short timeouts may make for a second election.)
    wait_until("the nodes agree on a controller", FAILOVER_TIMEOUT, || {
        cluster
            .agreed_controller_id()
            .is_some_and(|c| listed.contains(&c))
    });

    let topic = unique_topic("rf3");
    let placements = create_replicated(&bootstrap, &topic, 6).await;
    for (partition, p) in &placements {
        let replicas: BTreeSet<i32> = p.replicas.iter().copied().collect();
        assert_eq!(
            replicas,
            BTreeSet::from([1, 2, 3]),
            "partition {partition}: {p:?}"
        );
        assert_eq!(p.replicas.len(), 3, "partition {partition}: {p:?}");
        assert!(
            p.replicas.contains(&p.leader),
            "partition {partition}: {p:?}"
        );
    }
    let leaders: BTreeSet<i32> = placements.values().map(|p| p.leader).collect();
    assert_eq!(leaders, BTreeSet::from([1, 2, 3]), "{placements:?}");
    // Every node serves the same leaders, not just the one librdkafka asked.
    for id in cluster.ids() {
        wait_until(
            &format!("node {id} knows {topic}'s leaders"),
            CLIENT_TIMEOUT,
            || {
                let Ok(m) = cluster.metadata_from(id, Some(&[&topic])) else {
                    return false;
                };
                m.topics.len() == 1
                    && m.topics.iter().all(|t| {
                        t.error_code == 0
                            && t.partitions.len() == 6
                            && t.partitions.iter().all(|p| {
                                placements
                                    .get(&p.partition_index)
                                    .is_some_and(|q| q.leader == p.leader_id.0)
                            })
                    })
            },
        );
    }
    for (&partition, p) in &placements {
        assert_eq!(cluster.node_of_leader(&topic, partition), Some(p.leader));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_active_controller_elects_another() {
    let mut cluster = TestCluster::start(3, &[]);
    let old = cluster.controller_id().expect("a controller id");
    cluster.kill(old);
    let survivors: BTreeSet<i32> = cluster.running().collect();
    assert_eq!(survivors.len(), 2);

    // Through each survivor in turn: at most one of them is the new
    // controller, so the other has to forward.
    let mut created = Vec::new();
    for &id in &survivors {
        let topic = unique_topic(&format!("after-failover-via-{id}"));
        cluster.create_topic_via_retrying(id, &topic, 3, 2, FAILOVER_TIMEOUT);
        created.push(topic);
    }

    wait_until(
        "the survivors agree on a new controller",
        FAILOVER_TIMEOUT,
        || {
            cluster
                .agreed_controller_id()
                .is_some_and(|c| c != old && survivors.contains(&c))
        },
    );
    // Both topics reach both survivors.
    for &id in &survivors {
        for topic in &created {
            wait_until(&format!("node {id} knows {topic}"), CLIENT_TIMEOUT, || {
                cluster.metadata_from(id, Some(&[topic])).is_ok_and(|m| {
                    m.topics
                        .iter()
                        .any(|t| t.error_code == 0 && t.partitions.len() == 3)
                })
            });
        }
    }

    // The new controller tracks liveness: the dead node stops heartbeating,
    // is fenced, and new replicas go to the survivors only.
    let bootstrap = cluster.bootstrap();
    wait_until("the killed node is fenced", FAILOVER_TIMEOUT, || {
        brokers(&bootstrap) == survivors
    });
    let admin = admin(&bootstrap);
    let rf2 = unique_topic("rf2-after-fencing");
    let rf3 = unique_topic("rf3-after-fencing");
    let results = admin
        .create_topics(
            [
                &NewTopic::new(&rf2, 4, TopicReplication::Fixed(2)),
                &NewTopic::new(&rf3, 1, TopicReplication::Fixed(3)),
            ],
            &admin_options(),
        )
        .await
        .expect("CreateTopics");
    assert_eq!(
        results,
        vec![
            Ok(rf2.clone()),
            Err((rf3.clone(), RDKafkaErrorCode::InvalidReplicationFactor))
        ]
    );
    for (partition, p) in placements(&bootstrap, &rf2, 4) {
        let replicas: BTreeSet<i32> = p.replicas.iter().copied().collect();
        assert_eq!(replicas, survivors, "partition {partition}: {p:?}");
        assert!(
            survivors.contains(&p.leader),
            "partition {partition}: {p:?}"
        );
    }
}

/// Records acknowledged by all in-sync replicas survive the loss of their
/// leader, and the partition keeps taking writes on the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_losing_the_leader() {
    let mut cluster = TestCluster::start(3, &[("min.insync.replicas", "2")]);
    let topic = unique_topic("acks-all");
    let leader = create_replicated(&cluster.bootstrap(), &topic, 1).await[&0].leader;

    let to_all = producer(&cluster.bootstrap(), &[("acks", "all")]);
    for i in 0..100 {
        let offset = send(&to_all, &topic, 0, None, &format!("before-{i}")).await;
        assert_eq!(offset, i);
    }
    drop(to_all);

    cluster.kill(leader);
    wait_until("a survivor leads the partition", FAILOVER_TIMEOUT, || {
        cluster
            .node_of_leader(&topic, 0)
            .is_some_and(|l| l != leader)
    });

    // Two replicas are left, enough for min.insync.replicas=2.
    let bootstrap = cluster.bootstrap();
    let to_survivors = producer(&bootstrap, &[("acks", "all")]);
    for i in 0..100 {
        let offset = send(&to_survivors, &topic, 0, None, &format!("after-{i}")).await;
        assert_eq!(offset, 100 + i);
    }
    let expected: Vec<String> = (0..100)
        .map(|i| format!("before-{i}"))
        .chain((0..100).map(|i| format!("after-{i}")))
        .collect();
    let read = |bootstrap: &str| first_values(bootstrap, &topic, 200);
    assert_eq!(read(&bootstrap), expected);

    // The old leader comes back as a follower, catches up and rejoins the
    // ISR; losing the second leader then loses nothing either.
    cluster.restart(leader);
    wait_until("the old leader is in sync again", FAILOVER_TIMEOUT, || {
        placements(&bootstrap, &topic, 1)[&0].isr.contains(&leader)
    });
    let second = cluster.node_of_leader(&topic, 0).expect("a leader");
    cluster.kill(second);
    wait_until("a third leader is elected", FAILOVER_TIMEOUT, || {
        cluster
            .node_of_leader(&topic, 0)
            .is_some_and(|l| l != second)
    });
    assert_eq!(read(&cluster.bootstrap()), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_survives_losing_its_coordinator() {
    let mut cluster = TestCluster::start(
        3,
        &[
            ("transaction.state.log.num.partitions", "1"),
            ("min.insync.replicas", "2"),
        ],
    );
    let topic = unique_topic("txn-failover");
    create_replicated(&cluster.bootstrap(), &topic, 1).await;

    let mut config = client_config(&cluster.bootstrap());
    config
        .set("transactional.id", "failover")
        .set("message.timeout.ms", "30000");
    let producer: FutureProducer = config.create().expect("a transactional producer");
    let timeout = Duration::from_secs(60);
    producer
        .init_transactions(timeout)
        .expect("init_transactions");
    let queue = |value: String| {
        let record = FutureRecord::<str, str>::to(&topic)
            .partition(0)
            .payload(&value);
        if let Err((e, _)) = producer.send_result(record) {
            panic!("queueing {value}: {e}");
        }
    };
    producer.begin_transaction().unwrap();
    (0..50).for_each(|i| queue(format!("first-{i}")));
    producer.commit_transaction(timeout).expect("first commit");

    // The coordinator dies with a transaction open; its successor loads
    // the replicated __transaction_state and the transaction commits or
    // aborts as a whole.
    producer.begin_transaction().unwrap();
    (0..50).for_each(|i| queue(format!("second-{i}")));
    producer.flush(timeout).expect("second's records written");
    let coordinator = cluster
        .node_of_leader("__transaction_state", 0)
        .expect("the transaction log has a leader");
    cluster.kill(coordinator);
    let second_committed = match producer.commit_transaction(timeout) {
        Ok(()) => true,
        Err(KafkaError::Transaction(e)) if e.txn_requires_abort() => {
            producer.abort_transaction(timeout).expect("abort");
            false
        }
        Err(e) => panic!("commit after losing the coordinator: {e}"),
    };
    producer.begin_transaction().unwrap();
    queue("third".to_string());
    producer.commit_transaction(timeout).expect("third commit");

    let mut expected: Vec<String> = (0..50).map(|i| format!("first-{i}")).collect();
    if second_committed {
        expected.extend((0..50).map(|i| format!("second-{i}")));
    }
    expected.push("third".to_string());
    let read: Vec<String> = try_consume(
        &cluster.bootstrap(),
        &topic,
        0,
        Offset::Beginning,
        expected.len(),
        &[("isolation.level", "read_committed")],
    )
    .unwrap_or_else(|e| panic!("read_committed: {e}"))
    .iter()
    .map(|m| String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned())
    .collect();
    assert_eq!(read, expected, "second committed: {second_committed}");
}

/// Isolated mode (`process.roles=broker` and `controller` on separate
/// nodes): with the quorum elsewhere, two of three brokers can die. The
/// survivor then leads alone, so acks=all writes fail with
/// NOT_ENOUGH_REPLICAS instead of being acknowledged by too few copies; what
/// was acknowledged stays, and writes resume once a broker is back in sync.
/// The transaction coordinator writes `__transaction_state` the same way
/// (`transaction.state.log.min.isr`, 2 by default), so it refuses to start
/// transactions on one copy too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_all_refuses_writes_with_two_of_three_brokers_down() {
    let mut cluster = TestCluster::start_with_controllers(3, 3, &[("min.insync.replicas", "2")]);
    let topic = unique_topic("two-down");
    let placement = create_replicated(&cluster.bootstrap(), &topic, 1).await;
    let leader = placement[&0].leader;
    let follower = *placement[&0]
        .replicas
        .iter()
        .find(|&&r| r != leader)
        .expect("RF=3 has followers");

    // `__transaction_state` is created now, with three replicas.
    drop(transactional_producer(
        &cluster.bootstrap(),
        &unique_topic("two-down-txn"),
        &[],
    ));
    let mut acknowledged = Vec::new();
    let to_all = producer(&cluster.bootstrap(), &[("acks", "all")]);
    for i in 0..50 {
        let value = format!("before-{i}");
        send(&to_all, &topic, 0, None, &value).await;
        acknowledged.push(value);
    }
    drop(to_all);

    cluster.kill(leader);
    cluster.kill(follower);
    let survivor = cluster.running().next().expect("one broker is left");
    let bootstrap = cluster.bootstrap();
    wait_until("the survivor leads alone", FAILOVER_TIMEOUT, || {
        placements(&bootstrap, &topic, 1)[&0]
            == Placement {
                leader: survivor,
                replicas: placement[&0].replicas.clone(),
                isr: vec![survivor],
            }
    });

    // No retries, so the broker's own answer is the delivery error.
    let refused = producer(&bootstrap, &[("acks", "all"), ("retries", "0")]);
    let refused_by = Instant::now() + CLIENT_TIMEOUT;
    loop {
        let record = FutureRecord::<(), str>::to(&topic)
            .partition(0)
            .payload("refused");
        match refused.send(record, Duration::from_secs(10)).await {
            Ok(delivered) => panic!("one replica acknowledged an acks=all write: {delivered:?}"),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::NotEnoughReplicas), _)) => break,
            // Metadata may still name a dead leader for a moment.
            Err((e, _)) => {
                assert!(
                    Instant::now() < refused_by,
                    "never NOT_ENOUGH_REPLICAS: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    drop(refused);
    let transactional_id = unique_topic("two-down-txn");
    let init = |timeout: Duration| {
        let mut config = client_config(&bootstrap);
        config.set("transactional.id", &transactional_id);
        let producer: FutureProducer = config.create().expect("producer");
        producer.init_transactions(timeout).map(|()| producer)
    };
    assert!(
        init(Duration::from_secs(5)).is_err(),
        "a transaction coordinator with one in-sync copy of its log started a transaction"
    );
    wait_until(
        "the coordinator refused for want of in-sync replicas",
        CLIENT_TIMEOUT,
        || {
            cluster
                .node(survivor)
                .log()
                .contains("fewer than min.insync.replicas 2")
        },
    );

    cluster.restart(follower);
    wait_until(
        "the restarted follower is in sync again",
        FAILOVER_TIMEOUT,
        || {
            placements(&bootstrap, &topic, 1)[&0]
                .isr
                .contains(&follower)
        },
    );
    let to_all = producer(&cluster.bootstrap(), &[("acks", "all")]);
    for i in 0..50 {
        let value = format!("after-{i}");
        send(&to_all, &topic, 0, None, &value).await;
        acknowledged.push(value);
    }
    assert_eq!(
        first_values(&cluster.bootstrap(), &topic, 100),
        acknowledged
    );
    // With the follower back in the coordinator's ISR, transactions run.
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let txn = loop {
        match init(Duration::from_secs(5)) {
            Ok(producer) => break producer,
            Err(e) => assert!(Instant::now() < deadline, "init_transactions: {e}"),
        }
    };
    txn.begin_transaction().expect("begin");
    queue(&txn, &topic, 0, "in-a-transaction");
    txn.commit_transaction(TXN_TIMEOUT).expect("commit");
}

/// ElectLeaders v2 sent to node `via` for `topic`-`partition`: the one
/// partition result's error code.
fn elect_leader(
    cluster: &TestCluster,
    via: i32,
    election_type: i8,
    topic: &str,
    partition: i32,
) -> i16 {
    let request = ElectLeadersRequest::default()
        .with_election_type(election_type)
        .with_topic_partitions(Some(vec![TopicPartitions::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(vec![partition])]))
        .with_timeout_ms(10_000);
    let response = RawConn::connect(cluster.node(via).addr())
        .expect("connecting")
        .request(2, &request)
        .expect("ElectLeaders");
    assert_eq!(response.error_code, 0, "{response:?}");
    let results = &response.replica_election_results;
    assert_eq!(results.len(), 1, "{response:?}");
    assert_eq!(results[0].topic.0.as_str(), topic);
    results[0].partition_result[0].error_code
}

/// Restarts the preferred (first) replica of `topic`-0, which then gives up
/// leadership, and waits until it is back in the ISR as a follower.
async fn displace_preferred_leader(cluster: &mut TestCluster, topic: &str) -> i32 {
    let placement = create_replicated(&cluster.bootstrap(), topic, 1).await;
    let preferred = placement[&0].replicas[0];
    assert_eq!(placement[&0].leader, preferred, "{placement:?}");
    cluster.restart(preferred);
    let bootstrap = cluster.bootstrap();
    wait_until(
        "the restarted preferred leader is in sync again",
        FAILOVER_TIMEOUT,
        || {
            placements(&bootstrap, topic, 1)[&0]
                .isr
                .contains(&preferred)
        },
    );
    preferred
}

const ELECTION_NOT_NEEDED: i16 = 84;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;

/// With `auto.leader.rebalance.enable=false` leadership stays where a
/// failure moved it until an admin's ElectLeaders moves it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elect_leaders_moves_leadership_back_to_the_preferred_replica() {
    let mut cluster = TestCluster::start(
        3,
        &[
            ("auto.leader.rebalance.enable", "false"),
            ("leader.imbalance.check.interval.seconds", "1"),
        ],
    );
    let topic = unique_topic("elect");
    let preferred = displace_preferred_leader(&mut cluster, &topic).await;
    let via = cluster.running().find(|&id| id != preferred).unwrap();
    // Several balance intervals pass without the controller moving it.
    std::thread::sleep(Duration::from_secs(3));
    assert_ne!(cluster.node_of_leader(&topic, 0), Some(preferred));

    // Kafka's election types: 0 preferred, 1 unclean.
    assert_eq!(
        elect_leader(&cluster, via, 1, &topic, 0),
        ELECTION_NOT_NEEDED
    );
    // The CLI, as an operator would.
    let elected = keel_cli_ok(
        &cluster.node(via).bootstrap(),
        &["topic", "elect-leaders", &topic],
    );
    assert!(
        elected.contains(&format!("Elected a PREFERRED leader for {topic}-0")),
        "{elected}"
    );
    wait_until(
        "the preferred replica leads again",
        FAILOVER_TIMEOUT,
        || cluster.node_of_leader(&topic, 0) == Some(preferred),
    );
    assert_eq!(
        elect_leader(&cluster, via, 0, &topic, 0),
        ELECTION_NOT_NEEDED
    );
    assert_eq!(
        elect_leader(&cluster, via, 0, &topic, 7),
        UNKNOWN_TOPIC_OR_PARTITION
    );

    // Clients follow the move.
    let to_all = producer(&cluster.bootstrap(), &[("acks", "all")]);
    send(&to_all, &topic, 0, None, "after the election").await;
}

/// With `auto.leader.rebalance.enable` (Kafka's default) the active
/// controller moves leadership back by itself once the preferred replica
/// is in sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_moves_leadership_back_by_itself() {
    let mut cluster = TestCluster::start(3, &[("leader.imbalance.check.interval.seconds", "1")]);
    let topic = unique_topic("rebalance");
    let preferred = displace_preferred_leader(&mut cluster, &topic).await;
    wait_until(
        "the preferred replica leads again",
        FAILOVER_TIMEOUT,
        || cluster.node_of_leader(&topic, 0) == Some(preferred),
    );
}

/// AlterPartitionReassignments v1 sent to node `via`: one partition's
/// error code.
fn reassign(cluster: &TestCluster, via: i32, topic: &str, target: Option<&[i32]>) -> i16 {
    let request = AlterPartitionReassignmentsRequest::default().with_topics(vec![
        ReassignableTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(vec![ReassignablePartition::default()
                .with_partition_index(0)
                .with_replicas(
                    target.map(|t| t.iter().copied().map(BrokerId).collect()),
                )]),
    ]);
    let response = RawConn::connect(cluster.node(via).addr())
        .expect("connecting")
        .request(1, &request)
        .expect("AlterPartitionReassignments");
    assert_eq!(response.error_code, 0, "{response:?}");
    response.responses[0].partitions[0].error_code
}

/// A partition moves from brokers {1, 2} to {2, 3} while a producer writes
/// to it with acks=all and a consumer reads it: broker 3 catches up,
/// leadership leaves broker 1, which drops its copy, and every acknowledged
/// record is read back once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reassignment_moves_a_partition_under_load_without_loss() {
    let cluster = TestCluster::start(3, &[]);
    let bootstrap = cluster.bootstrap();
    let topic = unique_topic("moving");
    let results = admin(&bootstrap)
        .create_topics(
            [&NewTopic::new(
                &topic,
                1,
                TopicReplication::Variable(&[&[1, 2]]),
            )],
            &admin_options(),
        )
        .await
        .expect("CreateTopics");
    assert_eq!(results, vec![Ok(topic.clone())]);
    assert_eq!(placements(&bootstrap, &topic, 1)[&0].leader, 1);

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, topic) = (stop.clone(), topic.clone());
        let producer = producer(
            &bootstrap,
            &[("acks", "all"), ("enable.idempotence", "true")],
        );
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for i in 0.. {
                if stop.load(Ordering::Relaxed) && i >= 200 {
                    break;
                }
                let value = format!("record-{i}");
                send(&producer, &topic, 0, None, &value).await;
                acknowledged.push(value);
            }
            acknowledged
        })
    };
    let reader = {
        let (stop, topic, bootstrap) = (stop.clone(), topic.clone(), bootstrap.clone());
        tokio::task::spawn_blocking(move || {
            let consumer = consumer(&bootstrap, &[]);
            let mut assignment = TopicPartitionList::new();
            assignment
                .add_partition_offset(&topic, 0, Offset::Beginning)
                .unwrap();
            consumer.assign(&assignment).unwrap();
            let mut read = Vec::new();
            let mut quiet_since_stop = 0;
            // Bounded, so a failing test is not kept waiting for this
            // blocking task at runtime shutdown.
            let give_up = Instant::now() + Duration::from_secs(120);
            while quiet_since_stop < 20 && Instant::now() < give_up {
                match consumer.poll(Duration::from_millis(250)) {
                    Some(Ok(m)) => {
                        read.push(
                            String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                        );
                        quiet_since_stop = 0;
                    }
                    Some(Err(e)) => eprintln!("consumer: {e}"),
                    None if stop.load(Ordering::Relaxed) => quiet_since_stop += 1,
                    None => {}
                }
            }
            read
        })
    };

    // Let the writer get going, then move the partition.
    wait_until("records flow before the move", CLIENT_TIMEOUT, || {
        watermarks(&bootstrap, &topic, 0).1 >= 100
    });
    keel_cli_ok(
        &cluster.node(3).bootstrap(),
        &[
            "topic",
            "reassign",
            &topic,
            "--partition",
            "0",
            "--replicas",
            "2,3",
        ],
    );
    wait_until(
        "the partition lives on brokers 2 and 3",
        FAILOVER_TIMEOUT,
        || {
            let p = &placements(&bootstrap, &topic, 1)[&0];
            p.replicas == [2, 3] && p.isr.len() == 2 && p.leader == 2
        },
    );
    let listed = keel_cli_ok(&cluster.node(1).bootstrap(), &["topic", "reassignments"]);
    assert_eq!(listed.trim(), "No partition reassignments in progress.");
    // Cancelling a finished move is refused as Kafka refuses it.
    const NO_REASSIGNMENT_IN_PROGRESS: i16 = 85;
    assert_eq!(
        reassign(&cluster, 1, &topic, None),
        NO_REASSIGNMENT_IN_PROGRESS
    );
    let partition_dir = cluster.node(1).data_dir().join(format!("{topic}-0"));
    wait_until("broker 1 drops its copy", FAILOVER_TIMEOUT, || {
        !partition_dir.exists()
    });

    stop.store(true, Ordering::Relaxed);
    let acknowledged = writer.await.unwrap();
    let read_while_moving = reader.await.unwrap();
    assert_eq!(
        read_while_moving, acknowledged,
        "the consumer that ran throughout"
    );
    assert_eq!(
        first_values(&bootstrap, &topic, acknowledged.len()),
        acknowledged
    );
}

/// Every registered broker through DescribeCluster v2 with fenced ones
/// included (KIP-1073), and whether each is fenced.
fn registered_brokers(cluster: &TestCluster, via: i32) -> BTreeMap<i32, bool> {
    let request = DescribeClusterRequest::default()
        .with_endpoint_type(1)
        .with_include_fenced_brokers(true);
    let response = RawConn::connect(cluster.node(via).addr())
        .expect("connecting")
        .request(2, &request)
        .expect("DescribeCluster");
    assert_eq!(response.error_code, 0, "{response:?}");
    response
        .brokers
        .iter()
        .map(|b| (b.broker_id.0, b.is_fenced))
        .collect()
}

/// Taking a broker out of service. Kafka's controlled shutdown: a broker
/// stopped cleanly hands its leadership over before it exits, so its
/// partitions move at once, not a session timeout (here far longer than
/// the test waits) after it is gone. Then UnregisterBroker forgets it, and
/// a restart registers it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_taken_out_of_service_hands_over_at_once_and_is_unregistered() {
    let mut cluster = TestCluster::start(3, &[("broker.session.timeout.ms", "60000")]);
    let topic = unique_topic("handover");
    let leader = create_replicated(&cluster.bootstrap(), &topic, 1).await[&0].leader;
    cluster.stop(leader);
    let bootstrap = cluster.bootstrap();
    let moved = Instant::now();
    wait_until("another broker leads", Duration::from_secs(10), || {
        let p = &placements(&bootstrap, &topic, 1)[&0];
        p.leader != leader && !p.isr.contains(&leader)
    });
    eprintln!("leadership moved {:?} after the stop", moved.elapsed());
    let to_all = producer(&bootstrap, &[("acks", "all")]);
    send(&to_all, &topic, 0, None, "to the new leader").await;

    let via = cluster.running().next().expect("a running node");
    assert_eq!(registered_brokers(&cluster, via).get(&leader), Some(&true));
    let (id, running) = (leader.to_string(), cluster.node(via).addr().to_string());
    let said = keel_cli_ok(&running, &["broker", "unregister", "--id", &id]);
    assert!(said.contains(&format!("Broker {leader} is no longer registered")));
    wait_until("every node forgets it", FAILOVER_TIMEOUT, || {
        cluster
            .running()
            .all(|n| !registered_brokers(&cluster, n).contains_key(&leader))
    });
    let p = &placements(&bootstrap, &topic, 1)[&0];
    assert!(p.replicas.contains(&leader), "until reassigned: {p:?}");
    let again = keel_cli(&running, &["broker", "unregister", "--id", &id]);
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("BROKER_ID_NOT_REGISTERED"), "{stderr}");

    cluster.restart(leader);
    wait_until("a restart registers it again", FAILOVER_TIMEOUT, || {
        brokers(&bootstrap).contains(&leader)
    });
}
