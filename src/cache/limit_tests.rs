//! The limits a reader meets: `--fetch-timeout` bounds every wait (a narinfo trickled a byte at
//! a time, from the real HTTP upstream), and `--uid-rate` keeps one uid's storm of names from
//! failing another uid's lookups; each failure is counted under its reason.

use std::time::{Duration, Instant};

use super::tests::{Fixture, key, publish, sp, tree};
use super::*;
use crate::nix::hash::NarHash;
use crate::upstream::Upstream;
use crate::upstream::http::{HttpOptions, HttpTimeouts, HttpUpstream, build_client};
use crate::upstream::testserver::{Reply, TestServer};

const MS: Duration = Duration::from_millis(1);
/// The first 20 letters of Nix's base32 alphabet: one hash part each.
const ALPHABET: &[u8] = b"0123456789abcdfghijk";

fn reason(result: &Result<Arc<Entry>, CacheError>) -> Option<FailureReason> {
    result.as_ref().err().and_then(FailureReason::of)
}

/// A narinfo trickled at one byte every 2 s never trips the stall timeout; the reader still
/// gets its error at the fetch timeout, and the fetch goes on for later readers to join.
#[tokio::test]
async fn a_trickled_narinfo_fails_the_reader_at_the_fetch_timeout() {
    let server = TestServer::start(|seen, _| {
        if seen.path.ends_with(".narinfo") {
            Reply::Trickle { body: vec![b'S'; 600], every: 2000 * MS }
        } else {
            Reply::status(404)
        }
    });
    let client = build_client(HttpTimeouts { connect: 1000 * MS, stall: 30_000 * MS }).unwrap();
    let http = HttpUpstream::new(&server.url(), client, HttpOptions::default()).unwrap();
    let mut fx = Fixture::new(0);
    fx.config.fetch_timeout = Some(3000 * MS);
    let dir = fx.config.dir.clone();
    let set = UpstreamSet::in_order(vec![Arc::new(http) as Arc<dyn Upstream>]);
    let keys = TrustedKeys::new(vec![key().public()]).unwrap();
    let cache = NarCache::open(CacheConfig { dir, ..fx.config.clone() }, set, keys).unwrap();
    let path = sp('z', "trickled");
    let start = Instant::now();
    let first = cache.get_as(&path, Some(1000)).await;
    let took = start.elapsed();
    assert_eq!(reason(&first), Some(FailureReason::Timeout), "{first:?}");
    assert!(first.unwrap_err().to_string().contains("--fetch-timeout"));
    assert!(took >= 2900 * MS && took < 6000 * MS, "EIO after {took:?}");
    assert_eq!(cache.snapshot().count("in_flight"), Some(1), "the fetch goes on");
    let again = cache.get_as(&path, None).await;
    assert_eq!(reason(&again), Some(FailureReason::Timeout));
    let narinfos = server.seen().iter().filter(|s| s.path.ends_with(".narinfo")).count();
    assert_eq!(narinfos, 1, "the second reader joined the running fetch");
    assert_eq!(cache.snapshot().count("lookup_failures_timeout"), Some(2));
    cache.close();
}

