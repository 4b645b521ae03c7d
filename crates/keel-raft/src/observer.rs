//! Observers: nodes that follow the metadata log without voting, as Kafka
//! brokers with `process.roles=broker` do. In openraft terms an observer is
//! a learner. KRaft observers fetch from the leader; an openraft leader
//! pushes to its members instead, so an observer has a controller listener
//! too and asks the leader, at every start, to add it at that listener's
//! address. The membership in the log then names it, and every later
//! leader replicates to it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};

use crate::frame::{AddObserverError, Request, Response};
use crate::network::Network;
use crate::type_config::Raft;

/// A member's side of an observer's request: adds `node_id` at `addr`
/// unless it is already committed there, which makes asking again after
/// every restart cheap, and also lets a non-leader confirm it.
pub(crate) async fn add_observer(
    raft: &Raft,
    node_id: u64,
    addr: String,
) -> Result<(), AddObserverError> {
    let node = BasicNode::new(addr);
    let wanted = node.clone();
    let (voter, committed) = raft
        .with_raft_state(move |st| {
            let members = &st.membership_state;
            (
                members.effective().voter_ids().any(|id| id == node_id),
                members.committed().get_node(&node_id) == Some(&wanted),
            )
        })
        .await
        .map_err(|e| AddObserverError::Refused(e.to_string()))?;
    if voter {
        return Err(AddObserverError::Refused(format!(
            "node {node_id} is a voter"
        )));
    }
    if committed {
        return Ok(());
    }
    // `SetNodes` rather than `add_learner`, which keeps an old address:
    // an observer may come back at another one. Voters were refused above,
    // so no voter's address changes here.
    let change = ChangeMembers::SetNodes(BTreeMap::from([(node_id, node)]));
    match raft.change_membership(change, true).await {
        Ok(_) => Ok(()),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(to))) => {
            Err(AddObserverError::NotLeader(to.leader_id))
        }
        Err(e) => Err(AddObserverError::Refused(e.to_string())),
    }
}

/// The observer's side: asks the voters in turn, the leader first once one
/// names it, until one confirms that this node is a member at `addr`; then
/// every round `retry` apart.
pub(crate) async fn register(network: Network, node_id: u64, addr: String, retry: Duration) {
    let request = Request::AddObserver { node_id, addr };
    loop {
        let mut targets: VecDeque<u64> = network.voter_ids().collect();
        let mut asked = BTreeSet::new();
        while let Some(target) = targets.pop_front() {
            let Some(peer) = network.voter(target).filter(|_| asked.insert(target)) else {
                continue;
            };
            let error = match peer.send(&request).await {
                Ok(Response::AddObserver(Ok(()))) => {
                    tracing::info!(node_id, voter = target, "joined the quorum as an observer");
                    return;
                }
                Ok(Response::AddObserver(Err(AddObserverError::NotLeader(Some(leader))))) => {
                    targets.push_front(leader);
                    continue;
                }
                Ok(Response::AddObserver(Err(e))) => e.to_string(),
                Ok(other) => format!("response to another request: {other:?}"),
                Err(e) => e.to_string(),
            };
            tracing::debug!(node_id, voter = target, %error, "observer not added");
        }
        tokio::time::sleep(retry).await;
    }
}
