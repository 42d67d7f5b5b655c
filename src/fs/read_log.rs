//! `--record-reads FILE`: the path of each file a reader opens through the mount, appended once
//! per file in the order first opened (`/nix/store/<hash>-<name>/<path in it>`, one a line).
//! `storefs index --warm-list FILE` turns such a log into the indexes' warm lists, so that a
//! later first lookup of a path fetches those files at once (docs/INDEX_FORMAT.md, "Sections").

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use tracing::warn;

use crate::cache::Entry;
use crate::cache::manifest::{Node, ROOT_NODE};
use crate::nix::nar::NodeId;
use crate::nix::store_path::StorePath;
use crate::sync::{Mutex, lock};

/// Appends the files readers open to a file; see the module docs.
#[derive(Debug)]
pub struct ReadLog {
    inner: Mutex<Logged>,
}

#[derive(Debug)]
struct Logged {
    file: File,
    /// The files logged already, by store path hash and node.
    seen: HashSet<(String, NodeId)>,
    /// Set after a write failed: one warning, then nothing more is written.
    broken: bool,
}

impl ReadLog {
    /// Opens `path` for appending (created 0600 if missing; lines already in it are kept).
    ///
    /// # Errors
    ///
    /// The file cannot be opened for appending.
    pub fn create(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().append(true).create(true).mode(0o600).open(path)?;
        let logged = Logged { file, seen: HashSet::new(), broken: false };
        Ok(Self { inner: Mutex::new(logged) })
    }

    /// Logs regular file `node` of `entry`, the first time it is opened. A name holding a
    /// newline is not logged (it would not survive as a line).
    pub fn opened(&self, entry: &Entry, node: NodeId) {
        self.opened_in(&entry.store_path, &entry.manifest.nodes, node);
    }

    /// [`ReadLog::opened`] for node `node` of the tree `nodes` of `store_path`.
    fn opened_in(&self, store_path: &StorePath, nodes: &[Node], node: NodeId) {
        let mut logged = lock(&self.inner);
        if logged.broken || !logged.seen.insert((store_path.hash_part(), node)) {
            return;
        }
        let Some(line) = line_of(store_path, nodes, node) else { return };
        if let Err(err) = logged.file.write_all(&line) {
            warn!(error = %err, "cannot append to the --record-reads file; recording stops");
            logged.broken = true;
        }
    }
}

/// `<store path>/<path of node>\n`, or None when a name holds a newline or the tree is not one.
fn line_of(store_path: &StorePath, nodes: &[Node], node: NodeId) -> Option<Vec<u8>> {
    let mut names: Vec<&[u8]> = Vec::new();
    let mut at = node;
    while at != ROOT_NODE {
        let parent = nodes.get(at as usize)?.parent();
        let Node::Directory { entries, .. } = nodes.get(parent as usize)? else { return None };
        let (name, _) = entries.iter().find(|(_, id)| *id == at)?;
        names.push(name);
        // A parent comes before its entries in NAR order: the walk ends.
        if parent >= at {
            return None;
        }
        at = parent;
    }
    let mut line = store_path.to_absolute_path().into_bytes();
    for name in names.iter().rev() {
        line.push(b'/');
        line.extend_from_slice(name);
    }
    (!line.contains(&b'\n')).then(|| {
        line.push(b'\n');
        line
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(parent: NodeId) -> Node {
        Node::File { parent, executable: false, size: 1, packed: None, sums: None }
    }

    /// `lib/{a.py, "x\ny"}` and `b.py`: nodes 0 root, 1 b.py, 2 lib, 3 lib/a.py, 4 lib/"x\ny".
    fn tree() -> Vec<Node> {
        vec![
            Node::Directory {
                parent: 0,
                entries: vec![(b"b.py".to_vec(), 1), (b"lib".to_vec(), 2)],
            },
            file(0),
            Node::Directory {
                parent: 0,
                entries: vec![(b"a.py".to_vec(), 3), (b"x\ny".to_vec(), 4)],
            },
            file(2),
            file(2),
        ]
    }

    #[test]
    fn each_file_is_logged_once_in_the_order_first_opened_and_a_newline_name_never() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reads.log");
        std::fs::write(&path, "kept\n").unwrap();
        let log = ReadLog::create(&path).unwrap();
        let sp = StorePath::from_basename(b"7rjj86a15146cq1d3qy068lml7n8ykzm-site").unwrap();
        for node in [3, 1, 3, 4, 1] {
            log.opened_in(&sp, &tree(), node);
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let root = "/nix/store/7rjj86a15146cq1d3qy068lml7n8ykzm-site";
        assert_eq!(text, format!("kept\n{root}/lib/a.py\n{root}/b.py\n"));
    }

    #[test]
    fn a_failed_write_stops_the_log_without_failing_the_read() {
        let log = ReadLog::create(Path::new("/dev/full")).unwrap();
        let sp = StorePath::from_basename(b"7rjj86a15146cq1d3qy068lml7n8ykzm-site").unwrap();
        log.opened_in(&sp, &tree(), 3);
        assert!(lock(&log.inner).broken);
        log.opened_in(&sp, &tree(), 1);
        assert_eq!(lock(&log.inner).seen.len(), 1, "nothing more is recorded once broken");
    }
}
