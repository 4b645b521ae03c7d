//! The configuration catalogue: Kafka's topic config names, the broker
//! setting each one defaults to, its default, and how a value is validated;
//! and which broker settings may change at run time (AlterConfigs).
//!
//! Only configs Keel actually honours are listed. A name that is not here is
//! refused with INVALID_CONFIG, as Kafka refuses unknown topic configs, rather
//! than stored and silently ignored.

/// How Kafka reports a config's type in DescribeConfigs (v3+).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigType {
    Boolean = 1,
    String = 2,
    Int = 3,
    Short = 4,
    Long = 5,
    Double = 6,
    List = 7,
    Class = 8,
    Password = 9,
}

#[derive(Clone, Copy, Debug)]
pub enum Validator {
    /// Any value of the type.
    Any,
    /// A number at least this large.
    AtLeast(i64),
    /// A number in this inclusive range.
    Between(i64, i64),
    /// One of these strings, matched exactly.
    OneOf(&'static [&'static str]),
    /// A number in [0, 1].
    Fraction,
}

#[derive(Debug)]
pub struct TopicConfigDef {
    pub name: &'static str,
    /// The broker setting that supplies the default when the topic has no override.
    pub broker_synonym: &'static str,
    pub default: &'static str,
    pub kind: ConfigType,
    pub validator: Validator,
    pub doc: &'static str,
}

const LONG_MAX: &str = "9223372036854775807";

pub const TOPIC_CONFIGS: &[TopicConfigDef] = &[
    TopicConfigDef {
        name: "cleanup.policy",
        broker_synonym: "log.cleanup.policy",
        default: "delete",
        kind: ConfigType::List,
        validator: Validator::OneOf(&["delete", "compact"]),
        doc: "How old segments are removed: by retention (delete), by keeping the latest record of each key (compact), both, or neither (an empty list).",
    },
    TopicConfigDef {
        name: "compression.type",
        broker_synonym: "compression.type",
        default: "producer",
        kind: ConfigType::String,
        // Batches are stored exactly as produced; recompressing on the broker
        // would put decompression on the hot path.
        validator: Validator::OneOf(&["producer"]),
        doc: "Batches keep the codec the producer chose.",
    },
    TopicConfigDef {
        name: "delete.retention.ms",
        broker_synonym: "log.cleaner.delete.retention.ms",
        default: "86400000",
        kind: ConfigType::Long,
        validator: Validator::AtLeast(0),
        doc: "How long a tombstone outlives the clean that first kept it, on compacted topics.",
    },
    TopicConfigDef {
        name: "flush.messages",
        broker_synonym: "log.flush.interval.messages",
        default: LONG_MAX,
        kind: ConfigType::Long,
        validator: Validator::AtLeast(1),
        doc: "Records appended between forced fsyncs of the log.",
    },
    TopicConfigDef {
        name: "flush.ms",
        broker_synonym: "log.flush.interval.ms",
        default: LONG_MAX,
        kind: ConfigType::Long,
        validator: Validator::AtLeast(0),
        doc: "Milliseconds between forced fsyncs of the log.",
    },
    TopicConfigDef {
        name: "index.interval.bytes",
        broker_synonym: "log.index.interval.bytes",
        default: "4096",
        kind: ConfigType::Int,
        validator: Validator::AtLeast(0),
        doc: "Bytes of log between two offset index entries.",
    },
    TopicConfigDef {
        name: "max.message.bytes",
        broker_synonym: "message.max.bytes",
        default: "1048588",
        kind: ConfigType::Int,
        validator: Validator::AtLeast(0),
        doc: "Largest record batch the topic accepts.",
    },
    TopicConfigDef {
        name: "max.compaction.lag.ms",
        broker_synonym: "log.cleaner.max.compaction.lag.ms",
        default: LONG_MAX,
        kind: ConfigType::Long,
        validator: Validator::AtLeast(1),
        doc: "Longest a record stays uncompacted, on compacted topics.",
    },
    TopicConfigDef {
        name: "message.timestamp.type",
        broker_synonym: "log.message.timestamp.type",
        default: "CreateTime",
        kind: ConfigType::String,
        validator: Validator::OneOf(&["CreateTime", "LogAppendTime"]),
        doc: "Whether record timestamps are the producer's or the broker's append time.",
    },
    TopicConfigDef {
        name: "min.cleanable.dirty.ratio",
        broker_synonym: "log.cleaner.min.cleanable.ratio",
        default: "0.5",
        kind: ConfigType::Double,
        validator: Validator::Fraction,
        doc: "Share of a compacted log that must be uncleaned before the cleaner takes it.",
    },
    TopicConfigDef {
        name: "min.compaction.lag.ms",
        broker_synonym: "log.cleaner.min.compaction.lag.ms",
        default: "0",
        kind: ConfigType::Long,
        validator: Validator::AtLeast(0),
        doc: "Shortest time a record stays uncompacted, on compacted topics.",
    },
    TopicConfigDef {
        name: "min.insync.replicas",
        broker_synonym: "min.insync.replicas",
        default: "1",
        kind: ConfigType::Int,
        validator: Validator::AtLeast(1),
        doc: "In-sync replicas an acks=all write needs.",
    },
    TopicConfigDef {
        name: "retention.bytes",
        broker_synonym: "log.retention.bytes",
        default: "-1",
        kind: ConfigType::Long,
        validator: Validator::Any,
        doc: "Partition size above which the oldest segments are deleted; -1 for no limit.",
    },
    TopicConfigDef {
        name: "retention.ms",
        broker_synonym: "log.retention.ms",
        default: "604800000",
        kind: ConfigType::Long,
        validator: Validator::AtLeast(-1),
        doc: "Age after which a segment is deleted; -1 for no limit.",
    },
    TopicConfigDef {
        name: "segment.bytes",
        broker_synonym: "log.segment.bytes",
        default: "1073741824",
        kind: ConfigType::Int,
        validator: Validator::Between(14, i32::MAX as i64),
        doc: "Size at which the active segment is rolled.",
    },
    TopicConfigDef {
        name: "segment.index.bytes",
        broker_synonym: "log.index.size.max.bytes",
        default: "10485760",
        kind: ConfigType::Int,
        validator: Validator::AtLeast(4),
        doc: "Offset index size at which the active segment is rolled.",
    },
    TopicConfigDef {
        name: "segment.ms",
        broker_synonym: "log.roll.ms",
        default: "604800000",
        kind: ConfigType::Long,
        validator: Validator::AtLeast(1),
        doc: "Age at which the active segment is rolled.",
    },
    TopicConfigDef {
        name: "unclean.leader.election.enable",
        broker_synonym: "unclean.leader.election.enable",
        default: "false",
        kind: ConfigType::Boolean,
        validator: Validator::Any,
        doc: "Let an out-of-sync replica lead when no in-sync one is alive, losing what it lacks.",
    },
];

