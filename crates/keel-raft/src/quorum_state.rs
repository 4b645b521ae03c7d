//! `quorum-state`: the vote, kept in the metadata partition's directory as
//! Kafka does, and replaced atomically.
//!
//! openraft's vote is (term, node, committed). Kafka's file says the same
//! with `leaderEpoch` (the term), `votedId` (the node voted for) and
//! `leaderId` (that node once a quorum granted the vote, else -1). The file
//! also marks a bootstrapped node: it is written, voteless, right after the
//! voter set first enters the log.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use keel_storage::StorageError;
use openraft::LeaderId;
use serde::{Deserialize, Serialize};

use crate::type_config::Vote;

pub(crate) const QUORUM_STATE: &str = "quorum-state";

/// The file's JSON, field names as in Kafka's `quorum-state`.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct QuorumStateData {
    leader_id: i64,
    leader_epoch: u64,
    voted_id: i64,
    #[serde(rename = "data_version")]
    data_version: u32,
}

const NONE: i64 = -1;

impl QuorumStateData {
    fn from_vote(vote: Option<&Vote>) -> QuorumStateData {
        let (leader_id, leader_epoch, voted_id) = match vote {
            None => (NONE, 0, NONE),
            Some(v) => {
                let voted = v.leader_id().voted_for().map_or(NONE, |n| n as i64);
                let leader = if v.is_committed() { voted } else { NONE };
                (leader, v.leader_id().term, voted)
            }
        };
        QuorumStateData {
            leader_id,
            leader_epoch,
            voted_id,
            data_version: 0,
        }
    }

    fn vote(&self, path: &Path) -> Result<Option<Vote>, StorageError> {
        let corrupt = || StorageError::Corrupt(format!("{}: {self:?}", path.display()));
        if self.data_version != 0 {
            return Err(corrupt());
        }
        let node = |id: i64| u64::try_from(id).map_err(|_| corrupt());
        match (self.leader_id, self.voted_id) {
            (NONE, NONE) if self.leader_epoch == 0 => Ok(None),
            // A term learnt without voting in it.
            (NONE, NONE) => Ok(Some(Vote {
                leader_id: LeaderId {
                    term: self.leader_epoch,
                    voted_for: None,
                },
                committed: false,
            })),
            (NONE, voted) => Ok(Some(Vote::new(self.leader_epoch, node(voted)?))),
            (leader, voted) if leader == voted => {
                Ok(Some(Vote::new_committed(self.leader_epoch, node(leader)?)))
            }
            _ => Err(corrupt()),
        }
    }
}

fn io_error(what: String) -> impl FnOnce(std::io::Error) -> StorageError {
    move |e| StorageError::Io(std::io::Error::new(e.kind(), format!("{what}: {e}")))
}

/// The vote file of one metadata partition directory.
#[derive(Clone, Debug)]
pub(crate) struct QuorumStateFile {
    path: PathBuf,
}

impl QuorumStateFile {
    pub(crate) fn new(partition_dir: &Path) -> QuorumStateFile {
        QuorumStateFile {
            path: partition_dir.join(QUORUM_STATE),
        }
    }

    /// `None` when the file does not exist (a node never bootstrapped);
    /// otherwise the saved vote, if any.
    pub(crate) fn read(&self) -> Result<Option<Option<Vote>>, StorageError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(format!("reading {}", self.path.display()))(e)),
        };
        let data: QuorumStateData = serde_json::from_slice(&bytes)
            .map_err(|e| StorageError::Corrupt(format!("{}: {e}", self.path.display())))?;
        data.vote(&self.path).map(Some)
    }

    /// Replaces the file so that a crash leaves the old vote or the new one:
    /// write a temporary file, fsync it, rename it over, fsync the directory.
    pub(crate) fn write(&self, vote: Option<&Vote>) -> Result<(), StorageError> {
        let json =
            serde_json::to_vec(&QuorumStateData::from_vote(vote)).expect("plain struct serialises");
        write_atomically(&self.path, &json)
    }
}

/// keel-storage has the same helper, crate-private; see the crate docs.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io_error(format!("creating {}", tmp.display())))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_error(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io_error(format!("renaming {}", tmp.display())))?;
    let dir = path.parent().expect("files live in a directory");
    sync_dir(dir)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(format!("fsync {}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vote_persists_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let file = QuorumStateFile::new(dir.path());
        assert_eq!(file.read().unwrap(), None);
        file.write(None).unwrap();
        assert_eq!(file.read().unwrap(), Some(None));
        let learnt = Vote {
            leader_id: LeaderId {
                term: 4,
                voted_for: None,
            },
            committed: false,
        };
        for vote in [
            learnt,
            Vote::new(3, 2),
            Vote::new_committed(3, 2),
            Vote::new_committed(7, 0),
        ] {
            file.write(Some(&vote)).unwrap();
            let reopened = QuorumStateFile::new(dir.path());
            assert_eq!(reopened.read().unwrap(), Some(Some(vote)));
        }
        assert_eq!(
            std::fs::read_to_string(dir.path().join(QUORUM_STATE)).unwrap(),
            r#"{"leaderId":0,"leaderEpoch":7,"votedId":0,"data_version":0}"#
        );
        assert!(!dir.path().join("quorum-state.tmp").exists());
    }

    #[test]
    fn inconsistent_file_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(QUORUM_STATE);
        let file = QuorumStateFile::new(dir.path());
        for text in [
            "{",
            r#"{"leaderId":1,"leaderEpoch":7,"votedId":2,"data_version":0}"#,
            r#"{"leaderId":-1,"leaderEpoch":7,"votedId":-5,"data_version":0}"#,
            r#"{"leaderId":-1,"leaderEpoch":7,"votedId":-1,"data_version":1}"#,
        ] {
            std::fs::write(&path, text).unwrap();
            assert!(
                matches!(file.read(), Err(StorageError::Corrupt(_))),
                "{text}"
            );
        }
    }
}
