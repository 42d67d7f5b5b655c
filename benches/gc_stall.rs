//! Reads of cached files while `storefs gc` evicts: with 10,000 cached entries, four readers
//! read the files of pinned paths through the real mount (each read reaches the daemon: the
//! page cache of the file is dropped first) while `storefs gc` evicts every unpinned entry.
//! Prints the distribution of read latencies during the gc, and before it for comparison.
//!
//! cargo bench --bench gc_stall             (STOREFS_BENCH_ENTRIES to change the count)
//! STOREFS_BIN=/path/to/storefs cargo bench --bench gc_stall   (measure another build, e.g. the
//! one before a change, with the same harness)
//!
//! A plain program: one sample is a whole gc of a freshly filled cache. Needs root and
//! /dev/fuse (skipped with a message otherwise). Without `--bench` (as under `cargo test
//! --benches`) it is a smoke test: 200 entries, one run.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use storefs::nix::signature::SigningKey;

#[path = "support/mod.rs"]
mod support;

use support::populate;

const READERS: usize = 4;
const PINNED: usize = 100;

/// `cargo bench` passes `--bench`; `cargo test --benches` does not (criterion's rule too).
fn smoke_test() -> bool {
    !std::env::args().any(|arg| arg == "--bench")
}

/// The storefs binary to measure: `STOREFS_BIN`, else the one built with this benchmark.
fn storefs_bin() -> String {
    std::env::var("STOREFS_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_storefs").to_owned())
}

struct Daemon {
    child: Child,
    socket: PathBuf,
}

impl Daemon {
    fn start(tmp: &Path, cache: &Path, mnt: &Path, key: &SigningKey) -> Daemon {
        let socket = tmp.join("control.sock");
        let child = Command::new(storefs_bin())
            .arg("mount")
            .arg(mnt)
            .arg("--cache-dir")
            .arg(cache)
            .arg("--control-socket")
            .arg(&socket)
            .args(["--nix-conf", "/dev/null", "--prefetch-jobs", "0", "--substituter"])
            .arg(format!("file://{}", tmp.display()))
            .args(["--trusted-public-key", &key.to_public_string()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Daemon { child, socket }
    }

    fn client(&self, args: &[&str]) -> std::process::Output {
        Command::new(storefs_bin())
            .args(args)
            .arg("--control-socket")
            .arg(&self.socket)
            .output()
            .unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// One read that reaches the daemon: the file's page cache is dropped, then 5 bytes are read.
fn read_once(path: &Path) -> Duration {
    let start = Instant::now();
    let file = File::open(path).unwrap();
    // SAFETY: a valid descriptor for the call.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    let mut buf = [0u8; 5];
    file.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"hello");
    start.elapsed()
}

struct Run {
    before: Vec<Duration>,
    during: Vec<Duration>,
    gc: Duration,
}

fn one_run(entries: usize) -> Run {
    let key = SigningKey::generate("bench-1", [5; 32]);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let names = populate(&cache, &key, entries);
    let pinned: Vec<String> = names[..PINNED.min(entries)].to_vec();
    for name in &pinned {
        std::fs::write(cache.join("pins").join(name), "").unwrap();
    }
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let daemon = Daemon::start(tmp.path(), &cache, &mnt, &key);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read(mnt.join(&pinned[0])).is_ok_and(|b| b == b"hello") {
        assert!(Instant::now() < deadline, "mount never became ready");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Every entry loaded (gc waits for the scan anyway) and every reader's path looked up once.
    let stats = daemon.client(&["stats", "--json"]);
    assert!(stats.status.success(), "stats failed: {}", String::from_utf8_lossy(&stats.stderr));

    let stop = Arc::new(AtomicBool::new(false));
    let in_gc = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..READERS)
        .map(|r| {
            let (stop, in_gc) = (stop.clone(), in_gc.clone());
            let paths: Vec<PathBuf> = pinned.iter().map(|n| mnt.join(n)).collect();
            std::thread::spawn(move || {
                let (mut before, mut during) = (Vec::new(), Vec::new());
                let mut i = r;
                while !stop.load(Ordering::Relaxed) {
                    let gc_running = in_gc.load(Ordering::Relaxed);
                    let took = read_once(&paths[i % paths.len()]);
                    if gc_running && in_gc.load(Ordering::Relaxed) {
                        during.push(took);
                    } else if !gc_running {
                        before.push(took);
                    }
                    i += READERS;
                }
                (before, during)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    in_gc.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let gc = daemon.client(&["gc"]);
    let gc_took = started.elapsed();
    in_gc.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    assert!(gc.status.success(), "gc failed: {}", String::from_utf8_lossy(&gc.stderr));
    let (mut before, mut during) = (Vec::new(), Vec::new());
    for r in readers {
        let (b, d) = r.join().unwrap();
        before.extend(b);
        during.extend(d);
    }
    // The gc really evicted every unpinned entry and kept the pinned ones.
    let left = std::fs::read_dir(cache.join("entries")).unwrap().count();
    assert_eq!(left, pinned.len(), "gc should leave exactly the pinned entries");
    drop(daemon);
    Run { before, during, gc: gc_took }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn describe(label: &str, mut v: Vec<Duration>) -> String {
    v.sort();
    let slow = v.iter().filter(|d| **d > Duration::from_millis(10)).count();
    format!(
        "{label}: {} reads, {slow} over 10 ms, p50 {:?}, p99 {:?}, p99.9 {:?}, max {:?}",
        v.len(),
        pct(&v, 0.5),
        pct(&v, 0.99),
        pct(&v, 0.999),
        v.last().copied().unwrap_or_default()
    )
}

fn main() {
    let smoke = smoke_test();
    let (default_entries, runs) = if smoke { (200, 1) } else { (10_000, 3) };
    let entries: usize = std::env::var("STOREFS_BENCH_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_entries);
    let root_ok = unsafe { libc::geteuid() } == 0 && Path::new("/dev/fuse").exists();
    if !root_ok {
        println!("SKIPPING gc_stall: needs root and /dev/fuse");
        return;
    }
    println!("measuring {}", storefs_bin());
    for run in 1..=runs {
        let r = one_run(entries);
        println!(
            "run {run}: gc of {} unpinned entries (of {entries}) took {:?}",
            entries - PINNED.min(entries),
            r.gc
        );
        println!("  {}", describe("before gc", r.before));
        println!("  {}", describe("during gc", r.during));
    }
}
