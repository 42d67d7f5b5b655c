//! The start-up check that nothing storefs reads or writes lies under its own mountpoint
//! (reliability case PRC-13): a cache directory, control socket, credential file, `file://`
//! cache or TLS root bundle reached through the mount would make the daemon wait on itself.
//! Symlinks are followed by hand, component by component, so a link whose target exists only
//! once the mount is up (dangling now) is still seen to point into it.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use super::ConfigError;

/// Symlinks followed while resolving one path before giving up (Linux's own limit).
const MAX_LINKS: usize = 40;

/// `Err` naming the first of `paths` (each with the setting it comes from) that resolves into
/// `mountpoint` or is the mountpoint itself.
pub fn check(mountpoint: &Path, paths: &[(String, PathBuf)]) -> Result<(), ConfigError> {
    let mount = resolve(mountpoint);
    for (setting, path) in paths {
        let resolved = resolve(path);
        if resolved.starts_with(&mount) {
            return Err(ConfigError::InsideMount {
                setting: setting.clone(),
                path: path.clone(),
                resolved,
                mountpoint: mountpoint.to_owned(),
            });
        }
    }
    Ok(())
}

/// `path` made absolute (against the working directory) with `.`, `..` and every symlink on
/// the way resolved, whether or not its target exists. A component that cannot be read (a dead
/// mount) is taken as it is.
pub fn resolve(path: &Path) -> PathBuf {
    let absolute = match path.is_absolute() {
        true => path.to_owned(),
        false => std::env::current_dir().unwrap_or_default().join(path),
    };
    let mut pending: VecDeque<OsString> = names(&absolute).into();
    let mut out = PathBuf::from("/");
    let mut links = 0;
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            out.pop();
            continue;
        }
        let next = out.join(&name);
        match std::fs::read_link(&next) {
            Ok(target) if links < MAX_LINKS => {
                links += 1;
                if target.is_absolute() {
                    out = PathBuf::from("/");
                }
                for name in names(&target).into_iter().rev() {
                    pending.push_front(name);
                }
            }
            _ => out = next,
        }
    }
    out
}

/// The names of `path`'s components, `..` included, without the root and `.`.
fn names(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_owned()),
            Component::ParentDir => Some("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn resolves_links_dangling_or_not_and_dot_dot() {
        let dir = tempfile::tempdir().unwrap();
        let root = resolve(dir.path());
        let mnt = root.join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        std::fs::create_dir(root.join("etc")).unwrap();
        // Dangling now: its target appears only once the mount is up.
        symlink(mnt.join("abc-certs/ca.pem"), root.join("etc/ca.pem")).unwrap();
        symlink("../mnt", root.join("etc/relative")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        assert_eq!(resolve(&root.join("etc/ca.pem")), mnt.join("abc-certs/ca.pem"));
        assert_eq!(resolve(&root.join("etc/relative/x")), mnt.join("x"));
        assert_eq!(resolve(&root.join("etc/../mnt/./y")), mnt.join("y"));
        assert_eq!(resolve(&root.join("etc/missing/z")), root.join("etc/missing/z"));
        assert!(resolve(&root.join("loop")).starts_with(&root), "a loop ends");
    }

    #[test]
    fn names_the_setting_and_the_path_inside_the_mount() {
        let dir = tempfile::tempdir().unwrap();
        let root = resolve(dir.path());
        let mnt = root.join("store");
        std::fs::create_dir(&mnt).unwrap();
        symlink(mnt.join("x-certs/ca.pem"), root.join("ca.pem")).unwrap();
        let outside = vec![("--cache-dir".to_owned(), root.join("store-cache"))];
        check(&mnt, &outside).unwrap();
        let mut inside = outside;
        inside.push(("SSL_CERT_FILE".to_owned(), root.join("ca.pem")));
        let err = check(&mnt, &inside).unwrap_err().to_string();
        for part in ["SSL_CERT_FILE", "ca.pem", "x-certs/ca.pem", "inside the mountpoint"] {
            assert!(err.contains(part), "{part:?} in {err}");
        }
        let err = check(&mnt, &[("--control-socket".to_owned(), mnt.clone())]).unwrap_err();
        assert!(err.to_string().contains("--control-socket"), "the mountpoint itself: {err}");
    }
}
