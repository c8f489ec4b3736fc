//! The driver compatibility matrix: real client libraries through `pgcausal serve` in transaction
//! pooling, in front of a leader and two streaming followers, one of which replays 300 ms late
//! (`recovery_min_apply_delay`), so that a stale read cannot go unnoticed.
//!
//! Each driver's suite is an external program in tests/drivers/ (Python psycopg 3 and asyncpg,
//! Node.js pg, Java pgjdbc) run against its own database and its own proxy; tokio-postgres, psql
//! and pgbench are driven from here for what tests/clients.rs, tests/tx_pooling.rs and
//! tests/psql.rs do not already cover (COPY, cancel, LISTEN/NOTIFY over the extended protocol,
//! read-your-writes). tests/drivers/README.md is the resulting table.

mod support;
use support::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Reads sent right after a write must see it, 200 times per driver.
const RYW_ROUNDS: usize = 200;
/// No suite may run longer than this; a hung driver fails instead of blocking the run.
const SUITE_TIMEOUT: Duration = Duration::from_secs(600);

/// One cluster for every test of this binary: node1 (the first follower) applies WAL 300 ms late.
fn cluster() -> &'static TestCluster {
    static CLUSTER: OnceLock<TestCluster> = OnceLock::new();
    static_cluster(&CLUSTER, || {
        TestCluster::start(2, |spec| {
            spec.follower_conf = vec![vec![("recovery_min_apply_delay".into(), "300ms".into())], vec![]]
        })
    })
}

/// A fresh database and a proxy (transaction pooling, 4 server connections per node) for one driver.
fn proxy_for(db: &str) -> ProxyProcess {
    let cluster = cluster();
    cluster.create_database(db);
    ProxyProcess::start(cluster, ProxyOptions { pool_size: 4, ..Default::default() })
}

fn drivers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/drivers")
}

/// Which server port is which node, to read the suites' "reads by server port" lines.
fn node_ports() -> String {
    let c = cluster();
    format!("node ports: leader {}, delayed follower (300 ms) {}, follower {}", c.ports[0], c.ports[1], c.ports[2])
}

/// The last `n` lines of the proxy's log.
fn log_tail(p: &ProxyProcess, n: usize) -> String {
    let log = p.log();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs a suite program to completion (killed after SUITE_TIMEOUT), output to files so that a
/// chatty program cannot block on a full pipe. Fails with its output and the proxy's log.
fn run_suite(name: &str, mut cmd: Command, p: &ProxyProcess) -> String {
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    cmd.stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap());
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{name}: cannot start {cmd:?}: {e}"));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > SUITE_TIMEOUT {
            let _ = child.kill(); // our own child, by its handle
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let text =
        format!("{stdout}{}", if stderr.trim().is_empty() { String::new() } else { format!("--- stderr\n{stderr}") });
    let header = format!("=== {name} ({:.1} s; {})", started.elapsed().as_secs_f64(), node_ports());
    match status {
        Some(s) if s.success() => {
            println!("{header}\n{text}");
            text
        }
        Some(s) => panic!("{header}: suite failed ({s}):\n{text}\n--- proxy log (tail)\n{}", log_tail(p, 200)),
        None => {
            panic!("{header}: timed out after {SUITE_TIMEOUT:?}:\n{text}\n--- proxy log (tail)\n{}", log_tail(p, 200))
        }
    }
}

/// HOST PORT USER PASSWORD DBNAME, the arguments every suite takes.
fn suite_args(p: &ProxyProcess, db: &str) -> Vec<String> {
    vec!["127.0.0.1".into(), p.port.to_string(), USER.into(), PASSWORD.into(), db.into()]
}

fn assert_ryw_reported(text: &str) {
    assert!(text.contains(&format!("read-your-writes: {RYW_ROUNDS} reads")), "no read-your-writes report:\n{text}");
}

#[test]
fn psycopg3() {
    let db = "drv_psycopg";
    let p = proxy_for(db);
    let mut cmd = Command::new("python3");
    cmd.arg(drivers_dir().join("psycopg_suite.py")).args(suite_args(&p, db));
    let text = run_suite("psycopg 3", cmd, &p);
    assert!(text.contains("psycopg suite ok"), "{text}");
    assert_ryw_reported(&text);
}

