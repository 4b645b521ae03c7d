//! `keel group describe`: a group's state and members, and per partition its
//! committed offset, lag, and lag against retention (see `crate::lag`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{ConsumerProtocolAssignment, DescribeConfigsRequest, FetchRequest};
use kafka_protocol::protocol::{Decodable, StrBytes};
use keel_storage::batch::RecordBatchHeader;
use serde::Serialize;

use super::cluster::{Committed, LogRange, TopicPartition};
use crate::client::{self, BootstrapArgs};
use crate::commands::cluster::{Coordinator, CoordinatorKind, Pool, Topic};
use crate::commands::output::{duration, or_dash, partition_list, table};
use crate::lag::{retention_lag, RetentionLag, TimeLeft};

/// DescribeConfigs' resource type for a topic.
const TOPIC_RESOURCE_TYPE: i8 = 2;

/// The newest ConsumerProtocolAssignment version kafka-protocol decodes.
/// Later versions only append fields, so they decode as this one.
const ASSIGNMENT_VERSION_MAX: i16 = 3;

pub async fn run(bootstrap: &BootstrapArgs, group: &str, json: bool) -> Result<()> {
    let mut pool = Pool::new();
    let coordinator = pool
        .coordinator(&bootstrap.address, CoordinatorKind::Group, group)
        .await?;
    let described = pool.describe_group(&coordinator, group).await?;
    let committed = pool.committed_offsets(&coordinator, group).await?;
    if described.is_none() && committed.is_empty() {
        bail!("group {group} does not exist");
    }
    let members: Vec<Member> = described
        .as_ref()
        .map(|g| g.members.iter().map(|m| Member::new(g, m)).collect())
        .unwrap_or_default();

    // Every partition with a committed offset or an owner.
    let mut owners: BTreeMap<TopicPartition, &str> = BTreeMap::new();
    for m in &members {
        for (topic, partitions) in m.assignment.as_ref().into_iter().flatten() {
            for &p in partitions {
                owners.insert((topic.clone(), p), &m.member_id);
            }
        }
    }
    let wanted: BTreeSet<TopicPartition> = committed.keys().chain(owners.keys()).cloned().collect();
    let names: BTreeSet<String> = wanted.iter().map(|(t, _)| t.clone()).collect();
    let topics = pool.topics(&bootstrap.address, &names).await?;
    let ranges = pool.log_ranges(&topics, &wanted).await;
    let retention = retention_configs(&mut pool, &bootstrap.address, &names).await?;

    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut rows = Vec::with_capacity(wanted.len());
    for tp in wanted {
        let committed = committed.get(&tp);
        let range = ranges[&tp].clone();
        let config = retention.get(&tp.0).cloned();
        let mut oldest_unread_timestamp_ms = None;
        if let (Some(c), Ok(range)) = (committed, &range) {
            let first_unread = c.offset.clamp(range.start, range.end);
            if first_unread < range.end {
                oldest_unread_timestamp_ms =
                    batch_max_timestamp(&mut pool, &topics[&tp.0], &tp, first_unread).await;
            }
        }
        let lag = match (committed, &range) {
            (Some(c), Ok(range)) => Some(match &config {
                Some(config) => retention_lag(
                    c.offset,
                    range.start,
                    range.end,
                    oldest_unread_timestamp_ms,
                    config.time_limit_ms(),
                    now_ms,
                ),
                // retention.ms unknown: with no timestamp, only "unknown"
                // or "nothing unread" can come out.
                None => retention_lag(c.offset, range.start, range.end, None, 0, now_ms),
            }),
            _ => None,
        };
        rows.push(Row {
            member_id: owners.get(&tp).map(|m| m.to_string()),
            topic: tp.0,
            partition: tp.1,
            committed,
            range,
            config,
            oldest_unread_timestamp_ms,
            lag,
        });
    }

    if json {
        let out = GroupJson {
            group,
            exists: described.is_some(),
            state: described.as_ref().map(|g| g.group_state.to_string()),
            protocol_type: described.as_ref().map(|g| g.protocol_type.to_string()),
            protocol: described.as_ref().map(|g| g.protocol_data.to_string()),
            coordinator: CoordinatorJson {
                node_id: coordinator.node_id,
                address: &coordinator.address,
            },
            members: &members,
            partitions: rows.iter().map(Row::json).collect(),
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!(
            "{}",
            render(group, described.as_ref(), &coordinator, &members, &rows)
        );
    }
    Ok(())
}

#[derive(Serialize)]
struct Member {
    member_id: String,
    group_instance_id: Option<String>,
    client_id: String,
    client_host: String,
    /// Topic to partitions; None when the group is not Stable (Kafka
    /// describes assignments only then) or the protocol is not `consumer`.
    assignment: Option<BTreeMap<String, Vec<i32>>>,
    /// Why the assignment bytes could not be decoded.
    #[serde(skip_serializing_if = "Option::is_none")]
    assignment_error: Option<String>,
}

impl Member {
    fn new(
        group: &DescribedGroup,
        m: &kafka_protocol::messages::describe_groups_response::DescribedGroupMember,
    ) -> Member {
        let (assignment, assignment_error) = if group.protocol_type.as_str() == "consumer"
            && group.group_state.as_str() == "Stable"
        {
            match decode_assignment(&m.member_assignment) {
                Ok(a) => (Some(a), None),
                Err(e) => (None, Some(format!("{e:#}"))),
            }
        } else {
            (None, None)
        };
        Member {
            member_id: m.member_id.to_string(),
            group_instance_id: m.group_instance_id.as_ref().map(|i| i.to_string()),
            client_id: m.client_id.to_string(),
            client_host: m.client_host.to_string(),
            assignment,
            assignment_error,
        }
    }
}

/// A consumer protocol assignment: a big-endian i16 version, then
/// ConsumerProtocolAssignment at that version. Empty bytes: no assignment.
fn decode_assignment(bytes: &[u8]) -> Result<BTreeMap<String, Vec<i32>>> {
    let mut assignment = BTreeMap::new();
    if bytes.is_empty() {
        return Ok(assignment);
    }
    let mut buf = bytes;
    let Some((version, rest)) = buf.split_first_chunk::<2>() else {
        bail!("a {}-byte assignment has no version", bytes.len());
    };
    let version = i16::from_be_bytes(*version);
    if version < 0 {
        bail!("assignment version {version}");
    }
    buf = rest;
    let decoded = ConsumerProtocolAssignment::decode(&mut buf, version.min(ASSIGNMENT_VERSION_MAX))
        .with_context(|| format!("decoding a v{version} consumer protocol assignment"))?;
    for tp in decoded.assigned_partitions {
        let partitions: &mut Vec<i32> = assignment.entry(tp.topic.to_string()).or_default();
        partitions.extend(tp.partitions);
        partitions.sort_unstable();
    }
    Ok(assignment)
}

/// What `retention.ms`, `retention.bytes` and `cleanup.policy` say about
/// deleting a topic's records.
#[derive(Clone, Debug, PartialEq)]
struct RetentionConfig {
    retention_ms: i64,
    retention_bytes: i64,
    /// `cleanup.policy` includes `delete`; a compact-only topic deletes
    /// records by key, never by age.
    deletes: bool,
}

impl RetentionConfig {
    /// `retention.ms` where age deletes records, else -1.
    fn time_limit_ms(&self) -> i64 {
        if self.deletes {
            self.retention_ms
        } else {
            -1
        }
    }
}

/// The retention configs of each topic that has them; a topic the broker
/// could not describe (deleted meanwhile) or without a numeric
/// `retention.ms` is left out.
async fn retention_configs(
    pool: &mut Pool,
    bootstrap: &str,
    topics: &BTreeSet<String>,
) -> Result<BTreeMap<String, RetentionConfig>> {
    let mut configs = BTreeMap::new();
    if topics.is_empty() {
        return Ok(configs);
    }
    let keys = ["retention.ms", "retention.bytes", "cleanup.policy"];
    let resources = topics
        .iter()
        .map(|t| {
            DescribeConfigsResource::default()
                .with_resource_type(TOPIC_RESOURCE_TYPE)
                .with_resource_name(StrBytes::from_string(t.clone()))
                .with_configuration_keys(Some(
                    keys.iter().map(|k| StrBytes::from_static_str(k)).collect(),
                ))
        })
        .collect();
    let request = DescribeConfigsRequest::default().with_resources(resources);
    let response = pool.get(bootstrap).await?.send(request).await?;
    for result in response.results {
        if result.error_code != 0 {
            continue;
        }
        let values: BTreeMap<&str, &str> = result
            .configs
            .iter()
            .filter_map(|c| Some((c.name.as_str(), &**c.value.as_ref()?)))
            .collect();
        let number = |key: &str| -> Result<i64> {
            let value = values
                .get(key)
                .ok_or_else(|| anyhow!("topic {} has no {key}", result.resource_name))?;
            value
                .parse()
                .with_context(|| format!("{key}={value} of topic {}", result.resource_name))
        };
        // Without retention.ms the time left shows as unknown.
        let Ok(retention_ms) = number("retention.ms") else {
            continue;
        };
        let config = RetentionConfig {
            retention_ms,
            retention_bytes: number("retention.bytes").unwrap_or(-1),
            deletes: values
                .get("cleanup.policy")
                .is_none_or(|p| p.split(',').any(|p| p.trim() == "delete")),
        };
        configs.insert(result.resource_name.to_string(), config);
    }
    Ok(configs)
}

/// The max timestamp of the batch holding `offset`: no older than the
/// record at `offset`, and what retention compares, as the newest timestamp
/// of a segment, with `retention.ms`. None if it cannot be fetched.
async fn batch_max_timestamp(
    pool: &mut Pool,
    topic: &Topic,
    (name, partition): &TopicPartition,
    offset: i64,
) -> Option<i64> {
    let leader = topic.partitions.get(partition)?.as_ref().ok()?;
    // One byte: the leader still returns the whole first batch (KIP-74).
    let request = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(client::topic_name(name))
            .with_topic_id(topic.id)
            .with_partitions(vec![FetchPartition::default()
                .with_partition(*partition)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1)])]);
    let response = pool.get(leader).await.ok()?.send(request).await.ok()?;
    if response.error_code != 0 {
        return None;
    }
    let data = response
        .responses
        .into_iter()
        .filter(|t| t.topic.as_str() == name || (!topic.id.is_nil() && t.topic_id == topic.id))
        .flat_map(|t| t.partitions)
        .find(|p| p.partition_index == *partition)?;
    if data.error_code != 0 {
        return None;
    }
    first_batch_max_timestamp(&data.records?)
}

