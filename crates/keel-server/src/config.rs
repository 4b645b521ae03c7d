//! Broker configuration under Kafka's names. Values arrive as a flat
//! `name -> string` map (defaults, then a config file, then `--override`s);
//! this module types them, resolves a topic's effective configs, and knows
//! where each value came from so DescribeConfigs can say so.

use std::collections::BTreeMap;
use std::path::PathBuf;

use keel_group::GroupConfig;
use keel_metadata::config::{
    dynamic_broker_config, topic_config_def, validate_value, BrokerConfigDef, ConfigType,
    TopicConfigDef, Validator, DYNAMIC_BROKER_CONFIGS, TOPIC_CONFIGS,
};
use keel_metadata::controller::TopicDefaults;
use keel_metadata::{MetadataImage, TopicImage};
use keel_raft::{parse_voters, QuorumConfig};
use keel_storage::{CleanupPolicy, LogConfig, TimestampType};
use keel_txn::TxnConfig;

const fn def(
    name: &'static str,
    default: &'static str,
    kind: ConfigType,
    validator: Validator,
    doc: &'static str,
) -> BrokerConfigDef {
    BrokerConfigDef {
        name,
        default,
        kind,
        validator,
        doc,
    }
}

use ConfigType::{Boolean, Int, List, Long, Short, String as Str};
use Validator::{Any, AtLeast};

