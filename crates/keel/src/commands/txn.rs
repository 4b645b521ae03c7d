//! `keel txn`: Kafka's `kafka-transactions.sh`. Lists and describes
//! transactions at their coordinators, finds transactions left open on a
//! partition that no coordinator will end (hanging), and aborts one by
//! writing its ABORT marker.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Result};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_producers_request::TopicRequest;
use kafka_protocol::messages::describe_producers_response::ProducerState;
use kafka_protocol::messages::describe_transactions_response::TransactionState;
use kafka_protocol::messages::{
    DescribeProducersRequest, DescribeTransactionsRequest, ListTransactionsRequest, ProducerId,
    TransactionalId,
};
use kafka_protocol::protocol::StrBytes;
use serde::Serialize;

use super::cluster::{self, Coordinator, CoordinatorKind, Pool};
use super::output::{duration, or_dash, partition_list, table, timestamp};
use crate::client::{self, BootstrapArgs, Client};

mod abort;
mod hanging;

#[derive(clap::Subcommand, Debug)]
pub enum TxnCommand {
    /// List the transactional ids every broker coordinates, sorted by id.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        bootstrap: BootstrapArgs,
    },
    /// Show a transactional id's state at its coordinator: its producer,
    /// timeout, and the open transaction's start, age and partitions.
    Describe {
        /// The transactional id.
        transactional_id: String,
        /// Print JSON instead of a list of fields.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        bootstrap: BootstrapArgs,
    },
    /// Find transactions left open on a topic's partitions for longer than
    /// any transaction may last, which their coordinators will not end.
    FindHanging(hanging::HangingArgs),
    /// Abort a producer's open transaction on one partition by writing an
    /// ABORT marker there, as its coordinator would.
    Abort(abort::AbortArgs),
}

pub async fn run(cmd: TxnCommand) -> Result<()> {
    match cmd {
        TxnCommand::List { json, bootstrap } => list(&bootstrap, json).await,
        TxnCommand::Describe {
            transactional_id,
            json,
            bootstrap,
        } => describe(&bootstrap, &transactional_id, json).await,
        TxnCommand::FindHanging(args) => hanging::run(args).await,
        TxnCommand::Abort(args) => abort::run(args).await,
    }
}

/// One transactional id, as its coordinator lists it.
#[derive(Serialize, Debug, PartialEq)]
struct Listed {
    transactional_id: String,
    /// The coordinator's node id.
    coordinator: i32,
    /// The coordinator's HOST:PORT.
    #[serde(skip)]
    address: String,
    producer_id: i64,
    state: String,
}

async fn list(bootstrap: &BootstrapArgs, json: bool) -> Result<()> {
    let mut pool = Pool::new();
    let mut listed = list_transactions(&mut pool, &bootstrap.address, &BTreeSet::new()).await?;
    listed.sort_by(|a, b| {
        (&a.transactional_id, a.coordinator).cmp(&(&b.transactional_id, b.coordinator))
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&listed)?);
        return Ok(());
    }
    let rows = listed
        .into_iter()
        .map(|t| {
            vec![
                t.transactional_id,
                t.coordinator.to_string(),
                t.producer_id.to_string(),
                t.state,
            ]
        })
        .collect();
    let headers = ["TRANSACTIONAL-ID", "COORDINATOR", "PRODUCER-ID", "STATE"];
    print!("{}", table(&headers, rows));
    Ok(())
}

/// ListTransactions to every broker: each lists the transactional ids it
/// coordinates; only those whose producer id is in `producer_ids`, unless
/// it is empty.
async fn list_transactions(
    pool: &mut Pool,
    bootstrap: &str,
    producer_ids: &BTreeSet<i64>,
) -> Result<Vec<Listed>> {
    let metadata = pool.get(bootstrap).await?.metadata(Some(&[])).await?;
    let request = ListTransactionsRequest::default()
        .with_producer_id_filters(producer_ids.iter().map(|&id| ProducerId(id)).collect());
    let mut listed = Vec::new();
    for broker in &metadata.brokers {
        let address = client::broker_address(&metadata, *broker.node_id)?;
        let response = pool
            .send_retrying(&address, request.clone(), |r| r.error_code)
            .await?;
        client::check(
            response.error_code,
            format!("ListTransactions from {address}"),
        )?;
        listed.extend(response.transaction_states.into_iter().map(|t| Listed {
            transactional_id: t.transactional_id.to_string(),
            coordinator: *broker.node_id,
            address: address.clone(),
            producer_id: t.producer_id.0,
            state: t.transaction_state.to_string(),
        }));
    }
    Ok(listed)
}

