//! Tests of the file index: building from NARs, the round trip, and hostile indexes.

use std::io::Read;

use proptest::prelude::*;

use super::*;
use crate::nix::nar::{Node, parse};
use crate::nix::narinfo::{Compression, NarInfo};
use crate::nix::signature::{SigningKey, TrustedKeys};

const PATH: &[u8] = b"7rjj86a15146cq1d3qy068lml7n8ykzm-site-packages";

fn key() -> SigningKey {
    SigningKey::generate("index-test-1", [7; 32])
}

fn file(contents: &[u8], executable: bool) -> Node {
    Node::File { executable, contents: contents.to_vec() }
}

/// A tree with small files, an empty one, a large one, a symlink and nesting.
fn sample_tree() -> Node {
    Node::Directory(vec![
        (b"a-small".to_vec(), file(b"small one", false)),
        (b"b-small".to_vec(), file(b"small two", true)),
        (b"c-empty".to_vec(), file(b"", false)),
        (
            b"d-dir".to_vec(),
            Node::Directory(vec![
                (
                    b"big".to_vec(),
                    file(&(0..3000u32).map(|i| (i * 7) as u8).collect::<Vec<_>>(), false),
                ),
                (b"link".to_vec(), Node::Symlink { target: b"../a-small".to_vec() }),
            ]),
        ),
        (b"e-medium".to_vec(), file(&[5u8; 900], false)),
    ])
}

struct Built {
    nar: Vec<u8>,
    file: Vec<u8>,
    index: FileIndex,
}

fn build(tree: &Node, target: u64) -> Built {
    let nar = tree.to_nar();
    let mut file = Vec::new();
    let mut builder = IndexBuilder::new(&mut file, target, 3);
    parse(&nar[..], nar.len() as u64, &mut builder).unwrap();
    let out = builder.finish().unwrap();
    assert_eq!(out.nar_size, nar.len() as u64);
    let nar_hash = NarHash::from_digest(sha2::Sha256::digest(&nar).into());
    assert_eq!(out.nar_hash, nar_hash);
    assert_eq!(out.file_size, file.len() as u64);
    let index = out.into_index(StorePath::from_basename(PATH).unwrap());
    Built { nar, file, index }
}

use sha2::Digest;

fn narinfo_for(index: &FileIndex) -> NarInfo {
    NarInfo {
        store_path: index.store_path.clone(),
        url: format!("nar/{}.nar.zst", nixbase32::encode(index.nar_file.hash.digest())),
        compression: Compression::Zstd,
        nar_hash: index.nar_hash,
        nar_size: index.nar_size,
        file_hash: Some(index.nar_file.hash.to_string()),
        file_size: Some(index.nar_file.size),
        references: Vec::new(),
        deriver: None,
        signatures: Vec::new(),
        ca: None,
    }
}

fn trusted() -> TrustedKeys {
    TrustedKeys::new(vec![key().public()]).unwrap()
}

fn signed_bytes(index: &FileIndex) -> Vec<u8> {
    SignedIndex::sign(index.clone(), &key()).to_bytes()
}

/// What a reader does: [`SignedIndex::open`]; the tools' parse-then-verify must agree with it.
fn parse_and_verify(bytes: &[u8], info: &NarInfo) -> Result<FileIndex, IndexError> {
    let opened = SignedIndex::open(bytes, &trusted(), info).map(|(ix, _)| ix);
    let parsed = SignedIndex::parse(bytes).and_then(|s| s.verify(&trusted(), info));
    assert_eq!(opened.is_ok(), parsed.is_ok(), "{opened:?} vs {parsed:?}");
    opened
}

#[test]
fn the_reencoded_nar_decodes_to_the_nar_with_any_zstd_decoder() {
    let b = build(&sample_tree(), 1024);
    let mut out = Vec::new();
    zstd::stream::read::Decoder::new(&b.file[..]).unwrap().read_to_end(&mut out).unwrap();
    assert_eq!(out, b.nar);
    let table = crate::nix::seekable::parse_seek_table(&b.file).unwrap();
    assert_eq!(table.len(), b.index.frames.len());
    for (t, f) in table.iter().zip(&b.index.frames) {
        assert_eq!((u64::from(t.compressed), u64::from(t.decompressed)), (f.file_len, f.nar_len));
    }
}

