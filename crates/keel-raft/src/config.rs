//! The quorum's settings under Kafka's KRaft names, and how they map onto
//! openraft's timers.

use std::collections::BTreeMap;
use std::path::PathBuf;

use keel_types::TopicPartition;

use crate::limits::SNAPSHOT_CHUNK_BYTES;

/// The metadata log's partition, as in Kafka.
pub const METADATA_TOPIC: &str = "__cluster_metadata";

/// The `partition.metadata` topic id today's `MetadataStore` writes; the
/// Raft log reuses its directory, so it must agree.
pub(crate) const METADATA_TOPIC_ID: &str = "metadata";

/// One quorum member's settings. Fields are Kafka's config names with dots
/// turned into underscores; defaults are Kafka's.
#[derive(Clone, Debug)]
pub struct QuorumConfig {
    /// `node.id`. A node among `voters` is a voter; any other is an
    /// observer (`process.roles=broker`), which follows the log and never
    /// votes.
    pub node_id: i32,
    /// `controller.quorum.voters`, parsed by [`parse_voters`]. Addresses here
    /// are where this node dials each peer; the membership in the log only
    /// records them.
    pub voters: BTreeMap<i32, String>,
    /// `metadata.log.dir` (or the first `log.dirs` entry): the directory that
    /// holds `__cluster_metadata-0`.
    pub metadata_log_dir: PathBuf,
    /// The controller listener's bind address (`listeners`, CONTROLLER).
    /// Port 0 picks a free port; see `MetadataQuorum::listener_addr`.
    pub listener: String,
    /// Where voters dial an observer's controller listener. `None`: the
    /// address it bound, which must then not be a wildcard. Voters are
    /// dialled at their `voters` address instead.
    pub advertised_listener: Option<String>,
    /// `controller.quorum.election.timeout.ms`: the random extra wait
    /// before an election, so that voters do not all stand at once.
    pub election_timeout_ms: u64,
    /// `controller.quorum.fetch.timeout.ms`: how long a voter goes without
    /// hearing from the leader before it stands for election.
    pub fetch_timeout_ms: u64,
    /// `controller.quorum.request.timeout.ms`: one RPC to a peer, connect
    /// included.
    pub request_timeout_ms: u64,
    /// `metadata.log.max.record.bytes.between.snapshots`: record bytes
    /// applied after which the application is asked for a snapshot.
    pub max_record_bytes_between_snapshots: u64,
    /// Entries kept in the log below a new snapshot, so that a slightly
    /// lagging voter can still be sent entries rather than the snapshot.
    /// KRaft has no such setting (it keeps segments by retention); 0 purges
    /// up to the snapshot at once.
    pub log_entries_kept_after_snapshot: u64,
    /// `metadata.log.segment.bytes`.
    pub log_segment_bytes: u32,
    /// `connections.max.idle.ms` on the controller listener.
    pub connections_max_idle_ms: u64,
}

impl QuorumConfig {
    /// Kafka's defaults for a node with these voters and directory.
    pub fn new(node_id: i32, voters: BTreeMap<i32, String>, metadata_log_dir: PathBuf) -> Self {
        QuorumConfig {
            node_id,
            voters,
            metadata_log_dir,
            listener: "0.0.0.0:9093".to_string(),
            advertised_listener: None,
            election_timeout_ms: 1000,
            fetch_timeout_ms: 2000,
            request_timeout_ms: 2000,
            max_record_bytes_between_snapshots: 20 * 1024 * 1024,
            log_entries_kept_after_snapshot: 1000,
            log_segment_bytes: 1024 * 1024 * 1024,
            connections_max_idle_ms: 600_000,
        }
    }

    pub(crate) fn partition_dir(&self) -> PathBuf {
        self.metadata_log_dir
            .join(TopicPartition::new(METADATA_TOPIC, 0).dir_name())
    }

