//! `keel config`: describe and alter topic and broker configs, in the shape
//! of Kafka's `kafka-configs.sh` (`--entity-type`, `--add-config`,
//! `--delete-config`). Changes go through IncrementalAlterConfigs, so configs
//! not named are left as they are.

use anyhow::{anyhow, bail, Result};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::describe_configs_response::DescribeConfigsResourceResult;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::{DescribeConfigsRequest, IncrementalAlterConfigsRequest};
use kafka_protocol::protocol::StrBytes;

use crate::client::{self, BootstrapArgs, Client};

/// DescribeConfigs' resource types (Kafka `ConfigResource.Type`).
pub const TOPIC_RESOURCE_TYPE: i8 = 2;
const BROKER_RESOURCE_TYPE: i8 = 4;

/// DescribeConfigs' `config_source` for a value nobody set.
pub const DEFAULT_CONFIG_SOURCE: i8 = 5;

/// IncrementalAlterConfigs operations (Kafka `AlterConfigOp.OpType`).
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntityType {
    Topics,
    Brokers,
}

/// Which resource: `--entity-type` with `--entity-name` or `--entity-default`.
#[derive(clap::Args, Debug)]
pub struct Entity {
    #[arg(long = "entity-type", value_enum)]
    entity_type: EntityType,
    /// A topic name or broker id.
    #[arg(long = "entity-name", required_unless_present = "entity_default")]
    entity_name: Option<String>,
    /// The cluster-wide default of every broker's dynamic configs.
    #[arg(long = "entity-default", conflicts_with = "entity_name")]
    entity_default: bool,
}

impl Entity {
    fn resource(&self) -> Result<(i8, String)> {
        match (self.entity_type, &self.entity_name) {
            (EntityType::Topics, Some(name)) => Ok((TOPIC_RESOURCE_TYPE, name.clone())),
            (EntityType::Topics, None) => bail!("--entity-default applies to brokers only"),
            (EntityType::Brokers, Some(id)) => {
                id.parse::<i32>()
                    .map_err(|_| anyhow!("broker id {id:?} is not a number"))?;
                Ok((BROKER_RESOURCE_TYPE, id.clone()))
            }
            (EntityType::Brokers, None) => Ok((BROKER_RESOURCE_TYPE, String::new())),
        }
    }

    fn label(&self) -> String {
        let kind = match self.entity_type {
            EntityType::Topics => "topic",
            EntityType::Brokers => "broker",
        };
        match &self.entity_name {
            Some(name) => format!("{kind} {name}"),
            None => "the default broker".to_string(),
        }
    }
}

#[derive(clap::Subcommand, Debug)]
pub enum ConfigCommand {
    /// Show the configs set on a topic or broker (all of them with `--all`).
    Describe {
        #[command(flatten)]
        entity: Entity,
        /// Show every config with its value and source, not only those set.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        bootstrap: BootstrapArgs,
    },
    /// Set or remove configs on a topic or broker; changes apply at once.
    Alter {
        #[command(flatten)]
        entity: Entity,
        /// `k1=v1,k2=[a,b]`: configs to set (a list value goes in brackets).
        #[arg(long = "add-config", value_parser = parse_add_config)]
        add_config: Option<ConfigPairs>,
        /// `k1,k2`: configs to remove, so they take their default again.
        #[arg(long = "delete-config", value_delimiter = ',')]
        delete_config: Vec<String>,
        #[command(flatten)]
        bootstrap: BootstrapArgs,
    },
}

pub async fn run(cmd: ConfigCommand) -> Result<()> {
    match cmd {
        ConfigCommand::Describe {
            entity,
            all,
            bootstrap,
        } => describe(&bootstrap, &entity, all).await,
        ConfigCommand::Alter {
            entity,
            add_config,
            delete_config,
            bootstrap,
        } => {
            let add = add_config.map(|c| c.0).unwrap_or_default();
            alter(&bootstrap, &entity, add, delete_config).await
        }
    }
}

async fn describe(bootstrap: &BootstrapArgs, entity: &Entity, all: bool) -> Result<()> {
    let (resource_type, name) = entity.resource()?;
    let mut client = Client::connect(&bootstrap.address).await?;
    let configs = describe_configs(&mut client, resource_type, &name).await?;
    let shown = if all { "All" } else { "Dynamic" };
    println!("{shown} configs for {} are:", entity.label());
    for config in configs {
        // Static broker settings and defaults are not "dynamic configs".
        if !all && !matches!(config.config_source, 1..=3) {
            continue;
        }
        println!("  {}", describe_line(&config));
    }
    Ok(())
}

/// `name=value sensitive=false synonyms={SOURCE:name=value, ...}`, as
/// `kafka-configs.sh --describe` prints a config.
fn describe_line(config: &DescribeConfigsResourceResult) -> String {
    let value = |v: &Option<StrBytes>| v.as_deref().unwrap_or("null").to_string();
    let value = if config.is_sensitive {
        "null".to_string()
    } else {
        value(&config.value)
    };
    let synonyms: Vec<String> = config
        .synonyms
        .iter()
        .map(|s| {
            format!(
                "{}:{}={}",
                config_source_name(s.source),
                s.name,
                s.value.as_deref().unwrap_or("null")
            )
        })
        .collect();
    format!(
        "{}={value} sensitive={} synonyms={{{}}}",
        config.name,
        config.is_sensitive,
        synonyms.join(", ")
    )
}

