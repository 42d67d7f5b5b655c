//! Real-mount acceptance of the per-uid rate limit (issue 12, item 4): a storm of random store
//! path names from one uid does not fail another uid's cold read, the requests nginx sees stay
//! within the limit, and the storm's failures write a bounded number of log lines.

#![cfg(feature = "fuse_tests")]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::{Nginx, daemon_args, fuse_setup as setup, require};

/// Names in the storm.
const STORM: usize = 10_000;
/// How long the storm runs before it is stopped: its refused lookups end at once, but the
/// lookups it has queued are served at the uid's rate, so all 10,000 would take many minutes.
const STORM_TIME: Duration = Duration::from_secs(10);
/// Processes the storm runs in, each looking up its share of the names one after another.
const WORKERS: usize = 64;
/// `--uid-rate`: with `--fetch-timeout 2`, a uid may have 2 s of turns queued (20 lookups),
/// fewer than the storm's 64 at once, so most of its lookups are refused at once.
const UID_RATE: u64 = 10;

/// Nix's base32 alphabet.
const NIX32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// A valid store path basename with a hash part of its own for each `i` (its first 8
/// characters spell `i`, the rest come from a time-seeded generator): absent everywhere.
fn random_name(i: usize) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let mut x = nanos.as_nanos() as u64 ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let hash: String = (0..32)
        .map(|j| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let digit = if j < 8 { (i >> (5 * j)) & 31 } else { (x >> 59) as usize };
            NIX32[digit] as char
        })
        .collect();
    format!("{hash}-storm")
}

#[test]
fn a_storm_of_names_from_one_uid_does_not_fail_another_uids_cold_read() {
    let test = "a_storm_of_names_from_one_uid_does_not_fail_another_uids_cold_read";
    let Some(fx) = setup(test) else { return };
    if require(&["setpriv", "perl"], test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // uid 1000 must reach the mountpoint and the list of names.
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let extra = [
        "--allow-other",
        "--uid-rate",
        &UID_RATE.to_string(),
        "--upstream-rate",
        "100",
        "--fetch-timeout",
        "2",
        "--prefetch-jobs",
        "0",
    ];
    let d = Daemon::start(tmp.path(), &daemon_args(&[nginx.url("zstd")], &fx.public_key, &extra));
    let names: Vec<String> = (0..STORM).map(random_name).collect();
    let list = tmp.path().join("names");
    fs::write(&list, names.join("\n")).unwrap();
    fs::set_permissions(&list, fs::Permissions::from_mode(0o644)).unwrap();
    // Each worker stats every WORKERS-th name; the parent waits for them all.
    let script = format!(
        "open(F, '<', $ARGV[0]) or die; chomp(my @n = <F>); \
         for my $k (0..{last}) {{ if (!fork) {{ for (my $i = $k; $i < @n; $i += {WORKERS}) \
         {{ stat(\"$ARGV[1]/$n[$i]\") }} exit 0 }} }} 1 while wait != -1;",
        last = WORKERS - 1
    );
    let started = Instant::now();
    let mut storm = Command::new("setpriv")
        .args(["--reuid=1000", "--regid=1000", "--clear-groups", "perl", "-e", &script])
        .arg(&list)
        .arg(&d.mnt)
        .process_group(0)
        .spawn()
        .unwrap();
    // Meanwhile, as root: a cold read of a real path.
    std::thread::sleep(Duration::from_millis(300)); // let the storm get going, not a sync
    let hello = d.path(&fx.hello, "");
    let cold = fs::read_dir(&hello).map(|entries| entries.count());
    let read_took = started.elapsed();
    while started.elapsed() < STORM_TIME && storm.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(100)); // polling the storm's end, not a sync
    }
    // The whole storm: its lookups in flight end within the fetch timeout (2 s), so do they.
    let group = format!("-{}", storm.id());
    let killed = Command::new("kill").args(["-KILL", "--", &group]).status().unwrap();
    assert!(killed.success() || storm.try_wait().unwrap().is_some(), "kill {group}");
    storm.wait().unwrap();
    let took = started.elapsed() + Duration::from_secs(3);
    std::thread::sleep(Duration::from_secs(3)); // let the killed lookups' answers land
    assert!(cold.as_ref().is_ok_and(|n| *n > 0), "root's cold read during the storm: {cold:?}");

    let narinfos = nginx.count_requests(".narinfo");
    // The storm's turns: a burst of 2 x UID_RATE, then UID_RATE a second; plus root's one.
    let allowed = 2 * UID_RATE as usize + (UID_RATE as f64 * took.as_secs_f64()).ceil() as usize;
    assert!(narinfos <= allowed + 1, "{narinfos} narinfo requests in {took:?}, allowed {allowed}");
    assert!(narinfos >= UID_RATE as usize, "the storm got its turns: {narinfos}");
    let out = d.client(&["stats", "--json"]);
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let refused = stats["lookup_failures_rate_limited"].as_u64().unwrap();
    let lookups = stats["lookups"].as_u64().unwrap();
    assert!(refused > 0 && refused + narinfos as u64 <= lookups, "{refused} of {lookups} refused");
    // The log stays short: 20 `request failed` lines per 10 s, and the count of the rest.
    let log = d.log_text();
    let lines = log.lines().filter(|l| l.contains("WARN") && l.contains("request failed")).count();
    let windows = took.as_secs() as usize / 10 + 2;
    assert!(lines <= 20 * windows, "{lines} lines about failed requests in {took:?}");
    assert!(refused as usize > 10 * lines, "{lines} WARN lines for {refused} failures");
    eprintln!(
        "storm over {took:?}: {lookups} lookups, {narinfos} narinfo requests, {refused} refused, \
         {lines} `request failed` lines; root's cold read took {read_took:?}"
    );
}
