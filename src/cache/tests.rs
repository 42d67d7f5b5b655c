//! Cache behaviour over in-memory upstreams: verification, single-flight, negative caching,
//! failover, eviction and restart. No network, no kernel.

use std::time::Duration;

use sha2::{Digest, Sha256};

use super::*;
use crate::nix::hash::NarHash;
use crate::nix::nar::Node as NarNode;
use crate::nix::signature::SigningKey;
use crate::upstream::Upstream;
use crate::upstream::mock::MockUpstream;

pub(crate) fn key() -> SigningKey {
    SigningKey::generate("test-1", [1; 32])
}

pub(crate) fn sp(seed: char, name: &str) -> StorePath {
    let hash: String = std::iter::repeat_n(seed, 32).collect();
    StorePath::from_basename(format!("{hash}-{name}").as_bytes()).unwrap()
}

pub(crate) fn tree(marker: &str, bytes: usize) -> NarNode {
    NarNode::Directory(vec![
        (
            b"bin".to_vec(),
            NarNode::Directory(vec![(
                b"tool".to_vec(),
                NarNode::File { executable: true, contents: marker.as_bytes().to_vec() },
            )]),
        ),
        (b"data".to_vec(), NarNode::File { executable: false, contents: vec![7; bytes] }),
        (b"link".to_vec(), NarNode::Symlink { target: b"bin/tool".to_vec() }),
    ])
}

/// An entry of `path` holding `disk_bytes`, for bookkeeping tests (nothing on disk).
pub(crate) fn entry_for_tests(path: &StorePath, disk_bytes: u64) -> Arc<Entry> {
    let text = format!(
        "StorePath: {}\nURL: nar/x.nar\nCompression: none\nNarHash: {}\nNarSize: 8\n\
         References: \n",
        path.to_absolute_path(),
        NarHash::from_digest([0; 32])
    );
    let narinfo = NarInfo::parse(text.as_bytes()).unwrap();
    let manifest = manifest::Manifest {
        narinfo: text,
        disk_bytes,
        nodes: vec![manifest::Node::File {
            parent: 0,
            executable: false,
            size: 0,
            packed: None,
            sums: None,
        }],
    };
    Arc::new(Entry {
        store_path: path.clone(),
        narinfo,
        manifest,
        dir: std::path::PathBuf::from("/nonexistent"),
        touched_secs: AtomicU64::new(0),
        partial: None,
    })
}

/// Signs and publishes `tree` as `path` in `up`; returns the NAR bytes.
pub(crate) fn publish(
    up: &MockUpstream,
    signer: &SigningKey,
    path: &StorePath,
    tree: &NarNode,
) -> Vec<u8> {
    publish_refs(up, signer, path, tree, &[])
}

/// `publish`, with References.
pub(crate) fn publish_refs(
    up: &MockUpstream,
    signer: &SigningKey,
    path: &StorePath,
    tree: &NarNode,
    refs: &[&StorePath],
) -> Vec<u8> {
    let nar = tree.to_nar();
    let refs: Vec<String> = refs.iter().map(|r| r.to_string()).collect();
    let text = format!(
        "StorePath: {}\nURL: nar/{}.nar\nCompression: none\nNarHash: {}\nNarSize: {}\n\
         References: {}\n",
        path.to_absolute_path(),
        path.hash_part(),
        NarHash::from_digest(Sha256::digest(&nar).into()),
        nar.len(),
        refs.join(" ")
    );
    let mut info = NarInfo::parse(text.as_bytes()).unwrap();
    info.signatures.push(signer.sign(&info));
    up.insert(info, nar.clone());
    nar
}

pub(crate) struct Fixture {
    _dir: tempfile::TempDir,
    /// The last cache opened: closed when the next one opens.
    previous: std::sync::Mutex<std::sync::Weak<NarCache>>,
    pub(crate) config: CacheConfig,
    pub(crate) ups: Vec<Arc<MockUpstream>>,
}

