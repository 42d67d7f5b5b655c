//! Partial entries over in-memory upstreams: a path with a verified file index is published with
//! no NAR download and its files come by range, verified; hostile indexes (unknown key, another
//! NarHash, a tampered body) mean the whole NAR; a tampered frame fails only its files; the
//! files present survive a restart.

use std::time::Duration;

use sha2::{Digest, Sha256};

use super::tests::{Fixture, key, sp};
use super::*;
use crate::nix::file_index::{FileIndex, IndexBuilder, SignedIndex, WarmFile};
use crate::nix::hash::NarHash;
use crate::nix::nar::{Node as NarNode, parse};
use crate::nix::nixbase32;
use crate::nix::signature::SigningKey;
use crate::upstream::mock::MockUpstream;

/// A change made to an index before it is signed.
type Tamper = dyn FnOnce(&mut FileIndex);

fn index_key() -> SigningKey {
    SigningKey::generate("index-1", [9; 32])
}

/// A path whose two files lie in different frames (frames of 1 KiB), plus a symlink.
fn two_frames_tree() -> NarNode {
    let file = |byte: u8| NarNode::File { executable: false, contents: vec![byte; 3000] };
    NarNode::Directory(vec![
        (b"a".to_vec(), file(1)),
        (b"b".to_vec(), file(2)),
        (b"link".to_vec(), NarNode::Symlink { target: b"a".to_vec() }),
    ])
}

/// Publishes `tree` as `path` in `up` the way `storefs index` leaves a cache: a seekable zstd
/// NAR, a narinfo signed by `key()` naming it, and an index signed by `signer`, changed by
/// `tamper` before signing. Returns the index as published.
fn publish_indexed(
    up: &MockUpstream,
    path: &StorePath,
    tree: &NarNode,
    signer: &SigningKey,
    tamper: impl FnOnce(&mut FileIndex),
) -> FileIndex {
    let nar = tree.to_nar();
    let mut file = Vec::new();
    let mut builder = IndexBuilder::new(&mut file, 1024, 3);
    parse(&nar[..], nar.len() as u64, &mut builder).unwrap();
    let mut index = builder.finish().unwrap().into_index(path.clone());
    let text = format!(
        "StorePath: {}\nURL: nar/{}.nar.zst\nCompression: zstd\nFileHash: {}\nFileSize: {}\n\
         NarHash: {}\nNarSize: {}\nReferences: \n",
        path.to_absolute_path(),
        nixbase32::encode(index.nar_file.hash.digest()),
        index.nar_file.hash,
        index.nar_file.size,
        NarHash::from_digest(Sha256::digest(&nar).into()),
        nar.len(),
    );
    let mut info = NarInfo::parse(text.as_bytes()).unwrap();
    info.signatures.push(key().sign(&info));
    up.insert(info, file);
    tamper(&mut index);
    let bytes = SignedIndex::sign(index.clone(), signer).to_bytes();
    up.insert_index(&path.hash_part(), bytes);
    index
}

fn fixture() -> Fixture {
    let mut fx = Fixture::new(1);
    fx.config.index_keys = TrustedKeys::new(vec![index_key().public()]).unwrap();
    fx
}

fn requests(up: &MockUpstream) -> (usize, usize) {
    let ranges = up.range_requests.load(crate::sync::Ordering::SeqCst);
    (up.requests().1, ranges)
}

async fn read(
    cache: &Arc<NarCache>,
    entry: &Arc<Entry>,
    name: &[u8],
) -> Result<Vec<u8>, CacheError> {
    let id = entry.manifest.child(manifest::ROOT_NODE, name).unwrap();
    let holder = cache.fetch_file(entry, id).await?;
    Ok(holder.open_file(id).unwrap().read_at(0, u64::MAX).unwrap())
}

/// `d1/a` and `d2/b`: two files, neither the other's sibling.
fn two_dirs(a: NarNode, b: NarNode) -> NarNode {
    NarNode::Directory(vec![
        (b"d1".to_vec(), NarNode::Directory(vec![(b"a".to_vec(), a)])),
        (b"d2".to_vec(), NarNode::Directory(vec![(b"b".to_vec(), b)])),
    ])
}

