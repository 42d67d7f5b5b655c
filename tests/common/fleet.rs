//! A fleet on one machine: hosts as network namespaces on one bridge ([`Lan`]), and the shipped
//! proxy configurations of `contrib/fleet/` run as a real nginx or squid ([`Proxy`]).
//!
//! ```ignore
//! let lan = Lan::new(4);                                   // 10.214.X.0/24, gateway .1
//! let origin = Nginx::start(&fx.cache_dir("zstd"), &lan.listen_directive(origin_port));
//! let proxy = Proxy::start(ProxyKind::Nginx, &lan, &format!("http://{}:{origin_port}/", lan.gateway()));
//! let d = Daemon::start_in_netns(dir, &daemon_args(&[proxy.url()], key, &[]), &lan.netns(0));
//! ```
//!
//! Only addresses of the bridge's own /24 are used: the proxies and the origin listen on the
//! gateway address, each namespace has one address on the bridge and no default route.

use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::nginx::spawn_tied_to_process;

/// The second octet of every fleet network (scripts/bench.sh uses 10.213).
const NET_OCTET: u8 = 214;
/// How long a proxy may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// The shipped configurations.
const CONTRIB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/fleet");

/// A bridge with one network namespace per host; dropping it removes them all.
#[derive(Debug)]
pub struct Lan {
    /// Third octet of the /24.
    subnet: u8,
    bridge: String,
    hosts: Vec<String>,
}