impl Fixture {
    pub(crate) fn new(n_upstreams: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = CacheConfig {
            dir: dir.path().join("cache"),
            max_bytes: 1 << 30,
            negative_ttl: Duration::from_secs(3600),
            low_speed: LowSpeedLimit { min_bytes_per_sec: 1, window: Duration::from_secs(60) },
            min_free: MinFree::Bytes(0),
            prefetch_jobs: 0,
            fetch_timeout: None,
            uid_rate: crate::upstream::rate::RateLimit::OFF,
            index_keys: crate::nix::signature::TrustedKeys::default(),
            index_min_nar_bytes: 0,
            stream_file_bytes: super::STREAMED_FILE_BYTES,
        };
        let ups = (0..n_upstreams).map(|i| Arc::new(MockUpstream::new(&i.to_string()))).collect();
        Self { _dir: dir, config, ups, previous: std::sync::Mutex::new(std::sync::Weak::new()) }
    }

    pub(crate) fn open(&self) -> Arc<NarCache> {
        let set = UpstreamSet::in_order(
            self.ups.iter().map(|u| u.clone() as Arc<dyn Upstream>).collect(),
        );
        let keys = TrustedKeys::new(vec![key().public()]).unwrap();
        // Tasks of the previous cache may still hold it: closing it releases its directory.
        if let Some(previous) = self.previous.lock().unwrap().upgrade() {
            previous.close();
        }
        let cache = NarCache::open(self.config.clone(), set.clone(), keys.clone()).unwrap();
        *self.previous.lock().unwrap() = Arc::downgrade(&cache);
        cache
    }
}

fn read_file(entry: &Entry, name: &[u8]) -> Vec<u8> {
    let id = entry.manifest.child(manifest::ROOT_NODE, name).unwrap();
    entry.open_file(id).unwrap().read_at(0, u64::MAX).unwrap()
}

#[tokio::test]
async fn fetches_verifies_and_then_serves_from_disk() {
    let fx = Fixture::new(1);
    let path = sp('a', "hello");
    publish(&fx.ups[0], &key(), &path, &tree("hi", 100));
    let cache = fx.open();
    let entry = cache.get(&path).await.unwrap();
    assert_eq!(read_file(&entry, b"data"), vec![7; 100]);
    assert_eq!(entry.manifest.nodes.len(), 5);
    cache.get(&path).await.unwrap();
    assert_eq!(fx.ups[0].requests(), (1, 1), "second get is a hit");
    assert_eq!(CacheStats::get(&cache.stats.hits), 1);
}

#[tokio::test]
async fn concurrent_misses_share_one_fetch() {
    let fx = Fixture::new(1);
    let path = sp('b', "popular");
    publish(&fx.ups[0], &key(), &path, &tree("x", 1 << 20));
    let cache = fx.open();
    let gets = (0..50).map(|_| {
        let (cache, path) = (cache.clone(), path.clone());
        tokio::spawn(async move { cache.get(&path).await.map(|e| e.manifest.nodes.len()) })
    });
    for result in futures::future::join_all(gets).await {
        assert_eq!(result.unwrap().unwrap(), 5);
    }
    assert_eq!(fx.ups[0].requests(), (1, 1));
}

#[tokio::test]
async fn absent_paths_are_remembered_but_failures_are_not() {
    let mut fx = Fixture::new(1);
    let cache = fx.open();
    let path = sp('c', "absent");
    for _ in 0..10 {
        assert!(matches!(cache.get(&path).await, Err(CacheError::NotFound(_))));
    }
    assert_eq!(fx.ups[0].requests().0, 1, "one narinfo request within the TTL");

    *fx.ups[0].fail_status.lock().unwrap() = Some(500);
    let other = sp('d', "flaky");
    for _ in 0..3 {
        assert!(matches!(cache.get(&other).await, Err(CacheError::Unavailable { .. })));
    }
    assert_eq!(fx.ups[0].requests().0, 4, "errors are never cached as absent");

    fx.config.negative_ttl = Duration::ZERO;
    drop(cache);
    *fx.ups[0].fail_status.lock().unwrap() = None;
    let cache = fx.open();
    cache.get(&path).await.unwrap_err();
    publish(&fx.ups[0], &key(), &path, &tree("late", 1));
    cache.get(&path).await.expect("published later, found after the TTL");
}

