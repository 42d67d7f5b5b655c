//! The cache commands through a running daemon and the real kernel: `prefetch --closure` fetches
//! exactly the closure, `verify` finds a flipped byte, `export-db` loads into real Nix, and a job
//! builds with Nix in an overlay over the mount without substituting anything.

#![cfg(feature = "fuse_tests")]

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::daemon::Daemon;
use common::{Nginx, daemon_args, fuse_setup as setup, hash_part};

fn storefs(d: &Daemon, args: &[&str]) -> Output {
    d.client(args)
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn nar_requests(nginx: &Nginx) -> Vec<String> {
    let mut v: Vec<String> = nginx.requests().into_iter().filter(|r| r.contains("/nar/")).collect();
    v.sort();
    v
}

/// Acceptance: `prefetch --closure` of the top path downloads exactly its closure (access log)
/// and exits 0; with one path missing upstream it exits non-zero and names it.
#[test]
fn prefetch_closure_fetches_exactly_the_closure() {
    let Some(fx) = setup("prefetch_closure_fetches_exactly_the_closure") else { return };
    let web = tempfile::tempdir().unwrap();
    // A copy of the zstd cache without one path of the closure.
    let missing = fx.deep.clone();
    let partial = web.path().join("partial");
    copy_cache(&fx.cache_dir("zstd"), &partial);
    fs::remove_file(partial.join(format!("{}.narinfo", hash_part(&missing)))).unwrap();
    std::os::unix::fs::symlink(fx.cache_dir("zstd"), web.path().join("full")).unwrap();
    let nginx = Nginx::start(web.path(), "");

    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), &daemon_args(&[nginx.url("full")], &fx.public_key, &[]));
    nginx.clear_log();
    let out = storefs(&d, &["prefetch", "--closure", &fx.top]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let fetched = text(&out).lines().filter(|l| l.starts_with("fetched ")).count();
    assert_eq!(fetched, fx.closure.len(), "{}", text(&out));
    nginx.wait_for_requests("/nar/", fx.closure.len(), std::time::Duration::from_secs(10));
    let nars = nar_requests(&nginx);
    assert_eq!(nars.len(), fx.closure.len(), "one NAR per closure path: {nars:?}");
    for sp in &fx.closure {
        let narinfo = format!("/full/{}.narinfo", hash_part(sp));
        assert_eq!(nginx.count_requests(&narinfo), 1, "{sp}");
    }
    drop(d);

    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), &daemon_args(&[nginx.url("partial")], &fx.public_key, &[]));
    let out = storefs(&d, &["prefetch", "--closure", &fx.top]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains(&missing), "the missing path is not named:\n{}", text(&out));
}

fn copy_cache(from: &Path, to: &Path) {
    fs::create_dir_all(to.join("nar")).unwrap();
    for e in fs::read_dir(from).unwrap().chain(fs::read_dir(from.join("nar")).unwrap()) {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            let rel = e.path().strip_prefix(from).unwrap().to_owned();
            fs::copy(e.path(), to.join(rel)).unwrap();
        }
    }
}

/// Acceptance: `verify` finds a byte flipped in a cached file, evicts the path, and the next read
/// is correct again.
#[test]
fn verify_finds_a_flipped_byte_and_the_next_read_is_correct() {
    let Some(fx) = setup("verify_finds_a_flipped_byte_and_the_next_read_is_correct") else {
        return;
    };
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), &daemon_args(&[nginx.url("zstd")], &fx.public_key, &[]));
    let want = fs::read(&fx.big_file).unwrap();
    let out = storefs(&d, &["prefetch", &fx.big]);
    assert!(out.status.success(), "{}", text(&out));
    let out = storefs(&d, &["verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // Flip a byte in the cached copy of random.bin (the largest file of the entry).
    let entry = d.cache.join("entries").join(hash_part(&fx.big));
    let victim = fs::read_dir(&entry)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with('f'))
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = fs::read(&victim).unwrap();
    bytes[12345] ^= 0x01;
    fs::write(&victim, &bytes).unwrap();
    let out = storefs(&d, &["verify", &fx.big]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains(&fx.big), "{}", text(&out));
    assert!(!entry.exists(), "the corrupt entry was not evicted");
    assert_eq!(fs::read(d.path(&fx.big_file, "")).unwrap(), want, "the next read is correct");
    let out = storefs(&d, &["verify", &fx.big]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// Acceptance: `export-db --closure` piped into `nix-store --load-db` of a fresh store makes
/// `--check-validity` succeed for every closure path and `-qR` print the closure.
#[test]
fn export_db_loads_into_a_fresh_nix_store() {
    let Some(fx) = setup("export_db_loads_into_a_fresh_nix_store") else { return };
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), &daemon_args(&[nginx.url("zstd")], &fx.public_key, &[]));
    let out = storefs(&d, &["export-db", "--closure", &fx.top]);
    assert!(out.status.success(), "{}", text(&out));
    let root = tmp.path().join("nixroot");
    let mut load = Command::new("nix-store")
        .args(["--load-db", "--store"])
        .arg(&root)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    load.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    let loaded = load.wait_with_output().unwrap();
    assert!(loaded.status.success(), "{}", String::from_utf8_lossy(&loaded.stderr));
    let check = Command::new("nix-store")
        .arg("--store")
        .arg(&root)
        .arg("--check-validity")
        .args(&fx.closure)
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", text(&check));
    let q = Command::new("nix-store")
        .arg("--store")
        .arg(&root)
        .args(["-qR", &fx.top])
        .output()
        .unwrap();
    let mut got: Vec<String> =
        String::from_utf8_lossy(&q.stdout).lines().map(String::from).collect();
    got.sort();
    assert_eq!(got, fx.closure);
}

