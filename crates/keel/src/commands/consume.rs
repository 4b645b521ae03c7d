//! `keel consume`: fetch one partition from its leader and print each
//! record's value on a line of its own.

use std::io::{ErrorKind, Write};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::FetchRequest;
use kafka_protocol::records::{Record, RecordBatchDecoder};
use keel_storage::batch::BatchIter;
use tokio::time::Instant;

use crate::client::{self, BootstrapArgs, PartitionLeader, EARLIEST_TIMESTAMP, LATEST_TIMESTAMP};

/// How long the leader may hold a Fetch open waiting for data.
const FETCH_MAX_WAIT_MS: i32 = 500;

/// Bytes asked for per Fetch. The leader still returns a whole first batch
/// that is larger, so a big batch never stalls the consumer.
const FETCH_BYTES_MAX: i32 = 4 * 1024 * 1024;

const _: () = assert!(FETCH_BYTES_MAX as usize <= client::RESPONSE_BYTES_MAX);

#[derive(clap::Args, Debug)]
pub struct ConsumeArgs {
    /// The topic to read.
    #[arg(long)]
    topic: String,
    /// The partition to read.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i32).range(0..))]
    partition: i32,
    /// Where to start: `earliest`, `latest`, or an offset.
    #[arg(long, default_value = "earliest", value_parser = parse_start_offset)]
    offset: StartOffset,
    /// Stop after printing this many records.
    #[arg(long)]
    max_messages: Option<u64>,
    /// Stop once no record has arrived for this long. Without it or
    /// `--max-messages`, consume runs until interrupted.
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Print each record's key before its value, tab-separated.
    #[arg(long)]
    print_key: bool,
    /// Print each record's offset first, tab-separated.
    #[arg(long)]
    print_offset: bool,
    #[command(flatten)]
    bootstrap: BootstrapArgs,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum StartOffset {
    Earliest,
    Latest,
    At(i64),
}

pub async fn run(args: ConsumeArgs) -> Result<()> {
    let mut leader =
        PartitionLeader::connect(&args.bootstrap.address, &args.topic, args.partition).await?;
    let offset = match args.offset {
        StartOffset::Earliest => leader.list_offset(EARLIEST_TIMESTAMP).await?,
        StartOffset::Latest => leader.list_offset(LATEST_TIMESTAMP).await?,
        StartOffset::At(offset) => offset,
    };
    // Not locked: a StdoutLock would be held across awaits.
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let mut printed = 0;
    let consumed = consume(&mut leader, offset, &args, &mut out, &mut printed).await;
    match consumed.and_then(|()| Ok(out.flush()?)) {
        Ok(()) => {
            eprintln!(
                "Consumed {printed} records from {}-{}.",
                args.topic, args.partition
            );
            Ok(())
        }
        // The reader went away (`keel consume | head`), which ends consuming
        // as it ends `cat`. No summary: `printed` counts buffered records.
        Err(e) if is_broken_pipe(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == ErrorKind::BrokenPipe)
}

/// Fetches from `offset` on and prints records until `--max-messages` are
/// printed or none has arrived for `--timeout-ms`.
async fn consume(
    leader: &mut PartitionLeader,
    mut offset: i64,
    args: &ConsumeArgs,
    out: &mut impl Write,
    printed: &mut u64,
) -> Result<()> {
    let idle_limit = args.timeout_ms.map(Duration::from_millis);
    let mut last_record_at = Instant::now();
    while args.max_messages.is_none_or(|max| *printed < max) {
        if idle_limit.is_some_and(|limit| last_record_at.elapsed() >= limit) {
            break;
        }
        let data = fetch(leader, offset).await?;
        if data.error_code == ResponseError::OffsetOutOfRange.code() {
            return Err(out_of_range(leader, offset).await);
        }
        let what = format!(
            "fetching {}-{} at offset {offset}",
            leader.topic, leader.partition
        );
        client::check(data.error_code, what)?;
        let records = data.records.unwrap_or_default();
        let mut batches = 0;
        for batch in BatchIter::new(&records) {
            let (header, range) =
                batch.with_context(|| format!("framing a batch fetched at offset {offset}"))?;
            batches += 1;
            // Transaction markers: bookkeeping, not data.
            if !header.is_control() {
                let decoded =
                    RecordBatchDecoder::decode(&mut records.slice(range)).with_context(|| {
                        format!("decoding the batch at offset {}", header.base_offset)
                    })?;
                // A compressed batch is returned whole, so it may begin before `offset`.
                for record in decoded.records.iter().filter(|r| r.offset >= offset) {
                    if args.max_messages.is_some_and(|max| *printed >= max) {
                        break;
                    }
                    print_record(out, record, args)?;
                    *printed += 1;
                    last_record_at = Instant::now();
                }
            }
            offset = header.next_offset();
        }
        if batches == 0 && !records.is_empty() {
            bail!("the batch at offset {offset} does not fit in a response of {FETCH_BYTES_MAX} bytes");
        }
        // Records are shown as they arrive, not when the buffer fills.
        out.flush()?;
    }
    Ok(())
}

/// One Fetch for the partition at `offset`, without a fetch session.
async fn fetch(leader: &mut PartitionLeader, offset: i64) -> Result<PartitionData> {
    let partition = FetchPartition::default()
        .with_partition(leader.partition)
        .with_fetch_offset(offset)
        .with_partition_max_bytes(FETCH_BYTES_MAX);
    // Both the name (Fetch v4-12) and the id (v13) are set; the encoder
    // writes the one the negotiated version has.
    let topic = FetchTopic::default()
        .with_topic(client::topic_name(&leader.topic))
        .with_topic_id(leader.topic_id)
        .with_partitions(vec![partition]);
    let request = FetchRequest::default()
        .with_max_wait_ms(FETCH_MAX_WAIT_MS)
        .with_min_bytes(1)
        .with_max_bytes(FETCH_BYTES_MAX)
        .with_topics(vec![topic]);
    let response = leader.client.send(request).await?;
    client::check(response.error_code, "Fetch")?;
    response
        .responses
        .into_iter()
        .filter(|t| leader.is_topic(&t.topic, t.topic_id))
        .flat_map(|t| t.partitions)
        .find(|p| p.partition_index == leader.partition)
        .ok_or_else(|| anyhow!("Fetch response lacks {}-{}", leader.topic, leader.partition))
}

/// The error for a fetch at an offset the partition does not hold, with the
/// offsets it does: from its log start offset up to its high watermark.
async fn out_of_range(leader: &mut PartitionLeader, offset: i64) -> anyhow::Error {
    let what = format!(
        "fetching {}-{} at offset {offset}: OFFSET_OUT_OF_RANGE",
        leader.topic, leader.partition
    );
    let earliest = leader.list_offset(EARLIEST_TIMESTAMP).await;
    let latest = leader.list_offset(LATEST_TIMESTAMP).await;
    match (earliest, latest) {
        (Ok(start), Ok(end)) => {
            anyhow!("{what}: the log start offset is {start} and the high watermark {end}")
        }
        (Err(e), _) | (_, Err(e)) => {
            anyhow!("{what} (listing the partition's offsets failed: {e:#})")
        }
    }
}

fn print_record(out: &mut impl Write, record: &Record, args: &ConsumeArgs) -> std::io::Result<()> {
    if args.print_offset {
        write!(out, "{}\t", record.offset)?;
    }
    if args.print_key {
        write_bytes(out, record.key.as_ref())?;
        out.write_all(b"\t")?;
    }
    write_bytes(out, record.value.as_ref())?;
    out.write_all(b"\n")
}

/// Writes the bytes as they are, or `null` for a missing key or a tombstone, as Kafka's console consumer does.
fn write_bytes(out: &mut impl Write, bytes: Option<&Bytes>) -> std::io::Result<()> {
    out.write_all(bytes.map_or(&b"null"[..], |b| b))
}

fn parse_start_offset(arg: &str) -> Result<StartOffset, String> {
    match arg {
        "earliest" => Ok(StartOffset::Earliest),
        "latest" => Ok(StartOffset::Latest),
        _ => match arg.parse::<i64>() {
            Ok(offset) if offset >= 0 => Ok(StartOffset::At(offset)),
            _ => Err(format!(
                "expected earliest, latest or an offset >= 0, got {arg:?}"
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: ConsumeArgs,
    }

    fn parse(args: &[&str]) -> Result<ConsumeArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("consume").chain(args.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn start_offsets() {
        assert_eq!(parse_start_offset("earliest"), Ok(StartOffset::Earliest));
        assert_eq!(parse_start_offset("latest"), Ok(StartOffset::Latest));
        assert_eq!(parse_start_offset("42"), Ok(StartOffset::At(42)));
        assert!(parse_start_offset("-1").is_err());
        assert!(parse_start_offset("first").is_err());
    }

    #[test]
    fn defaults() {
        let args = parse(&["--topic", "t"]).unwrap();
        assert_eq!((args.partition, args.offset), (0, StartOffset::Earliest));
        assert_eq!((args.max_messages, args.timeout_ms), (None, None));
        assert!(!args.print_key && !args.print_offset);
    }

    #[test]
    fn records_print_offset_key_and_value_tab_separated() {
        let mut args = parse(&["--topic", "t", "--print-key", "--print-offset"]).unwrap();
        let mut record = Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: kafka_protocol::records::TimestampType::Creation,
            offset: 7,
            sequence: -1,
            timestamp: 0,
            key: Some(Bytes::from_static(b"k")),
            value: Some(Bytes::from_static(b"v")),
            headers: Default::default(),
        };
        let mut out = Vec::new();
        print_record(&mut out, &record, &args).unwrap();
        record.key = None;
        record.value = None;
        print_record(&mut out, &record, &args).unwrap();
        args.print_offset = false;
        args.print_key = false;
        print_record(&mut out, &record, &args).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "7\tk\tv\n7\tnull\tnull\nnull\n"
        );
    }
}
