//! `keel txn find-hanging`: transactions open on a partition that no
//! coordinator will end, as Kafka's tool finds them. Each partition's
//! leader lists its producers (DescribeProducers); one whose transaction
//! has been open for longer than the max transaction timeout is a
//! candidate; its coordinator is then asked (ListTransactions by producer
//! id, DescribeTransactions): the transaction hangs unless the coordinator
//! still has the partition in a transaction it will end.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{anyhow, bail, Result};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_producers_response::ProducerState;
use kafka_protocol::messages::describe_transactions_response::TransactionState;
use serde::Serialize;

use super::{describe_producers, describe_transactions, list_transactions, now_ms};
use crate::client::{self, BootstrapArgs};
use crate::commands::cluster::Pool;
use crate::commands::output::{duration, table};

#[derive(clap::Args, Debug)]
pub struct HangingArgs {
    /// The topic whose partitions to search.
    #[arg(long)]
    topic: String,
    /// Only this partition of the topic; all of them if absent.
    #[arg(long, value_name = "P", value_parser = clap::value_parser!(i32).range(0..))]
    partition: Option<i32>,
    /// The longest any transaction may stay open (the brokers'
    /// transaction.max.timeout.ms): only transactions whose producer last
    /// wrote longer ago than this are searched, and a coordinator still
    /// holding one open for longer has failed to end it.
    #[arg(long, value_name = "MS", default_value_t = 900_000,
          value_parser = clap::value_parser!(i64).range(0..))]
    max_transaction_timeout_ms: i64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    bootstrap: BootstrapArgs,
}

/// A producer's transaction open on a partition.
struct Open {
    partition: i32,
    producer: ProducerState,
}

/// What the coordinators say of a producer id.
enum Known {
    /// Its transactional id, which its coordinator no longer describes.
    NotFound { transactional_id: String },
    /// Its transactional id and the coordinator's description of it.
    Described {
        transactional_id: String,
        state: TransactionState,
    },
}

impl Known {
    fn transactional_id(&self) -> &str {
        match self {
            Known::NotFound { transactional_id }
            | Known::Described {
                transactional_id, ..
            } => transactional_id,
        }
    }
}

/// Why an open transaction hangs.
#[derive(Serialize, Clone, Copy, Debug, PartialEq)]
#[serde(rename_all = "snake_case")]
enum Reason {
    /// No coordinator lists a transactional id with this producer id.
    UnknownProducer,
    /// The transactional id's coordinator no longer knows it.
    TransactionalIdNotFound,
    /// The coordinator's transaction does not include the partition: no
    /// marker will come.
    PartitionNotInTransaction,
    /// The coordinator's transaction includes the partition but has been
    /// open for longer than the max timeout: the coordinator should have
    /// ended it.
    Overdue,
}

#[derive(Serialize)]
struct Hanging {
    topic: String,
    partition: i32,
    producer_id: i64,
    producer_epoch: i32,
    coordinator_epoch: i32,
    start_offset: i64,
    last_timestamp_ms: i64,
    /// Now minus the last timestamp, by this machine's clock.
    age_ms: i64,
    transactional_id: Option<String>,
    /// The transactional id's state at its coordinator.
    coordinator_state: Option<String>,
    /// The coordinator's transaction's age, for `overdue`.
    coordinator_age_ms: Option<i64>,
    reason: Reason,
}