/// Broker-only static settings. The broker synonyms of topic configs
/// (`log.retention.ms` and friends) come from `TOPIC_CONFIGS`, and the other
/// dynamic settings from `DYNAMIC_BROKER_CONFIGS`, so each default is
/// written once.
pub const BROKER_CONFIGS: &[BrokerConfigDef] = &[
    def("node.id", "1", Int, AtLeast(0), "This broker's id."),
    def(
        "process.roles",
        "broker,controller",
        List,
        Any,
        "Roles of this process.",
    ),
    def(
        "listeners",
        "PLAINTEXT://127.0.0.1:9092",
        List,
        Any,
        "Addresses to listen on.",
    ),
    def(
        "advertised.listeners",
        "",
        List,
        Any,
        "Addresses given to clients; defaults to listeners.",
    ),
    def("broker.rack", "", Str, Any, "Rack of this broker."),
    def(
        "controller.listener.names",
        "CONTROLLER",
        List,
        Any,
        "Names of the listeners the controller quorum uses; the first is this node's.",
    ),
    def(
        "controller.quorum.voters",
        "",
        List,
        Any,
        "The controller voters as id@host:port; empty makes this node the only voter.",
    ),
    def(
        "controller.quorum.election.timeout.ms",
        "1000",
        Int,
        AtLeast(1),
        "Largest random wait before a voter stands for election.",
    ),
    def(
        "controller.quorum.fetch.timeout.ms",
        "2000",
        Int,
        AtLeast(4),
        "How long a voter goes without hearing from the leader before it stands.",
    ),
    def(
        "controller.quorum.request.timeout.ms",
        "2000",
        Int,
        AtLeast(1),
        "How long one request to another controller may take.",
    ),
    def(
        "broker.heartbeat.interval.ms",
        "2000",
        Int,
        AtLeast(1),
        "How often a broker tells the active controller it is alive.",
    ),
    def(
        "broker.session.timeout.ms",
        "9000",
        Int,
        AtLeast(1),
        "How long a broker may go without a heartbeat before it is fenced.",
    ),
    def(
        "auto.leader.rebalance.enable",
        "true",
        Boolean,
        Any,
        "Whether the active controller moves leadership back to preferred replicas that are in sync.",
    ),
    def(
        "leader.imbalance.check.interval.seconds",
        "300",
        Long,
        AtLeast(1),
        "How often the active controller looks for partitions led by other than their preferred replica, or left without a leader where unclean election is allowed.",
    ),
    def(
        "replica.lag.time.max.ms",
        "30000",
        Long,
        AtLeast(1),
        "How long a follower may go without catching up before it leaves the ISR.",
    ),
    def(
        "replica.fetch.wait.max.ms",
        "500",
        Int,
        AtLeast(0),
        "Longest a follower's fetch waits at the leader for new data.",
    ),
    def(
        "replica.fetch.max.bytes",
        "1048576",
        Int,
        AtLeast(0),
        "Bytes a follower asks for per partition and fetch.",
    ),
    def(
        "metadata.log.max.record.bytes.between.snapshots",
        "20971520",
        Long,
        AtLeast(1),
        "Metadata record bytes after which a new snapshot is taken.",
    ),
    def(
        "log.dirs",
        "./keel-data",
        List,
        Any,
        "Directory holding the partitions' logs.",
    ),
    def(
        "num.partitions",
        "1",
        Int,
        AtLeast(1),
        "Partitions of an auto-created topic, or of one created with -1.",
    ),
    def(
        "default.replication.factor",
        "1",
        Short,
        AtLeast(1),
        "Replication factor of auto-created topics.",
    ),
    def(
        "auto.create.topics.enable",
        "true",
        Boolean,
        Any,
        "Create a topic on first Metadata request for it.",
    ),
    def(
        "socket.request.max.bytes",
        "104857600",
        Int,
        AtLeast(1),
        "Largest request frame accepted.",
    ),
    def(
        "connections.max.idle.ms",
        "600000",
        Long,
        AtLeast(1),
        "Idle connections are closed after this long.",
    ),
    def(
        "producer.id.expiration.ms",
        "86400000",
        Int,
        AtLeast(1),
        "Idle time after which a producer's state is dropped.",
    ),
    def(
        "log.cleaner.enable",
        "true",
        Boolean,
        Any,
        "Run the log cleaner, which compacts topics whose cleanup.policy includes compact.",
    ),
    def(
        "log.retention.check.interval.ms",
        "300000",
        Long,
        AtLeast(1),
        "How often retention runs.",
    ),
    def(
        "log.flush.offset.checkpoint.interval.ms",
        "60000",
        Int,
        AtLeast(0),
        "How often recovery points are checkpointed.",
    ),
    def(
        "fetch.max.bytes",
        "57671680",
        Int,
        AtLeast(0),
        "Cap on one Fetch response's size.",
    ),
    def(
        "max.incremental.fetch.session.cache.slots",
        "1000",
        Int,
        AtLeast(0),
        "Fetch sessions kept at once.",
    ),
    def(
        "log.retention.hours",
        "168",
        Int,
        Any,
        "Hours to keep a segment, if log.retention.ms is not set.",
    ),
    def(
        "offsets.topic.num.partitions",
        "50",
        Int,
        AtLeast(1),
        "Partitions of __consumer_offsets.",
    ),
    def(
        "offsets.topic.replication.factor",
        "3",
        Short,
        AtLeast(1),
        "Replication factor of __consumer_offsets (at most the brokers registered).",
    ),
    def(
        "offsets.topic.segment.bytes",
        "104857600",
        Int,
        Validator::Between(14, i32::MAX as i64),
        "Segment size of __consumer_offsets, small so compaction can start early.",
    ),
    def(
        "transaction.state.log.num.partitions",
        "50",
        Int,
        AtLeast(1),
        "Partitions of __transaction_state.",
    ),
    def(
        "transaction.state.log.replication.factor",
        "3",
        Short,
        AtLeast(1),
        "Replication factor of __transaction_state (at most the brokers registered).",
    ),
    def(
        "transaction.state.log.min.isr",
        "2",
        Int,
        AtLeast(1),
        "min.insync.replicas of __transaction_state (at most its replication factor).",
    ),
    def(
        "transaction.state.log.segment.bytes",
        "104857600",
        Int,
        Validator::Between(14, i32::MAX as i64),
        "Segment size of __transaction_state.",
    ),
    def(
        "transaction.max.timeout.ms",
        "900000",
        Int,
        AtLeast(1),
        "The longest transaction.timeout.ms a producer may ask for.",
    ),
    def(
        "transactional.id.expiration.ms",
        "604800000",
        Long,
        AtLeast(1),
        "How long a transactional id may stay idle before the coordinator forgets it.",
    ),
    def(
        "transaction.abort.timed.out.transaction.cleanup.interval.ms",
        "10000",
        Long,
        AtLeast(1),
        "How often open transactions are checked against their timeout.",
    ),
    def(
        "transaction.remove.expired.transaction.cleanup.interval.ms",
        "3600000",
        Long,
        AtLeast(1),
        "How often idle transactional ids are expired.",
    ),
    def(
        "offsets.retention.minutes",
        "10080",
        Int,
        AtLeast(1),
        "How long an empty group's offsets are kept.",
    ),
    def(
        "offset.metadata.max.bytes",
        "4096",
        Int,
        AtLeast(0),
        "Largest metadata string of a committed offset.",
    ),
    def(
        "group.initial.rebalance.delay.ms",
        "3000",
        Int,
        AtLeast(0),
        "How long the first rebalance of an empty group waits for more members.",
    ),
    def(
        "group.min.session.timeout.ms",
        "6000",
        Int,
        AtLeast(1),
        "Smallest session timeout a member may ask for.",
    ),
    def(
        "group.max.session.timeout.ms",
        "1800000",
        Int,
        AtLeast(1),
        "Largest session timeout a member may ask for.",
    ),
    def(
        "group.consumer.heartbeat.interval.ms",
        "5000",
        Int,
        AtLeast(1),
        "How often KIP-848 consumer group members heartbeat.",
    ),
    def(
        "group.consumer.session.timeout.ms",
        "45000",
        Int,
        AtLeast(1),
        "How long a KIP-848 consumer group member may go without a heartbeat.",
    ),
    def(
        "group.max.size",
        "2147483647",
        Int,
        AtLeast(1),
        "Members a group may hold.",
    ),
    def(
        "log.retention.minutes",
        "",
        Int,
        Any,
        "Minutes to keep a segment, if log.retention.ms is not set.",
    ),
];

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Where a config's value came from, as DescribeConfigs v1+ reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    DynamicTopic = 1,
    DynamicBroker = 2,
    DynamicDefaultBroker = 3,
    StaticBroker = 4,
    Default = 5,
}

