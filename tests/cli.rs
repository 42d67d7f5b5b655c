//! The command line as a user meets it: help, versions, and exit codes for bad input.

use std::process::Command;

fn storefs(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_storefs")).args(args).output().unwrap()
}

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn help_teaches_every_mount_flag() {
    let out = storefs(&["mount", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out);
    for flag in [
        "--substituter",
        "--trusted-public-key",
        "--cache-dir",
        "--max-size",
        "--allow-other",
        "--min-free",
        "--negative-ttl",
        "--netrc-file",
        "--bearer-token-file",
        "--upstream-backoff",
        "--config",
        "/etc/storefs/storefs.toml",
        "/nix/store",
        "/var/cache/storefs",
        "Examples",
    ] {
        assert!(help.contains(flag), "mount --help lacks {flag}:\n{help}");
    }
    assert_eq!(storefs(&["--version"]).status.code(), Some(0));
}

#[test]
fn usage_errors_exit_1() {
    let out = storefs(&["mount", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let out = storefs(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
}

#[test]
fn bad_values_are_named_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("nix.conf");
    std::fs::write(&conf, "").unwrap();
    let conf = conf.to_str().unwrap();
    // An empty configuration file, so the host's /etc/storefs/storefs.toml cannot interfere.
    let toml = dir.path().join("storefs.toml");
    std::fs::write(&toml, "").unwrap();
    let toml = toml.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--max-size", "12Q"], "\"12Q\""),
        (&["--min-free", "100%"], "\"100%\""),
        (&["--min-free", "lots"], "\"lots\""),
        (&["--negative-ttl", "soon"], "soon"),
        (&["--upstream-backoff", "0"], "--upstream-backoff"),
        (&["--connect-timeout", "0"], "--connect-timeout"),
        (&["--netrc-file", "/nonexistent/netrc"], "/nonexistent/netrc"),
        (&["--bearer-token-file", "https://elsewhere=/etc/hostname"], "https://elsewhere"),
        (&["--bearer-token-file", "https://cache.nixos.org"], "URL=FILE"),
        (&["--trusted-public-key", "nokey"], "nokey"),
        (&["--trusted-public-key", "k:AAAA"], "k"),
        (
            &[
                "--trusted-public-key",
                "dup-1:LUtwYW0cmXkhpblWnvuM560Cx9AVlznKr4edTPJXYHQ=",
                "--trusted-public-key",
                "dup-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=",
            ],
            "dup-1",
        ),
        (&["--substituter", "ftp://example.org"], "ftp://example.org"),
        (&["--cache-dir", "/tmp/storefs-mnt-x/cache"], "inside the mountpoint"),
    ];
    for (args, needle) in cases {
        let mut all = vec!["mount", "/tmp/storefs-mnt-x", "--nix-conf", conf, "--config", toml];
        all.extend_from_slice(args);
        let out = storefs(&all);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        assert!(
            text(&out).contains(needle),
            "{args:?} error does not name {needle:?}: {}",
            text(&out)
        );
    }
}

#[test]
fn a_missing_mountpoint_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("nix.conf");
    std::fs::write(&conf, "substituters = file:///nonexistent/cache\n").unwrap();
    let out = storefs(&[
        "mount",
        dir.path().join("missing").to_str().unwrap(),
        "--cache-dir",
        dir.path().join("cache").to_str().unwrap(),
        "--nix-conf",
        conf.to_str().unwrap(),
        "--substituter",
        &format!("file://{}", dir.path().display()),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("missing"), "{}", text(&out));
}

#[test]
fn a_config_file_with_an_unknown_key_exits_1_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("storefs.toml");
    for (contents, needle) in [
        ("cache-dir = \"/tmp/c\"\nmax-sise = \"20G\"\n", "max-sise"),
        ("max-size = 20\n", "max-size"),
        ("max-size = \"12Q\"\n", "\"12Q\""),
    ] {
        std::fs::write(&toml, contents).unwrap();
        let out = storefs(&["mount", "/tmp/storefs-mnt-x", "--config", toml.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{contents}: {}", text(&out));
        for want in [needle, toml.to_str().unwrap()] {
            assert!(text(&out).contains(want), "{contents}: error lacks {want:?}: {}", text(&out));
        }
    }
    let out = storefs(&["mount", "--config", dir.path().join("missing.toml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("missing.toml"), "{}", text(&out));
}

/// The `--flags` that `storefs mount --help` lists.
fn mount_flags() -> Vec<String> {
    let help = text(&storefs(&["mount", "--help"]));
    let mut flags: Vec<String> = help
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(str::to_owned)
        .collect();
    flags.sort();
    flags.dedup();
    assert!(flags.len() > 10, "too few flags found in --help: {flags:?}");
    flags
}

#[test]
fn docs_list_every_mount_flag() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/CONFIGURATION.md"))
            .unwrap();
    for flag in mount_flags() {
        if flag != "--help" {
            assert!(doc.contains(&format!("`{flag}")), "docs/CONFIGURATION.md lacks `{flag}`");
        }
    }
}

/// Every flag that sets something is a key of the example configuration file (lists take the
/// plural, e.g. `--substituter` → `substituters`).
#[test]
fn the_example_config_shows_every_mount_flag() {
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/storefs.toml"))
            .unwrap();
    for flag in mount_flags() {
        if ["--help", "--log", "--config"].contains(&flag.as_str()) {
            continue;
        }
        let key = &flag[2..];
        assert!(
            example.lines().any(|l| l.trim_start_matches('#').trim_start().starts_with(key)),
            "systemd/storefs.toml lacks a line for {key}"
        );
    }
}

/// `systemd-analyze verify` accepts the unit (with ExecStart pointing at the binary under test,
/// since /usr/local/bin/storefs is not installed here). Skipped where systemd-analyze is absent.
#[test]
fn the_systemd_unit_verifies() {
    let Ok(status) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("SKIPPING the_systemd_unit_verifies: systemd-analyze is not installed");
        return;
    };
    assert!(status.status.success());
    let unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/storefs.service"))
            .unwrap();
    assert!(unit.contains("\nType=notify\n"), "the unit must wait for READY=1");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("storefs.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/storefs", env!("CARGO_BIN_EXE_storefs")))
        .unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "systemd-analyze verify: {stderr}");
}

/// `stats` without a daemon says where it looked and exits 2; `--watch 0` is a usage error.
#[test]
fn stats_without_a_daemon_names_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("none.sock");
    let out = storefs(&["stats", "--control-socket", sock.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains(sock.to_str().unwrap()), "{}", text(&out));
    let out = storefs(&["stats", "--watch", "0"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
}