/// Every config of one resource, with synonyms.
pub async fn describe_configs(
    client: &mut Client,
    resource_type: i8,
    name: &str,
) -> Result<Vec<DescribeConfigsResourceResult>> {
    let resource = DescribeConfigsResource::default()
        .with_resource_type(resource_type)
        .with_resource_name(StrBytes::from_string(name.to_string()))
        .with_configuration_keys(None);
    let response = client
        .send(
            DescribeConfigsRequest::default()
                .with_resources(vec![resource])
                .with_include_synonyms(true),
        )
        .await?;
    let result = response
        .results
        .into_iter()
        .find(|r| r.resource_name.as_str() == name)
        .ok_or_else(|| anyhow!("DescribeConfigs response lacks {name:?}"))?;
    let what = format!("DescribeConfigs for {name:?}");
    client::check_with_message(result.error_code, result.error_message.as_deref(), what)?;
    let mut configs = result.configs;
    configs.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(configs)
}

async fn alter(
    bootstrap: &BootstrapArgs,
    entity: &Entity,
    add: Vec<(String, String)>,
    delete: Vec<String>,
) -> Result<()> {
    if add.is_empty() && delete.is_empty() {
        bail!("nothing to alter: give --add-config and/or --delete-config");
    }
    if let Some((name, _)) = add.iter().find(|(name, _)| delete.contains(name)) {
        bail!("{name} is both added and deleted");
    }
    let (resource_type, name) = entity.resource()?;
    let configs = add
        .into_iter()
        .map(|(key, value)| {
            AlterableConfig::default()
                .with_name(StrBytes::from_string(key))
                .with_config_operation(OP_SET)
                .with_value(Some(StrBytes::from_string(value)))
        })
        .chain(delete.into_iter().map(|key| {
            AlterableConfig::default()
                .with_name(StrBytes::from_string(key))
                .with_config_operation(OP_DELETE)
                .with_value(None)
        }))
        .collect();
    let mut client = Client::connect(&bootstrap.address).await?;
    let response = client
        .send(
            IncrementalAlterConfigsRequest::default().with_resources(vec![
                AlterConfigsResource::default()
                    .with_resource_type(resource_type)
                    .with_resource_name(StrBytes::from_string(name))
                    .with_configs(configs),
            ]),
        )
        .await?;
    let result = response
        .responses
        .first()
        .ok_or_else(|| anyhow!("IncrementalAlterConfigs response is empty"))?;
    let what = format!("altering configs of {}", entity.label());
    client::check_with_message(result.error_code, result.error_message.as_deref(), what)?;
    println!("Completed updating config for {}.", entity.label());
    Ok(())
}

/// The pairs of one `--add-config`.
#[derive(Clone, Debug)]
pub struct ConfigPairs(Vec<(String, String)>);

/// Parses `k1=v1,k2=[a,b]`: commas inside brackets belong to a list value,
/// which is passed on without its brackets.
fn parse_add_config(arg: &str) -> Result<ConfigPairs, String> {
    let mut pairs = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    let mut push = |item: &str| -> Result<(), String> {
        let (key, value) = item
            .split_once('=')
            .filter(|(k, _)| !k.trim().is_empty())
            .ok_or_else(|| format!("expected KEY=VALUE, got {item:?}"))?;
        let value = value.trim();
        let value = value
            .strip_prefix('[')
            .and_then(|v| v.strip_suffix(']'))
            .unwrap_or(value);
        pairs.push((key.trim().to_string(), value.to_string()));
        Ok(())
    };
    for (i, c) in arg.char_indices() {
        match c {
            '[' => depth += 1,
            ']' if depth > 0 => depth -= 1,
            ',' if depth == 0 => {
                push(&arg[start..i])?;
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("unbalanced brackets in {arg:?}"));
    }
    push(&arg[start..])?;
    Ok(ConfigPairs(pairs))
}

/// Kafka's names for DescribeConfigs' `config_source` (`DescribeConfigsResponse.ConfigSource`).
pub fn config_source_name(source: i8) -> &'static str {
    match source {
        1 => "DYNAMIC_TOPIC_CONFIG",
        2 => "DYNAMIC_BROKER_CONFIG",
        3 => "DYNAMIC_DEFAULT_BROKER_CONFIG",
        4 => "STATIC_BROKER_CONFIG",
        5 => "DEFAULT_CONFIG",
        6 => "DYNAMIC_BROKER_LOGGER_CONFIG",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: ConfigCommand,
    }

    fn parse(args: &[&str]) -> Result<ConfigCommand, clap::Error> {
        Cli::try_parse_from(std::iter::once("config").chain(args.iter().copied())).map(|c| c.cmd)
    }

    #[test]
    fn add_config_keeps_bracketed_lists_whole() {
        assert_eq!(
            parse_add_config("retention.ms=1000,cleanup.policy=[compact,delete]")
                .unwrap()
                .0,
            [
                ("retention.ms".into(), "1000".into()),
                ("cleanup.policy".into(), "compact,delete".into())
            ]
        );
        assert!(parse_add_config("a=[b").is_err());
        assert!(parse_add_config("novalue").is_err());
        assert!(parse_add_config("=1").is_err());
    }

    #[test]
    fn entities_need_a_name_or_the_default() {
        assert!(parse(&["describe", "--entity-type", "topics"]).is_err());
        let cmd = parse(&["describe", "--entity-type", "brokers", "--entity-default"]).unwrap();
        let ConfigCommand::Describe { entity, .. } = cmd else {
            panic!("not a describe");
        };
        assert_eq!(entity.resource().unwrap(), (4, String::new()));
        let cmd = parse(&[
            "alter",
            "--entity-type",
            "topics",
            "--entity-name",
            "t",
            "--delete-config",
            "a,b",
        ])
        .unwrap();
        let ConfigCommand::Alter { delete_config, .. } = cmd else {
            panic!("not an alter");
        };
        assert_eq!(delete_config, ["a", "b"]);
    }
}