/// maxTimestamp of the first batch in fetched records (v2 batches only).
fn first_batch_max_timestamp(records: &[u8]) -> Option<i64> {
    let header = RecordBatchHeader::parse(records).ok()?;
    (header.magic() == 2).then(|| header.max_timestamp())
}

/// One partition of the group.
struct Row<'a> {
    topic: String,
    partition: i32,
    member_id: Option<String>,
    committed: Option<&'a Committed>,
    range: Result<LogRange, String>,
    config: Option<RetentionConfig>,
    oldest_unread_timestamp_ms: Option<i64>,
    lag: Option<RetentionLag>,
}

#[derive(Serialize)]
struct GroupJson<'a> {
    group: &'a str,
    /// False when only committed offsets remain (a group without members
    /// that the coordinator does not describe).
    exists: bool,
    state: Option<String>,
    protocol_type: Option<String>,
    protocol: Option<String>,
    coordinator: CoordinatorJson<'a>,
    members: &'a [Member],
    partitions: Vec<PartitionJson>,
}

#[derive(Serialize)]
struct CoordinatorJson<'a> {
    node_id: i32,
    address: &'a str,
}

#[derive(Serialize)]
struct PartitionJson {
    topic: String,
    partition: i32,
    member_id: Option<String>,
    committed_offset: Option<i64>,
    committed_metadata: Option<String>,
    log_start_offset: Option<i64>,
    log_end_offset: Option<i64>,
    /// Why the log offsets are missing.
    log_offsets_error: Option<String>,
    lag: Option<i64>,
    lost: Option<i64>,
    unread_retained: Option<i64>,
    headroom: Option<i64>,
    beyond_end: Option<i64>,
    retention_ms: Option<i64>,
    retention_bytes: Option<i64>,
    oldest_unread_timestamp_ms: Option<i64>,
    /// `nothing_unread`, `unlimited`, `unknown` or `at_least`.
    retention_time_left: Option<&'static str>,
    /// With `at_least`: the lower bound in milliseconds.
    retention_time_left_ms: Option<i64>,
}

