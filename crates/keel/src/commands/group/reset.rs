//! `keel group reset-offsets`: Kafka's `kafka-consumer-groups --reset-offsets`
//! for one topic. A dry run prints the plan; `--execute` commits it, which
//! the coordinator accepts only while the group has no members.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{anyhow, bail, ensure, Result};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::OffsetCommitRequest;
use kafka_protocol::protocol::StrBytes;
use serde::Serialize;

use super::cluster::{self, LogRange, TopicPartition};
use crate::client::{self, BootstrapArgs};
use crate::commands::cluster::{Coordinator, CoordinatorKind, Pool};
use crate::commands::output::table;

#[derive(clap::Args, Debug)]
#[command(group(
    clap::ArgGroup::new("target")
        .required(true)
        .args(["to_earliest", "to_latest", "to_datetime", "shift_by", "to_offset"]),
))]
pub struct ResetArgs {
    /// The group's id.
    group: String,
    /// The topic whose offsets to reset.
    #[arg(long)]
    topic: String,
    /// Only these partitions (repeatable or comma-separated); all if absent.
    #[arg(long = "partition", value_name = "P", value_delimiter = ',',
          value_parser = clap::value_parser!(i32).range(0..))]
    partitions: Vec<i32>,
    /// To each partition's log start offset.
    #[arg(long)]
    to_earliest: bool,
    /// To each partition's log end offset.
    #[arg(long)]
    to_latest: bool,
    /// To the first offset whose timestamp is at or after this time, such as
    /// 2026-11-22T10:00:00Z or 2026-11-22T11:00:00.000+01:00 (the log end
    /// offset where there is none).
    #[arg(long, value_name = "DATETIME", value_parser = parse_datetime)]
    to_datetime: Option<i64>,
    /// Move the committed offset by N (negative: back), kept within the log.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    shift_by: Option<i64>,
    /// To this offset, kept within the log.
    #[arg(long, value_name = "OFFSET", value_parser = clap::value_parser!(i64).range(0..))]
    to_offset: Option<i64>,
    /// Commit the new offsets; without it, only print them.
    #[arg(long, conflicts_with = "dry_run")]
    execute: bool,
    /// Only print the new offsets (the default).
    #[arg(long)]
    dry_run: bool,
    /// Print the plan as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    bootstrap: BootstrapArgs,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Target {
    Earliest,
    Latest,
    /// Milliseconds since the Unix epoch.
    Datetime(i64),
    ShiftBy(i64),
    Offset(i64),
}

impl ResetArgs {
    fn target(&self) -> Target {
        if self.to_earliest {
            Target::Earliest
        } else if self.to_latest {
            Target::Latest
        } else if let Some(t) = self.to_datetime {
            Target::Datetime(t)
        } else if let Some(n) = self.shift_by {
            Target::ShiftBy(n)
        } else {
            Target::Offset(self.to_offset.expect("clap requires one target"))
        }
    }
}

/// What is known of a partition when its new offset is chosen.
struct Partition {
    committed: Option<i64>,
    range: LogRange,
    /// ListOffsets' answer for `--to-datetime`: -1 when no record is that new.
    offset_for_time: Option<i64>,
}

/// The new offset for one partition, as Kafka's tool chooses it: absolute
/// targets and shifts are kept within [log start, log end].
fn new_offset(target: Target, p: &Partition) -> Result<i64, String> {
    let LogRange { start, end } = p.range;
    Ok(match target {
        Target::Earliest => start,
        Target::Latest => end,
        Target::Datetime(_) => match p.offset_for_time {
            Some(offset) if offset >= 0 => offset,
            Some(_) => end,
            None => return Err("no offset for the time".to_string()),
        },
        Target::ShiftBy(n) => {
            let committed = p
                .committed
                .ok_or("no committed offset to shift; use another reset option")?;
            committed.saturating_add(n).clamp(start, end.max(start))
        }
        Target::Offset(offset) => offset.clamp(start, end.max(start)),
    })
}