#[test]
fn asyncpg() {
    let db = "drv_asyncpg";
    let p = proxy_for(db);
    let mut cmd = Command::new("python3");
    cmd.arg(drivers_dir().join("asyncpg_suite.py")).args(suite_args(&p, db));
    let text = run_suite("asyncpg", cmd, &p);
    assert!(text.contains("asyncpg suite ok"), "{text}");
    assert_ryw_reported(&text);
}

#[test]
fn node_postgres() {
    let node_dir = drivers_dir().join("node");
    if !node_dir.join("node_modules/pg").exists() {
        // .ci/run installs them; a developer's first run does it here.
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error", "--prefix"])
            .arg(&node_dir)
            .output()
            .expect("npm runs");
        assert!(out.status.success(), "npm ci failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let db = "drv_node";
    let p = proxy_for(db);
    let mut cmd = Command::new("node");
    cmd.arg(node_dir.join("suite.js")).args(suite_args(&p, db));
    let text = run_suite("node-postgres", cmd, &p);
    assert!(text.contains("node-postgres suite ok"), "{text}");
    assert_ryw_reported(&text);
}

#[test]
fn pgjdbc() {
    let jar = Path::new("/usr/share/java/postgresql.jar");
    assert!(jar.exists(), "{} missing: apt-get install libpostgresql-jdbc-java", jar.display());
    let classes = tempfile::tempdir().unwrap();
    let out = Command::new("javac")
        .args(["-Xlint:none", "-d"])
        .arg(classes.path())
        .arg("-cp")
        .arg(jar)
        .arg(drivers_dir().join("java/Suite.java"))
        .output()
        .expect("javac runs (apt-get install default-jdk-headless)");
    assert!(out.status.success(), "javac failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let db = "drv_pgjdbc";
    let p = proxy_for(db);
    let mut cmd = Command::new("java");
    cmd.arg("-cp").arg(format!("{}:{}", classes.path().display(), jar.display())).arg("Suite").args(suite_args(&p, db));
    let text = run_suite("pgjdbc", cmd, &p);
    assert!(text.contains("pgjdbc suite ok"), "{text}");
    assert_ryw_reported(&text);
}

// ---------------------------------------------------------------------------------------------
// tokio-postgres: what tests/clients.rs and tests/tx_pooling.rs do not cover
// ---------------------------------------------------------------------------------------------

async fn tp_connect(conn_str: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(conn_str, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("tokio-postgres connection ended with an error: {e}");
        }
    });
    client
}

/// A connection whose notifications are sent to the returned channel.
async fn tp_listening(conn_str: &str) -> (tokio_postgres::Client, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use futures::StreamExt;
    let (client, mut conn) = tokio_postgres::connect(conn_str, tokio_postgres::NoTls).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(message) = messages.next().await {
            if let Ok(tokio_postgres::AsyncMessage::Notification(n)) = message {
                let _ = tx.send(n.payload().to_string());
            }
        }
    });
    (client, rx)
}