impl Row<'_> {
    fn json(&self) -> PartitionJson {
        let range = self.range.as_ref().ok();
        let (time_left, time_left_ms) = match self.lag.map(|l| l.time_left) {
            None => (None, None),
            Some(TimeLeft::NothingUnread) => (Some("nothing_unread"), None),
            Some(TimeLeft::Unlimited) => (Some("unlimited"), None),
            Some(TimeLeft::Unknown) => (Some("unknown"), None),
            Some(TimeLeft::AtLeastMs(ms)) => (Some("at_least"), Some(ms)),
        };
        PartitionJson {
            topic: self.topic.clone(),
            partition: self.partition,
            member_id: self.member_id.clone(),
            committed_offset: self.committed.map(|c| c.offset),
            committed_metadata: self.committed.and_then(|c| c.metadata.clone()),
            log_start_offset: range.map(|r| r.start),
            log_end_offset: range.map(|r| r.end),
            log_offsets_error: self.range.as_ref().err().cloned(),
            lag: self.lag.map(|l| l.lag),
            lost: self.lag.map(|l| l.lost),
            unread_retained: self.lag.map(|l| l.unread_retained),
            headroom: self.lag.map(|l| l.headroom),
            beyond_end: self.lag.map(|l| l.beyond_end),
            retention_ms: self.config.as_ref().map(|c| c.time_limit_ms()),
            retention_bytes: self.config.as_ref().map(|c| c.retention_bytes),
            oldest_unread_timestamp_ms: self.oldest_unread_timestamp_ms,
            retention_time_left: time_left,
            retention_time_left_ms: time_left_ms,
        }
    }

    fn cells(&self) -> Vec<String> {
        let dash = || "-".to_string();
        let show = |v: Option<i64>| v.map_or_else(dash, |v| v.to_string());
        let range = self.range.as_ref().ok();
        vec![
            self.topic.clone(),
            self.partition.to_string(),
            show(self.committed.map(|c| c.offset)),
            show(range.map(|r| r.start)),
            show(range.map(|r| r.end)),
            show(self.lag.map(|l| l.lag)),
            show(self.lag.map(|l| l.lost)),
            show(self.lag.map(|l| l.headroom)),
            self.lag.map_or_else(dash, |l| time_left(l.time_left)),
            self.member_id.clone().unwrap_or_else(dash),
        ]
    }
}

