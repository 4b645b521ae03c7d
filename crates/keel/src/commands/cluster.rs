//! What the admin commands (`group`, `txn`) ask the cluster in common:
//! connections shared between brokers, a key's coordinator, retries while a
//! coordinator loads, and the partitions' leaders.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use anyhow::{anyhow, ensure, Result};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::FindCoordinatorRequest;
use kafka_protocol::protocol::{Request, StrBytes};
use tokio::time::Instant;
use uuid::Uuid;

use crate::client::{self, Client};

/// How long to keep asking while a coordinator is loading its state or
/// not yet elected, as a freshly started broker answers.
const COORDINATOR_WAIT: Duration = Duration::from_secs(15);
const RETRY_BACKOFF: Duration = Duration::from_millis(200);

/// One connection per broker address, opened when first needed.
#[derive(Default)]
pub struct Pool {
    clients: HashMap<String, Client>,
}

/// Which coordinator FindCoordinator is asked for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CoordinatorKind {
    /// A consumer group's (key type 0).
    Group,
    /// A transactional id's (key type 1).
    Transaction,
}

impl CoordinatorKind {
    fn key_type(self) -> i8 {
        match self {
            CoordinatorKind::Group => 0,
            CoordinatorKind::Transaction => 1,
        }
    }

    /// What a key of this kind is called in messages.
    fn noun(self) -> &'static str {
        match self {
            CoordinatorKind::Group => "group",
            CoordinatorKind::Transaction => "transactional id",
        }
    }
}

/// The broker coordinating a group or a transactional id.
pub struct Coordinator {
    pub node_id: i32,
    pub address: String,
}

/// A topic's partitions and their leaders, from Metadata.
pub struct Topic {
    /// Nil before Metadata v10.
    pub id: Uuid,
    /// Each partition's leader as HOST:PORT, or why it has none.
    pub partitions: BTreeMap<i32, Result<String, String>>,
    /// Why the topic could not be described, such as UNKNOWN_TOPIC_OR_PARTITION.
    pub error: Option<String>,
}

impl Pool {
    pub fn new() -> Pool {
        Pool::default()
    }

    pub async fn get(&mut self, address: &str) -> Result<&mut Client> {
        if !self.clients.contains_key(address) {
            let client = Client::connect(address).await?;
            self.clients.insert(address.to_string(), client);
        }
        Ok(self.clients.get_mut(address).expect("inserted above"))
    }

    /// Sends `request` to `address`, and again while the broker answers
    /// that its coordinator is still loading or not available, as
    /// `error_code` reads the response. The caller checks the last answer.
    pub async fn send_retrying<R: Request + Clone>(
        &mut self,
        address: &str,
        request: R,
        error_code: impl Fn(&R::Response) -> i16,
    ) -> Result<R::Response> {
        retry_loading(async || {
            let response = self.get(address).await?.send(request.clone()).await?;
            Ok((error_code(&response), response))
        })
        .await
    }

    /// Asks `bootstrap` which broker coordinates `key`.
    pub async fn coordinator(
        &mut self,
        bootstrap: &str,
        kind: CoordinatorKind,
        key: &str,
    ) -> Result<Coordinator> {
        let request = FindCoordinatorRequest::default()
            .with_key_type(kind.key_type())
            .with_coordinator_keys(vec![StrBytes::from_string(key.to_string())]);
        let noun = kind.noun();
        let found = retry_loading(async || {
            let response = self.get(bootstrap).await?.send(request.clone()).await?;
            let found = response
                .coordinators
                .into_iter()
                .find(|c| c.key.as_str() == key)
                .ok_or_else(|| anyhow!("FindCoordinator response lacks {noun} {key}"))?;
            Ok((found.error_code, found))
        })
        .await?;
        client::check_with_message(
            found.error_code,
            found.error_message.as_deref(),
            format!("finding the coordinator of {noun} {key}"),
        )?;
        Ok(Coordinator {
            node_id: *found.node_id,
            address: host_port(&found.host, found.port),
        })
    }

    /// Metadata for the named topics, asked of `bootstrap`.
    pub async fn topics(
        &mut self,
        bootstrap: &str,
        names: &BTreeSet<String>,
    ) -> Result<BTreeMap<String, Topic>> {
        let mut topics = BTreeMap::new();
        if names.is_empty() {
            return Ok(topics);
        }
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let metadata = self.get(bootstrap).await?.metadata(Some(&names)).await?;
        for t in &metadata.topics {
            let Some(name) = t.name.as_deref() else {
                continue;
            };
            let error = (t.error_code != 0).then(|| client::error_name(t.error_code));
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let leader = if p.error_code != 0 && *p.leader_id < 0 {
                        Err(client::error_name(p.error_code))
                    } else {
                        client::broker_address(&metadata, *p.leader_id).map_err(|e| e.to_string())
                    };
                    (p.partition_index, leader)
                })
                .collect();
            let topic = Topic {
                id: t.topic_id,
                partitions,
                error,
            };
            topics.insert(name.to_string(), topic);
        }
        for name in names {
            ensure!(
                topics.contains_key(name),
                "Metadata response lacks topic {name}"
            );
        }
        Ok(topics)
    }
}

/// Runs `attempt` until its error code is not one a coordinator answers
/// while it loads or moves, or [`COORDINATOR_WAIT`] has passed; returns the
/// last answer, which the caller checks.
pub async fn retry_loading<T>(attempt: impl AsyncFnMut() -> Result<(i16, T)>) -> Result<T> {
    retry_while(coordinator_busy, attempt).await
}

/// Runs `attempt` until its error code is not `busy`, or
/// [`COORDINATOR_WAIT`] has passed; returns the last answer, which the
/// caller checks.
pub async fn retry_while<T>(
    busy: impl Fn(i16) -> bool,
    mut attempt: impl AsyncFnMut() -> Result<(i16, T)>,
) -> Result<T> {
    let deadline = Instant::now() + COORDINATOR_WAIT;
    loop {
        let (code, answer) = attempt().await?;
        if !busy(code) || Instant::now() >= deadline {
            return Ok(answer);
        }
        tokio::time::sleep(RETRY_BACKOFF).await;
    }
}

/// Whether `code` is what a coordinator answers while it loads its state
/// or is not yet elected: worth asking again.
pub fn coordinator_busy(code: i16) -> bool {
    code == ResponseError::CoordinatorLoadInProgress.code()
        || code == ResponseError::CoordinatorNotAvailable.code()
}

/// HOST:PORT, with an IPv6 literal in brackets.
fn host_port(host: &str, port: i32) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_hosts_are_bracketed() {
        assert_eq!(host_port("127.0.0.1", 9092), "127.0.0.1:9092");
        assert_eq!(host_port("::1", 9092), "[::1]:9092");
    }

    #[test]
    fn coordinator_kinds_are_kafkas_key_types() {
        assert_eq!(CoordinatorKind::Group.key_type(), 0);
        assert_eq!(CoordinatorKind::Transaction.key_type(), 1);
    }

    #[tokio::test]
    async fn retries_stop_at_the_first_final_answer() {
        let mut codes = vec![0, 14, 15].into_iter().rev();
        let mut tries = 0;
        let answer = retry_loading(async || {
            tries += 1;
            let code = codes.next().unwrap();
            Ok((code, code))
        })
        .await
        .unwrap();
        assert_eq!((answer, tries), (0, 3));
        let mut tries = 0;
        let answer = retry_loading(async || {
            tries += 1;
            Ok((16, "not coordinator"))
        })
        .await
        .unwrap();
        assert_eq!((answer, tries), ("not coordinator", 1));
    }
}
