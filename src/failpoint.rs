//! Crash points for tests: with the `failpoints` feature, a name listed in `STOREFS_FAILPOINTS`
//! (comma-separated) makes the daemon SIGKILL itself when it reaches that point. Without the
//! feature every call compiles to nothing.
//!
//! Points: `unpack::after_first_file`, `publish::before_rename`, `publish::after_rename`,
//! `evict::after_trash_rename`, and in `storefs index` `index::after_nar_written`,
//! `index::after_narinfo_rename`.

/// Kills the process if the failpoint `name` is armed.
#[inline]
pub fn hit(name: &str) {
    #[cfg(feature = "failpoints")]
    armed::hit(name);
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

#[cfg(feature = "failpoints")]
mod armed {
    use std::sync::OnceLock;

    fn armed() -> &'static [String] {
        static ARMED: OnceLock<Vec<String>> = OnceLock::new();
        ARMED.get_or_init(|| {
            std::env::var("STOREFS_FAILPOINTS")
                .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect())
                .unwrap_or_default()
        })
    }

    pub(super) fn hit(name: &str) {
        if armed().iter().any(|a| a == name) {
            tracing::error!(failpoint = name, "failpoint reached: killing the daemon");
            // SAFETY: signalling our own process.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
    }
}
