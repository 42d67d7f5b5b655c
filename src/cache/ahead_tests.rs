//! What a reader of a partial entry fetches and waits for, what comes alongside and what a
//! fill fetches, planned over indexes of small trees built as `storefs index` builds them.

use super::ahead::{FillOrder, alongside, bycatch, frame_bytes, reader_batch};
use super::lazy_tests::noise;
use super::partial::{Partial, VerifiedFile};
use super::tests::sp;
use crate::nix::file_index::{FileIndex, IndexBuilder};
use crate::nix::nar::{Node as NarNode, NodeId, parse};

/// `tree`'s index with frames of about 1 KiB.
fn index_of(tree: &NarNode) -> FileIndex {
    let nar = tree.to_nar();
    let mut file = Vec::new();
    let mut builder = IndexBuilder::new(&mut file, 1024, 3);
    parse(&nar[..], nar.len() as u64, &mut builder).unwrap();
    builder.finish().unwrap().into_index(sp('a', "ahead"))
}

/// The node at `path` (names from the root).
fn node(index: &FileIndex, path: &[&str]) -> NodeId {
    path.iter().fold(0, |dir, name| {
        let found = index.nodes.iter().position(|n| {
            n.parent.as_ref().is_some_and(|(p, n)| *p == dir && n.as_slice() == name.as_bytes())
        });
        found.unwrap_or_else(|| panic!("no {name} in {path:?}")) as NodeId
    })
}

fn file(seed: u64, len: usize) -> NarNode {
    NarNode::File { executable: false, contents: noise(seed, len) }
}

fn dir(entries: Vec<(&str, NarNode)>) -> NarNode {
    NarNode::Directory(entries.into_iter().map(|(n, e)| (n.as_bytes().to_vec(), e)).collect())
}

/// A package beside a directory too large to come alongside anything: `big/blob`, then
/// `pkg/` with sources and their compiled forms in `pkg/__pycache__/`.
fn package_tree() -> NarNode {
    dir(vec![
        ("big", dir(vec![("blob", file(1, 1_500_000))])),
        (
            "pkg",
            dir(vec![
                ("__init__.py", file(4, 3000)),
                (
                    "__pycache__",
                    dir(vec![
                        ("__init__.cpython-311.pyc", file(2, 3000)),
                        ("mod.cpython-311.pyc", file(3, 3000)),
                    ]),
                ),
                ("mod.py", file(5, 3000)),
                ("other.py", file(6, 3000)),
            ]),
        ),
    ])
}

#[test]
fn a_reader_fetches_its_file_with_its_namesakes_and_its_package_comes_alongside() {
    let index = index_of(&package_tree());
    let at = |path: &[&str]| node(&index, path);
    let pyc = at(&["pkg", "__pycache__", "__init__.cpython-311.pyc"]);
    let (init, module, other) =
        (at(&["pkg", "__init__.py"]), at(&["pkg", "mod.py"]), at(&["pkg", "other.py"]));
    let blob = at(&["big", "blob"]);
    let partial = Partial::new(index.clone());

    let batch = reader_batch(&partial, pyc);
    assert_eq!(batch[0], pyc, "the file asked for comes first");
    assert!(batch.contains(&init), "its source, in the directory above: {batch:?}");
    assert!(
        !batch.contains(&module) && !batch.contains(&other),
        "not the whole package: {batch:?}"
    );
    let from_source = reader_batch(&partial, module);
    assert!(
        from_source.contains(&at(&["pkg", "__pycache__", "mod.cpython-311.pyc"])),
        "a source brings its compiled form, in the directory below: {from_source:?}"
    );

    let beside: Vec<NodeId> = alongside(&partial, pyc, &batch).concat();
    for id in [module, other] {
        assert!(beside.contains(&id), "the rest of the package comes alongside: {beside:?}");
    }
    assert!(!beside.contains(&blob), "the large directory beside it does not: {beside:?}");
    assert!(beside.iter().all(|id| !batch.contains(id)), "nothing asked for twice");
}

