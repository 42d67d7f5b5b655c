//! Criterion benches for NAR throughput from memory, in MB/s: strict parse only, and
//! hash + parse + unpack to disk (what a cold read costs once the bytes are off the network);
//! and reading a cached file back from the page cache, with and without checking its blocks
//! (what a warm read that reaches the daemon costs).
//!
//!     cargo bench --bench nar_unpack                        # all groups
//!     cargo bench --bench nar_unpack -- nar_unpack/large    # a filter (a regex on the ids)
//!     STOREFS_BENCH_DIR=/var/tmp cargo bench --bench nar_unpack
//!
//! `STOREFS_BENCH_DIR` is where the unpack benches write their scratch trees (default: the
//! system temp dir); pick the filesystem the cache will live on, or a tmpfs such as `/dev/shm`
//! to see the CPU cost without the disk's. Each tree is written to a fresh directory and removed
//! outside the timed region.
//!
//! Under `cargo test --benches` (or `--all-targets`) criterion runs every bench once as a smoke
//! test; the trees are then tiny so that it stays fast in a debug build.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{
    BatchSize, BenchmarkGroup, Criterion, SamplingMode, Throughput, criterion_group,
    criterion_main, measurement::WallTime,
};
use sha2::{Digest, Sha256};
use storefs::cache::contents::FileContents;
use storefs::cache::manifest::Node as CachedNode;
use storefs::cache::unpack::unpack;
use storefs::nix::hash::NarHash;
use storefs::nix::nar::reader::NullVisitor;
use storefs::nix::nar::{self, Node};
use storefs::nix::narinfo::NarInfo;

const LARGE: &str = "large_files";
const SMALL: &str = "small_files";

/// One benchmark input: a serialised NAR and a narinfo that vouches for it.
struct Input {
    /// Bench id suffix, e.g. `large_files`.
    label: &'static str,
    nar: Vec<u8>,
    info: NarInfo,
}

impl Input {
    fn new(label: &'static str, tree: &Node) -> Self {
        let nar = tree.to_nar();
        let info = narinfo_for(&nar);
        Self { label, nar, info }
    }

    /// Decimal units (MB/s, as in the 500 MB/s target), not criterion's default MiB/s.
    fn throughput(&self) -> Throughput {
        Throughput::BytesDecimal(self.nar.len() as u64)
    }
}

/// Criterion benchmarks unless `--bench` is on the command line (its own rule): `cargo bench`
/// passes it, `cargo test --benches` does not.
fn test_mode() -> bool {
    !std::env::args().any(|arg| arg == "--bench")
}

/// `big_files` files of `big_bytes` each, plus a `small/` directory of `small_files` files of
/// 100 to 999 bytes (every seventh executable). Sorted, so it is a valid NAR.
fn tree(big_files: usize, big_bytes: usize, small_files: usize) -> Node {
    let mut entries = Vec::new();
    for i in 0..big_files {
        let contents = (0..big_bytes).map(|j| (j * 31 + i) as u8).collect();
        entries
            .push((format!("big-{i:04}").into_bytes(), Node::File { executable: false, contents }));
    }
    let small = (0..small_files)
        .map(|i| {
            let file = Node::File { executable: i % 7 == 0, contents: vec![b'x'; 100 + i % 900] };
            (format!("f-{i:06}").into_bytes(), file)
        })
        .collect();
    entries.push((b"small".to_vec(), Node::Directory(small)));
    Node::Directory(entries).sorted()
}

/// The two trees: large files (8 x 16 MiB, hashing and copying dominate) and many small files
/// (20,000 of about 550 B, per-file syscalls dominate).
fn inputs() -> Vec<Input> {
    if test_mode() {
        return vec![Input::new(LARGE, &tree(2, 64 << 10, 0)), Input::new(SMALL, &tree(0, 0, 200))];
    }
    vec![Input::new(LARGE, &tree(8, 16 << 20, 0)), Input::new(SMALL, &tree(0, 0, 20_000))]
}

fn narinfo_for(nar: &[u8]) -> NarInfo {
    let text = format!(
        "StorePath: /nix/store/00000000000000000000000000000000-bench\nURL: nar/x.nar\n\
         Compression: none\nNarHash: {}\nNarSize: {}\nReferences: \n",
        NarHash::from_digest(Sha256::digest(nar).into()),
        nar.len()
    );
    NarInfo::parse(text.as_bytes()).expect("bench narinfo parses")
}

