//! `storefs check`, the daemon's half: with the daemon's own upstreams and keys, does each
//! substituter answer its `nix-cache-info`, do the trusted keys verify what it signs (one narinfo
//! per substituter), and is the cache directory sane. Each check is one [`Finding`]; nothing here
//! changes the cache (the requests count in the upstreams' figures and health like any other).
//!
//! Which narinfo tests the keys of a substituter: the `--probe-path` given, else a path this
//! daemon verified from that substituter before (kept in `narinfo/`), else one it verified from
//! another substituter; with none at all, the keys are not checked (a warning, not a failure).

use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use super::layout::{self, Layout};
use super::{MinFree, NarCache};
use crate::nix::narinfo::NarInfo;
use crate::nix::signature::VerifyError;
use crate::nix::store_path::{STORE_DIR, StorePath};
use crate::sync::Arc;
use crate::upstream::Upstream;
use crate::upstream::set::DEFAULT_PRIORITY;

/// Most remembered narinfos read to find a path to probe the substituters with.
const PROBE_CANDIDATES: usize = 256;

/// How one check went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Passed.
    Ok,
    /// Passed, but something could not be checked or looks off.
    Warn,
    /// Failed: the daemon cannot serve as configured.
    Fail,
}

/// One check: what was checked, how it went, and the facts or the problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// How it went.
    pub verdict: Verdict,
    /// What was checked: `substituter <url>`, `keys <url>`, `cache directory <dir>`, ...
    pub subject: String,
    /// The facts on success, the problem on failure.
    pub detail: String,
}

impl Finding {
    fn new(verdict: Verdict, subject: &str, detail: impl Into<String>) -> Self {
        Self { verdict, subject: subject.to_owned(), detail: detail.into() }
    }
}

/// The path whose narinfo tests one substituter's signatures, and where it comes from.
#[derive(Clone, Debug)]
struct Probe {
    path: StorePath,
    origin: &'static str,
}

impl NarCache {
    /// Checks every substituter (at once; each request within `timeout`), then the cache
    /// directory and its free space. `probe` is the path whose narinfo tests the keys; without
    /// it, one this daemon verified before.
    pub async fn check(
        self: &Arc<Self>,
        probe: Option<&StorePath>,
        timeout: Duration,
    ) -> Vec<Finding> {
        let remembered = match probe {
            Some(_) => Vec::new(),
            None => {
                let this = self.clone();
                tokio::task::spawn_blocking(move || this.narinfos.sample(PROBE_CANDIDATES))
                    .await
                    .unwrap_or_default()
            }
        };
        let per_upstream = self.upstreams.iter().map(|up| {
            let probe = match probe {
                Some(sp) => Some(Probe { path: sp.clone(), origin: "given" }),
                None => pick_probe(&remembered, up.url()),
            };
            self.check_upstream(up.as_ref(), probe, timeout)
        });
        let mut findings: Vec<Finding> =
            futures::future::join_all(per_upstream).await.into_iter().flatten().collect();
        let this = self.clone();
        let local = tokio::task::spawn_blocking(move || {
            [check_dir(this.layout.root()), check_space(&this.layout, this.config.min_free)]
        })
        .await;
        match local {
            Ok(local) => findings.extend(local),
            Err(err) => findings.push(Finding::new(
                Verdict::Fail,
                &format!("cache directory {}", self.config.dir.display()),
                format!("the check itself failed: {err}"),
            )),
        }
        findings
    }

    /// `substituter <url>` (its nix-cache-info) and `keys <url>` (one narinfo's signatures).
    async fn check_upstream(
        &self,
        up: &dyn Upstream,
        probe: Option<Probe>,
        timeout: Duration,
    ) -> [Finding; 2] {
        let url = up.url();
        let subject = format!("substituter {url}");
        let keys = format!("keys {url}");
        let answered = match tokio::time::timeout(timeout, up.cache_info()).await {
            Err(_) => Err(format!("no answer to nix-cache-info within {}", secs(timeout))),
            Ok(Err(err)) => Err(err.to_string()),
            Ok(Ok(None)) => Err("it has no nix-cache-info (HTTP 404 or 403, or no such file): \
                                 is the URL that of a binary cache?"
                .to_owned()),
            Ok(Ok(Some(info))) if info.store_dir != STORE_DIR => Err(format!(
                "its StoreDir is {:?}, not {STORE_DIR:?}: the daemon does not use this cache",
                info.store_dir
            )),
            Ok(Ok(Some(info))) => Ok(match info.priority {
                Some(p) => format!("nix-cache-info answers (StoreDir {STORE_DIR}, Priority {p})"),
                None => format!(
                    "nix-cache-info answers (StoreDir {STORE_DIR}, no Priority: \
                     {DEFAULT_PRIORITY} assumed)"
                ),
            }),
        };
        let cache = match answered {
            Ok(facts) => Finding::new(Verdict::Ok, &subject, facts),
            Err(problem) => {
                let skipped = "not checked: the substituter failed (see its line)";
                return [
                    Finding::new(Verdict::Fail, &subject, problem),
                    Finding::new(Verdict::Warn, &keys, skipped),
                ];
            }
        };
        let Some(probe) = probe else {
            let none = "no known path to probe: this daemon has verified no path yet; pass \
                        --probe-path with a path the cache has to check its signatures";
            return [cache, Finding::new(Verdict::Warn, &keys, none)];
        };
        [cache, self.check_keys(up, &probe, timeout, &keys).await]
    }

