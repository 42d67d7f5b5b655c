//! In-memory binary caches for unit tests: a well-behaved one and knobs to make it misbehave.

use std::collections::HashMap;

use async_trait::async_trait;

use super::counters::{CountedBody, UpstreamCounters};
use super::{NarBody, Upstream, UpstreamError};
use crate::nix::cache_info::CacheInfo;
use crate::nix::narinfo::NarInfo;
use crate::sync::{Arc, AtomicUsize, Mutex, Ordering};

/// A binary cache held in memory: narinfos by hash part, NAR bodies by URL.
#[derive(Debug, Default)]
pub struct MockUpstream {
    name: String,
    narinfos: Mutex<HashMap<String, NarInfo>>,
    nars: Mutex<HashMap<String, Vec<u8>>>,
    /// When set, every narinfo request fails with this HTTP status.
    pub fail_status: Mutex<Option<u16>>,
    /// Number of narinfo requests seen.
    pub narinfo_requests: AtomicUsize,
    /// Number of NAR requests seen.
    pub nar_requests: AtomicUsize,
    /// When set, each NAR request waits for (and uses up) one permit before it is answered.
    pub nar_gate: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
    /// NAR requests not yet answered.
    pub nars_waiting: AtomicUsize,
    /// The most NAR requests ever unanswered at once.
    pub most_nars_waiting: AtomicUsize,
    /// File indexes by hash part.
    indexes: Mutex<HashMap<String, Vec<u8>>>,
    /// Number of index requests seen.
    pub index_requests: AtomicUsize,
    /// Number of byte-range requests seen.
    pub range_requests: AtomicUsize,
    /// When set, each byte-range request waits for one permit (not used up) before it is
    /// answered.
    pub range_gate: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
    /// When set, byte-range answers carry this byte of the NAR file flipped.
    pub flip_byte: Mutex<Option<u64>>,
    /// Counted like a real cache's.
    counters: Arc<UpstreamCounters>,
}

impl MockUpstream {
    /// An empty cache called `name` (shown as `mock://name`).
    pub fn new(name: &str) -> Self {
        Self { name: format!("mock://{name}"), ..Self::default() }
    }

    /// Publishes a narinfo and the NAR body its `URL:` names.
    pub fn insert(&self, info: NarInfo, body: Vec<u8>) {
        self.nars.lock().expect("mock lock").insert(info.url.clone(), body);
        let hash = info.store_path.hash_part();
        self.narinfos.lock().expect("mock lock").insert(hash, info);
    }

    /// Publishes `bytes` as the file index of `hash_part`.
    pub fn insert_index(&self, hash_part: &str, bytes: Vec<u8>) {
        self.indexes.lock().expect("mock lock").insert(hash_part.to_owned(), bytes);
    }

    /// Holds every NAR request until a permit is added to the returned gate.
    pub fn close_gate(&self) -> Arc<tokio::sync::Semaphore> {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        *self.nar_gate.lock().expect("mock lock") = Some(gate.clone());
        gate
    }

    /// Requests seen so far: (narinfo, nar).
    pub fn requests(&self) -> (usize, usize) {
        (self.narinfo_requests.load(Ordering::SeqCst), self.nar_requests.load(Ordering::SeqCst))
    }
}

#[async_trait]
impl Upstream for MockUpstream {
    fn url(&self) -> &str {
        &self.name
    }

    fn counters(&self) -> &UpstreamCounters {
        &self.counters
    }

    async fn cache_info(&self) -> Result<Option<CacheInfo>, UpstreamError> {
        self.counters.count(async { Ok(None) }).await
    }

    async fn narinfo(&self, hash_part: &str) -> Result<Option<NarInfo>, UpstreamError> {
        self.counters.count(async { self.answer_narinfo(hash_part) }).await
    }

    async fn nar(&self, nar_url: &str, max_bytes: u64) -> Result<NarBody, UpstreamError> {
        let body = self.counters.count(self.answer_nar(nar_url, max_bytes)).await?;
        Ok(CountedBody::wrap(body, self.counters.clone()))
    }

    async fn index(&self, hash_part: &str, _limit: u64) -> Result<Option<Vec<u8>>, UpstreamError> {
        self.index_requests.fetch_add(1, Ordering::SeqCst);
        Ok(self.indexes.lock().expect("mock lock").get(hash_part).cloned())
    }

    async fn range(
        &self,
        nar_url: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Vec<u8>, UpstreamError> {
        self.range_requests.fetch_add(1, Ordering::SeqCst);
        let gate = self.range_gate.lock().expect("mock lock").clone();
        if let Some(gate) = gate {
            drop(gate.acquire().await);
        }
        let mut file =
            self.nars.lock().expect("mock lock").get(nar_url).cloned().unwrap_or_default();
        if let Some(at) = *self.flip_byte.lock().expect("mock lock") {
            if let Some(b) = file.get_mut(at as usize) {
                *b ^= 0x40;
            }
        }
        let bad = |got| UpstreamError::BadRange {
            url: nar_url.to_owned(),
            start: range.start,
            end: range.end,
            got,
            status: 416,
        };
        let (start, end) = (range.start as usize, range.end as usize);
        file.get(start..end).map(<[u8]>::to_vec).ok_or_else(|| bad(file.len() as u64))
    }
}

/// The answers, uncounted.
impl MockUpstream {
    fn answer_narinfo(&self, hash_part: &str) -> Result<Option<NarInfo>, UpstreamError> {
        self.narinfo_requests.fetch_add(1, Ordering::SeqCst);
        if let Some(status) = *self.fail_status.lock().expect("mock lock") {
            return Err(UpstreamError::Status { url: self.name.clone(), status });
        }
        Ok(self.narinfos.lock().expect("mock lock").get(hash_part).cloned())
    }

    async fn answer_nar(&self, nar_url: &str, _max_bytes: u64) -> Result<NarBody, UpstreamError> {
        self.nar_requests.fetch_add(1, Ordering::SeqCst);
        let waiting = self.nars_waiting.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_nars_waiting.fetch_max(waiting, Ordering::SeqCst);
        let gate = self.nar_gate.lock().expect("mock lock").clone();
        if let Some(gate) = gate {
            gate.acquire().await.expect("gate never closes").forget();
        }
        self.nars_waiting.fetch_sub(1, Ordering::SeqCst);
        let body = self.nars.lock().expect("mock lock").get(nar_url).cloned();
        match body {
            Some(body) => Ok(Box::pin(std::io::Cursor::new(body))),
            None => Err(UpstreamError::Status { url: nar_url.to_owned(), status: 404 }),
        }
    }
}
