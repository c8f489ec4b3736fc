//! `pgcausal demo`, the README's first command: it starts a cluster with the proxy in front,
//! serves a client through it, and on SIGTERM stops the proxy and every PostgreSQL server it
//! started (a demo killed by its terminal or a supervisor must not leave servers behind). A
//! demo killed with SIGKILL cannot stop them: the next run stops all of them, then starts.
//! `demo add-follower` adds a node to a running demo, which then stops that node too.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The demo's data directory; whatever servers still run on it get an immediate shutdown when
/// it is dropped (declared before the `Demo`s, so it drops after them).
struct DemoDir(tempfile::TempDir);

impl Drop for DemoDir {
    fn drop(&mut self) {
        for pid in postmasters(self.0.path()) {
            signal(pid, libc::SIGQUIT);
        }
    }
}

/// A demo child; killed if the test fails half-way (its servers are `DemoDir`'s to stop).
struct Demo {
    child: Child,
    banner: String,
}

impl Drop for Demo {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            signal(self.child.id() as i32, libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

impl Demo {
    /// Starts `pgcausal demo` on `dir` and waits for its banner's psql line.
    fn start(dir: &Path, port: u16, metrics_port: u16) -> Demo {
        let child = Command::new(env!("CARGO_BIN_EXE_pgcausal"))
            .args(["demo", "--followers", "1", "--port", &port.to_string()])
            .args(["--metrics-port", &metrics_port.to_string(), "--data-dir"])
            .arg(dir)
            .env("PGCAUSAL_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut demo = Demo { child, banner: String::new() };
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
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line =
                rx.recv_timeout(left).unwrap_or_else(|e| panic!("no psql line from the demo ({e}):\n{}", demo.banner));
            demo.banner += &line;
            demo.banner.push('\n');
            if line.contains("psql -h 127.0.0.1") {
                assert!(line.contains(&format!("-p {port}")), "{}", demo.banner);
                // Keep draining stdout so the demo never blocks on a full pipe.
                std::thread::spawn(move || while rx.recv().is_ok() {});
                return demo;
            }
        }
    }

    /// Sends `sig` and waits for the demo to exit; returns whether it exited successfully.
    fn stop(&mut self, sig: i32) -> bool {
        assert!(signal(self.child.id() as i32, sig));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            assert!(Instant::now() < deadline, "the demo did not exit within 60 s of signal {sig}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn signal(pid: i32, sig: i32) -> bool {
    // SAFETY: kill(2) on a PID this test started (the demo) or a postmaster of the demo's data
    // directory (checked by `postmasters`).
    unsafe { libc::kill(pid, sig) == 0 }
}

/// PIDs of the postmasters running on the demo's data directories: the first line of each
/// postmaster.pid, when that process is `postgres -D` that directory (not a reused PID).
fn postmasters(root: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir(root) else { return Vec::new() };
    let mut pids = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let data = entry.path().join("data");
        let Ok(text) = std::fs::read_to_string(data.join("postmaster.pid")) else { continue };
        let Some(pid) = text.lines().next().and_then(|l| l.trim().parse::<i32>().ok()) else { continue };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let data = std::fs::canonicalize(&data).unwrap_or(data);
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        if args.windows(2).any(|w| w[0] == b"-D" && w[1] == data.as_os_str().as_encoded_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A write, then a read that must see it, through the demo's proxy.
fn write_and_read(port: u16, table: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let conn = format!("host=127.0.0.1 port={port} user=app password=secret dbname=postgres");
        let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await.expect("login");
        tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE TABLE {table} (v text); INSERT INTO {table} VALUES ('hello')"))
            .await
            .unwrap();
        let row = client.query_one(&format!("SELECT v FROM {table}"), &[]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), "hello");
    });
}

/// The /metrics page on `port`.
fn metrics(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// Waits until none of `pids` is a process running on a data directory under `root`.
fn wait_gone(root: &Path, pids: &[i32], what: &str) {
    let root = std::fs::canonicalize(root).unwrap();
    let root = root.as_os_str().as_encoded_bytes();
    let runs_here = |pid: i32| {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        cmdline.split(|&b| b == 0).any(|arg| arg.starts_with(root))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while pids.iter().any(|&pid| runs_here(pid)) {
        assert!(Instant::now() < deadline, "PostgreSQL servers {pids:?} still run {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn demo_serves_a_client_and_stops_its_cluster_on_sigterm() {
    let dir = DemoDir(tempfile::Builder::new().prefix("pgcausal-demo-").tempdir().unwrap());
    let (port, metrics_port) = (free_port(), free_port());
    let mut demo = Demo::start(dir.0.path(), port, metrics_port);
    assert_eq!(postmasters(dir.0.path()).len(), 2, "a leader and 1 follower\n{}", demo.banner);
    assert!(demo.banner.contains(&format!("http://127.0.0.1:{metrics_port}/metrics")), "{}", demo.banner);

    write_and_read(port, "demo_t");
    assert!(metrics(metrics_port).contains("pgcausal_routed_total"), "no metrics on --metrics-port");

    let servers = postmasters(dir.0.path());
    assert!(demo.stop(libc::SIGTERM), "the demo failed on SIGTERM");
    wait_gone(dir.0.path(), &servers, "after the demo exited");
}

#[test]
fn a_demo_after_one_killed_with_sigkill_stops_all_its_leftover_servers_and_starts() {
    let dir = DemoDir(tempfile::Builder::new().prefix("pgcausal-demo-").tempdir().unwrap());
    let mut first = Demo::start(dir.0.path(), free_port(), free_port());
    let leftovers = postmasters(dir.0.path());
    assert_eq!(leftovers.len(), 2, "a leader and 1 follower\n{}", first.banner);
    assert!(!first.stop(libc::SIGKILL));
    drop(first);
    assert_eq!(postmasters(dir.0.path()), leftovers, "SIGKILL leaves the servers running");

    // One run: it stops both leftovers, then starts both nodes and serves a client.
    let port = free_port();
    let mut second = Demo::start(dir.0.path(), port, free_port());
    wait_gone(dir.0.path(), &leftovers, "after a new demo started on their data directory");
    let servers = postmasters(dir.0.path());
    assert_eq!(servers.len(), 2, "both nodes run again\n{}", second.banner);
    assert!(servers.iter().all(|pid| !leftovers.contains(pid)), "{servers:?} vs leftovers {leftovers:?}");
    write_and_read(port, "after_kill_t");
    assert!(second.stop(libc::SIGTERM), "the second demo failed on SIGTERM");
    wait_gone(dir.0.path(), &servers, "after the second demo exited");
}

/// The node rows of the demo console's SHOW NODES, each with the values of `columns`.
fn show_nodes(port: u16, columns: &[&str]) -> Result<Vec<Vec<String>>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let conn = format!("host=127.0.0.1 port={port} user=app password=secret dbname=pgcausal connect_timeout=2");
        let (client, connection) =
            tokio_postgres::connect(&conn, tokio_postgres::NoTls).await.map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let messages = client.simple_query("SHOW NODES").await.map_err(|e| e.to_string())?;
        Ok(messages
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    Some(columns.iter().map(|c| r.get(*c).unwrap_or_default().to_string()).collect())
                }
                _ => None,
            })
            .collect())
    })
}

fn row(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| v.to_string()).collect()
}