    /// Asks `up` for the narinfo of the probe path and verifies it with the trusted keys.
    async fn check_keys(
        &self,
        up: &dyn Upstream,
        probe: &Probe,
        timeout: Duration,
        subject: &str,
    ) -> Finding {
        let origin = probe.origin;
        let sp = probe.path.to_absolute_path();
        let info = match tokio::time::timeout(timeout, up.narinfo(&probe.path.hash_part())).await {
            Err(_) => {
                let late = format!("no answer for the narinfo of {sp} within {}", secs(timeout));
                return Finding::new(Verdict::Fail, subject, late);
            }
            Ok(Err(err)) => {
                let failed = format!("cannot fetch the narinfo of {sp}: {err}");
                return Finding::new(Verdict::Fail, subject, failed);
            }
            Ok(Ok(None)) => {
                let absent = format!(
                    "not checked: the cache does not have {sp} ({origin}); pass --probe-path with \
                     a path it has"
                );
                return Finding::new(Verdict::Warn, subject, absent);
            }
            Ok(Ok(Some(info))) => info,
        };
        if info.store_path != probe.path {
            let other = format!(
                "not checked: its narinfo for {} names {}, not {sp}",
                probe.path.hash_part(),
                info.store_path.to_absolute_path()
            );
            return Finding::new(Verdict::Warn, subject, other);
        }
        match self.keys.verify(&info) {
            Ok(name) => Finding::new(
                Verdict::Ok,
                subject,
                format!("{sp} ({origin}) is signed by {name}, a trusted key"),
            ),
            Err(err) => Finding::new(Verdict::Fail, subject, self.mismatch(&err, &info)),
        }
    }

    /// "keys do not match: …", naming what the cache signs with and what is trusted.
    fn mismatch(&self, err: &VerifyError, info: &NarInfo) -> String {
        let trusted = self.keys.names().collect::<Vec<_>>();
        let trusted = if trusted.is_empty() { "none".to_owned() } else { trusted.join(", ") };
        let mut text = String::from("keys do not match: ");
        let _ = match err {
            VerifyError::NoSignatures => {
                let path = info.store_path.to_absolute_path();
                write!(text, "the narinfo of {path} carries no signature")
            }
            VerifyError::NoTrustedSignature { names_seen } => {
                write!(text, "the cache signs with {}", names_seen.join(", "))
            }
            VerifyError::BadSignature { key } => write!(
                text,
                "the cache signs with {key}, but its signature does not verify with the trusted \
                 key of that name (is that the cache's current public key?)"
            ),
        };
        let _ = write!(text, ", trusted are {trusted}");
        text
    }
}

/// A remembered path served by `url` if there is one, else one served by another cache.
fn pick_probe(remembered: &[(String, NarInfo)], url: &str) -> Option<Probe> {
    let same = remembered.iter().find(|(from, _)| from == url);
    let origin = if same.is_some() {
        "verified from this cache before"
    } else {
        "verified from another cache before"
    };
    same.or_else(|| remembered.first())
        .map(|(_, info)| Probe { path: info.store_path.clone(), origin })
}

/// `cache directory <dir>`: a directory, owned by the daemon's user, mode 0700, of this format.
fn check_dir(root: &Path) -> Finding {
    let subject = format!("cache directory {}", root.display());
    let meta = match std::fs::symlink_metadata(root) {
        Ok(meta) => meta,
        Err(err) => return Finding::new(Verdict::Fail, &subject, format!("cannot stat: {err}")),
    };
    if !meta.is_dir() {
        return Finding::new(Verdict::Fail, &subject, "not a directory");
    }
    // SAFETY: geteuid has no arguments and cannot fail.
    let me = unsafe { libc::geteuid() };
    let mut problems = Vec::new();
    if meta.uid() != me {
        problems.push(format!("owned by uid {}, not by the daemon's uid {me}", meta.uid()));
    }
    let mode = meta.mode() & 0o7777;
    if mode != 0o700 {
        problems.push(format!("mode {mode:04o}, not 0700 (chmod 0700 {})", root.display()));
    }
    let want = layout::version_text();
    let version_file = root.join(layout::VERSION_FILE);
    match std::fs::read_to_string(&version_file) {
        Ok(found) if found.trim() == want => {}
        Ok(found) => {
            let found: String = found.trim().chars().take(80).collect();
            problems.push(format!("{} says {found:?}, not {want:?}", layout::VERSION_FILE));
        }
        Err(err) => problems.push(format!("cannot read {}: {err}", version_file.display())),
    }
    if problems.is_empty() {
        let facts = format!("owned by uid {me} (the daemon's), mode 0700, {want}");
        Finding::new(Verdict::Ok, &subject, facts)
    } else {
        Finding::new(Verdict::Fail, &subject, problems.join("; "))
    }
}

