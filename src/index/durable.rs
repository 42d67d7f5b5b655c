//! Crash-safe file replacement in a binary cache directory: write a temporary file beside the
//! target, fsync it, rename it over the target, fsync the directory. A reader (nginx, `nix
//! copy`) sees the old file or the new one, never a partial one.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::sync::{AtomicU64, Ordering};

/// Prefix of every temporary file; `storefs index` removes stale ones of its own at start.
pub const TEMP_PREFIX: &str = ".storefs-index-tmp-";

/// A fresh temporary path in `dir`, unique within this process and across processes.
pub fn temp_path(dir: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("{TEMP_PREFIX}{}-{n}", std::process::id()))
}

/// A temporary file that is removed on drop unless [`TempFile::commit`] renamed it.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    file: Option<File>,
}

impl TempFile {
    /// Creates a new temporary file in `dir`.
    ///
    /// # Errors
    ///
    /// The file cannot be created.
    pub fn create(dir: &Path) -> io::Result<Self> {
        let path = temp_path(dir);
        let file = fs::OpenOptions::new().write(true).create_new(true).open(&path)?;
        Ok(Self { path, file: Some(file) })
    }

    /// The open file, for writing.
    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("the file is open until commit")
    }

    /// Flushes the file to disk, renames it to `target` and syncs the directory.
    ///
    /// # Errors
    ///
    /// fsync or rename failed (the temporary file is then removed).
    pub fn commit(mut self, target: &Path) -> io::Result<()> {
        let file = self.file.take().expect("commit runs once");
        file.sync_all()?;
        drop(file);
        fs::rename(&self.path, target)?;
        self.path = PathBuf::new();
        sync_dir(target)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Replaces `target` with `bytes`, crash-safely (see the module docs).
///
/// # Errors
///
/// Any step failed; `target` is then unchanged.
pub fn replace(target: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = target.parent().unwrap_or(Path::new("."));
    let mut tmp = TempFile::create(dir)?;
    tmp.file().write_all(bytes)?;
    tmp.commit(target)
}

/// fsyncs the directory holding `path`, so a rename in it survives a crash.
fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

/// Removes this tool's temporary files left in `dir` by a killed run. Returns how many.
pub fn remove_stale_temps(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(TEMP_PREFIX))
        .filter(|e| fs::remove_file(e.path()).is_ok())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_leaves_only_the_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("x.narinfo");
        fs::write(&target, "old").unwrap();
        replace(&target, b"new").unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), "new");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn an_uncommitted_temp_file_is_removed_and_stale_ones_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        drop(TempFile::create(dir.path()).unwrap());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        fs::write(temp_path(dir.path()), "left by a killed run").unwrap();
        fs::write(dir.path().join("keep.narinfo"), "").unwrap();
        assert_eq!(remove_stale_temps(dir.path()), 1);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
