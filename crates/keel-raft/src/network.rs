//! The client side of the controller listener: openraft's RPCs to peers
//! over plain TCP, one request per round trip, connections pooled per peer.

use std::collections::{BTreeMap, HashMap};
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

/// Builds a client per peer; openraft asks for one per replication stream
/// and per election, so connections outlive clients in the shared pool.
#[derive(Clone)]
pub(crate) struct Network {
    local_id: u64,
    /// `controller.quorum.voters`: where this node dials each voter.
    voters: Arc<BTreeMap<u64, String>>,
    request_timeout: Duration,
    pool: Arc<Pool>,
}

impl Network {
    pub(crate) fn new(
        local_id: u64,
        voters: BTreeMap<u64, String>,
        request_timeout: Duration,
    ) -> Network {
        Network {
            local_id,
            voters: Arc::new(voters),
            request_timeout,
            pool: Arc::default(),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Peer {
        // Addresses come from the local configuration, as in KRaft with
        // static voters; the membership's copy is a fallback.
        let addr = self
            .voters
            .get(&target)
            .cloned()
            .unwrap_or_else(|| node.addr.clone());
        Peer {
            target,
            addr,
            network: self.clone(),
        }
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

    async fn call<E: std::error::Error>(
        &self,
        action: RPCTypes,
        request: Request,
        option: &RPCOption,
    ) -> Result<Response, RpcError<E>> {
        let ttl = option.hard_ttl().min(self.network.request_timeout);
        // `limits` sizes frames for the largest entry and snapshot chunk.
        let body = encode(&request).expect("requests fit a frame");
        match tokio::time::timeout(ttl, self.exchange(&body)).await {
            Err(_) => Err(RPCError::Timeout(Timeout {
                action,
                id: self.network.local_id,
                target: self.target,
                timeout: ttl,
            })),
            Ok(Err(e)) => Err(unreachable(&e)),
            Ok(Ok(response)) => decode(&response).map_err(|e| unreachable(&e)),
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
        match self
            .call(RPCTypes::Vote, Request::Vote(rpc), &option)
            .await?
        {
            Response::Vote(r) => self.remote(r),
            other => Err(mismatched(&other)),
        }
    }
}
