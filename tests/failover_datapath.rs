//! The data path while nodes fail, against real clusters: reads in flight on a frozen follower
//! finish on the other one without an error, a read that already sent rows gets a class-08
//! error when its node dies (and the client goes on), and with the leader killed (no failover
//! driver: `failover.mode = "off"`) logins and reads go on while writes wait out
//! `failover.hold_timeout` and fail with 57P03; a write in flight on the dying leader gets class 08.
//!
//! Which server answered is read from the server itself (`inet_server_port()`). Every SIGSTOP
//! and SIGKILL is undone by a guard (SIGCONT, restart), so a failing assertion leaves no broken node.

mod support;
use support::*;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio_postgres::{Client, NoTls};

/// No single statement of these tests should take this long; a hang fails instead of blocking.
const QUERY_TIMEOUT: Duration = Duration::from_secs(20);

/// One test at a time: each stops or kills nodes of its own cluster, and their time bounds
/// (2 s) should not compete with another test's cluster for 2 cores.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

async fn try_connect(conn_str: &str) -> Result<Client, String> {
    match tokio::time::timeout(QUERY_TIMEOUT, tokio_postgres::connect(conn_str, NoTls)).await {
        Ok(Ok((client, conn))) => {
            tokio::spawn(conn);
            Ok(client)
        }
        Ok(Err(e)) => Err(format!("connect: {}", pg_error(&e))),
        Err(_) => Err(format!("connect: no answer within {QUERY_TIMEOUT:?}")),
    }
}

async fn connect(p: &ProxyProcess) -> Client {
    try_connect(&p.conn_str("postgres")).await.unwrap_or_else(|e| panic!("through the proxy: {e}\n{}", p.log()))
}

/// The port in the last column of the first row of a simple query.
async fn try_port(c: &Client, sql: &str) -> Result<u16, String> {
    let messages = tokio::time::timeout(QUERY_TIMEOUT, c.simple_query(sql))
        .await
        .map_err(|_| format!("{sql}: no answer within {QUERY_TIMEOUT:?}"))?
        .map_err(|e| format!("{sql}: {}", pg_error(&e)))?;
    let rows = simple_query_rows(&messages);
    let last = rows.first().and_then(|r| r.last().cloned().flatten());
    last.and_then(|v| v.parse().ok()).ok_or_else(|| format!("{sql}: no port in {rows:?}"))
}

/// Runs SQL through the proxy, panicking on an error.
async fn exec(c: &Client, sql: &str) {
    tokio::time::timeout(QUERY_TIMEOUT, c.batch_execute(sql))
        .await
        .unwrap_or_else(|_| panic!("{sql}: no answer within {QUERY_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("{sql}: {}", pg_error(&e)));
}

/// The SQLSTATE of a failed statement, or "closed" when the connection ended without one.
fn code_of(e: &tokio_postgres::Error) -> String {
    e.code().map_or_else(
        || if e.is_closed() { "closed".into() } else { format!("none ({})", pg_error(e)) },
        |c| c.code().to_string(),
    )
}

/// Polls `done` every 20 ms until it holds or `timeout` passes; how long it took.
fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if done() {
            return Some(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The HTTP status of a GET on the proxy's metrics listener.
fn http_status(p: &ProxyProcess, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", p.metrics_port)).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    answer.split_whitespace().nth(1)?.parse().ok()
}

/// A node's postmaster and its children (backends, walreceiver, ...).
fn node_processes(postmaster: u32) -> Vec<i32> {
    let postmaster = postmaster as i32;
    let mut pids = vec![postmaster];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // The parent pid is the second field after the parenthesised command name.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok());
        if ppid == Some(postmaster) {
            pids.push(pid);
        }
    }
    pids
}

/// True while `pid` runs (a zombie does not).
fn alive(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).is_some_and(|state| state != "Z")
}

/// A node stopped with SIGSTOP (postmaster and children) for as long as this lives: alive, its
/// sockets open, answering nothing. SIGCONT on drop.
struct Frozen(Vec<i32>);

impl Frozen {
    fn node(tc: &TestCluster, i: usize) -> Frozen {
        let pids = node_processes(tc.cluster.lock().unwrap().pid(i).expect("node runs"));
        for &pid in &pids {
            // SAFETY: pids of the test's own PostgreSQL node.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
        }
        Frozen(pids)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGCONT) };
        }
    }
}

