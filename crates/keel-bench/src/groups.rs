//! Consumer group figures: how long after the last member subscribes every
//! member is consuming (10 members over 100 partitions), per assignment
//! protocol, and how many synchronous offset commits 10 members get through.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
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
) -> Result<BaseConsumer> {
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
        .set("enable.auto.commit", "false");
    match protocol {
        "consumer" => config.set("group.protocol", "consumer"),
        strategy => config.set("partition.assignment.strategy", strategy),
    };
    Ok(config.create()?)
}

/// Milliseconds from the last subscribe until every member has received a
/// record, and until every partition is assigned. The clock starts before the
/// members reach the coordinator, so it includes their start (connections,
/// FindCoordinator, MEMBER_ID_REQUIRED): some 50-150 ms here.
///
/// With no initial rebalance delay the classic figures are bimodal.
/// librdkafka's members reach the coordinator in waves (some wait ~40 ms to
/// connect), and a generation formed before the last wave rebalances again:
/// 0.2-0.7 s when the first generation holds every member, 1.1-2.2 s when a
/// member must rejoin within a second of its previous JoinGroup (see
/// `member`). Cooperative-sticky nearly always takes the slow mode: partitions
/// owned in the first generation move only in a second round, which the
/// other members learn of by heartbeat.
fn rebalance(
    bootstrap: &str,
    topic: &str,
    protocol: &str,
    heartbeat_ms: Option<u32>,
) -> Result<(f64, f64, Vec<BaseConsumer>)> {
    let group = format!("bench-{protocol}-{}", heartbeat_ms.unwrap_or(0));
    let members: Vec<BaseConsumer> = (0..MEMBERS)
        .map(|_| member(bootstrap, &group, protocol, heartbeat_ms))
        .collect::<Result<_>>()?;
    for m in &members {
        m.subscribe(&[topic])?;
    }
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
    let assigned = |members: &[BaseConsumer]| -> usize {
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
fn commit_rate(members: &[BaseConsumer], seconds: u64) -> Result<f64> {
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

pub fn run(bootstrap: &str, protocols: &[String], heartbeat_ms: Option<u32>) -> Result<Value> {
    let mut figures = serde_json::Map::new();
    for protocol in protocols {
        let topic = format!("bench-groups-{protocol}-{}", heartbeat_ms.unwrap_or(0));
        create_topic(bootstrap, &topic)?;
        match rebalance(bootstrap, &topic, protocol, heartbeat_ms) {
            Ok((consuming_ms, assigned_ms, members)) => {
                let commits = commit_rate(&members, 3)?;
                figures.insert(
                    protocol.clone(),
                    json!({
                        "members": MEMBERS,
                        "partitions": PARTITIONS,
                        "all_consuming_ms": consuming_ms,
                        "all_assigned_ms": assigned_ms,
                        "sync_commits_per_s": commits,
                    }),
                );
            }
            Err(e) => {
                figures.insert(protocol.clone(), json!({ "error": e.to_string() }));
            }
        }
    }
    Ok(Value::Object(figures))
}