#[tokio::test]
async fn a_failing_or_untrusted_cache_falls_through_to_the_next() {
    let fx = Fixture::new(3);
    let path = sp('n', "x");
    *fx.ups[0].fail_status.lock().unwrap() = Some(503);
    publish(&fx.ups[1], &SigningKey::generate("test-1", [2; 32]), &path, &tree("evil", 1));
    publish(&fx.ups[2], &key(), &path, &tree("good", 1));
    let cache = fx.open();
    let entry = cache.get(&path).await.unwrap();
    let tool_dir = entry.manifest.child(0, b"bin").unwrap();
    let tool = entry.manifest.child(tool_dir, b"tool").unwrap();
    assert_eq!(entry.open_file(tool).unwrap().read_at(0, 100).unwrap(), b"good");
    assert_eq!(fx.ups[1].requests(), (1, 0), "no NAR is fetched for an untrusted narinfo");
    assert_eq!(CacheStats::get(&cache.stats.verify_failures), 1);
}

#[tokio::test]
async fn a_nar_that_does_not_match_is_discarded() {
    let fx = Fixture::new(1);
    let path = sp('f', "x");
    publish(&fx.ups[0], &key(), &path, &tree("a", 10));
    // Same narinfo, other bytes of the same length.
    let info = fx.ups[0].narinfo(&path.hash_part()).await.unwrap().unwrap();
    let mut nar = tree("b", 10).to_nar();
    nar.truncate(info.nar_size as usize);
    fx.ups[0].insert(info, nar);
    let cache = fx.open();
    let err = cache.get(&path).await.unwrap_err();
    assert!(err.to_string().contains("hash"), "{err}");
    assert!(cache.entries().is_empty());
    let staging = fx.config.dir.join("staging");
    let leftovers = std::fs::read_dir(&staging).unwrap().count();
    let trash = std::fs::read_dir(fx.config.dir.join("trash")).unwrap().count();
    assert_eq!(leftovers, 0, "staging emptied");
    assert!(trash <= 1, "discarded staging goes to trash for deletion");
}

#[tokio::test]
async fn eviction_keeps_open_files_readable_and_limits_disk() {
    let mut fx = Fixture::new(1);
    fx.config.max_bytes = 300 * 1024;
    let paths: Vec<_> = "ghij".chars().map(|c| sp(c, "blob")).collect();
    for (i, p) in paths.iter().enumerate() {
        publish(&fx.ups[0], &key(), p, &tree(&i.to_string(), 120 * 1024));
    }
    let cache = fx.open();
    let first = cache.get(&paths[0]).await.unwrap();
    let data = first.manifest.child(0, b"data").unwrap();
    let open = first.open_file(data).unwrap();
    for p in &paths[1..] {
        cache.get(p).await.unwrap();
        assert!(cache.used_bytes() <= fx.config.max_bytes, "{} bytes", cache.used_bytes());
    }
    assert!(cache.cached(&paths[0]).is_none(), "the least recently used path was evicted");
    assert!(CacheStats::get(&cache.stats.evictions) >= 1);
    let bytes = open.read_at(0, u64::MAX).unwrap();
    assert_eq!(bytes, vec![7; 120 * 1024], "an open file survives eviction");
    // Fetched again on demand, with the same tree.
    let again = cache.get(&paths[0]).await.unwrap();
    assert_eq!(again.manifest, first.manifest);
}

