//! A scripted HTTP/1.1 server on 127.0.0.1:0 for loopback tests: each request gets the reply a
//! script chooses (a status, silence, a body cut short, a stall, a trickle), and every request
//! is recorded.
//! Test-only; written over `std::net` so it can break the protocol on purpose.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::sync::{Arc, AtomicBool, Mutex, Ordering, lock};

/// What the server does with one request.
#[derive(Clone, Debug)]
pub(crate) enum Reply {
    /// A complete response.
    Status { code: u16, headers: Vec<(String, String)>, body: Vec<u8> },
    /// Read the request, never answer; hold the connection until the client gives up.
    Silent,
    /// Announce `announced` body bytes, send `sent`, then close.
    CloseMidBody { announced: usize, sent: Vec<u8> },
    /// Announce `announced` body bytes, send headers only, then hold the connection.
    StallAfterHeaders { announced: usize },
    /// Announce `announced` body bytes and send all of `body`, which is longer.
    LongerThanAnnounced { announced: usize, body: Vec<u8> },
    /// Announce `announced` body bytes, send `sent`, then hold the connection silent.
    StallMidBody { announced: usize, sent: Vec<u8> },
    /// Announce `announced` body bytes, send `sent`, then reset the connection (RST, by closing
    /// with `SO_LINGER` 0).
    ResetMidBody { announced: usize, sent: Vec<u8> },
    /// A chunked body: `sent` as one chunk, then close without the final empty chunk.
    ChunkedWithoutEnd { sent: Vec<u8> },
    /// A complete 200 response whose body goes out one byte every `every` (until the client
    /// hangs up): never stalled, never done.
    Trickle { body: Vec<u8>, every: Duration },
}

impl Reply {
    pub(crate) fn ok(body: &[u8]) -> Self {
        Reply::Status { code: 200, headers: vec![], body: body.to_vec() }
    }

    pub(crate) fn status(code: u16) -> Self {
        Reply::Status { code, headers: vec![], body: vec![] }
    }

    pub(crate) fn with_header(code: u16, name: &str, value: &str) -> Self {
        Reply::Status { code, headers: vec![(name.into(), value.into())], body: vec![] }
    }
}

/// One request the server received.
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    pub(crate) path: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) at: Instant,
}

impl Seen {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

type Script = dyn Fn(&Seen, usize) -> Reply + Send + Sync;

/// The server; it stops accepting when dropped.
pub(crate) struct TestServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

impl TestServer {
    /// Starts a server answering request number `n` (0-based, over all paths) with
    /// `script(&request, n)`.
    pub(crate) fn start(script: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let script: Arc<Script> = Arc::new(script);
        let (seen2, stop2) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (seen, script, stop) = (seen2.clone(), script.clone(), stop2.clone());
                std::thread::spawn(move || serve(conn, &seen, &*script, &stop));
            }
        });
        Self { addr, seen, stop }
    }

    /// `http://127.0.0.1:PORT/cache`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}/cache", self.addr)
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests received so far.
    pub(crate) fn seen(&self) -> Vec<Seen> {
        lock(&self.seen).clone()
    }

    pub(crate) fn count(&self) -> usize {
        lock(&self.seen).len()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(100));
    }
}

/// Serves one connection: one request, one reply, then close (`Connection: close`).
fn serve(mut conn: TcpStream, seen: &Mutex<Vec<Seen>>, script: &Script, stop: &AtomicBool) {
    let Ok(read_half) = conn.try_clone() else { return };
    let mut reader = BufReader::new(read_half);
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 || stop.load(Ordering::SeqCst) {
        return;
    }
    let path = line.split(' ').nth(1).unwrap_or("").to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((n, v)) = h.trim_end().split_once(':') {
            headers.push((n.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let request = Seen { path, headers, at: Instant::now() };
    let n = {
        let mut all = lock(seen);
        all.push(request.clone());
        all.len() - 1
    };
    let head = |code: u16, extra: &[(String, String)], len: usize| {
        let mut h =
            format!("HTTP/1.1 {code} Scripted\r\nContent-Length: {len}\r\nConnection: close\r\n");
        for (name, value) in extra {
            h.push_str(&format!("{name}: {value}\r\n"));
        }
        h.push_str("\r\n");
        h
    };
    let hold = |mut reader: BufReader<TcpStream>| {
        // Until the client hangs up (its timeout) or the test ends.
        let _ = reader.get_mut().set_read_timeout(Some(Duration::from_secs(30)));
        let _ = reader.read(&mut [0u8; 1]);
    };
    match script(&request, n) {
        Reply::Status { code, headers, body } => {
            let _ = conn.write_all(head(code, &headers, body.len()).as_bytes());
            let _ = conn.write_all(&body);
        }
        Reply::Silent => hold(reader),
        Reply::CloseMidBody { announced, sent } => {
            let _ = conn.write_all(head(200, &[], announced).as_bytes());
            let _ = conn.write_all(&sent);
            let _ = conn.flush();
            // Give the client time to read the first part as its own chunk.
            std::thread::sleep(Duration::from_millis(200));
        }
        Reply::LongerThanAnnounced { announced, body } => {
            let _ = conn.write_all(head(200, &[], announced).as_bytes());
            let _ = conn.write_all(&body);
        }
        Reply::StallMidBody { announced, sent } => {
            let _ = conn.write_all(head(200, &[], announced).as_bytes());
            let _ = conn.write_all(&sent);
            hold(reader);
        }
        Reply::ResetMidBody { announced, sent } => {
            let _ = conn.write_all(head(200, &[], announced).as_bytes());
            let _ = conn.write_all(&sent);
            let _ = conn.flush();
            // Let the client read the first part before the reset.
            std::thread::sleep(Duration::from_millis(200));
            let linger = libc::linger { l_onoff: 1, l_linger: 0 };
            // SAFETY: a valid socket and a linger struct of the size passed.
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&conn),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&raw const linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
            }
            // Both handles must go for the close (and its RST) to happen.
            drop(reader);
            drop(conn);
        }
        Reply::ChunkedWithoutEnd { sent } => {
            let head =
                "HTTP/1.1 200 Scripted\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(format!("{:x}\r\n", sent.len()).as_bytes());
            let _ = conn.write_all(&sent);
            let _ = conn.write_all(b"\r\n");
            let _ = conn.flush();
            std::thread::sleep(Duration::from_millis(200));
        }
        Reply::StallAfterHeaders { announced } => {
            let _ = conn.write_all(head(200, &[], announced).as_bytes());
            hold(reader);
        }
        Reply::Trickle { body, every } => {
            let _ = conn.write_all(head(200, &[], body.len()).as_bytes());
            for byte in body {
                // The pace is the point of this reply, not a wait for something.
                std::thread::sleep(every);
                if stop.load(Ordering::SeqCst) || conn.write_all(&[byte]).is_err() {
                    break;
                }
            }
        }
    }
}

/// A gzip member holding `data` in stored (uncompressed) deflate blocks: what a proxy adding
/// `Content-Encoding: gzip` would send, built without a gzip library.
pub(crate) fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    let mut chunks = data.chunks(65_535).peekable();
    while let Some(chunk) = chunks.next() {
        out.push(u8::from(chunks.peek().is_none()));
        let len = chunk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// CRC-32 (IEEE), bit by bit: small inputs only.
pub(crate) fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}