/// `d1/a` and `d2/b` of `small` bytes each (1s and 2s), and `d3/c`, 1.2 MB of `noise(seed)`:
/// a path that stays under a quarter present, and too large to come alongside whole, while the
/// two small files are read. Nodes: 0 root, 1 d1, 2 d1/a, 3 d2, 4 d2/b, 5 d3, 6 d3/c.
fn three_dirs(small: usize, seed: u64) -> NarNode {
    let file = |byte: u8| NarNode::File { executable: false, contents: vec![byte; small] };
    let large = NarNode::File { executable: false, contents: noise(seed, 1_200_000) };
    NarNode::Directory(vec![
        (b"d1".to_vec(), NarNode::Directory(vec![(b"a".to_vec(), file(1))])),
        (b"d2".to_vec(), NarNode::Directory(vec![(b"b".to_vec(), file(2))])),
        (b"d3".to_vec(), NarNode::Directory(vec![(b"c".to_vec(), large)])),
    ])
}

/// The node of file `name` in directory `dir` of `entry`'s root.
fn in_dir(entry: &Entry, dir: &[u8], name: &[u8]) -> NodeId {
    let d = entry.manifest.child(manifest::ROOT_NODE, dir).unwrap();
    entry.manifest.child(d, name).unwrap()
}

/// A reader of file `id` of `entry`, on its own task; gives the file's bytes.
fn spawn_read(
    cache: &Arc<NarCache>,
    entry: &Arc<Entry>,
    id: NodeId,
) -> tokio::task::JoinHandle<Vec<u8>> {
    let (cache, entry) = (cache.clone(), entry.clone());
    tokio::spawn(async move {
        let holder = cache.fetch_file(&entry, id).await.unwrap();
        holder.open_file(id).unwrap().read_at(0, u64::MAX).unwrap()
    })
}

/// Holds every range request to `up` until permits are added.
fn hold_ranges(up: &MockUpstream) -> Arc<tokio::sync::Semaphore> {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    *up.range_gate.lock().unwrap() = Some(gate.clone());
    gate
}

#[tokio::test]
async fn a_verified_index_gives_the_tree_without_the_nar_and_files_by_range() {
    let fx = fixture();
    let path = sp('l', "lazy");
    publish_indexed(&fx.ups[0], &path, &two_frames_tree(), &index_key(), |_| {});
    let cache = fx.open();
    let entry = cache.get(&path).await.unwrap();
    assert!(entry.partial().is_some());
    assert_eq!(entry.manifest.nodes.len(), 4);
    assert_eq!(requests(&fx.ups[0]), (0, 0), "the tree needed no NAR bytes");
    assert_eq!(read(&cache, &entry, b"a").await.unwrap(), vec![1; 3000]);
    assert_eq!(requests(&fx.ups[0]).0, 0, "no whole NAR");
    assert!(requests(&fx.ups[0]).1 >= 1);
    assert_eq!(read(&cache, &entry, b"b").await.unwrap(), vec![2; 3000]);
    assert_eq!(CacheStats::get(&cache.stats.index_hits), 1);
    let used = cache.used_bytes();
    assert!(used >= entry.manifest.disk_bytes + 2 * 4096, "files counted in the quota: {used}");

    // Small files go to the entry's pack file, not a file each.
    let a = entry.manifest.child(manifest::ROOT_NODE, b"a").unwrap();
    assert!(entry.dir.join(layout::PACK_FILE).is_file());
    assert!(!entry.dir.join(unpack::file_name(a)).exists(), "no file of its own");

    // Recorded present in the background: wait for both records (32 bytes each, with their
    // offsets in the pack), then a restart keeps both files and sends no further request.
    let log = entry.dir.join(partial::PRESENT_FILE);
    wait_until(
        || std::fs::metadata(&log).map_or(0, |m| m.len()) >= 64,
        || "files not recorded present".to_owned(),
    )
    .await;
    let before = requests(&fx.ups[0]);
    drop(entry);
    let cache = fx.open();
    cache.wait_scanned().await;
    let entry = cache.get(&path).await.unwrap();
    assert_eq!(read(&cache, &entry, b"a").await.unwrap(), vec![1; 3000]);
    assert_eq!(read(&cache, &entry, b"b").await.unwrap(), vec![2; 3000]);
    assert_eq!(requests(&fx.ups[0]), before, "served from disk after the restart");
    assert_eq!(cache.used_bytes(), used, "the quota counts the same bytes after the restart");
    let report = cache.verify(Some(std::slice::from_ref(&path))).await;
    assert!(report.corrupt.is_empty(), "{:?}", report.corrupt);
}

