//! `storefs index --warm-list FILE`: the files a learned run opened (a `--record-reads` log:
//! `/nix/store/<hash>-<name>/<path in it>`, one a line, in the order first opened), grouped by
//! store path and resolved against each path's tree into the index's warm list
//! (`FileIndex::warm`). A mount fetches a path's warm list at its first lookup.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::nix::file_index::{FileIndex, MAX_WARM_PATHS, NodeKind, WarmFile};
use crate::nix::nar::NodeId;
use crate::nix::store_path::StorePath;

/// Most lines a warm-list file may have.
pub const MAX_LINES: usize = 1 << 22;

/// The files of each store path a learned run opened, by the path's hash part: each with its
/// rank (its position among all the files of the log) and its path inside the store path.
#[derive(Debug, Default, Clone)]
pub struct WarmLists {
    by_hash: HashMap<String, Vec<(u64, Vec<u8>)>>,
    /// The store paths named, in the order first named.
    paths: Vec<StorePath>,
}

/// Why a warm-list file was refused; names the file and line.
#[derive(Debug, thiserror::Error)]
pub enum WarmListError {
    /// The file cannot be read.
    #[error("cannot read warm list {}: {source}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line is not `/nix/store/<hash>-<name>[/path]`.
    #[error("warm list {}, line {line}: {why}: {text:?}", file.display())]
    Line {
        /// The file.
        file: PathBuf,
        /// Its number, from 1.
        line: usize,
        /// What is wrong.
        why: String,
        /// The line.
        text: String,
    },
    /// More than [`MAX_LINES`] lines.
    #[error("warm list {} has more than {MAX_LINES} lines", file.display())]
    TooLong {
        /// The file.
        file: PathBuf,
    },
}

impl WarmLists {
    /// Reads a `--record-reads` log. Empty lines are skipped; a file named twice counts once,
    /// where first named.
    ///
    /// # Errors
    ///
    /// The file is unreadable, too long, or a line is not a file in a store path.
    pub fn read(file: &Path) -> Result<Self, WarmListError> {
        let bytes = std::fs::read(file)
            .map_err(|source| WarmListError::Read { file: file.to_path_buf(), source })?;
        Self::parse(&bytes).map_err(|e| match e {
            LineError::TooLong => WarmListError::TooLong { file: file.to_path_buf() },
            LineError::Bad { line, why, text } => {
                WarmListError::Line { file: file.to_path_buf(), line, why, text }
            }
        })
    }

    fn parse(bytes: &[u8]) -> Result<Self, LineError> {
        let mut lists = Self::default();
        let mut seen = HashSet::new();
        for (n, line) in bytes.split(|b| *b == b'\n').enumerate() {
            if n >= MAX_LINES {
                return Err(LineError::TooLong);
            }
            if line.is_empty() {
                continue;
            }
            let bad = |why: &str| LineError::Bad {
                line: n + 1,
                why: why.to_owned(),
                text: String::from_utf8_lossy(line).into_owned(),
            };
            let rest = line.strip_prefix(b"/nix/store/").ok_or_else(|| bad("not in /nix/store"))?;
            let (base, inner) = match rest.iter().position(|b| *b == b'/') {
                Some(slash) => (&rest[..slash], &rest[slash + 1..]),
                None => (rest, &[][..]),
            };
            let store_path =
                StorePath::from_basename(base).map_err(|e| bad(&format!("bad store path: {e}")))?;
            let odd = |c: &[u8]| c.is_empty() || c == b"." || c == b"..";
            if !inner.is_empty() && inner.split(|b| *b == b'/').any(odd) {
                return Err(bad("empty, . or .. name in the path"));
            }
            if seen.insert(line) {
                let rank = seen.len() as u64 - 1;
                let files = lists.by_hash.entry(store_path.hash_part()).or_default();
                if files.is_empty() {
                    lists.paths.push(store_path);
                }
                files.push((rank, inner.to_vec()));
            }
        }
        Ok(lists)
    }

    /// The warm list and warm paths of `index`'s path: [`WarmLists::resolve`], and the other
    /// store paths named (at most `MAX_WARM_PATHS`), in the order first named; both empty for
    /// a path not named.
    #[must_use]
    pub fn resolve_all(&self, index: &FileIndex) -> (Vec<WarmFile>, Vec<StorePath>) {
        let (warm, _) = self.resolve(index);
        if !self.by_hash.contains_key(&index.store_path.hash_part()) {
            return (warm, Vec::new());
        }
        let others = self.paths.iter().filter(|p| **p != index.store_path);
        (warm, others.take(MAX_WARM_PATHS).cloned().collect())
    }

