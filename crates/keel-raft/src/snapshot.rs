//! Snapshot files, named and framed as KRaft's: `<end offset>-<epoch>.checkpoint`
//! in the partition directory (20-digit offset after the last entry the
//! snapshot contains, 10-digit epoch of that entry), holding record batches:
//! a `SNAPSHOT_HEADER` control batch (our JSON: the last entry and the
//! membership), one data batch whose single record is the application's
//! opaque snapshot, and a `SNAPSHOT_FOOTER` control batch. A snapshot is
//! staged in a `.tmp` file (which `Log::open` clears away if a crash leaves
//! one) and renamed into place; only the newest is kept.

use std::path::{Path, PathBuf};

use keel_storage::{iter_records, validate_batch, BatchBuilder, BatchIter, StorageError};
use openraft::LogId;
use serde::{Deserialize, Serialize};

use crate::log_format::{
    control_key, control_type, VotersRecord, CONTROL_SNAPSHOT_FOOTER, CONTROL_SNAPSHOT_HEADER,
};
use crate::quorum_state::{sync_dir, write_atomically};
use crate::type_config::{log_id, offset, SnapshotMeta, StoredMembership};

const SUFFIX: &str = ".checkpoint";

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SnapshotHeader {
    last_contained_log_offset: i64,
    last_contained_log_epoch: u64,
    /// The membership entry in force, as (term, index), with its voters.
    voters_log_id: Option<(u64, u64)>,
    voters: Option<VotersRecord>,
}

/// A snapshot read back from disk.
#[derive(Debug)]
pub(crate) struct StoredSnapshot {
    pub meta: SnapshotMeta,
    pub data: Vec<u8>,
}

/// KRaft's snapshot id, `<end offset>-<epoch>`, as the file name has it.
pub(crate) fn snapshot_id(last: LogId<u64>) -> String {
    format!("{:020}-{:010}", last.index + 1, last.leader_id.term)
}

/// `(end offset, epoch)` from a file name, if it is a snapshot's.
fn parse_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(SUFFIX)?;
    let (end, epoch) = stem.split_once('-')?;
    if end.len() != 20 || epoch.len() != 10 {
        return None;
    }
    Some((end.parse().ok()?, epoch.parse().ok()?))
}

fn corrupt(path: &Path, why: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt(format!("{}: {why}", path.display()))
}

#[derive(Clone, Debug)]
pub(crate) struct SnapshotStore {
    dir: PathBuf,
}

impl SnapshotStore {
    pub(crate) fn new(dir: PathBuf) -> SnapshotStore {
        SnapshotStore { dir }
    }

    /// Snapshot files, oldest first: zero-padded names sort as (end
    /// offset, epoch) do.
    fn list(&self) -> Result<Vec<PathBuf>, StorageError> {
        let mut found = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
            Err(e) => return Err(e.into()),
        };
        for entry in entries {
            let entry = entry?;
            if entry.file_name().to_str().and_then(parse_name).is_some() {
                found.push(entry.path());
            }
        }
        found.sort();
        Ok(found)
    }

    pub(crate) fn latest(&self) -> Result<Option<StoredSnapshot>, StorageError> {
        match self.list()?.pop() {
            Some(path) => read(&path).map(Some),
            None => Ok(None),
        }
    }

    /// Writes the snapshot durably, then deletes every older one. A newer
    /// one may already be there (a snapshot built here finishing after one
    /// installed from the leader); it stays, and `latest` prefers it.
    pub(crate) fn save(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        let last = meta
            .last_log_id
            .expect("only snapshots of applied entries are saved");
        let path = self.dir.join(format!("{}{SUFFIX}", snapshot_id(last)));
        let header = SnapshotHeader {
            last_contained_log_offset: offset(last.index),
            last_contained_log_epoch: last.leader_id.term,
            voters_log_id: meta
                .last_membership
                .log_id()
                .map(|id| (id.leader_id.term, id.index)),
            voters: meta
                .last_membership
                .log_id()
                .map(|_| VotersRecord::from_membership(meta.last_membership.membership())),
        };
        let header = serde_json::to_vec(&header).expect("plain struct serialises");
        let mut bytes = control_batch(0, CONTROL_SNAPSHOT_HEADER, Some(&header));
        let mut records = BatchBuilder::new(1);
        records.push(None, Some(data), &[], keel_types::NO_TIMESTAMP);
        bytes.extend(records.build());
        bytes.extend(control_batch(2, CONTROL_SNAPSHOT_FOOTER, None));
        write_atomically(&path, &bytes)?;
        for old in self.list()? {
            if old < path {
                std::fs::remove_file(&old)?;
            }
        }
        sync_dir(&self.dir)
    }
}