/// One broker setting as DescribeConfigs reports it.
pub struct DescribedConfig {
    pub name: &'static str,
    /// Every value it has, the effective one first: Kafka's "synonyms".
    pub synonyms: Vec<(String, String, ConfigSource)>,
    pub kind: ConfigType,
    pub doc: &'static str,
    pub read_only: bool,
}

#[derive(Clone, Debug)]
pub struct BrokerConfig {
    pub node_id: i32,
    pub process_roles: ProcessRoles,
    /// The client (PLAINTEXT) listener; a controller-only node has none.
    pub listener: Option<std::net::SocketAddr>,
    /// The controller quorum's settings, under KRaft's names.
    pub quorum: QuorumConfig,
    pub advertised_host: String,
    pub advertised_port: i32,
    pub rack: Option<String>,
    pub broker_heartbeat_interval_ms: u64,
    pub broker_session_timeout_ms: u64,
    pub auto_leader_rebalance_enable: bool,
    pub leader_imbalance_check_interval_ms: u64,
    pub replica_lag_time_max_ms: i64,
    pub replica_fetch_wait_max_ms: i32,
    pub replica_fetch_max_bytes: i32,
    pub log_dir: PathBuf,
    pub num_partitions: i32,
    pub default_replication_factor: i16,
    pub auto_create_topics_enable: bool,
    pub log_cleaner_enable: bool,
    pub socket_request_max_bytes: u32,
    pub connections_max_idle_ms: u64,
    pub producer_id_expiration_ms: i64,
    pub log_retention_check_interval_ms: u64,
    pub log_flush_offset_checkpoint_interval_ms: u64,
    pub fetch_max_bytes: i32,
    pub fetch_session_cache_slots: usize,
    pub offsets_topic_replication_factor: i16,
    pub offsets_topic_segment_bytes: u32,
    pub group: GroupConfig,
    pub transaction_state_log_replication_factor: i16,
    pub transaction_state_log_min_isr: i32,
    pub transaction_state_log_segment_bytes: u32,
    pub txn: TxnConfig,
    /// Every setting given explicitly (file or override), after normalisation.
    explicit: BTreeMap<String, String>,
}

/// `process.roles`: whether this node serves clients and hosts partitions
/// (broker), votes in the metadata quorum and may become the active
/// controller (controller), or both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessRoles {
    pub broker: bool,
    pub controller: bool,
}

impl ProcessRoles {
    fn parse(value: &str) -> Result<Self, ConfigError> {
        let mut roles = ProcessRoles {
            broker: false,
            controller: false,
        };
        for role in value.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            let seen = match role {
                "broker" => std::mem::replace(&mut roles.broker, true),
                "controller" => std::mem::replace(&mut roles.controller, true),
                _ => {
                    return Err(ConfigError(format!(
                        "process.roles: unknown role {role:?} (broker, controller)"
                    )))
                }
            };
            if seen {
                return Err(ConfigError(format!("process.roles: {role} given twice")));
            }
        }
        if !roles.broker && !roles.controller {
            return Err(ConfigError("process.roles names no role".into()));
        }
        Ok(roles)
    }

    /// Kafka's rules: a controller is one of the voters and a node that is
    /// only a broker is not (it follows the metadata log as an observer).
    fn check_voters(
        self,
        node_id: i32,
        voters: &BTreeMap<i32, String>,
        controller_name: &str,
    ) -> Result<(), ConfigError> {
        let voter = voters.contains_key(&node_id);
        if self.controller && !voter {
            return Err(ConfigError(format!(
                "process.roles includes controller, so node.id {node_id} must be one of \
                 controller.quorum.voters"
            )));
        }
        if !self.controller && voter {
            return Err(ConfigError(format!(
                "process.roles is broker alone, so node.id {node_id} must not be one of \
                 controller.quorum.voters; give it a {controller_name} listener for the \
                 voters to reach it"
            )));
        }
        Ok(())
    }
}

fn resolve(host: &str, port: u16) -> Result<std::net::SocketAddr, ConfigError> {
    format!("{host}:{port}")
        .parse()
        .or_else(|_| {
            std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
                .ok()
                .and_then(|mut a| a.next())
                .ok_or(())
        })
        .map_err(|_| ConfigError(format!("cannot resolve listener host {host:?}")))
}

