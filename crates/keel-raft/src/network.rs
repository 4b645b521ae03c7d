//! The client side of the controller listener: openraft's RPCs to peers
//! over plain TCP, one request per round trip, connections pooled per peer.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RPCTypes, RaftNetwork, RaftNetworkFactory};
use parking_lot::Mutex;
use tokio::net::TcpStream;

use crate::frame::{decode, encode, read_frame, write_frame, FrameError, Request, Response};
use crate::limits::IDLE_CONNECTIONS_PER_PEER_MAX;
use crate::stop::Running;
use crate::type_config::TypeConfig;

type RpcError<E = openraft::error::Infallible> = RPCError<u64, BasicNode, RaftError<u64, E>>;

/// Idle connections by peer address.
#[derive(Default)]
struct Pool {
    idle: Mutex<HashMap<String, Vec<TcpStream>>>,
}

impl Pool {
    fn take(&self, addr: &str) -> Option<TcpStream> {
        self.idle.lock().get_mut(addr)?.pop()
    }

    fn put(&self, addr: &str, conn: TcpStream) {
        let mut idle = self.idle.lock();
        let conns = idle.entry(addr.to_string()).or_default();
        if conns.len() < IDLE_CONNECTIONS_PER_PEER_MAX {
            conns.push(conn);
        }
    }
}

/// The latest term in which a peer refused this node's vote request because
/// the peer's log is longer. openraft does not raise a refusing peer's
/// term, so a shorter-log candidate that keeps standing stays a term ahead
/// of the peer, and refuses the peer's own requests, having voted for
/// itself in their term: neither wins. openraft therefore holds back such a
/// node's next election (`smaller_log_timeout`); `break_split_votes` reads
/// this so as not to undo that.
#[derive(Clone, Default)]
pub(crate) struct Outlogged(Arc<AtomicU64>);

impl Outlogged {
    fn record(&self, term: u64) {
        self.0.fetch_max(term, Ordering::Relaxed);
    }

