//! Loading a partition directory at open: clearing leftovers of interrupted
//! operations, completing an interrupted cleaner swap, opening segments,
//! (after an unclean shutdown) checking every batch past the recovery
//! point and cutting off a torn or corrupt tail, and finding which
//! transaction indexes `Log::open` must rebuild.

use std::collections::BTreeMap;
use std::path::Path;

use crate::cleaner::swap::{self, CLEANED_SUFFIX, SWAP_SUFFIX};
use crate::error::{IoContext, Result, StorageError};
use crate::producer_state::remove_if_exists;
use crate::segment::{self, OpenedSegment, Segment, LOG_SUFFIX, SEGMENT_SUFFIXES};

/// Suffixes of files an interrupted operation may leave behind: `.cleaned`
/// files are a clean that never reached its swap, `.deleted` files were on
/// their way out, `.tmp` files are half-written checkpoints.
const LEFTOVER_SUFFIXES: [&str; 3] = [CLEANED_SUFFIX, ".deleted", ".tmp"];

/// Removes leftovers and finishes interrupted swaps (see `cleaner::swap`).
/// An index `.swap` is dropped rather than trusted: the index is rebuilt
/// from its log, whichever step the swap stopped at. Returns the base
/// offsets of the swapped-in segments.
fn clear_leftovers(dir: &Path) -> Result<Vec<i64>> {
    let mut swaps = Vec::new();
    for entry in std::fs::read_dir(dir).ctx(|| format!("listing {}", dir.display()))? {
        let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if let Some(base) = swap::parse_log_swap(&name) {
            swaps.push(base);
        } else if LEFTOVER_SUFFIXES.iter().any(|s| name.ends_with(s)) || name.ends_with(SWAP_SUFFIX)
        {
            tracing::info!(file = %entry.path().display(), "removing leftover file");
            remove_if_exists(&entry.path())?;
        }
    }
    swaps.sort_unstable();
    for &base in &swaps {
        swap::complete_swap(dir, base)?;
    }
    Ok(swaps)
}

/// Opens every segment in `dir`, in offset order. With `recover_from =
/// Some(p)`, segments holding offsets ≥ `p` are checked batch by batch; at
/// the first bad batch the segment is cut and all later segments deleted.
///
/// Also returns the base of the first segment whose transaction index
/// cannot be trusted: the first one recovered (its markers past the
/// recovery point may never have been indexed), one whose index was torn
/// or corrupt, or one an interrupted swap put in place. The transaction
/// indexes from there on are emptied, for `Log::open` to refill by
/// replaying the log from a producer snapshot at or below that base.
pub(crate) fn load_segments(
    dir: &Path,
    recover_from: Option<i64>,
    index_interval_bytes: u32,
) -> Result<(BTreeMap<i64, Segment>, Option<i64>)> {
    let swapped = clear_leftovers(dir)?;
    let mut bases = Vec::new();
    let mut index_files = Vec::new();
    for entry in std::fs::read_dir(dir).ctx(|| format!("listing {}", dir.display()))? {
        let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if let Some(base) = segment::parse_file_name(&name, LOG_SUFFIX) {
            bases.push(base);
        } else if let Some(base) = SEGMENT_SUFFIXES[1..]
            .iter()
            .find_map(|suffix| segment::parse_file_name(&name, suffix))
        {
            index_files.push((base, entry.path()));
        }
    }
    bases.sort_unstable();
    // An index without its log is debris from a deletion cut short.
    for (base, path) in index_files {
        if bases.binary_search(&base).is_err() {
            remove_if_exists(&path)?;
        }
    }

    let mut segments: BTreeMap<i64, Segment> = BTreeMap::new();
    let mut txn_index_from = swapped.first().copied();
    for (i, &base) in bases.iter().enumerate() {
        let next_base = bases.get(i + 1).copied();
        let recover = match recover_from {
            Some(point) => next_base.is_none_or(|next| next > point),
            None => false,
        };
        let OpenedSegment {
            segment: seg,
            truncated,
            txn_index_lost,
        } = Segment::open(dir, base, recover, index_interval_bytes)?;
        if recover || txn_index_lost {
            txn_index_from = Some(txn_index_from.map_or(base, |from| from.min(base)));
        }
        if let Some((_, prev)) = segments.last_key_value() {
            if prev.next_offset() > base {
                return Err(StorageError::Corrupt(format!(
                    "{}: segment {base} overlaps the previous one ending at {}",
                    dir.display(),
                    prev.next_offset()
                )));
            }
        }
        segments.insert(base, seg);
        if truncated.is_some() {
            for &later in &bases[i + 1..] {
                tracing::warn!(dir = %dir.display(), segment = later, "deleting segment after a corrupt tail");
                for suffix in SEGMENT_SUFFIXES {
                    remove_if_exists(&dir.join(segment::file_name(later, suffix)))?;
                }
            }
            break;
        }
    }
    if let Some(from) = txn_index_from {
        for seg in segments.range_mut(from..).map(|(_, s)| s) {
            seg.reset_txn_index()?;
        }
    }
    Ok((segments, txn_index_from))
}
