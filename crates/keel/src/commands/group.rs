//! `keel group`: list, describe and delete consumer groups and reset their
//! committed offsets, by asking each group's coordinator.

use anyhow::{anyhow, bail, Result};
use kafka_protocol::messages::{DeleteGroupsRequest, GroupId, ListGroupsRequest};
use kafka_protocol::protocol::StrBytes;
use serde::Serialize;

use super::cluster::{CoordinatorKind, Pool};
use super::output::{or_dash, table};
use crate::client::{self, BootstrapArgs};

mod cluster;
mod describe;
mod reset;

/// Kafka's group states, as ListGroups and DescribeGroups spell them: the
/// classic protocol's, then those only KIP-848 groups have.
const GROUP_STATES: &[&str] = &[
    "Empty",
    "PreparingRebalance",
    "CompletingRebalance",
    "Stable",
    "Dead",
    "Assigning",
    "Reconciling",
];

#[derive(clap::Subcommand, Debug)]
pub enum GroupCommand {
    /// List the groups of every broker, sorted by name.
    List {
        /// Only groups in this state (Empty, Stable, PreparingRebalance,
        /// CompletingRebalance, ...); repeatable.
        #[arg(long = "state", value_name = "STATE", value_parser = parse_state)]
        states: Vec<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        bootstrap: BootstrapArgs,
    },
    /// Show a group's members and, per partition, its committed offset, lag
    /// and lag against retention.
    Describe {
        /// The group's id.
        group: String,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        bootstrap: BootstrapArgs,
    },
    /// Delete groups that have no members, with their committed offsets.
    Delete {
        /// The ids of the groups to delete.
        #[arg(required = true)]
        groups: Vec<String>,
        #[command(flatten)]
        bootstrap: BootstrapArgs,
    },
    /// Move a group's committed offsets: print the plan, and commit it with
    /// `--execute` once the group has no members.
    ResetOffsets(reset::ResetArgs),
}

pub async fn run(cmd: GroupCommand) -> Result<()> {
    match cmd {
        GroupCommand::List {
            states,
            json,
            bootstrap,
        } => list(&bootstrap, &states, json).await,
        GroupCommand::Describe {
            group,
            json,
            bootstrap,
        } => describe::run(&bootstrap, &group, json).await,
        GroupCommand::Delete { groups, bootstrap } => delete(&bootstrap, &groups).await,
        GroupCommand::ResetOffsets(args) => reset::run(args).await,
    }
}

#[derive(Serialize, Debug, PartialEq)]
struct ListedGroup {
    group: String,
    /// `classic` or `consumer` (KIP-848); empty before ListGroups v5.
    #[serde(rename = "type")]
    group_type: String,
    protocol_type: String,
    state: String,
}

/// ListGroups to every broker: each lists only the groups it coordinates.
async fn list(bootstrap: &BootstrapArgs, states: &[String], json: bool) -> Result<()> {
    let mut pool = Pool::new();
    let metadata = pool
        .get(&bootstrap.address)
        .await?
        .metadata(Some(&[]))
        .await?;
    let mut groups = Vec::new();
    for broker in &metadata.brokers {
        let address = client::broker_address(&metadata, *broker.node_id)?;
        let request = ListGroupsRequest::default().with_states_filter(
            states
                .iter()
                .map(|s| StrBytes::from_string(s.clone()))
                .collect(),
        );
        let response = pool
            .send_retrying(&address, request, |r| r.error_code)
            .await?;
        client::check(response.error_code, format!("ListGroups from {address}"))?;
        groups.extend(response.groups.into_iter().map(|g| ListedGroup {
            group: g.group_id.to_string(),
            group_type: g.group_type.to_string(),
            protocol_type: g.protocol_type.to_string(),
            state: g.group_state.to_string(),
        }));
    }
    groups.sort_by(|a, b| a.group.cmp(&b.group));
    if json {
        println!("{}", serde_json::to_string_pretty(&groups)?);
        return Ok(());
    }
    let rows = groups
        .into_iter()
        .map(|g| {
            vec![
                g.group,
                or_dash(g.group_type),
                or_dash(g.protocol_type),
                g.state,
            ]
        })
        .collect();
    print!(
        "{}",
        table(&["GROUP", "TYPE", "PROTOCOL-TYPE", "STATE"], rows)
    );
    Ok(())
}