pub async fn run(args: HangingArgs) -> Result<()> {
    let (topic, bootstrap) = (args.topic.as_str(), args.bootstrap.address.as_str());
    let max_ms = args.max_transaction_timeout_ms;
    let mut pool = Pool::new();
    let topics = pool
        .topics(bootstrap, &BTreeSet::from([topic.to_string()]))
        .await?;
    let t = &topics[topic];
    if let Some(error) = &t.error {
        bail!("topic {topic}: {error}");
    }
    let partitions: Vec<i32> = match args.partition {
        None => t.partitions.keys().copied().collect(),
        Some(p) if t.partitions.contains_key(&p) => vec![p],
        Some(p) => bail!(
            "topic {topic} has {} partitions; there is no partition {p}",
            t.partitions.len()
        ),
    };
    let mut by_leader: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for p in partitions {
        let leader = t.partitions[&p]
            .as_deref()
            .map_err(|e| anyhow!("{topic}-{p} has no leader: {e}"))?;
        by_leader.entry(leader).or_default().push(p);
    }

    let now = now_ms();
    let mut open = Vec::new();
    for (leader, partitions) in by_leader {
        let client = pool.get(leader).await?;
        for (partition, producers) in describe_producers(client, topic, &partitions).await? {
            open.extend(
                producers
                    .into_iter()
                    .filter(|p| is_candidate(p, now, max_ms))
                    .map(|producer| Open {
                        partition,
                        producer,
                    }),
            );
        }
    }
    let known = coordinators_view(&mut pool, bootstrap, &open).await?;

    let mut hanging = Vec::new();
    for o in open {
        let p = &o.producer;
        let known = known.get(&p.producer_id.0);
        let Some(reason) = verdict(topic, o.partition, known, now, max_ms) else {
            continue;
        };
        let described = match known {
            Some(Known::Described { state, .. }) => Some(state),
            _ => None,
        };
        hanging.push(Hanging {
            topic: topic.to_string(),
            partition: o.partition,
            producer_id: p.producer_id.0,
            producer_epoch: p.producer_epoch,
            coordinator_epoch: p.coordinator_epoch,
            start_offset: p.current_txn_start_offset,
            last_timestamp_ms: p.last_timestamp,
            age_ms: now - p.last_timestamp,
            transactional_id: known.map(|k| k.transactional_id().to_string()),
            coordinator_state: described.map(|s| s.transaction_state.to_string()),
            coordinator_age_ms: described
                .filter(|_| reason == Reason::Overdue)
                .map(|s| now - s.transaction_start_time_ms),
            reason,
        });
    }
    hanging.sort_by_key(|h| (h.partition, h.start_offset, h.producer_id));

    if args.json {
        println!("{}", serde_json::to_string_pretty(&hanging)?);
        return Ok(());
    }
    if hanging.is_empty() {
        // To stderr: no hanging transaction prints nothing on stdout.
        eprintln!("No hanging transactions on {topic}.");
        return Ok(());
    }
    let rows = hanging.iter().map(cells).collect();
    let headers = [
        "TOPIC",
        "PARTITION",
        "PRODUCER-ID",
        "PRODUCER-EPOCH",
        "COORDINATOR-EPOCH",
        "START-OFFSET",
        "AGE",
        "TRANSACTIONAL-ID",
        "WHY",
    ];
    print!("{}", table(&headers, rows));
    eprintln!(
        "Abort one with: keel txn abort --topic {topic} --partition P --start-offset START-OFFSET"
    );
    Ok(())
}

/// A producer with a transaction open here, whose last write is older than
/// the max timeout (Kafka's tool measures from the last timestamp too).
fn is_candidate(p: &ProducerState, now_ms: i64, max_ms: i64) -> bool {
    p.current_txn_start_offset >= 0 && now_ms.saturating_sub(p.last_timestamp) > max_ms
}

/// The transactional id and coordinator description of each open
/// transaction's producer id that a coordinator lists.
async fn coordinators_view(
    pool: &mut Pool,
    bootstrap: &str,
    open: &[Open],
) -> Result<BTreeMap<i64, Known>> {
    let mut known = BTreeMap::new();
    let producer_ids: BTreeSet<i64> = open.iter().map(|o| o.producer.producer_id.0).collect();
    if producer_ids.is_empty() {
        return Ok(known);
    }
    let listed: Vec<_> = list_transactions(pool, bootstrap, &producer_ids)
        .await?
        .into_iter()
        .filter(|l| producer_ids.contains(&l.producer_id))
        .collect();
    // Each id is described by the coordinator that listed it.
    let mut by_coordinator: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for l in &listed {
        by_coordinator
            .entry(&l.address)
            .or_default()
            .insert(&l.transactional_id);
    }
    let mut described = BTreeMap::new();
    for (address, ids) in by_coordinator {
        described.extend(describe_transactions(pool, address, &ids).await?);
    }
    for l in listed {
        let state = described
            .get(&l.transactional_id)
            .expect("every listed id was described")
            .clone();
        let transactional_id = l.transactional_id;
        let k = if state.error_code == ResponseError::TransactionalIdNotFound.code() {
            Known::NotFound { transactional_id }
        } else {
            client::check(
                state.error_code,
                format!("describing transactional id {transactional_id}"),
            )?;
            Known::Described {
                transactional_id,
                state,
            }
        };
        known.insert(l.producer_id, k);
    }
    Ok(known)
}

/// Whether a candidate hangs, and why: unless its coordinator has the
/// partition in a transaction open for no longer than the max timeout, no
/// coordinator will write its marker.
fn verdict(
    topic: &str,
    partition: i32,
    known: Option<&Known>,
    now_ms: i64,
    max_ms: i64,
) -> Option<Reason> {
    let state = match known {
        None => return Some(Reason::UnknownProducer),
        Some(Known::NotFound { .. }) => return Some(Reason::TransactionalIdNotFound),
        Some(Known::Described { state, .. }) => state,
    };
    let included = state
        .topics
        .iter()
        .any(|t| t.topic.as_str() == topic && t.partitions.contains(&partition));
    let start = state.transaction_start_time_ms;
    if !included {
        Some(Reason::PartitionNotInTransaction)
    } else if start >= 0 && now_ms.saturating_sub(start) > max_ms {
        Some(Reason::Overdue)
    } else {
        None
    }
}