#[derive(Serialize)]
struct Planned {
    topic: String,
    partition: i32,
    current_offset: Option<i64>,
    new_offset: i64,
}

pub async fn run(args: ResetArgs) -> Result<()> {
    let target = args.target();
    let (group, topic) = (args.group.as_str(), args.topic.as_str());
    let mut pool = Pool::new();
    let bootstrap = args.bootstrap.address.as_str();
    let coordinator = pool
        .coordinator(bootstrap, CoordinatorKind::Group, group)
        .await?;
    let described = pool.describe_group(&coordinator, group).await?;
    let state = described.as_ref().map(|g| g.group_state.to_string());
    // Kafka's condition: no member may be consuming while offsets move. A
    // group that does not exist yet is created by the commit.
    let inactive = state.as_deref().is_none_or(|s| s == "Empty");
    if args.execute && !inactive {
        bail!(
            "cannot reset the offsets of group {group}: its state is {}; offsets can only be \
             reset while the group has no members (Empty). Stop its consumers and retry.",
            state.as_deref().unwrap_or("-")
        );
    }

    let topics = pool
        .topics(bootstrap, &BTreeSet::from([topic.to_string()]))
        .await?;
    let t = &topics[topic];
    if let Some(error) = &t.error {
        bail!("topic {topic}: {error}");
    }
    let partitions: Vec<i32> = if args.partitions.is_empty() {
        t.partitions.keys().copied().collect()
    } else {
        for p in &args.partitions {
            ensure!(
                t.partitions.contains_key(p),
                "topic {topic} has {} partitions; there is no partition {p}",
                t.partitions.len()
            );
        }
        args.partitions
            .iter()
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    let wanted: BTreeSet<TopicPartition> =
        partitions.iter().map(|&p| (topic.to_string(), p)).collect();
    let committed = pool.committed_offsets(&coordinator, group).await?;
    let ranges = pool.log_ranges(&topics, &wanted).await;
    let mut for_time = match target {
        Target::Datetime(ms) => pool.list_offsets(&topics, &wanted, ms).await,
        _ => BTreeMap::new(),
    };

    let mut plan = Vec::with_capacity(wanted.len());
    for tp in &wanted {
        let what = format!("{topic}-{}", tp.1);
        let range = ranges[tp]
            .clone()
            .map_err(|e| anyhow!("{what}: listing its offsets: {e}"))?;
        let offset_for_time = match for_time.remove(tp) {
            Some(offset) => {
                Some(offset.map_err(|e| anyhow!("{what}: listing the offset for the time: {e}"))?)
            }
            None => None,
        };
        let partition = Partition {
            committed: committed.get(tp).map(|c| c.offset),
            range,
            offset_for_time,
        };
        let new = new_offset(target, &partition).map_err(|e| anyhow!("{what}: {e}"))?;
        plan.push(Planned {
            topic: topic.to_string(),
            partition: tp.1,
            current_offset: partition.committed,
            new_offset: new,
        });
    }

    if args.json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        let rows = plan
            .iter()
            .map(|p| {
                vec![
                    group.to_string(),
                    p.topic.clone(),
                    p.partition.to_string(),
                    p.current_offset
                        .map_or_else(|| "-".to_string(), |o| o.to_string()),
                    p.new_offset.to_string(),
                ]
            })
            .collect();
        let headers = [
            "GROUP",
            "TOPIC",
            "PARTITION",
            "CURRENT-OFFSET",
            "NEW-OFFSET",
        ];
        print!("{}", table(&headers, rows));
    }
    if !args.execute {
        // To stderr, so `--json` output stays parseable.
        eprintln!("Dry run: nothing was committed. Add --execute to commit these offsets.");
        if !inactive {
            eprintln!(
                "Note: group {group} is {}; --execute is refused until it has no members.",
                state.as_deref().unwrap_or("-")
            );
        }
        return Ok(());
    }
    commit(&mut pool, &coordinator, group, &plan).await?;
    eprintln!(
        "Committed {} offset{} for group {group}.",
        plan.len(),
        if plan.len() == 1 { "" } else { "s" }
    );
    Ok(())
}

