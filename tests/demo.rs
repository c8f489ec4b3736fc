//! `pgcausal demo`, the README's first command: it starts a cluster with the proxy in front,
//! serves a client through it, and on SIGTERM stops the proxy and every PostgreSQL server it
//! started (a demo killed by its terminal or a supervisor must not leave servers behind).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The demo child; stopped (and its servers with it) if the test fails half-way.
struct Demo {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Demo {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            signal(self.child.id() as i32, libc::SIGKILL);
            let _ = self.child.wait();
        }
        // Whatever the demo left running: an immediate shutdown, by PID.
        for pid in postmasters(self.dir.path()) {
            signal(pid, libc::SIGQUIT);
        }
    }
}

fn signal(pid: i32, sig: i32) -> bool {
    // SAFETY: kill(2) on a PID this test started (the demo) or read from its data directory.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// PIDs of the postmasters under the demo's data directory (first line of postmaster.pid).
fn postmasters(root: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir(root) else { return Vec::new() };
    entries
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("data/postmaster.pid")).ok())
        .filter_map(|text| text.lines().next()?.trim().parse().ok())
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn demo_serves_a_client_and_stops_its_cluster_on_sigterm() {
    let dir = tempfile::Builder::new().prefix("pgcausal-demo-").tempdir().unwrap();
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_pgcausal"))
        .args(["demo", "--followers", "1", "--port", &port.to_string(), "--data-dir"])
        .arg(dir.path())
        .env("PGCAUSAL_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut demo = Demo { child, dir };

    // The banner ends with the psql line; read it off a thread so a silent demo cannot hang us.
    let stdout = demo.child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut banner = String::new();
    let psql_line = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).unwrap_or_else(|e| panic!("no psql line from the demo ({e}):\n{banner}"));
        banner += &line;
        banner.push('\n');
        if line.contains("psql -h 127.0.0.1") {
            break line;
        }
    };
    assert!(psql_line.contains(&format!("-p {port}")), "{banner}");
    assert_eq!(postmasters(demo.dir.path()).len(), 2, "a leader and 1 follower\n{banner}");

    // A client through the proxy: a write, then a read that must see it.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let conn = format!("host=127.0.0.1 port={port} user=app password=secret dbname=postgres");
        let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await.expect("login");
        tokio::spawn(connection);
        client.batch_execute("CREATE TABLE demo_t (v text); INSERT INTO demo_t VALUES ('hello')").await.unwrap();
        let row = client.query_one("SELECT v FROM demo_t", &[]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), "hello");
    });

    let servers = postmasters(demo.dir.path());
    assert!(signal(demo.child.id() as i32, libc::SIGTERM));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = demo.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the demo did not exit within 60 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "demo exited with {status}");
    // Its servers are gone: a signal 0 to each PID finds nothing.
    let deadline = Instant::now() + Duration::from_secs(30);
    while servers.iter().any(|&pid| signal(pid, 0)) {
        assert!(Instant::now() < deadline, "PostgreSQL servers {servers:?} still run after the demo exited");
        std::thread::sleep(Duration::from_millis(50));
    }
}
