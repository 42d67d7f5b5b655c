//! A real nginx serving binary-cache directories on 127.0.0.1, run as a child
//! process that the test owns (`daemon off; master_process off;`).
//!
//! ```ignore
//! let nginx = Nginx::start(&fixtures().caches_dir(), "location /slow/ { limit_rate 2m; }");
//! let url = nginx.url("zstd"); // http://127.0.0.1:PORT/zstd
//! // ... point storefs at `url` ...
//! assert_eq!(nginx.count_requests(".narinfo"), 1);
//! ```
//!
//! Every file lives in a private temp dir (config, pid, access and error logs,
//! nginx's temp paths). The access log is unbuffered: nginx writes one line per
//! request when the request *finishes*, which may be a moment after the client has
//! read the response; use [`Nginx::wait_for_requests`] rather than asserting on
//! [`Nginx::count_requests`] right after a response when that matters.
//!
//! Dropping the [`Nginx`] stops the process (SIGTERM, then SIGKILL after a
//! deadline) and reaps it. As a safety net the process also gets
//! `PR_SET_PDEATHSIG(SIGKILL)` from a spawner thread that lives as long as the
//! test process, so a killed test binary leaves no nginx behind.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

/// How often a fresh port is tried when nginx loses the race for it.
const START_ATTEMPTS: usize = 10;
/// How long nginx may take to answer its readiness probe.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a SIGTERMed nginx may take to exit before it is SIGKILLed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Poll interval of the bounded wait loops (readiness, exit, log lines).
const POLL: Duration = Duration::from_millis(5);
/// Served with `access_log off`, so it never shows in [`Nginx::requests`].
const READY_PATH: &str = "/__storefs_nginx_ready";

/// A running nginx; see the module docs.
pub struct Nginx {
    /// The loopback port it listens on.
    pub port: u16,
    /// The (canonical) directory it serves as `/`.
    pub root: PathBuf,
    child: Option<Child>,
    bin: PathBuf,
    conf: PathBuf,
    access_log: PathBuf,
    error_log: PathBuf,
    stderr_log: PathBuf,
    token: String,
    // Declared last: removed only after `Drop::drop` has stopped the process.
    tmp: tempfile::TempDir,
}

/// One parsed access-log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessEntry {
    /// The request line, e.g. `GET /zstd/abc.narinfo HTTP/1.1` (nginx escapes
    /// `"`, `\` and control bytes as `\xHH`).
    pub request: String,
    /// Response status, e.g. 200, 206, 404.
    pub status: u16,
    /// Body bytes sent (for an interrupted response: what was sent).
    pub body_bytes: u64,
    /// The request's `Range` header, if any (`bytes=0-99`).
    pub range: Option<String>,
    /// nginx's connection serial number: equal for requests on one keep-alive connection.
    pub connection: u64,
    /// 1 for the first request on a connection, 2 for the next, ...
    pub connection_requests: u64,
}

impl AccessEntry {
    /// The request method (`GET`, `HEAD`, ...).
    pub fn method(&self) -> &str {
        self.request.split(' ').next().unwrap_or("")
    }

    /// The request target (`/zstd/abc.narinfo`).
    pub fn path(&self) -> &str {
        self.request.split(' ').nth(1).unwrap_or("")
    }
}

enum Startup {
    Ready,
    /// nginx exited because the port was taken: try another one.
    PortTaken(String),
    Failed(String),
}

impl Nginx {
    /// Serves `root` (a directory, typically with one subdirectory per cache) on
    /// `127.0.0.1:<free port>` with keep-alive, `Range` and sendfile.
    /// `extra_server_conf` is inserted verbatim inside the `server { }` block, e.g.
    /// `location /slow/ { limit_rate 2m; }` or `location /auth/ { auth_basic "x"; auth_basic_user_file /path; }`.
    ///
    /// Panics (with nginx's error log) if nginx cannot be started.
    pub fn start(root: &Path, extra_server_conf: &str) -> Nginx {
        let root =
            fs::canonicalize(root).unwrap_or_else(|e| panic!("nginx root {}: {e}", root.display()));
        assert!(root.is_dir(), "nginx root {} is not a directory", root.display());
        let bin = super::find_tool("nginx")
            .expect("nginx is not installed (see scripts/install-deps.sh)");
        let mut last = String::new();
        for attempt in 0..START_ATTEMPTS {
            let tmp = tempfile::Builder::new()
                .prefix("storefs-nginx-")
                .tempdir()
                .expect("temp dir for nginx");
            let port = free_port();
            let token = format!("storefs-nginx-{}-{port}-{attempt}", std::process::id());
            let dir = tmp.path();
            let conf = dir.join("nginx.conf");
            fs::write(&conf, config(dir, &root, port, &token, extra_server_conf))
                .expect("write nginx.conf");
            let mut nginx = Nginx {
                port,
                root: root.clone(),
                child: None,
                bin: bin.clone(),
                conf,
                access_log: dir.join("access.log"),
                error_log: dir.join("error.log"),
                stderr_log: dir.join("stderr.log"),
                token,
                tmp,
            };
            match nginx.spawn_and_wait() {
                Startup::Ready => return nginx,
                Startup::PortTaken(log) => last = log,
                Startup::Failed(log) => panic!("nginx failed to start:\n{log}"),
            }
        }
        panic!("nginx could not get a free port in {START_ATTEMPTS} attempts; last error:\n{last}");
    }

