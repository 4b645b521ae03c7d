//! Consumer group figures: how long after the last member subscribes every
//! member is consuming (10 members over 100 partitions), per assignment
//! protocol, and how many synchronous offset commits 10 members get through.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::Offset;
use serde_json::{json, Value};

const MEMBERS: usize = 10;
const PARTITIONS: i32 = 100;

fn create_topic(bootstrap: &str, topic: &str) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let new_topic = NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1));
    let results =
        futures::executor::block_on(admin.create_topics([&new_topic], &AdminOptions::new()))?;
    for result in results {
        if let Err((name, code)) = result {
            bail!("creating {name}: {code}");
        }
    }
    // One record per partition, so a member can show it is consuming.
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()?;
    for p in 0..PARTITIONS {
        producer
            .send(
                BaseRecord::<(), [u8]>::to(topic)
                    .payload(&b"x"[..])
                    .partition(p),
            )
            .map_err(|(e, _)| e)?;
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(())
}

fn member(
    bootstrap: &str,
    group: &str,
    protocol: &str,
    heartbeat_ms: Option<u32>,
) -> Result<Member> {
    let mut config = ClientConfig::new();
    // Members learn of a new assignment only from a heartbeat answer, so the
    // heartbeat interval bounds how fast waves of joiners settle. KIP-848
    // members take it from the broker (`group.consumer.heartbeat.interval.ms`).
    // A classic member told to rejoin (by a heartbeat, or a SyncGroup answered
    // REBALANCE_IN_PROGRESS) is slower still: librdkafka sends at most one
    // JoinGroup a second, checked on its 1 s main-loop tick, so unless
    // something reset that backoff (a Metadata answer, as the leader gets
    // when it assigns, or revoking partitions) its next JoinGroup leaves 1-2 s
    // after its previous one.
    if let Some(ms) = heartbeat_ms.filter(|_| protocol != "consumer") {
        config.set("heartbeat.interval.ms", ms.to_string());
    }
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        // How `MemberContext` learns that the coordinator is connected.
        .set("statistics.interval.ms", "1000");
    match protocol {
        "consumer" => config.set("group.protocol", "consumer"),
        strategy => config.set("partition.assignment.strategy", strategy),
    };
    Ok(config.create_with_context(MemberContext::default())?)
}

type Member = BaseConsumer<MemberContext>;

/// Notes when librdkafka's group handle has found and connected to the
/// coordinator (its statistics' `cgrp.state` is `up`), which it does from
/// its start, before any subscription.
#[derive(Default)]
struct MemberContext {
    coordinator_up: AtomicBool,
}

impl ClientContext for MemberContext {
    fn stats_raw(&self, statistics: &[u8]) {
        if self.coordinator_up.load(Ordering::Relaxed) {
            return;
        }
        let up =
            serde_json::from_slice::<Value>(statistics).is_ok_and(|s| s["cgrp"]["state"] == "up");
        self.coordinator_up.store(up, Ordering::Relaxed);
    }
}

impl ConsumerContext for MemberContext {}

/// Waits until every member is connected to the coordinator, so that the
/// clock starts at their JoinGroups rather than at their connections.
fn await_coordinator(members: &[Member], give_up: Instant) -> Result<()> {
    while !members
        .iter()
        .all(|m| m.context().coordinator_up.load(Ordering::Relaxed))
    {
        if Instant::now() > give_up {
            bail!("members not connected to the coordinator after 30 s");
        }
        for m in members {
            // Serves the statistics callback; nothing is subscribed yet.
            if let Some(message) = m.poll(Duration::from_millis(10)) {
                message?;
            }
        }
    }
    Ok(())
}

/// Every member subscribes at once, each from a thread of its own.
fn subscribe_together(members: &[Member], topic: &str) -> Result<()> {
    let barrier = Barrier::new(members.len());
    std::thread::scope(|scope| {
        let threads: Vec<_> = members
            .iter()
            .map(|m| {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    m.subscribe(&[topic])
                })
            })
            .collect();
        threads
            .into_iter()
            .try_for_each(|t| t.join().expect("a subscribing thread panicked"))
    })?;
    Ok(())
}