/// `cache free space`: the cache filesystem's free space is at least `--min-free`.
fn check_space(layout: &Layout, min_free: MinFree) -> Finding {
    let subject = format!("cache free space {}", layout.root().display());
    let space = match layout.space() {
        Ok(space) => space,
        Err(err) => return Finding::new(Verdict::Fail, &subject, format!("statvfs: {err}")),
    };
    let want = min_free.bytes_of(space.total_bytes);
    let (free, total) = (bytes(space.free_bytes), bytes(space.total_bytes));
    if space.free_bytes >= want {
        let facts = format!("{free} free of {total}, --min-free is {}", bytes(want));
        Finding::new(Verdict::Ok, &subject, facts)
    } else {
        let low = format!(
            "{free} free of {total}, below --min-free {}: storefs evicts cached paths to get \
             back above it; free space on that filesystem or lower --min-free",
            bytes(want)
        );
        Finding::new(Verdict::Fail, &subject, low)
    }
}

/// `1.5 GiB`, `512 B`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `5 s`, `0.5 s`.
fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn bytes_are_shown_in_binary_units() {
        let cases = [
            ("small", 512, "512 B"),
            ("one_kib", 1024, "1.0 KiB"),
            ("gibs", 3 << 30, "3.0 GiB"),
            ("max", u64::MAX, "16384.0 PiB"),
        ];
        for (name, n, want) in cases {
            assert_eq!(bytes(n), want, "{name}");
        }
    }

    #[test]
    fn a_sane_cache_directory_passes_and_each_fault_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("cache");
        drop(Layout::open(&root).unwrap());
        let ok = check_dir(&root);
        assert_eq!(ok.verdict, Verdict::Ok, "{ok:?}");
        assert!(ok.detail.contains("mode 0700"), "{ok:?}");

        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(root.join(layout::VERSION_FILE), "storefs-cache 999\n").unwrap();
        let bad = check_dir(&root);
        assert_eq!(bad.verdict, Verdict::Fail, "{bad:?}");
        for needle in ["mode 0755", "storefs-cache 999"] {
            assert!(bad.detail.contains(needle), "{needle:?} not in {bad:?}");
        }

        let missing = check_dir(&tmp.path().join("nowhere"));
        assert_eq!(missing.verdict, Verdict::Fail, "{missing:?}");
        assert!(missing.detail.contains("cannot stat"), "{missing:?}");
    }

    /// The keys line over an in-memory cache: a path signed by a trusted key passes, one signed
    /// by another key fails naming both, an absent one is a warning; a verified path is
    /// remembered as the probe of the cache that served it.
    #[tokio::test]
    async fn keys_pass_or_fail_by_what_the_cache_signs() {
        use crate::cache::tests::{Fixture, key, publish, sp, tree};
        use crate::nix::signature::SigningKey;
        let fx = Fixture::new(1);
        let (good, bad) = (sp('a', "good"), sp('b', "bad"));
        publish(&fx.ups[0], &key(), &good, &tree("g", 10));
        publish(&fx.ups[0], &SigningKey::generate("other-1", [2; 32]), &bad, &tree("b", 10));
        let cache = fx.open();
        let up = fx.ups[0].as_ref();
        let probe = |path: &StorePath| Probe { path: path.clone(), origin: "given" };
        let timeout = Duration::from_secs(5);
        let ok = cache.check_keys(up, &probe(&good), timeout, "keys 0").await;
        assert_eq!(ok.verdict, Verdict::Ok, "{ok:?}");
        assert!(ok.detail.contains("signed by test-1"), "{ok:?}");
        let wrong = cache.check_keys(up, &probe(&bad), timeout, "keys 0").await;
        assert_eq!(wrong.verdict, Verdict::Fail, "{wrong:?}");
        let want = "keys do not match: the cache signs with other-1, trusted are test-1";
        assert_eq!(wrong.detail, want);
        let absent = cache.check_keys(up, &probe(&sp('c', "none")), timeout, "keys 0").await;
        assert_eq!(absent.verdict, Verdict::Warn, "{absent:?}");

        assert!(pick_probe(&cache.narinfos.sample(PROBE_CANDIDATES), up.url()).is_none());
        cache.get(&good).await.unwrap();
        let remembered = cache.narinfos.sample(PROBE_CANDIDATES);
        let mine = pick_probe(&remembered, up.url()).unwrap();
        assert_eq!((mine.path, mine.origin), (good.clone(), "verified from this cache before"));
        let theirs = pick_probe(&remembered, "elsewhere").unwrap();
        assert_eq!((theirs.path, theirs.origin), (good, "verified from another cache before"));
    }

    #[test]
    fn free_space_below_min_free_fails() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = Layout::open(&tmp.path().join("cache")).unwrap();
        let ok = check_space(&layout, MinFree::Bytes(0));
        assert_eq!(ok.verdict, Verdict::Ok, "{ok:?}");
        let low = check_space(&layout, MinFree::Bytes(u64::MAX));
        assert_eq!(low.verdict, Verdict::Fail, "{low:?}");
        assert!(low.detail.contains("below --min-free"), "{low:?}");
    }
}
