//! File-level laziness through the real mount (issue 14, part 2): with `--trusted-index-key`, a
//! path of an indexed cache is listed and stat'ed from its signed index with no NAR download,
//! its files come by HTTP Range and verify, a restart keeps them; a tampered frame gives EIO for
//! its files only; a tampered or untrusted index falls back to the whole NAR, verified by
//! NarHash; with `--passthrough`, files are fetched at open. Needs root, nix-bin, nginx and zstd.

#![cfg(feature = "fuse_tests")]

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::daemon::{Daemon, stat, stats};
use common::{Fixtures, Nginx, daemon_args, fuse_setup, hash_part, indexed_copy, require, run};
use sha2::{Digest, Sha256};
use storefs::nix::file_index::{FileIndex, NodeKind, SignedIndex};
use storefs::nix::signature::SigningKey;

const NEEDS: &[&str] = &["root", "nix-store", "nix-hash", "nginx", "zstd"];

/// The fixture and a copy of its xz cache indexed with `frame_size`, or None (after a loud
/// skip) when something the test needs is missing.
fn setup(test: &str, frame_size: &str) -> Option<(&'static Fixtures, tempfile::TempDir, PathBuf)> {
    let fx = fuse_setup(test)?;
    if require(NEEDS, test) {
        return None;
    }
    let (tmp, dir) = indexed_copy(fx, frame_size);
    Some((fx, tmp, dir))
}

/// The mount over `nginx`'s `xz` cache, trusting indexes signed by `index_key`.
fn mount(tmp: &Path, fx: &Fixtures, nginx: &Nginx, index_key: &str) -> Daemon {
    mount_with(tmp, fx, nginx, index_key, &[])
}

/// [`mount`] with `more` flags.
fn mount_with(tmp: &Path, fx: &Fixtures, nginx: &Nginx, index_key: &str, more: &[&str]) -> Daemon {
    // No closure prefetch: the requests counted are the reader's own. Every index is used,
    // however small its NAR.
    let mut extra =
        vec!["--trusted-index-key", index_key, "--prefetch-jobs", "0", "--index-min-nar-size", "0"];
    extra.extend_from_slice(more);
    let mnt = tmp.join("mnt");
    // After a SIGKILL the mountpoint is a dead mount (ENOTCONN): the daemon detaches it.
    let _ = fs::create_dir(&mnt);
    let args = daemon_args(&[nginx.url("xz")], &fx.public_key, &extra);
    Daemon::start_at(&mnt, &tmp.join("cache"), &tmp.join("storefs.log"), &args)
}

/// Requests nginx saw for NAR files: (ranged, whole).
fn nar_requests(nginx: &Nginx) -> (usize, usize) {
    let nars: Vec<_> = nginx.entries().into_iter().filter(|e| e.path().contains("/nar/")).collect();
    let ranged = nars.iter().filter(|e| e.range.is_some() && e.status == 206).count();
    (ranged, nars.len() - ranged)
}

/// Walks `dir` as `find` and `ls -l` would (lstat, readdir, readlink), returning the number of
/// names seen.
fn walk_metadata(dir: &Path) -> usize {
    let mut seen = 0;
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = fs::symlink_metadata(&path).unwrap();
        seen += 1;
        if meta.is_dir() {
            seen += walk_metadata(&path);
        } else if meta.file_type().is_symlink() {
            assert!(!fs::read_link(&path).unwrap().as_os_str().is_empty());
        }
    }
    seen
}

fn nix_hash(path: &Path) -> String {
    let out = run(Command::new("nix-hash").args(["--type", "sha256", "--base32"]).arg(path));
    String::from_utf8_lossy(&out).trim().to_owned()
}

fn nar_hash_of(dir: &Path, store_path: &str) -> String {
    let info = fs::read_to_string(dir.join(format!("{}.narinfo", hash_part(store_path)))).unwrap();
    info.lines().find_map(|l| l.strip_prefix("NarHash: sha256:")).unwrap().to_owned()
}

fn mounted(d: &Daemon, store_path: &str) -> PathBuf {
    d.mnt.join(store_path.trim_start_matches("/nix/store/"))
}

/// The index of `store_path` in the cache at `dir`.
fn index_of(dir: &Path, store_path: &str) -> FileIndex {
    let raw = fs::read(dir.join(format!("{}.index", hash_part(store_path)))).unwrap();
    SignedIndex::parse(&raw).unwrap().index
}