    /// openraft's timers from KRaft's. A KRaft voter stands for election
    /// once it has not heard from its leader for `fetch.timeout`, plus a
    /// random back-off within `election.timeout` so voters do not all stand
    /// at once. An openraft follower that knows a leader stands after its
    /// leader lease, which is `max`, plus an election timeout drawn from
    /// `[min, max]`. So, with the jitter `J = min(election.timeout,
    /// fetch.timeout / 2)`: `max = (fetch.timeout + J) / 2` and
    /// `min = max - J`, and a voter stands `fetch.timeout` to
    /// `fetch.timeout + J` after it last heard from its leader. Mapping
    /// `fetch.timeout` onto `min` alone made that 2.5 to 3 times
    /// `fetch.timeout`, which a failover of the active controller paid in
    /// full. Heartbeats go every `min / 2`: at least four fit in the time a
    /// follower waits.
    pub(crate) fn raft_config(&self) -> Result<openraft::Config, String> {
        if self.election_timeout_ms == 0 || self.fetch_timeout_ms < 8 {
            return Err(
                "controller.quorum.election.timeout.ms must be positive and \
                 controller.quorum.fetch.timeout.ms at least 8"
                    .into(),
            );
        }
        let jitter = self.election_timeout_ms.min(self.fetch_timeout_ms / 2);
        let election_timeout_max = (self.fetch_timeout_ms + jitter) / 2;
        let election_timeout_min = election_timeout_max - jitter;
        let config = openraft::Config {
            cluster_name: "keel-metadata".to_string(),
            election_timeout_min,
            election_timeout_max,
            heartbeat_interval: election_timeout_min / 2,
            install_snapshot_timeout: self.request_timeout_ms,
            // Snapshots are asked for by record bytes, which openraft cannot
            // count; see `state_machine::SnapshotTrigger`.
            snapshot_policy: openraft::SnapshotPolicy::Never,
            snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES as u64,
            max_in_snapshot_log_to_keep: self.log_entries_kept_after_snapshot,
            ..openraft::Config::default()
        };
        config.validate().map_err(|e| e.to_string())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("controller.quorum.voters: {0}")]
pub struct VotersParseError(String);

/// Parses Kafka's `controller.quorum.voters`: `id@host:port` entries
/// separated by commas, e.g. `1@ctl1:9093,2@ctl2:9093,3@[::1]:9093`.
pub fn parse_voters(text: &str) -> Result<BTreeMap<i32, String>, VotersParseError> {
    let bad = |why: String| VotersParseError(why);
    let mut voters = BTreeMap::new();
    for entry in text.split(',').map(str::trim) {
        if entry.is_empty() {
            return Err(bad(format!("empty entry in {text:?}")));
        }
        let (id, addr) = entry
            .split_once('@')
            .ok_or_else(|| bad(format!("{entry:?} is not id@host:port")))?;
        let id: i32 = id
            .parse()
            .ok()
            .filter(|id| *id >= 0)
            .ok_or_else(|| bad(format!("{id:?} is not a node id")))?;
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| bad(format!("{addr:?} has no port")))?;
        let host_ok = !host.is_empty()
            && (!host.contains(':') || (host.starts_with('[') && host.ends_with(']')));
        if !host_ok {
            return Err(bad(format!("{addr:?} has no usable host")));
        }
        if port.parse::<u16>().ok().filter(|p| *p > 0).is_none() {
            return Err(bad(format!("{addr:?} has no usable port")));
        }
        if voters.insert(id, addr.to_string()).is_some() {
            return Err(bad(format!("voter {id} is listed twice")));
        }
    }
    Ok(voters)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voters_parse() {
        let v = parse_voters("1@ctl1:9093, 2@10.0.0.2:9093,3@[::1]:9094").unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[&1], "ctl1:9093");
        assert_eq!(v[&2], "10.0.0.2:9093");
        assert_eq!(v[&3], "[::1]:9094");
        for bad in [
            "",
            "1@a:1,",
            "a@b:1",
            "-1@b:1",
            "1@b",
            "1@:9093",
            "1@b:0",
            "1@b:70000",
            "1@::1:9093",
            "1@a:1,1@b:2",
            "1:a:1",
        ] {
            assert!(parse_voters(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn kraft_timers_map_onto_openraft() {
        let c = QuorumConfig::new(1, parse_voters("1@a:1").unwrap(), PathBuf::from("/x"));
        let r = c.raft_config().unwrap();
        assert_eq!(
            (
                r.election_timeout_min,
                r.election_timeout_max,
                r.heartbeat_interval
            ),
            (500, 1500, 250)
        );
        // The lease (`max`) and an election timeout: KRaft's fetch timeout
        // to that plus the jitter.
        assert_eq!(
            (
                r.election_timeout_max + r.election_timeout_min,
                2 * r.election_timeout_max
            ),
            (2000, 3000)
        );
        assert!(c
            .partition_dir()
            .ends_with(std::path::Path::new("__cluster_metadata-0")));
    }
}
