//! Which files of a partial entry are fetched together: a reader's own batch (its file, the
//! small files of its directory that cost little more, and the files named like it just above
//! or below), what comes alongside it in small batches (its package, or else the small files of
//! its directory), the files that follow it in the NAR read ahead after it, the batches of a
//! path's warm list, and the order of a background fill. Pure planning over the index and what is present: no I/O.

use std::collections::BTreeSet;
use std::ops::Range;

use super::partial::Partial;
use crate::nix::file_index::{FileIndex, FileNode, NodeKind};
use crate::nix::nar::NodeId;

/// Most bytes of frames a reader's own batch takes beyond those of its file: siblings that lie
/// in its frames, or little more, ride along; the rest of the directory is read ahead beside it.
const READER_EXTRA_BYTES: u64 = 64 * 1024;
/// Most bytes of frames a reader's own batch takes for the files named like its own.
const NAMESAKE_BYTES: u64 = 256 * 1024;
/// Largest sibling file read ahead with a file.
const READ_AHEAD_FILE_BYTES: u64 = 256 * 1024;
/// Most bytes of frames read ahead in a file's directory, beyond the reader's own batch.
const DIRECTORY_AHEAD_BYTES: u64 = 2 << 20;
/// Most bytes of missing frames of a directory's subtree for all of it to come alongside a read.
const SUBTREE_AHEAD_BYTES: u64 = 1 << 20;
/// Most missing files of a directory's subtree for all of it to come alongside a read.
const SUBTREE_AHEAD_FILES: usize = 1024;
/// Fewest bytes of frames read ahead after a file, in NAR order.
const NEIGHBOUR_MIN_BYTES: u64 = 64 * 1024;
/// Most bytes of frames read ahead after a file, in NAR order.
const NEIGHBOUR_MAX_BYTES: u64 = 512 * 1024;
/// Most bytes of frames one background batch fetches (beyond a first large file): a reader of
/// a file in it waits for no more than this, and so does a reader behind it on the link.
pub(super) const BACKGROUND_BATCH_BYTES: u64 = 512 * 1024;

/// File `id` and the small missing files of its directory whose frames are among its own or
/// cost little more: what its reader fetches and waits for.
pub(super) fn reader_batch(partial: &Partial, id: NodeId) -> Vec<NodeId> {
    let mut batch = vec![id];
    let mut budget = FrameBudget::new(&partial.index, &[id], READER_EXTRA_BYTES);
    batch
        .extend(small_siblings(partial, id).filter(|(_, file)| budget.admit(file)).map(|(s, _)| s));
    let mut budget = FrameBudget::new(&partial.index, &batch, NAMESAKE_BYTES);
    let namesakes: Vec<NodeId> = namesakes(partial, id)
        .filter(|(n, file)| !batch.contains(n) && budget.admit(file))
        .map(|(n, _)| n)
        .collect();
    batch.extend(namesakes);
    batch
}

/// The small missing files named like file `id` up to the first dot, in the directory above
/// its own or in the directories below its own: a source and its compiled form (`m.py`,
/// `__pycache__/m.cpython-311.pyc`) are read one after the other, and lie far apart in the NAR.
fn namesakes(partial: &Partial, id: NodeId) -> impl Iterator<Item = (NodeId, &FileNode)> {
    let index = &partial.index;
    let parent_of = |n: NodeId| index.nodes.get(n as usize).and_then(|n| n.parent.as_ref());
    let (dir, own_stem) = match parent_of(id) {
        Some((dir, name)) => (Some(*dir), stem(name)),
        None => (None, &[][..]),
    };
    let above = dir.and_then(parent_of).map(|(up, _)| *up);
    small_missing(partial, id).filter_map(move |(other, in_dir, name, file)| {
        let near = Some(in_dir) == above || parent_of(in_dir).map(|(up, _)| *up) == dir;
        (dir.is_some() && near && stem(name) == own_stem).then_some((other, file))
    })
}

