//! Why the cache cannot serve a path. `CacheError` is `Clone`, because every waiter of a
//! single-flight fetch gets the same result, yet keeps each cause whole: a `Cause` is the
//! original error behind an `Arc`, with its source chain, so callers can still ask it for the
//! `io::Error` underneath (ENOSPC is found that way, never by reading messages).

use std::error::Error;
use std::fmt;
use std::io;

use crate::sync::Arc;

/// An error shared by several owners, its source chain intact.
#[derive(Clone)]
pub struct Cause(Arc<dyn Error + Send + Sync + 'static>);

impl Cause {
    /// Keeps `err`.
    pub fn new(err: impl Error + Send + Sync + 'static) -> Self {
        Self(Arc::new(err))
    }

    /// A cause that is only a message (nothing underneath).
    pub fn msg(message: impl Into<String>) -> Self {
        Self::new(io::Error::other(message.into()))
    }

    /// The first `io::Error` in the chain, if any.
    pub fn io_error(&self) -> Option<&io::Error> {
        self.find()
    }

    /// The first error of type `T` in the chain (the kept error first), if any.
    pub fn find<T: Error + 'static>(&self) -> Option<&T> {
        let mut next: Option<&(dyn Error + 'static)> = Some(self.0.as_ref());
        while let Some(err) = next {
            if let Some(found) = err.downcast_ref::<T>() {
                return Some(found);
            }
            next = err.source();
        }
        None
    }

    /// Whether the chain ends in a full disk or an exhausted quota.
    pub fn is_no_space(&self) -> bool {
        self.io_error()
            .and_then(io::Error::raw_os_error)
            .is_some_and(|code| code == libc::ENOSPC || code == libc::EDQUOT)
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl Error for Cause {
    // Transparent: the chain continues with the kept error's own source.
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.0.source()
    }
}

/// One substituter's failure to give a verified copy of a path.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The substituter's URL (None: not one substituter's fault, e.g. none is usable).
    pub upstream: Option<String>,
    /// What went wrong.
    pub cause: Cause,
}

impl Failure {
    /// A failure of the substituter at `upstream`.
    pub fn of(upstream: &str, cause: impl Error + Send + Sync + 'static) -> Self {
        Self { upstream: Some(upstream.to_owned()), cause: Cause::new(cause) }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.upstream {
            Some(url) => write!(f, "{url}: {}", self.cause),
            None => write!(f, "{}", self.cause),
        }
    }
}

/// The failures of a fetch, as one `; `-separated line.
#[derive(Clone, Debug)]
pub struct Failures(pub Vec<Failure>);

impl fmt::Display for Failures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, failure) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{failure}")?;
        }
        Ok(())
    }
}

/// Why a store path cannot be served.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CacheError {
    /// Every cache answered that it does not have the path.
    #[error("{0} is not in any configured binary cache")]
    NotFound(String),
    /// No cache gave a trusted, verified copy.
    #[error("no verified copy of {path}: {failures}")]
    Unavailable {
        /// The store path.
        path: String,
        /// Each cache's failure, in the order they were asked.
        failures: Failures,
    },
    /// The path cannot fit in the cache at all.
    #[error("{path} needs {needed} bytes, more than the cache filesystem's {limit} bytes")]
    TooLarge {
        /// The store path.
        path: String,
        /// Its NarSize.
        needed: u64,
        /// Size of the cache filesystem.
        limit: u64,
    },
    /// The path does not fit on the cache filesystem even if every evictable entry were evicted
    /// (someone else's files, pinned paths, `--min-free`), or it was still out of room (bytes or
    /// inodes) after the evict-and-retry.
    #[error(
        "{path} ({needed} bytes) does not fit on the cache filesystem: {free} bytes free above \
         --min-free after evicting every unpinned path, or no inodes left"
    )]
    NoRoom {
        /// The store path.
        path: String,
        /// Its NarSize.
        needed: u64,
        /// Free bytes above `--min-free` if every unpinned entry were evicted.
        free: u64,
    },
    /// The path is pinned, so it cannot be evicted.
    #[error("{0} is pinned; unpin it first")]
    Pinned(String),
    /// A prefetch gave up: the path does not fit without evicting. Readers never see this.
    #[error("{0} was not prefetched: no room without evicting")]
    NoRoomToPrefetch(String),
    /// The local disk failed us.
    #[error("local cache failure for {path}: {cause}")]
    Local {
        /// The store path.
        path: String,
        /// What went wrong.
        #[source]
        cause: Cause,
    },
}

impl CacheError {
    /// A local failure concerning `path`.
    pub fn local(
        path: &crate::nix::store_path::StorePath,
        cause: impl Error + Send + Sync + 'static,
    ) -> Self {
        CacheError::Local { path: path.to_string(), cause: Cause::new(cause) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("writing the entry")]
    struct Outer(#[source] io::Error);

    #[test]
    fn a_cloned_error_keeps_its_source_chain_and_errno() {
        let full = io::Error::from_raw_os_error(libc::ENOSPC);
        let err = CacheError::Local { path: "p".into(), cause: Cause::new(Outer(full)) };
        let copy = err.clone();
        let CacheError::Local { cause, .. } = &copy else { unreachable!() };
        assert!(cause.is_no_space(), "ENOSPC is found under the outer error");
        let mut chain = Vec::new();
        let mut next: Option<&(dyn Error + 'static)> = Some(&copy);
        while let Some(err) = next {
            chain.push(err.to_string());
            next = err.source();
        }
        assert_eq!(chain.len(), 3, "{chain:?}");
        assert!(chain[2].contains("No space left"), "{chain:?}");
        assert!(!Cause::msg("plain").is_no_space());
    }

    #[test]
    fn failures_read_as_one_line() {
        let f = Failures(vec![
            Failure::of("http://a", io::Error::other("refused")),
            Failure { upstream: None, cause: Cause::msg("no usable cache") },
        ]);
        assert_eq!(f.to_string(), "http://a: refused; no usable cache");
    }
}