/// A node killed with SIGKILL, postmaster first, then the children listed before (a killed
/// postmaster's children are re-parented, so they are found first); started again on drop.
struct Killed<'a> {
    tc: &'a TestCluster,
    node: usize,
    pids: Vec<i32>,
}

impl Killed<'_> {
    fn node(tc: &TestCluster, node: usize) -> Killed<'_> {
        let pids = node_processes(tc.cluster.lock().unwrap().pid(node).expect("node runs"));
        for &pid in &pids {
            // SAFETY: pids of the test's own PostgreSQL node.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        Killed { tc, node, pids }
    }
}

impl Drop for Killed<'_> {
    fn drop(&mut self) {
        // A leftover backend would hold the shared memory the restarted node needs.
        let gone = wait_until(Duration::from_secs(10), || self.pids.iter().all(|&p| !alive(p)));
        if gone.is_none() {
            eprintln!("node{}: processes still alive 10 s after SIGKILL", self.node);
        }
        if let Err(e) = self.tc.cluster.lock().unwrap().start_node(self.node) {
            eprintln!("node{} did not start again: {e}", self.node);
        }
    }
}

/// Name of a cluster port, "node1:54321".
fn name(tc: &TestCluster, port: u16) -> String {
    match tc.ports.iter().position(|&p| p == port) {
        Some(i) => format!("node{i}:{port}"),
        None => format!("unknown:{port}"),
    }
}

// ---------------------------------------------------------------------------------------------
// A frozen follower
// ---------------------------------------------------------------------------------------------

struct Read {
    reader: usize,
    started: Instant,
    finished: Instant,
    outcome: Result<u16, String>,
}

const READERS: usize = 4;
/// Reads that take 0.3 s each, so several are in flight on each follower at any time.
const SLOW_READ: &str = "SELECT pg_sleep(0.3), count(*), inet_server_port() FROM t";

