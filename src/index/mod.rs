//! `storefs index`: prepares a binary cache directory for file-level laziness. Every path's NAR
//! is checked against its narinfo, written again as seekable zstd with frames cut at file
//! boundaries, and described by a signed index `<hash>.index` beside `<hash>.narinfo` (format:
//! `nix::file_index`, docs/INDEX_FORMAT.md). Paths run in parallel; a path whose index already
//! verifies is skipped, so a rerun (after a kill, or after `nix copy` added paths) does only
//! what is left.
//!
//! It sits beside `cache` in the layers: it uses `nix` and `upstream`'s decoders, and only
//! `cli` uses it.

pub mod durable;
pub mod path;
pub mod rewrite;
pub mod warm;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use path::{INDEX_SUFFIX, Outcome, PathError, Sizes};

use crate::nix::narinfo::NarInfo;
use crate::nix::signature::SigningKey;
use crate::sync::{Arc, AtomicUsize, Mutex, Ordering, lock};

/// Default NAR bytes per frame. Measured on the bench fixture (docs/INDEX_FORMAT.md): smaller
/// frames cost compression ratio and index size, larger ones make a reader fetch more bytes
/// than the file it wants.
pub const DEFAULT_FRAME_BYTES: u64 = 256 << 10;
/// zstd level of the frames: zstd's default, as Nix uses.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;
/// Name of the lock file in the cache directory: one `storefs index` at a time.
pub const LOCK_FILE: &str = ".storefs-index.lock";

/// What to index, and how.
#[derive(Debug, Clone)]
pub struct IndexSettings {
    /// The binary cache directory (holds `*.narinfo` and `nar/`).
    pub dir: PathBuf,
    /// The key that signs the indexes.
    pub key: SigningKey,
    /// Paths indexed at once.
    pub jobs: usize,
    /// NAR bytes per frame (a target: small files share frames, large ones are split).
    pub frame_bytes: u64,
    /// zstd level of the frames.
    pub zstd_level: i32,
    /// The warm lists to write into the indexes (`--warm-list`): each index gets exactly its
    /// path's, empty for a path the lists do not name. None keeps an index's warm list.
    pub warm: Option<Arc<warm::WarmLists>>,
}