    /// The warm list of `index`'s path: the files named for it that its tree holds as regular
    /// files, in the order named, with their ranks; and how many named ones it does not hold.
    #[must_use]
    pub fn resolve(&self, index: &FileIndex) -> (Vec<WarmFile>, usize) {
        let Some(paths) = self.by_hash.get(&index.store_path.hash_part()) else {
            return (Vec::new(), 0);
        };
        let children: HashMap<(NodeId, &[u8]), NodeId> = index
            .nodes
            .iter()
            .enumerate()
            .filter_map(|(id, n)| {
                n.parent.as_ref().map(|(p, name)| ((*p, &name[..]), id as NodeId))
            })
            .collect();
        let mut warm = Vec::new();
        let mut unknown = 0;
        for (rank, path) in paths {
            let mut at: Option<NodeId> = Some(0);
            if !path.is_empty() {
                for name in path.split(|b| *b == b'/') {
                    at = at.and_then(|dir| children.get(&(dir, name)).copied());
                }
            }
            match at {
                Some(node) if matches!(index.nodes[node as usize].kind, NodeKind::File(_)) => {
                    warm.push(WarmFile { node, rank: *rank });
                }
                _ => unknown += 1,
            }
        }
        (warm, unknown)
    }
}

/// A line refused, before the file is named.
#[derive(Debug)]
enum LineError {
    TooLong,
    Bad { line: usize, why: String, text: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::file_index::IndexBuilder;
    use crate::nix::nar::{Node, parse};

    fn index() -> FileIndex {
        let tree = Node::Directory(vec![
            (b"a.py".to_vec(), Node::File { executable: false, contents: b"a".to_vec() }),
            (b"link".to_vec(), Node::Symlink { target: b"a.py".to_vec() }),
            (
                b"pkg".to_vec(),
                Node::Directory(vec![(
                    b"m.py".to_vec(),
                    Node::File { executable: false, contents: b"m".to_vec() },
                )]),
            ),
        ]);
        let nar = tree.to_nar();
        let mut out = Vec::new();
        let mut builder = IndexBuilder::new(&mut out, 1024, 3);
        parse(&nar[..], nar.len() as u64, &mut builder).unwrap();
        let sp = StorePath::from_basename(b"7rjj86a15146cq1d3qy068lml7n8ykzm-site").unwrap();
        builder.finish().unwrap().into_index(sp)
    }

    #[test]
    fn a_log_resolves_to_the_files_of_each_path_in_the_order_first_named() {
        let log = b"/nix/store/7rjj86a15146cq1d3qy068lml7n8ykzm-site/pkg/m.py\n\
            /nix/store/0rjj86a15146cq1d3qy068lml7n8ykzm-other/x\n\
            \n\
            /nix/store/7rjj86a15146cq1d3qy068lml7n8ykzm-site/a.py\n\
            /nix/store/7rjj86a15146cq1d3qy068lml7n8ykzm-site/pkg/m.py\n\
            /nix/store/7rjj86a15146cq1d3qy068lml7n8ykzm-site/gone.py\n\
            /nix/store/7rjj86a15146cq1d3qy068lml7n8ykzm-site/pkg\n\
            /nix/store/7rjj86a15146cq1d3qy068lml7n8ykzm-site/link\n";
        let lists = WarmLists::parse(log).unwrap();
        // Nodes: 0 root, 1 a.py, 2 link, 3 pkg, 4 m.py. A directory, a symlink and a name the
        // tree lacks are not files: counted, left out. Ranks count every path's files.
        let warm = vec![WarmFile { node: 4, rank: 0 }, WarmFile { node: 1, rank: 2 }];
        assert_eq!(lists.resolve(&index()), (warm.clone(), 3));
        let other_path =
            StorePath::from_basename(b"0rjj86a15146cq1d3qy068lml7n8ykzm-other").unwrap();
        assert_eq!(lists.resolve_all(&index()), (warm, vec![other_path]));
        let mut other = index();
        other.store_path =
            StorePath::from_basename(b"1rjj86a15146cq1d3qy068lml7n8ykzm-none").unwrap();
        assert_eq!(lists.resolve(&other), (Vec::new(), 0));
        assert_eq!(lists.resolve_all(&other), (Vec::new(), Vec::new()), "not named: nothing");
    }

    #[test]
    fn a_line_outside_a_store_path_is_refused_naming_it() {
        for (log, want) in [
            (&b"/usr/lib/x\n"[..], "line 1: not in /nix/store"),
            (b"\n/nix/store/short-x/a\n", "line 2: bad store path"),
            (
                b"/nix/store/7rjj86a15146cq1d3qy068lml7n8ykzm-site/../etc\n",
                "line 1: empty, . or ..",
            ),
            (b"/nix/store/7rjj86a15146cq1d3qy068lml7n8ykzm-site//a\n", "line 1: empty, . or .."),
        ] {
            let err = WarmLists::parse(log).expect_err("refused");
            let LineError::Bad { line, why, .. } = err else { panic!("not a line error") };
            let text = format!("line {line}: {why}");
            assert!(text.starts_with(want), "{text:?} is not {want:?}");
        }
    }
}
