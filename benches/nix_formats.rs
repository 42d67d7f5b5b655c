//! Criterion benches for the small Nix formats on every cold lookup: narinfo parse and signature
//! check, nixbase32 of a 32-byte hash, and store path parsing. Per-operation times (and MB/s for
//! narinfo parse).
//!
//!     cargo bench --bench nix_formats
//!     cargo bench --bench nix_formats -- narinfo      # a filter (a regex on the ids)
//!
//! Under `cargo test --benches` (or `--all-targets`) criterion runs every bench once as a smoke
//! test.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sha2::{Digest, Sha256};
use storefs::nix::hash::{NarHash, SHA256_SIZE};
use storefs::nix::narinfo::NarInfo;
use storefs::nix::nixbase32;
use storefs::nix::signature::{SigningKey, TrustedKeys};
use storefs::nix::store_path::{DIGEST_SIZE, StorePath};

/// Names of the path and its references, as in a small nixpkgs closure (the path itself is one
/// of its references, as Nix records for most packages).
const NAMES: [&str; 10] = [
    "python3-3.12.9",
    "glibc-2.40-66",
    "gcc-14.2.1.20250322-lib",
    "bash-5.2p37",
    "openssl-3.4.1",
    "zlib-1.3.1",
    "libffi-3.4.7",
    "ncurses-6.5",
    "readline-8.2p13",
    "xz-5.6.4",
];

/// A deterministic basename `<nixbase32 of a digest>-<name>`.
fn basename(name: &str) -> String {
    let digest: [u8; DIGEST_SIZE] =
        Sha256::digest(name.as_bytes())[..DIGEST_SIZE].try_into().expect("20 of 32 bytes");
    format!("{}-{name}", nixbase32::encode(&digest))
}

fn sha256(seed: &str) -> [u8; SHA256_SIZE] {
    Sha256::digest(seed.as_bytes()).into()
}

/// A narinfo shaped like one from cache.nixos.org (xz, FileHash, 10 references, a deriver, one
/// signature), about 1 KB, and the key that signed it.
fn signed_narinfo() -> (String, TrustedKeys) {
    let references: Vec<String> = NAMES.iter().map(|n| basename(n)).collect();
    let file_hash = nixbase32::encode(&sha256("file"));
    let text = format!(
        "StorePath: /nix/store/{}\nURL: nar/{file_hash}.nar.xz\nCompression: xz\n\
         FileHash: sha256:{file_hash}\nFileSize: 21374816\nNarHash: {}\nNarSize: 114531016\n\
         References: {}\nDeriver: {}\n",
        references[0],
        NarHash::from_digest(sha256("nar")),
        references.join(" "),
        basename("python3-3.12.9.drv"),
    );
    let mut info = NarInfo::parse(text.as_bytes()).expect("bench narinfo parses");
    let key = SigningKey::generate("cache.example.org-1", [7; 32]);
    info.signatures.push(key.sign(&info));
    let keys = TrustedKeys::new(vec![key.public()]).expect("one key");
    (info.to_string(), keys)
}

fn narinfo(c: &mut Criterion) {
    let (text, keys) = signed_narinfo();
    let info = NarInfo::parse(text.as_bytes()).expect("signed narinfo parses");
    assert_eq!(info.references.len(), NAMES.len());
    let mut group = c.benchmark_group("narinfo");
    group.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2));
    group.throughput(Throughput::BytesDecimal(text.len() as u64));
    group.bench_function("parse", |b| {
        b.iter(|| NarInfo::parse(black_box(text.as_bytes())).expect("parses"));
    });
    group.finish();

    let mut group = c.benchmark_group("narinfo_signature");
    group.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2));
    group.bench_function("fingerprint", |b| b.iter(|| black_box(&info).fingerprint()));
    // What the daemon does per narinfo: the fingerprint, then one ed25519 verification.
    group.bench_function("verify", |b| {
        b.iter(|| keys.verify(black_box(&info)).expect("signature verifies"));
    });
    group.finish();
}

fn nixbase32_hash(c: &mut Criterion) {
    let digest = sha256("nixbase32");
    let encoded = nixbase32::encode(&digest);
    let mut group = c.benchmark_group("nixbase32");
    group.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2));
    group.bench_function("encode_32_bytes", |b| b.iter(|| nixbase32::encode(black_box(&digest))));
    group.bench_function("decode_32_bytes", |b| {
        b.iter(|| nixbase32::decode_fixed::<SHA256_SIZE>(black_box(encoded.as_bytes())))
    });
    group.finish();
}

fn store_path(c: &mut Criterion) {
    let base = basename("python3-3.12.9");
    let absolute = format!("/nix/store/{base}");
    let mut group = c.benchmark_group("store_path");
    group.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2));
    group.bench_function("from_basename", |b| {
        b.iter(|| StorePath::from_basename(black_box(base.as_bytes())).expect("valid"));
    });
    group.bench_function("from_absolute_path", |b| {
        b.iter(|| StorePath::from_absolute_path(black_box(absolute.as_bytes())).expect("valid"));
    });
    group.finish();
}

criterion_group!(formats, narinfo, nixbase32_hash, store_path);
criterion_main!(formats);
