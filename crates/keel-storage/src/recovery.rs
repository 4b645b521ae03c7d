//! Loading a partition directory at open: clearing leftovers of interrupted
//! operations, completing an interrupted cleaner swap, opening segments,
//! and (after an unclean shutdown) checking every batch past the recovery
//! point and cutting off a torn or corrupt tail.

use std::collections::BTreeMap;
use std::path::Path;

use crate::cleaner::swap::{self, CLEANED_SUFFIX, SWAP_SUFFIX};
use crate::error::{IoContext, Result, StorageError};
use crate::producer_state::remove_if_exists;
use crate::segment::{self, Segment, INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX};

/// Suffixes of files an interrupted operation may leave behind: `.cleaned`
/// files are a clean that never reached its swap, `.deleted` files were on
/// their way out, `.tmp` files are half-written checkpoints.
const LEFTOVER_SUFFIXES: [&str; 3] = [CLEANED_SUFFIX, ".deleted", ".tmp"];

/// Removes leftovers and finishes interrupted swaps (see `cleaner::swap`).
/// An index `.swap` is dropped rather than trusted: the index is rebuilt
/// from its log, whichever step the swap stopped at.
fn clear_leftovers(dir: &Path) -> Result<()> {
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
    Ok(())
}

/// Opens every segment in `dir`, in offset order. With `recover_from =
/// Some(p)`, segments holding offsets ≥ `p` are checked batch by batch; at
/// the first bad batch the segment is cut and all later segments deleted.
pub(crate) fn load_segments(
    dir: &Path,
    recover_from: Option<i64>,
    index_interval_bytes: u32,
) -> Result<BTreeMap<i64, Segment>> {
    clear_leftovers(dir)?;
    let mut bases = Vec::new();
    let mut index_files = Vec::new();
    for entry in std::fs::read_dir(dir).ctx(|| format!("listing {}", dir.display()))? {
        let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if let Some(base) = segment::parse_file_name(&name, LOG_SUFFIX) {
            bases.push(base);
        } else if let Some(base) = segment::parse_file_name(&name, INDEX_SUFFIX)
            .or_else(|| segment::parse_file_name(&name, TIME_INDEX_SUFFIX))
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
    for (i, &base) in bases.iter().enumerate() {
        let next_base = bases.get(i + 1).copied();
        let recover = match recover_from {
            Some(point) => next_base.is_none_or(|next| next > point),
            None => false,
        };
        let (seg, truncated) = Segment::open(dir, base, recover, index_interval_bytes)?;
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
                for suffix in [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
                    remove_if_exists(&dir.join(segment::file_name(later, suffix)))?;
                }
            }
            break;
        }
    }
    Ok(segments)
}