#[test]
fn a_signed_index_round_trips_and_verifies_against_its_narinfo() {
    let b = build(&sample_tree(), 1024);
    let bytes = signed_bytes(&b.index);
    let signed = SignedIndex::parse(&bytes).unwrap();
    assert_eq!(signed.to_bytes(), bytes);
    let (ix, key_name) = signed.verify(&trusted(), &narinfo_for(&b.index)).unwrap();
    assert_eq!(ix, b.index);
    assert_eq!(key_name, "index-test-1");
    ix.check_tree(&b.nar[..]).unwrap();
}

#[test]
fn every_file_reads_back_from_its_frames_alone() {
    let b = build(&sample_tree(), 1024);
    let mut files = 0;
    for node in &b.index.nodes {
        let NodeKind::File(f) = &node.kind else { continue };
        let decoded: Vec<Vec<u8>> = b
            .index
            .frames_of(f)
            .map(|i| {
                let fr = &b.index.frames[i];
                let range = fr.file_offset as usize..(fr.file_offset + fr.file_len) as usize;
                b.index.decode_frame(i, &b.file[range]).unwrap()
            })
            .collect();
        let contents = b.index.file_contents(f, &decoded).unwrap();
        let at = f.nar_offset as usize;
        assert_eq!(contents, b.nar[at..at + f.size as usize]);
        files += 1;
    }
    assert_eq!(files, 5);
}

#[test]
fn frames_are_cut_at_file_boundaries() {
    let b = build(&sample_tree(), 1024);
    let ix = &b.index;
    let frames_of = |name: &[u8]| {
        let node = ix.nodes.iter().find(|n| n.parent.as_ref().is_some_and(|p| p.1 == name));
        let NodeKind::File(f) = &node.unwrap().kind else { panic!("not a file") };
        ix.frames_of(f)
    };
    // Small files share a frame; the empty file lies in none.
    assert_eq!(frames_of(b"a-small"), frames_of(b"b-small"));
    assert_eq!(frames_of(b"a-small").len(), 1);
    assert_eq!(frames_of(b"c-empty").len(), 0);
    // 3000 bytes with a 1024-byte target: split, each piece a frame of its own.
    let big = frames_of(b"big");
    assert_eq!(big.len(), 3);
    let start = &ix.frames[big.start];
    let NodeKind::File(bigf) = &ix.nodes[5].kind else { panic!("node 5 is big") };
    assert_eq!(start.nar_offset, bigf.nar_offset, "a large file starts a frame");
    // 900 bytes: fits no partly filled frame, so it lies in exactly one.
    assert_eq!(frames_of(b"e-medium").len(), 1);
}

fn resign(index: FileIndex) -> Vec<u8> {
    signed_bytes(&index)
}

#[test]
fn hostile_indexes_are_refused() {
    let b = build(&sample_tree(), 1024);
    let info = narinfo_for(&b.index);
    let good = signed_bytes(&b.index);

    let mut bad_sig = good.clone();
    // Magic, signature count, the signature's length, then `index-test-1:` and its base64.
    let in_base64 = MAGIC.len() + 2 + "index-test-1:".len() + 20;
    bad_sig[in_base64] ^= 0x01;
    let other_key = SigningKey::generate("someone-else-1", [9; 32]);
    let unknown = SignedIndex::sign(b.index.clone(), &other_key).to_bytes();
    let mut unsigned = MAGIC.to_vec();
    unsigned.push(0);
    unsigned.extend(encode_body(&b.index));
    let mut other_hash = info.clone();
    other_hash.nar_hash = NarHash::from_digest([1; 32]);
    let mut other_path = info.clone();
    other_path.store_path =
        StorePath::from_basename(b"0rjj86a15146cq1d3qy068lml7n8ykzm-site-packages").unwrap();
    let mut other_file = info.clone();
    other_file.file_hash = Some(NarHash::from_digest([2; 32]).to_string());
    let mut xz = info.clone();
    xz.compression = Compression::Xz;

    let mut overlap = b.index.clone();
    overlap.frames[1].nar_offset -= 1;
    let mut gap = b.index.clone();
    gap.frames[1].file_offset += 1;
    let mut past_end = b.index.clone();
    past_end.frames.last_mut().unwrap().nar_len += 1;
    let mut dotdot = b.index.clone();
    dotdot.nodes[1].parent = Some((0, b"..".to_vec()));
    let mut slash = b.index.clone();
    slash.nodes[1].parent = Some((0, b"a/b".to_vec()));
    let mut unsorted = b.index.clone();
    unsorted.nodes[2].parent = Some((0, b"a-aaaaa".to_vec()));
    let mut resized = b.index.clone();
    if let NodeKind::File(f) = &mut resized.nodes[1].kind {
        f.size += 8;
    }

    let cases: Vec<(&str, Vec<u8>, &NarInfo, &str)> = vec![
        ("bad_signature", bad_sig, &info, "does not verify"),
        ("unknown_key", unknown, &info, "no signature by a trusted key"),
        ("unsigned", unsigned, &info, "not signed"),
        ("nar_hash_differs", good.clone(), &other_hash, "NarHash"),
        ("store_path_differs", good.clone(), &other_path, "index is for"),
        ("nar_file_differs", good.clone(), &other_file, "FileHash"),
        ("compression_differs", good.clone(), &xz, "Compression"),
        ("overlapping_frames", resign(overlap), &info, "contiguous"),
        ("gap_between_frames", resign(gap), &info, "contiguous"),
        ("frames_past_the_nar", resign(past_end), &info, "frames end"),
        ("dotdot_name", resign(dotdot), &info, "bad name"),
        ("slash_in_name", resign(slash), &info, "bad name"),
        ("unsorted_names", resign(unsorted), &info, "not after its predecessor"),
        ("tree_larger_than_nar", resign(resized), &info, "NarSize"),
        ("empty", Vec::new(), &info, "bad magic"),
        // The body's digest changes, so the signature fails before the body is parsed.
        ("truncated", good[..good.len() / 2].to_vec(), &info, "does not verify"),
        ("trailing_bytes", [good.clone(), vec![0]].concat(), &info, "does not verify"),
        (
            "cut_in_the_signatures",
            good[..MAGIC.len() + 5].to_vec(),
            &info,
            "more than the index can hold",
        ),
    ];
    for (name, bytes, info, want) in cases {
        let err = parse_and_verify(&bytes, info).expect_err(name).to_string();
        assert!(err.contains(want), "case {name}: {err:?} lacks {want:?}");
    }
}