/// COPY FROM STDIN / TO STDOUT through copy_in and copy_out (extended protocol), text and binary.
async fn tp_copy(conn_str: String) {
    use futures::{SinkExt, TryStreamExt};
    use tokio_postgres::binary_copy::{BinaryCopyInWriter, BinaryCopyOutStream};
    use tokio_postgres::types::Type;
    let client = tp_connect(&conn_str).await;
    let n = 20_000;
    let input: String = (0..n).map(|i| format!("{i}\tname {i} \\\\ \\t\n")).collect();
    let sink = client.copy_in("COPY copy_t (id, name) FROM STDIN").await.unwrap();
    futures::pin_mut!(sink);
    for chunk in input.as_bytes().chunks(7919) {
        sink.send(bytes::Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), n as u64);
    let out: Vec<bytes::Bytes> = client
        .copy_out("COPY (SELECT id, name FROM copy_t ORDER BY id) TO STDOUT")
        .await
        .map_err(|e| pg_error(&e))
        .expect("copy_out right after a finished copy_in")
        .try_collect()
        .await
        .unwrap();
    assert_eq!(String::from_utf8(out.concat()).unwrap(), input, "COPY round trip");

    // Binary COPY in and out, on a fresh connection.
    let client = tp_connect(&conn_str).await;
    let sink = client.copy_in("COPY bin_t (id, b, f) FROM STDIN (FORMAT BINARY)").await.unwrap();
    let writer = BinaryCopyInWriter::new(sink, &[Type::INT8, Type::BYTEA, Type::FLOAT8]);
    futures::pin_mut!(writer);
    for i in 0..1000i64 {
        let blob: Vec<u8> = (0..(i % 300) as u8).collect();
        writer.as_mut().write(&[&i, &blob, &(i as f64 / 2.0)]).await.unwrap();
    }
    assert_eq!(writer.finish().await.unwrap(), 1000);
    // Another session sees the copied rows once it adopts this session's causal token (without
    // it, its read may run on a follower that has not replayed them yet: allowed across sessions).
    let token = match &client.simple_query("SHOW pgcausal.lsn").await.unwrap()[..] {
        [.., tokio_postgres::SimpleQueryMessage::Row(row), _] => row.get(0).unwrap().to_string(),
        other => panic!("SHOW pgcausal.lsn answered {} messages", other.len()),
    };
    let client = tp_connect(&conn_str).await;
    client.batch_execute(&format!("SET pgcausal.min_lsn = '{token}'")).await.unwrap();
    let stream = client.copy_out("COPY bin_t (id, b, f) TO STDOUT (FORMAT BINARY)").await.unwrap();
    let rows: Vec<_> =
        BinaryCopyOutStream::new(stream, &[Type::INT8, Type::BYTEA, Type::FLOAT8]).try_collect().await.unwrap();
    assert_eq!(rows.len(), 1000);
    for row in &rows {
        let id: i64 = row.get(0);
        assert_eq!(row.get::<Vec<u8>>(1), (0..(id % 300) as u8).collect::<Vec<u8>>());
        assert_eq!(row.get::<f64>(2), id as f64 / 2.0);
    }

    // A COPY the client aborts (dropping the sink sends CopyFail); the connection goes on.
    let client = tp_connect(&conn_str).await;
    {
        let sink = client.copy_in::<_, bytes::Bytes>("COPY copy_t (id, name) FROM STDIN").await.unwrap();
        futures::pin_mut!(sink);
        sink.send(bytes::Bytes::from_static(b"999999\taborted\n")).await.unwrap();
    }
    let count: i64 = client
        .query_one("SELECT count(*) FROM copy_t", &[])
        .await
        .map_err(|e| pg_error(&e))
        .expect("a query after an aborted copy_in")
        .get(0);
    assert_eq!(count, n as i64, "aborted COPY left no rows");
}

/// client.cancel_token(): a CancelRequest to the proxy, forwarded to the server running the
/// query. Retried (bounded) in case it arrives before the query reaches a server, which the
/// proxy rightly ignores.
async fn tp_cancel(conn_str: String) {
    use tokio_postgres::error::SqlState;
    let client = tp_connect(&conn_str).await;
    for sql in ["SELECT pg_sleep(30)", "SELECT pg_sleep($1::float8)"] {
        let token = client.cancel_token();
        let started = Instant::now();
        let query = async {
            if sql.contains("$1") {
                client.query(sql, &[&30f64]).await.map(|_| ())
            } else {
                client.simple_query(sql).await.map(|_| ())
            }
        };
        let cancel = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            for _ in 0..10 {
                token.cancel_query(tokio_postgres::NoTls).await.unwrap();
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        };
        let result = tokio::select! {
            r = query => r,
            _ = cancel => panic!("{sql}: still running after 10 cancels"),
        };
        let err = result.expect_err("cancelled");
        assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{sql}: {}", pg_error(&err));
        assert!(started.elapsed() < Duration::from_secs(20));
        let after = client.query_one("SELECT 'after cancel'::text", &[]).await.unwrap();
        assert_eq!(after.get::<_, &str>(0), "after cancel");
    }
}