/// A "simple" commit, as from a consumer outside the group protocol:
/// generation -1 and no member id, which the coordinator accepts only while
/// the group has no members.
async fn commit(
    pool: &mut Pool,
    coordinator: &Coordinator,
    group: &str,
    plan: &[Planned],
) -> Result<()> {
    let mut by_topic: BTreeMap<&str, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
    for p in plan {
        by_topic.entry(&p.topic).or_default().push(
            OffsetCommitRequestPartition::default()
                .with_partition_index(p.partition)
                .with_committed_offset(p.new_offset)
                .with_committed_metadata(Some(StrBytes::from_static_str(""))),
        );
    }
    let topics = by_topic
        .into_iter()
        .map(|(topic, partitions)| {
            OffsetCommitRequestTopic::default()
                .with_name(client::topic_name(topic))
                .with_partitions(partitions)
        })
        .collect();
    let request = OffsetCommitRequest::default()
        .with_group_id(cluster::group_id(group))
        .with_generation_id_or_member_epoch(-1)
        .with_member_id(StrBytes::from_static_str(""))
        .with_topics(topics);
    let response = pool
        .send_retrying(&coordinator.address, request, |response| {
            response
                .topics
                .iter()
                .flat_map(|t| &t.partitions)
                .map(|p| p.error_code)
                .find(|&c| c != 0)
                .unwrap_or(0)
        })
        .await?;
    let mut errors = Vec::new();
    for t in &response.topics {
        for p in &t.partitions {
            if p.error_code != 0 {
                errors.push(format!(
                    "{}-{}: {}",
                    t.name.as_str(),
                    p.partition_index,
                    client::error_name(p.error_code)
                ));
            }
        }
    }
    if !errors.is_empty() {
        let hint = if errors.iter().any(|e| e.ends_with("UNKNOWN_MEMBER_ID")) {
            " (the group gained members: stop its consumers and retry)"
        } else {
            ""
        };
        bail!(
            "committing the offsets of group {group} failed{hint}: {}",
            errors.join(", ")
        );
    }
    Ok(())
}

/// `--to-datetime`: `YYYY-MM-DDTHH:MM:SS[.fraction]` and a zone, `Z` or
/// `±HH:MM` (or `±HHMM`), as milliseconds since the Unix epoch.
fn parse_datetime(arg: &str) -> Result<i64, String> {
    let bad = |why: &str| {
        format!(
            "{why}: expected YYYY-MM-DDTHH:MM:SS[.sss] and a time zone, \
             such as 2026-11-22T10:00:00Z or 2026-11-22T11:00:00+01:00; got {arg:?}"
        )
    };
    let (date, time) = arg
        .split_once(['T', 't'])
        .ok_or_else(|| bad("no T between date and time"))?;
    let date: Vec<&str> = date.split('-').collect();
    let [year, month, day] = date[..] else {
        return Err(bad("bad date"));
    };
    let (year, month, day) = (
        number(year, 4).ok_or_else(|| bad("bad year"))?,
        number(month, 2).ok_or_else(|| bad("bad month"))?,
        number(day, 2).ok_or_else(|| bad("bad day"))?,
    );
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err(bad("no such date"));
    }
    let zone_at = time
        .find(['Z', 'z', '+', '-'])
        .ok_or_else(|| bad("no time zone (add Z for UTC)"))?;
    let (clock, zone) = time.split_at(zone_at);
    let (hms, fraction) = match clock.split_once('.') {
        Some((hms, fraction)) => (hms, Some(fraction)),
        None => (clock, None),
    };
    let hms: Vec<&str> = hms.split(':').collect();
    let [h, m, s] = hms[..] else {
        return Err(bad("bad time"));
    };
    let (h, m, s) = (
        number(h, 2).ok_or_else(|| bad("bad hour"))?,
        number(m, 2).ok_or_else(|| bad("bad minute"))?,
        number(s, 2).ok_or_else(|| bad("bad second"))?,
    );
    if h > 23 || m > 59 || s > 59 {
        return Err(bad("no such time"));
    }
    let millis = match fraction {
        None => 0,
        Some(f) if (1..=9).contains(&f.len()) && f.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{f:0<3}")[..3]
                .parse::<i64>()
                .expect("three digits")
        }
        Some(_) => return Err(bad("bad fraction of a second")),
    };
    let offset_minutes = match zone {
        "Z" | "z" => 0,
        _ => {
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            let rest = &zone[1..];
            let (zh, zm) = match (rest.len(), rest.as_bytes().get(2)) {
                _ if !rest.is_ascii() => return Err(bad("bad time zone")),
                (2, _) => (rest, "00"),
                (4, _) => rest.split_at(2),
                (5, Some(b':')) => (&rest[..2], &rest[3..]),
                _ => return Err(bad("bad time zone")),
            };
            match (number(zh, 2), number(zm, 2)) {
                (Some(zh), Some(zm)) if zh <= 18 && zm <= 59 => sign * (zh * 60 + zm),
                _ => return Err(bad("bad time zone")),
            }
        }
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + h * 3600 + m * 60 + s - offset_minutes * 60;
    Ok(seconds * 1000 + millis)
}

