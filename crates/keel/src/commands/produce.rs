//! `keel produce`: stdin lines become records of one partition, sent in
//! RecordBatch v2 batches, one batch per Produce request.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context, Result};
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::ProduceRequest;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    NO_PARTITION_LEADER_EPOCH, NO_PRODUCER_EPOCH, NO_PRODUCER_ID, NO_SEQUENCE,
};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::client::{self, BootstrapArgs, PartitionLeader};

/// A batch goes out once its keys and values reach this many bytes, even
/// short of `--batch-size` records, so requests stay under the broker's
/// default `message.max.bytes` (1 MiB) unless one line alone exceeds it.
const BATCH_BYTES_MAX: usize = 512 * 1024;

/// The largest `--batch-size`; `BATCH_BYTES_MAX` usually cuts batches first.
const BATCH_RECORDS_MAX: i64 = 100_000;

/// How long a partial batch waits for more input. Piped input never pauses
/// this long; someone typing sees each line sent as they enter it.
const LINGER: Duration = Duration::from_millis(100);

/// How long the leader may wait for the in-sync replicas (acks=-1).
const PRODUCE_TIMEOUT_MS: i32 = 30_000;

#[derive(clap::Args, Debug)]
pub struct ProduceArgs {
    /// The topic to write to.
    #[arg(long)]
    topic: String,
    /// The partition to write to.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i32).range(0..))]
    partition: i32,
    /// A key for every record.
    #[arg(long, conflicts_with = "key_separator")]
    key: Option<String>,
    /// Split each line at the first SEP into key and value.
    #[arg(long, value_name = "SEP", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    key_separator: Option<String>,
    /// Acknowledgements to wait for: -1 or `all` (the in-sync replicas), 1
    /// (the leader), 0 (none; offsets are then unknown).
    #[arg(long, default_value = "-1", allow_hyphen_values = true, value_parser = parse_acks)]
    acks: i16,
    /// The codec for each batch.
    #[arg(long, value_enum, default_value_t = Codec::None)]
    compression: Codec,
    /// Records per batch, and so per Produce request.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=BATCH_RECORDS_MAX))]
    batch_size: u32,
    #[command(flatten)]
    bootstrap: BootstrapArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
enum Codec {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl From<Codec> for Compression {
    fn from(codec: Codec) -> Compression {
        match codec {
            Codec::None => Compression::None,
            Codec::Gzip => Compression::Gzip,
            Codec::Snappy => Compression::Snappy,
            Codec::Lz4 => Compression::Lz4,
            Codec::Zstd => Compression::Zstd,
        }
    }
}

pub async fn run(args: ProduceArgs) -> Result<()> {
    let leader =
        PartitionLeader::connect(&args.bootstrap.address, &args.topic, args.partition).await?;
    let mut producer = Producer {
        leader,
        args: &args,
        records: Vec::new(),
        record_bytes: 0,
        produced: 0,
        last_offset: None,
    };
    let mut stdin = BufReader::new(tokio::io::stdin());
    let mut line = Vec::new();
    let mut line_number = 0;
    loop {
        let read = stdin.read_until(b'\n', &mut line);
        let read = if producer.records.is_empty() {
            read.await
        } else {
            match tokio::time::timeout(LINGER, read).await {
                Ok(read) => read,
                // Input paused, as when someone types: send what there is.
                // A cancelled read keeps its partial line in `line`.
                Err(_elapsed) => {
                    producer.flush().await?;
                    continue;
                }
            }
        };
        if read.context("reading stdin")? == 0 && line.is_empty() {
            break;
        }
        line_number += 1;
        let (key, value) = key_and_value(strip_line_ending(&line), &args).ok_or_else(|| {
            anyhow!(
                "line {line_number} lacks the key separator {:?}",
                args.key_separator
            )
        })?;
        producer.push(key, value);
        line.clear();
        if producer.records.len() >= args.batch_size as usize
            || producer.record_bytes >= BATCH_BYTES_MAX
        {
            producer.flush().await?;
        }
    }
    producer.flush().await?;
    let (produced, topic, partition) = (producer.produced, &args.topic, args.partition);
    match producer.last_offset {
        Some(last) => {
            eprintln!("Produced {produced} records to {topic}-{partition}; last offset {last}.")
        }
        None if produced > 0 => {
            eprintln!("Sent {produced} records to {topic}-{partition}, unconfirmed (acks=0).")
        }
        None => eprintln!("Produced no records."),
    }
    Ok(())
}

/// Records read but not yet sent, and what was sent so far.
struct Producer<'a> {
    leader: PartitionLeader,
    args: &'a ProduceArgs,
    records: Vec<Record>,
    /// Key and value bytes in `records`, held to `BATCH_BYTES_MAX`.
    record_bytes: usize,
    produced: u64,
    /// None until a batch is acknowledged, so always with acks=0.
    last_offset: Option<i64>,
}

impl Producer<'_> {
    fn push(&mut self, key: Option<&[u8]>, value: &[u8]) {
        self.record_bytes += key.map_or(0, <[u8]>::len) + value.len();
        let offset_delta = self.records.len() as i64;
        let key = key.map(Bytes::copy_from_slice);
        self.records
            .push(record(offset_delta, key, Bytes::copy_from_slice(value)));
    }