/// A name up to its first dot (all of it if none; a leading dot counts as part of it).
fn stem(name: &[u8]) -> &[u8] {
    let from = usize::from(name.first() == Some(&b'.'));
    match name[from..].iter().position(|b| *b == b'.') {
        Some(dot) => &name[..from + dot],
        None => name,
    }
}

/// What comes alongside a reader's `batch` for file `id`, in background batches of at most
/// `BACKGROUND_BATCH_BYTES`, in NAR order from `id` on and then from the start. It is the
/// missing files of the largest directory around `id` (its own, its parent, ...) whose subtree's
/// missing frames cost at most `SUBTREE_AHEAD_BYTES` (a package: sources and compiled files
/// side by side); or, when even `id`'s directory costs more, the small files of that directory
/// up to `DIRECTORY_AHEAD_BYTES`. Files sharing a frame with `batch` are left for after it,
/// when its boundary frames are kept spare.
pub(super) fn alongside(partial: &Partial, id: NodeId, batch: &[NodeId]) -> Vec<Vec<NodeId>> {
    let index = &partial.index;
    let taken = frames_of_files(index, batch);
    let apart = |(s, file): &(NodeId, &FileNode)| {
        !batch.contains(s) && index.frames_of(file).all(|f| !taken.contains(&f))
    };
    let mut files: Vec<(NodeId, &FileNode)> = match widest_subtree(partial, id, &taken) {
        Some(scope) => subtree_missing(partial, scope).filter(apart).collect(),
        None => small_siblings(partial, id).filter(apart).collect(),
    };
    let split = files.partition_point(|(s, _)| *s < id);
    files.rotate_left(split);
    let mut total = FrameBudget::new(index, &[], DIRECTORY_AHEAD_BYTES);
    background_batches(index, files.into_iter().filter(|(_, file)| total.admit(file)))
}

/// `files` cut, in their order, into batches of at most `BACKGROUND_BATCH_BYTES` of frames
/// (at least one file each).
fn background_batches<'a>(
    index: &FileIndex,
    files: impl IntoIterator<Item = (NodeId, &'a FileNode)>,
) -> Vec<Vec<NodeId>> {
    let mut batches: Vec<Vec<NodeId>> = Vec::new();
    let mut current = FrameBudget::new(index, &[], BACKGROUND_BATCH_BYTES);
    for (file_id, file) in files {
        if batches.is_empty() || !current.admit(file) {
            current = FrameBudget::new(index, &[], BACKGROUND_BATCH_BYTES);
            current.admit(file);
            batches.push(Vec::new());
        }
        batches.last_mut().expect("a batch was just pushed").push(file_id);
    }
    batches
}

/// The highest directory above file `id` (its own first) whose subtree's missing files cost at
/// most `SUBTREE_AHEAD_BYTES` of frames beyond `taken`, or none when its own costs more.
fn widest_subtree(partial: &Partial, id: NodeId, taken: &BTreeSet<usize>) -> Option<NodeId> {
    let index = &partial.index;
    let mut widest = None;
    let mut dir = index.nodes.get(id as usize)?.parent.as_ref()?.0;
    loop {
        let mut budget =
            FrameBudget { index, frames: taken.clone(), spent: 0, limit: SUBTREE_AHEAD_BYTES };
        let mut scanned = 0;
        for (_, file) in subtree_missing(partial, dir) {
            scanned += 1;
            if scanned > SUBTREE_AHEAD_FILES || !budget.admit(file) {
                return widest;
            }
        }
        widest = Some(dir);
        match index.nodes.get(dir as usize).and_then(|n| n.parent.as_ref()) {
            Some((up, _)) if *up < dir => dir = *up,
            _ => return widest,
        }
    }
}

/// The missing regular files under directory `dir`, in NAR order: the nodes after it up to the
/// first whose parent comes before it (the index lists a tree depth first).
fn subtree_missing(partial: &Partial, dir: NodeId) -> impl Iterator<Item = (NodeId, &FileNode)> {
    let index = &partial.index;
    index
        .nodes
        .iter()
        .enumerate()
        .skip(dir as usize + 1)
        .take_while(move |(_, node)| node.parent.as_ref().is_some_and(|(p, _)| *p >= dir))
        .filter_map(move |(i, node)| {
            let NodeKind::File(file) = &node.kind else { return None };
            (!partial.has(i as NodeId)).then_some((i as NodeId, file))
        })
}