/// The path of node `id` below its store path's root.
fn node_path(ix: &FileIndex, id: usize) -> PathBuf {
    let mut names = Vec::new();
    let mut at = id;
    while let Some((parent, name)) = &ix.nodes[at].parent {
        names.push(String::from_utf8(name.clone()).unwrap());
        at = *parent as usize;
    }
    names.iter().rev().collect()
}

#[test]
fn metadata_comes_from_the_index_and_files_by_range_verified_and_kept_across_a_restart() {
    let test =
        "metadata_comes_from_the_index_and_files_by_range_verified_and_kept_across_a_restart";
    let Some((fx, tmp, dir)) = setup(test, "256K") else { return };
    let nginx = Nginx::start(tmp.path(), "");
    let mut d = mount(tmp.path(), fx, &nginx, &fx.public_key);

    // Listing, stat and readlink of whole trees: answered from the indexes, no NAR requested.
    let names: usize =
        [&fx.weird, &fx.deep, &fx.busybox_bin].iter().map(|p| walk_metadata(&mounted(&d, p))).sum();
    assert!(names > 20, "walked {names} names");
    assert_eq!(nar_requests(&nginx), (0, 0), "metadata needed no NAR bytes");
    let s = stats(&d);
    assert!(stat(&s, "index_hits") >= 3, "{s}");

    // Reading: by range only, and every file of every path verifies to its NarHash.
    let out = run(&mut Command::new(mounted(&d, &fx.exe)));
    assert_eq!(String::from_utf8_lossy(&out).trim_end(), fx.exe_expected);
    for path in &fx.closure {
        assert_eq!(nix_hash(&mounted(&d, path)), nar_hash_of(&dir, path), "{path}");
    }
    let (ranged, whole) = nar_requests(&nginx);
    assert!(ranged > 0 && whole == 0, "{ranged} ranged, {whole} whole NAR requests");
    let s = stats(&d);
    assert!(stat(&s, "range_requests") >= ranged as u64, "{s}");
    assert!(stat(&s, "files_fetched") > 0 && stat(&s, "frame_failures") == 0, "{s}");
    assert!(stat(&s, "range_bytes") > 0, "{s}");

    // A restart keeps the files fetched: reading them again sends no request.
    d.stop();
    nginx.clear_log();
    let d = mount(tmp.path(), fx, &nginx, &fx.public_key);
    for path in [&fx.weird, &fx.big, &fx.deep] {
        assert_eq!(nix_hash(&mounted(&d, path)), nar_hash_of(&dir, path), "{path}");
    }
    assert_eq!(nar_requests(&nginx), (0, 0), "files kept across the restart");
    let verify = d.client(&["verify"]);
    assert!(verify.status.success(), "verify: {}", String::from_utf8_lossy(&verify.stdout));
}

#[test]
fn a_tampered_frame_gives_eio_for_its_files_only() {
    // Small frames, so that files of one path lie in different frames.
    let Some((fx, tmp, dir)) = setup("a_tampered_frame_gives_eio_for_its_files_only", "1K") else {
        return;
    };
    let ix = index_of(&dir, &fx.weird);
    let files: Vec<(usize, std::ops::Range<usize>)> = (0..ix.nodes.len())
        .filter_map(|id| match &ix.nodes[id].kind {
            NodeKind::File(f) if f.size > 0 => Some((id, ix.frames_of(f))),
            _ => None,
        })
        .collect();
    let (bad, bad_frames) = files[0].clone();
    let good: Vec<usize> = files
        .iter()
        .filter(|(_, frames)| frames.clone().all(|i| !bad_frames.contains(&i)))
        .map(|(id, _)| *id)
        .collect();
    assert!(!good.is_empty(), "some file lies in other frames");
    let frame = &ix.frames[bad_frames.start];
    let info = fs::read_to_string(dir.join(format!("{}.narinfo", hash_part(&fx.weird)))).unwrap();
    let url = info.lines().find_map(|l| l.strip_prefix("URL: ")).unwrap();
    let nar = fs::OpenOptions::new().read(true).write(true).open(dir.join(url)).unwrap();
    let at = frame.file_offset + frame.file_len / 2;
    let mut byte = [0u8];
    nar.read_exact_at(&mut byte, at).unwrap();
    nar.write_all_at(&[byte[0] ^ 0x40], at).unwrap();

    let nginx = Nginx::start(tmp.path(), "");
    let d = mount(tmp.path(), fx, &nginx, &fx.public_key);
    let root = mounted(&d, &fx.weird);
    let err = fs::read(root.join(node_path(&ix, bad))).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    for id in good {
        let bytes = fs::read(root.join(node_path(&ix, id))).unwrap();
        let NodeKind::File(f) = &ix.nodes[id].kind else { unreachable!() };
        assert_eq!(<[u8; 32]>::from(Sha256::digest(&bytes)), f.digest, "node {id}");
    }
    let s = stats(&d);
    assert!(stat(&s, "frame_failures") >= 1, "{s}");
    assert_eq!(nar_requests(&nginx).1, 0, "no whole NAR: the path stays file-level");
}

