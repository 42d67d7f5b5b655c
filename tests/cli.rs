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

/// PRC-13: a path the daemon needs that leads into its own mountpoint, through a symlink that
/// dangles until the mount is up, is refused at start naming the setting and the path: the TLS
/// roots (`SSL_CERT_FILE`), a `file://` cache, the control socket.
#[test]
fn dependencies_under_the_mountpoint_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mnt = root.join("store");
    std::fs::create_dir(&mnt).unwrap();
    let conf = root.join("nix.conf");
    std::fs::write(&conf, "").unwrap();
    // Each link's target appears only under the mount, which is not up yet.
    let link = |name: &str, target: &str| {
        let path = root.join(name);
        std::os::unix::fs::symlink(mnt.join(target), &path).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let certs = link("ca.pem", "abc-certs/etc/ssl/ca.pem");
    let cache = link("cache-link", "def-cache");
    let run_dir = link("run", "ghi-run");
    let base = |extra: &[&str]| {
        let mut args = vec!["mount", mnt.to_str().unwrap(), "--nix-conf", conf.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let cache_dir = root.join("cache");
    let cache_dir = cache_dir.to_str().unwrap();
    let substituter = format!("file://{cache}");
    let cases: Vec<(Vec<String>, Option<&str>, [&str; 2])> = vec![
        (base(&["--cache-dir", cache_dir]), Some(&certs), ["SSL_CERT_FILE", "abc-certs"]),
        (
            base(&["--cache-dir", cache_dir, "--substituter", &substituter]),
            None,
            ["substituter file://", "def-cache"],
        ),
        (
            base(&["--cache-dir", cache_dir, "--control-socket", &format!("{run_dir}/s.sock")]),
            None,
            ["--control-socket", "ghi-run/s.sock"],
        ),
    ];
    for (args, cert_file, needles) in cases {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_storefs"));
        cmd.args(&args).env_remove("SSL_CERT_DIR").stdin(std::process::Stdio::null());
        match cert_file {
            Some(file) => cmd.env("SSL_CERT_FILE", file),
            None => cmd.env_remove("SSL_CERT_FILE"),
        };
        let out = cmd.output().unwrap();
        let text = text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {text}");
        for needle in needles.into_iter().chain(["inside the mountpoint"]) {
            assert!(text.contains(needle), "{args:?}: the error names {needle:?}: {text}");
        }
    }
    assert!(std::fs::read_dir(&mnt).unwrap().next().is_none(), "nothing was mounted");
}

#[test]
fn index_help_teaches_and_bad_input_is_named_with_exit_1() {
    let out = storefs(&["index", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out);
    for want in ["--secret-key-file", "--jobs", "--frame-size", "seekable zstd", "Sig", "Examples"]
    {
        assert!(help.contains(want), "index --help lacks {want}:\n{help}");
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let missing = dir.path().join("no-such.sec");
    let missing = missing.to_str().unwrap();
    let bad_key = dir.path().join("bad.sec");
    std::fs::write(&bad_key, "mykey-1:not-base64!").unwrap();
    let bad_key = bad_key.to_str().unwrap();
    let good_key = dir.path().join("good.sec");
    let key = storefs::nix::signature::SigningKey::generate("mykey-1", [1; 32]);
    std::fs::write(&good_key, key.to_secret_string()).unwrap();
    let good_key = good_key.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["index", d, "--secret-key-file", missing], "no-such.sec"),
        (&["index", d, "--secret-key-file", bad_key], "bad.sec"),
        (&["index", d, "--secret-key-file", good_key, "--jobs", "0"], "--jobs 0"),
        (&["index", d, "--secret-key-file", good_key, "--frame-size", "1G"], "--frame-size 1G"),
        (&["index", "/no/such/dir", "--secret-key-file", good_key], "/no/such/dir"),
        (&["index", d], "--secret-key-file"),
    ];
    for (args, named) in cases {
        let out = storefs(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(named), "{args:?} does not name {named}: {}", text(&out));
    }
    // An empty directory is a successful run over nothing.
    let out = storefs(&["index", d, "--secret-key-file", good_key]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("indexed 0 paths, skipped 0 already indexed, 0 failed"));
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

/// `check` without a daemon fails (exit 2) with a `FAIL` line naming the socket, and still checks
/// the mount; a bad `--timeout` or `--probe-path` is a usage error (exit 1).
#[test]
fn check_without_a_daemon_fails_naming_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("none.sock");
    let (sock, mnt) = (sock.to_str().unwrap(), dir.path().to_str().unwrap());
    let out = storefs(&["check", "--control-socket", sock, "--mountpoint", mnt]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].starts_with(&format!("FAIL  daemon {sock}: cannot connect")), "{stdout}");
    assert!(lines[1].starts_with(&format!("FAIL  mount {mnt}: not mounted")), "{stdout}");
    for bad in [&["--timeout", "0"][..], &["--probe-path", "not-a-store-path"]] {
        let out = storefs(&[&["check", "--control-socket", sock][..], bad].concat());
        assert_eq!(out.status.code(), Some(1), "{bad:?}: {}", text(&out));
        assert!(text(&out).contains(bad[1]), "{bad:?}: {}", text(&out));
    }
}

/// `storefs --help` lists every exit code, 3 (`verify` found corrupt entries) included.
#[test]
fn help_lists_every_exit_code() {
    let out = storefs(&["--help"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let help = text(&out).split_whitespace().collect::<Vec<_>>().join(" ");
    for code in ["0 ok", "1 bad usage", "2 runtime failure", "3 `storefs verify` found corrupt"] {
        assert!(help.contains(code), "--help lacks exit code {code:?}:\n{help}");
    }
}

/// A stand-in daemon on a control socket in a temporary directory, answering every command with
/// a fixed reply; stopped when dropped.
struct FakeDaemon {
    socket: std::path::PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl FakeDaemon {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("control.sock");
        let rt = tokio::runtime::Runtime::new().unwrap();
        let bound = rt.block_on(async { storefs::control::bind(&socket) }).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        rt.spawn(storefs::control::serve(bound, std::sync::Arc::new(Canned), async {
            let _ = stopped.await;
        }));
        Self { socket, stop: Some(stop), rt, _dir: dir }
    }
}

impl Drop for FakeDaemon {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.rt.block_on(tokio::task::yield_now());
    }
}

/// Answers like a daemon whose cache holds one corrupt entry and many paths.
struct Canned;

const PATH: &str = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-canned";

#[async_trait::async_trait]
impl storefs::control::ControlHandler for Canned {
    async fn handle(
        &self,
        request: storefs::control::protocol::Request,
        progress: storefs::control::ProgressSink,
    ) -> Result<storefs::control::protocol::Reply, String> {
        use storefs::control::protocol::{
            CheckReply, CheckRow, CheckStatus, ClosureReply, CorruptEntry, ExportDbReply, GcReply,
            PathResult, PathResults, PinsReply, Progress, Reply, Request, VerifyReply,
        };
        let rows = |n: usize| PathResults {
            results: (0..n)
                .map(|_| PathResult { path: PATH.into(), changed: true, error: None })
                .collect(),
        };
        Ok(match request {
            Request::Stats => Reply::Stats(Box::default()),
            Request::Pins => Reply::Pins(PinsReply { paths: vec![PATH.into(); 1000] }),
            Request::Prefetch { .. } => {
                for done in 1..=100 {
                    progress.send(Progress { done, total: 100, path: PATH.into(), error: None });
                }
                Reply::Results(rows(100))
            }
            Request::Closure { .. } => Reply::Closure(ClosureReply { paths: vec![PATH.into()] }),
            Request::Pin { .. } | Request::Unpin { .. } | Request::Evict { .. } => {
                Reply::Results(rows(100))
            }
            Request::Gc { .. } => Reply::Gc(GcReply::default()),
            Request::Verify { .. } => Reply::Verify(VerifyReply {
                ok: vec![PATH.into()],
                corrupt: vec![CorruptEntry { path: PATH.into(), reason: "NarHash".into() }],
                missing: vec![PATH.into(); 100],
            }),
            Request::ExportDb { .. } => Reply::ExportDb(ExportDbReply { text: "x\n".repeat(1000) }),
            Request::Check { .. } => Reply::Check(CheckReply {
                checks: vec![
                    CheckRow {
                        status: CheckStatus::Ok,
                        subject: "substituter https://cache.example".into(),
                        detail: "nix-cache-info answers".into(),
                    };
                    1000
                ],
            }),
            other => return Err(format!("not canned: {other:?}")),
        })
    }
}

/// Runs storefs with its stdout a pipe whose reader is already gone, so its first write to
/// stdout fails with EPIPE.
fn storefs_into_a_closed_pipe(args: &[&str]) -> std::process::Output {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe(2) writes.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: pipe(2) just opened these two descriptors; nothing else owns them.
    let (reader, writer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(reader);
    Command::new(env!("CARGO_BIN_EXE_storefs"))
        .args(args)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap()
}

/// `storefs prefetch … | head` and friends: a closed stdout ends every command quietly, with
/// its documented exit code, no backtrace and no message about the pipe.
#[test]
fn a_closed_pipe_ends_every_command_quietly() {
    let daemon = FakeDaemon::start();
    let sock = daemon.socket.to_str().unwrap();
    let cases: &[(&[&str], u8)] = &[
        (&["--help"], 0),
        (&["prefetch", PATH, "--closure"], 0),
        (&["pin", PATH, "--closure"], 0),
        (&["unpin", PATH], 0),
        (&["pins"], 0),
        (&["evict", PATH], 0),
        (&["gc"], 0),
        (&["verify"], 3),
        (&["export-db", PATH], 0),
        // The canned daemon names no mountpoint: that check fails.
        (&["check"], 2),
        (&["check", "--json"], 2),
        (&["stats"], 0),
        (&["stats", "--json"], 0),
        // Would print forever into the void without noticing.
        (&["stats", "--watch", "1"], 0),
    ];
    for (args, code) in cases {
        let mut all = args.to_vec();
        if args[0] != "--help" {
            all.extend(["--control-socket", sock]);
        }
        let out = storefs_into_a_closed_pipe(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(i32::from(*code)), "{args:?}: {stderr}");
        for line in stderr.lines() {
            // `verify` names the corrupt entry on stderr, which is still open.
            assert!(line.starts_with("storefs: corrupt, evicted: "), "{args:?}: {stderr}");
        }
    }
}

/// Loud skip for the tests below that need root and a program: prints `SKIPPING` and returns
/// true; under `CI=true` a missing requirement fails the test instead.
fn skip_unless_root_with(program: &str, test: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    let found = Command::new(program).arg("--version").output().is_ok();
    if root && found {
        return false;
    }
    let why = if root { format!("{program} is not installed") } else { "not root".into() };
    assert!(
        !matches!(std::env::var("CI").as_deref(), Ok("true" | "1")),
        "{test}: {why} (CI=true, so a skip is a failure)"
    );
    eprintln!("SKIPPING {test}: {why}");
    true
}

/// A `storefs mount` in `dir` that gets as far as mounting (a plain mountpoint, a cache
/// directory, a control socket, a `file://` substituter), run through `wrapper` (a command
/// that runs the rest of its arguments, e.g. `setpriv` dropping a privilege).
fn mount_through(wrapper: &[&str], dir: &std::path::Path) -> std::process::Output {
    let (mnt, cache) = (dir.join("mnt"), dir.join("substituter"));
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::write(dir.join("nix.conf"), "").unwrap();
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    Command::new(wrapper[0])
        .args(&wrapper[1..])
        .arg(env!("CARGO_BIN_EXE_storefs"))
        .args(["mount", mnt.to_str().unwrap(), "--cache-dir", &path("cache")])
        .args(["--control-socket", &path("control.sock"), "--nix-conf", &path("nix.conf")])
        .args(["--substituter", &format!("file://{}", cache.display())])
        .output()
        .unwrap()
}

/// The failure is said once: one `storefs:` line, no ERROR log line repeating it, and the
/// system error's `(os error N)` once.
fn assert_said_once(out: &std::process::Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("cannot mount")).collect();
    assert_eq!(lines.len(), 1, "the failure is printed once:\n{stderr}");
    assert!(lines[0].starts_with("storefs: "), "{stderr}");
    assert!(lines[0].matches("(os error").count() <= 1, "os error repeated: {stderr}");
}

/// Root without CAP_SYS_ADMIN (a container without `--cap-add SYS_ADMIN`) is told to grant
/// the capability, not to run as root (which it is); exit 1.
#[test]
fn root_without_cap_sys_admin_is_told_which_capability_is_missing() {
    let test = "root_without_cap_sys_admin_is_told_which_capability_is_missing";
    if skip_unless_root_with("setpriv", test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let drop_cap = ["setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin"];
    let out = mount_through(&drop_cap, dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("without CAP_SYS_ADMIN"), "{stderr}");
    assert!(stderr.contains("--cap-add SYS_ADMIN"), "{stderr}");
    assert!(!stderr.contains("must run as root"), "root is told to be root: {stderr}");
    assert_said_once(&out);
}

/// A user that is not root is told to run as root (whether `/dev/fuse` or `mount(2)` refused
/// it, depending on the device's mode), never to load the fuse module; exit 1.
#[test]
fn a_user_is_told_to_run_as_root_not_to_load_a_module() {
    let test = "a_user_is_told_to_run_as_root_not_to_load_a_module";
    if skip_unless_root_with("setpriv", test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let nobody = "65534";
    let out = Command::new("chown").args([nobody, dir.path().to_str().unwrap()]).output();
    assert!(out.unwrap().status.success());
    let as_nobody = ["setpriv", "--reuid", nobody, "--regid", nobody, "--clear-groups"];
    let out = mount_through(&as_nobody, dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("must run as root"), "{stderr}");
    assert!(!stderr.contains("module"), "a permission problem blamed on the module: {stderr}");
    assert_said_once(&out);
}

/// `/dev/fuse` that cannot be opened for lack of permission (here: on a `nodev` filesystem, in
/// a private mount namespace) is not blamed on the module; a missing one is; exit 1 both.
#[test]
fn dev_fuse_failures_name_the_fix_for_their_errno() {
    let test = "dev_fuse_failures_name_the_fix_for_their_errno";
    if skip_unless_root_with("unshare", test) {
        return;
    }
    let cases = [
        ("mknod /dev/fuse c 10 229", "--device /dev/fuse", "module"),
        (":", "modprobe fuse", "as root"),
    ];
    for (make_node, want, unwanted) in cases {
        let dir = tempfile::tempdir().unwrap();
        // A fresh nodev /dev: a device node there opens with EACCES, even for root.
        let script = format!("mount -t tmpfs -o nodev tmpfs /dev && {make_node} && exec \"$@\"");
        let wrapper = ["unshare", "--mount", "--propagation", "private", "sh", "-c", &script, "sh"];
        let out = mount_through(&wrapper, dir.path());
        assert_eq!(out.status.code(), Some(1), "{make_node}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("cannot open /dev/fuse"), "{make_node}: {stderr}");
        assert!(stderr.contains(want), "{make_node}: lacks {want:?}: {stderr}");
        assert!(!stderr.contains(unwanted), "{make_node}: says {unwanted:?}: {stderr}");
        assert_said_once(&out);
    }
}