/// DeleteGroups, one coordinator at a time; fails if any group was not deleted.
async fn delete(bootstrap: &BootstrapArgs, groups: &[String]) -> Result<()> {
    let mut pool = Pool::new();
    if let [group] = groups {
        delete_one(&mut pool, &bootstrap.address, group).await?;
        println!("Deleted group {group}.");
        return Ok(());
    }
    let mut failures = Vec::new();
    for group in groups {
        match delete_one(&mut pool, &bootstrap.address, group).await {
            Ok(()) => println!("Deleted group {group}."),
            Err(e) => {
                eprintln!("{e:#}");
                failures.push(group.as_str());
            }
        }
    }
    match failures.as_slice() {
        [] => Ok(()),
        many => bail!(
            "{} of {} groups were not deleted: {}",
            many.len(),
            groups.len(),
            many.join(", ")
        ),
    }
}

async fn delete_one(pool: &mut Pool, bootstrap: &str, group: &str) -> Result<()> {
    let coordinator = pool
        .coordinator(bootstrap, CoordinatorKind::Group, group)
        .await?;
    let request = DeleteGroupsRequest::default()
        .with_groups_names(vec![GroupId(StrBytes::from_string(group.to_string()))]);
    let response = pool
        .send_retrying(&coordinator.address, request, |response| {
            response
                .results
                .iter()
                .find(|r| r.group_id.as_str() == group)
                .map_or(0, |r| r.error_code)
        })
        .await?;
    let result = response
        .results
        .into_iter()
        .find(|r| r.group_id.as_str() == group)
        .ok_or_else(|| anyhow!("DeleteGroups response lacks group {group}"))?;
    delete_error(group, result.error_code)
}

/// DeleteGroups' error for one group, in words.
fn delete_error(group: &str, code: i16) -> Result<()> {
    match client::error_name(code).as_str() {
        "NONE" => Ok(()),
        "NON_EMPTY_GROUP" => bail!(
            "cannot delete group {group}: NON_EMPTY_GROUP: it still has members; stop its consumers first"
        ),
        "GROUP_ID_NOT_FOUND" => {
            bail!("cannot delete group {group}: GROUP_ID_NOT_FOUND: there is no such group")
        }
        name => bail!("cannot delete group {group}: {name}"),
    }
}

/// `--state`: a known state in Kafka's spelling whatever its case, or any
/// other word as given (a newer broker may know states keel does not).
fn parse_state(arg: &str) -> Result<String, String> {
    if arg.is_empty() {
        return Err("expected a group state such as Stable or Empty".to_string());
    }
    Ok(GROUP_STATES
        .iter()
        .find(|s| s.eq_ignore_ascii_case(arg))
        .map_or_else(|| arg.to_string(), |s| s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: GroupCommand,
    }

    pub(super) fn parse(args: &[&str]) -> Result<GroupCommand, clap::Error> {
        Cli::try_parse_from(std::iter::once("group").chain(args.iter().copied())).map(|c| c.cmd)
    }

    #[test]
    fn states_take_kafkas_spelling() {
        assert_eq!(parse_state("stable").unwrap(), "Stable");
        assert_eq!(
            parse_state("PREPARINGREBALANCE").unwrap(),
            "PreparingRebalance"
        );
        assert_eq!(parse_state("Novel").unwrap(), "Novel");
        assert!(parse_state("").is_err());
    }

    #[test]
    fn list_takes_repeated_states() {
        let cmd = parse(&["list", "--state", "empty", "--state", "Stable"]).unwrap();
        let GroupCommand::List {
            states,
            json,
            bootstrap,
        } = cmd
        else {
            panic!("not a list: {cmd:?}");
        };
        assert_eq!(states, ["Empty", "Stable"]);
        assert!(!json);
        assert_eq!(bootstrap.address, client::DEFAULT_BOOTSTRAP_SERVER);
    }

    #[test]
    fn subcommands_parse() {
        assert!(parse(&["describe", "g", "--json", "--bootstrap-server", "h:1"]).is_ok());
        assert!(parse(&["describe"]).is_err());
        let Ok(GroupCommand::Delete { groups, .. }) = parse(&["delete", "a", "b"]) else {
            panic!("delete a b");
        };
        assert_eq!(groups, ["a", "b"]);
        assert!(parse(&["delete"]).is_err());
    }

    #[test]
    fn delete_errors_say_what_to_do() {
        assert!(delete_error("g", 0).is_ok());
        let non_empty = delete_error("g", 68).unwrap_err().to_string();
        assert!(non_empty.contains("NON_EMPTY_GROUP"), "{non_empty}");
        assert!(non_empty.contains("stop its consumers"), "{non_empty}");
        let missing = delete_error("g", 69).unwrap_err().to_string();
        assert!(missing.contains("GROUP_ID_NOT_FOUND"), "{missing}");
        let other = delete_error("g", 30).unwrap_err().to_string();
        assert!(other.contains("GROUP_AUTHORIZATION_FAILED"), "{other}");
    }
}