    pub(crate) fn term(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Builds a client per peer; openraft asks for one per replication stream
/// and per election, so connections outlive clients in the shared pool.
/// The quorum's own requests (forwarding, observers joining) go through it
/// too.
#[derive(Clone)]
pub(crate) struct Network {
    local_id: u64,
    /// `controller.quorum.voters`: where this node dials each voter.
    voters: Arc<BTreeMap<u64, String>>,
    request_timeout: Duration,
    pool: Arc<Pool>,
    outlogged: Outlogged,
    running: Running,
}

impl Network {
    pub(crate) fn new(
        local_id: u64,
        voters: BTreeMap<u64, String>,
        request_timeout: Duration,
        running: Running,
    ) -> Network {
        Network {
            local_id,
            voters: Arc::new(voters),
            request_timeout,
            pool: Arc::default(),
            outlogged: Outlogged::default(),
            running,
        }
    }

    pub(crate) fn outlogged(&self) -> Outlogged {
        self.outlogged.clone()
    }

    pub(crate) fn voter_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.voters.keys().copied()
    }

    /// A client for a voter, at its configured address.
    pub(crate) fn voter(&self, target: u64) -> Option<Peer> {
        let addr = self.voters.get(&target)?.clone();
        Some(self.peer_at(target, addr))
    }

    /// A client for any member. Voters are dialled where the local
    /// configuration says, as in KRaft with static voters, and the
    /// membership's copy is only a fallback; observers are found at the
    /// address they registered.
    pub(crate) fn peer(&self, target: u64, node: &BasicNode) -> Peer {
        self.voter(target)
            .unwrap_or_else(|| self.peer_at(target, node.addr.clone()))
    }

    fn peer_at(&self, target: u64, addr: String) -> Peer {
        Peer {
            target,
            addr,
            network: self.clone(),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Peer {
        self.peer(target, node)
    }
}

pub(crate) struct Peer {
    target: u64,
    addr: String,
    network: Network,
}

async fn round_trip(conn: &mut TcpStream, body: &[u8]) -> Result<Vec<u8>, FrameError> {
    write_frame(conn, body).await?;
    read_frame(conn)
        .await?
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into())
}

/// Every failure but a timeout is reported as `Unreachable`, on which
/// openraft backs off before retrying: a peer that refuses, drops or
/// garbles a fresh connection will do so again at once.
fn unreachable<E: std::error::Error>(e: &FrameError) -> RpcError<E> {
    RPCError::Unreachable(Unreachable::new(e))
}

// openraft's `RPCError` is large, and it is what `RaftNetwork` returns.
#[allow(clippy::result_large_err)]
impl Peer {
    async fn exchange(&self, body: &[u8]) -> Result<Vec<u8>, FrameError> {
        let pool = &self.network.pool;
        // A pooled connection may have been closed by the peer meanwhile
        // (restart, idle timeout); then one fresh attempt follows. Raft's
        // RPCs tolerate being delivered twice.
        if let Some(mut conn) = pool.take(&self.addr) {
            if let Ok(response) = round_trip(&mut conn, body).await {
                pool.put(&self.addr, conn);
                return Ok(response);
            }
        }
        let mut conn = TcpStream::connect(&self.addr).await?;
        conn.set_nodelay(true)?;
        let response = round_trip(&mut conn, body).await?;
        pool.put(&self.addr, conn);
        Ok(response)
    }

    /// Sends `request` and reads the response, unless this node stops
    /// first: then the connection is dropped wherever it was, and nothing
    /// more is sent.
    pub(crate) async fn send(&self, request: &Request) -> Result<Response, FrameError> {
        // `limits` sizes frames for the largest entry, snapshot chunk and
        // forwarded request.
        let body = encode(request).expect("requests fit a frame");
        let response = self
            .network
            .running
            .unless_stopped(self.exchange(&body))
            .await
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "this node is stopping",
                )
            })??;
        decode(&response)
    }

    async fn call<E: std::error::Error>(
        &self,
        action: RPCTypes,
        request: Request,
        option: &RPCOption,
    ) -> Result<Response, RpcError<E>> {
        let ttl = option.hard_ttl().min(self.network.request_timeout);
        match tokio::time::timeout(ttl, self.send(&request)).await {
            Err(_) => Err(RPCError::Timeout(Timeout {
                action,
                id: self.network.local_id,
                target: self.target,
                timeout: ttl,
            })),
            Ok(Err(e)) => Err(unreachable(&e)),
            Ok(Ok(response)) => Ok(response),
        }
    }

    fn remote<T, E: std::error::Error>(
        &self,
        result: Result<T, RaftError<u64, E>>,
    ) -> Result<T, RpcError<E>> {
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

fn mismatched<E: std::error::Error>(response: &Response) -> RpcError<E> {
    unreachable(&FrameError::Decode(format!(
        "response to another request: {response:?}"
    )))
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RpcError> {
        let request = Request::AppendEntries(rpc);
        match self.call(RPCTypes::AppendEntries, request, &option).await? {
            Response::AppendEntries(r) => self.remote(r),
            other => Err(mismatched(&other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RpcError<InstallSnapshotError>> {
        let request = Request::InstallSnapshot(rpc);
        match self
            .call(RPCTypes::InstallSnapshot, request, &option)
            .await?
        {
            Response::InstallSnapshot(r) => self.remote(r),
            other => Err(mismatched(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RpcError> {
        let (term, last_log_id) = (rpc.vote.leader_id().term, rpc.last_log_id);
        match self
            .call(RPCTypes::Vote, Request::Vote(rpc), &option)
            .await?
        {
            Response::Vote(r) => {
                if r.as_ref()
                    .is_ok_and(|r| !r.vote_granted && r.last_log_id > last_log_id)
                {
                    self.network.outlogged.record(term);
                }
                self.remote(r)
            }
            other => Err(mismatched(&other)),
        }
    }
}