#[tokio::test]
async fn a_restart_serves_cached_paths_without_requests() {
    let fx = Fixture::new(1);
    let path = sp('k', "kept");
    publish(&fx.ups[0], &key(), &path, &tree("k", 10));
    let cache = fx.open();
    let before = cache.get(&path).await.unwrap().manifest.clone();
    let used = cache.used_bytes();
    drop(cache);
    let cache = fx.open();
    // Served from disk even before the start-up scan has finished...
    assert_eq!(cache.get(&path).await.unwrap().manifest, before);
    assert_eq!(fx.ups[0].requests(), (1, 1), "served from disk after the restart");
    // ...and counted once when it has.
    cache.wait_scanned().await;
    assert_eq!(cache.used_bytes(), used);
    assert_eq!(cache.entries().len(), 1);
}

#[tokio::test]
async fn a_removed_key_stops_vouching_for_cached_entries() {
    let fx = Fixture::new(1);
    let path = sp('p', "x");
    publish(&fx.ups[0], &key(), &path, &tree("p", 10));
    let cache = fx.open();
    cache.get(&path).await.unwrap();
    drop(cache);
    let set = UpstreamSet::in_order(vec![fx.ups[0].clone() as Arc<dyn Upstream>]);
    let other = TrustedKeys::new(vec![SigningKey::generate("other-1", [4; 32]).public()]).unwrap();
    if let Some(previous) = fx.previous.lock().unwrap().upgrade() {
        previous.close();
    }
    let cache = NarCache::open(fx.config.clone(), set, other).unwrap();
    cache.wait_scanned().await;
    assert!(cache.entries().is_empty(), "an entry signed by a removed key was kept");
    assert!(matches!(cache.get(&path).await, Err(CacheError::Unavailable { .. })));
}

