//! The real-Nix fixture closure and its binary caches (tests/fixtures/build.sh).
//!
//! Built once per machine into [`fixtures_dir`] (`/var/tmp/storefs-fixtures`, or
//! `$STOREFS_FIXTURES_DIR`); later calls only check it (build.sh exits at once when
//! its stamp matches). Concurrent test binaries serialise on a file lock.

use std::collections::BTreeMap;
use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The compressions there is one cache for, as subdirectories of [`Fixtures::caches_dir`].
pub const COMPRESSIONS: [&str; 4] = ["xz", "zstd", "bzip2", "none"];

/// What build.sh produced; every path is a full `/nix/store/...` path.
#[derive(Debug, Clone)]
pub struct Fixtures {
    /// The fixture directory (holds `caches/`, `keys/`, `closure.txt`, `fixture.env`).
    pub dir: PathBuf,
    /// Every path of the closure, sorted.
    pub closure: Vec<String>,
    /// The top store path; its closure is `closure`.
    pub top: String,
    /// An executable script whose `#!` interpreter lives in another store path
    /// (busybox-bin -> busybox) and which reads a file from a third (weird-names).
    pub exe: String,
    /// Its exact stdout without the trailing newline (it prints `exe_expected + "\n"`).
    pub exe_expected: String,
    /// A store path that is a single executable file (static busybox). Run it with
    /// `arg0("busybox")` or `arg0("sh")`: busybox picks its applet from argv[0].
    pub busybox: String,
    /// A directory path with `bin/busybox` and `bin/sh`, absolute symlinks to `busybox`.
    pub busybox_bin: String,
    /// A path holding `random.bin`: 4 MiB of incompressible pseudo-random bytes.
    pub big: String,
    /// `big` + `/random.bin`.
    pub big_file: String,
    /// A path nested 12 directories deep (`depth-01/.../depth-12/bottom.txt`).
    pub deep: String,
    /// The deepest file in `deep`.
    pub deep_file: String,
    /// The weird-names tree: spaces, unicode, 255-byte names, empty file and dir,
    /// executable, relative/absolute/dangling symlinks, 10 levels of nesting.
    pub weird: String,
    /// The path holding `bin/hello` (= `exe`).
    pub hello: String,
    /// A path whose root is a single file that references another path.
    pub single_file_ref: String,
    /// A path whose root is a symlink (to another store path).
    pub symlink_root: String,
    /// Contents of keys/public: `storefs-test-1:<base64>`.
    pub public_key: String,
    /// Every `KEY=value` of fixture.env.
    pub env: BTreeMap<String, String>,
}

impl Fixtures {
    /// `dir/caches`: one subdirectory per entry of [`COMPRESSIONS`] (serve this with nginx).
    pub fn caches_dir(&self) -> PathBuf {
        self.dir.join("caches")
    }

    /// `dir/caches/<compression>`, a `file://` binary cache.
    pub fn cache_dir(&self, compression: &str) -> PathBuf {
        assert!(COMPRESSIONS.contains(&compression), "no cache for compression {compression:?}");
        self.caches_dir().join(compression)
    }

    /// The narinfo file of `store_path` in the cache for `compression`.
    pub fn narinfo_path(&self, compression: &str, store_path: &str) -> PathBuf {
        self.cache_dir(compression).join(format!("{}.narinfo", hash_part(store_path)))
    }

    /// The secret key the caches are signed with (`nix-store --generate-binary-cache-key` format).
    pub fn secret_key_path(&self) -> PathBuf {
        self.dir.join("keys/secret")
    }

    /// The store path of the closure whose name (after `<hash>-`) is `name`.
    pub fn path_named(&self, name: &str) -> &str {
        self.closure
            .iter()
            .find(|p| p.split_once('-').map(|x| x.1) == Some(name))
            .unwrap_or_else(|| panic!("no closure path named {name:?}"))
    }
}

/// The 32-character hash part of `/nix/store/<hash>-<name>` (or of `<hash>-<name>`).
pub fn hash_part(store_path: &str) -> &str {
    let base = store_path.strip_prefix("/nix/store/").unwrap_or(store_path);
    let hash = base.split(['-', '/']).next().unwrap_or("");
    assert_eq!(hash.len(), 32, "not a store path: {store_path:?}");
    hash
}

/// Where the fixture lives: `$STOREFS_FIXTURES_DIR` or `/var/tmp/storefs-fixtures`.
pub fn fixtures_dir() -> PathBuf {
    match std::env::var_os("STOREFS_FIXTURES_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from("/var/tmp/storefs-fixtures"),
    }
}

/// Builds (once per machine; idempotent and quick afterwards) and loads the fixture.
/// Panics if it cannot be built: call [`super::require`] with `nix-store` first.
pub fn fixtures() -> &'static Fixtures {
    static FIXTURES: OnceLock<Fixtures> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let dir = fixtures_dir();
        build(&dir);
        load(&dir)
    })
}

/// Runs build.sh under an exclusive `flock` on `dir/.lock` (build.sh takes its own
/// lock on a different file, so there is no self-deadlock).
fn build(dir: &Path) {
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let lock_path = dir.join(".lock");
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap_or_else(|e| panic!("open {}: {e}", lock_path.display()));
    loop {
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } == 0 {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            panic!("flock {}: {err}", lock_path.display());
        }
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/build.sh");
    let status = Command::new("bash")
        .arg(&script)
        .arg(dir)
        .stdin(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    assert!(status.success(), "{} {} failed: {status}", script.display(), dir.display());
    drop(lock); // closing the file releases the lock
}

fn load(dir: &Path) -> Fixtures {
    let env_path = dir.join("fixture.env");
    let text = fs::read_to_string(&env_path)
        .unwrap_or_else(|e| panic!("read {}: {e}", env_path.display()));
    let env: BTreeMap<String, String> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or_else(|| panic!("bad fixture.env line {l:?}"));
            let v = v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')).unwrap_or(v);
            (k.to_string(), v.to_string())
        })
        .collect();
    let get = |k: &str| {
        env.get(k).cloned().unwrap_or_else(|| panic!("{} has no {k}", env_path.display()))
    };
    let closure_path = dir.join("closure.txt");
    let closure: Vec<String> = fs::read_to_string(&closure_path)
        .unwrap_or_else(|e| panic!("read {}: {e}", closure_path.display()))
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    let f = Fixtures {
        dir: dir.to_path_buf(),
        top: get("TOP"),
        exe: get("EXE"),
        exe_expected: get("EXE_EXPECTED"),
        busybox: get("BUSYBOX"),
        busybox_bin: get("BUSYBOX_BIN"),
        big: get("BIG"),
        big_file: get("BIG_FILE"),
        deep: get("DEEP"),
        deep_file: get("DEEP_FILE"),
        weird: get("WEIRD"),
        hello: get("HELLO"),
        single_file_ref: get("SINGLE_FILE_REF"),
        symlink_root: get("SYMLINK_ROOT"),
        public_key: get("PUBLIC_KEY"),
        closure,
        env,
    };
    assert!(f.closure.len() >= 20, "closure has only {} paths", f.closure.len());
    assert!(f.closure.contains(&f.top), "closure.txt lacks TOP");
    f
}