/// Why the run as a whole could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The directory cannot be listed.
    #[error("cannot list {}: {source}", dir.display())]
    List {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Another `storefs index` holds the directory's lock, or it cannot be taken.
    #[error("cannot lock {}: {source} (is another storefs index running?)", file.display())]
    Lock {
        /// The lock file.
        file: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// One finished path, for progress output.
#[derive(Debug)]
pub struct Step<'a> {
    /// Paths finished so far, this one included.
    pub done: usize,
    /// Paths in the run.
    pub total: usize,
    /// The narinfo's file name.
    pub narinfo: &'a str,
    /// What happened.
    pub result: &'a Result<Outcome, PathError>,
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Summary {
    /// Paths re-encoded and indexed.
    pub indexed: usize,
    /// Paths already indexed.
    pub skipped: usize,
    /// Paths already indexed whose index was written again with a new warm list.
    pub rewarmed: usize,
    /// Files in the warm lists written (indexed and rewarmed paths).
    pub warm_files: usize,
    /// Each path that failed: its narinfo and the error text.
    pub failed: Vec<(String, String)>,
    /// Sums over the indexed paths.
    pub nar_bytes: u64,
    /// The NAR files they had.
    pub old_file_bytes: u64,
    /// The seekable NAR files written.
    pub new_file_bytes: u64,
    /// The index files written.
    pub index_bytes: u64,
    /// Frames written.
    pub frames: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
}

/// How many narinfos name each NAR file URL, so a NAR is removed only when the last narinfo
/// naming it was moved to its re-encoding.
#[derive(Debug, Default)]
pub struct UrlCounts(Mutex<HashMap<String, usize>>);

impl UrlCounts {
    /// Records that one narinfo moved from `old` to `new`. Returns whether `old` is now
    /// named by none (and is not `new`), so it may be removed.
    pub fn moved(&self, old: &str, new: &str) -> bool {
        if old == new {
            return false;
        }
        let mut counts = lock(&self.0);
        *counts.entry(new.to_owned()).or_insert(0) += 1;
        let Some(left) = counts.get_mut(old) else { return false };
        *left = left.saturating_sub(1);
        *left == 0
    }
}

/// Indexes every narinfo of `settings.dir`, calling `progress` after each path. A failing path
/// is reported and counted; the others go on.
///
/// # Errors
///
/// The directory cannot be listed or locked.
pub fn run(
    settings: &IndexSettings,
    progress: &(dyn Fn(&Step<'_>) + Sync),
) -> Result<Summary, RunError> {
    let started = Instant::now();
    let _lock = lock_dir(&settings.dir)?;
    durable::remove_stale_temps(&settings.dir);
    durable::remove_stale_temps(&settings.dir.join("nar"));
    let names = narinfo_names(&settings.dir)?;
    let urls = url_counts(&settings.dir, &names);
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let summary = Mutex::new(Summary::default());
    let total = names.len();
    std::thread::scope(|s| {
        for _ in 0..settings.jobs.clamp(1, 256) {
            s.spawn(|| {
                while let Some(name) = names.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let result = path::index_path(settings, name, &urls);
                    record(&mut lock(&summary), name, &result);
                    let done = done.fetch_add(1, Ordering::Relaxed) + 1;
                    progress(&Step { done, total, narinfo: name, result: &result });
                }
            });
        }
    });
    let mut summary = summary.into_inner().expect("no worker panicked holding the lock");
    summary.failed.sort();
    summary.elapsed = started.elapsed();
    Ok(summary)
}

fn record(summary: &mut Summary, name: &str, result: &Result<Outcome, PathError>) {
    match result {
        Ok(Outcome::Skipped) => summary.skipped += 1,
        Ok(Outcome::Rewarmed { warm_files }) => {
            summary.rewarmed += 1;
            summary.warm_files += warm_files;
        }
        Ok(Outcome::Indexed(s)) => {
            summary.indexed += 1;
            summary.warm_files += s.warm_files;
            summary.nar_bytes += s.nar;
            summary.old_file_bytes += s.old_file;
            summary.new_file_bytes += s.new_file;
            summary.index_bytes += s.index;
            summary.frames += s.frames;
        }
        Err(e) => summary.failed.push((name.to_owned(), e.to_string())),
    }
}

/// The `*.narinfo` file names in `dir`, sorted.
fn narinfo_names(dir: &Path) -> Result<Vec<String>, RunError> {
    let list_error = |source| RunError::List { dir: dir.to_path_buf(), source };
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(list_error)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".narinfo") && !n.starts_with('.'))
        .collect();
    names.sort();
    Ok(names)
}

/// Counts the URL of every readable narinfo (unreadable ones fail later, in their own job).
fn url_counts(dir: &Path, names: &[String]) -> UrlCounts {
    let mut counts = HashMap::new();
    for name in names {
        let Ok(text) = fs::read(dir.join(name)) else { continue };
        if let Ok(info) = NarInfo::parse(&text) {
            *counts.entry(info.url).or_insert(0) += 1;
        }
    }
    UrlCounts(Mutex::new(counts))
}

/// Takes the directory's lock file (released when the returned file closes).
fn lock_dir(dir: &Path) -> Result<fs::File, RunError> {
    let file = dir.join(LOCK_FILE);
    let lock_error = |source| RunError::Lock { file: file.clone(), source };
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&file)
        .map_err(lock_error)?;
    // SAFETY: flock on a descriptor we own, with no pointers involved.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(lock_error(io::Error::last_os_error()));
    }
    Ok(f)
}

#[cfg(test)]
mod tests;