/// LISTEN over the extended protocol (client.execute: Parse/Bind/Execute/Sync), as asyncpg and
/// pgjdbc send it; tests/session_state.rs covers LISTEN over the simple protocol.
async fn tp_listen_extended(conn_str: String) {
    let (listener, mut notes) = tp_listening(&conn_str).await;
    let (notifier, mut stray) = tp_listening(&conn_str).await;
    listener.execute("LISTEN drv_events", &[]).await.unwrap();
    for i in 0..10 {
        notifier.execute("SELECT pg_notify('drv_events', $1)", &[&format!("n{i}")]).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), notes.recv()).await;
        let stray: Vec<String> = std::iter::from_fn(|| stray.try_recv().ok()).collect();
        assert!(stray.is_empty(), "the notifier received notifications it never LISTENed for: {stray:?}");
        assert_eq!(got.ok().flatten(), Some(format!("n{i}")), "notification n{i} for the listener");
    }
    listener.execute("UNLISTEN *", &[]).await.unwrap();
}

/// Read-your-writes: named statements, unnamed ones, and a committed transaction, each
/// followed at once by a read.
async fn tp_read_your_writes(conn_str: String) {
    let mut client = tp_connect(&conn_str).await;
    let mut ports = std::collections::BTreeMap::<i32, usize>::new();
    let ins = client.prepare("INSERT INTO ryw (id, v) VALUES ($1, $2)").await.unwrap();
    let sel = client.prepare("SELECT v, inet_server_port() FROM ryw WHERE id = $1").await.unwrap();
    for i in 0..RYW_ROUNDS as i32 {
        let port: i32 = match i % 3 {
            0 => {
                client.execute(&ins, &[&i, &format!("v{i}")]).await.unwrap();
                let row = client.query_opt(&sel, &[&i]).await.unwrap();
                let row = row.unwrap_or_else(|| panic!("stale read at {i}: row missing"));
                assert_eq!(row.get::<_, &str>(0), format!("v{i}"));
                row.get(1)
            }
            1 => {
                client.execute("UPDATE ryw_counter SET n = $1 WHERE id = 1", &[&i]).await.unwrap();
                let row =
                    client.query_one("SELECT n, inet_server_port() FROM ryw_counter WHERE id = 1", &[]).await.unwrap();
                assert_eq!(row.get::<_, i32>(0), i, "stale read at {i}");
                row.get(1)
            }
            _ => {
                let tx = client.transaction().await.unwrap();
                tx.execute(&ins, &[&i, &format!("v{i}")]).await.unwrap();
                tx.execute("UPDATE ryw_counter SET n = $1 WHERE id = 1", &[&i]).await.unwrap();
                tx.commit().await.unwrap();
                let row =
                    client.query_one("SELECT n, inet_server_port() FROM ryw_counter WHERE id = 1", &[]).await.unwrap();
                assert_eq!(row.get::<_, i32>(0), i, "stale read at {i}");
                row.get(1)
            }
        };
        *ports.entry(port).or_default() += 1;
    }
    println!("  read-your-writes: {RYW_ROUNDS} reads by server port {ports:?}");
}

#[test]
fn tokio_postgres_copy_cancel_listen_and_read_your_writes() {
    let db = "drv_tokio_pg";
    let p = proxy_for(db);
    ok(p.psql(
        db,
        &["-c", "CREATE TABLE copy_t (id int PRIMARY KEY, name text); CREATE TABLE bin_t (id int8 PRIMARY KEY, b bytea, f float8); \
                 CREATE TABLE ryw (id int PRIMARY KEY, v text); CREATE TABLE ryw_counter (id int PRIMARY KEY, n int); \
                 INSERT INTO ryw_counter VALUES (1, 0)"],
        None,
    ));
    // New sessions below are not promised the tables until the followers have replayed them.
    p.wait_for_followers();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let conn_str = p.conn_str(db);
    // Every part runs (each on its own connections) and reports; then the test fails if any did.
    let mut report = Vec::new();
    let mut failed = Vec::new();
    rt.block_on(async {
        let parts: Vec<(&str, tokio::task::JoinHandle<()>)> = vec![
            ("copy_in/copy_out", tokio::spawn(tp_copy(conn_str.clone()))),
            ("cancel_token", tokio::spawn(tp_cancel(conn_str.clone()))),
            ("LISTEN over the extended protocol", tokio::spawn(tp_listen_extended(conn_str.clone()))),
            ("read-your-writes", tokio::spawn(tp_read_your_writes(conn_str.clone()))),
        ];
        for (name, handle) in parts {
            match tokio::time::timeout(Duration::from_secs(300), handle).await {
                Ok(Ok(())) => report.push(format!("ok {name}")),
                Ok(Err(e)) => {
                    let msg = e
                        .try_into_panic()
                        .ok()
                        .and_then(|p| {
                            p.downcast_ref::<String>()
                                .cloned()
                                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        })
                        .unwrap_or_else(|| "cancelled".into());
                    report.push(format!("FAILED {name}: {msg}"));
                    failed.push(name);
                }
                Err(_) => {
                    report.push(format!("FAILED {name}: timed out"));
                    failed.push(name);
                }
            }
        }
    });
    println!("=== tokio-postgres ({})\n{}", node_ports(), report.join("\n"));
    assert!(failed.is_empty(), "tokio-postgres: {}\n--- proxy log (tail)\n{}", report.join("\n"), log_tail(&p, 100));
}

