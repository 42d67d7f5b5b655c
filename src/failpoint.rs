//! Fault points for tests: with the `failpoints` feature, `STOREFS_FAILPOINTS` (comma-separated)
//! arms named points. A bare `name` makes the daemon SIGKILL itself when it reaches `hit(name)`;
//! `name=eio` or `name=enospc` makes the first `io(name)` the process reaches fail with that
//! errno (once: later ones succeed, so a retry or a fresh copy gets through). Without the
//! feature every call compiles to nothing.
//!
//! Crash points: `unpack::after_first_file`, `publish::before_rename`, `publish::after_rename`,
//! `evict::after_trash_rename`, and in `storefs index` `index::after_nar_written`,
//! `index::after_narinfo_rename`. Error points: `contents::read` (reading a cached file),
//! `unpack::manifest` (writing an entry's manifest), `publish::sync` (the `syncfs` before the
//! rename).

/// Kills the process if the crash point `name` is armed.
#[inline]
pub fn hit(name: &str) {
    #[cfg(feature = "failpoints")]
    armed::hit(name);
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

/// The armed error of point `name`, the first time it is reached; `Ok` ever after, and always
/// without the feature.
#[inline]
pub fn io(name: &str) -> std::io::Result<()> {
    #[cfg(feature = "failpoints")]
    return armed::io(name);
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = name;
        Ok(())
    }
}

#[cfg(feature = "failpoints")]
mod armed {
    use std::sync::OnceLock;

    use crate::sync::{AtomicBool, Ordering};

    /// One armed point: its name, the errno it fails with (None: a crash point), and whether
    /// it has fired.
    struct Point {
        name: String,
        errno: Option<i32>,
        fired: AtomicBool,
    }

    fn parse(spec: &str) -> Option<Point> {
        let (name, action) = spec.split_once('=').unwrap_or((spec, ""));
        let errno = match action.trim() {
            "" => None,
            "eio" => Some(libc::EIO),
            "enospc" => Some(libc::ENOSPC),
            _ => return None,
        };
        Some(Point { name: name.trim().to_owned(), errno, fired: AtomicBool::new(false) })
    }

    fn armed() -> &'static [Point] {
        static ARMED: OnceLock<Vec<Point>> = OnceLock::new();
        ARMED.get_or_init(|| {
            std::env::var("STOREFS_FAILPOINTS")
                .map(|v| v.split(',').filter_map(parse).collect())
                .unwrap_or_default()
        })
    }

    pub(super) fn hit(name: &str) {
        if armed().iter().any(|p| p.name == name && p.errno.is_none()) {
            tracing::error!(failpoint = name, "failpoint reached: killing the daemon");
            // SAFETY: signalling our own process.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
    }

    pub(super) fn io(name: &str) -> std::io::Result<()> {
        for point in armed().iter().filter(|p| p.name == name) {
            if let Some(errno) = point.errno
                && !point.fired.swap(true, Ordering::AcqRel)
            {
                tracing::error!(failpoint = name, errno, "failpoint reached: failing once");
                return Err(std::io::Error::from_raw_os_error(errno));
            }
        }
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn actions_parse_and_unknown_ones_are_ignored() {
            let crash = parse("publish::before_rename").unwrap();
            assert_eq!((crash.name.as_str(), crash.errno), ("publish::before_rename", None));
            assert_eq!(parse(" contents::read = eio").unwrap().errno, Some(libc::EIO));
            assert_eq!(parse("unpack::manifest=enospc").unwrap().errno, Some(libc::ENOSPC));
            assert!(parse("x=explode").is_none());
        }
    }
}