/// Files up to PACK_MAX_FILE_BYTES go one after another into the entry's pack; larger ones get a
/// cache file of their own. Either way they read back exactly.
#[tokio::test]
async fn small_files_share_the_pack_and_large_ones_keep_their_own() {
    let fx = Fixture::new(1);
    let path = sp('p', "mixed");
    let max = unpack::PACK_MAX_FILE_BYTES as usize;
    let file = |n: usize| NarNode::File { executable: false, contents: vec![n as u8; n] };
    let sizes = [0, 10, max, max + 1, 3];
    let names: Vec<Vec<u8>> = (0..sizes.len()).map(|i| format!("f{i}").into_bytes()).collect();
    let nar = NarNode::Directory(names.iter().cloned().zip(sizes.map(file)).collect());
    publish(&fx.ups[0], &key(), &path, &nar);
    let cache = fx.open();
    let entry = cache.get(&path).await.unwrap();
    let mut packed = Vec::new();
    for (name, size) in names.iter().zip(sizes) {
        let id = entry.manifest.child(0, name).unwrap();
        assert_eq!(
            entry.open_file(id).unwrap().read_at(0, u64::MAX).unwrap(),
            vec![size as u8; size]
        );
        match entry.manifest.node(id) {
            Some(Node::File { packed: Some(start), .. }) => packed.push((*start, size)),
            Some(Node::File { packed: None, .. }) => assert!(size > max, "{size} B not packed"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(packed, [(0, 0), (0, 10), (10, max), (10 + max as u64, 3)], "in NAR order");
    let mut on_disk: Vec<String> = std::fs::read_dir(&entry.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let big = entry.manifest.child(0, b"f3").unwrap();
    assert_eq!(on_disk, [format!("f{big}"), "manifest".into(), "pack".into()]);
}

#[tokio::test]
async fn accounting_matches_what_is_on_disk() {
    let fx = Fixture::new(1);
    let cache = fx.open();
    for (i, c) in "qrsv".chars().enumerate() {
        let path = sp(c, "sized");
        // Packed files only, then one of its own too (above PACK_MAX_FILE_BYTES).
        let data = if i == 3 { 70_000 } else { 3000 * i + 1 };
        publish(&fx.ups[0], &key(), &path, &tree(&"x".repeat(i * 5000), data));
        cache.get(&path).await.unwrap();
    }
    let out = std::process::Command::new("du")
        .args(["-s", "--block-size=1"])
        .arg(fx.config.dir.join("entries"))
        .output()
        .unwrap();
    let du: u64 =
        String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().parse().unwrap();
    let entries_dir = 4096; // entries/ itself, which no entry accounts for
    assert_eq!(cache.used_bytes() + entries_dir, du, "accounting vs du");
}

#[tokio::test]
async fn a_corrupt_manifest_is_discarded_at_start() {
    let fx = Fixture::new(1);
    let path = sp('l', "x");
    publish(&fx.ups[0], &key(), &path, &tree("l", 10));
    let cache = fx.open();
    cache.get(&path).await.unwrap();
    drop(cache);
    let manifest = fx.config.dir.join("entries").join(path.hash_part()).join("manifest");
    let mut bytes = std::fs::read(&manifest).unwrap();
    bytes[40] ^= 1;
    std::fs::write(&manifest, bytes).unwrap();
    let cache = fx.open();
    cache.wait_scanned().await;
    assert!(cache.entries().is_empty(), "corrupt entry not loaded");
    assert_eq!(cache.used_bytes(), 0);
    cache.get(&path).await.unwrap();
    assert_eq!(fx.ups[0].requests(), (1, 2), "NAR fetched again; the kept narinfo is reused");
}

#[tokio::test]
async fn a_narinfo_for_another_path_is_not_found() {
    let fx = Fixture::new(1);
    let asked = sp('m', "wanted");
    let served = sp('m', "other-name");
    publish(&fx.ups[0], &key(), &served, &tree("m", 1));
    let cache = fx.open();
    assert!(matches!(cache.get(&asked).await, Err(CacheError::NotFound(_))));
    assert!(cache.entries().is_empty());
}

#[tokio::test]
async fn an_evicted_path_comes_back_without_a_narinfo_request_even_after_a_restart() {
    let mut fx = Fixture::new(1);
    fx.config.max_bytes = 200 * 1024;
    let (a, b) = (sp('w', "a"), sp('x', "b"));
    publish(&fx.ups[0], &key(), &a, &tree("a", 150 * 1024));
    publish(&fx.ups[0], &key(), &b, &tree("b", 150 * 1024));
    let cache = fx.open();
    cache.get(&a).await.unwrap();
    cache.get(&b).await.unwrap();
    assert!(cache.cached(&a).is_none(), "a was evicted");
    drop(cache);
    let cache = fx.open();
    cache.wait_scanned().await;
    cache.get(&a).await.unwrap();
    assert_eq!(fx.ups[0].requests(), (2, 3), "a's NAR again, but not its narinfo");
}

/// `narinfo/` is bounded: past the limit, the narinfo of the path evicted longest ago is deleted
/// (not that of a cached path), and that path costs a narinfo request again.
#[tokio::test]
async fn narinfos_of_paths_evicted_long_ago_are_deleted_past_the_limit() {
    let mut fx = Fixture::new(1);
    fx.config.max_bytes = 200 * 1024;
    let (a, b, c) = (sp('p', "a"), sp('q', "b"), sp('r', "c"));
    for (path, marker) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        publish(&fx.ups[0], &key(), path, &tree(marker, 150 * 1024));
    }
    let cache = fx.open();
    for path in [&a, &b, &c] {
        cache.get(path).await.unwrap();
    }
    assert!(cache.cached(&a).is_none() && cache.cached(&b).is_none(), "a, then b, evicted");
    let narinfo = |p: &StorePath| fx.config.dir.join(layout::NARINFO_DIR).join(p.hash_part());
    assert!(narinfo(&a).exists() && narinfo(&b).exists(), "kept after eviction");
    cache.trim_narinfos_to(1);
    assert!(!narinfo(&a).exists(), "evicted first, deleted first");
    assert!(narinfo(&b).exists() && narinfo(&c).exists(), "b within the limit, c cached");
    assert_eq!(fx.ups[0].requests(), (3, 3));
    cache.get(&a).await.unwrap();
    assert_eq!(fx.ups[0].requests(), (4, 4), "a's narinfo is asked for again");
}

#[tokio::test]
async fn another_version_of_a_path_served_before_is_refused() {
    let mut fx = Fixture::new(1);
    fx.config.max_bytes = 200 * 1024;
    let (a, b) = (sp('y', "a"), sp('z', "b"));
    publish(&fx.ups[0], &key(), &a, &tree("first", 150 * 1024));
    publish(&fx.ups[0], &key(), &b, &tree("b", 150 * 1024));
    let cache = fx.open();
    cache.get(&a).await.unwrap();
    cache.get(&b).await.unwrap();
    assert!(cache.cached(&a).is_none(), "a was evicted");
    // The cache now offers a different, validly signed version of the same store path.
    publish(&fx.ups[0], &key(), &a, &tree("second", 150 * 1024));
    let err = cache.get(&a).await.unwrap_err();
    assert!(err.to_string().contains("served before"), "{err}");
}

/// The snapshot reads what each substituter counted itself: a failing cache's error, an
/// untrusted cache's request, and the serving cache's nix-cache-info, narinfo and NAR requests
/// and bytes; and every figure it reports is declared in `metrics::METRICS`.
#[tokio::test]
async fn the_snapshot_counts_each_upstream() {
    let fx = Fixture::new(3);
    let path = sp('s', "counted");
    *fx.ups[0].fail_status.lock().unwrap() = Some(503);
    publish(&fx.ups[1], &SigningKey::generate("test-1", [2; 32]), &path, &tree("evil", 1));
    let nar = publish(&fx.ups[2], &key(), &path, &tree("good", 1000));
    let cache = fx.open();
    cache.get(&path).await.unwrap();
    cache.get(&path).await.unwrap();
    let s = cache.snapshot();
    let n = |key: &str| s.count(key).unwrap_or_else(|| panic!("{key} missing in {s:?}"));
    assert_eq!((n("lookups"), n("cache_hits"), s.number("hit_rate")), (2, 1, Some(0.5)));
    assert_eq!((n("narinfo_requests"), n("nar_downloads"), n("in_flight")), (3, 1, 0));
    assert_eq!(n("bytes_downloaded"), nar.len() as u64, "Compression: none");
    assert_eq!((n("cached_paths"), n("cache_limit_bytes")), (1, 1 << 30));
    let per: Vec<_> = s
        .upstreams
        .iter()
        .map(|u| ["requests", "errors", "bytes"].map(|k| u.figures[k].as_f64().unwrap() as u64))
        .collect();
    let nar_len = nar.len() as u64;
    assert_eq!(per, [[2, 1, 0], [2, 0, 0], [3, 0, nar_len]], "nix-cache-info counts too");
    for u in &s.upstreams {
        assert_eq!(u.figures["online"], crate::metrics::Value::Flag(true));
        assert!(u.figures["latency_ms_p50"].as_f64().is_some(), "{u:?}");
    }
    let declared = |key: &str| {
        crate::metrics::METRICS.iter().any(|m| match m.source {
            crate::metrics::Source::Daemon(k) | crate::metrics::Source::Latency(k) => k == key,
            crate::metrics::Source::PerUpstream(k, _) => k == key,
            crate::metrics::Source::Labelled { .. } => m.json_keys().iter().any(|k| k == key),
            crate::metrics::Source::Build => false,
        })
    };
    let keys = s.figures.keys().chain(s.histograms.keys()).chain(s.upstreams[0].figures.keys());
    for key in keys {
        assert!(declared(key), "{key} is reported but not declared in METRICS");
    }
    let text = crate::metrics::render(&s);
    assert!(text.contains("storefs_narinfo_fetch_seconds_count 3\n"), "{text}");
    assert!(text.contains("storefs_nar_fetch_seconds_count 1\n"), "{text}");
}