#[test]
fn a_tampered_or_untrusted_index_falls_back_to_the_whole_nar() {
    let Some((fx, tmp, dir)) =
        setup("a_tampered_or_untrusted_index_falls_back_to_the_whole_nar", "256K")
    else {
        return;
    };
    // Tampered: one byte of the body of weird's index (its signature then fails).
    let index_file = dir.join(format!("{}.index", hash_part(&fx.weird)));
    let mut raw = fs::read(&index_file).unwrap();
    raw[40] ^= 1;
    fs::write(&index_file, &raw).unwrap();
    let nginx = Nginx::start(tmp.path(), "");
    let mut d = mount(tmp.path(), fx, &nginx, &fx.public_key);
    assert_eq!(nix_hash(&mounted(&d, &fx.weird)), nar_hash_of(&dir, &fx.weird));
    assert_eq!(nar_requests(&nginx).1, 1, "weird came whole");
    let s = stats(&d);
    assert_eq!(stat(&s, "index_refused_signature") + stat(&s, "index_refused_malformed"), 1);
    d.stop();

    // An unknown index key: every index is refused, every path comes whole and verifies.
    let other = SigningKey::generate("other-index-1", [7; 32]).to_public_string();
    fs::remove_dir_all(tmp.path().join("cache")).unwrap();
    nginx.clear_log();
    let d = mount(tmp.path(), fx, &nginx, &other);
    for path in [&fx.deep, &fx.big] {
        assert_eq!(nix_hash(&mounted(&d, path)), nar_hash_of(&dir, path), "{path}");
    }
    assert_eq!(nar_requests(&nginx), (0, 2));
    let s = stats(&d);
    assert_eq!(stat(&s, "index_refused_signature"), 2, "{s}");
    assert_eq!(stat(&s, "index_hits"), 0, "{s}");
}

#[test]
fn a_daemon_killed_while_files_arrive_leaves_only_verified_files_present() {
    // Small frames: many files, each stored (and recorded in the background) on its own.
    let Some((fx, tmp, dir)) =
        setup("a_daemon_killed_while_files_arrive_leaves_only_verified_files_present", "4K")
    else {
        return;
    };
    let nginx = Nginx::start(tmp.path(), "");
    for delay_ms in [20u64, 80, 300] {
        let d = mount(tmp.path(), fx, &nginx, &fx.public_key);
        let pid = d.pid();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(delay_ms));
            // SAFETY: signalling the daemon this test started, by its pid.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        });
        for path in &fx.closure {
            if Command::new("nix-hash").arg(mounted(&d, path)).output().is_err() {
                break;
            }
        }
        killer.join().unwrap();
        let mut d = d;
        d.wait_exit(std::time::Duration::from_secs(10)).expect("daemon did not die");
        std::mem::forget(d); // dead; the next daemon takes the mountpoint over
    }
    // Whatever was recorded present verifies, and every path still reads to its NarHash.
    let d = mount(tmp.path(), fx, &nginx, &fx.public_key);
    let verify = d.client(&["verify"]);
    assert!(verify.status.success(), "verify: {}", String::from_utf8_lossy(&verify.stdout));
    for path in &fx.closure {
        assert_eq!(nix_hash(&mounted(&d, path)), nar_hash_of(&dir, path), "{path}");
    }
}

