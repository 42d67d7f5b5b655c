//! `NarCache::export_db` against real Nix: the registrations of the fixture closure, loaded
//! with `nix-store --load-db` into a fresh chroot store (`--store <dir>`, which Nix 2.8
//! accepts for --load-db), make every closure path valid there. No FUSE, no daemon.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use storefs::cache::MinFree;
use storefs::cache::{CacheConfig, NarCache};
use storefs::nix::signature::TrustedKeys;
use storefs::nix::store_path::StorePath;
use storefs::upstream::UpstreamSet;
use storefs::upstream::low_speed::LowSpeedLimit;
use storefs::upstream::set::{UpstreamOptions, upstream_for_url};

fn open_cache(dir: &std::path::Path, fx: &common::Fixtures) -> Arc<NarCache> {
    let url = format!("file://{}", fx.cache_dir("zstd").display());
    let up = upstream_for_url(&url, &reqwest::Client::new(), &UpstreamOptions::default()).unwrap();
    let config = CacheConfig {
        dir: dir.join("cache"),
        max_bytes: 1 << 32,
        negative_ttl: Duration::from_secs(60),
        low_speed: LowSpeedLimit { min_bytes_per_sec: 1, window: Duration::from_secs(60) },
        min_free: MinFree::Bytes(0),
        prefetch_jobs: 0,
        fetch_timeout: None,
        uid_rate: storefs::upstream::rate::RateLimit::OFF,
        index_keys: storefs::nix::signature::TrustedKeys::default(),
        index_min_nar_bytes: 0,
        stream_file_bytes: storefs::cache::STREAMED_FILE_BYTES,
    };
    let keys = TrustedKeys::parse_all([fx.public_key.as_str()]).unwrap();
    NarCache::open(config, UpstreamSet::in_order(vec![up]), keys).unwrap()
}

fn nix_store(args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new("nix-store")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_db_closure_loads_into_a_fresh_nix_store() {
    if common::require(&["nix-store"], "export_db_closure_loads_into_a_fresh_nix_store") {
        return;
    }
    let fx = common::fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let cache = open_cache(tmp.path(), fx);
    let top = StorePath::from_absolute_path(fx.top.as_bytes()).unwrap();

    let closure = cache.closure(std::slice::from_ref(&top)).await.unwrap();
    let mut got: Vec<String> = closure.iter().map(StorePath::to_absolute_path).collect();
    got.sort();
    assert_eq!(got, fx.closure, "closure() follows References like nix-store -qR");

    let db = cache.export_db(std::slice::from_ref(&top), true).await.unwrap();
    let store = tmp.path().join("store");
    let store = store.to_str().unwrap();
    let (ok, _, err) = nix_store(&["--load-db", "--store", store], Some(&db));
    assert!(ok, "nix-store --load-db failed: {err}\ninput:\n{db}");

    let mut check = vec!["--store", store, "--check-validity"];
    check.extend(fx.closure.iter().map(String::as_str));
    let (ok, _, err) = nix_store(&check, None);
    assert!(ok, "closure paths not valid in the fresh store: {err}");

    let (ok, out, err) = nix_store(&["--store", store, "-qR", &fx.top], None);
    assert!(ok, "nix-store -qR failed: {err}");
    let mut listed: Vec<String> = out.lines().map(str::to_owned).collect();
    listed.sort();
    assert_eq!(listed, fx.closure, "nix-store -qR in the fresh store prints the closure");

    // Where the fixture is also valid in this machine's store, Nix's own --dump-db of the
    // same paths (in the same, sorted, order) must be byte for byte what we printed.
    let mut dump = vec!["--dump-db"];
    dump.extend(fx.closure.iter().map(String::as_str));
    match nix_store(&dump, None) {
        (true, nix_said, _) => assert_eq!(db, nix_said, "export_db differs from nix-store"),
        (false, _, err) => eprintln!("not comparing with the host's --dump-db: {err}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_db_without_closure_lists_only_the_paths_asked_for() {
    if common::require(&["nix-store"], "export_db_without_closure_lists_only_the_paths_asked_for") {
        return;
    }
    let fx = common::fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let cache = open_cache(tmp.path(), fx);
    let top = StorePath::from_absolute_path(fx.top.as_bytes()).unwrap();
    let db = cache.export_db(std::slice::from_ref(&top), false).await.unwrap();
    assert_eq!(db.lines().next(), Some(fx.top.as_str()));
    let refs: usize = db.lines().nth(4).unwrap().parse().unwrap();
    assert_eq!(db.lines().count(), 5 + refs, "one registration");
}
