//! Kafka's crash-safe replacement of segments by a cleaned one.
//!
//! The cleaned segment is written and fsynced as `<base>.log.cleaned` (and
//! `.index.cleaned`, `.timeindex.cleaned`, and `.txnindex.cleaned` holding
//! the replaced segments' aborted transactions). To install it: rename
//! those to `.swap` (the log first), fsync the directory, delete the
//! replaced segments, rename the `.swap` files to their final names (the
//! log last), fsync the directory again.
//!
//! Whatever step a crash interrupts, the next open finds either the old
//! segments whole (no `.log.swap` yet: `.cleaned` files are debris) or a
//! complete `.log.swap` (fsynced before its rename, which the first
//! directory fsync made durable before anything was deleted). Recovery then
//! finishes the job: it deletes every segment file whose base offset falls
//! in the swap segment's offset range, drops index `.swap` files (the
//! offset and time indexes are rebuilt from the log, the transaction index
//! by replaying producer state: see `recovery::load_segments`) and renames
//! the `.log.swap` into place. The range covers every replaced segment
//! because a cleaned segment always keeps the replaced segments' last
//! batch (see `clean.rs`).

use std::path::{Path, PathBuf};

use crate::checkpoint::sync_dir;
use crate::error::{IoContext, Result, StorageError};
use crate::producer_state::remove_if_exists;
use crate::segment::{self, file_name, SEGMENT_SUFFIXES};

/// Suffix of a cleaned segment's files before the swap begins.
pub(crate) const CLEANED_SUFFIX: &str = ".cleaned";
/// Suffix of a cleaned segment's files while the swap is in progress.
pub(crate) const SWAP_SUFFIX: &str = ".swap";
const LOG_SWAP_SUFFIX: &str = ".log.swap";

/// One file operation of a swap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SwapStep {
    Rename { from: PathBuf, to: PathBuf },
    Delete(PathBuf),
    SyncDir(PathBuf),
}

impl SwapStep {
    pub(crate) fn run(&self) -> Result<()> {
        match self {
            SwapStep::Rename { from, to } => std::fs::rename(from, to)
                .ctx(|| format!("renaming {} to {}", from.display(), to.display())),
            SwapStep::Delete(path) => remove_if_exists(path),
            SwapStep::SyncDir(dir) => sync_dir(dir),
        }
    }
}

fn path(dir: &Path, base_offset: i64, suffix: &str, extra: &str) -> PathBuf {
    dir.join(file_name(base_offset, &format!("{suffix}{extra}")))
}

/// The files of the cleaned segment at `base_offset` before the swap.
pub(crate) fn cleaned_paths(dir: &Path, base_offset: i64) -> [PathBuf; 4] {
    SEGMENT_SUFFIXES.map(|s| path(dir, base_offset, s, CLEANED_SUFFIX))
}

/// The steps that replace the segments at `replaced` with the cleaned
/// segment at `base_offset` (the first of them). Run in order; any prefix
/// leaves a directory that recovery turns into either the old or the new
/// segments.
pub(crate) fn swap_steps(dir: &Path, base_offset: i64, replaced: &[i64]) -> Vec<SwapStep> {
    assert_eq!(
        replaced.first(),
        Some(&base_offset),
        "a cleaned segment takes its first replaced segment's base"
    );
    let mut steps = Vec::new();
    for suffix in SEGMENT_SUFFIXES {
        steps.push(SwapStep::Rename {
            from: path(dir, base_offset, suffix, CLEANED_SUFFIX),
            to: path(dir, base_offset, suffix, SWAP_SUFFIX),
        });
    }
    steps.push(SwapStep::SyncDir(dir.to_path_buf()));
    for &old in replaced {
        for suffix in SEGMENT_SUFFIXES {
            steps.push(SwapStep::Delete(path(dir, old, suffix, "")));
        }
    }
    for suffix in SEGMENT_SUFFIXES.iter().rev() {
        steps.push(SwapStep::Rename {
            from: path(dir, base_offset, suffix, SWAP_SUFFIX),
            to: path(dir, base_offset, suffix, ""),
        });
    }
    steps.push(SwapStep::SyncDir(dir.to_path_buf()));
    steps
}

/// The base offset of a `<base>.log.swap` file name.
pub(crate) fn parse_log_swap(name: &str) -> Option<i64> {
    segment::parse_file_name(name, LOG_SWAP_SUFFIX)
}

/// Finishes a swap a crash interrupted after its commit point: deletes the
/// segments the swap segment replaces and renames it into place. A swap
/// segment that does not scan cleanly was damaged after it was fsynced;
/// since the segments it replaced may be gone, the directory is `Corrupt`.
pub(crate) fn complete_swap(dir: &Path, base_offset: i64) -> Result<()> {
    let swap_path = path(dir, base_offset, segment::LOG_SUFFIX, SWAP_SUFFIX);
    let file =
        std::fs::File::open(&swap_path).ctx(|| format!("opening {}", swap_path.display()))?;
    let size = file
        .metadata()
        .ctx(|| format!("stat {}", swap_path.display()))?
        .len();
    let mut next_offset = base_offset;
    let end = segment::scan(&file, base_offset, 0, size, base_offset, true, |_, h| {
        next_offset = h.next_offset();
        Ok(())
    })?;
    if let Some(problem) = end.problem {
        return Err(StorageError::Corrupt(format!(
            "{} from an interrupted swap: {problem}",
            swap_path.display()
        )));
    }
    tracing::info!(swap = %swap_path.display(), next_offset, "completing interrupted segment swap");
    for entry in std::fs::read_dir(dir).ctx(|| format!("listing {}", dir.display()))? {
        let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let replaced = SEGMENT_SUFFIXES.iter().any(|suffix| {
            segment::parse_file_name(&name, suffix)
                .is_some_and(|base| base >= base_offset && base < next_offset)
        });
        if replaced {
            remove_if_exists(&entry.path())?;
        }
    }
    SwapStep::Rename {
        from: swap_path,
        to: path(dir, base_offset, segment::LOG_SUFFIX, ""),
    }
    .run()?;
    sync_dir(dir)
}