// ---------------------------------------------------------------------------------------------
// psql and pgbench: read-your-writes (the rest is in tests/psql.rs and tests/clients.rs)
// ---------------------------------------------------------------------------------------------

#[test]
fn psql_read_your_writes() {
    let db = "drv_psql";
    let p = proxy_for(db);
    ok(p.psql(db, &["-c", "CREATE TABLE ryw (id int PRIMARY KEY, v text)"], None));
    // One psql session, one statement per line: each INSERT and each SELECT is its own
    // autocommit statement, so each SELECT may be sent to a follower.
    let mut script = String::new();
    for i in 0..RYW_ROUNDS {
        script += &format!("INSERT INTO ryw VALUES ({i}, 'v{i}');\nSELECT coalesce((SELECT v FROM ryw WHERE id = {i}), 'STALE {i}');\n");
    }
    let out = ok(p.psql(db, &["-q"], Some(&script)));
    let want: String = (0..RYW_ROUNDS).map(|i| format!("v{i}\n")).collect();
    assert_eq!(out, want, "stale reads: {:?}", out.lines().filter(|l| l.starts_with("STALE")).collect::<Vec<_>>());
}

#[test]
fn pgbench_read_your_writes_in_all_protocols() {
    let db = "drv_pgbench";
    let p = proxy_for(db);
    ok(p.psql(db, &["-c", "CREATE TABLE ryw (id bigserial PRIMARY KEY, client int)"], None));
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("ryw.sql");
    // The read divides by the number of rows it sees: a stale read is a division by zero, which
    // pgbench reports as an error (and a non-zero exit).
    std::fs::write(
        &script,
        "INSERT INTO ryw (client) VALUES (:client_id) RETURNING id AS new_id \\gset\n\
         SELECT 1 / count(*)::int FROM ryw WHERE id = :new_id;\n",
    )
    .unwrap();
    let (clients, per_client) = (4, RYW_ROUNDS / 4);
    for mode in ["simple", "extended", "prepared"] {
        let out = Command::new(pg_bin("pgbench"))
            .args(["-h", "127.0.0.1", "-p", &p.port.to_string(), "-U", USER, "-n", "-M", mode])
            .args(["-c", &clients.to_string(), "-j", "2", "-t", &per_client.to_string(), "-f"])
            .arg(&script)
            .arg(db)
            .env("PGPASSWORD", PASSWORD)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "pgbench -M {mode} failed:\n{text}\n--- proxy log (tail)\n{}", log_tail(&p, 100));
        assert!(
            text.contains(&format!(
                "number of transactions actually processed: {}/{}",
                clients * per_client,
                clients * per_client
            )),
            "pgbench -M {mode}:\n{text}"
        );
        assert!(!text.contains("division by zero"), "pgbench -M {mode} read a stale row:\n{text}");
    }
    // A new session (psql waits for the followers to replay what pgbench wrote first).
    let rows = ok(p.psql(db, &["-c", "SELECT count(*) FROM ryw"], None));
    assert_eq!(rows.trim(), (3 * RYW_ROUNDS).to_string());
}
