//! NAR throughput from memory: strict parse only, and verify + unpack to disk (what a cold read
//! costs after the network). Prints the median of several runs in MB/s.
//!
//! cargo bench --bench nar_unpack

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use storefs::cache::unpack::unpack;
use storefs::nix::hash::NarHash;
use storefs::nix::nar::{self, Node};
use storefs::nix::narinfo::NarInfo;

const RUNS: usize = 7;

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

fn narinfo_for(nar: &[u8]) -> NarInfo {
    let text = format!(
        "StorePath: /nix/store/00000000000000000000000000000000-bench\nURL: nar/x.nar\n\
         Compression: none\nNarHash: {}\nNarSize: {}\nReferences: \n",
        NarHash::from_digest(Sha256::digest(nar).into()),
        nar.len()
    );
    NarInfo::parse(text.as_bytes()).expect("bench narinfo parses")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn report(what: &str, bytes: usize, times: Vec<Duration>) {
    let t = median(times);
    let mbps = bytes as f64 / t.as_secs_f64() / 1e6;
    println!("{what:<44} {:>8.1} MB/s  (median of {RUNS}, {:.1} MB)", mbps, bytes as f64 / 1e6);
}

fn main() {
    let scratch = std::env::var_os("STOREFS_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    for (label, t) in [
        ("large files (8 x 16 MB)", tree(8, 16 << 20, 0)),
        ("many small files (20,000 x ~550 B)", tree(0, 0, 20_000)),
    ] {
        let bytes = t.to_nar();
        let info = narinfo_for(&bytes);
        let parse: Vec<_> = (0..RUNS)
            .map(|_| {
                let start = Instant::now();
                nar::validate(&bytes[..], bytes.len() as u64).expect("valid NAR");
                start.elapsed()
            })
            .collect();
        report(&format!("parse, {label}"), bytes.len(), parse);
        let unpacked: Vec<_> = (0..RUNS)
            .map(|_| {
                let dir = tempfile::tempdir_in(&scratch).expect("scratch dir");
                let staging = dir.path().join("s");
                std::fs::create_dir(&staging).expect("staging dir");
                let start = Instant::now();
                unpack(&bytes[..], &info, bytes.len() as u64, &staging).expect("unpack");
                start.elapsed()
            })
            .collect();
        report(&format!("hash + parse + unpack, {label}"), bytes.len(), unpacked);
    }
}
