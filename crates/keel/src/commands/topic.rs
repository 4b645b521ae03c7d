//! `keel topic`: create, list, describe and delete topics; move their
//! leadership and replicas.

use anyhow::{anyhow, Result};
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::{CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest};
use kafka_protocol::protocol::StrBytes;

use crate::client::{self, BootstrapArgs, Client};

mod describe;
mod leadership;

/// How long the broker may take to create or delete a topic before it
/// answers REQUEST_TIMED_OUT.
const TOPIC_OPERATION_TIMEOUT_MS: i32 = 30_000;

#[derive(clap::Subcommand, Debug)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        /// The topic's name.
        name: String,
        /// Number of partitions; the broker's `num.partitions` if absent.
        #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
        partitions: Option<i32>,
        /// Replicas per partition; the broker's `default.replication.factor` if absent.
        #[arg(long, value_parser = clap::value_parser!(i16).range(1..))]
        replication_factor: Option<i16>,
        /// A topic config override such as `retention.ms=60000`; repeatable.
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_config)]
        configs: Vec<(String, String)>,
        #[command(flatten)]
        bootstrap: BootstrapArgs,
    },
    /// List topic names, one per line, sorted.
    List {
        #[command(flatten)]
        bootstrap: BootstrapArgs,
    },
    /// Show a topic's partitions, replicas, offsets and config overrides.
    Describe {
        /// The topic's name.
        name: String,
        #[command(flatten)]
        bootstrap: BootstrapArgs,
    },
    /// Add partitions to a topic (their number can only grow).
    Alter {
        /// The topic's name.
        name: String,
        /// The new total number of partitions.
        #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
        partitions: i32,
        #[command(flatten)]
        bootstrap: BootstrapArgs,
    },
    /// Delete a topic.
    Delete {
        /// The topic's name.
        name: String,
        #[command(flatten)]
        bootstrap: BootstrapArgs,
    },
    /// Elect leaders: each partition's preferred (first) replica, or with
    /// `--unclean` any live replica where no in-sync one is left.
    ElectLeaders {
        /// The topic; every partition of every topic if absent.
        name: Option<String>,
        /// One partition of the topic.
        #[arg(long)]
        partition: Option<i32>,
        #[arg(long)]
        unclean: bool,
        #[command(flatten)]
        bootstrap: BootstrapArgs,
    },
    /// Move a partition onto other brokers, or cancel its move.
    Reassign {
        /// The topic's name.
        name: String,
        #[arg(long)]
        partition: i32,
        /// The target replicas, the preferred leader first: `2,3`.
        #[arg(long, value_delimiter = ',', required_unless_present = "cancel")]
        replicas: Option<Vec<i32>>,
        /// Cancel the move under way.
        #[arg(long, conflicts_with = "replicas")]
        cancel: bool,
        #[command(flatten)]
        bootstrap: BootstrapArgs,
    },
    /// List the partition moves under way.
    Reassignments {
        #[command(flatten)]
        bootstrap: BootstrapArgs,
    },
}

pub async fn run(cmd: TopicCommand) -> Result<()> {
    match cmd {
        TopicCommand::Create {
            name,
            partitions,
            replication_factor,
            configs,
            bootstrap,
        } => create(&bootstrap, &name, partitions, replication_factor, configs).await,
        TopicCommand::List { bootstrap } => list(&bootstrap).await,
        TopicCommand::Describe { name, bootstrap } => describe::run(&bootstrap, &name).await,
        TopicCommand::Alter {
            name,
            partitions,
            bootstrap,
        } => alter(&bootstrap, &name, partitions).await,
        TopicCommand::Delete { name, bootstrap } => delete(&bootstrap, &name).await,
        TopicCommand::ElectLeaders {
            name,
            partition,
            unclean,
            bootstrap,
        } => leadership::elect_leaders(&bootstrap, name.as_deref(), partition, unclean).await,
        TopicCommand::Reassign {
            name,
            partition,
            replicas,
            cancel: _,
            bootstrap,
        } => leadership::reassign(&bootstrap, &name, partition, replicas).await,
        TopicCommand::Reassignments { bootstrap } => {
            leadership::list_reassignments(&bootstrap).await
        }
    }
}

async fn alter(bootstrap: &BootstrapArgs, name: &str, partitions: i32) -> Result<()> {
    let mut client = Client::connect(&bootstrap.address).await?;
    let request = CreatePartitionsRequest::default()
        .with_topics(vec![CreatePartitionsTopic::default()
            .with_name(client::topic_name(name))
            .with_count(partitions)
            .with_assignments(None)])
        .with_timeout_ms(TOPIC_OPERATION_TIMEOUT_MS);
    let response = client.send(request).await?;
    let result = response
        .results
        .first()
        .ok_or_else(|| anyhow!("CreatePartitions response lacks topic {name}"))?;
    let what = format!("adding partitions to topic {name}");
    client::check_with_message(result.error_code, result.error_message.as_deref(), what)?;
    println!("Topic {name} now has {partitions} partitions.");
    Ok(())
}