#[test]
fn the_structural_parser_names_truncation_and_trailing_bytes() {
    let b = build(&sample_tree(), 1024);
    let good = signed_bytes(&b.index);
    let cut = SignedIndex::parse(&good[..good.len() - 10]).unwrap_err().to_string();
    assert!(cut.contains("truncated"), "{cut}");
    // After the tree come sections, whose tags start at 1: a stray 0 is no section.
    let trailing = SignedIndex::parse(&[good, vec![0]].concat()).unwrap_err().to_string();
    assert!(trailing.contains("section tag 0 at byte"), "{trailing}");
}

#[test]
fn huge_counts_are_refused_before_allocating() {
    let b = build(&file(b"x", false), 1024);
    let body = encode_body(&b.index);
    // The frame count sits right after the fixed fields; claim 2^40 frames.
    let at = 1 + "/nix/store/".len() + PATH.len() + 32 + 1 + 1 + 1 + 32;
    assert_eq!(body[at], 1, "one frame");
    let mut huge = MAGIC.to_vec();
    huge.push(0);
    huge.extend_from_slice(&body[..at]);
    encode::put_varint(&mut huge, 1 << 40);
    huge.extend_from_slice(&body[at + 1..]);
    let err = SignedIndex::parse(&huge).unwrap_err().to_string();
    assert!(err.contains("frame count 1099511627776"), "{err}");
}

#[test]
fn a_tampered_frame_or_tree_is_caught() {
    let b = build(&sample_tree(), 1024);
    let fr = &b.index.frames[0];
    let mut bytes =
        b.file[fr.file_offset as usize..(fr.file_offset + fr.file_len) as usize].to_vec();
    bytes[fr.file_len as usize / 2] ^= 0x40;
    assert!(matches!(
        b.index.decode_frame(0, &bytes),
        Err(FileCheckError::FrameDigest { frame: 0 })
    ));

    // A trusted key signed a tree that is not the NAR's: the file digest differs.
    let mut lying = b.index.clone();
    if let NodeKind::File(f) = &mut lying.nodes[1].kind {
        f.digest[0] ^= 1;
    }
    assert!(matches!(lying.check_tree(&b.nar[..]), Err(FileCheckError::TreeDiffers { node: 1 })));
    let decoded = vec![b.index.decode_frame(0, &b.file[..fr.file_len as usize]).unwrap()];
    assert!(matches!(
        lying.file_contents(lying.file(1).unwrap(), &decoded),
        Err(FileCheckError::FileDigest { .. })
    ));
    let other = build(&file(b"not the same", false), 1024);
    assert!(matches!(b.index.check_tree(&other.nar[..]), Err(FileCheckError::NarHash { .. })));
}

