//! Test support (feature `testing`): real `nats-server` processes on 127.0.0.1.
//!
//! [`NatsServer`] starts one JetStream server on a free port with its own temporary store
//! directory; [`NatsCluster`] starts three servers that form a JetStream cluster (server
//! names, a cluster name and routes to each other), so that streams can be created with three
//! replicas. Both wait until every server answers its monitoring endpoint (`/healthz`) and
//! stop their servers by PID when dropped (SIGKILL, then `wait`), so a failing test never
//! leaves a server behind. A server can also be killed and restarted on the same port and
//! store directory, which is how tests take NATS away while a shipper is running.
//!
//! # Invariants
//! - every server this module started is either running and owned by exactly one handle, or
//!   has been killed and reaped (`Child::wait`) before the handle forgot it;
//! - ports are chosen by binding port 0 on 127.0.0.1, so two tests running at once do not
//!   collide (a port is reused only after the kernel released it).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The server binary: `$NATS_SERVER` or `nats-server` on the `PATH`.
pub fn server_binary() -> String {
    std::env::var("NATS_SERVER").unwrap_or_else(|_| "nats-server".to_string())
}

/// True when the server binary can be run (`nats-server --version` succeeds).
pub fn server_available() -> bool {
    Command::new(server_binary())
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A free TCP port on 127.0.0.1 (bound and released at once).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// A temporary directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new empty directory under `$SNAPHEAP_TEST_DIR` or the system temporary directory.
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let base = std::env::var_os("SNAPHEAP_TEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = base.join(format!(
            "snapheap-nats-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How one server is started (kept so it can be restarted identically).
struct Spec {
    name: String,
    port: u16,
    http_port: u16,
    store: PathBuf,
    /// `(cluster name, own cluster port, routes)` for a cluster member.
    cluster: Option<(String, u16, Vec<u16>)>,
}

/// One running (or stopped) `nats-server` process.
pub struct NatsServer {
    spec: Spec,
    child: Option<Child>,
    log: PathBuf,
    _dir: Option<TempDir>,
}

impl NatsServer {
    /// Starts a single JetStream server on a free port of 127.0.0.1 and waits until it is
    /// ready.
    pub fn start() -> NatsServer {
        let dir = TempDir::new("server");
        let spec = Spec {
            name: "solo".to_string(),
            port: free_port(),
            http_port: free_port(),
            store: dir.path().join("store"),
            cluster: None,
        };
        let log = dir.path().join("server.log");
        let mut s = NatsServer {
            spec,
            child: None,
            log,
            _dir: Some(dir),
        };
        s.restart();
        s
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "server {} already running", self.spec.name);
        std::fs::create_dir_all(&self.spec.store).expect("store dir");
        let mut c = Command::new(server_binary());
        c.args(["-js", "-a", "127.0.0.1"])
            .args(["-p", &self.spec.port.to_string()])
            .args(["-m", &self.spec.http_port.to_string()])
            .args(["-n", &self.spec.name])
            .arg("-sd")
            .arg(&self.spec.store)
            .arg("-l")
            .arg(&self.log);
        if let Some((cluster, cport, routes)) = &self.spec.cluster {
            let routes: Vec<String> = routes.iter().map(|p| format!("nats-route://127.0.0.1:{p}")).collect();
            c.args(["--cluster_name", cluster])
                .args(["--cluster", &format!("nats://127.0.0.1:{cport}")])
                .args(["--routes", &routes.join(",")]);
        }
        c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        let child = c
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} (install nats-server): {e}", server_binary()));
        self.child = Some(child);
    }

    /// Starts the server again (same port, same store) after [`NatsServer::kill`], and waits
    /// until it is ready.
    pub fn restart(&mut self) {
        self.spawn();
        self.wait_ready(Duration::from_secs(20));
    }

    /// Waits until `/healthz` answers 200 (JetStream ready), panicking after `limit` with the
    /// end of the server's log.
    fn wait_ready(&mut self, limit: Duration) {
        let t0 = Instant::now();
        loop {
            if healthz(self.spec.http_port) {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    panic!(
                        "nats-server {} exited with {status}: {}",
                        self.spec.name,
                        self.log_tail()
                    );
                }
            }
            if t0.elapsed() > limit {
                panic!(
                    "nats-server {} not ready after {limit:?}: {}",
                    self.spec.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last lines of the server's log file.
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGKILLs the server and reaps it (a no-op when it is not running).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The client URL, `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.spec.port)
    }

    /// The process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// True when `GET /healthz` on the monitoring port answers 200.
fn healthz(http_port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", http_port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf.starts_with(b"HTTP/1.0 200") || buf.starts_with(b"HTTP/1.1 200")
}

/// Three `nats-server` processes forming one JetStream cluster on 127.0.0.1.
pub struct NatsCluster {
    /// The members, `n1`, `n2`, `n3`.
    pub nodes: Vec<NatsServer>,
    _dir: TempDir,
}

impl NatsCluster {
    /// Starts three clustered JetStream servers and waits until all are ready (which includes
    /// a JetStream meta leader being elected).
    pub fn start() -> NatsCluster {
        let dir = TempDir::new("cluster");
        let cports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut nodes = Vec::new();
        for i in 0..3 {
            let name = format!("n{}", i + 1);
            let routes = cports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| *p)
                .collect();
            let spec = Spec {
                store: dir.path().join(&name),
                port: free_port(),
                http_port: free_port(),
                cluster: Some(("snapheap-test".to_string(), cports[i], routes)),
                name: name.clone(),
            };
            let log = dir.path().join(format!("{name}.log"));
            let mut s = NatsServer {
                spec,
                child: None,
                log,
                _dir: None,
            };
            s.spawn();
            nodes.push(s);
        }
        for n in nodes.iter_mut() {
            n.wait_ready(Duration::from_secs(30));
        }
        NatsCluster { nodes, _dir: dir }
    }

    /// A client URL list naming every member (`nats://a,nats://b,nats://c`).
    pub fn urls(&self) -> String {
        self.nodes.iter().map(|n| n.url()).collect::<Vec<_>>().join(",")
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for n in self.nodes.iter_mut() {
            n.kill();
        }
    }
}
