//! Tests of [`super::Config::resolve`]: sizes, nix.conf, precedence, bad values, the example file.

use std::path::Path;

use super::*;
use crate::cache::MinFree;

#[test]
fn parses_sizes() {
    for (input, want) in [
        ("1024", 1024),
        ("500M", 500 << 20),
        ("20G", 20 << 30),
        ("20g", 20 << 30),
        ("10GiB", 10 << 30),
        ("1T", 1 << 40),
        ("4K", 4096),
    ] {
        assert_eq!(parse_size(input).unwrap(), want, "{input}");
    }
    for bad in ["", "G", "-1G", "1.5G", "10X", "0", "99999999999T"] {
        let err = parse_size(bad).unwrap_err().to_string();
        assert!(err.contains(&format!("{bad:?}")), "{err}");
    }
}

#[test]
fn parses_min_free() {
    assert_eq!(parse_min_free("5%").unwrap(), MinFree::Percent(5));
    assert_eq!(parse_min_free("0").unwrap(), MinFree::Bytes(0));
    assert_eq!(parse_min_free("2G").unwrap(), MinFree::Bytes(2 << 30));
    assert_eq!(MinFree::Percent(10).bytes_of(1000), 100);
    for bad in ["100%", "-1%", "x%", "lots"] {
        assert!(parse_min_free(bad).unwrap_err().to_string().contains(bad), "{bad}");
    }
}

#[test]
fn parses_nix_conf() {
    let conf = NixConf::parse(
        "# comment\nsubstituters = https://a https://b\nextra-substituters = https://c # x\n\
         trusted-public-keys = k1:AAAA\nnetrc-file = /etc/nix/netrc\nsandbox = true\n",
    );
    assert_eq!(conf.substituters.as_deref().unwrap(), ["https://a", "https://b"]);
    assert_eq!(conf.extra_substituters, ["https://c"]);
    assert_eq!(conf.trusted_public_keys.as_deref().unwrap(), ["k1:AAAA"]);
    assert_eq!(conf.netrc_file.as_deref(), Some(Path::new("/etc/nix/netrc")));
}

/// A directory standing in for the host: its nix.conf, storefs.toml and netrc are the
/// "system" files, absent until a test writes them, so the host's own files never leak in.
struct Host {
    dir: tempfile::TempDir,
    system: SystemPaths,
}

impl Host {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let system = SystemPaths {
            config_file: dir.path().join("storefs.toml"),
            nix_conf: dir.path().join("nix.conf"),
            netrc_file: dir.path().join("netrc"),
            tls_roots: Vec::new(),
        };
        Self { dir, system }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `name`, with `{dir}` in `text` replaced by the host directory.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text.replace("{dir}", self.dir.path().to_str().unwrap())).unwrap();
        path
    }

    fn resolve(&self, raw: &Settings) -> Result<Config, ConfigError> {
        Config::resolve_with(raw, &self.system)
    }
}

/// One precedence case: the files the host has, the flags, and what must come out.
struct Case {
    name: &'static str,
    /// (file name in the host directory, contents); `{dir}` is the host directory.
    files: &'static [(&'static str, &'static str)],
    flags: fn(&Host) -> Settings,
    check: fn(&Host, &Config),
}

fn no_flags(_: &Host) -> Settings {
    Settings::default()
}

/// `--bearer-token-file` values as typed.
fn typed(values: &[&str]) -> Option<Vec<TokenFile>> {
    Some(values.iter().map(|v| TokenFile::Typed((*v).to_owned())).collect())
}