    /// `http://127.0.0.1:PORT/<subdir>` (no trailing slash; `url("")` is the server root).
    pub fn url(&self, subdir: &str) -> String {
        let subdir = subdir.trim_matches('/');
        if subdir.is_empty() {
            format!("http://127.0.0.1:{}", self.port)
        } else {
            format!("http://127.0.0.1:{}/{subdir}", self.port)
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Access-log request lines (`GET /zstd/abc.narinfo HTTP/1.1`), oldest first.
    pub fn requests(&self) -> Vec<String> {
        self.entries().into_iter().map(|e| e.request).collect()
    }

    /// Parsed access-log lines, oldest first.
    pub fn entries(&self) -> Vec<AccessEntry> {
        let text = match fs::read_to_string(&self.access_log) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => panic!("read {}: {e}", self.access_log.display()),
        };
        text.lines()
            .filter(|l| !l.is_empty())
            .map(|l| parse_entry(l).unwrap_or_else(|| panic!("unparsable access-log line: {l:?}")))
            .collect()
    }

    /// How many request lines contain `needle`.
    pub fn count_requests(&self, needle: &str) -> usize {
        self.requests().iter().filter(|r| r.contains(needle)).count()
    }

    /// Waits (bounded by `timeout`) until at least `at_least` request lines contain
    /// `needle`, and returns the count then (which may be lower on timeout).
    pub fn wait_for_requests(&self, needle: &str, at_least: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let n = self.count_requests(needle);
            if n >= at_least || Instant::now() >= deadline {
                return n;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Truncates the access log (nginx appends with O_APPEND, so it goes on at offset 0).
    pub fn clear_log(&self) {
        fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&self.access_log)
            .unwrap_or_else(|e| panic!("truncate {}: {e}", self.access_log.display()));
    }

    /// nginx's error log so far (useful in assertion messages).
    pub fn error_log(&self) -> String {
        fs::read_to_string(&self.error_log).unwrap_or_default()
    }

    /// The private directory holding nginx.conf and the logs.
    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// The process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Stops nginx now (as a dropped one would): the server "goes away". Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child);
        }
    }

    /// Starts nginx again on the same port with the same configuration (after
    /// [`Nginx::stop`]: the server "comes back"). Panics if it cannot.
    pub fn restart(&mut self) {
        self.stop();
        match self.spawn_and_wait() {
            Startup::Ready => {}
            Startup::PortTaken(log) | Startup::Failed(log) => {
                panic!("nginx failed to restart on port {}:\n{log}", self.port)
            }
        }
    }

