//! Start-up cost with a large cache: time from `storefs mount` to a mount that answers, and the
//! in-process `NarCache::open`, with 10,000 cached entries. Needs root and /dev/fuse for the
//! mount part (skipped with a message otherwise).
//!
//! cargo bench --bench cache_startup            (STOREFS_BENCH_ENTRIES to change the count)
//!
//! A plain program rather than criterion: one sample is a whole daemon start and a mount, a few
//! are enough, and the fixture (10,000 signed entries) is built once for both timings.
//! Without `--bench` (as under `cargo test --benches` or `--all-targets`) it is a smoke test:
//! 100 entries, one run, no mount.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use storefs::cache::MinFree;
use storefs::cache::{CacheConfig, NarCache};
use storefs::nix::signature::{SigningKey, TrustedKeys};
use storefs::upstream::UpstreamSet;
use storefs::upstream::low_speed::LowSpeedLimit;

#[path = "support/mod.rs"]
mod support;

use support::{median, populate};

const RUNS: usize = 5;

/// `cargo bench` passes `--bench`; `cargo test --benches` does not (criterion's rule too).
fn smoke_test() -> bool {
    !std::env::args().any(|arg| arg == "--bench")
}

fn main() {
    let smoke = smoke_test();
    let (default_entries, runs) = if smoke { (100, 1) } else { (10_000, RUNS) };
    let entries: usize = std::env::var("STOREFS_BENCH_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_entries);
    let key = SigningKey::generate("bench-1", [5; 32]);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let probe = populate(&cache, &key, entries).pop().unwrap();
    let open: Vec<_> = (0..runs)
        .map(|_| {
            let rt = tokio::runtime::Runtime::new().unwrap();
            let start = Instant::now();
            let config = CacheConfig {
                dir: cache.clone(),
                max_bytes: 1 << 40,
                negative_ttl: Duration::from_secs(60),
                low_speed: LowSpeedLimit { min_bytes_per_sec: 1, window: Duration::from_secs(30) },
                min_free: MinFree::Bytes(0),
                prefetch_jobs: 0,
                fetch_timeout: None,
                uid_rate: storefs::upstream::rate::RateLimit::OFF,
                index_keys: storefs::nix::signature::TrustedKeys::default(),
                index_min_nar_bytes: 0,
                stream_file_bytes: storefs::cache::STREAMED_FILE_BYTES,
            };
            let keys = TrustedKeys::new(vec![key.public()]).unwrap();
            let c = rt.block_on(async { NarCache::open(config, UpstreamSet::default(), keys) });
            let c = c.unwrap();
            let opened = start.elapsed();
            rt.block_on(c.wait_scanned());
            assert_eq!(c.entries().len(), entries);
            let scanned = start.elapsed();
            drop(c);
            // Background tasks hold the cache (and its lock) until they end.
            rt.shutdown_timeout(Duration::from_secs(30));
            (opened, scanned)
        })
        .collect();
    let (opened, scanned): (Vec<_>, Vec<_>) = open.into_iter().unzip();
    println!(
        "NarCache::open with {entries} entries: ready in median {:?}, background scan done in {:?}",
        median(opened),
        median(scanned)
    );

    if smoke {
        println!("smoke test (no --bench): skipping the mount timing");
        return;
    }
    let root_ok = unsafe { libc::geteuid() } == 0 && Path::new("/dev/fuse").exists();
    if !root_ok {
        println!("skipping the mount timing: needs root and /dev/fuse");
        return;
    }
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mount: Vec<_> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            let mut child = Command::new(env!("CARGO_BIN_EXE_storefs"))
                .arg("mount")
                .arg(&mnt)
                .arg("--cache-dir")
                .arg(&cache)
                .args(["--nix-conf", "/dev/null", "--substituter"])
                .arg(format!("file://{}", tmp.path().display()))
                .args(["--trusted-public-key", &key.to_public_string()])
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            // Ready = the mount serves a cached path (the daemon reads the disk, not upstream).
            let deadline = Instant::now() + Duration::from_secs(30);
            let elapsed = loop {
                if std::fs::read(mnt.join(&probe)).is_ok_and(|b| b == b"hello") {
                    break start.elapsed();
                }
                assert!(Instant::now() < deadline, "mount never became ready");
                std::thread::sleep(Duration::from_millis(2));
            };
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            child.wait().unwrap();
            elapsed
        })
        .collect();
    println!(
        "storefs mount to a ready mount with {entries} entries: median {:?} of {RUNS}",
        median(mount)
    );
}