/// Acceptance: in an overlay over the mount, nix-build of a derivation that uses a lazily fetched
/// path as input builds without substituting anything.
#[test]
fn nix_builds_in_an_overlay_over_the_mount() {
    let Some(fx) = setup("nix_builds_in_an_overlay_over_the_mount") else { return };
    if common::require(&["unshare", "nix-build"], "nix_builds_in_an_overlay_over_the_mount") {
        return;
    }
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), &daemon_args(&[nginx.url("zstd")], &fx.public_key, &[]));
    let db = storefs(&d, &["export-db", "--closure", &fx.busybox_bin, &fx.weird]);
    assert!(db.status.success(), "{}", text(&db));
    fs::write(tmp.path().join("db"), &db.stdout).unwrap();
    let expr = format!(
        r#"derivation {{
  name = "storefs-overlay-build";
  system = builtins.currentSystem;
  # busybox picks its applet from argv[0], so the builder is busybox-bin's `sh` symlink.
  builder = "${{builtins.storePath "{busybox_bin}"}}/bin/sh";
  args = [ "-c" "read -r x < '{weird}/héllo wörld ✓'; echo \"built from: $x\" > $out" ];
}}"#,
        busybox_bin = fx.busybox_bin,
        weird = fx.weird,
    );
    fs::write(tmp.path().join("build.nix"), expr).unwrap();
    let t = tmp.path().display();
    let script = format!(
        r#"set -eu
mount --make-rprivate /
mkdir -p {t}/upper {t}/work {t}/state
mount -t overlay overlay -o lowerdir={mnt},upperdir={t}/upper,workdir={t}/work /nix/store
export NIX_STATE_DIR={t}/state
nix-store --load-db < {t}/db
out=$(nix-build --no-out-link --option substituters '' --option build-users-group '' \
    --option sandbox false {t}/build.nix)
cat "$out"
"#,
        mnt = d.mnt.display(),
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let want = fs::read_to_string(format!("{}/héllo wörld ✓", fx.weird)).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("built from: {}", want.trim()));
    assert!(!text(&out).contains("copying path"), "something was substituted:\n{}", text(&out));
}

/// `stats` names the daemon (version, pid, state, uptime, mountpoint, cache directory, time),
/// and `pins` lists exactly what is pinned.
#[test]
fn stats_show_the_daemon_and_pins_lists_the_pins() {
    let Some(fx) = setup("stats_show_the_daemon_and_pins_lists_the_pins") else { return };
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), &daemon_args(&[nginx.url("zstd")], &fx.public_key, &[]));

    let out = storefs(&d, &["stats", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"), "{s}");
    assert_eq!(s["state"], "serving", "{s}");
    assert_eq!(s["mountpoint"], d.mnt.to_str().unwrap(), "{s}");
    assert_eq!(s["cache_dir"], d.cache.to_str().unwrap(), "{s}");
    assert!(s["pid"].as_u64().is_some_and(|p| p > 1), "{s}");
    assert!(s["uptime_seconds"].as_f64().is_some_and(|u| u >= 0.0), "{s}");
    let stamp = s["timestamp"].as_str().unwrap();
    assert!(stamp.len() == 20 && stamp.ends_with('Z') && &stamp[10..11] == "T", "{stamp}");
    assert!(s["lookups"].as_u64().is_some(), "the counters are still there: {s}");
    let out = storefs(&d, &["stats"]);
    assert!(
        text(&out).contains(&format!("mountpoint         {}", d.mnt.display())),
        "{}",
        text(&out)
    );

    let pins = |d: &Daemon| {
        let out = storefs(d, &["pins"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(pins(&d), "");
    let out = storefs(&d, &["pin", &fx.deep, &fx.hello]);
    assert!(out.status.success(), "{}", text(&out));
    let mut want = [fx.deep.clone(), fx.hello.clone()];
    want.sort();
    assert_eq!(pins(&d), format!("{}\n{}\n", want[0], want[1]));
    let out = storefs(&d, &["unpin", &fx.deep]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(pins(&d), format!("{}\n", fx.hello));
}
