//! A primary and a hot standby as two processes on one machine.
//!
//! ```text
//! # terminal 1: the primary (starts a local nats-server on 127.0.0.1:4222 if none answers)
//! cargo run -p snapheap-nats --example standby -- primary /tmp/snapheap-demo/a
//! # terminal 2: the standby
//! cargo run -p snapheap-nats --example standby -- standby /tmp/snapheap-demo/b
//! ```
//!
//! The primary commits a counter every 100 ms in `Durability::Replicated` and prints each
//! acknowledged value. Kill it (`kill -9`, or Ctrl-C), then press Enter in the standby's
//! terminal: it promotes itself, prints the counter it holds (at least the last value the
//! primary printed) and carries on as the primary. Run the old primary's command again with a
//! new, empty directory to get a new standby. `NATS_URL` overrides the server address.

use snapheap::{Durability, Heap, OpenOptions, Persist};
use snapheap_nats::{Follower, NatsConfig, Shipper};
use std::io::BufRead;
use std::path::Path;
use std::time::Duration;

#[derive(Persist)]
struct Counter {
    value: u64,
}

fn config(dir: &Path) -> NatsConfig {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let node: String = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("node")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    NatsConfig::new(&url, "demo", &node)
}

fn primary_options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.durability(Durability::Replicated {
        timeout: Duration::from_secs(5),
    });
    o
}

/// Starts `nats-server` on 127.0.0.1:4222 (JetStream, store beside `dir`) when nothing
/// listens there. The server outlives this process, so that the standby can take over.
// Deliberately never waited for: it must survive the primary's SIGKILL.
#[allow(clippy::zombie_processes)]
fn ensure_local_server(dir: &Path) {
    if std::env::var("NATS_URL").is_ok() || std::net::TcpStream::connect("127.0.0.1:4222").is_ok() {
        return;
    }
    let store = dir.parent().unwrap_or(Path::new("/tmp")).join("nats-store");
    let child = std::process::Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", "4222", "-sd"])
        .arg(&store)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("cannot start nats-server (apt-get install nats-server)");
    println!(
        "started nats-server (pid {}, store {}); stop it with `kill {}` when done",
        child.id(),
        store.display(),
        child.id()
    );
    for _ in 0..100 {
        if std::net::TcpStream::connect("127.0.0.1:4222").is_ok() {
            std::thread::sleep(Duration::from_millis(300));
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nats-server did not start");
}

fn run_primary(heap: Heap<Counter>, cfg: &NatsConfig) -> Result<(), Box<dyn std::error::Error>> {
    let shipper = Shipper::start(heap.replication_source()?, cfg)?;
    println!(
        "primary: epoch {}, counter at {}",
        shipper.status().epoch,
        heap.read().value
    );
    loop {
        let mut g = heap.write();
        g.value += 1;
        let v = g.value;
        match g.commit() {
            Ok(_) => println!("committed and replicated {v}"),
            Err(e) => {
                println!("commit of {v} not replicated: {e}");
                if let Some(reason) = shipper.status().fenced {
                    println!("fenced ({reason}); stopping");
                    return Ok(());
                }
            }
        }
        drop(g);
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 || !["primary", "standby"].contains(&args[1].as_str()) {
        eprintln!("usage: standby (primary|standby) DIR");
        std::process::exit(2);
    }
    let dir = Path::new(&args[2]);
    std::fs::create_dir_all(dir.parent().unwrap_or(Path::new("/tmp")))?;
    let cfg = config(dir);
    if args[1] == "primary" {
        ensure_local_server(dir);
        let heap = primary_options().open(dir, |_| Counter { value: 0 })?;
        return run_primary(heap, &cfg);
    }
    let f: Follower<Counter> = Follower::start(dir, &OpenOptions::new(), &cfg)?;
    println!("standby: following; press Enter to promote");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut l = String::new();
        let _ = std::io::stdin().lock().read_line(&mut l);
        let _ = tx.send(());
    });
    loop {
        if rx.recv_timeout(Duration::from_secs(1)).is_ok() {
            break;
        }
        if let Some(r) = f.replica() {
            let v = r.read()?.value;
            println!("standby: at commit {}, counter {v}", r.position());
        }
    }
    let p = f.promote(&primary_options())?;
    println!(
        "promoted in {:?} to epoch {}: counter {} (commit {})",
        p.took,
        p.epoch,
        p.heap.read().value,
        p.seq
    );
    run_primary(p.heap, &cfg)
}
