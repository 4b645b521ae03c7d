//! The controller listener's wire: each message is a frame of a 4-byte
//! big-endian length and a bincode body; a connection carries one request,
//! then its response, at a time. A length over [`FRAME_BYTES_MAX`] closes
//! the connection before anything is allocated, and a body is read as it
//! arrives, so a peer that announces much and sends little costs little.

use bincode::Options;
use bytes::Bytes;
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::limits::FRAME_BYTES_MAX;
use crate::type_config::TypeConfig;

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<u64>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// The application's request for the active controller, opaque here:
    /// `MetadataQuorum::forward`.
    Forward(Bytes),
    /// An observer asking to be replicated to at `addr`.
    AddObserver {
        node_id: u64,
        addr: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Response {
    AppendEntries(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    InstallSnapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
    /// The handler's answer, or its size if it is too large to send back.
    Forward(Result<Bytes, usize>),
    AddObserver(Result<(), AddObserverError>),
}

#[derive(Debug, Serialize, Deserialize, thiserror::Error)]
pub(crate) enum AddObserverError {
    /// Only the leader adds members; it is this one, if known.
    #[error("not the leader (leader {0:?})")]
    NotLeader(Option<u64>),
    #[error("{0}")]
    Refused(String),
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes is outside 1..={FRAME_BYTES_MAX}")]
    BadLength(u64),
    #[error("undecodable frame: {0}")]
    Decode(String),
}

/// Bodies are bounded by the frame limit while decoding too, so a length
/// inside a body cannot reserve more than the frame holds.
fn options() -> impl Options {
    bincode::DefaultOptions::new().with_limit(FRAME_BYTES_MAX as u64)
}

pub(crate) fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    let body = options()
        .serialize(message)
        .map_err(|e| FrameError::Decode(e.to_string()))?;
    if body.is_empty() || body.len() > FRAME_BYTES_MAX {
        return Err(FrameError::BadLength(body.len() as u64));
    }
    Ok(body)
}

pub(crate) fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    options()
        .deserialize(body)
        .map_err(|e| FrameError::Decode(e.to_string()))
}

/// Reads one frame's body; `None` when the peer closed between frames.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut len = [0u8; 4];
    let mut filled = 0;
    while filled < len.len() {
        let n = reader.read(&mut len[filled..]).await?;
        if n == 0 {
            if filled == 0 {
                return Ok(None);
            }
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        filled += n;
    }
    let len = u64::from(u32::from_be_bytes(len));
    if len == 0 || len > FRAME_BYTES_MAX as u64 {
        return Err(FrameError::BadLength(len));
    }
    let mut body = Vec::with_capacity(len.min(64 * 1024) as usize);
    reader.take(len).read_to_end(&mut body).await?;
    if body.len() as u64 != len {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
    }
    Ok(Some(body))
}

pub(crate) async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    body: &[u8],
) -> Result<(), FrameError> {
    let len = u32::try_from(body.len()).expect("encode bounds bodies");
    writer.write_all(&len.to_be_bytes()).await?;
    writer.write_all(body).await?;
    writer.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::type_config::Vote;

    #[tokio::test]
    async fn frames_round_trip_and_bad_lengths_fail_before_allocating() {
        let request = Request::Vote(VoteRequest::new(Vote::new(4, 2), None));
        let body = encode(&request).unwrap();
        let mut wire = Vec::new();
        write_frame(&mut wire, &body).await.unwrap();
        let mut reader = wire.as_slice();
        let read = read_frame(&mut reader).await.unwrap().unwrap();
        let Request::Vote(vote) = decode::<Request>(&read).unwrap() else {
            panic!("not a vote");
        };
        assert_eq!(vote.vote, Vote::new(4, 2));
        assert!(read_frame(&mut reader).await.unwrap().is_none());

        let mut huge: &[u8] = &[0xff, 0xff, 0xff, 0xff, 1, 2, 3];
        assert!(matches!(
            read_frame(&mut huge).await,
            Err(FrameError::BadLength(0xffff_ffff))
        ));
        let mut empty: &[u8] = &[0, 0, 0, 0];
        assert!(matches!(
            read_frame(&mut empty).await,
            Err(FrameError::BadLength(0))
        ));
        let mut short: &[u8] = &[0, 0, 0, 9, 1, 2];
        assert!(matches!(
            read_frame(&mut short).await,
            Err(FrameError::Io(_))
        ));
        assert!(matches!(
            decode::<Request>(&[0xde, 0xad, 0xbe, 0xef]),
            Err(FrameError::Decode(_))
        ));
        // A body claiming a vast vector inside a small frame.
        assert!(decode::<Request>(&[2, 0, 0, 0, 0xfc, 0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