async fn create(
    bootstrap: &BootstrapArgs,
    name: &str,
    partitions: Option<i32>,
    replication_factor: Option<i16>,
    configs: Vec<(String, String)>,
) -> Result<()> {
    let mut client = Client::connect(&bootstrap.address).await?;
    let configs = configs
        .into_iter()
        .map(|(key, value)| {
            CreatableTopicConfig::default()
                .with_name(StrBytes::from_string(key))
                .with_value(Some(StrBytes::from_string(value)))
        })
        .collect();
    // -1 asks for the broker's default.
    let topic = CreatableTopic::default()
        .with_name(client::topic_name(name))
        .with_num_partitions(partitions.unwrap_or(-1))
        .with_replication_factor(replication_factor.unwrap_or(-1))
        .with_configs(configs);
    let request = CreateTopicsRequest::default()
        .with_topics(vec![topic])
        .with_timeout_ms(TOPIC_OPERATION_TIMEOUT_MS);
    let response = client.send(request).await?;
    let result = response
        .topics
        .into_iter()
        .find(|t| t.name.as_str() == name)
        .ok_or_else(|| anyhow!("CreateTopics response lacks topic {name}"))?;
    let what = format!("creating topic {name}");
    client::check_with_message(result.error_code, result.error_message.as_deref(), what)?;
    println!("Created topic {name}.");
    Ok(())
}

async fn list(bootstrap: &BootstrapArgs) -> Result<()> {
    let mut client = Client::connect(&bootstrap.address).await?;
    let metadata = client.metadata(None).await?;
    let mut names: Vec<&str> = metadata
        .topics
        .iter()
        .filter_map(|t| t.name.as_deref())
        .map(|n| n.as_str())
        .collect();
    names.sort_unstable();
    for name in names {
        println!("{name}");
    }
    Ok(())
}

async fn delete(bootstrap: &BootstrapArgs, name: &str) -> Result<()> {
    let mut client = Client::connect(&bootstrap.address).await?;
    let request = DeleteTopicsRequest::default()
        .with_topic_names(vec![client::topic_name(name)])
        .with_timeout_ms(TOPIC_OPERATION_TIMEOUT_MS);
    let response = client.send(request).await?;
    let result = response
        .responses
        .into_iter()
        .find(|r| r.name.as_deref().map(|n| n.as_str()) == Some(name))
        .ok_or_else(|| anyhow!("DeleteTopics response lacks topic {name}"))?;
    let what = format!("deleting topic {name}");
    client::check_with_message(result.error_code, result.error_message.as_deref(), what)?;
    println!("Deleted topic {name}.");
    Ok(())
}

/// Parses `--config KEY=VALUE`; the value may itself contain `=`.
fn parse_config(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {arg:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: TopicCommand,
    }

    fn parse(args: &[&str]) -> Result<TopicCommand, clap::Error> {
        Cli::try_parse_from(std::iter::once("topic").chain(args.iter().copied())).map(|c| c.cmd)
    }

    #[test]
    fn config_splits_at_the_first_equals_sign() {
        assert_eq!(
            parse_config("retention.ms=1000"),
            Ok(("retention.ms".into(), "1000".into()))
        );
        assert_eq!(parse_config("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(parse_config("a="), Ok(("a".into(), String::new())));
        assert!(parse_config("=1").is_err());
        assert!(parse_config("novalue").is_err());
    }

    #[test]
    fn create_parses_repeated_configs_and_defaults() {
        let cmd = parse(&[
            "create",
            "t",
            "--partitions",
            "3",
            "--config",
            "a=1",
            "--config",
            "b=2",
        ])
        .unwrap();
        let TopicCommand::Create {
            name,
            partitions,
            replication_factor,
            configs,
            bootstrap,
        } = cmd
        else {
            panic!("not a create: {cmd:?}");
        };
        assert_eq!(name, "t");
        assert_eq!(partitions, Some(3));
        assert_eq!(replication_factor, None);
        assert_eq!(
            configs,
            [("a".into(), "1".into()), ("b".into(), "2".into())]
        );
        assert_eq!(bootstrap.address, client::DEFAULT_BOOTSTRAP_SERVER);
    }

    #[test]
    fn create_rejects_zero_partitions() {
        assert!(parse(&["create", "t", "--partitions", "0"]).is_err());
    }

    #[test]
    fn bootstrap_server_is_accepted_by_every_subcommand() {
        for sub in ["list", "describe", "delete", "alter"] {
            let mut args = vec![sub];
            if sub != "list" {
                args.push("t");
            }
            if sub == "alter" {
                args.extend(["--partitions", "2"]);
            }
            args.extend(["--bootstrap-server", "h:1"]);
            assert!(parse(&args).is_ok(), "{sub}");
        }
    }
}
