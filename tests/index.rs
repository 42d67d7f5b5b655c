//! `storefs index` over binary caches made by real Nix: stock Nix 2.8 still substitutes from the
//! indexed cache over nginx, `zstd -d` decodes every re-encoded NAR to its NarHash, the mount
//! serves it path-level, a rerun changes nothing, and a run SIGKILLed at each commit step leaves
//! every narinfo naming a complete NAR. Needs root, nix-bin, nginx and zstd.

#![cfg(feature = "fuse_tests")]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::daemon::{Daemon, storefs_bin};
use common::{Fixtures, Nginx, daemon_args, fuse_setup, hash_part, require, run};
use sha2::{Digest, Sha256};
use storefs::nix::file_index::SignedIndex;
use storefs::nix::hash::NarHash;
use storefs::nix::narinfo::{Compression, NarInfo};
use storefs::nix::signature::TrustedKeys;
use storefs::upstream::decompress::decoder;

/// What these tests need besides the fixture.
const NEEDS: &[&str] = &["root", "nix-store", "nix-hash", "nginx", "zstd"];

/// A copy of the fixture's xz cache at `<tmp>/xz`, to be indexed.
fn cache_copy(fx: &Fixtures) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("xz");
    run(Command::new("cp").arg("-a").arg(fx.cache_dir("xz")).arg(&dir));
    (tmp, dir)
}

fn index(dir: &Path, fx: &Fixtures, env: &[(&str, &str)]) -> Output {
    Command::new(storefs_bin())
        .arg("index")
        .arg(dir)
        .arg("--secret-key-file")
        .arg(fx.secret_key_path())
        .args(["--jobs", "2"])
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn index_ok(dir: &Path, fx: &Fixtures) -> String {
    let out = index(dir, fx, &[]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    text
}

fn narinfos(dir: &Path) -> Vec<(PathBuf, NarInfo)> {
    let mut out: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "narinfo"))
        .map(|p| {
            let info = NarInfo::parse(&fs::read(&p).unwrap()).unwrap();
            (p, info)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Every narinfo names a NAR file that exists and decodes to NarSize bytes hashing to NarHash.
fn assert_every_narinfo_names_a_complete_nar(dir: &Path) -> usize {
    let infos = narinfos(dir);
    for (file, info) in &infos {
        let nar = dir.join(&info.url);
        let body = fs::File::open(&nar)
            .unwrap_or_else(|e| panic!("{} names {}: {e}", file.display(), nar.display()));
        let mut reader = decoder(info.compression, body).unwrap();
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut size = 0u64;
        loop {
            let n = reader.read(&mut buf).unwrap_or_else(|e| panic!("{}: {e}", nar.display()));
            if n == 0 {
                break;
            }
            size += n as u64;
            hasher.update(&buf[..n]);
        }
        assert_eq!(size, info.nar_size, "{}", nar.display());
        let hash = NarHash::from_digest(hasher.finalize().into());
        assert_eq!(hash, info.nar_hash, "{}", nar.display());
    }
    infos.len()
}

/// Every file under `dir` (names and contents), for "nothing changed" checks.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().to_path_buf(), fs::read(&p).unwrap());
            }
        }
    }
    out
}

#[test]
fn nix_substitutes_the_whole_closure_from_an_indexed_cache() {
    if require(NEEDS, "nix_substitutes_the_whole_closure_from_an_indexed_cache") {
        return;
    }
    let fx = common::fixtures();
    let (tmp, dir) = cache_copy(fx);
    index_ok(&dir, fx);
    let nginx = Nginx::start(tmp.path(), "");
    let nix = |program: &str, args: &[&str], root: &Path| {
        run(Command::new(program)
            .args(args)
            .arg("--store")
            .arg(root)
            .args(["--option", "trusted-public-keys", &fx.public_key])
            .args(["--option", "build-users-group", ""])
            .env_remove("NIX_REMOTE"));
        for path in &fx.closure {
            let copied = root.join(path.trim_start_matches('/'));
            assert!(copied.symlink_metadata().is_ok(), "{program} {args:?}: {path} is missing");
        }
    };
    let url = nginx.url("xz");
    nix("nix-store", &["-r", &fx.top, "--option", "substituters", &url], &tmp.path().join("a"));
    // `--store` is where `nix copy` copies to, unless `--to` says otherwise.
    let copy = ["--extra-experimental-features", "nix-command", "copy", "--from", &url, &fx.top];
    nix("nix", &copy, &tmp.path().join("b"));
    // Nix checked each NAR against NarHash as it substituted; it read the re-encoded ones.
    let n = 2 * fx.closure.len();
    assert_eq!(nginx.wait_for_requests(".nar.zst", n, Duration::from_secs(10)), n);
    assert_eq!(nginx.count_requests(".nar.xz"), 0);
}

#[test]
fn every_reencoded_nar_decodes_with_zstd_to_its_nar_hash_and_has_a_verifying_index() {
    if require(NEEDS, "every_reencoded_nar_decodes_with_zstd_to_its_nar_hash") {
        return;
    }
    let fx = common::fixtures();
    let (tmp, dir) = cache_copy(fx);
    let before = narinfos(&dir);
    index_ok(&dir, fx);
    let keys = TrustedKeys::parse_all([fx.public_key.as_str()]).unwrap();
    let decoded = tmp.path().join("decoded.nar");
    for ((_, old), (file, new)) in before.iter().zip(narinfos(&dir)) {
        assert_eq!(new.compression, Compression::Zstd, "{}", file.display());
        assert_eq!(new.signatures, old.signatures, "{}: Sig lines untouched", file.display());
        assert_eq!(new.fingerprint(), old.fingerprint());
        keys.verify(&new).unwrap();
        run(Command::new("zstd")
            .args(["-d", "-q", "-f", "-o"])
            .arg(&decoded)
            .arg(dir.join(&new.url)));
        let hash = run(Command::new("nix-hash")
            .args(["--type", "sha256", "--flat", "--base32"])
            .arg(&decoded));
        assert_eq!(
            format!("sha256:{}", String::from_utf8_lossy(&hash).trim()),
            new.nar_hash.to_string(),
            "{}",
            new.url
        );
        let index = dir.join(format!("{}.index", new.store_path.hash_part()));
        let (ix, _) = SignedIndex::open(&fs::read(&index).unwrap(), &keys, &new).unwrap();
        ix.check_tree(fs::File::open(&decoded).unwrap()).unwrap();
    }
}

