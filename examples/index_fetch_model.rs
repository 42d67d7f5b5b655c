//! Models what file-level laziness would download for a job: given an indexed cache directory
//! and the files a job opened, the compressed bytes of the frames holding them, against the
//! bytes of those files and the NARs a path-level fetch takes. Used to pick the frame size
//! (docs/INDEX_FORMAT.md, "Measurements").
//!
//!     cargo run --release --example index_fetch_model -- CACHE_DIR READS_FILE
//!
//! READS_FILE lists absolute `/nix/store/...` paths of regular files, one per line (symlinks
//! resolved), e.g. from `strace -e openat`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::ExitCode;

use storefs::nix::file_index::{FileIndex, NodeKind, SignedIndex};
use storefs::nix::nar::NodeId;

/// One store path's index, with a name lookup.
struct Indexed {
    index: FileIndex,
    children: HashMap<(NodeId, Vec<u8>), NodeId>,
}

fn load(cache: &Path, hash: &str) -> Result<Indexed, String> {
    let file = cache.join(format!("{hash}.index"));
    let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    let index = SignedIndex::parse(&bytes).map_err(|e| format!("{}: {e}", file.display()))?.index;
    let children = index
        .nodes
        .iter()
        .enumerate()
        .filter_map(|(id, n)| n.parent.clone().map(|p| (p, id as NodeId)))
        .collect();
    Ok(Indexed { index, children })
}

fn run(cache: &Path, reads: &str) -> Result<(), String> {
    let mut indexes: BTreeMap<String, Indexed> = BTreeMap::new();
    let mut frames: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    let (mut files, mut read_bytes) = (0u64, 0u64);
    for line in reads.lines().filter(|l| !l.is_empty()) {
        let rest = line.strip_prefix("/nix/store/").ok_or(format!("not in the store: {line}"))?;
        let (base, rel) = rest.split_once('/').unwrap_or((rest, ""));
        let hash = base.get(..32).ok_or(format!("not a store path: {line}"))?.to_owned();
        if !indexes.contains_key(&hash) {
            indexes.insert(hash.clone(), load(cache, &hash)?);
        }
        let ix = &indexes[&hash];
        let mut node: NodeId = 0;
        for name in rel.split('/').filter(|n| !n.is_empty()) {
            node = *ix
                .children
                .get(&(node, name.as_bytes().to_vec()))
                .ok_or(format!("{line}: no such entry in the index"))?;
        }
        let NodeKind::File(f) = &ix.index.nodes[node as usize].kind else {
            return Err(format!("{line}: not a regular file in the index"));
        };
        files += 1;
        read_bytes += f.size;
        frames.entry(hash).or_default().extend(ix.index.frames_of(f));
    }
    let mut fetched = 0u64;
    let mut frame_count = 0usize;
    let mut whole_nars = 0u64;
    let mut index_bytes = 0u64;
    for (hash, set) in &frames {
        let ix = &indexes[hash].index;
        fetched += set.iter().map(|&i| ix.frames[i].file_len).sum::<u64>();
        frame_count += set.len();
        whole_nars += ix.nar_file.size;
        index_bytes +=
            std::fs::metadata(cache.join(format!("{hash}.index"))).map(|m| m.len()).unwrap_or(0);
    }
    println!(
        "files {files}, bytes read {read_bytes}; paths {}; frames {frame_count}, frame bytes \
         {fetched} ({:.2}x the bytes read); with their indexes {} ({:.2}x); whole NAR files \
         {whole_nars} ({:.2}x)",
        frames.len(),
        fetched as f64 / read_bytes.max(1) as f64,
        fetched + index_bytes,
        (fetched + index_bytes) as f64 / read_bytes.max(1) as f64,
        whole_nars as f64 / read_bytes.max(1) as f64
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, cache, reads] = args.as_slice() else {
        eprintln!("usage: index_fetch_model CACHE_DIR READS_FILE");
        return ExitCode::from(1);
    };
    let result = std::fs::read_to_string(reads)
        .map_err(|e| format!("{reads}: {e}"))
        .and_then(|text| run(Path::new(cache), &text));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("index_fetch_model: {e}");
            ExitCode::from(2)
        }
    }
}