pub fn topic_config_def(name: &str) -> Option<&'static TopicConfigDef> {
    TOPIC_CONFIGS.iter().find(|d| d.name == name)
}

/// One broker setting: its Kafka name, default, type and documentation.
#[derive(Debug)]
pub struct BrokerConfigDef {
    pub name: &'static str,
    pub default: &'static str,
    pub kind: ConfigType,
    pub validator: Validator,
    pub doc: &'static str,
}

/// Broker settings that change at run time, per broker or cluster-wide
/// (Kafka's dynamic broker configs), besides the broker synonyms of topic
/// configs (`log.retention.ms` and friends), which are all dynamic too.
pub const DYNAMIC_BROKER_CONFIGS: &[BrokerConfigDef] = &[
    BrokerConfigDef {
        name: "log.cleaner.threads",
        default: "1",
        kind: ConfigType::Int,
        validator: Validator::AtLeast(1),
        doc: "Logs cleaned at once.",
    },
    BrokerConfigDef {
        name: "log.cleaner.dedupe.buffer.size",
        default: "134217728",
        kind: ConfigType::Long,
        // Kafka's floor: each thread's offset map must hold real work.
        validator: Validator::AtLeast(1024 * 1024),
        doc: "Memory for the cleaners' offset maps, shared among the threads.",
    },
    BrokerConfigDef {
        name: "log.cleaner.io.buffer.size",
        default: "524288",
        kind: ConfigType::Int,
        validator: Validator::AtLeast(0),
        doc: "Read and write buffers of the cleaners, shared among the threads.",
    },
    BrokerConfigDef {
        name: "log.cleaner.io.max.bytes.per.second",
        default: "1.7976931348623157E308",
        kind: ConfigType::Double,
        validator: Validator::AtLeast(1),
        doc: "Cap on the cleaners' combined read and write rate.",
    },
    BrokerConfigDef {
        name: "log.cleaner.backoff.ms",
        default: "15000",
        kind: ConfigType::Long,
        validator: Validator::AtLeast(0),
        doc: "How long the cleaner sleeps when no log needs cleaning.",
    },
];

/// Whether AlterConfigs may change this broker setting.
pub fn dynamic_broker_config(name: &str) -> Option<(ConfigType, Validator)> {
    DYNAMIC_BROKER_CONFIGS
        .iter()
        .find(|d| d.name == name)
        .map(|d| (d.kind, d.validator))
        .or_else(|| {
            TOPIC_CONFIGS
                .iter()
                .find(|d| d.broker_synonym == name)
                .map(|d| (d.kind, d.validator))
        })
}

/// Checks one dynamic broker config assignment, as Kafka's broker does.
pub fn validate_dynamic_broker_config(name: &str, value: &str) -> Result<(), String> {
    let (kind, validator) = dynamic_broker_config(name)
        .ok_or_else(|| format!("Cannot update these configs dynamically: Set({name})"))?;
    validate_value(name, kind, validator, value)
}