/// The demo wires deploy/rejoin-local.sh: after its leader's postmaster is killed with -9, a
/// follower is promoted and the old leader is rewound and comes back as a follower in rotation;
/// SIGTERM then stops every server, the one the hook started included.
#[test]
fn the_demo_heals_itself_after_its_leader_is_killed() {
    let dir = DemoDir(tempfile::Builder::new().prefix("pgcausal-demo-").tempdir().unwrap());
    let port = free_port();
    let mut demo = Demo::start(dir.0.path(), port, free_port());
    write_and_read(port, "before_t");
    let pidfile = dir.0.path().join("node0/data/postmaster.pid");
    let leader: i32 = std::fs::read_to_string(&pidfile).unwrap().lines().next().unwrap().trim().parse().unwrap();
    let killed = Instant::now();
    assert!(signal(leader, libc::SIGKILL));
    let deadline = killed + Duration::from_secs(60);
    loop {
        let nodes = show_nodes(port, &["name", "role", "in_rotation"]);
        let healed = nodes.as_ref().is_ok_and(|n| {
            n.contains(&row(&["node0", "follower", "true"])) && n.contains(&row(&["node1", "leader", "true"]))
        });
        if healed {
            break;
        }
        assert!(Instant::now() < deadline, "node0 did not come back as a follower within 60 s: {nodes:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("DEMO HEALED: node0 back in rotation as a follower {:?} after kill -9", killed.elapsed());
    write_and_read(port, "after_t");
    let servers = postmasters(dir.0.path());
    assert_eq!(servers.len(), 2, "node1 and the rewound node0 run");
    assert!(demo.stop(libc::SIGTERM), "the demo failed on SIGTERM");
    wait_gone(dir.0.path(), &servers, "after the demo exited (the rejoined node0 included)");
}

/// Runs `cmd` to completion within `timeout` (killed after it); returns (success, stdout, stderr).
fn run_bounded(cmd: &mut Command, timeout: Duration) -> (bool, String, String) {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let read = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()));
    let stderr = read(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not exit within {timeout:?}; stderr:\n{}", stderr.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status.success(), stdout.join().unwrap(), stderr.join().unwrap())
}

/// Reads through the demo's proxy until SHOW NODES shows `node` in rotation with more units
/// routed to it than at the first look (each read is a unit of its own, spread over the nodes in
/// rotation); returns its (name, in_rotation, units_routed).
fn wait_serving(port: u16, node: &str, within: Duration) -> Vec<String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let conn = format!("host=127.0.0.1 port={port} user=app password=secret dbname=postgres");
    let (client, connection) = runtime.block_on(tokio_postgres::connect(&conn, tokio_postgres::NoTls)).expect("login");
    runtime.spawn(connection);
    let units = |nodes: &Result<Vec<Vec<String>>, String>| -> Option<(bool, u64)> {
        let row = nodes.as_ref().ok()?.iter().find(|r| r[0] == node)?;
        Some((row[1] == "true", row[2].parse().ok()?))
    };
    let columns = ["name", "in_rotation", "units_routed"];
    let before = units(&show_nodes(port, &columns)).map_or(0, |(_, units)| units);
    let deadline = Instant::now() + within;
    loop {
        runtime.block_on(client.simple_query("SELECT 1")).expect("a read through the demo");
        let nodes = show_nodes(port, &columns);
        if units(&nodes).is_some_and(|(in_rotation, units)| in_rotation && units > before) {
            return nodes.unwrap().into_iter().find(|r| r[0] == node).unwrap();
        }
        assert!(Instant::now() < deadline, "no read reached {node} in rotation within {within:?}: {nodes:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `pgcausal demo add-follower`, run while the demo runs: node2 is built from the leader by
/// pg_basebackup, added by RELOAD, and serves reads (the command reports when, timed from its
/// start); SIGTERM to the demo stops node2 with the rest though another process started it,
/// and the next demo run on the directory brings all three nodes back.
#[test]
fn demo_add_follower_adds_a_node_that_serves_reads_and_the_demo_stops_it() {
    let dir = DemoDir(tempfile::Builder::new().prefix("pgcausal-demo-").tempdir().unwrap());
    let port = free_port();
    let mut demo = Demo::start(dir.0.path(), port, free_port());
    write_and_read(port, "before_add_t");

    let started = Instant::now();
    let (ok, stdout, stderr) = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_pgcausal"))
            .args(["demo", "add-follower", "--data-dir"])
            .arg(dir.0.path())
            .env("PGCAUSAL_LOG", "warn"),
        Duration::from_secs(180),
    );
    assert!(ok, "demo add-follower failed:\n{stdout}\n{stderr}");
    let report = stdout.lines().find(|l| l.starts_with("node2 serves reads:")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(report.contains("first read served"), "{stdout}");
    println!("DEMO ADD-FOLLOWER: {report}; the command exited after {:?}", started.elapsed());

    // node2 outlives the command that started it, and the demo's proxy routes reads to it.
    let servers = postmasters(dir.0.path());
    assert_eq!(servers.len(), 3, "node0, node1 and the new node2 run");
    let node2 = wait_serving(port, "node2", Duration::from_secs(30));
    println!("DEMO ADD-FOLLOWER: SHOW NODES node2 in_rotation={} units_routed={}", node2[1], node2[2]);
    write_and_read(port, "after_add_t");

    assert!(demo.stop(libc::SIGTERM), "the demo failed on SIGTERM");
    wait_gone(dir.0.path(), &servers, "after the demo exited (the added node2 included)");
    assert_eq!(postmasters(dir.0.path()), Vec::<i32>::new(), "no server left on the demo's directory");

    // The next run reuses all three nodes; node2 is in its config and serves reads again.
    let port = free_port();
    let mut again = Demo::start(dir.0.path(), port, free_port());
    assert!(again.banner.contains("node2"), "{}", again.banner);
    let servers = postmasters(dir.0.path());
    assert_eq!(servers.len(), 3, "all three nodes run again\n{}", again.banner);
    wait_serving(port, "node2", Duration::from_secs(30));
    assert!(again.stop(libc::SIGTERM), "the second demo failed on SIGTERM");
    wait_gone(dir.0.path(), &servers, "after the second demo exited");
}
