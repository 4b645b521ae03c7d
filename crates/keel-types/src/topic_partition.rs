use std::fmt;
use std::str::FromStr;

/// A partition of a topic, named the way Kafka names it on disk: `<topic>-<partition>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }

    /// The partition's directory name inside a log dir, as Kafka writes it.
    pub fn dir_name(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

#[derive(Debug)]
pub struct TopicPartitionParseError(pub String);

impl fmt::Display for TopicPartitionParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a <topic>-<partition> name: {:?}", self.0)
    }
}

impl std::error::Error for TopicPartitionParseError {}

impl FromStr for TopicPartition {
    type Err = TopicPartitionParseError;

    /// Parses a directory name. Topic names may contain `-`, so the partition
    /// is whatever follows the last one.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || TopicPartitionParseError(s.to_string());
        let (topic, partition) = s.rsplit_once('-').ok_or_else(err)?;
        if topic.is_empty() {
            return Err(err());
        }
        let partition: i32 = partition.parse().map_err(|_| err())?;
        if partition < 0 {
            return Err(err());
        }
        Ok(Self::new(topic, partition))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_dir_name() {
        let tp = TopicPartition::new("orders-eu", 12);
        assert_eq!(tp.dir_name(), "orders-eu-12");
        assert_eq!("orders-eu-12".parse::<TopicPartition>().unwrap(), tp);
    }

    #[test]
    fn rejects_names_without_a_partition() {
        assert!("orders".parse::<TopicPartition>().is_err());
        assert!("orders-x".parse::<TopicPartition>().is_err());
        assert!("-3".parse::<TopicPartition>().is_err());
    }
}