#[test]
fn single_file_and_symlink_roots_index() {
    for tree in [file(b"#!/bin/sh\n", true), Node::Symlink { target: b"/nix/store/x".to_vec() }] {
        let b = build(&tree, 64);
        let bytes = signed_bytes(&b.index);
        let ix = parse_and_verify(&bytes, &narinfo_for(&b.index)).unwrap();
        assert_eq!(ix.nodes.len(), 1);
        ix.check_tree(&b.nar[..]).unwrap();
    }
}

proptest! {
    #[test]
    fn parsing_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = SignedIndex::parse(&bytes);
        let mut with_magic = MAGIC.to_vec();
        with_magic.extend_from_slice(&bytes);
        let _ = SignedIndex::parse(&with_magic);
    }

    #[test]
    fn parsing_a_mutated_index_never_panics(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let b = build(&sample_tree(), 1024);
        let mut bytes = signed_bytes(&b.index);
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        let _ = SignedIndex::parse(&bytes);
        let n = cut.index(bytes.len());
        let _ = SignedIndex::parse(&bytes[..n]);
    }
}

#[test]
fn a_compressed_index_opens_like_the_plain_one_and_a_hostile_one_is_refused() {
    let b = build(&sample_tree(), 1024);
    let info = narinfo_for(&b.index);
    let signed = SignedIndex::sign(b.index.clone(), &key());
    let compressed = signed.to_compressed_bytes();
    assert!(compressed.starts_with(&decode::ZSTD_MAGIC), "one zstd frame");
    assert_eq!(parse_and_verify(&compressed, &info).unwrap(), b.index);
    assert_eq!(parse_and_verify(&signed.to_bytes(), &info).unwrap(), b.index, "plain still read");

    // Not zstd after the magic, cut short, or claiming more than an index may hold.
    let mut garbage = decode::ZSTD_MAGIC.to_vec();
    garbage.extend_from_slice(&[0xff; 64]);
    let cut = &compressed[..compressed.len() - 3];
    let huge = zstd::bulk::compress(&vec![0; MAX_INDEX_BYTES + 1], 1).unwrap();
    for (name, bytes, want) in [
        ("garbage", &garbage[..], "does not decompress"),
        ("cut", cut, "does not decompress"),
        ("huge", &huge[..], "more than the"),
    ] {
        let err = parse_and_verify(bytes, &info).expect_err(name).to_string();
        assert!(err.contains(want), "case {name}: {err:?} lacks {want:?}");
    }
}

/// An index file whose body is `body`, signed with the test key as `storefs index` would.
fn signed_body(index: &FileIndex, body: &[u8]) -> Vec<u8> {
    let digest: [u8; 32] = sha2::Sha256::digest(body).into();
    let message = fingerprint(&index.store_path, &index.nar_hash, &digest);
    let mut out = MAGIC.to_vec();
    encode::put_signatures(&mut out, &[key().sign_message(message.as_bytes())]);
    out.extend_from_slice(body);
    out
}

/// A warm list of `(node, rank)` pairs.
fn warm_list(files: &[(NodeId, u64)]) -> Vec<WarmFile> {
    files.iter().map(|&(node, rank)| WarmFile { node, rank }).collect()
}