    async fn flush(&mut self) -> Result<()> {
        if self.records.is_empty() {
            return Ok(());
        }
        self.last_offset = self.send().await?;
        self.produced += self.records.len() as u64;
        self.records.clear();
        self.record_bytes = 0;
        Ok(())
    }

    /// Sends the records as one batch; returns the offset of the last, which
    /// the broker does not tell an acks=0 producer.
    async fn send(&mut self) -> Result<Option<i64>> {
        let leader = &mut self.leader;
        let batch = encode_batch(&self.records, self.args.compression.into())?;
        // Both the name (Produce v3-12) and the id (v13) are set; the encoder
        // writes the one the negotiated version has.
        let topic = TopicProduceData::default()
            .with_name(client::topic_name(&leader.topic))
            .with_topic_id(leader.topic_id)
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(leader.partition)
                .with_records(Some(batch))]);
        let request = ProduceRequest::default()
            .with_acks(self.args.acks)
            .with_timeout_ms(PRODUCE_TIMEOUT_MS)
            .with_topic_data(vec![topic]);
        if self.args.acks == 0 {
            leader.client.send_without_response(request).await?;
            return Ok(None);
        }
        let response = leader.client.send(request).await?;
        let where_ = format!("{}-{}", leader.topic, leader.partition);
        let partition = response
            .responses
            .iter()
            .filter(|t| leader.is_topic(&t.name, t.topic_id))
            .flat_map(|t| &t.partition_responses)
            .find(|p| p.index == leader.partition)
            .ok_or_else(|| anyhow!("Produce response lacks {where_}"))?;
        // Without a partition-level message, a rejected record may say why.
        let message = partition.error_message.as_deref().or_else(|| {
            let first = partition.record_errors.first();
            first.and_then(|e| e.batch_index_error_message.as_deref())
        });
        let what = format!("producing to {where_}");
        client::check_with_message(partition.error_code, message, what)?;
        Ok(Some(partition.base_offset + self.records.len() as i64 - 1))
    }
}

/// A line's key and value under `--key` or `--key-separator` (which splits
/// at its first occurrence); None when the line lacks the separator.
fn key_and_value<'a>(
    line: &'a [u8],
    args: &'a ProduceArgs,
) -> Option<(Option<&'a [u8]>, &'a [u8])> {
    let Some(separator) = &args.key_separator else {
        return Some((args.key.as_deref().map(str::as_bytes), line));
    };
    let separator = separator.as_bytes();
    let at = line.windows(separator.len()).position(|w| w == separator)?;
    Some((Some(&line[..at]), &line[at + separator.len()..]))
}

/// A record at `offset_delta` within its batch, stamped with the current time.
fn record(offset_delta: i64, key: Option<Bytes>, value: Bytes) -> Record {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is past 1970");
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
        producer_id: NO_PRODUCER_ID,
        producer_epoch: NO_PRODUCER_EPOCH,
        timestamp_type: TimestampType::Creation,
        offset: offset_delta,
        // The encoder starts a new batch wherever `offset - sequence` changes.
        // Keeping it constant makes one batch whose base sequence is
        // NO_SEQUENCE, as a non-idempotent producer sends.
        sequence: NO_SEQUENCE.wrapping_add(offset_delta as i32),
        timestamp: now.as_millis() as i64,
        key,
        value: Some(value),
        headers: Default::default(),
    }
}

fn encode_batch(records: &[Record], compression: Compression) -> Result<Bytes> {
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression,
    };
    RecordBatchEncoder::encode(&mut buf, records, &options).context("encoding a record batch")?;
    Ok(buf.freeze())
}