/// The missing files of file `id`'s directory other than itself, small enough to read ahead,
/// in NAR order.
fn small_siblings(partial: &Partial, id: NodeId) -> impl Iterator<Item = (NodeId, &FileNode)> {
    let index = &partial.index;
    let parent = index.nodes.get(id as usize).and_then(|n| n.parent.as_ref()).map(|p| p.0);
    small_missing(partial, id)
        .filter_map(move |(sibling, dir, _, file)| (Some(dir) == parent).then_some((sibling, file)))
}

/// The missing files other than `id` small enough to read ahead with it, in NAR order, each
/// with the directory it is in and its name there.
fn small_missing(
    partial: &Partial,
    id: NodeId,
) -> impl Iterator<Item = (NodeId, NodeId, &[u8], &FileNode)> {
    partial.index.nodes.iter().enumerate().filter_map(move |(other, node)| {
        let other = other as NodeId;
        let NodeKind::File(file) = &node.kind else { return None };
        let (dir, name) = node.parent.as_ref()?;
        (other != id && file.size <= READ_AHEAD_FILE_BYTES && !partial.has(other)).then_some((
            other,
            *dir,
            name.as_slice(),
            file,
        ))
    })
}

/// The missing files that follow file `id` in the NAR (the rest of its directory's subtree
/// first), beyond the files of `batch`, as long as their frames not among `batch`'s fit a budget
/// that grows with what the entry holds: a reader who has read much of a path reads further.
pub(super) fn neighbours(partial: &Partial, id: NodeId, batch: &[NodeId]) -> Vec<NodeId> {
    let index = &partial.index;
    let limit = (partial.present_file_bytes() / 4).clamp(NEIGHBOUR_MIN_BYTES, NEIGHBOUR_MAX_BYTES);
    let mut budget = FrameBudget::new(index, batch, limit);
    let mut ahead = Vec::new();
    for (next, node) in index.nodes.iter().enumerate().skip(id as usize + 1) {
        let next = next as NodeId;
        let NodeKind::File(file) = &node.kind else { continue };
        if partial.has(next) || batch.contains(&next) {
            continue;
        }
        if !budget.admit(file) {
            break;
        }
        ahead.push(next);
    }
    ahead
}

/// The batches of an entry's warm list (`FileIndex::warm`, the files its readers opened in a
/// learned run), in the list's order, each up to `BACKGROUND_BATCH_BYTES` of frames (at least
/// one file) and ranked by its first file: what its first lookup fetches before any reader
/// asks. Files present are left out.
pub(super) fn warm_batches(partial: &Partial) -> Vec<(u64, Vec<NodeId>)> {
    let index = &partial.index;
    let files = index.warm.iter().filter_map(|warm| {
        let file = index.file(warm.node)?;
        (!partial.has(warm.node) && file.size > 0).then_some((warm.node, file))
    });
    let batches = background_batches(index, files);
    let rank = |batch: &[NodeId]| partial.warm_rank(batch[0]).unwrap_or(0);
    batches.into_iter().map(|batch| (rank(&batch), batch)).collect()
}

/// The batches of a background fill: the missing files in NAR order from one file on, then
/// from the start, each batch up to `BACKGROUND_BATCH_BYTES` of frames (at least one file). A
/// file present or claimed by the time its batch is fetched is left out then.
pub(super) struct FillOrder<'a> {
    partial: &'a Partial,
    /// The nodes still to walk, in order.
    order: std::iter::Peekable<std::iter::Chain<Range<NodeId>, Range<NodeId>>>,
}

