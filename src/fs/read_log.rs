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
        let mut logged = lock(&self.inner);
        if logged.broken || !logged.seen.insert((entry.store_path.hash_part(), node)) {
            return;
        }
        let Some(line) = line_of(entry, node) else { return };
        if let Err(err) = logged.file.write_all(&line) {
            warn!(error = %err, "cannot append to the --record-reads file; recording stops");
            logged.broken = true;
        }
    }
}

/// `<store path>/<path of node>\n`, or None when a name holds a newline or the tree is not one.
fn line_of(entry: &Entry, node: NodeId) -> Option<Vec<u8>> {
    let nodes = &entry.manifest.nodes;
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
    let mut line = entry.store_path.to_absolute_path().into_bytes();
    for name in names.iter().rev() {
        line.push(b'/');
        line.extend_from_slice(name);
    }
    (!line.contains(&b'\n')).then(|| {
        line.push(b'\n');
        line
    })
}