/// DescribeTransactions for `ids` at the coordinator at `address`, asked
/// again while it loads; each id's answer, which may be an error.
async fn describe_transactions(
    pool: &mut Pool,
    address: &str,
    ids: &BTreeSet<&str>,
) -> Result<BTreeMap<String, TransactionState>> {
    let request = DescribeTransactionsRequest::default().with_transactional_ids(
        ids.iter()
            .map(|id| TransactionalId(StrBytes::from_string(id.to_string())))
            .collect(),
    );
    let response = pool
        .send_retrying(address, request, |r| {
            r.transaction_states
                .iter()
                .map(|t| t.error_code)
                .find(|&c| cluster::coordinator_busy(c))
                .unwrap_or(0)
        })
        .await?;
    let described: BTreeMap<String, TransactionState> = response
        .transaction_states
        .into_iter()
        .map(|t| (t.transactional_id.to_string(), t))
        .collect();
    if let Some(missing) = ids.iter().find(|id| !described.contains_key(**id)) {
        bail!("DescribeTransactions response lacks transactional id {missing}");
    }
    Ok(described)
}

/// What `keel txn describe` shows.
#[derive(Serialize)]
struct Description<'a> {
    transactional_id: &'a str,
    coordinator: CoordinatorJson<'a>,
    state: String,
    producer_id: i64,
    producer_epoch: i16,
    transaction_timeout_ms: i32,
    /// When the current (or last) transaction started; None when the
    /// coordinator reports none.
    transaction_start_time_ms: Option<i64>,
    /// Now minus the start time, by this machine's clock.
    age_ms: Option<i64>,
    /// The partitions in the transaction, by topic.
    topic_partitions: BTreeMap<String, Vec<i32>>,
}

#[derive(Serialize)]
struct CoordinatorJson<'a> {
    node_id: i32,
    address: &'a str,
}

async fn describe(bootstrap: &BootstrapArgs, id: &str, json: bool) -> Result<()> {
    let mut pool = Pool::new();
    let coordinator = pool
        .coordinator(&bootstrap.address, CoordinatorKind::Transaction, id)
        .await?;
    let mut described =
        describe_transactions(&mut pool, &coordinator.address, &BTreeSet::from([id])).await?;
    let state = described
        .remove(id)
        .expect("checked by describe_transactions");
    let what = format!("describing transactional id {id}");
    if state.error_code == ResponseError::TransactionalIdNotFound.code() {
        bail!("{what}: TRANSACTIONAL_ID_NOT_FOUND: its coordinator does not know it");
    }
    client::check(state.error_code, what)?;
    let description = Description::new(id, &coordinator, state, now_ms());
    if json {
        println!("{}", serde_json::to_string_pretty(&description)?);
    } else {
        print!("{}", description.render());
    }
    Ok(())
}

impl<'a> Description<'a> {
    fn new(
        id: &'a str,
        coordinator: &'a Coordinator,
        state: TransactionState,
        now_ms: i64,
    ) -> Description<'a> {
        let start =
            (state.transaction_start_time_ms >= 0).then_some(state.transaction_start_time_ms);
        let mut topic_partitions: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for t in state.topics {
            let partitions = topic_partitions.entry(t.topic.to_string()).or_default();
            partitions.extend(t.partitions);
            partitions.sort_unstable();
            partitions.dedup();
        }
        Description {
            transactional_id: id,
            coordinator: CoordinatorJson {
                node_id: coordinator.node_id,
                address: &coordinator.address,
            },
            state: state.transaction_state.to_string(),
            producer_id: state.producer_id.0,
            producer_epoch: state.producer_epoch,
            transaction_timeout_ms: state.transaction_timeout_ms,
            transaction_start_time_ms: start,
            age_ms: start.map(|start| now_ms - start),
            topic_partitions,
        }
    }

    fn render(&self) -> String {
        let mut out = String::new();
        let mut field = |name: &str, value: String| out += &format!("{name:<18}{value}\n");
        field("TRANSACTIONAL-ID", self.transactional_id.to_string());
        field(
            "COORDINATOR",
            format!(
                "{} ({})",
                self.coordinator.node_id, self.coordinator.address
            ),
        );
        field("STATE", self.state.clone());
        field("PRODUCER-ID", self.producer_id.to_string());
        field("PRODUCER-EPOCH", self.producer_epoch.to_string());
        let timeout = i64::from(self.transaction_timeout_ms);
        field("TIMEOUT", format!("{timeout} ms ({})", duration(timeout)));
        field(
            "START-TIME",
            self.transaction_start_time_ms
                .map_or_else(|| "-".to_string(), |t| format!("{t} ({})", timestamp(t))),
        );
        field(
            "AGE",
            self.age_ms
                .map_or_else(|| "-".to_string(), |a| format!("{a} ms ({})", duration(a))),
        );
        field(
            "PARTITIONS",
            or_dash(partition_list(&self.topic_partitions)),
        );
        out
    }
}