#[test]
fn precedence_is_flags_then_file_then_nix_conf_then_defaults() {
    let cases = [
        Case {
            name: "built_in_defaults",
            files: &[],
            flags: no_flags,
            check: |_, c| {
                assert_eq!(c.upstream.substituters, [DEFAULT_SUBSTITUTER]);
                assert!(c.trusted_keys.get("cache.nixos.org-1").is_some());
                assert_eq!(c.mount.mountpoint, Path::new(DEFAULT_MOUNTPOINT));
                assert_eq!(c.cache.dir, Path::new(DEFAULT_CACHE_DIR));
                assert_eq!(c.cache.max_bytes, DEFAULT_MAX_SIZE_BYTES);
                assert_eq!(c.cache.min_free, DEFAULT_MIN_FREE);
                assert!(!c.mount.options.allow_other);
                assert_eq!(c.cache.negative_ttl, DEFAULT_NEGATIVE_TTL);
                assert_eq!(c.upstream.timeouts.connect, DEFAULT_CONNECT_TIMEOUT);
                assert_eq!(c.upstream.timeouts.stall, DEFAULT_STALL_TIMEOUT);
                assert_eq!(c.upstream.backoff, DEFAULT_UPSTREAM_BACKOFF);
                assert_eq!(c.upstream.netrc_file, None);
                assert!(c.upstream.bearer_token_files.is_empty());
            },
        },
        Case {
            name: "nix_conf_over_defaults",
            files: &[("nix.conf", "substituters = https://nix\n")],
            flags: no_flags,
            check: |_, c| assert_eq!(c.upstream.substituters, ["https://nix"]),
        },
        Case {
            name: "extra_settings_add_to_the_defaults_like_nix",
            files: &[(
                "nix.conf",
                "extra-substituters = https://extra\nextra-trusted-public-keys = \
                 extra-1:LUtwYW0cmXkhpblWnvuM560Cx9AVlznKr4edTPJXYHQ=\n",
            )],
            flags: no_flags,
            check: |_, c| {
                assert_eq!(c.upstream.substituters, [DEFAULT_SUBSTITUTER, "https://extra"]);
                assert_eq!(c.trusted_keys.len(), 2);
            },
        },
        Case {
            name: "flags_over_nix_conf",
            files: &[("nix.conf", "substituters = https://nix\n")],
            flags: |_| Settings {
                substituters: Some(vec!["http://flag".into()]),
                ..Settings::default()
            },
            check: |_, c| assert_eq!(c.upstream.substituters, ["http://flag"]),
        },
        Case {
            name: "file_over_nix_conf",
            files: &[
                ("nix.conf", "substituters = https://nix\n"),
                ("storefs.toml", "substituters = [\"https://file\"]\n"),
            ],
            flags: no_flags,
            check: |_, c| assert_eq!(c.upstream.substituters, ["https://file"]),
        },
        Case {
            name: "flags_over_file",
            files: &[(
                "storefs.toml",
                "substituters = [\"https://file\"]\nmax-size = \"20G\"\nmin-free = \"1G\"\n\
                 negative-ttl = 5\nupstream-backoff = 5\nconnect-timeout = 5\n\
                 prefetch-jobs = 5\nstall-timeout = 5\ncache-dir = \"/file/cache\"\nmountpoint = \"/file/mnt\"\n",
            )],
            flags: |_| Settings {
                substituters: Some(vec!["https://flag".into()]),
                max_size: Some("30G".into()),
                min_free: Some("10%".into()),
                negative_ttl: Some(7),
                upstream_backoff: Some(7),
                connect_timeout: Some(7),
                stall_timeout: Some(7),
                prefetch_jobs: Some(7),
                cache_dir: Some("/flag/cache".into()),
                mountpoint: Some("/flag/mnt".into()),
                ..Settings::default()
            },
            check: |_, c| {
                assert_eq!(c.upstream.substituters, ["https://flag"]);
                assert_eq!(c.cache.max_bytes, 30 << 30);
                assert_eq!(c.cache.min_free, MinFree::Percent(10));
                let seven = Duration::from_secs(7);
                assert_eq!([c.cache.negative_ttl, c.upstream.backoff], [seven; 2]);
                assert_eq!([c.upstream.timeouts.connect, c.upstream.timeouts.stall], [seven; 2]);
                assert_eq!(c.cache.prefetch_jobs, 7);
                assert_eq!(c.cache.dir, Path::new("/flag/cache"));
                assert_eq!(c.mount.mountpoint, Path::new("/flag/mnt"));
            },
        },
        Case {
            name: "file_over_defaults",
            files: &[(
                "storefs.toml",
                "max-size = \"20G\"\nmin-free = \"0\"\nnegative-ttl = 0\n\
                 upstream-backoff = 1\nallow-other = true\ncache-dir = \"cache\"\n\
                 prefetch-jobs = 0\n",
            )],
            flags: no_flags,
            check: |h, c| {
                assert_eq!(c.cache.max_bytes, 20 << 30);
                assert_eq!(c.cache.min_free, MinFree::Bytes(0));
                assert_eq!(c.cache.negative_ttl, Duration::ZERO);
                assert_eq!(c.upstream.backoff, Duration::from_secs(1));
                assert_eq!(c.cache.prefetch_jobs, 0, "0 turns prefetch off");
                assert!(c.mount.options.allow_other);
                assert_eq!(c.cache.dir, h.path("cache"), "relative to the file's directory");
            },
        },
        Case {
            name: "the_file_names_the_nix_conf",
            files: &[
                ("nix.conf", "substituters = https://default-nix-conf\n"),
                ("other.conf", "substituters = https://other-nix-conf\n"),
                ("storefs.toml", "nix-conf = \"other.conf\"\n"),
            ],
            flags: no_flags,
            check: |_, c| assert_eq!(c.upstream.substituters, ["https://other-nix-conf"]),
        },
        Case {
            name: "explicit_config_instead_of_the_default_file",
            files: &[("storefs.toml", "max-size = \"1G\"\n"), ("mine.toml", "max-size = \"2G\"\n")],
            flags: |h| Settings { config_file: Some(h.path("mine.toml")), ..Default::default() },
            check: |_, c| assert_eq!(c.cache.max_bytes, 2 << 30),
        },
        Case {
            name: "netrc_from_nix_conf",
            files: &[
                ("nix.conf", "netrc-file = {dir}/nix-netrc\n"),
                ("nix-netrc", ""),
                ("netrc", ""),
            ],
            flags: no_flags,
            check: |h, c| assert_eq!(c.upstream.netrc_file, Some(h.path("nix-netrc"))),
        },
        Case {
            name: "netrc_named_by_nix_conf_but_missing_means_none",
            files: &[("nix.conf", "netrc-file = {dir}/missing\n"), ("netrc", "")],
            flags: no_flags,
            check: |_, c| assert_eq!(c.upstream.netrc_file, None),
        },
        Case {
            name: "netrc_default_when_it_exists",
            files: &[("netrc", "")],
            flags: no_flags,
            check: |h, c| assert_eq!(c.upstream.netrc_file, Some(h.path("netrc"))),
        },
        Case {
            name: "netrc_file_over_nix_conf_and_flag_over_file",
            files: &[
                ("nix.conf", "netrc-file = {dir}/nix-netrc\n"),
                ("nix-netrc", ""),
                ("file-netrc", ""),
                ("flag-netrc", ""),
                ("storefs.toml", "netrc-file = \"file-netrc\"\n"),
            ],
            flags: |h| Settings { netrc_file: Some(h.path("flag-netrc")), ..Default::default() },
            check: |h, c| assert_eq!(c.upstream.netrc_file, Some(h.path("flag-netrc"))),
        },
        Case {
            name: "bearer_tokens_from_the_file",
            files: &[
                ("a.token", "secret"),
                (
                    "storefs.toml",
                    "substituters = [\"https://a/\", \"https://b\"]\n\
                     bearer-token-files = { \"https://a\" = \"a.token\" }\n",
                ),
            ],
            flags: no_flags,
            check: |h, c| {
                assert_eq!(
                    c.upstream.bearer_token_files,
                    [("https://a/".into(), h.path("a.token"))]
                );
            },
        },
        Case {
            name: "bearer_token_flags_replace_the_files_list",
            files: &[
                ("a.token", ""),
                ("b.token", ""),
                (
                    "storefs.toml",
                    "substituters = [\"https://a\", \"https://b/x=y\"]\n\
                     bearer-token-files = { \"https://a\" = \"a.token\" }\n",
                ),
            ],
            flags: |h| Settings {
                bearer_token_files: typed(&[&format!(
                    "https://b/x=y={}",
                    h.path("b.token").display()
                )]),
                ..Default::default()
            },
            check: |h, c| {
                assert_eq!(
                    c.upstream.bearer_token_files,
                    [("https://b/x=y".into(), h.path("b.token"))]
                );
            },
        },
    ];
    for case in cases {
        let host = Host::new();
        for (name, text) in case.files {
            host.write(name, text);
        }
        let cfg =
            host.resolve(&(case.flags)(&host)).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        (case.check)(&host, &cfg);
    }
}