fn render(
    group: &str,
    described: Option<&DescribedGroup>,
    coordinator: &Coordinator,
    members: &[Member],
    rows: &[Row],
) -> String {
    let mut out = String::new();
    let field = |name: &str, value: String| format!("{name:<15}{value}\n");
    out += &field("GROUP", group.to_string());
    match described {
        Some(g) => {
            out += &field("STATE", g.group_state.to_string());
            out += &field("PROTOCOL-TYPE", or_dash(g.protocol_type.to_string()));
            out += &field("PROTOCOL", or_dash(g.protocol_data.to_string()));
        }
        None => {
            let state = "- (no such group: only committed offsets remain)";
            out += &field("STATE", state.to_string());
        }
    }
    out += &field(
        "COORDINATOR",
        format!("{} ({})", coordinator.node_id, coordinator.address),
    );
    out += &field("MEMBERS", members.len().to_string());
    if !members.is_empty() {
        let rows = members
            .iter()
            .map(|m| {
                let assignment = match (&m.assignment, &m.assignment_error) {
                    (Some(a), _) => or_dash(partition_list(a)),
                    (None, Some(e)) => format!("({e})"),
                    (None, None) => "-".to_string(),
                };
                vec![
                    m.member_id.clone(),
                    m.group_instance_id
                        .clone()
                        .unwrap_or_else(|| "-".to_string()),
                    m.client_id.clone(),
                    m.client_host.clone(),
                    assignment,
                ]
            })
            .collect();
        let headers = [
            "MEMBER-ID",
            "INSTANCE-ID",
            "CLIENT-ID",
            "HOST",
            "ASSIGNMENT",
        ];
        out += "\n";
        out += &table(&headers, rows);
    }
    if rows.is_empty() {
        out += "\nNo committed offsets.\n";
        return out;
    }
    let headers = [
        "TOPIC",
        "PARTITION",
        "CURRENT-OFFSET",
        "LOG-START-OFFSET",
        "LOG-END-OFFSET",
        "LAG",
        "LOST",
        "HEADROOM",
        "RETENTION-LEFT",
        "MEMBER-ID",
    ];
    out += "\n";
    out += &table(&headers, rows.iter().map(Row::cells).collect());

    let mut notes = Vec::new();
    let mut size_limited = BTreeSet::new();
    for row in rows {
        let tp = format!("{}-{}", row.topic, row.partition);
        if let Err(e) = &row.range {
            notes.push(format!("{tp}: log offsets unavailable: {e}"));
        }
        let (Some(lag), Some(c), Ok(range)) = (row.lag, row.committed, &row.range) else {
            continue;
        };
        if lag.lost > 0 {
            notes.push(format!(
                "RECORDS LOST: {} records were deleted by retention before this group read them \
                 ({tp}: committed offset {}, log start offset {}).",
                lag.lost, c.offset, range.start
            ));
        }
        if lag.beyond_end > 0 {
            notes.push(format!(
                "{tp}: the committed offset {} is {} past the log end offset {} \
                 (was the topic recreated or truncated?).",
                c.offset, lag.beyond_end, range.end
            ));
        }
        if let Some(config) = &row.config {
            if config.deletes && config.retention_bytes >= 0 && lag.unread_retained > 0 {
                size_limited.insert((row.topic.as_str(), config.retention_bytes));
            }
        }
    }
    for (topic, bytes) in size_limited {
        notes.push(format!(
            "{topic}: retention.bytes={bytes} may delete unread records sooner than RETENTION-LEFT says."
        ));
    }
    if !notes.is_empty() {
        out += "\n";
        for note in notes {
            out += &note;
            out += "\n";
        }
    }
    out += "\nLAG: records not yet read (log end - committed), LOST included.\n";
    out += "HEADROOM: records read but not yet deleted by retention (committed - log start).\n";
    out += "RETENTION-LEFT: time until retention may delete the oldest unread record. A lower \
            bound: retention deletes a whole segment once its newest record is older than retention.ms.\n";
    out
}