/// The `host:port` of the listener called `name` in a `listeners`-shaped
/// list (`PLAINTEXT://host:port,CONTROLLER://host:port`), if present.
fn find_listener(listeners: &str, name: &str) -> Result<Option<(String, u16)>, ConfigError> {
    for listener in listeners.split(',').filter(|l| !l.trim().is_empty()) {
        let (listener_name, _) = listener
            .trim()
            .split_once("://")
            .ok_or_else(|| ConfigError(format!("listener {listener:?} is not NAME://host:port")))?;
        if listener_name == name {
            return parse_listener(listener, name).map(Some);
        }
    }
    Ok(None)
}

fn parse_listener(listener: &str, name: &str) -> Result<(String, u16), ConfigError> {
    let err = || ConfigError(format!("listener {listener:?} is not {name}://host:port"));
    let rest = listener
        .trim()
        .strip_prefix(name)
        .and_then(|r| r.strip_prefix("://"))
        .ok_or_else(err)?;
    let (host, port) = rest.rsplit_once(':').ok_or_else(err)?;
    let port = port.parse().map_err(|_| err())?;
    let host = if host.is_empty() { "0.0.0.0" } else { host };
    Ok((host.trim_matches(['[', ']']).to_string(), port))
}

impl BrokerConfig {
    /// Builds the configuration from explicitly given settings. Unknown names
    /// are reported back so the caller can warn, as Kafka does.
    pub fn from_properties(
        mut explicit: BTreeMap<String, String>,
    ) -> Result<(Self, Vec<String>), ConfigError> {
        // Kafka's precedence: log.retention.ms, then .minutes, then .hours.
        if !explicit.contains_key("log.retention.ms") {
            let ms = if let Some(m) = explicit.get("log.retention.minutes") {
                Some(parse_num::<i64>("log.retention.minutes", m)? * 60_000)
            } else if let Some(h) = explicit.get("log.retention.hours") {
                Some(parse_num::<i64>("log.retention.hours", h)? * 3_600_000)
            } else {
                None
            };
            if let Some(ms) = ms {
                explicit.insert("log.retention.ms".into(), ms.to_string());
            }
        }
        let mut unknown = Vec::new();
        for (name, value) in &explicit {
            if let Some(d) = BROKER_CONFIGS
                .iter()
                .chain(DYNAMIC_BROKER_CONFIGS)
                .find(|d| d.name == name)
            {
                if !value.is_empty() {
                    validate_value(d.name, d.kind, d.validator, value).map_err(ConfigError)?;
                }
            } else if let Some(d) = TOPIC_CONFIGS.iter().find(|d| d.broker_synonym == name) {
                validate_value(d.broker_synonym, d.kind, d.validator, value)
                    .map_err(ConfigError)?;
            } else {
                unknown.push(name.clone());
            }
        }
        let get = |name: &str| -> String {
            explicit
                .get(name)
                .cloned()
                .or_else(|| {
                    BROKER_CONFIGS
                        .iter()
                        .chain(DYNAMIC_BROKER_CONFIGS)
                        .find(|d| d.name == name)
                        .map(|d| d.default.to_string())
                })
                .unwrap_or_default()
        };
        let controller_name = get("controller.listener.names");
        let controller_name = controller_name.split(',').next().unwrap_or("").trim();
        for listener in get("listeners").split(',').filter(|l| !l.trim().is_empty()) {
            let name = listener.trim().split_once("://").map(|(n, _)| n);
            if name != Some("PLAINTEXT") && name != Some(controller_name) {
                return Err(ConfigError(format!(
                    "listener {listener:?}: only PLAINTEXT and {controller_name} listeners are supported"
                )));
            }
        }
        let process_roles = ProcessRoles::parse(&get("process.roles"))?;
        let plaintext = find_listener(&get("listeners"), "PLAINTEXT")?;
        let (listener, advertised_host, advertised_port) = match (process_roles.broker, plaintext) {
            (true, Some((host, port))) => {
                let listener = resolve(&host, port)?;
                let advertised = get("advertised.listeners");
                let (advertised_host, advertised_port) = if advertised.is_empty() {
                    let host = if host == "0.0.0.0" {
                        "127.0.0.1".to_string()
                    } else {
                        host
                    };
                    (host, port)
                } else {
                    find_listener(&advertised, "PLAINTEXT")?.ok_or_else(|| {
                        ConfigError("advertised.listeners has no PLAINTEXT listener".into())
                    })?
                };
                (Some(listener), advertised_host, advertised_port)
            }
            (true, None) => {
                return Err(ConfigError(
                    "listeners has no PLAINTEXT listener, which process.roles=broker needs".into(),
                ))
            }
            // Kafka's rule: clients never reach a controller-only node, so
            // it has no client listener to advertise.
            (false, Some(_)) => {
                return Err(ConfigError(format!(
                    "listeners may only hold the {controller_name} listener when \
                     process.roles=controller"
                )))
            }
            (false, None) => (None, String::new(), 0),
        };
        let node_id = setting(&get, "node.id")?;
        // A lone voter needs no address others can reach: any free port
        // does. A controller-only node is reached at nothing else.
        let controller_listener = match find_listener(&get("listeners"), controller_name)? {
            Some((host, port)) => format!("{host}:{port}"),
            None if process_roles.broker => "127.0.0.1:0".to_string(),
            None => {
                return Err(ConfigError(format!(
                    "listeners has no {controller_name} listener, which \
                     process.roles=controller needs"
                )))
            }
        };
        let voters = match get("controller.quorum.voters").trim() {
            "" if !process_roles.controller => {
                return Err(ConfigError(
                    "process.roles is broker alone, so controller.quorum.voters must name \
                     the controllers"
                        .into(),
                ))
            }
            "" => BTreeMap::from([(node_id, controller_listener.clone())]),
            voters => parse_voters(voters).map_err(|e| ConfigError(e.to_string()))?,
        };
        process_roles.check_voters(node_id, &voters, controller_name)?;
        let rack = Some(get("broker.rack")).filter(|r| !r.is_empty());
        let log_dir = PathBuf::from(
            get("log.dirs")
                .split(',')
                .next()
                .unwrap_or("./keel-data")
                .trim(),
        );
        let mut quorum = QuorumConfig::new(node_id, voters, log_dir.clone());
        quorum.listener = controller_listener;
        quorum.election_timeout_ms = setting(&get, "controller.quorum.election.timeout.ms")?;
        quorum.fetch_timeout_ms = setting(&get, "controller.quorum.fetch.timeout.ms")?;
        quorum.request_timeout_ms = setting(&get, "controller.quorum.request.timeout.ms")?;
        quorum.max_record_bytes_between_snapshots =
            setting(&get, "metadata.log.max.record.bytes.between.snapshots")?;
        quorum.connections_max_idle_ms = setting(&get, "connections.max.idle.ms")?;
        let config = BrokerConfig {
            node_id,
            process_roles,
            listener,
            quorum,
            advertised_host,
            advertised_port: advertised_port as i32,
            rack,
            log_dir,
            broker_heartbeat_interval_ms: setting(&get, "broker.heartbeat.interval.ms")?,
            broker_session_timeout_ms: setting(&get, "broker.session.timeout.ms")?,
            auto_leader_rebalance_enable: get("auto.leader.rebalance.enable")
                .eq_ignore_ascii_case("true"),
            leader_imbalance_check_interval_ms: setting::<u64>(
                &get,
                "leader.imbalance.check.interval.seconds",
            )?
            .saturating_mul(1000),
            replica_lag_time_max_ms: setting(&get, "replica.lag.time.max.ms")?,
            replica_fetch_wait_max_ms: setting(&get, "replica.fetch.wait.max.ms")?,
            replica_fetch_max_bytes: setting(&get, "replica.fetch.max.bytes")?,
            num_partitions: setting(&get, "num.partitions")?,
            default_replication_factor: setting(&get, "default.replication.factor")?,
            auto_create_topics_enable: get("auto.create.topics.enable")
                .eq_ignore_ascii_case("true"),
            log_cleaner_enable: get("log.cleaner.enable").eq_ignore_ascii_case("true"),
            socket_request_max_bytes: setting(&get, "socket.request.max.bytes")?,
            connections_max_idle_ms: setting(&get, "connections.max.idle.ms")?,
            producer_id_expiration_ms: setting(&get, "producer.id.expiration.ms")?,
            log_retention_check_interval_ms: setting(&get, "log.retention.check.interval.ms")?,
            log_flush_offset_checkpoint_interval_ms: setting(
                &get,
                "log.flush.offset.checkpoint.interval.ms",
            )?,
            fetch_max_bytes: setting(&get, "fetch.max.bytes")?,
            fetch_session_cache_slots: setting(&get, "max.incremental.fetch.session.cache.slots")?,
            offsets_topic_segment_bytes: setting(&get, "offsets.topic.segment.bytes")?,
            offsets_topic_replication_factor: setting(&get, "offsets.topic.replication.factor")?,
            group: GroupConfig {
                offsets_topic_partitions: setting(&get, "offsets.topic.num.partitions")?,
                group_min_session_timeout_ms: setting(&get, "group.min.session.timeout.ms")?,
                group_max_session_timeout_ms: setting(&get, "group.max.session.timeout.ms")?,
                group_initial_rebalance_delay_ms: setting(
                    &get,
                    "group.initial.rebalance.delay.ms",
                )?,
                group_max_size: setting(&get, "group.max.size")?,
                offsets_retention_ms: setting::<i64>(&get, "offsets.retention.minutes")? * 60_000,
                offset_metadata_max_bytes: setting(&get, "offset.metadata.max.bytes")?,
                consumer_heartbeat_interval_ms: setting(
                    &get,
                    "group.consumer.heartbeat.interval.ms",
                )?,
                consumer_session_timeout_ms: setting(&get, "group.consumer.session.timeout.ms")?,
            },
            transaction_state_log_replication_factor: setting(
                &get,
                "transaction.state.log.replication.factor",
            )?,
            transaction_state_log_min_isr: setting(&get, "transaction.state.log.min.isr")?,
            transaction_state_log_segment_bytes: setting(
                &get,
                "transaction.state.log.segment.bytes",
            )?,
            txn: TxnConfig {
                transaction_state_partitions: setting(
                    &get,
                    "transaction.state.log.num.partitions",
                )?,
                offsets_topic_partitions: setting(&get, "offsets.topic.num.partitions")?,
                transaction_max_timeout_ms: setting(&get, "transaction.max.timeout.ms")?,
                transactional_id_expiration_ms: setting(&get, "transactional.id.expiration.ms")?,
                abort_timed_out_transaction_cleanup_interval_ms: setting(
                    &get,
                    "transaction.abort.timed.out.transaction.cleanup.interval.ms",
                )?,
                remove_expired_transaction_cleanup_interval_ms: setting(
                    &get,
                    "transaction.remove.expired.transaction.cleanup.interval.ms",
                )?,
            },
            explicit,
        };
        Ok((config, unknown))
    }