/// One uid looking up many absent names gets its burst of turns and is refused at once past
/// it (never queued); another uid's cold lookup is served meanwhile, and answers already known
/// (absent) cost no turn.
#[tokio::test]
async fn one_uids_storm_does_not_fail_another_uids_lookup() {
    let mut fx = Fixture::new(1);
    fx.config.uid_rate = crate::upstream::rate::RateLimit { per_second: 1, burst: 2 };
    // A long deadline: the refusals must not wait for it.
    fx.config.fetch_timeout = Some(30_000 * MS);
    let wanted = sp('w', "wanted");
    publish(&fx.ups[0], &key(), &wanted, &tree("w", 10));
    let cache = fx.open();
    let names: Vec<StorePath> =
        (0..50).map(|i| sp(ALPHABET[i % 20] as char, &format!("storm{i}"))).collect();
    let start = Instant::now();
    let storm = futures::future::join_all(names.iter().map(|n| cache.get_as(n, Some(1000))));
    let (storm, other) = tokio::join!(storm, cache.get_as(&wanted, Some(0)));
    assert!(start.elapsed() < 2000 * MS, "the storm took {:?}", start.elapsed());
    other.expect("another uid's cold path is served");
    let refused = storm.iter().filter(|r| reason(r) == Some(FailureReason::RateLimited)).count();
    let absent = storm.iter().filter(|r| matches!(r, Err(CacheError::NotFound(_)))).count();
    // 20 distinct hash parts, 2 or 3 names each: the burst's two turns were fetched (absent),
    // a later name of those two hash parts may have joined them, every other name was refused.
    assert!(
        (2..=6).contains(&absent) && absent + refused == 50,
        "absent {absent}, refused {refused}"
    );
    let limited = |e: &&CacheError| FailureReason::of(e) == Some(FailureReason::RateLimited);
    let refusals: Vec<&CacheError> =
        storm.iter().filter_map(|r| r.as_ref().err()).filter(limited).collect();
    assert!(refusals.iter().all(|e| e.is_uid_refusal()), "{refusals:?}");
    assert!(refusals[0].to_string().contains("uid 1000"), "{:?}", refusals[0]);
    let (narinfo_requests, _) = fx.ups[0].requests();
    assert_eq!(narinfo_requests, 3, "the burst's two turns and the other uid");
    // Known absent: no turn needed.
    let known = storm.iter().zip(&names).find(|(r, _)| matches!(r, Err(CacheError::NotFound(_))));
    assert!(matches!(
        cache.get_as(known.unwrap().1, Some(1000)).await,
        Err(CacheError::NotFound(_))
    ));
    assert_eq!(cache.snapshot().count("lookup_failures_rate_limited"), Some(refused as u64));
}

/// NAR-11: decompression bombs. A zstd body of a few kilobytes that inflates to 256 MiB (a
/// valid NAR followed by zeros, and a NAR whose one file claims 1 GiB) is stopped at the signed
/// NarSize: an error at once, nothing published.
#[tokio::test]
async fn a_decompression_bomb_is_stopped_at_the_signed_nar_size() {
    use sha2::{Digest, Sha256};
    use std::io::Write;
    let fx = Fixture::new(1);
    let small = tree("bomb", 100).to_nar();
    // 256 MiB of zeros after `prefix`, zstd-compressed in a stream (never held in memory).
    let bomb = |prefix: &[u8]| {
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        enc.write_all(prefix).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..256 {
            enc.write_all(&zeros).unwrap();
        }
        enc.finish().unwrap()
    };
    let mut huge_file = Vec::new();
    crate::nix::nar::writer::write_strs(
        &mut huge_file,
        &[b"nix-archive-1", b"(", b"type", b"regular", b"contents"],
    )
    .unwrap();
    crate::nix::nar::writer::write_raw_len(&mut huge_file, 1 << 30).unwrap();
    let cases = [("trailing zeros", 'p', bomb(&small)), ("a 1 GiB file", 'q', bomb(&huge_file))];
    for (case, seed, body) in cases {
        assert!(body.len() < 200_000, "{case}: a bomb ({} bytes)", body.len());
        let path = sp(seed, "bomb");
        let text = format!(
            "StorePath: {}\nURL: nar/{}.nar.zst\nCompression: zstd\nNarHash: {}\nNarSize: {}\n\
             References: \n",
            path.to_absolute_path(),
            path.hash_part(),
            NarHash::from_digest(Sha256::digest(&small).into()),
            small.len(),
        );
        let mut info = NarInfo::parse(text.as_bytes()).unwrap();
        info.signatures.push(key().sign(&info));
        fx.ups[0].insert(info, body);
    }
    let cache = fx.open();
    for (case, seed) in [("trailing zeros", 'p'), ("a 1 GiB file", 'q')] {
        let start = Instant::now();
        let err = cache.get(&sp(seed, "bomb")).await.unwrap_err();
        assert!(start.elapsed() < 2000 * MS, "{case}: stopped at once: {:?}", start.elapsed());
        assert!(matches!(err, CacheError::Unavailable { .. }), "{case}: {err}");
    }
    assert!(cache.entries().is_empty(), "nothing published");
}