/// With `--passthrough`, an open of a file of a partial entry fetches and checks the file
/// before the kernel is handed the cache file: every path reads to its NarHash, by range only.
#[test]
fn with_passthrough_files_of_partial_entries_are_fetched_at_open_and_read_right() {
    let test = "with_passthrough_files_of_partial_entries_are_fetched_at_open_and_read_right";
    let Some((fx, tmp, dir)) = setup(test, "256K") else { return };
    let nginx = Nginx::start(tmp.path(), "");
    let d = mount_with(tmp.path(), fx, &nginx, &fx.public_key, &["--passthrough"]);
    assert!(d.log_text().contains("FUSE passthrough on"), "{}", d.log_text());
    let out = run(&mut Command::new(mounted(&d, &fx.exe)));
    assert_eq!(String::from_utf8_lossy(&out).trim_end(), fx.exe_expected);
    for path in &fx.closure {
        assert_eq!(
            nix_hash(&mounted(&d, path)),
            nar_hash_of(&dir, path),
            "{path}\n{}",
            d.log_text()
        );
    }
    let (ranged, whole) = nar_requests(&nginx);
    assert!(ranged > 0 && whole == 0, "{ranged} ranged, {whole} whole NAR requests");
    let s = stats(&d);
    assert!(stat(&s, "files_fetched") > 0 && stat(&s, "frame_failures") == 0, "{s}");
    assert!(stat(&s, "files_read_ahead") <= stat(&s, "files_fetched"), "{s}");
}

/// Waits (up to 20 s, polling `storefs stats`) until `counter` reaches `want`.
fn wait_for_stat(d: &Daemon, counter: &str, want: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let s = stats(d);
        if stat(&s, counter) >= want {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{counter} never reached {want}: {s}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_warm_list_learned_through_the_mount_brings_its_files_before_any_reader() {
    let test = "a_warm_list_learned_through_the_mount_brings_its_files_before_any_reader";
    // 4 KiB frames: the files read lie in frames of their own, so only the warm list brings them.
    let Some((fx, tmp, dir)) = setup(test, "4K") else { return };
    let nginx = Nginx::start(tmp.path(), "");
    let log = tmp.path().join("reads.log");

    // 1. The learned run: two files of the weird-names path, the later one in NAR order first.
    let ix = index_of(&dir, &fx.weird);
    let files: Vec<usize> = (0..ix.nodes.len())
        .filter(|&id| matches!(&ix.nodes[id].kind, NodeKind::File(f) if f.size > 0))
        .collect();
    let (first, second) = (files[files.len() - 1], files[0]);
    let mut d = mount_with(
        tmp.path(),
        fx,
        &nginx,
        &fx.public_key,
        &["--record-reads", log.to_str().unwrap()],
    );
    let local = |id| Path::new(&fx.weird).join(node_path(&ix, id));
    for id in [first, second, first] {
        assert_eq!(
            fs::read(mounted(&d, &fx.weird).join(node_path(&ix, id))).unwrap(),
            fs::read(local(id)).unwrap()
        );
    }
    d.stop();
    let logged = fs::read_to_string(&log).unwrap();
    let want: String =
        [first, second].iter().map(|&id| format!("{}\n", local(id).display())).collect();
    assert_eq!(logged, want, "each file opened logged once, in the order first opened");

    // 2. Written into the index.
    let out = run(Command::new(common::daemon::storefs_bin())
        .arg("index")
        .arg(&dir)
        .arg("--secret-key-file")
        .arg(fx.secret_key_path())
        .arg("--warm-list")
        .arg(&log));
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("warm lists: 2 files"), "{out}");
    let warm: Vec<usize> = index_of(&dir, &fx.weird).warm.iter().map(|w| w.node as usize).collect();
    assert_eq!(warm, [first, second]);

    // 3. A cold host: looking the path up brings both files, with no reader.
    fs::remove_dir_all(tmp.path().join("cache")).unwrap();
    let d = mount(tmp.path(), fx, &nginx, &fx.public_key);
    fs::symlink_metadata(mounted(&d, &fx.weird)).unwrap();
    wait_for_stat(&d, "files_read_ahead", 2);
    nginx.clear_log();
    for id in [second, first] {
        assert_eq!(
            fs::read(mounted(&d, &fx.weird).join(node_path(&ix, id))).unwrap(),
            fs::read(local(id)).unwrap()
        );
    }
    assert_eq!(nar_requests(&nginx), (0, 0), "both files were present before they were read");
}
