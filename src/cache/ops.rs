//! Operator commands on the cache, as library calls: closure, prefetch, evict, gc and verify.
//! The CLI and the control socket call these; nothing here parses arguments or prints.

use std::collections::{HashSet, VecDeque};

use futures::StreamExt;
use tracing::{info, warn};

use super::evict::Victims;
use super::renar;
use super::{CacheError, Cause, Entry, NarCache};
use crate::nix::hash::NarHash;
use crate::nix::nar::NodeId;
use crate::nix::store_path::StorePath;
use crate::sync::{Arc, lock};
use sha2::Digest;

/// How many paths `closure` fetches at once.
pub const CLOSURE_PARALLELISM: usize = 8;

/// What `gc` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Entries evicted.
    pub evicted: usize,
    /// Disk bytes they occupied.
    pub freed_bytes: u64,
    /// Disk bytes the cache holds afterwards (pinned entries included).
    pub used_bytes: u64,
    /// Pinned entries kept regardless of the target.
    pub pinned_kept: usize,
}

/// What `verify` found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Entries whose re-serialised NAR matched NarHash and NarSize.
    pub ok: Vec<StorePath>,
    /// Entries that did not, and why; each was evicted.
    pub corrupt: Vec<(StorePath, String)>,
    /// Paths asked for that were not cached (or were evicted while being checked).
    pub missing: Vec<StorePath>,
}

impl VerifyReport {
    /// True when nothing corrupt was found.
    pub fn is_clean(&self) -> bool {
        self.corrupt.is_empty()
    }
}

/// One path of a walk finished: what [`NarCache::prefetch`] reports as it goes.
#[derive(Clone, Copy, Debug)]
pub struct WalkStep<'a> {
    /// Paths finished so far, this one included.
    pub done: usize,
    /// Paths known so far; with references followed it grows as they are found.
    pub total: usize,
    /// The path that finished.
    pub path: &'a StorePath,
    /// Why it failed; `None` when it is cached now.
    pub error: Option<&'a CacheError>,
}

impl NarCache {
    /// The closure of `roots` under References, breadth-first from the roots in the order given,
    /// each path once, references in narinfo order. Every path is fetched (through `get`, so its
    /// narinfo is verified); the first failure fails the whole walk.
    pub async fn closure(
        self: &Arc<Self>,
        roots: &[StorePath],
    ) -> Result<Vec<StorePath>, CacheError> {
        let mut out = Vec::new();
        for (sp, result) in self.walk(roots, true, false, CLOSURE_PARALLELISM, &|_| {}).await {
            result?;
            out.push(sp);
        }
        Ok(out)
    }