fn cells(h: &Hanging) -> Vec<String> {
    let state = h.coordinator_state.as_deref().unwrap_or("-");
    let why = match h.reason {
        Reason::UnknownProducer => "no transactional id has this producer id".to_string(),
        Reason::TransactionalIdNotFound => "transactional id not found".to_string(),
        Reason::PartitionNotInTransaction => {
            format!("coordinator: {state}, without this partition")
        }
        Reason::Overdue => format!(
            "coordinator: {state} for {}, past the max timeout",
            duration(h.coordinator_age_ms.unwrap_or_default())
        ),
    };
    vec![
        h.topic.clone(),
        h.partition.to_string(),
        h.producer_id.to_string(),
        h.producer_epoch.to_string(),
        h.coordinator_epoch.to_string(),
        h.start_offset.to_string(),
        duration(h.age_ms),
        h.transactional_id
            .clone()
            .unwrap_or_else(|| "-".to_string()),
        why,
    ]
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::super::TxnCommand;
    use super::*;
    use kafka_protocol::messages::describe_transactions_response::TopicData;
    use kafka_protocol::messages::ProducerId;
    use kafka_protocol::protocol::StrBytes;

    fn args(args: &[&str]) -> Result<HangingArgs, clap::Error> {
        let args: Vec<&str> = ["find-hanging"].iter().chain(args).copied().collect();
        match parse(&args)? {
            TxnCommand::FindHanging(args) => Ok(args),
            other => panic!("not find-hanging: {other:?}"),
        }
    }

    #[test]
    fn find_hanging_needs_a_topic() {
        assert!(args(&[]).is_err());
        let a = args(&["--topic", "t"]).unwrap();
        assert_eq!((a.partition, a.max_transaction_timeout_ms), (None, 900_000));
        let a = args(&[
            "--topic",
            "t",
            "--partition",
            "2",
            "--max-transaction-timeout-ms",
            "0",
        ])
        .unwrap();
        assert_eq!((a.partition, a.max_transaction_timeout_ms), (Some(2), 0));
        assert!(args(&["--topic", "t", "--partition", "-1"]).is_err());
        assert!(args(&["--topic", "t", "--max-transaction-timeout-ms", "-1"]).is_err());
    }

    fn producer(start_offset: i64, last_timestamp: i64) -> ProducerState {
        ProducerState::default()
            .with_producer_id(ProducerId(7))
            .with_current_txn_start_offset(start_offset)
            .with_last_timestamp(last_timestamp)
    }

    #[test]
    fn candidates_are_open_and_older_than_the_max_timeout() {
        assert!(is_candidate(&producer(5, 1_000), 2_001, 1_000));
        assert!(!is_candidate(&producer(5, 1_000), 2_000, 1_000));
        assert!(!is_candidate(&producer(-1, 1_000), 9_000, 1_000));
        assert!(is_candidate(&producer(0, 1_000), 1_001, 0));
    }

    fn described(partitions: &[(&str, i32)], start_ms: i64) -> Known {
        let topics = partitions
            .iter()
            .map(|(t, p)| {
                TopicData::default()
                    .with_topic(client::topic_name(t))
                    .with_partitions(vec![*p])
            })
            .collect();
        Known::Described {
            transactional_id: "tx".to_string(),
            state: TransactionState::default()
                .with_transaction_state(StrBytes::from_static_str("Ongoing"))
                .with_transaction_start_time_ms(start_ms)
                .with_topics(topics),
        }
    }

    #[test]
    fn the_coordinator_vouches_only_for_its_partitions_within_the_timeout() {
        let v = |known: Option<&Known>| verdict("t", 0, known, 10_000, 5_000);
        assert_eq!(v(None), Some(Reason::UnknownProducer));
        let gone = Known::NotFound {
            transactional_id: "tx".to_string(),
        };
        assert_eq!(v(Some(&gone)), Some(Reason::TransactionalIdNotFound));
        let elsewhere = described(&[("t", 1), ("u", 0)], 8_000);
        assert_eq!(v(Some(&elsewhere)), Some(Reason::PartitionNotInTransaction));
        let tracked = described(&[("t", 0)], 8_000);
        assert_eq!(v(Some(&tracked)), None);
        let overdue = described(&[("t", 0)], 4_000);
        assert_eq!(v(Some(&overdue)), Some(Reason::Overdue));
        // Without a start time the coordinator is trusted, as Kafka's tool does.
        let no_start = described(&[("t", 0)], -1);
        assert_eq!(v(Some(&no_start)), None);
    }
}