#[tokio::test]
async fn an_untrusted_or_mismatched_index_means_the_whole_nar() {
    let stranger = SigningKey::generate("stranger-1", [5; 32]);
    let other_hash = NarHash::from_digest([3; 32]);
    let cases: [(&str, SigningKey, Box<Tamper>); 3] = [
        ("unknown key", stranger, Box::new(|_| {})),
        ("other NarHash", index_key(), Box::new(move |ix| ix.nar_hash = other_hash)),
        ("other size", index_key(), Box::new(|ix| ix.nar_size += 1)),
    ];
    for (i, (case, signer, tamper)) in cases.into_iter().enumerate() {
        let fx = fixture();
        let path = sp(['m', 'n', 'p'][i], "refused");
        publish_indexed(&fx.ups[0], &path, &two_frames_tree(), &signer, tamper);
        let cache = fx.open();
        let entry = cache.get(&path).await.unwrap();
        assert!(entry.partial().is_none(), "{case}: served path-level");
        assert_eq!(requests(&fx.ups[0]), (1, 0), "{case}: the whole NAR, no range");
        let id = entry.manifest.child(manifest::ROOT_NODE, b"b").unwrap();
        assert_eq!(entry.open_file(id).unwrap().read_at(0, u64::MAX).unwrap(), vec![2; 3000]);
        // Another NarSize no longer fits the tree: the body is refused as malformed.
        let refused = CacheStats::get(&cache.stats.index_refused_signature)
            + CacheStats::get(&cache.stats.index_refused_mismatch)
            + CacheStats::get(&cache.stats.index_refused_malformed);
        assert_eq!(refused, 1, "{case}");
    }
}

#[tokio::test]
async fn a_tampered_frame_fails_its_file_only() {
    let fx = fixture();
    let path = sp('q', "tampered");
    let index = publish_indexed(&fx.ups[0], &path, &two_frames_tree(), &index_key(), |_| {});
    let cache = fx.open();
    let entry = cache.get(&path).await.unwrap();
    let b = entry.manifest.child(manifest::ROOT_NODE, b"b").unwrap();
    let b_frames = index.frames_of(index.file(b).unwrap());
    let a_frames = index.frames_of(index.file(b - 1).unwrap());
    assert!(a_frames.clone().all(|f| !b_frames.contains(&f)), "a and b lie in other frames");
    let frame = &index.frames[b_frames.start];
    *fx.ups[0].flip_byte.lock().unwrap() = Some(frame.file_offset + frame.file_len / 2);
    assert!(matches!(read(&cache, &entry, b"b").await, Err(CacheError::Unavailable { .. })));
    assert!(entry.is_missing(b), "nothing of b stored");
    assert_eq!(read(&cache, &entry, b"a").await.unwrap(), vec![1; 3000]);
    assert!(CacheStats::get(&cache.stats.frame_failures) >= 1);
    // The cache sends good bytes again: b is fetched and verified then.
    *fx.ups[0].flip_byte.lock().unwrap() = None;
    assert_eq!(read(&cache, &entry, b"b").await.unwrap(), vec![2; 3000]);
}