impl Lan {
    /// A fresh /24 (the first whose bridge name is free) with `hosts` namespaces on it.
    /// Panics, naming the command, if the network cannot be built.
    pub fn new(hosts: usize) -> Lan {
        assert!(hosts <= 200, "a Lan holds at most 200 hosts, not {hosts}");
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let base = std::process::id() % 200;
        for _ in 0..200 {
            let subnet = (20 + (base + NEXT.fetch_add(1, Ordering::Relaxed)) % 200) as u8;
            let bridge = format!("sflb{subnet}");
            // Creating the bridge claims the subnet: a concurrent claimant fails here.
            let claimed = Command::new("ip")
                .args(["link", "add", &bridge, "type", "bridge"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !claimed || subnet_in_use(subnet) {
                if claimed {
                    let _ = Command::new("ip").args(["link", "del", &bridge]).status();
                }
                continue;
            }
            let mut lan = Lan { subnet, bridge, hosts: Vec::new() };
            lan.build(hosts);
            return lan;
        }
        panic!("no free 10.{NET_OCTET}.X.0/24 for a fleet network");
    }

    fn build(&mut self, hosts: usize) {
        let gateway = format!("{}/24", self.gateway());
        ip(&["addr", "add", &gateway, "dev", &self.bridge]);
        ip(&["link", "set", &self.bridge, "up"]);
        for i in 0..hosts {
            let ns = format!("storefs-fleet-{}-{i}", self.subnet);
            let (host_end, ns_end) =
                (format!("sfl{}v{i}", self.subnet), format!("sfl{}p{i}", self.subnet));
            ip(&["netns", "add", &ns]);
            self.hosts.push(ns.clone());
            ip(&["link", "add", &host_end, "type", "veth", "peer", "name", &ns_end, "netns", &ns]);
            ip(&["link", "set", &host_end, "master", &self.bridge, "up"]);
            let addr = format!("{}/24", self.host_addr(i));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", &ns_end]);
            ip(&["-n", &ns, "link", "set", &ns_end, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
    }

    /// The bridge's address, where proxies and the origin listen.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, NET_OCTET, self.subnet, 1)
    }

    /// Host `i`'s address.
    pub fn host_addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, NET_OCTET, self.subnet, 10 + i as u8)
    }

    /// The network, `10.214.X.0/24`.
    pub fn cidr(&self) -> String {
        format!("10.{NET_OCTET}.{}.0/24", self.subnet)
    }

    /// How many hosts there are.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Host `i`'s network namespace file (for [`super::daemon::Daemon::start_in_netns`]).
    pub fn netns(&self, i: usize) -> PathBuf {
        Path::new("/run/netns").join(&self.hosts[i])
    }

    /// A port free on the gateway address a moment ago.
    pub fn free_port(&self) -> u16 {
        TcpListener::bind(SocketAddrV4::new(self.gateway(), 0))
            .and_then(|l| l.local_addr())
            .unwrap_or_else(|e| panic!("bind {}:0: {e}", self.gateway()))
            .port()
    }

    /// `listen GATEWAY:PORT;`, for [`super::Nginx::start`]'s extra server configuration.
    pub fn listen_directive(&self, port: u16) -> String {
        format!("listen {}:{port};", self.gateway())
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth pair, and with it the other end.
        for ns in &self.hosts {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip (package iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

fn subnet_in_use(subnet: u8) -> bool {
    let out = Command::new("ip").args(["-o", "-4", "addr", "show"]).output().expect("ip addr");
    String::from_utf8_lossy(&out.stdout).contains(&format!(" 10.{NET_OCTET}.{subnet}."))
}

/// Which shipped configuration a [`Proxy`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyKind {
    /// `contrib/fleet/nginx.conf` (proxy_cache with proxy_cache_lock).
    Nginx,
    /// `contrib/fleet/squid.conf` (Debian's squid, collapsed_forwarding).
    Squid,
}

impl ProxyKind {
    /// The program it needs (for [`super::require`]).
    pub fn program(self) -> &'static str {
        match self {
            ProxyKind::Nginx => "nginx",
            ProxyKind::Squid => "squid",
        }
    }

    /// The shipped configuration file it runs.
    pub fn config_file(self) -> PathBuf {
        Path::new(CONTRIB).join(format!("{}.conf", self.program()))
    }
}

/// A caching proxy on the gateway address, running the shipped configuration with its
/// placeholders filled in. Dropping it kills it.
pub struct Proxy {
    /// Which configuration it runs.
    pub kind: ProxyKind,
    port: u16,
    gateway: Ipv4Addr,
    child: Option<Child>,
    access_log: PathBuf,
    // Declared last: removed only after the process is gone.
    dir: tempfile::TempDir,
}

impl Proxy {
    /// Starts `kind` in front of `origin` (`http://ADDR:PORT/`, the cache at the server root),
    /// serving the hosts of `lan` on a free port of its gateway. Panics with the proxy's log if
    /// it does not start.
    pub fn start(kind: ProxyKind, lan: &Lan, origin: &str) -> Proxy {
        let dir = tempfile::Builder::new().prefix("storefs-proxy-").tempdir().expect("temp dir");
        let port = lan.free_port();
        let listen = format!("{}:{port}", lan.gateway());
        let cidr = lan.cidr();
        let mut proxy = Proxy {
            kind,
            port,
            gateway: lan.gateway(),
            child: None,
            access_log: PathBuf::new(),
            dir,
        };
        let d = proxy.dir.path().to_path_buf();
        let template = kind.config_file();
        let template = fs::read_to_string(&template)
            .unwrap_or_else(|e| panic!("read {}: {e}", template.display()));
        let path_of = |name: &str| d.join(name).to_str().expect("UTF-8 temp dir").to_owned();
        let mut cmd = match kind {
            ProxyKind::Nginx => {
                proxy.access_log = d.join("access.log");
                let snippet = render(
                    &template,
                    &[
                        ("CACHE_DIR", &path_of("cache")),
                        ("MAX_SIZE", "1g"),
                        ("ACCESS_LOG", &path_of("access.log")),
                        ("LISTEN", &listen),
                        ("CLIENTS", &cidr),
                        ("ORIGIN", origin),
                    ],
                );
                fs::write(d.join("storefs-proxy.conf"), snippet).expect("write nginx snippet");
                fs::write(d.join("nginx.conf"), nginx_main_config(&d)).expect("write nginx.conf");
                let bin = super::find_tool("nginx").expect("nginx is not installed");
                let mut cmd = Command::new(bin);
                cmd.arg("-p").arg(&d).arg("-c").arg(d.join("nginx.conf"));
                cmd.arg("-e").arg(d.join("error.log"));
                cmd
            }
            ProxyKind::Squid => {
                let origin_url = reqwest::Url::parse(origin)
                    .unwrap_or_else(|e| panic!("origin URL {origin:?}: {e}"));
                assert_eq!(origin_url.path(), "/", "squid's origin must serve at its root");
                let host = origin_url.host_str().expect("origin host").to_owned();
                let origin_port = origin_url.port_or_known_default().expect("origin port");
                fs::create_dir_all(d.join("cache")).expect("squid cache dir");
                proxy.access_log = d.join("access.log");
                let conf = render(
                    &template,
                    &[
                        ("LISTEN", &listen),
                        ("CLIENTS", &cidr),
                        ("ORIGIN_HOST", &host),
                        ("ORIGIN_PORT", &origin_port.to_string()),
                        ("CACHE_DIR", &path_of("cache")),
                        ("CACHE_MB", "1000"),
                        ("RUN_DIR", &path_of("")),
                    ],
                );
                fs::write(d.join("squid.conf"), conf).expect("write squid.conf");
                // squid started as root runs as user proxy: it must own its directories.
                give_to_squid_user(&d);
                let bin = super::find_tool("squid").expect("squid is not installed");
                super::run(
                    Command::new(&bin).arg("-z").arg("-N").arg("-f").arg(d.join("squid.conf")),
                );
                let mut cmd = Command::new(bin);
                cmd.arg("-N").arg("-f").arg(d.join("squid.conf"));
                cmd
            }
        };
        let stderr = fs::File::create(d.join("stderr.log")).expect("proxy stderr log");
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
        let child = spawn_tied_to_process(cmd).unwrap_or_else(|e| panic!("spawn {kind:?}: {e}"));
        proxy.child = Some(child);
        proxy.wait_ready();
        proxy
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let addr = SocketAddrV4::new(self.gateway, self.port);
        loop {
            if TcpStream::connect_timeout(&addr.into(), Duration::from_millis(200)).is_ok() {
                return;
            }
            let child = self.child.as_mut().expect("child");
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{:?} exited with {status} before listening:\n{}", self.kind, self.logs());
            }
            assert!(Instant::now() < deadline, "{:?} never listened:\n{}", self.kind, self.logs());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The substituter URL the hosts use: `http://GATEWAY:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}:{}", self.gateway, self.port)
    }

    /// Kills the proxy at once (SIGKILL): connections in flight break, new ones are refused.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Lines of its access log: one per request it answered (to the end).
    pub fn requests(&self) -> usize {
        match fs::read_to_string(&self.access_log) {
            Ok(text) => text.lines().filter(|l| !l.is_empty()).count(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => panic!("read {}: {e}", self.access_log.display()),
        }
    }

    /// Its error output and logs, for assertion messages.
    pub fn logs(&self) -> String {
        ["stderr.log", "error.log", "cache.log"]
            .iter()
            .map(|name| fs::read_to_string(self.dir.path().join(name)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `template` with every `@NAME@` replaced by its value; panics naming a placeholder that is
/// left over (the shipped file and the test must agree on the names).
pub fn render(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = template.to_owned();
    for (name, value) in values {
        let placeholder = format!("@{name}@");
        assert!(out.contains(&placeholder), "the template has no {placeholder}");
        out = out.replace(&placeholder, value);
    }
    if let Some(left) = placeholders(&out).first() {
        panic!("placeholder {left} is not filled in");
    }
    out
}

/// Every distinct `@NAME@` (upper case, digits, `_`) in `text`, in order of first appearance.
pub fn placeholders(text: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for (i, _) in text.match_indices('@') {
        let rest = &text[i + 1..];
        let Some(end) = rest.find('@') else { break };
        let name = &rest[..end];
        let is_name = !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        let placeholder = format!("@{name}@");
        if is_name && !found.contains(&placeholder) {
            found.push(placeholder);
        }
    }
    found
}

/// The main nginx.conf that includes the shipped snippet (what Debian's /etc/nginx/nginx.conf
/// does with conf.d), with every path in `dir` and nginx in the foreground.
fn nginx_main_config(dir: &Path) -> String {
    let p = |name: &str| dir.join(name).display().to_string();
    format!(
        "# generated by tests/common/fleet.rs around contrib/fleet/nginx.conf\n\
         daemon off;\nmaster_process off;\nworker_processes 1;\npid {pid};\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n    default_type application/octet-stream;\n\
         \x20   client_body_temp_path {cb};\n    proxy_temp_path {pt};\n\
         \x20   fastcgi_temp_path {f};\n    uwsgi_temp_path {u};\n    scgi_temp_path {s};\n\
         \x20   include {snippet};\n}}\n",
        pid = p("nginx.pid"),
        cb = p("client_body"),
        pt = p("proxy"),
        f = p("fastcgi"),
        u = p("uwsgi"),
        s = p("scgi"),
        snippet = p("storefs-proxy.conf"),
    )
}

/// Hands `dir` and everything in it to squid's user (Debian: `proxy`), and lets it through /tmp.
fn give_to_squid_user(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).expect("chmod proxy dir");
    super::run(Command::new("chown").arg("-R").arg("proxy:proxy").arg(dir));
}