    /// Every broker setting with its values and sources (DescribeConfigs on
    /// this broker). Dynamic ones are looked up in the image first.
    pub fn describe(&self, image: &MetadataImage) -> Vec<DescribedConfig> {
        let static_only = BROKER_CONFIGS
            .iter()
            .map(|d| (d.name, d.default, d.kind, d.doc));
        let dynamic = DYNAMIC_BROKER_CONFIGS
            .iter()
            .map(|d| (d.name, d.default, d.kind, d.doc));
        let synonyms = TOPIC_CONFIGS
            .iter()
            .filter(|d| !BROKER_CONFIGS.iter().any(|b| b.name == d.broker_synonym))
            .map(|d| (d.broker_synonym, d.default, d.kind, d.doc));
        static_only
            .chain(dynamic)
            .chain(synonyms)
            .map(|(name, default, kind, doc)| DescribedConfig {
                name,
                synonyms: self.broker_config_synonyms(image, name, default),
                kind,
                doc,
                read_only: dynamic_broker_config(name).is_none(),
            })
            .collect()
    }

    /// A broker setting's values, effective first: this broker's dynamic
    /// value, the cluster-wide dynamic default, the static setting, the
    /// default. Borrowed, so finding the effective value allocates nothing.
    fn broker_config_layers<'a>(
        &'a self,
        image: &'a MetadataImage,
        name: &'a str,
        default: &'a str,
    ) -> impl Iterator<Item = (&'a str, ConfigSource)> + 'a {
        let dynamic = dynamic_broker_config(name).is_some();
        let this_broker = image
            .broker_configs
            .get(&self.node_id)
            .and_then(|c| c.get(name))
            .filter(|_| dynamic)
            .map(|v| (v.as_str(), ConfigSource::DynamicBroker));
        let cluster_default = image
            .broker_default_configs
            .get(name)
            .filter(|_| dynamic)
            .map(|v| (v.as_str(), ConfigSource::DynamicDefaultBroker));
        let static_setting = self
            .explicit
            .get(name)
            .map(|v| (v.as_str(), ConfigSource::StaticBroker));
        this_broker
            .into_iter()
            .chain(cluster_default)
            .chain(static_setting)
            .chain(std::iter::once((default, ConfigSource::Default)))
    }

    fn broker_config_synonyms(
        &self,
        image: &MetadataImage,
        name: &str,
        default: &str,
    ) -> Vec<(String, String, ConfigSource)> {
        self.broker_config_layers(image, name, default)
            .map(|(value, source)| (name.to_string(), value.to_string(), source))
            .collect()
    }

    /// The value a topic config takes for this topic, with every source it
    /// has (the effective one first): Kafka's "synonyms".
    pub fn topic_config_synonyms(
        &self,
        def: &TopicConfigDef,
        image: &MetadataImage,
        topic_overrides: &BTreeMap<String, String>,
    ) -> Vec<(String, String, ConfigSource)> {
        let mut out = Vec::with_capacity(5);
        if let Some(v) = topic_overrides.get(def.name) {
            out.push((def.name.to_string(), v.clone(), ConfigSource::DynamicTopic));
        }
        out.extend(self.broker_config_synonyms(image, def.broker_synonym, def.default));
        out
    }

    /// The active controller's defaults for new topics and elections; the
    /// dynamic cluster default of unclean election is applied over it.
    pub fn topic_defaults(&self) -> TopicDefaults {
        TopicDefaults {
            num_partitions: self.num_partitions,
            replication_factor: self.default_replication_factor,
            unclean_leader_election_enable: self
                .explicit
                .get("unclean.leader.election.enable")
                .is_some_and(|v| v.eq_ignore_ascii_case("true")),
        }
    }

    /// The effective value of one topic config.
    pub fn topic_config<'a>(
        &'a self,
        name: &str,
        image: &'a MetadataImage,
        topic_overrides: &'a BTreeMap<String, String>,
    ) -> &'a str {
        let def = topic_config_def(name).expect("topic config names are compile-time constants");
        match topic_overrides.get(def.name) {
            Some(v) => v,
            None => self.effective(image, def.broker_synonym, def.default),
        }
    }

    /// The effective value of a dynamic broker setting.
    pub fn dynamic_broker_config<'a>(&'a self, image: &'a MetadataImage, name: &str) -> &'a str {
        let def = DYNAMIC_BROKER_CONFIGS
            .iter()
            .find(|d| d.name == name)
            .expect("dynamic broker config names are compile-time constants");
        self.effective(image, def.name, def.default)
    }

    fn effective<'a>(
        &'a self,
        image: &'a MetadataImage,
        name: &'a str,
        default: &'a str,
    ) -> &'a str {
        self.broker_config_layers(image, name, default)
            .next()
            .map_or(default, |(value, _)| value)
    }

    /// The effective value of a numeric dynamic broker setting.
    pub fn dynamic_broker_config_num(&self, image: &MetadataImage, name: &str) -> u64 {
        // Validated on the way in; a bad value would be a bug, not input.
        self.dynamic_broker_config(image, name)
            .trim()
            .parse()
            .unwrap_or(0)
    }

    /// The storage settings for one topic's partitions.
    pub fn log_config(&self, image: &MetadataImage, topic: &TopicImage) -> LogConfig {
        self.log_config_for(image, &topic.configs)
    }

    pub fn log_config_for(
        &self,
        image: &MetadataImage,
        overrides: &BTreeMap<String, String>,
    ) -> LogConfig {
        // Values were validated on the way in (config file or metadata
        // record), so a parse failure here would be a bug: fall back to the
        // default rather than panic on a path clients can reach.
        let num = |name: &str| -> i64 {
            self.topic_config(name, image, overrides)
                .trim()
                .parse()
                .unwrap_or_else(|_| topic_config_def(name).unwrap().default.parse().unwrap())
        };
        LogConfig {
            segment_bytes: num("segment.bytes") as u32,
            segment_ms: num("segment.ms"),
            segment_index_bytes: num("segment.index.bytes") as u32,
            index_interval_bytes: num("index.interval.bytes") as u32,
            retention_ms: num("retention.ms"),
            retention_bytes: num("retention.bytes"),
            max_message_bytes: num("max.message.bytes") as u32,
            message_timestamp_type: if self.topic_config("message.timestamp.type", image, overrides)
                == "LogAppendTime"
            {
                TimestampType::LogAppendTime
            } else {
                TimestampType::CreateTime
            },
            flush_messages: num("flush.messages"),
            flush_ms: num("flush.ms"),
            cleanup_policy: CleanupPolicy::parse(self.topic_config(
                "cleanup.policy",
                image,
                overrides,
            ))
            .unwrap_or_default(),
            delete_retention_ms: num("delete.retention.ms"),
            min_compaction_lag_ms: num("min.compaction.lag.ms"),
            max_compaction_lag_ms: num("max.compaction.lag.ms"),
            min_cleanable_dirty_ratio: self
                .topic_config("min.cleanable.dirty.ratio", image, overrides)
                .trim()
                .parse()
                .unwrap_or(0.5),
            ..LogConfig::default()
        }
    }

    pub fn min_insync_replicas(
        &self,
        image: &MetadataImage,
        overrides: &BTreeMap<String, String>,
    ) -> usize {
        self.topic_config("min.insync.replicas", image, overrides)
            .parse()
            .unwrap_or(1)
    }
}

