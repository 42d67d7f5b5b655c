//! Verified narinfos kept (store paths are immutable), one small file per path in
//! `narinfo/<hash-part>`, with the substituter that served it. A cached path's narinfo stays as
//! long as the path; an evicted path's stays until more than `evict::kept_narinfo_limit` are
//! kept, oldest evicted going first. A path evicted and asked for again,
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

    /// Every hash part with a narinfo here, oldest written first (the start-up order of the
    /// narinfos of paths not cached). Unreadable entries are skipped.
    pub(super) fn hashes_oldest_first(&self) -> Vec<String> {
        let Ok(list) = fs::read_dir(&self.dir) else { return Vec::new() };
        let mut found: Vec<(std::time::SystemTime, String)> = list
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let is_hash = crate::nix::store_path::is_valid_hash_part(name.as_bytes());
                let mtime = e.metadata().and_then(|m| m.modified()).ok()?;
                is_hash.then_some((mtime, name))
            })
            .collect();
        found.sort();
        found.into_iter().map(|(_, name)| name).collect()
    }

    /// Forgets the narinfo of `hash_part` (absent already is fine).
    pub(super) fn remove(&self, hash_part: &str) -> io::Result<()> {
        match fs::remove_file(self.dir.join(hash_part)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
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
