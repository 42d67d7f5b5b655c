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
    let cases: &[(&[&str], &str)] = &[
        (&["--max-size", "12Q"], "\"12Q\""),
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
        let mut all = vec!["mount", "/tmp/storefs-mnt-x", "--nix-conf", conf];
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