    /// Fetches `paths` (and with `closure`, everything they reference, transitively) through the
    /// cache, at most `parallelism` at once, and reports each path's outcome in a deterministic
    /// order (input order; with `closure`, breadth-first). `progress` is called as each path
    /// finishes (`storefs prefetch` draws it); with `closure` the total grows as references are
    /// discovered. A path whose fetch failed contributes no references.
    pub async fn prefetch(
        self: &Arc<Self>,
        paths: &[StorePath],
        closure: bool,
        parallelism: usize,
        progress: impl Fn(WalkStep<'_>) + Sync,
    ) -> Vec<(StorePath, Result<(), CacheError>)> {
        self.walk(paths, closure, true, parallelism, &progress).await
    }

    /// The one closure walker (behind `closure`, `prefetch` and `export_db`): breadth-first
    /// fetch, one level at a time, each level `parallelism` wide.
    async fn walk(
        self: &Arc<Self>,
        roots: &[StorePath],
        follow: bool,
        complete: bool,
        parallelism: usize,
        progress: &(dyn Fn(WalkStep<'_>) + Sync),
    ) -> Vec<(StorePath, Result<(), CacheError>)> {
        let mut seen: HashSet<StorePath> = HashSet::new();
        let mut level: Vec<StorePath> =
            roots.iter().filter(|sp| seen.insert((*sp).clone())).cloned().collect();
        let mut total = level.len();
        let mut done = 0usize;
        let mut out = Vec::new();
        while !level.is_empty() {
            let mut results: Vec<(usize, Result<Arc<Entry>, CacheError>)> =
                // Owned paths and cache handles: the future stays Send with no borrowed lifetimes
                // (the control socket runs it on the multi-threaded runtime).
                futures::stream::iter(level.clone().into_iter().enumerate())
                    .map(|(i, sp)| {
                        let this = self.clone();
                        async move {
                            let got = this.get(&sp).await;
                            // `storefs prefetch` makes a partial entry whole.
                            let got = match got {
                                Ok(entry) if complete => this.complete(&entry).await.map(|()| entry),
                                got => got,
                            };
                            (i, got)
                        }
                    })
                    .buffer_unordered(parallelism.max(1))
                    .inspect(|(i, result)| {
                        done += 1;
                        let error = result.as_ref().err();
                        progress(WalkStep { done, total, path: &level[*i], error });
                    })
                    .collect()
                    .await;
            results.sort_by_key(|(i, _)| *i);
            let mut next = VecDeque::new();
            for (i, result) in results {
                let sp = level[i].clone();
                match result {
                    Ok(entry) => {
                        if follow {
                            for r in &entry.narinfo.references {
                                if seen.insert(r.clone()) {
                                    next.push_back(r.clone());
                                }
                            }
                        }
                        out.push((sp, Ok(())));
                    }
                    Err(err) => out.push((sp, Err(err))),
                }
            }
            total += next.len();
            level = next.into();
        }
        out
    }

    /// Evicts each path now; `Ok(true)` when it was cached. A pinned path is refused with
    /// `CacheError::Pinned`. Readers with a file open keep reading it.
    pub async fn evict(
        self: &Arc<Self>,
        paths: &[StorePath],
    ) -> Vec<(StorePath, Result<bool, CacheError>)> {
        self.wait_scanned().await;
        let (this, list) = (self.clone(), paths.to_vec());
        let results = tokio::task::spawn_blocking(move || this.evict_paths_blocking(&list))
            .await
            .unwrap_or_else(|join| {
                let cause = Cause::new(join);
                let err = |sp: &StorePath| CacheError::Local {
                    path: sp.to_string(),
                    cause: cause.clone(),
                };
                paths.iter().map(|sp| Err(err(sp))).collect()
            });
        paths.iter().cloned().zip(results).collect()
    }

    /// Evicts unpinned entries, least recently used first, until the cache holds at most
    /// `to_bytes` (pinned entries may keep it above); with `None`, every unpinned entry.
    pub async fn gc(self: &Arc<Self>, to_bytes: Option<u64>) -> GcReport {
        self.wait_scanned().await;
        let target = to_bytes.unwrap_or(0);
        let this = self.clone();
        // One victim at a time, each taken out of the catalog under its lock and renamed after
        // releasing it: reads of cached files never wait for the renames.
        let gc = move || {
            let trashed = this.evict_until(Victims::Oldest, |_, cat, _| cat.used_bytes() <= target);
            let cat = lock(&this.catalog);
            let report = GcReport {
                evicted: trashed.len(),
                freed_bytes: trashed.iter().map(|(_, bytes)| bytes).sum(),
                used_bytes: cat.used_bytes(),
                pinned_kept: cat.pinned_cached(),
            };
            drop(cat);
            this.purge(trashed);
            report
        };
        let report = match tokio::task::spawn_blocking(gc).await {
            Ok(report) => report,
            Err(join) => {
                warn!(error = %join, "gc task failed");
                GcReport { used_bytes: self.used_bytes(), ..GcReport::default() }
            }
        };
        info!(evicted = report.evicted, freed_bytes = report.freed_bytes, "gc done");
        report
    }

    /// Re-hashes cached entries (those of `paths`, or all) against their NarHash and NarSize by
    /// re-serialising each as a NAR. Corrupt entries are evicted, pinned or not (a pin stays, so
    /// the next use fetches a good copy).
    pub async fn verify(self: &Arc<Self>, paths: Option<&[StorePath]>) -> VerifyReport {
        self.wait_scanned().await;
        let mut report = VerifyReport::default();
        let entries: Vec<Arc<Entry>> = match paths {
            None => {
                let mut all = self.entries();
                all.sort_by_key(|e| e.store_path.to_absolute_path());
                all
            }
            Some(paths) => {
                let cat = lock(&self.catalog);
                let mut found = Vec::new();
                for sp in paths {
                    match cat.peek(&sp.hash_part()).filter(|e| e.store_path == *sp) {
                        Some(e) => found.push(e.clone()),
                        None => report.missing.push(sp.clone()),
                    }
                }
                found
            }
        };
        let mut trashed = Vec::new();
        for entry in entries {
            let checked = {
                let entry = entry.clone();
                tokio::task::spawn_blocking(move || check_entry(&entry)).await
            };
            let problem = match checked {
                Ok(Ok(())) => {
                    report.ok.push(entry.store_path.clone());
                    continue;
                }
                Ok(Err(problem)) => problem,
                Err(join) => format!("verify task: {join}"),
            };
            // Only this very entry is judged: evicted (its files moved to trash/) or replaced
            // while it was being read, it is gone rather than corrupt.
            let hash = entry.store_path.hash_part();
            let evicted = {
                let (this, entry) = (self.clone(), entry.clone());
                tokio::task::spawn_blocking(move || this.evict_entry(&hash, Some(&entry))).await
            };
            match evicted {
                Ok(Ok(Some(trash))) => {
                    super::stats::CacheStats::bump(&self.stats.corrupt_entries);
                    trashed.push(trash);
                }
                Ok(Ok(None)) => {
                    report.missing.push(entry.store_path.clone());
                    continue;
                }
                Ok(Err(err)) => {
                    warn!(store_path = %entry.store_path, error = %err, "cannot evict corrupt entry")
                }
                Err(join) => warn!(store_path = %entry.store_path, error = %join, "evict task"),
            }
            warn!(store_path = %entry.store_path, problem, "corrupt cache entry; evicted");
            report.corrupt.push((entry.store_path.clone(), problem));
        }
        self.purge(trashed);
        report
    }
}

/// Checks one entry's files against its narinfo (a partial entry: each present file against
/// its block checksums and the index's SHA-256); the error says what is wrong.
fn check_entry(entry: &Entry) -> Result<(), String> {
    if let Some(partial) = entry.partial() {
        for id in 0..partial.index.nodes.len() as NodeId {
            let Some(file) = partial.index.file(id).filter(|_| partial.has(id)) else { continue };
            let bytes = entry
                .open_file(id)
                .and_then(|f| f.read_at(0, file.size))
                .map_err(|e| format!("file {id}: {e}"))?;
            let digest: [u8; 32] = sha2::Sha256::digest(&bytes).into();
            if digest != file.digest {
                return Err(format!("file {id} does not match the index's SHA-256"));
            }
        }
        return Ok(());
    }
    let (digest, len) =
        renar::hash_entry(&entry.manifest, &entry.dir).map_err(|e| e.to_string())?;
    if len != entry.narinfo.nar_size {
        return Err(format!("NAR is {len} bytes, NarSize is {}", entry.narinfo.nar_size));
    }
    let found = NarHash::from_digest(digest);
    if found != entry.narinfo.nar_hash {
        return Err(format!("NAR hash {found}, NarHash is {}", entry.narinfo.nar_hash));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::layout::PACK_FILE;
    use crate::cache::manifest::Node;
    use crate::cache::stats::CacheStats;
    use crate::cache::tests::{Fixture, key, publish, publish_refs, sp, tree};
    use crate::cache::unpack;
    use crate::nix::nar::NodeId;

    /// Lets the test corrupt a cache file (they are created 0444).
    fn make_writable(path: &std::path::Path) {
        let mut perms = std::fs::metadata(path).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false, reason = "test writes a 0444 file")]
        perms.set_readonly(false);
        std::fs::set_permissions(path, perms).unwrap();
    }

    /// The cache file holding regular file `id` of `entry`, and where its bytes start in it.
    fn where_bytes_are(entry: &Entry, id: NodeId) -> (std::path::PathBuf, usize) {
        match entry.manifest.node(id) {
            Some(Node::File { packed: Some(start), .. }) => {
                (entry.dir.join(PACK_FILE), usize::try_from(*start).unwrap())
            }
            Some(Node::File { packed: None, .. }) => (entry.dir.join(unpack::file_name(id)), 0),
            other => panic!("node {id} is not a file: {other:?}"),
        }
    }

    /// top -> (b, c); b -> (d, top); c -> (d); d -> (d). e is unrelated.
    fn graph(fx: &Fixture) -> [StorePath; 5] {
        let [top, b, c, d, e] =
            [sp('w', "top"), sp('b', "b"), sp('c', "c"), sp('d', "d"), sp('f', "e")];
        let up = &fx.ups[0];
        publish_refs(up, &key(), &top, &tree("top", 10), &[&c, &b]);
        publish_refs(up, &key(), &b, &tree("b", 10), &[&d, &top]);
        publish_refs(up, &key(), &c, &tree("c", 10), &[&d]);
        publish_refs(up, &key(), &d, &tree("d", 10), &[&d]);
        publish(up, &key(), &e, &tree("e", 10));
        [top, b, c, d, e]
    }

    #[tokio::test]
    async fn closure_is_breadth_first_deduplicated_and_deterministic() {
        let fx = Fixture::new(1);
        let [top, b, c, d, _] = graph(&fx);
        let cache = fx.open();
        let got = cache.closure(std::slice::from_ref(&top)).await.unwrap();
        // References in narinfo order (as published: c, b), then the next level.
        assert_eq!(got, vec![top.clone(), c.clone(), b.clone(), d.clone()]);
        assert_eq!(cache.closure(&[top.clone(), top.clone()]).await.unwrap(), got, "same again");
        assert_eq!(fx.ups[0].requests(), (4, 4), "each path fetched once");
        assert_eq!(cache.closure(std::slice::from_ref(&d)).await.unwrap(), vec![d]);
    }

    #[tokio::test]
    async fn closure_fails_when_a_reference_is_missing() {
        let fx = Fixture::new(1);
        let (a, gone) = (sp('a', "a"), sp('g', "gone"));
        publish_refs(&fx.ups[0], &key(), &a, &tree("a", 1), &[&gone]);
        let cache = fx.open();
        let err = cache.closure(&[a]).await.unwrap_err();
        assert!(matches!(err, CacheError::NotFound(ref p) if *p == gone.to_string()), "{err}");
    }

    #[tokio::test]
    async fn prefetch_reports_each_path_in_order_with_progress() {
        let fx = Fixture::new(1);
        let [top, b, c, d, e] = graph(&fx);
        let missing = sp('m', "missing");
        let cache = fx.open();
        let calls = std::sync::Mutex::new(Vec::new());
        let report = cache
            .prefetch(&[e.clone(), missing.clone(), top.clone()], true, 3, |step| {
                let failed = step.error.is_some();
                calls.lock().unwrap().push((step.done, step.total, step.path.clone(), failed));
            })
            .await;
        let order: Vec<_> = report.iter().map(|(p, _)| p.clone()).collect();
        assert_eq!(order, vec![e.clone(), missing.clone(), top, c, b, d]);
        let failed: Vec<_> = report.iter().filter(|(_, r)| r.is_err()).map(|(p, _)| p).collect();
        assert_eq!(failed, vec![&missing]);
        let calls = calls.into_inner().unwrap();
        assert_eq!(calls.len(), 6);
        assert_eq!(calls.iter().map(|c| c.0).collect::<Vec<_>>(), (1..=6).collect::<Vec<_>>());
        assert_eq!(calls.last().unwrap().1, 6, "the total grows to the closure's size");
        let failed_steps: Vec<_> = calls.iter().filter(|c| c.3).map(|c| &c.2).collect();
        assert_eq!(failed_steps, vec![&missing], "each step carries its path's outcome");
        assert_eq!(fx.ups[0].requests(), (6, 5));

        // Without --closure, only the paths asked for; cached ones are hits.
        let again = cache.prefetch(&[e.clone(), sp('z', "z")], false, 1, |_| {}).await;
        assert!(again[0].1.is_ok() && again[1].1.is_err());
        assert_eq!(fx.ups[0].requests(), (7, 5));
        assert!(CacheStats::get(&cache.stats.hits) >= 1);
    }

    #[tokio::test]
    async fn evict_drops_cached_paths_and_refuses_pinned_ones() {
        let fx = Fixture::new(1);
        let [top, b, _, _, e] = graph(&fx);
        let cache = fx.open();
        cache.get(&top).await.unwrap();
        cache.get(&e).await.unwrap();
        assert!(cache.pin(std::slice::from_ref(&e)).await[0].1.is_ok());
        let used = cache.used_bytes();
        let out = cache.evict(&[top.clone(), b.clone(), e.clone()]).await;
        assert!(matches!(out[0].1, Ok(true)));
        assert!(matches!(out[1].1, Ok(false)), "b was never cached");
        assert!(matches!(out[2].1, Err(CacheError::Pinned(_))));
        assert!(out[2].1.as_ref().unwrap_err().to_string().contains("pinned"));
        assert!(cache.cached(&top).is_none());
        assert!(cache.cached(&e).is_some());
        assert!(cache.used_bytes() < used);
        assert_eq!(CacheStats::get(&cache.stats.evictions), 1);
        // Evicted paths come back on demand.
        cache.get(&top).await.unwrap();
    }

    #[tokio::test]
    async fn gc_keeps_pinned_paths_and_stops_at_the_target() {
        let fx = Fixture::new(1);
        let paths: Vec<_> = "pqrs".chars().map(|ch| sp(ch, "blob")).collect();
        for (i, p) in paths.iter().enumerate() {
            publish(&fx.ups[0], &key(), p, &tree(&i.to_string(), 64 * 1024));
        }
        let cache = fx.open();
        for p in &paths {
            cache.get(p).await.unwrap();
        }
        cache.pin(&paths[..1]).await;
        let one = cache.cached(&paths[0]).unwrap().manifest.disk_bytes;
        // Room for the pinned one and one more: evicts p1 and p2 (oldest unpinned), keeps p3.
        let report = cache.gc(Some(2 * one)).await;
        assert_eq!(report.evicted, 2);
        assert_eq!(report.used_bytes, cache.used_bytes());
        assert!(report.used_bytes <= 2 * one);
        assert!(cache.cached(&paths[3]).is_some(), "most recently used survives");
        let report = cache.gc(None).await;
        assert_eq!((report.evicted, report.pinned_kept), (1, 1));
        assert_eq!(cache.entries().len(), 1);
        assert_eq!(cache.used_bytes(), one);
        assert_eq!(cache.gc(Some(0)).await.evicted, 0, "pinned bytes stay over any target");
    }

    #[tokio::test]
    async fn quota_eviction_skips_pinned_paths() {
        let mut fx = Fixture::new(1);
        fx.config.max_bytes = 300 * 1024;
        let paths: Vec<_> = "ghij".chars().map(|ch| sp(ch, "blob")).collect();
        for (i, p) in paths.iter().enumerate() {
            publish(&fx.ups[0], &key(), p, &tree(&i.to_string(), 120 * 1024));
        }
        let cache = fx.open();
        cache.pin(&paths[..1]).await;
        for p in &paths[1..] {
            cache.get(p).await.unwrap();
            assert!(cache.cached(&paths[0]).is_some(), "the pinned path was evicted");
            assert!(cache.used_bytes() <= fx.config.max_bytes, "{} bytes", cache.used_bytes());
        }
        assert!(cache.cached(&paths[1]).is_none(), "the oldest unpinned path goes instead");
        assert!(cache.cached(&paths[3]).is_some(), "the newest is kept");
        // Once unpinned it is the least recently used and goes first.
        assert!(matches!(cache.unpin(&paths[..1])[0].1, Ok(true)));
        cache.get(&paths[1]).await.unwrap();
        assert!(cache.cached(&paths[0]).is_none());
    }

    #[tokio::test]
    async fn an_all_pinned_cache_still_serves_the_newest_path() {
        let mut fx = Fixture::new(1);
        fx.config.max_bytes = 150 * 1024;
        let (a, b) = (sp('a', "a"), sp('b', "b"));
        publish(&fx.ups[0], &key(), &a, &tree("a", 120 * 1024));
        publish(&fx.ups[0], &key(), &b, &tree("b", 120 * 1024));
        let cache = fx.open();
        cache.pin(std::slice::from_ref(&a)).await;
        cache.get(&b).await.unwrap();
        assert!(cache.cached(&a).is_some() && cache.cached(&b).is_some(), "over quota, both kept");
        let used: u64 = cache.entries().iter().map(|e| e.manifest.disk_bytes).sum();
        assert_eq!(cache.used_bytes(), used, "accounting");
    }

    #[tokio::test]
    async fn verify_finds_a_flipped_byte_and_evicts_the_entry() {
        let fx = Fixture::new(1);
        let [top, b, _, _, e] = graph(&fx);
        let cache = fx.open();
        cache.get(&top).await.unwrap();
        let entry = cache.get(&e).await.unwrap();
        cache.pin(std::slice::from_ref(&e)).await;
        let report = cache.verify(None).await;
        assert_eq!((report.ok.len(), report.corrupt.len()), (2, 0));
        assert!(report.is_clean());

        let data = entry.manifest.child(0, b"data").unwrap();
        let (file, start) = where_bytes_are(&entry, data);
        make_writable(&file);
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[start + 3] ^= 0x20;
        std::fs::write(&file, bytes).unwrap();

        let report = cache.verify(Some(&[e.clone(), top.clone(), b.clone()])).await;
        assert_eq!(report.ok, vec![top.clone()]);
        assert_eq!(report.missing, vec![b]);
        assert_eq!(report.corrupt.len(), 1);
        assert_eq!(report.corrupt[0].0, e);
        assert!(report.corrupt[0].1.contains("NarHash"), "{}", report.corrupt[0].1);
        assert!(cache.cached(&e).is_none(), "corrupt entry evicted, pinned or not");
        assert!(cache.is_pinned(&e), "the pin stays");
        let again = cache.get(&e).await.unwrap();
        let id = again.manifest.child(0, b"data").unwrap();
        assert_eq!(again.open_file(id).unwrap().read_at(0, 100).unwrap(), vec![7; 10]);
        assert!(cache.verify(None).await.is_clean());
    }

    /// A file deleted from the cache, and files cut short (its own `f<id>` and a `pack`), are
    /// each reported corrupt and evicted.
    #[tokio::test]
    async fn verify_reports_a_missing_or_truncated_file() {
        enum Damage {
            Delete,
            Truncate,
        }
        for (size, damage, says) in [
            (1000, Damage::Delete, "cannot read"),
            (100_000, Damage::Truncate, "the manifest says 100000"),
            (1000, Damage::Truncate, "ends 10 bytes early"),
        ] {
            let fx = Fixture::new(1);
            let a = sp('a', "a");
            publish(&fx.ups[0], &key(), &a, &tree("a", size));
            let cache = fx.open();
            let entry = cache.get(&a).await.unwrap();
            let data = entry.manifest.child(0, b"data").unwrap();
            let (file, _) = where_bytes_are(&entry, data);
            assert_eq!(file.ends_with(PACK_FILE), size < 65_536, "{size}-byte file's place");
            match damage {
                Damage::Delete => std::fs::remove_file(&file).unwrap(),
                Damage::Truncate => {
                    make_writable(&file);
                    let len = std::fs::metadata(&file).unwrap().len();
                    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
                    f.set_len(len - 10).unwrap();
                }
            }
            let report = cache.verify(None).await;
            assert_eq!(report.corrupt.len(), 1, "{size}");
            let reason = &report.corrupt[0].1;
            assert!(reason.contains(says), "{size}: {reason}");
            assert!(cache.entries().is_empty(), "{size}");
            assert_eq!(cache.used_bytes(), 0, "{size}");
            cache.close();
        }
    }

    /// A pack with bytes after its last file does not pass as clean, though every file reads.
    #[tokio::test]
    async fn verify_reports_a_pack_that_grew() {
        let fx = Fixture::new(1);
        let a = sp('a', "a");
        publish(&fx.ups[0], &key(), &a, &tree("a", 1000));
        let cache = fx.open();
        let entry = cache.get(&a).await.unwrap();
        let data = entry.manifest.child(0, b"data").unwrap();
        let (pack, _) = where_bytes_are(&entry, data);
        assert!(pack.ends_with(PACK_FILE), "a 1000-byte file is packed");
        make_writable(&pack);
        let mut file = std::fs::OpenOptions::new().append(true).open(&pack).unwrap();
        std::io::Write::write_all(&mut file, b"junk").unwrap();
        let report = cache.verify(None).await;
        assert_eq!(report.corrupt.len(), 1);
        assert!(report.corrupt[0].1.contains("pack file has"), "{}", report.corrupt[0].1);
    }
}
