//! Support for storefs' integration tests against real components: a real-Nix
//! fixture closure with binary caches ([`fixtures()`]), a real nginx serving them
//! ([`Nginx`]), and a loud skip helper ([`require`]). Use it with `mod common;`.
//!
//! ```ignore
//! mod common;
//! #[test]
//! fn serves_narinfo() {
//!     if common::require(&["nix-store", "nginx"], "serves_narinfo") {
//!         return;
//!     }
//!     let fx = common::fixtures();
//!     let nginx = common::Nginx::start(&fx.caches_dir(), "");
//!     let cache_url = nginx.url("zstd");
//!     // ...
//! }
//! ```

// Every test binary compiles this module anew and none uses all of it, so unused
// items would warn in each of them.
#![allow(dead_code, unused_imports, reason = "shared by test binaries that each use a part")]

pub mod big;
pub mod daemon;
pub mod fixtures;
pub mod fleet;
pub mod hostile;
pub mod nginx;
pub mod readers;
pub mod supervisor;

pub use fixtures::{COMPRESSIONS, Fixtures, fixtures, fixtures_dir, hash_part};
pub use nginx::{AccessEntry, Nginx};

use std::path::{Path, PathBuf};

/// Loud skip: returns `true` (skip the test) when a requirement is missing, after
/// printing `SKIPPING <test>: <why>` to stderr; under `CI=true` it panics instead,
/// because a skipped test must not pass CI.
///
/// Each requirement is
/// - `"root"`: the effective uid is 0;
/// - an absolute path (e.g. `"/dev/fuse"`): it exists and, for a device, opens
///   read-write;
/// - otherwise a program name (e.g. `"nix-store"`, `"nginx"`): found in `$PATH`,
///   `/usr/sbin` or `/sbin`.
pub fn require(requirements: &[&str], test: &str) -> bool {
    let missing: Vec<String> = requirements.iter().filter_map(|r| why_missing(r)).collect();
    if missing.is_empty() {
        return false;
    }
    let why = missing.join("; ");
    if is_ci() {
        panic!("{test}: {why} (CI=true, so a skip is a failure; run scripts/install-deps.sh)");
    }
    eprintln!("SKIPPING {test}: {why}");
    true
}

/// Runs `cmd`, panics with its stderr unless it succeeds, returns its stdout.
pub fn run(cmd: &mut std::process::Command) -> Vec<u8> {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// Bytes allocated under `path`, as `du -s --block-size=1` counts them.
pub fn du_bytes(path: &Path) -> u64 {
    let out = run(std::process::Command::new("du").args(["-s", "--block-size=1"]).arg(path));
    String::from_utf8_lossy(&out).split_whitespace().next().unwrap().parse().unwrap()
}

/// What the real-FUSE tests need.
pub const FUSE_NEEDS: &[&str] = &["root", "/dev/fuse", "nix-store", "nix-hash", "nginx"];

/// For a real-FUSE test: the fixture, or None (after a loud skip) when something is missing.
pub fn fuse_setup(test: &str) -> Option<&'static Fixtures> {
    if require(FUSE_NEEDS, test) {
        return None;
    }
    Some(fixtures())
}

/// `storefs mount` arguments: the substituters in order, one trusted key, then `extra`.
pub fn daemon_args(substituters: &[String], key: &str, extra: &[&str]) -> Vec<String> {
    let mut args = Vec::new();
    for s in substituters {
        args.extend(["--substituter".to_owned(), s.clone()]);
    }
    args.extend(["--trusted-public-key".to_owned(), key.to_owned()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Whether `CI` is set to `true` (or `1`).
pub fn is_ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok("true") | Ok("1"))
}

/// The full path of program `name`, searched in `$PATH`, then `/usr/local/sbin`,
/// `/usr/sbin`, `/sbin` (nginx lives in /usr/sbin, which a non-root PATH may lack).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

fn why_missing(req: &str) -> Option<String> {
    if req == "root" {
        return (unsafe { libc::geteuid() } != 0).then(|| "not running as root".to_string());
    }
    if req.starts_with('/') {
        use std::os::unix::fs::FileTypeExt;
        let p = Path::new(req);
        let meta = match p.metadata() {
            Ok(m) => m,
            Err(e) => return Some(format!("{req}: {e}")),
        };
        if !meta.file_type().is_char_device() {
            return None;
        }
        return std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(p)
            .err()
            .map(|e| format!("{req} cannot be opened: {e}"));
    }
    find_tool(req).is_none().then(|| format!("{req} is not installed"))
}

/// A copy of the fixture's xz cache in a fresh directory, prepared by `storefs index` with
/// `frame_size` (signed with the fixture's key): the temporary directory and the cache in it.
pub fn indexed_copy(fx: &Fixtures, frame_size: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("xz");
    run(std::process::Command::new("cp").arg("-a").arg(fx.cache_dir("xz")).arg(&dir));
    run(std::process::Command::new(daemon::storefs_bin())
        .arg("index")
        .arg(&dir)
        .arg("--secret-key-file")
        .arg(fx.secret_key_path())
        .args(["--frame-size", frame_size]));
    (tmp, dir)
}