#[test]
fn bad_values_are_refused_naming_the_setting_and_the_value() {
    type Flags = fn(&Host) -> Settings;
    let cases: [(&str, &str, Flags, &[&str]); 22] = [
        (
            "cache_inside_the_mount",
            "mountpoint = \"/nix/store\"\n",
            |_| Settings { cache_dir: Some("/nix/store/cache".into()), ..Default::default() },
            &["/nix/store/cache", "inside the mountpoint"],
        ),
        (
            "bad_key_flag",
            "",
            |_| Settings { trusted_public_keys: Some(vec!["nokey".into()]), ..Default::default() },
            &["nokey"],
        ),
        ("unknown_key", "colour = \"blue\"\n", no_flags, &["`colour`", "storefs.toml"]),
        ("wrong_type", "negative-ttl = \"60\"\n", no_flags, &["`negative-ttl`", "storefs.toml"]),
        (
            "bad_size_in_file",
            "max-size = \"12Q\"\n",
            no_flags,
            &["max-size in", "storefs.toml", "\"12Q\""],
        ),
        (
            "bad_size_flag",
            "",
            |_| Settings { max_size: Some("12Q".into()), ..Default::default() },
            &["--max-size", "\"12Q\""],
        ),
        (
            "bad_min_free_flag",
            "",
            |_| Settings { min_free: Some("150%".into()), ..Default::default() },
            &["--min-free", "\"150%\""],
        ),
        ("bad_min_free_in_file", "min-free = \"lots\"\n", no_flags, &["min-free in", "\"lots\""]),
        (
            "zero_connect_timeout",
            "",
            |_| Settings { connect_timeout: Some(0), ..Default::default() },
            &["--connect-timeout", "0 is out of range"],
        ),
        (
            "zero_backoff_in_file",
            "upstream-backoff = 0\n",
            no_flags,
            &["upstream-backoff in", "storefs.toml", "0 is out of range"],
        ),
        (
            "huge_negative_ttl",
            "",
            |_| Settings { negative_ttl: Some(u64::MAX), ..Default::default() },
            &["--negative-ttl", "18446744073709551615"],
        ),
        (
            "too_many_prefetch_jobs",
            "",
            |_| Settings { prefetch_jobs: Some(65), ..Default::default() },
            &["--prefetch-jobs", "65 is out of range", "0 (off) to 64"],
        ),
        ("negative_prefetch_jobs", "prefetch-jobs = -1\n", no_flags, &["`prefetch-jobs`"]),
        ("empty_substituters", "substituters = []\n", no_flags, &["substituters in", "empty list"]),
        (
            "bad_key_in_file",
            "trusted-public-keys = [\"nonsense\"]\n",
            no_flags,
            &["trusted-public-keys in", "storefs.toml", "nonsense"],
        ),
        (
            "missing_netrc_flag",
            "",
            |h| Settings { netrc_file: Some(h.path("nope")), ..Default::default() },
            &["--netrc-file", "nope", "does not exist"],
        ),
        ("missing_netrc_in_file", "netrc-file = \"nope\"\n", no_flags, &["netrc-file in", "nope"]),
        (
            "token_for_an_unknown_cache",
            "",
            |h| Settings {
                bearer_token_files: typed(&[&format!(
                    "https://other={}",
                    h.path("storefs.toml").display()
                )]),
                ..Default::default()
            },
            &["--bearer-token-file", "\"https://other\"", "https://cache.nixos.org"],
        ),
        (
            "token_without_a_file",
            "",
            |_| Settings {
                bearer_token_files: typed(&["https://cache.nixos.org"]),
                ..Default::default()
            },
            &["--bearer-token-file", "\"https://cache.nixos.org\"", "URL=FILE"],
        ),
        (
            "token_file_missing",
            "bearer-token-files = { \"https://cache.nixos.org\" = \"gone\" }\n",
            no_flags,
            &["bearer-token-files in", "gone"],
        ),
        (
            "two_tokens_for_one_cache",
            "",
            |h| {
                let v = format!("https://cache.nixos.org={}", h.path("storefs.toml").display());
                Settings {
                    bearer_token_files: typed(&[&v, &v.replace(".org=", ".org/=")]),
                    ..Default::default()
                }
            },
            &["more than one token", "https://cache.nixos.org"],
        ),
        (
            "missing_config_flag",
            "",
            |h| Settings { config_file: Some(h.path("gone.toml")), ..Default::default() },
            &["configuration file", "gone.toml"],
        ),
    ];
    for (name, file, flags, needles) in cases {
        let host = Host::new();
        host.write("storefs.toml", file);
        let err = match host.resolve(&flags(&host)) {
            Ok(cfg) => panic!("{name}: accepted: {cfg:?}"),
            Err(e) => e.to_string(),
        };
        for needle in needles {
            assert!(err.contains(needle), "{name}: {err:?} lacks {needle:?}");
        }
    }
}