/// Closes every member at once, each on a thread of its own. Closed one
/// after another, while the rest sat unpolled through the rebalances the
/// first leavers started, a member was seen to hang for good in its close,
/// inside the revocation's `rd_kafka_assign`.
fn close_together(members: Vec<Member>) {
    std::thread::scope(|scope| {
        for m in members {
            scope.spawn(move || drop(m));
        }
    });
}

/// Milliseconds from the last subscribe until every member has received a
/// record, and until every partition is assigned. The members are connected
/// to the coordinator before they subscribe, all at once, so the clock
/// starts at their JoinGroups (the "from the last JoinGroup"); it
/// still includes each member's MEMBER_ID_REQUIRED round trip.
///
/// With no initial rebalance delay the classic figures are bimodal. The
/// first generation forms once every member the coordinator has heard of
/// has joined (Kafka's forms when the delay's timer fires, waiting for no
/// one), and a member whose first JoinGroup arrives later starts a second
/// one: well under a second when the first generation holds every member,
/// 1.1-2.2 s when a member must rejoin within a second of its previous
/// JoinGroup (see `member`). On two busy cores ten members' JoinGroups can
/// spread past that round trip; hence several trials (`--group-trials`).
fn rebalance(
    bootstrap: &str,
    topic: &str,
    group: &str,
    protocol: &str,
    heartbeat_ms: Option<u32>,
) -> Result<(f64, f64, Vec<Member>)> {
    let members: Vec<Member> = (0..MEMBERS)
        .map(|_| member(bootstrap, group, protocol, heartbeat_ms))
        .collect::<Result<_>>()?;
    await_coordinator(&members, Instant::now() + Duration::from_secs(30))?;
    subscribe_together(&members, topic)?;
    let start = Instant::now();
    let mut consuming = [false; MEMBERS];
    let give_up = start + Duration::from_secs(120);
    while consuming.iter().any(|c| !c) {
        if Instant::now() > give_up {
            bail!("{protocol}: members consuming after 120 s: {consuming:?}");
        }
        for (i, m) in members.iter().enumerate() {
            if let Some(message) = m.poll(Duration::from_millis(1)) {
                message?;
                consuming[i] = true;
            }
        }
    }
    let consuming_ms = start.elapsed().as_secs_f64() * 1000.0;
    // Every member consuming need not mean the assignment has settled: under
    // KIP-848 a partition may still be on its way from one member to another.
    let assigned = |members: &[Member]| -> usize {
        members
            .iter()
            .map(|m| m.assignment().map_or(0, |a| a.count()))
            .sum()
    };
    while assigned(&members) != PARTITIONS as usize {
        if Instant::now() > give_up {
            bail!(
                "{protocol}: {} partitions assigned, expected {PARTITIONS}",
                assigned(&members)
            );
        }
        for m in &members {
            if let Some(message) = m.poll(Duration::from_millis(1)) {
                message?;
            }
        }
    }
    let assigned_ms = start.elapsed().as_secs_f64() * 1000.0;
    let round = |ms: f64| (ms * 10.0).round() / 10.0;
    Ok((round(consuming_ms), round(assigned_ms), members))
}

/// Synchronous commits of each member's assigned partitions (at offset 1:
/// each holds one record), round robin, for a while.
fn commit_rate(members: &[Member], seconds: u64) -> Result<f64> {
    let mut offsets = Vec::with_capacity(members.len());
    for m in members {
        let mut list = m.assignment()?;
        list.set_all_offsets(Offset::Offset(1))?;
        offsets.push(list);
    }
    let start = Instant::now();
    let mut commits = 0u64;
    while start.elapsed() < Duration::from_secs(seconds) {
        for (m, list) in members.iter().zip(&offsets) {
            m.commit(list, CommitMode::Sync)?;
            commits += 1;
        }
    }
    Ok((commits as f64 / start.elapsed().as_secs_f64()).round())
}