#[test]
fn a_warm_list_is_signed_round_trips_and_a_hostile_one_is_refused() {
    let b = build(&sample_tree(), 1024);
    let info = narinfo_for(&b.index);
    // Nodes: 0 root, 1 a-small, 2 b-small, 3 c-empty, 4 d-dir, 5 big, 6 link, 7 e-medium.
    let mut warm = b.index.clone();
    warm.warm = warm_list(&[(5, 0), (1, 7), (7, 300)]);
    let bytes = signed_bytes(&warm);
    assert_eq!(parse_and_verify(&bytes, &info).unwrap().warm, warm.warm);
    // It is part of the signed body: the index without it is another body.
    assert_ne!(encode_body(&warm), encode_body(&b.index));
    assert!(parse_and_verify(&signed_bytes(&b.index), &info).unwrap().warm.is_empty());

    // A later version's section is skipped as its length says; the warm list stays.
    let mut later = encode_body(&warm);
    later.extend_from_slice(&[9, 3, b'a', b'b', b'c']);
    assert_eq!(parse_and_verify(&signed_body(&warm, &later), &info).unwrap().warm, warm.warm);

    // Entries as (node, rank step) pairs.
    let with_warm = |entries: &[(u64, u64)]| {
        let mut payload = Vec::new();
        encode::put_varint(&mut payload, entries.len() as u64);
        for &(node, step) in entries {
            encode::put_varint(&mut payload, node);
            encode::put_varint(&mut payload, step);
        }
        let mut body = encode_body(&b.index);
        body.push(SECTION_WARM);
        encode::put_bytes(&mut body, &payload);
        body
    };
    let mut extra_byte = encode_body(&b.index);
    extra_byte.extend_from_slice(&[SECTION_WARM, 4, 1, 1, 0, 0]);
    let mut twice = encode_body(&warm);
    twice.extend_from_slice(&[SECTION_WARM, 3, 1, 2, 0]);
    let mut cut = encode_body(&b.index);
    cut.extend_from_slice(&[SECTION_WARM, 9, 1]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("a_directory", with_warm(&[(1, 0), (4, 1)]), "entry 1: node 4: not a regular file"),
        ("a_symlink", with_warm(&[(6, 0)]), "node 6: not a regular file"),
        ("no_such_node", with_warm(&[(1, 0), (99, 1)]), "node 99: no such node"),
        ("a_huge_node", with_warm(&[(u64::MAX, 0)]), "no such node"),
        ("listed_twice", with_warm(&[(5, 0), (1, 1), (5, 1)]), "entry 2: node 5: listed twice"),
        ("a_rank_repeated", with_warm(&[(5, 3), (1, 0)]), "entry 1: node 1: rank not above"),
        ("a_rank_overflowing", with_warm(&[(5, u64::MAX), (1, 1)]), "rank not above"),
        ("more_than_the_nodes", with_warm(&[(1, 1); 9]), "warm list 9"),
        ("bytes_after_the_list", extra_byte, "1 trailing bytes"),
        ("the_section_twice", twice, "section tag 1"),
        ("cut_short", cut, "more than the index can hold"),
    ];
    for (name, body, want) in cases {
        let err = parse_and_verify(&signed_body(&b.index, &body), &info).expect_err(name);
        let err = err.to_string();
        assert!(err.contains(want), "case {name}: {err:?} lacks {want:?}");
    }
}

#[test]
fn warm_paths_are_signed_round_trip_and_hostile_ones_are_refused() {
    let b = build(&sample_tree(), 1024);
    let info = narinfo_for(&b.index);
    let other = |c: char| {
        let base = format!("{}rjj86a15146cq1d3qy068lml7n8ykzm-other", c);
        StorePath::from_basename(base.as_bytes()).unwrap()
    };
    let mut with_paths = b.index.clone();
    with_paths.warm = warm_list(&[(5, 2)]);
    with_paths.warm_paths = vec![other('0'), other('1')];
    let opened = parse_and_verify(&signed_bytes(&with_paths), &info).unwrap();
    assert_eq!((opened.warm, opened.warm_paths), (with_paths.warm.clone(), with_paths.warm_paths));

    let with_section = |paths: &[&[u8]]| {
        let mut payload = Vec::new();
        encode::put_varint(&mut payload, paths.len() as u64);
        paths.iter().for_each(|p| encode::put_bytes(&mut payload, p));
        let mut body = encode_body(&b.index);
        body.push(SECTION_WARM_PATHS);
        encode::put_bytes(&mut body, &payload);
        body
    };
    let own = b.index.store_path.to_absolute_path();
    let one = other('0').to_absolute_path();
    let mut huge = encode_body(&b.index);
    huge.push(SECTION_WARM_PATHS);
    let mut payload = Vec::new();
    encode::put_varint(&mut payload, MAX_WARM_PATHS as u64 + 1);
    payload.resize(payload.len() + 2 * (MAX_WARM_PATHS + 1), 0);
    encode::put_bytes(&mut huge, &payload);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not_a_store_path", with_section(&[b"/etc/passwd"]), "warm path 0:"),
        ("a_dotdot_path", with_section(&[b"/nix/store/../etc"]), "warm path 0:"),
        (
            "its_own_path",
            with_section(&[one.as_bytes(), own.as_bytes()]),
            "warm path 1: the index's own",
        ),
        ("listed_twice", with_section(&[one.as_bytes(), one.as_bytes()]), "listed twice"),
        ("too_many", huge, "warm paths 4097"),
    ];
    for (name, body, want) in cases {
        let err = parse_and_verify(&signed_body(&b.index, &body), &info).expect_err(name);
        let err = err.to_string();
        assert!(err.contains(want), "case {name}: {err:?} lacks {want:?}");
    }
}