#[test]
fn relative_flag_paths_are_taken_against_the_current_directory() {
    let host = Host::new();
    let cwd = std::env::current_dir().unwrap();
    let cfg = host
        .resolve(&Settings {
            mountpoint: Some("mnt".into()),
            cache_dir: Some("cache".into()),
            netrc_file: Some("Cargo.toml".into()), // any file that exists in the crate root
            ..Settings::default()
        })
        .unwrap();
    assert_eq!(cfg.mount.mountpoint, cwd.join("mnt"));
    assert_eq!(cfg.cache.dir, cwd.join("cache"));
    assert_eq!(cfg.upstream.netrc_file, Some(cwd.join("Cargo.toml")));
}

#[test]
fn relative_paths_in_the_file_are_taken_against_its_directory() {
    let host = Host::new();
    std::fs::create_dir_all(host.path("etc/tokens")).unwrap();
    host.write("netrc", "");
    host.write("etc/tokens/a", "");
    host.write(
        "etc/nix.conf",
        "trusted-public-keys = k-1:LUtwYW0cmXkhpblWnvuM560Cx9AVlznKr4edTPJXYHQ=\n",
    );
    let file = host.write(
        "etc/storefs.toml",
        "cache-dir = \"cache\"\nnetrc-file = \"../netrc\"\nmountpoint = \"/abs\"\n\
         nix-conf = \"nix.conf\"\nsubstituters = [\"https://a\"]\n\
         bearer-token-files = { \"https://a\" = \"tokens/a\" }\n",
    );
    let cfg = host.resolve(&Settings { config_file: Some(file), ..Settings::default() }).unwrap();
    assert_eq!(cfg.cache.dir, host.path("etc/cache"));
    assert_eq!(cfg.upstream.netrc_file, Some(host.path("etc/../netrc")));
    assert_eq!(cfg.mount.mountpoint, Path::new("/abs"));
    assert!(cfg.trusted_keys.get("k-1").is_some(), "nix.conf read from the file's directory");
    assert_eq!(cfg.upstream.bearer_token_files, [("https://a".into(), host.path("etc/tokens/a"))]);
}