    fn spawn_and_wait(&mut self) -> Startup {
        let stderr = fs::File::create(&self.stderr_log).expect("nginx stderr log");
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-p")
            .arg(self.tmp.path())
            .arg("-c")
            .arg(&self.conf)
            .arg("-e")
            .arg(&self.error_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = spawn_tied_to_process(cmd)
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.bin.display()));
        self.child = Some(child);

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let child = self.child.as_mut().expect("child");
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.child = None;
                    let log = format!(
                        "nginx exited with {status}\n--- stderr ---\n{}\n--- error.log ---\n{}",
                        fs::read_to_string(&self.stderr_log).unwrap_or_default(),
                        self.error_log()
                    );
                    return if log.contains("Address already in use") {
                        Startup::PortTaken(log)
                    } else {
                        Startup::Failed(log)
                    };
                }
                Ok(None) => {}
                Err(e) => return Startup::Failed(format!("waiting for nginx: {e}")),
            }
            if self.probe() {
                return Startup::Ready;
            }
            if Instant::now() >= deadline {
                self.stop();
                return Startup::Failed(format!(
                    "nginx did not answer on port {} within {READY_TIMEOUT:?}\n--- error.log ---\n{}",
                    self.port,
                    self.error_log()
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// True once *our* nginx answers the readiness location with our token (so a
    /// stranger that grabbed the port is not mistaken for it).
    fn probe(&self) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(&self.addr(), Duration::from_millis(500)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let req = format!("GET {READY_PATH} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        if s.write_all(req.as_bytes()).is_err() {
            return false;
        }
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp);
        let resp = String::from_utf8_lossy(&resp);
        resp.starts_with("HTTP/1.1 200") && resp.ends_with(&self.token)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

fn config(dir: &Path, root: &Path, port: u16, token: &str, extra: &str) -> String {
    let d = |name: &str| quote(&dir.join(name));
    let root = quote(root);
    let access_log = d("access.log");
    let tmp_client_body = d("client_body");
    let error_log = d("error.log");
    let tmp_fastcgi = d("fastcgi");
    let pid_file = d("nginx.pid");
    let tmp_proxy = d("proxy");
    let tmp_scgi = d("scgi");
    let tmp_uwsgi = d("uwsgi");
    // nginx drops privileges only with a master process; say so anyway when root,
    // so the config also works if someone switches master_process on.
    let user = if unsafe { libc::geteuid() } == 0 { "user root;" } else { "" };
    format!(
        r#"# generated by tests/common/nginx.rs
{user}
daemon off;
master_process off;
worker_processes 1;
pid {pid_file};
error_log {error_log} info;
events {{
    worker_connections 1024;
}}
http {{
    default_type application/octet-stream;
    types {{
        text/x-nix-narinfo narinfo;
        text/plain ls;
    }}
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 75s;
    keepalive_requests 100000;
    server_tokens off;
    client_body_temp_path {tmp_client_body};
    proxy_temp_path {tmp_proxy};
    fastcgi_temp_path {tmp_fastcgi};
    uwsgi_temp_path {tmp_uwsgi};
    scgi_temp_path {tmp_scgi};
    # One line per finished request, written at once (no buffer=).
    log_format storefs '$request\t$status\t$body_bytes_sent\t$http_range\t$connection\t$connection_requests';
    access_log {access_log} storefs;
    server {{
        listen 127.0.0.1:{port};
        server_name localhost;
        root {root};
        autoindex off;
        location = {READY_PATH} {{
            access_log off;
            default_type text/plain;
            return 200 "{token}";
        }}
        # --- extra_server_conf ---
{extra}
        # --- end extra_server_conf ---
    }}
}}
"#
    )
}

/// A path as an nginx double-quoted string.
fn quote(p: &Path) -> String {
    let s = p.to_str().unwrap_or_else(|| panic!("non-UTF-8 path {}", p.display()));
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn parse_entry(line: &str) -> Option<AccessEntry> {
    let mut f = line.split('\t');
    let request = f.next()?.to_string();
    let status = f.next()?.parse().ok()?;
    let body_bytes = f.next()?.parse().ok()?;
    let range = match f.next()? {
        "-" | "" => None,
        r => Some(r.to_string()),
    };
    let connection = f.next()?.parse().ok()?;
    let connection_requests = f.next()?.parse().ok()?;
    Some(AccessEntry { request, status, body_bytes, range, connection, connection_requests })
}

/// A port that was free a moment ago (nginx may still lose it; `start` retries).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind 127.0.0.1:0").port()
}

/// SIGTERM (nginx's fast shutdown: it does not wait for slow clients), then
/// SIGKILL after [`STOP_TIMEOUT`]; always reaps.
fn stop_child(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // The child is not reaped yet, so its pid cannot have been reused.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(_)) => return,
            Ok(None) => std::thread::sleep(POLL),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Spawns `cmd` from a thread that lives as long as the test process, with
/// `PR_SET_PDEATHSIG(SIGKILL)`: the signal fires when the *spawning thread* exits,
/// so spawning from the (short-lived) test thread itself would kill the server as
/// soon as that test's thread ends.
pub fn spawn_tied_to_process(mut cmd: Command) -> io::Result<Child> {
    type Request = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("storefs-test-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply_tx))
        .map_err(|_| io::Error::other("spawner thread is gone"))?;
    reply_rx.recv().map_err(|_| io::Error::other("spawner thread is gone"))?
}