fn scratch_dir() -> PathBuf {
    std::env::var_os("STOREFS_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from)
}

/// Settings for benches whose one iteration takes tens to hundreds of milliseconds: few samples
/// of equal size, so `cargo bench` stays within minutes on a 2-core machine.
fn slow_group(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
}

/// Strict parse only, with a visitor that does nothing.
///
/// `validate` is the figure to quote: like `unpack`, it reads through the parser's own read
/// buffer, so every content byte is copied once. `parse_buf` reads the tokens straight from the
/// slice; it is run on the small-files tree only, because with a do-nothing visitor it skips file
/// contents without touching them, which would make a large-files MB/s meaningless.
fn parse(c: &mut Criterion, inputs: &[Input]) {
    let mut group = c.benchmark_group("nar_parse");
    slow_group(&mut group);
    for input in inputs {
        let (nar, len) = (&input.nar[..], input.nar.len() as u64);
        group.throughput(input.throughput());
        group.bench_function(format!("validate/{}", input.label), |b| {
            b.iter(|| nar::validate(black_box(nar), len).expect("valid NAR"));
        });
        if input.label == SMALL {
            group.bench_function(format!("parse_buf/{}", input.label), |b| {
                b.iter(|| {
                    nar::parse_buf(black_box(nar), len, &mut NullVisitor).expect("valid NAR")
                });
            });
        }
    }
    group.finish();
}

/// SHA-256 of the NAR alone: the floor under `nar_unpack`, which must hash every byte.
fn hash(c: &mut Criterion, inputs: &[Input]) {
    let mut group = c.benchmark_group("nar_hash");
    slow_group(&mut group);
    for input in inputs.iter().filter(|i| i.label == LARGE) {
        group.throughput(input.throughput());
        group.bench_function(format!("sha256/{}", input.label), |b| {
            b.iter(|| Sha256::digest(black_box(&input.nar[..])));
        });
    }
    group.finish();
}

/// A fresh, empty staging directory inside a temp dir that is removed when dropped.
fn staging(scratch: &Path) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir_in(scratch).expect("scratch dir");
    let staging = dir.path().join("s");
    std::fs::create_dir(&staging).expect("staging dir");
    (dir, staging)
}

/// What a cold fetch does after the network: SHA-256 + NarSize check, strict parse, one file
/// written per regular file, and the manifest. Creating and removing the scratch directory is
/// not timed.
fn unpack_to_disk(c: &mut Criterion, inputs: &[Input]) {
    let scratch = scratch_dir();
    let mut group = c.benchmark_group("nar_unpack");
    slow_group(&mut group);
    for input in inputs {
        let (nar, len) = (&input.nar[..], input.nar.len() as u64);
        group.throughput(input.throughput());
        group.bench_function(input.label, |b| {
            b.iter_batched(
                || staging(&scratch),
                |(dir, staging)| {
                    unpack(black_box(nar), &input.info, len, &staging).expect("unpack");
                    // Returned, so the tree is removed after the clock stops.
                    dir
                },
                // One tree on disk at a time (the large one is 128 MiB).
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

/// Reading one cached 16 MiB file (the large tree's first) back from the page cache the way the
/// daemon answers READs, unchecked (as manifests before version 3) and checked against its block
/// checksums: in 128 KiB reads at block-aligned offsets (the kernel's usual readahead), in
/// 128 KiB reads 4 KiB off the blocks (each touches a third block, read and checked whole), and
/// whole, as an open checks a file it hands to the kernel (`--passthrough`).
fn cached_read(c: &mut Criterion, inputs: &[Input]) {
    let Some(input) = inputs.iter().find(|i| i.label == LARGE) else { return };
    let (_dir, staging) = staging(&scratch_dir());
    let len = input.nar.len() as u64;
    let manifest = unpack(&input.nar[..], &input.info, len, &staging).expect("unpack");
    // In test mode the large files are small enough for the pack.
    let (id, size, packed, sums) = manifest
        .nodes
        .iter()
        .enumerate()
        .find_map(|(id, node)| match node {
            CachedNode::File { size, packed, sums, .. } => Some((id as u32, *size, *packed, sums)),
            _ => None,
        })
        .expect("the large tree has files");
    let open = |sums| FileContents::open(&staging, id, size, packed, sums).expect("open");
    let (unchecked, checked) = (open(None), open(sums.clone()));
    let read_all = |file: &FileContents, shift: u64| {
        let mut offset = shift;
        while offset < size {
            black_box(file.read_at(offset, 128 << 10).expect("read"));
            offset += 128 << 10;
        }
    };
    let mut group = c.benchmark_group("cached_read");
    group.sample_size(20).measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::BytesDecimal(size));
    group.bench_function("unchecked/128k_aligned", |b| b.iter(|| read_all(&unchecked, 0)));
    group.bench_function("checked/128k_aligned", |b| b.iter(|| read_all(&checked, 0)));
    group.bench_function("unchecked/128k_off_4k", |b| b.iter(|| read_all(&unchecked, 4096)));
    group.bench_function("checked/128k_off_4k", |b| b.iter(|| read_all(&checked, 4096)));
    group.bench_function("checked/whole_file", |b| b.iter(|| checked.check_all().expect("ok")));
    group.finish();
}

fn benches(c: &mut Criterion) {
    let inputs = inputs();
    parse(c, &inputs);
    hash(c, &inputs);
    unpack_to_disk(c, &inputs);
    cached_read(c, &inputs);
}

criterion_group!(nar_benches, benches);
criterion_main!(nar_benches);