/// Each per-layer config gets the resolved values, and values two layers share agree.
#[test]
fn the_layer_configs_are_built_from_the_settings() {
    let host = Host::new();
    let cfg = host
        .resolve(&Settings {
            connect_timeout: Some(3),
            stall_timeout: Some(11),
            passthrough: Some(true),
            metrics_listen: Some("127.0.0.1:9101".into()),
            control_socket: Some("/run/x.sock".into()),
            ..Settings::default()
        })
        .unwrap();
    let (connect, stall) = (Duration::from_secs(3), Duration::from_secs(11));
    assert_eq!((cfg.upstream.timeouts.connect, cfg.upstream.timeouts.stall), (connect, stall));
    assert_eq!(cfg.upstream.retry, crate::upstream::retry::RetryPolicy::with_budget(connect));
    assert_eq!(cfg.cache.low_speed.window, stall, "the low-speed window is the stall timeout");
    assert!(cfg.mount.passthrough && !cfg.mount.options.allow_other);
    assert_eq!(cfg.metrics_listen, Some("127.0.0.1:9101".parse().unwrap()));
    assert_eq!(cfg.control_socket, Path::new("/run/x.sock"));
}

const EXAMPLE: &str = include_str!("../../systemd/storefs.toml");

#[test]
fn the_example_file_as_shipped_gives_the_defaults() {
    let host = Host::new();
    let path = host.write("storefs.toml", EXAMPLE);
    assert_eq!(file::read(&path).unwrap(), Settings::default());
    let cfg = host.resolve(&Settings::default()).unwrap();
    assert_eq!(cfg.upstream.substituters, [DEFAULT_SUBSTITUTER]);
    assert_eq!(cfg.cache.max_bytes, DEFAULT_MAX_SIZE_BYTES);
}