/// Waits, polling for up to 10 s, until `done`; fails saying `what` if it never is.
async fn wait_until(done: impl Fn() -> bool, what: impl Fn() -> String) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{}", what());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `len` bytes that zstd cannot shrink, different for each `seed`.
pub(super) fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_of_one_entry_are_in_flight_at_once_and_readers_of_one_file_share_a_fetch() {
    let fx = fixture();
    let path = sp('p', "parallel");
    // Two files in two directories, each larger than the least read-ahead after a file, so
    // each read is its own batch.
    let (a, b) = (noise(1, 100_000), noise(2, 100_000));
    let file = |contents: &Vec<u8>| NarNode::File { executable: false, contents: contents.clone() };
    publish_indexed(&fx.ups[0], &path, &two_dirs(file(&a), file(&b)), &index_key(), |_| {});
    let gate = hold_ranges(&fx.ups[0]);
    let cache = fx.open();
    let entry = cache.get(&path).await.unwrap();
    let (ia, ib) = (in_dir(&entry, b"d1", b"a"), in_dir(&entry, b"d2", b"b"));
    let spawn_read = |id| spawn_read(&cache, &entry, id);
    let readers = [spawn_read(ia), spawn_read(ia), spawn_read(ib)];
    wait_until(
        || requests(&fx.ups[0]).1 >= 2,
        || "the second batch waited for the first".to_owned(),
    )
    .await;
    gate.add_permits(1000);
    let [ra1, ra2, rb] = readers;
    assert_eq!(ra1.await.unwrap(), a);
    assert_eq!(ra2.await.unwrap(), a);
    assert_eq!(rb.await.unwrap(), b);
    assert_eq!(requests(&fx.ups[0]), (0, 2), "one range per file: its two readers shared it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_batches_that_need_one_frame_fetch_it_once() {
    let fx = fixture();
    let path = sp('j', "one-frame");
    // Two small files in two directories, in one frame: two readers, two batches, one range.
    let file = |byte: u8| NarNode::File { executable: false, contents: vec![byte; 40] };
    let index =
        publish_indexed(&fx.ups[0], &path, &two_dirs(file(1), file(2)), &index_key(), |_| {});
    let gate = hold_ranges(&fx.ups[0]);
    let cache = fx.open();
    let entry = cache.get(&path).await.unwrap();
    let (ia, ib) = (in_dir(&entry, b"d1", b"a"), in_dir(&entry, b"d2", b"b"));
    let frames = |id| index.frames_of(index.file(id).unwrap());
    assert_eq!(frames(ia), frames(ib), "the fixture puts both files in one frame");
    let partial = entry.partial().unwrap();
    let spawn_read = |id| spawn_read(&cache, &entry, id);
    let first = spawn_read(ia);
    wait_until(|| requests(&fx.ups[0]).1 == 1, || "the first batch asked".to_owned()).await;
    let second = spawn_read(ib);
    // The second batch claims `d2/b` (it is no sibling of `d1/a`) and finds its frame taken.
    wait_until(
        || partial.claims.wait_for_any(&[ib]).is_some(),
        || "the second reader did not claim its file".to_owned(),
    )
    .await;
    gate.add_permits(1000);
    assert_eq!(first.await.unwrap(), vec![1; 40]);
    assert_eq!(second.await.unwrap(), vec![2; 40]);
    assert_eq!(requests(&fx.ups[0]), (0, 1), "one range for the frame both batches needed");
}

#[tokio::test]
async fn prefetch_completes_a_partial_entry() {
    let fx = fixture();
    let path = sp('r', "prefetched");
    publish_indexed(&fx.ups[0], &path, &two_frames_tree(), &index_key(), |_| {});
    let cache = fx.open();
    let entry = cache.get(&path).await.unwrap();
    assert_eq!(entry.partial().unwrap().progress(), (2, 0));
    let results = cache.prefetch(std::slice::from_ref(&path), false, 1, |_| {}).await;
    assert!(results.iter().all(|(_, r)| r.is_ok()), "{results:?}");
    assert_eq!(entry.partial().unwrap().progress(), (2, 2), "every file present");
    assert_eq!(requests(&fx.ups[0]).0, 0, "by range, not the whole NAR");
    for (name, byte) in [(&b"a"[..], 1), (&b"b"[..], 2)] {
        let id = entry.manifest.child(manifest::ROOT_NODE, name).unwrap();
        assert_eq!(entry.open_file(id).unwrap().read_at(0, u64::MAX).unwrap(), vec![byte; 3000]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_a_quarter_is_read_the_rest_comes_in_the_background_each_file_once() {
    let fx = fixture();
    let path = sp('f', "filled");
    // Eight files in eight directories, each larger than the least read-ahead after a file
    // and together more than a subtree that comes alongside a read: every read is a batch of
    // its own file, nothing read ahead.
    let files: Vec<Vec<u8>> = (0..8).map(|i| noise(10 + i, 200_000)).collect();
    let tree = NarNode::Directory(
        files
            .iter()
            .enumerate()
            .map(|(i, contents)| {
                let file = NarNode::File { executable: false, contents: contents.clone() };
                (format!("d{i}").into_bytes(), NarNode::Directory(vec![(b"f".to_vec(), file)]))
            })
            .collect(),
    );
    let index = publish_indexed(&fx.ups[0], &path, &tree, &index_key(), |_| {});
    let cache = fx.open();
    let entry = cache.get(&path).await.unwrap();
    let id_of = |i: usize| {
        let d = entry.manifest.child(manifest::ROOT_NODE, format!("d{i}").as_bytes()).unwrap();
        entry.manifest.child(d, b"f").unwrap()
    };
    let partial = entry.partial().unwrap();
    cache.fetch_file(&entry, id_of(5)).await.unwrap();
    assert_eq!(partial.progress(), (8, 1));
    assert!(!partial.fill_due(), "an eighth present: no fill");
    // A quarter present once this read's batch is in: it starts the fill, from this file on,
    // then from the start.
    let holder = cache.fetch_file(&entry, id_of(6)).await.unwrap();
    assert!(partial.fill_due(), "a quarter present");
    assert_eq!(holder.open_file(id_of(6)).unwrap().read_at(0, u64::MAX).unwrap(), files[6]);
    wait_until(|| partial.progress() == (8, 8), || format!("not filled: {:?}", partial.progress()))
        .await;
    for (i, want) in files.iter().enumerate() {
        assert_eq!(&entry.open_file(id_of(i)).unwrap().read_at(0, u64::MAX).unwrap(), want);
    }
    let frames: std::collections::BTreeSet<usize> =
        (0..8).flat_map(|i| index.frames_of(index.file(id_of(i)).unwrap())).collect();
    let once: u64 = frames.iter().map(|f| index.frames[*f].file_len).sum();
    assert_eq!(CacheStats::get(&cache.stats.range_bytes), once, "each frame fetched once");
    assert_eq!(CacheStats::get(&cache.stats.files_read_ahead), 6, "all but the two read");
    assert_eq!(requests(&fx.ups[0]).0, 0, "by range, not the whole NAR");
}

#[tokio::test]
async fn a_frame_shared_with_the_readers_batch_is_not_asked_for_again() {
    let fx = fixture();
    let path = sp('s', "shared-frame");
    // Two small files in two directories: one frame holds both, and neither is the other's
    // sibling, so the reader's batch is `d1/a` alone, and `d2/b`, whose bytes came with it, is
    // kept too (`ahead::bycatch`). A large third file keeps the path under a quarter present
    // (no fill) and too large to come alongside whole.
    let tree = three_dirs(40, 3);
    let index = publish_indexed(&fx.ups[0], &path, &tree, &index_key(), |_| {});
    let cache = fx.open();
    let entry = cache.get(&path).await.unwrap();
    let (ia, ib) = (in_dir(&entry, b"d1", b"a"), in_dir(&entry, b"d2", b"b"));
    let frames = |id| index.frames_of(index.file(id).unwrap());
    assert_eq!(frames(ia), frames(ib), "the fixture puts both files in one frame");
    cache.fetch_file(&entry, ia).await.unwrap();
    let partial = entry.partial().unwrap();
    let read_ahead = || CacheStats::get(&cache.stats.files_read_ahead);
    wait_until(|| read_ahead() == 1, || "d2/b was not kept before any reader".to_owned()).await;
    assert!(partial.has(ib));
    assert_eq!(entry.open_file(ib).unwrap().read_at(0, u64::MAX).unwrap(), vec![2; 40]);
    assert_eq!(requests(&fx.ups[0]), (0, 1), "one range: d2/b came in d1/a's frame");
}

#[tokio::test]
async fn a_symlink_in_place_of_the_pack_is_never_followed_and_its_files_come_again() {
    let fx = fixture();
    let path = sp('k', "pack-link");
    publish_indexed(&fx.ups[0], &path, &two_frames_tree(), &index_key(), |_| {});
    let cache = fx.open();
    let entry = cache.get(&path).await.unwrap();
    assert_eq!(read(&cache, &entry, b"a").await.unwrap(), vec![1; 3000]);
    let log = entry.dir.join(partial::PRESENT_FILE);
    wait_until(
        || std::fs::metadata(&log).map_or(0, |m| m.len()) >= 32,
        || "file not recorded present".to_owned(),
    )
    .await;
    // The pack replaced by a link to a file elsewhere that holds other bytes.
    let elsewhere = tempfile::tempdir().unwrap();
    let decoy = elsewhere.path().join("decoy");
    std::fs::write(&decoy, vec![9u8; 8192]).unwrap();
    let pack = entry.dir.join(layout::PACK_FILE);
    std::fs::remove_file(&pack).unwrap();
    std::os::unix::fs::symlink(&decoy, &pack).unwrap();
    let before = requests(&fx.ups[0]).1;
    drop(entry);
    let cache = fx.open();
    cache.wait_scanned().await;
    let entry = cache.get(&path).await.unwrap();
    assert_eq!(read(&cache, &entry, b"a").await.unwrap(), vec![1; 3000], "fetched again");
    assert!(requests(&fx.ups[0]).1 > before, "by range, not from the decoy");
    assert!(std::fs::symlink_metadata(&pack).unwrap().is_file(), "a plain pack again");
    assert_eq!(std::fs::read(&decoy).unwrap(), vec![9u8; 8192], "nothing written through it");
}

#[tokio::test]
async fn a_large_file_is_checked_and_written_as_its_frames_arrive_and_a_bad_frame_stores_nothing() {
    let mut fx = fixture();
    // Anything over 50 kB is streamed here (64 MiB by default).
    fx.config.stream_file_bytes = 50_000;
    let path = sp('v', "streamed");
    // 300 frames of 1 KiB, and a block of 64 KiB that ends inside a frame.
    let big = noise(7, 300_000);
    let tree = NarNode::Directory(vec![
        (b"big".to_vec(), NarNode::File { executable: true, contents: big.clone() }),
        (b"small".to_vec(), NarNode::File { executable: false, contents: vec![5; 100] }),
    ]);
    let index = publish_indexed(&fx.ups[0], &path, &tree, &index_key(), |_| {});
    let cache = fx.open();
    let entry = cache.get(&path).await.unwrap();
    let id = entry.manifest.child(manifest::ROOT_NODE, b"big").unwrap();
    let frames = index.frames_of(index.file(id).unwrap());
    assert!(frames.len() > 100, "{frames:?}");

    // A frame in the middle that does not match: an error, nothing of the file present.
    let bad = &index.frames[frames.start + frames.len() / 2];
    *fx.ups[0].flip_byte.lock().unwrap() = Some(bad.file_offset + bad.file_len / 2);
    assert!(matches!(read(&cache, &entry, b"big").await, Err(CacheError::Unavailable { .. })));
    assert!(entry.is_missing(id), "nothing of the file stored");
    assert!(!entry.dir.join(unpack::file_name(id)).exists());
    assert!(CacheStats::get(&cache.stats.frame_failures) >= 1);

    // Good bytes: the file is stored whole, every block's checksum right (reads check them),
    // executable, and no whole NAR was asked for.
    *fx.ups[0].flip_byte.lock().unwrap() = None;
    assert_eq!(read(&cache, &entry, b"big").await.unwrap(), big);
    let contents = entry.open_file(id).unwrap();
    assert_eq!(contents.read_at(65_000, 10_000).unwrap(), big[65_000..75_000].to_vec());
    let mode = std::fs::metadata(entry.dir.join(unpack::file_name(id))).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777, 0o555);
    assert_eq!(requests(&fx.ups[0]).0, 0, "by range, not the whole NAR");
    let report = cache.verify(Some(std::slice::from_ref(&path))).await;
    assert!(report.corrupt.is_empty(), "{:?}", report.corrupt);
}

#[tokio::test]
async fn the_warm_list_is_fetched_at_the_first_lookup_before_any_reader() {
    let fx = fixture();
    let path = sp('w', "warm");
    // Three files in three directories, the third large: no read-ahead rule joins them, so
    // only the warm list (`d2/b`, then `d1/a`) can bring the first two before a reader asks.
    let tree = three_dirs(3000, 5);
    let warm = vec![WarmFile { node: 4, rank: 10 }, WarmFile { node: 2, rank: 11 }];
    publish_indexed(&fx.ups[0], &path, &tree, &index_key(), |ix| ix.warm = warm);
    let cache = fx.open();
    let entry = cache.get(&path).await.unwrap();
    let partial = entry.partial().unwrap();
    let (ia, ib, ic) =
        (in_dir(&entry, b"d1", b"a"), in_dir(&entry, b"d2", b"b"), in_dir(&entry, b"d3", b"c"));
    let read_ahead = || CacheStats::get(&cache.stats.files_read_ahead);
    wait_until(|| read_ahead() == 2, || format!("warm files kept: {}", read_ahead())).await;
    assert!(partial.has(ia) && partial.has(ib) && !partial.has(ic));
    assert_eq!(entry.open_file(ib).unwrap().read_at(0, u64::MAX).unwrap(), vec![2; 3000]);
    let (whole, ranges) = requests(&fx.ups[0]);
    assert_eq!(whole, 0, "by range, not the whole NAR");
    // A reader of a warm file now asks for nothing.
    let holder = cache.fetch_file(&entry, ia).await.unwrap();
    assert_eq!(holder.open_file(ia).unwrap().read_at(0, u64::MAX).unwrap(), vec![1; 3000]);
    assert_eq!(requests(&fx.ups[0]).1, ranges, "no request for a file the warm list brought");
}

#[tokio::test]
async fn the_warm_paths_are_looked_up_when_the_path_is_published() {
    let mut fx = fixture();
    fx.config.prefetch_jobs = 2;
    let (a, b, c, d) = (sp('a', "app"), sp('b', "lib"), sp('c', "small"), sp('d', "unused"));
    // `a` names `b` (indexed) and `c` (not) as paths its learned run used; it references
    // neither, so only its warm paths can bring them. `d` is named by none.
    let warm_paths = vec![b.clone(), c.clone()];
    publish_indexed(&fx.ups[0], &a, &two_frames_tree(), &index_key(), |ix| {
        ix.warm_paths = warm_paths;
    });
    publish_indexed(&fx.ups[0], &b, &two_frames_tree(), &index_key(), |_| {});
    super::tests::publish(&fx.ups[0], &key(), &c, &super::tests::tree("small", 10));
    super::tests::publish(&fx.ups[0], &key(), &d, &super::tests::tree("unused", 10));
    let cache = fx.open();
    cache.get(&a).await.unwrap();
    let cached = |p: &StorePath| lock(&cache.catalog).contains(&p.hash_part());
    wait_until(|| cached(&b) && cached(&c), || "the warm paths were not looked up".to_owned())
        .await;
    let entry_b = cache.get(&b).await.unwrap();
    assert!(entry_b.partial().is_some(), "an indexed warm path comes by its index");
    assert_eq!(requests(&fx.ups[0]).1, 0, "metadata only: no file of a or b was fetched");
    assert!(!cached(&d));
}

#[tokio::test]
async fn a_warm_batch_far_ahead_of_the_readers_waits_until_they_come_near() {
    let fx = fixture();
    let path = sp('p', "paced");
    let tree = three_dirs(3000, 7);
    // Nodes: 2 d1/a, 4 d2/b. Both ranks lie beyond the window of a run not yet started. The
    // reader reads d2/b; d1/a comes before it in the NAR, so no read-ahead rule brings it.
    let far = ranged::WARM_WINDOW;
    let warm = vec![WarmFile { node: 4, rank: far + 10 }, WarmFile { node: 2, rank: far + 20 }];
    publish_indexed(&fx.ups[0], &path, &tree, &index_key(), |ix| ix.warm = warm);
    let cache = fx.open();
    let entry = cache.get(&path).await.unwrap();
    let (ia, ib) = (in_dir(&entry, b"d1", b"a"), in_dir(&entry, b"d2", b"b"));
    // A reader opens the file of rank `far + 10`: ranks up to `2 * far + 10` are released.
    let holder = cache.fetch_file(&entry, ib).await.unwrap();
    assert_eq!(holder.open_file(ib).unwrap().read_at(0, u64::MAX).unwrap(), vec![2; 3000]);
    let partial = entry.partial().unwrap();
    assert!(!partial.has(ia), "held back: no reader came within the window yet");
    cache.opened(&entry, ib);
    wait_until(|| partial.has(ia), || "d1/a was not released by the read of d2/b".to_owned()).await;
    assert_eq!(entry.open_file(ia).unwrap().read_at(0, u64::MAX).unwrap(), vec![1; 3000]);
}