/// Exactly `digits` ASCII digits as a number.
fn number(s: &str, digits: usize) -> Option<i64> {
    (s.len() == digits && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::super::GroupCommand;
    use super::*;

    fn reset(args: &[&str]) -> Result<ResetArgs, clap::Error> {
        let args: Vec<&str> = ["reset-offsets"].iter().chain(args).copied().collect();
        match parse(&args)? {
            GroupCommand::ResetOffsets(args) => Ok(args),
            other => panic!("not a reset: {other:?}"),
        }
    }

    #[test]
    fn datetimes_in_utc_and_with_offsets() {
        assert_eq!(parse_datetime("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(
            parse_datetime("2026-11-22T10:00:00Z"),
            Ok(1_795_341_600_000)
        );
        assert_eq!(
            parse_datetime("2026-11-22T11:00:00+01:00"),
            Ok(1_795_341_600_000)
        );
        assert_eq!(
            parse_datetime("2026-11-22T05:30:00.250-0430"),
            Ok(1_795_341_600_250)
        );
        assert_eq!(
            parse_datetime("2026-11-22T12:00:00+02"),
            Ok(1_795_341_600_000)
        );
        assert_eq!(
            parse_datetime("2000-02-29T23:59:59.9z"),
            Ok(951_868_799_900)
        );
        assert_eq!(parse_datetime("1969-12-31T23:59:59.999Z"), Ok(-1));
    }

    #[test]
    fn bad_datetimes_say_why() {
        for bad in [
            "2026-11-22T10:00:00",
            "2026-11-22 10:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2026-11-22T24:00:00Z",
            "2026-11-22T10:00Z",
            "2026-11-22T10:00:00.Z",
            "2026-11-22T10:00:00.1234567890Z",
            "2026-11-22T10:00:00+1:00",
            "2026-11-22T10:00:00+19:00",
            "2026-11-22T10:00:00+01:0",
            "2026-11-22T10:00:00+0100:",
            "26-11-22T10:00:00Z",
            "2026-11-22T10:00:00ZZ",
        ] {
            assert!(parse_datetime(bad).is_err(), "{bad}");
        }
        let err = parse_datetime("2026-11-22T10:00:00").unwrap_err();
        assert!(err.contains("time zone"), "{err}");
    }

    #[test]
    fn days_match_the_calendar() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        assert_eq!(days_from_civil(2026, 11, 22), 20_779);
    }

    #[test]
    fn exactly_one_target_is_required() {
        assert!(reset(&["g", "--topic", "t"]).is_err());
        assert!(reset(&["g", "--topic", "t", "--to-earliest", "--to-latest"]).is_err());
        assert!(reset(&["g", "--to-earliest"]).is_err());
        let args = reset(&["g", "--topic", "t", "--shift-by", "-5"]).unwrap();
        assert_eq!(args.target(), Target::ShiftBy(-5));
        assert!(!args.execute);
        let args = reset(&["g", "--topic", "t", "--to-offset", "7", "--execute"]).unwrap();
        assert_eq!(args.target(), Target::Offset(7));
        assert!(args.execute);
        assert!(reset(&["g", "--topic", "t", "--to-offset", "-1"]).is_err());
        assert!(reset(&["g", "--topic", "t", "--to-latest", "--execute", "--dry-run"]).is_err());
        let args = reset(&["g", "--topic", "t", "--to-datetime", "1970-01-01T00:00:01Z"]).unwrap();
        assert_eq!(args.target(), Target::Datetime(1000));
        assert!(reset(&["g", "--topic", "t", "--to-datetime", "yesterday"]).is_err());
    }

    #[test]
    fn partitions_repeat_or_split_on_commas() {
        let args = reset(&[
            "g",
            "--topic",
            "t",
            "--partition",
            "0,2",
            "--partition",
            "5",
            "--to-latest",
        ])
        .unwrap();
        assert_eq!(args.partitions, [0, 2, 5]);
        assert!(reset(&["g", "--topic", "t", "--partition", "-1", "--to-latest"]).is_err());
        assert!(reset(&["g", "--topic", "t", "--to-latest"])
            .unwrap()
            .partitions
            .is_empty());
    }

    fn partition(committed: Option<i64>, start: i64, end: i64) -> Partition {
        Partition {
            committed,
            range: LogRange { start, end },
            offset_for_time: None,
        }
    }

    #[test]
    fn new_offsets_follow_kafka() {
        let p = partition(Some(50), 10, 100);
        assert_eq!(new_offset(Target::Earliest, &p), Ok(10));
        assert_eq!(new_offset(Target::Latest, &p), Ok(100));
        assert_eq!(new_offset(Target::ShiftBy(-5), &p), Ok(45));
        assert_eq!(new_offset(Target::ShiftBy(20), &p), Ok(70));
        // Shifts and absolute offsets stay within the log.
        assert_eq!(new_offset(Target::ShiftBy(-100), &p), Ok(10));
        assert_eq!(new_offset(Target::ShiftBy(i64::MAX), &p), Ok(100));
        assert_eq!(new_offset(Target::Offset(5), &p), Ok(10));
        assert_eq!(new_offset(Target::Offset(60), &p), Ok(60));
        assert_eq!(new_offset(Target::Offset(500), &p), Ok(100));
        // A committed offset retention overtook shifts from where it is.
        let behind = partition(Some(3), 10, 100);
        assert_eq!(new_offset(Target::ShiftBy(2), &behind), Ok(10));
        assert_eq!(new_offset(Target::ShiftBy(50), &behind), Ok(53));
    }

    #[test]
    fn shifting_needs_a_committed_offset() {
        let p = partition(None, 0, 10);
        assert!(new_offset(Target::ShiftBy(1), &p).is_err());
        assert_eq!(new_offset(Target::Earliest, &p), Ok(0));
    }

    #[test]
    fn datetimes_without_a_record_go_to_the_end() {
        let mut p = partition(Some(5), 0, 10);
        p.offset_for_time = Some(7);
        assert_eq!(new_offset(Target::Datetime(0), &p), Ok(7));
        p.offset_for_time = Some(-1);
        assert_eq!(new_offset(Target::Datetime(0), &p), Ok(10));
        p.offset_for_time = None;
        assert!(new_offset(Target::Datetime(0), &p).is_err());
    }
}