impl<'a> FillOrder<'a> {
    pub(super) fn new(partial: &'a Partial, from: NodeId) -> Self {
        let n = partial.index.nodes.len() as NodeId;
        let from = from.min(n);
        Self { partial, order: (from..n).chain(0..from).peekable() }
    }

    /// The next batch, or `None` once every node was walked.
    pub(super) fn next_batch(&mut self) -> Option<Vec<NodeId>> {
        let index = &self.partial.index;
        let mut budget = FrameBudget::new(index, &[], BACKGROUND_BATCH_BYTES);
        let mut batch = Vec::new();
        while let Some(&next) = self.order.peek() {
            let Some(file) = index.file(next) else {
                self.order.next();
                continue;
            };
            if self.partial.has(next) {
                self.order.next();
                continue;
            }
            if !budget.admit(file) && !batch.is_empty() {
                break;
            }
            batch.push(next);
            self.order.next();
        }
        (!batch.is_empty()).then_some(batch)
    }
}

/// The missing files with bytes, beside those of `batch` in NAR order, whose frames are all
/// `at_hand` (decoded for the batch): downloaded anyway, so worth checking and keeping rather
/// than fetching again for a later reader. Walks from each file of the batch both ways, past
/// directories, symlinks and empty files, up to the first file whose frames are not at hand.
pub(super) fn bycatch(
    partial: &Partial,
    batch: &[NodeId],
    at_hand: impl Fn(usize) -> bool,
) -> Vec<NodeId> {
    let index = &partial.index;
    let mut seen: BTreeSet<NodeId> = batch.iter().copied().collect();
    let mut found = Vec::new();
    for &from in batch {
        for forward in [true, false] {
            let mut at = from;
            loop {
                at = match forward {
                    true => at.checked_add(1),
                    false => at.checked_sub(1),
                }
                .filter(|n| (*n as usize) < index.nodes.len())
                .unwrap_or(from);
                if at == from || !seen.insert(at) {
                    break;
                }
                match index.file(at) {
                    Some(file) if file.size > 0 => {
                        if !index.frames_of(file).all(&at_hand) {
                            break;
                        }
                        if !partial.has(at) {
                            found.push(at);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    found
}

/// Bytes of the NAR file the frames of `ids` take.
pub(super) fn frame_bytes(index: &FileIndex, ids: &[NodeId]) -> u64 {
    let frames = frames_of_files(index, ids);
    frames.iter().filter_map(|i| index.frames.get(*i)).map(|f| f.file_len).sum()
}

/// The frames the files `ids` lie in.
pub(super) fn frames_of_files(index: &FileIndex, ids: &[NodeId]) -> BTreeSet<usize> {
    ids.iter().filter_map(|id| index.file(*id)).flat_map(|f| index.frames_of(f)).collect()
}

/// The frames a batch takes and the NAR-file bytes they cost, against a limit: each file admitted
/// costs only its frames not taken already.
struct FrameBudget<'a> {
    index: &'a FileIndex,
    frames: BTreeSet<usize>,
    spent: u64,
    limit: u64,
}

impl<'a> FrameBudget<'a> {
    /// A budget of `limit` bytes beyond the frames of `ids`, which it holds already.
    fn new(index: &'a FileIndex, ids: &[NodeId], limit: u64) -> Self {
        Self { index, frames: frames_of_files(index, ids), spent: 0, limit }
    }

    /// Takes `file`'s frames if the bytes of those not taken yet fit; says whether they did.
    fn admit(&mut self, file: &FileNode) -> bool {
        let cost = self.cost(file);
        if self.spent + cost > self.limit {
            return false;
        }
        self.take(file, cost);
        true
    }

    /// The bytes of `file`'s frames not taken yet.
    fn cost(&self, file: &FileNode) -> u64 {
        let index = self.index;
        index
            .frames_of(file)
            .filter(|i| !self.frames.contains(i))
            .filter_map(|i| index.frames.get(i))
            .map(|f| f.file_len)
            .sum()
    }

    fn take(&mut self, file: &FileNode, cost: u64) {
        self.spent += cost;
        self.frames.extend(self.index.frames_of(file));
    }
}