/// Uncommenting every `# key = value` line of the example changes nothing: the values shown
/// are the built-in defaults.
#[test]
fn the_example_file_uncommented_gives_the_documented_defaults() {
    let uncommented: String = EXAMPLE
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest) if rest.split_once(" = ").is_some_and(|(k, _)| is_key(k)) => rest,
            _ => line,
        })
        .flat_map(|line| [line, "\n"])
        .collect();
    let host = Host::new();
    let path = host.write("storefs.toml", &uncommented);
    let file = file::read(&path).unwrap();
    let table: toml::Table = uncommented.parse().unwrap();
    // Every setting but `--config` is a key, read from the clap definition so that a new flag
    // is checked here without touching this test.
    for key in file_keys() {
        let example_only = EXAMPLE.lines().any(|l| l.starts_with(&format!("## {key} = ")));
        assert!(
            table.contains_key(&key) || example_only,
            "systemd/storefs.toml lacks a `# {key} = default` (or `## {key} = example`) line"
        );
    }
    // These have no literal default ("…, if it exists"): the example shows them as `## `.
    assert_eq!((file.nix_conf, file.netrc_file, file.metrics_listen), (None, None, None));

    let cfg = host.resolve(&Settings::default()).unwrap();
    let defaults = Host::new().resolve(&Settings::default()).unwrap();
    assert_eq!(format!("{cfg:?}"), format!("{defaults:?}"));
}

/// The configuration file's keys: one per `storefs mount` setting except `--config`.
fn file_keys() -> Vec<String> {
    let mount = <Settings as clap::Args>::augment_args(clap::Command::new("mount"));
    let ids = mount.get_arguments().map(|arg| arg.get_id().as_str().to_owned());
    let keys: Vec<String> =
        ids.filter(|id| id != "config_file").map(|id| id.replace('_', "-")).collect();
    assert!(keys.len() > 10, "too few settings: {keys:?}");
    keys
}

fn is_key(word: &str) -> bool {
    !word.is_empty() && word.chars().all(|c| c.is_ascii_lowercase() || c == '-')
}

#[test]
fn a_cache_dir_others_may_read_or_that_another_user_owns_is_refused_naming_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let host = Host::new();
    let dir = host.path("cache");
    std::fs::create_dir(&dir).unwrap();
    let flags = Settings {
        cache_dir: Some(dir.clone()),
        mountpoint: Some(host.path("mnt")),
        ..Default::default()
    };
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
    let err = host.resolve(&flags).unwrap_err().to_string();
    let named = err.contains(dir.to_str().unwrap());
    assert!(named && err.contains("mode 0750") && err.contains("chmod 0700"), "{err}");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    host.resolve(&flags).expect("0700, owned by us");
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
        let err = host.resolve(&flags).unwrap_err().to_string();
        assert!(err.contains("owned by uid 65534") && err.contains("chown 0"), "{err}");
    }
}

#[test]
fn the_fetch_timeout_and_rates_resolve_with_zero_meaning_off() {
    let host = Host::new();
    let c = host.resolve(&Settings::default()).unwrap();
    assert_eq!(c.cache.fetch_timeout, Some(DEFAULT_FETCH_TIMEOUT));
    assert_eq!(c.upstream.fetch_timeout, Some(DEFAULT_FETCH_TIMEOUT));
    assert_eq!(c.upstream.rate.per_second, 200);
    assert_eq!(c.cache.uid_rate.per_second, 50);
    let off = Settings {
        fetch_timeout: Some(0),
        upstream_rate: Some(0),
        uid_rate: Some(0),
        ..Default::default()
    };
    let c = host.resolve(&off).unwrap();
    assert_eq!((c.cache.fetch_timeout, c.upstream.rate.per_second), (None, 0));
    assert_eq!(c.cache.uid_rate, crate::upstream::rate::RateLimit::OFF);
    let too_fast = Settings { uid_rate: Some(MAX_RATE + 1), ..Default::default() };
    let err = host.resolve(&too_fast).unwrap_err().to_string();
    assert!(err.starts_with("--uid-rate: 1000001 is out of range"), "{err}");
}