#[test]
fn in_a_directory_too_large_to_take_whole_its_small_files_come_alongside() {
    // Twenty files of 70 KB (1.4 MB, over the subtree budget) and one of 300 KB (over the
    // size read ahead).
    let mut entries: Vec<(String, NarNode)> =
        (0..20).map(|i| (format!("f{i:02}"), file(10 + i, 70_000))).collect();
    entries.push(("large".to_owned(), file(99, 300_000)));
    let tree = NarNode::Directory(entries.into_iter().map(|(n, e)| (n.into_bytes(), e)).collect());
    let tree = dir(vec![("lib", tree)]);
    let index = index_of(&tree);
    let partial = Partial::new(index.clone());
    let first = node(&index, &["lib", "f05"]);
    let batch = reader_batch(&partial, first);
    assert_eq!(batch, vec![first], "70 KB siblings cost more than a reader waits for");
    let batches = alongside(&partial, first, &batch);
    let beside: Vec<NodeId> = batches.concat();
    assert_eq!(beside.len(), 19, "every other small file: {beside:?}");
    assert!(!beside.contains(&node(&index, &["lib", "large"])));
    assert_eq!(beside[0], node(&index, &["lib", "f06"]), "in NAR order from the file read on");
    assert!(batches.len() >= 3, "in batches of at most 512 KiB: {}", batches.len());
}

#[test]
fn a_fill_walks_every_missing_file_once_from_the_file_read_in_small_batches() {
    // Files of 100 bytes in frames of about 1 KiB, about ten to a frame: 600 KB of frames.
    let tree = dir(vec![(
        "d",
        NarNode::Directory(
            (0..6000).map(|i| (format!("f{i:04}").into_bytes(), file(i, 100))).collect(),
        ),
    )]);
    let index = index_of(&tree);
    let partial = Partial::new(index.clone());
    let from = node(&index, &["d", "f3000"]);
    let mut fill = FillOrder::new(&partial, from);
    let batches: Vec<Vec<NodeId>> = std::iter::from_fn(|| fill.next_batch()).collect();
    assert!(batches.len() > 1, "more than one batch of 512 KiB");
    for batch in &batches {
        assert!(frame_bytes(&index, batch) <= 512 * 1024, "a batch within its budget");
    }
    let walked: Vec<NodeId> = batches.concat();
    assert_eq!(walked[0], from, "from the file read on");
    let mut files: Vec<NodeId> =
        (0..index.nodes.len() as NodeId).filter(|id| index.file(*id).is_some()).collect();
    let split = files.partition_point(|id| *id < from);
    files.rotate_left(split);
    assert_eq!(walked, files, "every file once, in NAR order, then from the start");
}

#[test]
fn the_bycatch_is_every_missing_file_wholly_in_the_frames_at_hand_across_directories() {
    // Files of 100 bytes in frames of about 1 KiB; the frames at hand are those of the last
    // file of `d1` and of a file at the start of `d2`, which follow each other.
    let files = |seed: u64| {
        NarNode::Directory(
            (0..30).map(|i| (format!("f{i:02}").into_bytes(), file(seed + i, 100))).collect(),
        )
    };
    let tree = dir(vec![("d1", files(0)), ("d2", files(100))]);
    let index = index_of(&tree);
    let partial = Partial::new(index.clone());
    let read = node(&index, &["d1", "f29"]);
    let present = node(&index, &["d2", "f00"]);
    let cache_dir = tempfile::tempdir().unwrap();
    let stored = VerifiedFile { id: present, bytes: vec![0; 100], executable: false };
    let staged = partial.stage(cache_dir.path(), vec![stored]).unwrap();
    partial.commit(cache_dir.path(), staged).unwrap();

    let frames_of = |id: NodeId| index.frames_of(index.file(id).unwrap());
    let at_hand: Vec<usize> =
        frames_of(read).chain(frames_of(node(&index, &["d2", "f01"]))).collect();
    assert_eq!(at_hand.len(), 2, "the fixture's frames: {at_hand:?}");
    assert_eq!(at_hand[0] + 1, at_hand[1], "the fixture's frames: {at_hand:?}");
    let caught = bycatch(&partial, &[read], |i| at_hand.contains(&i));
    let wholly_at_hand = |id: NodeId| {
        index.file(id).is_some_and(|f| index.frames_of(f).all(|i| at_hand.contains(&i)))
    };
    let want: Vec<NodeId> = (0..index.nodes.len() as NodeId)
        .filter(|id| *id != read && *id != present && wholly_at_hand(*id))
        .collect();
    let mut got = caught.clone();
    got.sort_unstable();
    assert_eq!(got, want, "every such file once, and no other");
    assert!(caught.contains(&node(&index, &["d1", "f28"])), "its directory: {caught:?}");
    assert!(caught.contains(&node(&index, &["d2", "f01"])), "past the next directory: {caught:?}");
    assert!(!caught.contains(&present), "a present file is not fetched again");
}
