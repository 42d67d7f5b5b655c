//! Verified narinfos kept for good (store paths are immutable), one small file per path in
//! `narinfo/<hash-part>`, with the substituter that served it. A path evicted and asked for again,
//! even after a restart, is fetched from that substituter with no narinfo request, and must come
//! back with the same NarHash (SG-10: never two versions of one path).

use std::fs;
use std::io;
use std::path::PathBuf;

use crate::nix::narinfo::NarInfo;

const FROM_PREFIX: &str = "# from ";

/// The `narinfo/` directory of a cache.
#[derive(Debug)]
pub(super) struct NarInfoStore {
    dir: PathBuf,
}

impl NarInfoStore {
    /// The store in `dir` (which must exist).
    pub(super) fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The remembered narinfo of `hash_part` and the URL of the substituter that served it.
    /// Unreadable or malformed files count as absent: the caller re-verifies anyway.
    pub(super) fn get(&self, hash_part: &str) -> Option<(String, NarInfo)> {
        let text = fs::read_to_string(self.dir.join(hash_part)).ok()?;
        let (first, rest) = text.split_once('\n')?;
        let from = first.strip_prefix(FROM_PREFIX)?.to_owned();
        let info = NarInfo::parse(rest.as_bytes()).ok()?;
        (info.store_path.hash_part() == hash_part).then_some((from, info))
    }

    /// Up to `limit` remembered narinfos with the URL of the substituter that served each, in
    /// directory order (for `check`, which needs a few paths to ask the caches for, not all).
    /// Unreadable and malformed files are skipped.
    pub(super) fn sample(&self, limit: usize) -> Vec<(String, NarInfo)> {
        let Ok(dir) = fs::read_dir(&self.dir) else { return Vec::new() };
        dir.filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| !name.starts_with('.'))
            .filter_map(|name| self.get(&name))
            .take(limit)
            .collect()
    }

    /// Remembers a verified narinfo (atomically: temp file, then rename).
    pub(super) fn put(&self, from: &str, info: &NarInfo) -> io::Result<()> {
        let hash = info.store_path.hash_part();
        let tmp = self.dir.join(format!(".{hash}.tmp"));
        fs::write(&tmp, format!("{FROM_PREFIX}{from}\n{info}"))?;
        fs::rename(&tmp, self.dir.join(hash))
    }
}