/// Each protocol's figures: the median of `trials` rebalances (a group of
/// new members each, on one topic) with every trial's, and the commit rate
/// of the last trial's members.
pub fn run(
    bootstrap: &str,
    protocols: &[String],
    heartbeat_ms: Option<u32>,
    trials: usize,
) -> Result<Value> {
    let mut figures = serde_json::Map::new();
    for protocol in protocols {
        let topic = format!("bench-groups-{protocol}-{}", heartbeat_ms.unwrap_or(0));
        create_topic(bootstrap, &topic)?;
        match trials_of(bootstrap, &topic, protocol, heartbeat_ms, trials) {
            Ok(protocol_figures) => figures.insert(protocol.clone(), protocol_figures),
            Err(e) => figures.insert(protocol.clone(), json!({ "error": e.to_string() })),
        };
    }
    Ok(Value::Object(figures))
}

/// The same rebalances with members on a second client, @platformatic/kafka
/// (`node/group_members.mjs` in `node_dir`, after `npm ci` there), for the
/// protocols it has: eager round robin and cooperative-sticky.
pub fn run_node(
    bootstrap: &str,
    node_dir: &Path,
    heartbeat_ms: Option<u32>,
    trials: usize,
) -> Result<Value> {
    let script = node_dir.join("group_members.mjs");
    let heartbeat = heartbeat_ms.unwrap_or(3000).to_string();
    let mut figures = serde_json::Map::new();
    for protocol in ["roundrobin", "cooperative-sticky"] {
        let topic = format!("bench-groups-node-{protocol}-{heartbeat}");
        create_topic(bootstrap, &topic)?;
        let mut consuming = Vec::with_capacity(trials);
        let mut error = None;
        for trial in 0..trials.max(1) {
            let group = format!("bench-node-{protocol}-{heartbeat}-{trial}");
            let output = Command::new("node")
                .arg(&script)
                .args([bootstrap, &topic, &group, protocol])
                .args([MEMBERS.to_string(), heartbeat.clone()])
                .output()
                .with_context(|| format!("running node {}", script.display()))?;
            let line: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(
                |_| json!({ "error": String::from_utf8_lossy(&output.stderr).trim().to_string() }),
            );
            match line["all_consuming_ms"].as_f64() {
                Some(ms) if output.status.success() => consuming.push(ms),
                _ => {
                    error = Some(line["error"].clone());
                    break;
                }
            }
        }
        let protocol_figures = match error {
            Some(error) => json!({ "error": error }),
            None => json!({
                "members": MEMBERS,
                "partitions": PARTITIONS,
                "all_consuming_ms": median(consuming.clone()),
                "runs_all_consuming_ms": consuming,
            }),
        };
        figures.insert(protocol.to_string(), protocol_figures);
    }
    Ok(Value::Object(figures))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn trials_of(
    bootstrap: &str,
    topic: &str,
    protocol: &str,
    heartbeat_ms: Option<u32>,
    trials: usize,
) -> Result<Value> {
    let mut runs = Vec::with_capacity(trials);
    let mut last_members = Vec::new();
    for trial in 0..trials.max(1) {
        let group = format!("bench-{protocol}-{}-{trial}", heartbeat_ms.unwrap_or(0));
        // The previous trial's members leave their group first.
        close_together(std::mem::take(&mut last_members));
        let (consuming_ms, assigned_ms, members) =
            rebalance(bootstrap, topic, &group, protocol, heartbeat_ms)?;
        runs.push((consuming_ms, assigned_ms));
        last_members = members;
    }
    let commits = commit_rate(&last_members, 3)?;
    close_together(last_members);
    let consuming: Vec<f64> = runs.iter().map(|r| r.0).collect();
    let assigned: Vec<f64> = runs.iter().map(|r| r.1).collect();
    Ok(json!({
        "members": MEMBERS,
        "partitions": PARTITIONS,
        "all_consuming_ms": median(consuming.clone()),
        "all_assigned_ms": median(assigned),
        "runs_all_consuming_ms": consuming,
        "sync_commits_per_s": commits,
    }))
}