fn control_batch(base_offset: i64, control: i16, value: Option<&[u8]>) -> Vec<u8> {
    let mut b = BatchBuilder::new(base_offset).control(true);
    b.push(
        Some(&control_key(control)),
        value,
        &[],
        keel_types::NO_TIMESTAMP,
    );
    b.build()
}

fn read(path: &Path) -> Result<StoredSnapshot, StorageError> {
    let bytes = std::fs::read(path)?;
    let mut batches = Vec::new();
    for item in BatchIter::strict(&bytes) {
        let (_, range) = item.map_err(|e| corrupt(path, e))?;
        let batch = &bytes[range];
        let header = validate_batch(batch).map_err(|e| corrupt(path, e))?;
        let mut records = iter_records(batch).map_err(|e| corrupt(path, e))?;
        let record = records
            .next()
            .ok_or_else(|| corrupt(path, "empty batch"))?
            .map_err(|e| corrupt(path, e))?;
        batches.push((header.is_control(), record.key, record.value));
    }
    let [(true, header_key, Some(header)), (false, _, Some(data)), (true, footer_key, _)] =
        batches.as_slice()
    else {
        return Err(corrupt(path, "not header, data and footer batches"));
    };
    if control_type(*header_key)? != CONTROL_SNAPSHOT_HEADER
        || control_type(*footer_key)? != CONTROL_SNAPSHOT_FOOTER
    {
        return Err(corrupt(path, "control records out of place"));
    }
    let header: SnapshotHeader = serde_json::from_slice(header).map_err(|e| corrupt(path, e))?;
    let last = log_id(
        header.last_contained_log_epoch,
        u64::try_from(header.last_contained_log_offset).map_err(|e| corrupt(path, e))?,
    );
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if parse_name(name) != Some((last.index + 1, last.leader_id.term)) {
        return Err(corrupt(path, "header disagrees with the file name"));
    }
    let last_membership = match (header.voters_log_id, header.voters) {
        (Some((term, index)), Some(voters)) => {
            StoredMembership::new(Some(log_id(term, index)), voters.into_membership())
        }
        (None, None) => StoredMembership::default(),
        _ => return Err(corrupt(path, "voters without their log id")),
    };
    Ok(StoredSnapshot {
        meta: SnapshotMeta {
            last_log_id: Some(last),
            last_membership,
            snapshot_id: snapshot_id(last),
        },
        data: data.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use openraft::BasicNode;

    use super::*;
    use crate::type_config::Membership;

    fn meta(term: u64, index: u64) -> SnapshotMeta {
        let nodes: BTreeMap<u64, BasicNode> = [(1, BasicNode::new("a:1"))].into_iter().collect();
        let membership = Membership::new(vec![[1].into_iter().collect()], nodes);
        SnapshotMeta {
            last_log_id: Some(log_id(term, index)),
            last_membership: StoredMembership::new(Some(log_id(0, 0)), membership),
            snapshot_id: snapshot_id(log_id(term, index)),
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn snapshot_files_round_trip_and_older_ones_go() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path().to_path_buf());
        assert!(store.latest().unwrap().is_none());
        store.save(&meta(2, 41), b"image at 41").unwrap();
        store.save(&meta(3, 99), b"image at 99").unwrap();
        std::fs::write(dir.path().join("not-a-snapshot.checkpoint"), b"x").unwrap();
        assert_eq!(
            names(dir.path()),
            [
                "00000000000000000100-0000000003.checkpoint",
                "not-a-snapshot.checkpoint"
            ]
        );
        let latest = store.latest().unwrap().unwrap();
        assert_eq!(latest.meta, meta(3, 99));
        assert_eq!(latest.data, b"image at 99");

        // A snapshot finishing after a newer one leaves the newer in place.
        store.save(&meta(2, 41), b"image at 41").unwrap();
        assert_eq!(names(dir.path()).len(), 3);
        assert_eq!(store.latest().unwrap().unwrap().meta, meta(3, 99));
        store.save(&meta(4, 120), b"image at 120").unwrap();
        assert_eq!(
            names(dir.path()),
            [
                "00000000000000000121-0000000004.checkpoint",
                "not-a-snapshot.checkpoint"
            ]
        );
    }

    #[test]
    fn damaged_snapshot_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path().to_path_buf());
        store.save(&meta(1, 9), b"state").unwrap();
        let path = dir
            .path()
            .join("00000000000000000010-0000000001.checkpoint");
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(store.latest(), Err(StorageError::Corrupt(_))));
    }
}