/// DescribeProducers for `partitions` of `topic`, asked of their leader:
/// the producers each partition knows, or an error naming why it could not
/// say.
async fn describe_producers(
    client: &mut Client,
    topic: &str,
    partitions: &[i32],
) -> Result<BTreeMap<i32, Vec<ProducerState>>> {
    let request = DescribeProducersRequest::default().with_topics(vec![TopicRequest::default()
        .with_name(client::topic_name(topic))
        .with_partition_indexes(partitions.to_vec())]);
    let response = client.send(request).await?;
    let mut producers = BTreeMap::new();
    for p in response
        .topics
        .into_iter()
        .filter(|t| t.name.as_str() == topic)
        .flat_map(|t| t.partitions)
    {
        client::check_with_message(
            p.error_code,
            p.error_message.as_deref(),
            format!(
                "describing the producers of {topic}-{} at {}",
                p.partition_index,
                client.address()
            ),
        )?;
        producers.insert(p.partition_index, p.active_producers);
    }
    if let Some(p) = partitions.iter().find(|p| !producers.contains_key(p)) {
        return Err(anyhow!("DescribeProducers response lacks {topic}-{p}"));
    }
    Ok(producers)
}

/// Milliseconds since the Unix epoch, by this machine's clock.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use kafka_protocol::messages::describe_transactions_response::TopicData;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: TxnCommand,
    }

    pub(super) fn parse(args: &[&str]) -> Result<TxnCommand, clap::Error> {
        Cli::try_parse_from(std::iter::once("txn").chain(args.iter().copied())).map(|c| c.cmd)
    }

    #[test]
    fn list_and_describe_parse() {
        let Ok(TxnCommand::List { json, bootstrap }) = parse(&["list", "--json"]) else {
            panic!("list --json");
        };
        assert!(json);
        assert_eq!(bootstrap.address, client::DEFAULT_BOOTSTRAP_SERVER);
        let Ok(TxnCommand::Describe {
            transactional_id,
            json,
            ..
        }) = parse(&["describe", "tx-1", "--bootstrap-server", "h:1"])
        else {
            panic!("describe tx-1");
        };
        assert_eq!((transactional_id.as_str(), json), ("tx-1", false));
        assert!(parse(&["describe"]).is_err());
    }

    fn described(start_ms: i64, topics: Vec<TopicData>) -> TransactionState {
        TransactionState::default()
            .with_transactional_id(TransactionalId(StrBytes::from_static_str("tx")))
            .with_transaction_state(StrBytes::from_static_str("Ongoing"))
            .with_producer_id(ProducerId(1000))
            .with_producer_epoch(3)
            .with_transaction_timeout_ms(60_000)
            .with_transaction_start_time_ms(start_ms)
            .with_topics(topics)
    }

    #[test]
    fn descriptions_show_age_and_partitions() {
        let coordinator = Coordinator {
            node_id: 1,
            address: "h:9092".to_string(),
        };
        let topics = vec![
            TopicData::default()
                .with_topic(client::topic_name("t"))
                .with_partitions(vec![2, 0]),
            TopicData::default()
                .with_topic(client::topic_name("a"))
                .with_partitions(vec![1]),
        ];
        let d = Description::new("tx", &coordinator, described(1_000, topics), 66_000);
        assert_eq!(d.age_ms, Some(65_000));
        assert_eq!(
            d.render(),
            "TRANSACTIONAL-ID  tx\n\
             COORDINATOR       1 (h:9092)\n\
             STATE             Ongoing\n\
             PRODUCER-ID       1000\n\
             PRODUCER-EPOCH    3\n\
             TIMEOUT           60000 ms (1m 00s)\n\
             START-TIME        1000 (1970-01-01T00:00:01.000Z)\n\
             AGE               65000 ms (1m 05s)\n\
             PARTITIONS        a-1 t-0,2\n"
        );
        let idle = Description::new("tx", &coordinator, described(-1, Vec::new()), 66_000);
        assert_eq!((idle.transaction_start_time_ms, idle.age_ms), (None, None));
        let rendered = idle.render();
        assert!(rendered.contains("START-TIME        -\n"), "{rendered}");
        assert!(rendered.contains("PARTITIONS        -\n"), "{rendered}");
    }
}