/// Drops the `\n`, or `\r\n`, that ends a line read from stdin.
fn strip_line_ending(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Parses `--acks`: -1 and `all` wait for the in-sync replicas.
fn parse_acks(arg: &str) -> Result<i16, String> {
    match arg {
        "all" | "-1" => Ok(-1),
        "0" => Ok(0),
        "1" => Ok(1),
        _ => Err(format!("expected -1, all, 0 or 1, got {arg:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Parser, ValueEnum};
    use kafka_protocol::records::RecordBatchDecoder;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: ProduceArgs,
    }

    fn parse(args: &[&str]) -> Result<ProduceArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("produce").chain(args.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn defaults() {
        let args = parse(&["--topic", "t"]).unwrap();
        assert_eq!((args.partition, args.acks, args.batch_size), (0, -1, 1000));
        assert_eq!(args.compression, Codec::None);
        assert_eq!(args.bootstrap.address, client::DEFAULT_BOOTSTRAP_SERVER);
    }

    #[test]
    fn acks_accepts_a_leading_minus_and_all() {
        assert_eq!(parse(&["--topic", "t", "--acks", "-1"]).unwrap().acks, -1);
        assert_eq!(parse(&["--topic", "t", "--acks", "all"]).unwrap().acks, -1);
        assert_eq!(parse(&["--topic", "t", "--acks", "0"]).unwrap().acks, 0);
        assert!(parse(&["--topic", "t", "--acks", "2"]).is_err());
    }

    #[test]
    fn key_and_key_separator_conflict() {
        assert!(parse(&["--topic", "t", "--key", "k", "--key-separator", ":"]).is_err());
        assert!(parse(&["--topic", "t", "--key-separator", ""]).is_err());
        assert!(parse(&["--topic", "t", "--batch-size", "0"]).is_err());
    }

    #[test]
    fn keys_come_from_the_flag_or_the_line() {
        let plain = parse(&["--topic", "t"]).unwrap();
        assert_eq!(key_and_value(b"a:b", &plain), Some((None, &b"a:b"[..])));
        let fixed = parse(&["--topic", "t", "--key", "k"]).unwrap();
        assert_eq!(
            key_and_value(b"a:b", &fixed),
            Some((Some(&b"k"[..]), &b"a:b"[..]))
        );
        let kv = |line: &'static [u8], separator: &str| {
            let args = parse(&["--topic", "t", "--key-separator", separator]).unwrap();
            key_and_value(line, &args).map(|(k, v)| (k.unwrap().to_vec(), v.to_vec()))
        };
        assert_eq!(kv(b"k:v:w", ":"), Some((b"k".to_vec(), b"v:w".to_vec())));
        assert_eq!(kv(b"k::v", "::"), Some((b"k".to_vec(), b"v".to_vec())));
        assert_eq!(kv(b":v", ":"), Some((b"".to_vec(), b"v".to_vec())));
        assert_eq!(kv(b"kv", ":"), None);
        assert_eq!(kv(b"k", "long separator"), None);
    }

    #[test]
    fn line_endings_are_stripped_once() {
        assert_eq!(strip_line_ending(b"a\n"), b"a");
        assert_eq!(strip_line_ending(b"a\r\n"), b"a");
        assert_eq!(strip_line_ending(b"a"), b"a");
        assert_eq!(strip_line_ending(b"a\n\n"), b"a\n");
    }

    #[test]
    fn records_encode_as_one_batch_per_codec() {
        for &codec in Codec::value_variants() {
            let records: Vec<Record> = (0..3)
                .map(|i| {
                    record(
                        i,
                        Some(Bytes::from(format!("k{i}"))),
                        Bytes::from(format!("v{i}")),
                    )
                })
                .collect();
            let mut batch = encode_batch(&records, codec.into()).unwrap();
            let info = RecordBatchDecoder::decode_batch_info(&mut batch.clone()).unwrap();
            assert_eq!(info.len(), 1, "{codec:?}");
            assert_eq!(
                (info[0].record_count, info[0].base_sequence),
                (3, NO_SEQUENCE)
            );
            let decoded = RecordBatchDecoder::decode(&mut batch).unwrap();
            let values: Vec<_> = decoded
                .records
                .into_iter()
                .map(|r| r.value.unwrap())
                .collect();
            assert_eq!(values, ["v0", "v1", "v2"], "{codec:?}");
        }
    }
}