#[test]
fn reads_in_flight_on_a_frozen_follower_finish_on_the_other_without_errors() {
    let _serial = serial();
    let tc = TestCluster::start(2, |_| {});
    tc.sql(0, "postgres", "CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    tc.cluster.lock().unwrap().wait_replicated(Duration::from_secs(30)).expect("replicated");
    // pg_sleep is volatile: without this the reads would go to the leader.
    let options =
        ProxyOptions { extra: "[routing]\nread_only_functions = [\"pg_sleep\"]\n".into(), ..Default::default() };
    let p = ProxyProcess::start(&tc, options);
    let (f1, f2) = (tc.ports[1], tc.ports[2]);
    let rt = runtime();
    let log: Arc<Mutex<Vec<Read>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..READERS)
        .map(|reader| {
            let (log, stop, conn_str) = (log.clone(), stop.clone(), p.conn_str("postgres"));
            rt.spawn(async move {
                // Each reader with settings of its own: a connection another reader used is
                // brought to its state before its read (a replay that may meet the freeze too).
                let client = match try_connect(&format!("{conn_str} application_name=reader{reader}")).await {
                    Ok(c) => c,
                    Err(e) => {
                        let now = Instant::now();
                        log.lock().unwrap().push(Read { reader, started: now, finished: now, outcome: Err(e) });
                        return;
                    }
                };
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && !client.is_closed() {
                    let started = Instant::now();
                    let outcome = try_port(&client, SLOW_READ).await;
                    log.lock().unwrap().push(Read { reader, started, finished: Instant::now(), outcome });
                }
            })
        })
        .collect();
    let served = |port: u16, since: Instant| {
        log.lock().unwrap().iter().filter(|r| r.started >= since && r.outcome == Ok(port)).count()
    };
    let t0 = Instant::now();
    let both = wait_until(Duration::from_secs(15), || served(f1, t0) >= 3 && served(f2, t0) >= 3);
    assert!(
        both.is_some(),
        "both followers never served 3 reads each: {} on node1, {} on node2",
        served(f1, t0),
        served(f2, t0)
    );
    let retries =
        |p: &ProxyProcess| metric_sum(&p.metrics(), "pgcausal_route_retries_total{reason=\"connection_lost\"}");
    let retries_before = retries(&p);

    let node1_up = || {
        let metrics = p.metrics();
        let line = metrics.lines().find(|l| l.starts_with("pgcausal_node_up{") && l.contains("node=\"node1\""));
        line.and_then(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
    };
    assert_eq!(node1_up(), Some(1.0), "node1 is up before the freeze");

    let frozen = Frozen::node(&tc, 1);
    let stopped = Instant::now();
    // The monitor takes node1 out after two probe timeouts in a row (about 1.5 s).
    let left = wait_until(Duration::from_secs(5), || node1_up() == Some(0.0));
    let left_at = Instant::now();
    // Every reader completes two reads that started 2 s after the freeze.
    let later = stopped + Duration::from_secs(2);
    let went_on = wait_until(Duration::from_secs(15), || {
        let log = log.lock().unwrap();
        let done = |r: usize| log.iter().filter(|x| x.reader == r && x.started >= later && x.outcome.is_ok()).count();
        (0..READERS).all(|r| done(r) >= 2) || log.iter().any(|x| x.outcome.is_err())
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    rt.block_on(async {
        for r in readers {
            let _ = tokio::time::timeout(QUERY_TIMEOUT, r).await;
        }
    });
    drop(frozen);

    let log = log.lock().unwrap();
    let errors: Vec<String> =
        log.iter().filter_map(|r| r.outcome.as_ref().err().map(|e| format!("reader {}: {e}", r.reader))).collect();
    assert!(errors.is_empty(), "reads failed around the freeze: {errors:#?}\n{}", p.log());
    let left = left.unwrap_or_else(|| panic!("node1 did not leave rotation within 5 s of the freeze\n{}", p.log()));
    assert!(went_on.is_some(), "reads did not go on after node1 froze\n{}", p.log());
    let in_flight: Vec<&Read> = log.iter().filter(|r| r.started < stopped && r.finished > stopped).collect();
    let slowest = in_flight.iter().map(|r| r.finished - stopped).max().unwrap_or_default();
    // Reads still waiting when node1 left (stuck on it since the freeze): its connections are
    // cut then, and each re-runs at once on node2 (0.3 s, plus a connect there).
    let stuck: Vec<&Read> = log.iter().filter(|r| r.started < left_at && r.finished > left_at).collect();
    let last_stuck = stuck.iter().map(|r| r.finished - left_at).max().unwrap_or_default();
    let retried = retries(&p) - retries_before;
    let per_reader: Vec<usize> =
        (0..READERS).map(|r| log.iter().filter(|x| x.reader == r && x.finished > stopped).count()).collect();
    let moved: Vec<String> = in_flight
        .iter()
        .map(|r| {
            let outcome = r.outcome.as_ref().map(|&p| name(&tc, p));
            format!("reader {}: {outcome:?} done {:?} after the freeze", r.reader, r.finished - stopped)
        })
        .collect();
    eprintln!(
        "node1 left rotation {left:?} after the freeze; in flight at the freeze: {moved:#?}; the last done \
         {slowest:?} after the freeze, {last_stuck:?} after node1 left; reads re-run: {retried}; reads completed \
         per client since the freeze: {per_reader:?}"
    );
    assert!(retried >= 1.0, "no read was re-run, so none was in flight on node1: the test proved nothing");
    assert!(!stuck.is_empty(), "no read was waiting on node1 when it left rotation: the test proved nothing");
    assert!(left < Duration::from_millis(2000), "node1 left rotation {left:?} after the freeze");
    assert!(
        last_stuck < Duration::from_millis(1000),
        "a read stuck on node1 finished {last_stuck:?} after node1 left rotation\n{}",
        p.log()
    );
    assert!(slowest < Duration::from_secs(3), "a read in flight at the freeze took {slowest:?} after it");
    let after: Vec<u16> = log.iter().filter(|r| r.started >= later).filter_map(|r| r.outcome.clone().ok()).collect();
    let names: Vec<String> = after.iter().map(|&p| name(&tc, p)).collect();
    assert!(after.iter().all(|&port| port == f2), "reads 2 s after the freeze ran on {names:?}");
}

// ---------------------------------------------------------------------------------------------
// A follower killed under a read that already sent rows
// ---------------------------------------------------------------------------------------------

#[test]
fn a_read_that_sent_rows_gets_a_connection_error_when_its_node_dies_and_the_client_goes_on() {
    let _serial = serial();
    let tc = TestCluster::start(2, |_| {});
    // A NOTICE per row makes the server flush at a message boundary before each pause, so what
    // reached the proxy when the node dies is whole messages (and the client can go on).
    tc.sql(
        0,
        "postgres",
        "CREATE FUNCTION slow_row(i int) RETURNS int STABLE LANGUAGE plpgsql AS \
         $$ BEGIN RAISE NOTICE 'row %', i; PERFORM pg_sleep(0.05); RETURN i; END $$",
    );
    tc.cluster.lock().unwrap().wait_replicated(Duration::from_secs(30)).expect("replicated");
    let options =
        ProxyOptions { extra: "[routing]\nread_only_functions = [\"slow_row\"]\n".into(), ..Default::default() };
    let p = ProxyProcess::start(&tc, options);
    let rt = runtime();
    let client = rt.block_on(connect(&p));
    let query = "SELECT slow_row(g), inet_server_port() FROM generate_series(1, 400) g";
    let (mut rows, port) = rt.block_on(async {
        use futures::StreamExt;
        let none: [&(dyn tokio_postgres::types::ToSql + Sync); 0] = [];
        let rows = client.query_raw(query, none).await.unwrap_or_else(|e| panic!("{query}: {}", pg_error(&e)));
        let mut rows = Box::pin(rows);
        let first = tokio::time::timeout(QUERY_TIMEOUT, rows.next()).await.expect("a first row in time");
        let first = first.expect("a first row").unwrap_or_else(|e| panic!("first row: {}", pg_error(&e)));
        let port = first.get::<_, i32>(1) as u16;
        (rows, port)
    });
    let node = tc.ports.iter().position(|&p| p == port).expect("a cluster port");
    assert_ne!(node, 0, "the read ran on the leader: it should have gone to a follower");
    let killed = Killed::node(&tc, node);
    let at = Instant::now();
    let (outcome, rows_after) = rt.block_on(async {
        use futures::StreamExt;
        let mut n = 0;
        loop {
            match tokio::time::timeout(QUERY_TIMEOUT, rows.next()).await {
                Err(_) => return (Err("no answer within 20 s: the read hangs".to_string()), n),
                Ok(None) => return (Ok(()), n),
                Ok(Some(Ok(_))) => n += 1,
                Ok(Some(Err(e))) => return (Err(format!("{} {}", code_of(&e), pg_error(&e))), n),
            }
        }
    });
    let took = at.elapsed();
    eprintln!("after the kill of node{node}: {outcome:?} after {rows_after} more rows, {took:?}");
    let error = outcome.expect_err("the read completed although its node was killed");
    assert!(
        error.starts_with("08") || error.starts_with("57P01"),
        "expected a class 08 (or 57P01) error, got: {error}\n{}",
        p.log()
    );
    assert!(error.contains(&format!("node{node}")), "the error does not name the node: {error}");
    assert!(took < Duration::from_secs(3), "the error came {took:?} after the kill");
    // The same client goes on: its next read runs on the other follower.
    let next = rt.block_on(try_port(&client, "SELECT inet_server_port()"));
    let other = tc.ports[3 - node];
    assert_eq!(next, Ok(other), "the client's next read after the error\n{}", p.log());
    drop(killed);
}

// ---------------------------------------------------------------------------------------------
// The leader killed, no failover driver
// ---------------------------------------------------------------------------------------------

#[test]
fn with_the_leader_killed_logins_and_reads_go_on_and_writes_fail_after_hold_timeout() {
    let _serial = serial();
    let tc = TestCluster::start(2, |_| {});
    tc.sql(0, "postgres", "CREATE TABLE w (id serial PRIMARY KEY, v int)");
    tc.cluster.lock().unwrap().wait_replicated(Duration::from_secs(30)).expect("replicated");
    let options =
        ProxyOptions { extra: "[failover]\nmode = \"off\"\nhold_timeout = \"2s\"\n".into(), ..Default::default() };
    let p = ProxyProcess::start(&tc, options);
    let rt = runtime();
    let conn_str = p.conn_str("postgres");

    // Before the kill: a client idle in a transaction that wrote, and a write in flight.
    let in_transaction = rt.block_on(async {
        let c = connect(&p).await;
        exec(&c, "BEGIN; INSERT INTO w (v) VALUES (1)").await;
        c
    });
    let in_flight = rt.block_on(connect(&p));
    let write = rt.spawn(async move {
        let sql = "INSERT INTO w (v) SELECT 2 FROM pg_sleep(30)";
        let outcome = tokio::time::timeout(QUERY_TIMEOUT, in_flight.simple_query(sql)).await;
        (Instant::now(), outcome.map(|r| r.map(|_| ()).map_err(|e| format!("{} {}", code_of(&e), pg_error(&e)))))
    });
    let running = wait_until(Duration::from_secs(10), || {
        tc.sql(0, "postgres", "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'INSERT%pg_sleep(30)'") == "1"
    });
    assert!(running.is_some(), "the slow INSERT never ran on the leader\n{}", p.log());

    let killed = Killed::node(&tc, 0);
    let at = Instant::now();

    // The write in flight gets a connection error (class 08) at once, not a hang.
    let (ended, outcome) = rt
        .block_on(async { tokio::time::timeout(QUERY_TIMEOUT, write).await })
        .expect("the in-flight write ended")
        .expect("writer task");
    let outcome = outcome.unwrap_or_else(|_| Err("no answer within 20 s: the write hangs".into()));
    eprintln!("the write in flight: {outcome:?}, {:?} after the kill", ended - at);
    let error = outcome.expect_err("the INSERT in flight succeeded on a killed leader");
    assert!(error.starts_with("08") || error.starts_with("closed"), "in-flight write: {error}");
    assert!(ended - at < Duration::from_secs(3), "the in-flight write failed {:?} after the kill", ended - at);

    // The transaction open on the dead leader is gone: its next statement must not run alone.
    let next = rt.block_on(async {
        tokio::time::timeout(QUERY_TIMEOUT, in_transaction.simple_query("INSERT INTO w (v) VALUES (3)")).await
    });
    let next = next.expect("an answer in time").map(|_| ()).map_err(|e| code_of(&e));
    eprintln!("the next statement of the transaction open at the kill: {next:?}");
    assert!(
        matches!(&next, Err(code) if code.starts_with("08") || code == "closed"),
        "a statement of the transaction that was open on the killed leader: {next:?}"
    );

    // New logins and reads work within 2 s of the kill.
    let mut attempts = Vec::new();
    let first_read = loop {
        let tried = Instant::now();
        let outcome = rt.block_on(async {
            let c = try_connect(&conn_str).await?;
            try_port(&c, "SELECT inet_server_port()").await
        });
        attempts.push(format!("{:?}: {outcome:?}", tried - at));
        if let Ok(port) = outcome {
            break Some((Instant::now() - at, port));
        }
        if at.elapsed() > Duration::from_secs(2) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (after, port) =
        first_read.unwrap_or_else(|| panic!("no login + read within 2 s of the kill: {attempts:#?}\n{}", p.log()));
    eprintln!("first new login + read {after:?} after the kill, on {}; attempts: {attempts:#?}", name(&tc, port));
    assert!(after < Duration::from_secs(2), "{attempts:#?}");
    assert_ne!(port, tc.ports[0]);

    // With no leader known: logins and reads still go on, and a write waits out hold_timeout.
    let unknown = wait_until(Duration::from_secs(5), || http_status(&p, "/ready/writes") == Some(503));
    assert!(unknown.is_some(), "the proxy still knows a leader 5 s after the kill\n{}", p.log());
    let started = Instant::now();
    let c = rt.block_on(try_connect(&conn_str)).unwrap_or_else(|e| panic!("login with no leader: {e}\n{}", p.log()));
    let port =
        rt.block_on(try_port(&c, "SELECT inet_server_port()")).unwrap_or_else(|e| panic!("read with no leader: {e}"));
    let login_and_read = started.elapsed();
    eprintln!("login + read with no leader known: {login_and_read:?} on {}", name(&tc, port));
    assert!(login_and_read < Duration::from_millis(1500), "login + read with no leader took {login_and_read:?}");
    let started = Instant::now();
    let write = rt
        .block_on(async { tokio::time::timeout(QUERY_TIMEOUT, c.simple_query("INSERT INTO w (v) VALUES (4)")).await });
    let waited = started.elapsed();
    let write = write.expect("an answer in time").map(|_| ()).map_err(|e| (code_of(&e), pg_error(&e)));
    eprintln!("a write with no leader known: {write:?} after {waited:?}");
    assert!(matches!(&write, Err((code, _)) if code == "57P03"), "a write with no leader: {write:?}");
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_millis(3500),
        "the write failed after {waited:?}; hold_timeout is 2 s"
    );
    // The session survives its refused write.
    let again = rt.block_on(try_port(&c, "SELECT inet_server_port()"));
    assert!(again.is_ok(), "a read after the refused write: {again:?}");
    drop(killed);
}