fn time_left(t: TimeLeft) -> String {
    match t {
        TimeLeft::NothingUnread => "-".to_string(),
        TimeLeft::Unlimited => "no time limit".to_string(),
        TimeLeft::Unknown => "unknown".to_string(),
        TimeLeft::AtLeastMs(ms) if ms < 1000 => "due now".to_string(),
        TimeLeft::AtLeastMs(ms) => format!(">= {}", duration(ms)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as Assigned;
    use kafka_protocol::protocol::Encodable;

    fn assignment_bytes(version: i16, assignment: &ConsumerProtocolAssignment) -> Vec<u8> {
        let mut buf = bytes::BytesMut::new();
        buf.extend_from_slice(&version.to_be_bytes());
        assignment
            .encode(&mut buf, version.min(ASSIGNMENT_VERSION_MAX))
            .unwrap();
        buf.to_vec()
    }

    #[test]
    fn assignments_decode_by_topic() {
        let assignment = ConsumerProtocolAssignment::default().with_assigned_partitions(vec![
            Assigned::default()
                .with_topic(client::topic_name("t"))
                .with_partitions(vec![2, 0]),
            Assigned::default()
                .with_topic(client::topic_name("a"))
                .with_partitions(vec![1]),
        ]);
        for version in [0, 1, 3] {
            let decoded = decode_assignment(&assignment_bytes(version, &assignment)).unwrap();
            let expected =
                BTreeMap::from([("a".to_string(), vec![1]), ("t".to_string(), vec![0, 2])]);
            assert_eq!(decoded, expected, "v{version}");
        }
        // A newer version with appended fields decodes as the newest known.
        let mut newer = assignment_bytes(3, &assignment);
        newer[..2].copy_from_slice(&7i16.to_be_bytes());
        newer.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(decode_assignment(&newer).unwrap().len(), 2);
    }

    #[test]
    fn empty_and_bad_assignments() {
        assert!(decode_assignment(&[]).unwrap().is_empty());
        assert!(decode_assignment(&[0]).is_err());
        assert!(decode_assignment(&[0xff, 0xff, 0, 0]).is_err());
        // A topic count promising more than there is.
        assert!(decode_assignment(&[0, 0, 0, 0, 0, 9]).is_err());
    }

    #[test]
    fn first_batch_timestamp_is_its_max_timestamp() {
        let mut batch = vec![0u8; 61];
        batch[16] = 2; // magic
        batch[27..35].copy_from_slice(&1_000i64.to_be_bytes());
        batch[35..43].copy_from_slice(&2_000i64.to_be_bytes());
        assert_eq!(first_batch_max_timestamp(&batch), Some(2_000));
        batch[16] = 1;
        assert_eq!(first_batch_max_timestamp(&batch), None);
        assert_eq!(first_batch_max_timestamp(&batch[..40]), None);
    }

    #[test]
    fn compact_only_topics_have_no_time_limit() {
        let mut config = RetentionConfig {
            retention_ms: 5000,
            retention_bytes: -1,
            deletes: true,
        };
        assert_eq!(config.time_limit_ms(), 5000);
        config.deletes = false;
        assert_eq!(config.time_limit_ms(), -1);
    }

    #[test]
    fn times_left_show_two_units() {
        assert_eq!(time_left(TimeLeft::AtLeastMs(999)), "due now");
        assert_eq!(time_left(TimeLeft::AtLeastMs(61_000)), ">= 1m 01s");
        assert_eq!(time_left(TimeLeft::Unlimited), "no time limit");
        assert_eq!(time_left(TimeLeft::NothingUnread), "-");
    }
}