#[test]
fn the_mount_serves_an_indexed_cache_path_level() {
    let Some(fx) = fuse_setup("the_mount_serves_an_indexed_cache_path_level") else { return };
    if require(NEEDS, "the_mount_serves_an_indexed_cache_path_level") {
        return;
    }
    let (tmp, dir) = cache_copy(fx);
    index_ok(&dir, fx);
    let nginx = Nginx::start(tmp.path(), "");
    let d = Daemon::start(tmp.path(), &daemon_args(&[nginx.url("xz")], &fx.public_key, &[]));
    let exe = d.mnt.join(fx.exe.trim_start_matches("/nix/store/"));
    let out = run(&mut Command::new(&exe));
    assert_eq!(String::from_utf8_lossy(&out).trim_end(), fx.exe_expected);
    for path in [&fx.big, &fx.weird, &fx.deep, &fx.symlink_root] {
        let mounted = d.mnt.join(path.trim_start_matches("/nix/store/"));
        let hash =
            run(Command::new("nix-hash").args(["--type", "sha256", "--base32"]).arg(&mounted));
        let info = fs::read_to_string(dir.join(format!("{}.narinfo", hash_part(path)))).unwrap();
        let want = info.lines().find_map(|l| l.strip_prefix("NarHash: sha256:")).unwrap();
        assert_eq!(String::from_utf8_lossy(&hash).trim(), want, "{path}");
    }
    assert!(nginx.wait_for_requests(".nar.zst", 4, Duration::from_secs(10)) >= 4);
}

#[test]
fn a_second_run_changes_nothing() {
    if require(NEEDS, "a_second_run_changes_nothing") {
        return;
    }
    let fx = common::fixtures();
    let (_tmp, dir) = cache_copy(fx);
    let first = index_ok(&dir, fx);
    assert!(
        first.starts_with(&format!("indexed {} paths, skipped 0", fx.closure.len())),
        "{first}"
    );
    let before = snapshot(&dir);
    let second = index_ok(&dir, fx);
    assert!(
        second.starts_with(&format!("indexed 0 paths, skipped {}", fx.closure.len())),
        "{second}"
    );
    assert_eq!(snapshot(&dir), before);
}

#[test]
fn a_run_killed_at_each_step_leaves_complete_nars_and_a_rerun_finishes() {
    if require(NEEDS, "a_run_killed_at_each_step_leaves_complete_nars") {
        return;
    }
    let fx = common::fixtures();
    let (_tmp, dir) = cache_copy(fx);
    for point in ["index::after_nar_written", "index::after_narinfo_rename"] {
        let out = index(&dir, fx, &[("STOREFS_FAILPOINTS", point)]);
        assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{point}: {out:?}");
        assert_eq!(assert_every_narinfo_names_a_complete_nar(&dir), fx.closure.len(), "{point}");
    }
    let done = index_ok(&dir, fx);
    assert!(done.contains(", 0 failed"), "{done}");
    assert_every_narinfo_names_a_complete_nar(&dir);
    let again = index_ok(&dir, fx);
    assert!(
        again.starts_with(&format!("indexed 0 paths, skipped {}", fx.closure.len())),
        "{again}"
    );
    let leftovers: Vec<_> = snapshot(&dir)
        .into_keys()
        .filter(|p| p.to_string_lossy().contains(".storefs-index-tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Each narinfo names a re-encoded NAR, and no NAR of the old encoding is named any more.
    assert!(narinfos(&dir).iter().all(|(_, i)| i.url.ends_with(".nar.zst")));
}

#[test]
fn a_run_sigkilled_at_an_arbitrary_moment_leaves_complete_nars_and_a_rerun_finishes() {
    if require(NEEDS, "a_run_sigkilled_at_an_arbitrary_moment") {
        return;
    }
    let fx = common::fixtures();
    let (_tmp, dir) = cache_copy(fx);
    let mut child = Command::new(storefs_bin())
        .arg("index")
        .arg(&dir)
        .arg("--secret-key-file")
        .arg(fx.secret_key_path())
        .args(["--jobs", "2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it as soon as the first narinfo names a re-encoded NAR: in the middle of the run.
    let deadline = Instant::now() + Duration::from_secs(30);
    let started = || narinfos(&dir).iter().any(|(_, i)| i.compression == Compression::Zstd);
    while !started() {
        assert!(Instant::now() < deadline, "no narinfo was rewritten within 30 s");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before any narinfo changed");
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "the run finished before the kill");
    assert_eq!(assert_every_narinfo_names_a_complete_nar(&dir), fx.closure.len());
    let left = narinfos(&dir).iter().filter(|(_, i)| i.compression != Compression::Zstd).count();
    assert!(left > 0, "every path was done before the kill");
    let done = index_ok(&dir, fx);
    assert!(done.contains(", 0 failed"), "{done}");
    assert!(narinfos(&dir).iter().all(|(_, i)| i.compression == Compression::Zstd));
    assert_every_narinfo_names_a_complete_nar(&dir);
}