/// A numeric setting by name, through the lookup `from_properties` uses.
fn setting<T: std::str::FromStr>(
    get: &dyn Fn(&str) -> String,
    name: &str,
) -> Result<T, ConfigError> {
    parse_num(name, &get(name))
}

fn parse_num<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, ConfigError> {
    value
        .trim()
        .parse()
        .map_err(|_| ConfigError(format!("invalid value {value:?} for {name}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_make_a_working_single_node() {
        let (c, unknown) = BrokerConfig::from_properties(BTreeMap::new()).unwrap();
        assert!(unknown.is_empty());
        assert_eq!(c.node_id, 1);
        assert_eq!(c.listener.map(|l| l.port()), Some(9092));
        assert_eq!(c.advertised_host, "127.0.0.1");
        assert_eq!(c.log_dir, PathBuf::from("./keel-data"));
        let log = c.log_config_for(&MetadataImage::empty(), &BTreeMap::new());
        assert_eq!(log.retention_ms, 604_800_000);
        assert_eq!(log.segment_bytes, 1 << 30);
    }

    #[test]
    fn topic_overrides_beat_broker_settings_beat_defaults() {
        let (c, _) = BrokerConfig::from_properties(props(&[("log.retention.hours", "1")])).unwrap();
        let mut image = MetadataImage::empty();
        assert_eq!(
            c.topic_config("retention.ms", &image, &BTreeMap::new()),
            "3600000"
        );
        let overrides = props(&[("retention.ms", "5")]);
        assert_eq!(c.topic_config("retention.ms", &image, &overrides), "5");
        let resources = [
            keel_metadata::ConfigResource::Broker(1),
            keel_metadata::ConfigResource::BrokerDefault,
        ];
        for (offset, resource) in resources.into_iter().enumerate() {
            image
                .apply(
                    offset as i64,
                    &keel_metadata::MetadataRecord::Config {
                        resource,
                        name: "log.retention.ms".into(),
                        value: Some(offset.to_string()),
                    },
                )
                .unwrap();
        }
        let def = topic_config_def("retention.ms").unwrap();
        let sources: Vec<(String, ConfigSource)> = c
            .topic_config_synonyms(def, &image, &overrides)
            .into_iter()
            .map(|(_, value, source)| (value, source))
            .collect();
        assert_eq!(
            sources,
            [
                ("5".into(), ConfigSource::DynamicTopic),
                ("0".into(), ConfigSource::DynamicBroker),
                ("1".into(), ConfigSource::DynamicDefaultBroker),
                ("3600000".into(), ConfigSource::StaticBroker),
                ("604800000".into(), ConfigSource::Default),
            ]
        );
        // Without a topic override the broker's dynamic value wins.
        assert_eq!(
            c.topic_config("retention.ms", &image, &BTreeMap::new()),
            "0"
        );
    }

    #[test]
    fn bad_values_and_unknown_names() {
        assert!(BrokerConfig::from_properties(props(&[("num.partitions", "zero")])).is_err());
        assert!(BrokerConfig::from_properties(props(&[("listeners", "127.0.0.1:9092")])).is_err());
        let (_, unknown) = BrokerConfig::from_properties(props(&[("no.such", "1")])).unwrap();
        assert_eq!(unknown, vec!["no.such".to_string()]);
    }

    #[test]
    fn process_roles_follow_kafkas_rules() {
        let voters = "1@127.0.0.1:9192,2@127.0.0.1:9193,3@127.0.0.1:9194";
        let node = |id: &str, roles: &str, listeners: &str| {
            BrokerConfig::from_properties(props(&[
                ("node.id", id),
                ("process.roles", roles),
                ("listeners", listeners),
                ("controller.quorum.voters", voters),
            ]))
            .map(|(c, _)| c)
        };
        let broker = node("4", "broker", "PLAINTEXT://127.0.0.1:9095").unwrap();
        assert!(broker.process_roles.broker && !broker.process_roles.controller);
        let controller = node("1", "controller", "CONTROLLER://127.0.0.1:9192").unwrap();
        assert_eq!(controller.listener, None);
        assert!(!controller.process_roles.broker);
        let combined = node(
            "2",
            "controller, broker",
            "PLAINTEXT://127.0.0.1:9093,CONTROLLER://127.0.0.1:9193",
        )
        .unwrap();
        assert!(combined.process_roles.broker && combined.process_roles.controller);

        // A broker alone is not a voter; a controller is.
        assert!(node("1", "broker", "PLAINTEXT://127.0.0.1:9092").is_err());
        assert!(node("4", "controller", "CONTROLLER://127.0.0.1:9195").is_err());
        // Clients never reach a controller-only node.
        assert!(node(
            "1",
            "controller",
            "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9192"
        )
        .is_err());
        assert!(node("1", "controller", "").is_err());
        assert!(node("4", "broker", "CONTROLLER://127.0.0.1:9195").is_err());
        for roles in ["", "broker,broker", "leader"] {
            assert!(
                node("1", roles, "PLAINTEXT://127.0.0.1:9092").is_err(),
                "{roles:?}"
            );
        }
        // Without voters a node is its own quorum, which a broker alone cannot be.
        assert!(BrokerConfig::from_properties(props(&[("process.roles", "broker")])).is_err());
    }
}