/// The type of a topic config or dynamic broker config, for APPEND/SUBTRACT.
pub fn config_kind(name: &str) -> Option<ConfigType> {
    topic_config_def(name)
        .map(|d| d.kind)
        .or_else(|| dynamic_broker_config(name).map(|(kind, _)| kind))
}

/// Checks one topic config assignment; the message is what a Kafka client shows.
pub fn validate_topic_config(name: &str, value: &str) -> Result<(), String> {
    let def = topic_config_def(name).ok_or_else(|| format!("Unknown topic config name: {name}"))?;
    validate_value(def.name, def.kind, def.validator, value)
}

pub fn validate_value(
    name: &str,
    kind: ConfigType,
    validator: Validator,
    value: &str,
) -> Result<(), String> {
    let invalid = |why: String| format!("Invalid value {value} for configuration {name}: {why}");
    let number = match kind {
        ConfigType::Int => Some(
            value
                .trim()
                .parse::<i32>()
                .map(i64::from)
                .map_err(|_| invalid("Not a number of type INT".into()))?,
        ),
        ConfigType::Long => Some(
            value
                .trim()
                .parse::<i64>()
                .map_err(|_| invalid("Not a number of type LONG".into()))?,
        ),
        ConfigType::Short => Some(
            value
                .trim()
                .parse::<i16>()
                .map(i64::from)
                .map_err(|_| invalid("Not a number of type SHORT".into()))?,
        ),
        ConfigType::Double => {
            let n: f64 = value
                .trim()
                .parse()
                .map_err(|_| invalid("Not a number of type DOUBLE".into()))?;
            match validator {
                Validator::Fraction if !(0.0..=1.0).contains(&n) => {
                    return Err(invalid("Value must be in [0, 1]".into()))
                }
                Validator::AtLeast(min) if n.is_nan() || n < min as f64 => {
                    return Err(invalid(format!("Value must be at least {min}")))
                }
                _ => {}
            }
            None
        }
        ConfigType::Boolean => {
            if !value.eq_ignore_ascii_case("true") && !value.eq_ignore_ascii_case("false") {
                return Err(invalid("Expected value to be either true or false".into()));
            }
            None
        }
        _ => None,
    };
    match (validator, number) {
        (Validator::AtLeast(min), Some(n)) if n < min => {
            Err(invalid(format!("Value must be at least {min}")))
        }
        (Validator::Between(min, max), Some(n)) if n < min || n > max => {
            Err(invalid(format!("Value must be in [{min}, {max}]")))
        }
        (Validator::OneOf(allowed), _) => {
            let all_allowed = match kind {
                ConfigType::List => value
                    .split(',')
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .all(|v| allowed.contains(&v)),
                _ => allowed.contains(&value),
            };
            if all_allowed {
                Ok(())
            } else {
                Err(invalid(format!(
                    "Keel supports only {}",
                    allowed.join(", ")
                )))
            }
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_range_checked() {
        assert!(validate_topic_config("retention.ms", "-1").is_ok());
        assert!(validate_topic_config("retention.ms", "-2").is_err());
        assert!(validate_topic_config("segment.bytes", "13").is_err());
        assert!(validate_topic_config("segment.bytes", "4294967296").is_err());
        assert!(validate_topic_config("segment.ms", "abc").is_err());
    }

    #[test]
    fn enumerations_and_unknown_names_are_refused() {
        assert!(validate_topic_config("message.timestamp.type", "LogAppendTime").is_ok());
        assert!(validate_topic_config("message.timestamp.type", "Now").is_err());
        assert!(validate_topic_config("cleanup.policy", "compact,delete").is_ok());
        assert!(validate_topic_config("cleanup.policy", "").is_ok());
        assert!(validate_topic_config("cleanup.policy", "shred").is_err());
        assert!(validate_topic_config("min.cleanable.dirty.ratio", "0.3").is_ok());
        assert!(validate_topic_config("min.cleanable.dirty.ratio", "1.5").is_err());
        assert!(
            validate_dynamic_broker_config("log.cleaner.io.max.bytes.per.second", "0").is_err()
        );
        assert!(validate_dynamic_broker_config("log.cleaner.threads", "2").is_ok());
        assert!(validate_topic_config("no.such.config", "1").is_err());
    }

    #[test]
    fn every_default_passes_its_own_validation() {
        for def in TOPIC_CONFIGS {
            validate_value(def.name, def.kind, def.validator, def.default)
                .unwrap_or_else(|e| panic!("{}: {e}", def.name));
        }
        for def in DYNAMIC_BROKER_CONFIGS {
            validate_value(def.name, def.kind, def.validator, def.default)
                .unwrap_or_else(|e| panic!("{}: {e}", def.name));
        }
    }
}
